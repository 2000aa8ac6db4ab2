//! cim's configuration: which backend serves each trait, with what options.
//!
//! Configuration is data: [`CoreConfig`] is read with `figment` from a TOML file, then from
//! `CIM_`-prefixed environment variables, where `__` separates levels
//! (`CIM_MESSAGES__BACKEND=postgres`, `CIM_META__TTL=5s`). Every section defaults to an embedded
//! backend, so an empty file (or none) runs cim with no external service. The sample `cim.toml`
//! at the repository root documents every key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::Dict;
use serde::{Deserialize, Serialize};

use crate::registry::BackendOptions;
use crate::{Error, NameRules, Result};

/// The namespace backends keep their data under unless configured otherwise.
pub const DEFAULT_NAMESPACE: &str = "cim";
/// Where embedded backends keep their files unless configured otherwise.
pub const DEFAULT_DATA_DIR: &str = "./cim-data";
/// The environment variable prefix for overrides.
pub const ENV_PREFIX: &str = "CIM_";

/// The backend part of cim's configuration (the `[meta]`, `[sessions]`, `[accounts]`,
/// `[messages]`, `[balancer]` and `[names]` sections and the top-level keys). Other sections of
/// the same file (the server's, the route's) are ignored here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CoreConfig {
    /// Directory for embedded backends' files (`sqlite`), created if missing.
    pub data_dir: PathBuf,
    /// Default namespace for every backend: a key prefix, schema or root node that isolates this
    /// deployment's data on a shared server.
    pub namespace: String,
    /// Server registration and discovery. Default: `memory`.
    pub meta: BackendSection,
    /// Online sessions. Default: `memory`.
    pub sessions: BackendSection,
    /// Users, credentials, groups. Default: `sqlite`.
    pub accounts: BackendSection,
    /// Messages, cursors, history, schedules. Default: `sqlite`.
    pub messages: BackendSection,
    /// Load-balancing strategy. Default: `consistent_hash`.
    pub balancer: BalancerSection,
    /// Rules for user and group names.
    pub names: NameRules,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            namespace: DEFAULT_NAMESPACE.to_string(),
            meta: BackendSection::default(),
            sessions: BackendSection::default(),
            accounts: BackendSection::default(),
            messages: BackendSection::default(),
            balancer: BalancerSection::default(),
            names: NameRules::default(),
        }
    }
}

/// A section that picks a backend: `backend = "<name>"`, the common keys, and the backend's own
/// keys beside them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BackendSection {
    /// The registered backend name; unset means the section's embedded default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Overrides the top-level `namespace` for this section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `[meta]`: how long a registration outlives its last renewal. `[sessions]`: how long a
    /// server's sessions outlive its last refresh. Written like `10s`, `500ms`, `1m`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// The backend's own keys (`url`, `pool_size`...), checked by the backend.
    #[serde(flatten)]
    pub options: Dict,
}

/// The `[balancer]` section: `strategy = "<name>"` and the strategy's own keys.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BalancerSection {
    /// The registered strategy name; unset means `consistent_hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// The strategy's own keys (`virtual_nodes`...).
    #[serde(flatten)]
    pub options: Dict,
}

/// The default backend of each backend section.
pub const DEFAULT_BACKENDS: [(&str, &str); 4] = [
    ("meta", "memory"),
    ("sessions", "memory"),
    ("accounts", "sqlite"),
    ("messages", "sqlite"),
];

/// The default load-balancing strategy.
pub const DEFAULT_STRATEGY: &str = "consistent_hash";

impl CoreConfig {
    /// The figment cim reads its configuration from: defaults, then `file` if given (it must
    /// exist), then `CIM_` environment variables. Services extract their own sections from the
    /// same figment.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(CoreConfig::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment.merge(Env::prefixed(ENV_PREFIX).split("__"))
    }

    /// Reads the configuration (see [`CoreConfig::figment`]).
    pub fn load(file: Option<&Path>) -> Result<Self> {
        Self::from_figment(&Self::figment(file))
    }

    /// Extracts the configuration from a figment, with errors that name the bad key.
    pub fn from_figment(figment: &Figment) -> Result<Self> {
        figment.extract().map_err(config_error)
    }

    /// Parses a TOML document (no file, no environment): handy for tests and examples.
    pub fn from_toml(toml: &str) -> Result<Self> {
        Figment::from(Serialized::defaults(CoreConfig::default()))
            .merge(Toml::string(toml))
            .extract()
            .map_err(config_error)
    }

    /// The options for section `section` (`meta`, `sessions`, `accounts`, `messages` or
    /// `balancer`), defaults resolved.
    pub fn backend_options(&self, section: &str) -> Result<BackendOptions> {
        let (backend_section, default) = match section {
            "meta" => (&self.meta, DEFAULT_BACKENDS[0].1),
            "sessions" => (&self.sessions, DEFAULT_BACKENDS[1].1),
            "accounts" => (&self.accounts, DEFAULT_BACKENDS[2].1),
            "messages" => (&self.messages, DEFAULT_BACKENDS[3].1),
            "balancer" => {
                let name = self
                    .balancer
                    .strategy
                    .as_deref()
                    .unwrap_or(DEFAULT_STRATEGY);
                return Ok(BackendOptions::new("balancer", name)
                    .with_namespace(&self.namespace)
                    .with_data_dir(&self.data_dir)
                    .with_options(self.balancer.options.clone()));
            }
            other => {
                return Err(Error::config(format!(
                    "there is no config section [{other}]; backend sections are meta, sessions, accounts, messages and balancer"
                )));
            }
        };
        Ok(BackendOptions::new(
            section,
            backend_section.backend.as_deref().unwrap_or(default),
        )
        .with_namespace(
            backend_section
                .namespace
                .as_deref()
                .unwrap_or(&self.namespace),
        )
        .with_ttl(backend_section.ttl)
        .with_data_dir(&self.data_dir)
        .with_options(backend_section.options.clone()))
    }
}

fn config_error(e: figment::Error) -> Error {
    let errors: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
    Error::config(format!("invalid configuration: {}", errors.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_picks_embedded_backends() {
        let config = CoreConfig::from_toml("").expect("empty config is valid");
        assert_eq!(
            config.backend_options("meta").expect("meta").backend(),
            "memory"
        );
        assert_eq!(
            config.backend_options("sessions").expect("s").backend(),
            "memory"
        );
        assert_eq!(
            config.backend_options("accounts").expect("a").backend(),
            "sqlite"
        );
        assert_eq!(
            config.backend_options("messages").expect("m").backend(),
            "sqlite"
        );
        assert_eq!(
            config.backend_options("balancer").expect("b").backend(),
            "consistent_hash"
        );
    }

    #[test]
    fn sections_carry_common_and_backend_keys() {
        let config = CoreConfig::from_toml(
            r#"
            namespace = "prod"
            [meta]
            backend = "redis"
            ttl = "5s"
            url = "redis://127.0.0.1:6379"
            [messages]
            namespace = "archive"
            "#,
        )
        .expect("valid");
        let meta = config.backend_options("meta").expect("meta");
        assert_eq!(meta.backend(), "redis");
        assert_eq!(meta.ttl(), Some(Duration::from_secs(5)));
        assert_eq!(meta.namespace(), "prod");
        assert!(meta.options().contains_key("url"));
        assert!(!meta.options().contains_key("backend"));
        assert_eq!(
            config.backend_options("messages").expect("m").namespace(),
            "archive"
        );
    }

    #[test]
    // figment's Jail dictates the closure's error type.
    #[allow(clippy::result_large_err)]
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "cim.toml",
                "[meta]\nttl = \"10s\"\n[messages]\nbackend = \"sqlite\"",
            )?;
            jail.set_env("CIM_META__TTL", "5s");
            jail.set_env("CIM_MESSAGES__BACKEND", "memory");
            let config = CoreConfig::load(Some(Path::new("cim.toml")))
                .map_err(|e| figment::Error::from(e.to_string()))?;
            let meta = config.backend_options("meta").map_err(|e| e.to_string())?;
            assert_eq!(meta.ttl(), Some(Duration::from_secs(5)));
            let messages = config
                .backend_options("messages")
                .map_err(|e| e.to_string())?;
            assert_eq!(messages.backend(), "memory");
            Ok(())
        });
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let err = CoreConfig::load(Some(Path::new("/nonexistent/cim.toml")))
            .expect_err("a named file must exist");
        assert_eq!(err.kind(), crate::ErrorKind::Config);
        assert!(err.message().contains("cim.toml"), "{err}");
    }

    #[test]
    fn bad_values_are_errors_that_name_the_key() {
        let err = CoreConfig::from_toml("[meta]\nttl = \"soon\"").expect_err("bad duration");
        assert_eq!(err.kind(), crate::ErrorKind::Config);
        assert!(err.message().contains("ttl"), "{err}");
        let err = CoreConfig::from_toml("[names]\nmax_len = -1").expect_err("bad number");
        assert!(err.message().contains("max_len"), "{err}");
        let err = CoreConfig::default()
            .backend_options("nope")
            .expect_err("no such section");
        assert_eq!(err.kind(), crate::ErrorKind::Config);
    }
}
