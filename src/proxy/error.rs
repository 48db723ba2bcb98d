//! Errors on `/v1`, always in the OpenAI shape (docs/behaviour.md). LibreChat shows
//! their text in the chat, so what a user can meet (the block, a suspension, the AI
//! service or the database being down, a message over the size limit) is written in
//! the configured language (`V1Error`); what only a developer wiring a client meets
//! (a wrong key, a malformed body, an unknown route) stays in English. `Display` is
//! the English text, for logs.

use crate::config::{BlockStatus, Locale};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;
use std::borrow::Cow;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Invalid or missing API key. Use one of tokengate's client keys.")]
    InvalidApiKey,
    #[error("{0}")]
    MissingUser(String),
    #[error("{message}")]
    InvalidBody {
        message: String,
        param: Option<&'static str>,
    },
    #[error("The request body is larger than the limit of {0} bytes.")]
    BodyTooLarge(usize),
    #[error("{0}")]
    Suspended(String),
    /// The block (`TOKENGATE_BLOCK_STATUS`); the text is user-facing, in the
    /// configured language.
    #[error("{message}")]
    InsufficientQuota {
        message: String,
        status: BlockStatus,
    },
    #[error("The AI service is unreachable right now. Please try again in a moment.")]
    UpstreamUnavailable,
    // Not "took too long": LibreChat reads "too long" as a context-length problem.
    #[error("The AI service did not answer in time. Please try again.")]
    UpstreamTimeout,
    /// A success status with a body that is not an OpenAI answer (an HTML error page
    /// from a proxy, a truncated body): nothing usable happened, so nothing is charged.
    #[error(
        "The AI service sent an answer that could not be read. Please try again; this request was not charged."
    )]
    UpstreamGarbled,
    #[error("The usage database is unavailable right now; requests are refused until it is back.")]
    StorageUnavailable,
    #[error("Unknown API route: {0}")]
    NotFound(String),
    #[error("Internal error; the request was not charged.")]
    Internal,
}

impl ApiError {
    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::InvalidBody {
            message: message.into(),
            param: None,
        }
    }

    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::InvalidApiKey => ("invalid_request_error", "invalid_api_key"),
            Self::MissingUser(_) => ("invalid_request_error", "missing_user"),
            Self::InvalidBody { .. } => ("invalid_request_error", "invalid_body"),
            Self::BodyTooLarge(_) => ("invalid_request_error", "body_too_large"),
            Self::Suspended(_) => ("permission_error", "user_suspended"),
            Self::InsufficientQuota { .. } => ("insufficient_quota", "insufficient_quota"),
            Self::UpstreamUnavailable | Self::UpstreamGarbled => {
                ("upstream_error", "upstream_unavailable")
            }
            Self::UpstreamTimeout => ("upstream_error", "upstream_timeout"),
            Self::StorageUnavailable => ("server_error", "storage_unavailable"),
            Self::NotFound(_) => ("invalid_request_error", "not_found"),
            Self::Internal => ("server_error", "internal_error"),
        }
    }
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidApiKey => StatusCode::UNAUTHORIZED,
            Self::MissingUser(_) | Self::InvalidBody { .. } => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Suspended(_) => StatusCode::FORBIDDEN,
            Self::InsufficientQuota { status, .. } => status.status(),
            Self::UpstreamUnavailable | Self::UpstreamGarbled => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The text the client reads, in `locale` where a user may read it.
    pub fn message(&self, locale: Locale) -> Cow<'_, str> {
        let text = match (self, locale) {
            (Self::UpstreamUnavailable, Locale::PtBr) => {
                "O serviço de IA não está acessível agora. Tente de novo em instantes."
            }
            (Self::UpstreamTimeout, Locale::PtBr) => {
                "O serviço de IA não respondeu a tempo. Tente de novo."
            }
            (Self::UpstreamGarbled, Locale::PtBr) => {
                "O serviço de IA enviou uma resposta que não pôde ser lida. Tente de novo; este pedido não foi cobrado."
            }
            (Self::StorageUnavailable, Locale::PtBr) => {
                "O controle de uso está fora do ar agora; os pedidos voltam a ser atendidos quando ele voltar. Tente de novo em alguns minutos."
            }
            (Self::StorageUnavailable, Locale::En) => {
                "Usage tracking is down right now; requests are served again once it is back. Please try again in a few minutes."
            }
            (Self::Internal, Locale::PtBr) => "Erro interno; este pedido não foi cobrado.",
            (Self::BodyTooLarge(limit), Locale::PtBr) => {
                return Cow::Owned(format!(
                    "Esta mensagem passa do limite de {}. Envie arquivos menores ou em partes.",
                    size(*limit)
                ));
            }
            (Self::BodyTooLarge(limit), Locale::En) => {
                return Cow::Owned(format!(
                    "This message is over the limit of {}. Send smaller files, or send them in parts.",
                    size(*limit)
                ));
            }
            _ => return Cow::Owned(self.to_string()),
        };
        Cow::Borrowed(text)
    }

    /// The OpenAI-shaped answer, its text in `locale` where a user may read it.
    fn response(&self, locale: Locale) -> HttpResponse {
        let (kind, code) = self.kind();
        let param = match self {
            Self::InvalidBody { param, .. } => *param,
            _ => None,
        };
        let body = json!({"error": {"message": self.message(locale), "type": kind, "code": code, "param": param}});
        let mut res = HttpResponse::build(self.status_code());
        if matches!(self, Self::InsufficientQuota { .. }) {
            // Stops the official OpenAI SDKs from retrying; no Retry-After on purpose.
            res.insert_header(("x-should-retry", "false"));
        }
        if matches!(self, Self::InvalidApiKey) {
            res.insert_header(("www-authenticate", "Bearer"));
        }
        res.json(body)
    }

    /// This error as the client will get it, in the configured language.
    pub fn in_locale(self, locale: Locale) -> V1Error {
        V1Error {
            error: self,
            locale,
        }
    }
}

/// A size limit as a person reads it: whole megabytes, or kilobytes below one.
fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{} MB", bytes >> 20)
    } else {
        format!("{} KB", bytes.div_ceil(1 << 10))
    }
}

/// An `ApiError` on its way to the client: what `/v1` handlers return.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct V1Error {
    pub error: ApiError,
    pub locale: Locale,
}

impl ResponseError for V1Error {
    fn status_code(&self) -> StatusCode {
        self.error.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        self.error.response(self.locale)
    }
}

impl From<crate::db::StoreError> for ApiError {
    fn from(e: crate::db::StoreError) -> Self {
        match e {
            crate::db::StoreError::Unavailable(msg) => {
                tracing::warn!(error = %msg, "database unavailable; failing closed");
                Self::StorageUnavailable
            }
            crate::db::StoreError::Query(err) => {
                tracing::error!(error = %err, "database query failed");
                Self::Internal
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LibreChat shows these texts in the chat: one plain line, no braces (parsed as
    /// JSON there), no words it reads as a context-length problem (it would summarize
    /// and send again), and Portuguese by default.
    #[test]
    fn user_facing_texts_are_safe_for_librechat_in_both_languages() {
        let errors = [
            ApiError::UpstreamUnavailable,
            ApiError::UpstreamTimeout,
            ApiError::UpstreamGarbled,
            ApiError::StorageUnavailable,
            ApiError::Internal,
            ApiError::BodyTooLarge(20_971_520),
            ApiError::BodyTooLarge(2048),
        ];
        for error in &errors {
            let (pt, en) = (error.message(Locale::PtBr), error.message(Locale::En));
            assert_ne!(pt, en, "not translated: {en}");
            for text in [pt, en] {
                let lower = text.to_lowercase();
                assert!(!text.contains(['{', '}', '\n', '\r']), "{text}");
                assert!(text.chars().count() <= 185, "{text}");
                for word in ["context", "too long", "too large"] {
                    assert!(!lower.contains(word), "{text}");
                }
            }
        }
        assert_eq!(
            ApiError::BodyTooLarge(20_971_520).message(Locale::PtBr),
            "Esta mensagem passa do limite de 20 MB. Envie arquivos menores ou em partes."
        );
    }
}
