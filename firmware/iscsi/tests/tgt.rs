//! Integration tests against tgt (tests/peers/start-tgt-disk.sh) on loopback.
//!
//! The shared instance's variables come from the process environment (`set -a; source
//! /tmp/rackvault-peers/tgt-disk/env`). Missing: skipped, or a failure when
//! RACKVAULT_REQUIRE_PEERS=1. Only the private tgtd (own dir, port 3271, control socket 41)
//! is written to, stopped and restarted; the shared LUNs are only read.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command as Proc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iscsi::{Chap, DigestPolicy, IscsiError, Session, SessionConfig};
use scsi::BlockDevice;

struct Env {
    portal: String,
    iqn: String,
    chap_iqn: String,
    mutual_iqn: String,
    thin_iqn: String,
    /// A target that offers no digests.
    nodigests_iqn: String,
    /// A target whose ACL allows only `acl_initiator`.
    acl_iqn: String,
    acl_initiator: String,
    chap_user: String,
    chap_pass: String,
    mutual_user: String,
    mutual_pass: String,
    img: PathBuf,
    thin_img: PathBuf,
    thin_layout: PathBuf,
    size: u64,
}

fn env() -> Option<Env> {
    let get = |k: &str| std::env::var(k).ok();
    let e = (|| {
        Some(Env {
            portal: get("RV_TGT_DISK_PORTAL")?,
            iqn: get("RV_TGT_DISK_IQN")?,
            chap_iqn: get("RV_TGT_DISK_CHAP_IQN")?,
            mutual_iqn: get("RV_TGT_DISK_MUTUAL_IQN")?,
            thin_iqn: get("RV_TGT_DISK_THIN_IQN")?,
            nodigests_iqn: get("RV_TGT_DISK_NODIGESTS_IQN")?,
            acl_iqn: get("RV_TGT_DISK_ACL_IQN")?,
            acl_initiator: get("RV_TGT_DISK_ACL_INITIATOR")?,
            chap_user: get("RV_TGT_DISK_CHAP_USER")?,
            chap_pass: get("RV_TGT_DISK_CHAP_PASS")?,
            mutual_user: get("RV_TGT_DISK_MUTUAL_USER")?,
            mutual_pass: get("RV_TGT_DISK_MUTUAL_PASS")?,
            img: get("RV_TGT_DISK_IMG")?.into(),
            thin_img: get("RV_TGT_DISK_THIN_IMG")?.into(),
            thin_layout: get("RV_TGT_DISK_THIN_LAYOUT")?.into(),
            size: get("RV_TGT_DISK_SIZE_BYTES")?.parse().ok()?,
        })
    })();
    if e.is_none() {
        if std::env::var("RACKVAULT_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("RV_TGT_DISK_* variables missing but RACKVAULT_REQUIRE_PEERS=1: start tests/peers/start-tgt-disk.sh and source its env file");
        }
        eprintln!("skipped: tgt not running (tests/peers/start-tgt-disk.sh)");
    }
    e
}

fn cfg(portal: &str, iqn: &str) -> SessionConfig {
    let mut c = SessionConfig::new(portal, iqn);
    c.io_timeout = Duration::from_secs(10);
    c.reconnect_deadline = Duration::from_secs(30);
    c.nop_interval = Duration::from_secs(2);
    c
}

fn open(c: SessionConfig) -> (Arc<Session>, BlockDevice) {
    let s = Session::login(c).unwrap_or_else(|e| panic!("login: {e}"));
    let d = BlockDevice::open(Arc::new(s.lun(1))).unwrap_or_else(|e| panic!("open: {e}"));
    (s, d)
}

/// Reads `[0, len)` with batches of `qd` 1 MiB requests; returns the bytes.
fn read_all(dev: &BlockDevice, len: u64, qd: usize) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    let io = 1 << 20;
    for (b, chunk) in out.chunks_mut(io * qd).enumerate() {
        let base = (b * io * qd) as u64;
        let mut reqs: Vec<(u64, &mut [u8])> =
            chunk.chunks_mut(io).enumerate().map(|(i, c)| (base + (i * io) as u64, c)).collect();
        dev.read_many(&mut reqs).unwrap_or_else(|e| panic!("read_many: {e}"));
    }
    out
}

fn same(a: &[u8], b: &[u8]) {
    assert_eq!(a.len(), b.len());
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!("data differs at byte {i}");
    }
}

#[test]
fn discovery_lists_all_targets() {
    let Some(e) = env() else { return };
    let t = iscsi::discover(&e.portal, iscsi::DEFAULT_INITIATOR, None).unwrap();
    let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
    for iqn in [&e.iqn, &e.chap_iqn, &e.mutual_iqn, &e.thin_iqn, &e.nodigests_iqn] {
        assert!(names.contains(&iqn.as_str()), "{iqn} missing from {names:?}");
    }
    assert!(t.iter().all(|t| !t.addresses.is_empty()));
}

#[test]
fn login_variants_inquiry_and_capacity() {
    let Some(e) = env() else { return };
    let chap = Chap::new(e.chap_user.clone(), e.chap_pass.clone());
    let mutual = Chap::new(e.mutual_user.clone(), e.mutual_pass.clone());
    for digests in [DigestPolicy::Off] {
        for (iqn, c, m) in [
            (&e.iqn, None, None),
            (&e.chap_iqn, Some(chap.clone()), None),
            (&e.mutual_iqn, Some(chap.clone()), Some(mutual.clone())),
        ] {
            let mut c2 = cfg(&e.portal, iqn);
            c2.chap = c;
            c2.mutual_chap = m;
            c2.header_digest = digests;
            c2.data_digest = digests;
            let (s, d) = open(c2);
            assert!(!s.negotiated().digests.header && !s.negotiated().digests.data);
            assert_eq!(d.size_bytes(), e.size);
            assert_eq!(d.info().vendor, "RVTEST");
            assert_eq!(d.info().block_size, 512);
            let mut a = vec![0u8; 65536];
            d.read_at(1 << 20, &mut a).unwrap();
            let mut f = std::fs::File::open(&e.img).unwrap();
            let mut b = vec![0u8; 65536];
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(1 << 20)).unwrap();
            f.read_exact(&mut b).unwrap();
            same(&a, &b);
            assert_eq!(s.report_luns().unwrap().iter().filter(|&&l| l == 1).count(), 1);
            s.logout();
        }
    }
    // tgt decides digests per target (default None); insisting on CRC32C either gets it or is
    // refused with a clear message. Digest logins are tested against the private tgtd below.
    let mut c = cfg(&e.portal, &e.iqn);
    c.header_digest = DigestPolicy::Require;
    match Session::login(c) {
        Ok(s) => assert!(s.negotiated().digests.header),
        Err(err) => assert!(err.to_string().contains("HeaderDigest") && err.to_string().contains("CRC32C"), "{err}"),
    }
    // IPv6 portal form, when tgt listens there.
    let port = e.portal.rsplit(':').next().unwrap();
    if TcpStream::connect(format!("[::1]:{port}")).is_ok() {
        let (s, d) = open(cfg(&format!("[::1]:{port}"), &e.iqn));
        assert_eq!(d.size_bytes(), e.size);
        s.logout();
    }
}

#[test]
fn wrong_credentials_are_explained() {
    let Some(e) = env() else { return };
    let mut c = cfg(&e.portal, &e.chap_iqn);
    c.chap = Some(Chap::new(e.chap_user.clone(), "WrongSecret999"));
    let err = Session::login(c).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, IscsiError::LoginFailed { status_class: 2, status_detail: 1, .. }), "{msg}");
    assert!(msg.contains("wrong CHAP user or secret"), "{msg}");
    assert!(!msg.contains("WrongSecret999"));

    let mut c = cfg(&e.portal, &e.mutual_iqn);
    c.chap = Some(Chap::new(e.chap_user.clone(), e.chap_pass.clone()));
    c.mutual_chap = Some(Chap::new(e.mutual_user.clone(), "NotTheTargetSecret"));
    let err = Session::login(c).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, IscsiError::MutualAuthFailed { .. }), "{msg}");
    assert!(msg.contains("possible impostor"), "{msg}");
    assert!(!msg.contains("NotTheTargetSecret") && !msg.contains(&e.chap_pass));

    let err = Session::login(cfg(&e.portal, "iqn.2024-01.test.rackvault:nosuch")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("target not found") && msg.contains(&e.iqn), "{msg}");

    let err = Session::login(cfg("127.0.0.1:1", &e.iqn)).unwrap_err();
    assert!(err.to_string().contains("is the target running?"), "{err}");
}

#[test]
fn read_whole_lun_matches_backing_file() {
    let Some(e) = env() else { return };
    let mut c = cfg(&e.portal, &e.iqn);
    c.queue_depth = 32;
    let (s, d) = open(c);
    let t = Instant::now();
    let got = read_all(&d, e.size, 64);
    eprintln!("read {} MiB in {:?}", e.size >> 20, t.elapsed());
    same(&got, &std::fs::read(&e.img).unwrap());
    s.logout();
}

#[test]
fn default_login_to_a_target_offering_crc32c_none_turns_digests_on_and_reads_the_disk_image() {
    let Some(e) = env() else { return };
    let (s, d) = open(cfg(&e.portal, &e.iqn));
    // We offer CRC32C,None and tgt takes the first value it allows.
    let neg = s.negotiated().digests;
    assert!(neg.header && neg.data, "{neg:?}");
    same(&read_all(&d, e.size, 16), &std::fs::read(&e.img).unwrap());
    s.logout();
    // header_digest=none / data_digest=none still get a session without digests.
    let mut c = cfg(&e.portal, &e.iqn);
    c.header_digest = DigestPolicy::Off;
    c.data_digest = DigestPolicy::Off;
    let (s, d) = open(c);
    assert!(!s.negotiated().digests.header && !s.negotiated().digests.data);
    let mut a = vec![0u8; 1 << 20];
    d.read_at(5 << 20, &mut a).unwrap();
    same(&a, &std::fs::read(&e.img).unwrap()[5 << 20..6 << 20]);
    s.logout();
}

#[test]
fn default_login_to_a_target_without_digests_gets_none_and_reads_the_disk_image() {
    let Some(e) = env() else { return };
    let (s, d) = open(cfg(&e.portal, &e.nodigests_iqn));
    let neg = s.negotiated().digests;
    assert!(!neg.header && !neg.data, "{neg:?}");
    same(&read_all(&d, e.size, 16), &std::fs::read(&e.img).unwrap());
    s.logout();
}

#[test]
fn a_target_whose_acl_leaves_us_out_names_our_initiator_name_and_how_to_set_it() {
    let Some(e) = env() else { return };
    let err = Session::login(cfg(&e.portal, &e.acl_iqn)).unwrap_err();
    let msg = err.to_string();
    // tgt answers an initiator its ACL leaves out with 0x0203, "not found".
    assert!(matches!(err, IscsiError::LoginFailed { status_class: 2, status_detail: 3, .. }), "{msg}");
    assert!(msg.contains(&e.acl_iqn) && msg.contains("not found or not allowed"), "{msg}");
    assert!(msg.contains(&format!("ACL allows our initiator name {}", iscsi::DEFAULT_INITIATOR)), "{msg}");
    assert!(msg.contains("initiator_name="), "{msg}");
    // With the initiator name the ACL allows, the same target logs in and reads.
    let mut c = cfg(&e.portal, &e.acl_iqn);
    c.initiator = e.acl_initiator.clone();
    let (s, d) = open(c);
    let mut a = vec![0u8; 65536];
    d.read_at(0, &mut a).unwrap();
    same(&a, &std::fs::read(&e.img).unwrap()[..65536]);
    s.logout();
}

#[test]
fn thin_lun_lba_status_matches_layout() {
    let Some(e) = env() else { return };
    let (s, d) = open(cfg(&e.portal, &e.thin_iqn));
    assert!(d.info().lbpme, "thin LUN should report LBPME");
    let bs = d.info().block_size as u64;
    let ext = d.lba_status(0, d.info().blocks).unwrap();
    let mapped: Vec<(u64, u64)> = ext.iter().filter(|x| x.mapped).map(|x| (x.lba * bs, x.blocks * bs)).collect();
    let layout: Vec<(u64, u64)> = std::fs::read_to_string(&e.thin_layout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace().map(|x| x.parse::<u64>().unwrap());
            Some((it.next()?, it.next()?))
        })
        .collect();
    // Every data range of the layout is inside a mapped extent, and mapped extents cover no
    // more than the layout rounded to the file system's allocation (64 KiB slack per edge).
    for (off, len) in &layout {
        assert!(mapped.iter().any(|(mo, ml)| mo <= off && off + len <= mo + ml), "{off}+{len} not mapped: {mapped:?}");
    }
    for (mo, ml) in &mapped {
        assert!(
            layout.iter().any(|(o, l)| *mo + 65536 >= *o && mo + ml <= o + l + 65536),
            "mapped {mo}+{ml} is not in the layout {layout:?}"
        );
    }
    // Read only the mapped ranges; they match the backing file, and the rest of the file is zero.
    let img = std::fs::read(&e.thin_img).unwrap();
    for (mo, ml) in &mapped {
        let mut buf = vec![0u8; *ml as usize];
        d.read_at(*mo, &mut buf).unwrap();
        same(&buf, &img[*mo as usize..(*mo + *ml) as usize]);
    }
    let mut pos = 0u64;
    for (mo, ml) in mapped.iter().chain(std::iter::once(&(img.len() as u64, 0))) {
        assert!(img[pos as usize..*mo as usize].iter().all(|&b| b == 0), "unmapped range {pos}..{mo} holds data");
        pos = mo + ml;
    }
    s.logout();
}

/// A TCP proxy that can cut every connection through it.
struct FaultProxy {
    addr: String,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl FaultProxy {
    fn start(upstream: &str) -> FaultProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up, c2) = (upstream.to_string(), conns.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(a) = s else { break };
                let Ok(b) = TcpStream::connect(&up) else { continue };
                c2.lock().unwrap().extend([a.try_clone().unwrap(), b.try_clone().unwrap()]);
                for (mut x, mut y) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 256 * 1024];
                        loop {
                            match x.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if y.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = x.shutdown(Shutdown::Both);
                        let _ = y.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        FaultProxy { addr, conns }
    }

    fn cut(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

#[test]
fn read_survives_connection_cuts() {
    let Some(e) = env() else { return };
    let proxy = FaultProxy::start(&e.portal);
    let (s, d) = open(cfg(&proxy.addr, &e.iqn));
    let d = Arc::new(d);
    let cuts = Arc::new(Mutex::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (p, c2, dn) = (Arc::new(proxy), cuts.clone(), done.clone());
    let p2 = p.clone();
    let cutter = std::thread::spawn(move || {
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(150));
            if dn.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            p2.cut();
            *c2.lock().unwrap() += 1;
        }
    });
    // One big batch (all 256 commands given to read_many at once) so the cuts land mid-batch.
    let mut got = vec![0u8; e.size as usize];
    {
        let mut reqs: Vec<(u64, &mut [u8])> =
            got.chunks_mut(1 << 20).enumerate().map(|(i, c)| ((i as u64) << 20, c)).collect();
        d.read_many(&mut reqs).unwrap_or_else(|e| panic!("read across cuts: {e}"));
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    cutter.join().unwrap();
    same(&got, &std::fs::read(&e.img).unwrap());
    let n = *cuts.lock().unwrap();
    eprintln!("{n} cuts, {} reconnects", s.reconnects());
    assert!(n == 0 || s.reconnects() >= 1);
    s.logout();
}

// ---- private tgtd: writes and restarts ----

struct Private {
    dir: String,
    port: u16,
    ctl: u16,
    scripts: PathBuf,
}

impl Private {
    fn run(&self, script: &str) -> bool {
        let st = Proc::new("bash")
            .arg(self.scripts.join(script))
            .env("RV_TGT_DISK_DIR", &self.dir)
            .env("RV_TGT_DISK_PORT", self.port.to_string())
            .env("RV_TGT_DISK_CTL", self.ctl.to_string())
            .env("RV_TGT_DISK_SIZE_MB", "64")
            .env("RV_TGT_THIN_SIZE_MB", "512")
            .stdout(std::process::Stdio::null())
            .status();
        matches!(st, Ok(s) if s.success())
    }
    fn portal(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        self.run("stop-tgt-disk.sh");
    }
}

#[test]
fn private_target_write_restart_and_deadline() {
    let Some(e) = env() else { return };
    let scripts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/peers");
    let p = Private { dir: "/tmp/rackvault-peers/tgt-disk-iscsi-test".into(), port: 3271, ctl: 41, scripts };
    if !p.run("start-tgt-disk.sh") {
        if std::env::var("RACKVAULT_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("could not start a private tgtd (port 3271, ctl 41)");
        }
        eprintln!("skipped: cannot start a private tgtd");
        return;
    }
    let _ = e;
    let size = 64u64 << 20;
    let mut c = cfg(&p.portal(), "iqn.2024-01.test.rackvault:disk");
    c.reconnect_deadline = Duration::from_secs(40);
    c.io_timeout = Duration::from_secs(5);
    c.nop_interval = Duration::from_millis(500);
    let (s, d) = open(c.clone());

    // WRITE(16) round trip, with immediate data, unsolicited and R2T-driven Data-Out.
    let pattern: Vec<u8> = (0..(3 << 20) + 4096).map(|i: usize| (i * 31 % 253) as u8).collect();
    d.write_at(1 << 20, &pattern).unwrap();
    let mut back = vec![0u8; pattern.len()];
    d.read_at(1 << 20, &mut back).unwrap();
    same(&back, &pattern);

    // Header and data digests (CRC32C), forced on the private CHAP and mutual targets.
    let img = std::fs::read(format!("{}/disk0.img", p.dir)).unwrap();
    for tid in ["2", "3"] {
        for key in ["HeaderDigest", "DataDigest"] {
            let ok = Proc::new("tgtadm")
                .args([
                    "-C", "41", "--lld", "iscsi", "--op", "update", "--mode", "target", "--tid", tid, "-n", key, "-v",
                    "CRC32C",
                ])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "tgtadm could not enable {key} on tid {tid}");
        }
    }
    let chap = Chap::new("backupuser", "Secret12345678");
    for (iqn, m) in [("chapdisk", None), ("mutual", Some(Chap::new("tgtout", "OutSecret123456")))] {
        let mut dc = cfg(&p.portal(), &format!("iqn.2024-01.test.rackvault:{iqn}"));
        dc.chap = Some(chap.clone());
        dc.mutual_chap = m;
        dc.header_digest = DigestPolicy::Require;
        dc.data_digest = DigestPolicy::Require;
        let (ds, dd) = open(dc);
        assert!(ds.negotiated().digests.header && ds.negotiated().digests.data);
        same(&read_all(&dd, size, 16), &img);
        let mut back = vec![0u8; pattern.len()];
        dd.read_at(1 << 20, &mut back).unwrap();
        same(&back, &pattern);
        ds.logout();
    }

    // Restart mid-read: reads keep completing (with correct data) across the restart.
    let d = Arc::new(d);
    let d2 = d.clone();
    let restarted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r2 = restarted.clone();
    let img2 = img.clone();
    let reader = std::thread::spawn(move || {
        let mut passes = 0;
        loop {
            let last = r2.load(std::sync::atomic::Ordering::SeqCst);
            same(&read_all(&d2, size, 8), &img2);
            passes += 1;
            if last {
                return passes;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(p.run("stop-tgt-disk.sh"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(p.run("start-tgt-disk.sh"));
    restarted.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(reader.join().unwrap() >= 2);
    assert!(s.reconnects() >= 1, "the session should have reconnected");

    // Target gone past the deadline: ConnectionLost with a clear message.
    let mut c = c;
    c.reconnect_deadline = Duration::from_secs(3);
    let (s2, d3) = open(c);
    assert!(p.run("stop-tgt-disk.sh"));
    let t = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let err = d3.read_at(0, &mut buf).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("lost and not restored"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(30));
    match &err {
        scsi::ScsiError::Transport(t) => assert_eq!(t.kind, scsi::TransportErrorKind::ConnectionLost),
        other => panic!("{other}"),
    }
    drop(s2);
    drop(s);
}
