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
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    MessageStore, NewMessage, Page, Result, ScheduledId, ScheduledMessage, Seq, StoredMessage,
    Timestamp, UserId,
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
    scheduled: BTreeMap<ScheduledId, Scheduled>,
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

struct Scheduled {
    entry: ScheduledMessage,
    /// Set by a claim; the entry is claimable again from this time on.
    claimed_until: Option<Timestamp>,
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
        let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
        if words.is_empty() {
            return Err(Error::invalid_input(
                "search query must contain at least one word",
            ));
        }
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

    async fn schedule(
        &self,
        message: NewMessage,
        deliver_at: Timestamp,
    ) -> Result<ScheduledMessage> {
        message.validate()?;
        let mut state = self.lock();
        state.last_scheduled_id += 1;
        let entry = ScheduledMessage {
            id: ScheduledId(state.last_scheduled_id),
            message,
            deliver_at,
        };
        state.scheduled.insert(
            entry.id,
            Scheduled {
                entry: entry.clone(),
                claimed_until: None,
            },
        );
        Ok(entry)
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
        let mut due: Vec<&mut Scheduled> = state
            .scheduled
            .values_mut()
            .filter(|scheduled| scheduled.entry.deliver_at <= now)
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
        match self.lock().scheduled.remove(&id) {
            Some(_) => Ok(()),
            None => Err(Error::not_found(format!(
                "scheduled message {id} does not exist (finished already, or never scheduled)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, Recipient};

    const ALICE: UserId = UserId(1);
    const BOB: UserId = UserId(2);
    const CAROL: UserId = UserId(3);
    const TEAM: GroupId = GroupId(7);

    fn message(sender: UserId, to: Recipient, client_msg_id: &str, body: &str) -> NewMessage {
        NewMessage {
            sender,
            to,
            client_msg_id: client_msg_id.to_string(),
            body: body.to_string(),
            sent_at: Timestamp(1_000),
        }
    }

    fn direct(sender: UserId, to: UserId, client_msg_id: &str, body: &str) -> NewMessage {
        message(sender, Recipient::User(to), client_msg_id, body)
    }

    fn to_group(sender: UserId, group: GroupId, client_msg_id: &str, body: &str) -> NewMessage {
        message(sender, Recipient::Group(group), client_msg_id, body)
    }

    async fn append(store: &MemoryMessageStore, message: NewMessage) -> StoredMessage {
        let appended = store.append(message).await.expect("append");
        assert!(!appended.duplicate);
        appended.message
    }

    /// Appends `count` messages from `sender` to `to`, with bodies "1", "2"...
    async fn append_many(store: &MemoryMessageStore, sender: UserId, to: Recipient, count: u32) {
        for n in 1..=count {
            let id = format!("{sender}-{to:?}-{n}");
            append(store, message(sender, to, &id, &n.to_string())).await;
        }
    }

    fn seqs(messages: &[StoredMessage]) -> Vec<u64> {
        messages.iter().map(|message| message.seq.0).collect()
    }

    #[tokio::test]
    async fn sequences_count_from_one_per_conversation_and_ids_across_the_store() {
        let store = MemoryMessageStore::new();

        let mut appended = Vec::new();
        for (n, new) in [
            direct(ALICE, BOB, "a1", "hi"),
            direct(BOB, ALICE, "b1", "hello"),
            direct(ALICE, CAROL, "a2", "hey"),
            to_group(ALICE, TEAM, "a3", "all"),
            direct(ALICE, BOB, "a4", "again"),
        ]
        .into_iter()
        .enumerate()
        {
            let stored = append(&store, new).await;
            assert_eq!(stored.id, MessageId(n as u64 + 1));
            appended.push((stored.conversation, stored.seq.0));
        }

        let ab = ConversationId::direct(ALICE, BOB);
        let ac = ConversationId::direct(ALICE, CAROL);
        let team = ConversationId::Group(TEAM);
        assert_eq!(appended, [(ab, 1), (ab, 2), (ac, 1), (team, 1), (ab, 3)]);
        assert_eq!(store.last_seq(ab).await.expect("last seq"), Seq(3));
        assert_eq!(
            store
                .last_seq(ConversationId::Group(GroupId(99)))
                .await
                .expect("seq"),
            Seq(0)
        );
    }

    #[tokio::test]
    async fn concurrent_appends_get_gap_free_sequences() {
        let store = Arc::new(MemoryMessageStore::new());
        let tasks: Vec<_> = (0..50)
            .map(|n| {
                let store = Arc::clone(&store);
                let sender = if n % 2 == 0 { ALICE } else { BOB };
                tokio::spawn(async move {
                    store
                        .append(to_group(sender, TEAM, &format!("m{n}"), "x"))
                        .await
                })
            })
            .collect();
        let mut seqs = Vec::new();
        for task in tasks {
            seqs.push(task.await.expect("task").expect("append").message.seq.0);
        }

        seqs.sort_unstable();
        assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn appending_again_with_the_same_client_msg_id_returns_the_original() {
        let store = MemoryMessageStore::new();
        let original = append(&store, direct(ALICE, BOB, "same", "first")).await;

        let retry = store
            .append(direct(ALICE, BOB, "same", "changed body"))
            .await
            .expect("append");

        assert!(retry.duplicate);
        assert_eq!(retry.message, original);
        assert_eq!(
            store.last_seq(original.conversation).await.expect("seq"),
            Seq(1)
        );
        let other_sender = append(&store, direct(BOB, ALICE, "same", "mine")).await;
        assert_eq!(other_sender.seq, Seq(2), "the key is per sender");
    }

    #[tokio::test]
    async fn an_invalid_message_is_refused_before_anything_is_stored() {
        let store = MemoryMessageStore::new();
        let err = store
            .append(direct(ALICE, BOB, "", "no key"))
            .await
            .expect_err("empty client_msg_id");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let err = store
            .schedule(
                direct(ALICE, BOB, &"x".repeat(129), "long key"),
                Timestamp(0),
            )
            .await
            .expect_err("long client_msg_id");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let conversation = ConversationId::direct(ALICE, BOB);
        assert_eq!(store.last_seq(conversation).await.expect("seq"), Seq(0));
    }

    #[tokio::test]
    async fn history_answers_every_query_shape_in_ascending_order() {
        let store = MemoryMessageStore::new();
        append_many(&store, ALICE, Recipient::User(BOB), 10).await;
        let conversation = ConversationId::direct(ALICE, BOB);
        let history = |query| store.history(conversation, query);

        assert_eq!(
            seqs(&history(HistoryQuery::latest(3)).await.expect("latest")),
            [8, 9, 10]
        );
        let after = history(HistoryQuery::after(Seq(2), 3))
            .await
            .expect("after");
        assert_eq!(seqs(&after), [3, 4, 5]);
        let before = history(HistoryQuery::before(Seq(5), 3))
            .await
            .expect("before");
        assert_eq!(seqs(&before), [2, 3, 4]);
        let between = HistoryQuery {
            after: Some(Seq(3)),
            before: Some(Seq(9)),
            limit: 3,
        };
        assert_eq!(seqs(&history(between).await.expect("between")), [4, 5, 6]);

        let inverted = HistoryQuery {
            after: Some(Seq(5)),
            before: Some(Seq(5)),
            limit: 3,
        };
        assert_eq!(history(inverted).await.expect("empty range"), []);
        assert_eq!(
            seqs(&history(HistoryQuery::latest(50)).await.expect("all")).len(),
            10
        );
        let other = ConversationId::direct(BOB, CAROL);
        let empty = store
            .history(other, HistoryQuery::latest(5))
            .await
            .expect("empty");
        assert_eq!(empty, []);
        let err = history(HistoryQuery::latest(0)).await.expect_err("limit 0");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn pending_pages_direct_and_named_group_messages_until_acknowledged() {
        let store = MemoryMessageStore::new();
        append_many(&store, ALICE, Recipient::User(BOB), 2).await;
        append_many(&store, CAROL, Recipient::Group(TEAM), 2).await;
        append_many(&store, ALICE, Recipient::Group(GroupId(8)), 1).await;
        let ab = ConversationId::direct(ALICE, BOB);
        let team = ConversationId::Group(TEAM);

        let first = store.pending(BOB, &[TEAM], None, 3).await.expect("pending");
        let got: Vec<_> = first
            .items
            .iter()
            .map(|m| (m.conversation, m.seq.0))
            .collect();
        assert_eq!(got, [(ab, 1), (ab, 2), (team, 1)]);
        let cursor = first.next.expect("one more");
        let second = store
            .pending(BOB, &[TEAM], Some(&cursor), 3)
            .await
            .expect("pending");
        let got: Vec<_> = second
            .items
            .iter()
            .map(|m| (m.conversation, m.seq.0))
            .collect();
        assert_eq!(got, [(team, 2)], "group 8 was not named");
        assert_eq!(second.next, None);

        store.ack(BOB, ab, Seq(2)).await.expect("ack");
        store.ack(BOB, team, Seq(1)).await.expect("ack");
        store
            .ack(BOB, ab, Seq(1))
            .await
            .expect("ack backwards is a no-op");
        assert_eq!(
            store.delivered_up_to(BOB, ab).await.expect("cursor"),
            Seq(2)
        );
        assert_eq!(
            store.delivered_up_to(CAROL, ab).await.expect("cursor"),
            Seq(0)
        );
        let rest = store
            .pending(BOB, &[TEAM], None, 10)
            .await
            .expect("pending");
        assert_eq!(seqs(&rest.items), [2]);
        assert_eq!(rest.items[0].conversation, team);
    }

    #[tokio::test]
    async fn own_messages_are_never_pending() {
        let store = MemoryMessageStore::new();
        append(&store, direct(ALICE, BOB, "a1", "to bob")).await;
        append(&store, to_group(ALICE, TEAM, "a2", "to team")).await;
        append(&store, direct(ALICE, ALICE, "a3", "note to self")).await;
        append(&store, direct(BOB, ALICE, "b1", "to alice")).await;

        let pending = store
            .pending(ALICE, &[TEAM], None, 10)
            .await
            .expect("pending");

        let bodies: Vec<_> = pending.items.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["to alice"]);
    }

    #[tokio::test]
    async fn acks_beyond_the_last_message_and_malformed_cursors_are_invalid_input() {
        let store = MemoryMessageStore::new();
        append(&store, direct(ALICE, BOB, "a1", "hi")).await;
        let ab = ConversationId::direct(ALICE, BOB);

        let err = store.ack(BOB, ab, Seq(2)).await.expect_err("beyond last");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        for bad in ["", "17", "d:1:2", "d:1:2/x", "x:1/2"] {
            let cursor = Cursor(bad.to_string());
            let err = store
                .pending(BOB, &[], Some(&cursor), 10)
                .await
                .expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
        let err = store.pending(BOB, &[], None, 0).await.expect_err("limit 0");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn search_finds_what_the_user_sent_or_may_read_with_every_word_newest_first() {
        let store = MemoryMessageStore::new();
        append(&store, direct(ALICE, BOB, "1", "Lunch at noon?")).await;
        append(&store, direct(BOB, ALICE, "2", "lunch NOON works")).await;
        append(
            &store,
            direct(BOB, CAROL, "3", "lunch at noon, not for alice"),
        )
        .await;
        append(&store, to_group(CAROL, TEAM, "4", "team lunch at noon")).await;
        append(
            &store,
            to_group(CAROL, GroupId(8), "5", "other group lunch noon"),
        )
        .await;
        append(&store, direct(ALICE, BOB, "6", "dinner at noon")).await;
        append(
            &store,
            to_group(ALICE, GroupId(9), "7", "noon lunch, said I"),
        )
        .await;

        let first = store
            .search(ALICE, &[TEAM], "noon LUNCH", None, 2)
            .await
            .expect("search");
        let bodies: Vec<_> = first.items.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(
            bodies,
            ["noon lunch, said I", "team lunch at noon"],
            "her own message in an unnamed group, then one in a named group"
        );
        let cursor = first.next.expect("one more");
        let second = store
            .search(ALICE, &[TEAM], "noon LUNCH", Some(&cursor), 2)
            .await
            .expect("search");
        let bodies: Vec<_> = second.items.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["lunch NOON works", "Lunch at noon?"]);
        assert_eq!(second.next, None);

        let err = store
            .search(ALICE, &[], " \t ", None, 10)
            .await
            .expect_err("empty");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let bad = Cursor("newest".into());
        let err = store
            .search(ALICE, &[], "lunch", Some(&bad), 10)
            .await
            .expect_err("bad cursor");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn deleting_old_messages_never_lets_a_sequence_be_reused() {
        let store = MemoryMessageStore::new();
        let at = |sent_at, id: &str| NewMessage {
            sent_at: Timestamp(sent_at),
            ..direct(ALICE, BOB, id, "text")
        };
        append(&store, at(100, "old")).await;
        append(&store, at(200, "new")).await;
        let conversation = ConversationId::direct(ALICE, BOB);

        assert_eq!(
            store.delete_before(Timestamp(150)).await.expect("delete"),
            1
        );
        assert_eq!(store.delete_before(Timestamp(150)).await.expect("again"), 0);

        let left = store
            .history(conversation, HistoryQuery::latest(10))
            .await
            .expect("history");
        assert_eq!(seqs(&left), [2]);
        assert_eq!(store.last_seq(conversation).await.expect("seq"), Seq(2));
        assert_eq!(append(&store, at(300, "newer")).await.seq, Seq(3));
    }

    #[tokio::test]
    async fn due_entries_are_claimed_in_order_once_until_the_claim_expires() {
        let store = MemoryMessageStore::new();
        let later = store
            .schedule(direct(ALICE, BOB, "s1", "later"), Timestamp(300))
            .await;
        let first = store
            .schedule(direct(ALICE, BOB, "s2", "first"), Timestamp(100))
            .await;
        let tied = store
            .schedule(direct(ALICE, BOB, "s3", "tied"), Timestamp(100))
            .await;
        let (later, first, tied) = (later.expect("s1"), first.expect("s2"), tied.expect("s3"));
        let claim_for = Duration::from_secs(10);

        let claimed = store
            .claim_due(Timestamp(250), claim_for, 10)
            .await
            .expect("claim");
        assert_eq!(claimed, [first.clone(), tied.clone()]);
        let again = store
            .claim_due(Timestamp(250), claim_for, 10)
            .await
            .expect("claim");
        assert_eq!(again, [], "claimed entries are not handed out twice");

        let expired = Timestamp(250).plus(claim_for);
        let reclaimed = store.claim_due(expired, claim_for, 2).await.expect("claim");
        assert_eq!(
            reclaimed,
            [first.clone(), tied.clone()],
            "limit 2 leaves `later`"
        );

        store.finish_scheduled(first.id).await.expect("finish");
        let err = store
            .finish_scheduled(first.id)
            .await
            .expect_err("finished");
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let much_later = Timestamp(1_000_000);
        let rest = store
            .claim_due(much_later, claim_for, 10)
            .await
            .expect("claim");
        assert_eq!(rest, [tied, later]);
        let err = store
            .claim_due(much_later, claim_for, 0)
            .await
            .expect_err("limit 0");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

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
