//! Store tests against a simple in-memory model, plus recovery, concurrency and hostile-bytes
//! checks. Everything runs on real files in temporary directories.

use std::collections::HashMap;
use std::path::Path;

use store::{pack, tree, ChunkEncoder, Digest, PointStats, RecordKind, RestorePoint, Store, StoreError, StoreOptions};

use testkit::Rng;

mod common;
use common::CHUNK;

/// A chunk's content from a small alphabet of "blocks", so chunks repeat and dedup matters.
fn chunk_content(id: u64) -> Vec<u8> {
    if id == 0 {
        return vec![0; CHUNK];
    }
    let mut v = vec![0u8; CHUNK];
    if id.is_multiple_of(3) {
        // compressible
        for (i, b) in v.iter_mut().enumerate() {
            *b = b"abcdefgh"[(i + id as usize) % 8];
        }
    } else {
        blake3::Hasher::new().update(&id.to_le_bytes()).finalize_xof().fill(&mut v);
    }
    v
}

fn open(dir: &Path, pack_target: u64) -> Store {
    Store::open(dir, &StoreOptions { create: true, pack_target, ..Default::default() }).expect("open store")
}

/// Back up a "disk" given as a list of chunk ids (0 = zero chunk) through the store API, the
/// way the engine does.
fn backup(store: &Store, name: &str, disk: &[u64]) -> RestorePoint {
    common::backup_with(store, name, disk, &chunk_content, None)
}

/// Read a restore point back as chunk contents and compare with the model.
fn assert_restores(store: &Store, point: &RestorePoint, want: &[u64]) {
    common::assert_restores(store, point, want, &chunk_content)
}

#[test]
fn model_based_random_history() {
    for seed in [1u64, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(seed);
        let mut model: HashMap<(String, u64), Vec<u64>> = HashMap::new();
        let mut disks: Vec<Vec<u64>> =
            (0..3).map(|_| (0..(50 + rng.below(300))).map(|_| rng.below(40)).collect()).collect();
        // Small packs so that pack rotation happens often.
        let mut store = open(dir.path(), 1 << 20);
        for step in 0..25 {
            match rng.below(10) {
                0 => {
                    // reopen the store, as a new process would
                    drop(store);
                    store = open(dir.path(), 1 << 20);
                }
                1 => {
                    // a backup abandoned midway: its unsealed pack must not leak or count
                    let mut session = store.begin_backup().unwrap();
                    let data = chunk_content(10_000 + step);
                    let d = Digest::of(&data);
                    session.insert(&ChunkEncoder::new(Some(1)).encode(d, RecordKind::Data, &data)).unwrap();
                    drop(session);
                }
                _ => {
                    let which = rng.below(3) as usize;
                    let disk = &mut disks[which];
                    for _ in 0..rng.below(10) {
                        let i = rng.below(disk.len() as u64) as usize;
                        disk[i] = rng.below(60);
                    }
                    let name = format!("vm{which}");
                    let p = backup(&store, &name, disk);
                    model.insert((name, p.id), disk.clone());
                }
            }
        }
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), model.len());
        for p in &listed {
            assert_restores(&store, p, &model[&(p.name.clone(), p.id)]);
        }
        let report = store.verify_store(2, &|_| {}).unwrap();
        assert!(report.is_clean(), "{report:?}");
        // Rebuilding the index from the packs gives the same answers.
        store.reindex().unwrap();
        for p in &store.list().unwrap() {
            assert_restores(&store, p, &model[&(p.name.clone(), p.id)]);
        }
    }
}

#[test]
fn second_backup_of_same_disk_stores_only_tree_root_and_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 64 << 20);
    let disk: Vec<u64> = (0..500).map(|i| i % 97).collect();
    backup(&store, "vm", &disk);
    let before = store.usage().unwrap();
    let mut changed = disk.clone();
    changed[250] = 1234;
    backup(&store, "vm", &changed);
    let after = store.usage().unwrap();
    // one data chunk, the changed leaf, its parent chain (height 2 here), and the manifest
    let new_records = after.chunks - before.chunks;
    assert!(new_records <= 5, "{new_records} new records for a one-chunk change");
}

#[test]
fn leftovers_of_a_live_writer_are_kept_and_of_a_dead_one_removed() {
    let dir = tempfile::tempdir().unwrap();
    let data = chunk_content(5);
    {
        let store = open(dir.path(), 64 << 20);
        let mut session = store.begin_backup().unwrap();
        session.insert(&ChunkEncoder::new(Some(1)).encode(Digest::of(&data), RecordKind::Data, &data)).unwrap();
        // The session's destructor never runs and its lock stays held, as for a backup that
        // is still running in another process.
        std::mem::forget(session);
    }
    let leftover = std::fs::read_dir(dir.path().join("tmp")).unwrap().next().unwrap().unwrap().path();
    let store = open(dir.path(), 64 << 20);
    assert!(!store.cleanup_report().ran, "cleanup must wait while a writer holds the store");
    assert!(leftover.exists(), "a live writer's pack was deleted");
    drop(store);

    // The same unsealed pack in a store nobody holds: the writer died, so it goes.
    let other = tempfile::tempdir().unwrap();
    drop(open(other.path(), 64 << 20));
    std::fs::copy(&leftover, other.path().join("tmp").join(leftover.file_name().unwrap())).unwrap();
    let store = open(other.path(), 64 << 20);
    assert!(store.cleanup_report().ran);
    assert_eq!(store.cleanup_report().tmp_packs_removed, 1);
    assert_eq!(std::fs::read_dir(other.path().join("tmp")).unwrap().count(), 0);
    assert!(!store.contains(&Digest::of(&data)).unwrap());
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn lost_index_is_rebuilt_from_packs_with_its_restore_points() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Vec<u64> = (0..300).map(|i| (i * 7) % 50).collect();
    {
        let store = open(dir.path(), 1 << 20);
        backup(&store, "a", &disk);
        backup(&store, "b", &disk[..100]);
    }
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let store = open(dir.path(), 1 << 20);
    assert_eq!(store.cleanup_report().restore_points_recovered, 2);
    let points = store.list().unwrap();
    assert_eq!(points.len(), 2);
    assert_restores(&store, &store.find("a").unwrap(), &disk);
    assert_restores(&store, &store.find("b").unwrap(), &disk[..100]);
    // New ids do not collide with recovered ones.
    let p = backup(&store, "a", &disk);
    assert!(p.id > points.iter().map(|p| p.id).max().unwrap());
}

#[test]
fn concurrent_sessions_in_threads_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 20);
    let disks: Vec<Vec<u64>> = (0..4).map(|t| (0..400).map(|i| ((i * 13 + t * 5) % 150) as u64).collect()).collect();
    let points: Vec<RestorePoint> = std::thread::scope(|s| {
        let handles: Vec<_> = disks
            .iter()
            .enumerate()
            .map(|(t, d)| {
                s.spawn({
                    let store = &store;
                    move || backup(store, &format!("t{t}"), d)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (p, d) in points.iter().zip(&disks) {
        assert_restores(&store, p, d);
    }
    assert!(store.verify_store(2, &|_| {}).unwrap().is_clean());
}

#[test]
fn newer_format_is_refused_without_touching_the_store() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), 1 << 20));
    let marker = dir.path().join("rackvault-store.json");
    let text = std::fs::read_to_string(&marker).unwrap().replace("\"format\": 2", "\"format\": 7");
    std::fs::write(&marker, text).unwrap();
    let index_before = std::fs::read(dir.path().join("index/data.mdb")).unwrap();
    let err = Store::open(dir.path(), &StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::NewerFormat { found: 7, .. }), "{err}");
    assert!(err.to_string().contains("upgrade rackvault"), "{err}");
    assert_eq!(std::fs::read(dir.path().join("index/data.mdb")).unwrap(), index_before);
}

#[test]
fn a_format_1_store_is_upgraded_in_place_at_its_first_writable_open() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Vec<u64> = (1..40).collect();
    backup(&open(dir.path(), 1 << 20), "vm", &disk);
    let marker = dir.path().join("rackvault-store.json");
    let text = std::fs::read_to_string(&marker).unwrap().replace("\"format\": 2", "\"format\": 1");
    std::fs::write(&marker, text).unwrap();
    let store = open(dir.path(), 1 << 20);
    assert!(std::fs::read_to_string(&marker).unwrap().contains("\"format\": 2"));
    assert_restores(&store, &store.find("vm").unwrap(), &disk);
}

#[test]
fn a_directory_that_is_not_a_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("something"), b"x").unwrap();
    let err = Store::open(dir.path(), &StoreOptions { create: true, ..Default::default() }).unwrap_err();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err}");
}

#[test]
fn damaged_pack_is_reported_as_restore_point_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 64 << 20);
    let disk: Vec<u64> = (1..=40).collect();
    let p = backup(&store, "vm", &disk);
    // Flip a byte in the payload of the 10th data chunk.
    let loc = store.locate(&Digest::of(&chunk_content(10))).unwrap().unwrap();
    let path = dir.path().join("packs").join(format!("{:016x}.pack", loc.pack));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(loc.offset + pack::RECORD_HEADER_LEN as u64 + 5) as usize] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    for report in
        [store.verify_store(2, &|_| {}).unwrap(), store.verify_points(std::slice::from_ref(&p), 2, &|_| {}).unwrap()]
    {
        assert_eq!(report.damaged_points.len(), 1, "{report:?}");
        let ranges = &report.damaged_points[0].ranges;
        assert_eq!(ranges.len(), 1, "{ranges:?}");
        assert_eq!(ranges[0].offset, 9 * CHUNK as u64);
        assert_eq!(ranges[0].len, CHUNK as u64);
    }
}

#[test]
fn hostile_record_and_node_bytes_never_panic() {
    let mut rng = Rng(99);
    let data = chunk_content(3);
    let enc = ChunkEncoder::new(Some(1)).encode(Digest::of(&data), RecordKind::Data, &data);
    let mut hdr = pack::RecordHeader {
        kind: enc.kind,
        codec: enc.codec,
        cipher: enc.cipher,
        raw_len: enc.raw_len,
        stored_len: enc.payload.len() as u32,
        digest: enc.digest,
        foreign: false,
        crc: 0,
    }
    .encode();
    let crc = pack::RecordHeader::compute_crc(&hdr, &enc.payload);
    hdr[48..52].copy_from_slice(&crc.to_le_bytes());
    let mut record = hdr.to_vec();
    record.extend_from_slice(&enc.payload);
    let mut out = Vec::new();
    for _ in 0..20_000 {
        let mut r = record.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(r.len() as u64) as usize;
            r[i] ^= 1 << rng.below(8);
        }
        if let Ok(Some(h)) = pack::RecordHeader::decode(&r) {
            let payload = &r[pack::RECORD_HEADER_LEN..];
            let _ = pack::decode_payload(h.codec, payload, h.raw_len, &h.digest, &mut out);
        }
        let _ = tree::decode_node(&r, 0, &Digest::ZERO);
        let _ = pack::decode_pack_header(&r);
    }
}

#[test]
fn configuration_files_travel_with_the_point_and_survive_a_lost_index() {
    let dir = tempfile::tempdir().unwrap();
    let vmx = b"displayName = \"web01\"\nscsi0:0.fileName = \"web01.vmdk\"\n".repeat(50);
    let nvram = vec![0xa5u8; 8704];
    let disk: Vec<u64> = (1..=20).collect();
    let point = {
        let store = open(dir.path(), 1 << 20);
        let mut session = store.begin_backup().unwrap();
        session.add_file("web01.vmx", &vmx).unwrap();
        session.add_file("web01.nvram", &nvram).unwrap();
        for bad in ["../escape", "..", ".", "", "a\0b"] {
            assert!(session.add_file(bad, b"x").is_err(), "{bad:?} accepted");
        }
        assert!(session.add_file("big.vmx", &vec![1u8; store::MAX_POINT_FILE + 1]).is_err());
        let p = session.commit("web01", vec![], PointStats::default()).unwrap();
        assert_eq!(p.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["web01.vmx", "web01.nvram"]);
        assert_eq!(store.read_point_file(&p.files[0]).unwrap(), vmx);
        backup(&store, "other", &disk);
        p
    };
    // Points without files still read as before, and the files come back from the packs alone.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let store = open(dir.path(), 1 << 20);
    let found = store.find("web01").unwrap();
    assert_eq!(found.files, point.files);
    assert_eq!(store.read_point_file(&found.files[1]).unwrap(), nvram);
    assert!(store.find("other").unwrap().files.is_empty());
    let clean = store.verify_points(std::slice::from_ref(&found), 1, &|_| {}).unwrap();
    assert!(clean.is_clean(), "{clean:?}");

    // A damaged file record is reported as damage to that point.
    let loc = store.locate(&found.files[0].digest).unwrap().unwrap();
    let path = dir.path().join("packs").join(format!("{:016x}.pack", loc.pack));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(loc.offset + pack::RECORD_HEADER_LEN as u64 + 3) as usize] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    for report in [
        store.verify_store(1, &|_| {}).unwrap(),
        store.verify_points(std::slice::from_ref(&found), 1, &|_| {}).unwrap(),
    ] {
        let damaged: Vec<_> = report.damaged_points.iter().map(|p| p.point.clone()).collect();
        assert_eq!(damaged, [found.spec()], "{report:?}");
        assert_eq!(report.damaged_points[0].ranges[0].disk, "file web01.vmx");
    }
    assert!(store.read_point_file(&found.files[0]).is_err());
}

#[test]
fn read_ahead_names_whole_stretches_of_a_pack_in_tree_order_and_skips_what_it_cannot_find() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 64 << 20);
    // Distinct chunks (no repeats: every third id would repeat an earlier one) written in
    // order land back to back in one pack.
    let disk: Vec<u64> = (1..=60).filter(|i| i % 3 != 0).collect();
    let point = backup(&store, "vm", &disk);
    let digests: Vec<Digest> = store.walk(&point.disks[0]).map(|d| d.unwrap()).collect();
    let locs: Vec<_> = digests.iter().map(|d| store.locate(d).unwrap().unwrap()).collect();
    assert!(locs.iter().all(|l| l.pack == locs[0].pack), "one pack");
    let record_len = |l: &store::ChunkLoc| pack::RECORD_HEADER_LEN as u64 + u64::from(l.stored_len);
    let start = locs.iter().map(|l| l.offset).min().unwrap();
    let end = locs.iter().map(|l| l.offset + record_len(l)).max().unwrap();
    assert!(end - start < 4 << 20, "the stretch fits one hand-over");

    // In tree order: one stretch, each byte once; a chunk the store does not hold is skipped
    // (the read reports it) without ending the stretch.
    let mut ahead = store.readahead();
    for (i, d) in digests.iter().enumerate() {
        ahead.want(d);
        if i == 10 {
            ahead.want(&Digest([7; 32]));
        }
    }
    assert_eq!(ahead.finish(), (end - start, 1));

    // Backwards, no record follows the one before: every record is its own stretch.
    let mut ahead = store.readahead();
    for d in digests.iter().rev() {
        ahead.want(d);
    }
    assert_eq!(ahead.finish(), (locs.iter().map(record_len).sum::<u64>(), digests.len() as u64));
    assert_restores(&store, &point, &disk);
}
