//! [`RedisMetaStore`]: server registration and discovery in Redis.
//!
//! A registration is a hash (`{ns}:meta:srv:{id}`: the owner's random token and the server's
//! JSON) with a `PX ttl` expiry, renewed every third of the TTL by a task the [`Lease`] owns, so a
//! dead process simply stops renewing and its key expires. Redis does not announce expiries
//! reliably, so a sorted set `{ns}:meta:index` (id -> expiry time on the Redis clock) lets a
//! sweeper task in every store find lapsed entries cheaply and announce them once (the `ZREM`
//! that removes the entry decides who announces).
//!
//! Every change (register, update, deregister, expiry) happens in one Lua script that also
//! increments `{ns}:meta:version` and publishes `version\nkind\npayload` on `{ns}:meta:events`.
//! A watcher subscribes first, then reads a snapshot and its version atomically; it drops events
//! the snapshot already contains and resyncs with a fresh snapshot when a version is missing
//! (messages lost with a connection), so folding the stream always converges to `list()`. Pub/sub
//! connections do not reconnect on their own: the watch task does, and resyncs after.
//!
//! Scripts build key names from the prefix (`ARGV[1]`, also passed as `KEYS[1]` so that Redis
//! Cluster routes the script), so on a cluster every key of the store carries the prefix's one
//! hash tag and lives in one slot (see `connection.rs`).

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
use redis::Script;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::RedisConfig;
use crate::connection::{Redis, convert, millis};

/// The lease TTL when `[meta] ttl` is not set.
const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// The shortest TTL accepted: renewals every third of it must fit in a round trip or two.
const MIN_TTL: Duration = Duration::from_millis(100);

/// Events buffered for one watcher before the watch task waits for it.
const WATCH_BUFFER: usize = 256;

/// The Lua helpers every script starts with. `p` is the key prefix (`ARGV[1]`).
const PRELUDE: &str = r#"
local p = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function publish(kind, payload)
  local v = redis.call('INCR', p .. 'version')
  redis.call('PUBLISH', p .. 'events', v .. '\n' .. kind .. '\n' .. payload)
  return v
end
local function sweep()
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', p .. 'index', '-inf', now_ms())) do
    if redis.call('EXISTS', p .. 'srv:' .. id) == 0 then
      if redis.call('ZREM', p .. 'index', id) == 1 then publish('removed', id) end
    end
  end
end
local function keep(id, ttl)
  redis.call('PEXPIRE', p .. 'srv:' .. id, ttl)
  redis.call('ZADD', p .. 'index', now_ms() + tonumber(ttl), id)
end
local function create(id, token, info, ttl)
  sweep()
  redis.call('HSET', p .. 'srv:' .. id, 'token', token, 'info', info)
  keep(id, ttl)
  publish('added', info)
end
"#;

/// ARGV: p, id, token, info, ttl. Returns 1, or 0 if the id is live already.
const REGISTER: &str = r#"
local id, token, info, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('EXISTS', p .. 'srv:' .. id) == 1 then return 0 end
create(id, token, info, ttl)
return 1
"#;

/// ARGV: p, id, token, info, ttl. Renews the lease, or registers again if it lapsed. Returns 1
/// renewed, 2 registered again, 0 held by another owner.
const RENEW: &str = r#"
local id, token, info, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local holder = redis.call('HGET', p .. 'srv:' .. id, 'token')
if holder == token then
  keep(id, ttl)
  return 1
end
if not holder then
  create(id, token, info, ttl)
  return 2
end
return 0
"#;

/// ARGV: p, id, token, info, ttl. Returns 1 updated, 2 registered again, 0 held by another.
const UPDATE: &str = r#"
local id, token, info, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local holder = redis.call('HGET', p .. 'srv:' .. id, 'token')
if holder == token then
  redis.call('HSET', p .. 'srv:' .. id, 'info', info)
  keep(id, ttl)
  publish('updated', info)
  return 1
end
if not holder then
  create(id, token, info, ttl)
  return 2
end
return 0
"#;

/// ARGV: p, id, token. Returns 1 if this owner's registration was removed.
const DEREGISTER: &str = r#"
local id, token = ARGV[2], ARGV[3]
if redis.call('HGET', p .. 'srv:' .. id, 'token') ~= token then return 0 end
redis.call('DEL', p .. 'srv:' .. id)
redis.call('ZREM', p .. 'index', id)
publish('removed', id)
return 1
"#;

/// ARGV: p. Returns {version, info...} of the live servers, after announcing lapsed ones.
const SNAPSHOT: &str = r#"
sweep()
local out = {tostring(redis.call('GET', p .. 'version') or 0)}
for _, id in ipairs(redis.call('ZRANGE', p .. 'index', 0, -1)) do
  local info = redis.call('HGET', p .. 'srv:' .. id, 'info')
  if info then table.insert(out, info) end
end
return out
"#;

/// ARGV: p. Announces lapsed registrations.
const SWEEP: &str = r#"
sweep()
return 1
"#;

inventory::submit! {
    MetaStoreFactory::new(
        "redis",
        "Redis keys with expiry, renewed by a keep-alive; watch by pub/sub (cluster-wide)",
        build,
    )
}

fn build(options: BackendOptions) -> BuildFuture<dyn MetaStore> {
    Box::pin(async move {
        let config: RedisConfig = options.parse()?;
        let ttl = options.ttl().unwrap_or(DEFAULT_TTL);
        let store = RedisMetaStore::connect(&config, options.namespace(), ttl).await?;
        Ok(Arc::new(store) as Arc<dyn MetaStore>)
    })
}

struct Scripts {
    register: Script,
    renew: Script,
    update: Script,
    deregister: Script,
    snapshot: Script,
    sweep: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            register: script(REGISTER),
            renew: script(RENEW),
            update: script(UPDATE),
            deregister: script(DEREGISTER),
            snapshot: script(SNAPSHOT),
            sweep: script(SWEEP),
        }
    }
}

/// What the store, its leases and its watch tasks share.
struct Inner {
    redis: Redis,
    ttl: Duration,
    scripts: Scripts,
}

impl Inner {
    fn channel(&self) -> String {
        format!("{}events", self.redis.prefix())
    }

    /// Runs a change script with ARGV `p, id, token, info, ttl`.
    async fn change(
        &self,
        script: &Script,
        id: &ServerId,
        token: &str,
        info: &str,
        operation: &'static str,
    ) -> Result<i64> {
        self.redis
            .script(script)
            .arg(id.as_str())
            .arg(token)
            .arg(info)
            .arg(millis(self.ttl))
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, operation))
    }

    /// The live servers ordered by id, and the version of the last change they include.
    async fn snapshot(&self) -> Result<(u64, Vec<ServerInfo>)> {
        let reply: Vec<String> = self
            .redis
            .script(&self.scripts.snapshot)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "list servers"))?;
        let Some((version, infos)) = reply.split_first() else {
            return Err(Error::internal(
                "the redis snapshot script answered nothing",
            ));
        };
        let version = version
            .parse::<u64>()
            .map_err(|_| Error::internal(format!("redis meta version {version:?} is no number")))?;
        let mut servers = infos
            .iter()
            .map(|info| decode_server(info.as_bytes(), "redis"))
            .collect::<Result<Vec<_>>>()?;
        servers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((version, servers))
    }

    async fn sweep(&self) -> Result<()> {
        let _: i64 = self
            .redis
            .script(&self.scripts.sweep)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "sweep expired servers"))?;
        Ok(())
    }

    /// A pub/sub connection subscribed to the events channel.
    async fn subscribe(&self) -> Result<redis::aio::PubSub> {
        let config = self.redis.config();
        let mut pubsub = self.redis.pubsub().await?;
        tokio::time::timeout(config.response_timeout, pubsub.subscribe(self.channel()))
            .await
            .map_err(|_| {
                Error::timeout("redis did not confirm the subscription in time")
                    .with_context("backend", "redis")
            })?
            .map_err(|e| convert(e, "watch"))?;
        Ok(pubsub)
    }
}

/// A [`MetaStore`] in Redis, shared by every node of a cluster.
///
/// Leases are renewed every third of the TTL; a dropped [`Registration`] expires one TTL after
/// its last renewal and watchers see it removed within a quarter TTL more (the sweep period).
/// `watch` is supported; TTLs below 100 ms are refused.
pub struct RedisMetaStore {
    inner: Arc<Inner>,
    sweeper: JoinHandle<()>,
    /// Dropped with the store: watch tasks see the channel close and end their streams.
    shutdown: watch::Sender<()>,
}

impl std::fmt::Debug for RedisMetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMetaStore")
            .field("redis", &self.inner.redis)
            .field("ttl", &self.inner.ttl)
            .finish()
    }
}

impl Drop for RedisMetaStore {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

impl RedisMetaStore {
    /// Connects to the Redis `config` names and keeps registrations under `{namespace}:meta:`
    /// with leases of `ttl`. Must be called inside a tokio runtime (it starts the sweeper).
    pub async fn connect(
        config: &RedisConfig,
        namespace: &str,
        ttl: Duration,
    ) -> Result<RedisMetaStore> {
        if ttl < MIN_TTL {
            return Err(Error::config(format!(
                "[meta] ttl = {ttl:?} is too short for redis; use at least {MIN_TTL:?} (for \
                 example \"10s\")"
            )));
        }
        let redis = Redis::connect(config, namespace, "meta").await?;
        let inner = Arc::new(Inner {
            redis,
            ttl,
            scripts: Scripts::new(),
        });
        let sweeper = tokio::spawn(sweep_forever(Arc::clone(&inner)));
        let (shutdown, _) = watch::channel(());
        Ok(RedisMetaStore {
            inner,
            sweeper,
            shutdown,
        })
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }
}

/// Announces lapsed registrations every quarter TTL, for as long as the store lives.
async fn sweep_forever(inner: Arc<Inner>) {
    let mut ticks = tokio::time::interval(inner.ttl / 4);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = inner.sweep().await {
            tracing::debug!(%error, "redis meta store: sweep failed; retrying next tick");
        }
    }
}

#[async_trait]
impl MetaStore for RedisMetaStore {
    fn capabilities(&self) -> MetaCapabilities {
        let mut capabilities = MetaCapabilities::ALL;
        capabilities.min_ttl = MIN_TTL;
        capabilities
    }

    async fn register(&self, info: ServerInfo) -> Result<Registration> {
        let json = encode_server(&info)?;
        let token = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let created = self
            .inner
            .change(
                &self.inner.scripts.register,
                &info.id,
                &token,
                &json,
                "register",
            )
            .await?;
        if created == 0 {
            return Err(Error::already_exists(format!(
                "server {} is registered and its lease is live; wait for it to expire (at most \
                 {:?}) or pick another server id",
                info.id, self.inner.ttl
            ))
            .set_retryable(true));
        }
        let lease = RedisLease::start(Arc::clone(&self.inner), info.id.clone(), token, json);
        Ok(Registration::new(Box::new(lease)))
    }

    async fn list(&self) -> Result<Vec<ServerInfo>> {
        Ok(self.inner.snapshot().await?.1)
    }

    async fn watch(&self) -> Result<MetaWatch> {
        // Subscribe before the snapshot, so no change falls between the two.
        let pubsub = self.inner.subscribe().await?;
        let (version, servers) = self.inner.snapshot().await?;
        let (events, receiver) = mpsc::channel(WATCH_BUFFER);
        // The channel is new and empty: the first item always fits.
        let _ = events.try_send(Ok(MetaEvent::Snapshot(servers)));
        tokio::spawn(
            Watcher {
                inner: Arc::clone(&self.inner),
                events,
                shutdown: self.shutdown.subscribe(),
                version,
            }
            .run(pubsub),
        );
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        Ok(stream.boxed())
    }
}

/// One watcher's task: forwards published changes in version order, resyncing with a snapshot
/// when a version is missing or the connection was lost.
struct Watcher {
    inner: Arc<Inner>,
    events: mpsc::Sender<Result<MetaEvent>>,
    shutdown: watch::Receiver<()>,
    /// The version of the last change the watcher has seen.
    version: u64,
}

/// Why the watcher stopped following a connection.
enum Stop {
    /// The store or the stream is gone: end the task.
    Done,
    /// The pub/sub connection broke: reconnect and resync.
    Lost,
}

impl Watcher {
    async fn run(mut self, pubsub: redis::aio::PubSub) {
        let mut pubsub = pubsub;
        loop {
            if let Stop::Done = self.follow(pubsub).await {
                return;
            }
            match self.reconnect().await {
                Some(again) => pubsub = again,
                None => return,
            }
        }
    }

    /// Forwards the changes published on `pubsub` until it breaks or the watch ends.
    async fn follow(&mut self, pubsub: redis::aio::PubSub) -> Stop {
        // Keep the sink: dropping it would close the subscription.
        let (_sink, mut messages) = pubsub.split();
        loop {
            let message = tokio::select! {
                _ = self.shutdown.changed() => return Stop::Done,
                _ = self.events.closed() => return Stop::Done,
                message = messages.next() => message,
            };
            let Some(message) = message else {
                return Stop::Lost;
            };
            let payload: String = match message.get_payload() {
                Ok(payload) => payload,
                Err(_) => continue,
            };
            let Some((version, event)) = parse_event(&payload) else {
                continue;
            };
            if version <= self.version {
                continue;
            }
            let forwarded = if version == self.version + 1 {
                self.version = version;
                self.events.send(event).await
            } else {
                self.resync().await
            };
            if forwarded.is_err() {
                return Stop::Done;
            }
        }
    }

    /// Sends a fresh snapshot (or the error that prevented it).
    async fn resync(
        &mut self,
    ) -> std::result::Result<(), mpsc::error::SendError<Result<MetaEvent>>> {
        match self.inner.snapshot().await {
            Ok((version, servers)) => {
                self.version = version;
                self.events.send(Ok(MetaEvent::Snapshot(servers))).await
            }
            Err(error) => self.events.send(Err(error)).await,
        }
    }

    /// Subscribes again, with backoff, then resyncs. `None` when the watch ended meanwhile.
    async fn reconnect(&mut self) -> Option<redis::aio::PubSub> {
        let mut pause = Duration::from_millis(50);
        let mut reported = false;
        loop {
            let attempt = async {
                let pubsub = self.inner.subscribe().await?;
                let snapshot = self.inner.snapshot().await?;
                Ok::<_, Error>((pubsub, snapshot))
            };
            let outcome = tokio::select! {
                _ = self.shutdown.changed() => return None,
                _ = self.events.closed() => return None,
                outcome = attempt => outcome,
            };
            match outcome {
                Ok((pubsub, (version, servers))) => {
                    self.version = version;
                    self.events
                        .send(Ok(MetaEvent::Snapshot(servers)))
                        .await
                        .ok()?;
                    return Some(pubsub);
                }
                Err(error) => {
                    // One error per outage tells the watcher; the snapshot tells it it is over.
                    if !reported {
                        reported = true;
                        self.events.send(Err(error)).await.ok()?;
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

/// Parses `version\nkind\npayload`.
fn parse_event(payload: &str) -> Option<(u64, Result<MetaEvent>)> {
    let mut parts = payload.splitn(3, '\n');
    let version = parts.next()?.parse::<u64>().ok()?;
    let kind = parts.next()?;
    let body = parts.next()?;
    let event = match kind {
        "added" => decode_server(body.as_bytes(), "redis").map(MetaEvent::Added),
        "updated" => decode_server(body.as_bytes(), "redis").map(MetaEvent::Updated),
        "removed" => ServerId::new(body).map(MetaEvent::Removed),
        _ => return None,
    };
    Some((version, event))
}

/// A registration's lease: its keep-alive task renews it until the lease is dropped or
/// deregistered.
struct RedisLease {
    inner: Arc<Inner>,
    id: ServerId,
    token: String,
    /// The current registration JSON, also used to register again after a lapse.
    info: Arc<Mutex<String>>,
    keeper: JoinHandle<()>,
}

impl RedisLease {
    fn start(inner: Arc<Inner>, id: ServerId, token: String, info: String) -> RedisLease {
        let info = Arc::new(Mutex::new(info));
        let keeper = tokio::spawn(keep_alive(
            Arc::clone(&inner),
            id.clone(),
            token.clone(),
            Arc::clone(&info),
        ));
        RedisLease {
            inner,
            id,
            token,
            info,
            keeper,
        }
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

fn current(info: &Mutex<String>) -> String {
    info.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Renews the lease every third of the TTL; registers again if it lapsed meanwhile.
async fn keep_alive(inner: Arc<Inner>, id: ServerId, token: String, info: Arc<Mutex<String>>) {
    let mut ticks = tokio::time::interval(inner.ttl / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate and the registration is fresh.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let json = current(&info);
        match inner
            .change(&inner.scripts.renew, &id, &token, &json, "renew lease")
            .await
        {
            Ok(1) => {}
            Ok(2) => {
                tracing::info!(server = %id, "redis meta store: lease had lapsed; registered again")
            }
            Ok(_) => tracing::warn!(
                server = %id,
                "redis meta store: another process holds this server id; retrying until its lease expires"
            ),
            Err(error) => {
                tracing::warn!(server = %id, %error, "redis meta store: lease renewal failed; retrying")
            }
        }
    }
}

#[async_trait]
impl Lease for RedisLease {
    fn server_id(&self) -> &ServerId {
        &self.id
    }

    fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    async fn update(&self, info: ServerInfo) -> Result<()> {
        let json = encode_server(&info)?;
        *self.info.lock().unwrap_or_else(PoisonError::into_inner) = json.clone();
        let outcome = self
            .inner
            .change(
                &self.inner.scripts.update,
                &self.id,
                &self.token,
                &json,
                "update registration",
            )
            .await?;
        if outcome == 0 {
            return Err(Error::conflict(format!(
                "server {} is registered by another process now; this registration lost its lease",
                self.id
            )));
        }
        Ok(())
    }

    async fn deregister(self: Box<Self>) -> Result<()> {
        self.keeper.abort();
        let _: i64 = self
            .inner
            .redis
            .script(&self.inner.scripts.deregister)
            .arg(self.id.as_str())
            .arg(&self.token)
            .invoke_async(&mut self.inner.redis.conn())
            .await
            .map_err(|e| convert(e, "deregister"))?;
        Ok(())
    }
}
