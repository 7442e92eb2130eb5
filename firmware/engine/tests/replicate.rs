//! Replication from one store to another in this process: what the exchange sends, how it
//! resumes after a cut link, and what a receiver refuses. The same exchange over HTTPS
//! between two daemons is tested in tests/e2e; with a real S3 server, in `replicate/bucket.rs`.

use std::sync::atomic::{AtomicU64, Ordering};

use blocksource::mem::MemSource;
use engine::replicate::{self, ReplicaTarget, ReplicateError, ReplicateOptions, StoreTarget};
use engine::{BackupOptions, NoProgress, Progress, RestoreFormat, RestoreOptions};
use store::{Digest, EncodedChunk, PointOrigin, RecordKind, RestorePoint, Store, StoreOptions};

/// The same exchange with an S3 bucket.
#[path = "replicate/bucket.rs"]
mod bucket;

const CHUNK: u32 = 64 << 10;

/// Deterministic content: mostly incompressible, some zeros and text.
fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut x = seed | 1;
    while v.len() < len {
        let n = (CHUNK as usize).min(len - v.len());
        match (v.len() / CHUNK as usize) % 8 {
            0 => v.extend(std::iter::repeat_n(0u8, n)),
            1 => v.extend(format!("text at {} ", v.len()).bytes().cycle().take(n)),
            _ => v.extend((0..n).map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })),
        }
    }
    v
}

/// Changes `pct` percent of the chunks, spread over the disk.
fn change(img: &mut [u8], pct: usize, seed: u8) {
    let chunks = img.len() / CHUNK as usize;
    let step = 100 / pct;
    for c in (0..chunks).step_by(step) {
        let at = c * CHUNK as usize + 100;
        for (i, b) in img[at..at + 64].iter_mut().enumerate() {
            *b = b.wrapping_add(seed).wrapping_add(i as u8) | 1;
        }
    }
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, &StoreOptions { create: true, ..Default::default() }).unwrap()
}

fn backup(store: &Store, name: &str, img: &[u8]) -> (RestorePoint, u64) {
    backup_with(store, name, img, None)
}

/// A backup immutable for `immutable_for_s`.
fn backup_with(store: &Store, name: &str, img: &[u8], immutable_for_s: Option<u64>) -> (RestorePoint, u64) {
    let src = MemSource::new(name, img.to_vec());
    let opts = BackupOptions {
        chunk_size: CHUNK,
        zstd_level: Some(1),
        threads: 2,
        immutable_for_s,
        ..BackupOptions::new(name)
    };
    let r = engine::backup(store, &src, &opts, &NoProgress).unwrap();
    let p = store.find(&format!("{}@{}", r.name, r.id)).unwrap();
    (p, r.bytes_written)
}

fn restored(store: &Store, spec: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("disk.raw");
    let p = store.find(spec).unwrap();
    let opts = RestoreOptions {
        to: to.clone(),
        format: RestoreFormat::Raw,
        verify: false,
        force: true,
        disk: 0,
        threads: 2,
        read_ahead: true,
    };
    engine::restore(store, &p, &opts, &NoProgress).unwrap();
    std::fs::read(&to).unwrap()
}

fn opts() -> ReplicateOptions {
    ReplicateOptions { batch_bytes: 1 << 20, query_batch: 256, ..ReplicateOptions::new("site-a") }
}

#[test]
fn a_point_replicates_exactly_under_its_namespace_and_a_second_run_sends_nothing() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, dst) = (open(a.path()), open(b.path()));
    let img = image(6 << 20, 1);
    let (p, _) = backup(&src, "vm1", &img);
    let r = replicate::replicate(&src, &p, &mut StoreTarget::new(&dst), &opts(), &NoProgress).unwrap();
    assert!(!r.already_there);
    assert!(r.delivered_as.starts_with("site-a.vm1@"), "{}", r.delivered_as);
    assert!(r.batches >= 2, "1 MiB batches: {r:?}");
    assert_eq!(restored(&dst, &r.delivered_as), img);
    let there = dst.find(&r.delivered_as).unwrap();
    let origin = there.origin.expect("the origin is recorded");
    assert_eq!((origin.namespace.as_str(), origin.point.as_str()), ("site-a", p.spec().as_str()));
    assert_eq!(origin.store_id, src.store_id());
    assert!(dst.verify_store(2, &|_| {}).unwrap().is_clean());
    // Again: found by its origin, nothing is sent, no second copy.
    let again = replicate::replicate(&src, &p, &mut StoreTarget::new(&dst), &opts(), &NoProgress).unwrap();
    assert!(again.already_there);
    assert_eq!((again.bytes_sent, again.batches, again.delivered_as.as_str()), (0, 0, r.delivered_as.as_str()));
    assert_eq!(dst.list().unwrap().len(), 1);
}

#[test]
fn raw_data_a_sender_has_not_compressed_yet_is_compressed_by_the_receivers_own_pass() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, dst) = (open(a.path()), open(b.path()));
    let img = image(8 << 20, 3);
    let (p, _) = backup(&src, "vm1", &img);
    assert!(src.usage().unwrap().deferred_bytes > 0, "the backup left its text raw for later");
    let r = replicate::replicate(&src, &p, &mut StoreTarget::new(&dst), &opts(), &NoProgress).unwrap();
    let raw = dst.usage().unwrap();
    assert!(raw.deferred_bytes > 0, "{raw:?}");
    let pass = dst
        .recompress(&store::RecompressOptions { level: 1, yield_to_backups: false, threads: 0 }, &|_| {}, &|| false)
        .unwrap();
    assert!(pass.chunks_compressed > 0 && pass.complete, "{pass:?}");
    let after = dst.usage().unwrap();
    assert!(after.deferred_bytes == 0 && after.pack_bytes < raw.pack_bytes, "{raw:?} -> {after:?}");
    assert_eq!(restored(&dst, &r.delivered_as), img);
    assert!(dst.verify_store(2, &|_| {}).unwrap().is_clean());
}

#[test]
fn an_incremental_after_a_one_percent_change_sends_at_most_1_1_times_the_new_chunk_bytes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, dst) = (open(a.path()), open(b.path()));
    let mut img = image(32 << 20, 2);
    let (p1, _) = backup(&src, "vm1", &img);
    replicate::replicate(&src, &p1, &mut StoreTarget::new(&dst), &opts(), &NoProgress).unwrap();
    change(&mut img, 1, 7);
    let (p2, new_bytes) = backup(&src, "vm1", &img);
    let r = replicate::replicate(&src, &p2, &mut StoreTarget::new(&dst), &opts(), &NoProgress).unwrap();
    assert!(new_bytes > 0);
    assert!(
        (r.bytes_sent as f64) <= 1.1 * new_bytes as f64,
        "sent {} bytes for {} new bytes on the source: {r:?}",
        r.bytes_sent,
        new_bytes
    );
    // Unchanged subtrees were skipped whole: far fewer nodes offered than the tree has.
    let leaves = (32u64 << 20) / u64::from(CHUNK) / 64;
    assert!(r.nodes_offered <= leaves + 4, "{r:?}");
    assert_eq!(restored(&dst, &r.delivered_as), img);
}

/// A link that drops every few calls, like a TCP connection cut by a proxy, until it has
/// been cut `cuts_left` times.
struct CutLink<'a> {
    inner: StoreTarget<'a>,
    calls: u64,
    next_cut: u64,
    cuts: &'a AtomicU64,
    cuts_wanted: u64,
    rng: &'a mut testkit::Rng,
    sent: &'a AtomicU64,
}

impl CutLink<'_> {
    fn tick(&mut self) -> Result<(), ReplicateError> {
        self.calls += 1;
        if self.calls == self.next_cut && self.cuts.load(Ordering::Relaxed) < self.cuts_wanted {
            self.cuts.fetch_add(1, Ordering::Relaxed);
            self.next_cut = self.calls + 1 + self.rng.below(12);
            return Err(ReplicateError::Link {
                message: "connection reset by peer".into(),
                kind: engine::ErrorKind::Transient,
            });
        }
        Ok(())
    }
}

impl ReplicaTarget for CutLink<'_> {
    fn find(&mut self, origin: &PointOrigin) -> Result<Option<String>, ReplicateError> {
        self.tick()?;
        self.inner.find(origin)
    }
    fn lacking(&mut self, digests: &[Digest]) -> Result<Vec<Digest>, ReplicateError> {
        self.tick()?;
        self.inner.lacking(digests)
    }
    fn put_records(&mut self, records: &[EncodedChunk]) -> Result<(), ReplicateError> {
        // The bytes travel before the link may drop: a cut batch costs its bytes.
        self.sent.fetch_add(records.iter().map(|c| c.payload.len() as u64).sum(), Ordering::Relaxed);
        self.tick()?;
        self.inner.put_records(records)
    }
    fn commit(&mut self, point: &RestorePoint, origin: &PointOrigin) -> Result<replicate::Delivered, ReplicateError> {
        self.tick()?;
        self.inner.commit(point, origin)
    }
}

#[test]
fn a_transfer_cut_20_times_at_random_points_resumes_and_sends_under_1_2_times_the_data() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, dst) = (open(a.path()), open(b.path()));
    let img = image(24 << 20, 3);
    let (p, stored) = backup(&src, "vm1", &img);
    let sent = AtomicU64::new(0);
    let cut_count = AtomicU64::new(0);
    let mut rng = testkit::Rng::new(0x5eed);
    let o = ReplicateOptions { batch_bytes: 128 << 10, ..opts() };
    let (mut runs, mut delivered) = (0, None);
    while delivered.is_none() {
        runs += 1;
        assert!(runs < 100, "no success after {runs} runs");
        let next_cut = 1 + rng.below(12);
        let mut link = CutLink {
            inner: StoreTarget::new(&dst),
            calls: 0,
            next_cut,
            cuts: &cut_count,
            cuts_wanted: 20,
            rng: &mut rng,
            sent: &sent,
        };
        match replicate::replicate(&src, &p, &mut link, &o, &NoProgress) {
            Ok(r) => delivered = Some(r.delivered_as),
            Err(e) => {
                assert_eq!(e.kind(), engine::ErrorKind::Transient, "{e}");
                // No partial point is ever visible.
                assert!(dst.list().unwrap().is_empty());
            }
        }
    }
    let cuts = cut_count.into_inner();
    assert_eq!(cuts, 20, "{cuts} cuts over {runs} runs");
    let sent = sent.into_inner();
    eprintln!("{cuts} cuts: sent {sent} bytes for {stored} stored ({:.3}x)", sent as f64 / stored as f64);
    assert!((sent as f64) < 1.2 * stored as f64, "sent {sent} bytes for {stored} stored bytes over {cuts} cuts");
    let spec = delivered.unwrap();
    assert_eq!(restored(&dst, &spec), img);
    assert!(dst.verify_store(2, &|_| {}).unwrap().is_clean());
}

fn record_of(store: &Store, d: &Digest) -> EncodedChunk {
    store.read_encoded(d, &mut Vec::new()).unwrap()
}

#[test]
fn a_receiver_refuses_a_batch_with_a_bad_record_and_writes_none_of_it() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, dst) = (open(a.path()), open(b.path()));
    let img = image(2 << 20, 4);
    let (p, _) = backup(&src, "vm1", &img);
    let good = record_of(&src, &p.disks[0].root);
    let mut leaf_digests = Vec::new();
    let mut w = src.walk(&p.disks[0]);
    while let Some(d) = w.next_entry().unwrap() {
        if !d.is_zero() {
            leaf_digests.push(d);
        }
    }
    let data = record_of(&src, &leaf_digests[3]);
    let mut target = StoreTarget::new(&dst);
    let cases: Vec<(&str, EncodedChunk)> = vec![
        ("does not match its digest", {
            let mut c = data.clone();
            let last = c.payload.len() - 1;
            c.payload[last] ^= 1;
            c
        }),
        ("does not match its digest", EncodedChunk { digest: leaf_digests[4], ..data.clone() }),
        ("only data chunks and index-tree nodes", EncodedChunk { kind: RecordKind::Manifest, ..data.clone() }),
        ("header says", EncodedChunk { raw_len: data.raw_len + 1, ..data.clone() }),
        ("all-zero digest", EncodedChunk { digest: Digest::ZERO, ..data.clone() }),
    ];
    for (want, bad) in cases {
        let e = target.put_records(&[good.clone(), bad]).unwrap_err();
        assert!(matches!(e, ReplicateError::Refused(_)), "{e}");
        assert!(e.to_string().contains(want), "{want}: {e}");
        assert_eq!(e.kind(), engine::ErrorKind::Permanent);
        assert!(!dst.contains(&good.digest).unwrap(), "nothing of a refused batch is written");
    }
    // A tree node that is not one.
    let fake_node = EncodedChunk { kind: RecordKind::Tree, ..data.clone() };
    let e = target.put_records(&[fake_node]).unwrap_err();
    assert!(e.to_string().contains("index-tree node"), "{e}");
    assert_eq!(dst.usage().unwrap().packs, 0);
    assert!(dst.verify_store(2, &|_| {}).unwrap().is_clean());
}

#[test]
fn a_commit_of_a_point_with_missing_chunks_is_refused_and_publishes_nothing() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, dst) = (open(a.path()), open(b.path()));
    let (p, _) = backup(&src, "vm1", &image(2 << 20, 5));
    let origin = PointOrigin {
        namespace: "site-a".into(),
        store_id: src.store_id(),
        point: p.spec(),
        created_unix: 1,
        without_key: false,
    };
    let mut target = StoreTarget::new(&dst);
    // Only the root node: the rest is missing.
    target.put_records(&[record_of(&src, &p.disks[0].root)]).unwrap();
    let e = target.commit(&p, &origin).unwrap_err();
    assert!(matches!(e, ReplicateError::Incomplete(_)), "{e}");
    assert!(e.to_string().contains("lacks chunk"), "{e}");
    assert!(dst.list().unwrap().is_empty());
    // A namespace that is not one.
    let bad = PointOrigin { namespace: "../x".into(), ..origin };
    let e = target.commit(&p, &bad).unwrap_err();
    assert!(e.to_string().contains("namespace"), "{e}");
}

/// A receiver that claims to lack digests it was never asked about.
struct Liar<'a>(StoreTarget<'a>);

impl ReplicaTarget for Liar<'_> {
    fn find(&mut self, o: &PointOrigin) -> Result<Option<String>, ReplicateError> {
        self.0.find(o)
    }
    fn lacking(&mut self, _: &[Digest]) -> Result<Vec<Digest>, ReplicateError> {
        Ok(vec![Digest::of(b"something else")])
    }
    fn put_records(&mut self, r: &[EncodedChunk]) -> Result<(), ReplicateError> {
        self.0.put_records(r)
    }
    fn commit(&mut self, p: &RestorePoint, o: &PointOrigin) -> Result<replicate::Delivered, ReplicateError> {
        self.0.commit(p, o)
    }
}

#[test]
fn a_receiver_that_names_chunks_it_was_not_asked_about_is_refused() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, dst) = (open(a.path()), open(b.path()));
    let (p, _) = backup(&src, "vm1", &image(1 << 20, 6));
    let e = replicate::replicate(&src, &p, &mut Liar(StoreTarget::new(&dst)), &opts(), &NoProgress).unwrap_err();
    assert!(e.to_string().contains("not asked about"), "{e}");
}

struct CancelAfterBatches(AtomicU64);

impl Progress for CancelAfterBatches {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn finish(&self) {}
    fn cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed) >= 2
    }
}

#[test]
fn a_cancelled_replication_keeps_the_acknowledged_batches_and_the_next_run_does_not_send_them_again() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, dst) = (open(a.path()), open(b.path()));
    let img = image(8 << 20, 8);
    let (p, _) = backup(&src, "vm1", &img);
    let e =
        replicate::replicate(&src, &p, &mut StoreTarget::new(&dst), &opts(), &CancelAfterBatches(AtomicU64::new(0)))
            .unwrap_err();
    assert_eq!(e.kind(), engine::ErrorKind::Cancelled, "{e}");
    assert!(dst.list().unwrap().is_empty());
    let first = dst.usage().unwrap().pack_bytes;
    assert!(first > 0, "two batches were kept");
    let r = replicate::replicate(&src, &p, &mut StoreTarget::new(&dst), &opts(), &NoProgress).unwrap();
    let full = replicate::replicate(
        &src,
        &p,
        &mut StoreTarget::new(&open(tempfile::tempdir().unwrap().path())),
        &opts(),
        &NoProgress,
    )
    .unwrap();
    assert!(r.bytes_sent < full.bytes_sent, "the resumed run sent {} of {}", r.bytes_sent, full.bytes_sent);
    assert_eq!(restored(&dst, &r.delivered_as), img);
}

#[test]
fn a_bandwidth_limit_paces_the_transfer() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, dst) = (open(a.path()), open(b.path()));
    // Enough data (about 6 MiB stored, 3 s at 2 MiB/s) that the limiter's 250 ms burst
    // allowance stays under a tenth of the time.
    let (p, _) = backup(&src, "vm1", &image(8 << 20, 9));
    let o = ReplicateOptions { max_bytes_per_s: Some(2 << 20), batch_bytes: 512 << 10, ..opts() };
    let started = std::time::Instant::now();
    let r = replicate::replicate(&src, &p, &mut StoreTarget::new(&dst), &o, &NoProgress).unwrap();
    let took = started.elapsed().as_secs_f64();
    let floor = r.bytes_sent as f64 / (2u64 << 20) as f64;
    assert!(took >= floor * 0.9, "{} bytes in {took:.2} s at 2 MiB/s (at least {floor:.2} s)", r.bytes_sent);
}

fn open_encrypted(dir: &std::path::Path, k: u8) -> Store {
    let key = store::StoreKey::from_bytes([k; 32]);
    Store::open(dir, &StoreOptions { create: true, key: Some(key), ..Default::default() }).unwrap()
}

#[test]
fn an_encrypted_store_replicates_its_sealed_records_verbatim_to_a_store_with_the_same_key() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let src = open_encrypted(a.path(), 9);
    let img = image(4 << 20, 11);
    let (p, _) = backup(&src, "vm1", &img);
    let same = open_encrypted(b.path(), 9);
    let r = replicate::replicate(&src, &p, &mut StoreTarget::new(&same), &opts(), &NoProgress).unwrap();
    assert!(!r.without_key, "the receiver holds the key: {r:?}");
    assert_eq!(restored(&same, &r.delivered_as), img);
    let v = same.verify_store(2, &|_| {}).unwrap();
    assert!(v.is_clean() && v.chunks_checksum_only == 0, "{v:?}");
}

/// A store holding `key`'s replicas without holding `key` as its own (see `StoreOptions`).
fn reopen_with_replica_key(dir: &std::path::Path, own: Option<u8>, replica: u8) -> Store {
    let opts = StoreOptions {
        key: own.map(|k| store::StoreKey::from_bytes([k; 32])),
        replica_keys: vec![store::StoreKey::from_bytes([replica; 32])],
        ..Default::default()
    };
    Store::open(dir, &opts).unwrap()
}

fn restore_error(store: &Store, spec: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = store.find(spec).unwrap();
    let opts = RestoreOptions {
        to: dir.path().join("disk.raw"),
        format: RestoreFormat::Raw,
        verify: false,
        force: true,
        disk: 0,
        threads: 2,
        read_ahead: true,
    };
    engine::restore(store, &p, &opts, &NoProgress).unwrap_err().to_string()
}

#[test]
fn a_store_without_the_key_keeps_an_encrypted_point_verifies_its_ciphertext_and_restores_it_only_with_the_recovery_key()
{
    for own_key in [None, Some(4u8)] {
        let (a, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let src = open_encrypted(a.path(), 9);
        let mut img = image(4 << 20, 11);
        let (p1, _) = backup(&src, "vm1", &img);
        // A plain store, and one encrypted under a key of its own: neither holds key 9.
        let dst = match own_key {
            None => open(c.path()),
            Some(k) => open_encrypted(c.path(), k),
        };
        let r1 = replicate::replicate(&src, &p1, &mut StoreTarget::new(&dst), &opts(), &NoProgress).unwrap();
        assert!(r1.without_key && r1.nodes_sent > 0 && r1.chunks_sent > 0, "{r1:?}");
        let kept = dst.find(&r1.delivered_as).unwrap();
        assert!(kept.origin.as_ref().is_some_and(|o| o.without_key), "{kept:?}");
        // Without the key: the ciphertext verifies (checksums, tree structure, completeness)...
        let v = dst.verify_store(2, &|_| {}).unwrap();
        assert!(v.is_clean() && v.chunks_checksum_only > 0, "{v:?}");
        // ...and nothing reads the data.
        let e = restore_error(&dst, &r1.delivered_as);
        assert!(e.contains("recovery key"), "{e}");
        // Run again: nothing sent. A changed point sends only what changed.
        let again = replicate::replicate(&src, &p1, &mut StoreTarget::new(&dst), &opts(), &NoProgress).unwrap();
        assert!(again.already_there && again.bytes_sent == 0, "{again:?}");
        change(&mut img, 5, 3);
        let (p2, _) = backup(&src, "vm1", &img);
        let r2 = replicate::replicate(&src, &p2, &mut StoreTarget::new(&dst), &opts(), &NoProgress).unwrap();
        assert!(
            r2.bytes_sent * 5 < r1.bytes_sent,
            "the second point sent {} of {} bytes",
            r2.bytes_sent,
            r1.bytes_sent
        );
        // The receiver's own backup of the same disk deduplicates nothing against the replica.
        let (own, own_bytes) = backup(&dst, "local", &img);
        assert!(own_bytes > 0 && own.origin.is_none());
        // Retention here is its own: delete the first replica, collect, and the second still
        // verifies and is whole.
        dst.delete_points(&[(kept.name.clone(), kept.id)], "test").unwrap();
        dst.gc(&store::GcOptions { repack_threshold: 0.01, dry_run: false }, &|_| {}, &|| false).unwrap();
        let v = dst.verify_store(2, &|_| {}).unwrap();
        assert!(v.is_clean(), "{v:?}");
        assert_eq!(restored(&dst, &own.spec()), img);
        // With the source's recovery key, the replica restores exactly (every tag and id
        // checked); so does the index rebuilt from the packs alone.
        drop(dst);
        let with_key = reopen_with_replica_key(c.path(), own_key, 9);
        assert_eq!(restored(&with_key, &r2.delivered_as), img);
        with_key.reindex().unwrap();
        assert_eq!(restored(&with_key, &r2.delivered_as), img);
        let v = with_key.verify_store(2, &|_| {}).unwrap();
        assert!(v.is_clean() && v.chunks_checksum_only == 0, "every chunk opens with the key now: {v:?}");
        // A wrong recovery key reads nothing.
        drop(with_key);
        let wrong = reopen_with_replica_key(c.path(), own_key, 8);
        assert!(restore_error(&wrong, &r2.delivered_as).contains("recovery key"));
    }
}

#[test]
fn a_receiver_without_the_key_refuses_clear_data_sealed_nodes_and_malformed_nodes_and_keeps_none_of_the_batch() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let src = open_encrypted(a.path(), 9);
    let (p, _) = backup(&src, "vm1", &image(2 << 20, 5));
    let dst = open(b.path());
    let sealed_by = replicate::sealed_by(&src);
    let keeping = replicate::Keeping::for_sender(&dst, sealed_by.as_deref());
    assert_eq!(keeping, replicate::Keeping::WithoutKey);
    let mut scratch = Vec::new();
    let root = p.disks[0].root;
    let sealed_node = src.read_encoded(&root, &mut scratch).unwrap();
    let open_node = replicate::record_to_send(&src, &root, true, &mut scratch).unwrap();
    assert_eq!(open_node.cipher, store::Cipher::None);
    let leaf = src.walk(&p.disks[0]).find_map(|d| d.ok().filter(|d| !d.is_zero())).unwrap();
    let data = src.read_encoded(&leaf, &mut scratch).unwrap();
    let clear_data = EncodedChunk::plain(leaf, RecordKind::Data, store::Codec::Raw, 4, vec![1, 2, 3, 4]);
    let mut bad_node = open_node.clone();
    bad_node.payload[0] ^= 0xff;
    for (what, rec) in [
        ("arrived unencrypted", clear_data),
        ("arrived sealed", sealed_node),
        ("not an index-tree node", bad_node),
        ("shorter than its salt", EncodedChunk { payload: vec![0; 8], ..data.clone() }),
        ("only data chunks and index-tree nodes", EncodedChunk { kind: RecordKind::Manifest, ..data.clone() }),
    ] {
        let mut target = StoreTarget::keeping(&dst, keeping);
        let e = target.put_records(&[data.clone(), rec]).unwrap_err();
        assert!(e.to_string().contains(what), "{what}: {e}");
        assert_eq!(dst.usage().unwrap().chunks, 0, "{what}: nothing of the batch is kept");
    }
    // The same records, well formed, are kept, and kept as foreign: the receiver's own
    // lookups never see them.
    StoreTarget::keeping(&dst, keeping).put_records(&[data, open_node]).unwrap();
    assert!(dst.holds(&leaf).unwrap() && !dst.contains(&leaf).unwrap());
    assert!(dst.locate(&root).unwrap().is_some_and(|l| l.foreign));
}
