//! The conformance suite against a real etcd, started by the backend fixture (or the cluster
//! `CIM_TEST_ETCD_ENDPOINTS` names). Each case gets its own namespace, so cases share the server.
//!
//! The suite's TTL is 2 s: etcd's leases have whole seconds, and its minimum TTL is 1.5 times
//! the election timeout (1 s by default), rounded up.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cim_adapter_etcd::{EtcdConfig, EtcdMetaStore, EtcdSessionStore};
use conformance_tests::Suite;

fn main() -> ExitCode {
    let Some(etcd) = cim_backend_fixtures::etcd::etcd() else {
        return ExitCode::SUCCESS;
    };
    let config = EtcdConfig::new(etcd.endpoints());
    let meta_config = config.clone();
    let sessions_config = config;
    let code = Suite::new("etcd")
        .ttl(Duration::from_secs(2))
        .meta(move |ctx| {
            let config = meta_config.clone();
            async move {
                let store = EtcdMetaStore::connect(&config, &ctx.namespace, ctx.ttl).await?;
                Ok(Arc::new(store) as Arc<dyn cim_core::MetaStore>)
            }
        })
        .sessions(move |ctx| {
            let config = sessions_config.clone();
            async move {
                let store = EtcdSessionStore::connect(&config, &ctx.namespace, ctx.ttl).await?;
                Ok(Arc::new(store) as Arc<dyn cim_core::SessionStore>)
            }
        })
        .run_as_tests();
    // The server lives until every case is done.
    drop(etcd);
    code
}
