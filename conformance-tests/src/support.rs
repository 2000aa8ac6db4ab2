//! Small helpers shared by the cases.

use std::future::Future;
use std::time::Duration;

use cim_core::{ConnectionId, ServerId, ServerInfo, Session, Timestamp, UserId};

/// Polls `check` until it returns true or `within` passes; returns whether it became true.
///
/// For states no event announces (a session expiring). Where a stream announces the change
/// (a watch), await the event instead.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A server id, panicking on an invalid literal (cases use valid ones).
pub fn server_id(id: &str) -> ServerId {
    match ServerId::new(id) {
        Ok(id) => id,
        Err(e) => panic!("bad server id literal {id:?}: {e}"),
    }
}

/// A registration for `id` on loopback.
pub fn server_info(id: &str, client_port: u16) -> ServerInfo {
    ServerInfo::new(server_id(id), "127.0.0.1", client_port, client_port + 1)
}

/// A session of `user` on `server` over `connection`.
pub fn session(user: u64, server: &str, connection: u64) -> Session {
    Session {
        user_id: UserId(user),
        server_id: server_id(server),
        connection_id: ConnectionId(connection),
        device: "conformance".to_string(),
        login_at: Timestamp::now(),
    }
}

/// Unwraps a store result, failing the case with the error's text and the step that failed.
pub trait Must<T> {
    /// The value, or a panic that says `what` failed and why.
    fn must(self, what: &str) -> T;
}

impl<T> Must<T> for cim_core::Result<T> {
    #[track_caller]
    fn must(self, what: &str) -> T {
        match self {
            Ok(value) => value,
            Err(e) => panic!("{what} failed: {e}"),
        }
    }
}

/// Asserts that `result` failed with `kind`, naming `what` in the failure.
#[track_caller]
pub fn assert_kind<T: std::fmt::Debug>(
    result: cim_core::Result<T>,
    kind: cim_core::ErrorKind,
    what: &str,
) {
    match result {
        Ok(value) => panic!("{what}: expected a {kind} error, got Ok({value:?})"),
        Err(e) => assert_eq!(e.kind(), kind, "{what}: expected {kind}, got {e}"),
    }
}

/// The most pages [`all_pages`] follows before it fails the case as an endless listing.
pub const MAX_PAGES: usize = 1000;

/// Walks a cursor listing from its start and returns every item in listing order.
///
/// `page` is called with `None`, then with each returned cursor, until a page has no successor.
/// Fails the case, naming `what`, if a page fails, holds more than `limit` items, or the
/// listing does not end within [`MAX_PAGES`] pages.
pub async fn all_pages<T, F, Fut>(what: &str, limit: u32, mut page: F) -> Vec<T>
where
    F: FnMut(Option<cim_core::Cursor>) -> Fut,
    Fut: Future<Output = cim_core::Result<cim_core::Page<T>>>,
{
    let mut items = Vec::new();
    let mut cursor = None;
    for _ in 0..MAX_PAGES {
        let cim_core::Page { items: batch, next } = page(cursor.take()).await.must(what);
        assert!(
            batch.len() <= limit as usize,
            "{what}: a page held {} items, more than the limit of {limit}",
            batch.len()
        );
        items.extend(batch);
        match next {
            Some(next) => cursor = Some(next),
            None => return items,
        }
    }
    panic!("{what}: the listing still had a next page after {MAX_PAGES} pages");
}

/// Awaits a task the case spawned; a panic in the task fails the case with the task's message.
pub async fn join_task<T>(task: tokio::task::JoinHandle<T>) -> T {
    match task.await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            Err(e) => panic!("a task of the case was cancelled: {e}"),
        },
    }
}

/// How long a lease or session kept with `ttl` may take to disappear once nobody renews it: the
/// contract allows the TTL plus the backend's tolerance (at most one more TTL); one more TTL and
/// 2 s absorb a reaper's period and a slow machine.
pub fn expiry_deadline(ttl: Duration) -> Duration {
    ttl * 3 + Duration::from_secs(2)
}

/// An adapter's registry entries as a config file uses them: `sessions` and `meta` (the keys a
/// `[sessions]` / `[meta]` section would give) build working stores, and `misspelt` (the
/// sessions keys with one unknown key, `unknown_key`) is refused with `Config` naming that key.
pub async fn registry_builds_from_config_keys(
    sessions: cim_core::registry::BackendOptions,
    meta: cim_core::registry::BackendOptions,
    misspelt: cim_core::registry::BackendOptions,
    unknown_key: &str,
) {
    use cim_core::registry;
    let store = registry::build::<dyn cim_core::SessionStore>(sessions)
        .await
        .must("build the session store through the registry");
    store
        .bind(session(1, "node-1", 10), cim_core::BindPolicy::Reject)
        .await
        .must("bind");
    assert_eq!(store.count_online().await.must("count"), 1);

    let meta = registry::build::<dyn cim_core::MetaStore>(meta)
        .await
        .must("build the meta store through the registry");
    assert!(meta.list().await.must("list").is_empty());

    let Err(error) = registry::build::<dyn cim_core::SessionStore>(misspelt).await else {
        panic!("an unknown key is refused");
    };
    assert_eq!(error.kind(), cim_core::ErrorKind::Config);
    assert!(error.to_string().contains(unknown_key), "{error}");
}
