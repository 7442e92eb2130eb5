//! Settings: task limits, the tape library's address, retention's time zone, capacity
//! watermarks, maintenance and verify schedules, notifications and the HTTPS certificate.

use serde::Deserialize;

use crate::schedule::CalendarEvent;
use crate::sources::probe_error;
use crate::{
    config, lock, notify, tasks, Appliance, ChannelOutcome, NotificationsInfo, NotificationsInput, Principal, Role,
    ServiceError, Settings, SettingsView,
};

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

impl Appliance {
    /// An emulated library (a directory of cartridge files) lives inside the data directory:
    /// anywhere else it would let the web admin write files where the daemon may write.
    fn check_emulated_library(&self, dir: &str) -> Result<(), ServiceError> {
        let path = std::path::Path::new(dir);
        let data = std::fs::canonicalize(&self.data_dir).map_err(|e| ServiceError::io(&self.data_dir, e))?;
        let lexical_ok = path.is_absolute() && !path.components().any(|c| matches!(c, std::path::Component::ParentDir));
        // The deepest part that exists decides, so a symbolic link cannot lead outside.
        let mut existing = path;
        while !existing.exists() {
            existing = existing.parent().unwrap_or(std::path::Path::new("/"));
        }
        let real = std::fs::canonicalize(existing).map_err(|e| ServiceError::io(existing, e))?;
        if !lexical_ok || !real.starts_with(&data) || (real == data && existing == path) {
            return Err(ServiceError::Invalid(format!(
                "an emulated tape library must be a directory inside the data directory {}, e.g. emulated:{}",
                data.display(),
                data.join("tape-library").display()
            )));
        }
        Ok(())
    }

    // ---- settings and metrics ---------------------------------------------------------------------

    pub fn settings(&self, actor: &Principal) -> Result<SettingsView, ServiceError> {
        actor.require(Role::Auditor)?;
        let c = lock(&self.config).clone();
        Ok(SettingsView {
            data_dir: self.data_dir.display().to_string(),
            settings: c.settings,
            tape_changer: c.tape_changer,
            store: self.usage(actor)?,
        })
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
    pub fn put_settings(&self, actor: &Principal, input: SettingsInput) -> Result<SettingsView, ServiceError> {
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
            if let Some(dir) = spec.strip_prefix("emulated:") {
                self.check_emulated_library(dir)?;
            }
            let _one = self.tape_quick()?;
            // A failure to connect reads the same whatever the socket said (`probe_error`).
            let refuse = |what: &str, e: engine::tape::TapeError| match probe_error(spec, e.into()) {
                ServiceError::Invalid(m) => ServiceError::Invalid(m),
                e => ServiceError::Invalid(format!("tape library {spec} {what}: {e}; check the address")),
            };
            let lib = engine::tape::Library::open(spec).map_err(|e| refuse("cannot be opened", e))?;
            lib.inventory().map_err(|e| refuse("did not answer an inventory", e))?;
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
}
