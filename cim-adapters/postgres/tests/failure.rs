//! The PostgreSQL backend when its server goes away and comes back: operations fail with
//! `Unavailable` within the configured timeout (never a hang or a panic), the same store
//! recovers on its own once the server is back, and nothing acknowledged is lost. Also: nodes
//! starting together on a fresh namespace migrate it once, without tripping over each other.
//!
//! These tests need a server they own (to stop it), so they start one even when
//! `CIM_TEST_POSTGRES_URL` is set; without PostgreSQL installed they are skipped outside CI.

use std::time::{Duration, Instant};

use cim_adapter_postgres::{PostgresConfig, PostgresMetaStore, PostgresStore};
use cim_backend_fixtures::postgres::PostgresServer;
use cim_backend_fixtures::require_or_skip;
use cim_core::{ConversationId, ErrorKind, HistoryQuery, MessageStore, NewMessage, Recipient};
use cim_core::{MetaEvent, MetaStore, Seq, ServerId, ServerInfo, Timestamp, UserId};
use futures::StreamExt;

const ALICE: UserId = UserId(1);
const BOB: UserId = UserId(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

fn message(client_msg_id: &str) -> NewMessage {
    NewMessage {
        sender: ALICE,
        to: Recipient::User(BOB),
        client_msg_id: client_msg_id.to_string(),
        body: format!("body of {client_msg_id}"),
        sent_at: Timestamp::now(),
    }
}

fn config(server: &PostgresServer) -> PostgresConfig {
    PostgresConfig {
        pool_size: 4,
        connect_timeout: CONNECT_TIMEOUT,
        statement_timeout: Duration::from_secs(5),
        ..PostgresConfig::new(server.url())
    }
}

async fn start_server() -> Option<PostgresServer> {
    let started = tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .expect("the fixture task runs");
    require_or_skip(started)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_gives_unavailable_then_the_store_recovers_without_losing_messages() {
    let Some(mut server) = start_server().await else {
        return;
    };
    let store = PostgresStore::connect(&config(&server), "failover")
        .await
        .expect("connects");
    let mut acknowledged = Vec::new();
    for i in 0..3 {
        let appended = store.append(message(&format!("before-{i}"))).await;
        acknowledged.push(appended.expect("append while up").message);
    }

    server = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .expect("stop task");
    // The bound a caller may wait: the connect timeout, with room for a loaded machine.
    let bound = CONNECT_TIMEOUT * 5 + Duration::from_secs(5);
    let started = Instant::now();
    let down = tokio::time::timeout(bound, store.append(message("while-down")))
        .await
        .unwrap_or_else(|_| panic!("append hung for {bound:?} while the server was down"));
    let err = down.expect_err("append cannot succeed while the server is down");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.context().contains(&("backend", "postgres".to_string())),
        "{err}"
    );
    let read = tokio::time::timeout(bound, store.last_seq(acknowledged[0].conversation))
        .await
        .unwrap_or_else(|_| panic!("last_seq hung for {bound:?} while the server was down"));
    assert_eq!(
        read.expect_err("down").kind(),
        ErrorKind::Unavailable,
        "reads fail the same way"
    );
    eprintln!("failed over {:?}", started.elapsed());

    let mut server = tokio::task::spawn_blocking(move || server.restart().map(|()| server))
        .await
        .expect("restart task")
        .expect("the server starts again");

    // The same store, with no help: the first call after the restart may still meet a
    // connection the server cut, so allow a few retries, as a caller of a retryable error would.
    let deadline = Instant::now() + Duration::from_secs(30);
    let recovered = loop {
        match store.append(message("after")).await {
            Ok(appended) => break appended,
            Err(err) if err.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("the store did not recover after the restart: {err}"),
        }
    };
    assert!(!recovered.duplicate);
    acknowledged.push(recovered.message);

    let conversation = ConversationId::direct(ALICE, BOB);
    let history = store
        .history(conversation, HistoryQuery::latest(100))
        .await
        .expect("history after recovery");
    let ids: Vec<&str> = history.iter().map(|m| m.client_msg_id.as_str()).collect();
    assert_eq!(
        ids,
        ["before-0", "before-1", "before-2", "after"],
        "every acknowledged message survives, the failed one was never stored"
    );
    let seqs: Vec<Seq> = history.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        [Seq(1), Seq(2), Seq(3), Seq(4)],
        "no gap from the failed append"
    );
    assert_eq!(history, acknowledged);
    store.close().await;
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .expect("stop task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_a_fresh_namespace_once() {
    let Some(server) = start_server().await else {
        return;
    };
    let config = config(&server);

    let starts: Vec<_> = (0..6)
        .map(|_| {
            let config = config.clone();
            tokio::spawn(async move { PostgresStore::connect(&config, "fresh_cluster").await })
        })
        .collect();
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.expect("task").expect("every node starts"));
    }

    let first = stores[0]
        .append(message("one"))
        .await
        .expect("append on one node");
    let seen = stores[5]
        .history(first.message.conversation, HistoryQuery::latest(10))
        .await
        .expect("history on another node");
    assert_eq!(seen, [first.message], "all nodes share one schema");
    for store in &stores {
        store.close().await;
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resyncs_with_a_snapshot_and_the_lease_survives_a_server_restart() {
    let Some(server) = start_server().await else {
        return;
    };
    let ttl = Duration::from_secs(2);
    let meta = PostgresMetaStore::connect(&config(&server), "meta_failover", ttl)
        .await
        .expect("connects");
    let id = ServerId::new("node-1").expect("valid id");
    let registration = meta
        .register(ServerInfo::new(id.clone(), "127.0.0.1", 7000, 7001))
        .await
        .expect("registers");
    let mut watch = meta.watch().await.expect("watches");
    let first = watch.next().await.expect("a first event");
    assert!(
        matches!(&first, Ok(MetaEvent::Snapshot(servers)) if servers.len() == 1),
        "{first:?}"
    );

    let mut server = tokio::task::spawn_blocking(move || {
        let mut server = server;
        server.stop();
        server.restart().map(|()| server)
    })
    .await
    .expect("restart task")
    .expect("the server starts again");

    // After the gap the watcher must send a fresh snapshot (errors may come first), holding
    // the server whose lease kept being renewed.
    let resynced = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match watch.next().await {
                Some(Ok(MetaEvent::Snapshot(servers))) => break servers,
                Some(_) => continue,
                None => panic!("the watch ended while the store lives"),
            }
        }
    })
    .await
    .expect("a snapshot after the restart");
    assert_eq!(
        resynced.iter().map(|info| &info.id).collect::<Vec<_>>(),
        [&id]
    );
    let listed = meta.list().await.expect("list after the restart");
    assert_eq!(listed.len(), 1, "the registration is still live");

    registration.deregister().await.expect("deregisters");
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .expect("stop task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_blocked_past_statement_timeout_fails_with_timeout() {
    use sqlx::Connection;

    let Some(server) = start_server().await else {
        return;
    };
    let config = PostgresConfig {
        statement_timeout: Duration::from_millis(300),
        ..config(&server)
    };
    let store = PostgresStore::connect(&config, "stmt_timeout")
        .await
        .expect("connects");
    let first = store.append(message("first")).await.expect("append");
    // Another client holds the conversation's counter row, as a stuck transaction would.
    let mut blocker = sqlx::PgConnection::connect(&format!(
        "{}?options=-csearch_path%3Dstmt_timeout",
        server.url()
    ))
    .await
    .expect("a second client connects");
    let mut held = blocker.begin().await.expect("begin");
    sqlx::query("SELECT last_seq FROM conversations WHERE id = $1 FOR UPDATE")
        .bind(first.message.conversation.to_string())
        .execute(&mut *held)
        .await
        .expect("locks the counter row");

    let blocked = tokio::time::timeout(Duration::from_secs(10), store.append(message("second")))
        .await
        .expect("the append gives up by itself");

    let err = blocked.expect_err("the counter row is locked");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    held.rollback().await.expect("release");
    let next = store
        .append(message("second"))
        .await
        .expect("append after release");
    assert_eq!(next.message.seq, Seq(2), "the timed-out append left no gap");
    store.close().await;
    drop(server);
}
