//! Listing the SCSI generic devices from sysfs (`/sys/class/scsi_generic/sgN/device/`), without
//! opening any of them: listing never disturbs a drive in use.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use scsi::parse::device_type;

/// What kind of device an sg node leads to (SCSI peripheral device type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// Peripheral type 0: direct-access block device.
    Disk,
    /// Peripheral type 1: sequential-access device (tape drive).
    Tape,
    /// Peripheral type 8: medium changer (tape library robot).
    Changer,
    /// Any other peripheral type (enclosures, CD/DVD, RAID controllers...).
    Other(u8),
}

impl DeviceKind {
    /// The kind of a peripheral device type.
    pub fn from_type(t: u8) -> DeviceKind {
        match t {
            device_type::DISK => DeviceKind::Disk,
            device_type::TAPE => DeviceKind::Tape,
            device_type::CHANGER => DeviceKind::Changer,
            other => DeviceKind::Other(other),
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceKind::Disk => f.write_str("disk"),
            DeviceKind::Tape => f.write_str("tape"),
            DeviceKind::Changer => f.write_str("changer"),
            DeviceKind::Other(t) => write!(f, "{} (type 0x{t:02x})", device_type::name(*t)),
        }
    }
}

/// One SCSI generic device as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgDeviceInfo {
    /// The sg node's name (`sg3`).
    pub name: String,
    /// The node to open (`/dev/sg3`).
    pub path: PathBuf,
    /// SCSI peripheral device type (0 disk, 1 tape, 8 changer...).
    pub peripheral_type: u8,
    pub kind: DeviceKind,
    /// INQUIRY vendor, model and revision, trimmed.
    pub vendor: String,
    pub model: String,
    pub rev: String,
    /// `host:channel:target:lun`, when sysfs shows it.
    pub scsi_address: Option<String>,
    /// The unit serial number (VPD page 0x80), when the kernel exposes it (`vpd_pg80`).
    pub serial: Option<String>,
    /// The node another driver gives the same device (`/dev/nst0` for a tape drive bound to
    /// st, `/dev/sda` for a disk), for the operator's orientation; rackvault never opens it.
    pub other_node: Option<PathBuf>,
}

impl fmt::Display for SgDeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}  {}  {} {} {}", self.path.display(), self.kind, self.vendor, self.model, self.rev)?;
        if let Some(s) = &self.serial {
            write!(f, "  serial {s}")?;
        }
        if let Some(a) = &self.scsi_address {
            write!(f, "  [{a}]")?;
        }
        if let Some(n) = &self.other_node {
            write!(f, "  (also {})", n.display())?;
        }
        Ok(())
    }
}

/// The SCSI generic devices of this machine, from `/sys`, sorted by number. Empty when there
/// are none or the sg module is not loaded.
pub fn list_devices() -> Vec<SgDeviceInfo> {
    list_devices_in(Path::new("/sys"))
}

/// As [`list_devices`], with `sysfs_root` in place of `/sys` (for tests): reads
/// `<root>/class/scsi_generic/*/device/{type,vendor,model,rev}`. An entry whose `type` is
/// missing or unreadable is skipped (the device is going away); missing text fields are empty.
/// Device paths are always `/dev/<name>`.
pub fn list_devices_in(sysfs_root: &Path) -> Vec<SgDeviceInfo> {
    let class = sysfs_root.join("class/scsi_generic");
    let Ok(entries) = fs::read_dir(&class) else { return Vec::new() };
    let mut out: Vec<SgDeviceInfo> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            describe_one(&class.join(&name).join("device"), name)
        })
        .collect();
    out.sort_by(|a, b| (sg_number(&a.name), &a.name).cmp(&(sg_number(&b.name), &b.name)));
    out
}

fn sg_number(name: &str) -> u64 {
    name.strip_prefix("sg").and_then(|n| n.parse().ok()).unwrap_or(u64::MAX)
}

fn read_trimmed(p: &Path) -> Option<String> {
    let b = fs::read(p).ok()?;
    Some(String::from_utf8_lossy(&b).trim().to_string())
}

fn describe_one(dev: &Path, name: String) -> Option<SgDeviceInfo> {
    let peripheral_type: u8 = read_trimmed(&dev.join("type"))?.parse().ok()?;
    let text = |f: &str| read_trimmed(&dev.join(f)).unwrap_or_default();
    // `device` is a symlink to .../host0/target0:0:3/0:0:3:0.
    let scsi_address = fs::read_link(dev)
        .ok()
        .and_then(|t| t.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .filter(|a| a.split(':').count() == 4 && a.split(':').all(|p| p.parse::<u64>().is_ok()));
    let serial =
        fs::read(dev.join("vpd_pg80")).ok().and_then(|b| scsi::parse::vpd_serial(&b).ok()).filter(|s| !s.is_empty());
    Some(SgDeviceInfo {
        path: PathBuf::from("/dev").join(&name),
        name,
        peripheral_type,
        kind: DeviceKind::from_type(peripheral_type),
        vendor: text("vendor"),
        model: text("model"),
        rev: text("rev"),
        scsi_address,
        serial,
        other_node: other_node(dev),
    })
}

/// `/dev/nstN` from `device/scsi_tape/nstN` (the non-rewinding node), or `/dev/sdX` from
/// `device/block/sdX`.
fn other_node(dev: &Path) -> Option<PathBuf> {
    let names = |sub: &str| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dev.join(sub))
            .map(|it| it.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let tapes = names("scsi_tape");
    // st creates st0, st0l, st0m, st0a and their nst twins; the plain nst is the one to name.
    if let Some(n) =
        tapes.iter().find(|n| n.len() > 3 && n.starts_with("nst") && n[3..].bytes().all(|b| b.is_ascii_digit()))
    {
        return Some(PathBuf::from("/dev").join(n));
    }
    names("block").into_iter().next().map(|n| PathBuf::from("/dev").join(n))
}
