//! Helpers shared by the integration tests: real files, real qemu-img / qemu-io.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use blocksource::file::FileSource;
use blocksource::{BlockSource, ExtentKind, ReadRequest, SourceError};
use qcow2::{LocalBackingOpener, Qcow2Source};

pub use blocksource::mem::MemSource;

pub use blocksource::mem::NoBacking;

/// Open a local qcow2 file the way production does: `FileSource` (io_uring reads) for the
/// container and `LocalBackingOpener` for the backing chain.
pub fn open(path: &Path) -> Result<Qcow2Source, SourceError> {
    Qcow2Source::open(Box::new(FileSource::open(path)?), &LocalBackingOpener)
}

pub fn open_mem(data: Vec<u8>) -> Result<Qcow2Source, SourceError> {
    Qcow2Source::open(Box::new(MemSource { data, name: "mem.qcow2".into() }), &NoBacking)
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

/// Run qemu-io with each of `cmds` as a `-c` command.
pub fn qemu_io(path: &Path, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.arg("-f").arg("qcow2");
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    c.arg(path);
    run(&mut c);
}

pub fn have_qemu_io() -> bool {
    Command::new("qemu-io").arg("--version").output().is_ok_and(|o| o.status.success())
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
/// elsewhere (as holes); also half of each range is made compressible text. Returns its bytes.
pub fn make_raw(path: &Path, size: u64, ranges: &[(u64, u64)], seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; size as usize];
    let mut rng = Rng(seed | 1);
    for &(o, l) in ranges {
        let piece = &mut data[o as usize..(o + l) as usize];
        rng.fill(piece);
        // Make the first half compressible so `convert -c` really compresses something.
        let half = piece.len() / 2;
        for (i, b) in piece[..half].iter_mut().enumerate() {
            *b = b"rackvault qcow2 test "[i % 21];
        }
    }
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for &(o, l) in ranges {
        f.write_all_at(&data[o as usize..(o + l) as usize], o).unwrap();
    }
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

/// Read the whole disk in batches shaped like the ingest pipeline's (16 x 256 KiB).
pub fn read_all(src: &dyn BlockSource) -> Vec<u8> {
    let size = src.size() as usize;
    let mut out = vec![0u8; size];
    const REQ: usize = 256 << 10;
    for batch in out.chunks_mut(16 * REQ).enumerate() {
        let (bi, buf) = batch;
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
                let len = 1 + rng.below(300_000.min(size));
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
    let size = src.size();
    let ext = src.allocation(0, size).unwrap();
    let mut pos = 0;
    let mut map = vec![false; size.div_ceil(512) as usize];
    for e in &ext {
        assert_eq!(e.offset, pos, "allocation map has a gap or overlap: {ext:?}");
        assert!(e.len > 0);
        pos = e.end();
        match e.kind {
            ExtentKind::Zero => assert!(
                expected[e.offset as usize..e.end() as usize].iter().all(|&b| b == 0),
                "extent {e:?} reported Zero but holds data"
            ),
            ExtentKind::Data => {
                for s in e.offset / 512..e.end().div_ceil(512) {
                    map[s as usize] = true;
                }
            }
        }
    }
    assert_eq!(pos, size, "allocation map does not cover the disk");
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

pub fn put_u32(d: &mut [u8], at: usize, v: u32) {
    d[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

pub fn put_u64(d: &mut [u8], at: usize, v: u64) {
    d[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

pub fn get_u64(d: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(d[at..at + 8].try_into().unwrap())
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
