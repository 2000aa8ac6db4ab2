//! Exactly-once for the application on top of at-least-once delivery, and what to acknowledge.
//!
//! The server re-sends every message not acknowledged before a reconnect, so the same message
//! can arrive twice. Per conversation the [`Tracker`] keeps the sequence numbers seen so far as
//! a short list of runs (`1..=40`, `42..=57`): a message is a duplicate exactly when its
//! sequence is in a run. In the common case there is one run, so memory does not grow with the
//! number of messages.
//!
//! Acknowledging is the delicate part: the server does not send acknowledged messages again, so
//! acknowledging past a message not received loses it. Gaps in the sequence numbers are normal
//! (the user's own messages, sent from here or elsewhere, are never delivered back; a group
//! member does not receive what was sent before they joined), and the protocol cannot tell them
//! from a message still in flight. The server settles it: on one connection it delivers each
//! conversation without holes (a live message that finds a missed one below it comes after the
//! missed one, read from the store; see `proto/README.md`). So everything below the highest
//! *delivered* sequence that is addressed to the user has arrived, and that is what the client
//! acknowledges, at once. Its own sends (from their `SendAck`s) move nothing: a message from
//! someone else can still be on its way below one of them.

use std::collections::HashMap;

/// Runs kept per conversation at most; beyond, the two lowest merge (the gap between them is then
/// taken as seen: only a very late duplicate could still fall into it).
const MAX_RUNS: usize = 64;

/// Whether a delivered message is new to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Not seen before: hand it to the application.
    Fresh,
    /// Seen before: drop it.
    Duplicate,
}

/// Per-conversation bookkeeping of seen sequences and acknowledgements.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    conversations: HashMap<String, Seen>,
}

/// What one conversation has seen.
#[derive(Debug, Default)]
struct Seen {
    /// Seen sequences: ascending, disjoint, never adjacent (adjacent runs merge).
    runs: Vec<Run>,
    /// The highest sequence delivered by the server (0: none).
    delivered: u64,
    /// The highest sequence acknowledged (0: none).
    acked: u64,
}

/// Consecutive seen sequences.
#[derive(Debug, Clone, Copy)]
struct Run {
    start: u64,
    end: u64,
}

impl Tracker {
    /// An empty tracker.
    pub(crate) fn new() -> Self {
        Tracker::default()
    }

    /// Records a message the server delivered (or said it cannot deliver); says whether the
    /// application has not seen it yet.
    ///
    /// Sequence 0 does not exist; such a message is passed on untracked rather than dropped.
    pub(crate) fn receive(&mut self, conversation: &str, seq: u64) -> Arrival {
        if seq == 0 {
            return Arrival::Fresh;
        }
        let seen = match self.conversations.get_mut(conversation) {
            Some(seen) => seen,
            None => self
                .conversations
                .entry(conversation.to_owned())
                .or_default(),
        };
        seen.delivered = seen.delivered.max(seq);
        if seen.insert(seq) {
            Arrival::Fresh
        } else {
            Arrival::Duplicate
        }
    }

    /// Records a message this client sent (from its `SendAck`). The server does not deliver it
    /// back, and it acknowledges nothing: another sender's message may still be on its way
    /// below it.
    pub(crate) fn own(&mut self, conversation: &str, seq: u64) {
        if seq == 0 {
            return;
        }
        match self.conversations.get_mut(conversation) {
            Some(seen) => seen,
            None => self
                .conversations
                .entry(conversation.to_owned())
                .or_default(),
        }
        .insert(seq);
    }

    /// The acknowledgements due now: each conversation whose highest delivered sequence moved
    /// past the last acknowledgement, with that sequence. They are recorded as sent.
    pub(crate) fn take_acks(&mut self) -> Vec<(String, u64)> {
        let mut acks = Vec::new();
        for (conversation, seen) in &mut self.conversations {
            if seen.delivered > seen.acked {
                seen.acked = seen.delivered;
                acks.push((conversation.clone(), seen.acked));
            }
        }
        acks.sort_unstable();
        acks
    }

    /// A new connection: the acknowledgements sent on the old one may have been lost with it,
    /// so each conversation's is due again.
    pub(crate) fn restart(&mut self) {
        for seen in self.conversations.values_mut() {
            seen.acked = 0;
        }
    }

    /// The highest sequence acknowledged in `conversation` (0: none).
    #[cfg(test)]
    fn acked(&self, conversation: &str) -> u64 {
        self.conversations.get(conversation).map_or(0, |s| s.acked)
    }

    /// How many runs `conversation` keeps.
    #[cfg(test)]
    fn runs(&self, conversation: &str) -> usize {
        self.conversations
            .get(conversation)
            .map_or(0, |s| s.runs.len())
    }
}

impl Seen {
    /// Adds `seq`; false if it was seen already.
    fn insert(&mut self, seq: u64) -> bool {
        // The first run that ends at or after `seq`: it holds `seq` or lies above it.
        let i = self.runs.partition_point(|run| run.end < seq);
        if self.runs.get(i).is_some_and(|run| run.start <= seq) {
            return false;
        }
        let joins_lower = i > 0 && self.runs[i - 1].end.checked_add(1) == Some(seq);
        let joins_upper = self
            .runs
            .get(i)
            .is_some_and(|run| seq.checked_add(1) == Some(run.start));
        match (joins_lower, joins_upper) {
            (true, true) => {
                self.runs[i - 1].end = self.runs[i].end;
                self.runs.remove(i);
            }
            (true, false) => self.runs[i - 1].end = seq,
            (false, true) => self.runs[i].start = seq,
            (false, false) => self.runs.insert(
                i,
                Run {
                    start: seq,
                    end: seq,
                },
            ),
        }
        if self.runs.len() > MAX_RUNS {
            self.runs[0].end = self.runs[1].end;
            self.runs.remove(1);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONV: &str = "d:1:2";

    fn receive_all(tracker: &mut Tracker, seqs: &[u64]) -> Vec<u64> {
        seqs.iter()
            .copied()
            .filter(|&seq| tracker.receive(CONV, seq) == Arrival::Fresh)
            .collect()
    }

    #[test]
    fn each_sequence_is_fresh_exactly_once() {
        let mut tracker = Tracker::new();
        let fresh = receive_all(&mut tracker, &[1, 2, 2, 4, 3, 1, 4, 5]);
        assert_eq!(fresh, vec![1, 2, 4, 3, 5]);
        assert_eq!(tracker.runs(CONV), 1, "1..=5 is one run");
    }

    #[test]
    fn conversations_are_independent() {
        let mut tracker = Tracker::new();
        assert_eq!(tracker.receive("g:1", 1), Arrival::Fresh);
        assert_eq!(tracker.receive("g:2", 1), Arrival::Fresh);
        assert_eq!(tracker.receive("g:1", 1), Arrival::Duplicate);
    }

    #[test]
    fn deliveries_are_acknowledged_up_to_the_highest_at_once_gaps_or_not() {
        let mut tracker = Tracker::new();
        receive_all(&mut tracker, &[1, 2, 5]);
        assert_eq!(tracker.take_acks(), vec![(CONV.to_owned(), 5)]);
        assert!(tracker.take_acks().is_empty(), "nothing new to acknowledge");
        assert_eq!(tracker.acked(CONV), 5);
    }

    #[test]
    fn own_messages_acknowledge_nothing_but_are_no_duplicates_of_deliveries() {
        let mut tracker = Tracker::new();
        receive_all(&mut tracker, &[1]);
        tracker.own(CONV, 3);
        assert_eq!(tracker.take_acks(), vec![(CONV.to_owned(), 1)]);
        // 2, from someone else, was still on its way below the own 3.
        assert_eq!(receive_all(&mut tracker, &[2]), vec![2]);
        assert_eq!(tracker.take_acks(), vec![(CONV.to_owned(), 2)]);
        assert_eq!(tracker.runs(CONV), 1, "1..=3");
    }

    #[test]
    fn a_reconnect_sends_the_last_acknowledgement_again() {
        let mut tracker = Tracker::new();
        receive_all(&mut tracker, &[1, 2]);
        assert_eq!(tracker.take_acks(), vec![(CONV.to_owned(), 2)]);
        tracker.restart();
        assert_eq!(tracker.take_acks(), vec![(CONV.to_owned(), 2)]);
    }

    #[test]
    fn memory_per_conversation_is_bounded() {
        let mut tracker = Tracker::new();
        for seq in (1..=10 * MAX_RUNS as u64).map(|n| n * 2) {
            tracker.receive(CONV, seq);
        }
        assert!(tracker.runs(CONV) <= MAX_RUNS);
    }
}
