//! Retention: which restore points of one job (or one source name) to keep, and why.
//!
//! This module is pure: [`plan`] is given the points, the current time and the time zone,
//! reads no clock and does no I/O, and only *decides*. Deleting what it prunes is the
//! caller's job. The same inputs always give the same decisions, whatever their order.
//!
//! ## Rules
//! A [`RetentionPolicy`] has up to six rules. Each rule is independent: it picks points to
//! keep on its own, and a point is kept when at least one rule (or one of the guarantees
//! below) picks it. A kept point lists every reason it is kept for.
//!
//! | rule | keeps |
//! |---|---|
//! | `keep_last` N | the N newest points |
//! | `keep_daily` N | the newest point of each of the N most recent local calendar days that have a point |
//! | `keep_weekly` N | the same per ISO 8601 week (Monday to Sunday; weeks around New Year belong to the ISO week-year) |
//! | `keep_monthly` N | the same per calendar month |
//! | `keep_yearly` N | the same per calendar year |
//! | `keep_within_s` D | every point created less than D seconds before `now` (`created > now - D`) |
//!
//! Periods are "the N most recent that have at least one point": a day without a backup does
//! not use up one of the N days, so `keep_daily 7` keeps seven daily points even when backups
//! ran only on weekdays. The calendar rules walk the points newest first; the first point seen
//! in a period is the newest of that period and is kept while fewer than N periods have been
//! kept; every other point of the period is not kept by that rule.
//!
//! Days, weeks, months and years are those of the **given time zone**: a point's creation
//! instant is converted to local civil time with the tz database (jiff), including daylight
//! saving time and historical offset changes. A point at 23:30 local time on a DST-change day
//! belongs to that local day, even when it is already the next day in UTC.
//!
//! ## Guarantees, applied whatever the rules say
//! - **No rule set keeps everything.** A policy whose rules are all unset (or 0, which counts
//!   as unset as in Proxmox's prune options; [`RetentionPolicy::validate`] rejects 0 in stored
//!   configurations) prunes nothing: reason [`KeepReason::NoPolicy`].
//! - **Pinned** (protected) points are always kept ([`KeepReason::Pinned`]) and are invisible
//!   to the rules: they never count against a rule's N and never occupy a period, so pinning
//!   an old point does not cost a newer one its place.
//! - **Points created in the future** relative to `now` (clock trouble) are always kept
//!   ([`KeepReason::Future`]) and, like pinned points, are invisible to the rules: their
//!   periods cannot be trusted.
//! - **The newest point is always kept** ([`KeepReason::Newest`]), so no policy can delete the
//!   last backup. "Newest" is the newest point not in the future (the backup just made, as far
//!   as the clock knows); only when every point is in the future is it the newest of those.
//!
//! Order: decisions come out newest first, by creation time, then by id (higher first) for
//! points created in the same second. Every input point gets exactly one decision.
//!
//! Applying a plan is idempotent: planning again over the kept points at the same `now` keeps
//! all of them. As time moves on, a point a rule dropped is never needed again by that rule
//! (periods only leave the window), so with a clock that moves forward, pruning after every
//! backup keeps the same set as pruning once at the end.
//!
//! ## Worked example
//! Policy `keep_last 2, keep_daily 3, keep_weekly 2, keep_monthly 2`, time zone
//! `Europe/Berlin`, `now` = 2026-03-30 12:00 local. (2026-03-29 is the spring DST change.)
//!
//! | id | local time | ISO week | decision | reasons, or why not |
//! |---|---|---|---|---|
//! | 8 | Mon 2026-03-30 09:00 | 2026-W14 | keep | last, daily, weekly, monthly, newest |
//! | 7 | Sun 2026-03-29 23:30 | 2026-W13 | keep | last, daily, weekly |
//! | 6 | Sun 2026-03-29 08:00 | 2026-W13 | prune | not among the last 2; day 2026-03-29, week 2026-W13 already have the newer #7, month 2026-03 has #8 |
//! | 5 | Sat 2026-03-28 22:00 | 2026-W13 | keep | daily (the third most recent day with points) |
//! | 4 | Mon 2026-03-23 22:00 | 2026-W13 | prune | not among the last 2; day not among the 3 most recent days; week has #7, month has #8 |
//! | 3 | Sun 2026-03-15 22:00 | 2026-W11 | prune | not among the last 2; day and week too old (3 days, 2 weeks); month has #8 |
//! | 2 | Mon 2026-03-02 22:00, pinned | 2026-W10 | keep | pinned; not counted, so month 2026-02 is still the second month |
//! | 1 | Fri 2026-02-20 22:00 | 2026-W08 | keep | monthly (newest of 2026-02) |
//!
//! The `why` of a pruned point names every rule, e.g. for #6: "not among the last 2; day
//! 2026-03-29 already has a newer daily point (#7); ISO week 2026-W13 already has a newer
//! weekly point (#7); month 2026-03 already has a newer monthly point (#8)".
//!
//! Point 7 is 21:30 UTC, point 8 is 07:00 UTC; in a zone far enough west or east the same
//! instants fall on other days and the daily picks change (see the tests).
//!
//! ## Time zones
//! [`system_time_zone`] gives the appliance's zone (`TZ`, else `/etc/localtime`, else UTC);
//! [`time_zone`] looks up an IANA name (such as `Europe/Berlin`) in the tz database
//! (`/usr/share/zoneinfo`) and explains an unknown name.

use std::collections::HashMap;
use std::fmt;

use jiff::civil::Date;
pub use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// How many restore points to keep. Stored in job configurations; an unset rule is absent.
///
/// Unknown fields are refused when reading, so that a misspelt rule (or a rule of a newer
/// firmware) is an error rather than silently ignored, which could prune more than intended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Keep the N newest points.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Keep the newest point of each of the N most recent local days that have points.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    /// Keep the newest point of each of the N most recent ISO weeks (Monday start) with points.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest point of each of the N most recent calendar months with points.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    /// Keep the newest point of each of the N most recent calendar years with points.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    /// Keep every point created within this many seconds before `now`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_within_s: Option<u64>,
}

impl RetentionPolicy {
    /// True when no rule is set (a rule of 0 counts as unset): such a policy prunes nothing.
    pub fn is_keep_all(&self) -> bool {
        let counts = [self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly, self.keep_yearly];
        counts.iter().all(|n| effective(*n).is_none()) && effective_within(self.keep_within_s).is_none()
    }

    /// Check a policy before it is stored: no rule may be 0 (leave it unset instead), and
    /// `keep_within_s` must fit a signed 64-bit time.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        let counts = [
            ("keep_last", self.keep_last),
            ("keep_daily", self.keep_daily),
            ("keep_weekly", self.keep_weekly),
            ("keep_monthly", self.keep_monthly),
            ("keep_yearly", self.keep_yearly),
        ];
        for (name, n) in counts {
            if n == Some(0) {
                problems.push(format!("{name} is 0; a rule keeps at least 1 point, leave it unset to disable it"));
            }
        }
        match self.keep_within_s {
            Some(0) => problems.push(
                "keep_within_s is 0; give a number of seconds of at least 1, or leave it unset to disable it"
                    .to_string(),
            ),
            Some(d) if d > i64::MAX as u64 => {
                problems.push(format!("keep_within_s is {d}; at most {} seconds", i64::MAX))
            }
            _ => {}
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Invalid(format!("retention policy: {}", problems.join("; "))))
        }
    }
}

/// One restore point as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidate {
    pub id: u64,
    /// Creation time, seconds since the Unix epoch (UTC).
    pub created_unix: u64,
    /// Protected by the operator: always kept, never counted by the rules.
    pub pinned: bool,
}

/// Why a point is kept. Ordered as listed in [`Decision::reasons`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeepReason {
    /// Among the `keep_last` newest points.
    Last,
    /// Newest point of one of the `keep_daily` most recent days.
    Daily,
    /// Newest point of one of the `keep_weekly` most recent ISO weeks.
    Weekly,
    /// Newest point of one of the `keep_monthly` most recent months.
    Monthly,
    /// Newest point of one of the `keep_yearly` most recent years.
    Yearly,
    /// Created within `keep_within_s` before now.
    Within,
    /// Protected by the operator.
    Pinned,
    /// The newest point: a policy never deletes the last backup.
    Newest,
    /// Created after `now` (clock trouble); kept until the clock catches up.
    Future,
    /// The policy sets no rule, so everything is kept.
    NoPolicy,
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeepReason::Last => "last",
            KeepReason::Daily => "daily",
            KeepReason::Weekly => "weekly",
            KeepReason::Monthly => "monthly",
            KeepReason::Yearly => "yearly",
            KeepReason::Within => "within",
            KeepReason::Pinned => "pinned",
            KeepReason::Newest => "newest",
            KeepReason::Future => "future",
            KeepReason::NoPolicy => "no-policy",
        })
    }
}

/// The decision for one point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: u64,
    pub created_unix: u64,
    /// Keep (true) or prune (false). `keep == !reasons.is_empty()`.
    pub keep: bool,
    /// Why it is kept, in [`KeepReason`] order; empty when pruned.
    pub reasons: Vec<KeepReason>,
    /// Human explanation: for a kept point what keeps it ("newest of day 2026-11-03"), for a
    /// pruned point why each rule passed it over ("not among the last 7; day 2026-11-03
    /// already has a newer daily point (#42)").
    pub why: String,
}

/// The appliance's time zone: `TZ`, else `/etc/localtime`, else UTC.
pub fn system_time_zone() -> TimeZone {
    TimeZone::try_system().unwrap_or(TimeZone::UTC)
}

/// The time zone with IANA name `name` (such as `Europe/Berlin` or `UTC`) from the tz
/// database.
pub fn time_zone(name: &str) -> Result<TimeZone> {
    let name = name.trim();
    if name.is_empty() {
        return Err(StoreError::Invalid(
            "time zone name is empty; give an IANA time zone name such as \"Europe/Berlin\" or \"UTC\"".to_string(),
        ));
    }
    TimeZone::get(name).map_err(|e| {
        StoreError::Invalid(format!(
            "unknown time zone {name:?}: give an IANA time zone name such as \"Europe/Berlin\", \
             \"America/New_York\" or \"UTC\" (the names are those under /usr/share/zoneinfo) ({e})"
        ))
    })
}

/// Decide, for each of one job's restore points, whether `policy` keeps it. `points` may
/// come in any order; the decisions come out newest first. See the module docs for the rules.
pub fn plan(policy: &RetentionPolicy, points: &[Candidate], now_unix: i64, tz: &TimeZone) -> Vec<Decision> {
    let mut order: Vec<Candidate> = points.to_vec();
    order.sort_by(|a, b| b.created_unix.cmp(&a.created_unix).then(b.id.cmp(&a.id)));
    let now = i128::from(now_unix);
    let future: Vec<bool> = order.iter().map(|c| i128::from(c.created_unix) > now).collect();
    let mut kept: Vec<Vec<(KeepReason, String)>> = vec![Vec::new(); order.len()];
    let mut passed: Vec<Vec<String>> = vec![Vec::new(); order.len()];

    for (i, c) in order.iter().enumerate() {
        if c.pinned {
            kept[i].push((KeepReason::Pinned, "pinned".to_string()));
        }
        if future[i] {
            let ahead = i128::from(c.created_unix) - now;
            kept[i].push((KeepReason::Future, format!("created {} after now (clock trouble?)", human_secs(ahead))));
        }
    }
    let newest = future.iter().position(|f| !f).or(if order.is_empty() { None } else { Some(0) });
    if let Some(i) = newest {
        kept[i].push((KeepReason::Newest, "newest point".to_string()));
    }

    if policy.is_keep_all() {
        for k in &mut kept {
            k.push((KeepReason::NoPolicy, "no retention rule is set".to_string()));
        }
    } else {
        // The points the rules see, newest first: neither pinned nor in the future.
        let eligible: Vec<usize> = (0..order.len()).filter(|&i| !order[i].pinned && !future[i]).collect();
        if let Some(n) = effective(policy.keep_last) {
            for (rank, &i) in eligible.iter().enumerate() {
                if rank < n as usize {
                    kept[i].push((KeepReason::Last, format!("among the last {n}")));
                } else {
                    passed[i].push(format!("not among the last {n}"));
                }
            }
        }
        let calendar = [
            (Calendar::Day, policy.keep_daily),
            (Calendar::Week, policy.keep_weekly),
            (Calendar::Month, policy.keep_monthly),
            (Calendar::Year, policy.keep_yearly),
        ];
        if calendar.iter().any(|(_, n)| effective(*n).is_some()) {
            let dates: HashMap<usize, Date> =
                eligible.iter().map(|&i| (i, local_date(order[i].created_unix, tz))).collect();
            for (cal, n) in calendar {
                let Some(n) = effective(n) else { continue };
                // Period -> the point kept for it, or None when it is beyond the N most recent.
                let mut seen: HashMap<(i16, i8, i8), Option<u64>> = HashMap::new();
                let mut periods = 0u32;
                for &i in &eligible {
                    let Some(&date) = dates.get(&i) else { continue };
                    let key = cal.period(date);
                    let label = cal.label(key);
                    match seen.get(&key) {
                        Some(Some(id)) => passed[i].push(format!(
                            "{} {label} already has a newer {} point (#{id})",
                            cal.unit(),
                            cal.reason()
                        )),
                        Some(None) => passed[i].push(format!(
                            "{} {label} is not among the {n} most recent {} with points",
                            cal.unit(),
                            cal.units()
                        )),
                        None if periods < n => {
                            periods += 1;
                            seen.insert(key, Some(order[i].id));
                            kept[i].push((cal.reason(), format!("newest of {} {label}", cal.unit())));
                        }
                        None => {
                            seen.insert(key, None);
                            passed[i].push(format!(
                                "{} {label} is not among the {n} most recent {} with points",
                                cal.unit(),
                                cal.units()
                            ));
                        }
                    }
                }
            }
        }
        if let Some(d) = effective_within(policy.keep_within_s) {
            let span = i128::from(d);
            for &i in &eligible {
                let age = now - i128::from(order[i].created_unix);
                if age < span {
                    kept[i].push((
                        KeepReason::Within,
                        format!("created {} before now, within {}", human_secs(age), human_secs(span)),
                    ));
                } else {
                    passed[i].push(format!("created {} before now, not within {}", human_secs(age), human_secs(span)));
                }
            }
        }
    }

    order
        .iter()
        .zip(kept)
        .zip(passed)
        .map(|((c, mut k), p)| {
            k.sort_by_key(|(r, _)| *r);
            let keep = !k.is_empty();
            let why =
                if keep { k.iter().map(|(_, w)| w.as_str()).collect::<Vec<_>>().join("; ") } else { p.join("; ") };
            Decision {
                id: c.id,
                created_unix: c.created_unix,
                keep,
                reasons: k.into_iter().map(|(r, _)| r).collect(),
                why,
            }
        })
        .collect()
}

/// A rule of N = 0 counts as unset.
fn effective(n: Option<u32>) -> Option<u32> {
    n.filter(|&n| n > 0)
}

fn effective_within(d: Option<u64>) -> Option<u64> {
    d.filter(|&d| d > 0)
}

/// The local calendar date of a creation time. Times beyond jiff's range (year 9999) are
/// clamped to it; such points are in the future anyway.
fn local_date(created_unix: u64, tz: &TimeZone) -> Date {
    let secs = i64::try_from(created_unix).unwrap_or(i64::MAX).min(Timestamp::MAX.as_second());
    let ts = Timestamp::from_second(secs).unwrap_or(Timestamp::MAX);
    tz.to_datetime(ts).date()
}

#[derive(Debug, Clone, Copy)]
enum Calendar {
    Day,
    Week,
    Month,
    Year,
}

impl Calendar {
    /// The period `date` falls in, as a hashable key.
    fn period(self, date: Date) -> (i16, i8, i8) {
        match self {
            Calendar::Day => (date.year(), date.month(), date.day()),
            Calendar::Week => {
                let w = date.iso_week_date();
                (w.year(), w.week(), 0)
            }
            Calendar::Month => (date.year(), date.month(), 0),
            Calendar::Year => (date.year(), 0, 0),
        }
    }

    fn label(self, (y, m, d): (i16, i8, i8)) -> String {
        match self {
            Calendar::Day => format!("{y:04}-{m:02}-{d:02}"),
            Calendar::Week => format!("{y:04}-W{m:02}"),
            Calendar::Month => format!("{y:04}-{m:02}"),
            Calendar::Year => format!("{y:04}"),
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Calendar::Day => "day",
            Calendar::Week => "ISO week",
            Calendar::Month => "month",
            Calendar::Year => "year",
        }
    }

    fn units(self) -> &'static str {
        match self {
            Calendar::Day => "days",
            Calendar::Week => "ISO weeks",
            Calendar::Month => "months",
            Calendar::Year => "years",
        }
    }

    fn reason(self) -> KeepReason {
        match self {
            Calendar::Day => KeepReason::Daily,
            Calendar::Week => KeepReason::Weekly,
            Calendar::Month => KeepReason::Monthly,
            Calendar::Year => KeepReason::Yearly,
        }
    }
}

/// "3d 4h", "2h 5m", "40s": a duration in seconds for the explanations.
fn human_secs(s: i128) -> String {
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil;
    use std::collections::HashSet;

    fn zone(name: &str) -> TimeZone {
        time_zone(name).expect("zone in the tz database")
    }

    /// Seconds since the epoch of a local wall-clock time in `tz` (the earlier instant when
    /// the time is ambiguous, the later when it is skipped, like jiff's "compatible").
    fn local(tz: &TimeZone, y: i16, mo: i8, d: i8, h: i8, mi: i8) -> u64 {
        let zdt = civil::datetime(y, mo, d, h, mi, 0, 0).to_zoned_datetime(tz.clone()).expect("valid time");
        u64::try_from(zdt.timestamp().as_second()).expect("after 1970")
    }

    fn utc(y: i16, mo: i8, d: i8, h: i8, mi: i8) -> u64 {
        local(&TimeZone::UTC, y, mo, d, h, mi)
    }

    fn pt(id: u64, created_unix: u64) -> Candidate {
        Candidate { id, created_unix, pinned: false }
    }

    fn kept(ds: &[Decision]) -> Vec<u64> {
        ds.iter().filter(|d| d.keep).map(|d| d.id).collect()
    }

    fn pruned(ds: &[Decision]) -> Vec<u64> {
        ds.iter().filter(|d| !d.keep).map(|d| d.id).collect()
    }

    fn get(ds: &[Decision], id: u64) -> &Decision {
        ds.iter().find(|d| d.id == id).expect("decision for id")
    }

    fn now_of(created: u64) -> i64 {
        i64::try_from(created).expect("fits")
    }

    #[test]
    fn empty_policy_keeps_every_point() {
        let points: Vec<_> = (1..=5).map(|i| pt(i, 1_000_000 + i * 86_400)).collect();
        let policy = RetentionPolicy::default();
        assert!(policy.is_keep_all());
        let ds = plan(&policy, &points, 2_000_000, &TimeZone::UTC);
        assert_eq!(kept(&ds), vec![5, 4, 3, 2, 1]);
        assert_eq!(get(&ds, 5).reasons, vec![KeepReason::Newest, KeepReason::NoPolicy]);
        assert_eq!(get(&ds, 1).reasons, vec![KeepReason::NoPolicy]);
        assert_eq!(get(&ds, 1).why, "no retention rule is set");
        assert!(plan(&policy, &[], 0, &TimeZone::UTC).is_empty());
    }

    #[test]
    fn rule_of_zero_counts_as_unset_and_validate_rejects_it() {
        let policy = RetentionPolicy { keep_last: Some(0), keep_within_s: Some(0), ..Default::default() };
        assert!(policy.is_keep_all());
        let points: Vec<_> = (1..=3).map(|i| pt(i, i * 100)).collect();
        assert_eq!(kept(&plan(&policy, &points, 1_000, &TimeZone::UTC)), vec![3, 2, 1]);
        let err = policy.validate().expect_err("zero rejected").to_string();
        assert!(err.contains("keep_last is 0") && err.contains("keep_within_s is 0"), "{err}");
        let too_long = RetentionPolicy { keep_within_s: Some(u64::MAX), ..Default::default() };
        assert!(too_long.validate().is_err());
    }

    #[test]
    fn validate_accepts_ordinary_policies() {
        let gfs = RetentionPolicy {
            keep_last: Some(7),
            keep_daily: Some(14),
            keep_weekly: Some(8),
            keep_monthly: Some(12),
            keep_yearly: Some(3),
            keep_within_s: Some(86_400),
        };
        assert!(gfs.validate().is_ok());
        assert!(!gfs.is_keep_all());
        assert!(RetentionPolicy::default().validate().is_ok());
        assert!(!RetentionPolicy { keep_yearly: Some(1), ..Default::default() }.is_keep_all());
    }

    #[test]
    fn keep_last_alone_keeps_the_n_newest() {
        // Given in shuffled order; ids follow time.
        let points: Vec<_> = [4u64, 1, 6, 3, 5, 2].iter().map(|&i| pt(i, 1_700_000_000 + i * 3_600)).collect();
        let policy = RetentionPolicy { keep_last: Some(3), ..Default::default() };
        let ds = plan(&policy, &points, 1_800_000_000, &TimeZone::UTC);
        assert_eq!(ds.iter().map(|d| d.id).collect::<Vec<_>>(), vec![6, 5, 4, 3, 2, 1]);
        assert_eq!(kept(&ds), vec![6, 5, 4]);
        assert_eq!(get(&ds, 6).reasons, vec![KeepReason::Last, KeepReason::Newest]);
        assert_eq!(get(&ds, 5).reasons, vec![KeepReason::Last]);
        assert_eq!(get(&ds, 3).why, "not among the last 3");
    }

    #[test]
    fn keep_daily_alone_keeps_the_newest_point_of_each_recent_day() {
        let points = [
            pt(1, utc(2026, 5, 1, 8, 0)),
            pt(2, utc(2026, 5, 1, 20, 0)),
            pt(3, utc(2026, 5, 2, 1, 0)),
            pt(4, utc(2026, 5, 2, 23, 59)),
            pt(5, utc(2026, 5, 3, 0, 0)),
            pt(6, utc(2026, 5, 3, 12, 0)),
        ];
        let policy = RetentionPolicy { keep_daily: Some(2), ..Default::default() };
        let ds = plan(&policy, &points, now_of(utc(2026, 5, 3, 13, 0)), &TimeZone::UTC);
        assert_eq!(kept(&ds), vec![6, 4]);
        assert_eq!(get(&ds, 5).why, "day 2026-05-03 already has a newer daily point (#6)");
        assert_eq!(get(&ds, 2).why, "day 2026-05-01 is not among the 2 most recent days with points");
        assert_eq!(get(&ds, 4).why, "newest of day 2026-05-02");
    }

    #[test]
    fn days_without_points_do_not_use_up_keep_daily() {
        // Backups on 1, 5 and 20 May only: keep_daily 3 keeps all three days.
        let points = [pt(1, utc(2026, 5, 1, 22, 0)), pt(2, utc(2026, 5, 5, 22, 0)), pt(3, utc(2026, 5, 20, 22, 0))];
        let policy = RetentionPolicy { keep_daily: Some(3), ..Default::default() };
        let ds = plan(&policy, &points, now_of(utc(2026, 6, 1, 0, 0)), &TimeZone::UTC);
        assert_eq!(kept(&ds), vec![3, 2, 1]);
    }

    #[test]
    fn keep_weekly_alone_uses_iso_weeks_starting_on_monday() {
        // 2026-03-08 is a Sunday (W10), 03-09 Monday .. 03-15 Sunday is W11, 03-16 Monday W12.
        let points = [
            pt(1, utc(2026, 3, 8, 12, 0)),
            pt(2, utc(2026, 3, 9, 12, 0)),
            pt(3, utc(2026, 3, 10, 12, 0)),
            pt(4, utc(2026, 3, 15, 12, 0)),
            pt(5, utc(2026, 3, 16, 12, 0)),
        ];
        let policy = RetentionPolicy { keep_weekly: Some(2), ..Default::default() };
        let ds = plan(&policy, &points, now_of(utc(2026, 3, 17, 0, 0)), &TimeZone::UTC);
        assert_eq!(kept(&ds), vec![5, 4]);
        assert_eq!(get(&ds, 3).why, "ISO week 2026-W11 already has a newer weekly point (#4)");
        assert_eq!(get(&ds, 1).why, "ISO week 2026-W10 is not among the 2 most recent ISO weeks with points");

        // Around New Year the ISO week-year counts: 2026-12-31 (Thu) and 2027-01-01 (Fri) are
        // both in 2026-W53, while keep_yearly tells them apart.
        let points = [pt(1, utc(2026, 12, 20, 12, 0)), pt(2, utc(2026, 12, 31, 12, 0)), pt(3, utc(2027, 1, 1, 12, 0))];
        let now = now_of(utc(2027, 1, 2, 0, 0));
        let weekly = RetentionPolicy { keep_weekly: Some(5), ..Default::default() };
        let ds = plan(&weekly, &points, now, &TimeZone::UTC);
        assert_eq!(kept(&ds), vec![3, 1]);
        assert_eq!(get(&ds, 2).why, "ISO week 2026-W53 already has a newer weekly point (#3)");
        let yearly = RetentionPolicy { keep_yearly: Some(5), ..Default::default() };
        assert_eq!(kept(&plan(&yearly, &points, now, &TimeZone::UTC)), vec![3, 2]);
    }

    #[test]
    fn keep_monthly_alone_keeps_the_newest_point_of_each_recent_month() {
        let points = [
            pt(1, utc(2026, 1, 5, 0, 0)),
            pt(2, utc(2026, 1, 31, 23, 0)),
            pt(3, utc(2026, 2, 14, 0, 0)),
            pt(4, utc(2026, 3, 1, 0, 0)),
            pt(5, utc(2026, 3, 2, 0, 0)),
        ];
        let policy = RetentionPolicy { keep_monthly: Some(2), ..Default::default() };
        let ds = plan(&policy, &points, now_of(utc(2026, 3, 3, 0, 0)), &TimeZone::UTC);
        assert_eq!(kept(&ds), vec![5, 3]);
        assert_eq!(get(&ds, 4).why, "month 2026-03 already has a newer monthly point (#5)");
        let three = RetentionPolicy { keep_monthly: Some(3), ..Default::default() };
        assert_eq!(kept(&plan(&three, &points, now_of(utc(2026, 3, 3, 0, 0)), &TimeZone::UTC)), vec![5, 3, 2]);
    }

    #[test]
    fn keep_yearly_alone_keeps_the_newest_point_of_each_recent_year() {
        let points = [
            pt(1, utc(2024, 6, 1, 0, 0)),
            pt(2, utc(2025, 1, 1, 0, 0)),
            pt(3, utc(2025, 12, 31, 23, 59)),
            pt(4, utc(2026, 2, 1, 0, 0)),
        ];
        let policy = RetentionPolicy { keep_yearly: Some(2), ..Default::default() };
        let ds = plan(&policy, &points, now_of(utc(2026, 3, 1, 0, 0)), &TimeZone::UTC);
        assert_eq!(kept(&ds), vec![4, 3]);
        assert_eq!(get(&ds, 1).why, "year 2024 is not among the 2 most recent years with points");
    }

    #[test]
    fn keep_within_alone_keeps_points_younger_than_the_span() {
        let now = 1_800_000_000u64;
        let points = [
            pt(1, now - 90_000),
            pt(2, now - 86_400), // exactly the span: not within (created > now - D)
            pt(3, now - 86_399),
            pt(4, now - 3_600),
            pt(5, now - 10),
        ];
        let policy = RetentionPolicy { keep_within_s: Some(86_400), ..Default::default() };
        let ds = plan(&policy, &points, now_of(now), &TimeZone::UTC);
        assert_eq!(kept(&ds), vec![5, 4, 3]);
        assert_eq!(get(&ds, 2).why, "created 1d 0h before now, not within 1d 0h");
        assert_eq!(get(&ds, 4).why, "created 1h 0m before now, within 1d 0h");
    }

    #[test]
    fn newest_point_is_kept_even_when_no_rule_picks_it() {
        let points = [pt(1, 1_000), pt(2, 2_000)];
        let policy = RetentionPolicy { keep_within_s: Some(60), ..Default::default() };
        let ds = plan(&policy, &points, 1_000_000, &TimeZone::UTC);
        assert_eq!(kept(&ds), vec![2]);
        assert_eq!(get(&ds, 2).reasons, vec![KeepReason::Newest]);
        assert_eq!(get(&ds, 2).why, "newest point");
    }

    #[test]
    fn future_points_are_kept_and_not_counted() {
        let now = 1_800_000_000u64;
        let points = [pt(1, now - 7_200), pt(2, now - 3_600), pt(3, now + 600), pt(4, now + 86_400 * 3)];
        let policy = RetentionPolicy { keep_last: Some(1), ..Default::default() };
        let ds = plan(&policy, &points, now_of(now), &TimeZone::UTC);
        assert_eq!(ds.iter().map(|d| d.id).collect::<Vec<_>>(), vec![4, 3, 2, 1]);
        assert_eq!(kept(&ds), vec![4, 3, 2]);
        assert_eq!(get(&ds, 4).reasons, vec![KeepReason::Future]);
        assert_eq!(get(&ds, 4).why, "created 3d 0h after now (clock trouble?)");
        // The newest point the clock believes in is the backup just made.
        assert_eq!(get(&ds, 2).reasons, vec![KeepReason::Last, KeepReason::Newest]);
        assert_eq!(get(&ds, 1).why, "not among the last 1");
        // Only future points: the newest of them is the newest.
        let ds = plan(&policy, &points[2..], now_of(now), &TimeZone::UTC);
        assert_eq!(get(&ds, 4).reasons, vec![KeepReason::Newest, KeepReason::Future]);
    }

    #[test]
    fn pinned_points_survive_and_do_not_consume_n() {
        let mut points: Vec<_> = (1..=6).map(|i| pt(i, utc(2026, 4, i as i8, 22, 0))).collect();
        points[3].pinned = true; // #4
        points[0].pinned = true; // #1, the oldest
        let policy = RetentionPolicy { keep_last: Some(2), keep_daily: Some(3), ..Default::default() };
        let ds = plan(&policy, &points, now_of(utc(2026, 4, 7, 0, 0)), &TimeZone::UTC);
        // keep_last 2: #6, #5; keep_daily 3: 6, 5, 3 (day 4 is pinned, so day 3 counts instead).
        assert_eq!(kept(&ds), vec![6, 5, 4, 3, 1]);
        assert_eq!(pruned(&ds), vec![2]);
        assert_eq!(get(&ds, 4).reasons, vec![KeepReason::Pinned]);
        assert_eq!(get(&ds, 3).reasons, vec![KeepReason::Daily]);
        assert_eq!(get(&ds, 1).reasons, vec![KeepReason::Pinned]);
        // A pinned newest point is still the newest; the rules start below it.
        points[5].pinned = true;
        let ds = plan(&policy, &points, now_of(utc(2026, 4, 7, 0, 0)), &TimeZone::UTC);
        assert_eq!(get(&ds, 6).reasons, vec![KeepReason::Pinned, KeepReason::Newest]);
        assert_eq!(kept(&ds), vec![6, 5, 4, 3, 2, 1]);
        assert_eq!(get(&ds, 2).reasons, vec![KeepReason::Daily]);
    }

    #[test]
    fn gfs_combination_over_ninety_daily_points() {
        // One point a day at 12:00 UTC from 2026-01-01 (#1) to 2026-03-31 (#90).
        let mut date = civil::date(2026, 1, 1);
        let mut points = Vec::new();
        for id in 1..=90u64 {
            points.push(pt(id, local(&TimeZone::UTC, date.year(), date.month(), date.day(), 12, 0)));
            date = date.tomorrow().expect("date");
        }
        let policy = RetentionPolicy {
            keep_daily: Some(7),
            keep_weekly: Some(4),
            keep_monthly: Some(3),
            keep_yearly: Some(1),
            ..Default::default()
        };
        let ds = plan(&policy, &points, now_of(utc(2026, 3, 31, 13, 0)), &TimeZone::UTC);
        // daily: 25-31 March (#84-#90); weekly: Tue 31 March (W14), Sundays 29 (#88), 22 (#81),
        // 15 March (#74); monthly: 31 March, 28 February (#59), 31 January (#31); yearly: #90.
        assert_eq!(kept(&ds), vec![90, 89, 88, 87, 86, 85, 84, 81, 74, 59, 31]);
        use KeepReason::*;
        assert_eq!(get(&ds, 90).reasons, vec![Daily, Weekly, Monthly, Yearly, Newest]);
        assert_eq!(get(&ds, 88).reasons, vec![Daily, Weekly]);
        assert_eq!(get(&ds, 81).reasons, vec![Weekly]);
        assert_eq!(get(&ds, 59).reasons, vec![Monthly]);
        assert_eq!(get(&ds, 59).why, "newest of month 2026-02");
        assert_eq!(
            get(&ds, 80).why,
            "day 2026-03-21 is not among the 7 most recent days with points; \
             ISO week 2026-W12 already has a newer weekly point (#81); \
             month 2026-03 already has a newer monthly point (#90); \
             year 2026 already has a newer yearly point (#90)"
        );
    }

    #[test]
    fn worked_example_in_module_docs_holds() {
        let berlin = zone("Europe/Berlin");
        let at = |mo, d, h, mi| local(&berlin, 2026, mo, d, h, mi);
        let mut points = vec![
            pt(1, at(2, 20, 22, 0)),
            pt(2, at(3, 2, 22, 0)),
            pt(3, at(3, 15, 22, 0)),
            pt(4, at(3, 23, 22, 0)),
            pt(5, at(3, 28, 22, 0)),
            pt(6, at(3, 29, 8, 0)),
            pt(7, at(3, 29, 23, 30)),
            pt(8, at(3, 30, 9, 0)),
        ];
        points[1].pinned = true;
        let policy = RetentionPolicy {
            keep_last: Some(2),
            keep_daily: Some(3),
            keep_weekly: Some(2),
            keep_monthly: Some(2),
            ..Default::default()
        };
        let ds = plan(&policy, &points, now_of(at(3, 30, 12, 0)), &berlin);
        use KeepReason::*;
        assert_eq!(kept(&ds), vec![8, 7, 5, 2, 1]);
        assert_eq!(get(&ds, 8).reasons, vec![Last, Daily, Weekly, Monthly, Newest]);
        assert_eq!(get(&ds, 7).reasons, vec![Last, Daily, Weekly]);
        assert_eq!(get(&ds, 5).reasons, vec![Daily]);
        assert_eq!(get(&ds, 2).reasons, vec![Pinned]);
        assert_eq!(get(&ds, 1).reasons, vec![Monthly]);
        assert_eq!(
            get(&ds, 6).why,
            "not among the last 2; day 2026-03-29 already has a newer daily point (#7); \
             ISO week 2026-W13 already has a newer weekly point (#7); \
             month 2026-03 already has a newer monthly point (#8)"
        );
        assert_eq!(
            get(&ds, 4).why,
            "not among the last 2; day 2026-03-23 is not among the 3 most recent days with points; \
             ISO week 2026-W13 already has a newer weekly point (#7); \
             month 2026-03 already has a newer monthly point (#8)"
        );
        assert_eq!(
            get(&ds, 3).why,
            "not among the last 2; day 2026-03-15 is not among the 3 most recent days with points; \
             ISO week 2026-W11 is not among the 2 most recent ISO weeks with points; \
             month 2026-03 already has a newer monthly point (#8)"
        );
        assert_eq!(get(&ds, 7).created_unix, utc(2026, 3, 29, 21, 30));
        assert_eq!(get(&ds, 8).created_unix, utc(2026, 3, 30, 7, 0));
    }

    #[test]
    fn time_zone_changes_the_daily_keeps() {
        // The same four instants on 2026-06-10 UTC.
        let points = [
            pt(1, utc(2026, 6, 10, 1, 0)),  // NY 06-09 21:00, Kolkata 06-10 06:30
            pt(2, utc(2026, 6, 10, 4, 0)),  // NY 06-10 00:00, Kolkata 06-10 09:30
            pt(3, utc(2026, 6, 10, 18, 0)), // NY 06-10 14:00, Kolkata 06-10 23:30
            pt(4, utc(2026, 6, 10, 20, 0)), // NY 06-10 16:00, Kolkata 06-11 01:30
        ];
        let policy = RetentionPolicy { keep_daily: Some(10), ..Default::default() };
        let now = now_of(utc(2026, 6, 12, 0, 0));
        assert_eq!(kept(&plan(&policy, &points, now, &TimeZone::UTC)), vec![4]);
        assert_eq!(kept(&plan(&policy, &points, now, &zone("America/New_York"))), vec![4, 1]);
        assert_eq!(kept(&plan(&policy, &points, now, &zone("Asia/Kolkata"))), vec![4, 3]);
    }

    #[test]
    fn dst_days_in_europe_berlin_bucket_by_local_day() {
        let berlin = zone("Europe/Berlin");
        // Spring forward on 2026-03-29 (02:00 CET -> 03:00 CEST): 23:30 CEST on the 29th is
        // 21:30 UTC, 00:30 CEST on the 30th is still the 29th (22:30 UTC) in UTC.
        let spring = [
            pt(1, utc(2026, 3, 29, 0, 30)),  // 01:30 CET, before the change
            pt(2, utc(2026, 3, 29, 21, 30)), // 23:30 CEST on the 29th
            pt(3, utc(2026, 3, 29, 22, 30)), // 00:30 CEST on the 30th
        ];
        assert_eq!(spring[1].created_unix, local(&berlin, 2026, 3, 29, 23, 30));
        let daily = RetentionPolicy { keep_daily: Some(10), ..Default::default() };
        let now = now_of(utc(2026, 3, 31, 0, 0));
        let ds = plan(&daily, &spring, now, &berlin);
        assert_eq!(kept(&ds), vec![3, 2]);
        assert_eq!(get(&ds, 2).why, "newest of day 2026-03-29");
        assert_eq!(get(&ds, 1).why, "day 2026-03-29 already has a newer daily point (#2)");
        assert_eq!(kept(&plan(&daily, &spring, now, &TimeZone::UTC)), vec![3]);

        // Fall back on 2026-10-25 (03:00 CEST -> 02:00 CET): 02:30 happens twice, both on the
        // 25th; 23:30 CET on the 25th is 22:30 UTC, 00:30 CET on the 26th is 23:30 UTC on the 25th.
        let autumn = [
            pt(1, utc(2026, 10, 25, 0, 30)),  // 02:30 CEST
            pt(2, utc(2026, 10, 25, 1, 30)),  // 02:30 CET, an hour later
            pt(3, utc(2026, 10, 25, 22, 30)), // 23:30 CET on the 25th
            pt(4, utc(2026, 10, 25, 23, 30)), // 00:30 CET on the 26th
            pt(5, utc(2026, 10, 24, 22, 30)), // 00:30 CEST on the 25th, 24th in UTC
        ];
        let now = now_of(utc(2026, 10, 27, 0, 0));
        let ds = plan(&daily, &autumn, now, &berlin);
        assert_eq!(kept(&ds), vec![4, 3]);
        assert_eq!(get(&ds, 5).why, "day 2026-10-25 already has a newer daily point (#3)");
        assert_eq!(kept(&plan(&daily, &autumn, now, &TimeZone::UTC)), vec![4, 5]);
        // A fixed +01:00 offset ignores summer time and puts #5 (00:30 CEST) on the 24th.
        let fixed = TimeZone::fixed(jiff::tz::offset(1));
        assert_eq!(kept(&plan(&daily, &autumn, now, &fixed)), vec![4, 3, 5]);
    }

    #[test]
    fn decisions_are_sorted_newest_first_with_ties_by_id() {
        let points = [pt(3, 100), pt(9, 200), pt(5, 200), pt(1, 50)];
        let ds = plan(&RetentionPolicy { keep_last: Some(1), ..Default::default() }, &points, 1_000, &TimeZone::UTC);
        assert_eq!(ds.iter().map(|d| d.id).collect::<Vec<_>>(), vec![9, 5, 3, 1]);
        assert_eq!(kept(&ds), vec![9]);
    }

    #[test]
    fn extreme_times_are_handled() {
        let points = [pt(1, 0), pt(2, u64::MAX), pt(3, 1_000)];
        let policy = RetentionPolicy { keep_daily: Some(1), keep_within_s: Some(u64::MAX), ..Default::default() };
        let ds = plan(&policy, &points, i64::MIN, &zone("Pacific/Kiritimati"));
        assert_eq!(kept(&ds), vec![2, 3, 1]);
        // u64::MAX is beyond i64::MAX: still in the future.
        let ds = plan(&policy, &points, i64::MAX, &zone("Pacific/Kiritimati"));
        assert_eq!(kept(&ds), vec![2, 3, 1]);
        assert_eq!(get(&ds, 2).reasons, vec![KeepReason::Future]);
        assert_eq!(get(&ds, 3).reasons, vec![KeepReason::Daily, KeepReason::Within, KeepReason::Newest]);
    }

    #[test]
    fn unknown_time_zone_names_are_a_clear_error() {
        let err = time_zone("Europe/Atlantis").expect_err("unknown").to_string();
        assert!(err.contains("unknown time zone \"Europe/Atlantis\"") && err.contains("IANA"), "{err}");
        assert!(time_zone("").is_err());
        assert!(time_zone("UTC").is_ok());
        assert_eq!(time_zone("Asia/Kolkata").expect("known").iana_name(), Some("Asia/Kolkata"));
        // Whatever the machine says, it is a usable zone.
        let _ = system_time_zone().to_datetime(Timestamp::UNIX_EPOCH);
    }

    #[test]
    fn policy_round_trips_through_json_and_refuses_unknown_fields() {
        let policy = RetentionPolicy { keep_daily: Some(7), keep_within_s: Some(3_600), ..Default::default() };
        let json = serde_json::to_string(&policy).expect("serialises");
        assert_eq!(json, r#"{"keep_daily":7,"keep_within_s":3600}"#);
        assert_eq!(serde_json::from_str::<RetentionPolicy>(&json).expect("parses"), policy);
        assert_eq!(serde_json::from_str::<RetentionPolicy>("{}").expect("parses"), RetentionPolicy::default());
        assert!(serde_json::from_str::<RetentionPolicy>(r#"{"keep_dayly":7}"#).is_err());
        let reason = serde_json::to_string(&KeepReason::NoPolicy).expect("serialises");
        assert_eq!(reason, r#""no-policy""#);
    }

    /// Prune what `plan` says; returns the survivors.
    fn apply(policy: &RetentionPolicy, points: &[Candidate], now: i64, tz: &TimeZone) -> Vec<Candidate> {
        let keep: Vec<u64> = kept(&plan(policy, points, now, tz));
        points.iter().filter(|c| keep.contains(&c.id)).copied().collect()
    }

    /// Local backup times of day `day` (1 = 2025-01-01) in the simulated year: one at 22:00;
    /// an extra one at 07:15 on every 9th day from the 4th, and one at 23:30 (the newest of
    /// its day) on every 31st day.
    fn backup_times(day: u32) -> Vec<(i8, i8)> {
        let mut times = vec![(22, 0)];
        if day % 9 == 4 {
            times.insert(0, (7, 15));
        }
        if day.is_multiple_of(31) {
            times.push((23, 30));
        }
        times
    }

    #[test]
    fn a_year_of_daily_backups_stays_bounded_and_keeps_every_recent_week() {
        let berlin = zone("Europe/Berlin");
        let policy = RetentionPolicy {
            keep_last: Some(7),
            keep_daily: Some(14),
            keep_weekly: Some(8),
            keep_monthly: Some(12),
            keep_yearly: Some(3),
            keep_within_s: None,
        };
        let bound = 7 + 14 + 8 + 12 + 3 + 1;
        let mut store: Vec<Candidate> = Vec::new();
        let mut next_id = 1u64;
        let mut backup_weeks = HashSet::new();
        let mut date = civil::date(2025, 1, 1);
        for day in 1..=365u32 {
            for (h, mi) in backup_times(day) {
                let created = local(&berlin, date.year(), date.month(), date.day(), h, mi);
                store.push(pt(next_id, created));
                next_id += 1;
                store = apply(&policy, &store, now_of(created), &berlin);
                assert!(store.len() <= bound, "day {day}: {} points kept", store.len());
                let newest = store.iter().map(|c| c.created_unix).max();
                assert_eq!(newest, Some(created), "day {day}: the backup just made is kept");
            }
            // A point from each of the last 8 ISO weeks (this one included) that had backups.
            // 2025-01-01 is a Wednesday in 2025-W01; from day 48 (Monday 17 February, W08) all
            // 8 weeks have backups. (On day 41 the 8th week back is still 2024-W52.)
            let iso_week = |d: Date| {
                let w = d.iso_week_date();
                (w.year(), w.week())
            };
            backup_weeks.insert(iso_week(date));
            let kept_weeks: HashSet<_> = store.iter().map(|c| iso_week(local_date(c.created_unix, &berlin))).collect();
            let mut d = date;
            let mut checked = 0;
            for back in 0..8 {
                if backup_weeks.contains(&iso_week(d)) {
                    assert!(kept_weeks.contains(&iso_week(d)), "day {day}: no point in the week {back} back");
                    checked += 1;
                }
                d = d.checked_sub(jiff::Span::new().days(7)).expect("date");
            }
            if day >= 48 {
                assert_eq!(checked, 8, "day {day}");
            }
            date = date.tomorrow().expect("date");
        }
        // After the year: the 14 daily points (18-31 December), weekly adds Sundays 14, 7
        // December and 30, 23, 16 November (28 and 21 December are daily already), monthly
        // adds the last points of October back to January (10), yearly nothing new (2025 is
        // the only year), and keep_last 7 adds the 07:15 extra of 30 December (day 364).
        assert_eq!(store.len(), 14 + 5 + 10 + 1);
        assert!(store.iter().any(|c| c.created_unix == local(&berlin, 2025, 12, 30, 7, 15)));
        // 7 December (day 341) ended with a 23:30 extra: that is its weekly point.
        assert!(store.iter().any(|c| c.created_unix == local(&berlin, 2025, 12, 7, 23, 30)));
        assert!(!store.iter().any(|c| c.created_unix == local(&berlin, 2025, 12, 7, 22, 0)));
        // Pruning after every backup kept what one plan over the whole year keeps.
        let mut all = Vec::new();
        let mut id = 1u64;
        let mut date = civil::date(2025, 1, 1);
        for day in 1..=365u32 {
            for (h, mi) in backup_times(day) {
                all.push(pt(id, local(&berlin, date.year(), date.month(), date.day(), h, mi)));
                id += 1;
            }
            date = date.tomorrow().expect("date");
        }
        let last = now_of(all.iter().map(|c| c.created_unix).max().expect("points"));
        let mut once: Vec<u64> = kept(&plan(&policy, &all, last, &berlin));
        let mut each: Vec<u64> = store.iter().map(|c| c.id).collect();
        once.sort_unstable();
        each.sort_unstable();
        assert_eq!(once, each);
    }

    /// xorshift64*: deterministic pseudo-random numbers without a crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn rule(&mut self) -> Option<u32> {
            if self.below(2) == 0 {
                None
            } else {
                Some(self.below(6) as u32)
            }
        }
    }

    #[test]
    fn plan_properties_hold_for_random_series() {
        let zones = [
            TimeZone::UTC,
            zone("Europe/Berlin"),
            zone("America/New_York"),
            zone("Asia/Kolkata"),
            zone("America/Sao_Paulo"),
            zone("Australia/Lord_Howe"),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut pruned_total = 0;
        for iteration in 0..3_000 {
            let now: i64 = 1_700_000_000 + rng.below(200_000_000) as i64;
            let len = rng.below(30) as usize;
            let mut points: Vec<Candidate> = Vec::with_capacity(len);
            for i in 0..len {
                let created = match rng.below(20) {
                    0 => now as u64 + 1 + rng.below(86_400 * 3), // in the future
                    1 if i > 0 => points[i - 1].created_unix,    // same second as another
                    2 => now as u64 - rng.below(3_600),          // the last hour
                    _ => now as u64 - rng.below(86_400 * 365 * 3),
                };
                points.push(Candidate { id: 1_000 + i as u64, created_unix: created, pinned: rng.below(10) == 0 });
            }
            let policy = RetentionPolicy {
                keep_last: rng.rule(),
                keep_daily: rng.rule(),
                keep_weekly: rng.rule(),
                keep_monthly: rng.rule(),
                keep_yearly: rng.rule(),
                keep_within_s: if rng.below(3) == 0 { Some(rng.below(86_400 * 30)) } else { None },
            };
            let tz = &zones[rng.below(zones.len() as u64) as usize];
            let ctx = format!("iteration {iteration}: {policy:?} {tz:?} now {now} {points:?}");

            let ds = plan(&policy, &points, now, tz);
            pruned_total += pruned(&ds).len();
            // Deterministic, also when the input comes in another order.
            assert_eq!(ds, plan(&policy, &points, now, tz), "{ctx}");
            let mut reversed = points.clone();
            reversed.reverse();
            assert_eq!(ds, plan(&policy, &reversed, now, tz), "{ctx}");
            // One decision per input point, newest first.
            let mut ids_in: Vec<u64> = points.iter().map(|c| c.id).collect();
            let mut ids_out: Vec<u64> = ds.iter().map(|d| d.id).collect();
            ids_in.sort_unstable();
            ids_out.sort_unstable();
            assert_eq!(ids_in, ids_out, "{ctx}");
            assert!(ds.windows(2).all(|w| (w[0].created_unix, w[0].id) > (w[1].created_unix, w[1].id)), "{ctx}");
            for d in &ds {
                assert_eq!(d.keep, !d.reasons.is_empty(), "{ctx}");
                assert!(!d.why.is_empty(), "{ctx}");
            }
            if let Some(first) = ds.first() {
                assert!(first.keep, "newest kept: {ctx}");
            }
            for c in &points {
                let d = get(&ds, c.id);
                if c.pinned || c.created_unix as i64 > now {
                    assert!(d.keep, "pinned and future points kept: {ctx}");
                }
            }
            if policy.is_keep_all() {
                assert!(ds.iter().all(|d| d.keep), "{ctx}");
            }
            if let Some(n) = policy.keep_last {
                let kept_count = ds.iter().filter(|d| d.keep).count();
                assert!(kept_count >= (n as usize).min(points.len()), "{ctx}");
            }
            // Idempotent: planning again over the survivors prunes nothing more.
            let survivors = apply(&policy, &points, now, tz);
            let again = plan(&policy, &survivors, now, tz);
            assert!(again.iter().all(|d| d.keep), "{ctx}\nsurvivors {survivors:?}\nagain {again:?}");
        }
        // The loop exercised pruning, not only keep-all policies.
        assert!(pruned_total > 10_000, "{pruned_total} points pruned");
    }
}
