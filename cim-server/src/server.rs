//! [`Server`] and [`RunningServer`]: starting a node, and stopping it cleanly or not at all.
//!
//! A running server is a handful of tasks around shared state: two accept loops (clients, and
//! the internal port), a MetaStore watcher that keeps the [`PeerPool`] pointed at the live
//! cluster, a session refresher that keeps this server's users online in the SessionStore, a
//! load reporter, and the scheduler. [`RunningServer`] owns them all in one [`JoinSet`], and the
//! accept loops own their connection tasks the same way, so nothing outlives the server.
//!
//! There are two ways to stop, on purpose. [`RunningServer::shutdown`] is the polite one (the
//! SIGTERM path): deregister so that routes stop sending users here, stop accepting, tell every
//! client to reconnect elsewhere, unbind their sessions, wait for the tasks. Dropping the
//! [`RunningServer`] instead aborts every task at once, exactly like a crash: the registration
//! lease and the sessions then expire on their own, which is what failover tests need to see.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cim_core::token::TokenKey;
use cim_core::{Error, ErrorKind, NameRules, Registration, Result, ServerId, ServerInfo, Stores};
use cim_pipeline::admission::{self, ConnectionLimit};
use cim_pipeline::{LimitsConfig, LocalConnections, PeerPool, Pipeline};
use cim_proto::KickReason;
use futures::FutureExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::{cluster, connection, internal, scheduler, sessions};

/// How long to wait before registering again while an old registration of this id lives.
const REGISTER_RETRY: Duration = Duration::from_millis(250);
/// How long to pause accepting after the listener failed (out of file descriptors, say).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What every task of one server shares.
pub(crate) struct Shared {
    pub(crate) id: ServerId,
    pub(crate) config: ServerConfig,
    pub(crate) stores: Stores,
    pub(crate) key: TokenKey,
    pub(crate) local: Arc<LocalConnections>,
    pub(crate) pool: PeerPool,
    /// The message pipeline every send goes through.
    pub(crate) pipeline: Pipeline,
    /// Cancelled when a graceful shutdown starts.
    pub(crate) shutdown: CancellationToken,
}

/// Starts cim servers; see [`Server::start`] and [`Server::builder`].
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Starts a server with id `id`, the `[server]` settings `config` and the default
    /// `[limits]` and `[names]`: the same as [`Server::builder`] with only
    /// [`ServerBuilder::config`] set.
    pub async fn start(
        config: ServerConfig,
        id: ServerId,
        stores: Stores,
        key: TokenKey,
    ) -> Result<RunningServer> {
        Server::builder(id, stores, key)
            .config(config)
            .start()
            .await
    }

    /// A server with id `id` over `stores`, verifying tokens (and signing internal links) with
    /// `key`; every setting at its default until set on the builder.
    pub fn builder(id: ServerId, stores: Stores, key: TokenKey) -> ServerBuilder {
        ServerBuilder {
            id,
            stores,
            key,
            config: ServerConfig::default(),
            limits: LimitsConfig::default(),
            names: NameRules::default(),
        }
    }
}

/// The settings of a server to start; see [`Server::builder`].
#[derive(Debug)]
pub struct ServerBuilder {
    id: ServerId,
    stores: Stores,
    key: TokenKey,
    config: ServerConfig,
    limits: LimitsConfig,
    names: NameRules,
}

impl ServerBuilder {
    /// The `[server]` section.
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// The `[limits]` section: what a user may send (shared with the route's HTTP sends when
    /// both run in one process).
    pub fn limits(mut self, limits: LimitsConfig) -> Self {
        self.limits = limits;
        self
    }

    /// The `[names]` section: the longest name decides how much room a frame needs.
    pub fn names(mut self, names: NameRules) -> Self {
        self.names = names;
        self
    }

    /// Binds the client and internal listeners, registers in the MetaStore (waiting up to
    /// `register_wait` for a crashed predecessor's lease to expire), and starts serving.
    ///
    /// Fails with `Config` for an invalid configuration (including an advertised host that
    /// cannot be determined, or a frame limit too small for the largest message `[limits]`
    /// allows), `Unavailable` if a listener cannot be bound or the MetaStore refuses the
    /// registration.
    pub async fn start(self) -> Result<RunningServer> {
        let ServerBuilder {
            id,
            stores,
            key,
            config,
            limits,
            names,
        } = self;
        config.validate()?;
        limits.check_frame_room(config.max_frame_len, &names, "[server] max_frame_len")?;
        let clients = bind(&config.listen, config.backlog, "listen").await?;
        let internal = bind(&config.internal_listen, config.backlog, "internal_listen").await?;
        let client_addr = local_addr(&clients)?;
        let internal_addr = local_addr(&internal)?;
        let host = config.resolve_advertised_host(client_addr)?;
        let info = ServerInfo {
            incarnation: rand::random(),
            ..ServerInfo::new(id.clone(), host, client_addr.port(), internal_addr.port())
        };
        let registration = register(&stores, info.clone(), config.register_wait).await?;

        let local = Arc::new(LocalConnections::new(id.clone()));
        let pool = PeerPool::new(id.to_string(), key.clone(), config.max_frame_len);
        match stores.meta.list().await {
            Ok(servers) => pool.set_servers(&servers),
            Err(e) => tracing::warn!(error = %e, "cannot list the cluster yet; the watcher will"),
        }
        let pipeline = Pipeline::new(
            stores.clone(),
            limits,
            &names,
            pool.clone(),
            Some(Arc::clone(&local)),
        )?;
        let shared = Arc::new(Shared {
            id,
            config,
            stores,
            key,
            local,
            pool,
            pipeline,
            shutdown: CancellationToken::new(),
        });
        let registration = Arc::new(Mutex::new(Some(registration)));
        let admission = ConnectionLimit::new(
            shared
                .config
                .max_connections
                .unwrap_or_else(|| admission::default_share(3)),
        );

        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(
            Arc::clone(&shared),
            clients,
            admission.clone(),
            // The peer's address is read again at login, for the log: kept here, it would
            // take room in every connection's future.
            |shared, socket, _peer| connection::serve(shared, socket),
        ));
        tasks.spawn(accept_loop(
            Arc::clone(&shared),
            internal,
            admission.clone(),
            internal::serve,
        ));
        tasks.spawn(cluster::watch(Arc::clone(&shared)));
        tasks.spawn(sessions::refresh(Arc::clone(&shared)));
        tasks.spawn(report_load(
            Arc::clone(&shared),
            Arc::clone(&registration),
            info,
        ));
        tasks.spawn(scheduler::run(Arc::clone(&shared)));
        tracing::info!(server = %shared.id, %client_addr, %internal_addr, max_connections = admission.max(), "cim server started");

        Ok(RunningServer {
            shared,
            registration,
            tasks,
            client_addr,
            internal_addr,
        })
    }
}

/// A started server. Stop it with [`RunningServer::shutdown`]; dropping it aborts every task
/// at once, as a crash would.
pub struct RunningServer {
    shared: Arc<Shared>,
    registration: Arc<Mutex<Option<Registration>>>,
    tasks: JoinSet<()>,
    client_addr: SocketAddr,
    internal_addr: SocketAddr,
}

impl RunningServer {
    /// The address the client listener is bound to (with the real port when configured as 0).
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The address the internal listener is bound to.
    pub fn internal_addr(&self) -> SocketAddr {
        self.internal_addr
    }

    /// The server's id.
    pub fn id(&self) -> &ServerId {
        &self.shared.id
    }

    /// How many clients are connected and logged in.
    pub fn connections(&self) -> usize {
        self.shared.local.len()
    }

    /// The servers this one currently knows through the MetaStore (itself included): those it
    /// can relay messages to.
    pub fn peers(&self) -> Vec<ServerId> {
        self.shared.pool.servers()
    }

    /// The server's message pipeline, for another entry point in the same process (the
    /// route of `cim standalone`, an embedding service): its sends then share this server's
    /// limits and reach its connections directly.
    pub fn pipeline(&self) -> &Pipeline {
        &self.shared.pipeline
    }

    /// Stops the server: deregisters from the MetaStore, stops accepting, sends every client
    /// `Kicked { SERVER_SHUTDOWN }` and unbinds its session, then waits for every task (cutting
    /// the stragglers after `shutdown_grace`). Returns the first error met on the way; the
    /// server is stopped either way.
    pub async fn shutdown(mut self) -> Result<()> {
        let mut first_error = None;
        let registration = self.registration.lock().await.take();
        if let Some(registration) = registration
            && let Err(e) = registration.deregister().await
        {
            tracing::warn!(error = %e, "cannot deregister; the lease will expire");
            first_error.get_or_insert(e);
        }
        self.shared.shutdown.cancel();
        // Connections hear it in their mailbox (one that registers from now on sees the
        // cancelled token instead).
        self.shared.local.kick_all(KickReason::ServerShutdown);
        let grace = self.shared.config.shutdown_grace + Duration::from_secs(1);
        let tasks = &mut self.tasks;
        if timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!("tasks did not stop within the shutdown grace; aborting them");
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        if let Err(e) = self
            .shared
            .stores
            .sessions
            .remove_server(&self.shared.id)
            .await
        {
            tracing::warn!(error = %e, "cannot remove this server's sessions; they will expire");
            first_error.get_or_insert(e);
        }
        tracing::info!(server = %self.shared.id, "cim server stopped");
        first_error.map_or(Ok(()), Err)
    }
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("id", &self.shared.id)
            .field("client_addr", &self.client_addr)
            .field("internal_addr", &self.internal_addr)
            .finish_non_exhaustive()
    }
}

/// A listener on `address` with the configured backlog; `key` names the config key in errors.
async fn bind(address: &str, backlog: u32, key: &str) -> Result<TcpListener> {
    let addr = tokio::net::lookup_host(address)
        .await
        .map_err(|e| {
            Error::config(format!(
                "[server] {key} = {address:?} is not a host:port address"
            ))
            .with_source(e)
        })?
        .next()
        .ok_or_else(|| {
            Error::config(format!("[server] {key} = {address:?} resolves to nothing"))
        })?;
    let cannot = |e: std::io::Error| {
        Error::unavailable(format!("cannot listen on {addr} ([server] {key})")).with_source(e)
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(cannot)?;
    socket.set_reuseaddr(true).map_err(cannot)?;
    socket.bind(addr).map_err(cannot)?;
    socket.listen(backlog).map_err(cannot)
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr> {
    listener
        .local_addr()
        .map_err(|e| Error::internal("a bound listener has no address").with_source(e))
}

/// Registers `info`, retrying while an earlier registration of the same id is alive.
async fn register(stores: &Stores, info: ServerInfo, wait: Duration) -> Result<Registration> {
    let deadline = Instant::now() + wait;
    loop {
        match stores.meta.register(info.clone()).await {
            Ok(registration) => return Ok(registration),
            Err(e) if e.kind() == ErrorKind::AlreadyExists && Instant::now() < deadline => {
                tracing::info!(server = %info.id, "an earlier registration of this id is still alive; waiting for it to expire");
                sleep(REGISTER_RETRY).await;
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(Error::unavailable(format!(
                    "server id {} is registered by another live process; give this server \
                     another id, or stop the other one (waited {wait:?})",
                    info.id
                ))
                .with_source(e));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Accepts connections until shutdown and hands each to `serve` in a task it owns, as long as
/// `admission` lets it in (a connection over the limit is closed at once); after shutdown,
/// waits for those tasks (which see the shutdown themselves) for the grace period.
async fn accept_loop<F, Fut>(
    shared: Arc<Shared>,
    listener: TcpListener,
    admission: ConnectionLimit,
    serve: F,
) where
    F: Fn(Arc<Shared>, TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    let mut refused: u64 = 0;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let Some(admitted) = admission.try_admit() else {
                        refused += 1;
                        if refused.is_power_of_two() {
                            tracing::warn!(%peer, refused, max = admission.max(), "connection limit reached; closing new connections");
                        }
                        continue;
                    };
                    let serving = serve(Arc::clone(&shared), socket, peer);
                    // A combinator, not an `async` block: a block that awaits the future it
                    // captured holds it twice, doubling every connection's task.
                    let serving = serving.map(move |()| drop(admitted));
                    connections.spawn(serving);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = timeout(shared.config.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
}

/// Publishes the number of connected clients in the registration every `load_report`, when
/// it changed.
async fn report_load(
    shared: Arc<Shared>,
    registration: Arc<Mutex<Option<Registration>>>,
    mut info: ServerInfo,
) {
    let mut tick = tokio::time::interval(shared.config.load_report);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {
                let load = u64::try_from(shared.local.len()).unwrap_or(u64::MAX);
                if load == info.load {
                    continue;
                }
                let update = ServerInfo { load, ..info.clone() };
                let registration = registration.lock().await;
                let Some(registration) = registration.as_ref() else { return };
                match registration.update(update).await {
                    Ok(()) => info.load = load,
                    Err(e) => tracing::warn!(error = %e, "cannot report this server's load"),
                }
            }
        }
    }
}
