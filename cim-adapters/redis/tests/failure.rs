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

#[test]
fn a_cluster_config_never_shows_the_nodes_passwords() {
    let config = RedisConfig::cluster(["redis://app:hunter2@10.0.0.7:7000"]);
    let shown = format!("{config:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("redis://app:***@10.0.0.7:7000"), "{shown}");
}

#[tokio::test]
async fn a_config_naming_both_a_url_and_cluster_nodes_is_refused() {
    let config = RedisConfig {
        url: "redis://10.0.0.7:6379".into(),
        ..RedisConfig::cluster(["redis://10.0.0.8:7000"])
    };
    let error = RedisSessionStore::connect(&config, "ns", TTL)
        .await
        .expect_err("both url and cluster_nodes");
    assert_eq!(error.kind(), cim_core::ErrorKind::Config, "{error}");
    assert!(error.to_string().contains("cluster_nodes"), "{error}");
}

#[tokio::test]
async fn a_namespace_with_braces_is_refused_on_a_cluster() {
    let config = RedisConfig::cluster(["redis://127.0.0.1:1"]);
    let error = RedisSessionStore::connect(&config, "a{b}", TTL)
        .await
        .expect_err("braces in the namespace");
    assert_eq!(error.kind(), cim_core::ErrorKind::Config, "{error}");
    assert!(error.to_string().contains("hash tag"), "{error}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_after_redis_forgot_its_scripts_is_stored_once_each() {
    use cim_adapter_redis::RedisMessageStore;
    use cim_core::{MessageStore, NewMessage, Recipient, Timestamp};
    let Some(redis) = redis() else {
        return;
    };
    let store = RedisMessageStore::connect(&config(redis.address()), "failure_script_flush")
        .await
        .expect("connect");
    let message = |id: &str| NewMessage {
        sender: UserId(1),
        to: Recipient::User(UserId(2)),
        client_msg_id: id.to_string(),
        body: id.to_string(),
        sent_at: Timestamp::now(),
    };
    let first = store.append_all(vec![message("a"), message("b")]).await;
    assert!(first.iter().all(Result::is_ok), "{first:?}");
    // What a Redis restart without persistence of scripts, or an operator, does: the batch's
    // pipeline meets NOSCRIPT for every append, and each is appended again with its script.
    let client = redis::Client::open(redis.address()).expect("a redis url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut connection)
        .await
        .expect("SCRIPT FLUSH");
    let results = store
        .append_all(vec![message("c"), message("a"), message("d")])
        .await;
    let seen: Vec<(u64, bool)> = results
        .iter()
        .map(|result| {
            let appended = result.as_ref().expect("stored");
            (appended.message.seq.0, appended.duplicate)
        })
        .collect();
    assert_eq!(
        seen,
        [(3, false), (1, true), (4, false)],
        "(seq, duplicate): the retry of \"a\" is its first message, nothing stored twice"
    );
}
