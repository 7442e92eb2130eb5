//! Idle and half-open connections cannot starve real clients (slowloris): with 500 of them
//! open, more than the connection limit, a real request is still answered within 1 s.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// This test holds about a thousand sockets (both ends are in this process).
fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(8192), hard).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_request_is_served_within_a_second_while_500_idle_connections_are_open() {
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
