//! The life of one client connection: login, heartbeat, bad input, limits, replacement.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use cim_core::UserId;
use cim_pipeline::{LimitsConfig, RateLimit};
use cim_proto::v1::{self, Ping};
use cim_proto::{Body, ErrorCode, KickReason};
use support::{Cluster, TestClient, test_config, test_limits, to_user};

#[tokio::test]
async fn a_frame_before_login_is_refused_and_the_connection_closed() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let mut client = TestClient::connect(server.client_addr()).await;
    client.send(Body::Ping(Ping { nonce: 1 })).await;
    client.expect_error(ErrorCode::NotLoggedIn).await;
    client.expect_closed().await;
}

#[tokio::test]
async fn a_connection_that_never_logs_in_is_closed_after_the_login_timeout() {
    let cluster = Cluster::memory();
    let config = cim_server::ServerConfig {
        login_timeout: Duration::from_millis(200),
        ..test_config()
    };
    let server = cluster.start_with("s1", config).await;
    let mut client = TestClient::connect(server.client_addr()).await;
    client.expect_error(ErrorCode::NotLoggedIn).await;
    client.expect_closed().await;
}

#[tokio::test]
async fn a_bad_token_gets_unauthenticated_and_a_close() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let other_key = cim_core::token::TokenKey::new(&[1; 32]).unwrap();
    let (forged, _) = other_key
        .issue(UserId(1), "mallory", Duration::from_secs(60))
        .unwrap();
    for token in [forged.as_str(), "not a token"] {
        let mut client = TestClient::connect(server.client_addr()).await;
        client
            .send(Body::Login(v1::Login {
                token: token.into(),
                device: String::new(),
            }))
            .await;
        client.expect_error(ErrorCode::Unauthenticated).await;
        client.expect_closed().await;
    }
}

#[tokio::test]
async fn login_binds_a_session_on_this_server_and_ping_gets_pong() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let (alice, token) = cluster.user("alice").await;
    let mut client = TestClient::login(server.client_addr(), &token).await;
    let login = client.login.clone().unwrap();
    assert_eq!(login.user_id, alice.0);
    assert_eq!(login.server_id, "s1");
    assert_eq!(login.heartbeat_interval_ms, 1000);
    let session = cluster.stores.sessions.get(alice).await.unwrap().unwrap();
    assert_eq!(session.server_id.as_str(), "s1");
    assert_eq!(session.connection_id.0, login.connection_id);

    client.send(Body::Ping(Ping { nonce: 77 })).await;
    assert_eq!(client.next().await, Body::Pong(v1::Pong { nonce: 77 }));
}

#[tokio::test]
async fn malformed_and_oversized_frames_close_only_that_connection() {
    let cluster = Cluster::memory();
    let config = cim_server::ServerConfig {
        max_frame_len: 4096,
        ..test_config()
    };
    let limits = LimitsConfig {
        max_body_len: 1024,
        ..test_limits()
    };
    let server = cluster.start_with_limits("s1", config, limits).await;
    let (_, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let (_, carol_token) = cluster.user("carol").await;
    let (_, dave_token) = cluster.user("dave").await;
    let mut alice_client = TestClient::login(server.client_addr(), &alice_token).await;
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;

    // Garbage: a 3-byte frame that is not protobuf.
    let mut garbage = TestClient::login(server.client_addr(), &carol_token).await;
    garbage.send_raw(&[3, 0xff, 0xff, 0xff]).await;
    garbage.expect_error(ErrorCode::MalformedFrame).await;
    garbage.expect_closed().await;

    // Oversized: announce 100 KiB and start sending it.
    let mut oversized = TestClient::login(server.client_addr(), &dave_token).await;
    let mut bytes = Vec::new();
    prost::encoding::encode_varint(100 * 1024, &mut bytes);
    bytes.extend(std::iter::repeat_n(0u8, 8 * 1024));
    oversized.send_raw(&bytes).await;
    oversized.expect_error(ErrorCode::FrameTooLarge).await;
    oversized.expect_closed().await;

    // The neighbours chat on.
    alice_client
        .send_text(to_user(bob), "m1", "still here?")
        .await;
    alice_client.expect_ack().await;
    assert_eq!(bob_client.expect_deliver().await.body, "still here?");
}

#[tokio::test]
async fn sending_faster_than_the_rate_limit_is_refused_then_closed() {
    let cluster = Cluster::memory();
    let limits = LimitsConfig {
        messages: RateLimit::new(1, 3),
        // A frame bucket that refills slowly: a client whose frame bucket is full again is
        // forgiven its refusals, and test_limits' (10,000 per second) refilled within a slow
        // round trip, so the flood sometimes never closed.
        frames: RateLimit::new(10, 10_000),
        ..test_limits()
    };
    let server = cluster.start_with_limits("s1", test_config(), limits).await;
    let (_, alice_token) = cluster.user("alice").await;
    let (bob, _) = cluster.user("bob").await;
    let mut client = TestClient::login(server.client_addr(), &alice_token).await;
    for i in 0..3 {
        client
            .send_text(to_user(bob), &format!("ok-{i}"), "hi")
            .await;
        client.expect_ack().await;
    }
    // Three bursts' worth of refusals (9), the last of which closes the connection.
    for i in 0..9 {
        let id = format!("flood-{i}");
        client.send_text(to_user(bob), &id, "hi").await;
        let error = client.expect_error(ErrorCode::RateLimited).await;
        assert_eq!(error.client_msg_id, id);
    }
    client.expect_closed().await;
}

#[tokio::test]
async fn a_silent_connection_is_kicked_idle_and_its_session_unbound() {
    let cluster = Cluster::memory();
    let config = cim_server::ServerConfig {
        heartbeat_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let server = cluster.start_with("s1", config).await;
    let (alice, token) = cluster.user("alice").await;
    let mut client = TestClient::login(server.client_addr(), &token).await;
    client.expect_kicked(KickReason::Idle).await;
    client.expect_closed().await;
    // The unbind follows the close; poll the store briefly.
    let sessions = cluster.stores.sessions.clone();
    tokio::time::timeout(support::WAIT, async {
        while sessions.get(alice).await.unwrap().is_some() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("session unbound");
}

#[tokio::test]
async fn pinging_keeps_a_connection_alive_past_the_idle_timeout() {
    let cluster = Cluster::memory();
    let config = cim_server::ServerConfig {
        heartbeat_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..test_config()
    };
    let server = cluster.start_with("s1", config).await;
    let (_, token) = cluster.user("alice").await;
    let mut client = TestClient::login(server.client_addr(), &token).await;
    for nonce in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.send(Body::Ping(Ping { nonce })).await;
        assert_eq!(client.next().await, Body::Pong(v1::Pong { nonce }));
    }
}

#[tokio::test]
async fn a_second_login_kicks_the_first_with_replaced() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let (alice, token) = cluster.user("alice").await;
    let mut first = TestClient::login(server.client_addr(), &token).await;
    let second = TestClient::login(server.client_addr(), &token).await;
    first.expect_kicked(KickReason::Replaced).await;
    first.expect_closed().await;
    let session = cluster.stores.sessions.get(alice).await.unwrap().unwrap();
    assert_eq!(
        session.connection_id.0,
        second.login.unwrap().connection_id,
        "the old connection's close must not unbind the new session"
    );
}

#[tokio::test]
async fn under_the_reject_policy_a_second_login_is_refused() {
    let cluster = Cluster::memory();
    let config = cim_server::ServerConfig {
        login_policy: cim_core::BindPolicy::Reject,
        ..test_config()
    };
    let server = cluster.start_with("s1", config).await;
    let (_, token) = cluster.user("alice").await;
    let mut first = TestClient::login(server.client_addr(), &token).await;
    let mut second = TestClient::connect(server.client_addr()).await;
    second
        .send(Body::Login(v1::Login {
            token: token.clone(),
            device: String::new(),
        }))
        .await;
    second.expect_error(ErrorCode::Forbidden).await;
    second.expect_closed().await;
    assert!(first.ping_barrier().await.is_empty());
}

#[tokio::test]
async fn a_connection_ends_when_its_token_expires_unless_it_hands_over_a_fresh_one() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let (alice, _) = cluster.user("alice").await;
    let (bob, _) = cluster.user("bob").await;
    // Tokens expire on whole seconds: one issued for 2 s lives 1 to 2 s.
    let short_token = |user, name| {
        cluster
            .key
            .issue(user, name, Duration::from_secs(2))
            .unwrap()
            .0
    };
    let short = short_token(alice, "alice");
    let mut stays = TestClient::login(server.client_addr(), &short).await;
    let mut expires = TestClient::login(server.client_addr(), &short_token(bob, "bob")).await;
    let announced = stays.login.as_ref().unwrap().token_expires_at_ms;
    assert!(announced > 0, "the expiry is announced at login");

    let claims = cluster.key.verify(&short).unwrap();
    let (fresh, fresh_expiry) = cluster
        .key
        .refresh(&claims, Duration::from_secs(600))
        .unwrap();
    stays
        .send(Body::RefreshToken(v1::RefreshToken { token: fresh }))
        .await;
    match stays.next().await {
        Body::TokenRefreshed(refreshed) => {
            assert_eq!(refreshed.expires_at_ms, fresh_expiry.as_millis());
        }
        other => panic!("expected TokenRefreshed, got {other:?}"),
    }
    // A token of another login does not extend this one.
    let (other_login, _) = cluster
        .key
        .issue(bob, "bob", Duration::from_secs(600))
        .unwrap();
    expires
        .send(Body::RefreshToken(v1::RefreshToken { token: other_login }))
        .await;
    expires.expect_error(ErrorCode::Unauthenticated).await;

    expires.expect_kicked(KickReason::TokenExpired).await;
    expires.expect_closed().await;
    // The refreshed connection outlived the first token (both expire on the same second, or
    // bob's later: a token is expired from its expiry millisecond on).
    assert!(cim_core::Timestamp::now().as_millis() >= announced);
    stays.send(Body::Ping(Ping { nonce: 5 })).await;
    assert_eq!(stays.next().await, Body::Pong(v1::Pong { nonce: 5 }));
}

#[tokio::test]
async fn a_token_of_a_revoked_login_cannot_log_in() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let (_, token) = cluster.user("alice").await;
    let claims = cluster.key.verify(&token).unwrap();
    cluster
        .stores
        .accounts
        .revoke_session(&claims.session_id, claims.expires_at)
        .await
        .unwrap();
    let mut client = TestClient::connect(server.client_addr()).await;
    client
        .send(Body::Login(v1::Login {
            token,
            device: String::new(),
        }))
        .await;
    let error = client.expect_error(ErrorCode::Unauthenticated).await;
    assert!(error.text.contains("logged out"), "{}", error.text);
    client.expect_closed().await;
}

#[tokio::test]
async fn a_ping_flood_is_cut_off_and_the_neighbours_chat_on() {
    let cluster = Cluster::memory();
    let limits = LimitsConfig {
        frames: RateLimit::new(20, 20),
        ..test_limits()
    };
    let server = cluster.start_with_limits("s1", test_config(), limits).await;
    let (_, flood_token) = cluster.user("mallory").await;
    let (_, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let mut flood = TestClient::login(server.client_addr(), &flood_token).await;
    let mut alice = TestClient::login(server.client_addr(), &alice_token).await;
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;

    // Far more pings than the limit, as fast as the socket takes them.
    let mut sent = 0;
    while sent < 2_000 && flood.try_send(Body::Ping(Ping { nonce: sent })).await {
        sent += 1;
    }
    let (mut pongs, mut refused) = (0, 0);
    loop {
        match flood.next_or_closed().await {
            Some(Body::Pong(_)) => pongs += 1,
            Some(Body::Error(error)) if error.code == ErrorCode::RateLimited as i32 => {
                refused += 1;
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => break,
        }
    }
    assert!(
        pongs <= 40,
        "at most the burst and what refilled meanwhile: {pongs}"
    );
    assert_eq!(
        refused, 2,
        "one notice when the flood starts, one at the close"
    );

    alice
        .send_text(to_user(bob), "m1", "anyone flooding?")
        .await;
    alice.expect_ack().await;
    assert_eq!(bob_client.expect_deliver().await.body, "anyone flooding?");
}

#[tokio::test]
async fn errors_after_login_leave_the_connection_open_as_the_protocol_readme_says() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let (bob, _) = cluster.user("bob").await;
    let (_, token) = cluster.user("alice").await;
    let mut client = TestClient::login(server.client_addr(), &token).await;
    let login = client.login.clone().unwrap();
    assert_eq!(login.max_body_len, 16 * 1024, "the body limit is announced");

    client.send_text(to_user(bob), "", "no id").await;
    client.expect_error(ErrorCode::InvalidInput).await;
    client
        .send_text(to_user(UserId(bob.0 + 100)), "m1", "to nobody")
        .await;
    client.expect_error(ErrorCode::UnknownRecipient).await;
    client.ack("x:1", 3).await;
    client.expect_error(ErrorCode::InvalidInput).await;
    client.send(Body::Pong(v1::Pong { nonce: 1 })).await;
    client.expect_error(ErrorCode::InvalidInput).await;
    client
        .send(Body::RefreshToken(v1::RefreshToken {
            token: "forged".into(),
        }))
        .await;
    client.expect_error(ErrorCode::Unauthenticated).await;
    client.send(Body::Login(v1::Login::default())).await;
    client.expect_error(ErrorCode::InvalidInput).await;

    client.send(Body::Ping(Ping { nonce: 9 })).await;
    assert_eq!(client.next().await, Body::Pong(v1::Pong { nonce: 9 }));
}

/// Refreshes sessions every 50 ms, so an audit (every sixth refresh) comes within a third of a
/// second.
fn auditing_config() -> cim_server::ServerConfig {
    cim_server::ServerConfig {
        session_refresh: Duration::from_millis(50),
        ..test_config()
    }
}

/// The session store lost this server's sessions (it was stalled past the TTL, or the store lost
/// data) while the connections lived: the server binds them again, and each connection syncs
/// what senders only stored meanwhile, having seen the user offline.
#[tokio::test]
async fn sessions_the_store_lost_are_bound_again_and_their_connections_sync() {
    let cluster = Cluster::memory();
    let server = cluster.start_with("s1", auditing_config()).await;
    let (alice, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;
    let bound = cluster
        .stores
        .sessions
        .get(bob)
        .await
        .unwrap()
        .expect("bound");

    // What a lapse looks like from outside: the store no longer has the session.
    assert_eq!(
        cluster
            .stores
            .sessions
            .remove_server(server.id())
            .await
            .unwrap(),
        1
    );
    let mut alice_client = TestClient::login(server.client_addr(), &alice_token).await;
    alice_client
        .send_text(to_user(bob), "while-lost", "sent while bob looked offline")
        .await;
    alice_client.expect_ack().await;

    let deliver = bob_client.expect_deliver().await;
    assert_eq!(deliver.body, "sent while bob looked offline");
    assert_eq!(deliver.sender_id, alice.0);
    let rebound = cluster
        .stores
        .sessions
        .get(bob)
        .await
        .unwrap()
        .expect("bound again");
    assert_eq!(rebound.reference(), bound.reference());
    assert!(bob_client.ping_barrier().await.is_empty(), "sent once");
}

/// While this server was unreachable the user logged in elsewhere and the kick never arrived:
/// the audit finds the session taken by the other connection and kicks this one.
#[tokio::test]
async fn a_connection_whose_session_another_login_took_is_kicked_as_replaced() {
    let cluster = Cluster::memory();
    let server = cluster.start_with("s1", auditing_config()).await;
    let (bob, bob_token) = cluster.user("bob").await;
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;
    let elsewhere = cim_core::Session {
        user_id: bob,
        server_id: cim_core::ServerId::new("s2").unwrap(),
        connection_id: cim_core::ConnectionId(7),
        device: String::new(),
        login_at: cim_core::Timestamp::now(),
    };
    cluster
        .stores
        .sessions
        .bind(elsewhere.clone(), cim_core::BindPolicy::Replace)
        .await
        .unwrap();
    bob_client.expect_kicked(KickReason::Replaced).await;
    bob_client.expect_closed().await;
    let stored = cluster
        .stores
        .sessions
        .get(bob)
        .await
        .unwrap()
        .expect("bound");
    assert_eq!(
        stored.reference(),
        elsewhere.reference(),
        "the newer login stays"
    );
}

#[tokio::test]
async fn frames_written_together_are_answered_in_order_and_their_sends_stored_in_order() {
    use bytes::BytesMut;
    use cim_proto::{Frame, FrameCodec};
    use tokio_util::codec::Encoder;

    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let (_alice, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let mut alice = TestClient::login(server.client_addr(), &alice_token).await;
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;

    // One write: three sends, a ping, a send that fails, two more sends (one a retry).
    let send = |id: &str, to: cim_proto::v1::Recipient| {
        Body::Send(v1::Send {
            client_msg_id: id.into(),
            to: Some(to),
            body: format!("body of {id}"),
            deliver_at_ms: None,
        })
    };
    let frames = [
        send("m1", to_user(bob)),
        send("m2", to_user(bob)),
        send("m3", to_user(bob)),
        Body::Ping(Ping { nonce: 5 }),
        send("m4", to_user(UserId(999_999))),
        send("m5", to_user(bob)),
        send("m1", to_user(bob)),
    ];
    let mut codec: FrameCodec<Frame> = FrameCodec::default();
    let mut bytes = BytesMut::new();
    for body in frames {
        codec.encode(Frame::from(body), &mut bytes).unwrap();
    }
    alice.send_raw(&bytes).await;

    let mut seqs = Vec::new();
    for expected in ["m1", "m2", "m3"] {
        let ack = alice.expect_ack().await;
        assert_eq!(ack.client_msg_id, expected);
        seqs.push(ack.seq);
    }
    assert_eq!(alice.next().await, Body::Pong(v1::Pong { nonce: 5 }));
    let refused = alice.expect_error(ErrorCode::UnknownRecipient).await;
    assert_eq!(refused.client_msg_id, "m4");
    let m5 = alice.expect_ack().await;
    assert_eq!(m5.client_msg_id, "m5");
    seqs.push(m5.seq);
    let retry = alice.expect_ack().await;
    assert_eq!(
        (retry.client_msg_id.as_str(), retry.seq),
        ("m1", seqs[0]),
        "a retry in the same batch answers the first"
    );
    assert_eq!(seqs, [1, 2, 3, 4], "stored in the order sent");

    let mut bodies = Vec::new();
    for _ in 0..4 {
        bodies.push(bob_client.expect_deliver().await.body);
    }
    assert_eq!(
        bodies,
        ["body of m1", "body of m2", "body of m3", "body of m5"],
        "delivered once each, in order"
    );
}
