//! Token amounts and per-model weights (docs/behaviour.md).

use std::fmt;

/// Weights are stored as integers in thousandths: 1000 means 1.0.
pub const WEIGHT_SCALE: i64 = 1000;

/// A model's input and output weights, in thousandths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    input_milli: i64,
    output_milli: i64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            input_milli: WEIGHT_SCALE,
            output_milli: WEIGHT_SCALE,
        }
    }
}

impl Weights {
    /// Largest weight accepted: 1000.0 per token.
    pub const MAX_MILLI: i64 = 1_000_000;

    pub fn from_milli(input_milli: i64, output_milli: i64) -> Option<Self> {
        let ok = |w: i64| (0..=Self::MAX_MILLI).contains(&w);
        (ok(input_milli) && ok(output_milli)).then_some(Self {
            input_milli,
            output_milli,
        })
    }

    pub fn input_milli(&self) -> i64 {
        self.input_milli
    }

    pub fn output_milli(&self) -> i64 {
        self.output_milli
    }

    /// `ceil(prompt * w_in + completion * w_out)`, saturating instead of overflowing.
    pub fn cost(&self, prompt_tokens: i64, completion_tokens: i64) -> i64 {
        let milli = i128::from(prompt_tokens.max(0)) * i128::from(self.input_milli)
            + i128::from(completion_tokens.max(0)) * i128::from(self.output_milli);
        let tokens = (milli + i128::from(WEIGHT_SCALE) - 1) / i128::from(WEIGHT_SCALE);
        i64::try_from(tokens).unwrap_or(i64::MAX)
    }

    /// The most completion tokens `budget` pays for on top of the prompt.
    pub fn affordable_completion(&self, budget: i64, prompt_tokens: i64) -> i64 {
        let prompt_milli = i128::from(prompt_tokens.max(0)) * i128::from(self.input_milli);
        let left_milli = i128::from(budget) * i128::from(WEIGHT_SCALE) - prompt_milli;
        if left_milli <= 0 {
            return 0;
        }
        if self.output_milli == 0 {
            return i64::MAX;
        }
        i64::try_from(left_milli / i128::from(self.output_milli)).unwrap_or(i64::MAX)
    }
}

/// A positive amount of tokens an admin can grant: 1 to 10^12.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokenAmount(i64);

impl TokenAmount {
    pub const MAX: i64 = 1_000_000_000_000;

    pub fn new(n: i64) -> Result<Self, TokenAmountError> {
        if n <= 0 {
            Err(TokenAmountError::NotPositive)
        } else if n > Self::MAX {
            Err(TokenAmountError::TooLarge)
        } else {
            Ok(Self(n))
        }
    }

    /// Parses a whole number of tokens: plain digits ("250000") or digits grouped in
    /// threes by one kind of separator: "250.000" (pt-BR), "250,000" (English),
    /// "250 000" or "250_000". Anything else that looks like a decimal ("1.5",
    /// "2,50", "1.000,5") is refused rather than guessed: read one way it grants 15
    /// tokens, read the other 1.
    pub fn parse(raw: &str) -> Result<Self, TokenAmountError> {
        let s = raw.trim();
        if s.starts_with('-') {
            return Err(TokenAmountError::NotPositive);
        }
        let is_separator = |c: char| matches!(c, '.' | ',' | '_' | ' ' | '\u{a0}' | '\u{202f}');
        let mut separators = s.chars().filter(|c| is_separator(*c));
        let digits: String = match separators.next() {
            None => s.to_owned(),
            Some(sep) => {
                if separators.any(|c| c != sep) {
                    return Err(TokenAmountError::Ambiguous);
                }
                let groups: Vec<&str> = s.split(sep).collect();
                let digits_only = |g: &str| g.bytes().all(|b| b.is_ascii_digit());
                if !groups.iter().all(|g| digits_only(g)) {
                    return Err(TokenAmountError::NotANumber);
                }
                let first_ok = (1..=3).contains(&groups[0].len());
                if !first_ok || groups[1..].iter().any(|g| g.len() != 3) {
                    return Err(TokenAmountError::Ambiguous);
                }
                groups.concat()
            }
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TokenAmountError::NotANumber);
        }
        match digits.parse::<i64>() {
            Ok(n) => Self::new(n),
            Err(_) => Err(TokenAmountError::TooLarge),
        }
    }

    pub fn get(&self) -> i64 {
        self.0
    }
}

impl fmt::Display for TokenAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenAmountError {
    #[error("the amount must be a whole number of tokens, like 250000")]
    NotANumber,
    /// A separator that is not between groups of three digits: "1.5" could mean
    /// 15 or 1.5.
    #[error(
        "the amount must be whole tokens: separators only between groups of three digits, like 250.000 or 250,000"
    )]
    Ambiguous,
    #[error("the amount must be greater than zero")]
    NotPositive,
    #[error("the amount is too large: at most 1000000000000 tokens")]
    TooLarge,
}

/// `used / (used + left)` (docs/behaviour.md), as a whole percent from 0 to 100, rounded
/// down: a threshold `t` is reached exactly when `used * 100 >= t * (used + left)`.
pub fn used_percent(used: i64, left: i64) -> u8 {
    let total = i128::from(used.max(0)) + i128::from(left.max(0));
    if total == 0 {
        return 100;
    }
    let pct = i128::from(used.max(0)) * 100 / total;
    u8::try_from(pct.clamp(0, 100)).unwrap_or(100)
}

/// A weight as people write it: `1`, `1.5` or `1,5`, up to three decimals.
pub fn parse_weight(raw: &str) -> Option<i64> {
    let s = raw.trim().replace(',', ".");
    let (whole, frac) = s.split_once('.').unwrap_or((&s, ""));
    if whole.is_empty() && frac.is_empty() || frac.len() > 3 {
        return None;
    }
    if !whole
        .chars()
        .chain(frac.chars())
        .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac: i64 = format!("{frac:0<3}").parse().ok()?;
    let milli = whole.checked_mul(1000)?.checked_add(frac)?;
    (0..=Weights::MAX_MILLI).contains(&milli).then_some(milli)
}

/// What a request to a model without weights costs: every model at one weight for
/// input and output (`TOKENGATE_UNPRICED_MODELS`, 1 by default), or none served
/// until an admin prices it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnpricedModels {
    Weight(Weights),
    Refuse,
}

impl UnpricedModels {
    /// `refuse`, or a weight as people write it (`1`, `2,5`).
    pub fn parse(raw: &str) -> Option<Self> {
        if raw.trim().eq_ignore_ascii_case("refuse") {
            return Some(Self::Refuse);
        }
        let milli = parse_weight(raw)?;
        Weights::from_milli(milli, milli).map(Self::Weight)
    }
}

impl Default for UnpricedModels {
    fn default() -> Self {
        Self::Weight(Weights::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_rounds_up_and_applies_weights() {
        let w = Weights::from_milli(1500, 3000).unwrap_or_default();
        // 10 * 1.5 + 3 * 3.0 = 24
        assert_eq!(w.cost(10, 3), 24);
        // 1 * 1.5 = 1.5 -> 2
        assert_eq!(w.cost(1, 0), 2);
        assert_eq!(Weights::default().cost(100, 50), 150);
    }

    #[test]
    fn affordable_completion_never_exceeds_budget() {
        let w = Weights::from_milli(1500, 3000).unwrap_or_default();
        for budget in 0..200 {
            for prompt in 0..20 {
                let c = w.affordable_completion(budget, prompt);
                if c > 0 {
                    assert!(w.cost(prompt, c) <= budget, "{budget} {prompt} {c}");
                }
            }
        }
    }

    #[test]
    fn amounts_are_validated() {
        for ok in [
            "250000",
            "250.000",
            "250,000",
            "250_000",
            "250 000",
            " 1.000.000 ",
            "1,000,000",
            "999",
        ] {
            let expected = ok
                .trim()
                .replace(['.', ',', '_', ' '], "")
                .parse::<i64>()
                .unwrap_or(0);
            assert_eq!(
                TokenAmount::parse(ok).map(|a| a.get()),
                Ok(expected),
                "{ok}"
            );
        }
        // Read as a decimal somewhere, or with a separator out of place: refused.
        for ambiguous in [
            "1.5",
            "1,5",
            "2,50",
            "1.000,5",
            "1,000.000",
            "1000.000",
            ".500",
            "500.",
            "1..000",
            "12.3456",
        ] {
            assert_eq!(
                TokenAmount::parse(ambiguous),
                Err(TokenAmountError::Ambiguous),
                "{ambiguous}"
            );
        }
        assert_eq!(TokenAmount::parse("0"), Err(TokenAmountError::NotPositive));
        assert_eq!(TokenAmount::parse("-5"), Err(TokenAmountError::NotPositive));
        assert_eq!(TokenAmount::parse("abc"), Err(TokenAmountError::NotANumber));
        assert_eq!(TokenAmount::parse("1e9"), Err(TokenAmountError::NotANumber));
        assert_eq!(
            TokenAmount::parse("99999999999999999999999"),
            Err(TokenAmountError::TooLarge)
        );
        assert_eq!(
            TokenAmount::parse("1000000000001"),
            Err(TokenAmountError::TooLarge)
        );
    }

    #[test]
    fn weights_reject_out_of_range_values() {
        assert!(Weights::from_milli(-1, 1000).is_none());
        assert!(Weights::from_milli(1000, Weights::MAX_MILLI + 1).is_none());
    }
}
