//! Idle and half-open connections cannot starve real clients (slowloris): with 500 of them
//! open, more than the connection limit, a real request is still answered within 1 s.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The tests of this file measure time and hold many sockets: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// This test holds about a thousand sockets (both ends are in this process).
fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(8192), hard).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_request_is_served_within_a_second_while_500_idle_connections_are_open() {
    let _serial = ONE_AT_A_TIME.lock().await;
    raise_open_files();
    let s = TestServer::start().await;
    let cfg = s.client_config(&[&rustls::version::TLS13]);
    let mut idle_tcp = Vec::new();
    let mut idle_tls = Vec::new();
    // 200 that finish the handshake, half of them then sending half a request head.
    for i in 0..200 {
        let tcp = TcpStream::connect(s.https).await.unwrap();
        let connect =
            tokio_rustls::TlsConnector::from(cfg.clone()).connect(ServerName::try_from("localhost").unwrap(), tcp);
        let mut tls = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .expect("a handshake while slots are free")
            .expect("TLS handshake");
        if i % 2 == 0 {
            tls.write_all(b"GET /api/v1/setup HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
        }
        idle_tls.push(tls);
    }
    // 300 that connect at once and never start TLS: past the connection limit. (Those the
    // kernel's backlog does not take within 2 s are left out.)
    let addr = s.https;
    let connects: Vec<_> = (0..300)
        .map(|_| {
            tokio::spawn(async move { tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await })
        })
        .collect();
    for c in connects {
        if let Ok(Ok(Ok(tcp))) = c.await {
            idle_tcp.push(tcp);
        }
    }
    assert!(idle_tcp.len() >= 100, "only {} idle connections could be opened", idle_tcp.len());
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(1), s.req("GET", "/api/v1/setup", &[], b""))
        .await
        .expect("a real request is answered within 1 s while 500 idle connections are open");
    assert_eq!(r.status, 200, "{}", r.text());
    eprintln!(
        "answered in {:?} with {} + {} idle connections opened",
        started.elapsed(),
        idle_tcp.len(),
        idle_tls.len()
    );
    drop(idle_tcp);
    drop(idle_tls);
    s.stop().await.unwrap();
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(s: &TestServer) -> Tls {
    let cfg = s.client_config(&[&rustls::version::TLS13]);
    let tcp = TcpStream::connect(s.https).await.unwrap();
    tokio_rustls::TlsConnector::from(cfg).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap()
}

/// Reads until the server closes; returns what it sent and how long that took.
async fn read_to_close<R: tokio::io::AsyncRead + Unpin>(r: &mut R, within: Duration) -> (Vec<u8>, Duration) {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + within).into(), r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server did not close within {within:?}; it sent {:?}", String::from_utf8_lossy(&got)),
        }
    }
}

fn short_timeouts(cfg: &mut webserver::ServerConfig) {
    cfg.timeouts = webserver::Timeouts {
        handshake: Duration::from_millis(400),
        header: Duration::from_millis(600),
        body: Duration::from_millis(800),
    };
}

#[tokio::test]
async fn each_step_of_a_request_has_its_own_deadline_handshake_headers_and_body() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = TestServer::start_configured(Default::default(), short_timeouts).await;
    // No TLS at all: closed once the handshake deadline passes.
    let mut tcp = TcpStream::connect(s.https).await.unwrap();
    let (_, took) = read_to_close(&mut tcp, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(350) && took < Duration::from_secs(3), "handshake deadline: {took:?}");
    // Half a request head: closed once the header deadline passes.
    let mut tls = tls_connect(&s).await;
    tls.write_all(b"GET /api/v1/setup HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    let (_, took) = read_to_close(&mut tls, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(500) && took < Duration::from_secs(3), "header deadline: {took:?}");
    // A body that stops arriving: 408 once the body deadline passes.
    let mut tls = tls_connect(&s).await;
    let head = format!(
        "POST /api/v1/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":",
        s.host()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let (answer, took) = read_to_close(&mut tls, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("took too long"), "{answer}");
    assert!(took >= Duration::from_millis(700) && took < Duration::from_secs(3), "body deadline: {took:?}");
    // And a real request is still answered.
    assert_eq!(s.req("GET", "/api/v1/setup", &[], b"").await.status, 200);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn at_the_limit_the_longest_silent_connection_is_evicted_not_one_that_just_started_a_request() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let s = TestServer::start_configured(Default::default(), |c| c.max_connections = 3).await;
    // A: the oldest connection, idle...
    let mut a = tls_connect(&s).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut b = tls_connect(&s).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _c = tls_connect(&s).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...until it starts a request (its head not yet complete).
    a.write_all(format!("GET /api/v1/setup HTTP/1.1\r\nHost: {}\r\n", s.host()).as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A new connection takes the slot of B, which has been silent longest.
    let _d = tls_connect(&s).await;
    let (_, took) = read_to_close(&mut b, Duration::from_secs(3)).await;
    assert!(took < Duration::from_secs(2), "B was evicted: {took:?}");
    // A finishes its request and is answered.
    a.write_all(b"Connection: close\r\n\r\n").await.unwrap();
    let (answer, _) = read_to_close(&mut a, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "A's request survived the eviction: {answer}");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn connections_refused_because_every_slot_is_handling_a_request_are_logged_once_a_minute() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let s = TestServer::start_configured(Default::default(), move |c| {
        c.max_connections = 2;
        c.log = Some(std::sync::Arc::new(move |l: &str| sink.lock().unwrap().push(l.to_string())));
    })
    .await;
    // Two requests whose bodies never finish arriving: both slots are handling a request.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut t = tls_connect(&s).await;
        let head = format!("POST /api/v1/login HTTP/1.1\r\nHost: {}\r\nContent-Length: 100\r\n\r\n{{", s.host());
        t.write_all(head.as_bytes()).await.unwrap();
        slow.push(t);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(s.https).await.unwrap();
        let (_, took) = read_to_close(&mut tcp, Duration::from_secs(3)).await;
        assert!(took < Duration::from_secs(2), "refused at once: {took:?}");
    }
    let refusals: Vec<String> =
        lines.lock().unwrap().iter().filter(|l| l.contains("connection limit reached")).cloned().collect();
    assert_eq!(refusals.len(), 1, "one report for the minute: {refusals:?}");
    assert!(refusals[0].contains("2 connections") && refusals[0].contains("127.0.0.1"), "{}", refusals[0]);
    drop(slow);
    s.stop().await.unwrap();
}
