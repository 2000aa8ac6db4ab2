//! [`ApiError`]: the one error type of the HTTP API, and how it becomes a response.
//!
//! Handlers return `Result<_, ApiError>` and use `?` on cim-core calls: the conversion maps the
//! [`ErrorKind`] to a status once, here, so no handler picks status codes by hand. Every error
//! response, including axum's own rejections (bad JSON, a bad path or query, an unknown
//! endpoint), has the same body, [`ErrorBody`], because a client that has to parse two error
//! formats ends up parsing neither well.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cim_core::{Error, ErrorKind};
use cim_proto::http::ErrorBody;

/// An error answered to an HTTP client: a status, a stable code, a message, and for a rate
/// limit how long to wait.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<std::time::Duration>,
}

/// The result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error with an explicit status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 403 `permission_denied`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Error::permission_denied(message).into()
    }

    /// 400 `invalid_input`.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Error::invalid_input(message).into()
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::not_found(message).into()
    }

    /// 401 `unauthenticated`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Error::unauthenticated(message).into()
    }
}

/// The status each kind of cim-core error is answered with.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::AlreadyExists | ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
        ErrorKind::Config | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        // A kind added to cim-core later: a bug until it is mapped here.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let kind = error.kind();
        let status = status_of(kind);
        let message = if status.is_server_error() {
            // The whole error (context, source) goes to the log; the client gets the message,
            // which cim-core writes for users, except for bugs, whose details are ours.
            tracing::error!(%error, "request failed");
            match kind {
                ErrorKind::Internal | ErrorKind::Config => {
                    "internal error; the route's log has the details".to_string()
                }
                _ => error.message().to_string(),
            }
        } else {
            error.message().to_string()
        };
        ApiError {
            status,
            code: kind.as_str(),
            message,
            retry_after: error.retry_after(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_string(),
            message: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up: a client that waits that long gets through.
            let seconds = wait.as_millis().div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_status_and_code() {
        let cases = [
            (Error::not_found("x"), 404, "not_found"),
            (Error::already_exists("x"), 409, "already_exists"),
            (Error::conflict("x"), 409, "conflict"),
            (Error::invalid_input("x"), 400, "invalid_input"),
            (Error::unauthenticated("x"), 401, "unauthenticated"),
            (Error::permission_denied("x"), 403, "permission_denied"),
            (
                Error::rate_limited("x", std::time::Duration::from_secs(1)),
                429,
                "rate_limited",
            ),
            (Error::unavailable("x"), 503, "unavailable"),
            (Error::timeout("x"), 504, "timeout"),
            (Error::unsupported("x"), 501, "unsupported"),
            (Error::config("x"), 500, "config"),
            (Error::internal("x"), 500, "internal"),
        ];
        for (error, status, code) in cases {
            let api = ApiError::from(error);
            assert_eq!(api.status.as_u16(), status, "{code}");
            assert_eq!(api.code, code);
        }
        assert_eq!(ApiError::forbidden("no").status.as_u16(), 403);
    }

    #[test]
    fn internal_details_stay_in_the_log() {
        let api = ApiError::from(Error::internal("row 7 of table users is corrupt"));
        assert!(!api.message.contains("row 7"), "{}", api.message);
        let api = ApiError::from(Error::unavailable("the account store is unreachable"));
        assert_eq!(api.message, "the account store is unreachable");
    }
}
