//! cim-core's embedded backends against the shared conformance suite.
//!
//! `memory` implements every trait and is the reference; `sqlite` implements accounts and
//! messages. Every built-in balancing strategy runs the balancer cases. Run one part with a
//! filter: `cargo test -p cim-core --test conformance -- sqlite::message_store`.

use std::process::ExitCode;
use std::sync::Arc;

use cim_core::balancer::{ConsistentHash, LeastLoaded, Random, RoundRobin};
use cim_core::embedded::memory::{
    MemoryAccountStore, MemoryMessageStore, MemoryMetaStore, MemorySessionStore,
};
use cim_core::embedded::sqlite::SqliteStore;
use cim_core::{AccountStore, LoadBalancer, MessageStore, MetaStore, SessionStore};
use conformance_tests::{Suite, run_as_tests};

fn memory_suite() -> Suite {
    Suite::new("memory")
        .meta(|ctx| async move {
            let store: Arc<dyn MetaStore> = Arc::new(MemoryMetaStore::new(ctx.ttl));
            Ok(store)
        })
        .sessions(|ctx| async move {
            let store: Arc<dyn SessionStore> = Arc::new(MemorySessionStore::new(ctx.ttl));
            Ok(store)
        })
        .accounts(|_| async {
            let store: Arc<dyn AccountStore> = Arc::new(MemoryAccountStore::new());
            Ok(store)
        })
        .messages(|_| async {
            let store: Arc<dyn MessageStore> = Arc::new(MemoryMessageStore::new());
            Ok(store)
        })
        .balancer("round_robin", |_| async {
            let strategy: Arc<dyn LoadBalancer> = Arc::new(RoundRobin::new());
            Ok(strategy)
        })
        .balancer("random", |_| async {
            let strategy: Arc<dyn LoadBalancer> = Arc::new(Random::new());
            Ok(strategy)
        })
        .balancer("least_loaded", |_| async {
            let strategy: Arc<dyn LoadBalancer> = Arc::new(LeastLoaded::new());
            Ok(strategy)
        })
        .balancer("consistent_hash", |_| async {
            let strategy: Arc<dyn LoadBalancer> =
                Arc::new(ConsistentHash::new(ConsistentHash::DEFAULT_VIRTUAL_NODES)?);
            Ok(strategy)
        })
}

fn sqlite_suite(dir: &std::path::Path) -> Suite {
    let accounts_dir = dir.to_path_buf();
    let messages_dir = dir.to_path_buf();
    Suite::new("sqlite")
        .accounts(move |ctx| {
            let path = accounts_dir.join(format!("{}.db", ctx.namespace));
            async move {
                let store: Arc<dyn AccountStore> = Arc::new(SqliteStore::open(&path).await?);
                Ok(store)
            }
        })
        .messages(move |ctx| {
            let path = messages_dir.join(format!("{}.db", ctx.namespace));
            async move {
                let store: Arc<dyn MessageStore> = Arc::new(SqliteStore::open(&path).await?);
                Ok(store)
            }
        })
}

fn main() -> ExitCode {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("cannot create a temporary directory for the sqlite suite: {e}");
            return ExitCode::FAILURE;
        }
    };
    run_as_tests([memory_suite(), sqlite_suite(dir.path())])
}
