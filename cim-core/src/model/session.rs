//! Sessions: which server and connection a logged-in user is on.

use serde::{Deserialize, Serialize};

use super::{ConnectionId, ServerId, Timestamp, UserId};

/// A logged-in user's session: the user is online on `server_id` over `connection_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The user.
    pub user_id: UserId,
    /// The server holding the user's connection.
    pub server_id: ServerId,
    /// The connection on that server.
    pub connection_id: ConnectionId,
    /// A free-form device label given by the client (`"cli"`, `"android"`...).
    pub device: String,
    /// When the user logged in.
    pub login_at: Timestamp,
}

impl Session {
    /// The identity used by compare-and-delete: user, server and connection.
    pub fn reference(&self) -> SessionRef {
        SessionRef {
            user_id: self.user_id,
            server_id: self.server_id.clone(),
            connection_id: self.connection_id,
        }
    }
}

/// A session's identity. Unbinding compares it with the stored session and deletes only on a
/// match, so a stale server can never remove a newer session of the same user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionRef {
    /// The user.
    pub user_id: UserId,
    /// The server that bound the session.
    pub server_id: ServerId,
    /// The connection the session was bound to.
    pub connection_id: ConnectionId,
}

/// What [`SessionStore::bind`](crate::SessionStore::bind) does when the user already has a live
/// session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindPolicy {
    /// Keep the existing session and fail with [`ErrorKind::AlreadyExists`](crate::ErrorKind).
    Reject,
    /// Replace the existing session; the caller kicks the old connection.
    Replace,
}

/// What a successful bind did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindOutcome {
    /// The user had no live session; the new one is bound.
    Bound,
    /// The user's previous live session was replaced; here it is, so its connection can be told.
    Replaced(Session),
}
