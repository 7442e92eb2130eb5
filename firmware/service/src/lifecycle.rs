//! The store's life over months, in the appliance: restore points as the API shows them
//! (pinned, immutable, on tape, or on tape only), delete and pin, per-job retention and
//! prune, the maintenance task (prune every job, relieve capacity, collect garbage),
//! capacity watermarks with a forecast, and the trusted clock's tick.
//!
//! ## Rules
//! - Immutability and pins are enforced by the store; this layer only reports them and maps
//!   the store's refusals to `Conflict`.
//! - A job's retention applies to the restore points of its source (the point name). A job
//!   that destages to tape prunes a point from disk only once a complete tape copy exists;
//!   the point is then listed as `tape_only`.
//! - Above the high watermark: prune what retention allows, then delete the oldest points that
//!   are safely on tape, collecting garbage, down to the low watermark. A backup that starts
//!   above the high watermark runs that relief first and is refused, before it reads
//!   anything, when nothing can be freed.
//! - The scheduler's tick (every few seconds) reads the filesystem's fill (one statvfs), sends
//!   a notification when it crosses a watermark, observes the trusted clock once a minute
//!   (writing a suspicious jump to the audit log) and starts the maintenance when its calendar
//!   event is due.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use store::{RestorePoint, StoreError};

use crate::notify::{Crossing, Event};
use crate::schedule::CalendarEvent;
use crate::tasks::{self, Live, TaskError, TaskInfo, TaskKind};
use crate::{
    lock, now_unix, Appliance, JobConfig, Principal, Role, ServiceError, TaskResult, UpkeepResult, Usage, UsageSample,
};

/// A restore point as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PointInfo {
    #[serde(flatten)]
    pub point: RestorePoint,
    /// Protected from prune and delete.
    pub pinned: bool,
    /// Inside its immutability window now (by the store's trusted clock).
    pub immutable: bool,
    /// A complete copy exists on tape.
    pub on_tape: bool,
    /// No longer on disk: only on tape (restore it from tape).
    pub tape_only: bool,
    /// Its copies on remotes (appliances and buckets), as replications recorded them.
    pub remote_copies: Vec<crate::RemoteCopy>,
}

/// `POST /prune`: a job's retention applied now, or as a dry run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneRequest {
    pub job: String,
    #[serde(default)]
    pub dry_run: bool,
}

/// `PUT /points/{spec}/pin`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    pub pinned: bool,
}

/// `POST /gc`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    #[serde(default)]
    pub dry_run: bool,
}

/// The staging tier's capacity, as the dashboard and `/capacity` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapacityInfo {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub used_pct: f64,
    pub high_pct: u8,
    pub low_pct: u8,
    pub above_high: bool,
    /// Bytes in the store's packs, and logical bytes over stored bytes.
    pub bytes_stored: u64,
    pub dedup_ratio: f64,
    /// Growth of the store over the last 30 days of samples, bytes per day.
    pub growth_bytes_per_day: Option<f64>,
    /// At that growth, days until the filesystem is full; absent when not growing.
    pub days_until_full: Option<f64>,
}

/// What the tick remembers between calls.
#[derive(Debug, Default)]
pub(crate) struct Upkeep {
    above_high: bool,
    last_clock_unix: u64,
    next_maintenance: Option<u64>,
    maintenance_task: Option<u64>,
    next_verify: Option<(String, u64)>,
}

/// Least-squares growth of `bytes_stored` over the samples of the last 30 days, in bytes per
/// day, and the days until `free` bytes are used at that rate. Needs samples spanning at
/// least an hour; a store that is not growing gives no forecast.
pub fn forecast(samples: &[UsageSample], free: u64, now: u64) -> (Option<f64>, Option<f64>) {
    let recent: Vec<&UsageSample> = samples.iter().filter(|s| s.unix + 30 * 86_400 >= now).collect();
    let (Some(first), Some(last)) = (recent.first(), recent.last()) else { return (None, None) };
    if last.unix.saturating_sub(first.unix) < 3600 || recent.len() < 2 {
        return (None, None);
    }
    let n = recent.len() as f64;
    let t0 = first.unix as f64;
    let mean_t = recent.iter().map(|s| s.unix as f64 - t0).sum::<f64>() / n;
    let mean_b = recent.iter().map(|s| s.bytes_stored as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for s in &recent {
        let dt = s.unix as f64 - t0 - mean_t;
        num += dt * (s.bytes_stored as f64 - mean_b);
        den += dt * dt;
    }
    if den == 0.0 {
        return (None, None);
    }
    let per_day = num / den * 86_400.0;
    if per_day <= 0.0 {
        return (Some(per_day), None);
    }
    (Some(per_day), Some(free as f64 / per_day))
}

/// `NAME@ID` to its parts.
fn split_spec(spec: &str) -> Result<(String, u64), ServiceError> {
    let (name, id) = spec
        .rsplit_once('@')
        .ok_or_else(|| ServiceError::Invalid(format!("{spec:?}: name the restore point as NAME@ID")))?;
    let id = id.parse().map_err(|_| ServiceError::Invalid(format!("{spec:?}: the part after '@' must be an id")))?;
    Ok((name.to_string(), id))
}

/// The store refuses to delete: a conflict with the point's state, not a bad request.
fn refusal(e: StoreError) -> ServiceError {
    match e {
        e @ (StoreError::Immutable { .. } | StoreError::Pinned { .. } | StoreError::Busy(_)) => {
            ServiceError::Conflict(e.to_string())
        }
        e => ServiceError::Store(e),
    }
}

impl Appliance {
    fn system() -> Principal {
        Principal::new("scheduler", Role::Operator)
    }

    /// Whether a complete copy of `p` is on tape.
    pub(crate) fn on_tape(&self, p: &RestorePoint) -> bool {
        self.tape_catalog.point_copies(&p.spec()).is_ok_and(|c| !c.is_empty())
    }

    fn time_zone(&self) -> store::retention::TimeZone {
        let name = lock(&self.config).settings.time_zone.clone();
        name.and_then(|n| store::retention::time_zone(&n).ok()).unwrap_or_else(store::retention::system_time_zone)
    }

    /// Every restore point, on disk or on tape only, newest first.
    pub fn points(&self, actor: &Principal) -> Result<Vec<PointInfo>, ServiceError> {
        actor.require(Role::Auditor)?;
        let pins = self.store.pins()?;
        let now = self.store.peek_clock().map(|c| c.trusted_unix).unwrap_or_else(|_| now_unix());
        let mut copies = self.remote_copies()?;
        let mut out: Vec<PointInfo> = self
            .store
            .list()?
            .into_iter()
            .map(|p| PointInfo {
                pinned: pins.contains(&(p.name.clone(), p.id)),
                immutable: p.immutable_until_unix.is_some_and(|u| u > now),
                on_tape: self.on_tape(&p),
                tape_only: false,
                remote_copies: copies.remove(&p.spec()).unwrap_or_default(),
                point: p,
            })
            .collect();
        let mut on_disk: std::collections::HashSet<String> = out.iter().map(|p| p.point.spec()).collect();
        for copy in self.tape_catalog.all_points()? {
            if on_disk.insert(copy.point.spec()) {
                let remote_copies = copies.remove(&copy.point.spec()).unwrap_or_default();
                out.push(PointInfo {
                    point: copy.point,
                    pinned: false,
                    immutable: false,
                    on_tape: true,
                    tape_only: true,
                    remote_copies,
                });
            }
        }
        out.sort_by(|a, b| b.point.created_unix.cmp(&a.point.created_unix).then(b.point.id.cmp(&a.point.id)));
        Ok(out)
    }

    /// Deletes one restore point from disk (admin), unless pinned or immutable.
    pub fn delete_point(&self, actor: &Principal, spec: &str) -> Result<(), ServiceError> {
        actor.require(Role::Admin)?;
        let (name, id) = split_spec(spec)?;
        self.store.delete_points(&[(name, id)], &format!("deleted by {}", actor.user)).map_err(refusal)?;
        self.audit(actor, "delete restore point", spec);
        Ok(())
    }

    /// Pins (protects) or unpins a restore point (admin).
    pub fn pin_point(&self, actor: &Principal, spec: &str, req: PinRequest) -> Result<(), ServiceError> {
        actor.require(Role::Admin)?;
        let (name, id) = split_spec(spec)?;
        self.store.set_pinned(&name, id, req.pinned)?;
        self.audit(actor, if req.pinned { "pin restore point" } else { "unpin restore point" }, spec);
        Ok(())
    }

    /// Applies a job's retention now (admin), or lists what it would do (`dry_run`, auditor).
    pub fn prune_job(&self, actor: &Principal, req: PruneRequest) -> Result<engine::prune::PruneReport, ServiceError> {
        actor.require(if req.dry_run { Role::Auditor } else { Role::Admin })?;
        let job = lock(&self.config)
            .jobs
            .iter()
            .find(|j| j.id == req.job)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(format!("no job {}", req.job)))?;
        let policy = job.retention.clone().ok_or_else(|| {
            ServiceError::Invalid(format!("job {} has no retention policy, so it keeps every point", job.name))
        })?;
        let report = self.prune_with(&job, &policy, req.dry_run, &actor.user)?;
        if !req.dry_run {
            self.audit(actor, "prune", &format!("job {}: {} point(s) pruned", job.name, report.pruned));
        }
        Ok(report)
    }

    fn prune_with(
        &self,
        job: &JobConfig,
        policy: &store::retention::RetentionPolicy,
        dry_run: bool,
        who: &str,
    ) -> Result<engine::prune::PruneReport, ServiceError> {
        let name = self.source(&job.source)?.name;
        let tz = self.time_zone();
        let req = engine::prune::PruneRequest {
            name: &name,
            policy,
            tz: &tz,
            require_tape_copy: job.destage_pool.is_some(),
            dry_run,
            actor: &format!("{who} (job {})", job.name),
        };
        engine::prune::prune(&self.store, &req, &|p| self.on_tape(p)).map_err(|e| match e {
            engine::EngineError::Store(e) => refusal(e),
            e => ServiceError::Engine(e),
        })
    }

    /// After a job's successful backup: apply its retention, logging what went. A failure is
    /// logged; the backup stands.
    pub(crate) fn prune_after_backup(&self, job: &JobConfig, live: &Live) {
        let Some(policy) = &job.retention else { return };
        match self.prune_with(job, policy, false, "scheduler") {
            Ok(r) => live.log(&format!(
                "retention: {} kept, {} pruned, {} kept as immutable, {} kept until on tape",
                r.kept, r.pruned, r.kept_immutable, r.kept_awaiting_tape
            )),
            Err(e) => live.log(&format!("warning: retention could not be applied: {e}")),
        }
    }

    /// Starts a garbage collection as a task (operator).
    pub fn start_gc(&self, actor: &Principal, req: GcRequest) -> Result<TaskInfo, ServiceError> {
        actor.require(Role::Operator)?;
        let t = self.maintenance_task(&actor.user, false, req.dry_run)?;
        self.audit(actor, "start gc", if req.dry_run { "dry run" } else { "" });
        Ok(t)
    }

    /// The maintenance task: with `full`, prune every job with retention and relieve the
    /// capacity first; then collect garbage.
    fn maintenance_task(&self, user: &str, full: bool, dry_run: bool) -> Result<TaskInfo, ServiceError> {
        let me = self.me.clone();
        let work: tasks::Job = Box::new(move |live: &Live| {
            let app = me.upgrade().ok_or_else(|| TaskError::cancelled("cancelled: the appliance is shutting down"))?;
            let (mut pruned, mut relieved) = (None, None);
            if full {
                pruned = Some(app.prune_all(live));
                let (high, low) = app.watermarks();
                let relief =
                    engine::prune::relieve(&app.store, f64::from(high), f64::from(low), &|p| app.on_tape(p), &|| {
                        live.is_cancelled()
                    })?;
                for p in &relief.deleted_on_tape {
                    live.log(&format!("freed space: deleted {p} from disk (a complete tape copy exists)"));
                }
                if let Some(stuck) = &relief.stuck {
                    live.log(&format!("warning: {stuck}"));
                }
                relieved = Some(relief);
            }
            let phase = Mutex::new(String::new());
            let progress = |p: store::GcProgress| {
                let mut cur = lock(&phase);
                if *cur != p.phase {
                    *cur = p.phase.to_string();
                    engine::Progress::start(live, p.phase, p.total);
                }
                engine::Progress::advance(live, 1);
            };
            let opts = store::GcOptions { dry_run, ..Default::default() };
            // A verify, repair or another GC holds the store's GC lock: wait for it.
            let report = loop {
                match app.store.gc(&opts, &progress, &|| live.is_cancelled()) {
                    Err(StoreError::Busy(why)) if !live.is_cancelled() => {
                        live.log(&format!("waiting: {why}"));
                        for _ in 0..10 {
                            if live.is_cancelled() {
                                return Err(TaskError::cancelled("cancelled while waiting for the store"));
                            }
                            std::thread::sleep(std::time::Duration::from_secs(1));
                        }
                    }
                    r => break r?,
                }
            };
            live.log(&format!(
                "gc: {} chunk(s) condemned, {} pack(s) deleted, {} rewritten, {} bytes freed ({} held for running backups)",
                report.chunks_condemned, report.packs_deleted, report.packs_repacked, report.bytes_freed, report.chunks_held
            ));
            let recompress = (full && !dry_run).then(|| app.recompress_in_background(live)).flatten().map(Box::new);
            crate::points::record_usage(&app.store, &app.env, &app.usage_db);
            Ok(TaskResult::Upkeep(UpkeepResult { pruned, relief: relieved, gc: report, recompress }))
        });
        let kind = if full { TaskKind::Maintenance } else { TaskKind::Gc };
        self.tasks.spawn(kind, "store", user, ("appliance", "store-upkeep"), work)
    }

    /// The maintenance's last step: compress what backups stored raw, on a thread of the
    /// lowest CPU and I/O priority, stopping when a backup starts (the next maintenance goes
    /// on). A failure is logged; the maintenance stands.
    fn recompress_in_background(&self, live: &Live) -> Option<store::RecompressReport> {
        let opts = store::RecompressOptions { level: engine::DEFAULT_ZSTD_LEVEL, yield_to_backups: true, threads: 0 };
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let (started, last) = (AtomicBool::new(false), AtomicU64::new(0));
        let progress = |p: store::GcProgress| {
            if !started.swap(true, Ordering::Relaxed) {
                engine::Progress::start(live, p.phase, p.total);
            }
            engine::Progress::advance(live, p.done.saturating_sub(last.swap(p.done, Ordering::Relaxed)));
        };
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                if let Err(e) = uringio::lower_this_thread_to_background() {
                    live.log(&format!("note: recompression runs at normal priority ({e})"));
                }
                self.store.recompress(&opts, &progress, &|| live.is_cancelled())
            })
            .join()
        });
        match result {
            Ok(Ok(r)) => {
                if r.packs_pending > 0 {
                    live.log(&format!(
                        "recompress: {} pack(s) rewritten, {} chunk(s) compressed at zstd {}, store {} -> {} bytes{}",
                        r.packs_rewritten,
                        r.chunks_compressed,
                        r.level,
                        r.store_bytes_before,
                        r.store_bytes_after,
                        r.stopped_because.as_deref().map(|why| format!(" (stopped: {why})")).unwrap_or_default()
                    ));
                }
                Some(r)
            }
            Ok(Err(e)) => {
                live.log(&format!(
                    "warning: recompression failed, data stays stored raw until the next maintenance: {e}"
                ));
                None
            }
            Err(_) => {
                live.log("warning: recompression stopped unexpectedly; the next maintenance retries");
                None
            }
        }
    }

    /// Prunes every job that has a retention policy; returns how many points went.
    fn prune_all(&self, live: &Live) -> u64 {
        let jobs = lock(&self.config).jobs.clone();
        let mut total = 0;
        for job in &jobs {
            let Some(policy) = &job.retention else { continue };
            match self.prune_with(job, policy, false, "maintenance") {
                Ok(r) => {
                    total += r.pruned;
                    live.log(&format!("job {}: {} kept, {} pruned", job.name, r.kept, r.pruned));
                }
                Err(e) => live.log(&format!("warning: job {}: retention could not be applied: {e}", job.name)),
            }
        }
        total
    }

    fn watermarks(&self) -> (u8, u8) {
        let s = &lock(&self.config).settings;
        (s.capacity_high_pct, s.capacity_low_pct)
    }

    /// Whether a backup may store its data raw for the nightly maintenance to compress: not
    /// once the staging tier is above its low watermark, where the extra room raw data takes
    /// until the night would bring it to the high one sooner.
    pub(crate) fn defer_compression(&self, live: &Live) -> bool {
        let (_, low) = self.watermarks();
        let Ok(cap) = self.store.capacity() else { return true };
        if cap.used_pct() < f64::from(low) {
            return true;
        }
        live.log(&format!(
            "the staging tier is {:.1}% full (low watermark {low}%): compressing during the backup",
            cap.used_pct()
        ));
        false
    }

    /// Before a backup reads anything: above the high watermark, free what can be freed; if
    /// nothing can, refuse with the reason.
    pub(crate) fn capacity_gate(&self, live: &Live) -> Result<(), TaskError> {
        let (high, low) = self.watermarks();
        let Ok(cap) = self.store.capacity() else { return Ok(()) };
        if cap.used_pct() < f64::from(high) {
            return Ok(());
        }
        live.log(&format!(
            "the staging tier is {:.1}% full (high watermark {high}%): pruning and freeing space first",
            cap.used_pct()
        ));
        self.prune_all(live);
        match engine::prune::relieve(&self.store, f64::from(high), f64::from(low), &|p| self.on_tape(p), &|| {
            live.is_cancelled()
        }) {
            Ok(r) => {
                for p in &r.deleted_on_tape {
                    live.log(&format!("freed space: deleted {p} from disk (a complete tape copy exists)"));
                }
                match r.stuck {
                    Some(stuck) if r.used_pct_after >= f64::from(high) => {
                        Err(TaskError::permanent(format!("backup refused before it started: {stuck}")))
                    }
                    _ => Ok(()),
                }
            }
            Err(engine::EngineError::Store(StoreError::Busy(why))) => Err(TaskError::new(
                tasks::TaskErrorKind::Transient,
                format!("backup refused before it started: the staging tier is above its high watermark and {why}"),
            )),
            Err(e) => match TaskError::from(e) {
                e if e.kind == tasks::TaskErrorKind::Cancelled => {
                    Err(TaskError::cancelled("cancelled while freeing space"))
                }
                e => Err(e.context("backup refused before it started: freeing space failed: ")),
            },
        }
    }

    /// Capacity with the watermarks and a forecast from `usage`'s history.
    pub(crate) fn capacity_of(&self, usage: &Usage) -> Result<CapacityInfo, ServiceError> {
        let cap = self.store.capacity()?;
        let (high, low) = self.watermarks();
        let (growth, days) = forecast(&usage.history, cap.free_bytes, now_unix());
        Ok(CapacityInfo {
            total_bytes: cap.total_bytes,
            used_bytes: cap.used_bytes,
            free_bytes: cap.free_bytes,
            used_pct: cap.used_pct(),
            high_pct: high,
            low_pct: low,
            above_high: cap.used_pct() >= f64::from(high),
            bytes_stored: usage.bytes_stored,
            dedup_ratio: usage.dedup_ratio,
            growth_bytes_per_day: growth,
            days_until_full: days,
        })
    }

    pub fn capacity(&self, actor: &Principal) -> Result<CapacityInfo, ServiceError> {
        actor.require(Role::Auditor)?;
        let usage = self.usage(actor)?;
        self.capacity_of(&usage)
    }

    /// Capacity gauges for `/metrics`.
    pub(crate) fn capacity_metrics(&self, out: &mut String) {
        let Ok(cap) = self.store.capacity() else { return };
        let (high, low) = self.watermarks();
        out.push_str(&format!(
            "# HELP rackvault_capacity_bytes Size of the staging tier's filesystem.\n# TYPE rackvault_capacity_bytes gauge\nrackvault_capacity_bytes {}\n\
             # HELP rackvault_capacity_used_bytes Bytes used on the staging tier's filesystem.\n# TYPE rackvault_capacity_used_bytes gauge\nrackvault_capacity_used_bytes {}\n\
             # HELP rackvault_capacity_free_bytes Bytes available on the staging tier's filesystem.\n# TYPE rackvault_capacity_free_bytes gauge\nrackvault_capacity_free_bytes {}\n\
             # HELP rackvault_capacity_watermark_ratio The capacity watermarks as a share of the filesystem.\n# TYPE rackvault_capacity_watermark_ratio gauge\nrackvault_capacity_watermark_ratio{{level=\"high\"}} {}\nrackvault_capacity_watermark_ratio{{level=\"low\"}} {}\n",
            cap.total_bytes,
            cap.used_bytes,
            cap.free_bytes,
            f64::from(high) / 100.0,
            f64::from(low) / 100.0,
        ));
    }

    /// The store's part of the scheduler tick (see the module docs).
    pub(crate) fn lifecycle_tick(&self, now: u64) {
        let (high, low) = self.watermarks();
        if let Ok(cap) = self.store.capacity() {
            let used = cap.used_pct();
            let crossed = {
                let mut u = lock(&self.upkeep);
                if !u.above_high && used >= f64::from(high) {
                    u.above_high = true;
                    Some(Crossing::Above)
                } else if u.above_high && used < f64::from(low) {
                    u.above_high = false;
                    Some(Crossing::BelowLow)
                } else {
                    None
                }
            };
            if let Some(crossed) = crossed {
                let text = match crossed {
                    Crossing::Above => format!("the staging tier is {used:.1}% full, above the high watermark {high}%"),
                    Crossing::BelowLow => {
                        format!("the staging tier is {used:.1}% full, below the low watermark {low}%")
                    }
                };
                self.audit(&Self::system(), "capacity", &text);
                self.notify(Event::CapacityWatermark { used_pct: used.round() as u8, high_pct: high, crossed });
            }
        }
        let clock_due = {
            let mut u = lock(&self.upkeep);
            let due = now >= u.last_clock_unix + 60;
            if due {
                u.last_clock_unix = now;
            }
            due
        };
        if clock_due {
            if let Ok(reading) = self.store.observe_clock() {
                if let Some(jump) = reading.suspicious_jump_s {
                    self.audit(
                        &Self::system(),
                        "clock jump",
                        &format!(
                            "the system clock moved {jump} s {} the time elapsed since the last reading; immutability windows keep counting by elapsed time (trusted time {})",
                            if jump > 0 { "ahead of" } else { "behind" },
                            reading.trusted_unix
                        ),
                    );
                }
            }
        }
        self.verify_tick(now);
        let schedule = lock(&self.config).settings.maintenance_schedule.clone();
        let Ok(ev) = CalendarEvent::parse(&schedule) else { return };
        let due = {
            let mut u = lock(&self.upkeep);
            let planned = *u.next_maintenance.get_or_insert_with(|| ev.next_after(now).unwrap_or(u64::MAX));
            if planned > now {
                false
            } else {
                u.next_maintenance = ev.next_after(now);
                let running =
                    u.maintenance_task.and_then(|id| self.tasks.get(id).ok()).is_some_and(|t| !t.state.is_finished());
                !running
            }
        };
        if due {
            match self.maintenance_task("scheduler", true, false) {
                Ok(t) => lock(&self.upkeep).maintenance_task = Some(t.id),
                Err(e) => self.audit(&Self::system(), "maintenance failed to start", &e.to_string()),
            }
        }
    }
}

impl Appliance {
    /// Starts the scheduled incremental verify when due.
    fn verify_tick(&self, now: u64) {
        let (schedule, skip_days) = {
            let c = lock(&self.config);
            (c.settings.verify_schedule.clone(), c.settings.verify_skip_days)
        };
        let Some(ev) = schedule.as_deref().and_then(|s| CalendarEvent::parse(s).ok()) else {
            lock(&self.upkeep).next_verify = None;
            return;
        };
        let due = {
            let mut u = lock(&self.upkeep);
            let schedule = schedule.unwrap_or_default();
            let planned = match &u.next_verify {
                Some((s, t)) if *s == schedule => *t,
                _ => {
                    let t = ev.next_after(now).unwrap_or(u64::MAX);
                    u.next_verify = Some((schedule.clone(), t));
                    t
                }
            };
            if planned > now {
                false
            } else {
                u.next_verify = Some((schedule, ev.next_after(now).unwrap_or(u64::MAX)));
                true
            }
        };
        if due {
            let opts =
                store::VerifyOptions { skip_verified_within_s: Some(u64::from(skip_days) * 86_400), max_packs: None };
            if let Err(e) = self.verify_task("scheduler", None, Some(opts)) {
                self.audit(&Self::system(), "verify failed to start", &e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(unix: u64, bytes: u64) -> UsageSample {
        UsageSample { unix, bytes_stored: bytes, bytes_logical: bytes }
    }

    #[test]
    fn the_forecast_follows_the_growth_of_the_last_30_days() {
        let now = 100 * 86_400;
        // 1 GB a day for the last 10 days; an old sample from before the window is ignored.
        let mut samples = vec![s(0, 999_000_000_000)];
        samples.extend((0..10).map(|d| s(now - (9 - d) * 86_400, 10_000_000_000 + d * 1_000_000_000)));
        let (growth, days) = forecast(&samples, 50_000_000_000, now);
        assert!((growth.unwrap() - 1e9).abs() < 1e6, "{growth:?}");
        assert!((days.unwrap() - 50.0).abs() < 0.1, "{days:?}");
    }

    #[test]
    fn a_shrinking_or_unknown_store_has_no_days_until_full() {
        let now = 10 * 86_400;
        let shrinking: Vec<_> = (0..5).map(|d| s(now - (4 - d) * 86_400, 10_000 - d * 100)).collect();
        let (growth, days) = forecast(&shrinking, 1 << 30, now);
        assert!(growth.unwrap() < 0.0);
        assert_eq!(days, None);
        assert_eq!(forecast(&[s(now, 5)], 1 << 30, now), (None, None));
        assert_eq!(forecast(&[], 1 << 30, now), (None, None));
    }
}
