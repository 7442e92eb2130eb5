//! Compression off the critical path: backups that store data raw for later, and the
//! recompression pass that compresses it (see `recompress`). On real files in temporary
//! directories; the crash test re-runs this test binary as a child and kills it with SIGKILL.

use std::path::Path;
use std::time::Duration;

use store::{ChunkEncoder, GcOptions, RecompressOptions, RestorePoint, Store, StoreKey, StoreOptions};

use testkit::Rng;

mod common;
use common::CHUNK;

/// Two chunks in three compress (log-like text), the third is random and does not.
fn chunk_content(id: u64) -> Vec<u8> {
    let mut v = vec![0u8; CHUNK];
    if id % 3 == 2 {
        blake3::Hasher::new().update(&id.to_le_bytes()).finalize_xof().fill(&mut v);
    } else {
        let mut line = 0u64;
        let mut at = 0;
        while at < v.len() {
            let text =
                format!("{id:08} line {line:06} service=backup state=ok bytes={}\n", (id * 7919 + line) % 100_000);
            let n = text.len().min(v.len() - at);
            v[at..at + n].copy_from_slice(&text.as_bytes()[..n]);
            at += n;
            line += 1;
        }
    }
    v
}

fn key() -> StoreKey {
    StoreKey::from_bytes(*blake3::hash(b"recompress").as_bytes())
}

fn open(dir: &Path, key: Option<StoreKey>) -> Store {
    Store::open(dir, &StoreOptions { create: true, pack_target: 1 << 20, key, ..Default::default() })
        .expect("open store")
}

fn disk_of(seed: u64, len: usize, alphabet: u64) -> Vec<u64> {
    let mut rng = Rng(seed);
    (0..len).map(|_| if rng.below(10) == 0 { 0 } else { 1 + rng.below(alphabet) }).collect()
}

/// Back up `disk` with data chunks encoded by `enc`.
fn backup(store: &Store, name: &str, disk: &[u64], enc: &mut ChunkEncoder) -> RestorePoint {
    let mut session = store.begin_backup().unwrap();
    let tree = common::ingest_with(&mut session, disk, &chunk_content, enc);
    common::commit(session, name, disk.len(), tree)
}

fn deferred(store: &Store, name: &str, disk: &[u64]) -> RestorePoint {
    backup(store, name, disk, &mut ChunkEncoder::deferring(1))
}

fn recompress(store: &Store) -> store::RecompressReport {
    store.recompress(&RecompressOptions { level: 1, yield_to_backups: false, threads: 0 }, &|_| {}, &|| false).unwrap()
}

fn assert_restores(store: &Store, point: &RestorePoint, want: &[u64]) {
    common::assert_restores(store, point, want, &chunk_content)
}

fn assert_clean(store: &Store) {
    let report = store.verify_store(2, &|_| {}).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

/// The same backups stored deferred and then recompressed, or compressed inline: every
/// point restores at each step, and the recompressed store is the inline store's size.
fn deferred_then_recompressed_matches_inline(key: Option<StoreKey>) {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (later, inline) = (open(a.path(), key.clone()), open(b.path(), key.clone()));
    let disks: Vec<Vec<u64>> = (0..3).map(|s| disk_of(s, 200, 150)).collect();
    let mut points = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        points.push(deferred(&later, &format!("vm-{i}"), disk));
        backup(&inline, &format!("vm-{i}"), disk, &mut ChunkEncoder::new(Some(1)));
    }
    let before = later.usage().unwrap();
    assert!(before.deferred_bytes > before.pack_bytes / 2, "{before:?}");
    assert!(before.pack_bytes > inline.usage().unwrap().pack_bytes * 3 / 2, "raw data takes more room for now");
    for (p, disk) in points.iter().zip(&disks) {
        assert_restores(&later, p, disk);
    }

    let r = recompress(&later);
    assert!(r.complete && r.packs_rewritten > 0 && r.packs_skipped_damaged == 0, "{r:?}");
    assert!(r.chunks_compressed > 0 && r.chunks_left_raw > 0, "text compresses, random data stays raw: {r:?}");
    assert_eq!(r.deferred_bytes_after, 0, "{r:?}");
    let after = later.usage().unwrap();
    assert_eq!(after.deferred_bytes, 0);
    assert_eq!(after.pack_bytes, r.store_bytes_after);
    let want = inline.usage().unwrap().pack_bytes as f64;
    let got = after.pack_bytes as f64;
    assert!((got - want).abs() / want < 0.03, "recompressed {got} bytes against {want} compressed inline");
    for (p, disk) in points.iter().zip(&disks) {
        assert_restores(&later, p, disk);
    }
    assert_clean(&later);

    // Nothing is left to do, and a reopened store agrees.
    assert_eq!(recompress(&later).packs_pending, 0);
    drop(later);
    let later = open(a.path(), key);
    assert_eq!(later.usage().unwrap().deferred_bytes, 0);
}

#[test]
fn deferred_backups_restore_before_and_after_recompression_which_shrinks_the_store_to_the_inline_size() {
    deferred_then_recompressed_matches_inline(None);
}

#[test]
fn an_encrypted_store_recompresses_its_sealed_raw_chunks_and_seals_them_again() {
    deferred_then_recompressed_matches_inline(Some(key()));
}

#[test]
fn only_chunks_that_may_compress_are_deferred() {
    let mut enc = ChunkEncoder::deferring(3);
    let text = chunk_content(1);
    let c = enc.encode(store::Digest::of(&text), store::RecordKind::Data, &text);
    assert!(c.deferred && c.codec == store::Codec::Raw);
    // Large random chunks are judged by their entropy and stored raw for good.
    let mut random = vec![0u8; 256 << 10];
    blake3::Hasher::new().update(b"random").finalize_xof().fill(&mut random);
    let c = enc.encode(store::Digest::of(&random), store::RecordKind::Data, &random);
    assert!(!c.deferred && c.codec == store::Codec::Raw);
    // Index-tree nodes are small and compressed now.
    let node = vec![7u8; 4096];
    let c = enc.encode(store::Digest::of(&node), store::RecordKind::Tree, &node);
    assert!(!c.deferred && c.codec == store::Codec::Zstd);
}

#[test]
fn a_backup_running_during_the_pass_keeps_every_chunk_it_deduplicated_against() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), None);
    let first = disk_of(1, 200, 120);
    let p1 = deferred(&store, "first", &first);
    // A second backup shares most chunks with the first; the pass runs in its middle.
    let second = disk_of(2, 200, 140);
    let mut session = store.begin_backup().unwrap();
    let tree = common::ingest_with(&mut session, &second, &chunk_content, &mut ChunkEncoder::deferring(1));
    // Yielding to backups, the pass does nothing while one runs.
    let yielded = store
        .recompress(&RecompressOptions { level: 1, yield_to_backups: true, threads: 0 }, &|_| {}, &|| false)
        .unwrap();
    assert!(!yielded.complete && yielded.packs_rewritten == 0, "{yielded:?}");
    assert!(yielded.stopped_because.as_deref().unwrap_or("").contains("backup"), "{yielded:?}");
    let r = recompress(&store);
    assert!(r.packs_rewritten > 0, "{r:?}");
    let p2 = common::commit(session, "second", second.len(), tree);
    assert_restores(&store, &p1, &first);
    assert_restores(&store, &p2, &second);
    assert_clean(&store);
    // What the second backup stored raw after the pass is compressed by the next one.
    recompress(&store);
    assert_eq!(store.usage().unwrap().deferred_bytes, 0);
    assert_restores(&store, &p2, &second);
}

#[test]
fn a_damaged_deferred_record_is_never_reencoded_and_its_pack_is_left_for_repair() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), None);
    let disk = disk_of(3, 60, 40);
    deferred(&store, "vm", &disk);
    // Flip one byte in the payload of the first record of the first pack.
    let mut packs: Vec<_> = std::fs::read_dir(dir.path().join("packs")).unwrap().map(|e| e.unwrap().path()).collect();
    packs.sort();
    let mut bytes = std::fs::read(&packs[0]).unwrap();
    bytes[64 + 64 + 100] ^= 0xff;
    std::fs::write(&packs[0], &bytes).unwrap();
    let r = recompress(&store);
    assert_eq!(r.packs_skipped_damaged, 1, "{r:?}");
    assert_eq!(std::fs::read(&packs[0]).unwrap(), bytes, "the damaged pack is left exactly as it was");
    let report = store.verify_store(2, &|_| {}).unwrap();
    assert!(!report.is_clean(), "verify still finds the damage");
}

#[test]
fn a_rebuilt_index_still_knows_which_packs_hold_raw_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), None);
    let disk = disk_of(4, 150, 100);
    let p = deferred(&store, "vm", &disk);
    let before = store.usage().unwrap().pack_bytes;
    store.reindex().unwrap();
    assert!(store.usage().unwrap().deferred_bytes > 0);
    let r = recompress(&store);
    assert!(r.chunks_compressed > 0 && store.usage().unwrap().pack_bytes < before * 3 / 4, "{r:?}");
    assert_restores(&store, &p, &disk);
    assert_clean(&store);
}

#[test]
fn gc_repacking_keeps_deferred_chunks_deferred() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), None);
    let keep = disk_of(5, 150, 100);
    let p = deferred(&store, "keep", &keep);
    let gone = deferred(&store, "gone", &disk_of(6, 150, 400));
    store.delete_points(&[(gone.name.clone(), gone.id)], "test").unwrap();
    let gc = store.gc(&GcOptions { repack_threshold: 0.01, dry_run: false }, &|_| {}, &|| false).unwrap();
    assert!(gc.packs_repacked + gc.packs_deleted > 0, "{gc:?}");
    assert!(store.usage().unwrap().deferred_bytes > 0, "the copies are still to compress");
    let r = recompress(&store);
    assert!(r.chunks_compressed > 0, "{r:?}");
    assert_eq!(store.usage().unwrap().deferred_bytes, 0);
    assert_restores(&store, &p, &keep);
    assert_clean(&store);
}

/// The child of the crash test: backs up deferred, recompresses, deletes and collects
/// garbage until killed.
#[test]
#[ignore = "run by recompression_killed_at_random_moments_loses_nothing as a child process"]
fn recompress_crash_child() {
    let Ok(dir) = std::env::var("RV_RECOMPRESS_CHILD_DIR") else { return };
    let seed: u64 = std::env::var("RV_RECOMPRESS_CHILD_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let store = open(Path::new(&dir), Some(key()));
    let mut rng = Rng(seed);
    loop {
        let s = rng.next() % 1_000_000;
        deferred(&store, &format!("d-{s}"), &disk_of(s, 150, 300));
        recompress(&store);
        let points = store.list().unwrap();
        if points.len() > 4 {
            let victim = &points[rng.below(points.len() as u64) as usize];
            store.delete_points(&[(victim.name.clone(), victim.id)], "child").unwrap();
            store.gc(&GcOptions { repack_threshold: 0.2, dry_run: false }, &|_| {}, &|| false).unwrap();
        }
    }
}

#[test]
fn recompression_killed_at_random_moments_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(7);
    let mut compressed_points = 0;
    for i in 0..40 {
        let env = [
            ("RV_RECOMPRESS_CHILD_DIR", dir.path().display().to_string()),
            ("RV_RECOMPRESS_CHILD_SEED", (i + 1).to_string()),
        ];
        testkit::kill_child_test_after("recompress_crash_child", &env, Duration::from_millis(30 + rng.below(500)));
        let store = open(dir.path(), Some(key()));
        for p in store.list().unwrap() {
            let seed: u64 = p.name[2..].parse().unwrap();
            assert_restores(&store, &p, &disk_of(seed, 150, 300));
        }
        let report = store.verify_store(2, &|_| {}).unwrap();
        assert!(report.is_clean(), "after kill {i}: {report:?}");
        compressed_points = store.list().unwrap().len();
    }
    assert!(compressed_points > 0, "the children made restore points");
    // A pass after the last kill finishes the work, and everything still restores.
    let store = open(dir.path(), Some(key()));
    let r = recompress(&store);
    assert!(r.complete, "{r:?}");
    assert_eq!(store.usage().unwrap().deferred_bytes, 0);
    for p in store.list().unwrap() {
        let seed: u64 = p.name[2..].parse().unwrap();
        assert_restores(&store, &p, &disk_of(seed, 150, 300));
    }
    assert_clean(&store);
}
