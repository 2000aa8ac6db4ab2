//! [`ZooKeeperSessionStore`]: who is online, in ZooKeeper.
//!
//! A user's session is an ephemeral node owned by a ZooKeeper session of *its server*: the store
//! keeps one ZooKeeper session per server id it binds for, with the store's TTL as session
//! timeout, and keeps it open while that server calls `refresh_server` (or binds) at least once
//! per TTL. When a server stops (a crash of the cim node, or it simply stops refreshing), its
//! ZooKeeper session is closed by the store or expired by ZooKeeper, and ZooKeeper deletes every
//! session it owned by itself: nothing to purge, nobody locked out.
//!
//! Under `{root}/{namespace}/sessions`, with user ids zero-padded to 20 digits (so that the
//! lexical order of node names is the numeric order) and grouped by 10,000 into buckets (so that
//! no directory grows past ZooKeeper's 1 MB answer limit and a page reads one bucket, not all):
//!
//! | node | kind | holds |
//! |---|---|---|
//! | `users/{bucket}/{user}` | ephemeral, owned by the server's ZooKeeper session | the [`Session`] as JSON |
//! | `servers/{server}/{bucket}/{user}-{connection}` | ephemeral, same owner, written in the same transaction | nothing: the index `remove_server` walks |
//!
//! Buckets and per-server directories are container nodes, which ZooKeeper deletes once empty.
//! `bind` creates both nodes in one transaction (atomic: of concurrent creates one wins).
//! `Replace` and `unbind` are compare-and-delete transactions: they delete the user's node and
//! the index entry of the session they read. A node's version alone cannot guard them (a node
//! created again starts at version 0 again), but the index entry is named after the whole session
//! reference and exists exactly while the user's node holds that session, so its deletion fails,
//! and with it the transaction, if the session changed since it was read.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use cim_core::codec::{decode_session, encode_session};
use cim_core::paging::id_cursor;
use cim_core::registry::{BackendOptions, BuildFuture, SessionStoreFactory};
use cim_core::{
    BindOutcome, BindPolicy, ConnectionId, Cursor, Error, Page, Result, ServerId, Session,
    SessionCapabilities, SessionRef, SessionStore, UserId,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zookeeper_client::{self as zk, Client, CreateMode, MultiReadResult};

use crate::ZooKeeperConfig;
use crate::connection::{
    ZooKeeper, check_server_id, convert, convert_multi, deployment_path, failed_op,
};

/// The server TTL when `[sessions] ttl` is not set.
const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// How many user ids share a bucket.
const BUCKET_SIZE: u64 = 10_000;

/// How many nodes one multi-read or one removal transaction touches.
const BATCH: usize = 500;

/// How often a bind or unbind is tried again when the user's node changed under it. Each retry
/// means another writer of the same user succeeded, so this bounds only pathological contention.
const ATTEMPTS: usize = 256;

inventory::submit! {
    SessionStoreFactory::new(
        "zookeeper",
        "ZooKeeper ephemeral nodes owned by a session per server, closed when it stops refreshing",
        build,
    )
}

fn build(options: BackendOptions) -> BuildFuture<dyn SessionStore> {
    Box::pin(async move {
        let config: ZooKeeperConfig = options.parse()?;
        let ttl = options.ttl().unwrap_or(DEFAULT_TTL);
        let store = ZooKeeperSessionStore::connect(&config, options.namespace(), ttl).await?;
        Ok(Arc::new(store) as Arc<dyn SessionStore>)
    })
}

/// Where the session store's nodes are.
#[derive(Debug)]
struct SessionPaths {
    users: String,
    servers: String,
}

impl SessionPaths {
    fn new(deployment: &str) -> SessionPaths {
        SessionPaths {
            users: format!("{deployment}/sessions/users"),
            servers: format!("{deployment}/sessions/servers"),
        }
    }

    fn user_bucket(&self, user: UserId) -> String {
        format!("{}/{}", self.users, bucket(user))
    }

    fn user(&self, user: UserId) -> String {
        format!("{}/{}", self.user_bucket(user), padded(user))
    }

    fn server(&self, server: &ServerId) -> String {
        format!("{}/{server}", self.servers)
    }

    fn index_bucket(&self, server: &ServerId, user: UserId) -> String {
        format!("{}/{}", self.server(server), bucket(user))
    }

    /// The index entry of one session: named after user *and* connection, so that it exists
    /// exactly while the user's node holds that session.
    fn index(&self, reference: &SessionRef) -> String {
        format!(
            "{}/{}-{}",
            self.index_bucket(&reference.server_id, reference.user_id),
            padded(reference.user_id),
            reference.connection_id
        )
    }
}

/// Parses an index entry's name, `{user}-{connection}`.
fn parse_index_name(server: &ServerId, name: &str) -> Option<SessionRef> {
    let (user, connection) = name.split_once('-')?;
    Some(SessionRef {
        user_id: UserId(user.parse().ok()?),
        server_id: server.clone(),
        connection_id: ConnectionId(connection.parse().ok()?),
    })
}

/// Zero-padded decimal, so that lexical order is numeric order for every `u64`.
fn padded(user: UserId) -> String {
    format!("{:020}", user.0)
}

fn bucket(user: UserId) -> String {
    format!("{:016}", user.0 / BUCKET_SIZE)
}

/// A server's own ZooKeeper session, and when the server last proved it is alive.
struct ServerSlot {
    zk: Arc<ZooKeeper>,
    refreshed: Instant,
}

struct Inner {
    /// The store's own session: reads, unbinds, removals.
    zk: ZooKeeper,
    paths: SessionPaths,
    ttl: Duration,
    servers: Mutex<HashMap<ServerId, ServerSlot>>,
    /// Container nodes known to exist (a create that finds one gone clears this).
    containers: Mutex<HashSet<String>>,
}

impl Inner {
    fn servers(&self) -> MutexGuard<'_, HashMap<ServerId, ServerSlot>> {
        self.servers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn containers(&self) -> MutexGuard<'_, HashSet<String>> {
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `server`'s own ZooKeeper handle, marked alive now (created if it has none).
    fn touch(&self, server: &ServerId) -> Arc<ZooKeeper> {
        let mut servers = self.servers();
        let slot = servers.entry(server.clone()).or_insert_with(|| ServerSlot {
            zk: Arc::new(ZooKeeper::new(self.zk.config(), self.ttl)),
            refreshed: Instant::now(),
        });
        slot.refreshed = Instant::now();
        Arc::clone(&slot.zk)
    }

    /// Closes the sessions of the servers that stopped refreshing a TTL ago: ZooKeeper deletes
    /// their users' nodes.
    fn reap(&self) {
        let ttl = self.ttl;
        let stopped: Vec<(ServerId, ServerSlot)> = {
            let mut servers = self.servers();
            let ids: Vec<ServerId> = servers
                .iter()
                .filter(|(_, slot)| slot.refreshed.elapsed() >= ttl)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| servers.remove(&id).map(|slot| (id, slot)))
                .collect()
        };
        for (id, slot) in stopped {
            tracing::debug!(
                server = %id,
                "zookeeper session store: server stopped refreshing; closing its session"
            );
            // The last handle: dropping it closes the session.
            drop(slot);
        }
    }

    /// Creates the buckets the nodes of `user` on `server` go into.
    async fn ensure_containers(
        &self,
        client: &Client,
        server: &ServerId,
        user: UserId,
    ) -> Result<()> {
        let paths = [
            self.paths.user_bucket(user),
            self.paths.server(server),
            self.paths.index_bucket(server, user),
        ];
        if paths.iter().all(|path| self.containers().contains(path)) {
            return Ok(());
        }
        let options = CreateMode::Container.with_acls(self.zk.acls());
        for _ in 0..2 {
            // Sent in this order, so each parent exists before its child is created.
            let creates: Vec<_> = paths
                .iter()
                .map(|path| client.create(path, b"", &options))
                .collect();
            let mut parents_missing = false;
            for outcome in self
                .zk
                .bounded("bind", futures::future::join_all(creates))
                .await?
            {
                match outcome {
                    Ok(_) | Err(zk::Error::NodeExists) => {}
                    Err(zk::Error::NoNode) => parents_missing = true,
                    Err(e) => return Err(convert(e, "bind")),
                }
            }
            if !parents_missing {
                self.containers().extend(paths);
                return Ok(());
            }
            // The persistent parents are gone (deleted, or ZooKeeper lost its data).
            self.zk.ensure_path(client, &self.paths.users).await?;
            self.zk.ensure_path(client, &self.paths.servers).await?;
        }
        Err(Error::internal(format!(
            "cannot create the ZooKeeper nodes {paths:?} for the sessions of {server}"
        )))
    }

    /// A bucket was found gone (ZooKeeper deletes empty containers): create it next time.
    fn forget_containers(&self, server: &ServerId, user: UserId) {
        let mut containers = self.containers();
        containers.remove(&self.paths.user_bucket(user));
        containers.remove(&self.paths.server(server));
        containers.remove(&self.paths.index_bucket(server, user));
    }

    /// `bind` on `client`, the session of `session.server_id`.
    async fn bind_on(
        &self,
        client: &Client,
        session: &Session,
        json: &[u8],
        policy: BindPolicy,
    ) -> Result<BindOutcome> {
        let user = session.user_id;
        let user_path = self.paths.user(user);
        let index_path = self.paths.index(&session.reference());
        let ephemeral = CreateMode::Ephemeral.with_acls(self.zk.acls());
        for _ in 0..ATTEMPTS {
            self.ensure_containers(client, &session.server_id, user)
                .await?;
            let mut writer = client.new_multi_writer();
            writer
                .add_create(&user_path, json, &ephemeral)
                .map_err(|e| convert(e, "bind"))?;
            writer
                .add_create(&index_path, b"", &ephemeral)
                .map_err(|e| convert(e, "bind"))?;
            match self.zk.within("bind", writer.commit()).await? {
                Ok(_) => return Ok(BindOutcome::Bound),
                Err(failure) => match failed_op(&failure) {
                    // The user has a session: see below.
                    Some((0, zk::Error::NodeExists)) => {}
                    Some((1, zk::Error::NodeExists)) => {
                        // An index entry without its session (this store never leaves one):
                        // drop it and try again.
                        match self
                            .zk
                            .within("bind", client.delete(&index_path, None))
                            .await?
                        {
                            Ok(()) | Err(zk::Error::NoNode) => {}
                            Err(e) => return Err(convert(e, "bind")),
                        }
                        continue;
                    }
                    Some((_, zk::Error::NoNode)) => {
                        self.forget_containers(&session.server_id, user);
                        continue;
                    }
                    _ => return Err(convert_multi(failure, "bind")),
                },
            }
            let (data, stat) = match self.zk.within("bind", client.get_data(&user_path)).await? {
                Ok(found) => found,
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(convert(e, "bind")),
            };
            let current = decode(&data, user)?;
            let same = current.reference() == session.reference();
            if same && stat.ephemeral_owner == client.session_id().0 {
                // Rebinding the very session: only its stored copy changes, if the session is
                // still the one read (its index entry exists: a version alone would not tell).
                let mut writer = client.new_multi_writer();
                writer
                    .add_check_version(&index_path, -1)
                    .map_err(|e| convert(e, "bind"))?;
                writer
                    .add_set_data(&user_path, json, Some(stat.version))
                    .map_err(|e| convert(e, "bind"))?;
                match self.zk.within("bind", writer.commit()).await? {
                    Ok(_) => return Ok(BindOutcome::Bound),
                    Err(failure) => match failed_op(&failure) {
                        Some((_, zk::Error::BadVersion | zk::Error::NoNode)) => continue,
                        _ => return Err(convert_multi(failure, "bind")),
                    },
                }
            }
            if !same && policy == BindPolicy::Reject {
                return Err(Error::already_exists(format!(
                    "user {user} is already online on server {}; unbind that session first or \
                     bind with the replace policy",
                    current.server_id
                )));
            }
            // Replace the session read (or, for the very same session held by another ZooKeeper
            // session, take it over): compare-and-delete it with its index entry, create ours.
            let mut writer = client.new_multi_writer();
            writer
                .add_delete(&user_path, Some(stat.version))
                .map_err(|e| convert(e, "bind"))?;
            writer
                .add_delete(&self.paths.index(&current.reference()), None)
                .map_err(|e| convert(e, "bind"))?;
            writer
                .add_create(&user_path, json, &ephemeral)
                .map_err(|e| convert(e, "bind"))?;
            writer
                .add_create(&index_path, b"", &ephemeral)
                .map_err(|e| convert(e, "bind"))?;
            match self.zk.within("bind", writer.commit()).await? {
                Ok(_) if same => return Ok(BindOutcome::Bound),
                Ok(_) => return Ok(BindOutcome::Replaced(current)),
                Err(failure) => match failed_op(&failure) {
                    // The session read is gone or changed: read again.
                    Some((0 | 1, zk::Error::BadVersion | zk::Error::NoNode)) => {}
                    Some((_, zk::Error::NoNode)) => {
                        self.forget_containers(&session.server_id, user)
                    }
                    _ => return Err(convert_multi(failure, "bind")),
                },
            }
        }
        Err(busy("bind", user))
    }

    /// Deletes `reference`'s session if it is still bound.
    async fn unbind(&self, client: &Client, reference: &SessionRef) -> Result<bool> {
        let user = reference.user_id;
        let user_path = self.paths.user(user);
        for _ in 0..ATTEMPTS {
            let (data, stat) = match self
                .zk
                .within("unbind", client.get_data(&user_path))
                .await?
            {
                Ok(found) => found,
                Err(zk::Error::NoNode) => return Ok(false),
                Err(e) => return Err(convert(e, "unbind")),
            };
            if decode(&data, user)?.reference() != *reference {
                return Ok(false);
            }
            let mut writer = client.new_multi_writer();
            writer
                .add_delete(&user_path, Some(stat.version))
                .map_err(|e| convert(e, "unbind"))?;
            writer
                .add_delete(&self.paths.index(reference), None)
                .map_err(|e| convert(e, "unbind"))?;
            match self.zk.within("unbind", writer.commit()).await? {
                Ok(_) => return Ok(true),
                Err(failure) => match failed_op(&failure) {
                    // Changed since read: read again.
                    Some((0 | 1, zk::Error::BadVersion | zk::Error::NoNode)) => {}
                    _ => return Err(convert_multi(failure, "unbind")),
                },
            }
        }
        Err(busy("unbind", user))
    }

    /// The children of `path`, sorted; none if it does not exist.
    async fn children(
        &self,
        client: &Client,
        path: &str,
        operation: &'static str,
    ) -> Result<Vec<String>> {
        match self
            .zk
            .within(operation, client.list_children(path))
            .await?
        {
            Ok(mut names) => {
                names.sort();
                Ok(names)
            }
            Err(zk::Error::NoNode) => Ok(Vec::new()),
            Err(e) => Err(convert(e, operation)),
        }
    }

    /// The sessions stored at `paths` (those that exist), with their data versions, in order.
    async fn read_sessions(
        &self,
        client: &Client,
        users: &[UserId],
        operation: &'static str,
    ) -> Result<Vec<(Session, i32)>> {
        let mut found = Vec::with_capacity(users.len());
        for batch in users.chunks(BATCH) {
            let mut reader = client.new_multi_reader();
            for user in batch {
                reader
                    .add_get_data(&self.paths.user(*user))
                    .map_err(|e| convert(e, operation))?;
            }
            let results = self.zk.call(operation, reader.commit()).await?;
            for (user, result) in batch.iter().zip(results) {
                match result {
                    MultiReadResult::Data { data, stat } => {
                        found.push((decode(&data, *user)?, stat.version));
                    }
                    MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    } => {}
                    MultiReadResult::Error { err } => return Err(convert(err, operation)),
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

    /// Deletes the sessions `references` (one server's index entries) that are still bound.
    async fn remove_sessions(&self, client: &Client, references: &[SessionRef]) -> Result<u64> {
        let mut removed = 0;
        for batch in references.chunks(BATCH / 2) {
            let users: Vec<UserId> = batch.iter().map(|reference| reference.user_id).collect();
            let bound: Vec<(SessionRef, i32)> = self
                .read_sessions(client, &users, "remove server")
                .await?
                .into_iter()
                .map(|(session, version)| (session.reference(), version))
                .filter(|(reference, _)| batch.contains(reference))
                .collect();
            if bound.is_empty() {
                continue;
            }
            // All in one transaction; one at a time if one of them changed meanwhile.
            let mut writer = client.new_multi_writer();
            for (reference, version) in &bound {
                writer
                    .add_delete(&self.paths.user(reference.user_id), Some(*version))
                    .map_err(|e| convert(e, "remove server"))?;
                writer
                    .add_delete(&self.paths.index(reference), None)
                    .map_err(|e| convert(e, "remove server"))?;
            }
            if self
                .zk
                .within("remove server", writer.commit())
                .await?
                .is_ok()
            {
                removed += bound.len() as u64;
                continue;
            }
            for (reference, _) in &bound {
                if self.unbind(client, reference).await? {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

fn busy(operation: &str, user: UserId) -> Error {
    Error::conflict(format!(
        "{operation}: the session of user {user} kept changing under this operation; retry"
    ))
    .set_retryable(true)
}

/// The session in the node of `user`; anyone else's is corruption.
fn decode(data: &[u8], user: UserId) -> Result<Session> {
    let session = decode_session(data, "zookeeper")?;
    if session.user_id != user {
        return Err(Error::internal(format!(
            "the ZooKeeper node of user {user} holds a session of user {}",
            session.user_id
        )));
    }
    Ok(session)
}

/// A [`SessionStore`] in ZooKeeper, shared by every node of a cluster.
///
/// A server's sessions live while the ZooKeeper session this store keeps for it does: until a
/// TTL after its last [`refresh_server`] or bind through this store instance (a cim node binds
/// and refreshes its own users through its own store), or until ZooKeeper expires it when the
/// process dies. Listing and counting are supported. Needs ZooKeeper 3.6 or later.
///
/// [`refresh_server`]: SessionStore::refresh_server
pub struct ZooKeeperSessionStore {
    inner: Arc<Inner>,
    reaper: JoinHandle<()>,
}

impl std::fmt::Debug for ZooKeeperSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperSessionStore")
            .field("zk", &self.inner.zk)
            .field("users", &self.inner.paths.users)
            .field("ttl", &self.inner.ttl)
            .finish()
    }
}

impl Drop for ZooKeeperSessionStore {
    fn drop(&mut self) {
        self.reaper.abort();
    }
}

impl ZooKeeperSessionStore {
    /// Connects to the ensemble `config` names and keeps sessions under
    /// `{root}/{namespace}/sessions`, each server's living `ttl` past its last refresh. Must be
    /// called inside a tokio runtime (it starts the reaper).
    pub async fn connect(
        config: &ZooKeeperConfig,
        namespace: &str,
        ttl: Duration,
    ) -> Result<ZooKeeperSessionStore> {
        if ttl.is_zero() {
            return Err(Error::config(
                "[sessions] ttl must be longer than zero (for example \"30s\")",
            ));
        }
        let paths = SessionPaths::new(&deployment_path(config, namespace)?);
        let zk = ZooKeeper::open(config, ttl).await?;
        let client = zk.client().await?;
        zk.ensure_path(&client, &paths.users).await?;
        zk.ensure_path(&client, &paths.servers).await?;
        let inner = Arc::new(Inner {
            zk,
            paths,
            ttl,
            servers: Mutex::new(HashMap::new()),
            containers: Mutex::new(HashSet::new()),
        });
        let reaper = tokio::spawn(reap_forever(Arc::clone(&inner)));
        Ok(ZooKeeperSessionStore { inner, reaper })
    }

    /// The server TTL.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }
}

/// Closes stopped servers' sessions every quarter TTL, for as long as the store lives.
async fn reap_forever(inner: Arc<Inner>) {
    let mut ticks = tokio::time::interval(inner.ttl / 4);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        inner.reap();
    }
}

#[async_trait]
impl SessionStore for ZooKeeperSessionStore {
    fn capabilities(&self) -> SessionCapabilities {
        SessionCapabilities::ALL
    }

    async fn bind(&self, session: Session, policy: BindPolicy) -> Result<BindOutcome> {
        check_server_id(&session.server_id)?;
        let json = encode_session(&session)?;
        let owner = self.inner.touch(&session.server_id);
        let client = owner.client().await?;
        self.inner
            .bind_on(&client, &session, json.as_bytes(), policy)
            .await
    }

    async fn get(&self, user: UserId) -> Result<Option<Session>> {
        Ok(self.get_many(&[user]).await?.pop())
    }

    async fn get_many(&self, users: &[UserId]) -> Result<Vec<Session>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.inner.zk.client().await?;
        let found = self.inner.read_sessions(&client, users, "get").await?;
        Ok(found.into_iter().map(|(session, _)| session).collect())
    }

    async fn unbind(&self, session: &SessionRef) -> Result<bool> {
        let client = self.inner.zk.client().await?;
        self.inner.unbind(&client, session).await
    }

    async fn refresh_server(&self, server: &ServerId) -> Result<()> {
        // Refreshing never creates a ZooKeeper session: a server with no session here has
        // nothing to keep. A round trip still proves ZooKeeper is reachable.
        let owner = {
            let mut servers = self.inner.servers();
            servers.get_mut(server).map(|slot| {
                slot.refreshed = Instant::now();
                Arc::clone(&slot.zk)
            })
        };
        let inner = &self.inner;
        let zk = owner.as_deref().unwrap_or(&inner.zk);
        let client = zk.client().await?;
        zk.call("refresh server", client.check_stat(&inner.paths.users))
            .await?;
        Ok(())
    }

    async fn remove_server(&self, server: &ServerId) -> Result<u64> {
        check_server_id(server)?;
        let inner = &self.inner;
        let client = inner.zk.client().await?;
        let mut removed = 0;
        let server_path = inner.paths.server(server);
        for bucket in inner
            .children(&client, &server_path, "remove server")
            .await?
        {
            let references: Vec<SessionRef> = inner
                .children(&client, &format!("{server_path}/{bucket}"), "remove server")
                .await?
                .iter()
                .filter_map(|name| parse_index_name(server, name))
                .collect();
            removed += inner.remove_sessions(&client, &references).await?;
        }
        // Whatever the server's own session here still owns (a bind racing with the removal)
        // goes with it.
        let slot = inner.servers().remove(server);
        drop(slot);
        Ok(removed)
    }

    async fn list_online(&self, cursor: Option<&Cursor>, limit: u32) -> Result<Page<Session>> {
        if limit == 0 {
            return Err(Error::invalid_input(
                "list_online needs a limit of at least 1",
            ));
        }
        let after = cursor
            .map(|cursor| id_cursor(Some(cursor), "list_online").map(UserId))
            .transpose()?;
        let inner = &self.inner;
        let client = inner.zk.client().await?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        // One more than asked, to know whether a next page exists.
        let wanted = limit.saturating_add(1);
        let first_bucket = after.map(bucket);
        let mut items = Vec::new();
        'buckets: for bucket_name in inner
            .children(&client, &inner.paths.users, "list online")
            .await?
        {
            if first_bucket
                .as_ref()
                .is_some_and(|first| &bucket_name < first)
            {
                continue;
            }
            let users: Vec<UserId> = inner
                .children(
                    &client,
                    &format!("{}/{bucket_name}", inner.paths.users),
                    "list online",
                )
                .await?
                .iter()
                .filter_map(|name| name.parse().ok().map(UserId))
                .filter(|user| after.is_none_or(|after| *user > after))
                .collect();
            let mut pending = users.as_slice();
            while !pending.is_empty() {
                let take = (wanted - items.len()).min(BATCH).min(pending.len());
                let (batch, rest) = pending.split_at(take);
                pending = rest;
                let found = inner.read_sessions(&client, batch, "list online").await?;
                items.extend(found.into_iter().map(|(session, _)| session));
                if items.len() >= wanted {
                    break 'buckets;
                }
            }
        }
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|last| Cursor(last.user_id.to_string()))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn count_online(&self) -> Result<u64> {
        let inner = &self.inner;
        let client = inner.zk.client().await?;
        let buckets = inner
            .children(&client, &inner.paths.users, "count online")
            .await?;
        let mut online = 0u64;
        for batch in buckets.chunks(BATCH) {
            let mut reader = client.new_multi_reader();
            for bucket_name in batch {
                reader
                    .add_get_data(&format!("{}/{bucket_name}", inner.paths.users))
                    .map_err(|e| convert(e, "count online"))?;
            }
            for result in inner.zk.call("count online", reader.commit()).await? {
                match result {
                    MultiReadResult::Data { stat, .. } => {
                        online += u64::try_from(stat.num_children).unwrap_or(0);
                    }
                    MultiReadResult::Error {
                        err: zk::Error::NoNode,
                    } => {}
                    MultiReadResult::Error { err } => return Err(convert(err, "count online")),
                    _ => {
                        return Err(Error::internal(
                            "ZooKeeper answered a data read with something else",
                        ));
                    }
                }
            }
        }
        Ok(online)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_sort_like_user_ids() {
        let mut ids = [UserId(10_001), UserId(2), UserId(u64::MAX), UserId(9_999)];
        let mut names: Vec<String> = ids.iter().map(|id| padded(*id)).collect();
        names.sort();
        ids.sort();
        assert_eq!(
            names,
            ids.iter().map(|id| padded(*id)).collect::<Vec<_>>(),
            "lexical order of node names must be numeric order"
        );
        assert!(bucket(UserId(9_999)) < bucket(UserId(10_000)));
        assert_eq!(bucket(UserId(u64::MAX)).len(), 16);
    }
}
