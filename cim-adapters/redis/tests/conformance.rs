//! The conformance suite against a real `redis-server`, started by the backend fixture (or the
//! one `CIM_TEST_REDIS_URL` names). Each case gets its own namespace, so cases share the server.

use std::process::ExitCode;
use std::sync::Arc;

use cim_adapter_redis::{
    RedisAccountStore, RedisConfig, RedisMessageStore, RedisMetaStore, RedisSessionStore,
};
use conformance_tests::Suite;

fn main() -> ExitCode {
    let Some(redis) = cim_backend_fixtures::redis::redis() else {
        return ExitCode::SUCCESS;
    };
    let url = redis.address();
    let sessions_url = url.clone();
    let meta_url = url.clone();
    let accounts_url = url.clone();
    let messages_url = url.clone();
    let code = Suite::new("redis")
        .messages(move |ctx| {
            let config = RedisConfig::new(messages_url.clone());
            async move {
                let store = RedisMessageStore::connect(&config, &ctx.namespace).await?;
                Ok(Arc::new(store) as Arc<dyn cim_core::MessageStore>)
            }
        })
        .accounts(move |ctx| {
            let config = RedisConfig::new(accounts_url.clone());
            async move {
                let store = RedisAccountStore::connect(&config, &ctx.namespace).await?;
                Ok(Arc::new(store) as Arc<dyn cim_core::AccountStore>)
            }
        })
        .meta(move |ctx| {
            let config = RedisConfig::new(meta_url.clone());
            async move {
                let store = RedisMetaStore::connect(&config, &ctx.namespace, ctx.ttl).await?;
                Ok(Arc::new(store) as Arc<dyn cim_core::MetaStore>)
            }
        })
        .sessions(move |ctx| {
            let config = RedisConfig::new(sessions_url.clone());
            async move {
                let store = RedisSessionStore::connect(&config, &ctx.namespace, ctx.ttl).await?;
                Ok(Arc::new(store) as Arc<dyn cim_core::SessionStore>)
            }
        })
        .run_as_tests();
    // The server lives until every case is done.
    drop(redis);
    code
}
