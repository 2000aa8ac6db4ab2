//! The SDK against the real thing: a cim-route and cim-servers in this process, over memory
//! stores, on loopback ports. The scenarios of the original cim's integration tests, seen from
//! the client.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cim_client::{
    Client, ClientBuilder, ConnectionState, Conversation, DisconnectReason, Event, Events,
    KickReason, ReconnectPolicy,
};
use cim_core::balancer::ConsistentHash;
use cim_core::embedded::memory::{
    MemoryAccountStore, MemoryMessageStore, MemoryMetaStore, MemorySessionStore,
};
use cim_core::token::TokenKey;
use cim_core::{NameRules, ServerId, Stores};
use cim_pipeline::rate_limit::Allowance;
use cim_pipeline::{LimitsConfig, RateLimit};
use cim_route::{LoginLimits, Route, RouteConfig};
use cim_server::{RunningServer, Server, ServerConfig};
use support::{next_event, next_message, wait_for_state, within};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A route and servers sharing memory stores.
struct System {
    route_url: String,
    servers: Vec<RunningServer>,
    _stop_route: oneshot::Sender<()>,
}

impl System {
    /// A route and one server per id, the route seeing every server.
    async fn start(server_ids: &[&str]) -> System {
        Self::start_with(server_ids, test_route_config(), generous_limits()).await
    }

    /// As [`System::start`], with the route's own configuration and limits.
    async fn start_with(
        server_ids: &[&str],
        route_config: RouteConfig,
        route_limits: LimitsConfig,
    ) -> System {
        let stores = Stores {
            meta: Arc::new(MemoryMetaStore::new(Duration::from_secs(1))),
            sessions: Arc::new(MemorySessionStore::new(Duration::from_secs(1))),
            accounts: Arc::new(MemoryAccountStore::new()),
            messages: Arc::new(MemoryMessageStore::new()),
            balancer: Arc::new(ConsistentHash::new(16).expect("valid ring")),
        };
        let key = TokenKey::new(&[42; 32]).expect("key");
        let mut servers = Vec::new();
        for id in server_ids {
            servers.push(start_server(&stores, &key, id).await);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let route_url = format!("http://{}", listener.local_addr().expect("addr"));
        let route = Route::new(
            route_config,
            stores.clone(),
            key.clone(),
            NameRules::default(),
            route_limits,
        )
        .expect("valid limits");
        let mut seen = route.servers();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(route.serve(listener, async {
            let _ = stopped.await;
        }));
        let expected = server_ids.len();
        within(
            "the route to see every server",
            seen.wait_for(|servers| servers.len() == expected),
        )
        .await
        .expect("route alive");
        System {
            route_url,
            servers,
            _stop_route: stop,
        }
    }

    /// A builder for `name`, creating the account on first use.
    fn user(&self, name: &str) -> ClientBuilder {
        ClientBuilder::new(&self.route_url)
            .credentials(name, format!("password-of-{name}"))
            .reconnect(
                ReconnectPolicy::default()
                    .initial_backoff(Duration::from_millis(50))
                    .max_backoff(Duration::from_millis(200)),
            )
    }

    /// Registers and connects `name`; the client and its events.
    async fn join(&self, name: &str) -> (Client, Events) {
        let client = within("connecting", self.user(name).register(true).connect())
            .await
            .expect("connects");
        let events = client.events().expect("stream");
        (client, events)
    }

    /// Takes the server `id` out of the system.
    fn take_server(&mut self, id: &str) -> RunningServer {
        let at = self
            .servers
            .iter()
            .position(|server| server.id().as_str() == id)
            .expect("known server");
        self.servers.remove(at)
    }
}

/// The route's defaults, with login and sign-up limits no test here reaches (every client
/// comes from 127.0.0.1).
fn test_route_config() -> RouteConfig {
    let plenty = Allowance::new(10_000, Duration::from_millis(1));
    RouteConfig {
        logins: LoginLimits {
            failures_per_account_and_source: plenty,
            failures_per_account: plenty,
            failures_per_source: plenty,
            checks_per_account: 1_000,
            checks_per_source: 1_000,
            max_checks: 1_000,
            signups_per_source: plenty,
        },
        ..RouteConfig::default()
    }
}

/// Limits no test here reaches.
fn generous_limits() -> LimitsConfig {
    LimitsConfig::default().with_rates(RateLimit::new(10_000, 10_000))
}

async fn start_server(stores: &Stores, key: &TokenKey, id: &str) -> RunningServer {
    let config = ServerConfig {
        listen: "127.0.0.1:0".into(),
        internal_listen: "127.0.0.1:0".into(),
        session_refresh: Duration::from_millis(500),
        load_report: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    Server::builder(ServerId::new(id).expect("id"), stores.clone(), key.clone())
        .config(config)
        .limits(generous_limits())
        .start()
        .await
        .expect("server starts")
}

/// The next message's body.
async fn next_body(events: &mut Events) -> String {
    next_message(events).await.body
}

#[tokio::test]
async fn only_the_addressee_of_a_private_message_receives_it() {
    let system = System::start(&["s1"]).await;
    let (alice, _alice_events) = system.join("alice").await;
    let (bob, mut bob_events) = system.join("bob").await;
    let (carol, mut carol_events) = system.join("carol").await;

    let receipt = alice
        .send_to_user(bob.info().user_id, "hi bob")
        .await
        .expect("stored");
    alice
        .send_to_user(carol.info().user_id, "hi carol")
        .await
        .expect("stored");

    let message = next_message(&mut bob_events).await;
    assert_eq!(message.body, "hi bob");
    assert_eq!(message.sender_name, "alice");
    assert_eq!(message.sender_id, alice.info().user_id);
    assert_eq!(
        message.conversation,
        Conversation::direct(alice.info().user_id, bob.info().user_id)
    );
    assert_eq!(Some(message.message_id), receipt.message_id());
    assert!(!message.offline);
    assert_eq!(
        next_body(&mut carol_events).await,
        "hi carol",
        "carol's first message is hers, not bob's"
    );
}

#[tokio::test]
async fn a_batch_of_messages_keeps_its_order() {
    let system = System::start(&["s1"]).await;
    let (alice, _alice_events) = system.join("alice").await;
    let (bob, mut bob_events) = system.join("bob").await;
    let bob_id = bob.info().user_id;

    let sends = (0..50).map(|n| alice.send_to_user(bob_id, format!("m{n}")));
    for receipt in futures::future::join_all(sends).await {
        receipt.expect("stored");
    }
    for n in 0..50 {
        let message = next_message(&mut bob_events).await;
        assert_eq!((message.body, message.seq), (format!("m{n}"), n + 1));
    }
}

#[tokio::test]
async fn a_private_message_sent_while_offline_arrives_after_login() {
    let system = System::start(&["s1"]).await;
    let (alice, _alice_events) = system.join("alice").await;
    let (bob, _bob_events) = system.join("bob").await;
    let bob_id = bob.info().user_id;
    bob.close().await;

    alice
        .send_to_user(bob_id, "while you were out")
        .await
        .expect("stored for later");

    let bob = within("bob again", system.user("bob").connect())
        .await
        .expect("connects");
    let mut bob_events = bob.events().expect("stream");
    let message = next_message(&mut bob_events).await;
    assert_eq!(message.body, "while you were out");
    assert!(message.offline, "it waited for bob");
}

#[tokio::test]
async fn a_stored_message_no_frame_can_carry_is_skipped_with_an_event_and_delivery_goes_on() {
    // A deployment whose route accepts bodies its servers' frames cannot carry (its [limits]
    // and [server] sections disagree): what the route stored must never wedge a recipient.
    let mut route_limits = generous_limits();
    route_limits.max_body_len = 100_000;
    let route_config = RouteConfig {
        max_request_len: 1 << 20,
        max_frame_len: 1 << 20,
        ..test_route_config()
    };
    let system = System::start_with(&["s1"], route_config, route_limits).await;
    let (alice, _alice_events) = system.join("alice").await;
    let (bob, _bob_events) = system.join("bob").await;
    let bob_id = bob.info().user_id;
    bob.close().await;

    let http = reqwest::Client::new();
    let login: serde_json::Value = http
        .post(format!("{}/api/v1/login", system.route_url))
        .json(&serde_json::json!({"name": "alice", "password": "password-of-alice"}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login body");
    let token = login["token"].as_str().expect("a token").to_string();
    let sent = http
        .post(format!("{}/api/v1/messages", system.route_url))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "to_user": bob_id, "client_msg_id": "big", "body": "x".repeat(70_000)
        }))
        .send()
        .await
        .expect("send");
    assert_eq!(
        sent.status(),
        200,
        "the route stores it: {:?}",
        sent.text().await
    );
    alice
        .send_to_user(bob_id, "after the big one")
        .await
        .expect("stored");

    // Bob logs in: the big message is reported and skipped, the next one arrives, and so do
    // live messages afterwards, on the same connection.
    let bob = within("bob again", system.user("bob").connect())
        .await
        .expect("connects");
    let mut bob_events = bob.events().expect("stream");
    let skipped = loop {
        match next_event(&mut bob_events).await {
            Event::Undeliverable { seq, text, .. } => break (seq, text),
            Event::State(_) => continue,
            other => panic!("expected the skipped message first, got {other:?}"),
        }
    };
    assert_eq!(skipped.0, 1, "{}", skipped.1);
    assert!(skipped.1.contains("frame"), "{}", skipped.1);
    let next = next_message(&mut bob_events).await;
    assert_eq!((next.seq, next.body.as_str()), (2, "after the big one"));
    let connection = bob.info().connection_id;
    alice.send_to_user(bob_id, "live").await.expect("stored");
    assert_eq!(next_body(&mut bob_events).await, "live");
    assert_eq!(bob.info().connection_id, connection, "never reconnected");

    // Acknowledged past: a later login does not get it again.
    bob.close().await;
    let bob = within("bob once more", system.user("bob").connect())
        .await
        .expect("connects");
    let mut bob_events = bob.events().expect("stream");
    alice.send_to_user(bob_id, "fresh").await.expect("stored");
    assert_eq!(next_body(&mut bob_events).await, "fresh");
}

#[tokio::test]
async fn the_client_refreshes_its_token_so_its_connection_outlives_the_first_one() {
    let route_config = RouteConfig {
        token_ttl: Duration::from_secs(3),
        ..test_route_config()
    };
    let system = System::start_with(&["s1"], route_config, generous_limits()).await;
    let (alice, mut alice_events) = system.join("alice").await;
    let (bob, _bob_events) = system.join("bob").await;
    let connection = alice.info().connection_id;
    // Past two lifetimes of the first token: the server would have closed a connection that
    // kept it (Kicked TOKEN_EXPIRED, then a reconnect with a new connection id).
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(alice.info().connection_id, connection, "never reconnected");
    assert!(matches!(alice.state(), ConnectionState::Connected { .. }));
    bob.send_to_user(alice.info().user_id, "still there?")
        .await
        .expect("stored");
    assert_eq!(next_body(&mut alice_events).await, "still there?");
    // And the HTTP calls use the fresh token.
    alice
        .my_groups()
        .await
        .expect("an HTTP call with the refreshed token");
}

#[tokio::test]
async fn group_messages_reach_members_and_history_keeps_them() {
    let system = System::start(&["s1"]).await;
    let (alice, _alice_events) = system.join("alice").await;
    let (bob, mut bob_events) = system.join("bob").await;

    let group = alice.create_group("team").await.expect("created");
    alice
        .add_member(group.group_id, bob.info().user_id)
        .await
        .expect("added");
    alice
        .send_to_group(group.group_id, "hello team")
        .await
        .expect("stored");

    let message = next_message(&mut bob_events).await;
    assert_eq!(message.conversation, Conversation::Group(group.group_id));
    assert_eq!(message.body, "hello team");
    let history = bob
        .history(Conversation::Group(group.group_id), None, None, None)
        .await
        .expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].body, "hello team");
    let groups = bob.my_groups().await.expect("groups");
    assert_eq!(groups.first().map(|g| g.name.as_str()), Some("team"));
}

#[tokio::test]
async fn a_client_whose_server_stops_reconnects_to_another_and_chats_again() {
    let mut system = System::start(&["s1", "s2"]).await;
    let (alice, mut alice_events) = system.join("alice").await;
    let (bob, mut bob_events) = system.join("bob").await;
    let first_server = alice.info().server_id;

    system
        .take_server(&first_server)
        .shutdown()
        .await
        .expect("clean shutdown");

    let seen = wait_for_state(&mut alice_events, |state| {
        matches!(state, ConnectionState::Connected { server_id } if *server_id != first_server)
    })
    .await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::State(ConnectionState::Reconnecting { .. }))),
        "{seen:?}"
    );
    assert_ne!(alice.info().server_id, first_server);

    // Bob may have been on the stopped server too; either way the chat works again.
    within("bob on a live server", async {
        while bob.info().server_id == first_server
            || !matches!(bob.state(), ConnectionState::Connected { .. })
        {
            next_event(&mut bob_events).await;
        }
    })
    .await;
    bob.send_to_user(alice.info().user_id, "still there?")
        .await
        .expect("stored");
    assert_eq!(next_body(&mut alice_events).await, "still there?");
}

#[tokio::test]
async fn a_client_of_an_expired_application_token_resumes_its_login_on_another_server() {
    const SECRET: &str = "the application's secret, 32 bytes or more";
    let mut route_config = test_route_config();
    route_config.app_tokens.hs256_secret = Some(SECRET.into());
    route_config.app_tokens.leeway = Duration::ZERO;
    let mut system = System::start_with(&["s1", "s2"], route_config, generous_limits()).await;
    // The application's token is good for about a second: long enough to log in once.
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 1;
    let app_token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "walt", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    let builder = || {
        ClientBuilder::new(&system.route_url)
            .token(app_token.clone())
            .reconnect(
                ReconnectPolicy::default()
                    .initial_backoff(Duration::from_millis(50))
                    .max_backoff(Duration::from_millis(200)),
            )
    };
    let walt = within("connecting", builder().connect())
        .await
        .expect("the application's token logs walt in");
    let mut events = walt.events().expect("stream");
    let first_server = walt.info().server_id;

    // Wait for the application's token to expire (the time is the test's subject here): from
    // then on only the cim login it gave can bring walt back.
    let expired_at = std::time::UNIX_EPOCH + Duration::from_secs(exp + 1);
    if let Ok(left) = expired_at.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(50)).await;
    }
    let refused = within("a login with the expired token", builder().connect()).await;
    assert!(
        matches!(refused, Err(cim_client::ClientError::Unauthenticated(_))),
        "the application's token has expired: {refused:?}"
    );

    let user_id = walt.info().user_id;
    system
        .take_server(&first_server)
        .shutdown()
        .await
        .expect("clean shutdown");
    wait_for_state(&mut events, |state| {
        matches!(state, ConnectionState::Connected { server_id } if *server_id != first_server)
    })
    .await;
    // Only a resume could do this: the application's token is refused now.
    assert_eq!(walt.info().user_id, user_id, "the same user, back");
}

#[tokio::test]
async fn a_second_login_kicks_the_first() {
    let system = System::start(&["s1"]).await;
    let (first, mut first_events) = system.join("alice").await;
    let _second = within("second login", system.user("alice").connect())
        .await
        .expect("connects");

    let seen = wait_for_state(&mut first_events, |state| {
        matches!(state, ConnectionState::Disconnected { .. })
    })
    .await;
    assert!(
        seen.contains(&Event::State(ConnectionState::Disconnected {
            reason: DisconnectReason::Kicked(KickReason::Replaced)
        })),
        "{seen:?}"
    );
    assert!(first.send_to_all("hello?").await.is_err());
}

#[tokio::test]
async fn logout_then_login_again_works() {
    let system = System::start(&["s1"]).await;
    let (alice, mut alice_events) = system.join("alice").await;
    alice.logout().await.expect("logged out");
    let seen = wait_for_state(&mut alice_events, |state| {
        matches!(state, ConnectionState::Disconnected { .. })
    })
    .await;
    assert_eq!(
        seen.last(),
        Some(&Event::State(ConnectionState::Disconnected {
            reason: DisconnectReason::LoggedOut
        }))
    );
    let again = within("login again", system.user("alice").connect())
        .await
        .expect("connects");
    assert!(matches!(again.state(), ConnectionState::Connected { .. }));
}

#[tokio::test]
async fn an_unknown_user_fails_cleanly() {
    let system = System::start(&["s1"]).await;
    let (alice, _events) = system.join("alice").await;
    let error = alice
        .send_to_user(999_999, "anyone?")
        .await
        .expect_err("no such user");
    assert!(
        matches!(error, cim_client::ClientError::NotFound(_)),
        "{error}"
    );
    alice
        .send_to_user(alice.info().user_id, "note to self")
        .await
        .expect("the connection is still usable");
}

#[tokio::test]
async fn killing_the_recipients_server_mid_stream_loses_and_duplicates_nothing() {
    const TOTAL: u64 = 1000;
    let mut system = System::start(&["s1", "s2"]).await;
    let (alice, _alice_events) = system.join("alice").await;
    let (bob, mut bob_events) = system.join("bob").await;
    let bob_id = bob.info().user_id;
    let bob_server = bob.info().server_id;

    let sender = tokio::spawn(async move {
        for chunk in 0..TOTAL / 50 {
            let sends = (0..50).map(|n| alice.send_to_user(bob_id, format!("{}", chunk * 50 + n)));
            for receipt in futures::future::join_all(sends).await {
                receipt.expect("every message is stored, across the crash too");
            }
        }
    });

    let mut seen = std::collections::BTreeSet::new();
    while (seen.len() as u64) < TOTAL {
        let message = next_message(&mut bob_events).await;
        assert!(
            seen.insert(message.seq),
            "seq {} reached the application twice",
            message.seq
        );
        if seen.len() == 300 {
            // A crash, not a shutdown: every task aborted, no goodbye to the clients.
            drop(system.take_server(&bob_server));
        }
    }
    within("the sender", sender).await.expect("sender task");
    assert_eq!(seen, (1..=TOTAL).collect(), "every sequence exactly once");
    assert_ne!(
        bob.info().server_id,
        bob_server,
        "bob moved to the live server"
    );
}
