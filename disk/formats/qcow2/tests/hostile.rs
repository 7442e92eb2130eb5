//! Damaged, hostile and unsupported images: clear errors, never a panic.

mod common;

use std::path::{Path, PathBuf};

use blocksource::{BlockSource, SourceError};
use common::*;
use testkit::image::assert_unsupported;

const MIB: u64 = 1 << 20;

/// A 8 MiB image (64 KiB clusters unless `opts` says otherwise) with scattered data.
/// Returns its path, its bytes and the guest data.
fn base_image(dir: &Path, opts: &[&str]) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let raw = dir.join("base.raw");
    let img = dir.join("base.qcow2");
    let data = make_raw(&raw, 8 * MIB, &scattered(8 * MIB), 31);
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    args.extend_from_slice(opts);
    args.extend_from_slice(&[s(&raw), s(&img)]);
    qemu_img(&args);
    let bytes = std::fs::read(&img).unwrap();
    (img, bytes, data)
}

fn open_err(bytes: Vec<u8>) -> SourceError {
    refused(open_mem(bytes))
}

fn assert_corrupt(e: &SourceError, offset: u64, words: &str) {
    match e {
        SourceError::Corrupt { what, offset: o, detail } => {
            assert_eq!(what, "mem.qcow2");
            assert_eq!(*o, offset, "wrong offset in: {e}");
            assert!(detail.contains(words), "expected {words:?} in: {e}");
        }
        other => panic!("expected Corrupt({words}), got {other}"),
    }
}

/// Offsets of L2 entries of the first L2 table, and the table's offset.
fn first_l2(bytes: &[u8]) -> u64 {
    let l1 = get_u64(bytes, 40) as usize;
    get_u64(bytes, l1) & 0x00ff_ffff_ffff_fe00
}

#[test]
fn garbage_and_tiny_files() {
    let mut rng = Rng(77);
    let mut junk = vec![0u8; 1 << 20];
    rng.fill(&mut junk);
    assert_corrupt(&open_err(junk), 0, "not a qcow2 image");
    assert_corrupt(&open_err(vec![]), 0, "not a qcow2 image");
    assert_corrupt(&open_err(b"QFI".to_vec()), 0, "not a qcow2 image");
    let mut short = b"QFI\xfb\0\0\0\x03".to_vec();
    short.resize(40, 0);
    assert_corrupt(&open_err(short), 0, "truncated");
    let mut v3short = b"QFI\xfb\0\0\0\x03".to_vec();
    v3short.resize(90, 0);
    put_u32(&mut v3short, 20, 16);
    assert_corrupt(&open_err(v3short), 0, "v3 header");
}

#[test]
fn truncated_images() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bytes, _) = base_image(dir.path(), &[]);
    let l1 = get_u64(&bytes, 40);
    for cut in [50, 100, 300, 65536 + 10, l1 as usize + 4, bytes.len() / 2] {
        let path = dir.path().join(format!("cut{cut}.qcow2"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = match open(&path) {
            Err(e) => e,
            Ok(src) => try_read_all(&src).expect_err("a truncated image read without error"),
        };
        assert!(matches!(err, SourceError::Corrupt { .. }), "cut {cut}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "error does not name the file: {msg}");
        assert!(msg.contains("truncated") || msg.contains("past the end"), "cut {cut}: {msg}");
    }
    drop(img);
}

#[test]
fn bad_l1_table() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bytes, data) = base_image(dir.path(), &[]);
    // Sanity: the unmodified image reads fine from memory.
    let src = open_mem(bytes.clone()).unwrap();
    assert!(read_all(&src) == data);

    let l1 = get_u64(&bytes, 40);
    let e = open_err(patched(&img, |d| put_u64(d, 40, l1 + 8)));
    assert_corrupt(&e, 40, "not a non-zero multiple");
    let e = open_err(patched(&img, |d| put_u64(d, 40, 1 << 50)));
    assert_corrupt(&e, 40, "past the end");
    let e = open_err(patched(&img, |d| put_u64(d, 40, u64::MAX - 65535)));
    assert_corrupt(&e, 40, "past the end");
    let e = open_err(patched(&img, |d| put_u64(d, 40, 0)));
    assert_corrupt(&e, 40, "not a non-zero multiple");
    // An L1 entry pointing to an unaligned or far-away L2 table.
    let entry = get_u64(&bytes, l1 as usize);
    let e = open_err(patched(&img, |d| put_u64(d, l1 as usize, entry + 512)));
    assert_corrupt(&e, l1, "unaligned");
    let e = open_err(patched(&img, |d| put_u64(d, l1 as usize, (1 << 40) | (1 << 63))));
    assert_corrupt(&e, l1, "past the end");
    // l1_size too small for the virtual size, or absurd.
    let e = open_err(patched(&img, |d| put_u32(d, 36, 0)));
    assert_corrupt(&e, 36, "needs 1");
    let e = open_err(patched(&img, |d| put_u32(d, 36, u32::MAX)));
    assert_corrupt(&e, 36, "limit");
}

#[test]
fn absurd_sizes_and_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _, _) = base_image(dir.path(), &[]);
    let e = open_err(patched(&img, |d| put_u64(d, 24, u64::MAX)));
    assert_corrupt(&e, 24, "absurd");
    let e = open_err(patched(&img, |d| put_u64(d, 24, 1 << 53)));
    assert_corrupt(&e, 24, "absurd");
    // Bigger than the L1 table covers (l1_size is 1).
    let e = open_err(patched(&img, |d| put_u64(d, 24, 1 << 40)));
    assert_corrupt(&e, 36, "needs");
    for bits in [0, 8, 22, 63, u32::MAX] {
        let e = open_err(patched(&img, |d| put_u32(d, 20, bits)));
        assert_corrupt(&e, 20, "cluster_bits");
    }
    // Version 1 is a real, ancient format: unsupported, with advice to convert.
    let e = open_err(patched(&img, |d| put_u32(d, 4, 1)));
    assert_unsupported(&e, "qemu-img convert");
    // Versions QEMU never wrote mean a damaged header.
    for v in [0, 4, 0xffff_ffff] {
        let e = open_err(patched(&img, |d| put_u32(d, 4, v)));
        assert_corrupt(&e, 4, "version");
    }
    for len in [0, 50, 103, 105, 65544, u32::MAX] {
        let e = open_err(patched(&img, |d| put_u32(d, 100, len)));
        assert_corrupt(&e, 100, "header_length");
    }
    let e = open_err(patched(&img, |d| put_u32(d, 96, 7)));
    assert_corrupt(&e, 96, "refcount_order");
}

#[test]
fn bad_backing_name_and_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bytes, _) = base_image(dir.path(), &[]);
    let e = open_err(patched(&img, |d| {
        put_u64(d, 8, 512);
        put_u32(d, 16, 5000);
    }));
    assert_corrupt(&e, 16, "longer than the maximum");
    let e = open_err(patched(&img, |d| {
        put_u64(d, 8, 1 << 40);
        put_u32(d, 16, 10);
    }));
    assert_corrupt(&e, 8, "outside the first cluster");
    let e = open_err(patched(&img, |d| {
        put_u64(d, 8, 4000);
        put_u32(d, 16, 4);
        d[4000..4004].copy_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
    }));
    assert_corrupt(&e, 4000, "UTF-8");
    // A header extension whose length runs past the first cluster.
    let hlen = u32::from_be_bytes(bytes[100..104].try_into().unwrap()) as usize;
    for len in [65536, u32::MAX] {
        let e = open_err(patched(&img, |d| {
            put_u32(d, hlen, 0x1111_1111);
            put_u32(d, hlen + 4, len);
        }));
        assert_corrupt(&e, hlen as u64, "header extension");
    }
}

#[test]
fn feature_bits() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _, data) = base_image(dir.path(), &["-o", "lazy_refcounts=on"]);
    let incompat = |v: u64| patched(&img, |d| put_u64(d, 72, v));
    assert_corrupt(&open_err(incompat(2)), 72, "marked corrupt");
    // An external data file the header does not name.
    assert_unsupported(&open_err(incompat(1 << 2)), "does not name it");
    assert_unsupported(&open_err(incompat(1 << 4)), "subclusters");
    assert_unsupported(&open_err(incompat(1 << 20)), "bit 20");
    // Dirty with lazy refcounts: readable.
    let src = open_mem(incompat(1)).unwrap();
    assert!(read_all(&src) == data);
    // Dirty without lazy refcounts: inconsistent.
    let e = open_err(patched(&img, |d| {
        put_u64(d, 72, 1);
        put_u64(d, 80, 0);
    }));
    assert_corrupt(&e, 72, "dirty");
    // Encryption methods.
    for m in [1, 2, 9] {
        assert_unsupported(&open_err(patched(&img, |d| put_u32(d, 32, m))), "encrypted");
    }
    // Compression type without its feature bit, and unknown compression types.
    let e = open_err(patched(&img, |d| d[104] = 1));
    assert_corrupt(&e, 104, "feature bit 3");
    let e = open_err(patched(&img, |d| {
        d[104] = 5;
        put_u64(d, 72, 1 << 3);
    }));
    assert_unsupported(&e, "compression type 5");
}

#[test]
fn unsupported_features_made_by_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", "extended_l2=on", s(&p("e.qcow2")), "1M"]);
    assert_unsupported(&open(&p("e.qcow2")).unwrap_err(), "subclusters");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=s0,data=hunter2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
        s(&p("c.qcow2")),
        "1M",
    ]);
    let e = open(&p("c.qcow2")).unwrap_err();
    assert_unsupported(&e, "LUKS");
    assert!(!e.to_string().contains("hunter2"));
}

#[test]
fn bad_l2_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bytes, _) = base_image(dir.path(), &[]);
    let l2 = first_l2(&bytes) as usize;
    assert_ne!(l2, 0);
    // Guest cluster 0 holds data in the base image.
    let entry = get_u64(&bytes, l2);
    assert_ne!(entry & 0x00ff_ffff_ffff_fe00, 0);
    for (bad, words) in [
        (entry + 512, "unaligned"),
        ((1u64 << 45) | (1 << 63), "past the end"),
        ((1 << 62) | (1 << 45), "outside"), // compressed data past EOF
        (1 << 62, "outside"),               // compressed data at offset 0
    ] {
        let src = open_mem(patched(&img, |d| put_u64(d, l2, bad))).unwrap();
        let e = src.read_at(0, &mut [0u8; 4096]).unwrap_err();
        assert_corrupt(&e, l2 as u64, words);
        let e = src.allocation(0, 65536).unwrap_err();
        assert_corrupt(&e, l2 as u64, words);
        // Clusters covered by other, intact entries still read.
        assert!(src.read_at(1 << 20, &mut [0u8; 4096]).is_ok());
    }
}

#[test]
fn zero_flag_in_v2_image() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bytes, _) = base_image(dir.path(), &["-o", "compat=0.10"]);
    let l2 = first_l2(&bytes) as usize;
    let entry = get_u64(&bytes, l2);
    let src = open_mem(patched(&img, |d| put_u64(d, l2, entry | 1))).unwrap();
    let e = src.read_at(0, &mut [0u8; 512]).unwrap_err();
    assert_corrupt(&e, l2 as u64, "version 2");
}

#[test]
fn damaged_compressed_cluster() {
    let dir = tempfile::tempdir().unwrap();
    for ty in ["zlib", "zstd"] {
        let (img, bytes, data) = base_image(dir.path(), &["-c", "-o", &format!("compression_type={ty}")]);
        let l2 = first_l2(&bytes) as usize;
        let entry = get_u64(&bytes, l2);
        assert_ne!(entry & (1 << 62), 0, "cluster 0 is not compressed");
        let host = (entry & ((1u64 << 54) - 1)) as usize; // 64 KiB clusters: x = 54
                                                          // Garbage compressed bytes.
        let src = open_mem(patched(&img, |d| d[host..host + 64].fill(0xff))).unwrap();
        let e = src.read_at(0, &mut [0u8; 4096]).unwrap_err();
        assert_corrupt(&e, host as u64, "does not decompress");
        // A sector count too small for the data: the stream ends early.
        let src = open_mem(patched(&img, |d| put_u64(d, l2, (1 << 62) | host as u64))).unwrap();
        let e = src.read_at(0, &mut [0u8; 4096]).unwrap_err();
        assert_corrupt(&e, host as u64, "does not decompress");
        // The intact image still reads.
        let src = open_mem(bytes).unwrap();
        assert!(read_all(&src) == data);
    }
}
