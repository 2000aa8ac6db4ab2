//! Consul's API semantics that the stores rely on, checked directly through this crate's
//! client: check-and-set, session locks, blocking queries, tombstones, transactions, session
//! expiry. They hold for a real Consul (the documentation and Consul's source say so), and
//! running them against whatever the fixture provides checks that cim's Consul HTTP API
//! stand-in, when that is what runs, behaves the same. Each test works under a key prefix of its
//! own, so they can share an agent.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cim_adapter_consul::ConsulConfig;
use cim_adapter_consul::client::{
    BlockingQuery, ConsulClient, PutMode, SessionBehavior, SessionSpec, TxnOp, TxnOutcome,
};
use cim_backend_fixtures::consul::ConsulTarget;

/// A client of the fixture's Consul (kept alive by the returned target, which the tests of this
/// file share) and a key prefix of the test's own.
fn consul(test: &str) -> Option<(Arc<ConsulTarget>, ConsulClient, String)> {
    let target = cim_backend_fixtures::consul::shared_consul()?;
    let client = ConsulClient::new(&ConsulConfig::new(target.address())).expect("a client");
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    Some((target, client, format!("cimtest/api-{run}/{test}/")))
}

fn spec(ttl: Duration) -> SessionSpec {
    SessionSpec {
        name: "cim api test".to_string(),
        ttl,
        behavior: SessionBehavior::Delete,
        lock_delay: Duration::ZERO,
    }
}

#[tokio::test]
async fn a_put_with_cas_writes_only_over_the_index_it_names() {
    let Some((_consul, client, prefix)) = consul("cas") else {
        return;
    };
    let key = format!("{prefix}k");

    assert!(
        client
            .kv_put(&key, b"1".to_vec(), PutMode::Cas(0))
            .await
            .expect("put")
    );
    assert!(
        !client
            .kv_put(&key, b"2".to_vec(), PutMode::Cas(0))
            .await
            .expect("put"),
        "cas=0 creates only a key that does not exist"
    );
    let entry = client
        .kv_get(&key)
        .await
        .expect("get")
        .expect("the key exists");
    assert_eq!(entry.value, b"1");
    assert!(
        !client
            .kv_put(&key, b"3".to_vec(), PutMode::Cas(entry.modify_index + 1000))
            .await
            .expect("put"),
        "a stale index is refused"
    );
    assert!(
        client
            .kv_put(&key, b"4".to_vec(), PutMode::Cas(entry.modify_index))
            .await
            .expect("put"),
        "the current index is accepted"
    );
    let after = client.kv_get(&key).await.expect("get").expect("exists");
    assert_eq!(after.value, b"4");
    assert!(after.modify_index > entry.modify_index);
    assert_eq!(after.create_index, entry.create_index);
    assert!(
        !client
            .kv_delete(&key, Some(entry.modify_index))
            .await
            .expect("delete"),
        "a delete with a stale index is refused"
    );
    assert!(
        client
            .kv_delete(&key, Some(after.modify_index))
            .await
            .expect("delete")
    );
    assert_eq!(client.kv_get(&key).await.expect("get"), None);
}

#[tokio::test]
async fn a_key_held_by_one_session_cannot_be_acquired_by_another() {
    let Some((_consul, client, prefix)) = consul("locks") else {
        return;
    };
    let key = format!("{prefix}lock");
    let first = client
        .session_create(&spec(Duration::from_secs(30)))
        .await
        .expect("session");
    let second = client
        .session_create(&spec(Duration::from_secs(30)))
        .await
        .expect("session");

    assert!(
        client
            .kv_put(&key, b"a".to_vec(), PutMode::Acquire(&first))
            .await
            .expect("acquire")
    );
    assert!(
        !client
            .kv_put(&key, b"b".to_vec(), PutMode::Acquire(&second))
            .await
            .expect("acquire"),
        "a held key cannot be acquired by another session"
    );
    let held = client.kv_get(&key).await.expect("get").expect("exists");
    assert_eq!(held.session.as_deref(), Some(first.as_str()));
    assert_eq!(held.value, b"a", "the refused acquire wrote nothing");
    assert_eq!(held.lock_index, 1);

    assert!(
        client
            .kv_put(&key, b"c".to_vec(), PutMode::Acquire(&first))
            .await
            .expect("acquire"),
        "the holder may write again"
    );
    assert!(
        !client
            .kv_put(&key, b"d".to_vec(), PutMode::Release(&second))
            .await
            .expect("release"),
        "only the holder releases"
    );
    assert!(
        client
            .kv_put(&key, b"e".to_vec(), PutMode::Release(&first))
            .await
            .expect("release")
    );
    assert!(
        client
            .kv_put(&key, b"f".to_vec(), PutMode::Acquire(&second))
            .await
            .expect("acquire")
    );
    let taken = client.kv_get(&key).await.expect("get").expect("exists");
    assert_eq!(taken.session.as_deref(), Some(second.as_str()));
    assert_eq!(taken.lock_index, 2, "each acquisition counts");
    for session in [first, second] {
        client.session_destroy(&session).await.expect("destroy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_query_returns_when_a_key_under_its_prefix_changes() {
    let Some((_consul, client, prefix)) = consul("blocking") else {
        return;
    };
    client
        .kv_put(&format!("{prefix}a"), Vec::new(), PutMode::Set)
        .await
        .expect("put");
    let before = client.kv_keys(&prefix, None).await.expect("keys");

    let watcher = {
        let client = client.clone();
        let prefix = prefix.clone();
        let block = BlockingQuery {
            index: before.index,
            wait: Duration::from_secs(60),
        };
        tokio::spawn(async move { client.kv_keys(&prefix, Some(block)).await })
    };
    client
        .kv_put(&format!("{prefix}b"), Vec::new(), PutMode::Set)
        .await
        .expect("put");

    let after = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the blocking query answers on the change, long before its wait")
        .expect("the task")
        .expect("the query");
    assert!(
        after.index > before.index,
        "{} > {}",
        after.index,
        before.index
    );
    assert_eq!(after.value, [format!("{prefix}a"), format!("{prefix}b")]);
}

#[tokio::test]
async fn a_blocking_query_without_a_change_answers_after_its_wait_with_the_same_index() {
    let Some((_consul, client, prefix)) = consul("quiet") else {
        return;
    };
    client
        .kv_put(&format!("{prefix}a"), Vec::new(), PutMode::Set)
        .await
        .expect("put");
    let before = client.kv_list(&prefix, None).await.expect("list");
    let wait = Duration::from_millis(500);

    let started = Instant::now();
    let after = client
        .kv_list(
            &prefix,
            Some(BlockingQuery {
                index: before.index,
                wait,
            }),
        )
        .await
        .expect("the query");

    assert!(
        started.elapsed() >= wait,
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(after.index, before.index);
    assert_eq!(after.value, before.value);
}

#[tokio::test]
async fn deleting_a_key_moves_the_index_of_its_prefix_forward() {
    let Some((_consul, client, prefix)) = consul("tombstones") else {
        return;
    };
    for key in ["a", "b"] {
        client
            .kv_put(&format!("{prefix}{key}"), Vec::new(), PutMode::Set)
            .await
            .expect("put");
    }
    let before = client.kv_keys(&prefix, None).await.expect("keys");
    client
        .kv_delete(&format!("{prefix}b"), None)
        .await
        .expect("delete");
    let after = client.kv_keys(&prefix, None).await.expect("keys");
    assert!(
        after.index > before.index,
        "a blocking query on the prefix would see the delete"
    );
    assert_eq!(after.value, [format!("{prefix}a")]);
}

#[tokio::test]
async fn keys_are_listed_in_byte_order_and_an_empty_prefix_lists_nothing() {
    let Some((_consul, client, prefix)) = consul("order") else {
        return;
    };
    for key in [
        "00000000000000000010",
        "00000000000000000002",
        "00000000000000000100",
    ] {
        client
            .kv_put(
                &format!("{prefix}{key}"),
                key.as_bytes().to_vec(),
                PutMode::Set,
            )
            .await
            .expect("put");
    }
    let keys = client.kv_keys(&prefix, None).await.expect("keys").value;
    let suffixes: Vec<&str> = keys.iter().map(|k| &k[prefix.len()..]).collect();
    assert_eq!(
        suffixes,
        [
            "00000000000000000002",
            "00000000000000000010",
            "00000000000000000100"
        ]
    );
    let listed = client.kv_list(&prefix, None).await.expect("list").value;
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].value, b"00000000000000000002");
    let nothing = client
        .kv_keys(&format!("{prefix}nothing/"), None)
        .await
        .expect("keys");
    assert!(nothing.value.is_empty());
}

#[tokio::test]
async fn a_transaction_applies_all_or_nothing_and_names_the_failed_operation() {
    let Some((_consul, client, prefix)) = consul("txn") else {
        return;
    };
    let existing = format!("{prefix}existing");
    let fresh = format!("{prefix}fresh");
    client
        .kv_put(&existing, b"x".to_vec(), PutMode::Set)
        .await
        .expect("put");

    let outcome = client
        .txn(&[
            TxnOp::Set {
                key: fresh.clone(),
                value: b"y".to_vec(),
            },
            TxnOp::CheckNotExists {
                key: existing.clone(),
            },
        ])
        .await
        .expect("the transaction runs");
    let TxnOutcome::RolledBack(errors) = outcome else {
        panic!("a failed check rolls the transaction back: {outcome:?}");
    };
    assert_eq!(errors.iter().map(|e| e.op_index).collect::<Vec<_>>(), [1]);
    assert_eq!(
        client.kv_get(&fresh).await.expect("get"),
        None,
        "nothing applied"
    );

    let entry = client
        .kv_get(&existing)
        .await
        .expect("get")
        .expect("exists");
    let outcome = client
        .txn(&[
            TxnOp::CheckIndex {
                key: existing.clone(),
                index: entry.modify_index,
            },
            TxnOp::Delete {
                key: existing.clone(),
            },
            TxnOp::Set {
                key: fresh.clone(),
                value: b"z".to_vec(),
            },
            TxnOp::Get { key: fresh.clone() },
        ])
        .await
        .expect("the transaction runs");
    let TxnOutcome::Committed(results) = outcome else {
        panic!("every check holds: {outcome:?}");
    };
    assert_eq!(
        results.last().map(|e| e.value.clone()),
        Some(b"z".to_vec()),
        "get sees the set"
    );
    assert_eq!(client.kv_get(&existing).await.expect("get"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_is_not_renewed_lives_its_ttl_then_takes_its_keys_with_it() {
    let Some((_consul, client, prefix)) = consul("expiry") else {
        return;
    };
    let ttl = Duration::from_secs(1);
    let key = format!("{prefix}held");
    let session = client.session_create(&spec(ttl)).await.expect("session");
    assert!(
        client
            .kv_put(&key, b"v".to_vec(), PutMode::Acquire(&session))
            .await
            .expect("acquire")
    );
    let renewed = Instant::now();
    assert!(
        client.session_renew(&session).await.expect("renew"),
        "a live session renews"
    );

    // Await the deletion with blocking queries on the key's prefix.
    let mut index = client.kv_keys(&prefix, None).await.expect("keys").index;
    let gone_after = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let keys = client
                .kv_keys(
                    &prefix,
                    Some(BlockingQuery {
                        index,
                        wait: Duration::from_secs(5),
                    }),
                )
                .await
                .expect("keys");
            if keys.value.is_empty() {
                return renewed.elapsed();
            }
            index = keys.index;
        }
    })
    .await
    .expect("consul invalidates the session within twice its TTL, and deletes its key");

    assert!(
        gone_after >= ttl,
        "the session lives at least its TTL, it lived {gone_after:?}"
    );
    assert!(
        !client.session_renew(&session).await.expect("renew"),
        "a gone session is gone"
    );
    assert_eq!(client.session_info(&session).await.expect("info"), None);
}

#[tokio::test]
async fn destroying_a_session_deletes_its_keys_and_renewing_it_then_says_it_is_gone() {
    let Some((_consul, client, prefix)) = consul("destroy") else {
        return;
    };
    let key = format!("{prefix}held");
    let session = client
        .session_create(&spec(Duration::from_secs(30)))
        .await
        .expect("session");
    let info = client
        .session_info(&session)
        .await
        .expect("info")
        .expect("it exists");
    assert_eq!(info.behavior, "delete");
    assert!(
        client
            .kv_put(&key, b"v".to_vec(), PutMode::Acquire(&session))
            .await
            .expect("acquire")
    );

    client.session_destroy(&session).await.expect("destroy");

    assert_eq!(client.kv_get(&key).await.expect("get"), None);
    assert!(!client.session_renew(&session).await.expect("renew"));
    assert!(
        !client
            .session_list()
            .await
            .expect("list")
            .iter()
            .any(|s| s.id == session)
    );
    let error = client
        .txn(&[TxnOp::Lock {
            key,
            value: Vec::new(),
            session,
        }])
        .await
        .expect("the transaction runs");
    assert!(
        matches!(&error, TxnOutcome::RolledBack(errors) if errors.len() == 1),
        "a lock by a destroyed session fails: {error:?}"
    );
}
