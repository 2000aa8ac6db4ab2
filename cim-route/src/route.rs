//! [`Route`]: the HTTP API with everything it owns.
//!
//! A route owns one background task, discovery, which must run for as long as the API serves
//! (logins are placed on the servers it sees). Tying the task to the `Route` value (it stops
//! when the route is dropped, and [`Route::serve`] drops the route when it returns) means an
//! embedder cannot leak it, and a test that drops its route leaves nothing running.

use std::future::Future;
use std::io;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use cim_core::token::TokenKey;
use cim_core::{NameRules, Result, ServerInfo, Stores};
use cim_pipeline::admission::{self, ConnectionLimit};
use cim_pipeline::{LimitsConfig, PeerPool, Pipeline};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api;
use crate::app_tokens::AppTokens;
use crate::config::RouteConfig;
use crate::discovery::{Discovery, Subscribers};
use crate::placement::Probes;
use crate::serve::{self, HttpLimits};
use crate::state::{AppState, SharedState};
use crate::throttle::Throttle;

/// cim's HTTP API over a set of backends.
#[derive(Debug)]
pub struct Route {
    state: SharedState,
    /// Held for its drop: dropping the route stops discovery.
    _discovery: Discovery,
}

impl Route {
    /// A route serving `stores` with its own message pipeline (a cluster's route, which holds
    /// no connections and relays every message to the servers): it signs and checks tokens
    /// with `key` (the deployment's shared secret), applies `limits` (the `[limits]` section)
    /// to messages sent over HTTP, and validates new user and group names with `names` (the
    /// `[names]` section).
    ///
    /// `Config` if the limits are invalid or do not fit in `max_frame_len`. It starts
    /// following the MetaStore at once, so it must be called within a Tokio runtime.
    pub fn new(
        config: RouteConfig,
        stores: Stores,
        key: TokenKey,
        names: NameRules,
        limits: LimitsConfig,
    ) -> Result<Route> {
        let peers = PeerPool::new(config.name.clone(), key.clone(), config.max_frame_len);
        let pipeline = Pipeline::new(stores, limits, &names, peers, None)?;
        Route::with_pipeline(config, pipeline, key, names)
    }

    /// A route whose HTTP sends go through `pipeline`, shared with a server in the same
    /// process (`cim standalone`): one rate limit per user for both, and deliveries straight
    /// to the server's connections.
    ///
    /// `Config` if a key file of `[route.app_tokens]` cannot be read or holds no usable key.
    pub fn with_pipeline(
        config: RouteConfig,
        pipeline: Pipeline,
        key: TokenKey,
        names: NameRules,
    ) -> Result<Route> {
        let app_tokens = AppTokens::load(&config.app_tokens)?;
        let stores: Stores = pipeline.stores().clone();
        let peers = pipeline.peers().clone();
        let (cluster_tx, cluster) = watch::channel(Arc::new(Vec::new()));
        let discovery = Discovery::spawn(
            Arc::clone(&stores.meta),
            Subscribers {
                balancer: Arc::clone(&stores.balancer),
                peers: peers.clone(),
                cluster: cluster_tx,
            },
            config.discovery_interval,
        );
        let state = Arc::new(AppState {
            throttle: Throttle::new(config.logins.clone()),
            app_tokens,
            probes: Probes::new(config.reachability_timeout, config.reachability_cache),
            config,
            names,
            stores,
            key,
            peers,
            pipeline,
            cluster,
        });
        Ok(Route {
            state,
            _discovery: discovery,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &RouteConfig {
        &self.state.config
    }

    /// The live servers as this route sees them, updated on every change: what logins are
    /// placed on and what `GET /api/v1/servers` answers.
    pub fn servers(&self) -> watch::Receiver<Arc<Vec<ServerInfo>>> {
        self.state.cluster.clone()
    }

    /// The API as an axum router, for serving it yourself or nesting it in a larger app. It
    /// places logins on the servers this `Route` discovers, so keep the `Route` alive while the
    /// router serves.
    pub fn router(&self) -> Router {
        let router = api::endpoints()
            .into_iter()
            .fold(Router::new(), |router, endpoint| {
                router.route(endpoint.path, endpoint.handler)
            });
        router
            .fallback(api::no_such_endpoint)
            .method_not_allowed_fallback(api::method_not_allowed)
            .layer(DefaultBodyLimit::max(self.state.config.max_request_len))
            .with_state(Arc::clone(&self.state))
    }

    /// Serves the API on `listener` until `shutdown` completes, then lets the requests in
    /// progress finish, stops discovery and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let config = &self.state.config;
        let limits = HttpLimits {
            header_timeout: config.header_timeout,
            body_timeout: config.body_timeout,
            request_timeout: config.request_timeout,
            connections: ConnectionLimit::new(
                config
                    .max_connections
                    .unwrap_or_else(|| admission::default_share(1)),
            ),
        };
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, max_connections = limits.connections.max(), "route listening");
        }
        let result = serve::serve(listener, self.router(), limits, shutdown).await;
        drop(self);
        tracing::info!("route stopped");
        result
    }
}
