//! Distributors (tenants): who resells the service, and what an admin's reach is.
//!
//! Every user, plan and code batch belongs to one distributor. Distributor 1 is the
//! install's own ("direct" sales): an install that resells nothing has only it, and
//! never shows the word. Its plans are offered to every distributor.

use super::TokenAmount;
use std::fmt;

/// A distributor's row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DistributorId(i64);

impl DistributorId {
    /// The install's own distributor: its users, its plans (offered to all).
    pub const DIRECT: Self = Self(1);

    /// An id read from the database (or a URL, which a scope then checks).
    pub fn from_db(id: i64) -> Self {
        Self(id)
    }

    pub fn get(self) -> i64 {
        self.0
    }

    pub fn is_direct(self) -> bool {
        self == Self::DIRECT
    }
}

impl fmt::Display for DistributorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Longest distributor name, in characters.
pub const DISTRIBUTOR_NAME_MAX: usize = 80;

/// A distributor's name, as its admins and the global admins see it: 1 to 80
/// visible characters. "direct" names the install's own and cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistributorName(String);

impl DistributorName {
    pub fn parse(s: &str) -> Option<Self> {
        let name = s.trim();
        let ok = !name.is_empty()
            && name.chars().count() <= DISTRIBUTOR_NAME_MAX
            && !name.eq_ignore_ascii_case(DIRECT_NAME)
            && !name.chars().all(|c| c.is_ascii_digit())
            && !name.chars().any(|c| {
                c.is_control() || super::text::is_hidden(c) || super::text::is_bidi_control(c)
            });
        ok.then(|| Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DistributorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The stored name of distributor 1.
pub const DIRECT_NAME: &str = "direct";

/// Longest tenant id LibreChat may send.
pub const TENANT_MAX: usize = 128;

/// The value LibreChat sends as `{{LIBRECHAT_USER_TENANTID}}`: 1 to 128 printable
/// ASCII characters (LibreChat's ids are), compared exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty() && s.len() <= TENANT_MAX && s.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a distributor's users may use together in a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub cap: TokenAmount,
}

impl Pool {
    /// What is left of the pool after what was used and what is held.
    pub fn left(self, used: i64, held: i64) -> i64 {
        self.cap.get().saturating_sub(used).saturating_sub(held)
    }
}

/// Whose data an admin reaches. Every read and write of the dashboard takes one
/// (`ledger::scope`): a global admin's reaches everything, a distributor admin's only
/// that distributor's users, plans, codes, requests, alerts and audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    Distributor(DistributorId),
}

impl Scope {
    /// From an admin's row: NULL is a global admin.
    pub fn of_admin(distributor_id: Option<i64>) -> Self {
        match distributor_id {
            None => Self::All,
            Some(id) => Self::Distributor(DistributorId(id)),
        }
    }

    /// Whether a row of `owner` is within reach.
    pub fn reaches(self, owner: DistributorId) -> bool {
        match self {
            Self::All => true,
            Self::Distributor(d) => d == owner,
        }
    }

    /// Whether a plan of `owner` may be given to this scope's users: its own, or
    /// the install's (offered to all).
    pub fn may_use_plan_of(self, owner: DistributorId) -> bool {
        owner.is_direct() || self.reaches(owner)
    }

    /// The distributor this scope creates things in.
    pub fn home(self) -> DistributorId {
        match self {
            Self::All => DistributorId::DIRECT,
            Self::Distributor(d) => d,
        }
    }

    pub fn is_global(self) -> bool {
        self == Self::All
    }

    /// The distributor ids this scope reaches, as an inclusive range: one column
    /// filter (`distributor_id BETWEEN lo AND hi`) of the same type for both kinds.
    pub fn bounds(self) -> (i64, i64) {
        match self {
            Self::All => (i64::MIN, i64::MAX),
            Self::Distributor(d) => (d.get(), d.get()),
        }
    }

    /// The same as a clause on a query over a table with `user_id` (aggregates
    /// written as SQL text): empty for a global scope. Only ids are formatted in.
    pub fn user_clause(self) -> String {
        match self {
            Self::All => String::new(),
            Self::Distributor(d) => format!(
                " AND user_id IN (SELECT id FROM users WHERE distributor_id = {})",
                d.get()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_visible_text_and_never_the_installs_own() {
        assert!(DistributorName::parse("NetFibra Telecom").is_some());
        assert_eq!(
            DistributorName::parse("  Rede Sul  ").map(|n| n.to_string()),
            Some("Rede Sul".to_owned())
        );
        assert!(DistributorName::parse("").is_none());
        assert!(DistributorName::parse("direct").is_none());
        assert!(DistributorName::parse("DIRECT").is_none());
        assert!(
            DistributorName::parse("42").is_none(),
            "would read as an id"
        );
        assert!(DistributorName::parse("a\u{202e}b").is_none());
        assert!(DistributorName::parse("a\u{200b}b").is_none());
        assert!(DistributorName::parse(&"x".repeat(81)).is_none());
    }

    #[test]
    fn tenant_ids_are_printable_ascii() {
        assert!(TenantId::parse("6650f0c2a9b1c2d3e4f5a6b7").is_some());
        assert!(TenantId::parse("rede-sul").is_some());
        assert!(TenantId::parse("").is_none());
        assert!(TenantId::parse("a b").is_none());
        assert!(TenantId::parse("é").is_none());
        assert!(TenantId::parse(&"a".repeat(129)).is_none());
    }

    #[test]
    fn a_distributor_scope_reaches_only_its_own() {
        let a = DistributorId::from_db(2);
        let b = DistributorId::from_db(3);
        assert!(Scope::All.reaches(a));
        assert!(Scope::Distributor(a).reaches(a));
        assert!(!Scope::Distributor(a).reaches(b));
        assert!(!Scope::Distributor(a).reaches(DistributorId::DIRECT));
        assert!(Scope::Distributor(a).may_use_plan_of(DistributorId::DIRECT));
        assert!(!Scope::Distributor(a).may_use_plan_of(b));
        assert_eq!(Scope::Distributor(a).home(), a);
        assert_eq!(Scope::All.home(), DistributorId::DIRECT);
    }

    #[test]
    fn the_pool_left_counts_what_is_held() {
        let Ok(cap) = TokenAmount::new(1_000) else {
            panic!("a valid amount")
        };
        let pool = Pool { cap };
        assert_eq!(pool.left(600, 300), 100);
        assert_eq!(pool.left(900, 300), -200);
    }
}
