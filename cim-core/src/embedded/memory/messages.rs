//! [`MessageStore`] in process memory.
//!
//! Built so that many senders never wait on one another, nor on one rehash of a big map: the
//! state is split into shards, each behind its own mutex.
//!
//! - **Conversations**, sharded by conversation id: each conversation's log and sequence
//!   counter, and the users' delivery cursors in it. "Read the last sequence, store the next
//!   one" is one step under the shard's lock, so sequences are gap-free under any
//!   concurrency. The counter is kept apart from the messages, so retention can delete messages
//!   without a later append ever reusing a number. Logs are ordered by sequence, which makes
//!   history and the pending inbox range scans; the pending cursor names the conversation and
//!   sequence of the last message returned, because the inbox is ordered by both.
//! - **Users**, sharded by user id: each user's direct conversations (the group conversations
//!   come from the caller, but the direct ones only the store knows) and the groups they sent
//!   to (search shows a user their own messages even in a group they left).
//! - **Retries**, sharded by the idempotency key itself (sender and `client_msg_id`), so that
//!   one busy sender's keys spread over every shard: the keys of the last [`DEDUP_WINDOW`],
//!   oldest first, so the index is bounded by the window and forgets in order, a little at each
//!   append (the append's own shard, and one more in turn, so that every shard forgets within
//!   64 appends). Each entry keeps its key's hash, so that growing a shard's table moves entries
//!   without hashing keys again: a sender at 5,000 messages/s once filled one shard's map, and
//!   its rehash, hashing every key again under the lock, stalled every sender for 20–30 ms
//!   (BENCHMARKS.md, W5). A message is stored once and shared (`Arc`) by its log and this
//!   index, which reads the key from the message instead of keeping a copy.
//! - **Schedules**, behind one mutex: they are few and off the hot path.
//!
//! An append takes its key's retry shard, then the conversation's shard, then the users'
//! shards, one at a time and always in that order; every other operation holds one lock at a
//! time. Nothing here survives the process, so the capabilities say `durable: false`.
//!
//! [`DEDUP_WINDOW`]: crate::message_store::DEDUP_WINDOW

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use hashbrown::HashTable;
use serde::Deserialize;

use crate::message_store::DEDUP_WINDOW;
use crate::paging::{self, parse_pending_cursor};
use crate::registry::{BackendOptions, BuildFuture, MessageStoreFactory};
use crate::{
    Appended, ConversationId, Cursor, Error, GroupId, HistoryQuery, MessageCapabilities, MessageId,
    MessageStore, NewMessage, Page, Result, Scheduled, ScheduledId, ScheduledMessage, Seq,
    StoredMessage, Timestamp, UserId,
};

inventory::submit! {
    MessageStoreFactory::new("memory", "in-process memory (lost on exit; for tests)", build)
}

/// The `memory` backend has no keys of its own; any key in its section is a mistake.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoOptions {}

fn build(options: BackendOptions) -> BuildFuture<dyn MessageStore> {
    let store = options
        .parse::<NoOptions>()
        .map(|NoOptions {}| Arc::new(MemoryMessageStore::new()) as Arc<dyn MessageStore>);
    Box::pin(std::future::ready(store))
}

/// Shards per map: enough that two cores' worth of senders rarely meet on one lock, and that
/// one shard's rehash moves a sixty-fourth of the entries.
const SHARDS: usize = 64;

/// Messages, delivery cursors and schedules in process memory, lost when the process exits.
///
/// The reference [`MessageStore`]: search, retention and scheduling, but not durable. Use it in
/// tests and single-process experiments; registered as backend `memory`. Retries are recognised
/// for [`DEDUP_WINDOW`](crate::message_store::DEDUP_WINDOW), then forgotten.
pub struct MemoryMessageStore {
    /// The last message id handed out; ids start at 1.
    last_message_id: AtomicU64,
    hasher: RandomState,
    conversations: Box<[Mutex<ConversationShard>]>,
    users: Box<[Mutex<UserShard>]>,
    retries: Box<[Mutex<RetryShard>]>,
    /// The retry shard the next append sweeps of expired keys.
    retry_sweep: AtomicUsize,
    schedules: Mutex<Schedules>,
    /// How long a retry is recognised.
    dedup_window: Duration,
}

#[derive(Default)]
struct ConversationShard {
    conversations: HashMap<ConversationId, Conversation>,
    /// Each user's delivery cursor per conversation of this shard; absent means 0.
    cursors: HashMap<(UserId, ConversationId), Seq>,
}

#[derive(Default)]
struct UserShard {
    /// Each user's direct conversations (both participants, whoever sent).
    direct: HashMap<UserId, BTreeSet<ConversationId>>,
    /// The groups each user ever sent to.
    sent_to_groups: HashMap<UserId, BTreeSet<ConversationId>>,
}

#[derive(Default)]
struct RetryShard {
    /// Stored messages by their idempotency key (sender, `client_msg_id`), with the key's hash.
    by_key: HashTable<Retry>,
    /// The same messages with when they were stored, oldest first: forgotten once the dedup
    /// window has passed.
    by_age: VecDeque<(Timestamp, Retry)>,
}

/// A stored message in the retry index, with the hash of its idempotency key.
#[derive(Clone)]
struct Retry {
    hash: u64,
    message: Arc<StoredMessage>,
}

impl Retry {
    /// Whether this is the message stored under (`sender`, `client_msg_id`).
    fn is(&self, sender: UserId, client_msg_id: &str) -> bool {
        self.message.sender == sender && self.message.client_msg_id == client_msg_id
    }
}

#[derive(Default)]
struct Schedules {
    /// The last schedule entry id handed out; ids start at 1.
    last_scheduled_id: u64,
    /// Schedule entries, waiting or finished (kept for the dedup window).
    scheduled: BTreeMap<ScheduledId, Entry>,
    /// Schedule entries by their idempotency key.
    scheduled_keys: HashMap<(UserId, String), ScheduledId>,
    /// Finished entries, oldest first: forgotten once the dedup window has passed.
    finished: VecDeque<(Timestamp, ScheduledId)>,
}

#[derive(Default)]
struct Conversation {
    /// The sequence of the latest message ever appended, deleted or not.
    last_seq: Seq,
    messages: BTreeMap<Seq, Arc<StoredMessage>>,
}

struct Entry {
    entry: ScheduledMessage,
    /// Set by a claim; the entry is claimable again from this time on.
    claimed_until: Option<Timestamp>,
    /// Set once delivered: never handed out again, only recognised by a retry.
    finished: bool,
}

impl Default for MemoryMessageStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryMessageStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::with_dedup_window(DEDUP_WINDOW)
    }

    /// An empty store that recognises retries for `window`. Anything shorter than
    /// [`DEDUP_WINDOW`](crate::message_store::DEDUP_WINDOW) breaks the [`MessageStore`]
    /// contract: this exists to test the window itself.
    pub fn with_dedup_window(window: Duration) -> Self {
        MemoryMessageStore {
            last_message_id: AtomicU64::new(0),
            hasher: RandomState::new(),
            conversations: shards(),
            users: shards(),
            retries: shards(),
            retry_sweep: AtomicUsize::new(0),
            schedules: Mutex::default(),
            dedup_window: window,
        }
    }

    fn shard<'a, T>(&self, shards: &'a [Mutex<T>], key: impl Hash) -> MutexGuard<'a, T> {
        let index = usize::try_from(self.hasher.hash_one(key)).unwrap_or(0) % shards.len();
        lock(&shards[index])
    }

    /// The hash of the idempotency key (`sender`, `client_msg_id`), for its retry shard and
    /// that shard's table.
    fn key_hash(&self, sender: UserId, client_msg_id: &str) -> u64 {
        self.hasher.hash_one((sender, client_msg_id))
    }

    /// The retry shard of a key hashed `hash`. It is picked by bits the shard's table does not
    /// use to place entries (those are the lowest and the top seven), so that the keys of one
    /// shard still spread over its whole table.
    fn retry_shard(&self, hash: u64) -> MutexGuard<'_, RetryShard> {
        let index = usize::try_from(hash >> 40).unwrap_or(0) % self.retries.len();
        lock(&self.retries[index])
    }

    /// Forgets the expired keys of the next retry shard in turn, so that every shard forgets
    /// within [`SHARDS`] appends even when no key of its own comes along. Takes and releases
    /// that shard's lock before the append takes its own (one retry lock at a time).
    fn sweep_next_retry_shard(&self, horizon: Timestamp) {
        let next = self.retry_sweep.fetch_add(1, Ordering::Relaxed) % self.retries.len();
        lock(&self.retries[next]).forget_before(horizon);
    }

    fn conversation_shard(&self, id: ConversationId) -> MutexGuard<'_, ConversationShard> {
        self.shard(&self.conversations, id)
    }

    fn user_shard(&self, user: UserId) -> MutexGuard<'_, UserShard> {
        self.shard(&self.users, user)
    }

    /// The conversations `user` reads: their direct ones and the named groups, in order.
    fn visible(&self, user: UserId, groups: &[GroupId]) -> BTreeSet<ConversationId> {
        let mut visible: BTreeSet<ConversationId> = self
            .user_shard(user)
            .direct
            .get(&user)
            .cloned()
            .unwrap_or_default();
        visible.extend(groups.iter().map(|group| ConversationId::Group(*group)));
        visible
    }

    /// Stores `message` as of `now` (the dedup window's clock).
    fn append_at(&self, message: NewMessage, now: Timestamp) -> Result<Appended> {
        message.validate()?;
        let conversation_id = message.conversation();
        let horizon = now.minus(self.dedup_window);
        self.sweep_next_retry_shard(horizon);
        let hash = self.key_hash(message.sender, &message.client_msg_id);
        let mut retries = self.retry_shard(hash);
        retries.forget_before(horizon);
        if let Some(original) = retries.by_key.find(hash, |retry| {
            retry.is(message.sender, &message.client_msg_id)
        }) {
            return Ok(Appended {
                message: StoredMessage::clone(&original.message),
                duplicate: true,
            });
        }
        let (stored, first) = {
            let mut shard = self.conversation_shard(conversation_id);
            let conversation = shard.conversations.entry(conversation_id).or_default();
            let first = conversation.last_seq == Seq(0);
            conversation.last_seq = Seq(conversation.last_seq.0 + 1);
            let stored = Arc::new(StoredMessage {
                id: MessageId(self.last_message_id.fetch_add(1, Ordering::Relaxed) + 1),
                conversation: conversation_id,
                seq: conversation.last_seq,
                sender: message.sender,
                to: message.to,
                client_msg_id: message.client_msg_id,
                body: message.body,
                sent_at: message.sent_at,
            });
            conversation
                .messages
                .insert(stored.seq, Arc::clone(&stored));
            (stored, first)
        };
        match conversation_id {
            ConversationId::Direct { low, high } if first => {
                for user in [low, high] {
                    let mut users = self.user_shard(user);
                    users
                        .direct
                        .entry(user)
                        .or_default()
                        .insert(conversation_id);
                }
            }
            ConversationId::Direct { .. } => {}
            ConversationId::Group(_) => {
                let mut users = self.user_shard(stored.sender);
                users
                    .sent_to_groups
                    .entry(stored.sender)
                    .or_default()
                    .insert(conversation_id);
            }
        }
        let retry = Retry {
            hash,
            message: Arc::clone(&stored),
        };
        retries
            .by_key
            .insert_unique(hash, retry.clone(), |retry| retry.hash);
        retries.by_age.push_back((now, retry));
        Ok(Appended {
            message: StoredMessage::clone(&stored),
            duplicate: false,
        })
    }

    /// How many idempotency keys the store remembers now.
    #[cfg(test)]
    fn remembered_keys(&self) -> usize {
        self.retries
            .iter()
            .map(|shard| lock(shard).by_key.len())
            .sum()
    }
}

/// [`SHARDS`] empty shards.
fn shards<T: Default>() -> Box<[Mutex<T>]> {
    (0..SHARDS).map(|_| Mutex::default()).collect()
}

/// Locks `mutex`. No operation panics half-way through a change, so a poisoned lock still
/// guards a consistent state.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RetryShard {
    /// Forgets the keys stored before `horizon`.
    fn forget_before(&mut self, horizon: Timestamp) {
        while let Some((stored_at, _)) = self.by_age.front() {
            if *stored_at > horizon {
                break;
            }
            if let Some((_, forgotten)) = self.by_age.pop_front()
                && let Ok(entry) = self.by_key.find_entry(forgotten.hash, |retry| {
                    Arc::ptr_eq(&retry.message, &forgotten.message)
                })
            {
                entry.remove();
            }
        }
    }
}

impl fmt::Debug for MemoryMessageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mut conversations, mut messages) = (0, 0);
        for shard in self.conversations.iter() {
            let shard = lock(shard);
            conversations += shard.conversations.len();
            messages += shard
                .conversations
                .values()
                .map(|conversation| conversation.messages.len())
                .sum::<usize>();
        }
        f.debug_struct("MemoryMessageStore")
            .field("conversations", &conversations)
            .field("messages", &messages)
            .field("scheduled", &lock(&self.schedules).scheduled.len())
            .finish()
    }
}

impl ConversationShard {
    fn delivered_up_to(&self, user: UserId, conversation: ConversationId) -> Seq {
        self.cursors
            .get(&(user, conversation))
            .copied()
            .unwrap_or(Seq(0))
    }
}

/// `limit` as a page size; 0 is refused, as the contract says.
fn page_size(limit: u32) -> Result<usize> {
    if limit == 0 {
        return Err(Error::invalid_input("limit must be at least 1"));
    }
    Ok(usize::try_from(limit).unwrap_or(usize::MAX))
}

/// The pending cursor of `message` (see [`paging::pending_cursor`]).
fn pending_cursor(message: &StoredMessage) -> Cursor {
    Cursor(paging::pending_cursor(message.conversation, message.seq))
}

fn parse_search_cursor(Cursor(text): &Cursor) -> Result<MessageId> {
    text.parse().map_err(|_| {
        Error::invalid_input(format!(
            "cursor {text:?} was not returned by search; pass back the previous page's cursor, \
             or none for the first page"
        ))
    })
}

#[async_trait]
impl MessageStore for MemoryMessageStore {
    fn capabilities(&self) -> MessageCapabilities {
        MessageCapabilities {
            durable: false,
            ..MessageCapabilities::ALL
        }
    }

    async fn append(&self, message: NewMessage) -> Result<Appended> {
        self.append_at(message, Timestamp::now())
    }

    async fn history(
        &self,
        conversation: ConversationId,
        query: HistoryQuery,
    ) -> Result<Vec<StoredMessage>> {
        let limit = page_size(query.limit)?;
        let shard = self.conversation_shard(conversation);
        let Some(conversation) = shard.conversations.get(&conversation) else {
            return Ok(Vec::new());
        };
        let log = &conversation.messages;
        let copy = |(_, message): (&Seq, &Arc<StoredMessage>)| StoredMessage::clone(message);
        let slice = match (query.after, query.before) {
            (None, None) => {
                let mut latest: Vec<_> = log.iter().rev().take(limit).map(copy).collect();
                latest.reverse();
                latest
            }
            (Some(after), None) => log
                .range((Bound::Excluded(after), Bound::Unbounded))
                .take(limit)
                .map(copy)
                .collect(),
            (None, Some(before)) => {
                let mut last: Vec<_> = log.range(..before).rev().take(limit).map(copy).collect();
                last.reverse();
                last
            }
            // `range` panics on an empty or inverted pair of exclusive bounds; nothing lies
            // strictly between them anyway.
            (Some(after), Some(before)) if after >= before => Vec::new(),
            (Some(after), Some(before)) => log
                .range((Bound::Excluded(after), Bound::Excluded(before)))
                .take(limit)
                .map(copy)
                .collect(),
        };
        Ok(slice)
    }

    async fn last_seq(&self, conversation: ConversationId) -> Result<Seq> {
        let shard = self.conversation_shard(conversation);
        Ok(shard
            .conversations
            .get(&conversation)
            .map_or(Seq(0), |conversation| conversation.last_seq))
    }

    async fn pending(
        &self,
        user: UserId,
        groups: &[GroupId],
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<StoredMessage>> {
        let limit = page_size(limit)?;
        let resume = cursor.map(parse_pending_cursor).transpose()?;
        let conversations = self.visible(user, groups);
        let start = resume.map_or(Bound::Unbounded, |(conversation, _)| {
            Bound::Included(conversation)
        });
        // One more than a page, to tell whether another page follows.
        let mut items: Vec<StoredMessage> = Vec::new();
        for &id in conversations.range((start, Bound::Unbounded)) {
            let shard = self.conversation_shard(id);
            let Some(conversation) = shard.conversations.get(&id) else {
                continue;
            };
            let mut after = shard.delivered_up_to(user, id);
            if let Some((resumed, seq)) = resume
                && resumed == id
            {
                after = after.max(seq);
            }
            let wanted = limit + 1 - items.len();
            items.extend(
                conversation
                    .messages
                    .range((Bound::Excluded(after), Bound::Unbounded))
                    .map(|(_, message)| message)
                    .filter(|message| message.sender != user)
                    .take(wanted)
                    .map(|message| StoredMessage::clone(message)),
            );
            if items.len() > limit {
                break;
            }
        }
        let more = items.len() > limit;
        items.truncate(limit);
        let next = items.last().filter(|_| more).map(pending_cursor);
        Ok(Page { items, next })
    }

    async fn ack(&self, user: UserId, conversation: ConversationId, up_to: Seq) -> Result<()> {
        let mut shard = self.conversation_shard(conversation);
        let last = shard
            .conversations
            .get(&conversation)
            .map_or(Seq(0), |conversation| conversation.last_seq);
        if up_to > last {
            return Err(Error::invalid_input(format!(
                "cannot acknowledge {conversation} up to {up_to}: its last message is {last}"
            )));
        }
        let cursor = shard.cursors.entry((user, conversation)).or_insert(Seq(0));
        *cursor = (*cursor).max(up_to);
        Ok(())
    }

    async fn delivered_up_to(&self, user: UserId, conversation: ConversationId) -> Result<Seq> {
        Ok(self
            .conversation_shard(conversation)
            .delivered_up_to(user, conversation))
    }

    async fn search(
        &self,
        user: UserId,
        groups: &[GroupId],
        query: &str,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<StoredMessage>> {
        let limit = page_size(limit)?;
        let words = crate::message_store::search_words(query)?;
        let before = cursor.map(parse_search_cursor).transpose()?;
        let readable = self.visible(user, groups);
        let sent_to = self
            .user_shard(user)
            .sent_to_groups
            .get(&user)
            .cloned()
            .unwrap_or_default();
        let searched: BTreeSet<ConversationId> = readable.iter().chain(&sent_to).copied().collect();
        let mut found: Vec<Arc<StoredMessage>> = Vec::new();
        for id in searched {
            let shard = self.conversation_shard(id);
            let Some(conversation) = shard.conversations.get(&id) else {
                continue;
            };
            found.extend(
                conversation
                    .messages
                    .values()
                    .filter(|message| {
                        message.sender == user || readable.contains(&message.conversation)
                    })
                    .filter(|message| before.is_none_or(|before| message.id < before))
                    .filter(|message| {
                        let body = message.body.to_lowercase();
                        words.iter().all(|word| body.contains(word.as_str()))
                    })
                    .cloned(),
            );
        }
        found.sort_unstable_by_key(|message| Reverse(message.id));
        let more = found.len() > limit;
        found.truncate(limit);
        let next = found
            .last()
            .filter(|_| more)
            .map(|message| Cursor(message.id.to_string()));
        Ok(Page {
            items: found
                .iter()
                .map(|message| StoredMessage::clone(message))
                .collect(),
            next,
        })
    }

    async fn delete_before(&self, cutoff: Timestamp) -> Result<u64> {
        // A deleted message's retries are still recognised for the dedup window: the index
        // shares the message and forgets it in its own time.
        let mut deleted = 0;
        for shard in self.conversations.iter() {
            let mut shard = lock(shard);
            for conversation in shard.conversations.values_mut() {
                let before = conversation.messages.len();
                conversation
                    .messages
                    .retain(|_, message| message.sent_at >= cutoff);
                deleted += (before - conversation.messages.len()) as u64;
            }
        }
        Ok(deleted)
    }

    async fn schedule(&self, message: NewMessage, deliver_at: Timestamp) -> Result<Scheduled> {
        message.validate()?;
        let mut state = lock(&self.schedules);
        state.forget_finished(Timestamp::now());
        let key = (message.sender, message.client_msg_id.clone());
        if let Some(first) = state
            .scheduled_keys
            .get(&key)
            .and_then(|id| state.scheduled.get(id))
        {
            return Ok(Scheduled {
                entry: first.entry.clone(),
                duplicate: true,
            });
        }
        state.last_scheduled_id += 1;
        let entry = ScheduledMessage {
            id: ScheduledId(state.last_scheduled_id),
            message,
            deliver_at,
        };
        state.scheduled_keys.insert(key, entry.id);
        state.scheduled.insert(
            entry.id,
            Entry {
                entry: entry.clone(),
                claimed_until: None,
                finished: false,
            },
        );
        Ok(Scheduled {
            entry,
            duplicate: false,
        })
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        claim_for: Duration,
        limit: u32,
    ) -> Result<Vec<ScheduledMessage>> {
        let limit = page_size(limit)?;
        let claimed_until = now.plus(claim_for);
        let mut state = lock(&self.schedules);
        let mut due: Vec<&mut Entry> = state
            .scheduled
            .values_mut()
            .filter(|scheduled| !scheduled.finished && scheduled.entry.deliver_at <= now)
            .filter(|scheduled| scheduled.claimed_until.is_none_or(|until| until <= now))
            .collect();
        due.sort_unstable_by_key(|scheduled| (scheduled.entry.deliver_at, scheduled.entry.id));
        Ok(due
            .into_iter()
            .take(limit)
            .map(|scheduled| {
                scheduled.claimed_until = Some(claimed_until);
                scheduled.entry.clone()
            })
            .collect())
    }

    async fn finish_scheduled(&self, id: ScheduledId) -> Result<()> {
        let mut state = lock(&self.schedules);
        match state.scheduled.get_mut(&id) {
            Some(entry) if !entry.finished => {
                entry.finished = true;
                state.finished.push_back((Timestamp::now(), id));
                Ok(())
            }
            _ => Err(Error::not_found(format!(
                "scheduled message {id} does not exist (finished already, or never scheduled)"
            ))),
        }
    }
}

impl Schedules {
    /// Drops the finished entries whose dedup window has passed.
    fn forget_finished(&mut self, now: Timestamp) {
        let horizon = now.minus(DEDUP_WINDOW);
        while let Some(&(finished_at, id)) = self.finished.front() {
            if finished_at > horizon {
                break;
            }
            self.finished.pop_front();
            if let Some(entry) = self.scheduled.remove(&id) {
                let message = entry.entry.message;
                self.scheduled_keys
                    .remove(&(message.sender, message.client_msg_id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[tokio::test]
    async fn the_memory_backend_is_registered_says_it_is_not_durable_and_refuses_unknown_keys() {
        let factory = crate::registry::factory::<dyn MessageStore>("messages", "memory")
            .expect("memory is registered");

        let store = factory
            .build(BackendOptions::new("messages", "memory"))
            .await
            .expect("builds with no keys");
        let capabilities = store.capabilities();
        assert!(capabilities.search && capabilities.retention && capabilities.scheduling);
        assert!(!capabilities.durable);

        let options = BackendOptions::new("messages", "memory").with_option("url", "x");
        let err = factory.build(options).await.err().expect("unknown key");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("url"), "{err}");
    }

    fn message(sender: u64, client_msg_id: &str) -> NewMessage {
        NewMessage {
            sender: UserId(sender),
            to: crate::Recipient::User(UserId(sender + 1)),
            client_msg_id: client_msg_id.into(),
            body: "hello".into(),
            sent_at: Timestamp::now(),
        }
    }

    #[test]
    fn retries_are_recognised_within_the_dedup_window_and_forgotten_after_it() {
        let window = Duration::from_secs(60);
        let store = MemoryMessageStore::with_dedup_window(window);
        let t0 = Timestamp::now();
        let first = store.append_at(message(1, "a"), t0).expect("append");
        assert!(!first.duplicate);

        let almost = t0.plus(window - Duration::from_millis(1));
        let retry = store.append_at(message(1, "a"), almost).expect("retry");
        assert!(retry.duplicate, "a retry inside the window is a duplicate");
        assert_eq!(retry.message, first.message);

        // Past the window, the first key is forgotten (a shard at each append, so every shard
        // within SHARDS appends, whichever keys come)...
        let after = t0.plus(window + Duration::from_millis(1));
        for i in 0..SHARDS {
            store
                .append_at(message(1, &format!("fresh-{i}")), after)
                .expect("append");
        }
        assert_eq!(
            store.remembered_keys(),
            SHARDS,
            "only the fresh keys are kept"
        );
        // ... so the same key now stores a new message, with the next sequence.
        let late = store.append_at(message(1, "a"), after).expect("late retry");
        assert!(!late.duplicate);
        assert_eq!(late.message.seq, Seq(2 + SHARDS as u64));
    }

    #[tokio::test]
    async fn a_retry_of_a_message_retention_deleted_is_still_recognised() {
        let store = MemoryMessageStore::new();
        let first = store.append(message(1, "a")).await.expect("append");
        let cutoff = first.message.sent_at.plus(Duration::from_millis(1));
        assert_eq!(store.delete_before(cutoff).await.expect("delete"), 1);
        let retry = store.append(message(1, "a")).await.expect("retry");
        assert!(retry.duplicate);
        assert_eq!(retry.message.id, first.message.id);
        let history = HistoryQuery {
            after: None,
            before: None,
            limit: 10,
        };
        let conversation = first.message.conversation;
        assert!(
            store
                .history(conversation, history)
                .await
                .expect("history")
                .is_empty()
        );
    }
}
