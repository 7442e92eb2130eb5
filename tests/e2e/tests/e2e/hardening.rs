//! The release daemon against an unauthenticated flood (issue 12, items 1 and 2): 200
//! concurrent wrong sign-ins from 200 loopback addresses keep its peak memory under 512 MiB
//! (each argon2 check takes about 19 MiB; they run two at a time), every answer is 401, 429
//! or 503 (never a 500), the audit log stays small although half the attempts carry a 15 KB
//! user name, and the real administrator still signs in afterwards. A public route takes at
//! most 16 KiB of body.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use e2e::scratch;
use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
use serde_json::json;

use super::daemon::{start, Client};

/// POSTs `body` to `path` from the loopback address `from`; returns the status code.
fn post_from(tls: &Arc<rustls::ClientConfig>, port: u16, from: Ipv4Addr, path: &str, body: &str) -> u16 {
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("a TCP socket");
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(SocketAddrV4::new(from, 0)))
        .expect("bind a loopback source address");
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)))
        .expect("connect to the daemon");
    let tcp = TcpStream::from(fd);
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let conn = rustls::ClientConnection::new(tls.clone(), "localhost".try_into().unwrap()).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // A server that refuses the body early (413) closes while it is still being sent.
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body.as_bytes()));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon's /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

#[test]
fn a_sign_in_flood_from_200_addresses_neither_exhausts_memory_nor_fills_the_audit_log() {
    let dir = scratch("signin-flood");
    let data = dir.path().join("data");
    let log = dir.path().join("daemon.log");
    let d = start(&data, &log);
    let mut c = Client::new(&data, d.port);
    c.set_up(&data);
    let state_before = std::fs::metadata(data.join("state/data.mdb")).map(|m| m.len()).unwrap_or(0);

    // Just under the 16 KiB a public route takes: these reach the service, which must not log
    // them whole.
    let name = "n".repeat(15_000);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..200u32)
            .map(|i| {
                let (tls, port) = (c.tls.clone(), d.port);
                // Half with a valid-looking unknown user (a full argon2 check), half with an
                // oversized user name.
                let user = if i % 2 == 0 { format!("guess{i}") } else { name.clone() };
                s.spawn(move || {
                    let from = Ipv4Addr::new(127, 0, (i / 250 + 1) as u8, (i % 250 + 1) as u8);
                    let body = json!({ "user": user, "password": "wrong password" }).to_string();
                    post_from(&tls, port, from, "/api/v1/login", &body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a client thread")).collect()
    });
    for st in &statuses {
        assert!(matches!(st, 401 | 429 | 503), "an attempt got {st}: {statuses:?}");
    }
    let peak_mib = peak_rss_kib(d.child.id()) / 1024;
    assert!(peak_mib < 512, "the daemon peaked at {peak_mib} MiB during the flood");

    // The administrator is not locked out, and the audit log holds bounded entries.
    c.sign_in();
    let entries = c.ok("GET", "/api/v1/audit?limit=1000", None);
    let bytes = entries.to_string().len();
    assert!(bytes < 256 << 10, "the audit log answer is {bytes} bytes after the flood");
    let state_after = std::fs::metadata(data.join("state/data.mdb")).map(|m| m.len()).unwrap_or(0);
    assert!(state_after < state_before + (16 << 20), "state/ grew from {state_before} to {state_after} bytes");
    let (status, _) = c.call("GET", "/api/v1/audit?limit=0", None);
    assert_eq!(status, 400, "limit=0 is refused");
    eprintln!("sign-in flood: peak {peak_mib} MiB, audit answer {bytes} bytes, statuses {:?}", {
        let mut v = statuses.clone();
        v.sort();
        v.dedup();
        v
    });
}

#[test]
fn the_daemon_reads_local_sources_only_under_its_source_roots() {
    let dir = scratch("source-roots");
    let data = dir.path().join("data");
    let log = dir.path().join("daemon.log");
    let d = start(&data, &log);
    let mut c = Client::new(&data, d.port);
    c.set_up(&data);
    c.sign_in();
    let outside = dir.path().join("elsewhere.raw");
    std::fs::write(&outside, vec![1u8; 1 << 20]).unwrap();
    for (name, url) in [
        ("outside", outside.display().to_string()),
        ("key", data.join("appliance.key").display().to_string()),
        ("shadow", "/etc/shadow".to_string()),
    ] {
        let (status, v) = c.call("POST", "/api/v1/sources", Some(&json!({ "name": name, "url": url })));
        assert_eq!(status, 400, "{name}: {v}");
    }
    // The dev sample, inside the data directory's samples/, stays usable.
    let sample = data.join("samples/sample-vm.raw").display().to_string();
    let (status, v) = c.call("POST", "/api/v1/sources", Some(&json!({ "name": "sample-again", "url": sample })));
    assert_eq!(status, 200, "{v}");
    use std::os::unix::fs::PermissionsExt;
    let mode =
        std::fs::metadata(data.join("setup-code").parent().unwrap().join("config.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the daemon's files are for its user only: {mode:o}");
}
