//! [`MessageStore`] for [`PostgresStore`].
//!
//! - **Sequences.** Each conversation has a counter row, bumped with
//!   `INSERT .. ON CONFLICT DO UPDATE SET last_seq = last_seq + 1 RETURNING` by the transaction
//!   that inserts the message. The bump locks the row until commit, so concurrent appends to
//!   one conversation queue on it (and commit in sequence order, so no reader ever sees message
//!   n+1 without message n), and a failed append rolls its bump back: no collisions, no gaps.
//!   Counter rows are never deleted, so retention never lets a number be reused.
//! - **Idempotency.** `UNIQUE (sender, client_msg_id)`. The transaction looks the key up first;
//!   a retry racing the original waits for it on the unique index (`ON CONFLICT DO NOTHING`),
//!   then rolls back its own bump and returns the original.
//! - **Pending** joins the user's visible conversations (their direct ones from the
//!   `participants` table, plus the groups the caller names) with the messages above the user's
//!   cursor in each, in (conversation, seq) order, conversations by their text form in "C"
//!   collation. The page cursor is the last (conversation, seq) returned.
//! - **Search** sees what the user sent, their direct conversations and the named groups. Every
//!   query word must be a substring of the body, case-insensitively: words and bodies are
//!   lower-cased by Rust's `str::to_lowercase` (so the database's locale does not matter) and
//!   matched with `LIKE '%word%'`, `%`, `_` and `\` escaped. The longest word is also matched
//!   on its own, which the trigram index (when `pg_trgm` could be installed) can answer.
//! - **Schedules.** Kept once per key: `UNIQUE (sender, client_msg_id)` on `scheduled`. A
//!   schedule inserts with `ON CONFLICT DO NOTHING RETURNING id`; no id back means the key is
//!   taken, and a second statement (a fresh snapshot under READ COMMITTED) reads the first
//!   entry. Of racing schedules of one key, the unique index lets one insert through and makes
//!   the others wait for its commit, so they all answer the same entry. A claim is one
//!   `UPDATE .. RETURNING` over due, unclaimed, unfinished entries picked with
//!   `FOR UPDATE SKIP LOCKED`: two claimers never get the same entry, and neither waits for the
//!   other. Finishing sets `finished_at` instead of deleting, so a retry of the schedule after
//!   the delivery still finds the first entry; finished entries older than [`DEDUP_WINDOW`]
//!   are deleted by later finishes.

use std::time::Duration;

use async_trait::async_trait;
use cim_core::{
    Appended, ConversationId, Cursor, Error, GroupId, HistoryQuery, MessageCapabilities, MessageId,
    MessageStore, NewMessage, Page, Result, Scheduled, ScheduledId, ScheduledMessage, Seq,
    StoredMessage, Timestamp, UserId,
};
use sqlx::FromRow;

use crate::PostgresStore;
use crate::columns::{conversation, int, recipient, recipient_columns, unsigned};
use crate::error::During;
use cim_core::message_store::DEDUP_WINDOW;
use cim_core::paging::{
    checked_limit, fetch_size, id_cursor, into_page, parse_pending_cursor, pending_cursor,
};

/// How often a schedule tries to either insert its entry or read the one holding its key. A
/// second try is needed only when the entry holding the key was deleted (its dedup window had
/// passed) between the two statements; then the key is free, or held by an entry just
/// inserted, which no clean-up deletes, so the second try settles it.
const SCHEDULE_ATTEMPTS: usize = 2;

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

/// The conversations of `groups` in their text form, bound as a `TEXT[]`.
fn group_conversations(groups: &[GroupId]) -> Vec<String> {
    groups
        .iter()
        .map(|group| ConversationId::Group(*group).to_string())
        .collect()
}

/// `word` as a `LIKE` pattern matching any text that contains it literally.
fn contains_pattern(word: &str) -> String {
    let mut pattern = String::with_capacity(word.len() + 2);
    pattern.push('%');
    for c in word.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl PostgresStore {
    /// The message first stored with this sender and idempotency key, if any.
    async fn original<'c, E>(&self, executor: E, message: &NewMessage) -> Result<Option<MessageRow>>
    where
        E: sqlx::PgExecutor<'c>,
    {
        sqlx::query_as(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE sender = $1 AND client_msg_id = $2"
        ))
        .bind(int(message.sender.0))
        .bind(&message.client_msg_id)
        .fetch_optional(executor)
        .await
        .during("append")
    }
}

#[async_trait]
impl MessageStore for PostgresStore {
    fn capabilities(&self) -> MessageCapabilities {
        MessageCapabilities::ALL
    }

    async fn append(&self, message: NewMessage) -> Result<Appended> {
        const OPERATION: &str = "append";
        message.validate()?;
        let conversation = message.conversation();
        let conversation_text = conversation.to_string();
        let mut tx = self.pool().begin().await.during(OPERATION)?;
        if let Some(original) = self.original(&mut *tx, &message).await? {
            tx.rollback().await.during(OPERATION)?;
            return Ok(Appended {
                message: original.into_message()?,
                duplicate: true,
            });
        }
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO conversations AS c (id, last_seq) VALUES ($1, 1) \
             ON CONFLICT (id) DO UPDATE SET last_seq = c.last_seq + 1 RETURNING c.last_seq",
        )
        .bind(&conversation_text)
        .fetch_one(&mut *tx)
        .await
        .during(OPERATION)?;
        if let (1, ConversationId::Direct { low, high }) = (seq, conversation) {
            sqlx::query(
                "INSERT INTO participants (user_id, conversation) \
                 SELECT DISTINCT unnest($1::BIGINT[]), $2 ON CONFLICT DO NOTHING",
            )
            .bind(vec![int(low.0), int(high.0)])
            .bind(&conversation_text)
            .execute(&mut *tx)
            .await
            .during(OPERATION)?;
        }
        let (to_kind, to_id) = recipient_columns(message.to);
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO messages (conversation, seq, sender, to_kind, to_id, client_msg_id, \
             body, body_folded, sent_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (sender, client_msg_id) DO NOTHING RETURNING id",
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
        .fetch_optional(&mut *tx)
        .await
        .during(OPERATION)?;
        let Some(id) = id else {
            // A concurrent retry of the same message committed first: undo our bump and
            // answer with what it stored.
            tx.rollback().await.during(OPERATION)?;
            let original = self.original(self.pool(), &message).await?.ok_or_else(|| {
                Error::internal(format!(
                    "message {:?} of user {} conflicted with a stored one that cannot be read \
                     back",
                    message.client_msg_id, message.sender
                ))
                .with_context("backend", "postgres")
            })?;
            return Ok(Appended {
                message: original.into_message()?,
                duplicate: true,
            });
        };
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
                " FROM messages WHERE conversation = $1 AND seq > $2 AND seq < $3 \
                 ORDER BY seq LIMIT $4"
            )
        } else {
            concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE conversation = $1 AND seq > $2 AND seq < $3 \
                 ORDER BY seq DESC LIMIT $4"
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
            sqlx::query_scalar("SELECT last_seq FROM conversations WHERE id = $1")
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
                 SELECT conversation FROM participants WHERE user_id = $1 \
                 UNION SELECT unnest($2::TEXT[]) COLLATE \"C\") \
             SELECT ",
            message_columns!(),
            " FROM visible JOIN messages ON conversation = conv \
             WHERE seq > COALESCE((SELECT c.seq FROM cursors c \
                                   WHERE c.user_id = $1 AND c.conversation = conv), 0) \
               AND sender <> $1 \
               AND (conversation, seq) > ($3::TEXT COLLATE \"C\", $4::BIGINT) \
             ORDER BY conversation, seq LIMIT $5"
        ))
        .bind(int(user.0))
        .bind(group_conversations(groups))
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
            "INSERT INTO cursors AS c (user_id, conversation, seq) \
             SELECT $1, $2, $3 \
             WHERE $3 <= COALESCE((SELECT last_seq FROM conversations WHERE id = $2), 0) \
             ON CONFLICT (user_id, conversation) \
             DO UPDATE SET seq = GREATEST(c.seq, EXCLUDED.seq)",
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
            sqlx::query_scalar("SELECT seq FROM cursors WHERE user_id = $1 AND conversation = $2")
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
        let words = cim_core::message_store::search_words(query)?;
        let Some(longest) = words.iter().max_by_key(|word| word.len()) else {
            return Err(Error::invalid_input(
                "search query must contain at least one word",
            ));
        };
        let longest = contains_pattern(longest);
        let patterns: Vec<String> = words.iter().map(|word| contains_pattern(word)).collect();
        let below = match cursor {
            Some(cursor) => int(id_cursor(Some(cursor), "search")?),
            None => i64::MAX,
        };
        let rows: Vec<MessageRow> = sqlx::query_as(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages \
             WHERE id < $1 \
               AND (sender = $2 \
                    OR conversation IN (SELECT conversation FROM participants WHERE user_id = $2 \
                                        UNION ALL SELECT unnest($3::TEXT[]) COLLATE \"C\")) \
               AND body_folded LIKE $4 \
               AND body_folded LIKE ALL ($5::TEXT[]) \
             ORDER BY id DESC LIMIT $6"
        ))
        .bind(below)
        .bind(int(user.0))
        .bind(group_conversations(groups))
        .bind(longest)
        .bind(patterns)
        .bind(fetch)
        .fetch_all(self.pool())
        .await
        .during("search")?;
        let messages = into_messages(rows)?;
        Ok(into_page(messages, limit, |message| message.id.to_string()))
    }

    async fn delete_before(&self, cutoff: Timestamp) -> Result<u64> {
        let done = sqlx::query("DELETE FROM messages WHERE sent_at < $1")
            .bind(cutoff.as_millis())
            .execute(self.pool())
            .await
            .during("delete_before")?;
        Ok(done.rows_affected())
    }

    async fn schedule(&self, message: NewMessage, deliver_at: Timestamp) -> Result<Scheduled> {
        const OPERATION: &str = "schedule";
        message.validate()?;
        let (to_kind, to_id) = recipient_columns(message.to);
        for _ in 0..SCHEDULE_ATTEMPTS {
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO scheduled (sender, to_kind, to_id, client_msg_id, body, sent_at, \
                 deliver_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
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
            .during(OPERATION)?;
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
            // The key is taken, by an entry committed before the insert ended (a racing insert
            // of the key is waited for): this statement's snapshot sees it.
            let first: Option<ScheduledRow> = sqlx::query_as(concat!(
                "SELECT ",
                scheduled_columns!(),
                " FROM scheduled WHERE sender = $1 AND client_msg_id = $2"
            ))
            .bind(int(message.sender.0))
            .bind(&message.client_msg_id)
            .fetch_optional(self.pool())
            .await
            .during(OPERATION)?;
            if let Some(first) = first {
                return Ok(Scheduled {
                    entry: first.into_scheduled()?,
                    duplicate: true,
                });
            }
            // Deleted in between, past its dedup window: the key is free again.
        }
        Err(Error::internal(format!(
            "scheduled message {:?} of user {} conflicted with stored entries that cannot be \
             read back",
            message.client_msg_id, message.sender
        ))
        .with_context("backend", "postgres")
        .with_context("operation", OPERATION))
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        claim_for: Duration,
        limit: u32,
    ) -> Result<Vec<ScheduledMessage>> {
        let limit = checked_limit(limit)?;
        let rows: Vec<ScheduledRow> = sqlx::query_as(concat!(
            "UPDATE scheduled SET claimed_until = $2 WHERE id IN ( \
                 SELECT id FROM scheduled \
                 WHERE deliver_at <= $1 AND finished_at IS NULL \
                   AND (claimed_until IS NULL OR claimed_until <= $1) \
                 ORDER BY deliver_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
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
        const OPERATION: &str = "finish_scheduled";
        let now = Timestamp::now();
        // Finished entries stay, for retries of their schedule, until the dedup window has
        // passed; clearing them here keeps the table from growing without a separate sweeper.
        sqlx::query("DELETE FROM scheduled WHERE finished_at IS NOT NULL AND finished_at < $1")
            .bind(now.minus(DEDUP_WINDOW).as_millis())
            .execute(self.pool())
            .await
            .during(OPERATION)?;
        let done = sqlx::query(
            "UPDATE scheduled SET finished_at = $1 WHERE id = $2 AND finished_at IS NULL",
        )
        .bind(now.as_millis())
        .bind(int(id.0))
        .execute(self.pool())
        .await
        .during(OPERATION)?;
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
    use super::*;

    #[test]
    fn like_patterns_take_wildcards_literally() {
        assert_eq!(contains_pattern("noon"), "%noon%");
        assert_eq!(contains_pattern("50%"), "%50\\%%");
        assert_eq!(contains_pattern("a_b\\"), "%a\\_b\\\\%");
    }
}
