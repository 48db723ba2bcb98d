use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use std::fmt;

/// A billing cycle: one calendar month in the configured time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cycle {
    year: i32,
    month: u32,
}

impl Cycle {
    pub fn containing(instant: DateTime<Utc>, tz: Tz) -> Self {
        let local = instant.with_timezone(&tz);
        Self {
            year: local.year(),
            month: local.month(),
        }
    }

    /// The cycle of a local date.
    pub fn of_date(date: NaiveDate) -> Self {
        Self {
            year: date.year(),
            month: date.month(),
        }
    }

    /// Parses the stored form `YYYY-MM`.
    pub fn parse(s: &str) -> Option<Self> {
        let (y, m) = s.split_once('-')?;
        let year: i32 = y.parse().ok()?;
        let month: u32 = m.parse().ok()?;
        (1..=12).contains(&month).then_some(Self { year, month })
    }

    pub fn key(&self) -> String {
        self.to_string()
    }

    pub fn next(&self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// The instant the cycle starts: midnight of its first day in `tz`.
    pub fn starts_at(&self, tz: Tz) -> DateTime<Utc> {
        let date = NaiveDate::from_ymd_opt(self.year, self.month, 1).unwrap_or_default();
        let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
        // Midnight can be skipped or repeated by DST in some zones; take the earliest.
        tz.from_local_datetime(&midnight)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| midnight.and_utc())
    }

    /// The instant the next cycle starts (when this one's allowance expires).
    pub fn ends_at(&self, tz: Tz) -> DateTime<Utc> {
        self.next().starts_at(tz)
    }
}

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_follows_the_local_calendar() {
        let tz: Tz = "America/Sao_Paulo".parse().unwrap_or(Tz::UTC);
        // 02:00 UTC on Dec 1st is still Nov 30th, 23:00 in São Paulo.
        let t = Utc.with_ymd_and_hms(2026, 12, 1, 2, 0, 0).single();
        let cycle = t.map(|t| Cycle::containing(t, tz));
        assert_eq!(cycle.map(|c| c.key()), Some("2026-11".to_string()));
        let next = cycle.map(|c| c.ends_at(tz));
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 12, 1, 3, 0, 0).single());
    }

    #[test]
    fn december_rolls_into_january() {
        let c = Cycle::parse("2026-12");
        assert_eq!(c.map(|c| c.next().key()), Some("2027-01".to_string()));
        assert_eq!(Cycle::parse("2026-13"), None);
        assert_eq!(Cycle::parse("garbage"), None);
    }
}
