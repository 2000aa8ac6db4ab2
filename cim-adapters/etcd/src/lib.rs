//! # cim-adapter-etcd
//!
//! etcd backends for cim, for deployments of several nodes that share one etcd cluster:
//!
//! | trait | backend name | module |
//! |---|---|---|
//! | [`MetaStore`](cim_core::MetaStore) | `etcd` | [`meta`] |
//! | [`SessionStore`](cim_core::SessionStore) | `etcd` | [`sessions`] |
//!
//! Both rest on etcd's leases: a registered server's key, and every session of a server, is
//! attached to a lease that is renewed while its owner lives, so etcd itself deletes what a
//! crashed node leaves behind. Consistency comes from etcd's transactions (create-if-absent,
//! compare-and-swap on a key's revision) and watches from its revision history.
//!
//! Each store registers itself in the [`cim_core::registry`], so a config section picks it by
//! name (`[meta] backend = "etcd"`) with the keys of [`EtcdConfig`]. Every key lives under
//! `{prefix}/{namespace}/`, so deployments and test runs can share a cluster. Connection loss is
//! handled by the gRPC channel, which reconnects by itself: operations fail with `Unavailable` or
//! `Timeout` while etcd is away and work again when it is back; watchers resync.
//!
//! A binary that wants these backends must link this crate: call [`link`] once at start.

mod config;
mod connection;
mod lease;
pub mod meta;
pub mod sessions;

pub use config::EtcdConfig;
pub use meta::EtcdMetaStore;
pub use sessions::EtcdSessionStore;

/// Keeps this crate, and so its registrations, in a binary that names no other item of it.
pub fn link() {}
