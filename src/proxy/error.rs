//! Errors on `/v1`, always in the OpenAI shape (SPEC section 3).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

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
    /// The 429 block; the text is user-facing, in the configured language.
    #[error("{0}")]
    InsufficientQuota(String),
    #[error("The AI service is unreachable right now. Please try again in a moment.")]
    UpstreamUnavailable,
    #[error("The AI service took too long to answer. Please try again.")]
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
            Self::InsufficientQuota(_) => ("insufficient_quota", "insufficient_quota"),
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

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidApiKey => StatusCode::UNAUTHORIZED,
            Self::MissingUser(_) | Self::InvalidBody { .. } => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Suspended(_) => StatusCode::FORBIDDEN,
            Self::InsufficientQuota(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamUnavailable | Self::UpstreamGarbled => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (kind, code) = self.kind();
        let param = match self {
            Self::InvalidBody { param, .. } => *param,
            _ => None,
        };
        let body = json!({"error": {"message": self.to_string(), "type": kind, "code": code, "param": param}});
        let mut res = HttpResponse::build(self.status_code());
        if matches!(self, Self::InsufficientQuota(_)) {
            // Stops the official OpenAI SDKs from retrying; no Retry-After on purpose.
            res.insert_header(("x-should-retry", "false"));
        }
        if matches!(self, Self::InvalidApiKey) {
            res.insert_header(("www-authenticate", "Bearer"));
        }
        res.json(body)
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
