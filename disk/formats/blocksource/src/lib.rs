//! `blocksource`: the seam between "where a virtual disk lives" and "what we do with it".
//!
//! A [`BlockSource`] is one guest-visible disk image of a fixed [`size`](BlockSource::size):
//! a local raw file or block device ([`file::FileSource`]), a qcow2 image layered over any other
//! source (crate `qcow2`), and later NFS, iSCSI and NBD. The ingest pipeline only ever sees
//! this trait.
//!
//! The trait is shaped by three needs of image-level backup:
//! - **Random reads at large queue depth.** [`BlockSource::read_many`] takes a whole batch of
//!   requests, so an implementation can keep many reads in flight (io_uring, pipelined RPCs,
//!   tagged SCSI commands). Callers submit batches from several threads at once, so every
//!   implementation is `Send + Sync`.
//! - **Allocation maps.** [`BlockSource::allocation`] reports which ranges hold data and which
//!   read as zeros (holes, unallocated clusters, unmapped LUN blocks). The pipeline never reads
//!   a range reported as [`ExtentKind::Zero`].
//! - **Changed-block tracking.** [`BlockSource::changed_ranges`] returns the ranges written since
//!   a named checkpoint (a QEMU dirty bitmap, VMware CBT), or `None` when the source cannot tell,
//!   in which case the caller reads everything.
//!
//! Invariant: for every byte offset `o < size()`, `read_many` returns the guest-visible byte;
//! reading any byte at or past `size()` is an error, never silently zero.

pub mod file;
pub mod mem;
pub mod rate;
pub mod related;
pub mod table_cache;

pub use rate::{RateLimited, RateLimiter};
pub use related::{resolve_backing_path, BackingOpener, LocalBackingOpener};
pub use table_cache::{TableCache, TableKey};

use std::fmt;
use std::io;
use std::path::PathBuf;

/// What kind of content an [`Extent`] has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// The range may hold non-zero data and must be read.
    Data,
    /// The range reads as zeros; it must not be read.
    Zero,
}

/// A contiguous range of the guest-visible disk with one [`ExtentKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub kind: ExtentKind,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// A byte range `[offset, offset + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub len: u64,
}

/// One read of a batch: fill all of `buf` with the bytes at `offset`.
#[derive(Debug)]
pub struct ReadRequest<'a> {
    pub offset: u64,
    pub buf: &'a mut [u8],
}

/// How a caller should size and batch its reads for best throughput.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoHints {
    /// Reads should be a multiple of this and aligned to it (bytes, a power of two).
    pub alignment: u32,
    /// Requests worth keeping in flight at once, per calling thread.
    pub queue_depth: u32,
    /// Largest single request the source handles efficiently (bytes).
    pub max_request: u32,
}

impl Default for IoHints {
    fn default() -> Self {
        IoHints { alignment: 4096, queue_depth: 16, max_request: 4 << 20 }
    }
}

/// A guest-visible virtual disk that can be read at random.
pub trait BlockSource: Send + Sync + fmt::Debug {
    /// Guest-visible size in bytes.
    fn size(&self) -> u64;

    /// A description for logs and restore-point metadata. Never contains a secret.
    fn describe(&self) -> String;

    /// The image format this source decodes ("raw", "qcow2", ...).
    fn format(&self) -> &'static str {
        "raw"
    }

    /// How to batch reads against this source.
    fn io_hints(&self) -> IoHints {
        IoHints::default()
    }

    /// Allocation map of `[offset, offset + len)`, clipped to `size()`: sorted, contiguous,
    /// non-overlapping extents that cover the whole range. Adjacent extents may share a kind.
    /// A source that cannot tell reports one `Data` extent.
    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>, SourceError>;

    /// Ranges changed since `checkpoint`, sorted and non-overlapping, or `None` if this source
    /// has no trustworthy change tracking for it (the caller then reads everything).
    fn changed_ranges(&self, checkpoint: &str) -> Result<Option<Vec<ByteRange>>, SourceError> {
        let _ = checkpoint;
        Ok(None)
    }

    /// Fill every request's buffer with the guest bytes at its offset. Implementations may
    /// complete the requests in any order and in parallel; on error, the contents of all
    /// buffers are unspecified.
    fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), SourceError>;

    /// Convenience: one read.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        self.read_many(&mut [ReadRequest { offset, buf }])
    }
}

impl<T: BlockSource + ?Sized> BlockSource for Box<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn format(&self) -> &'static str {
        (**self).format()
    }
    fn io_hints(&self) -> IoHints {
        (**self).io_hints()
    }
    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>, SourceError> {
        (**self).allocation(offset, len)
    }
    fn changed_ranges(&self, checkpoint: &str) -> Result<Option<Vec<ByteRange>>, SourceError> {
        (**self).changed_ranges(checkpoint)
    }
    fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), SourceError> {
        (**self).read_many(reqs)
    }
}

/// Whether an error can go away by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Retrying later may succeed (a dropped connection, a busy server).
    Transient,
    /// The input is wrong and stays wrong (corrupt image, missing file); an operator must act.
    Permanent,
}

/// Errors of a [`BlockSource`]. Each message says what happened and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source does not exist.
    #[error("{path}: no such file or device; check the source path")]
    NotFound { path: PathBuf },

    /// The source exists but we may not read it.
    #[error("{path}: permission denied; run as a user that can read it or fix its permissions")]
    PermissionDenied { path: PathBuf },

    /// An I/O error while reading the source.
    #[error("{what}: read error at byte offset {offset}: {source}; check the device or server, then retry the backup")]
    Read {
        what: String,
        offset: u64,
        #[source]
        source: io::Error,
    },

    /// Another I/O error (open, stat, seek).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },

    /// The image's metadata is damaged or hostile.
    #[error("{what}: corrupt image at byte offset {offset}: {detail}; the image cannot be read safely, repair it (e.g. `qemu-img check -r all`) or back up another copy")]
    Corrupt { what: String, offset: u64, detail: String },

    /// A local file outside the places the appliance may read sources from (its data
    /// directory, its own keys, system files).
    #[error("{path}: {detail}")]
    Confined { path: PathBuf, detail: String },

    /// The image uses a feature we do not implement.
    #[error("{what}: unsupported image feature: {detail}")]
    Unsupported { what: String, detail: String },

    /// A request past the end of the disk: a caller bug, not bad input.
    #[error("{what}: read of {len} bytes at offset {offset} is past the end of the {size}-byte disk")]
    OutOfRange { what: String, offset: u64, len: u64, size: u64 },
}

impl SourceError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SourceError::Read { source, .. } | SourceError::Io { source, .. }
                if matches!(
                    source.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                ) =>
            {
                ErrorKind::Transient
            }
            _ => ErrorKind::Permanent,
        }
    }
}

/// Check that `[offset, offset+len)` lies within a disk of `size` bytes.
pub fn check_range(what: &dyn Fn() -> String, offset: u64, len: u64, size: u64) -> Result<(), SourceError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(SourceError::OutOfRange { what: what(), offset, len, size }),
    }
}

/// Merge adjacent extents of the same kind, so callers see the coarsest map.
pub fn coalesce(extents: Vec<Extent>) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::with_capacity(extents.len());
    for e in extents.into_iter().filter(|e| e.len > 0) {
        match out.last_mut() {
            Some(last) if last.kind == e.kind && last.end() == e.offset => last.len += e.len,
            _ => out.push(e),
        }
    }
    out
}
