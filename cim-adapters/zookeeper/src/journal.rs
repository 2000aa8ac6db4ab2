//! The change journal of the meta store: why watchers can report every change exactly.
//!
//! A ZooKeeper watch event names the node that changed, not what it changed to; by the time a
//! watcher reads the node it may have changed again, and two watchers would then report different
//! histories. So every registration and update writes, in the same transaction as the change, a
//! journal entry holding the exact registration of that change: a persistent sequential node
//! `events/e{millis}-{sequence}` with `added\n{json}` or `updated\n{json}`. Entries never change,
//! so a watcher that reads one later still reads that change; the transaction gives the entry the
//! same zxid as the change itself (its `czxid`), which lets a watcher tell changes its snapshot
//! already holds from newer ones. Removals need no entry: ZooKeeper reports the deletion of the
//! ephemeral node, whoever caused it (deregistration or an expired session).
//!
//! Entries are only needed until the watchers have read them, which takes milliseconds, so every
//! meta store deletes entries older than [`RETENTION`] every [`TRIM_PERIOD`]. A watcher that still
//! finds an entry gone has fallen behind and resyncs with a snapshot.

use std::time::Duration;

use cim_core::{Error, Result, ServerInfo, Timestamp};
use zookeeper_client::Client;

use crate::connection::ZooKeeper;

/// How long journal entries are kept.
pub(crate) const RETENTION: Duration = Duration::from_secs(30);

/// How often each meta store deletes expired entries.
pub(crate) const TRIM_PERIOD: Duration = Duration::from_secs(10);

/// At most this many deletions are sent before waiting for their answers.
const TRIM_BATCH: usize = 500;

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// A server registered (or registered again), with this information.
    Added(ServerInfo),
    /// A registered server changed its information to this.
    Updated(ServerInfo),
}

/// The path to create a new entry with (ZooKeeper appends the sequence number).
pub(crate) fn entry_prefix(events: &str) -> String {
    format!("{events}/e{:013}-", Timestamp::now().0.max(0))
}

/// The content of an `added` entry for the registration `json`.
pub(crate) fn added(json: &str) -> Vec<u8> {
    format!("added\n{json}").into_bytes()
}

/// The content of an `updated` entry for the registration `json`.
pub(crate) fn updated(json: &str) -> Vec<u8> {
    format!("updated\n{json}").into_bytes()
}

/// Parses an entry's content.
pub(crate) fn decode(data: &[u8]) -> Result<Change> {
    let corrupt = || {
        Error::internal("a journal entry of the zookeeper meta store cannot be decoded")
            .with_context("backend", "zookeeper")
    };
    let text = std::str::from_utf8(data).map_err(|e| corrupt().with_source(e))?;
    let (kind, json) = text.split_once('\n').ok_or_else(corrupt)?;
    let info: ServerInfo = serde_json::from_str(json).map_err(|e| corrupt().with_source(e))?;
    match kind {
        "added" => Ok(Change::Added(info)),
        "updated" => Ok(Change::Updated(info)),
        _ => Err(corrupt()),
    }
}

/// The sequence number ZooKeeper gave the entry `name` (the digits after the last `-`).
pub(crate) fn sequence(name: &str) -> Option<i64> {
    name.rsplit_once('-')?.1.parse().ok()
}

/// When the entry `name` was written, in milliseconds since the epoch (writer's clock).
fn written_at(name: &str) -> Option<i64> {
    name.strip_prefix('e')?.split_once('-')?.0.parse().ok()
}

/// Deletes the entries under `events` older than [`RETENTION`]; returns how many went.
pub(crate) async fn trim(zk: &ZooKeeper, client: &Client, events: &str) -> Result<usize> {
    let names = match zk
        .within("trim journal", client.list_children(events))
        .await?
    {
        Ok(names) => names,
        Err(zookeeper_client::Error::NoNode) => return Ok(0),
        Err(e) => return Err(crate::connection::convert(e, "trim journal")),
    };
    let horizon = Timestamp::now().minus(RETENTION).0;
    let expired: Vec<String> = names
        .iter()
        .filter(|name| written_at(name).is_some_and(|at| at < horizon))
        .map(|name| format!("{events}/{name}"))
        .collect();
    let mut trimmed = 0;
    for batch in expired.chunks(TRIM_BATCH) {
        // The requests go out as they are created; their answers are awaited together.
        let deletions: Vec<_> = batch.iter().map(|path| client.delete(path, None)).collect();
        for outcome in zk
            .bounded("trim journal", futures::future::join_all(deletions))
            .await?
        {
            match outcome {
                Ok(()) => trimmed += 1,
                // Another meta store trimmed it first.
                Err(zookeeper_client::Error::NoNode) => {}
                Err(e) => return Err(crate::connection::convert(e, "trim journal")),
            }
        }
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_carry_their_time_and_sequence() {
        let prefix = entry_prefix("/cim/x/meta/events");
        let name = format!(
            "{}0000000042",
            prefix.trim_start_matches("/cim/x/meta/events/")
        );
        assert_eq!(sequence(&name), Some(42));
        let at = written_at(&name).expect("a time");
        assert!((Timestamp::now().0 - at).abs() < 60_000, "{name}");
        assert_eq!(sequence("garbage"), None);
        assert_eq!(written_at("x123-1"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trimming_deletes_only_entries_older_than_the_retention() {
        let Some(zookeeper) = cim_backend_fixtures::zookeeper::zookeeper() else {
            return;
        };
        let config = crate::ZooKeeperConfig::new(zookeeper.address());
        let zk = ZooKeeper::open(&config, Duration::from_secs(2))
            .await
            .expect("connect");
        let client = zk.client().await.expect("a session");
        let events = "/cim/journal_trim_test/meta/events";
        zk.ensure_path(&client, events).await.expect("create");
        let sequential = zookeeper_client::CreateMode::PersistentSequential
            .with_acls(zookeeper_client::Acls::anyone_all());
        let expired = Timestamp::now().minus(RETENTION * 2).0;
        client
            .create(&format!("{events}/e{expired:013}-"), b"", &sequential)
            .await
            .expect("an expired entry");
        client
            .create(&entry_prefix(events), b"", &sequential)
            .await
            .expect("a fresh entry");

        assert_eq!(trim(&zk, &client, events).await.expect("trim"), 1);
        let left = client.list_children(events).await.expect("list");
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(
            written_at(&left[0]).is_some_and(|at| at > expired),
            "{left:?}"
        );
    }

    #[test]
    fn entries_round_trip_and_garbage_is_internal() {
        let info = ServerInfo::new(
            cim_core::ServerId::new("node-1").expect("valid"),
            "10.0.0.1",
            7000,
            7001,
        );
        let json = serde_json::to_string(&info).expect("encodes");
        assert_eq!(
            decode(&added(&json)).expect("decodes"),
            Change::Added(info.clone())
        );
        assert_eq!(
            decode(&updated(&json)).expect("decodes"),
            Change::Updated(info)
        );
        for bad in [&b"removed\n{}"[..], b"added", b"added\nnot json", b"\xff"] {
            let err = decode(bad).expect_err("garbage");
            assert_eq!(err.kind(), cim_core::ErrorKind::Internal);
        }
    }
}
