//! Reading a VMware `.vmx` file: which virtual disks a VM has.
//!
//! A `.vmx` is a flat list of `key = "value"` lines. Each virtual disk is a device node such
//! as `scsi0:0` with keys `scsi0:0.present`, `scsi0:0.fileName` and optionally
//! `scsi0:0.deviceType`. A VM folder backup captures the `.vmx` itself (so the VM can be
//! recreated) and every disk it references, each as a member of one restore point.
//!
//! After a VMware snapshot the `fileName` of a disk points at the snapshot delta
//! (`vm-000001.vmdk`), whose parent chain leads back to the base disk; the VMDK reader
//! follows that chain, so the guest-visible image is what gets backed up.
//!
//! The file is untrusted input: it is size-capped by the caller, non-UTF-8 bytes are
//! replaced, and malformed lines are skipped (VMware ignores them too).

use std::collections::BTreeMap;

/// Largest `.vmx` we read; real ones are a few KiB.
pub const MAX_VMX_BYTES: u64 = 1 << 20;

/// One virtual disk a `.vmx` references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmxDisk {
    /// Device node, e.g. `scsi0:0`, `sata0:1`, `nvme0:0`, `ide0:0`.
    pub node: String,
    /// The `fileName` value: relative to the VM folder, or an absolute datastore path.
    pub file_name: String,
}

/// What a VM folder backup needs from a `.vmx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmxInfo {
    /// `displayName`, if set.
    pub display_name: Option<String>,
    /// Disks in device order (`ide`, `nvme`, `sata`, `scsi`, then by bus and unit).
    pub disks: Vec<VmxDisk>,
}

/// Parse the key/value lines of a `.vmx`. Keys are case-insensitive in VMware; they are
/// lower-cased here.
pub fn parse_entries(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim();
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        if !key.is_empty() {
            out.insert(key, unescape(value));
        }
    }
    out
}

/// VMware escapes special characters in values as `|XX` (hex), e.g. `|22` for a quote.
fn unescape(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'|' && i + 2 < bytes.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a `deviceType` value names a hard disk (and not a CD-ROM, floppy or raw device).
fn is_disk_device_type(device_type: Option<&String>) -> bool {
    match device_type.map(|s| s.to_ascii_lowercase()) {
        None => true,
        Some(t) => matches!(t.as_str(), "disk" | "scsi-harddisk" | "ata-harddisk" | "plaindisk"),
    }
}

/// Sort key for a device node: bus kind, bus number, unit number.
fn node_key(node: &str) -> (String, u32, u32) {
    let kind: String = node.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    let rest = &node[kind.len()..];
    let (bus, unit) = rest.split_once(':').unwrap_or((rest, "0"));
    (kind, bus.parse().unwrap_or(u32::MAX), unit.parse().unwrap_or(u32::MAX))
}

/// Which disks a `.vmx` references. CD-ROM images, absent devices and raw device mappings
/// are left out.
pub fn parse(text: &str) -> VmxInfo {
    let entries = parse_entries(text);
    let mut disks = Vec::new();
    for (key, value) in &entries {
        let Some(node) = key.strip_suffix(".filename") else { continue };
        let (kind, bus, unit) = node_key(node);
        if !matches!(kind.as_str(), "scsi" | "sata" | "ide" | "nvme") || bus == u32::MAX || unit == u32::MAX {
            continue;
        }
        if entries.get(&format!("{node}.present")).is_some_and(|p| !p.eq_ignore_ascii_case("true")) {
            continue;
        }
        if !is_disk_device_type(entries.get(&format!("{node}.devicetype"))) {
            continue;
        }
        if value.is_empty() || !value.to_ascii_lowercase().ends_with(".vmdk") {
            continue;
        }
        disks.push(VmxDisk { node: node.to_string(), file_name: value.clone() });
    }
    disks.sort_by_key(|d| node_key(&d.node));
    VmxInfo { display_name: entries.get("displayname").cloned(), disks }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#".encoding = "UTF-8"
config.version = "8"
virtualHW.version = "19"
displayName = "web|2201"
scsi0.present = "TRUE"
scsi0.virtualDev = "pvscsi"
scsi0:0.fileName = "web01-000001.vmdk"
scsi0:0.present = "TRUE"
scsi0:1.fileName = "data.vmdk"
scsi0:1.present = "TRUE"
scsi0:2.fileName = "gone.vmdk"
scsi0:2.present = "FALSE"
SATA0:0.FileName = "sata.vmdk"
sata0:1.deviceType = "cdrom-image"
sata0:1.fileName = "/vmfs/volumes/ds1/iso/debian.iso"
sata0:1.present = "TRUE"
scsi0:10.fileName = "late.vmdk"
nvme0:0.fileName = "nv.vmdk"
ethernet0.fileName = "not-a-disk.vmdk"
garbage line without equals
"#;

    #[test]
    fn finds_the_disks_in_device_order() {
        let info = parse(SAMPLE);
        assert_eq!(info.display_name.as_deref(), Some("web\"01"));
        let nodes: Vec<_> = info.disks.iter().map(|d| (d.node.as_str(), d.file_name.as_str())).collect();
        assert_eq!(
            nodes,
            vec![
                ("nvme0:0", "nv.vmdk"),
                ("sata0:0", "sata.vmdk"),
                ("scsi0:0", "web01-000001.vmdk"),
                ("scsi0:1", "data.vmdk"),
                ("scsi0:10", "late.vmdk"),
            ]
        );
    }

    #[test]
    fn hostile_text_does_not_panic() {
        for s in
            ["|", "a = \"|", "a=|4", "scsi:.filename = x.vmdk", "scsi99999999999:0.fileName = \"a.vmdk\"", "=", "\"\""]
        {
            let _ = parse(s);
        }
    }
}
