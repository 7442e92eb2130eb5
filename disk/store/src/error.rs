//! The store's errors. Every message names the file or object involved and what to do.

use std::io;
use std::path::PathBuf;

use crate::Digest;

/// Whether an error is worth retrying, or needs an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Out of space or another resource; free some and retry.
    Resource,
    /// Stored data is damaged; run `rackvault verify` and restore from another copy.
    Damaged,
    /// The request is wrong (no such restore point, bad argument).
    Usage,
    /// Stopped on request.
    Cancelled,
    /// Anything else.
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: not a rackvault store (no {marker} file); give the path of an existing store, or a new empty directory to create one")]
    NotAStore { path: PathBuf, marker: &'static str },

    #[error("{path}: store format version {found} is newer than this rackvault supports (up to {supported}); upgrade rackvault to use this store, it has not been touched")]
    NewerFormat { path: PathBuf, found: u32, supported: u32 },

    #[error("{path}: the store is encrypted and no key was given; give its recovery key (`--key-file FILE` on the command line, `rackvault key restore` on an appliance), the one exported when the store was created")]
    KeyRequired { path: PathBuf },

    #[error("{path}: the key given does not open this encrypted store (the store's key check does not match); give the recovery key exported for this store. Nothing was read or changed")]
    WrongKey { path: PathBuf },

    #[error("{path}: the store is not encrypted, but a key was given; open it without a key (encryption is chosen when a store is created)")]
    NotEncrypted { path: PathBuf },

    #[error("chunk {digest} belongs to a replica this appliance keeps without its source store's key{}: give that store's recovery key (`rackvault key add-replica` on an appliance, `--replica-key FILE` on the command line) to restore it", if *.tried > 0 { format!(" (none of the {tried} replica keys given opens it)") } else { String::new() })]
    ReplicaKeyRequired { digest: Digest, tried: usize },

    #[error("wrong recovery key: {0}")]
    RecoveryKey(String),

    #[error("{path}: the disk is full; free space or move the store to a larger disk, then retry. The interrupted backup left no restore point and its partial data is removed on the next open")]
    DiskFull { path: PathBuf },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{path}: chunk index database error: {source}")]
    Index {
        path: PathBuf,
        #[source]
        source: heed::Error,
    },

    #[error("chunk {digest} is referenced but missing from the index; run `rackvault verify` to find the damaged restore points, then `rackvault reindex` if packs are intact")]
    MissingChunk { digest: Digest },

    #[error("{path}: damaged chunk record at byte offset {offset}: {detail}; run `rackvault verify` to see which restore points are affected")]
    Corrupt { path: PathBuf, offset: u64, detail: String },

    #[error("restore point record {point} is damaged: {detail}; `rackvault repair` restores it from its manifest in the packs (or delete the point)")]
    DamagedPoint { point: String, detail: String },

    #[error("{path}: the store is open read-only ({why}); open it read-write on a writable filesystem to back up, repair or reindex")]
    ReadOnly { path: PathBuf, why: String },

    #[error("no restore point {0}; `rackvault list` shows what the store holds")]
    NoSuchPoint(String),

    #[error("invalid argument: {0}")]
    Invalid(String),

    #[error("restore point {point} is immutable until {until_unix} (unix time, by the store's trusted clock): its job's immutability window forbids deleting or pruning it before then, for every user including admins; wait until the window ends")]
    Immutable { point: String, until_unix: u64 },

    #[error("restore point {point} is protected (pinned); unpin it first if it really should go")]
    Pinned { point: String },

    #[error("the store is busy: {0}")]
    Busy(String),

    #[error("cancelled: stopped at a consistent point; run it again to continue")]
    Cancelled,

    #[error("garbage collection stopped before deleting anything: restore point {point} cannot be walked ({source}); run `rackvault verify`, then `rackvault repair` or delete that point, and run the GC again")]
    GcBlocked {
        point: String,
        #[source]
        source: Box<StoreError>,
    },
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::DiskFull { .. } => ErrorKind::Resource,
            StoreError::MissingChunk { .. } | StoreError::Corrupt { .. } | StoreError::DamagedPoint { .. } => {
                ErrorKind::Damaged
            }
            StoreError::NoSuchPoint(_)
            | StoreError::Invalid(_)
            | StoreError::NotAStore { .. }
            | StoreError::KeyRequired { .. }
            | StoreError::ReplicaKeyRequired { .. }
            | StoreError::WrongKey { .. }
            | StoreError::NotEncrypted { .. }
            | StoreError::RecoveryKey(_)
            | StoreError::ReadOnly { .. }
            | StoreError::Immutable { .. }
            | StoreError::Pinned { .. } => ErrorKind::Usage,
            StoreError::Busy(_) => ErrorKind::Resource,
            StoreError::Cancelled => ErrorKind::Cancelled,
            StoreError::GcBlocked { .. } => ErrorKind::Damaged,
            StoreError::Io { source, .. } if is_enospc(source) => ErrorKind::Resource,
            _ => ErrorKind::Other,
        }
    }

    /// Whether this is a fault of the appliance itself (out of file descriptors or memory,
    /// no permission, the index database failing) rather than damage to stored data. Verify
    /// stops with such an error instead of reporting the data as damaged.
    pub fn is_local_fault(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOMEM) | Some(libc::EACCES) | Some(libc::EPERM)
            ),
            StoreError::Index { .. } | StoreError::DiskFull { .. } | StoreError::ReadOnly { .. } => true,
            _ => false,
        }
    }

    /// Wrap an I/O error on `path`, turning ENOSPC/EDQUOT into [`StoreError::DiskFull`].
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> StoreError {
        let path = path.into();
        if is_enospc(&source) {
            StoreError::DiskFull { path }
        } else {
            StoreError::Io { path, source }
        }
    }

    pub fn index(path: impl Into<PathBuf>, source: heed::Error) -> StoreError {
        let path = path.into();
        match source {
            heed::Error::Io(e) if is_enospc(&e) => StoreError::DiskFull { path },
            heed::Error::Mdb(heed::MdbError::MapFull) => StoreError::DiskFull { path },
            source => StoreError::Index { path, source },
        }
    }
}

fn is_enospc(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
