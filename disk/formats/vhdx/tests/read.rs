//! Reading VHDX images made by qemu-img / qemu-io, compared with `qemu-img convert -O raw`.

mod common;

use std::sync::Arc;

use blocksource::BlockSource;
use common::*;
use vhdx::{is_vhdx, VhdxSource};

const MIB: u64 = 1 << 20;

/// Convert a raw file with scattered data to VHDX with `opts`, then check reads, random reads
/// and the allocation map. Returns the source, the image path's tempdir and the data.
fn roundtrip(size: u64, opts: &str, seed: u64) -> (VhdxSource, tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let img = dir.path().join("img.vhdx");
    let data = make_raw(&raw, size, &scattered(size), seed);
    qemu_img(&["convert", "-f", "raw", "-O", "vhdx", "-o", opts, s(&raw), s(&img)]);
    assert_eq!(qemu_raw(&img), data, "qemu itself disagrees with the source data");

    let src = open(&img).unwrap();
    assert_eq!(src.size(), size);
    assert_eq!(src.format(), "vhdx");
    assert_eq!(src.describe(), img.display().to_string());
    assert!(read_all(&src) == data, "read_all differs from the raw data for {opts}");
    check_random_reads(&src, &data, seed, 30);
    check_allocation(&src, &data);
    (src, dir, data)
}

#[test]
fn signature_detection() {
    assert!(is_vhdx(b"vhdxfile\0\0"));
    assert!(is_vhdx(b"vhdxfile"));
    assert!(!is_vhdx(b"vhdxfil"));
    assert!(!is_vhdx(b"QFI\xfb\0\0\0\x03"));
    assert!(!is_vhdx(b"conectix"));
}

#[test]
fn dynamic_1m_blocks() {
    let (src, _d, data) = roundtrip(24 * MIB, "subformat=dynamic,block_size=1M", 1);
    assert_eq!(src.block_size(), MIB);
    assert!(!src.is_differencing());
    // Most whole-block holes must be reported as Zero.
    let zero = check_allocation(&src, &data);
    let holes = zero_block_bytes(&data, MIB as usize);
    assert!(zero >= holes, "only {zero} of {holes} hole bytes reported Zero");
}

#[test]
fn dynamic_8m_blocks_big_log() {
    let (src, _d, data) = roundtrip(40 * MIB, "subformat=dynamic,block_size=8M,log_size=4M", 2);
    assert_eq!(src.block_size(), 8 * MIB);
    assert_eq!(src.replayed_log_entries(), 0);
    assert!(check_allocation(&src, &data) >= zero_block_bytes(&data, 8 << 20));
}

#[test]
fn dynamic_32m_blocks() {
    let (src, _d, _) = roundtrip(70 * MIB, "subformat=dynamic,block_size=32M", 3);
    assert_eq!(src.block_size(), 32 * MIB);
}

#[test]
fn dynamic_default_block_size() {
    roundtrip(20 * MIB, "subformat=dynamic", 4);
}

#[test]
fn fixed_images() {
    for (bs, seed) in [("1M", 5), ("8M", 6)] {
        let (src, _d, _) = roundtrip(18 * MIB, &format!("subformat=fixed,block_size={bs}"), seed);
        assert_eq!(src.block_size(), bs.trim_end_matches('M').parse::<u64>().unwrap() * MIB);
    }
}

#[test]
fn odd_virtual_sizes() {
    // Not a multiple of the block size; data reaches the very last sector.
    roundtrip(5 * MIB + 3 * 512, "subformat=dynamic,block_size=1M", 7);
    roundtrip(9 * MIB + 512, "subformat=fixed,block_size=8M", 8);
    roundtrip(33 * MIB - 512, "subformat=dynamic,block_size=32M", 9);
}

#[test]
fn empty_dynamic_image_is_all_zero() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("empty.vhdx");
    qemu_img(&["create", "-q", "-f", "vhdx", s(&img), "64M"]);
    let src = open(&img).unwrap();
    let ext = src.allocation(0, src.size()).unwrap();
    assert_eq!(ext, vec![blocksource::Extent { offset: 0, len: 64 * MIB, kind: blocksource::ExtentKind::Zero }]);
    let mut buf = vec![1u8; MIB as usize];
    src.read_at(63 * MIB, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn qemu_io_writes_and_zero_writes() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let img = dir.path().join("img.vhdx");
    make_raw(&raw, 16 * MIB, &scattered(16 * MIB), 10);
    qemu_img(&["convert", "-f", "raw", "-O", "vhdx", "-o", "subformat=dynamic,block_size=1M", s(&raw), s(&img)]);
    qemu_io(
        &img,
        &[
            "write -P 0x5a 7M 1536k",
            "write -P 0xa5 12345k 7k",
            "write -z 3M 1M",       // a whole block of zeros
            "write -z 7424k 64k",   // zeros inside a data block
            "write -P 0x11 15M 1M", // the last block
            "write -z 0 4k",
        ],
    );
    let expected = qemu_raw(&img);
    let src = open(&img).unwrap();
    assert!(read_all(&src) == expected, "reads differ from qemu after qemu-io writes");
    check_random_reads(&src, &expected, 11, 30);
    check_allocation(&src, &expected);
}

#[test]
fn reads_past_the_end_are_errors() {
    let (src, _d, _) = roundtrip(3 * MIB, "subformat=dynamic,block_size=1M", 12);
    let mut buf = vec![0u8; 4096];
    let e = src.read_at(3 * MIB - 100, &mut buf).unwrap_err();
    assert!(matches!(e, blocksource::SourceError::OutOfRange { .. }), "{e}");
    assert!(src.allocation(3 * MIB, 10).unwrap().is_empty());
    src.read_at(3 * MIB, &mut buf[..0]).unwrap();
}

#[test]
fn concurrent_readers() {
    let (src, _d, data) = roundtrip(24 * MIB, "subformat=dynamic,block_size=1M", 13);
    let src = Arc::new(src);
    let data = Arc::new(data);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let src = src.clone();
            let data = data.clone();
            std::thread::spawn(move || check_random_reads(&*src, &data, 100 + t, 40))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
