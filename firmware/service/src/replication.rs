//! Offsite replication to another appliance (push): remotes, replication tasks, and the
//! receiving side.
//!
//! ## Trust
//! - A *remote* is another appliance: its `https://host:port`, the SHA-256 fingerprint of
//!   its certificate, pinned when the admin adds it (the admin reads it with
//!   [`Appliance::remote_fingerprint`], compares it with what the remote's console or UI shows,
//!   and confirms it by saving the remote: trust on first use), and a replication token made
//!   on the remote. The token is sealed like the CHAP secrets and never shown again.
//! - On the receiving side a token with the role `replication` may do nothing but deliver
//!   points, and only into the namespace that is the token's name: points arrive as
//!   `<namespace>.<name>@<id>`, apart from the receiver's own points and their retention.
//!
//! ## What the receiver checks
//! Everything a peer sends is checked before it is written (see `engine::replicate`): the
//! framing and CRC of each record, its kind, its content against its digest, the batch size;
//! a point is published only when everything it references is durable. A hostile sender
//! can fill its own namespace with nonsense points, no more.

use serde::{Deserialize, Serialize};

use engine::replicate::wire::FindAnswer;
use engine::replicate::{self, Delivered, ReplicaTarget, ReplicateError, ReplicateOptions, StoreTarget};
use store::{PointOrigin, RestorePoint};

use crate::tasks::{self, Live, TaskError, TaskKind};
use crate::{
    lock, new_id, now_unix, plain_name, Appliance, Principal, ReplicateResult, Role, ServiceError, TaskInfo, TaskResult,
};

/// A remote appliance as the configuration keeps it (the token sealed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteConfig {
    pub id: String,
    pub name: String,
    /// `https://host:port`.
    pub url: String,
    /// The pinned SHA-256 fingerprint of its certificate.
    pub fingerprint: String,
    /// The replication token made on the remote, sealed.
    pub token: String,
    /// The namespace this appliance delivers into there: the token's name on the remote.
    pub namespace: String,
    /// Send at most this many MB/s; `None`: as fast as the link goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mbps: Option<u32>,
    pub created_unix: u64,
}

/// A remote as the API shows it (never its token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteInfo {
    pub id: String,
    pub name: String,
    pub url: String,
    pub fingerprint: String,
    pub namespace: String,
    pub max_mbps: Option<u32>,
    pub created_unix: u64,
}

/// A remote as the API receives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteInput {
    pub name: String,
    pub url: String,
    /// The fingerprint the admin confirmed.
    pub fingerprint: String,
    /// The replication token; left out on an edit, the old one is kept.
    #[serde(default)]
    pub token: Option<String>,
    /// The token's name on the remote.
    pub namespace: String,
    #[serde(default)]
    pub max_mbps: Option<u32>,
}

fn info(r: &RemoteConfig) -> RemoteInfo {
    RemoteInfo {
        id: r.id.clone(),
        name: r.name.clone(),
        url: r.url.clone(),
        fingerprint: r.fingerprint.clone(),
        namespace: r.namespace.clone(),
        max_mbps: r.max_mbps,
        created_unix: r.created_unix,
    }
}

fn replicate_error(e: ReplicateError) -> ServiceError {
    match e {
        ReplicateError::Store(e) => e.into(),
        ReplicateError::Incomplete(m) => ServiceError::Incomplete(m),
        other => ServiceError::Invalid(other.to_string()),
    }
}

impl From<ReplicateError> for TaskError {
    fn from(e: ReplicateError) -> TaskError {
        TaskError::new(e.kind().into(), e.to_string())
    }
}

impl Appliance {
    pub fn remotes(&self, actor: &Principal) -> Result<Vec<RemoteInfo>, ServiceError> {
        actor.require(Role::Auditor)?;
        Ok(lock(&self.config).remotes.iter().map(info).collect())
    }

    /// Reads the certificate fingerprint `url` presents, for the admin to compare with the
    /// remote's own and confirm. Nothing is trusted or stored.
    pub fn remote_fingerprint(&self, actor: &Principal, url: &str) -> Result<String, ServiceError> {
        actor.require(Role::Admin)?;
        pinhttp::fetch_fingerprint(url, std::time::Duration::from_secs(10)).map_err(|e| match e {
            pinhttp::HttpError::Invalid(m) => ServiceError::Invalid(m),
            other => ServiceError::Invalid(other.to_string()),
        })
    }

    /// Adds (`id` None) or replaces a remote.
    pub fn put_remote(
        &self,
        actor: &Principal,
        id: Option<&str>,
        input: RemoteInput,
    ) -> Result<RemoteInfo, ServiceError> {
        actor.require(Role::Admin)?;
        plain_name(&input.name, "remote name")?;
        pinhttp::parse_base(&input.url).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let fingerprint = pinhttp::normalize_fingerprint(&input.fingerprint).ok_or_else(|| {
            ServiceError::Invalid(format!(
                "{:?} is not a SHA-256 fingerprint: paste the 32 hex bytes the remote shows",
                input.fingerprint
            ))
        })?;
        replicate::validate_namespace(&input.namespace).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        if input.max_mbps == Some(0) {
            return Err(ServiceError::Invalid(
                "the bandwidth limit must be at least 1 MB/s (leave it empty for none)".into(),
            ));
        }
        let mut c = lock(&self.config);
        let existing = id
            .map(|id| {
                c.remotes
                    .iter()
                    .position(|r| r.id == id)
                    .ok_or_else(|| ServiceError::NotFound(format!("no remote {id}")))
            })
            .transpose()?;
        if c.remotes.iter().enumerate().any(|(i, r)| r.name == input.name && Some(i) != existing) {
            return Err(ServiceError::Conflict(format!("a remote named {} already exists", input.name)));
        }
        let old = existing.map(|i| c.remotes[i].clone());
        let token = match (input.token.filter(|t| !t.is_empty()), &old) {
            (Some(t), _) => self.sealer.seal(&t),
            (None, Some(o)) => o.token.clone(),
            (None, None) => {
                return Err(ServiceError::Invalid(
                    "give the replication token: create it on the remote (Tokens, role replication, named as the namespace)"
                        .into(),
                ))
            }
        };
        let remote = RemoteConfig {
            id: old.as_ref().map(|o| o.id.clone()).unwrap_or_else(new_id),
            name: input.name,
            url: input.url.trim_end_matches('/').to_string(),
            fingerprint,
            token,
            namespace: input.namespace,
            max_mbps: input.max_mbps,
            created_unix: old.as_ref().map(|o| o.created_unix).unwrap_or_else(now_unix),
        };
        let mut next = c.clone();
        match existing {
            Some(i) => next.remotes[i] = remote.clone(),
            None => next.remotes.push(remote.clone()),
        }
        self.save_config(&next)?;
        *c = next;
        drop(c);
        self.audit(
            actor,
            if existing.is_some() { "edit remote" } else { "add remote" },
            &format!("{} {} (certificate {})", remote.name, remote.url, remote.fingerprint),
        );
        Ok(info(&remote))
    }

    pub fn delete_remote(&self, actor: &Principal, id: &str) -> Result<(), ServiceError> {
        actor.require(Role::Admin)?;
        let mut c = lock(&self.config);
        if let Some(r) = c.remotes.iter().find(|r| r.id == id || r.name == id) {
            if let Some(j) = c.jobs.iter().find(|j| j.replicate_to.as_deref() == Some(r.id.as_str())) {
                return Err(ServiceError::Conflict(format!(
                    "job {} replicates to remote {}; change the job first",
                    j.name, r.name
                )));
            }
        }
        let mut next = c.clone();
        let before = next.remotes.len();
        next.remotes.retain(|r| r.id != id && r.name != id);
        if next.remotes.len() == before {
            return Err(ServiceError::NotFound(format!("no remote {id}")));
        }
        self.save_config(&next)?;
        *c = next;
        drop(c);
        self.audit(actor, "delete remote", id);
        Ok(())
    }

    /// The id of remote `id_or_name`.
    pub(crate) fn remote_id(&self, id_or_name: &str) -> Result<String, ServiceError> {
        self.remote(id_or_name).map(|r| r.id)
    }

    fn remote(&self, id: &str) -> Result<RemoteConfig, ServiceError> {
        lock(&self.config)
            .remotes
            .iter()
            .find(|r| r.id == id || r.name == id)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(format!("no remote {id}")))
    }

    /// Starts a task that sends restore point `spec` to `remote` (an id or a name).
    pub fn start_replication(&self, actor: &Principal, spec: &str, remote: &str) -> Result<TaskInfo, ServiceError> {
        actor.require(Role::Operator)?;
        let t = self.replication_task(&actor.user, spec, remote)?;
        self.audit(actor, "start replication", &format!("{spec} to {remote}"));
        Ok(t)
    }

    pub(crate) fn replication_task(&self, user: &str, spec: &str, remote: &str) -> Result<TaskInfo, ServiceError> {
        let point = self.store.find(spec)?;
        let r = self.remote(remote)?;
        let token = self.sealer.open_sealed(&r.token)?;
        let store = self.store.clone();
        let subject = format!("{} to {}", point.spec(), r.name);
        let host = pinhttp::parse_base(&r.url).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let job: tasks::Job = Box::new(move |live: &Live| {
            let client = pinhttp::Client::new(&r.url, &r.fingerprint, Some(token))
                .map_err(|e| TaskError::permanent(e.to_string()))?;
            let mut target = replicate::HttpTarget::new(client);
            let opts = ReplicateOptions {
                max_bytes_per_s: r.max_mbps.map(|m| u64::from(m) * 1_000_000),
                ..ReplicateOptions::new(&r.namespace)
            };
            live.log(&format!("replicating {} to {} ({}) as namespace {}", point.spec(), r.name, r.url, r.namespace));
            let report = replicate::replicate(&store, &point, &mut target, &opts, live)?;
            if report.already_there {
                live.log(&format!("{} already has it as {}: nothing sent", r.name, report.delivered_as));
            } else {
                live.log(&format!(
                    "delivered as {}: {} chunk(s) and {} index node(s) sent ({} bytes in {} batch(es)); {} of {} chunk(s) offered were there already",
                    report.delivered_as,
                    report.chunks_sent,
                    report.nodes_sent,
                    report.bytes_sent,
                    report.batches,
                    report.chunks_offered - report.chunks_sent,
                    report.chunks_offered
                ));
            }
            Ok(TaskResult::Replicate(ReplicateResult { report, remote: r.name.clone() }))
        });
        self.tasks.spawn(TaskKind::Replicate, &subject, user, (&host, "replication"), job)
    }

    // ---- the receiving side -------------------------------------------------------------

    /// The namespace a replication token delivers into; refuses anyone else.
    fn replica_namespace(actor: &Principal) -> Result<String, ServiceError> {
        match (&actor.role, &actor.token) {
            (Role::Replication, Some(ns)) => Ok(ns.clone()),
            _ => Err(ServiceError::Forbidden(
                "only a replication token may deliver restore points; create one under Tokens with the role replication".into(),
            )),
        }
    }

    fn check_origin(actor: &Principal, origin: &PointOrigin) -> Result<(), ServiceError> {
        let ns = Self::replica_namespace(actor)?;
        if origin.namespace != ns {
            return Err(ServiceError::Forbidden(format!(
                "this token delivers into namespace {ns}, not {}",
                origin.namespace
            )));
        }
        Ok(())
    }

    pub fn replica_find(&self, actor: &Principal, origin: &PointOrigin) -> Result<FindAnswer, ServiceError> {
        Self::check_origin(actor, origin)?;
        Ok(FindAnswer { point: StoreTarget::new(&self.store).find(origin).map_err(replicate_error)? })
    }

    /// Which of `digests` (hex) this store lacks.
    pub fn replica_lacking(&self, actor: &Principal, digests: &[String]) -> Result<Vec<String>, ServiceError> {
        Self::replica_namespace(actor)?;
        let ds = replicate::parse_digests(digests).map_err(replicate_error)?;
        let lacking = StoreTarget::new(&self.store).lacking(&ds).map_err(replicate_error)?;
        Ok(lacking.iter().map(store::Digest::to_hex).collect())
    }

    /// Receives a batch of records (the wire form of `engine::replicate`) as it streams in:
    /// `next` gives its pieces, then how it ended. A cut keeps the complete records before it
    /// (see `engine::replicate::receive_stream`).
    pub fn replica_receive(
        &self,
        actor: &Principal,
        next: &mut dyn FnMut() -> Result<Vec<u8>, replicate::StreamEnd>,
    ) -> Result<replicate::Received, ServiceError> {
        Self::replica_namespace(actor)?;
        replicate::receive_stream(&self.store, next).map_err(replicate_error)
    }

    /// Publishes a replicated point once complete.
    pub fn replica_commit(
        &self,
        actor: &Principal,
        point: &RestorePoint,
        origin: &PointOrigin,
    ) -> Result<Delivered, ServiceError> {
        Self::check_origin(actor, origin)?;
        let d = StoreTarget::new(&self.store).commit(point, origin).map_err(replicate_error)?;
        if !d.already_there {
            self.audit(
                actor,
                "receive replicated point",
                &format!("{} from {} ({})", d.point, origin.point, origin.namespace),
            );
        }
        Ok(d)
    }
}
