//! `vmdk`: read VMware VMDK disks as a [`BlockSource`].
//!
//! # What it does
//! [`VmdkSource`] decodes a VMDK disk whose named file comes from any other [`BlockSource`] (a
//! local file, later NFS/iSCSI/NBD), opens the extent files and snapshot parents it names
//! through a [`BackingOpener`] ([`LocalBackingOpener`] for local files), and presents the
//! guest-visible disk: reads, and an allocation map computed from metadata alone.
//! [`is_vmdk`] tells a VMDK from other content by its first bytes.
//!
//! Readable: text descriptors with `FLAT`/`VMFS` (with start offsets), `ZERO`, `SPARSE` and
//! `VMFSSPARSE` extents (monolithicFlat, twoGbMaxExtentFlat, twoGbMaxExtentSparse, vmfs and its
//! thin/thick variants, vmfsSparse, custom); monolithicSparse and streamOptimized files (with
//! the embedded descriptor, zeroed-grain entries, compressed grains with markers, and the
//! footer of streams written with `gdOffset = GD_AT_END`); snapshot chains through
//! `parentFileNameHint` with a CID check. Refused with a clear error: SEsparse and vSAN
//! deltas, raw device mappings, NOACCESS extents, a bare vmfsSparse delta file opened without
//! its descriptor, sparse headers that defer to their descriptor (capacity 0).
//!
//! # On-disk structures (VMware "Virtual Disk Format 5.0")
//! A disk is a list of **extents**, each a run of 512-byte sectors of the guest disk, described
//! by a text **descriptor** (see `descriptor.rs`): either its own small file (flat and split
//! disks, ESXi disks), or embedded in a hosted sparse file (monolithicSparse, streamOptimized),
//! where the single extent is the file itself. A **sparse extent** (see `sparse.rs`) maps
//! grains (64 KiB normally) through a grain directory of grain tables; a grain that is not
//! allocated reads from the **parent** disk named by `parentFileNameHint`, or as zeros. A
//! snapshot delta records its parent's content ID in `parentCID`; the parent's `CID` changes
//! whenever the parent is written, so a mismatch means the delta no longer fits its parent.
//!
//! # Invariants
//! - **Never reads unallocated data.** Unallocated grains without a parent, zeroed grains and
//!   `ZERO` extents are filled with zeros in memory; [`BlockSource::allocation`] is answered
//!   from grain tables, the parent's own map, and for flat extents the extent file's map (so
//!   holes in a flat file are reported as zeros), without reading any data.
//! - **Bounded memory.** Descriptors are at most 1 MiB, grain directories at most 32 MiB,
//!   grains at most 1 MiB, chains at most [`MAX_CHAIN_LEN`] disks; grain tables live in a
//!   bounded LRU cache ([`OpenOptions::gt_cache_bytes`], 64 MiB by default, shared by the whole
//!   chain); every length read from an image is validated before anything is allocated for it;
//!   a compressed grain is read as at most one grain plus 1 KiB and decompression stops one
//!   byte past a grain. Other buffers are proportional to the caller's request sizes.
//! - **No panic on hostile input.** Every offset and size read from an image is validated with
//!   checked arithmetic against the file size before use; bad metadata yields
//!   [`SourceError::Corrupt`] (or `Unsupported`) naming the file, the byte offset of the bad
//!   field or descriptor line, and what is wrong with it. A deterministic corruption loop in
//!   the tests and a cargo-fuzz target (`fuzz/`) exercise this.
//! - **Consistent chains.** A parent loop (by opener identity), a chain deeper than
//!   [`MAX_CHAIN_LEN`] and a `parentCID` that does not match the parent's `CID` are refused,
//!   naming the files involved, as VMware does.
//!
//! # Performance
//! [`BlockSource::read_many`] maps a whole batch of guest requests to file reads first,
//! merging runs that are contiguous in a file, and then issues **one** `read_many` per extent
//! file (compressed grains included) plus one for the parent disk, so an io_uring-backed
//! container sees the whole batch at queue depth. Grain tables missing from the cache for a
//! batch are fetched with one `read_many` per extent file. Each compressed grain a batch
//! touches is read and decompressed once.
//!
//! # Locking
//! A [`VmdkSource`] is `Send + Sync` and is read from several threads at once. Its only shared
//! mutable state is the grain table cache, behind one `Mutex` held only to look up, insert or
//! evict an `Arc`'d table, never across I/O or decompression. Everything else is immutable
//! after [`VmdkSource::open`].
//!
//! # Security note
//! Descriptors name extent files and parents, and [`LocalBackingOpener`] opens whatever local
//! path that is (relative names against the descriptor's directory). A disk from an untrusted
//! tenant can therefore make the reader read any file the process can read. Callers that back
//! up untrusted disks should use a [`BackingOpener`] that confines names to an allowed
//! directory. Extent files are opened when the disk is opened, one container each (the same
//! file named twice is opened once), so a disk split into thousands of extents needs as many
//! file descriptors.

mod descriptor;
mod inflate;
mod reader;
mod sparse;

pub use blocksource::{resolve_backing_path, BackingOpener, BlockSource, LocalBackingOpener, SourceError};
pub use reader::{OpenOptions, VmdkSource, DEFAULT_GT_CACHE_BYTES, MAX_CHAIN_LEN};

/// Whether `first_bytes` (the start of a file, at least 4 KiB or the whole file if shorter)
/// look like a VMDK: the hosted sparse magic `KDMV`, the vmfsSparse magic `COWD`, or a text
/// descriptor. Content-based detection only: it validates nothing else, so a damaged VMDK is
/// still detected as one (and then refused by [`VmdkSource::open`] with a clear error).
///
/// A text descriptor is recognised by its `# Disk DescriptorFile` first line (after optional
/// whitespace or a UTF-8 byte order mark), or, for hand-written descriptors without it, by
/// being NUL-free text that has a `createType=` line.
pub fn is_vmdk(first_bytes: &[u8]) -> bool {
    if first_bytes.starts_with(b"KDMV") || first_bytes.starts_with(b"COWD") {
        return true;
    }
    let head = first_bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(first_bytes);
    let start = head.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(head.len());
    let head = &head[start..];
    const MAGIC: &[u8] = b"# disk descriptorfile";
    if head.len() >= MAGIC.len() && head[..MAGIC.len()].eq_ignore_ascii_case(MAGIC) {
        return true;
    }
    // A descriptor without the comment line: text (no NUL, no other control bytes) with a
    // createType line. A raw disk's first sector is practically never that.
    let text = &head[..head.len().min(4096)];
    if text.is_empty() || text.iter().any(|&b| b < 0x20 && !matches!(b, b'\n' | b'\r' | b'\t')) {
        return false;
    }
    text.split(|&b| b == b'\n').any(|l| {
        let l = l.trim_ascii_start();
        l.len() >= 10 && l[..10].eq_ignore_ascii_case(b"createtype") && l[10..].trim_ascii_start().starts_with(b"=")
    })
}

#[cfg(test)]
mod tests {
    use super::is_vmdk;

    #[test]
    fn detection() {
        assert!(is_vmdk(b"KDMV\x01\0\0\0"));
        assert!(is_vmdk(b"COWD\x01\0\0\0"));
        assert!(is_vmdk(b"# Disk DescriptorFile\nversion=1\n"));
        assert!(is_vmdk(b"\xef\xbb\xbf\r\n  # disk descriptorfile\n"));
        assert!(is_vmdk(b"version=1\ncreateType = \"monolithicFlat\"\nRW 10 FLAT \"x\" 0\n"));
        // A NUL-padded descriptor whose first 4 KiB are the header comment.
        let mut padded = b"# Disk DescriptorFile\n".to_vec();
        padded.resize(4096, 0);
        assert!(is_vmdk(&padded));
        assert!(!is_vmdk(b"KDM"));
        assert!(!is_vmdk(b""));
        assert!(!is_vmdk(b"QFI\xfb\0\0\0\x03"));
        assert!(!is_vmdk(&[0u8; 4096]));
        assert!(!is_vmdk(b"createType=x\0\0\0"));
        assert!(!is_vmdk(b"hello world\n"));
    }
}
