//! Messages: what a sender submits, what the store keeps, and how history is asked for.

use serde::{Deserialize, Serialize};

use super::{ConversationId, MessageId, Recipient, ScheduledId, Seq, Timestamp, UserId};
use crate::{Error, Result};

/// A message as submitted by its sender, before the store gives it an id and a sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    /// Who sends it.
    pub sender: UserId,
    /// Who it is for.
    pub to: Recipient,
    /// The sender's own id for this message, unique per sender: the idempotency key. A retry
    /// with the same key returns the first append's result instead of storing a duplicate.
    pub client_msg_id: String,
    /// The text.
    pub body: String,
    /// When the sender sent it (server time at receipt).
    pub sent_at: Timestamp,
}

impl NewMessage {
    /// The longest `client_msg_id` accepted, in bytes.
    pub const MAX_CLIENT_MSG_ID_LEN: usize = 128;

    /// Checks the fields every store relies on: a non-empty `client_msg_id` of at most
    /// [`Self::MAX_CLIENT_MSG_ID_LEN`] bytes, and no NUL character in it or in the body (some
    /// databases cannot store one). Stores call this first in `append` and `schedule`. (Body
    /// size limits are the pipeline's, `[limits] max_body_len`.)
    pub fn validate(&self) -> Result<()> {
        if self.client_msg_id.is_empty() || self.client_msg_id.len() > Self::MAX_CLIENT_MSG_ID_LEN {
            return Err(Error::invalid_input(format!(
                "client_msg_id must be 1 to {} bytes, got {}",
                Self::MAX_CLIENT_MSG_ID_LEN,
                self.client_msg_id.len()
            )));
        }
        if self.client_msg_id.contains('\0') || self.body.contains('\0') {
            return Err(Error::invalid_input(
                "the message contains a NUL character; remove it",
            ));
        }
        Ok(())
    }

    /// The conversation this message belongs to.
    pub fn conversation(&self) -> ConversationId {
        ConversationId::for_message(self.sender, self.to)
    }
}

/// A stored message: the submitted one plus its id and its place in the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Unique in the store.
    pub id: MessageId,
    /// The conversation it belongs to.
    pub conversation: ConversationId,
    /// Its position in the conversation (1, 2, 3... with no gaps).
    pub seq: Seq,
    /// Who sent it.
    pub sender: UserId,
    /// Who it is for.
    pub to: Recipient,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// The text.
    pub body: String,
    /// When it was sent.
    pub sent_at: Timestamp,
}

/// The result of [`MessageStore::append`](crate::MessageStore::append).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stored message (for a duplicate: the one stored the first time).
    pub message: StoredMessage,
    /// True when this append was a retry of an earlier one (same sender and `client_msg_id`)
    /// and nothing new was stored.
    pub duplicate: bool,
}

/// The result of [`MessageStore::schedule`](crate::MessageStore::schedule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    /// The schedule entry (for a duplicate: the one made the first time).
    pub entry: ScheduledMessage,
    /// True when this was a retry of an earlier schedule (same sender and `client_msg_id`) and
    /// nothing new was kept.
    pub duplicate: bool,
}

/// Which part of a conversation's history to return. Results are always in ascending sequence
/// order and hold at most `limit` messages:
///
/// - neither bound: the latest `limit` messages;
/// - `after` only: the first `limit` messages with a sequence above `after`;
/// - `before` only: the last `limit` messages with a sequence below `before`;
/// - both: the first `limit` messages strictly between the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// Only messages with a sequence number strictly below this.
    pub before: Option<Seq>,
    /// Only messages with a sequence number strictly above this.
    pub after: Option<Seq>,
    /// At most this many messages (must be at least 1).
    pub limit: u32,
}

impl HistoryQuery {
    /// The latest `limit` messages.
    pub fn latest(limit: u32) -> Self {
        HistoryQuery {
            limit,
            ..Default::default()
        }
    }

    /// The `limit` messages after `seq`.
    pub fn after(seq: Seq, limit: u32) -> Self {
        HistoryQuery {
            after: Some(seq),
            limit,
            ..Default::default()
        }
    }

    /// The `limit` messages before `seq`.
    pub fn before(seq: Seq, limit: u32) -> Self {
        HistoryQuery {
            before: Some(seq),
            limit,
            ..Default::default()
        }
    }
}

/// A message kept until it is due, then appended by whichever server claims it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledMessage {
    /// The schedule entry's id.
    pub id: ScheduledId,
    /// The message to append when due. Its `client_msg_id` makes the eventual append idempotent,
    /// so a claim that expires after the append but before
    /// [`finish_scheduled`](crate::MessageStore::finish_scheduled) never stores it twice.
    pub message: NewMessage,
    /// When it is due.
    pub deliver_at: Timestamp,
}
