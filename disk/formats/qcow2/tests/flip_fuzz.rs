//! A small deterministic fuzz loop: corrupt valid images at random and make sure opening,
//! mapping and reading them never panics, hangs or allocates wildly (errors are fine).

mod common;

use common::*;
use testkit::image::exercise;
use testkit::mutate::maybe_truncate;

const MIB: u64 = 1 << 20;

/// Header fields worth hitting directly (offset, width): random flips rarely land there.
const FIELDS: &[(usize, usize)] =
    &[(4, 4), (8, 8), (16, 4), (20, 4), (24, 8), (32, 4), (36, 4), (40, 8), (72, 8), (80, 8), (96, 4), (100, 4)];

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
    let mutate = |d: &mut Vec<u8>, rng: &mut Rng| {
        for _ in 0..1 + rng.below(6) {
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
        // Sometimes also truncate.
        maybe_truncate(d, 8, rng);
    };
    let name = format!("{opts:?}");
    let tally = flip_loop(&name, &good, seed, iterations, mutate, |d, rng, t| exercise(open_mem(d), rng, t));
    // Most flips land in data or padding; make sure enough images get past open and reads.
    assert!(tally.opened > iterations / 4 && tally.read > iterations / 8, "{tally:?}");
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
