//! Cases for [`cim_core::MessageStore`]: every append gets an id unique in the store and the
//! next sequence of its conversation (1, 2, 3... strictly increasing and gap-free, also under
//! concurrent appends); a retry with the same sender and `client_msg_id` stores nothing and
//! returns the first result; history pages in either direction and always answers in ascending
//! order; each user's delivery cursor only moves forward, and `pending` lists what is addressed to
//! the user above it (direct conversations and the groups named, never the user's own messages)
//! in sequence order, each message once across pages; search needs every word, sees only what
//! the user may read and answers newest first; retention deletes old messages without ever
//! reusing their sequence numbers; a due schedule entry goes to one claimer at a time until its
//! claim expires. What the capabilities do not claim is `Unsupported`.
//!
//! Users and groups are bare ids here: membership lives in the account store, and the message
//! store takes the caller's word for it (the `groups` arguments).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cim_core::{
    ConversationId, ErrorKind, GroupId, HistoryQuery, MessageCapabilities, MessageId, MessageStore,
    NewMessage, Recipient, ScheduledId, ScheduledMessage, Seq, StoredMessage, Timestamp, UserId,
};

use crate::case::{Case, Harness, boxed};
use crate::support::{MAX_PAGES, Must, all_pages, assert_kind, join_task};

/// The harness every case of this module gets.
type Messages = Harness<dyn MessageStore>;

/// Every case of this trait, in order.
pub fn cases() -> Vec<Case<dyn MessageStore>> {
    vec![
        Case::always(
            "append_numbers_a_direct_conversation_1_2_3_from_both_sides",
            |h| {
                boxed(append_numbers_a_direct_conversation_1_2_3_from_both_sides(
                    h,
                ))
            },
        ),
        Case::always(
            "a_batch_is_appended_in_order_each_message_with_its_own_result",
            |h| boxed(a_batch_is_appended_in_order_each_message_with_its_own_result(h)),
        ),
        Case::always(
            "sequences_are_per_conversation_and_message_ids_unique",
            |h| boxed(sequences_are_per_conversation_and_message_ids_unique(h)),
        ),
        Case::always(
            "append_with_a_known_client_msg_id_returns_the_first_result",
            |h| {
                boxed(append_with_a_known_client_msg_id_returns_the_first_result(
                    h,
                ))
            },
        ),
        Case::always(
            "a_known_client_msg_id_to_another_recipient_stores_nothing",
            |h| boxed(a_known_client_msg_id_to_another_recipient_stores_nothing(h)),
        ),
        Case::always(
            "the_same_client_msg_id_from_another_sender_is_a_new_message",
            |h| {
                boxed(the_same_client_msg_id_from_another_sender_is_a_new_message(
                    h,
                ))
            },
        ),
        Case::always("append_rejects_an_empty_or_too_long_client_msg_id", |h| {
            boxed(append_rejects_an_empty_or_too_long_client_msg_id(h))
        }),
        Case::always(
            "concurrent_appends_get_gap_free_increasing_sequences",
            |h| boxed(concurrent_appends_get_gap_free_increasing_sequences(h)),
        ),
        Case::always(
            "history_answers_every_query_shape_in_ascending_order",
            |h| boxed(history_answers_every_query_shape_in_ascending_order(h)),
        ),
        Case::always(
            "history_pages_backwards_and_forwards_visit_each_message_once",
            |h| boxed(history_pages_backwards_and_forwards_visit_each_message_once(h)),
        ),
        Case::always("a_limit_of_zero_is_invalid_input", |h| {
            boxed(a_limit_of_zero_is_invalid_input(h))
        }),
        Case::always(
            "an_empty_conversation_has_last_seq_zero_and_no_history",
            |h| boxed(an_empty_conversation_has_last_seq_zero_and_no_history(h)),
        ),
        Case::always(
            "pending_lists_direct_messages_to_the_user_in_sequence_order",
            |h| {
                boxed(pending_lists_direct_messages_to_the_user_in_sequence_order(
                    h,
                ))
            },
        ),
        Case::always("ack_advances_the_cursor_and_shrinks_pending", |h| {
            boxed(ack_advances_the_cursor_and_shrinks_pending(h))
        }),
        Case::always("ack_never_moves_the_cursor_back", |h| {
            boxed(ack_never_moves_the_cursor_back(h))
        }),
        Case::always("ack_beyond_the_last_sequence_is_invalid_input", |h| {
            boxed(ack_beyond_the_last_sequence_is_invalid_input(h))
        }),
        Case::always(
            "group_messages_are_pending_only_in_named_groups_and_never_for_their_sender",
            |h| {
                boxed(group_messages_are_pending_only_in_named_groups_and_never_for_their_sender(h))
            },
        ),
        Case::always("a_member_acked_at_join_gets_only_later_messages", |h| {
            boxed(a_member_acked_at_join_gets_only_later_messages(h))
        }),
        Case::always("pending_pages_hold_each_pending_message_once", |h| {
            boxed(pending_pages_hold_each_pending_message_once(h))
        }),
        Case::always("pending_stays_in_order_under_concurrent_appends", |h| {
            boxed(pending_stays_in_order_under_concurrent_appends(h))
        }),
        Case::when(
            "search_needs_every_word_in_any_letter_case_newest_first",
            |caps: &MessageCapabilities| caps.search,
            |h| boxed(search_needs_every_word_in_any_letter_case_newest_first(h)),
        ),
        Case::when(
            "search_sees_only_what_the_user_sent_or_may_read",
            |caps: &MessageCapabilities| caps.search,
            |h| boxed(search_sees_only_what_the_user_sent_or_may_read(h)),
        ),
        Case::when(
            "search_pages_hold_each_match_once_newest_first",
            |caps: &MessageCapabilities| caps.search,
            |h| boxed(search_pages_hold_each_match_once_newest_first(h)),
        ),
        Case::when(
            "search_with_an_empty_query_or_a_limit_of_zero_is_invalid_input",
            |caps: &MessageCapabilities| caps.search,
            |h| boxed(search_with_an_empty_query_or_a_limit_of_zero_is_invalid_input(h)),
        ),
        Case::when(
            "search_is_unsupported_when_not_claimed",
            |caps: &MessageCapabilities| !caps.search,
            |h| boxed(search_is_unsupported_when_not_claimed(h)),
        ),
        Case::when(
            "delete_before_removes_older_messages_and_counts_them",
            |caps: &MessageCapabilities| caps.retention,
            |h| boxed(delete_before_removes_older_messages_and_counts_them(h)),
        ),
        Case::when(
            "appends_after_a_deletion_never_reuse_a_sequence",
            |caps: &MessageCapabilities| caps.retention,
            |h| boxed(appends_after_a_deletion_never_reuse_a_sequence(h)),
        ),
        Case::when(
            "delete_before_is_unsupported_when_not_claimed",
            |caps: &MessageCapabilities| !caps.retention,
            |h| boxed(delete_before_is_unsupported_when_not_claimed(h)),
        ),
        Case::when(
            "claim_due_hands_out_an_entry_only_once_it_is_due",
            |caps: &MessageCapabilities| caps.scheduling,
            |h| boxed(claim_due_hands_out_an_entry_only_once_it_is_due(h)),
        ),
        Case::when(
            "claim_due_hands_out_at_most_limit_entries",
            |caps: &MessageCapabilities| caps.scheduling,
            |h| boxed(claim_due_hands_out_at_most_limit_entries(h)),
        ),
        Case::when(
            "a_claimed_entry_is_handed_out_again_only_after_the_claim_expires",
            |caps: &MessageCapabilities| caps.scheduling,
            |h| boxed(a_claimed_entry_is_handed_out_again_only_after_the_claim_expires(h)),
        ),
        Case::when(
            "finish_scheduled_removes_the_entry_and_unknown_ids_are_not_found",
            |caps: &MessageCapabilities| caps.scheduling,
            |h| boxed(finish_scheduled_removes_the_entry_and_unknown_ids_are_not_found(h)),
        ),
        Case::when(
            "a_reclaimed_entry_is_appended_only_once",
            |caps: &MessageCapabilities| caps.scheduling,
            |h| boxed(a_reclaimed_entry_is_appended_only_once(h)),
        ),
        Case::when(
            "concurrent_claimers_never_get_the_same_entry",
            |caps: &MessageCapabilities| caps.scheduling,
            |h| boxed(concurrent_claimers_never_get_the_same_entry(h)),
        ),
        Case::when(
            "scheduling_again_with_the_same_client_msg_id_answers_the_first_entry",
            |caps: &MessageCapabilities| caps.scheduling,
            |h| boxed(scheduling_again_with_the_same_client_msg_id_answers_the_first_entry(h)),
        ),
        Case::when(
            "a_retried_schedule_after_the_delivery_is_still_a_duplicate",
            |caps: &MessageCapabilities| caps.scheduling,
            |h| {
                boxed(a_retried_schedule_after_the_delivery_is_still_a_duplicate(
                    h,
                ))
            },
        ),
        Case::when(
            "concurrent_schedules_of_one_client_msg_id_keep_one_entry",
            |caps: &MessageCapabilities| caps.scheduling,
            |h| boxed(concurrent_schedules_of_one_client_msg_id_keep_one_entry(h)),
        ),
        Case::when(
            "schedule_rejects_bad_messages_and_claim_due_a_limit_of_zero",
            |caps: &MessageCapabilities| caps.scheduling,
            |h| {
                boxed(schedule_rejects_bad_messages_and_claim_due_a_limit_of_zero(
                    h,
                ))
            },
        ),
        Case::when(
            "scheduling_is_unsupported_when_not_claimed",
            |caps: &MessageCapabilities| !caps.scheduling,
            |h| boxed(scheduling_is_unsupported_when_not_claimed(h)),
        ),
    ]
}

/// A direct message from user `from` to user `to`, sent now.
fn direct(from: u64, to: u64, client_msg_id: &str, body: &str) -> NewMessage {
    NewMessage {
        sender: UserId(from),
        to: Recipient::User(UserId(to)),
        client_msg_id: client_msg_id.to_string(),
        body: body.to_string(),
        sent_at: Timestamp::now(),
    }
}

/// A message from user `from` to group `group`, sent now.
fn to_group(from: u64, group: u64, client_msg_id: &str, body: &str) -> NewMessage {
    NewMessage {
        to: Recipient::Group(GroupId(group)),
        ..direct(from, from, client_msg_id, body)
    }
}

/// `message`, sent at `sent_at` instead.
fn sent_at(message: NewMessage, sent_at: Timestamp) -> NewMessage {
    NewMessage { sent_at, ..message }
}

/// The direct conversation of users `a` and `b`.
fn dm(a: u64, b: u64) -> ConversationId {
    ConversationId::direct(UserId(a), UserId(b))
}

/// The conversation of group `group`.
fn group(group: u64) -> ConversationId {
    ConversationId::Group(GroupId(group))
}

/// Asserts that `stored` is `sent` as submitted, in the right conversation.
#[track_caller]
fn assert_stored_as_sent(stored: &StoredMessage, sent: &NewMessage) {
    let what = &sent.client_msg_id;
    assert_eq!(
        stored.conversation,
        sent.conversation(),
        "{what}: conversation"
    );
    assert_eq!(stored.sender, sent.sender, "{what}: sender");
    assert_eq!(stored.to, sent.to, "{what}: recipient");
    assert_eq!(
        stored.client_msg_id, sent.client_msg_id,
        "{what}: client_msg_id"
    );
    assert_eq!(stored.body, sent.body, "{what}: body");
    assert_eq!(stored.sent_at, sent.sent_at, "{what}: sent_at");
}

/// Appends `message`, which must be new, and checks it was stored as sent.
async fn append(store: &dyn MessageStore, message: NewMessage) -> StoredMessage {
    let what = format!("append({:?})", message.client_msg_id);
    let appended = store.append(message.clone()).await.must(&what);
    assert!(
        !appended.duplicate,
        "{what}: a first append is no duplicate"
    );
    assert_stored_as_sent(&appended.message, &message);
    appended.message
}

/// Appends `messages` one after the other.
async fn append_all(store: &dyn MessageStore, messages: Vec<NewMessage>) -> Vec<StoredMessage> {
    let mut stored = Vec::with_capacity(messages.len());
    for message in messages {
        stored.push(append(store, message).await);
    }
    stored
}

/// `n` messages alternating between users 1 and 2 (user 1 first), with client ids `<tag>-<i>`.
fn chat(tag: &str, n: usize) -> Vec<NewMessage> {
    (0..n)
        .map(|i| {
            let (from, to) = if i % 2 == 0 { (1, 2) } else { (2, 1) };
            direct(
                from,
                to,
                &format!("{tag}-{i}"),
                &format!("message {i} of {tag}"),
            )
        })
        .collect()
}

/// The sequence numbers of `messages`, in order.
fn seqs(messages: &[StoredMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq.0).collect()
}

/// The ids of `messages`, in order.
fn ids(messages: &[StoredMessage]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

/// The ids of `messages`, as a set, failing if one appears twice.
#[track_caller]
fn id_set(what: &str, messages: &[StoredMessage]) -> HashSet<MessageId> {
    let set: HashSet<MessageId> = messages.iter().map(|m| m.id).collect();
    assert_eq!(set.len(), messages.len(), "{what}: a message appears twice");
    set
}

/// Asserts that within each conversation, `messages` come in strictly increasing sequence order.
#[track_caller]
fn assert_in_order_per_conversation(what: &str, messages: &[StoredMessage]) {
    let mut last: HashMap<ConversationId, Seq> = HashMap::new();
    for m in messages {
        if let Some(before) = last.insert(m.conversation, m.seq) {
            assert!(
                before < m.seq,
                "{what}: in {}, seq {} comes after seq {before}",
                m.conversation,
                m.seq
            );
        }
    }
}

/// One history query, checked for the rules every answer obeys: at most `limit` messages, all
/// of the conversation, in strictly ascending order.
async fn history(
    store: &dyn MessageStore,
    conversation: ConversationId,
    query: HistoryQuery,
) -> Vec<StoredMessage> {
    let what = format!("history({conversation}, {query:?})");
    let page = store.history(conversation, query).await.must(&what);
    assert!(
        page.len() <= query.limit as usize,
        "{what}: {} messages, more than the limit",
        page.len()
    );
    assert!(
        page.iter().all(|m| m.conversation == conversation),
        "{what}: a message of another conversation"
    );
    assert!(
        page.windows(2).all(|w| w[0].seq < w[1].seq),
        "{what}: not in ascending order: {:?}",
        seqs(&page)
    );
    page
}

/// A conversation's whole history, paged forwards 7 at a time.
async fn whole_history(
    store: &dyn MessageStore,
    conversation: ConversationId,
) -> Vec<StoredMessage> {
    let mut all = Vec::new();
    let mut after = Seq(0);
    for _ in 0..MAX_PAGES {
        let page = history(store, conversation, HistoryQuery::after(after, 7)).await;
        let Some(last) = page.last() else {
            return all;
        };
        after = last.seq;
        all.extend(page);
    }
    panic!("history({conversation}) did not end within {MAX_PAGES} pages");
}

/// Every message pending for `user` with `groups`, walked through pages of `limit`.
async fn all_pending(
    store: &dyn MessageStore,
    user: u64,
    groups: &[GroupId],
    limit: u32,
) -> Vec<StoredMessage> {
    let what = format!("pending(user {user}, groups {groups:?}, limit {limit})");
    let pending = all_pages(&what, limit, |cursor| async move {
        store
            .pending(UserId(user), groups, cursor.as_ref(), limit)
            .await
    })
    .await;
    assert!(
        pending.iter().all(|m| m.sender != UserId(user)),
        "{what}: holds the user's own message"
    );
    assert_in_order_per_conversation(&what, &pending);
    pending
}

/// Every search match for `user`, walked through pages of `limit`.
async fn search_all(
    store: &dyn MessageStore,
    user: u64,
    groups: &[GroupId],
    query: &str,
    limit: u32,
) -> Vec<StoredMessage> {
    let what = format!("search(user {user}, groups {groups:?}, {query:?}, limit {limit})");
    all_pages(&what, limit, |cursor| async move {
        store
            .search(UserId(user), groups, query, cursor.as_ref(), limit)
            .await
    })
    .await
}

/// The messages `expected` picks from `all`, newest (latest appended, latest sent) first.
fn newest_first(all: &[StoredMessage], expected: &[usize]) -> Vec<MessageId> {
    let mut picked: Vec<&StoredMessage> = expected.iter().map(|&i| &all[i]).collect();
    picked.sort_by_key(|m| std::cmp::Reverse(m.sent_at));
    picked.iter().map(|m| m.id).collect()
}

/// A time an hour from now, for schedules: a store must go by the `now` it is handed, so due
/// times in the real future keep the cases independent of the machine's clock.
fn later() -> Timestamp {
    Timestamp::now().plus(Duration::from_secs(3600))
}

/// Claims due entries, failing the case if the store does.
async fn claim(
    store: &dyn MessageStore,
    now: Timestamp,
    claim_for: Duration,
    limit: u32,
) -> Vec<ScheduledMessage> {
    store.claim_due(now, claim_for, limit).await.must(&format!(
        "claim_due(now {now}, for {claim_for:?}, limit {limit})"
    ))
}

/// Schedules `message` for `deliver_at` and checks the entry holds it as given.
async fn schedule(
    store: &dyn MessageStore,
    message: NewMessage,
    deliver_at: Timestamp,
) -> ScheduledMessage {
    let what = format!("schedule({:?})", message.client_msg_id);
    let scheduled = store
        .schedule(message.clone(), deliver_at)
        .await
        .must(&what);
    assert!(
        !scheduled.duplicate,
        "{what}: a first schedule is no duplicate"
    );
    let entry = scheduled.entry;
    assert_eq!(
        entry.message, message,
        "{what}: the entry keeps the message"
    );
    assert_eq!(
        entry.deliver_at, deliver_at,
        "{what}: the entry keeps the due time"
    );
    entry
}

/// The ids of schedule `entries`, sorted.
fn entry_ids(entries: &[ScheduledMessage]) -> Vec<ScheduledId> {
    let mut ids: Vec<ScheduledId> = entries.iter().map(|e| e.id).collect();
    ids.sort();
    ids
}

/// Messages between two users get sequence 1, 2, 3 whichever of them sends, all in the one
/// direct conversation, stored as sent, and `last_seq` is 3 from either side.
pub async fn append_numbers_a_direct_conversation_1_2_3_from_both_sides(h: Messages) {
    let store = h.store().await;
    let stored = append_all(
        &*store,
        vec![
            direct(1, 2, "a-1", "hello"),
            direct(2, 1, "b-1", "hi"),
            direct(1, 2, "a-2", "how are you?"),
        ],
    )
    .await;

    assert_eq!(seqs(&stored), [1, 2, 3], "sequences in append order");
    assert!(
        stored.iter().all(|m| m.conversation == dm(1, 2)),
        "both directions are one conversation"
    );
    for conversation in [dm(1, 2), dm(2, 1)] {
        let last = store.last_seq(conversation).await.must("last_seq");
        assert_eq!(last, Seq(3), "last_seq({conversation})");
    }
    let latest = history(&*store, dm(2, 1), HistoryQuery::latest(10)).await;
    assert_eq!(latest, stored, "history holds exactly what append returned");
}

/// Each conversation counts from 1 on its own, and message ids are unique across them.
pub async fn sequences_are_per_conversation_and_message_ids_unique(h: Messages) {
    let store = h.store().await;
    let stored = append_all(
        &*store,
        vec![
            direct(1, 2, "m1", "to 2"),
            direct(1, 3, "m2", "to 3"),
            to_group(1, 7, "m3", "to group 7"),
            direct(2, 1, "m4", "from 2"),
            to_group(2, 7, "m5", "to group 7 from 2"),
            to_group(3, 7, "m6", "to group 7 from 3"),
            direct(3, 1, "m7", "from 3"),
        ],
    )
    .await;

    assert_eq!(
        seqs(&stored),
        [1, 1, 1, 2, 2, 3, 2],
        "sequences per conversation"
    );
    id_set("message ids", &stored);
    for (conversation, last) in [(dm(1, 2), 2), (dm(1, 3), 2), (group(7), 3), (dm(2, 3), 0)] {
        let got = store.last_seq(conversation).await.must("last_seq");
        assert_eq!(got, Seq(last), "last_seq({conversation})");
    }
}

/// [`MessageStore::append_all`] stores a batch as appends one after another would: in order per
/// conversation, a retry inside the batch is a duplicate of the earlier message, and an invalid
/// message fails alone.
pub async fn a_batch_is_appended_in_order_each_message_with_its_own_result(h: Messages) {
    let store = h.store().await;
    let before = append(&*store, direct(1, 2, "before", "first, alone")).await;
    let batch = vec![
        direct(1, 2, "b-1", "one"),
        direct(2, 1, "b-2", "two"),
        direct(1, 3, "b-3", "another conversation"),
        direct(1, 2, "", "an empty client_msg_id"),
        direct(1, 2, "b-1", "a retry inside the batch"),
        direct(1, 2, "b-4", "three"),
    ];
    let results = store.append_all(batch.clone()).await;
    assert_eq!(results.len(), batch.len(), "one result per message");
    match &results[3] {
        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}"),
        Ok(appended) => panic!("an empty client_msg_id was stored: {appended:?}"),
    }
    let stored: Vec<(u64, bool)> = results
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(i, result)| match result {
            Ok(appended) => (appended.message.seq.0, appended.duplicate),
            Err(e) => panic!("message {i} of the batch failed: {e}"),
        })
        .collect();
    assert_eq!(
        stored,
        [(2, false), (3, false), (1, false), (2, true), (4, false)],
        "(seq, duplicate) per message, after the message appended before the batch"
    );
    if let Ok(first) = &results[0]
        && let Ok(retry) = &results[4]
    {
        assert_eq!(
            retry.message, first.message,
            "the retry answers the first message"
        );
    }
    for (result, sent) in results.iter().zip(&batch) {
        if let Ok(appended) = result
            && !appended.duplicate
        {
            assert_stored_as_sent(&appended.message, sent);
        }
    }
    let bodies: Vec<String> = whole_history(&*store, dm(1, 2))
        .await
        .into_iter()
        .map(|message| message.body)
        .collect();
    assert_eq!(bodies, [before.body.as_str(), "one", "two", "three"]);
}

/// A retry with the same sender and `client_msg_id` stores nothing and returns the first
/// message (id, sequence, body) with `duplicate: true`, even with a different body.
pub async fn append_with_a_known_client_msg_id_returns_the_first_result(h: Messages) {
    let store = h.store().await;
    let first = append(&*store, direct(1, 2, "retry-me", "the original")).await;

    for body in ["the original", "an edited body"] {
        let retry = store
            .append(direct(1, 2, "retry-me", body))
            .await
            .must("append again with the same client_msg_id");
        assert!(retry.duplicate, "a retry with body {body:?} is a duplicate");
        assert_eq!(retry.message, first, "a retry returns the first message");
    }
    let last = store.last_seq(dm(1, 2)).await.must("last_seq");
    assert_eq!(last, Seq(1), "retries store nothing");
    let next = append(&*store, direct(1, 2, "after-retry", "next")).await;
    assert_eq!(next.seq, Seq(2), "retries use up no sequence number");
    let all = whole_history(&*store, dm(1, 2)).await;
    assert_eq!(all, vec![first, next], "history holds each message once");
}

/// The idempotency key is the sender's: reusing it for another recipient stores nothing in the
/// other conversation (it answers the first message as a duplicate, or `Conflict`).
pub async fn a_known_client_msg_id_to_another_recipient_stores_nothing(h: Messages) {
    let store = h.store().await;
    let first = append(&*store, direct(1, 2, "once", "to user 2")).await;

    match store.append(direct(1, 3, "once", "to user 3")).await {
        Ok(retry) => {
            assert!(
                retry.duplicate,
                "the key was used: the append is a duplicate"
            );
            assert_eq!(
                retry.message, first,
                "a duplicate answers the first message"
            );
        }
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::Conflict,
            "reusing the key failed with {e}"
        ),
    }
    let other = store.last_seq(dm(1, 3)).await.must("last_seq");
    assert_eq!(
        other,
        Seq(0),
        "nothing was stored in the other conversation"
    );
}

/// Another sender's message with the same `client_msg_id` is a message of its own.
pub async fn the_same_client_msg_id_from_another_sender_is_a_new_message(h: Messages) {
    let store = h.store().await;
    let mine = append(&*store, direct(1, 2, "shared-key", "from 1")).await;
    let theirs = append(&*store, direct(2, 1, "shared-key", "from 2")).await;

    assert_ne!(mine.id, theirs.id, "two senders, two messages");
    assert_eq!(seqs(&[mine, theirs]), [1, 2]);
}

/// A `client_msg_id` that is empty or longer than [`NewMessage::MAX_CLIENT_MSG_ID_LEN`] bytes
/// (not characters) is `InvalidInput` and stores nothing; the longest allowed one is stored.
pub async fn append_rejects_an_empty_or_too_long_client_msg_id(h: Messages) {
    let store = h.store().await;
    let max = NewMessage::MAX_CLIENT_MSG_ID_LEN;
    let too_long_ascii = "x".repeat(max + 1);
    // Fewer characters than the limit, but more bytes.
    let too_long_bytes = "é".repeat(max / 2 + 1);
    for bad in [
        "",
        too_long_ascii.as_str(),
        too_long_bytes.as_str(),
        "nul\0inside",
    ] {
        assert_kind(
            store.append(direct(1, 2, bad, "rejected")).await,
            ErrorKind::InvalidInput,
            &format!("append with a client_msg_id of {} bytes", bad.len()),
        );
    }
    assert_kind(
        store.append(direct(1, 2, "fine", "a \0 in the body")).await,
        ErrorKind::InvalidInput,
        "append with a NUL in the body",
    );
    let last = store.last_seq(dm(1, 2)).await.must("last_seq");
    assert_eq!(last, Seq(0), "rejected messages store nothing");

    let longest = append(&*store, direct(1, 2, &"x".repeat(max), "accepted")).await;
    assert_eq!(
        longest.seq,
        Seq(1),
        "a client_msg_id of exactly the limit is accepted"
    );
}

/// 20 tasks appending 10 messages each to one conversation get sequences exactly 1..=200,
/// each task's increasing, with 200 distinct ids, and history holds all 200.
pub async fn concurrent_appends_get_gap_free_increasing_sequences(h: Messages) {
    let store = h.store().await;
    let tasks: Vec<_> = (0..20u64)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let (from, to) = if task % 2 == 0 { (1, 2) } else { (2, 1) };
                let mut mine = Vec::new();
                for i in 0..10 {
                    let message = direct(from, to, &format!("t{task}-{i}"), &format!("{task}/{i}"));
                    mine.push(append(&*store, message).await);
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        let mine = join_task(task).await;
        assert!(
            mine.windows(2).all(|w| w[0].seq < w[1].seq),
            "one task's appends got decreasing sequences: {:?}",
            seqs(&mine)
        );
        all.extend(mine);
    }

    let mut got = seqs(&all);
    got.sort();
    assert_eq!(
        got,
        (1..=200).collect::<Vec<_>>(),
        "sequences are exactly 1..=200"
    );
    id_set("200 concurrent appends", &all);
    let last = store.last_seq(dm(1, 2)).await.must("last_seq");
    assert_eq!(last, Seq(200));

    let stored = whole_history(&*store, dm(1, 2)).await;
    assert_eq!(
        seqs(&stored),
        (1..=200).collect::<Vec<_>>(),
        "history holds 1..=200"
    );
    let appended: HashMap<MessageId, &StoredMessage> = all.iter().map(|m| (m.id, m)).collect();
    for m in &stored {
        assert_eq!(
            appended.get(&m.id),
            Some(&m),
            "history holds what append returned"
        );
    }
}

/// History answers all four query shapes (latest, after, before, both bounds) with the right
/// slice, in ascending order.
pub async fn history_answers_every_query_shape_in_ascending_order(h: Messages) {
    let store = h.store().await;
    let stored = append_all(&*store, chat("shape", 10)).await;
    let c = dm(1, 2);
    let between = |after: u64, before: u64, limit: u32| HistoryQuery {
        before: Some(Seq(before)),
        after: Some(Seq(after)),
        limit,
    };

    let shapes: [(HistoryQuery, &[u64]); 15] = [
        (HistoryQuery::latest(3), &[8, 9, 10]),
        (HistoryQuery::latest(100), &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
        (HistoryQuery::after(Seq(0), 3), &[1, 2, 3]),
        (HistoryQuery::after(Seq(2), 3), &[3, 4, 5]),
        (HistoryQuery::after(Seq(8), 5), &[9, 10]),
        (HistoryQuery::after(Seq(10), 5), &[]),
        (HistoryQuery::before(Seq(5), 3), &[2, 3, 4]),
        (HistoryQuery::before(Seq(3), 5), &[1, 2]),
        (HistoryQuery::before(Seq(1), 5), &[]),
        (HistoryQuery::before(Seq(50), 3), &[8, 9, 10]),
        (between(2, 9, 3), &[3, 4, 5]),
        (between(2, 5, 10), &[3, 4]),
        (between(0, 11, 4), &[1, 2, 3, 4]),
        (between(4, 5, 10), &[]),
        (between(6, 3, 10), &[]),
    ];
    for (query, expected) in shapes {
        let page = history(&*store, c, query).await;
        assert_eq!(seqs(&page), expected, "history({query:?})");
    }
    let middle = history(&*store, c, between(3, 7, 10)).await;
    assert_eq!(middle, stored[3..6], "history returns the stored messages");
}

/// Paging backwards from the latest message, and forwards from the start, through 25 messages
/// 7 at a time visits each exactly once.
pub async fn history_pages_backwards_and_forwards_visit_each_message_once(h: Messages) {
    let store = h.store().await;
    let stored = append_all(&*store, chat("paging", 25)).await;
    let c = dm(1, 2);

    let mut backwards: Vec<StoredMessage> = Vec::new();
    let mut page = history(&*store, c, HistoryQuery::latest(7)).await;
    for _ in 0..=25 {
        let Some(oldest) = page.first().map(|m| m.seq) else {
            break;
        };
        page.append(&mut backwards);
        backwards = page;
        page = history(&*store, c, HistoryQuery::before(oldest, 7)).await;
    }
    assert_eq!(
        backwards, stored,
        "paging backwards visits each message once"
    );

    let forwards = whole_history(&*store, c).await;
    assert_eq!(forwards, stored, "paging forwards visits each message once");
}

/// A page of zero messages is `InvalidInput`, in history and in pending alike.
pub async fn a_limit_of_zero_is_invalid_input(h: Messages) {
    let store = h.store().await;
    append_all(&*store, chat("zero", 3)).await;
    let c = dm(1, 2);
    let both = HistoryQuery {
        before: Some(Seq(3)),
        after: Some(Seq(0)),
        limit: 0,
    };
    for query in [
        HistoryQuery::latest(0),
        HistoryQuery::after(Seq(0), 0),
        HistoryQuery::before(Seq(3), 0),
        both,
    ] {
        assert_kind(
            store.history(c, query).await,
            ErrorKind::InvalidInput,
            &format!("history({query:?})"),
        );
    }
    assert_kind(
        store.pending(UserId(2), &[], None, 0).await,
        ErrorKind::InvalidInput,
        "pending with limit 0",
    );
}

/// A conversation nobody wrote in has `last_seq` 0, no history, cursors at 0 and nothing
/// pending, even when other conversations have messages.
pub async fn an_empty_conversation_has_last_seq_zero_and_no_history(h: Messages) {
    let store = h.store().await;
    append(&*store, direct(1, 2, "elsewhere", "not in the empty ones")).await;

    for conversation in [dm(5, 6), group(9)] {
        let last = store.last_seq(conversation).await.must("last_seq");
        assert_eq!(last, Seq(0), "last_seq({conversation})");
        let page = history(&*store, conversation, HistoryQuery::latest(10)).await;
        assert!(
            page.is_empty(),
            "history({conversation}) of an empty conversation"
        );
        let cursor = store
            .delivered_up_to(UserId(5), conversation)
            .await
            .must("delivered_up_to");
        assert_eq!(cursor, Seq(0), "delivered_up_to(5, {conversation})");
    }
    let pending = all_pending(&*store, 5, &[GroupId(9)], 10).await;
    assert!(
        pending.is_empty(),
        "nothing is pending for user 5: {pending:?}"
    );
}

/// `pending` lists the direct messages addressed to the user, per conversation in sequence
/// order, and neither the user's own messages nor other people's conversations.
pub async fn pending_lists_direct_messages_to_the_user_in_sequence_order(h: Messages) {
    let store = h.store().await;
    let m = append_all(
        &*store,
        vec![
            direct(1, 2, "a", "1 to 2"),
            direct(2, 1, "b", "2 to 1"),
            direct(1, 2, "c", "1 to 2 again"),
            direct(3, 2, "d", "3 to 2"),
            direct(1, 3, "e", "1 to 3"),
        ],
    )
    .await;

    let for_two = all_pending(&*store, 2, &[], 10).await;
    assert_eq!(
        id_set("pending(2)", &for_two),
        ids(&[m[0].clone(), m[2].clone(), m[3].clone()])
            .into_iter()
            .collect::<HashSet<_>>(),
        "user 2 has the messages from 1 and 3, not their own"
    );
    let from_one: Vec<&StoredMessage> = for_two
        .iter()
        .filter(|x| x.conversation == dm(1, 2))
        .collect();
    assert_eq!(
        from_one,
        [&m[0], &m[2]],
        "in sequence order within the conversation"
    );
    let for_one = all_pending(&*store, 1, &[], 10).await;
    assert_eq!(
        ids(&for_one),
        [m[1].id],
        "user 1 has only the message from 2"
    );
    let for_three = all_pending(&*store, 3, &[], 10).await;
    assert_eq!(
        ids(&for_three),
        [m[4].id],
        "user 3 has only the message from 1"
    );
    let for_four = all_pending(&*store, 4, &[], 10).await;
    assert!(
        for_four.is_empty(),
        "a stranger has nothing pending: {for_four:?}"
    );
}

/// `ack` moves the user's cursor to the given sequence and `pending` drops what it covers; the
/// sender's cursor is their own; a later message is pending again.
pub async fn ack_advances_the_cursor_and_shrinks_pending(h: Messages) {
    let store = h.store().await;
    let m = append_all(
        &*store,
        vec![
            direct(1, 2, "a", "one"),
            direct(1, 2, "b", "two"),
            direct(1, 2, "c", "three"),
        ],
    )
    .await;
    let c = dm(1, 2);
    let cursor = |user: u64| {
        let store = store.clone();
        async move {
            store
                .delivered_up_to(UserId(user), c)
                .await
                .must("delivered_up_to")
        }
    };

    assert_eq!(cursor(2).await, Seq(0), "no ack yet");
    store.ack(UserId(2), c, m[1].seq).await.must("ack up to 2");
    assert_eq!(cursor(2).await, Seq(2), "the cursor is where ack put it");
    assert_eq!(
        all_pending(&*store, 2, &[], 10).await,
        m[2..],
        "only the third is pending"
    );

    store.ack(UserId(2), c, m[2].seq).await.must("ack up to 3");
    assert_eq!(cursor(2).await, Seq(3));
    let pending = all_pending(&*store, 2, &[], 10).await;
    assert!(
        pending.is_empty(),
        "everything is acknowledged: {pending:?}"
    );
    assert_eq!(
        cursor(1).await,
        Seq(0),
        "the other user's cursor did not move"
    );

    let fourth = append(&*store, direct(1, 2, "d", "four")).await;
    assert_eq!(
        all_pending(&*store, 2, &[], 10).await,
        [fourth],
        "a new message is pending"
    );
}

/// Acknowledging a sequence at or below the cursor succeeds and leaves the cursor where it is.
pub async fn ack_never_moves_the_cursor_back(h: Messages) {
    let store = h.store().await;
    let m = append_all(&*store, chat("back", 6)).await;
    let c = dm(1, 2);

    store.ack(UserId(2), c, Seq(5)).await.must("ack up to 5");
    for older in [2, 5, 0] {
        store
            .ack(UserId(2), c, Seq(older))
            .await
            .must("ack an older sequence");
        let cursor = store
            .delivered_up_to(UserId(2), c)
            .await
            .must("delivered_up_to");
        assert_eq!(cursor, Seq(5), "ack({older}) after ack(5) moved the cursor");
    }
    let pending = all_pending(&*store, 2, &[], 10).await;
    assert!(
        pending.is_empty(),
        "user 2's messages are all at or below 5: {pending:?}"
    );
    let for_one = all_pending(&*store, 1, &[], 10).await;
    assert_eq!(
        for_one,
        [m[1].clone(), m[3].clone(), m[5].clone()],
        "user 1 acked nothing"
    );
}

/// Acknowledging past the conversation's last sequence is `InvalidInput` and moves nothing.
pub async fn ack_beyond_the_last_sequence_is_invalid_input(h: Messages) {
    let store = h.store().await;
    let m = append_all(
        &*store,
        vec![direct(1, 2, "a", "one"), direct(1, 2, "b", "two")],
    )
    .await;
    let c = dm(1, 2);

    assert_kind(
        store.ack(UserId(2), c, Seq(3)).await,
        ErrorKind::InvalidInput,
        "ack beyond last_seq",
    );
    let cursor = store
        .delivered_up_to(UserId(2), c)
        .await
        .must("delivered_up_to");
    assert_eq!(cursor, Seq(0), "a rejected ack moves nothing");
    assert_eq!(
        all_pending(&*store, 2, &[], 10).await,
        m,
        "both are still pending"
    );
    for empty in [dm(2, 9), group(7)] {
        assert_kind(
            store.ack(UserId(2), empty, Seq(1)).await,
            ErrorKind::InvalidInput,
            &format!("ack(1) in the empty {empty}"),
        );
    }
}

/// A group message is pending for whoever names its group, never for its sender, and for
/// nobody who does not name the group.
pub async fn group_messages_are_pending_only_in_named_groups_and_never_for_their_sender(
    h: Messages,
) {
    let store = h.store().await;
    let m = append_all(
        &*store,
        vec![
            to_group(1, 10, "x", "1 in group 10"),
            to_group(2, 11, "y", "2 in group 11"),
            to_group(3, 10, "z", "3 in group 10"),
        ],
    )
    .await;
    let (x, y, z) = (&m[0], &m[1], &m[2]);
    let (g10, g11) = (GroupId(10), GroupId(11));
    let pending_ids = |user: u64, groups: Vec<GroupId>| {
        let store = store.clone();
        async move {
            let pending = all_pending(&*store, user, &groups, 10).await;
            id_set(&format!("pending({user}, {groups:?})"), &pending)
        }
    };
    let set = |messages: &[&StoredMessage]| messages.iter().map(|m| m.id).collect::<HashSet<_>>();

    assert_eq!(pending_ids(3, vec![g10]).await, set(&[x]), "user 3 sent z");
    assert_eq!(pending_ids(3, vec![g10, g11]).await, set(&[x, y]));
    assert_eq!(
        pending_ids(3, vec![]).await,
        set(&[]),
        "no group named, none pending"
    );
    assert_eq!(pending_ids(1, vec![g10]).await, set(&[z]), "user 1 sent x");
    assert_eq!(pending_ids(1, vec![g11]).await, set(&[y]));
    assert_eq!(pending_ids(4, vec![g10]).await, set(&[x, z]));
    assert_eq!(
        pending_ids(2, vec![g10, g11]).await,
        set(&[x, z]),
        "user 2 sent y"
    );
    assert_eq!(
        all_pending(&*store, 4, &[g10], 1).await,
        [x.clone(), z.clone()],
        "in sequence order"
    );
}

/// A new member whose cursor is set to the group's `last_seq` at joining (as the server does)
/// gets only the messages sent after.
pub async fn a_member_acked_at_join_gets_only_later_messages(h: Messages) {
    let store = h.store().await;
    append_all(
        &*store,
        (0..3)
            .map(|i| to_group(1, 20, &format!("old-{i}"), "before the join"))
            .collect(),
    )
    .await;
    let g = group(20);

    let at_join = store.last_seq(g).await.must("last_seq");
    assert_eq!(at_join, Seq(3));
    store.ack(UserId(4), g, at_join).await.must("ack at join");
    let after = append(&*store, to_group(1, 20, "new", "after the join")).await;

    let pending = all_pending(&*store, 4, &[GroupId(20)], 10).await;
    assert_eq!(
        pending,
        [after],
        "only the message after the join is pending"
    );
}

/// Walking `pending` in small pages returns each pending message exactly once, per
/// conversation in sequence order.
pub async fn pending_pages_hold_each_pending_message_once(h: Messages) {
    let store = h.store().await;
    let mut expected = Vec::new();
    for i in 0..5 {
        expected.push(append(&*store, direct(1, 2, &format!("a{i}"), "from 1")).await);
        append(&*store, direct(2, 1, &format!("r{i}"), "reply")).await;
    }
    for i in 0..4 {
        expected.push(append(&*store, direct(3, 2, &format!("b{i}"), "from 3")).await);
        expected.push(append(&*store, to_group(5, 30, &format!("g{i}"), "group")).await);
        append(&*store, direct(1, 4, &format!("n{i}"), "not for 2")).await;
    }
    let expected = id_set("expected", &expected);

    for limit in [4, 1, 13, 100] {
        let pending = all_pending(&*store, 2, &[GroupId(30)], limit).await;
        assert_eq!(
            id_set(&format!("pending in pages of {limit}"), &pending),
            expected,
            "pages of {limit} hold every pending message once"
        );
    }
}

/// While messages are being appended, every walk through `pending` keeps each conversation in
/// sequence order and holds no message twice; once appends end, everything is pending.
pub async fn pending_stays_in_order_under_concurrent_appends(h: Messages) {
    let store = h.store().await;
    let writers: Vec<_> = [
        (1, Recipient::User(UserId(2))),
        (3, Recipient::User(UserId(2))),
        (4, Recipient::Group(GroupId(40))),
    ]
    .into_iter()
    .map(|(from, to)| {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..30 {
                let message = NewMessage {
                    to,
                    ..direct(from, from, &format!("w{from}-{i}"), "concurrent")
                };
                append(&*store, message).await;
            }
        })
    })
    .collect();
    let groups = [GroupId(40)];

    loop {
        let done = writers.iter().all(|w| w.is_finished());
        let walk = all_pending(&*store, 2, &groups, 4).await;
        id_set("a walk during appends", &walk);
        if done {
            break;
        }
        // An in-memory store answers without ever suspending; let the writers run.
        tokio::task::yield_now().await;
    }
    for writer in writers {
        join_task(writer).await;
    }

    let pending = all_pending(&*store, 2, &groups, 4).await;
    for conversation in [dm(1, 2), dm(3, 2), group(40)] {
        let theirs: Vec<StoredMessage> = pending
            .iter()
            .filter(|m| m.conversation == conversation)
            .cloned()
            .collect();
        assert_eq!(
            seqs(&theirs),
            (1..=30).collect::<Vec<_>>(),
            "everything in {conversation} is pending, in order"
        );
    }
    assert_eq!(pending.len(), 90, "nothing else is pending");
}

/// Search finds the messages containing every word of the query, in any letter case, newest
/// first.
pub async fn search_needs_every_word_in_any_letter_case_newest_first(h: Messages) {
    let store = h.store().await;
    let start = Timestamp::now();
    let bodies = [
        (1, 2, "The quick brown fox"),
        (1, 2, "quick thinking"),
        (2, 1, "BROWN QUICK bear"),
        (2, 1, "slow brown fox"),
    ];
    let mut m = Vec::new();
    for (i, (from, to, body)) in bodies.into_iter().enumerate() {
        let at = start.plus(Duration::from_secs(i as u64));
        m.push(
            append(
                &*store,
                sent_at(direct(from, to, &format!("s{i}"), body), at),
            )
            .await,
        );
    }

    let cases: [(u64, &str, &[usize]); 6] = [
        (1, "quick brown", &[0, 2]),
        (2, "Quick BROWN", &[0, 2]),
        (2, "QUICK", &[0, 1, 2]),
        (1, "fox slow", &[3]),
        (1, "quick purple", &[]),
        (3, "quick", &[]),
    ];
    for (user, query, expected) in cases {
        let found = search_all(&*store, user, &[], query, 10).await;
        assert_eq!(
            ids(&found),
            newest_first(&m, expected),
            "search(user {user}, {query:?})"
        );
    }
}

/// Search sees what the user sent (to anyone, also to a group left unnamed), their direct
/// conversations (whichever side sent) and the groups named, and nothing else: not a stranger's
/// direct conversation, not someone else's message in a group left unnamed.
pub async fn search_sees_only_what_the_user_sent_or_may_read(h: Messages) {
    let store = h.store().await;
    let start = Timestamp::now();
    let messages = [
        direct(2, 1, "v0", "zebra to me"),
        direct(3, 4, "v1", "zebra between strangers"),
        to_group(2, 50, "v2", "zebra in a named group"),
        to_group(2, 51, "v3", "zebra in an unnamed group"),
        direct(1, 5, "v4", "Zebra I sent directly"),
        to_group(1, 52, "v5", "zebra I sent to a group not named"),
    ];
    let mut m = Vec::new();
    for (i, message) in messages.into_iter().enumerate() {
        let at = start.plus(Duration::from_secs(i as u64));
        m.push(append(&*store, sent_at(message, at)).await);
    }

    let found = search_all(&*store, 1, &[GroupId(50)], "zebra", 10).await;
    assert_eq!(
        ids(&found),
        newest_first(&m, &[0, 2, 4, 5]),
        "search(user 1, \"zebra\")"
    );
    let stranger = search_all(&*store, 6, &[], "zebra", 10).await;
    assert!(stranger.is_empty(), "user 6 may read nothing: {stranger:?}");
}

/// A walk through search results in small pages holds each match once, newest first.
pub async fn search_pages_hold_each_match_once_newest_first(h: Messages) {
    let store = h.store().await;
    let start = Timestamp::now();
    let mut m = Vec::new();
    let mut needles = Vec::new();
    for i in 0..17 {
        let at = start.plus(Duration::from_secs(i));
        let message = match i % 3 {
            0 => direct(1, 2, &format!("p{i}"), &format!("needle number {i}")),
            1 => to_group(3, 60, &format!("p{i}"), &format!("a needle in group {i}")),
            _ => direct(2, 1, &format!("p{i}"), &format!("hay {i}")),
        };
        if i % 3 != 2 {
            needles.push(m.len());
        }
        m.push(append(&*store, sent_at(message, at)).await);
    }

    let found = search_all(&*store, 1, &[GroupId(60)], "needle", 5).await;
    assert_eq!(
        ids(&found),
        newest_first(&m, &needles),
        "pages of 5, newest first"
    );
}

/// An empty query, a query with a NUL character, or a page of zero results, is
/// `InvalidInput`.
pub async fn search_with_an_empty_query_or_a_limit_of_zero_is_invalid_input(h: Messages) {
    let store = h.store().await;
    append(&*store, direct(1, 2, "a", "something to find")).await;
    assert_kind(
        store.search(UserId(1), &[], "", None, 10).await,
        ErrorKind::InvalidInput,
        "search with an empty query",
    );
    assert_kind(
        store.search(UserId(1), &[], "some\0thing", None, 10).await,
        ErrorKind::InvalidInput,
        "search with a NUL character",
    );
    assert_kind(
        store.search(UserId(1), &[], "something", None, 0).await,
        ErrorKind::InvalidInput,
        "search with limit 0",
    );
}

/// A backend that does not claim search says so with `Unsupported`.
pub async fn search_is_unsupported_when_not_claimed(h: Messages) {
    let store = h.store().await;
    append(&*store, direct(1, 2, "a", "something to find")).await;
    assert_kind(
        store.search(UserId(1), &[], "something", None, 10).await,
        ErrorKind::Unsupported,
        "search without the search capability",
    );
}

/// `delete_before` deletes every message sent strictly before the cutoff, in every
/// conversation, returns how many, and keeps the rest with their sequences.
pub async fn delete_before_removes_older_messages_and_counts_them(h: Messages) {
    let store = h.store().await;
    let now = Timestamp::now();
    let old = now.minus(Duration::from_secs(2 * 3600));
    let cutoff = now.minus(Duration::from_secs(3600));
    let mut kept = Vec::new();
    for i in 0..3 {
        append(
            &*store,
            sent_at(direct(1, 2, &format!("old{i}"), "old"), old),
        )
        .await;
    }
    kept.push(
        append(
            &*store,
            sent_at(direct(2, 1, "edge", "at the cutoff"), cutoff),
        )
        .await,
    );
    for i in 0..2 {
        kept.push(
            append(
                &*store,
                sent_at(direct(1, 2, &format!("new{i}"), "new"), now),
            )
            .await,
        );
    }
    append(&*store, sent_at(to_group(1, 70, "gold", "old"), old)).await;
    let group_kept = append(&*store, sent_at(to_group(1, 70, "gnew", "new"), now)).await;

    let deleted = store.delete_before(cutoff).await.must("delete_before");
    assert_eq!(
        deleted, 4,
        "three old direct messages and one old group message"
    );
    assert_eq!(
        whole_history(&*store, dm(1, 2)).await,
        kept,
        "the rest is kept as it was"
    );
    assert_eq!(whole_history(&*store, group(70)).await, [group_kept]);
    let last = store.last_seq(dm(1, 2)).await.must("last_seq");
    assert_eq!(last, Seq(6), "the last message is still the sixth");

    let again = store
        .delete_before(cutoff)
        .await
        .must("delete_before again");
    assert_eq!(again, 0, "nothing older is left");
}

/// After messages are deleted (even all of a conversation's), the next append continues after
/// the highest sequence ever assigned.
pub async fn appends_after_a_deletion_never_reuse_a_sequence(h: Messages) {
    let store = h.store().await;
    let old = Timestamp::now().minus(Duration::from_secs(2 * 3600));
    for i in 0..3 {
        append(
            &*store,
            sent_at(direct(1, 2, &format!("old{i}"), "old"), old),
        )
        .await;
    }
    let deleted = store
        .delete_before(Timestamp::now().minus(Duration::from_secs(3600)))
        .await
        .must("delete_before");
    assert_eq!(deleted, 3);
    let page = history(&*store, dm(1, 2), HistoryQuery::latest(10)).await;
    assert!(page.is_empty(), "the conversation is empty: {page:?}");

    let next = append(&*store, direct(2, 1, "after", "after the deletion")).await;
    assert_eq!(
        next.seq,
        Seq(4),
        "sequences continue after the deleted ones"
    );
    assert_eq!(whole_history(&*store, dm(1, 2)).await, [next]);
}

/// A backend that does not claim retention says so with `Unsupported`.
pub async fn delete_before_is_unsupported_when_not_claimed(h: Messages) {
    let store = h.store().await;
    append(&*store, direct(1, 2, "a", "kept")).await;
    assert_kind(
        store.delete_before(Timestamp::now()).await,
        ErrorKind::Unsupported,
        "delete_before without the retention capability",
    );
}

/// A scheduled message is kept aside (not appended) and `claim_due` hands it out only once
/// `now` reaches its due time, not before.
pub async fn claim_due_hands_out_an_entry_only_once_it_is_due(h: Messages) {
    let store = h.store().await;
    let due = later();
    let ten_minutes = Duration::from_secs(600);
    let first = schedule(&*store, direct(1, 2, "sched-a", "first"), due).await;
    let second = schedule(
        &*store,
        direct(1, 2, "sched-b", "second"),
        due.plus(ten_minutes),
    )
    .await;
    assert_ne!(first.id, second.id, "schedule entries get distinct ids");
    let last = store.last_seq(dm(1, 2)).await.must("last_seq");
    assert_eq!(last, Seq(0), "scheduling appends nothing");

    let hour = Duration::from_secs(3600);
    let early = claim(&*store, due.minus(Duration::from_secs(1)), hour, 10).await;
    assert!(early.is_empty(), "nothing is due a second early: {early:?}");
    assert_eq!(
        claim(&*store, due, hour, 10).await,
        [first],
        "due exactly at its time"
    );
    let later_on = claim(&*store, due.plus(ten_minutes), hour, 10).await;
    assert_eq!(
        later_on,
        [second],
        "the second is due ten minutes later; the first is claimed"
    );
    let none = claim(&*store, due.plus(ten_minutes), hour, 10).await;
    assert!(none.is_empty(), "both are claimed: {none:?}");
}

/// `claim_due` hands out at most `limit` entries per call, and the rest on later calls.
pub async fn claim_due_hands_out_at_most_limit_entries(h: Messages) {
    let store = h.store().await;
    let due = later();
    let mut entries = Vec::new();
    for i in 0..3 {
        entries.push(schedule(&*store, direct(1, 2, &format!("s{i}"), "later"), due).await);
    }
    let hour = Duration::from_secs(3600);

    let mut claimed = claim(&*store, due, hour, 2).await;
    assert_eq!(
        claimed.len(),
        2,
        "a limit of 2 hands out 2 of 3: {claimed:?}"
    );
    let rest = claim(&*store, due, hour, 2).await;
    assert_eq!(rest.len(), 1, "the third comes next: {rest:?}");
    claimed.extend(rest);
    assert_eq!(entry_ids(&claimed), entry_ids(&entries), "each entry once");
    assert!(
        claim(&*store, due, hour, 2).await.is_empty(),
        "all are claimed"
    );
}

/// A claimed entry is not handed out again while its claim lasts, and is handed out again once
/// `now` passes the claim's end (its claimer presumably died).
pub async fn a_claimed_entry_is_handed_out_again_only_after_the_claim_expires(h: Messages) {
    let store = h.store().await;
    let due = later();
    let entry = schedule(&*store, direct(1, 2, "sched", "later"), due).await;
    let claim_for = Duration::from_secs(30);

    assert_eq!(
        claim(&*store, due, claim_for, 10).await,
        std::slice::from_ref(&entry)
    );
    for within in [0, 29] {
        let now = due.plus(Duration::from_secs(within));
        let again = claim(&*store, now, claim_for, 10).await;
        assert!(
            again.is_empty(),
            "claimed {within} s ago for 30 s, handed out again: {again:?}"
        );
    }
    let expired = due.plus(Duration::from_secs(31));
    assert_eq!(
        claim(&*store, expired, claim_for, 10).await,
        [entry],
        "the claim expired, so the entry is handed out again"
    );
    let reclaimed = claim(&*store, expired, claim_for, 10).await;
    assert!(reclaimed.is_empty(), "the new claim holds: {reclaimed:?}");
}

/// `finish_scheduled` ends an entry for good (it is never handed out again); an unknown or
/// already finished id is `NotFound`.
pub async fn finish_scheduled_removes_the_entry_and_unknown_ids_are_not_found(h: Messages) {
    let store = h.store().await;
    let due = later();
    let done = schedule(&*store, direct(1, 2, "done", "delivered"), due).await;
    let open = schedule(&*store, direct(1, 2, "open", "not yet"), due).await;
    let claim_for = Duration::from_secs(30);
    let both = claim(&*store, due, claim_for, 10).await;
    assert_eq!(entry_ids(&both), entry_ids(&[done.clone(), open.clone()]));

    store
        .finish_scheduled(done.id)
        .await
        .must("finish_scheduled");
    let an_hour_on = due.plus(Duration::from_secs(3600));
    assert_eq!(
        claim(&*store, an_hour_on, claim_for, 10).await,
        std::slice::from_ref(&open),
        "after both claims expired, only the unfinished entry comes back"
    );
    assert_kind(
        store.finish_scheduled(done.id).await,
        ErrorKind::NotFound,
        "finish_scheduled twice",
    );
    let unknown = ScheduledId(done.id.0.max(open.id.0) + 1_000_000);
    assert_kind(
        store.finish_scheduled(unknown).await,
        ErrorKind::NotFound,
        "finish_scheduled of an unknown id",
    );
    store
        .finish_scheduled(open.id)
        .await
        .must("finish_scheduled");
    let none = claim(&*store, due.plus(Duration::from_secs(7200)), claim_for, 10).await;
    assert!(none.is_empty(), "every entry is finished: {none:?}");
}

/// Scheduling again with the same sender and `client_msg_id` (a retry after a lost
/// acknowledgement) keeps nothing new: it answers the first entry, whatever the new body or due
/// time say, and only one entry is ever handed out. Another sender's same id is another entry.
pub async fn scheduling_again_with_the_same_client_msg_id_answers_the_first_entry(h: Messages) {
    let store = h.store().await;
    let due = later();
    let first = schedule(&*store, direct(1, 2, "once", "first"), due).await;
    let retry = store
        .schedule(
            direct(1, 2, "once", "changed"),
            due.plus(Duration::from_secs(60)),
        )
        .await
        .must("schedule again");
    assert!(retry.duplicate, "the retry is a duplicate");
    assert_eq!(
        retry.entry, first,
        "the retry answers the first entry as it was"
    );
    let other_sender = schedule(&*store, direct(3, 2, "once", "mine"), due).await;
    assert_ne!(other_sender.id, first.id, "client_msg_id is per sender");
    let claimed = claim(&*store, due, Duration::from_secs(30), 10).await;
    assert_eq!(
        entry_ids(&claimed),
        entry_ids(&[first, other_sender]),
        "one entry per sender and client_msg_id"
    );
}

/// A retry that arrives after the scheduled message was delivered and its entry finished is
/// still recognised: it answers the first entry, and nothing is handed out again.
pub async fn a_retried_schedule_after_the_delivery_is_still_a_duplicate(h: Messages) {
    let store = h.store().await;
    let due = later();
    let entry = schedule(&*store, direct(1, 2, "late-retry", "hello"), due).await;
    let claim_for = Duration::from_secs(30);
    let claimed = claim(&*store, due, claim_for, 10).await;
    assert_eq!(claimed, std::slice::from_ref(&entry));
    store
        .finish_scheduled(entry.id)
        .await
        .must("finish_scheduled");
    let retry = store
        .schedule(direct(1, 2, "late-retry", "hello"), due)
        .await
        .must("schedule after delivery");
    assert!(retry.duplicate, "a retry after the delivery is a duplicate");
    assert_eq!(retry.entry.id, entry.id, "the same entry answers");
    let again = claim(&*store, due.plus(Duration::from_secs(3600)), claim_for, 10).await;
    assert!(again.is_empty(), "nothing is handed out twice: {again:?}");
}

/// Of concurrent schedules of one `client_msg_id`, exactly one keeps an entry; every other
/// answers that entry as a duplicate.
pub async fn concurrent_schedules_of_one_client_msg_id_keep_one_entry(h: Messages) {
    let store = h.store().await;
    let due = later();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .schedule(direct(1, 2, "racing", &format!("attempt {i}")), due)
                    .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(join_task(task).await.must("concurrent schedule"));
    }
    let firsts = results.iter().filter(|r| !r.duplicate).count();
    assert_eq!(firsts, 1, "exactly one schedule is the first");
    let ids: HashSet<ScheduledId> = results.iter().map(|r| r.entry.id).collect();
    assert_eq!(
        ids.len(),
        1,
        "every schedule answers the same entry: {ids:?}"
    );
    let claimed = claim(&*store, due, Duration::from_secs(30), 10).await;
    assert_eq!(claimed.len(), 1, "one entry is handed out: {claimed:?}");
}

/// A claimer that appended but died before finishing is replaced once its claim expires; the
/// second append of the same entry is a duplicate, so the message is stored once.
pub async fn a_reclaimed_entry_is_appended_only_once(h: Messages) {
    let store = h.store().await;
    let due = later();
    let entry = schedule(&*store, direct(1, 2, "sched-once", "hello later"), due).await;
    let claim_for = Duration::from_secs(30);

    let [claimed] = claim(&*store, due, claim_for, 10)
        .await
        .try_into()
        .unwrap_or_else(|got: Vec<ScheduledMessage>| panic!("expected the one entry, got {got:?}"));
    let first = append(&*store, claimed.message).await;
    let expired = due.plus(Duration::from_secs(31));
    let [reclaimed] = claim(&*store, expired, claim_for, 10)
        .await
        .try_into()
        .unwrap_or_else(|got: Vec<ScheduledMessage>| {
            panic!("expected the entry again, got {got:?}")
        });
    assert_eq!(reclaimed.id, entry.id);
    let again = store
        .append(reclaimed.message)
        .await
        .must("append the reclaimed entry");
    assert!(
        again.duplicate,
        "the second append of one entry is a duplicate"
    );
    assert_eq!(again.message, first);
    store
        .finish_scheduled(entry.id)
        .await
        .must("finish_scheduled");
    assert_eq!(
        whole_history(&*store, dm(1, 2)).await,
        [first],
        "stored once"
    );
}

/// Four tasks claiming from 30 due entries at once never get the same entry, and together get
/// them all.
pub async fn concurrent_claimers_never_get_the_same_entry(h: Messages) {
    let store = h.store().await;
    let due = later();
    let mut entries = Vec::new();
    for i in 0..30 {
        entries.push(schedule(&*store, direct(1, 2, &format!("c{i}"), "later"), due).await);
    }

    let claimers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for _ in 0..=30 {
                    let batch = claim(&*store, due, Duration::from_secs(3600), 3).await;
                    if batch.is_empty() {
                        break;
                    }
                    mine.extend(batch);
                }
                mine
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for claimer in claimers {
        claimed.extend(join_task(claimer).await);
    }

    let ids = entry_ids(&claimed);
    let distinct: HashSet<ScheduledId> = ids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "an entry was handed to two claimers: {ids:?}"
    );
    assert_eq!(
        ids,
        entry_ids(&entries),
        "together the claimers got every entry"
    );
}

/// Scheduling a message with a bad `client_msg_id` is `InvalidInput`, and so is claiming with
/// a limit of zero.
pub async fn schedule_rejects_bad_messages_and_claim_due_a_limit_of_zero(h: Messages) {
    let store = h.store().await;
    let due = later();
    let too_long = "x".repeat(NewMessage::MAX_CLIENT_MSG_ID_LEN + 1);
    for bad in ["", too_long.as_str()] {
        assert_kind(
            store.schedule(direct(1, 2, bad, "rejected"), due).await,
            ErrorKind::InvalidInput,
            &format!("schedule with a client_msg_id of {} bytes", bad.len()),
        );
    }
    assert!(
        claim(&*store, due, Duration::from_secs(30), 10)
            .await
            .is_empty(),
        "rejected messages are not scheduled"
    );
    schedule(&*store, direct(1, 2, "fine", "kept"), due).await;
    assert_kind(
        store.claim_due(due, Duration::from_secs(30), 0).await,
        ErrorKind::InvalidInput,
        "claim_due with limit 0",
    );
}

/// A backend that does not claim scheduling says so with `Unsupported` for every schedule
/// operation.
pub async fn scheduling_is_unsupported_when_not_claimed(h: Messages) {
    let store = h.store().await;
    let due = later();
    assert_kind(
        store.schedule(direct(1, 2, "sched", "later"), due).await,
        ErrorKind::Unsupported,
        "schedule",
    );
    assert_kind(
        store.claim_due(due, Duration::from_secs(30), 10).await,
        ErrorKind::Unsupported,
        "claim_due",
    );
    assert_kind(
        store.finish_scheduled(ScheduledId(1)).await,
        ErrorKind::Unsupported,
        "finish_scheduled",
    );
}
