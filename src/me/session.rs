//! The user's session: a random token in an HttpOnly cookie scoped to `/me` (so it
//! never reaches `/admin`), looked up in the database on every request, so signing
//! out ends it everywhere. Forms carry a CSRF token derived from the session token,
//! and every POST must come from tokengate's own origin.

use super::MeError;
use super::store::{self, TokenKind};
use crate::startup::AppState;
use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::future::LocalBoxFuture;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const COOKIE_NAME: &str = "tokengate_me";

/// The signed-in user of a request.
pub struct UserSession {
    pub user_id: i64,
    pub token: String,
    pub csrf: String,
}

/// The CSRF token of a session: a digest of its token, so it needs no storage and
/// cannot be derived without the cookie.
fn csrf_of(token: &str) -> String {
    hex::encode(&Sha256::digest(format!("tokengate-me-csrf:{token}").as_bytes())[..16])
}

/// The cookie that signs a browser in. Lax, not Strict: the footer link in
/// LibreChat is a navigation from another site and must find the session.
pub fn cookie(token: &str, secure: bool) -> Cookie<'static> {
    Cookie::build(COOKIE_NAME, token.to_owned())
        .path("/me")
        .http_only(true)
        .secure(secure)
        .same_site(SameSite::Lax)
        .max_age(CookieDuration::seconds(super::SESSION_TTL.num_seconds()))
        .finish()
}

/// The cookie that signs a browser out.
pub fn removal(secure: bool) -> Cookie<'static> {
    let mut c = cookie("", secure);
    c.make_removal();
    c
}

impl FromRequest for UserSession {
    type Error = MeError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = req.cookie(COOKIE_NAME).map(|c| c.value().to_owned());
        let state = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let state = state.ok_or(MeError::Internal("no app state".into()))?;
            let token = token
                .filter(|t| !t.is_empty() && t.len() <= 64)
                .ok_or(MeError::SignInRequired)?;
            let now = state.ledger.now().naive_utc();
            let db = state.ledger.db().clone();
            let t = token.clone();
            let user =
                web::block(move || store::holder(&db, &t, TokenKind::Session, now)).await??;
            let user_id = user.ok_or(MeError::SignInRequired)?;
            Ok(Self {
                user_id,
                csrf: csrf_of(&token),
                token,
            })
        })
    }
}

impl UserSession {
    /// Every POST of a signed-in user: this session's CSRF token, from this site.
    pub fn check_post(
        &self,
        req: &HttpRequest,
        state: &AppState,
        csrf: &str,
    ) -> Result<(), MeError> {
        check_origin(req, state)?;
        if bool::from(self.csrf.as_bytes().ct_eq(csrf.as_bytes())) {
            Ok(())
        } else {
            Err(MeError::Forbidden)
        }
    }
}

/// `Origin` (or `Referer`) must name tokengate itself.
pub fn check_origin(req: &HttpRequest, state: &AppState) -> Result<(), MeError> {
    crate::admin::session::check_origin(req, &state.config.public_url)
        .map_err(|_| MeError::Forbidden)
}
