//! `qcow2`: read qcow2 images as a [`BlockSource`], and write standalone qcow2 images.
//!
//! # What it does
//! - [`Qcow2Source`] decodes a qcow2 image (version 2 or 3) whose raw bytes come from any other
//!   [`BlockSource`] (a local file, later NFS/iSCSI/NBD), follows its backing chain through a
//!   [`BackingOpener`] ([`LocalBackingOpener`] for local files), and presents the guest-visible
//!   disk: reads, and an allocation map computed from metadata alone.
//! - [`Qcow2Writer`] writes a new qcow2 v3 image (no backing file, no compression) from cluster
//!   writes arriving in any order: the restore target.
//! - [`is_qcow2`] tells a qcow2 image from other content by its magic.
//!
//! # On-disk structures (QEMU `docs/interop/qcow2.txt`)
//! All integers are big-endian. The image is a sequence of clusters of `2^cluster_bits` bytes.
//! - **Header** (cluster 0): magic `QFI\xfb`, version, backing file name offset/length,
//!   cluster_bits, virtual size, encryption method, L1 size and offset, refcount table offset;
//!   v3 adds feature bitmaps, refcount order, header length and compression type. Header
//!   extensions follow it in the first cluster (backing format, feature names, ...).
//! - **L1 table**: one 8-byte entry per `cluster_size * cluster_size / 8` bytes of the guest disk,
//!   each the host offset of an L2 table (0 = none).
//! - **L2 tables**: one cluster each, one 8-byte entry per guest cluster: unallocated (0; read the
//!   backing file), a host data cluster offset, the v3 zero flag (bit 0; reads as zeros), or a
//!   compressed cluster descriptor (bit 62: host byte offset plus 512-byte sector count; raw
//!   deflate, or zstd if the header says so).
//! - **Refcount table and blocks**: the reader ignores them (they only matter for allocation
//!   by a writer); the writer produces them with 16-bit refcounts.
//! - **External data file** (v3 incompatible bit 2, named by header extension `0x44415441`):
//!   the guest's clusters live in that file at their own guest offsets (an L2 entry's offset
//!   must equal the cluster's guest offset; offset 0 with bit 63 set is an allocated first
//!   cluster), and the L2 tables still decide what the guest sees: zero-flag and unallocated
//!   clusters read as zeros (or the backing file) whatever stale bytes the data file holds
//!   there. With the `data_file_raw` autoclear bit the data file is also a raw image of the
//!   disk, but the L2 tables are still the authority. The data file is opened through the
//!   [`BackingOpener`], like a backing file: a relative name against the image's folder (QEMU
//!   resolves it against its working directory) and confined as the opener confines backing
//!   files. Compressed clusters cannot occur in such images and are refused as corrupt.
//!
//! Refused with a clear error: encryption, an external data file the header does not name or
//! that cannot be opened, extended L2 entries
//! (subclusters), images marked corrupt, images marked dirty without lazy refcounts, unknown
//! incompatible features, and backing files that are neither qcow2 nor raw.
//!
//! # Invariants
//! - **Never reads unallocated data.** Unallocated clusters (with no backing data) and zero-flag
//!   clusters are filled with zeros in memory; [`BlockSource::allocation`] is answered from the
//!   L1/L2 tables (and the backing chain's own maps) without reading any data cluster.
//! - **Bounded memory.** The L1 table is capped at 32 MiB, L2 tables live in a bounded LRU cache
//!   ([`OpenOptions::l2_cache_bytes`], 64 MiB by default, shared by the whole backing chain),
//!   the backing chain is at most [`MAX_CHAIN_LEN`] images, every length read from the image is
//!   validated before anything is allocated for it, and temporary buffers are proportional to
//!   the caller's request sizes.
//! - **No panic on hostile input.** Every offset and size read from an image is validated with
//!   checked arithmetic against the container size before use; bad metadata yields
//!   [`SourceError::Corrupt`] naming the file, the byte offset of the bad field and what is
//!   wrong with it. A deterministic corruption loop in the tests and a cargo-fuzz target
//!   (`fuzz/`) exercise this.
//!
//! # Performance
//! [`BlockSource::read_many`] maps a whole batch of guest requests to host reads first, merging
//! runs of clusters that are contiguous on the host, and then issues **one**
//! `container.read_many` for all of them (plus one for the backing image, if any clusters fall
//! through to it), so an io_uring-backed container sees the whole batch at queue depth. L2
//! tables missing from the cache for a batch are also fetched with a single `read_many`.
//!
//! # Locking
//! A [`Qcow2Source`] is `Send + Sync` and is read from several threads at once. Its only shared
//! mutable state is the L2 cache, behind one `Mutex`. The lock is held only to look up, insert
//! or evict an `Arc`'d table, never across I/O or decompression: a thread that misses reads the
//! table without the lock and then inserts it, so two threads may occasionally read the same
//! table twice, which is harmless (tables are immutable while we read the image). Everything
//! else (header, L1 table, backing chain) is immutable after [`Qcow2Source::open`].
//!
//! # Security note
//! A qcow2 image names its backing file and its external data file, and
//! [`LocalBackingOpener`] opens whatever local path that is. An image from an untrusted guest or tenant can therefore make the reader read any
//! file the process can read, as if it were that disk's base. Callers that back up untrusted
//! images should use a [`BackingOpener`] that confines backing files to an allowed directory.
//! When the header names no backing format, the backing file is probed by its magic (as QEMU
//! does), so a raw backing file whose guest wrote qcow2 magic into sector 0 would be decoded as
//! qcow2; images created by current QEMU always record the format.

mod compress;
mod header;
mod reader;
mod writer;

pub use blocksource::{resolve_backing_path, BackingOpener, BlockSource, LocalBackingOpener, SourceError};
pub use reader::{OpenOptions, Qcow2Source, DEFAULT_L2_CACHE_BYTES, MAX_CHAIN_LEN};
pub use writer::Qcow2Writer;

/// The four bytes every qcow2 image starts with.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Whether `first_bytes` (the start of a file or device) begin with the qcow2 magic.
/// Content-based format detection only: it validates nothing else, so an image with an
/// unsupported version is still detected as qcow2 (and then refused by [`Qcow2Source::open`]
/// with a clear error, instead of being misread as raw).
pub fn is_qcow2(first_bytes: &[u8]) -> bool {
    first_bytes.len() >= MAGIC.len() && first_bytes[..MAGIC.len()] == MAGIC
}
