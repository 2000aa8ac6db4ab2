//! [`ClientError`]: the one error type of the SDK.
//!
//! The route answers HTTP errors as an [`ErrorBody`] with a stable code; the server answers a
//! failed frame with an `Error` frame carrying an [`ErrorCode`], or closes the connection with a
//! `Kicked` frame. All three, and the network's own failures, become one enum, so an application
//! branches on what it can do about an error (ask for another name, log in again, retry later)
//! and never on which layer produced it.

use cim_proto::http::ErrorBody;
use cim_proto::{ErrorCode, KickReason};

/// The result type of the SDK.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// The source of an error from a lower layer (HTTP client, socket).
type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why an SDK call failed, in terms a caller can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The credentials or the token were refused: wrong password, unknown user, expired token.
    /// Retrying unchanged fails again; log in again (connect a new client) with valid credentials.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The thing to create exists already: the account or group name is taken. Pick another name.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The state changed under the request (for example a second login while the route rejects
    /// them). Re-read and decide again.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The user, group, conversation or recipient does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The input is malformed or outside a limit (empty name, body too long, bad conversation).
    /// Retrying the same input fails again.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The user may not do this (for example sending to a group they are not a member of).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The server refused the frame because this connection sends too fast. Slow down, then
    /// retry; persistent floods get the connection closed.
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// The route, the server or a backend cannot be reached or refused to serve (no server
    /// available, connection refused or lost, a message still queued when its time ran out).
    /// Retrying later may help.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What could not be reached, and what to do.
        message: String,
        /// The underlying failure, if there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The operation did not finish in time. Its effect is unknown: retry only what is
    /// idempotent (a message with the same `client_msg_id` is never stored twice).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The route or its backends do not offer this operation (for example message search).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The server reported a bug of its own. Retrying may or may not help.
    #[error("server error: {0}")]
    Server(String),
    /// The peer broke the protocol: an unexpected frame or an undecodable answer. Usually a
    /// version mismatch between this SDK and the route or server.
    #[error("protocol error: {message}")]
    Protocol {
        /// What was unexpected.
        message: String,
        /// The underlying failure, if there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The server closed the session and the client will not reconnect on its own: the user
    /// logged in elsewhere ([`KickReason::Replaced`]) or logged out ([`KickReason::LoggedOut`]).
    #[error("kicked by the server ({}): {text}", reason.as_str_name())]
    Kicked {
        /// Why.
        reason: KickReason,
        /// The server's explanation.
        text: String,
    },
    /// The client is closed ([`Client::close`](crate::Client::close),
    /// [`Client::logout`](crate::Client::logout), a terminal kick, or reconnection given up):
    /// connect a new one.
    #[error("the client is closed")]
    Closed,
}

impl ClientError {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Unavailable { .. } | ClientError::Timeout(_) | ClientError::RateLimited(_)
        )
    }

    /// [`ClientError::Unavailable`] without a source.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        ClientError::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// [`ClientError::Protocol`] without a source.
    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        ClientError::Protocol {
            message: message.into(),
            source: None,
        }
    }

    /// The error an HTTP error response stands for: the body's code when the route sent an
    /// [`ErrorBody`], the status otherwise.
    pub(crate) fn from_http(status: u16, body: Option<ErrorBody>) -> Self {
        let message = match &body {
            Some(body) => body.message.clone(),
            None => format!("the route answered HTTP {status}"),
        };
        let by_code = body.as_ref().and_then(|body| match body.code.as_str() {
            "not_found" => Some(ClientError::NotFound(message.clone())),
            "already_exists" => Some(ClientError::AlreadyExists(message.clone())),
            "conflict" => Some(ClientError::Conflict(message.clone())),
            "invalid_input" => Some(ClientError::InvalidInput(message.clone())),
            "unauthenticated" => Some(ClientError::Unauthenticated(message.clone())),
            "permission_denied" => Some(ClientError::Forbidden(message.clone())),
            "rate_limited" => Some(ClientError::RateLimited(message.clone())),
            "unavailable" => Some(ClientError::unavailable(message.clone())),
            "timeout" => Some(ClientError::Timeout(message.clone())),
            "unsupported" => Some(ClientError::Unsupported(message.clone())),
            "internal" => Some(ClientError::Server(message.clone())),
            _ => None,
        });
        by_code.unwrap_or_else(|| match status {
            400 | 422 => ClientError::InvalidInput(message),
            401 => ClientError::Unauthenticated(message),
            403 => ClientError::Forbidden(message),
            404 => ClientError::NotFound(message),
            408 | 504 => ClientError::Timeout(message),
            409 => ClientError::Conflict(message),
            429 => ClientError::RateLimited(message),
            501 => ClientError::Unsupported(message),
            502 | 503 => ClientError::unavailable(message),
            _ if status >= 500 => ClientError::Server(message),
            _ => ClientError::protocol(message),
        })
    }

    /// The error an `Error` frame stands for.
    pub(crate) fn from_code(code: ErrorCode, text: String) -> Self {
        match code {
            ErrorCode::Unauthenticated => ClientError::Unauthenticated(text),
            ErrorCode::InvalidInput => ClientError::InvalidInput(text),
            ErrorCode::UnknownRecipient => ClientError::NotFound(text),
            ErrorCode::Forbidden => ClientError::Forbidden(text),
            ErrorCode::RateLimited => ClientError::RateLimited(text),
            ErrorCode::Unavailable => ClientError::unavailable(text),
            ErrorCode::Internal => ClientError::Server(text),
            ErrorCode::MalformedFrame
            | ErrorCode::FrameTooLarge
            | ErrorCode::NotLoggedIn
            | ErrorCode::Undeliverable
            | ErrorCode::Unspecified => {
                ClientError::protocol(format!("{}: {text}", code.as_str_name()))
            }
        }
    }

    /// The error an `Error` frame's raw code stands for (an unknown code is a protocol error).
    pub(crate) fn from_raw_code(code: i32, text: String) -> Self {
        match ErrorCode::try_from(code) {
            Ok(code) => ClientError::from_code(code, text),
            Err(_) => ClientError::protocol(format!("unknown error code {code}: {text}")),
        }
    }

    /// The error of a failed HTTP exchange (no answer, or an undecodable one).
    pub(crate) fn from_reqwest(error: reqwest::Error, what: &str) -> Self {
        if error.is_timeout() {
            ClientError::Timeout(format!("{what}: the route did not answer in time"))
        } else if error.is_decode() {
            ClientError::Protocol {
                message: format!("{what}: the route's answer could not be decoded"),
                source: Some(Box::new(error)),
            }
        } else {
            ClientError::Unavailable {
                message: format!("{what}: the route could not be reached"),
                source: Some(Box::new(error)),
            }
        }
    }

    /// A socket failure while talking to a server.
    pub(crate) fn from_io(error: std::io::Error, what: String) -> Self {
        ClientError::Unavailable {
            message: what,
            source: Some(Box::new(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str) -> Option<ErrorBody> {
        Some(ErrorBody {
            code: code.into(),
            message: "because".into(),
        })
    }

    #[test]
    fn http_error_codes_map_to_kinds_the_caller_can_act_on() {
        assert!(matches!(
            ClientError::from_http(409, body("already_exists")),
            ClientError::AlreadyExists(m) if m == "because"
        ));
        assert!(matches!(
            ClientError::from_http(401, body("unauthenticated")),
            ClientError::Unauthenticated(_)
        ));
        assert!(matches!(
            ClientError::from_http(503, body("unavailable")),
            ClientError::Unavailable { .. }
        ));
        assert!(matches!(
            ClientError::from_http(404, body("not_found")),
            ClientError::NotFound(_)
        ));
    }

    #[test]
    fn without_a_known_code_the_http_status_decides() {
        assert!(matches!(
            ClientError::from_http(409, None),
            ClientError::Conflict(_)
        ));
        assert!(matches!(
            ClientError::from_http(400, body("something_new")),
            ClientError::InvalidInput(_)
        ));
        assert!(ClientError::from_http(503, None).is_retryable());
        assert!(!ClientError::from_http(500, None).is_retryable());
    }

    #[test]
    fn error_frames_map_to_kinds() {
        assert!(matches!(
            ClientError::from_raw_code(ErrorCode::UnknownRecipient as i32, "who?".into()),
            ClientError::NotFound(_)
        ));
        assert!(
            ClientError::from_raw_code(ErrorCode::RateLimited as i32, String::new()).is_retryable()
        );
        assert!(matches!(
            ClientError::from_raw_code(999, String::new()),
            ClientError::Protocol { .. }
        ));
    }
}
