//! # conformance-tests
//!
//! The behaviour suite every cim backend must pass: the executable form of the contracts written
//! on the traits of `cim-core`. Our own backends run it, and so can yours:
//!
//! ```no_run
//! // tests/conformance.rs of an adapter crate, with `harness = false` in Cargo.toml
//! use std::sync::Arc;
//! use conformance_tests::Suite;
//!
//! fn main() -> std::process::ExitCode {
//!     Suite::new("memory")
//!         .meta(|ctx| async move {
//!             let store: Arc<dyn cim_core::MetaStore> =
//!                 Arc::new(cim_core::embedded::memory::MemoryMetaStore::new(ctx.ttl));
//!             Ok(store)
//!         })
//!         .run_as_tests()
//! }
//! ```
//!
//! Each case is a public async function in the module of its trait ([`meta_store`],
//! [`session_store`], [`account_store`], [`message_store`], [`load_balancer`]), taking a
//! [`Harness`] that builds fresh, isolated stores. The [`Suite`] registers a case only when the
//! backend's declared capabilities claim what the case needs, so what is not claimed is reported
//! as such and what is claimed but broken fails. Results are checked only through the traits.

pub mod account_store;
mod case;
pub mod load_balancer;
pub mod message_store;
pub mod meta_store;
mod report;
mod runner;
pub mod session_store;
mod suite;
pub mod support;

pub use case::{Case, Harness, Subject, boxed};
pub use report::{CaseResult, Outcome, Report};
pub use runner::run_as_tests;
pub use suite::{CaseContext, Maker, Suite};
