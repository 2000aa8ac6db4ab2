//! [`LimitsConfig`]: the `[limits]` section of `cim.toml`, what one user may send.
//!
//! These limits are the pipeline's, not a transport's: a message sent over a client connection,
//! over the route's HTTP API or released by the scheduler meets the same ones, because they are
//! checked in one place ([`crate::validate`], [`crate::rate_limit`], [`crate::authorize`]). Every
//! server and route of a deployment should read the same section; a server also checks that its
//! frame limit can carry the largest message these limits allow
//! ([`LimitsConfig::check_frame_room`]), so a message that was accepted can always be delivered.

use std::time::Duration;

use cim_core::{Error, NameRules, Result, canonical_name};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::delivery::largest_deliver_frame;
use crate::rate_limit::RateLimit;

/// The `[limits]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// The longest message body accepted, in bytes (UTF-8). Default 16 KiB.
    pub max_body_len: usize,
    /// How far in the future a message may be scheduled. Default `365d`.
    #[serde(with = "humantime_serde")]
    pub max_schedule_ahead: Duration,
    /// Messages per user, over every connection and the HTTP send API of one process together.
    /// Default 50 per second, bursts of 100.
    pub messages: RateLimit,
    /// Frames per client connection, of every kind (pings and acknowledgements included).
    /// Default 200 per second, bursts of 400.
    pub frames: RateLimit,
    /// Who may send to the built-in "all" group (every online user), and how often.
    pub broadcast: BroadcastConfig,
}

/// The `[limits.broadcast]` section: a message to "all" reaches every online user, so it is
/// the most expensive message there is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BroadcastConfig {
    /// `everyone` (the default: the terminal client's plain lines go to "all"), `nobody`, or
    /// `listed` (the users named in `users`).
    pub allow: BroadcastAllow,
    /// With `allow = "listed"`: the user names that may broadcast (any letter case).
    pub users: Vec<String>,
    /// Messages to "all" per sender, on top of `messages`. Default 1 per second, bursts of 10.
    pub rate: RateLimit,
}

/// Who may send to the "all" group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BroadcastAllow {
    /// Every user.
    Everyone,
    /// No user (the HTTP API and the scheduler included).
    Nobody,
    /// The users named in `users`.
    Listed,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_len: 16 * 1024,
            max_schedule_ahead: Duration::from_secs(365 * 24 * 60 * 60),
            messages: RateLimit::new(50, 100),
            frames: RateLimit::new(200, 400),
            broadcast: BroadcastConfig::default(),
        }
    }
}

impl Default for BroadcastConfig {
    fn default() -> Self {
        BroadcastConfig {
            allow: BroadcastAllow::Everyone,
            users: Vec::new(),
            rate: RateLimit::new(1, 10),
        }
    }
}

impl BroadcastConfig {
    /// Whether the user named `name` may send to "all".
    pub fn allows(&self, name: &str) -> bool {
        match self.allow {
            BroadcastAllow::Everyone => true,
            BroadcastAllow::Nobody => false,
            BroadcastAllow::Listed => {
                let name = canonical_name(name);
                self.users.iter().any(|user| canonical_name(user) == name)
            }
        }
    }
}

impl LimitsConfig {
    /// These limits with every rate (messages, frames, broadcasts) set to `rate`: for tests and
    /// benchmarks that measure something else than the rate limits.
    pub fn with_rates(mut self, rate: RateLimit) -> Self {
        self.messages = rate;
        self.frames = rate;
        self.broadcast.rate = rate;
        self
    }

    /// The `[limits]` section of `figment` (see [`cim_core::CoreConfig::figment`]), defaults
    /// filled in, validated.
    pub fn from_figment(figment: &Figment) -> Result<Self> {
        let config: LimitsConfig = if figment.contains("limits") {
            figment.extract_inner("limits").map_err(|e| {
                let errors: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
                Error::config(format!(
                    "invalid [limits] configuration: {}",
                    errors.join("; ")
                ))
            })?
        } else {
            LimitsConfig::default()
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the values; the error names the key to fix.
    pub fn validate(&self) -> Result<()> {
        if self.max_body_len == 0 || u32::try_from(self.max_body_len).is_err() {
            return Err(Error::config(format!(
                "[limits] max_body_len = {} is out of range; use 1 to 4294967295 bytes",
                self.max_body_len
            )));
        }
        for (key, limit) in [
            ("messages", self.messages),
            ("frames", self.frames),
            ("broadcast.rate", self.broadcast.rate),
        ] {
            if limit.per_second == 0 || limit.burst == 0 {
                return Err(Error::config(format!(
                    "[limits.{key}] per_second and burst must be at least 1"
                )));
            }
        }
        if self.broadcast.allow == BroadcastAllow::Listed && self.broadcast.users.is_empty() {
            return Err(Error::config(
                "[limits.broadcast] allow = \"listed\" needs the user names in users = [...]; \
                 use allow = \"nobody\" to forbid broadcasts",
            ));
        }
        Ok(())
    }

    /// Checks that a frame of `max_frame_len` bytes carries the largest `Deliver` these limits
    /// allow (the longest body, the longest sender name `names` allows, the largest ids), with
    /// room to relay it between servers. `key` names the frame limit's setting in the error.
    pub fn check_frame_room(
        &self,
        max_frame_len: usize,
        names: &NameRules,
        key: &str,
    ) -> Result<()> {
        let needed = largest_deliver_frame(self.max_body_len, names) + crate::delivery::RELAY_ROOM;
        if needed > max_frame_len {
            return Err(Error::config(format!(
                "{key} = {max_frame_len} cannot carry the largest message [limits] allows: a \
                 body of max_body_len = {} bytes with its longest sender name and ids needs \
                 {needed} bytes; raise {key} or lower max_body_len",
                self.max_body_len
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use cim_core::ErrorKind;
    use figment::providers::{Format, Toml};

    use super::*;

    fn parse(toml: &str) -> Result<LimitsConfig> {
        LimitsConfig::from_figment(&Figment::from(Toml::string(toml)))
    }

    #[test]
    fn an_absent_section_is_all_defaults() {
        assert_eq!(parse("").expect("valid"), LimitsConfig::default());
    }

    #[test]
    fn nested_keys_parse_and_unknown_ones_are_named() {
        let config = parse(
            r#"
            [limits]
            max_body_len = 1000
            max_schedule_ahead = "7d"
            [limits.messages]
            per_second = 5
            burst = 10
            [limits.broadcast]
            allow = "listed"
            users = ["Ops"]
            "#,
        )
        .expect("valid");
        assert_eq!(config.max_body_len, 1000);
        assert_eq!(config.messages, RateLimit::new(5, 10));
        assert!(config.broadcast.allows("ops") && !config.broadcast.allows("eve"));
        let err = parse("[limits]\nmax_bdy_len = 3").expect_err("misspelt");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("max_bdy_len"), "{err}");
        let err = parse("[limits.broadcast]\nallow = \"listed\"").expect_err("nobody listed");
        assert!(err.message().contains("users"), "{err}");
        let err = parse("[limits.frames]\nper_second = 0\nburst = 1").expect_err("zero");
        assert!(err.message().contains("frames"), "{err}");
    }

    #[test]
    fn the_frame_limit_must_carry_the_largest_message() {
        let names = NameRules::default();
        let limits = LimitsConfig::default();
        limits
            .check_frame_room(
                cim_proto::DEFAULT_MAX_FRAME_LEN,
                &names,
                "[server] max_frame_len",
            )
            .expect("the defaults fit");
        let err = limits
            .check_frame_room(limits.max_body_len + 16, &names, "[server] max_frame_len")
            .expect_err("no room for the rest of the frame");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("max_frame_len"), "{err}");
    }

    #[test]
    fn broadcast_permission_follows_the_setting() {
        let mut broadcast = BroadcastConfig::default();
        assert!(broadcast.allows("anyone"));
        broadcast.allow = BroadcastAllow::Nobody;
        assert!(!broadcast.allows("anyone"));
    }
}
