//! A real multi-process cluster: one `cim route` and two `cim server` processes sharing Redis
//! (discovery, sessions) and PostgreSQL (accounts, messages), configured by a file alone, as a
//! deployment runs them. Users on different servers chat; a server is killed with SIGKILL and
//! its user comes back through the other server without losing a message.

mod common;

use cim_backend_fixtures::{postgres, redis};
use common::{cluster_config, connect, fixture, free_port, next_body, server_env, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_and_a_route_on_redis_and_postgres_survive_losing_a_server() {
    let Some(redis) = fixture(redis::redis).await else {
        return;
    };
    let Some(postgres) = fixture(postgres::postgres).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let route_port = free_port();
    let config = cluster_config(
        dir.path(),
        "cluster_test",
        &format!(
            "backend = \"redis\"\nurl = \"{}\"\nttl = \"2s\"",
            redis.address()
        ),
        &format!(
            "backend = \"redis\"\nurl = \"{}\"\nttl = \"3s\"",
            redis.address()
        ),
        &postgres.address(),
        route_port,
    );

    let (one, one_internal, two, two_internal) =
        (free_port(), free_port(), free_port(), free_port());
    let mut node_one = start(
        "server",
        &config,
        &server_env("node-1", one, one_internal),
        "is running",
    )
    .await;
    let _node_two = start(
        "server",
        &config,
        &server_env("node-2", two, two_internal),
        "is running",
    )
    .await;
    let _route = start("route", &config, &[], "is running").await;
    let route_url = format!("http://127.0.0.1:{route_port}");

    // Round robin over two servers: two logins in a row land on different servers.
    let (alice, mut alice_events) = connect(&route_url, "alice").await;
    let (bob, mut bob_events) = connect(&route_url, "bob").await;
    let alice_server = alice.info();
    let bob_server = bob.info();
    assert_ne!(
        alice_server.server_id, bob_server.server_id,
        "round robin puts alice and bob on different servers"
    );

    alice
        .send_to_user(bob_server.user_id, "across servers")
        .await
        .expect("sent");
    assert_eq!(next_body(&mut bob_events).await, "across servers");
    bob.send_to_user(alice_server.user_id, "and back")
        .await
        .expect("sent");
    assert_eq!(next_body(&mut alice_events).await, "and back");

    // Kill the server of whoever is on node-1; the other keeps sending meanwhile.
    let on_one = alice_server.server_id == "node-1";
    let (victim, mut victim_events, survivor) = if on_one {
        (alice, alice_events, bob)
    } else {
        (bob, bob_events, alice)
    };
    node_one.start_kill().expect("SIGKILL node-1");
    let _ = node_one.wait().await;
    for i in 0..20 {
        survivor
            .send_to_user(victim.info().user_id, format!("during the outage {i}"))
            .await
            .expect("stored while the recipient's server is down");
    }
    for i in 0..20 {
        assert_eq!(
            next_body(&mut victim_events).await,
            format!("during the outage {i}"),
            "every message arrives, in order, after the reconnect"
        );
    }
    assert_eq!(
        victim.info().server_id,
        "node-2",
        "the victim reconnected to the surviving server"
    );
}
