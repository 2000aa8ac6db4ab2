//! Redis going away and coming back: operations fail with `Unavailable` or `Timeout` within the
//! configured timeouts (no hang, no panic) and work again on their own once Redis is back; a
//! watcher gets a fresh snapshot, and a live registration is restored by its keep-alive.

use std::sync::Arc;
use std::time::Duration;

use cim_adapter_redis::{RedisConfig, RedisMetaStore, RedisSessionStore};
use cim_backend_fixtures::RedisTarget;
use cim_core::registry::{self, BackendOptions};
use cim_core::{
    BindPolicy, ConnectionId, ErrorKind, MetaEvent, MetaStore, ServerId, ServerInfo, Session,
    SessionStore, Timestamp, UserId,
};
use futures::StreamExt;

const TTL: Duration = Duration::from_secs(1);
/// Long enough for a restart and a reconnect on a loaded machine.
const RECOVERY: Duration = Duration::from_secs(15);

fn config(url: String) -> RedisConfig {
    RedisConfig {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_millis(500),
        ..RedisConfig::new(url)
    }
}

fn session(user: u64, server: &str) -> Session {
    Session {
        user_id: UserId(user),
        server_id: ServerId::new(server).expect("valid server id"),
        connection_id: ConnectionId(user * 10),
        device: "test".to_string(),
        login_at: Timestamp::now(),
    }
}

/// A server this test owns (failure tests cannot stop someone else's).
fn owned_redis() -> Option<RedisTarget> {
    let target = cim_backend_fixtures::redis::redis()?;
    if let RedisTarget::External { .. } = target {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: failure tests need a redis-server they start themselves"
        );
        return None;
    }
    Some(target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_builds_redis_stores_from_config_keys() {
    let Some(redis) = cim_backend_fixtures::redis::redis() else {
        return;
    };
    let options = BackendOptions::new("sessions", "redis")
        .with_namespace("registry_test")
        .with_ttl(Some(TTL))
        .with_option("url", redis.url())
        .with_option("response_timeout", "2s");
    let sessions = registry::build::<dyn SessionStore>(options.clone())
        .await
        .expect("build the redis session store through the registry");
    sessions
        .bind(session(1, "node-1"), BindPolicy::Reject)
        .await
        .expect("bind");
    assert_eq!(sessions.count_online().await.expect("count"), 1);

    let meta = registry::build::<dyn MetaStore>(
        BackendOptions::new("meta", "redis")
            .with_namespace("registry_test")
            .with_ttl(Some(TTL))
            .with_option("url", redis.url()),
    )
    .await
    .expect("build the redis meta store through the registry");
    assert!(meta.list().await.expect("list").is_empty());

    let misspelt = options.with_option("respons_timeout", "2s");
    let Err(error) = registry::build::<dyn SessionStore>(misspelt).await else {
        panic!("an unknown key is refused");
    };
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(error.to_string().contains("respons_timeout"), "{error}");
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
    let Some(mut redis) = owned_redis() else {
        return;
    };
    let store = RedisSessionStore::connect(&config(redis.url()), "failure_sessions", TTL * 30)
        .await
        .expect("connect");
    store
        .bind(session(1, "node-1"), BindPolicy::Reject)
        .await
        .expect("bind while redis runs");

    let server = redis.server_mut().expect("an owned server");
    server.stop();
    let outcome = tokio::time::timeout(
        Duration::from_secs(5),
        store.bind(session(2, "node-1"), BindPolicy::Reject),
    )
    .await
    .expect("an operation on a stopped redis ends within its timeouts");
    let error = outcome.expect_err("binding while redis is down fails");
    assert!(
        matches!(error.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "expected Unavailable or Timeout while redis is down, got {error}"
    );
    assert!(error.is_retryable(), "{error}");

    server.restart().expect("restart redis");
    let deadline = tokio::time::Instant::now() + RECOVERY;
    loop {
        match store.bind(session(2, "node-1"), BindPolicy::Reject).await {
            Ok(_) => break,
            Err(error) if tokio::time::Instant::now() < deadline => {
                assert!(
                    matches!(error.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
                    "only transient errors while reconnecting, got {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("the store did not recover within {RECOVERY:?}: {error}"),
        }
    }
    let bound = store.get(UserId(2)).await.expect("get after recovery");
    assert_eq!(
        bound.map(|s| s.reference()),
        Some(session(2, "node-1").reference()),
        "the session bound after recovery is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resyncs_and_a_live_registration_returns_after_redis_restarts() {
    let Some(mut redis) = owned_redis() else {
        return;
    };
    let store: Arc<dyn MetaStore> = Arc::new(
        RedisMetaStore::connect(&config(redis.url()), "failure_meta", TTL)
            .await
            .expect("connect"),
    );
    let id = ServerId::new("node-1").expect("valid id");
    let info = ServerInfo::new(id.clone(), "10.0.0.1", 7000, 7001);
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
    let restored = tokio::time::timeout(RECOVERY, async {
        let mut resynced = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(MetaEvent::Snapshot(servers)) => {
                    resynced = true;
                    if servers.contains(&info) {
                        return resynced;
                    }
                }
                Ok(MetaEvent::Added(added)) if resynced && added == info => return resynced,
                _ => {}
            }
        }
        false
    })
    .await
    .expect("the watcher resyncs and sees the registration again in time");
    assert!(restored, "the watch stream ended instead of resyncing");
    assert_eq!(store.list().await.expect("list after recovery"), vec![info]);
}
