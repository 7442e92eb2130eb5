//! Damaged, hostile and unsupported images: clear errors naming the file, never a panic.

mod common;

use blocksource::{BlockSource, SourceError};
use common::*;

/// The dynamic header of qemu-made images sits right after the footer copy.
const DYN: usize = 512;

fn dynamic() -> Option<Vec<u8>> {
    have_qemu_img().then(|| qemu_made("dynamic", 8 * MIB, 7))
}

fn open_err(bytes: Vec<u8>) -> SourceError {
    refused(open_mem(bytes))
}

fn assert_corrupt(e: &SourceError, words: &str) {
    testkit::image::assert_corrupt(e, "mem.vhd", words);
}

/// Patch the image and fix every checksum.
fn with(good: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut d = good.to_vec();
    f(&mut d);
    fix_checksums(&mut d);
    d
}

#[test]
fn a_damaged_footer_copy_falls_back_to_the_footer_at_the_end() {
    let Some(good) = dynamic() else { return };
    let mut d = good.clone();
    d[100] ^= 0xff; // inside the copy at the start, checksum not fixed
    let src = open_mem(d).unwrap();
    try_read_all(&src).unwrap();
    // Both copies damaged: the checksum error names the footer.
    let mut d = good.clone();
    d[100] ^= 0xff;
    let n = d.len();
    d[n - 400] ^= 0xff;
    assert_corrupt(&open_err(d), "footer checksum");
}

#[test]
fn a_damaged_dynamic_header_fails_its_checksum() {
    let Some(good) = dynamic() else { return };
    let mut d = good.clone();
    d[DYN + 600] ^= 1;
    assert_corrupt(&open_err(d), "dynamic disk header checksum");
}

#[test]
fn a_bat_that_covers_less_than_the_disk_is_refused() {
    let Some(good) = dynamic() else { return };
    let d = with(&good, |d| put_u32(d, DYN + 28, 1));
    assert_corrupt(&open_err(d), "cover less than");
}

#[test]
fn a_bat_entry_past_the_end_of_the_file_is_refused() {
    let Some(good) = dynamic() else { return };
    let table = get_u64(&good, DYN + 16) as usize;
    let d = with(&good, |d| put_u32(d, table, 0xffff_fff0));
    assert_corrupt(&open_err(d), "past the end");
}

#[test]
fn a_bat_past_the_end_of_the_file_is_refused() {
    let Some(good) = dynamic() else { return };
    let d = with(&good, |d| put_u64(d, DYN + 16, u64::MAX - 8));
    assert_corrupt(&open_err(d), "BAT at byte");
}

#[test]
fn an_absurd_size_is_refused_without_allocating() {
    let Some(good) = dynamic() else { return };
    let d = with(&good, |d| {
        for at in [0, d.len() - 512] {
            put_u64(d, at + 48, u64::MAX / 2);
        }
        put_u32(d, DYN + 28, u32::MAX);
    });
    assert_corrupt(&open_err(d), "over the limit");
}

#[test]
fn a_block_size_that_is_not_a_power_of_two_is_refused() {
    let Some(good) = dynamic() else { return };
    let d = with(&good, |d| put_u32(d, DYN + 32, 3 << 20));
    assert_corrupt(&open_err(d), "power of two");
}

#[test]
fn a_dynamic_header_offset_past_the_end_is_refused() {
    let Some(good) = dynamic() else { return };
    let d = with(&good, |d| {
        let n = d.len();
        put_u64(d, 16, n as u64);
        put_u64(d, n - 512 + 16, n as u64);
    });
    assert_corrupt(&open_err(d), "dynamic disk header offset");
}

#[test]
fn a_truncated_fixed_vhd_is_refused() {
    if !have_qemu_img() {
        return;
    }
    let good = qemu_made("fixed", 4 * MIB, 8);
    // Keep the footer but drop a MiB of disk in front of it.
    let mut d = good[..good.len() - 512 - MIB as usize].to_vec();
    d.extend_from_slice(&good[good.len() - 512..]);
    assert_corrupt(&open_err(d), "does not fit in front of the footer");
}

#[test]
fn a_differencing_vhd_is_refused_naming_its_parent() {
    let Some(good) = dynamic() else { return };
    let d = with(&good, |d| {
        for at in [0, d.len() - 512] {
            put_u32(d, at + 60, 4);
        }
        for (i, c) in "base.vhd".encode_utf16().enumerate() {
            d[DYN + 64 + 2 * i..DYN + 66 + 2 * i].copy_from_slice(&c.to_be_bytes());
        }
    });
    let e = open_err(d);
    assert!(matches!(e, SourceError::Unsupported { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("differencing") && msg.contains("base.vhd") && msg.contains("Merge"), "{msg}");
}

#[test]
fn a_file_without_any_footer_is_not_a_vhd() {
    assert_corrupt(&open_err(vec![0u8; 4096]), "no VHD footer");
    assert_corrupt(&open_err(b"conectix".to_vec()), "shorter than a VHD footer");
}

#[test]
fn reads_past_the_end_of_the_disk_are_errors() {
    let Some(good) = dynamic() else { return };
    let src = open_mem(good).unwrap();
    let mut b = [0u8; 2];
    assert!(matches!(src.read_at(src.size() - 1, &mut b), Err(SourceError::OutOfRange { .. })));
}
