//! Integration test of the drive layer against tgt's virtual tape library
//! (tests/peers/start-tgt-vtl.sh): cartridges are loaded with the changer crate.
//!
//! The variables come from the process environment (`set -a; source
//! /tmp/rackvault-peers/tgt-vtl/env`). Missing: skipped, or a failure when
//! RACKVAULT_REQUIRE_PEERS=1. One test function (the library is shared); every cartridge goes
//! back to its home slot on drop of a guard, also when an assertion fails.

use std::sync::Arc;

use changer::MediaChanger;
use drive::{DriveError, ErrorKind, MediaState, ReadOutcome, TapeDrive, TapePosition};
use scsi::ScsiTransport;

struct Env {
    portal: String,
    iqn: String,
    changer_lun: u64,
    drive_luns: Vec<u64>,
    barcode_slots: Vec<u16>,
    eom_slot: u16,
    eom_bytes: usize,
}

fn env() -> Option<Env> {
    let get = |k: &str| std::env::var(k).ok();
    let e = (|| {
        Some(Env {
            portal: get("RV_TGT_VTL_PORTAL")?,
            iqn: get("RV_TGT_VTL_IQN")?,
            changer_lun: get("RV_TGT_VTL_CHANGER_LUN")?.parse().ok()?,
            drive_luns: get("RV_TGT_VTL_DRIVE_LUNS")?
                .split_whitespace()
                .map(|s| s.parse().ok())
                .collect::<Option<_>>()?,
            barcode_slots: get("RV_TGT_VTL_BARCODE_SLOTS")?
                .split_whitespace()
                .map(|s| s.parse().ok())
                .collect::<Option<_>>()?,
            eom_slot: get("RV_TGT_VTL_EOM_SLOT")?.parse().ok()?,
            eom_bytes: get("RV_TGT_VTL_EOM_BYTES")?.parse().ok()?,
        })
    })();
    if e.is_none() {
        if std::env::var("RACKVAULT_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("RV_TGT_VTL_* variables missing but RACKVAULT_REQUIRE_PEERS=1: start tests/peers/start-tgt-vtl.sh and source its env file");
        }
        eprintln!("skipped: tgt-vtl not running (tests/peers/start-tgt-vtl.sh)");
    }
    e
}

/// Moves every cartridge away from home back to its source slot, on drop.
struct HomeGuard<'a>(&'a MediaChanger);

impl Drop for HomeGuard<'_> {
    fn drop(&mut self) {
        let Ok(inv) = self.0.inventory() else { return };
        for e in inv.drives.iter().chain(&inv.mail_slots) {
            if let (true, Some(src)) = (e.full, e.source) {
                if let Err(err) = self.0.move_medium(e.address, src) {
                    eprintln!("could not move {} back to {src}: {err}", e.address);
                }
            }
        }
    }
}

/// Deterministic content of block `b` of file `f`.
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

/// Block lengths of the files written: large (>= 256 KiB), odd and tiny blocks.
const FILES: [&[usize]; 3] = [&[262_144, 300_001, 524_295, 4], &[65_536, 1_048_576, 262_144], &[1000]];

fn pos(d: &mut TapeDrive) -> Option<(u64, u64)> {
    d.position().unwrap().map(|TapePosition { file, block, .. }| (file, block))
}

fn read_expect(d: &mut TapeDrive, buf: &mut [u8], f: u64, b: u64) {
    let want = FILES[f as usize][b as usize];
    match d.read_block(buf).unwrap() {
        ReadOutcome::Data(n) => {
            assert_eq!(n, want, "block length of file {f} block {b}");
            let exp = block(f, b, n);
            let first = (0..n).find(|&i| buf[i] != exp[i]);
            assert!(first.is_none(), "content of file {f} block {b}: first difference at {first:?} of {n}");
        }
        other => panic!("file {f} block {b}: expected data, got {other:?}"),
    }
}

#[test]
fn tgt_vtl_drive() {
    let Some(env) = env() else { return };
    let session = iscsi::Session::login(iscsi::SessionConfig::new(env.portal.clone(), env.iqn.clone())).unwrap();
    let changer_t: Arc<dyn ScsiTransport> = Arc::new(session.lun(env.changer_lun));
    let ch = MediaChanger::open(changer_t.clone()).unwrap();
    let _home = HomeGuard(&ch);

    // The changer LUN is no tape drive.
    let e = TapeDrive::open(changer_t).unwrap_err();
    assert!(matches!(e, DriveError::NotATapeDrive { device_type: 8, .. }), "{e:?}");

    let mut d = TapeDrive::open(Arc::new(session.lun(env.drive_luns[0]))).unwrap();
    assert_eq!(d.name(), "DRV00001");
    let info = d.info().clone();
    let inv = ch.inventory().unwrap();
    let drive_addr = inv.drive_for(&info.vendor, &info.product, &info.serial).expect("drive element by DVCID").address;
    let limits = d.block_limits().unwrap();
    assert_eq!((limits.min, limits.max), (4, 1 << 20));

    // ---- no cartridge ---------------------------------------------------------------------
    assert_eq!(d.test_unit_ready().unwrap(), MediaState::NoMedium);
    let e = d.rewind().unwrap_err();
    assert_eq!(e.to_string(), "no cartridge in drive DRV00001: load one with the changer");
    assert_eq!(e.kind(), ErrorKind::NeedsOperator);

    // ---- load, write three files ------------------------------------------------------------
    ch.move_medium(env.barcode_slots[0], drive_addr).unwrap();
    assert_eq!(d.test_unit_ready().unwrap(), MediaState::Ready);
    assert!(!d.is_worm());
    d.rewind().unwrap();
    d.set_variable_block_mode().unwrap();
    assert_eq!(pos(&mut d), Some((0, 0)));
    assert_eq!(d.reports_position(), Some(false), "tgt reports no READ POSITION block address");
    for (f, lens) in FILES.iter().enumerate() {
        for (b, &len) in lens.iter().enumerate() {
            assert!(
                !d.write_block(&block(f as u64, b as u64, len)).unwrap(),
                "no early warning on a 256 MiB cartridge"
            );
        }
        assert!(!d.write_filemarks(1).unwrap());
        assert_eq!(pos(&mut d), Some((f as u64 + 1, 0)));
    }
    // A block outside the drive's limits is refused before it reaches the drive.
    let e = d.write_block(&[0u8; 2]).unwrap_err();
    assert!(matches!(e, DriveError::BadBlockLength { len: 2, .. }), "{e:?}");

    // ---- read everything back, block lengths from ILI ----------------------------------------
    d.rewind().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for (f, lens) in FILES.iter().enumerate() {
        for b in 0..lens.len() {
            read_expect(&mut d, &mut buf, f as u64, b as u64);
            assert_eq!(pos(&mut d), Some((f as u64, b as u64 + 1)));
        }
        assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::Filemark);
        assert_eq!(pos(&mut d), Some((f as u64 + 1, 0)));
    }
    assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::EndOfData);
    assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::EndOfData);

    // ---- a block larger than the buffer ----------------------------------------------------
    d.locate(0, 0).unwrap();
    let e = d.read_block(&mut buf[..1000]).unwrap_err();
    assert!(matches!(e, DriveError::BlockTooLarge { block_len: 262_144, buffer: 1000, .. }), "{e:?}");
    assert!(e.to_string().contains("space back one block"), "{e}");
    assert_eq!(pos(&mut d), Some((0, 1)));
    d.space_blocks(-1).unwrap();
    read_expect(&mut d, &mut buf, 0, 0);

    // ---- locate by REWIND + SPACE (tgt rejects LOCATE) ----------------------------------
    let e = d.locate_object(3).unwrap_err();
    assert!(matches!(e, DriveError::Unsupported { .. }), "{e:?}");
    for (f, b) in [(1u64, 1u64), (1, 2), (2, 0), (0, 3), (0, 2), (1, 0), (1, 1)] {
        d.locate(f, b).unwrap();
        assert_eq!(pos(&mut d), Some((f, b)));
        read_expect(&mut d, &mut buf, f, b);
    }
    // SPACE forward over filemarks from BOT.
    d.rewind().unwrap();
    d.space_filemarks(2).unwrap();
    read_expect(&mut d, &mut buf, 2, 0);
    // SPACE past the end of data stops early.
    d.rewind().unwrap();
    let e = d.space_filemarks(7).unwrap_err();
    assert!(matches!(e, DriveError::SpaceStopped { .. }), "{e:?}");
    assert_eq!(pos(&mut d), None, "position is unknown after a SPACE that stopped early");
    d.space_to_eod().unwrap();
    assert_eq!(pos(&mut d), None);
    assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::EndOfData);
    // No TapeAlert on tgt: no alerts, no cleaning request.
    assert!(!d.needs_cleaning().unwrap());
    d.prevent_removal(false).unwrap();

    // ---- unload, back home ---------------------------------------------------------------
    d.unload().unwrap();
    ch.move_medium(drive_addr, env.barcode_slots[0]).unwrap();
    assert_eq!(d.test_unit_ready().unwrap(), MediaState::NoMedium);

    // ---- early warning on the tiny cartridge -----------------------------------------------
    ch.move_medium(env.eom_slot, drive_addr).unwrap();
    assert_eq!(d.test_unit_ready().unwrap(), MediaState::Ready);
    d.rewind().unwrap();
    d.set_variable_block_mode().unwrap();
    let blk = 256 * 1024;
    let mut written = 0usize;
    let mut warned_at = None;
    for b in 0..64u64 {
        let ew = d.write_block(&block(0, b, blk)).unwrap();
        written += 1;
        if ew {
            warned_at = Some(b);
            break;
        }
    }
    let warned_at = warned_at.expect("early warning within 16 MiB on the 2 MiB cartridge");
    assert!(warned_at as usize * blk >= env.eom_bytes / 2, "early warning after {warned_at} blocks");
    assert!(d.early_warning());
    // Writes past early warning keep succeeding on tgt (no hard end), still signalled;
    // tgt's WRITE FILEMARKS does not report early warning.
    assert!(d.write_block(&block(0, written as u64, blk)).unwrap());
    written += 1;
    d.write_filemarks(1).unwrap();
    d.rewind().unwrap();
    assert!(!d.early_warning());
    for b in 0..written as u64 {
        match d.read_block(&mut buf).unwrap() {
            ReadOutcome::Data(n) => assert!(n == blk && buf[..n] == block(0, b, blk)[..], "block {b}"),
            other => panic!("block {b}: {other:?}"),
        }
    }
    assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::Filemark);
    ch.move_medium(drive_addr, env.eom_slot).unwrap();
}
