//! [`SessionStore`]: who is online, and on which server.

use async_trait::async_trait;

use crate::{BindOutcome, BindPolicy, Cursor, Page, Result, ServerId, Session, SessionRef, UserId};

/// What a [`SessionStore`] backend can honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionCapabilities {
    /// [`SessionStore::list_online`] is available.
    pub list_online: bool,
    /// [`SessionStore::count_online`] is available.
    pub count_online: bool,
}

impl SessionCapabilities {
    /// Nothing optional: start from this and switch on what the backend honours, so that a
    /// capability added to cim later is never claimed by accident.
    pub const NONE: SessionCapabilities = SessionCapabilities {
        list_online: false,
        count_online: false,
    };

    /// Everything.
    pub const ALL: SessionCapabilities = SessionCapabilities {
        list_online: true,
        count_online: true,
    };
}

/// Who is online, and on which server and connection.
///
/// A user has at most one live session.
///
/// # Contract
///
/// - **Liveness.** A session lives as long as its server does. A server proves it is alive by
///   calling [`refresh_server`](Self::refresh_server) (or binding a session) at least once per
///   the store's TTL (`[sessions] ttl`). When a server stops, after a crash for example, all its
///   sessions expire within the TTL (plus the backend's tolerance, at most one more TTL): they are
///   no longer returned, listed or counted, and the users can bind again under
///   [`BindPolicy::Reject`]. This is what keeps a crash from locking users out.
/// - **Atomic bind.** [`bind`](Self::bind) is atomic per user: of concurrent binds of one user
///   under `Reject`, exactly one succeeds and the others fail with
///   [`AlreadyExists`](crate::ErrorKind::AlreadyExists); under `Replace`, the last writer wins and
///   each replaced session is returned to exactly one caller. Binding the very session that is
///   already bound (same [`SessionRef`]) succeeds with [`BindOutcome::Bound`] under either policy.
/// - **Compare-and-delete.** [`unbind`](Self::unbind) removes the session only if the stored one
///   has the same user, server and connection, and says whether it did. A stale server can never
///   remove a newer session.
/// - **Listing.** [`list_online`](Self::list_online) pages through live sessions ordered by user
///   id with an opaque cursor. A walk through all pages returns every session that was live for
///   the whole walk exactly once, even while others bind and unbind. Backends keep an index for
///   it: no full key-space scan.
/// - **Bulk removal.** [`remove_server`](Self::remove_server) removes every session of a server
///   at once (for a server known to be dead) and returns how many it removed.
/// - **Errors.** `Unavailable` / `Timeout` for an unreachable backend, `InvalidInput` for a limit
///   of 0, `Unsupported` for listing or counting outside the capabilities.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// What this backend can honour.
    fn capabilities(&self) -> SessionCapabilities;

    /// Binds `session` to its user, resolving a live existing session with `policy`.
    async fn bind(&self, session: Session, policy: BindPolicy) -> Result<BindOutcome>;

    /// The user's live session, if any.
    async fn get(&self, user: UserId) -> Result<Option<Session>>;

    /// The live sessions of those of `users` that are online, in no particular order.
    async fn get_many(&self, users: &[UserId]) -> Result<Vec<Session>> {
        let mut sessions = Vec::new();
        for user in users {
            if let Some(session) = self.get(*user).await? {
                sessions.push(session);
            }
        }
        Ok(sessions)
    }

    /// Removes the session if it is still the one identified by `session`; true if it was.
    async fn unbind(&self, session: &SessionRef) -> Result<bool>;

    /// Keeps `server`'s sessions alive for another TTL.
    async fn refresh_server(&self, server: &ServerId) -> Result<()>;

    /// Removes every session of `server`; returns how many.
    async fn remove_server(&self, server: &ServerId) -> Result<u64>;

    /// One page of live sessions ordered by user id, at most `limit` (at least 1) long.
    async fn list_online(&self, cursor: Option<&Cursor>, limit: u32) -> Result<Page<Session>>;

    /// How many users are online.
    async fn count_online(&self) -> Result<u64>;
}
