//! SMC-3 commands for media changers, and the READ ELEMENT STATUS decoder.
//!
//! ```text
//! READ ELEMENT STATUS data:
//!   header (8): first element address(2) | number of elements(2) | rsvd | byte count(3)
//!   per element type, a page (8): type code | PVOLTAG 0x80, AVOLTAG 0x40 |
//!                                 descriptor length(2) | rsvd | byte count(3)
//!     descriptors (descriptor length each):
//!       0-1 element address   2 flags: FULL 0x01, IMPEXP 0x02, EXCEPT 0x04, ACCESS 0x08
//!       4 ASC  5 ASCQ         9 SVALID 0x80, INVERT 0x40   10-11 source element address
//!       12.. primary volume tag (36: 32 identifier + 4), then alternate tag (36) if AVOLTAG,
//!       then (DVCID) a device identifier: code set | type | rsvd | length(1) | identifier
//! ```
//! [`parse_element_status`] takes untrusted bytes: every length is checked against the
//! buffer, it never panics and never allocates more than the input's size. tgt quirks: the
//! header's first element address is wrong for the picker; element type 0 (all types) returns
//! overlapping pages, so query one type at a time; tgt transfers 8 bytes fewer than its
//! answer holds (the report's byte count, without the 8-byte header), so the last descriptor
//! lacks its last 8 bytes: the end of its volume tag or of its device identifier; DVCID is read from the CURDATA bit (see
//! [`read_element_status`]); the identifier of a drive is vendor, product and serial
//! ("RVTEST  VTAPE-LTO       DRV00001", "IET VIRTUAL-TAPE <serial>" with default names).

use super::op;

/// Element type codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    All = 0,
    /// Medium transport element (picker / robot arm).
    Transport = 1,
    /// Storage element (slot).
    Storage = 2,
    /// Import/export element (mail slot).
    ImportExport = 3,
    /// Data transfer element (drive).
    DataTransfer = 4,
}

impl ElementType {
    pub fn from_code(c: u8) -> Option<ElementType> {
        Some(match c & 0x0f {
            0 => ElementType::All,
            1 => ElementType::Transport,
            2 => ElementType::Storage,
            3 => ElementType::ImportExport,
            4 => ElementType::DataTransfer,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ElementType::All => "all",
            ElementType::Transport => "picker",
            ElementType::Storage => "slot",
            ElementType::ImportExport => "mail slot",
            ElementType::DataTransfer => "drive",
        }
    }
}

/// READ ELEMENT STATUS of `count` elements of `etype` from address `start`, up to `alloc`
/// bytes (24 bit). `voltag` asks for barcodes, `dvcid` for drive identifiers (byte 6 bit 1).
///
/// tgt quirk: tgt reads DVCID from bit 0 (where SMC-3 has CURDATA), so `dvcid` sets both
/// bits. CURDATA=1 only tells a library not to move the picker to re-scan, which is harmless
/// for an inventory.
pub fn read_element_status(
    etype: ElementType,
    voltag: bool,
    start: u16,
    count: u16,
    dvcid: bool,
    alloc: u32,
) -> [u8; 12] {
    let s = start.to_be_bytes();
    let c = count.to_be_bytes();
    let a = alloc.min(0xff_ffff).to_be_bytes();
    let b1 = (etype as u8) | if voltag { 0x10 } else { 0 };
    [op::READ_ELEMENT_STATUS, b1, s[0], s[1], c[0], c[1], if dvcid { 0x03 } else { 0 }, a[1], a[2], a[3], 0, 0]
}

/// MOVE MEDIUM from `source` to `destination` using `transport` (0 = the default picker).
pub fn move_medium(transport: u16, source: u16, destination: u16) -> [u8; 12] {
    let t = transport.to_be_bytes();
    let s = source.to_be_bytes();
    let d = destination.to_be_bytes();
    [op::MOVE_MEDIUM, 0, t[0], t[1], s[0], s[1], d[0], d[1], 0, 0, 0, 0]
}

/// INITIALIZE ELEMENT STATUS (re-scan every element, e.g. barcodes after a door was opened).
pub fn initialize_element_status() -> [u8; 6] {
    [op::INITIALIZE_ELEMENT_STATUS, 0, 0, 0, 0, 0]
}

/// The element address assignment mode page (MODE SENSE page 0x1d).
pub const ELEMENT_ADDRESS_PAGE: u8 = 0x1d;

/// First address and count of each element type, from the element address assignment page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ElementAddresses {
    pub transport: (u16, u16),
    pub storage: (u16, u16),
    pub import_export: (u16, u16),
    pub data_transfer: (u16, u16),
}

/// Finds page 0x1d in a MODE SENSE(6) answer (header of 4 bytes plus block descriptors).
pub fn element_addresses_mode6(b: &[u8]) -> Option<ElementAddresses> {
    let h = b.get(..4)?;
    let end = b.len().min(h[0] as usize + 1);
    let mut i = 4 + h[3] as usize;
    while i + 2 <= end {
        let code = b[i] & 0x3f;
        let len = b[i + 1] as usize;
        if code == ELEMENT_ADDRESS_PAGE {
            let p = b.get(i..(i + 18).min(end))?;
            if p.len() < 18 {
                return None;
            }
            let w = |k: usize| u16::from_be_bytes([p[k], p[k + 1]]);
            return Some(ElementAddresses {
                transport: (w(2), w(4)),
                storage: (w(6), w(8)),
                import_export: (w(10), w(12)),
                data_transfer: (w(14), w(16)),
            });
        }
        i += 2 + len;
    }
    None
}

/// One element of a READ ELEMENT STATUS answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementStatus {
    pub etype: ElementType,
    pub address: u16,
    /// A cartridge is in the element.
    pub full: bool,
    /// Mail slot: the cartridge was put in by the operator (vs by the changer).
    pub import: bool,
    /// The element is in an abnormal state; see `asc`/`ascq`.
    pub except: bool,
    /// The picker can reach the element.
    pub access: bool,
    pub asc: u8,
    pub ascq: u8,
    /// Where the cartridge came from (SVALID), e.g. its home slot.
    pub source: Option<u16>,
    /// Primary volume tag (barcode), trimmed; `None` when absent or blank.
    pub barcode: Option<String>,
    /// Alternate volume tag, trimmed.
    pub alternate_tag: Option<String>,
    /// Device identifier of a drive (DVCID), trimmed ASCII; e.g. "IET VIRTUAL-TAPE DRV00001".
    pub identifier: Option<String>,
    /// The descriptor was cut short by the end of the data (tgt drops the last 8 bytes of
    /// every answer) and the tags/identifier past the cut are missing or partial.
    pub truncated: bool,
}

/// The READ ELEMENT STATUS answer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed READ ELEMENT STATUS data: {0}")]
pub struct ElementStatusError(pub String);

fn tag_text(b: &[u8]) -> Option<String> {
    let s: String = b.iter().map(|&c| if (0x20..0x7f).contains(&c) { c as char } else { ' ' }).collect();
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Decodes a READ ELEMENT STATUS answer (`b` is the bytes really transferred). A page cut
/// short by the buffer ends the walk; a cut last descriptor is kept when its 12 fixed bytes
/// are present ([`ElementStatus::truncated`]); descriptors of unknown element types
/// are skipped. Errors only when the header itself is missing or a page claims an impossible
/// descriptor length.
pub fn parse_element_status(b: &[u8]) -> Result<Vec<ElementStatus>, ElementStatusError> {
    if b.len() < 8 {
        return Err(ElementStatusError(format!("{} bytes, shorter than the 8-byte header", b.len())));
    }
    let count = u32::from_be_bytes([0, b[5], b[6], b[7]]) as usize;
    let end = b.len().min(8 + count);
    let mut out = Vec::new();
    let mut i = 8;
    while i + 8 <= end {
        let p = &b[i..i + 8];
        let etype = ElementType::from_code(p[0]);
        let pvoltag = p[1] & 0x80 != 0;
        let avoltag = p[1] & 0x40 != 0;
        let dlen = u16::from_be_bytes([p[2], p[3]]) as usize;
        let pcount = u32::from_be_bytes([0, p[5], p[6], p[7]]) as usize;
        i += 8;
        let pend = end.min(i.saturating_add(pcount));
        if dlen < 12 {
            if pcount == 0 {
                continue;
            }
            return Err(ElementStatusError(format!("element descriptor length {dlen} is below the minimum 12")));
        }
        // tgt transfers 8 bytes fewer than it reports: the last descriptor may be cut short.
        // A cut descriptor with its 12 fixed bytes is kept and marked `truncated`.
        while i + 12 <= pend {
            let d = &b[i..(i + dlen).min(pend)];
            let truncated = d.len() < dlen;
            i += d.len();
            let Some(etype) = etype else { continue };
            let mut k = 12;
            let mut tag = |present: bool| -> Option<String> {
                if !present {
                    return None;
                }
                let t = d.get(k..k + 36).and_then(|t| tag_text(&t[..32]));
                k += 36;
                t
            };
            let barcode = tag(pvoltag);
            let alternate_tag = tag(avoltag);
            let (identifier, id_cut) = match d.get(k..k + 4) {
                Some(h) => {
                    let n = h[3] as usize;
                    let avail = d.get(k + 4..).unwrap_or(&[]);
                    (tag_text(&avail[..n.min(avail.len())]), n > avail.len())
                }
                None => (None, truncated),
            };
            out.push(ElementStatus {
                etype,
                address: u16::from_be_bytes([d[0], d[1]]),
                full: d[2] & 0x01 != 0,
                import: d[2] & 0x02 != 0,
                except: d[2] & 0x04 != 0,
                access: d[2] & 0x08 != 0,
                asc: d[4],
                ascq: d[5],
                source: (d[9] & 0x80 != 0).then(|| u16::from_be_bytes([d[10], d[11]])),
                barcode,
                alternate_tag,
                identifier,
                truncated: truncated && id_cut,
            });
        }
        // Skip whatever is left of a page whose byte count is not a multiple of dlen.
        i = pend.max(i);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page of `descs` (each: addr, flags, source, barcode, id) as tgt builds them.
    pub(crate) fn sample(etype: u8, descs: &[(u16, u8, Option<u16>, &str, &str)], dvcid: bool) -> Vec<u8> {
        let dlen = if dvcid { 86 } else { 52 };
        let mut page = Vec::new();
        for &(addr, flags, src, bc, id) in descs {
            let mut d = vec![0u8; dlen];
            d[0..2].copy_from_slice(&addr.to_be_bytes());
            d[2] = flags;
            if let Some(s) = src {
                d[9] = 0x80;
                d[10..12].copy_from_slice(&s.to_be_bytes());
            }
            d[12..12 + 32].fill(b' ');
            d[12..12 + bc.len()].copy_from_slice(bc.as_bytes());
            if dvcid {
                d[48] = 2;
                d[49] = 1;
                d[51] = 34;
                d[52..52 + id.len()].copy_from_slice(id.as_bytes());
            }
            page.extend_from_slice(&d);
        }
        let mut b = vec![0u8; 16];
        b[2..4].copy_from_slice(&(descs.len() as u16).to_be_bytes());
        let total = (8 + page.len()) as u32;
        b[5..8].copy_from_slice(&total.to_be_bytes()[1..]);
        b[8] = etype;
        b[9] = 0x80;
        b[10..12].copy_from_slice(&(dlen as u16).to_be_bytes());
        b[13..16].copy_from_slice(&(page.len() as u32).to_be_bytes()[1..]);
        b.extend_from_slice(&page);
        b
    }

    #[test]
    fn encodings() {
        assert_eq!(
            read_element_status(ElementType::DataTransfer, true, 500, 2, true, 0x400),
            [0xb8, 0x14, 0x01, 0xf4, 0, 2, 3, 0, 4, 0, 0, 0]
        );
        assert_eq!(read_element_status(ElementType::Storage, false, 0, 0xffff, false, u32::MAX)[7..10], [0xff; 3]);
        assert_eq!(move_medium(0, 1000, 500), [0xa5, 0, 0, 0, 0x03, 0xe8, 0x01, 0xf4, 0, 0, 0, 0]);
        assert_eq!(initialize_element_status(), [0x07, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn parses_slots_and_drives() {
        let b = sample(2, &[(1000, 1, Some(1000), "TST001L6", ""), (1001, 0, None, "", "")], false);
        let e = parse_element_status(&b).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].barcode.as_deref(), Some("TST001L6"));
        assert!(e[0].full && e[0].source == Some(1000));
        assert!(!e[1].full && e[1].barcode.is_none() && e[1].source.is_none());
        let b = sample(4, &[(500, 1, Some(1004), "EOM001L6", "IET VIRTUAL-TAPE DRV00001")], true);
        let e = parse_element_status(&b).unwrap();
        assert_eq!(e[0].etype, ElementType::DataTransfer);
        assert_eq!(e[0].identifier.as_deref(), Some("IET VIRTUAL-TAPE DRV00001"));
        assert_eq!(e[0].source, Some(1004));
    }

    #[test]
    fn element_address_page() {
        let mut m = vec![0u8, 0, 0, 0, 0x1d, 0x12];
        for v in [1u16, 1, 1000, 10, 10, 2, 500, 2] {
            m.extend_from_slice(&v.to_be_bytes());
        }
        m.extend_from_slice(&[0, 0]);
        m[0] = (m.len() - 1) as u8;
        let a = element_addresses_mode6(&m).unwrap();
        assert_eq!(a.storage, (1000, 10));
        assert_eq!(a.data_transfer, (500, 2));
        assert!(element_addresses_mode6(&m[..10]).is_none());
    }

    #[test]
    fn hostile_bytes() {
        assert!(parse_element_status(&[0; 7]).is_err());
        // Page claims descriptors of length 3 with data present.
        let mut b = sample(2, &[(1000, 1, None, "A", "")], false);
        b[10..12].copy_from_slice(&3u16.to_be_bytes());
        assert!(parse_element_status(&b).is_err());
        // Byte counts far past the buffer.
        let mut b = sample(2, &[(1000, 1, None, "A", "")], false);
        b[5..8].fill(0xff);
        b[13..16].fill(0xff);
        assert_eq!(parse_element_status(&b).unwrap().len(), 1);
        // Cut anywhere: no panic.
        let b = sample(4, &[(500, 1, Some(1), "X", "IET VIRTUAL-TAPE DRV1"), (501, 0, None, "", "")], true);
        for n in 0..b.len() {
            let _ = parse_element_status(&b[..n]);
        }
    }
}
