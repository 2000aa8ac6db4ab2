//! [`MemorySessionStore`]: who is online, in process memory.
//!
//! Sessions live as long as their server's heartbeat, not their own: a server proves it is alive
//! with `refresh_server` (or a bind), and when its deadline passes all its sessions vanish at once.
//! That is what keeps a crashed node from locking its users out, and it costs one deadline per
//! server instead of one per session.
//!
//! Expired sessions are purged lazily, at the start of every operation, under the same lock as
//! the operation itself; deadlines are kept in a set ordered by time, so a purge only looks at the
//! servers that actually lapsed. With no background task there is nothing to own or stop, and
//! nothing can observe a session between its expiry and its purge. Deadlines use
//! [`tokio::time::Instant`], so tests can pause and advance time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::time::Instant;

use crate::registry::{BackendOptions, BuildFuture, SessionStoreFactory};
use crate::{
    BindOutcome, BindPolicy, Cursor, Error, Page, Result, ServerId, Session, SessionCapabilities,
    SessionRef, SessionStore, UserId,
};

/// The server TTL when `[sessions] ttl` is not set.
const DEFAULT_TTL: Duration = Duration::from_secs(30);

inventory::submit! {
    SessionStoreFactory::new(
        "memory",
        "in-process memory (single node; for tests and standalone)",
        build,
    )
}

/// The backend keys of `[sessions] backend = "memory"`: none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemorySessionConfig {}

fn build(options: BackendOptions) -> BuildFuture<dyn SessionStore> {
    Box::pin(async move {
        let MemorySessionConfig {} = options.parse()?;
        let ttl = options.ttl().unwrap_or(DEFAULT_TTL);
        if ttl.is_zero() {
            return Err(Error::config(
                "[sessions] ttl must be longer than zero (for example \"30s\")",
            ));
        }
        Ok(Arc::new(MemorySessionStore::new(ttl)) as Arc<dyn SessionStore>)
    })
}

/// A [`SessionStore`] in process memory: single node, nothing survives the process.
///
/// A server's sessions live until `ttl` after its last [`refresh_server`] or bind. Listing and
/// counting are supported.
///
/// [`refresh_server`]: SessionStore::refresh_server
pub struct MemorySessionStore {
    ttl: Duration,
    state: Mutex<State>,
}

impl MemorySessionStore {
    /// A store whose sessions outlive their server's last heartbeat by `ttl`.
    pub fn new(ttl: Duration) -> MemorySessionStore {
        MemorySessionStore {
            ttl,
            state: Mutex::new(State::default()),
        }
    }

    /// The server TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The state, with every expired session already purged.
    fn live_state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a panic elsewhere is no reason
        // to stop serving it.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.purge_expired(Instant::now());
        state
    }
}

impl std::fmt::Debug for MemorySessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySessionStore")
            .field("ttl", &self.ttl)
            .field("online", &self.live_state().by_user.len())
            .finish()
    }
}

#[async_trait]
impl SessionStore for MemorySessionStore {
    fn capabilities(&self) -> SessionCapabilities {
        SessionCapabilities::ALL
    }

    async fn bind(&self, session: Session, policy: BindPolicy) -> Result<BindOutcome> {
        let mut state = self.live_state();
        // Any bind, even a rejected one, proves its server alive.
        state.refresh(&session.server_id, Instant::now() + self.ttl);
        let outcome = match state.by_user.get(&session.user_id) {
            Some(existing) if existing.reference() == session.reference() => BindOutcome::Bound,
            Some(existing) if policy == BindPolicy::Reject => {
                return Err(Error::already_exists(format!(
                    "user {} is already online on server {}; unbind that session first or bind \
                     with the replace policy",
                    existing.user_id, existing.server_id
                )));
            }
            Some(_) => match state.remove(session.user_id) {
                Some(old) => BindOutcome::Replaced(old),
                None => BindOutcome::Bound,
            },
            None => BindOutcome::Bound,
        };
        state.insert(session);
        Ok(outcome)
    }

    async fn get(&self, user: UserId) -> Result<Option<Session>> {
        Ok(self.live_state().by_user.get(&user).cloned())
    }

    async fn get_many(&self, users: &[UserId]) -> Result<Vec<Session>> {
        let state = self.live_state();
        Ok(users
            .iter()
            .filter_map(|user| state.by_user.get(user).cloned())
            .collect())
    }

    async fn unbind(&self, session: &SessionRef) -> Result<bool> {
        let mut state = self.live_state();
        let matches = state
            .by_user
            .get(&session.user_id)
            .is_some_and(|stored| stored.reference() == *session);
        if matches {
            state.remove(session.user_id);
        }
        Ok(matches)
    }

    async fn refresh_server(&self, server: &ServerId) -> Result<()> {
        self.live_state().refresh(server, Instant::now() + self.ttl);
        Ok(())
    }

    async fn remove_server(&self, server: &ServerId) -> Result<u64> {
        Ok(self.live_state().forget_server(server))
    }

    async fn list_online(&self, cursor: Option<&Cursor>, limit: u32) -> Result<Page<Session>> {
        if limit == 0 {
            return Err(Error::invalid_input(
                "list_online needs a limit of at least 1",
            ));
        }
        let after = cursor.map(parse_cursor).transpose()?;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let state = self.live_state();
        let mut sessions = state
            .by_user
            .range((start, Bound::Unbounded))
            .map(|(_, session)| session);
        let items: Vec<Session> = sessions
            .by_ref()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .cloned()
            .collect();
        let next = match (items.last(), sessions.next()) {
            (Some(last), Some(_)) => Some(Cursor(last.user_id.to_string())),
            _ => None,
        };
        Ok(Page { items, next })
    }

    async fn count_online(&self) -> Result<u64> {
        Ok(u64::try_from(self.live_state().by_user.len()).unwrap_or(u64::MAX))
    }
}

/// A cursor is the last user id of the previous page, in decimal.
fn parse_cursor(cursor: &Cursor) -> Result<UserId> {
    cursor.0.parse::<u64>().map(UserId).map_err(|_| {
        Error::invalid_input(format!(
            "cursor {:?} was not returned by this session store; list again without a cursor",
            cursor.0
        ))
    })
}

/// The sessions and the heartbeats that keep them alive.
///
/// Invariants: every session's user is in its server's `by_server` set and nowhere else; every
/// server with a session has a deadline; `deadlines` and `expiries` hold the same pairs.
#[derive(Default)]
struct State {
    by_user: BTreeMap<UserId, Session>,
    by_server: HashMap<ServerId, BTreeSet<UserId>>,
    deadlines: HashMap<ServerId, Instant>,
    /// The deadlines again, ordered by time, so a purge stops at the first one still ahead.
    expiries: BTreeSet<(Instant, ServerId)>,
}

impl State {
    /// Removes the sessions of every server whose deadline has passed.
    fn purge_expired(&mut self, now: Instant) {
        while self
            .expiries
            .first()
            .is_some_and(|(deadline, _)| *deadline <= now)
        {
            if let Some((_, server)) = self.expiries.pop_first() {
                self.deadlines.remove(&server);
                self.remove_sessions_of(&server);
            }
        }
    }

    /// Moves `server`'s deadline to `deadline`.
    fn refresh(&mut self, server: &ServerId, deadline: Instant) {
        if let Some(old) = self.deadlines.insert(server.clone(), deadline) {
            self.expiries.remove(&(old, server.clone()));
        }
        self.expiries.insert((deadline, server.clone()));
    }

    /// Removes `server`'s sessions and its deadline; returns how many sessions went.
    fn forget_server(&mut self, server: &ServerId) -> u64 {
        if let Some(deadline) = self.deadlines.remove(server) {
            self.expiries.remove(&(deadline, server.clone()));
        }
        self.remove_sessions_of(server)
    }

    fn remove_sessions_of(&mut self, server: &ServerId) -> u64 {
        let users = self.by_server.remove(server).unwrap_or_default();
        for user in &users {
            self.by_user.remove(user);
        }
        u64::try_from(users.len()).unwrap_or(u64::MAX)
    }

    /// Stores `session`, which must be its user's only one (callers remove the old one first).
    fn insert(&mut self, session: Session) {
        if let Some(old) = self.remove(session.user_id) {
            // Same identity: only the device or login time can differ.
            debug_assert_eq!(old.reference(), session.reference());
        }
        self.by_server
            .entry(session.server_id.clone())
            .or_default()
            .insert(session.user_id);
        self.by_user.insert(session.user_id, session);
    }

    fn remove(&mut self, user: UserId) -> Option<Session> {
        let session = self.by_user.remove(&user)?;
        if let Some(users) = self.by_server.get_mut(&session.server_id) {
            users.remove(&user);
            if users.is_empty() {
                self.by_server.remove(&session.server_id);
            }
        }
        Some(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConnectionId, ErrorKind, Timestamp};

    const TTL: Duration = Duration::from_secs(30);

    fn server(id: &str) -> ServerId {
        ServerId::new(id).expect("valid id")
    }

    fn session(user: u64, server_id: &str, connection: u64) -> Session {
        Session {
            user_id: UserId(user),
            server_id: server(server_id),
            connection_id: ConnectionId(connection),
            device: "test".to_string(),
            login_at: Timestamp(0),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reject_keeps_the_live_session_and_fails_with_already_exists() {
        let store = MemorySessionStore::new(TTL);
        let first = session(1, "a", 10);
        assert_eq!(
            store
                .bind(first.clone(), BindPolicy::Reject)
                .await
                .expect("bind"),
            BindOutcome::Bound
        );

        let err = store
            .bind(session(1, "b", 20), BindPolicy::Reject)
            .await
            .expect_err("second session");
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        assert_eq!(store.get(UserId(1)).await.expect("get"), Some(first));
    }

    #[tokio::test(start_paused = true)]
    async fn replace_binds_the_new_session_and_returns_the_old_one() {
        let store = MemorySessionStore::new(TTL);
        let old = session(1, "a", 10);
        let new = session(1, "b", 20);
        store
            .bind(old.clone(), BindPolicy::Reject)
            .await
            .expect("bind");

        let outcome = store
            .bind(new.clone(), BindPolicy::Replace)
            .await
            .expect("replace");
        assert_eq!(outcome, BindOutcome::Replaced(old));
        assert_eq!(store.get(UserId(1)).await.expect("get"), Some(new));
        assert_eq!(store.remove_server(&server("a")).await.expect("remove"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn binding_the_same_session_again_is_bound_under_either_policy() {
        let store = MemorySessionStore::new(TTL);
        let bound = session(1, "a", 10);
        store
            .bind(bound.clone(), BindPolicy::Reject)
            .await
            .expect("bind");
        for policy in [BindPolicy::Reject, BindPolicy::Replace] {
            let outcome = store.bind(bound.clone(), policy).await.expect("rebind");
            assert_eq!(outcome, BindOutcome::Bound, "{policy:?}");
        }
        assert_eq!(store.count_online().await.expect("count"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn unbind_with_a_stale_reference_leaves_the_newer_session() {
        let store = MemorySessionStore::new(TTL);
        let old = session(1, "a", 10);
        let new = session(1, "a", 11);
        store
            .bind(old.clone(), BindPolicy::Reject)
            .await
            .expect("bind");
        store
            .bind(new.clone(), BindPolicy::Replace)
            .await
            .expect("replace");

        assert!(!store.unbind(&old.reference()).await.expect("stale unbind"));
        assert_eq!(store.get(UserId(1)).await.expect("get"), Some(new.clone()));
        assert!(store.unbind(&new.reference()).await.expect("unbind"));
        assert_eq!(store.get(UserId(1)).await.expect("get"), None);
        assert!(!store.unbind(&new.reference()).await.expect("unbind twice"));
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_expire_a_ttl_after_their_servers_last_heartbeat() {
        let store = MemorySessionStore::new(TTL);
        store
            .bind(session(1, "a", 10), BindPolicy::Reject)
            .await
            .expect("bind");
        store
            .bind(session(2, "b", 20), BindPolicy::Reject)
            .await
            .expect("bind");

        tokio::time::advance(TTL / 2).await;
        store.refresh_server(&server("b")).await.expect("refresh");
        tokio::time::advance(TTL / 2).await;

        assert_eq!(store.get(UserId(1)).await.expect("get"), None);
        assert!(
            store.get(UserId(2)).await.expect("get").is_some(),
            "b refreshed"
        );
        assert_eq!(store.count_online().await.expect("count"), 1);
        let page = store.list_online(None, 10).await.expect("list");
        assert_eq!(page.items, [session(2, "b", 20)]);
        let many = store
            .get_many(&[UserId(1), UserId(2)])
            .await
            .expect("get_many");
        assert_eq!(many, [session(2, "b", 20)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_user_can_bind_again_once_the_old_servers_sessions_expired() {
        let store = MemorySessionStore::new(TTL);
        store
            .bind(session(1, "crashed", 10), BindPolicy::Reject)
            .await
            .expect("bind");
        tokio::time::advance(TTL).await;

        let outcome = store
            .bind(session(1, "b", 20), BindPolicy::Reject)
            .await
            .expect("bind after expiry");
        assert_eq!(outcome, BindOutcome::Bound);
        store
            .refresh_server(&server("crashed"))
            .await
            .expect("refresh");
        assert_eq!(
            store.get(UserId(1)).await.expect("get"),
            Some(session(1, "b", 20)),
            "a late heartbeat does not revive expired sessions"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn remove_server_removes_all_its_sessions_and_counts_them() {
        let store = MemorySessionStore::new(TTL);
        for user in 1..=3 {
            store
                .bind(session(user, "a", user), BindPolicy::Reject)
                .await
                .expect("bind");
        }
        store
            .bind(session(4, "b", 4), BindPolicy::Reject)
            .await
            .expect("bind");

        assert_eq!(store.remove_server(&server("a")).await.expect("remove"), 3);
        assert_eq!(store.count_online().await.expect("count"), 1);
        assert_eq!(
            store.get(UserId(4)).await.expect("get"),
            Some(session(4, "b", 4))
        );
        assert_eq!(store.remove_server(&server("a")).await.expect("again"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn list_online_pages_through_every_session_in_user_order() {
        let store = MemorySessionStore::new(TTL);
        for user in (1..=25).rev() {
            let server_id = if user % 2 == 0 { "a" } else { "b" };
            store
                .bind(session(user, server_id, user), BindPolicy::Reject)
                .await
                .expect("bind");
        }

        let mut seen = Vec::new();
        let mut page_sizes = Vec::new();
        let mut cursor = None;
        loop {
            let page = store.list_online(cursor.as_ref(), 10).await.expect("page");
            page_sizes.push(page.items.len());
            seen.extend(page.items.iter().map(|s| s.user_id.0));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(page_sizes, [10, 10, 5]);
        assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn list_online_rejects_a_zero_limit_and_a_foreign_cursor() {
        let store = MemorySessionStore::new(TTL);
        let err = store.list_online(None, 0).await.expect_err("limit 0");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let bad = Cursor("not-a-user".to_string());
        let err = store
            .list_online(Some(&bad), 10)
            .await
            .expect_err("bad cursor");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn the_registry_builds_it_and_rejects_unknown_keys() {
        use crate::registry;

        let options = BackendOptions::new("sessions", "memory").with_ttl(Some(TTL));
        let store = registry::build::<dyn SessionStore>(options)
            .await
            .expect("build");
        assert_eq!(store.capabilities(), SessionCapabilities::ALL);
        store
            .bind(session(1, "a", 1), BindPolicy::Reject)
            .await
            .expect("bind");

        let options = BackendOptions::new("sessions", "memory").with_option("url", "x");
        let Err(err) = registry::build::<dyn SessionStore>(options).await else {
            panic!("an unknown key was accepted");
        };
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("url"), "{err}");
    }
}
