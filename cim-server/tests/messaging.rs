//! Messages on one server: direct, offline, groups, "all", validation, ordering, schedules.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use cim_core::embedded::sqlite::SqliteStore;
use cim_core::{ConversationId, GroupId, HistoryQuery, MessageStore, Seq, Timestamp};
use cim_proto::v1::{self, recipient};
use cim_proto::{Body, ErrorCode};
use support::{Cluster, TestClient, to_all, to_group, to_user};

#[tokio::test]
async fn a_direct_message_is_acknowledged_then_delivered_and_its_ack_moves_the_cursor() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let (alice, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let mut alice_client = TestClient::login(server.client_addr(), &alice_token).await;
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;

    alice_client
        .send_text(to_user(bob), "m1", "hello bob")
        .await;
    let ack = alice_client.expect_ack().await;
    let conversation = ConversationId::direct(alice, bob);
    assert_eq!(ack.client_msg_id, "m1");
    assert_eq!(ack.conversation, conversation.to_string());
    assert_eq!(ack.seq, 1);
    assert_ne!(ack.message_id, 0);

    let deliver = bob_client.expect_deliver().await;
    assert_eq!(deliver.message_id, ack.message_id);
    assert_eq!(deliver.sender_id, alice.0);
    assert_eq!(deliver.sender_name, "alice");
    assert_eq!(deliver.body, "hello bob");
    assert_eq!(deliver.to.unwrap().to, Some(recipient::To::UserId(bob.0)));

    bob_client.ack(&deliver.conversation, deliver.seq).await;
    assert!(bob_client.ping_barrier().await.is_empty());
    let cursor = cluster
        .stores
        .messages
        .delivered_up_to(bob, conversation)
        .await
        .unwrap();
    assert_eq!(cursor, Seq(1));
}

#[tokio::test]
async fn a_resent_message_is_acknowledged_again_and_delivered_again_under_the_same_id() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let (_, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let mut alice_client = TestClient::login(server.client_addr(), &alice_token).await;
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;

    alice_client.send_text(to_user(bob), "same", "once").await;
    let first = alice_client.expect_ack().await;
    alice_client.send_text(to_user(bob), "same", "twice?").await;
    let second = alice_client.expect_ack().await;
    assert_eq!(first, second);

    // At least once: the retry is delivered again, as the stored message, never as a new one.
    let delivered = bob_client.expect_deliver().await;
    let again = bob_client.expect_deliver().await;
    assert_eq!(delivered.body, "once");
    assert_eq!(again, delivered);
    assert!(bob_client.ping_barrier().await.is_empty());
}

/// A server stored a message and died before delivering it: the sender's retry, acknowledged
/// as a duplicate by another server, still reaches the recipient who never disconnected.
#[tokio::test]
async fn a_retry_delivers_what_a_crashed_server_stored_but_never_delivered() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let (alice, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;
    // What the crashed server did: store, and nothing else.
    let stored = cluster
        .stores
        .messages
        .append(cim_core::NewMessage {
            sender: alice,
            to: cim_core::Recipient::User(bob),
            client_msg_id: "lost".to_string(),
            body: "stored before the crash".to_string(),
            sent_at: Timestamp::now(),
        })
        .await
        .unwrap();
    assert!(
        bob_client.ping_barrier().await.is_empty(),
        "nothing delivered yet"
    );

    let mut alice_client = TestClient::login(server.client_addr(), &alice_token).await;
    alice_client
        .send_text(to_user(bob), "lost", "stored before the crash")
        .await;
    let ack = alice_client.expect_ack().await;
    assert_eq!(ack.message_id, stored.message.id.0);
    let delivered = bob_client.expect_deliver().await;
    assert_eq!(delivered.message_id, stored.message.id.0);
    assert_eq!(delivered.body, "stored before the crash");
}

#[tokio::test]
async fn an_offline_message_arrives_at_login_until_it_is_acknowledged() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let (_, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let mut alice_client = TestClient::login(server.client_addr(), &alice_token).await;
    alice_client
        .send_text(to_user(bob), "m1", "while you were out")
        .await;
    alice_client.expect_ack().await;

    // Received but not acknowledged: comes again after a reconnect.
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;
    let deliver = bob_client.expect_deliver().await;
    assert_eq!(deliver.body, "while you were out");
    drop(bob_client);
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;
    let again = bob_client.expect_deliver().await;
    assert_eq!(again.message_id, deliver.message_id);

    // Acknowledged: not again.
    bob_client.ack(&again.conversation, again.seq).await;
    assert!(bob_client.ping_barrier().await.is_empty());
    drop(bob_client);
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;
    assert!(bob_client.ping_barrier().await.is_empty());
}

#[tokio::test]
async fn a_group_message_reaches_members_only_and_offline_members_at_login() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let (alice, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let (_, carol_token) = cluster.user("carol").await;
    let (dave, dave_token) = cluster.user("dave").await;
    let group = cluster.group("friends", alice, &[bob, dave]).await;
    let mut alice_client = TestClient::login(server.client_addr(), &alice_token).await;
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;
    let mut carol_client = TestClient::login(server.client_addr(), &carol_token).await;

    alice_client
        .send_text(to_group(group), "g1", "hi friends")
        .await;
    let ack = alice_client.expect_ack().await;
    assert_eq!(ack.conversation, format!("g:{group}"));
    let deliver = bob_client.expect_deliver().await;
    assert_eq!(deliver.body, "hi friends");
    assert_eq!(
        deliver.to.unwrap().to,
        Some(recipient::To::GroupId(group.0))
    );
    assert!(
        carol_client.ping_barrier().await.is_empty(),
        "carol is no member"
    );
    assert!(
        alice_client.ping_barrier().await.is_empty(),
        "not back to the sender"
    );

    let mut dave_client = TestClient::login(server.client_addr(), &dave_token).await;
    assert_eq!(dave_client.expect_deliver().await.body, "hi friends");

    // An outsider cannot tell a group it is not in from one that does not exist.
    carol_client
        .send_text(to_group(group), "c1", "let me in")
        .await;
    let error = carol_client.expect_error(ErrorCode::UnknownRecipient).await;
    assert_eq!(error.client_msg_id, "c1");
    carol_client
        .send_text(to_group(GroupId(group.0 + 1000)), "c2", "anyone?")
        .await;
    let missing = carol_client.expect_error(ErrorCode::UnknownRecipient).await;
    assert_eq!(
        missing.text.replace(&(group.0 + 1000).to_string(), "N"),
        error.text.replace(&group.0.to_string(), "N"),
        "the same answer for a missing group and a group of others"
    );
}

#[tokio::test]
async fn a_message_to_all_reaches_every_online_user_but_the_sender() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let (_, alice_token) = cluster.user("alice").await;
    let (_, bob_token) = cluster.user("bob").await;
    let (_, carol_token) = cluster.user("carol").await;
    let (_, dave_token) = cluster.user("dave").await;
    let mut alice_client = TestClient::login(server.client_addr(), &alice_token).await;
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;
    let mut carol_client = TestClient::login(server.client_addr(), &carol_token).await;

    alice_client.send_text(to_all(), "a1", "hello world").await;
    let ack = alice_client.expect_ack().await;
    assert_eq!(ack.conversation, format!("g:{}", GroupId::ALL));
    for client in [&mut bob_client, &mut carol_client] {
        let deliver = client.expect_deliver().await;
        assert_eq!(deliver.body, "hello world");
        assert_eq!(deliver.to.unwrap().to, Some(recipient::To::All(true)));
    }
    assert!(alice_client.ping_barrier().await.is_empty());

    // "all" is for who is online now: nothing waits for a later login.
    let mut dave_client = TestClient::login(server.client_addr(), &dave_token).await;
    assert!(dave_client.ping_barrier().await.is_empty());
}

#[tokio::test]
async fn invalid_sends_and_acks_get_errors_and_the_connection_stays_open() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let (_, alice_token) = cluster.user("alice").await;
    let (bob, _) = cluster.user("bob").await;
    let mut client = TestClient::login(server.client_addr(), &alice_token).await;

    client.send_text(to_user(bob), "", "no id").await;
    client.expect_error(ErrorCode::InvalidInput).await;
    client
        .send_text(to_user(bob), &"x".repeat(129), "long id")
        .await;
    client.expect_error(ErrorCode::InvalidInput).await;
    let too_long = "x".repeat(16 * 1024 + 1);
    client.send_text(to_user(bob), "big", &too_long).await;
    assert_eq!(
        client
            .expect_error(ErrorCode::InvalidInput)
            .await
            .client_msg_id,
        "big"
    );
    client
        .send(Body::Send(v1::Send {
            client_msg_id: "nobody".into(),
            to: None,
            body: "?".into(),
            deliver_at_ms: None,
        }))
        .await;
    client.expect_error(ErrorCode::InvalidInput).await;
    client
        .send_text(to_user(cim_core::UserId(999_999)), "ghost", "?")
        .await;
    client.expect_error(ErrorCode::UnknownRecipient).await;
    client
        .send_text(to_group(GroupId(999_999)), "ghosts", "?")
        .await;
    client.expect_error(ErrorCode::UnknownRecipient).await;
    client.ack("not-a-conversation", 1).await;
    client.expect_error(ErrorCode::InvalidInput).await;

    client
        .send_text(to_user(bob), "fine", "after all that")
        .await;
    client.expect_ack().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arriving_during_the_login_sync_keep_their_order() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let (_, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let mut alice_client = TestClient::login(server.client_addr(), &alice_token).await;
    for i in 0..300 {
        alice_client
            .send_text(to_user(bob), &format!("m{i}"), &format!("{i}"))
            .await;
        alice_client.expect_ack().await;
    }
    let addr = server.client_addr();
    let sender = tokio::spawn(async move {
        for i in 300..600 {
            alice_client
                .send_text(to_user(bob), &format!("m{i}"), &format!("{i}"))
                .await;
            alice_client.expect_ack().await;
        }
    });
    let mut bob_client = TestClient::login(addr, &bob_token).await;
    let mut seqs = Vec::new();
    while seqs.len() < 600 {
        seqs.push(bob_client.expect_deliver().await.seq);
    }
    sender.await.unwrap();
    assert!(bob_client.ping_barrier().await.is_empty());
    assert_eq!(seqs, (1..=600).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_scheduled_message_is_delivered_when_due() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let (_, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let mut alice_client = TestClient::login(server.client_addr(), &alice_token).await;
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;

    let due = Timestamp::now().plus(Duration::from_millis(600));
    alice_client
        .send(Body::Send(v1::Send {
            client_msg_id: "later".into(),
            to: Some(to_user(bob)),
            body: "happy birthday".into(),
            deliver_at_ms: Some(due.as_millis()),
        }))
        .await;
    let ack = alice_client.expect_ack().await;
    assert_ne!(ack.scheduled_id, 0);
    assert_eq!(ack.message_id, 0);
    assert!(ack.sent_at_ms > 0, "a scheduled ack says when it was sent");
    // A retry of the same send (its ack was lost, say) gets the same ack, and changes nothing.
    alice_client
        .send(Body::Send(v1::Send {
            client_msg_id: "later".into(),
            to: Some(to_user(bob)),
            body: "happy birthday".into(),
            deliver_at_ms: Some(due.as_millis()),
        }))
        .await;
    assert_eq!(
        alice_client.expect_ack().await,
        ack,
        "the same SendAck again"
    );

    let deliver = bob_client.expect_deliver().await;
    assert_eq!(deliver.body, "happy birthday");
    assert!(Timestamp::now() >= due, "delivered before it was due");
    assert!(
        bob_client.ping_barrier().await.is_empty(),
        "delivered once, not once per schedule"
    );
    // After the delivery too, a retry is acknowledged as the first was, and not sent again.
    alice_client
        .send(Body::Send(v1::Send {
            client_msg_id: "later".into(),
            to: Some(to_user(bob)),
            body: "happy birthday".into(),
            deliver_at_ms: Some(due.as_millis() + 60_000),
        }))
        .await;
    assert_eq!(alice_client.expect_ack().await, ack);
    assert!(
        bob_client.ping_barrier().await.is_empty(),
        "no second delivery"
    );
}

#[tokio::test]
async fn a_scheduled_message_survives_a_server_restart_with_a_durable_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cim.db");
    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let cluster = Cluster::with(store.clone(), store.clone());
    let server = cluster.start("s1").await;
    let (alice, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let mut alice_client = TestClient::login(server.client_addr(), &alice_token).await;
    let due = Timestamp::now().plus(Duration::from_secs(3));
    alice_client
        .send(Body::Send(v1::Send {
            client_msg_id: "later".into(),
            to: Some(to_user(bob)),
            body: "see you after the restart".into(),
            deliver_at_ms: Some(due.as_millis()),
        }))
        .await;
    alice_client.expect_ack().await;
    drop(alice_client);
    server.shutdown().await.unwrap();
    store.close().await;
    let conversation = ConversationId::direct(alice, bob);

    let store = Arc::new(SqliteStore::open(&path).await.unwrap());
    let history = store
        .history(conversation, HistoryQuery::latest(10))
        .await
        .unwrap();
    assert!(history.is_empty(), "appended before the restart");
    let cluster = Cluster::with(store.clone(), store.clone());
    let server = cluster.start("s1").await;
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;
    let deliver = bob_client.expect_deliver().await;
    assert_eq!(deliver.body, "see you after the restart");
    assert!(Timestamp::now() >= due);
    server.shutdown().await.unwrap();
}
