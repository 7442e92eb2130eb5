//! On-disk constants and small decoding helpers shared by the parsers: little-endian
//! integers, GUIDs in their mixed-endian binary form, CRC-32C, and error constructors.

use std::fmt;

use blocksource::SourceError;

pub(crate) const KIB: u64 = 1 << 10;
pub(crate) const MIB: u64 = 1 << 20;

/// The two headers, 4 KiB structures at 64 KiB and 128 KiB.
pub(crate) const HEADER_OFFSETS: [u64; 2] = [64 * KIB, 128 * KIB];
pub(crate) const HEADER_SIZE: usize = 4096;
/// The two copies of the region table, 64 KiB each.
pub(crate) const REGION_TABLE_OFFSETS: [u64; 2] = [192 * KIB, 256 * KIB];
pub(crate) const REGION_TABLE_SIZE: usize = 64 * KIB as usize;
/// Everything below this offset is the header section; no region, log or block may start there.
pub(crate) const HEADER_SECTION: u64 = MIB;

pub(crate) const HEADER_SIGNATURE: [u8; 4] = *b"head";
pub(crate) const REGION_SIGNATURE: [u8; 4] = *b"regi";
pub(crate) const METADATA_SIGNATURE: [u8; 8] = *b"metadata";
pub(crate) const LOG_ENTRY_SIGNATURE: [u8; 4] = *b"loge";
pub(crate) const ZERO_DESC_SIGNATURE: [u8; 4] = *b"zero";
pub(crate) const DATA_DESC_SIGNATURE: [u8; 4] = *b"desc";
pub(crate) const DATA_SECTOR_SIGNATURE: [u8; 4] = *b"data";

/// Most entries a region table or metadata table may have.
pub(crate) const MAX_TABLE_ENTRIES: u64 = 2047;
/// The metadata table occupies the first 64 KiB of the metadata region.
pub(crate) const METADATA_TABLE_SIZE: usize = 64 * KIB as usize;
/// Largest metadata item the spec allows.
pub(crate) const MAX_METADATA_ITEM: u64 = MIB;

/// Largest virtual disk the spec allows (64 TiB).
pub(crate) const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
pub(crate) const MIN_BLOCK_SIZE: u64 = MIB;
pub(crate) const MAX_BLOCK_SIZE: u64 = 256 * MIB;
/// Sectors described by one sector bitmap block (1 MiB of bits).
pub(crate) const SECTORS_PER_BITMAP: u64 = 1 << 23;
pub(crate) const SECTOR_BITMAP_BLOCK: u64 = MIB;

/// A GUID in its binary on-disk form: Data1 (u32 LE), Data2 (u16 LE), Data3 (u16 LE), Data4.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    pub(crate) const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5], d4[6], d4[7]])
    }

    pub(crate) fn read(b: &[u8], at: usize) -> Guid {
        let mut g = [0u8; 16];
        g.copy_from_slice(&b[at..at + 16]);
        Guid(g)
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Parse the textual form, with or without braces, in any case:
    /// `{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}`.
    pub(crate) fn parse(s: &str) -> Option<Guid> {
        let s = s.trim();
        let s = s.strip_prefix('{').and_then(|t| t.strip_suffix('}')).unwrap_or(s);
        let parts: Vec<&str> = s.split('-').collect();
        if parts.len() != 5 || [8, 4, 4, 4, 12].iter().zip(&parts).any(|(&n, p)| p.len() != n) {
            return None;
        }
        let d1 = u32::from_str_radix(parts[0], 16).ok()?;
        let d2 = u16::from_str_radix(parts[1], 16).ok()?;
        let d3 = u16::from_str_radix(parts[2], 16).ok()?;
        let tail = format!("{}{}", parts[3], parts[4]);
        let mut d4 = [0u8; 8];
        for (i, b) in d4.iter_mut().enumerate() {
            *b = u8::from_str_radix(tail.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Guid::from_fields(d1, d2, d3, d4))
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-",
            u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
            u16::from_le_bytes([g[4], g[5]]),
            u16::from_le_bytes([g[6], g[7]]),
            g[8],
            g[9]
        )?;
        for b in &g[10..] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{self}}}")
    }
}

// Region GUIDs.
pub(crate) const BAT_REGION: Guid =
    Guid::from_fields(0x2DC2_7766, 0xF623, 0x4200, [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08]);
pub(crate) const METADATA_REGION: Guid =
    Guid::from_fields(0x8B7C_A206, 0x4790, 0x4B9A, [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E]);

// Metadata item GUIDs.
pub(crate) const FILE_PARAMETERS: Guid =
    Guid::from_fields(0xCAA1_6737, 0xFA36, 0x4D43, [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B]);
pub(crate) const VIRTUAL_DISK_SIZE: Guid =
    Guid::from_fields(0x2FA5_4224, 0xCD1B, 0x4876, [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8]);
/// "Virtual Disk ID", also known as the Page 83 data item.
pub(crate) const PAGE_83_DATA: Guid =
    Guid::from_fields(0xBECA_12AB, 0xB2E6, 0x4523, [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46]);
pub(crate) const LOGICAL_SECTOR_SIZE: Guid =
    Guid::from_fields(0x8141_BF1D, 0xA96F, 0x4709, [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F]);
pub(crate) const PHYSICAL_SECTOR_SIZE: Guid =
    Guid::from_fields(0xCDA3_48C7, 0x445D, 0x4471, [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56]);
pub(crate) const PARENT_LOCATOR: Guid =
    Guid::from_fields(0xA8D3_5F2D, 0xB30B, 0x454D, [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C]);
/// Parent locator type of a VHDX parent.
pub(crate) const VHDX_PARENT_LOCATOR_TYPE: Guid =
    Guid::from_fields(0xB04A_EFB7, 0xD19E, 0x4A81, [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13]);

pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// CRC-32C of `b` with the 4-byte checksum field at `field` taken as zero, as every VHDX
/// checksum is defined.
pub(crate) fn crc_with_zeroed_field(b: &[u8], field: usize) -> u32 {
    let crc = crc32c::crc32c(&b[..field]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &b[field + 4..])
}

/// Whether the checksum stored at `field` (little-endian) matches.
pub(crate) fn checksum_ok(b: &[u8], field: usize) -> bool {
    le32(b, field) == crc_with_zeroed_field(b, field)
}

pub(crate) fn corrupt(what: &str, offset: u64, detail: impl Into<String>) -> SourceError {
    SourceError::Corrupt { what: what.to_string(), offset, detail: detail.into() }
}

pub(crate) fn unsupported(what: &str, detail: impl Into<String>) -> SourceError {
    SourceError::Unsupported { what: what.to_string(), detail: detail.into() }
}

/// Whether `[a, a+alen)` and `[b, b+blen)` overlap (lengths may be zero).
pub(crate) fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    alen > 0 && blen > 0 && a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_round_trip() {
        assert_eq!(BAT_REGION.to_string(), "2dc27766-f623-4200-9d64-115e9bfd4a08");
        assert_eq!(BAT_REGION.0[..4], [0x66, 0x77, 0xc2, 0x2d]);
        assert_eq!(Guid::parse("{2DC27766-F623-4200-9D64-115E9BFD4A08}"), Some(BAT_REGION));
        assert_eq!(Guid::parse("2dc27766-f623-4200-9d64-115e9bfd4a08"), Some(BAT_REGION));
        assert_eq!(Guid::parse("{2dc27766-f623-4200-9d64-115e9bfd4a0}"), None);
        assert_eq!(Guid::parse("{2dc27766-f623-4200-9d64-115e9bfd4a0g}"), None);
        assert_eq!(Guid::parse("é"), None);
    }

    #[test]
    fn crc_zeroes_the_field() {
        let mut b = vec![7u8; 64];
        let c = crc_with_zeroed_field(&b, 4);
        b[4..8].copy_from_slice(&c.to_le_bytes());
        assert!(checksum_ok(&b, 4));
        b[9] ^= 1;
        assert!(!checksum_ok(&b, 4));
    }
}
