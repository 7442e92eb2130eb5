//! Helpers shared by the integration tests: real files, real qemu-img / qemu-io, and a small
//! VHDX writer (`build`) for what qemu-img cannot make (differencing disks, 4 KiB logical
//! sectors, pending logs, hostile values).
#![allow(dead_code)]

pub mod build;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use blocksource::file::FileSource;
use blocksource::{BlockSource, ExtentKind, ReadRequest, SourceError};
use vhdx::{LocalBackingOpener, VhdxSource};

pub use blocksource::mem::MemSource;

pub use blocksource::mem::NoBacking;

/// Open a local VHDX file the way production does.
pub fn open(path: &Path) -> Result<VhdxSource, SourceError> {
    VhdxSource::open(Box::new(FileSource::open(path)?), &LocalBackingOpener)
}

pub fn open_mem(data: Vec<u8>) -> Result<VhdxSource, SourceError> {
    VhdxSource::open(Box::new(MemSource { data, name: "mem.vhdx".into() }), &NoBacking)
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

/// Run qemu-io on a VHDX with each of `cmds` as a `-c` command.
pub fn qemu_io(path: &Path, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.arg("-f").arg("vhdx");
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    c.arg(path);
    run(&mut c);
}

/// The guest-visible bytes of an image according to QEMU.
pub fn qemu_raw(path: &Path) -> Vec<u8> {
    let out = path.with_extension("qemu-raw");
    qemu_img(&["convert", "-O", "raw", path.to_str().unwrap(), out.to_str().unwrap()]);
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
            let o = *o as usize;
            assert!(b[..] == expected[o..o + b.len()], "mismatch in read of {} bytes at {o}", b.len());
        }
    }
}

/// Check the allocation map is a well-formed cover of the disk and that every Zero extent
/// really reads as zeros. Returns the bytes reported as Zero.
pub fn check_allocation(src: &dyn BlockSource, expected: &[u8]) -> u64 {
    let size = src.size();
    let ext = src.allocation(0, size).unwrap();
    let mut pos = 0;
    let mut zero = 0;
    for e in &ext {
        assert_eq!(e.offset, pos, "allocation map has a gap or overlap: {ext:?}");
        assert!(e.len > 0);
        pos = e.end();
        if e.kind == ExtentKind::Zero {
            assert!(
                expected[e.offset as usize..e.end() as usize].iter().all(|&b| b == 0),
                "extent {e:?} reported Zero but holds data"
            );
            zero += e.len;
        }
    }
    assert_eq!(pos, size, "allocation map does not cover the disk");
    // A sub-range is clipped and covered too.
    if size > 3 {
        let sub = src.allocation(1, size - 2).unwrap();
        assert_eq!(sub.first().unwrap().offset, 1);
        assert_eq!(sub.last().unwrap().end(), size - 1);
    }
    zero
}

/// Bytes of whole `block`-sized blocks of `data` that are entirely zero.
pub fn zero_block_bytes(data: &[u8], block: usize) -> u64 {
    data.chunks(block).filter(|c| c.iter().all(|&b| b == 0)).map(|c| c.len() as u64).sum()
}

pub fn put_u32(d: &mut [u8], at: usize, v: u32) {
    d[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u64(d: &mut [u8], at: usize, v: u64) {
    d[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn get_u32(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(d[at..at + 4].try_into().unwrap())
}

pub fn get_u64(d: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(d[at..at + 8].try_into().unwrap())
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
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
