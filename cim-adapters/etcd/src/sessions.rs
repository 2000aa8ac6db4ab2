//! [`EtcdSessionStore`]: who is online, in etcd.
//!
//! Every server id has one lease (its "server lease"), and each of its users' sessions is a key
//! attached to it, so when a server stops refreshing, etcd deletes all its sessions by itself when
//! the lease expires, one TTL after the last refresh: a crashed node leaves nothing to clean up.
//! `refresh_server` and `bind` renew the lease (a bind that starts while another renewal of the
//! same server is under way waits for that one instead of sending its own). The lease of a server
//! is recorded under `leases/{server}` (a key attached to that same lease), so every store
//! instance of the cluster, and every node, renews and revokes the same lease for a server id:
//! the sessions of server S live as long as anyone keeps refreshing S.
//!
//! Keys, with `r = {prefix}/{namespace}/sessions/` and user ids zero-padded to 20 digits so that
//! etcd's byte order of keys is numeric order:
//!
//! | key | value | lease |
//! |---|---|---|
//! | `r users/{user}` | the session's JSON | its server's lease |
//! | `r leases/{server}` | the server lease's id (hex, informative) | that lease |
//!
//! `bind` is one transaction when the user has no session (`create_revision == 0`, then put),
//! and a compare-and-swap on the session key's `mod_revision` otherwise, so of racing binds
//! exactly one wins each round and a replaced session goes back to exactly one caller. `unbind`
//! reads the session, checks user, server and connection, and deletes it only if its
//! `mod_revision` is still the one read. `list_online` is a range read from the cursor's key with
//! a limit; `count_online` is a count-only range. `remove_server` revokes the server's lease,
//! which deletes all its sessions in one step.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use cim_core::codec::{decode_session, encode_session};
use cim_core::paging::id_cursor;
use cim_core::registry::{BackendOptions, BuildFuture, SessionStoreFactory};
use cim_core::{
    BindOutcome, BindPolicy, Cursor, Error, Page, Result, ServerId, Session, SessionCapabilities,
    SessionRef, SessionStore, UserId,
};
use etcd_client::{Compare, CompareOp, GetOptions, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp};
use tokio::time::Instant;

use crate::EtcdConfig;
use crate::connection::{Etcd, lease_lost, lease_seconds, padded, prefix_end, range_result};
use crate::lease::{self, Renewal, Renewer};

/// The server TTL when `[sessions] ttl` is not set.
const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// How many times an operation re-reads a session that others keep changing before it gives up
/// with a retryable `Conflict`. Every failed round means another caller succeeded.
const CONTENTION_ROUNDS: usize = 256;

/// How many times an operation starts again because its server's lease vanished under it.
const LEASE_ROUNDS: usize = 3;

/// The most operations in one etcd transaction (etcd's default `--max-txn-ops` is 128).
const TXN_OPS: usize = 100;

inventory::submit! {
    SessionStoreFactory::new(
        "etcd",
        "etcd: sessions are keys on their server's lease and vanish with it (cluster-wide)",
        build,
    )
}

fn build(options: BackendOptions) -> BuildFuture<dyn SessionStore> {
    Box::pin(async move {
        let config: EtcdConfig = options.parse()?;
        let ttl = options.ttl().unwrap_or(DEFAULT_TTL);
        let store = EtcdSessionStore::connect(&config, options.namespace(), ttl).await?;
        Ok(Arc::new(store) as Arc<dyn SessionStore>)
    })
}

/// A server lease this store renews.
struct ServerLease {
    renewer: Renewer,
    /// When the last successful renewal (or the grant) was sent.
    renewed_at: Instant,
}

/// The server lease of one server id, behind a lock that renewals of that server queue on.
type Slot = Arc<tokio::sync::Mutex<Option<ServerLease>>>;

/// A [`SessionStore`] in etcd, shared by every node of a cluster.
///
/// A server's sessions live until its lease expires, `ttl` (rounded up to whole seconds, and at
/// least etcd's minimum lease TTL) after its last [`refresh_server`] or bind. Listing and
/// counting are supported.
///
/// [`refresh_server`]: SessionStore::refresh_server
pub struct EtcdSessionStore {
    etcd: Etcd,
    /// `{prefix}/{namespace}/sessions/users/`.
    users: String,
    /// `{prefix}/{namespace}/sessions/leases/`.
    leases: String,
    ttl: Duration,
    slots: std::sync::Mutex<HashMap<ServerId, Slot>>,
}

impl std::fmt::Debug for EtcdSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSessionStore")
            .field("etcd", &self.etcd)
            .field("users", &self.users)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl EtcdSessionStore {
    /// Connects to the etcd `config` names and keeps sessions under
    /// `{prefix}/{namespace}/sessions/`, each server's sessions living `ttl` past its last
    /// refresh.
    pub async fn connect(
        config: &EtcdConfig,
        namespace: &str,
        ttl: Duration,
    ) -> Result<EtcdSessionStore> {
        if ttl.is_zero() {
            return Err(Error::config(
                "[sessions] ttl must be longer than zero (for example \"30s\")",
            ));
        }
        let root = config.root(namespace);
        Ok(EtcdSessionStore {
            etcd: Etcd::connect(config, &root).await?,
            users: format!("{root}/sessions/users/"),
            leases: format!("{root}/sessions/leases/"),
            ttl,
            slots: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The server TTL (before rounding up to whole seconds).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn user_key(&self, user: UserId) -> String {
        format!("{}{}", self.users, padded(user.0))
    }

    fn lease_key(&self, server: &ServerId) -> String {
        format!("{}{}", self.leases, server.as_str())
    }

    /// The slot of `server`, created if new.
    fn slot(&self, server: &ServerId) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(server) {
            return Arc::clone(slot);
        }
        // A new server: forget the ones nobody is using that stopped renewing long ago (their
        // leases expired), so the map stays as small as the set of live servers.
        let stale = self.ttl * 2;
        slots.retain(|_, slot| {
            Arc::strong_count(slot) > 1
                || slot.try_lock().map_or(true, |held| {
                    held.as_ref()
                        .is_some_and(|lease| lease.renewed_at.elapsed() < stale)
                })
        });
        let slot = Slot::default();
        slots.insert(server.clone(), Arc::clone(&slot));
        slot
    }

    /// The live lease of `server`, renewed at or after `since` (by this call, or by one that
    /// another operation sent meanwhile); acquired if there is none.
    async fn server_lease(&self, server: &ServerId, since: Instant) -> Result<i64> {
        let slot = self.slot(server);
        let mut held = slot.lock().await;
        if let Some(lease) = held.as_mut() {
            if lease.renewed_at >= since {
                return Ok(lease.renewer.id());
            }
            let sent = Instant::now();
            match lease.renewer.renew(&self.etcd).await? {
                Renewal::Alive => {
                    lease.renewed_at = sent;
                    return Ok(lease.renewer.id());
                }
                Renewal::Lost => *held = None,
            }
        }
        let sent = Instant::now();
        let renewer = self.acquire(server).await?;
        let id = renewer.id();
        *held = Some(ServerLease {
            renewer,
            renewed_at: sent,
        });
        Ok(id)
    }

    /// Adopts the lease recorded for `server` if it is alive, or grants one and records it.
    async fn acquire(&self, server: &ServerId) -> Result<Renewer> {
        let key = self.lease_key(server);
        for _ in 0..CONTENTION_ROUNDS {
            let recorded = self
                .etcd
                .call("find server lease", self.etcd.kv().get(key.as_str(), None))
                .await?
                .take_kvs();
            if let Some(record) = recorded.first() {
                let mut renewer = Renewer::new(record.lease());
                if renewer.renew(&self.etcd).await? == Renewal::Alive {
                    return Ok(renewer);
                }
                // Expired right now: etcd deletes the record with it; look again.
                continue;
            }
            let granted = lease::grant(&self.etcd, lease_seconds(self.ttl)).await?;
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    format!("{:x}", granted.id),
                    Some(PutOptions::new().with_lease(granted.id)),
                )]);
            match self.etcd.txn("record server lease", txn).await {
                Ok(response) if response.succeeded() => return Ok(Renewer::new(granted.id)),
                // Another store recorded one first: adopt that one.
                Ok(_) => lease::revoke_quietly(&self.etcd, granted.id).await,
                Err(error) => {
                    lease::revoke_quietly(&self.etcd, granted.id).await;
                    return Err(error);
                }
            }
        }
        Err(contended(format!("the lease of server {server}")))
    }

    /// Forgets `lease` as `server`'s lease after etcd said it is gone.
    async fn forget(&self, server: &ServerId, lease: i64) {
        let slot = self.slot(server);
        let mut held = slot.lock().await;
        if held.as_ref().is_some_and(|held| held.renewer.id() == lease) {
            *held = None;
        }
    }

    /// One attempt at [`SessionStore::bind`] with the server lease `lease`.
    async fn bind_on(
        &self,
        session: &Session,
        json: &str,
        lease: i64,
        policy: BindPolicy,
    ) -> Result<BindOutcome> {
        let key = self.user_key(session.user_id);
        // What the user's key held when last read; `None` while it is believed absent.
        let mut current: Option<(i64, Session)> = None;
        for _ in 0..CONTENTION_ROUNDS {
            let (condition, outcome) = match &current {
                None => (
                    Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                    BindOutcome::Bound,
                ),
                Some((revision, existing)) => {
                    let outcome = if existing.reference() == session.reference() {
                        // The very same session again: keep it, with the new details.
                        BindOutcome::Bound
                    } else if policy == BindPolicy::Reject {
                        return Err(Error::already_exists(format!(
                            "user {} is already online on server {}; unbind that session first \
                             or bind with the replace policy",
                            session.user_id, existing.server_id
                        )));
                    } else {
                        BindOutcome::Replaced(existing.clone())
                    };
                    (
                        Compare::mod_revision(key.as_str(), CompareOp::Equal, *revision),
                        outcome,
                    )
                }
            };
            let txn = Txn::new()
                .when([condition])
                .and_then([TxnOp::put(
                    key.as_str(),
                    json,
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let response = self.etcd.txn("bind", txn).await?;
            if response.succeeded() {
                return Ok(outcome);
            }
            current = match range_result(&response, 0).first() {
                Some(kv) => Some((kv.mod_revision(), decode_session(kv.value(), "etcd")?)),
                None => None,
            };
        }
        Err(contended(format!(
            "the session of user {}",
            session.user_id
        )))
    }
}

fn contended(what: String) -> Error {
    Error::conflict(format!("{what} kept changing under this operation; retry")).set_retryable(true)
}

#[async_trait]
impl SessionStore for EtcdSessionStore {
    fn capabilities(&self) -> SessionCapabilities {
        SessionCapabilities::ALL
    }

    async fn bind(&self, session: Session, policy: BindPolicy) -> Result<BindOutcome> {
        let since = Instant::now();
        let json = encode_session(&session)?;
        for _ in 0..LEASE_ROUNDS {
            let lease = self.server_lease(&session.server_id, since).await?;
            match self.bind_on(&session, &json, lease, policy).await {
                Err(error) if lease_lost(&error) => self.forget(&session.server_id, lease).await,
                outcome => return outcome,
            }
        }
        Err(Error::unavailable(format!(
            "the lease of server {} vanished {LEASE_ROUNDS} times during one bind; retry",
            session.server_id
        )))
    }

    async fn get(&self, user: UserId) -> Result<Option<Session>> {
        let response = self
            .etcd
            .call("get session", self.etcd.kv().get(self.user_key(user), None))
            .await?;
        response
            .kvs()
            .first()
            .map(|kv| decode_session(kv.value(), "etcd"))
            .transpose()
    }

    async fn get_many(&self, users: &[UserId]) -> Result<Vec<Session>> {
        let mut sessions = Vec::new();
        for chunk in users.chunks(TXN_OPS) {
            // One transaction: a consistent view of the chunk in one round trip.
            let reads: Vec<TxnOp> = chunk
                .iter()
                .map(|user| TxnOp::get(self.user_key(*user), None))
                .collect();
            let response = self
                .etcd
                .txn("get sessions", Txn::new().and_then(reads))
                .await?;
            for index in 0..chunk.len() {
                if let Some(kv) = range_result(&response, index).first() {
                    sessions.push(decode_session(kv.value(), "etcd")?);
                }
            }
        }
        Ok(sessions)
    }

    async fn unbind(&self, session: &SessionRef) -> Result<bool> {
        let key = self.user_key(session.user_id);
        let mut current = self
            .etcd
            .call("unbind", self.etcd.kv().get(key.as_str(), None))
            .await?
            .take_kvs();
        for _ in 0..CONTENTION_ROUNDS {
            let Some(kv) = current.first() else {
                return Ok(false);
            };
            if decode_session(kv.value(), "etcd")?.reference() != *session {
                return Ok(false);
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::delete(key.as_str(), None)])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let response = self.etcd.txn("unbind", txn).await?;
            if response.succeeded() {
                return Ok(true);
            }
            current = range_result(&response, 0);
        }
        Err(contended(format!(
            "the session of user {}",
            session.user_id
        )))
    }

    async fn refresh_server(&self, server: &ServerId) -> Result<()> {
        self.server_lease(server, Instant::now()).await.map(|_| ())
    }

    async fn remove_server(&self, server: &ServerId) -> Result<u64> {
        let record = self
            .etcd
            .call(
                "remove server",
                self.etcd.kv().get(self.lease_key(server), None),
            )
            .await?
            .take_kvs();
        let Some(record) = record.first() else {
            return Ok(0);
        };
        let lease = record.lease();
        let attached = match self
            .etcd
            .call(
                "remove server",
                self.etcd
                    .lease()
                    .time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys())),
            )
            .await
        {
            Ok(response) => response.keys().to_vec(),
            Err(error) if lease_lost(&error) => Vec::new(),
            Err(error) => return Err(error),
        };
        let sessions = attached
            .iter()
            .filter(|key| key.starts_with(self.users.as_bytes()))
            .count();
        if !lease::revoke(&self.etcd, lease).await? {
            // It expired between the two requests: its sessions went, but not by this call.
            return Ok(0);
        }
        self.forget(server, lease).await;
        Ok(u64::try_from(sessions).unwrap_or(u64::MAX))
    }

    async fn list_online(&self, cursor: Option<&Cursor>, limit: u32) -> Result<Page<Session>> {
        if limit == 0 {
            return Err(Error::invalid_input(
                "list_online needs a limit of at least 1",
            ));
        }
        // Just after the cursor's key: the first key greater than it.
        let start = match cursor {
            Some(cursor) => {
                let mut key = self
                    .user_key(UserId(id_cursor(Some(cursor), "list_online")?))
                    .into_bytes();
                key.push(0);
                key
            }
            None => self.users.clone().into_bytes(),
        };
        // One more than asked, to know whether a next page exists.
        let options = GetOptions::new()
            .with_range(prefix_end(&self.users))
            .with_limit(i64::from(limit) + 1);
        let response = self
            .etcd
            .call("list online", self.etcd.kv().get(start, Some(options)))
            .await?;
        let mut items = response
            .kvs()
            .iter()
            .map(|kv| decode_session(kv.value(), "etcd"))
            .collect::<Result<Vec<_>>>()?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|last| Cursor(last.user_id.to_string()))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn count_online(&self) -> Result<u64> {
        let response = self
            .etcd
            .call(
                "count online",
                self.etcd.kv().get(
                    self.users.as_str(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                ),
            )
            .await?;
        Ok(u64::try_from(response.count()).unwrap_or(0))
    }
}
