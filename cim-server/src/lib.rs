//! # cim-server
//!
//! The connection server of cim. It holds client TCP connections, stores every message a client
//! sends before acknowledging it, and delivers it live: to a connection it holds, or to the
//! server holding the recipient over a persistent internal link. A recipient acknowledges what
//! it received; after any reconnect it gets everything it did not acknowledge, in order.
//!
//! | module | concept |
//! |---|---|
//! | [`config`] | the `[server]` section of `cim.toml` |
//! | [`server`] | [`Server::start`], [`RunningServer`]: the node and its tasks |
//! | `connection` | one client connection: login, sync, serve, close |
//! | `internal` | the internal port: relayed messages and kicks from peers |
//! | [`peer`] | [`PeerPool`]: outbound links to the other servers |
//! | [`dispatch`] | [`Dispatcher`]: fan-out of a stored message, shared with the route |
//! | [`local`] | [`LocalConnections`]: the connections this server holds |
//! | `scheduler` | scheduled messages, delivered when due |
//!
//! ```no_run
//! # async fn demo(stores: cim_core::Stores, key: cim_core::token::TokenKey) -> cim_core::Result<()> {
//! use cim_server::{Server, ServerConfig};
//!
//! let config = ServerConfig {
//!     advertised_host: Some("chat.example.com".into()),
//!     ..ServerConfig::default()
//! };
//! let id = cim_core::ServerId::new("node-1")?;
//! let server = Server::start(config, id, stores, key).await?;
//! // ... until SIGTERM:
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod config;
mod connection;
mod delivery;
pub mod dispatch;
mod internal;
pub mod local;
pub mod peer;
mod rate_limit;
mod scheduler;
pub mod server;
mod wire;

pub use config::{RateLimitConfig, ServerConfig};
pub use dispatch::Dispatcher;
pub use local::LocalConnections;
pub use peer::PeerPool;
pub use server::{RunningServer, Server};
