//! Several servers sharing stores: relaying, kicks across servers, shutdown, failover.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use cim_core::{GroupId, NewMessage, Recipient, Timestamp};
use cim_pipeline::{Dispatcher, PeerPool};
use cim_proto::v1;
use cim_proto::{Body, FrameCodec, KickReason};
use futures::{SinkExt, StreamExt};
use support::{Cluster, TestClient, WAIT, to_all, to_user, wait_for_cluster};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::Framed;

#[tokio::test]
async fn a_message_crosses_to_the_recipients_server() {
    let cluster = Cluster::memory();
    let s1 = cluster.start("s1").await;
    let s2 = cluster.start("s2").await;
    wait_for_cluster(&[&s1, &s2]).await;
    let (alice, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let mut alice_client = TestClient::login(s1.client_addr(), &alice_token).await;
    let mut bob_client = TestClient::login(s2.client_addr(), &bob_token).await;

    alice_client
        .send_text(to_user(bob), "m1", "over there")
        .await;
    alice_client.expect_ack().await;
    let deliver = bob_client.expect_deliver().await;
    assert_eq!(deliver.body, "over there");
    assert_eq!(deliver.sender_name, "alice");

    bob_client.send_text(to_user(alice), "r1", "and back").await;
    bob_client.expect_ack().await;
    assert_eq!(alice_client.expect_deliver().await.body, "and back");
}

#[tokio::test]
async fn a_recipient_who_moved_to_the_senders_server_gets_the_next_message_at_once() {
    let cluster = Cluster::memory();
    let s1 = cluster.start("s1").await;
    let s2 = cluster.start("s2").await;
    wait_for_cluster(&[&s1, &s2]).await;
    let (_, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let mut alice_client = TestClient::login(s1.client_addr(), &alice_token).await;
    let mut bob_there = TestClient::login(s2.client_addr(), &bob_token).await;

    // s1 relays to bob on s2, and remembers that he is there.
    alice_client.send_text(to_user(bob), "m1", "first").await;
    alice_client.expect_ack().await;
    assert_eq!(bob_there.expect_deliver().await.body, "first");

    // bob moves to s1, the sender's own server; s1's view of him is now stale.
    let mut bob_here = TestClient::login(s1.client_addr(), &bob_token).await;
    bob_there.expect_kicked(KickReason::Replaced).await;

    // The next message is relayed to s2 from the view; s2 answers that bob is not there, and
    // s1 delivers it to his new connection, live (no later message or reconnect needed).
    alice_client.send_text(to_user(bob), "m2", "second").await;
    alice_client.expect_ack().await;
    // "first" was never acknowledged, so bob's login on s1 syncs it again before.
    let mut bodies = vec![bob_here.expect_deliver().await.body];
    if bodies[0] == "first" {
        bodies.push(bob_here.expect_deliver().await.body);
    }
    assert_eq!(
        bodies.last().map(String::as_str),
        Some("second"),
        "{bodies:?}"
    );
}

#[tokio::test]
async fn a_message_to_all_reaches_users_on_every_server() {
    let cluster = Cluster::memory();
    let s1 = cluster.start("s1").await;
    let s2 = cluster.start("s2").await;
    wait_for_cluster(&[&s1, &s2]).await;
    let (_, alice_token) = cluster.user("alice").await;
    let (_, bob_token) = cluster.user("bob").await;
    let (_, carol_token) = cluster.user("carol").await;
    let mut alice_client = TestClient::login(s1.client_addr(), &alice_token).await;
    let mut bob_client = TestClient::login(s2.client_addr(), &bob_token).await;
    let mut carol_client = TestClient::login(s1.client_addr(), &carol_token).await;

    alice_client.send_text(to_all(), "a1", "everyone").await;
    alice_client.expect_ack().await;
    assert_eq!(bob_client.expect_deliver().await.body, "everyone");
    assert_eq!(carol_client.expect_deliver().await.body, "everyone");
    assert!(alice_client.ping_barrier().await.is_empty());
}

#[tokio::test]
async fn a_login_on_another_server_kicks_the_old_connection() {
    let cluster = Cluster::memory();
    let s1 = cluster.start("s1").await;
    let s2 = cluster.start("s2").await;
    wait_for_cluster(&[&s1, &s2]).await;
    let (alice, token) = cluster.user("alice").await;
    let mut first = TestClient::login(s1.client_addr(), &token).await;
    let _second = TestClient::login(s2.client_addr(), &token).await;
    first.expect_kicked(KickReason::Replaced).await;
    first.expect_closed().await;
    let session = cluster.stores.sessions.get(alice).await.unwrap().unwrap();
    assert_eq!(session.server_id.as_str(), "s2");
}

#[tokio::test]
async fn graceful_shutdown_tells_clients_and_leaves_the_cluster() {
    let cluster = Cluster::memory();
    let s1 = cluster.start("s1").await;
    let s2 = cluster.start("s2").await;
    wait_for_cluster(&[&s1, &s2]).await;
    let (alice, token) = cluster.user("alice").await;
    let mut client = TestClient::login(s1.client_addr(), &token).await;

    let shutdown = tokio::spawn(s1.shutdown());
    client.expect_kicked(KickReason::ServerShutdown).await;
    client.expect_closed().await;
    timeout(WAIT, shutdown).await.unwrap().unwrap().unwrap();

    let live: Vec<String> = cluster
        .stores
        .meta
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|info| info.id.to_string())
        .collect();
    assert_eq!(live, ["s2"]);
    assert!(cluster.stores.sessions.get(alice).await.unwrap().is_none());

    // The user logs in elsewhere and goes on.
    let mut client = TestClient::login(s2.client_addr(), &token).await;
    assert!(client.ping_barrier().await.is_empty());
}

#[tokio::test]
async fn a_crashed_server_leaves_the_cluster_when_its_lease_expires() {
    let cluster = Cluster::memory();
    let s1 = cluster.start("s1").await;
    let s2 = cluster.start("s2").await;
    wait_for_cluster(&[&s1, &s2]).await;
    drop(s2);
    timeout(WAIT, async {
        while s1.peers().len() > 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("s2's lease expires and s1 forgets it");
    // The id is free again: a restarted s2 registers.
    let s2 = cluster.start("s2").await;
    wait_for_cluster(&[&s1, &s2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_is_lost_when_the_recipients_server_dies_mid_stream() {
    const COUNT: u64 = 1000;
    let cluster = Cluster::memory();
    let s1 = cluster.start("s1").await;
    let s2 = cluster.start("s2").await;
    wait_for_cluster(&[&s1, &s2]).await;
    let (_, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let survivor = s1.client_addr();
    let mut alice_client = TestClient::login(survivor, &alice_token).await;
    let mut bob_client = TestClient::login(s2.client_addr(), &bob_token).await;

    let sender = tokio::spawn(async move {
        let mut doomed = Some(s2);
        for i in 0..COUNT {
            if i == COUNT / 3 {
                // A crash: every task of s2 stops at once, nothing is cleaned up.
                drop(doomed.take());
            }
            alice_client
                .send_text(to_user(bob), &format!("m{i}"), &format!("{i}"))
                .await;
            alice_client.expect_ack().await;
        }
        alice_client
    });

    let mut seen = HashSet::new();
    let mut reconnects = 0;
    let receive = async {
        while (seen.len() as u64) < COUNT {
            match bob_client.next_or_closed().await {
                Some(Body::Deliver(deliver)) => {
                    seen.insert(deliver.seq);
                    // A failed ack is fine: the connection's close comes next.
                    let ack = Body::DeliveryAck(v1::DeliveryAck {
                        conversation: deliver.conversation,
                        up_to_seq: deliver.seq,
                    });
                    bob_client.try_send(ack).await;
                }
                Some(other) => panic!("unexpected frame {other:?}"),
                None => {
                    reconnects += 1;
                    bob_client = TestClient::login(survivor, &bob_token).await;
                }
            }
        }
    };
    timeout(Duration::from_secs(60), receive)
        .await
        .expect("every message arrives");
    let _alice_client = sender.await.unwrap();
    assert_eq!(reconnects, 1);
    assert_eq!(seen, (1..=COUNT).collect::<HashSet<u64>>());
}

#[tokio::test]
async fn a_route_relays_deliveries_and_kicks_through_the_internal_port() {
    let cluster = Cluster::memory();
    let s1 = cluster.start("s1").await;
    let (alice, token) = cluster.user("alice").await;
    let mut client = TestClient::login(s1.client_addr(), &token).await;
    let connection_id = client.login.as_ref().unwrap().connection_id;

    let route = PeerPool::new("route:1".into(), cluster.key.clone(), 64 * 1024);
    route.set_servers(&cluster.stores.meta.list().await.unwrap());
    let message = v1::Deliver {
        message_id: 1,
        conversation: format!("d:0:{alice}"),
        seq: 1,
        body: "from the route".into(),
        ..Default::default()
    };
    route
        .deliver(
            s1.id(),
            v1::PeerDeliver {
                message: Some(message),
                user_ids: vec![alice.0],
                all_local: false,
                report_missed: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(client.expect_deliver().await.body, "from the route");

    let kick = v1::PeerKick {
        user_id: alice.0,
        connection_id,
        reason: KickReason::LoggedOut as i32,
    };
    route.kick(s1.id(), kick).await.unwrap();
    client.expect_kicked(KickReason::LoggedOut).await;
    client.expect_closed().await;
}

#[tokio::test]
async fn the_internal_port_closes_a_connection_without_a_peer_hello() {
    let cluster = Cluster::memory();
    let s1 = cluster.start("s1").await;
    let (_, user_token) = cluster.user("alice").await;
    for token in [user_token.as_str(), "forged"] {
        let socket = TcpStream::connect(s1.internal_addr()).await.unwrap();
        let mut framed = Framed::new(socket, FrameCodec::<v1::PeerFrame>::default());
        let hello = v1::PeerFrame {
            body: Some(v1::peer_frame::Body::Hello(v1::PeerHello {
                from: "intruder".into(),
                token: token.into(),
            })),
        };
        framed.send(hello).await.unwrap();
        let next = timeout(WAIT, framed.next()).await.expect("closed in time");
        assert!(matches!(next, None | Some(Err(_))), "got {next:?}");
    }
}

#[tokio::test]
async fn a_dispatcher_without_connections_reaches_users_on_every_server() {
    let cluster = Cluster::memory();
    let s1 = cluster.start("s1").await;
    let s2 = cluster.start("s2").await;
    let (alice, _) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let (_, carol_token) = cluster.user("carol").await;
    let mut bob_client = TestClient::login(s1.client_addr(), &bob_token).await;
    let mut carol_client = TestClient::login(s2.client_addr(), &carol_token).await;

    // What a route does for `POST /api/v1/messages`: store, then dispatch.
    let pool = PeerPool::new("route:1".into(), cluster.key.clone(), 64 * 1024);
    pool.set_servers(&cluster.stores.meta.list().await.unwrap());
    let dispatcher = Dispatcher::new(cluster.stores.clone(), pool, None);
    for (to, body) in [
        (Recipient::User(bob), "just bob"),
        (Recipient::Group(GroupId::ALL), "everyone"),
    ] {
        let message = NewMessage {
            sender: alice,
            to,
            client_msg_id: body.into(),
            body: body.into(),
            sent_at: Timestamp::now(),
        };
        let stored = cluster.stores.messages.append(message).await.unwrap();
        dispatcher.dispatch(&stored.message, "alice").await.unwrap();
    }
    assert_eq!(bob_client.expect_deliver().await.body, "just bob");
    assert_eq!(bob_client.expect_deliver().await.body, "everyone");
    assert_eq!(carol_client.expect_deliver().await.body, "everyone");
    assert!(carol_client.ping_barrier().await.is_empty());
}

#[tokio::test]
async fn a_message_whose_server_crashed_before_its_fan_out_reaches_a_recipient_connected_elsewhere()
{
    let cluster = Cluster::memory();
    let s1 = cluster.start("s1").await;
    let s2 = cluster.start("s2").await;
    wait_for_cluster(&[&s1, &s2]).await;
    let (alice, _) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let mut bob_client = TestClient::login(s2.client_addr(), &bob_token).await;
    bob_client.ping_barrier().await;

    // What s1 did before it died: it stored alice's message (and acknowledged it to her), but
    // its fan-out never ran.
    let stored = cluster
        .stores
        .messages
        .append(NewMessage {
            sender: alice,
            to: Recipient::User(bob),
            client_msg_id: "stored-then-crashed".into(),
            body: "did you get this?".into(),
            sent_at: Timestamp::now(),
        })
        .await
        .unwrap();
    drop(s1);
    assert_eq!(
        bob_client.next_within(Duration::from_millis(300)).await,
        None,
        "nothing was fanned out"
    );

    // s1's lease expires; s2 sees it gone and bob's connection catches up from the store,
    // without a reconnect.
    let deliver = timeout(WAIT, bob_client.expect_deliver())
        .await
        .expect("bob catches up after s1's death");
    assert_eq!(deliver.seq, stored.message.seq.0);
    assert_eq!(deliver.body, "did you get this?");
}
