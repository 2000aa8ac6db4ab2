//! The search index, kept off the append's transaction.
//!
//! Indexing a body in FTS5's trigram index costs more than the rest of an append (BENCHMARKS.md:
//! 15–50 µs per 100-byte body against about 25 µs for the rows and their B-tree indexes), and
//! an acknowledgement that waits for it waits for nothing it needs: the message is durable once
//! its row is committed. So appends commit only their rows, and the writer thread indexes what
//! they committed afterwards, in batches of up to [`BATCH`] in one transaction of their own:
//!
//! - when it has nothing else to do (no write waiting), so that under bursty load indexing runs
//!   in the gaps and costs the senders nothing;
//! - and at once when [`EAGER`] messages wait for the index, so that under sustained load the
//!   unindexed tail stays small; one batch delays the writes queued behind it by one batch.
//!
//! `search_index_state.indexed_up_to` marks how far the index goes (migration 0007): every
//! message at or below it is indexed and every message above it is not, because message ids
//! only grow and only this writer inserts messages and moves the mark, in the same transaction
//! as the batch it indexed. Search matches indexed messages through the index and scans the
//! tail above the mark, in one statement and so one snapshot: it sees every committed message,
//! indexed or not. A crash loses no index entry either: what was committed but not indexed is
//! above the mark, and the writer indexes it after the next open.

use rusqlite::{Connection, TransactionBehavior};

use super::error::During;
use crate::Result;

/// Messages indexed in one transaction at most.
const BATCH: i64 = 1024;
/// Unindexed messages at which the writer indexes even while writes are waiting.
const EAGER: u64 = 1024;

/// What the writer knows of the index's backlog.
#[derive(Debug)]
pub(super) struct SearchIndex {
    /// Committed messages above the mark (an estimate: deletions are not counted off).
    backlog: u64,
    /// The last batch failed: wait for the next commit before trying again, rather than retry
    /// in a loop while idle.
    failed: bool,
}

impl SearchIndex {
    /// Reads the backlog left by the previous writer (messages committed but not yet indexed
    /// when it stopped).
    pub(super) fn open(connection: &Connection) -> Result<SearchIndex> {
        let backlog: i64 = connection
            .query_row(
                "SELECT count(*) FROM messages \
                 WHERE id > (SELECT indexed_up_to FROM search_index_state)",
                [],
                |row| row.get(0),
            )
            .during("open the writer")?;
        Ok(SearchIndex {
            backlog: u64::try_from(backlog).unwrap_or(0),
            failed: false,
        })
    }

    /// Counts `messages` new rows, committed.
    pub(super) fn committed(&mut self, messages: usize) {
        self.backlog = self
            .backlog
            .saturating_add(u64::try_from(messages).unwrap_or(u64::MAX));
        self.failed = false;
    }

    /// Whether an idle writer has indexing to do.
    pub(super) fn has_work(&self) -> bool {
        self.backlog > 0 && !self.failed
    }

    /// Whether the backlog is large enough to index even while writes are waiting.
    pub(super) fn is_overdue(&self) -> bool {
        self.backlog >= EAGER && !self.failed
    }

    /// Indexes the next batch above the mark and moves the mark past it. A failure is logged
    /// and leaves the mark where it was: the batch is tried again after the next commit.
    pub(super) fn index_batch(&mut self, connection: &mut Connection) {
        match index_batch(connection) {
            Ok(Batch { indexed, more }) => {
                self.backlog = if more {
                    self.backlog.saturating_sub(indexed).max(1)
                } else {
                    0
                };
            }
            Err(e) => {
                self.failed = true;
                tracing::warn!(error = %e, backlog = self.backlog, "indexing committed messages for search failed; search still finds them (it scans what is not indexed), and indexing is tried again after the next write");
            }
        }
    }
}

/// What one batch did.
struct Batch {
    indexed: u64,
    /// Whether unindexed messages are left above the batch.
    more: bool,
}

fn index_batch(connection: &mut Connection) -> Result<Batch> {
    const OPERATION: &str = "index for search";
    // Dropped without a commit, the transaction rolls back, index and mark together.
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .during(OPERATION)?;
    let mark: i64 = tx
        .prepare_cached("SELECT indexed_up_to FROM search_index_state")
        .during(OPERATION)?
        .query_row([], |row| row.get(0))
        .during(OPERATION)?;
    // NULL when nothing is above the mark.
    let top: Option<i64> = tx
        .prepare_cached(
            "SELECT max(id) FROM (SELECT id FROM messages WHERE id > ? ORDER BY id LIMIT ?)",
        )
        .during(OPERATION)?
        .query_row(rusqlite::params![mark, BATCH], |row| row.get(0))
        .during(OPERATION)?;
    let Some(top) = top else {
        return Ok(Batch {
            indexed: 0,
            more: false,
        });
    };
    let indexed = tx
        .prepare_cached(
            "INSERT INTO messages_fts (rowid, body_folded) \
             SELECT id, body_folded FROM messages WHERE id > ? AND id <= ?",
        )
        .during(OPERATION)?
        .execute(rusqlite::params![mark, top])
        .during(OPERATION)?;
    tx.prepare_cached("UPDATE search_index_state SET indexed_up_to = ?")
        .during(OPERATION)?
        .execute([top])
        .during(OPERATION)?;
    tx.commit().during(OPERATION)?;
    // Only this writer inserts messages, so a batch short of the limit took everything there was.
    Ok(Batch {
        indexed: u64::try_from(indexed).unwrap_or(u64::MAX),
        more: i64::try_from(indexed).is_ok_and(|indexed| indexed >= BATCH),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::embedded::sqlite::SqliteStore;
    use crate::{MessageStore, NewMessage, Recipient, Timestamp, UserId};

    const ALICE: UserId = UserId(1);
    const BOB: UserId = UserId(2);

    fn message(client_msg_id: &str, body: &str, sent_at: i64) -> NewMessage {
        NewMessage {
            sender: ALICE,
            to: Recipient::User(BOB),
            client_msg_id: client_msg_id.to_string(),
            body: body.to_string(),
            sent_at: Timestamp(sent_at),
        }
    }

    /// A connection of our own on the file, beside (or after) the store's.
    fn raw(path: &Path) -> Connection {
        Connection::open(path).expect("raw connection")
    }

    fn mark(connection: &Connection) -> i64 {
        connection
            .query_row("SELECT indexed_up_to FROM search_index_state", [], |row| {
                row.get(0)
            })
            .expect("mark")
    }

    /// The ids FTS5 itself (not the tail scan) matches for `phrase`.
    fn indexed_ids(connection: &Connection, phrase: &str) -> Vec<i64> {
        let mut statement = connection
            .prepare("SELECT rowid FROM messages_fts WHERE messages_fts MATCH ? ORDER BY rowid")
            .expect("prepare");
        statement
            .query_map([format!("\"{phrase}\"")], |row| row.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    /// FTS5's own check that the index matches the messages table (rank 1: external content).
    fn assert_index_consistent(connection: &Connection) {
        connection
            .execute(
                "INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)",
                [],
            )
            .expect("the search index matches the messages table");
    }

    async fn search_ids(store: &SqliteStore, query: &str) -> Vec<u64> {
        let page = store
            .search(BOB, &[], query, None, 100)
            .await
            .expect("search");
        let mut ids: Vec<u64> = page.items.iter().map(|m| m.id.0).collect();
        ids.sort_unstable();
        ids
    }

    #[tokio::test]
    async fn messages_committed_but_not_indexed_are_found_and_indexed_after_the_next_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cim.db");
        let store = SqliteStore::open(&path).await.expect("opens");
        let mut ids = Vec::new();
        for (key, body, sent_at) in [
            ("a", "the blue whale", 10),
            ("b", "a blue bird", 20),
            ("c", "red fox", 30),
        ] {
            let appended = store
                .append(message(key, body, sent_at))
                .await
                .expect("append");
            ids.push(i64::try_from(appended.message.id.0).expect("id"));
        }
        store.close().await;
        drop(store);
        // As after a crash between the appends' commit and their indexing: nothing indexed.
        {
            let connection = raw(&path);
            assert_eq!(mark(&connection), ids[2], "closing indexed everything");
            connection
                .execute(
                    "INSERT INTO messages_fts (messages_fts) VALUES ('delete-all')",
                    [],
                )
                .expect("empty the index");
            connection
                .execute("UPDATE search_index_state SET indexed_up_to = 0", [])
                .expect("move the mark back");
        }

        let store = SqliteStore::open(&path).await.expect("reopens");
        // Found whether the writer has indexed them yet or not.
        let blue: Vec<u64> = ids[..2].iter().map(|id| id.unsigned_abs()).collect();
        assert_eq!(search_ids(&store, "blue").await, blue);
        // A message deleted while the writer may or may not have indexed it yet.
        assert_eq!(store.delete_before(Timestamp(15)).await.expect("delete"), 1);
        let appended = store
            .append(message("d", "blue moon", 40))
            .await
            .expect("append");
        let expected = vec![ids[1].unsigned_abs(), appended.message.id.0];
        assert_eq!(search_ids(&store, "blue").await, expected);
        store.close().await;
        drop(store);

        let connection = raw(&path);
        assert_eq!(
            mark(&connection),
            i64::try_from(appended.message.id.0).expect("id")
        );
        assert_eq!(
            indexed_ids(&connection, "blue"),
            expected
                .iter()
                .map(|id| i64::try_from(*id).expect("id"))
                .collect::<Vec<_>>()
        );
        assert_index_consistent(&connection);
    }

    #[tokio::test]
    async fn a_backlog_of_several_batches_is_indexed_and_searchable_throughout() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cim.db");
        let store = SqliteStore::open(&path).await.expect("opens");
        let total = usize::try_from(BATCH).expect("batch") * 2 + 100;
        let messages = (0..total)
            .map(|i| message(&format!("k{i}"), &format!("note number {i} zebra"), 1))
            .collect();
        let appended = store.append_all(messages).await;
        let last = appended
            .iter()
            .map(|result| result.as_ref().expect("append").message.id.0)
            .max()
            .expect("appended");
        let page = store
            .search(BOB, &[], "zebra", None, 10)
            .await
            .expect("search");
        assert_eq!(page.items.len(), 10);
        assert_eq!(page.items[0].id.0, last, "newest first, indexed or not");
        store.close().await;
        drop(store);

        let connection = raw(&path);
        assert_eq!(mark(&connection), i64::try_from(last).expect("id"));
        assert_eq!(indexed_ids(&connection, "zebra").len(), total);
        assert_index_consistent(&connection);
    }
}
