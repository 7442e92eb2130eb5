//! Restore a disk of a restore point to a raw file, a block device or a qcow2 file.
//!
//! A new file is written under a temporary name next to the target (`.NAME.rackvault-partial`)
//! and renamed into place only after it is complete and `fsync`ed, so an interrupted restore
//! never leaves a plausible but incomplete image under the requested name.
//!
//! The restore holds an exclusive `flock` on its partial file for as long as it writes it, so
//! a partial file whose lock can be taken belongs to a restore that died (killed, crashed,
//! power cut). A restore into a directory first removes such stale `.*.rackvault-partial`
//! files there and reports the bytes freed; files still locked by a running restore are left
//! alone, and a second restore to the same target is refused while the first runs.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use blocksource::ReadRequest;
use serde::Serialize;
use store::{Digest, DiskIndex, RestorePoint, Store};

use crate::{default_threads, open_source, EngineError, Progress};

/// Kick off writeback after this many bytes, so the final fsync is short.
const WRITEBACK_EVERY: u64 = 64 << 20;

/// Chunks queued between the tree walker and the workers.
const QUEUE_DEPTH: usize = 64;

/// Output format of a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreFormat {
    Raw,
    Qcow2,
}

/// Settings of one restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub to: PathBuf,
    pub format: RestoreFormat,
    /// Read the result back and check every chunk against its digest.
    pub verify: bool,
    /// Overwrite an existing regular file.
    pub force: bool,
    /// Which disk of the restore point (index); 0 for single-disk points.
    pub disk: usize,
    pub threads: usize,
    /// Read packs ahead in tree order (see `store::Readahead`); off only to measure it.
    pub read_ahead: bool,
}

/// What a restore did; the `--json` output of `rackvault restore`.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub point: String,
    pub disk: String,
    pub to: String,
    pub format: RestoreFormat,
    pub bytes_logical: u64,
    pub bytes_written: u64,
    pub chunks: u64,
    pub chunks_zero: u64,
    pub duration_s: f64,
    pub verified: bool,
    /// Partial files of dead restores removed from the target's directory, and their size.
    pub stale_partials_removed: u64,
    pub stale_partial_bytes_freed: u64,
}

/// Where restored chunks go.
enum Sink {
    /// pwrite at the chunk's offset; `write_zeros` for block devices, whose old contents must
    /// be overwritten.
    Raw { file: File, write_zeros: bool },
    /// The single qcow2 writer, fed through a lock (it lays clusters out in arrival order).
    Qcow2(Mutex<QcowAssembler>),
}

/// Feeds a [`qcow2::Qcow2Writer`] whole clusters even when chunks are smaller than clusters.
struct QcowAssembler {
    writer: qcow2::Qcow2Writer,
    cluster: u64,
    size: u64,
    /// Partly received clusters: cluster index → (bytes, bytes received).
    partial: std::collections::HashMap<u64, (Vec<u8>, u64)>,
}

impl QcowAssembler {
    fn put(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if offset.is_multiple_of(self.cluster)
            && ((data.len() as u64).is_multiple_of(self.cluster) || offset + data.len() as u64 == self.size)
        {
            return self.writer.write_at(offset, data);
        }
        // A chunk smaller than a cluster: assemble the cluster first.
        let idx = offset / self.cluster;
        let c_start = idx * self.cluster;
        let c_len = self.cluster.min(self.size - c_start);
        let entry = self.partial.entry(idx).or_insert_with(|| (vec![0u8; c_len as usize], 0));
        let within = (offset - c_start) as usize;
        entry.0[within..within + data.len()].copy_from_slice(data);
        entry.1 += data.len() as u64;
        if entry.1 == c_len {
            let (buf, _) = self.partial.remove(&idx).expect("entry exists");
            self.writer.write_at(c_start, &buf)?;
        }
        Ok(())
    }
}

/// Restore disk `opts.disk` of `point` from `store`.
pub fn restore(
    store: &Store,
    point: &RestorePoint,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport, EngineError> {
    let started = Instant::now();
    let disk = point.disks.get(opts.disk).ok_or_else(|| {
        EngineError::Invalid(format!(
            "restore point {} has {} disk(s); there is no disk {}",
            point.spec(),
            point.disks.len(),
            opts.disk
        ))
    })?;
    // One more worker than cores: buffered writes to one file serialise on its inode lock, and
    // a spare worker decompresses meanwhile.
    let threads = if opts.threads > 0 { opts.threads } else { default_threads(0) + 1 };
    let target = Target::prepare(&opts.to, opts.format, opts.force)?;
    let sink = match opts.format {
        RestoreFormat::Raw => {
            target
                .file
                .set_len(disk.size)
                .or_else(|e| if target.is_block_device { Ok(()) } else { Err(e) })
                .map_err(|e| target.err(e))?;
            Sink::Raw { file: target.file.try_clone().map_err(|e| target.err(e))?, write_zeros: target.is_block_device }
        }
        RestoreFormat::Qcow2 => {
            let cluster_bits = disk.chunk_size.trailing_zeros().clamp(16, 21);
            let writer = qcow2::Qcow2Writer::create(
                target.file.try_clone().map_err(|e| target.err(e))?,
                disk.size,
                cluster_bits,
            )
            .map_err(|e| target.err(e))?;
            Sink::Qcow2(Mutex::new(QcowAssembler {
                writer,
                cluster: 1 << cluster_bits,
                size: disk.size,
                partial: Default::default(),
            }))
        }
    };
    progress.start("restore", disk.size);
    let bytes_written = AtomicU64::new(0);
    // Bytes written since writeback was last kicked.
    let unflushed = AtomicU64::new(0);
    // Small chunks feeding a qcow2 writer must all arrive so that clusters complete.
    let send_zeros = match &sink {
        Sink::Raw { write_zeros, .. } => *write_zeros,
        Sink::Qcow2(a) => (disk.chunk_size as u64) < a.lock().expect("qcow2 lock").cluster,
    };
    let chunks = ChunkFeed { with_zeros: send_zeros, read_data: true, read_ahead: opts.read_ahead };
    let zero_chunks = for_each_chunk(store, disk, threads, chunks, progress, |index, digest, data| {
        let offset = index * disk.chunk_size as u64;
        let len = (disk.chunk_size as u64).min(disk.size - offset) as usize;
        let zeros;
        let bytes: &[u8] = if digest.is_zero() {
            zeros = vec![0u8; len];
            &zeros
        } else {
            data
        };
        match &sink {
            Sink::Raw { file, .. } => {
                file.write_all_at(bytes, offset).map_err(|e| target.err(e))?;
                if unflushed.fetch_add(bytes.len() as u64, Ordering::Relaxed) + bytes.len() as u64 >= WRITEBACK_EVERY {
                    unflushed.store(0, Ordering::Relaxed);
                    uringio::start_writeback(file);
                }
            }
            Sink::Qcow2(a) => a.lock().expect("qcow2 lock").put(offset, bytes).map_err(|e| target.err(e))?,
        }
        if !digest.is_zero() {
            bytes_written.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        progress.advance(len as u64);
        Ok(())
    })?;
    match sink {
        Sink::Raw { file, .. } => file.sync_all().map_err(|e| target.err(e))?,
        Sink::Qcow2(a) => {
            let a = a.into_inner().expect("qcow2 lock");
            debug_assert!(a.partial.is_empty(), "every cluster completed");
            a.writer.finish().map_err(|e| target.err(e))?;
        }
    }
    target.publish()?;
    progress.finish();
    let mut verified = false;
    if opts.verify {
        verify_output(store, disk, &opts.to, threads, progress)?;
        verified = true;
    }
    Ok(RestoreReport {
        point: point.spec(),
        disk: disk.label.clone(),
        to: opts.to.display().to_string(),
        format: opts.format,
        bytes_logical: disk.size,
        bytes_written: bytes_written.load(Ordering::Relaxed),
        chunks: disk.chunks,
        chunks_zero: zero_chunks,
        duration_s: started.elapsed().as_secs_f64(),
        verified,
        stale_partials_removed: target.stale.files,
        stale_partial_bytes_freed: target.stale.bytes,
    })
}

/// What [`for_each_chunk`] hands to its callback.
#[derive(Debug, Clone, Copy)]
struct ChunkFeed {
    /// Also call back for all-zero chunks (with empty data).
    with_zeros: bool,
    /// Read and decompress each chunk from the store; otherwise the data is empty and only
    /// the digest is given.
    read_data: bool,
    /// Name the chunks to the store's read-ahead as the walker queues them.
    read_ahead: bool,
}

/// Walk `disk`'s tree on one thread and hand each chunk to `f` on `threads` workers, as
/// `feed` says. Stops at the first error. Returns the number of zero chunks.
fn for_each_chunk(
    store: &Store,
    disk: &DiskIndex,
    threads: usize,
    feed: ChunkFeed,
    progress: &dyn Progress,
    f: impl Fn(u64, &Digest, &[u8]) -> Result<(), EngineError> + Sync,
) -> Result<u64, EngineError> {
    let with_zeros = feed.with_zeros;
    let mut zero_chunks = 0u64;
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<EngineError>> = Mutex::new(None);
    let (tx, rx) = crossbeam_channel::bounded::<(u64, Digest)>(QUEUE_DEPTH);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let rx = rx.clone();
            let (stop, failure, f) = (&stop, &failure, &f);
            s.spawn(move || {
                let (mut scratch, mut out) = (Vec::new(), Vec::new());
                for (index, digest) in rx {
                    if stop.load(Ordering::Relaxed) {
                        continue;
                    }
                    let r = if digest.is_zero() || !feed.read_data {
                        f(index, &digest, &[])
                    } else {
                        // The record checksum guards the stored bytes; a full re-hash is
                        // what `verify` and `restore --verify` are for.
                        match store.read_chunk_checked(
                            &digest,
                            &mut scratch,
                            &mut out,
                            store::pack::ReadCheck::Checksum,
                        ) {
                            Ok(_) => f(index, &digest, &out),
                            Err(e) => Err(e.into()),
                        }
                    };
                    if let Err(e) = r {
                        stop.store(true, Ordering::Relaxed);
                        failure.lock().expect("failure slot").get_or_insert(e);
                    }
                }
            });
        }
        drop(rx);
        // The walker runs up to the channel's depth ahead of the readers: what it names to
        // the read-ahead is in the page cache (or on its way) when they get to it.
        let mut ahead = (feed.read_data && feed.read_ahead).then(|| store.readahead());
        let mut index = 0u64;
        for entry in store.walk(disk) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if progress.cancelled() {
                stop.store(true, Ordering::Relaxed);
                failure.lock().expect("failure slot").get_or_insert(EngineError::Cancelled);
                break;
            }
            match entry {
                Ok(d) => {
                    zero_chunks += d.is_zero() as u64;
                    if d.is_zero() && !with_zeros {
                        // Skipped here, so count its bytes as done here.
                        let offset = index * disk.chunk_size as u64;
                        progress.advance((disk.chunk_size as u64).min(disk.size - offset));
                    }
                    if let (Some(ahead), false) = (ahead.as_mut(), d.is_zero()) {
                        ahead.want(&d);
                    }
                    if (with_zeros || !d.is_zero()) && tx.send((index, d)).is_err() {
                        break;
                    }
                    index += 1;
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    failure.lock().expect("failure slot").get_or_insert(e.into());
                    break;
                }
            }
        }
        if !stop.load(Ordering::Relaxed) && index != disk.chunks {
            failure.lock().expect("failure slot").get_or_insert(EngineError::Invalid(format!(
                "index tree of {} holds {index} chunks, the restore point says {}; run `rackvault verify`",
                disk.label, disk.chunks
            )));
        }
        drop(ahead);
        drop(tx);
    });
    match failure.into_inner().expect("failure slot") {
        Some(e) => Err(e),
        None => Ok(zero_chunks),
    }
}

/// Read the restored image back (decoding qcow2 if that is what was written) and compare
/// every chunk with the digest in the index tree.
fn verify_output(
    store: &Store,
    disk: &DiskIndex,
    path: &Path,
    threads: usize,
    progress: &dyn Progress,
) -> Result<(), EngineError> {
    let out = open_source(&path.display().to_string())?;
    if out.size() < disk.size {
        return Err(EngineError::Target {
            path: path.display().to_string(),
            detail: format!("restored image is {} bytes, expected {}", out.size(), disk.size),
        });
    }
    progress.start("verify", disk.size);
    let cs = disk.chunk_size as u64;
    let mismatch: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    // Here zero chunks must be checked too: walk with zeros and ignore the stored data.
    let chunks = ChunkFeed { with_zeros: true, read_data: false, read_ahead: false };
    for_each_chunk(store, disk, threads, chunks, progress, |index, digest, _| {
        let offset = index * cs;
        let len = cs.min(disk.size - offset) as usize;
        let mut buf = vec![0u8; len];
        out.read_many(&mut [ReadRequest { offset, buf: &mut buf }])?;
        let ok = if digest.is_zero() { store::is_all_zero(&buf) } else { store.keyring().digest(&buf) == *digest };
        if !ok {
            mismatch.lock().expect("mismatch list").push(offset);
        }
        progress.advance(len as u64);
        Ok(())
    })?;
    progress.finish();
    let mismatch = mismatch.into_inner().expect("mismatch list");
    if let Some(first) = mismatch.iter().min() {
        return Err(EngineError::Target {
            path: path.display().to_string(),
            detail: format!(
                "verify after restore failed: {} chunk(s) differ from the backup, first at byte offset {first}; the target device may be faulty",
                mismatch.len()
            ),
        });
    }
    Ok(())
}

/// The file being restored into.
struct Target {
    /// The requested path.
    path: PathBuf,
    /// Where we write: a temporary sibling for new files, the path itself for devices.
    write_path: PathBuf,
    file: File,
    is_block_device: bool,
    /// Stale partial files removed before this restore started.
    stale: StaleCleanup,
}

/// What [`remove_stale_partials`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StaleCleanup {
    pub files: u64,
    pub bytes: u64,
}

const PARTIAL_SUFFIX: &str = ".rackvault-partial";

/// Remove the `.*.rackvault-partial` files in `dir` whose exclusive lock can be taken: their
/// restore died. Files locked by a running restore are kept. Best effort: a file that cannot
/// be opened or removed is left for the next restore.
pub(crate) fn remove_stale_partials(dir: &Path) -> StaleCleanup {
    let mut done = StaleCleanup::default();
    let Ok(entries) = std::fs::read_dir(dir) else { return done };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with('.') || !name.ends_with(PARTIAL_SUFFIX) || name.len() <= 1 + PARTIAL_SUFFIX.len() {
            continue;
        }
        let path = entry.path();
        // Never follow a symlink or touch anything but a regular file.
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_file() => {}
            _ => continue,
        }
        let Ok(file) = File::open(&path) else { continue };
        if file.try_lock().is_err() {
            continue; // a running restore holds it
        }
        // The name must still be this file: a new restore may have replaced it meanwhile.
        let same = match (file.metadata(), std::fs::symlink_metadata(&path)) {
            (Ok(a), Ok(b)) => {
                use std::os::unix::fs::MetadataExt;
                a.dev() == b.dev() && a.ino() == b.ino()
            }
            _ => false,
        };
        if !same {
            continue;
        }
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if std::fs::remove_file(&path).is_ok() {
            done.files += 1;
            done.bytes += size;
        }
    }
    done
}

/// Open (creating) the partial file `path` and take its exclusive lock, retrying briefly if a
/// cleaner holds it; truncate it only once it is ours. Refuses if a running restore holds it.
fn open_partial(path: &Path) -> Result<File, String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    for _ in 0..50 {
        // A restored disk holds the guest's data: readable by the restoring user only.
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(format!("cannot lock {}: {e}", path.display())),
        }
        // A cleaner may have removed the name between our open and our lock: start over.
        let same = match (file.metadata(), std::fs::symlink_metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if !same {
            continue;
        }
        file.set_len(0).map_err(|e| format!("cannot truncate {}: {e}", path.display()))?;
        return Ok(file);
    }
    Err(format!(
        "another restore is writing {} (it holds its lock); wait for it to finish, or restore to another path",
        path.display()
    ))
}

impl Target {
    fn prepare(path: &Path, format: RestoreFormat, force: bool) -> Result<Target, EngineError> {
        let shown = path.display().to_string();
        let err = |detail: String| EngineError::Target { path: shown.clone(), detail };
        match std::fs::metadata(path) {
            Ok(m) if m.file_type().is_block_device() => {
                // Checked before anything is opened for writing: the device stays untouched.
                if format == RestoreFormat::Qcow2 {
                    return Err(EngineError::Invalid(
                        "a qcow2 image cannot be restored onto a block device; use --format raw".into(),
                    ));
                }
                let file = File::options().write(true).read(true).open(path).map_err(|e| err(e.to_string()))?;
                return Ok(Target {
                    path: path.into(),
                    write_path: path.into(),
                    file,
                    is_block_device: true,
                    stale: StaleCleanup::default(),
                });
            }
            Ok(m) if m.is_dir() => return Err(err("is a directory; give the path of the image file to create".into())),
            Ok(_) if !force => {
                return Err(err("already exists; choose another path, or pass --force to overwrite it".into()))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e.to_string())),
        }
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = path.file_name().ok_or_else(|| err("has no file name".into()))?;
        let write_path = parent.join(format!(".{}{PARTIAL_SUFFIX}", name.to_string_lossy()));
        let stale = remove_stale_partials(parent);
        let file = open_partial(&write_path).map_err(err)?;
        Ok(Target { path: path.into(), write_path, file, is_block_device: false, stale })
    }

    fn err(&self, e: std::io::Error) -> EngineError {
        let hint = match e.kind() {
            std::io::ErrorKind::StorageFull => "; the target filesystem is full, free space or restore elsewhere",
            _ => "",
        };
        EngineError::Target { path: self.write_path.display().to_string(), detail: format!("{e}{hint}") }
    }

    /// Move a finished file into place and make the rename durable.
    fn publish(&self) -> Result<(), EngineError> {
        if self.write_path == self.path {
            return Ok(());
        }
        std::fs::rename(&self.write_path, &self.path).map_err(|e| self.err(e))?;
        let parent = self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(parent).and_then(|d| d.sync_all()).map_err(|e| self.err(e))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // Remove a temporary file left by a failed restore.
        if self.write_path != self.path && self.write_path.exists() {
            let _ = std::fs::remove_file(&self.write_path);
        }
    }
}

/// The file name stem a restore of a whole restore point gives disk `label`, so that a disk
/// restored from disk and one restored from tape land under the same name
/// (`scsi0:0` -> `scsi0-0`).
pub fn disk_file_name(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_partial_files_of_dead_restores_are_removed_and_locked_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(".dead.img.rackvault-partial");
        let live = dir.path().join(".live.img.rackvault-partial");
        let other = dir.path().join("keep.img");
        std::fs::write(&dead, vec![7u8; 10_000]).unwrap();
        std::fs::write(&live, vec![7u8; 5_000]).unwrap();
        std::fs::write(&other, b"not a partial file").unwrap();
        // A running restore: its lock is held (flock locks conflict between open files).
        let holder = open_partial(&live).unwrap();
        std::fs::write(&live, vec![1u8; 5_000]).unwrap();

        let done = remove_stale_partials(dir.path());
        assert_eq!(done, StaleCleanup { files: 1, bytes: 10_000 });
        assert!(!dead.exists(), "the dead restore's partial file stays");
        assert!(live.exists(), "a running restore's partial file was removed");
        assert!(other.exists());

        // A second restore to the same target is refused while the first holds the lock.
        let err = open_partial(&live).unwrap_err();
        assert!(err.contains("another restore"), "{err}");
        drop(holder);
        // Once that restore is gone, its file is stale too.
        assert_eq!(remove_stale_partials(dir.path()), StaleCleanup { files: 1, bytes: 5_000 });
    }

    #[test]
    fn a_restore_removes_stale_partials_beside_its_target_and_reports_them() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(".old.img.rackvault-partial");
        std::fs::write(&stale, vec![0u8; 4096]).unwrap();
        let target = Target::prepare(&dir.path().join("new.img"), RestoreFormat::Raw, false).unwrap();
        assert_eq!(target.stale, StaleCleanup { files: 1, bytes: 4096 });
        assert!(!stale.exists());
        // The new restore's own partial file is locked while it writes.
        assert!(File::open(&target.write_path).unwrap().try_lock().is_err());
        drop(target);
        assert!(!dir.path().join(".new.img.rackvault-partial").exists());
    }
}
