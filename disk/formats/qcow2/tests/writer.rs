//! Qcow2Writer: images it writes pass `qemu-img check`, compare equal to the source data,
//! and read back through our own reader.

mod common;

use std::fs::File;
use std::io::ErrorKind;
use std::path::Path;

use blocksource::{BlockSource, ExtentKind};
use common::*;
use qcow2::Qcow2Writer;

const MIB: u64 = 1 << 20;

/// Random sparse disk content: per cluster, zeros, random data, or data in one part only.
fn sparse_data(size: u64, cs: u64, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut data = vec![0u8; size as usize];
    for chunk in data.chunks_mut(cs as usize) {
        match rng.below(10) {
            0..=4 => {}
            5..=8 => rng.fill(chunk),
            _ => {
                let at = rng.below(chunk.len() as u64) as usize;
                chunk[at] = 1 + rng.below(255) as u8;
            }
        }
    }
    data
}

fn check_clean(img: &Path) {
    // qemu-img check exits non-zero on corruptions (2) or leaks (3); `qemu_img` asserts 0.
    let out = qemu_img(&["check", "--output=json", s(img)]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for key in ["corruptions", "leaks", "check-errors", "corruptions-fixed", "leaks-fixed"] {
        assert_eq!(v.get(key).and_then(|x| x.as_u64()).unwrap_or(0), 0, "qemu-img check {key}: {out}");
    }
}

/// Write `data` through the writer in shuffled pieces of 1..8 clusters, overwriting some
/// pieces (first with junk), then verify with qemu-img and our reader.
fn roundtrip(size: u64, cluster_bits: u32, seed: u64) {
    let cs = 1u64 << cluster_bits;
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let img = dir.path().join("out.qcow2");
    let data = sparse_data(size, cs, seed);
    std::fs::write(&raw, &data).unwrap();

    let mut pieces = Vec::new();
    let mut off = 0;
    let mut rng = Rng(seed ^ 0xfeed);
    while off < size {
        let len = ((1 + rng.below(8)) * cs).min(size - off);
        pieces.push((off, len));
        off += len;
    }
    for i in (1..pieces.len()).rev() {
        pieces.swap(i, rng.below(i as u64 + 1) as usize);
    }

    // Which clusters must end up allocated: non-zero final data, or ever written with junk.
    let mut allocated: Vec<bool> = data.chunks(cs as usize).map(|c| c.iter().any(|&b| b != 0)).collect();
    let mut w = Qcow2Writer::create(File::create(&img).unwrap(), size, cluster_bits).unwrap();
    for (i, &(o, l)) in pieces.iter().enumerate() {
        let want = &data[o as usize..(o + l) as usize];
        if i % 7 == 0 {
            for c in o / cs..(o + l).div_ceil(cs) {
                allocated[c as usize] = true;
            }
            // Write junk first, then the real data later: overwrites must win.
            let mut junk = vec![0u8; l as usize];
            rng.fill(&mut junk);
            w.write_at(o, &junk).unwrap();
        }
        w.write_at(o, want).unwrap();
    }
    let f = w.finish().unwrap();
    let file_len = f.metadata().unwrap().len();
    drop(f);

    check_clean(&img);
    qemu_img(&["compare", "-q", "-f", "qcow2", "-F", "raw", s(&img), s(&raw)]);

    let src = open(&img).unwrap();
    assert_eq!(src.size(), size);
    assert_eq!(src.cluster_size(), cs);
    assert!(read_all(&src) == data);
    check_random_reads(&src, &data, seed, 20);
    assert_alloc_matches_qemu(&src, &img, &data);

    // All-zero clusters were skipped, not allocated: the file is the allocated clusters plus
    // a few metadata clusters (header, L1, L2 tables, refcounts).
    let n_alloc = allocated.iter().filter(|&&a| a).count() as u64;
    let l2_tables = size.div_ceil(cs * cs / 8);
    assert!(file_len >= n_alloc * cs, "file too small: {file_len}");
    assert!(file_len <= (n_alloc + 1 + l2_tables + 4) * cs, "file too large: {file_len}, {n_alloc} data clusters");
    let zero_bytes: u64 =
        src.allocation(0, size).unwrap().iter().filter(|e| e.kind == ExtentKind::Zero).map(|e| e.len).sum();
    assert!(zero_bytes > 0);
}

#[test]
fn roundtrip_64k_clusters() {
    roundtrip(40 * MIB + 3 * 512, 16, 0x5151);
}

#[test]
fn roundtrip_2m_clusters() {
    roundtrip(30 * MIB + 512, 21, 0x6262);
}

#[test]
fn roundtrip_many_l2_tables() {
    // 64 KiB clusters: one L2 table covers 512 MiB; use a disk spanning several tables with
    // only a few clusters written (sparse, so cheap).
    let size = 1300 * MIB;
    let cs = 65536u64;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("big.qcow2");
    let raw = dir.path().join("big.raw");
    let rawf = File::create(&raw).unwrap();
    rawf.set_len(size).unwrap();
    let mut w = Qcow2Writer::create(File::create(&img).unwrap(), size, 16).unwrap();
    let mut rng = Rng(99);
    for i in 0..40u64 {
        let off = (i * 33 * MIB) / cs * cs;
        let mut buf = vec![0u8; 2 * cs as usize];
        rng.fill(&mut buf);
        w.write_at(off, &buf).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&rawf, &buf, off).unwrap();
    }
    w.write_at(size - cs, &vec![7u8; cs as usize]).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&rawf, &vec![7u8; cs as usize], size - cs).unwrap();
    drop(w.finish().unwrap());
    check_clean(&img);
    qemu_img(&["compare", "-q", "-f", "qcow2", "-F", "raw", s(&img), s(&raw)]);
    let src = open(&img).unwrap();
    let ext = src.allocation(0, size).unwrap();
    assert_eq!(ext.iter().filter(|e| e.kind == ExtentKind::Data).count(), 41);
}

#[test]
fn empty_and_unwritten_images() {
    let dir = tempfile::tempdir().unwrap();
    for (name, size) in [("zero.qcow2", 0), ("blank.qcow2", 10 * MIB)] {
        let img = dir.path().join(name);
        let w = Qcow2Writer::create(File::create(&img).unwrap(), size, 16).unwrap();
        drop(w.finish().unwrap());
        check_clean(&img);
        let src = open(&img).unwrap();
        assert_eq!(src.size(), size);
        assert!(src.allocation(0, size).unwrap().iter().all(|e| e.kind == ExtentKind::Zero));
        assert!(read_all(&src).iter().all(|&b| b == 0));
    }
    // All-zero writes allocate nothing.
    let img = dir.path().join("zeros.qcow2");
    let mut w = Qcow2Writer::create(File::create(&img).unwrap(), 4 * MIB, 16).unwrap();
    w.write_at(0, &vec![0u8; 4 * MIB as usize]).unwrap();
    let len = w.finish().unwrap().metadata().unwrap().len();
    assert!(len <= 8 * 65536, "{len}");
    check_clean(&img);
}

#[test]
fn unfinished_image_is_not_a_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("partial.qcow2");
    let mut w = Qcow2Writer::create(File::create(&img).unwrap(), 4 * MIB, 16).unwrap();
    w.write_at(65536, &vec![9u8; 65536]).unwrap();
    drop(w);
    let head = std::fs::read(&img).unwrap();
    assert!(!qcow2::is_qcow2(&head));
}

#[test]
fn invalid_writes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = || File::create(dir.path().join("x.qcow2")).unwrap();
    for bits in [9, 15, 22, 40] {
        assert_eq!(Qcow2Writer::create(f(), MIB, bits).unwrap_err().kind(), ErrorKind::InvalidInput);
    }
    assert_eq!(Qcow2Writer::create(f(), u64::MAX, 16).unwrap_err().kind(), ErrorKind::InvalidInput);
    let mut w = Qcow2Writer::create(f(), MIB + 512, 16).unwrap();
    let c = vec![1u8; 65536];
    assert_eq!(w.write_at(512, &c).unwrap_err().kind(), ErrorKind::InvalidInput); // unaligned offset
    assert_eq!(w.write_at(0, &c[..1000]).unwrap_err().kind(), ErrorKind::InvalidInput); // partial, not at end
    assert_eq!(w.write_at(MIB, &c).unwrap_err().kind(), ErrorKind::InvalidInput); // past the end
    assert_eq!(w.write_at(u64::MAX - 65535, &c).unwrap_err().kind(), ErrorKind::InvalidInput);
    w.write_at(MIB, &c[..512]).unwrap(); // final partial cluster
    w.write_at(0, &c).unwrap();
    drop(w.finish().unwrap());
    check_clean(&dir.path().join("x.qcow2"));
}

#[test]
fn odd_virtual_size_is_rounded_to_sectors() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("odd.qcow2");
    let size = MIB + 100;
    let mut w = Qcow2Writer::create(File::create(&img).unwrap(), size, 16).unwrap();
    w.write_at(MIB, &[0xAB; 100]).unwrap(); // the final partial cluster ends at virtual_size
    assert!(w.write_at(MIB, &[0xAB; 512]).is_err());
    drop(w.finish().unwrap());
    check_clean(&img);
    let info = qemu_img(&["info", "--output=json", s(&img)]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["virtual-size"].as_u64(), Some(MIB + 512));
    let src = open(&img).unwrap();
    assert_eq!(src.size(), MIB + 512);
    let data = read_all(&src);
    assert!(data[MIB as usize..MIB as usize + 100].iter().all(|&b| b == 0xAB));
    assert!(data[MIB as usize + 100..].iter().all(|&b| b == 0));
    assert_eq!(data, qemu_raw(&img));
}
