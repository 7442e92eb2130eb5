//! Sources (what is backed up, with sealed CHAP secrets) and jobs (when, with retries,
//! retention, immutability and a destage pool).

use serde::{Deserialize, Serialize};

use crate::schedule::CalendarEvent;
use crate::{
    lock, new_id, now_unix, plain_name, source_host, Appliance, JobConfig, Principal, Role, ServiceError, SourceConfig,
    TaskInfo,
};

/// A source as the API shows it (never its secrets).
#[derive(Debug, Clone, Serialize)]
pub struct SourceInfo {
    pub id: String,
    pub name: String,
    pub url: String,
    pub host: String,
    pub chap_user: Option<String>,
    pub has_chap_secret: bool,
    pub mutual_user: Option<String>,
    pub has_mutual_secret: bool,
    /// Read bandwidth limit in MB/s; `None`: unlimited.
    pub max_read_mbps: Option<u32>,
}

/// A source as the API receives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceInput {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub chap_user: Option<String>,
    #[serde(default)]
    pub chap_secret: Option<String>,
    #[serde(default)]
    pub mutual_user: Option<String>,
    #[serde(default)]
    pub mutual_secret: Option<String>,
    /// Read bandwidth limit in MB/s; absent or null: unlimited.
    #[serde(default)]
    pub max_read_mbps: Option<u32>,
}

/// A job as the API receives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobInput {
    pub name: String,
    pub source: String,
    pub schedule: String,
    #[serde(default)]
    pub window_hours: Option<u32>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub retries: Option<u32>,
    /// After a successful backup, destage the new restore point to this tape pool.
    #[serde(default)]
    pub destage_pool: Option<String>,
    /// After a successful backup, replicate the new restore point to this remote (id or name).
    #[serde(default)]
    pub replicate_to: Option<String>,
    /// Which restore points to keep; absent or null: all.
    #[serde(default)]
    pub retention: Option<store::retention::RetentionPolicy>,
    /// New restore points are immutable for this many days; absent, null or 0: not immutable.
    #[serde(default)]
    pub immutable_days: Option<u32>,
}

fn yes() -> bool {
    true
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobInfo {
    #[serde(flatten)]
    pub job: JobConfig,
    pub next_run_unix: Option<u64>,
    pub last_task: Option<u64>,
}

impl Appliance {
    // ---- sources and jobs -------------------------------------------------------------------

    pub(crate) fn source_info(s: &SourceConfig) -> SourceInfo {
        SourceInfo {
            id: s.id.clone(),
            name: s.name.clone(),
            url: s.url.clone(),
            host: source_host(&s.url),
            chap_user: s.chap_user.clone(),
            has_chap_secret: s.chap_secret.is_some(),
            mutual_user: s.mutual_user.clone(),
            has_mutual_secret: s.mutual_secret.is_some(),
            max_read_mbps: s.max_read_mbps,
        }
    }

    pub fn sources(&self, actor: &Principal) -> Result<Vec<SourceInfo>, ServiceError> {
        actor.require(Role::Auditor)?;
        Ok(lock(&self.config).sources.iter().map(Self::source_info).collect())
    }

    /// Adds (`id` None) or replaces a source. A secret left out on an edit keeps the old one.
    pub fn put_source(
        &self,
        actor: &Principal,
        id: Option<&str>,
        input: SourceInput,
    ) -> Result<SourceInfo, ServiceError> {
        actor.require(Role::Admin)?;
        plain_name(&input.name, "source name")?;
        if input.url.trim().is_empty() {
            return Err(ServiceError::Invalid("give the source's URL or path".into()));
        }
        if input.max_read_mbps == Some(0) {
            return Err(ServiceError::Invalid(
                "the read limit must be at least 1 MB/s (leave it empty for no limit)".into(),
            ));
        }
        if input.url.contains("%") && input.url.contains('@') && input.url.starts_with("iscsi://") {
            return Err(ServiceError::Invalid(
                "put CHAP secrets in the secret fields, not in the URL (the URL is shown and logged)".into(),
            ));
        }
        self.check_local_source(input.url.trim())?;
        let mut c = lock(&self.config);
        let existing = id.map(|id| {
            c.sources.iter().position(|s| s.id == id).ok_or_else(|| ServiceError::NotFound(format!("no source {id}")))
        });
        let existing = existing.transpose()?;
        if c.sources.iter().enumerate().any(|(i, s)| s.name == input.name && Some(i) != existing) {
            return Err(ServiceError::Conflict(format!("a source named {} already exists", input.name)));
        }
        let old = existing.map(|i| c.sources[i].clone());
        let seal = |new: Option<String>, old: Option<String>| match new.filter(|s| !s.is_empty()) {
            Some(s) => Some(self.sealer.seal(&s)),
            None => old,
        };
        let src = SourceConfig {
            id: old.as_ref().map(|o| o.id.clone()).unwrap_or_else(new_id),
            name: input.name,
            url: input.url.trim().to_string(),
            chap_user: input.chap_user.filter(|s| !s.is_empty()),
            chap_secret: seal(input.chap_secret, old.as_ref().and_then(|o| o.chap_secret.clone())),
            mutual_user: input.mutual_user.filter(|s| !s.is_empty()),
            mutual_secret: seal(input.mutual_secret, old.as_ref().and_then(|o| o.mutual_secret.clone())),
            max_read_mbps: input.max_read_mbps,
        };
        let mut next = c.clone();
        match existing {
            Some(i) => next.sources[i] = src.clone(),
            None => next.sources.push(src.clone()),
        }
        self.save_config(&next)?;
        *c = next;
        drop(c);
        self.audit(
            actor,
            if existing.is_some() { "edit source" } else { "add source" },
            &format!("{} {}", src.name, src.url),
        );
        Ok(Self::source_info(&src))
    }

    pub fn delete_source(&self, actor: &Principal, id: &str) -> Result<(), ServiceError> {
        actor.require(Role::Admin)?;
        let mut c = lock(&self.config);
        if c.jobs.iter().any(|j| j.source == id) {
            return Err(ServiceError::Conflict(format!("source {id} is used by a job; delete the job first")));
        }
        let mut next = c.clone();
        let before = next.sources.len();
        next.sources.retain(|s| s.id != id);
        if next.sources.len() == before {
            return Err(ServiceError::NotFound(format!("no source {id}")));
        }
        self.save_config(&next)?;
        *c = next;
        drop(c);
        self.audit(actor, "delete source", id);
        Ok(())
    }

    pub(crate) fn source(&self, id: &str) -> Result<SourceConfig, ServiceError> {
        lock(&self.config)
            .sources
            .iter()
            .find(|s| s.id == id || s.name == id)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(format!("no source {id}")))
    }

    pub(crate) fn secrets(&self, s: &SourceConfig) -> Result<engine::SourceSecrets, ServiceError> {
        let pair = |user: &Option<String>,
                    secret: &Option<String>|
         -> Result<Option<(String, engine::Secret)>, ServiceError> {
            match (user, secret) {
                (Some(u), Some(sec)) => Ok(Some((u.clone(), engine::Secret::new(self.sealer.open_sealed(sec)?)))),
                _ => Ok(None),
            }
        };
        Ok(engine::SourceSecrets {
            chap: pair(&s.chap_user, &s.chap_secret)?,
            mutual_chap: pair(&s.mutual_user, &s.mutual_secret)?,
            local: self.confinement.clone(),
        })
    }

    /// Refuses a local source outside the source roots, or inside the data directory.
    pub(crate) fn check_local_source(&self, url: &str) -> Result<(), ServiceError> {
        if let Ok(engine::SourceSpec::Local(path)) = engine::SourceSpec::parse(url) {
            self.confinement.check(&path).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    /// "Test connection": probes the source (iSCSI targets, NFS exports, or its disks).
    pub fn test_source(&self, actor: &Principal, id: &str) -> Result<engine::ProbeReport, ServiceError> {
        actor.require(Role::Operator)?;
        let s = self.source(id)?;
        engine::probe(&s.url, &self.secrets(&s)?).map_err(|e| probe_error(&s.url, e.into()))
    }

    pub fn jobs(&self, actor: &Principal) -> Result<Vec<JobInfo>, ServiceError> {
        actor.require(Role::Auditor)?;
        let c = lock(&self.config);
        let next = lock(&self.next_runs);
        let last = lock(&self.last_tasks);
        let now = now_unix();
        Ok(c.jobs
            .iter()
            .map(|j| JobInfo {
                job: j.clone(),
                next_run_unix: j
                    .enabled
                    .then(|| {
                        next.get(&j.id).copied().or_else(|| CalendarEvent::parse(&j.schedule).ok()?.next_after(now))
                    })
                    .flatten(),
                last_task: last.get(&j.id).copied(),
            })
            .collect())
    }

    pub fn put_job(&self, actor: &Principal, id: Option<&str>, input: JobInput) -> Result<JobInfo, ServiceError> {
        actor.require(Role::Admin)?;
        plain_name(&input.name, "job name")?;
        CalendarEvent::parse(&input.schedule).map_err(ServiceError::Invalid)?;
        let src = self.source(&input.source)?;
        let destage_pool = input.destage_pool.filter(|p| !p.is_empty());
        if let Some(pool) = &destage_pool {
            plain_name(pool, "pool")?;
            self.tape_changer()?;
        }
        let replicate_to = match input.replicate_to.filter(|r| !r.is_empty()) {
            Some(r) => Some(self.remote_id(&r)?),
            None => None,
        };
        let retention = input.retention.filter(|r| !r.is_keep_all());
        if let Some(r) = &retention {
            r.validate()?;
        }
        let immutable_days = input.immutable_days.filter(|d| *d > 0);
        if immutable_days.is_some_and(|d| d > 3650) {
            return Err(ServiceError::Invalid("immutable_days: at most 3650 (ten years)".into()));
        }
        let mut c = lock(&self.config);
        let existing = match id {
            Some(id) => Some(
                c.jobs.iter().position(|j| j.id == id).ok_or_else(|| ServiceError::NotFound(format!("no job {id}")))?,
            ),
            None => None,
        };
        let job = JobConfig {
            id: existing.map(|i| c.jobs[i].id.clone()).unwrap_or_else(new_id),
            name: input.name,
            source: src.id,
            schedule: input.schedule,
            window_hours: input.window_hours,
            enabled: input.enabled,
            retries: input.retries.unwrap_or(2).min(10),
            destage_pool,
            replicate_to,
            retention,
            immutable_days,
        };
        let mut next = c.clone();
        match existing {
            Some(i) => next.jobs[i] = job.clone(),
            None => next.jobs.push(job.clone()),
        }
        self.save_config(&next)?;
        self.store.set_immutable_packs(next.jobs.iter().any(|j| j.immutable_days.is_some()));
        *c = next;
        drop(c);
        lock(&self.next_runs).remove(&job.id);
        self.audit(
            actor,
            if existing.is_some() { "edit job" } else { "add job" },
            &format!(
                "{} {}{}",
                job.name,
                job.schedule,
                [
                    job.destage_pool.as_ref().map(|p| format!(", then destage to pool {p}")),
                    job.replicate_to.as_ref().map(|r| format!(", then replicate to remote {r}")),
                ]
                .into_iter()
                .flatten()
                .collect::<String>()
            ),
        );
        let next_run_unix = CalendarEvent::parse(&job.schedule).ok().and_then(|e| e.next_after(now_unix()));
        Ok(JobInfo { job, next_run_unix, last_task: None })
    }

    pub fn delete_job(&self, actor: &Principal, id: &str) -> Result<(), ServiceError> {
        actor.require(Role::Admin)?;
        let mut c = lock(&self.config);
        let mut next = c.clone();
        let before = next.jobs.len();
        next.jobs.retain(|j| j.id != id);
        if next.jobs.len() == before {
            return Err(ServiceError::NotFound(format!("no job {id}")));
        }
        self.save_config(&next)?;
        *c = next;
        drop(c);
        self.audit(actor, "delete job", id);
        Ok(())
    }

    /// Runs a job now, outside its schedule.
    pub fn run_job(&self, actor: &Principal, id: &str) -> Result<TaskInfo, ServiceError> {
        actor.require(Role::Operator)?;
        let job = lock(&self.config)
            .jobs
            .iter()
            .find(|j| j.id == id)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(format!("no job {id}")))?;
        let t = self.backup_task(&actor.user, &job.source, Some(&job))?;
        lock(&self.last_tasks).insert(job.id.clone(), t.id);
        self.audit(actor, "run job", &job.name);
        Ok(t)
    }
}

/// A probe's error as the operator sees it: a failure to connect reads "cannot connect",
/// whatever the reason (refused, timed out, unreachable), so that probing does not tell a
/// closed port from a filtered one; other errors are unchanged.
pub(crate) fn probe_error(target: &str, e: ServiceError) -> ServiceError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused
                    | TimedOut
                    | HostUnreachable
                    | NetworkUnreachable
                    | ConnectionReset
                    | AddrNotAvailable
            ) {
                return ServiceError::Invalid(format!(
                    "cannot connect to {target}; check the address and port, that the service runs there, and that no firewall blocks the appliance"
                ));
            }
        }
        cause = c.source();
    }
    e
}
