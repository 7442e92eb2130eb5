//! Benchmark hook: read a whole LUN through the block layer and print bytes, seconds, MB/s.
//!
//!   cargo run --release -p iscsi --example iscsi_read -- PORTAL TARGET_IQN [LUN] [QUEUE_DEPTH] [IO_KIB] [--digests|--no-digests] [--threads=N]
//!
//! Digests are offered as `CRC32C,None` (the target chooses); `--digests` insists on CRC32C,
//! `--no-digests` offers only None.
//!
//! With `--threads=N` (default 1), N threads share the session and read interleaved batches
//! (thread t reads batches t, t+N, ...), as the backup engine does.
//!
//! CHAP credentials, when needed, come from RV_ISCSI_CHAP_USER / RV_ISCSI_CHAP_PASS.
//! Each batch given to `read_many` is queue depth × IO_KIB (default 32 × 1024 KiB); all its
//! READ(16)s are outstanding at once.

use std::sync::Arc;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let digests = if args.iter().any(|a| a == "--digests") {
        iscsi::DigestPolicy::Require
    } else if args.iter().any(|a| a == "--no-digests") {
        iscsi::DigestPolicy::Off
    } else {
        iscsi::DigestPolicy::Prefer
    };
    let threads: u64 =
        args.iter().find_map(|a| a.strip_prefix("--threads=")).and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    if pos.len() < 2 {
        eprintln!(
            "usage: iscsi_read PORTAL TARGET_IQN [LUN] [QUEUE_DEPTH] [IO_KIB] [--digests|--no-digests] [--threads=N]"
        );
        std::process::exit(2);
    }
    let lun: u64 = pos.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let qd: usize = pos.get(3).and_then(|s| s.parse().ok()).unwrap_or(32);
    let io_kib: usize = pos.get(4).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let mut cfg = iscsi::SessionConfig::new(pos[0].as_str(), pos[1].as_str());
    cfg.queue_depth = qd;
    cfg.header_digest = digests;
    cfg.data_digest = digests;
    if let (Ok(u), Ok(p)) = (std::env::var("RV_ISCSI_CHAP_USER"), std::env::var("RV_ISCSI_CHAP_PASS")) {
        cfg.chap = Some(iscsi::Chap::new(u, p));
    }
    let session = match iscsi::Session::login(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let dev = match scsi::BlockDevice::open(Arc::new(session.lun(lun))) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let size = dev.size_bytes();
    let io = (io_kib * 1024).min(dev.info().max_io_bytes as usize).max(dev.info().block_size as usize);
    let batch = io * qd;
    let start = Instant::now();
    std::thread::scope(|sc| {
        for t in 0..threads {
            let dev = &dev;
            sc.spawn(move || {
                let mut buf = vec![0u8; batch];
                let mut off = t * batch as u64;
                while off < size {
                    let n = (size - off).min(batch as u64) as usize;
                    let mut reqs: Vec<(u64, &mut [u8])> =
                        buf[..n].chunks_mut(io).enumerate().map(|(i, c)| (off + (i * io) as u64, c)).collect();
                    if let Err(e) = dev.read_many(&mut reqs) {
                        eprintln!("error: {e}");
                        std::process::exit(1);
                    }
                    off += threads * batch as u64;
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} bytes in {:.3} s: {:.1} MB/s (queue depth {qd}, {} KiB per READ, digests {}, {threads} threads)",
        size,
        secs,
        size as f64 / secs / 1e6,
        io / 1024,
        match session.negotiated().digests {
            iscsi::pdu::Digests { header: true, data: true } => "on",
            iscsi::pdu::Digests { header: false, data: false } => "off",
            _ => "header or data only",
        }
    );
    session.logout();
}
