//! GC benchmark: the time and memory `Store::gc` needs on a store of 1,000,000 distinct data
//! chunks of which 30% are garbage, against a naive mark that walks every restore point's
//! index tree in full and holds every live digest in a `HashSet<Digest>`.
//!
//! ```text
//! gc_bench build DIR [CHUNKS]   create the store (default 1,000,000 data chunks), then delete
//!                               the oldest restore points until 30% of the chunks are dead
//! gc_bench gc DIR [--dry-run]   Store::gc with default options (dry run: mark and count only)
//! gc_bench naive DIR            the naive mark, then count the dead index entries
//! ```
//! Each prints one JSON object. `tests/bench/gc-bench.sh` runs them side by side;
//! `tests/gc_bench.rs` includes this file (`#[path]`) and runs the same code at 20,000 chunks.
//!
//! ## The workload
//! [`VMS`] VMs with one disk each of `chunks / 5` chunks (`chunk_size` 4096; the payloads are
//! 256 distinct bytes stored raw, which the store does not check against the chunk size), so
//! the first full backups hold 60% of the chunks. Every simulated day each VM is backed up
//! after 2-4% of its chunks were rewritten as 64 KiB extents (16 chunks), half of them in a hot
//! tenth of the disk, until the store holds `chunks` distinct data chunks. Each rewritten chunk
//! ends the life of the version it replaces, so the generator knows, per point, how many
//! versions die with it; it then deletes points oldest first (day by day, VM by VM) until 30%
//! of the data chunks are referenced by no remaining point. The remaining points (about 20 at
//! 1 M chunks) share all but a few percent of their chunks.
//!
//! ## The naive mark
//! It opens the index read-only (no `Store`), walks every point's tree from the root to every
//! leaf (no subtree skipping), inserting every manifest, node and chunk digest into one
//! `HashSet<Digest>`, then iterates the chunk index and counts the entries not in the set
//! (tombstones are always live, as in `Store::gc`). It deletes nothing, so it compares with
//! `gc --dry-run`; `gc` also condemns and sweeps.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::error::Error;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;
use store::catalog::{Access, Catalog, ChunkLoc};
use store::pack::{self, ReadCheck};
use store::{
    tree, Codec, Digest, DiskIndex, EncodedChunk, GcOptions, GcProgress, GcReport, PointStats, RecordKind,
    RestorePoint, Store, StoreOptions, TreeBuilder,
};
use testkit::Rng;

type Res<T> = Result<T, Box<dyn Error>>;

/// VMs backed up every simulated day.
pub const VMS: usize = 3;
/// Chunks per rewritten extent (64 KiB at 4 KiB chunks).
const EXTENT: usize = 16;
/// Bytes of each data chunk's (distinct) payload.
const PAYLOAD: usize = 256;
const CHUNK_SIZE: u32 = 4096;
/// Share of the data chunks the deletions make dead.
pub const DEAD_SHARE: f64 = 0.30;

/// What `build` made.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub data_chunks: u64,
    /// Data chunks no remaining point references (by the generator's own bookkeeping).
    pub dead_data_chunks: u64,
    pub disk_chunks: u64,
    pub days: u64,
    pub points_built: u64,
    pub points_deleted: u64,
    pub points_kept: u64,
    pub pack_bytes: u64,
    pub index_bytes: u64,
    pub duration_s: f64,
}

/// What the naive mark found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NaiveReport {
    pub points: u64,
    pub tree_nodes_read: u64,
    /// Digests inserted into the set, duplicates included (what the walk visits).
    pub digests_visited: u64,
    pub set_len: u64,
    /// Estimated memory of the set: buckets × (32-byte digest + 1 control byte).
    pub set_bytes: u64,
    pub entries: u64,
    pub live: u64,
    /// Index entries (data, tree nodes, manifests) no remaining point references.
    pub dead: u64,
    pub dead_data: u64,
    pub dead_tree: u64,
    pub dead_manifest: u64,
    pub dead_bytes: u64,
    pub mark_s: f64,
    pub count_s: f64,
    pub duration_s: f64,
}

/// The raw chunk with serial number `serial`: 256 bytes no other serial produces.
fn payload(serial: u64) -> Vec<u8> {
    let mut v = vec![0u8; PAYLOAD];
    blake3::Hasher::new().update(b"gc_bench").update(&serial.to_le_bytes()).finalize_xof().fill(&mut v);
    v
}

/// Back up one VM's disk: store the chunks at `changed` positions (already in `disk`), the
/// tree and the manifest.
fn backup(store: &Store, name: &str, disk: &[Digest], changed: &[(usize, Vec<u8>)]) -> Res<RestorePoint> {
    let mut session = store.begin_backup()?;
    for (pos, raw) in changed {
        let chunk = EncodedChunk {
            digest: disk[*pos],
            kind: RecordKind::Data,
            codec: Codec::Raw,
            cipher: store::Cipher::None,
            raw_len: raw.len() as u32,
            payload: raw.clone(),
            foreign: false,
            deferred: false,
        };
        session.insert(&chunk)?;
    }
    let mut tree = TreeBuilder::new();
    for d in disk {
        tree.push(*d, &mut |n: EncodedChunk| session.insert(&n).map(|_| ()))?;
    }
    let (root, height) = tree.finish(&mut |n: EncodedChunk| session.insert(&n).map(|_| ()))?;
    let index = DiskIndex {
        label: "disk0".into(),
        source: "gc_bench".into(),
        format: "raw".into(),
        size: disk.len() as u64 * u64::from(CHUNK_SIZE),
        chunk_size: CHUNK_SIZE,
        chunks: disk.len() as u64,
        root,
        height,
    };
    Ok(session.commit(name, vec![index], PointStats::default())?)
}

/// Create the store in `dir` with `chunks` distinct data chunks and delete the oldest points
/// until [`DEAD_SHARE`] of them are dead (see the module docs).
pub fn build(dir: &Path, chunks: u64) -> Res<BuildReport> {
    let started = Instant::now();
    let store = Store::open(dir, &StoreOptions { create: true, ..Default::default() })?;
    let size = (chunks / 5).max(EXTENT as u64) as usize;
    let extents = size.div_ceil(EXTENT);
    let hot = (extents / 10).max(1);
    let mut rng = Rng(0x6763_5f62_656e_6368);
    let mut serial = 0u64;
    let mut disks: Vec<Vec<Digest>> = Vec::new();
    // Per VM and day: how many versions that day's point was the last to reference.
    let mut last_day: Vec<Vec<u64>> = vec![Vec::new(); VMS];
    let mut points: Vec<Vec<(String, u64)>> = vec![Vec::new(); VMS];
    let mut day = 0u32;
    loop {
        for (vm, last_day) in last_day.iter_mut().enumerate() {
            last_day.push(0);
            let mut changed: Vec<(usize, Vec<u8>)> = Vec::new();
            if day == 0 {
                let mut disk = Vec::with_capacity(size);
                for pos in 0..size {
                    let raw = payload(serial);
                    serial += 1;
                    disk.push(Digest::of(&raw));
                    changed.push((pos, raw));
                }
                disks.push(disk);
            } else {
                let share = 2 + rng.below(3); // 2-4% of the disk
                let mut want = (size as u64 * share / 100).min(chunks - serial) as usize;
                let mut picked = HashSet::new();
                while want > 0 && picked.len() < extents {
                    // Half in the hot tenth, while it cannot run out of free extents.
                    let e = if rng.below(2) == 0 && picked.len() < hot / 2 {
                        rng.below(hot as u64)
                    } else {
                        rng.below(extents as u64)
                    } as usize;
                    if !picked.insert(e) {
                        continue;
                    }
                    for pos in (e * EXTENT..((e + 1) * EXTENT).min(size)).take(want) {
                        let raw = payload(serial);
                        serial += 1;
                        disks[vm][pos] = Digest::of(&raw);
                        // The version it replaces was last referenced by yesterday's point.
                        last_day[day as usize - 1] += 1;
                        changed.push((pos, raw));
                        want -= 1;
                    }
                }
            }
            let point = backup(&store, &format!("vm{vm}"), &disks[vm], &changed)?;
            points[vm].push((point.name, point.id));
        }
        day += 1;
        if serial >= chunks {
            break;
        }
    }
    // Delete day by day, VM by VM, until the dead share is reached.
    let mut dead = 0u64;
    let mut victims = Vec::new();
    'days: for d in 0..day as usize {
        for vm in 0..VMS {
            if dead as f64 >= DEAD_SHARE * serial as f64 || d + 1 >= points[vm].len() {
                break 'days;
            }
            dead += last_day[vm].get(d).copied().unwrap_or(0);
            victims.push(points[vm][d].clone());
        }
    }
    store.delete_points(&victims, "gc_bench")?;
    let usage = store.usage()?;
    Ok(BuildReport {
        data_chunks: serial,
        dead_data_chunks: dead,
        disk_chunks: size as u64,
        days: u64::from(day),
        points_built: u64::from(day) * VMS as u64,
        points_deleted: victims.len() as u64,
        points_kept: usage.restore_points,
        pack_bytes: usage.pack_bytes,
        index_bytes: usage.index_bytes,
        duration_s: started.elapsed().as_secs_f64(),
    })
}

/// `Store::gc` with default options (or a dry run), and how long its mark phase took (until
/// its first "condemn" progress report).
pub fn gc(dir: &Path, dry_run: bool) -> Res<(GcReport, f64)> {
    let store = Store::open(dir, &StoreOptions::default())?;
    let started = Instant::now();
    let mark_s = Cell::new(None);
    let progress = |p: GcProgress| {
        if p.phase != "mark" && mark_s.get().is_none() {
            mark_s.set(Some(started.elapsed().as_secs_f64()));
        }
    };
    let report = store.gc(&GcOptions { dry_run, ..Default::default() }, &progress, &|| false)?;
    Ok((report, mark_s.get().unwrap_or(0.0)))
}

/// Peak anonymous and file-backed resident memory of this process (KiB), sampled every 5 ms
/// from /proc/self/status until `stop` is set: the mapped LMDB index counts as file-backed.
fn sample_rss(stop: &AtomicBool) -> (u64, u64) {
    let (mut anon, mut file) = (0, 0);
    loop {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        };
        anon = anon.max(field("RssAnon:").unwrap_or(0));
        file = file.max(field("RssFile:").unwrap_or(0));
        if stop.load(Ordering::Relaxed) {
            return (anon, file);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The naive mark and count (see the module docs).
pub fn naive(dir: &Path) -> Res<NaiveReport> {
    let started = Instant::now();
    let catalog = Catalog::open(&dir.join("index"), Access::ReadOnly)?;
    let rtxn = catalog.read()?;
    let mut r = NaiveReport::default();
    let mut live: HashSet<Digest> = HashSet::new();
    let mut files: HashMap<u64, File> = HashMap::new();
    let (mut scratch, mut raw) = (Vec::new(), Vec::new());
    for item in catalog.points.iter(&rtxn)? {
        let (_, v) = item?;
        let point: RestorePoint = serde_json::from_slice(v)?;
        r.points += 1;
        live.insert(Digest::of(v)); // its manifest record
        for f in &point.files {
            live.insert(f.digest);
        }
        for disk in point.disks.iter().filter(|d| d.height > 0) {
            let mut stack = vec![(disk.root, disk.height - 1)];
            while let Some((node, level)) = stack.pop() {
                live.insert(node);
                r.digests_visited += 1;
                let loc = catalog.chunk(&rtxn, &node)?.ok_or_else(|| format!("tree node {node} is not indexed"))?;
                let path = dir.join("packs").join(format!("{:016x}.pack", loc.pack));
                let file = match files.entry(loc.pack) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => e.insert(File::open(&path)?),
                };
                pack::read_record(
                    file,
                    &path,
                    loc.offset,
                    loc.stored_len,
                    &mut scratch,
                    &mut raw,
                    ReadCheck::Checksum,
                    &store::Keyring::plain(),
                )?;
                r.tree_nodes_read += 1;
                let entries = tree::decode_node(&raw, level, &node)?;
                if level == 0 {
                    for d in entries.into_iter().filter(|d| !d.is_zero()) {
                        live.insert(d);
                        r.digests_visited += 1;
                    }
                } else {
                    stack.extend(entries.into_iter().map(|d| (d, level - 1)));
                }
            }
        }
    }
    r.mark_s = started.elapsed().as_secs_f64();
    r.set_len = live.len() as u64;
    r.set_bytes = (live.capacity() as u64 * 8 / 7).next_power_of_two() * 33;
    let counting = Instant::now();
    for item in catalog.chunks.iter(&rtxn)? {
        let (k, v) = item?;
        r.entries += 1;
        let loc = ChunkLoc::decode(v).ok_or("unreadable index entry")?;
        let digest = Digest::from_slice(k).ok_or("index key is not a digest")?;
        if loc.kind == RecordKind::Tombstone || live.contains(&digest) {
            r.live += 1;
            continue;
        }
        r.dead += 1;
        r.dead_bytes += pack::RECORD_HEADER_LEN as u64 + u64::from(loc.stored_len);
        match loc.kind {
            RecordKind::Data => r.dead_data += 1,
            RecordKind::Tree => r.dead_tree += 1,
            _ => r.dead_manifest += 1,
        }
    }
    r.count_s = counting.elapsed().as_secs_f64();
    r.duration_s = started.elapsed().as_secs_f64();
    Ok(r)
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: gc_bench build DIR [CHUNKS] | gc DIR [--dry-run] | naive DIR";
    let (cmd, dir) = match (args.first(), args.get(1)) {
        (Some(c), Some(d)) => (c.as_str(), Path::new(d)),
        _ => return Err(usage.into()),
    };
    let run = || -> Res<serde_json::Value> {
        Ok(match cmd {
            "build" => {
                let chunks = args.get(2).map(|n| n.replace(['_', ','], "").parse::<u64>()).transpose()?;
                serde_json::to_value(build(dir, chunks.unwrap_or(1_000_000))?)?
            }
            "gc" => {
                let (report, mark_s) = gc(dir, args.iter().any(|a| a == "--dry-run"))?;
                let mut v = serde_json::to_value(report)?;
                v["mark_s"] = mark_s.into();
                v
            }
            "naive" => serde_json::to_value(naive(dir)?)?,
            _ => return Err(usage.into()),
        })
    };
    let stop = AtomicBool::new(false);
    let (result, (anon, file)) = std::thread::scope(|s| {
        let sampler = s.spawn(|| sample_rss(&stop));
        let result = run();
        stop.store(true, Ordering::Relaxed);
        (result, sampler.join().unwrap_or((0, 0)))
    });
    let mut json = result?;
    json["peak_rss_anon_kib"] = anon.into();
    json["peak_rss_file_kib"] = file.into();
    println!("{json}");
    Ok(())
}
