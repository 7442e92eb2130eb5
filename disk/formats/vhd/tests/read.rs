//! Reading VHD images made by qemu-img, compared with `qemu-img convert -f vpc -O raw`.

mod common;

use blocksource::BlockSource;
use common::*;
use vhd::{is_vhd, is_vhd_footer, VhdSource};

/// Convert a raw file with scattered data and zero regions to VHD with `opts`, then check
/// whole-disk reads, random reads and the allocation map against QEMU's guest view.
fn roundtrip(size: u64, opts: &str, seed: u64) -> Option<(VhdSource, tempfile::TempDir, Vec<u8>)> {
    if !have_qemu_img() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let img = dir.path().join("img.vhd");
    let data = make_raw(&raw, size, &scattered(size), seed);
    qemu_img(&["convert", "-f", "raw", "-O", "vpc", "-o", opts, s(&raw), s(&img)]);
    let guest = qemu_raw(&img);
    // QEMU rounds the size up to whole CHS geometry; the extra sectors are zeros.
    assert!(
        guest.len() as u64 >= size && guest[..size as usize] == data[..],
        "qemu itself disagrees with the source data"
    );
    assert!(guest[size as usize..].iter().all(|&b| b == 0));

    let src = open(&img).unwrap();
    assert_eq!(src.size(), guest.len() as u64, "guest size differs from QEMU's");
    assert_eq!(src.format(), "vhd");
    assert_eq!(src.describe(), img.display().to_string());
    assert!(read_all(&src) == guest, "read_all differs from QEMU's guest view for {opts}");
    check_random_reads(&src, &guest, seed, 30);
    check_allocation(&src, &guest);
    Some((src, dir, guest))
}

#[test]
fn a_dynamic_vhd_reads_back_as_its_guest_disk() {
    let Some((src, _d, guest)) = roundtrip(24 * MIB + 3 * 4096, "subformat=dynamic", 1) else { return };
    assert!(!src.is_fixed());
    assert_eq!(src.block_size(), Some(2 * MIB));
    assert_eq!(src.creator_app(), "qemu");
    // Whole 2 MiB blocks that hold no data are reported as zeros, never read.
    let zero = check_allocation(&src, &guest);
    assert!(zero >= 10 * MIB, "only {zero} bytes reported Zero");
}

#[test]
fn a_fixed_vhd_reads_back_as_its_guest_disk_without_its_footer() {
    let Some((src, dir, guest)) = roundtrip(20 * MIB + 512, "subformat=fixed", 2) else { return };
    assert!(src.is_fixed());
    assert_eq!(src.block_size(), None);
    let file = std::fs::metadata(dir.path().join("img.vhd")).unwrap().len();
    assert_eq!(file, guest.len() as u64 + 512, "a fixed VHD is the disk plus a 512-byte footer");
}

#[test]
fn a_dynamic_vhd_with_forced_size_keeps_the_exact_size() {
    // force_size: QEMU keeps the requested size and records it in current_size ("qem2").
    let Some((src, _d, guest)) = roundtrip(10 * MIB + 4096, "subformat=dynamic,force_size=on", 3) else { return };
    assert_eq!(guest.len() as u64, 10 * MIB + 4096);
    assert_eq!(src.creator_app(), "qem2");
}

#[test]
fn an_empty_dynamic_vhd_is_all_zeros_and_reads_nothing() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("e.vhd");
    qemu_img(&["create", "-q", "-f", "vpc", "-o", "subformat=dynamic", s(&img), "64M"]);
    let src = open(&img).unwrap();
    let map = src.allocation(0, src.size()).unwrap();
    assert_eq!(map.len(), 1);
    assert_eq!(map[0].kind, blocksource::ExtentKind::Zero);
    assert!(read_all(&src).iter().all(|&b| b == 0));
}

#[test]
fn vhd_images_are_recognised_by_their_footer_at_either_end() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for sub in ["dynamic", "fixed"] {
        let img = dir.path().join(format!("{sub}.vhd"));
        qemu_img(&["create", "-q", "-f", "vpc", "-o", &format!("subformat={sub}"), s(&img), "8M"]);
        let bytes = std::fs::read(&img).unwrap();
        let tail = &bytes[bytes.len() - 512..];
        assert!(is_vhd_footer(tail, bytes.len() as u64), "{sub}: footer at the end not recognised");
        assert_eq!(is_vhd(&bytes[..512]), sub == "dynamic", "{sub}");
        // A fixed disk's footer must leave room for the disk in front of it.
        if sub == "fixed" {
            assert!(!is_vhd_footer(tail, 4096));
        }
    }
    assert!(!is_vhd(b"conecti"));
    assert!(!is_vhd_footer(&[0u8; 512], 1 << 20));
}
