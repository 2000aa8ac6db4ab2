//! [`EtcdMetaStore`]: server registration and discovery in etcd.
//!
//! A registration is one key, `{prefix}/{namespace}/servers/{id}`, holding the server's JSON and
//! attached to a lease of its own. The [`Registration`]'s keep-alive task renews the lease every
//! third of its TTL, so a dead process simply stops renewing and etcd deletes the key when the
//! lease expires; deregistering revokes the lease, which deletes the key at once. Registering
//! creates the key in a transaction that requires it to be absent (`create_revision == 0`), which
//! is what makes a second live registration of an id fail. If the lease is lost while the
//! registration lives (it expired during an outage, or etcd's data is gone), the keep-alive task
//! finds out at its next renewal and registers the server again with a new lease.
//!
//! Watching uses etcd's own change history, so it needs no event channel of ours: a range read
//! of the prefix at revision R is the snapshot, and a prefix watch from R + 1 delivers every later
//! change exactly once and in revision order (a put of a new key is `Added`, of an existing one
//! `Updated`, a delete or expiry `Removed`). When the watch cannot continue (the connection was
//! lost, or etcd compacted the history the watch needed) the watcher resyncs with a fresh
//! snapshot and a new watch after it. A watcher that is not read keeps consuming etcd's stream
//! but drops the changes once its buffer is full, and sends a fresh snapshot as soon as it is
//! read again, ignoring the changes that snapshot already contains.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cim_core::codec::{decode_server, encode_server};
use cim_core::meta_store::{
    Lease, MetaCapabilities, MetaEvent, MetaStore, MetaWatch, Registration,
};
use cim_core::registry::{BackendOptions, BuildFuture, MetaStoreFactory};
use cim_core::{Error, Result, ServerId, ServerInfo};
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use futures::StreamExt;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

use crate::EtcdConfig;
use crate::connection::{Etcd, lease_seconds};
use crate::lease::{self, Renewal, Renewer};

/// The lease TTL when `[meta] ttl` is not set.
const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// The shortest TTL etcd keeps: leases have whole seconds. The server raises a TTL below its own
/// minimum (1.5 times its election timeout, 2 s by default) and the registration reports that.
const MIN_TTL: Duration = Duration::from_secs(1);

/// Changes buffered for one watcher before it counts as fallen behind.
const WATCH_BUFFER: usize = 256;

inventory::submit! {
    MetaStoreFactory::new(
        "etcd",
        "etcd keys on leases renewed by a keep-alive; watch on etcd's revision history",
        build,
    )
}

fn build(options: BackendOptions) -> BuildFuture<dyn MetaStore> {
    Box::pin(async move {
        let config: EtcdConfig = options.parse()?;
        let ttl = options.ttl().unwrap_or(DEFAULT_TTL);
        let store = EtcdMetaStore::connect(&config, options.namespace(), ttl).await?;
        Ok(Arc::new(store) as Arc<dyn MetaStore>)
    })
}

/// What the store, its leases and its watch tasks share.
struct Inner {
    etcd: Etcd,
    /// `{prefix}/{namespace}/servers/`.
    servers: String,
    ttl: Duration,
}

impl Inner {
    fn key(&self, id: &ServerId) -> String {
        format!("{}{}", self.servers, id.as_str())
    }

    /// Creates the server's key on `lease` unless the key exists; true if it did.
    async fn create(&self, id: &ServerId, json: &str, lease: i64) -> Result<bool> {
        let key = self.key(id);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                json,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        Ok(self.etcd.txn("register", txn).await?.succeeded())
    }

    /// Registers `json` under a new lease; `None` if the id is held by a live registration.
    async fn register(&self, id: &ServerId, json: &str) -> Result<Option<lease::Granted>> {
        let granted = lease::grant(&self.etcd, lease_seconds(self.ttl)).await?;
        match self.create(id, json, granted.id).await {
            Ok(true) => Ok(Some(granted)),
            Ok(false) => {
                lease::revoke_quietly(&self.etcd, granted.id).await;
                Ok(None)
            }
            Err(error) => {
                lease::revoke_quietly(&self.etcd, granted.id).await;
                Err(error)
            }
        }
    }

    /// The live servers ordered by id, and the revision they were read at.
    async fn snapshot(&self) -> Result<(i64, Vec<ServerInfo>)> {
        let mut response = self
            .etcd
            .call(
                "list servers",
                self.etcd
                    .kv()
                    .get(self.servers.as_str(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let revision = response.header().map_or(0, |header| header.revision());
        let mut servers = response
            .take_kvs()
            .iter()
            .map(|kv| decode_server(kv.value(), "etcd"))
            .collect::<Result<Vec<_>>>()?;
        servers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((revision, servers))
    }

    /// A watch of the servers prefix from `revision` on.
    async fn watch_from(&self, revision: i64) -> Result<WatchStream> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision);
        self.etcd
            .call(
                "watch servers",
                self.etcd
                    .watcher()
                    .watch(self.servers.as_str(), Some(options)),
            )
            .await
    }

    /// The change an etcd event stands for; `None` for a key that is not a server's.
    fn translate(&self, event: &etcd_client::Event) -> Option<Result<MetaEvent>> {
        let kv = event.kv()?;
        let id = std::str::from_utf8(kv.key())
            .ok()?
            .strip_prefix(self.servers.as_str())?;
        let id = ServerId::new(id).ok()?;
        Some(match event.event_type() {
            EventType::Delete => Ok(MetaEvent::Removed(id)),
            // Version 1 is the key's first write since it was (re)created.
            EventType::Put if kv.version() == 1 => {
                decode_server(kv.value(), "etcd").map(MetaEvent::Added)
            }
            EventType::Put => decode_server(kv.value(), "etcd").map(MetaEvent::Updated),
        })
    }
}

/// A [`MetaStore`] in etcd, shared by every node of a cluster.
///
/// Leases are renewed every third of their TTL; a dropped [`Registration`] disappears when its
/// lease expires, one TTL after its last renewal (etcd checks for expired leases twice a second).
/// TTLs are whole seconds on etcd: a TTL with a fraction is rounded up, and etcd raises one
/// below its minimum; [`Registration::ttl`] reports the TTL in force. `watch` is supported.
pub struct EtcdMetaStore {
    inner: Arc<Inner>,
    /// Dropped with the store: watch tasks see the channel close and end their streams.
    shutdown: watch::Sender<()>,
}

impl std::fmt::Debug for EtcdMetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdMetaStore")
            .field("etcd", &self.inner.etcd)
            .field("servers", &self.inner.servers)
            .field("ttl", &self.inner.ttl)
            .finish()
    }
}

impl EtcdMetaStore {
    /// Connects to the etcd `config` names and keeps registrations under
    /// `{prefix}/{namespace}/servers/` with leases of `ttl` (rounded up to whole seconds).
    pub async fn connect(
        config: &EtcdConfig,
        namespace: &str,
        ttl: Duration,
    ) -> Result<EtcdMetaStore> {
        if ttl.is_zero() {
            return Err(Error::config(
                "[meta] ttl must be longer than zero (for example \"10s\")",
            ));
        }
        let root = config.root(namespace);
        let inner = Arc::new(Inner {
            etcd: Etcd::connect(config, &root).await?,
            servers: format!("{root}/servers/"),
            ttl,
        });
        let (shutdown, _) = watch::channel(());
        Ok(EtcdMetaStore { inner, shutdown })
    }

    /// The lease TTL asked of etcd (before rounding up to whole seconds).
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }
}

#[async_trait]
impl MetaStore for EtcdMetaStore {
    fn capabilities(&self) -> MetaCapabilities {
        let mut capabilities = MetaCapabilities::ALL;
        capabilities.min_ttl = MIN_TTL;
        capabilities
    }

    async fn register(&self, info: ServerInfo) -> Result<Registration> {
        let json = encode_server(&info)?;
        let Some(granted) = self.inner.register(&info.id, &json).await? else {
            return Err(Error::already_exists(format!(
                "server {} is registered and its lease is live; wait for it to expire (at most \
                 {:?}) or pick another server id",
                info.id, self.inner.ttl
            ))
            .set_retryable(true));
        };
        let lease = EtcdLease::start(Arc::clone(&self.inner), info.id, granted, json);
        Ok(Registration::new(Box::new(lease)))
    }

    async fn list(&self) -> Result<Vec<ServerInfo>> {
        Ok(self.inner.snapshot().await?.1)
    }

    async fn watch(&self) -> Result<MetaWatch> {
        let (revision, servers) = self.inner.snapshot().await?;
        let stream = self.inner.watch_from(revision + 1).await?;
        let (events, receiver) = mpsc::channel(WATCH_BUFFER);
        // The channel is new and empty: the first item always fits.
        let _ = events.try_send(Ok(MetaEvent::Snapshot(servers)));
        tokio::spawn(
            Watcher {
                inner: Arc::clone(&self.inner),
                events,
                shutdown: self.shutdown.subscribe(),
                known: revision,
                behind: false,
            }
            .run(stream),
        );
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        Ok(stream.boxed())
    }
}

/// One watcher's task: forwards etcd's changes in revision order, resyncing with a snapshot
/// when the watch broke or the watcher fell behind.
struct Watcher {
    inner: Arc<Inner>,
    events: mpsc::Sender<Result<MetaEvent>>,
    shutdown: watch::Receiver<()>,
    /// The revision of the last snapshot sent: changes up to it are in it already.
    known: i64,
    /// Changes were dropped because the watcher's buffer was full; a snapshot is due.
    behind: bool,
}

/// Why the watcher stopped following a watch.
enum Stop {
    /// The store or the stream is gone: end the task.
    Done,
    /// The watch cannot continue (connection lost, history compacted): resync.
    Resync,
}

impl Watcher {
    async fn run(mut self, mut stream: WatchStream) {
        loop {
            if let Stop::Done = self.follow(&mut stream).await {
                return;
            }
            match self.resync().await {
                Some(again) => stream = again,
                None => return,
            }
        }
    }

    /// Forwards the changes `stream` delivers until it breaks or the watch ends.
    async fn follow(&mut self, stream: &mut WatchStream) -> Stop {
        loop {
            tokio::select! {
                _ = self.shutdown.changed() => return Stop::Done,
                _ = self.events.closed() => return Stop::Done,
                permit = self.events.reserve(), if self.behind => {
                    let Ok(permit) = permit else { return Stop::Done };
                    match self.inner.snapshot().await {
                        Ok((revision, servers)) => {
                            self.known = revision;
                            self.behind = false;
                            permit.send(Ok(MetaEvent::Snapshot(servers)));
                        }
                        // etcd is unreachable: resync once it is back.
                        Err(_) => return Stop::Resync,
                    }
                }
                message = stream.message() => {
                    let response = match message {
                        Ok(Some(response)) => response,
                        Ok(None) | Err(_) => return Stop::Resync,
                    };
                    if response.canceled() || response.compact_revision() != 0 {
                        tracing::debug!(
                            compacted = response.compact_revision(),
                            reason = response.cancel_reason(),
                            "etcd meta store: watch canceled; resyncing"
                        );
                        return Stop::Resync;
                    }
                    for event in response.events() {
                        let revision = event.kv().map_or(0, |kv| kv.mod_revision());
                        if self.behind || revision <= self.known {
                            continue;
                        }
                        let Some(change) = self.inner.translate(event) else {
                            continue;
                        };
                        match self.events.try_send(change) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => self.behind = true,
                            Err(mpsc::error::TrySendError::Closed(_)) => return Stop::Done,
                        }
                    }
                }
            }
        }
    }

    /// Sends a fresh snapshot and opens a watch after it, retrying with backoff while etcd is
    /// unreachable. `None` when the watch ended meanwhile.
    async fn resync(&mut self) -> Option<WatchStream> {
        let mut pause = Duration::from_millis(50);
        let mut reported = false;
        loop {
            let attempt = async {
                let (revision, servers) = self.inner.snapshot().await?;
                let stream = self.inner.watch_from(revision + 1).await?;
                Ok::<_, Error>((revision, servers, stream))
            };
            let outcome = tokio::select! {
                _ = self.shutdown.changed() => return None,
                _ = self.events.closed() => return None,
                outcome = attempt => outcome,
            };
            match outcome {
                Ok((revision, servers, stream)) => {
                    let sent = tokio::select! {
                        _ = self.shutdown.changed() => return None,
                        sent = self.events.send(Ok(MetaEvent::Snapshot(servers))) => sent,
                    };
                    sent.ok()?;
                    self.known = revision;
                    self.behind = false;
                    return Some(stream);
                }
                Err(error) => {
                    // One error per outage tells the watcher; the snapshot tells it it is over.
                    if !reported {
                        reported = true;
                        let _ = self.events.try_send(Err(error));
                    }
                }
            }
            tokio::select! {
                _ = self.shutdown.changed() => return None,
                _ = self.events.closed() => return None,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(self.inner.ttl.min(Duration::from_secs(2)));
        }
    }
}

/// What a registration holds, shared by its keep-alive task and its methods.
struct Held {
    /// The lease the key is attached to now.
    lease: i64,
    /// The current registration JSON, also used to register again after a loss.
    json: String,
}

/// Why [`EtcdLease::reacquire`] did not register the server again.
enum Reacquired {
    /// Registered again under a new lease (or someone else of ours did already).
    Yes,
    /// Another live registration holds the id now.
    HeldElsewhere,
}

/// A registration's lease: its keep-alive task renews it until the lease is dropped or
/// deregistered, and registers the server again if the lease was lost.
struct EtcdLease {
    inner: Arc<Inner>,
    id: ServerId,
    ttl: Duration,
    held: Arc<Mutex<Held>>,
    keeper: JoinHandle<()>,
}

impl EtcdLease {
    fn start(inner: Arc<Inner>, id: ServerId, granted: lease::Granted, json: String) -> EtcdLease {
        let held = Arc::new(Mutex::new(Held {
            lease: granted.id,
            json,
        }));
        let keeper = tokio::spawn(keep_alive(
            Arc::clone(&inner),
            id.clone(),
            granted.ttl,
            Arc::clone(&held),
        ));
        EtcdLease {
            inner,
            id,
            ttl: granted.ttl,
            held,
            keeper,
        }
    }

    /// Registers the server again under a new lease after `lost` was lost, unless that happened
    /// meanwhile or another registration holds the id.
    async fn reacquire(
        inner: &Inner,
        id: &ServerId,
        held: &Mutex<Held>,
        lost: i64,
    ) -> Result<Reacquired> {
        let mut held = held.lock().await;
        if held.lease != lost {
            return Ok(Reacquired::Yes);
        }
        match inner.register(id, &held.json).await? {
            Some(granted) => {
                held.lease = granted.id;
                Ok(Reacquired::Yes)
            }
            None => Ok(Reacquired::HeldElsewhere),
        }
    }
}

impl Drop for EtcdLease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Renews the lease every third of the TTL; registers again if it was lost.
async fn keep_alive(inner: Arc<Inner>, id: ServerId, ttl: Duration, held: Arc<Mutex<Held>>) {
    let mut ticks = tokio::time::interval(ttl / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate and the lease is fresh.
    ticks.tick().await;
    let mut renewer = Renewer::new(held.lock().await.lease);
    loop {
        ticks.tick().await;
        let current = held.lock().await.lease;
        if renewer.id() != current {
            renewer = Renewer::new(current);
        }
        match renewer.renew(&inner.etcd).await {
            Ok(Renewal::Alive) => {}
            Ok(Renewal::Lost) => match EtcdLease::reacquire(&inner, &id, &held, current).await {
                Ok(Reacquired::Yes) => {
                    tracing::info!(server = %id, "etcd meta store: lease was lost; registered again")
                }
                Ok(Reacquired::HeldElsewhere) => tracing::warn!(
                    server = %id,
                    "etcd meta store: lease was lost and another process registered this server \
                     id; retrying until its lease expires"
                ),
                Err(error) => tracing::warn!(
                    server = %id, %error,
                    "etcd meta store: lease was lost and registering again failed; retrying"
                ),
            },
            Err(error) => {
                tracing::warn!(server = %id, %error, "etcd meta store: lease renewal failed; retrying")
            }
        }
    }
}

#[async_trait]
impl Lease for EtcdLease {
    fn server_id(&self) -> &ServerId {
        &self.id
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn update(&self, info: ServerInfo) -> Result<()> {
        let json = encode_server(&info)?;
        let lost = {
            let mut held = self.held.lock().await;
            held.json = json.clone();
            let key = self.inner.key(&self.id);
            // Only while the key is still ours, that is attached to our lease.
            let txn = Txn::new()
                .when([Compare::lease(key.as_str(), CompareOp::Equal, held.lease)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    json,
                    Some(PutOptions::new().with_lease(held.lease)),
                )]);
            if self
                .inner
                .etcd
                .txn("update registration", txn)
                .await?
                .succeeded()
            {
                return Ok(());
            }
            held.lease
        };
        match EtcdLease::reacquire(&self.inner, &self.id, &self.held, lost).await? {
            Reacquired::Yes => Ok(()),
            Reacquired::HeldElsewhere => Err(Error::conflict(format!(
                "server {} is registered by another process now; this registration lost its lease",
                self.id
            ))),
        }
    }

    async fn deregister(self: Box<Self>) -> Result<()> {
        self.keeper.abort();
        let lease = self.held.lock().await.lease;
        // Revoking deletes the key if it is still ours, and nothing else.
        lease::revoke(&self.inner.etcd, lease).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store on the etcd the fixture provides, or `None` (skipped) without one.
    async fn store(
        namespace: &str,
    ) -> Option<(cim_backend_fixtures::etcd::EtcdTarget, EtcdMetaStore)> {
        let etcd = cim_backend_fixtures::etcd::etcd()?;
        let config = EtcdConfig::new(etcd.endpoints());
        let store = EtcdMetaStore::connect(&config, namespace, Duration::from_secs(2))
            .await
            .expect("connect");
        Some((etcd, store))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_whose_history_was_compacted_resyncs_with_a_fresh_snapshot() {
        let Some((_etcd, store)) = store("compacted_watch").await else {
            return;
        };
        let first = ServerInfo::new(ServerId::new("first").expect("id"), "10.0.0.1", 7000, 7001);
        let _first = store.register(first.clone()).await.expect("register");
        let (stale_revision, _) = store.inner.snapshot().await.expect("snapshot");
        let second = ServerInfo::new(ServerId::new("second").expect("id"), "10.0.0.2", 7000, 7001);
        let registration = store.register(second.clone()).await.expect("register");
        let mut second = second;
        second.load = 42;
        registration.update(second.clone()).await.expect("update");
        // Compacting at the latest revision drops every one before it, stale_revision + 1 too.
        let (now, _) = store.inner.snapshot().await.expect("snapshot");
        store
            .inner
            .etcd
            .call("compact", store.inner.etcd.kv().compact(now, None))
            .await
            .expect("compact the history");

        // A watcher that must continue from before the compaction, as one that was away.
        let stream = store
            .inner
            .watch_from(stale_revision + 1)
            .await
            .expect("open a watch at a compacted revision");
        let (events, mut receiver) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(
            Watcher {
                inner: Arc::clone(&store.inner),
                events,
                shutdown: store.shutdown.subscribe(),
                known: stale_revision,
                behind: false,
            }
            .run(stream),
        );

        let next = tokio::time::timeout(Duration::from_secs(10), receiver.recv())
            .await
            .expect("the watcher reacts in time")
            .expect("the watch goes on")
            .expect("no error");
        assert_eq!(
            next,
            MetaEvent::Snapshot(vec![first, second]),
            "a watcher whose history is compacted away must resync with a fresh snapshot"
        );
    }
}
