//! [`RouteConfig`]: the `[route]` section of `cim.toml`.
//!
//! Every field has a default, so an empty section (or none) runs a route on port 8080. Unknown
//! keys are errors rather than silently ignored: a misspelt `login_polcy` must not leave a
//! deployment on the default policy without anyone noticing.

use std::time::Duration;

use cim_core::SecretString;

pub use crate::app_tokens::AppTokenConfig;
use cim_pipeline::rate_limit::Allowance;
use serde::{Deserialize, Serialize};

/// The route's settings: where it listens and how it treats logins and requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// The address the HTTP API listens on.
    pub listen: String,
    /// How long a token issued at login stays valid. Written like `24h`, `30m`.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// What a login of a user who is online already does: `replace` (the default: the new login
    /// wins, and the server kicks the old connection when the new one arrives) or `reject` (the
    /// login fails with 409 until the user logs out or their session expires).
    pub login_policy: LoginPolicy,
    /// Before answering a login, the route opens a TCP connection to the chosen server's client
    /// port; a server that does not accept within this time is skipped and another one is
    /// chosen. Written like `500ms`.
    #[serde(with = "humantime_serde")]
    pub reachability_timeout: Duration,
    /// How long a server that accepted that connection is taken as reachable without another
    /// one, so that a login storm costs a probe per server per interval, not one per login; a
    /// server dying within it gets a few clients that fail to connect and log in again. `0s`
    /// probes at every login. Written like `250ms` (the default).
    #[serde(with = "humantime_serde")]
    pub reachability_cache: Duration,
    /// The largest page a listing returns. A larger `limit` is lowered to this; a missing one
    /// means this.
    pub max_page: u32,
    /// The largest request body accepted, in bytes; larger requests get 413.
    pub max_request_len: usize,
    /// The name this route introduces itself with to the servers' internal ports (in the
    /// `PeerHello`). Give every route of a deployment its own, for the servers' logs.
    pub name: String,
    /// The largest frame sent to a server's internal port, in bytes: the cluster's frame limit
    /// (the servers' `max_frame_len`).
    pub max_frame_len: usize,
    /// How often the route lists the servers when the MetaStore cannot watch (and how long it
    /// waits before watching again after the watch failed). Written like `2s`.
    #[serde(with = "humantime_serde")]
    pub discovery_interval: Duration,
    /// How long a client may take to send a request's headers; also how long a kept-alive
    /// connection may wait idle for its next request. Written like `10s`.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// How long a request body may go without a byte arriving. Written like `10s`.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// How long a request may take in all (reading it, and answering: a login queued behind
    /// password checks, say) before it is answered `408`. Written like `30s`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The most HTTP connections open at once; more are closed as soon as they are accepted.
    /// Unset: a quarter of the process's open-files limit (after a reserve), so that a flood of
    /// HTTP connections never takes the descriptors a server in the same process needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// The header a reverse proxy in front of the route puts the client's address in
    /// (`x-forwarded-for`, say); its last address is the client's for the per-source limits.
    /// Unset (the default): the TCP peer's address. Set it only when every request comes
    /// through that proxy, or a client could name any address it likes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_address_header: Option<String>,
    /// Who may create accounts: `open` (anyone, the default), `invitation` (with an invitation
    /// from `POST /api/v1/admin/invitations`) or `admin` (only the admin, with the admin
    /// token).
    pub signups: SignupPolicy,
    /// The admin credential: a bearer token that opens the admin API (`/api/v1/admin/...`) and
    /// creates accounts under any sign-up policy. Unset (the default): no admin API. At least
    /// 32 random bytes; prefer `CIM_ROUTE__ADMIN_TOKEN` to writing it in a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<SecretString>,
    /// How often, and how many at once, logins and sign-ups may check a password.
    pub logins: LoginLimits,
    /// Whether users may log in with a name and password (`POST /api/v1/login`; default true).
    /// Off, only tokens log in: an application's (`[route.app_tokens]`), or a cim token being
    /// resumed; sign-ups are refused too, since their accounts could not log in.
    pub password_logins: bool,
    /// The keys of tokens an application mints for its own users (`POST /api/v1/login/token`);
    /// nothing set (the default) turns application tokens off.
    pub app_tokens: AppTokenConfig,
}

/// Who may create accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignupPolicy {
    /// Anyone (limited per source address by `[route.logins] signups_per_source`).
    #[default]
    Open,
    /// Whoever has an invitation the admin made.
    Invitation,
    /// Only the admin.
    Admin,
}

/// The `[route.logins]` section: the throttle in front of password checks (see the route's
/// `throttle` module). A login over an allowance is refused with `429` and `Retry-After`
/// before any password is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginLimits {
    /// Wrong passwords for one account from one source address. Default 5 at once, one more a
    /// minute.
    pub failures_per_account_and_source: Allowance,
    /// Wrong passwords for one account from all addresses together: looser, so that attackers
    /// are throttled long before the account's owner. Default 50, one more every 10 seconds.
    pub failures_per_account: Allowance,
    /// Wrong passwords from one source address for all accounts. Default 50, one more every
    /// 6 seconds.
    pub failures_per_source: Allowance,
    /// Password checks in flight for one account. Default 2.
    pub checks_per_account: usize,
    /// Password checks (logins and sign-ups) in flight from one source address. Default 8.
    pub checks_per_source: usize,
    /// Password checks in flight in all; more are refused rather than queued. Default 256.
    pub max_checks: usize,
    /// Accounts created from one source address. Default 5, one more every 10 minutes.
    pub signups_per_source: Allowance,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            failures_per_account_and_source: Allowance::new(5, Duration::from_secs(60)),
            failures_per_account: Allowance::new(50, Duration::from_secs(10)),
            failures_per_source: Allowance::new(50, Duration::from_secs(6)),
            checks_per_account: 2,
            checks_per_source: 8,
            max_checks: 256,
            signups_per_source: Allowance::new(5, Duration::from_secs(600)),
        }
    }
}

/// What a second login of an online user does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginPolicy {
    /// The new login wins; the old connection is kicked when the new one logs in on its server.
    /// This is what fixes the original cim's "repeat login" lock-outs after a crash.
    #[default]
    Replace,
    /// The login fails with 409 while the user is online.
    Reject,
}

impl RouteConfig {
    /// Checks the values against each other; the error names the key to fix.
    pub fn validate(&self) -> cim_core::Result<()> {
        if let Some(token) = &self.admin_token
            && token.expose().len() < 32
        {
            return Err(cim_core::Error::config(
                "[route] admin_token is shorter than 32 bytes; use a long random value, e.g. \
                 the output of: openssl rand -hex 32",
            ));
        }
        if self.signups == SignupPolicy::Invitation && self.admin_token.is_none() {
            return Err(cim_core::Error::config(
                "[route] signups = \"invitation\" needs [route] admin_token: invitations are \
                 made with the admin API",
            ));
        }
        if !self.password_logins && !self.app_tokens.enabled() {
            return Err(cim_core::Error::config(
                "[route] password_logins = false needs [route.app_tokens]: with neither, no one \
                 could ever log in",
            ));
        }
        for (key, value) in [
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
            ("request_timeout", self.request_timeout),
            ("token_ttl", self.token_ttl),
        ] {
            if value.is_zero() {
                return Err(cim_core::Error::config(format!(
                    "[route] {key} must be longer than zero"
                )));
            }
        }
        Ok(())
    }
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            listen: "0.0.0.0:8080".to_string(),
            token_ttl: Duration::from_secs(24 * 60 * 60),
            login_policy: LoginPolicy::Replace,
            reachability_timeout: Duration::from_millis(500),
            reachability_cache: Duration::from_millis(250),
            max_page: 100,
            max_request_len: 64 * 1024,
            name: "route".to_string(),
            max_frame_len: cim_proto::DEFAULT_MAX_FRAME_LEN,
            discovery_interval: Duration::from_secs(2),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: None,
            client_address_header: None,
            signups: SignupPolicy::Open,
            admin_token: None,
            logins: LoginLimits::default(),
            password_logins: true,
            app_tokens: AppTokenConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_section_means_the_defaults() {
        let config: RouteConfig = serde_json::from_str("{}").expect("empty section");
        assert_eq!(config, RouteConfig::default());
        assert_eq!(config.listen, "0.0.0.0:8080");
        assert_eq!(config.login_policy, LoginPolicy::Replace);
    }

    #[test]
    fn durations_and_the_policy_are_written_for_humans() {
        let config: RouteConfig = serde_json::from_str(
            r#"{"token_ttl": "30m", "reachability_timeout": "250ms", "login_policy": "reject"}"#,
        )
        .expect("valid section");
        assert_eq!(config.token_ttl, Duration::from_secs(30 * 60));
        assert_eq!(config.reachability_timeout, Duration::from_millis(250));
        assert_eq!(config.login_policy, LoginPolicy::Reject);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_json::from_str::<RouteConfig>(r#"{"login_polcy": "reject"}"#)
            .expect_err("misspelt key");
        assert!(err.to_string().contains("login_polcy"), "{err}");
    }
}
