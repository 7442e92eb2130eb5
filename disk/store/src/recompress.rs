//! The recompression pass: compression off the backup's critical path.
//!
//! ## Why
//! On a machine with fewer cores than a backup needs, zstd is most of a backup's CPU time
//! (76% of the cycles in the profile of issue 15) and paces the whole ingest. So a backup may
//! store data chunks raw ([`ChunkEncoder::deferring`]): only the entropy check runs, and a
//! chunk that may compress is counted in its pack's [`PackInfo::deferred_bytes`]. Later, out
//! of the backup window and at low priority, this pass rewrites every pack holding deferred
//! chunks with them compressed at the store's level. The store then ends up as a store
//! compressed inline would be (the same chunks, the same codec and level), and both kinds of
//! pack are readable at all times: every record names its codec.
//!
//! ## The order (the GC's repack, see `gc`)
//! 1. Under `gc.lock` (exclusive: no GC, verify or repair meanwhile) and a shared
//!    `writers.lock` (backups run alongside, as with a GC).
//! 2. For each pack with deferred bytes, oldest first: its needed records (index entries,
//!    and condemned entries a running backup may still rescue) are read, each checksum
//!    checked; a deferred chunk is decoded (opened with the store key if sealed) and checked
//!    against its id, compressed, and sealed again in an encrypted store. It stays raw if
//!    zstd does not save 1/16. The result is appended to a new pack in `tmp/`.
//! 3. The new pack is sealed as a backup's is (fsync, rename into `packs/`, fsync `packs/`);
//!    one LMDB transaction repoints the moved entries (only those still pointing at the old
//!    record), adds the new pack and moves the old ones to `gc_deleting`; then the old files
//!    are unlinked.
//!
//! `kill -9` at any moment leaves a consistent store, for the reasons the GC's repack does:
//! before step 3's transaction the old packs are untouched and indexed (the new pack, if it
//! reached `packs/`, is adopted at the next open as a duplicate and is garbage); after it,
//! the old packs are only deleted. A record whose content does not match its id is never
//! re-encoded: its pack is left as it is, for `verify` and `repair`.
//!
//! ## Backups first
//! With [`RecompressOptions::yield_to_backups`], the pass stops between packs as soon as a
//! backup session is registered, leaving the rest for its next run; the daemon also runs it
//! on a thread of the lowest CPU and I/O priority.

use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::gc::{GcProgress, RepackOut};
use crate::pack::{self, ChunkEncoder, Codec, EncodedChunk, ReadCheck, RecordHeader, RecordKind};
use crate::{ChunkLoc, Keyring, Store};

/// Tunables of one recompression pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecompressOptions {
    /// The zstd level deferred chunks are compressed at (the store's level).
    pub level: i32,
    /// Stop between packs when a backup starts (see the module docs).
    pub yield_to_backups: bool,
    /// Compressing workers; 0: one per core. (They inherit the calling thread's CPU and I/O
    /// priority.)
    pub threads: usize,
}

/// What a recompression pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecompressReport {
    pub level: i32,
    /// Packs holding deferred chunks when the pass started, and their deferred bytes.
    pub packs_pending: u64,
    pub deferred_bytes_before: u64,
    pub packs_rewritten: u64,
    /// Packs left alone because a record to copy is damaged (run `verify`, then `repair`).
    pub packs_skipped_damaged: u64,
    pub chunks_compressed: u64,
    /// Deferred chunks that zstd could not shrink by 1/16: kept raw, for good.
    pub chunks_left_raw: u64,
    /// Stored bytes of the deferred records read, and of what replaced them.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Pack bytes of the store before and after the pass.
    pub store_bytes_before: u64,
    pub store_bytes_after: u64,
    /// Deferred bytes left for the next pass (non-zero when it stopped early).
    pub deferred_bytes_after: u64,
    pub duration_s: f64,
    /// False when the pass stopped early; `stopped_because` says why.
    pub complete: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_because: Option<String>,
}

/// Compresses deferred records during a repack (one per pass), on `threads` workers.
pub(crate) struct Recompressor {
    encoders: Vec<ChunkEncoder>,
    stats: Counts,
}

/// What a pass did to the records it compressed.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    chunks_compressed: u64,
    chunks_left_raw: u64,
    bytes_in: u64,
    bytes_out: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.chunks_compressed += o.chunks_compressed;
        self.chunks_left_raw += o.chunks_left_raw;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
    }
}

/// Records a worker takes from a batch at a time.
const GROUP: usize = 4;

impl Recompressor {
    fn new(level: i32, threads: usize) -> Recompressor {
        Recompressor {
            encoders: (0..threads.max(1)).map(|_| ChunkEncoder::new(Some(level))).collect(),
            stats: Counts::default(),
        }
    }

    /// Compress the deferred records of `batch` (read from a pack: where it was, its header,
    /// the record) in place, clearing their deferral; the others are left as they are. The
    /// workers take a few records at a time, so random and text chunks spread evenly.
    pub(crate) fn compress_batch(
        &mut self,
        keys: &Keyring,
        batch: &mut [(ChunkLoc, RecordHeader, EncodedChunk)],
    ) -> std::result::Result<(), String> {
        let groups = Mutex::new(batch.chunks_mut(GROUP));
        let results: Vec<std::result::Result<Counts, String>> = std::thread::scope(|s| {
            let workers: Vec<_> = self
                .encoders
                .iter_mut()
                .map(|encoder| {
                    let groups = &groups;
                    s.spawn(move || {
                        let (mut plain, mut counts) = (Vec::new(), Counts::default());
                        loop {
                            let Some(group) = groups.lock().map_err(|_| "a worker panicked".to_string())?.next() else {
                                return Ok(counts);
                            };
                            for (_, header, chunk) in group.iter_mut().filter(|(_, _, c)| c.deferred) {
                                compress_one(encoder, keys, header, chunk, &mut plain, &mut counts)?;
                            }
                        }
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or_else(|_| Err("a worker panicked".into()))).collect()
        });
        for r in results {
            self.stats.add(r?);
        }
        Ok(())
    }
}

/// Replace the deferred record `chunk` (read from a pack, `header` its header) by its
/// compressed form if that saves enough, else keep it as it is stored; either way it is no
/// longer deferred. Its content is checked against its id first; a mismatch is an error and
/// nothing is re-encoded.
fn compress_one(
    encoder: &mut ChunkEncoder,
    keys: &Keyring,
    header: &RecordHeader,
    chunk: &mut EncodedChunk,
    plain: &mut Vec<u8>,
    counts: &mut Counts,
) -> std::result::Result<(), String> {
    pack::decode_record(keys, header, &chunk.payload, plain, ReadCheck::Digest)?;
    counts.bytes_in += (pack::RECORD_HEADER_LEN + chunk.payload.len()) as u64;
    let encoded = encoder.encode(header.digest, RecordKind::Data, plain);
    if encoded.codec == Codec::Zstd {
        counts.chunks_compressed += 1;
        *chunk = encoded.sealed_for(keys).map_err(|e| e.to_string())?;
    } else {
        counts.chunks_left_raw += 1;
    }
    chunk.deferred = false;
    counts.bytes_out += (pack::RECORD_HEADER_LEN + chunk.payload.len()) as u64;
    Ok(())
}

impl Store {
    /// Compress the chunks backups stored raw for later (see the module docs). `progress`
    /// counts deferred bytes done; `cancelled` is polled between packs.
    pub fn recompress(
        &self,
        opts: &RecompressOptions,
        progress: &dyn Fn(GcProgress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<RecompressReport> {
        let started = Instant::now();
        let _locks = self.repacker_locks()?;
        self.finish_gc_deletions()?;
        let mut report = RecompressReport { level: opts.level, complete: true, ..Default::default() };

        let (freeable, _) = self.freeable_now()?;
        let (needed, _, packs) = self.needed_by_pack(&freeable)?;
        report.store_bytes_before = packs.iter().map(|p| p.len).sum();
        let mut pending: Vec<_> = packs.iter().filter(|p| p.deferred_bytes > 0).collect();
        pending.sort_by_key(|p| p.number);
        report.packs_pending = pending.len() as u64;
        report.deferred_bytes_before = pending.iter().map(|p| p.deferred_bytes).sum();
        let total = report.deferred_bytes_before;
        progress(GcProgress { phase: "recompress", done: 0, total });

        let threads = match opts.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        };
        let mut r = Recompressor::new(opts.level, threads);
        let mut out: Option<RepackOut> = None;
        let mut done = 0;
        for info in pending {
            if cancelled() {
                report.stopped_because = Some("cancelled".into());
                break;
            }
            if opts.yield_to_backups && self.backup_running()? {
                report.stopped_because = Some("a backup started: the rest is left for the next pass".into());
                break;
            }
            let need = needed.get(&info.number).copied().unwrap_or(0);
            if need == 0 {
                // Wholly dead: the next GC deletes it; compressing it would be wasted work.
                continue;
            }
            match self.repack_into(info, need, &freeable, &mut out, Some(&mut r))? {
                true => report.packs_rewritten += 1,
                false => report.packs_skipped_damaged += 1,
            }
            if out
                .as_ref()
                .is_some_and(|o| o.writer.len() >= self.pack_target || o.moved.len() >= crate::gc::REPACK_BATCH)
            {
                if let Some(o) = out.take() {
                    self.finish_repack(o)?;
                }
            }
            done += info.deferred_bytes;
            progress(GcProgress { phase: "recompress", done, total });
        }
        if let Some(o) = out.take() {
            if o.sources.is_empty() {
                // Nothing was copied into it (every pack was skipped): drop the empty file.
                let path = o.writer.path().to_path_buf();
                drop(o);
                let _ = std::fs::remove_file(path);
            } else {
                self.finish_repack(o)?;
            }
        }
        report.complete = report.stopped_because.is_none();
        self.drop_freeable_condemned(&freeable)?;
        let rtxn = self.catalog.read()?;
        let after = self.pack_table_in(&rtxn)?;
        drop(rtxn);
        report.store_bytes_after = after.iter().map(|p| p.len).sum();
        report.deferred_bytes_after = after.iter().map(|p| p.deferred_bytes).sum();
        report.chunks_compressed = r.stats.chunks_compressed;
        report.chunks_left_raw = r.stats.chunks_left_raw;
        report.bytes_in = r.stats.bytes_in;
        report.bytes_out = r.stats.bytes_out;
        report.duration_s = started.elapsed().as_secs_f64();
        Ok(report)
    }
}
