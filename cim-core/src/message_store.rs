//! [`MessageStore`]: durable messages, delivery cursors, history, search, schedules.

use std::time::Duration;

use async_trait::async_trait;

use crate::{
    Appended, ConversationId, Cursor, GroupId, HistoryQuery, NewMessage, Page, Result, Scheduled,
    ScheduledId, ScheduledMessage, Seq, StoredMessage, Timestamp, UserId,
};

/// The words of a search `query`, lower case, as every backend matches them: `InvalidInput` for
/// a query with no word, or with a NUL character (which no stored body has: see
/// [`NewMessage::validate`]). The one place a backend's `search` starts.
pub fn search_words(query: &str) -> Result<Vec<String>> {
    if query.contains('\0') {
        return Err(crate::Error::invalid_input(
            "the search query contains a NUL character",
        ));
    }
    let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
    if words.is_empty() {
        return Err(crate::Error::invalid_input(
            "search query must contain at least one word",
        ));
    }
    Ok(words)
}

/// How long a store recognises a retry of a message or a schedule, at least: a retry (same
/// sender, same `client_msg_id`) within this time of the first attempt is a duplicate (unless
/// retention deleted the message meanwhile). A backend may remember longer (the SQL backends
/// remember as long as they keep the message) or forget right after it: the memory backend
/// forgets keys older than the window, which bounds its index by the window's traffic. Clients
/// retry within seconds or minutes, so a day is a wide margin.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// What a [`MessageStore`] backend can honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageCapabilities {
    /// [`MessageStore::search`] is available.
    pub search: bool,
    /// [`MessageStore::delete_before`] is available.
    pub retention: bool,
    /// [`MessageStore::schedule`], [`MessageStore::claim_due`] and
    /// [`MessageStore::finish_scheduled`] are available.
    pub scheduling: bool,
    /// Messages survive a restart of the process (false for the memory backend).
    pub durable: bool,
}

impl MessageCapabilities {
    /// Nothing optional: start from this and switch on what the backend honours, so that a
    /// capability added to cim later is never claimed by accident.
    pub const NONE: MessageCapabilities = MessageCapabilities {
        search: false,
        retention: false,
        scheduling: false,
        durable: false,
    };

    /// Everything, durably.
    pub const ALL: MessageCapabilities = MessageCapabilities {
        search: true,
        retention: true,
        scheduling: true,
        durable: true,
    };
}

/// Durable messages: the conversation log, each user's delivery cursors, history, search and
/// scheduled messages.
///
/// # Contract
///
/// - **Append.** [`append`](Self::append) stores a message and assigns it a [`MessageId`]
///   unique in the store and a [`Seq`] that is exactly one more than the conversation's previous
///   message: strictly increasing and gap-free per conversation, also under concurrent appends.
///   Once `append` returns, the message is stored (durably, if the capabilities say so). A
///   message becomes visible (to `history`, `pending`, `search`) only together with or after
///   every earlier message of its conversation, so a reader that acknowledges up to what it saw
///   never skips one still being written.
/// - **Idempotency.** Appending again with the same sender and `client_msg_id` stores nothing and
///   returns the first result with `duplicate: true`, whatever the new body says. The same holds
///   for [`schedule`](Self::schedule): scheduling again returns the first entry with
///   `duplicate: true`, while it waits and after it was delivered and finished. Retries are
///   recognised for at least [`DEDUP_WINDOW`] after the first attempt.
/// - **History.** [`history`](Self::history) pages a conversation by sequence number in either
///   direction ([`HistoryQuery`]), always in ascending order.
/// - **Delivery cursors.** Each user has a cursor per conversation: the highest sequence the user
///   acknowledged (0 at first). [`pending`](Self::pending) returns the messages addressed to the
///   user and not yet acknowledged: in the user's direct conversations, and in the groups the
///   caller names (group membership lives in the [`AccountStore`](crate::AccountStore)), never the
///   user's own messages. Within a conversation they come in sequence order; pages continue with
///   the returned cursor and hold each pending message once. [`ack`](Self::ack) moves the cursor
///   forward (never back). The server acknowledges for a new group member up to the group's
///   [`last_seq`](Self::last_seq), so joining does not deliver the backlog.
/// - **Search.** [`search`](Self::search) finds the messages visible to the user whose body
///   contains every word of the query, case-insensitively; newest first, paged by cursor.
///   Visible means: sent by the user (to anyone, any group), or readable by them (their direct
///   conversations, and the groups the caller names). A query of only white space is
///   `InvalidInput`.
/// - **Retention.** [`delete_before`](Self::delete_before) deletes messages sent before a time.
///   Sequence numbers are never reused: later appends continue after the deleted ones.
/// - **Schedules.** [`schedule`](Self::schedule) keeps a message until it is due.
///   [`claim_due`](Self::claim_due) hands due messages to one caller at a time: a claimed entry is
///   not handed out again until the claim expires, so a claimer that dies is replaced by another.
///   The claimer appends the message (idempotent by `client_msg_id`) and then calls
///   [`finish_scheduled`](Self::finish_scheduled), after which the entry is never handed out
///   again (but still recognised by a retry of its `schedule`, for the dedup window).
/// - **Errors.** `InvalidInput` for a bad message (see [`NewMessage::validate`]), a query
///   [`search_words`] refuses (no word, or a NUL character),
///   a limit of 0, or an ack beyond the conversation's last sequence; `NotFound` for an unknown
///   or already finished schedule entry; `Unavailable` / `Timeout` for an unreachable backend; `Unsupported` outside
///   the capabilities.
///
/// [`MessageId`]: crate::MessageId
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// What this backend can honour.
    fn capabilities(&self) -> MessageCapabilities;

    /// Stores `message` with a new id and the next sequence of its conversation.
    async fn append(&self, message: NewMessage) -> Result<Appended>;

    /// Appends `messages` in order, as [`append`](Self::append) one after another would: a
    /// message gets a higher sequence than every earlier one of the batch in its conversation,
    /// and a retry later in the batch is a duplicate of the earlier one. Each result is the
    /// message's own (one may fail while the others are stored). What a connection's batch of
    /// sends calls, so that a backend can store them together (SQLite commits them in one
    /// transaction); the default appends them one by one.
    async fn append_all(&self, messages: Vec<NewMessage>) -> Vec<Result<Appended>> {
        let mut results = Vec::with_capacity(messages.len());
        for message in messages {
            results.push(self.append(message).await);
        }
        results
    }

    /// A slice of a conversation, in ascending sequence order.
    async fn history(
        &self,
        conversation: ConversationId,
        query: HistoryQuery,
    ) -> Result<Vec<StoredMessage>>;

    /// The highest sequence ever assigned in the conversation (0 if it has none), including
    /// messages deleted since by retention.
    async fn last_seq(&self, conversation: ConversationId) -> Result<Seq>;

    /// Messages for `user` above their cursors, in direct conversations and in `groups`.
    async fn pending(
        &self,
        user: UserId,
        groups: &[GroupId],
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<StoredMessage>>;

    /// Moves `user`'s cursor in `conversation` forward to `up_to`.
    async fn ack(&self, user: UserId, conversation: ConversationId, up_to: Seq) -> Result<()>;

    /// `user`'s cursor in `conversation` (0 if never acknowledged).
    async fn delivered_up_to(&self, user: UserId, conversation: ConversationId) -> Result<Seq>;

    /// Messages visible to `user` whose body contains every word of `query`, newest first.
    async fn search(
        &self,
        user: UserId,
        groups: &[GroupId],
        query: &str,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<StoredMessage>>;

    /// Deletes every message sent before `cutoff`; returns how many.
    async fn delete_before(&self, cutoff: Timestamp) -> Result<u64>;

    /// Keeps `message` until `deliver_at`; a retry answers the first entry.
    async fn schedule(&self, message: NewMessage, deliver_at: Timestamp) -> Result<Scheduled>;

    /// Up to `limit` entries due at `now` and not claimed, claimed for `claim_for`.
    async fn claim_due(
        &self,
        now: Timestamp,
        claim_for: Duration,
        limit: u32,
    ) -> Result<Vec<ScheduledMessage>>;

    /// Marks a schedule entry delivered: never handed out again.
    async fn finish_scheduled(&self, id: ScheduledId) -> Result<()>;
}
