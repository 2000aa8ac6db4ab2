//! [`ConsulMetaStore`]: server registration and discovery in Consul.
//!
//! A registration is the key `{prefix}/{ns}/servers/{id}` (the server's JSON), acquired by a
//! Consul session of its own with the store's TTL and behaviour `delete`. The [`Lease`]'s
//! keep-alive task renews the session every third of the TTL; when the owner dies, nobody
//! renews, Consul invalidates the session (at most twice the TTL after the last renewal: the
//! TTL is a lower bound to Consul) and deletes the key with it. Nothing needs sweeping. A
//! keep-alive that finds its session gone (renew answers 404: expired during a partition,
//! destroyed, or the agents lost their data) registers again under a new session.
//!
//! Watching uses blocking queries, and Consul's blocking queries report state, not changes:
//! several changes between two queries arrive as one. So every change this store makes also
//! appends an event to a log in the same transaction: `servers-seq` (a counter, moved by
//! check-and-set, so concurrent writers serialise) and `servers-log/{seq}` (the event; each
//! writer deletes the entry [`LOG_KEEP`] behind, so the log stays bounded). A watcher keeps
//! the sequence number it has seen and blocks on the keys under `{prefix}/{ns}/servers`, which
//! cover the servers, the log and the counter: one consistent view at one index. On each
//! answer it reads the log entries it has not seen (one transaction of `get`s per 64 entries)
//! and forwards them in order; servers that vanished without an event (sessions that expired)
//! are reported `Removed` after them. It sends a fresh snapshot instead when it cannot be sure
//! it saw everything: the index went backwards (the agents lost their data), the log moved on
//! past what is kept (a watcher that fell more than [`LOG_KEEP`] changes behind), a server
//! appeared that no event announced, or a request failed.
//!
//! Costs: a registration is a session plus one transaction (plus one read of the counter when
//! another writer moved it); a renewal is one request per third of the TTL per server; each
//! change wakes every watcher, which then lists the keys under the prefix (servers plus up to
//! [`LOG_KEEP`] log keys) and reads the new log entries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use cim_core::codec::{decode_server, encode_server};
use cim_core::meta_store::{
    Lease, MetaCapabilities, MetaEvent, MetaStore, MetaWatch, Registration,
};
use cim_core::registry::{BackendOptions, BuildFuture, MetaStoreFactory};
use cim_core::{Error, Result, ServerId, ServerInfo};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::ConsulConfig;
use crate::client::{
    BlockingQuery, ConsulClient, Indexed, MAX_TXN_OPS, SessionBehavior, SessionSpec, TxnError,
    TxnOp, TxnOutcome,
};
use crate::config::validate_namespace;

/// The lease TTL when `[meta] ttl` is not set (Consul's default `session_ttl_min`).
const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// The shortest TTL accepted: renewals every third of it are HTTP round trips to an agent that
/// forwards them to the leader. (The agents' `session_ttl_min`, 10 s unless lowered, usually
/// sets a higher floor; the store checks it when it starts.)
const MIN_TTL: Duration = Duration::from_secs(1);

/// How many log entries are kept: a watcher that falls further behind resyncs.
pub const LOG_KEEP: u64 = 256;

/// Events buffered for one watcher before its task waits for the reader.
const WATCH_BUFFER: usize = 256;

/// How often a change retries when other writers keep moving the log counter.
const MAX_ATTEMPTS: usize = 1000;

inventory::submit! {
    MetaStoreFactory::new(
        "consul",
        "Consul KV held by a session per server (TTL, behavior=delete); watch by blocking queries",
        build,
    )
}

fn build(options: BackendOptions) -> BuildFuture<dyn MetaStore> {
    Box::pin(async move {
        let config: ConsulConfig = options.parse()?;
        let ttl = options.ttl().unwrap_or(DEFAULT_TTL);
        let store = ConsulMetaStore::connect(&config, options.namespace(), ttl).await?;
        Ok(Arc::new(store) as Arc<dyn MetaStore>)
    })
}

/// An event as the log keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Logged {
    Added(ServerInfo),
    Updated(ServerInfo),
    Removed(ServerId),
}

/// The store's keys: everything lives under `root` = `{prefix}/{namespace}/servers`.
#[derive(Debug)]
struct Keys {
    root: String,
}

/// What a key under the root is.
enum Key {
    Server(ServerId),
    Log(u64),
    Other,
}

impl Keys {
    fn servers(&self) -> String {
        format!("{}/", self.root)
    }

    fn server(&self, id: &ServerId) -> String {
        format!("{}/{id}", self.root)
    }

    fn log(&self, seq: u64) -> String {
        format!("{}-log/{seq:020}", self.root)
    }

    fn seq(&self) -> String {
        format!("{}-seq", self.root)
    }

    fn classify(&self, key: &str) -> Key {
        let Some(rest) = key.strip_prefix(&self.root) else {
            return Key::Other;
        };
        if let Some(id) = rest.strip_prefix('/') {
            return ServerId::new(id).map_or(Key::Other, Key::Server);
        }
        if let Some(seq) = rest.strip_prefix("-log/") {
            return seq.parse().map_or(Key::Other, Key::Log);
        }
        Key::Other
    }
}

/// The live servers and the log position and index they were read at.
struct Snapshot {
    servers: Vec<ServerInfo>,
    seq: u64,
    index: u64,
}

/// What a logged change did.
enum Change {
    Applied,
    /// The change's own operations failed (a check, or a lock held by another session).
    Refused(Vec<TxnError>),
}

/// What the store, its leases and its watchers share.
struct Inner {
    client: ConsulClient,
    keys: Keys,
    ttl: Duration,
    wait: Duration,
    /// The log counter and its `ModifyIndex` after this store's last change: the next change
    /// tries them before reading the counter again.
    counter: Mutex<Option<(u64, u64)>>,
}

impl Inner {
    fn session_spec(&self, id: &ServerId) -> SessionSpec {
        SessionSpec {
            name: format!("cim meta {}", self.keys.server(id)),
            ttl: self.ttl,
            behavior: SessionBehavior::Delete,
            lock_delay: Duration::ZERO,
        }
    }

    /// Applies `ops` and logs `event` in one transaction, retrying while other writers move
    /// the log counter.
    async fn change(&self, event: &Logged, ops: Vec<TxnOp>) -> Result<Change> {
        let event = serde_json::to_vec(event).map_err(|e| {
            Error::invalid_input("the server registration cannot be encoded").with_source(e)
        })?;
        for _ in 0..MAX_ATTEMPTS {
            let cached = *self.counter.lock().unwrap_or_else(PoisonError::into_inner);
            let (seq, seq_index) = match cached {
                Some(counter) => counter,
                None => self.read_counter().await?,
            };
            let next = seq + 1;
            let mut txn = vec![
                TxnOp::Cas {
                    key: self.keys.seq(),
                    value: next.to_string().into_bytes(),
                    index: seq_index,
                },
                TxnOp::Set {
                    key: self.keys.log(next),
                    value: event.clone(),
                },
            ];
            if next > LOG_KEEP {
                txn.push(TxnOp::Delete {
                    key: self.keys.log(next - LOG_KEEP),
                });
            }
            let own = txn.len();
            txn.extend(ops.iter().cloned());
            match self.client.txn(&txn).await? {
                TxnOutcome::Committed(entries) => {
                    // The first result is the counter's entry (the check-and-set comes first).
                    let counter = entries.first().map(|entry| (next, entry.modify_index));
                    *self.counter.lock().unwrap_or_else(PoisonError::into_inner) = counter;
                    return Ok(Change::Applied);
                }
                TxnOutcome::RolledBack(errors) if errors.iter().any(|e| e.op_index < own) => {
                    // Another writer moved the counter: read it again and retry.
                    *self.counter.lock().unwrap_or_else(PoisonError::into_inner) = None;
                }
                TxnOutcome::RolledBack(errors) => return Ok(Change::Refused(errors)),
            }
        }
        Err(
            Error::conflict("too many concurrent registration changes in consul; retry the change")
                .set_retryable(true),
        )
    }

    /// The log counter and its `ModifyIndex` (0, 0 before the first change).
    async fn read_counter(&self) -> Result<(u64, u64)> {
        let Some(entry) = self.client.kv_get(&self.keys.seq()).await? else {
            return Ok((0, 0));
        };
        let text = String::from_utf8_lossy(&entry.value);
        let seq = text.parse::<u64>().map_err(|_| {
            Error::internal(format!(
                "consul key {} holds {text:?}, not cim's log counter",
                self.keys.seq()
            ))
        })?;
        Ok((seq, entry.modify_index))
    }

    /// Creates a session for `info` and acquires its key with it, logging `Added`: the new
    /// session, or `None` if another session holds the id.
    async fn claim(&self, info: &ServerInfo) -> Result<Option<String>> {
        let json = encode_server(info)?.into_bytes();
        let session = self
            .client
            .session_create(&self.session_spec(&info.id))
            .await?;
        let lock = TxnOp::Lock {
            key: self.keys.server(&info.id),
            value: json,
            session: session.clone(),
        };
        let outcome = self.change(&Logged::Added(info.clone()), vec![lock]).await;
        match outcome {
            Ok(Change::Applied) => Ok(Some(session)),
            Ok(Change::Refused(errors)) => {
                tracing::debug!(?errors, server = %info.id, "consul meta store: the id is held");
                self.discard(&session).await;
                Ok(None)
            }
            Err(error) => {
                self.discard(&session).await;
                Err(error)
            }
        }
    }

    /// Destroys a session nobody will use; if that fails, it expires by itself.
    async fn discard(&self, session: &str) {
        if let Err(error) = self.client.session_destroy(session).await {
            tracing::debug!(%error, "consul meta store: an unused session expires by itself");
        }
    }

    /// The live servers ordered by id.
    async fn list(&self) -> Result<Vec<ServerInfo>> {
        let entries = self.client.kv_list(&self.keys.servers(), None).await?.value;
        let mut servers = entries
            .iter()
            .filter(|entry| matches!(self.keys.classify(&entry.key), Key::Server(_)))
            .map(|entry| decode_server(&entry.value, "consul"))
            .collect::<Result<Vec<_>>>()?;
        servers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(servers)
    }

    /// The live servers with the log position and index they were read at, in one read.
    async fn snapshot(&self) -> Result<Snapshot> {
        let Indexed { value, index } = self.client.kv_list(&self.keys.root, None).await?;
        let mut servers = Vec::new();
        let mut seq = 0;
        for entry in &value {
            match self.keys.classify(&entry.key) {
                Key::Server(_) => servers.push(decode_server(&entry.value, "consul")?),
                Key::Log(at) => seq = seq.max(at),
                Key::Other => {}
            }
        }
        servers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Snapshot {
            servers,
            seq,
            index,
        })
    }

    /// The log entries `from..=to`, or `None` if one is gone (trimmed meanwhile).
    async fn read_log(&self, from: u64, to: u64) -> Result<Option<Vec<Logged>>> {
        let mut events = Vec::new();
        let seqs: Vec<u64> = (from..=to).collect();
        for chunk in seqs.chunks(MAX_TXN_OPS) {
            let gets: Vec<TxnOp> = chunk
                .iter()
                .map(|seq| TxnOp::Get {
                    key: self.keys.log(*seq),
                })
                .collect();
            let TxnOutcome::Committed(entries) = self.client.txn(&gets).await? else {
                return Ok(None);
            };
            for entry in entries {
                events.push(serde_json::from_slice(&entry.value).map_err(|e| {
                    Error::internal(format!("consul key {} is not a cim meta event", entry.key))
                        .with_source(e)
                })?);
            }
        }
        Ok(Some(events))
    }
}

/// A [`MetaStore`] in Consul's KV store, shared by every node of a cluster.
///
/// Each registration holds a Consul session (TTL, behaviour `delete`) renewed every third of
/// the TTL; a dropped [`Registration`] disappears when Consul invalidates its session, at most
/// twice the TTL after its last renewal. `watch` is supported; TTLs below 1 s, and below the
/// agents' `session_ttl_min`, are refused when the store starts.
pub struct ConsulMetaStore {
    inner: Arc<Inner>,
    /// Dropped with the store: watch tasks see the channel close and end their streams.
    shutdown: watch::Sender<()>,
}

impl std::fmt::Debug for ConsulMetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulMetaStore")
            .field("client", &self.inner.client)
            .field("root", &self.inner.keys.root)
            .field("ttl", &self.inner.ttl)
            .finish()
    }
}

impl ConsulMetaStore {
    /// Connects to the agent `config` names and keeps registrations under
    /// `{prefix}/{namespace}/servers/` with sessions of `ttl`. Creates and destroys one session
    /// to check that the agent is reachable, the token is accepted and the TTL is allowed.
    pub async fn connect(
        config: &ConsulConfig,
        namespace: &str,
        ttl: Duration,
    ) -> Result<ConsulMetaStore> {
        if ttl < MIN_TTL {
            return Err(Error::config(format!(
                "[meta] ttl = {ttl:?} is too short for consul; use at least {MIN_TTL:?} (for \
                 example \"10s\")"
            )));
        }
        validate_namespace(namespace)?;
        let inner = Arc::new(Inner {
            client: ConsulClient::new(config)?,
            keys: Keys {
                root: format!("{}/{namespace}/servers", config.prefix),
            },
            ttl,
            wait: config.wait,
            counter: Mutex::new(None),
        });
        let probe = inner
            .client
            .session_create(&SessionSpec {
                name: "cim meta probe".to_string(),
                ..inner.session_spec(&ServerId::new("probe")?)
            })
            .await
            .map_err(|e| e.with_context("section", "meta"))?;
        inner.discard(&probe).await;
        let (shutdown, _) = watch::channel(());
        Ok(ConsulMetaStore { inner, shutdown })
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }
}

#[async_trait]
impl MetaStore for ConsulMetaStore {
    fn capabilities(&self) -> MetaCapabilities {
        let mut capabilities = MetaCapabilities::ALL;
        capabilities.min_ttl = MIN_TTL;
        capabilities
    }

    async fn register(&self, info: ServerInfo) -> Result<Registration> {
        let Some(session) = self.inner.claim(&info).await? else {
            return Err(Error::already_exists(format!(
                "server {} is registered and its consul session is live; wait for it to expire \
                 (at most {:?}) or pick another server id",
                info.id,
                self.inner.ttl * 2
            ))
            .set_retryable(true));
        };
        let lease = ConsulLease::start(Arc::clone(&self.inner), info, session);
        Ok(Registration::new(Box::new(lease)))
    }

    async fn list(&self) -> Result<Vec<ServerInfo>> {
        self.inner.list().await
    }

    async fn watch(&self) -> Result<MetaWatch> {
        let snapshot = self.inner.snapshot().await?;
        let (events, receiver) = mpsc::channel(WATCH_BUFFER);
        // The channel is new and empty: the first item always fits.
        let _ = events.try_send(Ok(MetaEvent::Snapshot(snapshot.servers.clone())));
        tokio::spawn(
            Watcher {
                inner: Arc::clone(&self.inner),
                events,
                shutdown: self.shutdown.subscribe(),
                known: snapshot
                    .servers
                    .into_iter()
                    .map(|info| (info.id.clone(), info))
                    .collect(),
                seq: snapshot.seq,
                index: snapshot.index.max(1),
            }
            .run(),
        );
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        Ok(stream.boxed())
    }
}

/// One watcher's task: follows the log with blocking queries (see the module docs).
struct Watcher {
    inner: Arc<Inner>,
    events: mpsc::Sender<Result<MetaEvent>>,
    shutdown: watch::Receiver<()>,
    /// What the reader knows once it has read every event sent.
    known: BTreeMap<ServerId, ServerInfo>,
    /// The last log entry forwarded.
    seq: u64,
    /// The index of the last answer processed.
    index: u64,
}

/// What the watcher does after an answer.
enum Next {
    Poll,
    /// Read a fresh snapshot and send it.
    Resync,
    /// Read a fresh snapshot; send it only if it differs from what the reader knows (the
    /// index went backwards, which Consul allows, for example when tombstones are reaped).
    Rebase,
    Stop,
}

impl Watcher {
    async fn run(mut self) {
        loop {
            let block = BlockingQuery {
                index: self.index,
                wait: self.inner.wait,
            };
            let polled = tokio::select! {
                _ = self.shutdown.changed() => return,
                _ = self.events.closed() => return,
                polled = self.inner.client.kv_keys(&self.inner.keys.root, Some(block)) => polled,
            };
            let next = match polled {
                Ok(Indexed { value, index }) => self.advance(value, index).await,
                Err(error) => match self.events.send(Err(error)).await {
                    Ok(()) => {
                        if self.resync(true, false).await {
                            Next::Poll
                        } else {
                            Next::Stop
                        }
                    }
                    Err(_) => Next::Stop,
                },
            };
            match next {
                Next::Poll => {}
                Next::Stop => return,
                Next::Resync | Next::Rebase => {
                    let quiet = matches!(next, Next::Rebase);
                    if !self.resync(false, quiet).await {
                        return;
                    }
                }
            }
        }
    }

    /// Forwards what changed by `index`, as the `keys` under the root show it.
    async fn advance(&mut self, keys: Vec<String>, index: u64) -> Next {
        if index < self.index {
            // The index went backwards: tombstones reaped, or the agents lost or restored their
            // data. Only a fresh read tells which.
            return Next::Rebase;
        }
        if index == self.index {
            // The wait ran out with nothing new.
            return Next::Poll;
        }
        let mut ids = BTreeSet::new();
        let mut seqs = BTreeSet::new();
        for key in &keys {
            match self.inner.keys.classify(key) {
                Key::Server(id) => {
                    ids.insert(id);
                }
                Key::Log(seq) => {
                    seqs.insert(seq);
                }
                Key::Other => {}
            }
        }
        let latest = seqs.last().copied().unwrap_or(0);
        if latest < self.seq {
            return Next::Resync;
        }
        if latest > self.seq {
            if !seqs.contains(&(self.seq + 1)) {
                // Trimmed past what this watcher has seen.
                return Next::Resync;
            }
            let events = match self.inner.read_log(self.seq + 1, latest).await {
                Ok(Some(events)) => events,
                Ok(None) => return Next::Resync,
                Err(error) => {
                    return match self.events.send(Err(error)).await {
                        Ok(()) => Next::Resync,
                        Err(_) => Next::Stop,
                    };
                }
            };
            for event in events {
                if let Some(event) = self.fold(event)
                    && self.events.send(Ok(event)).await.is_err()
                {
                    return Next::Stop;
                }
            }
            self.seq = latest;
        }
        // Servers whose session expired leave without an event.
        let expired: Vec<ServerId> = self
            .known
            .keys()
            .filter(|id| !ids.contains(*id))
            .cloned()
            .collect();
        for id in expired {
            self.known.remove(&id);
            if self.events.send(Ok(MetaEvent::Removed(id))).await.is_err() {
                return Next::Stop;
            }
        }
        if ids.iter().any(|id| !self.known.contains_key(id)) {
            // A server no event announced: something wrote under cim's prefix.
            return Next::Resync;
        }
        self.index = index;
        Next::Poll
    }

    /// Applies a logged event to what the reader knows; the event to send, if any.
    fn fold(&mut self, event: Logged) -> Option<MetaEvent> {
        match event {
            Logged::Added(info) => {
                self.known.insert(info.id.clone(), info.clone());
                Some(MetaEvent::Added(info))
            }
            Logged::Updated(info) => {
                let known = self.known.insert(info.id.clone(), info.clone()).is_some();
                Some(if known {
                    MetaEvent::Updated(info)
                } else {
                    MetaEvent::Added(info)
                })
            }
            Logged::Removed(id) => self.known.remove(&id).map(|_| MetaEvent::Removed(id)),
        }
    }

    /// Sends a fresh snapshot, retrying with backoff until one can be read; reports the first
    /// failure unless `reported`. When `quiet`, a snapshot at the same log position with the
    /// servers the reader knows is not sent: no logged change happened and none expired. False
    /// when the watch ended meanwhile.
    async fn resync(&mut self, mut reported: bool, quiet: bool) -> bool {
        let mut pause = Duration::from_millis(50);
        loop {
            let attempt = tokio::select! {
                _ = self.shutdown.changed() => return false,
                _ = self.events.closed() => return false,
                attempt = self.inner.snapshot() => attempt,
            };
            match attempt {
                Ok(snapshot) => {
                    let unchanged = snapshot.seq == self.seq
                        && snapshot.servers.len() == self.known.len()
                        && snapshot
                            .servers
                            .iter()
                            .all(|info| self.known.get(&info.id) == Some(info));
                    if quiet && unchanged {
                        self.index = snapshot.index.max(1);
                        return true;
                    }
                    self.known = snapshot
                        .servers
                        .iter()
                        .map(|info| (info.id.clone(), info.clone()))
                        .collect();
                    self.seq = snapshot.seq;
                    self.index = snapshot.index.max(1);
                    return self
                        .events
                        .send(Ok(MetaEvent::Snapshot(snapshot.servers)))
                        .await
                        .is_ok();
                }
                Err(error) if !reported => {
                    reported = true;
                    if self.events.send(Err(error)).await.is_err() {
                        return false;
                    }
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = self.shutdown.changed() => return false,
                _ = self.events.closed() => return false,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(self.inner.ttl.min(Duration::from_secs(2)));
        }
    }
}

/// A registration's state: the session holding its key (none while lost) and what it
/// registers.
struct LeaseState {
    session: Option<String>,
    info: ServerInfo,
}

/// What a lease and its keep-alive task share.
struct LeaseShared {
    inner: Arc<Inner>,
    id: ServerId,
    state: tokio::sync::Mutex<LeaseState>,
}

impl LeaseShared {
    /// Renews the session, or registers again under a new one if it is gone.
    async fn keep(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        if let Some(session) = &state.session {
            if self.inner.client.session_renew(session).await? {
                return Ok(());
            }
            tracing::info!(
                server = %self.id,
                "consul meta store: the registration's session is gone; registering again"
            );
            state.session = None;
        }
        state.session = self.inner.claim(&state.info).await?;
        match &state.session {
            Some(_) => tracing::info!(server = %self.id, "consul meta store: registered again"),
            None => tracing::warn!(
                server = %self.id,
                "consul meta store: another process holds this server id; retrying until its \
                 session expires"
            ),
        }
        Ok(())
    }
}

/// A registration's lease: its keep-alive task renews the session until the lease is dropped
/// or deregistered.
struct ConsulLease {
    shared: Arc<LeaseShared>,
    keeper: JoinHandle<()>,
}

impl ConsulLease {
    fn start(inner: Arc<Inner>, info: ServerInfo, session: String) -> ConsulLease {
        let shared = Arc::new(LeaseShared {
            inner,
            id: info.id.clone(),
            state: tokio::sync::Mutex::new(LeaseState {
                session: Some(session),
                info,
            }),
        });
        let keeper = tokio::spawn(keep_alive(Arc::clone(&shared)));
        ConsulLease { shared, keeper }
    }
}

impl Drop for ConsulLease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Renews every third of the TTL, for as long as the lease lives.
async fn keep_alive(shared: Arc<LeaseShared>) {
    let mut ticks = tokio::time::interval(shared.inner.ttl / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate and the session is fresh.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        if let Err(error) = shared.keep().await {
            tracing::warn!(
                server = %shared.id,
                %error,
                "consul meta store: renewing the registration failed; retrying"
            );
        }
    }
}

#[async_trait]
impl Lease for ConsulLease {
    fn server_id(&self) -> &ServerId {
        &self.shared.id
    }

    fn ttl(&self) -> Duration {
        self.shared.inner.ttl
    }

    async fn update(&self, info: ServerInfo) -> Result<()> {
        let inner = &self.shared.inner;
        let json = encode_server(&info)?.into_bytes();
        let mut state = self.shared.state.lock().await;
        state.info = info.clone();
        if let Some(session) = state.session.clone() {
            let lock = TxnOp::Lock {
                key: inner.keys.server(&info.id),
                value: json,
                session: session.clone(),
            };
            match inner
                .change(&Logged::Updated(info.clone()), vec![lock])
                .await?
            {
                Change::Applied => return Ok(()),
                Change::Refused(_) => {
                    // The session no longer holds the key: it is gone, or another holds it.
                    if inner.client.session_renew(&session).await? {
                        return Err(lost(&info.id));
                    }
                    state.session = None;
                }
            }
        }
        state.session = inner.claim(&info).await?;
        match state.session {
            Some(_) => Ok(()),
            None => Err(lost(&info.id)),
        }
    }

    async fn deregister(self: Box<Self>) -> Result<()> {
        self.keeper.abort();
        let inner = &self.shared.inner;
        let mut state = self.shared.state.lock().await;
        let Some(session) = state.session.take() else {
            return Ok(());
        };
        let key = inner.keys.server(&self.shared.id);
        let ops = vec![
            TxnOp::CheckSession {
                key: key.clone(),
                session: session.clone(),
            },
            TxnOp::Delete { key },
        ];
        // Refused: the key is not this session's any more; nothing of ours to remove.
        let removed = inner
            .change(&Logged::Removed(self.shared.id.clone()), ops)
            .await;
        let destroyed = inner.client.session_destroy(&session).await;
        removed?;
        destroyed
    }
}

fn lost(id: &ServerId) -> Error {
    Error::conflict(format!(
        "server {id} is registered by another process now; this registration lost its consul \
         session"
    ))
}
