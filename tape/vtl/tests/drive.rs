//! The drive layer (`drive::TapeDrive`) against the emulated drive: the scenarios of the tgt
//! test, plus what tgt lacks (READ POSITION, LOCATE, hard end of medium, WORM, write
//! protection, TapeAlert) and persistence of media files.

use std::sync::Arc;

use drive::{DriveError, ErrorKind, MediaState, ReadOutcome, TapeDrive};
use vtl::{create_medium, EmulatedDrive, MediumOptions};

fn block(f: u64, b: u64, len: usize) -> Vec<u8> {
    let mut x = (f << 32 | b).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const FILES: [&[usize]; 3] = [&[262_144, 300_001, 524_295, 4], &[65_536, 1_048_576, 262_144], &[1000]];

fn read_expect(d: &mut TapeDrive, buf: &mut [u8], f: u64, b: u64) {
    let want = FILES[f as usize][b as usize];
    match d.read_block(buf).unwrap() {
        ReadOutcome::Data(n) => {
            assert_eq!(n, want, "length of file {f} block {b}");
            assert!(buf[..n] == block(f, b, n)[..], "content of file {f} block {b}");
        }
        other => panic!("file {f} block {b}: {other:?}"),
    }
}

fn opts(capacity: u64) -> MediumOptions {
    MediumOptions { capacity, worm: false, write_protected: false, discard: false }
}

#[test]
fn emulated_drive_full_ssc() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("TST001L6");
    create_medium(&data, opts(64 << 20)).unwrap();
    let emu = Arc::new(EmulatedDrive::new("EMU00001", 1 << 20));
    let mut d = TapeDrive::open(emu.clone()).unwrap();
    assert_eq!(d.name(), "EMU00001");
    assert_eq!(d.test_unit_ready().unwrap(), MediaState::NoMedium);
    assert!(matches!(d.write_filemarks(1), Err(DriveError::NoMedium { .. })));

    emu.load_medium(&data).unwrap();
    assert_eq!(d.test_unit_ready().unwrap(), MediaState::Ready);
    d.load().unwrap();
    d.set_variable_block_mode().unwrap();
    let mut objects = 0u64;
    for (f, lens) in FILES.iter().enumerate() {
        for (b, &len) in lens.iter().enumerate() {
            assert!(!d.write_block(&block(f as u64, b as u64, len)).unwrap());
            objects += 1;
        }
        d.write_filemarks(1).unwrap();
        objects += 1;
        let p = d.position().unwrap().unwrap();
        assert_eq!((p.file, p.block, p.object), (f as u64 + 1, 0, Some(objects)));
    }
    assert_eq!(d.reports_position(), Some(true));

    // Read back; lengths from ILI.
    d.rewind().unwrap();
    let mut buf = vec![0u8; 2 << 20];
    for (f, lens) in FILES.iter().enumerate() {
        for b in 0..lens.len() {
            read_expect(&mut d, &mut buf, f as u64, b as u64);
        }
        assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::Filemark);
    }
    assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::EndOfData);

    // Hardware LOCATE to logical objects: file 1 block 1 is object 4 (blocks) + 1 (FM) + 1.
    d.locate_object(6).unwrap();
    read_expect(&mut d, &mut buf, 1, 1);
    // The tracked position is recovered from READ POSITION (long form: file number) and the
    // file starts learnt while writing.
    let p = d.position().unwrap().unwrap();
    assert_eq!((p.file, p.block, p.object), (1, 2, Some(7)));
    // locate(file, block) uses LOCATE, never REWIND + SPACE, on this drive.
    let (rewinds, spaces) = (emu.commands_seen(0x01), emu.commands_seen(0x11));
    for (f, b) in [(2u64, 0u64), (0, 3), (0, 1), (1, 2), (1, 0)] {
        d.locate(f, b).unwrap();
        let p = d.position().unwrap().unwrap();
        assert_eq!((p.file, p.block), (f, b));
        read_expect(&mut d, &mut buf, f, b);
    }
    assert_eq!((emu.commands_seen(0x01), emu.commands_seen(0x11)), (rewinds, spaces));
    assert!(emu.commands_seen(0x92) >= 6);
    // A block larger than the buffer, then space back and read it whole.
    d.locate(1, 1).unwrap();
    let e = d.read_block(&mut buf[..4096]).unwrap_err();
    assert!(matches!(e, DriveError::BlockTooLarge { block_len: 1_048_576, .. }), "{e:?}");
    d.space_blocks(-1).unwrap();
    read_expect(&mut d, &mut buf, 1, 1);

    // Append after end of data, then a hard end: early warning first, then VOLUME OVERFLOW.
    d.space_to_eod().unwrap();
    let mut warned = false;
    let err = loop {
        match d.write_block(&vec![7u8; 1 << 20]) {
            Ok(ew) => warned |= ew,
            Err(e) => break e,
        }
    };
    assert!(warned, "early warning before the hard end");
    assert!(matches!(err, DriveError::EndOfMedium { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::EndOfMedium);
    assert!(err.to_string().contains("continue on the next cartridge"), "{err}");

    // TapeAlert.
    assert!(!d.needs_cleaning().unwrap());
    emu.set_tape_alerts(&[20]);
    assert!(d.needs_cleaning().unwrap());
    emu.set_tape_alerts(&[]);

    // PREVENT MEDIUM REMOVAL is enforced by the emulation.
    d.prevent_removal(true).unwrap();
    assert!(emu.unload_medium().is_err());
    d.prevent_removal(false).unwrap();
    d.unload().unwrap();
    assert_eq!(d.test_unit_ready().unwrap(), MediaState::NoMedium);

    // The media file persists: load it again and read the first file.
    emu.load_medium(&data).unwrap();
    d.rewind().unwrap();
    for b in 0..FILES[0].len() {
        read_expect(&mut d, &mut buf, 0, b as u64);
    }
    assert_eq!(emu.unload_medium().unwrap().as_deref(), Some(data.as_path()));

    // WORM: detected and never written.
    let worm = dir.path().join("WRM001L6");
    create_medium(&worm, MediumOptions { worm: true, ..opts(8 << 20) }).unwrap();
    emu.load_medium(&worm).unwrap();
    assert_eq!(d.test_unit_ready().unwrap(), MediaState::Worm);
    assert!(d.is_worm());
    d.rewind().unwrap();
    let e = d.write_block(&[1u8; 4096]).unwrap_err();
    assert!(matches!(e, DriveError::Worm { .. }), "{e:?}");
    assert!(e.to_string().contains("WORM"), "{e}");
    assert!(matches!(d.erase(false), Err(DriveError::Worm { .. })));
    emu.unload_medium().unwrap();

    // Write-protected cartridge.
    let wp = dir.path().join("WP0001L6");
    create_medium(&wp, MediumOptions { write_protected: true, ..opts(8 << 20) }).unwrap();
    emu.load_medium(&wp).unwrap();
    assert_eq!(d.test_unit_ready().unwrap(), MediaState::WriteProtected);
    let e = d.write_block(&[1u8; 4096]).unwrap_err();
    assert!(e.to_string().contains("write-protected"), "{e}");
}

#[test]
fn emulated_worm_refuses_overwrite_at_the_device_too() {
    // Even a caller that bypasses the drive layer's check cannot overwrite WORM data.
    use scsi::cdb::ssc;
    use scsi::{Command, ScsiTransport, SenseKey};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("W");
    create_medium(&p, MediumOptions { capacity: 1 << 20, worm: true, write_protected: false, discard: false }).unwrap();
    let emu = EmulatedDrive::new("EMU2", 1 << 16);
    emu.load_medium(&p).unwrap();
    // The load's UNIT ATTENTION (28/00) answers the first command.
    let c = emu.execute(&mut Command::none(&scsi::cdb::spc::test_unit_ready())).unwrap();
    assert_eq!(c.sense.map(|s| (s.key, s.asc)), Some((SenseKey::UnitAttention, 0x28)));
    let c = emu.execute(&mut Command::write(&ssc::write6_variable(4), &[1, 2, 3, 4])).unwrap();
    assert_eq!(c.status, scsi::Status::Good, "appending to WORM is allowed");
    emu.execute(&mut Command::none(&ssc::rewind(false))).unwrap();
    let c = emu.execute(&mut Command::write(&ssc::write6_variable(4), &[5, 6, 7, 8])).unwrap();
    let s = c.sense.unwrap();
    assert_eq!((s.key, s.asc, s.ascq), (SenseKey::DataProtect, 0x30, 0x0c));
}

/// A discarding cartridge (benchmarks): writes are positioned and counted against capacity
/// and early warning like on any cartridge; small blocks are kept, the data of large ones is
/// dropped (reading one is a MEDIUM ERROR); the file stays small and survives a reload.
#[test]
fn discarding_cartridge_counts_writes_and_drops_large_blocks() {
    use vtl::{medium_options, set_medium_discard, DISCARD_KEEP};
    let dir = tempfile::tempdir().unwrap();
    let capacity = 16 << 20;
    let early_warning = 4 << 20;
    // The same writes to a normal and to a discarding cartridge.
    let mut outcomes = Vec::new();
    for discard in [false, true] {
        let p = dir.path().join(if discard { "DIS001L6" } else { "NRM001L6" });
        create_medium(&p, MediumOptions { discard, ..opts(capacity) }).unwrap();
        assert_eq!(medium_options(&p).unwrap().discard, discard);
        let emu = Arc::new(EmulatedDrive::new("EMU3", early_warning));
        emu.load_medium(&p).unwrap();
        let mut d = TapeDrive::open(emu.clone()).unwrap();
        assert_eq!(d.test_unit_ready().unwrap(), MediaState::Ready);
        d.set_variable_block_mode().unwrap();
        d.rewind().unwrap();
        d.write_block(&block(0, 0, 1000)).unwrap();
        d.write_block(&block(0, 1, DISCARD_KEEP)).unwrap();
        d.write_filemarks(1).unwrap();
        let mut ews = Vec::new();
        let err = loop {
            match d.write_block(&block(1, ews.len() as u64, 1 << 20)) {
                Ok(ew) => ews.push(ew),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, DriveError::EndOfMedium { .. }), "{err:?}");
        let size = std::fs::metadata(&p).unwrap().len();
        outcomes.push(ews.clone());
        if !discard {
            assert!(size > 10 << 20, "normal cartridge stores the data: {size}");
            continue;
        }
        assert!(size < 200 << 10, "discarding cartridge keeps lengths only: {size}");
        // Reload from the file: positions, kept blocks, dropped blocks.
        d.unload().unwrap();
        emu.unload_medium().unwrap();
        emu.load_medium(&p).unwrap();
        assert_eq!(d.test_unit_ready().unwrap(), MediaState::Ready);
        d.rewind().unwrap();
        let mut buf = vec![0u8; 2 << 20];
        assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::Data(1000));
        assert!(buf[..1000] == block(0, 0, 1000)[..]);
        assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::Data(DISCARD_KEEP));
        assert!(buf[..DISCARD_KEEP] == block(0, 1, DISCARD_KEEP)[..]);
        assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::Filemark);
        match d.read_block(&mut buf).unwrap_err() {
            DriveError::Medium { sense, .. } => {
                assert_eq!((sense.key, sense.asc, sense.ascq), (scsi::SenseKey::MediumError, 0x11, 0x00))
            }
            other => panic!("{other:?}"),
        }
        // Every block is still on the cartridge: end of data after the last one.
        d.locate_object(2 + ews.len() as u64).unwrap();
        assert!(matches!(d.read_block(&mut buf), Err(DriveError::Medium { .. })));
        assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::EndOfData, "head past the discarded block");
        // Switched back to a normal cartridge, new writes keep their data again.
        d.unload().unwrap();
        emu.unload_medium().unwrap();
        set_medium_discard(&p, false).unwrap();
        assert_eq!(medium_options(&p).unwrap(), MediumOptions { discard: false, ..opts(capacity) });
        emu.load_medium(&p).unwrap();
        assert_eq!(d.test_unit_ready().unwrap(), MediaState::Ready);
        d.locate(1, 2).unwrap();
        d.write_block(&block(2, 0, 1 << 20)).unwrap();
        d.locate(1, 2).unwrap();
        assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::Data(1 << 20));
        assert!(buf[..1 << 20] == block(2, 0, 1 << 20)[..]);
    }
    assert_eq!(outcomes[0], outcomes[1], "early warning and the hard end at the same blocks");
    assert!(outcomes[1].contains(&true) && outcomes[1].contains(&false));
}
