//! `engine`: the jobs that move disk images between [`BlockSource`]s and the staging
//! [`Store`]: backup, restore and verify.
//!
//! ## Backup pipeline
//! ```text
//!  workers (one per core)                               the calling thread
//!  ┌──────────────────────────────────────────┐         ┌───────────────────────────────┐
//!  │ take next batch of chunks (atomic cursor)│         │ insert new chunks into packs  │
//!  │ allocation map → skip unallocated ranges │ bounded │ reorder digests by chunk no.  │
//!  │ read_many at queue depth                 │──chan──▶│ push into the index tree      │
//!  │ zero check → blake3 → index lookup       │         │ commit the restore point      │
//!  │ compress only chunks the store lacks     │         └───────────────────────────────┘
//!  └──────────────────────────────────────────┘
//! ```
//! Memory is bounded by `threads × batch + channel capacity` chunks, independent of the disk
//! size. A worker that fails sets a shared stop flag; the session is then dropped without a
//! commit, so a failed backup never leaves a restore point (see the `store` crate's
//! durability order).
//!
//! ## Restore pipeline
//! A walker thread reads the index tree in disk order and feeds `(chunk no., digest)` to
//! workers, which read, check and decompress each chunk and write it at its offset with
//! `pwrite` (raw file or block device), or hand it to the single qcow2 writer. All-zero
//! chunks become holes in a new raw file and are written as zeros on a block device. The
//! walker also names each chunk to the store's read-ahead (`store::Readahead`) as it queues
//! it, so the pack ranges a queue's length ahead are being read while the workers decompress
//! and write: on a store whose points are spread over many packs this halves an uncached
//! restore (README, "Performance").

mod progress;
pub mod prune;
pub mod replicate;
mod restore;
mod source;
pub mod tape;
pub mod vmx;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use blocksource::{BlockSource, ExtentKind, ReadRequest, SourceError};
use serde::{Deserialize, Serialize};
use store::{BackupSession, ChunkEncoder, Digest, DiskIndex, EncodedChunk, PointStats, RecordKind, Store, StoreError};

pub use progress::{NoProgress, Progress};
pub use restore::{disk_file_name, restore, RestoreFormat, RestoreOptions, RestoreReport};
pub use source::{
    detect_format, open_image, open_source, open_source_all, probe, IscsiSpec, LocalConfinement, NfsSpec, OpenedSource,
    ProbeDisk, ProbeReport, ProbeTarget, Secret, SourceSecrets, SourceSpec,
};

/// Default chunk size, chosen by measurement (see README, "Chunk size").
pub const DEFAULT_CHUNK_SIZE: u32 = 256 << 10;
/// Default zstd level.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Errors of a job. Messages come from the layer that failed and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {detail}")]
    Target { path: String, detail: String },
    #[error("{0}")]
    Invalid(String),
    /// The job was cancelled (by an operator); nothing was committed.
    #[error("cancelled: the job was stopped before it finished and left nothing behind")]
    Cancelled,
}

/// Whether running a failed job again as it is may succeed: what a retry policy acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Retrying later may succeed without anyone changing anything: a dropped connection, a
    /// timeout, a server that is down or restarting (connection refused counts: a daemon that
    /// is down comes back), a busy store or drive.
    Transient,
    /// Stays wrong until someone acts: a corrupt or unsupported image, a missing file, bad
    /// credentials, a wrong argument, damaged stored data, a full disk, a refused cartridge.
    Permanent,
    /// Stopped on request; nothing to retry.
    Cancelled,
}

impl EngineError {
    /// Transient, permanent or cancelled, from the failing layer's own classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Source(e) => source_error_kind(e),
            EngineError::Store(e) => store_error_kind(e),
            EngineError::Target { .. } | EngineError::Invalid(_) => ErrorKind::Permanent,
            EngineError::Cancelled => ErrorKind::Cancelled,
        }
    }
}

/// An I/O error's kind: network failures and interruptions are transient; everything else
/// (a missing file, no permission, bad data, a full or read-only filesystem, and errors the
/// protocol adapters mark as not transient by giving them `Other`) is permanent.
pub fn io_error_kind(e: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionReset
        | K::ConnectionAborted
        | K::ConnectionRefused
        | K::NotConnected
        | K::TimedOut
        | K::BrokenPipe
        | K::UnexpectedEof
        | K::Interrupted
        | K::WouldBlock
        | K::HostUnreachable
        | K::NetworkUnreachable
        | K::NetworkDown
        | K::ResourceBusy => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

/// A source error's kind: the source layer's own (the NFS and iSCSI adapters mark their
/// transient failures), widened by [`io_error_kind`] for I/O errors it leaves permanent.
pub fn source_error_kind(e: &SourceError) -> ErrorKind {
    if e.kind() == blocksource::ErrorKind::Transient {
        return ErrorKind::Transient;
    }
    match e {
        SourceError::Read { source, .. } | SourceError::Io { source, .. } => io_error_kind(source),
        _ => ErrorKind::Permanent,
    }
}

/// A store error's kind: a busy store (a verify, repair or GC holding it) is transient; a
/// full disk, damage and wrong requests are permanent; other I/O errors as [`io_error_kind`].
pub fn store_error_kind(e: &StoreError) -> ErrorKind {
    match e.kind() {
        store::ErrorKind::Cancelled => ErrorKind::Cancelled,
        _ => match e {
            StoreError::Busy(_) => ErrorKind::Transient,
            StoreError::Io { source, .. } if e.kind() == store::ErrorKind::Other => io_error_kind(source),
            _ => ErrorKind::Permanent,
        },
    }
}

/// Settings of one backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub name: String,
    /// Power of two between 4 KiB and 8 MiB.
    pub chunk_size: u32,
    /// zstd level, or `None` to store chunks uncompressed.
    pub zstd_level: Option<i32>,
    /// Store data chunks raw now and leave their compression (at `zstd_level`) to the
    /// store's recompression pass, off the backup's critical path (`Store::recompress`).
    pub defer_compression: bool,
    /// Worker threads; 0 means one per core.
    pub threads: usize,
    /// Label of the disk inside the restore point.
    pub disk_label: String,
    /// Make the restore point immutable (undeletable, by anyone) for this long after it is
    /// created; the store enforces it.
    pub immutable_for_s: Option<u64>,
}

impl BackupOptions {
    pub fn new(name: &str) -> BackupOptions {
        BackupOptions {
            name: name.to_string(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            zstd_level: Some(DEFAULT_ZSTD_LEVEL),
            defer_compression: true,
            threads: 0,
            disk_label: "disk0".into(),
            immutable_for_s: None,
        }
    }
}

/// What a backup did; also the `--json` output of `rackvault backup`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupReport {
    pub name: String,
    pub id: u64,
    pub source: String,
    pub format: String,
    pub bytes_logical: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Of `bytes_written`, data stored raw for the recompression pass to compress (absent
    /// when none, as in reports of versions before it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_deferred: u64,
    pub chunks_total: u64,
    pub chunks_new: u64,
    pub chunks_zero: u64,
    pub tree_nodes_new: u64,
    pub chunk_size: u32,
    pub duration_s: f64,
    /// The write path of the packs: "io_uring" or "pread/pwrite", plus ", O_DIRECT" when the
    /// filesystem allowed direct I/O.
    pub io_backend: String,
    /// Each disk of the restore point.
    pub disks: Vec<BackupDiskReport>,
    /// Configuration files captured with the disks.
    pub files: Vec<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

pub fn default_threads(requested: usize) -> usize {
    if requested > 0 {
        requested
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
    }
}

/// Check a chunk size: a power of two within the store's limits.
pub fn validate_chunk_size(size: u32) -> Result<(), EngineError> {
    if size.is_power_of_two() && (store::MIN_CHUNK_SIZE..=store::MAX_CHUNK_SIZE).contains(&size) {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "chunk size {size}: use a power of two between {} KiB and {} MiB",
            store::MIN_CHUNK_SIZE >> 10,
            store::MAX_CHUNK_SIZE >> 20
        )))
    }
}

/// One chunk as a worker hands it to the committing thread.
struct ChunkResult {
    index: u64,
    digest: Digest,
    /// Present when the store lacked the chunk at lookup time.
    encoded: Option<EncodedChunk>,
}

/// Bytes of disk a worker claims at a time.
const BATCH_BYTES: u64 = 4 << 20;

/// One disk to back up, and its label inside the restore point.
#[derive(Debug, Clone, Copy)]
pub struct DiskToBackup<'a> {
    pub label: &'a str,
    pub source: &'a dyn BlockSource,
}

/// One disk of a backup, as reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupDiskReport {
    pub label: String,
    pub source: String,
    pub format: String,
    pub bytes_logical: u64,
    pub bytes_read: u64,
    pub chunks_total: u64,
    pub chunks_zero: u64,
}

/// Back up `source` into `store` as a new restore point with one disk.
pub fn backup(
    store: &Store,
    source: &dyn BlockSource,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupReport, EngineError> {
    backup_disks(store, &[DiskToBackup { label: &opts.disk_label, source }], &[], opts, progress)
}

/// Back up several disks (and small configuration files, e.g. a `.vmx`) into `store` as one
/// restore point. Either every disk and file is committed, or nothing is: a failure on any
/// disk drops the session without a commit.
pub fn backup_disks(
    store: &Store,
    disks: &[DiskToBackup<'_>],
    files: &[(String, Vec<u8>)],
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupReport, EngineError> {
    validate_chunk_size(opts.chunk_size)?;
    store::validate_name(&opts.name)?;
    if disks.is_empty() {
        return Err(EngineError::Invalid("nothing to back up: the source has no disks".into()));
    }
    let started = Instant::now();
    let total: u64 = disks.iter().map(|d| d.source.size()).sum();
    progress.start("backup", total);
    let mut session = store.begin_backup()?;
    session.set_immutable_for(opts.immutable_for_s);
    for (name, content) in files {
        session.add_file(name, content)?;
    }
    let mut indexes = Vec::with_capacity(disks.len());
    let mut disk_reports = Vec::with_capacity(disks.len());
    for disk in disks {
        let (index, report) = ingest_disk(store, &mut session, disk, opts, progress)?;
        indexes.push(index);
        disk_reports.push(report);
    }
    let stats = session.stats().clone();
    let bytes_read = disk_reports.iter().map(|d| d.bytes_read).sum();
    let chunks_total = disk_reports.iter().map(|d| d.chunks_total).sum();
    let chunks_zero = disk_reports.iter().map(|d| d.chunks_zero).sum();
    let point_stats = PointStats {
        bytes_logical: total,
        bytes_read,
        bytes_written: stats.bytes_written,
        chunks_total,
        chunks_new: stats.chunks_new,
        chunks_zero,
        duration_s: started.elapsed().as_secs_f64(),
    };
    let point = session.commit(&opts.name, indexes, point_stats)?;
    progress.finish();
    let source = match disk_reports.as_slice() {
        [one] => one.source.clone(),
        many => format!("{} disks", many.len()),
    };
    let format = match disk_reports.as_slice() {
        [one] => one.format.clone(),
        many => {
            let mut f: Vec<&str> = many.iter().map(|d| d.format.as_str()).collect();
            f.dedup();
            f.join("+")
        }
    };
    Ok(BackupReport {
        name: point.name,
        id: point.id,
        source,
        format,
        bytes_logical: total,
        bytes_read,
        bytes_written: stats.bytes_written,
        bytes_deferred: stats.bytes_deferred,
        chunks_total,
        chunks_new: stats.chunks_new,
        chunks_zero,
        tree_nodes_new: stats.tree_nodes_new,
        chunk_size: opts.chunk_size,
        duration_s: started.elapsed().as_secs_f64(),
        io_backend: match stats.direct_io {
            Some(true) => format!("{}, O_DIRECT", store.io_backend()),
            _ => store.io_backend().to_string(),
        },
        disks: disk_reports,
        files: point.files.iter().map(|f| f.name.clone()).collect(),
    })
}

/// Read one disk into the session and build its index tree.
fn ingest_disk(
    store: &Store,
    session: &mut BackupSession<'_>,
    disk: &DiskToBackup<'_>,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<(DiskIndex, BackupDiskReport), EngineError> {
    let source = disk.source;
    let size = source.size();
    let cs = opts.chunk_size as u64;
    let chunks_total = size.div_ceil(cs);
    let per_batch = (BATCH_BYTES / cs).max(1);
    let threads = default_threads(opts.threads);

    let cursor = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let bytes_read = AtomicU64::new(0);
    let chunks_zero = AtomicU64::new(0);
    let (tx, rx) = crossbeam_channel::bounded::<Result<ChunkResult, EngineError>>(threads * per_batch as usize * 2);

    let mut tree = store.tree_builder();
    let outcome: Result<(), EngineError> = std::thread::scope(|s| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (cursor, stop, bytes_read, chunks_zero) = (&cursor, &stop, &bytes_read, &chunks_zero);
            s.spawn(move || {
                let mut worker = Worker {
                    store,
                    source,
                    chunk_size: cs,
                    size,
                    encoder: match (opts.zstd_level, opts.defer_compression) {
                        (Some(level), true) => ChunkEncoder::deferring(level),
                        (level, _) => ChunkEncoder::new(level),
                    },
                    bufs: Vec::new(),
                };
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if progress.cancelled() {
                        stop.store(true, Ordering::Relaxed);
                        let _ = tx.send(Err(EngineError::Cancelled));
                        return;
                    }
                    let first = cursor.fetch_add(per_batch, Ordering::Relaxed);
                    if first >= chunks_total {
                        return;
                    }
                    let last = (first + per_batch).min(chunks_total);
                    match worker.process(first, last, bytes_read, chunks_zero, progress) {
                        Ok(results) => {
                            for r in results {
                                if tx.send(Ok(r)).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
            });
        }
        drop(tx);

        // The committing side: store new chunks as they come, build the tree in order.
        let mut reorder: BTreeMap<u64, Digest> = BTreeMap::new();
        let mut next_index = 0u64;
        let result = (|| {
            for msg in rx.iter() {
                let r = msg?;
                if let Some(enc) = &r.encoded {
                    session.insert(enc)?;
                }
                reorder.insert(r.index, r.digest);
                while let Some(d) = reorder.remove(&next_index) {
                    tree.push(d, &mut |node| session.insert(&node).map(|_| ()))?;
                    next_index += 1;
                }
            }
            if next_index != chunks_total {
                return Err(EngineError::Invalid(format!(
                    "internal error: {next_index} of {chunks_total} chunks processed"
                )));
            }
            Ok(())
        })();
        if result.is_err() {
            stop.store(true, Ordering::Relaxed);
            // Drain so blocked workers can exit.
            for _ in rx.iter() {}
        }
        result
    });
    outcome?;

    let mut emit = |c: EncodedChunk| -> store::Result<()> { session.insert(&c).map(|_| ()) };
    let (root, height) = tree.finish(&mut emit)?;
    let index = DiskIndex {
        label: disk.label.to_string(),
        source: source.describe(),
        format: source.format().to_string(),
        size,
        chunk_size: opts.chunk_size,
        chunks: chunks_total,
        root,
        height,
    };
    let report = BackupDiskReport {
        label: disk.label.to_string(),
        source: source.describe(),
        format: source.format().to_string(),
        bytes_logical: size,
        bytes_read: bytes_read.into_inner(),
        chunks_total,
        chunks_zero: chunks_zero.into_inner(),
    };
    Ok((index, report))
}

/// Per-thread state of a backup worker.
struct Worker<'a> {
    store: &'a Store,
    source: &'a dyn BlockSource,
    chunk_size: u64,
    size: u64,
    encoder: ChunkEncoder,
    bufs: Vec<Vec<u8>>,
}

impl Worker<'_> {
    /// Read, hash and (if new) compress chunks `first..last`.
    fn process(
        &mut self,
        first: u64,
        last: u64,
        bytes_read: &AtomicU64,
        chunks_zero: &AtomicU64,
        progress: &dyn Progress,
    ) -> Result<Vec<ChunkResult>, EngineError> {
        let start = first * self.chunk_size;
        let end = (last * self.chunk_size).min(self.size);
        let map = self.source.allocation(start, end - start)?;
        let n = (last - first) as usize;
        while self.bufs.len() < n {
            self.bufs.push(Vec::new());
        }
        // Per chunk: its length and whether any of it is allocated.
        let mut has_data = vec![false; n];
        // Read requests: (disk offset, len, chunk slot, offset within the chunk).
        let mut segments: Vec<(u64, u64, usize, usize)> = Vec::new();
        for (slot, buf) in self.bufs.iter_mut().enumerate().take(n) {
            let c_start = start + slot as u64 * self.chunk_size;
            let c_end = (c_start + self.chunk_size).min(end);
            // Size the buffer without clearing it; only the gaps between data extents are
            // zeroed below, the rest is overwritten by the reads.
            buf.resize((c_end - c_start) as usize, 0);
            let mut filled = c_start;
            for e in map.iter().filter(|e| e.kind == ExtentKind::Data) {
                let s = e.offset.max(c_start);
                let t = e.end().min(c_end);
                if s < t {
                    has_data[slot] = true;
                    buf[(filled - c_start) as usize..(s - c_start) as usize].fill(0);
                    segments.push((s, t - s, slot, (s - c_start) as usize));
                    filled = t;
                }
            }
            if has_data[slot] {
                buf[(filled - c_start) as usize..].fill(0);
            }
        }
        // Carve disjoint mutable slices out of the chunk buffers for one read_many call.
        {
            let mut reqs: Vec<ReadRequest<'_>> = Vec::with_capacity(segments.len());
            let mut rest: Vec<Option<&mut [u8]>> =
                self.bufs.iter_mut().take(n).map(|b| Some(b.as_mut_slice())).collect();
            let mut consumed = vec![0usize; n];
            for &(offset, len, slot, within) in &segments {
                let tail = rest[slot].take().expect("segments of a chunk are in order");
                let (_, tail) = tail.split_at_mut(within - consumed[slot]);
                let (this, after) = tail.split_at_mut(len as usize);
                consumed[slot] = within + len as usize;
                rest[slot] = Some(after);
                reqs.push(ReadRequest { offset, buf: this });
            }
            if !reqs.is_empty() {
                self.source.read_many(&mut reqs)?;
            }
        }
        let read: u64 = segments.iter().map(|s| s.1).sum();
        bytes_read.fetch_add(read, Ordering::Relaxed);

        let mut out = Vec::with_capacity(n);
        for (slot, &has) in has_data.iter().enumerate() {
            let buf = &self.bufs[slot];
            let index = first + slot as u64;
            let result = if !has || store::is_all_zero(buf) {
                chunks_zero.fetch_add(1, Ordering::Relaxed);
                ChunkResult { index, digest: Digest::ZERO, encoded: None }
            } else {
                // The store's chunk id: keyed blake3 in an encrypted store, sealed here on
                // the worker thread so that encryption runs in parallel, like compression.
                let keys = self.store.keyring();
                let digest = keys.digest(buf);
                let encoded = if self.store.contains(&digest)? {
                    None
                } else {
                    Some(self.encoder.encode_for(keys, digest, RecordKind::Data, buf)?)
                };
                ChunkResult { index, digest, encoded }
            };
            progress.advance(buf.len() as u64);
            out.push(result);
        }
        Ok(out)
    }
}

/// Verify the whole store incrementally: only packs not scanned clean within
/// `opts.skip_verified_within_s`, at most `opts.max_packs` of them (see
/// `Store::verify_store_with`).
pub fn verify_incremental(
    store: &Store,
    opts: &store::VerifyOptions,
    threads: usize,
    progress: &dyn Progress,
) -> Result<store::VerifyReport, EngineError> {
    let threads = default_threads(threads);
    let advance = |n: u64| progress.advance(n);
    let cancelled = || progress.cancelled();
    progress.start("verify", store.usage()?.pack_bytes);
    let report = store.verify_store_with(opts, threads, &advance, &cancelled)?;
    progress.finish();
    Ok(report)
}

/// Verify `spec` (`NAME` or `NAME@ID`), or the whole store when `None`.
pub fn verify(
    store: &Store,
    spec: Option<&str>,
    threads: usize,
    progress: &dyn Progress,
) -> Result<store::VerifyReport, EngineError> {
    let threads = default_threads(threads);
    let advance = |n: u64| progress.advance(n);
    let cancelled = || progress.cancelled();
    let report = match spec {
        Some(spec) => {
            let point = store.find(spec)?;
            progress.start("verify", point.disks.iter().map(|d| d.size).sum());
            store.verify_points_with(&[point], threads, &advance, &cancelled)?
        }
        None => {
            progress.start("verify", store.usage()?.pack_bytes);
            store.verify_store_with(&store::VerifyOptions::default(), threads, &advance, &cancelled)?
        }
    };
    progress.finish();
    Ok(report)
}

#[cfg(test)]
mod error_kind_tests {
    use std::io;

    use super::*;

    fn source_io(kind: io::ErrorKind) -> EngineError {
        EngineError::Source(SourceError::Io { what: "nfs://nas/vol/a.raw".into(), source: io::Error::new(kind, "x") })
    }

    #[test]
    fn dropped_connections_timeouts_and_servers_that_are_down_are_transient() {
        for k in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::TimedOut,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
        ] {
            assert_eq!(source_io(k).kind(), ErrorKind::Transient, "{k:?}");
        }
        assert_eq!(EngineError::Store(StoreError::Busy("a GC runs".into())).kind(), ErrorKind::Transient);
    }

    #[test]
    fn missing_files_corrupt_images_and_refusals_are_permanent() {
        let missing = EngineError::Source(SourceError::NotFound { path: "/srv/a.raw".into() });
        let corrupt =
            EngineError::Source(SourceError::Corrupt { what: "a.qcow2".into(), offset: 0, detail: "x".into() });
        // The NFS and iSCSI adapters mark what is not transient as `Other`.
        for e in [missing, corrupt, source_io(io::ErrorKind::Other), source_io(io::ErrorKind::PermissionDenied)] {
            assert_eq!(e.kind(), ErrorKind::Permanent, "{e}");
        }
        assert_eq!(EngineError::Store(StoreError::DiskFull { path: "/s".into() }).kind(), ErrorKind::Permanent);
        assert_eq!(EngineError::Invalid("x".into()).kind(), ErrorKind::Permanent);
    }

    #[test]
    fn cancels_are_cancelled_whichever_layer_stopped() {
        assert_eq!(EngineError::Cancelled.kind(), ErrorKind::Cancelled);
        assert_eq!(EngineError::Store(StoreError::Cancelled).kind(), ErrorKind::Cancelled);
        assert_eq!(tape::TapeError::from(EngineError::Cancelled).kind(), ErrorKind::Cancelled);
    }
}
