//! [`MetaStore`] on PostgreSQL: [`PostgresMetaStore`].
//!
//! - **Leases** are rows with an owner token (`lease`, from a sequence) and an expiry on the
//!   database's clock. Registering inserts the row, or takes over one that expired, in one
//!   `INSERT .. ON CONFLICT DO UPDATE .. WHERE expired` statement, so of two nodes claiming one
//!   id exactly one wins. A task renews the row every third of the TTL; if the row was lost
//!   (expired and taken over, or deleted), it registers again as soon as the id is free.
//!   Dropping the registration aborts the task, and the row expires as a crashed owner's would.
//! - **Watching** uses `LISTEN`/`NOTIFY`: every change notifies channel `cim_meta` in its own
//!   transaction, with the namespace and the change as a JSON payload, so every watcher hears
//!   of the same changes in commit order. Expiry by itself changes no row, so watchers also
//!   reap every half TTL: they delete expired rows and announce the removals like any other
//!   change (a late renewal then finds its row gone and registers again, announced as well).
//!   Events that tell a watcher nothing new (a notice of a change its snapshot already held) are
//!   dropped. When the listening connection is lost, notices may have been missed: the watcher
//!   reconnects and sends a fresh snapshot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cim_core::{
    Error, Lease, MetaCapabilities, MetaEvent, MetaStore, MetaWatch, Registration, Result,
    ServerId, ServerInfo,
};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::error::{During, db_error};
use crate::{PostgresConfig, PostgresStore};

/// How long a registration outlives its last renewal when the section sets no `ttl`.
pub const DEFAULT_META_TTL: Duration = Duration::from_secs(10);

/// The notification channel, shared by every namespace of a database (payloads say which).
const CHANNEL: &str = "cim_meta";

/// Events a watcher may have queued before it is read.
const WATCH_BUFFER: usize = 256;

/// Claims `$1` for lease `$3` with info `$2` for `$4` ms, if free or expired.
const CLAIM: &str = "INSERT INTO meta_servers AS m (server_id, info, lease, expires_at) \
     VALUES ($1, $2, $3, now_ms() + $4) \
     ON CONFLICT (server_id) DO UPDATE \
     SET info = EXCLUDED.info, lease = EXCLUDED.lease, expires_at = EXCLUDED.expires_at \
     WHERE m.expires_at <= now_ms() OR m.lease = EXCLUDED.lease \
     RETURNING lease";

/// Server registrations in a PostgreSQL schema. Cheap to clone; watches end when the last
/// clone is dropped.
///
/// Registered as backend `postgres` for `[meta]`; the lease TTL is the section's `ttl`.
#[derive(Debug, Clone)]
pub struct PostgresMetaStore {
    store: PostgresStore,
    ttl: Duration,
    /// Dropped with the last clone, which tells every watch task to stop.
    alive: Arc<watch::Sender<()>>,
}

/// A change as announced over NOTIFY.
#[derive(Debug, Serialize, Deserialize)]
struct Notice {
    /// The namespace (schema) the change happened in.
    schema: String,
    /// The change.
    change: Change,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Change {
    Registered(ServerInfo),
    Updated(ServerInfo),
    Removed(ServerId),
}

impl PostgresMetaStore {
    /// Connects like [`PostgresStore::connect`]; registrations outlive their last renewal by
    /// `ttl`.
    pub async fn connect(
        config: &PostgresConfig,
        namespace: &str,
        ttl: Duration,
    ) -> Result<PostgresMetaStore> {
        if ttl < Duration::from_millis(10) {
            return Err(Error::config("[meta] ttl must be at least 10ms"));
        }
        let store = PostgresStore::connect(config, namespace).await?;
        let (alive, _) = watch::channel(());
        Ok(PostgresMetaStore {
            store,
            ttl,
            alive: Arc::new(alive),
        })
    }

    fn ttl_ms(&self) -> i64 {
        millis(self.ttl)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn encode(info: &ServerInfo) -> Result<String> {
    serde_json::to_string(info).map_err(|e| {
        Error::invalid_input(format!("server {} cannot be stored as JSON: {e}", info.id))
    })
}

fn decode(text: &str) -> Result<ServerInfo> {
    serde_json::from_str(text).map_err(|e| {
        Error::internal(format!(
            "meta_servers.info holds something else than a server: {e}"
        ))
        .with_context("backend", "postgres")
    })
}

/// Announces `change` in `schema` to watchers, in the caller's transaction.
async fn notify(
    tx: &mut sqlx::PgConnection,
    schema: &str,
    change: Change,
    operation: &'static str,
) -> Result<()> {
    let payload = serde_json::to_string(&Notice {
        schema: schema.to_string(),
        change,
    })
    .map_err(|e| Error::internal(format!("encoding a change notice failed: {e}")))?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(tx)
        .await
        .during(operation)?;
    Ok(())
}

/// Claims the id for `lease` and announces it; `Ok(false)` if another live lease holds it.
async fn claim(store: &PostgresStore, info: &ServerInfo, lease: i64, ttl_ms: i64) -> Result<bool> {
    const OPERATION: &str = "register";
    let text = encode(info)?;
    let mut tx = store.pool().begin().await.during(OPERATION)?;
    let claimed: Option<i64> = sqlx::query_scalar(CLAIM)
        .bind(info.id.as_str())
        .bind(text)
        .bind(lease)
        .bind(ttl_ms)
        .fetch_optional(&mut *tx)
        .await
        .during(OPERATION)?;
    if claimed.is_none() {
        tx.rollback().await.during(OPERATION)?;
        return Ok(false);
    }
    notify(
        &mut tx,
        store.schema(),
        Change::Registered(info.clone()),
        OPERATION,
    )
    .await?;
    tx.commit().await.during(OPERATION)?;
    Ok(true)
}

/// Deletes the registrations whose lease expired and announces their removal, so that every
/// watcher hears of an expiry in the same place of the same stream of changes. Any watcher
/// may reap; of two at once, each row is deleted (and announced) by one.
async fn reap(store: &PostgresStore) -> Result<()> {
    const OPERATION: &str = "reap";
    let mut tx = store.pool().begin().await.during(OPERATION)?;
    let expired: Vec<String> = sqlx::query_scalar(
        "DELETE FROM meta_servers WHERE expires_at <= now_ms() RETURNING server_id",
    )
    .fetch_all(&mut *tx)
    .await
    .during(OPERATION)?;
    for id in expired {
        let id = ServerId::new(id).map_err(|e| {
            Error::internal(format!("meta_servers.server_id holds an invalid id: {e}"))
                .with_context("backend", "postgres")
        })?;
        notify(&mut tx, store.schema(), Change::Removed(id), OPERATION).await?;
    }
    tx.commit().await.during(OPERATION)?;
    Ok(())
}

async fn list_servers(store: &PostgresStore) -> Result<Vec<ServerInfo>> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT info FROM meta_servers WHERE expires_at > now_ms() ORDER BY server_id",
    )
    .fetch_all(store.pool())
    .await
    .during("list")?;
    rows.iter().map(|text| decode(text)).collect()
}

#[async_trait]
impl MetaStore for PostgresMetaStore {
    fn capabilities(&self) -> MetaCapabilities {
        MetaCapabilities::ALL
    }

    async fn register(&self, info: ServerInfo) -> Result<Registration> {
        let lease: i64 = sqlx::query_scalar("SELECT nextval('meta_leases')")
            .fetch_one(self.store.pool())
            .await
            .during("register")?;
        if !claim(&self.store, &info, lease, self.ttl_ms()).await? {
            return Err(Error::already_exists(format!(
                "server {} is registered and its lease is live; wait for it to expire (at most \
                 {:?}) or use another id",
                info.id, self.ttl
            ))
            .set_retryable(true)
            .with_context("backend", "postgres"));
        }
        let id = info.id.clone();
        let info = Arc::new(Mutex::new(info));
        let renewer = tokio::spawn(renew(
            self.store.clone(),
            Arc::clone(&info),
            lease,
            self.ttl,
        ))
        .abort_handle();
        Ok(Registration::new(Box::new(PostgresLease {
            store: self.store.clone(),
            id,
            info,
            lease,
            ttl: self.ttl,
            renewer,
        })))
    }

    async fn list(&self) -> Result<Vec<ServerInfo>> {
        list_servers(&self.store).await
    }

    async fn watch(&self) -> Result<MetaWatch> {
        let mut listener = PgListener::connect_with(self.store.pool())
            .await
            .during("watch")?;
        listener.listen(CHANNEL).await.during("watch")?;
        // Listening first, then listing: nothing between the two can be missed.
        let snapshot = list_servers(&self.store).await?;
        let (events, receiver) = mpsc::channel(WATCH_BUFFER);
        let mut watcher = Watcher {
            store: self.store.clone(),
            known: BTreeMap::new(),
            events,
        };
        let first = watcher.replace_known(snapshot);
        // The buffer is empty: this cannot fail for lack of room.
        let _ = watcher.events.try_send(Ok(first));
        let alive = self.alive.subscribe();
        tokio::spawn(watcher.run(listener, alive, self.ttl));
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|event| (event, receiver))
        });
        Ok(Box::pin(stream))
    }
}

/// Renews `lease` every third of `ttl`, registering again if the row was lost.
async fn renew(store: PostgresStore, info: Arc<Mutex<ServerInfo>>, lease: i64, ttl: Duration) {
    let period = ttl / 3;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let current = match info.lock() {
            Ok(info) => info.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let renewed = sqlx::query(
            "UPDATE meta_servers SET expires_at = now_ms() + $3 \
             WHERE server_id = $1 AND lease = $2",
        )
        .bind(current.id.as_str())
        .bind(lease)
        .bind(millis(ttl))
        .execute(store.pool())
        .await;
        let outcome = match renewed {
            Ok(done) if done.rows_affected() == 1 => Ok(true),
            // The row is gone or someone else's: take the id back as soon as it is free.
            Ok(_) => claim(&store, &current, lease, millis(ttl)).await,
            Err(e) => Err(db_error("renew", e)),
        };
        match outcome {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                server = %current.id,
                "lost the registration to another live lease; retrying"
            ),
            Err(error) => tracing::warn!(
                server = %current.id,
                %error,
                "renewing the registration failed; retrying"
            ),
        }
    }
}

/// The backend side of a [`Registration`] of a [`PostgresMetaStore`].
struct PostgresLease {
    store: PostgresStore,
    id: ServerId,
    info: Arc<Mutex<ServerInfo>>,
    lease: i64,
    ttl: Duration,
    renewer: AbortHandle,
}

impl Drop for PostgresLease {
    fn drop(&mut self) {
        // Stop renewing but leave the row: it expires as a crashed owner's would.
        self.renewer.abort();
    }
}

#[async_trait]
impl Lease for PostgresLease {
    fn server_id(&self) -> &ServerId {
        &self.id
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn update(&self, info: ServerInfo) -> Result<()> {
        const OPERATION: &str = "update";
        let text = encode(&info)?;
        // Renewals register the latest information if the row has to be claimed again.
        match self.info.lock() {
            Ok(mut current) => *current = info.clone(),
            Err(poisoned) => *poisoned.into_inner() = info.clone(),
        }
        let mut tx = self.store.pool().begin().await.during(OPERATION)?;
        let done = sqlx::query(
            "UPDATE meta_servers SET info = $3 \
             WHERE server_id = $1 AND lease = $2 AND expires_at > now_ms()",
        )
        .bind(self.id.as_str())
        .bind(self.lease)
        .bind(text)
        .execute(&mut *tx)
        .await
        .during(OPERATION)?;
        if done.rows_affected() == 0 {
            tx.rollback().await.during(OPERATION)?;
            return Err(Error::unavailable(format!(
                "the registration of {} lapsed; it is being registered again with this \
                 information",
                self.id
            ))
            .with_context("backend", "postgres"));
        }
        notify(
            &mut tx,
            self.store.schema(),
            Change::Updated(info),
            OPERATION,
        )
        .await?;
        tx.commit().await.during(OPERATION)?;
        Ok(())
    }

    async fn deregister(self: Box<Self>) -> Result<()> {
        const OPERATION: &str = "deregister";
        self.renewer.abort();
        let mut tx = self.store.pool().begin().await.during(OPERATION)?;
        let done = sqlx::query("DELETE FROM meta_servers WHERE server_id = $1 AND lease = $2")
            .bind(self.id.as_str())
            .bind(self.lease)
            .execute(&mut *tx)
            .await
            .during(OPERATION)?;
        if done.rows_affected() == 1 {
            notify(
                &mut tx,
                self.store.schema(),
                Change::Removed(self.id.clone()),
                OPERATION,
            )
            .await?;
        }
        tx.commit().await.during(OPERATION)?;
        Ok(())
    }
}

/// One watch: what it reported so far, and where it reports.
struct Watcher {
    store: PostgresStore,
    known: BTreeMap<ServerId, ServerInfo>,
    events: mpsc::Sender<Result<MetaEvent>>,
}

impl Watcher {
    async fn run(
        mut self,
        mut listener: PgListener,
        mut alive: watch::Receiver<()>,
        ttl: Duration,
    ) {
        let mut ticks = tokio::time::interval(ttl / 2);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync = false;
        loop {
            let keep_going = tokio::select! {
                _ = alive.changed() => false,
                _ = self.events.closed() => false,
                _ = ticks.tick() => self.tick(&mut resync).await,
                notification = listener.try_recv() => match notification {
                    Ok(Some(notification)) => self.apply_notice(notification.payload()).await,
                    // The connection was lost: some notices may be too. The next try_recv
                    // reconnects and listens again; the snapshot covers the gap.
                    Ok(None) => {
                        resync = true;
                        self.resync(&mut resync).await
                    }
                    Err(e) => {
                        resync = true;
                        let sent = self.send(Err(db_error("watch", e))).await;
                        // Back off before reconnecting; the tick resyncs meanwhile.
                        tokio::time::sleep(ttl / 4).await;
                        sent
                    }
                },
            };
            if !keep_going {
                return;
            }
        }
    }

    /// On a tick: after a gap, a fresh snapshot; otherwise reaps expired registrations.
    async fn tick(&mut self, resync: &mut bool) -> bool {
        if *resync {
            return self.resync(resync).await;
        }
        match reap(&self.store).await {
            Ok(()) => true,
            Err(error) => {
                // Changes may be missed while the database is away.
                *resync = true;
                self.send(Err(error)).await
            }
        }
    }

    /// Replaces what the watcher knows with the live servers, and says so with a snapshot.
    async fn resync(&mut self, resync: &mut bool) -> bool {
        match list_servers(&self.store).await {
            Ok(servers) => {
                *resync = false;
                let event = self.replace_known(servers);
                self.send(Ok(event)).await
            }
            Err(error) => self.send(Err(error)).await,
        }
    }

    /// Replaces what is known with `servers`; the snapshot event that says so.
    fn replace_known(&mut self, servers: Vec<ServerInfo>) -> MetaEvent {
        self.known = servers
            .iter()
            .map(|info| (info.id.clone(), info.clone()))
            .collect();
        MetaEvent::Snapshot(servers)
    }

    async fn apply_notice(&mut self, payload: &str) -> bool {
        let Ok(notice) = serde_json::from_str::<Notice>(payload) else {
            tracing::warn!("ignoring a notice on {CHANNEL} that this version cannot read");
            return true;
        };
        if notice.schema != self.store.schema() {
            return true;
        }
        match notice.change {
            Change::Registered(info) | Change::Updated(info) => self.changed(info).await,
            Change::Removed(id) => self.removed(id).await,
        }
    }

    /// Reports `info` as added or updated, unless it is what the watcher knows already.
    async fn changed(&mut self, info: ServerInfo) -> bool {
        let event = match self.known.get(&info.id) {
            Some(known) if *known == info => return true,
            Some(_) => MetaEvent::Updated(info.clone()),
            None => MetaEvent::Added(info.clone()),
        };
        self.known.insert(info.id.clone(), info);
        self.send(Ok(event)).await
    }

    /// Reports `id` as removed, unless the watcher does not know it.
    async fn removed(&mut self, id: ServerId) -> bool {
        if self.known.remove(&id).is_none() {
            return true;
        }
        self.send(Ok(MetaEvent::Removed(id))).await
    }

    /// Sends `event`; false once the watcher is gone.
    async fn send(&self, event: Result<MetaEvent>) -> bool {
        self.events.send(event).await.is_ok()
    }
}
