//! Loading and validating the Block Allocation Table.
//!
//! The BAT interleaves payload entries with sector bitmap entries: after every `chunk_ratio`
//! payload entries comes the entry of the sector bitmap block for that chunk. Each 64-bit
//! entry holds a state (bits 0-2) and a file offset in MiB (bits 20-63). We decode it once at
//! open into two compact arrays of `u32` (state and MiB offset), validating every present
//! block against the file size and the other structures, so a read only looks entries up.

use blocksource::SourceError;

use crate::format::*;
use crate::header::{Metadata, Region};
use crate::host::Host;

pub(crate) const PAYLOAD_NOT_PRESENT: u32 = 0;
pub(crate) const PAYLOAD_UNDEFINED: u32 = 1;
pub(crate) const PAYLOAD_ZERO: u32 = 2;
pub(crate) const PAYLOAD_UNMAPPED: u32 = 3;
pub(crate) const PAYLOAD_FULLY_PRESENT: u32 = 6;
pub(crate) const PAYLOAD_PARTIALLY_PRESENT: u32 = 7;
const SB_PRESENT: u64 = 6;

/// Most payload blocks we load the BAT of: 32 Mi entries, 128 MiB in memory (32 TiB of disk
/// at the smallest block size, the whole 64 TiB maximum at 2 MiB blocks and up).
pub const MAX_PAYLOAD_BLOCKS: u64 = 32 << 20;

/// Largest MiB offset a compact entry holds (29 bits: files up to 512 TiB).
const MAX_OFFSET_MB: u64 = (1 << 29) - 1;

/// BAT bytes read per container request while loading.
const LOAD_PIECE: usize = 1 << 20;

/// The decoded BAT.
#[derive(Debug)]
pub(crate) struct Bat {
    /// Per payload block: `offset_mb << 3 | state`; the offset is meaningful only for the
    /// present states and then validated.
    payload: Vec<u32>,
    /// Per chunk (differencing images only): MiB offset of its sector bitmap block, 0 when not
    /// present.
    bitmaps: Vec<u32>,
}

impl Bat {
    /// State and file offset of payload block `b` (< number of payload blocks).
    pub(crate) fn payload(&self, b: u64) -> (u32, u64) {
        let e = self.payload.get(b as usize).copied().unwrap_or(PAYLOAD_NOT_PRESENT);
        (e & 7, u64::from(e >> 3) * MIB)
    }

    /// File offset of the sector bitmap block of `chunk`, if present.
    pub(crate) fn bitmap(&self, chunk: u64) -> Option<u64> {
        match self.bitmaps.get(chunk as usize) {
            Some(&mb) if mb != 0 => Some(u64::from(mb) * MIB),
            _ => None,
        }
    }
}

/// Number of payload blocks and chunk ratio of an image.
pub(crate) fn geometry(meta: &Metadata) -> (u64, u64) {
    let blocks = meta.size.div_ceil(meta.block_size);
    let chunk_ratio = (SECTORS_PER_BITMAP * u64::from(meta.logical_sector)) / meta.block_size;
    (blocks, chunk_ratio)
}

/// Read and validate the BAT. `avoid` are the other structures of the file (metadata region,
/// log) no block may overlap.
pub(crate) fn load(
    host: &Host,
    what: &str,
    meta: &Metadata,
    region: Region,
    avoid: &[(&str, u64, u64)],
) -> Result<Bat, SourceError> {
    let (blocks, chunk_ratio) = geometry(meta);
    let chunks = blocks.div_ceil(chunk_ratio);
    // Entries we must read: through the last payload entry, and for a differencing image also
    // the sector bitmap entry of the last chunk.
    let needed = if blocks == 0 {
        0
    } else if meta.has_parent {
        chunks * (chunk_ratio + 1)
    } else {
        blocks + (blocks - 1) / chunk_ratio
    };
    if needed * 8 > region.length {
        return Err(corrupt(
            what,
            region.offset,
            format!(
                "the BAT region is {} bytes but a {} byte disk with {} byte blocks needs {needed} entries ({} bytes)",
                region.length,
                meta.size,
                meta.block_size,
                needed * 8
            ),
        ));
    }
    // Checked after the region size, so a hostile size in a small file is reported as the
    // corruption it is.
    if blocks > MAX_PAYLOAD_BLOCKS {
        return Err(unsupported(
            what,
            format!(
                "the BAT has {blocks} payload blocks ({} byte disk, {} byte blocks), more than the {MAX_PAYLOAD_BLOCKS} this reader loads",
                meta.size, meta.block_size
            ),
        ));
    }
    let file_size = host.size();
    let mut payload: Vec<u32> = Vec::with_capacity(blocks as usize);
    let mut bitmaps: Vec<u32> = Vec::with_capacity(if meta.has_parent { chunks as usize } else { 0 });
    let mut partial_chunks: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; LOAD_PIECE.min(needed as usize * 8)];
    let mut index = 0u64;
    while index < needed {
        let n = ((needed - index) as usize).min(buf.len() / 8);
        host.read_at(region.offset + index * 8, &mut buf[..n * 8])?;
        for k in 0..n {
            let i = index + k as u64;
            let entry = le64(&buf, k * 8);
            let at = region.offset + i * 8;
            let state = entry & 7;
            let mb = entry >> 20;
            if (i + 1).is_multiple_of(chunk_ratio + 1) {
                // A sector bitmap entry; only differencing images use them.
                if !meta.has_parent {
                    continue;
                }
                let chunk = i / (chunk_ratio + 1);
                match state {
                    0 => bitmaps.push(0),
                    SB_PRESENT => {
                        check_block(
                            what,
                            at,
                            "sector bitmap block",
                            mb,
                            SECTOR_BITMAP_BLOCK,
                            file_size,
                            region,
                            avoid,
                        )?;
                        bitmaps.push(mb as u32);
                    }
                    s => {
                        return Err(corrupt(
                            what,
                            at,
                            format!("sector bitmap entry of chunk {chunk} has invalid state {s}"),
                        ))
                    }
                }
                continue;
            }
            let block = i - i / (chunk_ratio + 1);
            if block >= blocks {
                continue;
            }
            let state = state as u32;
            match state {
                PAYLOAD_NOT_PRESENT | PAYLOAD_UNDEFINED | PAYLOAD_ZERO | PAYLOAD_UNMAPPED => payload.push(state),
                PAYLOAD_FULLY_PRESENT | PAYLOAD_PARTIALLY_PRESENT => {
                    if state == PAYLOAD_PARTIALLY_PRESENT {
                        if !meta.has_parent {
                            return Err(corrupt(
                                what,
                                at,
                                format!("payload block {block} is PARTIALLY_PRESENT, a state only differencing images may use"),
                            ));
                        }
                        partial_chunks.push((block / chunk_ratio, at));
                    }
                    // Only the part of the last block that the disk covers must exist.
                    let used = meta.block_size.min(meta.size - block * meta.block_size);
                    check_block(what, at, &format!("payload block {block}"), mb, used, file_size, region, avoid)?;
                    payload.push((mb as u32) << 3 | state);
                }
                s => return Err(corrupt(what, at, format!("payload block {block} has reserved BAT state {s}"))),
            }
        }
        index += n as u64;
    }
    let bat = Bat { payload, bitmaps };
    for (chunk, at) in partial_chunks {
        if bat.bitmap(chunk).is_none() {
            return Err(corrupt(
                what,
                at,
                format!(
                    "a payload block of chunk {chunk} is PARTIALLY_PRESENT but the chunk has no sector bitmap block"
                ),
            ));
        }
    }
    Ok(bat)
}

/// Check that the block at `mb` MiB, of which `len` bytes are used, lies after the header
/// section, inside the file, and clear of the BAT and `avoid`.
#[allow(clippy::too_many_arguments)]
fn check_block(
    what: &str,
    at: u64,
    name: &str,
    mb: u64,
    len: u64,
    file_size: u64,
    bat: Region,
    avoid: &[(&str, u64, u64)],
) -> Result<(), SourceError> {
    if mb == 0 {
        return Err(corrupt(what, at, format!("{name} is present at file offset 0, inside the header section")));
    }
    if mb > MAX_OFFSET_MB {
        return Err(corrupt(what, at, format!("{name} is at file offset {mb} MiB, beyond any plausible file")));
    }
    let off = mb * MIB;
    if off + len > file_size {
        return Err(corrupt(
            what,
            at,
            format!("{name} ({len} bytes at file offset {off}) reaches past the end of the {file_size}-byte file (truncated image?)"),
        ));
    }
    for &(other, o, l) in [("BAT", bat.offset, bat.length)].iter().chain(avoid) {
        if overlaps(off, len, o, l) {
            return Err(corrupt(
                what,
                at,
                format!("{name} ({len} bytes at file offset {off}) overlaps the {other} ({l} bytes at {o})"),
            ));
        }
    }
    Ok(())
}
