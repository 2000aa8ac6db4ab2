//! [`TinySessionStore`]: the adapter itself, written from the contract on
//! [`SessionStore`].
//!
//! How the contract maps onto one mutex and two maps:
//!
//! - **Liveness is per server.** The contract says a session lives as long as its server does,
//!   so the store remembers when each server last refreshed (or bound), not when each session
//!   did: a refresh is one map write however many users the server holds.
//! - **Expiry is lazy.** Nothing runs in the background. A session whose server has not
//!   refreshed within the TTL is simply treated as absent by every read; its entry stays in the
//!   map, invisible, until its server comes back or the store fills up and sweeps it.
//! - **No resurrection.** Server ids are stable across restarts, so a crashed server that comes
//!   back must not find its old sessions alive again: the first refresh or bind after a lapse
//!   drops whatever that server had.
//! - **Ordered listing.** `list_online` pages by user id, so the sessions live in a `BTreeMap`
//!   keyed by user id: a page is a range scan starting after the cursor, which is just the last
//!   user id of the previous page.
//! - **Counting is not offered.** With lazy expiry the map's length includes dead sessions, and an
//!   exact count would inspect every entry under the lock on each call. Rather than return a
//!   wrong number or quietly make every call slow, the store leaves `count_online` out of its
//!   capabilities and answers `Unsupported`, so callers, and the conformance suite, know.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use cim_core::{
    BindOutcome, BindPolicy, Cursor, Error, Page, Result, ServerId, Session, SessionCapabilities,
    SessionRef, SessionStore, UserId,
};
// Tokio's clock rather than std's, so tests can pause time and jump past the TTL.
use tokio::time::Instant;

use crate::TinyConfig;

/// What this store can do: list who is online, but not count them (see the module docs).
const CAPABILITIES: SessionCapabilities = {
    // `SessionCapabilities` is `#[non_exhaustive]` (cim-core may add capabilities later), so an
    // adapter cannot write it as a struct literal: start from nothing and switch on what this
    // store honours, so that a capability added later is never claimed by accident.
    let mut caps = SessionCapabilities::NONE;
    caps.list_online = true;
    caps
};

/// Online sessions in process memory, with per-server expiry: a small third-party
/// [`SessionStore`] registered as backend `tiny`.
///
/// Everything is lost when the process exits and nothing is shared between processes, so it
/// suits a single cim node. It lists online users but does not count them:
/// [`count_online`](SessionStore::count_online) fails with
/// [`Unsupported`](cim_core::ErrorKind::Unsupported), as its capabilities declare.
#[derive(Debug)]
pub struct TinySessionStore {
    max_sessions: usize,
    // A std mutex, not tokio's: no operation awaits while holding it, and it is cheaper.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    ttl: Duration,
    /// Every stored session, live or not yet swept, by user: a user has at most one.
    sessions: BTreeMap<UserId, Session>,
    /// When each server last proved it is alive (refresh or bind).
    refreshed: HashMap<ServerId, Instant>,
}

impl TinySessionStore {
    /// How long sessions outlive their server's last refresh when `[sessions] ttl` is not set.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

    /// An empty store whose servers must refresh at least once per `ttl`, holding at most
    /// `config.max_sessions` sessions. The factory behind `backend = "tiny"` rejects a zero TTL
    /// or limit from a config file; built directly, they expire or refuse everything.
    pub fn new(ttl: Duration, config: TinyConfig) -> Self {
        TinySessionStore {
            max_sessions: config.max_sessions,
            state: Mutex::new(State {
                ttl,
                sessions: BTreeMap::new(),
                refreshed: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        // A poisoned lock means an operation panicked halfway; the maps may disagree, so refuse
        // to serve rather than guess.
        self.state.lock().map_err(|_| {
            Error::internal(
                "the tiny session store was left inconsistent by a panic; restart the process",
            )
        })
    }
}

impl State {
    /// Whether `server` refreshed within the TTL.
    fn is_live(&self, server: &ServerId, now: Instant) -> bool {
        self.refreshed
            .get(server)
            .is_some_and(|at| now.duration_since(*at) < self.ttl)
    }

    /// The user's session, if its server is still live.
    fn live_session(&self, user: UserId, now: Instant) -> Option<&Session> {
        self.sessions
            .get(&user)
            .filter(|session| self.is_live(&session.server_id, now))
    }

    /// Records that `server` is alive. If it was not (it lapsed, restarted, or is new), the
    /// sessions it had expired with it, so they are dropped before it counts as live again.
    fn refresh(&mut self, server: &ServerId, now: Instant) {
        if !self.is_live(server, now) {
            self.sessions
                .retain(|_, session| session.server_id != *server);
        }
        self.refreshed.insert(server.clone(), now);
    }

    /// Drops every lapsed server and the sessions it left behind.
    fn sweep(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.refreshed.retain(|_, at| now.duration_since(*at) < ttl);
        let refreshed = &self.refreshed;
        self.sessions
            .retain(|_, session| refreshed.contains_key(&session.server_id));
    }
}

#[async_trait]
impl SessionStore for TinySessionStore {
    fn capabilities(&self) -> SessionCapabilities {
        CAPABILITIES
    }

    async fn bind(&self, session: Session, policy: BindPolicy) -> Result<BindOutcome> {
        let now = Instant::now();
        let mut state = self.lock()?;
        // Binding proves the server is alive, just as a refresh does.
        state.refresh(&session.server_id, now);

        let outcome = match state.live_session(session.user_id, now) {
            // Binding the very session that is bound is a harmless repeat under either policy.
            Some(current) if current.reference() == session.reference() => BindOutcome::Bound,
            Some(current) if policy == BindPolicy::Reject => {
                return Err(Error::already_exists(format!(
                    "user {} is already online on server {}; log out there first or bind with \
                     the replace policy",
                    current.user_id, current.server_id
                )));
            }
            Some(current) => BindOutcome::Replaced(current.clone()),
            None => BindOutcome::Bound,
        };

        // Only a user with no entry at all grows the map; replacing (even a dead entry) does not.
        if !state.sessions.contains_key(&session.user_id)
            && state.sessions.len() >= self.max_sessions
        {
            // The limit is on live sessions: reclaim what lapsed servers left before refusing.
            state.sweep(now);
            if state.sessions.len() >= self.max_sessions {
                return Err(Error::unavailable(format!(
                    "the tiny session store is full ({} sessions); retry when users log out, or \
                     raise [sessions] max_sessions",
                    self.max_sessions
                )));
            }
        }
        state.sessions.insert(session.user_id, session);
        Ok(outcome)
    }

    async fn get(&self, user: UserId) -> Result<Option<Session>> {
        let now = Instant::now();
        Ok(self.lock()?.live_session(user, now).cloned())
    }

    async fn unbind(&self, session: &SessionRef) -> Result<bool> {
        let now = Instant::now();
        let mut state = self.lock()?;
        // Compare-and-delete: a stale server's unbind must not remove a newer session.
        let is_current = state
            .live_session(session.user_id, now)
            .is_some_and(|current| current.reference() == *session);
        if is_current {
            state.sessions.remove(&session.user_id);
        }
        Ok(is_current)
    }

    async fn refresh_server(&self, server: &ServerId) -> Result<()> {
        let now = Instant::now();
        self.lock()?.refresh(server, now);
        Ok(())
    }

    async fn remove_server(&self, server: &ServerId) -> Result<u64> {
        let now = Instant::now();
        let mut state = self.lock()?;
        // A lapsed server's sessions had already expired: removing them removes nobody online.
        let was_live = state.is_live(server, now);
        let before = state.sessions.len();
        state
            .sessions
            .retain(|_, session| session.server_id != *server);
        state.refreshed.remove(server);
        let removed = before - state.sessions.len();
        Ok(if was_live { removed as u64 } else { 0 })
    }

    async fn list_online(&self, cursor: Option<&Cursor>, limit: u32) -> Result<Page<Session>> {
        if limit == 0 {
            return Err(Error::invalid_input(
                "list_online needs a limit of at least 1",
            ));
        }
        // The cursor is the user id the previous page ended with.
        let start = match cursor {
            Some(cursor) => Bound::Excluded(cursor.0.parse::<UserId>().map_err(|_| {
                Error::invalid_input(format!(
                    "{:?} is not a cursor this store handed out; start the listing again",
                    cursor.0
                ))
            })?),
            None => Bound::Unbounded,
        };
        let now = Instant::now();
        let state = self.lock()?;
        let mut live = state
            .sessions
            .range((start, Bound::Unbounded))
            .map(|(_, session)| session)
            .filter(|session| state.is_live(&session.server_id, now));
        let items: Vec<Session> = live.by_ref().take(limit as usize).cloned().collect();
        // Look one past the page, so the last page says it is the last.
        let next = match live.next() {
            Some(_) => items.last().map(|last| Cursor(last.user_id.to_string())),
            None => None,
        };
        Ok(Page { items, next })
    }

    async fn count_online(&self) -> Result<u64> {
        // Declared unsupported in CAPABILITIES: say so instead of returning a made-up number.
        Err(Error::unsupported("count_online").with_context("backend", "tiny"))
    }
}

#[cfg(test)]
mod tests {
    use cim_core::{ConnectionId, ErrorKind, Timestamp};

    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    fn session(user: u64, server: &str, connection: u64) -> Session {
        Session {
            user_id: UserId(user),
            server_id: ServerId::new(server).expect("valid server id"),
            connection_id: ConnectionId(connection),
            device: "test".to_string(),
            login_at: Timestamp::now(),
        }
    }

    fn store(max_sessions: usize) -> TinySessionStore {
        TinySessionStore::new(TTL, TinyConfig { max_sessions })
    }

    #[tokio::test]
    async fn a_full_store_refuses_new_users_but_lets_bound_ones_rebind() {
        let store = store(1);
        store
            .bind(session(1, "node-a", 10), BindPolicy::Reject)
            .await
            .expect("first bind fits");

        let err = store
            .bind(session(2, "node-a", 20), BindPolicy::Reject)
            .await
            .expect_err("a second user exceeds max_sessions");
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.is_retryable());

        let outcome = store
            .bind(session(1, "node-b", 11), BindPolicy::Replace)
            .await
            .expect("replacing takes no extra room");
        assert!(
            matches!(outcome, BindOutcome::Replaced(old) if old.connection_id == ConnectionId(10))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_makes_room_by_sweeping_lapsed_servers() {
        let store = store(1);
        store
            .bind(session(1, "node-a", 10), BindPolicy::Reject)
            .await
            .expect("bind");
        tokio::time::advance(TTL).await;

        store
            .bind(session(2, "node-b", 20), BindPolicy::Reject)
            .await
            .expect("node-a lapsed, so its session no longer takes room");
        assert_eq!(store.get(UserId(1)).await.expect("get"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_of_a_lapsed_server_stay_gone_when_it_comes_back() {
        let store = store(10);
        let server = ServerId::new("node-a").expect("valid");
        store
            .bind(session(1, "node-a", 10), BindPolicy::Reject)
            .await
            .expect("bind");

        tokio::time::advance(TTL).await;
        assert_eq!(
            store.get(UserId(1)).await.expect("get"),
            None,
            "expired with its server"
        );

        // The server restarts under the same id and resumes refreshing.
        store.refresh_server(&server).await.expect("refresh");
        assert_eq!(
            store.get(UserId(1)).await.expect("get"),
            None,
            "must not come back to life"
        );
    }

    #[tokio::test]
    async fn counting_is_unsupported_as_the_capabilities_declare() {
        let store = store(10);
        assert!(store.capabilities().list_online);
        assert!(!store.capabilities().count_online);
        let err = store.count_online().await.expect_err("not offered");
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    }
}
