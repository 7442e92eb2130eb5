//! A small deterministic fuzz loop: corrupt valid images at random (with and without fixing
//! the checksums afterwards, so the parser gets past them) and make sure opening, mapping and
//! reading them never panics, hangs or allocates wildly (errors are fine).

mod common;

use std::time::{Duration, Instant};

use blocksource::{BlockSource, ReadRequest};
use common::*;

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
    let mut buf = vec![0u8; 4 << 20];
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

/// Windows worth hitting: both footers, the dynamic header and the BAT.
fn windows(d: &[u8]) -> Vec<(usize, usize)> {
    let n = d.len();
    let mut w = vec![(0, 96), (n - 512, 96)];
    if d[..8] == *b"conectix" {
        let h = get_u64(d, 16) as usize;
        if h + 1024 <= n {
            w.push((h, 64));
            let t = get_u64(d, h + 16) as usize;
            if t < n {
                w.push((t, 64.min(n - t)));
            }
        }
    }
    w
}

fn fuzz(good: Vec<u8>, iterations: usize, seed: u64, name: &str) {
    let win = windows(&good);
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut stats = Stats::default();
    for _ in 0..iterations {
        let mut d = good.clone();
        for _ in 0..1 + rng.below(4) {
            let (o, l) = win[rng.below(win.len() as u64) as usize];
            let at = o + rng.below(l as u64) as usize;
            match rng.below(4) {
                0 => {
                    let v = rng.next().to_be_bytes();
                    let w = [1usize, 2, 4, 8][rng.below(4) as usize].min(d.len() - at);
                    d[at..at + w].copy_from_slice(&v[..w]);
                }
                1 => d[at] = rng.next() as u8,
                2 => d[at] ^= 1 << rng.below(8),
                _ => {
                    let at = rng.below(d.len() as u64) as usize;
                    d[at] ^= 1 << rng.below(8);
                }
            }
        }
        if rng.below(3) != 0 {
            fix_checksums(&mut d);
        }
        if rng.below(10) == 0 {
            let len = rng.below(d.len() as u64 + 1) as usize;
            d.truncate(len);
        }
        exercise(d, &mut rng, &mut stats);
    }
    eprintln!("{name}: {iterations} corrupted images: {stats:?}");
    assert!(stats.opened > iterations / 10 && stats.read > iterations / 20, "{stats:?}");
    assert!(stats.opened < iterations, "no corruption was detected at all: {stats:?}");
    assert!(started.elapsed() < Duration::from_secs(120), "fuzz loop too slow: {:?}", started.elapsed());
}

#[test]
fn corrupted_dynamic_vhds_never_panic() {
    if !have_qemu_img() {
        return;
    }
    fuzz(qemu_made("dynamic", 6 * MIB, 1), 2500, 0x1234_5678, "dynamic");
}

#[test]
fn corrupted_fixed_vhds_never_panic() {
    if !have_qemu_img() {
        return;
    }
    fuzz(qemu_made("fixed", 3 * MIB, 2), 1500, 0x9abc_def1, "fixed");
}
