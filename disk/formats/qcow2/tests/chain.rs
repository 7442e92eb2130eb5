//! Backing chains: qcow2 and raw backing files, loops, depth limits, missing files.

mod common;

use std::path::Path;

use blocksource::{BlockSource, ExtentKind, SourceError};
use common::*;

const MIB: u64 = 1 << 20;

fn create(img: &Path, size: &str, backing: Option<(&str, &str)>) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if let Some((b, fmt)) = backing {
        args.extend_from_slice(&["-b", b, "-F", fmt]);
    }
    args.extend_from_slice(&[s(img), size]);
    qemu_img(&args);
}

/// base (qcow2) <- mid (qcow2) <- top, with relative backing names, data in every layer and
/// a zero-flag write in the top hiding base data.
fn three_layers(dir: &Path) -> std::path::PathBuf {
    let base = dir.join("base.qcow2");
    let mid = dir.join("mid.qcow2");
    let top = dir.join("top.qcow2");
    create(&base, "32M", None);
    create(&mid, "32M", Some(("base.qcow2", "qcow2")));
    create(&top, "32M", Some(("mid.qcow2", "qcow2")));
    if have_qemu_io() {
        qemu_io(&base, &["write -P 0x11 0 4M", "write -P 0x12 20M 1M"]);
        qemu_io(&mid, &["write -P 0x22 2M 1M", "write -P 0x23 10M 100k"]);
        qemu_io(&top, &["write -P 0x55 1M 64k", "write -P 0x56 2500k 10k", "write -z 3M 512k"]);
    } else {
        // Without qemu-io: fill the base via convert, the upper layers stay thin.
        let raw = dir.join("base.raw");
        make_raw(&raw, 32 * MIB, &scattered(32 * MIB), 20);
        qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&base)]);
    }
    top
}

#[test]
fn chain_of_three() {
    let dir = tempfile::tempdir().unwrap();
    let top = three_layers(dir.path());
    let data = qemu_raw(&top);
    let src = open(&top).unwrap();
    assert_eq!(src.backing_file_name(), Some("mid.qcow2"));
    let mid = src.backing().unwrap();
    assert_eq!(mid.format(), "qcow2");
    assert!(mid.describe().ends_with("mid.qcow2"));
    assert!(read_all(&src) == data);
    check_random_reads(&src, &data, 21, 50);
    assert_alloc_matches_qemu(&src, &top, &data);
    if have_qemu_io() {
        // The zero-flag write in the top hides base data: Zero, and reads zeros.
        let ext = src.allocation(3 * MIB, 512 << 10).unwrap();
        assert_eq!(ext.len(), 1);
        assert_eq!(ext[0].kind, ExtentKind::Zero);
        assert!(data[3 << 20..(3 << 20) + (512 << 10)].iter().all(|&b| b == 0));
        assert_eq!(data[1 << 20], 0x55);
        assert_eq!(data[0], 0x11);
        assert_eq!(data[2 << 20], 0x22);
    }
}

#[test]
fn raw_backing_smaller_than_top() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let top = dir.path().join("top.qcow2");
    let base_data = make_raw(&base, 6 * MIB, &scattered(6 * MIB), 22);
    // The top is bigger than its backing file: past 6 MiB, unallocated clusters read zeros.
    create(&top, "10M", Some(("base.raw", "raw")));
    if have_qemu_io() {
        qemu_io(&top, &["write -P 0x77 1M 64k", "write -P 0x78 8M 64k"]);
    }
    let data = qemu_raw(&top);
    assert_eq!(data[..4096], base_data[..4096]);
    let src = open(&top).unwrap();
    assert_eq!(src.backing().unwrap().format(), "raw");
    assert!(read_all(&src) == data);
    check_random_reads(&src, &data, 23, 50);
    // Our raw test source cannot see holes, so only check that our Zero ranges are zeros and
    // that qemu's data ranges are Data for us.
    let ours = our_data_map(&src, &data);
    let theirs = qemu_data_map(&top, src.size());
    assert!((0..ours.len()).all(|i| !theirs[i] || ours[i]));
    let tail = src.allocation(6 * MIB, 4 * MIB).unwrap();
    let data_ext: Vec<_> = tail.iter().filter(|e| e.kind == ExtentKind::Data).map(|e| (e.offset, e.len)).collect();
    if have_qemu_io() {
        assert_eq!(data_ext, vec![(8 * MIB, 64 << 10)]);
    } else {
        assert!(data_ext.is_empty());
    }
}

#[test]
fn backing_without_format_is_probed() {
    let dir = tempfile::tempdir().unwrap();
    let base_raw = dir.path().join("b.raw");
    let base = dir.path().join("b.qcow2");
    let top = dir.path().join("t.qcow2");
    make_raw(&base_raw, 4 * MIB, &scattered(4 * MIB), 24);
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&base_raw), s(&base)]);
    create(&top, "4M", Some(("b.qcow2", "qcow2")));
    let expected = qemu_raw(&top);
    // Turn the backing-format extension into an unknown one: the format must be probed.
    let bytes = patched(&top, |d| {
        let pos = d[..65536].windows(4).position(|w| w == [0xe2, 0x79, 0x2a, 0xca]).unwrap();
        put_u32(d, pos, 0x1234_5678);
    });
    std::fs::write(&top, bytes).unwrap();
    let src = open(&top).unwrap();
    assert_eq!(src.backing().unwrap().format(), "qcow2");
    assert!(read_all(&src) == expected);

    // Same with a raw backing file that has no qcow2 magic.
    let top2 = dir.path().join("t2.qcow2");
    create(&top2, "4M", Some(("b.raw", "raw")));
    let expected = qemu_raw(&top2);
    let bytes = patched(&top2, |d| {
        let pos = d[..65536].windows(4).position(|w| w == [0xe2, 0x79, 0x2a, 0xca]).unwrap();
        put_u32(d, pos, 0x1234_5678);
    });
    std::fs::write(&top2, bytes).unwrap();
    let src = open(&top2).unwrap();
    assert_eq!(src.backing().unwrap().format(), "raw");
    assert!(read_all(&src) == expected);
}

#[test]
fn backing_loop_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    create(&a, "1M", None);
    create(&b, "1M", None);
    qemu_img(&["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", s(&a)]);
    qemu_img(&["rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", s(&b)]);
    let err = open(&a).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SourceError::Corrupt { .. }), "{msg}");
    assert!(msg.contains("backing file loop") && msg.contains("a.qcow2") && msg.contains("b.qcow2"), "{msg}");

    // An image that is its own backing file.
    let c = dir.path().join("c.qcow2");
    create(&c, "1M", None);
    qemu_img(&["rebase", "-u", "-b", "c.qcow2", "-F", "qcow2", s(&c)]);
    let msg = open(&c).unwrap_err().to_string();
    assert!(msg.contains("backing file loop") && msg.contains("c.qcow2"), "{msg}");
}

#[test]
fn too_deep_chain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let name = |i: usize| dir.path().join(format!("l{i}.qcow2"));
    create(&name(0), "1M", None);
    for i in 1..=qcow2::MAX_CHAIN_LEN {
        let prev = format!("l{}.qcow2", i - 1);
        // -u: do not open the (ever deeper) backing chain while creating.
        qemu_img(&["create", "-q", "-f", "qcow2", "-u", "-b", &prev, "-F", "qcow2", s(&name(i)), "1M"]);
    }
    // Exactly MAX_CHAIN_LEN images is fine...
    let ok = open(&name(qcow2::MAX_CHAIN_LEN - 1)).unwrap();
    assert!(read_all(&ok).iter().all(|&b| b == 0));
    // ...one more is not.
    let err = open(&name(qcow2::MAX_CHAIN_LEN)).unwrap_err();
    assert!(matches!(err, SourceError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("longer than 64"), "{err}");
}

#[test]
fn missing_backing_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("top.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-u", "-b", "gone.qcow2", "-F", "qcow2", s(&top), "1M"]);
    let msg = open(&top).unwrap_err().to_string();
    assert!(msg.contains("gone.qcow2") && msg.contains("top.qcow2"), "{msg}");
    // Network backing files are not local files.
    let net = dir.path().join("net.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-u", "-b", "nbd://10.0.0.1/x", "-F", "raw", s(&net), "1M"]);
    let err = open(&net).unwrap_err();
    assert!(matches!(err, SourceError::Unsupported { .. }), "{err}");
}

#[test]
fn unsupported_backing_format() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vmdk");
    let top = dir.path().join("top.qcow2");
    qemu_img(&["create", "-q", "-f", "vmdk", s(&base), "1M"]);
    create(&top, "1M", Some(("base.vmdk", "vmdk")));
    let err = open(&top).unwrap_err();
    assert!(matches!(err, SourceError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("vmdk"), "{err}");
}
