//! [`Auth`]: the bearer token every endpoint but account creation, login and health requires;
//! [`Admin`]: the admin credential of the admin API.
//!
//! Tokens are the JWTs the route issues at login, signed with the deployment's shared secret, so
//! any route (or server) verifies one on its own; one look-up in the AccountStore tells whether
//! its login was revoked (logged out) since. A handler that takes `Auth` cannot run for a caller
//! without a valid token; the claims it carries are who the caller is, and nothing in the
//! request body can say otherwise.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use cim_core::token::Claims;
use cim_pipeline::peer::PEER_NAME_PREFIX;

use crate::error::ApiError;
use crate::state::SharedState;

/// The authenticated caller: the claims of a valid `Authorization: Bearer <token>`.
#[derive(Debug, Clone)]
pub(crate) struct Auth(pub(crate) Claims);

impl FromRequestParts<SharedState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthenticated(
                "this endpoint needs `Authorization: Bearer <token>`; get a token from POST /api/v1/login",
            )
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(bearer_token)
            .ok_or_else(|| {
                ApiError::unauthenticated(
                    "the Authorization header must be `Bearer <token>`, with the token from POST /api/v1/login",
                )
            })?;
        let claims = state.key.verify(token)?;
        check_login(state, &claims).await?;
        Ok(Auth(claims))
    }
}

/// Fails unless `claims`, of a token this deployment signed, are a user's login that is still
/// on: not an internal link's, not revoked (logged out).
pub(crate) async fn check_login(state: &SharedState, claims: &Claims) -> Result<(), ApiError> {
    if claims.user_name.starts_with(PEER_NAME_PREFIX) {
        // Servers and routes sign tokens for their internal links with the same secret;
        // such a token names no user and opens nothing here.
        return Err(ApiError::unauthenticated(
            "this token belongs to an internal link, not to a user; log in as a user",
        ));
    }
    if state
        .stores
        .accounts
        .is_session_revoked(&claims.session_id)
        .await?
    {
        return Err(ApiError::unauthenticated(
            "this login was ended (logged out); log in again",
        ));
    }
    Ok(())
}

/// The caller presented the admin credential (`[route] admin_token`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admin;

impl Admin {
    /// Whether `parts` carry the admin credential; `Unauthenticated` when they carry another
    /// bearer token is the caller's problem, so this only answers yes or no.
    pub(crate) fn presented(parts: &Parts, state: &SharedState) -> bool {
        let Some(expected) = &state.config.admin_token else {
            return false;
        };
        parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token)
            .is_some_and(|token| constant_time_eq(token.as_bytes(), expected.expose().as_bytes()))
    }
}

impl FromRequestParts<SharedState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        if state.config.admin_token.is_none() {
            return Err(cim_core::Error::permission_denied(
                "the admin API is off: set [route] admin_token to use it",
            )
            .into());
        }
        if Admin::presented(parts, state) {
            Ok(Admin)
        } else {
            Err(ApiError::unauthenticated(
                "this endpoint needs `Authorization: Bearer <admin token>` ([route] admin_token)",
            ))
        }
    }
}

/// Whether the caller presented the admin credential: an extractor that never refuses, for
/// endpoints open to everyone that the admin may use with more rights (sign-up).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdminPresented(pub(crate) bool);

impl FromRequestParts<SharedState> for AdminPresented {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        Ok(AdminPresented(Admin::presented(parts, state)))
    }
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The token of a `Bearer <token>` header value (the scheme is case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_credential_is_compared_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
    }

    #[test]
    fn bearer_tokens_are_taken_from_the_header_value() {
        assert_eq!(bearer_token("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("abc"), None);
    }
}
