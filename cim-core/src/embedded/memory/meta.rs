//! [`MemoryMetaStore`]: server registration in process memory.
//!
//! The leases here are real rather than simulated: a background task renews each one every third
//! of the TTL, and an expiry task removes the ones that lapse. That is the point of a reference
//! store: a dropped [`Registration`] disappears within the TTL exactly as a crashed server's would
//! in etcd or Redis, so code above cim-core (and the conformance suite) can test failover without
//! a network.
//!
//! One mutex guards the servers *and* the event channel. Every change is published while the
//! lock is held, and a watcher takes its snapshot and subscribes under that same lock, so no event
//! can fall between a snapshot and the stream that follows it, nor appear in both. A watcher that
//! falls more than the watch buffer behind is resynchronised the same way, with a fresh snapshot.
//!
//! Every task has an owner: a lease's renewal task is aborted when the lease is dropped, and the
//! expiry task is aborted when the last handle on the store's state (the store, a lease) goes.
//! Deadlines use [`tokio::time::Instant`], so tests can pause and advance time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use tokio::runtime::Handle;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, broadcast};
use tokio::task::AbortHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::registry::{BackendOptions, BuildFuture, MetaStoreFactory};
use crate::{
    Error, Lease, MetaCapabilities, MetaEvent, MetaStore, MetaWatch, Registration, Result,
    ServerId, ServerInfo,
};

/// The lease TTL when `[meta] ttl` is not set.
const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// How many events a watcher may fall behind before it is resynchronised with a snapshot.
const DEFAULT_WATCH_BUFFER: usize = 1024;
/// The largest watch buffer: the channel allocates every slot up front.
const MAX_WATCH_BUFFER: usize = 65_536;
/// Renewals never run more often than this, whatever the TTL.
const MIN_RENEW_PERIOD: Duration = Duration::from_millis(1);

inventory::submit! {
    MetaStoreFactory::new(
        "memory",
        "in-process memory (single node; for tests and standalone)",
        build,
    )
}

/// The backend keys of `[meta] backend = "memory"`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct MemoryMetaConfig {
    /// How many events a slow watcher may fall behind before it gets a resync snapshot.
    watch_buffer: usize,
}

impl Default for MemoryMetaConfig {
    fn default() -> Self {
        MemoryMetaConfig {
            watch_buffer: DEFAULT_WATCH_BUFFER,
        }
    }
}

fn build(options: BackendOptions) -> BuildFuture<dyn MetaStore> {
    Box::pin(async move {
        let config: MemoryMetaConfig = options.parse()?;
        if !(1..=MAX_WATCH_BUFFER).contains(&config.watch_buffer) {
            return Err(Error::config(format!(
                "[meta] watch_buffer = {} is out of range; use 1 to {MAX_WATCH_BUFFER}",
                config.watch_buffer
            )));
        }
        let ttl = options.ttl().unwrap_or(DEFAULT_TTL);
        if ttl.is_zero() {
            return Err(Error::config(
                "[meta] ttl must be longer than zero (for example \"10s\")",
            ));
        }
        let store = MemoryMetaStore::new(ttl).with_watch_buffer(config.watch_buffer);
        Ok(Arc::new(store) as Arc<dyn MetaStore>)
    })
}

/// A [`MetaStore`] in process memory: single node, nothing survives the process.
///
/// Registrations are leased with the TTL given to [`MemoryMetaStore::new`] and renewed by a task
/// every third of it; a dropped [`Registration`] expires one TTL after its last renewal, and
/// watchers see it removed then. `watch` is supported and there is no lower bound on the TTL.
///
/// Operations that start tasks (`register`) must run inside a tokio runtime and fail with
/// [`Internal`](crate::ErrorKind::Internal) otherwise; building the store needs no runtime.
pub struct MemoryMetaStore {
    shared: Arc<Shared>,
}

impl MemoryMetaStore {
    /// A store whose leases outlive their last renewal by `ttl`.
    pub fn new(ttl: Duration) -> MemoryMetaStore {
        MemoryMetaStore {
            shared: Arc::new(Shared {
                ttl,
                state: Mutex::new(State {
                    servers: BTreeMap::new(),
                    held: HashMap::new(),
                    next_lease: 0,
                    events: broadcast::channel(DEFAULT_WATCH_BUFFER).0,
                }),
                wake_expiry: Arc::new(Notify::new()),
                expiry_task: OnceLock::new(),
            }),
        }
    }

    /// Sets how many events a slow watcher may fall behind before it gets a resync
    /// [`MetaEvent::Snapshot`] (default 1024, kept within 1 to 65536). Call it before watching:
    /// streams opened earlier end.
    pub fn with_watch_buffer(self, n: usize) -> Self {
        self.shared.lock().events = broadcast::channel(n.clamp(1, MAX_WATCH_BUFFER)).0;
        self
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// Registers `info` and starts renewing its lease; the lease, not yet wrapped, so that tests
    /// can reach its renewal task.
    fn register_lease(&self, info: ServerInfo) -> Result<MemoryLease> {
        let runtime = Handle::try_current().map_err(|_| {
            Error::internal("the memory meta store must be used inside a tokio runtime")
        })?;
        self.shared.start_expiry_task(&runtime);
        let server_id = info.id.clone();
        let lease = self.shared.register(info)?;
        let period = (self.shared.ttl / 3).max(MIN_RENEW_PERIOD);
        let renewer = runtime
            .spawn(renew_lease(
                Arc::downgrade(&self.shared),
                lease,
                server_id.clone(),
                period,
            ))
            .abort_handle();
        Ok(MemoryLease {
            shared: Arc::clone(&self.shared),
            server_id,
            lease,
            renewer,
        })
    }
}

impl std::fmt::Debug for MemoryMetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryMetaStore")
            .field("ttl", &self.shared.ttl)
            .field("servers", &self.shared.lock().servers.len())
            .finish()
    }
}

#[async_trait]
impl MetaStore for MemoryMetaStore {
    fn capabilities(&self) -> MetaCapabilities {
        MetaCapabilities::ALL
    }

    async fn register(&self, info: ServerInfo) -> Result<Registration> {
        Ok(Registration::new(Box::new(self.register_lease(info)?)))
    }

    async fn list(&self) -> Result<Vec<ServerInfo>> {
        let mut state = self.shared.lock();
        state.expire_all(Instant::now());
        Ok(state.live())
    }

    async fn watch(&self) -> Result<MetaWatch> {
        let (snapshot, events) = self.shared.snapshot_and_subscribe();
        let watcher = Watcher {
            shared: Arc::downgrade(&self.shared),
            events,
        };
        let first = futures::stream::once(async move { Ok(MetaEvent::Snapshot(snapshot)) });
        let rest = futures::stream::unfold(watcher, |mut watcher| async move {
            let event = watcher.next_event().await?;
            Some((Ok(event), watcher))
        });
        Ok(first.chain(rest).boxed())
    }
}

/// What the store, its leases and its tasks share.
struct Shared {
    ttl: Duration,
    state: Mutex<State>,
    /// Wakes the expiry task when a registration arrives, so that it need not poll while idle.
    wake_expiry: Arc<Notify>,
    /// The expiry task, started by the first registration and aborted when this state goes.
    expiry_task: OnceLock<AbortHandle>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(task) = self.expiry_task.get() {
            task.abort();
        }
    }
}

/// The registrations and the channel their changes are published on.
struct State {
    /// The registrations, live or lapsed but not yet swept, by id.
    servers: BTreeMap<ServerId, Entry>,
    /// The leases whose [`Registration`] is alive, with their latest information: what a lease
    /// lost while its owner lives is registered again with.
    held: HashMap<u64, ServerInfo>,
    next_lease: u64,
    events: broadcast::Sender<MetaEvent>,
}

struct Entry {
    info: ServerInfo,
    /// Which lease holds this registration; an older lease of the same id cannot touch it.
    lease: u64,
    deadline: Instant,
}

impl State {
    fn publish(&self, event: MetaEvent) {
        // An error only means that nobody is watching.
        let _ = self.events.send(event);
    }

    /// Removes `id` if its lease has lapsed, and tells the watchers.
    fn expire(&mut self, id: &ServerId, now: Instant) {
        if self
            .servers
            .get(id)
            .is_some_and(|entry| entry.deadline <= now)
        {
            self.servers.remove(id);
            self.publish(MetaEvent::Removed(id.clone()));
        }
    }

    /// Removes every lapsed registration, telling the watchers; returns the earliest deadline
    /// left.
    fn expire_all(&mut self, now: Instant) -> Option<Instant> {
        let lapsed: Vec<ServerId> = self
            .servers
            .iter()
            .filter(|(_, entry)| entry.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in lapsed {
            self.servers.remove(&id);
            self.publish(MetaEvent::Removed(id));
        }
        self.servers.values().map(|entry| entry.deadline).min()
    }

    /// The registrations, by id (callers expire lapsed ones first).
    fn live(&self) -> Vec<ServerInfo> {
        self.servers
            .values()
            .map(|entry| entry.info.clone())
            .collect()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a panic elsewhere is no reason
        // to stop serving it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start_expiry_task(self: &Arc<Self>, runtime: &Handle) {
        self.expiry_task.get_or_init(|| {
            runtime
                .spawn(expire_leases(
                    Arc::downgrade(self),
                    Arc::clone(&self.wake_expiry),
                ))
                .abort_handle()
        });
    }

    /// Adds `info` under a new lease, unless its id has a live registration.
    fn register(&self, info: ServerInfo) -> Result<u64> {
        let now = Instant::now();
        let mut state = self.lock();
        state.expire(&info.id, now);
        if state.servers.contains_key(&info.id) {
            return Err(Error::already_exists(format!(
                "server {} is already registered with a live lease; a restarted server must wait \
                 for its predecessor's lease to expire (within {:?}) or use another id",
                info.id, self.ttl
            ))
            .set_retryable(true));
        }
        let lease = state.next_lease;
        state.next_lease += 1;
        state.held.insert(lease, info.clone());
        state.servers.insert(
            info.id.clone(),
            Entry {
                info: info.clone(),
                lease,
                deadline: now + self.ttl,
            },
        );
        state.publish(MetaEvent::Added(info));
        drop(state);
        self.wake_expiry.notify_one();
        Ok(lease)
    }

    /// Extends `lease` by a TTL; if it was lost while its registration lives, registers it again
    /// as soon as nobody else holds the id.
    fn renew(&self, lease: u64, id: &ServerId) {
        let now = Instant::now();
        let mut state = self.lock();
        if !state.held.contains_key(&lease) {
            return;
        }
        if let Some(entry) = state.servers.get_mut(id)
            && entry.lease == lease
        {
            entry.deadline = now + self.ttl;
            return;
        }
        state.expire(id, now);
        if state.servers.contains_key(id) {
            return;
        }
        let Some(info) = state.held.get(&lease).cloned() else {
            return;
        };
        state.servers.insert(
            id.clone(),
            Entry {
                info: info.clone(),
                lease,
                deadline: now + self.ttl,
            },
        );
        state.publish(MetaEvent::Added(info));
        drop(state);
        self.wake_expiry.notify_one();
    }

    /// Replaces the information of `lease`'s live registration.
    fn update(&self, lease: u64, id: &ServerId, info: ServerInfo) -> Result<()> {
        if &info.id != id {
            return Err(Error::invalid_input(format!(
                "cannot update registration of {id} with information for {}",
                info.id
            )));
        }
        let mut state = self.lock();
        state.expire(id, Instant::now());
        match state.servers.get_mut(id) {
            Some(entry) if entry.lease == lease => entry.info = info.clone(),
            _ => {
                return Err(Error::not_found(format!(
                    "the registration of server {id} expired or was removed; register it again"
                )));
            }
        }
        state.held.insert(lease, info.clone());
        state.publish(MetaEvent::Updated(info));
        Ok(())
    }

    /// Removes `lease`'s registration now and forgets the lease.
    fn deregister(&self, lease: u64, id: &ServerId) {
        let mut state = self.lock();
        state.held.remove(&lease);
        if state
            .servers
            .get(id)
            .is_some_and(|entry| entry.lease == lease)
        {
            state.servers.remove(id);
            state.publish(MetaEvent::Removed(id.clone()));
        }
    }

    /// Forgets `lease` without removing its registration, which then expires.
    fn release(&self, lease: u64) {
        self.lock().held.remove(&lease);
    }

    /// The live servers and a subscription that starts right after them.
    fn snapshot_and_subscribe(&self) -> (Vec<ServerInfo>, broadcast::Receiver<MetaEvent>) {
        let mut state = self.lock();
        state.expire_all(Instant::now());
        (state.live(), state.events.subscribe())
    }

    /// Removes lapsed registrations; returns the earliest deadline left.
    fn expire_due(&self) -> Option<Instant> {
        self.lock().expire_all(Instant::now())
    }
}

/// Removes registrations as their leases lapse, so watchers learn of a crash without anyone
/// calling `list`. Holds only a weak reference, and is aborted when the state is dropped.
async fn expire_leases(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let next_deadline = match shared.upgrade() {
            Some(shared) => shared.expire_due(),
            None => return,
        };
        match next_deadline {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// Renews `lease` every `period` until aborted by the lease's owner.
async fn renew_lease(shared: Weak<Shared>, lease: u64, id: ServerId, period: Duration) {
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match shared.upgrade() {
            Some(shared) => shared.renew(lease, &id),
            None => return,
        }
    }
}

/// The lease behind a [`Registration`] of a [`MemoryMetaStore`].
struct MemoryLease {
    shared: Arc<Shared>,
    server_id: ServerId,
    lease: u64,
    renewer: AbortHandle,
}

impl Drop for MemoryLease {
    fn drop(&mut self) {
        // Stop renewing but leave the registration: it expires as a crashed owner's would.
        self.renewer.abort();
        self.shared.release(self.lease);
    }
}

#[async_trait]
impl Lease for MemoryLease {
    fn server_id(&self) -> &ServerId {
        &self.server_id
    }

    fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    async fn update(&self, info: ServerInfo) -> Result<()> {
        self.shared.update(self.lease, &self.server_id, info)
    }

    async fn deregister(self: Box<Self>) -> Result<()> {
        self.renewer.abort();
        self.shared.deregister(self.lease, &self.server_id);
        Ok(())
    }
}

/// The state of one watch stream after its first snapshot.
struct Watcher {
    /// Weak, so that the stream ends when the store is dropped (the channel closes with it).
    shared: Weak<Shared>,
    events: broadcast::Receiver<MetaEvent>,
}

impl Watcher {
    /// The next event; a fresh snapshot if this watcher fell behind; `None` once the store is
    /// gone.
    async fn next_event(&mut self) -> Option<MetaEvent> {
        match self.events.recv().await {
            Ok(event) => Some(event),
            Err(RecvError::Lagged(_)) => {
                let shared = self.shared.upgrade()?;
                let (snapshot, events) = shared.snapshot_and_subscribe();
                self.events = events;
                Some(MetaEvent::Snapshot(snapshot))
            }
            Err(RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    const TTL: Duration = Duration::from_secs(3);

    fn server(id: &str) -> ServerInfo {
        ServerInfo::new(
            ServerId::new(id).expect("valid id"),
            "127.0.0.1",
            7000,
            7001,
        )
    }

    async fn next(watch: &mut MetaWatch) -> MetaEvent {
        watch
            .next()
            .await
            .expect("the stream is open")
            .expect("no error")
    }

    fn ids(servers: &[ServerInfo]) -> Vec<&str> {
        servers.iter().map(|s| s.id.as_str()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn registered_servers_are_listed_by_id_until_deregistered() {
        let store = MemoryMetaStore::new(TTL);
        let b = store.register(server("b")).await.expect("register b");
        let a = store.register(server("a")).await.expect("register a");
        assert_eq!(a.ttl(), TTL);
        assert_eq!(ids(&store.list().await.expect("list")), ["a", "b"]);

        a.deregister().await.expect("deregister a");
        assert_eq!(ids(&store.list().await.expect("list")), ["b"]);
        drop(b);
    }

    #[tokio::test(start_paused = true)]
    async fn registering_a_live_id_again_is_a_retryable_already_exists() {
        let store = MemoryMetaStore::new(TTL);
        let _first = store.register(server("a")).await.expect("register");
        let err = store.register(server("a")).await.expect_err("duplicate");
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        assert!(err.is_retryable());
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_registration_is_renewed_past_its_ttl() {
        let store = MemoryMetaStore::new(TTL);
        let _registration = store.register(server("a")).await.expect("register");
        tokio::time::sleep(TTL * 5).await;
        assert_eq!(ids(&store.list().await.expect("list")), ["a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_registration_expires_after_the_ttl_and_watchers_see_it_removed() {
        let store = MemoryMetaStore::new(TTL);
        let mut watch = store.watch().await.expect("watch");
        assert_eq!(next(&mut watch).await, MetaEvent::Snapshot(vec![]));
        let registration = store.register(server("a")).await.expect("register");
        assert_eq!(next(&mut watch).await, MetaEvent::Added(server("a")));

        let dropped_at = Instant::now();
        drop(registration);
        tokio::time::advance(TTL / 2).await;
        assert_eq!(
            ids(&store.list().await.expect("list")),
            ["a"],
            "not yet expired"
        );

        let event = next(&mut watch).await;
        assert_eq!(event, MetaEvent::Removed(server("a").id));
        assert_eq!(
            dropped_at.elapsed(),
            TTL,
            "removed exactly when the lease lapsed"
        );
        assert!(store.list().await.expect("list").is_empty());
        let _again = store.register(server("a")).await.expect("id free again");
    }

    #[tokio::test(start_paused = true)]
    async fn deregistering_frees_the_id_at_once_and_watchers_see_it_removed() {
        let store = MemoryMetaStore::new(TTL);
        let registration = store.register(server("a")).await.expect("register");
        let mut watch = store.watch().await.expect("watch");
        assert_eq!(
            next(&mut watch).await,
            MetaEvent::Snapshot(vec![server("a")])
        );

        registration.deregister().await.expect("deregister");
        assert_eq!(next(&mut watch).await, MetaEvent::Removed(server("a").id));
        let _again = store.register(server("a")).await.expect("id free at once");
        assert_eq!(next(&mut watch).await, MetaEvent::Added(server("a")));
    }

    #[tokio::test(start_paused = true)]
    async fn update_replaces_the_information_and_watchers_see_it_updated() {
        let store = MemoryMetaStore::new(TTL);
        let registration = store.register(server("a")).await.expect("register");
        let mut watch = store.watch().await.expect("watch");
        next(&mut watch).await;

        let mut busier = server("a");
        busier.load = 7;
        registration.update(busier.clone()).await.expect("update");
        assert_eq!(next(&mut watch).await, MetaEvent::Updated(busier.clone()));
        assert_eq!(store.list().await.expect("list"), [busier]);

        let err = registration
            .update(server("b"))
            .await
            .expect_err("other id");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[tokio::test(start_paused = true)]
    async fn updating_an_expired_registration_is_not_found() {
        let store = MemoryMetaStore::new(TTL);
        let lease = store.register_lease(server("a")).expect("register");
        lease.renewer.abort();
        tokio::time::sleep(TTL * 2).await;

        let err = lease.update(server("a")).await.expect_err("expired");
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_is_registered_again_by_its_next_renewal() {
        let store = MemoryMetaStore::new(TTL);
        let lease = store.register_lease(server("a")).expect("register");
        let mut watch = store.watch().await.expect("watch");
        next(&mut watch).await;
        lease.renewer.abort();
        assert_eq!(next(&mut watch).await, MetaEvent::Removed(server("a").id));

        store.shared.renew(lease.lease, &lease.server_id);
        assert_eq!(next(&mut watch).await, MetaEvent::Added(server("a")));
        assert_eq!(ids(&store.list().await.expect("list")), ["a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watcher_that_falls_behind_gets_a_fresh_snapshot_and_continues() {
        let store = MemoryMetaStore::new(TTL).with_watch_buffer(2);
        let mut watch = store.watch().await.expect("watch");
        assert_eq!(next(&mut watch).await, MetaEvent::Snapshot(vec![]));

        let mut registrations = Vec::new();
        for id in ["a", "b", "c", "d", "e"] {
            registrations.push(store.register(server(id)).await.expect("register"));
        }
        match next(&mut watch).await {
            MetaEvent::Snapshot(servers) => assert_eq!(ids(&servers), ["a", "b", "c", "d", "e"]),
            other => panic!("expected a resync snapshot, got {other:?}"),
        }

        registrations.push(store.register(server("f")).await.expect("register"));
        assert_eq!(next(&mut watch).await, MetaEvent::Added(server("f")));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_store_ends_its_watch_streams() {
        let store = MemoryMetaStore::new(TTL);
        let mut watch = store.watch().await.expect("watch");
        next(&mut watch).await;
        drop(store);
        assert!(watch.next().await.is_none());
    }

    #[tokio::test]
    async fn the_registry_builds_it_and_rejects_unknown_keys() {
        use crate::registry;

        let options = BackendOptions::new("meta", "memory")
            .with_ttl(Some(TTL))
            .with_option("watch_buffer", 8);
        let store = registry::build::<dyn MetaStore>(options)
            .await
            .expect("build");
        assert_eq!(store.capabilities(), MetaCapabilities::ALL);
        let registration = store.register(server("a")).await.expect("register");
        assert_eq!(registration.ttl(), TTL);

        let options = BackendOptions::new("meta", "memory").with_option("url", "x");
        let Err(err) = registry::build::<dyn MetaStore>(options).await else {
            panic!("an unknown key was accepted");
        };
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("url"), "{err}");
    }
}
