//! # cim-adapter-redis
//!
//! Redis backends for cim, for deployments of several nodes that share one Redis (a single
//! instance, a primary with replicas, or a Redis Cluster: [`RedisConfig::cluster_nodes`]):
//!
//! | trait | backend name | module |
//! |---|---|---|
//! | [`SessionStore`](cim_core::SessionStore) | `redis` | [`sessions`] |
//! | [`MetaStore`](cim_core::MetaStore) | `redis` | [`meta`] |
//! | [`AccountStore`](cim_core::AccountStore) | `redis` | [`accounts`] |
//! | [`MessageStore`](cim_core::MessageStore) | `redis` | [`messages`] (no search, no retention) |
//!
//! Each store registers itself in the [`cim_core::registry`], so a config section picks it by
//! name (`[sessions] backend = "redis"`) with the keys of [`RedisConfig`]. Every key lives under
//! the section's namespace (`{namespace}:...`), so deployments and test runs can share a server.
//! On Redis Cluster each store's keys share one hash tag (`{namespace:store}:...`), so that
//! every script stays in one slot; the stores spread over the primaries, one store is not
//! sharded. Connection loss is handled by the client's connection manager: operations fail with
//! `Unavailable` or `Timeout` while Redis is away and work again when it is back.
//!
//! A binary that wants these backends must link this crate: call [`link`] once at start.

pub mod accounts;
mod config;
mod connection;
pub mod messages;
pub mod meta;
pub mod sessions;

pub use accounts::RedisAccountStore;
pub use config::RedisConfig;

pub use messages::RedisMessageStore;
pub use meta::RedisMetaStore;
pub use sessions::RedisSessionStore;

/// Keeps this crate, and so its registrations, in a binary that names no other item of it.
pub fn link() {}
