//! Login tokens: what the route issues at login and every server and route endpoint checks.
//!
//! A token is a JWT signed with HMAC-SHA256 under a secret shared by every route and server of a
//! deployment (`[auth] secret`; `cim standalone` generates one and keeps it in its data
//! directory). It names the user and expires; nothing else is trusted from the client. Unlike
//! the original cim, where any TCP login frame naming a user id was believed, a connection
//! proves who it is.
//!
//! Every token also names its login: a random *session id*, new at each login and kept by the
//! tokens [refreshed](TokenKey::refresh) from it. Logging out revokes the session id (in the
//! [`AccountStore`](crate::AccountStore)), which ends every token of that login at once, on
//! every node, before they expire. A second kind of token, an [invitation](TokenKey::invite),
//! lets a deployment that closes sign-ups hand out the right to create one account; it opens
//! nothing else.

use std::fmt;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::{Error, Result, Timestamp, UserId};

/// The shortest secret accepted, in bytes: HMAC-SHA256 wants at least its output size.
pub const MIN_SECRET_LEN: usize = 32;

/// What a valid login token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user the token was issued to.
    pub user_id: UserId,
    /// The user's name at login.
    pub user_name: String,
    /// When the token stops being valid.
    pub expires_at: Timestamp,
    /// The login this token belongs to: shared by the tokens refreshed from it, what logging
    /// out revokes.
    pub session_id: String,
}

/// What a valid invitation says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// The only name the invited account may take, when the invitation names one.
    pub name: Option<String>,
    /// When the invitation stops being valid.
    pub expires_at: Timestamp,
}

/// The `pur` claim of an invitation; login tokens have none.
const INVITATION: &str = "invite";

/// The JWT payload (registered claim names, seconds since the epoch).
#[derive(Debug, Serialize, Deserialize)]
struct JwtClaims {
    sub: String,
    name: String,
    exp: u64,
    iat: u64,
    /// The session id.
    sid: String,
    /// What the token is for, if not a login: `invite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pur: Option<String>,
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

    /// A token for a new login of `user_id` / `user_name`, valid for `ttl` from now (whole
    /// seconds), and when it expires.
    pub fn issue(
        &self,
        user_id: UserId,
        user_name: &str,
        ttl: Duration,
    ) -> Result<(String, Timestamp)> {
        let session = random_id();
        self.sign(
            user_id,
            user_name,
            &session,
            None,
            Timestamp::now().plus(ttl),
        )
    }

    /// A new token for the login of `claims` (same user, same session id), valid for `ttl` from
    /// now: what a client swaps its token for before it expires.
    pub fn refresh(&self, claims: &Claims, ttl: Duration) -> Result<(String, Timestamp)> {
        self.sign(
            claims.user_id,
            &claims.user_name,
            &claims.session_id,
            None,
            Timestamp::now().plus(ttl),
        )
    }

    /// An invitation to create one account (named `name`, if given), valid for `ttl`.
    pub fn invite(&self, name: Option<&str>, ttl: Duration) -> Result<(String, Timestamp)> {
        self.sign(
            UserId(0),
            name.unwrap_or_default(),
            &random_id(),
            Some(INVITATION),
            Timestamp::now().plus(ttl),
        )
    }

    /// The invitation `token` is, or `Unauthenticated` if it is none (a login token included),
    /// malformed, signed with another secret, or expired.
    pub fn verify_invitation(&self, token: &str) -> Result<Invitation> {
        let claims = self.decode(token)?;
        if claims.pur.as_deref() != Some(INVITATION) {
            return Err(Error::unauthenticated("this is not an invitation"));
        }
        Ok(Invitation {
            name: Some(claims.name).filter(|name| !name.is_empty()),
            expires_at: from_seconds(claims.exp),
        })
    }

    /// A token that expires at `expires_at` (rounded down to the second).
    fn sign(
        &self,
        user_id: UserId,
        user_name: &str,
        session_id: &str,
        purpose: Option<&str>,
        expires_at: Timestamp,
    ) -> Result<(String, Timestamp)> {
        let claims = JwtClaims {
            sub: user_id.to_string(),
            name: user_name.to_string(),
            exp: seconds(expires_at),
            iat: seconds(Timestamp::now()),
            sid: session_id.to_string(),
            pur: purpose.map(str::to_string),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::internal("cannot sign a token").with_source(e))?;
        Ok((token, from_seconds(claims.exp)))
    }

    /// The claims of login `token`, or [`Unauthenticated`](crate::ErrorKind::Unauthenticated)
    /// if it is malformed, signed with another secret, expired, or not a login token (an
    /// invitation). Whether its login was revoked is the AccountStore's to say
    /// ([`is_session_revoked`](crate::AccountStore::is_session_revoked)).
    pub fn verify(&self, token: &str) -> Result<Claims> {
        let claims = self.decode(token)?;
        if claims.pur.is_some() {
            return Err(Error::unauthenticated(
                "this token is not a login token; log in through the route",
            ));
        }
        let user_id = claims
            .sub
            .parse::<UserId>()
            .map_err(|_| Error::unauthenticated("the token names no valid user id"))?;
        Ok(Claims {
            user_id,
            user_name: claims.name,
            expires_at: from_seconds(claims.exp),
            session_id: claims.sid,
        })
    }

    /// Like [`verify`](Self::verify), but `Ok(None)` for a token this key did not sign (another
    /// signature or algorithm): for an endpoint that also takes tokens signed by someone else
    /// (an application's). A token this key signed that is expired or not a login token is
    /// still `Unauthenticated`.
    pub fn verify_own(&self, token: &str) -> Result<Option<Claims>> {
        match self.verify(token) {
            Ok(claims) => Ok(Some(claims)),
            Err(e) if std::error::Error::source(&e).is_some_and(not_signed_here) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The payload of a token signed with this key and not expired.
    fn decode(&self, token: &str) -> Result<JwtClaims> {
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
        Ok(data.claims)
    }
}

/// Whether `error` says that a token was not signed with the key it was checked against.
fn not_signed_here(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<jsonwebtoken::errors::Error>()
        .is_some_and(|e| {
            matches!(
                e.kind(),
                jsonwebtoken::errors::ErrorKind::InvalidSignature
                    | jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
            )
        })
}

/// A random 128-bit id, hex-encoded (32 characters).
fn random_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
            .sign(UserId(1), "a", "s", None, expired_at)
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
    fn a_refreshed_token_keeps_the_login_and_a_new_login_gets_another() {
        let (first, _) = key(1)
            .issue(UserId(7), "bob", Duration::from_secs(60))
            .expect("issue");
        let claims = key(1).verify(&first).expect("valid");
        assert_eq!(claims.session_id.len(), 32);
        let (refreshed, expires_at) = key(1)
            .refresh(&claims, Duration::from_secs(3600))
            .expect("refresh");
        let again = key(1).verify(&refreshed).expect("valid");
        assert_eq!(again.session_id, claims.session_id, "same login");
        assert_eq!((again.user_id, again.expires_at), (UserId(7), expires_at));
        let (other, _) = key(1)
            .issue(UserId(7), "bob", Duration::from_secs(60))
            .expect("issue");
        let other = key(1).verify(&other).expect("valid");
        assert_ne!(other.session_id, claims.session_id, "a new login");
    }

    #[test]
    fn invitations_and_login_tokens_are_never_taken_for_one_another() {
        let (invite, _) = key(1)
            .invite(Some("carol"), Duration::from_secs(60))
            .expect("invite");
        let invitation = key(1).verify_invitation(&invite).expect("an invitation");
        assert_eq!(invitation.name.as_deref(), Some("carol"));
        assert_eq!(
            key(1).verify(&invite).expect_err("no login").kind(),
            ErrorKind::Unauthenticated
        );
        let (login, _) = key(1)
            .issue(UserId(1), "a", Duration::from_secs(60))
            .expect("issue");
        assert!(key(1).verify_invitation(&login).is_err(), "no invitation");
        let (open, _) = key(1)
            .invite(None, Duration::from_secs(60))
            .expect("invite");
        assert_eq!(key(1).verify_invitation(&open).expect("valid").name, None);
    }

    #[test]
    fn only_tokens_of_another_key_are_not_our_own() {
        let (token, _) = key(1)
            .issue(UserId(3), "c", Duration::from_secs(60))
            .expect("issue");
        assert_eq!(
            key(1).verify_own(&token).expect("ours").map(|c| c.user_id),
            Some(UserId(3))
        );
        assert_eq!(key(2).verify_own(&token).expect("another key's"), None);
        let expired = key(1)
            .sign(
                UserId(1),
                "a",
                "s",
                None,
                Timestamp::now().minus(Duration::from_secs(10)),
            )
            .expect("sign")
            .0;
        assert!(key(1).verify_own(&expired).is_err(), "ours, but expired");
        assert!(key(1).verify_own("abc").is_err(), "malformed is nobody's");
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
