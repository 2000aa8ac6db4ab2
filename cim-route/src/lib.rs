//! # cim-route
//!
//! cim's public HTTP API (JSON over HTTP, served with axum): accounts, login, logout, who is
//! online, user search, sending messages for integrations, history, search, groups, the live
//! cluster, health and an OpenAPI document (`GET /api/v1/openapi.json`).
//!
//! The route is stateless: everything it knows lives in the [`Stores`](cim_core::Stores), so any
//! number of routes can serve one cluster. Its one piece of local state is its view of the live
//! servers, which a background task keeps current from the MetaStore's watch and hands to the
//! load balancer and to the internal connections it opens to the servers. Logging in gives a
//! client a signed token and a server chosen by the balancer and checked reachable; from then on
//! the client talks to that server over TCP, and its messages never pass through the route (the
//! original cim made an HTTP hop through the route for every message).
//!
//! ```no_run
//! # async fn demo(stores: cim_core::Stores, key: cim_core::token::TokenKey) -> Result<(), Box<dyn std::error::Error>> {
//! use cim_route::{Route, RouteConfig};
//!
//! let config = RouteConfig::default();
//! let listener = tokio::net::TcpListener::bind(&config.listen).await?;
//! let limits = cim_pipeline::LimitsConfig::default();
//! let route = Route::new(config, stores, key, cim_core::NameRules::default(), limits)?;
//! // Serves until the sender is used or dropped (a binary waits for Ctrl-C / SIGTERM here).
//! let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! route.serve(listener, async { let _ = stopped.await; }).await?;
//! # Ok(()) }
//! ```

mod api;
mod app_tokens;
mod auth;
mod config;
mod discovery;
mod error;
mod extract;
mod openapi;
mod placement;
mod route;
mod serve;
mod state;
mod throttle;
mod views;

pub use app_tokens::MAX_GROUPS;
pub use config::{AppTokenConfig, LoginLimits, LoginPolicy, RouteConfig, SignupPolicy};
pub use route::Route;
