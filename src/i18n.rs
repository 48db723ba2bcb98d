//! Number and date formats for user-facing text: Brazilian by default
//! (1.000.000 tokens, 01/12/2026), English with `TOKENGATE_LOCALE=en`.

use crate::config::Locale;
use chrono::NaiveDate;

/// A whole number with the locale's thousands separator: `1.000.000` or `1,000,000`.
pub fn tokens(n: i64, locale: Locale) -> String {
    let sep = match locale {
        Locale::PtBr => '.',
        Locale::En => ',',
    };
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(sep);
        }
        out.push(d);
    }
    out
}

/// A round figure in words, as a person says it: `250 mil`, `1,5 milhão`, `2
/// milhões` (`250 thousand`, `1.5 million`); below a thousand, the number itself.
pub fn tokens_in_words(n: i64, locale: Locale) -> String {
    let n = n.max(0);
    let (unit, scale) = match n {
        0..=999 => return tokens(n, locale),
        1_000..=999_499 => ("k", 1_000),
        _ => ("m", 1_000_000),
    };
    // One decimal under ten units ("2,5 mil"), whole units above ("250 mil").
    let tenths = (n * 10 + scale / 2) / scale;
    let value = if tenths < 100 && tenths % 10 != 0 {
        let (whole, tenth) = (tenths / 10, tenths % 10);
        match locale {
            Locale::PtBr => format!("{whole},{tenth}"),
            Locale::En => format!("{whole}.{tenth}"),
        }
    } else {
        tokens((tenths + 5) / 10, locale)
    };
    let word = match (unit, locale) {
        ("k", Locale::PtBr) => "mil",
        ("k", Locale::En) => "thousand",
        (_, Locale::PtBr) if tenths < 20 => "milhão",
        (_, Locale::PtBr) => "milhões",
        (_, Locale::En) => "million",
    };
    format!("{value} {word}")
}

/// A round figure of tokens as a sentence says it: `250 mil tokens`, `1,5 milhão
/// de tokens` (Portuguese puts "de" after milhão and milhões), `1.5 million tokens`.
pub fn tokens_phrase(n: i64, locale: Locale) -> String {
    let words = tokens_in_words(n, locale);
    let de = locale == Locale::PtBr && (words.ends_with("milhão") || words.ends_with("milhões"));
    if de {
        format!("{words} de tokens")
    } else {
        format!("{words} tokens")
    }
}

use crate::domain::text::without_hidden;

/// A form field meant to be one line of text: control characters become spaces,
/// direction controls and invisible characters go (`without_hidden`), runs of
/// whitespace become one space, at most `max_chars`.
pub fn one_line(s: &str, max_chars: usize) -> String {
    let line: String = without_hidden(s)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(max_chars)
        .collect();
    // The cut may leave a joiner with nothing after it.
    without_hidden(&line)
}

/// A calendar date: `01/12/2026` (dd/mm/aaaa) or `December 1, 2026`.
pub fn date(d: NaiveDate, locale: Locale) -> String {
    match locale {
        Locale::PtBr => d.format("%d/%m/%Y").to_string(),
        Locale::En => d.format("%B %-d, %Y").to_string(),
    }
}

/// A UTC timestamp shown in the configured time zone: `22/11/2026 14:03` or
/// `Nov 22, 2026 14:03`.
pub fn datetime(utc: chrono::NaiveDateTime, tz: chrono_tz::Tz, locale: Locale) -> String {
    let local = utc.and_utc().with_timezone(&tz);
    match locale {
        Locale::PtBr => local.format("%d/%m/%Y %H:%M").to_string(),
        Locale::En => local.format("%b %-d, %Y %H:%M").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_in_words() {
        let pt = |n| tokens_in_words(n, Locale::PtBr);
        assert_eq!(pt(0), "0");
        assert_eq!(pt(-5), "0");
        assert_eq!(pt(999), "999");
        assert_eq!(pt(2_500), "2,5 mil");
        assert_eq!(pt(10_000), "10 mil");
        assert_eq!(pt(250_000), "250 mil");
        assert_eq!(pt(999_999), "1 milhão");
        assert_eq!(pt(1_000_000), "1 milhão");
        assert_eq!(pt(1_500_000), "1,5 milhão");
        assert_eq!(pt(2_000_000), "2 milhões");
        assert_eq!(pt(12_345_678), "12 milhões");
        assert_eq!(tokens_in_words(250_000, Locale::En), "250 thousand");
        assert_eq!(tokens_in_words(1_500_000, Locale::En), "1.5 million");
        assert_eq!(tokens_phrase(250_000, Locale::PtBr), "250 mil tokens");
        assert_eq!(
            tokens_phrase(1_200_000, Locale::PtBr),
            "1,2 milhão de tokens"
        );
        assert_eq!(
            tokens_phrase(3_000_000, Locale::PtBr),
            "3 milhões de tokens"
        );
        assert_eq!(tokens_phrase(1_200_000, Locale::En), "1.2 million tokens");
        assert_eq!(tokens_phrase(12, Locale::PtBr), "12 tokens");
    }

    #[test]
    fn brazilian_and_english_thousands() {
        assert_eq!(tokens(0, Locale::PtBr), "0");
        assert_eq!(tokens(999, Locale::PtBr), "999");
        assert_eq!(tokens(1000, Locale::PtBr), "1.000");
        assert_eq!(tokens(1_000_000, Locale::PtBr), "1.000.000");
        assert_eq!(tokens(250_000, Locale::En), "250,000");
        assert_eq!(tokens(-12_345, Locale::PtBr), "-12.345");
        assert_eq!(tokens(i64::MIN, Locale::En), "-9,223,372,036,854,775,808");
    }

    #[test]
    fn dates_in_each_locale() {
        let d = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap_or_default();
        assert_eq!(date(d, Locale::PtBr), "01/12/2026");
        assert_eq!(date(d, Locale::En), "December 1, 2026");
    }
}
