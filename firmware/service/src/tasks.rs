//! The task engine: every backup, restore, verify and destage runs as a task with live
//! progress (bytes, throughput, ETA), a persistent log readable while it runs
//! (`<data>/tasks/<id>.log`), a result and a cancel action.
//!
//! Every task has a [`TaskKind`]; a task that does not succeed ends with a [`TaskError`]
//! whose [`TaskErrorKind`] says whether running it again may help (`transient`), whether
//! someone must act first (`permanent`), or that it was stopped on request (`cancelled`). The
//! kind comes from the failing layer's own classification (`engine::ErrorKind`), never from
//! the message's text; a job's retry policy acts on it.
//!
//! Invariants:
//! - A task's record (`tasks` database) is written when it is created, when it starts and
//!   when it ends; live figures are kept in memory in between. A task that succeeds records
//!   its [`TaskResult`](crate::TaskResult), which is read back through the task's kind
//!   ([`decode_record`]), so records written by older versions still load.
//! - A record found queued or running when the appliance opens belongs to a run that was
//!   interrupted (crash, power loss, a stop that did not wait for it): it is marked
//!   `interrupted`, with a message that says, for its kind, what was cleaned up (see
//!   [`interrupted_message`]).
//! - Shutdown ([`Tasks::begin_shutdown`], then [`Tasks::wait_idle`]): from the moment it
//!   begins, `spawn` refuses new tasks with `Conflict` (the check and the insertion into the
//!   live table happen under one lock, so no task slips past the cancel); every queued and
//!   running task is cancelled as an operator's cancel would, so each ends `cancelled` with
//!   its record written and its partial output removed by its own error path. A task that
//!   does not stop before the deadline is left running; the process exits and the next open
//!   marks it `interrupted`.
//! - Concurrency: at most `max_tasks` run at once, at most `max_tasks_per_host` against one
//!   source host and `max_tasks_per_datastore` against one datastore (an NFS export, an iSCSI
//!   target), so one hypervisor or NAS is not swamped; the rest wait, queued.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use store::kv::{KvDb, KvEnv};

use crate::{now_unix, ServiceError, TaskResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Interrupted,
}

impl TaskState {
    pub fn is_finished(self) -> bool {
        !matches!(self, TaskState::Queued | TaskState::Running)
    }
}

/// What a task does. Serialized as the API and the stored records name it (`tape-restore`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    Backup,
    Restore,
    Verify,
    Destage,
    TapeRestore,
    TapeVerify,
    /// A garbage collection started by hand.
    Gc,
    /// The scheduled upkeep: prune every job, relieve capacity, collect garbage.
    Maintenance,
    /// A restore point sent to another appliance or a bucket.
    Replicate,
    /// A restore point fetched from a remote into this store (restore from a remote copy).
    Pull,
}

impl TaskKind {
    /// Every kind, in the order the API documents them.
    pub const ALL: [TaskKind; 10] = [
        TaskKind::Backup,
        TaskKind::Restore,
        TaskKind::Verify,
        TaskKind::Destage,
        TaskKind::TapeRestore,
        TaskKind::TapeVerify,
        TaskKind::Gc,
        TaskKind::Maintenance,
        TaskKind::Replicate,
        TaskKind::Pull,
    ];

    /// The name the API, the metrics and the records use.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Backup => "backup",
            TaskKind::Restore => "restore",
            TaskKind::Verify => "verify",
            TaskKind::Destage => "destage",
            TaskKind::TapeRestore => "tape-restore",
            TaskKind::TapeVerify => "tape-verify",
            TaskKind::Gc => "gc",
            TaskKind::Maintenance => "maintenance",
            TaskKind::Replicate => "replicate",
            TaskKind::Pull => "pull",
        }
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether running a task that did not succeed again may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskErrorKind {
    /// Running it again later may succeed as it is: a dropped connection, a timeout, a
    /// server that was down, a busy store, an appliance that stopped while it ran. A job
    /// retries these.
    Transient,
    /// Someone must act first: a corrupt or unsupported image, a missing file, bad
    /// credentials, damage found, a full disk, a refused cartridge. Never retried.
    Permanent,
    /// Stopped on request (an operator's cancel, or the appliance shutting down).
    Cancelled,
}

impl TaskErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskErrorKind::Transient => "transient",
            TaskErrorKind::Permanent => "permanent",
            TaskErrorKind::Cancelled => "cancelled",
        }
    }
}

impl From<engine::ErrorKind> for TaskErrorKind {
    fn from(k: engine::ErrorKind) -> TaskErrorKind {
        match k {
            engine::ErrorKind::Transient => TaskErrorKind::Transient,
            engine::ErrorKind::Permanent => TaskErrorKind::Permanent,
            engine::ErrorKind::Cancelled => TaskErrorKind::Cancelled,
        }
    }
}

/// Why a task did not succeed: an operator-readable message and its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TaskError {
    pub kind: TaskErrorKind,
    pub message: String,
}

impl TaskError {
    pub fn new(kind: TaskErrorKind, message: impl Into<String>) -> TaskError {
        TaskError { kind, message: message.into() }
    }
    pub fn permanent(message: impl Into<String>) -> TaskError {
        TaskError::new(TaskErrorKind::Permanent, message)
    }
    pub fn cancelled(message: impl Into<String>) -> TaskError {
        TaskError::new(TaskErrorKind::Cancelled, message)
    }
    /// An I/O error on `path`, its kind from the error's (`engine::io_error_kind`).
    pub(crate) fn io(path: &std::path::Path, e: std::io::Error) -> TaskError {
        TaskError::new(engine::io_error_kind(&e).into(), format!("{}: {e}", path.display()))
    }
    /// The same error with `context` before its message.
    pub(crate) fn context(self, context: &str) -> TaskError {
        TaskError { kind: self.kind, message: format!("{context}{}", self.message) }
    }
}

impl From<engine::EngineError> for TaskError {
    fn from(e: engine::EngineError) -> TaskError {
        TaskError::new(e.kind().into(), e.to_string())
    }
}

impl From<store::StoreError> for TaskError {
    fn from(e: store::StoreError) -> TaskError {
        TaskError::new(engine::store_error_kind(&e).into(), e.to_string())
    }
}

impl From<engine::tape::TapeError> for TaskError {
    fn from(e: engine::tape::TapeError) -> TaskError {
        TaskError::new(e.kind().into(), e.to_string())
    }
}

impl From<ServiceError> for TaskError {
    fn from(e: ServiceError) -> TaskError {
        let kind = match &e {
            ServiceError::Store(s) => engine::store_error_kind(s).into(),
            ServiceError::Engine(s) => s.kind().into(),
            ServiceError::Tape(s) => s.kind().into(),
            _ => TaskErrorKind::Permanent,
        };
        TaskError::new(kind, e.to_string())
    }
}

/// What a task found interrupted at open says, true to what its kind leaves behind and
/// what opening the appliance cleaned.
pub(crate) fn interrupted_message(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Backup => {
            "the appliance stopped while this backup ran; no restore point was committed, and the store removed \
             the backup's unsealed packs when it opened (chunks in packs it had sealed are kept: the next backup \
             reuses them, or a garbage collection frees them). Run it again"
        }
        TaskKind::Restore | TaskKind::TapeRestore => {
            "the appliance stopped while this restore ran; its incomplete output (restores/.<target>.partial) was \
             removed when the appliance opened, so the target name is free. Run it again"
        }
        TaskKind::Verify => {
            "the appliance stopped while this verify ran; a verify only reads, so there was nothing to clean up, \
             and what it had checked is not recorded. Run it again"
        }
        TaskKind::TapeVerify => {
            "the appliance stopped while this cartridge verify ran; it only reads, so there was nothing to clean \
             up (the cartridge may still be in a drive: unload it from the tape page). Run it again"
        }
        TaskKind::Destage => {
            "the appliance stopped while this destage ran; the archive it was writing is not in the tape catalog \
             (a cartridge's archives are recorded only after its catalog archive is on tape), so the restore point \
             has no complete tape copy, and the next destage to that cartridge writes over the partial archive. \
             The cartridge may still be in a drive. Run it again"
        }
        TaskKind::Gc => {
            "the appliance stopped while this garbage collection ran; the store stays consistent at any point of \
             a collection, and what it had not freed yet is freed by the next one. Run it again"
        }
        TaskKind::Maintenance => {
            "the appliance stopped while the maintenance ran; points it had pruned stay pruned, the store stays \
             consistent, and the next scheduled maintenance does the rest (or start a garbage collection now)"
        }
        TaskKind::Replicate => {
            "the appliance stopped while this replication ran; the remote keeps every batch it acknowledged and \
             publishes nothing partial, so running it again sends only what is still missing. Run it again"
        }
        TaskKind::Pull => {
            "the appliance stopped while this pull ran; what it had fetched is kept and checked, nothing partial \
             is visible, so running it again fetches only what is still missing. Run it again"
        }
    }
}

/// A task as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskInfo {
    pub id: u64,
    pub kind: TaskKind,
    pub subject: String,
    pub state: TaskState,
    pub user: String,
    pub created_unix: u64,
    pub started_unix: Option<u64>,
    pub finished_unix: Option<u64>,
    pub phase: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub throughput_bps: f64,
    pub eta_s: Option<f64>,
    pub percent: f64,
    /// What the task reports once it succeeded; `None` until then, and when it did not.
    pub result: Option<TaskResult>,
    pub error: Option<String>,
    /// Whether running it again may help; set with `error` (absent in records written before
    /// error kinds existed).
    #[serde(default)]
    pub error_kind: Option<TaskErrorKind>,
    /// Source host, for the per-host limit.
    #[serde(default)]
    pub host: String,
    /// Source datastore (host and export or target), for the per-datastore limit.
    #[serde(default)]
    pub datastore: String,
}

/// Reads a task's persisted record. Its result is read as the result of the task's kind
/// ([`TaskResult::from_record`]): records written before results were typed, or by a
/// version whose reports had other fields, still load.
pub(crate) fn decode_record(bytes: &[u8]) -> Result<TaskInfo, ServiceError> {
    let unreadable =
        |e: serde_json::Error| ServiceError::Internal(format!("state database: unreadable task record: {e}"));
    let mut v: serde_json::Value = serde_json::from_slice(bytes).map_err(unreadable)?;
    let result = v.as_object_mut().and_then(|m| m.remove("result")).filter(|r| !r.is_null());
    let mut t: TaskInfo = serde_json::from_value(v).map_err(unreadable)?;
    t.result = result.map(|r| TaskResult::from_record(t.kind, r));
    Ok(t)
}

/// Writes a task's record as [`decode_record`] reads it.
pub(crate) fn encode_record(t: &TaskInfo) -> Result<Vec<u8>, ServiceError> {
    serde_json::to_vec(t).map_err(|e| ServiceError::Internal(format!("task {}: cannot be recorded: {e}", t.id)))
}

/// The live side of a running task; the engine reports progress to it.
#[derive(Debug)]
pub struct Live {
    info: Mutex<TaskInfo>,
    done: AtomicU64,
    total: AtomicU64,
    cancel: AtomicBool,
    started: Mutex<Option<Instant>>,
    log: Mutex<Option<File>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Live {
    /// Appends a line to the task's log.
    pub fn log(&self, line: &str) {
        let t = now_unix();
        let stamp = format!("{:02}:{:02}:{:02}", (t % 86400) / 3600, (t % 3600) / 60, t % 60);
        if let Some(f) = lock(&self.log).as_mut() {
            let _ = writeln!(f, "[{stamp}] {line}");
        }
    }

    /// The task's id.
    pub fn id(&self) -> u64 {
        lock(&self.info).id
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> TaskInfo {
        let mut i = lock(&self.info).clone();
        if i.state == TaskState::Running {
            i.bytes_done = self.done.load(Ordering::Relaxed);
            i.bytes_total = self.total.load(Ordering::Relaxed);
            let elapsed = lock(&self.started).map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
            i.throughput_bps = if elapsed > 0.0 { i.bytes_done as f64 / elapsed } else { 0.0 };
            i.percent =
                if i.bytes_total > 0 { (i.bytes_done as f64 * 100.0 / i.bytes_total as f64).min(100.0) } else { 0.0 };
            i.eta_s = (i.throughput_bps > 0.0 && i.bytes_total > i.bytes_done)
                .then(|| (i.bytes_total - i.bytes_done) as f64 / i.throughput_bps);
        }
        i
    }
}

impl engine::Progress for Live {
    fn start(&self, phase: &str, total: u64) {
        lock(&self.info).phase = phase.to_string();
        self.total.store(total, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        *lock(&self.started) = Some(Instant::now());
        self.log(&format!("{phase}: started ({total} bytes)"));
    }
    fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }
    fn finish(&self) {
        let phase = lock(&self.info).phase.clone();
        self.log(&format!("{phase}: finished ({} bytes)", self.done.load(Ordering::Relaxed)));
    }
    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }
}

/// The work of a task: returns its result or why it did not succeed.
pub type Job = Box<dyn FnOnce(&Live) -> Result<TaskResult, TaskError> + Send>;

/// How a shutdown went: what was cancelled, and what did not end in time.
#[derive(Debug, Clone, Default)]
pub struct ShutdownReport {
    /// Tasks that were queued or running when the shutdown began (all were cancelled).
    pub cancelled: usize,
    /// Tasks still running at the deadline: after the next start they read `interrupted`.
    pub unfinished: Vec<TaskInfo>,
    /// How long the wait took.
    pub waited: Duration,
}

#[derive(Debug, Default)]
struct Slots {
    running: usize,
    per_host: HashMap<String, usize>,
    per_datastore: HashMap<String, usize>,
}

/// Concurrency limits: in all, per source host, per datastore.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) total: usize,
    pub(crate) per_host: usize,
    pub(crate) per_datastore: usize,
}

/// Called with a task's final record when it ends (the notifier's hook); must not block.
pub(crate) struct EndHook(pub(crate) Box<dyn Fn(&TaskInfo) + Send + Sync>);

impl std::fmt::Debug for EndHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndHook(..)")
    }
}

#[derive(Debug)]
pub(crate) struct Tasks {
    env: Arc<KvEnv>,
    db: KvDb,
    dir: PathBuf,
    live: Mutex<HashMap<u64, Arc<Live>>>,
    slots: Mutex<Slots>,
    freed: Condvar,
    next_id: AtomicU64,
    pub(crate) limits: Mutex<Limits>,
    pub(crate) on_end: std::sync::OnceLock<EndHook>,
    /// Set, under the `live` lock, when the appliance begins to shut down.
    shutting_down: AtomicBool,
    /// The unit of a job's retry back-off (5 s; tests shorten it).
    pub(crate) retry_unit: Mutex<Duration>,
}

impl Tasks {
    /// Opens the task table; returns it and the tasks found interrupted (now marked so).
    pub(crate) fn open(env: Arc<KvEnv>, db: KvDb, dir: PathBuf) -> Result<(Tasks, Vec<TaskInfo>), ServiceError> {
        std::fs::create_dir_all(&dir).map_err(|e| ServiceError::io(&dir, e))?;
        let mut interrupted = Vec::new();
        let mut max_id = 0;
        {
            let rtxn = env.read()?;
            for item in db.iter(&rtxn).map_err(|e| env.err(e))? {
                let (_, v) = item.map_err(|e| env.err(e))?;
                let t = decode_record(v)?;
                max_id = max_id.max(t.id);
                if !t.state.is_finished() {
                    interrupted.push(t);
                }
            }
        }
        let tasks = Tasks {
            env,
            db,
            dir,
            live: Mutex::default(),
            slots: Mutex::default(),
            freed: Condvar::new(),
            next_id: AtomicU64::new(max_id + 1),
            limits: Mutex::new(Limits { total: 4, per_host: 2, per_datastore: 1 }),
            on_end: std::sync::OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            retry_unit: Mutex::new(Duration::from_secs(5)),
        };
        for t in &mut interrupted {
            t.state = TaskState::Interrupted;
            t.finished_unix = Some(now_unix());
            t.phase = "done".into();
            t.error = Some(interrupted_message(t.kind).into());
            // The task did not fail by itself: running it again may well succeed.
            t.error_kind = Some(TaskErrorKind::Transient);
            tasks.put(t)?;
            if let Ok(mut f) = OpenOptions::new().append(true).open(tasks.log_path(t.id)) {
                let _ = writeln!(f, "interrupted: {}", interrupted_message(t.kind));
            }
        }
        Ok((tasks, interrupted))
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    fn put(&self, t: &TaskInfo) -> Result<(), ServiceError> {
        let record = encode_record(t)?;
        let mut wtxn = self.env.write()?;
        self.db.put(&mut wtxn, &t.id.to_be_bytes(), &record).map_err(|e| self.env.err(e))?;
        wtxn.commit().map_err(|e| self.env.err(e))?;
        Ok(())
    }

    /// Creates a task and starts its thread; it runs when a slot is free.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        kind: TaskKind,
        subject: &str,
        user: &str,
        (host, datastore): (&str, &str),
        job: Job,
    ) -> Result<TaskInfo, ServiceError> {
        if self.is_shutting_down() {
            return Err(shutting_down());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let info = TaskInfo {
            id,
            kind,
            subject: subject.into(),
            state: TaskState::Queued,
            user: user.into(),
            created_unix: now_unix(),
            started_unix: None,
            finished_unix: None,
            phase: "queued".into(),
            bytes_done: 0,
            bytes_total: 0,
            throughput_bps: 0.0,
            eta_s: None,
            percent: 0.0,
            result: None,
            error: None,
            error_kind: None,
            host: host.into(),
            datastore: datastore.into(),
        };
        let log = File::create(self.log_path(id)).map_err(|e| ServiceError::io(self.log_path(id), e))?;
        let live = Arc::new(Live {
            info: Mutex::new(info.clone()),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            cancel: AtomicBool::new(false),
            started: Mutex::new(None),
            log: Mutex::new(Some(log)),
        });
        {
            // Checked again under the lock `begin_shutdown` sets the flag under: a task is
            // either refused here or in the table it cancels.
            let mut table = lock(&self.live);
            if self.is_shutting_down() {
                return Err(shutting_down());
            }
            self.put(&info)?;
            live.log(&format!("{kind} of {subject} queued by {user}"));
            table.insert(id, live.clone());
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name(format!("task-{id}"))
            .spawn(move || me.run(live, job))
            .map_err(|e| ServiceError::Internal(format!("cannot start a task thread: {e}")))?;
        Ok(info)
    }

    fn run(self: Arc<Self>, live: Arc<Live>, job: Job) {
        let (host, datastore) = {
            let i = lock(&live.info);
            (i.host.clone(), i.datastore.clone())
        };
        // Wait for a slot: within the total, the host's and the datastore's limits.
        {
            let mut slots = lock(&self.slots);
            loop {
                let l = *lock(&self.limits);
                let on_host = slots.per_host.get(&host).copied().unwrap_or(0);
                let on_ds = slots.per_datastore.get(&datastore).copied().unwrap_or(0);
                if live.is_cancelled() || (slots.running < l.total && on_host < l.per_host && on_ds < l.per_datastore) {
                    break;
                }
                slots = self.freed.wait(slots).unwrap_or_else(|e| e.into_inner());
            }
            slots.running += 1;
            *slots.per_host.entry(host.clone()).or_default() += 1;
            *slots.per_datastore.entry(datastore.clone()).or_default() += 1;
        }
        let started = {
            let mut i = lock(&live.info);
            i.state = TaskState::Running;
            i.started_unix = Some(now_unix());
            i.phase = "starting".into();
            i.clone()
        };
        *lock(&live.started) = Some(Instant::now());
        let _ = self.put(&started);
        live.log("started");
        let outcome =
            if live.is_cancelled() { Err(TaskError::cancelled("cancelled before it started")) } else { job(&live) };
        let mut fin = live.snapshot();
        fin.finished_unix = Some(now_unix());
        match outcome {
            Ok(v) => {
                fin.state = TaskState::Succeeded;
                fin.bytes_done = fin.bytes_done.max(fin.bytes_total);
                fin.percent = 100.0;
                fin.eta_s = None;
                live.log("succeeded");
                fin.result = Some(v);
            }
            Err(mut e) => {
                // A cancel asked for and then any error: the cancel is what stopped it.
                if live.is_cancelled() && e.kind != TaskErrorKind::Cancelled {
                    e = TaskError::cancelled(format!("cancelled: {}", e.message));
                }
                if e.kind == TaskErrorKind::Cancelled && self.is_shutting_down() {
                    e.message.push_str(" (the appliance was shutting down; run it again after it restarts)");
                }
                fin.state = if e.kind == TaskErrorKind::Cancelled { TaskState::Cancelled } else { TaskState::Failed };
                // Cancel errors say "cancelled..." themselves.
                if e.kind == TaskErrorKind::Cancelled {
                    live.log(&e.message);
                } else {
                    live.log(&format!("failed ({}): {}", e.kind.as_str(), e.message));
                }
                fin.error = Some(e.message);
                fin.error_kind = Some(e.kind);
            }
        }
        fin.phase = "done".into();
        *lock(&live.info) = fin.clone();
        let _ = self.put(&fin);
        lock(&self.live).remove(&fin.id);
        if let Some(hook) = self.on_end.get() {
            (hook.0)(&fin);
        }
        let mut slots = lock(&self.slots);
        slots.running -= 1;
        if let Some(n) = slots.per_host.get_mut(&host) {
            *n -= 1;
        }
        if let Some(n) = slots.per_datastore.get_mut(&datastore) {
            *n -= 1;
        }
        self.freed.notify_all();
    }

    pub(crate) fn get(&self, id: u64) -> Result<TaskInfo, ServiceError> {
        if let Some(l) = lock(&self.live).get(&id) {
            return Ok(l.snapshot());
        }
        let rtxn = self.env.read()?;
        match self.db.get(&rtxn, &id.to_be_bytes()).map_err(|e| self.env.err(e))? {
            Some(v) => decode_record(v),
            None => Err(ServiceError::NotFound(format!("no task {id}"))),
        }
    }

    /// All tasks, newest first.
    pub(crate) fn list(&self, limit: usize) -> Result<Vec<TaskInfo>, ServiceError> {
        let ids: Vec<u64> = {
            let rtxn = self.env.read()?;
            let mut v = Vec::new();
            for item in self.db.rev_iter(&rtxn).map_err(|e| self.env.err(e))?.take(limit) {
                let (k, _) = item.map_err(|e| self.env.err(e))?;
                v.push(u64::from_be_bytes(k.try_into().unwrap_or([0; 8])));
            }
            v
        };
        ids.into_iter().map(|id| self.get(id)).collect()
    }

    pub(crate) fn cancel(&self, id: u64) -> Result<TaskInfo, ServiceError> {
        let live = lock(&self.live).get(&id).cloned();
        match live {
            Some(l) => {
                self.cancel_live(&l, "cancel requested");
                Ok(l.snapshot())
            }
            None => {
                let t = self.get(id)?;
                Err(ServiceError::Conflict(format!("task {id} has already ended ({:?})", t.state)))
            }
        }
    }

    /// Log lines from line `from`; returns them and the next line number.
    pub(crate) fn log_lines(&self, id: u64, from: u64) -> Result<(Vec<String>, u64), ServiceError> {
        self.get(id)?;
        let path = self.log_path(id);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), from)),
            Err(e) => return Err(ServiceError::io(&path, e)),
        };
        let lines: Vec<String> =
            BufReader::new(f).lines().map_while(Result::ok).skip(from as usize).take(10_000).collect();
        let next = from + lines.len() as u64;
        Ok((lines, next))
    }

    pub(crate) fn running(&self) -> usize {
        lock(&self.live).len()
    }

    fn cancel_live(&self, l: &Live, why: &str) {
        l.cancel.store(true, Ordering::Relaxed);
        l.log(why);
        // Queued tasks wait on `freed` under the slots lock: take it so none misses the wake.
        let _slots = lock(&self.slots);
        self.freed.notify_all();
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Shutdown, step 1: refuse new tasks from now on and cancel every queued and running
    /// one. Returns how many were cancelled. Calling it again cancels nothing new.
    pub(crate) fn begin_shutdown(&self) -> usize {
        let pending: Vec<Arc<Live>> = {
            let table = lock(&self.live);
            self.shutting_down.store(true, Ordering::SeqCst);
            table.values().cloned().collect()
        };
        for l in &pending {
            if !l.is_cancelled() {
                self.cancel_live(l, "cancel requested: the appliance is shutting down");
            }
        }
        pending.len()
    }

    /// Shutdown, step 2: waits until no task is queued or running, or `deadline` has passed.
    pub(crate) fn wait_idle(&self, deadline: Duration) -> ShutdownReport {
        let start = Instant::now();
        let mut slots = lock(&self.slots);
        loop {
            let left: Vec<Arc<Live>> = lock(&self.live).values().cloned().collect();
            let elapsed = start.elapsed();
            if left.is_empty() || elapsed >= deadline {
                drop(slots);
                return ShutdownReport {
                    cancelled: 0,
                    unfinished: left.iter().map(|l| l.snapshot()).collect(),
                    waited: elapsed,
                };
            }
            // A task that ends takes this lock and notifies after leaving the live table.
            let step = (deadline - elapsed).min(Duration::from_millis(200));
            slots = self.freed.wait_timeout(slots, step).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

fn shutting_down() -> ServiceError {
    ServiceError::Conflict(
        "the appliance is shutting down and starts no new task; start it again once the appliance is back".into(),
    )
}
