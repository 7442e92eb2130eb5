//! A small deterministic fuzz loop: corrupt valid images at random (with and without fixing
//! the checksums afterwards, so the parser gets past them) and make sure opening, mapping and
//! reading them never panics, hangs or allocates wildly (errors are fine).

mod common;

use common::*;
use testkit::image::exercise;
use testkit::mutate::{checksummed_flips, Endian};

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
    let mutate = checksummed_flips(windows(&good), Endian::Big, fix_checksums);
    let tally = flip_loop(name, &good, seed, iterations, mutate, |d, rng, t| exercise(open_mem(d), rng, t));
    assert!(tally.opened > iterations / 10 && tally.read > iterations / 20, "{tally:?}");
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
