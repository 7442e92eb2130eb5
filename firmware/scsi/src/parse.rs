//! Parsers of device answers: INQUIRY (standard and VPD), READ CAPACITY, GET LBA STATUS,
//! REPORT LUNS, REPORT SUPPORTED OPERATION CODES.
//!
//! All take the bytes the device really returned (the buffer up to `transferred`), which are
//! untrusted: a length field is clipped to the bytes present, fields that are missing read as
//! absent, and the output never holds more entries than the input has room for. Errors are
//! [`ParseError`]s naming what was malformed; the block layer turns them into
//! [`ScsiError::Malformed`](crate::ScsiError::Malformed).

use std::fmt;

/// An answer too short or inconsistent to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub what: &'static str,
    pub detail: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.detail)
    }
}

fn short(what: &'static str, need: usize, got: usize) -> ParseError {
    ParseError { what, detail: format!("answer is {got} bytes, needs at least {need}") }
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}
fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}
fn be64(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_be_bytes(a)
}

/// Peripheral device types (INQUIRY byte 0, low 5 bits) this project meets.
pub mod device_type {
    pub const DISK: u8 = 0x00;
    pub const TAPE: u8 = 0x01;
    pub const CDROM: u8 = 0x05;
    pub const OPTICAL: u8 = 0x07;
    pub const CHANGER: u8 = 0x08;
    pub const ENCLOSURE: u8 = 0x0d;
    pub const ZBC: u8 = 0x14;
    pub const UNKNOWN: u8 = 0x1f;

    /// A readable name.
    pub fn name(t: u8) -> &'static str {
        match t {
            DISK => "direct-access block device (disk)",
            TAPE => "sequential-access device (tape drive)",
            CDROM => "CD/DVD device",
            OPTICAL => "optical memory device",
            CHANGER => "medium changer",
            0x0c => "storage array controller",
            ENCLOSURE => "enclosure services device",
            ZBC => "host-managed zoned block device",
            UNKNOWN => "unknown or no device",
            _ => "other device type",
        }
    }
}

/// Standard INQUIRY data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inquiry {
    /// Peripheral qualifier (0: connected; 1: not connected; 3: no device at this LUN).
    pub qualifier: u8,
    pub device_type: u8,
    pub removable: bool,
    pub version: u8,
    /// PROTECT bit: the LUN supports protection information.
    pub protect: bool,
    pub vendor: String,
    pub product: String,
    pub revision: String,
}

fn ascii_field(b: &[u8]) -> String {
    b.iter().map(|&c| if (0x20..0x7f).contains(&c) { c as char } else { '?' }).collect::<String>().trim().to_string()
}

/// Parses standard INQUIRY data (at least 8 bytes; text fields as far as present).
pub fn inquiry(b: &[u8]) -> Result<Inquiry, ParseError> {
    if b.len() < 8 {
        return Err(short("INQUIRY data", 8, b.len()));
    }
    let field = |r: std::ops::Range<usize>| ascii_field(b.get(r.start.min(b.len())..r.end.min(b.len())).unwrap_or(&[]));
    Ok(Inquiry {
        qualifier: b[0] >> 5,
        device_type: b[0] & 0x1f,
        removable: b[1] & 0x80 != 0,
        version: b[2],
        protect: b.get(5).is_some_and(|v| v & 0x01 != 0),
        vendor: field(8..16),
        product: field(16..32),
        revision: field(32..36),
    })
}

/// The payload of a VPD page after checking its header is for `page`: bytes 4.. clipped to
/// the page length.
pub fn vpd_payload(b: &[u8], page: u8) -> Result<&[u8], ParseError> {
    if b.len() < 4 {
        return Err(short("VPD page", 4, b.len()));
    }
    if b[1] != page {
        return Err(ParseError {
            what: "VPD page",
            detail: format!("asked for page 0x{page:02x}, got page 0x{:02x}", b[1]),
        });
    }
    let len = be16(b, 2) as usize;
    Ok(&b[4..b.len().min(4 + len)])
}

/// VPD 0x00: the list of supported pages.
pub fn vpd_supported_pages(b: &[u8]) -> Result<Vec<u8>, ParseError> {
    Ok(vpd_payload(b, 0x00)?.to_vec())
}

/// VPD 0x80: the unit serial number.
pub fn vpd_serial(b: &[u8]) -> Result<String, ParseError> {
    Ok(ascii_field(vpd_payload(b, 0x80)?))
}

/// One designation descriptor of VPD 0x83.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Designator {
    /// 1 binary, 2 ASCII, 3 UTF-8.
    pub code_set: u8,
    /// 0 logical unit, 1 target port, 2 target device.
    pub association: u8,
    /// 1 T10 vendor id, 2 EUI-64, 3 NAA, 8 SCSI name string, ...
    pub designator_type: u8,
    pub value: Vec<u8>,
}

impl Designator {
    /// The value as text: ASCII/UTF-8 as is, binary as lowercase hex.
    pub fn text(&self) -> String {
        match self.code_set {
            2 | 3 => String::from_utf8_lossy(&self.value).trim_end_matches('\0').trim().to_string(),
            _ => self.value.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// VPD 0x83: device identification descriptors (a truncated last one is dropped).
pub fn vpd_device_id(b: &[u8]) -> Result<Vec<Designator>, ParseError> {
    let p = vpd_payload(b, 0x83)?;
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= p.len() {
        let len = p[i + 3] as usize;
        let Some(value) = p.get(i + 4..i + 4 + len) else { break };
        out.push(Designator {
            code_set: p[i] & 0x0f,
            association: (p[i + 1] >> 4) & 0x03,
            designator_type: p[i + 1] & 0x0f,
            value: value.to_vec(),
        });
        i += 4 + len;
    }
    Ok(out)
}

/// VPD 0xB0: block limits (0 = not reported, as in SBC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockLimits {
    /// Largest transfer in logical blocks, 0 if none reported.
    pub max_transfer_blocks: u32,
    /// Preferred transfer size in logical blocks, 0 if none reported.
    pub optimal_transfer_blocks: u32,
    pub optimal_granularity_blocks: u16,
    pub max_unmap_blocks: u32,
}

/// Parses VPD 0xB0; fields past the page's end read as 0 (not reported).
pub fn vpd_block_limits(b: &[u8]) -> Result<BlockLimits, ParseError> {
    let p = vpd_payload(b, 0xb0)?;
    // Offsets below are page offsets minus the 4-byte header.
    let g32 = |i: usize| if p.len() >= i + 4 { be32(p, i) } else { 0 };
    Ok(BlockLimits {
        optimal_granularity_blocks: if p.len() >= 4 { be16(p, 2) } else { 0 },
        max_transfer_blocks: g32(4),
        optimal_transfer_blocks: g32(8),
        max_unmap_blocks: g32(16),
    })
}

/// VPD 0xB2: logical block provisioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Provisioning {
    /// UNMAP supported.
    pub lbpu: bool,
    /// WRITE SAME(16) with UNMAP supported.
    pub lbpws: bool,
    /// Unmapped blocks read as zeros (LBPRZ, 3 bits in SBC-4; non-zero means zeros).
    pub lbprz: bool,
    /// 0 not reported, 1 resource provisioned, 2 thin provisioned.
    pub provisioning_type: u8,
}

pub fn vpd_provisioning(b: &[u8]) -> Result<Provisioning, ParseError> {
    let p = vpd_payload(b, 0xb2)?;
    if p.len() < 3 {
        return Err(short("logical block provisioning VPD page", 7, p.len() + 4));
    }
    Ok(Provisioning {
        lbpu: p[1] & 0x80 != 0,
        lbpws: p[1] & 0x40 != 0,
        lbprz: p[1] & 0x1c != 0,
        provisioning_type: p[2] & 0x07,
    })
}

/// READ CAPACITY answer (either form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Number of logical blocks (last LBA + 1).
    pub blocks: u64,
    pub block_size: u32,
    /// Logical blocks per physical block, as a power of two exponent (16-byte form only).
    pub physical_exponent: u8,
    /// Logical block provisioning management enabled (thin: GET LBA STATUS is meaningful).
    pub lbpme: bool,
    /// Unmapped blocks read as zeros.
    pub lbprz: bool,
}

/// READ CAPACITY(10): 8 bytes. A last LBA of 0xffffffff means "use READ CAPACITY(16)"; it is
/// returned as is (blocks = 2^32) and the caller decides.
pub fn read_capacity10(b: &[u8]) -> Result<Capacity, ParseError> {
    if b.len() < 8 {
        return Err(short("READ CAPACITY(10) data", 8, b.len()));
    }
    Ok(Capacity {
        blocks: be32(b, 0) as u64 + 1,
        block_size: be32(b, 4),
        physical_exponent: 0,
        lbpme: false,
        lbprz: false,
    })
}

/// READ CAPACITY(16): at least 12 bytes (flags from byte 13/14 when present).
pub fn read_capacity16(b: &[u8]) -> Result<Capacity, ParseError> {
    if b.len() < 12 {
        return Err(short("READ CAPACITY(16) data", 12, b.len()));
    }
    let last = be64(b, 0);
    let blocks = last
        .checked_add(1)
        .ok_or_else(|| ParseError { what: "READ CAPACITY(16) data", detail: "last LBA is 2^64-1".to_string() })?;
    let b13 = b.get(13).copied().unwrap_or(0);
    let b14 = b.get(14).copied().unwrap_or(0);
    Ok(Capacity {
        blocks,
        block_size: be32(b, 8),
        physical_exponent: b13 & 0x0f,
        lbpme: b14 & 0x80 != 0,
        lbprz: b14 & 0x40 != 0,
    })
}

/// Provisioning status of one GET LBA STATUS descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbaState {
    /// Mapped (or, SBC-4 status 3, mapped or unknown: must be read).
    Mapped,
    /// Deallocated: no storage behind it.
    Deallocated,
    /// Anchored: storage reserved but not written.
    Anchored,
    /// A status this code does not know; treated as mapped by callers.
    Other(u8),
}

/// One GET LBA STATUS descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbaStatusDescriptor {
    pub lba: u64,
    pub blocks: u32,
    pub state: LbaState,
}

/// GET LBA STATUS parameter data: 8-byte header (4-byte parameter data length), then 16-byte
/// descriptors. The count is clipped to both the length field and the buffer.
pub fn get_lba_status(b: &[u8]) -> Result<Vec<LbaStatusDescriptor>, ParseError> {
    if b.len() < 8 {
        return Err(short("GET LBA STATUS data", 8, b.len()));
    }
    let len = (be32(b, 0) as usize).saturating_add(4);
    let body = &b[8..b.len().min(len).max(8)];
    Ok(body
        .chunks_exact(16)
        .map(|d| LbaStatusDescriptor {
            lba: be64(d, 0),
            blocks: be32(d, 8),
            state: match d[12] & 0x0f {
                0 | 3 => LbaState::Mapped,
                1 => LbaState::Deallocated,
                2 => LbaState::Anchored,
                o => LbaState::Other(o),
            },
        })
        .collect())
}

/// REPORT LUNS: the 8-byte LUN fields as 64-bit numbers in SAM "flat/peripheral" form decoded
/// to a plain LUN when the addressing method is peripheral (0) or flat (1); other methods are
/// returned raw.
pub fn report_luns(b: &[u8]) -> Result<Vec<u64>, ParseError> {
    if b.len() < 8 {
        return Err(short("REPORT LUNS data", 8, b.len()));
    }
    let len = (be32(b, 0) as usize).saturating_add(8);
    let body = &b[8..b.len().min(len).max(8)];
    Ok(body.chunks_exact(8).map(|l| decode_lun(l.try_into().unwrap_or([0; 8]))).collect())
}

/// Decodes an 8-byte SAM LUN field into a LUN number (single level, peripheral or flat).
pub fn decode_lun(l: [u8; 8]) -> u64 {
    match l[0] >> 6 {
        0 => l[1] as u64 | (((l[0] & 0x3f) as u64) << 8),
        1 => (((l[0] & 0x3f) as u64) << 8) | l[1] as u64,
        _ => u64::from_be_bytes(l),
    }
}

/// Encodes a LUN number into the 8-byte SAM LUN field: peripheral addressing below 256, flat
/// addressing up to 16383; larger numbers are taken as the raw 8-byte field.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut f = [0u8; 8];
    if lun < 256 {
        f[1] = lun as u8;
    } else if lun < 0x4000 {
        f[0] = 0x40 | (lun >> 8) as u8;
        f[1] = lun as u8;
    } else {
        f = lun.to_be_bytes();
    }
    f
}

/// One entry of REPORT SUPPORTED OPERATION CODES (all commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupportedOp {
    pub opcode: u8,
    pub service_action: Option<u16>,
    pub cdb_len: u16,
}

/// REPORT SUPPORTED OPERATION CODES, reporting option 0: 4-byte length, then 8-byte
/// descriptors (20 bytes when CTDP announces a timeouts descriptor).
pub fn supported_opcodes(b: &[u8]) -> Result<Vec<SupportedOp>, ParseError> {
    if b.len() < 4 {
        return Err(short("REPORT SUPPORTED OPERATION CODES data", 4, b.len()));
    }
    let end = b.len().min((be32(b, 0) as usize).saturating_add(4));
    let mut out = Vec::new();
    let mut i = 4;
    while i + 8 <= end {
        let d = &b[i..i + 8];
        out.push(SupportedOp {
            opcode: d[0],
            service_action: (d[5] & 0x01 != 0).then(|| be16(d, 2)),
            cdb_len: be16(d, 6),
        });
        i += if d[5] & 0x02 != 0 { 20 } else { 8 };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inquiry_std() {
        let mut b = vec![0u8; 36];
        b[0] = 0x00;
        b[1] = 0x80;
        b[2] = 6;
        b[8..16].copy_from_slice(b"RVTEST  ");
        b[16..32].copy_from_slice(b"VMDISK0         ");
        b[32..36].copy_from_slice(b"0001");
        let q = inquiry(&b).unwrap();
        assert_eq!((q.device_type, q.removable, q.vendor.as_str(), q.product.as_str()), (0, true, "RVTEST", "VMDISK0"));
        // Truncated after the vendor: product empty, no panic.
        let q = inquiry(&b[..12]).unwrap();
        assert_eq!(q.vendor, "RVTE");
        assert!(inquiry(&b[..5]).is_err());
    }

    #[test]
    fn vpd_pages() {
        assert_eq!(vpd_supported_pages(&[0, 0, 0, 3, 0, 0x80, 0x83, 0xff]).unwrap(), vec![0, 0x80, 0x83]);
        assert!(vpd_serial(&[0, 0x83, 0, 0]).is_err());
        assert_eq!(vpd_serial(&[0, 0x80, 0, 4, b'A', b'B', b' ', b' ']).unwrap(), "AB");
        // Length field larger than the buffer: clipped.
        assert_eq!(vpd_serial(&[0, 0x80, 0xff, 0xff, b'X']).unwrap(), "X");

        let mut bl = vec![0u8; 64];
        bl[1] = 0xb0;
        bl[3] = 0x3c;
        bl[8..12].copy_from_slice(&2048u32.to_be_bytes());
        bl[12..16].copy_from_slice(&128u32.to_be_bytes());
        let l = vpd_block_limits(&bl).unwrap();
        assert_eq!((l.max_transfer_blocks, l.optimal_transfer_blocks), (2048, 128));
        assert_eq!(vpd_block_limits(&bl[..6]).unwrap(), BlockLimits::default());

        let p = vpd_provisioning(&[0, 0xb2, 0, 4, 0, 0xc4, 2, 0]).unwrap();
        assert!(p.lbpu && p.lbpws && p.lbprz);
        assert_eq!(p.provisioning_type, 2);

        let id = [0, 0x83, 0, 12, 0x02, 0x01, 0, 8, b'I', b'E', b'T', b' ', b'x', b'y', b'z', 0];
        let d = vpd_device_id(&id).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].text(), "IET xyz");
        assert_eq!(d[0].designator_type, 1);
    }

    #[test]
    fn capacity() {
        let c = read_capacity10(&[0, 0, 0xff, 0xff, 0, 0, 2, 0]).unwrap();
        assert_eq!((c.blocks, c.block_size), (65536, 512));
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&((1u64 << 33) - 1).to_be_bytes());
        b[8..12].copy_from_slice(&4096u32.to_be_bytes());
        b[13] = 3;
        b[14] = 0xc0;
        let c = read_capacity16(&b).unwrap();
        assert_eq!((c.blocks, c.block_size, c.physical_exponent, c.lbpme, c.lbprz), (1 << 33, 4096, 3, true, true));
        assert!(read_capacity16(&[0xff; 12]).is_err());
        assert!(read_capacity10(&[0; 7]).is_err());
    }

    #[test]
    fn lba_status() {
        let mut b = vec![0u8; 8];
        for (lba, n, st) in [(0u64, 2048u32, 0u8), (2048, 10240, 1), (12288, 8, 3)] {
            b.extend_from_slice(&lba.to_be_bytes());
            b.extend_from_slice(&n.to_be_bytes());
            b.extend_from_slice(&[st, 0, 0, 0]);
        }
        let l = (b.len() - 4) as u32;
        b[0..4].copy_from_slice(&l.to_be_bytes());
        let d = get_lba_status(&b).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d[1], LbaStatusDescriptor { lba: 2048, blocks: 10240, state: LbaState::Deallocated });
        assert_eq!(d[2].state, LbaState::Mapped);
        // Length field says one descriptor only.
        b[0..4].copy_from_slice(&20u32.to_be_bytes());
        assert_eq!(get_lba_status(&b).unwrap().len(), 1);
        // Length field huge, buffer short: clipped to the buffer.
        b[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(get_lba_status(&b[..30]).unwrap().len(), 1);
    }

    #[test]
    fn luns() {
        let mut b = vec![0, 0, 0, 24, 0, 0, 0, 0];
        b.extend_from_slice(&encode_lun(0));
        b.extend_from_slice(&encode_lun(1));
        b.extend_from_slice(&encode_lun(300));
        assert_eq!(report_luns(&b).unwrap(), vec![0, 1, 300]);
        assert_eq!(encode_lun(300), [0x41, 0x2c, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn opcodes() {
        let mut b = vec![0, 0, 0, 0];
        b.extend_from_slice(&[0x88, 0, 0, 0, 0, 0, 0, 16]);
        b.extend_from_slice(&[0x9e, 0, 0, 0x10, 0, 0x01, 0, 16]);
        b[3] = 16;
        let o = supported_opcodes(&b).unwrap();
        assert_eq!(o[0], SupportedOp { opcode: 0x88, service_action: None, cdb_len: 16 });
        assert_eq!(o[1].service_action, Some(0x10));
    }
}
