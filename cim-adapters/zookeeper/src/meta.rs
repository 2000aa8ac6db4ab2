//! [`ZooKeeperMetaStore`]: server registration and discovery in ZooKeeper.
//!
//! Under `{root}/{namespace}/meta`:
//!
//! | node | kind | holds |
//! |---|---|---|
//! | `servers/{id}` | ephemeral, owned by the registering store's session | the [`ServerInfo`] as JSON |
//! | `events/e{millis}-{seq}` | persistent sequential | the journal of changes: `added\n{json}` or `updated\n{json}` |
//!
//! A lease is ZooKeeper's own: the store's session (its timeout is the `ttl`) owns the nodes of
//! every registration made through it, and the client's heartbeats keep the session alive. When
//! the process dies, the session expires and ZooKeeper deletes the nodes by itself. Dropping a
//! [`Registration`] deletes its node at once.
//!
//! A registrar task checks every third of the TTL, and at once whenever the session changes
//! state, that each live registration's node is owned by the current session (it lists the
//! session's ephemerals). After a session expiry it opens a new session and registers everything
//! again; a node deleted by someone else is created again; a node no registration wants any more
//! (its drop could not reach ZooKeeper) is deleted. A node still held by the expired session is
//! left alone until ZooKeeper expires that session too (at most one session timeout after it is
//! back): deleting it by version could delete another process's registration of the id made in
//! between, since a node created again starts at version 0 again.
//!
//! Every registration and update is one transaction with its journal entry, so that watchers
//! (the `watch` module) can report the exact sequence of changes: a ZooKeeper watch event names
//! a node but not its new content, and the journal entry, which never changes, is that content.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use cim_core::codec::{decode_server, encode_server};
use cim_core::meta_store::{
    Lease, MetaCapabilities, MetaEvent, MetaStore, MetaWatch, Registration,
};
use cim_core::registry::{BackendOptions, BuildFuture, MetaStoreFactory};
use cim_core::{Error, Result, ServerId, ServerInfo};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use zookeeper_client::{self as zk, AddWatchMode, Client, CreateMode, MultiReadResult, Stat};

use crate::ZooKeeperConfig;
use crate::connection::{
    ZooKeeper, check_server_id, convert, convert_multi, deployment_path, failed_op,
};
use crate::journal;
use crate::watch::{self as watching, Watcher};

/// The lease TTL (the session timeout) when `[meta] ttl` is not set.
const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// The shortest TTL accepted. ZooKeeper raises a shorter session timeout to its
/// `minSessionTimeout` (two ticks by default); [`Registration::ttl`] reports what it granted.
const MIN_TTL: Duration = Duration::from_millis(100);

/// Events buffered for one watcher; a watcher further behind gets a fresh snapshot instead.
const WATCH_BUFFER: usize = 256;

/// How many nodes one multi-read asks for.
const READ_BATCH: usize = 500;

/// How often a transaction is tried again when the node changed under it.
const ATTEMPTS: usize = 16;

inventory::submit! {
    MetaStoreFactory::new(
        "zookeeper",
        "ZooKeeper ephemeral nodes owned by each node's session; watch by a persistent recursive \
         watch (ZooKeeper 3.6+)",
        build,
    )
}

fn build(options: BackendOptions) -> BuildFuture<dyn MetaStore> {
    Box::pin(async move {
        let config: ZooKeeperConfig = options.parse()?;
        let ttl = options.ttl().unwrap_or(DEFAULT_TTL);
        let store = ZooKeeperMetaStore::connect(&config, options.namespace(), ttl).await?;
        Ok(Arc::new(store) as Arc<dyn MetaStore>)
    })
}

/// Where the meta store's nodes are.
#[derive(Debug)]
pub(crate) struct MetaPaths {
    /// `{root}/{namespace}/meta`: what watchers watch.
    pub(crate) meta: String,
    /// `.../meta/servers`: one ephemeral node per registered server.
    pub(crate) servers: String,
    /// `.../meta/events`: the journal.
    pub(crate) events: String,
}

impl MetaPaths {
    fn new(deployment: &str) -> MetaPaths {
        let meta = format!("{deployment}/meta");
        MetaPaths {
            servers: format!("{meta}/servers"),
            events: format!("{meta}/events"),
            meta,
        }
    }

    pub(crate) fn server(&self, id: &ServerId) -> String {
        format!("{}/{id}", self.servers)
    }
}

/// What the store, its leases, its registrar and its watch tasks share.
pub(crate) struct Inner {
    pub(crate) zk: ZooKeeper,
    pub(crate) paths: MetaPaths,
    ttl: Duration,
    /// The registrations made through this store that are neither dropped nor deregistered.
    live: Mutex<HashMap<ServerId, Arc<Entry>>>,
    /// Held while a node is placed for a new registration or deleted for a gone one, so that
    /// the registrar and those never act on the same id at once.
    placing: tokio::sync::Mutex<()>,
}

/// One live registration.
struct Entry {
    id: ServerId,
    path: String,
    /// Serialises the updates and repairs of this registration.
    state: tokio::sync::Mutex<Placement>,
}

/// A registration's information and where its node stands.
struct Placement {
    json: String,
    /// The node, once placed in a session.
    node: Option<OwnNode>,
}

/// A node this store placed: in which session, at which data version.
#[derive(Debug, Clone, Copy)]
struct OwnNode {
    session: i64,
    version: i32,
}

impl Inner {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<ServerId, Arc<Entry>>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_live(&self, id: &ServerId) -> bool {
        self.live().contains_key(id)
    }

    async fn ensure_dirs(&self, client: &Client) -> Result<()> {
        self.zk.ensure_path(client, &self.paths.servers).await?;
        self.zk.ensure_path(client, &self.paths.events).await
    }

    /// Puts the registration's node in place in `client`'s session, with its journal entry.
    /// Returns true if it created the node, false if the session owned it already.
    ///
    /// `fresh` is for a new registration: a node the current session owns is then an orphan of
    /// a dropped registration, and is replaced. A node another session owns is never touched,
    /// not even one of an expired session of this process: between reading its version and
    /// deleting it, it could have expired and been registered by another process, whose node
    /// would then go (a node created again starts at version 0 again). It goes by itself when
    /// ZooKeeper expires its session; until then a new registration fails with a retryable
    /// `AlreadyExists`, and a lost one waits for the registrar's next round.
    async fn place(
        &self,
        client: &Client,
        path: &str,
        placement: &mut Placement,
        fresh: bool,
    ) -> Result<bool> {
        let session = client.session_id().0;
        let ephemeral = CreateMode::Ephemeral.with_acls(self.zk.acls());
        let sequential = CreateMode::PersistentSequential.with_acls(self.zk.acls());
        let entry = journal::added(&placement.json);
        let mut orphan_version = None;
        for _ in 0..ATTEMPTS {
            let mut writer = client.new_multi_writer();
            if let Some(version) = orphan_version.take() {
                writer
                    .add_delete(path, Some(version))
                    .map_err(|e| convert(e, "register"))?;
            }
            writer
                .add_create(path, placement.json.as_bytes(), &ephemeral)
                .map_err(|e| convert(e, "register"))?;
            writer
                .add_create(
                    &journal::entry_prefix(&self.paths.events),
                    &entry,
                    &sequential,
                )
                .map_err(|e| convert(e, "register"))?;
            match self.zk.within("register", writer.commit()).await? {
                Ok(_) => {
                    placement.node = Some(OwnNode {
                        session,
                        version: 0,
                    });
                    return Ok(true);
                }
                Err(failure) => match failed_op(&failure) {
                    // The id's node exists (or the orphan changed): see whose it is.
                    Some((_, zk::Error::NodeExists | zk::Error::BadVersion)) => {}
                    Some((_, zk::Error::NoNode)) => {
                        self.ensure_dirs(client).await?;
                        continue;
                    }
                    _ => return Err(convert_multi(failure, "register")),
                },
            }
            let stat = match self.zk.within("register", client.check_stat(path)).await? {
                Ok(Some(stat)) => stat,
                Ok(None) => continue,
                Err(e) => return Err(convert(e, "register")),
            };
            match (stat.ephemeral_owner == session, fresh) {
                (true, false) => {
                    placement.node = Some(OwnNode {
                        session,
                        version: stat.version,
                    });
                    return Ok(false);
                }
                // An orphan of this session: replace it in the next transaction.
                (true, true) => orphan_version = Some(stat.version),
                (false, true) => {
                    return Err(Error::already_exists(format!(
                        "server {} is registered in another ZooKeeper session (another process, \
                         or an expired session of this one); wait until ZooKeeper expires it \
                         (at most {:?}) or pick another server id",
                        server_name(path),
                        self.zk.session_timeout()
                    ))
                    .set_retryable(true));
                }
                (false, false) => {
                    return Err(Error::conflict(format!(
                        "server {} is held by another ZooKeeper session (an expired session of \
                         this process, or another process); it is registered again once \
                         ZooKeeper expires that session (at most {:?})",
                        server_name(path),
                        self.zk.session_timeout()
                    ))
                    .set_retryable(true));
                }
            }
        }
        Err(busy("register"))
    }

    /// Stores `json` as the registration's information, with an `updated` journal entry; puts
    /// the node back first if it is not in place in the current session.
    async fn update(&self, entry: &Entry, json: String) -> Result<()> {
        let mut placement = entry.state.lock().await;
        placement.json = json;
        let client = self.zk.client().await?;
        let session = client.session_id().0;
        for _ in 0..ATTEMPTS {
            let Some(node) = placement.node.filter(|node| node.session == session) else {
                // Not (or no longer) in place: register again, with the new information.
                let created = self
                    .place(&client, &entry.path, &mut placement, false)
                    .await?;
                if created {
                    return Ok(());
                }
                continue;
            };
            let mut writer = client.new_multi_writer();
            writer
                .add_set_data(&entry.path, placement.json.as_bytes(), Some(node.version))
                .map_err(|e| convert(e, "update registration"))?;
            writer
                .add_create(
                    &journal::entry_prefix(&self.paths.events),
                    &journal::updated(&placement.json),
                    &CreateMode::PersistentSequential.with_acls(self.zk.acls()),
                )
                .map_err(|e| convert(e, "update registration"))?;
            let failure = match self
                .zk
                .within("update registration", writer.commit())
                .await?
            {
                Ok(results) => {
                    let version = match results.first() {
                        Some(zk::MultiWriteResult::SetData { stat }) => stat.version,
                        _ => node.version + 1,
                    };
                    placement.node = Some(OwnNode { session, version });
                    return Ok(());
                }
                Err(failure) => failure,
            };
            match failed_op(&failure) {
                Some((0, zk::Error::NoNode)) => placement.node = None,
                Some((0, zk::Error::BadVersion)) => {
                    // Our record of the version is stale (an answer lost to a timeout), or the
                    // node is another process's now.
                    match self
                        .zk
                        .within("update registration", client.check_stat(&entry.path))
                        .await?
                    {
                        Ok(Some(stat)) if stat.ephemeral_owner == session => {
                            placement.node = Some(OwnNode {
                                session,
                                version: stat.version,
                            });
                        }
                        Ok(Some(_)) => {
                            return Err(Error::conflict(format!(
                                "server {} is held by another ZooKeeper session now; this \
                                 registration lost its node",
                                entry.id
                            ))
                            .set_retryable(true));
                        }
                        Ok(None) => placement.node = None,
                        Err(e) => return Err(convert(e, "update registration")),
                    }
                }
                Some((_, zk::Error::NoNode)) => self.ensure_dirs(&client).await?,
                _ => return Err(convert_multi(failure, "update registration")),
            }
        }
        Err(busy("update registration"))
    }

    /// Deletes the node of `id` if this process owns it and no live registration wants it.
    async fn remove(&self, id: &ServerId) -> Result<()> {
        let _placing = self.placing.lock().await;
        if self.is_live(id) {
            // Registered again meanwhile: the node is the new registration's.
            return Ok(());
        }
        let client = self.zk.client().await?;
        let path = self.paths.server(id);
        for _ in 0..ATTEMPTS {
            let stat = match self
                .zk
                .within("deregister", client.check_stat(&path))
                .await?
            {
                Ok(Some(stat)) => stat,
                Ok(None) => return Ok(()),
                Err(e) => return Err(convert(e, "deregister")),
            };
            if stat.ephemeral_owner != client.session_id().0 {
                // Another session's registration of the same id: not ours to delete.
                return Ok(());
            }
            match self
                .zk
                .within("deregister", client.delete(&path, Some(stat.version)))
                .await?
            {
                Ok(()) | Err(zk::Error::NoNode) => return Ok(()),
                Err(zk::Error::BadVersion) => continue,
                Err(e) => return Err(convert(e, "deregister")),
            }
        }
        Err(busy("deregister"))
    }

    /// Makes the current session own exactly the nodes of the live registrations.
    async fn repair(&self) -> Result<()> {
        let _placing = self.placing.lock().await;
        let client = self.zk.client().await?;
        let session = client.session_id().0;
        let prefix = format!("{}/", self.paths.servers);
        let owned: HashSet<String> = self
            .zk
            .call(
                "check registrations",
                client.list_ephemerals(&self.paths.servers),
            )
            .await?
            .into_iter()
            .filter_map(|path| path.strip_prefix(&prefix).map(str::to_string))
            .collect();
        let entries: Vec<Arc<Entry>> = self.live().values().cloned().collect();
        for entry in &entries {
            if owned.contains(entry.id.as_str()) {
                continue;
            }
            let mut placement = entry.state.lock().await;
            if !self.is_live(&entry.id) {
                continue;
            }
            match self
                .place(&client, &entry.path, &mut placement, false)
                .await
            {
                Ok(true) => tracing::info!(
                    server = %entry.id,
                    "zookeeper meta store: the registration was lost; registered again"
                ),
                Ok(false) => {}
                // The node of an expired session: it goes when ZooKeeper expires the session.
                Err(error) if error.kind() == cim_core::ErrorKind::Conflict => tracing::debug!(
                    server = %entry.id,
                    %error,
                    "zookeeper meta store: waiting to register again"
                ),
                Err(error) => tracing::warn!(
                    server = %entry.id,
                    %error,
                    "zookeeper meta store: cannot register again yet; retrying"
                ),
            }
        }
        for name in owned {
            let Ok(id) = ServerId::new(name) else {
                continue;
            };
            if self.is_live(&id) {
                continue;
            }
            // An orphan (its registration was dropped while ZooKeeper was unreachable).
            let path = self.paths.server(&id);
            match self
                .zk
                .within("check registrations", client.check_stat(&path))
                .await?
            {
                Ok(Some(stat)) if stat.ephemeral_owner == session => {
                    match self
                        .zk
                        .within(
                            "check registrations",
                            client.delete(&path, Some(stat.version)),
                        )
                        .await?
                    {
                        Ok(()) | Err(zk::Error::NoNode | zk::Error::BadVersion) => {}
                        Err(e) => return Err(convert(e, "check registrations")),
                    }
                }
                Ok(_) | Err(zk::Error::NoNode) => {}
                Err(e) => return Err(convert(e, "check registrations")),
            }
        }
        Ok(())
    }

    /// The registrations stored in the nodes `names` of `servers/` (those that still exist),
    /// with their stats, in the order given.
    pub(crate) async fn read_servers(
        &self,
        client: &Client,
        names: &[String],
    ) -> Result<Vec<(ServerInfo, Stat)>> {
        let mut found = Vec::with_capacity(names.len());
        for batch in names.chunks(READ_BATCH) {
            let mut reader = client.new_multi_reader();
            for name in batch {
                reader
                    .add_get_data(&format!("{}/{name}", self.paths.servers))
                    .map_err(|e| convert(e, "list servers"))?;
            }
            let results = self.zk.call("list servers", reader.commit()).await?;
            for (name, result) in batch.iter().zip(results) {
                match result {
                    MultiReadResult::Data { data, stat } => {
                        let info = decode_server(&data, "zookeeper")?;
                        if info.id.as_str() != name {
                            return Err(Error::internal(format!(
                                "the ZooKeeper node of server {name} holds the registration of {}",
                                info.id
                            )));
                        }
                        found.push((info, stat));
                    }
                    MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    } => {}
                    MultiReadResult::Error { err } => return Err(convert(err, "list servers")),
                    _ => {
                        return Err(Error::internal(
                            "ZooKeeper answered a data read with something else",
                        ));
                    }
                }
            }
        }
        Ok(found)
    }
}

/// The server id at the end of a node path.
fn server_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn busy(operation: &str) -> Error {
    Error::conflict(format!(
        "{operation}: the ZooKeeper node kept changing under this operation; retry"
    ))
    .set_retryable(true)
}

/// A [`MetaStore`] in ZooKeeper, shared by every node of a cluster.
///
/// A registration lives as long as the store's ZooKeeper session, whose timeout is the TTL:
/// a crashed process's servers disappear when ZooKeeper expires its session, a dropped
/// registration at once. `watch` is supported. Needs ZooKeeper 3.6 or later.
pub struct ZooKeeperMetaStore {
    inner: Arc<Inner>,
    /// Dropped with the store: watch tasks see the channel close and end their streams.
    shutdown: watch::Sender<()>,
}

impl std::fmt::Debug for ZooKeeperMetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperMetaStore")
            .field("zk", &self.inner.zk)
            .field("path", &self.inner.paths.meta)
            .field("ttl", &self.inner.ttl)
            .finish()
    }
}

impl ZooKeeperMetaStore {
    /// Connects to the ensemble `config` names and keeps registrations under
    /// `{root}/{namespace}/meta`, in a ZooKeeper session with a timeout of `ttl`. Must be
    /// called inside a tokio runtime (it starts the registrar).
    pub async fn connect(
        config: &ZooKeeperConfig,
        namespace: &str,
        ttl: Duration,
    ) -> Result<ZooKeeperMetaStore> {
        if ttl < MIN_TTL {
            return Err(Error::config(format!(
                "[meta] ttl = {ttl:?} is too short for zookeeper; use at least {MIN_TTL:?} (for \
                 example \"10s\")"
            )));
        }
        let paths = MetaPaths::new(&deployment_path(config, namespace)?);
        let zk = ZooKeeper::open(config, ttl).await?;
        let inner = Arc::new(Inner {
            zk,
            paths,
            ttl,
            live: Mutex::new(HashMap::new()),
            placing: tokio::sync::Mutex::new(()),
        });
        let client = inner.zk.client().await?;
        inner.ensure_dirs(&client).await?;
        tokio::spawn(maintain(Arc::downgrade(&inner)));
        let (shutdown, _) = watch::channel(());
        Ok(ZooKeeperMetaStore { inner, shutdown })
    }

    /// The lease TTL: the session timeout ZooKeeper granted.
    pub fn ttl(&self) -> Duration {
        self.inner.zk.session_timeout()
    }
}

/// The registrar: keeps the live registrations' nodes in place and trims the journal, for as
/// long as the store or one of its registrations lives.
async fn maintain(inner: Weak<Inner>) {
    let mut pause = Duration::from_millis(50);
    let mut last_trim = tokio::time::Instant::now();
    loop {
        let (states, period) = match inner.upgrade() {
            Some(inner) => (
                inner.zk.peek().map(|client| client.state_watcher()),
                inner.ttl / 3,
            ),
            None => return,
        };
        match states {
            Some(mut states) if !states.peek_state().is_terminated() => {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = states.changed() => {}
                }
            }
            // No usable session: try for a new one soon.
            _ => tokio::time::sleep(pause.min(period)).await,
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match inner.repair().await {
            Ok(()) => pause = Duration::from_millis(50),
            Err(error) => {
                tracing::debug!(%error, "zookeeper meta store: checking registrations failed");
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
        }
        if last_trim.elapsed() >= journal::TRIM_PERIOD {
            last_trim = tokio::time::Instant::now();
            let trimmed = match inner.zk.client().await {
                Ok(client) => journal::trim(&inner.zk, &client, &inner.paths.events).await,
                Err(error) => Err(error),
            };
            if let Err(error) = trimmed {
                tracing::debug!(%error, "zookeeper meta store: trimming the journal failed");
            }
        }
    }
}

#[async_trait]
impl MetaStore for ZooKeeperMetaStore {
    fn capabilities(&self) -> MetaCapabilities {
        let mut capabilities = MetaCapabilities::ALL;
        capabilities.min_ttl = MIN_TTL;
        capabilities
    }

    async fn register(&self, info: ServerInfo) -> Result<Registration> {
        check_server_id(&info.id)?;
        let json = encode_server(&info)?;
        let inner = &self.inner;
        let _placing = inner.placing.lock().await;
        if inner.is_live(&info.id) {
            return Err(Error::already_exists(format!(
                "server {} is registered by this process already; deregister it first",
                info.id
            ))
            .set_retryable(true));
        }
        let client = inner.zk.client().await?;
        let entry = Arc::new(Entry {
            path: inner.paths.server(&info.id),
            id: info.id.clone(),
            state: tokio::sync::Mutex::new(Placement { json, node: None }),
        });
        {
            let mut placement = entry.state.lock().await;
            inner
                .place(&client, &entry.path, &mut placement, true)
                .await?;
        }
        inner.live().insert(info.id, Arc::clone(&entry));
        Ok(Registration::new(Box::new(ZooKeeperLease {
            inner: Arc::clone(inner),
            entry,
            ended: false,
        })))
    }

    async fn list(&self) -> Result<Vec<ServerInfo>> {
        let inner = &self.inner;
        let client = inner.zk.client().await?;
        let names = match inner
            .zk
            .within("list servers", client.list_children(&inner.paths.servers))
            .await?
        {
            Ok(names) => names,
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => return Err(convert(e, "list servers")),
        };
        let mut servers: Vec<ServerInfo> = inner
            .read_servers(&client, &names)
            .await?
            .into_iter()
            .map(|(info, _)| info)
            .collect();
        servers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(servers)
    }

    async fn watch(&self) -> Result<MetaWatch> {
        let inner = Arc::clone(&self.inner);
        let client = inner.zk.client().await?;
        // Watch first, then read: no change can fall between the two.
        let watcher = inner
            .zk
            .call(
                "watch",
                client.watch(&inner.paths.meta, AddWatchMode::PersistentRecursive),
            )
            .await?;
        let snapshot = watching::snapshot(&inner, &client).await?;
        let (events, receiver) = mpsc::channel(WATCH_BUFFER);
        // The channel is new and empty: the first item always fits.
        let _ = events.try_send(Ok(MetaEvent::Snapshot(snapshot.servers())));
        let task = Watcher::new(inner, events, self.shutdown.subscribe(), snapshot);
        tokio::spawn(task.run((client, watcher)));
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        Ok(stream.boxed())
    }
}

/// A registration's lease: the store's session keeps its node; dropping it deletes the node.
struct ZooKeeperLease {
    inner: Arc<Inner>,
    entry: Arc<Entry>,
    /// Deregistered: nothing left to do on drop.
    ended: bool,
}

impl ZooKeeperLease {
    /// Takes the registration out of the live ones (so the registrar stops keeping it).
    fn end(&mut self) {
        self.ended = true;
        let mut live = self.inner.live();
        if live
            .get(&self.entry.id)
            .is_some_and(|entry| Arc::ptr_eq(entry, &self.entry))
        {
            live.remove(&self.entry.id);
        }
    }
}

impl Drop for ZooKeeperLease {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        self.end();
        // Delete the node now; if that fails, the registrar deletes it as an orphan later, and
        // at the latest ZooKeeper does when the session ends.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let inner = Arc::clone(&self.inner);
            let id = self.entry.id.clone();
            runtime.spawn(async move {
                if let Err(error) = inner.remove(&id).await {
                    tracing::debug!(
                        server = %id,
                        %error,
                        "zookeeper meta store: deleting a dropped registration failed; the \
                         registrar retries"
                    );
                }
            });
        }
    }
}

#[async_trait]
impl Lease for ZooKeeperLease {
    fn server_id(&self) -> &ServerId {
        &self.entry.id
    }

    fn ttl(&self) -> Duration {
        self.inner.zk.session_timeout()
    }

    async fn update(&self, info: ServerInfo) -> Result<()> {
        let json = encode_server(&info)?;
        self.inner.update(&self.entry, json).await
    }

    async fn deregister(mut self: Box<Self>) -> Result<()> {
        self.end();
        // A repair in flight finishes first (both hold `placing`), and sees it is not live.
        self.inner.remove(&self.entry.id).await
    }
}
