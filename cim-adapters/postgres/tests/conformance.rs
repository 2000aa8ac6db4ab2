//! The PostgreSQL backend against the shared conformance suite, on a real server: one this
//! test starts (see `cim-backend-fixtures`), or the one `CIM_TEST_POSTGRES_URL` names. Each
//! case gets its own schema (the case's namespace), so cases never see each other's rows.
//!
//! Run part of it with a filter: `cargo test -p cim-adapter-postgres --test conformance --
//! postgres::message_store`.

use std::process::ExitCode;
use std::sync::Arc;

use cim_adapter_postgres::{
    PostgresConfig, PostgresMetaStore, PostgresSessionStore, PostgresStore,
};
use cim_core::{AccountStore, MessageStore, MetaStore, SessionStore};
use conformance_tests::{Suite, run_as_tests};

/// Connections per case's store: cases run a few at a time, each with its own pool, and the
/// concurrency cases need more than one connection to race at all.
const POOL_SIZE: u32 = 4;

fn config(url: &str) -> PostgresConfig {
    PostgresConfig {
        pool_size: POOL_SIZE,
        ..PostgresConfig::new(url)
    }
}

fn main() -> ExitCode {
    let Some(target) = cim_backend_fixtures::postgres::postgres() else {
        return ExitCode::SUCCESS;
    };
    let accounts_config = config(&target.address());
    let messages_config = accounts_config.clone();
    let sessions_config = accounts_config.clone();
    let meta_config = accounts_config.clone();
    let suite = Suite::new("postgres")
        .accounts(move |ctx| {
            let config = accounts_config.clone();
            async move {
                let store: Arc<dyn AccountStore> =
                    Arc::new(PostgresStore::connect(&config, &ctx.namespace).await?);
                Ok(store)
            }
        })
        .messages(move |ctx| {
            let config = messages_config.clone();
            async move {
                let store: Arc<dyn MessageStore> =
                    Arc::new(PostgresStore::connect(&config, &ctx.namespace).await?);
                Ok(store)
            }
        })
        .sessions(move |ctx| {
            let config = sessions_config.clone();
            async move {
                let store: Arc<dyn SessionStore> = Arc::new(
                    PostgresSessionStore::connect(&config, &ctx.namespace, ctx.ttl).await?,
                );
                Ok(store)
            }
        })
        .meta(move |ctx| {
            let config = meta_config.clone();
            async move {
                let store: Arc<dyn MetaStore> =
                    Arc::new(PostgresMetaStore::connect(&config, &ctx.namespace, ctx.ttl).await?);
                Ok(store)
            }
        });
    let code = run_as_tests([suite]);
    drop(target);
    code
}
