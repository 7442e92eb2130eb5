//! Parsing and validation of the qcow2 header, its extensions, the backing file name and the
//! L1 table. Everything here runs once per image at open time; after it, the reader only
//! trusts values this module has checked against the container size.

use blocksource::{BlockSource, SourceError};

/// Smallest and largest cluster_bits we accept (the same range QEMU accepts).
pub(crate) const MIN_CLUSTER_BITS: u32 = 9;
pub(crate) const MAX_CLUSTER_BITS: u32 = 21;

/// Largest L1 table we load (QEMU's limit too): bounds memory for hostile `size` fields.
pub(crate) const MAX_L1_BYTES: u64 = 32 << 20;

/// Longest backing file name the spec allows.
pub(crate) const MAX_BACKING_NAME: u64 = 1023;

/// Version 2 header length; the v3 fields start right after it.
const V2_HEADER_LEN: u64 = 72;
/// Minimum v3 header length (everything up to and including header_length).
const V3_MIN_HEADER_LEN: u64 = 104;

/// Offset bits of an L1 entry (bits 9..=55). The rest are flags or reserved.
pub(crate) const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

// Incompatible feature bits.
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
// Compatible feature bits.
const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

// Header extension types.
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// How compressed clusters are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    /// Raw deflate (RFC 1951, no zlib header): compression_type 0, and all v2 images.
    Deflate,
    /// Zstandard frames: compression_type 1.
    Zstd,
}

/// The backing file an image names.
#[derive(Debug, Clone)]
pub(crate) struct BackingRef {
    pub name: String,
    /// From the backing-format header extension, if present ("qcow2", "raw", ...).
    pub format: Option<String>,
}

/// Everything the reader needs from an image's metadata, validated.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    /// Host offsets of the L2 tables (0 = unallocated), exactly the entries that cover `size`.
    /// Each non-zero one is cluster-aligned and its whole cluster lies inside the container.
    pub l1: Vec<u64>,
    /// Where the L1 table starts, for error messages.
    pub l1_offset: u64,
    pub compression: Compression,
    pub backing: Option<BackingRef>,
    /// The external data file's name: guest clusters live there, at their guest offset.
    pub data_file: Option<String>,
}

pub(crate) fn corrupt(what: &str, offset: u64, detail: impl Into<String>) -> SourceError {
    SourceError::Corrupt { what: what.to_string(), offset, detail: detail.into() }
}

fn unsupported(what: &str, detail: impl Into<String>) -> SourceError {
    SourceError::Unsupported { what: what.to_string(), detail: detail.into() }
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

/// Names of feature bits from the feature name table extension, used to tell the operator
/// which unknown feature an image needs.
#[derive(Default)]
struct FeatureNames(Vec<(u8, u8, String)>);

impl FeatureNames {
    fn name(&self, kind: u8, bit: u32) -> Option<&str> {
        self.0.iter().find(|(k, b, _)| *k == kind && u32::from(*b) == bit).map(|(_, _, n)| n.as_str())
    }
}

/// Read and validate the header, header extensions, backing file name and L1 table of the
/// qcow2 image in `container`. `what` names the container in errors.
pub(crate) fn parse(container: &dyn BlockSource, what: &str) -> Result<Parsed, SourceError> {
    let file_size = container.size();

    // Fixed part of the header. Read only what exists so a tiny file gives a clear error
    // rather than an out-of-range read.
    let head_len = file_size.min(V3_MIN_HEADER_LEN + 8) as usize;
    let mut head = vec![0u8; head_len];
    container.read_at(0, &mut head)?;
    if !crate::is_qcow2(&head) {
        return Err(corrupt(what, 0, "no qcow2 magic (QFI\\xfb) at the start: not a qcow2 image"));
    }
    if file_size < V2_HEADER_LEN {
        return Err(corrupt(
            what,
            0,
            format!("file is {file_size} bytes, shorter than a qcow2 header ({V2_HEADER_LEN} bytes): image truncated"),
        ));
    }
    let version = be32(&head, 4);
    match version {
        2 | 3 => {}
        // QEMU's original format: real, but ancient; qemu-img can convert it.
        1 => {
            return Err(unsupported(
                what,
                "qcow version 1; convert it with `qemu-img convert -O qcow2` and back up the copy".to_string(),
            ))
        }
        // Anything else is not a version QEMU ever wrote: a damaged header.
        _ => return Err(corrupt(what, 4, format!("qcow2 version field is {version}, not 2 or 3"))),
    }
    let backing_file_offset = be64(&head, 8);
    let backing_file_size = u64::from(be32(&head, 16));
    let cluster_bits = be32(&head, 20);
    // QEMU sees whole 512-byte sectors only (it divides the size field by 512), so a guest
    // never saw a trailing partial sector: present the same disk.
    let size = be64(&head, 24) & !511;
    let crypt_method = be32(&head, 32);
    let l1_size = u64::from(be32(&head, 36));
    let l1_table_offset = be64(&head, 40);

    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(corrupt(
            what,
            20,
            format!("cluster_bits is {cluster_bits}, outside the valid range {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"),
        ));
    }
    let cluster_size = 1u64 << cluster_bits;

    // Version 3 fields; version 2 implies their defaults.
    let (incompat, compat, header_len, compression_type) = if version == 3 {
        if file_size < V3_MIN_HEADER_LEN {
            return Err(corrupt(
                what,
                0,
                format!(
                    "file is {file_size} bytes, shorter than a qcow2 v3 header ({V3_MIN_HEADER_LEN} bytes): image truncated"
                ),
            ));
        }
        let incompat = be64(&head, 72);
        let compat = be64(&head, 80);
        let refcount_order = be32(&head, 96);
        let header_len = u64::from(be32(&head, 100));
        if refcount_order > 6 {
            return Err(corrupt(what, 96, format!("refcount_order is {refcount_order}, more than the maximum 6")));
        }
        if header_len < V3_MIN_HEADER_LEN || header_len % 8 != 0 || header_len > cluster_size {
            return Err(corrupt(
                what,
                100,
                format!(
                    "header_length is {header_len}; it must be a multiple of 8 between {V3_MIN_HEADER_LEN} and the cluster size {cluster_size}"
                ),
            ));
        }
        if header_len > file_size {
            return Err(corrupt(
                what,
                100,
                format!("header_length {header_len} is past the end of the {file_size}-byte file: image truncated"),
            ));
        }
        // The compression type byte exists only in headers longer than 104 bytes.
        let compression_type = if header_len > V3_MIN_HEADER_LEN { head[104] } else { 0 };
        (incompat, compat, header_len, compression_type)
    } else {
        (0, 0, V2_HEADER_LEN, 0)
    };

    // The rest of the first cluster holds the header extensions and usually the backing name.
    let first_len = file_size.min(cluster_size) as usize;
    let mut first = vec![0u8; first_len];
    container.read_at(0, &mut first)?;

    // Header extensions run from the end of the header to the backing file name (if it is
    // inside the first cluster) or the end of the first cluster.
    let mut ext_end = first_len as u64;
    if backing_file_offset > header_len && backing_file_offset < ext_end {
        ext_end = backing_file_offset;
    }
    let mut backing_format = None;
    let mut data_file_name = None;
    let mut names = FeatureNames::default();
    let mut off = header_len;
    while off + 8 <= ext_end {
        let ty = be32(&first, off as usize);
        let len = u64::from(be32(&first, off as usize + 4));
        if ty == EXT_END {
            break;
        }
        let data_start = off + 8;
        if len > ext_end - data_start {
            return Err(corrupt(
                what,
                off,
                format!(
                    "header extension 0x{ty:08x} claims {len} bytes, past the end of the header area at byte {ext_end}{}",
                    if (first_len as u64) < cluster_size { " (the file ends inside its first cluster: image truncated?)" } else { "" }
                ),
            ));
        }
        let data = &first[data_start as usize..(data_start + len) as usize];
        match ty {
            EXT_BACKING_FORMAT => {
                let fmt = std::str::from_utf8(data)
                    .map_err(|_| corrupt(what, data_start, "backing format name is not valid UTF-8"))?;
                backing_format = Some(fmt.trim_end_matches('\0').to_string());
            }
            EXT_DATA_FILE => {
                let name = std::str::from_utf8(data)
                    .map_err(|_| corrupt(what, data_start, "external data file name is not valid UTF-8"))?;
                data_file_name = Some(name.trim_end_matches('\0').to_string());
            }
            EXT_FEATURE_NAMES => {
                // 48-byte entries: type, bit number, 46-byte NUL-padded name.
                for e in data.chunks_exact(48) {
                    let name = String::from_utf8_lossy(&e[2..]).trim_end_matches('\0').to_string();
                    names.0.push((e[0], e[1], name));
                }
            }
            // Others (bitmaps, encryption header, unknown ones) do not
            // affect reading the active layer; the features that need them are refused below.
            _ => {}
        }
        // Extension data is padded to a multiple of 8 bytes.
        off = data_start + len.div_ceil(8) * 8;
    }

    // Feature bits. Check the refusals in order of how much they tell the operator.
    if incompat & INCOMPAT_CORRUPT != 0 {
        return Err(corrupt(
            what,
            72,
            "the image is marked corrupt (incompatible feature bit 1): QEMU found inconsistent metadata in it",
        ));
    }
    if incompat & INCOMPAT_DIRTY != 0 && compat & COMPAT_LAZY_REFCOUNTS == 0 {
        // With lazy refcounts, "dirty" only means the refcounts may be stale, which a reader
        // does not use. Without them the flag should never be set.
        return Err(corrupt(
            what,
            72,
            "the image is marked dirty but does not use lazy refcounts: its metadata is inconsistent",
        ));
    }
    // With an external data file the guest's clusters live in that file (the L2 tables still
    // say which are allocated and which read as zeros, so the file alone is not the disk).
    let data_file = if incompat & INCOMPAT_DATA_FILE != 0 {
        match data_file_name {
            Some(name) if !name.is_empty() => Some(name),
            _ => {
                return Err(unsupported(
                    what,
                    "the image keeps its data in an external data file (incompatible feature bit 2) but does not name it; record the name with `qemu-img amend -o data_file=NAME` and back up the image again",
                ))
            }
        }
    } else {
        None
    };
    if incompat & INCOMPAT_EXTL2 != 0 {
        return Err(unsupported(what, "extended L2 entries / subclusters (incompatible feature bit 4)"));
    }
    let unknown = incompat & !INCOMPAT_KNOWN;
    if unknown != 0 {
        let list: Vec<String> = (0..64)
            .filter(|b| unknown & (1u64 << b) != 0)
            .map(|b| match names.name(0, b) {
                Some(n) => format!("bit {b} ({n})"),
                None => format!("bit {b}"),
            })
            .collect();
        return Err(unsupported(what, format!("unknown incompatible features: {}", list.join(", "))));
    }
    if crypt_method != 0 {
        let kind = match crypt_method {
            1 => "AES",
            2 => "LUKS",
            _ => "unknown",
        };
        return Err(unsupported(what, format!("encrypted image (crypt_method {crypt_method}, {kind})")));
    }
    let compression = match (incompat & INCOMPAT_COMPRESSION != 0, compression_type) {
        (_, 0) => Compression::Deflate,
        (true, 1) => Compression::Zstd,
        (true, t) => return Err(unsupported(what, format!("compression type {t} (only deflate and zstd)"))),
        (false, t) => {
            return Err(corrupt(
                what,
                104,
                format!("compression type {t} is set but incompatible feature bit 3 (compression type) is not"),
            ))
        }
    };

    // Backing file name. An offset of 0 or an empty name means no backing file.
    let backing = if backing_file_offset != 0 && backing_file_size != 0 {
        if backing_file_size > MAX_BACKING_NAME {
            return Err(corrupt(
                what,
                16,
                format!("backing file name is {backing_file_size} bytes, longer than the maximum {MAX_BACKING_NAME}"),
            ));
        }
        if backing_file_offset > cluster_size {
            return Err(corrupt(
                what,
                8,
                format!("backing file name offset {backing_file_offset} is outside the first cluster"),
            ));
        }
        let end = backing_file_offset + backing_file_size; // both small: cannot overflow
        if end > file_size {
            return Err(corrupt(
                what,
                8,
                format!("backing file name at bytes {backing_file_offset}..{end} is past the end of the {file_size}-byte file"),
            ));
        }
        let mut raw = vec![0u8; backing_file_size as usize];
        container.read_at(backing_file_offset, &mut raw)?;
        let name = String::from_utf8(raw)
            .map_err(|_| corrupt(what, backing_file_offset, "backing file name is not valid UTF-8"))?;
        Some(BackingRef { name, format: backing_format })
    } else {
        None
    };

    // L1 table: one entry per L2 table's worth of guest bytes.
    let l2_bits = cluster_bits - 3;
    let bytes_per_l1_entry = 1u64 << (cluster_bits + l2_bits);
    let needed = size.div_ceil(bytes_per_l1_entry);
    if needed > MAX_L1_BYTES / 8 {
        return Err(corrupt(
            what,
            24,
            format!(
                "virtual size {size} bytes needs an L1 table of {} bytes at cluster size {cluster_size}, over the {} MiB limit: the size field is absurd",
                needed.saturating_mul(8),
                MAX_L1_BYTES >> 20
            ),
        ));
    }
    if l1_size < needed {
        return Err(corrupt(
            what,
            36,
            format!("L1 table has {l1_size} entries but the {size}-byte virtual size needs {needed}"),
        ));
    }
    if l1_size > MAX_L1_BYTES / 8 {
        return Err(corrupt(
            what,
            36,
            format!("L1 table has {l1_size} entries, over the {} MiB limit", MAX_L1_BYTES >> 20),
        ));
    }
    let mut l1 = Vec::new();
    if needed > 0 {
        if l1_table_offset == 0 || !l1_table_offset.is_multiple_of(cluster_size) {
            return Err(corrupt(
                what,
                40,
                format!(
                    "L1 table offset {l1_table_offset} is not a non-zero multiple of the cluster size {cluster_size}"
                ),
            ));
        }
        let l1_bytes = needed * 8;
        if l1_table_offset.checked_add(l1_bytes).is_none_or(|end| end > file_size) {
            return Err(corrupt(
                what,
                40,
                format!(
                    "L1 table at byte {l1_table_offset} ({l1_bytes} bytes) extends past the end of the {file_size}-byte file: image truncated or offset corrupt"
                ),
            ));
        }
        let mut raw = vec![0u8; l1_bytes as usize];
        container.read_at(l1_table_offset, &mut raw)?;
        l1.reserve_exact(needed as usize);
        for (i, e) in raw.chunks_exact(8).enumerate() {
            let entry = be64(e, 0);
            let l2 = entry & L1E_OFFSET_MASK;
            let at = l1_table_offset + i as u64 * 8;
            if l2 != 0 {
                if !l2.is_multiple_of(cluster_size) {
                    return Err(corrupt(
                        what,
                        at,
                        format!("L1 entry {i} points to an L2 table at unaligned offset {l2:#x}"),
                    ));
                }
                if l2.checked_add(cluster_size).is_none_or(|end| end > file_size) {
                    return Err(corrupt(
                        what,
                        at,
                        format!(
                            "L1 entry {i} points to an L2 table at byte {l2}, past the end of the {file_size}-byte file: image truncated"
                        ),
                    ));
                }
            }
            l1.push(l2);
        }
    }

    Ok(Parsed { version, cluster_bits, size, l1, l1_offset: l1_table_offset, compression, backing, data_file })
}
