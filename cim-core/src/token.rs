//! Login tokens: what the route issues at login and every server and route endpoint checks.
//!
//! A token is a JWT signed with HMAC-SHA256 under a secret shared by every route and server of a
//! deployment (`[auth] secret`; `cim standalone` generates one and keeps it in its data
//! directory). It names the user and expires; nothing else is trusted from the client. Unlike
//! the original cim, where any TCP login frame naming a user id was believed, a connection
//! proves who it is.

use std::fmt;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::{Error, Result, Timestamp, UserId};

/// The shortest secret accepted, in bytes: HMAC-SHA256 wants at least its output size.
pub const MIN_SECRET_LEN: usize = 32;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user the token was issued to.
    pub user_id: UserId,
    /// The user's name at login.
    pub user_name: String,
    /// When the token stops being valid.
    pub expires_at: Timestamp,
}

/// The JWT payload (registered claim names, seconds since the epoch).
#[derive(Debug, Serialize, Deserialize)]
struct JwtClaims {
    sub: String,
    name: String,
    exp: u64,
    iat: u64,
}

/// Issues and verifies tokens with one shared secret.
#[derive(Clone)]
pub struct TokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl TokenKey {
    /// A key from `secret`, which must be at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: &[u8]) -> Result<Self> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(Error::config(format!(
                "the token secret is {} bytes; use at least {MIN_SECRET_LEN} random bytes",
                secret.len()
            )));
        }
        Ok(TokenKey {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        })
    }

    /// A fresh random secret of 32 bytes, hex-encoded (what `cim standalone` stores).
    pub fn generate_secret() -> String {
        let mut bytes = [0u8; MIN_SECRET_LEN];
        rand::rng().fill_bytes(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A token for `user_id` / `user_name`, valid for `ttl` from now (whole seconds), and
    /// when it expires.
    pub fn issue(
        &self,
        user_id: UserId,
        user_name: &str,
        ttl: Duration,
    ) -> Result<(String, Timestamp)> {
        self.issue_until(user_id, user_name, Timestamp::now().plus(ttl))
    }

    /// A token that expires at `expires_at` (rounded down to the second).
    fn issue_until(
        &self,
        user_id: UserId,
        user_name: &str,
        expires_at: Timestamp,
    ) -> Result<(String, Timestamp)> {
        let claims = JwtClaims {
            sub: user_id.to_string(),
            name: user_name.to_string(),
            exp: seconds(expires_at),
            iat: seconds(Timestamp::now()),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::internal("cannot sign a token").with_source(e))?;
        Ok((token, from_seconds(claims.exp)))
    }

    /// The claims of `token`, or [`Unauthenticated`](crate::ErrorKind::Unauthenticated) if it is
    /// malformed, signed with another secret, or expired.
    pub fn verify(&self, token: &str) -> Result<Claims> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data =
            jsonwebtoken::decode::<JwtClaims>(token, &self.decoding, &validation).map_err(|e| {
                let why = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                        "the token has expired; log in again"
                    }
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                        "the token's signature is invalid"
                    }
                    _ => "the token is malformed",
                };
                Error::unauthenticated(why).with_source(e)
            })?;
        let user_id = data
            .claims
            .sub
            .parse::<UserId>()
            .map_err(|_| Error::unauthenticated("the token names no valid user id"))?;
        Ok(Claims {
            user_id,
            user_name: data.claims.name,
            expires_at: from_seconds(data.claims.exp),
        })
    }
}

fn seconds(at: Timestamp) -> u64 {
    u64::try_from(at.as_millis() / 1000).unwrap_or(0)
}

fn from_seconds(seconds: u64) -> Timestamp {
    Timestamp(
        i64::try_from(seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000),
    )
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<secret>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn key(byte: u8) -> TokenKey {
        TokenKey::new(&[byte; 32]).expect("32 bytes is enough")
    }

    #[test]
    fn issued_tokens_verify_with_the_same_secret_only() {
        let (token, expires_at) = key(1)
            .issue(UserId(42), "alice", Duration::from_secs(60))
            .expect("issue");
        let claims = key(1).verify(&token).expect("valid");
        assert_eq!(claims.user_id, UserId(42));
        assert_eq!(claims.user_name, "alice");
        assert_eq!(claims.expires_at, expires_at);
        let err = key(2).verify(&token).expect_err("other secret");
        assert_eq!(err.kind(), ErrorKind::Unauthenticated);
    }

    #[test]
    fn expired_and_malformed_tokens_are_unauthenticated() {
        let expired_at = Timestamp::now().minus(Duration::from_secs(10));
        let (token, _) = key(1)
            .issue_until(UserId(1), "a", expired_at)
            .expect("issue");
        let err = key(1).verify(&token).expect_err("expired");
        assert_eq!(err.kind(), ErrorKind::Unauthenticated);
        assert!(err.message().contains("expired"), "{err}");
        for bad in ["", "abc", "a.b.c"] {
            assert_eq!(
                key(1).verify(bad).expect_err(bad).kind(),
                ErrorKind::Unauthenticated
            );
        }
    }

    #[test]
    fn short_secrets_are_refused_and_generated_ones_suffice() {
        assert_eq!(
            TokenKey::new(b"short").expect_err("short").kind(),
            ErrorKind::Config
        );
        let secret = TokenKey::generate_secret();
        assert_eq!(secret.len(), 64);
        assert!(TokenKey::new(secret.as_bytes()).is_ok());
    }
}
