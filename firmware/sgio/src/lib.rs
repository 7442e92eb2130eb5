//! `sgio`: a [`scsi::ScsiTransport`] over the Linux SG_IO ioctl on SCSI generic nodes
//! (`/dev/sgN`), the production path to tape drives and media changers attached by SAS or
//! Fibre Channel.
//!
//! - [`SgDevice::open`] opens one node, checks it really is the sg driver's, and
//!   [`SgDevice`] implements [`ScsiTransport`]: one SG_IO per command.
//! - [`list_devices`] lists the sg nodes with their peripheral type (tape, changer, disk),
//!   vendor, model and revision from sysfs, without opening any of them.
//!
//! Only the sg driver is used. The st tape driver's nodes (`/dev/stN`, `/dev/nstN`) and block
//! devices (`/dev/sdX`) also answer SG_IO, but st rewinds on close (`/dev/stN`), keeps its own
//! idea of the position and blocks at open while a tape loads; [`SgDevice::open`] refuses them
//! *before* opening, by looking at the node's major number (21 is sg's).
//!
//! # Invariants
//! - **Buffer lifetimes.** `execute` builds an `sg_io_hdr` whose pointers (CDB, data buffer,
//!   sense buffer) borrow from the [`scsi::Command`] and from a sense array on its own stack
//!   frame; SG_IO is synchronous, and with `flags = 0` (indirect I/O, no mmap, no direct I/O)
//!   the kernel copies through its own buffers and is done with ours when the ioctl returns,
//!   on success, on error, and when a signal interrupts the wait (the command is then
//!   *orphaned*: its result is dropped in the kernel, never copied to our buffers). So no
//!   buffer is touched after `execute` returns, and the `&mut` borrow of the command's data
//!   buffer covers the whole time the kernel may write it.
//! - **Bounded writes.** The kernel writes at most `dxfer_len` (the buffer's length) data bytes
//!   and at most `mx_sb_len` (96) sense bytes; `Completion::transferred` never exceeds the
//!   buffer's length even if the HBA reports a nonsense residual.
//! - **Why `O_NONBLOCK`.** Without it, `open` of an sg node sleeps while another program holds
//!   it with `O_EXCL`; with it, the open fails at once with `EBUSY`
//!   ([`SgError::Busy`]). It does not make SG_IO asynchronous: SG_IO always waits for its
//!   command. `O_RDWR` is needed because the kernel lets read-only fds send only its list of
//!   "read-safe" commands. `O_CLOEXEC` keeps the fd out of spawned programs.
//! - **Threads.** [`SgDevice`] is `Send + Sync`. Each SG_IO is synchronous and independent: the
//!   fd may be used from several threads at once, each call queuing its own request (the sg
//!   driver allows 16 in flight per fd, then fails with `EDOM`). Commands from different
//!   threads are *not* ordered with respect to each other: tape commands depend on the head
//!   position, so the tape code issues them from one place at a time (the `drive` crate does).
//!   [`ScsiTransport::execute_many`] runs its batch one after the other, in order.
//! - **No automatic retries.** A command that failed in transit (reset, timeout, link loss, a
//!   signal) may or may not have reached the drive; on tape re-sending a WRITE could write a
//!   block twice. Errors are returned with a [`TransportErrorKind`] and the caller decides.
//!   (If a signal handler installed with `SA_RESTART` interrupts SG_IO, the *kernel* re-issues
//!   the call; the firmware installs no such handlers on threads that drive tapes.)
//! - **Unsafe** lives only in this crate's ioctl calls (`ffi.rs` and `execute`), each block
//!   with a `SAFETY:` note; `sg_io_hdr` is defined here (neither `libc` nor `nix` has it) and
//!   its layout is tested against the kernel ABI.
//!
//! # Transfer length limit
//! One SG_IO moves at most what the device's request queue allows (`max_sectors`, typically
//! 512 KiB to a few MiB depending on the HBA) and what the sg driver can gather
//! (`SG_GET_SG_TABLESIZE` elements); above that the ioctl fails (`ENOMEM`, `EINVAL`) and
//! `execute` returns [`TransportErrorKind::Unsupported`] naming the length. Tape blocks of
//! 256 KiB to 1 MiB are fine on SAS and FC HBAs. [`SgDevice::reserve`] asks the driver to keep a
//! buffer of a given size for this fd (the kernel clamps it to `max_sectors`, so the granted
//! size also tells the queue's limit); transfers that fit it avoid a kernel allocation per
//! command. Without it the default reserved buffer is 32 KiB (module parameter
//! `sg.def_reserved_size`) and larger transfers allocate per command.
//!
//! # Mapping the kernel's answer
//! `status & 0x7e` becomes [`scsi::Status`]; the sense bytes the kernel wrote
//! (`sb_len_wr`) are decoded by [`scsi::Sense::parse`]; `resid` (expected minus actual bytes)
//! becomes the [`scsi::Residual`] and `transferred`. `host_status` (`DID_*`, the HBA) and
//! `driver_status` (`DRIVER_*`, the midlayer) that signal a failed path become a
//! [`scsi::TransportError`] whose message names the device, the command, the code and what to
//! check (cable, power, HBA); see `status.rs` for the table. A CHECK CONDITION with sense bytes
//! is always the device's answer, as sg3_utils treats it.

mod error;
mod ffi;
mod status;
mod sysfs;

pub use error::SgError;
pub use status::Layer;
pub use sysfs::{list_devices, list_devices_in, DeviceKind, SgDeviceInfo};

use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use scsi::{Command, Completion, DataDir, Residual, ScsiTransport, Sense, Status, TransportError, TransportErrorKind};

use ffi::{SgIoHdr, SCSI_GENERIC_MAJOR, SCSI_TAPE_MAJOR, SENSE_LEN, SG_MAX_CDB_SIZE};
use status::Outcome;

/// Timeout of a command whose [`Command::timeout`] is `None`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Oldest sg driver with the v3 interface (SG_IO): 3.0.0.
const MIN_VERSION: i32 = 30000;

/// An open SCSI generic device (`/dev/sgN`): one logical unit, reached through SG_IO.
pub struct SgDevice {
    fd: OwnedFd,
    path: PathBuf,
    version: i32,
}

impl fmt::Debug for SgDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SgDevice").field("path", &self.path).field("sg_version", &self.version).finish()
    }
}

impl SgDevice {
    /// Opens `path` (`/dev/sgN`, or a symlink to one such as `/dev/tape/by-id/...`)
    /// read-write, non-blocking, close-on-exec, and checks that it is the sg driver's (major 21,
    /// `SG_GET_VERSION_NUM` at least 3.0.0). Anything else is refused before it is opened, with
    /// [`SgError::NotSg`] saying what it is; a missing node, a permission problem or an
    /// exclusive holder have their own variants.
    pub fn open(path: &Path) -> Result<SgDevice, SgError> {
        let meta = fs::metadata(path).map_err(|e| open_error(path, e))?;
        if let Some(why) = not_sg_reason(&meta.file_type(), meta.rdev()) {
            return Err(SgError::NotSg { path: path.to_path_buf(), why });
        }
        let dev = Self::open_unchecked(path)?;
        // The node could have been replaced between stat and open; check what we really opened.
        let st = nix::sys::stat::fstat(dev.fd.as_fd()).map_err(|e| open_error(path, e.into()))?;
        if nix::sys::stat::major(st.st_rdev) != u64::from(SCSI_GENERIC_MAJOR) {
            return Err(SgError::NotSg {
                path: path.to_path_buf(),
                why: "the node changed while it was opened".into(),
            });
        }
        Ok(dev)
    }

    /// Opens without the node-type check and verifies the driver by `SG_GET_VERSION_NUM` only.
    fn open_unchecked(path: &Path) -> Result<SgDevice, SgError> {
        let flags = OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(path, flags, Mode::empty()).map_err(|e| open_error(path, e.into()))?;
        let version = match ffi::get_version_num(fd.as_fd()) {
            Ok(v) => v,
            Err(e @ (Errno::ENOTTY | Errno::EINVAL | Errno::ENOSYS)) => {
                return Err(SgError::NotSg {
                    path: path.to_path_buf(),
                    why: format!("it does not answer the SG_GET_VERSION_NUM ioctl ({})", e.desc()),
                });
            }
            Err(e) => return Err(open_error(path, e.into())),
        };
        if version < MIN_VERSION {
            return Err(SgError::TooOld { path: path.to_path_buf(), version });
        }
        Ok(SgDevice { fd, path: path.to_path_buf(), version })
    }

    /// The path this device was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sg driver's version (`major * 10000 + minor * 100 + patch`, e.g. 30536).
    pub fn driver_version(&self) -> i32 {
        self.version
    }

    /// Bytes of the buffer the sg driver keeps for this fd (`SG_GET_RESERVED_SIZE`).
    pub fn reserved_size(&self) -> Result<usize, SgError> {
        ffi::get_reserved_size(self.fd.as_fd())
            .map(|v| v.max(0) as usize)
            .map_err(|e| self.query_error("SG_GET_RESERVED_SIZE", e))
    }

    /// Asks the sg driver to keep a buffer of `bytes` for this fd (`SG_SET_RESERVED_SIZE`) and
    /// returns the size granted: the kernel clamps the request to the request queue's
    /// `max_sectors` (so `reserve(usize::MAX)` reveals the largest transfer one command can
    /// make) and settles for less when memory is short. Call it before issuing commands: it
    /// fails with `EBUSY` while a command uses the reserved buffer.
    pub fn reserve(&self, bytes: usize) -> Result<usize, SgError> {
        let want = i32::try_from(bytes).unwrap_or(i32::MAX);
        ffi::set_reserved_size(self.fd.as_fd(), want).map_err(|e| self.query_error("SG_SET_RESERVED_SIZE", e))?;
        self.reserved_size()
    }

    fn query_error(&self, what: &str, e: Errno) -> SgError {
        SgError::Ioctl {
            device: self.path.clone(),
            command: what.to_string(),
            source: e.into(),
            hint: "the sg driver refused the request; check `dmesg`",
        }
    }
}

/// Why a node with this type and device number is not an sg node, or `None` if it is.
fn not_sg_reason(ft: &fs::FileType, rdev: u64) -> Option<String> {
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    if ft.is_char_device() {
        return match major {
            m if m == u64::from(SCSI_GENERIC_MAJOR) => None,
            m if m == u64::from(SCSI_TAPE_MAJOR) => Some(format!(
                "it is a node of the st tape driver (character device {major}:{minor}, /dev/stN or /dev/nstN); \
                 rackvault does not use st and did not open it: use the /dev/sgN node of the same drive"
            )),
            _ => Some(format!(
                "it is character device {major}:{minor} of another driver (the sg driver's major number is \
                 {SCSI_GENERIC_MAJOR})"
            )),
        };
    }
    Some(if ft.is_block_device() {
        format!(
            "it is a block device ({major}:{minor}); rackvault drives tapes and changers through the sg driver \
             only: use the /dev/sgN node of the same device"
        )
    } else if ft.is_dir() {
        "it is a directory".to_string()
    } else if ft.is_file() {
        "it is a regular file".to_string()
    } else if ft.is_fifo() {
        "it is a FIFO".to_string()
    } else if ft.is_socket() {
        "it is a socket".to_string()
    } else {
        "it is not a character device".to_string()
    })
}

fn open_error(path: &Path, e: io::Error) -> SgError {
    let path = path.to_path_buf();
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT) => SgError::NotFound { path },
        Some(Errno::ENXIO | Errno::ENODEV) => SgError::NoDevice { path },
        Some(Errno::EACCES | Errno::EPERM | Errno::EROFS) => SgError::PermissionDenied { path },
        Some(Errno::EBUSY) => SgError::Busy { path },
        _ => SgError::Open { path, source: e },
    }
}

/// The SG_IO timeout field for a command: milliseconds, at least 1, below `u32::MAX` (which
/// would mean "no timeout").
fn timeout_ms(t: Option<Duration>) -> u32 {
    let ms = t.unwrap_or(DEFAULT_TIMEOUT).as_millis();
    ms.clamp(1, u128::from(u32::MAX - 1)) as u32
}

/// The completion of a command the device answered. `sense` is the whole sense buffer,
/// `sense_written` the kernel's `sb_len_wr`, `resid` its residual count, `len` the buffer's
/// length.
fn completion(status: u8, sense: &[u8], sense_written: u8, resid: i32, len: usize) -> Completion {
    let status = Status::from_byte(status & status::STATUS_MASK);
    let sense_bytes = &sense[..usize::from(sense_written).min(sense.len())];
    let sense = if sense_bytes.is_empty() { None } else { Sense::parse(sense_bytes) };
    let (residual, transferred) = match resid {
        0 => (Residual::None, len),
        r if r > 0 => {
            // A residual larger than the buffer is an HBA bug; never report more than was asked.
            let under = (r as usize).min(len);
            (if under == 0 { Residual::None } else { Residual::Under(under) }, len - under)
        }
        r => (Residual::Over(r.unsigned_abs() as usize), len),
    };
    Completion { status, sense, residual, transferred }
}

/// Kind and advice for an errno from the SG_IO call itself (the kernel refused or lost the
/// request; no SCSI status exists).
fn ioctl_failure(e: Errno, len: usize) -> (TransportErrorKind, &'static str) {
    use TransportErrorKind::*;
    match e {
        Errno::EPERM | Errno::EACCES => (
            Refused,
            "the kernel refused this command: without CAP_SYS_RAWIO only the commands on the kernel's SCSI \
             command filter are allowed; run as root, or grant the program the CAP_SYS_RAWIO capability",
        ),
        Errno::ENODEV | Errno::ENXIO => (
            ConnectionLost,
            "the device was removed (hot unplug or a lost link); check the cable and power, then look for it \
             again with `rackvault tape devices`",
        ),
        Errno::EINTR => (
            Other,
            "interrupted by a signal; the command may still have run on the device (a tape drive's position is \
             unknown: rewind or locate before writing)",
        ),
        Errno::EDOM | Errno::EAGAIN => {
            (Other, "too many commands in flight on this device (the sg driver allows 16 per open file)")
        }
        Errno::ENOMEM | Errno::EINVAL | Errno::EMSGSIZE | Errno::E2BIG | Errno::EOVERFLOW if len > 0 => (
            Unsupported,
            "the transfer is probably larger than this HBA allows in one command (the request queue's \
             max_sectors, see SgDevice::reserve) or kernel memory is short; use smaller blocks",
        ),
        Errno::EINVAL | Errno::EMSGSIZE => (Unsupported, "the kernel rejected the request (CDB length or flags)"),
        Errno::ENOMEM => (Other, "the kernel is out of memory"),
        Errno::EIO => (ConnectionLost, "I/O error on the path to the device; check the cable, power and HBA"),
        _ => (Other, "check `dmesg`"),
    }
}

impl ScsiTransport for SgDevice {
    fn execute(&self, cmd: &mut Command<'_>) -> Result<Completion, TransportError> {
        let unsupported = |detail: String| {
            TransportError::new(
                TransportErrorKind::Unsupported,
                SgError::Unsupported { device: self.path.clone(), command: scsi::cdb::name(cmd.cdb), detail },
            )
        };
        if !(6..=SG_MAX_CDB_SIZE).contains(&cmd.cdb.len()) {
            return Err(unsupported(format!(
                "a {}-byte CDB (SG_IO takes 6 to {SG_MAX_CDB_SIZE} bytes)",
                cmd.cdb.len()
            )));
        }
        let len = cmd.data.len();
        // The sg driver treats dxfer_len as an int.
        if i32::try_from(len).is_err() {
            return Err(unsupported(format!("a {len}-byte transfer (SG_IO takes at most {} bytes)", i32::MAX)));
        }

        let mut sense = [0u8; SENSE_LEN];
        let mut hdr = SgIoHdr::zeroed();
        hdr.interface_id = ffi::SG_INTERFACE_ID;
        hdr.cmd_len = cmd.cdb.len() as u8;
        hdr.cmdp = cmd.cdb.as_ptr();
        hdr.mx_sb_len = SENSE_LEN as u8;
        hdr.sbp = sense.as_mut_ptr();
        hdr.timeout = timeout_ms(cmd.timeout);
        hdr.flags = 0;
        hdr.dxfer_len = len as u32;
        (hdr.dxfer_direction, hdr.dxferp) = match &mut cmd.data {
            _ if len == 0 => (ffi::SG_DXFER_NONE, std::ptr::null_mut()),
            DataDir::None => (ffi::SG_DXFER_NONE, std::ptr::null_mut()),
            DataDir::In(buf) => (ffi::SG_DXFER_FROM_DEV, buf.as_mut_ptr().cast()),
            // The kernel only reads a TO_DEV buffer; the field is not const in the C struct.
            DataDir::Out(buf) => (ffi::SG_DXFER_TO_DEV, buf.as_ptr().cast_mut().cast()),
        };

        // SAFETY: `hdr`'s pointers are valid for the whole call: `cmdp` points into `cmd.cdb`
        // (`cmd_len` bytes, checked above to fit a u8), `sbp` into `sense`, a local array of
        // exactly `mx_sb_len` bytes, and `dxferp` into the command's data buffer of exactly
        // `dxfer_len` bytes, writable (FROM_DEV, from a `&mut [u8]` we hold exclusively through
        // `cmd`) or only read by the kernel (TO_DEV), or null with length 0 (NONE). Nothing else
        // touches these buffers until the synchronous ioctl returns, and with `flags = 0` and
        // `iovec_count = 0` the kernel copies through its own buffers and does not keep our
        // pointers past the return, even when the wait is interrupted (module docs). `self.fd`
        // is an sg device: `open` checked its major number and SG_GET_VERSION_NUM.
        let r = unsafe { ffi::sg_io(self.fd.as_fd(), &mut hdr) };
        if let Err(e) = r {
            let (kind, hint) = ioctl_failure(e, len);
            return Err(TransportError::new(
                kind,
                SgError::Ioctl {
                    device: self.path.clone(),
                    command: format!("{} ({len}-byte transfer)", scsi::cdb::name(cmd.cdb)),
                    source: e.into(),
                    hint,
                },
            ));
        }

        match status::classify(hdr.status, hdr.host_status, hdr.driver_status, hdr.sb_len_wr) {
            Outcome::Answered => Ok(completion(hdr.status, &sense, hdr.sb_len_wr, hdr.resid, len)),
            Outcome::Failed(f) => Err(TransportError::new(
                f.kind,
                SgError::Path {
                    device: self.path.clone(),
                    command: scsi::cdb::name(cmd.cdb),
                    layer: f.layer,
                    code: f.code,
                    name: f.name,
                    what: f.what,
                    check: f.check,
                },
            )),
        }
    }

    fn describe(&self) -> String {
        format!("sg:{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scsi::SenseKey;

    #[test]
    fn timeout_defaults_and_clamps() {
        assert_eq!(timeout_ms(None), 60_000);
        assert_eq!(timeout_ms(Some(Duration::from_secs(3 * 3600))), 10_800_000);
        assert_eq!(timeout_ms(Some(Duration::ZERO)), 1, "0 would not mean 'immediately'");
        assert_eq!(timeout_ms(Some(Duration::from_micros(10))), 1);
        assert_eq!(timeout_ms(Some(Duration::MAX)), u32::MAX - 1, "u32::MAX means no timeout at all");
    }

    #[test]
    fn completion_good_and_residuals() {
        let none = [0u8; SENSE_LEN];
        assert_eq!(completion(0, &none, 0, 0, 4096), Completion::good(4096));
        let c = completion(0, &none, 0, 1024, 4096);
        assert_eq!((c.residual, c.transferred), (Residual::Under(1024), 3072));
        // A residual beyond the buffer is clamped: never more than everything missing.
        let c = completion(0, &none, 0, 9999, 4096);
        assert_eq!((c.residual, c.transferred), (Residual::Under(4096), 0));
        let c = completion(0, &none, 0, -512, 4096);
        assert_eq!((c.residual, c.transferred), (Residual::Over(512), 4096));
        // No data phase: a residual is meaningless and ignored.
        let c = completion(0, &none, 0, 7, 0);
        assert_eq!((c.residual, c.transferred), (Residual::None, 0));
        assert_eq!(completion(0, &none, 0, i32::MIN, 8).residual, Residual::Over(1 << 31));
    }

    #[test]
    fn completion_decodes_status_and_only_the_written_sense() {
        // Fixed sense: MEDIUM ERROR, ILI, INFORMATION 100, ASC/ASCQ 11/00.
        let mut sense = [0u8; SENSE_LEN];
        sense[..18].copy_from_slice(&[0xf0, 0, 0x23, 0, 0, 0, 100, 10, 0, 0, 0, 0, 0x11, 0x00, 0, 0, 0, 0]);
        let c = completion(0x02, &sense, 18, 0, 512);
        assert_eq!(c.status, Status::CheckCondition);
        let s = c.sense.expect("sense decoded");
        assert_eq!((s.key, s.asc, s.ascq, s.ili, s.information), (SenseKey::MediumError, 0x11, 0, true, Some(100)));
        // The same bytes with sb_len_wr = 0 are stale, not sense.
        assert_eq!(completion(0x02, &sense, 0, 0, 512).sense, None);
        // sb_len_wr larger than the buffer is clipped.
        assert!(completion(0x02, &sense, 255, 0, 512).sense.is_some());
        // Reserved bits of the status byte are masked; other statuses pass through.
        assert_eq!(completion(0x09, &sense, 0, 0, 0).status, Status::Busy);
        assert_eq!(completion(0x18, &sense, 0, 0, 0).status, Status::ReservationConflict);
        assert_eq!(completion(0x22, &sense, 0, 0, 0).status, Status::Other(0x22));
    }

    #[test]
    fn ioctl_errnos_map_to_kinds() {
        use TransportErrorKind as K;
        assert_eq!(ioctl_failure(Errno::EPERM, 0).0, K::Refused);
        assert!(ioctl_failure(Errno::EPERM, 0).1.contains("CAP_SYS_RAWIO"));
        assert_eq!(ioctl_failure(Errno::ENODEV, 0).0, K::ConnectionLost);
        assert_eq!(ioctl_failure(Errno::EINTR, 0).0, K::Other, "an interrupted command is not blindly retryable");
        assert_eq!(ioctl_failure(Errno::ENOMEM, 1 << 24).0, K::Unsupported);
        assert!(ioctl_failure(Errno::ENOMEM, 1 << 24).1.contains("max_sectors"));
        assert_eq!(ioctl_failure(Errno::ENOMEM, 0).0, K::Other);
        assert_eq!(ioctl_failure(Errno::EINVAL, 0).0, K::Unsupported);
        assert_eq!(ioctl_failure(Errno::EDOM, 0).0, K::Other);
        assert_eq!(ioctl_failure(Errno::EFAULT, 0).0, K::Other);
    }

    #[test]
    fn open_unchecked_on_dev_null_fails_the_version_ioctl() {
        // /dev/null opens read-write for anyone, and the major-number check is skipped here, so
        // this exercises the SG_GET_VERSION_NUM verification itself.
        let err = SgDevice::open_unchecked(Path::new("/dev/null")).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, SgError::NotSg { .. }), "{err:?}");
        assert!(msg.contains("/dev/null is not a SCSI generic device"), "{msg}");
        assert!(msg.contains("SG_GET_VERSION_NUM"), "{msg}");
    }

    /// An `SgDevice` around /dev/null, bypassing `open`'s checks. The null driver has no ioctl
    /// handler, so the kernel answers SG_IO with ENOTTY before looking at the header: this
    /// runs `execute`'s header building and ioctl error path without hardware.
    fn null_device() -> SgDevice {
        let fd = nix::fcntl::open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()).unwrap();
        SgDevice { fd, path: "/dev/null".into(), version: 30536 }
    }

    #[test]
    fn execute_reports_ioctl_failures_with_device_and_command() {
        let dev = null_device();
        assert_eq!(dev.describe(), "sg:/dev/null");
        let cdb = scsi::cdb::spc::inquiry(96);
        let mut buf = [0u8; 96];
        let err = dev.execute(&mut Command::read(&cdb, &mut buf)).unwrap_err();
        assert_eq!(err.kind, TransportErrorKind::Other);
        let msg = err.to_string();
        assert!(msg.starts_with("/dev/null: INQUIRY (96-byte transfer) failed:"), "{msg}");
        let inner = err.inner().downcast_ref::<SgError>().expect("an SgError inside");
        assert!(matches!(inner, SgError::Ioctl { source, .. } if source.raw_os_error() == Some(libc::ENOTTY)));
        // Out and None data phases take the same path.
        let data = [0u8; 12];
        let w = [0x15u8, 0x10, 0, 0, 12, 0];
        assert!(dev.execute(&mut Command::write(&w, &data)).is_err());
        let tur = scsi::cdb::spc::test_unit_ready();
        assert!(dev.execute(&mut Command::none(&tur)).is_err());
    }

    #[test]
    fn execute_refuses_cdbs_sg_cannot_carry() {
        let dev = null_device();
        for cdb in [&[0x00u8, 0, 0][..], &[0u8; 253][..], &[][..]] {
            let err = dev.execute(&mut Command::none(cdb)).unwrap_err();
            assert_eq!(err.kind, TransportErrorKind::Unsupported);
            let msg = err.to_string();
            assert!(msg.starts_with("/dev/null: cannot send") && msg.contains("6 to 252 bytes"), "{msg}");
        }
    }

    #[test]
    fn node_types_are_told_apart() {
        let null = fs::metadata("/dev/null").unwrap();
        let why = not_sg_reason(&null.file_type(), null.rdev()).unwrap();
        assert!(why.contains("character device 1:3") && why.contains("major number is 21"), "{why}");
        let dir = fs::metadata("/").unwrap();
        assert_eq!(not_sg_reason(&dir.file_type(), 0).unwrap(), "it is a directory");
        // A char device with sg's major passes; st's is named.
        let sg_rdev = nix::sys::stat::makedev(21, 3);
        let st_rdev = nix::sys::stat::makedev(9, 128);
        assert_eq!(not_sg_reason(&null.file_type(), sg_rdev), None);
        let why = not_sg_reason(&null.file_type(), st_rdev).unwrap();
        assert!(why.contains("st tape driver") && why.contains("did not open it"), "{why}");
    }

    #[test]
    fn open_errors_map_to_variants() {
        let p = Path::new("/dev/sg9");
        assert!(matches!(open_error(p, io::Error::from_raw_os_error(libc::ENOENT)), SgError::NotFound { .. }));
        assert!(matches!(open_error(p, io::Error::from_raw_os_error(libc::EACCES)), SgError::PermissionDenied { .. }));
        assert!(matches!(open_error(p, io::Error::from_raw_os_error(libc::EBUSY)), SgError::Busy { .. }));
        assert!(matches!(open_error(p, io::Error::from_raw_os_error(libc::ENXIO)), SgError::NoDevice { .. }));
        assert!(matches!(open_error(p, io::Error::from_raw_os_error(libc::EIO)), SgError::Open { .. }));
        let msg = open_error(p, io::Error::from_raw_os_error(libc::EACCES)).to_string();
        assert!(msg.contains("/dev/sg9") && msg.contains("root") && msg.contains("`tape`") && msg.contains("`disk`"));
        let msg = SgError::TooOld { path: p.into(), version: 20134 }.to_string();
        assert!(msg.contains("version 2.1.34"), "{msg}");
    }
}
