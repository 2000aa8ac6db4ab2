//! [`MessageStore`] for [`SqliteStore`].
//!
//! - **Sequences.** Each conversation has a counter row, bumped by the same `BEGIN IMMEDIATE`
//!   transaction that inserts the message. The transaction holds the file's write lock from its
//!   first statement, so concurrent appends queue instead of reading the same counter, and a
//!   failed append rolls its bump back: no collisions, no gaps. Counter rows are never deleted,
//!   so retention never lets a number be reused.
//! - **Idempotency.** `UNIQUE (sender, client_msg_id)`; the transaction looks the key up before
//!   inserting, so a retry gets the original row back.
//! - **Pending** joins the user's visible conversations (their direct ones from the
//!   `participants` index, plus the groups the caller names) with the messages above the user's
//!   cursor in each, in (conversation, seq) order. Conversations sort by their text form
//!   (`d:10:2` before `d:2:3`); the contract orders only within a conversation. The page cursor
//!   is the last (conversation, seq) returned.
//! - **Search** sees what the user sent, their direct conversations and the named groups. It
//!   matches every query word as a case-insensitive substring of the body, like the
//!   reference store: words and bodies are lower-cased by Rust's `str::to_lowercase` (SQLite
//!   folds ASCII only), and the folded body is indexed by an FTS5 trigram index, filled after
//!   the append's commit (the `search_index` module). Words of three characters or more narrow
//!   the candidates through the index (plus the short tail not indexed yet); an exact `instr` check
//!   on every word then decides, so words shorter than a trigram still match correctly (a query
//!   of only such words scans the user's visible conversations).
//! - **Schedules.** A claim is one `UPDATE ... RETURNING` over the due, unclaimed entries:
//!   atomic, so two claimers never get the same entry.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::OptionalExtension;
use sqlx::FromRow;

use super::SqliteStore;
use super::columns::{conversation, int, recipient, recipient_columns, unsigned};
use super::commit::{Write, Written};
use super::error::During;
use crate::paging::{
    checked_limit, fetch_size, id_cursor, into_page, parse_pending_cursor, pending_cursor,
};
use crate::{
    Appended, ConversationId, Cursor, Error, GroupId, HistoryQuery, MessageCapabilities, MessageId,
    MessageStore, NewMessage, Page, Result, Scheduled, ScheduledId, ScheduledMessage, Seq,
    StoredMessage, Timestamp, UserId,
};

/// The columns a [`MessageRow`] is read from, for `concat!` into static SQL.
macro_rules! message_columns {
    () => {
        "id, conversation, seq, sender, to_kind, to_id, client_msg_id, body, sent_at"
    };
}

/// The columns a [`ScheduledRow`] is read from.
macro_rules! scheduled_columns {
    () => {
        "id, sender, to_kind, to_id, client_msg_id, body, sent_at, deliver_at"
    };
}

/// Search's conditions after the candidate set: ?1 the id to page below, ?2 the user (who sees
/// what they sent, and their direct conversations), ?3 the named groups' conversations (JSON
/// array), ?4 the folded words (JSON array), ?5 the row limit.
macro_rules! search_conditions {
    () => {
        " AND id < ?1 \
          AND (sender = ?2 \
               OR conversation IN (SELECT conversation FROM participants WHERE user_id = ?2 \
                                   UNION ALL SELECT value FROM json_each(?3))) \
          AND NOT EXISTS (SELECT 1 FROM json_each(?4) WHERE instr(body_folded, value) = 0) \
          ORDER BY id DESC LIMIT ?5"
    };
}

/// Search narrowed by the trigram index: ?6 is the FTS5 query. Messages the writer has not
/// indexed yet (above the mark, see the `search_index` module) are candidates too, so a search
/// sees every committed message.
const SEARCH_INDEXED: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE id IN ( \
         SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?6 \
         UNION ALL \
         SELECT id FROM messages WHERE id > (SELECT indexed_up_to FROM search_index_state))",
    search_conditions!()
);

/// Search by scanning the visible conversations, when no word is long enough for the index.
const SEARCH_SCAN: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE TRUE",
    search_conditions!()
);

/// Words shorter than this many characters cannot use the trigram index.
const TRIGRAM: usize = 3;

#[derive(FromRow)]
struct MessageRow {
    id: i64,
    conversation: String,
    seq: i64,
    sender: i64,
    to_kind: String,
    to_id: i64,
    client_msg_id: String,
    body: String,
    sent_at: i64,
}

impl MessageRow {
    /// Reads a row of [`message_columns!`] from the writer's connection.
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRow> {
        Ok(MessageRow {
            id: row.get(0)?,
            conversation: row.get(1)?,
            seq: row.get(2)?,
            sender: row.get(3)?,
            to_kind: row.get(4)?,
            to_id: row.get(5)?,
            client_msg_id: row.get(6)?,
            body: row.get(7)?,
            sent_at: row.get(8)?,
        })
    }

    fn into_message(self) -> Result<StoredMessage> {
        Ok(StoredMessage {
            id: MessageId(unsigned(self.id, "messages.id")?),
            conversation: conversation(&self.conversation)?,
            seq: Seq(unsigned(self.seq, "messages.seq")?),
            sender: UserId(unsigned(self.sender, "messages.sender")?),
            to: recipient(&self.to_kind, self.to_id)?,
            client_msg_id: self.client_msg_id,
            body: self.body,
            sent_at: Timestamp(self.sent_at),
        })
    }
}

#[derive(FromRow)]
struct ScheduledRow {
    id: i64,
    sender: i64,
    to_kind: String,
    to_id: i64,
    client_msg_id: String,
    body: String,
    sent_at: i64,
    deliver_at: i64,
}

impl ScheduledRow {
    fn into_scheduled(self) -> Result<ScheduledMessage> {
        Ok(ScheduledMessage {
            id: ScheduledId(unsigned(self.id, "scheduled.id")?),
            message: NewMessage {
                sender: UserId(unsigned(self.sender, "scheduled.sender")?),
                to: recipient(&self.to_kind, self.to_id)?,
                client_msg_id: self.client_msg_id,
                body: self.body,
                sent_at: Timestamp(self.sent_at),
            },
            deliver_at: Timestamp(self.deliver_at),
        })
    }
}

fn into_messages(rows: Vec<MessageRow>) -> Result<Vec<StoredMessage>> {
    rows.into_iter().map(MessageRow::into_message).collect()
}

/// The conversations of `groups` as a JSON array of their text forms, for `json_each`.
fn group_conversations(groups: &[GroupId]) -> Result<String> {
    let conversations: Vec<String> = groups
        .iter()
        .map(|group| ConversationId::Group(*group).to_string())
        .collect();
    to_json(&conversations)
}

fn to_json(values: &[String]) -> Result<String> {
    serde_json::to_string(values)
        .map_err(|e| Error::internal("encoding a list of strings as JSON failed").with_source(e))
}

/// An FTS5 query requiring every word long enough for the trigram index, each as a quoted
/// phrase (so no word is read as query syntax); `None` if no word is long enough.
fn fts_query(words: &[String]) -> Option<String> {
    let phrases: Vec<String> = words
        .iter()
        .filter(|word| word.chars().count() >= TRIGRAM)
        .map(|word| format!("\"{}\"", word.replace('"', "\"\"")))
        .collect();
    (!phrases.is_empty()).then(|| phrases.join(" "))
}

/// Appends `message` (validated) inside `tx`, the group commit's transaction on the writer's
/// connection: `Err` for a failed statement (the transaction must be rolled back), otherwise
/// the append's result.
pub(super) fn append_in(
    tx: &rusqlite::Connection,
    message: &NewMessage,
) -> Result<Result<Appended>> {
    const OPERATION: &str = "append";
    let conversation = message.conversation();
    let conversation_text = conversation.to_string();
    let original = tx
        .prepare_cached(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE sender = ? AND client_msg_id = ?"
        ))
        .during(OPERATION)?
        .query_row(
            rusqlite::params![int(message.sender.0), message.client_msg_id],
            MessageRow::read,
        )
        .optional()
        .during(OPERATION)?;
    if let Some(original) = original {
        return Ok(original.into_message().map(|message| Appended {
            message,
            duplicate: true,
        }));
    }
    let seq: i64 = tx
        .prepare_cached(
            "INSERT INTO conversations (id, last_seq) VALUES (?, 1) \
             ON CONFLICT (id) DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
        )
        .during(OPERATION)?
        .query_row([&conversation_text], |row| row.get(0))
        .during(OPERATION)?;
    if let (1, ConversationId::Direct { low, high }) = (seq, conversation) {
        let mut participant = tx
            .prepare_cached(
                "INSERT INTO participants (user_id, conversation) VALUES (?, ?) \
                 ON CONFLICT DO NOTHING",
            )
            .during(OPERATION)?;
        for user in [low, high] {
            participant
                .execute(rusqlite::params![int(user.0), conversation_text])
                .during(OPERATION)?;
        }
    }
    let (to_kind, to_id) = recipient_columns(message.to);
    let id: i64 = tx
        .prepare_cached(
            "INSERT INTO messages (conversation, seq, sender, to_kind, to_id, client_msg_id, \
             body, body_folded, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .during(OPERATION)?
        .query_row(
            rusqlite::params![
                conversation_text,
                seq,
                int(message.sender.0),
                to_kind,
                to_id,
                message.client_msg_id,
                message.body,
                message.body.to_lowercase(),
                message.sent_at.as_millis(),
            ],
            |row| row.get(0),
        )
        .during(OPERATION)?;
    // A row this store cannot read back is no append to acknowledge: roll it back.
    let message = StoredMessage {
        id: MessageId(unsigned(id, "messages.id")?),
        conversation,
        seq: Seq(unsigned(seq, "conversations.last_seq")?),
        sender: message.sender,
        to: message.to,
        client_msg_id: message.client_msg_id.clone(),
        body: message.body.clone(),
        sent_at: message.sent_at,
    };
    Ok(Ok(Appended {
        message,
        duplicate: false,
    }))
}

/// Moves `user`'s cursor in `conversation` up to `up_to` inside `tx` (see [`append_in`]).
pub(super) fn ack_in(
    tx: &rusqlite::Connection,
    user: UserId,
    conversation: ConversationId,
    up_to: Seq,
) -> Result<Result<()>> {
    const OPERATION: &str = "ack";
    // One statement: the cursor moves only if `up_to` is within the conversation, and only
    // forward.
    let conversation_text = conversation.to_string();
    let moved = tx
        .prepare_cached(
            "INSERT INTO cursors (user_id, conversation, seq) \
             SELECT ?1, ?2, ?3 \
             WHERE ?3 <= COALESCE((SELECT last_seq FROM conversations WHERE id = ?2), 0) \
             ON CONFLICT (user_id, conversation) DO UPDATE SET seq = max(seq, excluded.seq)",
        )
        .during(OPERATION)?
        .execute(rusqlite::params![
            int(user.0),
            conversation_text,
            int(up_to.0)
        ])
        .during(OPERATION)?;
    if moved > 0 {
        return Ok(Ok(()));
    }
    let last: Option<i64> = tx
        .prepare_cached("SELECT last_seq FROM conversations WHERE id = ?")
        .during(OPERATION)?
        .query_row([&conversation_text], |row| row.get(0))
        .optional()
        .during(OPERATION)?;
    let last = Seq(unsigned(last.unwrap_or(0), "conversations.last_seq")?);
    Ok(Err(Error::invalid_input(format!(
        "cannot acknowledge {conversation} up to {up_to}: its last message is {last}"
    ))))
}

/// What the writer answered an append with.
fn appended(written: Result<Written>) -> Result<Appended> {
    match written? {
        Written::Appended(appended) => Ok(appended),
        Written::Acked => Err(Error::internal(
            "the SQLite writer answered an append with an ack",
        )),
    }
}

#[async_trait]
impl MessageStore for SqliteStore {
    fn capabilities(&self) -> MessageCapabilities {
        MessageCapabilities::ALL
    }

    async fn append(&self, message: NewMessage) -> Result<Appended> {
        message.validate()?;
        appended(self.committer().write(Write::Append(message)).await)
    }

    async fn append_all(&self, messages: Vec<NewMessage>) -> Vec<Result<Appended>> {
        // Every valid message is queued before any answer is awaited, in order, so that the
        // writer commits the batch together.
        let mut queued = Vec::with_capacity(messages.len());
        for message in messages {
            queued.push(match message.validate() {
                Ok(()) => Ok(self.committer().queue(Write::Append(message)).await),
                Err(e) => Err(e),
            });
        }
        let mut results = Vec::with_capacity(queued.len());
        for queued in queued {
            results.push(match queued {
                Ok(answer) => appended(answer.await),
                Err(e) => Err(e),
            });
        }
        results
    }

    async fn history(
        &self,
        conversation: ConversationId,
        query: HistoryQuery,
    ) -> Result<Vec<StoredMessage>> {
        let limit = checked_limit(query.limit)?;
        let after = query.after.map_or(0, |seq| int(seq.0));
        let before = query.before.map_or(i64::MAX, |seq| int(seq.0));
        // With a lower bound the slice starts there; otherwise it ends at the upper bound (or
        // the latest message), so it is read backwards and turned around.
        let ascending = query.after.is_some();
        let sql = if ascending {
            concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE conversation = ? AND seq > ? AND seq < ? \
                 ORDER BY seq LIMIT ?"
            )
        } else {
            concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE conversation = ? AND seq > ? AND seq < ? \
                 ORDER BY seq DESC LIMIT ?"
            )
        };
        let mut rows: Vec<MessageRow> = sqlx::query_as(sql)
            .bind(conversation.to_string())
            .bind(after)
            .bind(before)
            .bind(limit)
            .fetch_all(self.pool())
            .await
            .during("history")?;
        if !ascending {
            rows.reverse();
        }
        into_messages(rows)
    }

    async fn last_seq(&self, conversation: ConversationId) -> Result<Seq> {
        let last: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM conversations WHERE id = ?")
                .bind(conversation.to_string())
                .fetch_optional(self.pool())
                .await
                .during("last_seq")?;
        Ok(Seq(unsigned(last.unwrap_or(0), "conversations.last_seq")?))
    }

    async fn pending(
        &self,
        user: UserId,
        groups: &[GroupId],
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<StoredMessage>> {
        let fetch = fetch_size(limit)?;
        // Without a cursor, start before every conversation ('' sorts first) and sequence.
        let (after_conversation, after_seq) = match cursor {
            Some(cursor) => {
                let (conversation, seq) = parse_pending_cursor(cursor)?;
                (conversation.to_string(), int(seq.0))
            }
            None => (String::new(), 0),
        };
        let rows: Vec<MessageRow> = sqlx::query_as(concat!(
            "WITH visible (conv) AS ( \
                 SELECT conversation FROM participants WHERE user_id = ?1 \
                 UNION SELECT value FROM json_each(?2)) \
             SELECT ",
            message_columns!(),
            " FROM visible JOIN messages ON conversation = conv \
             WHERE seq > COALESCE((SELECT c.seq FROM cursors c \
                                   WHERE c.user_id = ?1 AND c.conversation = conv), 0) \
               AND sender <> ?1 \
               AND (conversation, seq) > (?3, ?4) \
             ORDER BY conversation, seq LIMIT ?5"
        ))
        .bind(int(user.0))
        .bind(group_conversations(groups)?)
        .bind(after_conversation)
        .bind(after_seq)
        .bind(fetch)
        .fetch_all(self.pool())
        .await
        .during("pending")?;
        let messages = into_messages(rows)?;
        Ok(into_page(messages, limit, |message| {
            pending_cursor(message.conversation, message.seq)
        }))
    }

    async fn ack(&self, user: UserId, conversation: ConversationId, up_to: Seq) -> Result<()> {
        let write = Write::Ack {
            user,
            conversation,
            up_to,
        };
        match self.committer().write(write).await? {
            Written::Acked => Ok(()),
            Written::Appended(_) => Err(Error::internal(
                "the SQLite writer answered an ack with an append",
            )),
        }
    }

    async fn delivered_up_to(&self, user: UserId, conversation: ConversationId) -> Result<Seq> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM cursors WHERE user_id = ? AND conversation = ?")
                .bind(int(user.0))
                .bind(conversation.to_string())
                .fetch_optional(self.pool())
                .await
                .during("delivered_up_to")?;
        Ok(Seq(unsigned(seq.unwrap_or(0), "cursors.seq")?))
    }

    async fn search(
        &self,
        user: UserId,
        groups: &[GroupId],
        query: &str,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<StoredMessage>> {
        let fetch = fetch_size(limit)?;
        let words = crate::message_store::search_words(query)?;
        let below = match cursor {
            Some(cursor) => int(id_cursor(Some(cursor), "search")?),
            None => i64::MAX,
        };
        let fts = fts_query(&words);
        let search = sqlx::query_as(if fts.is_some() {
            SEARCH_INDEXED
        } else {
            SEARCH_SCAN
        })
        .bind(below)
        .bind(int(user.0))
        .bind(group_conversations(groups)?)
        .bind(to_json(&words)?)
        .bind(fetch);
        let rows: Vec<MessageRow> = match fts {
            Some(fts) => search.bind(fts).fetch_all(self.pool()).await,
            None => search.fetch_all(self.pool()).await,
        }
        .during("search")?;
        let messages = into_messages(rows)?;
        Ok(into_page(messages, limit, |message| message.id.to_string()))
    }

    async fn delete_before(&self, cutoff: Timestamp) -> Result<u64> {
        let done = sqlx::query("DELETE FROM messages WHERE sent_at < ?")
            .bind(cutoff.as_millis())
            .execute(self.pool())
            .await
            .during("delete_before")?;
        Ok(done.rows_affected())
    }

    async fn schedule(&self, message: NewMessage, deliver_at: Timestamp) -> Result<Scheduled> {
        message.validate()?;
        let (to_kind, to_id) = recipient_columns(message.to);
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO scheduled (sender, to_kind, to_id, client_msg_id, body, sent_at, \
             deliver_at) VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (sender, client_msg_id) DO NOTHING RETURNING id",
        )
        .bind(int(message.sender.0))
        .bind(to_kind)
        .bind(to_id)
        .bind(&message.client_msg_id)
        .bind(&message.body)
        .bind(message.sent_at.as_millis())
        .bind(deliver_at.as_millis())
        .fetch_optional(self.pool())
        .await
        .during("schedule")?;
        if let Some(id) = id {
            return Ok(Scheduled {
                entry: ScheduledMessage {
                    id: ScheduledId(unsigned(id, "scheduled.id")?),
                    message,
                    deliver_at,
                },
                duplicate: false,
            });
        }
        let first: ScheduledRow = sqlx::query_as(concat!(
            "SELECT ",
            scheduled_columns!(),
            " FROM scheduled WHERE sender = ? AND client_msg_id = ?"
        ))
        .bind(int(message.sender.0))
        .bind(&message.client_msg_id)
        .fetch_one(self.pool())
        .await
        .during("schedule")?;
        Ok(Scheduled {
            entry: first.into_scheduled()?,
            duplicate: true,
        })
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        claim_for: Duration,
        limit: u32,
    ) -> Result<Vec<ScheduledMessage>> {
        let limit = checked_limit(limit)?;
        let rows: Vec<ScheduledRow> = sqlx::query_as(concat!(
            "UPDATE scheduled SET claimed_until = ?2 WHERE id IN ( \
                 SELECT id FROM scheduled \
                 WHERE deliver_at <= ?1 AND finished_at IS NULL \
                 AND (claimed_until IS NULL OR claimed_until <= ?1) \
                 ORDER BY deliver_at, id LIMIT ?3) \
             RETURNING ",
            scheduled_columns!()
        ))
        .bind(now.as_millis())
        .bind(now.plus(claim_for).as_millis())
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .during("claim_due")?;
        let mut claimed = rows
            .into_iter()
            .map(ScheduledRow::into_scheduled)
            .collect::<Result<Vec<_>>>()?;
        // RETURNING yields rows in no particular order.
        claimed.sort_unstable_by_key(|entry| (entry.deliver_at, entry.id));
        Ok(claimed)
    }

    async fn finish_scheduled(&self, id: ScheduledId) -> Result<()> {
        let now = Timestamp::now();
        // Kept, finished, for retries of its schedule; what is past the dedup window goes.
        let horizon = now.minus(crate::message_store::DEDUP_WINDOW);
        sqlx::query("DELETE FROM scheduled WHERE finished_at IS NOT NULL AND finished_at < ?")
            .bind(horizon.as_millis())
            .execute(self.pool())
            .await
            .during("finish_scheduled")?;
        let done = sqlx::query(
            "UPDATE scheduled SET finished_at = ? WHERE id = ? AND finished_at IS NULL",
        )
        .bind(now.as_millis())
        .bind(int(id.0))
        .execute(self.pool())
        .await
        .during("finish_scheduled")?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found(format!(
                "scheduled message {id} does not exist (finished already, or never scheduled)"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::*;
    use crate::{ErrorKind, Recipient};

    const ALICE: UserId = UserId(1);
    const BOB: UserId = UserId(2);
    const TEAM: GroupId = GroupId(7);

    async fn open() -> (TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("cim.db"))
            .await
            .expect("store opens");
        (dir, store)
    }

    fn message(sender: UserId, to: Recipient, client_msg_id: &str, body: &str) -> NewMessage {
        NewMessage {
            sender,
            to,
            client_msg_id: client_msg_id.to_string(),
            body: body.to_string(),
            sent_at: Timestamp(1_000),
        }
    }

    async fn append(store: &SqliteStore, message: NewMessage) -> StoredMessage {
        let appended = store.append(message).await.expect("append");
        assert!(!appended.duplicate);
        appended.message
    }

    #[tokio::test]
    async fn messages_cursors_and_schedules_survive_closing_and_reopening_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cim.db");
        let store = SqliteStore::open(&path).await.expect("opens");
        let stored = append(&store, message(ALICE, Recipient::User(BOB), "k", "kept")).await;
        store
            .ack(BOB, stored.conversation, Seq(1))
            .await
            .expect("ack");
        let scheduled = store
            .schedule(
                message(ALICE, Recipient::User(BOB), "s", "due"),
                Timestamp(5),
            )
            .await
            .expect("schedule")
            .entry;
        store.close().await;
        drop(store);

        let store = SqliteStore::open(&path).await.expect("reopens");

        let history = store
            .history(stored.conversation, HistoryQuery::latest(10))
            .await
            .expect("history");
        assert_eq!(history, std::slice::from_ref(&stored));
        let retry = store
            .append(message(ALICE, Recipient::User(BOB), "k", "kept"))
            .await
            .expect("retry");
        assert!(retry.duplicate, "idempotency survives a restart");
        assert_eq!(
            store
                .delivered_up_to(BOB, stored.conversation)
                .await
                .expect("cursor"),
            Seq(1)
        );
        let due = store
            .claim_due(Timestamp(10), Duration::from_secs(1), 10)
            .await
            .expect("claim");
        assert_eq!(due, [scheduled]);
        let next = append(&store, message(BOB, Recipient::User(ALICE), "n", "next")).await;
        assert_eq!(next.seq, Seq(2));
        assert!(next.id > stored.id);
    }

    #[tokio::test]
    async fn a_closed_store_reports_unavailable() {
        let (_dir, store) = open().await;
        store.close().await;

        let err = store
            .last_seq(ConversationId::Group(TEAM))
            .await
            .expect_err("closed");

        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(
            err.context()
                .contains(&("operation", "last_seq".to_string()))
        );
    }
}
