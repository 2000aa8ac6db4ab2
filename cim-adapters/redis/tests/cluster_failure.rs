//! Redis Cluster losing a primary: with a replica ready, the stores fail promptly while the
//! slot has no primary (no hang, no panic), work again on their own once the replica took over,
//! and have lost nothing that was replicated before the crash.

use std::time::Duration;

use cim_adapter_redis::{RedisConfig, RedisMessageStore, RedisSessionStore};
use cim_backend_fixtures::outage::{assert_fails_promptly, until_recovered};
use cim_backend_fixtures::redis_cluster::redis_cluster;
use cim_core::{
    BindPolicy, ConversationId, HistoryQuery, MessageStore, NewMessage, Recipient, SessionStore,
    Timestamp, UserId,
};
use conformance_tests::support::session;

fn message(id: &str) -> NewMessage {
    NewMessage {
        sender: UserId(1),
        to: Recipient::User(UserId(2)),
        client_msg_id: id.to_string(),
        body: id.to_string(),
        sent_at: Timestamp::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_survive_the_loss_of_a_primary_and_keep_what_it_replicated() {
    let Some(mut target) = redis_cluster().and_then(|target| target.owned()) else {
        return;
    };
    let cluster = target.server_mut().expect("an owned cluster");
    let config = RedisConfig {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_millis(500),
        ..RedisConfig::cluster(cluster.urls())
    };
    let messages = RedisMessageStore::connect(&config, "failover")
        .await
        .expect("connect messages");
    let sessions = RedisSessionStore::connect(&config, "failover", Duration::from_secs(60))
        .await
        .expect("connect sessions");
    let before: Vec<NewMessage> = (0..10).map(|i| message(&format!("before-{i}"))).collect();
    for result in messages.append_all(before).await {
        result.expect("append while the cluster is whole");
    }
    sessions
        .bind(session(1, "node-1", 10), BindPolicy::Reject)
        .await
        .expect("bind while the cluster is whole");

    // The primary holding the message store's slot crashes once its replica has all of it.
    let dead = cluster
        .primary_of("{failover:msg}:")
        .expect("the slot's primary");
    cluster
        .await_replicated(dead)
        .expect("the replica caught up");
    cluster.kill(dead);
    assert_fails_promptly(
        "append while the slot has no primary",
        messages.append(message("during")),
    )
    .await;

    let promoted = cluster
        .await_primary_of("{failover:msg}:", dead)
        .expect("a replica takes over");
    assert_ne!(promoted, dead);
    // A batch, as the server's pipeline appends: its errors must be as transient as one append's.
    until_recovered("append a batch after the failover", || async {
        let mut results = messages.append_all(vec![message("after")]).await;
        results.pop().expect("one result per message")
    })
    .await;

    let conversation = ConversationId::direct(UserId(1), UserId(2));
    let history = messages
        .history(conversation, HistoryQuery::latest(100))
        .await
        .expect("history after the failover");
    let bodies: Vec<&str> = history.iter().map(|m| m.body.as_str()).collect();
    let mut expected: Vec<String> = (0..10).map(|i| format!("before-{i}")).collect();
    expected.push("after".to_string());
    assert_eq!(
        bodies, expected,
        "everything replicated before the crash, then the new one"
    );
    let seqs: Vec<u64> = history.iter().map(|m| m.seq.0).collect();
    assert_eq!(
        seqs,
        (1..=11).collect::<Vec<u64>>(),
        "sequences stay gap-free"
    );

    // The session store (whichever primary holds its slot) answers after the failover too.
    let bound = until_recovered("get a session after the failover", || {
        sessions.get(UserId(1))
    })
    .await;
    assert_eq!(
        bound.map(|s| s.reference()),
        Some(session(1, "node-1", 10).reference())
    );
}
