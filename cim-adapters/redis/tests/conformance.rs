//! The conformance suite against a real `redis-server`, started by the backend fixture (or the
//! one `CIM_TEST_REDIS_URL` names). Each case gets its own namespace, so cases share the server.

mod support;

use std::process::ExitCode;

use cim_adapter_redis::RedisConfig;

fn main() -> ExitCode {
    let Some(redis) = cim_backend_fixtures::redis::redis() else {
        return ExitCode::SUCCESS;
    };
    let code = support::redis_suite("redis", RedisConfig::new(redis.address())).run_as_tests();
    // The server lives until every case is done.
    drop(redis);
    code
}
