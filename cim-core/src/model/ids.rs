//! Identifiers and the two ordered quantities (sequence numbers and timestamps).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

macro_rules! numeric_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self> {
                s.parse::<u64>().map($name).map_err(|_| {
                    Error::invalid_input(format!("{:?} is not a valid {}", s, $what))
                })
            }
        }
    };
}

numeric_id!(
    /// A user's id, assigned by the [`AccountStore`](crate::AccountStore); never reused.
    UserId,
    "user id"
);
numeric_id!(
    /// A group's id, assigned by the [`AccountStore`](crate::AccountStore); never reused.
    GroupId,
    "group id"
);
numeric_id!(
    /// A message's id, assigned by the [`MessageStore`](crate::MessageStore); unique in the store.
    MessageId,
    "message id"
);
numeric_id!(
    /// A client connection's id, chosen by the server that holds it.
    ///
    /// It must be unique among the connections a server id ever had, also across restarts of that
    /// server (cim-server draws them at random), because it is half of a session's identity: a
    /// compare-and-delete with an old connection id must never remove a newer session.
    ConnectionId,
    "connection id"
);
numeric_id!(
    /// A scheduled message's id, assigned by the [`MessageStore`](crate::MessageStore).
    ScheduledId,
    "scheduled message id"
);
numeric_id!(
    /// A message's position in its conversation: 1 for the first message, then +1 for each
    /// message, with no gaps. 0 means "before the first message".
    Seq,
    "sequence number"
);

impl GroupId {
    /// The built-in "all" group: a message to it goes to every user online at the time (the
    /// original cim's group chat). Stores never assign it: their group ids start at 1.
    pub const ALL: GroupId = GroupId(0);
}

impl Seq {
    /// "Before the first message": the cursor of a user who acknowledged nothing yet.
    pub const ZERO: Seq = Seq(0);

    /// The sequence after this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl Default for Seq {
    fn default() -> Self {
        Seq::ZERO
    }
}

/// A cim server's id: chosen by the server (from config, or generated at first start), stable
/// across its restarts. At most 128 bytes of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServerId(String);

impl ServerId {
    /// The longest server id accepted, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validates `id`: 1 to [`Self::MAX_LEN`] bytes of ASCII letters, digits, `.`, `_` or `-`.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if id.is_empty() || id.len() > Self::MAX_LEN || !id.chars().all(valid_char) {
            return Err(Error::invalid_input(format!(
                "server id {id:?} must be 1 to {} characters of letters, digits, '.', '_' or '-'",
                Self::MAX_LEN
            )));
        }
        Ok(ServerId(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ServerId {
    type Error = Error;

    fn try_from(value: String) -> Result<Self> {
        ServerId::new(value)
    }
}

impl From<ServerId> for String {
    fn from(id: ServerId) -> String {
        id.0
    }
}

impl FromStr for ServerId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        ServerId::new(s)
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Wall-clock time in milliseconds since the Unix epoch (UTC).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// This time plus `d` (saturating).
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// This time minus `d` (saturating).
    pub fn minus(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_id_rejects_empty_long_and_odd_characters() {
        assert!(ServerId::new("node-1.eu_west").is_ok());
        for bad in ["", "a b", "a/b", "ü", &"x".repeat(129)] {
            let err = ServerId::new(bad).expect_err(bad);
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn ids_parse_from_strings_with_typed_errors() {
        assert_eq!("42".parse::<UserId>().expect("parses"), UserId(42));
        let err = "x42".parse::<UserId>().expect_err("not a number");
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        assert!(err.message().contains("user id"));
    }
}
