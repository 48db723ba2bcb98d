//! Admin accounts and sign-in attempts.

use crate::bootstrap::{self, BootstrapError, MIN_PASSWORD_CHARS};
use crate::db::schema::{admins, login_failures};
use crate::db::{Database, StoreError, write_tx};
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
}

const COLUMNS: (
    admins::id,
    admins::email,
    admins::password_hash,
    admins::disabled_at,
    admins::created_at,
) = (
    admins::id,
    admins::email,
    admins::password_hash,
    admins::disabled_at,
    admins::created_at,
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

pub fn list(db: &Database) -> Result<Vec<AdminAccount>, StoreError> {
    let mut c = db.conn()?;
    Ok(admins::table
        .order(admins::email.asc())
        .select(COLUMNS)
        .load(&mut c)?)
}

/// Whether sign-in is refused for now: too many recent failures for this account or
/// from this address.
pub fn locked_out(
    db: &Database,
    email: &str,
    address: &str,
    now: NaiveDateTime,
) -> Result<bool, StoreError> {
    let since = now - Duration::minutes(FAILURE_WINDOW_MINUTES);
    let mut c = db.conn()?;
    let by_account: i64 = login_failures::table
        .filter(login_failures::email.eq(email))
        .filter(login_failures::created_at.ge(since))
        .count()
        .get_result(&mut c)?;
    let by_address: i64 = login_failures::table
        .filter(login_failures::address.eq(address))
        .filter(login_failures::created_at.ge(since))
        .count()
        .get_result(&mut c)?;
    Ok(by_account >= MAX_FAILURES_PER_ACCOUNT || by_address >= MAX_FAILURES_PER_ADDRESS)
}

pub fn record_failure(
    db: &Database,
    email: &str,
    address: &str,
    now: NaiveDateTime,
) -> Result<(), StoreError> {
    let mut c = db.conn()?;
    write_tx(&mut c, |c| {
        // Old rows only slow the count down.
        diesel::delete(
            login_failures::table.filter(login_failures::created_at.lt(now - Duration::days(1))),
        )
        .execute(c)?;
        diesel::insert_into(login_failures::table)
            .values((
                login_failures::email.eq(email),
                login_failures::address.eq(address),
                login_failures::created_at.eq(now),
            ))
            .execute(c)?;
        Ok::<_, StoreError>(())
    })
}

pub fn clear_failures(db: &Database, email: &str) -> Result<(), StoreError> {
    let mut c = db.conn()?;
    write_tx(&mut c, |c| {
        diesel::delete(login_failures::table.filter(login_failures::email.eq(email))).execute(c)?;
        Ok::<_, StoreError>(())
    })
}

/// A hash to verify against when the email is unknown, so both cases take as long.
pub fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| bootstrap::hash_password("tokengate-timing-equaliser").unwrap_or_default())
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
    let hash = bootstrap::hash_password(new)?;
    let actor = Actor::Admin(admin.email.clone());
    let mut c = db.conn()?;
    write_tx(&mut c, |c| {
        diesel::update(admins::table.find(admin.id))
            .set(admins::password_hash.eq(&hash))
            .execute(c)?;
        audit::record(
            c,
            &actor,
            Action::ChangePassword,
            None,
            &json!({"admin": admin.email}),
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
    bootstrap::add_admin(db, email, password, now)?;
    let mut c = db.conn()?;
    write_tx(&mut c, |c| {
        audit::record(
            c,
            &Actor::Admin(by.email.clone()),
            Action::AddAdmin,
            None,
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
    let target = by_id(db, target_id)?.ok_or(AccountError::NotFound)?;
    let mut c = db.conn()?;
    write_tx(&mut c, |c| {
        diesel::update(admins::table.find(target_id))
            .set(admins::disabled_at.eq(disabled.then_some(now)))
            .execute(c)?;
        let action = if disabled {
            Action::DisableAdmin
        } else {
            Action::EnableAdmin
        };
        audit::record(
            c,
            &Actor::Admin(by.email.clone()),
            action,
            None,
            &json!({"admin": target.email}),
            now,
        )?;
        Ok::<_, AccountError>(())
    })
}
