//! First-run setup, sign-in, users, API tokens and the audit log.

use crate::{Appliance, AuditEntry, Principal, Role, ServiceError, Session, TokenInfo, UserInfo};

impl Appliance {
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
}
