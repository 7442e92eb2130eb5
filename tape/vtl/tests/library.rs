//! The changer and drive layers (`changer::MediaChanger`, `drive::TapeDrive`) against the
//! emulated library: what the tgt test checks (inventory, barcodes, DVCID, moves and their
//! errors) plus what tgt cannot do (persistence, cleaning, a cartridge pulled mid-write,
//! medium errors, operator mail slot actions). Each test has its own library directory.

use std::path::Path;
use std::sync::Arc;

use changer::{ChangerError, ElementKind, MediaChanger};
use drive::{DriveError, ErrorKind, MediaState, ReadOutcome, TapeDrive};
use scsi::cdb::smc::{self, ElementAddresses, ElementType};
use scsi::{Command, ScsiTransport, SenseKey, Status};
use vtl::library::{DRIVE_BASE, MAIL_SLOT_BASE, PICKER_ADDRESS, SLOT_BASE};
use vtl::{CartridgeSpec, EmulatedLibrary, LibraryConfig, LibraryError};

const MB: u64 = 1 << 20;

fn cart(barcode: &str, capacity: u64) -> CartridgeSpec {
    CartridgeSpec { barcode: barcode.into(), capacity, worm: false }
}

/// 2 drives, 6 slots, 2 mail slots; TST001L6..TST003L6 in 1000..1002, CLN001L1 in 1003.
fn library(dir: &Path) -> Arc<EmulatedLibrary> {
    let cfg = LibraryConfig { drives: 2, slots: 6, mail_slots: 2, early_warning: MB };
    let carts = [cart("TST001L6", 64 * MB), cart("TST002L6", 64 * MB), cart("TST003L6", 64 * MB), cart("CLN001L1", MB)];
    EmulatedLibrary::create(dir, &cfg, &carts).unwrap()
}

fn open(lib: &Arc<EmulatedLibrary>) -> (MediaChanger, Vec<TapeDrive>) {
    let ch = MediaChanger::open(lib.changer_transport()).unwrap();
    let drives = (0..lib.drive_count()).map(|i| TapeDrive::open(lib.drive_transport(i)).unwrap()).collect();
    (ch, drives)
}

fn block(n: u64, len: usize) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Readies the drive after a move (the UNIT ATTENTION of the load is retried by the drive
/// layer), rewinds, sets variable-block mode.
fn ready(d: &mut TapeDrive) {
    assert_eq!(d.test_unit_ready().unwrap(), MediaState::Ready);
    d.set_variable_block_mode().unwrap();
    d.rewind().unwrap();
}

fn write_blocks(d: &mut TapeDrive, seed: u64, n: u64) {
    for b in 0..n {
        assert!(!d.write_block(&block(seed + b, 4096 + b as usize * 1000)).unwrap());
    }
}

fn read_expect(d: &mut TapeDrive, buf: &mut [u8], seed: u64, b: u64) {
    let want = block(seed + b, 4096 + b as usize * 1000);
    match d.read_block(buf).unwrap() {
        ReadOutcome::Data(n) => assert!(buf[..n] == want[..], "block {b}: {n} bytes, content differs or length"),
        other => panic!("block {b}: {other:?}"),
    }
}

#[test]
fn inventory_barcodes_and_dvcid() {
    let dir = tempfile::tempdir().unwrap();
    let lib = library(dir.path());
    let (ch, drives) = open(&lib);
    assert_eq!(ch.name(), lib.serial());
    assert_eq!(ch.identity(), ("RVEMU", "EMULATED-LIBRARY", lib.serial()));
    assert_eq!(
        ch.element_addresses(),
        Some(ElementAddresses {
            transport: (1, 1),
            storage: (1000, 6),
            import_export: (10, 2),
            data_transfer: (500, 2)
        })
    );

    let inv = ch.inventory().unwrap();
    assert_eq!(inv.pickers.iter().map(|e| e.address).collect::<Vec<_>>(), vec![PICKER_ADDRESS]);
    assert_eq!(inv.mail_slots.iter().map(|e| e.address).collect::<Vec<_>>(), vec![10, 11]);
    assert_eq!(inv.drives.iter().map(|e| e.address).collect::<Vec<_>>(), vec![500, 501]);
    assert_eq!(inv.slots.iter().map(|e| e.address).collect::<Vec<_>>(), (1000..1006).collect::<Vec<_>>());
    for (i, b) in ["TST001L6", "TST002L6", "TST003L6"].iter().enumerate() {
        let e = inv.find_barcode(b).unwrap_or_else(|| panic!("{b} not in {inv:#?}"));
        assert_eq!(
            (e.kind, e.address, e.source),
            (ElementKind::Slot, SLOT_BASE + i as u16, Some(SLOT_BASE + i as u16))
        );
        assert!(!e.is_cleaning() && e.exception.is_none());
    }
    assert!(inv.find_barcode("CLN001L1").unwrap().is_cleaning());
    assert_eq!(inv.cleaning_cartridges().count(), 1);
    assert_eq!(inv.empty_slots().map(|e| e.address).collect::<Vec<_>>(), vec![1004, 1005]);
    assert!(inv.all().filter(|e| e.kind != ElementKind::Slot).all(|e| !e.full && e.barcode.is_none()));

    // DVCID: drive element -> the serial the drive itself reports.
    for (i, d) in drives.iter().enumerate() {
        let info = d.info();
        assert_eq!(info.serial, lib.drive(i).serial());
        let e = inv.drive_for(&info.vendor, &info.product, &info.serial).unwrap();
        assert_eq!(e.address, DRIVE_BASE + i as u16);
        assert_eq!(inv.drive_by_serial(&info.serial).unwrap().address, e.address);
        assert!(!e.identifier_truncated);
        assert_eq!(e.identifier.as_deref(), Some(format!("RVEMU   EMULATED-TAPE   {}", info.serial).as_str()));
    }
    assert_ne!(lib.drive(0).serial(), lib.drive(1).serial());
    ch.initialize_element_status().unwrap();
}

/// Element type 0 (all) in one READ ELEMENT STATUS: one page per element type in address
/// order, no overlap (tgt gets this wrong), and a short allocation gets a consistent prefix.
#[test]
fn element_status_all_types_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let lib = library(dir.path());
    let (ch, _) = open(&lib);
    ch.move_medium(1001, 501).unwrap();
    let t = lib.changer_transport();
    let mut buf = vec![0u8; 4096];
    let cdb = smc::read_element_status(ElementType::All, true, 0, 0xffff, true, 4096);
    let c = t.execute(&mut Command::read(&cdb, &mut buf)).unwrap();
    assert_eq!(c.status, Status::Good, "{c:?}");
    let full = c.transferred;
    assert!(full < buf.len());
    let all = smc::parse_element_status(&buf[..full]).unwrap();
    let addrs: Vec<u16> = all.iter().map(|e| e.address).collect();
    assert_eq!(addrs, [1, 10, 11, 500, 501, 1000, 1001, 1002, 1003, 1004, 1005]);
    let types: Vec<ElementType> = all.iter().map(|e| e.etype).collect();
    use ElementType::*;
    assert_eq!(
        types,
        [
            Transport,
            ImportExport,
            ImportExport,
            DataTransfer,
            DataTransfer,
            Storage,
            Storage,
            Storage,
            Storage,
            Storage,
            Storage
        ]
    );
    let d1 = all.iter().find(|e| e.address == 501).unwrap();
    assert!(d1.full && d1.access && d1.source == Some(1001) && d1.barcode.as_deref() == Some("TST002L6"));
    assert!(d1.identifier.as_deref().unwrap().ends_with(lib.drive(1).serial()));
    // The same as the per-type answers the changer layer reads.
    let inv = ch.inventory().unwrap();
    for e in &all {
        let i = inv.element(e.address).unwrap();
        assert_eq!((i.full, &i.barcode, i.source), (e.full, &e.barcode, e.source), "element {}", e.address);
    }
    // Starting address and count select a window (it may start between elements).
    let cdb = smc::read_element_status(ElementType::All, false, 12, 3, false, 4096);
    let c = t.execute(&mut Command::read(&cdb, &mut buf)).unwrap();
    let w = smc::parse_element_status(&buf[..c.transferred]).unwrap();
    assert_eq!(w.iter().map(|e| e.address).collect::<Vec<_>>(), [500, 501, 1000]);
    assert!(w.iter().all(|e| e.barcode.is_none()), "no VOLTAG, no barcodes");
    // A 16-byte allocation: the header still reports the whole report's size.
    let mut head = [0u8; 16];
    let cdb = smc::read_element_status(ElementType::All, true, 0, 0xffff, true, 16);
    let c = t.execute(&mut Command::read(&cdb, &mut head)).unwrap();
    assert_eq!(c.transferred, 16);
    let total = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    assert_eq!(8 + total, full);
    assert_eq!(u16::from_be_bytes([head[2], head[3]]), 11);
}

#[test]
fn move_write_read_and_move_back() {
    let dir = tempfile::tempdir().unwrap();
    let lib = library(dir.path());
    let (ch, mut drives) = open(&lib);
    assert_eq!(drives[0].test_unit_ready().unwrap(), MediaState::NoMedium);

    ch.move_medium(1000, 500).unwrap();
    let inv = ch.inventory().unwrap();
    let d = inv.element(500).unwrap();
    assert!(d.full && d.barcode.as_deref() == Some("TST001L6") && d.source == Some(1000), "{d:?}");
    assert!(!inv.element(1000).unwrap().full);

    let d0 = &mut drives[0];
    ready(d0);
    write_blocks(d0, 100, 5);
    d0.write_filemarks(1).unwrap();
    write_blocks(d0, 200, 2);
    d0.write_filemarks(1).unwrap();
    d0.rewind().unwrap();
    let mut buf = vec![0u8; 64 << 10];
    for b in 0..5 {
        read_expect(d0, &mut buf, 100, b);
    }
    assert_eq!(d0.read_block(&mut buf).unwrap(), ReadOutcome::Filemark);
    d0.locate(1, 1).unwrap();
    read_expect(d0, &mut buf, 200, 1);

    // PREVENT MEDIUM REMOVAL on the drive stops the move out, as on a real library.
    d0.prevent_removal(true).unwrap();
    let e = ch.move_medium(500, 1000).unwrap_err();
    match &e {
        ChangerError::Check { sense, .. } => {
            assert_eq!((sense.key, sense.asc, sense.ascq), (SenseKey::IllegalRequest, 0x53, 0x02))
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("medium removal prevented"), "{e}");
    assert!(ch.inventory().unwrap().element(500).unwrap().full);
    d0.prevent_removal(false).unwrap();
    // The drive layer unloads (ejects to the throat); the picker takes it from there.
    d0.unload().unwrap();
    assert_eq!(d0.test_unit_ready().unwrap(), MediaState::NoMedium);
    ch.move_medium(500, 1000).unwrap();
    let inv = ch.inventory().unwrap();
    assert!(!inv.element(500).unwrap().full);
    assert_eq!(inv.find_barcode("TST001L6").unwrap().address, 1000);

    // Into the other drive, straight from the slot: the data went with the cartridge. A
    // move out of a drive that still holds the cartridge loaded unloads it (auto-unload).
    ch.move_medium(1000, 501).unwrap();
    let d1 = &mut drives[1];
    ready(d1);
    for b in 0..5 {
        read_expect(d1, &mut buf, 100, b);
    }
    ch.move_medium(501, 500).unwrap(); // drive -> drive
    assert_eq!(drives[1].test_unit_ready().unwrap(), MediaState::NoMedium);
    ready(&mut drives[0]);
    read_expect(&mut drives[0], &mut buf, 100, 0);
    let inv = ch.inventory().unwrap();
    assert_eq!(inv.element(500).unwrap().source, Some(1000), "the home slot survives drive-to-drive moves");
    ch.move_medium(500, 1000).unwrap();

    // Through a mail slot and the picker, and home again.
    ch.move_medium(1000, 10).unwrap();
    let m = ch.inventory().unwrap().element(10).cloned().unwrap();
    assert!(m.full && m.barcode.as_deref() == Some("TST001L6") && m.source == Some(1000));
    ch.move_medium(10, PICKER_ADDRESS).unwrap();
    ch.move_medium(PICKER_ADDRESS, 1000).unwrap();
    assert_eq!(ch.inventory().unwrap().find_barcode("TST001L6").unwrap().source, Some(10));
}

#[test]
fn move_errors_are_the_changer_layers_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let lib = library(dir.path());
    let (ch, _) = open(&lib);
    ch.move_medium(1000, 500).unwrap();

    // Destination full (3b/0d): a drive, then a slot.
    let e = ch.move_medium(1001, 500).unwrap_err();
    assert!(matches!(e, ChangerError::DestinationFull { to: 500, .. }), "{e:?}");
    assert!(e.to_string().contains("drive 500 already holds a cartridge"), "{e}");
    let e = ch.move_medium(500, 1001).unwrap_err();
    assert!(matches!(e, ChangerError::DestinationFull { to: 1001, .. }), "{e:?}");
    assert!(e.to_string().contains("slot 1001"), "{e}");
    // Source empty (3b/0e).
    let e = ch.move_medium(1005, 501).unwrap_err();
    assert!(matches!(e, ChangerError::SourceEmpty { from: 1005, .. }), "{e:?}");
    assert!(e.to_string().contains("slot 1005 is empty"), "{e}");
    let e = ch.move_medium(501, 1005).unwrap_err();
    assert!(e.to_string().contains("drive 501 is empty"), "{e}");
    // Addresses the library does not have (21/01), as destination and as source.
    let e = ch.move_medium(1001, 4000).unwrap_err();
    assert!(matches!(e, ChangerError::BadAddress { address: 4000, .. }), "{e:?}");
    assert!(e.to_string().contains("4000 does not exist"), "{e}");
    let e = ch.move_medium(1006, 1005).unwrap_err();
    assert!(matches!(e, ChangerError::BadAddress { address: 1006, .. }), "{e:?}");
    // Nothing moved.
    let inv = ch.inventory().unwrap();
    assert_eq!(inv.find_barcode("TST001L6").unwrap().address, 500);
    assert_eq!(inv.find_barcode("TST002L6").unwrap().address, 1001);

    // A cartridge whose media file vanished cannot be loaded: HARDWARE ERROR, it stays put.
    std::fs::remove_file(lib.media_path("TST003L6")).unwrap();
    let e = ch.move_medium(1002, 501).unwrap_err();
    assert!(matches!(e, ChangerError::Hardware { from: 1002, to: 501, .. }), "{e:?}");
    assert_eq!(ch.inventory().unwrap().find_barcode("TST003L6").unwrap().address, 1002);
}

#[test]
fn inventory_and_loaded_cartridges_persist_across_open() {
    let dir = tempfile::tempdir().unwrap();
    let lib = library(dir.path());
    let serials: Vec<String> = (0..2).map(|i| lib.drive(i).serial().to_string()).collect();
    {
        let (ch, mut drives) = open(&lib);
        ch.move_medium(1001, 501).unwrap();
        ch.move_medium(1002, 11).unwrap();
        ready(&mut drives[1]);
        write_blocks(&mut drives[1], 7, 3);
        drives[1].write_filemarks(1).unwrap();
        // A second open of the same directory is refused while this one lives.
        let e = EmulatedLibrary::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("already open"), "{e}");
        let e = EmulatedLibrary::create(dir.path(), lib.config(), &[]).unwrap_err();
        assert!(e.to_string().contains("already open"), "{e}");
    }
    let serial = lib.serial().to_string();
    drop(lib);
    let e = EmulatedLibrary::create(
        dir.path(),
        &LibraryConfig { drives: 1, slots: 1, mail_slots: 0, early_warning: 0 },
        &[],
    )
    .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
    let json = std::fs::read_to_string(dir.path().join("library.json")).unwrap();
    assert!(json.contains("\"TST002L6\"") && json.contains("\"format\": 1"), "{json}");

    let lib = EmulatedLibrary::open(dir.path()).unwrap();
    assert_eq!(lib.serial(), serial);
    let (ch, mut drives) = open(&lib);
    assert_eq!(ch.name(), serial);
    let inv = ch.inventory().unwrap();
    let d = inv.element(501).unwrap();
    assert!(d.full && d.barcode.as_deref() == Some("TST002L6") && d.source == Some(1001), "{d:?}");
    assert_eq!(d.drive_serial.as_deref(), Some(serials[1].as_str()));
    let m = inv.element(11).unwrap();
    assert!(m.full && m.barcode.as_deref() == Some("TST003L6") && m.source == Some(1002), "{m:?}");
    assert_eq!(inv.find_barcode("TST001L6").unwrap().address, 1000);
    assert!(!inv.element(1001).unwrap().full);
    // The cartridge recorded in drive 501 is loaded there again, data and all.
    ready(&mut drives[1]);
    let mut buf = vec![0u8; 64 << 10];
    for b in 0..3 {
        read_expect(&mut drives[1], &mut buf, 7, b);
    }
    assert_eq!(drives[1].read_block(&mut buf).unwrap(), ReadOutcome::Filemark);
    assert_eq!(drives[1].read_block(&mut buf).unwrap(), ReadOutcome::EndOfData);
    ch.move_medium(501, 1001).unwrap();
    ch.move_medium(11, 1002).unwrap();
    drop((ch, drives));
    drop(lib);
    let lib = EmulatedLibrary::open(dir.path()).unwrap();
    let inv = MediaChanger::open(lib.changer_transport()).unwrap().inventory().unwrap();
    assert_eq!(inv.find_barcode("TST002L6").unwrap().address, 1001);
    assert_eq!(inv.find_barcode("TST003L6").unwrap().address, 1002);
    assert!(inv.drives.iter().chain(&inv.mail_slots).all(|e| !e.full));
}

#[test]
fn bad_library_directories_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let e = EmulatedLibrary::open(dir.path()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    assert!(e.to_string().contains("create one first"), "{e}");
    let cfg = LibraryConfig { drives: 1, slots: 2, mail_slots: 1, early_warning: 0 };
    let e = EmulatedLibrary::create(dir.path(), &cfg, &[cart("A", MB), cart("B", MB), cart("C", MB)]).unwrap_err();
    assert!(e.to_string().contains("3 cartridges but only 2 slots"), "{e}");
    let e = EmulatedLibrary::create(dir.path(), &cfg, &[cart("A", MB), cart("A", MB)]).unwrap_err();
    assert!(e.to_string().contains("already in the library (slot 1000)"), "{e}");
    let e = EmulatedLibrary::create(dir.path(), &cfg, &[cart("../etc", MB)]).unwrap_err();
    assert!(e.to_string().contains("cannot be used"), "{e}");
    let e = EmulatedLibrary::create(dir.path(), &LibraryConfig { drives: 501, ..cfg }, &[]).unwrap_err();
    assert!(e.to_string().contains("at most 500 fit"), "{e}");
    assert!(!dir.path().join("library.json").exists(), "refused creates leave no library");

    let lib = EmulatedLibrary::create(dir.path(), &cfg, &[cart("A", MB)]).unwrap();
    drop(lib);
    let json = dir.path().join("library.json");
    let good = std::fs::read_to_string(&json).unwrap();
    std::fs::write(&json, good.replace("\"element\": 1000", "\"element\": 7")).unwrap();
    let e = EmulatedLibrary::open(dir.path()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("element 7, which the library lacks"), "{e}");
    std::fs::write(&json, good.replace("\"format\": 1", "\"format\": 2")).unwrap();
    assert!(EmulatedLibrary::open(dir.path()).unwrap_err().to_string().contains("newer rackvault"));
    std::fs::write(&json, "{").unwrap();
    assert!(EmulatedLibrary::open(dir.path()).unwrap_err().to_string().contains("not a library inventory"));
    std::fs::write(&json, &good).unwrap();
    std::fs::remove_file(dir.path().join("media/A")).unwrap();
    let e = EmulatedLibrary::open(dir.path()).unwrap_err();
    assert!(e.to_string().contains("media/A of A is unusable"), "{e}");
}

#[test]
fn cleaning_cartridge_clears_the_alert() {
    let dir = tempfile::tempdir().unwrap();
    let lib = library(dir.path());
    let (ch, mut drives) = open(&lib);
    lib.drive(0).set_needs_cleaning(true);
    assert!(drives[0].needs_cleaning().unwrap());
    lib.drive(1).set_tape_alerts(&[21]); // clean periodic
    assert!(drives[1].needs_cleaning().unwrap());

    let inv = ch.inventory().unwrap();
    let cln = inv.cleaning_cartridges().next().unwrap().address;
    ch.move_medium(cln, 500).unwrap();
    assert!(!drives[0].needs_cleaning().unwrap());
    // The drive ejected the cleaner; the element shows it until the picker takes it away.
    assert_eq!(drives[0].test_unit_ready().unwrap(), MediaState::NoMedium);
    let d = ch.inventory().unwrap().element(500).cloned().unwrap();
    assert!(d.full && d.is_cleaning(), "{d:?}");
    ch.move_medium(500, 501).unwrap();
    assert!(!drives[1].needs_cleaning().unwrap());
    ch.move_medium(501, cln).unwrap();
    assert!(ch.inventory().unwrap().element(cln).unwrap().is_cleaning());

    // A data cartridge does not clean.
    lib.drive(0).set_needs_cleaning(true);
    ch.move_medium(1000, 500).unwrap();
    ready(&mut drives[0]);
    assert!(drives[0].needs_cleaning().unwrap());
}

#[test]
fn cartridge_pulled_mid_write() {
    let dir = tempfile::tempdir().unwrap();
    let lib = library(dir.path());
    let (ch, mut drives) = open(&lib);
    ch.move_medium(1001, 500).unwrap();
    let d = &mut drives[0];
    ready(d);
    d.prevent_removal(true).unwrap(); // a yank ignores it
    write_blocks(d, 40, 4);

    assert_eq!(lib.pull_from_drive(0).unwrap(), "TST002L6");
    let e = d.write_block(&block(44, 4096)).unwrap_err();
    assert!(matches!(e, DriveError::NoMedium { .. }), "{e:?}");
    assert_eq!(e.kind(), ErrorKind::NeedsOperator);
    assert!(e.to_string().contains("no cartridge in drive"), "{e}");
    assert_eq!(d.test_unit_ready().unwrap(), MediaState::NoMedium);
    d.prevent_removal(false).unwrap();
    // The changer (after its UNIT ATTENTION, retried) shows the drive empty and the
    // cartridge gone.
    let inv = ch.inventory().unwrap();
    assert!(!inv.element(500).unwrap().full);
    assert!(inv.find_barcode("TST002L6").is_none());
    let e = ch.move_medium(500, 1001).unwrap_err();
    assert!(matches!(e, ChangerError::SourceEmpty { from: 500, .. }), "{e:?}");
    let e = lib.pull_from_drive(0).unwrap_err();
    assert!(matches!(e, LibraryError::DriveEmpty { index: 0, address: 500 }), "{e:?}");
    assert!(matches!(lib.pull_from_drive(2), Err(LibraryError::NoSuchDrive { index: 2, count: 2 })));

    // The operator brings it back through a mail slot: what was written before the pull is
    // there.
    assert_eq!(lib.insert_into_mail_slot("TST002L6", 0).unwrap(), MAIL_SLOT_BASE);
    let inv = ch.inventory().unwrap();
    let m = inv.element(10).unwrap();
    assert!(m.full && m.barcode.as_deref() == Some("TST002L6") && m.source.is_none(), "{m:?}");
    ch.move_medium(10, 501).unwrap();
    let d = &mut drives[1];
    ready(d);
    let mut buf = vec![0u8; 64 << 10];
    for b in 0..4 {
        read_expect(d, &mut buf, 40, b);
    }
    assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::EndOfData);
    ch.move_medium(501, 1001).unwrap();
}

#[test]
fn mail_slot_operator_actions() {
    let dir = tempfile::tempdir().unwrap();
    let lib = library(dir.path());
    let (ch, mut drives) = open(&lib);
    assert_eq!(lib.insert_into_mail_slot("NEW001L6", 32 * MB).unwrap(), 10);
    assert_eq!(lib.insert_into_mail_slot("NEW002L6", 32 * MB).unwrap(), 11);
    let e = lib.insert_into_mail_slot("NEW003L6", MB).unwrap_err();
    assert!(e.to_string().contains("no empty mail slot"), "{e}");
    let e = lib.insert_into_mail_slot("TST001L6", MB).unwrap_err();
    assert!(e.to_string().contains("TST001L6 is already in the library (slot 1000)"), "{e}");
    let inv = ch.inventory().unwrap();
    assert_eq!(inv.element(11).unwrap().barcode.as_deref(), Some("NEW002L6"));

    // Import into the library and use the new cartridge.
    ch.move_medium(10, 1004).unwrap();
    ch.move_medium(1004, 500).unwrap();
    ready(&mut drives[0]);
    write_blocks(&mut drives[0], 9, 2);
    ch.move_medium(500, 1004).unwrap();
    assert_eq!(ch.inventory().unwrap().element(1004).unwrap().source, Some(1004));

    // Export: the changer puts it in a mail slot, the operator takes it.
    ch.move_medium(1000, 10).unwrap();
    assert_eq!(lib.remove_from_mail_slot(10).unwrap(), "TST001L6");
    assert!(ch.inventory().unwrap().find_barcode("TST001L6").is_none());
    assert!(matches!(lib.remove_from_mail_slot(10), Err(LibraryError::MailSlotEmpty { address: 10 })));
    let e = lib.remove_from_mail_slot(1000).unwrap_err();
    assert!(e.to_string().contains("not a mail slot (this library's are 10..=11)"), "{e}");

    // PREVENT MEDIUM REMOVAL on the changer locks the mail slots.
    let t = lib.changer_transport();
    let prevent = |on: bool| {
        let cdb = scsi::cdb::ssc::prevent_allow_medium_removal(on);
        let c = t.execute(&mut Command::none(&cdb)).unwrap();
        assert_eq!(c.status, Status::Good, "{c:?}");
    };
    prevent(true);
    assert!(matches!(lib.remove_from_mail_slot(11), Err(LibraryError::MailSlotsLocked)));
    assert!(matches!(lib.insert_into_mail_slot("TST001L6", 0), Err(LibraryError::MailSlotsLocked)));
    prevent(false);
    assert_eq!(lib.remove_from_mail_slot(11).unwrap(), "NEW002L6");
    assert_eq!(lib.insert_into_mail_slot("TST001L6", 0).unwrap(), 10);
}

#[test]
fn injected_medium_error() {
    let dir = tempfile::tempdir().unwrap();
    let lib = library(dir.path());
    let (ch, mut drives) = open(&lib);
    ch.move_medium(1002, 501).unwrap();
    let d = &mut drives[1];
    ready(d);
    write_blocks(d, 0, 6);
    d.rewind().unwrap();
    lib.drive(1).inject_medium_error(2);
    let mut buf = vec![0u8; 64 << 10];
    read_expect(d, &mut buf, 0, 0);
    read_expect(d, &mut buf, 0, 1);
    let e = d.read_block(&mut buf).unwrap_err();
    match &e {
        DriveError::Medium { sense, command, .. } => {
            assert_eq!((sense.key, sense.asc, sense.ascq), (SenseKey::MediumError, 0x11, 0x00));
            assert_eq!(sense.information, Some(buf.len() as u64), "VALID, INFORMATION = requested length");
            assert_eq!(command, "READ(6)");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.kind(), ErrorKind::NeedsOperator);
    assert!(e.to_string().contains("medium error"), "{e}");
    // The head is past the bad block: the next read gets block 3, and the position is
    // recovered from READ POSITION.
    read_expect(d, &mut buf, 0, 3);
    let p = d.position().unwrap().unwrap();
    assert_eq!((p.file, p.block, p.object), (0, 4, Some(4)));
    // Every read of the block fails, until the errors are cleared.
    d.locate(0, 2).unwrap();
    assert!(matches!(d.read_block(&mut buf), Err(DriveError::Medium { .. })));
    lib.drive(1).clear_medium_errors();
    d.locate(0, 2).unwrap();
    read_expect(d, &mut buf, 0, 2);
}

/// Benchmarks: cartridges of a library made discarding keep small blocks and drop large
/// ones; a cartridge in a drive or not in the library is refused.
#[test]
fn discarding_cartridges_of_a_library() {
    let dir = tempfile::tempdir().unwrap();
    let lib = library(dir.path());
    let (ch, mut drives) = open(&lib);
    lib.set_discard("TST001L6", true).unwrap();
    lib.set_discard("CLN001L1", true).unwrap();
    assert!(!vtl::medium_options(&lib.media_path("CLN001L1")).unwrap().discard, "cleaning cartridges left alone");
    assert!(matches!(lib.set_discard("NOPE01L6", true), Err(LibraryError::NotInLibrary { .. })));
    ch.move_medium(1000, 500).unwrap();
    let e = lib.set_discard("TST001L6", false).unwrap_err();
    assert!(matches!(e, LibraryError::InDrive { address: 500, .. }), "{e:?}");
    assert!(e.to_string().contains("move it to a slot first"), "{e}");
    let d = &mut drives[0];
    ready(d);
    d.write_block(&block(1, 1000)).unwrap();
    d.write_block(&block(2, vtl::DISCARD_KEEP + 1)).unwrap();
    d.rewind().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::Data(1000));
    assert!(matches!(d.read_block(&mut buf), Err(DriveError::Medium { .. })));
    assert!(std::fs::metadata(lib.media_path("TST001L6")).unwrap().len() < 4096);
}

/// A drive raises UNIT ATTENTION 28/00 on the first command after a load; INQUIRY does not
/// consume it.
#[test]
fn unit_attention_after_load() {
    let dir = tempfile::tempdir().unwrap();
    let lib = library(dir.path());
    let ch = MediaChanger::open(lib.changer_transport()).unwrap();
    ch.move_medium(1000, 500).unwrap();
    let t = lib.drive_transport(0);
    let mut inq = [0u8; 36];
    let c = t.execute(&mut Command::read(&scsi::cdb::spc::inquiry(36), &mut inq)).unwrap();
    assert_eq!(c.status, Status::Good);
    let tur = scsi::cdb::spc::test_unit_ready();
    let c = t.execute(&mut Command::none(&tur)).unwrap();
    let s = c.sense.unwrap();
    assert_eq!((s.key, s.asc, s.ascq), (SenseKey::UnitAttention, 0x28, 0x00));
    assert_eq!(t.execute(&mut Command::none(&tur)).unwrap().status, Status::Good);
}
