//! Block devices as source and target: real loop devices (root). A block device reports no
//! holes, so every chunk is read; restoring onto one must overwrite old contents with zeros
//! where the backup has zero chunks.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use e2e::*;

const MIB: u64 = 1 << 20;

/// A loop device over a file, detached on drop (also during a panic).
struct LoopDevice {
    dev: PathBuf,
}

impl LoopDevice {
    fn attach(file: &Path) -> Result<LoopDevice, String> {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup --find --show {} failed: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(LoopDevice { dev: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()) })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("--detach").arg(&self.dev).status();
    }
}

fn attach_or_skip(file: &Path) -> Option<LoopDevice> {
    match LoopDevice::attach(file) {
        Ok(d) => Some(d),
        Err(e) if std::env::var("RACKVAULT_TEST_NO_ROOT").is_ok_and(|v| v == "1") => {
            eprintln!("note: block device test skipped (RACKVAULT_TEST_NO_ROOT=1): {e}");
            None
        }
        Err(e) => panic!(
            "block device tests need root and loop devices: {e}\n  run the tests as root, or set RACKVAULT_TEST_NO_ROOT=1 to skip them"
        ),
    }
}

#[test]
fn back_up_a_block_device_and_restore_onto_another() {
    let d = scratch("blockdev");
    let img = d.path().join("disk.raw");
    make_image(&img, 24 * MIB, 4242, Profile::VM);
    let want = hash_file(&img);
    let Some(source) = attach_or_skip(&img) else { return };

    let store = d.path().join("store");
    let b = backup(&source.dev, &store, "dev", &[]);
    assert_eq!(b["bytes_logical"].as_u64(), Some(24 * MIB));
    // A block device has no holes to skip: everything is read, zero chunks still not stored.
    assert_eq!(b["bytes_read"].as_u64(), Some(24 * MIB));
    assert!(b["chunks_zero"].as_u64().unwrap() > 0, "{b}");

    // The target device starts full of garbage; the restore must leave exactly the image.
    let target_file = d.path().join("target.raw");
    std::fs::write(&target_file, random_bytes(77, (24 * MIB) as usize)).unwrap();
    let Some(target) = attach_or_skip(&target_file) else { return };
    let r = restore(&store, "dev", &target.dev, &["--verify"]);
    assert_eq!(r["verified"].as_bool(), Some(true), "{r}");
    drop(target);
    assert_eq!(hash_file(&target_file), want, "restored device differs from the source");

    // Refused: qcow2 onto a device.
    let target = attach_or_skip(&target_file).unwrap();
    rv!["restore", "dev", "--store", &store, "--to", &target.dev, "--format", "qcow2"]
        .run()
        .failure()
        .stderr_has(&["block device", "--format raw"]);
    drop(target);
    assert_eq!(hash_file(&target_file), want, "a refused restore must not touch the device");
}
