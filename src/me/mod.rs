//! The user's own page under `/me` (docs/behaviour.md, "The user's page"): balance,
//! plan, use, alerts. Server-rendered, no JavaScript, phone-first.
//!
//! - [`store`]: one-time links, sessions and rate limits in the database;
//! - [`session`]: the session cookie, its CSRF token and the Origin check;
//! - [`pages`]: the handlers and their markup;
//! - [`mail`]: the sign-in mail, sent in the background;
//! - [`credits`]: redeeming a code and asking for credits.
//!
//! A user is known here only through a link mailed to the address LibreChat sent.
//! Nothing under `/me` takes a user id from the request: every page shows the
//! session's own user, and the session cookie is not sent to `/admin`.

pub mod credits;
pub mod mail;
pub mod pages;
pub mod session;
pub mod store;

use crate::db::RetryableError;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError, web};

/// How long a link in an alert mail opens the page.
pub const ALERT_LINK_TTL: chrono::Duration = chrono::Duration::days(7);
/// How long a link asked for on the sign-in page works.
pub const SIGN_IN_LINK_TTL: chrono::Duration = chrono::Duration::minutes(30);
/// How long a browser stays signed in.
pub const SESSION_TTL: chrono::Duration = chrono::Duration::days(14);

/// Mounts `/me`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/me")
            .wrap(crate::admin::page_headers(
                "default-src 'none'; img-src 'self' data:; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ))
            .app_data(
                web::FormConfig::default()
                    .limit(16 * 1024)
                    .error_handler(|e, _| MeError::from_form(&e).into()),
            )
            .app_data(web::PathConfig::default().error_handler(|_, _| MeError::NotFound.into()))
            .configure(pages::routes)
            .default_service(web::to(|| async { Err::<HttpResponse, _>(MeError::NotFound) })),
    );
}

/// Errors of the user's pages that no page handles itself, each a short readable
/// page in both languages (the locale is not at hand here).
#[derive(Debug, thiserror::Error)]
pub enum MeError {
    /// No session, or it ended: go to the sign-in page.
    #[error("sign-in required")]
    SignInRequired,
    /// A POST without the session's CSRF token, or from another site.
    #[error("forbidden")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("bad request")]
    BadRequest,
    /// A form whose body did not arrive in time (`limits`).
    #[error("the form did not arrive in time")]
    BodyTimeout,
    #[error("storage: {0}")]
    Store(#[from] crate::db::StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<crate::ledger::LedgerError> for MeError {
    fn from(e: crate::ledger::LedgerError) -> Self {
        match e {
            crate::ledger::LedgerError::Store(s) => Self::Store(s),
            // The session's user is gone: nothing to show.
            _ => Self::SignInRequired,
        }
    }
}

impl MeError {
    /// A form that could not be read: cut short by `limits`, or malformed.
    fn from_form(e: &actix_web::error::UrlencodedError) -> Self {
        match e {
            actix_web::error::UrlencodedError::Payload(p) if crate::limits::timed_out(p) => {
                Self::BodyTimeout
            }
            _ => Self::BadRequest,
        }
    }
}

impl From<actix_web::error::BlockingError> for MeError {
    fn from(_: actix_web::error::BlockingError) -> Self {
        Self::Internal("background task cancelled".into())
    }
}

impl ResponseError for MeError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::SignInRequired => StatusCode::SEE_OTHER,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Store(crate::db::StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Store(e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Store(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::SignInRequired = self {
            return HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/me/sign-in"))
                .finish();
        }
        let (title, text) = match self {
            Self::Forbidden => (
                "Ação recusada / Action refused",
                "O formulário expirou ou veio de outro site. Volte, recarregue a página e tente de novo. / The form expired or came from another site. Go back, reload the page and try again.",
            ),
            Self::BadRequest => (
                "Pedido inválido / Invalid request",
                "O formulário chegou incompleto ou grande demais. Volte e tente de novo. / The form arrived incomplete or too large. Go back and try again.",
            ),
            Self::BodyTimeout => (
                "Tempo esgotado / Timed out",
                "O formulário não chegou a tempo. Verifique a conexão e envie de novo. / The form did not arrive in time. Check the connection and send it again.",
            ),
            Self::NotFound => (
                "Página não encontrada / Page not found",
                "Este endereço não existe. / This address does not exist.",
            ),
            Self::Store(e)
                if matches!(e, crate::db::StoreError::Unavailable(_)) || e.is_retryable() =>
            {
                (
                    "Serviço ocupado / Service busy",
                    "Tente de novo em alguns segundos. / Try again in a few seconds.",
                )
            }
            _ => (
                "Erro interno / Internal error",
                "Algo deu errado; o erro foi registrado. Tente de novo mais tarde. / Something went wrong; the error was logged. Try again later.",
            ),
        };
        if matches!(self, Self::Store(_) | Self::Internal(_)) {
            tracing::error!(error = %self, "user page failed");
        }
        let mut res = HttpResponse::build(self.status_code());
        res.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        ));
        if matches!(self, Self::BodyTimeout) {
            // The rest of the body is never read: the connection cannot go on.
            res.insert_header((header::CONNECTION, "close"));
        }
        res.body(pages::error_page(title, text).into_string())
    }
}
