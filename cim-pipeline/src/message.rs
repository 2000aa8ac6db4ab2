//! What enters the pipeline and what comes out: [`Sender`], [`SendRequest`], [`Accepted`].
//!
//! Each entry point translates its own form (a `Send` frame, an HTTP body, a schedule entry)
//! into these, so nothing past the entry point knows which transport a message came by.

use std::sync::Arc;

use cim_core::{ConversationId, Recipient, ScheduledMessage, StoredMessage, Timestamp, UserId};

/// Who sends: an authenticated user, as their token names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    /// The user's id.
    pub id: UserId,
    /// The user's name, shown to recipients.
    pub name: Arc<str>,
}

impl Sender {
    /// The user `id`, shown as `name`.
    pub fn new(id: UserId, name: impl Into<Arc<str>>) -> Self {
        Sender {
            id,
            name: name.into(),
        }
    }
}

/// A message as an entry point received it, not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    /// Who it is for.
    pub to: Recipient,
    /// The sender's idempotency key (1 to 128 bytes).
    pub client_msg_id: String,
    /// The text.
    pub body: String,
    /// When to deliver it, if later than now.
    pub deliver_at: Option<Timestamp>,
}

/// What the pipeline did with a message: what its acknowledgement says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Stored now, and queued for delivery.
    Stored {
        /// The stored message (for a duplicate: the one stored the first time).
        message: Arc<StoredMessage>,
        /// True when this was a retry of an earlier send with the same `client_msg_id`.
        duplicate: bool,
    },
    /// Kept until it is due.
    Scheduled {
        /// The schedule entry (for a duplicate: the one made the first time).
        entry: ScheduledMessage,
        /// True when this was a retry of an earlier send with the same `client_msg_id`.
        duplicate: bool,
    },
}

impl Accepted {
    /// The conversation the message belongs to.
    pub fn conversation(&self) -> ConversationId {
        match self {
            Accepted::Stored { message, .. } => message.conversation,
            Accepted::Scheduled { entry, .. } => entry.message.conversation(),
        }
    }
}
