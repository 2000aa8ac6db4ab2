//! What an adapter's failure tests check while the fixture's server is away and once it is back,
//! the same for every backend: operations fail promptly with a transient error (no hang, no
//! panic), the store recovers on its own, and a watcher converges to what the store lists.
//!
//! The bounds assume stores configured with short timeouts (about a second), as failure tests
//! configure them.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use cim_core::{Error, ErrorKind, MetaEvent, MetaStore, MetaWatch, ServerId, ServerInfo};
use futures::StreamExt;

/// How long an operation may take to fail while its server is down: the stores' timeouts, with
/// room to spare.
pub const PROMPT: Duration = Duration::from_secs(5);

/// How long a store may take to recover once its server is back: long enough for a restart, a
/// reconnect and a lease expiry on a loaded machine.
pub const RECOVERY: Duration = Duration::from_secs(20);

/// Asserts that `error` is what a store says while its server is away: a retryable
/// `Unavailable` or `Timeout`. `what` names the operation in the failure.
#[track_caller]
pub fn assert_transient(error: &Error, what: &str) {
    assert!(
        matches!(error.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{what}: expected Unavailable or Timeout while the server is down, got {error}"
    );
    assert!(error.is_retryable(), "{what}: {error}");
}

/// Asserts that `operation`, run while the server is down, ends within [`PROMPT`] with a
/// transient error ([`assert_transient`]).
pub async fn assert_fails_promptly<T: std::fmt::Debug>(
    what: &str,
    operation: impl Future<Output = cim_core::Result<T>>,
) {
    let outcome = tokio::time::timeout(PROMPT, operation)
        .await
        .unwrap_or_else(|_| panic!("{what} on a stopped server must end within {PROMPT:?}"));
    match outcome {
        Ok(value) => panic!("{what} while the server is down must fail, got Ok({value:?})"),
        Err(error) => assert_transient(&error, what),
    }
}

/// Retries `operation` every 50 ms until it succeeds, allowing only transient errors, and fails
/// the test if it has not succeeded within [`RECOVERY`].
pub async fn until_recovered<T, F, Fut>(what: &str, mut operation: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = cim_core::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + RECOVERY;
    loop {
        match operation().await {
            Ok(value) => return value,
            Err(error) if tokio::time::Instant::now() < deadline => {
                assert!(
                    matches!(error.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
                    "{what}: only transient errors while the server comes back, got {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("{what} did not recover within {RECOVERY:?}: {error}"),
        }
    }
}

/// What a watcher knows after folding the events it read: a snapshot replaces everything.
#[derive(Debug, Default)]
pub struct Folded {
    servers: BTreeMap<ServerId, ServerInfo>,
    snapshots: usize,
}

impl Folded {
    /// Folds `event` in.
    pub fn apply(&mut self, event: MetaEvent) {
        match event {
            MetaEvent::Snapshot(servers) => {
                self.snapshots += 1;
                self.servers = servers
                    .into_iter()
                    .map(|info| (info.id.clone(), info))
                    .collect();
            }
            MetaEvent::Added(info) | MetaEvent::Updated(info) => {
                self.servers.insert(info.id.clone(), info);
            }
            MetaEvent::Removed(id) => {
                self.servers.remove(&id);
            }
        }
    }

    /// The servers it knows, ordered by id as [`MetaStore::list`] is.
    pub fn list(&self) -> Vec<ServerInfo> {
        self.servers.values().cloned().collect()
    }
}

/// Reads `events` into `known` until it and `store.list()` both equal `expected` (and, if
/// `resync`, a snapshot arrived on the way: the watcher resynced after the outage), failing the
/// test after [`RECOVERY`]. Errors on the stream are skipped: they are transient while the
/// server comes back, and the next item may be a snapshot.
pub async fn converge(
    events: &mut MetaWatch,
    known: &mut Folded,
    store: &dyn MetaStore,
    expected: &[ServerInfo],
    resync: bool,
) {
    let snapshots_before = known.snapshots;
    let deadline = tokio::time::Instant::now() + RECOVERY;
    loop {
        let resynced = !resync || known.snapshots > snapshots_before;
        if resynced
            && known.list() == expected
            && store.list().await.is_ok_and(|listed| listed == expected)
        {
            return;
        }
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(Ok(event))) => known.apply(event),
            Ok(Some(Err(_))) => {}
            Ok(None) => panic!("the watch ended while the store is alive"),
            Err(_) => panic!(
                "within {RECOVERY:?} the watcher (resynced: {resynced}) knows {:?} and list() \
                 says {:?}; expected {expected:?}",
                known.list(),
                store.list().await
            ),
        }
    }
}
