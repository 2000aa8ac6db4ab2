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
//!   folds ASCII only), and the folded body is indexed by an FTS5 trigram index. Words of
//!   three characters or more narrow the candidates through the index; an exact `instr` check
//!   on every word then decides, so words shorter than a trigram still match correctly (a query
//!   of only such words scans the user's visible conversations).
//! - **Schedules.** A claim is one `UPDATE ... RETURNING` over the due, unclaimed entries:
//!   atomic, so two claimers never get the same entry.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::FromRow;

use super::SqliteStore;
use super::columns::{conversation, int, recipient, recipient_columns, unsigned};
use super::error::During;
use crate::paging::{
    checked_limit, fetch_size, id_cursor, into_page, parse_pending_cursor, pending_cursor,
};
use crate::{
    Appended, ConversationId, Cursor, Error, GroupId, HistoryQuery, MessageCapabilities, MessageId,
    MessageStore, NewMessage, Page, Result, ScheduledId, ScheduledMessage, Seq, StoredMessage,
    Timestamp, UserId,
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

/// Search narrowed by the trigram index: ?6 is the FTS5 query.
const SEARCH_INDEXED: &str = concat!(
    "SELECT ",
    message_columns!(),
    " FROM messages WHERE id IN (SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?6)",
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

#[async_trait]
impl MessageStore for SqliteStore {
    fn capabilities(&self) -> MessageCapabilities {
        MessageCapabilities::ALL
    }

    async fn append(&self, message: NewMessage) -> Result<Appended> {
        const OPERATION: &str = "append";
        message.validate()?;
        let conversation = message.conversation();
        let conversation_text = conversation.to_string();
        let mut tx = self
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .during(OPERATION)?;
        let original: Option<MessageRow> = sqlx::query_as(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE sender = ? AND client_msg_id = ?"
        ))
        .bind(int(message.sender.0))
        .bind(&message.client_msg_id)
        .fetch_optional(&mut *tx)
        .await
        .during(OPERATION)?;
        if let Some(original) = original {
            tx.rollback().await.during(OPERATION)?;
            return Ok(Appended {
                message: original.into_message()?,
                duplicate: true,
            });
        }
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO conversations (id, last_seq) VALUES (?, 1) \
             ON CONFLICT (id) DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
        )
        .bind(&conversation_text)
        .fetch_one(&mut *tx)
        .await
        .during(OPERATION)?;
        if let (1, ConversationId::Direct { low, high }) = (seq, conversation) {
            for user in [low, high] {
                sqlx::query(
                    "INSERT INTO participants (user_id, conversation) VALUES (?, ?) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(int(user.0))
                .bind(&conversation_text)
                .execute(&mut *tx)
                .await
                .during(OPERATION)?;
            }
        }
        let (to_kind, to_id) = recipient_columns(message.to);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO messages (conversation, seq, sender, to_kind, to_id, client_msg_id, \
             body, body_folded, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&conversation_text)
        .bind(seq)
        .bind(int(message.sender.0))
        .bind(to_kind)
        .bind(to_id)
        .bind(&message.client_msg_id)
        .bind(&message.body)
        .bind(message.body.to_lowercase())
        .bind(message.sent_at.as_millis())
        .fetch_one(&mut *tx)
        .await
        .during(OPERATION)?;
        tx.commit().await.during(OPERATION)?;
        Ok(Appended {
            message: StoredMessage {
                id: MessageId(unsigned(id, "messages.id")?),
                conversation,
                seq: Seq(unsigned(seq, "conversations.last_seq")?),
                sender: message.sender,
                to: message.to,
                client_msg_id: message.client_msg_id,
                body: message.body,
                sent_at: message.sent_at,
            },
            duplicate: false,
        })
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
        // One statement: the cursor moves only if `up_to` is within the conversation, and
        // only forward.
        let done = sqlx::query(
            "INSERT INTO cursors (user_id, conversation, seq) \
             SELECT ?1, ?2, ?3 \
             WHERE ?3 <= COALESCE((SELECT last_seq FROM conversations WHERE id = ?2), 0) \
             ON CONFLICT (user_id, conversation) DO UPDATE SET seq = max(seq, excluded.seq)",
        )
        .bind(int(user.0))
        .bind(conversation.to_string())
        .bind(int(up_to.0))
        .execute(self.pool())
        .await
        .during("ack")?;
        if done.rows_affected() == 0 {
            let last = self.last_seq(conversation).await?;
            return Err(Error::invalid_input(format!(
                "cannot acknowledge {conversation} up to {up_to}: its last message is {last}"
            )));
        }
        Ok(())
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
        let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
        if words.is_empty() {
            return Err(Error::invalid_input(
                "search query must contain at least one word",
            ));
        }
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

    async fn schedule(
        &self,
        message: NewMessage,
        deliver_at: Timestamp,
    ) -> Result<ScheduledMessage> {
        message.validate()?;
        let (to_kind, to_id) = recipient_columns(message.to);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO scheduled (sender, to_kind, to_id, client_msg_id, body, sent_at, \
             deliver_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(int(message.sender.0))
        .bind(to_kind)
        .bind(to_id)
        .bind(&message.client_msg_id)
        .bind(&message.body)
        .bind(message.sent_at.as_millis())
        .bind(deliver_at.as_millis())
        .fetch_one(self.pool())
        .await
        .during("schedule")?;
        Ok(ScheduledMessage {
            id: ScheduledId(unsigned(id, "scheduled.id")?),
            message,
            deliver_at,
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
                 WHERE deliver_at <= ?1 AND (claimed_until IS NULL OR claimed_until <= ?1) \
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
        let done = sqlx::query("DELETE FROM scheduled WHERE id = ?")
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
    use std::collections::BTreeSet;

    use tempfile::TempDir;

    use super::*;
    use crate::{ErrorKind, Recipient};

    const ALICE: UserId = UserId(1);
    const BOB: UserId = UserId(2);
    const CAROL: UserId = UserId(3);
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

    async fn append_many(store: &SqliteStore, sender: UserId, to: Recipient, n: usize) {
        for i in 0..n {
            let id = format!("{sender}-{to:?}-{i}");
            append(store, message(sender, to, &id, &format!("message {i}"))).await;
        }
    }

    fn seqs(messages: &[StoredMessage]) -> Vec<u64> {
        messages.iter().map(|message| message.seq.0).collect()
    }

    fn bodies(page: &Page<StoredMessage>) -> Vec<&str> {
        page.items
            .iter()
            .map(|message| message.body.as_str())
            .collect()
    }

    #[tokio::test]
    async fn append_numbers_each_conversation_from_one_and_reads_back_what_it_stored() {
        let (_dir, store) = open().await;

        let first = append(&store, message(ALICE, Recipient::User(BOB), "a1", "hi bob")).await;
        let reply = append(&store, message(BOB, Recipient::User(ALICE), "b1", "hi")).await;
        let group = append(
            &store,
            message(ALICE, Recipient::Group(TEAM), "a2", "hi all"),
        )
        .await;

        assert_eq!((first.seq, reply.seq, group.seq), (Seq(1), Seq(2), Seq(1)));
        assert_eq!(first.conversation, ConversationId::direct(ALICE, BOB));
        assert_eq!(group.conversation, ConversationId::Group(TEAM));
        assert!(first.id < reply.id && reply.id < group.id);
        let history = store
            .history(first.conversation, HistoryQuery::latest(10))
            .await
            .expect("history");
        assert_eq!(history, [first.clone(), reply]);
        assert_eq!(
            store.last_seq(first.conversation).await.expect("last"),
            Seq(2)
        );
        let unknown = ConversationId::Group(GroupId(99));
        assert_eq!(store.last_seq(unknown).await.expect("last"), Seq(0));
    }

    #[tokio::test]
    async fn a_retried_append_returns_the_original_whatever_the_new_body_says() {
        let (_dir, store) = open().await;
        let original = append(&store, message(ALICE, Recipient::User(BOB), "k", "first")).await;

        let retry = store
            .append(message(ALICE, Recipient::User(BOB), "k", "second"))
            .await
            .expect("retry");

        assert!(retry.duplicate);
        assert_eq!(retry.message, original);
        assert_eq!(
            store.last_seq(original.conversation).await.expect("last"),
            Seq(1)
        );
        let other_sender = append(&store, message(BOB, Recipient::User(ALICE), "k", "x")).await;
        assert_eq!(other_sender.seq, Seq(2), "the key is per sender");
    }

    #[tokio::test]
    async fn a_bad_client_msg_id_is_invalid_input() {
        let (_dir, store) = open().await;
        let long = "x".repeat(NewMessage::MAX_CLIENT_MSG_ID_LEN + 1);
        for bad in ["", long.as_str()] {
            let err = store
                .append(message(ALICE, Recipient::User(BOB), bad, "body"))
                .await
                .expect_err("invalid");
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            let err = store
                .schedule(
                    message(ALICE, Recipient::User(BOB), bad, "body"),
                    Timestamp(1),
                )
                .await
                .expect_err("invalid");
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_to_one_conversation_get_sequences_without_gaps() {
        let (_dir, store) = open().await;

        let appends: Vec<_> = (0..20)
            .map(|i| {
                let store = store.clone();
                let sender = if i % 2 == 0 { ALICE } else { BOB };
                let to = if i % 2 == 0 { BOB } else { ALICE };
                tokio::spawn(async move {
                    store
                        .append(message(
                            sender,
                            Recipient::User(to),
                            &format!("c{i}"),
                            "race",
                        ))
                        .await
                })
            })
            .collect();
        let mut seqs = BTreeSet::new();
        for append in appends {
            let appended = append.await.expect("task").expect("append");
            seqs.insert(appended.message.seq.0);
        }

        assert_eq!(seqs, (1..=20).collect::<BTreeSet<u64>>());
        let conversation = ConversationId::direct(ALICE, BOB);
        assert_eq!(store.last_seq(conversation).await.expect("last"), Seq(20));
    }

    #[tokio::test]
    async fn history_pages_in_both_directions_always_ascending() {
        let (_dir, store) = open().await;
        append_many(&store, ALICE, Recipient::Group(TEAM), 10).await;
        let team = ConversationId::Group(TEAM);
        let history = |query| {
            let store = store.clone();
            async move { store.history(team, query).await.expect("history") }
        };

        assert_eq!(seqs(&history(HistoryQuery::latest(3)).await), [8, 9, 10]);
        assert_eq!(
            seqs(&history(HistoryQuery::after(Seq(2), 3)).await),
            [3, 4, 5]
        );
        assert_eq!(
            seqs(&history(HistoryQuery::before(Seq(5), 3)).await),
            [2, 3, 4]
        );
        let between = HistoryQuery {
            after: Some(Seq(3)),
            before: Some(Seq(9)),
            limit: 3,
        };
        assert_eq!(seqs(&history(between).await), [4, 5, 6]);
        let inverted = HistoryQuery {
            after: Some(Seq(5)),
            before: Some(Seq(5)),
            limit: 3,
        };
        assert_eq!(seqs(&history(inverted).await), Vec::<u64>::new());
        assert_eq!(
            seqs(&history(HistoryQuery::after(Seq(u64::MAX), 3)).await),
            Vec::<u64>::new()
        );
        let err = store
            .history(team, HistoryQuery::latest(0))
            .await
            .expect_err("limit 0");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn pending_pages_direct_and_named_group_messages_until_acknowledged() {
        let (_dir, store) = open().await;
        append_many(&store, ALICE, Recipient::User(BOB), 2).await;
        append_many(&store, CAROL, Recipient::Group(TEAM), 2).await;
        append_many(&store, BOB, Recipient::Group(TEAM), 1).await;
        append_many(&store, CAROL, Recipient::Group(GroupId(8)), 1).await;

        let first = store.pending(BOB, &[TEAM], None, 3).await.expect("pending");
        let cursor = first.next.clone().expect("more pending");
        let second = store
            .pending(BOB, &[TEAM], Some(&cursor), 3)
            .await
            .expect("pending");

        let direct = ConversationId::direct(ALICE, BOB);
        let team = ConversationId::Group(TEAM);
        let all: Vec<(ConversationId, u64)> = first
            .items
            .iter()
            .chain(&second.items)
            .map(|message| (message.conversation, message.seq.0))
            .collect();
        assert_eq!(all, [(direct, 1), (direct, 2), (team, 1), (team, 2)]);
        assert_eq!(second.next, None);

        store.ack(BOB, direct, Seq(2)).await.expect("ack");
        store.ack(BOB, team, Seq(1)).await.expect("ack");
        let rest = store
            .pending(BOB, &[TEAM], None, 10)
            .await
            .expect("pending");
        assert_eq!(
            rest.items
                .iter()
                .map(|m| (m.conversation, m.seq.0))
                .collect::<Vec<_>>(),
            [(team, 2)],
            "own messages and unnamed groups are never pending"
        );
        let alice = store.pending(ALICE, &[], None, 10).await.expect("pending");
        assert!(
            alice.items.is_empty(),
            "alice sent everything she could read"
        );

        let bad = Cursor("d:1:2".into());
        let err = store
            .pending(BOB, &[], Some(&bad), 10)
            .await
            .expect_err("bad cursor");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let err = store.pending(BOB, &[], None, 0).await.expect_err("limit 0");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn ack_only_moves_forward_and_never_beyond_the_last_message() {
        let (_dir, store) = open().await;
        append_many(&store, ALICE, Recipient::User(BOB), 3).await;
        let direct = ConversationId::direct(ALICE, BOB);
        assert_eq!(
            store.delivered_up_to(BOB, direct).await.expect("cursor"),
            Seq(0)
        );

        store.ack(BOB, direct, Seq(2)).await.expect("ack");
        store
            .ack(BOB, direct, Seq(1))
            .await
            .expect("ack back is a no-op");
        assert_eq!(
            store.delivered_up_to(BOB, direct).await.expect("cursor"),
            Seq(2)
        );

        let err = store
            .ack(BOB, direct, Seq(4))
            .await
            .expect_err("beyond last");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().contains("last message is 3"), "{err}");
        let empty = ConversationId::Group(TEAM);
        let err = store
            .ack(BOB, empty, Seq(1))
            .await
            .expect_err("nothing there");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(
            store.delivered_up_to(BOB, direct).await.expect("cursor"),
            Seq(2)
        );
    }

    #[tokio::test]
    async fn search_finds_visible_messages_with_every_word_newest_first() {
        let (_dir, store) = open().await;
        append(
            &store,
            message(ALICE, Recipient::User(BOB), "1", "Lunch at noon?"),
        )
        .await;
        append(
            &store,
            message(BOB, Recipient::User(ALICE), "2", "lunch NOON works"),
        )
        .await;
        append(
            &store,
            message(CAROL, Recipient::Group(TEAM), "3", "team lunch at noon"),
        )
        .await;
        append(
            &store,
            message(CAROL, Recipient::User(ALICE), "4", "lunch at noon, Bob?"),
        )
        .await;
        append(
            &store,
            message(ALICE, Recipient::User(BOB), "5", "dinner instead"),
        )
        .await;

        let first = store
            .search(BOB, &[TEAM], "NOON lunch", None, 2)
            .await
            .expect("search");
        assert_eq!(bodies(&first), ["team lunch at noon", "lunch NOON works"]);
        let cursor = first.next.clone().expect("more results");
        let second = store
            .search(BOB, &[TEAM], "NOON lunch", Some(&cursor), 2)
            .await
            .expect("search");
        assert_eq!(bodies(&second), ["Lunch at noon?"]);
        assert_eq!(second.next, None);

        let unnamed = store
            .search(BOB, &[], "team", None, 10)
            .await
            .expect("search");
        assert!(
            unnamed.items.is_empty(),
            "groups not named are not searched"
        );
        let own = store
            .search(CAROL, &[], "team", None, 10)
            .await
            .expect("search");
        assert_eq!(
            bodies(&own),
            ["team lunch at noon"],
            "what the user sent is found even in a group not named"
        );
        let short = store
            .search(BOB, &[], "at", None, 10)
            .await
            .expect("search");
        assert_eq!(
            bodies(&short),
            ["Lunch at noon?"],
            "short words match substrings too"
        );
        let infix = store
            .search(BOB, &[], "inn", None, 10)
            .await
            .expect("search");
        assert_eq!(bodies(&infix), ["dinner instead"]);
        let err = store
            .search(BOB, &[], "  ", None, 10)
            .await
            .expect_err("empty");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let err = store
            .search(BOB, &[], "x", None, 0)
            .await
            .expect_err("limit 0");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let bad = Cursor("newest".into());
        let err = store
            .search(BOB, &[], "x", Some(&bad), 5)
            .await
            .expect_err("cursor");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn search_folds_unicode_case_and_takes_query_syntax_literally() {
        let (_dir, store) = open().await;
        append(
            &store,
            message(ALICE, Recipient::User(BOB), "1", "ÜBER Straße"),
        )
        .await;
        append(
            &store,
            message(ALICE, Recipient::User(BOB), "2", "50% \"off\" a_b*"),
        )
        .await;
        append(
            &store,
            message(ALICE, Recipient::User(BOB), "3", "nothing special"),
        )
        .await;

        let umlaut = store
            .search(BOB, &[], "über", None, 10)
            .await
            .expect("search");
        assert_eq!(bodies(&umlaut), ["ÜBER Straße"]);
        for literal in ["50%", "\"off\"", "a_b*", "OFF\" a_"] {
            let found = store
                .search(BOB, &[], literal, None, 10)
                .await
                .expect("search");
            assert_eq!(bodies(&found), ["50% \"off\" a_b*"], "{literal:?}");
        }
        let wildcard = store.search(BOB, &[], "%", None, 10).await.expect("search");
        assert_eq!(bodies(&wildcard), ["50% \"off\" a_b*"], "% is no wildcard");
    }

    #[tokio::test]
    async fn delete_before_removes_old_messages_but_never_their_sequence_numbers() {
        let (_dir, store) = open().await;
        let mut old = message(ALICE, Recipient::User(BOB), "old", "old lunch");
        old.sent_at = Timestamp(10);
        append(&store, old).await;
        let mut new = message(ALICE, Recipient::User(BOB), "new", "new lunch");
        new.sent_at = Timestamp(20);
        append(&store, new).await;

        assert_eq!(store.delete_before(Timestamp(20)).await.expect("delete"), 1);

        let direct = ConversationId::direct(ALICE, BOB);
        let left = store
            .history(direct, HistoryQuery::latest(10))
            .await
            .expect("history");
        assert_eq!(seqs(&left), [2]);
        let next = append(&store, message(BOB, Recipient::User(ALICE), "n", "x")).await;
        assert_eq!(next.seq, Seq(3));
        let found = store
            .search(BOB, &[], "lunch", None, 10)
            .await
            .expect("search");
        assert_eq!(
            bodies(&found),
            ["new lunch"],
            "the search index forgets deleted messages"
        );
        assert_eq!(store.delete_before(Timestamp(0)).await.expect("delete"), 0);
    }

    #[tokio::test]
    async fn due_entries_are_claimed_once_until_the_claim_expires_then_finished() {
        let (_dir, store) = open().await;
        let later = store
            .schedule(
                message(ALICE, Recipient::User(BOB), "s2", "later"),
                Timestamp(200),
            )
            .await
            .expect("schedule");
        let sooner = store
            .schedule(
                message(ALICE, Recipient::Group(TEAM), "s1", "sooner"),
                Timestamp(100),
            )
            .await
            .expect("schedule");
        let claim = Duration::from_millis(50);

        let due = store
            .claim_due(Timestamp(150), claim, 10)
            .await
            .expect("claim");
        assert_eq!(due, std::slice::from_ref(&sooner));
        let again = store
            .claim_due(Timestamp(160), claim, 10)
            .await
            .expect("claim");
        assert!(again.is_empty(), "a claimed entry is not handed out again");
        let both = store
            .claim_due(Timestamp(250), claim, 10)
            .await
            .expect("claim");
        assert_eq!(
            both,
            [sooner.clone(), later.clone()],
            "expired claims, due order"
        );

        store.finish_scheduled(sooner.id).await.expect("finish");
        let err = store
            .finish_scheduled(sooner.id)
            .await
            .expect_err("finished");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let rest = store
            .claim_due(Timestamp(400), claim, 1)
            .await
            .expect("claim");
        assert_eq!(rest, [later]);
        let err = store
            .claim_due(Timestamp(400), claim, 0)
            .await
            .expect_err("limit 0");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
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
            .expect("schedule");
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
