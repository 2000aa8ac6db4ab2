//! [`ServerConfig`]: the `[server]` section of `cim.toml`.
//!
//! Every limit that protects the server from a client connection (the frame size, the login and
//! idle timeouts, the outbound queue) is here, with a default that suits a chat deployment, so
//! that an operator can see what a client is allowed to do and change it. What a user may send,
//! whichever way they send it (body size, message and frame rates), is the pipeline's `[limits]`
//! section. Values that would make the server misbehave (zero durations) are refused by
//! [`ServerConfig::validate`] with a message naming the key.

use std::net::SocketAddr;
use std::time::Duration;

use cim_core::{BindPolicy, Error, Result, ServerId};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The `[server]` section: how a cim server listens, announces itself and treats its clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The server's stable id in the cluster (letters, digits, `.`, `_`, `-`). `cim server`
    /// requires it; keep it across restarts so sessions and schedules stay attributed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The address clients connect to. Default `0.0.0.0:7000`.
    pub listen: String,
    /// The address other servers and routes connect to (internal protocol). Default
    /// `0.0.0.0:7001`. Keep it off the public network.
    pub internal_listen: String,
    /// The host name or IP address clients and peers are told to connect to. If unset, the
    /// `listen` IP is used when it is a specific address; with a wildcard listen address
    /// (`0.0.0.0`, `::`) it must be set: cim never guesses which interface is reachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertised_host: Option<String>,
    /// The listen backlog of both sockets. Default 4096.
    pub backlog: u32,
    /// The largest frame accepted or sent, in bytes (the length prefix excluded). Default 64 KiB.
    /// Must carry the largest message `[limits] max_body_len` allows, with its other fields.
    pub max_frame_len: usize,
    /// How often clients should ping when idle, announced at login. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A connection with no frame for this long is closed (`Kicked { IDLE }`) and its session
    /// unbound. Default `30s`; must exceed `heartbeat_interval`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A connection must send its `Login` frame within this time. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub login_timeout: Duration,
    /// Frames queued for one connection before it counts as too slow and is closed (instead
    /// of slowing down everyone who sends to it). Default 1024.
    pub outbound_queue: usize,
    /// What a second login of an online user does: `replace` (the old connection is kicked) or
    /// `reject` (the new one is refused). Default `replace`; must match the route's.
    pub login_policy: BindPolicy,
    /// How often the server renews its users' sessions in the SessionStore. Default `10s`; keep
    /// it well below `[sessions] ttl`.
    #[serde(with = "humantime_serde")]
    pub session_refresh: Duration,
    /// How often the server updates its load (connected clients) in its registration. Default
    /// `5s`.
    #[serde(with = "humantime_serde")]
    pub load_report: Duration,
    /// At start, how long to wait for an earlier registration of the same id (a crashed
    /// predecessor) to expire before giving up. Default `60s`; make it longer than `[meta] ttl`.
    #[serde(with = "humantime_serde")]
    pub register_wait: Duration,
    /// How long a graceful shutdown waits for connections to say goodbye before cutting them.
    /// Default `5s`.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The most connections open at once, client and internal together; more are closed as
    /// soon as they are accepted. Unset: three quarters of the process's open-files limit
    /// (after a reserve), leaving the rest to a route in the same process and to the stores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            id: None,
            listen: "0.0.0.0:7000".into(),
            internal_listen: "0.0.0.0:7001".into(),
            advertised_host: None,
            backlog: 4096,
            max_frame_len: cim_proto::DEFAULT_MAX_FRAME_LEN,
            heartbeat_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            login_timeout: Duration::from_secs(10),
            outbound_queue: 1024,
            login_policy: BindPolicy::Replace,
            session_refresh: Duration::from_secs(10),
            load_report: Duration::from_secs(5),
            register_wait: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
            max_connections: None,
        }
    }
}

/// The smallest frame limit accepted: room for every frame but the messages themselves.
const MIN_FRAME_LEN: usize = 2048;

impl ServerConfig {
    /// The `[server]` section of `figment` (see [`cim_core::CoreConfig::figment`]), defaults
    /// filled in, validated.
    pub fn from_figment(figment: &Figment) -> Result<Self> {
        let config: ServerConfig = if figment.contains("server") {
            figment.extract_inner("server").map_err(config_error)?
        } else {
            ServerConfig::default()
        };
        config.validate()?;
        Ok(config)
    }

    /// The configured server id, checked; `Config` if it is missing or invalid.
    pub fn server_id(&self) -> Result<ServerId> {
        let id = self.id.as_deref().ok_or_else(|| {
            Error::config(
                "[server] id is not set; give every server a stable id, like id = \"node-1\"",
            )
        })?;
        ServerId::new(id).map_err(|e| Error::config(format!("[server] id: {}", e.message())))
    }

    /// Checks the values against each other; the error names the key to fix.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("idle_timeout", self.idle_timeout),
            ("login_timeout", self.login_timeout),
            ("session_refresh", self.session_refresh),
            ("load_report", self.load_report),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return Err(Error::config(format!(
                    "[server] {key} must be longer than zero (for example \"10s\")"
                )));
            }
        }
        if self.idle_timeout <= self.heartbeat_interval {
            return Err(Error::config(format!(
                "[server] idle_timeout ({:?}) must be longer than heartbeat_interval ({:?}), or \
                 clients that ping on time get closed",
                self.idle_timeout, self.heartbeat_interval
            )));
        }
        for (key, value) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("idle_timeout", self.idle_timeout),
        ] {
            if u32::try_from(value.as_millis()).is_err() {
                return Err(Error::config(format!(
                    "[server] {key} is too long; keep it under 49 days"
                )));
            }
        }
        if self.max_frame_len < MIN_FRAME_LEN || u32::try_from(self.max_frame_len).is_err() {
            return Err(Error::config(format!(
                "[server] max_frame_len = {} is out of range; use {MIN_FRAME_LEN} to 4294967295 \
                 bytes",
                self.max_frame_len
            )));
        }
        if self.outbound_queue == 0 || self.backlog == 0 {
            return Err(Error::config(
                "[server] outbound_queue and backlog must be at least 1",
            ));
        }
        Ok(())
    }

    /// The host to announce, given the address the client listener is bound to.
    pub fn resolve_advertised_host(&self, bound: SocketAddr) -> Result<String> {
        match &self.advertised_host {
            Some(host) if host.trim().is_empty() => Err(Error::config(
                "[server] advertised_host is empty; set the host name or IP clients reach this server at",
            )),
            Some(host) => Ok(host.clone()),
            None if bound.ip().is_unspecified() => Err(Error::config(format!(
                "[server] advertised_host is not set and listen = {:?} is a wildcard address; set \
                 advertised_host to the host name or IP clients and other servers reach this \
                 server at (cim does not guess which interface that is)",
                self.listen
            ))),
            None => Ok(bound.ip().to_string()),
        }
    }
}

fn config_error(e: figment::Error) -> Error {
    let errors: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
    Error::config(format!(
        "invalid [server] configuration: {}",
        errors.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use cim_core::ErrorKind;
    use figment::providers::{Format, Toml};

    use super::*;

    fn parse(toml: &str) -> Result<ServerConfig> {
        ServerConfig::from_figment(&Figment::from(Toml::string(toml)))
    }

    #[test]
    fn an_absent_section_is_all_defaults() {
        let config = parse("[meta]\nbackend = \"memory\"").expect("valid");
        assert_eq!(config, ServerConfig::default());
        assert_eq!(config.listen, "0.0.0.0:7000");
        assert_eq!(config.login_policy, BindPolicy::Replace);
    }

    #[test]
    fn durations_and_nested_keys_parse() {
        let config = parse(
            r#"
            [server]
            id = "node-1"
            idle_timeout = "300ms"
            heartbeat_interval = "100ms"
            login_policy = "reject"
            "#,
        )
        .expect("valid");
        assert_eq!(config.idle_timeout, Duration::from_millis(300));
        assert_eq!(config.login_policy, BindPolicy::Reject);
        assert_eq!(config.server_id().expect("valid id").as_str(), "node-1");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = parse("[server]\nlisten_port = 7000").expect_err("unknown key");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("listen_port"), "{err}");
        let err = parse("[server]\nidle_timeout = \"1s\"").expect_err("shorter than heartbeat");
        assert!(err.message().contains("idle_timeout"), "{err}");
        let err = parse("[server]\nmax_frame_len = 100").expect_err("frame too small");
        assert!(err.message().contains("max_frame_len"), "{err}");
    }

    #[test]
    fn a_missing_id_is_a_config_error() {
        let err = ServerConfig::default().server_id().expect_err("no id");
        assert_eq!(err.kind(), ErrorKind::Config);
    }

    #[test]
    fn the_advertised_host_is_never_guessed_from_a_wildcard() {
        let config = ServerConfig::default();
        let wildcard: SocketAddr = "0.0.0.0:7000".parse().expect("addr");
        let err = config
            .resolve_advertised_host(wildcard)
            .expect_err("must be set");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("advertised_host"), "{err}");
        let specific: SocketAddr = "10.0.0.5:7000".parse().expect("addr");
        assert_eq!(
            config
                .resolve_advertised_host(specific)
                .expect("the listen ip"),
            "10.0.0.5"
        );
        let config = ServerConfig {
            advertised_host: Some("chat.example.com".into()),
            ..ServerConfig::default()
        };
        assert_eq!(
            config
                .resolve_advertised_host(wildcard)
                .expect("configured"),
            "chat.example.com"
        );
    }
}
