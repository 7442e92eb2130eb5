//! Helpers shared by the integration tests: real files, real qemu-img / qemu-io, in-memory
//! containers for corrupted copies.
#![allow(dead_code, unused_imports)]

use std::collections::HashMap;
use std::path::Path;

use blocksource::file::FileSource;
use blocksource::{BlockSource, Extent, ExtentKind, ReadRequest, SourceError};
use vmdk::{BackingOpener, LocalBackingOpener, VmdkSource};

pub const MIB: u64 = 1 << 20;

pub use blocksource::mem::MemSource;
pub use testkit::bytes::le::{get_u32, get_u64, put_u32, put_u64};
pub use testkit::image::{check_extents, read_all, refused};
pub use testkit::mutate::flip_loop;
pub use testkit::qemu::{qemu_img, s};
pub use testkit::Rng;

/// Opener for in-memory sets of files: names are looked up as given (no directories).
#[derive(Debug, Default)]
pub struct MemOpener {
    pub files: HashMap<String, Vec<u8>>,
}

impl BackingOpener for MemOpener {
    fn open_backing(&self, name: &str, child: &str) -> Result<(Box<dyn BlockSource>, String), SourceError> {
        match self.files.get(name) {
            Some(d) => Ok((Box::new(MemSource { data: d.clone(), name: name.to_string() }), name.to_string())),
            None => {
                Err(SourceError::Unsupported { what: child.to_string(), detail: format!("test: no file {name:?}") })
            }
        }
    }
}

/// Open a local VMDK the way production does: `FileSource` for the named file and
/// `LocalBackingOpener` for extents and parents.
pub fn open(path: &Path) -> Result<VmdkSource, SourceError> {
    VmdkSource::open(Box::new(FileSource::open(path)?), &LocalBackingOpener)
}

/// Open `top` (a name in `files`) from memory.
pub fn open_mem(files: &MemOpener, top: &str) -> Result<VmdkSource, SourceError> {
    let data = files.files.get(top).cloned().unwrap_or_default();
    VmdkSource::open(Box::new(MemSource { data, name: top.to_string() }), files)
}

/// Load every file of `dir` into a [`MemOpener`] under its bare name.
pub fn load_dir(dir: &Path) -> MemOpener {
    let mut m = MemOpener::default();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            m.files.insert(e.file_name().to_str().unwrap().to_string(), std::fs::read(e.path()).unwrap());
        }
    }
    m
}

/// Run qemu-io on a vmdk with each of `cmds` as a `-c` command.
pub fn qemu_io(path: &Path, cmds: &[&str]) {
    testkit::qemu::qemu_io("vmdk", path, cmds);
}

/// The guest-visible bytes of an image according to QEMU.
pub fn qemu_raw(path: &Path) -> Vec<u8> {
    testkit::qemu::qemu_raw(path, Some("vmdk"))
}

/// Write a raw file of `size` bytes: random data in `data` ranges (half of each made
/// compressible text), explicitly written zeros in `zeros` ranges, and holes elsewhere.
/// Returns its bytes.
pub fn make_raw(path: &Path, size: u64, data_ranges: &[(u64, u64)], zeros: &[(u64, u64)], seed: u64) -> Vec<u8> {
    let data = testkit::raw::contents(size, data_ranges, seed, Some(b"rackvault vmdk test "));
    testkit::raw::write_sparse(path, &data, data_ranges, zeros);
    data
}

/// Scattered data ranges within a disk of `size` bytes: unaligned, grain-crossing, large.
pub fn scattered(size: u64) -> Vec<(u64, u64)> {
    let mut v = vec![
        (0, 4096),
        (70_000, 3_000),
        (MIB, 256 << 10),
        ((3 << 20) - 1000, 5000),
        (size / 2 + 512, 130_000),
        (size - 65536 * 3 - 512, 65536 * 3),
        (size - 700, 700),
    ];
    v.retain(|&(o, l)| o + l <= size);
    v
}

/// Explicit zero runs (written, not holes) within a disk of `size` bytes.
pub fn zero_runs(size: u64) -> Vec<(u64, u64)> {
    let mut v = vec![(2 * MIB, 512 << 10), (size / 2 + 300_000, 200_000)];
    v.retain(|&(o, l)| o + l <= size);
    v
}

/// Check random unaligned reads of up to 300 kB, batched, against `expected`.
pub fn check_random_reads(src: &dyn BlockSource, expected: &[u8], seed: u64, rounds: usize) {
    testkit::image::check_random_reads(src, expected, seed, rounds, 300_000);
}

/// Check the allocation map is a well-formed cover of the disk, never calls a range with
/// non-zero bytes Zero, and return how many bytes of all-zero 64 KiB blocks it reports as
/// Zero vs how many such bytes exist.
pub fn check_allocation(src: &dyn BlockSource, expected: &[u8]) -> (u64, u64) {
    let size = src.size();
    let mut zero_map = vec![false; size as usize];
    for e in check_extents(src, expected).iter().filter(|e| e.kind == ExtentKind::Zero) {
        zero_map[e.offset as usize..e.end() as usize].fill(true);
    }
    // Sub-ranges must agree with the whole map.
    let mid = size / 3 + 777;
    let part = src.allocation(mid, size / 3).unwrap();
    assert_eq!(part.first().map(|e| e.offset), Some(mid));
    assert_eq!(part.last().map(|e| e.end()), Some(mid + size / 3));
    for e in &part {
        let want = e.kind == ExtentKind::Zero;
        assert!(zero_map[e.offset as usize..e.end() as usize].iter().all(|&z| z == want), "sub-map {e:?} disagrees");
    }
    let (mut zero_blocks, mut reported) = (0, 0);
    for (i, blk) in expected.chunks(65536).enumerate() {
        if blk.iter().all(|&b| b == 0) {
            zero_blocks += blk.len() as u64;
            let z = &zero_map[i * 65536..i * 65536 + blk.len()];
            reported += z.iter().filter(|&&z| z).count() as u64;
        }
    }
    (reported, zero_blocks)
}

/// Build a streamOptimized file the way VMware's stream writers do: header with
/// `gdOffset = GD_AT_END`, embedded descriptor, compressed grains with markers, then grain
/// tables and the grain directory with metadata markers, the footer and end-of-stream.
/// Grains that are all zero are left unallocated.
pub fn build_stream_optimized(data: &[u8], cid: u32) -> Vec<u8> {
    use std::io::Write;
    const GRAIN: usize = 65536;
    const GTES: usize = 512;
    let capacity = (data.len() as u64).div_ceil(512);
    let grains = (data.len()).div_ceil(GRAIN);
    let gts = grains.div_ceil(GTES);
    let header = |gd: u64| {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(b"KDMV");
        put_u32(&mut h, 4, 3);
        put_u32(&mut h, 8, 1 | 2 | (1 << 16) | (1 << 17));
        put_u64(&mut h, 12, capacity);
        put_u64(&mut h, 20, (GRAIN / 512) as u64);
        put_u64(&mut h, 28, 1);
        put_u64(&mut h, 36, 2);
        put_u32(&mut h, 44, GTES as u32);
        put_u64(&mut h, 48, 0);
        put_u64(&mut h, 56, gd);
        put_u64(&mut h, 64, 128);
        h[73..77].copy_from_slice(b"\n \r\n");
        h[77..79].copy_from_slice(&1u16.to_le_bytes());
        h
    };
    let marker = |sectors: u64, ty: u32| {
        let mut m = vec![0u8; 512];
        put_u64(&mut m, 0, sectors);
        put_u32(&mut m, 12, ty);
        m
    };
    let mut f = header(u64::MAX);
    let mut desc = format!(
        "# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\nRW {capacity} SPARSE \"x.vmdk\"\n\nddb.adapterType = \"lsilogic\"\n"
    )
    .into_bytes();
    desc.resize(1024, 0);
    f.extend_from_slice(&desc);
    f.resize(128 * 512, 0);
    let mut gt = vec![0u32; gts * GTES];
    for g in 0..grains {
        let chunk = &data[g * GRAIN..((g + 1) * GRAIN).min(data.len())];
        if chunk.iter().all(|&b| b == 0) {
            continue;
        }
        gt[g] = (f.len() / 512) as u32;
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(chunk).unwrap();
        let comp = enc.finish().unwrap();
        f.extend_from_slice(&((g * GRAIN / 512) as u64).to_le_bytes());
        f.extend_from_slice(&(comp.len() as u32).to_le_bytes());
        f.extend_from_slice(&comp);
        f.resize(f.len().div_ceil(512) * 512, 0);
    }
    let mut gd = vec![0u32; gts];
    for t in 0..gts {
        f.extend_from_slice(&marker(4, 1));
        gd[t] = (f.len() / 512) as u32;
        for e in &gt[t * GTES..(t + 1) * GTES] {
            f.extend_from_slice(&e.to_le_bytes());
        }
    }
    f.extend_from_slice(&marker(gts.div_ceil(128) as u64, 2));
    let gd_sector = (f.len() / 512) as u64;
    for e in &gd {
        f.extend_from_slice(&e.to_le_bytes());
    }
    f.resize(f.len().div_ceil(512) * 512, 0);
    f.extend_from_slice(&marker(1, 3));
    f.extend_from_slice(&header(gd_sector));
    f.extend_from_slice(&marker(0, 0));
    f
}

/// A container that counts its `read_many` calls and bytes read, to check batching.
#[derive(Debug)]
pub struct Counting {
    pub inner: Box<dyn BlockSource>,
    pub calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl BlockSource for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>, SourceError> {
        self.inner.allocation(offset, len)
    }
    fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), SourceError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.calls.fetch_add(1, Relaxed);
        self.bytes.fetch_add(reqs.iter().map(|r| r.buf.len() as u64).sum(), Relaxed);
        self.inner.read_many(reqs)
    }
}
