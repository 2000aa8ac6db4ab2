//! [`Auth`]: the bearer token every endpoint but account creation, login and health requires.
//!
//! Tokens are the JWTs the route issues at login, signed with the deployment's shared secret, so
//! checking one needs no backend call: any route (or server) verifies it on its own. A handler
//! that takes `Auth` cannot run for a caller without a valid token; the claims it carries are
//! who the caller is, and nothing in the request body can say otherwise.

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
        if claims.user_name.starts_with(PEER_NAME_PREFIX) {
            // Servers and routes sign tokens for their internal links with the same secret;
            // such a token names no user and opens nothing here.
            return Err(ApiError::unauthenticated(
                "this token belongs to an internal link, not to a user; log in as a user",
            ));
        }
        Ok(Auth(claims))
    }
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
    fn bearer_tokens_are_taken_from_the_header_value() {
        assert_eq!(bearer_token("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("abc"), None);
    }
}
