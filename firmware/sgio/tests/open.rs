//! Opening things that are not SCSI generic devices. Runs anywhere: no /dev/sg* is needed.

use std::path::Path;

use sgio::{SgDevice, SgError};

fn open_err(p: &Path) -> SgError {
    SgDevice::open(p).expect_err("must not open as an sg device")
}

#[test]
fn a_regular_file_is_not_an_sg_device() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("sg0");
    std::fs::write(&f, b"not a device").unwrap();
    let err = open_err(&f);
    let msg = err.to_string();
    assert!(matches!(err, SgError::NotSg { .. }), "{err:?}");
    assert!(msg.contains(&format!("{} is not a SCSI generic device", f.display())), "{msg}");
    assert!(msg.contains("regular file") && msg.contains("/dev/sgN"), "{msg}");
    assert!(msg.contains("rackvault tape devices"), "{msg}");
    // It was never opened for writing, so never touched.
    assert_eq!(std::fs::read(&f).unwrap(), b"not a device");
}

#[test]
fn dev_null_is_not_an_sg_device() {
    let err = open_err(Path::new("/dev/null"));
    let msg = err.to_string();
    assert!(matches!(err, SgError::NotSg { .. }), "{err:?}");
    assert!(msg.starts_with("/dev/null is not a SCSI generic device: it is character device 1:3"), "{msg}");
    assert!(msg.contains("/dev/sgN"), "{msg}");
}

#[test]
fn a_directory_is_not_an_sg_device() {
    let dir = tempfile::tempdir().unwrap();
    let msg = open_err(dir.path()).to_string();
    assert!(msg.contains("is not a SCSI generic device: it is a directory"), "{msg}");
}

#[test]
fn a_missing_path_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sg42");
    let err = open_err(&p);
    let msg = err.to_string();
    assert!(matches!(err, SgError::NotFound { .. }), "{err:?}");
    assert!(msg.starts_with(&format!("{}: no such device node", p.display())), "{msg}");
    assert!(msg.contains("/dev/sgN") && msg.contains("powered on"), "{msg}");
}

#[test]
fn a_dangling_symlink_is_not_found() {
    // /dev/tape/by-id/... links dangle when the drive goes away.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("scsi-3500110a0012345");
    std::os::unix::fs::symlink(dir.path().join("sg7"), &link).unwrap();
    assert!(matches!(open_err(&link), SgError::NotFound { .. }));
}

#[test]
fn a_symlink_to_a_non_sg_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("tape0");
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    let msg = open_err(&link).to_string();
    assert!(msg.contains("tape0 is not a SCSI generic device: it is character device 1:3"), "{msg}");
}

#[test]
fn errors_are_send_sync_and_carry_no_debug_noise() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<SgError>();
    assert_send_sync::<SgDevice>();
}
