//! The vocabulary of sending: who a message is for ([`Recipient`]), which conversation it lands
//! in ([`Conversation`]), what to send ([`Outgoing`]) and what the server answered
//! ([`SendReceipt`]).
//!
//! These mirror cim-core's model without depending on it: the SDK must not pull the server-side
//! crates into an application. The wire forms are the protocol's (`d:LOW:HIGH`, `g:GROUP`).

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use cim_proto::v1::{self, recipient};

use crate::error::{ClientError, Result};

/// Who a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Recipient {
    /// One user: a private message.
    User(u64),
    /// Every member of a group (the sender must be one).
    Group(u64),
    /// Every user online now: the built-in "all" group, conversation `g:0`.
    All,
}

impl Recipient {
    /// The wire form.
    pub(crate) fn to_proto(self) -> v1::Recipient {
        let to = match self {
            Recipient::User(user) => recipient::To::UserId(user),
            Recipient::Group(group) => recipient::To::GroupId(group),
            Recipient::All => recipient::To::All(true),
        };
        v1::Recipient { to: Some(to) }
    }
}

/// A conversation: a pair of users or a group. Sequence numbers count per conversation.
///
/// The text form (`Display` / `FromStr`) is the protocol's: `d:LOW:HIGH` or `g:GROUP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Conversation {
    /// The private conversation of two users, the lower id first.
    Direct {
        /// The lower user id.
        low: u64,
        /// The higher user id (equal to `low` for notes to oneself).
        high: u64,
    },
    /// A group's conversation; group 0 is the built-in "all" group.
    Group(u64),
}

impl Conversation {
    /// The conversation of the built-in "all" group.
    pub const ALL: Conversation = Conversation::Group(0);

    /// The private conversation between `a` and `b`, in either order.
    pub fn direct(a: u64, b: u64) -> Self {
        Conversation::Direct {
            low: a.min(b),
            high: a.max(b),
        }
    }

    /// For a private conversation that `me` is part of, the other user (`me` for notes to
    /// oneself); `None` for groups and for conversations without `me`.
    pub fn peer_of(&self, me: u64) -> Option<u64> {
        match *self {
            Conversation::Direct { low, high } if low == me => Some(high),
            Conversation::Direct { low, high } if high == me => Some(low),
            _ => None,
        }
    }

    /// The group, for a group conversation.
    pub fn group(&self) -> Option<u64> {
        match *self {
            Conversation::Group(group) => Some(group),
            Conversation::Direct { .. } => None,
        }
    }
}

impl fmt::Display for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conversation::Direct { low, high } => write!(f, "d:{low}:{high}"),
            Conversation::Group(group) => write!(f, "g:{group}"),
        }
    }
}

impl FromStr for Conversation {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = || {
            ClientError::InvalidInput(format!(
                "{s:?} is not a conversation (expected d:<user>:<user> or g:<group>)"
            ))
        };
        let number = |part: &str| part.parse::<u64>().map_err(|_| invalid());
        let mut parts = s.split(':');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("d"), Some(a), Some(b), None) => Ok(Conversation::direct(number(a)?, number(b)?)),
            (Some("g"), Some(group), None, None) => Ok(Conversation::Group(number(group)?)),
            _ => Err(invalid()),
        }
    }
}

/// A message to send: build it with [`Outgoing::to_user`], [`Outgoing::to_group`] or
/// [`Outgoing::to_all`], then optionally schedule it or fix its id.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use cim_client::Outgoing;
///
/// let reminder = Outgoing::to_user(42, "stand-up in 5 minutes")
///     .deliver_at(SystemTime::now() + Duration::from_secs(300));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub(crate) to: Recipient,
    pub(crate) body: String,
    pub(crate) deliver_at_ms: Option<i64>,
    pub(crate) client_msg_id: Option<String>,
}

impl Outgoing {
    /// A message to `recipient`.
    pub fn new(recipient: Recipient, body: impl Into<String>) -> Self {
        Outgoing {
            to: recipient,
            body: body.into(),
            deliver_at_ms: None,
            client_msg_id: None,
        }
    }

    /// A private message to a user.
    pub fn to_user(user_id: u64, body: impl Into<String>) -> Self {
        Outgoing::new(Recipient::User(user_id), body)
    }

    /// A message to every member of a group.
    pub fn to_group(group_id: u64, body: impl Into<String>) -> Self {
        Outgoing::new(Recipient::Group(group_id), body)
    }

    /// A message to every user online now (the "all" group).
    pub fn to_all(body: impl Into<String>) -> Self {
        Outgoing::new(Recipient::All, body)
    }

    /// Has the server keep the message and deliver it at `at` (kept across server restarts with a
    /// durable message store). A time in the past delivers at once.
    pub fn deliver_at(mut self, at: SystemTime) -> Self {
        let millis = match at.duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
            Err(_) => 0,
        };
        self.deliver_at_ms = Some(millis);
        self
    }

    /// Uses `id` (1 to 128 bytes, unique among your messages) instead of a random id. Sending
    /// again with the same id never stores the message twice: use it to retry after a
    /// [`ClientError::Timeout`] safely.
    pub fn client_msg_id(mut self, id: impl Into<String>) -> Self {
        self.client_msg_id = Some(id.into());
        self
    }

    /// The recipient.
    pub fn recipient(&self) -> Recipient {
        self.to
    }

    /// The text.
    pub fn body(&self) -> &str {
        &self.body
    }
}

/// A fresh client message id: 128 random bits in hex.
pub(crate) fn new_client_msg_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The server's answer to a send: the message is stored (or scheduled) and will not be lost.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendReceipt {
    /// Stored now and on its way to the recipients.
    Stored {
        /// The id the message was sent with.
        client_msg_id: String,
        /// The message's id.
        message_id: u64,
        /// Its conversation.
        conversation: Conversation,
        /// Its sequence in the conversation.
        seq: u64,
        /// When the server stored it (Unix milliseconds).
        sent_at: i64,
    },
    /// Kept by the server, to be delivered at the requested time.
    Scheduled {
        /// The id the message was sent with.
        client_msg_id: String,
        /// The schedule entry's id.
        scheduled_id: u64,
    },
}

impl SendReceipt {
    /// The id the message was sent with.
    pub fn client_msg_id(&self) -> &str {
        match self {
            SendReceipt::Stored { client_msg_id, .. }
            | SendReceipt::Scheduled { client_msg_id, .. } => client_msg_id,
        }
    }

    /// The stored message's id (`None` while scheduled).
    pub fn message_id(&self) -> Option<u64> {
        match self {
            SendReceipt::Stored { message_id, .. } => Some(*message_id),
            SendReceipt::Scheduled { .. } => None,
        }
    }

    /// The stored message's sequence (`None` while scheduled).
    pub fn seq(&self) -> Option<u64> {
        match self {
            SendReceipt::Stored { seq, .. } => Some(*seq),
            SendReceipt::Scheduled { .. } => None,
        }
    }

    /// The receipt a `SendAck` stands for.
    pub(crate) fn from_ack(ack: v1::SendAck) -> Result<Self> {
        if ack.scheduled_id != 0 {
            return Ok(SendReceipt::Scheduled {
                client_msg_id: ack.client_msg_id,
                scheduled_id: ack.scheduled_id,
            });
        }
        let conversation = ack.conversation.parse().map_err(|_| {
            ClientError::protocol(format!(
                "the server acknowledged {} with an invalid conversation {:?}",
                ack.client_msg_id, ack.conversation
            ))
        })?;
        Ok(SendReceipt::Stored {
            client_msg_id: ack.client_msg_id,
            message_id: ack.message_id,
            conversation,
            seq: ack.seq,
            sent_at: ack.sent_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_round_trip_through_their_text_form() {
        for conversation in [
            Conversation::direct(9, 3),
            Conversation::Group(7),
            Conversation::ALL,
        ] {
            let text = conversation.to_string();
            assert_eq!(text.parse::<Conversation>().expect("parses"), conversation);
        }
        assert_eq!(Conversation::direct(9, 3).to_string(), "d:3:9");
        for bad in ["", "d:1", "g:", "x:1", "d:1:2:3", "g:-1"] {
            assert!(bad.parse::<Conversation>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_peer_of_a_private_conversation_is_the_other_user() {
        let conversation = Conversation::direct(3, 9);
        assert_eq!(conversation.peer_of(3), Some(9));
        assert_eq!(conversation.peer_of(9), Some(3));
        assert_eq!(conversation.peer_of(4), None);
        assert_eq!(Conversation::Group(2).peer_of(3), None);
    }

    #[test]
    fn client_message_ids_are_random_128_bit_hex() {
        let a = new_client_msg_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_client_msg_id());
    }

    #[test]
    fn acks_become_stored_or_scheduled_receipts() {
        let stored = SendReceipt::from_ack(v1::SendAck {
            client_msg_id: "c1".into(),
            message_id: 5,
            conversation: "d:1:2".into(),
            seq: 3,
            sent_at_ms: 1000,
            scheduled_id: 0,
        })
        .expect("valid");
        assert_eq!(stored.message_id(), Some(5));
        assert_eq!(stored.seq(), Some(3));
        let scheduled = SendReceipt::from_ack(v1::SendAck {
            client_msg_id: "c2".into(),
            scheduled_id: 8,
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(
            scheduled,
            SendReceipt::Scheduled {
                client_msg_id: "c2".into(),
                scheduled_id: 8
            }
        );
    }
}
