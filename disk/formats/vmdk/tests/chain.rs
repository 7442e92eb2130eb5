//! Snapshot chains: deltas made by `qemu-img create -b` and written with qemu-io, compared
//! with `qemu-img convert -O raw` of the top; broken chains (CID mismatch, loops, missing or
//! too many parents) give clear errors.

mod common;

use blocksource::{BlockSource, ExtentKind};
use common::*;
use vmdk::SourceError;

/// A 16 MiB base with scattered data, converted to `subformat`.
fn base(dir: &std::path::Path, name: &str, subformat: &str, seed: u64) -> std::path::PathBuf {
    let raw = dir.join("base.raw");
    let img = dir.join(name);
    make_raw(&raw, 16 * MIB, &scattered(16 * MIB), &zero_runs(16 * MIB), seed);
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", &format!("subformat={subformat}"), s(&raw), s(&img)]);
    std::fs::remove_file(raw).unwrap();
    img
}

fn delta(dir: &std::path::Path, parent: &str, name: &str, opts: &str) -> std::path::PathBuf {
    let img = dir.join(name);
    let mut args = vec!["create", "-f", "vmdk", "-b", parent, "-F", "vmdk"];
    if !opts.is_empty() {
        args.extend_from_slice(&["-o", opts]);
    }
    args.push(s(&img));
    // -b is relative to the new image's directory, as in VMware's own chains.
    let out = std::process::Command::new("qemu-img").args(&args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    img
}

fn check_against_qemu(top: &std::path::Path) -> vmdk::VmdkSource {
    let qemu = qemu_raw(top);
    let src = open(top).unwrap_or_else(|e| panic!("{}: {e}", top.display()));
    assert_eq!(src.size(), qemu.len() as u64);
    assert!(read_all(&src) == qemu, "{}: read_all differs from qemu-img convert", top.display());
    check_random_reads(&src, &qemu, 7, 40);
    let (reported, zero) = check_allocation(&src, &qemu);
    assert!(reported * 10 >= zero * 7, "only {reported} of {zero} zero bytes reported as Zero");
    src
}

#[test]
fn one_delta_like_vmware_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path(), "vm.vmdk", "monolithicSparse", 1);
    let top = delta(dir.path(), "vm.vmdk", "vm-000001.vmdk", "");
    qemu_io(&top, &["write -P 0x5a 100k 300k", "write -P 0x33 8M 64k", "write -P 0x77 16284k 100k"]);
    let src = check_against_qemu(&top);
    assert_eq!(src.parent_file_name(), Some("vm.vmdk"));
    let parent = src.parent().unwrap();
    assert_eq!(parent.describe(), std::fs::canonicalize(dir.path().join("vm.vmdk")).unwrap().display().to_string());
    // The delta's own grains are data even where the parent has holes.
    let map = src.allocation(8 * MIB, 65536).unwrap();
    assert_eq!(map.len(), 1);
    assert_eq!(map[0].kind, ExtentKind::Data);
}

#[test]
fn three_levels_mixed_subformats_and_zeroed_grains() {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path(), "base.vmdk", "monolithicFlat", 2);
    let mid = delta(dir.path(), "base.vmdk", "mid.vmdk", "subformat=twoGbMaxExtentSparse");
    qemu_io(&mid, &["write -P 0x11 0 64k", "write -P 0x22 5M 1M", "write -P 0x23 10000k 5k"]);
    let top = delta(dir.path(), "mid.vmdk", "top.vmdk", "zeroed_grain=on");
    // Zero writes over parent data must read as zeros (zeroed grain entries, not holes).
    qemu_io(&top, &["write -P 0x5a 4M 128k", "write -z 5M 256k", "write -z 1M 256k", "write -P 0x5b 15M 1k"]);
    let src = check_against_qemu(&top);
    assert_eq!(src.parent().unwrap().parent().unwrap().create_type(), "monolithicFlat");
    let map = src.allocation(5 * MIB, 256 << 10).unwrap();
    assert_eq!(map.len(), 1, "{map:?}");
    assert_eq!(map[0].kind, ExtentKind::Zero);
}

#[test]
fn stream_optimized_and_split_parents() {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path(), "b.vmdk", "streamOptimized", 3);
    let top = delta(dir.path(), "b.vmdk", "t.vmdk", "");
    qemu_io(&top, &["write -P 0x44 3M 200k"]);
    check_against_qemu(&top);
    let dir = tempfile::tempdir().unwrap();
    base(dir.path(), "b.vmdk", "twoGbMaxExtentFlat", 4);
    let top = delta(dir.path(), "b.vmdk", "t.vmdk", "subformat=twoGbMaxExtentSparse");
    qemu_io(&top, &["write -P 0x45 7M 200k"]);
    check_against_qemu(&top);
}

/// Replace the first `CID=xxxxxxxx` in a file (descriptor or embedded) in place.
/// QEMU writes CIDs without leading zeros, so the old value may be shorter than 8 digits; an
/// embedded descriptor then gives up the NUL padding after its text, to keep every offset.
fn set_cid(path: &std::path::Path, key: &str, cid: u32) {
    let mut d = std::fs::read(path).unwrap();
    let pat = format!("\n{key}=");
    let at = d.windows(pat.len()).position(|w| w == pat.as_bytes()).unwrap() + pat.len();
    let old_len = d[at..].iter().position(|&b| b == b'\n').unwrap();
    let new = format!("{cid:08x}");
    let grow = new.len() - old_len;
    d.splice(at..at + old_len, new.bytes());
    if let Some(nul) = d[at..].iter().position(|&b| b == 0) {
        let nul = at + nul;
        assert!(d[nul..nul + grow].iter().all(|&b| b == 0), "no padding after the descriptor");
        d.drain(nul..nul + grow);
    }
    std::fs::write(path, d).unwrap();
}

#[test]
fn cid_mismatch_is_refused_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let b = base(dir.path(), "vm.vmdk", "monolithicSparse", 5);
    let top = delta(dir.path(), "vm.vmdk", "vm-000001.vmdk", "");
    open(&top).unwrap();
    // The base is modified after the snapshot: its CID changes.
    set_cid(&b, "CID", 0x0bad_0bad);
    let e = open(&top).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, SourceError::Corrupt { .. }), "{msg}");
    assert!(msg.contains("vm-000001.vmdk") && msg.contains("vm.vmdk") && msg.contains("0bad0bad"), "{msg}");
    assert!(msg.contains("parentCID"), "{msg}");
    // Writing into the base with QEMU also changes its CID.
    let dir = tempfile::tempdir().unwrap();
    let b = base(dir.path(), "vm.vmdk", "monolithicFlat", 6);
    let top = delta(dir.path(), "vm.vmdk", "vm-000001.vmdk", "");
    qemu_io(&b, &["write -P 1 0 4k"]);
    assert!(open(&top).unwrap_err().to_string().contains("parentCID"));
}

#[test]
fn parent_loops_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("r.raw");
    make_raw(&raw, MIB, &[(0, 1000)], &[], 8);
    for name in ["a", "b"] {
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            s(&raw),
            s(&dir.path().join(format!("{name}.vmdk"))),
        ]);
    }
    let desc = |name: &str, parent: &str| {
        let p = dir.path().join(format!("{name}.vmdk"));
        let text = std::fs::read_to_string(&p).unwrap();
        let text = text.trim_end_matches('\0').to_string();
        let mut out = String::new();
        for l in text.lines() {
            if l.starts_with("CID=") {
                out.push_str("CID=00000001\n");
            } else if l.starts_with("parentCID=") {
                out.push_str(&format!("parentCID=00000001\nparentFileNameHint=\"{parent}\"\n"));
            } else {
                out.push_str(l);
                out.push('\n');
            }
        }
        std::fs::write(&p, out).unwrap();
        p
    };
    let a = desc("a", "b.vmdk");
    desc("b", "a.vmdk");
    let msg = open(&a).unwrap_err().to_string();
    assert!(msg.contains("loop") && msg.contains("a.vmdk") && msg.contains("b.vmdk"), "{msg}");
    let a = desc("a", "a.vmdk");
    let msg = open(&a).unwrap_err().to_string();
    assert!(msg.contains("loop"), "{msg}");
}

#[test]
fn missing_parent_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let b = base(dir.path(), "vm.vmdk", "monolithicSparse", 9);
    let top = delta(dir.path(), "vm.vmdk", "vm-000001.vmdk", "");
    std::fs::remove_file(b).unwrap();
    let msg = open(&top).unwrap_err().to_string();
    assert!(msg.contains("vm.vmdk") && msg.contains("parent") && msg.contains("vm-000001.vmdk"), "{msg}");
    // A missing extent file of a descriptor too.
    let dir = tempfile::tempdir().unwrap();
    let b = base(dir.path(), "f.vmdk", "monolithicFlat", 10);
    std::fs::remove_file(dir.path().join("f-flat.vmdk")).unwrap();
    let msg = open(&b).unwrap_err().to_string();
    assert!(msg.contains("f-flat.vmdk") && msg.contains("extent"), "{msg}");
}

#[test]
fn chain_depth_is_capped() {
    let mut files = MemOpener::default();
    for i in 0..100 {
        let parent = if i < 99 { format!("parentFileNameHint=\"d{}.vmdk\"\n", i + 1) } else { String::new() };
        files.files.insert(
            format!("d{i}.vmdk"),
            format!("# Disk DescriptorFile\nversion=1\nCID=00000001\nparentCID=00000001\ncreateType=\"monolithicFlat\"\n{parent}RW 8 ZERO\n").into_bytes(),
        );
    }
    let e = open_mem(&files, "d0.vmdk").unwrap_err();
    assert!(matches!(e, SourceError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("longer than 64"), "{e}");
    // 64 disks is fine.
    files.files.insert(
        "d63.vmdk".into(),
        b"# Disk DescriptorFile\nCID=00000001\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 8 ZERO\n".to_vec(),
    );
    let src = open_mem(&files, "d0.vmdk").unwrap();
    let mut buf = [1u8; 4096];
    src.read_at(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}

/// A parent smaller than its delta: the rest reads as zeros.
#[test]
fn parent_smaller_than_delta() {
    let mut files = MemOpener::default();
    let mut base = vec![0u8; 4096];
    base.iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8 + 1);
    files.files.insert("base-flat.vmdk".into(), base.clone());
    files.files.insert(
        "base.vmdk".into(),
        b"# Disk DescriptorFile\nCID=0000abcd\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"base-flat.vmdk\" 0\n".to_vec(),
    );
    // A delta of 16 sectors with a sparse extent that has no grains at all.
    let sparse = hosted_sparse_empty(16);
    files.files.insert("top-s001.vmdk".into(), sparse);
    files.files.insert(
        "top.vmdk".into(),
        b"# Disk DescriptorFile\nCID=00000002\nparentCID=0000abcd\nparentFileNameHint=\"base.vmdk\"\ncreateType=\"twoGbMaxExtentSparse\"\nRW 16 SPARSE \"top-s001.vmdk\"\n".to_vec(),
    );
    let src = open_mem(&files, "top.vmdk").unwrap();
    let mut expected = base;
    expected.resize(8192, 0);
    assert!(read_all(&src) == expected);
    let (reported, zero) = check_allocation(&src, &expected);
    assert_eq!((reported, zero), (0, 0)); // 64 KiB blocks: none is all-zero
    let map = src.allocation(0, 8192).unwrap();
    assert_eq!(map.last().unwrap().kind, ExtentKind::Zero);
    assert_eq!(map.last().unwrap().offset, 4096);
}

/// A minimal hosted sparse extent of `sectors` sectors with 64 KiB grains and no grains.
pub fn hosted_sparse_empty(sectors: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(b"KDMV");
    put_u32(&mut h, 4, 1);
    put_u32(&mut h, 8, 3);
    put_u64(&mut h, 12, sectors);
    put_u64(&mut h, 20, 128);
    put_u32(&mut h, 44, 512);
    put_u64(&mut h, 56, 1);
    h[73..77].copy_from_slice(b"\n \r\n");
    h.resize(4096, 0);
    h
}
