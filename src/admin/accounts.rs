//! Admin accounts and sign-in attempts.

use crate::bootstrap::{self, BootstrapError, MIN_PASSWORD_CHARS};
use crate::db::schema::{admins, login_failures};
use crate::db::{Database, StoreError};
use crate::domain::Scope;
use crate::ledger::Actor;
use crate::ledger::audit::{self, Action};
use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use serde_json::json;

/// Failed sign-ins allowed per account, and per client address, in the window.
pub const MAX_FAILURES_PER_ACCOUNT: i64 = 5;
pub const MAX_FAILURES_PER_ADDRESS: i64 = 20;
pub const FAILURE_WINDOW_MINUTES: i64 = 15;

#[derive(Debug, Clone, Queryable)]
pub struct AdminAccount {
    pub id: i64,
    pub email: String,
    pub password_hash: String,
    pub disabled_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    /// `None`: an admin of everything; else of that distributor only.
    pub distributor_id: Option<i64>,
}

impl AdminAccount {
    /// What this admin reaches: every read and write of theirs takes it.
    pub fn scope(&self) -> Scope {
        Scope::of_admin(self.distributor_id)
    }

    /// Whether `self` may manage `other`: a global admin any, a distributor's admin
    /// its distributor's.
    fn reaches(&self, other: &AdminAccount) -> bool {
        match self.scope() {
            Scope::All => true,
            Scope::Distributor(d) => other.distributor_id == Some(d.get()),
        }
    }
}

const COLUMNS: (
    admins::id,
    admins::email,
    admins::password_hash,
    admins::disabled_at,
    admins::created_at,
    admins::distributor_id,
) = (
    admins::id,
    admins::email,
    admins::password_hash,
    admins::disabled_at,
    admins::created_at,
    admins::distributor_id,
);

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error("the password must have at least {MIN_PASSWORD_CHARS} characters")]
    WeakPassword,
    #[error("the current password is wrong")]
    WrongPassword,
    #[error("the new passwords differ")]
    Mismatch,
    #[error("you cannot disable your own account")]
    SelfDisable,
    #[error("no such admin")]
    NotFound,
}

impl From<diesel::result::Error> for AccountError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Store(e.into())
    }
}

impl crate::db::RetryableError for AccountError {
    fn is_retryable(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_retryable())
    }
}

pub fn by_id(db: &Database, id: i64) -> Result<Option<AdminAccount>, StoreError> {
    let mut c = db.conn()?;
    Ok(admins::table
        .find(id)
        .select(COLUMNS)
        .first(&mut c)
        .optional()?)
}

pub fn by_email(db: &Database, email: &str) -> Result<Option<AdminAccount>, StoreError> {
    let mut c = db.conn()?;
    Ok(admins::table
        .filter(admins::email.eq(email))
        .select(COLUMNS)
        .first(&mut c)
        .optional()?)
}

/// The admins `by` may see and manage.
pub fn list(db: &Database, by: &AdminAccount) -> Result<Vec<AdminAccount>, StoreError> {
    let mut c = db.conn()?;
    let all: Vec<AdminAccount> = admins::table
        .order(admins::email.asc())
        .select(COLUMNS)
        .load(&mut c)?;
    Ok(all.into_iter().filter(|a| by.reaches(a)).collect())
}

/// Records a sign-in attempt before its password is checked, and returns false
/// (recording nothing) when the account or the address already has too many recent
/// failures. Recording first is what makes the limit hold against attempts sent in
/// parallel: each one is counted before any of them is verified. A successful
/// sign-in then clears the account's attempts (`clear_failures`).
pub fn begin_attempt(
    db: &Database,
    email: &str,
    address: &str,
    now: NaiveDateTime,
) -> Result<bool, StoreError> {
    let since = now - Duration::minutes(FAILURE_WINDOW_MINUTES);
    let (email, address) = (email.to_owned(), address.to_owned());
    db.write_blocking(move |c| {
        if let crate::db::AnyConnection::Postgresql(pg) = c {
            // Attempts on other connections are counted only once committed: take
            // turns, so that no two of them count before either is recorded.
            diesel::sql_query(format!("SELECT pg_advisory_xact_lock({SIGN_IN_LOCK_KEY})"))
                .execute(pg)?;
        }
        // Old rows only slow the count down.
        diesel::delete(
            login_failures::table.filter(login_failures::created_at.lt(now - Duration::days(1))),
        )
        .execute(c)?;
        let by_account: i64 = login_failures::table
            .filter(login_failures::email.eq(&email))
            .filter(login_failures::created_at.ge(since))
            .count()
            .get_result(c)?;
        let by_address: i64 = login_failures::table
            .filter(login_failures::address.eq(&address))
            .filter(login_failures::created_at.ge(since))
            .count()
            .get_result(c)?;
        if by_account >= MAX_FAILURES_PER_ACCOUNT || by_address >= MAX_FAILURES_PER_ADDRESS {
            return Ok(false);
        }
        diesel::insert_into(login_failures::table)
            .values((
                login_failures::email.eq(&email),
                login_failures::address.eq(&address),
                login_failures::created_at.eq(now),
            ))
            .execute(c)?;
        Ok(true)
    })
}

/// Key of the PostgreSQL advisory lock that serializes recording sign-in attempts.
const SIGN_IN_LOCK_KEY: i64 = 0x7369_676e_696e; // "signin"

pub fn clear_failures(db: &Database, email: &str) -> Result<(), StoreError> {
    let email = email.to_owned();
    db.write_blocking(move |c| {
        diesel::delete(login_failures::table.filter(login_failures::email.eq(&email)))
            .execute(c)?;
        Ok(())
    })
}

/// Password hashes computed at once: argon2id takes about 19 MiB and tens of
/// milliseconds of a core each, so a burst of sign-ins must queue for a core rather
/// than all run together.
fn hashing_slots() -> std::sync::Arc<tokio::sync::Semaphore> {
    static SLOTS: std::sync::OnceLock<std::sync::Arc<tokio::sync::Semaphore>> =
        std::sync::OnceLock::new();
    SLOTS
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
            std::sync::Arc::new(tokio::sync::Semaphore::new(cores.clamp(1, 4)))
        })
        .clone()
}

/// Longest a sign-in or password change waits for a hashing slot.
const HASHING_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `f` (which hashes or verifies a password) on the blocking pool once a
/// hashing slot is free; `None` when none came free within `HASHING_WAIT`. The slot
/// goes with the hashing, which runs to its end even if the client leaves meanwhile.
pub async fn with_hashing_slot<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<Option<T>, actix_web::error::BlockingError> {
    let Ok(Ok(slot)) = tokio::time::timeout(HASHING_WAIT, hashing_slots().acquire_owned()).await
    else {
        return Ok(None);
    };
    actix_web::web::block(move || {
        let _slot = slot;
        f()
    })
    .await
    .map(Some)
}

/// A hash to verify against when the email is unknown, so both cases take as long.
pub fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        bootstrap::stored_hash("tokengate-timing-equaliser", None).unwrap_or_default()
    })
}

pub fn change_password(
    db: &Database,
    admin: &AdminAccount,
    current: &str,
    new: &str,
    confirm: &str,
    now: NaiveDateTime,
) -> Result<(), AccountError> {
    if !bootstrap::verify_password(current, &admin.password_hash) {
        return Err(AccountError::WrongPassword);
    }
    if new != confirm {
        return Err(AccountError::Mismatch);
    }
    if new.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AccountError::WeakPassword);
    }
    let hash = bootstrap::stored_hash(new, admin.distributor_id)?;
    let actor = Actor::Admin(admin.email.clone());
    let (id, email) = (admin.id, admin.email.clone());
    db.write_blocking(move |c| {
        diesel::update(admins::table.find(id))
            .set(admins::password_hash.eq(&hash))
            .execute(c)?;
        audit::record(
            c,
            &actor,
            Action::ChangePassword,
            None,
            &json!({"admin": email}),
            now,
        )?;
        Ok::<_, AccountError>(())
    })
}

pub fn add(
    db: &Database,
    by: &AdminAccount,
    email: &str,
    password: &str,
    now: NaiveDateTime,
) -> Result<(), AccountError> {
    // A new admin reaches what the admin who adds them reaches.
    bootstrap::add_admin(db, email, password, by.distributor_id, now)?;
    let (actor, email) = (Actor::Admin(by.email.clone()), email.to_owned());
    let home = by.scope().home();
    db.write_blocking(move |c| {
        audit::record_in(
            c,
            &actor,
            Action::AddAdmin,
            None,
            home,
            &json!({"admin": email}),
            now,
        )
    })?;
    Ok(())
}

pub fn set_disabled(
    db: &Database,
    by: &AdminAccount,
    target_id: i64,
    disabled: bool,
    now: NaiveDateTime,
) -> Result<(), AccountError> {
    if disabled && target_id == by.id {
        return Err(AccountError::SelfDisable);
    }
    let target = by_id(db, target_id)?
        .filter(|t| by.reaches(t))
        .ok_or(AccountError::NotFound)?;
    let actor = Actor::Admin(by.email.clone());
    let home = by.scope().home();
    db.write_blocking(move |c| {
        diesel::update(admins::table.find(target_id))
            .set(admins::disabled_at.eq(disabled.then_some(now)))
            .execute(c)?;
        let action = if disabled {
            Action::DisableAdmin
        } else {
            Action::EnableAdmin
        };
        audit::record_in(
            c,
            &actor,
            action,
            None,
            home,
            &json!({"admin": target.email}),
            now,
        )?;
        Ok::<_, AccountError>(())
    })
}
