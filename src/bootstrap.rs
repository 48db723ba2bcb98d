//! First start: client keys and the first admin are generated when not configured,
//! stored (keys as digests, passwords as argon2id hashes) and printed once.

use crate::config::Config;
use crate::db::schema::{admins, settings};
use crate::db::{Database, StoreError};
use crate::proxy::auth::ClientKeys;
use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use chrono::NaiveDateTime;
use diesel::prelude::*;
use secrecy::ExposeSecret;

pub const MIN_PASSWORD_CHARS: usize = 12;
const CLIENT_KEY_SETTING: &str = "client_key_sha256";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read random bytes from the operating system: {0}")]
    Random(String),
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("the password must have at least {MIN_PASSWORD_CHARS} characters")]
    WeakPassword,
    #[error("an admin with the email {0} already exists")]
    AdminExists(String),
}

impl From<diesel::result::Error> for BootstrapError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Store(e.into())
    }
}

impl crate::db::RetryableError for BootstrapError {
    fn is_retryable(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_retryable())
    }
}

/// Secrets generated on this start, for the caller to print once.
#[derive(Default)]
pub struct Generated {
    pub client_key: Option<String>,
    pub admin: Option<(String, String)>,
}

pub fn random_token(bytes: usize) -> Result<String, BootstrapError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| BootstrapError::Random(e.to_string()))?;
    Ok(hex::encode(buf))
}

/// The client keys to accept: the configured ones, else the stored digests, else a
/// newly generated key (returned in `generated` to be shown once).
pub fn client_keys(
    db: &Database,
    config: &Config,
    generated: &mut Generated,
) -> Result<ClientKeys, BootstrapError> {
    let services = config
        .service_keys
        .iter()
        .filter_map(|(name, key)| {
            ClientKeys::service_account(name).map(|a| (a, ClientKeys::digest(key.expose_secret())))
        })
        .collect();
    Ok(librechat_keys(db, config, generated)?.with_services(services))
}

fn librechat_keys(
    db: &Database,
    config: &Config,
    generated: &mut Generated,
) -> Result<ClientKeys, BootstrapError> {
    if !config.client_keys.is_empty() {
        let digests = config
            .client_keys
            .iter()
            .map(|k| ClientKeys::digest(k.expose_secret()))
            .collect();
        return Ok(ClientKeys::from_digests(digests));
    }
    let candidate = format!("tg-{}", random_token(24)?);
    let candidate_digest = hex::encode(ClientKeys::digest(&candidate));
    let digest = candidate_digest.clone();
    // Insert-if-absent in one transaction, so replicas starting together agree.
    let stored: String = db.write_blocking(move |c| {
        let existing: Option<String> = settings::table
            .find(CLIENT_KEY_SETTING)
            .select(settings::value)
            .first(c)
            .optional()?;
        if let Some(v) = existing {
            return Ok::<_, BootstrapError>(v);
        }
        diesel::insert_into(settings::table)
            .values((
                settings::key.eq(CLIENT_KEY_SETTING),
                settings::value.eq(&digest),
            ))
            .execute(c)?;
        Ok(digest.clone())
    })?;
    if stored == candidate_digest {
        generated.client_key = Some(candidate);
    }
    let digests = stored
        .split(',')
        .filter_map(|h| hex::decode(h.trim()).ok())
        .filter_map(|b| <[u8; 32]>::try_from(b).ok())
        .collect();
    Ok(ClientKeys::from_digests(digests))
}

/// Creates the first admin when there is none.
pub fn first_admin(
    db: &Database,
    config: &Config,
    now: NaiveDateTime,
    generated: &mut Generated,
) -> Result<(), BootstrapError> {
    let count: i64 = admins::table.count().get_result(&mut *db.conn()?)?;
    if count > 0 {
        return Ok(());
    }
    let email = config
        .admin_email
        .clone()
        .unwrap_or_else(|| "admin@localhost".into())
        .to_lowercase();
    let (password, show) = match &config.admin_password {
        Some(p) => (p.expose_secret().to_owned(), false),
        None => (random_token(12)?, true),
    };
    let hash = stored_hash(&password, None)?;
    let address = email.clone();
    let created = db.write_blocking(move |c| {
        let count: i64 = admins::table.count().get_result(c)?;
        if count > 0 {
            return Ok::<_, BootstrapError>(false);
        }
        insert_admin(c, &address, &hash, None, now)?;
        Ok(true)
    })?;
    if created && show {
        generated.admin = Some((email, password));
    }
    Ok(())
}

/// `tokengate admin add`: a new admin with an argon2id password hash.
/// Adds an admin: of everything with `distributor` `None`, else of that
/// distributor only.
pub fn add_admin(
    db: &Database,
    email: &str,
    password: &str,
    distributor: Option<i64>,
    now: NaiveDateTime,
) -> Result<(), BootstrapError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(BootstrapError::WeakPassword);
    }
    let hash = stored_hash(password, distributor)?;
    let email = email.to_owned();
    db.write_blocking(move |c| {
        let exists: i64 = admins::table
            .filter(admins::email.eq(&email))
            .count()
            .get_result(c)?;
        if exists > 0 {
            return Err(BootstrapError::AdminExists(email.clone()));
        }
        insert_admin(c, &email, &hash, distributor, now)
    })
}

fn insert_admin(
    c: &mut crate::db::AnyConnection,
    email: &str,
    hash: &str,
    distributor: Option<i64>,
    now: NaiveDateTime,
) -> Result<(), BootstrapError> {
    diesel::insert_into(admins::table)
        .values((
            admins::email.eq(email),
            admins::password_hash.eq(hash),
            admins::created_at.eq(now),
            admins::distributor_id.eq(distributor),
        ))
        .execute(c)?;
    Ok(())
}

fn hash_password(password: &str) -> Result<String, BootstrapError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| BootstrapError::Random(e.to_string()))?;
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| BootstrapError::Hash(e.to_string()))
}

/// Marks the stored hash of a distributor's admin. Releases before distributors take
/// every admin for a global one; they cannot parse a marked hash, so a distributor's
/// admin can never sign in to them, even after a rollback (docs/upgrades.md). The
/// database refuses a distributor's admin whose hash lacks it.
const DISTRIBUTOR_ADMIN_MARK: &str = "scoped:";

/// The hash to store for an admin's password: marked when the admin is a
/// distributor's.
pub fn stored_hash(password: &str, distributor: Option<i64>) -> Result<String, BootstrapError> {
    let hash = hash_password(password)?;
    Ok(match distributor {
        Some(_) => format!("{DISTRIBUTOR_ADMIN_MARK}{hash}"),
        None => hash,
    })
}

/// Checks a password against a stored hash, marked or not.
pub fn verify_password(password: &str, stored: &str) -> bool {
    let hash = stored
        .strip_prefix(DISTRIBUTOR_ADMIN_MARK)
        .unwrap_or(stored);
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_hashes_verify() {
        let hash = hash_password("correct horse battery").unwrap_or_default();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("wrong horse battery", &hash));
        assert!(!verify_password("x", "not a hash"));
    }

    /// A distributor's admin's hash verifies here, and not where the mark is unknown
    /// (a release before distributors parses the stored string as it is).
    #[test]
    fn a_distributors_admins_hash_is_marked() {
        let global = stored_hash("correct horse battery", None).unwrap_or_default();
        let scoped = stored_hash("correct horse battery", Some(2)).unwrap_or_default();
        assert!(global.starts_with("$argon2id$"));
        assert!(scoped.starts_with("scoped:$argon2id$"));
        assert!(verify_password("correct horse battery", &global));
        assert!(verify_password("correct horse battery", &scoped));
        assert!(!verify_password("wrong horse battery", &scoped));
        assert!(PasswordHash::new(&scoped).is_err());
    }
}
