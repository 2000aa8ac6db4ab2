//! [`ZooKeeperConfig`]: the backend keys of a `backend = "zookeeper"` section. Both stores of this
//! crate take the same keys, so one ZooKeeper ensemble serves `[meta]` and `[sessions]` with the
//! same lines. The session timeout is not a key: it is the section's `ttl`, because a ZooKeeper
//! session is exactly what keeps a registration or a server's sessions alive.

use std::time::Duration;

use cim_core::SecretString;
use serde::Deserialize;

/// The keys of `[meta]` / `[sessions]` with `backend = "zookeeper"`.
///
/// ```toml
/// [meta]
/// backend = "zookeeper"
/// ttl = "10s"                              # the ZooKeeper session timeout
/// connect = "10.0.0.7:2181,10.0.0.8:2181"
/// root = "/cim"
/// connect_timeout = "5s"
/// request_timeout = "5s"
/// digest = "cim:secret"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZooKeeperConfig {
    /// The ensemble: `host:port[,host:port...][/chroot]`, as for ZooKeeper's own clients.
    pub connect: String,
    /// The node everything of cim lives under; each deployment (namespace) gets
    /// `{root}/{namespace}`. Absolute, without a trailing `/`; created if missing.
    pub root: String,
    /// How long to wait for a ZooKeeper session to be established (at start, and whenever an
    /// expired session is replaced) before the operation fails with `Unavailable`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one operation may take: waiting for a lost connection to come back (then it
    /// fails with `Unavailable`, nothing was sent) plus the request itself (then it fails with
    /// `Timeout`, its effect unknown).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// `user:password` for ZooKeeper's `digest` authentication. When set, every node under
    /// `{root}/{namespace}` is created with the `creator_all` ACL, so only sessions with the same
    /// credentials can read or change this deployment's data. Never logged.
    pub digest: Option<SecretString>,
}

impl Default for ZooKeeperConfig {
    fn default() -> Self {
        ZooKeeperConfig {
            connect: "127.0.0.1:2181".to_string(),
            root: "/cim".to_string(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            digest: None,
        }
    }
}

impl ZooKeeperConfig {
    /// The defaults with `connect`.
    pub fn new(connect: impl Into<String>) -> Self {
        ZooKeeperConfig {
            connect: connect.into(),
            ..ZooKeeperConfig::default()
        }
    }
}
