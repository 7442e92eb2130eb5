//! [`VhdxSource`]: a VHDX image (and its parent chain) as a [`BlockSource`].

use std::fmt;

use blocksource::{
    check_range, coalesce, BackingOpener, BlockSource, Extent, ExtentKind, IoHints, ReadRequest, SourceError,
};

use crate::bat::{self, Bat, PAYLOAD_FULLY_PRESENT, PAYLOAD_NOT_PRESENT, PAYLOAD_PARTIALLY_PRESENT};
use crate::format::*;
use crate::header::{self, Header, Metadata};
use crate::host::Host;
use crate::log;

/// Most images one differencing chain may have, the top image included.
pub const MAX_CHAIN_LEN: usize = 64;

/// How many payload blocks [`BlockSource::allocation`] handles per batch of sector bitmap
/// reads, so a whole-disk map of a differencing image does not hold every bitmap at once.
const ALLOCATION_BLOCK_BATCH: u64 = 64;

/// Where the bytes of one payload block come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockMap {
    /// Reads as zeros.
    Zero,
    /// Not in this file: read the parent (differencing images only).
    Parent,
    /// Entirely in this file at this offset.
    Data(u64),
    /// Per sector: in this file at this offset when the sector bitmap bit is set, else in the
    /// parent. `bitmap` is the file offset of the block's first bitmap byte.
    Partial { data: u64, bitmap: u64 },
}

/// Where one piece of a guest read comes from.
#[derive(Debug, Clone, Copy)]
enum SegKind {
    Zero,
    Host(u64),
    Parent(u64),
}

#[derive(Debug, Clone, Copy)]
struct Seg {
    req: usize,
    len: usize,
    kind: SegKind,
}

fn push_seg(segs: &mut Vec<Seg>, req: usize, len: usize, kind: SegKind) {
    if let Some(last) = segs.last_mut() {
        if last.req == req {
            let merged = match (last.kind, kind) {
                (SegKind::Zero, SegKind::Zero) => true,
                (SegKind::Host(a), SegKind::Host(b)) | (SegKind::Parent(a), SegKind::Parent(b)) => {
                    a + last.len as u64 == b
                }
                _ => false,
            };
            if merged {
                last.len += len;
                return;
            }
        }
    }
    segs.push(Seg { req, len, kind });
}

/// Chain bookkeeping while opening.
struct Chain {
    /// describe() of the top image, then the identity of each parent, for messages.
    names: Vec<String>,
    identities: Vec<String>,
}

/// A VHDX image over raw container bytes, with its parent chain, as a guest-visible disk.
pub struct VhdxSource {
    host: Host,
    /// describe() of the container, cached for error messages.
    what: String,
    size: u64,
    block_size: u64,
    logical_sector: u64,
    physical_sector: u32,
    chunk_ratio: u64,
    leave_block_allocated: bool,
    disk_id: Option<Guid>,
    data_write_guid: Guid,
    bat: Bat,
    parent_name: Option<String>,
    parent: Option<Box<dyn BlockSource>>,
}

impl fmt::Debug for VhdxSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VhdxSource")
            .field("what", &self.what)
            .field("size", &self.size)
            .field("block_size", &self.block_size)
            .field("logical_sector", &self.logical_sector)
            .field("replayed_log_entries", &self.replayed_log_entries())
            .field("parent_name", &self.parent_name)
            .field("parent", &self.parent)
            .finish()
    }
}

impl VhdxSource {
    /// Open the VHDX image whose raw bytes `container` holds, and for a differencing image its
    /// parent chain through `opener`. Validates the headers, replays a pending log in memory,
    /// reads the metadata and loads the whole BAT.
    pub fn open(container: Box<dyn BlockSource>, opener: &dyn BackingOpener) -> Result<VhdxSource, SourceError> {
        let mut chain = Chain { names: vec![container.describe()], identities: Vec::new() };
        Self::open_layer(container, opener, &mut chain)
    }

    fn open_layer(
        container: Box<dyn BlockSource>,
        opener: &dyn BackingOpener,
        chain: &mut Chain,
    ) -> Result<VhdxSource, SourceError> {
        let what = container.describe();
        let hdr: Header = header::read_header(&*container, &what)?;
        let overlay = log::replay(&*container, &what, &hdr)?;
        let mut host = Host::new(container);
        if overlay.entries > 0 {
            host.set_overlay(overlay);
        }
        let (bat_region, meta_region) = header::read_regions(&host, &what, &hdr)?;
        let meta: Metadata = header::read_metadata(&host, &what, meta_region)?;
        let avoid = [
            ("metadata region", meta_region.offset, meta_region.length),
            ("log", hdr.log_offset, u64::from(hdr.log_length)),
        ];
        let bat = bat::load(&host, &what, &meta, bat_region, &avoid)?;
        let (_, chunk_ratio) = bat::geometry(&meta);

        let (parent_name, parent) = if meta.has_parent {
            let (name, parent) = Self::open_parent(&meta, &what, opener, chain)?;
            (Some(name), Some(parent))
        } else {
            (None, None)
        };
        Ok(VhdxSource {
            host,
            what,
            size: meta.size,
            block_size: meta.block_size,
            logical_sector: u64::from(meta.logical_sector),
            physical_sector: meta.physical_sector,
            chunk_ratio,
            leave_block_allocated: meta.leave_block_allocated,
            disk_id: meta.disk_id,
            data_write_guid: hdr.data_write_guid,
            bat,
            parent_name,
            parent,
        })
    }

    /// Find and open the parent named by the parent locator: `relative_path` first, then the
    /// file names of `volume_path` and `absolute_win32_path` next to the child (Windows paths
    /// mean nothing here, but a chain copied into one directory keeps its file names). The
    /// parent's DataWriteGuid must match `parent_linkage` (or `parent_linkage2`), which proves
    /// it is the very parent the child was made from, unmodified since.
    fn open_parent(
        meta: &Metadata,
        child: &str,
        opener: &dyn BackingOpener,
        chain: &mut Chain,
    ) -> Result<(String, Box<dyn BlockSource>), SourceError> {
        let get = |k: &str| meta.parent_locator.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        let linkage = get("parent_linkage").ok_or_else(|| {
            corrupt(child, 0, "the parent locator has no parent_linkage entry, so the parent cannot be verified")
        })?;
        let linkage = Guid::parse(linkage).ok_or_else(|| {
            corrupt(child, 0, format!("the parent locator's parent_linkage {linkage:?} is not a GUID"))
        })?;
        let linkage2 = get("parent_linkage2").and_then(Guid::parse);

        let mut candidates: Vec<String> = Vec::new();
        if let Some(rel) = get("relative_path") {
            candidates.push(rel.replace('\\', "/"));
        }
        for key in ["volume_path", "absolute_win32_path"] {
            if let Some(p) = get(key) {
                if let Some(base) = p.rsplit(['\\', '/']).next().filter(|b| !b.is_empty()) {
                    candidates.push(base.to_string());
                }
            }
        }
        candidates.dedup();
        if candidates.is_empty() {
            return Err(corrupt(
                child,
                0,
                "differencing image whose parent locator has no relative_path, volume_path or absolute_win32_path",
            ));
        }
        if chain.names.len() >= MAX_CHAIN_LEN {
            return Err(unsupported(
                &chain.names[0],
                format!(
                    "differencing chain is longer than {MAX_CHAIN_LEN} images ({child} names yet another parent {:?}); merge it first",
                    candidates[0]
                ),
            ));
        }
        let mut first_err = None;
        let mut opened = None;
        for name in &candidates {
            match opener.open_backing(name, child) {
                Ok(x) => {
                    opened = Some((name.clone(), x));
                    break;
                }
                Err(e @ (SourceError::NotFound { .. } | SourceError::Io { .. })) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        let Some((name, (container, identity))) = opened else {
            return Err(first_err.unwrap_or_else(|| unsupported(child, "no usable parent path")));
        };
        if chain.identities.contains(&identity) || chain.names[0] == identity {
            chain.names.push(identity.clone());
            return Err(corrupt(
                child,
                0,
                format!("parent loop: {identity} appears twice in the chain {}", chain.names.join(" -> ")),
            ));
        }
        chain.identities.push(identity.clone());
        chain.names.push(identity);
        let parent = Self::open_layer(container, opener, chain)?;
        if parent.data_write_guid != linkage && Some(parent.data_write_guid) != linkage2 {
            return Err(corrupt(
                child,
                0,
                format!(
                    "parent {} has DataWriteGuid {} but the child was made from parent data {linkage}: the parent was modified or is the wrong file; reading the chain would mix disks, so find the right parent",
                    parent.what, parent.data_write_guid
                ),
            ));
        }
        if parent.logical_sector != meta.logical_sector as u64 {
            return Err(corrupt(
                child,
                0,
                format!(
                    "parent {} has {}-byte logical sectors but the child {}-byte ones",
                    parent.what, parent.logical_sector, meta.logical_sector
                ),
            ));
        }
        Ok((name, Box::new(parent)))
    }

    /// Payload block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// The guest's logical sector size (512 or 4096).
    pub fn logical_sector_size(&self) -> u32 {
        self.logical_sector as u32
    }

    /// The guest's physical sector size (512 or 4096).
    pub fn physical_sector_size(&self) -> u32 {
        self.physical_sector
    }

    /// Whether this is a differencing image (it has a parent).
    pub fn is_differencing(&self) -> bool {
        self.parent.is_some()
    }

    /// The LeaveBlockAllocated flag (set in fixed images).
    pub fn leave_block_allocated(&self) -> bool {
        self.leave_block_allocated
    }

    /// The parent file name this image's locator resolved to, if differencing.
    pub fn parent_name(&self) -> Option<&str> {
        self.parent_name.as_deref()
    }

    /// The virtual disk id (Page 83 data), if the image records one.
    pub fn disk_id(&self) -> Option<String> {
        self.disk_id.map(|g| g.to_string())
    }

    /// How many log entries were replayed in memory at open (0 for a clean image).
    pub fn replayed_log_entries(&self) -> usize {
        self.host.overlay().map_or(0, |o| o.entries)
    }

    fn corrupt(&self, offset: u64, detail: impl Into<String>) -> SourceError {
        corrupt(&self.what, offset, detail)
    }

    /// The mapping of payload block `b`.
    fn block_map(&self, b: u64) -> BlockMap {
        let (state, off) = self.bat.payload(b);
        match state {
            PAYLOAD_FULLY_PRESENT => BlockMap::Data(off),
            PAYLOAD_PARTIALLY_PRESENT => {
                let chunk = b / self.chunk_ratio;
                let within = b % self.chunk_ratio;
                // bat::load checked the chunk's bitmap is present; a missing one here would
                // be a bug, and reading the parent is the conservative answer.
                match self.bat.bitmap(chunk) {
                    Some(sb) => BlockMap::Partial {
                        data: off,
                        bitmap: sb + within * (self.block_size / self.logical_sector) / 8,
                    },
                    None => BlockMap::Parent,
                }
            }
            PAYLOAD_NOT_PRESENT if self.parent.is_some() => BlockMap::Parent,
            // NOT_PRESENT without a parent, UNDEFINED, ZERO and UNMAPPED: the spec lets a
            // reader return zeros for all of them, and zeros are what QEMU returns.
            _ => BlockMap::Zero,
        }
    }

    /// The sector bitmap bytes covering block-relative bytes `[start, end)` of a partial block:
    /// file offset and length.
    fn bitmap_span(&self, bitmap: u64, start: u64, end: u64) -> (u64, usize) {
        let s0 = start / self.logical_sector;
        let s1 = end.div_ceil(self.logical_sector);
        (bitmap + s0 / 8, (s1.div_ceil(8) - s0 / 8) as usize)
    }

    /// Split block-relative bytes `[start, end)` of a partial block into runs present in this
    /// file (`true`) or not, using `bits` (the bitmap bytes from `bitmap_span`).
    fn partial_runs(&self, start: u64, end: u64, bits: &[u8], mut f: impl FnMut(u64, u64, bool)) {
        let ss = self.logical_sector;
        let base = start / ss / 8 * 8; // sector number of bits[0] bit 0
        let mut pos = start;
        while pos < end {
            let sector = pos / ss;
            let i = (sector - base) as usize;
            let present = bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0);
            // Extend over following sectors with the same bit.
            let mut next = (sector + 1) * ss;
            while next < end {
                let j = (next / ss - base) as usize;
                let p = bits.get(j / 8).is_some_and(|b| b & (1 << (j % 8)) != 0);
                if p != present {
                    break;
                }
                next += ss;
            }
            let run_end = next.min(end);
            f(pos, run_end, present);
            pos = run_end;
        }
    }

    /// Read the given (file offset, length) bitmap spans with one request batch.
    fn read_bitmaps(&self, spans: &[(u64, usize)]) -> Result<Vec<Vec<u8>>, SourceError> {
        let mut bufs: Vec<Vec<u8>> = spans.iter().map(|&(_, l)| vec![0u8; l]).collect();
        if !spans.is_empty() {
            let mut reqs: Vec<ReadRequest<'_>> =
                spans.iter().zip(bufs.iter_mut()).map(|(&(offset, _), buf)| ReadRequest { offset, buf }).collect();
            self.host.read_many(&mut reqs)?;
        }
        Ok(bufs)
    }

    /// Split every request into zero, host and parent segments, merging neighbours that one
    /// read can serve. Sector bitmaps of partially present blocks are read first, in one batch.
    fn plan(&self, reqs: &[ReadRequest<'_>]) -> Result<Vec<Seg>, SourceError> {
        let bs = self.block_size;
        let mut spans = Vec::new();
        for r in reqs {
            let end = r.offset + r.buf.len() as u64;
            let mut pos = r.offset;
            while pos < end {
                let b = pos / bs;
                let n = (bs - pos % bs).min(end - pos);
                if let BlockMap::Partial { bitmap, .. } = self.block_map(b) {
                    spans.push(self.bitmap_span(bitmap, pos % bs, pos % bs + n));
                }
                pos += n;
            }
        }
        let bitmaps = self.read_bitmaps(&spans)?;
        let mut bitmaps = bitmaps.iter();

        let mut segs: Vec<Seg> = Vec::new();
        for (ri, r) in reqs.iter().enumerate() {
            let end = r.offset + r.buf.len() as u64;
            let mut pos = r.offset;
            while pos < end {
                let b = pos / bs;
                let within = pos % bs;
                let n = (bs - within).min(end - pos);
                match self.block_map(b) {
                    BlockMap::Zero => push_seg(&mut segs, ri, n as usize, SegKind::Zero),
                    BlockMap::Parent => push_seg(&mut segs, ri, n as usize, SegKind::Parent(pos)),
                    BlockMap::Data(host) => push_seg(&mut segs, ri, n as usize, SegKind::Host(host + within)),
                    BlockMap::Partial { data, .. } => {
                        let bits =
                            bitmaps.next().ok_or_else(|| self.corrupt(0, "internal error: sector bitmap not read"))?;
                        let block_start = b * bs;
                        self.partial_runs(within, within + n, bits, |s, e, present| {
                            let kind = if present { SegKind::Host(data + s) } else { SegKind::Parent(block_start + s) };
                            push_seg(&mut segs, ri, (e - s) as usize, kind);
                        });
                    }
                }
                pos += n;
            }
        }
        Ok(segs)
    }

    /// Allocation of `[start, end)` in the parent, clipped to it, zeros past its end.
    fn parent_allocation(&self, start: u64, end: u64, out: &mut Vec<Extent>) -> Result<(), SourceError> {
        let Some(parent) = &self.parent else {
            out.push(Extent { offset: start, len: end - start, kind: ExtentKind::Zero });
            return Ok(());
        };
        let pend = parent.size().min(end);
        if start < pend {
            for e in parent.allocation(start, pend - start)? {
                // Clip defensively: a misbehaving parent must not make our map overlap.
                let s = e.offset.max(start);
                let t = e.end().min(pend);
                if s < t {
                    out.push(Extent { offset: s, len: t - s, kind: e.kind });
                }
            }
        }
        let zs = start.max(pend);
        if zs < end {
            out.push(Extent { offset: zs, len: end - zs, kind: ExtentKind::Zero });
        }
        Ok(())
    }
}

impl BlockSource for VhdxSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn describe(&self) -> String {
        self.what.clone()
    }

    fn format(&self) -> &'static str {
        "vhdx"
    }

    fn io_hints(&self) -> IoHints {
        let h = self.host.container.io_hints();
        let alignment = h.alignment.max(self.logical_sector as u32);
        IoHints { alignment, queue_depth: h.queue_depth, max_request: h.max_request.max(alignment) }
    }

    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>, SourceError> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        #[derive(Clone, Copy, PartialEq)]
        enum Run {
            Data,
            Zero,
            Parent,
        }
        let mut runs: Vec<(u64, u64, Run)> = Vec::new();
        let mut push = |start: u64, stop: u64, kind: Run| match runs.last_mut() {
            Some(last) if last.2 == kind && last.1 == start => last.1 = stop,
            _ => runs.push((start, stop, kind)),
        };
        let bs = self.block_size;
        let first = offset / bs;
        let last = (end - 1) / bs;
        let mut batch = first;
        while batch <= last {
            let batch_end = (batch + ALLOCATION_BLOCK_BATCH - 1).min(last);
            let range = |b: u64| (offset.max(b * bs), end.min((b + 1) * bs));
            let mut spans = Vec::new();
            for b in batch..=batch_end {
                if let BlockMap::Partial { bitmap, .. } = self.block_map(b) {
                    let (s, e) = range(b);
                    spans.push(self.bitmap_span(bitmap, s - b * bs, e - b * bs));
                }
            }
            let bitmaps = self.read_bitmaps(&spans)?;
            let mut bitmaps = bitmaps.iter();
            for b in batch..=batch_end {
                let (s, e) = range(b);
                match self.block_map(b) {
                    BlockMap::Zero => push(s, e, Run::Zero),
                    BlockMap::Parent => push(s, e, Run::Parent),
                    BlockMap::Data(_) => push(s, e, Run::Data),
                    BlockMap::Partial { .. } => {
                        let bits =
                            bitmaps.next().ok_or_else(|| self.corrupt(0, "internal error: sector bitmap not read"))?;
                        let base = b * bs;
                        self.partial_runs(s - base, e - base, bits, |rs, re, present| {
                            push(base + rs, base + re, if present { Run::Data } else { Run::Parent })
                        });
                    }
                }
            }
            batch = batch_end + 1;
        }
        let mut out = Vec::with_capacity(runs.len());
        for (s, e, kind) in runs {
            match kind {
                Run::Data => out.push(Extent { offset: s, len: e - s, kind: ExtentKind::Data }),
                Run::Zero => out.push(Extent { offset: s, len: e - s, kind: ExtentKind::Zero }),
                Run::Parent => self.parent_allocation(s, e, &mut out)?,
            }
        }
        Ok(coalesce(out))
    }

    fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), SourceError> {
        for r in reqs.iter() {
            check_range(&|| self.what.clone(), r.offset, r.buf.len() as u64, self.size)?;
        }
        let segs = self.plan(reqs)?;
        let mut host_reqs: Vec<ReadRequest<'_>> = Vec::new();
        let mut parent_reqs: Vec<ReadRequest<'_>> = Vec::new();
        let parent_size = self.parent.as_ref().map_or(0, |p| p.size());
        // Hand out disjoint pieces of each request's buffer, in segment order.
        let mut segs = segs.into_iter().peekable();
        for (ri, r) in reqs.iter_mut().enumerate() {
            let mut rest: &mut [u8] = &mut *r.buf;
            while let Some(seg) = segs.next_if(|s| s.req == ri) {
                let (piece, tail) = std::mem::take(&mut rest).split_at_mut(seg.len);
                rest = tail;
                match seg.kind {
                    SegKind::Zero => piece.fill(0),
                    SegKind::Host(offset) => host_reqs.push(ReadRequest { offset, buf: piece }),
                    SegKind::Parent(guest) => {
                        // Past the end of a smaller parent the disk reads as zeros.
                        let inside = parent_size.saturating_sub(guest).min(piece.len() as u64) as usize;
                        let (head, zeros) = piece.split_at_mut(inside);
                        zeros.fill(0);
                        if !head.is_empty() {
                            parent_reqs.push(ReadRequest { offset: guest, buf: head });
                        }
                    }
                }
            }
        }
        if !host_reqs.is_empty() {
            self.host.read_many(&mut host_reqs)?;
        }
        if let Some(parent) = &self.parent {
            if !parent_reqs.is_empty() {
                parent.read_many(&mut parent_reqs)?;
            }
        }
        Ok(())
    }
}
