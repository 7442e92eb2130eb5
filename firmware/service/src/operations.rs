//! Starting backups, restores and verifies as tasks, watching or cancelling tasks, and
//! stopping them all when the appliance shuts down.
//!
//! A restore writes into `restores/.<target>.partial/` and renames it when complete, so a
//! finished name never holds half a restore; leftovers of interrupted restores are removed
//! when the appliance opens.
//!
//! A job's backup is retried (`retries` times, waiting 10 s, 20 s, 40 s... between attempts)
//! only when its error is transient (`TaskErrorKind::Transient`: a dropped connection, a
//! timeout, a server that refused the connection because it was down); a permanent error
//! (a missing file, a corrupt image, bad credentials) fails at once, and the log says why it
//! was not retried.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::points::record_usage;
use crate::tasks::{self, Live, ShutdownReport, TaskError, TaskErrorKind, TaskKind};
use crate::{
    plain_name, source_datastore, source_host, Appliance, BackupResult, Event, JobConfig, Principal, RestoreResult,
    Role, ServiceError, TaskInfo, TaskResult,
};

/// A restore through the API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub point: String,
    #[serde(default)]
    pub disk: Option<String>,
    /// A plain name: the restore goes to `<data>/restores/<target>/`.
    pub target: String,
}

/// Removes what interrupted restores left (`restores/.<target>.partial/`).
pub(crate) fn remove_partial_restores(root: &Path) -> Result<(), ServiceError> {
    let entries = std::fs::read_dir(root).map_err(|e| ServiceError::io(root, e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".partial") {
            let path = e.path();
            let gone = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            gone.map_err(|err| ServiceError::io(&path, err))?;
        }
    }
    Ok(())
}

/// A failed restore's partial output is worthless (a damaged-tape restore moves what it
/// could read elsewhere first): remove it so the target name can be used again.
pub(crate) fn discard_on_error(partial: &Path, r: Result<TaskResult, TaskError>) -> Result<TaskResult, TaskError> {
    if r.is_err() {
        let _ = std::fs::remove_dir_all(partial);
    }
    r
}

impl Appliance {
    // ---- tasks ---------------------------------------------------------------------------------

    /// A backup task, of a job (its retries, immutability, retention and destage) or manual.
    /// A job that destages queues a destage task of the new restore point to its pool (a
    /// failure to queue it is logged, the backup stands); a job with retention prunes after
    /// a successful backup. A staging tier above its high watermark that nothing can relieve
    /// refuses the backup before it reads anything.
    pub(crate) fn backup_task(
        &self,
        user: &str,
        source_id: &str,
        job: Option<&JobConfig>,
    ) -> Result<TaskInfo, ServiceError> {
        let retries = job.map_or(0, |j| j.retries);
        let then_destage = job.and_then(|j| j.destage_pool.clone());
        let then_replicate = job.and_then(|j| j.replicate_to.clone());
        let immutable_for_s = job.and_then(|j| j.immutable_days).map(|d| u64::from(d) * 86_400);
        let job = job.cloned();
        let me = self.me.clone();
        let task_user = user.to_string();
        let src = self.source(source_id)?;
        let secrets = self.secrets(&src)?;
        let store = self.store.clone();
        let name = src.name.clone();
        let url = src.url.clone();
        // One limiter for the whole source: all its disks share the limit.
        let limiter = src.max_read_mbps.map(|mbps| blocksource::RateLimiter::new(u64::from(mbps) * 1_000_000));
        let (env, usage_db) = (self.env.clone(), self.usage_db);
        let retry_unit = *crate::lock(&self.tasks.retry_unit);
        let work: tasks::Job = Box::new(move |live: &Live| {
            let mut defer_compression = true;
            if let Some(app) = me.upgrade() {
                app.capacity_gate(live)?;
                defer_compression = app.defer_compression(live);
            }
            let mut attempt = 0;
            loop {
                let r = (|| -> Result<engine::BackupReport, TaskError> {
                    live.log(&format!("opening {url}"));
                    let mut opened = engine::open_source_all(&url, &secrets)?;
                    live.log(&format!("opened {}: {} disk(s)", opened.describe, opened.disks.len()));
                    if let Some(l) = &limiter {
                        live.log(&format!("reads limited to {} MB/s", l.bytes_per_s() / 1_000_000));
                        opened.disks = std::mem::take(&mut opened.disks)
                            .into_iter()
                            .map(|(label, d)| {
                                let d: Box<dyn blocksource::BlockSource> =
                                    Box::new(blocksource::RateLimited::new(d, l.clone()));
                                (label, d)
                            })
                            .collect();
                    }
                    let disks: Vec<engine::DiskToBackup<'_>> = opened
                        .disks
                        .iter()
                        .map(|(label, d)| engine::DiskToBackup { label, source: d.as_ref() })
                        .collect();
                    let opts = engine::BackupOptions {
                        immutable_for_s,
                        defer_compression,
                        ..engine::BackupOptions::new(&name)
                    };
                    let report = engine::backup_disks(&store, &disks, &opened.files, &opts, live)?;
                    live.log(&format!(
                        "backup complete: restore point {}@{}, {} bytes read, {} written, {} of {} chunks new",
                        report.name,
                        report.id,
                        report.bytes_read,
                        report.bytes_written,
                        report.chunks_new,
                        report.chunks_total
                    ));
                    Ok(report)
                })();
                match r {
                    Ok(report) => {
                        if let (Some(job), Some(app)) = (&job, me.upgrade()) {
                            app.prune_after_backup(job, live);
                        }
                        record_usage(&store, &env, &usage_db);
                        let mut result = BackupResult { report, destage_task: None, replicate_task: None };
                        if let (Some(pool), Some(app)) = (&then_destage, me.upgrade()) {
                            let point = format!("{}@{}", result.report.name, result.report.id);
                            match app.destage_task(&task_user, &point, pool) {
                                Ok(t) => {
                                    live.log(&format!("destage of {point} to pool {pool} queued as task {}", t.id));
                                    result.destage_task = Some(t.id);
                                }
                                Err(e) => {
                                    live.log(&format!("warning: could not queue the destage to pool {pool}: {e}"))
                                }
                            }
                        }
                        if let (Some(remote), Some(app)) = (&then_replicate, me.upgrade()) {
                            let point = format!("{}@{}", result.report.name, result.report.id);
                            match app.replication_task(&task_user, &point, remote) {
                                Ok(t) => {
                                    live.log(&format!("replication of {point} queued as task {}", t.id));
                                    result.replicate_task = Some(t.id);
                                }
                                Err(e) => live.log(&format!("warning: could not queue the replication: {e}")),
                            }
                        }
                        return Ok(TaskResult::Backup(result));
                    }
                    Err(e) if e.kind == TaskErrorKind::Transient && attempt < retries && !live.is_cancelled() => {
                        attempt += 1;
                        let wait = retry_unit.saturating_mul(1 << attempt.min(6));
                        live.log(&format!(
                            "attempt {attempt} of {} failed: {e}; the error is transient, retrying in {} s",
                            retries + 1,
                            wait.as_secs_f64()
                        ));
                        let until = std::time::Instant::now() + wait;
                        while std::time::Instant::now() < until {
                            if live.is_cancelled() {
                                return Err(TaskError::cancelled("cancelled while waiting to retry"));
                            }
                            std::thread::sleep((until - std::time::Instant::now()).min(Duration::from_millis(250)));
                        }
                    }
                    Err(e) => {
                        if e.kind == TaskErrorKind::Permanent && attempt < retries {
                            live.log(
                                "not retried: the error is permanent (a missing or unreadable file, a corrupt or \
                                 unsupported image, wrong credentials or a refused request stay so until someone \
                                 fixes them); fix the cause, then run the job again",
                            );
                        } else if e.kind == TaskErrorKind::Transient && retries > 0 {
                            live.log(&format!("giving up after {} attempt(s)", attempt + 1));
                        }
                        return Err(e);
                    }
                }
            }
        });
        self.tasks.spawn(TaskKind::Backup, &src.name, user, (&source_host(&src.url), &source_datastore(&src.url)), work)
    }

    pub fn start_backup(&self, actor: &Principal, source_id: &str) -> Result<TaskInfo, ServiceError> {
        actor.require(Role::Operator)?;
        let t = self.backup_task(&actor.user, source_id, None)?;
        self.audit(actor, "start backup", source_id);
        Ok(t)
    }

    /// The final and the in-progress directory of a restore to `target`. A restore writes
    /// into `restores/.<target>.partial/` and renames it when complete, so a finished name
    /// never holds half a restore; leftovers of interrupted restores are removed at open.
    pub(crate) fn restore_dirs(&self, target: &str) -> Result<(PathBuf, PathBuf), ServiceError> {
        plain_name(target, "restore target")?;
        let root = self.data_dir.join("restores");
        let dir = root.join(target);
        let partial = root.join(format!(".{target}.partial"));
        if dir.exists() {
            return Err(ServiceError::Conflict(format!("restore target {target} exists; pick another name")));
        }
        if partial.exists() {
            return Err(ServiceError::Conflict(format!(
                "a restore to {target} is running or kept its incomplete output in {}; pick another name",
                partial.display()
            )));
        }
        Ok((dir, partial))
    }

    pub fn start_restore(&self, actor: &Principal, req: RestoreRequest) -> Result<TaskInfo, ServiceError> {
        actor.require(Role::Operator)?;
        let (dir, partial) = self.restore_dirs(&req.target)?;
        let point = self.store.find(&req.point)?;
        let disks: Vec<usize> = match &req.disk {
            Some(d) => vec![point
                .disks
                .iter()
                .position(|x| &x.label == d)
                .ok_or_else(|| ServiceError::Invalid(format!("restore point {} has no disk {d}", point.spec())))?],
            None => (0..point.disks.len()).collect(),
        };
        let store = self.store.clone();
        let spec = point.spec();
        let job: tasks::Job = Box::new(move |live: &Live| {
            let run = || -> Result<TaskResult, TaskError> {
                crate::private_dir(&partial).map_err(|e| TaskError::io(&partial, e))?;
                let mut names = Vec::new();
                for i in disks {
                    let label = &point.disks[i].label;
                    let name = format!("{}.raw", engine::disk_file_name(label));
                    let to = partial.join(&name);
                    live.log(&format!("restoring disk {label} to {}", dir.join(&name).display()));
                    let opts = engine::RestoreOptions {
                        to: to.clone(),
                        format: engine::RestoreFormat::Raw,
                        verify: false,
                        force: false,
                        disk: i,
                        threads: 0,
                        read_ahead: true,
                    };
                    let r = engine::restore(&store, &point, &opts, live)?;
                    live.log(&format!("disk {label}: {} bytes written", r.bytes_written));
                    names.push(name);
                }
                for f in &point.files {
                    let content = store.read_point_file(f)?;
                    let to = partial.join(&f.name);
                    crate::config::write_private(&to, &content)?;
                    names.push(f.name.clone());
                }
                std::fs::rename(&partial, &dir).map_err(|e| TaskError::io(&dir, e))?;
                let outputs: Vec<String> = names.iter().map(|n| dir.join(n).display().to_string()).collect();
                live.log(&format!("restore complete: {}", outputs.join(", ")));
                Ok(TaskResult::Restore(RestoreResult { point: point.spec(), outputs }))
            };
            discard_on_error(&partial, run())
        });
        let t = self.tasks.spawn(TaskKind::Restore, &spec, &actor.user, ("local", "restores"), job)?;
        self.audit(actor, "start restore", &format!("{spec} to {}", req.target));
        Ok(t)
    }

    pub fn start_verify(&self, actor: &Principal, point: Option<String>) -> Result<TaskInfo, ServiceError> {
        actor.require(Role::Operator)?;
        let t = self.verify_task(&actor.user, point.clone(), None)?;
        self.audit(actor, "start verify", point.as_deref().unwrap_or("the whole store"));
        Ok(t)
    }

    /// A verify task: of one point, of the whole store, or with `incremental`, of the packs
    /// not scanned clean recently.
    pub(crate) fn verify_task(
        &self,
        user: &str,
        point: Option<String>,
        incremental: Option<store::VerifyOptions>,
    ) -> Result<TaskInfo, ServiceError> {
        if let Some(p) = &point {
            self.store.find(p)?;
        }
        let store = self.store.clone();
        let subject = match (&point, &incremental) {
            (Some(p), _) => p.clone(),
            (None, Some(_)) => "the whole store (incremental)".into(),
            (None, None) => "the whole store".into(),
        };
        let me = self.me.clone();
        let job: tasks::Job = Box::new(move |live: &Live| {
            let r = match &incremental {
                Some(opts) => engine::verify_incremental(&store, opts, 0, live),
                None => engine::verify(&store, point.as_deref(), 0, live),
            }?;
            if !r.is_clean() {
                if let Some(app) = me.upgrade() {
                    app.notify(Event::VerifyDamage {
                        task_id: live.id(),
                        damaged_points: r.damaged_points.iter().map(|p| p.point.clone()).collect(),
                        damaged_records: r.damaged_records.len() as u64,
                    });
                }
            }
            if r.is_clean() {
                live.log(&format!("verify complete: {} chunks intact", r.chunks_checked));
                Ok(TaskResult::Verify(r))
            } else {
                Err(TaskError::permanent(format!(
                    "damage found: {} damaged record(s), {} damaged restore point(s)",
                    r.damaged_records.len(),
                    r.damaged_points.len()
                )))
            }
        });
        self.tasks.spawn(TaskKind::Verify, &subject, user, ("local", "store"), job)
    }

    pub fn tasks(&self, actor: &Principal) -> Result<Vec<TaskInfo>, ServiceError> {
        actor.require(Role::Auditor)?;
        self.tasks.list(500)
    }

    pub fn task(&self, actor: &Principal, id: u64) -> Result<TaskInfo, ServiceError> {
        actor.require(Role::Auditor)?;
        self.tasks.get(id)
    }

    pub fn task_log(&self, actor: &Principal, id: u64, from: u64) -> Result<(Vec<String>, u64), ServiceError> {
        actor.require(Role::Auditor)?;
        self.tasks.log_lines(id, from)
    }

    pub fn cancel_task(&self, actor: &Principal, id: u64) -> Result<TaskInfo, ServiceError> {
        actor.require(Role::Operator)?;
        let t = self.tasks.cancel(id)?;
        self.audit(actor, "cancel task", &id.to_string());
        Ok(t)
    }

    // ---- shutdown --------------------------------------------------------------------------------

    /// Stops the appliance's tasks for a shutdown: new tasks are refused from now on
    /// (`Conflict`, and the scheduler starts nothing), every queued and running task is
    /// cancelled, and this waits until they have all ended (each `cancelled`, its record
    /// written, its partial output removed) or `deadline` has passed. Tasks still running then
    /// (a step that does not look at the cancel flag, e.g. a long read) are listed in the
    /// report; after the next start they read `interrupted`. For the daemon's signal handler;
    /// the same as [`Appliance::begin_shutdown`] then [`Appliance::wait_for_tasks`].
    pub fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let cancelled = self.begin_shutdown();
        ShutdownReport { cancelled, ..self.wait_for_tasks(deadline) }
    }

    /// Shutdown, step 1: refuses new tasks from now on and cancels every queued and running
    /// one; returns how many. Written to the audit log.
    pub fn begin_shutdown(&self) -> usize {
        let n = self.tasks.begin_shutdown();
        self.audit(
            &Principal::new("system", Role::Admin),
            "shutdown",
            &format!("the appliance is shutting down: {n} task(s) cancelled, no new task starts"),
        );
        n
    }

    /// Shutdown, step 2: waits until no task is queued or running, or `deadline` has passed.
    pub fn wait_for_tasks(&self, deadline: Duration) -> ShutdownReport {
        self.tasks.wait_idle(deadline)
    }

    /// Whether [`Appliance::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.tasks.is_shutting_down()
    }
}
