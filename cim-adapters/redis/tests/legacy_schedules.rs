//! What the suite cannot see of schedules in Redis. Entries written by the version before
//! idempotent scheduling (a JSON in the `scheduled` hash and a score in `due`, no idempotency
//! key) are claimed and finished as that version meant them, beside entries scheduled since.
//! And a finished entry is kept, with its idempotency key, for the dedup window only: both
//! keys expire, after which a schedule of the same `client_msg_id` is a new entry.

use std::time::Duration;

use cim_adapter_redis::{RedisConfig, RedisMessageStore};
use cim_backend_fixtures::redis::redis;
use cim_core::message_store::DEDUP_WINDOW;
use cim_core::{
    ErrorKind, MessageStore, NewMessage, Recipient, ScheduledId, ScheduledMessage, Timestamp,
    UserId,
};

fn message(client_msg_id: &str, body: &str) -> NewMessage {
    NewMessage {
        sender: UserId(1),
        to: Recipient::User(UserId(2)),
        client_msg_id: client_msg_id.to_string(),
        body: body.to_string(),
        sent_at: Timestamp(1_000),
    }
}

async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("a redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// Writes `entries` the way the previous version's schedule script did.
async fn write_legacy_entries(url: &str, prefix: &str, entries: &[ScheduledMessage]) {
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("SET")
        .arg(format!("{prefix}next_scheduled"))
        .arg(entries.len());
    for entry in entries {
        let message = serde_json::to_string(&entry.message).expect("encode the message");
        pipe.cmd("HSET")
            .arg(format!("{prefix}scheduled"))
            .arg(entry.id.0)
            .arg(format!(
                r#"{{"id":{},"message":{message},"deliver_at":{}}}"#,
                entry.id.0, entry.deliver_at.0
            ))
            .cmd("ZADD")
            .arg(format!("{prefix}due"))
            .arg(entry.deliver_at.0)
            .arg(entry.id.0);
    }
    pipe.query_async::<()>(&mut connect(url).await)
        .await
        .expect("write the legacy entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_scheduled_before_idempotency_are_claimed_and_finished() {
    let Some(redis) = redis() else {
        return;
    };
    let namespace = format!("legacy_schedules_{}", std::process::id());
    let store = RedisMessageStore::connect(&RedisConfig::new(redis.address()), &namespace)
        .await
        .expect("connect");
    let legacy = [
        ScheduledMessage {
            id: ScheduledId(1),
            message: message("old-1", "first"),
            deliver_at: Timestamp(100),
        },
        ScheduledMessage {
            id: ScheduledId(2),
            message: message("old-2", "second"),
            deliver_at: Timestamp(200),
        },
    ];
    write_legacy_entries(&redis.address(), &format!("{namespace}:msg:"), &legacy).await;
    let claim_for = Duration::from_secs(30);

    let claimed = store
        .claim_due(Timestamp(250), claim_for, 10)
        .await
        .expect("claim_due");
    assert_eq!(claimed, legacy, "old entries are handed out in due order");
    store
        .finish_scheduled(ScheduledId(1))
        .await
        .expect("finish an old entry");
    let error = store
        .finish_scheduled(ScheduledId(1))
        .await
        .expect_err("finish it twice");
    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");

    let new = store
        .schedule(message("new", "third"), Timestamp(300))
        .await
        .expect("schedule");
    assert!(!new.duplicate);
    assert_eq!(
        new.entry.id,
        ScheduledId(3),
        "ids continue after the old ones"
    );
    let later = Timestamp(250).plus(claim_for);
    let mut claimed = store
        .claim_due(later, claim_for, 10)
        .await
        .expect("claim_due");
    claimed.sort_by_key(|entry| entry.id);
    assert_eq!(
        claimed,
        [legacy[1].clone(), new.entry.clone()],
        "the finished old entry never comes back; the other one's claim expired"
    );
    for id in [ScheduledId(2), new.entry.id] {
        store.finish_scheduled(id).await.expect("finish_scheduled");
    }
    let none = store
        .claim_due(later.plus(claim_for), claim_for, 10)
        .await
        .expect("claim_due");
    assert!(none.is_empty(), "every entry is finished: {none:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_entry_is_kept_for_the_dedup_window_and_then_forgotten() {
    let Some(redis) = redis() else {
        return;
    };
    let namespace = format!("finished_schedules_{}", std::process::id());
    let prefix = format!("{namespace}:msg:");
    let store = RedisMessageStore::connect(&RedisConfig::new(redis.address()), &namespace)
        .await
        .expect("connect");
    let first = store
        .schedule(message("once", "hello"), Timestamp(100))
        .await
        .expect("schedule")
        .entry;
    store
        .finish_scheduled(first.id)
        .await
        .expect("finish_scheduled");

    let mut conn = connect(&redis.address()).await;
    let kept = [
        format!("{prefix}finished:{}", first.id.0),
        format!("{prefix}sched_idem:1:once"),
    ];
    let window = i64::try_from(DEDUP_WINDOW.as_millis()).expect("a day in ms");
    for key in &kept {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        assert!(
            window - 60_000 < ttl && ttl <= window,
            "{key} expires after the dedup window, in {ttl} ms"
        );
    }
    let waiting: bool = redis::cmd("HEXISTS")
        .arg(format!("{prefix}sched_idem_of"))
        .arg(first.id.0)
        .query_async(&mut conn)
        .await
        .expect("HEXISTS");
    assert!(!waiting, "a finished entry is no longer among the waiting");
    let retry = store
        .schedule(message("once", "hello"), Timestamp(100))
        .await
        .expect("schedule within the window");
    assert!(retry.duplicate);
    assert_eq!(retry.entry, first);

    // As if the day had passed.
    for key in &kept {
        redis::cmd("PEXPIRE")
            .arg(key)
            .arg(1)
            .query_async::<()>(&mut conn)
            .await
            .expect("PEXPIRE");
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let after = store
        .schedule(message("once", "hello again"), Timestamp(100))
        .await
        .expect("schedule after the window");
    assert!(!after.duplicate, "the window has passed: a new entry");
    assert_ne!(after.entry.id, first.id);
    let claimed = store
        .claim_due(Timestamp(100), Duration::from_secs(30), 10)
        .await
        .expect("claim_due");
    assert_eq!(claimed, [after.entry]);
}
