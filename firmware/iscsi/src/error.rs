//! [`IscsiError`]: what went wrong with a target, in words an operator can act on.

use std::io;
use std::time::Duration;

/// Errors of the iSCSI initiator. Messages never contain a secret.
#[derive(Debug, thiserror::Error)]
pub enum IscsiError {
    /// The configuration cannot work (bad portal syntax, queue depth 0...).
    #[error("iSCSI configuration: {detail}")]
    Config { detail: String },

    /// No TCP connection to the portal.
    #[error("cannot connect to iSCSI portal {portal}: {source}; is the target running? check the portal address and firewall")]
    Connect {
        portal: String,
        #[source]
        source: io::Error,
    },

    /// The target refused the login with a status class/detail (RFC 7143 §11.13.5).
    #[error(
        "login to {target} at {portal} refused (status 0x{status_class:02x}{status_detail:02x}: {meaning}); {hint}"
    )]
    LoginFailed {
        portal: String,
        target: String,
        status_class: u8,
        status_detail: u8,
        meaning: &'static str,
        hint: String,
    },

    /// The target failed to prove it knows the mutual-CHAP secret.
    #[error("login to {target}: {detail}: the target could not prove it knows the mutual-CHAP secret: possible impostor, or wrong target secret configured")]
    MutualAuthFailed { target: String, detail: String },

    /// Login parameters could not be agreed.
    #[error("login negotiation of {key} failed: {detail}")]
    Negotiation { key: String, detail: String },

    /// The target sent something that breaks the protocol (garbled, hostile or unexpected PDU).
    #[error("iSCSI protocol error from the target: {detail}; the target misbehaves or the network corrupts data (header and data digests, offered by default, detect corruption)")]
    Protocol { detail: String },

    /// The target rejected a PDU we sent.
    #[error("the target rejected a request: {detail}")]
    Rejected { detail: String },

    /// No answer in time.
    #[error("{what}: no answer from the target within {after:?}; check the target's load and the network")]
    Timeout { what: String, after: Duration },

    /// The connection broke and could not be restored before the deadline.
    #[error("connection to {target} lost and not restored within {after:?} (last error: {last}); check that the target is running and reachable, then retry")]
    ConnectionLost { target: String, after: Duration, last: String },

    /// The session was logged out by us.
    #[error("the iSCSI session to {target} is logged out")]
    Closed { target: String },

    /// A socket error outside a connection's normal life (e.g. setting options).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// Words and an operator hint for a login status (class, detail).
pub fn login_status_text(class: u8, detail: u8) -> (&'static str, &'static str) {
    match (class, detail) {
        (1, 1) => ("target moved temporarily", "the target redirected us; use the TargetAddress it names"),
        (1, 2) => ("target moved permanently", "update the portal address to the one the target names"),
        (2, 0) => ("initiator error", "the target refused our login request; check the target's log"),
        (2, 1) => {
            ("authentication failed", "wrong CHAP user or secret: check the credentials configured for this target")
        }
        (2, 2) => {
            ("authorization failure", "this initiator name is not allowed on the target: add it to the target's ACL")
        }
        (2, 3) => ("target not found or not allowed", "check the target name (IQN) and the target's ACL"),
        (2, 4) => ("target removed", "the target no longer exists at this portal"),
        (2, 5) => ("unsupported version", "the target speaks another iSCSI version"),
        (2, 6) => ("too many connections", "close other sessions to this target"),
        (2, 7) => ("missing parameter", "the target expects a login key we did not send"),
        (2, 8) => ("cannot include in session", "the target refused to add this connection"),
        (2, 9) => ("session type not supported", "the target does not offer this session type"),
        (2, 10) => ("session does not exist", "retry the login"),
        (2, 11) => ("invalid request during login", "the target refused a request during login"),
        (3, 0) => ("target error", "the target has an internal error; check its log and retry"),
        (3, 1) => ("service unavailable", "the target is temporarily unavailable; retry later"),
        (3, 2) => ("out of resources", "the target is out of resources; retry later"),
        _ => ("unknown status", "check the target's log"),
    }
}

impl IscsiError {
    /// Whether trying again later may help (a lost connection, a busy target).
    pub fn is_transient(&self) -> bool {
        match self {
            IscsiError::Connect { .. } | IscsiError::Timeout { .. } | IscsiError::ConnectionLost { .. } => true,
            IscsiError::LoginFailed { status_class, .. } => *status_class == 3,
            _ => false,
        }
    }

    /// The matching transport error kind for the SCSI layer.
    pub fn transport_kind(&self) -> scsi::TransportErrorKind {
        use scsi::TransportErrorKind as K;
        match self {
            IscsiError::Connect { .. } | IscsiError::ConnectionLost { .. } | IscsiError::Closed { .. } => {
                K::ConnectionLost
            }
            IscsiError::Timeout { .. } => K::Timeout,
            IscsiError::LoginFailed { .. } | IscsiError::MutualAuthFailed { .. } | IscsiError::Negotiation { .. } => {
                K::Refused
            }
            IscsiError::Protocol { .. } | IscsiError::Rejected { .. } => K::Protocol,
            IscsiError::Config { .. } => K::Unsupported,
            IscsiError::Io { .. } => K::Other,
        }
    }
}

impl From<IscsiError> for scsi::TransportError {
    fn from(e: IscsiError) -> Self {
        scsi::TransportError::new(e.transport_kind(), e)
    }
}
