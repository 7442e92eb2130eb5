//! The store under a low open-files limit: restores and verifies of a point spread over more
//! packs than the limit allows open, and a limit so low that packs cannot be opened at all,
//! which must stop verify with an error of its own, never report the data as damaged. The
//! limit is set in a child process (this test binary run again), so that it does not touch
//! the other tests.

use std::path::Path;

use store::{ChunkEncoder, Digest, DiskIndex, EncodedChunk, PointStats, RecordKind, Store, StoreOptions, TreeBuilder};

const CHUNK: usize = 16 << 10;
/// Random (incompressible) 16 KiB chunks and 1 MiB packs: about 60 chunks a pack, so 8000
/// chunks spread over more than 118 packs.
const CHUNKS: u64 = 8000;

fn content(i: u64) -> Vec<u8> {
    let mut v = vec![0u8; CHUNK];
    blake3::Hasher::new().update(&i.to_le_bytes()).finalize_xof().fill(&mut v);
    v
}

fn open(dir: &Path) -> Store {
    Store::open(dir, &StoreOptions { create: true, pack_target: 1 << 20, ..Default::default() }).unwrap()
}

fn build(dir: &Path) {
    let store = open(dir);
    let mut session = store.begin_backup().unwrap();
    let mut enc = ChunkEncoder::new(Some(1));
    let mut tree = TreeBuilder::new();
    for i in 0..CHUNKS {
        let data = content(i);
        let d = Digest::of(&data);
        session.insert(&enc.encode(d, RecordKind::Data, &data)).unwrap();
        tree.push(d, &mut |n: EncodedChunk| session.insert(&n).map(|_| ())).unwrap();
    }
    let (root, height) = tree.finish(&mut |n: EncodedChunk| session.insert(&n).map(|_| ())).unwrap();
    let disk = DiskIndex {
        label: "disk0".into(),
        source: "test".into(),
        format: "raw".into(),
        size: CHUNKS * CHUNK as u64,
        chunk_size: CHUNK as u32,
        chunks: CHUNKS,
        root,
        height,
    };
    session.commit("vm", vec![disk], PointStats::default()).unwrap();
    assert!(store.usage().unwrap().packs > 118);
}

fn set_nofile(soft: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

/// The child: restore and verify under the limit the parent asks for.
#[test]
#[ignore = "run by the tests below as a child process"]
fn limits_child() {
    let Ok(dir) = std::env::var("RV_LIMITS_DIR") else { return };
    let mode = std::env::var("RV_LIMITS_MODE").unwrap_or_default();
    if mode == "64" {
        // A process started under a limit of 64 (the store sizes its pack cache from it).
        set_nofile(64);
    }
    let store = open(Path::new(&dir));
    let point = store.find("vm").unwrap();
    match mode.as_str() {
        "64" => {
            let (mut scratch, mut out) = (Vec::new(), Vec::new());
            for (i, d) in store.walk(&point.disks[0]).enumerate() {
                store.read_chunk(&d.unwrap(), &mut scratch, &mut out).unwrap();
                assert_eq!(out, content(i as u64), "chunk {i}");
            }
            assert!(store.verify_points(std::slice::from_ref(&point), 2, &|_| {}).unwrap().is_clean());
            assert!(store.verify_store(2, &|_| {}).unwrap().is_clean());
            assert!(open_fds() < 64, "{} descriptors open", open_fds());
        }
        "none" => {
            // Not one more descriptor can be opened: every pack open fails with EMFILE.
            set_nofile(open_fds());
            let err = store.verify_store(2, &|_| {}).unwrap_err();
            assert!(err.is_local_fault() && err.to_string().contains("Too many open files"), "{err}");
            let err = store.verify_points(std::slice::from_ref(&point), 2, &|_| {}).unwrap_err();
            assert!(err.is_local_fault(), "{err}");
        }
        other => panic!("unknown mode {other:?}"),
    }
}

fn run_child(dir: &Path, mode: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "limits_child", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("RV_LIMITS_DIR", dir)
        .env("RV_LIMITS_MODE", mode)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child ({mode}) failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_point_spread_over_more_packs_than_the_open_files_limit_restores_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    run_child(dir.path(), "64");
}

#[test]
fn running_out_of_file_descriptors_stops_verify_and_is_never_reported_as_damage() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    run_child(dir.path(), "none");
    // Nothing was recorded as damaged: a new backup still deduplicates against every chunk,
    // and a verify with descriptors to spare finds the store intact.
    let store = open(dir.path());
    for i in [0, CHUNKS / 2, CHUNKS - 1] {
        assert!(store.contains(&Digest::of(&content(i))).unwrap(), "chunk {i} was marked damaged");
    }
    assert!(store.verify_store(2, &|_| {}).unwrap().is_clean());
}
