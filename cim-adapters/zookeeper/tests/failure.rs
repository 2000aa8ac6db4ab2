//! ZooKeeper going away and coming back: operations fail with `Unavailable` or `Timeout` within
//! the configured timeouts (no hang, no panic) and work again on their own once it is back. A
//! short outage costs nothing (ZooKeeper restores its sessions); after a long one the sessions
//! are gone, and the stores open new ones: a watcher resyncs with a fresh snapshot, a live
//! registration registers again, and the registration of a node that died meanwhile does not
//! stay listed. Also: the registry builds both stores from config keys, and `digest` credentials
//! keep other clients out.

use std::sync::Arc;
use std::time::Duration;

use cim_adapter_zookeeper::{ZooKeeperConfig, ZooKeeperMetaStore, ZooKeeperSessionStore};
use cim_backend_fixtures::outage::{
    Folded, PROMPT, assert_fails_promptly, converge, until_recovered,
};
use cim_backend_fixtures::zookeeper::zookeeper;
use cim_core::registry::{self, BackendOptions};
use cim_core::{BindPolicy, ErrorKind, MetaStore, SecretString, Session, SessionStore, UserId};
use conformance_tests::support::{registry_builds_from_config_keys, server_info, session};

/// The TTL, and so the ZooKeeper session timeout, of the stores that live through outages.
const TTL: Duration = Duration::from_secs(1);

fn config(connect: String) -> ZooKeeperConfig {
    ZooKeeperConfig {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(500),
        ..ZooKeeperConfig::new(connect)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_builds_zookeeper_stores_from_config_keys() {
    let Some(zookeeper) = zookeeper() else {
        return;
    };
    let options = BackendOptions::new("sessions", "zookeeper")
        .with_namespace("registry_test")
        .with_ttl(Some(TTL))
        .with_option("connect", zookeeper.address())
        .with_option("root", "/cim-registry")
        .with_option("connect_timeout", "2s")
        .with_option("request_timeout", "2s");
    registry_builds_from_config_keys(
        options.clone(),
        BackendOptions::new("meta", "zookeeper")
            .with_namespace("registry_test")
            .with_ttl(Some(TTL))
            .with_option("connect", zookeeper.address()),
        options.clone().with_option("request_timout", "2s"),
        "request_timout",
    )
    .await;

    let relative_root = options.with_option("root", "cim");
    let Err(error) = registry::build::<dyn SessionStore>(relative_root).await else {
        panic!("a relative root is refused");
    };
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(error.to_string().contains("root"), "{error}");
}

#[test]
fn the_config_never_shows_the_digest() {
    let config = ZooKeeperConfig {
        digest: Some(SecretString::new("cim:hunter2")),
        ..ZooKeeperConfig::new("10.0.0.7:2181")
    };
    let shown = format!("{config:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("10.0.0.7:2181"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_the_digest_credentials_is_refused() {
    let Some(zookeeper) = zookeeper() else {
        return;
    };
    let protected = ZooKeeperConfig {
        digest: Some(SecretString::new("cim:secret")),
        ..config(zookeeper.address())
    };
    let owner = ZooKeeperMetaStore::connect(&protected, "digest_test", TTL * 10)
        .await
        .expect("connect with credentials");
    let _registration = owner
        .register(server_info("node-1", 7000))
        .await
        .expect("register with credentials");
    assert_eq!(
        owner.list().await.expect("list"),
        vec![server_info("node-1", 7000)]
    );

    for (who, digest) in [("no", None), ("other", Some("cim:guess"))] {
        let outsider = ZooKeeperConfig {
            digest: digest.map(SecretString::new),
            ..config(zookeeper.address())
        };
        let outcome = async {
            let store = ZooKeeperMetaStore::connect(&outsider, "digest_test", TTL * 10).await?;
            store.list().await
        }
        .await;
        let error = outcome.expect_err("a store with the wrong credentials cannot read");
        assert_eq!(
            error.kind(),
            ErrorKind::Unauthenticated,
            "{who} credentials: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_cannot_register_a_live_id_until_its_owner_is_gone() {
    let Some(zookeeper) = zookeeper() else {
        return;
    };
    let first = ZooKeeperMetaStore::connect(&config(zookeeper.address()), "owner_test", TTL)
        .await
        .expect("connect the first node");
    let second = ZooKeeperMetaStore::connect(&config(zookeeper.address()), "owner_test", TTL)
        .await
        .expect("connect the second node");
    let original = server_info("node-1", 7000);
    let registration = first.register(original.clone()).await.expect("register");

    let error = second
        .register(server_info("node-1", 7100))
        .await
        .expect_err("the id is live in another process");
    assert_eq!(error.kind(), ErrorKind::AlreadyExists, "{error}");
    assert!(error.is_retryable(), "{error}");
    assert_eq!(second.list().await.expect("list"), vec![original]);

    // The first process stops (its store and registration go): the id is free at once.
    drop(registration);
    drop(first);
    let successor = server_info("node-1", 7100);
    let deadline = tokio::time::Instant::now() + PROMPT;
    let _registration = loop {
        match second.register(successor.clone()).await {
            Ok(registration) => break registration,
            Err(error) if error.kind() == ErrorKind::AlreadyExists => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the id of a stopped process must become free: {error}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("registering the freed id: {error}"),
        }
    };
    assert_eq!(second.list().await.expect("list"), vec![successor]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_nodes_users_are_released_by_zookeeper() {
    let Some(zookeeper) = zookeeper() else {
        return;
    };
    let crashing =
        ZooKeeperSessionStore::connect(&config(zookeeper.address()), "crash_test", TTL * 30)
            .await
            .expect("connect");
    let survivor =
        ZooKeeperSessionStore::connect(&config(zookeeper.address()), "crash_test", TTL * 30)
            .await
            .expect("connect");
    crashing
        .bind(session(1, "node-1", 10), BindPolicy::Reject)
        .await
        .expect("bind on the node that crashes");
    assert!(survivor.get(UserId(1)).await.expect("get").is_some());

    // The node's process ends: its ZooKeeper sessions end with it, long before any TTL.
    drop(crashing);

    let deadline = tokio::time::Instant::now() + PROMPT;
    while survivor.get(UserId(1)).await.expect("get").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the users of a node whose process ended must be released by ZooKeeper"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    survivor
        .bind(session(1, "node-2", 10), BindPolicy::Reject)
        .await
        .expect("the user logs in again elsewhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_unavailable_while_zookeeper_is_down_and_recover_when_it_is_back() {
    let Some(mut zookeeper) = zookeeper().and_then(|target| target.owned()) else {
        return;
    };
    // A long TTL: this outage is shorter than the ZooKeeper session timeout.
    let store =
        ZooKeeperSessionStore::connect(&config(zookeeper.address()), "failure_sessions", TTL * 30)
            .await
            .expect("connect");
    store
        .bind(session(1, "node-1", 10), BindPolicy::Reject)
        .await
        .expect("bind while zookeeper runs");

    let server = zookeeper.server_mut().expect("an owned server");
    server.stop();
    assert_fails_promptly(
        "binding",
        store.bind(session(2, "node-1", 20), BindPolicy::Reject),
    )
    .await;
    assert_fails_promptly("get", store.get(UserId(1))).await;
    assert_fails_promptly(
        "refresh",
        store.refresh_server(&session(1, "node-1", 10).server_id),
    )
    .await;

    server.restart().expect("restart zookeeper");
    until_recovered("bind after the restart", || {
        store.bind(session(2, "node-1", 20), BindPolicy::Reject)
    })
    .await;
    // A ZooKeeper that has just restarted may drop a client once more while it settles: the
    // read, too, must recover, with only transient errors meanwhile.
    let mut online = until_recovered("get after the restart", || {
        store.get_many(&[UserId(1), UserId(2)])
    })
    .await;
    online.sort_by_key(|s| s.user_id);
    assert_eq!(
        online.iter().map(Session::reference).collect::<Vec<_>>(),
        vec![
            session(1, "node-1", 10).reference(),
            session(2, "node-1", 20).reference()
        ],
        "a short outage loses no session (ZooKeeper restores its sessions), and the session \
         bound after recovery is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_long_outage_registrations_return_and_a_dead_nodes_do_not() {
    let Some(mut zookeeper) = zookeeper().and_then(|target| target.owned()) else {
        return;
    };
    let connect = zookeeper.address();
    let store: Arc<dyn MetaStore> = Arc::new(
        ZooKeeperMetaStore::connect(&config(connect.clone()), "failure_meta", TTL)
            .await
            .expect("connect"),
    );
    let dying = ZooKeeperMetaStore::connect(&config(connect), "failure_meta", TTL)
        .await
        .expect("connect the node that dies");
    let live = server_info("node-live", 7000);
    let registration = store.register(live.clone()).await.expect("register");
    let dead_registration = dying
        .register(server_info("node-dead", 7010))
        .await
        .expect("register the node that dies");
    let mut events = store.watch().await.expect("watch");
    let mut known = Folded::default();
    converge(
        &mut events,
        &mut known,
        store.as_ref(),
        // Ordered by id, as list() is.
        &[server_info("node-dead", 7010), live.clone()],
        false,
    )
    .await;

    let zk = zookeeper.server_mut().expect("an owned server");
    zk.stop();
    assert_fails_promptly("list", store.list()).await;
    assert_fails_promptly("register", store.register(server_info("node-new", 7020))).await;
    assert_fails_promptly("watch", async { store.watch().await.map(|_| ()) }).await;
    // The other node dies while ZooKeeper is away: its session cannot be closed, so ZooKeeper
    // restores it on restart and has to expire it.
    drop(dead_registration);
    drop(dying);
    // The outage itself: longer than the session timeout, so every client gives its session up.
    tokio::time::sleep(TTL * 3).await;
    zk.restart().expect("restart zookeeper");

    // The watcher resyncs; the live registration is registered again in a new session (once
    // ZooKeeper expired the old one); the dead node's registration expires and stays gone.
    converge(
        &mut events,
        &mut known,
        store.as_ref(),
        std::slice::from_ref(&live),
        true,
    )
    .await;

    let mut busier = live.clone();
    busier.load = 42;
    registration
        .update(busier.clone())
        .await
        .expect("the registration works again");
    converge(
        &mut events,
        &mut known,
        store.as_ref(),
        std::slice::from_ref(&busier),
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_registration_returns_after_zookeeper_lost_its_data() {
    let Some(mut zookeeper) = zookeeper().and_then(|target| target.owned()) else {
        return;
    };
    let connect = zookeeper.address();
    let store: Arc<dyn MetaStore> = Arc::new(
        ZooKeeperMetaStore::connect(&config(connect.clone()), "failure_data", TTL)
            .await
            .expect("connect"),
    );
    // A ZooKeeper that lost its data refuses clients that saw newer transactions until they
    // give their session up (1.4 session timeouts): keep that short.
    let sessions = ZooKeeperSessionStore::connect(&config(connect), "failure_data", TTL)
        .await
        .expect("connect");
    let live = server_info("node-live", 7000);
    let _registration = store.register(live.clone()).await.expect("register");
    sessions
        .bind(session(1, "node-live", 10), BindPolicy::Reject)
        .await
        .expect("bind");
    let mut events = store.watch().await.expect("watch");
    let mut known = Folded::default();
    converge(
        &mut events,
        &mut known,
        store.as_ref(),
        std::slice::from_ref(&live),
        false,
    )
    .await;

    zookeeper
        .server_mut()
        .expect("an owned server")
        .restart_empty()
        .expect("restart zookeeper without its data");

    // ZooKeeper knows no session any more: the stores open new ones, the registration and its
    // parent nodes are created again, and the watcher resyncs.
    converge(
        &mut events,
        &mut known,
        store.as_ref(),
        std::slice::from_ref(&live),
        true,
    )
    .await;
    until_recovered("the session store's bind after the data loss", || {
        sessions.bind(session(1, "node-live", 10), BindPolicy::Reject)
    })
    .await;
    assert_eq!(
        sessions.count_online().await.expect("count"),
        1,
        "the lost sessions are gone; the user bound again is online"
    );
}
