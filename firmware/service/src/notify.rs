//! Notifications: a webhook (HTTP POST of a JSON document) and e-mail over SMTP, sent when a
//! task fails, when verify finds damage, when store capacity crosses a watermark, and on
//! request from the settings page (a test).
//!
//! Invariants:
//! - Delivery never blocks a task: [`Notifier::notify`] only puts the event in a bounded
//!   in-memory queue; one background thread (std, blocking sockets, no async runtime) delivers
//!   it to every configured channel.
//! - The queue holds at most [`QUEUE_CAPACITY`] events; when it is full the oldest is dropped
//!   and the audit log says so.
//! - Every delivery attempt has a deadline ([`ATTEMPT_TIMEOUT`]). Transient failures
//!   (connection refused or reset, timeouts, SMTP 4xx, HTTP 5xx/429) are retried a few times
//!   with growing pauses; permanent ones (SMTP 5xx, certificate problems, protocol errors,
//!   bad configuration) are not. The outcome of every delivery goes to the audit log as
//!   `notification sent` or `notification failed` with the reason and what to do.
//! - Secrets (the webhook's shared secret, the SMTP password) are sealed in `config.json`,
//!   never returned by the API, never in `Debug` output, errors, the audit log or task logs.
//!   Credentials are only sent over TLS: with `tls: "none"` the configuration refuses them,
//!   and a server that does not offer STARTTLS gets nothing when STARTTLS is required.
//! - Replies of servers are untrusted: line lengths and the number of reply lines are
//!   bounded, so a hostile server gives a protocol error, never unbounded memory or a panic.
//!
//! `net.rs` holds the deadline-bound streams and TLS, `webhook.rs` the HTTP client, `smtp.rs`
//! the SMTP client (RFC 5321, STARTTLS RFC 3207, AUTH PLAIN/LOGIN RFC 4954).

mod net;
mod smtp;
mod webhook;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Sealer;
use crate::{ServiceError, TaskInfo, TaskKind, TaskState};

/// Events waiting for delivery at most; beyond, the oldest is dropped (with an audit note).
pub const QUEUE_CAPACITY: usize = 64;
/// Deadline of one delivery attempt to one channel (connect, TLS, whole exchange).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pauses between attempts after transient failures: 4 attempts in all.
const RETRY_DELAYS: [Duration; 3] = [Duration::from_secs(5), Duration::from_secs(30), Duration::from_secs(120)];
/// Version of the webhook's JSON document ([`WebhookPayload::version`]).
pub const WEBHOOK_VERSION: u32 = 1;
/// User name of the notifier's audit entries.
pub const AUDIT_USER: &str = "notifier";

// ---- events -----------------------------------------------------------------------------------

/// Why a task counts as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Its work ended with an error.
    Failed,
    /// The appliance stopped while it ran (found at the next start).
    Interrupted,
}

/// Which way a capacity watermark was crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Crossing {
    /// Usage rose above the high watermark.
    Above,
    /// Usage fell back below the low watermark.
    BelowLow,
}

/// Something to tell the operator about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A task (a job's backup or a manual task) ended failed; cancelled tasks send nothing.
    JobFailed {
        /// The job's name when a job started the task.
        job: Option<String>,
        /// The task's subject: the source of a backup, the restore point of a restore...
        source: String,
        task_id: u64,
        /// `backup`, `restore`, `verify`, `destage`, `tape-restore`, `tape-verify`...
        task_kind: TaskKind,
        error_kind: FailureKind,
        message: String,
    },
    /// Store usage crossed a watermark.
    CapacityWatermark { used_pct: u8, high_pct: u8, crossed: Crossing },
    /// A verify task found damaged data.
    VerifyDamage {
        task_id: u64,
        /// The damaged restore points (`name@id`).
        damaged_points: Vec<String>,
        damaged_records: u64,
    },
    /// Sent from the settings page to check the channels.
    Test,
}

impl Event {
    /// A stable name of the event's kind (`job_failed`, `capacity_watermark`,
    /// `verify_damage`, `test`), also sent as the `X-Rackvault-Event` header.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::JobFailed { .. } => "job_failed",
            Event::CapacityWatermark { .. } => "capacity_watermark",
            Event::VerifyDamage { .. } => "verify_damage",
            Event::Test => "test",
        }
    }

    /// The e-mail subject (one line).
    pub fn subject(&self, appliance: &str) -> String {
        let what = match self {
            Event::JobFailed { job, source, task_id, task_kind, error_kind, .. } => {
                let verb = match error_kind {
                    FailureKind::Failed => "failed",
                    FailureKind::Interrupted => "was interrupted",
                };
                match job {
                    Some(j) => format!("job {j}: {task_kind} of {source} {verb} (task {task_id})"),
                    None => format!("{task_kind} of {source} {verb} (task {task_id})"),
                }
            }
            Event::CapacityWatermark { used_pct, high_pct, crossed: Crossing::Above } => {
                format!("store {used_pct}% full, above the {high_pct}% watermark")
            }
            Event::CapacityWatermark { used_pct, crossed: Crossing::BelowLow, .. } => {
                format!("store back to {used_pct}% full, below the low watermark")
            }
            Event::VerifyDamage { task_id, damaged_points, damaged_records } => format!(
                "verify found damage: {} restore point(s), {damaged_records} record(s) (task {task_id})",
                damaged_points.len()
            ),
            Event::Test => "test notification".to_string(),
        };
        one_line(&format!("[rackvault {appliance}] {what}"))
    }

    /// The plain-text body (lines separated by `\n`).
    pub fn body(&self, appliance: &str) -> String {
        let mut b = String::new();
        match self {
            Event::JobFailed { job, source, task_id, task_kind, error_kind, message } => {
                match error_kind {
                    FailureKind::Failed => b.push_str(&format!("The {task_kind} of {source} failed.\n\n")),
                    FailureKind::Interrupted => b.push_str(&format!(
                        "The {task_kind} of {source} was interrupted: the appliance stopped while it ran.\n\n"
                    )),
                }
                if let Some(j) = job {
                    b.push_str(&format!("Job:   {j}\n"));
                }
                b.push_str(&format!("Task:  {task_id} ({task_kind})\nError: {message}\n\n"));
                b.push_str(&format!(
                    "What to do: read the task's log in the web console (Tasks, task {task_id}), fix the cause \
                     and run it again{}.\n",
                    if job.is_some() { " (or wait for the job's next run)" } else { "" }
                ));
            }
            Event::CapacityWatermark { used_pct, high_pct, crossed } => match crossed {
                Crossing::Above => b.push_str(&format!(
                    "The staging store is {used_pct}% full, above the high watermark of {high_pct}%.\n\n\
                     What to do: shorten retention or prune old restore points, destage to tape and free space, \
                     or add capacity before backups start failing.\n"
                )),
                Crossing::BelowLow => b.push_str(&format!(
                    "The staging store is {used_pct}% full again, below the low watermark (the high watermark \
                     is {high_pct}%). Nothing to do.\n"
                )),
            },
            Event::VerifyDamage { task_id, damaged_points, damaged_records } => {
                b.push_str(&format!(
                    "Verify task {task_id} found damage: {} restore point(s) and {damaged_records} stored \
                     record(s) are damaged.\n\n",
                    damaged_points.len()
                ));
                for p in damaged_points.iter().take(50) {
                    b.push_str(&format!("  {p}\n"));
                }
                if damaged_points.len() > 50 {
                    b.push_str(&format!("  ... and {} more\n", damaged_points.len() - 50));
                }
                b.push_str(
                    "\nWhat to do: read the task's log for the damaged ranges; restore from a copy on tape if \
                     there is one, check the store's disks, and run a new backup of the affected sources.\n",
                );
            }
            Event::Test => b.push_str(
                "This is a test notification sent from the settings page of the appliance. It arrived, so \
                 this channel works.\n",
            ),
        }
        b.push_str(&format!("\n-- \nrackvault appliance {appliance}\n"));
        b
    }
}

/// Removes control characters (a subject or header value stays one line).
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// The webhook's JSON document, version [`WEBHOOK_VERSION`]. Fields are only ever added.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookPayload<'a> {
    pub version: u32,
    /// The event's kind (as [`Event::kind`]).
    pub event: &'static str,
    /// The appliance's host name.
    pub appliance: &'a str,
    pub unix: u64,
    pub subject: String,
    pub text: String,
    /// The event's fields, with `kind` repeated.
    pub details: &'a Event,
}

// ---- configuration (config.json) --------------------------------------------------------------

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which the server must offer (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS at all (a trusted relay on the local network; no credentials allowed).
    None,
}

impl SmtpTls {
    fn default_port(self) -> u16 {
        match self {
            SmtpTls::Starttls => 587,
            SmtpTls::Implicit => 465,
            SmtpTls::None => 25,
        }
    }
}

/// The webhook as stored; `secret` is sealed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookConfig {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| ".."))
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| ".."))
            .finish()
    }
}

/// The SMTP server as stored; `password` is sealed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| ".."))
            .field("from", &self.from)
            .field("to", &self.to)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| ".."))
            .finish()
    }
}

/// Which events are sent (the test is always sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSelection {
    #[serde(default = "yes")]
    pub job_failed: bool,
    #[serde(default = "yes")]
    pub capacity: bool,
    #[serde(default = "yes")]
    pub verify_damage: bool,
}

fn yes() -> bool {
    true
}

impl Default for EventSelection {
    fn default() -> EventSelection {
        EventSelection { job_failed: true, capacity: true, verify_damage: true }
    }
}

impl EventSelection {
    fn wants(&self, e: &Event) -> bool {
        match e {
            Event::JobFailed { .. } => self.job_failed,
            Event::CapacityWatermark { .. } => self.capacity,
            Event::VerifyDamage { .. } => self.verify_damage,
            Event::Test => true,
        }
    }
}

/// The `notifications` object of `config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpConfig>,
    #[serde(default)]
    pub events: EventSelection,
}

impl NotificationConfig {
    /// Nothing configured: the key is left out of `config.json`.
    pub fn is_unset(&self) -> bool {
        *self == NotificationConfig::default()
    }
}

// ---- the API's view ---------------------------------------------------------------------------

/// The notification settings as the API shows them (never a secret).
#[derive(Debug, Clone, Serialize)]
pub struct NotificationsInfo {
    pub webhook: Option<WebhookInfo>,
    pub smtp: Option<SmtpInfo>,
    pub job_failed: bool,
    pub capacity: bool,
    pub verify_damage: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct WebhookInfo {
    pub url: String,
    pub has_secret: bool,
    pub ca_pem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SmtpInfo {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub user: Option<String>,
    pub has_password: bool,
    pub from: String,
    pub to: Vec<String>,
    pub ca_pem: Option<String>,
}

/// The notification settings as the API receives them. A secret left out (or null) keeps the
/// stored one; an empty string removes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsInput {
    #[serde(default)]
    pub webhook: Option<WebhookInput>,
    #[serde(default)]
    pub smtp: Option<SmtpInput>,
    #[serde(default = "yes")]
    pub job_failed: bool,
    #[serde(default = "yes")]
    pub capacity: bool,
    #[serde(default = "yes")]
    pub verify_damage: bool,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    pub url: String,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for WebhookInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookInput")
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| ".."))
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpInput {
    pub host: String,
    /// Absent: 587 for STARTTLS, 465 for implicit TLS, 25 without TLS.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    #[serde(default)]
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for SmtpInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpInput")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| ".."))
            .field("from", &self.from)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

/// What one channel answered to a test.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelOutcome {
    /// `webhook` or `email`.
    pub channel: &'static str,
    /// Where it went (a URL's origin, or `host:port`): no secret.
    pub target: String,
    pub ok: bool,
    /// What went wrong and what to do; null when it worked.
    pub error: Option<String>,
    /// `transient` (retried for real events) or `permanent`; null when it worked.
    pub error_kind: Option<ErrorKind>,
}

/// The API's view of the stored configuration.
pub(crate) fn info(c: &NotificationConfig) -> NotificationsInfo {
    NotificationsInfo {
        webhook: c.webhook.as_ref().map(|w| WebhookInfo {
            url: w.url.clone(),
            has_secret: w.secret.is_some(),
            ca_pem: w.ca_pem.clone(),
        }),
        smtp: c.smtp.as_ref().map(|s| SmtpInfo {
            host: s.host.clone(),
            port: s.port,
            tls: s.tls,
            user: s.user.clone(),
            has_password: s.password.is_some(),
            from: s.from.clone(),
            to: s.to.clone(),
            ca_pem: s.ca_pem.clone(),
        }),
        job_failed: c.events.job_failed,
        capacity: c.events.capacity,
        verify_damage: c.events.verify_damage,
    }
}

/// Checks `input` and merges it with the stored `old` (secrets left out keep the old ones),
/// sealing new secrets.
pub(crate) fn apply_input(
    old: &NotificationConfig,
    input: NotificationsInput,
    sealer: &Sealer,
) -> Result<NotificationConfig, ServiceError> {
    let invalid = |m: String| ServiceError::Invalid(m);
    let seal = |new: Option<String>, old: Option<&String>| match new {
        None => old.cloned(),
        Some(s) if s.is_empty() => None,
        Some(s) => Some(sealer.seal(&s)),
    };
    let webhook = match input.webhook {
        None => None,
        Some(w) => {
            let url = w.url.trim().to_string();
            webhook::Url::parse(&url).map_err(|e| invalid(format!("webhook url: {e}")))?;
            let ca_pem = check_ca_pem(w.ca_pem, "webhook")?;
            if w.secret.as_ref().is_some_and(|s| s.len() > 1024) {
                return Err(invalid("webhook secret: at most 1024 bytes".into()));
            }
            let secret = seal(w.secret, old.webhook.as_ref().and_then(|o| o.secret.as_ref()));
            Some(WebhookConfig { url, secret, ca_pem })
        }
    };
    let smtp = match input.smtp {
        None => None,
        Some(s) => {
            let host = s.host.trim().to_string();
            if host.is_empty()
                || host.len() > 253
                || !host.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c))
            {
                return Err(invalid(format!(
                    "smtp host {host:?}: give the mail server's host name or IP address (no scheme, no port)"
                )));
            }
            let port = s.port.unwrap_or(s.tls.default_port());
            if port == 0 {
                return Err(invalid("smtp port must be between 1 and 65535".into()));
            }
            check_address(&s.from, "smtp from")?;
            if s.to.is_empty() || s.to.len() > 20 {
                return Err(invalid("smtp to: give 1 to 20 recipient addresses".into()));
            }
            for t in &s.to {
                check_address(t, "smtp to")?;
            }
            let user = s.user.map(|u| u.trim().to_string()).filter(|u| !u.is_empty());
            if let Some(u) = &user {
                if u.len() > 256 || u.chars().any(char::is_control) {
                    return Err(invalid("smtp user: at most 256 characters, no control characters".into()));
                }
            }
            if s.password.as_ref().is_some_and(|p| p.len() > 1024) {
                return Err(invalid("smtp password: at most 1024 bytes".into()));
            }
            let old_password = old.smtp.as_ref().filter(|o| o.user.is_some()).and_then(|o| o.password.as_ref());
            let password = if user.is_some() { seal(s.password, old_password) } else { None };
            if user.is_some() && password.is_none() {
                return Err(invalid("smtp password: a user needs a password (or leave the user empty)".into()));
            }
            if user.is_some() && s.tls == SmtpTls::None {
                return Err(invalid(
                    "smtp: credentials are never sent without TLS; use tls \"starttls\" or \"implicit\", or remove \
                     the user for a relay that needs no sign-in"
                        .into(),
                ));
            }
            let ca_pem = check_ca_pem(s.ca_pem, "smtp")?;
            Some(SmtpConfig {
                host,
                port,
                tls: s.tls,
                user,
                password,
                from: s.from.trim().to_string(),
                to: s.to.iter().map(|t| t.trim().to_string()).collect(),
                ca_pem,
            })
        }
    };
    Ok(NotificationConfig {
        webhook,
        smtp,
        events: EventSelection {
            job_failed: input.job_failed,
            capacity: input.capacity,
            verify_damage: input.verify_damage,
        },
    })
}

/// A mailbox as SMTP takes it in `MAIL FROM:<…>`/`RCPT TO:<…>`: `local@domain`, printable
/// ASCII, no spaces or angle brackets.
fn check_address(a: &str, what: &str) -> Result<(), ServiceError> {
    let a = a.trim();
    let ok = a.len() <= 254
        && a.chars().all(|c| c.is_ascii_graphic() && !"<>()[],;:\\\"".contains(c))
        && a.split_once('@').is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::Invalid(format!("{what} {a:?}: give a plain address such as alerts@example.com")))
    }
}

fn check_ca_pem(pem: Option<String>, what: &str) -> Result<Option<String>, ServiceError> {
    let Some(pem) = pem.map(|p| p.trim().to_string()).filter(|p| !p.is_empty()) else { return Ok(None) };
    if pem.len() > 64 * 1024 {
        return Err(ServiceError::Invalid(format!("{what} ca_pem: at most 64 KiB")));
    }
    net::parse_ca_pem(&pem).map_err(|e| ServiceError::Invalid(format!("{what} ca_pem: {e}")))?;
    Ok(Some(pem))
}

// ---- errors -----------------------------------------------------------------------------------

/// Whether a failed delivery is worth another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// May work later (network trouble, a busy server): retried.
    Transient,
    /// Will not work until someone changes something: not retried.
    Permanent,
}

/// Why a delivery failed; messages say what happened and what to do.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("{0}")]
    Config(String),
    #[error("cannot connect to {target}: {source}; check the address and that the server is running")]
    Connect { target: String, source: std::io::Error },
    #[error("{target} did not answer within {} s; check that the server is up and reachable", ATTEMPT_TIMEOUT.as_secs())]
    Timeout { target: String },
    #[error("the connection to {target} failed while {during}: {source}; it is retried")]
    Io { target: String, during: &'static str, source: std::io::Error },
    #[error("TLS with {target} failed: {reason}")]
    Tls { target: String, reason: String },
    #[error("{target} answered HTTP {status} {reason}; {hint}")]
    Http { target: String, status: u16, reason: String, hint: &'static str },
    #[error("{target} refused {stage}: {code} {text}; {hint}")]
    Smtp { target: String, stage: &'static str, code: u16, text: String, hint: &'static str },
    #[error(
        "{target} does not offer STARTTLS; nothing was sent (credentials and mail never go in the clear). Enable \
         TLS on the server, use tls \"implicit\" on port 465, or tls \"none\" for a trusted relay without a user"
    )]
    NoStartTls { target: String },
    #[error("{target} broke the protocol: {reason}; check that this is the right host and port")]
    Protocol { target: String, reason: String },
}

impl NotifyError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            NotifyError::Connect { .. } | NotifyError::Timeout { .. } | NotifyError::Io { .. } => ErrorKind::Transient,
            NotifyError::Http { status: 408 | 425 | 429 | 500 | 502 | 503 | 504, .. } => ErrorKind::Transient,
            NotifyError::Smtp { code, .. } if (400..500).contains(code) => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        }
    }
}

// ---- channels ---------------------------------------------------------------------------------

/// A secret opened from `config.json`, in memory only; never printed.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(s: String) -> Secret {
        Secret(s)
    }
    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A webhook ready to send to.
#[derive(Debug, Clone)]
pub(crate) struct WebhookTarget {
    pub(crate) url: String,
    pub(crate) secret: Option<Secret>,
    pub(crate) ca_pem: Option<String>,
}

/// An SMTP server ready to send to.
#[derive(Debug, Clone)]
pub(crate) struct SmtpTarget {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: SmtpTls,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<Secret>,
    pub(crate) from: String,
    pub(crate) to: Vec<String>,
    pub(crate) ca_pem: Option<String>,
}

/// One configured channel.
#[derive(Debug, Clone)]
pub(crate) enum Channel {
    Webhook(WebhookTarget),
    Email(SmtpTarget),
    /// Configured but unusable (a sealed secret that cannot be opened).
    Broken {
        channel: &'static str,
        target: String,
        reason: String,
    },
}

impl Channel {
    fn name(&self) -> &'static str {
        match self {
            Channel::Webhook(_) => "webhook",
            Channel::Email(_) => "email",
            Channel::Broken { channel, .. } => channel,
        }
    }

    /// Where it goes, without secrets: a URL's origin, `host:port` of a mail server.
    fn target(&self) -> String {
        match self {
            Channel::Webhook(w) => webhook::Url::parse(&w.url).map(|u| u.origin()).unwrap_or_else(|_| "?".into()),
            Channel::Email(s) => format!("{}:{}", s.host, s.port),
            Channel::Broken { target, .. } => target.clone(),
        }
    }

    fn deliver(&self, event: &Event, appliance: &str, timeout: Duration) -> Result<(), NotifyError> {
        let deadline = Instant::now() + timeout;
        match self {
            Channel::Webhook(w) => webhook::post(w, event, appliance, deadline),
            Channel::Email(s) => smtp::send(s, &smtp::Message::new(s, event, appliance), deadline),
            Channel::Broken { reason, .. } => Err(NotifyError::Config(reason.clone())),
        }
    }
}

/// A webhook URL's `scheme://host:port` (no path or query: they may hold tokens).
pub(crate) fn origin(url: &str) -> Option<String> {
    webhook::Url::parse(url).ok().map(|u| u.origin())
}

/// Opens the sealed secrets of the configuration into channels.
pub(crate) fn resolve(c: &NotificationConfig, sealer: &Sealer) -> Vec<Channel> {
    let mut out = Vec::new();
    let open = |sealed: &Option<String>, what: &str| -> Result<Option<Secret>, String> {
        match sealed {
            None => Ok(None),
            Some(s) => sealer
                .open_sealed(s)
                .map(|p| Some(Secret::new(p)))
                .map_err(|_| format!("the {what} in config.json cannot be opened with this appliance's key; enter it again in the settings")),
        }
    };
    if let Some(w) = &c.webhook {
        let target = webhook::Url::parse(&w.url).map(|u| u.origin()).unwrap_or_else(|_| "?".into());
        match open(&w.secret, "webhook secret") {
            Ok(secret) => {
                out.push(Channel::Webhook(WebhookTarget { url: w.url.clone(), secret, ca_pem: w.ca_pem.clone() }))
            }
            Err(reason) => out.push(Channel::Broken { channel: "webhook", target, reason }),
        }
    }
    if let Some(s) = &c.smtp {
        match open(&s.password, "SMTP password") {
            Ok(password) => out.push(Channel::Email(SmtpTarget {
                host: s.host.clone(),
                port: s.port,
                tls: s.tls,
                user: s.user.clone(),
                password,
                from: s.from.clone(),
                to: s.to.clone(),
                ca_pem: s.ca_pem.clone(),
            })),
            Err(reason) => {
                out.push(Channel::Broken { channel: "email", target: format!("{}:{}", s.host, s.port), reason })
            }
        }
    }
    out
}

// ---- the notifier -----------------------------------------------------------------------------

/// Writes one audit entry: (action, detail).
pub(crate) type AuditSink = Box<dyn Fn(&str, &str) + Send + Sync>;

/// Delivery tuning; tests shorten the pauses.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) retry_delays: Vec<Duration>,
    pub(crate) attempt_timeout: Duration,
    pub(crate) queue_capacity: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            retry_delays: RETRY_DELAYS.to_vec(),
            attempt_timeout: ATTEMPT_TIMEOUT,
            queue_capacity: QUEUE_CAPACITY,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Event>,
    stop: bool,
    worker: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    setup: Mutex<(Arc<Vec<Channel>>, EventSelection)>,
    options: Mutex<Options>,
    /// Tasks that sent their own event (a verify's damage): their failure sends no JobFailed.
    reported: Mutex<HashSet<u64>>,
    audit: AuditSink,
    appliance: String,
}

/// Delivers events to the configured channels on a background thread.
pub struct Notifier {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let channels = lock(&self.shared.setup).0.iter().map(Channel::name).collect::<Vec<_>>();
        f.debug_struct("Notifier").field("channels", &channels).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The appliance's host name, for subjects, EHLO and the webhook document.
pub(crate) fn host_name() -> String {
    let n = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let n: String = n.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.').collect();
    if n.is_empty() {
        "rackvault".into()
    } else {
        n
    }
}

impl Notifier {
    /// A notifier with no channel yet; `audit` records the outcome of each delivery.
    pub(crate) fn new(appliance: String, audit: AuditSink) -> Notifier {
        Notifier {
            shared: Arc::new(Shared {
                state: Mutex::default(),
                wake: Condvar::new(),
                setup: Mutex::new((Arc::new(Vec::new()), EventSelection::default())),
                options: Mutex::new(Options::default()),
                reported: Mutex::default(),
                audit,
                appliance,
            }),
        }
    }

    /// Replaces the channels and the event selection (events already queued use the new ones).
    pub(crate) fn configure(&self, channels: Vec<Channel>, events: EventSelection) {
        *lock(&self.shared.setup) = (Arc::new(channels), events);
    }

    #[cfg(test)]
    pub(crate) fn set_options(&self, o: Options) {
        *lock(&self.shared.options) = o;
    }

    /// Queues `event` for every configured channel and returns at once. Without a channel,
    /// or when the settings leave this kind of event out, nothing is queued.
    pub fn notify(&self, event: Event) {
        if let Event::VerifyDamage { task_id, .. } = &event {
            let mut r = lock(&self.shared.reported);
            if r.len() > 1000 {
                r.clear();
            }
            r.insert(*task_id);
        }
        {
            let setup = lock(&self.shared.setup);
            if setup.0.is_empty() || !setup.1.wants(&event) {
                return;
            }
        }
        let cap = lock(&self.shared.options).queue_capacity.max(1);
        let mut dropped = None;
        {
            let mut st = lock(&self.shared.state);
            if st.queue.len() >= cap {
                dropped = st.queue.pop_front();
            }
            st.queue.push_back(event);
            if !st.worker {
                let shared = self.shared.clone();
                match std::thread::Builder::new().name("notifier".into()).spawn(move || worker(shared)) {
                    Ok(_) => st.worker = true,
                    Err(e) => {
                        st.queue.clear();
                        drop(st);
                        (self.shared.audit)(
                            "notification failed",
                            &format!("cannot start the notifier thread ({e}); the appliance is short of resources, restart it"),
                        );
                        return;
                    }
                }
            }
        }
        self.shared.wake.notify_all();
        if let Some(old) = dropped {
            (self.shared.audit)(
                "notification dropped",
                &format!(
                    "the notification queue was full ({cap} waiting), so the oldest was dropped: {}. The channels \
                     answer slowly or not at all: see the notification entries before this one",
                    old.subject(&self.shared.appliance)
                ),
            );
        }
    }

    /// Called when a task ends: a failed or interrupted task sends JobFailed, unless it sent
    /// its own event (verify damage). Cancelled and successful tasks send nothing.
    pub(crate) fn task_ended(&self, t: &TaskInfo, job: Option<String>) {
        let error_kind = match t.state {
            TaskState::Failed => FailureKind::Failed,
            TaskState::Interrupted => FailureKind::Interrupted,
            _ => {
                lock(&self.shared.reported).remove(&t.id);
                return;
            }
        };
        if lock(&self.shared.reported).remove(&t.id) {
            return;
        }
        self.notify(Event::JobFailed {
            job,
            source: t.subject.clone(),
            task_id: t.id,
            task_kind: t.kind,
            error_kind,
            message: t.error.clone().unwrap_or_else(|| "no error message was recorded".into()),
        });
    }

    /// Sends a test to every channel now, once each (no retries), and says how each went.
    pub(crate) fn test_now(&self) -> Vec<ChannelOutcome> {
        let channels = lock(&self.shared.setup).0.clone();
        let timeout = lock(&self.shared.options).attempt_timeout;
        channels
            .iter()
            .map(|c| {
                let r = c.deliver(&Event::Test, &self.shared.appliance, timeout);
                record(&self.shared, c, &Event::Test, &r, 1);
                ChannelOutcome {
                    channel: c.name(),
                    target: c.target(),
                    ok: r.is_ok(),
                    error_kind: r.as_ref().err().map(NotifyError::kind),
                    error: r.err().map(|e| e.to_string()),
                }
            })
            .collect()
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_all();
    }
}

/// Writes the outcome of one delivery to the audit log.
fn record(shared: &Shared, c: &Channel, event: &Event, r: &Result<(), NotifyError>, attempts: usize) {
    let subject = event.subject(&shared.appliance);
    let tries = if attempts > 1 { format!(" after {attempts} attempts") } else { String::new() };
    match r {
        Ok(()) => (shared.audit)("notification sent", &format!("{} to {}{tries}: {subject}", c.name(), c.target())),
        Err(e) => (shared.audit)(
            "notification failed",
            &format!(
                "notification to {} {} failed{tries}: {e} ({} error); not delivered: {subject}",
                c.name(),
                c.target(),
                match e.kind() {
                    ErrorKind::Transient => "transient",
                    ErrorKind::Permanent => "permanent",
                }
            ),
        ),
    }
}

/// The background thread: delivers queued events until the notifier is dropped.
fn worker(shared: Arc<Shared>) {
    loop {
        let event = {
            let mut st = lock(&shared.state);
            loop {
                if st.stop {
                    return;
                }
                if let Some(e) = st.queue.pop_front() {
                    break e;
                }
                st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        let channels = lock(&shared.setup).0.clone();
        let opts = lock(&shared.options).clone();
        for c in channels.iter() {
            let mut attempts = 0;
            let r = loop {
                attempts += 1;
                let r = c.deliver(&event, &shared.appliance, opts.attempt_timeout);
                match &r {
                    Err(e) if e.kind() == ErrorKind::Transient && attempts <= opts.retry_delays.len() => {
                        if !pause(&shared, opts.retry_delays[attempts - 1]) {
                            return;
                        }
                    }
                    _ => break r,
                }
            };
            record(&shared, c, &event, &r, attempts);
        }
    }
}

/// Waits `d` unless the notifier stops first; false when it stopped.
fn pause(shared: &Shared, d: Duration) -> bool {
    let end = Instant::now() + d;
    let mut st = lock(&shared.state);
    loop {
        if st.stop {
            return false;
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        st = shared.wake.wait_timeout(st, end - now).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
    }
}

// ---- small encodings --------------------------------------------------------------------------

/// Standard base64 with padding (RFC 4648).
pub(crate) fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { A[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { A[n as usize & 63] as char } else { '=' });
    }
    out
}

/// An RFC 5322 date (`Thu, 01 Jan 1970 00:00:00 +0000`) of a Unix time, in UTC.
pub(crate) fn rfc5322_date(unix: u64) -> String {
    let days = (unix / 86400) as i64;
    let secs = unix % 86400;
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} +0000",
        WD[days.rem_euclid(7) as usize],
        MON[(m - 1) as usize],
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests;
