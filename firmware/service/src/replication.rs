//! Offsite replication to another appliance (push): remotes, replication tasks, and the
//! receiving side. A remote may be an S3 bucket instead: its settings, pushes and pulls are in
//! `replication_s3`.
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
use engine::replicate::{self, Delivered, Keeping, ReplicaTarget, ReplicateError, ReplicateOptions, StoreTarget};
use store::{PointOrigin, RestorePoint};

use crate::replication_s3::{self, S3RemoteConfig, S3RemoteInfo, S3RemoteInput};
use crate::schedule::TimeWindow;
use crate::tasks::{self, Live, TaskError, TaskKind};
use crate::{
    lock, new_id, now_unix, plain_name, Appliance, Principal, ReplicateResult, Role, ServiceError, TaskInfo, TaskResult,
};

/// A remote appliance as the configuration keeps it (the token sealed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteConfig {
    pub id: String,
    pub name: String,
    /// `https://host:port` of an appliance, or an S3 endpoint.
    pub url: String,
    /// The pinned SHA-256 fingerprint of an appliance's certificate (empty for S3).
    #[serde(default)]
    pub fingerprint: String,
    /// The replication token made on the appliance, sealed (empty for S3).
    #[serde(default)]
    pub token: String,
    /// The namespace this appliance delivers into there: the token's name on the remote.
    pub namespace: String,
    /// Send at most this many MB/s; `None`: as fast as the link goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mbps: Option<u32>,
    pub created_unix: u64,
    /// Set for an S3 bucket (then this is no appliance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3RemoteConfig>,
    /// An appliance this one pulls from (with a token of the role `pull` made there), rather
    /// than pushes to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pull: bool,
    /// When to pull every point not here yet (a calendar event, as a job's schedule); pull
    /// remotes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Transfers to or from it run only inside this daily window (`HH:MM-HH:MM`, UTC); outside
    /// it a task waits, and one under way pauses between batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

/// A remote as the API shows it (never its token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteInfo {
    pub id: String,
    pub name: String,
    /// "appliance" or "s3".
    pub kind: String,
    pub url: String,
    /// An appliance's pinned certificate fingerprint (empty for S3).
    pub fingerprint: String,
    pub namespace: String,
    pub max_mbps: Option<u32>,
    pub created_unix: u64,
    /// An S3 remote's settings (never its secret key).
    pub s3: Option<S3RemoteInfo>,
    /// An appliance this one pulls from.
    pub pull: bool,
    /// A pull remote's schedule.
    pub schedule: Option<String>,
    /// The transfer window (`HH:MM-HH:MM`, UTC), if any.
    pub window: Option<String>,
}

/// A remote as the API receives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteInput {
    pub name: String,
    /// An appliance's `https://host:port`, or an S3 endpoint.
    pub url: String,
    /// The fingerprint the admin confirmed (an appliance only).
    #[serde(default)]
    pub fingerprint: String,
    /// The replication token (an appliance only); left out on an edit, the old one is kept.
    #[serde(default)]
    pub token: Option<String>,
    /// The token's name on the remote appliance; for S3, the folder this appliance's points
    /// go in under the prefix.
    pub namespace: String,
    #[serde(default)]
    pub max_mbps: Option<u32>,
    /// Set for an S3 bucket.
    #[serde(default)]
    pub s3: Option<S3RemoteInput>,
    /// An appliance to pull from: `token` is a token of the role `pull` made there, and
    /// `namespace` names the points here (`<namespace>.<name>`).
    #[serde(default)]
    pub pull: bool,
    /// A pull remote's schedule (as a job's); left out: pulls start by hand.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Transfers only inside this daily window (`HH:MM-HH:MM`, UTC); left out: any time.
    #[serde(default)]
    pub window: Option<String>,
}

fn info(r: &RemoteConfig) -> RemoteInfo {
    RemoteInfo {
        id: r.id.clone(),
        name: r.name.clone(),
        kind: if r.s3.is_some() { "s3".into() } else { "appliance".into() },
        url: r.url.clone(),
        fingerprint: r.fingerprint.clone(),
        namespace: r.namespace.clone(),
        max_mbps: r.max_mbps,
        created_unix: r.created_unix,
        s3: r.s3.as_ref().map(replication_s3::info),
        pull: r.pull,
        schedule: r.schedule.clone(),
        window: r.window.clone(),
    }
}

/// A copy of a point here on a remote, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteCopy {
    /// The remote's name (as it was when the copy was made).
    pub remote: String,
    /// What the point is there.
    pub delivered_as: String,
    /// When the replication committed it (or found it there).
    pub unix: u64,
}

/// The `copies` database's record: key `<name@id>\0<remote id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CopyRecord {
    /// Version of this record: 1.
    v: u32,
    remote_id: String,
    remote_name: String,
    delivered_as: String,
    unix: u64,
}

fn copy_key(spec: &str, remote_id: &str) -> Vec<u8> {
    [spec.as_bytes(), b"\0", remote_id.as_bytes()].concat()
}

/// Records that point `spec` is on remote `r` as `delivered_as` (after a replication
/// committed it, or found it there). Best effort: a failure to record is logged, the copy
/// stands.
pub(crate) fn record_copy(
    env: &store::kv::KvEnv,
    db: store::kv::KvDb,
    spec: &str,
    r: &RemoteConfig,
    delivered_as: &str,
) -> Result<(), ServiceError> {
    let rec = CopyRecord {
        v: 1,
        remote_id: r.id.clone(),
        remote_name: r.name.clone(),
        delivered_as: delivered_as.to_string(),
        unix: now_unix(),
    };
    let bytes = serde_json::to_vec(&rec).map_err(|e| ServiceError::Internal(format!("encoding a copy record: {e}")))?;
    let mut wtxn = env.write()?;
    db.put(&mut wtxn, &copy_key(spec, &r.id), &bytes).map_err(|e| env.err(e))?;
    wtxn.commit().map_err(|e| env.err(e))?;
    Ok(())
}

/// Forgets the copies on remote `remote_id` that are `delivered_as` there (deleted from it).
pub(crate) fn forget_copy(
    env: &store::kv::KvEnv,
    db: store::kv::KvDb,
    remote_id: &str,
    delivered_as: &str,
) -> Result<(), ServiceError> {
    let mut wtxn = env.write()?;
    let mut gone = Vec::new();
    for item in db.iter(&wtxn).map_err(|e| env.err(e))? {
        let (k, v) = item.map_err(|e| env.err(e))?;
        if let Ok(rec) = serde_json::from_slice::<CopyRecord>(v) {
            if rec.remote_id == remote_id && rec.delivered_as == delivered_as {
                gone.push(k.to_vec());
            }
        }
    }
    for k in gone {
        db.delete(&mut wtxn, &k).map_err(|e| env.err(e))?;
    }
    wtxn.commit().map_err(|e| env.err(e))?;
    Ok(())
}

impl Appliance {
    /// Every recorded remote copy, by point (`name@id`).
    pub(crate) fn remote_copies(&self) -> Result<std::collections::HashMap<String, Vec<RemoteCopy>>, ServiceError> {
        let rtxn = self.env.read()?;
        let mut out: std::collections::HashMap<String, Vec<RemoteCopy>> = std::collections::HashMap::new();
        for item in self.copies_db.iter(&rtxn).map_err(|e| self.env.err(e))? {
            let (k, v) = item.map_err(|e| self.env.err(e))?;
            let Some(spec) = k.split(|b| *b == 0).next().map(|s| String::from_utf8_lossy(s).into_owned()) else {
                continue;
            };
            // A record of a newer version is left out, not misread.
            let Ok(rec) = serde_json::from_slice::<CopyRecord>(v) else { continue };
            if rec.v != 1 {
                continue;
            }
            out.entry(spec).or_default().push(RemoteCopy {
                remote: rec.remote_name,
                delivered_as: rec.delivered_as,
                unix: rec.unix,
            });
        }
        Ok(out)
    }
}

/// A task's progress that holds a transfer to the remote's window: the task waits for the
/// window before it starts ([`Windowed::wait_open`]), and pauses between batches (each
/// `advance`) while it is closed, still answering cancel.
pub(crate) struct Windowed<'a> {
    live: &'a Live,
    window: Option<TimeWindow>,
}

impl<'a> Windowed<'a> {
    /// `window` as the configuration holds it (checked when saved; unreadable: none).
    pub(crate) fn new(live: &'a Live, window: Option<&str>) -> Windowed<'a> {
        Windowed { live, window: window.and_then(|w| TimeWindow::parse(w).ok()) }
    }

    /// Returns once the window is open (or at once without one), or when the task is
    /// cancelled.
    pub(crate) fn wait_open(&self) {
        let Some(w) = self.window else { return };
        let mut waited = false;
        while !w.contains(now_unix()) && !self.live.is_cancelled() {
            if !waited {
                self.live.log(&format!("outside the transfer window {w} (UTC): waiting until it opens"));
                waited = true;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        if waited && !self.live.is_cancelled() {
            self.live.log(&format!("the transfer window {w} (UTC) is open: going on"));
        }
    }

    pub(crate) fn live(&self) -> &Live {
        self.live
    }

    pub(crate) fn log(&self, line: &str) {
        self.live.log(line);
    }
}

impl engine::Progress for Windowed<'_> {
    fn start(&self, phase: &str, total: u64) {
        self.live.start(phase, total);
    }
    fn advance(&self, bytes: u64) {
        self.live.advance(bytes);
        self.wait_open();
    }
    fn finish(&self) {
        self.live.finish();
    }
    fn cancelled(&self) -> bool {
        self.live.is_cancelled()
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
        if input.s3.is_some() && input.pull {
            return Err(ServiceError::Invalid(
                "an S3 remote is pushed to and pulled from alike; leave out pull".into(),
            ));
        }
        let schedule = input.schedule.filter(|s| !s.trim().is_empty());
        if let Some(s) = &schedule {
            if !input.pull {
                return Err(ServiceError::Invalid(
                    "only a pull remote has a schedule of its own; a job's replicate_to replicates after its backups"
                        .into(),
                ));
            }
            crate::schedule::CalendarEvent::parse(s)
                .map_err(|e| ServiceError::Invalid(format!("schedule {s:?}: {e}")))?;
        }
        let window = input.window.filter(|w| !w.trim().is_empty());
        if let Some(w) = &window {
            TimeWindow::parse(w).map_err(ServiceError::Invalid)?;
        }
        let fingerprint = if input.s3.is_some() {
            String::new()
        } else {
            pinhttp::parse_base(&input.url).map_err(|e| ServiceError::Invalid(e.to_string()))?;
            pinhttp::normalize_fingerprint(&input.fingerprint).ok_or_else(|| {
                ServiceError::Invalid(format!(
                    "{:?} is not a SHA-256 fingerprint: paste the 32 hex bytes the remote shows",
                    input.fingerprint
                ))
            })?
        };
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
        let url = input.url.trim().trim_end_matches('/').to_string();
        let s3 = match input.s3 {
            Some(s3) => Some(replication_s3::check_input(self, &url, s3, old.as_ref().and_then(|o| o.s3.as_ref()))?),
            None => None,
        };
        let token = match (input.token.filter(|t| !t.is_empty()), &old) {
            _ if s3.is_some() => String::new(),
            (Some(t), _) => self.sealer.seal(&t),
            (None, Some(o)) if o.s3.is_none() => o.token.clone(),
            (None, _) if input.pull => {
                return Err(ServiceError::Invalid(
                    "give the pull token: create it on the appliance to pull from (Tokens, role pull)".into(),
                ))
            }
            (None, _) => {
                return Err(ServiceError::Invalid(
                    "give the replication token: create it on the remote (Tokens, role replication, named as the namespace)"
                        .into(),
                ))
            }
        };
        let remote = RemoteConfig {
            id: old.as_ref().map(|o| o.id.clone()).unwrap_or_else(new_id),
            name: input.name,
            url,
            fingerprint,
            token,
            namespace: input.namespace,
            max_mbps: input.max_mbps,
            created_unix: old.as_ref().map(|o| o.created_unix).unwrap_or_else(now_unix),
            s3,
            pull: input.pull,
            schedule,
            window,
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
            &match &remote.s3 {
                Some(c) => {
                    format!("{} {} (S3 bucket {}, access key {})", remote.name, remote.url, c.bucket, c.access_key)
                }
                None => format!("{} {} (certificate {})", remote.name, remote.url, remote.fingerprint),
            },
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

    pub(crate) fn remote(&self, id: &str) -> Result<RemoteConfig, ServiceError> {
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
        let subject = format!("{} to {}", point.spec(), r.name);
        if r.pull {
            return Err(ServiceError::Invalid(format!(
                "remote {} is an appliance this one pulls from; it fetches nothing from here",
                r.name
            )));
        }
        if let Some(c) = r.s3.clone() {
            let host = crate::source_host(&r.url);
            let job = self.s3_replication_job(point, r, c)?;
            return self.tasks.spawn(TaskKind::Replicate, &subject, user, (&host, "replication"), job);
        }
        let token = self.sealer.open_sealed(&r.token)?;
        let store = self.store.clone();
        let (env, copies) = (self.env.clone(), self.copies_db);
        let host = pinhttp::parse_base(&r.url).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let job: tasks::Job = Box::new(move |live: &Live| {
            let client = pinhttp::Client::new(&r.url, &r.fingerprint, Some(token))
                .map_err(|e| TaskError::permanent(e.to_string()))?;
            let live = &Windowed::new(live, r.window.as_deref());
            live.wait_open();
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
            if let Err(e) = record_copy(&env, copies, &point.spec(), &r, &report.delivered_as) {
                live.log(&format!("the copy could not be recorded here (it stands there): {e}"));
            }
            Ok(TaskResult::Replicate(ReplicateResult { report, remote: r.name.clone(), pruned: Vec::new(), gc: None }))
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

    /// Whether the point from `origin` is here; and whether this appliance keeps records from
    /// a sender whose store key has the check value `sealed_by` without that key (the sender
    /// then sends tree nodes opened: see `engine::replicate`).
    pub fn replica_find(
        &self,
        actor: &Principal,
        origin: &PointOrigin,
        sealed_by: Option<&str>,
    ) -> Result<FindAnswer, ServiceError> {
        Self::check_origin(actor, origin)?;
        let keeping = Keeping::for_sender(&self.store, sealed_by);
        Ok(FindAnswer {
            point: StoreTarget::keeping(&self.store, keeping).find(origin).map_err(replicate_error)?,
            without_key: keeping == Keeping::WithoutKey,
        })
    }

    /// Which of `digests` (hex) this store lacks, for a sender whose key has the check value
    /// `sealed_by`.
    pub fn replica_lacking(
        &self,
        actor: &Principal,
        digests: &[String],
        sealed_by: Option<&str>,
    ) -> Result<Vec<String>, ServiceError> {
        Self::replica_namespace(actor)?;
        let ds = replicate::parse_digests(digests).map_err(replicate_error)?;
        let keeping = Keeping::for_sender(&self.store, sealed_by);
        let lacking = replicate::lacking_in(&self.store, keeping, &ds).map_err(replicate_error)?;
        Ok(lacking.iter().map(store::Digest::to_hex).collect())
    }

    /// Receives a batch of records (the wire form of `engine::replicate`) as it streams in:
    /// `next` gives its pieces, then how it ended. A cut keeps the complete records before it
    /// (see `engine::replicate::receive_stream`).
    pub fn replica_receive(
        &self,
        actor: &Principal,
        sealed_by: Option<&str>,
        next: &mut dyn FnMut() -> Result<Vec<u8>, replicate::StreamEnd>,
    ) -> Result<replicate::Received, ServiceError> {
        Self::replica_namespace(actor)?;
        let keeping = Keeping::for_sender(&self.store, sealed_by);
        replicate::receive_stream(&self.store, keeping, next).map_err(replicate_error)
    }

    /// Publishes a replicated point once complete.
    pub fn replica_commit(
        &self,
        actor: &Principal,
        point: &RestorePoint,
        origin: &PointOrigin,
        sealed_by: Option<&str>,
    ) -> Result<Delivered, ServiceError> {
        Self::check_origin(actor, origin)?;
        let keeping = Keeping::for_sender(&self.store, sealed_by);
        let d = StoreTarget::keeping(&self.store, keeping).commit(point, origin).map_err(replicate_error)?;
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
