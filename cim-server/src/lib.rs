//! # cim-server
//!
//! The connection server of cim. It holds client TCP connections, stores every message a client
//! sends before acknowledging it, and delivers it live: to a connection it holds, or to the
//! server holding the recipient over a persistent internal link. A recipient acknowledges what
//! it received; after any reconnect it gets everything it did not acknowledge, in order.
//!
//! Every message a client sends goes through the one message pipeline (`cim-pipeline`), which
//! the route's HTTP send API and the scheduler use too; this crate is the transport around it.
//!
//! | module | concept |
//! |---|---|
//! | [`config`] | the `[server]` section of `cim.toml` |
//! | [`server`] | [`Server::start`], [`ServerBuilder`], [`RunningServer`]: the node and its tasks |
//! | `connection` | one client connection: login, sync, serve, close |
//! | `internal` | the internal port: relayed messages and kicks from peers |
//! | `scheduler` | scheduled messages, released into the pipeline when due |
//! | `sessions` | this server's sessions kept alive in the SessionStore, and mended when it lost them |
//! | `wire` | the client codec, error and kick frames, error kinds as wire codes |
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

mod cluster;
pub mod config;
mod connection;
mod internal;
mod scheduler;
pub mod server;
mod sessions;
mod wire;

pub use config::ServerConfig;
pub use server::{RunningServer, Server, ServerBuilder};
