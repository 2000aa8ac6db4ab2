//! [`ConsulSessionStore`]: who is online, in Consul's KV store.
//!
//! A user's session is the key `{prefix}/{ns}/sessions/{user}` (the user id zero-padded to 20
//! digits, so Consul's lexical key order is numeric order) holding the session's JSON, and it
//! is *acquired* by a Consul session of the user's server: one Consul session per server id in
//! each store, with the store's TTL and behaviour `delete`. A server proves it is alive by
//! binding or refreshing: `refresh_server` renews its Consul session, a bind renews it when the
//! last renewal is more than a quarter TTL old. When a server stops (crashes), nobody renews,
//! Consul invalidates the session at most twice the TTL after the last renewal and deletes every
//! key it holds at once: the server's users are offline and free to log in elsewhere, with
//! nothing to clean up. A server that comes back gets a new Consul session; its old keys stay
//! gone.
//!
//! Binding and unbinding are compare-and-swap loops over Consul transactions: read the user's
//! key, then apply, atomically, "it is still absent (`check-not-exists`) / still at the
//! `ModifyIndex` read (`check-index`), delete it, acquire it for my server's session with the
//! new value (`lock`)". Whoever commits first wins; the others see the check fail, read again
//! and decide again, which makes `Reject` exclusive and hands each replaced session to exactly
//! one `Replace`. A `lock` that fails on its own means the server's Consul session is gone
//! (expired, or the agents lost their data): the store creates a new one and retries.
//! `unbind` deletes only under `check-index` of the entry it compared.
//!
//! Listing has no index of its own: Consul keeps keys sorted, so `list_online` reads the keys
//! under the prefix (`?keys`, about 60 bytes per online user) and then the values of one page
//! (a transaction of up to 64 `get`s per request). Every page thus costs a key listing
//! proportional to the number of users online, and `count_online` is such a listing; fine for
//! tens of thousands online, not for millions. `remove_server` reads every session (`?recurse`)
//! to find the server's, deletes each under `check-index`, and destroys this store's Consul
//! session of that server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cim_core::codec::{decode_session, encode_session};
use cim_core::paging::id_cursor;
use cim_core::registry::{BackendOptions, BuildFuture, SessionStoreFactory};
use cim_core::{
    BindOutcome, BindPolicy, Cursor, Error, Page, Result, ServerId, Session, SessionCapabilities,
    SessionRef, SessionStore, UserId,
};
use futures::{StreamExt, TryStreamExt};

use crate::ConsulConfig;
use crate::client::{
    ConsulClient, KvEntry, MAX_TXN_OPS, SessionBehavior, SessionSpec, TxnOp, TxnOutcome,
};
use crate::config::validate_namespace;

/// The server TTL when `[sessions] ttl` is not set.
const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// The shortest TTL accepted (the agents' `session_ttl_min`, 10 s unless lowered, usually sets
/// a higher floor; the store checks it when it starts).
const MIN_TTL: Duration = Duration::from_secs(1);

/// How often a bind or unbind retries when others keep changing the same user's key.
const MAX_ATTEMPTS: usize = 1000;

/// How many single-key requests run at once (`get_many`, `remove_server`).
const PARALLEL: usize = 16;

inventory::submit! {
    SessionStoreFactory::new(
        "consul",
        "Consul KV with check-and-set, keys held by a Consul session per server (cluster-wide)",
        build,
    )
}

fn build(options: BackendOptions) -> BuildFuture<dyn SessionStore> {
    Box::pin(async move {
        let config: ConsulConfig = options.parse()?;
        let ttl = options.ttl().unwrap_or(DEFAULT_TTL);
        let store = ConsulSessionStore::connect(&config, options.namespace(), ttl).await?;
        Ok(Arc::new(store) as Arc<dyn SessionStore>)
    })
}

/// A server's Consul session as this store holds it.
#[derive(Debug)]
struct Held {
    id: String,
    /// When the last renewal (or the creation) was sent.
    renewed: Instant,
}

/// One server's slot: its Consul session, if any. The async mutex makes concurrent binds of
/// one server wait for a single create or renew instead of racing.
type Slot = Arc<tokio::sync::Mutex<Option<Held>>>;

/// How [`ConsulSessionStore::server_session`] treats the session it holds.
#[derive(Debug, PartialEq, Eq)]
enum Renew {
    /// Renew if the last renewal is more than a quarter TTL old.
    IfStale,
    /// Renew now.
    Always,
    /// This session failed: replace it (unless another task did already).
    Replace(String),
}

/// A [`SessionStore`] in Consul's KV store, shared by every node of a cluster.
///
/// A server's sessions live while its Consul session does: at least `ttl` after its last
/// [`refresh_server`] or bind, at most twice that. Listing and counting are supported, at the
/// cost of a key listing each (see the module docs).
///
/// [`refresh_server`]: SessionStore::refresh_server
pub struct ConsulSessionStore {
    client: ConsulClient,
    /// `{prefix}/{namespace}/sessions/`.
    users: String,
    ttl: Duration,
    servers: Mutex<HashMap<ServerId, Slot>>,
}

impl std::fmt::Debug for ConsulSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulSessionStore")
            .field("client", &self.client)
            .field("users", &self.users)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl ConsulSessionStore {
    /// Connects to the agent `config` names and keeps sessions under
    /// `{prefix}/{namespace}/sessions/`, each server's sessions living `ttl` past its last
    /// heartbeat. Creates and destroys one Consul session to check that the agent is reachable,
    /// the token is accepted and the TTL is allowed.
    pub async fn connect(
        config: &ConsulConfig,
        namespace: &str,
        ttl: Duration,
    ) -> Result<ConsulSessionStore> {
        if ttl < MIN_TTL {
            return Err(Error::config(format!(
                "[sessions] ttl = {ttl:?} is too short for consul; use at least {MIN_TTL:?} (for \
                 example \"30s\")"
            )));
        }
        validate_namespace(namespace)?;
        let store = ConsulSessionStore {
            client: ConsulClient::new(config)?,
            users: format!("{}/{namespace}/sessions/", config.prefix),
            ttl,
            servers: Mutex::new(HashMap::new()),
        };
        let probe = store
            .client
            .session_create(&store.session_spec("probe"))
            .await
            .map_err(|e| e.with_context("section", "sessions"))?;
        store.client.session_destroy(&probe).await?;
        Ok(store)
    }

    /// The server TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn session_spec(&self, server: &str) -> SessionSpec {
        SessionSpec {
            name: format!("cim sessions {}{server}", self.users),
            ttl: self.ttl,
            behavior: SessionBehavior::Delete,
            lock_delay: Duration::ZERO,
        }
    }

    fn user_key(&self, user: UserId) -> String {
        format!("{}{:020}", self.users, user.0)
    }

    fn user_of(&self, key: &str) -> Option<UserId> {
        let digits = key.strip_prefix(&self.users)?;
        (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok().map(UserId))
            .flatten()
    }

    /// The slot of `server`, created on first use and kept (one small entry per server id
    /// ever seen): a slot dropped while a task still uses it would split a server's sessions
    /// between two Consul sessions.
    fn slot(&self, server: &ServerId) -> Slot {
        let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(servers.entry(server.clone()).or_default())
    }

    /// The id of `server`'s Consul session, created or renewed as `renew` says.
    async fn server_session(&self, server: &ServerId, renew: Renew) -> Result<String> {
        let slot = self.slot(server);
        let mut held = slot.lock().await;
        if let Some(current) = held.as_mut() {
            match &renew {
                Renew::IfStale if current.renewed.elapsed() < self.ttl / 4 => {
                    return Ok(current.id.clone());
                }
                // Another task replaced the failed session already.
                Renew::Replace(failed) if *failed != current.id => {
                    return Ok(current.id.clone());
                }
                Renew::Replace(_) => {}
                Renew::IfStale | Renew::Always => {
                    let sent = Instant::now();
                    if self.client.session_renew(&current.id).await? {
                        current.renewed = sent;
                        return Ok(current.id.clone());
                    }
                }
            }
            // Gone: its keys went with it.
            *held = None;
        }
        let sent = Instant::now();
        let id = self
            .client
            .session_create(&self.session_spec(server.as_str()))
            .await?;
        *held = Some(Held {
            id: id.clone(),
            renewed: sent,
        });
        Ok(id)
    }

    /// Destroys this store's Consul session of `server`, if it holds one.
    async fn release_server(&self, server: &ServerId) {
        let slot = self.slot(server);
        let held = slot.lock().await.take();
        if let Some(held) = held
            && let Err(error) = self.client.session_destroy(&held.id).await
        {
            tracing::debug!(%error, %server, "consul session store: the session expires by itself");
        }
    }

    /// Deletes `key` if it is still at `index`; true if it did.
    async fn delete_at(&self, key: &str, index: u64) -> Result<bool> {
        let ops = [
            TxnOp::CheckIndex {
                key: key.to_string(),
                index,
            },
            TxnOp::Delete {
                key: key.to_string(),
            },
        ];
        Ok(matches!(
            self.client.txn(&ops).await?,
            TxnOutcome::Committed(_)
        ))
    }

    /// The entries of those `keys` that exist, in the order given.
    async fn read_many(&self, keys: &[String]) -> Result<Vec<KvEntry>> {
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_TXN_OPS) {
            let gets: Vec<TxnOp> = chunk
                .iter()
                .map(|key| TxnOp::Get { key: key.clone() })
                .collect();
            match self.client.txn(&gets).await? {
                TxnOutcome::Committed(entries) => found.extend(entries),
                // Some key went meanwhile (a `get` of a missing key fails the transaction):
                // read them one by one.
                TxnOutcome::RolledBack(_) => {
                    let reads: Vec<_> = chunk.iter().map(|key| self.client.kv_get(key)).collect();
                    let one_by_one: Vec<Option<KvEntry>> = futures::stream::iter(reads)
                        .buffered(PARALLEL)
                        .try_collect()
                        .await?;
                    found.extend(one_by_one.into_iter().flatten());
                }
            }
        }
        Ok(found)
    }

    /// The user ids online, sorted.
    async fn online_keys(&self) -> Result<Vec<(UserId, String)>> {
        let keys = self.client.kv_keys(&self.users, None).await?.value;
        let mut online: Vec<(UserId, String)> = keys
            .into_iter()
            .filter_map(|key| self.user_of(&key).map(|user| (user, key)))
            .collect();
        online.sort();
        Ok(online)
    }
}

fn contended(what: &str) -> Error {
    Error::conflict(format!(
        "{what} kept losing to concurrent changes of the same user in consul; retry"
    ))
    .set_retryable(true)
}

#[async_trait]
impl SessionStore for ConsulSessionStore {
    fn capabilities(&self) -> SessionCapabilities {
        SessionCapabilities::ALL
    }

    async fn bind(&self, session: Session, policy: BindPolicy) -> Result<BindOutcome> {
        let key = self.user_key(session.user_id);
        let json = encode_session(&session)?.into_bytes();
        let mut held = self
            .server_session(&session.server_id, Renew::IfStale)
            .await?;
        for _ in 0..MAX_ATTEMPTS {
            let current = self.client.kv_get(&key).await?;
            let mut ops = Vec::with_capacity(3);
            let outcome = match current {
                None => {
                    ops.push(TxnOp::CheckNotExists { key: key.clone() });
                    BindOutcome::Bound
                }
                Some(entry) => {
                    let stored = decode_session(&entry.value, "consul")?;
                    let outcome = if stored.reference() == session.reference() {
                        BindOutcome::Bound
                    } else if policy == BindPolicy::Reject {
                        return Err(Error::already_exists(format!(
                            "user {} is already online on server {}; unbind that session first \
                             or bind with the replace policy",
                            session.user_id, stored.server_id
                        )));
                    } else {
                        BindOutcome::Replaced(stored)
                    };
                    ops.push(TxnOp::CheckIndex {
                        key: key.clone(),
                        index: entry.modify_index,
                    });
                    ops.push(TxnOp::Delete { key: key.clone() });
                    outcome
                }
            };
            let lock_at = ops.len();
            ops.push(TxnOp::Lock {
                key: key.clone(),
                value: json.clone(),
                session: held.clone(),
            });
            match self.client.txn(&ops).await? {
                TxnOutcome::Committed(_) => return Ok(outcome),
                // The key changed since it was read: read it again and decide again.
                TxnOutcome::RolledBack(errors) if errors.iter().any(|e| e.op_index < lock_at) => {}
                // Only the lock failed: the server's Consul session is gone.
                TxnOutcome::RolledBack(_) => {
                    held = self
                        .server_session(&session.server_id, Renew::Replace(held))
                        .await?;
                }
            }
        }
        Err(contended("bind"))
    }

    async fn get(&self, user: UserId) -> Result<Option<Session>> {
        match self.client.kv_get(&self.user_key(user)).await? {
            Some(entry) => decode_session(&entry.value, "consul").map(Some),
            None => Ok(None),
        }
    }

    async fn get_many(&self, users: &[UserId]) -> Result<Vec<Session>> {
        let reads: Vec<_> = users.iter().map(|user| self.get(*user)).collect();
        let found: Vec<Option<Session>> = futures::stream::iter(reads)
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn unbind(&self, session: &SessionRef) -> Result<bool> {
        let key = self.user_key(session.user_id);
        for _ in 0..MAX_ATTEMPTS {
            let Some(entry) = self.client.kv_get(&key).await? else {
                return Ok(false);
            };
            if decode_session(&entry.value, "consul")?.reference() != *session {
                return Ok(false);
            }
            if self.delete_at(&key, entry.modify_index).await? {
                return Ok(true);
            }
        }
        Err(contended("unbind"))
    }

    async fn refresh_server(&self, server: &ServerId) -> Result<()> {
        self.server_session(server, Renew::Always).await?;
        Ok(())
    }

    async fn remove_server(&self, server: &ServerId) -> Result<u64> {
        let entries = self.client.kv_list(&self.users, None).await?.value;
        let mut theirs = Vec::new();
        for entry in entries {
            if self.user_of(&entry.key).is_some()
                && decode_session(&entry.value, "consul")?.server_id == *server
            {
                theirs.push(entry);
            }
        }
        let deletes: Vec<_> = theirs
            .iter()
            .map(|entry| self.delete_at(&entry.key, entry.modify_index))
            .collect();
        let removed = futures::stream::iter(deletes)
            .buffer_unordered(PARALLEL)
            .try_fold(0u64, |count, deleted| async move {
                Ok(count + u64::from(deleted))
            })
            .await?;
        // The server is dead: stop holding a Consul session for it. (Sessions it bound after
        // the listing above go with that session, uncounted.)
        self.release_server(server).await;
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
        let online = self.online_keys().await?;
        let start = after.map_or(0, |after| {
            online.partition_point(|(user, _)| *user <= after)
        });
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let window = &online[start..];
        let more = window.len() > limit;
        let window = &window[..window.len().min(limit)];
        let keys: Vec<String> = window.iter().map(|(_, key)| key.clone()).collect();
        let items = self
            .read_many(&keys)
            .await?
            .iter()
            .map(|entry| decode_session(&entry.value, "consul"))
            .collect::<Result<Vec<_>>>()?;
        // The cursor is the last user of the window, even if that user went offline meanwhile.
        let next = window
            .last()
            .filter(|_| more)
            .map(|(user, _)| Cursor(user.to_string()));
        Ok(Page { items, next })
    }

    async fn count_online(&self) -> Result<u64> {
        Ok(self.online_keys().await?.len() as u64)
    }
}
