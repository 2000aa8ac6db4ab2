//! The conformance suite over Redis stores built from one [`RedisConfig`]: shared by the suite
//! against a single Redis and the one against Redis Cluster, so both run the same cases.

use std::sync::Arc;

use cim_adapter_redis::{
    RedisAccountStore, RedisConfig, RedisMessageStore, RedisMetaStore, RedisSessionStore,
};
use conformance_tests::Suite;

/// The suite `name` with every Redis store, each connected with `config`.
pub fn redis_suite(name: &str, config: RedisConfig) -> Suite {
    let sessions = config.clone();
    let meta = config.clone();
    let accounts = config.clone();
    let messages = config;
    Suite::new(name)
        .messages(move |ctx| {
            let config = messages.clone();
            async move {
                let store = RedisMessageStore::connect(&config, &ctx.namespace).await?;
                Ok(Arc::new(store) as Arc<dyn cim_core::MessageStore>)
            }
        })
        .accounts(move |ctx| {
            let config = accounts.clone();
            async move {
                let store = RedisAccountStore::connect(&config, &ctx.namespace).await?;
                Ok(Arc::new(store) as Arc<dyn cim_core::AccountStore>)
            }
        })
        .meta(move |ctx| {
            let config = meta.clone();
            async move {
                let store = RedisMetaStore::connect(&config, &ctx.namespace, ctx.ttl).await?;
                Ok(Arc::new(store) as Arc<dyn cim_core::MetaStore>)
            }
        })
        .sessions(move |ctx| {
            let config = sessions.clone();
            async move {
                let store = RedisSessionStore::connect(&config, &ctx.namespace, ctx.ttl).await?;
                Ok(Arc::new(store) as Arc<dyn cim_core::SessionStore>)
            }
        })
}
