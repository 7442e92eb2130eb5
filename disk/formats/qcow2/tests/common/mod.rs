//! Helpers shared by the integration tests: real files, real qemu-img / qemu-io.
#![allow(dead_code, unused_imports)]

use std::path::Path;

use blocksource::file::FileSource;
use blocksource::{BlockSource, ExtentKind, SourceError};
use qcow2::{LocalBackingOpener, Qcow2Source};

pub use blocksource::mem::{MemSource, NoBacking};
pub use testkit::bytes::be::{get_u64, put_u32, put_u64};
pub use testkit::image::{check_extents, read_all, refused, try_read_all};
pub use testkit::mutate::flip_loop;
pub use testkit::qemu::{have_qemu_io, qemu_img, s};
pub use testkit::Rng;

/// Open a local qcow2 file the way production does: `FileSource` (io_uring reads) for the
/// container and `LocalBackingOpener` for the backing chain.
pub fn open(path: &Path) -> Result<Qcow2Source, SourceError> {
    Qcow2Source::open(Box::new(FileSource::open(path)?), &LocalBackingOpener)
}

pub fn open_mem(data: Vec<u8>) -> Result<Qcow2Source, SourceError> {
    Qcow2Source::open(Box::new(MemSource { data, name: "mem.qcow2".into() }), &NoBacking)
}

/// Run qemu-io on a qcow2 with each of `cmds` as a `-c` command.
pub fn qemu_io(path: &Path, cmds: &[&str]) {
    testkit::qemu::qemu_io("qcow2", path, cmds);
}

/// The guest-visible bytes of an image according to QEMU.
pub fn qemu_raw(path: &Path) -> Vec<u8> {
    testkit::qemu::qemu_raw(path, None)
}

/// Write a raw file of `size` bytes with random data in `ranges` (offset, len) and zeros
/// elsewhere (as holes); also half of each range is made compressible text. Returns its bytes.
pub fn make_raw(path: &Path, size: u64, ranges: &[(u64, u64)], seed: u64) -> Vec<u8> {
    let data = testkit::raw::contents(size, ranges, seed, Some(b"rackvault qcow2 test "));
    testkit::raw::write_sparse(path, &data, ranges, &[]);
    data
}

/// Scattered ranges used by several tests, within a disk of `size` bytes.
pub fn scattered(size: u64) -> Vec<(u64, u64)> {
    let mut v = vec![
        (0, 4096),                           // first sector area
        (70_000, 3_000),                     // unaligned, inside one 64K cluster
        (1 << 20, 256 << 10),                // aligned run
        ((3 << 20) - 1000, 5000),            // crosses a 1 MiB boundary
        (size / 2 + 512, 130_000),           // middle, spans clusters
        (size - 65536 * 3 - 512, 65536 * 3), // near the end
    ];
    v.retain(|&(o, l)| o + l <= size);
    v
}

/// Check random unaligned reads of up to 300 kB, batched, against `expected`.
pub fn check_random_reads(src: &dyn BlockSource, expected: &[u8], seed: u64, rounds: usize) {
    testkit::image::check_random_reads(src, expected, seed, rounds, 300_000);
}

/// Per-512-byte-sector "has data" flags according to `qemu-img map`.
pub fn qemu_data_map(path: &Path, size: u64) -> Vec<bool> {
    let json = qemu_img(&["map", "--output=json", path.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut map = vec![false; size.div_ceil(512) as usize];
    for e in v.as_array().unwrap() {
        let start = e["start"].as_u64().unwrap();
        let len = e["length"].as_u64().unwrap();
        if e["data"].as_bool().unwrap() {
            for s in start / 512..(start + len).div_ceil(512) {
                map[s as usize] = true;
            }
        }
    }
    map
}

/// Per-sector "has data" flags of our allocation map, after checking it is a well-formed
/// cover of the disk and that every Zero extent really reads as zeros.
pub fn our_data_map(src: &dyn BlockSource, expected: &[u8]) -> Vec<bool> {
    let mut map = vec![false; src.size().div_ceil(512) as usize];
    for e in check_extents(src, expected).iter().filter(|e| e.kind == ExtentKind::Data) {
        for s in e.offset / 512..e.end().div_ceil(512) {
            map[s as usize] = true;
        }
    }
    map
}

/// Our allocation map must agree with `qemu-img map` about data vs zero.
pub fn assert_alloc_matches_qemu(src: &dyn BlockSource, path: &Path, expected: &[u8]) {
    let ours = our_data_map(src, expected);
    let theirs = qemu_data_map(path, src.size());
    if let Some(i) = (0..ours.len()).find(|&i| ours[i] != theirs[i]) {
        panic!(
            "allocation differs from qemu-img map at sector {i} (byte {}): ours data={} qemu data={}",
            i * 512,
            ours[i],
            theirs[i]
        );
    }
}

/// Bytes of the file at `path`, with `f` applied.
pub fn patched(path: &Path, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut d = std::fs::read(path).unwrap();
    f(&mut d);
    d
}
