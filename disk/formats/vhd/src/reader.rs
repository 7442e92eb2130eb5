//! [`VhdSource`]: a fixed or dynamic VHD image as a [`BlockSource`].

use std::fmt;

use blocksource::{check_range, coalesce, BlockSource, Extent, ExtentKind, IoHints, ReadRequest, SourceError};

use crate::footer::{corrupt, DiskType, DynHeader, Footer, DYN_HEADER_LEN, FOOTER_LEN};

/// Most blocks a dynamic disk's BAT may have: 16 MiB of decoded BAT. A VHD holds at most
/// 2040 GiB (its BAT stores 32-bit sector numbers), which is 1 044 480 blocks of the usual
/// 2 MiB, or 4 177 920 of 512 KiB.
pub const MAX_BAT_ENTRIES: u64 = 1 << 22;

/// BAT entry of a block that is not allocated.
const UNALLOCATED: u32 = u32::MAX;

/// How the guest disk is laid out in the file.
enum Layout {
    /// Guest byte `o` is file byte `o`.
    Fixed,
    /// Blocks through a BAT.
    Dynamic {
        block_size: u64,
        /// Bytes of each block's sector bitmap, which precedes its data.
        bitmap_bytes: u64,
        /// One entry per block covering the disk: the block's first file sector, or
        /// [`UNALLOCATED`]. Every allocated block, bitmap and data, was checked to lie inside
        /// the file.
        bat: Vec<u32>,
    },
}

/// A VHD image over raw container bytes, as a guest-visible disk.
pub struct VhdSource {
    container: Box<dyn BlockSource>,
    /// describe() of the container, cached for error messages.
    what: String,
    size: u64,
    layout: Layout,
    creator: [u8; 4],
}

impl fmt::Debug for VhdSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VhdSource")
            .field("what", &self.what)
            .field("size", &self.size)
            .field("fixed", &self.is_fixed())
            .field("block_size", &self.block_size())
            .field("creator", &self.creator_app())
            .finish()
    }
}

/// Where one piece of a guest read comes from.
#[derive(Debug, Clone, Copy)]
enum SegKind {
    Zero,
    Host(u64),
}

impl VhdSource {
    /// Open the VHD whose raw bytes `container` holds. Validates the footer (the copy at the
    /// start if it is intact, else the one at the end) and, for a dynamic disk, its header, and
    /// loads the whole BAT. Differencing disks are refused.
    pub fn open(container: Box<dyn BlockSource>) -> Result<VhdSource, SourceError> {
        let what = container.describe();
        let file_size = container.size();
        if file_size < FOOTER_LEN {
            return Err(corrupt(
                &what,
                0,
                format!("file is {file_size} bytes, shorter than a VHD footer ({FOOTER_LEN} bytes): image truncated"),
            ));
        }
        let footer = Self::find_footer(&*container, &what, file_size)?;
        let size = footer.current_size;
        let layout = match footer.disk_type {
            DiskType::Fixed => {
                if size > file_size - FOOTER_LEN {
                    return Err(corrupt(
                        &what,
                        file_size - FOOTER_LEN + 48,
                        format!(
                            "fixed disk of {size} bytes does not fit in front of the footer of the {file_size}-byte file: image truncated"
                        ),
                    ));
                }
                Layout::Fixed
            }
            DiskType::Dynamic | DiskType::Differencing => {
                let hdr_at = footer.data_offset;
                if hdr_at.checked_add(DYN_HEADER_LEN).is_none_or(|end| end > file_size) {
                    return Err(corrupt(
                        &what,
                        16,
                        format!(
                            "dynamic disk header offset {hdr_at} is past the end of the {file_size}-byte file: image truncated or footer corrupt"
                        ),
                    ));
                }
                let mut raw = vec![0u8; DYN_HEADER_LEN as usize];
                container.read_at(hdr_at, &mut raw)?;
                let hdr = DynHeader::parse(&raw, &what, hdr_at)?;
                if footer.disk_type == DiskType::Differencing {
                    return Err(SourceError::Unsupported {
                        what: what.clone(),
                        detail: format!(
                            "differencing VHD (a child of {:?}); merge it into its parent first (Hyper-V Manager: Edit Disk > Merge, or PowerShell `Merge-VHD`) and back up the merged disk",
                            hdr.parent_name
                        ),
                    });
                }
                Self::load_bat(&*container, &what, file_size, size, hdr_at, &hdr)?
            }
        };
        Ok(VhdSource { container, what, size, layout, creator: footer.creator })
    }

    /// The footer to trust: for a fixed disk the one in the last sector; otherwise the copy in
    /// the first sector, or the last sector's when the copy is damaged.
    fn find_footer(container: &dyn BlockSource, what: &str, file_size: u64) -> Result<Footer, SourceError> {
        let tail_at = file_size - FOOTER_LEN;
        let mut tail = vec![0u8; FOOTER_LEN as usize];
        container.read_at(tail_at, &mut tail)?;
        let mut head = vec![0u8; FOOTER_LEN as usize];
        container.read_at(0, &mut head)?;
        let tail = crate::is_vhd(&tail).then(|| Footer::parse(&tail, what, tail_at));
        let head = crate::is_vhd(&head).then(|| Footer::parse(&head, what, 0));
        match (head, tail) {
            // The footer at the end of a fixed disk; the guest's first sector is data.
            (_, Some(Ok(t))) if t.disk_type == DiskType::Fixed => Ok(t),
            (Some(Ok(h)), _) if h.disk_type != DiskType::Fixed => Ok(h),
            (Some(Ok(_)), _) => Err(corrupt(
                what,
                60,
                "the footer at the start says fixed disk, but a fixed disk keeps its footer at the end and the end has none: image truncated",
            )),
            (Some(Err(_)), Some(Ok(t))) | (None, Some(Ok(t))) => Ok(t),
            (Some(Err(e)), _) | (None, Some(Err(e))) => Err(e),
            (None, None) => Err(corrupt(
                what,
                tail_at,
                "no VHD footer (cookie \"conectix\") at the start or the end of the file: not a VHD image",
            )),
        }
    }

    /// Load and check the BAT of a dynamic disk of `size` bytes.
    fn load_bat(
        container: &dyn BlockSource,
        what: &str,
        file_size: u64,
        size: u64,
        hdr_at: u64,
        hdr: &DynHeader,
    ) -> Result<Layout, SourceError> {
        let block_size = hdr.block_size;
        // One bit per sector, padded to whole sectors.
        let bitmap_bytes = (block_size / 512).div_ceil(8).div_ceil(512) * 512;
        let blocks = size.div_ceil(block_size);
        if blocks > MAX_BAT_ENTRIES {
            return Err(corrupt(
                what,
                hdr_at + 28,
                format!(
                    "a {size}-byte disk in {block_size}-byte blocks needs {blocks} BAT entries, over the limit of {MAX_BAT_ENTRIES} (a VHD holds at most 2040 GiB): the size or block size is absurd"
                ),
            ));
        }
        if blocks > hdr.max_table_entries {
            return Err(corrupt(
                what,
                hdr_at + 28,
                format!(
                    "the BAT has {} entries of {block_size} bytes, which cover less than the {size}-byte disk ({blocks} needed)",
                    hdr.max_table_entries
                ),
            ));
        }
        let table = hdr.table_offset;
        let table_bytes = blocks * 4;
        if table.checked_add(table_bytes).is_none_or(|end| end > file_size) {
            return Err(corrupt(
                what,
                hdr_at + 16,
                format!(
                    "BAT at byte {table} ({table_bytes} bytes) extends past the end of the {file_size}-byte file: image truncated or offset corrupt"
                ),
            ));
        }
        let mut raw = vec![0u8; table_bytes as usize];
        if !raw.is_empty() {
            container.read_at(table, &mut raw)?;
        }
        let block_span = bitmap_bytes + block_size;
        let mut bat = Vec::with_capacity(blocks as usize);
        for (i, e) in raw.chunks_exact(4).enumerate() {
            let entry = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
            if entry != UNALLOCATED {
                let start = u64::from(entry) * 512;
                if start.checked_add(block_span).is_none_or(|end| end > file_size) {
                    return Err(corrupt(
                        what,
                        table + i as u64 * 4,
                        format!(
                            "BAT entry {i} puts block {i} ({block_span} bytes with its bitmap) at byte {start}, past the end of the {file_size}-byte file: image truncated"
                        ),
                    ));
                }
            }
            bat.push(entry);
        }
        Ok(Layout::Dynamic { block_size, bitmap_bytes, bat })
    }

    /// Whether this is a fixed disk (else dynamic).
    pub fn is_fixed(&self) -> bool {
        matches!(self.layout, Layout::Fixed)
    }

    /// Block size of a dynamic disk.
    pub fn block_size(&self) -> Option<u64> {
        match &self.layout {
            Layout::Fixed => None,
            Layout::Dynamic { block_size, .. } => Some(*block_size),
        }
    }

    /// The footer's creator application ("win ", "qemu", "vpc ", ...), for diagnostics.
    pub fn creator_app(&self) -> String {
        String::from_utf8_lossy(&self.creator).into_owned()
    }

    /// File offset of guest byte `pos` of an allocated block, or `None` when its block is not
    /// allocated. `pos < size`.
    fn host_offset(&self, pos: u64) -> Option<u64> {
        match &self.layout {
            Layout::Fixed => Some(pos),
            Layout::Dynamic { block_size, bitmap_bytes, bat } => {
                let entry = *bat.get((pos / block_size) as usize)?;
                (entry != UNALLOCATED).then(|| u64::from(entry) * 512 + bitmap_bytes + pos % block_size)
            }
        }
    }
}

impl BlockSource for VhdSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn describe(&self) -> String {
        self.what.clone()
    }

    fn format(&self) -> &'static str {
        "vhd"
    }

    fn io_hints(&self) -> IoHints {
        self.container.io_hints()
    }

    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>, SourceError> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let Layout::Dynamic { block_size, bat, .. } = &self.layout else {
            // A fixed disk is its container's first `size` bytes: its holes are the disk's.
            let mut out = Vec::new();
            for e in self.container.allocation(offset, end - offset)? {
                let s = e.offset.max(offset);
                let t = e.end().min(end);
                if s < t {
                    out.push(Extent { offset: s, len: t - s, kind: e.kind });
                }
            }
            return Ok(coalesce(out));
        };
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let next = ((pos / block_size) + 1).saturating_mul(*block_size).min(end);
            let kind = match bat.get((pos / block_size) as usize) {
                Some(&e) if e != UNALLOCATED => ExtentKind::Data,
                _ => ExtentKind::Zero,
            };
            out.push(Extent { offset: pos, len: next - pos, kind });
            pos = next;
        }
        Ok(coalesce(out))
    }

    fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), SourceError> {
        for r in reqs.iter() {
            check_range(&|| self.what.clone(), r.offset, r.buf.len() as u64, self.size)?;
        }
        let Layout::Dynamic { block_size, .. } = &self.layout else {
            // Guest bytes are file bytes; every request was checked to end before the footer.
            return self.container.read_many(reqs);
        };
        let block_size = *block_size;

        // Split the requests at block boundaries into zeros and file reads, merging pieces that
        // are contiguous in the file.
        let mut segs: Vec<(usize, usize, SegKind)> = Vec::new();
        for (ri, r) in reqs.iter().enumerate() {
            let end = r.offset + r.buf.len() as u64;
            let mut pos = r.offset;
            while pos < end {
                let n = (block_size - pos % block_size).min(end - pos);
                let kind = self.host_offset(pos).map_or(SegKind::Zero, SegKind::Host);
                match (segs.last_mut(), kind) {
                    (Some((req, len, SegKind::Zero)), SegKind::Zero) if *req == ri => *len += n as usize,
                    (Some((req, len, SegKind::Host(a))), SegKind::Host(b)) if *req == ri && *a + *len as u64 == b => {
                        *len += n as usize
                    }
                    _ => segs.push((ri, n as usize, kind)),
                }
                pos += n;
            }
        }

        let mut host_reqs: Vec<ReadRequest<'_>> = Vec::new();
        let mut segs = segs.into_iter().peekable();
        for (ri, r) in reqs.iter_mut().enumerate() {
            let mut rest: &mut [u8] = &mut *r.buf;
            while let Some((_, len, kind)) = segs.next_if(|s| s.0 == ri) {
                let (piece, tail) = std::mem::take(&mut rest).split_at_mut(len);
                rest = tail;
                match kind {
                    SegKind::Zero => piece.fill(0),
                    SegKind::Host(offset) => host_reqs.push(ReadRequest { offset, buf: piece }),
                }
            }
        }
        if host_reqs.is_empty() {
            return Ok(());
        }
        self.container.read_many(&mut host_reqs)
    }
}
