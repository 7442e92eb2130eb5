//! Helpers shared by the integration tests: real files and real qemu-img.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use blocksource::file::FileSource;
use blocksource::{BlockSource, ExtentKind, ReadRequest, SourceError};
use vhd::VhdSource;

pub use blocksource::mem::MemSource;

pub const MIB: u64 = 1 << 20;

/// Open a local VHD file the way production does.
pub fn open(path: &Path) -> Result<VhdSource, SourceError> {
    VhdSource::open(Box::new(FileSource::open(path)?))
}

pub fn open_mem(data: Vec<u8>) -> Result<VhdSource, SourceError> {
    VhdSource::open(Box::new(MemSource { data, name: "mem.vhd".into() }))
}

/// Whether qemu-img can be run; tests that need it print why they are skipped otherwise
/// (CI installs it).
pub fn have_qemu_img() -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: qemu-img is not installed (apt-get install qemu-utils)");
    }
    ok
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run qemu-img; panics with its output if it fails.
pub fn qemu_img(args: &[&str]) -> String {
    String::from_utf8(run(Command::new("qemu-img").args(args)).stdout).unwrap()
}

/// The guest-visible bytes of a VHD according to QEMU (`-f vpc`: QEMU does not probe fixed
/// VHDs, whose first sector is guest data).
pub fn qemu_raw(path: &Path) -> Vec<u8> {
    let out = path.with_extension("qemu-raw");
    qemu_img(&["convert", "-f", "vpc", "-O", "raw", s(path), s(&out)]);
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    data
}

/// Small deterministic PRNG (xorshift64*), so tests need no extra crates.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Write a raw file of `size` bytes with random data in `ranges` (offset, len) and zeros
/// elsewhere (as holes). Returns its bytes.
pub fn make_raw(path: &Path, size: u64, ranges: &[(u64, u64)], seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; size as usize];
    let mut rng = Rng(seed | 1);
    for &(o, l) in ranges {
        rng.fill(&mut data[o as usize..(o + l) as usize]);
    }
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for &(o, l) in ranges {
        f.write_all_at(&data[o as usize..(o + l) as usize], o).unwrap();
    }
    data
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

/// Read the whole disk in batches shaped like the ingest pipeline's (16 x 256 KiB).
pub fn read_all(src: &dyn BlockSource) -> Vec<u8> {
    let size = src.size() as usize;
    let mut out = vec![0u8; size];
    const REQ: usize = 256 << 10;
    for (bi, buf) in out.chunks_mut(16 * REQ).enumerate() {
        let base = (bi * 16 * REQ) as u64;
        let mut reqs: Vec<ReadRequest<'_>> = buf
            .chunks_mut(REQ)
            .enumerate()
            .map(|(i, b)| ReadRequest { offset: base + (i * REQ) as u64, buf: b })
            .collect();
        src.read_many(&mut reqs).unwrap_or_else(|e| panic!("read_many failed: {e}"));
    }
    out
}

/// Check random unaligned reads of many sizes, batched, against `expected`.
pub fn check_random_reads(src: &dyn BlockSource, expected: &[u8], seed: u64, rounds: usize) {
    let mut rng = Rng(seed | 1);
    let size = expected.len() as u64;
    for _ in 0..rounds {
        let n = 1 + rng.below(8) as usize;
        let mut bufs: Vec<(u64, Vec<u8>)> = (0..n)
            .map(|_| {
                let len = 1 + rng.below(3_000_000.min(size));
                let off = rng.below(size - len + 1);
                (off, vec![0xEEu8; len as usize])
            })
            .collect();
        let mut reqs: Vec<ReadRequest<'_>> =
            bufs.iter_mut().map(|(o, b)| ReadRequest { offset: *o, buf: b.as_mut_slice() }).collect();
        src.read_many(&mut reqs).unwrap();
        for (o, b) in &bufs {
            assert!(b[..] == expected[*o as usize..*o as usize + b.len()], "random read at {o} (+{}) differs", b.len());
        }
    }
}

/// Check the allocation map covers the disk exactly and that every byte reported Zero is
/// zero. Returns the number of bytes reported Zero.
pub fn check_allocation(src: &dyn BlockSource, expected: &[u8]) -> u64 {
    let map = src.allocation(0, src.size()).unwrap();
    let mut pos = 0;
    let mut zero = 0;
    for e in &map {
        assert_eq!(e.offset, pos, "allocation map has a gap or overlap: {map:?}");
        if e.kind == ExtentKind::Zero {
            zero += e.len;
            assert!(
                expected[e.offset as usize..e.end() as usize].iter().all(|&b| b == 0),
                "extent {e:?} reported Zero holds data"
            );
        }
        pos = e.end();
    }
    assert_eq!(pos, src.size(), "allocation map does not cover the disk");
    zero
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
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

pub fn put_u32(d: &mut [u8], at: usize, v: u32) {
    d[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

pub fn put_u64(d: &mut [u8], at: usize, v: u64) {
    d[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

pub fn get_u64(d: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(d[at..at + 8].try_into().unwrap())
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
