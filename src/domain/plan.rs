//! What a plan sells: its name, its monthly allowance, the models it may use and how
//! many requests its users may make.
//! Parsed once where an admin types it (dashboard, command line), so that the ledger
//! only ever stores a valid plan.

use super::identity::Role;
use super::overage::Overage;
use super::requests::{RequestLimit, RequestLimits};
use super::sides::SideAllowances;
use super::{Brl, TokenAmount};
use std::collections::BTreeSet;
use std::fmt;

/// Longest plan name, in characters.
pub const PLAN_NAME_MAX: usize = 60;
/// Longest model name, in bytes: the longest `model` a request may name.
pub const MODEL_NAME_MAX: usize = 256;
/// Most models one plan may list.
pub const PLAN_MODELS_MAX: usize = 100;

/// A name a request may give as its `model`: not blank, at most `MODEL_NAME_MAX`
/// bytes, no control characters and no comma (LiteLLM sends a request naming `"a,b"`
/// to each of them).
pub fn is_model_name(s: &str) -> bool {
    !s.trim().is_empty()
        && s.len() <= MODEL_NAME_MAX
        && !s.chars().any(|c| c.is_control() || c == ',')
}

/// The models a plan may use: every model LiteLLM serves, or only those listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PlanModels {
    #[default]
    All,
    /// Never empty: a plan that lists nothing would refuse every request.
    Only(BTreeSet<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanModelsError {
    #[error(
        "{0:?} is not a model name (no commas, control or invisible characters, at most 256 bytes)"
    )]
    BadName(String),
    /// Names are exact: `*` alone is every model, and is no pattern within a name.
    #[error("{0:?}: model names are exact; \"*\" alone means every model")]
    Wildcard(String),
    #[error("a plan lists at most {PLAN_MODELS_MAX} models")]
    TooMany,
}

impl PlanModels {
    /// A list as an admin types it: names separated by commas or new lines. Blank,
    /// or `*`, is every model.
    pub fn parse(text: &str) -> Result<Self, PlanModelsError> {
        let names: Vec<&str> = text
            .split([',', '\n', '\r'])
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() || names == ["*"] {
            return Ok(Self::All);
        }
        Self::from_names(names.into_iter().map(str::to_owned))
    }

    /// Names that must each be a model name; none is every model.
    pub fn from_names(names: impl IntoIterator<Item = String>) -> Result<Self, PlanModelsError> {
        let mut set = BTreeSet::new();
        for name in names {
            let shown = || name.chars().take(80).collect::<String>();
            // Invisible characters would make a name that looks like a model's and
            // never matches it, or turn around the text it is shown in.
            let invisible = name
                .chars()
                .any(|c| super::text::is_hidden(c) || super::text::is_joiner(c));
            if !is_model_name(&name) || name.trim() != name || invisible {
                return Err(PlanModelsError::BadName(shown()));
            }
            if name.contains('*') {
                return Err(PlanModelsError::Wildcard(shown()));
            }
            set.insert(name);
            if set.len() > PLAN_MODELS_MAX {
                return Err(PlanModelsError::TooMany);
            }
        }
        Ok(if set.is_empty() {
            Self::All
        } else {
            Self::Only(set)
        })
    }

    /// The list as the database keeps it (written through `parse`): no rows is every
    /// model. A name edited by hand into something invalid stays, and matches no
    /// request, so the list never widens to every model.
    pub fn stored(names: impl IntoIterator<Item = String>) -> Self {
        let set: BTreeSet<String> = names.into_iter().collect();
        if set.is_empty() {
            Self::All
        } else {
            Self::Only(set)
        }
    }

    pub fn allows(&self, model: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(set) => set.contains(model),
        }
    }

    /// The listed models, in order; empty for every model.
    pub fn listed(&self) -> Vec<&str> {
        match self {
            Self::All => Vec::new(),
            Self::Only(set) => set.iter().map(String::as_str).collect(),
        }
    }
}

/// The list as it is typed back in: names joined by ", "; blank for every model.
impl fmt::Display for PlanModels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.listed().join(", "))
    }
}

/// A plan name: one line, trimmed, 1 to `PLAN_NAME_MAX` characters, without control,
/// direction or invisible characters (a name is shown in the dashboard, on the
/// user's page and in mail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanName(String);

impl PlanName {
    pub fn parse(s: &str) -> Option<Self> {
        let name = s.trim();
        let ok = !name.is_empty()
            && name.chars().count() <= PLAN_NAME_MAX
            && !name
                .chars()
                .any(|c| c.is_control() || super::text::is_hidden(c));
        ok.then(|| Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PlanName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A plan's monthly allowance: a whole number of tokens, never negative. Zero is a
/// plan whose users spend only credits; the dashboard and the command line ask for a
/// positive amount (`TokenAmount`), so zero is only ever deliberate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Allowance(i64);

impl Allowance {
    pub fn new(tokens: i64) -> Option<Self> {
        (tokens >= 0).then_some(Self(tokens))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl From<TokenAmount> for Allowance {
    fn from(t: TokenAmount) -> Self {
        Self(t.get())
    }
}

/// A change to a plan: what is `None` stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanChange {
    pub name: Option<PlanName>,
    pub monthly_allowance: Option<Allowance>,
    pub models: Option<PlanModels>,
    /// Each limit to set (`Some(None)` removes it).
    pub per_minute: Option<Option<RequestLimit>>,
    pub per_day: Option<Option<RequestLimit>>,
    pub per_month: Option<Option<RequestLimit>>,
    /// The overage to set (`Some(None)`: the plan blocks past its allowances).
    pub overage: Option<Option<Overage>>,
    /// Each side's allowance to set (`Some(None)` removes it).
    pub input_allowance: Option<Option<Allowance>>,
    pub output_allowance: Option<Option<Allowance>>,
    /// The monthly price to set (`Some(None)` removes it).
    pub monthly_price: Option<Option<Brl>>,
    /// The LibreChat roles whose users it takes (empty: none).
    pub roles: Option<BTreeSet<Role>>,
    /// New users start on it from now on.
    pub make_default: bool,
}

impl PlanChange {
    /// The side allowances after this change, from `old`.
    pub fn sides(&self, old: SideAllowances) -> SideAllowances {
        SideAllowances {
            input: self.input_allowance.unwrap_or(old.input),
            output: self.output_allowance.unwrap_or(old.output),
        }
    }

    /// The limits after this change, from `old`.
    pub fn limits(&self, old: RequestLimits) -> RequestLimits {
        RequestLimits {
            per_minute: self.per_minute.unwrap_or(old.per_minute),
            per_day: self.per_day.unwrap_or(old.per_day),
            per_month: self.per_month.unwrap_or(old.per_month),
        }
    }
}

/// Everything an admin sets on a plan, in one value: what `create_plan` writes and
/// audits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSpec {
    pub name: PlanName,
    pub monthly_allowance: Allowance,
    /// Separate caps on what it pays of the input and of the output.
    pub sides: SideAllowances,
    /// What it does past its allowances: block (`None`) or go on, billed.
    pub overage: Option<Overage>,
    pub models: PlanModels,
    pub limits: RequestLimits,
    /// What it is sold for a month, for reports; `None`: not set.
    pub monthly_price: Option<Brl>,
    /// The LibreChat roles whose users start on it.
    pub roles: BTreeSet<Role>,
}

/// Who put a user on their plan. A user an admin placed stays there whatever their
/// LibreChat role; one their role placed goes back to the default plan when the
/// role no longer names a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanSource {
    Default,
    Role,
    Admin,
}

impl PlanSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Role => "role",
            Self::Admin => "admin",
        }
    }

    /// The stored form; anything else is the admin's (never moved by a role).
    pub fn stored(s: &str) -> Self {
        match s {
            "default" => Self::Default,
            "role" => Self::Role,
            _ => Self::Admin,
        }
    }
}

/// Roles as an admin types them: names separated by commas or new lines; blank is
/// none. At most 20.
pub fn parse_roles(text: &str) -> Result<BTreeSet<Role>, String> {
    let mut roles = BTreeSet::new();
    for raw in text
        .split([',', '\n', '\r'])
        .map(str::trim)
        .filter(|r| !r.is_empty())
    {
        let role = Role::parse(raw).ok_or_else(|| {
            format!(
                "{:?} is not a LibreChat role (1 to 64 visible characters, no commas)",
                raw.chars().take(70).collect::<String>()
            )
        })?;
        roles.insert(role);
    }
    if roles.len() > 20 {
        return Err("a plan takes the users of at most 20 roles".into());
    }
    Ok(roles)
}

/// What the admission of a request checks of the user's plan, read in the
/// reservation's transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanPolicy {
    pub models: PlanModels,
    pub limits: RequestLimits,
    pub sides: SideAllowances,
    pub overage: Option<Overage>,
}

impl PlanPolicy {
    /// Whether a request must be paid from pools (side allowances, overage) rather
    /// than from the balance as one figure.
    pub fn pooled(&self) -> bool {
        self.sides.any() || self.overage.is_some()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_blank_list_or_a_star_is_every_model() {
        assert_eq!(PlanModels::parse(""), Ok(PlanModels::All));
        assert_eq!(PlanModels::parse(" , \n "), Ok(PlanModels::All));
        assert_eq!(PlanModels::parse("*"), Ok(PlanModels::All));
        assert!(PlanModels::All.allows("anything"));
    }

    #[test]
    fn a_list_allows_exactly_its_names() {
        let m =
            PlanModels::parse("gpt-4o-mini, openai/gpt-4o\nclaude 3 haiku,gpt-4o-mini").unwrap();
        assert_eq!(
            m.listed(),
            ["claude 3 haiku", "gpt-4o-mini", "openai/gpt-4o"]
        );
        assert!(m.allows("gpt-4o-mini"));
        assert!(m.allows("claude 3 haiku"));
        assert!(!m.allows("gpt-4o"));
        assert!(!m.allows("GPT-4O-MINI"));
        assert!(!m.allows(" gpt-4o-mini"));
        assert_eq!(m.to_string(), "claude 3 haiku, gpt-4o-mini, openai/gpt-4o");
        assert_eq!(PlanModels::parse(&m.to_string()), Ok(m));
    }

    #[test]
    fn hostile_names_are_refused() {
        assert!(matches!(
            PlanModels::parse("gpt\u{7}4o"),
            Err(PlanModelsError::BadName(_))
        ));
        assert!(matches!(
            PlanModels::parse(&"x".repeat(257)),
            Err(PlanModelsError::BadName(_))
        ));
        let many: Vec<String> = (0..=PLAN_MODELS_MAX).map(|i| format!("m{i}")).collect();
        assert_eq!(
            PlanModels::parse(&many.join(",")),
            Err(PlanModelsError::TooMany)
        );
        assert!(PlanModels::from_names([" padded".to_owned()]).is_err());
        // Looks like gpt-4o, would never match it, or turns the text around.
        for invisible in [
            "gpt\u{200B}-4o",
            "gpt-4o\u{202E}",
            "\u{2066}gpt-4o",
            "gpt\u{200D}4o",
        ] {
            assert!(
                matches!(
                    PlanModels::parse(invisible),
                    Err(PlanModelsError::BadName(_))
                ),
                "{invisible:?}"
            );
        }
        // "*" is every model only alone: never a pattern, never beside names.
        for wildcard in ["*, gpt-4o", "*,*", "openai/*", "gpt-4o*"] {
            assert!(
                matches!(
                    PlanModels::parse(wildcard),
                    Err(PlanModelsError::Wildcard(_))
                ),
                "{wildcard:?}"
            );
        }
        assert_eq!(PlanModels::parse(" * "), Ok(PlanModels::All));
    }

    #[test]
    fn roles_are_exact_visible_names() {
        let roles = parse_roles(" PRO, VIP\nPRO ").unwrap();
        assert_eq!(
            roles.iter().map(Role::as_str).collect::<Vec<_>>(),
            ["PRO", "VIP"]
        );
        assert!(parse_roles("").unwrap().is_empty());
        for bad in [
            "PRO\u{202E}",
            "A\u{200B}B",
            &"R".repeat(65),
            "{{LIBRECHAT_USER_ROLE}}",
        ] {
            assert!(parse_roles(bad).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..21).map(|i| format!("R{i}")).collect();
        assert!(parse_roles(&many.join(",")).is_err());
    }

    #[test]
    fn plan_names_are_one_clean_line() {
        assert_eq!(PlanName::parse("  Pro  ").unwrap().as_str(), "Pro");
        assert!(PlanName::parse("").is_none());
        assert!(PlanName::parse("Pro\u{202E}orP").is_none());
        assert!(PlanName::parse("a\nb").is_none());
        assert!(PlanName::parse(&"é".repeat(PLAN_NAME_MAX)).is_some());
        assert!(PlanName::parse(&"é".repeat(PLAN_NAME_MAX + 1)).is_none());
    }
}
