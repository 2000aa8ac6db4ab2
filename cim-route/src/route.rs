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
use cim_core::{NameRules, ServerInfo, Stores};
use cim_server::{Dispatcher, PeerPool};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api;
use crate::config::RouteConfig;
use crate::discovery::{Discovery, Subscribers};
use crate::state::{AppState, SharedState};

/// cim's HTTP API over a set of backends.
#[derive(Debug)]
pub struct Route {
    state: SharedState,
    /// Held for its drop: dropping the route stops discovery.
    _discovery: Discovery,
}

impl Route {
    /// A route serving `stores`: it signs and checks tokens with `key` (the deployment's shared
    /// secret) and validates new user and group names with `names` (the `[names]` section).
    ///
    /// It starts following the MetaStore at once, so it must be called within a Tokio runtime.
    pub fn new(config: RouteConfig, stores: Stores, key: TokenKey, names: NameRules) -> Route {
        let peers = PeerPool::new(config.name.clone(), key.clone(), config.max_frame_len);
        let dispatcher = Dispatcher::new(stores.clone(), peers.clone(), None);
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
            config,
            names,
            stores,
            key,
            peers,
            dispatcher,
            cluster,
        });
        Route {
            state,
            _discovery: discovery,
        }
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
            .layer(DefaultBodyLimit::max(self.state.config.max_body_len))
            .with_state(Arc::clone(&self.state))
    }

    /// Serves the API on `listener` until `shutdown` completes, then lets the requests in
    /// progress finish, stops discovery and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "route listening");
        }
        let result = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await;
        drop(self);
        tracing::info!("route stopped");
        result
    }
}
