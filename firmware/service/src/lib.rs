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

mod auth;
mod config;
mod lifecycle;
pub mod notify;
pub mod schedule;
mod tasks;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use store::kv::{KvDb, KvEnv};
use store::{Store, StoreOptions};

pub use auth::{AuditEntry, Session, TokenInfo, UserInfo, MIN_PASSWORD};
pub use config::{ConfigFile, JobConfig, Settings, SourceConfig};
pub use lifecycle::{CapacityInfo, GcRequest, PinRequest, PointInfo, PruneRequest};
pub use notify::{ChannelOutcome, Event, NotificationsInfo, NotificationsInput};
pub use schedule::CalendarEvent;
pub use tasks::{Live, TaskInfo, TaskState};

use auth::Auth;
use config::Sealer;
use tasks::Tasks;

/// Roles, from most to least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Operator,
    Auditor,
}

impl Role {
    fn rank(self) -> u8 {
        match self {
            Role::Admin => 3,
            Role::Operator => 2,
            Role::Auditor => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }

    /// Whether this role may do what `needed` may do.
    pub fn allows(self, needed: Role) -> bool {
        self.rank() >= needed.rank()
    }

    pub fn parse(s: &str) -> Result<Role, ServiceError> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "auditor" => Ok(Role::Auditor),
            _ => Err(ServiceError::Invalid(format!("role {s:?}: use admin, operator or auditor"))),
        }
    }
}

/// Who is acting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub user: String,
    pub role: Role,
}

impl Principal {
    fn require(&self, role: Role) -> Result<(), ServiceError> {
        if self.role.allows(role) {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(format!(
                "{} has the {} role; this needs {}",
                self.user,
                self.role.as_str(),
                role.as_str()
            )))
        }
    }
}

/// What went wrong, for the web layer's status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceErrorKind {
    Invalid,
    Unauthenticated,
    Forbidden,
    NotFound,
    Conflict,
    RateLimited { retry_after_s: u64 },
    Internal,
}

/// Errors of the service API; messages are for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("too many failed sign-ins; try again in {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error(transparent)]
    Tape(#[from] engine::tape::TapeError),
}

impl ServiceError {
    pub fn kind(&self) -> ServiceErrorKind {
        match self {
            ServiceError::Invalid(_) => ServiceErrorKind::Invalid,
            ServiceError::Unauthenticated(_) => ServiceErrorKind::Unauthenticated,
            ServiceError::Forbidden(_) => ServiceErrorKind::Forbidden,
            ServiceError::NotFound(_) => ServiceErrorKind::NotFound,
            ServiceError::Conflict(_) => ServiceErrorKind::Conflict,
            ServiceError::RateLimited { retry_after_s } => {
                ServiceErrorKind::RateLimited { retry_after_s: *retry_after_s }
            }
            ServiceError::Store(store::StoreError::NoSuchPoint(_)) => ServiceErrorKind::NotFound,
            ServiceError::Store(e) if e.kind() == store::ErrorKind::Usage => ServiceErrorKind::Invalid,
            ServiceError::Engine(engine::EngineError::Invalid(_)) => ServiceErrorKind::Invalid,
            ServiceError::Tape(t) => match t {
                engine::tape::TapeError::Invalid(_) => ServiceErrorKind::Invalid,
                engine::tape::TapeError::NotInLibrary { .. } => ServiceErrorKind::NotFound,
                engine::tape::TapeError::HoldsData { .. }
                | engine::tape::TapeError::NoMedia { .. }
                | engine::tape::TapeError::Refused { .. } => ServiceErrorKind::Conflict,
                _ => ServiceErrorKind::Internal,
            },
            _ => ServiceErrorKind::Internal,
        }
    }

    pub(crate) fn io(path: impl AsRef<Path>, e: std::io::Error) -> ServiceError {
        ServiceError::Internal(format!("{}: {e}", path.as_ref().display()))
    }
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
}

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

/// The editable settings as the API receives them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsInput {
    pub max_tasks: usize,
    pub max_tasks_per_host: usize,
    pub max_tasks_per_datastore: usize,
    /// `iscsi://host[:port]/<iqn>/<changer lun>`, `/dev/sgN` or `emulated:<dir>`; null or
    /// absent: no tape library.
    #[serde(default)]
    pub tape_changer: Option<String>,
    /// IANA time zone for retention; absent: unchanged; "" or null with `reset`: the system's.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Capacity watermarks in percent; absent: unchanged.
    #[serde(default)]
    pub capacity_high_pct: Option<u8>,
    #[serde(default)]
    pub capacity_low_pct: Option<u8>,
    /// Calendar event of the nightly maintenance; absent: unchanged.
    #[serde(default)]
    pub maintenance_schedule: Option<String>,
    /// Calendar event of the scheduled (incremental) verify; absent: unchanged; "": none.
    #[serde(default)]
    pub verify_schedule: Option<String>,
    /// A scheduled verify leaves out packs scanned clean within this many days; absent:
    /// unchanged.
    #[serde(default)]
    pub verify_skip_days: Option<u32>,
}

/// A tape pool's policy as the API receives it (the name is in the path).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolInput {
    pub allocation: engine::tape::Allocation,
    pub retention_days: u64,
    #[serde(default)]
    pub max_restore_tapes: Option<u32>,
}

/// Removes what interrupted restores left (`restores/.<target>.partial/`).
fn remove_partial_restores(root: &Path) -> Result<(), ServiceError> {
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
fn discard_on_error(partial: &Path, r: Result<serde_json::Value, String>) -> Result<serde_json::Value, String> {
    if r.is_err() {
        let _ = std::fs::remove_dir_all(partial);
    }
    r
}

/// Store usage, now and over time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Usage {
    pub bytes_stored: u64,
    pub bytes_logical: u64,
    pub dedup_ratio: f64,
    pub restore_points: u64,
    pub history: Vec<UsageSample>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageSample {
    pub unix: u64,
    pub bytes_stored: u64,
    pub bytes_logical: u64,
}

/// Something the operator should look at.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub level: String,
    pub message: String,
    pub unix: u64,
}

/// The dashboard's content.
#[derive(Debug, Clone, Serialize)]
pub struct Dashboard {
    pub tasks: Vec<TaskInfo>,
    pub usage: Usage,
    /// The staging tier's filesystem; absent when it cannot be read.
    pub capacity: Option<CapacityInfo>,
    pub last_results: Vec<TaskInfo>,
    pub alerts: Vec<Alert>,
}

/// The appliance.
#[derive(Debug)]
pub struct Appliance {
    data_dir: PathBuf,
    env: Arc<KvEnv>,
    auth: Auth,
    tasks: Arc<Tasks>,
    usage_db: KvDb,
    config: Mutex<ConfigFile>,
    sealer: Sealer,
    store: Arc<Store>,
    /// Next planned run per job id, and the last task a job started.
    next_runs: Mutex<HashMap<String, u64>>,
    last_tasks: Mutex<HashMap<String, u64>>,
    interrupted_at_open: u64,
    /// The store's upkeep: watermark state, clock and maintenance timing (see `lifecycle`).
    upkeep: Mutex<lifecycle::Upkeep>,
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
        let (env, dbs) = KvEnv::open(&data_dir.join("state"), &["users", "tokens", "audit", "tasks", "usage"])?;
        let env = Arc::new(env);
        let [users, tokens, audit, tasks_db, usage_db]: [KvDb; 5] = dbs.try_into().expect("one database per name");
        let sealer = Sealer::open(&data_dir.join("appliance.key"))?;
        let mut config = ConfigFile::load(&data_dir.join("config.json"))?;
        let store_dir = data_dir.join("store");
        // Sealed packs get the immutable attribute while any job makes immutable points.
        let immutable_packs = config.jobs.iter().any(|j| j.immutable_days.is_some());
        let store =
            Arc::new(Store::open(&store_dir, &StoreOptions { create: true, immutable_packs, ..Default::default() })?);
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
            auth: Auth::open(users, tokens, audit),
            tasks: Arc::new(tasks),
            usage_db,
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
        self.auth.audit(&self.env, &actor.user, action, detail);
    }

    fn save_config(&self, c: &ConfigFile) -> Result<(), ServiceError> {
        c.save(&self.data_dir.join("config.json"))
    }

    // ---- setup and sign-in ----------------------------------------------------------------

    pub fn needs_setup(&self) -> bool {
        self.auth.user_count(&self.env).map(|n| n == 0).unwrap_or(false)
    }

    /// Creates the first administrator; refused once any user exists.
    pub fn setup(&self, user: &str, password: &str) -> Result<(), ServiceError> {
        if !self.needs_setup() {
            return Err(ServiceError::Conflict("the appliance is already set up; sign in instead".into()));
        }
        self.auth.put_user(&self.env, user, password, Role::Admin, true)?;
        self.auth.audit(&self.env, user, "setup", "created the first administrator");
        Ok(())
    }

    pub fn login(&self, user: &str, password: &str, client: &str) -> Result<Session, ServiceError> {
        let r = self.auth.login(&self.env, user, password, client);
        match &r {
            Ok(_) => self.auth.audit(&self.env, user, "login", &format!("from {client}")),
            Err(e) => self.auth.audit(&self.env, user, "login failed", &format!("from {client}: {e}")),
        }
        r
    }

    pub fn session(&self, token: &str) -> Option<Session> {
        self.auth.session(token)
    }

    pub fn logout(&self, token: &str) {
        self.auth.logout(token)
    }

    pub fn authenticate_token(&self, bearer: &str) -> Option<Principal> {
        self.auth.authenticate_token(&self.env, bearer)
    }

    // ---- users, tokens, audit ---------------------------------------------------------------

    pub fn users(&self, actor: &Principal) -> Result<Vec<UserInfo>, ServiceError> {
        actor.require(Role::Admin)?;
        self.auth.users(&self.env)
    }

    pub fn add_user(
        &self,
        actor: &Principal,
        name: &str,
        password: &str,
        role: Role,
    ) -> Result<UserInfo, ServiceError> {
        actor.require(Role::Admin)?;
        let u = self.auth.put_user(&self.env, name, password, role, true)?;
        self.audit(actor, "add user", &format!("{name} as {role:?}"));
        Ok(u)
    }

    pub fn delete_user(&self, actor: &Principal, name: &str) -> Result<(), ServiceError> {
        actor.require(Role::Admin)?;
        if name == actor.user {
            return Err(ServiceError::Conflict("you cannot delete your own account".into()));
        }
        self.auth.delete_user(&self.env, name)?;
        self.audit(actor, "delete user", name);
        Ok(())
    }

    pub fn api_tokens(&self, actor: &Principal) -> Result<Vec<TokenInfo>, ServiceError> {
        actor.require(Role::Admin)?;
        self.auth.tokens(&self.env)
    }

    /// Creates an API token; the secret is returned once and never stored.
    pub fn create_api_token(
        &self,
        actor: &Principal,
        name: &str,
        role: Role,
    ) -> Result<(TokenInfo, String), ServiceError> {
        actor.require(Role::Admin)?;
        let user = actor.user.split(" (token").next().unwrap_or(&actor.user);
        let r = self.auth.create_token(&self.env, user, name, role)?;
        self.audit(actor, "create API token", &format!("{name} ({role:?})"));
        Ok(r)
    }

    pub fn delete_api_token(&self, actor: &Principal, id: &str) -> Result<(), ServiceError> {
        actor.require(Role::Admin)?;
        self.auth.delete_token(&self.env, id)?;
        self.audit(actor, "delete API token", id);
        Ok(())
    }

    pub fn audit_log(&self, actor: &Principal, limit: usize) -> Result<Vec<AuditEntry>, ServiceError> {
        actor.require(Role::Auditor)?;
        self.auth.audit_log(&self.env, limit)
    }

    // ---- sources and jobs -------------------------------------------------------------------

    fn source_info(s: &SourceConfig) -> SourceInfo {
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

    fn source(&self, id: &str) -> Result<SourceConfig, ServiceError> {
        lock(&self.config)
            .sources
            .iter()
            .find(|s| s.id == id || s.name == id)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(format!("no source {id}")))
    }

    fn secrets(&self, s: &SourceConfig) -> Result<engine::SourceSecrets, ServiceError> {
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
        })
    }

    /// "Test connection": probes the source (iSCSI targets, NFS exports, or its disks).
    pub fn test_source(&self, actor: &Principal, id: &str) -> Result<serde_json::Value, ServiceError> {
        actor.require(Role::Operator)?;
        let s = self.source(id)?;
        let report = engine::probe(&s.url, &self.secrets(&s)?)?;
        Ok(serde_json::to_value(report).unwrap_or(serde_json::Value::Null))
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
                job.destage_pool.as_ref().map(|p| format!(", then destage to pool {p}")).unwrap_or_default()
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

    // ---- restore points and usage -----------------------------------------------------------

    fn usage_now(&self) -> Result<(u64, u64, u64), ServiceError> {
        usage_now(&self.store)
    }

    pub fn usage(&self, actor: &Principal) -> Result<Usage, ServiceError> {
        actor.require(Role::Auditor)?;
        let (stored, logical, points) = self.usage_now()?;
        let mut history = Vec::new();
        {
            let rtxn = self.env.read()?;
            for item in self.usage_db.rev_iter(&rtxn).map_err(|e| self.env.err(e))?.take(200) {
                let (_, v) = item.map_err(|e| self.env.err(e))?;
                if let Ok(s) = serde_json::from_slice::<UsageSample>(v) {
                    history.push(s);
                }
            }
        }
        history.reverse();
        Ok(Usage {
            bytes_stored: stored,
            bytes_logical: logical,
            dedup_ratio: if stored > 0 { logical as f64 / stored as f64 } else { 0.0 },
            restore_points: points,
            history,
        })
    }

    pub fn dashboard(&self, actor: &Principal) -> Result<Dashboard, ServiceError> {
        actor.require(Role::Auditor)?;
        let all = self.tasks.list(200)?;
        let running: Vec<TaskInfo> = all.iter().filter(|t| !t.state.is_finished()).cloned().collect();
        let finished: Vec<TaskInfo> = all.iter().filter(|t| t.state.is_finished()).take(8).cloned().collect();
        let now = now_unix();
        let mut alerts: Vec<Alert> = all
            .iter()
            .filter(|t| matches!(t.state, TaskState::Failed | TaskState::Interrupted))
            .filter(|t| t.finished_unix.is_some_and(|f| f + 86400 > now))
            .take(5)
            .map(|t| Alert {
                level: "error".into(),
                message: format!("{} of {} {:?}: {}", t.kind, t.subject, t.state, t.error.clone().unwrap_or_default()),
                unix: t.finished_unix.unwrap_or(now),
            })
            .collect();
        let protection = self.store.pack_protection();
        if let (true, Some(why)) = (protection.requested, &protection.unavailable) {
            alerts.push(Alert {
                level: "warning".into(),
                message: format!(
                    "Sealed packs cannot be given the immutable attribute: {why}. Immutability windows are still enforced by the store, but someone with root on the appliance could delete pack files by hand"
                ),
                unix: now,
            });
        }
        if lock(&self.config).sources.is_empty() {
            alerts.push(Alert {
                level: "warning".into(),
                message: "No source yet: add one under Sources".into(),
                unix: now,
            });
        }
        let usage = self.usage(actor)?;
        let capacity = self.capacity_of(&usage).ok();
        if let Some(c) = capacity.as_ref().filter(|c| c.above_high) {
            alerts.push(Alert {
                level: "warning".into(),
                message: format!(
                    "The staging tier is {:.0}% full (high watermark {}%): the maintenance frees what retention and tape copies allow",
                    c.used_pct, c.high_pct
                ),
                unix: now,
            });
        }
        Ok(Dashboard { tasks: running, usage, capacity, last_results: finished, alerts })
    }

    // ---- tasks ---------------------------------------------------------------------------------

    /// A backup task, of a job (its retries, immutability, retention and destage) or manual.
    /// A job that destages queues a destage task of the new restore point to its pool (a
    /// failure to queue it is logged, the backup stands); a job with retention prunes after
    /// a successful backup. A staging tier above its high watermark that nothing can relieve
    /// refuses the backup before it reads anything.
    fn backup_task(&self, user: &str, source_id: &str, job: Option<&JobConfig>) -> Result<TaskInfo, ServiceError> {
        let retries = job.map_or(0, |j| j.retries);
        let then_destage = job.and_then(|j| j.destage_pool.clone());
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
        let work: tasks::Job = Box::new(move |live: &Live| {
            if let Some(app) = me.upgrade() {
                app.capacity_gate(live)?;
            }
            let mut attempt = 0;
            loop {
                let r = (|| -> Result<engine::BackupReport, String> {
                    live.log(&format!("opening {url}"));
                    let mut opened = engine::open_source_all(&url, &secrets).map_err(|e| e.to_string())?;
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
                    let opts = engine::BackupOptions { immutable_for_s, ..engine::BackupOptions::new(&name) };
                    let report =
                        engine::backup_disks(&store, &disks, &opened.files, &opts, live).map_err(|e| e.to_string())?;
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
                        let mut v = serde_json::to_value(&report).unwrap_or_default();
                        if let (Some(pool), Some(app)) = (&then_destage, me.upgrade()) {
                            let point = format!("{}@{}", report.name, report.id);
                            match app.destage_task(&task_user, &point, pool) {
                                Ok(t) => {
                                    live.log(&format!("destage of {point} to pool {pool} queued as task {}", t.id));
                                    v["destage_task"] = serde_json::json!(t.id);
                                }
                                Err(e) => {
                                    live.log(&format!("warning: could not queue the destage to pool {pool}: {e}"))
                                }
                            }
                        }
                        return Ok(v);
                    }
                    Err(e) if attempt < retries && !live.is_cancelled() => {
                        attempt += 1;
                        let wait = 5u64 << attempt.min(6);
                        live.log(&format!("attempt {attempt} failed: {e}; retrying in {wait} s"));
                        for _ in 0..wait {
                            if live.is_cancelled() {
                                return Err("cancelled".into());
                            }
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        });
        self.tasks.spawn("backup", &src.name, user, (&source_host(&src.url), &source_datastore(&src.url)), work)
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
    fn restore_dirs(&self, target: &str) -> Result<(PathBuf, PathBuf), ServiceError> {
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
            let run = || -> Result<serde_json::Value, String> {
                std::fs::create_dir_all(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
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
                    };
                    let r = engine::restore(&store, &point, &opts, live).map_err(|e| e.to_string())?;
                    live.log(&format!("disk {label}: {} bytes written", r.bytes_written));
                    names.push(name);
                }
                for f in &point.files {
                    let content = store.read_point_file(f).map_err(|e| e.to_string())?;
                    std::fs::write(partial.join(&f.name), content).map_err(|e| e.to_string())?;
                    names.push(f.name.clone());
                }
                std::fs::rename(&partial, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let outputs: Vec<String> = names.iter().map(|n| dir.join(n).display().to_string()).collect();
                live.log(&format!("restore complete: {}", outputs.join(", ")));
                Ok(serde_json::json!({ "point": point.spec(), "outputs": outputs }))
            };
            discard_on_error(&partial, run())
        });
        let t = self.tasks.spawn("restore", &spec, &actor.user, ("local", "restores"), job)?;
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
            }
            .map_err(|e| e.to_string())?;
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
                Ok(serde_json::to_value(&r).unwrap_or_default())
            } else {
                Err(format!(
                    "damage found: {} damaged record(s), {} damaged restore point(s)",
                    r.damaged_records.len(),
                    r.damaged_points.len()
                ))
            }
        });
        self.tasks.spawn("verify", &subject, user, ("local", "store"), job)
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

    // ---- tape ------------------------------------------------------------------------------------

    /// Holds the library for one quick action; `Conflict` while a tape task runs.
    fn tape_quick(&self) -> Result<std::sync::MutexGuard<'_, ()>, ServiceError> {
        match self.tape_lock.try_lock() {
            Ok(g) => Ok(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Ok(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Err(ServiceError::Conflict(
                "the tape library is busy with a tape task (destage, restore or verify); try again when it ends".into(),
            )),
        }
    }

    /// The tape library's inventory; `NotFound` when no library is configured.
    pub fn tape_inventory(&self, actor: &Principal) -> Result<serde_json::Value, ServiceError> {
        actor.require(Role::Auditor)?;
        let changer = self.tape_changer()?;
        let _one = self.tape_quick()?;
        let lib = engine::tape::Library::open(&changer)?;
        let cat = &*self.tape_catalog;
        let serials = lib.drive_serials();
        // Drive rows carry the index that `tape_unload` takes.
        let rows: Vec<serde_json::Value> = engine::tape::inventory(cat, &lib)?
            .into_iter()
            .map(|r| {
                let index = serials.iter().position(|(a, _)| r.element == "drive" && *a == r.address);
                let mut v = serde_json::to_value(&r).unwrap_or_default();
                v["drive_index"] = serde_json::json!(index);
                v
            })
            .collect();
        Ok(serde_json::json!({ "library": lib.describe(), "elements": rows }))
    }

    fn tape_changer(&self) -> Result<String, ServiceError> {
        lock(&self.config).tape_changer.clone().ok_or_else(|| {
            ServiceError::NotFound("no tape library is configured; set tape_changer in the settings".into())
        })
    }

    /// Moves cartridge `barcode` into a drive (a free one, else the first after unloading
    /// it) and waits until the drive is ready.
    pub fn tape_load(&self, actor: &Principal, barcode: &str) -> Result<serde_json::Value, ServiceError> {
        actor.require(Role::Operator)?;
        let changer = self.tape_changer()?;
        let _one = self.tape_quick()?;
        let mut lib = engine::tape::Library::open(&changer)?;
        let tape = lib.load(barcode)?;
        let serial = lib.drive_serials().get(tape.drive_index).map(|(_, s)| s.clone());
        let v = serde_json::json!({
            "barcode": tape.barcode,
            "drive": tape.drive_index,
            "drive_serial": serial,
            "state": match tape.state {
                engine::tape::MediaState::NoMedium => "no-medium",
                engine::tape::MediaState::BecomingReady => "becoming-ready",
                engine::tape::MediaState::Ready => "ready",
                engine::tape::MediaState::WriteProtected => "write-protected",
                engine::tape::MediaState::Worm => "worm",
            },
        });
        drop(tape);
        self.audit(actor, "load cartridge", &format!("{barcode} into drive {}", v["drive"]));
        Ok(v)
    }

    /// Moves the cartridge in drive `drive` (an index into the library's drives) back to its
    /// home slot. An empty drive is not an error: there is nothing to do.
    pub fn tape_unload(&self, actor: &Principal, drive: usize) -> Result<serde_json::Value, ServiceError> {
        actor.require(Role::Operator)?;
        let changer = self.tape_changer()?;
        let _one = self.tape_quick()?;
        let mut lib = engine::tape::Library::open(&changer)?;
        let drives = lib.drive_serials();
        let Some((element, _)) = drives.get(drive).cloned() else {
            return Err(ServiceError::NotFound(format!(
                "drive {drive} does not exist: the library has {} drive(s), numbered from 0",
                drives.len()
            )));
        };
        let barcode = lib.inventory()?.element(element).filter(|e| e.full).and_then(|e| e.barcode.clone());
        lib.unload(drive)?;
        self.audit(actor, "unload drive", &format!("drive {drive} ({})", barcode.as_deref().unwrap_or("empty")));
        Ok(serde_json::json!({ "drive": drive, "barcode": barcode }))
    }

    /// Labels a cartridge for a pool (refused when it holds data unless `force`).
    pub fn tape_label(
        &self,
        actor: &Principal,
        barcode: &str,
        pool: &str,
        force: bool,
    ) -> Result<serde_json::Value, ServiceError> {
        actor.require(Role::Admin)?;
        plain_name(pool, "pool")?;
        let changer = self.tape_changer()?;
        let _one = self.tape_quick()?;
        let mut lib = engine::tape::Library::open(&changer)?;
        let cat = &*self.tape_catalog;
        let r = engine::tape::label(cat, &mut lib, barcode, pool, force)?;
        self.audit(
            actor,
            "label cartridge",
            &format!("{barcode} for pool {pool}{}", if force { " (forced)" } else { "" }),
        );
        Ok(serde_json::to_value(&r).unwrap_or_default())
    }

    /// The pools: the configured ones, plus the default policy of any pool a cartridge was
    /// labelled for.
    pub fn tape_pools(&self, actor: &Principal) -> Result<Vec<engine::tape::PoolPolicy>, ServiceError> {
        actor.require(Role::Auditor)?;
        let cat = &*self.tape_catalog;
        let mut pools = cat.pools()?;
        for m in cat.media()? {
            if !pools.iter().any(|p| p.name == m.pool) {
                pools.push(cat.pool(&m.pool)?);
            }
        }
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pools)
    }

    /// Creates or changes a pool's policy.
    pub fn put_tape_pool(
        &self,
        actor: &Principal,
        name: &str,
        input: PoolInput,
    ) -> Result<engine::tape::PoolPolicy, ServiceError> {
        actor.require(Role::Admin)?;
        plain_name(name, "pool")?;
        if input.max_restore_tapes == Some(0) {
            return Err(ServiceError::Invalid("max_restore_tapes must be at least 1 (or null for no bound)".into()));
        }
        let policy = engine::tape::PoolPolicy {
            name: name.into(),
            allocation: input.allocation,
            retention_days: input.retention_days,
            max_restore_tapes: input.max_restore_tapes,
        };
        self.tape_catalog.set_pool(&policy)?;
        self.audit(
            actor,
            "set pool",
            &format!(
                "{name}: {}, retention {} days, restore bound {}",
                serde_json::to_value(policy.allocation)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                policy.retention_days,
                policy.max_restore_tapes.map(|n| n.to_string()).unwrap_or_else(|| "none".into())
            ),
        );
        Ok(policy)
    }

    /// Every restore point copy the tape catalog knows, newest first.
    pub fn tape_copies(&self, actor: &Principal) -> Result<Vec<engine::tape::PointCopy>, ServiceError> {
        actor.require(Role::Auditor)?;
        let mut v = self.tape_catalog.all_points()?;
        v.sort_by_key(|c| std::cmp::Reverse(c.written_unix));
        Ok(v)
    }

    /// Runs `work` as a tape task holding the library for its whole run.
    fn spawn_tape_task(
        &self,
        kind: &str,
        subject: &str,
        user: &str,
        work: impl FnOnce(&Live, &engine::tape::TapeCatalog, &mut engine::tape::Library) -> Result<serde_json::Value, String>
            + Send
            + 'static,
    ) -> Result<TaskInfo, ServiceError> {
        let changer = self.tape_changer()?;
        let catalog = self.tape_catalog.clone();
        let tape_lock = self.tape_lock.clone();
        let job: tasks::Job = Box::new(move |live: &Live| {
            let _library = lock(&tape_lock);
            let cat = &*catalog;
            let mut lib = engine::tape::Library::open(&changer).map_err(|e| e.to_string())?;
            live.log(&format!("library {}", lib.describe()));
            work(live, cat, &mut lib)
        });
        // The "tape" datastore key queues tape tasks one behind another.
        self.tasks.spawn(kind, subject, user, ("tape", "tape"), job)
    }

    /// Destages a restore point to a pool's media set, as a task.
    pub fn start_destage(&self, actor: &Principal, point: &str, pool: &str) -> Result<TaskInfo, ServiceError> {
        actor.require(Role::Operator)?;
        let t = self.destage_task(&actor.user, point, pool)?;
        self.audit(actor, "start destage", &t.subject);
        Ok(t)
    }

    fn destage_task(&self, user: &str, point: &str, pool: &str) -> Result<TaskInfo, ServiceError> {
        plain_name(pool, "pool")?;
        let p = self.store.find(point)?;
        let store = self.store.clone();
        let pool = pool.to_string();
        let subject = format!("{} to pool {pool}", p.spec());
        self.spawn_tape_task("destage", &subject, user, move |live, cat, lib| {
            let r = engine::tape::destage(&store, cat, lib, &[p], &engine::tape::DestageOptions::new(&pool), live)
                .map_err(|e| e.to_string())?;
            for l in &r.log {
                live.log(l);
            }
            live.log(&format!(
                "destage complete: {} bytes to {} at {:.0} MB/s; the drive waited {} time(s)",
                r.bytes_to_tape,
                r.tapes.join(", "),
                r.mb_per_s,
                r.drive_waits
            ));
            Ok(serde_json::to_value(&r).unwrap_or_default())
        })
    }

    /// Restores a restore point straight from tape into `<data>/restores/<target>/`, as a
    /// task. The point need not be in the store any more; the tape catalog must know it.
    pub fn start_tape_restore(&self, actor: &Principal, req: RestoreRequest) -> Result<TaskInfo, ServiceError> {
        actor.require(Role::Operator)?;
        let (dir, partial) = self.restore_dirs(&req.target)?;
        // The catalog's answer decides what the task will restore; refuse now what it cannot.
        engine::tape::find_copy(&self.tape_catalog, &req.point).map_err(|e| match e {
            engine::tape::TapeError::Catalog(m) => ServiceError::NotFound(m),
            other => other.into(),
        })?;
        let spec = req.point.clone();
        let disk = req.disk.clone();
        let target_name = req.target.clone();
        let subject = format!("{spec} from tape to {}", req.target);
        let t = self.spawn_tape_task("tape-restore", &subject, &actor.user, move |live, cat, lib| {
            let mut run = || -> Result<serde_json::Value, String> {
                std::fs::create_dir_all(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
                let target = match &disk {
                    Some(d) => engine::tape::TapeRestoreTarget::Disk {
                        disk: d.clone(),
                        path: partial.join(format!("{}.raw", engine::disk_file_name(d))),
                    },
                    None => engine::tape::TapeRestoreTarget::Directory(partial.clone()),
                };
                let r = engine::tape::restore_from_tape(cat, lib, &spec, target, live).map_err(|e| e.to_string())?;
                for p in &r.problems {
                    live.log(&format!("problem: {p}"));
                }
                if !r.damaged.is_empty() {
                    // What could be read is worth keeping, under a name that says it is incomplete.
                    let kept = dir.with_file_name(format!("{}.incomplete", engine::disk_file_name(&target_name)));
                    for d in &r.damaged {
                        live.log(&format!("unreadable: {d:?}"));
                    }
                    std::fs::rename(&partial, &kept).map_err(|e| format!("{}: {e}", kept.display()))?;
                    return Err(format!(
                        "{} range(s) could not be read from tape; the incomplete restore is kept in {} (see the log \
                     for the ranges)",
                        r.damaged.len(),
                        kept.display()
                    ));
                }
                std::fs::rename(&partial, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                live.log(&format!(
                    "restore from tape complete: {} bytes from {} into {}",
                    r.bytes_restored,
                    r.tapes.join(", "),
                    dir.display()
                ));
                let mut v = serde_json::to_value(&r).unwrap_or_default();
                v["directory"] = serde_json::Value::String(dir.display().to_string());
                Ok(v)
            };
            discard_on_error(&partial, run())
        })?;
        self.audit(actor, "start restore from tape", &subject);
        Ok(t)
    }

    /// Reads a whole cartridge back and checks every block and record, as a task.
    pub fn start_tape_verify(&self, actor: &Principal, barcode: &str) -> Result<TaskInfo, ServiceError> {
        actor.require(Role::Operator)?;
        if barcode.is_empty() || barcode.len() > 32 || !barcode.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ServiceError::Invalid(format!("barcode {barcode:?}: expected up to 32 printable characters")));
        }
        let barcode = barcode.to_string();
        let subject = format!("cartridge {barcode}");
        let t = self.spawn_tape_task("tape-verify", &subject, &actor.user, move |live, _cat, lib| {
            let r = engine::tape::verify_tape(lib, &barcode, live).map_err(|e| e.to_string())?;
            for p in &r.problems {
                live.log(&format!("problem: {p}"));
            }
            if !r.problems.is_empty() {
                return Err(format!(
                    "cartridge {barcode}: {} problem(s) found (see the log); restores that need the damaged \
                     ranges will report them",
                    r.problems.len()
                ));
            }
            live.log(&format!(
                "verify of {barcode} complete: {} tape file(s), {} record(s), {} bytes, all intact",
                r.files, r.records, r.bytes
            ));
            Ok(serde_json::to_value(&r).unwrap_or_default())
        })?;
        self.audit(actor, "start tape verify", &subject);
        Ok(t)
    }

    // ---- settings and metrics ---------------------------------------------------------------------

    pub fn settings(&self, actor: &Principal) -> Result<serde_json::Value, ServiceError> {
        actor.require(Role::Auditor)?;
        let c = lock(&self.config).clone();
        Ok(serde_json::json!({
            "data_dir": self.data_dir.display().to_string(),
            "settings": c.settings,
            "tape_changer": c.tape_changer,
            "store": self.usage(actor)?,
        }))
    }

    /// The notification settings (never a secret).
    pub fn notification_settings(&self, actor: &Principal) -> Result<NotificationsInfo, ServiceError> {
        actor.require(Role::Admin)?;
        Ok(notify::info(&lock(&self.config).notifications))
    }

    /// Replaces the notification settings; a secret left out keeps the stored one.
    pub fn put_notification_settings(
        &self,
        actor: &Principal,
        input: NotificationsInput,
    ) -> Result<NotificationsInfo, ServiceError> {
        actor.require(Role::Admin)?;
        let mut c = lock(&self.config);
        let n = notify::apply_input(&c.notifications, input, &self.sealer)?;
        let mut next = c.clone();
        next.notifications = n.clone();
        self.save_config(&next)?;
        *c = next;
        drop(c);
        self.notifier.configure(notify::resolve(&n, &self.sealer), n.events);
        let info = notify::info(&n);
        self.audit(
            actor,
            "change notifications",
            &format!(
                "webhook {}; e-mail {}",
                info.webhook.as_ref().and_then(|w| notify::origin(&w.url)).unwrap_or_else(|| "none".into()),
                info.smtp
                    .as_ref()
                    .map(|s| format!("via {}:{} to {}", s.host, s.port, s.to.join(", ")))
                    .unwrap_or_else(|| "none".into()),
            ),
        );
        Ok(info)
    }

    /// Sends a test notification to each channel now and says how each went.
    pub fn test_notifications(&self, actor: &Principal) -> Result<Vec<ChannelOutcome>, ServiceError> {
        actor.require(Role::Admin)?;
        let c = lock(&self.config).notifications.clone();
        if c.webhook.is_none() && c.smtp.is_none() {
            return Err(ServiceError::Invalid(
                "no notification channel is configured; save a webhook or an SMTP server first".into(),
            ));
        }
        self.audit(actor, "test notifications", "sent a test to every channel");
        Ok(self.notifier.test_now())
    }

    /// Changes the concurrency limits and the tape library. A new library address is opened
    /// (inventory read) before it is saved, so a typo is refused instead of breaking the next
    /// destage; `tape_changer: null` removes the library.
    pub fn put_settings(&self, actor: &Principal, input: SettingsInput) -> Result<serde_json::Value, ServiceError> {
        actor.require(Role::Admin)?;
        for (name, v) in [
            ("max_tasks", input.max_tasks),
            ("max_tasks_per_host", input.max_tasks_per_host),
            ("max_tasks_per_datastore", input.max_tasks_per_datastore),
        ] {
            if !(1..=64).contains(&v) {
                return Err(ServiceError::Invalid(format!("{name} must be between 1 and 64, not {v}")));
            }
        }
        let changer = input.tape_changer.map(|c| c.trim().to_string()).filter(|c| !c.is_empty());
        let old_changer = lock(&self.config).tape_changer.clone();
        if let Some(spec) = changer.as_ref().filter(|c| Some(*c) != old_changer.as_ref()) {
            if spec.starts_with("iscsi://") && spec.split('/').nth(2).is_some_and(|auth| auth.contains('@')) {
                return Err(ServiceError::Invalid(
                    "the tape library address must not carry credentials: it is shown and logged".into(),
                ));
            }
            let _one = self.tape_quick()?;
            let lib = engine::tape::Library::open(spec).map_err(|e| {
                ServiceError::Invalid(format!("cannot open the tape library {spec}: {e}; check the address"))
            })?;
            lib.inventory()
                .map_err(|e| ServiceError::Invalid(format!("tape library {spec} did not answer an inventory: {e}")))?;
        }
        let current = lock(&self.config).settings.clone();
        let limits = Settings {
            max_tasks: input.max_tasks,
            max_tasks_per_host: input.max_tasks_per_host,
            max_tasks_per_datastore: input.max_tasks_per_datastore,
            time_zone: match input.time_zone.as_deref().map(str::trim) {
                None => current.time_zone,
                Some("") => None,
                Some(tz) => {
                    store::retention::time_zone(tz)?;
                    Some(tz.to_string())
                }
            },
            capacity_high_pct: input.capacity_high_pct.unwrap_or(current.capacity_high_pct),
            capacity_low_pct: input.capacity_low_pct.unwrap_or(current.capacity_low_pct),
            maintenance_schedule: match input.maintenance_schedule {
                None => current.maintenance_schedule,
                Some(ev) => {
                    CalendarEvent::parse(ev.trim())
                        .map_err(|e| ServiceError::Invalid(format!("maintenance_schedule: {e}")))?;
                    ev.trim().to_string()
                }
            },
            verify_schedule: match input.verify_schedule.as_deref().map(str::trim) {
                None => current.verify_schedule,
                Some("") => None,
                Some(ev) => {
                    CalendarEvent::parse(ev).map_err(|e| ServiceError::Invalid(format!("verify_schedule: {e}")))?;
                    Some(ev.to_string())
                }
            },
            verify_skip_days: input.verify_skip_days.unwrap_or(current.verify_skip_days).min(3650),
        };
        if !(1..=99).contains(&limits.capacity_high_pct) || limits.capacity_low_pct >= limits.capacity_high_pct {
            return Err(ServiceError::Invalid(format!(
                "capacity watermarks: the high one must be 1-99% and the low one below it (got high {}%, low {}%)",
                limits.capacity_high_pct, limits.capacity_low_pct
            )));
        }
        {
            let mut c = lock(&self.config);
            let mut next = c.clone();
            next.settings = limits.clone();
            next.tape_changer = changer.clone();
            self.save_config(&next)?;
            *c = next;
        }
        *lock(&self.tasks.limits) = tasks::Limits {
            total: limits.max_tasks,
            per_host: limits.max_tasks_per_host,
            per_datastore: limits.max_tasks_per_datastore,
        };
        self.audit(
            actor,
            "change settings",
            &format!(
                "tasks {} in all, {} per host, {} per datastore; tape library {}",
                limits.max_tasks,
                limits.max_tasks_per_host,
                limits.max_tasks_per_datastore,
                changer.as_deref().unwrap_or("none")
            ),
        );
        self.settings(actor)
    }

    /// Replaces the HTTPS certificate and key (PEM); the web layer reloads them.
    pub fn set_certificate(&self, actor: &Principal, cert_pem: &str, key_pem: &str) -> Result<(), ServiceError> {
        actor.require(Role::Admin)?;
        if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(ServiceError::Invalid("the certificate must be PEM (-----BEGIN CERTIFICATE-----)".into()));
        }
        if !key_pem.contains("PRIVATE KEY-----") {
            return Err(ServiceError::Invalid("the key must be a PEM private key".into()));
        }
        let (cert, key) = self.tls_paths();
        config::write_private(&key, key_pem.as_bytes())?;
        config::write_private(&cert, cert_pem.as_bytes())?;
        self.audit(actor, "replace certificate", "uploaded a certificate and key");
        Ok(())
    }

    /// Prometheus text exposition.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        let tasks = self.tasks.list(10_000).unwrap_or_default();
        let mut by: HashMap<(String, String), u64> = HashMap::new();
        let mut ingested = 0u64;
        let mut last_tput = 0.0;
        for t in &tasks {
            *by.entry((t.kind.clone(), format!("{:?}", t.state).to_lowercase())).or_default() += 1;
            if t.kind == "backup" && t.state == TaskState::Succeeded {
                ingested += t.result.as_ref().and_then(|r| r["bytes_read"].as_u64()).unwrap_or(0);
                if last_tput == 0.0 {
                    last_tput = t.throughput_bps;
                }
            }
        }
        out.push_str("# HELP rackvault_tasks Tasks by kind and state.\n# TYPE rackvault_tasks gauge\n");
        let mut keys: Vec<_> = by.into_iter().collect();
        keys.sort();
        for ((kind, state), n) in keys {
            out.push_str(&format!("rackvault_tasks{{kind=\"{kind}\",state=\"{state}\"}} {n}\n"));
        }
        out.push_str(&format!(
            "# HELP rackvault_tasks_running Tasks running now.\n# TYPE rackvault_tasks_running gauge\nrackvault_tasks_running {}\n",
            self.tasks.running()
        ));
        out.push_str(&format!(
            "# HELP rackvault_bytes_ingested_total Bytes read from sources by successful backups.\n# TYPE rackvault_bytes_ingested_total counter\nrackvault_bytes_ingested_total {ingested}\n"
        ));
        out.push_str(&format!(
            "# HELP rackvault_backup_throughput_bytes_per_second Throughput of the newest successful backup.\n# TYPE rackvault_backup_throughput_bytes_per_second gauge\nrackvault_backup_throughput_bytes_per_second {last_tput}\n"
        ));
        if let Ok((stored, logical, points)) = self.usage_now() {
            out.push_str(&format!(
                "# HELP rackvault_store_bytes Bytes in the store's packs.\n# TYPE rackvault_store_bytes gauge\nrackvault_store_bytes {stored}\n\
                 # HELP rackvault_store_logical_bytes Bytes the restore points represent.\n# TYPE rackvault_store_logical_bytes gauge\nrackvault_store_logical_bytes {logical}\n\
                 # HELP rackvault_store_dedup_ratio Logical bytes over stored bytes.\n# TYPE rackvault_store_dedup_ratio gauge\nrackvault_store_dedup_ratio {}\n\
                 # HELP rackvault_restore_points Restore points in the store.\n# TYPE rackvault_restore_points gauge\nrackvault_restore_points {points}\n",
                if stored > 0 { logical as f64 / stored as f64 } else { 0.0 }
            ));
        }
        self.capacity_metrics(&mut out);
        let changer = lock(&self.config).tape_changer.clone();
        if let Some(changer) = changer {
            if let Ok(_one) = self.tape_lock.try_lock() {
                if let Ok(lib) = engine::tape::Library::open(&changer) {
                    if let Ok(inv) = lib.inventory() {
                        out.push_str("# HELP rackvault_tape_drive_loaded Whether a tape drive holds a cartridge.\n# TYPE rackvault_tape_drive_loaded gauge\n");
                        for (addr, serial) in lib.drive_serials() {
                            let full = inv.element(addr).is_some_and(|e| e.full);
                            out.push_str(&format!(
                                "rackvault_tape_drive_loaded{{drive=\"{serial}\"}} {}\n",
                                u8::from(full)
                            ));
                        }
                    }
                }
            }
        }
        out
    }

    // ---- scheduler ---------------------------------------------------------------------------------

    /// Starts the scheduler thread: every few seconds it starts the jobs that are due
    /// (within their backup window), with the job's retries. It stops when the appliance is
    /// dropped.
    pub fn start_scheduler(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let _ = std::thread::Builder::new().name("scheduler".into()).spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            let Some(app) = weak.upgrade() else { return };
            app.tick(now_unix());
        });
    }

    /// Starts due jobs as of `now`, and the store's upkeep (see `lifecycle`).
    pub fn tick(&self, now: u64) {
        self.lifecycle_tick(now);
        let jobs = lock(&self.config).jobs.clone();
        for j in jobs.iter().filter(|j| j.enabled) {
            let Ok(ev) = CalendarEvent::parse(&j.schedule) else { continue };
            let due = {
                let mut next = lock(&self.next_runs);
                let planned = *next.entry(j.id.clone()).or_insert_with(|| ev.next_after(now).unwrap_or(u64::MAX));
                if planned > now {
                    continue;
                }
                next.insert(j.id.clone(), ev.next_after(now).unwrap_or(u64::MAX));
                planned
            };
            let window = u64::from(j.window_hours.unwrap_or(24)) * 3600;
            let system = Principal { user: "scheduler".into(), role: Role::Operator };
            if now > due + window {
                self.audit(&system, "skip job", &format!("{}: missed its window", j.name));
                continue;
            }
            match self.backup_task("scheduler", &j.source, Some(j)) {
                Ok(t) => {
                    lock(&self.last_tasks).insert(j.id.clone(), t.id);
                }
                Err(e) => self.audit(&system, "job failed to start", &format!("{}: {e}", j.name)),
            }
        }
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

fn usage_now(store: &Store) -> Result<(u64, u64, u64), ServiceError> {
    let u = store.usage()?;
    let logical: u64 = store.list()?.iter().map(|p| p.stats.bytes_logical).sum();
    Ok((u.pack_bytes, logical, u.restore_points))
}

/// Adds a usage sample (after every backup), for the dashboard's chart.
fn record_usage(store: &Store, env: &KvEnv, db: &KvDb) {
    let Ok((stored, logical, _)) = usage_now(store) else { return };
    let s = UsageSample { unix: now_unix(), bytes_stored: stored, bytes_logical: logical };
    if let Ok(mut wtxn) = env.write() {
        if db.put(&mut wtxn, &s.unix.to_be_bytes(), &serde_json::to_vec(&s).expect("serialises")).is_ok() {
            let _ = wtxn.commit();
        }
    }
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
