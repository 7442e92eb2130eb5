//! Replication to a real S3 server (SeaweedFS, tests/peers/start-s3.sh): push, pull back
//! into another store (restore from the bucket, disaster recovery), resume, object lock, GC.
//!
//! The tests share one bucket with object lock (so versioned, as a lock bucket always is),
//! each under a prefix of its own: SeaweedFS gives each bucket volumes of its own and the
//! peer's volume count is bounded.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use engine::replicate::pull::{self, ReplicaSource};
use engine::replicate::s3::{s3_delete_point, s3_gc, BlockingS3, LockMode, S3Layout, S3Source, S3Target};
use engine::replicate::{self, ReplicaTarget, ReplicateError};
use engine::NoProgress;
use s3::{S3Client, S3Config, Secret};

use super::{backup, change, image, open, open_encrypted, opts, restored};

struct Peer {
    rt: tokio::runtime::Runtime,
    env: testkit::peers::S3Env,
    bucket: String,
}

/// The run's bucket, created by the first test that asks; `None` when the peer is not running.
fn peer() -> Option<&'static Peer> {
    static PEER: OnceLock<Option<Peer>> = OnceLock::new();
    PEER.get_or_init(|| {
        let env = testkit::peers::s3()?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let bucket = testkit::peers::unique_bucket("engine");
        let p = Peer { rt, env, bucket };
        p.client().create_bucket(true).unwrap();
        Some(p)
    })
    .as_ref()
}

impl Peer {
    fn config(&self, bucket: &str, secret: &str) -> S3Config {
        let mut c = S3Config::new(&self.env.endpoint, &self.env.region, bucket, &self.env.access, Secret::new(secret));
        c.allow_http = true; // loopback test server
        c.retry.max_attempts = 3;
        c.retry.max_elapsed = Duration::from_secs(20);
        c
    }

    fn client(&self) -> BlockingS3 {
        BlockingS3::new(S3Client::new(self.config(&self.bucket, &self.env.secret)).unwrap(), self.rt.handle().clone())
    }
}

/// A prefix no other test uses.
fn layout(test: &str) -> S3Layout {
    S3Layout::new(&format!("t-{test}"), "site-a").unwrap()
}

fn push(s3: &BlockingS3, l: &S3Layout, store: &store::Store, p: &store::RestorePoint) -> replicate::ReplicateReport {
    let mut t = S3Target::open(s3, l.clone(), store, p, Some(LockMode::Governance), SystemTime::now()).unwrap();
    replicate::replicate(store, p, &mut t, &opts(), &NoProgress).unwrap()
}

fn pull_newest(s3: &BlockingS3, l: &S3Layout, store: &store::Store, name: &str) -> pull::PullReport {
    let mut src = S3Source::open(s3, l.clone()).unwrap();
    src.check_store(store).unwrap();
    let points = src.points().unwrap();
    let rp = pull::find_remote(&points, name).unwrap();
    pull::pull(&mut src, store, &rp, &NoProgress).unwrap()
}

fn objects(s3: &BlockingS3, l: &S3Layout, under: &str) -> Vec<s3::ObjectInfo> {
    s3.list_all(&format!("{}/{under}", l.base())).unwrap()
}

#[test]
fn a_point_pushed_to_a_bucket_pulls_back_into_an_empty_store_byte_for_byte_from_pack_objects() {
    let Some(peer) = peer() else { return };
    let s3 = peer.client();
    let l = layout("roundtrip");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let src = open(a.path());
    let img = image(6 << 20, 21);
    let (p, _) = backup(&src, "vm1", &img);
    let r = push(&s3, &l, &src, &p);
    assert!(!r.already_there && r.batches >= 2, "{r:?}");
    assert_eq!(r.delivered_as, format!("{}/{}", l.base(), p.spec()));
    // Packs as objects, one per batch, each with its index; one index object for the point.
    let packs = objects(&s3, &l, "packs/");
    assert_eq!(packs.iter().filter(|o| o.key.ends_with(".pack")).count() as u64, r.batches, "{packs:?}");
    assert_eq!(packs.iter().filter(|o| o.key.ends_with(".idx")).count() as u64, r.batches);
    assert_eq!(objects(&s3, &l, "points/").len(), 1);
    // Again: found, nothing sent.
    let again = push(&s3, &l, &src, &p);
    assert!(again.already_there && again.bytes_sent == 0, "{again:?}");

    // Restore from the bucket into a store that never saw the point.
    let dst = open(b.path());
    let got = pull_newest(&s3, &l, &dst, "vm1");
    assert!(!got.already_there);
    assert_eq!(got.chunks_fetched, r.chunks_sent);
    assert_eq!(restored(&dst, &got.delivered_as), img);
    assert!(dst.verify_store(2, &|_| {}).unwrap().is_clean());
    let again = pull_newest(&s3, &l, &dst, "vm1");
    assert!(again.already_there && again.bytes_fetched == 0, "{again:?}");
}

#[test]
fn an_incremental_push_sends_only_the_changed_chunks_and_each_point_pulls_exactly() {
    let Some(peer) = peer() else { return };
    let s3 = peer.client();
    let l = layout("incremental");
    let a = tempfile::tempdir().unwrap();
    let src = open(a.path());
    let mut img = image(16 << 20, 22);
    let (p1, _) = backup(&src, "vm1", &img);
    push(&s3, &l, &src, &p1);
    let first = img.clone();
    change(&mut img, 1, 5);
    let (p2, new_bytes) = backup(&src, "vm1", &img);
    let r = push(&s3, &l, &src, &p2);
    assert!((r.bytes_sent as f64) <= 1.1 * new_bytes as f64, "sent {} for {new_bytes} new: {r:?}", r.bytes_sent);
    // A new appliance pulls the older point too: the packs serve both.
    let b = tempfile::tempdir().unwrap();
    let dst = open(b.path());
    let mut src3 = S3Source::open(&s3, l.clone()).unwrap();
    let points = src3.points().unwrap();
    assert_eq!(points.len(), 2);
    for (rp, want) in points.iter().zip([&first, &img]) {
        let got = pull::pull(&mut src3, &dst, rp, &NoProgress).unwrap();
        assert_eq!(&restored(&dst, &got.delivered_as), want, "{}", rp.spec());
    }
}

/// Fails every call after `ok_calls` (a cut link, or the appliance killed mid-push).
struct Cut<'a> {
    inner: S3Target<'a>,
    ok_calls: u32,
}

impl ReplicaTarget for Cut<'_> {
    fn find(&mut self, o: &store::PointOrigin) -> Result<Option<String>, ReplicateError> {
        self.inner.find(o)
    }
    fn lacking(&mut self, d: &[store::Digest]) -> Result<Vec<store::Digest>, ReplicateError> {
        self.inner.lacking(d)
    }
    fn put_records(&mut self, r: &[store::EncodedChunk]) -> Result<(), ReplicateError> {
        if self.ok_calls == 0 {
            return Err(ReplicateError::Offsite { message: "cut".into(), kind: engine::ErrorKind::Transient });
        }
        self.ok_calls -= 1;
        self.inner.put_records(r)
    }
    fn commit(
        &mut self,
        p: &store::RestorePoint,
        o: &store::PointOrigin,
    ) -> Result<replicate::Delivered, ReplicateError> {
        self.inner.commit(p, o)
    }
}

#[test]
fn a_cut_push_resumes_and_the_next_run_sends_only_what_the_bucket_lacks() {
    let Some(peer) = peer() else { return };
    let s3 = peer.client();
    let l = layout("resume");
    let a = tempfile::tempdir().unwrap();
    let src = open(a.path());
    let img = image(8 << 20, 23);
    let (p, stored) = backup(&src, "vm1", &img);
    let t = S3Target::open(&s3, l.clone(), &src, &p, None, SystemTime::now()).unwrap();
    let e = replicate::replicate(&src, &p, &mut Cut { inner: t, ok_calls: 3 }, &opts(), &NoProgress).unwrap_err();
    // Not retried here (the S3 client retried already), and nothing published.
    assert_eq!(e.kind(), engine::ErrorKind::Transient, "{e}");
    assert!(objects(&s3, &l, "points/").is_empty());
    let mut t = S3Target::open(&s3, l.clone(), &src, &p, None, SystemTime::now()).unwrap();
    assert_eq!(t.packs(), 3, "the three packs uploaded before the cut are known");
    let r = replicate::replicate(&src, &p, &mut t, &opts(), &NoProgress).unwrap();
    let first: u64 = 3 << 20; // three batches of at most 1 MiB
    assert!(r.bytes_sent + first <= stored + (1 << 20), "sent {} after the cut, {stored} stored: {r:?}", r.bytes_sent);
    let b = tempfile::tempdir().unwrap();
    let dst = open(b.path());
    let got = pull_newest(&s3, &l, &dst, "vm1");
    assert_eq!(restored(&dst, &got.delivered_as), img);
}

#[test]
fn an_encrypted_point_rests_sealed_in_the_bucket_and_pulls_only_into_a_store_with_its_key() {
    let Some(peer) = peer() else { return };
    let s3 = peer.client();
    let l = layout("encrypted");
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let src = open_encrypted(a.path(), 7);
    // Text that would show through if anything travelled in the clear.
    let img = image(4 << 20, 24);
    let (p, _) = backup(&src, "vm1", &img);
    push(&s3, &l, &src, &p);
    for o in objects(&s3, &l, "packs/").iter().filter(|o| o.key.ends_with(".pack")) {
        let body = s3.get(&o.key).unwrap();
        assert!(!body.windows(8).any(|w| w == b"text at "), "{} holds plaintext", o.key);
    }
    // Another key: refused before anything is fetched, saying what to do.
    let wrong = open_encrypted(b.path(), 8);
    let e = S3Source::open(&s3, l.clone()).unwrap().check_store(&wrong).unwrap_err();
    assert!(e.to_string().contains("another key") && e.to_string().contains("rackvault key restore"), "{e}");
    let plain = open(c.path());
    let e = S3Source::open(&s3, l.clone()).unwrap().check_store(&plain).unwrap_err();
    assert!(e.to_string().contains("encrypted"), "{e}");
    // The same key (a new appliance given the recovery key): exact.
    let d = tempfile::tempdir().unwrap();
    let same = open_encrypted(d.path(), 7);
    let got = pull_newest(&s3, &l, &same, "vm1");
    assert_eq!(restored(&same, &got.delivered_as), img);
}

#[test]
fn object_lock_makes_the_server_refuse_deleting_a_locked_point_and_gc_keeps_its_packs() {
    let Some(peer) = peer() else { return };
    let s3 = peer.client();
    let l = layout("lock");
    let a = tempfile::tempdir().unwrap();
    let src = open(a.path());
    // A point immutable for a day: its objects get a one-day governance lock.
    let img = image(2 << 20, 25);
    let (p, _) = super::backup_with(&src, "vm1", &img, Some(24 * 3600));
    assert!(p.immutable_until_unix.is_some());
    push(&s3, &l, &src, &p);
    let key = format!("{}/points/vm1/{}.json", l.base(), p.id);
    let kept = s3.retention(&key, None).unwrap().expect("the point index is locked");
    assert!(kept.retain_until > SystemTime::now() + Duration::from_secs(23 * 3600));
    let e = s3_delete_point(&s3, &l, &p.spec()).unwrap_err();
    assert!(e.to_string().contains("object lock"), "{e}");
    let gc = s3_gc(&s3, &l, SystemTime::now(), Duration::ZERO).unwrap();
    assert_eq!((gc.points, gc.packs_deleted), (1, 0), "{gc:?}");
    let b = tempfile::tempdir().unwrap();
    let dst = open(b.path());
    assert_eq!(restored(&dst, &pull_newest(&s3, &l, &dst, "vm1").delivered_as), img);
}

#[test]
fn gc_deletes_the_packs_only_a_deleted_point_referenced_and_the_rest_still_restores() {
    let Some(peer) = peer() else { return };
    let s3 = peer.client();
    let l = layout("gc");
    let a = tempfile::tempdir().unwrap();
    let src = open(a.path());
    // Random content throughout: the two points share no chunk.
    let noise = |seed: u64| {
        let mut v = vec![0u8; 3 << 20];
        testkit::Rng::new(seed).fill(&mut v);
        v
    };
    let (p1, _) = backup(&src, "old", &noise(26));
    let img2 = noise(27);
    let (p2, _) = backup(&src, "new", &img2);
    push(&s3, &l, &src, &p1);
    let before = objects(&s3, &l, "packs/").len();
    push(&s3, &l, &src, &p2);
    let both = objects(&s3, &l, "packs/").len();
    // Young packs are kept whatever references them.
    s3_delete_point(&s3, &l, &p1.spec()).unwrap();
    let young = s3_gc(&s3, &l, SystemTime::now(), Duration::from_secs(3600)).unwrap();
    assert_eq!((young.packs_deleted, young.packs_young as usize), (0, before / 2), "{young:?}");
    let gc = s3_gc(&s3, &l, SystemTime::now(), Duration::ZERO).unwrap();
    assert_eq!(gc.packs_deleted as usize, before / 2, "{gc:?}");
    assert!(gc.bytes_freed > 0);
    assert_eq!(objects(&s3, &l, "packs/").len(), both - before);
    // Deleted for good: no version is left behind a delete marker.
    let b = tempfile::tempdir().unwrap();
    let dst = open(b.path());
    assert_eq!(restored(&dst, &pull_newest(&s3, &l, &dst, "new").delivered_as), img2);
    let e = pull::find_remote(&S3Source::open(&s3, l.clone()).unwrap().points().unwrap(), "old").unwrap_err();
    assert!(e.to_string().contains("holds no point old"), "{e}");
}

#[test]
fn wrong_credentials_and_a_missing_bucket_are_refused_clearly_and_not_retried_forever() {
    let Some(peer) = peer() else { return };
    let a = tempfile::tempdir().unwrap();
    let src = open(a.path());
    let (p, _) = backup(&src, "vm1", &image(1 << 20, 28));
    let bad =
        BlockingS3::new(S3Client::new(peer.config(&peer.bucket, "not-the-secret")).unwrap(), peer.rt.handle().clone());
    let e = S3Target::open(&bad, layout("creds"), &src, &p, None, SystemTime::now()).unwrap_err();
    assert!(e.to_string().contains("credentials were refused"), "{e}");
    assert!(!e.to_string().contains("not-the-secret"));
    assert_eq!(e.kind(), engine::ErrorKind::Permanent);
    let missing = BlockingS3::new(
        S3Client::new(peer.config("rv-no-such-bucket", &peer.env.secret)).unwrap(),
        peer.rt.handle().clone(),
    );
    let e = S3Target::open(&missing, layout("creds"), &src, &p, None, SystemTime::now()).unwrap_err();
    assert!(e.to_string().contains("rv-no-such-bucket") && e.to_string().contains("does not exist"), "{e}");
}

#[test]
fn a_bucket_changed_by_something_else_is_refused_clearly_and_the_pulling_store_stays_intact() {
    let Some(peer) = peer() else { return };
    let s3 = peer.client();
    let l = layout("hostile");
    let a = tempfile::tempdir().unwrap();
    let src = open(a.path());
    let (p, _) = backup(&src, "vm1", &image(2 << 20, 29));
    push(&s3, &l, &src, &p);
    // Every pack object's bytes flipped in the middle: the pull refuses at the first record.
    for o in objects(&s3, &l, "packs/").iter().filter(|o| o.key.ends_with(".pack")) {
        let mut body = s3.get(&o.key).unwrap().to_vec();
        let mid = body.len() / 2;
        body[mid] ^= 0xff;
        s3.upload(&o.key, body.into()).unwrap();
    }
    let b = tempfile::tempdir().unwrap();
    let dst = open(b.path());
    let mut source = S3Source::open(&s3, l.clone()).unwrap();
    let points = source.points().unwrap();
    let e = pull::pull(&mut source, &dst, &points[0], &NoProgress).unwrap_err();
    assert!(e.to_string().contains("damaged") || e.to_string().contains("checksum"), "{e}");
    assert!(dst.list().unwrap().is_empty(), "no partial point is visible");
    assert!(dst.verify_store(2, &|_| {}).unwrap().is_clean());
    // A point index that is not JSON: a clear error, no panic.
    s3.upload(&format!("{}/points/vm1/999.json", l.base()), bytes::Bytes::from_static(b"{not json")).unwrap();
    let e = S3Source::open(&s3, l.clone()).unwrap().points().unwrap_err();
    assert!(e.to_string().contains("not what rackvault wrote there"), "{e}");
}

/// A source that hands out records with the wrong content for their digests.
struct Liar<'a> {
    store: &'a store::Store,
    points: Vec<pull::RemotePoint>,
}

impl ReplicaSource for Liar<'_> {
    fn points(&mut self) -> Result<Vec<pull::RemotePoint>, ReplicateError> {
        Ok(self.points.clone())
    }
    fn records(&mut self, digests: &[store::Digest]) -> Result<Vec<store::EncodedChunk>, ReplicateError> {
        let mut out = Vec::new();
        for d in digests {
            let mut c = self.store.read_encoded(d, &mut Vec::new()).unwrap();
            if c.kind == store::RecordKind::Data {
                // Another chunk's content under this digest.
                let last = c.payload.len() - 1;
                c.payload[last] ^= 1;
            }
            out.push(c);
        }
        Ok(out)
    }
}

#[test]
fn a_source_handing_out_wrong_records_makes_the_pull_fail_and_writes_none_of_them() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let src = open(a.path());
    let (p, _) = backup(&src, "vm1", &image(2 << 20, 30));
    let origin = store::PointOrigin {
        namespace: "site-a".into(),
        store_id: src.store_id(),
        point: p.spec(),
        created_unix: p.created_unix,
        without_key: false,
    };
    let mut liar = Liar { store: &src, points: vec![pull::RemotePoint { point: p.clone(), origin, sealed_by: None }] };
    let dst = open(b.path());
    let rp = liar.points[0].clone();
    let e = pull::pull(&mut liar, &dst, &rp, &NoProgress).unwrap_err();
    assert_eq!(e.kind(), engine::ErrorKind::Permanent, "{e}");
    assert!(dst.list().unwrap().is_empty());
    assert!(dst.verify_store(2, &|_| {}).unwrap().is_clean());
}
