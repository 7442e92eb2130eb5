//! `list_devices_in` on fake sysfs trees built in a temporary directory.

use std::fs;
use std::path::{Path, PathBuf};

use sgio::{list_devices_in, DeviceKind, SgDeviceInfo};

/// Builds `<root>/class/scsi_generic/<name>/device` as a symlink to
/// `<root>/devices/.../<addr>` holding the attribute files, as the kernel lays it out.
fn add(root: &Path, name: &str, addr: &str, attrs: &[(&str, &[u8])]) -> PathBuf {
    let host = addr.split(':').next().unwrap();
    let real = root
        .join(format!("devices/pci0000:00/0000:00:1f.0/host{host}/target{}/{addr}", &addr[..addr.rfind(':').unwrap()]));
    fs::create_dir_all(&real).unwrap();
    for (f, v) in attrs {
        fs::write(real.join(f), v).unwrap();
    }
    let class = root.join("class/scsi_generic").join(name);
    fs::create_dir_all(&class).unwrap();
    std::os::unix::fs::symlink(&real, class.join("device")).unwrap();
    real
}

#[test]
fn lists_tape_changer_and_disk_sorted_by_number() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Attributes as the kernel writes them: INQUIRY fields space-padded, newline-terminated.
    let tape = add(
        root,
        "sg10",
        "2:0:3:0",
        &[("type", b"1\n"), ("vendor", b"IBM     \n"), ("model", b"ULT3580-TD8     \n"), ("rev", b"MB28\n")],
    );
    for n in ["st0", "st0l", "st0m", "st0a", "nst0", "nst0l", "nst0m", "nst0a"] {
        fs::create_dir_all(tape.join("scsi_tape").join(n)).unwrap();
    }
    // VPD 0x80 as the kernel exposes it: the raw page.
    let mut pg80 = vec![0x01, 0x80, 0x00, 0x0c];
    pg80.extend_from_slice(b"1097000123  ");
    fs::write(tape.join("vpd_pg80"), &pg80).unwrap();
    add(
        root,
        "sg2",
        "2:0:3:1",
        &[("type", b"8\n"), ("vendor", b"IBM     \n"), ("model", b"3573-TL         \n"), ("rev", b"F.11\n")],
    );
    let disk = add(
        root,
        "sg0",
        "0:0:0:0",
        &[("type", b"0\n"), ("vendor", b"ATA     \n"), ("model", b"Samsung SSD 870 \n"), ("rev", b"2B6Q\n")],
    );
    fs::create_dir_all(disk.join("block/sda")).unwrap();
    add(
        root,
        "sg3",
        "3:0:0:0",
        &[("type", b"13\n"), ("vendor", b"LSI\n"), ("model", b"SAS2X36\n"), ("rev", b"0e12\n")],
    );

    let devs = list_devices_in(root);
    let names: Vec<&str> = devs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["sg0", "sg2", "sg3", "sg10"], "numeric order, not lexical");

    let t = &devs[3];
    assert_eq!(
        t,
        &SgDeviceInfo {
            name: "sg10".into(),
            path: "/dev/sg10".into(),
            peripheral_type: 1,
            kind: DeviceKind::Tape,
            vendor: "IBM".into(),
            model: "ULT3580-TD8".into(),
            rev: "MB28".into(),
            scsi_address: Some("2:0:3:0".into()),
            serial: Some("1097000123".into()),
            other_node: Some("/dev/nst0".into()),
        }
    );
    let line = t.to_string();
    assert!(line.starts_with("/dev/sg10  tape  IBM ULT3580-TD8 MB28"), "{line}");
    assert!(
        line.contains("serial 1097000123") && line.contains("[2:0:3:0]") && line.contains("(also /dev/nst0)"),
        "{line}"
    );

    let c = &devs[1];
    assert_eq!((c.kind, c.peripheral_type, c.model.as_str()), (DeviceKind::Changer, 8, "3573-TL"));
    assert_eq!((c.serial.as_deref(), c.other_node.as_deref()), (None, None));
    assert_eq!(devs[0].kind, DeviceKind::Disk);
    assert_eq!(devs[0].other_node.as_deref(), Some(Path::new("/dev/sda")));
    assert_eq!(devs[2].kind, DeviceKind::Other(13));
    assert!(devs[2].kind.to_string().contains("enclosure"), "{}", devs[2].kind);
}

#[test]
fn missing_or_broken_entries_are_skipped_or_blank() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // No type: the device is going away; skipped.
    add(root, "sg0", "0:0:0:0", &[("vendor", b"X\n")]);
    // Unparsable type: skipped.
    add(root, "sg1", "0:0:1:0", &[("type", b"tape\n")]);
    // Only a type: listed, text fields empty.
    add(root, "sg2", "0:0:2:0", &[("type", b"1\n")]);
    // A class entry without a device link at all.
    fs::create_dir_all(root.join("class/scsi_generic/sg3")).unwrap();
    // Non-UTF-8 vendor bytes do not break the listing.
    add(root, "sg4", "0:0:4:0", &[("type", b"8\n"), ("vendor", b"\xffACME\n")]);

    let devs = list_devices_in(root);
    assert_eq!(devs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["sg2", "sg4"]);
    assert_eq!((devs[0].vendor.as_str(), devs[0].model.as_str(), devs[0].rev.as_str()), ("", "", ""));
    assert_eq!(devs[0].kind, DeviceKind::Tape);
    assert!(devs[1].vendor.ends_with("ACME"));
}

#[test]
fn no_scsi_generic_class_means_no_devices() {
    let dir = tempfile::tempdir().unwrap();
    assert!(list_devices_in(dir.path()).is_empty());
    assert!(list_devices_in(&dir.path().join("nonexistent")).is_empty());
}

#[test]
fn the_real_sysfs_lists_without_panicking() {
    // On this build machine there are usually none; on an appliance, every entry has a /dev path.
    for d in sgio::list_devices() {
        assert!(d.path.starts_with("/dev/sg"), "{d}");
    }
}
