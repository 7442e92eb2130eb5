//! The VHD tests' own helpers (opening, checksums, qemu-made images), with testkit's shared
//! ones re-exported: real files and real qemu-img.
#![allow(dead_code, unused_imports)]

use std::path::Path;

use blocksource::file::FileSource;
use blocksource::{BlockSource, SourceError};
use vhd::VhdSource;

pub use blocksource::mem::MemSource;
pub use testkit::bytes::be::{get_u64, put_u32, put_u64};
pub use testkit::image::{check_allocation, read_all, refused, try_read_all};
pub use testkit::mutate::flip_loop;
pub use testkit::qemu::{have_qemu_img, qemu_img, s};
pub use testkit::raw::make_raw;
pub use testkit::Rng;

pub const MIB: u64 = 1 << 20;

/// Open a local VHD file the way production does.
pub fn open(path: &Path) -> Result<VhdSource, SourceError> {
    VhdSource::open(Box::new(FileSource::open(path)?))
}

pub fn open_mem(data: Vec<u8>) -> Result<VhdSource, SourceError> {
    VhdSource::open(Box::new(MemSource { data, name: "mem.vhd".into() }))
}

/// The guest-visible bytes of a VHD according to QEMU (`-f vpc`: QEMU does not probe fixed
/// VHDs, whose first sector is guest data).
pub fn qemu_raw(path: &Path) -> Vec<u8> {
    testkit::qemu::qemu_raw(path, Some("vpc"))
}

/// Scattered ranges within a disk of `size` bytes: data, whole-block holes (2 MiB blocks)
/// and unaligned pieces.
pub fn scattered(size: u64) -> Vec<(u64, u64)> {
    let mut v = vec![
        (0, 4096),                           // first sector area
        (70_000, 3_000),                     // unaligned, small
        (3 * MIB, 256 << 10),                // aligned run
        ((6 * MIB) - 1000, 5000),            // crosses a 2 MiB block boundary
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

/// One's complement byte sum, skipping the checksum field at `skip`.
fn sum(b: &[u8], skip: usize) -> u32 {
    let mut s = 0u32;
    for (i, &v) in b.iter().enumerate() {
        if !(skip..skip + 4).contains(&i) {
            s = s.wrapping_add(u32::from(v));
        }
    }
    !s
}

/// Recompute the checksums of both footer copies and of the dynamic header (if the footers
/// point at one inside the file), so a patched image gets past them.
pub fn fix_checksums(d: &mut [u8]) {
    let n = d.len();
    let mut dyn_at = None;
    for at in [0, n.saturating_sub(512)] {
        if n >= 512 && d[at..at + 8] == *b"conectix" {
            let c = sum(&d[at..at + 512], 64);
            d[at + 64..at + 68].copy_from_slice(&c.to_be_bytes());
            let off = u64::from_be_bytes(d[at + 16..at + 24].try_into().unwrap());
            if off.checked_add(1024).is_some_and(|e| e <= n as u64) {
                dyn_at = Some(off as usize);
            }
        }
    }
    if let Some(h) = dyn_at {
        if d[h..h + 8] == *b"cxsparse" {
            let c = sum(&d[h..h + 1024], 36);
            d[h + 36..h + 40].copy_from_slice(&c.to_be_bytes());
        }
    }
}

/// A VHD made by qemu-img from a raw file with data in a few places.
pub fn qemu_made(sub: &str, size: u64, seed: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("f.raw");
    let img = dir.path().join("f.vhd");
    make_raw(&raw, size, &[(0, 300_000), (MIB, 64 << 10), (size / 2 + 4096, 500_000)], seed);
    qemu_img(&["convert", "-f", "raw", "-O", "vpc", "-o", &format!("subformat={sub}"), s(&raw), s(&img)]);
    std::fs::read(&img).unwrap()
}
