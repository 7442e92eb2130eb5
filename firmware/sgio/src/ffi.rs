//! The kernel ABI of the sg driver (`<scsi/sg.h>`): the `sg_io_hdr` struct, which neither
//! `libc` nor `nix` defines, the ioctl numbers, and the ioctl wrappers.
//!
//! Everything here is checked against the kernel's layout by the tests at the bottom (88 bytes
//! on every 64-bit Linux target, 64 on 32-bit ones).

use std::ffi::{c_int, c_uchar, c_uint, c_ushort, c_void};
use std::os::fd::{AsRawFd, BorrowedFd};

/// `interface_id` of the v3 interface: `'S'`.
pub(crate) const SG_INTERFACE_ID: c_int = b'S' as c_int;

/// `dxfer_direction` values.
pub(crate) const SG_DXFER_NONE: c_int = -1;
pub(crate) const SG_DXFER_TO_DEV: c_int = -2;
pub(crate) const SG_DXFER_FROM_DEV: c_int = -3;

/// `SCSI_GENERIC_MAJOR` (`<linux/major.h>`): the sg driver's fixed character major.
pub(crate) const SCSI_GENERIC_MAJOR: u32 = 21;
/// `SCSI_TAPE_MAJOR`: the st driver's (`/dev/st*`, `/dev/nst*`).
pub(crate) const SCSI_TAPE_MAJOR: u32 = 9;

/// Longest CDB the sg driver accepts (`SG_MAX_CDB_SIZE`); the shortest it accepts is 6.
pub(crate) const SG_MAX_CDB_SIZE: usize = 252;
/// Sense buffer handed to the kernel with every command (SPC allows at most 252; 96 is what
/// the midlayer keeps, `SCSI_SENSE_BUFFERSIZE`).
pub(crate) const SENSE_LEN: usize = 96;

/// `struct sg_io_hdr` from `<scsi/sg.h>`, field for field. `[i]` fields are read by the
/// kernel, `[o]` fields written by it.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct SgIoHdr {
    /// [i] `'S'`.
    pub interface_id: c_int,
    /// [i] `SG_DXFER_*`.
    pub dxfer_direction: c_int,
    /// [i] CDB length.
    pub cmd_len: c_uchar,
    /// [i] capacity of the buffer at `sbp`.
    pub mx_sb_len: c_uchar,
    /// [i] 0: `dxferp` is a plain buffer, not an iovec array.
    pub iovec_count: c_ushort,
    /// [i] data buffer length.
    pub dxfer_len: c_uint,
    /// [i] data buffer (read by the kernel for TO_DEV, written for FROM_DEV).
    pub dxferp: *mut c_void,
    /// [i] the CDB (only read).
    pub cmdp: *const c_uchar,
    /// [i] the sense buffer (written, at most `mx_sb_len` bytes).
    pub sbp: *mut c_uchar,
    /// [i] milliseconds; `u32::MAX` means no timeout.
    pub timeout: c_uint,
    /// [i] `SG_FLAG_*`; 0 is indirect I/O through kernel buffers.
    pub flags: c_uint,
    /// [i->o] unused by SG_IO.
    pub pack_id: c_int,
    /// [i->o] unused by SG_IO.
    pub usr_ptr: *mut c_void,
    /// [o] the SCSI status byte.
    pub status: c_uchar,
    /// [o] `(status >> 1) & 0x7f`, for old programs.
    pub masked_status: c_uchar,
    /// [o] messaging level status (SPI only).
    pub msg_status: c_uchar,
    /// [o] sense bytes written at `sbp`.
    pub sb_len_wr: c_uchar,
    /// [o] the HBA driver's verdict (`DID_*`).
    pub host_status: c_ushort,
    /// [o] the midlayer's verdict (`DRIVER_*` | `SUGGEST_*`).
    pub driver_status: c_ushort,
    /// [o] `dxfer_len` minus the bytes really transferred (as the HBA reports it).
    pub resid: c_int,
    /// [o] milliseconds the command took.
    pub duration: c_uint,
    /// [o] `SG_INFO_*` bits.
    pub info: c_uint,
}

impl SgIoHdr {
    /// A header with every field zero and every pointer null.
    pub(crate) fn zeroed() -> SgIoHdr {
        SgIoHdr {
            interface_id: 0,
            dxfer_direction: 0,
            cmd_len: 0,
            mx_sb_len: 0,
            iovec_count: 0,
            dxfer_len: 0,
            dxferp: std::ptr::null_mut(),
            cmdp: std::ptr::null(),
            sbp: std::ptr::null_mut(),
            timeout: 0,
            flags: 0,
            pack_id: 0,
            usr_ptr: std::ptr::null_mut(),
            status: 0,
            masked_status: 0,
            msg_status: 0,
            sb_len_wr: 0,
            host_status: 0,
            driver_status: 0,
            resid: 0,
            duration: 0,
            info: 0,
        }
    }
}

/// The raw ioctls. They are "bad" ioctls in nix's sense: the numbers predate the `_IOC`
/// encoding.
mod raw {
    use super::SgIoHdr;
    use std::ffi::c_int;

    nix::ioctl_readwrite_bad!(sg_io, 0x2285, SgIoHdr);
    nix::ioctl_read_bad!(sg_get_version_num, 0x2282, c_int);
    nix::ioctl_read_bad!(sg_get_reserved_size, 0x2272, c_int);
    nix::ioctl_write_ptr_bad!(sg_set_reserved_size, 0x2275, c_int);
}

/// `SG_GET_VERSION_NUM`: the sg driver's version as `major * 10000 + minor * 100 + patch`.
/// Any other driver answers `ENOTTY` (or, for some, `EINVAL`).
pub(crate) fn get_version_num(fd: BorrowedFd<'_>) -> nix::Result<i32> {
    let mut v: c_int = 0;
    // SAFETY: the fd is open for the borrow's lifetime; the kernel writes one int to `v`,
    // which lives on this stack frame until the call returns. On a non-sg fd the driver
    // either rejects the number (ENOTTY) or, as st and sd do, answers it the same way.
    unsafe { raw::sg_get_version_num(fd.as_raw_fd(), &mut v) }?;
    Ok(v)
}

/// `SG_GET_RESERVED_SIZE`: bytes of the buffer the driver keeps for this fd.
pub(crate) fn get_reserved_size(fd: BorrowedFd<'_>) -> nix::Result<i32> {
    let mut v: c_int = 0;
    // SAFETY: as in `get_version_num`: one int written to a live local. Only called on fds
    // that answered SG_GET_VERSION_NUM as the sg driver.
    unsafe { raw::sg_get_reserved_size(fd.as_raw_fd(), &mut v) }?;
    Ok(v)
}

/// `SG_SET_RESERVED_SIZE`: asks for a reserved buffer of `bytes`; the kernel clamps it to the
/// queue's `max_sectors` and may settle for less if memory is short.
pub(crate) fn set_reserved_size(fd: BorrowedFd<'_>, bytes: i32) -> nix::Result<()> {
    let v: c_int = bytes;
    // SAFETY: the kernel reads one int from `v`, a live local; only called on sg fds.
    unsafe { raw::sg_set_reserved_size(fd.as_raw_fd(), &v) }?;
    Ok(())
}

/// `SG_IO`: runs the command `hdr` describes and waits for it.
///
/// # Safety
/// Every pointer in `hdr` must be valid for its length and direction for the whole call:
/// `cmdp` readable for `cmd_len` bytes, `sbp` writable for `mx_sb_len` bytes, `dxferp`
/// readable (TO_DEV) or writable (FROM_DEV) for `dxfer_len` bytes, and no other reference to
/// a buffer the kernel writes may be used meanwhile. `iovec_count` must be 0 and `flags` must
/// not ask for mmap'ed or direct I/O. `fd` must be an sg device.
pub(crate) unsafe fn sg_io(fd: BorrowedFd<'_>, hdr: &mut SgIoHdr) -> nix::Result<()> {
    // SAFETY: the caller guarantees the pointers in `hdr`; `hdr` itself is a live exclusive
    // reference, which the kernel reads and writes back (88 bytes, the size checked below).
    unsafe { raw::sg_io(fd.as_raw_fd(), hdr) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    /// Offsets from the kernel's `<scsi/sg.h>` on LP64 targets (x86_64, aarch64, riscv64,
    /// ppc64le, s390x all agree: natural alignment, 8-byte pointers).
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    #[test]
    fn sg_io_hdr_matches_the_kernel_abi_on_64_bit() {
        assert_eq!(size_of::<SgIoHdr>(), 88);
        assert_eq!(align_of::<SgIoHdr>(), 8);
        let expect = [
            ("interface_id", offset_of!(SgIoHdr, interface_id), 0),
            ("dxfer_direction", offset_of!(SgIoHdr, dxfer_direction), 4),
            ("cmd_len", offset_of!(SgIoHdr, cmd_len), 8),
            ("mx_sb_len", offset_of!(SgIoHdr, mx_sb_len), 9),
            ("iovec_count", offset_of!(SgIoHdr, iovec_count), 10),
            ("dxfer_len", offset_of!(SgIoHdr, dxfer_len), 12),
            ("dxferp", offset_of!(SgIoHdr, dxferp), 16),
            ("cmdp", offset_of!(SgIoHdr, cmdp), 24),
            ("sbp", offset_of!(SgIoHdr, sbp), 32),
            ("timeout", offset_of!(SgIoHdr, timeout), 40),
            ("flags", offset_of!(SgIoHdr, flags), 44),
            ("pack_id", offset_of!(SgIoHdr, pack_id), 48),
            ("usr_ptr", offset_of!(SgIoHdr, usr_ptr), 56),
            ("status", offset_of!(SgIoHdr, status), 64),
            ("masked_status", offset_of!(SgIoHdr, masked_status), 65),
            ("msg_status", offset_of!(SgIoHdr, msg_status), 66),
            ("sb_len_wr", offset_of!(SgIoHdr, sb_len_wr), 67),
            ("host_status", offset_of!(SgIoHdr, host_status), 68),
            ("driver_status", offset_of!(SgIoHdr, driver_status), 70),
            ("resid", offset_of!(SgIoHdr, resid), 72),
            ("duration", offset_of!(SgIoHdr, duration), 76),
            ("info", offset_of!(SgIoHdr, info), 80),
        ];
        for (field, got, want) in expect {
            assert_eq!(got, want, "offset of sg_io_hdr.{field}");
        }
    }

    /// The same struct on ILP32 targets (armv7, i686): 4-byte pointers, 64 bytes.
    #[cfg(all(target_os = "linux", target_pointer_width = "32"))]
    #[test]
    fn sg_io_hdr_matches_the_kernel_abi_on_32_bit() {
        assert_eq!(size_of::<SgIoHdr>(), 64);
        assert_eq!(offset_of!(SgIoHdr, dxferp), 16);
        assert_eq!(offset_of!(SgIoHdr, cmdp), 20);
        assert_eq!(offset_of!(SgIoHdr, sbp), 24);
        assert_eq!(offset_of!(SgIoHdr, timeout), 28);
        assert_eq!(offset_of!(SgIoHdr, usr_ptr), 40);
        assert_eq!(offset_of!(SgIoHdr, status), 44);
        assert_eq!(offset_of!(SgIoHdr, host_status), 48);
        assert_eq!(offset_of!(SgIoHdr, resid), 52);
        assert_eq!(offset_of!(SgIoHdr, info), 60);
    }

    #[test]
    fn ioctl_numbers_and_constants_match_the_kernel_headers() {
        // The numbers are literals in the `raw` module; these repeat <scsi/sg.h> so a typo in
        // one place shows.
        assert_eq!(SG_INTERFACE_ID, 0x53);
        assert_eq!((SG_DXFER_NONE, SG_DXFER_TO_DEV, SG_DXFER_FROM_DEV), (-1, -2, -3));
        assert_eq!(SENSE_LEN, 96);
        assert!(SENSE_LEN <= u8::MAX as usize, "mx_sb_len is a u8");
        assert!(SG_MAX_CDB_SIZE <= u8::MAX as usize, "cmd_len is a u8");
    }

    #[test]
    fn zeroed_header_is_all_zero() {
        let h = SgIoHdr::zeroed();
        assert!(h.dxferp.is_null() && h.cmdp.is_null() && h.sbp.is_null() && h.usr_ptr.is_null());
        assert_eq!((h.interface_id, h.dxfer_len, h.iovec_count, h.flags), (0, 0, 0, 0));
    }
}
