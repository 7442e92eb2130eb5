//! Server restart in the middle of a read, against a *private* ganesha (private-ganesha.sh:
//! its own network namespace and rpcbind, reached through unix-socket bridges) so the shared
//! instance and its rpcbind registrations are never disturbed. Fixed ports only: the private
//! portmapper is not reachable from here.

use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use nfs3::{ClientOptions, Nfs3Client};

use crate::common::*;

struct Private {
    script: PathBuf,
    dir: PathBuf,
}

impl Private {
    fn run(&self, what: &str) -> Result<(), String> {
        let out = Command::new(&self.script)
            .arg(what)
            .env("RV_NFS3_PRIV_DIR", &self.dir)
            .output()
            .map_err(|e| format!("{}: {e}", self.script.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("private-ganesha.sh {what} failed: {}", String::from_utf8_lossy(&out.stderr)))
        }
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let _ = self.run("teardown");
    }
}

#[test]
fn read_survives_server_restart() {
    let Some(p) = peer() else { return };
    let _ = p;
    let private = Private {
        script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/nfs3/private-ganesha.sh"),
        dir: PathBuf::from("/tmp/rackvault-peers/nfs3-private"),
    };
    private.run("teardown").unwrap();
    if let Err(e) = private.run("start") {
        // Needs root, unshare and the peer packages, like the shared instance.
        if std::env::var("RACKVAULT_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("{e}");
        }
        eprintln!("skipped: cannot start a private nfs-ganesha: {e}");
        return;
    }
    let nfs = Proxy::start(Upstream::Unix(private.dir.join("nfs.sock")));
    let mnt = Proxy::start(Upstream::Unix(private.dir.join("mnt.sock")));
    let opts = ClientOptions {
        host: "127.0.0.1".into(),
        nfs_port: Some(nfs.port),
        mount_port: Some(mnt.port),
        io_timeout: Duration::from_secs(5),
        reconnect_deadline: Duration::from_secs(60),
        ..ClientOptions::default()
    };
    let c = Nfs3Client::mount(&opts, "/export").unwrap();
    let (fh, a) = c.lookup_path("disk.img").unwrap();
    let local = private.dir.join("export/disk.img");

    let (half_tx, half_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 4 << 20];
        let mut off = 0;
        while off < a.size {
            if off == a.size / 2 {
                half_tx.send(()).unwrap();
                go_rx.recv().unwrap(); // the server is down now
            }
            let len = (buf.len() as u64).min(a.size - off) as usize;
            let mut reqs: Vec<(u64, &mut [u8])> =
                buf[..len].chunks_mut(1 << 20).enumerate().map(|(i, b)| (off + (i << 20) as u64, b)).collect();
            c.read_many(&fh, &mut reqs)?;
            h.update(&buf[..len]);
            off += len as u64;
        }
        Ok::<_, nfs3::NfsError>(h.finalize())
    });
    half_rx.recv().unwrap();
    private.run("stop-server").unwrap();
    go_tx.send(()).unwrap();
    std::thread::sleep(Duration::from_secs(2)); // the client retries against a dead server
    private.run("start-server").unwrap();
    let got = reader.join().unwrap().unwrap_or_else(|e| panic!("read across a server restart: {e}"));
    assert_eq!(got, hash_local(&local));
    assert!(nfs.accepted.load(std::sync::atomic::Ordering::SeqCst) > 2, "no reconnect happened");
}
