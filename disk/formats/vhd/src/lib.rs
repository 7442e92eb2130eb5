//! `vhd`: read Microsoft VHD images (Virtual PC, Hyper-V 2008, Azure; QEMU calls the format
//! `vpc`) as a [`BlockSource`].
//!
//! # What it does
//! - [`VhdSource`] decodes a fixed or dynamic VHD whose raw bytes come from any other
//!   [`BlockSource`] (a local file, an NFS file, a LUN) and presents the guest-visible disk:
//!   reads, and an allocation map computed from the block allocation table alone.
//! - [`is_vhd`] and [`is_vhd_footer`] tell a VHD from other content: a dynamic image starts
//!   with a copy of its footer, a fixed image is the guest disk followed by the footer.
//!
//! # On-disk structures (Microsoft "Virtual Hard Disk Image Format Specification" 1.0)
//! All integers are big-endian; checksums are the one's complement of the byte sum of the
//! structure with its checksum field taken as zero.
//! - **Footer** (512 bytes, the last sector of every VHD; dynamic images also keep a copy in
//!   the first sector): cookie `conectix`, features, format version, data offset (the dynamic
//!   header's file offset, all ones for fixed disks), timestamp, creator application, original
//!   and current size, CHS geometry, disk type (2 fixed, 3 dynamic, 4 differencing), checksum,
//!   unique id, saved state.
//! - **Fixed disk**: the guest disk's bytes at file offset 0, then the footer.
//! - **Dynamic header** (1024 bytes at the footer's data offset): cookie `cxsparse`, BAT offset,
//!   header version 1.0, max table entries, block size (2 MiB by default, a power of two),
//!   checksum, and for differencing disks the parent's id, name and locators.
//! - **BAT**: one 32-bit entry per block, the file *sector* of the block, or `0xFFFFFFFF` for
//!   a block that is not allocated (it reads as zeros). An allocated block is its sector bitmap
//!   (one bit per 512-byte sector, padded to whole sectors) followed by the block's data. The
//!   specification requires sectors whose bitmap bit is clear to hold zeros on disk, so a
//!   dynamic disk's data is read directly without its bitmap (as QEMU does).
//!
//! The guest disk's size is the footer's current size (what Hyper-V, Azure and the images QEMU
//! makes use; QEMU derives the size of Virtual PC images from their CHS geometry instead, which
//! can be a few sectors smaller: those sectors are kept rather than dropped).
//!
//! Refused with a clear error: differencing disks (merge them into their parent first), dynamic
//! headers of another version, block sizes that are not a power of two between 512 bytes and
//! 256 MiB, and BATs of more than [`MAX_BAT_ENTRIES`] blocks.
//!
//! # Invariants
//! - **Never reads unallocated data.** Unallocated blocks read as zeros without touching the
//!   file and are reported as [`ExtentKind::Zero`](blocksource::ExtentKind); the allocation
//!   map of a dynamic disk comes from the BAT alone, that of a fixed disk from its container.
//! - **Bounded memory.** The BAT is decoded into 4 bytes per block and capped at
//!   [`MAX_BAT_ENTRIES`]; headers are fixed-size; read buffers are the caller's.
//! - **No panic on hostile input.** Both checksums are checked; every offset from the file is
//!   checked with overflow-free arithmetic against the file size at open time (the dynamic
//!   header, the BAT, and every allocated block with its bitmap inside the file), and a BAT too
//!   small for the disk is refused. Bad metadata yields [`SourceError::Corrupt`] naming the
//!   file, the byte offset of the bad field and what is wrong. A deterministic corruption loop
//!   in the tests and a cargo-fuzz target (`fuzz/`) exercise this.
//!
//! # Performance and locking
//! [`BlockSource::read_many`] maps a whole batch of guest requests to file reads first
//! (merging runs contiguous in the file) and issues **one** `read_many` on the container. A
//! [`VhdSource`] is immutable after [`VhdSource::open`] (the BAT is loaded whole), so
//! concurrent reads from several threads never contend.
//!
//! # Security note
//! A fixed VHD is recognised by a valid footer in its last sector. A raw disk whose guest wrote
//! a valid fixed-VHD footer with a matching size into its own last sector would be read as
//! that VHD, which drops the footer sector from the backup; nothing else changes.

mod footer;
mod reader;

pub use blocksource::{BackingOpener, BlockSource, SourceError};
pub use footer::{DiskType, FOOTER_LEN};
pub use reader::{VhdSource, MAX_BAT_ENTRIES};

/// The cookie every VHD footer (and the copy at the start of a dynamic image) begins with.
pub const COOKIE: [u8; 8] = *b"conectix";

/// Whether `first_bytes` (the start of a file or device) begin with a VHD footer cookie: a
/// dynamic or differencing VHD. Content-based detection only: nothing else is validated, so a
/// damaged VHD is still detected (and then refused by [`VhdSource::open`] with a clear error,
/// instead of being misread as raw). Fixed VHDs keep their footer only at the end: see
/// [`is_vhd_footer`].
pub fn is_vhd(first_bytes: &[u8]) -> bool {
    first_bytes.len() >= COOKIE.len() && first_bytes[..COOKIE.len()] == COOKIE
}

/// Whether `last_sector` (the last 512 bytes of a file or device of `file_size` bytes) is a
/// VHD footer: the cookie, a valid checksum and a known disk type, and for a fixed disk a
/// current size that fits in front of the footer. Stricter than [`is_vhd`], since the last
/// sector of a raw disk is guest data that could start with anything.
pub fn is_vhd_footer(last_sector: &[u8], file_size: u64) -> bool {
    let Ok(f) = footer::Footer::parse(last_sector, "probe", 0) else { return false };
    match f.disk_type {
        DiskType::Fixed => f.current_size.checked_add(FOOTER_LEN).is_some_and(|end| end <= file_size),
        DiskType::Dynamic | DiskType::Differencing => true,
    }
}
