//! The conformance suite against Consul: a real agent when one is reachable
//! (`CIM_TEST_CONSUL_HTTP_ADDR`, or a `consul` binary on `PATH`), else cim's Consul HTTP API
//! stand-in, which the fixture announces on stderr. Each case gets its own namespace, so cases
//! share the agent; sessions use a one-second TTL (the fixture lowers `session_ttl_min`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cim_adapter_consul::{ConsulConfig, ConsulMetaStore, ConsulSessionStore};
use conformance_tests::Suite;

const TTL: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let Some(consul) = cim_backend_fixtures::consul::consul() else {
        return ExitCode::SUCCESS;
    };
    let meta_address = consul.address();
    let sessions_address = consul.address();
    let code = Suite::new("consul")
        .ttl(TTL)
        .meta(move |ctx| {
            let config = ConsulConfig::new(meta_address.clone());
            async move {
                let store = ConsulMetaStore::connect(&config, &ctx.namespace, ctx.ttl).await?;
                Ok(Arc::new(store) as Arc<dyn cim_core::MetaStore>)
            }
        })
        .sessions(move |ctx| {
            let config = ConsulConfig::new(sessions_address.clone());
            async move {
                let store = ConsulSessionStore::connect(&config, &ctx.namespace, ctx.ttl).await?;
                Ok(Arc::new(store) as Arc<dyn cim_core::SessionStore>)
            }
        })
        .run_as_tests();
    // The agent (or stand-in) lives until every case is done.
    drop(consul);
    code
}
