//! The admin dashboard (docs/behaviour.md): server-rendered maud pages under `/admin`.
//!
//! - [`session`]: the signed session cookie, CSRF tokens and the Origin check;
//! - [`accounts`]: admin accounts and sign-in rate limits;
//! - [`views`]: the layout and shared pieces (numbers, bars, the SVG chart);
//! - [`pages`]: one module per page, handlers next to their markup.
//!
//! Every value a user controls (names, emails, notes) goes through maud's escaping;
//! nothing here uses `PreEscaped` on such data.

pub mod accounts;
pub mod pages;
pub mod session;
pub mod views;

use crate::config::Locale;
use crate::db::RetryableError;
use crate::startup::AppState;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError, web};

/// Mounts `/admin`; `key` signs the session cookie.
pub fn configure(cfg: &mut web::ServiceConfig, key: actix_web::cookie::Key, secure: bool) {
    cfg.service(
        web::scope("/admin")
            .wrap(session::middleware(key, secure))
            .wrap(page_headers(
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; form-action 'self'; frame-ancestors 'none'",
            ))
            // Malformed forms, queries and ids get the same readable pages.
            .app_data(
                web::FormConfig::default()
                    .limit(64 * 1024)
                    .error_handler(|e, _| AdminError::from_form(&e).into()),
            )
            .app_data(web::QueryConfig::default().error_handler(|_, _| AdminError::BadRequest.into()))
            .app_data(web::PathConfig::default().error_handler(|_, _| AdminError::NotFound.into()))
            .configure(pages::routes),
    );
}

/// The headers of every server-rendered page (the dashboard's and the user's): never
/// cached, never framed, no sniffing, no referrer to other sites (one-time tokens
/// travel in the user's links; not `no-referrer`, with which browsers send
/// `Origin: null` on this site's own forms), and the page's own `csp`.
pub fn page_headers(csp: &'static str) -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add((header::CACHE_CONTROL, "no-store"))
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::REFERRER_POLICY, "same-origin"))
        .add((header::CONTENT_SECURITY_POLICY, csp))
}

/// Errors of admin pages, each answered with a readable page.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Not signed in (or the session ended): go to the sign-in page, then come back.
    #[error("sign-in required")]
    SignInRequired(String),
    /// A POST without this session's CSRF token, or from another site.
    #[error("forbidden")]
    Forbidden,
    #[error("not found")]
    NotFound,
    /// A form or query that cannot be read at all.
    #[error("bad request")]
    BadRequest,
    /// A form whose body did not arrive in time (`limits`).
    #[error("the form did not arrive in time")]
    BodyTimeout,
    /// The change clashes with what exists (a plan name already taken).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A LibreChat role already takes its users to another plan.
    #[error("role {role} taken by plan {plan}")]
    RoleTaken { role: String, plan: String },
    /// Every password-hashing slot stayed busy (a burst of sign-ins).
    #[error("busy")]
    Busy,
    #[error("storage: {0}")]
    Store(#[from] crate::db::StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<crate::ledger::LedgerError> for AdminError {
    fn from(e: crate::ledger::LedgerError) -> Self {
        match e {
            crate::ledger::LedgerError::Store(s) => Self::Store(s),
            crate::ledger::LedgerError::UserNotFound(_)
            | crate::ledger::LedgerError::PlanNotFound(_)
            | crate::ledger::LedgerError::DistributorNotFound(_) => Self::NotFound,
            crate::ledger::LedgerError::PlanExists(name)
            | crate::ledger::LedgerError::DistributorExists(name)
            | crate::ledger::LedgerError::TenantTaken(name) => Self::Conflict(name),
            crate::ledger::LedgerError::Invalid(_) => Self::BadRequest,
            crate::ledger::LedgerError::RoleTaken { role, plan } => Self::RoleTaken { role, plan },
        }
    }
}

impl AdminError {
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

impl From<actix_web::error::BlockingError> for AdminError {
    fn from(_: actix_web::error::BlockingError) -> Self {
        Self::Internal("background task cancelled".into())
    }
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::SignInRequired(_) => StatusCode::SEE_OTHER,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Conflict(_) | Self::RoleTaken { .. } => StatusCode::CONFLICT,
            Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            // The database is down, locked or full: worth trying again in a moment.
            Self::Store(crate::db::StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            // Another change to the same rows won every retry: reload and redo it.
            Self::Store(e) if e.is_retryable() => StatusCode::CONFLICT,
            Self::Store(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::SignInRequired(next) = self {
            let target = format!("/admin/login?next={}", views::url_encode(next));
            return HttpResponse::SeeOther()
                .insert_header((header::LOCATION, target))
                .finish();
        }
        // The locale is not at hand here; error pages are short and bilingual.
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
            Self::Conflict(_) => (
                "Conflito / Conflict",
                "Já existe um item com esse nome. / An item with that name already exists.",
            ),
            Self::RoleTaken { .. } => (
                "Conflito / Conflict",
                "Esse papel do LibreChat já leva a outro plano. / That LibreChat role already takes its users to another plan.",
            ),
            Self::NotFound => (
                "Página não encontrada / Page not found",
                "O endereço não existe ou o item foi removido. / The address does not exist or the item was removed.",
            ),
            Self::Busy => (
                "Ocupado / Busy",
                "Muitas pessoas entrando ao mesmo tempo. Tente de novo em alguns segundos. / Too many sign-ins at once. Try again in a few seconds.",
            ),
            Self::Store(crate::db::StoreError::Unavailable(_)) => (
                "Banco de dados indisponível / Database unavailable",
                "Tente de novo em alguns segundos. / Try again in a few seconds.",
            ),
            Self::Store(e) if e.is_retryable() => (
                "Alteração simultânea / Concurrent change",
                "Outra alteração mudou os mesmos dados ao mesmo tempo. Recarregue a página e tente de novo. / Another change touched the same data at the same moment. Reload the page and try again.",
            ),
            _ => (
                "Erro interno / Internal error",
                "Algo deu errado; o erro foi registrado. / Something went wrong; the error was logged.",
            ),
        };
        if matches!(self, Self::Store(_) | Self::Internal(_)) {
            // Logged with its cause, which the page does not show.
            tracing::error!(error = %self, "admin page failed");
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
        res.body(views::error_page(title, text).into_string())
    }
}

/// The configured language of admin pages.
pub fn locale(state: &AppState) -> Locale {
    state.config.locale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::StoreError;
    use diesel::result::{DatabaseErrorKind, Error as DieselError};

    /// An outage is worth retrying in a moment (503); a change that lost every retry
    /// to a concurrent one is a conflict (409); anything else is our fault (500).
    #[actix_web::test]
    async fn storage_errors_get_the_status_that_says_what_to_do() {
        let outage = AdminError::Store(StoreError::Unavailable("connection refused".into()));
        let lost_race = AdminError::Store(StoreError::Query(DieselError::DatabaseError(
            DatabaseErrorKind::UniqueViolation,
            Box::new(String::from("duplicate key")),
        )));
        let bug = AdminError::Store(StoreError::Query(DieselError::NotFound));
        assert_eq!(outage.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(lost_race.status_code(), StatusCode::CONFLICT);
        assert_eq!(bug.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        for (e, says) in [(&outage, "indisponível"), (&lost_race, "Recarregue")] {
            let body = actix_web::body::to_bytes(e.error_response().into_body()).await;
            let text = String::from_utf8(body.map(|b| b.to_vec()).unwrap_or_default());
            assert!(text.unwrap_or_default().contains(says), "{e:?}");
        }
    }
}
