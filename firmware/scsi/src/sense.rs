//! Sense data decoding (SPC-4 §4.4).
//!
//! Two wire formats exist; both decode into one [`Sense`]:
//! ```text
//! fixed (response code 0x70 current / 0x71 deferred), >= 8 bytes, usually 18:
//!   0: VALID(1) | code(7)      2: FILEMARK | EOM | ILI | rsvd | SENSE KEY(4)
//!   3..7: INFORMATION (32 bit, meaningful when VALID)    7: additional length (n - 8)
//!   8..12: COMMAND-SPECIFIC INFORMATION   12: ASC   13: ASCQ   14: FRU
//!   15..18: SKSV(1) | SENSE-KEY SPECIFIC(23)
//! descriptor (0x72 current / 0x73 deferred), >= 8 bytes:
//!   1: SENSE KEY(4)   2: ASC   3: ASCQ   7: additional length, then descriptors:
//!   [type, len, body...]: 0x00 information (body[0] VALID, body[2..10] 64-bit),
//!   0x01 command-specific (body[2..10]), 0x02 sense-key specific (body[0..3]),
//!   0x04 stream commands (body[1]: FILEMARK 0x80 | EOM 0x40 | ILI 0x20)
//! ```
//! The decoder trusts no length field: it reads only bytes that are present, and stops at the
//! first descriptor that would run past the buffer. Short fixed-format sense (fewer than 14
//! bytes) decodes with ASC/ASCQ 0.

use std::fmt;

/// SENSE KEY (4 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SenseKey {
    NoSense,
    RecoveredError,
    NotReady,
    MediumError,
    HardwareError,
    IllegalRequest,
    UnitAttention,
    DataProtect,
    BlankCheck,
    VendorSpecific,
    CopyAborted,
    AbortedCommand,
    VolumeOverflow,
    Miscompare,
    Completed,
    Reserved(u8),
}

impl SenseKey {
    pub fn from_nibble(n: u8) -> SenseKey {
        match n & 0x0f {
            0x0 => SenseKey::NoSense,
            0x1 => SenseKey::RecoveredError,
            0x2 => SenseKey::NotReady,
            0x3 => SenseKey::MediumError,
            0x4 => SenseKey::HardwareError,
            0x5 => SenseKey::IllegalRequest,
            0x6 => SenseKey::UnitAttention,
            0x7 => SenseKey::DataProtect,
            0x8 => SenseKey::BlankCheck,
            0x9 => SenseKey::VendorSpecific,
            0xa => SenseKey::CopyAborted,
            0xb => SenseKey::AbortedCommand,
            0xd => SenseKey::VolumeOverflow,
            0xe => SenseKey::Miscompare,
            0xf => SenseKey::Completed,
            other => SenseKey::Reserved(other),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SenseKey::NoSense => "NO SENSE",
            SenseKey::RecoveredError => "RECOVERED ERROR",
            SenseKey::NotReady => "NOT READY",
            SenseKey::MediumError => "MEDIUM ERROR",
            SenseKey::HardwareError => "HARDWARE ERROR",
            SenseKey::IllegalRequest => "ILLEGAL REQUEST",
            SenseKey::UnitAttention => "UNIT ATTENTION",
            SenseKey::DataProtect => "DATA PROTECT",
            SenseKey::BlankCheck => "BLANK CHECK",
            SenseKey::VendorSpecific => "VENDOR SPECIFIC",
            SenseKey::CopyAborted => "COPY ABORTED",
            SenseKey::AbortedCommand => "ABORTED COMMAND",
            SenseKey::VolumeOverflow => "VOLUME OVERFLOW",
            SenseKey::Miscompare => "MISCOMPARE",
            SenseKey::Completed => "COMPLETED",
            SenseKey::Reserved(_) => "RESERVED SENSE KEY",
        }
    }
}

impl fmt::Display for SenseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decoded sense data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sense {
    /// Response code: 0x70/0x71 fixed, 0x72/0x73 descriptor.
    pub response_code: u8,
    /// The sense describes an earlier command (deferred error), not this one.
    pub deferred: bool,
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    /// Tape: a filemark was read or spaced over.
    pub filemark: bool,
    /// Tape: end of medium / early warning; also end of partition.
    pub eom: bool,
    /// Incorrect length indicator (tape block longer or shorter than requested).
    pub ili: bool,
    /// The INFORMATION field, when valid (e.g. the failing LBA, or tape residue).
    pub information: Option<u64>,
    /// The COMMAND-SPECIFIC INFORMATION field, when non-zero.
    pub command_specific: Option<u64>,
    /// SENSE-KEY SPECIFIC bytes, when SKSV is set (e.g. field pointer of an invalid CDB byte).
    pub key_specific: Option<[u8; 3]>,
}

impl Sense {
    /// Decodes sense bytes as returned by the device. `None` when the buffer holds no
    /// recognisable sense (empty, or an unknown response code).
    pub fn parse(b: &[u8]) -> Option<Sense> {
        let code = *b.first()? & 0x7f;
        match code {
            0x70 | 0x71 => Some(Self::parse_fixed(b, code)),
            0x72 | 0x73 => Some(Self::parse_descriptor(b, code)),
            _ => None,
        }
    }

    fn parse_fixed(b: &[u8], code: u8) -> Sense {
        let at = |i: usize| b.get(i).copied().unwrap_or(0);
        // The additional length bounds the valid bytes; never trust it past the buffer.
        let end = b.len().min(8 + at(7) as usize);
        let at_valid = |i: usize| if i < end { at(i) } else { 0 };
        let b2 = at(2);
        let be32 = |i: usize| u32::from_be_bytes([at(i), at(i + 1), at(i + 2), at(i + 3)]) as u64;
        let valid = at(0) & 0x80 != 0;
        let csi = if end >= 12 { be32(8) } else { 0 };
        let sks = [at_valid(15), at_valid(16), at_valid(17)];
        Sense {
            response_code: code,
            deferred: code == 0x71,
            key: SenseKey::from_nibble(b2),
            asc: at_valid(12),
            ascq: at_valid(13),
            filemark: b2 & 0x80 != 0,
            eom: b2 & 0x40 != 0,
            ili: b2 & 0x20 != 0,
            information: (valid && b.len() >= 7).then(|| be32(3)),
            command_specific: (csi != 0).then_some(csi),
            key_specific: (sks[0] & 0x80 != 0).then_some(sks),
        }
    }

    fn parse_descriptor(b: &[u8], code: u8) -> Sense {
        let at = |i: usize| b.get(i).copied().unwrap_or(0);
        let mut s = Sense {
            response_code: code,
            deferred: code == 0x73,
            key: SenseKey::from_nibble(at(1)),
            asc: at(2),
            ascq: at(3),
            filemark: false,
            eom: false,
            ili: false,
            information: None,
            command_specific: None,
            key_specific: None,
        };
        let end = b.len().min(8 + at(7) as usize);
        let mut i = 8;
        while i + 2 <= end {
            let ty = b[i];
            let len = b[i + 1] as usize;
            let Some(body) = b.get(i + 2..i + 2 + len) else { break };
            if i + 2 + len > end {
                break;
            }
            let be64 = |o: usize| body.get(o..o + 8).map(|x| u64::from_be_bytes(x.try_into().unwrap_or([0; 8])));
            match ty {
                0x00 if body.first().is_some_and(|v| v & 0x80 != 0) => s.information = be64(2),
                0x01 => s.command_specific = be64(2).filter(|v| *v != 0),
                0x02 if body.len() >= 3 && body[0] & 0x80 != 0 => s.key_specific = Some([body[0], body[1], body[2]]),
                0x04 if body.len() >= 2 => {
                    s.filemark = body[1] & 0x80 != 0;
                    s.eom = body[1] & 0x40 != 0;
                    s.ili = body[1] & 0x20 != 0;
                }
                _ => {}
            }
            i += 2 + len;
        }
        s
    }

    /// A human-readable description of ASC/ASCQ, when it is a common one.
    pub fn asc_text(&self) -> Option<&'static str> {
        asc_text(self.asc, self.ascq)
    }

    /// UNIT ATTENTION: the device reports a state change (reset, capacity change, media change)
    /// and failed this command once; it is normally worth retrying.
    pub fn is_unit_attention(&self) -> bool {
        self.key == SenseKey::UnitAttention
    }
}

impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.key)?;
        match self.asc_text() {
            Some(t) => write!(f, ", {t} (ASC/ASCQ {:02x}/{:02x})", self.asc, self.ascq)?,
            None => write!(f, ", ASC/ASCQ {:02x}/{:02x}", self.asc, self.ascq)?,
        }
        if self.filemark {
            f.write_str(", filemark")?;
        }
        if self.eom {
            f.write_str(", end of medium")?;
        }
        if self.ili {
            f.write_str(", incorrect length")?;
        }
        if let Some(i) = self.information {
            write!(f, ", information {i}")?;
        }
        if self.deferred {
            f.write_str(" (deferred error of an earlier command)")?;
        }
        Ok(())
    }
}

/// Text of the common additional sense codes (SPC-4 Annex D); `None` for the others.
pub fn asc_text(asc: u8, ascq: u8) -> Option<&'static str> {
    Some(match (asc, ascq) {
        (0x00, 0x00) => "no additional sense information",
        (0x00, 0x01) => "filemark detected",
        (0x00, 0x02) => "end-of-partition/medium detected",
        (0x00, 0x04) => "beginning-of-partition/medium detected",
        (0x00, 0x05) => "end-of-data detected",
        (0x04, 0x00) => "logical unit not ready, cause not reportable",
        (0x04, 0x01) => "logical unit is in process of becoming ready",
        (0x04, 0x02) => "logical unit not ready, initializing command required",
        (0x04, 0x03) => "logical unit not ready, manual intervention required",
        (0x04, 0x04) => "logical unit not ready, format in progress",
        (0x04, 0x0a) => "logical unit not accessible, asymmetric access state transition",
        (0x04, 0x0b) => "logical unit not accessible, target port in standby state",
        (0x04, 0x0c) => "logical unit not accessible, target port in unavailable state",
        (0x08, 0x00) => "logical unit communication failure",
        (0x0c, 0x00) => "write error",
        (0x11, 0x00) => "unrecovered read error",
        (0x11, 0x01) => "read retries exhausted",
        (0x14, 0x00) => "recorded entity not found",
        (0x15, 0x01) => "mechanical positioning error",
        (0x1a, 0x00) => "parameter list length error",
        (0x20, 0x00) => "invalid command operation code",
        (0x21, 0x00) => "logical block address out of range",
        (0x24, 0x00) => "invalid field in CDB",
        (0x25, 0x00) => "logical unit not supported",
        (0x26, 0x00) => "invalid field in parameter list",
        (0x27, 0x00) => "write protected",
        (0x27, 0x07) => "space allocation failed write protect",
        (0x28, 0x00) => "not ready to ready change, medium may have changed",
        (0x29, 0x00) => "power on, reset, or bus device reset occurred",
        (0x29, 0x01) => "power on occurred",
        (0x29, 0x02) => "SCSI bus reset occurred",
        (0x29, 0x03) => "bus device reset function occurred",
        (0x29, 0x04) => "device internal reset",
        (0x29, 0x07) => "I_T nexus loss occurred",
        (0x2a, 0x01) => "mode parameters changed",
        (0x2a, 0x03) => "reservations preempted",
        (0x2a, 0x09) => "capacity data has changed",
        (0x2a, 0x10) => "timestamp changed",
        (0x2f, 0x00) => "commands cleared by another initiator",
        (0x30, 0x00) => "incompatible medium installed",
        (0x30, 0x03) => "cleaning cartridge installed",
        (0x31, 0x00) => "medium format corrupted",
        (0x38, 0x07) => "thin provisioning soft threshold reached",
        (0x3a, 0x00) => "medium not present",
        (0x3a, 0x01) => "medium not present, tray closed",
        (0x3a, 0x02) => "medium not present, tray open",
        (0x3b, 0x0d) => "medium destination element full",
        (0x3b, 0x0e) => "medium source element empty",
        (0x3e, 0x03) => "logical unit failed self-test",
        (0x3f, 0x0e) => "reported LUNs data has changed",
        (0x44, 0x00) => "internal target failure",
        (0x47, 0x00) => "SCSI parity error",
        (0x47, 0x03) => "information unit iuCRC error detected",
        (0x4b, 0x00) => "data phase error",
        (0x4e, 0x00) => "overlapped commands attempted",
        (0x53, 0x02) => "medium removal prevented",
        (0x55, 0x03) => "insufficient resources",
        (0x5d, 0x00) => "failure prediction threshold exceeded",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
        let mut b = vec![0u8; 18];
        b[0] = 0x70;
        b[2] = key;
        b[7] = 10;
        b[12] = asc;
        b[13] = ascq;
        b
    }

    #[test]
    fn fixed_medium_not_present() {
        let s = Sense::parse(&fixed(0x02, 0x3a, 0x00)).unwrap();
        assert_eq!(s.key, SenseKey::NotReady);
        assert_eq!((s.asc, s.ascq), (0x3a, 0));
        assert_eq!(s.information, None);
        assert_eq!(s.to_string(), "NOT READY, medium not present (ASC/ASCQ 3a/00)");
    }

    #[test]
    fn fixed_tape_bits_and_information() {
        let mut b = fixed(0x00, 0x00, 0x01);
        b[0] = 0xf0; // VALID
        b[2] |= 0x80 | 0x20; // FILEMARK + ILI
        b[3..7].copy_from_slice(&512u32.to_be_bytes());
        let s = Sense::parse(&b).unwrap();
        assert!(s.filemark && s.ili && !s.eom);
        assert_eq!(s.information, Some(512));
        assert_eq!(s.key, SenseKey::NoSense);
        assert!(s.to_string().contains("filemark detected"));
    }

    #[test]
    fn fixed_key_specific_and_deferred() {
        let mut b = fixed(0x05, 0x24, 0x00);
        b[0] = 0x71;
        b[15] = 0xc0;
        b[17] = 0x02;
        let s = Sense::parse(&b).unwrap();
        assert!(s.deferred);
        assert_eq!(s.key_specific, Some([0xc0, 0, 2]));
        assert_eq!(s.asc_text(), Some("invalid field in CDB"));
    }

    #[test]
    fn fixed_short_buffer() {
        // Only 8 bytes: key present, ASC missing; must not panic.
        let s = Sense::parse(&[0x70, 0, 0x06, 0, 0, 0, 0, 10]).unwrap();
        assert_eq!(s.key, SenseKey::UnitAttention);
        assert_eq!((s.asc, s.ascq), (0, 0));
        // Additional length says 0: ASC bytes beyond it are not trusted.
        let mut b = fixed(0x03, 0x11, 0x00);
        b[7] = 0;
        assert_eq!(Sense::parse(&b).unwrap().asc, 0);
    }

    #[test]
    fn descriptor_format() {
        // UNIT ATTENTION capacity changed, information descriptor, stream descriptor (EOM).
        let mut b = vec![0x72, 0x06, 0x2a, 0x09, 0, 0, 0, 0];
        b.extend_from_slice(&[0x00, 0x0a, 0x80, 0]);
        b.extend_from_slice(&0x1_0000_0000u64.to_be_bytes());
        b.extend_from_slice(&[0x04, 0x02, 0, 0x40]);
        b.extend_from_slice(&[0x02, 0x06, 0x80, 0x00, 0x03, 0, 0, 0]);
        b[7] = (b.len() - 8) as u8;
        let s = Sense::parse(&b).unwrap();
        assert_eq!(s.key, SenseKey::UnitAttention);
        assert!(s.is_unit_attention());
        assert_eq!(s.asc_text(), Some("capacity data has changed"));
        assert_eq!(s.information, Some(0x1_0000_0000));
        assert!(s.eom && !s.filemark);
        assert_eq!(s.key_specific, Some([0x80, 0, 3]));
    }

    #[test]
    fn descriptor_truncated_descriptor_is_ignored() {
        let b = [0x72, 0x03, 0x11, 0x00, 0, 0, 0, 20, 0x00, 0x0a, 0x80, 0];
        let s = Sense::parse(&b).unwrap();
        assert_eq!(s.key, SenseKey::MediumError);
        assert_eq!(s.information, None);
        assert!(s.to_string().starts_with("MEDIUM ERROR, unrecovered read error"));
    }

    #[test]
    fn unknown_codes() {
        assert!(Sense::parse(&[]).is_none());
        assert!(Sense::parse(&[0x7f, 1, 2]).is_none());
        let s = Sense::parse(&fixed(0x0b, 0x99, 0x42)).unwrap();
        assert_eq!(s.to_string(), "ABORTED COMMAND, ASC/ASCQ 99/42");
        assert_eq!(SenseKey::from_nibble(0x0c), SenseKey::Reserved(0x0c));
    }

    #[test]
    fn common_strings() {
        assert_eq!(asc_text(0x21, 0), Some("logical block address out of range"));
        assert_eq!(asc_text(0x20, 0), Some("invalid command operation code"));
        assert_eq!(asc_text(0x29, 0), Some("power on, reset, or bus device reset occurred"));
        assert_eq!(asc_text(0x11, 0), Some("unrecovered read error"));
        assert_eq!(asc_text(0x27, 0), Some("write protected"));
    }
}
