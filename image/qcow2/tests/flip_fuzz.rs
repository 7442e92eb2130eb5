//! A small deterministic fuzz loop: corrupt valid images at random and make sure opening,
//! mapping and reading them never panics, hangs or allocates wildly (errors are fine).

mod common;

use std::time::{Duration, Instant};

use blocksource::{BlockSource, ReadRequest};
use common::*;

const MIB: u64 = 1 << 20;

/// Header fields worth hitting directly (offset, width): random flips rarely land there.
const FIELDS: &[(usize, usize)] =
    &[(4, 4), (8, 8), (16, 4), (20, 4), (24, 8), (32, 4), (36, 4), (40, 8), (72, 8), (80, 8), (96, 4), (100, 4)];

/// Counts of what the corrupted images got through, to check the loop reaches the read path.
#[derive(Debug, Default)]
struct Stats {
    opened: usize,
    mapped: usize,
    read: usize,
}

fn exercise(data: Vec<u8>, rng: &mut Rng, stats: &mut Stats) {
    let Ok(src) = open_mem(data) else { return };
    stats.opened += 1;
    let size = src.size();
    stats.mapped += usize::from(src.allocation(0, size.min(1 << 30)).is_ok());
    // The first few MiB in pipeline-shaped batches, then a few random reads.
    let mut buf = vec![0u8; 4 * MIB as usize];
    let n = size.min(buf.len() as u64) as usize;
    let mut reqs: Vec<ReadRequest<'_>> = buf[..n]
        .chunks_mut(256 << 10)
        .enumerate()
        .map(|(i, b)| ReadRequest { offset: (i as u64) << 18, buf: b })
        .collect();
    stats.read += usize::from(src.read_many(&mut reqs).is_ok());
    for _ in 0..4 {
        if size == 0 {
            break;
        }
        let len = 1 + rng.below(size.min(200_000));
        let off = rng.below(size - len + 1);
        let _ = src.read_at(off, &mut buf[..len as usize]);
    }
}

fn fuzz(opts: &[&str], iterations: usize, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("f.raw");
    let img = dir.path().join("f.qcow2");
    make_raw(&raw, 3 * MIB, &[(0, 300_000), (MIB, 64 << 10), (2 * MIB + 4096, 500_000)], seed);
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    args.extend_from_slice(opts);
    args.extend_from_slice(&[s(&raw), s(&img)]);
    qemu_img(&args);
    let good = std::fs::read(&img).unwrap();
    let window = good.len().min(64 << 10) as u64;
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut stats = Stats::default();
    for _ in 0..iterations {
        let mut d = good.clone();
        let flips = 1 + rng.below(6);
        for _ in 0..flips {
            match rng.below(4) {
                0 => {
                    let (at, width) = FIELDS[rng.below(FIELDS.len() as u64) as usize];
                    let v = rng.next().to_be_bytes();
                    d[at..at + width].copy_from_slice(&v[..width]);
                }
                1 => {
                    let at = rng.below(window) as usize;
                    d[at] = rng.next() as u8;
                }
                _ => {
                    let at = rng.below(window) as usize;
                    d[at] ^= 1 << rng.below(8);
                }
            }
        }
        if rng.below(8) == 0 {
            // Sometimes also truncate.
            let len = rng.below(d.len() as u64 + 1) as usize;
            d.truncate(len);
        }
        exercise(d, &mut rng, &mut stats);
    }
    eprintln!("{opts:?}: {iterations} corrupted images: {stats:?}");
    // Most flips land in data or padding; make sure enough images get past open and reads.
    assert!(stats.opened > iterations / 4 && stats.read > iterations / 8, "{stats:?}");
    assert!(stats.opened < iterations, "no corruption was detected at all: {stats:?}");
    // A hang-like slowdown is a bug too.
    assert!(started.elapsed() < Duration::from_secs(120), "fuzz loop too slow: {:?}", started.elapsed());
}

#[test]
fn flips_plain_4k_clusters() {
    fuzz(&["-o", "cluster_size=4096"], 2500, 0x1234_5678);
}

#[test]
fn flips_plain_512_clusters_v2() {
    fuzz(&["-o", "cluster_size=512,compat=0.10"], 1500, 0x9abc_def1);
}

#[test]
fn flips_compressed_deflate() {
    fuzz(&["-c", "-o", "cluster_size=4096"], 1500, 0x2468_ace0);
}

#[test]
fn flips_compressed_zstd() {
    fuzz(&["-c", "-o", "cluster_size=4096,compression_type=zstd"], 1500, 0x1357_9bdf);
}
