//! What the store's integration tests share: backing up a "disk" given as chunk ids through
//! the store API, the way the engine does, and reading it back. Each test file brings its
//! own chunk contents (`content(id)`; id 0 is a zero chunk).

#![allow(dead_code)] // each test binary uses its own part of it

use store::{
    BackupSession, ChunkEncoder, Digest, DiskIndex, EncodedChunk, PointStats, RecordKind, RestorePoint, Store,
    TreeBuilder,
};

pub const CHUNK: usize = 16 << 10;

/// Store the chunks of `disk` (deduplicated) and build its index tree; returns the root
/// and height.
pub fn ingest(session: &mut BackupSession<'_>, disk: &[u64], content: &dyn Fn(u64) -> Vec<u8>) -> (Digest, u8) {
    ingest_with(session, disk, content, &mut ChunkEncoder::new(Some(1)))
}

/// [`ingest`] with the data chunks encoded by `enc`.
pub fn ingest_with(
    session: &mut BackupSession<'_>,
    disk: &[u64],
    content: &dyn Fn(u64) -> Vec<u8>,
    enc: &mut ChunkEncoder,
) -> (Digest, u8) {
    let keys = session.keyring().clone();
    let mut tree = TreeBuilder::with_ids(keys.ids());
    for &id in disk {
        let digest = if id == 0 {
            Digest::ZERO
        } else {
            let data = content(id);
            let d = keys.digest(&data);
            if !session.contains(&d).unwrap() {
                session.insert(&enc.encode_for(&keys, d, RecordKind::Data, &data).unwrap()).unwrap();
            }
            d
        };
        tree.push(digest, &mut |n: EncodedChunk| session.insert(&n).map(|_| ())).unwrap();
    }
    tree.finish(&mut |n: EncodedChunk| session.insert(&n).map(|_| ())).unwrap()
}

/// The disk index of a `chunks`-chunk disk with that tree.
pub fn disk_index(chunks: usize, (root, height): (Digest, u8)) -> DiskIndex {
    DiskIndex {
        label: "disk0".into(),
        source: "model".into(),
        format: "raw".into(),
        size: (chunks * CHUNK) as u64,
        chunk_size: CHUNK as u32,
        chunks: chunks as u64,
        root,
        height,
    }
}

/// Commit the session as restore point `name` holding one disk.
pub fn commit(session: BackupSession<'_>, name: &str, chunks: usize, tree: (Digest, u8)) -> RestorePoint {
    session.commit(name, vec![disk_index(chunks, tree)], PointStats::default()).unwrap()
}

/// Back up `disk` as restore point `name`, immutable for `immutable_for` seconds if given.
pub fn backup_with(
    store: &Store,
    name: &str,
    disk: &[u64],
    content: &dyn Fn(u64) -> Vec<u8>,
    immutable_for: Option<u64>,
) -> RestorePoint {
    let mut session = store.begin_backup().unwrap();
    session.set_immutable_for(immutable_for);
    let tree = ingest(&mut session, disk, content);
    commit(session, name, disk.len(), tree)
}

/// Read `point` back and compare every chunk with `want` (checked against its digest).
pub fn assert_restores(store: &Store, point: &RestorePoint, want: &[u64], content: &dyn Fn(u64) -> Vec<u8>) {
    let (mut scratch, mut out) = (Vec::new(), Vec::new());
    let mut n = 0;
    for (i, d) in store.walk(&point.disks[0]).enumerate() {
        let d = d.unwrap_or_else(|e| panic!("{}: chunk {i}: {e}", point.spec()));
        if want[i] == 0 {
            assert!(d.is_zero(), "chunk {i} of {} should be zero", point.spec());
        } else {
            store.read_chunk(&d, &mut scratch, &mut out).unwrap_or_else(|e| panic!("{}: chunk {i}: {e}", point.spec()));
            assert_eq!(out, content(want[i]), "chunk {i} of {}", point.spec());
        }
        n += 1;
    }
    assert_eq!(n, want.len());
}
