//! Three `cim server` processes and a `cim route` discovering each other through a coordination
//! service (ZooKeeper, etcd), with accounts and messages in PostgreSQL, configured by a file
//! alone. One server is killed with SIGKILL: the route stops handing it out within the lease
//! TTL (its registration vanishes with its ZooKeeper session or etcd lease, nobody deregisters
//! it), and its users log in again on the other servers without losing a message.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cim_backend_fixtures::postgres;
use cim_client::{Client, Events};
use common::{STEP, cluster_config, connect, fixture, free_port, next_body, server_env, start};
use tokio::process::Child;

/// `[meta] ttl`: how long a dead server may stay registered (plus one more TTL of backend
/// tolerance, per the MetaStore contract).
const META_TTL: Duration = Duration::from_secs(2);

/// Polls the route's server list (`GET /api/v1/servers`, as `observer`) until `done` holds;
/// returns how long it took.
async fn await_servers(observer: &Client, done: impl Fn(&BTreeSet<String>) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let servers: BTreeSet<String> = observer
            .servers()
            .await
            .expect("GET /api/v1/servers")
            .into_iter()
            .map(|server| server.id)
            .collect();
        if done(&servers) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < STEP,
            "the route's server list never reached the expected state: {servers:?}"
        );
        // Polling an HTTP endpoint: nothing announces the change to a test from outside.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cluster under test: `meta_and_sessions` is the config of `[meta]` and `[sessions]` on
/// the coordination service (without `ttl`, which this test sets).
async fn three_servers_lose_one(name: &str, meta_and_sessions: impl Fn(&str) -> String) {
    let Some(postgres) = fixture(postgres::postgres).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let route_port = free_port();
    let config = cluster_config(
        dir.path(),
        &format!("cluster_{name}"),
        &format!(
            "{}\nttl = \"{}s\"",
            meta_and_sessions("meta"),
            META_TTL.as_secs()
        ),
        &format!("{}\nttl = \"3s\"", meta_and_sessions("sessions")),
        &postgres.address(),
        route_port,
    );

    let mut nodes: Vec<(String, Child)> = Vec::new();
    for id in ["node-1", "node-2", "node-3"] {
        let env = server_env(id, free_port(), free_port());
        nodes.push((
            id.to_string(),
            start("server", &config, &env, "is running").await,
        ));
    }
    let _route = start("route", &config, &[], "is running").await;
    let route = format!("http://127.0.0.1:{route_port}");
    let (observer, _observer_events) = connect(&route, "observer").await;
    await_servers(&observer, |servers| servers.len() == 3).await;

    // Round robin over three servers: six more logins put two users on each.
    let mut users: Vec<(Client, Events)> = Vec::new();
    for i in 0..6 {
        users.push(connect(&route, &format!("user{i}")).await);
    }
    let on = |server: &str| {
        users
            .iter()
            .filter(|(client, _)| client.info().server_id == server)
            .count()
    };
    assert_eq!(
        (on("node-1"), on("node-2"), on("node-3")),
        (2, 2, 2),
        "round robin spreads six users over three servers"
    );

    // SIGKILL: no deregistration, no goodbye to the coordination service.
    let (_, mut victim_node) = nodes.remove(0);
    victim_node.start_kill().expect("SIGKILL node-1");
    let _ = victim_node.wait().await;
    let (victims, survivors): (Vec<_>, Vec<_>) = users
        .into_iter()
        .partition(|(client, _)| client.info().server_id == "node-1");
    let gone_after = await_servers(&survivors[0].0, |servers| {
        !servers.contains("node-1") && servers.len() == 2
    })
    .await;
    assert!(
        gone_after <= 2 * META_TTL + Duration::from_secs(2),
        "node-1 left the route's list {gone_after:?} after its death; the lease TTL is {META_TTL:?}"
    );

    // Its users are back on the others and get what was sent to them meanwhile.
    let sender = &survivors[0].0;
    for (victim, _) in &victims {
        sender
            .send_to_user(victim.info().user_id, "after the crash")
            .await
            .expect("stored while the recipient reconnects");
    }
    for (victim, mut events) in victims {
        assert_eq!(next_body(&mut events).await, "after the crash");
        assert_ne!(
            victim.info().server_id,
            "node-1",
            "the victim logged in again on a live server"
        );
    }

    // New logins never land on the dead server.
    for i in 0..6 {
        let (client, _events) = connect(&route, &format!("late{i}")).await;
        assert_ne!(
            client.info().server_id,
            "node-1",
            "late{i} got a dead server"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_etcd_lose_one_and_its_users_log_in_elsewhere() {
    let Some(etcd) = fixture(cim_backend_fixtures::etcd::etcd).await else {
        return;
    };
    let endpoints = etcd
        .endpoints()
        .iter()
        .map(|endpoint| format!("\"{endpoint}\""))
        .collect::<Vec<_>>()
        .join(", ");
    three_servers_lose_one("etcd", |_| {
        format!("backend = \"etcd\"\nendpoints = [{endpoints}]")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_zookeeper_lose_one_and_its_users_log_in_elsewhere() {
    let Some(zookeeper) = fixture(cim_backend_fixtures::zookeeper::zookeeper).await else {
        return;
    };
    let connect = zookeeper.address();
    three_servers_lose_one("zookeeper", |_| {
        format!("backend = \"zookeeper\"\nconnect = \"{connect}\"")
    })
    .await;
}
