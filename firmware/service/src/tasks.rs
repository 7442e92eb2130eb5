//! The task engine: every backup, restore, verify and destage runs as a task with live
//! progress (bytes, throughput, ETA), a persistent log readable while it runs
//! (`<data>/tasks/<id>.log`), a result and a cancel action.
//!
//! Invariants:
//! - A task's record (`tasks` database) is written when it is created, when it starts and
//!   when it ends; live figures are kept in memory in between.
//! - A record found queued or running when the appliance opens belongs to a run that was
//!   interrupted (crash, power loss, restart): it is marked `interrupted`. What it left
//!   behind is cleaned by the store's own recovery (unsealed packs are removed at open) and
//!   by restores writing to temporary names.
//! - Concurrency: at most `max_tasks` run at once, at most `max_tasks_per_host` against one
//!   source host and `max_tasks_per_datastore` against one datastore (an NFS export, an iSCSI
//!   target), so one hypervisor or NAS is not swamped; the rest wait, queued.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use store::kv::{KvDb, KvEnv};

use crate::{now_unix, ServiceError};

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

/// A task as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskInfo {
    pub id: u64,
    pub kind: String,
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
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    /// Source host, for the per-host limit.
    #[serde(default)]
    pub host: String,
    /// Source datastore (host and export or target), for the per-datastore limit.
    #[serde(default)]
    pub datastore: String,
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

/// The work of a task: returns its result (JSON) or an operator-readable error.
pub type Job = Box<dyn FnOnce(&Live) -> Result<serde_json::Value, String> + Send>;

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
                let t: TaskInfo = serde_json::from_slice(v).map_err(|e| ServiceError::Internal(e.to_string()))?;
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
        };
        for t in &mut interrupted {
            t.state = TaskState::Interrupted;
            t.finished_unix = Some(now_unix());
            t.error = Some(
                "the appliance stopped while this task ran; nothing it was writing was committed (the store removed \
                 the unfinished data when it opened). Run it again"
                    .into(),
            );
            tasks.put(t)?;
            if let Ok(mut f) = OpenOptions::new().append(true).open(tasks.log_path(t.id)) {
                let _ = writeln!(f, "interrupted: the appliance stopped while this task ran");
            }
        }
        Ok((tasks, interrupted))
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    fn put(&self, t: &TaskInfo) -> Result<(), ServiceError> {
        let mut wtxn = self.env.write()?;
        self.db
            .put(&mut wtxn, &t.id.to_be_bytes(), &serde_json::to_vec(t).expect("task serialises"))
            .map_err(|e| self.env.err(e))?;
        wtxn.commit().map_err(|e| self.env.err(e))?;
        Ok(())
    }

    /// Creates a task and starts its thread; it runs when a slot is free.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        kind: &str,
        subject: &str,
        user: &str,
        (host, datastore): (&str, &str),
        job: Job,
    ) -> Result<TaskInfo, ServiceError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let info = TaskInfo {
            id,
            kind: kind.into(),
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
        self.put(&info)?;
        live.log(&format!("{kind} of {subject} queued by {user}"));
        lock(&self.live).insert(id, live.clone());
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
        let outcome = if live.is_cancelled() { Err("cancelled before it started".to_string()) } else { job(&live) };
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
            Err(e) => {
                fin.state = if live.is_cancelled() { TaskState::Cancelled } else { TaskState::Failed };
                let word = if fin.state == TaskState::Cancelled { "cancelled" } else { "failed" };
                // Engine errors may already say "cancelled: ..."; do not say it twice.
                if e.starts_with(word) {
                    live.log(&e);
                } else {
                    live.log(&format!("{word}: {e}"));
                }
                fin.error = Some(e);
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
            Some(v) => serde_json::from_slice(v).map_err(|e| ServiceError::Internal(e.to_string())),
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
                l.cancel.store(true, Ordering::Relaxed);
                l.log("cancel requested");
                self.freed.notify_all();
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
}
