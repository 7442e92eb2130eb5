//! Integration tests against SeaweedFS's S3 gateway (tests/peers/start-s3.sh) on loopback.
//!
//! The peer's variables come from the process environment (`set -a; source
//! /tmp/rackvault-peers/s3/env`). Missing: every test prints "skipped" and passes, or fails
//! when RACKVAULT_REQUIRE_PEERS=1 (as tests/run.sh sets). The tests of one run share one
//! bucket named after the process and the time, each under a key prefix of its own, so runs
//! never see each other's objects (SeaweedFS gives every bucket volumes of its own, and the
//! peer's volume count is bounded, so a bucket per test would fill it after a few runs); the
//! object lock test needs a bucket of its own. Faults are injected by a TCP proxy on
//! 127.0.0.1 between the client and the server.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use s3::{BlockingS3, ErrorKind, LockMode, Retention, RetryPolicy, S3Client, S3Config, S3Error, Secret};

use testkit::peers::{unique_bucket, S3Env as Env};

fn env() -> Option<Env> {
    testkit::peers::s3()
}

fn fast_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_elapsed: Duration::from_secs(30),
    }
}

fn config(e: &Env, bucket: &str) -> S3Config {
    let mut c = S3Config::new(&e.endpoint, &e.region, bucket, &e.access, Secret::new(&e.secret));
    c.allow_http = true; // loopback test server
    c.path_style = true;
    c.request_timeout = Duration::from_secs(60);
    c.retry = fast_retries(5);
    c
}

fn client(c: S3Config) -> S3Client {
    S3Client::new(c).unwrap_or_else(|e| panic!("client: {e}"))
}

/// The bucket this run's tests share, created by the first test that asks.
static SHARED: tokio::sync::Mutex<Option<String>> = tokio::sync::Mutex::const_new(None);

/// A client for the run's shared bucket.
async fn shared_bucket(e: &Env) -> S3Client {
    let mut name = SHARED.lock().await;
    if let Some(n) = name.as_ref() {
        return client(config(e, n));
    }
    let c = client(config(e, &unique_bucket("shared")));
    c.create_bucket(false).await.unwrap_or_else(|err| panic!("create bucket: {err}"));
    *name = Some(c.config().bucket.clone());
    c
}

/// A client for a new, empty bucket with object lock.
async fn lock_bucket(e: &Env, test: &str) -> S3Client {
    let c = client(config(e, &unique_bucket(test)));
    c.create_bucket(true).await.unwrap_or_else(|err| panic!("create bucket: {err}"));
    c
}

fn random(len: usize, seed: u64) -> Bytes {
    let mut v = vec![0u8; len];
    testkit::Rng::new(seed).fill(&mut v);
    Bytes::from(v)
}

fn in_a_day() -> SystemTime {
    SystemTime::now() + Duration::from_secs(24 * 3600)
}

/// Whole seconds since the epoch, rounded up (as the client sends retain-until dates).
fn secs_up(t: SystemTime) -> u64 {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

// ---- round trips ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_object_round_trips_with_head_ranged_get_list_and_delete() {
    let Some(e) = env() else { return };
    let c = shared_bucket(&e).await;
    let data = random(100_000, 1);
    c.put("small/dir/small.bin", data.clone()).await.unwrap();
    assert_eq!(c.get("small/dir/small.bin").await.unwrap(), data);
    assert_eq!(c.get_range("small/dir/small.bin", 1000..1100).await.unwrap(), data.slice(1000..1100));
    let h = c.head("small/dir/small.bin").await.unwrap();
    assert_eq!((h.key.as_str(), h.size), ("small/dir/small.bin", 100_000));
    assert!(h.e_tag.is_some());
    let listed = c.list_all("small/dir/").await.unwrap();
    assert_eq!(listed.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), ["small/dir/small.bin"]);
    c.delete("small/dir/small.bin").await.unwrap();
    let err = c.get("small/dir/small.bin").await.unwrap_err();
    assert!(matches!(err, S3Error::NotFound { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    let err = c.head("small/dir/small.bin").await.unwrap_err();
    assert!(matches!(err, S3Error::NotFound { .. }), "{err:?}");
    assert_eq!(c.retries(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_40_mib_object_uploads_in_8_mib_parts_and_reads_back_across_part_boundaries() {
    let Some(e) = env() else { return };
    let c = shared_bucket(&e).await;
    let data = random(40 << 20, 2);
    let mib = 1u64 << 20;
    c.put_multipart("multipart/packs/big.pack", data.clone(), 8 << 20).await.unwrap();
    assert_eq!(c.head("multipart/packs/big.pack").await.unwrap().size, 40 * mib);
    // a range across the boundary of parts 1 and 2, and the tail of the last part
    let across = c.get_range("multipart/packs/big.pack", 8 * mib - 100..8 * mib + 100).await.unwrap();
    assert_eq!(across, data.slice((8 << 20) - 100..(8 << 20) + 100));
    let tail = c.get_range("multipart/packs/big.pack", 40 * mib - 10..40 * mib).await.unwrap();
    assert_eq!(tail, data.slice((40 << 20) - 10..));
    assert!(c.get("multipart/packs/big.pack").await.unwrap() == data, "whole object differs");
    // upload() picks multipart above the threshold by itself
    let mut cfg = c.config().clone();
    cfg.multipart_threshold = 6 << 20;
    cfg.part_size = 5 << 20;
    let c2 = client(cfg);
    let d2 = random(11 << 20, 3);
    c2.upload("multipart/packs/auto.pack", d2.clone()).await.unwrap();
    assert!(c2.get("multipart/packs/auto.pack").await.unwrap() == d2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_by_prefix_pages_through_every_key_in_order() {
    let Some(e) = env() else { return };
    let c = shared_bucket(&e).await;
    let mut want = Vec::new();
    for i in 0..25 {
        let k = format!("list/index/p{i:03}.idx");
        c.put(&k, Bytes::from(format!("{i}"))).await.unwrap();
        want.push(k);
    }
    for k in ["list/indexnot/x", "list/other/y", "list/index2"] {
        c.put(k, Bytes::from_static(b"-")).await.unwrap();
    }
    let mut got = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = c.list_page("list/index/", token, 7).await.unwrap();
        assert!(page.objects.len() <= 7);
        pages += 1;
        got.extend(page.objects.into_iter().map(|o| o.key));
        match page.next {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(got, want);
    assert_eq!(pages, 4, "25 keys in pages of 7");
    assert_eq!(c.list_all("list/index").await.unwrap().len(), 27); // "index/…", "index2", "indexnot/x"
    assert_eq!(c.list_all("list/").await.unwrap().len(), 28);
    assert!(c.list_all("list/nothing/").await.unwrap().is_empty());
}

// ---- permanent errors -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_reported_as_refused_credentials_without_the_secret() {
    let Some(e) = env() else { return };
    let good = shared_bucket(&e).await;
    good.put("creds/k", Bytes::from_static(b"x")).await.unwrap();
    let wrong = "wrong-secret-that-must-not-leak-1234";
    let mut cfg = good.config().clone();
    cfg.secret_key = Secret::new(wrong);
    let bad = client(cfg.clone());
    for err in [
        bad.put("creds/k2", Bytes::from_static(b"y")).await.unwrap_err(),
        bad.get("creds/k").await.unwrap_err(),
        bad.head("creds/k").await.unwrap_err(),
        bad.list_page("creds/", None, 10).await.unwrap_err(),
    ] {
        assert!(matches!(err, S3Error::Credentials { .. }), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::Permanent);
        let msg = err.to_string();
        assert!(
            msg.contains("the S3 credentials were refused") && msg.contains("check the access key and secret"),
            "{msg}"
        );
        assert!(!msg.contains(wrong) && !format!("{err:?}").contains(wrong));
    }
    assert!(!format!("{cfg:?}").contains(wrong) && !format!("{bad:?}").contains(wrong), "the secret shows in Debug");
    assert_eq!(bad.retries(), 0, "permanent errors are not retried");
    // an access key the server does not know
    let mut cfg = good.config().clone();
    cfg.access_key = "RVNOSUCHACCESSKEY".into();
    let err = client(cfg).put("creds/k3", Bytes::from_static(b"z")).await.unwrap_err();
    assert!(matches!(err, S3Error::Credentials { .. }), "{err:?}");
    assert!(err.to_string().contains("check the access key and secret"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_reported_with_its_name_and_endpoint() {
    let Some(e) = env() else { return };
    let bucket = unique_bucket("missing");
    let c = client(config(&e, &bucket));
    let want = format!("bucket {bucket} does not exist on {}; create it or fix the name", e.endpoint);
    for err in [
        c.put("k", Bytes::from_static(b"x")).await.unwrap_err(),
        c.get("k").await.unwrap_err(),
        c.head("k").await.unwrap_err(),
        c.list_page("", None, 10).await.unwrap_err(),
    ] {
        assert!(matches!(err, S3Error::NoSuchBucket { .. }), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert_eq!(err.to_string(), want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_only_identity_is_denied_a_put_but_may_read() {
    let Some(e) = env() else { return };
    let admin = shared_bucket(&e).await;
    admin.put("readonly/k", Bytes::from_static(b"readable")).await.unwrap();
    let mut cfg = admin.config().clone();
    cfg.access_key = e.ro_access.clone();
    cfg.secret_key = Secret::new(&e.ro_secret);
    let ro = client(cfg);
    let err = ro.put("readonly/k2", Bytes::from_static(b"y")).await.unwrap_err();
    assert!(matches!(err, S3Error::AccessDenied { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert!(err.to_string().contains("access denied: PUT s3://"), "{err}");
    assert_eq!(ro.get("readonly/k").await.unwrap(), Bytes::from_static(b"readable"));
}

// ---- object lock ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_lock_refuses_deleting_a_version_inside_its_window_and_reads_the_retention_back() {
    let Some(e) = env() else { return };
    let c = lock_bucket(&e, "lock").await;
    let until = in_a_day();
    for (key, mode) in [("gov.pack", LockMode::Governance), ("comp.pack", LockMode::Compliance)] {
        let put = c.put_with_retention(key, random(4096, 4), Retention { mode, retain_until: until }).await.unwrap();
        let version = put.version.clone().unwrap_or_else(|| panic!("{key}: no version id from a locked bucket"));
        let r = c.retention(key, Some(&version)).await.unwrap().unwrap_or_else(|| panic!("{key}: no retention"));
        assert_eq!(r.mode, mode);
        assert_eq!(secs_up(r.retain_until), secs_up(until), "{key}: retain-until read back");
        assert_eq!(c.retention(key, None).await.unwrap().map(|r| r.mode), Some(mode), "current version");
        let err = c.delete_version(key, &version).await.unwrap_err();
        assert!(matches!(err, S3Error::ObjectLocked { .. }), "{key}: {err:?}");
        assert_eq!(err.kind(), ErrorKind::Permanent);
        let msg = err.to_string();
        assert!(msg.contains("under object lock") && msg.contains(mode_name(mode)), "{msg}");
        assert_eq!(c.get(key).await.unwrap().len(), 4096, "{key} is still there");
    }
    // shortening a COMPLIANCE retention is refused too
    let v = c.head("comp.pack").await.unwrap().version.unwrap_or_default();
    let shorter = Retention { mode: LockMode::Compliance, retain_until: until - Duration::from_secs(3600) };
    let err = c.set_retention("comp.pack", Some(&v), shorter).await.unwrap_err();
    assert!(matches!(err, S3Error::ObjectLocked { .. }), "{err:?}");
    // a multipart upload carries the retention from its creation
    let mut cfg = c.config().clone();
    cfg.multipart_threshold = 6 << 20;
    cfg.part_size = 5 << 20;
    let big = client(cfg);
    let put = big
        .put_with_retention(
            "big.pack",
            random(11 << 20, 5),
            Retention { mode: LockMode::Governance, retain_until: until },
        )
        .await
        .unwrap();
    let version = put.version.unwrap_or_default();
    assert_eq!(big.retention("big.pack", Some(&version)).await.unwrap().map(|r| r.mode), Some(LockMode::Governance));
    assert!(matches!(big.delete_version("big.pack", &version).await, Err(S3Error::ObjectLocked { .. })));
    // without a retention a version can be deleted
    let put = c.put("free.pack", Bytes::from_static(b"f")).await.unwrap();
    let version = put.version.unwrap_or_default();
    assert_eq!(c.retention("free.pack", Some(&version)).await.unwrap(), None);
    c.delete_version("free.pack", &version).await.unwrap();
}

fn mode_name(m: LockMode) -> &'static str {
    match m {
        LockMode::Governance => "GOVERNANCE",
        LockMode::Compliance => "COMPLIANCE",
    }
}

// ---- transient faults through a proxy ---------------------------------------------------------

/// What the proxy does with connection number `n` (from 0).
#[derive(Clone, Copy)]
enum Fault {
    /// Close the first `n` connections at once, unanswered.
    DropFirst(usize),
    /// Answer the first `n` requests 503 SlowDown (after reading them whole).
    SlowDownFirst(usize),
    /// Pass at most this many request bytes per connection to the server, then cut both ways.
    CutAfter(usize),
    /// Read the request, never answer (until the client gives up).
    Silent,
}

struct Proxy {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Proxy {
    /// A proxy on 127.0.0.1 to the S3 endpoint; its accept thread lives as long as the test.
    fn start(endpoint: &str, fault: Fault) -> Proxy {
        let upstream: SocketAddr =
            endpoint.trim_start_matches("http://").trim_end_matches('/').parse().expect("endpoint host:port");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let n = count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || serve(client, upstream, n, fault));
            }
        });
        Proxy { addr, connections }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn serve(mut client: TcpStream, upstream: SocketAddr, n: usize, fault: Fault) {
    match fault {
        Fault::DropFirst(k) if n < k => {
            let _ = client.shutdown(Shutdown::Both);
        }
        Fault::SlowDownFirst(k) if n < k => {
            read_request(&mut client);
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
            let head = format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = client.write_all(head.as_bytes());
            let _ = client.write_all(body.as_bytes());
            let _ = client.shutdown(Shutdown::Both);
        }
        Fault::CutAfter(limit) => pipe(client, upstream, Some(limit)),
        Fault::Silent => {
            read_request(&mut client);
            let mut b = [0u8; 1];
            let _ = client.read(&mut b); // returns when the client closes
        }
        _ => pipe(client, upstream, None),
    }
}

/// Reads one request (head and Content-Length body) and discards it.
fn read_request(s: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut b = [0u8; 8192];
    let head_end = loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return,
            Ok(k) => buf.extend_from_slice(&b[..k]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < len {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return,
            Ok(k) => have += k,
        }
    }
}

/// Copies both ways; with `limit`, cuts both connections once that many request bytes passed.
fn pipe(client: TcpStream, upstream: SocketAddr, limit: Option<usize>) {
    let Ok(server) = TcpStream::connect(upstream) else { return };
    let (mut c_read, mut s_write) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
    let (mut s_read, mut c_write) = (server, client);
    let up = std::thread::spawn(move || {
        let mut passed = 0usize;
        let mut b = [0u8; 16384];
        loop {
            let k = match c_read.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(k) => k,
            };
            let k = match limit {
                Some(l) => k.min(l - passed),
                None => k,
            };
            if s_write.write_all(&b[..k]).is_err() {
                break;
            }
            passed += k;
            if limit.is_some_and(|l| passed >= l) {
                let _ = c_read.shutdown(Shutdown::Both);
                let _ = s_write.shutdown(Shutdown::Both);
                return;
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut s_read, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Both);
    let _ = up.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_slowdown_is_retried_and_the_put_then_succeeds() {
    let Some(e) = env() else { return };
    let direct = shared_bucket(&e).await;
    let proxy = Proxy::start(&e.endpoint, Fault::SlowDownFirst(1));
    let mut cfg = direct.config().clone();
    cfg.endpoint = proxy.endpoint();
    let c = client(cfg);
    let data = random(200_000, 6);
    c.put("slowdown/after-slowdown", data.clone()).await.unwrap();
    assert_eq!(c.retries(), 1, "one 503 SlowDown, one retry");
    assert_eq!(direct.get("slowdown/after-slowdown").await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_retried_until_the_server_answers() {
    let Some(e) = env() else { return };
    let direct = shared_bucket(&e).await;
    let proxy = Proxy::start(&e.endpoint, Fault::DropFirst(3));
    let mut cfg = direct.config().clone();
    cfg.endpoint = proxy.endpoint();
    cfg.retry = fast_retries(6);
    let c = client(cfg);
    let data = random(50_000, 7);
    c.put("dropped/after-drops", data.clone()).await.unwrap();
    assert_eq!(c.retries(), 3, "three dropped connections, three retries");
    assert!(proxy.connections.load(Ordering::SeqCst) >= 4);
    assert_eq!(c.get("dropped/after-drops").await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_upload_is_a_transient_error_once_retries_are_exhausted() {
    let Some(e) = env() else { return };
    let direct = shared_bucket(&e).await;
    let proxy = Proxy::start(&e.endpoint, Fault::CutAfter(64 << 10));
    let mut cfg = direct.config().clone();
    cfg.endpoint = proxy.endpoint();
    cfg.retry = fast_retries(3);
    let c = client(cfg);
    let err = c.put("cut/never-complete", random(1 << 20, 8)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err:?}");
    let S3Error::RetriesExhausted { attempts, ref last, .. } = err else { panic!("not exhausted: {err:?}") };
    assert_eq!(attempts, 3);
    assert!(matches!(**last, S3Error::Connection { .. }), "{last:?}");
    let msg = err.to_string();
    assert!(msg.contains("gave up after 3 attempts") && msg.contains("check that the endpoint is reachable"), "{msg}");
    assert_eq!(c.retries(), 2);
    assert!(matches!(direct.head("cut/never-complete").await, Err(S3Error::NotFound { .. })), "no partial object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_a_timeout_retried_then_reported_as_transient() {
    let Some(e) = env() else { return };
    let direct = shared_bucket(&e).await;
    let proxy = Proxy::start(&e.endpoint, Fault::Silent);
    let mut cfg = direct.config().clone();
    cfg.endpoint = proxy.endpoint();
    cfg.request_timeout = Duration::from_millis(500);
    cfg.retry = fast_retries(2);
    let c = client(cfg);
    let err = c.get("timeout/anything").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err:?}");
    assert!(matches!(err.root(), S3Error::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("no answer from"), "{err}");
    assert_eq!(c.retries(), 1);
}

// ---- blocking callers -------------------------------------------------------------------------

#[test]
fn the_blocking_client_works_from_a_plain_thread_on_a_lent_runtime() {
    let Some(e) = env() else { return };
    // stands in for the binary's runtime
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let c = rt.block_on(shared_bucket(&e));
    let b = BlockingS3::new(c, rt.handle().clone());
    let worker = std::thread::spawn(move || {
        b.put("blocking/from-a-thread", Bytes::from_static(b"hello"))?;
        let got = b.get("blocking/from-a-thread")?;
        // a multipart upload spawns its parts on the lent runtime
        let big = random(11 << 20, 9);
        b.put_multipart("blocking/big.pack", big.clone(), 5 << 20)?;
        let same = b.get("blocking/big.pack")? == big;
        let listed = b.list_all("blocking/")?;
        Ok::<_, S3Error>((got, same, listed.len()))
    });
    let (got, same, n) = worker.join().expect("thread").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((got, same, n), (Bytes::from_static(b"hello"), true, 2));
}
