//! [`RedisConfig`]: the backend keys of a `backend = "redis"` section. Every store of this crate
//! takes the same keys, so one Redis can serve `[meta]` and `[sessions]` with the same lines.

use std::time::Duration;

use cim_core::SecretString;
use serde::Deserialize;

/// `url` when none is set.
const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// The keys of `[meta]` / `[sessions]` with `backend = "redis"`.
///
/// ```toml
/// [sessions]
/// backend = "redis"
/// url = "redis://:password@10.0.0.7:6379/0"
/// connect_timeout = "5s"
/// response_timeout = "2s"
/// ```
///
/// On Redis Cluster, name some of its nodes instead of `url` (any primaries or replicas: the
/// client learns the rest from them):
///
/// ```toml
/// [messages]
/// backend = "redis"
/// cluster_nodes = ["redis://10.0.0.7:7000", "redis://10.0.0.8:7000", "redis://10.0.0.9:7000"]
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Where Redis listens: `redis://[user[:password]@]host[:port][/db]` (`rediss://` for TLS is
    /// not compiled in). It may carry a password, so it is never logged: `Debug` shows
    /// `redis://user:***@host`.
    pub url: SecretString,
    /// Nodes of a Redis Cluster to start from (`redis://[user[:password]@]host:port` each), in
    /// place of `url`. Empty (the default) means a single Redis at `url`. On a cluster every key
    /// of one store carries the same hash tag (`{namespace:store}:...`), so each store's scripts
    /// stay in one slot; see the crate's documentation for what that means for capacity.
    pub cluster_nodes: Vec<SecretString>,
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
            url: SecretString::new(DEFAULT_URL),
            cluster_nodes: Vec::new(),
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

    /// The defaults for the Redis Cluster that `nodes` belong to.
    pub fn cluster<S: Into<SecretString>>(nodes: impl IntoIterator<Item = S>) -> Self {
        RedisConfig {
            cluster_nodes: nodes.into_iter().map(Into::into).collect(),
            ..RedisConfig::default()
        }
    }

    /// Whether this names a Redis Cluster (`cluster_nodes` is set).
    pub fn is_cluster(&self) -> bool {
        !self.cluster_nodes.is_empty()
    }

    /// Whether `url` was changed from its default (a config that sets both `url` and
    /// `cluster_nodes` is refused as ambiguous).
    pub(crate) fn url_is_set(&self) -> bool {
        self.url.expose() != DEFAULT_URL
    }
}
