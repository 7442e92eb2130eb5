//! qcow2 images with an external data file (`qemu-img create -o data_file=...`): the guest's
//! clusters live in the data file at their guest offsets, and the L2 tables still decide what
//! the guest sees: with `data_file_raw=off` the data file keeps stale bytes where the guest
//! reads zeros (zeroed and discarded clusters), so the data file alone is not the disk.
//! Every read is compared with `qemu-img convert -O raw`.

mod common;

use std::path::Path;
use std::process::Command;

use blocksource::{BlockSource, SourceError};
use common::*;

const MIB: u64 = 1 << 20;

/// qemu-img / qemu-io run in `dir`, so relative data file names are recorded as given.
fn in_dir(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn qemu_io_in(dir: &Path, image: &str, cmds: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(image);
    in_dir(dir, "qemu-io", &args);
}

fn tools() -> bool {
    let ok = have_qemu_io();
    if !ok {
        eprintln!("skipped: qemu-io is not installed (apt-get install qemu-utils)");
    }
    ok
}

/// A 6 MiB image over data file `data` with `data_file_raw=raw`: patterns written, some of
/// them then zeroed or discarded, so that the data file holds stale non-zero bytes where the
/// guest reads zeros (with raw=off).
fn make(dir: &Path, raw: &str, data: &str) -> std::path::PathBuf {
    in_dir(
        dir,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-o", &format!("data_file={data},data_file_raw={raw}"), "img.qcow2", "6M"],
    );
    qemu_io_in(
        dir,
        "img.qcow2",
        &[
            "write -P 0x11 0 1M",
            "write -P 0x22 2M 512k",
            "write -P 0x33 3M 64k",
            "write -P 0x44 5M 1M",
            // The guest zeroes what it wrote: with raw=off only the L2 zero flag changes.
            "write -z 0 256k",
            "write -z 5M 64k",
            // And discards some.
            "discard 2M 128k",
        ],
    );
    dir.join("img.qcow2")
}

/// QEMU's guest view, with qemu-img run in the image's folder: QEMU resolves a relative data
/// file name against its working directory (we resolve it against the image's folder, as for
/// backing files, which is the same when qemu runs there).
fn qemu_guest(img: &Path) -> Vec<u8> {
    let dir = img.parent().unwrap();
    in_dir(dir, "qemu-img", &["convert", "-O", "raw", img.to_str().unwrap(), "guest.raw"]);
    let data = std::fs::read(dir.join("guest.raw")).unwrap();
    std::fs::remove_file(dir.join("guest.raw")).unwrap();
    data
}

fn check_against_qemu(img: &Path) -> Vec<u8> {
    let want = qemu_guest(img);
    let src = open(img).unwrap_or_else(|e| panic!("{}: {e}", img.display()));
    assert_eq!(src.size(), 6 * MIB);
    assert!(read_all(&src) == want, "guest disk differs from QEMU's guest view");
    check_random_reads(&src, &want, 7, 40);
    // Every range reported as zeros reads as zeros in QEMU's view.
    our_data_map(&src, &want);
    want
}

#[test]
fn a_qcow2_with_a_data_file_reads_back_as_its_guest_disk_not_as_the_stale_data_file() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), "off", "img.data");
    let guest = check_against_qemu(&img);
    // The test is only meaningful if the data file holds old bytes where the guest sees zeros.
    let data = std::fs::read(dir.path().join("img.data")).unwrap();
    assert!(guest[..4096].iter().all(|&b| b == 0));
    assert!(data[..4096].iter().all(|&b| b == 0x11), "the data file should still hold the old pattern");
    assert!(guest[(5 * MIB) as usize..(5 * MIB + 4096) as usize].iter().all(|&b| b == 0));
    assert_eq!(open(&img).unwrap().data_file_name(), Some("img.data"));
}

#[test]
fn a_qcow2_with_a_raw_data_file_reads_back_as_its_guest_disk() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), "on", "img.data");
    let guest = check_against_qemu(&img);
    // data_file_raw: the data file is a consistent raw image of the disk.
    let data = std::fs::read(dir.path().join("img.data")).unwrap();
    assert!(data[..] == guest[..data.len()]);
}

#[test]
fn a_data_file_image_over_a_backing_file_falls_through_to_the_backing_file() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    in_dir(d, "qemu-img", &["create", "-q", "-f", "qcow2", "base.qcow2", "6M"]);
    qemu_io_in(d, "base.qcow2", &["write -P 0x5a 0 6M"]);
    in_dir(
        d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "-o", "data_file=top.data", "top.qcow2"],
    );
    qemu_io_in(d, "top.qcow2", &["write -P 0x6b 1M 1M", "write -z 4M 64k"]);
    let guest = check_against_qemu(&d.join("top.qcow2"));
    assert!(guest[..4096].iter().all(|&b| b == 0x5a) && guest[MIB as usize] == 0x6b);
}

#[test]
fn an_absolute_data_file_name_is_opened_where_it_points() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let data = elsewhere.path().join("disk.data");
    make(dir.path(), "off", data.to_str().unwrap());
    check_against_qemu(&dir.path().join("img.qcow2"));
}

#[test]
fn a_missing_data_file_is_refused_naming_it_and_saying_what_to_do() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), "off", "img.data");
    std::fs::remove_file(dir.path().join("img.data")).unwrap();
    let e = open(&img).unwrap_err();
    assert!(matches!(e, SourceError::Unsupported { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("external data file \"img.data\"") && msg.contains("qemu-img amend"), "{msg}");
}

#[test]
fn a_data_file_cluster_mapped_away_from_its_guest_offset_is_corrupt() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = make(dir.path(), "off", "img.data");
    // Point guest cluster 16 (1 MiB, unallocated) at data file offset 64 KiB.
    let bytes = patched(&img, |d| {
        let l1 = get_u64(d, 40) as usize;
        let l2 = (get_u64(d, l1) & 0x00ff_ffff_ffff_fe00) as usize;
        put_u64(d, l2 + 16 * 8, (1 << 63) | 0x10000);
    });
    std::fs::write(&img, bytes).unwrap();
    let src = open(&img).unwrap();
    let mut buf = vec![0u8; 4096];
    let e = src.read_at(MIB, &mut buf).unwrap_err().to_string();
    assert!(e.contains("not to its guest offset"), "{e}");
}
