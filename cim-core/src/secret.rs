//! Secrets in configuration: kept out of logs and `Debug` output.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A string that must not be shown: a password, or a URL that may carry one.
///
/// `Debug` and `Display` print a redacted form: for a URL, the user name stays and the password
/// becomes `***` (`redis://app:***@db:6379/0`); anything else prints as `***`. Use
/// [`SecretString::expose`] where the real value is needed (to connect).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        SecretString(value.into())
    }

    /// The real value.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The redacted form.
    pub fn redacted(&self) -> String {
        redact_url(&self.0).unwrap_or_else(|| "***".to_string())
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        SecretString(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        SecretString(value.to_string())
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `scheme://user:***@rest` for a URL with credentials, the URL unchanged if it has none, and
/// `None` for something that is not a URL.
fn redact_url(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return Some(text.to_string());
    };
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    Some(format!("{scheme}://{user}:***@{host}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let url = SecretString::new("postgres://app:hunter2@db:5432/cim?sslmode=off");
        assert_eq!(
            url.to_string(),
            "postgres://app:***@db:5432/cim?sslmode=off"
        );
        assert!(!format!("{url:?}").contains("hunter2"));
        assert_eq!(
            url.expose(),
            "postgres://app:hunter2@db:5432/cim?sslmode=off"
        );
        assert_eq!(
            SecretString::new("redis://h:1/0").to_string(),
            "redis://h:1/0"
        );
        assert_eq!(SecretString::new("hunter2").to_string(), "***");
        assert_eq!(
            SecretString::new("redis://:pw@h").to_string(),
            "redis://:***@h"
        );
    }
}
