//! The keys of the `tiny` backend, as they appear in the `[sessions]` section.
//!
//! cim-core parses the common keys (`backend`, `namespace`, `ttl`) itself and hands the adapter
//! everything else raw. Declaring the adapter's own keys as a typed struct with
//! `deny_unknown_fields` turns a misspelt key into a startup error that names it, instead of a
//! setting that is silently ignored.

use serde::Deserialize;

/// The `tiny` backend's own keys.
///
/// ```toml
/// [sessions]
/// backend = "tiny"
/// ttl = "30s"            # common key: how long sessions outlive their server's last refresh
/// max_sessions = 10000   # tiny's own key
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TinyConfig {
    /// The most sessions the store holds at once (at least 1). The store lives in the process's
    /// memory, so this bounds what a flood of logins can cost. A bind that would exceed it fails
    /// with [`Unavailable`](cim_core::ErrorKind::Unavailable): the same bind succeeds once other
    /// users log out or their server's sessions expire, so retrying later may help.
    pub max_sessions: usize,
}

impl TinyConfig {
    /// The default for [`TinyConfig::max_sessions`].
    pub const DEFAULT_MAX_SESSIONS: usize = 100_000;
}

impl Default for TinyConfig {
    fn default() -> Self {
        TinyConfig {
            max_sessions: Self::DEFAULT_MAX_SESSIONS,
        }
    }
}
