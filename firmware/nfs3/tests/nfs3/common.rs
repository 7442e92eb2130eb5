//! Shared helpers: the peer env, options, a fault proxy.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nfs3::ClientOptions;

/// The shared ganesha instance, from its env file.
#[derive(Debug, Clone)]
pub struct Peer {
    pub host: String,
    pub port: u16,
    pub mount_port: u16,
    pub export: String,
    pub dir: PathBuf,
    pub disk: String,
    pub sparse: String,
    pub sparse_bytes: u64,
}

/// The peer, or `None` (after printing why) when it is not running and not required.
pub fn peer() -> Option<Peer> {
    let Ok(port) = std::env::var("RV_NFS_PORT") else {
        if std::env::var("RACKVAULT_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("RV_NFS_PORT is not set but RACKVAULT_REQUIRE_PEERS=1: start tests/peers/start-nfs-ganesha.sh and source its env file");
        }
        eprintln!("skipped: nfs-ganesha not running (tests/peers/start-nfs-ganesha.sh)");
        return None;
    };
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} missing from the nfs-ganesha env"));
    let host = var("RV_NFS_HOST");
    assert!(host == "127.0.0.1" || host == "::1", "tests only talk to loopback, not {host}");
    Some(Peer {
        host,
        port: port.parse().expect("RV_NFS_PORT"),
        mount_port: var("RV_NFS_MOUNT_PORT").parse().expect("RV_NFS_MOUNT_PORT"),
        export: var("RV_NFS_EXPORT"),
        dir: PathBuf::from(var("RV_NFS_EXPORT_DIR")),
        disk: var("RV_NFS_DISK_FILE"),
        sparse: var("RV_NFS_SPARSE_FILE"),
        sparse_bytes: var("RV_NFS_SPARSE_BYTES").parse().expect("RV_NFS_SPARSE_BYTES"),
    })
}

impl Peer {
    /// Options with fixed ports.
    pub fn opts(&self) -> ClientOptions {
        ClientOptions {
            host: self.host.clone(),
            nfs_port: Some(self.port),
            mount_port: Some(self.mount_port),
            ..ClientOptions::default()
        }
    }
}

/// A directory inside the export, removed on drop.
pub struct ScratchDir {
    pub local: PathBuf,
    pub rel: String,
}

impl ScratchDir {
    pub fn new(p: &Peer, tag: &str) -> ScratchDir {
        let rel = format!("nfs3-test-{tag}-{}", std::process::id());
        let local = p.dir.join(&rel);
        let _ = std::fs::remove_dir_all(&local);
        std::fs::create_dir_all(&local).unwrap();
        ScratchDir { local, rel }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.local);
    }
}

/// Where the proxy forwards to.
#[derive(Debug, Clone)]
pub enum Upstream {
    Tcp(String),
    Unix(PathBuf),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(b),
            Stream::Unix(s) => s.write_all(b),
        }
    }
}

/// A TCP proxy on 127.0.0.1 that can cut every connection or stop forwarding replies.
pub struct Proxy {
    pub port: u16,
    live: Arc<Mutex<Vec<Stream>>>,
    pub accepted: Arc<AtomicUsize>,
    pub stall: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(up: Upstream) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let live: Arc<Mutex<Vec<Stream>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stall = Arc::new(AtomicBool::new(false));
        let (live2, acc2, stall2) = (live.clone(), accepted.clone(), stall.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                let s = match &up {
                    Upstream::Tcp(a) => TcpStream::connect(a).map(Stream::Tcp),
                    Upstream::Unix(p) => UnixStream::connect(p).map(Stream::Unix),
                };
                let Ok(s) = s else { continue }; // drop the client: it sees a reset
                acc2.fetch_add(1, Ordering::SeqCst);
                let c = Stream::Tcp(c);
                {
                    let mut v = live2.lock().unwrap();
                    v.push(c.try_clone().unwrap());
                    v.push(s.try_clone().unwrap());
                }
                pump(c.try_clone().unwrap(), s.try_clone().unwrap(), None);
                pump(s, c, Some(stall2.clone()));
            }
        });
        Proxy { port, live, accepted, stall }
    }

    /// Close every connection open through the proxy.
    pub fn cut(&self) {
        for s in self.live.lock().unwrap().drain(..) {
            s.shutdown();
        }
    }
}

fn pump(mut from: Stream, mut to: Stream, stall: Option<Arc<AtomicBool>>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if stall.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
                continue; // swallow replies: the client sees a server that never answers
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        from.shutdown();
        to.shutdown();
    });
}

/// Read a whole file with read_many in batches of `batch` bytes split into `piece`-byte
/// requests, hashing as it goes.
pub fn hash_over_nfs(
    c: &nfs3::Nfs3Client,
    fh: &nfs3::FileHandle,
    size: u64,
    batch: usize,
    piece: usize,
) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; batch];
    let mut off = 0u64;
    while off < size {
        let len = (batch as u64).min(size - off) as usize;
        let mut reqs: Vec<(u64, &mut [u8])> =
            buf[..len].chunks_mut(piece).enumerate().map(|(i, b)| (off + (i * piece) as u64, b)).collect();
        c.read_many(fh, &mut reqs).unwrap_or_else(|e| panic!("read_many at {off}: {e}"));
        h.update(&buf[..len]);
        off += len as u64;
    }
    h.finalize()
}

pub fn hash_local(p: &std::path::Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(p).unwrap()).unwrap();
    h.finalize()
}

pub const SHORT: Duration = Duration::from_millis(1500);
