//! Parsing and validation of the header section (file type identifier, the two headers, the
//! region table), the metadata region and the parent locator. Runs once per image at open
//! time; after it, the reader only trusts values this module checked against the file size.

use blocksource::{BlockSource, SourceError};

use crate::format::*;
use crate::host::Host;

/// The current header (the valid one with the higher sequence number).
#[derive(Debug, Clone)]
pub(crate) struct Header {
    /// File offset of the header that was chosen, for messages.
    pub at: u64,
    pub sequence: u64,
    pub data_write_guid: Guid,
    pub log_guid: Guid,
    pub log_length: u32,
    pub log_offset: u64,
}

impl Header {
    /// Whether the log holds updates that must be replayed before the file is read.
    pub(crate) fn log_pending(&self) -> bool {
        !self.log_guid.is_zero() && self.log_length > 0
    }
}

/// A region of the file: `[offset, offset + length)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Region {
    pub offset: u64,
    pub length: u64,
}

/// The known metadata items, validated.
#[derive(Debug, Clone)]
pub(crate) struct Metadata {
    pub block_size: u64,
    pub leave_block_allocated: bool,
    pub has_parent: bool,
    pub size: u64,
    pub logical_sector: u32,
    pub physical_sector: u32,
    pub disk_id: Option<Guid>,
    /// Key/value pairs of a VHDX parent locator (only read when `has_parent`).
    pub parent_locator: Vec<(String, String)>,
}

/// Read the file type identifier and both headers; return the current header.
pub(crate) fn read_header(container: &dyn BlockSource, what: &str) -> Result<Header, SourceError> {
    let file_size = container.size();
    let mut sig = [0u8; 8];
    let n = file_size.min(8) as usize;
    container.read_at(0, &mut sig[..n])?;
    if !crate::is_vhdx(&sig[..n]) {
        return Err(corrupt(what, 0, "no VHDX file type identifier (\"vhdxfile\") at the start: not a VHDX image"));
    }
    let needed = REGION_TABLE_OFFSETS[1] + REGION_TABLE_SIZE as u64;
    if file_size < needed {
        return Err(corrupt(
            what,
            0,
            format!("file is truncated: {file_size} bytes, but the VHDX header section alone takes {needed} bytes"),
        ));
    }
    let mut reasons = Vec::new();
    let mut best: Option<Header> = None;
    for at in HEADER_OFFSETS {
        let mut b = vec![0u8; HEADER_SIZE];
        container.read_at(at, &mut b)?;
        if b[..4] != HEADER_SIGNATURE {
            reasons.push(format!("header at {at}: no \"head\" signature"));
            continue;
        }
        if !checksum_ok(&b, 4) {
            reasons.push(format!("header at {at}: CRC-32C checksum mismatch"));
            continue;
        }
        let h = Header {
            at,
            sequence: le64(&b, 8),
            data_write_guid: Guid::read(&b, 32),
            log_guid: Guid::read(&b, 48),
            log_length: le32(&b, 68),
            log_offset: le64(&b, 72),
        };
        let version = le16(&b, 66);
        if version != 1 {
            return Err(unsupported(
                what,
                format!("header at {at} says VHDX format version {version}; only version 1 is supported"),
            ));
        }
        let log_version = le16(&b, 64);
        if log_version != 0 && !h.log_guid.is_zero() {
            return Err(unsupported(
                what,
                format!("header at {at} has a pending log of version {log_version}; only log version 0 is supported"),
            ));
        }
        if best.as_ref().is_none_or(|cur| h.sequence > cur.sequence) {
            best = Some(h);
        }
    }
    let h = best.ok_or_else(|| {
        corrupt(what, HEADER_OFFSETS[0], format!("both headers are invalid ({})", reasons.join("; ")))
    })?;
    if h.log_length > 0 {
        let end = h.log_offset.checked_add(u64::from(h.log_length));
        if h.log_offset < HEADER_SECTION {
            return Err(corrupt(
                what,
                h.at + 72,
                format!("log offset {} lies inside the 1 MiB header section", h.log_offset),
            ));
        }
        if end.is_none_or(|e| e > file_size) && h.log_pending() {
            return Err(corrupt(
                what,
                h.at + 72,
                format!(
                    "log ({} bytes at offset {}) reaches past the end of the {file_size}-byte file",
                    h.log_length, h.log_offset
                ),
            ));
        }
    }
    Ok(h)
}

/// Read the region table (the copy at 256 KiB if the first is damaged) and return the BAT and
/// metadata regions, checked to lie inside the file and not to overlap each other or the log.
pub(crate) fn read_regions(host: &Host, what: &str, hdr: &Header) -> Result<(Region, Region), SourceError> {
    let file_size = host.size();
    let mut reasons = Vec::new();
    for at in REGION_TABLE_OFFSETS {
        let mut t = vec![0u8; REGION_TABLE_SIZE];
        host.read_at(at, &mut t)?;
        if t[..4] != REGION_SIGNATURE {
            reasons.push(format!("region table at {at}: no \"regi\" signature"));
            continue;
        }
        if !checksum_ok(&t, 4) {
            reasons.push(format!("region table at {at}: CRC-32C checksum mismatch"));
            continue;
        }
        let count = u64::from(le32(&t, 8));
        if count > MAX_TABLE_ENTRIES {
            reasons.push(format!("region table at {at}: {count} entries, more than the {MAX_TABLE_ENTRIES} allowed"));
            continue;
        }
        let mut bat = None;
        let mut meta = None;
        let mut seen: Vec<Guid> = Vec::new();
        for i in 0..count as usize {
            let e = 16 + 32 * i;
            let entry_at = at + e as u64;
            let guid = Guid::read(&t, e);
            let offset = le64(&t, e + 16);
            let length = u64::from(le32(&t, e + 24));
            let required = le32(&t, e + 28) & 1 != 0;
            if seen.contains(&guid) {
                return Err(corrupt(what, entry_at, format!("region {guid} appears twice in the region table")));
            }
            seen.push(guid);
            let slot = if guid == BAT_REGION {
                &mut bat
            } else if guid == METADATA_REGION {
                &mut meta
            } else if required {
                return Err(unsupported(
                    what,
                    format!("the region table lists region {guid}, marked required, which this reader does not know"),
                ));
            } else {
                continue;
            };
            let name = if guid == BAT_REGION { "BAT" } else { "metadata" };
            if offset < HEADER_SECTION {
                return Err(corrupt(
                    what,
                    entry_at,
                    format!("{name} region offset {offset} lies inside the 1 MiB header section"),
                ));
            }
            if length == 0 {
                return Err(corrupt(what, entry_at, format!("{name} region has length 0")));
            }
            if offset.checked_add(length).is_none_or(|end| end > file_size) {
                return Err(corrupt(
                    what,
                    entry_at,
                    format!("{name} region ({length} bytes at offset {offset}) reaches past the end of the {file_size}-byte file (truncated image?)"),
                ));
            }
            *slot = Some(Region { offset, length });
        }
        let bat = bat.ok_or_else(|| corrupt(what, at, "the region table has no BAT region"))?;
        let meta = meta.ok_or_else(|| corrupt(what, at, "the region table has no metadata region"))?;
        if overlaps(bat.offset, bat.length, meta.offset, meta.length) {
            return Err(corrupt(
                what,
                at,
                format!(
                    "BAT region ({} bytes at {}) and metadata region ({} bytes at {}) overlap",
                    bat.length, bat.offset, meta.length, meta.offset
                ),
            ));
        }
        for (name, r) in [("BAT", bat), ("metadata", meta)] {
            if overlaps(r.offset, r.length, hdr.log_offset, u64::from(hdr.log_length)) {
                return Err(corrupt(
                    what,
                    at,
                    format!(
                        "{name} region ({} bytes at {}) overlaps the log ({} bytes at {})",
                        r.length, r.offset, hdr.log_length, hdr.log_offset
                    ),
                ));
            }
        }
        return Ok((bat, meta));
    }
    Err(corrupt(what, REGION_TABLE_OFFSETS[0], format!("both region tables are invalid ({})", reasons.join("; "))))
}

/// One entry of the metadata table.
struct Item {
    id: Guid,
    /// Offset relative to the metadata region.
    offset: u64,
    length: u64,
    /// File offset of the table entry, for messages.
    entry_at: u64,
}

/// Read and validate the metadata table and the known items.
pub(crate) fn read_metadata(host: &Host, what: &str, region: Region) -> Result<Metadata, SourceError> {
    if region.length < METADATA_TABLE_SIZE as u64 {
        return Err(corrupt(
            what,
            region.offset,
            format!("metadata region is {} bytes, smaller than its 64 KiB table", region.length),
        ));
    }
    let mut t = vec![0u8; METADATA_TABLE_SIZE];
    host.read_at(region.offset, &mut t)?;
    if t[..8] != METADATA_SIGNATURE {
        return Err(corrupt(what, region.offset, "metadata table has no \"metadata\" signature"));
    }
    let count = u64::from(le16(&t, 10));
    if count > MAX_TABLE_ENTRIES {
        return Err(corrupt(
            what,
            region.offset + 10,
            format!("metadata table has {count} entries, more than the {MAX_TABLE_ENTRIES} allowed"),
        ));
    }
    let mut items: Vec<Item> = Vec::new();
    let mut seen: Vec<(Guid, bool)> = Vec::new();
    let known =
        [FILE_PARAMETERS, VIRTUAL_DISK_SIZE, PAGE_83_DATA, LOGICAL_SECTOR_SIZE, PHYSICAL_SECTOR_SIZE, PARENT_LOCATOR];
    for i in 0..count as usize {
        let e = 32 + 32 * i;
        let entry_at = region.offset + e as u64;
        let id = Guid::read(&t, e);
        let offset = u64::from(le32(&t, e + 16));
        let length = u64::from(le32(&t, e + 20));
        let flags = le32(&t, e + 24);
        let is_user = flags & 1 != 0;
        let required = flags & 4 != 0;
        if seen.contains(&(id, is_user)) {
            return Err(corrupt(what, entry_at, format!("metadata item {id} appears twice in the metadata table")));
        }
        seen.push((id, is_user));
        if length == 0 {
            if offset != 0 {
                return Err(corrupt(what, entry_at, format!("empty metadata item {id} has non-zero offset {offset}")));
            }
        } else {
            if length > MAX_METADATA_ITEM {
                return Err(corrupt(
                    what,
                    entry_at,
                    format!("metadata item {id} is {length} bytes, more than the 1 MiB allowed"),
                ));
            }
            if offset < METADATA_TABLE_SIZE as u64 || offset + length > region.length {
                return Err(corrupt(
                    what,
                    entry_at,
                    format!(
                        "metadata item {id} ({length} bytes at offset {offset}) lies outside the {}-byte metadata region or inside its table",
                        region.length
                    ),
                ));
            }
        }
        let is_known = !is_user && known.contains(&id);
        if !is_known && required {
            return Err(unsupported(
                what,
                format!("metadata item {id} is marked required but this reader does not know it"),
            ));
        }
        if is_known {
            items.push(Item { id, offset, length, entry_at });
        }
    }
    // Items must not overlap (a hostile table could alias one item onto another).
    let mut spans: Vec<&Item> = items.iter().filter(|i| i.length > 0).collect();
    spans.sort_by_key(|i| i.offset);
    for w in spans.windows(2) {
        if w[0].offset + w[0].length > w[1].offset {
            return Err(corrupt(what, w[1].entry_at, format!("metadata items {} and {} overlap", w[0].id, w[1].id)));
        }
    }

    let read_item = |id: Guid, min_len: u64, name: &str| -> Result<Option<(Vec<u8>, u64)>, SourceError> {
        let Some(item) = items.iter().find(|i| i.id == id) else { return Ok(None) };
        if item.length < min_len {
            return Err(corrupt(
                what,
                item.entry_at,
                format!("{name} metadata item is {} bytes, expected at least {min_len}", item.length),
            ));
        }
        let at = region.offset + item.offset;
        let mut b = vec![0u8; item.length as usize];
        host.read_at(at, &mut b)?;
        Ok(Some((b, at)))
    };
    let missing = |name: &str| corrupt(what, region.offset, format!("the required {name} metadata item is missing"));

    let (fp, fp_at) = read_item(FILE_PARAMETERS, 8, "File Parameters")?.ok_or_else(|| missing("File Parameters"))?;
    let block_size = u64::from(le32(&fp, 0));
    let fp_flags = le32(&fp, 4);
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(corrupt(
            what,
            fp_at,
            format!("block size {block_size} is not a power of two between 1 MiB and 256 MiB"),
        ));
    }
    let (ls, ls_at) =
        read_item(LOGICAL_SECTOR_SIZE, 4, "Logical Sector Size")?.ok_or_else(|| missing("Logical Sector Size"))?;
    let logical_sector = le32(&ls, 0);
    if logical_sector != 512 && logical_sector != 4096 {
        return Err(corrupt(what, ls_at, format!("logical sector size {logical_sector} is neither 512 nor 4096")));
    }
    let physical_sector = match read_item(PHYSICAL_SECTOR_SIZE, 4, "Physical Sector Size")? {
        None => logical_sector,
        Some((ps, ps_at)) => {
            let v = le32(&ps, 0);
            if v != 512 && v != 4096 {
                return Err(corrupt(what, ps_at, format!("physical sector size {v} is neither 512 nor 4096")));
            }
            v
        }
    };
    let (sz, sz_at) =
        read_item(VIRTUAL_DISK_SIZE, 8, "Virtual Disk Size")?.ok_or_else(|| missing("Virtual Disk Size"))?;
    let size = le64(&sz, 0);
    if size > MAX_VIRTUAL_SIZE {
        return Err(corrupt(what, sz_at, format!("virtual disk size {size} is larger than the 64 TiB VHDX maximum")));
    }
    if !size.is_multiple_of(u64::from(logical_sector)) {
        return Err(corrupt(
            what,
            sz_at,
            format!("virtual disk size {size} is not a multiple of the {logical_sector}-byte logical sector"),
        ));
    }
    let disk_id = read_item(PAGE_83_DATA, 16, "Virtual Disk ID")?.map(|(b, _)| Guid::read(&b, 0));
    let has_parent = fp_flags & 2 != 0;
    let parent_locator = if has_parent {
        let (pl, pl_at) = read_item(PARENT_LOCATOR, 20, "Parent Locator")?.ok_or_else(|| {
            corrupt(what, fp_at, "the image is a differencing disk (HasParent) but has no Parent Locator metadata item")
        })?;
        parse_parent_locator(what, &pl, pl_at)?
    } else {
        Vec::new()
    };
    Ok(Metadata {
        block_size,
        leave_block_allocated: fp_flags & 1 != 0,
        has_parent,
        size,
        logical_sector,
        physical_sector,
        disk_id,
        parent_locator,
    })
}

/// Decode a parent locator item (at file offset `at`) into its key/value pairs.
fn parse_parent_locator(what: &str, b: &[u8], at: u64) -> Result<Vec<(String, String)>, SourceError> {
    let kind = Guid::read(b, 0);
    if kind != VHDX_PARENT_LOCATOR_TYPE {
        return Err(unsupported(
            what,
            format!("parent locator type {kind} is not a VHDX parent; only VHDX parents are supported"),
        ));
    }
    let count = usize::from(le16(b, 18));
    if 20 + 12 * count > b.len() {
        return Err(corrupt(
            what,
            at + 18,
            format!("parent locator claims {count} entries but its item is only {} bytes", b.len()),
        ));
    }
    let utf16 = |off: usize, len: usize, which: &str, i: usize| -> Result<String, SourceError> {
        if off == 0 || len == 0 || !len.is_multiple_of(2) || off.checked_add(len).is_none_or(|e| e > b.len()) {
            return Err(corrupt(
                what,
                at + 20 + 12 * i as u64,
                format!(
                    "parent locator entry {i}: {which} ({len} bytes at {off}) is empty, odd-sized or outside the item"
                ),
            ));
        }
        let units: Vec<u16> = b[off..off + len].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        String::from_utf16(&units).map_err(|_| {
            corrupt(what, at + off as u64, format!("parent locator entry {i}: {which} is not valid UTF-16"))
        })
    };
    let mut out: Vec<(String, String)> = Vec::with_capacity(count);
    for i in 0..count {
        let e = 20 + 12 * i;
        let key = utf16(le32(b, e) as usize, usize::from(le16(b, e + 8)), "key", i)?;
        let value = utf16(le32(b, e + 4) as usize, usize::from(le16(b, e + 10)), "value", i)?;
        if out.iter().any(|(k, _)| *k == key) {
            return Err(corrupt(what, at + e as u64, format!("parent locator key {key:?} appears twice")));
        }
        out.push((key, value));
    }
    Ok(out)
}
