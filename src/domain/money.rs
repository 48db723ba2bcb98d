//! Money in Brazilian reais: what a plan is sold for, in whole centavos, and what
//! its overage costs per 1,000 tokens, in micro-reais (a millionth of a real).

use std::fmt;

/// The most a price may be: R$ 10.000.000,00, far above any plan, and far from
/// overflowing a sum over every user.
const MAX_CENTAVOS: i64 = 1_000_000_000;

/// An amount in reais, kept in centavos; never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize)]
#[serde(transparent)]
pub struct Brl(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a price in reais: write it as 199,90 (or 199.90, 1.199,90), at most two decimals"
)]
pub struct BrlError(String);

impl Brl {
    pub fn from_centavos(c: i64) -> Option<Self> {
        (0..=MAX_CENTAVOS).contains(&c).then_some(Self(c))
    }

    pub fn centavos(self) -> i64 {
        self.0
    }

    /// A price as people write it: "199,90", "R$ 1.199,90", "199.90", "1,199.90",
    /// "199". The last `.` or `,` is the decimal mark when one or two digits follow
    /// it; every other one groups thousands in threes. Anything else ("1.5.0",
    /// negative, three decimals) is refused rather than guessed, and so is one
    /// separator before three digits alone ("1.199", "19,999"): a decimal to some
    /// readers, thousands to others.
    pub fn parse(raw: &str) -> Result<Self, BrlError> {
        let err = || BrlError(raw.trim().chars().take(40).collect());
        let s = raw.trim();
        let s = s.strip_prefix("R$").unwrap_or(s).trim();
        if s.is_empty()
            || !s
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
        {
            return Err(err());
        }
        let (whole, cents) = match s.rfind(['.', ',']) {
            Some(i) if (2..=3).contains(&(s.len() - i)) => {
                let frac = &s[i + 1..];
                let cents: i64 = frac.parse().map_err(|_| err())?;
                (&s[..i], if frac.len() == 1 { cents * 10 } else { cents })
            }
            _ => (s, 0),
        };
        // The whole part: digits, grouped in threes by one separator if any.
        let separators = whole.chars().filter(|c| !c.is_ascii_digit()).count();
        if separators == 1 && whole.len() == s.len() {
            return Err(err());
        }
        let mut seps = whole.chars().filter(|c| !c.is_ascii_digit());
        let digits: String = match seps.next() {
            None => whole.to_owned(),
            Some(sep) => {
                if seps.any(|c| c != sep) || s[whole.len()..].starts_with(sep) {
                    return Err(err());
                }
                let groups: Vec<&str> = whole.split(sep).collect();
                if !(1..=3).contains(&groups[0].len()) || groups[1..].iter().any(|g| g.len() != 3) {
                    return Err(err());
                }
                groups.concat()
            }
        };
        if digits.is_empty() {
            return Err(err());
        }
        let reais: i64 = digits.parse().map_err(|_| err())?;
        reais
            .checked_mul(100)
            .and_then(|c| c.checked_add(cents))
            .and_then(Self::from_centavos)
            .ok_or_else(err)
    }

    /// `n` times this price, saturating (a report's total).
    pub fn times(self, n: i64) -> i64 {
        self.0.saturating_mul(n.max(0))
    }
}

/// The most an overage price may be: R$ 1.000,00 per 1,000 tokens.
const MAX_MICRO_PER_1K: i64 = 1_000_000_000;

/// A price per 1,000 tokens, kept in micro-reais (R$ 0,10 is 100.000): fine enough
/// for what providers charge (R$ 0,003 per 1,000 tokens), never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct PricePer1k(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a price in reais per 1,000 tokens: write it as 0,10 (or 0.10), above zero, at most six decimals, at most 1000"
)]
pub struct PricePer1kError(String);

impl PricePer1k {
    pub fn from_micro(micro: i64) -> Option<Self> {
        (0..=MAX_MICRO_PER_1K)
            .contains(&micro)
            .then_some(Self(micro))
    }

    pub fn micro(self) -> i64 {
        self.0
    }

    /// A price as people write a small one: "0,10", "R$ 0,003", "0.10", "2". One
    /// `.` or `,` is the decimal mark (no thousands: no such price is a thousand
    /// reais); more than one, more than six decimals, zero (overage is billed), or
    /// three decimals after a whole real ("1.000": a thousand to some readers) is
    /// refused.
    pub fn parse(raw: &str) -> Result<Self, PricePer1kError> {
        let err = || PricePer1kError(raw.trim().chars().take(40).collect());
        let s = raw.trim();
        let s = s.strip_prefix("R$").unwrap_or(s).trim();
        let (whole, frac) = match s.find(['.', ',']) {
            Some(i) => (&s[..i], &s[i + 1..]),
            None => (s, ""),
        };
        let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() && frac.is_empty()
            || !digits(whole)
            || !digits(frac)
            || frac.len() > 6
            || whole.len() > 4
        {
            return Err(err());
        }
        let whole_reais: i64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| err())?
        };
        if whole_reais > 0 && frac.len() == 3 {
            return Err(err());
        }
        let frac: i64 = format!("{frac:0<6}").parse().map_err(|_| err())?;
        Self::from_micro(whole_reais * 1_000_000 + frac)
            .filter(|p| p.0 > 0)
            .ok_or_else(err)
    }

    /// The price as a person reads it, exact: "R$ 0,10", "R$ 0,015" ("R$ 0.015").
    pub fn in_reais(self, pt_br: bool) -> String {
        let frac = format!("{:06}", self.0 % 1_000_000);
        let frac = frac.trim_end_matches('0');
        let frac = if frac.len() < 2 {
            format!("{frac:0<2}")
        } else {
            frac.to_owned()
        };
        let decimal = if pt_br { ',' } else { '.' };
        format!("R$ {}{decimal}{frac}", self.0 / 1_000_000)
    }

    /// What `tokens` cost at this price, in micro-reais, rounded up to the
    /// micro-real (a bill never rounds a charge away).
    pub fn cost_of(self, tokens: i64) -> i64 {
        let micro = i128::from(tokens.max(0)) * i128::from(self.0);
        i64::try_from((micro + 999) / 1000).unwrap_or(i64::MAX)
    }
}

/// As typed back into the dashboard's form, and read back the same: "0,1",
/// "0,003"; no trailing zeros but the one that keeps "2,1250" from reading as
/// "2,125" (refused by `parse` as a possible thousand).
impl fmt::Display for PricePer1k {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / 1_000_000;
        let frac = format!("{:06}", self.0 % 1_000_000);
        let frac = frac.trim_end_matches('0');
        match frac.len() {
            0 => write!(f, "{whole}"),
            3 if whole > 0 => write!(f, "{whole},{frac}0"),
            _ => write!(f, "{whole},{frac}"),
        }
    }
}

/// An amount in micro-reais as a person reads it: to the centavo, rounded half up
/// ("R$ 12,35"), or with four decimals below one centavo ("R$ 0,0030").
pub fn format_micro(micro: i64, pt_br: bool) -> String {
    if micro > 0 && micro < 10_000 {
        let decimal = if pt_br { ',' } else { '.' };
        return format!("R$ 0{decimal}{:04}", (micro + 50) / 100);
    }
    format_centavos((micro + 5_000) / 10_000, pt_br)
}

/// Micro-reais as a spreadsheet reads them: reais with a point and six decimals
/// ("0.001250"), exact.
pub fn format_micro_plain(micro: i64) -> String {
    let sign = if micro < 0 { "-" } else { "" };
    let m = micro.unsigned_abs();
    format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000)
}

/// A number of centavos as a person reads it: "R$ 1.199,90" or "R$ 1,199.90".
pub fn format_centavos(c: i64, pt_br: bool) -> String {
    let (thousands, decimal) = if pt_br { ('.', ',') } else { (',', '.') };
    let reais = (c / 100).unsigned_abs().to_string();
    let mut out = String::from(if c < 0 { "-R$ " } else { "R$ " });
    for (i, d) in reais.chars().enumerate() {
        if i > 0 && (reais.len() - i).is_multiple_of(3) {
            out.push(thousands);
        }
        out.push(d);
    }
    out.push(decimal);
    out.push_str(&format!("{:02}", (c % 100).unsigned_abs()));
    out
}

/// As typed back into the dashboard's form: "199,90".
impl fmt::Display for Brl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{:02}", self.0 / 100, self.0 % 100)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_read_as_people_write_them() {
        let c = |s: &str| Brl::parse(s).map(Brl::centavos);
        assert_eq!(c("199,90"), Ok(19_990));
        assert_eq!(c("R$ 199,90"), Ok(19_990));
        assert_eq!(c("R$199.90"), Ok(19_990));
        assert_eq!(c("1.199,90"), Ok(119_990));
        assert_eq!(c("1,199.90"), Ok(119_990));
        assert_eq!(c("1.199.000"), Ok(119_900_000));
        assert_eq!(c("99"), Ok(9_900));
        assert_eq!(c("0,5"), Ok(50));
        assert_eq!(c("0"), Ok(0));
        for bad in [
            "",
            "R$",
            "-10",
            "1.199.90",
            "1.5.0",
            "19,9999",
            "1.19,90",
            "1.199.9,9",
            "abc",
            "1e3",
            "10.000.000,01",
            "99999999999999999999",
            ",50",
            "1,,50",
            "1.,50",
        ] {
            assert!(Brl::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn overage_prices_are_small_decimals() {
        let m = |s: &str| PricePer1k::parse(s).map(PricePer1k::micro);
        assert_eq!(m("0,10"), Ok(100_000));
        assert_eq!(m("R$ 0,10"), Ok(100_000));
        assert_eq!(m("0.003"), Ok(3_000));
        assert_eq!(m(",5"), Ok(500_000));
        assert_eq!(m("2"), Ok(2_000_000));
        assert_eq!(m("1000"), Ok(1_000_000_000));
        for bad in [
            "0",
            "0,",
            "0,000",
            "1.000",
            "2,500",
            "",
            "R$",
            "-0,1",
            "0,1234567",
            "1.000,00",
            "1,000.5",
            "abc",
            "1001",
            "0,1e3",
        ] {
            assert!(PricePer1k::parse(bad).is_err(), "{bad:?}");
        }
        let p = PricePer1k::parse("0,10").unwrap();
        // R$ 0,0001 a token: 1,000,000 tokens are R$ 100,00.
        assert_eq!(p.cost_of(1_000_000), 100_000_000);
        // Rounded up to the micro-real.
        assert_eq!(PricePer1k::parse("0,003").unwrap().cost_of(1), 3);
        assert_eq!(PricePer1k::parse("0,000001").unwrap().cost_of(1), 1);
        assert_eq!(p.to_string(), "0,1");
        assert_eq!(PricePer1k::parse("0,003").unwrap().to_string(), "0,003");
        assert_eq!(PricePer1k::parse(&p.to_string()), Ok(p));
        // Every price reads back as itself from what the form shows.
        for micro in [
            1,
            3_000,
            100_000,
            1_500_000,
            2_125_000,
            2_120_500,
            999_999_999,
        ] {
            let p = PricePer1k::from_micro(micro).unwrap();
            assert_eq!(PricePer1k::parse(&p.to_string()), Ok(p), "{p}");
        }
        assert_eq!(p.in_reais(true), "R$ 0,10");
        assert_eq!(
            PricePer1k::parse("0,015").unwrap().in_reais(true),
            "R$ 0,015"
        );
        assert_eq!(
            PricePer1k::parse("0,00005").unwrap().in_reais(false),
            "R$ 0.00005"
        );
        assert_eq!(PricePer1k::parse("2").unwrap().in_reais(true), "R$ 2,00");
        assert_eq!(format_micro(100_000_000, true), "R$ 100,00");
        assert_eq!(format_micro(123_456, true), "R$ 0,12");
        assert_eq!(format_micro(125_000, false), "R$ 0.13");
        assert_eq!(format_micro(3_000, true), "R$ 0,0030");
        assert_eq!(format_micro(0, true), "R$ 0,00");
    }

    #[test]
    fn prices_are_shown_in_reais() {
        assert_eq!(format_centavos(119_990, true), "R$ 1.199,90");
        assert_eq!(format_centavos(119_990, false), "R$ 1,199.90");
        assert_eq!(format_centavos(5, true), "R$ 0,05");
        assert_eq!(Brl::parse("1.199,90").unwrap().to_string(), "1199,90");
        assert_eq!(
            Brl::parse(&Brl::parse("199,9").unwrap().to_string())
                .unwrap()
                .centavos(),
            19_990
        );
    }
}
