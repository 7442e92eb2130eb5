//! Damage and recovery: what verify finds, what reindex salvages, how backups and `repair`
//! heal, and read-only stores. Damage is injected by editing pack bytes or the LMDB file of a
//! closed store, as a failing disk would.

use std::path::{Path, PathBuf};

use store::{ChunkLoc, Digest, RestorePoint, Store, StoreError, StoreOptions};

mod common;
use common::CHUNK;

/// Chunk content: incompressible for odd ids, compressible for even ones.
fn chunk_content(id: u64) -> Vec<u8> {
    let mut v = vec![0u8; CHUNK];
    if id.is_multiple_of(2) {
        for (i, b) in v.iter_mut().enumerate() {
            *b = b"abcdefgh"[(i + id as usize) % 8];
        }
        v[0..8].copy_from_slice(&id.to_le_bytes());
    } else {
        blake3::Hasher::new().update(&id.to_le_bytes()).finalize_xof().fill(&mut v);
    }
    v
}

fn open(dir: &Path) -> Store {
    Store::open(dir, &StoreOptions { create: true, pack_target: 64 << 20, ..Default::default() }).expect("open store")
}

fn backup(store: &Store, name: &str, disk: &[u64]) -> RestorePoint {
    common::backup_with(store, name, disk, &chunk_content, None)
}

/// Restore a point's disk into memory, as `rackvault restore` reads it.
fn restore(store: &Store, point: &RestorePoint) -> store::Result<Vec<u8>> {
    let disk = &point.disks[0];
    let (mut scratch, mut out) = (Vec::new(), Vec::new());
    let mut image = Vec::new();
    for d in store.walk(disk) {
        store.read_chunk_checked(&d?, &mut scratch, &mut out, store::pack::ReadCheck::Checksum)?;
        image.extend_from_slice(&out);
    }
    Ok(image)
}

fn image_of(disk: &[u64]) -> Vec<u8> {
    disk.iter().flat_map(|&id| chunk_content(id)).collect()
}

fn pack_path(dir: &Path, loc: &ChunkLoc) -> PathBuf {
    dir.join("packs").join(format!("{:016x}.pack", loc.pack))
}

fn loc_of(store: &Store, id: u64) -> ChunkLoc {
    store.locate(&Digest::of(&chunk_content(id))).unwrap().unwrap()
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

/// Every position of `needle` in `hay`.
fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i).collect()
}

fn damaged_points(report: &store::VerifyReport) -> Vec<String> {
    report.damaged_points.iter().map(|p| p.point.clone()).collect()
}

#[test]
fn verify_finds_a_flipped_bit_in_a_chunk_index_entry() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Vec<u64> = (1..=40).collect();
    let (point, loc) = {
        let store = open(dir.path());
        let p = backup(&store, "vm", &disk);
        (p, loc_of(&store, 10))
    };
    // In LMDB's leaf page the 26-byte value follows the 32-byte key: flip a bit of the offset.
    let digest = Digest::of(&chunk_content(10));
    edit(&dir.path().join("index/data.mdb"), |bytes| {
        let mut flipped = 0;
        for at in find_all(bytes, &digest.0) {
            let v = at + 32;
            if ChunkLoc::decode(&bytes[v..v + ChunkLoc::ENCODED_LEN]) == Some(loc) {
                bytes[v + 9] ^= 0x01; // offset += 256
                flipped += 1;
            }
        }
        assert!(flipped >= 1, "index entry not found in data.mdb");
    });
    let store = open(dir.path());
    assert!(restore(&store, &point).is_err(), "the restore must fail: the index entry is wrong");
    let report = store.verify_store(2, &|_| {}).unwrap();
    assert!(!report.is_clean(), "{report:?}");
    assert_eq!(damaged_points(&report), ["vm@1"], "{report:?}");
    let ranges = &report.damaged_points[0].ranges;
    assert_eq!((ranges[0].offset, ranges[0].len), (9 * CHUNK as u64, CHUNK as u64), "{ranges:?}");
    assert!(ranges[0].reason.contains("index entry is wrong") && ranges[0].reason.contains("rackvault reindex"));
    assert!(report.damaged_records.iter().any(|r| r.contains("index entry")), "{report:?}");

    // Repair points the entry at the intact record again.
    let repaired = store.repair().unwrap();
    assert_eq!(repaired.index_entries_repointed, 1, "{repaired:?}");
    assert!(repaired.all_points_complete(), "{repaired:?}");
    assert_eq!(restore(&store, &point).unwrap(), image_of(&disk));
    assert!(store.verify_store(2, &|_| {}).unwrap().is_clean());
}

#[test]
fn a_flipped_digit_in_a_restore_point_record_is_refused_and_repaired_from_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Vec<u64> = (1..=12).collect();
    drop(backup(&open(dir.path()), "vm", &disk));
    edit(&dir.path().join("index/data.mdb"), |bytes| {
        let hits = find_all(bytes, b"\"chunk_size\":16384");
        assert!(!hits.is_empty());
        for at in hits {
            bytes[at + 13] = b'2'; // 16384 -> 26384
        }
    });
    let store = open(dir.path());
    let err = store.find("vm").unwrap_err();
    assert!(matches!(err, StoreError::DamagedPoint { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("vm@1") && msg.contains("rackvault repair"), "{msg}");
    assert!(store.find("vm@1").is_err());
    let report = store.verify_store(1, &|_| {}).unwrap();
    assert_eq!(damaged_points(&report), ["vm@1"], "{report:?}");
    assert!(report.damaged_points[0].ranges[0].reason.contains("rackvault repair"));

    let repaired = store.repair().unwrap();
    assert_eq!(repaired.points_restored_from_manifest, ["vm@1"], "{repaired:?}");
    let point = store.find("vm").unwrap();
    assert_eq!(point.disks[0].chunk_size, CHUNK as u32);
    assert_eq!(restore(&store, &point).unwrap(), image_of(&disk));
    assert!(store.verify_store(1, &|_| {}).unwrap().is_clean());
}

#[test]
fn one_unreadable_restore_point_record_does_not_hide_the_others() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        backup(&store, "a", &[1, 2, 3]);
        backup(&store, "b", &[4, 5, 6]);
    }
    edit(&dir.path().join("index/data.mdb"), |bytes| {
        for at in find_all(bytes, b"{\"name\":\"b\"") {
            bytes[at + 7] = b'!'; // no longer JSON
        }
    });
    let store = open(dir.path());
    let listed: Vec<String> = store.list().unwrap().iter().map(|p| p.spec()).collect();
    assert_eq!(listed, ["a@1"]);
    let (points, unreadable) = store.list_checked().unwrap();
    assert_eq!(points.len(), 1);
    assert_eq!(unreadable.iter().map(|u| u.spec()).collect::<Vec<_>>(), ["b@2"]);
    let report = store.verify_store(1, &|_| {}).unwrap();
    assert_eq!(report.restore_points_checked, 2);
    assert_eq!(damaged_points(&report), ["b@2"], "{report:?}");
    assert_eq!(restore(&store, &store.find("a").unwrap()).unwrap(), image_of(&[1, 2, 3]));
}

#[test]
fn verify_resyncs_after_a_damaged_record_header_and_names_the_points_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a: Vec<u64> = (1..=20).collect();
    let b: Vec<u64> = (21..=40).collect();
    backup(&store, "a", &a);
    backup(&store, "b", &b);
    let (bad_header, bad_payload) = (loc_of(&store, 25), loc_of(&store, 30));
    let clean = store.verify_store(1, &|_| {}).unwrap();
    edit(&pack_path(dir.path(), &bad_header), |bytes| bytes[bad_header.offset as usize] ^= 0xff);
    let in_payload = bad_payload.offset as usize + 64 + bad_payload.stored_len as usize / 2;
    edit(&pack_path(dir.path(), &bad_payload), |bytes| bytes[in_payload] ^= 0xff);
    let report = store.verify_store(1, &|_| {}).unwrap();
    assert_eq!(damaged_points(&report), ["b@2"], "{report:?}");
    let offsets: Vec<(u64, u64)> = report.damaged_points[0].ranges.iter().map(|r| (r.offset, r.len)).collect();
    assert_eq!(offsets, [(4 * CHUNK as u64, CHUNK as u64), (9 * CHUNK as u64, CHUNK as u64)], "{report:?}");
    // Every record but the two damaged ones was checked: the scan went on past the bad header.
    assert_eq!(report.chunks_checked, clean.chunks_checked - 2, "{report:?}");
    assert!(report.damaged_records.iter().any(|r| r.contains("resumed")), "{report:?}");
}

#[test]
fn a_damaged_pack_header_flags_no_point_whose_records_are_intact() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let disk: Vec<u64> = (1..=20).collect();
    let point = backup(&store, "vm", &disk);
    edit(&pack_path(dir.path(), &loc_of(&store, 1)), |bytes| bytes[20] ^= 0x04);
    let report = store.verify_store(1, &|_| {}).unwrap();
    assert!(report.damaged_points.is_empty(), "{report:?}");
    assert_eq!(report.damaged_records.len(), 1, "{report:?}");
    assert!(report.damaged_records[0].contains("header"), "{report:?}");
    assert_eq!(restore(&store, &point).unwrap(), image_of(&disk));
}

#[test]
fn reindex_salvages_the_records_of_a_pack_with_a_damaged_header() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let disk: Vec<u64> = (1..=20).collect();
    let point = backup(&store, "vm", &disk);
    edit(&pack_path(dir.path(), &loc_of(&store, 1)), |bytes| bytes[45] ^= 0x80);
    let report = store.reindex().unwrap();
    assert!(report.damaged_records.iter().any(|r| r.contains("header")), "{report:?}");
    assert_eq!(restore(&store, &store.find("vm").unwrap()).unwrap(), image_of(&disk));
    assert_eq!(restore(&store, &point).unwrap(), image_of(&disk));
}

/// Truncate the pack holding chunk `id` to `keep` of its length.
fn truncate_pack(dir: &Path, store: &Store, id: u64, keep: f64) -> PathBuf {
    let path = pack_path(dir, &loc_of(store, id));
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len((len as f64 * keep) as u64).unwrap();
    path
}

#[test]
fn a_backup_after_damage_stores_lost_chunks_again_and_heals_older_points() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let disk: Vec<u64> = (1..=60).collect();
    let a = backup(&store, "a", &disk);
    let truncated = truncate_pack(dir.path(), &store, 1, 0.5);
    let report = store.verify_store(2, &|_| {}).unwrap();
    assert_eq!(damaged_points(&report), ["a@1"]);
    assert!(restore(&store, &a).is_err());

    let b = backup(&store, "b", &disk);
    assert!(store.find("b").is_ok());
    assert_eq!(restore(&store, &b).unwrap(), image_of(&disk), "the new point must restore");
    assert_eq!(restore(&store, &a).unwrap(), image_of(&disk), "the old point heals with the new copies");
    let report = store.verify_store(2, &|_| {}).unwrap();
    assert!(report.damaged_points.is_empty(), "{report:?}");
    assert!(!report.damaged_records.is_empty());
    let shown = truncated.display().to_string();
    assert!(report.damaged_records.iter().all(|r| r.starts_with(&shown)), "only the dead tail is left: {report:?}");
}

#[test]
fn repair_after_healing_leaves_a_store_that_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let disk: Vec<u64> = (1..=60).collect();
    let a = backup(&store, "a", &disk);
    let truncated = truncate_pack(dir.path(), &store, 1, 0.5);
    assert!(!store.verify_store(2, &|_| {}).unwrap().is_clean());
    let b = backup(&store, "b", &disk);
    let report = store.repair().unwrap();
    assert_eq!(report.packs_rewritten.len(), 1, "{report:?}");
    assert!(!report.records_dropped.is_empty(), "{report:?}");
    assert!(report.all_points_complete(), "{report:?}");
    assert!(!truncated.exists(), "the damaged pack is replaced");
    let verify = store.verify_store(2, &|_| {}).unwrap();
    assert!(verify.is_clean(), "{verify:?}");
    for p in [&a, &b] {
        assert_eq!(restore(&store, &store.find(&p.spec()).unwrap()).unwrap(), image_of(&disk));
    }
    // The rebuilt catalog agrees: reindex from the packs alone still finds both points.
    store.reindex().unwrap();
    assert_eq!(store.list().unwrap().len(), 2);
    assert!(store.verify_store(2, &|_| {}).unwrap().is_clean());
}

#[test]
fn repair_before_healing_names_the_incomplete_point_and_a_later_backup_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let disk: Vec<u64> = (1..=60).collect();
    let a = backup(&store, "a", &disk);
    truncate_pack(dir.path(), &store, 1, 0.5);
    let report = store.repair().unwrap();
    assert_eq!(report.points_incomplete.iter().map(|p| p.point.as_str()).collect::<Vec<_>>(), ["a@1"]);
    assert!(report.points_incomplete[0].advice.contains("back up"));
    // Its catalog record is sound, so its lost manifest was written again.
    assert_eq!(report.manifests_rewritten, ["a@1"], "{report:?}");
    assert_eq!(damaged_points(&store.verify_store(1, &|_| {}).unwrap()), ["a@1"]);
    backup(&store, "b", &disk);
    assert_eq!(restore(&store, &a).unwrap(), image_of(&disk));
    let verify = store.verify_store(1, &|_| {}).unwrap();
    assert!(verify.is_clean(), "{verify:?}");
}

#[test]
fn a_store_opened_read_only_lists_verifies_and_reads_but_refuses_backups() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Vec<u64> = (1..=10).collect();
    drop(backup(&open(dir.path()), "vm", &disk));
    let before = std::fs::read(dir.path().join("index/data.mdb")).unwrap();
    let store = Store::open(dir.path(), &StoreOptions { read_only: true, ..Default::default() }).unwrap();
    assert!(store.read_only().is_some());
    let point = store.find("vm").unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(store.verify_store(1, &|_| {}).unwrap().is_clean());
    assert_eq!(restore(&store, &point).unwrap(), image_of(&disk));
    let err = store.begin_backup().unwrap_err();
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err}");
    assert!(err.to_string().contains("read-only"), "{err}");
    assert!(matches!(store.repair().unwrap_err(), StoreError::ReadOnly { .. }));
    assert!(matches!(store.reindex().unwrap_err(), StoreError::ReadOnly { .. }));
    drop(store);
    assert_eq!(std::fs::read(dir.path().join("index/data.mdb")).unwrap(), before, "read-only open wrote the index");
}

#[test]
fn a_store_on_a_read_only_filesystem_opens_read_only_by_itself() {
    if !testkit::is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path();
    let mount = |args: &[&str]| std::process::Command::new("mount").args(args).status().is_ok_and(|s| s.success());
    if !mount(&["-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt.to_str().unwrap()]) {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(mnt);
    let root = mnt.join("store");
    let disk: Vec<u64> = (1..=10).collect();
    drop(backup(&open(&root), "vm", &disk));
    assert!(mount(&["-o", "remount,ro", mnt.to_str().unwrap()]), "remount read-only failed");
    let store = Store::open(&root, &StoreOptions::default()).unwrap();
    let why = store.read_only().expect("opened read-only").to_string();
    assert!(why.contains("read-only"), "{why}");
    let point = store.find("vm").unwrap();
    assert!(store.verify_store(1, &|_| {}).unwrap().is_clean());
    assert_eq!(restore(&store, &point).unwrap(), image_of(&disk));
    let err = store.begin_backup().unwrap_err().to_string();
    assert!(err.contains("mounted read-only"), "{err}");
}

// ---- incremental verify -------------------------------------------------------------------------

fn open_small_packs(dir: &Path) -> Store {
    Store::open(dir, &StoreOptions { create: true, pack_target: 1 << 20, ..Default::default() }).unwrap()
}

fn incremental(window_s: Option<u64>, max_packs: Option<u64>) -> store::VerifyOptions {
    store::VerifyOptions { skip_verified_within_s: window_s, max_packs }
}

#[test]
fn an_incremental_verify_resumes_where_the_last_stopped_and_skips_what_it_verified_recently() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small_packs(dir.path());
    // Odd ids are incompressible: 400 of them fill about seven 1 MiB packs.
    let disk: Vec<u64> = (0..400).map(|i| 2 * i + 1).collect();
    backup(&store, "vm", &disk);
    let packs = store.usage().unwrap().packs;
    assert!(packs >= 6, "{packs} packs");
    let day = Some(86_400);
    let mut scanned = 0;
    let mut runs = 0;
    loop {
        let r = store.verify_store_with(&incremental(day, Some(2)), 2, &|_| {}, &|| false).unwrap();
        assert!(r.is_clean(), "{r:?}");
        assert_eq!(r.restore_points_checked, 1, "every point is walked on every run");
        assert_eq!(r.packs_scanned + r.packs_skipped_recent + r.packs_left_for_later, packs);
        scanned += r.packs_scanned;
        runs += 1;
        if r.packs_left_for_later == 0 {
            break;
        }
        assert_eq!(r.packs_scanned, 2);
    }
    assert_eq!(scanned, packs, "each pack scanned once over {runs} runs");
    let r = store.verify_store_with(&incremental(day, None), 2, &|_| {}, &|| false).unwrap();
    assert_eq!((r.packs_scanned, r.packs_skipped_recent), (0, packs), "{r:?}");
    // A window of zero seconds scans everything again.
    let r = store.verify_store_with(&incremental(Some(0), None), 2, &|_| {}, &|| false).unwrap();
    assert_eq!(r.packs_scanned, packs);
}

#[test]
fn damage_in_a_pack_verified_recently_waits_for_its_next_scan_but_a_full_verify_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Vec<u64> = (0..300).map(|i| 2 * i + 1).collect();
    let loc = {
        let store = open_small_packs(dir.path());
        backup(&store, "vm", &disk);
        let r = store.verify_store_with(&incremental(Some(86_400), None), 2, &|_| {}, &|| false).unwrap();
        assert!(r.is_clean());
        loc_of(&store, disk[10])
    };
    // A bit flips in a data record after its pack was scanned clean.
    let path = pack_path(dir.path(), &loc);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(loc.offset + 64 + 100) as usize] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let store = open_small_packs(dir.path());
    let r = store.verify_store_with(&incremental(Some(86_400), None), 2, &|_| {}, &|| false).unwrap();
    assert!(r.is_clean(), "the pack was verified within the window, so it is trusted: {r:?}");
    let full = store.verify_store(2, &|_| {}).unwrap();
    assert!(!full.is_clean(), "a full verify scans it");
    // And from now on every verify reports it, incremental ones included: the pack is no
    // longer recorded as verified, and the damaged chunk is noted.
    let r = store.verify_store_with(&incremental(Some(86_400), None), 2, &|_| {}, &|| false).unwrap();
    assert!(!r.is_clean() && r.damaged_points.iter().any(|p| p.point.starts_with("vm@")), "{r:?}");
}

#[test]
fn a_cancelled_verify_stops_early_records_nothing_and_the_next_run_scans_those_packs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small_packs(dir.path());
    let disk: Vec<u64> = (0..400).map(|i| 2 * i + 1).collect();
    let point = backup(&store, "vm", &disk);
    let packs = store.usage().unwrap().packs;
    let seen = std::sync::atomic::AtomicU64::new(0);
    let count = |n: u64| {
        seen.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    };
    let after_a_pack = || seen.load(std::sync::atomic::Ordering::Relaxed) > 0;
    let e = store.verify_store_with(&incremental(Some(86_400), None), 1, &count, &after_a_pack).unwrap_err();
    assert!(matches!(e, StoreError::Cancelled), "{e}");
    assert!(e.to_string().contains("run it again"), "{e}");
    assert!(seen.into_inner() < store.usage().unwrap().pack_bytes, "it stopped before the end");
    // Nothing was recorded as verified: the next incremental run scans every pack.
    let r = store.verify_store_with(&incremental(Some(86_400), None), 2, &|_| {}, &|| false).unwrap();
    assert_eq!(r.packs_scanned, packs, "{r:?}");
    // Verifying points stops the same way.
    let e = store.verify_points_with(std::slice::from_ref(&point), 2, &|_| {}, &|| true).unwrap_err();
    assert!(matches!(e, StoreError::Cancelled), "{e}");
    assert!(store.verify_points(std::slice::from_ref(&point), 2, &|_| {}).unwrap().is_clean());
}
