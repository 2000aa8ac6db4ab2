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
async fn a_resent_message_is_acknowledged_again_but_never_sent_twice_to_one_connection() {
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

    // The retry is dispatched again (it may be the only dispatch, see the next test), as the
    // stored message; a connection that has it already does not get it again.
    let delivered = bob_client.expect_deliver().await;
    assert_eq!(delivered.body, "once");
    assert_eq!(delivered.message_id, first.message_id);
    assert!(bob_client.ping_barrier().await.is_empty());
}

/// A live delivery was lost (its relay failed, its store lookup failed): the next message of
/// the conversation brings it along, from the store, before itself.
#[tokio::test]
async fn a_live_connection_fills_a_gap_from_the_store_and_keeps_the_order() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let (alice, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let mut alice_client = TestClient::login(server.client_addr(), &alice_token).await;
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;

    alice_client.send_text(to_user(bob), "m1", "first").await;
    alice_client.expect_ack().await;
    assert_eq!(bob_client.expect_deliver().await.seq, 1);
    // What a lost relay leaves: stored, never delivered live.
    for (id, body) in [("lost-2", "second"), ("lost-3", "third")] {
        cluster
            .stores
            .messages
            .append(cim_core::NewMessage {
                sender: alice,
                to: cim_core::Recipient::User(bob),
                client_msg_id: id.to_string(),
                body: body.to_string(),
                sent_at: Timestamp::now(),
            })
            .await
            .unwrap();
    }
    assert!(bob_client.ping_barrier().await.is_empty());

    alice_client.send_text(to_user(bob), "m4", "fourth").await;
    assert_eq!(alice_client.expect_ack().await.seq, 4);
    let bodies: Vec<(u64, String)> = [
        bob_client.expect_deliver().await,
        bob_client.expect_deliver().await,
        bob_client.expect_deliver().await,
    ]
    .into_iter()
    .map(|deliver| (deliver.seq, deliver.body))
    .collect();
    assert_eq!(
        bodies,
        [
            (2, "second".to_string()),
            (3, "third".to_string()),
            (4, "fourth".to_string())
        ]
    );
    assert!(bob_client.ping_barrier().await.is_empty());
}

/// The user's own messages in a conversation are no gap, and what the user acknowledged before
/// this connection is not sent again when a live message starts the conversation's tracking.
#[tokio::test]
async fn own_messages_and_acknowledged_ones_are_not_filled_in() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let (alice, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let mut alice_client = TestClient::login(server.client_addr(), &alice_token).await;
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;
    alice_client.send_text(to_user(bob), "a1", "one").await;
    alice_client.expect_ack().await;
    let first = bob_client.expect_deliver().await;
    bob_client.ack(&first.conversation, first.seq).await;
    assert!(bob_client.ping_barrier().await.is_empty());
    drop(bob_client);

    // A new connection: nothing pending, and its first live message is 3, above bob's own 2.
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;
    assert!(bob_client.ping_barrier().await.is_empty());
    bob_client.send_text(to_user(alice), "b2", "two").await;
    assert_eq!(bob_client.expect_ack().await.seq, 2);
    assert_eq!(alice_client.expect_deliver().await.seq, 2);
    alice_client.send_text(to_user(bob), "a3", "three").await;
    alice_client.expect_ack().await;
    let third = bob_client.expect_deliver().await;
    assert_eq!((third.seq, third.body.as_str()), (3, "three"));
    assert!(bob_client.ping_barrier().await.is_empty());
    let _ = alice;
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

/// A fault injector, not a stand-in: the real memory session store, whose next `get_many`
/// calls fail as a restarting Redis's would, as many times as armed.
struct FailingLookups {
    inner: Arc<dyn cim_core::SessionStore>,
    failures: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl cim_core::SessionStore for FailingLookups {
    fn capabilities(&self) -> cim_core::SessionCapabilities {
        self.inner.capabilities()
    }
    async fn bind(
        &self,
        session: cim_core::Session,
        policy: cim_core::BindPolicy,
    ) -> cim_core::Result<cim_core::BindOutcome> {
        self.inner.bind(session, policy).await
    }
    async fn get(&self, user: cim_core::UserId) -> cim_core::Result<Option<cim_core::Session>> {
        self.inner.get(user).await
    }
    async fn get_many(
        &self,
        users: &[cim_core::UserId],
    ) -> cim_core::Result<Vec<cim_core::Session>> {
        use std::sync::atomic::Ordering;
        let armed = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if armed.is_ok() {
            return Err(cim_core::Error::unavailable(
                "injected: the store is restarting",
            ));
        }
        self.inner.get_many(users).await
    }
    async fn unbind(&self, session: &cim_core::SessionRef) -> cim_core::Result<bool> {
        self.inner.unbind(session).await
    }
    async fn refresh_server(&self, server: &cim_core::ServerId) -> cim_core::Result<()> {
        self.inner.refresh_server(server).await
    }
    async fn remove_server(&self, server: &cim_core::ServerId) -> cim_core::Result<u64> {
        self.inner.remove_server(server).await
    }
    async fn list_online(
        &self,
        cursor: Option<&cim_core::Cursor>,
        limit: u32,
    ) -> cim_core::Result<cim_core::Page<cim_core::Session>> {
        self.inner.list_online(cursor, limit).await
    }
    async fn count_online(&self) -> cim_core::Result<u64> {
        self.inner.count_online().await
    }
}

/// The recipient's session could not be looked up when the message was dispatched (the session
/// store was restarting), and no later message of the conversation comes to fill the gap: the
/// dispatch is tried again and the message still arrives live.
#[tokio::test]
async fn a_dispatch_whose_lookup_failed_is_tried_again() {
    let mut cluster = Cluster::memory();
    let failing = Arc::new(FailingLookups {
        inner: Arc::clone(&cluster.stores.sessions),
        failures: std::sync::atomic::AtomicU32::new(0),
    });
    cluster.stores.sessions = Arc::clone(&failing) as Arc<dyn cim_core::SessionStore>;
    let server = cluster.start("s1").await;
    let (_, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let mut alice_client = TestClient::login(server.client_addr(), &alice_token).await;
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;

    failing
        .failures
        .store(2, std::sync::atomic::Ordering::SeqCst);
    alice_client
        .send_text(to_user(bob), "m1", "through a restart")
        .await;
    alice_client.expect_ack().await;
    let deliver = bob_client.expect_deliver().await;
    assert_eq!(deliver.body, "through a restart");
    assert_eq!(
        failing.failures.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "both injected failures were hit"
    );
    assert!(bob_client.ping_barrier().await.is_empty());
}

/// A member who left a group and joined again is acknowledged up to their join (as the route
/// does): the live connection, which last saw the group before leaving, does not fill the gap
/// with what was sent while they were out.
#[tokio::test]
async fn filling_a_gap_never_delivers_what_was_sent_while_the_user_was_out_of_the_group() {
    let cluster = Cluster::memory();
    let server = cluster.start("s1").await;
    let (alice, alice_token) = cluster.user("alice").await;
    let (bob, bob_token) = cluster.user("bob").await;
    let group = cluster.group("team", alice, &[bob]).await;
    let conversation = ConversationId::Group(group);
    let mut alice_client = TestClient::login(server.client_addr(), &alice_token).await;
    let mut bob_client = TestClient::login(server.client_addr(), &bob_token).await;

    alice_client
        .send_text(to_group(group), "g1", "before")
        .await;
    alice_client.expect_ack().await;
    assert_eq!(bob_client.expect_deliver().await.seq, 1);
    assert!(
        cluster
            .stores
            .accounts
            .remove_member(group, bob)
            .await
            .unwrap()
    );
    for (id, body) in [("g2", "while out"), ("g3", "still out")] {
        alice_client.send_text(to_group(group), id, body).await;
        alice_client.expect_ack().await;
    }
    // Joining again, as the route does it: acknowledged up to the group's last message.
    let backlog_end = cluster
        .stores
        .messages
        .last_seq(conversation)
        .await
        .unwrap();
    cluster
        .stores
        .accounts
        .add_member(group, bob, Seq(backlog_end.0 + 1))
        .await
        .unwrap();
    cluster
        .stores
        .messages
        .ack(bob, conversation, backlog_end)
        .await
        .unwrap();

    alice_client.send_text(to_group(group), "g4", "back").await;
    alice_client.expect_ack().await;
    let deliver = bob_client.expect_deliver().await;
    assert_eq!((deliver.seq, deliver.body.as_str()), (4, "back"));
    assert!(bob_client.ping_barrier().await.is_empty());
}
