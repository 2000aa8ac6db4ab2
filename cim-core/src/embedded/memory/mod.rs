//! Every trait in process memory: the reference implementations.
//!
//! Each store keeps its whole state behind one lock, so every operation is trivially atomic and
//! the code reads as the plainest correct reading of its trait's contract. That makes these
//! stores the yardstick the conformance suite is checked against, and the test double for
//! everything built on cim-core. Nothing survives the process: use them for tests and for
//! single-node experiments, never where data must outlive a restart.

mod accounts;
mod messages;
mod meta;
mod sessions;

pub use accounts::MemoryAccountStore;
pub use messages::MemoryMessageStore;
pub use meta::MemoryMetaStore;
pub use sessions::MemorySessionStore;
