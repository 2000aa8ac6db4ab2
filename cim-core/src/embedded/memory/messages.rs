//! [`MessageStore`] in process memory.
//!
//! The whole state sits behind one mutex, so "read the conversation's last sequence, store the
//! next one" is one step and sequences are gap-free under any concurrency. Each conversation
//! keeps its sequence counter apart from its messages, so retention can delete messages without
//! a later append ever reusing a number. Messages are kept per conversation in sequence order,
//! which makes history and the pending inbox range scans; the pending cursor names the
//! conversation and sequence of the last message returned, because the inbox is ordered by both.
//! Nothing here survives the process, so the capabilities say `durable: false`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

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

/// Messages, delivery cursors and schedules in process memory, lost when the process exits.
///
/// The reference [`MessageStore`]: search, retention and scheduling, but not durable. Use it in
/// tests and single-process experiments; registered as backend `memory`.
#[derive(Default)]
pub struct MemoryMessageStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The last message id handed out; ids start at 1.
    last_message_id: u64,
    /// The last schedule entry id handed out; ids start at 1.
    last_scheduled_id: u64,
    conversations: HashMap<ConversationId, Conversation>,
    /// Every stored message by its idempotency key (sender, `client_msg_id`).
    by_client_msg_id: HashMap<(UserId, String), StoredMessage>,
    /// Each user's delivery cursor per conversation; absent means 0.
    cursors: HashMap<(UserId, ConversationId), Seq>,
    /// Each user's direct conversations (both participants, whoever sent): the group
    /// conversations come from the caller, but the direct ones only the store knows.
    direct: HashMap<UserId, BTreeSet<ConversationId>>,
    /// The groups each user ever sent to: search shows a user their own messages even in a
    /// group the caller does not name (one they left, say).
    sent_to_groups: HashMap<UserId, BTreeSet<ConversationId>>,
    /// Schedule entries, waiting or finished (kept for the dedup window).
    scheduled: BTreeMap<ScheduledId, Entry>,
    /// Schedule entries by their idempotency key.
    scheduled_keys: HashMap<(UserId, String), ScheduledId>,
    /// Finished entries, oldest first: forgotten once the dedup window has passed.
    finished: VecDeque<(Timestamp, ScheduledId)>,
}

struct Conversation {
    /// The sequence of the latest message ever appended, deleted or not.
    last_seq: Seq,
    messages: BTreeMap<Seq, StoredMessage>,
}

impl Default for Conversation {
    fn default() -> Self {
        Conversation {
            last_seq: Seq(0),
            messages: BTreeMap::new(),
        }
    }
}

struct Entry {
    entry: ScheduledMessage,
    /// Set by a claim; the entry is claimable again from this time on.
    claimed_until: Option<Timestamp>,
    /// Set once delivered: never handed out again, only recognised by a retry.
    finished: bool,
}

impl MemoryMessageStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No operation panics half-way through a change, so a poisoned lock still guards a
        // consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for MemoryMessageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryMessageStore")
            .field("conversations", &state.conversations.len())
            .field("messages", &state.by_client_msg_id.len())
            .field("scheduled", &state.scheduled.len())
            .finish()
    }
}

impl State {
    /// The conversations `user` reads: their direct ones and the named groups, in order.
    fn visible(&self, user: UserId, groups: &[GroupId]) -> BTreeSet<ConversationId> {
        let direct = self.direct.get(&user).into_iter().flatten().copied();
        direct
            .chain(groups.iter().map(|group| ConversationId::Group(*group)))
            .collect()
    }

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
        message.validate()?;
        let mut guard = self.lock();
        let state = &mut *guard;
        let key = (message.sender, message.client_msg_id.clone());
        if let Some(original) = state.by_client_msg_id.get(&key) {
            return Ok(Appended {
                message: original.clone(),
                duplicate: true,
            });
        }
        state.last_message_id += 1;
        let conversation_id = message.conversation();
        let conversation = state.conversations.entry(conversation_id).or_default();
        conversation.last_seq = Seq(conversation.last_seq.0 + 1);
        let stored = StoredMessage {
            id: MessageId(state.last_message_id),
            conversation: conversation_id,
            seq: conversation.last_seq,
            sender: message.sender,
            to: message.to,
            client_msg_id: message.client_msg_id,
            body: message.body,
            sent_at: message.sent_at,
        };
        conversation.messages.insert(stored.seq, stored.clone());
        match conversation_id {
            ConversationId::Direct { low, high } => {
                for user in [low, high] {
                    state
                        .direct
                        .entry(user)
                        .or_default()
                        .insert(conversation_id);
                }
            }
            ConversationId::Group(_) => {
                let sent_to = state.sent_to_groups.entry(stored.sender).or_default();
                sent_to.insert(conversation_id);
            }
        }
        state.by_client_msg_id.insert(key, stored.clone());
        Ok(Appended {
            message: stored,
            duplicate: false,
        })
    }

    async fn history(
        &self,
        conversation: ConversationId,
        query: HistoryQuery,
    ) -> Result<Vec<StoredMessage>> {
        let limit = page_size(query.limit)?;
        let state = self.lock();
        let Some(conversation) = state.conversations.get(&conversation) else {
            return Ok(Vec::new());
        };
        let log = &conversation.messages;
        let slice = match (query.after, query.before) {
            (None, None) => {
                let mut latest: Vec<_> = log.values().rev().take(limit).cloned().collect();
                latest.reverse();
                latest
            }
            (Some(after), None) => log
                .range((Bound::Excluded(after), Bound::Unbounded))
                .map(|(_, message)| message.clone())
                .take(limit)
                .collect(),
            (None, Some(before)) => {
                let mut last: Vec<_> = log
                    .range(..before)
                    .rev()
                    .map(|(_, message)| message.clone())
                    .take(limit)
                    .collect();
                last.reverse();
                last
            }
            // `range` panics on an empty or inverted pair of exclusive bounds; nothing lies
            // strictly between them anyway.
            (Some(after), Some(before)) if after >= before => Vec::new(),
            (Some(after), Some(before)) => log
                .range((Bound::Excluded(after), Bound::Excluded(before)))
                .map(|(_, message)| message.clone())
                .take(limit)
                .collect(),
        };
        Ok(slice)
    }

    async fn last_seq(&self, conversation: ConversationId) -> Result<Seq> {
        let state = self.lock();
        Ok(state
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
        let state = self.lock();
        let conversations = state.visible(user, groups);
        let start = resume.map_or(Bound::Unbounded, |(conversation, _)| {
            Bound::Included(conversation)
        });
        let mut pending = conversations
            .range((start, Bound::Unbounded))
            .filter_map(|id| Some((*id, state.conversations.get(id)?)))
            .flat_map(|(id, conversation)| {
                let mut after = state.delivered_up_to(user, id);
                if let Some((resumed, seq)) = resume
                    && resumed == id
                {
                    after = after.max(seq);
                }
                conversation
                    .messages
                    .range((Bound::Excluded(after), Bound::Unbounded))
                    .map(|(_, message)| message)
            })
            .filter(|message| message.sender != user);
        let items: Vec<StoredMessage> = pending.by_ref().take(limit).cloned().collect();
        let more = pending.next().is_some();
        let next = items.last().filter(|_| more).map(pending_cursor);
        Ok(Page { items, next })
    }

    async fn ack(&self, user: UserId, conversation: ConversationId, up_to: Seq) -> Result<()> {
        let mut state = self.lock();
        let last = state
            .conversations
            .get(&conversation)
            .map_or(Seq(0), |conversation| conversation.last_seq);
        if up_to > last {
            return Err(Error::invalid_input(format!(
                "cannot acknowledge {conversation} up to {up_to}: its last message is {last}"
            )));
        }
        let cursor = state.cursors.entry((user, conversation)).or_insert(Seq(0));
        *cursor = (*cursor).max(up_to);
        Ok(())
    }

    async fn delivered_up_to(&self, user: UserId, conversation: ConversationId) -> Result<Seq> {
        Ok(self.lock().delivered_up_to(user, conversation))
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
        let state = self.lock();
        let readable = state.visible(user, groups);
        let sent_to = state.sent_to_groups.get(&user).into_iter().flatten();
        let searched: BTreeSet<ConversationId> = readable.iter().chain(sent_to).copied().collect();
        let mut found: Vec<&StoredMessage> = searched
            .iter()
            .filter_map(|id| state.conversations.get(id))
            .flat_map(|conversation| conversation.messages.values())
            .filter(|message| message.sender == user || readable.contains(&message.conversation))
            .filter(|message| before.is_none_or(|before| message.id < before))
            .filter(|message| {
                let body = message.body.to_lowercase();
                words.iter().all(|word| body.contains(word.as_str()))
            })
            .collect();
        found.sort_unstable_by_key(|message| Reverse(message.id));
        let more = found.len() > limit;
        found.truncate(limit);
        let next = found
            .last()
            .filter(|_| more)
            .map(|message| Cursor(message.id.to_string()));
        Ok(Page {
            items: found.into_iter().cloned().collect(),
            next,
        })
    }

    async fn delete_before(&self, cutoff: Timestamp) -> Result<u64> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut deleted = 0;
        for conversation in state.conversations.values_mut() {
            conversation.messages.retain(|_, message| {
                if message.sent_at >= cutoff {
                    return true;
                }
                let key = (message.sender, message.client_msg_id.clone());
                state.by_client_msg_id.remove(&key);
                deleted += 1;
                false
            });
        }
        Ok(deleted)
    }

    async fn schedule(&self, message: NewMessage, deliver_at: Timestamp) -> Result<Scheduled> {
        message.validate()?;
        let mut state = self.lock();
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
        let mut state = self.lock();
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
        let mut state = self.lock();
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

impl State {
    /// Drops the finished entries whose dedup window has passed.
    fn forget_finished(&mut self, now: Timestamp) {
        let horizon = now.minus(crate::message_store::DEDUP_WINDOW);
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
}
