//! Helpers shared by the integration tests: real files, real qemu-img / qemu-io, and a small
//! VHDX writer (`build`) for what qemu-img cannot make (differencing disks, 4 KiB logical
//! sectors, pending logs, hostile values).
#![allow(dead_code, unused_imports)]

pub mod build;

use std::path::Path;

use blocksource::file::FileSource;
use blocksource::{BlockSource, SourceError};
use vhdx::{LocalBackingOpener, VhdxSource};

pub use blocksource::mem::{MemSource, NoBacking};
pub use testkit::bytes::le::{get_u32, get_u64, put_u32, put_u64};
pub use testkit::image::{check_allocation, read_all, refused, try_read_all};
pub use testkit::mutate::flip_loop;
pub use testkit::qemu::{qemu_img, s};
pub use testkit::raw::make_raw;
pub use testkit::Rng;

/// Open a local VHDX file the way production does.
pub fn open(path: &Path) -> Result<VhdxSource, SourceError> {
    VhdxSource::open(Box::new(FileSource::open(path)?), &LocalBackingOpener)
}

pub fn open_mem(data: Vec<u8>) -> Result<VhdxSource, SourceError> {
    VhdxSource::open(Box::new(MemSource { data, name: "mem.vhdx".into() }), &NoBacking)
}

/// Run qemu-io on a VHDX with each of `cmds` as a `-c` command.
pub fn qemu_io(path: &Path, cmds: &[&str]) {
    testkit::qemu::qemu_io("vhdx", path, cmds);
}

/// The guest-visible bytes of an image according to QEMU.
pub fn qemu_raw(path: &Path) -> Vec<u8> {
    testkit::qemu::qemu_raw(path, None)
}

/// Scattered ranges within a disk of `size` bytes: data, holes of whole blocks, and a run of
/// explicit zeros (random data that happens to be zero is vanishingly rare, so zero runs come
/// from the holes).
pub fn scattered(size: u64) -> Vec<(u64, u64)> {
    let mut v = vec![
        (0, 4096),                           // first sector area
        (70_000, 3_000),                     // unaligned, small
        (3 << 20, 256 << 10),                // aligned run
        ((5 << 20) - 1000, 5000),            // crosses a 1 MiB boundary
        (size / 2 + 512, 130_000),           // middle
        (size - 65536 * 3 - 512, 65536 * 3), // near the end
    ];
    v.retain(|&(o, l)| o + l <= size);
    v
}

/// Check random unaligned reads of up to 3 MB, batched, against `expected`.
pub fn check_random_reads(src: &dyn BlockSource, expected: &[u8], seed: u64, rounds: usize) {
    testkit::image::check_random_reads(src, expected, seed, rounds, 3_000_000);
}

/// Bytes of whole `block`-sized blocks of `data` that are entirely zero.
pub fn zero_block_bytes(data: &[u8], block: usize) -> u64 {
    data.chunks(block).filter(|c| c.iter().all(|&b| b == 0)).map(|c| c.len() as u64).sum()
}

/// Recompute the CRC-32C at `field` of the structure `d[start..start+len]`.
pub fn fix_crc(d: &mut [u8], start: usize, len: usize, field: usize) {
    d[start + field..start + field + 4].fill(0);
    let c = crc32c::crc32c(&d[start..start + len]);
    d[start + field..start + field + 4].copy_from_slice(&c.to_le_bytes());
}

/// Recompute the CRCs of both headers and both region tables of a whole image.
pub fn fix_all_crcs(d: &mut [u8]) {
    for h in [64 << 10, 128 << 10] {
        if d.len() >= h + 4096 {
            fix_crc(d, h, 4096, 4);
        }
    }
    for r in [192 << 10, 256 << 10] {
        if d.len() >= r + 65536 {
            fix_crc(d, r, 65536, 4);
        }
    }
}

/// (offset, length) of the region with the given first GUID bytes, from the first region table.
pub fn region(d: &[u8], guid_prefix: [u8; 4]) -> (usize, usize) {
    let t = 192 << 10;
    let n = get_u32(d, t + 8) as usize;
    for i in 0..n {
        let e = t + 16 + 32 * i;
        if d[e..e + 4] == guid_prefix {
            return (get_u64(d, e + 16) as usize, get_u32(d, e + 24) as usize);
        }
    }
    panic!("no such region");
}

pub const BAT_GUID_PREFIX: [u8; 4] = [0x66, 0x77, 0xc2, 0x2d];
pub const META_GUID_PREFIX: [u8; 4] = [0x06, 0xa2, 0x7c, 0x8b];
