//! The destage job: copies restore points from the staging store to a pool's media set.
//!
//! ```text
//!  reader thread                                     calling thread (tape writer)
//!  ┌────────────────────────────────────┐  bounded   ┌────────────────────────────────────┐
//!  │ store.read_encoded(digest)         │──channel──▶│ pack records into blocks, write    │
//!  │ (stored bytes, still compressed)   │ read-ahead │ span at early warning (SetWriter)  │
//!  └────────────────────────────────────┘            └────────────────────────────────────┘
//! ```
//! Chunks are copied as the store holds them (zstd or raw): no recompression. The
//! read-ahead channel holds up to [`DestageOptions::read_ahead`] bytes so a drive never
//! waits on the disk tier; every time the writer found the channel empty is counted and
//! reported (`drive_waits`), the operator's evidence that the drive streamed.
//!
//! Per media set, a chunk is written once: later jobs reference it where it is, unless the
//! pool bounds how many cartridges one restore may need (`max_restore_tapes`), in which case
//! a point whose chunks would span too many earlier cartridges gets all of its chunks
//! written again.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use store::{Digest, RestorePoint, Store, TreeWalker};

use super::catalog::{PointCopy, TapeCatalog};
use super::format::{self, ArchiveKind, RecordHeader, TapeRecordKind};
use super::library::Library;
use super::writer::SetWriter;
use super::{now_unix, TapeError};
use crate::Progress;

/// Settings of a destage job.
#[derive(Debug, Clone)]
pub struct DestageOptions {
    pub pool: String,
    /// Tape block size; clipped to what the drive takes, never below 256 KiB.
    pub block_size: usize,
    /// Bytes of chunks read ahead of the drive.
    pub read_ahead: usize,
}

impl DestageOptions {
    pub fn new(pool: &str) -> DestageOptions {
        DestageOptions { pool: pool.into(), block_size: format::MAX_BLOCK, read_ahead: 256 << 20 }
    }
}

/// What a destage job did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DestageReport {
    pub pool: String,
    pub media_set: String,
    pub points: Vec<String>,
    /// Cartridges written, in order.
    pub tapes: Vec<String>,
    pub chunks_written: u64,
    /// Chunks the set already held.
    pub chunks_deduplicated: u64,
    pub bytes_to_tape: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
    /// Times the drive had to wait for the disk tier (0: it streamed the whole job).
    pub drive_waits: u64,
    pub drive_wait_seconds: f64,
    pub cleanings: Vec<String>,
    /// Job log lines.
    pub log: Vec<String>,
}

/// The chunks of a point: index-tree nodes (for the point archive) and data chunks in first-
/// use order (files' contents included), without the all-zero marker.
fn point_chunks(store: &Store, p: &RestorePoint) -> Result<(Vec<Digest>, Vec<Digest>), TapeError> {
    let mut nodes = Vec::new();
    let mut data = Vec::new();
    let mut seen = HashSet::new();
    for disk in &p.disks {
        let mut scratch = Vec::new();
        let fetched = std::cell::RefCell::new(Vec::new());
        let walker = TreeWalker::new(disk.root, disk.height, |d| {
            fetched.borrow_mut().push(*d);
            let mut out = Vec::new();
            store.read_chunk(d, &mut scratch, &mut out)?;
            Ok(out)
        });
        for leaf in walker {
            let leaf = leaf?;
            if !leaf.is_zero() && seen.insert(leaf) {
                data.push(leaf);
            }
        }
        nodes.extend(fetched.into_inner());
    }
    for f in &p.files {
        if seen.insert(f.digest) {
            data.push(f.digest);
        }
    }
    let mut node_seen = HashSet::new();
    nodes.retain(|n| node_seen.insert(*n));
    Ok((nodes, data))
}

/// Copies `points` from `store` to the media set chosen by `opts.pool`'s policy.
pub fn destage(
    store: &Store,
    cat: &TapeCatalog,
    lib: &mut Library,
    points: &[RestorePoint],
    opts: &DestageOptions,
    progress: &dyn Progress,
) -> Result<DestageReport, TapeError> {
    if store.keyring().is_encrypted() {
        // The tape format carries records with plain blake3 ids and readable manifests; an
        // encrypted store's sealed records need a tape format that records their cipher.
        return Err(TapeError::Invalid(
            "destaging an encrypted store to tape is not supported yet (its records are sealed and the tape \
             format carries unencrypted records only); keep this store on disk or replicate it"
                .into(),
        ));
    }
    if let Some(p) = points.iter().find(|p| p.origin.as_ref().is_some_and(|o| o.without_key)) {
        // Its records are sealed under another store's key, with ids this store cannot check.
        return Err(TapeError::Invalid(format!(
            "{} is a replica kept without its source's key; destaging such replicas to tape is not supported \
             yet: destage it on its source appliance",
            p.spec()
        )));
    }
    let started = Instant::now();
    let lines = std::sync::Mutex::new(Vec::<String>::new());
    let log = |s: String| lines.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    let pool = cat.pool(&opts.pool)?;
    let block_size = opts.block_size.clamp(format::MIN_STREAM_BLOCK, format::MAX_BLOCK);

    // Plan: which chunks each point needs and which the set lacks.
    let mut plans = Vec::new();
    let mut total_bytes = 0u64;
    for p in points {
        let (nodes, data) = point_chunks(store, p)?;
        plans.push((p, nodes, data));
    }
    let mut w = SetWriter::open(cat, lib, pool.clone(), block_size, &log)?;
    let mut to_write: Vec<Digest> = Vec::new();
    let mut queued = HashSet::new();
    let mut deduped = 0u64;
    for (p, _, data) in &plans {
        let mut tapes = BTreeSet::new();
        let mut present = Vec::new();
        for d in data {
            if let Some(l) = w.existing(d)? {
                tapes.insert(l.seq);
                present.push(*d);
            }
        }
        let rewrite = pool.max_restore_tapes.is_some_and(|max| tapes.len() as u32 + 1 > max);
        if rewrite {
            log(format!(
                "{}: its chunks already on tape span {} cartridges; pool {} allows {} per restore, so all of its \
                 chunks are written again",
                p.spec(),
                tapes.len(),
                pool.name,
                pool.max_restore_tapes.unwrap_or(0)
            ));
        }
        for d in data {
            let on_set = !rewrite && present.contains(d);
            if on_set {
                deduped += 1;
            } else if queued.insert(*d) {
                to_write.push(*d);
                total_bytes += store.locate(d)?.map(|l| u64::from(l.stored_len)).unwrap_or(0);
            }
        }
    }
    log(format!(
        "{} chunk(s) to write ({} MiB stored), {} already on the media set",
        to_write.len(),
        total_bytes >> 20,
        deduped
    ));
    progress.start("destage", total_bytes);

    let result = write_job(store, &mut w, &plans, &to_write, opts, progress);
    let (waits, wait_time, chunks_written) = match result {
        Ok(v) => v,
        Err(e) => {
            w.abort();
            return Err(e);
        }
    };
    let (set, stats) = w.finish()?;
    progress.finish();
    let secs = started.elapsed().as_secs_f64();
    let lines = lines.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(DestageReport {
        pool: pool.name,
        media_set: set.set_id,
        points: points.iter().map(|p| p.spec()).collect(),
        tapes: stats.tapes,
        chunks_written,
        chunks_deduplicated: deduped,
        bytes_to_tape: stats.bytes,
        seconds: secs,
        mb_per_s: stats.bytes as f64 / 1e6 / secs.max(1e-9),
        drive_waits: waits,
        drive_wait_seconds: wait_time.as_secs_f64(),
        cleanings: stats.cleanings,
        log: lines,
    })
}

type Read = Result<store::EncodedChunk, TapeError>;

fn write_job(
    store: &Store,
    w: &mut SetWriter<'_>,
    plans: &[(&RestorePoint, Vec<Digest>, Vec<Digest>)],
    to_write: &[Digest],
    opts: &DestageOptions,
    progress: &dyn Progress,
) -> Result<(u64, Duration, u64), TapeError> {
    let mut waits = 0u64;
    let mut wait_time = Duration::ZERO;
    let mut written = 0u64;
    // Capacity in chunks: read_ahead over a typical 256 KiB chunk.
    let cap = (opts.read_ahead / (256 << 10)).max(4);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let stop = &stop;
    std::thread::scope(|scope| -> Result<(), TapeError> {
        let (tx, rx) = crossbeam_channel::bounded::<Read>(cap);
        scope.spawn(move || {
            let mut scratch = Vec::new();
            for d in to_write {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let r = store.read_encoded(d, &mut scratch).map_err(TapeError::from);
                if tx.send(r).is_err() {
                    break;
                }
            }
        });
        let result = (|| -> Result<(), TapeError> {
            if !to_write.is_empty() {
                let mut a = w.begin(ArchiveKind::Chunks)?;
                for i in 0..to_write.len() {
                    if progress.cancelled() {
                        // `destage` aborts the set writer: the cartridge keeps what it had.
                        return Err(crate::EngineError::Cancelled.into());
                    }
                    let chunk = match rx.try_recv() {
                        Ok(c) => c,
                        Err(_) => {
                            let t = Instant::now();
                            let c = rx.recv().map_err(|_| TapeError::Catalog("store reader stopped".into()))?;
                            // The first chunk is the pipeline filling, not the drive starving.
                            if i > 0 {
                                waits += 1;
                                wait_time += t.elapsed();
                            }
                            c
                        }
                    }?;
                    let kind = match chunk.kind {
                        store::RecordKind::Tree => TapeRecordKind::Tree,
                        _ => TapeRecordKind::Data,
                    };
                    let h = RecordHeader {
                        kind,
                        codec: chunk.codec,
                        raw_len: chunk.raw_len,
                        stored_len: chunk.payload.len() as u32,
                        digest: chunk.digest,
                    };
                    w.write_record(&mut a, &h, &chunk.payload, true)?;
                    written += 1;
                    progress.advance(chunk.payload.len() as u64);
                }
                w.end(a)?;
            }
            // One point archive per restore point: its index-tree nodes, then its manifest.
            let mut scratch = Vec::new();
            for (p, nodes, _) in plans {
                let mut a = w.begin(ArchiveKind::Point)?;
                for n in nodes {
                    let c = store.read_encoded(n, &mut scratch)?;
                    let h = RecordHeader {
                        kind: TapeRecordKind::Tree,
                        codec: c.codec,
                        raw_len: c.raw_len,
                        stored_len: c.payload.len() as u32,
                        digest: c.digest,
                    };
                    w.write_record(&mut a, &h, &c.payload, false)?;
                }
                let json = serde_json::to_vec(p).expect("restore point serialises");
                let h = RecordHeader {
                    kind: TapeRecordKind::Manifest,
                    codec: store::Codec::Raw,
                    raw_len: json.len() as u32,
                    stored_len: json.len() as u32,
                    digest: Digest::of(&json),
                };
                w.write_record(&mut a, &h, &json, false)?;
                let (barcode, file) = w.end(a)?;
                w.note_point(PointCopy {
                    set_id: String::new(),
                    barcode,
                    file,
                    written_unix: now_unix(),
                    point: (*p).clone(),
                });
            }
            Ok(())
        })();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(rx);
        result
    })?;
    Ok((waits, wait_time, written))
}
