//! [`ScsiError`]: failures of the block layer, each message saying what happened and what to do.

use crate::sense::Sense;
use crate::{Status, TransportError};

/// Errors of commands run through the block layer.
#[derive(Debug, thiserror::Error)]
pub enum ScsiError {
    /// The path to the device failed (connection, login, timeout). The transport's message
    /// says what to check.
    #[error("{0}")]
    Transport(#[from] TransportError),

    /// The device answered CHECK CONDITION.
    #[error("{device}: {command} failed: {sense}{hint}")]
    Check { device: String, command: String, opcode: u8, sense: Sense, hint: &'static str },

    /// The device answered a status other than GOOD or CHECK CONDITION, even after retries.
    #[error("{device}: {command} ended with status {status}{hint}")]
    Status { device: String, command: String, opcode: u8, status: Status, hint: &'static str },

    /// The logical unit is not a disk.
    #[error("{device}: logical unit is a {kind} (peripheral device type 0x{device_type:02x}), not a disk; pick the LUN that holds the virtual disk")]
    NotADisk { device: String, device_type: u8, kind: &'static str },

    /// The logical unit reports no device connected (peripheral qualifier 1 or 3).
    #[error("{device}: no device is connected at this LUN (peripheral qualifier {qualifier}); check the LUN number")]
    NoDevice { device: String, qualifier: u8 },

    /// The device moved less data than the command asked for.
    #[error("{device}: {command} at LBA {lba} returned {got} of {expected} bytes (short read); the device or target misbehaves, retry the backup")]
    ShortRead { device: String, command: String, lba: u64, expected: usize, got: usize },

    /// The device's answer could not be decoded.
    #[error("{device}: malformed answer to {command}: {detail}; the device or target misbehaves")]
    Malformed { device: String, command: String, detail: String },

    /// A request the block layer cannot express (unaligned, past the end, too large).
    #[error("{device}: {detail}")]
    BadRequest { device: String, detail: String },
}

/// An operator hint for common sense keys, appended to [`ScsiError::Check`] messages.
pub(crate) fn sense_hint(s: &Sense) -> &'static str {
    use crate::SenseKey::*;
    match (s.key, s.asc) {
        (NotReady, 0x3a) => "; load a medium",
        (NotReady, _) => "; the device is not ready, wait and retry",
        (MediumError, _) => "; the medium has a bad area, copy what can be read and replace the disk",
        (HardwareError, _) => "; the device reports a hardware fault, check it",
        (IllegalRequest, 0x20) | (IllegalRequest, 0x24) => "; the device does not support this command",
        (IllegalRequest, 0x21) => "; the disk may have shrunk, open it again",
        (UnitAttention, _) => "; the device was reset or changed, retry",
        (DataProtect, _) => "; the device is write protected or access is denied",
        (AbortedCommand, _) => "; the command was aborted, retry",
        _ => "",
    }
}

/// An operator hint for non-GOOD statuses.
pub(crate) fn status_hint(s: Status) -> &'static str {
    match s {
        Status::Busy | Status::TaskSetFull => "; the device is overloaded, retry later",
        Status::ReservationConflict => "; another host holds a SCSI reservation on this LUN, release it",
        _ => "",
    }
}
