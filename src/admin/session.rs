//! Admin sessions: a signed cookie (HttpOnly, SameSite=Strict, Secure behind TLS)
//! whose key is stored in the database, so it survives restarts and is shared by
//! replicas. The session names the admin and a fingerprint of their password hash:
//! changing the password or disabling the account ends every session at once.
//! Every form carries the session's CSRF token, and every POST must come from
//! tokengate's own origin.

use super::AdminError;
use super::accounts::{self, AdminAccount};
use crate::db::schema::settings;
use crate::db::{Database, StoreError};
use crate::startup::AppState;
use actix_session::config::{BrowserSession, CookieContentSecurity};
use actix_session::storage::CookieSessionStore;
use actix_session::{Session, SessionExt, SessionMiddleware};
use actix_web::cookie::{Key, SameSite};
use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use diesel::prelude::*;
use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const SESSION_KEY_SETTING: &str = "admin_session_key";
pub const COOKIE_NAME: &str = "tokengate_admin";
/// A session ends this long after sign-in, whatever the browser does.
const MAX_AGE_SECS: i64 = 12 * 3600;

/// The cookie-signing key: read from the settings table, created once (replicas that
/// start together agree on the first one written).
pub fn load_key(db: &Database) -> Result<Key, StoreError> {
    let mut candidate = [0u8; 64];
    getrandom::fill(&mut candidate)
        .map_err(|e| StoreError::Unavailable(format!("no random bytes: {e}")))?;
    let candidate = hex::encode(candidate);
    let stored: String = db.write_blocking(move |c| {
        let existing: Option<String> = settings::table
            .find(SESSION_KEY_SETTING)
            .select(settings::value)
            .first(c)
            .optional()?;
        if let Some(v) = existing {
            return Ok::<_, StoreError>(v);
        }
        diesel::insert_into(settings::table)
            .values((
                settings::key.eq(SESSION_KEY_SETTING),
                settings::value.eq(&candidate),
            ))
            .execute(c)?;
        Ok(candidate.clone())
    })?;
    let bytes = hex::decode(stored)
        .map_err(|_| StoreError::Unavailable("stored session key is not hex".into()))?;
    Key::try_from(bytes.as_slice())
        .map_err(|_| StoreError::Unavailable("stored session key is too short".into()))
}

pub fn middleware(key: Key, secure: bool) -> SessionMiddleware<CookieSessionStore> {
    SessionMiddleware::builder(CookieSessionStore::default(), key)
        .cookie_name(COOKIE_NAME.into())
        .cookie_http_only(true)
        .cookie_same_site(SameSite::Strict)
        .cookie_secure(secure)
        .cookie_path("/admin".into())
        .cookie_content_security(CookieContentSecurity::Signed)
        .session_lifecycle(BrowserSession::default())
        .build()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    admin_id: i64,
    /// The admin's `fingerprint` when the session began.
    fp: String,
    signed_in_at: i64,
}

/// A one-time message shown on the next page.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

/// What a session keeps of its admin: a digest of the password hash and, for a
/// distributor's admin, of the distributor. Releases before distributors digest the
/// hash alone, so they take no session of a distributor's admin.
fn fingerprint(admin: &AdminAccount) -> String {
    let mut digest = Sha256::new();
    if let Some(distributor) = admin.distributor_id {
        digest.update(format!("distributor {distributor}\n"));
    }
    digest.update(admin.password_hash.as_bytes());
    hex::encode(&digest.finalize()[..8])
}

/// The CSRF token of this browser session, created on first use.
pub fn csrf_token(session: &Session) -> String {
    if let Ok(Some(t)) = session.get::<String>("csrf") {
        return t;
    }
    let mut raw = [0u8; 24];
    let token = match getrandom::fill(&mut raw) {
        Ok(()) => hex::encode(raw),
        Err(_) => String::new(),
    };
    let _ = session.insert("csrf", &token);
    token
}

pub fn set_flash(session: &Session, ok: bool, text: impl Into<String>) {
    let _ = session.insert(
        "flash",
        Flash {
            ok,
            text: text.into(),
        },
    );
}

pub fn take_flash(session: &Session) -> Option<Flash> {
    let flash = session.get::<Flash>("flash").ok().flatten();
    if flash.is_some() {
        session.remove("flash");
    }
    flash
}

/// Starts a fresh session for the admin (a new cookie, nothing carried over: no
/// session fixation).
pub fn sign_in(session: &Session, admin: &AdminAccount, now_secs: i64) {
    session.clear();
    session.renew();
    let _ = session.insert(
        "admin",
        Stored {
            admin_id: admin.id,
            fp: fingerprint(admin),
            signed_in_at: now_secs,
        },
    );
}

/// The signed-in admin of a request; pages that take it need a session.
pub struct SignedIn {
    pub admin: AdminAccount,
    pub csrf: String,
    pub session: Session,
}

impl FromRequest for SignedIn {
    type Error = AdminError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let session = req.get_session();
        let state = req.app_data::<web::Data<AppState>>().cloned();
        // After signing in, come back to the page; a form post cannot be replayed.
        let next = if req.method() == actix_web::http::Method::GET {
            req.uri()
                .path_and_query()
                .map_or("/admin", |p| p.as_str())
                .to_owned()
        } else {
            "/admin".to_owned()
        };
        Box::pin(async move {
            let state = state.ok_or(AdminError::Internal("no app state".into()))?;
            let stored = session
                .get::<Stored>("admin")
                .ok()
                .flatten()
                .ok_or(AdminError::SignInRequired(next.clone()))?;
            let now = state.ledger.now().timestamp();
            if now - stored.signed_in_at > MAX_AGE_SECS || now < stored.signed_in_at - 300 {
                session.purge();
                return Err(AdminError::SignInRequired(next));
            }
            let db = state.ledger.db().clone();
            let admin = web::block(move || accounts::by_id(&db, stored.admin_id))
                .await
                .map_err(|_| AdminError::Internal("cancelled".into()))??;
            match admin {
                Some(a) if a.disabled_at.is_none() && fingerprint(&a) == stored.fp => {
                    let csrf = csrf_token(&session);
                    Ok(Self {
                        admin: a,
                        csrf,
                        session,
                    })
                }
                _ => {
                    session.purge();
                    Err(AdminError::SignInRequired(next))
                }
            }
        })
    }
}

impl SignedIn {
    /// Every POST: the form's CSRF token must be this session's, and the request must
    /// come from this site.
    pub fn check_post(
        &self,
        req: &HttpRequest,
        state: &AppState,
        token: &str,
    ) -> Result<(), AdminError> {
        check_origin(req, &state.config.public_url)?;
        check_csrf(&self.session, token)
    }
}

pub fn check_csrf(session: &Session, token: &str) -> Result<(), AdminError> {
    let expected = session
        .get::<String>("csrf")
        .ok()
        .flatten()
        .unwrap_or_default();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(token.as_bytes())) {
        return Err(AdminError::Forbidden);
    }
    Ok(())
}

/// `Origin` (or, without it, `Referer`) must name tokengate itself: the configured
/// public URL or the host the request was sent to.
pub fn check_origin(req: &HttpRequest, public_url: &str) -> Result<(), AdminError> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let claimed = match header("origin") {
        Some(o) if o != "null" => o,
        _ => header("referer").ok_or(AdminError::Forbidden)?,
    };
    let info = req.connection_info();
    let own = format!("{}://{}", info.scheme(), info.host());
    let allowed = [origin_of(public_url), origin_of(&own)];
    let claimed = origin_of(&claimed);
    if allowed.iter().any(|a| !a.is_empty() && *a == claimed) {
        Ok(())
    } else {
        Err(AdminError::Forbidden)
    }
}

/// `scheme://host[:port]` of a URL, lowercased.
fn origin_of(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return String::new();
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_and_host_only() {
        assert_eq!(
            origin_of("https://Tokens.Example.com/admin/x?y"),
            "https://tokens.example.com"
        );
        assert_eq!(origin_of("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(origin_of("garbage"), "");
    }
}
