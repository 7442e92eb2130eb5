//! The store's trusted clock: the time that immutability windows are measured against.
//!
//! ## Why not the wall clock
//! An immutability window ("no one, admin included, may delete this point for 30 days") is
//! worthless if whoever wants to delete can set the system clock forward. So the store keeps
//! its own notion of time in the `meta` database:
//!
//! ```text
//! clock = { trusted_unix, wall_unix, boot_id, boottime_s }   (see ClockRecord)
//! ```
//!
//! ## Rules
//! 1. **Never backwards.** The trusted time is a high-water mark: it never decreases, whatever
//!    the wall clock does.
//! 2. **Within one boot, it advances by elapsed time only.** When the record was written during
//!    the current boot (same `/proc/sys/kernel/random/boot_id`), the trusted time advances by
//!    the `CLOCK_BOOTTIME` elapsed since, which no one can set. A wall clock that moved forward
//!    by more than [`JUMP_TOLERANCE_S`] beyond that is a *suspicious jump*: it is reported
//!    (the service writes it to the audit log) and does not count.
//! 3. **Across a reboot** there is no unforgeable reference, so the trusted time becomes
//!    `max(trusted, wall)`. The daemon observes the clock every minute, so the record is
//!    fresh when the machine goes down; a forward jump set while the appliance is powered off
//!    cannot be told from downtime, and this is the one weakness, written here on purpose.
//!
//! A store opened read-only reads the clock without persisting it.

use serde::{Deserialize, Serialize};

/// Wall-clock moves beyond elapsed boot time smaller than this are NTP slew, not tampering.
pub const JUMP_TOLERANCE_S: i64 = 300;

/// The persisted clock record (in `meta`, key `clock`), versioned JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockRecord {
    pub v: u32,
    pub trusted_unix: u64,
    pub wall_unix: u64,
    pub boot_id: String,
    pub boottime_s: u64,
}

/// One reading of the trusted clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClockReading {
    /// The time immutability is judged by (unix seconds).
    pub trusted_unix: u64,
    /// The system's wall clock at the reading.
    pub wall_unix: u64,
    /// Seconds the wall clock moved beyond (positive) or behind (negative) the elapsed boot
    /// time since the last reading, when that exceeds [`JUMP_TOLERANCE_S`].
    pub suspicious_jump_s: Option<i64>,
}

/// What the machine says now.
#[derive(Debug, Clone)]
pub(crate) struct Observation {
    pub wall_unix: u64,
    pub boot_id: String,
    pub boottime_s: u64,
}

impl Observation {
    pub fn now() -> Observation {
        let wall_unix = crate::now_unix();
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let boottime_s =
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map(|t| t.tv_sec().max(0) as u64).unwrap_or(0);
        Observation { wall_unix, boot_id, boottime_s }
    }
}

/// Advance the clock record with an observation (pure; see the module rules).
pub(crate) fn advance(prev: Option<&ClockRecord>, obs: &Observation) -> (ClockRecord, ClockReading) {
    let (trusted, jump) = match prev {
        None => (obs.wall_unix, None),
        Some(p) if !p.boot_id.is_empty() && p.boot_id == obs.boot_id && obs.boottime_s >= p.boottime_s => {
            let elapsed = obs.boottime_s - p.boottime_s;
            let expected_wall = p.wall_unix as i64 + elapsed as i64;
            let drift = obs.wall_unix as i64 - expected_wall;
            let jump = (drift.abs() > JUMP_TOLERANCE_S).then_some(drift);
            (p.trusted_unix + elapsed, jump)
        }
        Some(p) => (p.trusted_unix.max(obs.wall_unix), None),
    };
    let record = ClockRecord {
        v: 1,
        trusted_unix: trusted,
        wall_unix: obs.wall_unix,
        boot_id: obs.boot_id.clone(),
        boottime_s: obs.boottime_s,
    };
    (record, ClockReading { trusted_unix: trusted, wall_unix: obs.wall_unix, suspicious_jump_s: jump })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(wall: u64, boot: &str, bt: u64) -> Observation {
        Observation { wall_unix: wall, boot_id: boot.into(), boottime_s: bt }
    }

    #[test]
    fn a_forward_jump_within_one_boot_does_not_advance_trusted_time() {
        let (r, _) = advance(None, &obs(1_000_000, "b1", 100));
        // 60 s later by boot time, but the wall clock was set a year ahead.
        let (r2, reading) = advance(Some(&r), &obs(1_000_000 + 365 * 86_400, "b1", 160));
        assert_eq!(reading.trusted_unix, 1_000_060);
        assert_eq!(reading.suspicious_jump_s, Some(365 * 86_400 - 60));
        // and the next reading continues from the trusted time, not the forged one
        let (_, reading) = advance(Some(&r2), &obs(1_000_000 + 365 * 86_400 + 10, "b1", 170));
        assert_eq!(reading.trusted_unix, 1_000_070);
        assert_eq!(reading.suspicious_jump_s, None);
    }

    #[test]
    fn the_trusted_time_never_moves_backwards() {
        let (r, _) = advance(None, &obs(2_000_000, "b1", 100));
        let (_, reading) = advance(Some(&r), &obs(1_000, "b1", 110));
        assert_eq!(reading.trusted_unix, 2_000_010);
        assert!(reading.suspicious_jump_s.unwrap() < 0);
        // across a reboot as well
        let (_, reading) = advance(Some(&r), &obs(1_000, "b2", 5));
        assert_eq!(reading.trusted_unix, 2_000_000);
    }

    #[test]
    fn across_a_reboot_the_wall_clock_is_taken_when_ahead() {
        let (r, _) = advance(None, &obs(2_000_000, "b1", 100));
        let (_, reading) = advance(Some(&r), &obs(2_086_400, "b2", 30));
        assert_eq!(reading.trusted_unix, 2_086_400);
        assert_eq!(reading.suspicious_jump_s, None);
    }

    #[test]
    fn ntp_slew_is_not_reported() {
        let (r, _) = advance(None, &obs(2_000_000, "b1", 100));
        let (_, reading) = advance(Some(&r), &obs(2_003_700, "b1", 3_800));
        assert_eq!(reading.trusted_unix, 2_003_700);
        assert_eq!(reading.suspicious_jump_s, None);
    }
}
