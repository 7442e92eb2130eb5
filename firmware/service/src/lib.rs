//! `service`: the engine's service API, what the daemon's web layer calls. It owns the
//! appliance's data directory:
//!
//! ```text
//!  <data>/config.json      sources, jobs, tape library, settings (human-readable; secrets sealed)
//!  <data>/appliance.key    32-byte key sealing secrets in config.json (0600)
//!  <data>/state/           LMDB: users, API tokens, audit log, tasks, usage history
//!  <data>/store/           the staging store
//!  <data>/tasks/<id>.log   task logs
//!  <data>/restores/<name>/ restore targets of the UI
//!  <data>/tls/             certificate and key of the HTTPS server (the web layer's)
//! ```
//!
//! Every method that acts for someone takes the acting [`Principal`] and checks its role
//! here, whatever the caller checked before; changes are written to the audit log. The
//! service spawns plain threads (tasks, the scheduler), never an async runtime.
//!
//! The API is one type, [`Appliance`], whose methods are grouped by concern:
//!
//! | module       | what                                                        |
//! |--------------|-------------------------------------------------------------|
//! | `access`     | first-run setup, sign-in, users, API tokens, the audit log  |
//! | `sources`    | sources and jobs                                            |
//! | `operations` | backups, restores, verifies as tasks; task control          |
//! | `tape`       | the tape library's quick actions and tape tasks             |
//! | `lifecycle`  | retention, deletion, pins, GC, capacity, scheduled verify   |
//! | `points`     | usage and the dashboard                                     |
//! | `settings`   | settings, notifications, the certificate                    |
//! | `metrics`    | Prometheus metrics                                          |
//! | `scheduler`  | due jobs and upkeep                                         |
//! | `results`    | typed answers: task results, settings, tape actions         |
//!
//! Beneath them: `auth` (users, tokens, sessions, lockout, audit storage), `tasks` (the task
//! engine), `config` (`config.json` and sealed secrets), `notify`, `schedule`.

mod access;
mod auth;
mod config;
mod error;
mod lifecycle;
mod metrics;
pub mod network;
pub mod notify;
mod operations;
mod points;
mod pull;
mod replication;
mod replication_s3;
mod results;
pub mod schedule;
mod scheduler;
mod settings;
mod sources;
mod store_key;
mod tape;
mod tasks;
pub mod update;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use store::kv::{KvDb, KvEnv};
use store::{Store, StoreOptions};

pub use auth::{AuditEntry, AuditLimits, Session, TokenInfo, UserInfo, AUDIT_PAGE_MAX, MIN_PASSWORD};
pub use config::{ConfigFile, JobConfig, Settings, SourceConfig};
pub use error::{ServiceError, ServiceErrorKind};
pub use lifecycle::{CapacityInfo, GcRequest, PinRequest, PointInfo, PruneRequest};
pub use notify::{ChannelOutcome, Event, NotificationsInfo, NotificationsInput};
pub use operations::RestoreRequest;
pub use pull::RemotePointInfo;
pub use replication::{RemoteConfig, RemoteCopy, RemoteInfo, RemoteInput};
pub use replication_s3::{S3RemoteConfig, S3RemoteInfo, S3RemoteInput};

/// The bodies of the replication routes, as the receiving web server reads them (the web
/// reaches the engine only through this crate).
pub mod replica_wire {
    pub use engine::replicate::wire::{CommitRequest, Digests, FindAnswer, FindRequest, SEALED_BY_PARAM};
    pub use engine::replicate::{Delivered, Received, StreamEnd, BATCH_MEDIA_TYPE, MAX_BATCH_BYTES};
}
pub use points::{Alert, Dashboard, Usage, UsageSample};
pub use results::{
    BackupResult, DriveMediaState, PullResult, RecordedResult, ReplicateResult, RestoreResult, SettingsView,
    TapeElement, TapeInventory, TapeLoaded, TapeRestoreResult, TapeUnloaded, TaskResult, UpkeepResult,
};
pub use schedule::CalendarEvent;
pub use settings::SettingsInput;
pub use sources::{JobInfo, JobInput, SourceInfo, SourceInput};
pub use store_key::{export_recovery_key, install_recovery_key, install_replica_key, RecoveryKeyExport};
pub use tape::PoolInput;
pub use tasks::{Live, ShutdownReport, TaskError, TaskErrorKind, TaskInfo, TaskKind, TaskState};

use auth::Auth;
use config::Sealer;
use operations::remove_partial_restores;
use tasks::Tasks;

/// Roles, from most to least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Operator,
    Auditor,
    /// May read `/metrics` and nothing else: for a scraper's token.
    Metrics,
    /// Only for API tokens: may deliver replicated restore points into one namespace, the
    /// token's name, and do nothing else (not even read `/metrics`).
    Replication,
    /// Only for API tokens: may list this appliance's own restore points and read their
    /// records, for an offsite appliance that pulls them, and do nothing else.
    Pull,
}

impl Role {
    fn rank(self) -> u8 {
        match self {
            Role::Admin => 3,
            Role::Operator => 2,
            Role::Auditor => 1,
            Role::Metrics | Role::Replication | Role::Pull => 0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Metrics => "metrics",
            Role::Replication => "replication",
            Role::Pull => "pull",
        }
    }

    /// Whether this role may do what `needed` may do.
    pub fn allows(self, needed: Role) -> bool {
        if matches!(self, Role::Replication | Role::Pull) {
            return needed == self;
        }
        self.rank() >= needed.rank()
    }

    pub fn parse(s: &str) -> Result<Role, ServiceError> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "auditor" => Ok(Role::Auditor),
            "metrics" => Ok(Role::Metrics),
            "replication" => Ok(Role::Replication),
            "pull" => Ok(Role::Pull),
            _ => Err(ServiceError::Invalid(format!(
                "role {s:?}: use admin, operator, auditor, metrics or (for tokens) replication or pull"
            ))),
        }
    }
}

/// Who is acting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The account's name (for a token: the user it was made for).
    pub user: String,
    pub role: Role,
    /// The API token's name, when acting through one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl Principal {
    pub fn new(user: &str, role: Role) -> Principal {
        Principal { user: user.into(), role, token: None }
    }

    /// Who, as the audit log and messages name them: `admin` or `admin (token ci)`.
    pub fn label(&self) -> String {
        match &self.token {
            Some(t) => format!("{} (token {t})", self.user),
            None => self.user.clone(),
        }
    }

    fn require(&self, role: Role) -> Result<(), ServiceError> {
        if self.role.allows(role) {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(format!(
                "{} has the {} role; this needs {}",
                self.label(),
                self.role.as_str(),
                role.as_str()
            )))
        }
    }
}

/// Creates `dir` (and missing parents) readable by the service user only: restores hold
/// guests' data.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom is readable on Linux");
    b
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

pub(crate) fn random_hex(n: usize) -> String {
    let b = random_bytes::<32>();
    hex(&b[..n.min(32)])
}

/// Options of [`Appliance::open`].
#[derive(Debug, Clone, Default)]
pub struct ApplianceOptions {
    /// Dev mode: a sample source (a generated disk image) and an emulated tape library.
    pub dev: bool,
    /// How much audit log is kept (tests make it small).
    pub audit_limits: AuditLimits,
    /// Directories local sources may be read from (the daemon passes its `--source-root`s,
    /// `/srv` by default); the data directory is refused whatever they say. `None`: anywhere
    /// (tests and embedding).
    pub source_roots: Option<Vec<PathBuf>>,
    /// Create the staging store encrypted when the data directory holds none yet (see
    /// `store_key`). An existing store opens as it is.
    pub encrypt_store: bool,
    /// The daemon's tokio runtime, lent to the S3 client (which is async) for S3 remotes;
    /// without it they are refused. Only the binary makes runtimes.
    pub runtime: Option<tokio::runtime::Handle>,
    /// Where the running system's slots, boot entries and keys are, for updates (see
    /// `update`); `None`: the appliance image's.
    pub system: Option<update::SystemLayout>,
}

/// The appliance.
#[derive(Debug)]
pub struct Appliance {
    data_dir: PathBuf,
    env: Arc<KvEnv>,
    auth: Auth,
    tasks: Arc<Tasks>,
    usage_db: KvDb,
    /// Where each point has been replicated (see `replication::record_copy`).
    copies_db: KvDb,
    config: Mutex<ConfigFile>,
    sealer: Sealer,
    store: Arc<Store>,
    /// The running system, for updates (see `update`).
    system: update::SystemLayout,
    /// Held while an update is received and written: one at a time.
    update_lock: Mutex<()>,
    /// Next planned run per job id, and the last task a job started.
    next_runs: Mutex<HashMap<String, u64>>,
    last_tasks: Mutex<HashMap<String, u64>>,
    interrupted_at_open: u64,
    /// The store's upkeep: watermark state, clock and maintenance timing (see `lifecycle`).
    upkeep: Mutex<lifecycle::Upkeep>,
    /// Where local sources may be read from (see `engine::LocalConfinement`).
    confinement: engine::LocalConfinement,
    /// The first-run setup code, while no user exists (see `access`).
    setup_code: Mutex<Option<String>>,
    /// Monotonic counters for metrics (see `metrics`).
    counters: KvDb,
    /// The last rendered metrics, and when (see `metrics`).
    metrics_cache: Mutex<Option<(std::time::Instant, String)>>,
    /// Drive states of the last tape inventory, for metrics.
    tape_seen: Mutex<Option<metrics::TapeSeen>>,
    /// Exclusive flock on `appliance.lock`, for the appliance's life.
    _data_lock: std::fs::File,
    /// Serialises use of the tape library: a tape task holds it for its whole run; a quick
    /// action (load, unload, label, inventory) holds it for its request and is refused with
    /// `Conflict` while a task has it, rather than waiting minutes behind a destage.
    tape_lock: Arc<Mutex<()>>,
    /// The tape catalog, shared by requests and tape tasks.
    tape_catalog: Arc<engine::tape::TapeCatalog>,
    /// The appliance itself, for tasks that start follow-up tasks (a job's destage).
    me: std::sync::Weak<Appliance>,
    /// Webhook and e-mail notifications (`notify.rs`).
    notifier: notify::Notifier,
    /// The runtime S3 remotes are reached on (see [`ApplianceOptions::runtime`]).
    runtime: Option<tokio::runtime::Handle>,
    /// One lock per remote: a push, a pull or a bucket GC holds it for its run
    /// (`replication_s3`).
    remote_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn new_id() -> String {
    random_hex(6)
}

fn plain_name(s: &str, what: &str) -> Result<(), ServiceError> {
    if s.is_empty()
        || s.len() > 100
        || !s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || s.starts_with('.')
    {
        return Err(ServiceError::Invalid(format!("{what} {s:?}: use 1-100 letters, digits, '-', '_' and '.'")));
    }
    Ok(())
}

/// The host part of a source URL, for per-host concurrency ("local" for paths).
fn source_host(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) if scheme != "file" => {
            let auth = rest.split('/').next().unwrap_or("");
            let hostport = auth.rsplit('@').next().unwrap_or(auth);
            let host = if let Some(h) = hostport.strip_prefix('[') {
                h.split(']').next().unwrap_or(h)
            } else {
                hostport.split(':').next().unwrap_or(hostport)
            };
            host.to_string()
        }
        _ => "local".into(),
    }
}

impl Appliance {
    /// Opens (creating on first start) the appliance in `data_dir`. Tasks that were running
    /// when the appliance last stopped are marked interrupted.
    pub fn open(data_dir: &Path, opts: ApplianceOptions) -> Result<Arc<Appliance>, ServiceError> {
        std::fs::create_dir_all(data_dir).map_err(|e| ServiceError::io(data_dir, e))?;
        // Before anything is read or changed: a second daemon on the same data directory
        // would mark the first one's tasks interrupted and remove its restores in progress.
        let lock_path = data_dir.join("appliance.lock");
        let data_lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| ServiceError::io(&lock_path, e))?;
        if data_lock.try_lock().is_err() {
            return Err(ServiceError::Conflict(format!(
                "{}: another rackvault serve is using this data directory; stop it first, or give this one another --data-dir",
                data_dir.display()
            )));
        }
        let (env, dbs) = KvEnv::open(
            &data_dir.join("state"),
            &["users", "tokens", "audit", "tasks", "usage", "counters", "copies"],
        )?;
        let env = Arc::new(env);
        let [users, tokens, audit, tasks_db, usage_db, counters, copies_db]: [KvDb; 7] =
            dbs.try_into().map_err(|_| ServiceError::Internal("state: one database per name".into()))?;
        let auth = Auth::open(&env, users, tokens, audit, data_dir.join("audit"), opts.audit_limits)?;
        let confinement = confinement(data_dir, &opts)?;
        let setup_code = match auth.user_count(&env)? {
            0 => Some(access::ensure_setup_code(data_dir)?),
            _ => None,
        };
        let sealer = Sealer::open(&data_dir.join("appliance.key"))?;
        let mut config = ConfigFile::load(&data_dir.join("config.json"))?;
        let store_dir = data_dir.join("store");
        // Sealed packs get the immutable attribute while any job makes immutable points.
        let immutable_packs = config.jobs.iter().any(|j| j.immutable_days.is_some());
        let key = store_key::key_for_open(data_dir, &store_dir, &mut config, &sealer, opts.encrypt_store)?;
        let replica_keys = store_key::replica_keys(&config, &sealer)?;
        let store_opts = StoreOptions { create: true, immutable_packs, key, replica_keys, ..Default::default() };
        let store =
            Arc::new(Store::open(&store_dir, &store_opts).map_err(|e| store_key::explain_open_error(data_dir, e))?);
        let (tasks, interrupted) = Tasks::open(env.clone(), tasks_db, data_dir.join("tasks"))?;
        // Opened once: LMDB refuses a second open of the same environment in one process.
        let tape_catalog = Arc::new(engine::tape::TapeCatalog::open(&store_dir.join("tape-catalog"))?);
        if opts.dev {
            dev_defaults(data_dir, &mut config)?;
            config.save(&data_dir.join("config.json"))?;
            // A pool to label the emulated cartridges for, so destage works from the first click.
            if tape_catalog.pools()?.is_empty() {
                tape_catalog.set_pool(&engine::tape::PoolPolicy::default_for("default"))?;
            }
        }
        *lock(&tasks.limits) = tasks::Limits {
            total: config.settings.max_tasks.max(1),
            per_host: config.settings.max_tasks_per_host.max(1),
            per_datastore: config.settings.max_tasks_per_datastore.max(1),
        };
        for d in ["restores", "tls"] {
            std::fs::create_dir_all(data_dir.join(d)).map_err(|e| ServiceError::io(data_dir.join(d), e))?;
        }
        // Nothing runs yet: any partial restore output is an interrupted restore's.
        remove_partial_restores(&data_dir.join("restores"))?;
        Ok(Arc::new_cyclic(|me| Appliance {
            me: me.clone(),
            data_dir: data_dir.to_path_buf(),
            auth,
            setup_code: Mutex::new(setup_code),
            confinement,
            counters,
            metrics_cache: Mutex::default(),
            tape_seen: Mutex::default(),
            tasks: Arc::new(tasks),
            usage_db,
            copies_db,
            system: opts.system.clone().unwrap_or_else(update::SystemLayout::appliance),
            update_lock: Mutex::new(()),
            config: Mutex::new(config),
            sealer,
            store,
            next_runs: Mutex::default(),
            last_tasks: Mutex::default(),
            interrupted_at_open: interrupted.len() as u64,
            upkeep: Mutex::new(lifecycle::Upkeep::default()),
            _data_lock: data_lock,
            tape_lock: Arc::new(Mutex::new(())),
            tape_catalog,
            env,
            notifier: notify_new(me.clone()),
            runtime: opts.runtime.clone(),
            remote_locks: Mutex::default(),
        })
        .with_notifications(&interrupted))
    }

    /// Starts notifications: the configured channels, the task hook, and a notice for each
    /// task found interrupted at open.
    fn with_notifications(self: Arc<Self>, interrupted: &[TaskInfo]) -> Arc<Self> {
        let c = lock(&self.config).notifications.clone();
        self.notifier.configure(notify::resolve(&c, &self.sealer), c.events);
        let me = self.me.clone();
        let _ = self.tasks.on_end.set(tasks::EndHook(Box::new(move |t: &TaskInfo| {
            if let Some(app) = me.upgrade() {
                app.task_ended(t);
            }
        })));
        for t in interrupted {
            self.task_ended(t);
        }
        self
    }

    /// A task ended: the notifier decides whether it is worth a message.
    fn task_ended(&self, t: &TaskInfo) {
        // One lock at a time: `jobs()` takes the config before `last_tasks`.
        let job_id = lock(&self.last_tasks).iter().find(|(_, task)| **task == t.id).map(|(j, _)| j.clone());
        self.count_task(t, job_id.as_deref());
        let job = job_id.and_then(|id| lock(&self.config).jobs.iter().find(|j| j.id == id).map(|j| j.name.clone()));
        self.notifier.task_ended(t, job);
    }

    /// Queues a notification to every configured channel and returns at once (capacity
    /// watermarks and other events; failed tasks and verify damage are sent already).
    pub fn notify(&self, event: Event) {
        self.notifier.notify(event);
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where the HTTPS certificate and key live (PEM).
    pub fn tls_paths(&self) -> (PathBuf, PathBuf) {
        (self.data_dir.join("tls/cert.pem"), self.data_dir.join("tls/key.pem"))
    }

    /// How many tasks were found interrupted when the appliance opened.
    pub fn interrupted_at_open(&self) -> u64 {
        self.interrupted_at_open
    }

    fn audit(&self, actor: &Principal, action: &str, detail: &str) {
        self.auth.audit(&self.env, &actor.label(), action, detail);
    }

    fn save_config(&self, c: &ConfigFile) -> Result<(), ServiceError> {
        c.save(&self.data_dir.join("config.json"))
    }
}

/// The notifier of the appliance `me`: it writes to the audit log as user `notifier`.
fn notify_new(me: std::sync::Weak<Appliance>) -> notify::Notifier {
    notify::Notifier::new(
        notify::host_name(),
        Box::new(move |action: &str, detail: &str| {
            if let Some(app) = me.upgrade() {
                app.auth.audit(&app.env, notify::AUDIT_USER, action, detail);
            }
        }),
    )
}

/// The datastore of a source URL: host plus export (NFS) or target (iSCSI); a local path's
/// directory.
fn source_datastore(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) if scheme == "nfs" || scheme == "iscsi" => {
            let rest = rest.split('?').next().unwrap_or(rest);
            let mut parts = rest.splitn(3, '/');
            let host = parts.next().unwrap_or("");
            let first = parts.next().unwrap_or("");
            format!("{scheme}://{}/{first}", source_host(&format!("{scheme}://{host}")))
        }
        _ => Path::new(url.strip_prefix("file://").unwrap_or(url))
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    }
}

/// The confinement of local sources: the configured roots that exist (and the dev samples),
/// never the data directory.
fn confinement(data_dir: &Path, opts: &ApplianceOptions) -> Result<engine::LocalConfinement, ServiceError> {
    let Some(roots) = &opts.source_roots else { return Ok(engine::LocalConfinement::default()) };
    let data = std::fs::canonicalize(data_dir).map_err(|e| ServiceError::io(data_dir, e))?;
    let mut allow: Vec<PathBuf> = roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).collect();
    if opts.dev {
        let samples = data.join("samples");
        std::fs::create_dir_all(&samples).map_err(|e| ServiceError::io(&samples, e))?;
        allow.push(samples);
    }
    Ok(engine::LocalConfinement { allow, deny: vec![data] })
}

/// Dev mode: a sample VM disk and source, and an emulated tape library.
fn dev_defaults(data_dir: &Path, config: &mut ConfigFile) -> Result<(), ServiceError> {
    let samples = data_dir.join("samples");
    std::fs::create_dir_all(&samples).map_err(|e| ServiceError::io(&samples, e))?;
    let disk = samples.join("sample-vm.raw");
    if !disk.exists() {
        write_sample_disk(&disk, 256 << 20)?;
    }
    if config.sources.is_empty() {
        config.sources.push(SourceConfig {
            id: new_id(),
            name: "sample-vm".into(),
            url: disk.display().to_string(),
            chap_user: None,
            chap_secret: None,
            mutual_user: None,
            mutual_secret: None,
            max_read_mbps: None,
        });
    }
    if config.tape_changer.is_none() {
        config.tape_changer = Some(format!("emulated:{}", data_dir.join("tape-library").display()));
    }
    Ok(())
}

/// A deterministic disk image that looks like a VM's: text, binary, zeros and holes.
fn write_sample_disk(path: &Path, size: u64) -> Result<(), ServiceError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| ServiceError::io(&tmp, e))?;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let block = 1 << 20;
    let mut buf = vec![0u8; block];
    for i in 0..(size / block as u64) {
        match i % 4 {
            0 => {
                let line = format!("sample guest file system block {i}: logs, configuration and documents\n");
                for (dst, src) in buf.iter_mut().zip(line.bytes().cycle()) {
                    *dst = src;
                }
            }
            1 => {
                for b in buf.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
            }
            _ => buf.fill(0),
        }
        f.write_all(&buf).map_err(|e| ServiceError::io(&tmp, e))?;
    }
    f.sync_all().map_err(|e| ServiceError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ServiceError::io(path, e))
}

#[cfg(test)]
mod tests;
