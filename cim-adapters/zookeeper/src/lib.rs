//! # cim-adapter-zookeeper
//!
//! ZooKeeper backends for cim, for deployments of several nodes that share a ZooKeeper ensemble
//! (3.6 or later):
//!
//! | trait | backend name | module |
//! |---|---|---|
//! | [`MetaStore`](cim_core::MetaStore) | `zookeeper` | [`meta`] |
//! | [`SessionStore`](cim_core::SessionStore) | `zookeeper` | [`sessions`] |
//!
//! Both live on ZooKeeper's own liveness mechanism: a registration, and a user's session, is an
//! ephemeral node owned by a ZooKeeper session whose timeout is the section's `ttl`, so when a
//! cim node dies ZooKeeper deletes what it held by itself. Each store registers itself in the
//! [`cim_core::registry`], so a config section picks it by name (`[meta] backend = "zookeeper"`)
//! with the keys of [`ZooKeeperConfig`]. Everything lives under `{root}/{namespace}`, so
//! deployments and test runs can share an ensemble. A lost connection makes operations fail
//! with `Unavailable` or `Timeout` until it is back; an expired session is replaced by a new one,
//! and what the old one held (live registrations) is put back.
//!
//! A binary that wants these backends must link this crate: call [`link`] once at start.

mod config;
mod connection;
mod journal;
pub mod meta;
pub mod sessions;
mod watch;

pub use config::ZooKeeperConfig;
pub use meta::ZooKeeperMetaStore;
pub use sessions::ZooKeeperSessionStore;

/// Keeps this crate, and so its registrations, in a binary that names no other item of it.
pub fn link() {}
