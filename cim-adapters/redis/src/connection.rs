//! One [`Redis`] handle per store: the commands connection ([`Conn`]) and what opens dedicated
//! connections (pub/sub). On a single Redis the commands connection is a `ConnectionManager`,
//! which reconnects by itself after the server went away, so a Redis restart never needs a cim
//! restart. On Redis Cluster it is the client's cluster connection, which follows redirections
//! and failovers by itself; every command of a store goes to the one slot its hash tag names.
//! Every redis error becomes a [`cim_core::Error`] here, at the edge, with the operation named
//! and the URL's password never shown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cim_core::{Error, Result};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Script, ScriptInvocation, Value};

use crate::RedisConfig;

/// A connected Redis (or Redis Cluster) for one store: its commands connection, its key prefix
/// and the clients pub/sub connections are opened from.
#[derive(Clone)]
pub(crate) struct Redis {
    conn: Conn,
    /// Single Redis: its one client. Cluster: one client per configured node, tried in turn.
    clients: Arc<[redis::Client]>,
    /// The client a pub/sub connection tries first (cluster: moves on after each attempt).
    next_client: Arc<AtomicUsize>,
    prefix: String,
    config: RedisConfig,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Redis");
        if self.config.is_cluster() {
            debug.field("cluster_nodes", &self.config.cluster_nodes);
        } else {
            debug.field("url", &self.config.url);
        }
        debug.field("prefix", &self.prefix).finish()
    }
}

impl Redis {
    /// Connects to what `config` names, for the store `store` (`sess`, `meta`, `acct`, `msg`) of
    /// `namespace`. Fails with `Config` for a malformed URL, a namespace that cannot be a hash
    /// tag, or both `url` and `cluster_nodes` set, and with `Unavailable` when Redis cannot be
    /// reached.
    pub(crate) async fn connect(
        config: &RedisConfig,
        namespace: &str,
        store: &str,
    ) -> Result<Redis> {
        if config.is_cluster() {
            Redis::connect_cluster(config, namespace, store).await
        } else {
            Redis::connect_single(config, namespace, store).await
        }
    }

    async fn connect_single(config: &RedisConfig, namespace: &str, store: &str) -> Result<Redis> {
        let client = open_client(&config.url)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_with_config(client.clone(), manager_config)
            .await
            .map_err(|e| convert(e, "connect").with_context("url", &config.url))?;
        Ok(Redis {
            conn: Conn::Single(manager),
            clients: Arc::new([client]),
            next_client: Arc::new(AtomicUsize::new(0)),
            prefix: format!("{namespace}:{store}:"),
            config: config.clone(),
        })
    }

    async fn connect_cluster(config: &RedisConfig, namespace: &str, store: &str) -> Result<Redis> {
        if config.url_is_set() {
            return Err(Error::config(
                "a redis section sets both url and cluster_nodes: keep url for a single Redis, \
                 cluster_nodes for Redis Cluster",
            ));
        }
        if namespace.contains(['{', '}']) {
            return Err(Error::config(format!(
                "namespace {namespace:?} contains '{{' or '}}', which Redis Cluster reads as a \
                 hash tag; choose a namespace without braces"
            )));
        }
        let clients = config
            .cluster_nodes
            .iter()
            .map(open_client)
            .collect::<Result<Vec<_>>>()?;
        let infos = clients
            .iter()
            .map(|client| client.get_connection_info().clone());
        let cluster = redis::cluster::ClusterClientBuilder::new(infos)
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.response_timeout)
            .retries(3)
            .min_retry_wait(50)
            .max_retry_wait(500)
            .build()
            .map_err(|e| {
                convert(e, "connect").with_context("cluster_nodes", cluster_list(config))
            })?;
        let connection = cluster.get_async_connection().await.map_err(|e| {
            convert(e, "connect").with_context("cluster_nodes", cluster_list(config))
        })?;
        // Every key of the store shares the tag, so all of them (and every script touching
        // several) live in the tag's slot.
        let prefix = format!("{{{namespace}:{store}}}:");
        let route = Route::with_key(prefix.as_bytes(), SlotAddr::Master);
        Ok(Redis {
            conn: Conn::Cluster(connection, route),
            clients: clients.into(),
            next_client: Arc::new(AtomicUsize::new(0)),
            prefix,
            config: config.clone(),
        })
    }

    /// The commands connection (a cheap clone sharing one multiplexed connection).
    pub(crate) fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// The prefix of every key of this store: `{namespace}:{store}:` on a single Redis,
    /// `{{namespace}:{store}}:` (one hash tag) on Redis Cluster.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// An invocation of `script` for this store: its key prefix as `KEYS[1]`, which routes the
    /// script to the store's slot on Redis Cluster, and as `ARGV[1]`, which every script builds
    /// its key names from. Add the script's own arguments after it.
    pub(crate) fn script<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation.key(&self.prefix).arg(&self.prefix);
        invocation
    }

    /// The configuration this handle was opened with.
    pub(crate) fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// A dedicated pub/sub connection, within `connect_timeout`. On Redis Cluster a `PUBLISH`
    /// reaches every node, so any configured node will do: each call starts with the node after
    /// the one the previous call tried, so a watch that lost its node reconnects to another.
    pub(crate) async fn pubsub(&self) -> Result<redis::aio::PubSub> {
        let mut last = None;
        for _ in 0..self.clients.len() {
            let index = self.next_client.fetch_add(1, Ordering::Relaxed) % self.clients.len();
            let connect = self.clients[index].get_async_pubsub();
            match tokio::time::timeout(self.config.connect_timeout, connect).await {
                Ok(Ok(pubsub)) => return Ok(pubsub),
                Ok(Err(e)) => last = Some(convert(e, "watch")),
                Err(_) => {
                    last = Some(
                        Error::timeout("redis did not accept a pub/sub connection in time")
                            .with_context("backend", "redis"),
                    );
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::config("a redis section names no node")))
    }
}

/// A client for `url`, or a `Config` error naming the expected form.
fn open_client(url: &cim_core::SecretString) -> Result<redis::Client> {
    redis::Client::open(url.expose()).map_err(|e| {
        Error::config(format!(
            "redis url {url} is not valid: write redis://[user[:password]@]host[:port][/db]"
        ))
        .with_source(e)
    })
}

/// The configured cluster nodes, redacted, for error messages.
fn cluster_list(config: &RedisConfig) -> String {
    let nodes: Vec<String> = config.cluster_nodes.iter().map(|n| n.redacted()).collect();
    nodes.join(", ")
}

/// The commands connection of a store: a single Redis's connection manager, or a cluster
/// connection whose every command and pipeline goes to the primary of the store's slot.
#[derive(Clone)]
pub(crate) enum Conn {
    /// A single Redis.
    Single(ConnectionManager),
    /// Redis Cluster, and the route of the store's hash tag.
    Cluster(ClusterConnection, Route),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(manager) => manager.req_packed_command(cmd),
            Conn::Cluster(connection, route) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(*route));
                Box::pin(connection.route_command(cmd.clone(), routing))
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(manager) => manager.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(connection, route) => Box::pin(connection.route_pipeline(
                pipeline.clone(),
                offset,
                count,
                SingleNodeRoutingInfo::SpecificNode(*route),
            )),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(manager) => manager.get_db(),
            Conn::Cluster(..) => 0,
        }
    }
}

/// Converts a redis error from `operation` into a cim error of the matching kind.
pub(crate) fn convert(error: redis::RedisError, operation: &'static str) -> Error {
    let base = if error.is_timeout() {
        Error::timeout("redis did not answer in time (see response_timeout)")
    } else if is_failing_over(&error) {
        Error::unavailable("the redis cluster is moving or failing over the slot; retry")
    } else if error.is_io_error()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_unrecoverable_error()
    {
        Error::unavailable("cannot reach redis; check that it runs and that url is right")
    } else {
        Error::internal("redis rejected a command")
    };
    base.with_context("backend", "redis")
        .with_context("operation", operation)
        .with_source(error)
}

/// Whether `error` is one of the answers a Redis Cluster (or a primary with replicas) gives
/// while a slot moves or a replica takes over: retrying later succeeds.
fn is_failing_over(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    error.is_cluster_error()
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::ReadOnly
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::BusyLoading
                )
        )
}

/// Zero-padded decimal, so that lexical order in Redis is numeric order for every `u64`.
pub(crate) fn padded(id: u64) -> String {
    format!("{id:020}")
}

/// A duration in whole milliseconds for `PX`, at least 1.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
