//! Format detection: which container format a file or LUN holds, from its content alone.
//!
//! **Invariant:** content in a container format that qemu-img knows is never taken for a raw
//! disk. Every format QEMU probes for has its magic here (QEMU's `block/*.c` probe functions,
//! plus the footer of a fixed VHD, which QEMU does not probe for): the formats we read are
//! decoded, the others are refused with an error that names the format and says how to
//! convert it. Storing such a file as "raw" would give a restore point that is the container,
//! not the guest's disk, and nobody would notice until the restore.

use blocksource::{BlockSource, SourceError};

/// Bytes read from the start to detect a format.
const PROBE_BYTES: u64 = 4096;
/// Bytes read from the end: fixed VHD footers and DMG trailers are one sector.
const TAIL_BYTES: u64 = 512;

/// Formats we do not read: (detected name, how an operator knows it).
const REFUSED: &[(&str, &str)] = &[
    ("qcow", "a QEMU qcow version 1 image"),
    ("vdi", "a VirtualBox VDI image"),
    ("qed", "a QEMU QED image"),
    ("dmg", "an Apple disk image (DMG)"),
    ("parallels", "a Parallels image"),
    ("cloop", "a compressed loop (cloop) image"),
    ("bochs", "a Bochs disk image"),
    ("luks", "a LUKS-encrypted image"),
];

/// The first bytes of a cloop image (version 2.0), as QEMU probes them.
const CLOOP_MAGIC: &[u8] = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";

/// Which format `head` (the first bytes) and `tail` (the last sector, empty for files shorter
/// than one) of a `size`-byte container show.
pub(crate) fn detect(head: &[u8], tail: &[u8], size: u64) -> &'static str {
    let at = |off: usize, magic: &[u8]| head.len() >= off + magic.len() && &head[off..off + magic.len()] == magic;
    if qcow2::is_qcow2(head) {
        // Version 1 is a different format ("qcow") with the same magic.
        return if at(4, &1u32.to_be_bytes()) { "qcow" } else { "qcow2" };
    }
    if vhdx::is_vhdx(head) {
        return "vhdx";
    }
    if vmdk::is_vmdk(head) {
        return "vmdk";
    }
    // Dynamic and differencing VHDs start with a copy of their footer.
    if vhd::is_vhd(head) {
        return "vhd";
    }
    if at(0x40, &0xbeda_107f_u32.to_le_bytes()) {
        return "vdi";
    }
    if at(0, b"QED\0") {
        return "qed";
    }
    if at(0, b"WithoutFreeSpace") || at(0, b"WithouFreSpacExt") {
        return "parallels";
    }
    if at(0, CLOOP_MAGIC) {
        return "cloop";
    }
    if at(0, b"Bochs Virtual HD Image\0") {
        return "bochs";
    }
    if at(0, b"LUKS\xba\xbe") {
        return "luks";
    }
    // Trailers: a fixed VHD's footer, a DMG's "koly" block (version 4, 512 bytes long).
    if tail.len() as u64 == TAIL_BYTES {
        if vhd::is_vhd_footer(tail, size) {
            return "vhd";
        }
        if tail.starts_with(b"koly") && tail[4..12] == [0, 0, 0, 4, 0, 0, 2, 0] {
            return "dmg";
        }
    }
    "raw"
}

/// Which image format `container` holds: reads its first 4 KiB and its last sector.
pub fn detect_format(container: &dyn BlockSource) -> Result<&'static str, SourceError> {
    let size = container.size();
    let len = size.min(PROBE_BYTES) as usize;
    let mut head = vec![0u8; len];
    if len > 0 {
        container.read_at(0, &mut head)?;
    }
    let mut tail = Vec::new();
    if size >= TAIL_BYTES {
        tail = vec![0u8; TAIL_BYTES as usize];
        container.read_at(size - TAIL_BYTES, &mut tail)?;
    }
    Ok(detect(head.as_slice(), &tail, size))
}

/// The error for a container in a format we detect but do not read, or `None` for a format we
/// read.
pub(crate) fn refusal(format: &str, what: &str) -> Option<SourceError> {
    let (_, name) = REFUSED.iter().find(|(f, _)| *f == format)?;
    let detail = if format == "luks" {
        format!(
            "{name}; rackvault cannot decrypt it: back up the disk it decrypts to (e.g. `qemu-img convert --object secret,id=sec0,file=KEYFILE --image-opts driver=luks,key-secret=sec0,file.filename=IMAGE -O qcow2 COPY.qcow2`)"
        )
    } else {
        format!(
            "{name} (qemu-img format {format:?}); rackvault reads qcow2, VMDK, VHDX, VHD and raw disks: convert it first with `qemu-img convert -f {format} -O qcow2 IMAGE COPY.qcow2` (or `-O raw`) and back up the copy"
        )
    };
    Some(SourceError::Unsupported { what: what.to_string(), detail })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(off: usize, magic: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[off..off + magic.len()].copy_from_slice(magic);
        b
    }

    #[test]
    fn every_container_format_qemu_probes_for_is_detected_by_its_magic() {
        let cases: &[(Vec<u8>, &str)] = &[
            (at(0, b"QFI\xfb\0\0\0\x03"), "qcow2"),
            (at(0, b"QFI\xfb\0\0\0\x01"), "qcow"),
            (at(0, b"vhdxfile"), "vhdx"),
            (at(0, b"KDMV"), "vmdk"),
            (at(0, b"# Disk DescriptorFile\n"), "vmdk"),
            (at(0, b"conectix"), "vhd"),
            (at(0x40, &[0x7f, 0x10, 0xda, 0xbe]), "vdi"),
            (at(0, b"QED\0"), "qed"),
            (at(0, b"WithoutFreeSpace"), "parallels"),
            (at(0, b"WithouFreSpacExt"), "parallels"),
            (at(0, CLOOP_MAGIC), "cloop"),
            (at(0, b"Bochs Virtual HD Image\0"), "bochs"),
            (at(0, b"LUKS\xba\xbe\0\x01"), "luks"),
            (at(0, b"\xeb\x63\x90"), "raw"),
        ];
        for (head, want) in cases {
            assert_eq!(detect(head, &[0u8; 512], 1 << 20), *want, "{want}");
        }
        let mut koly = vec![0u8; 512];
        koly[..12].copy_from_slice(b"koly\0\0\0\x04\0\0\x02\0");
        assert_eq!(detect(&[0u8; 4096], &koly, 1 << 20), "dmg");
    }

    #[test]
    fn refused_formats_say_which_format_and_how_to_convert_it() {
        let e = refusal("vdi", "/images/a.vdi").map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("VirtualBox VDI") && e.contains("qemu-img convert -f vdi -O qcow2"), "{e}");
        assert!(refusal("vhd", "x").is_none() && refusal("raw", "x").is_none());
        for (f, _) in REFUSED {
            assert!(refusal(f, "x").is_some());
        }
    }
}
