//! When a schedule fires: a cron expression read in an IANA time zone ([`Recurrence`]).
//!
//! The grammar is checked here, field by field, before `croner` parses the expression, so that
//! every door (this crate, the SQL functions, the manifest) accepts exactly the same language
//! and says the same thing about what it refuses. `croner` then computes the fire times,
//! including across daylight-saving changes, by the rule of Vixie cron and the Open Cron
//! Pattern Specification:
//!
//! - a fixed time that does not exist on a spring-forward day (02:30 in Europe/Berlin) fires
//!   at the first valid time after the gap (03:00), once;
//! - a fixed time that exists twice on a fall-back day fires once, at its first occurrence;
//! - a wildcard field (hourly, every minute) skips the hour that does not exist and fires in
//!   both occurrences of the hour that repeats (23 and 25 hourly ticks on those days).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Longest cron expression accepted.
pub const MAX_CRON_LEN: usize = 200;

/// Why a cron expression or a time zone is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRecurrence {
    /// The expression does not follow the grammar.
    #[error("invalid cron expression {expression:?}: {reason}")]
    Cron {
        /// The expression, as given.
        expression: String,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// The time zone is not an IANA name.
    #[error("unknown time zone {0:?}: expected an IANA name such as Europe/Berlin or UTC")]
    TimeZone(String),
}

/// A cron expression in a time zone: the times a schedule fires.
#[derive(Debug, Clone)]
pub struct Recurrence {
    cron: Cron,
    zone: Tz,
    expression: String,
}

impl Recurrence {
    /// Parses `expression` (5 fields, an optional leading seconds field, or `@hourly`,
    /// `@daily`, `@weekly`, `@monthly`, `@yearly`/`@annually`) read in `time_zone`.
    pub fn parse(expression: &str, time_zone: &str) -> Result<Self, InvalidRecurrence> {
        let refuse = |reason: String| InvalidRecurrence::Cron {
            expression: expression.to_owned(),
            reason,
        };
        check_grammar(expression).map_err(refuse)?;
        let zone = Tz::from_str(time_zone)
            .map_err(|_| InvalidRecurrence::TimeZone(time_zone.to_owned()))?;
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|error| refuse(error.to_string()))?;
        Ok(Self {
            cron,
            zone,
            expression: expression.trim().to_owned(),
        })
    }

    /// The first fire time strictly after `after`, or `None` if there is none (a date that
    /// never comes, such as February 30th).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|next| next.with_timezone(&Utc))
    }

    /// A fire time at or before `at`, close to the latest one (the backward search meets
    /// daylight-saving changes from the other side; [`Recurrence::latest_in`] settles it).
    fn previous_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.zone);
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|previous| previous.with_timezone(&Utc))
    }

    /// The latest fire time in `(after, until]`, without walking every tick in between.
    pub fn latest_in(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let near = self
            .previous_at_or_before(until)
            .map_or(after, |previous| previous - chrono::Duration::seconds(1))
            .max(after);
        self.ticks_after(near)
            .take_while(|tick| *tick <= until)
            .last()
    }

    /// Fire times strictly after `after`, in order.
    pub fn ticks_after(&self, after: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        std::iter::successors(self.next_after(after), |tick| self.next_after(*tick))
    }

    /// The time zone the expression is read in.
    pub fn zone(&self) -> Tz {
        self.zone
    }
}

impl fmt::Display for Recurrence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.expression, self.zone.name())
    }
}

/// The `@` shorthands.
const SHORTHANDS: [&str; 6] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

/// A field's name, its range, and the names it accepts for its values (from `first`).
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    first: u32,
}

const SECOND: Field = Field {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
    first: 0,
};
const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
        first: 0,
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
        first: 0,
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
        first: 0,
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
        ],
        first: 1,
    },
    Field {
        name: "day of week",
        min: 0,
        max: 7,
        names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
        first: 0,
    },
];

/// Checks the grammar; the error names the field. `jobrunner.cron_problem` in
/// `runner/sql/schedules.sql` is the same check for the SQL door.
fn check_grammar(expression: &str) -> Result<(), String> {
    let expression = expression.trim();
    if expression.len() > MAX_CRON_LEN {
        return Err(format!("longer than {MAX_CRON_LEN} characters"));
    }
    if expression.starts_with('@') {
        return if SHORTHANDS
            .iter()
            .any(|s| s.eq_ignore_ascii_case(expression))
        {
            Ok(())
        } else {
            Err(format!(
                "unknown shorthand; expected one of {}",
                SHORTHANDS.join(", ")
            ))
        };
    }
    let parts: Vec<&str> = expression.split_whitespace().collect();
    let fields: Vec<&Field> = match parts.len() {
        5 => FIELDS.iter().collect(),
        6 => std::iter::once(&SECOND).chain(FIELDS.iter()).collect(),
        n => {
            return Err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), or 6 with \
                 seconds first; found {n}"
            ));
        }
    };
    for (part, field) in parts.iter().zip(fields) {
        for item in part.split(',') {
            check_item(item, field)
                .map_err(|reason| format!("{} field {part:?}: {reason}", field.name))?;
        }
    }
    Ok(())
}

/// One comma-separated item: `*`, `V`, `V-V`, `*/S` or `V-V/S`.
fn check_item(item: &str, field: &Field) -> Result<(), String> {
    let (base, step) = match item.split_once('/') {
        Some((base, step)) => (base, Some(step)),
        None => (item, None),
    };
    if let Some(step) = step {
        let step = number(step).ok_or_else(|| format!("step {step:?} is not a number"))?;
        if step == 0 || step > field.max.max(1) {
            return Err(format!(
                "step {step} is out of range 1-{}",
                field.max.max(1)
            ));
        }
    }
    if base == "*" {
        return Ok(());
    }
    let Some((low, high)) = base.split_once('-') else {
        if step.is_some() {
            return Err(format!("a step needs * or a range before it, not {base:?}"));
        }
        return value(base, field).map(drop);
    };
    let (low, high) = (value(low, field)?, value(high, field)?);
    if low > high {
        return Err(format!("range {base} runs backwards"));
    }
    Ok(())
}

fn value(text: &str, field: &Field) -> Result<u32, String> {
    if let Some(index) = field
        .names
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
    {
        return Ok(field.first + index as u32);
    }
    let n = number(text).ok_or_else(|| {
        if text.is_empty() {
            "empty value".to_owned()
        } else {
            format!("{text:?} is not a number{}", names_hint(field))
        }
    })?;
    if !(field.min..=field.max).contains(&n) {
        return Err(format!("{n} is out of range {}-{}", field.min, field.max));
    }
    Ok(n)
}

fn names_hint(field: &Field) -> String {
    match field.names {
        [] => String::new(),
        names => format!(" or a name ({}-{})", names[0], names[names.len() - 1]),
    }
}

fn number(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 4 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone};

    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// The ticks of `recurrence` during the local calendar day `date`.
    fn ticks_on(recurrence: &Recurrence, date: NaiveDate) -> Vec<DateTime<Utc>> {
        let zone = recurrence.zone();
        let start = zone
            .from_local_datetime(&date.and_hms_opt(0, 0, 0).unwrap())
            .earliest()
            .unwrap()
            .with_timezone(&Utc);
        let end = zone
            .from_local_datetime(&date.succ_opt().unwrap().and_hms_opt(0, 0, 0).unwrap())
            .earliest()
            .unwrap()
            .with_timezone(&Utc);
        let before = start - chrono::Duration::seconds(1);
        recurrence
            .ticks_after(before)
            .take_while(|t| *t < end)
            .collect()
    }

    #[test]
    fn accepts_the_documented_grammar() {
        for expression in [
            "0 9 * * 1-5",
            "*/10 * * * * *",
            "0 0 9 * * MON-FRI",
            "0 9 1,15 JAN,jul *",
            "5-55/10 * * * SUN",
            "0 0 * * 7",
            "@hourly",
            "@DAILY",
            "@weekly",
            "@monthly",
            "@yearly",
            "@annually",
            "  0 9 * * *  ",
        ] {
            Recurrence::parse(expression, "UTC").unwrap_or_else(|e| panic!("{expression}: {e}"));
        }
    }

    #[test]
    fn refuses_with_the_field_and_the_reason() {
        for (expression, reason) in [
            ("", "found 0"),
            ("* * * *", "found 4"),
            ("* * * * * * *", "found 7"),
            ("60 * * * *", "minute field \"60\": 60 is out of range 0-59"),
            ("* 24 * * *", "hour field"),
            (
                "* * 0 * *",
                "day of month field \"0\": 0 is out of range 1-31",
            ),
            ("* * * 13 *", "month field"),
            ("* * * * 8", "day of week field"),
            ("* * * FOO *", "not a number or a name (JAN-DEC)"),
            ("*/0 * * * *", "step 0 is out of range"),
            ("5/15 * * * *", "a step needs * or a range"),
            ("10-5 * * * *", "runs backwards"),
            ("* * L * *", "day of month field"),
            ("0 0 ? * MON", "day of month field"),
            ("0 0 * * 5#2", "day of week field"),
            ("1,,2 * * * *", "empty value"),
            ("@every_minute", "unknown shorthand"),
        ] {
            let error = Recurrence::parse(expression, "UTC")
                .unwrap_err()
                .to_string();
            assert!(error.contains(reason), "{expression:?}: {error}");
        }
        assert_eq!(
            Recurrence::parse("* * * * *", "Mars/Olympus").unwrap_err(),
            InvalidRecurrence::TimeZone("Mars/Olympus".into())
        );
    }

    #[test]
    fn fires_in_its_zone_with_seconds_names_and_shorthands() {
        let weekdays = Recurrence::parse("0 9 * * MON-FRI", "Europe/Berlin").unwrap();
        // Friday 2026-12-04 10:00 Berlin: next is Monday 09:00 CET = 08:00 UTC.
        let next = weekdays.next_after(utc("2026-12-04T09:00:00Z")).unwrap();
        assert_eq!(next, utc("2026-12-07T08:00:00Z"));
        let every_ten = Recurrence::parse("*/10 * * * * *", "UTC").unwrap();
        let ticks: Vec<_> = every_ten
            .ticks_after(utc("2026-12-07T10:00:05Z"))
            .take(3)
            .collect();
        assert_eq!(
            ticks,
            [
                utc("2026-12-07T10:00:10Z"),
                utc("2026-12-07T10:00:20Z"),
                utc("2026-12-07T10:00:30Z")
            ]
        );
        let hourly = Recurrence::parse("@hourly", "America/New_York").unwrap();
        assert_eq!(
            hourly.next_after(utc("2026-12-07T10:00:00Z")),
            Some(utc("2026-12-07T11:00:00Z"))
        );
        // Strictly after: a tick is never its own successor.
        assert_eq!(
            every_ten.next_after(utc("2026-12-07T10:00:10Z")),
            Some(utc("2026-12-07T10:00:20Z"))
        );
    }

    #[test]
    fn daylight_saving_days_in_berlin() {
        let spring = NaiveDate::from_ymd_opt(2026, 3, 29).unwrap();
        let autumn = NaiveDate::from_ymd_opt(2026, 10, 25).unwrap();
        let daily = Recurrence::parse("30 2 * * *", "Europe/Berlin").unwrap();
        // 02:30 does not exist on 29 March: once, at 03:00 CEST (01:00 UTC).
        assert_eq!(ticks_on(&daily, spring), [utc("2026-03-29T01:00:00Z")]);
        // 02:30 exists twice on 25 October: once, at the first (CEST, 00:30 UTC).
        assert_eq!(ticks_on(&daily, autumn), [utc("2026-10-25T00:30:00Z")]);
        let hourly = Recurrence::parse("0 * * * *", "Europe/Berlin").unwrap();
        assert_eq!(ticks_on(&hourly, spring).len(), 23);
        assert_eq!(ticks_on(&hourly, autumn).len(), 25);
    }

    #[test]
    fn daylight_saving_days_in_new_york() {
        let spring = NaiveDate::from_ymd_opt(2026, 3, 8).unwrap();
        let autumn = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        let daily = Recurrence::parse("30 2 * * *", "America/New_York").unwrap();
        // 02:30 does not exist on 8 March: 03:00 EDT = 07:00 UTC.
        assert_eq!(ticks_on(&daily, spring), [utc("2026-03-08T07:00:00Z")]);
        // 1 November: 01:30 repeats, 02:30 does not: once at 02:30 EST = 07:30 UTC.
        assert_eq!(ticks_on(&daily, autumn), [utc("2026-11-01T07:30:00Z")]);
        let repeated = Recurrence::parse("30 1 * * *", "America/New_York").unwrap();
        assert_eq!(ticks_on(&repeated, autumn), [utc("2026-11-01T05:30:00Z")]);
        let hourly = Recurrence::parse("@hourly", "America/New_York").unwrap();
        assert_eq!(ticks_on(&hourly, spring).len(), 23);
        assert_eq!(ticks_on(&hourly, autumn).len(), 25);
    }

    #[test]
    fn the_latest_tick_is_found_without_walking_and_agrees_with_the_forward_ticks() {
        let every_second = Recurrence::parse("* * * * * *", "UTC").unwrap();
        let (after, until) = (utc("2025-12-07T10:00:00Z"), utc("2026-12-07T10:00:05.5Z"));
        assert_eq!(
            every_second.latest_in(after, until),
            Some(utc("2026-12-07T10:00:05Z"))
        );
        assert_eq!(every_second.latest_in(until, until), None);
        // Across both daylight-saving days, in both zones, for fixed times and wildcards: the
        // latest tick by the backward search is the last of the forward ones.
        for zone in ["Europe/Berlin", "America/New_York"] {
            for cron in ["30 2 * * *", "0 * * * *", "*/15 1-3 * * *", "30 1 * * *"] {
                let recurrence = Recurrence::parse(cron, zone).unwrap();
                for day in ["2026-03-08", "2026-03-29", "2026-10-25", "2026-11-01"] {
                    let start = utc(&format!("{day}T00:00:00Z"));
                    let forward: Vec<_> = recurrence
                        .ticks_after(start)
                        .take_while(|t| *t <= start + chrono::Duration::hours(30))
                        .collect();
                    for minutes in (0..30 * 60).step_by(7) {
                        let until = start + chrono::Duration::minutes(minutes);
                        let expected = forward.iter().rev().find(|t| **t <= until).copied();
                        assert_eq!(
                            recurrence.latest_in(start, until),
                            expected,
                            "{cron} in {zone} until {until}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_day_of_month_and_a_day_of_week_both_restricted_match_either() {
        // Vixie cron: the 13th, or a Friday. Monday 7 December 2026: Friday the 11th is next.
        let either = Recurrence::parse("0 0 13 * FRI", "UTC").unwrap();
        let ticks: Vec<_> = either
            .ticks_after(utc("2026-12-07T00:00:00Z"))
            .take(2)
            .collect();
        assert_eq!(
            ticks,
            [utc("2026-12-11T00:00:00Z"), utc("2026-12-13T00:00:00Z")]
        );
    }

    #[test]
    fn a_date_that_never_comes_has_no_tick() {
        let never = Recurrence::parse("0 0 30 2 *", "UTC").unwrap();
        assert_eq!(never.next_after(utc("2026-12-07T00:00:00Z")), None);
    }
}
