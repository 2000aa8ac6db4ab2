//! # cim-core
//!
//! The heart of cim, a distributed instant-messaging framework: the domain types, the one error
//! type, the configuration, and the five traits that decouple everything else from backends.
//!
//! | trait | what it answers | contract |
//! |---|---|---|
//! | [`MetaStore`] | which servers are alive, and where | [`meta_store`] |
//! | [`SessionStore`] | who is online, on which server | [`session_store`] |
//! | [`AccountStore`] | users, credentials, groups | [`account_store`] |
//! | [`LoadBalancer`] | which server a user gets | [`load_balancer`] |
//! | [`MessageStore`] | durable messages, offline inbox, history | [`message_store`] |
//!
//! Each trait's doc comment is its contract, and the `conformance-tests` crate is that contract
//! in executable form: every backend, ours or yours, must pass it.
//!
//! Backends register themselves by name in the [`registry`], and [`CoreConfig`] picks one per
//! trait; [`Stores::from_config`] builds them all. Embedded backends ship here, so cim runs with
//! no external service: [`embedded::memory`] implements every trait, [`embedded::sqlite`] keeps
//! accounts and messages in a file. The built-in balancing strategies are in [`balancer`].
//!
//! ```no_run
//! # async fn demo() -> cim_core::Result<()> {
//! use cim_core::{CoreConfig, Stores};
//!
//! let config = CoreConfig::from_toml(r#"
//!     [meta]
//!     backend = "memory"
//!     [messages]
//!     backend = "memory"
//! "#)?;
//! let stores = Stores::from_config(&config).await?;
//! let servers = stores.meta.list().await?;
//! # let _ = servers; Ok(()) }
//! ```

pub mod account_store;
pub mod balancer;
pub mod codec;
pub mod config;
pub mod embedded;
mod error;
pub mod load_balancer;
pub mod message_store;
pub mod meta_store;
mod model;
pub mod paging;
pub mod registry;
mod secret;
pub mod session_store;
mod stores;
pub mod token;

pub use account_store::{AccountCapabilities, AccountStore};
pub use config::{BackendSection, BalancerSection, CoreConfig};
pub use error::{Error, ErrorKind, Result, ensure_supported};
pub use load_balancer::{BalancerCapabilities, LoadBalancer};
pub use message_store::{MessageCapabilities, MessageStore};
pub use meta_store::{Lease, MetaCapabilities, MetaEvent, MetaStore, MetaWatch, Registration};
pub use model::*;
pub use secret::SecretString;
pub use session_store::{SessionCapabilities, SessionStore};
pub use stores::Stores;
