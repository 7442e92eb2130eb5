//! The service API's errors: each has a kind the web layer maps to a status code.

use std::path::Path;

/// What went wrong, for the web layer's status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceErrorKind {
    Invalid,
    Unauthenticated,
    Forbidden,
    NotFound,
    Conflict,
    /// A replicated point is not complete on this appliance yet (409, code `incomplete`): the
    /// sender asks again what is lacking.
    Incomplete,
    RateLimited {
        retry_after_s: u64,
    },
    /// Overloaded for now: try again after `retry_after_s` (503).
    Busy {
        retry_after_s: u64,
    },
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
    #[error("the point is incomplete here: {0}")]
    Incomplete(String),
    #[error("too many failed sign-ins; try again in {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("{what}; try again in {retry_after_s} s")]
    Busy { retry_after_s: u64, what: String },
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
            ServiceError::Incomplete(_) => ServiceErrorKind::Incomplete,
            ServiceError::RateLimited { retry_after_s } => {
                ServiceErrorKind::RateLimited { retry_after_s: *retry_after_s }
            }
            ServiceError::Busy { retry_after_s, .. } => ServiceErrorKind::Busy { retry_after_s: *retry_after_s },
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
