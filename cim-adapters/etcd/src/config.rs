//! [`EtcdConfig`]: the backend keys of a `backend = "etcd"` section. Both stores of this crate
//! take the same keys, so one etcd cluster serves `[meta]` and `[sessions]` with the same lines.

use std::time::Duration;

use cim_core::{Error, Result, SecretString};
use serde::Deserialize;

/// The keys of `[meta]` / `[sessions]` with `backend = "etcd"`.
///
/// ```toml
/// [meta]
/// backend = "etcd"
/// endpoints = ["http://10.0.0.7:2379", "http://10.0.0.8:2379"]
/// prefix = "/cim"
/// connect_timeout = "5s"
/// request_timeout = "5s"
/// user = "cim"
/// password = "secret"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// The client URLs of the cluster's members (`http://host:port`; a bare `host:port` means
    /// `http://`). Requests are balanced over the members that answer. `https://` is refused:
    /// TLS is not compiled in.
    pub endpoints: Vec<String>,
    /// The key prefix this deployment's keys live under; the section's namespace comes after it:
    /// `{prefix}/{namespace}/servers/...`, `{prefix}/{namespace}/sessions/...`.
    pub prefix: String,
    /// How long to wait for a connection to a member before the operation fails with
    /// `Unavailable`; also how long connecting the store may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long to wait for etcd to answer one request before it fails with `Timeout` (or
    /// `Unavailable` when no member could be reached at all).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The etcd user to authenticate as, when etcd has authentication enabled. Needs read and
    /// write access to `{prefix}/` and the right to grant and revoke leases.
    pub user: Option<String>,
    /// That user's password; never logged (`Debug` shows `***`).
    pub password: Option<SecretString>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            prefix: "/cim".to_string(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            user: None,
            password: None,
        }
    }
}

impl EtcdConfig {
    /// The defaults with `endpoints`.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..EtcdConfig::default()
        }
    }

    /// Checks what serde cannot: endpoints to connect to, credentials in pairs, usable timeouts.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(Error::config(
                "endpoints is empty; list the client URLs of the etcd members, for example \
                 [\"http://127.0.0.1:2379\"]",
            ));
        }
        for endpoint in &self.endpoints {
            if endpoint.starts_with("https://") {
                return Err(Error::config(format!(
                    "endpoints: {endpoint:?} uses https, but TLS is not compiled into the etcd \
                     backend; use an http:// URL (on a trusted network) or a TLS-terminating proxy"
                )));
            }
            let rest = endpoint.strip_prefix("http://").unwrap_or(endpoint);
            if rest.is_empty() || rest.contains("://") || rest.contains(char::is_whitespace) {
                return Err(Error::config(format!(
                    "endpoints: {endpoint:?} is not an etcd client URL; write http://host:port"
                )));
            }
        }
        match (&self.user, &self.password) {
            (Some(_), None) => {
                return Err(Error::config(
                    "user is set but password is not; give both, or neither",
                ));
            }
            (None, Some(_)) => {
                return Err(Error::config(
                    "password is set but user is not; give both, or neither",
                ));
            }
            _ => {}
        }
        for (key, value) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::config(format!(
                    "{key} must be longer than zero (for example \"5s\")"
                )));
            }
        }
        Ok(())
    }

    /// `{prefix}/{namespace}`, with no slash doubled: the root of this store's keys.
    pub(crate) fn root(&self, namespace: &str) -> String {
        format!("{}/{namespace}", self.prefix.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_point_at_a_local_etcd() {
        let config = EtcdConfig::default();
        assert_eq!(config.endpoints, vec!["http://127.0.0.1:2379".to_string()]);
        assert_eq!(config.root("cim"), "/cim/cim");
        config.validate().expect("the defaults are valid");
    }

    #[test]
    fn the_root_never_doubles_a_slash() {
        let config = EtcdConfig {
            prefix: "/apps/chat/".to_string(),
            ..EtcdConfig::default()
        };
        assert_eq!(config.root("prod"), "/apps/chat/prod");
    }

    #[test]
    fn invalid_settings_are_config_errors_naming_the_key() {
        let cases = [
            (EtcdConfig::new(Vec::<String>::new()), "endpoints"),
            (EtcdConfig::new(["https://10.0.0.7:2379"]), "endpoints"),
            (EtcdConfig::new(["redis://10.0.0.7:2379"]), "endpoints"),
            (
                EtcdConfig {
                    user: Some("cim".to_string()),
                    ..EtcdConfig::default()
                },
                "password",
            ),
            (
                EtcdConfig {
                    request_timeout: Duration::ZERO,
                    ..EtcdConfig::default()
                },
                "request_timeout",
            ),
        ];
        for (config, key) in cases {
            let error = config.validate().expect_err(key);
            assert_eq!(error.kind(), cim_core::ErrorKind::Config);
            assert!(error.message().contains(key), "{error}");
        }
    }

    #[test]
    fn the_password_never_shows() {
        let config = EtcdConfig {
            user: Some("cim".to_string()),
            password: Some(SecretString::new("hunter2")),
            ..EtcdConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
