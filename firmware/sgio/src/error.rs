//! Errors of this crate. Opening a device returns [`SgError`] directly; a failed command
//! returns a [`scsi::TransportError`] whose inner error is an [`SgError`] (downcast with
//! `TransportError::inner().downcast_ref::<SgError>()`).

use std::io;
use std::path::PathBuf;

use crate::status::Layer;

/// Where to find the right device name, appended to the "wrong device" errors.
const FIND_SG: &str = "use a /dev/sgN node (`rackvault tape devices` lists them with vendor, model and type; so does \
                       `ls /sys/class/scsi_generic`)";

/// A failure of this crate: opening a device, or running a command on it.
#[derive(Debug, thiserror::Error)]
pub enum SgError {
    /// The path does not exist.
    #[error("{}: no such device node; {FIND_SG}. If none is listed, check that the drive or changer is powered on and cabled and that the `sg` kernel module is loaded", path.display())]
    NotFound { path: PathBuf },

    /// The node exists but no device is behind it (removed, or a stale node).
    #[error("{}: no device behind this node (it was removed or the node is stale); check the cable and power, then {FIND_SG}", path.display())]
    NoDevice { path: PathBuf },

    /// Opening read-write was refused.
    #[error("{}: permission denied (read-write access is needed); run as root, or add the user to the group that owns the node (usually `tape` for tape drives and changers, `disk` for disks)", path.display())]
    PermissionDenied { path: PathBuf },

    /// Another program holds the device exclusively.
    #[error("{}: busy: another program has it open exclusively (another backup application, or `mt`/`mtx`?); stop it and try again", path.display())]
    Busy { path: PathBuf },

    /// The path is something other than an sg character device.
    #[error("{} is not a SCSI generic device: {why}; {FIND_SG}", path.display())]
    NotSg { path: PathBuf, why: String },

    /// The sg driver predates the v3 interface (SG_IO).
    #[error("{}: the sg driver is version {}.{}.{}, older than 3.0.0 which SG_IO needs; update the kernel", path.display(), version / 10000, version / 100 % 100, version % 100)]
    TooOld { path: PathBuf, version: i32 },

    /// Any other failure to open or query the device.
    #[error("{}: cannot open: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The command cannot be expressed through SG_IO (CDB length, transfer length).
    #[error("{}: cannot send {command}: {detail}", device.display())]
    Unsupported { device: PathBuf, command: String, detail: String },

    /// The kernel refused or lost the SG_IO call itself.
    #[error("{}: {command} failed: {source}; {hint}", device.display())]
    Ioctl {
        device: PathBuf,
        command: String,
        #[source]
        source: io::Error,
        hint: &'static str,
    },

    /// The command did not complete: the HBA or the SCSI midlayer reported a failure of the
    /// path, so the device returned no status.
    #[error("{}: {command} failed: {what} ({layer_name} status {name}, 0x{code:02x}); {check}", device.display(), layer_name = match layer { Layer::Host => "host", Layer::Driver => "driver" })]
    Path {
        device: PathBuf,
        command: String,
        layer: Layer,
        code: u16,
        name: &'static str,
        what: &'static str,
        check: &'static str,
    },
}
