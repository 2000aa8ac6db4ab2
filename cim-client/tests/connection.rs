//! The connection task against a fake server over real TCP: login, deduplication,
//! acknowledgements, sends, heartbeats, kicks and reconnection.

mod support;

use std::time::Duration;

use cim_client::{
    ClientError, ConnectionState, Conversation, DisconnectReason, Event, KickReason,
    ReconnectPolicy, SendReceipt,
};
use cim_proto::v1::{self, DeliveryAck};
use cim_proto::{Body, ErrorCode};
use support::*;

fn ack(conversation: &str, up_to_seq: u64) -> DeliveryAck {
    DeliveryAck {
        conversation: conversation.into(),
        up_to_seq,
    }
}

#[tokio::test]
async fn connect_logs_in_with_the_token_and_reports_the_session() {
    let server = FakeServer::start().await;
    let (client, conn) = tokio::join!(server.client().connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");
    assert_eq!(conn.login.token, "token-1");
    assert_eq!(conn.login.device, "test");

    let info = client.info();
    assert_eq!((info.user_id, info.user_name.as_str()), (7, "alice"));
    assert_eq!(info.server_id, "fake");
    let mut events = client.events().expect("first call gets the stream");
    assert!(client.events().is_none(), "there is one stream per client");
    assert_eq!(
        next_event(&mut events).await,
        Event::State(ConnectionState::Connected {
            server_id: "fake".into()
        })
    );
}

#[tokio::test]
async fn a_refused_token_fails_connect_with_unauthenticated() {
    let server = FakeServer::start().await;
    let (client, ()) = tokio::join!(server.client().connect(), async {
        let mut conn = server.accept().await;
        conn.send(Body::Error(v1::Error {
            code: ErrorCode::Unauthenticated as i32,
            text: "token expired".into(),
            client_msg_id: String::new(),
            ..Default::default()
        }))
        .await;
    });
    let error = client.expect_err("refused");
    assert!(matches!(error, ClientError::Unauthenticated(_)), "{error}");
}

#[tokio::test]
async fn deliveries_reach_the_application_once_in_arrival_order() {
    let server = FakeServer::start().await;
    let (client, mut conn) = tokio::join!(server.client().connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");
    let mut events = client.events().expect("stream");

    for seq in [1, 2, 2, 4, 3, 1, 4] {
        conn.deliver("d:2:7", seq, 1).await;
    }
    conn.deliver("g:9", 1, 1).await;

    let mut seen = Vec::new();
    for _ in 0..5 {
        let message = next_message(&mut events).await;
        seen.push((message.conversation, message.seq));
    }
    let direct = Conversation::direct(2, 7);
    assert_eq!(
        seen,
        vec![
            (direct, 1),
            (direct, 2),
            (direct, 4),
            (direct, 3),
            (Conversation::Group(9), 1)
        ],
        "duplicates are dropped, order of first arrival is kept"
    );
    let first = conn.expect_ack().await;
    let second = conn.expect_ack().await;
    let mut acks = vec![first, second];
    acks.sort_by(|a, b| a.conversation.cmp(&b.conversation));
    assert_eq!(acks, vec![ack("d:2:7", 4), ack("g:9", 1)]);
}

#[tokio::test]
async fn messages_carry_their_fields_and_whether_they_waited_offline() {
    let server = FakeServer::start().await;
    let (client, mut conn) = tokio::join!(server.client().connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");
    let mut events = client.events().expect("stream");

    conn.deliver("d:2:7", 1, 1_000).await;
    conn.deliver("d:2:7", 2, i64::MAX).await;

    let offline = next_message(&mut events).await;
    assert_eq!(offline.message_id, 1001);
    assert_eq!(
        (offline.sender_id, offline.sender_name.as_str()),
        (2, "bob")
    );
    assert_eq!(offline.body, "d:2:7#1");
    assert_eq!(offline.sent_at, 1_000);
    assert!(offline.offline, "sent long before the login");
    assert!(
        !next_message(&mut events).await.offline,
        "sent after the login"
    );
}

/// The server delivers each conversation without holes on a connection (a gap below a
/// delivery is the user's own messages, or from before they joined), so the client acknowledges
/// up to the highest delivery at once, and a late one below it is still handed over once.
#[tokio::test]
async fn acknowledgements_go_up_to_the_highest_delivery_across_gaps() {
    let server = FakeServer::start().await;
    let (client, mut conn) = tokio::join!(server.client().connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");
    let mut events = client.events().expect("stream");

    for seq in [1, 2, 4] {
        conn.deliver("d:2:7", seq, 1).await;
    }
    let mut last = conn.expect_ack().await;
    while last.up_to_seq < 4 {
        last = conn.expect_ack().await;
    }
    assert_eq!(last, ack("d:2:7", 4), "never past the highest delivery");
    conn.deliver("d:2:7", 3, 1).await;
    conn.deliver("d:2:7", 5, 1).await;
    assert_eq!(conn.expect_ack().await, ack("d:2:7", 5), "3 moved nothing");
    for expected in [1, 2, 4, 3, 5] {
        assert_eq!(next_message(&mut events).await.seq, expected);
    }
}

#[tokio::test]
async fn own_messages_acknowledge_nothing_deliveries_above_them_do() {
    let server = FakeServer::start().await;
    let (client, mut conn) = tokio::join!(server.client().connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");

    let sending = tokio::spawn({
        let client = client.clone();
        async move { client.send_to_group(5, "mine").await }
    });
    let send = conn.expect_send().await;
    conn.deliver("g:5", 1, 1).await;
    assert_eq!(conn.expect_ack().await, ack("g:5", 1));
    conn.send(send_ack(&send, "g:5", 2)).await;
    let receipt = within("the receipt", sending).await.expect("task");
    assert_eq!(receipt.expect("stored").seq(), Some(2));
    conn.deliver("g:5", 3, 1).await;

    let mut last = conn.expect_ack().await;
    assert_ne!(last.up_to_seq, 2, "the own message acknowledges nothing");
    while last.up_to_seq < 3 {
        last = conn.expect_ack().await;
    }
    assert_eq!(last, ack("g:5", 3));
}

#[tokio::test]
async fn a_send_resolves_with_its_ack_and_a_refused_one_with_its_error_kind() {
    let server = FakeServer::start().await;
    let (client, mut conn) = tokio::join!(server.client().connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");

    let (receipt, ()) = tokio::join!(client.send_to_user(2, "hello"), async {
        let send = conn.expect_send().await;
        assert_eq!(send.body, "hello");
        assert_eq!(send.client_msg_id.len(), 32);
        assert_eq!(
            send.to.and_then(|to| to.to),
            Some(v1::recipient::To::UserId(2))
        );
        conn.send(send_ack(&send, "d:2:7", 1)).await;
    });
    match receipt.expect("stored") {
        SendReceipt::Stored {
            conversation,
            seq,
            message_id,
            ..
        } => {
            assert_eq!(conversation, Conversation::direct(2, 7));
            assert_eq!((seq, message_id), (1, 5001));
        }
        other => panic!("expected a stored receipt, got {other:?}"),
    }

    let (refused, ()) = tokio::join!(client.send_to_user(99, "anyone?"), async {
        let send = conn.expect_send().await;
        conn.send(Body::Error(v1::Error {
            code: ErrorCode::UnknownRecipient as i32,
            text: "no user 99".into(),
            client_msg_id: send.client_msg_id,
            ..Default::default()
        }))
        .await;
    });
    let error = refused.expect_err("unknown recipient");
    assert!(matches!(error, ClientError::NotFound(_)), "{error}");
}

#[tokio::test]
async fn a_scheduled_send_resolves_with_the_schedule_entry() {
    let server = FakeServer::start().await;
    let (client, mut conn) = tokio::join!(server.client().connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");
    let at = std::time::UNIX_EPOCH + Duration::from_millis(4_000_000_000_000);
    let outgoing = cim_client::Outgoing::to_all("later")
        .deliver_at(at)
        .client_msg_id("my-id");

    let (receipt, ()) = tokio::join!(client.send(outgoing), async {
        let send = conn.expect_send().await;
        assert_eq!(send.deliver_at_ms, Some(4_000_000_000_000));
        assert_eq!(send.client_msg_id, "my-id");
        assert_eq!(
            send.to.and_then(|to| to.to),
            Some(v1::recipient::To::All(true))
        );
        conn.send(Body::SendAck(v1::SendAck {
            client_msg_id: send.client_msg_id,
            scheduled_id: 8,
            ..Default::default()
        }))
        .await;
    });
    assert_eq!(
        receipt.expect("scheduled"),
        SendReceipt::Scheduled {
            client_msg_id: "my-id".into(),
            scheduled_id: 8
        }
    );
}

#[tokio::test]
async fn a_message_too_large_for_the_server_is_refused_and_the_connection_stays() {
    let server = FakeServer::start().await;
    let small_frames = v1::LoginResult {
        max_frame_len: 200,
        ..login_result()
    };
    let (client, mut conn) = tokio::join!(server.client().connect(), async {
        server.accept_logged_in(small_frames).await
    });
    let client = client.expect("connects");

    let error = client
        .send_to_user(2, "x".repeat(500))
        .await
        .expect_err("too large");
    assert!(matches!(error, ClientError::InvalidInput(_)), "{error}");
    let (receipt, ()) = tokio::join!(client.send_to_user(2, "short"), async {
        let send = conn.expect_send().await;
        conn.send(send_ack(&send, "d:2:7", 1)).await;
    });
    receipt.expect("the connection still works");
}

#[tokio::test]
async fn a_lost_connection_reconnects_through_login_and_resends_unacknowledged_sends() {
    let server = FakeServer::start().await;
    let (client, mut conn) = tokio::join!(server.client().connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");
    let mut events = client.events().expect("stream");

    let sending = tokio::spawn({
        let client = client.clone();
        async move { client.send_to_user(2, "are you there?").await }
    });
    let first_try = conn.expect_send().await;
    drop(conn); // the server dies before acknowledging

    let mut conn = server
        .accept_logged_in(v1::LoginResult {
            server_id: "other".into(),
            ..login_result()
        })
        .await;
    assert_eq!(conn.login.token, "token-2", "logged in again at the route");
    let retry = conn.expect_send().await;
    assert_eq!(retry, first_try, "same frame, same client_msg_id");
    conn.send(send_ack(&retry, "d:2:7", 1)).await;
    let receipt = within("the receipt", sending).await.expect("task");
    assert_eq!(receipt.expect("stored").seq(), Some(1));

    let states: Vec<_> = wait_for_state(&mut events, |s| {
        *s == ConnectionState::Connected {
            server_id: "other".into(),
        }
    })
    .await
    .into_iter()
    .filter_map(|event| match event {
        Event::State(state) => Some(state),
        _ => None,
    })
    .collect();
    assert!(
        matches!(
            states.as_slice(),
            [
                ConnectionState::Connected { .. },
                ConnectionState::Reconnecting { attempt: 1, .. },
                ConnectionState::Connecting,
                ConnectionState::Connected { .. },
            ]
        ),
        "{states:?}"
    );
    assert_eq!(client.info().server_id, "other");
    assert_eq!(server.logins(), 2);
}

#[tokio::test]
async fn messages_redelivered_after_a_reconnect_reach_the_application_once() {
    let server = FakeServer::start().await;
    let (client, mut conn) = tokio::join!(server.client().connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");
    let mut events = client.events().expect("stream");
    for seq in 1..=3 {
        conn.deliver("d:2:7", seq, 1).await;
    }
    for seq in 1..=3 {
        assert_eq!(next_message(&mut events).await.seq, seq);
    }
    drop(conn); // before any acknowledgement could be read

    let mut conn = server.accept_logged_in(login_result()).await;
    for seq in 1..=4 {
        conn.deliver("d:2:7", seq, 1).await; // the server re-sends all it has not seen acked
    }
    let message = next_message(&mut events).await;
    assert_eq!(message.seq, 4, "1..=3 were dropped as duplicates");
    let mut last = conn.expect_ack().await;
    while last.up_to_seq < 4 {
        last = conn.expect_ack().await;
    }
    assert_eq!(last, ack("d:2:7", 4));
}

#[tokio::test]
async fn sends_made_while_reconnecting_go_out_on_the_new_connection() {
    let server = FakeServer::start().await;
    let (client, conn) = tokio::join!(server.client().connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");
    let mut events = client.events().expect("stream");
    drop(conn);
    wait_for_state(&mut events, |s| *s == ConnectionState::Connecting).await;

    let sending = tokio::spawn({
        let client = client.clone();
        async move { client.send_to_user(2, "queued").await }
    });
    // The client waits for the LoginResult while the send is queued.
    let mut conn = server.accept_logged_in(login_result()).await;
    let send = conn.expect_send().await;
    assert_eq!(send.body, "queued");
    conn.send(send_ack(&send, "d:2:7", 1)).await;
    within("the receipt", sending)
        .await
        .expect("task")
        .expect("stored");
}

#[tokio::test]
async fn a_send_without_acknowledgement_times_out() {
    let server = FakeServer::start().await;
    let builder = server.client().send_timeout(Duration::from_millis(300));
    let (client, mut conn) = tokio::join!(builder.connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");
    let (result, _) = tokio::join!(client.send_to_user(2, "lost ack"), conn.expect_send());
    let error = result.expect_err("no ack");
    assert!(matches!(error, ClientError::Timeout(_)), "{error}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn a_send_queued_without_a_server_in_time_fails_as_not_sent() {
    let server = FakeServer::start().await;
    let addr = server.addr;
    let logins = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let builder = server
        .client()
        .send_timeout(Duration::from_millis(300))
        .login_with(move || {
            let n = logins.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n == 0 {
                    Ok(FakeServer::login_response(addr, 1))
                } else {
                    Err(ClientError::Unavailable {
                        message: "no server".into(),
                        source: None,
                    })
                }
            }
        });
    let (client, conn) = tokio::join!(builder.connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");
    let mut events = client.events().expect("stream");
    drop(conn);
    wait_for_state(&mut events, |s| {
        matches!(s, ConnectionState::Reconnecting { .. })
    })
    .await;

    let error = within("the send", client.send_to_user(2, "queued"))
        .await
        .expect_err("never sent");
    assert!(
        matches!(error, ClientError::Unavailable { .. }),
        "never written, so safe to send again: {error}"
    );
}

#[tokio::test]
async fn a_replaced_session_stops_the_client_without_reconnecting() {
    let server = FakeServer::start().await;
    let (client, mut conn) = tokio::join!(server.client().connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");
    let mut events = client.events().expect("stream");

    conn.send(Body::Kicked(v1::Kicked {
        reason: KickReason::Replaced as i32,
        text: "logged in elsewhere".into(),
    }))
    .await;

    let seen = wait_for_state(&mut events, |s| {
        matches!(s, ConnectionState::Disconnected { .. })
    })
    .await;
    assert!(seen.contains(&Event::Kicked {
        reason: KickReason::Replaced,
        text: "logged in elsewhere".into()
    }));
    assert_eq!(
        seen.last(),
        Some(&Event::State(ConnectionState::Disconnected {
            reason: DisconnectReason::Kicked(KickReason::Replaced)
        }))
    );
    assert!(within("the end of events", events.recv()).await.is_none());
    let error = client.send_to_user(2, "hi").await.expect_err("stopped");
    assert!(is_closed(&error), "{error}");
    assert_eq!(server.logins(), 1, "no reconnect after being replaced");
}

#[tokio::test]
async fn a_server_shutdown_kick_makes_the_client_reconnect() {
    let server = FakeServer::start().await;
    let (client, mut conn) = tokio::join!(server.client().connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");
    let mut events = client.events().expect("stream");

    conn.send(Body::Kicked(v1::Kicked {
        reason: KickReason::ServerShutdown as i32,
        text: "bye".into(),
    }))
    .await;
    drop(conn);
    let mut conn = server.accept_logged_in(login_result()).await;
    conn.deliver("d:2:7", 1, 1).await;
    assert_eq!(next_message(&mut events).await.seq, 1);
    assert_eq!(server.logins(), 2);
}

#[tokio::test]
async fn a_silent_server_is_given_up_on_after_the_idle_timeout() {
    let server = FakeServer::start().await;
    let fast_heartbeat = v1::LoginResult {
        heartbeat_interval_ms: 100,
        idle_timeout_ms: 400,
        ..login_result()
    };
    let (client, mut conn) = tokio::join!(server.client().connect(), async {
        server.accept_logged_in(fast_heartbeat).await
    });
    let _client = client.expect("connects");

    assert!(
        matches!(conn.recv().await, Some(Body::Ping(_))),
        "the client pings when quiet"
    );
    // No Pong: the client must give up on this connection and come back.
    let conn2 = server.accept().await;
    assert_eq!(conn2.login.token, "token-2");
    conn.expect_closed().await;
}

#[tokio::test]
async fn pongs_keep_the_connection_alive() {
    let server = FakeServer::start().await;
    let fast_heartbeat = v1::LoginResult {
        heartbeat_interval_ms: 50,
        idle_timeout_ms: 200,
        ..login_result()
    };
    let (client, mut conn) = tokio::join!(server.client().connect(), async {
        server.accept_logged_in(fast_heartbeat).await
    });
    let client = client.expect("connects");
    // Ten heartbeats, well past the idle timeout, answered.
    for _ in 0..10 {
        match conn.recv().await {
            Some(Body::Ping(ping)) => conn.send(Body::Pong(v1::Pong { nonce: ping.nonce })).await,
            other => panic!("expected Ping, got {other:?}"),
        }
    }
    assert_eq!(
        client.state(),
        ConnectionState::Connected {
            server_id: "fake".into()
        }
    );
    assert_eq!(server.logins(), 1);
}

#[tokio::test]
async fn reconnecting_stops_after_the_policy_s_attempts() {
    let server = FakeServer::start().await;
    let addr = server.addr;
    let logins = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let builder = server
        .client()
        .reconnect(
            ReconnectPolicy::default()
                .initial_backoff(Duration::from_millis(10))
                .max_attempts(Some(2)),
        )
        .login_with(move || {
            let n = logins.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n == 0 {
                    Ok(FakeServer::login_response(addr, 1))
                } else {
                    Err(ClientError::Unavailable {
                        message: "no server".into(),
                        source: None,
                    })
                }
            }
        });
    let (client, conn) = tokio::join!(builder.connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");
    let mut events = client.events().expect("stream");
    drop(conn);

    let seen = wait_for_state(&mut events, |s| {
        matches!(s, ConnectionState::Disconnected { .. })
    })
    .await;
    match seen.last() {
        Some(Event::State(ConnectionState::Disconnected {
            reason:
                DisconnectReason::GaveUp {
                    attempts,
                    last_error,
                },
        })) => {
            assert_eq!(*attempts, 2);
            assert!(last_error.contains("no server"), "{last_error}");
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
}

#[tokio::test]
async fn refused_credentials_on_relogin_stop_the_client() {
    let server = FakeServer::start().await;
    let addr = server.addr;
    let logins = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let builder = server.client().login_with(move || {
        let n = logins.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            if n == 0 {
                Ok(FakeServer::login_response(addr, 1))
            } else {
                Err(ClientError::Unauthenticated("password changed".into()))
            }
        }
    });
    let (client, conn) = tokio::join!(builder.connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");
    let mut events = client.events().expect("stream");
    drop(conn);

    let seen = wait_for_state(&mut events, |s| {
        matches!(s, ConnectionState::Disconnected { .. })
    })
    .await;
    assert!(
        matches!(
            seen.last(),
            Some(Event::State(ConnectionState::Disconnected {
                reason: DisconnectReason::Rejected(_)
            }))
        ),
        "{seen:?}"
    );
}

#[tokio::test]
async fn close_fails_pending_sends_acknowledges_and_ends_the_event_stream() {
    let server = FakeServer::start().await;
    let (client, mut conn) = tokio::join!(server.client().connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");
    let mut events = client.events().expect("stream");
    conn.deliver("d:2:7", 1, 1).await;
    assert_eq!(next_message(&mut events).await.seq, 1);

    let sending = tokio::spawn({
        let client = client.clone();
        async move { client.send_to_user(2, "never acknowledged").await }
    });
    conn.expect_send().await;
    client.close().await;

    let error = within("the send", sending)
        .await
        .expect("task")
        .expect_err("closed");
    assert!(is_closed(&error), "{error}");
    // What was received is acknowledged before the socket closes (unless the timer did so).
    match conn.recv_skipping_pings().await {
        Some(Body::DeliveryAck(delivery_ack)) => assert_eq!(delivery_ack, ack("d:2:7", 1)),
        None => {}
        other => panic!("expected an ack or the close, got {other:?}"),
    }
    conn.expect_closed().await;
    let seen = wait_for_state(&mut events, |s| {
        matches!(s, ConnectionState::Disconnected { .. })
    })
    .await;
    assert_eq!(
        seen.last(),
        Some(&Event::State(ConnectionState::Disconnected {
            reason: DisconnectReason::Closed
        }))
    );
    assert!(within("the end of events", events.recv()).await.is_none());
    client.close().await; // twice is harmless
    assert!(is_closed(
        &client.send_to_all("late").await.expect_err("closed")
    ));
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let server = FakeServer::start().await;
    let (client, mut conn) = tokio::join!(server.client().connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");
    let mut events = client.events().expect("stream");
    drop(client);
    conn.expect_closed().await;
    let seen = wait_for_state(&mut events, |s| {
        matches!(s, ConnectionState::Disconnected { .. })
    })
    .await;
    assert!(matches!(
        seen.last(),
        Some(Event::State(ConnectionState::Disconnected {
            reason: DisconnectReason::Closed
        }))
    ));
}

#[tokio::test]
async fn a_slow_application_loses_no_event() {
    let server = FakeServer::start().await;
    let (client, mut conn) = tokio::join!(server.client().event_capacity(2).connect(), async {
        server.accept_logged_in(login_result()).await
    });
    let client = client.expect("connects");
    let mut events = client.events().expect("stream");
    for seq in 1..=200 {
        conn.deliver("d:2:7", seq, 1).await;
    }
    for seq in 1..=200 {
        assert_eq!(next_message(&mut events).await.seq, seq);
    }
}

#[tokio::test]
async fn many_clients_live_in_one_process() {
    let server = FakeServer::start().await;
    let mut clients = Vec::new();
    let mut conns = Vec::new();
    for n in 0..5u64 {
        let (client, conn) = tokio::join!(server.client().connect(), async {
            server
                .accept_logged_in(v1::LoginResult {
                    connection_id: n,
                    ..login_result()
                })
                .await
        });
        clients.push(client.expect("connects"));
        conns.push(conn);
    }
    for (n, client) in clients.iter().enumerate() {
        assert_eq!(client.info().connection_id, n as u64);
    }
    let mut streams: Vec<_> = clients
        .iter()
        .map(|c| c.events().expect("stream"))
        .collect();
    conns[3].deliver("d:2:7", 1, 1).await;
    assert_eq!(next_message(&mut streams[3]).await.seq, 1);
}
