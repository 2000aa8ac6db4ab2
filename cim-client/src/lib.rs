//! # cim-client
//!
//! The client SDK of cim: log in through the route, keep one TCP connection to the server the
//! route chose, send messages over it, receive them as a stream of [`Event`]s, and survive the
//! loss of that connection or of the whole server.
//!
//! ```no_run
//! use cim_client::{ClientBuilder, Event};
//!
//! # async fn demo() -> Result<(), cim_client::ClientError> {
//! let client = ClientBuilder::new("http://127.0.0.1:8080")
//!     .credentials("alice", "secret")
//!     .connect()
//!     .await?;
//! let mut events = client.events().expect("the first call gets the stream");
//! let receipt = client.send_to_user(2, "hi bob").await?;
//! println!("stored as {:?}", receipt.message_id());
//! while let Some(event) = events.recv().await {
//!     if let Event::Message(message) = event {
//!         println!("{}: {}", message.sender_name, message.body);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! What the SDK guarantees:
//! - **Exactly once for the application.** The server delivers at least once; the client drops
//!   duplicates and acknowledges what it holds, so a message is neither lost across reconnects
//!   nor shown twice (see [Exactly once](#exactly-once) for the one limitation).
//! - **Sends are acknowledged.** [`Client::send`] resolves when the server has stored the
//!   message. A send issued while reconnecting waits and goes out on the new connection; a send
//!   whose acknowledgement was lost goes out again with the same id, which the server never
//!   stores twice.
//! - **Reconnection** with exponential backoff and full jitter ([`ReconnectPolicy`]), logging in
//!   again through the route so that a dead server is replaced by a live one. A kick because the
//!   user logged in elsewhere or logged out ends the client instead.
//!
//! # Exactly once
//!
//! The client hands each message to the application once (the server may send one again after
//! a reconnect) and acknowledges up to the highest sequence the server delivered in each
//! conversation. That is safe because the server delivers a conversation without holes on a
//! connection: gaps below a delivery are the user's own messages or from before they joined.
//!
//! The SDK depends on `cim-proto` and an HTTP client only: embedding it never compiles the
//! server's backends. Route URLs are plain `http://` unless the application enables a TLS
//! feature of `reqwest` itself.

mod backoff;
mod builder;
mod client;
mod connection;
mod dedupe;
mod error;
mod event;
mod http;
mod message;
#[cfg(feature = "terminal")]
pub mod terminal;

pub use backoff::ReconnectPolicy;
pub use builder::ClientBuilder;
pub use client::{Client, ClientInfo};
pub use error::{ClientError, Result};
pub use event::{ConnectionState, DisconnectReason, Event, Events, IncomingMessage};
pub use message::{Conversation, Outgoing, Recipient, SendReceipt};

/// Why the server closed a connection (the protocol's enum).
pub use cim_proto::KickReason;
/// The route's JSON bodies that the HTTP helpers return.
pub use cim_proto::http::{
    GroupAccess, GroupHistory, GroupRole, GroupView, LoginResponse, MemberView, MessageView,
    OnlineUser, PageOf, ServerAddress, ServerView, UserView,
};
