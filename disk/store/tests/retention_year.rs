//! A year of simulated daily backups of one VM disk, pruned every day by a GFS retention policy
//! (`keep_last 7, keep_daily 14, keep_weekly 8, keep_monthly 12, keep_yearly 3`, Europe/Berlin)
//! and garbage collected every day: the number of restore points and the pack bytes stay
//! under bounds derived from the policy and the workload, every kept point restores byte for
//! byte, and verify finds the store clean.
//!
//! The store stamps points with the wall clock, so the test keeps its own map from point id
//! to simulated creation time (2025-03-01 20:00 UTC plus one day per backup, across both DST
//! changes and a new year) and feeds that to `retention::plan`.
//!
//! ## The workload and the bound
//! The disk has `N` chunks of 16 KiB (random bytes, stored raw). Like a real VM, most writes
//! land in a hot working set: every day about 3% of the disk (some days three times that) is
//! rewritten inside the first `HOT` chunks, and on a patch day every 30 days `PATCH` chunks
//! elsewhere are rewritten. So the data chunks any set of points can reference are at most
//! - the `HOT` hot chunks of each point: `POINTS_BOUND × HOT`, plus
//! - the first version of every cold chunk and every cold write: `N - HOT + patch days × PATCH`,
//!
//! whatever the daily churn, while without GC the store would keep every chunk ever written.
//! A GC leaves at most `repack threshold` (30%) of a pack's bytes dead, so the pack bytes stay
//! under the live bound / 0.7, plus the tree nodes and manifests of the kept points, plus
//! the tombstones (never collected: about 150 bytes per pruned point, once the GC has merged
//! the small packs that hold them), plus 4 KiB of padding per pack. The bound below still
//! allows one 4 KiB pack per pruning day, a generous ceiling; the number of pack files is
//! asserted separately and stays bounded because the GC merges small packs.
//!
//! Within this first year the pack bytes still rise slowly (about 1 MiB a month here): the
//! monthly and yearly rules are still filling their 12 and 3 periods. The bound is where they
//! stop.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use store::retention::{self, Candidate, RetentionPolicy};
use store::{
    ChunkEncoder, Digest, DiskIndex, EncodedChunk, GcOptions, PointStats, RecordKind, Store, StoreOptions, TreeBuilder,
};
use testkit::Rng;

const N: usize = 320;
const HOT: usize = 32;
const CHUNK: usize = 16 << 10;
/// Chunks rewritten on an ordinary day (3% of the disk) and on a busy day.
const DAILY: usize = 10;
const BUSY: usize = 30;
/// Cold chunks rewritten on a patch day (10% of the disk), every `PATCH_EVERY` days.
const PATCH: usize = 32;
const PATCH_EVERY: u64 = 30;
const DAYS: u64 = 365;
/// 2025-03-01 20:00 UTC (21:00 in Berlin, 22:00 in summer: always the same local day).
const START_UNIX: u64 = 1_740_859_200;
const DAY: u64 = 86_400;
/// Each rule keeps at most its N points (the newest is among the last 7).
const POINTS_BOUND: usize = 7 + 14 + 8 + 12 + 3;
/// Restore every kept point after these days too (and at the end).
const CHECKPOINTS: [u64; 3] = [60, 180, 300];

/// The content of chunk version `v`: 16 KiB no other version has.
fn content(v: u64) -> Vec<u8> {
    let mut out = vec![0u8; CHUNK];
    blake3::Hasher::new().update(&v.to_le_bytes()).finalize_xof().fill(&mut out);
    out
}

fn pack_files(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    for e in std::fs::read_dir(dir.join("packs")).unwrap() {
        bytes += e.unwrap().metadata().unwrap().len();
        files += 1;
    }
    (bytes, files)
}

fn assert_restores(store: &Store, id: u64, want: &[u64]) {
    let point = store.find(&format!("vm@{id}")).unwrap();
    let (mut scratch, mut out) = (Vec::new(), Vec::new());
    let mut n = 0;
    for (i, d) in store.walk(&point.disks[0]).enumerate() {
        let d = d.unwrap_or_else(|e| panic!("vm@{id}: chunk {i}: {e}"));
        store.read_chunk(&d, &mut scratch, &mut out).unwrap_or_else(|e| panic!("vm@{id}: chunk {i}: {e}"));
        assert!(out == content(want[i]), "vm@{id}: chunk {i} differs");
        n += 1;
    }
    assert_eq!(n, N, "vm@{id}");
}

#[test]
fn a_year_of_daily_backups_with_gfs_retention_and_daily_gc_keeps_the_store_bounded_and_every_point_restorable() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions { create: true, pack_target: 1 << 20, ..Default::default() })
        .expect("open store");
    let policy = RetentionPolicy {
        keep_last: Some(7),
        keep_daily: Some(14),
        keep_weekly: Some(8),
        keep_monthly: Some(12),
        keep_yearly: Some(3),
        keep_within_s: None,
    };
    let tz = retention::time_zone("Europe/Berlin").unwrap();

    let patch_days = (0..DAYS).filter(|d| d % PATCH_EVERY == PATCH_EVERY - 1).count();
    let record = (64 + CHUNK) as u64;
    let live_chunks_bound = (POINTS_BOUND * HOT + (N - HOT) + patch_days * PATCH) as u64;
    // Per point: five full leaf nodes, the root and the manifest, well under 12 KiB.
    let live_bytes_bound = live_chunks_bound * record + POINTS_BOUND as u64 * (12 << 10);
    let threshold = store::DEFAULT_REPACK_THRESHOLD;

    let mut rng = Rng(2025);
    let mut disk: Vec<u64> = (0..N as u64).collect();
    let mut digests: Vec<Digest> = disk.iter().map(|&v| Digest::of(&content(v))).collect();
    let mut next_version = N as u64;
    let mut changed: Vec<usize> = (0..N).collect();
    // id -> (simulated creation time, chunk versions): the points the store should hold.
    let mut kept: BTreeMap<u64, (u64, Vec<u64>)> = BTreeMap::new();
    let mut written = 0u64;
    let (mut max_points, mut max_bytes, mut max_files, mut max_other_files, mut prune_days) = (0, 0, 0, 0, 0u64);
    let mut enc = ChunkEncoder::new(None);
    for day in 0..DAYS {
        if day > 0 {
            changed.clear();
            let hot_writes = if rng.below(7) == 0 { BUSY } else { DAILY };
            while changed.len() < hot_writes {
                let pos = rng.below(HOT as u64) as usize;
                if !changed.contains(&pos) {
                    changed.push(pos);
                }
            }
            if day % PATCH_EVERY == PATCH_EVERY - 1 {
                let first = changed.len();
                while changed.len() < first + PATCH {
                    let pos = HOT + rng.below((N - HOT) as u64) as usize;
                    if !changed.contains(&pos) {
                        changed.push(pos);
                    }
                }
            }
            for &pos in &changed {
                disk[pos] = next_version;
                digests[pos] = Digest::of(&content(next_version));
                next_version += 1;
            }
        }

        // Back up: the changed chunks, then the tree (unchanged nodes deduplicate).
        let mut session = store.begin_backup().unwrap();
        for &pos in &changed {
            assert!(session.insert(&enc.encode(digests[pos], RecordKind::Data, &content(disk[pos]))).unwrap());
            written += record;
        }
        let mut tree = TreeBuilder::new();
        for d in &digests {
            tree.push(*d, &mut |n: EncodedChunk| session.insert(&n).map(|_| ())).unwrap();
        }
        let (root, height) = tree.finish(&mut |n: EncodedChunk| session.insert(&n).map(|_| ())).unwrap();
        let index = DiskIndex {
            label: "disk0".into(),
            source: "year".into(),
            format: "raw".into(),
            size: (N * CHUNK) as u64,
            chunk_size: CHUNK as u32,
            chunks: N as u64,
            root,
            height,
        };
        let point = session.commit("vm", vec![index], PointStats::default()).unwrap();
        let created = START_UNIX + day * DAY;
        kept.insert(point.id, (created, disk.clone()));

        // Prune what the plan drops, then collect garbage.
        let candidates: Vec<Candidate> = kept
            .iter()
            .map(|(&id, (created_unix, _))| Candidate { id, created_unix: *created_unix, pinned: false })
            .collect();
        let plan = retention::plan(&policy, &candidates, (created + 3600) as i64, &tz);
        let prune: Vec<(String, u64)> = plan.iter().filter(|d| !d.keep).map(|d| ("vm".to_string(), d.id)).collect();
        if !prune.is_empty() {
            store.delete_points(&prune, "pruned by the year test").unwrap();
            prune_days += 1;
            for (_, id) in &prune {
                kept.remove(id);
            }
        }
        let report = store.gc(&GcOptions::default(), &|_| {}, &|| false).unwrap();
        assert!(report.complete && report.chunks_held == 0, "day {day}: {report:?}");

        let listed: Vec<u64> = store.list().unwrap().iter().map(|p| p.id).collect();
        assert_eq!(listed, kept.keys().copied().collect::<Vec<_>>(), "day {day}");
        assert!(kept.len() <= POINTS_BOUND, "day {day}: {} points", kept.len());
        let (bytes, files) = pack_files(dir.path());
        let bound =
            (live_bytes_bound as f64 / (1.0 - threshold)) as u64 + (prune_days + 2 * POINTS_BOUND as u64) * 4096;
        assert!(bytes <= bound, "day {day}: {bytes} pack bytes in {files} packs, bound {bound}");
        // Small packs (each day's tombstones and backup tail) are merged by the GC, so the
        // number of files stays bounded too, instead of growing by one or two a day.
        assert!(files <= 100, "day {day}: {files} pack files");
        max_points = max_points.max(kept.len());
        max_bytes = max_bytes.max(bytes);
        max_files = max_files.max(files);
        max_other_files = max_other_files.max(files.saturating_sub(prune_days));
        if day % 60 == 59 {
            eprintln!("day {day}: {} points, {bytes} pack bytes in {files} packs", kept.len());
        }

        if CHECKPOINTS.contains(&day) {
            for (id, (_, want)) in &kept {
                assert_restores(&store, *id, want);
            }
        }
    }
    for (id, (_, want)) in &kept {
        assert_restores(&store, *id, want);
    }
    let verify = store.verify_store(2, &|_| {}).unwrap();
    assert!(verify.is_clean(), "{verify:?}");
    // The bound is worth something: without GC the store would hold every chunk written.
    assert!(max_bytes * 2 < written, "{max_bytes} pack bytes at most, {written} bytes written");
    eprintln!(
        "a year of daily backups: {} points kept at the end, at most {max_points} (bound {POINTS_BOUND}); \
         pack bytes at most {max_bytes} in at most {max_files} packs ({max_other_files} not tombstones), at the end {:?} (bound on live data {} / 0.7); \
         {written} bytes of chunks written; {} s",
        kept.len(),
        pack_files(dir.path()),
        live_bytes_bound,
        started.elapsed().as_secs_f64()
    );
}
