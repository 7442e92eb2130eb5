//! [`Qcow2Source`]: a qcow2 image (and its backing chain) as a [`BlockSource`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use blocksource::{
    check_range, coalesce, BackingOpener, BlockSource, Extent, ExtentKind, IoHints, ReadRequest, SourceError,
};

use blocksource::TableCache;

/// L2 tables by (image or extent index, table offset).
type L2Cache = TableCache<u64>;
use crate::compress::Decompressor;
use crate::header::{self, corrupt, BackingRef, Compression};

/// Default budget of the L2 table cache of one backing chain.
pub const DEFAULT_L2_CACHE_BYTES: usize = 64 << 20;

/// Most images one backing chain may have, the top image included. Deeper chains are refused:
/// they are almost certainly a mistake, and each level costs a stack frame per read.
pub const MAX_CHAIN_LEN: usize = 64;

/// Offset bits of a standard L2 entry (bits 9..=55).
const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry bit 62: the cluster is compressed.
const L2E_COMPRESSED: u64 = 1 << 62;
/// L2 entry bit 0 (v3, standard clusters): the cluster reads as zeros.
const L2E_ZERO: u64 = 1;
/// L2 entry bit 63 (QCOW_OFLAG_COPIED): refcount exactly one. In an image with an external
/// data file every allocated cluster has it, which tells an allocated cluster at data file
/// offset 0 from an unallocated one.
const L2E_COPIED: u64 = 1 << 63;

/// How many L2 tables [`BlockSource::allocation`] fetches with one `read_many` while scanning.
const ALLOCATION_TABLE_BATCH: usize = 64;

/// Tunables for [`Qcow2Source::open_with`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Budget of the L2 table cache, shared by all images of the backing chain. Each table is
    /// one cluster; at least one table is always kept.
    pub l2_cache_bytes: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { l2_cache_bytes: DEFAULT_L2_CACHE_BYTES }
    }
}

/// What one guest cluster maps to, from its L2 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    /// Not in this image: read the backing image, or zeros without one.
    Unallocated,
    /// Reads as zeros (v3 zero flag), whatever the backing image holds.
    Zero,
    /// Host offset of the data cluster; validated cluster-aligned and inside the container, or
    /// the external data file when the image has one.
    Data(u64),
    /// Compressed data: host byte offset and length of the (sector-rounded) compressed bytes,
    /// offset validated inside the container, length not yet clipped to it.
    Compressed { offset: u64, len: u64 },
}

/// Where one piece of a guest read comes from.
#[derive(Debug, Clone, Copy)]
enum SegKind {
    Zero,
    Host(u64),
    /// Index into the batch's list of distinct compressed clusters, and the offset of the
    /// wanted bytes within the decompressed cluster.
    Compressed {
        idx: usize,
        skip: usize,
    },
    /// The same guest offset in the backing image.
    Backing(u64),
}

#[derive(Debug, Clone, Copy)]
struct Seg {
    req: usize,
    len: usize,
    kind: SegKind,
}

/// How a batch of guest requests is served.
struct Plan {
    /// Pieces of the requests, in request order and, within each, in offset order.
    segs: Vec<Seg>,
    /// The distinct compressed clusters the segments use: host offset and byte count
    /// (clipped to the file).
    compressed: Vec<(u64, usize)>,
}

/// Backing chain bookkeeping while opening.
struct Chain {
    /// describe() of the top image, then the identity of each backing file, for messages.
    names: Vec<String>,
    /// Identities returned by the opener, for loop detection.
    identities: Vec<String>,
}

impl Chain {
    fn render(&self) -> String {
        self.names.join(" -> ")
    }
}

/// A qcow2 image over raw container bytes, with its backing chain, as a guest-visible disk.
pub struct Qcow2Source {
    container: Box<dyn BlockSource>,
    /// describe() of the container, cached for error messages.
    what: String,
    /// This image's index in its chain: the L2 cache key prefix.
    id: u32,
    version: u32,
    cluster_bits: u32,
    size: u64,
    /// Container size at open time: every host offset we use was validated against it.
    file_size: u64,
    /// L2 table offsets, exactly the entries covering `size` (validated by `header::parse`).
    l1: Vec<u64>,
    l1_offset: u64,
    compression: Compression,
    backing_name: Option<String>,
    /// The next image of the chain: another `Qcow2Source`, or raw container bytes.
    backing: Option<Box<dyn BlockSource>>,
    /// The external data file (raw bytes), when the image keeps its clusters in one, and its
    /// name as the header records it.
    data_file: Option<Box<dyn BlockSource>>,
    data_file_name: Option<String>,
    /// Size of the file data clusters are read from (the data file, else the container) at
    /// open time: every data cluster offset we use was validated against it.
    data_size: u64,
    cache: Arc<L2Cache>,
}

impl fmt::Debug for Qcow2Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qcow2Source")
            .field("what", &self.what)
            .field("version", &self.version)
            .field("cluster_bits", &self.cluster_bits)
            .field("size", &self.size)
            .field("l1_entries", &self.l1.len())
            .field("compression", &self.compression)
            .field("backing_name", &self.backing_name)
            .field("backing", &self.backing)
            .field("data_file_name", &self.data_file_name)
            .field("cache", &self.cache)
            .finish()
    }
}

impl Qcow2Source {
    /// Open the qcow2 image whose raw bytes `container` holds, and its backing chain through
    /// `opener`. Validates the header and loads the L1 table; L2 tables are read on demand.
    pub fn open(container: Box<dyn BlockSource>, opener: &dyn BackingOpener) -> Result<Qcow2Source, SourceError> {
        Self::open_with(container, opener, &OpenOptions::default())
    }

    /// [`open`](Self::open) with explicit [`OpenOptions`].
    pub fn open_with(
        container: Box<dyn BlockSource>,
        opener: &dyn BackingOpener,
        options: &OpenOptions,
    ) -> Result<Qcow2Source, SourceError> {
        let cache = Arc::new(L2Cache::new(options.l2_cache_bytes));
        let mut chain = Chain { names: vec![container.describe()], identities: Vec::new() };
        Self::open_layer(container, opener, &cache, &mut chain)
    }

    fn open_layer(
        container: Box<dyn BlockSource>,
        opener: &dyn BackingOpener,
        cache: &Arc<L2Cache>,
        chain: &mut Chain,
    ) -> Result<Qcow2Source, SourceError> {
        let what = container.describe();
        let id = (chain.names.len() - 1) as u32;
        let p = header::parse(&*container, &what)?;
        let backing = match &p.backing {
            None => None,
            Some(b) => Some(Self::open_backing(b, &what, opener, cache, chain)?),
        };
        // The data file is opened like a backing file: resolved relative to this image and
        // confined by the opener.
        let data_file = match &p.data_file {
            None => None,
            Some(name) => {
                let (raw, _) = opener.open_backing(name, &what).map_err(|e| match e.kind() {
                    blocksource::ErrorKind::Transient => e,
                    blocksource::ErrorKind::Permanent => SourceError::Unsupported {
                        what: what.clone(),
                        detail: format!(
                            "its guest data is in the external data file {name:?}, which cannot be opened ({e}); the image itself holds only metadata: keep the data file next to it (a relative name is looked up in the image's folder), or point the image at it with `qemu-img amend -o data_file=PATH`"
                        ),
                    },
                })?;
                Some(raw)
            }
        };
        Ok(Qcow2Source {
            data_size: data_file.as_ref().map_or(container.size(), |d| d.size()),
            data_file,
            data_file_name: p.data_file,
            file_size: container.size(),
            container,
            what,
            id,
            version: p.version,
            cluster_bits: p.cluster_bits,
            size: p.size,
            l1: p.l1,
            l1_offset: p.l1_offset,
            compression: p.compression,
            backing_name: p.backing.map(|b| b.name),
            backing,
            cache: cache.clone(),
        })
    }

    fn open_backing(
        b: &BackingRef,
        child: &str,
        opener: &dyn BackingOpener,
        cache: &Arc<L2Cache>,
        chain: &mut Chain,
    ) -> Result<Box<dyn BlockSource>, SourceError> {
        if chain.names.len() >= MAX_CHAIN_LEN {
            return Err(SourceError::Unsupported {
                what: chain.names[0].clone(),
                detail: format!(
                    "backing chain is longer than {MAX_CHAIN_LEN} images ({child} names yet another backing file {:?}); flatten it with `qemu-img convert` first",
                    b.name
                ),
            });
        }
        let (container, identity) = opener.open_backing(&b.name, child)?;
        // The top image has no identity from the opener; its describe() often is one (a
        // canonical path), which catches an image naming itself one level earlier.
        if chain.identities.contains(&identity) || chain.names[0] == identity {
            chain.names.push(identity.clone());
            return Err(SourceError::Corrupt {
                what: child.to_string(),
                offset: 8,
                detail: format!(
                    "backing file loop: {identity} appears twice in the chain {}; point the backing file at the right image with `qemu-img rebase -u -b`",
                    chain.render()
                ),
            });
        }
        chain.identities.push(identity.clone());
        chain.names.push(identity);

        let is_qcow2 = match b.format.as_deref() {
            Some("qcow2") => true,
            Some("raw") => false,
            Some(other) => {
                return Err(SourceError::Unsupported {
                    what: container.describe(),
                    detail: format!(
                        "backing file format {other:?} (named by {child}); only qcow2 and raw are supported"
                    ),
                })
            }
            None => {
                // No format recorded: probe by content, as QEMU does.
                let mut magic = [0u8; 4];
                container.size() >= 4 && {
                    container.read_at(0, &mut magic)?;
                    crate::is_qcow2(&magic)
                }
            }
        };
        if is_qcow2 {
            Ok(Box::new(Self::open_layer(container, opener, cache, chain)?))
        } else {
            Ok(container)
        }
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// qcow2 version of this (top) image: 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The backing file name as written in the header, if any.
    pub fn backing_file_name(&self) -> Option<&str> {
        self.backing_name.as_deref()
    }

    /// The external data file's name as the header records it, if the image has one.
    pub fn data_file_name(&self) -> Option<&str> {
        self.data_file_name.as_deref()
    }

    /// The opened backing image (a `Qcow2Source` or the raw container of a raw backing file).
    pub fn backing(&self) -> Option<&dyn BlockSource> {
        self.backing.as_deref()
    }

    fn corrupt(&self, offset: u64, detail: impl Into<String>) -> SourceError {
        corrupt(&self.what, offset, detail)
    }

    /// Decode and validate one L2 entry; `at` is its byte offset in the container.
    fn classify(&self, entry: u64, at: u64) -> Result<Mapping, SourceError> {
        let cb = self.cluster_bits;
        if entry & L2E_COMPRESSED != 0 {
            // Bits 0..x-1: host byte offset; bits x..61: additional 512-byte sectors.
            let x = 62 - (cb - 8);
            let offset = entry & ((1u64 << x) - 1);
            let sectors = ((entry >> x) & ((1u64 << (cb - 8)) - 1)) + 1;
            let len = sectors * 512 - (offset & 511);
            if self.data_file.is_some() {
                return Err(self.corrupt(
                    at,
                    "L2 entry describes a compressed cluster, which an image with an external data file cannot have",
                ));
            }
            if offset == 0 || offset >= self.file_size {
                return Err(self.corrupt(
                    at,
                    format!(
                        "L2 entry points to compressed data at byte {offset}, outside the {}-byte file: image truncated or L2 table corrupt",
                        self.file_size
                    ),
                ));
            }
            return Ok(Mapping::Compressed { offset, len });
        }
        if entry & L2E_ZERO != 0 {
            if self.version < 3 {
                return Err(self.corrupt(at, "L2 entry has the zero flag (bit 0) set in a version 2 image"));
            }
            return Ok(Mapping::Zero);
        }
        let host = entry & L2E_OFFSET_MASK;
        // Offset 0 is "unallocated", except in a data file, where it is the first cluster.
        if host == 0 && (self.data_file.is_none() || entry & L2E_COPIED == 0) {
            return Ok(Mapping::Unallocated);
        }
        if host & (self.cluster_size() - 1) != 0 {
            return Err(self.corrupt(at, format!("L2 entry points to a data cluster at unaligned offset {host:#x}")));
        }
        if self.data_file.is_none() && host >= self.file_size {
            return Err(self.corrupt(
                at,
                format!(
                    "L2 entry points to a data cluster at byte {host}, past the end of the {}-byte file: image truncated",
                    self.file_size
                ),
            ));
        }
        Ok(Mapping::Data(host))
    }

    /// Make sure `tables` holds the L2 tables of the given L1 indices, from the cache or read
    /// with one `read_many`. Tables are decoded to integers; entries are validated on use.
    fn load_tables(
        &self,
        l1_indices: impl IntoIterator<Item = usize>,
        tables: &mut HashMap<u64, Arc<[u64]>>,
    ) -> Result<(), SourceError> {
        let mut missing = Vec::new();
        for i in l1_indices {
            let Some(&off) = self.l1.get(i) else { continue };
            if off == 0 || tables.contains_key(&off) {
                continue;
            }
            match self.cache.get((self.id, off)) {
                Some(t) => {
                    tables.insert(off, t);
                }
                None => missing.push(off),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        let cs = self.cluster_size() as usize;
        let mut bufs = vec![vec![0u8; cs]; missing.len()];
        let mut reqs: Vec<ReadRequest<'_>> =
            missing.iter().zip(bufs.iter_mut()).map(|(&offset, buf)| ReadRequest { offset, buf }).collect();
        self.container.read_many(&mut reqs)?;
        drop(reqs);
        for (off, buf) in missing.into_iter().zip(bufs) {
            let table: Arc<[u64]> = buf
                .chunks_exact(8)
                .map(|b| u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect();
            self.cache.insert((self.id, off), table.clone());
            tables.insert(off, table);
        }
        Ok(())
    }

    /// The mapping of guest cluster `cluster` (< number of clusters), whose L2 table must be
    /// in `tables` already.
    fn mapping(&self, cluster: u64, tables: &HashMap<u64, Arc<[u64]>>) -> Result<Mapping, SourceError> {
        let l2_bits = self.cluster_bits - 3;
        let l1i = (cluster >> l2_bits) as usize;
        let l2i = (cluster & ((1u64 << l2_bits) - 1)) as usize;
        let l2_off = match self.l1.get(l1i) {
            Some(&o) => o,
            None => return Err(self.corrupt(self.l1_offset, format!("guest cluster {cluster} has no L1 entry"))),
        };
        if l2_off == 0 {
            return Ok(Mapping::Unallocated);
        }
        match tables.get(&l2_off).and_then(|t| t.get(l2i)) {
            Some(&entry) => {
                let at = l2_off + l2i as u64 * 8;
                let m = self.classify(entry, at)?;
                match m {
                    // In a data file a guest cluster lives at its own guest offset (the spec
                    // requires it); any other offset is damage.
                    Mapping::Data(host) if self.data_file.is_some() && host != cluster << self.cluster_bits => {
                        Err(self.corrupt(
                            at,
                            format!(
                                "L2 entry maps guest cluster {cluster} to data file offset {host:#x}, not to its guest offset {:#x}",
                                cluster << self.cluster_bits
                            ),
                        ))
                    }
                    m => Ok(m),
                }
            }
            // Only reachable through a bug in the caller's table loading; fail the read
            // rather than panic.
            None => {
                Err(self.corrupt(l2_off, format!("internal error: L2 table for guest cluster {cluster} not loaded")))
            }
        }
    }

    /// L1 indices touched by guest bytes `[offset, end)`, `end > offset`.
    fn l1_range(&self, offset: u64, end: u64) -> std::ops::RangeInclusive<usize> {
        let shift = self.cluster_bits + (self.cluster_bits - 3);
        ((offset >> shift) as usize)..=(((end - 1) >> shift) as usize)
    }

    /// Split every request into segments (zeros, host reads, compressed clusters, backing
    /// reads), merging neighbours that can be served by one read. Also returns the distinct
    /// compressed clusters (host offset, byte count clipped to the file) the segments use.
    fn plan(&self, reqs: &[ReadRequest<'_>]) -> Result<Plan, SourceError> {
        let mut tables = HashMap::new();
        self.load_tables(
            reqs.iter()
                .filter(|r| !r.buf.is_empty())
                .flat_map(|r| self.l1_range(r.offset, r.offset + r.buf.len() as u64)),
            &mut tables,
        )?;

        let cs = self.cluster_size();
        let mut segs: Vec<Seg> = Vec::new();
        let mut compressed: Vec<(u64, usize)> = Vec::new();
        let mut compressed_idx: HashMap<u64, usize> = HashMap::new();
        let push = |segs: &mut Vec<Seg>, req: usize, len: usize, kind: SegKind| {
            if let Some(last) = segs.last_mut() {
                if last.req == req {
                    let merged = match (last.kind, kind) {
                        (SegKind::Zero, SegKind::Zero) => true,
                        (SegKind::Host(a), SegKind::Host(b)) => a + last.len as u64 == b,
                        (SegKind::Backing(a), SegKind::Backing(b)) => a + last.len as u64 == b,
                        _ => false,
                    };
                    if merged {
                        last.len += len;
                        return;
                    }
                }
            }
            segs.push(Seg { req, len, kind });
        };

        for (ri, r) in reqs.iter().enumerate() {
            let end = r.offset + r.buf.len() as u64;
            let mut pos = r.offset;
            while pos < end {
                let within = pos & (cs - 1);
                let n = (cs - within).min(end - pos);
                match self.mapping(pos >> self.cluster_bits, &tables)? {
                    Mapping::Unallocated if self.backing.is_some() => {
                        push(&mut segs, ri, n as usize, SegKind::Backing(pos))
                    }
                    Mapping::Unallocated | Mapping::Zero => push(&mut segs, ri, n as usize, SegKind::Zero),
                    Mapping::Data(cluster) => {
                        let host = cluster + within;
                        // QEMU may leave the last cluster of a file short (the guest never
                        // wrote its tail), and a data file may be shorter than the disk;
                        // reading past EOF there yields zeros, as in QEMU.
                        let avail = self.data_size.saturating_sub(host).min(n);
                        if avail > 0 {
                            push(&mut segs, ri, avail as usize, SegKind::Host(host));
                        }
                        if avail < n {
                            push(&mut segs, ri, (n - avail) as usize, SegKind::Zero);
                        }
                    }
                    Mapping::Compressed { offset, len } => {
                        let idx = *compressed_idx.entry(offset).or_insert_with(|| {
                            // Sector rounding may reach past EOF for the last cluster.
                            let len = len.min(self.file_size - offset) as usize;
                            compressed.push((offset, len));
                            compressed.len() - 1
                        });
                        push(&mut segs, ri, n as usize, SegKind::Compressed { idx, skip: within as usize });
                    }
                }
                pos += n;
            }
        }
        Ok(Plan { segs, compressed })
    }
}

impl BlockSource for Qcow2Source {
    fn size(&self) -> u64 {
        self.size
    }

    fn describe(&self) -> String {
        self.what.clone()
    }

    fn format(&self) -> &'static str {
        "qcow2"
    }

    fn io_hints(&self) -> IoHints {
        // Reads aligned to clusters map to whole host clusters and never decompress a
        // compressed cluster twice, so ask for cluster alignment where that is reasonable.
        let h = self.container.io_hints();
        let max_request = h.max_request.max(h.alignment);
        let alignment = h.alignment.max((self.cluster_size() as u32).min(max_request));
        IoHints { alignment, queue_depth: h.queue_depth, max_request: max_request.max(alignment) }
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
            Unallocated,
        }
        let mut runs: Vec<(u64, u64, Run)> = Vec::new();
        let mut push = |start: u64, len: u64, kind: Run| match runs.last_mut() {
            Some(last) if last.2 == kind && last.0 + last.1 == start => last.1 += len,
            _ => runs.push((start, len, kind)),
        };

        let cs = self.cluster_size();
        let span_shift = self.cluster_bits + (self.cluster_bits - 3);
        let l1s = self.l1_range(offset, end);
        let (first, last) = (*l1s.start(), *l1s.end());
        let mut tables = HashMap::new();
        let mut chunk = first;
        while chunk <= last {
            // Scan in chunks so a whole-disk map does not pin every L2 table at once.
            let chunk_end = (chunk + ALLOCATION_TABLE_BATCH - 1).min(last);
            tables.clear();
            self.load_tables(chunk..=chunk_end, &mut tables)?;
            for l1i in chunk..=chunk_end {
                let rs = offset.max((l1i as u64) << span_shift);
                let re = end.min((l1i as u64 + 1) << span_shift);
                if self.l1.get(l1i).copied().unwrap_or(0) == 0 {
                    push(rs, re - rs, Run::Unallocated);
                    continue;
                }
                let mut pos = rs;
                while pos < re {
                    let cend = ((pos | (cs - 1)) + 1).min(re);
                    let kind = match self.mapping(pos >> self.cluster_bits, &tables)? {
                        Mapping::Unallocated => Run::Unallocated,
                        Mapping::Zero => Run::Zero,
                        Mapping::Data(_) | Mapping::Compressed { .. } => Run::Data,
                    };
                    push(pos, cend - pos, kind);
                    pos = cend;
                }
            }
            chunk = chunk_end + 1;
        }

        let mut out = Vec::with_capacity(runs.len());
        for (start, len, kind) in runs {
            let kind = match kind {
                Run::Data => ExtentKind::Data,
                Run::Zero => ExtentKind::Zero,
                Run::Unallocated => {
                    let Some(backing) = &self.backing else {
                        out.push(Extent { offset: start, len, kind: ExtentKind::Zero });
                        continue;
                    };
                    // Unallocated here: whatever the backing image has, zeros past its end.
                    let run_end = start + len;
                    let bend = backing.size().min(run_end);
                    if start < bend {
                        for e in backing.allocation(start, bend - start)? {
                            // Clip defensively: a misbehaving backing source must not make
                            // our map overlap or leave the requested range.
                            let s = e.offset.max(start);
                            let t = e.end().min(bend);
                            if s < t {
                                out.push(Extent { offset: s, len: t - s, kind: e.kind });
                            }
                        }
                    }
                    let zs = start.max(bend);
                    if zs < run_end {
                        out.push(Extent { offset: zs, len: run_end - zs, kind: ExtentKind::Zero });
                    }
                    continue;
                }
            };
            out.push(Extent { offset: start, len, kind });
        }
        Ok(coalesce(out))
    }

    fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), SourceError> {
        for r in reqs.iter() {
            check_range(&|| self.what.clone(), r.offset, r.buf.len() as u64, self.size)?;
        }
        let Plan { segs, compressed } = self.plan(reqs)?;

        // Buffers for the compressed clusters' host bytes; allocated before any borrow of
        // the callers' buffers is handed out, so both can go into one read_many.
        let mut cbufs: Vec<Vec<u8>> = compressed.iter().map(|&(_, len)| vec![0u8; len]).collect();

        let mut host_reqs: Vec<ReadRequest<'_>> = Vec::new();
        // Data cluster reads when they go to an external data file rather than the container.
        let mut data_reqs: Vec<ReadRequest<'_>> = Vec::new();
        let mut backing_reqs: Vec<ReadRequest<'_>> = Vec::new();
        let mut compressed_dests: Vec<(usize, usize, &mut [u8])> = Vec::new();
        let backing_size = self.backing.as_ref().map_or(0, |b| b.size());

        // Hand out disjoint pieces of each request's buffer, in segment order.
        let mut segs = segs.into_iter().peekable();
        for (ri, r) in reqs.iter_mut().enumerate() {
            let mut rest: &mut [u8] = &mut *r.buf;
            while let Some(seg) = segs.next_if(|s| s.req == ri) {
                let (piece, tail) = std::mem::take(&mut rest).split_at_mut(seg.len);
                rest = tail;
                match seg.kind {
                    SegKind::Zero => piece.fill(0),
                    SegKind::Host(offset) if self.data_file.is_some() => {
                        data_reqs.push(ReadRequest { offset, buf: piece })
                    }
                    SegKind::Host(offset) => host_reqs.push(ReadRequest { offset, buf: piece }),
                    SegKind::Compressed { idx, skip } => compressed_dests.push((idx, skip, piece)),
                    SegKind::Backing(guest) => {
                        // Past the end of a smaller backing image the disk reads as zeros.
                        let inside = backing_size.saturating_sub(guest).min(piece.len() as u64) as usize;
                        let (head, zeros) = piece.split_at_mut(inside);
                        zeros.fill(0);
                        if !head.is_empty() {
                            backing_reqs.push(ReadRequest { offset: guest, buf: head });
                        }
                    }
                }
            }
        }
        for (&(offset, _), buf) in compressed.iter().zip(cbufs.iter_mut()) {
            host_reqs.push(ReadRequest { offset, buf });
        }

        if !host_reqs.is_empty() {
            self.container.read_many(&mut host_reqs)?;
        }
        drop(host_reqs);
        if let Some(data_file) = &self.data_file {
            if !data_reqs.is_empty() {
                data_file.read_many(&mut data_reqs)?;
            }
        }
        drop(data_reqs);
        if let Some(backing) = &self.backing {
            if !backing_reqs.is_empty() {
                backing.read_many(&mut backing_reqs)?;
            }
        }

        if !compressed_dests.is_empty() {
            // Decompress each distinct cluster once, into one reused buffer.
            compressed_dests.sort_by_key(|d| d.0);
            let mut cluster = vec![0u8; self.cluster_size() as usize];
            let mut decomp = Decompressor::default();
            let mut current = None;
            for (idx, skip, dest) in compressed_dests {
                if current != Some(idx) {
                    let (offset, len) = compressed[idx];
                    decomp.decompress(self.compression, &cbufs[idx], &mut cluster).map_err(|e| {
                        self.corrupt(
                            offset,
                            format!(
                                "compressed cluster ({len} bytes, {:?}) does not decompress to {} bytes: {e}",
                                self.compression,
                                cluster.len()
                            ),
                        )
                    })?;
                    current = Some(idx);
                }
                dest.copy_from_slice(&cluster[skip..skip + dest.len()]);
            }
        }
        Ok(())
    }
}
