//! [`RedisConfig`]: the backend keys of a `backend = "redis"` section. Every store of this crate
//! takes the same keys, so one Redis can serve `[meta]` and `[sessions]` with the same lines.

use std::time::Duration;

use cim_core::SecretString;
use serde::Deserialize;

/// The keys of `[meta]` / `[sessions]` with `backend = "redis"`.
///
/// ```toml
/// [sessions]
/// backend = "redis"
/// url = "redis://:password@10.0.0.7:6379/0"
/// connect_timeout = "5s"
/// response_timeout = "2s"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Where Redis listens: `redis://[user[:password]@]host[:port][/db]` (`rediss://` for TLS is
    /// not compiled in). It may carry a password, so it is never logged: `Debug` shows
    /// `redis://user:***@host`.
    pub url: SecretString,
    /// How long to wait for a connection (and for each reconnect attempt) before the operation
    /// fails with `Unavailable`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long to wait for Redis to answer one command before it fails with `Timeout`.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: SecretString::new("redis://127.0.0.1:6379"),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
        }
    }
}

impl RedisConfig {
    /// The defaults with `url`.
    pub fn new(url: impl Into<SecretString>) -> Self {
        RedisConfig {
            url: url.into(),
            ..RedisConfig::default()
        }
    }
}
