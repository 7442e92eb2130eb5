//! Calendar events for job schedules, a small subset of systemd's `OnCalendar=` syntax, in
//! UTC (the appliance's clock):
//!
//! ```text
//!   [WEEKDAYS] TIME        WEEKDAYS: mon..fri | sat,sun | mon,wed..fri   (default: every day)
//!   TIME: H:M              H: * | 22 | 8,12,18      M: 0 | * | 0/15 (from 0, every 15) | 5,35
//!   shorthands: hourly (*:00), daily (00:00), weekly (mon 00:00)
//! ```
//! Examples: `mon..fri 22:00`, `*:0/15`, `sat,sun 03:30`, `daily`.

use serde::{Deserialize, Serialize};

/// A parsed calendar event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalendarEvent {
    /// Bit `d` set: weekday `d` (0 = Monday).
    weekdays: u8,
    /// Bit `h` set: hour `h`.
    hours: u32,
    /// Bit `m` set: minute `m`.
    minutes: u64,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day(s: &str) -> Result<u32, String> {
    let s = s.to_ascii_lowercase();
    DAYS.iter()
        .position(|d| s.starts_with(d) && d.len() <= s.len())
        .map(|i| i as u32)
        .ok_or_else(|| format!("{s:?} is not a weekday (mon, tue, wed, thu, fri, sat, sun)"))
}

/// A field of numbers below `max`: `*`, `n`, `a,b`, `a..b`, `start/step`.
fn field(s: &str, max: u32, what: &str) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in s.split(',') {
        let num = |t: &str| -> Result<u32, String> {
            let n: u32 = t.parse().map_err(|_| format!("{what} {t:?} is not a number"))?;
            if n >= max {
                return Err(format!("{what} {n} is out of range 0..{}", max - 1));
            }
            Ok(n)
        };
        if part == "*" {
            bits |= (1u64 << max) - 1;
        } else if let Some((start, step)) = part.split_once('/') {
            let start = if start == "*" { 0 } else { num(start)? };
            let step: u32 = step.parse().map_err(|_| format!("{what} step {step:?} is not a number"))?;
            if step == 0 {
                return Err(format!("{what} step must be at least 1"));
            }
            let mut v = start;
            while v < max {
                bits |= 1 << v;
                v += step;
            }
        } else if let Some((a, b)) = part.split_once("..") {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(format!("{what} range {a}..{b} runs backwards"));
            }
            for v in a..=b {
                bits |= 1 << v;
            }
        } else {
            bits |= 1 << num(part)?;
        }
    }
    Ok(bits)
}

impl CalendarEvent {
    /// Parses an event; the error says what is wrong and shows an example.
    pub fn parse(spec: &str) -> Result<CalendarEvent, String> {
        let err = |e: String| format!("schedule {spec:?}: {e} (examples: \"mon..fri 22:00\", \"*:0/15\", \"daily\")");
        let spec_l = spec.trim().to_ascii_lowercase();
        let expanded = match spec_l.as_str() {
            "hourly" => "*:00".to_string(),
            "daily" => "00:00".to_string(),
            "weekly" => "mon 00:00".to_string(),
            s => s.to_string(),
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        let (days, time) = match parts.as_slice() {
            [t] => (None, *t),
            [d, t] => (Some(*d), *t),
            _ => return Err(err("expected [WEEKDAYS] H:M".into())),
        };
        let mut weekdays = 0u8;
        match days {
            None => weekdays = 0x7f,
            Some(d) => {
                for item in d.split(',') {
                    match item.split_once("..") {
                        Some((a, b)) => {
                            let (a, b) = (day(a).map_err(err)?, day(b).map_err(err)?);
                            if a > b {
                                return Err(err(format!("weekday range {item} runs backwards")));
                            }
                            for i in a..=b {
                                weekdays |= 1 << i;
                            }
                        }
                        None => weekdays |= 1 << day(item).map_err(err)?,
                    }
                }
            }
        }
        let (h, m) = time.split_once(':').ok_or_else(|| err(format!("time {time:?} is not H:M")))?;
        let hours = field(h, 24, "hour").map_err(err)? as u32;
        let minutes = field(m, 60, "minute").map_err(err)?;
        Ok(CalendarEvent { weekdays, hours, minutes })
    }

    fn matches(&self, unix: u64) -> bool {
        let days = unix / 86400;
        // 1970-01-01 was a Thursday (index 3 with Monday = 0).
        let weekday = ((days + 3) % 7) as u32;
        let hour = ((unix % 86400) / 3600) as u32;
        let minute = (unix % 3600) / 60;
        self.weekdays & (1 << weekday) != 0 && self.hours & (1 << hour) != 0 && self.minutes & (1 << minute) != 0
    }

    /// The first matching minute strictly after `unix`.
    pub fn next_after(&self, unix: u64) -> Option<u64> {
        let mut t = (unix / 60 + 1) * 60;
        // Every event matches at least once a week.
        for _ in 0..(8 * 24 * 60) {
            if self.matches(t) {
                return Some(t);
            }
            t += 60;
        }
        None
    }
}

/// A daily time window in UTC, `HH:MM-HH:MM`; it may span midnight (`22:00-06:00`). Start
/// and end equal: the whole day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    /// Minutes after midnight.
    start: u32,
    end: u32,
}

impl TimeWindow {
    /// Parses `HH:MM-HH:MM`; the error says what is wrong and shows an example.
    pub fn parse(spec: &str) -> Result<TimeWindow, String> {
        let minutes = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let bad = || format!("window {spec:?}: give HH:MM-HH:MM in UTC, e.g. 22:00-06:00");
        let (a, b) = spec.split_once('-').ok_or_else(bad)?;
        Ok(TimeWindow { start: minutes(a).ok_or_else(bad)?, end: minutes(b).ok_or_else(bad)? })
    }

    /// Whether `unix` (seconds, UTC) is inside the window.
    pub fn contains(&self, unix: u64) -> bool {
        let m = ((unix % 86400) / 60) as u32;
        match self.start.cmp(&self.end) {
            std::cmp::Ordering::Equal => true,
            std::cmp::Ordering::Less => (self.start..self.end).contains(&m),
            std::cmp::Ordering::Greater => m >= self.start || m < self.end,
        }
    }

    /// When the window next opens at or after `unix` (`unix` itself when inside).
    pub fn opens_at(&self, unix: u64) -> u64 {
        if self.contains(unix) {
            return unix;
        }
        let day = unix - unix % 86400;
        let today = day + u64::from(self.start) * 60;
        if today > unix {
            today
        } else {
            today + 86400
        }
    }
}

impl std::fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}:{:02}-{:02}:{:02}", self.start / 60, self.start % 60, self.end / 60, self.end % 60)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_window_across_midnight_contains_the_night_and_says_when_it_opens() {
        let w = TimeWindow::parse("22:00-06:00").unwrap();
        assert!(w.contains(MONDAY + 23 * 3600) && w.contains(MONDAY + 5 * 3600) && !w.contains(MONDAY + 12 * 3600));
        assert!(!w.contains(MONDAY + 6 * 3600), "the end is outside");
        assert_eq!(w.opens_at(MONDAY + 12 * 3600), MONDAY + 22 * 3600);
        assert_eq!(w.opens_at(MONDAY + 23 * 3600), MONDAY + 23 * 3600);
        let day = TimeWindow::parse("08:30-17:00").unwrap();
        assert_eq!(day.opens_at(MONDAY + 18 * 3600), MONDAY + 86400 + 8 * 3600 + 1800);
        assert!(TimeWindow::parse("00:00-00:00").unwrap().contains(MONDAY + 12345));
        for bad in ["22-06", "25:00-01:00", "22:00", "aa:bb-cc:dd"] {
            assert!(TimeWindow::parse(bad).unwrap_err().contains("HH:MM-HH:MM"), "{bad}");
        }
        assert_eq!(w.to_string(), "22:00-06:00");
    }

    use super::*;

    // 2026-11-23 00:00:00 UTC is a Monday.
    const MONDAY: u64 = 1_795_392_000;

    #[test]
    fn weekday_of_the_reference_is_monday() {
        assert!(CalendarEvent::parse("mon 00:00").unwrap().matches(MONDAY));
        assert!(!CalendarEvent::parse("tue 00:00").unwrap().matches(MONDAY));
    }

    #[test]
    fn next_occurrences() {
        let e = CalendarEvent::parse("mon..fri 22:00").unwrap();
        assert_eq!(e.next_after(MONDAY), Some(MONDAY + 22 * 3600));
        // Friday 22:00 -> next is Monday 22:00.
        let fri = MONDAY + 4 * 86400 + 22 * 3600;
        assert_eq!(e.next_after(fri), Some(MONDAY + 7 * 86400 + 22 * 3600));
        let q = CalendarEvent::parse("*:0/15").unwrap();
        assert_eq!(q.next_after(MONDAY), Some(MONDAY + 15 * 60));
        assert_eq!(q.next_after(MONDAY + 15 * 60 + 1), Some(MONDAY + 30 * 60));
        assert_eq!(CalendarEvent::parse("daily").unwrap().next_after(MONDAY + 5), Some(MONDAY + 86400));
        let w = CalendarEvent::parse("sat,sun 03:30").unwrap();
        assert_eq!(w.next_after(MONDAY), Some(MONDAY + 5 * 86400 + 3 * 3600 + 1800));
    }

    #[test]
    fn bad_schedules_say_why() {
        for (s, want) in [
            ("funday 10:00", "weekday"),
            ("25:00", "out of range"),
            ("10", "H:M"),
            ("*:0/0", "step"),
            ("fri..mon 1:00", "backwards"),
            ("a b c", "expected"),
        ] {
            let e = CalendarEvent::parse(s).unwrap_err();
            assert!(e.contains(want) && e.contains("example"), "{s}: {e}");
        }
    }
}
