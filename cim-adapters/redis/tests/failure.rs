//! Redis going away and coming back: operations fail with `Unavailable` or `Timeout` within the
//! configured timeouts (no hang, no panic) and work again on their own once Redis is back; a
//! watcher gets a fresh snapshot, and a live registration is restored by its keep-alive.

use std::sync::Arc;
use std::time::Duration;

use cim_adapter_redis::{RedisConfig, RedisMetaStore, RedisSessionStore};
use cim_backend_fixtures::outage::{Folded, assert_fails_promptly, converge, until_recovered};
use cim_backend_fixtures::redis::redis;
use cim_core::registry::BackendOptions;
use cim_core::{BindPolicy, MetaEvent, MetaStore, SessionStore, UserId};
use conformance_tests::support::{registry_builds_from_config_keys, server_info, session};
use futures::StreamExt;

const TTL: Duration = Duration::from_secs(1);

fn config(url: String) -> RedisConfig {
    RedisConfig {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_millis(500),
        ..RedisConfig::new(url)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_builds_redis_stores_from_config_keys() {
    let Some(redis) = redis() else {
        return;
    };
    let options = BackendOptions::new("sessions", "redis")
        .with_namespace("registry_test")
        .with_ttl(Some(TTL))
        .with_option("url", redis.address())
        .with_option("response_timeout", "2s");
    registry_builds_from_config_keys(
        options.clone(),
        BackendOptions::new("meta", "redis")
            .with_namespace("registry_test")
            .with_ttl(Some(TTL))
            .with_option("url", redis.address()),
        options.with_option("respons_timeout", "2s"),
        "respons_timeout",
    )
    .await;
}

#[test]
fn the_config_never_shows_the_password() {
    let config = RedisConfig::new("redis://app:hunter2@10.0.0.7:6379/0");
    let shown = format!("{config:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("redis://app:***@10.0.0.7:6379/0"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_unavailable_while_redis_is_down_and_recover_when_it_is_back() {
    let Some(mut redis) = redis().and_then(|target| target.owned()) else {
        return;
    };
    let store = RedisSessionStore::connect(&config(redis.address()), "failure_sessions", TTL * 30)
        .await
        .expect("connect");
    store
        .bind(session(1, "node-1", 10), BindPolicy::Reject)
        .await
        .expect("bind while redis runs");

    let server = redis.server_mut().expect("an owned server");
    server.stop();
    assert_fails_promptly(
        "bind",
        store.bind(session(2, "node-1", 20), BindPolicy::Reject),
    )
    .await;

    server.restart().expect("restart redis");
    until_recovered("bind after the restart", || {
        store.bind(session(2, "node-1", 20), BindPolicy::Reject)
    })
    .await;
    let bound = store.get(UserId(2)).await.expect("get after recovery");
    assert_eq!(
        bound.map(|s| s.reference()),
        Some(session(2, "node-1", 20).reference()),
        "the session bound after recovery is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resyncs_and_a_live_registration_returns_after_redis_restarts() {
    let Some(mut redis) = redis().and_then(|target| target.owned()) else {
        return;
    };
    let store: Arc<dyn MetaStore> = Arc::new(
        RedisMetaStore::connect(&config(redis.address()), "failure_meta", TTL)
            .await
            .expect("connect"),
    );
    let info = server_info("node-1", 7000);
    let _registration = store.register(info.clone()).await.expect("register");
    let mut events = store.watch().await.expect("watch");
    let first = events
        .next()
        .await
        .expect("a first event")
        .expect("no error");
    assert_eq!(first, MetaEvent::Snapshot(vec![info.clone()]));

    let server = redis.server_mut().expect("an owned server");
    server.stop();
    server.restart().expect("restart redis");

    // The restarted redis is empty: the watcher must resync, and the keep-alive must put the
    // live registration back, which the watcher then sees.
    converge(
        &mut events,
        &mut Folded::default(),
        store.as_ref(),
        &[info],
        true,
    )
    .await;
}
