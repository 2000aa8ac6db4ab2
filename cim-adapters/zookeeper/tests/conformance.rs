//! The conformance suite against a real ZooKeeper, started by the backend fixture (or the one
//! `CIM_TEST_ZOOKEEPER` names). One server serves every case: each case gets its own namespace,
//! so its nodes live under their own `/cim/{namespace}`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cim_adapter_zookeeper::{ZooKeeperConfig, ZooKeeperMetaStore, ZooKeeperSessionStore};
use conformance_tests::Suite;

/// The TTL, and so the ZooKeeper session timeout, of every store: short so that expiry cases
/// run in seconds, long enough that a loaded machine does not lose sessions by accident.
const TTL: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let Some(zookeeper) = cim_backend_fixtures::zookeeper::zookeeper() else {
        return ExitCode::SUCCESS;
    };
    let meta_connect = zookeeper.address();
    let sessions_connect = zookeeper.address();
    let code = Suite::new("zookeeper")
        .ttl(TTL)
        .meta(move |ctx| {
            let config = ZooKeeperConfig::new(meta_connect.clone());
            async move {
                let store = ZooKeeperMetaStore::connect(&config, &ctx.namespace, ctx.ttl).await?;
                Ok(Arc::new(store) as Arc<dyn cim_core::MetaStore>)
            }
        })
        .sessions(move |ctx| {
            let config = ZooKeeperConfig::new(sessions_connect.clone());
            async move {
                let store =
                    ZooKeeperSessionStore::connect(&config, &ctx.namespace, ctx.ttl).await?;
                Ok(Arc::new(store) as Arc<dyn cim_core::SessionStore>)
            }
        })
        .run_as_tests();
    // The server lives until every case is done.
    drop(zookeeper);
    code
}
