//! Embedded backends: cim with no external service.
//!
//! - [`memory`]: every trait, in process memory. The reference implementation: the simplest
//!   correct reading of each contract, and the test double for everything above cim-core.
//! - [`sqlite`]: accounts and messages in a SQLite file under the data directory, so a single
//!   node keeps them across restarts.

pub mod memory;
pub mod sqlite;
