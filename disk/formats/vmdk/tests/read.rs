//! Reading VMDK disks made by qemu-img (every subformat it can write) and by a VMware-style
//! stream writer, compared byte for byte with `qemu-img convert -O raw`.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use blocksource::{BlockSource, ReadRequest};
use common::*;
use vmdk::{is_vmdk, OpenOptions, VmdkSource};

/// Convert a raw file with scattered data, zero runs and holes to VMDK with `opts`, then check
/// whole-disk reads, random reads and the allocation map against QEMU's view of the VMDK.
fn roundtrip(size: u64, opts: &str, seed: u64) -> VmdkSource {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let img = dir.path().join("disk.vmdk");
    let data = make_raw(&raw, size, &scattered(size), &zero_runs(size), seed);
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", opts, s(&raw), s(&img)]);
    let qemu = qemu_raw(&img);
    assert!(qemu == data, "qemu itself disagrees with the source data for {opts}");
    let head = std::fs::read(&img).unwrap();
    assert!(is_vmdk(&head[..head.len().min(4096)]), "{opts}: not detected as vmdk");

    let src = open(&img).unwrap_or_else(|e| panic!("{opts}: {e}"));
    assert_eq!(src.size(), size);
    assert_eq!(src.format(), "vmdk");
    assert_eq!(src.describe(), img.display().to_string());
    assert!(read_all(&src) == qemu, "read_all differs from qemu-img convert for {opts}");
    check_random_reads(&src, &qemu, seed, 40);
    let (reported, zero) = check_allocation(&src, &qemu);
    assert!(reported * 10 >= zero * 8, "{opts}: only {reported} of {zero} zero bytes reported as Zero");
    src
}

const SUBFORMATS: &[&str] =
    &["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat", "streamOptimized"];

#[test]
fn every_subformat() {
    for (i, sf) in SUBFORMATS.iter().enumerate() {
        let src = roundtrip(24 * MIB, &format!("subformat={sf}"), 10 + i as u64);
        assert_eq!(src.create_type(), *sf);
        assert!(src.cid().is_some());
        assert!(src.parent().is_none());
    }
}

#[test]
fn zeroed_grain_and_adapter_types() {
    for (i, sf) in ["monolithicSparse", "twoGbMaxExtentSparse", "streamOptimized"].iter().enumerate() {
        roundtrip(16 * MIB, &format!("subformat={sf},zeroed_grain=on"), 20 + i as u64);
    }
    for (i, at) in ["ide", "lsilogic", "buslogic", "legacyESX"].iter().enumerate() {
        roundtrip(8 * MIB, &format!("subformat=monolithicSparse,adapter_type={at}"), 30 + i as u64);
    }
    roundtrip(8 * MIB, "subformat=monolithicFlat,adapter_type=lsilogic,hwversion=7", 35);
    roundtrip(8 * MIB, "subformat=monolithicSparse,compat6=on", 36);
}

#[test]
fn size_not_a_grain_multiple() {
    for (i, sf) in SUBFORMATS.iter().enumerate() {
        roundtrip(5 * MIB + 3 * 512, &format!("subformat={sf}"), 40 + i as u64);
    }
}

/// zeroed_grain=on makes qemu-io's `write -z` leave zeroed grain entries (GTE 1).
#[test]
fn zeroed_grains_written_by_qemu_io() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let img = dir.path().join("z.vmdk");
    make_raw(&raw, 8 * MIB, &[(0, 8 * MIB)], &[], 50);
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", "zeroed_grain=on", s(&raw), s(&img)]);
    qemu_io(&img, &["write -z 1M 2M", "write -z 6M 64k"]);
    let qemu = qemu_raw(&img);
    assert!(qemu[MIB as usize..3 * MIB as usize].iter().all(|&b| b == 0));
    let src = open(&img).unwrap();
    assert!(read_all(&src) == qemu);
    let (reported, zero) = check_allocation(&src, &qemu);
    assert_eq!(reported, zero, "zeroed grains must all be reported as Zero");
    assert_eq!(zero, 2 * MIB + 65536);
}

/// A disk just over 2 GiB splits into two extents; data around the extent boundary.
#[test]
fn two_gb_split_across_extents() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let size = 2 * 1024 * MIB + 3 * MIB;
    let edge = 2 * 1024 * MIB;
    let ranges = [(0, 65536), (edge - 100_000, 300_000), (size - 4096, 4096)];
    let data = make_raw(&raw, size, &ranges, &[], 60);
    for sf in ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"] {
        let img = dir.path().join(format!("{sf}.vmdk"));
        qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", &format!("subformat={sf}"), s(&raw), s(&img)]);
        let src = open(&img).unwrap();
        assert_eq!(src.size(), size);
        for &(o, l) in &ranges {
            let (o, l) = (o.saturating_sub(70_000), l + 140_000);
            let l = l.min(size - o);
            let mut buf = vec![0xEEu8; l as usize];
            // Split into a batch of unaligned requests so one batch spans both extents.
            let mut reqs: Vec<ReadRequest<'_>> = Vec::new();
            let mut at = o;
            for piece in buf.chunks_mut(33_333) {
                let n = piece.len() as u64;
                reqs.push(ReadRequest { offset: at, buf: piece });
                at += n;
            }
            src.read_many(&mut reqs).unwrap();
            assert!(buf[..] == data[o as usize..(o + l) as usize], "{sf}: mismatch around {o}");
        }
        let map = src.allocation(0, size).unwrap();
        let data_bytes: u64 = map.iter().filter(|e| e.kind == blocksource::ExtentKind::Data).map(|e| e.len).sum();
        assert!(data_bytes < 8 * MIB, "{sf}: {data_bytes} bytes reported as data: {map:?}");
        for &(o, l) in &ranges {
            let e = map.iter().find(|e| e.offset <= o && o < e.end()).unwrap();
            assert_eq!(e.kind, blocksource::ExtentKind::Data, "{sf}: data at {o} {l} reported as {e:?}");
        }
    }
}

/// streamOptimized as VMware writes it: the header says GD_AT_END and the real one is the
/// footer. Checked against the source data and against QEMU.
#[test]
fn stream_optimized_with_footer() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let size = 9 * MIB + 5 * 512;
    let data = make_raw(&raw, size, &scattered(size), &[], 70);
    let img = dir.path().join("x.vmdk");
    std::fs::write(&img, build_stream_optimized(&data, 0x1234_5678)).unwrap();
    assert!(qemu_raw(&img) == data, "qemu disagrees with our stream builder");
    let src = open(&img).unwrap();
    assert_eq!(src.create_type(), "streamOptimized");
    assert_eq!(src.cid(), Some(0x1234_5678));
    assert!(read_all(&src) == data);
    check_random_reads(&src, &data, 71, 40);
    let (reported, zero) = check_allocation(&src, &data);
    assert!(reported * 10 >= zero * 8);
}

/// Hand-written descriptors: flat extents with start offsets into one shared file, ZERO
/// extents, VMFS extents, RDONLY access, CRLF line ends.
#[test]
fn handwritten_multi_extent_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(80);
    let mut blob = vec![0u8; 4 * MIB as usize];
    rng.fill(&mut blob);
    blob[MIB as usize..2 * MIB as usize].fill(0);
    std::fs::write(dir.path().join("blob.bin"), &blob).unwrap();
    let mut other = vec![0u8; MIB as usize];
    rng.fill(&mut other);
    std::fs::write(dir.path().join("other-flat.vmdk"), &other).unwrap();
    let desc = "# Disk DescriptorFile\r\nversion=1\r\nCID=abcdef01\r\nparentCID=ffffffff\r\ncreateType=\"custom\"\r\n\r\n\
RW 2048 FLAT \"blob.bin\" 4096\r\nRW 1000 ZERO\r\nRDONLY 2048 VMFS \"other-flat.vmdk\"\r\nRW 4096 FLAT \"blob.bin\" 0\r\nRW 8 FLAT \"blob.bin\" 8184\r\n";
    let img = dir.path().join("d.vmdk");
    std::fs::write(&img, desc).unwrap();
    let mut expected = Vec::new();
    expected.extend_from_slice(&blob[2 * MIB as usize..3 * MIB as usize]);
    expected.extend_from_slice(&vec![0u8; 1000 * 512]);
    expected.extend_from_slice(&other);
    expected.extend_from_slice(&blob[..2 * MIB as usize]);
    expected.extend_from_slice(&blob[blob.len() - 4096..]);
    let src = open(&img).unwrap();
    assert_eq!(src.size(), expected.len() as u64);
    assert!(read_all(&src) == expected);
    check_random_reads(&src, &expected, 81, 60);
    let (reported, zero) = check_allocation(&src, &expected);
    assert!(reported >= 1000 * 512 - 65536 * 2, "{reported} of {zero}");
}

/// Holes in a flat extent file are reported as Zero through the file's own map.
#[test]
fn flat_holes_reported_as_zero() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let size = 32 * MIB;
    make_raw(&raw, size, &[(0, 65536), (20 * MIB, 65536)], &[], 90);
    let img = dir.path().join("f.vmdk");
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicFlat", s(&raw), s(&img)]);
    let src = open(&img).unwrap();
    let map = src.allocation(0, size).unwrap();
    let zero: u64 = map.iter().filter(|e| e.kind == blocksource::ExtentKind::Zero).map(|e| e.len).sum();
    // Filesystems with SEEK_HOLE report nearly all of it; allow generous block rounding.
    assert!(zero >= size - 4 * MIB, "only {zero} bytes of a mostly-hole flat file reported as Zero: {map:?}");
}

/// Many threads reading one source at once, with a tiny grain table cache so tables are
/// evicted and re-read concurrently.
#[test]
fn concurrent_reads_with_tiny_cache() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let size = 64 * MIB;
    let ranges: Vec<(u64, u64)> = (0..64).map(|i| (i * MIB + i * 4099, 100_000)).collect();
    let data = make_raw(&raw, size, &ranges, &[], 100);
    for sf in ["monolithicSparse", "streamOptimized"] {
        let img = dir.path().join(format!("{sf}.vmdk"));
        qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", &format!("subformat={sf}"), s(&raw), s(&img)]);
        let file = blocksource::file::FileSource::open(&img).unwrap();
        let src = Arc::new(
            VmdkSource::open_with(Box::new(file), &vmdk::LocalBackingOpener, &OpenOptions { gt_cache_bytes: 4096 })
                .unwrap(),
        );
        let data = Arc::new(data.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (src, data) = (src.clone(), data.clone());
                std::thread::spawn(move || check_random_reads(&*src, &data, 200 + t, 60))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}

/// Reads past the end are errors, zero-length reads are fine.
#[test]
fn out_of_range_reads() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    make_raw(&raw, MIB, &[(0, 1000)], &[], 110);
    let img = dir.path().join("o.vmdk");
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", s(&raw), s(&img)]);
    let src = open(&img).unwrap();
    let mut buf = vec![0u8; 10];
    assert!(matches!(src.read_at(MIB - 5, &mut buf), Err(vmdk::SourceError::OutOfRange { .. })));
    assert!(matches!(src.read_at(u64::MAX - 2, &mut buf), Err(vmdk::SourceError::OutOfRange { .. })));
    src.read_at(MIB, &mut []).unwrap();
    assert!(src.allocation(MIB, 100).unwrap().is_empty());
    assert!(src.allocation(u64::MAX, u64::MAX).unwrap().is_empty());
}

#[allow(dead_code)]
fn write_at(path: &Path, off: u64, bytes: &[u8]) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, off).unwrap();
}

/// One batch costs one container read (plus one for grain tables the first time), and
/// compressed grains are not read twice.
#[test]
fn batches_map_to_one_container_read() {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let size = 16 * MIB;
    let data = make_raw(&raw, size, &[(0, size)], &[], 120);
    for sf in ["monolithicSparse", "streamOptimized"] {
        let img = dir.path().join(format!("{sf}.vmdk"));
        qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", &format!("subformat={sf}"), s(&raw), s(&img)]);
        let (calls, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let file = blocksource::file::FileSource::open(&img).unwrap();
        let counted = Counting { inner: Box::new(file), calls: calls.clone(), bytes: bytes.clone() };
        let src = VmdkSource::open(Box::new(counted), &vmdk::LocalBackingOpener).unwrap();
        let (c0, b0) = (calls.load(Relaxed), bytes.load(Relaxed));
        assert!(read_all(&src) == data);
        let batches = size.div_ceil(4 * MIB);
        let calls = calls.load(Relaxed) - c0;
        assert!(calls <= 2 * batches, "{sf}: {calls} container reads for {batches} batches");
        let read = bytes.load(Relaxed) - b0;
        let file_len = std::fs::metadata(&img).unwrap().len();
        assert!(read <= file_len + 8 * 70_000, "{sf}: read {read} bytes of a {file_len}-byte file");
    }
}
