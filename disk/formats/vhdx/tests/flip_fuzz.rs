//! A small deterministic fuzz loop: corrupt valid images at random (with and without fixing
//! the CRCs afterwards, so the parser gets past the checksums) and make sure opening, mapping
//! and reading them never panics, hangs or allocates wildly (errors are fine).

mod common;

use common::build::{Image, LogWrite, MIB};
use common::*;
use testkit::image::exercise;
use testkit::mutate::{checksummed_flips, Endian};

/// Windows worth hitting: headers, region tables, the metadata table and items, the BAT, the
/// first sector bitmap and the log.
fn windows(d: &[u8]) -> Vec<(usize, usize)> {
    let mut w = vec![(0, 64), (64 << 10, 96), (128 << 10, 96), (192 << 10, 96), (256 << 10, 96)];
    let (m, _) = region(d, META_GUID_PREFIX);
    w.push((m, 256));
    w.push((m + 65536, 128));
    let (b, _) = region(d, BAT_GUID_PREFIX);
    w.push((b, 256));
    w.push((1 << 20, 4096));
    w.retain(|&(o, l)| o + l <= d.len());
    w
}

fn fuzz(good: Vec<u8>, iterations: usize, seed: u64, name: &str) {
    let mutate = checksummed_flips(windows(&good), Endian::Little, fix_all_crcs);
    let tally = flip_loop(name, &good, seed, iterations, mutate, |d, rng, t| exercise(open_mem(d), rng, t));
    assert!(tally.opened > iterations / 10 && tally.read > iterations / 20, "{tally:?}");
}

fn qemu_made(opts: &str, seed: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("f.raw");
    let img = dir.path().join("f.vhdx");
    make_raw(&raw, 3 * MIB, &[(0, 300_000), (MIB, 64 << 10), (2 * MIB + 4096, 500_000)], seed);
    qemu_img(&["convert", "-f", "raw", "-O", "vhdx", "-o", opts, s(&raw), s(&img)]);
    std::fs::read(&img).unwrap()
}

#[test]
fn flips_dynamic() {
    fuzz(qemu_made("subformat=dynamic,block_size=1M", 1), 2500, 0x1234_5678, "dynamic");
}

#[test]
fn flips_fixed() {
    fuzz(qemu_made("subformat=fixed,block_size=1M", 2), 1500, 0x9abc_def1, "fixed");
}

/// A differencing image over nothing (parents are refused in memory) still exercises the
/// locator and bitmap parsing; use a plain image with a pending log for the replay path.
#[test]
fn flips_pending_log() {
    let mut img = Image::new(3 * MIB, MIB, 512);
    img.write(0, &vec![0x42u8; 300_000]);
    img.write(2 * MIB, &vec![0x43u8; 4096]);
    let mut f = img.finish();
    let bat = common::build::BAT_OFFSET;
    let sector = f[bat as usize..bat as usize + 4096].to_vec();
    img.log_guid = [0x5A; 16];
    img.write_headers(&mut f, 9);
    let e1 = common::build::log_entry(&img.log_guid, 7, 0, &[LogWrite::Data(bat, sector)], f.len() as u64);
    let e2 = common::build::log_entry(&img.log_guid, 8, 0, &[LogWrite::Zero(bat + 4096, 4096)], f.len() as u64);
    let at = (common::build::LOG_OFFSET) as usize;
    f[at..at + e1.len()].copy_from_slice(&e1);
    f[at + e1.len()..at + e1.len() + e2.len()].copy_from_slice(&e2);
    f[bat as usize..bat as usize + 4096].fill(0);
    assert_eq!(open_mem(f.clone()).unwrap().replayed_log_entries(), 2);
    fuzz(f, 1500, 0x2468_ace0, "pending log");
}

#[test]
fn flips_differencing() {
    let mut c = Image::new(3 * MIB, MIB, 512);
    c.parent = Some(vec![
        ("parent_linkage".into(), "{11111111-1111-1111-1111-111111111111}".into()),
        ("relative_path".into(), "p.vhdx".into()),
    ]);
    c.write(0, &[1u8; 8192]);
    let good = c.finish();
    // Every variant is refused (no parents in memory) unless the flips clear HasParent; this
    // only checks nothing panics.
    let win = windows(&good);
    let mutate = |d: &mut Vec<u8>, rng: &mut Rng| {
        let (o, l) = win[rng.below(win.len() as u64) as usize];
        let at = o + rng.below(l as u64) as usize;
        d[at] = rng.next() as u8;
        fix_all_crcs(d);
    };
    flip_loop("differencing", &good, 0x1357_9bdf, 1000, mutate, |d, rng, t| exercise(open_mem(d), rng, t));
}
