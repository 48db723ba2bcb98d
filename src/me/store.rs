//! One-time links, user sessions and rate limits, in the database so every replica
//! agrees. Tokens are 256 random bits; only their SHA-256 is stored.

use crate::db::schema::{rate_events, user_tokens, users};
use crate::db::{AnyConnection, Database, StoreError};
use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use sha2::{Digest, Sha256};

/// What a token opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A one-time link (alert mail, sign-in mail): deleted when used.
    Link,
    /// A signed-in browser: deleted on sign-out.
    Session,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Link => "link",
            Self::Session => "session",
        }
    }
}

/// A token as it travels in a URL or a cookie (43 characters of base64url).
pub fn new_token() -> Result<String, StoreError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)
        .map_err(|e| StoreError::Unavailable(format!("no random bytes: {e}")))?;
    Ok(base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        raw,
    ))
}

/// What is stored for a token. Anything that is not a token we issued (too long,
/// odd characters) hashes to a value no row has.
fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Stores a new token of `kind` for the user, valid for `ttl`, and returns it.
/// Expired tokens of everyone are removed on the way (they only slow lookups down).
pub async fn issue(
    db: &Database,
    user_id: i64,
    kind: TokenKind,
    now: NaiveDateTime,
    ttl: Duration,
) -> Result<String, StoreError> {
    let token = new_token()?;
    let hash = digest(&token);
    db.write(move |c| {
        diesel::delete(user_tokens::table.filter(user_tokens::expires_at.le(now))).execute(c)?;
        diesel::insert_into(user_tokens::table)
            .values((
                user_tokens::token_hash.eq(&hash),
                user_tokens::user_id.eq(user_id),
                user_tokens::kind.eq(kind.as_str()),
                user_tokens::expires_at.eq(now + ttl),
                user_tokens::created_at.eq(now),
            ))
            .execute(c)?;
        Ok::<_, StoreError>(())
    })
    .await?;
    Ok(token)
}

/// The user a live token of `kind` belongs to, without using it up.
pub fn holder(
    db: &Database,
    token: &str,
    kind: TokenKind,
    now: NaiveDateTime,
) -> Result<Option<i64>, StoreError> {
    let mut c = db.conn()?;
    Ok(user_tokens::table
        .filter(user_tokens::token_hash.eq(digest(token)))
        .filter(user_tokens::kind.eq(kind.as_str()))
        .filter(user_tokens::expires_at.gt(now))
        .select(user_tokens::user_id)
        .first(&mut c)
        .optional()?)
}

/// Uses up a link: its user when it was live, `None` when it was unknown, expired or
/// already used. Of concurrent uses of one link exactly one gets the user (the row
/// is deleted in the same statement that reads it).
pub async fn consume_link(
    db: &Database,
    token: &str,
    now: NaiveDateTime,
) -> Result<Option<i64>, StoreError> {
    let hash = digest(token);
    db.write(move |c| {
        let gone: Vec<(i64, NaiveDateTime)> = diesel::delete(
            user_tokens::table
                .filter(user_tokens::token_hash.eq(&hash))
                .filter(user_tokens::kind.eq(TokenKind::Link.as_str())),
        )
        .returning((user_tokens::user_id, user_tokens::expires_at))
        .get_results(c)?;
        Ok::<_, StoreError>(
            gone.into_iter()
                .find(|(_, expires)| *expires > now)
                .map(|(user, _)| user),
        )
    })
    .await
}

/// Ends a session (sign-out).
pub async fn end_session(db: &Database, token: &str) -> Result<(), StoreError> {
    let hash = digest(token);
    db.write(move |c| {
        diesel::delete(
            user_tokens::table
                .filter(user_tokens::token_hash.eq(&hash))
                .filter(user_tokens::kind.eq(TokenKind::Session.as_str())),
        )
        .execute(c)?;
        Ok::<_, StoreError>(())
    })
    .await
}

/// Most accounts one sign-in mail offers a link to.
pub const MAX_ACCOUNTS_PER_MAIL: usize = 5;

/// An account a sign-in mail offers: LibreChat may have several with one address
/// (an account made again, a second login method), each with a page of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub user_id: i64,
    /// The address as LibreChat sent it, where the mail goes.
    pub email: String,
    pub name: Option<String>,
    pub created_at: NaiveDateTime,
}

/// The accounts LibreChat sent with `email` (compared without case), in the order
/// tokengate first saw them: at most `MAX_ACCOUNTS_PER_MAIL` and one more, which
/// only says there are more.
/// Suspended users may see their page too.
pub fn accounts_by_email(db: &Database, email: &str) -> Result<Vec<Account>, StoreError> {
    diesel::define_sql_function!(fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text);
    let mut c = db.conn()?;
    let found: Vec<(i64, Option<String>, Option<String>, NaiveDateTime)> = users::table
        .filter(lower(users::email.assume_not_null()).eq(email.to_lowercase()))
        .filter(users::email.is_not_null())
        // The oldest first: an account made later with someone's address is more
        // likely an impostor's than theirs, and must not push theirs out.
        .order(users::id.asc())
        .select((users::id, users::email, users::name, users::created_at))
        .limit(MAX_ACCOUNTS_PER_MAIL as i64 + 1)
        .load(&mut c)?;
    Ok(found
        .into_iter()
        .filter_map(|(user_id, email, name, created_at)| {
            email.map(|email| Account {
                user_id,
                email,
                name,
                created_at,
            })
        })
        .collect())
}

/// Limits on attempts of one kind: per subject (an address typed, a user) and per
/// client, in a sliding window.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub kind: &'static str,
    pub per_subject: i64,
    pub per_client: i64,
    pub window: Duration,
}

/// What the limits allow for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// Counted as `event`, which `forget` takes back (a redemption that worked).
    Allowed { event: i64 },
    /// The subject had its share: nothing is done, and nothing counted.
    SubjectLimited,
    /// The client had its share: refused, not counted.
    ClientLimited,
}

/// Key of the PostgreSQL advisory lock that serializes counting attempts.
const RATE_LOCK_KEY: i64 = 0x7261_7465_6576; // "rateev"

/// Counts an attempt against `limit` before it is acted on, so attempts sent in
/// parallel cannot all pass. `subject` is hashed before it is stored.
pub async fn attempt(
    db: &Database,
    limit: Limit,
    subject: &str,
    client: &str,
    now: NaiveDateTime,
) -> Result<Allowance, StoreError> {
    let subject = digest(&format!("{}:{subject}", limit.kind));
    let client = client.to_owned();
    db.write(move |c| {
        if let AnyConnection::Postgresql(pg) = c {
            // Attempts on other connections count only once committed: take turns.
            diesel::sql_query(format!("SELECT pg_advisory_xact_lock({RATE_LOCK_KEY})"))
                .execute(pg)?;
        }
        diesel::delete(
            rate_events::table.filter(rate_events::created_at.lt(now - Duration::days(1))),
        )
        .execute(c)?;
        let since = now - limit.window;
        let by_client: i64 = rate_events::table
            .filter(rate_events::kind.eq(limit.kind))
            .filter(rate_events::address.eq(&client))
            .filter(rate_events::created_at.ge(since))
            .count()
            .get_result(c)?;
        if by_client >= limit.per_client {
            return Ok(Allowance::ClientLimited);
        }
        let by_subject: i64 = rate_events::table
            .filter(rate_events::kind.eq(limit.kind))
            .filter(rate_events::subject.eq(&subject))
            .filter(rate_events::created_at.ge(since))
            .count()
            .get_result(c)?;
        // Not counted: an attempt that does nothing must not extend the subject's
        // wait, or anyone could keep an address from ever getting a sign-in mail
        // (as it is, whenever it is limited, mails sent in the window are in its
        // inbox, and each link outlives the window).
        if by_subject >= limit.per_subject {
            return Ok(Allowance::SubjectLimited);
        }
        let event: i64 = diesel::insert_into(rate_events::table)
            .values((
                rate_events::kind.eq(limit.kind),
                rate_events::subject.eq(&subject),
                rate_events::address.eq(&client),
                rate_events::created_at.eq(now),
            ))
            .returning(rate_events::id)
            .get_result(c)?;
        Ok::<_, StoreError>(Allowance::Allowed { event })
    })
    .await
}

/// Takes back an attempt that turned out not to count (only failures are limited).
pub async fn forget(db: &Database, event: i64) -> Result<(), StoreError> {
    db.write(move |c| {
        diesel::delete(rate_events::table.find(event)).execute(c)?;
        Ok::<_, StoreError>(())
    })
    .await
}
