//! What the kernel's verdict on one SG_IO means: the device answered (a [`scsi::Completion`]),
//! or the path failed (a [`scsi::TransportError`]). Pure functions of the header's output
//! fields, so they are tested without hardware.
//!
//! The three verdicts in `sg_io_hdr`:
//! - `status`: the SCSI status byte the device returned (meaningful only when it answered);
//! - `host_status`: the HBA driver's `DID_*` code (the link, the target, timeouts, resets);
//! - `driver_status`: the midlayer's `DRIVER_*` code in the low nibble (with `SUGGEST_*` hints
//!   in the high nibble); `DRIVER_SENSE` only says sense bytes are present. Recent kernels no
//!   longer set `DRIVER_TIMEOUT` and report timeouts as `DID_TIME_OUT`; both are handled.
//!
//! The order follows sg3_utils' `sg_err_category3`: a CHECK CONDITION with sense bytes is the
//! device's answer whatever the other two say; otherwise a host error, then a driver error,
//! fail the path.

use scsi::TransportErrorKind;

/// `DID_*` host codes (`<scsi/scsi_status.h>` / `include/scsi/scsi.h`).
pub(crate) mod did {
    pub const OK: u16 = 0x00;
    pub const NO_CONNECT: u16 = 0x01;
    pub const BUS_BUSY: u16 = 0x02;
    pub const TIME_OUT: u16 = 0x03;
    pub const BAD_TARGET: u16 = 0x04;
    pub const ABORT: u16 = 0x05;
    pub const PARITY: u16 = 0x06;
    pub const ERROR: u16 = 0x07;
    pub const RESET: u16 = 0x08;
    pub const BAD_INTR: u16 = 0x09;
    pub const PASSTHROUGH: u16 = 0x0a;
    pub const SOFT_ERROR: u16 = 0x0b;
    pub const IMM_RETRY: u16 = 0x0c;
    pub const REQUEUE: u16 = 0x0d;
    pub const TRANSPORT_DISRUPTED: u16 = 0x0e;
    pub const TRANSPORT_FAILFAST: u16 = 0x0f;
    pub const TARGET_FAILURE: u16 = 0x10;
    pub const NEXUS_FAILURE: u16 = 0x11;
    pub const ALLOC_FAILURE: u16 = 0x12;
    pub const MEDIUM_ERROR: u16 = 0x13;
    pub const TRANSPORT_MARGINAL: u16 = 0x14;
}

/// `DRIVER_*` codes (low nibble of `driver_status`).
pub(crate) mod driver {
    pub const MASK: u16 = 0x0f;
    pub const OK: u16 = 0x00;
    pub const BUSY: u16 = 0x01;
    pub const SOFT: u16 = 0x02;
    pub const MEDIA: u16 = 0x03;
    pub const ERROR: u16 = 0x04;
    pub const INVALID: u16 = 0x05;
    pub const TIMEOUT: u16 = 0x06;
    pub const HARD: u16 = 0x07;
    pub const SENSE: u16 = 0x08;
}

/// Mask of the meaningful bits of the SCSI status byte (as sg3_utils applies it).
pub(crate) const STATUS_MASK: u8 = 0x7e;
const CHECK_CONDITION: u8 = 0x02;

/// Which layer failed the command, for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// The HBA driver (`host_status`, a `DID_*` code).
    Host,
    /// The SCSI midlayer (`driver_status`, a `DRIVER_*` code).
    Driver,
}

/// The verdict on one SG_IO that the kernel accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The device returned a status (maybe CHECK CONDITION): build a `Completion`.
    Answered,
    /// The path failed; no status exists.
    Failed(PathFailure),
}

/// A failed path: the kind for control flow and the words for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PathFailure {
    pub layer: Layer,
    /// The raw code (`host_status`, or `driver_status` masked to its low nibble).
    pub code: u16,
    pub kind: TransportErrorKind,
    /// The kernel's name of the code (`DID_NO_CONNECT`).
    pub name: &'static str,
    /// What happened, in words.
    pub what: &'static str,
    /// What to check or do.
    pub check: &'static str,
}

/// Host codes the midlayer derives from the device's own answer (sense or status); some
/// kernels leave them set on passthrough commands. With a non-GOOD status present, the device
/// answered.
fn derived_from_device_answer(host: u16) -> bool {
    matches!(host, did::TARGET_FAILURE | did::NEXUS_FAILURE | did::ALLOC_FAILURE | did::MEDIUM_ERROR)
}

/// Classifies the output fields of one completed SG_IO.
pub(crate) fn classify(status: u8, host_status: u16, driver_status: u16, sense_written: u8) -> Outcome {
    let status = status & STATUS_MASK;
    let drv = driver_status & driver::MASK;
    if host_status == did::OK && matches!(drv, driver::OK | driver::SENSE) {
        return Outcome::Answered;
    }
    if status == CHECK_CONDITION && sense_written > 0 {
        return Outcome::Answered;
    }
    if status != 0 && derived_from_device_answer(host_status) {
        return Outcome::Answered;
    }
    if host_status != did::OK {
        return Outcome::Failed(host_failure(host_status));
    }
    Outcome::Failed(driver_failure(drv))
}

const CHECK_LINK: &str = "check the SAS/FC cable and connectors, that the device is powered on, and the HBA's link \
                          state (`dmesg`, /sys/class/sas_phy or /sys/class/fc_host)";
const POSITION_LOST: &str = "a tape drive's position is unknown after this: rewind or locate before writing";

/// The failure a `DID_*` code stands for.
pub(crate) fn host_failure(code: u16) -> PathFailure {
    use TransportErrorKind::*;
    let (kind, name, what, check) = match code {
        did::NO_CONNECT => {
            (ConnectionLost, "DID_NO_CONNECT", "the device did not respond: no connection to it", CHECK_LINK)
        }
        did::BUS_BUSY => (
            ConnectionLost,
            "DID_BUS_BUSY",
            "the bus or link was busy and the HBA gave up",
            "retry later; if it persists, check for another initiator or a flapping link (`dmesg`)",
        ),
        did::TIME_OUT => (
            Timeout,
            "DID_TIME_OUT",
            "the command timed out",
            "the drive may be busy (long rewind, cleaning) or hung; check its front panel and power, then the \
             cable and the HBA; raise the command's timeout if the operation is legitimately long",
        ),
        did::BAD_TARGET => (ConnectionLost, "DID_BAD_TARGET", "the target is gone or not addressable", CHECK_LINK),
        did::ABORT => (
            Timeout,
            "DID_ABORT",
            "the command was aborted by the HBA or the SCSI error handler (usually after a timeout)",
            "check `dmesg` for the error handler's messages; the drive may be hung or the link unstable",
        ),
        did::PARITY => (
            ConnectionLost,
            "DID_PARITY",
            "a parity or CRC error on the link",
            "check the cable, connectors and terminators; replace the cable if it recurs",
        ),
        did::ERROR => (
            Other,
            "DID_ERROR",
            "the HBA driver reported an internal error",
            "check `dmesg` for the HBA driver's messages and its firmware version",
        ),
        did::RESET => {
            (ConnectionLost, "DID_RESET", "the bus or the device was reset while the command ran", POSITION_LOST)
        }
        did::BAD_INTR => (Other, "DID_BAD_INTR", "the HBA got an unexpected interrupt", "check `dmesg` and the HBA"),
        did::PASSTHROUGH => (Other, "DID_PASSTHROUGH", "the HBA refused the passthrough command", "check `dmesg`"),
        did::SOFT_ERROR => (
            ConnectionLost,
            "DID_SOFT_ERROR",
            "the HBA driver asks for the command to be retried",
            "retry the operation",
        ),
        did::IMM_RETRY => {
            (ConnectionLost, "DID_IMM_RETRY", "the HBA asks for an immediate retry", "retry the operation")
        }
        did::REQUEUE => {
            (ConnectionLost, "DID_REQUEUE", "the HBA asks for the command to be requeued", "retry the operation")
        }
        did::TRANSPORT_DISRUPTED => (
            ConnectionLost,
            "DID_TRANSPORT_DISRUPTED",
            "the SAS/FC transport was disrupted (link down or rediscovery in progress)",
            CHECK_LINK,
        ),
        did::TRANSPORT_FAILFAST => (
            ConnectionLost,
            "DID_TRANSPORT_FAILFAST",
            "the SAS/FC transport failed the command fast (the link has been down too long)",
            CHECK_LINK,
        ),
        did::TARGET_FAILURE => (
            Other,
            "DID_TARGET_FAILURE",
            "the target reported a permanent failure",
            "check the device's front panel or logs; it may need service",
        ),
        did::NEXUS_FAILURE => (
            Refused,
            "DID_NEXUS_FAILURE",
            "the device is reserved by another initiator",
            "find the other host or program holding the reservation (another backup application?)",
        ),
        did::ALLOC_FAILURE => {
            (Other, "DID_ALLOC_FAILURE", "the target could not allocate space", "check the device's logs")
        }
        did::MEDIUM_ERROR => (
            Other,
            "DID_MEDIUM_ERROR",
            "a medium error",
            "the cartridge may be damaged: try another one, and clean the drive",
        ),
        did::TRANSPORT_MARGINAL => (
            ConnectionLost,
            "DID_TRANSPORT_MARGINAL",
            "the FC link is marginal",
            "check the fibre, the SFPs and the switch port",
        ),
        _ => (Other, "DID_?", "the HBA driver reported an unknown host status", "check `dmesg`"),
    };
    PathFailure { layer: Layer::Host, code, kind, name, what, check }
}

/// The failure a `DRIVER_*` code (low nibble) stands for.
pub(crate) fn driver_failure(code: u16) -> PathFailure {
    use TransportErrorKind::*;
    let (kind, name, what, check) = match code & driver::MASK {
        driver::BUSY => (ConnectionLost, "DRIVER_BUSY", "the SCSI midlayer was busy", "retry later"),
        driver::SOFT => (Other, "DRIVER_SOFT", "the SCSI midlayer reported a soft error", "retry; check `dmesg`"),
        driver::MEDIA => (Other, "DRIVER_MEDIA", "the SCSI midlayer reported a media error", "check `dmesg`"),
        driver::ERROR => (Other, "DRIVER_ERROR", "the SCSI midlayer reported an error", "check `dmesg`"),
        driver::INVALID => (
            Unsupported,
            "DRIVER_INVALID",
            "the SCSI midlayer rejected the command as invalid",
            "the CDB or transfer length may not be supported by this HBA",
        ),
        driver::TIMEOUT => (
            Timeout,
            "DRIVER_TIMEOUT",
            "the command timed out",
            "the drive may be busy (long rewind, cleaning) or hung; check its front panel and power, then the \
             cable and the HBA; raise the command's timeout if the operation is legitimately long",
        ),
        driver::HARD => (
            Other,
            "DRIVER_HARD",
            "the SCSI midlayer gave up on the command (hard error)",
            "check `dmesg`; the device may need a reset or power cycle",
        ),
        _ => (Other, "DRIVER_?", "the SCSI midlayer reported an unknown driver status", "check `dmesg`"),
    };
    PathFailure { layer: Layer::Driver, code: code & driver::MASK, kind, name, what, check }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scsi::TransportErrorKind as K;

    fn failed(o: Outcome) -> PathFailure {
        match o {
            Outcome::Failed(f) => f,
            Outcome::Answered => panic!("expected a path failure, got Answered"),
        }
    }

    #[test]
    fn clean_and_device_answers_are_answered() {
        assert_eq!(classify(0x00, 0, 0, 0), Outcome::Answered);
        // CHECK CONDITION with sense, DRIVER_SENSE set (pre-5.14) or not.
        assert_eq!(classify(0x02, 0, driver::SENSE, 18), Outcome::Answered);
        assert_eq!(classify(0x02, 0, 0, 18), Outcome::Answered);
        // SUGGEST_* bits in the high nibble do not matter.
        assert_eq!(classify(0x02, 0, 0x80 | driver::SENSE, 18), Outcome::Answered);
        // BUSY, RESERVATION CONFLICT, TASK SET FULL are device answers.
        for s in [0x08, 0x18, 0x28] {
            assert_eq!(classify(s, 0, 0, 0), Outcome::Answered, "status {s:#x}");
        }
        // A CHECK CONDITION with sense wins over a host code (sg3_utils order).
        assert_eq!(classify(0x02, did::RESET, 0, 18), Outcome::Answered);
        // Host codes derived from the device's sense, with a status present.
        assert_eq!(classify(0x18, did::NEXUS_FAILURE, 0, 0), Outcome::Answered);
        assert_eq!(classify(0x02, did::MEDIUM_ERROR, driver::SENSE, 0), Outcome::Answered);
        // Reserved status bits are masked.
        assert_eq!(classify(0x81, 0, 0, 0), Outcome::Answered);
    }

    #[test]
    fn host_codes_map_to_kinds() {
        let cases = [
            (did::NO_CONNECT, K::ConnectionLost, "DID_NO_CONNECT"),
            (did::BUS_BUSY, K::ConnectionLost, "DID_BUS_BUSY"),
            (did::TIME_OUT, K::Timeout, "DID_TIME_OUT"),
            (did::BAD_TARGET, K::ConnectionLost, "DID_BAD_TARGET"),
            (did::ABORT, K::Timeout, "DID_ABORT"),
            (did::PARITY, K::ConnectionLost, "DID_PARITY"),
            (did::ERROR, K::Other, "DID_ERROR"),
            (did::RESET, K::ConnectionLost, "DID_RESET"),
            (did::SOFT_ERROR, K::ConnectionLost, "DID_SOFT_ERROR"),
            (did::IMM_RETRY, K::ConnectionLost, "DID_IMM_RETRY"),
            (did::REQUEUE, K::ConnectionLost, "DID_REQUEUE"),
            (did::TRANSPORT_DISRUPTED, K::ConnectionLost, "DID_TRANSPORT_DISRUPTED"),
            (did::TRANSPORT_FAILFAST, K::ConnectionLost, "DID_TRANSPORT_FAILFAST"),
            (did::TARGET_FAILURE, K::Other, "DID_TARGET_FAILURE"),
            (did::NEXUS_FAILURE, K::Refused, "DID_NEXUS_FAILURE"),
            (did::MEDIUM_ERROR, K::Other, "DID_MEDIUM_ERROR"),
            (did::TRANSPORT_MARGINAL, K::ConnectionLost, "DID_TRANSPORT_MARGINAL"),
            (0x77, K::Other, "DID_?"),
        ];
        for (code, kind, name) in cases {
            // No status, no sense: the command never reached a verdict from the device.
            let f = failed(classify(0, code, 0, 0));
            assert_eq!((f.layer, f.code, f.kind, f.name), (Layer::Host, code, kind, name), "host {code:#x}");
            assert!(!f.what.is_empty() && !f.check.is_empty());
        }
    }

    #[test]
    fn link_failures_tell_the_operator_what_to_check() {
        for code in [did::NO_CONNECT, did::BAD_TARGET, did::TRANSPORT_DISRUPTED] {
            let f = host_failure(code);
            assert!(f.check.contains("cable") && f.check.contains("powered") && f.check.contains("HBA"), "{f:?}");
        }
        assert!(host_failure(did::RESET).check.contains("position"));
        assert!(host_failure(did::TIME_OUT).check.contains("timeout"));
    }

    #[test]
    fn driver_codes_map_to_kinds_when_the_host_is_ok() {
        let f = failed(classify(0, 0, driver::TIMEOUT, 0));
        assert_eq!((f.layer, f.kind, f.name), (Layer::Driver, K::Timeout, "DRIVER_TIMEOUT"));
        // SUGGEST_ABORT (0x20) in the high nibble is ignored.
        let f = failed(classify(0, 0, 0x20 | driver::TIMEOUT, 0));
        assert_eq!((f.code, f.kind), (driver::TIMEOUT, K::Timeout));
        assert_eq!(failed(classify(0, 0, driver::BUSY, 0)).kind, K::ConnectionLost);
        assert_eq!(failed(classify(0, 0, driver::INVALID, 0)).kind, K::Unsupported);
        for code in [driver::SOFT, driver::MEDIA, driver::ERROR, driver::HARD, 0x09] {
            assert_eq!(failed(classify(0, 0, code, 0)).kind, K::Other, "driver {code:#x}");
        }
    }

    #[test]
    fn host_error_takes_precedence_over_driver_error() {
        let f = failed(classify(0, did::TIME_OUT, driver::HARD, 0));
        assert_eq!((f.layer, f.name), (Layer::Host, "DID_TIME_OUT"));
        // A GOOD status is no answer when the host says the command failed.
        assert_eq!(failed(classify(0, did::NO_CONNECT, 0, 0)).kind, K::ConnectionLost);
        // CHECK CONDITION without sense bytes and a host error: the path failed.
        assert_eq!(failed(classify(0x02, did::RESET, 0, 0)).name, "DID_RESET");
        // Derived host codes with a GOOD status are failures, not answers.
        assert_eq!(failed(classify(0, did::MEDIUM_ERROR, 0, 0)).kind, K::Other);
    }

    #[test]
    fn every_code_maps_without_panicking() {
        for host in 0..=0x20u16 {
            for drv in 0..=0xffu16 {
                for status in [0u8, 0x02, 0x08, 0x18] {
                    let _ = classify(status, host, drv, 0);
                    let _ = classify(status, host, drv, 18);
                }
            }
        }
    }
}
