//! Exactly-once for the application on top of at-least-once delivery, and what to acknowledge.
//!
//! The server re-sends every message not acknowledged before a reconnect, so the same message
//! can arrive twice; messages of one conversation can also arrive out of order (two senders on
//! two servers race, or a live message overtakes the post-login sync). Per conversation the
//! [`Tracker`] keeps the sequence numbers seen so far as a short list of runs (`1..=40`,
//! `42..=57`): a message is a duplicate exactly when its sequence is in a run. In the common case
//! there is one run, so memory does not grow with the number of messages.
//!
//! Acknowledging is the delicate part: the server does not send acknowledged messages again, so
//! acknowledging past a gap would lose the missing message if the connection dropped before it
//! arrived. But gaps are also normal and permanent: the server never delivers a user's own
//! messages back (own sends fill their gap from the `SendAck`, which carries the sequence, but
//! messages sent from another device or over HTTP do not), a group member does not receive what
//! was sent before they joined, and the "all" group reaches only who is online. The protocol
//! cannot say which gap is which, so a gap blocks acknowledgement until a message above it has
//! waited `settle_after` (a few seconds: delivery within a conversation is in order, so by then a
//! missing message is not coming). A settled gap is still remembered as not seen: if its message
//! arrives after all, the application gets it.
//!
//! The limitation: a message delayed in flight for longer than `settle_after` *and* a disconnect
//! before it arrives can lose it. Raising `ClientBuilder::gap_timeout` trades that risk against
//! later acknowledgements (which only cost re-sending, and dropping, more duplicates after a
//! reconnect).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Runs kept per conversation at most; beyond, the two lowest merge (the gap between them is then
/// taken as seen: only a very late message could still fall into it).
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
#[derive(Debug)]
pub(crate) struct Tracker {
    settle_after: Duration,
    conversations: HashMap<String, Seen>,
}

/// What one conversation has seen.
#[derive(Debug, Default)]
struct Seen {
    /// Seen sequences: ascending, disjoint, never adjacent (adjacent runs merge).
    runs: Vec<Run>,
    /// The highest sequence acknowledged (0: none).
    acked: u64,
}

/// Consecutive seen sequences, and since when the gap below them is known.
#[derive(Debug, Clone, Copy)]
struct Run {
    start: u64,
    end: u64,
    /// When a sequence above the gap below this run was first seen: the gap's age.
    since: Instant,
}

impl Tracker {
    /// A tracker that settles gaps after `settle_after`.
    pub(crate) fn new(settle_after: Duration) -> Self {
        Tracker {
            settle_after,
            conversations: HashMap::new(),
        }
    }

    /// Records a delivered message; says whether the application has not seen it yet.
    ///
    /// Sequence 0 does not exist; such a message is passed on untracked rather than dropped.
    pub(crate) fn receive(&mut self, conversation: &str, seq: u64, now: Instant) -> Arrival {
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
        if seen.insert(seq, now) {
            Arrival::Fresh
        } else {
            Arrival::Duplicate
        }
    }

    /// Records a message this client sent (from its `SendAck`): the server will not deliver it,
    /// so its sequence must not count as a gap.
    pub(crate) fn own(&mut self, conversation: &str, seq: u64, now: Instant) {
        self.receive(conversation, seq, now);
    }

    /// The acknowledgements due now: each conversation whose acknowledgeable sequence moved
    /// forward, with that sequence. They are recorded as sent.
    pub(crate) fn take_acks(&mut self, now: Instant) -> Vec<(String, u64)> {
        let mut acks = Vec::new();
        for (conversation, seen) in &mut self.conversations {
            let (point, _) = seen.ack_point(now, self.settle_after);
            if point > seen.acked {
                seen.acked = point;
                acks.push((conversation.clone(), point));
            }
        }
        acks.sort_unstable();
        acks
    }

    /// When the earliest gap that blocks an acknowledgement settles, if one does.
    pub(crate) fn next_settle(&self, now: Instant) -> Option<Instant> {
        self.conversations
            .values()
            .filter_map(|seen| seen.ack_point(now, self.settle_after).1)
            .min()
    }

    /// A new connection: the server re-sends everything unacknowledged, so every open gap gets a
    /// fresh `settle_after` to be filled by that sync.
    pub(crate) fn restart(&mut self, now: Instant) {
        for seen in self.conversations.values_mut() {
            let acked = seen.acked;
            for run in seen.runs.iter_mut().filter(|run| run.end > acked) {
                run.since = now;
            }
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
    fn insert(&mut self, seq: u64, now: Instant) -> bool {
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
            // The gap below keeps its age: it was open since the run above was seen.
            (false, true) => self.runs[i].start = seq,
            (false, false) => {
                // A message inside an old gap splits it; the part below is as old as the gap.
                let since = self.runs.get(i).map_or(now, |upper| upper.since);
                self.runs.insert(
                    i,
                    Run {
                        start: seq,
                        end: seq,
                        since,
                    },
                );
            }
        }
        if self.runs.len() > MAX_RUNS {
            self.runs[0].end = self.runs[1].end;
            self.runs.remove(1);
        }
        true
    }

    /// The highest sequence that may be acknowledged now, and when the gap that stops it there
    /// settles (if one does).
    fn ack_point(&self, now: Instant, settle_after: Duration) -> (u64, Option<Instant>) {
        let mut point = self.acked;
        for run in &self.runs {
            if run.end <= point {
                continue;
            }
            let gap_below = run.start > point.saturating_add(1);
            let settles_at = run.since + settle_after;
            if gap_below && now < settles_at {
                return (point, Some(settles_at));
            }
            point = run.end;
        }
        (point, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_secs(5);
    const CONV: &str = "d:1:2";

    fn tracker() -> Tracker {
        Tracker::new(SETTLE)
    }

    fn receive_all(tracker: &mut Tracker, seqs: &[u64], now: Instant) -> Vec<u64> {
        seqs.iter()
            .copied()
            .filter(|&seq| tracker.receive(CONV, seq, now) == Arrival::Fresh)
            .collect()
    }

    #[test]
    fn each_sequence_is_fresh_exactly_once() {
        let mut tracker = tracker();
        let now = Instant::now();
        let fresh = receive_all(&mut tracker, &[1, 2, 2, 4, 3, 1, 4, 5], now);
        assert_eq!(fresh, vec![1, 2, 4, 3, 5]);
        assert_eq!(tracker.runs(CONV), 1, "1..=5 is one run");
    }

    #[test]
    fn conversations_are_independent() {
        let mut tracker = tracker();
        let now = Instant::now();
        assert_eq!(tracker.receive("g:1", 1, now), Arrival::Fresh);
        assert_eq!(tracker.receive("g:2", 1, now), Arrival::Fresh);
        assert_eq!(tracker.receive("g:1", 1, now), Arrival::Duplicate);
    }

    #[test]
    fn contiguous_messages_are_acknowledged_up_to_the_highest() {
        let mut tracker = tracker();
        let now = Instant::now();
        receive_all(&mut tracker, &[1, 2, 3], now);
        assert_eq!(tracker.take_acks(now), vec![(CONV.to_owned(), 3)]);
        assert!(
            tracker.take_acks(now).is_empty(),
            "nothing new to acknowledge"
        );
    }

    #[test]
    fn a_gap_stops_the_acknowledgement_until_it_is_filled() {
        let mut tracker = tracker();
        let now = Instant::now();
        receive_all(&mut tracker, &[1, 2, 4, 5], now);
        assert_eq!(tracker.take_acks(now), vec![(CONV.to_owned(), 2)]);
        assert_eq!(tracker.next_settle(now), Some(now + SETTLE));
        receive_all(&mut tracker, &[3], now);
        assert_eq!(tracker.take_acks(now), vec![(CONV.to_owned(), 5)]);
        assert_eq!(tracker.next_settle(now), None);
    }

    #[test]
    fn a_gap_that_stays_open_settles_but_its_message_is_still_fresh_later() {
        let mut tracker = tracker();
        let t0 = Instant::now();
        receive_all(&mut tracker, &[1, 2, 4], t0);
        assert_eq!(
            tracker.take_acks(t0 + SETTLE / 2),
            vec![(CONV.to_owned(), 2)]
        );
        assert_eq!(tracker.take_acks(t0 + SETTLE), vec![(CONV.to_owned(), 4)]);
        assert_eq!(
            tracker.receive(CONV, 3, t0 + SETTLE * 2),
            Arrival::Fresh,
            "a settled gap is not a seen message"
        );
        assert_eq!(
            tracker.receive(CONV, 3, t0 + SETTLE * 2),
            Arrival::Duplicate
        );
    }

    #[test]
    fn the_first_message_of_a_conversation_above_one_waits_for_the_gap_below_it() {
        let mut tracker = tracker();
        let t0 = Instant::now();
        receive_all(&mut tracker, &[41, 42], t0);
        assert!(tracker.take_acks(t0).is_empty(), "41 may be overtaking 40");
        receive_all(&mut tracker, &[40], t0 + Duration::from_secs(1));
        assert!(tracker.take_acks(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(tracker.take_acks(t0 + SETTLE), vec![(CONV.to_owned(), 42)]);
    }

    #[test]
    fn own_messages_fill_gaps_at_once() {
        let mut tracker = tracker();
        let now = Instant::now();
        tracker.receive("g:5", 1, now);
        tracker.own("g:5", 2, now);
        tracker.receive("g:5", 3, now);
        assert_eq!(tracker.take_acks(now), vec![("g:5".to_owned(), 3)]);
    }

    #[test]
    fn a_message_inside_an_old_gap_keeps_the_gap_below_it_old() {
        let mut tracker = tracker();
        let t0 = Instant::now();
        receive_all(&mut tracker, &[1, 10], t0);
        receive_all(&mut tracker, &[5], t0 + SETTLE / 2);
        assert_eq!(
            tracker.take_acks(t0 + SETTLE),
            vec![(CONV.to_owned(), 10)],
            "the gaps 2..=4 and 6..=9 were both open since 10 arrived"
        );
    }

    #[test]
    fn a_reconnect_gives_open_gaps_a_fresh_settle_time() {
        let mut tracker = tracker();
        let t0 = Instant::now();
        receive_all(&mut tracker, &[1, 3], t0);
        assert_eq!(tracker.take_acks(t0), vec![(CONV.to_owned(), 1)]);
        let reconnected = t0 + SETTLE - Duration::from_secs(1);
        tracker.restart(reconnected);
        assert!(tracker.take_acks(t0 + SETTLE).is_empty());
        assert_eq!(
            tracker.take_acks(reconnected + SETTLE),
            vec![(CONV.to_owned(), 3)]
        );
        assert_eq!(tracker.acked(CONV), 3);
    }

    #[test]
    fn memory_per_conversation_is_bounded() {
        let mut tracker = tracker();
        let now = Instant::now();
        for seq in (1..10_000).step_by(2) {
            tracker.receive(CONV, seq, now);
        }
        assert!(tracker.runs(CONV) <= MAX_RUNS);
        assert_eq!(tracker.receive(CONV, 9_999, now), Arrival::Duplicate);
        assert_eq!(tracker.receive(CONV, 9_998, now), Arrival::Fresh);
    }

    #[test]
    fn acknowledgements_never_exceed_what_was_seen() {
        let mut tracker = tracker();
        let t0 = Instant::now();
        receive_all(&mut tracker, &[1, 2, 7], t0);
        let acks = tracker.take_acks(t0 + SETTLE * 10);
        assert_eq!(acks, vec![(CONV.to_owned(), 7)]);
    }
}
