//! # cim-adapter-consul
//!
//! Consul backends for cim, for deployments that already run Consul: server discovery and
//! online sessions on Consul's KV store and sessions.
//!
//! | trait | backend name | module |
//! |---|---|---|
//! | [`MetaStore`](cim_core::MetaStore) | `consul` | [`meta`] |
//! | [`SessionStore`](cim_core::SessionStore) | `consul` | [`sessions`] |
//!
//! Each store registers itself in the [`cim_core::registry`], so a config section picks it by
//! name (`[meta] backend = "consul"`) with the keys of [`ConsulConfig`]. Every key lives under
//! `{prefix}/{namespace}/`, so deployments and test runs can share a cluster. Liveness is
//! Consul's own: each registration, and each server's set of online sessions, is held by a
//! Consul session with the section's TTL and behaviour `delete`, so a crashed node's keys are
//! deleted by Consul itself. The stores talk to an agent's HTTP API through [`client`], a small
//! async client of this crate (see its docs for why not a published crate): operations fail
//! with `Unavailable` or `Timeout` while the agent is away and work again when it is back.
//!
//! A binary that wants these backends must link this crate: call [`link`] once at start.

pub mod client;
mod config;
pub mod meta;
pub mod sessions;

pub use client::ConsulClient;
pub use config::ConsulConfig;
pub use meta::ConsulMetaStore;
pub use sessions::ConsulSessionStore;

/// Keeps this crate, and so its registrations, in a binary that names no other item of it.
pub fn link() {}
