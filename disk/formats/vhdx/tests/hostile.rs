//! Damaged, hostile and unsupported images: clear errors naming the file, never a panic.

mod common;

use blocksource::SourceError;
use common::build::{Image, MIB};
use common::*;
use testkit::image::assert_unsupported;

/// A 6 MiB dynamic image with data in a few blocks, built with qemu-img.
fn qemu_image() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("b.raw");
    let img = dir.path().join("b.vhdx");
    make_raw(&raw, 6 * MIB, &[(0, 200_000), (3 * MIB, MIB)], 5);
    qemu_img(&["convert", "-f", "raw", "-O", "vhdx", "-o", "subformat=dynamic,block_size=1M", s(&raw), s(&img)]);
    std::fs::read(&img).unwrap()
}

fn open_err(bytes: Vec<u8>) -> SourceError {
    refused(open_mem(bytes))
}

fn assert_corrupt(e: &SourceError, words: &str) {
    testkit::image::assert_corrupt(e, "mem.vhdx", words);
}

/// Patch the image and recompute every header / region table CRC.
fn with(good: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut d = good.to_vec();
    f(&mut d);
    fix_all_crcs(&mut d);
    d
}

/// File offset of the metadata table entry for the item whose GUID starts with `prefix`.
fn meta_entry(d: &[u8], prefix: [u8; 4]) -> usize {
    let (m, _) = region(d, META_GUID_PREFIX);
    let n = u16::from_le_bytes([d[m + 10], d[m + 11]]) as usize;
    (0..n).map(|i| m + 32 + 32 * i).find(|&e| d[e..e + 4] == prefix).expect("no such item")
}

fn meta_item(d: &[u8], prefix: [u8; 4]) -> usize {
    let (m, _) = region(d, META_GUID_PREFIX);
    m + get_u32(d, meta_entry(d, prefix) + 16) as usize
}

fn put_u32_at(d: &mut [u8], at: impl Fn(&[u8]) -> usize, v: u32) {
    let i = at(d);
    put_u32(d, i, v);
}

fn put_u64_at(d: &mut [u8], at: impl Fn(&[u8]) -> usize, v: u64) {
    let i = at(d);
    put_u64(d, i, v);
}

/// A damage to apply to an image.
type Patch = Box<dyn Fn(&mut Vec<u8>)>;

const FILE_PARAMS: [u8; 4] = [0x37, 0x67, 0xa1, 0xca];
const DISK_SIZE: [u8; 4] = [0x24, 0x42, 0xa5, 0x2f];
const LOGICAL: [u8; 4] = [0x1d, 0xbf, 0x41, 0x81];

#[test]
fn garbage_and_tiny_files() {
    let mut junk = vec![0u8; 1 << 20];
    Rng(3).fill(&mut junk);
    assert_corrupt(&open_err(junk), "not a VHDX image");
    assert_corrupt(&open_err(vec![]), "not a VHDX image");
    assert_corrupt(&open_err(b"vhdx".to_vec()), "not a VHDX image");
    let mut short = b"vhdxfile".to_vec();
    short.resize(100_000, 0);
    assert_corrupt(&open_err(short), "truncated");
}

#[test]
fn headers() {
    let good = qemu_image();
    open_mem(good.clone()).unwrap();
    // One bad header: the other one is used.
    let mut d = good.clone();
    d[64 * 1024 + 100] ^= 1;
    open_mem(d.clone()).unwrap();
    d[128 * 1024 + 100] ^= 1;
    let e = open_err(d);
    assert_corrupt(&e, "both headers are invalid");
    assert!(e.to_string().contains("checksum"), "{e}");
    // Versions.
    let e = open_err(with(&good, |d| {
        for h in [64 << 10, 128 << 10] {
            d[h + 66] = 2;
        }
    }));
    assert_unsupported(&e, "version 2");
    // Log inside the header section, or past the end.
    let e = open_err(with(&good, |d| {
        for h in [64 << 10, 128 << 10] {
            put_u64(d, h + 72, 4096);
        }
    }));
    assert_corrupt(&e, "header section");
    let e = open_err(with(&good, |d| {
        for h in [64 << 10, 128 << 10] {
            put_u64(d, h + 72, 1 << 40);
            d[h + 48] = 1; // a pending log
        }
    }));
    assert_corrupt(&e, "past the end");
    // A pending log that holds nothing valid.
    let e = open_err(with(&good, |d| {
        for h in [64 << 10, 128 << 10] {
            d[h + 48] = 1;
        }
    }));
    assert_corrupt(&e, "no valid entry sequence");
}

#[test]
fn region_table() {
    let good = qemu_image();
    // First copy bad: the second is used.
    let mut d = good.clone();
    d[192 * 1024 + 40] ^= 1;
    open_mem(d.clone()).unwrap();
    d[256 * 1024 + 40] ^= 1;
    assert_corrupt(&open_err(d), "both region tables are invalid");
    let (meta, _) = region(&good, META_GUID_PREFIX);
    let find = |d: &[u8], p: [u8; 4]| (0..2).map(|i| (192 << 10) + 16 + 32 * i).find(|&e| d[e..e + 4] == p).unwrap();
    let patch = |f: &dyn Fn(&mut Vec<u8>)| {
        with(&good, |d| {
            f(d);
            let (a, b) = d.split_at_mut(256 << 10);
            b[..65536].copy_from_slice(&a[192 << 10..]);
        })
    };
    let e = open_err(patch(&|d| put_u64_at(d, |d| find(d, BAT_GUID_PREFIX) + 16, 1 << 50)));
    assert_corrupt(&e, "past the end");
    let e = open_err(patch(&|d| put_u64_at(d, |d| find(d, BAT_GUID_PREFIX) + 16, meta as u64)));
    assert_corrupt(&e, "overlap");
    let e = open_err(patch(&|d| put_u64_at(d, |d| find(d, META_GUID_PREFIX) + 16, 1 << 20)));
    assert_corrupt(&e, "overlaps the log");
    let e = open_err(patch(&|d| put_u64_at(d, |d| find(d, BAT_GUID_PREFIX) + 16, 4096)));
    assert_corrupt(&e, "header section");
    let e = open_err(patch(&|d| {
        let b = find(d, BAT_GUID_PREFIX);
        let m = find(d, META_GUID_PREFIX);
        let copy = d[b..b + 16].to_vec();
        d[m..m + 16].copy_from_slice(&copy);
    }));
    assert_corrupt(&e, "appears twice");
    let e = open_err(patch(&|d| {
        let m = find(d, META_GUID_PREFIX);
        d[m] ^= 0xff; // unknown GUID
        put_u32(d, m + 28, 1); // required
    }));
    assert_unsupported(&e, "marked required");
    let e = open_err(patch(&|d| {
        let i = find(d, META_GUID_PREFIX);
        d[i] ^= 0xff
    }));
    assert_corrupt(&e, "no metadata region");
    let e = open_err(patch(&|d| put_u32(d, (192 << 10) + 8, 5000)));
    assert_corrupt(&e, "more than the 2047");
}

#[test]
fn metadata() {
    let good = qemu_image();
    let cases: Vec<(Patch, &str, bool)> = vec![
        (Box::new(|d| put_u32_at(d, |d| meta_item(d, FILE_PARAMS), 3 << 20)), "block size", false),
        (Box::new(|d| put_u32_at(d, |d| meta_item(d, FILE_PARAMS), 512 << 20)), "block size", false),
        (Box::new(|d| put_u32_at(d, |d| meta_item(d, FILE_PARAMS), 0)), "block size", false),
        (Box::new(|d| put_u32_at(d, |d| meta_item(d, LOGICAL), 1024)), "logical sector size", false),
        (Box::new(|d| put_u64_at(d, |d| meta_item(d, DISK_SIZE), 1 << 60)), "64 TiB", false),
        (Box::new(|d| put_u64_at(d, |d| meta_item(d, DISK_SIZE), 6 * MIB + 7)), "multiple", false),
        (Box::new(|d| put_u64_at(d, |d| meta_item(d, DISK_SIZE), 60 << 40)), "BAT region", false),
        (Box::new(|d| put_u32_at(d, |d| meta_entry(d, DISK_SIZE) + 16, 2 << 20)), "outside", false),
        (Box::new(|d| put_u32_at(d, |d| meta_entry(d, DISK_SIZE) + 20, 2 << 20)), "more than the 1 MiB", false),
        (Box::new(|d| put_u32_at(d, |d| meta_entry(d, DISK_SIZE) + 16, 100)), "outside", false),
        (Box::new(|d| put_u32_at(d, |d| meta_entry(d, DISK_SIZE) + 20, 4)), "expected at least 8", false),
        (
            Box::new(|d| {
                let o = get_u32(d, meta_entry(d, FILE_PARAMS) + 16);
                put_u32_at(d, |d| meta_entry(d, DISK_SIZE) + 16, o + 4);
            }),
            "overlap",
            false,
        ),
        (
            Box::new(|d| {
                let e = meta_entry(d, DISK_SIZE);
                let f = meta_entry(d, FILE_PARAMS);
                let g = d[f..f + 16].to_vec();
                d[e..e + 16].copy_from_slice(&g);
            }),
            "appears twice",
            false,
        ),
        (
            Box::new(|d| {
                let e = meta_entry(d, DISK_SIZE);
                d[e] ^= 0x55; // an unknown, optional item now
                d[e + 24] = 0;
            }),
            "Virtual Disk Size metadata item is missing",
            false,
        ),
        (
            Box::new(|d| {
                let e = meta_entry(d, DISK_SIZE);
                d[e + 1] ^= 0x55; // unknown now, and required (flags 6)
            }),
            "marked required",
            true,
        ),
        (
            Box::new(|d| {
                let i = meta_item(d, FILE_PARAMS) + 4;
                d[i] |= 2
            }),
            "Parent Locator",
            false,
        ),
        (
            Box::new(|d| {
                let (m, _) = region(d, META_GUID_PREFIX);
                d[m] = b'X';
            }),
            "signature",
            false,
        ),
    ];
    for (i, (f, words, unsup)) in cases.into_iter().enumerate() {
        let e = open_err(with(&good, |d| f(d)));
        eprintln!("case {i}: {e}");
        if unsup {
            assert_unsupported(&e, words);
        } else {
            assert_corrupt(&e, words);
        }
    }
}

#[test]
fn bat_entries() {
    let good = qemu_image();
    let (bat, _) = region(&good, BAT_GUID_PREFIX);
    let (meta, _) = region(&good, META_GUID_PREFIX);
    let cases: Vec<(u64, &str)> = vec![
        ((1 << 40) | 6, "past the end"),
        (6, "header section"),
        (((bat as u64 >> 20) << 20) | 6, "overlaps the BAT"),
        (((meta as u64 >> 20) << 20) | 6, "overlaps the metadata"),
        ((1 << 20) | 6, "overlaps the log"),
        (4, "reserved BAT state"),
        (7, "PARTIALLY_PRESENT"),
        (u64::MAX, "PARTIALLY_PRESENT"),
        ((u64::MAX << 3) | 6, "beyond any plausible file"),
    ];
    for (entry, words) in cases {
        let mut d = good.clone();
        put_u64(&mut d, bat + 8, entry);
        let e = open_err(d);
        assert_corrupt(&e, words);
    }
    // Truncated just after the metadata: the data blocks are missing.
    let e = open_err(good[..(4 << 20) + 100].to_vec());
    assert!(e.to_string().contains("past the end"), "{e}");
}

#[test]
fn crafted_differencing_damage() {
    let mut c = Image::new(4 * MIB, MIB, 512);
    c.parent = Some(vec![("parent_linkage".into(), "{11111111-1111-1111-1111-111111111111}".into())]);
    c.write(0, &[1u8; 4096]);
    let bytes = c.finish();
    // No path to the parent at all.
    assert_corrupt(&open_err(bytes.clone()), "relative_path");
    // A partially present block whose chunk has no sector bitmap.
    let mut d = bytes.clone();
    let sb = common::build::BAT_OFFSET as usize + 8 * c.chunk_ratio() as usize;
    put_u64(&mut d, sb, 0);
    assert_corrupt(&open_err(d), "no sector bitmap");
    // A bitmap entry with a reserved state.
    let mut d = bytes;
    put_u64(&mut d, sb, 3);
    assert_corrupt(&open_err(d), "invalid state");
}

#[test]
fn truncated_files_never_panic() {
    let good = qemu_image();
    for cut in [10, 70_000, 200_000, 300_000, 1 << 20, (3 << 20) + 5, good.len() - 1] {
        match open_mem(good[..cut].to_vec()) {
            Err(e) => assert!(matches!(e, SourceError::Corrupt { .. }), "cut {cut}: {e}"),
            Ok(src) => {
                try_read_all(&src).unwrap_or_else(|e| panic!("cut {cut}: opened but failed: {e}"));
            }
        }
    }
}
