//! Users, roles, sessions, API tokens, sign-in throttling and the audit log.
//!
//! - Passwords are stored as argon2id PHC strings; no default password exists: the first
//!   administrator is created by a first-run setup that needs the one-time setup code the
//!   daemon printed on its console (`<data>/setup-code`, 0600). Checking "no user yet" and
//!   creating the user happen in one write transaction, so parallel setups make one admin.
//! - Every user has an id drawn at random when created (128 bits, never reused); API tokens
//!   are bound to that id, so deleting a user revokes its tokens, and a user re-created
//!   under the same name does not revive them. The last administrator can be neither
//!   deleted nor demoted.
//! - Sessions live in memory only: a restart signs everyone out, and a stolen database holds
//!   no live session. A session expires after [`SESSION_IDLE`] without use.
//! - API tokens are random 32-byte secrets shown once; only their blake3 hash is stored.
//! - Password hashing is bounded: at most [`VERIFY_SLOTS`] argon2 computations (about 19 MiB
//!   each) run at once; a request that waits longer than [`VERIFY_WAIT`] for a slot is
//!   refused with `Busy` (503, Retry-After). Throttling is checked before any hashing. The
//!   hashes run on [`VERIFY_SLOTS`] long-lived threads of their own, not on the request's: the
//!   allocator keeps a thread's freed 19 MiB for reuse by that thread, so hashing on every
//!   request thread left gigabytes resident after a flood (measured: 16 MiB per request).
//! - Throttling, none of which lets one client lock out another:
//!   - a (user, client address) pair is locked for 30 s × 2^(n-5) after its 5th failure in a
//!     row (at most 15 min); a success from that pair clears it;
//!   - a client address is locked for 15 min after 20 failures, whatever the user;
//!   - a user under attack from many addresses (10 or more failures in 15 min) is slowed,
//!     not locked: one password check per few seconds, except from an address that signed in
//!     as that user before, which always gets through.
//! - Audit: every field is bounded ([`AUDIT_FIELD_MAX`], [`AUDIT_DETAIL_MAX`] bytes, control
//!   characters replaced). Refused (throttled) sign-ins are counted per client and written
//!   as one summary entry a minute, never one by one. The log keeps at most
//!   `AuditLimits::keep` entries in LMDB; older ones are rotated, `AuditLimits::rotate` at a
//!   time, into compressed archives `<data>/audit/audit-<first>-<last>.jsonl.zst`, of which
//!   the newest `AuditLimits::archives` are kept.
//!
//! Locks: `throttle`, `sessions`, `slots` and the hashers' queue are independent and never held together, and
//! never across an LMDB transaction.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use store::kv::{KvDb, KvEnv};

use crate::{now_unix, random_hex, Principal, Role, ServiceError};

/// Idle time after which a session ends.
pub const SESSION_IDLE: u64 = 8 * 3600;
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 10;
/// Password hashes computed at once.
pub const VERIFY_SLOTS: usize = 2;
/// Longest wait for a hashing slot before `Busy`.
pub const VERIFY_WAIT: Duration = Duration::from_secs(3);
/// Longest user name or action kept in an audit entry, in bytes.
pub const AUDIT_FIELD_MAX: usize = 96;
/// Longest detail kept in an audit entry, in bytes.
pub const AUDIT_DETAIL_MAX: usize = 1024;
/// Most audit entries one request returns.
pub const AUDIT_PAGE_MAX: usize = 1000;
const PAIR_LOCK_AFTER: u32 = 5;
const CLIENT_LOCK_AFTER: u32 = 20;
const MAX_LOCK_S: u64 = 15 * 60;
/// Failures against one user (from any address) within [`USER_WINDOW_S`] that slow it.
const USER_SLOW_AFTER: u32 = 10;
const USER_WINDOW_S: u64 = 15 * 60;
pub(crate) const USER_MAX_DELAY_S: u64 = 5;
/// Refused sign-ins of a client are summed up in one audit entry per this many seconds.
const REFUSED_SUMMARY_S: u64 = 60;
/// Throttle tables are swept of stale entries above this size.
const THROTTLE_SWEEP_AT: usize = 4096;

/// How much audit log is kept.
#[derive(Debug, Clone, Copy)]
pub struct AuditLimits {
    /// Entries kept in LMDB.
    pub keep: u64,
    /// Entries moved into one archive when `keep` is exceeded.
    pub rotate: u64,
    /// Archives kept.
    pub archives: usize,
}

impl Default for AuditLimits {
    fn default() -> Self {
        AuditLimits { keep: 50_000, rotate: 10_000, archives: 20 }
    }
}

/// A stored user.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserRecord {
    /// Random, never reused; empty in records written before ids existed (given one at open).
    #[serde(default)]
    id: String,
    name: String,
    role: Role,
    phc: String,
    created_unix: u64,
}

/// A user as listed.
#[derive(Debug, Clone, Serialize)]
pub struct UserInfo {
    pub name: String,
    pub role: Role,
    pub created_unix: u64,
}

/// An API token as listed (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub user: String,
    pub created_unix: u64,
    #[serde(skip_serializing)]
    hash: String,
    #[serde(skip_serializing)]
    user_id: String,
}

/// A signed-in browser session.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    #[serde(skip_serializing)]
    pub token: String,
    pub csrf: String,
    #[serde(flatten)]
    pub principal: Principal,
    pub expires_unix: u64,
}

/// One audit log entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its position in the log (1, 2, ...); page back with `before`.
    #[serde(default)]
    pub id: u64,
    pub unix: u64,
    pub user: String,
    pub action: String,
    pub detail: String,
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    locked_until: u64,
    last_unix: u64,
}

/// Failures against one user from anywhere: slows, never locks.
#[derive(Debug, Default)]
struct Pressure {
    failures: u32,
    window_start: u64,
    next_check: u64,
}

/// Sign-ins refused by throttling, not yet written to the audit log.
#[derive(Debug, Default)]
struct Refused {
    count: u64,
    first_unix: u64,
    users: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Throttle {
    by_pair: HashMap<(String, String), Failures>,
    by_client: HashMap<String, Failures>,
    by_user: HashMap<String, Pressure>,
    /// (user, client) pairs that signed in successfully, and when.
    known_good: HashMap<(String, String), u64>,
    refused: HashMap<String, Refused>,
    /// Failed sign-ins since the appliance started (for metrics).
    failed_total: u64,
}

impl Throttle {
    /// Drops what no longer throttles anyone, so an attacker cycling names and addresses
    /// cannot grow the tables without bound.
    fn sweep(&mut self, now: u64) {
        let stale = |f: &Failures| f.locked_until <= now && f.last_unix + MAX_LOCK_S <= now;
        if self.by_pair.len() > THROTTLE_SWEEP_AT {
            self.by_pair.retain(|_, f| !stale(f));
        }
        if self.by_client.len() > THROTTLE_SWEEP_AT {
            self.by_client.retain(|_, f| !stale(f));
        }
        if self.by_user.len() > THROTTLE_SWEEP_AT {
            self.by_user.retain(|_, p| p.window_start + USER_WINDOW_S > now);
        }
        if self.known_good.len() > THROTTLE_SWEEP_AT {
            self.known_good.retain(|_, t| *t + 30 * 86_400 > now);
        }
    }
}

/// A bounded number of password hashes at once.
#[derive(Debug)]
struct Slots {
    busy: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

struct Slot<'a>(&'a Slots);

type HashJob = Box<dyn FnOnce() + Send>;

/// The threads that compute password hashes, fed by [`Auth::hashing`].
#[derive(Debug)]
struct Hashers {
    jobs: Mutex<std::sync::mpsc::Sender<HashJob>>,
}

impl Hashers {
    fn start(n: usize) -> Hashers {
        let (tx, rx) = std::sync::mpsc::channel::<HashJob>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for i in 0..n {
            let rx = rx.clone();
            // A thread that cannot start leaves the others; with none, `run` reports it.
            let _ = std::thread::Builder::new().name(format!("password-hash-{i}")).spawn(move || loop {
                let job = lock(&rx).recv();
                match job {
                    Ok(job) => job(),
                    Err(_) => return,
                }
            });
        }
        Hashers { jobs: Mutex::new(tx) }
    }

    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, ServiceError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job: HashJob = Box::new(move || {
            let _ = tx.send(f());
        });
        let lost = || ServiceError::Internal("the password hashing threads are gone; restart the appliance".into());
        lock(&self.jobs).send(job).map_err(|_| lost())?;
        rx.recv().map_err(|_| lost())
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut busy = lock(&self.0.busy);
        *busy = busy.saturating_sub(1);
        self.0.freed.notify_one();
    }
}

impl Slots {
    fn acquire(&self, wait: Duration) -> Result<Slot<'_>, ServiceError> {
        let deadline = Instant::now() + wait;
        let mut busy = lock(&self.busy);
        while *busy >= self.max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ServiceError::Busy {
                    retry_after_s: 2,
                    what: "too many sign-ins are being checked at once".into(),
                });
            }
            busy = self.freed.wait_timeout(busy, left).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
        *busy += 1;
        Ok(Slot(self))
    }
}

#[derive(Debug)]
pub(crate) struct Auth {
    users: KvDb,
    tokens: KvDb,
    audit: KvDb,
    archive_dir: PathBuf,
    limits: AuditLimits,
    sessions: Mutex<HashMap<String, Session>>,
    throttle: Mutex<Throttle>,
    slots: Slots,
    hashers: Hashers,
    /// Most hashes seen running at once (tests check the bound).
    peak_hashing: std::sync::atomic::AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `s` cut to at most `max` bytes (at a character boundary) with control characters
/// replaced, noting how long it was when cut.
pub(crate) fn bounded(s: &str, max: usize) -> String {
    let clean = |t: &str| t.chars().map(|c| if c.is_control() { '?' } else { c }).collect::<String>();
    if s.len() <= max {
        return clean(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", clean(&s[..end]), s.len())
}

fn hash_password(password: &str) -> Result<String, ServiceError> {
    let salt_bytes = crate::random_bytes::<16>();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| ServiceError::Internal(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ServiceError::Internal(format!("password hashing failed: {e}")))
}

fn check_password_rules(password: &str) -> Result<(), ServiceError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(ServiceError::Invalid(format!("the password must have at least {MIN_PASSWORD} characters")));
    }
    if password.len() > 1024 {
        return Err(ServiceError::Invalid("the password must have at most 1024 bytes".into()));
    }
    Ok(())
}

fn check_user_name(name: &str) -> Result<(), ServiceError> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
        return Err(ServiceError::Invalid(format!(
            "user name {}: use 1-64 letters, digits, '-', '_', '.' or '@'",
            bounded(&format!("{name:?}"), 80)
        )));
    }
    Ok(())
}

/// How a user is written: once, as the first administrator, or over an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PutUser {
    /// Only if no user exists at all (first-run setup), checked in the same transaction.
    FirstAdmin,
    /// Only if no user of that name exists.
    Create,
}

fn decode<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, ServiceError> {
    serde_json::from_slice(v).map_err(|e| ServiceError::Internal(format!("state database: unreadable record: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, ServiceError> {
    serde_json::to_vec(v).map_err(|e| ServiceError::Internal(format!("state database: {e}")))
}

impl Auth {
    /// Opens the tables, giving ids to users written before ids existed and binding their
    /// tokens to them (a token whose user no longer exists is deleted).
    pub(crate) fn open(
        env: &KvEnv,
        users: KvDb,
        tokens: KvDb,
        audit: KvDb,
        archive_dir: PathBuf,
        limits: AuditLimits,
    ) -> Result<Auth, ServiceError> {
        let auth = Auth {
            users,
            tokens,
            audit,
            archive_dir,
            limits,
            sessions: Mutex::default(),
            throttle: Mutex::default(),
            slots: Slots { busy: Mutex::new(0), freed: Condvar::new(), max: VERIFY_SLOTS },
            hashers: Hashers::start(VERIFY_SLOTS),
            peak_hashing: Default::default(),
        };
        auth.upgrade(env)?;
        Ok(auth)
    }

    fn upgrade(&self, env: &KvEnv) -> Result<(), ServiceError> {
        let mut wtxn = env.write()?;
        let mut ids = HashMap::new();
        let mut renamed = Vec::new();
        for item in self.users.iter(&wtxn).map_err(|e| env.err(e))? {
            let (k, v) = item.map_err(|e| env.err(e))?;
            let mut u: UserRecord = decode(v)?;
            if u.id.is_empty() {
                u.id = random_hex(16);
                renamed.push((k.to_vec(), u.clone()));
            }
            ids.insert(u.name.clone(), u.id);
        }
        let mut tokens = Vec::new();
        for item in self.tokens.iter(&wtxn).map_err(|e| env.err(e))? {
            let (k, v) = item.map_err(|e| env.err(e))?;
            let t: StoredToken = decode(v)?;
            if t.user_id.is_empty() {
                tokens.push((k.to_vec(), t));
            }
        }
        if renamed.is_empty() && tokens.is_empty() {
            return Ok(());
        }
        for (k, u) in renamed {
            self.users.put(&mut wtxn, &k, &encode(&u)?).map_err(|e| env.err(e))?;
        }
        for (k, mut t) in tokens {
            match ids.get(&t.user) {
                Some(id) => {
                    t.user_id = id.clone();
                    self.tokens.put(&mut wtxn, &k, &encode(&t)?).map_err(|e| env.err(e))?;
                }
                None => {
                    self.tokens.delete(&mut wtxn, &k).map_err(|e| env.err(e))?;
                }
            }
        }
        wtxn.commit().map_err(|e| env.err(e))?;
        Ok(())
    }

    fn user(&self, env: &KvEnv, name: &str) -> Result<Option<UserRecord>, ServiceError> {
        let rtxn = env.read()?;
        match self.users.get(&rtxn, name.as_bytes()).map_err(|e| env.err(e))? {
            Some(v) => Ok(Some(decode(v)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn user_count(&self, env: &KvEnv) -> Result<u64, ServiceError> {
        let rtxn = env.read()?;
        Ok(self.users.len(&rtxn).map_err(|e| env.err(e))?)
    }

    pub(crate) fn users(&self, env: &KvEnv) -> Result<Vec<UserInfo>, ServiceError> {
        let rtxn = env.read()?;
        let mut out = Vec::new();
        for item in self.users.iter(&rtxn).map_err(|e| env.err(e))? {
            let (_, v) = item.map_err(|e| env.err(e))?;
            let u: UserRecord = decode(v)?;
            out.push(UserInfo { name: u.name, role: u.role, created_unix: u.created_unix });
        }
        Ok(out)
    }

    /// Runs `f` (a password hash or check) on a hashing thread, once one of the bounded
    /// slots is free.
    fn hashing<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, ServiceError> {
        let _slot = self.slots.acquire(VERIFY_WAIT)?;
        let busy = *lock(&self.slots.busy);
        self.peak_hashing.fetch_max(busy, std::sync::atomic::Ordering::Relaxed);
        self.hashers.run(f)
    }

    #[cfg(test)]
    pub(crate) fn peak_hashing(&self) -> usize {
        self.peak_hashing.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn put_user(
        &self,
        env: &KvEnv,
        name: &str,
        password: &str,
        role: Role,
        how: PutUser,
    ) -> Result<UserInfo, ServiceError> {
        check_user_name(name)?;
        check_password_rules(password)?;
        let owned = password.to_string();
        let phc = self.hashing(move || hash_password(&owned))??;
        let mut wtxn = env.write()?;
        if how == PutUser::FirstAdmin && self.users.len(&wtxn).map_err(|e| env.err(e))? > 0 {
            return Err(ServiceError::Conflict("the appliance is already set up; sign in instead".into()));
        }
        if self.users.get(&wtxn, name.as_bytes()).map_err(|e| env.err(e))?.is_some() {
            return Err(ServiceError::Conflict(format!("user {name} already exists")));
        }
        let rec = UserRecord { id: random_hex(16), name: name.into(), role, phc, created_unix: now_unix() };
        self.users.put(&mut wtxn, name.as_bytes(), &encode(&rec)?).map_err(|e| env.err(e))?;
        wtxn.commit().map_err(|e| env.err(e))?;
        Ok(UserInfo { name: rec.name, role, created_unix: rec.created_unix })
    }

    /// How many administrators exist, in `txn`'s view.
    fn admins(
        &self,
        env: &KvEnv,
        txn: &store::kv::heed::RoTxn<'_, store::kv::heed::WithoutTls>,
    ) -> Result<usize, ServiceError> {
        let mut n = 0;
        for item in self.users.iter(txn).map_err(|e| env.err(e))? {
            let (_, v) = item.map_err(|e| env.err(e))?;
            if decode::<UserRecord>(v)?.role == Role::Admin {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Deletes a user, its API tokens and its sessions; refused for the last administrator.
    pub(crate) fn delete_user(&self, env: &KvEnv, name: &str) -> Result<(), ServiceError> {
        let mut wtxn = env.write()?;
        let Some(v) = self.users.get(&wtxn, name.as_bytes()).map_err(|e| env.err(e))? else {
            return Err(ServiceError::NotFound(format!("no user {}", bounded(name, 64))));
        };
        let rec: UserRecord = decode(v)?;
        if rec.role == Role::Admin && self.admins(env, &wtxn)? <= 1 {
            return Err(ServiceError::Conflict(format!(
                "{name} is the last administrator; make another user an administrator first"
            )));
        }
        let mut revoke = Vec::new();
        for item in self.tokens.iter(&wtxn).map_err(|e| env.err(e))? {
            let (k, v) = item.map_err(|e| env.err(e))?;
            let t: StoredToken = decode(v)?;
            if t.user_id == rec.id || t.user == rec.name {
                revoke.push(k.to_vec());
            }
        }
        for k in &revoke {
            self.tokens.delete(&mut wtxn, k).map_err(|e| env.err(e))?;
        }
        self.users.delete(&mut wtxn, name.as_bytes()).map_err(|e| env.err(e))?;
        wtxn.commit().map_err(|e| env.err(e))?;
        lock(&self.sessions).retain(|_, s| s.principal.user != name);
        Ok(())
    }

    /// Changes a user's role; refused when it would leave no administrator.
    pub(crate) fn set_role(&self, env: &KvEnv, name: &str, role: Role) -> Result<(), ServiceError> {
        let mut wtxn = env.write()?;
        let Some(v) = self.users.get(&wtxn, name.as_bytes()).map_err(|e| env.err(e))? else {
            return Err(ServiceError::NotFound(format!("no user {}", bounded(name, 64))));
        };
        let mut rec: UserRecord = decode(v)?;
        if rec.role == Role::Admin && role != Role::Admin && self.admins(env, &wtxn)? <= 1 {
            return Err(ServiceError::Conflict(format!(
                "{name} is the last administrator; make another user an administrator first"
            )));
        }
        rec.role = role;
        self.users.put(&mut wtxn, name.as_bytes(), &encode(&rec)?).map_err(|e| env.err(e))?;
        wtxn.commit().map_err(|e| env.err(e))?;
        // Sessions carry the role they signed in with: end them so the new role applies.
        lock(&self.sessions).retain(|_, s| s.principal.user != name);
        Ok(())
    }

    /// Seconds to wait before `user` may try from `client`, if throttled.
    fn throttled(&self, user: &str, client: &str, now: u64) -> Option<u64> {
        let mut t = lock(&self.throttle);
        let pair = t.by_pair.get(&(user.to_string(), client.to_string())).map_or(0, |f| f.locked_until);
        let by_client = t.by_client.get(client).map_or(0, |f| f.locked_until);
        let mut until = pair.max(by_client);
        if until <= now && !t.known_good.contains_key(&(user.to_string(), client.to_string())) {
            if let Some(p) = t.by_user.get_mut(user) {
                if p.window_start + USER_WINDOW_S <= now {
                    *p = Pressure::default();
                } else if p.failures >= USER_SLOW_AFTER {
                    if p.next_check > now {
                        until = p.next_check;
                    } else {
                        let delay = u64::from(p.failures - USER_SLOW_AFTER + 1).min(USER_MAX_DELAY_S);
                        p.next_check = now + delay;
                    }
                }
            }
        }
        if until > now {
            let r = t.refused.entry(client.to_string()).or_default();
            if r.count == 0 {
                r.first_unix = now;
            }
            r.count += 1;
            if r.users.len() < 5 {
                r.users.insert(bounded(user, 32));
            }
            return Some(until - now);
        }
        None
    }

    fn note_failure(&self, user: &str, client: &str, now: u64) {
        let mut t = lock(&self.throttle);
        t.sweep(now);
        t.failed_total += 1;
        let f = t.by_pair.entry((user.to_string(), client.to_string())).or_default();
        f.count += 1;
        f.last_unix = now;
        if f.count >= PAIR_LOCK_AFTER {
            f.locked_until = now + (30u64 << (f.count - PAIR_LOCK_AFTER).min(10)).min(MAX_LOCK_S);
        }
        let c = t.by_client.entry(client.to_string()).or_default();
        c.count += 1;
        c.last_unix = now;
        if c.count >= CLIENT_LOCK_AFTER {
            c.locked_until = now + MAX_LOCK_S;
        }
        let p = t.by_user.entry(user.to_string()).or_default();
        if p.window_start + USER_WINDOW_S <= now {
            *p = Pressure { failures: 0, window_start: now, next_check: 0 };
        }
        p.failures += 1;
    }

    fn note_success(&self, user: &str, client: &str, now: u64) {
        let mut t = lock(&self.throttle);
        t.sweep(now);
        t.by_pair.remove(&(user.to_string(), client.to_string()));
        if let Some(c) = t.by_client.get_mut(client) {
            c.count = c.count.saturating_sub(1);
        }
        t.known_good.insert((user.to_string(), client.to_string()), now);
    }

    /// Failed sign-ins since start.
    pub(crate) fn failed_total(&self) -> u64 {
        lock(&self.throttle).failed_total
    }

    /// Checks a first-run setup attempt's throttling; a wrong setup code counts as a failure.
    pub(crate) fn setup_attempt(&self, client: &str, code_ok: bool) -> Result<(), ServiceError> {
        let now = now_unix();
        if let Some(retry_after_s) = self.throttled("(setup)", client, now) {
            return Err(ServiceError::RateLimited { retry_after_s });
        }
        if !code_ok {
            self.note_failure("(setup)", client, now);
            return Err(ServiceError::Unauthenticated(
                "wrong setup code: use the code the appliance printed on its console at start (also in <data>/setup-code)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Signs in. Throttled attempts are refused before any hashing and are not returned as
    /// failures (the caller audits them in aggregate, see [`Auth::take_refused`]).
    pub(crate) fn login(&self, env: &KvEnv, user: &str, password: &str, client: &str) -> Result<Session, ServiceError> {
        let now = now_unix();
        // Throttling keys are bounded too: a megabyte of user name costs 64 bytes here.
        let key = bounded(user, 64);
        if let Some(retry_after_s) = self.throttled(&key, client, now) {
            return Err(ServiceError::RateLimited { retry_after_s });
        }
        // A name no user can have, or a password longer than any allowed, is refused without
        // hashing (and without holding the request while it waits for a slot): no account can
        // match, and the rules are public, so answering at once reveals nothing.
        if check_user_name(user).is_err() || password.len() > 1024 {
            self.note_failure(&key, client, now);
            return Err(ServiceError::Unauthenticated("wrong user name or password".into()));
        }
        let rec = self.user(env, user)?;
        let (phc, owned) = (rec.as_ref().map(|r| r.phc.clone()), password.to_string());
        let ok = self.hashing(move || match phc {
            Some(phc) => PasswordHash::new(&phc)
                .map(|h| Argon2::default().verify_password(owned.as_bytes(), &h).is_ok())
                .unwrap_or(false),
            None => {
                // Same cost as a real check, so timing does not reveal which names exist.
                let _ = hash_password(&owned);
                false
            }
        })?;
        let Some(rec) = rec.filter(|_| ok) else {
            self.note_failure(&key, client, now);
            return Err(ServiceError::Unauthenticated("wrong user name or password".into()));
        };
        self.note_success(&key, client, now);
        let s = Session {
            token: random_hex(32),
            csrf: random_hex(16),
            principal: Principal::new(&rec.name, rec.role),
            expires_unix: now_unix() + SESSION_IDLE,
        };
        let mut sessions = lock(&self.sessions);
        let now = now_unix();
        sessions.retain(|_, s| s.expires_unix > now);
        sessions.insert(s.token.clone(), s.clone());
        Ok(s)
    }

    /// Summaries of refused sign-ins older than a minute (or all with `all`), for the audit
    /// log: (client, count, users tried).
    pub(crate) fn take_refused(&self, now: u64, all: bool) -> Vec<(String, u64, Vec<String>)> {
        let mut t = lock(&self.throttle);
        let due: Vec<String> = t
            .refused
            .iter()
            .filter(|(_, r)| all || r.first_unix + REFUSED_SUMMARY_S <= now)
            .map(|(c, _)| c.clone())
            .collect();
        due.into_iter()
            .filter_map(|c| t.refused.remove(&c).map(|r| (c, r.count, r.users.into_iter().collect())))
            .collect()
    }

    pub(crate) fn session(&self, token: &str) -> Option<Session> {
        let mut sessions = lock(&self.sessions);
        let now = now_unix();
        let s = sessions.get_mut(token)?;
        if s.expires_unix <= now {
            sessions.remove(token);
            return None;
        }
        s.expires_unix = now + SESSION_IDLE;
        Some(s.clone())
    }

    pub(crate) fn logout(&self, token: &str) {
        lock(&self.sessions).remove(token);
    }

    pub(crate) fn create_token(
        &self,
        env: &KvEnv,
        user: &str,
        name: &str,
        role: Role,
    ) -> Result<(TokenInfo, String), ServiceError> {
        if name.trim().is_empty() || name.len() > 100 {
            return Err(ServiceError::Invalid("give the token a name of 1-100 characters".into()));
        }
        let owner = self
            .user(env, user)?
            .ok_or_else(|| ServiceError::Forbidden(format!("user {user} no longer exists; sign in again")))?;
        let secret = format!("rvt_{}", random_hex(32));
        let info = TokenInfo {
            id: random_hex(8),
            name: name.into(),
            role,
            user: user.into(),
            created_unix: now_unix(),
            hash: blake3::hash(secret.as_bytes()).to_hex().to_string(),
            user_id: owner.id,
        };
        let mut wtxn = env.write()?;
        self.tokens.put(&mut wtxn, info.id.as_bytes(), &encode(&StoredToken::from(&info))?).map_err(|e| env.err(e))?;
        wtxn.commit().map_err(|e| env.err(e))?;
        Ok((info, secret))
    }

    pub(crate) fn tokens(&self, env: &KvEnv) -> Result<Vec<TokenInfo>, ServiceError> {
        let rtxn = env.read()?;
        let mut out = Vec::new();
        for item in self.tokens.iter(&rtxn).map_err(|e| env.err(e))? {
            let (_, v) = item.map_err(|e| env.err(e))?;
            let t: StoredToken = decode(v)?;
            out.push(t.into());
        }
        Ok(out)
    }

    pub(crate) fn delete_token(&self, env: &KvEnv, id: &str) -> Result<(), ServiceError> {
        let mut wtxn = env.write()?;
        if !self.tokens.delete(&mut wtxn, id.as_bytes()).map_err(|e| env.err(e))? {
            return Err(ServiceError::NotFound(format!("no API token {}", bounded(id, 64))));
        }
        wtxn.commit().map_err(|e| env.err(e))?;
        Ok(())
    }

    pub(crate) fn authenticate_token(&self, env: &KvEnv, bearer: &str) -> Option<Principal> {
        let hash = blake3::hash(bearer.as_bytes()).to_hex().to_string();
        let tokens = self.tokens(env).ok()?;
        let t = tokens.into_iter().find(|t| constant_time_eq(t.hash.as_bytes(), hash.as_bytes()))?;
        // A token acts for the user it was made for (by id: a new user of the same name is
        // someone else), never above that user's current role.
        let user = self.user(env, &t.user).ok().flatten().filter(|u| !t.user_id.is_empty() && u.id == t.user_id)?;
        let role = if user.role.allows(t.role) { t.role } else { user.role };
        Some(Principal { user: t.user, role, token: Some(t.name) })
    }

    /// Appends an entry, every field bounded; rotates the log when it is over its limit.
    pub(crate) fn audit(&self, env: &KvEnv, user: &str, action: &str, detail: &str) {
        let mut e = AuditEntry {
            id: 0,
            unix: now_unix(),
            user: bounded(user, AUDIT_FIELD_MAX),
            action: bounded(action, AUDIT_FIELD_MAX),
            detail: bounded(detail, AUDIT_DETAIL_MAX),
        };
        let Ok(mut wtxn) = env.write() else { return };
        let last = self.audit.last(&wtxn).ok().flatten().and_then(|(k, _)| k.try_into().ok()).map(u64::from_be_bytes);
        e.id = last.map_or(1, |l| l + 1);
        let Ok(v) = encode(&e) else { return };
        if self.audit.put(&mut wtxn, &e.id.to_be_bytes(), &v).is_ok() && wtxn.commit().is_ok() {
            let first = e.id.saturating_sub(self.limits.keep);
            if e.id.is_multiple_of(self.limits.rotate.clamp(1, 1000)) && first > 0 {
                if let Err(err) = self.rotate(env) {
                    eprintln!("audit log: rotation failed: {err}");
                }
            }
        }
    }

    /// Moves the oldest entries beyond the limit into a compressed archive, written and
    /// synced before they leave LMDB; keeps the newest archives.
    fn rotate(&self, env: &KvEnv) -> Result<(), ServiceError> {
        loop {
            let batch: Vec<AuditEntry> = {
                let rtxn = env.read()?;
                let n = self.audit.len(&rtxn).map_err(|e| env.err(e))?;
                if n <= self.limits.keep {
                    break;
                }
                let take = usize::try_from(self.limits.rotate.min(n - self.limits.keep).max(1)).unwrap_or(usize::MAX);
                let mut v = Vec::new();
                for item in self.audit.iter(&rtxn).map_err(|e| env.err(e))?.take(take) {
                    let (k, val) = item.map_err(|e| env.err(e))?;
                    let mut a: AuditEntry = decode(val)?;
                    a.id = k.try_into().map(u64::from_be_bytes).unwrap_or(0);
                    v.push(a);
                }
                v
            };
            let (Some(first), Some(last)) = (batch.first(), batch.last()) else { break };
            std::fs::create_dir_all(&self.archive_dir).map_err(|e| ServiceError::io(&self.archive_dir, e))?;
            let path = self.archive_dir.join(format!("audit-{:020}-{:020}.jsonl.zst", first.id, last.id));
            let tmp = path.with_extension("tmp");
            let mut lines = Vec::new();
            for a in &batch {
                lines.extend(encode(a)?);
                lines.push(b'\n');
            }
            let packed = zstd::bulk::compress(&lines, 9).map_err(|e| ServiceError::io(&tmp, e))?;
            let mut f = std::fs::File::create(&tmp).map_err(|e| ServiceError::io(&tmp, e))?;
            f.write_all(&packed).and_then(|_| f.sync_all()).map_err(|e| ServiceError::io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| ServiceError::io(&path, e))?;
            let mut wtxn = env.write()?;
            for a in &batch {
                self.audit.delete(&mut wtxn, &a.id.to_be_bytes()).map_err(|e| env.err(e))?;
            }
            wtxn.commit().map_err(|e| env.err(e))?;
        }
        let mut archives: Vec<PathBuf> = std::fs::read_dir(&self.archive_dir)
            .map_err(|e| ServiceError::io(&self.archive_dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "zst"))
            .collect();
        archives.sort();
        let excess = archives.len().saturating_sub(self.limits.archives);
        for old in &archives[..excess] {
            std::fs::remove_file(old).map_err(|e| ServiceError::io(old, e))?;
        }
        Ok(())
    }

    /// Entries newest first: at most `limit` (capped at [`AUDIT_PAGE_MAX`]), older than the
    /// entry `before` when given.
    pub(crate) fn audit_log(
        &self,
        env: &KvEnv,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<AuditEntry>, ServiceError> {
        let rtxn = env.read()?;
        let mut out = Vec::new();
        let limit = limit.min(AUDIT_PAGE_MAX);
        let end = before.unwrap_or(u64::MAX).to_be_bytes();
        let range = (std::ops::Bound::Unbounded, std::ops::Bound::Excluded(&end[..]));
        let iter = self.audit.rev_range(&rtxn, &range).map_err(|e| env.err(e))?;
        for item in iter.take(limit) {
            let (k, v) = item.map_err(|e| env.err(e))?;
            let mut a: AuditEntry = decode(v)?;
            a.id = k.try_into().map(u64::from_be_bytes).unwrap_or(0);
            out.push(a);
        }
        Ok(out)
    }
}

/// What the token table holds (the hash included).
#[derive(Serialize, Deserialize)]
struct StoredToken {
    id: String,
    name: String,
    role: Role,
    user: String,
    /// The id of the user it acts for; empty in tokens written before ids existed.
    #[serde(default)]
    user_id: String,
    created_unix: u64,
    hash: String,
}

impl From<&TokenInfo> for StoredToken {
    fn from(t: &TokenInfo) -> StoredToken {
        StoredToken {
            id: t.id.clone(),
            name: t.name.clone(),
            role: t.role,
            user: t.user.clone(),
            user_id: t.user_id.clone(),
            created_unix: t.created_unix,
            hash: t.hash.clone(),
        }
    }
}

impl From<StoredToken> for TokenInfo {
    fn from(t: StoredToken) -> TokenInfo {
        TokenInfo {
            id: t.id,
            name: t.name,
            role: t.role,
            user: t.user,
            created_unix: t.created_unix,
            hash: t.hash,
            user_id: t.user_id,
        }
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
