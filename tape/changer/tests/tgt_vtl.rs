//! Integration test against tgt's virtual tape library (tests/peers/start-tgt-vtl.sh).
//!
//! The variables come from the process environment (`set -a; source
//! /tmp/rackvault-peers/tgt-vtl/env`). Missing: skipped, or a failure when
//! RACKVAULT_REQUIRE_PEERS=1. The library is shared with the drive tests: one test function
//! (tests of one binary run in parallel), and every cartridge goes back to its home slot,
//! even when an assertion fails (a guard moves them back on drop).

use std::sync::Arc;

use changer::{ChangerError, ElementKind, MediaChanger};
use scsi::cdb::smc::{self, ElementType};
use scsi::{Command, ScsiTransport};

struct Env {
    portal: String,
    iqn: String,
    changer_lun: u64,
    drive_addrs: Vec<u16>,
    slot_addrs: Vec<u16>,
    mail_addrs: Vec<u16>,
    picker: u16,
    barcodes: Vec<String>,
    barcode_slots: Vec<u16>,
    eom_barcode: String,
    eom_slot: u16,
    cln_barcode: String,
    cln_slot: u16,
    serials: Vec<String>,
}

fn env() -> Option<Env> {
    let get = |k: &str| std::env::var(k).ok();
    let nums = |k: &str| -> Option<Vec<u16>> { get(k)?.split_whitespace().map(|s| s.parse().ok()).collect() };
    let words = |k: &str| -> Option<Vec<String>> { Some(get(k)?.split_whitespace().map(str::to_string).collect()) };
    let e = (|| {
        Some(Env {
            portal: get("RV_TGT_VTL_PORTAL")?,
            iqn: get("RV_TGT_VTL_IQN")?,
            changer_lun: get("RV_TGT_VTL_CHANGER_LUN")?.parse().ok()?,
            drive_addrs: nums("RV_TGT_VTL_DRIVE_ADDRS")?,
            slot_addrs: nums("RV_TGT_VTL_SLOT_ADDRS")?,
            mail_addrs: nums("RV_TGT_VTL_MAIL_ADDRS")?,
            picker: get("RV_TGT_VTL_PICKER_ADDR")?.parse().ok()?,
            barcodes: words("RV_TGT_VTL_BARCODES")?,
            barcode_slots: nums("RV_TGT_VTL_BARCODE_SLOTS")?,
            eom_barcode: get("RV_TGT_VTL_EOM_BARCODE")?,
            eom_slot: get("RV_TGT_VTL_EOM_SLOT")?.parse().ok()?,
            cln_barcode: get("RV_TGT_VTL_CLEANING_BARCODE")?,
            cln_slot: get("RV_TGT_VTL_CLEANING_SLOT")?.parse().ok()?,
            serials: words("RV_TGT_VTL_DRIVE_SERIALS")?,
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

/// Moves every cartridge that is away from home back to its source slot, on drop.
struct HomeGuard<'a>(&'a MediaChanger);

impl Drop for HomeGuard<'_> {
    fn drop(&mut self) {
        let Ok(inv) = self.0.inventory() else { return };
        for e in inv.drives.iter().chain(&inv.mail_slots).chain(&inv.pickers) {
            if let (true, Some(src)) = (e.full, e.source) {
                if let Err(err) = self.0.move_medium(e.address, src) {
                    eprintln!("could not move {} back to {src}: {err}", e.address);
                }
            }
        }
    }
}

fn raw_res(t: &dyn ScsiTransport, et: ElementType, start: u16, count: u16, dvcid: bool) -> Vec<u8> {
    let mut head = [0u8; 16];
    let cdb = smc::read_element_status(et, true, start, count, dvcid, 16);
    let c = t.execute(&mut Command::read(&cdb, &mut head)).unwrap();
    assert_eq!(c.status, scsi::Status::Good, "{c:?}");
    let total = 8 + u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut buf = vec![0u8; total];
    let cdb = smc::read_element_status(et, true, start, count, dvcid, total as u32);
    let c = t.execute(&mut Command::read(&cdb, &mut buf)).unwrap();
    assert_eq!(c.status, scsi::Status::Good, "{c:?}");
    buf.truncate(c.transferred);
    buf
}

#[test]
fn tgt_vtl_changer() {
    let Some(env) = env() else { return };
    let session = iscsi::Session::login(iscsi::SessionConfig::new(env.portal.clone(), env.iqn.clone())).unwrap();
    let t: Arc<dyn ScsiTransport> = Arc::new(session.lun(env.changer_lun));
    let ch = MediaChanger::open(t.clone()).unwrap();
    let _home = HomeGuard(&ch);
    assert_eq!(ch.name(), "CHGR0001");

    // ---- inventory ------------------------------------------------------------------------
    let inv = ch.inventory().unwrap();
    assert_eq!(inv.pickers.iter().map(|e| e.address).collect::<Vec<_>>(), vec![env.picker]);
    assert_eq!(inv.slots.iter().map(|e| e.address).collect::<Vec<_>>(), env.slot_addrs);
    assert_eq!(inv.mail_slots.iter().map(|e| e.address).collect::<Vec<_>>(), env.mail_addrs);
    assert_eq!(inv.drives.iter().map(|e| e.address).collect::<Vec<_>>(), env.drive_addrs);
    for (b, s) in env.barcodes.iter().zip(&env.barcode_slots) {
        let e = inv.find_barcode(b).unwrap_or_else(|| panic!("{b} not found in {inv:#?}"));
        assert_eq!((e.kind, e.address), (ElementKind::Slot, *s));
        assert!(!e.is_cleaning());
    }
    assert_eq!(inv.find_barcode(&env.eom_barcode).unwrap().address, env.eom_slot);
    let cln = inv.find_barcode(&env.cln_barcode).unwrap();
    assert_eq!(cln.address, env.cln_slot);
    assert!(cln.is_cleaning());
    assert_eq!(inv.cleaning_cartridges().count(), 1);
    assert!(inv.drives.iter().all(|d| !d.full));
    for (addr, serial) in env.drive_addrs.iter().zip(&env.serials) {
        let d = inv
            .drive_for("RVTEST", "VTAPE-LTO", serial)
            .unwrap_or_else(|| panic!("no drive with serial {serial}: {:#?}", inv.drives));
        assert_eq!(d.address, *addr);
        assert!(d.identifier.as_deref().unwrap().starts_with("RVTEST"), "{d:?}");
    }
    let empty_slot = inv.empty_slots().next().unwrap().address;
    ch.initialize_element_status().unwrap();

    // ---- moves and their errors -----------------------------------------------------------
    let (s0, s1, d0) = (env.barcode_slots[0], env.barcode_slots[1], env.drive_addrs[0]);
    ch.move_medium(s0, d0).unwrap();
    let inv = ch.inventory().unwrap();
    let d = inv.element(d0).unwrap();
    assert!(d.full);
    assert_eq!(d.barcode.as_deref(), Some(env.barcodes[0].as_str()));
    assert_eq!(d.source, Some(s0));
    assert!(!inv.element(s0).unwrap().full);

    // Destination full (3b/0d).
    let e = ch.move_medium(s1, d0).unwrap_err();
    assert!(matches!(e, ChangerError::DestinationFull { to, .. } if to == d0), "{e:?}");
    assert!(e.to_string().contains("already holds a cartridge"), "{e}");
    assert!(e.to_string().contains("drive 500"), "{e}");
    // Into a full slot.
    let e = ch.move_medium(d0, s1).unwrap_err();
    assert!(matches!(e, ChangerError::DestinationFull { to, .. } if to == s1), "{e:?}");
    // Source empty (3b/0e).
    let e = ch.move_medium(empty_slot, env.drive_addrs[1]).unwrap_err();
    assert!(matches!(e, ChangerError::SourceEmpty { from, .. } if from == empty_slot), "{e:?}");
    assert!(e.to_string().contains(&format!("slot {empty_slot} is empty")), "{e}");
    // Unknown address.
    let e = ch.move_medium(s1, 4000).unwrap_err();
    assert!(matches!(e, ChangerError::BadAddress { address: 4000, .. }), "{e:?}");

    // Drive -> drive, drive -> mail slot -> home.
    ch.move_medium(d0, env.drive_addrs[1]).unwrap();
    ch.move_medium(env.drive_addrs[1], env.mail_addrs[0]).unwrap();
    let inv = ch.inventory().unwrap();
    let m = inv.element(env.mail_addrs[0]).unwrap();
    assert!(m.full && m.barcode.as_deref() == Some(env.barcodes[0].as_str()), "{m:?}");
    ch.move_medium(env.mail_addrs[0], s0).unwrap();

    // ---- the parser against real answers, mutated --------------------------------------
    let addrs = ch.element_addresses().unwrap();
    ch.move_medium(s1, d0).unwrap();
    let answers = vec![
        raw_res(&*t, ElementType::Transport, addrs.transport.0, addrs.transport.1, false),
        raw_res(&*t, ElementType::Storage, addrs.storage.0, addrs.storage.1, false),
        raw_res(&*t, ElementType::ImportExport, addrs.import_export.0, addrs.import_export.1, false),
        raw_res(&*t, ElementType::DataTransfer, addrs.data_transfer.0, addrs.data_transfer.1, true),
    ];
    ch.move_medium(d0, s1).unwrap();
    if let Ok(dir) = std::env::var("RV_DUMP_RES") {
        for (i, a) in answers.iter().enumerate() {
            std::fs::write(format!("{dir}/res-type{}.bin", i + 1), a).unwrap();
        }
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for a in &answers {
        assert!(!smc::parse_element_status(a).unwrap().is_empty());
        for _ in 0..5000 {
            let mut m = a.clone();
            for _ in 0..1 + next() % 8 {
                let i = (next() as usize) % m.len();
                m[i] = next() as u8;
            }
            if next() % 4 == 0 {
                m.truncate((next() as usize) % (m.len() + 1));
            }
            let _ = smc::parse_element_status(&m);
        }
    }

    // Everything is home again.
    let inv = ch.inventory().unwrap();
    for (b, s) in env.barcodes.iter().zip(&env.barcode_slots) {
        assert_eq!(inv.find_barcode(b).unwrap().address, *s);
    }
}
