//! `cim standalone` as a user runs it: the real binary in a child process, driven through the
//! client SDK over loopback, stopped with SIGTERM and started again on the same data.

use std::time::{Duration, SystemTime};

use cim_client::{Event, Events, Outgoing};
use tokio::time::timeout;

mod common;

use common::{STEP, Standalone};

/// The next message event's body and whether it was delivered as offline.
async fn next_body(events: &mut Events) -> (String, bool) {
    timeout(STEP, async {
        loop {
            match events.recv().await {
                Some(Event::Message(message)) => return (message.body, message.offline),
                Some(_) => continue,
                None => panic!("the event stream ended"),
            }
        }
    })
    .await
    .expect("a message arrives")
}

#[tokio::test]
async fn standalone_chats_keeps_messages_across_a_restart_and_stops_cleanly_on_sigterm() {
    let data = tempfile::tempdir().expect("temporary data directory");

    let node = Standalone::start(data.path()).await;
    let (alice, _alice_events) = node.client("alice", true).await;
    let (bob, mut bob_events) = node.client("bob", true).await;
    let bob_id = bob.info().user_id;

    alice.send_to_user(bob_id, "hello bob").await.expect("sent");
    assert_eq!(
        next_body(&mut bob_events).await,
        ("hello bob".to_string(), false)
    );

    bob.close().await;
    alice
        .send_to_user(bob_id, "while you were away")
        .await
        .expect("stored for offline bob");
    let due = SystemTime::now() + Duration::from_secs(2);
    alice
        .send(Outgoing::to_user(bob_id, "scheduled across a restart").deliver_at(due))
        .await
        .expect("scheduled");
    alice.close().await;

    let status = node.terminate().await;
    assert!(
        status.success(),
        "SIGTERM must end cim standalone cleanly: {status}"
    );

    let node = Standalone::start(data.path()).await;
    let (_bob, mut bob_events) = node.client("bob", false).await;
    assert_eq!(
        next_body(&mut bob_events).await,
        ("while you were away".to_string(), true),
        "the offline message survives the restart"
    );
    let (scheduled, _) = next_body(&mut bob_events).await;
    assert_eq!(scheduled, "scheduled across a restart");
    assert!(
        SystemTime::now() >= due,
        "a scheduled message never arrives early"
    );
    assert!(node.terminate().await.success());
}
