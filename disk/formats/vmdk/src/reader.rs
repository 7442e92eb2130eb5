//! [`VmdkSource`]: a VMDK disk (descriptor and extents, or one sparse file) and its snapshot
//! parents as a [`BlockSource`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use blocksource::{
    check_range, coalesce, BackingOpener, BlockSource, Extent, ExtentKind, IoHints, ReadRequest, SourceError,
};

use blocksource::TableCache;

/// Grain tables by (image or extent index, table offset).
type GtCache = TableCache<u32>;
use crate::descriptor::{self, Access, Descriptor, ExtentType, CID_NONE, MAX_DESCRIPTOR_BYTES};
use crate::sparse::{corrupt, unsupported, Mapping, SparseExtent, COWD_MAGIC, KDMV_MAGIC, MAX_DISK_BYTES, SECTOR};

/// Default budget of the grain table cache of one snapshot chain.
pub const DEFAULT_GT_CACHE_BYTES: usize = 64 << 20;

/// Most disks one snapshot chain may have, the top one included. Deeper chains are refused:
/// VMware itself stops at 32 snapshots, and each level costs a stack frame per read.
pub const MAX_CHAIN_LEN: usize = 64;

/// How many grain tables [`BlockSource::allocation`] fetches with one `read_many` while scanning.
const ALLOCATION_TABLE_BATCH: usize = 64;

/// Tunables for [`VmdkSource::open_with`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Budget of the grain table cache, shared by all disks of the snapshot chain. At least
    /// one table is always kept.
    pub gt_cache_bytes: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { gt_cache_bytes: DEFAULT_GT_CACHE_BYTES }
    }
}

/// What an extent's guest bytes come from.
#[derive(Debug)]
enum Body {
    /// `ZERO` extent.
    Zero,
    /// Flat extent: guest byte `start + x` is at byte `offset + x` of container `c`.
    Flat { c: usize, offset: u64 },
    /// Sparse extent in container `c`.
    Sparse { c: usize, x: SparseExtent },
}

/// One extent, in guest coordinates.
#[derive(Debug)]
struct Ext {
    start: u64,
    len: u64,
    body: Body,
}

/// Where one piece of a guest read comes from.
#[derive(Debug, Clone, Copy)]
enum SegKind {
    Zero,
    /// Container index and byte offset in it.
    Host {
        c: usize,
        off: u64,
    },
    /// Index into the batch's distinct compressed grains, and the offset of the wanted bytes
    /// within the decompressed grain.
    Compressed {
        idx: usize,
        skip: usize,
    },
    /// The same guest offset in the parent disk.
    Parent(u64),
}

#[derive(Debug, Clone, Copy)]
struct Seg {
    req: usize,
    len: usize,
    kind: SegKind,
}

/// One distinct compressed grain a batch needs.
#[derive(Debug, Clone, Copy)]
struct CGrain {
    ext: usize,
    grain: u64,
    host: u64,
    len: usize,
}

/// Grain tables loaded for one batch: (extent index, GT index) -> table.
type Tables = HashMap<(usize, usize), Arc<[u32]>>;

/// The distinct extent files of a disk and its extents.
type Extents = (Vec<Arc<dyn BlockSource>>, Vec<Ext>);

/// Snapshot chain bookkeeping while opening.
struct Ctx<'a> {
    opener: &'a dyn BackingOpener,
    cache: Arc<GtCache>,
    /// describe() of the top disk, then the identity of each parent, for messages.
    names: Vec<String>,
    /// Identities of the parents returned by the opener, for loop detection.
    identities: Vec<String>,
    next_id: u32,
}

impl Ctx<'_> {
    fn render(&self) -> String {
        self.names.join(" -> ")
    }
}

/// A VMDK disk over raw container bytes, with its extents and snapshot parents, as a
/// guest-visible disk.
pub struct VmdkSource {
    /// describe() of the file the disk was opened from (descriptor or sparse file).
    what: String,
    size: u64,
    create_type: String,
    cid: Option<u32>,
    parent_hint: Option<String>,
    /// Distinct extent files (deduplicated by opener identity); index 0 is the opened file
    /// itself for a sparse disk.
    containers: Vec<Arc<dyn BlockSource>>,
    /// Sorted by `start`, contiguous from 0 to `size`.
    extents: Vec<Ext>,
    parent: Option<Box<VmdkSource>>,
    cache: Arc<GtCache>,
}

impl fmt::Debug for VmdkSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmdkSource")
            .field("what", &self.what)
            .field("size", &self.size)
            .field("create_type", &self.create_type)
            .field("cid", &self.cid)
            .field("extents", &self.extents.len())
            .field("parent_hint", &self.parent_hint)
            .field("parent", &self.parent)
            .field("cache", &self.cache)
            .finish()
    }
}

/// Check a descriptor's createType: the disk kinds we can read, and a clear refusal for the
/// others.
fn check_create_type(what: &str, ct: &str) -> Result<(), SourceError> {
    const READABLE: &[&str] = &[
        "monolithicSparse",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
        "streamOptimized",
        "vmfs",
        "vmfsThin",
        "vmfsPreallocated",
        "vmfsEagerZeroedThick",
        "vmfsSparse",
        "custom",
    ];
    if READABLE.iter().any(|r| r.eq_ignore_ascii_case(ct)) {
        return Ok(());
    }
    let lower = ct.to_ascii_lowercase();
    let detail = if lower == "sesparse" || lower == "vsansparse" {
        format!("createType {ct:?}: SEsparse/vSAN snapshot deltas are not supported; consolidate the snapshots (or clone the disk) in vSphere and back up the result")
    } else if lower.contains("raw") || lower.contains("rdm") || lower.contains("device") {
        format!("createType {ct:?}: the disk is a raw device mapping or physical disk; back up the device itself")
    } else {
        format!("createType {ct:?} is not a known VMDK disk type")
    };
    Err(unsupported(what, detail))
}

/// Wrap an open error of a file a descriptor names with what that file was for.
fn context(e: SourceError, role: &str) -> SourceError {
    match e {
        SourceError::Io { what, source } => SourceError::Io { what: format!("{what} ({role})"), source },
        SourceError::NotFound { path } => SourceError::Io {
            what: format!("{} ({role})", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        },
        other => other,
    }
}

impl VmdkSource {
    /// Open the VMDK disk whose named file (a text descriptor, or a monolithic sparse or
    /// streamOptimized file) `container` holds. Extent files and snapshot parents are opened
    /// through `opener`. Validates all metadata; grain tables are read on demand.
    pub fn open(container: Box<dyn BlockSource>, opener: &dyn BackingOpener) -> Result<VmdkSource, SourceError> {
        Self::open_with(container, opener, &OpenOptions::default())
    }

    /// [`open`](Self::open) with explicit [`OpenOptions`].
    pub fn open_with(
        container: Box<dyn BlockSource>,
        opener: &dyn BackingOpener,
        options: &OpenOptions,
    ) -> Result<VmdkSource, SourceError> {
        let mut ctx = Ctx {
            opener,
            cache: Arc::new(GtCache::new(options.gt_cache_bytes)),
            names: vec![container.describe()],
            identities: Vec::new(),
            next_id: 0,
        };
        Self::open_layer(container, &mut ctx)
    }

    fn open_layer(container: Box<dyn BlockSource>, ctx: &mut Ctx<'_>) -> Result<VmdkSource, SourceError> {
        let what = container.describe();
        let file_size = container.size();
        let mut first = vec![0u8; file_size.min(4096) as usize];
        container.read_at(0, &mut first)?;
        let container: Arc<dyn BlockSource> = Arc::from(container);

        let (desc, desc_base, containers, extents) = if first.starts_with(&KDMV_MAGIC) {
            let mut x = SparseExtent::open(&*container, &what, ctx.next_id)?;
            ctx.next_id += 1;
            let (desc, base) = match x.descriptor {
                Some((off, len)) => {
                    let mut buf = vec![0u8; len as usize];
                    container.read_at(off, &mut buf)?;
                    let d = descriptor::parse(&buf)
                        .map_err(|e| corrupt(&what, off + e.offset, format!("embedded descriptor: {}", e.detail)))?;
                    (d, off)
                }
                None => (Descriptor::default(), 0),
            };
            x.base_sector = 0;
            let ext = Ext { start: 0, len: x.capacity, body: Body::Sparse { c: 0, x } };
            (desc, base, vec![container], vec![ext])
        } else if first.starts_with(&COWD_MAGIC) {
            return Err(unsupported(
                &what,
                "this is the data file (vmfsSparse redo log) of an ESXi snapshot, which does not say which disk it is a delta of; open the snapshot's descriptor file (e.g. vm-000001.vmdk rather than vm-000001-delta.vmdk)",
            ));
        } else {
            if !crate::is_vmdk(&first) {
                return Err(corrupt(
                    &what,
                    0,
                    "not a VMDK: no sparse extent magic (KDMV/COWD) and no text descriptor (\"# Disk DescriptorFile\")",
                ));
            }
            if file_size > MAX_DESCRIPTOR_BYTES {
                return Err(corrupt(
                    &what,
                    0,
                    format!(
                        "looks like a text descriptor but is {file_size} bytes, more than the {} KiB limit for descriptors",
                        MAX_DESCRIPTOR_BYTES >> 10
                    ),
                ));
            }
            let mut buf = vec![0u8; file_size as usize];
            container.read_at(0, &mut buf)?;
            let desc = descriptor::parse(&buf).map_err(|e| corrupt(&what, e.offset, e.detail))?;
            let Some(ct) = desc.create_type.as_deref() else {
                return Err(corrupt(&what, 0, "descriptor has no createType line"));
            };
            check_create_type(&what, ct)?;
            let (containers, extents) = Self::open_extents(&what, &desc, ctx)?;
            (desc, 0, containers, extents)
        };

        let size = extents.last().map_or(0, |e| e.start + e.len);
        let create_type = desc.create_type.clone().unwrap_or_else(|| "monolithicSparse".to_string());
        let parent = match &desc.parent_hint {
            None => None,
            Some(hint) => {
                let parent = Self::open_parent(hint, &what, ctx)?;
                // VMware refuses a delta whose parent changed since the snapshot was taken: the
                // delta's grains would be laid over data they were not written against.
                if let (Some(want), Some(have)) = (desc.parent_cid, parent.cid) {
                    if want != have {
                        return Err(corrupt(
                            &what,
                            desc_base,
                            format!(
                                "snapshot chain is inconsistent: this disk says parentCID={want:08x}, but its parent {} has CID={have:08x}; the parent was modified after the snapshot was taken, or parentFileNameHint={hint:?} names the wrong file. VMware refuses this chain too; find the right parent, or repair the chain in vSphere/Workstation",
                                parent.what
                            ),
                        ));
                    }
                } else if desc.parent_cid == Some(CID_NONE) {
                    return Err(corrupt(
                        &what,
                        desc_base,
                        format!("descriptor names a parent ({hint:?}) but says parentCID=ffffffff (no parent)"),
                    ));
                }
                Some(Box::new(parent))
            }
        };
        Ok(VmdkSource {
            what,
            size,
            create_type,
            cid: desc.cid,
            parent_hint: desc.parent_hint,
            containers,
            extents,
            parent,
            cache: ctx.cache.clone(),
        })
    }

    /// Open the files a descriptor's extent lines name and build the extent map.
    fn open_extents(what: &str, desc: &Descriptor, ctx: &mut Ctx<'_>) -> Result<Extents, SourceError> {
        if desc.extents.is_empty() {
            return Err(corrupt(what, 0, "descriptor lists no extents"));
        }
        let mut containers: Vec<Arc<dyn BlockSource>> = Vec::new();
        let mut by_identity: HashMap<String, usize> = HashMap::new();
        let mut extents = Vec::with_capacity(desc.extents.len());
        let mut start = 0u64;
        for line in &desc.extents {
            let n = line.line;
            let len =
                line.sectors.checked_mul(SECTOR).filter(|&l| start.checked_add(l).is_some_and(|e| e <= MAX_DISK_BYTES));
            let Some(len) = len else {
                return Err(corrupt(
                    what,
                    0,
                    format!("descriptor line {n}: extents add up to more than the {} TiB limit", MAX_DISK_BYTES >> 40),
                ));
            };
            if line.access == Access::Denied {
                return Err(unsupported(
                    what,
                    format!("descriptor line {n}: extent is NOACCESS, its data cannot be read"),
                ));
            }
            let body = match &line.kind {
                ExtentType::Zero => Body::Zero,
                ExtentType::Other(t) => {
                    let why = match t.as_str() {
                        "SESPARSE" => {
                            "SEsparse snapshot deltas are not supported; consolidate the snapshots in vSphere first"
                        }
                        "VMFSRDM" | "VMFSRAW" => "raw device mappings are not supported; back up the device itself",
                        _ => "unknown extent type",
                    };
                    return Err(unsupported(what, format!("descriptor line {n}: extent type {t}: {why}")));
                }
                kind => {
                    let name = line.file.as_deref().unwrap_or("");
                    let (c, identity) = ctx
                        .opener
                        .open_backing(name, what)
                        .map_err(|e| context(e, &format!("extent file named on line {n} of the descriptor")))?;
                    let ci = match by_identity.get(&identity) {
                        Some(&ci) => ci,
                        None => {
                            containers.push(Arc::from(c));
                            by_identity.insert(identity, containers.len() - 1);
                            containers.len() - 1
                        }
                    };
                    let cont = &containers[ci];
                    let cwhat = cont.describe();
                    if *kind == ExtentType::Flat {
                        let need = line.offset.checked_mul(SECTOR).and_then(|o| o.checked_add(len));
                        if need.is_none_or(|need| need > cont.size()) {
                            return Err(corrupt(
                                what,
                                0,
                                format!(
                                    "descriptor line {n}: flat extent {cwhat} is {} bytes, but the extent needs {} sectors from sector {}: the file is truncated or the descriptor is wrong",
                                    cont.size(),
                                    line.sectors,
                                    line.offset
                                ),
                            ));
                        }
                        Body::Flat { c: ci, offset: line.offset * SECTOR }
                    } else {
                        let mut x = SparseExtent::open(&**cont, &cwhat, ctx.next_id)?;
                        ctx.next_id += 1;
                        if x.capacity < len {
                            return Err(corrupt(
                                &cwhat,
                                12,
                                format!(
                                    "{} sparse extent holds {} sectors, but line {n} of descriptor {what} says {}",
                                    match x.format {
                                        crate::sparse::SparseFormat::Hosted => "hosted",
                                        crate::sparse::SparseFormat::Cowd => "vmfsSparse",
                                    },
                                    x.capacity / SECTOR,
                                    line.sectors
                                ),
                            ));
                        }
                        // SPARSE should be KDMV and VMFSSPARSE COWD, but QEMU reads either
                        // format under either name, and so do we: the header is what counts.
                        x.base_sector = start / SECTOR;
                        Body::Sparse { c: ci, x }
                    }
                }
            };
            extents.push(Ext { start, len, body });
            start += len;
        }
        Ok((containers, extents))
    }

    fn open_parent(hint: &str, child: &str, ctx: &mut Ctx<'_>) -> Result<VmdkSource, SourceError> {
        if ctx.names.len() >= MAX_CHAIN_LEN {
            return Err(unsupported(
                &ctx.names[0],
                format!(
                    "snapshot chain is longer than {MAX_CHAIN_LEN} disks ({child} names yet another parent {hint:?}); consolidate the snapshots first"
                ),
            ));
        }
        let (container, identity) = ctx
            .opener
            .open_backing(hint, child)
            .map_err(|e| context(e, "the parent disk named by parentFileNameHint; the snapshot chain is incomplete"))?;
        // The top disk has no identity from the opener; its describe() often is one (a
        // canonical path), which catches a disk naming itself one level earlier.
        if ctx.identities.contains(&identity) || ctx.names[0] == identity {
            ctx.names.push(identity.clone());
            return Err(corrupt(
                child,
                0,
                format!(
                    "snapshot parent loop: {identity} appears twice in the chain {}; fix parentFileNameHint in the descriptor",
                    ctx.render()
                ),
            ));
        }
        ctx.identities.push(identity.clone());
        ctx.names.push(identity);
        Self::open_layer(container, ctx)
    }

    /// The descriptor's createType ("monolithicSparse", "twoGbMaxExtentFlat", ...).
    pub fn create_type(&self) -> &str {
        &self.create_type
    }

    /// The content ID from the descriptor, if it has one.
    pub fn cid(&self) -> Option<u32> {
        self.cid
    }

    /// The parent's file name as written in `parentFileNameHint`, if this is a snapshot delta.
    pub fn parent_file_name(&self) -> Option<&str> {
        self.parent_hint.as_deref()
    }

    /// The opened parent disk, if this is a snapshot delta.
    pub fn parent(&self) -> Option<&VmdkSource> {
        self.parent.as_deref()
    }

    /// Index of the extent holding guest byte `pos` (< size).
    fn extent_at(&self, pos: u64) -> usize {
        self.extents.partition_point(|e| e.start + e.len <= pos)
    }

    /// The extent-clipped pieces of guest range `[offset, end)` (within the disk):
    /// (extent index, start, end).
    fn pieces(&self, offset: u64, end: u64) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        let mut pos = offset;
        let mut i = if offset < end { self.extent_at(offset) } else { self.extents.len() };
        std::iter::from_fn(move || {
            if pos >= end || i >= self.extents.len() {
                return None;
            }
            let e = &self.extents[i];
            let to = end.min(e.start + e.len);
            let item = (i, pos, to);
            pos = to;
            i += 1;
            Some(item)
        })
    }

    fn sparse(&self, ext: usize) -> Option<(usize, &SparseExtent)> {
        match &self.extents.get(ext)?.body {
            Body::Sparse { c, x } => Some((*c, x)),
            _ => None,
        }
    }

    /// Make sure `tables` holds the given grain tables, from the cache or read with one
    /// `read_many` per container.
    fn load_tables(
        &self,
        needed: impl IntoIterator<Item = (usize, usize)>,
        tables: &mut Tables,
    ) -> Result<(), SourceError> {
        // (container, extent, gt, byte offset)
        let mut missing: Vec<(usize, usize, usize, u64)> = Vec::new();
        for (ext, gt) in needed {
            if tables.contains_key(&(ext, gt)) {
                continue;
            }
            let Some((c, x)) = self.sparse(ext) else { continue };
            let Some(off) = x.gt_offset(gt) else { continue };
            match self.cache.get((x.id, off)) {
                Some(t) => {
                    tables.insert((ext, gt), t);
                }
                None => missing.push((c, ext, gt, off)),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        let mut bufs: Vec<Vec<u8>> = missing
            .iter()
            .map(|&(_, ext, _, _)| vec![0u8; self.sparse(ext).map_or(0, |(_, x)| x.gt_bytes())])
            .collect();
        let mut per_container: Vec<Vec<ReadRequest<'_>>> = (0..self.containers.len()).map(|_| Vec::new()).collect();
        for (&(c, _, _, offset), buf) in missing.iter().zip(bufs.iter_mut()) {
            per_container[c].push(ReadRequest { offset, buf });
        }
        for (c, reqs) in per_container.iter_mut().enumerate() {
            if !reqs.is_empty() {
                self.containers[c].read_many(reqs)?;
            }
        }
        drop(per_container);
        for ((_, ext, gt, off), buf) in missing.into_iter().zip(bufs) {
            let table = SparseExtent::decode_table(&buf);
            if let Some((_, x)) = self.sparse(ext) {
                self.cache.insert((x.id, off), table.clone());
            }
            tables.insert((ext, gt), table);
        }
        Ok(())
    }

    /// The GTs of sparse extents that guest range `[offset, end)` touches.
    fn needed_tables(&self, offset: u64, end: u64) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.pieces(offset, end).flat_map(move |(i, from, to)| {
            let range = match self.sparse(i) {
                Some((_, x)) => {
                    let s = self.extents[i].start;
                    (((from - s) / x.gt_span()) as usize)..(((to - 1 - s) / x.gt_span()) as usize + 1)
                }
                None => 0..0,
            };
            range.map(move |gt| (i, gt))
        })
    }

    /// Split every request into segments, merging neighbours that one read can serve. Also
    /// returns the distinct compressed grains the segments use.
    fn plan(&self, reqs: &[ReadRequest<'_>]) -> Result<(Vec<Seg>, Vec<CGrain>), SourceError> {
        let mut tables = Tables::new();
        self.load_tables(
            reqs.iter()
                .filter(|r| !r.buf.is_empty())
                .flat_map(|r| self.needed_tables(r.offset, r.offset + r.buf.len() as u64)),
            &mut tables,
        )?;
        let mut segs: Vec<Seg> = Vec::new();
        let mut cgrains: Vec<CGrain> = Vec::new();
        let mut cidx: HashMap<(usize, u64), usize> = HashMap::new();
        let push = |segs: &mut Vec<Seg>, req: usize, len: usize, kind: SegKind| {
            if let Some(last) = segs.last_mut() {
                if last.req == req {
                    let merged = match (last.kind, kind) {
                        (SegKind::Zero, SegKind::Zero) => true,
                        (SegKind::Host { c: a, off: x }, SegKind::Host { c: b, off: y }) => {
                            a == b && x + last.len as u64 == y
                        }
                        (SegKind::Parent(a), SegKind::Parent(b)) => a + last.len as u64 == b,
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
            for (ei, from, to) in self.pieces(r.offset, end) {
                let e = &self.extents[ei];
                match &e.body {
                    Body::Zero => push(&mut segs, ri, (to - from) as usize, SegKind::Zero),
                    Body::Flat { c, offset } => push(
                        &mut segs,
                        ri,
                        (to - from) as usize,
                        SegKind::Host { c: *c, off: offset + (from - e.start) },
                    ),
                    Body::Sparse { c, x } => {
                        let gs = x.grain_size();
                        let mut pos = from;
                        while pos < to {
                            let rel = pos - e.start;
                            let grain = rel >> x.grain_bits;
                            let within = rel & (gs - 1);
                            let n = (gs - within).min(to - pos);
                            let gt = (grain / u64::from(x.gtes_per_gt)) as usize;
                            match x.mapping(grain, tables.get(&(ei, gt)).map(|t| &t[..]))? {
                                Mapping::Unallocated if self.parent.is_some() => {
                                    push(&mut segs, ri, n as usize, SegKind::Parent(pos))
                                }
                                Mapping::Unallocated | Mapping::Zero => push(&mut segs, ri, n as usize, SegKind::Zero),
                                Mapping::Data(host) => {
                                    let host = host + within;
                                    // A grain at the very end of the file may be short (the
                                    // guest never wrote its tail); QEMU reads zeros there too.
                                    let avail = x.file_size.saturating_sub(host).min(n);
                                    if avail > 0 {
                                        push(&mut segs, ri, avail as usize, SegKind::Host { c: *c, off: host });
                                    }
                                    if avail < n {
                                        push(&mut segs, ri, (n - avail) as usize, SegKind::Zero);
                                    }
                                }
                                Mapping::Compressed(host) => {
                                    let idx = *cidx.entry((ei, host)).or_insert_with(|| {
                                        cgrains.push(CGrain { ext: ei, grain, host, len: x.compressed_read_len(host) });
                                        cgrains.len() - 1
                                    });
                                    push(&mut segs, ri, n as usize, SegKind::Compressed { idx, skip: within as usize });
                                }
                            }
                            pos += n;
                        }
                    }
                }
            }
        }
        Ok((segs, cgrains))
    }
}

impl BlockSource for VmdkSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn describe(&self) -> String {
        self.what.clone()
    }

    fn format(&self) -> &'static str {
        "vmdk"
    }

    fn io_hints(&self) -> IoHints {
        let h = self.containers.first().map(|c| c.io_hints()).unwrap_or_default();
        // Reads aligned to grains never decompress a compressed grain twice.
        let grain = self.extents.iter().filter_map(|e| self.sparse_of(e)).map(|x| x.grain_size()).max().unwrap_or(0);
        let max_request = h.max_request.max(h.alignment);
        let alignment = h.alignment.max((grain.min(u64::from(max_request))) as u32);
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
        let mut tables = Tables::new();
        for (ei, from, to) in self.pieces(offset, end) {
            let e = &self.extents[ei];
            match &e.body {
                Body::Zero => push(from, to - from, Run::Zero),
                Body::Flat { c, offset: base } => {
                    // Holes in a flat extent file read as zeros: ask the file.
                    let host = base + (from - e.start);
                    let mut pos = from;
                    for x in self.containers[*c].allocation(host, to - from)? {
                        // Clip defensively: a misbehaving container must not make our map
                        // overlap or leave the requested range.
                        let s = (x.offset.max(host) - host + from).max(pos);
                        let t = (x.end().min(host + (to - from)).saturating_sub(host) + from).min(to);
                        if s >= t {
                            continue;
                        }
                        if s > pos {
                            push(pos, s - pos, Run::Data);
                        }
                        push(s, t - s, if x.kind == ExtentKind::Zero { Run::Zero } else { Run::Data });
                        pos = t;
                    }
                    if pos < to {
                        push(pos, to - pos, Run::Data);
                    }
                }
                Body::Sparse { x, .. } => {
                    let span = x.gt_span();
                    let first = ((from - e.start) / span) as usize;
                    let last = ((to - 1 - e.start) / span) as usize;
                    let gs = x.grain_size();
                    let mut chunk = first;
                    while chunk <= last {
                        // Scan in chunks so a whole-disk map does not pin every table at once.
                        let chunk_end = (chunk + ALLOCATION_TABLE_BATCH - 1).min(last);
                        tables.clear();
                        self.load_tables((chunk..=chunk_end).map(|gt| (ei, gt)), &mut tables)?;
                        for gt in chunk..=chunk_end {
                            let rs = from.max(e.start + gt as u64 * span);
                            let re = to.min(e.start + (gt as u64 + 1) * span);
                            let Some(table) = tables.get(&(ei, gt)) else {
                                push(rs, re - rs, Run::Unallocated);
                                continue;
                            };
                            let mut pos = rs;
                            while pos < re {
                                let rel = pos - e.start;
                                let gend = (e.start + (rel | (gs - 1)) + 1).min(re);
                                let kind = match x.mapping(rel >> x.grain_bits, Some(table))? {
                                    Mapping::Unallocated => Run::Unallocated,
                                    Mapping::Zero => Run::Zero,
                                    Mapping::Data(_) | Mapping::Compressed(_) => Run::Data,
                                };
                                push(pos, gend - pos, kind);
                                pos = gend;
                            }
                        }
                        chunk = chunk_end + 1;
                    }
                }
            }
        }

        let mut out = Vec::with_capacity(runs.len());
        for (start, len, kind) in runs {
            match kind {
                Run::Data => out.push(Extent { offset: start, len, kind: ExtentKind::Data }),
                Run::Zero => out.push(Extent { offset: start, len, kind: ExtentKind::Zero }),
                Run::Unallocated => {
                    let run_end = start + len;
                    let pend = self.parent.as_ref().map_or(start, |p| p.size().clamp(start, run_end));
                    if let Some(parent) = &self.parent {
                        if start < pend {
                            for e in parent.allocation(start, pend - start)? {
                                let s = e.offset.max(start);
                                let t = e.end().min(pend);
                                if s < t {
                                    out.push(Extent { offset: s, len: t - s, kind: e.kind });
                                }
                            }
                        }
                    }
                    if pend < run_end {
                        out.push(Extent { offset: pend, len: run_end - pend, kind: ExtentKind::Zero });
                    }
                }
            }
        }
        // A parent map with gaps (it should never have any) must not leave holes in ours:
        // fill them with Data, the safe answer.
        let mut full = Vec::with_capacity(out.len());
        let mut pos = offset;
        for e in out {
            if e.offset > pos {
                full.push(Extent { offset: pos, len: e.offset - pos, kind: ExtentKind::Data });
            }
            if e.end() > pos {
                let s = e.offset.max(pos);
                full.push(Extent { offset: s, len: e.end() - s, kind: e.kind });
                pos = e.end();
            }
        }
        if pos < end {
            full.push(Extent { offset: pos, len: end - pos, kind: ExtentKind::Data });
        }
        Ok(coalesce(full))
    }

    fn read_many(&self, reqs: &mut [ReadRequest<'_>]) -> Result<(), SourceError> {
        for r in reqs.iter() {
            check_range(&|| self.what.clone(), r.offset, r.buf.len() as u64, self.size)?;
        }
        let (segs, cgrains) = self.plan(reqs)?;

        // File ranges of the compressed grains, merged where they overlap or touch: each
        // grain's window (a grain plus slack) reaches into the next grain, so a run of
        // consecutive grains is read once instead of nearly twice. The buffers are allocated
        // before any borrow of the callers' buffers is handed out, so both go into the same
        // read_many.
        let container_of = |g: &CGrain| self.sparse(g.ext).map_or(0, |(c, _)| c);
        let mut order: Vec<usize> = (0..cgrains.len()).collect();
        order.sort_by_key(|&i| (container_of(&cgrains[i]), cgrains[i].host));
        // (container, start, end) per run; (run, offset in run) per grain.
        let mut runs: Vec<(usize, u64, u64)> = Vec::new();
        let mut place: Vec<(usize, usize)> = vec![(0, 0); cgrains.len()];
        for i in order {
            let g = &cgrains[i];
            let (c, end) = (container_of(g), g.host + g.len as u64);
            let last = runs.len().wrapping_sub(1);
            match runs.last_mut() {
                Some(r) if r.0 == c && g.host <= r.2 => {
                    r.2 = r.2.max(end);
                    place[i] = (last, (g.host - r.1) as usize);
                }
                _ => {
                    runs.push((c, g.host, end));
                    place[i] = (runs.len() - 1, 0);
                }
            }
        }
        let mut cbufs: Vec<Vec<u8>> = runs.iter().map(|&(_, start, end)| vec![0u8; (end - start) as usize]).collect();
        let mut per_container: Vec<Vec<ReadRequest<'_>>> = (0..self.containers.len()).map(|_| Vec::new()).collect();
        let mut parent_reqs: Vec<ReadRequest<'_>> = Vec::new();
        let mut cdests: Vec<(usize, usize, &mut [u8])> = Vec::new();
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
                    SegKind::Host { c, off } => per_container[c].push(ReadRequest { offset: off, buf: piece }),
                    SegKind::Compressed { idx, skip } => cdests.push((idx, skip, piece)),
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
        for (&(c, start, _), buf) in runs.iter().zip(cbufs.iter_mut()) {
            per_container[c].push(ReadRequest { offset: start, buf });
        }
        for (c, creqs) in per_container.iter_mut().enumerate() {
            if !creqs.is_empty() {
                self.containers[c].read_many(creqs)?;
            }
        }
        drop(per_container);
        if let Some(parent) = &self.parent {
            if !parent_reqs.is_empty() {
                parent.read_many(&mut parent_reqs)?;
            }
        }

        if !cdests.is_empty() {
            // Decompress each distinct grain once, into one reused buffer.
            cdests.sort_by_key(|d| d.0);
            let mut grain_buf: Vec<u8> = Vec::new();
            let mut current: Option<(usize, usize)> = None;
            for (idx, skip, dest) in cdests {
                let g = cgrains[idx];
                let Some((_, x)) = self.sparse(g.ext) else { continue };
                let valid = match current {
                    Some((i, v)) if i == idx => v,
                    _ => {
                        grain_buf.resize(x.grain_size() as usize, 0);
                        let (run, at) = place[idx];
                        let v = x.decompress(g.grain, g.host, &cbufs[run][at..at + g.len], &mut grain_buf)?;
                        current = Some((idx, v));
                        v
                    }
                };
                if skip + dest.len() > valid {
                    return Err(corrupt(
                        &x.what,
                        g.host,
                        format!(
                            "compressed grain {} holds only {valid} bytes, but the disk needs its bytes up to {}",
                            g.grain,
                            skip + dest.len()
                        ),
                    ));
                }
                dest.copy_from_slice(&grain_buf[skip..skip + dest.len()]);
            }
        }
        Ok(())
    }
}

impl VmdkSource {
    fn sparse_of<'a>(&self, e: &'a Ext) -> Option<&'a SparseExtent> {
        match &e.body {
            Body::Sparse { x, .. } => Some(x),
            _ => None,
        }
    }
}
