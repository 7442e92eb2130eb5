//! Dropped connections and silent servers, through the fault proxy in front of ganesha.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nfs3::{ClientOptions, Nfs3Client, NfsError};

use crate::common::*;

#[test]
fn large_read_survives_connection_cuts() {
    let Some(p) = peer() else { return };
    let proxy = Proxy::start(Upstream::Tcp(format!("{}:{}", p.host, p.port)));
    let opts = ClientOptions { nfs_port: Some(proxy.port), reconnect_deadline: Duration::from_secs(20), ..p.opts() };
    let c = Nfs3Client::mount(&opts, &p.export).unwrap();
    let (fh, a) = c.lookup_path(&p.disk).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let cuts = std::thread::scope(|s| {
        let cutter = s.spawn(|| {
            let mut n = 0;
            while !done.load(Ordering::SeqCst) && n < 6 {
                std::thread::sleep(Duration::from_millis(150));
                proxy.cut();
                n += 1;
            }
            n
        });
        let h = hash_over_nfs(&c, &fh, a.size, 64 << 20, 8 << 20);
        done.store(true, Ordering::SeqCst);
        assert_eq!(h, hash_local(&p.dir.join(&p.disk)));
        cutter.join().unwrap()
    });
    assert!(cuts >= 2, "only {cuts} cuts happened during the read");
    assert!(proxy.accepted.load(Ordering::SeqCst) > 2, "the client never reconnected");
}

#[test]
fn silent_server_times_out_then_recovers() {
    let Some(p) = peer() else { return };
    let proxy = Proxy::start(Upstream::Tcp(format!("{}:{}", p.host, p.port)));
    let opts = ClientOptions {
        nfs_port: Some(proxy.port),
        io_timeout: Duration::from_millis(500),
        reconnect_deadline: Duration::from_secs(2),
        ..p.opts()
    };
    let c = Nfs3Client::mount(&opts, &p.export).unwrap();
    let (fh, _) = c.lookup_path(&p.disk).unwrap();
    proxy.stall.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let e = c.read_at(&fh, 0, &mut vec![0u8; 4 << 20]).unwrap_err();
    assert!(matches!(e, NfsError::ConnectionLost { .. }), "{e:?}");
    assert!(e.is_transient());
    assert!(e.to_string().contains("no reply to READ"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10), "gave up only after {:?}", t.elapsed());
    // the same client works again once the server answers
    proxy.stall.store(false, Ordering::SeqCst);
    let data = std::fs::read(p.dir.join(&p.disk)).unwrap();
    let mut b = vec![0u8; 1 << 20];
    c.read_at(&fh, 5 << 20, &mut b).unwrap();
    assert!(b[..] == data[5 << 20..6 << 20]);
}

#[test]
fn unreachable_server_gives_connect_error_at_mount_and_lost_later() {
    let Some(p) = peer() else { return };
    // a port nobody listens on
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = Nfs3Client::mount(&ClientOptions { nfs_port: Some(free), ..p.opts() }, &p.export).unwrap_err();
    assert!(matches!(e, NfsError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains("is the NFS server running"), "{e}");

    // mounted through a proxy that then goes away for good
    let proxy = Proxy::start(Upstream::Tcp(format!("{}:{}", p.host, free)));
    let opts = ClientOptions { nfs_port: Some(proxy.port), reconnect_deadline: SHORT, ..p.opts() };
    let e = Nfs3Client::mount(&opts, &p.export).unwrap_err();
    assert!(matches!(e, NfsError::Connect { .. } | NfsError::ConnectionLost { .. }), "{e:?}");
}
