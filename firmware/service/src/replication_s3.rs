//! Offsite replication to S3 object storage: the remote's S3 settings, and pushes to the
//! bucket with the remote's own retention and GC. Pulling back from a bucket (restore,
//! disaster recovery) is in `pull`, with pulling from an appliance.
//!
//! ## Secrets
//! The secret key is sealed like the CHAP secrets and never shown, logged, audited or put in
//! a restore point; [`S3RemoteInfo`] has no field for it. Errors of the S3 client name the
//! endpoint, the bucket and the key, never a credential.
//!
//! ## Plain HTTP
//! Only `https://` endpoints, except a loopback address (`127.0.0.0/8`, `::1`, `localhost`):
//! a test server, or an S3 gateway on the appliance itself.
//!
//! ## One push or GC per remote at a time
//! A push reads what the bucket holds when it starts; a GC running meanwhile could delete a
//! pack the push then references. Every task on an S3 remote holds the remote's lock for its
//! whole run (`Appliance::remote_lock`).

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use engine::replicate::s3::{self as rs3, BlockingS3, LockMode, S3Layout, S3Source, S3Target};
use engine::replicate::{self, ReplicateError, ReplicateOptions};

use crate::replication::{RemoteConfig, Windowed};
use crate::tasks::{self, Live};
use crate::{lock, Appliance, Principal, ReplicateResult, Role, ServiceError, TaskResult};

/// A remote's S3 settings as the configuration keeps them (the secret sealed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3RemoteConfig {
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    /// The secret key, sealed.
    pub secret: String,
    /// Key prefix in the bucket; points go under `<prefix>/<namespace>/`.
    pub prefix: String,
    /// Object lock mode for points with an immutability window: "governance" or
    /// "compliance"; `None`: no lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
    /// Keep the newest this many points of each name in the bucket (older ones are deleted
    /// after each push, once their lock allows); `None`: keep all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
}

/// A remote's S3 settings as the API shows them (never the secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct S3RemoteInfo {
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub prefix: String,
    pub lock: Option<String>,
    pub keep_last: Option<u32>,
}

/// A remote's S3 settings as the API receives them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3RemoteInput {
    pub bucket: String,
    #[serde(default)]
    pub region: Option<String>,
    pub access_key: String,
    /// Left out on an edit: the old one is kept.
    #[serde(default)]
    pub secret_key: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub lock: Option<String>,
    #[serde(default)]
    pub keep_last: Option<u32>,
}

pub(crate) fn info(c: &S3RemoteConfig) -> S3RemoteInfo {
    S3RemoteInfo {
        bucket: c.bucket.clone(),
        region: c.region.clone(),
        access_key: c.access_key.clone(),
        prefix: c.prefix.clone(),
        lock: c.lock.clone(),
        keep_last: c.keep_last,
    }
}

fn lock_mode(s: Option<&str>) -> Result<Option<LockMode>, ServiceError> {
    match s {
        None | Some("") | Some("none") => Ok(None),
        Some("governance") => Ok(Some(LockMode::Governance)),
        Some("compliance") => Ok(Some(LockMode::Compliance)),
        Some(other) => {
            Err(ServiceError::Invalid(format!("object lock mode {other:?}: use governance, compliance or none")))
        }
    }
}

/// Checks an S3 remote's input; returns the configuration with the secret sealed (or the
/// old one kept).
pub(crate) fn check_input(
    app: &Appliance,
    endpoint: &str,
    input: S3RemoteInput,
    old: Option<&S3RemoteConfig>,
) -> Result<S3RemoteConfig, ServiceError> {
    let plain_loopback = endpoint.starts_with("http://") && ::s3::is_loopback_endpoint(endpoint);
    if !(endpoint.starts_with("https://") || plain_loopback) {
        return Err(ServiceError::Invalid(format!(
            "S3 endpoint {endpoint:?}: use https://HOST[:PORT] (plain http:// only for a loopback address)"
        )));
    }
    let bucket_ok = (3..=63).contains(&input.bucket.len())
        && input.bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !bucket_ok {
        return Err(ServiceError::Invalid(format!(
            "bucket {:?}: S3 bucket names have 3-63 lower-case letters, digits, '-' or '.'",
            input.bucket
        )));
    }
    if input.access_key.is_empty() {
        return Err(ServiceError::Invalid("give the access key".into()));
    }
    let prefix = input.prefix.unwrap_or_else(|| "rackvault".into()).trim_matches('/').to_string();
    S3Layout::new(&prefix, "check").map_err(|e| ServiceError::Invalid(e.to_string()))?;
    lock_mode(input.lock.as_deref())?;
    if input.keep_last == Some(0) {
        return Err(ServiceError::Invalid("keep at least 1 point of each name (leave it empty to keep all)".into()));
    }
    let secret = match (input.secret_key.filter(|s| !s.is_empty()), old) {
        (Some(s), _) => app.sealer.seal(&s),
        (None, Some(o)) => o.secret.clone(),
        (None, None) => return Err(ServiceError::Invalid("give the secret key".into())),
    };
    Ok(S3RemoteConfig {
        bucket: input.bucket,
        region: input.region.filter(|r| !r.is_empty()).unwrap_or_else(|| "us-east-1".into()),
        access_key: input.access_key,
        secret,
        prefix,
        lock: input.lock.filter(|l| !l.is_empty() && l != "none"),
        keep_last: input.keep_last,
    })
}

/// A failure of a request on the remote: a transient one is "busy, retry later" (503), a
/// permanent one says what to fix (400).
pub(crate) fn replicate_error(e: ReplicateError) -> ServiceError {
    match e {
        ReplicateError::Store(e) => e.into(),
        e if e.kind() == engine::ErrorKind::Transient => ServiceError::Busy { retry_after_s: 30, what: e.to_string() },
        other => ServiceError::Invalid(other.to_string()),
    }
}

impl Appliance {
    /// An S3 client for `r` on the daemon's runtime.
    pub(crate) fn s3_client(&self, r: &RemoteConfig, c: &S3RemoteConfig) -> Result<BlockingS3, ServiceError> {
        let handle = self.runtime.clone().ok_or_else(|| {
            ServiceError::Internal("S3 remotes need the daemon's runtime; use rackvault serve".into())
        })?;
        let secret = self.sealer.open_sealed(&c.secret)?;
        let mut cfg = ::s3::S3Config::new(&r.url, &c.region, &c.bucket, &c.access_key, ::s3::Secret::new(secret));
        cfg.allow_http = r.url.starts_with("http://") && ::s3::is_loopback_endpoint(&r.url);
        let client = ::s3::S3Client::new(cfg).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        Ok(BlockingS3::new(client, handle))
    }

    /// The lock every task on remote `id` holds for its run.
    pub(crate) fn remote_lock(&self, id: &str) -> std::sync::Arc<std::sync::Mutex<()>> {
        lock(&self.remote_locks).entry(id.to_string()).or_default().clone()
    }

    pub(crate) fn s3_remote(&self, id: &str) -> Result<(RemoteConfig, S3RemoteConfig), ServiceError> {
        let r = self.remote(id)?;
        let c = r.s3.clone().ok_or_else(|| {
            ServiceError::Invalid(format!("remote {} is an appliance; its points are listed on that appliance", r.name))
        })?;
        Ok((r, c))
    }

    /// Checks that the remote answers and takes its credentials: for S3, a listing of its
    /// prefix; for an appliance, that it presents the pinned certificate.
    pub fn test_remote(&self, actor: &Principal, id: &str) -> Result<String, ServiceError> {
        actor.require(Role::Operator)?;
        let r = self.remote(id)?;
        match &r.s3 {
            Some(c) => {
                let s3 = self.s3_client(&r, c)?;
                let page = s3
                    .list_page(&format!("{}/", c.prefix), None, 1000)
                    .map_err(|e| replicate_error(rs3::offsite(e)))?;
                Ok(format!(
                    "bucket {} on {} takes the credentials; {} object(s) under {}/ (first page)",
                    c.bucket,
                    r.url,
                    page.objects.len(),
                    c.prefix
                ))
            }
            None => {
                let seen = pinhttp::fetch_fingerprint(&r.url, Duration::from_secs(10))
                    .map_err(|e| ServiceError::Invalid(e.to_string()))?;
                if pinhttp::normalize_fingerprint(&seen) != pinhttp::normalize_fingerprint(&r.fingerprint) {
                    return Err(ServiceError::Invalid(format!(
                        "{} now presents certificate {seen}, not the pinned {}: if the remote's certificate was \
                         renewed, confirm the new fingerprint on its console and edit the remote",
                        r.url, r.fingerprint
                    )));
                }
                Ok(format!("{} answers with the pinned certificate", r.url))
            }
        }
    }

    /// Deletes a point from an S3 remote (its packs go at the remote's next GC); refused by
    /// the server inside the point's object lock.
    pub fn delete_remote_point(&self, actor: &Principal, id: &str, spec: &str) -> Result<(), ServiceError> {
        actor.require(Role::Admin)?;
        let (r, c) = self.s3_remote(id)?;
        let s3 = self.s3_client(&r, &c)?;
        let layout = S3Layout::new(&c.prefix, &r.namespace).map_err(replicate_error)?;
        let guard = self.remote_lock(&r.id);
        let _held = lock(&guard);
        rs3::s3_delete_point(&s3, &layout, spec).map_err(|e| match e {
            ReplicateError::Offsite { message, kind: engine::ErrorKind::Permanent } => ServiceError::Conflict(message),
            other => replicate_error(other),
        })?;
        crate::replication::forget_copy(&self.env, self.copies_db, &r.id, &format!("{}/{spec}", layout.base()))?;
        self.audit(actor, "delete remote point", &format!("{spec} on {}", r.name));
        Ok(())
    }

    /// The task that pushes `point` to S3 remote `r`, then applies the remote's retention and
    /// collects its garbage.
    pub(crate) fn s3_replication_job(
        &self,
        point: store::RestorePoint,
        r: RemoteConfig,
        c: S3RemoteConfig,
    ) -> Result<tasks::Job, ServiceError> {
        let s3 = self.s3_client(&r, &c)?;
        let layout = S3Layout::new(&c.prefix, &r.namespace).map_err(replicate_error)?;
        let mode = lock_mode(c.lock.as_deref())?;
        let store = self.store.clone();
        let guard = self.remote_lock(&r.id);
        let (env, copies) = (self.env.clone(), self.copies_db);
        Ok(Box::new(move |live: &Live| {
            let live = &Windowed::new(live, r.window.as_deref());
            live.wait_open();
            let _held = lock(&guard);
            live.log(&format!(
                "replicating {} to bucket {} on {} under {}/",
                point.spec(),
                c.bucket,
                r.url,
                layout.base()
            ));
            let mut target = S3Target::open(&s3, layout.clone(), &store, &point, mode, SystemTime::now())?;
            let opts = ReplicateOptions {
                max_bytes_per_s: r.max_mbps.map(|m| u64::from(m) * 1_000_000),
                ..ReplicateOptions::new(&r.namespace)
            };
            let report = replicate::replicate(&store, &point, &mut target, &opts, live)?;
            if report.already_there {
                live.log(&format!("the bucket has it already as {}: nothing sent", report.delivered_as));
            } else {
                live.log(&format!(
                    "delivered as {}: {} chunk(s) and {} index node(s) in {} pack object(s), {} bytes; {} of {} chunk(s) were there already",
                    report.delivered_as,
                    report.chunks_sent,
                    report.nodes_sent,
                    report.batches,
                    report.bytes_sent,
                    report.chunks_offered - report.chunks_sent,
                    report.chunks_offered
                ));
            }
            if let Err(e) = crate::replication::record_copy(&env, copies, &point.spec(), &r, &report.delivered_as) {
                live.log(&format!("the copy could not be recorded here (it stands there): {e}"));
            }
            let mut pruned = Vec::new();
            if let Some(keep) = c.keep_last {
                pruned = prune(&s3, &layout, &point.name, keep as usize, live.live())?;
                for spec in &pruned {
                    let there = format!("{}/{spec}", layout.base());
                    if let Err(e) = crate::replication::forget_copy(&env, copies, &r.id, &there) {
                        live.log(&format!("the deleted copy {there} could not be forgotten here: {e}"));
                    }
                }
            }
            // Packs younger than an hour are left: a push that failed midway may build on them.
            let gc = rs3::s3_gc(&s3, &layout, SystemTime::now(), Duration::from_secs(3600))?;
            live.log(&format!(
                "bucket GC: {} point(s), {} pack(s); deleted {} ({} bytes), kept {} under lock",
                gc.points, gc.packs, gc.packs_deleted, gc.bytes_freed, gc.packs_locked
            ));
            Ok(TaskResult::Replicate(ReplicateResult { report, remote: r.name.clone(), pruned, gc: Some(gc) }))
        }))
    }
}

/// Deletes all but the newest `keep` points named `name` from the bucket; a locked one is
/// kept and logged. Returns the points deleted.
fn prune(
    s3: &BlockingS3,
    layout: &S3Layout,
    name: &str,
    keep: usize,
    live: &Live,
) -> Result<Vec<String>, ReplicateError> {
    let src = S3Source::open(s3, layout.clone())?;
    let mut same: Vec<_> = src.point_indexes()?.into_iter().filter(|p| p.point.name == name).collect();
    same.sort_by_key(|p| std::cmp::Reverse((p.point.created_unix, p.point.id)));
    let mut deleted = Vec::new();
    for p in same.into_iter().skip(keep) {
        match rs3::s3_delete_point(s3, layout, &p.origin.point) {
            Ok(()) => {
                live.log(&format!("deleted {} from the bucket: not among the newest {keep}", p.origin.point));
                deleted.push(p.origin.point);
            }
            Err(ReplicateError::Offsite { message, kind: engine::ErrorKind::Permanent }) => {
                live.log(&format!("kept {}: {message}", p.origin.point));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}
