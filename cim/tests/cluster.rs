//! A real multi-process cluster: one `cim route` and two `cim server` processes sharing Redis
//! (discovery, sessions) and PostgreSQL (accounts, messages), configured by a file alone, as a
//! deployment runs them. Users on different servers chat; a server is killed with SIGKILL and
//! its user comes back through the other server without losing a message. Users the
//! application vouches for with its own tokens (HS256, and RS256 checked against a JWKS file)
//! chat across the servers without ever having had an account. A cluster whose every store is
//! on a Redis Cluster keeps chatting when the Redis primary holding its messages crashes.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cim_backend_fixtures::{postgres, redis, redis_cluster};
use cim_client::{Client, ClientBuilder, Events, Outgoing, ReconnectPolicy};
use common::{
    cluster_config, cluster_config_with, connect, fixture, free_port, log_in, next_body,
    server_env, start,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// `node-1` and `node-2` and a route, on Redis (meta, sessions) and PostgreSQL (accounts,
/// messages), every process configured by one file.
struct TwoServers {
    route_url: String,
    node_one: tokio::process::Child,
    _node_two: tokio::process::Child,
    _route: tokio::process::Child,
    _dir: tempfile::TempDir,
    // Dropped last: the backends outlive the processes using them.
    _redis: redis::RedisTarget,
    _postgres: postgres::PostgresTarget,
}

impl TwoServers {
    /// The cluster under `namespace`, the route started with `route_env` as well; `None` when
    /// a backend is missing (the fixture says SKIPPED and why).
    async fn start(namespace: &str, route_env: &[(&str, String)]) -> Option<TwoServers> {
        let redis = fixture(redis::redis).await?;
        let postgres = fixture(postgres::postgres).await?;
        let dir = tempfile::tempdir().expect("temporary directory");
        let route_port = free_port();
        let config = cluster_config(
            dir.path(),
            namespace,
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
        let [node_one, node_two, route] = start_two_servers(&config, route_env).await;
        Some(TwoServers {
            _redis: redis,
            _postgres: postgres,
            route_url: format!("http://127.0.0.1:{route_port}"),
            node_one,
            _node_two: node_two,
            _route: route,
            _dir: dir,
        })
    }

    /// SIGKILLs node-1: no deregistration, no goodbye.
    async fn kill_node_one(&mut self) {
        self.node_one.start_kill().expect("SIGKILL node-1");
        let _ = self.node_one.wait().await;
    }
}

/// `node-1`, `node-2` and a route (started with `route_env` as well), every process configured
/// by the file `config`, each awaited until it runs.
async fn start_two_servers(
    config: &std::path::Path,
    route_env: &[(&str, String)],
) -> [tokio::process::Child; 3] {
    let (one, one_internal, two, two_internal) =
        (free_port(), free_port(), free_port(), free_port());
    let node_one = start(
        "server",
        config,
        &server_env("node-1", one, one_internal),
        "is running",
    )
    .await;
    let node_two = start(
        "server",
        config,
        &server_env("node-2", two, two_internal),
        "is running",
    )
    .await;
    let route = start("route", config, route_env, "is running").await;
    [node_one, node_two, route]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_and_a_route_on_redis_and_postgres_survive_losing_a_server() {
    let Some(mut cluster) = TwoServers::start("cluster_test", &[]).await else {
        return;
    };
    let route_url = cluster.route_url.clone();

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
    cluster.kill_node_one().await;
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

/// The message bodies `events` yields until the server kicks the session.
async fn bodies_until_kicked(events: &mut Events) -> Vec<String> {
    let mut bodies = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Some(cim_client::Event::Message(message)) => bodies.push(message.body),
                Some(cim_client::Event::Kicked { .. }) => return,
                Some(_) => continue,
                None => panic!("the event stream ended without a kick"),
            }
        }
    })
    .await
    .expect("the old session is kicked");
    bodies
}

/// The index `i` of a body `m{i}`.
fn index_of(body: &str) -> usize {
    body.strip_prefix('m')
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("an unexpected message {body:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_moving_between_servers_while_messages_flow_gets_each_one_and_nobody_else_does() {
    const TOTAL: usize = 200;
    let Some(cluster) = TwoServers::start("move_test", &[]).await else {
        return;
    };
    let route_url = cluster.route_url.clone();
    // Round robin: alice and carol on one server, bob (first login) and dave on the other; bob's
    // second login is the fifth, and lands beside alice.
    let (alice, _alice_events) = connect(&route_url, "alice").await;
    let (bob, mut bob_events) = connect(&route_url, "bob").await;
    let (carol, mut carol_events) = connect(&route_url, "carol").await;
    let (_dave, _dave_events) = connect(&route_url, "dave").await;
    let bob_id = bob.info().user_id;
    let first_server = bob.info().server_id.clone();
    assert_ne!(alice.info().server_id, first_server);

    let sender = tokio::spawn(async move {
        // Faster than the per-user message limit allows (50/s after a burst of 100): a
        // rate-limited send is retried with its id, as an application would.
        for i in 0..TOTAL {
            let id = format!("m{i}");
            send_until_acknowledged(&alice, bob_id, &id, &id).await;
        }
        alice
    });
    let mut first: Vec<String> = Vec::new();
    while first.len() < 50 {
        first.push(next_body(&mut bob_events).await);
    }

    // bob moves while alice keeps sending: his new session replaces the old one.
    let (moved, mut moved_events) = log_in(&route_url, "bob", false).await;
    assert_ne!(
        moved.info().server_id,
        first_server,
        "bob moved to the other server"
    );
    first.extend(bodies_until_kicked(&mut bob_events).await);
    let mut second: Vec<String> = Vec::new();
    while second.last().map(|b| index_of(b)) != Some(TOTAL - 1) {
        second.push(next_body(&mut moved_events).await);
    }
    let alice = sender.await.expect("every message is acknowledged");

    // No loss: what the old session got, then what the new one got, covers every message; each
    // session saw its messages in order, without a gap.
    let first: Vec<usize> = first.iter().map(|b| index_of(b)).collect();
    let second: Vec<usize> = second.iter().map(|b| index_of(b)).collect();
    assert_eq!(
        first,
        (0..first.len()).collect::<Vec<_>>(),
        "the old session, in order"
    );
    let resume = second[0];
    assert!(
        resume <= first.len(),
        "the new session starts at or before where the old one stopped ({resume} > {})",
        first.len()
    );
    assert_eq!(
        second,
        (resume..TOTAL).collect::<Vec<_>>(),
        "the new session, in order"
    );

    // No misdelivery: carol, online all along, got none of them; her first message is hers.
    send_until_acknowledged(&alice, carol.info().user_id, "for-carol", "for carol").await;
    assert_eq!(next_body(&mut carol_events).await, "for carol");
}

/// The shared secret of the application in [`application_tokens_log_in_users_who_have_no_account_across_a_cluster`].
const APP_SECRET: &str = "the application's secret, 32 bytes or more";

/// The route tests' key pairs (test keys only: see cim-route/tests/keys/README.md).
fn test_key(file: &str) -> String {
    format!(
        "{}/../cim-route/tests/keys/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A token the application mints for `subject`, valid for ten minutes: HS256 with the shared
/// secret, or RS256 with the test RSA key under the JWKS's `kid`.
fn app_token(subject: &str, rs256: bool) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 600;
    let claims = serde_json::json!({"sub": subject, "exp": exp});
    if rs256 {
        let pem = std::fs::read(test_key("rsa-private.pem")).expect("the test RSA key");
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("test-rsa".into());
        let key = EncodingKey::from_rsa_pem(&pem).expect("a private key");
        jsonwebtoken::encode(&header, &claims, &key).expect("sign")
    } else {
        let key = EncodingKey::from_secret(APP_SECRET.as_bytes());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("sign")
    }
}

async fn connect_with_token(route: &str, token: String) -> (Client, Events) {
    let client = ClientBuilder::new(route)
        .token(token)
        .reconnect(ReconnectPolicy::default().initial_backoff(Duration::from_millis(100)))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("an application token logs in: {e}"));
    let events = client.events().expect("the event stream is taken once");
    (client, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_tokens_log_in_users_who_have_no_account_across_a_cluster() {
    // The application's keys come from the environment, as a deployment would pass them.
    let route_env = [
        (
            "CIM_ROUTE__APP_TOKENS__HS256_SECRET",
            APP_SECRET.to_string(),
        ),
        ("CIM_ROUTE__APP_TOKENS__JWKS", test_key("jwks.json")),
    ];
    let Some(mut cluster) = TwoServers::start("app_tokens_test", &route_env).await else {
        return;
    };
    let route_url = cluster.route_url.clone();

    let (hana, mut hana_events) = connect_with_token(&route_url, app_token("hana", false)).await;
    let (ravi, mut ravi_events) = connect_with_token(&route_url, app_token("ravi", true)).await;
    let (hana_at, ravi_at) = (hana.info(), ravi.info());
    assert_eq!(
        (hana_at.user_name.as_str(), ravi_at.user_name.as_str()),
        ("hana", "ravi")
    );
    assert_ne!(
        hana_at.server_id, ravi_at.server_id,
        "round robin: two servers"
    );
    hana.send_to_user(ravi_at.user_id, "from hana")
        .await
        .expect("sent");
    assert_eq!(next_body(&mut ravi_events).await, "from hana");
    ravi.send_to_user(hana_at.user_id, "from ravi")
        .await
        .expect("sent");
    assert_eq!(next_body(&mut hana_events).await, "from ravi");

    // A password account of the same name is never the application's user: sign-up takes
    // the name first, and the application's token for it is refused.
    let (_mallory, _) = connect(&route_url, "mallory").await;
    let refused = ClientBuilder::new(&route_url)
        .token(app_token("mallory", false))
        .connect()
        .await;
    assert!(
        matches!(refused, Err(cim_client::ClientError::AlreadyExists(_))),
        "{refused:?}"
    );

    // Whoever is on node-1 loses it, resumes the login on node-2 and gets what was sent.
    let (victim, mut victim_events, survivor) = if hana_at.server_id == "node-1" {
        (hana, hana_events, ravi)
    } else {
        (ravi, ravi_events, hana)
    };
    cluster.kill_node_one().await;
    survivor
        .send_to_user(victim.info().user_id, "during the outage")
        .await
        .expect("stored while the recipient's server is down");
    assert_eq!(next_body(&mut victim_events).await, "during the outage");
    assert_eq!(victim.info().server_id, "node-2");
}

/// The TOML lines of a Redis store on the cluster of `nodes`, with `extra` lines.
fn on_redis_cluster(nodes: &[String], extra: &str) -> String {
    let list: Vec<String> = nodes.iter().map(|node| format!("\"{node}\"")).collect();
    format!(
        "backend = \"redis\"\ncluster_nodes = [{}]\nconnect_timeout = \"1s\"\nresponse_timeout = \"1s\"\n{extra}",
        list.join(", ")
    )
}

/// Sends `body` from `client` to `user` with the id `id`, again with the same id (so never
/// stored twice) until the server acknowledges it or 30 s pass.
async fn send_until_acknowledged(client: &Client, user: u64, id: &str, body: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let outgoing = Outgoing::to_user(user, body).client_msg_id(id);
        match client.send(outgoing).await {
            Ok(_) => return,
            Err(error) if tokio::time::Instant::now() < deadline => {
                // A back-off between retries, not synchronisation: the acknowledgement is the
                // event awaited.
                eprintln!("send {id} again after: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("{id} was never acknowledged: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_redis_cluster_keeps_chatting_after_losing_the_primary_of_its_messages() {
    let Some(mut target) = fixture(redis_cluster::redis_cluster)
        .await
        .and_then(|target| target.owned())
    else {
        return;
    };
    let Some(redis_cluster) = target.server_mut() else {
        return;
    };
    let nodes = redis_cluster.urls();
    let dir = tempfile::tempdir().expect("temporary directory");
    let route_port = free_port();
    let namespace = "on_redis_cluster";
    let config = cluster_config_with(
        dir.path(),
        namespace,
        [
            &on_redis_cluster(&nodes, "ttl = \"10s\""),
            &on_redis_cluster(&nodes, "ttl = \"10s\""),
            &on_redis_cluster(&nodes, ""),
            &on_redis_cluster(&nodes, ""),
        ],
        route_port,
    );
    let _processes = start_two_servers(&config, &[]).await;
    let route_url = format!("http://127.0.0.1:{route_port}");

    let (alice, mut alice_events) = connect(&route_url, "alice").await;
    let (bob, mut bob_events) = connect(&route_url, "bob").await;
    assert_ne!(
        alice.info().server_id,
        bob.info().server_id,
        "round robin puts alice and bob on different servers"
    );
    let (alice_id, bob_id) = (alice.info().user_id, bob.info().user_id);
    alice.send_to_user(bob_id, "before").await.expect("sent");
    assert_eq!(next_body(&mut bob_events).await, "before");

    // The primary of the message store's slot crashes once its replica has everything.
    let messages_slot = format!("{{{namespace}:msg}}:");
    let (dead, promoted) = tokio::task::block_in_place(|| {
        let dead = redis_cluster
            .primary_of(&messages_slot)
            .expect("the slot's primary");
        redis_cluster
            .await_replicated(dead)
            .expect("the replica caught up");
        redis_cluster.kill(dead);
        let promoted = redis_cluster
            .await_primary_of(&messages_slot, dead)
            .expect("a replica takes over");
        (dead, promoted)
    });
    assert_ne!(dead, promoted);

    // Both servers and the route carry on: messages are stored on the promoted replica and
    // delivered across the servers, each exactly once and in order.
    for i in 0..10 {
        send_until_acknowledged(&alice, bob_id, &format!("after-{i}"), &format!("after {i}")).await;
    }
    for i in 0..10 {
        assert_eq!(next_body(&mut bob_events).await, format!("after {i}"));
    }
    send_until_acknowledged(&bob, alice_id, "reply", "and back").await;
    assert_eq!(next_body(&mut alice_events).await, "and back");

    // The history on the new primary holds what came before the crash, with nothing twice.
    let history = bob
        .history(
            cim_client::Conversation::direct(alice_id, bob_id),
            None,
            None,
            Some(50),
        )
        .await
        .expect("history after the failover");
    let bodies: Vec<String> = history.iter().map(|m| m.body.clone()).collect();
    let mut expected = vec!["before".to_string()];
    expected.extend((0..10).map(|i| format!("after {i}")));
    expected.push("and back".to_string());
    assert_eq!(bodies, expected);
}
