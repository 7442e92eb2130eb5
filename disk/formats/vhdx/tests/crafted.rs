//! Images qemu-img cannot make, built by `common::build` from the spec: differencing chains,
//! 4 KiB logical sectors, every block state, and pending logs that must be replayed.

mod common;

use blocksource::{BlockSource, ExtentKind, SourceError};
use common::build::{self, guid_text, Image, LogWrite, MIB};
use common::*;

fn write_file(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng(seed | 1).fill(&mut v);
    v
}

/// A base image and a differencing child over it (and a grandchild), checked byte for byte
/// against the expected merged disk.
#[test]
fn differencing_chain() {
    let dir = tempfile::tempdir().unwrap();
    let size = 12 * MIB + 4096;
    let mut expected = vec![0u8; size as usize];
    let mut put = |img: &mut Image, off: u64, data: &[u8]| {
        img.write(off, data);
        expected[off as usize..off as usize + data.len()].copy_from_slice(data);
    };

    let mut base = Image::new(size, MIB, 512);
    base.data_write_guid = [0xAB; 16];
    put(&mut base, 0, &random(3 * MIB as usize, 1));
    put(&mut base, 6 * MIB + 1000, &random(100_000, 2));
    put(&mut base, size - 8192, &random(8192, 3));
    write_file(dir.path(), "base.vhdx", &base.finish());

    let mut child = Image::new(size, 2 * MIB, 512);
    child.data_write_guid = [0xCD; 16];
    child.parent = Some(vec![
        ("parent_linkage".into(), guid_text(&base.data_write_guid)),
        ("relative_path".into(), ".\\base.vhdx".into()),
        ("absolute_win32_path".into(), "\\\\?\\D:\\vms\\base.vhdx".into()),
    ]);
    put(&mut child, 512, &random(4096, 4)); // partial block over base data
    put(&mut child, 2 * MIB - 1024, &random(3072, 5)); // crosses a block boundary
    put(&mut child, 8 * MIB, &random(2 * MIB as usize, 6)); // a whole block written
    child.set_state(4, 6); // make block 4 (8..10 MiB) FULLY_PRESENT
    write_file(dir.path(), "child.vhdx", &child.finish());

    let mut grand = Image::new(size, MIB, 512);
    grand.parent = Some(vec![
        ("parent_linkage".into(), guid_text(&child.data_write_guid)),
        // No relative path: found by the file name of the absolute path.
        ("absolute_win32_path".into(), "\\\\?\\C:\\elsewhere\\child.vhdx".into()),
    ]);
    put(&mut grand, 6 * MIB, &random(512, 7));
    put(&mut grand, 11 * MIB, &vec![0u8; 8192]); // zeros written over nothing
    let mut grand_bytes = grand.finish();
    // Block 1 ZERO hides the base's data there.
    let b1 = build::BAT_OFFSET as usize + 8;
    put_u64(&mut grand_bytes, b1, 2);
    expected[MIB as usize..2 * MIB as usize].fill(0);
    let top = write_file(dir.path(), "grand.vhdx", &grand_bytes);

    let src = open(&top).unwrap();
    assert!(src.is_differencing());
    assert_eq!(src.parent_name(), Some("child.vhdx"));
    assert_eq!(src.size(), size);
    assert!(read_all(&src) == expected, "differencing chain reads differ");
    check_random_reads(&src, &expected, 8, 40);
    let zero = check_allocation(&src, &expected);
    assert!(zero >= 4 * MIB, "only {zero} bytes reported Zero");
    // Sector-granular: the child's partial block maps its written sectors as Data.
    let ext = src.allocation(0, 3 * MIB).unwrap();
    assert_eq!(ext[0].kind, ExtentKind::Data);
}

#[test]
fn differencing_parent_checks() {
    let dir = tempfile::tempdir().unwrap();
    let mut base = Image::new(4 * MIB, MIB, 512);
    base.write(0, &random(MIB as usize, 9));
    write_file(dir.path(), "base.vhdx", &base.finish());
    let child_with = |linkage: String, path: &str| {
        let mut c = Image::new(4 * MIB, MIB, 512);
        c.parent = Some(vec![("parent_linkage".into(), linkage), ("relative_path".into(), path.into())]);
        c.write(MIB, &random(4096, 10));
        c.finish()
    };
    // Wrong linkage: the parent changed since the child was made.
    let p = write_file(dir.path(), "c1.vhdx", &child_with(guid_text(&[0x99; 16]), "base.vhdx"));
    let e = open(&p).unwrap_err();
    assert!(matches!(e, SourceError::Corrupt { .. }) && e.to_string().contains("DataWriteGuid"), "{e}");
    // Missing parent.
    let p = write_file(dir.path(), "c2.vhdx", &child_with(guid_text(&base.data_write_guid), "nope.vhdx"));
    let e = open(&p).unwrap_err();
    assert!(e.to_string().contains("nope.vhdx"), "{e}");
    // A child naming itself.
    let p = write_file(dir.path(), "c3.vhdx", &child_with(guid_text(&base.data_write_guid), "c3.vhdx"));
    let e = open(&p).unwrap_err();
    assert!(e.to_string().contains("loop"), "{e}");
    // In memory with no opener: a clear error, no panic.
    let e = open_mem(child_with(guid_text(&base.data_write_guid), "base.vhdx")).unwrap_err();
    assert!(matches!(e, SourceError::Unsupported { .. }), "{e}");
}

#[test]
fn logical_sector_4k() {
    for (bs, seed) in [(MIB, 11), (32 * MIB, 12)] {
        let size = 40 * MIB + 8192;
        let mut img = Image::new(size, bs, 4096);
        let mut expected = vec![0u8; size as usize];
        for (off, len) in [(0u64, 8192usize), (5 * MIB + 4096, 300_000), (size - 4096, 4096)] {
            let d = random(len, seed + off);
            img.write(off, &d);
            expected[off as usize..off as usize + len].copy_from_slice(&d);
        }
        let bytes = img.finish();
        let dir = tempfile::tempdir().unwrap();
        let p = write_file(dir.path(), "s4k.vhdx", &bytes);
        let src = open(&p).unwrap();
        assert_eq!(src.logical_sector_size(), 4096);
        assert_eq!(src.physical_sector_size(), 4096);
        assert!(src.io_hints().alignment >= 4096);
        assert!(read_all(&src) == expected);
        check_random_reads(&src, &expected, seed, 20);
        check_allocation(&src, &expected);
        // (qemu-img 10 refuses VHDX with 4 KiB logical sectors, so there is no QEMU cross-check.)
    }
}

#[test]
fn block_states_read_as_zero() {
    let mut img = Image::new(8 * MIB, MIB, 512);
    for b in 0..8 {
        img.write(b * MIB, &vec![0x77; MIB as usize]);
    }
    img.set_state(1, 1); // UNDEFINED (offset kept)
    img.set_state(2, 2); // ZERO
    img.set_state(3, 3); // UNMAPPED
    img.set_state(4, 0); // NOT_PRESENT
    let bytes = img.finish();
    let src = open_mem(bytes).unwrap();
    let data = read_all(&src);
    for b in 0..8usize {
        let want = if (1..=4).contains(&b) { 0 } else { 0x77 };
        assert!(data[b << 20..(b + 1) << 20].iter().all(|&x| x == want), "block {b}");
    }
    let ext = src.allocation(0, 8 * MIB).unwrap();
    assert_eq!(ext.len(), 3, "{ext:?}");
    assert_eq!((ext[1].offset, ext[1].len, ext[1].kind), (MIB, 4 * MIB, ExtentKind::Zero));
}

/// An image whose BAT sector on disk is stale, with the up-to-date sector in the log.
fn image_with_pending_log(entries: &[(u64, u32, Vec<LogWrite>)]) -> (Vec<u8>, Vec<u8>) {
    let mut img = Image::new(8 * MIB, MIB, 512);
    img.write(0, &random(2 * MIB as usize, 20));
    img.write(5 * MIB, &random(MIB as usize, 21));
    let mut f = img.finish();
    let expected = read_all(&open_mem(f.clone()).unwrap());
    img.log_guid = [0x5A; 16];
    img.write_headers(&mut f, 5);
    for (i, (pos, tail, writes)) in entries.iter().enumerate() {
        let e = build::log_entry(&img.log_guid, 100 + i as u64, *tail, writes, f.len() as u64);
        let at = (build::LOG_OFFSET + pos) as usize;
        f[at..at + e.len()].copy_from_slice(&e);
    }
    (f, expected)
}

#[test]
fn log_replay_restores_stale_metadata() {
    let bat = build::BAT_OFFSET;
    // What the log must bring back: the real first BAT sector and metadata table sector.
    let (probe, _) = image_with_pending_log(&[]);
    let bat_sector = probe[bat as usize..bat as usize + 4096].to_vec();
    let writes = vec![LogWrite::Data(bat, bat_sector.clone())];
    // Entry 1 at ring offset 0 is its own tail.
    let (mut f, expected) = image_with_pending_log(&[(0, 0, writes)]);
    // Make the on-disk BAT stale: all blocks NOT_PRESENT.
    f[bat as usize..bat as usize + 4096].fill(0);
    let src = open_mem(f.clone()).unwrap();
    assert_eq!(src.replayed_log_entries(), 1);
    assert!(read_all(&src) == expected, "replayed image reads differ");
    check_allocation(&src, &expected);

    // A zero descriptor after a data write: later entries win.
    let (probe, _) = image_with_pending_log(&[]);
    let mut zeroed_expected = expected.clone();
    drop(probe);
    zeroed_expected[..2 * MIB as usize].fill(0); // BAT entries of blocks 0..1 zeroed below
    let mut half = bat_sector.clone();
    half[..16].fill(0);
    let e1 = vec![LogWrite::Data(bat, bat_sector.clone())];
    let e2 = vec![LogWrite::Zero(bat + 4096, 4096), LogWrite::Data(bat, half)];
    let (mut f2, _) = image_with_pending_log(&[(0, 0, e1), (4096 * 2, 0, e2)]);
    f2[bat as usize..bat as usize + 4096].fill(0);
    let src = open_mem(f2).unwrap();
    assert_eq!(src.replayed_log_entries(), 2);
    assert!(read_all(&src) == zeroed_expected);

    // The same log with a damaged entry CRC: no valid sequence is left, which is corrupt.
    let at = (build::LOG_OFFSET + 100) as usize;
    f[at] ^= 0xff;
    let e = open_mem(f).unwrap_err();
    assert!(matches!(e, SourceError::Corrupt { .. }) && e.to_string().contains("qemu-img check"), "{e}");
}

#[test]
fn log_entries_of_another_log_guid_are_ignored() {
    let (probe, _) = image_with_pending_log(&[]);
    let bat = build::BAT_OFFSET as usize;
    let sector = probe[bat..bat + 4096].to_vec();
    let (mut f, expected) = image_with_pending_log(&[(0, 0, vec![LogWrite::Data(bat as u64, sector)])]);
    // A valid older entry with a different GUID must not be replayed: point the header's log
    // at a fresh GUID and add one harmless entry for it.
    let other = build::log_entry(&[0x77; 16], 500, 8192, &[], f.len() as u64);
    let at = (build::LOG_OFFSET + 8192) as usize;
    f[at..at + other.len()].copy_from_slice(&other);
    for h in [64usize << 10, 128 << 10] {
        f[h + 48..h + 64].copy_from_slice(&[0x77; 16]);
        fix_crc(&mut f, h, 4096, 4);
    }
    let src = open_mem(f).unwrap();
    assert_eq!(src.replayed_log_entries(), 1);
    // The real BAT on disk was never made stale here, so the data is intact.
    assert!(read_all(&src) == expected);
}

#[test]
fn huge_pending_log_is_refused_clearly() {
    let (mut f, _) = image_with_pending_log(&[]);
    for h in [64usize << 10, 128 << 10] {
        put_u32(&mut f, h + 68, 64 << 20);
        fix_crc(&mut f, h, 4096, 4);
    }
    f.resize(80 << 20, 0);
    let e = open_mem(f).unwrap_err();
    assert!(matches!(e, SourceError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("unreplayed log") && e.to_string().contains("qemu-img check -r all"), "{e}");
}
