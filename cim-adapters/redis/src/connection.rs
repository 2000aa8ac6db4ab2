//! One [`Redis`] handle per store: a client for opening dedicated connections (pub/sub) and a
//! `ConnectionManager` for commands, which reconnects by itself after the server went away, so a
//! Redis restart never needs a cim restart. Every redis error becomes a [`cim_core::Error`] here,
//! at the edge, with the operation named and the URL's password never shown.

use std::time::Duration;

use cim_core::{Error, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::RedisConfig;

/// A connected Redis: the commands connection and the client behind it.
#[derive(Clone)]
pub(crate) struct Redis {
    client: redis::Client,
    manager: ConnectionManager,
    config: RedisConfig,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.config.url)
            .finish()
    }
}

impl Redis {
    /// Connects to `config.url`; fails with `Config` for a malformed URL and `Unavailable` when
    /// Redis cannot be reached.
    pub(crate) async fn connect(config: &RedisConfig) -> Result<Redis> {
        let client = redis::Client::open(config.url.expose()).map_err(|e| {
            Error::config(format!(
                "redis url {} is not valid: write redis://[user[:password]@]host[:port][/db]",
                config.url
            ))
            .with_source(e)
        })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_with_config(client.clone(), manager_config)
            .await
            .map_err(|e| convert(e, "connect").with_context("url", &config.url))?;
        Ok(Redis {
            client,
            manager,
            config: config.clone(),
        })
    }

    /// The commands connection (a cheap clone sharing one multiplexed connection).
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// The client, for dedicated connections such as pub/sub.
    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The configuration this handle was opened with.
    pub(crate) fn config(&self) -> &RedisConfig {
        &self.config
    }
}

/// Converts a redis error from `operation` into a cim error of the matching kind.
pub(crate) fn convert(error: redis::RedisError, operation: &'static str) -> Error {
    let base = if error.is_timeout() {
        Error::timeout("redis did not answer in time (see response_timeout)")
    } else if error.is_io_error()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_unrecoverable_error()
    {
        Error::unavailable("cannot reach redis; check that it runs and that url is right")
    } else {
        Error::internal("redis rejected a command")
    };
    base.with_context("backend", "redis")
        .with_context("operation", operation)
        .with_source(error)
}

/// Zero-padded decimal, so that lexical order in Redis is numeric order for every `u64`.
pub(crate) fn padded(id: u64) -> String {
    format!("{id:020}")
}

/// A duration in whole milliseconds for `PX`, at least 1.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
