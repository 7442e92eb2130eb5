//! INQUIRY through a real SCSI generic device. **Runs only on hardware**: set
//! `RACKVAULT_SG_DEVICE=/dev/sgN` to a tape drive or changer (the test reads only; it never
//! moves tape). Without the variable the test returns at once and says so; CI and development
//! machines have no /dev/sg*.

use std::path::PathBuf;

use scsi::cdb::spc;
use scsi::{Command, ScsiTransport, Status};
use sgio::SgDevice;

fn device() -> Option<PathBuf> {
    match std::env::var_os("RACKVAULT_SG_DEVICE") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            eprintln!(
                "RACKVAULT_SG_DEVICE is not set: skipping the hardware test (set it to a /dev/sgN tape or changer)"
            );
            None
        }
    }
}

#[test]
fn inquiry_on_real_hardware() {
    let Some(path) = device() else { return };
    let dev = SgDevice::open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(dev.driver_version() >= 30000);
    assert_eq!(dev.describe(), format!("sg:{}", path.display()));
    eprintln!(
        "{}: sg driver {}, reserved buffer {} bytes",
        path.display(),
        dev.driver_version(),
        dev.reserved_size().unwrap()
    );

    let cdb = spc::inquiry(96);
    let mut buf = [0u8; 96];
    let c = dev.execute(&mut Command::read(&cdb, &mut buf)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.status, Status::Good, "{c:?}");
    assert!(c.transferred >= 36 && c.transferred <= 96, "{c:?}");
    let inq = scsi::parse::inquiry(&buf[..c.transferred]).unwrap();
    eprintln!(
        "{}: {} {} {} ({})",
        path.display(),
        inq.vendor,
        inq.product,
        inq.revision,
        scsi::parse::device_type::name(inq.device_type)
    );
    assert!(
        matches!(inq.device_type, 0x01 | 0x08),
        "RACKVAULT_SG_DEVICE should be a tape drive or changer, got {}",
        scsi::parse::device_type::name(inq.device_type)
    );

    // TEST UNIT READY has no data phase; GOOD, or CHECK CONDITION with sense (no medium,
    // becoming ready, unit attention), both are device answers.
    let tur = spc::test_unit_ready();
    let c = dev.execute(&mut Command::none(&tur)).unwrap_or_else(|e| panic!("{e}"));
    if c.status == Status::CheckCondition {
        assert!(c.sense.is_some(), "CHECK CONDITION without sense: {c:?}");
    }
}
