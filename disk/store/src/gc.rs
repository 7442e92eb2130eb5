//! Garbage collection: mark, condemn, sweep; safe alongside running backups and `kill -9`.
//!
//! ## What is garbage
//! A chunk (data, tree node, manifest) that no restore point in the catalog references:
//! chunks of deleted or pruned points, and chunks that failed backups sealed but never
//! committed. Tombstones are always live (see the crate docs, "Deleting a restore point").
//!
//! ## The passes
//! 1. **Mark** (one LMDB read snapshot S). Walk the index tree of every point in S into a live
//!    set: tree nodes, manifests and tombstones go into an exact hash set, leaf chunks into a
//!    Bloom filter sized from the index (10 bits per chunk, 7 probes: about 1% false
//!    positives, 12 MiB at 10 M chunks). A subtree whose node is already marked is skipped,
//!    so an unchanged region shared by a hundred points is walked once: the cost scales with
//!    live *metadata*, not with chunks × points. A false positive only keeps a dead chunk for
//!    one more GC; the exact set for nodes is what makes skipping subtrees safe. Files' atime
//!    is never touched.
//! 2. **Condemn** (LMDB write transactions of at most 32 Ki index entries each, so memory
//!    stays bounded). Each transaction first marks the points committed since the last one,
//!    then moves every index entry of its batch that is unmarked *and* lies in a pack that
//!    already existed in S from `chunks` to `condemned`, tagged with a new generation G, and
//!    sets `meta.gc_generation = G` (every batch takes the next generation). From its commit
//!    on, no lookup finds those chunks, so new backups store their own copy. Chunks sealed
//!    after S are young and left for the next GC.
//! 3. **Sweep.** A condemned chunk may still be referenced by a backup that deduplicated
//!    against it before step 2 and has not committed yet. Such a chunk is *held*: it stays on
//!    disk until no such backup runs (below). Per pack, the bytes still needed are the index
//!    entries in it plus held condemned entries. A pack that needs nothing is deleted; a pack
//!    whose dead share exceeds the repack threshold is rewritten: its needed records are
//!    copied (as stored, never recompressed) into a new pack, which is sealed like a backup's
//!    (tmp/, fsync, rename into packs/, fsync packs/); then one transaction repoints their
//!    entries, drops the old pack from `packs` and records it in `gc_deleting`; then the old
//!    file is unlinked. Small packs (a backup's last pack, a deletion's tombstones) are merged
//!    the same way once there are eight of them. Finally condemned entries that are no longer
//!    held are dropped.
//!
//! ## Backups alongside a GC (the protocol)
//! - A backup session registers at start: it creates `sessions/<unique>.lock`, holds an
//!   exclusive flock on it for its whole life, and writes into it the GC generation it read
//!   (`start generation`). A file whose flock can be taken belongs to a dead process and is
//!   removed by the GC.
//! - A chunk condemned in generation C may be deleted from disk only when every registered
//!   session has a start generation ≥ C: such a session read the generation after the condemn
//!   transaction committed, so every lookup it made already missed the chunk. This is why
//!   every condemn batch takes a generation of its own: a session that started between two
//!   batches must hold, and rescue, what the later batch condemns.
//! - At commit, a session whose start generation differs from the current one walks its new
//!   point (its manifest, files, tree nodes and leaves; the session's own records may have been
//!   sealed before the GC's snapshot and so look unreferenced) and moves every condemned chunk
//!   it references back into `chunks`, in the same write
//!   transaction that publishes the point (retrying if yet another condemn committed
//!   meanwhile). Held chunks are still on disk, so the rescue is always possible.
//!
//! So a chunk that a running backup deduplicates against is never swept, and a committed
//! point never references a condemned chunk.
//!
//! ## Crash safety
//! `kill -9` at any moment leaves a consistent store: before the condemn commit nothing has
//! changed; condemned chunks are only invisible, still on disk; a repack pack not yet in the
//! index is adopted at the next open (its records duplicate indexed ones, so it is dead and
//! the next GC deletes it); a pack recorded in `gc_deleting` is deleted by the next open or
//! GC instead of being adopted. No live chunk is deleted before the transaction that stops
//! pointing at it. The next GC simply starts over (mark is read-only).
//!
//! ## Readers
//! A restore that looked a chunk up just before a repack may find its old pack gone when it
//! opens it; `Store::locate_open` then looks the chunk up again.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Bound;
use std::path::PathBuf;
use std::time::Instant;

use heed::RoTxn;
use serde::{Deserialize, Serialize};

use crate::catalog::{decode_condemned, encode_condemned, pack_key, ChunkLoc, PackInfo};
use crate::error::{Result, StoreError};
use crate::pack::{self, EncodedChunk, PackWriter, RecordHeader, RecordKind};
use crate::recompress::Recompressor;
use crate::{fsync_dir, now_unix, tree, Digest, RestorePoint, Store};

/// Default dead share above which a pack that still holds live data is rewritten.
pub const DEFAULT_REPACK_THRESHOLD: f64 = 0.3;

/// Index entries handled per batch in the condemn and cleanup passes.
const BATCH: usize = 32_768;

/// Entries a repack repoints in one transaction at most (with real chunk sizes the pack
/// target is reached long before).
pub(crate) const REPACK_BATCH: usize = BATCH;

/// Record bytes a repack reads before it writes them out (a recompression compresses them
/// in parallel meanwhile).
const REPACK_READ_BATCH: usize = 32 << 20;

/// Packs smaller than an eighth of the target are merged once there are this many.
const SMALL_PACKS_TO_MERGE: usize = 8;

/// Tunables of one GC run.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Rewrite a pack when more than this share of its bytes is dead (0.0-1.0).
    pub repack_threshold: f64,
    /// Mark and count only; change nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions { repack_threshold: DEFAULT_REPACK_THRESHOLD, dry_run: false }
    }
}

/// Where a GC is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GcProgress {
    pub phase: &'static str,
    pub done: u64,
    pub total: u64,
}

/// What a GC run did (or, with `dry_run`, would condemn).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GcReport {
    pub generation: u64,
    pub dry_run: bool,
    pub points_marked: u64,
    pub tree_nodes_marked: u64,
    /// Index entries left live after the condemn pass.
    pub chunks_live: u64,
    /// Index entries condemned by this run.
    pub chunks_condemned: u64,
    pub bytes_condemned: u64,
    /// Condemned chunks kept on disk because a backup that may reference them still runs;
    /// the next GC frees them.
    pub chunks_held: u64,
    /// Backup sessions running during the sweep.
    pub sessions_running: u64,
    /// Condemned entries dropped for good.
    pub chunks_freed: u64,
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    /// Packs left alone because a record that had to be copied is damaged (run `repair`).
    pub packs_skipped_damaged: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub bytes_freed: u64,
    /// Memory of the mark set (Bloom filter and exact node set), bytes.
    pub mark_set_bytes: u64,
    pub duration_s: f64,
    /// False when cancelled during the sweep: what was done is consistent, the rest is left
    /// for the next run.
    pub complete: bool,
}

/// A Bloom filter over digests (which are uniform already, so the probes are derived from
/// their bytes by double hashing).
struct Bloom {
    bits: Vec<u64>,
    m: u64,
}

const BLOOM_PROBES: u64 = 7;
const BLOOM_BITS_PER_ENTRY: u64 = 10;

impl Bloom {
    fn new(entries: u64) -> Bloom {
        let m = (entries.max(1024) * BLOOM_BITS_PER_ENTRY).next_multiple_of(64);
        Bloom { bits: vec![0; (m / 64) as usize], m }
    }

    fn probes(d: &Digest) -> impl Iterator<Item = u64> {
        let h1 = u64::from_le_bytes(d.0[0..8].try_into().expect("8 bytes"));
        let h2 = u64::from_le_bytes(d.0[8..16].try_into().expect("8 bytes")) | 1;
        (0..BLOOM_PROBES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)))
    }

    fn insert(&mut self, d: &Digest) {
        for h in Self::probes(d) {
            let bit = h % self.m;
            self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    fn contains(&self, d: &Digest) -> bool {
        Self::probes(d).all(|h| {
            let bit = h % self.m;
            self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0
        })
    }

    fn bytes(&self) -> u64 {
        self.bits.len() as u64 * 8
    }
}

/// The mark set: exact for tree nodes, manifests and tombstones, a Bloom filter for leaves.
struct LiveSet {
    exact: HashSet<Digest>,
    leaves: Bloom,
}

impl LiveSet {
    /// Whether a record of `kind` with digest `d` is marked live. Tree nodes and manifests are
    /// only ever marked in the exact set (every node is reached through `walk_trees`' `node`),
    /// so they are judged by it alone: a Bloom false positive keeps only data chunks.
    fn holds(&self, d: &Digest, kind: RecordKind) -> bool {
        match kind {
            RecordKind::Data => self.exact.contains(d) || self.leaves.contains(d),
            RecordKind::Tree | RecordKind::Manifest | RecordKind::Tombstone => self.exact.contains(d),
        }
    }

    fn bytes(&self) -> u64 {
        self.leaves.bytes() + self.exact.capacity() as u64 * 40
    }
}

/// A backup session's registration (see the module docs).
#[derive(Debug)]
pub(crate) struct Registration {
    path: PathBuf,
    _file: File,
    start_generation: u64,
}

impl Registration {
    pub(crate) fn register(store: &Store) -> Result<Registration> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = store.root.join("sessions");
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let unique = format!(
            "{}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // Locked before it gets the name a GC looks at, so a GC never mistakes it for stale.
        let tmp = dir.join(format!(".{unique}.new"));
        let mut file =
            File::options().create_new(true).read(true).write(true).open(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        file.lock().map_err(|e| StoreError::io(&tmp, e))?;
        let start_generation = store.gc_generation()?;
        file.write_all(start_generation.to_string().as_bytes()).map_err(|e| StoreError::io(&tmp, e))?;
        let path = dir.join(format!("{unique}.lock"));
        std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
        Ok(Registration { path, _file: file, start_generation })
    }

    pub(crate) fn start_generation(&self) -> u64 {
        self.start_generation
    }

    /// Start generations of the sessions running now; removes the files of dead ones.
    fn running(store: &Store) -> Result<Vec<u64>> {
        let dir = store.root.join("sessions");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(&dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "new") {
                // Registering: it may not hold its lock yet, so its lock says nothing; it reads
                // the generation after our condemn, or before, and its lookups all come after
                // its rename. One left for a minute is a crash's: removed.
                let old = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
                if old.is_some_and(|age| age.as_secs() > 60) {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            let Ok(mut f) = File::options().read(true).write(true).open(&path) else { continue };
            if f.try_lock().is_ok() {
                // Its session died without removing it (kill -9), or is just ending.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let mut text = String::new();
            let generation = f.read_to_string(&mut text).ok().and_then(|_| text.trim().parse::<u64>().ok());
            // Unreadable: assume the oldest generation, which holds everything.
            out.push(generation.unwrap_or(0));
        }
        Ok(out)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where a chunk is now (a fresh lookup).
type Locate<'a> = dyn Fn(&Digest) -> Result<Option<ChunkLoc>> + 'a;

/// One record copied by a repack.
pub(crate) struct Moved {
    digest: Digest,
    old: ChunkLoc,
    new: ChunkLoc,
}

/// A repack output pack and what went into it.
pub(crate) struct RepackOut {
    pub(crate) writer: PackWriter,
    pub(crate) moved: Vec<Moved>,
    pub(crate) sources: Vec<(u64, u64)>,
}

impl Store {
    /// The current GC generation (0 before the first GC).
    pub(crate) fn gc_generation(&self) -> Result<u64> {
        let rtxn = self.catalog.read()?;
        Ok(self.catalog.meta_u64(&rtxn, "gc_generation")?.unwrap_or(0))
    }

    /// Take `gc.lock` exclusively, waiting when `wait`, else refusing if it is held. A
    /// read-only store cannot create the file; when it is missing no GC can run there.
    pub(crate) fn gc_lock(&self, wait: bool) -> Result<Option<File>> {
        let p = self.root.join("gc.lock");
        let writable = self.read_only().is_none();
        let f = match File::options().create(writable).truncate(false).read(true).write(writable).open(&p) {
            Ok(f) => f,
            Err(e) if !writable && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&p, e)),
        };
        if wait {
            f.lock().map_err(|e| StoreError::io(&p, e))?;
        } else if f.try_lock().is_err() {
            return Err(StoreError::Busy(
                "a garbage collection, verify, reindex or repair is already running on this store; wait for it to finish"
                    .into(),
            ));
        }
        Ok(Some(f))
    }

    /// The locks of a pass that repacks (a GC, a recompression; see the crate docs' locking
    /// table): `gc.lock` exclusive, refused if held, and `writers.lock` shared, like a backup,
    /// so that cleanup at open does not delete the repack pack in `tmp/`. Held while the
    /// returned files live.
    pub(crate) fn repacker_locks(&self) -> Result<(Option<File>, File)> {
        self.check_writable()?;
        let gc = self.gc_lock(false)?;
        let writers = self.writers_lock()?;
        writers.lock_shared().map_err(|e| StoreError::io(self.root.join("writers.lock"), e))?;
        Ok((gc, writers))
    }

    /// Delete the packs a GC dropped from the index but had not deleted yet.
    pub(crate) fn finish_gc_deletions(&self) -> Result<u64> {
        let numbers: Vec<u64> = {
            let rtxn = self.catalog.read()?;
            let mut v = Vec::new();
            for item in self.catalog.gc_deleting.iter(&rtxn).map_err(|e| self.catalog.err(e))? {
                let (k, _) = item.map_err(|e| self.catalog.err(e))?;
                if let Ok(b) = <[u8; 8]>::try_from(k) {
                    v.push(u64::from_be_bytes(b));
                }
            }
            v
        };
        if numbers.is_empty() {
            return Ok(0);
        }
        self.unlink_packs(&numbers)?;
        Ok(numbers.len() as u64)
    }

    /// Unlink packs already dropped from `packs` and listed in `gc_deleting`, then clear them
    /// from `gc_deleting`.
    fn unlink_packs(&self, numbers: &[u64]) -> Result<()> {
        for &n in numbers {
            self.forget_pack_file(n);
            self.remove_pack_file(&self.pack_path(n))?;
        }
        fsync_dir(&self.root.join("packs"))?;
        let mut wtxn = self.catalog.write()?;
        for &n in numbers {
            self.catalog.gc_deleting.delete(&mut wtxn, &pack_key(n)).map_err(|e| self.catalog.err(e))?;
        }
        wtxn.commit().map_err(|e| self.catalog.err(e))
    }

    /// Read the record at `loc` (which must hold `digest`) into `out`.
    fn read_at(&self, loc: &ChunkLoc, digest: &Digest, scratch: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<()> {
        let file = self.pack_file(loc.pack)?;
        let path = self.pack_path(loc.pack);
        let header = pack::read_record(
            &file,
            &path,
            loc.offset,
            loc.stored_len,
            scratch,
            out,
            pack::ReadCheck::Checksum,
            self.keyring(),
        )?;
        if header.digest != *digest {
            return Err(StoreError::Corrupt {
                path,
                offset: loc.offset,
                detail: format!("index says chunk {digest} is here, the record holds {}", header.digest),
            });
        }
        Ok(())
    }

    /// Mark everything `point` references (see the module docs, "Mark").
    /// Walk the index trees of `point`'s disks depth first. `node` is asked where each tree
    /// node is, and whether to descend into it (`None`: its subtree was seen already); `leaf`
    /// gets every non-zero leaf digest. With `relocate`, a node whose pack a concurrent GC
    /// removed between the lookup and the read is looked up again (it was moved).
    fn walk_trees(
        &self,
        point: &RestorePoint,
        node: &mut dyn FnMut(&Digest) -> Result<Option<ChunkLoc>>,
        leaf: &mut dyn FnMut(&Digest) -> Result<()>,
        relocate: Option<&Locate<'_>>,
    ) -> Result<()> {
        let (mut scratch, mut raw) = (Vec::new(), Vec::new());
        for disk in point.disks.iter().filter(|d| d.height > 0) {
            let mut stack: Vec<(Digest, u8)> = vec![(disk.root, disk.height - 1)];
            while let Some((digest, level)) = stack.pop() {
                let Some(mut loc) = node(&digest)? else { continue };
                let mut attempts = 0;
                while let Err(e) = self.read_at(&loc, &digest, &mut scratch, &mut raw) {
                    attempts += 1;
                    let moved = match (relocate, &e) {
                        (Some(again), StoreError::Corrupt { .. }) if attempts < 4 => {
                            again(&digest)?.filter(|l| l.pack != loc.pack)
                        }
                        _ => None,
                    };
                    loc = moved.ok_or(e)?;
                }
                let entries = tree::decode_node(&raw, level, &digest)?;
                if level == 0 {
                    for d in entries.iter().filter(|d| !d.is_zero()) {
                        leaf(d)?;
                    }
                } else {
                    stack.extend(entries.into_iter().map(|d| (d, level - 1)));
                }
            }
        }
        Ok(())
    }

    /// Mark everything `point` references (see the module docs, "Mark"). A subtree whose node
    /// is marked already is skipped.
    fn mark_point(&self, txn: &RoTxn<'_>, point: &RestorePoint, live: &mut LiveSet) -> Result<()> {
        live.exact.insert(point.manifest_digest(self.keyring().ids()));
        for f in &point.files {
            live.leaves.insert(&f.digest);
        }
        let LiveSet { exact, leaves } = live;
        let mut node = |d: &Digest| -> Result<Option<ChunkLoc>> {
            if !exact.insert(*d) {
                return Ok(None);
            }
            Ok(Some(self.catalog.chunk(txn, d)?.ok_or(StoreError::MissingChunk { digest: *d })?))
        };
        let mut leaf = |d: &Digest| -> Result<()> {
            leaves.insert(d);
            Ok(())
        };
        self.walk_trees(point, &mut node, &mut leaf, None).map_err(|e| {
            if e.is_local_fault() {
                e
            } else {
                StoreError::GcBlocked { point: point.spec(), source: Box::new(e) }
            }
        })
    }

    /// Chunks that `point` references and a GC has condemned (to be rescued at commit).
    pub(crate) fn condemned_references(&self, point: &RestorePoint) -> Result<Vec<Digest>> {
        let rescue = std::cell::RefCell::new(Vec::new());
        let seen = std::cell::RefCell::new(HashSet::new());
        // A fresh snapshot per lookup: a GC may move records meanwhile (see `walk_trees`).
        let locate = |d: &Digest| -> Result<Option<ChunkLoc>> {
            let rtxn = self.catalog.read()?;
            if let Some(loc) = self.catalog.chunk(&rtxn, d)? {
                return Ok(Some(loc));
            }
            Ok(self.catalog.condemned_chunk(&rtxn, d)?.map(|(loc, _)| loc))
        };
        let check = |d: &Digest| -> Result<Option<ChunkLoc>> {
            let rtxn = self.catalog.read()?;
            if let Some(loc) = self.catalog.chunk(&rtxn, d)? {
                return Ok(Some(loc));
            }
            match self.catalog.condemned_chunk(&rtxn, d)? {
                Some((loc, _)) => {
                    if seen.borrow_mut().insert(*d) {
                        rescue.borrow_mut().push(*d);
                    }
                    Ok(Some(loc))
                }
                None => Ok(None),
            }
        };
        // Its own manifest too: sealed before the GC's snapshot, it looked unreferenced until
        // the point is published.
        check(&point.manifest_digest(self.keyring().ids()))?;
        for f in &point.files {
            check(&f.digest)?;
        }
        let mut node = |d: &Digest| -> Result<Option<ChunkLoc>> {
            Ok(Some(check(d)?.ok_or(StoreError::MissingChunk { digest: *d })?))
        };
        let mut leaf = |d: &Digest| -> Result<()> { check(d).map(|_| ()) };
        self.walk_trees(point, &mut node, &mut leaf, Some(&locate))?;
        Ok(rescue.into_inner())
    }

    /// Collect garbage (see the module docs). `progress` is called as work advances;
    /// `cancelled` is polled between points and between packs.
    pub fn gc(
        &self,
        opts: &GcOptions,
        progress: &dyn Fn(GcProgress),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<GcReport> {
        let started = Instant::now();
        let _locks = self.repacker_locks()?;
        if !opts.dry_run {
            self.finish_gc_deletions()?;
        }
        let mut report = GcReport { dry_run: opts.dry_run, ..Default::default() };

        // 1. Mark, in snapshot S.
        let rtxn = self.catalog.read()?;
        let entries = self.catalog.chunks.len(&rtxn).map_err(|e| self.catalog.err(e))?;
        let mut live = LiveSet { exact: HashSet::new(), leaves: Bloom::new(entries) };
        let mut s_packs: HashSet<u64> = HashSet::new();
        for item in self.catalog.packs.iter(&rtxn).map_err(|e| self.catalog.err(e))? {
            let (k, v) = item.map_err(|e| self.catalog.err(e))?;
            if let Ok(b) = <[u8; 8]>::try_from(k) {
                s_packs.insert(u64::from_be_bytes(b));
            }
            if let Ok(info) = serde_json::from_slice::<PackInfo>(v) {
                report.bytes_before += info.len;
            }
        }
        for item in self.catalog.tombstones.iter(&rtxn).map_err(|e| self.catalog.err(e))? {
            let (_, v) = item.map_err(|e| self.catalog.err(e))?;
            live.exact.insert(self.keyring().digest(v));
        }
        let (points, unreadable) = self.list_in(&rtxn)?;
        if let Some(bad) = unreadable.first() {
            // Its tree cannot be marked, so its chunks would look dead.
            return Err(StoreError::GcBlocked {
                point: format!("{}@{}", bad.name, bad.id),
                source: Box::new(StoreError::DamagedPoint {
                    point: format!("{}@{}", bad.name, bad.id),
                    detail: bad.reason.clone(),
                }),
            });
        }
        let s_points: HashSet<(String, u64)> = points.iter().map(|p| (p.name.clone(), p.id)).collect();
        let total = points.len() as u64;
        for (i, point) in points.iter().enumerate() {
            if cancelled() {
                return Err(StoreError::Cancelled);
            }
            self.mark_point(&rtxn, point, &mut live)?;
            progress(GcProgress { phase: "mark", done: i as u64 + 1, total });
        }
        drop(rtxn);

        // 2. Condemn, in write transactions of at most BATCH index entries each, so the
        // dirty pages of one transaction stay bounded. Each batch first marks the points
        // committed since the last one, and takes a generation of its own.
        progress(GcProgress { phase: "condemn", done: 0, total: entries });
        let catalog = &self.catalog;
        let mut marked: HashSet<(String, u64)> = s_points;
        let mut last: Option<[u8; 32]> = None;
        let mut visited_total = 0u64;
        loop {
            let mut wtxn = catalog.write()?;
            let (points_now, unreadable_now) = self.list_in(&wtxn)?;
            if let Some(bad) = unreadable_now.first() {
                let point = format!("{}@{}", bad.name, bad.id);
                let detail = bad.reason.clone();
                wtxn.abort();
                return Err(StoreError::GcBlocked {
                    point: point.clone(),
                    source: Box::new(StoreError::DamagedPoint { point, detail }),
                });
            }
            report.points_marked = points_now.len() as u64;
            for point in points_now {
                if marked.insert((point.name.clone(), point.id)) {
                    self.mark_point(&wtxn, &point, &mut live)?;
                }
            }
            let generation = catalog.meta_u64(&wtxn, "gc_generation")?.unwrap_or(0) + 1;
            let mut batch: Vec<([u8; 32], ChunkLoc)> = Vec::new();
            let mut visited = 0usize;
            {
                let lower = last.as_ref().map_or(Bound::Unbounded, |k| Bound::Excluded(&k[..]));
                let range = (lower, Bound::Unbounded);
                for item in catalog.chunks.range(&wtxn, &range).map_err(|e| catalog.err(e))? {
                    let (k, v) = item.map_err(|e| catalog.err(e))?;
                    let Ok(key) = <[u8; 32]>::try_from(k) else { continue };
                    last = Some(key);
                    visited += 1;
                    let Some(loc) = ChunkLoc::decode(v) else { continue };
                    let digest = Digest(key);
                    if s_packs.contains(&loc.pack)
                        && loc.kind != RecordKind::Tombstone
                        && !live.holds(&digest, loc.kind)
                    {
                        batch.push((key, loc));
                    } else {
                        report.chunks_live += 1;
                    }
                    if visited >= BATCH {
                        break;
                    }
                }
            }
            report.chunks_condemned += batch.len() as u64;
            report.bytes_condemned +=
                batch.iter().map(|(_, loc)| pack::RECORD_HEADER_LEN as u64 + loc.stored_len as u64).sum::<u64>();
            if opts.dry_run {
                wtxn.abort();
            } else {
                for (key, loc) in &batch {
                    catalog.chunks.delete(&mut wtxn, &key[..]).map_err(|e| catalog.err(e))?;
                    catalog
                        .condemned
                        .put(&mut wtxn, &key[..], &encode_condemned(loc, generation))
                        .map_err(|e| catalog.err(e))?;
                }
                catalog.meta.put(&mut wtxn, b"gc_generation", &generation.to_le_bytes()).map_err(|e| catalog.err(e))?;
                wtxn.commit().map_err(|e| catalog.err(e))?;
                report.generation = generation;
            }
            visited_total += visited as u64;
            progress(GcProgress { phase: "condemn", done: visited_total.min(entries), total: entries });
            if visited < BATCH {
                break;
            }
        }
        report.tree_nodes_marked = live.exact.len() as u64;
        report.mark_set_bytes = live.bytes();
        drop(live);
        if opts.dry_run {
            report.bytes_after = report.bytes_before;
            report.duration_s = started.elapsed().as_secs_f64();
            report.complete = true;
            return Ok(report);
        }

        // 3. Sweep.
        let (freeable, sessions_running) = self.freeable_now()?;
        report.sessions_running = sessions_running;
        let (needed, held, packs) = self.needed_by_pack(&freeable)?;
        report.chunks_held = held;
        let mut dead_packs = Vec::new();
        let mut repack = Vec::new();
        for info in &packs {
            let need = needed.get(&info.number).copied().unwrap_or(0);
            let body = info.len.saturating_sub(pack::PACK_HEADER_LEN).max(1);
            if need == 0 {
                dead_packs.push(info.number);
            } else if 1.0 - (need as f64 / body as f64) > opts.repack_threshold {
                repack.push(info.number);
            }
        }
        // Small packs (tombstones, the tail of each backup) are merged once there are a few,
        // so the number of files does not grow with backups × days.
        let small: Vec<u64> = packs
            .iter()
            .filter(|i| i.len < self.pack_target / 8 && !dead_packs.contains(&i.number) && !repack.contains(&i.number))
            .map(|i| i.number)
            .collect();
        if small.len() >= SMALL_PACKS_TO_MERGE {
            repack.extend(small);
        }
        let sweep_total = (dead_packs.len() + repack.len()) as u64;
        let mut swept = 0u64;
        report.complete = true;
        // Wholly dead packs: out of the index (and into gc_deleting) in one transaction, then
        // unlinked.
        if !dead_packs.is_empty() {
            let mut freed = 0;
            let mut wtxn = catalog.write()?;
            for &n in &dead_packs {
                catalog.packs.delete(&mut wtxn, &pack_key(n)).map_err(|e| catalog.err(e))?;
                catalog.gc_deleting.put(&mut wtxn, &pack_key(n), &[]).map_err(|e| catalog.err(e))?;
                freed += std::fs::metadata(self.pack_path(n)).map(|m| m.len()).unwrap_or(0);
            }
            wtxn.commit().map_err(|e| catalog.err(e))?;
            self.unlink_packs(&dead_packs)?;
            report.packs_deleted = dead_packs.len() as u64;
            report.bytes_freed += freed;
            swept += dead_packs.len() as u64;
            progress(GcProgress { phase: "sweep", done: swept, total: sweep_total });
        }
        // Partly dead packs: rewritten into new packs of about the target size.
        let mut out: Option<RepackOut> = None;
        for &n in &repack {
            if cancelled() {
                report.complete = false;
                break;
            }
            let need = needed.get(&n).copied().unwrap_or(0);
            let Some(info) = packs.iter().find(|i| i.number == n) else { continue };
            match self.repack_into(info, need, &freeable, &mut out, None)? {
                true => report.packs_repacked += 1,
                false => report.packs_skipped_damaged += 1,
            }
            // Sealed at the target size, or sooner when many entries moved, so that one
            // transaction's dirty pages stay bounded.
            if out.as_ref().is_some_and(|o| o.writer.len() >= self.pack_target || o.moved.len() >= REPACK_BATCH) {
                if let Some(o) = out.take() {
                    report.bytes_freed += self.finish_repack(o)?;
                }
            }
            swept += 1;
            progress(GcProgress { phase: "sweep", done: swept, total: sweep_total });
        }
        if let Some(o) = out.take() {
            report.bytes_freed += self.finish_repack(o)?;
        }
        // Condemned entries no running backup can need: dropped for good.
        report.chunks_freed = self.drop_freeable_condemned(&freeable)?;
        let rtxn = catalog.read()?;
        for item in catalog.packs.iter(&rtxn).map_err(|e| catalog.err(e))? {
            let (_, v) = item.map_err(|e| catalog.err(e))?;
            if let Ok(info) = serde_json::from_slice::<PackInfo>(v) {
                report.bytes_after += info.len;
            }
        }
        report.duration_s = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Record bytes per pack that must be kept (index entries, and condemned entries not
    /// `freeable`), how many condemned entries are held, and the pack table.
    pub(crate) fn needed_by_pack(
        &self,
        freeable: &dyn Fn(u64) -> bool,
    ) -> Result<(HashMap<u64, u64>, u64, Vec<PackInfo>)> {
        let catalog = &self.catalog;
        let rtxn = catalog.read()?;
        let mut needed: HashMap<u64, u64> = HashMap::new();
        let mut held = 0;
        for item in catalog.chunks.iter(&rtxn).map_err(|e| catalog.err(e))? {
            let (_, v) = item.map_err(|e| catalog.err(e))?;
            if let Some(loc) = ChunkLoc::decode(v) {
                *needed.entry(loc.pack).or_default() += pack::RECORD_HEADER_LEN as u64 + loc.stored_len as u64;
            }
        }
        for item in catalog.condemned.iter(&rtxn).map_err(|e| catalog.err(e))? {
            let (_, v) = item.map_err(|e| catalog.err(e))?;
            if let Some((loc, c)) = decode_condemned(v) {
                if !freeable(c) {
                    held += 1;
                    *needed.entry(loc.pack).or_default() += pack::RECORD_HEADER_LEN as u64 + loc.stored_len as u64;
                }
            }
        }
        Ok((needed, held, self.pack_table_in(&rtxn)?))
    }

    /// The pack table, in pack-number order.
    pub(crate) fn pack_table_in(&self, txn: &RoTxn<'_>) -> Result<Vec<PackInfo>> {
        let catalog = &self.catalog;
        let mut packs: Vec<PackInfo> = Vec::new();
        for item in catalog.packs.iter(txn).map_err(|e| catalog.err(e))? {
            let (_, v) = item.map_err(|e| catalog.err(e))?;
            if let Ok(info) = serde_json::from_slice::<PackInfo>(v) {
                packs.push(info);
            }
        }
        Ok(packs)
    }

    /// Which condemned generations may be freed now: those no running backup session can
    /// still need (see the module docs). Also how many sessions run.
    pub(crate) fn freeable_now(&self) -> Result<(impl Fn(u64) -> bool + use<>, u64)> {
        let running = Registration::running(self)?;
        let oldest_session = running.iter().copied().min().unwrap_or(u64::MAX);
        Ok((move |condemned_in: u64| condemned_in <= oldest_session, running.len() as u64))
    }

    /// Whether a backup session is registered now.
    pub(crate) fn backup_running(&self) -> Result<bool> {
        Ok(!Registration::running(self)?.is_empty())
    }

    /// Copy the records of pack `source` that are still needed into the repack output,
    /// compressing its deferred chunks on the way when `recompress` is given (else they stay
    /// deferred in the output). Returns false (and copies nothing) when a needed record is
    /// damaged.
    pub(crate) fn repack_into(
        &self,
        source: &PackInfo,
        needed: u64,
        freeable: &dyn Fn(u64) -> bool,
        out: &mut Option<RepackOut>,
        mut recompress: Option<&mut Recompressor>,
    ) -> Result<bool> {
        let n = source.number;
        let path = self.pack_path(n);
        let mut file =
            std::io::BufReader::with_capacity(4 << 20, File::open(&path).map_err(|e| StoreError::io(&path, e))?);
        let len = file.get_ref().metadata().map_err(|e| StoreError::io(&path, e))?.len();
        file.seek(SeekFrom::Start(pack::PACK_HEADER_LEN)).map_err(|e| StoreError::io(&path, e))?;
        if out.is_none() {
            let mut wtxn = self.catalog.write()?;
            let number = self.catalog.next_counter(&mut wtxn, "next_pack")?;
            wtxn.commit().map_err(|e| self.catalog.err(e))?;
            let writer =
                PackWriter::create(&self.tmp_pack_path(number), number, &self.store_id, now_unix(), self.format())?;
            *out = Some(RepackOut { writer, moved: Vec::new(), sources: Vec::new() });
        }
        let Some(o) = out.as_mut() else { return Ok(false) };
        // Records are copied in batches of about REPACK_READ_BATCH bytes as they are read (a
        // recompression compresses a batch's deferred records on all its workers). If the
        // pack turns out damaged, what was copied of it stays unreferenced in the output:
        // garbage for the next GC, while this pack is left for `repair`.
        let rtxn = self.catalog.read()?;
        let mut mine: Vec<Moved> = Vec::new();
        let mut found = 0u64;
        let mut offset = pack::PACK_HEADER_LEN;
        let mut h = [0u8; pack::RECORD_HEADER_LEN];
        let mut batch: Vec<(ChunkLoc, RecordHeader, EncodedChunk)> = Vec::new();
        let mut batch_bytes = 0usize;
        while offset + pack::RECORD_HEADER_LEN as u64 <= len {
            file.read_exact(&mut h).map_err(|e| StoreError::io(&path, e))?;
            let header = match RecordHeader::decode(&h) {
                Ok(Some(header)) => header,
                Ok(None) => break, // padding: the end
                Err(_) => return Ok(false),
            };
            let mut payload = vec![0; header.stored_len as usize];
            if file.read_exact(&mut payload).is_err() {
                return Ok(false);
            }
            let here = ChunkLoc::at(n, offset, &header);
            offset += pack::RECORD_HEADER_LEN as u64 + header.stored_len as u64;
            let indexed = self.catalog.chunk(&rtxn, &header.digest)?.is_some_and(|l| l == here);
            let held = !indexed
                && self.catalog.condemned_chunk(&rtxn, &header.digest)?.is_some_and(|(l, c)| l == here && !freeable(c));
            if !(indexed || held) {
                continue;
            }
            if RecordHeader::compute_crc(&h, &payload) != header.crc {
                return Ok(false);
            }
            found += pack::RECORD_HEADER_LEN as u64 + u64::from(header.stored_len);
            batch_bytes += payload.len();
            let mut chunk = EncodedChunk::from_record(&header, payload);
            chunk.deferred = source.deferred_bytes > 0 && pack::maybe_deferred(&header);
            batch.push((here, header, chunk));
            if batch_bytes >= REPACK_READ_BATCH {
                if !self.copy_batch(&mut batch, o, &mut mine, recompress.as_deref_mut())? {
                    return Ok(false);
                }
                batch_bytes = 0;
            }
        }
        if !self.copy_batch(&mut batch, o, &mut mine, recompress)? {
            return Ok(false);
        }
        if found != needed {
            // Some entry points where the walk did not find its record: leave it to repair.
            return Ok(false);
        }
        o.moved.extend(mine);
        o.sources.push((n, len));
        Ok(true)
    }

    /// Append a batch of records read by [`repack_into`](Store::repack_into) to the output,
    /// its deferred records compressed first when `recompress` is given (else they stay
    /// deferred). False when a deferred record's content does not match its id.
    fn copy_batch(
        &self,
        batch: &mut Vec<(ChunkLoc, RecordHeader, EncodedChunk)>,
        o: &mut RepackOut,
        mine: &mut Vec<Moved>,
        recompress: Option<&mut Recompressor>,
    ) -> Result<bool> {
        if let Some(r) = recompress {
            if r.compress_batch(self.keyring(), batch).is_err() {
                return Ok(false);
            }
        }
        for (here, _, chunk) in batch.drain(..) {
            let at = o.writer.append(&chunk)?;
            mine.push(Moved {
                digest: chunk.digest,
                old: here,
                new: ChunkLoc::at(o.writer.number, at.offset, &chunk.header()),
            });
        }
        Ok(true)
    }

    /// Seal a repack output, repoint what moved, drop its source packs. Returns bytes freed.
    pub(crate) fn finish_repack(&self, o: RepackOut) -> Result<u64> {
        let number = o.writer.number;
        let sealed = o.writer.seal()?;
        let final_path = self.pack_path(number);
        std::fs::rename(&sealed.path, &final_path).map_err(|e| StoreError::io(&final_path, e))?;
        fsync_dir(&self.root.join("packs"))?;
        self.protect_pack(&final_path);
        let catalog = &self.catalog;
        let mut wtxn = catalog.write()?;
        for m in &o.moved {
            if catalog.chunk(&wtxn, &m.digest)? == Some(m.old) {
                catalog.chunks.put(&mut wtxn, &m.digest.0, &m.new.encode()).map_err(|e| catalog.err(e))?;
            } else if let Some((loc, c)) = catalog.condemned_chunk(&wtxn, &m.digest)? {
                if loc == m.old {
                    catalog
                        .condemned
                        .put(&mut wtxn, &m.digest.0, &encode_condemned(&m.new, c))
                        .map_err(|e| catalog.err(e))?;
                }
            }
        }
        catalog
            .packs
            .put(&mut wtxn, &pack_key(number), &serde_json::to_vec(&sealed.info).expect("pack info serialises"))
            .map_err(|e| catalog.err(e))?;
        for (n, _) in &o.sources {
            catalog.packs.delete(&mut wtxn, &pack_key(*n)).map_err(|e| catalog.err(e))?;
            catalog.gc_deleting.put(&mut wtxn, &pack_key(*n), &[]).map_err(|e| catalog.err(e))?;
        }
        wtxn.commit().map_err(|e| catalog.err(e))?;
        let sources: Vec<u64> = o.sources.iter().map(|(n, _)| *n).collect();
        self.unlink_packs(&sources)?;
        let old: u64 = o.sources.iter().map(|(_, l)| *l).sum();
        let new = std::fs::metadata(&final_path).map(|m| m.len()).unwrap_or(0);
        Ok(old.saturating_sub(new))
    }

    /// Drop condemned entries that no running backup can need, in batches.
    pub(crate) fn drop_freeable_condemned(&self, freeable: &dyn Fn(u64) -> bool) -> Result<u64> {
        let catalog = &self.catalog;
        let mut dropped = 0;
        let mut last: Option<[u8; 32]> = None;
        loop {
            let mut wtxn = catalog.write()?;
            let mut batch = Vec::new();
            let mut visited = 0usize;
            {
                let lower = last.as_ref().map_or(Bound::Unbounded, |k| Bound::Excluded(&k[..]));
                for item in catalog.condemned.range(&wtxn, &(lower, Bound::Unbounded)).map_err(|e| catalog.err(e))? {
                    let (k, v) = item.map_err(|e| catalog.err(e))?;
                    let Ok(key) = <[u8; 32]>::try_from(k) else { continue };
                    last = Some(key);
                    visited += 1;
                    if decode_condemned(v).is_none_or(|(_, c)| freeable(c)) {
                        batch.push(key);
                    }
                    if visited >= BATCH {
                        break;
                    }
                }
            }
            for key in &batch {
                catalog.condemned.delete(&mut wtxn, &key[..]).map_err(|e| catalog.err(e))?;
            }
            dropped += batch.len() as u64;
            wtxn.commit().map_err(|e| catalog.err(e))?;
            if visited < BATCH {
                return Ok(dropped);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bloom_filter_has_no_false_negatives_and_few_false_positives() {
        let mut b = Bloom::new(100_000);
        for i in 0..100_000u64 {
            b.insert(&Digest::of(&i.to_le_bytes()));
        }
        for i in 0..100_000u64 {
            assert!(b.contains(&Digest::of(&i.to_le_bytes())));
        }
        let fp = (100_000..200_000u64).filter(|i| b.contains(&Digest::of(&i.to_le_bytes()))).count();
        assert!(fp < 2_000, "{fp} false positives in 100000");
    }
}
