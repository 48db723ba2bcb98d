//! Alerts at usage thresholds (docs/behaviour.md) and their durable outbox.
//!
//! A settlement that crosses a threshold writes an alert row, and one outbox row per
//! message (the user's and each admin's copy), in the same transaction as the usage:
//! nothing is sent from the request path. The [`worker`] claims due outbox rows,
//! sends them and records the result, so SMTP being down only delays mail, a
//! restart loses none, and replicas never send the same row twice.

pub(crate) mod store;
pub mod worker;

use crate::db::{Database, StoreError};
use chrono::NaiveDateTime;
use serde::Serialize;
use std::time::Duration;

/// The newest alerts first, of one user or of everyone `scope` reaches, each with
/// its messages.
pub fn list(
    db: &Database,
    scope: crate::domain::Scope,
    user_id: Option<i64>,
    limit: i64,
) -> Result<Vec<Alert>, StoreError> {
    let mut conn = db.conn()?;
    store::list(&mut conn, scope, user_id, limit)
}

/// Every outbox message, oldest first.
pub fn messages(db: &Database) -> Result<Vec<OutboxMessage>, StoreError> {
    let mut conn = db.conn()?;
    store::messages(&mut conn)
}

/// What the settlement needs to know to write alerts.
#[derive(Debug, Clone)]
pub struct AlertPolicy {
    /// Percents of `used_percent` that alert, ascending, each 1..=100.
    pub thresholds: Vec<u8>,
    /// Who gets a copy of every alert (already validated addresses).
    pub admin_emails: Vec<String>,
}

impl AlertPolicy {
    /// The threshold whose crossing is also said in the chat: the highest below 100%.
    pub fn notice_at(&self) -> Option<u8> {
        self.thresholds.iter().copied().filter(|t| *t < 100).max()
    }
}

impl Default for AlertPolicy {
    fn default() -> Self {
        Self {
            thresholds: vec![80, 100],
            admin_emails: Vec::new(),
        }
    }
}

/// How the worker retries a message that could not be sent.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Wait before the second attempt; doubles after each failure.
    pub base: Duration,
    /// The longest wait between two attempts.
    pub max_delay: Duration,
    /// After this many failed attempts the message is marked failed for admins to see.
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// The wait after `failures` failed attempts (1 for the first failure).
    pub fn delay_after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.base
            .checked_mul(1_u32 << doublings)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

/// Whom an outbox message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "admin" {
            Self::Admin
        } else {
            Self::User
        }
    }
}

/// Where an outbox message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its first or next attempt.
    Pending,
    Sent,
    /// Gave up after the last attempt; an admin has to look.
    Failed,
}

impl DeliveryState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "sent" => Self::Sent,
            "failed" => Self::Failed,
            _ => Self::Pending,
        }
    }
}

/// An alert as admins see it.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub id: i64,
    pub user_id: i64,
    pub cycle: String,
    pub threshold: u8,
    pub used_this_cycle: i64,
    pub allowance_left: i64,
    pub credits: i64,
    /// The user's address when the alert was written; `None` when none was known.
    pub recipient: Option<String>,
    /// `mail`, `no_address` or `superseded` (a higher threshold crossed at once).
    pub delivery: String,
    pub request_id: Option<String>,
    pub created_at: NaiveDateTime,
    pub rearmed_at: Option<NaiveDateTime>,
    pub messages: Vec<OutboxMessage>,
}

/// One message of an alert and its delivery state.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxMessage {
    pub id: i64,
    /// The alert the message is about; `None` for a message about a credit request
    /// or a request limit.
    pub alert_id: Option<i64>,
    /// What it is about: `alert`, `credit_requested`, `credit_approved`,
    /// `credit_declined` or `request_limit`.
    pub kind: String,
    pub role: Role,
    pub recipient: String,
    pub state: DeliveryState,
    pub attempts: i32,
    pub next_attempt_at: NaiveDateTime,
    pub last_error: Option<String>,
    pub created_at: NaiveDateTime,
    pub sent_at: Option<NaiveDateTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            base: Duration::from_secs(30),
            max_delay: Duration::from_secs(3600),
            max_attempts: 10,
        };
        assert_eq!(p.delay_after(1), Duration::from_secs(30));
        assert_eq!(p.delay_after(2), Duration::from_secs(60));
        assert_eq!(p.delay_after(5), Duration::from_secs(480));
        assert_eq!(p.delay_after(8), Duration::from_secs(3600));
        assert_eq!(p.delay_after(u32::MAX), Duration::from_secs(3600));
    }
}
