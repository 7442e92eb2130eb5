//! Parsing and validation of the VHD footer and the dynamic disk header. Both are fixed-size
//! structures read once at open time; after this module, the reader only trusts values it has
//! checked.

use blocksource::SourceError;

/// Size of the footer (and of its copy at the start of a dynamic image).
pub const FOOTER_LEN: u64 = 512;

/// Size of the dynamic disk header.
pub(crate) const DYN_HEADER_LEN: u64 = 1024;

/// Byte offset of the footer's checksum field.
const FOOTER_CHECKSUM_AT: usize = 64;
/// Byte offset of the dynamic header's checksum field.
const DYN_CHECKSUM_AT: usize = 36;

/// The dynamic header's cookie.
const DYN_COOKIE: &[u8; 8] = b"cxsparse";
/// The only dynamic header version the specification defines (1.0).
const DYN_VERSION: u32 = 0x0001_0000;

/// Smallest and largest block size accepted (the specification only asks for a power of two
/// sectors; 2 MiB is what every known writer uses).
pub(crate) const MIN_BLOCK: u64 = 512;
pub(crate) const MAX_BLOCK: u64 = 256 << 20;

/// The kind of VHD, from the footer's disk type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    /// The guest disk's bytes, then the footer.
    Fixed,
    /// Blocks allocated on demand through a BAT.
    Dynamic,
    /// Blocks of this file over a parent image.
    Differencing,
}

pub(crate) fn corrupt(what: &str, offset: u64, detail: impl Into<String>) -> SourceError {
    SourceError::Corrupt { what: what.to_string(), offset, detail: detail.into() }
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// One's complement of the byte sum of `b`, skipping the four checksum bytes at `skip`.
fn checksum(b: &[u8], skip: usize) -> u32 {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(skip..skip + 4).contains(i))
        .fold(0u32, |acc, (_, &v)| acc.wrapping_add(u32::from(v)));
    !sum
}

/// A validated footer.
#[derive(Debug, Clone)]
pub(crate) struct Footer {
    /// File offset of the dynamic header (meaningless for fixed disks).
    pub data_offset: u64,
    /// Guest size in bytes, rounded down to whole sectors.
    pub current_size: u64,
    pub disk_type: DiskType,
    /// The creator application, e.g. "win " (Hyper-V), "qemu", "vpc ".
    pub creator: [u8; 4],
}

impl Footer {
    /// Parse the footer in `b` (at least 512 bytes), found at file offset `at`.
    pub(crate) fn parse(b: &[u8], what: &str, at: u64) -> Result<Footer, SourceError> {
        if b.len() < FOOTER_LEN as usize {
            return Err(corrupt(what, at, "file is shorter than a VHD footer (512 bytes): image truncated"));
        }
        let b = &b[..FOOTER_LEN as usize];
        if !crate::is_vhd(b) {
            return Err(corrupt(what, at, "no VHD footer cookie \"conectix\" here"));
        }
        let stored = be32(b, FOOTER_CHECKSUM_AT);
        let computed = checksum(b, FOOTER_CHECKSUM_AT);
        if stored != computed {
            return Err(corrupt(
                what,
                at + FOOTER_CHECKSUM_AT as u64,
                format!(
                    "footer checksum is {stored:#010x} but the footer sums to {computed:#010x}: the footer is damaged"
                ),
            ));
        }
        let disk_type = match be32(b, 60) {
            2 => DiskType::Fixed,
            3 => DiskType::Dynamic,
            4 => DiskType::Differencing,
            t => {
                return Err(corrupt(
                    what,
                    at + 60,
                    format!("disk type is {t}, not 2 (fixed), 3 (dynamic) or 4 (differencing)"),
                ))
            }
        };
        let mut creator = [0u8; 4];
        creator.copy_from_slice(&b[28..32]);
        Ok(Footer { data_offset: be64(b, 16), current_size: be64(b, 48) & !511, disk_type, creator })
    }
}

/// A validated dynamic disk header.
#[derive(Debug, Clone)]
pub(crate) struct DynHeader {
    /// File offset of the BAT.
    pub table_offset: u64,
    /// Entries the BAT has room for.
    pub max_table_entries: u64,
    /// Data bytes per block: a power of two within [`MIN_BLOCK`]..=[`MAX_BLOCK`].
    pub block_size: u64,
    /// The parent's name (UTF-16 big-endian in the header), for messages about differencing
    /// disks.
    pub parent_name: String,
}

impl DynHeader {
    /// Parse the dynamic header in `b` (exactly [`DYN_HEADER_LEN`] bytes) found at file offset
    /// `at`.
    pub(crate) fn parse(b: &[u8], what: &str, at: u64) -> Result<DynHeader, SourceError> {
        if b.len() != DYN_HEADER_LEN as usize {
            return Err(corrupt(what, at, "dynamic disk header is truncated"));
        }
        if &b[..8] != DYN_COOKIE {
            return Err(corrupt(
                what,
                at,
                "no dynamic disk header cookie \"cxsparse\" where the footer's data offset points",
            ));
        }
        let stored = be32(b, DYN_CHECKSUM_AT);
        let computed = checksum(b, DYN_CHECKSUM_AT);
        if stored != computed {
            return Err(corrupt(
                what,
                at + DYN_CHECKSUM_AT as u64,
                format!(
                    "dynamic disk header checksum is {stored:#010x} but the header sums to {computed:#010x}: the header is damaged"
                ),
            ));
        }
        let version = be32(b, 24);
        if version != DYN_VERSION {
            return Err(corrupt(what, at + 24, format!("dynamic disk header version is {version:#010x}, not 1.0")));
        }
        let block_size = u64::from(be32(b, 32));
        if !block_size.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&block_size) {
            return Err(corrupt(
                what,
                at + 32,
                format!(
                    "block size is {block_size} bytes; it must be a power of two between {MIN_BLOCK} bytes and {} MiB",
                    MAX_BLOCK >> 20
                ),
            ));
        }
        let units: Vec<u16> = b[64..576].chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
        let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
        let parent_name = String::from_utf16_lossy(&units[..end]);
        Ok(DynHeader { table_offset: be64(b, 16), max_table_entries: u64::from(be32(b, 28)), block_size, parent_name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footer(disk_type: u32, size: u64) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..8].copy_from_slice(b"conectix");
        b[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
        b[28..32].copy_from_slice(b"test");
        b[48..56].copy_from_slice(&size.to_be_bytes());
        b[60..64].copy_from_slice(&disk_type.to_be_bytes());
        let c = checksum(&b, FOOTER_CHECKSUM_AT);
        b[64..68].copy_from_slice(&c.to_be_bytes());
        b
    }

    #[test]
    fn a_footer_with_a_valid_checksum_parses() {
        let f = Footer::parse(&footer(2, 1 << 20), "t", 0).unwrap();
        assert_eq!((f.disk_type, f.current_size, &f.creator), (DiskType::Fixed, 1 << 20, b"test"));
    }

    #[test]
    fn a_footer_with_one_changed_byte_fails_its_checksum() {
        let mut b = footer(3, 1 << 20);
        b[100] ^= 1;
        let e = Footer::parse(&b, "t", 0).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
    }

    #[test]
    fn an_unknown_disk_type_is_corrupt() {
        let e = Footer::parse(&footer(7, 1 << 20), "t", 0).unwrap_err().to_string();
        assert!(e.contains("disk type is 7"), "{e}");
    }
}
