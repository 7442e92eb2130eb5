//! Log replay, in memory.
//!
//! A VHDX whose current header has a non-zero LogGuid holds metadata updates (BAT, sector
//! bitmaps, metadata region, region table) that may not have reached their final place: they
//! must be replayed before anything else is read. We never write the container, so the
//! replayed sectors become an [`Overlay`] that every later read of the file goes through.
//!
//! # Log layout (MS-VHDX 2.3)
//! The log is a ring buffer of `LogLength` bytes at `LogOffset`, made of 4 KiB sectors. An
//! entry starts with a 64-byte header (`loge`, CRC-32C over the whole entry with the field
//! zeroed, EntryLength, Tail, SequenceNumber, DescriptorCount, LogGuid, FlushedFileOffset,
//! LastFileOffset), then 32-byte descriptors (126 in the first sector, 128 in each following
//! descriptor sector): `zero` (ZeroLength, FileOffset, SequenceNumber) or `desc` (TrailingBytes,
//! LeadingBytes, FileOffset, SequenceNumber). One 4 KiB data sector follows per data descriptor:
//! `data`, SequenceHigh, 4084 bytes, SequenceLow; the real sector is LeadingBytes + those 4084
//! bytes + TrailingBytes.
//!
//! # Finding the active sequence (MS-VHDX 2.3.3)
//! Starting at every candidate tail, follow entries that are valid, contiguous in the ring and
//! numbered one after the other; such a sequence counts if its head entry's Tail points at one
//! of its entries. The valid sequence with the highest head sequence number is replayed, from
//! the entry its head's Tail names to the head, in order.
//!
//! # Bounds
//! Logs larger than [`MAX_REPLAY_LOG`] are refused (Hyper-V and QEMU use 1 MiB). The log is read
//! once; each ring position is validated at most once, and the total CRC work is capped, so a
//! hostile log cannot make the scan quadratic in bytes. The overlay holds at most the log's
//! data sectors.

use blocksource::{BlockSource, SourceError};

use crate::format::*;
use crate::header::Header;
use crate::host::{Overlay, LOG_SECTOR};

/// Largest log we replay; bounds the memory and time of a replay.
pub const MAX_REPLAY_LOG: u64 = 32 * MIB;

/// Descriptors and writes below this offset would rewrite the file type identifier or the
/// headers, which are never updated through the log.
const FIRST_LOGGABLE_OFFSET: u64 = 192 * KIB;

/// Highest file offset a replayed write may reach (1 PiB): keeps arithmetic far from overflow.
const MAX_REPLAY_OFFSET: u64 = 1 << 50;

/// What we need to know about a valid entry.
#[derive(Debug, Clone, Copy)]
struct Entry {
    sequence: u64,
    /// Length in 4 KiB sectors.
    sectors: u64,
    /// Ring position (in sectors) of the tail entry of the sequence ending here.
    tail: u64,
    flushed_file_offset: u64,
    last_file_offset: u64,
}

struct Log<'a> {
    bytes: &'a [u8],
    /// Ring size in sectors.
    n: u64,
    guid: Guid,
    /// CRC-32C bytes we may still spend validating entries.
    crc_budget: u64,
    /// Lazily computed validity of the entry starting at each ring position.
    memo: Vec<Option<Option<Entry>>>,
}

impl Log<'_> {
    fn sector(&self, pos: u64) -> &[u8] {
        let s = ((pos % self.n) * LOG_SECTOR) as usize;
        &self.bytes[s..s + LOG_SECTOR as usize]
    }

    fn entry(&mut self, pos: u64) -> Option<Entry> {
        if let Some(m) = self.memo[pos as usize] {
            return m;
        }
        let e = self.validate(pos);
        self.memo[pos as usize] = Some(e);
        e
    }

    /// Byte `i` of the descriptor area of the entry at `pos` (descriptors never straddle a
    /// sector: 4096 - 64 is a multiple of 32).
    fn descriptor(&self, pos: u64, k: u64) -> &[u8] {
        let byte = 64 + 32 * k;
        let s = self.sector(pos + byte / LOG_SECTOR);
        let o = (byte % LOG_SECTOR) as usize;
        &s[o..o + 32]
    }

    fn validate(&mut self, pos: u64) -> Option<Entry> {
        let h = self.sector(pos);
        if h[..4] != LOG_ENTRY_SIGNATURE || Guid::read(h, 32) != self.guid {
            return None;
        }
        let len = u64::from(le32(h, 8));
        let tail = u64::from(le32(h, 12));
        let sequence = le64(h, 16);
        let count = u64::from(le32(h, 24));
        let flushed_file_offset = le64(h, 48);
        let last_file_offset = le64(h, 56);
        let ring = self.n * LOG_SECTOR;
        if len == 0 || len % LOG_SECTOR != 0 || len > ring || tail % LOG_SECTOR != 0 || tail >= ring || sequence == 0 {
            return None;
        }
        let sectors = len / LOG_SECTOR;
        let desc_sectors = (64 + 32 * count).div_ceil(LOG_SECTOR);
        if desc_sectors > sectors {
            return None;
        }
        // Cheap checks of every descriptor and data sector before the CRC.
        let mut data = 0u64;
        for k in 0..count {
            let d = self.descriptor(pos, k);
            if le64(d, 24) != sequence {
                return None;
            }
            let offset = le64(d, 16);
            if !offset.is_multiple_of(LOG_SECTOR) || !(FIRST_LOGGABLE_OFFSET..=MAX_REPLAY_OFFSET).contains(&offset) {
                return None;
            }
            if d[..4] == DATA_DESC_SIGNATURE {
                let s = self.sector(pos + desc_sectors + data);
                data += 1;
                if desc_sectors + data > sectors
                    || s[..4] != DATA_SECTOR_SIGNATURE
                    || u64::from(le32(s, 4)) != sequence >> 32
                    || u64::from(le32(s, 4092)) != sequence & 0xffff_ffff
                {
                    return None;
                }
            } else if d[..4] == ZERO_DESC_SIGNATURE {
                let zlen = le64(d, 8);
                if !zlen.is_multiple_of(LOG_SECTOR) || zlen > MAX_REPLAY_OFFSET - offset {
                    return None;
                }
            } else {
                return None;
            }
        }
        if len > self.crc_budget {
            return None;
        }
        self.crc_budget -= len;
        let first = self.sector(pos);
        let mut crc = crc32c::crc32c(&first[..4]);
        crc = crc32c::crc32c_append(crc, &[0; 4]);
        crc = crc32c::crc32c_append(crc, &first[8..]);
        for i in 1..sectors {
            crc = crc32c::crc32c_append(crc, self.sector(pos + i));
        }
        if crc != le32(first, 4) {
            return None;
        }
        Some(Entry { sequence, sectors, tail: tail / LOG_SECTOR, flushed_file_offset, last_file_offset })
    }
}

/// Replay the log of `hdr` from `container` into an overlay. Returns an empty overlay (with
/// `entries == 0`) when there is nothing to replay.
pub(crate) fn replay(container: &dyn BlockSource, what: &str, hdr: &Header) -> Result<Overlay, SourceError> {
    let file_size = container.size();
    let mut overlay = Overlay::default();
    overlay.size = file_size;
    if !hdr.log_pending() {
        return Ok(overlay);
    }
    let length = u64::from(hdr.log_length);
    let how_to_fix = "open it once in Hyper-V (or Windows: Mount-VHD) or run `qemu-img check -r all` on a copy, then back up the repaired image";
    if length > MAX_REPLAY_LOG {
        return Err(unsupported(
            what,
            format!(
                "VHDX has an unreplayed log of {length} bytes, larger than the {MAX_REPLAY_LOG} bytes this reader replays in memory: {how_to_fix}"
            ),
        ));
    }
    if length % LOG_SECTOR != 0 {
        return Err(corrupt(what, hdr.at + 68, format!("log length {length} is not a multiple of 4 KiB")));
    }
    // read_header checked the log lies inside the file.
    let mut bytes = vec![0u8; length as usize];
    container.read_at(hdr.log_offset, &mut bytes)?;
    let n = length / LOG_SECTOR;
    let mut log = Log { bytes: &bytes, n, guid: hdr.log_guid, crc_budget: 64 * length, memo: vec![None; n as usize] };

    // The scan of MS-VHDX 2.3.3, in ring positions (sectors).
    let mut best: Option<Vec<u64>> = None;
    let mut best_seq = 0u64;
    let mut tail = 0u64;
    loop {
        let mut seq: Vec<(u64, Entry)> = Vec::new();
        let mut pos = tail;
        let mut used = 0u64;
        while let Some(e) = log.entry(pos % n) {
            if seq.last().is_some_and(|(_, l)| e.sequence != l.sequence.wrapping_add(1)) || used + e.sectors > n {
                break;
            }
            seq.push((pos % n, e));
            used += e.sectors;
            pos = (pos + e.sectors) % n;
        }
        let valid = seq.last().and_then(|(_, head)| seq.iter().position(|(p, _)| *p == head.tail));
        match valid {
            Some(start) => {
                let head_seq = seq.last().map_or(0, |(_, h)| h.sequence);
                if head_seq > best_seq {
                    best_seq = head_seq;
                    best = Some(seq[start..].iter().map(|(p, _)| *p).collect());
                }
                if pos <= tail {
                    break; // wrapped: the whole ring has been scanned
                }
                tail = pos;
            }
            None => {
                tail += 1;
                if tail >= n {
                    break;
                }
            }
        }
    }
    let Some(active) = best else {
        return Err(corrupt(
            what,
            hdr.log_offset,
            format!(
                "header at {} says the log ({} bytes at {}) must be replayed (LogGuid {}), but it holds no valid entry sequence: {how_to_fix}",
                hdr.at, hdr.log_length, hdr.log_offset, hdr.log_guid
            ),
        ));
    };
    let head = active
        .last()
        .and_then(|&p| log.entry(p))
        .ok_or_else(|| corrupt(what, hdr.log_offset, "internal error: empty log sequence"))?;
    if file_size < head.flushed_file_offset {
        return Err(corrupt(
            what,
            hdr.log_offset,
            format!(
                "the file is truncated: {file_size} bytes, but its log says it was at least {} bytes",
                head.flushed_file_offset
            ),
        ));
    }
    let mut size = file_size.max(head.last_file_offset.min(MAX_REPLAY_OFFSET));
    for &p in &active {
        let Some(e) = log.entry(p) else { continue };
        let count = u64::from(le32(log.sector(p), 24));
        let desc_sectors = (64 + 32 * count).div_ceil(LOG_SECTOR);
        let mut data = 0u64;
        for k in 0..count {
            let d = log.descriptor(p, k);
            let offset = le64(d, 16);
            if d[..4] == DATA_DESC_SIGNATURE {
                let s = log.sector(p + desc_sectors + data);
                data += 1;
                let mut sector = vec![0u8; LOG_SECTOR as usize].into_boxed_slice();
                sector[..8].copy_from_slice(&d[8..16]);
                sector[8..4092].copy_from_slice(&s[8..4092]);
                sector[4092..].copy_from_slice(&d[4..8]);
                overlay.write_sector(offset, sector);
                size = size.max(offset + LOG_SECTOR);
            } else {
                let zlen = le64(d, 8);
                overlay.zero(offset, zlen);
                size = size.max(offset + zlen);
            }
        }
        debug_assert!(desc_sectors + data <= e.sectors);
    }
    overlay.size = size;
    overlay.entries = active.len();
    Ok(overlay)
}
