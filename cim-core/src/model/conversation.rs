//! Conversations: the unit of message ordering.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{GroupId, UserId};
use crate::{Error, Result};

/// Who a message is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recipient {
    /// One user: a private (direct) message.
    User(UserId),
    /// Every member of a group.
    Group(GroupId),
}

/// A conversation: a pair of users, or a group. Sequence numbers are assigned per conversation.
///
/// A direct conversation is the same whichever of its two users sends: the constructor orders
/// the pair. Its text form, used in URLs and logs, is `d:<low>:<high>` or `g:<group>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConversationId {
    /// The private conversation between two users, the lower id first.
    Direct {
        /// The lower of the two user ids.
        low: UserId,
        /// The higher of the two user ids (equal to `low` for notes to oneself).
        high: UserId,
    },
    /// A group's conversation.
    Group(GroupId),
}

impl ConversationId {
    /// The direct conversation between `a` and `b`, in either order.
    pub fn direct(a: UserId, b: UserId) -> Self {
        ConversationId::Direct {
            low: a.min(b),
            high: a.max(b),
        }
    }

    /// The conversation a message from `sender` to `to` belongs to.
    pub fn for_message(sender: UserId, to: Recipient) -> Self {
        match to {
            Recipient::User(user) => ConversationId::direct(sender, user),
            Recipient::Group(group) => ConversationId::Group(group),
        }
    }

    /// Whether `user` is one of the two users of a direct conversation (always false for groups:
    /// group membership lives in the [`AccountStore`](crate::AccountStore)).
    pub fn is_direct_participant(&self, user: UserId) -> bool {
        matches!(self, ConversationId::Direct { low, high } if *low == user || *high == user)
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConversationId::Direct { low, high } => write!(f, "d:{low}:{high}"),
            ConversationId::Group(group) => write!(f, "g:{group}"),
        }
    }
}

impl FromStr for ConversationId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = || {
            Error::invalid_input(format!(
                "{s:?} is not a conversation id (expected d:<user>:<user> or g:<group>)"
            ))
        };
        let mut parts = s.split(':');
        let parsed = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("d"), Some(a), Some(b), None) => ConversationId::direct(
                a.parse().map_err(|_| invalid())?,
                b.parse().map_err(|_| invalid())?,
            ),
            (Some("g"), Some(g), None, None) => {
                ConversationId::Group(g.parse().map_err(|_| invalid())?)
            }
            _ => return Err(invalid()),
        };
        Ok(parsed)
    }
}

impl Serialize for ConversationId {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConversationId {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_conversation_is_the_same_from_both_sides() {
        let ab = ConversationId::for_message(UserId(7), Recipient::User(UserId(3)));
        let ba = ConversationId::for_message(UserId(3), Recipient::User(UserId(7)));
        assert_eq!(ab, ba);
        assert_eq!(ab.to_string(), "d:3:7");
        assert!(ab.is_direct_participant(UserId(7)));
        assert!(!ab.is_direct_participant(UserId(4)));
    }

    #[test]
    fn text_form_round_trips_and_rejects_garbage() {
        for conv in [
            ConversationId::direct(UserId(1), UserId(2)),
            ConversationId::Group(GroupId(9)),
        ] {
            assert_eq!(
                conv.to_string()
                    .parse::<ConversationId>()
                    .expect("round trip"),
                conv
            );
        }
        for bad in ["", "d:1", "g:", "x:1", "d:1:2:3", "g:-1"] {
            assert!(bad.parse::<ConversationId>().is_err(), "{bad:?} accepted");
        }
    }
}
