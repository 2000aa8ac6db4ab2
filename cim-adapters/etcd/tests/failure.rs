//! etcd going away and coming back: operations fail with `Unavailable` or `Timeout` within the
//! configured timeouts (no hang, no panic) and work again on their own once etcd is back; a
//! watcher resyncs with a fresh snapshot, a server whose owner died during the outage does not
//! stay listed, and a live registration or server lease that etcd lost (its data was wiped) is
//! acquired again by its owner.

use std::sync::Arc;
use std::time::Duration;

use cim_adapter_etcd::{EtcdConfig, EtcdMetaStore, EtcdSessionStore};
use cim_backend_fixtures::etcd::{EtcdTarget, etcd};
use cim_backend_fixtures::outage::{
    Folded, PROMPT, assert_fails_promptly, converge, until_recovered,
};
use cim_core::registry::BackendOptions;
use cim_core::{BindPolicy, ErrorKind, MetaEvent, MetaStore, SessionStore, UserId};
use conformance_tests::support::{
    registry_builds_from_config_keys, server_id, server_info, session,
};
use futures::StreamExt;

/// etcd's minimum lease TTL with its default election timeout.
const TTL: Duration = Duration::from_secs(2);

fn config(etcd: &EtcdTarget) -> EtcdConfig {
    EtcdConfig {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(500),
        ..EtcdConfig::new(etcd.endpoints())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_builds_etcd_stores_from_config_keys() {
    let Some(etcd) = etcd() else {
        return;
    };
    let options = BackendOptions::new("sessions", "etcd")
        .with_namespace("registry_test")
        .with_ttl(Some(TTL))
        .with_option("endpoints", etcd.endpoints())
        .with_option("prefix", "/cim-tests")
        .with_option("request_timeout", "2s");
    registry_builds_from_config_keys(
        options.clone(),
        BackendOptions::new("meta", "etcd")
            .with_namespace("registry_test")
            .with_ttl(Some(TTL))
            .with_option("endpoints", etcd.endpoints())
            .with_option("connect_timeout", "2s"),
        options.with_option("endpoint", etcd.endpoints()),
        "endpoint",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_an_etcd_that_does_not_run_fails_promptly_with_unavailable() {
    // A port nothing listens on: taken, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let config = EtcdConfig {
        connect_timeout: Duration::from_millis(500),
        ..EtcdConfig::new([format!("http://127.0.0.1:{port}")])
    };
    let outcome = tokio::time::timeout(PROMPT, EtcdSessionStore::connect(&config, "nowhere", TTL))
        .await
        .expect("connecting ends within the connect timeout");
    let error = outcome.expect_err("nothing to connect to");
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_fail_while_etcd_is_down_and_survive_its_restart() {
    let Some(mut etcd) = etcd().and_then(|target| target.owned()) else {
        return;
    };
    let store = EtcdSessionStore::connect(&config(&etcd), "failure_sessions", TTL)
        .await
        .expect("connect");
    let before = session(1, "node-1", 10);
    store
        .bind(before.clone(), BindPolicy::Reject)
        .await
        .expect("bind while etcd runs");

    let server = etcd.server_mut().expect("an owned server");
    server.stop();
    assert_fails_promptly(
        "bind",
        store.bind(session(2, "node-1", 20), BindPolicy::Reject),
    )
    .await;
    assert_fails_promptly("get", store.get(UserId(1))).await;
    assert_fails_promptly("refresh_server", store.refresh_server(&before.server_id)).await;

    server.restart().expect("restart etcd");
    until_recovered("bind after the restart", || {
        store.bind(session(2, "node-1", 20), BindPolicy::Reject)
    })
    .await;
    assert_eq!(
        store
            .get(UserId(2))
            .await
            .expect("get")
            .map(|s| s.reference()),
        Some(session(2, "node-1", 20).reference()),
        "the session bound after recovery is stored"
    );
    assert_eq!(
        store
            .get(UserId(1))
            .await
            .expect("get")
            .map(|s| s.reference()),
        Some(before.reference()),
        "etcd keeps leases across a restart, so a session whose server refreshes again survives"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_lease_lost_with_etcds_data_is_replaced_and_binds_work_again() {
    let Some(mut etcd) = etcd().and_then(|target| target.owned()) else {
        return;
    };
    let store = EtcdSessionStore::connect(&config(&etcd), "failure_lost_lease", TTL)
        .await
        .expect("connect");
    store
        .bind(session(1, "node-1", 10), BindPolicy::Reject)
        .await
        .expect("bind while etcd runs");

    // A rebuilt cluster: the server lease and every session are gone.
    let server = etcd.server_mut().expect("an owned server");
    server
        .restart_empty()
        .expect("restart etcd without its data");

    let node = server_id("node-1");
    until_recovered("refresh after the data loss", || {
        store.refresh_server(&node)
    })
    .await;
    assert_eq!(
        store.get(UserId(1)).await.expect("get"),
        None,
        "the data is gone"
    );
    let again = session(1, "node-1", 10);
    store
        .bind(again.clone(), BindPolicy::Reject)
        .await
        .expect("a bind on the new server lease");
    assert_eq!(
        store
            .get(UserId(1))
            .await
            .expect("get")
            .map(|s| s.reference()),
        Some(again.reference())
    );
    assert_eq!(store.count_online().await.expect("count"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_longer_than_the_ttl_a_watcher_resyncs_and_no_dead_server_stays_listed() {
    let Some(mut etcd) = etcd().and_then(|target| target.owned()) else {
        return;
    };
    let store: Arc<dyn MetaStore> = Arc::new(
        EtcdMetaStore::connect(&config(&etcd), "failure_meta", TTL)
            .await
            .expect("connect"),
    );
    let staying = server_info("staying", 7000);
    let dying = server_info("dying", 7002);
    let _staying = store.register(staying.clone()).await.expect("register");
    let dying_registration = store.register(dying.clone()).await.expect("register");
    let mut events = store.watch().await.expect("watch");
    let mut known = Folded::default();
    known.apply(
        events
            .next()
            .await
            .expect("a first event")
            .expect("no error"),
    );
    assert_eq!(known.list(), vec![dying.clone(), staying.clone()]);

    let server = etcd.server_mut().expect("an owned server");
    server.stop();
    // The owner of "dying" dies while etcd is away: nobody will renew its lease again.
    drop(dying_registration);
    assert_fails_promptly("list", store.list()).await;
    assert_fails_promptly("register", store.register(server_info("late", 7100))).await;
    // The outage itself: longer than the TTL, so that every lease would have expired by now.
    tokio::time::sleep(TTL * 2).await;
    server.restart().expect("restart etcd");

    // etcd extends every lease when it comes back, so the live registration is renewed in time
    // and the dead one expires one TTL later.
    // Only the live registration is listed after the outage.
    converge(
        &mut events,
        &mut known,
        store.as_ref(),
        std::slice::from_ref(&staying),
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_registration_that_etcd_lost_registers_again_by_itself() {
    let Some(mut etcd) = etcd().and_then(|target| target.owned()) else {
        return;
    };
    let store: Arc<dyn MetaStore> = Arc::new(
        EtcdMetaStore::connect(&config(&etcd), "failure_lost_registration", TTL)
            .await
            .expect("connect"),
    );
    let info = server_info("node-1", 7000);
    let registration = store.register(info.clone()).await.expect("register");
    let mut events = store.watch().await.expect("watch");
    let mut known = Folded::default();
    known.apply(
        events
            .next()
            .await
            .expect("a first event")
            .expect("no error"),
    );
    assert_eq!(known.list(), vec![info.clone()]);

    // A rebuilt cluster: the key and its lease are gone. The keep-alive finds the lease lost
    // and registers the server again; the watcher resyncs and sees it.
    let server = etcd.server_mut().expect("an owned server");
    server
        .restart_empty()
        .expect("restart etcd without its data");

    converge(
        &mut events,
        &mut known,
        store.as_ref(),
        std::slice::from_ref(&info),
        true,
    )
    .await;

    // The new lease is the registration's own: an update goes through, deregistering removes it.
    let mut busier = info.clone();
    busier.load = 7;
    registration.update(busier.clone()).await.expect("update");
    assert_eq!(store.list().await.expect("list"), vec![busier]);
    registration.deregister().await.expect("deregister");
    assert_eq!(store.list().await.expect("list"), Vec::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_removes_a_dead_servers_sessions_at_once() {
    let Some(etcd) = etcd() else {
        return;
    };
    let dead_node = EtcdSessionStore::connect(&config(&etcd), "failure_remove_server", TTL * 30)
        .await
        .expect("connect the node that dies");
    let other_node = EtcdSessionStore::connect(&config(&etcd), "failure_remove_server", TTL * 30)
        .await
        .expect("connect another node");
    for user in 1..=3 {
        dead_node
            .bind(session(user, "dead-node", user * 10), BindPolicy::Reject)
            .await
            .expect("bind on the node that dies");
    }
    other_node
        .bind(session(4, "other-node", 40), BindPolicy::Reject)
        .await
        .expect("bind on the other node");

    let removed = other_node
        .remove_server(&server_id("dead-node"))
        .await
        .expect("remove the dead server from another node");

    assert_eq!(removed, 3, "every session of the dead server, counted");
    for user in 1..=3 {
        assert_eq!(dead_node.get(UserId(user)).await.expect("get"), None);
    }
    assert_eq!(dead_node.count_online().await.expect("count"), 1);
    // The removed server comes back: it gets a new lease and can bind again.
    dead_node
        .bind(session(1, "dead-node", 10), BindPolicy::Reject)
        .await
        .expect("bind after the server was removed");
    assert_eq!(other_node.count_online().await.expect("count"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authentication_the_stores_work_as_a_user_allowed_only_the_prefix() {
    let Some(etcd) = etcd().and_then(|target| target.owned()) else {
        return;
    };
    enable_authentication(&etcd, "cim", "cim-password", "/cim/").await;
    let as_cim = EtcdConfig {
        user: Some("cim".to_string()),
        password: Some("cim-password".into()),
        ..config(&etcd)
    };

    let sessions = EtcdSessionStore::connect(&as_cim, "auth", TTL)
        .await
        .expect("connect as the cim user");
    sessions
        .bind(session(1, "node-1", 10), BindPolicy::Reject)
        .await
        .expect("bind");
    let node = server_id("node-1");
    sessions.refresh_server(&node).await.expect("refresh");
    assert_eq!(sessions.count_online().await.expect("count"), 1);
    assert_eq!(sessions.remove_server(&node).await.expect("remove"), 1);

    let meta = EtcdMetaStore::connect(&as_cim, "auth", TTL)
        .await
        .expect("connect as the cim user");
    let info = server_info("node-1", 7000);
    let registration = meta.register(info.clone()).await.expect("register");
    let mut events = meta.watch().await.expect("watch");
    let first = events.next().await.expect("an event").expect("no error");
    assert_eq!(first, MetaEvent::Snapshot(vec![info.clone()]));
    registration.deregister().await.expect("deregister");
    let removed = tokio::time::timeout(PROMPT, events.next())
        .await
        .expect("the removal arrives")
        .expect("an event")
        .expect("no error");
    assert_eq!(removed, MetaEvent::Removed(info.id));

    let wrong = EtcdConfig {
        password: Some("guess".into()),
        ..as_cim.clone()
    };
    let error = EtcdSessionStore::connect(&wrong, "auth", TTL)
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(error.kind(), ErrorKind::Unauthenticated, "{error}");
    let anonymous = EtcdConfig {
        user: None,
        password: None,
        ..as_cim
    };
    let error = EtcdMetaStore::connect(&anonymous, "auth", TTL)
        .await
        .expect_err("no credentials are refused");
    assert_eq!(error.kind(), ErrorKind::Unauthenticated, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watch_keeps_its_connection_with_short_timeouts() {
    let Some(etcd) = etcd() else {
        return;
    };
    // Short timeouts must not mean pings frequent enough for etcd to drop the connection
    // ("too many pings"), which would show here as needless resyncs.
    let store = EtcdMetaStore::connect(&config(&etcd), "idle_watch", TTL)
        .await
        .expect("connect");
    let mut events = store.watch().await.expect("watch");
    let first = events.next().await.expect("an event").expect("no error");
    assert_eq!(first, MetaEvent::Snapshot(Vec::new()));

    // This timeout is expected to elapse: nothing changed, so nothing may arrive.
    let quiet = Duration::from_secs(3);
    if let Ok(event) = tokio::time::timeout(quiet, events.next()).await {
        panic!("an idle watch must stay quiet, but within {quiet:?} it yielded {event:?}");
    }
}

/// Turns authentication on, with a root user and `user` allowed to read and write `prefix` only.
async fn enable_authentication(etcd: &EtcdTarget, user: &str, password: &str, prefix: &str) {
    let mut admin = etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .expect("an admin client");
    admin
        .user_add("root", "root-password", None)
        .await
        .expect("add root");
    admin
        .user_grant_role("root", "root")
        .await
        .expect("make root root");
    admin.role_add(user).await.expect("add the role");
    admin
        .role_grant_permission(
            user,
            etcd_client::Permission::read_write(prefix).with_prefix(),
        )
        .await
        .expect("allow the prefix");
    admin
        .user_add(user, password, None)
        .await
        .expect("add the user");
    admin
        .user_grant_role(user, user)
        .await
        .expect("give the user its role");
    admin.auth_enable().await.expect("enable authentication");
}
