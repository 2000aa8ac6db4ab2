//! [`PostgresConfig`]: the `postgres` backend's own keys, beside `backend = "postgres"` in
//! `[accounts]` or `[messages]`.

use std::time::Duration;

use cim_core::{Error, Result, SecretString};
use serde::Deserialize;

/// The `postgres` backend's keys. Every key but `url` has a default.
///
/// ```toml
/// [messages]
/// backend = "postgres"
/// url = "postgres://cim:secret@db.example:5432/cim"
/// pool_size = 10
/// connect_timeout = "5s"
/// statement_timeout = "10s"
/// ```
///
/// The data lives in a schema named after the section's namespace, so deployments (and test
/// runs) sharing a database never see each other's rows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Where the database is: `postgres://user:password@host:port/database`, with any libpq
    /// URL parameter (`sslmode`...). Never logged with its password.
    pub url: SecretString,
    /// Connections in this node's pool (for this section). Default 10.
    pub pool_size: u32,
    /// How long an operation waits for a connection (including opening one) before failing
    /// with `Unavailable`. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one SQL statement may run before the server cancels it and the operation
    /// fails with `Timeout`. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: SecretString::default(),
            pool_size: 10,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
        }
    }
}

impl PostgresConfig {
    /// The defaults with `url`.
    pub fn new(url: impl Into<SecretString>) -> Self {
        PostgresConfig {
            url: url.into(),
            ..PostgresConfig::default()
        }
    }

    /// Refuses what cannot work: no URL, an empty pool, a zero timeout.
    pub fn validate(&self) -> Result<()> {
        if self.url.expose().trim().is_empty() {
            return Err(Error::config(
                "the postgres backend needs `url` (postgres://user:password@host:port/database)",
            ));
        }
        if self.pool_size == 0 {
            return Err(Error::config("postgres `pool_size` must be at least 1"));
        }
        if self.connect_timeout.is_zero() || self.statement_timeout.is_zero() {
            return Err(Error::config(
                "postgres `connect_timeout` and `statement_timeout` must be above zero",
            ));
        }
        Ok(())
    }
}
