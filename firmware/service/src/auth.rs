//! Users, roles, sessions, API tokens, login throttling and the audit log.
//!
//! - Passwords are stored as argon2id PHC strings; no default password exists (the first run
//!   creates the admin).
//! - Sessions live in memory only: a restart signs everyone out, and a stolen database holds
//!   no live session. A session expires after [`SESSION_IDLE`] without use.
//! - API tokens are random 32-byte secrets shown once; only their blake3 hash is stored.
//! - Failed logins lock the user name for 30 s × 2^(n-5) after the 5th failure in a row
//!   (capped at 15 min), and a client address after 20 failures, whatever the user.

use std::collections::HashMap;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use store::kv::{KvDb, KvEnv};

use crate::{now_unix, random_hex, Principal, Role, ServiceError};

/// Idle time after which a session ends.
pub const SESSION_IDLE: u64 = 8 * 3600;
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 10;
const LOCK_AFTER: u32 = 5;
const CLIENT_LOCK_AFTER: u32 = 20;
const MAX_LOCK_S: u64 = 15 * 60;

/// A stored user.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserRecord {
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
    pub unix: u64,
    pub user: String,
    pub action: String,
    pub detail: String,
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    locked_until: u64,
}

#[derive(Debug)]
pub(crate) struct Auth {
    users: KvDb,
    tokens: KvDb,
    audit: KvDb,
    sessions: Mutex<HashMap<String, Session>>,
    by_user: Mutex<HashMap<String, Failures>>,
    by_client: Mutex<HashMap<String, Failures>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    Ok(())
}

fn check_user_name(name: &str) -> Result<(), ServiceError> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
        return Err(ServiceError::Invalid(format!(
            "user name {name:?}: use 1-64 letters, digits, '-', '_', '.' or '@'"
        )));
    }
    Ok(())
}

impl Auth {
    pub(crate) fn open(users: KvDb, tokens: KvDb, audit: KvDb) -> Auth {
        Auth {
            users,
            tokens,
            audit,
            sessions: Mutex::default(),
            by_user: Mutex::default(),
            by_client: Mutex::default(),
        }
    }

    fn user(&self, env: &KvEnv, name: &str) -> Result<Option<UserRecord>, ServiceError> {
        let rtxn = env.read()?;
        match self.users.get(&rtxn, name.as_bytes()).map_err(|e| env.err(e))? {
            Some(v) => Ok(Some(serde_json::from_slice(v).map_err(|e| ServiceError::Internal(e.to_string()))?)),
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
            let u: UserRecord = serde_json::from_slice(v).map_err(|e| ServiceError::Internal(e.to_string()))?;
            out.push(UserInfo { name: u.name, role: u.role, created_unix: u.created_unix });
        }
        Ok(out)
    }

    pub(crate) fn put_user(
        &self,
        env: &KvEnv,
        name: &str,
        password: &str,
        role: Role,
        create_only: bool,
    ) -> Result<UserInfo, ServiceError> {
        check_user_name(name)?;
        check_password_rules(password)?;
        let phc = hash_password(password)?;
        let mut wtxn = env.write()?;
        let existing = self.users.get(&wtxn, name.as_bytes()).map_err(|e| env.err(e))?.is_some();
        if existing && create_only {
            return Err(ServiceError::Conflict(format!("user {name} already exists")));
        }
        let rec = UserRecord { name: name.into(), role, phc, created_unix: now_unix() };
        self.users
            .put(&mut wtxn, name.as_bytes(), &serde_json::to_vec(&rec).expect("user serialises"))
            .map_err(|e| env.err(e))?;
        wtxn.commit().map_err(|e| env.err(e))?;
        Ok(UserInfo { name: rec.name, role, created_unix: rec.created_unix })
    }

    pub(crate) fn delete_user(&self, env: &KvEnv, name: &str) -> Result<(), ServiceError> {
        let mut wtxn = env.write()?;
        if !self.users.delete(&mut wtxn, name.as_bytes()).map_err(|e| env.err(e))? {
            return Err(ServiceError::NotFound(format!("no user {name}")));
        }
        wtxn.commit().map_err(|e| env.err(e))?;
        lock(&self.sessions).retain(|_, s| s.principal.user != name);
        Ok(())
    }

    fn throttled(&self, user: &str, client: &str) -> Option<u64> {
        let now = now_unix();
        let u = lock(&self.by_user).get(user).map(|f| f.locked_until).unwrap_or(0);
        let c = lock(&self.by_client).get(client).map(|f| f.locked_until).unwrap_or(0);
        let until = u.max(c);
        (until > now).then(|| until - now)
    }

    fn note_failure(&self, user: &str, client: &str) {
        let now = now_unix();
        let mut by_user = lock(&self.by_user);
        let f = by_user.entry(user.to_string()).or_default();
        f.count += 1;
        if f.count >= LOCK_AFTER {
            let secs = (30u64 << (f.count - LOCK_AFTER).min(10)).min(MAX_LOCK_S);
            f.locked_until = now + secs;
        }
        let mut by_client = lock(&self.by_client);
        let c = by_client.entry(client.to_string()).or_default();
        c.count += 1;
        if c.count >= CLIENT_LOCK_AFTER {
            c.locked_until = now + MAX_LOCK_S;
        }
    }

    pub(crate) fn login(&self, env: &KvEnv, user: &str, password: &str, client: &str) -> Result<Session, ServiceError> {
        if let Some(retry_after_s) = self.throttled(user, client) {
            return Err(ServiceError::RateLimited { retry_after_s });
        }
        let rec = self.user(env, user)?;
        let ok = match &rec {
            Some(r) => PasswordHash::new(&r.phc)
                .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
                .unwrap_or(false),
            None => {
                // Same cost as a real check, so timing does not reveal which names exist.
                let _ = hash_password(password);
                false
            }
        };
        let Some(rec) = rec.filter(|_| ok) else {
            self.note_failure(user, client);
            return Err(ServiceError::Unauthenticated("wrong user name or password".into()));
        };
        lock(&self.by_user).remove(user);
        if let Some(c) = lock(&self.by_client).get_mut(client) {
            c.count = c.count.saturating_sub(1);
        }
        let s = Session {
            token: random_hex(32),
            csrf: random_hex(16),
            principal: Principal { user: rec.name, role: rec.role },
            expires_unix: now_unix() + SESSION_IDLE,
        };
        let mut sessions = lock(&self.sessions);
        let now = now_unix();
        sessions.retain(|_, s| s.expires_unix > now);
        sessions.insert(s.token.clone(), s.clone());
        Ok(s)
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
        let secret = format!("rvt_{}", random_hex(32));
        let info = TokenInfo {
            id: random_hex(8),
            name: name.into(),
            role,
            user: user.into(),
            created_unix: now_unix(),
            hash: blake3::hash(secret.as_bytes()).to_hex().to_string(),
        };
        let mut wtxn = env.write()?;
        self.tokens
            .put(&mut wtxn, info.id.as_bytes(), &serde_json::to_vec(&StoredToken::from(&info)).expect("serialises"))
            .map_err(|e| env.err(e))?;
        wtxn.commit().map_err(|e| env.err(e))?;
        Ok((info, secret))
    }

    pub(crate) fn tokens(&self, env: &KvEnv) -> Result<Vec<TokenInfo>, ServiceError> {
        let rtxn = env.read()?;
        let mut out = Vec::new();
        for item in self.tokens.iter(&rtxn).map_err(|e| env.err(e))? {
            let (_, v) = item.map_err(|e| env.err(e))?;
            let t: StoredToken = serde_json::from_slice(v).map_err(|e| ServiceError::Internal(e.to_string()))?;
            out.push(t.into());
        }
        Ok(out)
    }

    pub(crate) fn delete_token(&self, env: &KvEnv, id: &str) -> Result<(), ServiceError> {
        let mut wtxn = env.write()?;
        if !self.tokens.delete(&mut wtxn, id.as_bytes()).map_err(|e| env.err(e))? {
            return Err(ServiceError::NotFound(format!("no API token {id}")));
        }
        wtxn.commit().map_err(|e| env.err(e))?;
        Ok(())
    }

    pub(crate) fn authenticate_token(&self, env: &KvEnv, bearer: &str) -> Option<Principal> {
        let hash = blake3::hash(bearer.as_bytes()).to_hex().to_string();
        let tokens = self.tokens(env).ok()?;
        let t = tokens.into_iter().find(|t| constant_time_eq(t.hash.as_bytes(), hash.as_bytes()))?;
        // A token acts for its user, never above the user's current role.
        let user_role = self.user(env, &t.user).ok().flatten()?.role;
        let role = if user_role.allows(t.role) { t.role } else { user_role };
        Some(Principal { user: format!("{} (token {})", t.user, t.name), role })
    }

    pub(crate) fn audit(&self, env: &KvEnv, user: &str, action: &str, detail: &str) {
        let e = AuditEntry { unix: now_unix(), user: user.into(), action: action.into(), detail: detail.into() };
        let Ok(mut wtxn) = env.write() else { return };
        let key = {
            let last =
                self.audit.last(&wtxn).ok().flatten().and_then(|(k, _)| k.try_into().ok()).map(u64::from_be_bytes);
            last.map(|l| l + 1).unwrap_or(1).to_be_bytes()
        };
        if self.audit.put(&mut wtxn, &key, &serde_json::to_vec(&e).expect("serialises")).is_ok() {
            let _ = wtxn.commit();
        }
    }

    pub(crate) fn audit_log(&self, env: &KvEnv, limit: usize) -> Result<Vec<AuditEntry>, ServiceError> {
        let rtxn = env.read()?;
        let mut out = Vec::new();
        for item in self.audit.rev_iter(&rtxn).map_err(|e| env.err(e))?.take(limit) {
            let (_, v) = item.map_err(|e| env.err(e))?;
            out.push(serde_json::from_slice(v).map_err(|e| ServiceError::Internal(e.to_string()))?);
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
            created_unix: t.created_unix,
            hash: t.hash.clone(),
        }
    }
}

impl From<StoredToken> for TokenInfo {
    fn from(t: StoredToken) -> TokenInfo {
        TokenInfo { id: t.id, name: t.name, role: t.role, user: t.user, created_unix: t.created_unix, hash: t.hash }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
