//! [`ConsulConfig`]: the backend keys of a `backend = "consul"` section. Both stores of this
//! crate take the same keys, so one agent serves `[meta]` and `[sessions]` with the same lines.

use std::time::Duration;

use cim_core::{Error, Result, SecretString};
use serde::Deserialize;

/// The keys of `[meta]` / `[sessions]` with `backend = "consul"`.
///
/// ```toml
/// [meta]
/// backend = "consul"
/// address = "http://127.0.0.1:8500"
/// token = "b1gs33cr3t"          # optional ACL token, never logged
/// prefix = "cim"
/// datacenter = "eu-west-1"      # optional: the agent's own by default
/// request_timeout = "5s"
/// connect_timeout = "5s"
/// wait = "30s"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsulConfig {
    /// The HTTP address of a Consul agent, usually the local one: `http://host:port` (a bare
    /// `host:port` means `http://`). `https://` is not compiled in: talk to the local agent
    /// over loopback, or put a TLS-terminating proxy in front.
    pub address: String,
    /// The ACL token sent as `X-Consul-Token`. It needs `key_prefix "<prefix>/" { policy =
    /// "write" }` and `session_prefix "" { policy = "write" }`. Never logged: `Debug` shows
    /// `***`.
    pub token: Option<SecretString>,
    /// The KV prefix every key of cim lives under, before the section's namespace:
    /// `{prefix}/{namespace}/...`. Letters, digits, `-`, `_`, `.` and inner `/`.
    pub prefix: String,
    /// The datacenter to talk to (`?dc=`); unset means the agent's own.
    pub datacenter: Option<String>,
    /// How long one request may take before it fails with `Timeout` (a blocking query gets
    /// `wait` on top).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long to wait for a TCP connection to the agent before the request fails with
    /// `Unavailable`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a blocking query (a watch) waits for a change before asking again. Consul
    /// caps it at 10 minutes and adds up to 1/16 of jitter.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            address: "http://127.0.0.1:8500".to_string(),
            token: None,
            prefix: "cim".to_string(),
            datacenter: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            wait: Duration::from_secs(30),
        }
    }
}

/// Consul's ceiling for a blocking query's wait.
const MAX_WAIT: Duration = Duration::from_secs(600);

impl ConsulConfig {
    /// The defaults with `address`.
    pub fn new(address: impl Into<String>) -> Self {
        ConsulConfig {
            address: address.into(),
            ..ConsulConfig::default()
        }
    }

    /// Checks the values serde cannot: a usable prefix and datacenter, positive timeouts, a wait
    /// Consul accepts. Errors name the key.
    pub fn validate(&self) -> Result<()> {
        let prefix_ok = !self.prefix.is_empty()
            && !self.prefix.starts_with('/')
            && !self.prefix.ends_with('/')
            && self
                .prefix
                .split('/')
                .all(|segment| !matches!(segment, "" | "." | ".."))
            && self
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !prefix_ok {
            return Err(Error::config(format!(
                "consul prefix = {:?} is not a usable KV prefix: use letters, digits, '-', '_', \
                 '.' and inner '/' (for example \"cim\")",
                self.prefix
            )));
        }
        if let Some(dc) = &self.datacenter
            && (dc.is_empty()
                || !dc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(Error::config(format!(
                "consul datacenter = {dc:?} is not a datacenter name; leave it out to use the \
                 agent's own"
            )));
        }
        for (key, value) in [
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
            ("wait", self.wait),
        ] {
            if value.is_zero() {
                return Err(Error::config(format!(
                    "consul {key} must be longer than zero (for example \"5s\")"
                )));
            }
        }
        if self.wait > MAX_WAIT {
            return Err(Error::config(format!(
                "consul wait = {:?} is longer than Consul allows ({MAX_WAIT:?}); use for example \
                 \"30s\"",
                self.wait
            )));
        }
        Ok(())
    }
}

/// Checks the namespace a store keeps its keys under: it becomes one path segment.
pub(crate) fn validate_namespace(namespace: &str) -> Result<()> {
    let ok = !matches!(namespace, "" | "." | "..")
        && namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "namespace {namespace:?} cannot be a consul key segment: use letters, digits, '-', \
             '_' and '.'"
        )))
    }
}
