//! Consul going away and coming back, and Consul taking sessions away: operations fail with
//! `Unavailable` or `Timeout` promptly while the agent is down (no hang, no panic) and work
//! again on their own once it is back; a watcher resyncs with a fresh snapshot; a live
//! registration whose Consul session is gone registers again by itself, and a server whose
//! Consul session is gone binds again under a new one. Plus the configuration's edges: keys
//! through the registry, a TTL the agents refuse, a wrong ACL token, an address with nothing
//! behind it.
//!
//! Like the conformance suite, these run against a real agent when one is reachable and against
//! cim's Consul HTTP API stand-in otherwise; the few that need a particular agent set-up (a
//! `session_ttl_min` of 10 s, ACLs) start a stand-in of their own.

use std::sync::Arc;
use std::time::Duration;

use cim_adapter_consul::{ConsulClient, ConsulConfig, ConsulMetaStore, ConsulSessionStore};
use cim_backend_fixtures::consul::{ConsulStandIn, StandInOptions, consul, shared_consul};
use cim_backend_fixtures::outage::{
    Folded, PROMPT, RECOVERY, assert_fails_promptly, assert_transient, converge, until_recovered,
};
use cim_core::registry::{self, BackendOptions};
use cim_core::{BindOutcome, BindPolicy, ErrorKind, MetaEvent, MetaStore, SessionStore, UserId};
use conformance_tests::support::{
    registry_builds_from_config_keys, server_id, server_info, session,
};
use futures::StreamExt;

const TTL: Duration = Duration::from_secs(1);

fn config(address: String) -> ConsulConfig {
    ConsulConfig {
        request_timeout: Duration::from_millis(1500),
        connect_timeout: Duration::from_millis(500),
        wait: Duration::from_secs(5),
        ..ConsulConfig::new(address)
    }
}

/// Destroys, behind the stores' backs, every Consul session whose name ends with `suffix`.
async fn destroy_sessions_named(address: String, suffix: &str) -> usize {
    let client = ConsulClient::new(&config(address)).expect("a client");
    let mut destroyed = 0;
    for info in client.session_list().await.expect("list sessions") {
        if info.name.ends_with(suffix) {
            client
                .session_destroy(&info.id)
                .await
                .expect("destroy a session");
            destroyed += 1;
        }
    }
    destroyed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_builds_consul_stores_from_config_keys() {
    let Some(consul) = shared_consul() else {
        return;
    };
    let options = BackendOptions::new("sessions", "consul")
        .with_namespace("registry_test")
        .with_ttl(Some(TTL))
        .with_option("address", consul.address())
        .with_option("prefix", "cimtest")
        .with_option("request_timeout", "2s")
        .with_option("connect_timeout", "1s")
        .with_option("wait", "10s");
    registry_builds_from_config_keys(
        options.clone(),
        BackendOptions::new("meta", "consul")
            .with_namespace("registry_test")
            .with_ttl(Some(TTL))
            .with_option("address", consul.address()),
        options.with_option("wiat", "10s"),
        "wiat",
    )
    .await;
}

#[tokio::test]
async fn bad_values_are_config_errors_that_name_the_key() {
    for (key, value) in [
        ("address", "https://consul:8501"),
        ("prefix", "/cim/"),
        ("wait", "11m"),
        ("request_timeout", "0s"),
    ] {
        let options = BackendOptions::new("meta", "consul")
            .with_ttl(Some(TTL))
            .with_option(key, value);
        let Err(error) = registry::build::<dyn MetaStore>(options).await else {
            panic!("{key} = {value:?} is refused");
        };
        assert_eq!(error.kind(), ErrorKind::Config, "{key}: {error}");
        assert!(error.to_string().contains(key), "{key}: {error}");
    }
}

#[test]
fn the_config_never_shows_the_token() {
    let config = ConsulConfig {
        token: Some("hunter2-acl-token".into()),
        ..ConsulConfig::default()
    };
    let shown = format!("{config:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    let client = ConsulClient::new(&config).expect("a client");
    let shown = format!("{client:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[tokio::test]
async fn an_agent_that_is_not_there_is_unavailable_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let outcome = tokio::time::timeout(
        PROMPT,
        ConsulSessionStore::connect(&config(format!("127.0.0.1:{port}")), "nobody", TTL),
    )
    .await
    .expect("connecting to a closed port ends within the timeouts");
    let error = outcome.expect_err("nothing listens there");
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
}

#[tokio::test]
async fn a_ttl_below_the_agents_session_ttl_min_is_a_config_error() {
    // A stand-in with Consul's default session_ttl_min of 10 s.
    let consul = ConsulStandIn::start().expect("start a stand-in");
    let error = ConsulMetaStore::connect(&config(consul.address()), "short_ttl", TTL)
        .await
        .expect_err("a 1 s TTL is below 10 s");
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
    assert!(error.to_string().contains("session_ttl_min"), "{error}");
    assert!(error.to_string().contains("ttl"), "{error}");
    ConsulMetaStore::connect(
        &config(consul.address()),
        "long_ttl",
        Duration::from_secs(10),
    )
    .await
    .expect("10 s is allowed");
}

#[tokio::test]
async fn a_wrong_acl_token_is_unauthenticated() {
    let consul = ConsulStandIn::start_with(StandInOptions {
        session_ttl_min: Duration::from_millis(100),
        acl_token: Some("right-token".to_string()),
    })
    .expect("start a stand-in with ACLs");
    for token in [None, Some("wrong-token")] {
        let config = ConsulConfig {
            token: token.map(Into::into),
            ..config(consul.address())
        };
        let error = ConsulSessionStore::connect(&config, "acl", TTL)
            .await
            .expect_err("the agent refuses the token");
        assert_eq!(
            error.kind(),
            ErrorKind::Unauthenticated,
            "{token:?}: {error}"
        );
    }
    let config = ConsulConfig {
        token: Some("right-token".into()),
        ..config(consul.address())
    };
    let store = ConsulSessionStore::connect(&config, "acl", TTL)
        .await
        .expect("the right token is accepted");
    store
        .bind(session(1, "node-1", 10), BindPolicy::Reject)
        .await
        .expect("bind with the right token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_unavailable_while_consul_is_down_and_recover_when_it_is_back() {
    let Some(mut consul) = consul().and_then(|target| target.owned()) else {
        return;
    };
    let store =
        ConsulSessionStore::connect(&config(consul.address()), "failure_sessions", TTL * 30)
            .await
            .expect("connect");
    store
        .bind(session(1, "node-1", 10), BindPolicy::Reject)
        .await
        .expect("bind while consul runs");

    let server = consul.server_mut().expect("an owned server");
    server.stop();
    let down = tokio::time::timeout(PROMPT, async {
        let bind = store
            .bind(session(2, "node-1", 20), BindPolicy::Reject)
            .await;
        let refresh = store.refresh_server(&server_id("node-1")).await;
        let get = store.get(UserId(1)).await;
        let count = store.count_online().await;
        (bind, refresh, get, count)
    })
    .await
    .expect("operations on a stopped consul end within their timeouts");
    assert_transient(&down.0.expect_err("bind fails"), "bind");
    assert_transient(&down.1.expect_err("refresh fails"), "refresh_server");
    assert_transient(&down.2.expect_err("get fails"), "get");
    assert_transient(&down.3.expect_err("count fails"), "count_online");

    // A restarted dev agent is empty: the session of user 1 is gone with everything else, and
    // the store's Consul session of node-1 too, which it must notice and replace.
    server.restart().expect("restart consul");
    let outcome = until_recovered("bind after the restart", || {
        store.bind(session(2, "node-1", 20), BindPolicy::Reject)
    })
    .await;
    assert_eq!(outcome, BindOutcome::Bound);
    assert_eq!(
        store
            .get(UserId(2))
            .await
            .expect("get after recovery")
            .map(|s| s.reference()),
        Some(session(2, "node-1", 20).reference()),
        "the session bound after recovery is stored"
    );
    store
        .refresh_server(&server_id("node-1"))
        .await
        .expect("refresh after recovery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resyncs_and_a_live_registration_returns_after_consul_restarts() {
    let Some(mut consul) = consul().and_then(|target| target.owned()) else {
        return;
    };
    let store: Arc<dyn MetaStore> = Arc::new(
        ConsulMetaStore::connect(&config(consul.address()), "failure_meta", TTL)
            .await
            .expect("connect"),
    );
    let live = server_info("node-1", 7000);
    let dying = server_info("node-2", 7000);
    let _registration = store.register(live.clone()).await.expect("register");
    let dying_registration = store.register(dying.clone()).await.expect("register");
    let mut events = store.watch().await.expect("watch");
    let first = events
        .next()
        .await
        .expect("a first event")
        .expect("no error");
    assert_eq!(
        first,
        MetaEvent::Snapshot(vec![live.clone(), dying.clone()])
    );

    // node-2's owner dies with the agent; node-1's lives on.
    drop(dying_registration);
    let server = consul.server_mut().expect("an owned server");
    server.stop();
    assert_fails_promptly("list", store.list()).await;
    server.restart().expect("restart consul");

    // The restarted agent is empty: the watcher must resync, the keep-alive must put the live
    // registration back, and node-2 must not come back.
    converge(
        &mut events,
        &mut Folded::default(),
        store.as_ref(),
        &[live],
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_whose_consul_session_is_destroyed_registers_again() {
    let Some(consul) = shared_consul() else {
        return;
    };
    let store = ConsulMetaStore::connect(&config(consul.address()), "lost_lease", TTL)
        .await
        .expect("connect");
    let info = server_info("node-1", 7000);
    let _registration = store.register(info.clone()).await.expect("register");
    let mut events = store.watch().await.expect("watch");
    assert_eq!(
        events.next().await.expect("an event").expect("no error"),
        MetaEvent::Snapshot(vec![info.clone()])
    );

    let destroyed = destroy_sessions_named(consul.address(), "/lost_lease/servers/node-1").await;
    assert_eq!(destroyed, 1, "the registration holds one consul session");

    // Consul deletes the key with the session; the keep-alive finds the session gone at its
    // next renewal and registers again.
    let returned = tokio::time::timeout(RECOVERY, async {
        let mut gone = false;
        while let Some(event) = events.next().await {
            match event.expect("no error while consul runs") {
                MetaEvent::Removed(id) if id == info.id => gone = true,
                MetaEvent::Snapshot(servers) if !servers.contains(&info) => gone = true,
                MetaEvent::Added(added) if gone && added == info => return true,
                MetaEvent::Snapshot(servers) if gone && servers.contains(&info) => return true,
                _ => {}
            }
        }
        false
    })
    .await
    .expect("the watcher sees the server leave and come back in time");
    assert!(returned, "the watch stream ended");
    assert_eq!(store.list().await.expect("list"), vec![info]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_consul_session_is_destroyed_binds_again_under_a_new_one() {
    let Some(consul) = shared_consul() else {
        return;
    };
    let store = ConsulSessionStore::connect(&config(consul.address()), "lost_server", TTL * 30)
        .await
        .expect("connect");
    store
        .bind(session(1, "node-a", 10), BindPolicy::Reject)
        .await
        .expect("bind");

    let destroyed = destroy_sessions_named(consul.address(), "/lost_server/sessions/node-a").await;
    assert_eq!(destroyed, 1, "node-a's sessions hang on one consul session");

    assert_eq!(
        store.get(UserId(1)).await.expect("get"),
        None,
        "the sessions held by a destroyed consul session are gone"
    );
    assert_eq!(
        store
            .bind(session(2, "node-a", 20), BindPolicy::Reject)
            .await
            .expect("bind after the consul session was lost"),
        BindOutcome::Bound
    );
    assert_eq!(
        store
            .get(UserId(2))
            .await
            .expect("get")
            .map(|s| s.reference()),
        Some(session(2, "node-a", 20).reference())
    );
    store
        .refresh_server(&server_id("node-a"))
        .await
        .expect("refresh under the new consul session");
    assert_eq!(store.count_online().await.expect("count"), 1);
}
