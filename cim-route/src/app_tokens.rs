//! [`AppTokens`]: tokens an application mints for its own users, which the route exchanges for
//! a cim login (`POST /api/v1/login/token`) without any cim password.
//!
//! This is the push-middleware way of running cim: the application authenticates its users
//! itself and signs a JWT saying who they are; cim trusts the signature, not a password. The
//! keys come from `[route.app_tokens]`: an HS256 secret shared with the application, public key
//! files (PEM, RSA for RS256/PS256, EC for ES256/ES384, Ed25519 for EdDSA), and a JWKS file
//! (the keys an identity provider publishes, picked by the token's `kid`). Any of them may be
//! set, together with the password logins or instead of them.
//!
//! # Claims
//!
//! | claim | | meaning |
//! |---|---|---|
//! | `sub` | required | the user's name in cim (the `[names]` rules apply); the account is created, without a password, on its first login |
//! | `exp` | required | expiry (seconds since the epoch); a token without one is refused |
//! | `name` | optional | a display name: read and ignored (cim keeps one name per user, the subject) |
//! | `groups` | optional | names of groups the user is added to at login if not a member already (at most [`MAX_GROUPS`]); unknown groups are skipped |
//! | `iss`, `aud` | when configured | must be `[route.app_tokens] issuer` / `audience` |
//! | `nbf` | optional | not before |
//!
//! An application token logs in only an account that has no password: one such a token created.
//! A password account of the same name (someone signed up with it) is refused with `409`, so
//! that signing up under a name the application's users will have cannot take their messages.

use std::path::Path;
use std::time::Duration;

use cim_core::{Error, Result, SecretString};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

/// The most groups one token may name.
pub const MAX_GROUPS: usize = 100;

/// The `[route.app_tokens]` section: the keys the application signs its users' tokens with.
/// Nothing set (the default): application tokens are off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppTokenConfig {
    /// A secret shared with the application, for HS256/HS384/HS512 tokens: at least 32 bytes
    /// (prefer `CIM_ROUTE__APP_TOKENS__HS256_SECRET` to writing it in a file). It must not be
    /// `[auth] secret`, which signs cim's own tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hs256_secret: Option<SecretString>,
    /// Files holding one public key each, in PEM: RSA (RS256, PS256...), EC (ES256, ES384) or
    /// Ed25519 (EdDSA).
    pub public_keys: Vec<String>,
    /// A JWKS file (`{"keys": [...]}`), as an identity provider publishes it; a token's `kid`
    /// picks its key. Read at start-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// The `iss` every token must carry. Unset: not checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The `aud` every token must carry. Unset: not checked, and a token with an `aud` is still
    /// accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// How far the application's clock may be from the route's, for `exp` and `nbf` (whole
    /// seconds). Written like `30s` (the default).
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl Default for AppTokenConfig {
    fn default() -> Self {
        AppTokenConfig {
            hs256_secret: None,
            public_keys: Vec::new(),
            jwks: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
        }
    }
}

impl AppTokenConfig {
    /// Whether any key is configured, that is, whether application tokens are on.
    pub fn enabled(&self) -> bool {
        self.hs256_secret.is_some() || !self.public_keys.is_empty() || self.jwks.is_some()
    }
}

/// What a valid application token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppClaims {
    /// The user's name (`sub`).
    pub(crate) subject: String,
    /// Groups to be a member of (`groups`).
    pub(crate) groups: Vec<String>,
}

/// The payload read from an application token.
#[derive(Debug, Deserialize)]
struct Payload {
    sub: String,
    #[serde(default)]
    groups: Vec<String>,
}

/// One key an application token may be signed with.
struct Key {
    decoding: DecodingKey,
    /// The algorithms this key verifies.
    algorithms: Vec<Algorithm>,
    /// The JWKS `kid`, if the key came with one.
    id: Option<String>,
}

/// The keys of `[route.app_tokens]`, loaded.
pub(crate) struct AppTokens {
    keys: Vec<Key>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
}

impl AppTokens {
    /// Loads the keys `config` names; `Config` errors name the key or file at fault. `None`
    /// when application tokens are off.
    pub(crate) fn load(config: &AppTokenConfig) -> Result<Option<Self>> {
        if !config.enabled() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        if let Some(secret) = &config.hs256_secret {
            if secret.expose().len() < cim_core::token::MIN_SECRET_LEN {
                return Err(Error::config(format!(
                    "[route.app_tokens] hs256_secret is {} bytes; use at least {} random bytes",
                    secret.expose().len(),
                    cim_core::token::MIN_SECRET_LEN
                )));
            }
            keys.push(Key {
                decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
                algorithms: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
                id: None,
            });
        }
        for path in &config.public_keys {
            keys.push(pem_key(Path::new(path))?);
        }
        if let Some(path) = &config.jwks {
            keys.extend(jwks_keys(Path::new(path))?);
        }
        Ok(Some(AppTokens {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway,
        }))
    }

    /// The claims of `token`, or `Unauthenticated`: signed by none of the keys, expired, not
    /// yet valid, for another issuer or audience, or without a subject.
    pub(crate) fn verify(&self, token: &str) -> Result<AppClaims> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Error::unauthenticated("the token is malformed").with_source(e))?;
        let candidates = self.keys.iter().filter(|key| {
            key.algorithms.contains(&header.alg)
                && match (&header.kid, &key.id) {
                    (Some(wanted), Some(id)) => wanted == id,
                    _ => true,
                }
        });
        let mut refusal = None;
        for key in candidates {
            match jsonwebtoken::decode::<Payload>(token, &key.decoding, &self.validation(key)) {
                Ok(data) => return self.claims(data.claims),
                Err(e) => {
                    let signature_failed = matches!(
                        e.kind(),
                        jsonwebtoken::errors::ErrorKind::InvalidSignature
                            | jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey
                            | jsonwebtoken::errors::ErrorKind::InvalidRsaKey(_)
                            | jsonwebtoken::errors::ErrorKind::InvalidKeyFormat
                    );
                    if !signature_failed {
                        // The signature held (jsonwebtoken checks it first): this key is the
                        // token's, and what failed is the token itself.
                        return Err(refused(e));
                    }
                    refusal = Some(e);
                }
            }
        }
        Err(match refusal {
            Some(e) => Error::unauthenticated(
                "the token's signature matches none of the application keys \
                 ([route.app_tokens])",
            )
            .with_source(e),
            None => Error::unauthenticated(format!(
                "no application key ([route.app_tokens]) verifies {:?} tokens{}",
                header.alg,
                header
                    .kid
                    .map(|kid| format!(" with kid {kid:?}"))
                    .unwrap_or_default()
            )),
        })
    }

    fn validation(&self, key: &Key) -> Validation {
        let mut validation = Validation::new(key.algorithms[0]);
        validation.algorithms = key.algorithms.clone();
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        validation
    }

    fn claims(&self, payload: Payload) -> Result<AppClaims> {
        if payload.groups.len() > MAX_GROUPS {
            return Err(Error::unauthenticated(format!(
                "the token names {} groups; at most {MAX_GROUPS} are taken",
                payload.groups.len()
            )));
        }
        Ok(AppClaims {
            subject: payload.sub,
            groups: payload.groups,
        })
    }
}

impl std::fmt::Debug for AppTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppTokens")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// Why a token whose signature held is refused.
fn refused(e: jsonwebtoken::errors::Error) -> Error {
    use jsonwebtoken::errors::ErrorKind as Kind;
    let why = match e.kind() {
        Kind::ExpiredSignature => "the token has expired; get a new one from the application",
        Kind::ImmatureSignature => "the token is not valid yet (nbf)",
        Kind::InvalidIssuer => "the token is for another issuer ([route.app_tokens] issuer)",
        Kind::InvalidAudience => "the token is for another audience ([route.app_tokens] audience)",
        Kind::MissingRequiredClaim(_) => "the token lacks `sub` or `exp`",
        _ => "the token's claims are malformed (`sub` must be a string, `groups` a list of names)",
    };
    Error::unauthenticated(why).with_source(e)
}

/// The public key in the PEM file at `path`.
fn pem_key(path: &Path) -> Result<Key> {
    let pem = std::fs::read(path).map_err(|e| {
        Error::config(format!(
            "[route.app_tokens] public_keys: cannot read {}",
            path.display()
        ))
        .with_source(e)
    })?;
    let decoding = DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .map_err(|e| {
            Error::config(format!(
                "[route.app_tokens] public_keys: {} holds no RSA, EC or Ed25519 public key in PEM",
                path.display()
            ))
            .with_source(e)
        })?;
    Ok(Key {
        algorithms: decoding.family().algorithms().to_vec(),
        decoding,
        id: None,
    })
}

/// The keys of the JWKS file at `path`.
fn jwks_keys(path: &Path) -> Result<Vec<Key>> {
    let invalid = |why: String| Error::config(format!("[route.app_tokens] jwks: {why}"));
    let text = std::fs::read(path)
        .map_err(|e| invalid(format!("cannot read {}", path.display())).with_source(e))?;
    let set: JwkSet = serde_json::from_slice(&text)
        .map_err(|e| invalid(format!("{} is not a JWKS", path.display())).with_source(e))?;
    if set.keys.is_empty() {
        return Err(invalid(format!("{} holds no key", path.display())));
    }
    set.keys
        .iter()
        .map(|jwk| {
            let decoding = DecodingKey::from_jwk(jwk).map_err(|e| {
                invalid(format!(
                    "a key of {} ({:?}) cannot be used",
                    path.display(),
                    jwk.common.key_id
                ))
                .with_source(e)
            })?;
            let algorithms = match jwk.common.key_algorithm {
                Some(alg) => vec![Algorithm::try_from(alg).map_err(|e| {
                    invalid(format!(
                        "key {:?} has an unsupported alg",
                        jwk.common.key_id
                    ))
                    .with_source(e)
                })?],
                None => decoding.family().algorithms().to_vec(),
            };
            Ok(Key {
                decoding,
                algorithms,
                id: jwk.common.key_id.clone(),
            })
        })
        .collect()
}
