//! SSC-4 commands for sequential-access (tape) devices, and decoders of their small answers.
//!
//! Transfer lengths of the 6-byte READ/WRITE/SPACE commands are 24-bit fields: the builders
//! take `u32` and keep the low 24 bits (a variable block is at most 16 MiB - 1 by the
//! standard; callers check against READ BLOCK LIMITS first). SPACE counts are signed 24-bit
//! (negative = towards BOT).
//!
//! The decoders ([`block_limits`], [`position_short`], [`position_long`],
//! [`mode_header6`]) read untrusted bytes and never panic.

use super::op;

/// READ(6) in variable-block mode: one block of up to `len` bytes. `sili` suppresses the ILI
/// CHECK CONDITION for a block shorter than `len` (many drives; not tgt).
pub fn read6_variable(len: u32, sili: bool) -> [u8; 6] {
    let l = len.to_be_bytes();
    [op::READ_6, if sili { 0x02 } else { 0 }, l[1], l[2], l[3], 0]
}

/// READ(6) in fixed-block mode: `blocks` blocks of the mode's block length.
pub fn read6_fixed(blocks: u32) -> [u8; 6] {
    let l = blocks.to_be_bytes();
    [op::READ_6, 0x01, l[1], l[2], l[3], 0]
}

/// WRITE(6) in variable-block mode: one block of `len` bytes.
pub fn write6_variable(len: u32) -> [u8; 6] {
    let l = len.to_be_bytes();
    [op::WRITE_6, 0, l[1], l[2], l[3], 0]
}

/// WRITE(6) in fixed-block mode: `blocks` blocks of the mode's block length.
pub fn write6_fixed(blocks: u32) -> [u8; 6] {
    let l = blocks.to_be_bytes();
    [op::WRITE_6, 0x01, l[1], l[2], l[3], 0]
}

/// WRITE FILEMARKS(6): `count` filemarks (0 flushes the buffer); `immed` returns before the
/// buffer is written.
pub fn write_filemarks6(count: u32, immed: bool) -> [u8; 6] {
    let l = count.to_be_bytes();
    [op::WRITE_FILEMARKS_6, u8::from(immed), l[1], l[2], l[3], 0]
}

/// What SPACE(6) moves over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceCode {
    Blocks = 0,
    Filemarks = 1,
    SequentialFilemarks = 2,
    EndOfData = 3,
}

/// SPACE(6): `count` (signed, 24 bit) units of `code`; ignored for [`SpaceCode::EndOfData`].
pub fn space6(code: SpaceCode, count: i32) -> [u8; 6] {
    let c = if code == SpaceCode::EndOfData { 0 } else { count.clamp(-(1 << 23), (1 << 23) - 1) };
    let l = c.to_be_bytes();
    [op::SPACE_6, code as u8, l[1], l[2], l[3], 0]
}

/// LOCATE(10) to logical object `block` of the current (or, with `partition`, that)
/// partition.
pub fn locate10(block: u32, partition: Option<u8>) -> [u8; 10] {
    let b = block.to_be_bytes();
    let (cp, p) = match partition {
        Some(p) => (0x02, p),
        None => (0, 0),
    };
    [op::LOCATE_10, cp, 0, b[0], b[1], b[2], b[3], 0, p, 0]
}

/// LOCATE(16) to logical object `block` (dest type 0: logical object identifier).
pub fn locate16(block: u64, partition: Option<u8>) -> [u8; 16] {
    let b = block.to_be_bytes();
    let (cp, p) = match partition {
        Some(p) => (0x02, p),
        None => (0, 0),
    };
    [op::LOCATE_16, cp, 0, p, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], 0, 0, 0, 0]
}

/// READ POSITION service actions.
pub mod read_position_sa {
    /// 20-byte short form, block ids.
    pub const SHORT: u8 = 0x00;
    /// 32-byte long form: logical object number and file number.
    pub const LONG: u8 = 0x06;
    /// Extended form.
    pub const EXTENDED: u8 = 0x08;
}

/// READ POSITION with `service_action` (see [`read_position_sa`]); allocation length 0 for
/// the short form as older drives require, 32 for the long form.
pub fn read_position(service_action: u8) -> [u8; 10] {
    let alloc: u16 = match service_action {
        read_position_sa::SHORT => 0,
        read_position_sa::LONG => 32,
        _ => 32,
    };
    let a = alloc.to_be_bytes();
    [op::READ_POSITION, service_action & 0x1f, 0, 0, 0, 0, 0, a[0], a[1], 0]
}

/// REWIND; `immed` returns at once.
pub fn rewind(immed: bool) -> [u8; 6] {
    [op::REWIND, u8::from(immed), 0, 0, 0, 0]
}

/// LOAD UNLOAD: `load` true loads (and positions at BOT), false unloads; `eot` retensions
/// to end of tape first (rarely wanted).
pub fn load_unload(load: bool, immed: bool) -> [u8; 6] {
    [op::LOAD_UNLOAD, u8::from(immed), 0, 0, u8::from(load), 0]
}

/// READ BLOCK LIMITS (6-byte answer).
pub fn read_block_limits() -> [u8; 6] {
    [op::READ_BLOCK_LIMITS, 0, 0, 0, 0, 0]
}

/// MODE SELECT(6) with PF=1 of a `len`-byte parameter list (see [`mode_select6_block_descriptor`]).
pub fn mode_select6(len: u8) -> [u8; 6] {
    [op::MODE_SELECT_6, 0x10, 0, 0, len, 0]
}

/// The 12-byte parameter list of MODE SELECT(6) that sets the block length (0 = variable
/// mode) and keeps the density (0 = default) and buffered mode 1.
pub fn mode_select6_block_descriptor(density: u8, block_len: u32) -> [u8; 12] {
    let l = block_len.to_be_bytes();
    [0, 0, 0x10, 8, density, 0, 0, 0, 0, l[1], l[2], l[3]]
}

/// LOG SENSE of `page` (current cumulative values), up to `alloc` bytes.
pub fn log_sense(page: u8, alloc: u16) -> [u8; 10] {
    let a = alloc.to_be_bytes();
    [op::LOG_SENSE, 0, 0x40 | (page & 0x3f), 0, 0, 0, 0, a[0], a[1], 0]
}

/// The TapeAlert log page.
pub const TAPE_ALERT_PAGE: u8 = 0x2e;

/// PREVENT ALLOW MEDIUM REMOVAL.
pub fn prevent_allow_medium_removal(prevent: bool) -> [u8; 6] {
    [op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, u8::from(prevent), 0]
}

/// ERASE from the current position to the end; `long` erases physically (can take hours),
/// short writes an EOD marker.
pub fn erase6(long: bool, immed: bool) -> [u8; 6] {
    [op::ERASE_6, u8::from(long) | (u8::from(immed) << 1), 0, 0, 0, 0]
}

/// Decoded READ BLOCK LIMITS answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLimits {
    /// Granularity: block lengths must be multiples of 2^granularity.
    pub granularity: u8,
    /// Largest block (0 = no limit stated).
    pub max: u32,
    /// Smallest block.
    pub min: u16,
}

/// Decodes READ BLOCK LIMITS data (6 bytes); `None` when shorter.
pub fn block_limits(b: &[u8]) -> Option<BlockLimits> {
    let b = b.get(..6)?;
    Some(BlockLimits {
        granularity: b[0] & 0x1f,
        max: u32::from_be_bytes([0, b[1], b[2], b[3]]),
        min: u16::from_be_bytes([b[4], b[5]]),
    })
}

/// Decoded READ POSITION answer (short or long form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// At beginning of partition.
    pub bop: bool,
    /// At or past early warning (end of partition).
    pub eop: bool,
    /// Block count unknown.
    pub bycu: bool,
    /// Logical object location unknown: `block` is meaningless.
    pub lolu: bool,
    /// Position error: the drive lost track.
    pub perr: bool,
    pub partition: u32,
    /// Logical object number (block and filemark count from BOP) of the next object.
    pub block: u64,
    /// Files (filemarks) from BOP, long form only.
    pub file: Option<u64>,
}

impl Position {
    /// Whether the drive reported a usable block address.
    pub fn known(&self) -> bool {
        !self.lolu && !self.perr
    }
}

/// Decodes the short form (20 bytes); `None` when shorter.
pub fn position_short(b: &[u8]) -> Option<Position> {
    let b = b.get(..20)?;
    Some(Position {
        bop: b[0] & 0x80 != 0,
        eop: b[0] & 0x40 != 0,
        bycu: b[0] & 0x10 != 0,
        lolu: b[0] & 0x04 != 0,
        perr: b[0] & 0x02 != 0,
        partition: u32::from(b[1]),
        block: u64::from(u32::from_be_bytes([b[4], b[5], b[6], b[7]])),
        file: None,
    })
}

/// Decodes the long form (32 bytes); `None` when shorter.
pub fn position_long(b: &[u8]) -> Option<Position> {
    let b = b.get(..32)?;
    let be64 = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_be_bytes(a)
    };
    // Long form byte 0: BOP 0x80, EOP 0x40, MPU 0x08, LONU 0x04.
    Some(Position {
        bop: b[0] & 0x80 != 0,
        eop: b[0] & 0x40 != 0,
        bycu: false,
        lolu: b[0] & 0x0c != 0,
        perr: false,
        partition: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        block: be64(8),
        file: Some(be64(16)),
    })
}

/// The header of MODE SENSE(6) data plus its first block descriptor, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModeHeader {
    /// Medium type (byte 1). LTO WORM media report e.g. 0x01 or 0x80+ depending on vendor;
    /// see [`ModeHeader::worm`].
    pub medium_type: u8,
    /// Device-specific parameter (byte 2): WP 0x80, buffered mode 0x70, speed 0x0f.
    pub device_specific: u8,
    /// Density code of the first block descriptor.
    pub density: Option<u8>,
    /// Block length of the first block descriptor (0 = variable mode).
    pub block_len: Option<u32>,
}

impl ModeHeader {
    /// Write protect (the cartridge's switch, or WORM data already written).
    pub fn write_protected(&self) -> bool {
        self.device_specific & 0x80 != 0
    }
}

/// Decodes the MODE SENSE(6) header and first block descriptor; `None` below 4 bytes.
pub fn mode_header6(b: &[u8]) -> Option<ModeHeader> {
    let h = b.get(..4)?;
    let bd_len = h[3] as usize;
    let bd = if bd_len >= 8 { b.get(4..12) } else { None };
    Some(ModeHeader {
        medium_type: h[1],
        device_specific: h[2],
        density: bd.map(|d| d[0]),
        block_len: bd.map(|d| u32::from_be_bytes([0, d[5], d[6], d[7]])),
    })
}

/// Medium configuration mode page (0x1d) with its WORM mode bit (SSC-4 8.3.7).
pub const MEDIUM_CONFIGURATION_PAGE: u8 = 0x1d;

/// Whether a MODE SENSE(6) answer holding page 0x1d reports WORM mode (page byte 2 bit 0).
/// Walks the pages after the header and block descriptors; hostile lengths end the walk.
pub fn mode_worm(b: &[u8]) -> Option<bool> {
    let h = b.get(..4)?;
    let end = b.len().min(h[0] as usize + 1);
    let mut i = 4 + h[3] as usize;
    while i + 2 <= end {
        let code = b[i] & 0x3f;
        let spf = b[i] & 0x40 != 0;
        let (hdr, len) = if spf {
            (4, u16::from_be_bytes([*b.get(i + 2)?, *b.get(i + 3)?]) as usize)
        } else {
            (2, b[i + 1] as usize)
        };
        if code == MEDIUM_CONFIGURATION_PAGE && !spf {
            return b.get(i + 2).map(|x| x & 0x01 != 0);
        }
        i += hdr + len;
    }
    None
}

/// Active TapeAlert flags (1..=64) from a LOG SENSE page 0x2e answer.
pub fn tape_alerts(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if b.len() < 4 || b[0] & 0x3f != TAPE_ALERT_PAGE {
        return out;
    }
    let end = b.len().min(4 + u16::from_be_bytes([b[2], b[3]]) as usize);
    let mut i = 4;
    while i + 4 <= end {
        let code = u16::from_be_bytes([b[i], b[i + 1]]);
        let len = b[i + 3] as usize;
        if (1..=64).contains(&code) && b.get(i + 4).is_some_and(|v| v & 1 != 0) && i + 4 < end {
            out.push(code as u8);
        }
        i += 4 + len;
    }
    out
}

/// TapeAlert flag 0x14 (20): the drive asks for cleaning ("clean now").
pub const TAPE_ALERT_CLEAN_NOW: u8 = 0x14;
/// TapeAlert flag 0x15 (21): "clean periodic".
pub const TAPE_ALERT_CLEAN_PERIODIC: u8 = 0x15;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(read6_variable(0x040000, false), [0x08, 0, 0x04, 0, 0, 0]);
        assert_eq!(read6_variable(512, true), [0x08, 2, 0, 2, 0, 0]);
        assert_eq!(read6_fixed(3), [0x08, 1, 0, 0, 3, 0]);
        assert_eq!(write6_variable(0x123456), [0x0a, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(write6_fixed(2), [0x0a, 1, 0, 0, 2, 0]);
        assert_eq!(write_filemarks6(1, false), [0x10, 0, 0, 0, 1, 0]);
        assert_eq!(space6(SpaceCode::Filemarks, -1), [0x11, 1, 0xff, 0xff, 0xff, 0]);
        assert_eq!(space6(SpaceCode::Blocks, 5), [0x11, 0, 0, 0, 5, 0]);
        assert_eq!(space6(SpaceCode::EndOfData, 99), [0x11, 3, 0, 0, 0, 0]);
        assert_eq!(space6(SpaceCode::Blocks, i32::MIN), [0x11, 0, 0x80, 0, 0, 0]);
        assert_eq!(locate10(0x01020304, None), [0x2b, 0, 0, 1, 2, 3, 4, 0, 0, 0]);
        assert_eq!(locate10(7, Some(1)), [0x2b, 2, 0, 0, 0, 0, 7, 0, 1, 0]);
        assert_eq!(locate16(0x1_0000_0000, None)[4..12], [0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(read_position(read_position_sa::SHORT), [0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(read_position(read_position_sa::LONG), [0x34, 6, 0, 0, 0, 0, 0, 0, 32, 0]);
        assert_eq!(rewind(false), [0x01, 0, 0, 0, 0, 0]);
        assert_eq!(load_unload(false, true), [0x1b, 1, 0, 0, 0, 0]);
        assert_eq!(read_block_limits(), [0x05, 0, 0, 0, 0, 0]);
        assert_eq!(mode_select6(12), [0x15, 0x10, 0, 0, 12, 0]);
        assert_eq!(mode_select6_block_descriptor(0, 512), [0, 0, 0x10, 8, 0, 0, 0, 0, 0, 0, 2, 0]);
        assert_eq!(log_sense(TAPE_ALERT_PAGE, 0x144), [0x4d, 0, 0x6e, 0, 0, 0, 0, 1, 0x44, 0]);
        assert_eq!(prevent_allow_medium_removal(true), [0x1e, 0, 0, 0, 1, 0]);
        assert_eq!(erase6(true, false), [0x19, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn decoders() {
        // tgt's answer.
        assert_eq!(block_limits(&[9, 0x10, 0, 0, 0, 4]), Some(BlockLimits { granularity: 9, max: 0x100000, min: 4 }));
        assert_eq!(block_limits(&[0; 5]), None);
        let mut s = [0u8; 20];
        s[0] = 0x14; // tgt: BYCU + LOLU
        let p = position_short(&s).unwrap();
        assert!(!p.known() && p.bycu);
        s[0] = 0x80;
        s[7] = 9;
        let p = position_short(&s).unwrap();
        assert!(p.known() && p.bop && p.block == 9);
        let mut l = [0u8; 32];
        l[15] = 3;
        l[23] = 1;
        let p = position_long(&l).unwrap();
        assert_eq!((p.block, p.file), (3, Some(1)));
        assert!(position_long(&l[..31]).is_none());
        // MODE SENSE(6) header + block descriptor + page 0x1d with WORM set.
        let mut m = vec![0, 0x01, 0x90, 8, 0x5a, 0, 0, 0, 0, 0, 2, 0];
        m.extend_from_slice(&[0x1d, 6, 0x01, 0, 0, 0, 0, 0]);
        m[0] = (m.len() - 1) as u8;
        let h = mode_header6(&m).unwrap();
        assert!(h.write_protected());
        assert_eq!((h.density, h.block_len), (Some(0x5a), Some(512)));
        assert_eq!(mode_worm(&m), Some(true));
        assert_eq!(mode_worm(&m[..12]), None);
        // TapeAlert page: flag 20 set, flag 3 clear.
        let mut t = vec![0x2e, 0, 0, 10, 0, 20, 0x01, 1, 1, 0, 3, 0x01, 1, 0];
        t[3] = (t.len() - 4) as u8;
        assert_eq!(tape_alerts(&t), vec![20]);
        assert!(tape_alerts(&t[..6]).is_empty());
    }

    #[test]
    fn decoders_survive_garbage() {
        let mut seed = 0x1234_5678u32;
        for n in 0..2000 {
            let len = n % 64;
            let b: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            let _ = (block_limits(&b), position_short(&b), position_long(&b), mode_header6(&b), mode_worm(&b));
            let _ = tape_alerts(&b);
        }
    }
}
