//! The conformance suite against a real Redis Cluster of three primaries with a replica each,
//! started by the backend fixture on loopback (or the one `CIM_TEST_REDIS_CLUSTER_NODES`
//! names). Every store's keys carry one hash tag per store and namespace, so the cases spread
//! over the cluster's primaries.

mod support;

use std::process::ExitCode;

use cim_adapter_redis::RedisConfig;

fn main() -> ExitCode {
    let Some(cluster) = cim_backend_fixtures::redis_cluster::redis_cluster() else {
        return ExitCode::SUCCESS;
    };
    let nodes: Vec<String> = cluster.address().split(',').map(str::to_string).collect();
    let code = support::redis_suite("redis-cluster", RedisConfig::cluster(nodes)).run_as_tests();
    // The cluster lives until every case is done.
    drop(cluster);
    code
}
