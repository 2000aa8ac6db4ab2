//! What the client tells the application: messages, connection state changes, kicks.
//!
//! Events flow through one bounded channel, in order, to one [`Events`] stream. When the
//! application falls behind, the connection stops reading from the server (the server then
//! buffers, and eventually applies its own flow control) instead of buffering without bound or
//! dropping messages. So an application must keep consuming its events, concurrently with
//! awaiting sends; dropping the [`Events`] stream discards further events.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use cim_proto::KickReason;
use futures::Stream;
use tokio::sync::mpsc;

use crate::message::Conversation;

/// Something the application should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message for this user, delivered to the application exactly once.
    Message(IncomingMessage),
    /// The connection changed state.
    State(ConnectionState),
    /// The server ended the session for good (the user logged in elsewhere, or logged out): the
    /// client does not reconnect. A `State(Disconnected)` follows. Kicks after which the client
    /// reconnects (server shutdown, idle) show as `State(Reconnecting)` instead.
    Kicked {
        /// Why.
        reason: KickReason,
        /// The server's explanation.
        text: String,
    },
    /// A message for this user was stored but can never be delivered (its frame exceeds the
    /// server's frame limit, after a configuration change for example). The server skips it;
    /// show the user that something is missing.
    Undeliverable {
        /// The message's id.
        message_id: u64,
        /// Its conversation.
        conversation: Conversation,
        /// Its sequence in the conversation.
        seq: u64,
        /// The server's explanation.
        text: String,
    },
}

/// A message received from another user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The message's id.
    pub message_id: u64,
    /// Its conversation: the private conversation with the sender, or a group.
    pub conversation: Conversation,
    /// Its sequence in the conversation.
    pub seq: u64,
    /// Who sent it.
    pub sender_id: u64,
    /// The sender's name.
    pub sender_name: String,
    /// The text.
    pub body: String,
    /// When the server stored it (Unix milliseconds).
    pub sent_at: i64,
    /// Whether the message was waiting for this user rather than delivered live: sent before the
    /// current connection logged in (offline messages, and messages missed during a reconnect).
    ///
    /// The protocol does not mark the end of the post-login sync, so this compares the server's
    /// `sent_at` with this machine's clock at login: with clocks skewed by `d`, a message sent
    /// within `d` of the login can be misclassified. It is informational; delivery and
    /// deduplication do not depend on it.
    pub offline: bool,
}

/// The state of the client's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Logging in at the route and connecting to the server it chose.
    Connecting,
    /// Logged in on a server; messages flow.
    Connected {
        /// The server's id.
        server_id: String,
    },
    /// The connection was lost; the next attempt starts after a delay. Sends are queued.
    Reconnecting {
        /// The attempt about to be made (1-based, counted since the last stable connection).
        attempt: u32,
        /// The delay before it.
        after: Duration,
    },
    /// The client stopped for good; queued sends failed. Connect a new client to continue.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
}

/// Why a client stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The application closed it ([`Client::close`](crate::Client::close), or every handle
    /// was dropped).
    Closed,
    /// The application logged out ([`Client::logout`](crate::Client::logout)).
    LoggedOut,
    /// The server ended the session (see [`Event::Kicked`]).
    Kicked(KickReason),
    /// Reconnecting failed as many times in a row as the policy allows.
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last_error: String,
    },
    /// Logging in again was refused (for example the password changed); retrying cannot help.
    Rejected(String),
}

/// The client's events, in order: a [`Stream`], or call [`Events::recv`].
///
/// Ends after the client stopped (the last event is `State(Disconnected)`).
#[derive(Debug)]
pub struct Events {
    receiver: mpsc::Receiver<Event>,
}

impl Events {
    pub(crate) fn new(receiver: mpsc::Receiver<Event>) -> Self {
        Events { receiver }
    }

    /// The next event; `None` once the client stopped and every event was received.
    pub async fn recv(&mut self) -> Option<Event> {
        self.receiver.recv().await
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.receiver.poll_recv(cx)
    }
}
