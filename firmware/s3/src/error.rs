//! [`S3Error`]: what went wrong with an S3 endpoint, in words an operator can act on, and
//! [`ErrorKind`]: whether retrying can help.
//!
//! The classification comes from what the server said (HTTP status and the S3 error `Code`
//! of its XML body, read by `probe.rs` before object_store turns the answer into a string) or
//! from the transport (connect, timeout, cut connection), never from the text of a message.

use std::time::Duration;

/// Whether an error can go away by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Retrying later may succeed: throttling (503 SlowDown), a server error (5xx), a dropped
    /// connection, a timeout. [`crate::retry`] retries these with backoff.
    Transient,
    /// Retrying changes nothing until someone acts: wrong credentials, a missing bucket,
    /// a denied permission, an object under lock, a bad request.
    Permanent,
}

/// Errors of the S3 client. Messages never contain the secret key.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The configuration cannot work (bad endpoint URL, part size out of S3's limits...).
    #[error("S3 configuration: {detail}")]
    Config { detail: String },

    /// The server refused our signature or access key (`SignatureDoesNotMatch`,
    /// `InvalidAccessKeyId`, ...).
    #[error("the S3 credentials were refused by {endpoint} ({code}); check the access key and secret")]
    Credentials { endpoint: String, code: String },

    /// The bucket does not exist.
    #[error("bucket {bucket} does not exist on {endpoint}; create it or fix the name")]
    NoSuchBucket { bucket: String, endpoint: String },

    /// The credentials are valid but lack a permission for this operation.
    #[error("access denied: {what} on {endpoint} ({code}); the identity lacks this permission: grant it in the bucket or user policy, or use credentials that have it")]
    AccessDenied { what: String, endpoint: String, code: String },

    /// The object version is protected by object lock (retention or legal hold), so the
    /// server refused to delete or shorten it.
    #[error("{what} refused by the server: {key} (version {version}) is under object lock ({detail}); it can be deleted only after its retention ends")]
    ObjectLocked { what: String, key: String, version: String, detail: String },

    /// The object (or version) does not exist.
    #[error("object {key} does not exist in bucket {bucket}")]
    NotFound { bucket: String, key: String },

    /// The server asked us to slow down (503 SlowDown, 429).
    #[error("{what}: the S3 server is throttling requests (HTTP {status} {code}); retry later or lower the upload concurrency")]
    Throttled { what: String, status: u16, code: String },

    /// The server failed (5xx other than throttling).
    #[error("{what}: the S3 server failed (HTTP {status} {code}: {message}); retry later, and check the server's health if it persists")]
    Server { what: String, status: u16, code: String, message: String },

    /// No connection, or the connection broke before the answer was complete.
    #[error("{what}: connection to {endpoint} failed ({detail}); check that the endpoint is reachable, then retry")]
    Connection { what: String, endpoint: String, detail: String },

    /// No answer within the configured timeout.
    #[error("{what}: no answer from {endpoint} within {after:?}; check the server's load and the network")]
    Timeout { what: String, endpoint: String, after: Duration },

    /// A transient error that stayed after every attempt of the retry policy.
    #[error("{what}: gave up after {attempts} attempts over {elapsed:?}: {last}")]
    RetriesExhausted {
        what: String,
        attempts: u32,
        elapsed: Duration,
        #[source]
        last: Box<S3Error>,
    },

    /// Another refusal by the server (a 4xx with an S3 error code).
    #[error("{what}: the S3 server refused the request (HTTP {status} {code}: {message})")]
    Rejected { what: String, status: u16, code: String, message: String },

    /// The server answered with something we cannot use (malformed XML, a missing field).
    #[error(
        "{what}: unexpected answer from {endpoint}: {detail}; the server is not S3-compatible enough or misbehaves"
    )]
    Protocol { what: String, endpoint: String, detail: String },
}

impl S3Error {
    /// Whether retrying may help.
    pub fn kind(&self) -> ErrorKind {
        match self {
            S3Error::Throttled { .. }
            | S3Error::Server { .. }
            | S3Error::Connection { .. }
            | S3Error::Timeout { .. }
            | S3Error::RetriesExhausted { .. } => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        }
    }

    /// Shorthand for `kind() == ErrorKind::Transient`.
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// The error behind a [`S3Error::RetriesExhausted`], or `self`.
    pub fn root(&self) -> &S3Error {
        match self {
            S3Error::RetriesExhausted { last, .. } => last.root(),
            e => e,
        }
    }
}
