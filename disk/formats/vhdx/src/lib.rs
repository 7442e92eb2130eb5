//! `vhdx`: read Microsoft VHDX images (Hyper-V's disk format) as a [`BlockSource`].
//!
//! # What it does
//! - [`VhdxSource`] decodes a fixed, dynamic or differencing VHDX whose raw bytes come from
//!   any other [`BlockSource`] (a local file, later NFS/iSCSI/NBD), follows a differencing
//!   chain through a [`BackingOpener`] ([`LocalBackingOpener`] for local files), replays a
//!   pending metadata log in memory, and presents the guest-visible disk: reads, and an
//!   allocation map computed from the BAT (and sector bitmaps) alone.
//! - [`is_vhdx`] tells a VHDX image from other content by its file type identifier.
//!
//! # On-disk structures (MS-VHDX v1.0)
//! All integers are little-endian; GUIDs are in their mixed-endian binary form.
//! - **Header section** (first 1 MiB): the file type identifier (`vhdxfile` + creator) at 0;
//!   two 4 KiB headers at 64 KiB and 128 KiB (`head`, CRC-32C with the checksum field zeroed,
//!   SequenceNumber, FileWriteGuid, DataWriteGuid, LogGuid, LogVersion, Version = 1,
//!   LogLength, LogOffset), of which the valid one with the higher sequence number is current;
//!   the 64 KiB region table at 192 KiB (`regi`, CRC-32C, up to 2047 entries of GUID, file
//!   offset, length, required flag) and its copy at 256 KiB, locating the BAT and the metadata
//!   region.
//! - **Log** (at LogOffset): a ring of entries that replay metadata writes; see `log.rs`. If
//!   the current header's LogGuid is non-zero the log must be replayed before anything else.
//! - **Metadata region**: a 64 KiB table (`metadata`, up to 2047 entries of item GUID,
//!   offset, length, IsUser / IsVirtualDisk / IsRequired flags) then the items: File Parameters
//!   (block size 1-256 MiB, power of two; LeaveBlockAllocated; HasParent), Virtual Disk Size
//!   (≤ 64 TiB, a multiple of the logical sector), Virtual Disk ID (Page 83 data), Logical and
//!   Physical Sector Size (512 or 4096) and, for differencing images, the Parent Locator
//!   (UTF-16 key/value pairs: parent_linkage, relative_path, volume_path, absolute_win32_path).
//! - **BAT**: 64-bit entries (state in bits 0-2, file offset in MiB in bits 20-63). Payload
//!   block entries are interleaved with one sector bitmap entry after every *chunk ratio*
//!   payload entries, chunk ratio = 2^23 × logical sector size / block size. Payload states:
//!   NOT_PRESENT (0), UNDEFINED (1), ZERO (2), UNMAPPED (3), FULLY_PRESENT (6) and, in
//!   differencing images only, PARTIALLY_PRESENT (7), whose sectors are in this file when their
//!   bit (LSB first) in the chunk's 1 MiB sector bitmap block is set, else in the parent.
//!
//! Refused with a clear error: unknown regions or metadata items marked required, format or
//! log versions other than 1 and 0, parent locators of a non-VHDX type, pending logs larger
//! than [`MAX_REPLAY_LOG`], BATs of more than [`MAX_PAYLOAD_BLOCKS`] blocks, and chains longer
//! than [`MAX_CHAIN_LEN`].
//!
//! # Invariants
//! - **Never reads unallocated data.** NOT_PRESENT (without a parent), UNDEFINED, ZERO and
//!   UNMAPPED blocks read as zeros without touching the file (the spec allows zeros for all of
//!   them; QEMU returns zeros too) and are reported as [`ExtentKind::Zero`](blocksource::ExtentKind);
//!   NOT_PRESENT blocks of a differencing image, and the absent sectors of PARTIALLY_PRESENT
//!   ones, defer to the parent, for reads and for the allocation map.
//! - **The container is never written.** A pending log is replayed into an in-memory overlay
//!   of the file's sectors that every later read of the file goes through.
//! - **Bounded memory.** Every length read from the file is validated before anything is
//!   allocated for it: tables are fixed 64 KiB, metadata items at most 1 MiB, the replayed log
//!   at most [`MAX_REPLAY_LOG`], the BAT is decoded into 4 bytes per payload block (and must fit
//!   in its region, which must fit in the file), and read buffers are proportional to the
//!   caller's requests.
//! - **No panic on hostile input.** Every offset from the file is checked against the file
//!   size with overflow-free arithmetic at open time: regions and log inside the file and not
//!   overlapping, metadata items inside their region and not overlapping, every present block
//!   after the header section, inside the file and clear of the BAT, metadata and log. Bad
//!   metadata yields [`SourceError::Corrupt`] naming the file, the byte offset of the bad field
//!   and what is wrong. A deterministic corruption loop in the tests and a cargo-fuzz target
//!   (`fuzz/`) exercise this.
//!
//! # Performance and locking
//! [`BlockSource::read_many`] maps a whole batch of guest requests to file reads first
//! (merging runs contiguous in the file), reads the sector bitmaps it needs in one batch, then
//! issues **one** `read_many` on the container for all data (and one on the parent for what
//! falls through to it). A [`VhdxSource`] is immutable after [`VhdxSource::open`]: the BAT is
//! loaded whole, there is no cache and no lock, so concurrent `read_many` calls from several
//! threads never contend.
//!
//! # Security note
//! A differencing image names its parent, and [`LocalBackingOpener`] opens whatever local path
//! that is. Images from untrusted tenants should be opened with a [`BackingOpener`] confined to
//! an allowed directory. A parent is only used if its DataWriteGuid matches the child's
//! parent_linkage, which also rejects a parent modified after the child was made.

mod bat;
mod format;
mod header;
mod host;
mod log;
mod reader;

pub use bat::MAX_PAYLOAD_BLOCKS;
pub use blocksource::{resolve_backing_path, BackingOpener, BlockSource, LocalBackingOpener, SourceError};
pub use log::MAX_REPLAY_LOG;
pub use reader::{VhdxSource, MAX_CHAIN_LEN};

/// The signature of the file type identifier every VHDX image starts with.
pub const SIGNATURE: [u8; 8] = *b"vhdxfile";

/// Whether `first_bytes` (the start of a file or device) begin with the VHDX file type
/// identifier. Content-based format detection only: nothing else is validated, so a damaged
/// VHDX is still detected as VHDX (and then refused by [`VhdxSource::open`] with a clear error,
/// instead of being misread as raw).
pub fn is_vhdx(first_bytes: &[u8]) -> bool {
    first_bytes.len() >= SIGNATURE.len() && first_bytes[..SIGNATURE.len()] == SIGNATURE
}
