//! Sparse extents: hosted sparse (`KDMV`: monolithicSparse, twoGbMaxExtentSparse,
//! streamOptimized, Workstation snapshots) and ESXi vmfsSparse redo logs (`COWD`).
//! Everything here runs once per extent at open time; after it, the reader only trusts values
//! this module has checked against the extent file's size.
//!
//! # Hosted sparse (`KDMV`), all integers little-endian, offsets in 512-byte sectors
//! ```text
//!  0 magic "KDMV"            4 version (1..3)        8 flags
//! 12 capacity (u64)         20 grainSize (u64)      28 descriptorOffset (u64)
//! 36 descriptorSize (u64)   44 numGTEsPerGT (u32)   48 rgdOffset (u64)
//! 56 gdOffset (u64)         64 overHead (u64)       72 uncleanShutdown (u8)
//! 73 '\n' 74 ' ' 75 '\r' 76 '\n' (newline test)     77 compressAlgorithm (u16)
//! ```
//! Flags: bit 0 the newline test is valid, bit 1 a redundant grain directory exists (we use
//! the primary one), bit 2 a grain table entry of 1 means "zeroed grain", bit 16 compressed
//! grains, bit 17 markers. The grain directory (GD) holds one u32 per grain table (GT): the
//! GT's sector, or 0 for none. A GT holds `numGTEsPerGT` u32 entries, one per grain: the
//! grain's sector, 0 for unallocated (read the parent, or zeros), or 1 for a zeroed grain.
//!
//! **streamOptimized** (compressAlgorithm 1, markers): each grain entry points at a grain
//! marker `{lba: u64, size: u32}` followed by `size` bytes of zlib data that decompress to at
//! most one grain; `lba` is the grain's first sector in the disk. Metadata (GTs, GD, footer) is
//! preceded by a 512-byte marker `{numSectors: u64, 0: u32, type: u32}` (0 end of stream,
//! 1 GT, 2 GD, 3 footer). When the header's gdOffset is `GD_AT_END` (all ones), the real header
//! is the footer near the end of the file: footer marker, footer header, end-of-stream marker,
//! i.e. the header copy is the second-to-last sector.
//!
//! # vmfsSparse (`COWD`)
//! ```text
//!  0 magic "COWD"  4 version (1)  8 flags  12 numSectors  16 grainSize (sectors)
//! 20 gdOffset (sectors)  24 numGDEntries  28 freeSector  ...  (header is 2048 bytes)
//! ```
//! All u32. A GT has 4096 entries; an entry is the grain's sector or 0 (unallocated: read the
//! parent). No zeroed grains, no compression. The parent is named by the descriptor that lists
//! the `VMFSSPARSE` extent, never by the COWD header.
//!
//! # Invariants checked here
//! Grain size is a power of two of at most [`MAX_GRAIN_BYTES`]; the GD is at most
//! [`MAX_GD_BYTES`], lies inside the file and covers the capacity; every non-zero GD entry
//! names a GT that lies wholly inside the file. Grain entries are checked when used.

use std::sync::Arc;

use blocksource::{BlockSource, SourceError};

pub(crate) const SECTOR: u64 = 512;
pub(crate) const KDMV_MAGIC: [u8; 4] = *b"KDMV";
pub(crate) const COWD_MAGIC: [u8; 4] = *b"COWD";

/// gdOffset value meaning "the header that counts is the footer".
pub(crate) const GD_AT_END: u64 = u64::MAX;

const FLAG_NEWLINE_TEST: u32 = 1 << 0;
const FLAG_ZEROED_GTE: u32 = 1 << 2;
const FLAG_MARKERS: u32 = 1 << 17;
const COMPRESS_NONE: u16 = 0;
const COMPRESS_DEFLATE: u16 = 1;

const MARKER_EOS: u32 = 0;
const MARKER_FOOTER: u32 = 3;

/// Largest grain we accept (VMware and QEMU use 64 KiB). Bounds the per-grain buffers of
/// compressed reads.
pub(crate) const MAX_GRAIN_BYTES: u64 = 1 << 20;

/// Largest grain directory we load (QEMU's limit for its L1 too): 8 M tables, 256 TiB with
/// standard grains.
pub(crate) const MAX_GD_BYTES: u64 = 32 << 20;

/// Largest guest disk (1 PiB; VMFS stops at 62 TiB). Keeps all byte arithmetic far from
/// overflow.
pub(crate) const MAX_DISK_BYTES: u64 = 1 << 50;

/// Most entries of one hosted sparse GT (QEMU's limit; VMware always writes 512).
const MAX_GTES_PER_GT: u32 = 512;

/// Entries of one COWD GT.
const COWD_GTES_PER_GT: u32 = 4096;

/// Bytes read for one compressed grain beyond the grain size: the 12-byte grain marker plus
/// zlib's worst-case expansion of incompressible data (5 bytes per 16 KiB block, plus header
/// and trailer), which stays well under this for grains up to [`MAX_GRAIN_BYTES`].
pub(crate) const COMPRESSED_SLACK: u64 = 1024;

/// Size of a grain marker's fixed part (lba u64, size u32).
pub(crate) const GRAIN_MARKER_LEN: usize = 12;

/// Which sparse format an extent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SparseFormat {
    Hosted,
    Cowd,
}

/// What one grain maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// Not in this extent: the parent's bytes, or zeros without a parent.
    Unallocated,
    /// Reads as zeros whatever the parent holds (zeroed-grain entry).
    Zero,
    /// The grain's data starts at this byte offset in the extent file (validated inside it).
    Data(u64),
    /// A grain marker (or, without markers, a zlib stream) starts at this byte offset
    /// (validated inside the file).
    Compressed(u64),
}

/// An opened sparse extent: validated geometry and the grain directory.
#[derive(Debug)]
pub(crate) struct SparseExtent {
    /// Which header the extent has (for Debug output and messages).
    pub format: SparseFormat,
    /// describe() of the extent file, for messages.
    pub what: String,
    pub file_size: u64,
    /// Cache key prefix, unique in the chain.
    pub id: u32,
    /// log2 of the grain size in bytes.
    pub grain_bits: u32,
    pub gtes_per_gt: u32,
    /// Capacity in bytes (a sector multiple).
    pub capacity: u64,
    /// GT sector per GT; 0 = none. Exactly the entries covering `capacity`.
    gd: Vec<u32>,
    /// Byte offset of the GD, for messages.
    gd_offset: u64,
    pub compressed: bool,
    pub markers: bool,
    zeroed_grain: bool,
    /// Embedded descriptor: byte offset and length inside the file (hosted sparse only).
    pub descriptor: Option<(u64, u64)>,
    /// First guest sector of this extent in its disk. Grain markers written by some tools
    /// count sectors from the disk's start rather than the extent's; both are accepted.
    pub base_sector: u64,
}

pub(crate) fn corrupt(what: &str, offset: u64, detail: impl Into<String>) -> SourceError {
    SourceError::Corrupt { what: what.to_string(), offset, detail: detail.into() }
}

pub(crate) fn unsupported(what: &str, detail: impl Into<String>) -> SourceError {
    SourceError::Unsupported { what: what.to_string(), detail: detail.into() }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Fields of a hosted sparse header, unvalidated.
struct Hosted {
    version: u32,
    flags: u32,
    capacity: u64,
    grain: u64,
    desc_offset: u64,
    desc_size: u64,
    gtes: u32,
    gd: u64,
    newline: [u8; 4],
    compress: u16,
}

fn hosted_fields(b: &[u8]) -> Hosted {
    Hosted {
        version: le32(b, 4),
        flags: le32(b, 8),
        capacity: le64(b, 12),
        grain: le64(b, 20),
        desc_offset: le64(b, 28),
        desc_size: le64(b, 36),
        gtes: le32(b, 44),
        gd: le64(b, 56),
        newline: [b[73], b[74], b[75], b[76]],
        compress: le16(b, 77),
    }
}

impl SparseExtent {
    /// Open the sparse extent whose raw bytes `container` holds (either magic).
    pub(crate) fn open(container: &dyn BlockSource, what: &str, id: u32) -> Result<SparseExtent, SourceError> {
        let file_size = container.size();
        if file_size < SECTOR {
            return Err(corrupt(what, 0, format!("file is {file_size} bytes, too short for a sparse extent header")));
        }
        let mut head = [0u8; SECTOR as usize];
        container.read_at(0, &mut head)?;
        let magic = [head[0], head[1], head[2], head[3]];
        if magic == KDMV_MAGIC {
            Self::open_hosted(container, what, id, &head, file_size)
        } else if magic == COWD_MAGIC {
            Self::open_cowd(container, what, id, &head, file_size)
        } else {
            Err(corrupt(what, 0, "no sparse extent magic (KDMV or COWD) at the start: not a VMDK sparse extent"))
        }
    }

    fn open_hosted(
        container: &dyn BlockSource,
        what: &str,
        id: u32,
        head: &[u8],
        file_size: u64,
    ) -> Result<SparseExtent, SourceError> {
        let mut h = hosted_fields(head);
        if !(1..=3).contains(&h.version) {
            return Err(unsupported(what, format!("hosted sparse extent version {} (only 1 to 3 exist)", h.version)));
        }
        let mut header_at = 0;
        if h.gd == GD_AT_END {
            // streamOptimized written as a stream: the footer holds the real header.
            header_at = footer_header(container, what, file_size)?;
            let mut footer = [0u8; SECTOR as usize];
            container.read_at(header_at, &mut footer)?;
            h = hosted_fields(&footer);
            if h.gd == GD_AT_END {
                return Err(corrupt(
                    what,
                    header_at + 56,
                    "footer header also has gdOffset GD_AT_END: the footer is damaged",
                ));
            }
            if !(1..=3).contains(&h.version) {
                return Err(unsupported(what, format!("footer header has version {} (only 1 to 3 exist)", h.version)));
            }
        }
        let field = |at: u64| header_at + at;
        if h.flags & FLAG_NEWLINE_TEST != 0 && h.newline != *b"\n \r\n" {
            return Err(corrupt(
                what,
                field(73),
                "the newline test bytes are wrong: the file was damaged by a text-mode (ASCII) transfer; copy it again in binary mode",
            ));
        }
        let compressed = match h.compress {
            COMPRESS_NONE => false,
            COMPRESS_DEFLATE => true,
            other => {
                return Err(unsupported(what, format!("grain compression algorithm {other} (only deflate is known)")))
            }
        };
        let markers = h.flags & FLAG_MARKERS != 0;
        if h.capacity == 0 && h.desc_offset != 0 {
            return Err(unsupported(
                what,
                "sparse header with capacity 0 that defers to its embedded descriptor; open a descriptor file instead",
            ));
        }
        let grain_bits = grain_bits(what, field(20), h.grain)?;
        if h.gtes == 0 || h.gtes > MAX_GTES_PER_GT {
            return Err(corrupt(
                what,
                field(44),
                format!("{} entries per grain table (must be 1 to {MAX_GTES_PER_GT}, normally 512)", h.gtes),
            ));
        }
        let capacity = capacity_bytes(what, field(12), h.capacity)?;
        let descriptor = if h.desc_offset == 0 || h.desc_size == 0 {
            None
        } else {
            let (off, len) = (h.desc_offset.checked_mul(SECTOR), h.desc_size.checked_mul(SECTOR));
            match (off, len) {
                (Some(off), Some(len)) if len <= crate::descriptor::MAX_DESCRIPTOR_BYTES => {
                    if off.checked_add(len).is_none_or(|end| end > file_size) {
                        return Err(corrupt(
                            what,
                            field(28),
                            format!(
                                "embedded descriptor (sector {}, {} sectors) lies past the end of the {file_size}-byte file: truncated or corrupt",
                                h.desc_offset, h.desc_size
                            ),
                        ));
                    }
                    Some((off, len))
                }
                _ => {
                    return Err(corrupt(
                        what,
                        field(36),
                        format!(
                            "embedded descriptor is {} sectors, more than the {} KiB limit",
                            h.desc_size,
                            crate::descriptor::MAX_DESCRIPTOR_BYTES >> 10
                        ),
                    ))
                }
            }
        };
        let mut x = SparseExtent {
            format: SparseFormat::Hosted,
            what: what.to_string(),
            file_size,
            id,
            grain_bits,
            gtes_per_gt: h.gtes,
            capacity,
            gd: Vec::new(),
            gd_offset: 0,
            compressed,
            markers,
            zeroed_grain: h.flags & FLAG_ZEROED_GTE != 0,
            descriptor,
            base_sector: 0,
        };
        let entries = x.gd_entries_needed();
        x.load_gd(container, field(56), h.gd, entries)?;
        Ok(x)
    }

    fn open_cowd(
        container: &dyn BlockSource,
        what: &str,
        id: u32,
        head: &[u8],
        file_size: u64,
    ) -> Result<SparseExtent, SourceError> {
        let version = le32(head, 4);
        if version != 1 {
            return Err(unsupported(what, format!("vmfsSparse (COWD) version {version} (only 1 is known)")));
        }
        let capacity = capacity_bytes(what, 12, u64::from(le32(head, 12)))?;
        let grain_bits = grain_bits(what, 16, u64::from(le32(head, 16)))?;
        let mut x = SparseExtent {
            format: SparseFormat::Cowd,
            what: what.to_string(),
            file_size,
            id,
            grain_bits,
            gtes_per_gt: COWD_GTES_PER_GT,
            capacity,
            gd: Vec::new(),
            gd_offset: 0,
            compressed: false,
            markers: false,
            zeroed_grain: false,
            descriptor: None,
            base_sector: 0,
        };
        let needed = x.gd_entries_needed();
        let entries = u64::from(le32(head, 24));
        if entries < needed {
            return Err(corrupt(
                what,
                24,
                format!(
                    "vmfsSparse grain directory has {entries} entries, too few for the {capacity}-byte capacity ({needed} needed)"
                ),
            ));
        }
        x.load_gd(container, 20, u64::from(le32(head, 20)), needed)?;
        Ok(x)
    }

    /// Bytes of guest data one GT covers.
    pub(crate) fn gt_span(&self) -> u64 {
        u64::from(self.gtes_per_gt) << self.grain_bits
    }

    pub(crate) fn grain_size(&self) -> u64 {
        1 << self.grain_bits
    }

    fn gd_entries_needed(&self) -> u64 {
        self.capacity.div_ceil(self.gt_span())
    }

    /// Load `entries` GD entries at sector `gd_sector`; `field` is where the header names it.
    fn load_gd(
        &mut self,
        container: &dyn BlockSource,
        field: u64,
        gd_sector: u64,
        entries: u64,
    ) -> Result<(), SourceError> {
        let what = self.what.clone();
        let bytes = entries * 4;
        if bytes > MAX_GD_BYTES {
            return Err(unsupported(
                &what,
                format!(
                    "grain directory of {entries} entries ({bytes} bytes) is larger than the {} MiB limit (capacity {} bytes, grain {} bytes)",
                    MAX_GD_BYTES >> 20,
                    self.capacity,
                    self.grain_size()
                ),
            ));
        }
        let gd_offset =
            gd_sector.checked_mul(SECTOR).filter(|&o| o.checked_add(bytes).is_some_and(|e| e <= self.file_size));
        let Some(gd_offset) = gd_offset.filter(|&o| o != 0 || entries == 0) else {
            return Err(corrupt(
                &what,
                field,
                format!(
                    "grain directory at sector {gd_sector} ({entries} entries) does not lie inside the {}-byte file: truncated or corrupt",
                    self.file_size
                ),
            ));
        };
        let mut raw = vec![0u8; bytes as usize];
        container.read_at(gd_offset, &mut raw)?;
        let gt_bytes = u64::from(self.gtes_per_gt) * 4;
        let mut gd = Vec::with_capacity(entries as usize);
        for (i, b) in raw.chunks_exact(4).enumerate() {
            let e = le32(b, 0);
            if e != 0 && u64::from(e) * SECTOR + gt_bytes > self.file_size {
                return Err(corrupt(
                    &what,
                    gd_offset + i as u64 * 4,
                    format!(
                        "grain directory entry {i} points to a grain table at sector {e}, past the end of the {}-byte file: truncated or corrupt",
                        self.file_size
                    ),
                ));
            }
            gd.push(e);
        }
        self.gd = gd;
        self.gd_offset = gd_offset;
        Ok(())
    }

    /// Byte offset of GT `i`, or `None` if the GD has no table there (all its grains are
    /// unallocated) or `i` is past the GD.
    pub(crate) fn gt_offset(&self, i: usize) -> Option<u64> {
        match self.gd.get(i) {
            Some(&s) if s != 0 => Some(u64::from(s) * SECTOR),
            _ => None,
        }
    }

    /// Bytes of one GT.
    pub(crate) fn gt_bytes(&self) -> usize {
        self.gtes_per_gt as usize * 4
    }

    pub(crate) fn decode_table(buf: &[u8]) -> Arc<[u32]> {
        buf.chunks_exact(4).map(|b| le32(b, 0)).collect()
    }

    /// The mapping of grain `grain` (counted from the extent's start, < grains in capacity),
    /// given its GT (`None` if [`gt_offset`](Self::gt_offset) is `None`).
    pub(crate) fn mapping(&self, grain: u64, table: Option<&[u32]>) -> Result<Mapping, SourceError> {
        let gt = (grain / u64::from(self.gtes_per_gt)) as usize;
        let idx = (grain % u64::from(self.gtes_per_gt)) as usize;
        let Some(gt_off) = self.gt_offset(gt) else {
            return Ok(Mapping::Unallocated);
        };
        let Some(&entry) = table.and_then(|t| t.get(idx)) else {
            return Err(corrupt(&self.what, gt_off, format!("internal error: grain table {gt} not loaded")));
        };
        let at = gt_off + idx as u64 * 4;
        match entry {
            0 => Ok(Mapping::Unallocated),
            1 if self.zeroed_grain => Ok(Mapping::Zero),
            s => {
                let host = u64::from(s) * SECTOR;
                let need = if self.compressed && self.markers { GRAIN_MARKER_LEN as u64 } else { 1 };
                if host.checked_add(need).is_none_or(|e| e > self.file_size) {
                    return Err(corrupt(
                        &self.what,
                        at,
                        format!(
                            "grain table entry for grain {grain} points to sector {s}, past the end of the {}-byte file: truncated or corrupt",
                            self.file_size
                        ),
                    ));
                }
                Ok(if self.compressed { Mapping::Compressed(host) } else { Mapping::Data(host) })
            }
        }
    }

    /// How many bytes to read for a compressed grain at `host`.
    pub(crate) fn compressed_read_len(&self, host: u64) -> usize {
        (self.grain_size() + COMPRESSED_SLACK).min(self.file_size - host) as usize
    }

    /// Decompress the compressed grain `grain` whose file bytes (from its marker on) are `buf`,
    /// read at byte `host`, into `out` (one grain). Returns the number of valid bytes.
    pub(crate) fn decompress(&self, grain: u64, host: u64, buf: &[u8], out: &mut [u8]) -> Result<usize, SourceError> {
        let data = if self.markers {
            if buf.len() < GRAIN_MARKER_LEN {
                return Err(corrupt(&self.what, host, "grain marker is cut off by the end of the file"));
            }
            let lba = le64(buf, 0);
            let size = le32(buf, 8) as usize;
            let grain_sectors = self.grain_size() / SECTOR;
            if size == 0 {
                return Err(corrupt(
                    &self.what,
                    host,
                    format!("grain table entry for grain {grain} points to a metadata marker, not a grain marker"),
                ));
            }
            let in_grain = |l: u64| l / grain_sectors == grain;
            if !in_grain(lba) && !lba.checked_sub(self.base_sector).is_some_and(in_grain) {
                return Err(corrupt(
                    &self.what,
                    host,
                    format!(
                        "grain marker says it holds sector {lba}, but the grain table lists it for grain {grain} (sectors {} to {}): grain table or marker corrupt",
                        grain * grain_sectors,
                        (grain + 1) * grain_sectors - 1
                    ),
                ));
            }
            if size > buf.len() - GRAIN_MARKER_LEN {
                return Err(corrupt(
                    &self.what,
                    host,
                    format!(
                        "grain marker says {size} bytes of compressed data follow, more than {} (the file ends, or more than a {}-byte grain can need)",
                        buf.len() - GRAIN_MARKER_LEN,
                        self.grain_size()
                    ),
                ));
            }
            &buf[GRAIN_MARKER_LEN..GRAIN_MARKER_LEN + size]
        } else {
            buf
        };
        crate::inflate::inflate_grain(data, out)
            .map_err(|e| corrupt(&self.what, host, format!("compressed grain {grain} is damaged: {e}")))
    }
}

fn grain_bits(what: &str, field: u64, sectors: u64) -> Result<u32, SourceError> {
    if sectors == 0 || !sectors.is_power_of_two() || sectors > MAX_GRAIN_BYTES / SECTOR {
        return Err(corrupt(
            what,
            field,
            format!(
                "grain size of {sectors} sectors is not a power of two between 1 and {} sectors",
                MAX_GRAIN_BYTES / SECTOR
            ),
        ));
    }
    Ok(sectors.trailing_zeros() + 9)
}

fn capacity_bytes(what: &str, field: u64, sectors: u64) -> Result<u64, SourceError> {
    match sectors.checked_mul(SECTOR) {
        Some(b) if b <= MAX_DISK_BYTES => Ok(b),
        _ => Err(corrupt(
            what,
            field,
            format!("capacity of {sectors} sectors is larger than the {} TiB limit", MAX_DISK_BYTES >> 40),
        )),
    }
}

/// Check the streamOptimized footer (footer marker, header copy, end-of-stream marker in the
/// last three sectors) and return the byte offset of the header copy.
fn footer_header(container: &dyn BlockSource, what: &str, file_size: u64) -> Result<u64, SourceError> {
    let end = file_size / SECTOR * SECTOR;
    if end < 4 * SECTOR {
        return Err(corrupt(
            what,
            56,
            format!("gdOffset is GD_AT_END but the {file_size}-byte file is too short to hold a footer: truncated"),
        ));
    }
    let start = end - 3 * SECTOR;
    let mut f = vec![0u8; 3 * SECTOR as usize];
    container.read_at(start, &mut f)?;
    let (marker, header, eos) = (&f[..512], &f[512..1024], &f[1024..]);
    let ok = le32(marker, 8) == 0
        && le32(marker, 12) == MARKER_FOOTER
        && header[..4] == KDMV_MAGIC
        && le64(eos, 0) == 0
        && le32(eos, 8) == 0
        && le32(eos, 12) == MARKER_EOS;
    if !ok {
        return Err(corrupt(
            what,
            start,
            "gdOffset is GD_AT_END but the file does not end with a footer marker, a footer header and an end-of-stream marker: the stream is truncated or corrupt",
        ));
    }
    Ok(start + SECTOR)
}
