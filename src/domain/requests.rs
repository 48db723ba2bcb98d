//! How many requests a plan's users may make: in a minute, on a local day and in a
//! cycle. Each window is a fixed one (a clock minute, the calendar day and the
//! cycle's month in the configured time zone), so a count is exact and a reader
//! can say when it starts over.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use std::fmt;

/// The largest limit: it fits the database's INTEGER with room to count past it.
pub const REQUEST_LIMIT_MAX: u32 = 1_000_000_000;

/// A limit on requests in one window: at least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct RequestLimit(u32);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a request limit: a whole number from 1 to 1000000000, or blank for none")]
pub struct RequestLimitError(String);

impl RequestLimit {
    pub fn new(n: i64) -> Option<Self> {
        u32::try_from(n)
            .ok()
            .filter(|n| (1..=REQUEST_LIMIT_MAX).contains(n))
            .map(Self)
    }

    /// A limit as an admin types it: blank, `none` or `-` is no limit. Thousands may
    /// be grouped with `.`, `,` or `_` ("1.000").
    pub fn parse(text: &str) -> Result<Option<Self>, RequestLimitError> {
        let t = text.trim();
        if t.is_empty() || t == "-" || t.eq_ignore_ascii_case("none") {
            return Ok(None);
        }
        let digits: String = t
            .chars()
            .filter(|c| !matches!(c, '.' | ',' | '_'))
            .collect();
        let n = if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            digits.parse::<i64>().ok().and_then(Self::new)
        };
        n.map(Some)
            .ok_or_else(|| RequestLimitError(t.chars().take(40).collect()))
    }

    /// A limit read back from the database (written through `new`); anything else
    /// there is no limit the code can honour, so it refuses every request (zero
    /// would do that, and a negative or huge number is never written by tokengate).
    pub fn stored(n: Option<i32>) -> Option<Self> {
        n.map(|n| Self::new(i64::from(n)).unwrap_or(Self(0)))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for RequestLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A request limit's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Minute,
    Day,
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Minute, Self::Day, Self::Month]
            .into_iter()
            .find(|p| p.as_str() == s)
    }

    /// The plan's field that sets it, as `/v1` errors name it in `param`.
    pub fn field(self) -> &'static str {
        match self {
            Self::Minute => "requests_per_minute",
            Self::Day => "requests_per_day",
            Self::Month => "requests_per_month",
        }
    }
}

/// A plan's request limits; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestLimits {
    pub per_minute: Option<RequestLimit>,
    pub per_day: Option<RequestLimit>,
    pub per_month: Option<RequestLimit>,
}

/// The requests a user has made in the windows that hold the present moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub minute: u32,
    pub day: u32,
    pub month: u32,
}

impl RequestLimits {
    /// The plan's three columns as the database keeps them (`RequestLimit::stored`).
    pub fn stored(per_minute: Option<i32>, per_day: Option<i32>, per_month: Option<i32>) -> Self {
        Self {
            per_minute: RequestLimit::stored(per_minute),
            per_day: RequestLimit::stored(per_day),
            per_month: RequestLimit::stored(per_month),
        }
    }

    pub fn get(&self, period: Period) -> Option<RequestLimit> {
        match period {
            Period::Minute => self.per_minute,
            Period::Day => self.per_day,
            Period::Month => self.per_month,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The limit one more request would pass, if any. Of several, the longest
    /// window's: waiting out a minute does not help a user whose day is used up.
    pub fn reached(&self, counts: &RequestCounts) -> Option<(Period, RequestLimit)> {
        [
            (Period::Month, counts.month),
            (Period::Day, counts.day),
            (Period::Minute, counts.minute),
        ]
        .into_iter()
        .find_map(|(period, count)| {
            self.get(period)
                .filter(|limit| count >= limit.get())
                .map(|limit| (period, limit))
        })
    }
}

/// The windows a request counts in: a clock minute (UTC; every time zone's minutes
/// start together) and a local date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows {
    pub minute_start: NaiveDateTime,
    pub day: NaiveDate,
    /// `day` as the balance row keeps it (`YYYY-MM-DD`).
    day_key: String,
}

impl Windows {
    pub fn new(minute_start: NaiveDateTime, day: NaiveDate) -> Self {
        Self {
            minute_start,
            day,
            day_key: day.format("%Y-%m-%d").to_string(),
        }
    }

    /// The windows that hold `instant`.
    pub fn at(instant: DateTime<Utc>, tz: Tz) -> Self {
        let naive = instant.naive_utc();
        Self::new(
            naive
                .with_second(0)
                .and_then(|t| t.with_nanosecond(0))
                .unwrap_or(naive),
            instant.with_timezone(&tz).date_naive(),
        )
    }

    /// These windows, or later ones already started (by a writer whose clock is
    /// ahead): a count never goes back to an earlier window, which would start it
    /// over.
    pub fn at_least(self, minute_start: Option<NaiveDateTime>, day_key: Option<&str>) -> Self {
        let day = day_key
            .and_then(|k| NaiveDate::parse_from_str(k, "%Y-%m-%d").ok())
            .filter(|d| *d > self.day);
        match (minute_start.filter(|m| *m > self.minute_start), day) {
            (None, None) => self,
            (minute, day) => {
                Self::new(minute.unwrap_or(self.minute_start), day.unwrap_or(self.day))
            }
        }
    }

    pub fn day_key(&self) -> &str {
        &self.day_key
    }

    /// When the minute's count starts over.
    pub fn next_minute(&self) -> DateTime<Utc> {
        (self.minute_start + Duration::minutes(1)).and_utc()
    }

    /// When the day's count starts over: the next local midnight (or, where the
    /// clocks skip midnight, the first moment of the next day).
    pub fn next_day(&self, tz: Tz) -> DateTime<Utc> {
        let next = self.day.succ_opt().unwrap_or(self.day);
        (0..=3)
            .filter_map(|hour| next.and_hms_opt(hour, 0, 0))
            .find_map(|t| tz.from_local_datetime(&t).earliest())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| next.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits(m: Option<u32>, d: Option<u32>, mo: Option<u32>) -> RequestLimits {
        let l = |n: Option<u32>| n.and_then(|n| RequestLimit::new(i64::from(n)));
        RequestLimits {
            per_minute: l(m),
            per_day: l(d),
            per_month: l(mo),
        }
    }

    #[test]
    fn a_limit_is_reached_at_its_count_not_before() {
        let l = limits(Some(10), Some(50), Some(1000));
        let at = |minute, day, month| RequestCounts { minute, day, month };
        assert_eq!(l.reached(&at(9, 49, 999)), None);
        assert_eq!(l.reached(&at(10, 0, 0)).map(|r| r.0), Some(Period::Minute));
        assert_eq!(l.reached(&at(0, 50, 0)).map(|r| r.0), Some(Period::Day));
        // The longest window is the one to tell.
        assert_eq!(
            l.reached(&at(10, 50, 1000)).map(|r| r.0),
            Some(Period::Month)
        );
        assert_eq!(l.reached(&at(10, 50, 0)).map(|r| r.0), Some(Period::Day));
        assert_eq!(
            RequestLimits::default().reached(&at(u32::MAX, u32::MAX, u32::MAX)),
            None
        );
    }

    #[test]
    fn limits_are_typed_as_people_write_them() {
        assert_eq!(RequestLimit::parse(""), Ok(None));
        assert_eq!(RequestLimit::parse(" none "), Ok(None));
        assert_eq!(RequestLimit::parse("1.000").unwrap().unwrap().get(), 1000);
        assert_eq!(RequestLimit::parse("50").unwrap().unwrap().get(), 50);
        for bad in [
            "0",
            "-5",
            "1e3",
            "abc",
            "1000000001",
            "99999999999999999999",
            "5 5",
            "½",
        ] {
            assert!(RequestLimit::parse(bad).is_err(), "{bad}");
        }
        // A value edited by hand into the database refuses rather than widens.
        assert_eq!(RequestLimit::stored(Some(-1)).unwrap().get(), 0);
        assert_eq!(RequestLimit::stored(None), None);
    }

    #[test]
    fn the_day_turns_at_local_midnight() {
        let sp: Tz = "America/Sao_Paulo".parse().unwrap();
        // 02:59:59 UTC is 23:59:59 in São Paulo (UTC-3): still the 6th there.
        let before = Utc.with_ymd_and_hms(2026, 12, 7, 2, 59, 59).unwrap();
        let after = before + Duration::seconds(1);
        let w = Windows::at(before, sp);
        assert_eq!(w.day_key(), "2026-12-06");
        assert_eq!(Windows::at(after, sp).day_key(), "2026-12-07");
        assert_eq!(w.next_day(sp), after);
        assert_eq!(w.next_minute(), after);
        assert_eq!(
            Windows::at(after + Duration::seconds(59), sp).minute_start,
            after.naive_utc()
        );
    }

    #[test]
    fn a_count_never_goes_back_to_an_earlier_window() {
        let sp: Tz = "America/Sao_Paulo".parse().unwrap();
        let late = Windows::at(Utc.with_ymd_and_hms(2026, 12, 7, 3, 0, 0).unwrap(), sp);
        // A writer whose clock reads a second earlier counts into the newer minute
        // and day rather than starting them over.
        let behind = Windows::at(Utc.with_ymd_and_hms(2026, 12, 7, 2, 59, 59).unwrap(), sp);
        let w = behind
            .clone()
            .at_least(Some(late.minute_start), Some(late.day_key()));
        assert_eq!(w, late);
        // Earlier stored windows are simply over.
        let again = late
            .clone()
            .at_least(Some(behind.minute_start), Some(behind.day_key()));
        assert_eq!(again, late);
        assert_eq!(late.clone().at_least(None, Some("garbage")), late);
    }

    #[test]
    fn a_skipped_midnight_turns_the_day_at_the_first_local_hour() {
        // Brazil's last DST began at midnight on 2018-11-04: the clocks went from
        // 23:59:59 to 01:00.
        let sp: Tz = "America/Sao_Paulo".parse().unwrap();
        let w = Windows::at(Utc.with_ymd_and_hms(2018, 11, 4, 2, 0, 0).unwrap(), sp);
        assert_eq!(w.day_key(), "2018-11-03");
        assert_eq!(
            w.next_day(sp),
            Utc.with_ymd_and_hms(2018, 11, 4, 3, 0, 0).unwrap()
        );
    }
}
