//! `cim standalone` as a user runs it: the real binary in a child process, driven through the
//! client SDK over loopback, stopped with SIGTERM and started again on the same data.

use std::time::{Duration, SystemTime};

use cim_client::{Event, Events, Outgoing};
use tokio::time::timeout;

mod common;

use common::{STEP, Standalone, StandaloneOptions};

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

#[tokio::test]
async fn a_standalone_killed_while_storing_keeps_every_message_it_acknowledged() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use cim_client::{Conversation, SendReceipt};
    use tokio::sync::{Mutex, Notify};

    // The default standalone stores on SQLite and commits appends in groups: an append is
    // acknowledged only after the commit that holds it. Several senders keep many appends in
    // flight, the process is killed with SIGKILL mid-stream, and every acknowledged message
    // must be in the file when it starts again.
    const SENDERS: usize = 4;
    const KILL_AFTER: usize = 400;
    let data = tempfile::tempdir().expect("temporary data directory");
    let config = data.path().join("cim.toml");
    std::fs::write(
        &config,
        "[limits.messages]\nper_second = 100000\nburst = 100000\n",
    )
    .expect("config");
    let options = || StandaloneOptions::new(data.path()).config(config.clone());
    let node = options().start().await;
    let (bob, _bob_events) = node.client("bob", true).await;
    let bob_id = bob.info().user_id;
    let acknowledged = Arc::new(Mutex::new(Vec::<(Conversation, u64, String)>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(Notify::new());
    let killing = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for n in 0..SENDERS {
        let (client, events) = node.client(&format!("sender{n}"), true).await;
        let (acknowledged, count) = (acknowledged.clone(), count.clone());
        let (enough, killing) = (enough.clone(), killing.clone());
        senders.push(tokio::spawn(async move {
            let _events = events;
            for i in 0.. {
                let body = format!("{n}/{i}");
                match client.send_to_user(bob_id, body.clone()).await {
                    Ok(SendReceipt::Stored {
                        conversation, seq, ..
                    }) => {
                        acknowledged.lock().await.push((conversation, seq, body));
                        if count.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                            enough.notify_one();
                        }
                    }
                    Ok(other) => panic!("a plain send is stored, not {other:?}"),
                    // In flight during the kill: not acknowledged, so it may be lost.
                    Err(_) if killing.load(Ordering::SeqCst) => return,
                    Err(e) => panic!("a send before the kill fails: {e}"),
                }
            }
        }));
    }
    timeout(STEP, enough.notified())
        .await
        .expect("the senders get acknowledgements");
    killing.store(true, Ordering::SeqCst);
    node.kill().await;
    // Sends in flight now wait for a reconnect that never comes: what they carry was not
    // acknowledged, and may be lost.
    for sender in &senders {
        sender.abort();
    }
    for sender in senders {
        let ended = timeout(STEP, sender).await.expect("a sender stops");
        assert!(
            !ended.as_ref().is_err_and(|e| e.is_panic()),
            "a send failed before the kill: {ended:?}"
        );
    }
    let acknowledged = acknowledged.lock().await.clone();
    assert!(acknowledged.len() >= KILL_AFTER);

    let node = options().start().await;
    let (bob, _bob_events) = node.client("bob", false).await;
    for (conversation, seq, body) in &acknowledged {
        let stored = bob
            .history(*conversation, Some(seq + 1), Some(seq - 1), Some(1))
            .await
            .expect("history");
        assert_eq!(
            stored.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
            vec![body.as_str()],
            "acknowledged message {body} (seq {seq}) survives the kill"
        );
    }
    assert!(node.terminate().await.success());
}
