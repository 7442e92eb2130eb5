//! First-run setup, sign-in, users, API tokens and the audit log.
//!
//! The setup code: while no user exists, the appliance keeps a one-time code in
//! `<data>/setup-code` (0600), made at the first open and kept across restarts until setup
//! completes; the daemon prints it on its console and log. Whoever reaches the setup page
//! must give it, so the first administrator is made by someone who can see the console or
//! read the data directory, not by whoever reaches the network port first.

use std::path::Path;

use crate::auth::{constant_time_eq, PutUser, AUDIT_PAGE_MAX};
use crate::{
    lock, now_unix, random_bytes, Appliance, AuditEntry, Principal, Role, ServiceError, Session, TokenInfo, UserInfo,
};

/// Letters of the setup code: no 0/O, 1/I/L, so it reads back from a console unambiguously.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// The setup code file's content, made on first call (16 letters, about 79 bits).
pub(crate) fn ensure_setup_code(data_dir: &Path) -> Result<String, ServiceError> {
    let path = data_dir.join("setup-code");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let code = s.trim().to_string();
        if normalize_code(&code).len() == 16 {
            return Ok(code);
        }
    }
    let raw = random_bytes::<16>();
    let letters: Vec<char> =
        raw.iter().map(|b| char::from(CODE_ALPHABET[usize::from(*b) % CODE_ALPHABET.len()])).collect();
    let code = letters.chunks(4).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join("-");
    crate::config::write_private(&path, format!("{code}\n").as_bytes())?;
    Ok(code)
}

fn normalize_code(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect()
}

impl Appliance {
    // ---- setup and sign-in ----------------------------------------------------------------

    pub fn needs_setup(&self) -> bool {
        self.auth.user_count(&self.env).map(|n| n == 0).unwrap_or(false)
    }

    /// The one-time setup code, while the appliance needs setup (for the console).
    pub fn setup_code(&self) -> Option<String> {
        lock(&self.setup_code).clone()
    }

    /// Creates the first administrator, given the setup code; refused once any user exists
    /// (checked in the same transaction that creates it).
    pub fn setup(&self, user: &str, password: &str, code: &str, client: &str) -> Result<(), ServiceError> {
        let expected = lock(&self.setup_code).clone();
        let Some(expected) = expected.filter(|_| self.needs_setup()) else {
            return Err(ServiceError::Conflict("the appliance is already set up; sign in instead".into()));
        };
        let ok = constant_time_eq(normalize_code(code).as_bytes(), normalize_code(&expected).as_bytes());
        if let Err(e) = self.auth.setup_attempt(client, ok) {
            if !matches!(e, ServiceError::RateLimited { .. }) {
                self.auth.audit(&self.env, user, "setup failed", &format!("from {client}: {e}"));
            }
            return Err(e);
        }
        self.auth.put_user(&self.env, user, password, Role::Admin, PutUser::FirstAdmin)?;
        *lock(&self.setup_code) = None;
        let path = self.data_dir.join("setup-code");
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("{}: could not remove the used setup code: {e}", path.display());
            }
        }
        self.auth.audit(&self.env, user, "setup", &format!("created the first administrator, from {client}"));
        Ok(())
    }

    /// Signs in. Each failure is audited (bounded); attempts refused by throttling are
    /// summed up per client by [`Appliance::flush_refused_sign_ins`].
    pub fn login(&self, user: &str, password: &str, client: &str) -> Result<Session, ServiceError> {
        let r = self.auth.login(&self.env, user, password, client);
        match &r {
            Ok(_) => self.auth.audit(&self.env, user, "login", &format!("from {client}")),
            Err(ServiceError::RateLimited { .. }) => {}
            Err(e) => self.auth.audit(&self.env, user, "login failed", &format!("from {client}: {e}")),
        }
        r
    }

    /// Writes one audit entry per client whose sign-ins were refused by throttling (older
    /// than a minute, or all with `all`).
    pub(crate) fn flush_refused_sign_ins(&self, all: bool) {
        for (client, count, users) in self.auth.take_refused(now_unix(), all) {
            self.auth.audit(
                &self.env,
                "-",
                "sign-ins refused",
                &format!(
                    "{count} sign-in attempt(s) from {client} refused while locked out (user names tried include {})",
                    users.join(", ")
                ),
            );
        }
    }

    /// Failed sign-ins since the appliance started.
    pub fn failed_sign_ins(&self) -> u64 {
        self.auth.failed_total()
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
        refuse_replication_user(role)?;
        let u = self.auth.put_user(&self.env, name, password, role, PutUser::Create)?;
        self.audit(actor, "add user", &format!("{name} as {role:?}"));
        Ok(u)
    }

    pub fn delete_user(&self, actor: &Principal, name: &str) -> Result<(), ServiceError> {
        actor.require(Role::Admin)?;
        if name == actor.user {
            return Err(ServiceError::Conflict("you cannot delete your own account".into()));
        }
        self.auth.delete_user(&self.env, name)?;
        self.audit(actor, "delete user", &format!("{name}, with its API tokens"));
        Ok(())
    }

    /// Changes a user's role (its sessions end); the last administrator keeps its role.
    pub fn set_user_role(&self, actor: &Principal, name: &str, role: Role) -> Result<(), ServiceError> {
        actor.require(Role::Admin)?;
        refuse_replication_user(role)?;
        self.auth.set_role(&self.env, name, role)?;
        self.audit(actor, "change role", &format!("{name} to {}", role.as_str()));
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
        if role == Role::Replication {
            engine::replicate::validate_namespace(name).map_err(|e| {
                ServiceError::Invalid(format!(
                    "a replication token's name is the namespace the sending appliance delivers into: {e}"
                ))
            })?;
        }
        let r = self.auth.create_token(&self.env, &actor.user, name, role)?;
        self.audit(actor, "create API token", &format!("{name} ({role:?})"));
        Ok(r)
    }

    pub fn delete_api_token(&self, actor: &Principal, id: &str) -> Result<(), ServiceError> {
        actor.require(Role::Admin)?;
        self.auth.delete_token(&self.env, id)?;
        self.audit(actor, "delete API token", id);
        Ok(())
    }

    /// The audit log, newest first: at most `limit` entries (1 to [`AUDIT_PAGE_MAX`]), older
    /// than entry `before` when given (pass the last id of a page to get the next).
    pub fn audit_log(
        &self,
        actor: &Principal,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<AuditEntry>, ServiceError> {
        actor.require(Role::Auditor)?;
        if limit == 0 || limit > AUDIT_PAGE_MAX {
            return Err(ServiceError::Invalid(format!("limit must be 1 to {AUDIT_PAGE_MAX}, not {limit}")));
        }
        self.auth.audit_log(&self.env, limit, before)
    }
}

/// The replication and pull roles are for tokens only: a person signs in to do more than
/// deliver or hand out points.
fn refuse_replication_user(role: Role) -> Result<(), ServiceError> {
    if matches!(role, Role::Replication | Role::Pull) {
        return Err(ServiceError::Invalid(format!(
            "the {} role is for API tokens only; create a token with it for the other appliance",
            role.as_str()
        )));
    }
    Ok(())
}
