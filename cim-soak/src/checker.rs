//! The checker: what the history must show if cim kept its promises.
//!
//! The promises, from the README and the SDK's docs, and how each is checked:
//! - **No loss.** A message the server acknowledged is stored, so each of its recipients (the
//!   other user of a private message, every member of the group but the sender) receives it.
//!   A send that failed promised nothing: it need not arrive (but see the next point).
//! - **Exactly once.** No application receives a message twice. The SDK's duplicate filter
//!   lives in one client; a client the soak had to replace starts with an empty one, so
//!   duplicates across instances are counted apart and do not fail the run.
//! - **Order.** Within a conversation, one sender's messages arrive in increasing sequence.
//!   Across senders in a group, live messages relayed through different servers may overtake
//!   each other: those reorders are reported, and do not fail the run.
//! - **Privacy.** Nobody receives a message of a conversation they are not part of.
//! - **Integrity.** Nothing arrives that nobody sent, and what arrives is what was acknowledged
//!   (same id, conversation, sequence and sender).
//! - **Authorisation.** A group refuses sends from non-members.
//!
//! Every violation comes with its evidence: when the message was sent and acknowledged and
//! through which server, where the recipient was connected, and which faults were active.
//! The checker is a pure function of the history, the setup and the fault log, so its rules
//! are unit-tested on small made-up histories.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::clients::Setup;
use crate::faults::FaultRecord;
use crate::history::{Entry, Target};

/// A send, as the history shows it.
#[derive(Debug, Clone)]
struct Send {
    sender: u64,
    to: Target,
    attempt_ms: u64,
    outcome: Outcome,
}

#[derive(Debug, Clone)]
enum Outcome {
    Pending,
    Acked(Ack),
    Failed { error: String },
}

/// An acknowledgement, as the history shows it.
#[derive(Debug, Clone)]
struct Ack {
    t_ms: u64,
    message_id: u64,
    conversation: String,
    seq: u64,
    server: String,
}

/// One receipt, as the history shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    /// When (ms since the start).
    pub t_ms: u64,
    /// The recipient.
    pub user: String,
    /// The recipient's client instance.
    pub instance: u32,
    /// The message id delivered.
    pub message_id: u64,
    /// Its conversation.
    pub conversation: String,
    /// Its sequence.
    pub seq: u64,
    /// The sender as delivered.
    pub sender: String,
    /// The body.
    pub body: String,
    /// The server the recipient was connected to.
    pub server: String,
}

/// An acknowledged message a recipient never received, and what was going on.
#[derive(Debug, Clone, Serialize)]
pub struct Missing {
    /// The body (`soak-<sender>-<n>`).
    pub body: String,
    /// The message id of the acknowledgement.
    pub message_id: u64,
    /// Its conversation and sequence.
    pub conversation: String,
    /// Its sequence.
    pub seq: u64,
    /// Who sent it.
    pub sender: String,
    /// Who did not receive it.
    pub recipient: String,
    /// When the send was attempted, and acknowledged (ms since the start).
    pub attempt_ms: u64,
    /// When the acknowledgement arrived.
    pub ack_ms: u64,
    /// The sender's server when the acknowledgement arrived.
    pub acked_via: String,
    /// The recipient's connection at the acknowledgement: `connected node-2 since 12345ms`.
    pub recipient_at_ack: String,
    /// The recipient's connection changes from shortly before the send to the end.
    pub recipient_timeline: Vec<String>,
    /// Whether the recipient received later messages of the same conversation (a gap), and
    /// the first of them.
    pub later_in_conversation: Option<String>,
    /// The recipient's own first later message in the conversation, if any: a client that
    /// counted its own sequences as received would acknowledge past the missing one.
    pub recipient_sent_later: Option<String>,
    /// An `Undeliverable` notice for it, if the server sent one.
    pub undeliverable: Option<String>,
    /// Faults active between shortly before the send and shortly after the acknowledgement.
    pub faults: Vec<String>,
}

/// A message received more than once by one user.
#[derive(Debug, Clone, Serialize)]
pub struct Duplicate {
    /// The recipient.
    pub user: String,
    /// The body.
    pub body: String,
    /// Every receipt of it.
    pub receipts: Vec<Receipt>,
}

/// Two messages of one conversation that arrived against their sequence order.
#[derive(Debug, Clone, Serialize)]
pub struct Reorder {
    /// The recipient.
    pub user: String,
    /// The conversation.
    pub conversation: String,
    /// The message that arrived first, with the higher sequence.
    pub first: Receipt,
    /// The message that arrived after it, with a lower sequence.
    pub then: Receipt,
}

/// A receipt that breaks a rule by itself, and which rule.
#[derive(Debug, Clone, Serialize)]
pub struct Bad {
    /// The rule.
    pub why: String,
    /// The receipt.
    pub receipt: Receipt,
}

/// An attempt that should have been refused and was acknowledged.
#[derive(Debug, Clone, Serialize)]
pub struct WronglyAccepted {
    /// The body.
    pub body: String,
    /// The sender.
    pub sender: String,
    /// The group they are not a member of.
    pub group: u64,
    /// When it was acknowledged.
    pub ack_ms: u64,
}

/// Totals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Send attempts.
    pub attempts: usize,
    /// Acknowledged.
    pub acked: usize,
    /// Failed, by the error's kind (`timeout`, `unavailable`, `forbidden`...).
    pub failed: BTreeMap<String, usize>,
    /// Attempts with no outcome recorded (the SDK answers every send: should be 0).
    pub unanswered: usize,
    /// (message, recipient) pairs owed by acknowledged messages.
    pub owed_deliveries: usize,
    /// Of those, received.
    pub delivered: usize,
    /// Receipts in all (duplicates included).
    pub receipts: usize,
    /// Receipts of messages whose send failed or never got its answer (allowed: the server
    /// may have stored a message whose acknowledgement was lost).
    pub receipts_of_unacknowledged: usize,
    /// Connection losses (`reconnecting` states).
    pub reconnects: usize,
    /// Client instances replaced (a client that stopped for good).
    pub replaced_clients: usize,
}

/// What the checker found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    /// Totals.
    pub counts: Counts,
    /// Acknowledged messages a recipient never received.
    pub missing: Vec<Missing>,
    /// Messages one client instance handed to the application twice.
    pub duplicates: Vec<Duplicate>,
    /// Messages received again by a replacement client (reported, not a failure).
    pub duplicates_across_instances: Vec<Duplicate>,
    /// One sender's messages out of sequence order in a conversation.
    pub order_violations: Vec<Reorder>,
    /// Different senders' group messages out of sequence order (reported, not a failure).
    pub cross_sender_reorders: Vec<Reorder>,
    /// Receipts by users not part of the conversation.
    pub non_member_receipts: Vec<Bad>,
    /// Receipts of messages never sent.
    pub never_sent: Vec<Bad>,
    /// Receipts that differ from the acknowledgement or the sender.
    pub mismatched: Vec<Bad>,
    /// Non-members' group sends that were acknowledged.
    pub wrongly_accepted: Vec<WronglyAccepted>,
}

impl Findings {
    /// How many violations fail the run.
    pub fn violations(&self) -> usize {
        self.missing.len()
            + self.duplicates.len()
            + self.order_violations.len()
            + self.non_member_receipts.len()
            + self.never_sent.len()
            + self.mismatched.len()
            + self.wrongly_accepted.len()
            + self.counts.unanswered
    }
}

/// The history, indexed.
struct Index<'a> {
    setup: &'a Setup,
    sends: HashMap<&'a str, Send>,
    /// Receipts in recording order.
    receipts: Vec<(&'a Entry, Receipt)>,
    /// (body, user) pairs received.
    delivered: BTreeSet<(&'a str, u64)>,
}

impl<'a> Index<'a> {
    fn new(entries: &'a [Entry], setup: &'a Setup) -> Self {
        let mut sends: HashMap<&str, Send> = HashMap::new();
        let mut receipts = Vec::new();
        let mut delivered = BTreeSet::new();
        for entry in entries {
            match entry {
                Entry::Attempt {
                    t_ms,
                    sender,
                    to,
                    body,
                } => {
                    sends.insert(
                        body,
                        Send {
                            sender: *sender,
                            to: *to,
                            attempt_ms: *t_ms,
                            outcome: Outcome::Pending,
                        },
                    );
                }
                Entry::Acked {
                    t_ms,
                    body,
                    message_id,
                    conversation,
                    seq,
                    server,
                } => {
                    if let Some(send) = sends.get_mut(body.as_str()) {
                        send.outcome = Outcome::Acked(Ack {
                            t_ms: *t_ms,
                            message_id: *message_id,
                            conversation: conversation.clone(),
                            seq: *seq,
                            server: server.clone(),
                        });
                    }
                }
                Entry::Failed { body, error, .. } => {
                    if let Some(send) = sends.get_mut(body.as_str()) {
                        send.outcome = Outcome::Failed {
                            error: error.clone(),
                        };
                    }
                }
                Entry::Received {
                    t_ms,
                    user,
                    instance,
                    message_id,
                    conversation,
                    seq,
                    sender_id,
                    body,
                    server,
                    ..
                } => {
                    delivered.insert((body.as_str(), *user));
                    receipts.push((
                        entry,
                        Receipt {
                            t_ms: *t_ms,
                            user: setup.name(*user),
                            instance: *instance,
                            message_id: *message_id,
                            conversation: conversation.clone(),
                            seq: *seq,
                            sender: setup.name(*sender_id),
                            body: body.clone(),
                            server: server.clone(),
                        },
                    ));
                }
                Entry::State { .. } | Entry::Undeliverable { .. } => {}
            }
        }
        Index {
            setup,
            sends,
            receipts,
            delivered,
        }
    }

    /// Every (acknowledged send, recipient) pair, in a stable order.
    fn owed(&self) -> Vec<(&'a str, &Send, &Ack, u64)> {
        let mut owed = Vec::new();
        for (body, send) in &self.sends {
            if let Outcome::Acked(ack) = &send.outcome {
                for recipient in self.setup.recipients(send.sender, send.to) {
                    owed.push((*body, send, ack, recipient));
                }
            }
        }
        owed.sort_by_key(|(body, send, _, recipient)| (send.attempt_ms, *body, *recipient));
        owed
    }
}

/// How many acknowledged deliveries have not arrived yet (the convergence wait's measure).
pub fn outstanding(entries: &[Entry], setup: &Setup) -> usize {
    let index = Index::new(entries, setup);
    index
        .owed()
        .iter()
        .filter(|(body, _, _, recipient)| !index.delivered.contains(&(*body, *recipient)))
        .count()
}

/// Checks the history.
pub fn check(entries: &[Entry], setup: &Setup, faults: &[FaultRecord]) -> Findings {
    let index = Index::new(entries, setup);
    let mut findings = Findings::default();
    count(entries, &index, &mut findings.counts);

    for (body, send, ack, recipient) in index.owed() {
        findings.counts.owed_deliveries += 1;
        if index.delivered.contains(&(body, recipient)) {
            findings.counts.delivered += 1;
        } else {
            let evidence = missing(entries, &index, faults, (body, send, ack), recipient);
            findings.missing.push(evidence);
        }
    }

    check_receipts(&index, &mut findings);
    check_duplicates(&index, &mut findings);
    check_order(&index, &mut findings);
    for (body, send) in &index.sends {
        if let (Target::Group(group), Outcome::Acked(Ack { t_ms, .. })) = (send.to, &send.outcome)
            && !setup
                .groups
                .iter()
                .any(|g| g.id == group && g.members.contains(&send.sender))
        {
            findings.wrongly_accepted.push(WronglyAccepted {
                body: (*body).to_string(),
                sender: setup.name(send.sender),
                group,
                ack_ms: *t_ms,
            });
        }
    }
    findings
}

fn count(entries: &[Entry], index: &Index<'_>, counts: &mut Counts) {
    counts.attempts = index.sends.len();
    for send in index.sends.values() {
        match &send.outcome {
            Outcome::Pending => counts.unanswered += 1,
            Outcome::Acked(_) => counts.acked += 1,
            Outcome::Failed { error } => {
                let outsider = match send.to {
                    Target::Group(group) => !index
                        .setup
                        .groups
                        .iter()
                        .any(|g| g.id == group && g.members.contains(&send.sender)),
                    Target::User(_) => false,
                };
                let kind = if outsider {
                    // The refusal the workload asks for: not a failure of the cluster.
                    format!(
                        "refused_non_member ({})",
                        error.split(':').next().unwrap_or("?")
                    )
                } else {
                    error.split(':').next().unwrap_or("other").to_string()
                };
                *counts.failed.entry(kind).or_insert(0) += 1;
            }
        }
    }
    counts.receipts = index.receipts.len();
    counts.receipts_of_unacknowledged = index
        .receipts
        .iter()
        .filter(|(_, r)| {
            index
                .sends
                .get(r.body.as_str())
                .is_some_and(|s| !matches!(s.outcome, Outcome::Acked(_)))
        })
        .count();
    for entry in entries {
        if let Entry::State { state, detail, .. } = entry {
            if state == "reconnecting" {
                counts.reconnects += 1;
            }
            if state == "connected" && detail.contains("new client instance") {
                counts.replaced_clients += 1;
            }
        }
    }
}

/// Privacy and integrity: each receipt on its own.
fn check_receipts(index: &Index<'_>, findings: &mut Findings) {
    for (entry, receipt) in &index.receipts {
        let Entry::Received {
            user,
            conversation,
            sender_id,
            message_id,
            seq,
            ..
        } = entry
        else {
            continue;
        };
        let bad = |why: String| Bad {
            why,
            receipt: receipt.clone(),
        };
        if !index.setup.may_read(*user, conversation) {
            findings.non_member_receipts.push(bad(format!(
                "{} is not part of {conversation}",
                receipt.user
            )));
        }
        let Some(send) = index.sends.get(receipt.body.as_str()) else {
            findings
                .never_sent
                .push(bad("no client ever sent this body".into()));
            continue;
        };
        if send.sender != *sender_id {
            findings.mismatched.push(bad(format!(
                "sent by {}, delivered as from {}",
                index.setup.name(send.sender),
                receipt.sender
            )));
        }
        if let Outcome::Acked(Ack {
            message_id: acked_id,
            conversation: acked_conversation,
            seq: acked_seq,
            ..
        }) = &send.outcome
            && (acked_id != message_id || acked_conversation != conversation || acked_seq != seq)
        {
            findings.mismatched.push(bad(format!(
                "acknowledged as id {acked_id} {acked_conversation} seq {acked_seq}, delivered \
                 as id {message_id} {conversation} seq {seq}"
            )));
        }
    }
}

/// Exactly once: receipts of one body by one user.
fn check_duplicates(index: &Index<'_>, findings: &mut Findings) {
    let mut by_pair: BTreeMap<(&str, &str), Vec<&Receipt>> = BTreeMap::new();
    for (_, receipt) in &index.receipts {
        by_pair
            .entry((receipt.user.as_str(), receipt.body.as_str()))
            .or_default()
            .push(receipt);
    }
    for ((user, body), receipts) in by_pair {
        if receipts.len() < 2 {
            continue;
        }
        let instances: BTreeSet<u32> = receipts.iter().map(|r| r.instance).collect();
        let duplicate = Duplicate {
            user: user.to_string(),
            body: body.to_string(),
            receipts: receipts.into_iter().cloned().collect(),
        };
        if instances.len() < duplicate.receipts.len() {
            findings.duplicates.push(duplicate);
        } else {
            findings.duplicates_across_instances.push(duplicate);
        }
    }
}

/// Order: per recipient and conversation, each arrival against the highest sequence seen
/// before it, from the same sender (a violation) and from any sender (a group reorder).
fn check_order(index: &Index<'_>, findings: &mut Findings) {
    let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut per_sender: HashMap<(&str, &str, &str), &Receipt> = HashMap::new();
    let mut per_conversation: HashMap<(&str, &str), &Receipt> = HashMap::new();
    for (_, receipt) in &index.receipts {
        if !seen.insert((receipt.user.as_str(), receipt.body.as_str())) {
            continue; // duplicates are counted elsewhere
        }
        let (user, conversation) = (receipt.user.as_str(), receipt.conversation.as_str());
        let key = (user, conversation, receipt.sender.as_str());
        match per_sender.get(&key) {
            Some(highest) if highest.seq > receipt.seq => {
                findings.order_violations.push(Reorder {
                    user: user.to_string(),
                    conversation: conversation.to_string(),
                    first: (*highest).clone(),
                    then: receipt.clone(),
                });
            }
            _ => {
                per_sender.insert(key, receipt);
            }
        }
        match per_conversation.get(&(user, conversation)) {
            Some(highest) if highest.seq > receipt.seq => {
                if highest.sender != receipt.sender {
                    findings.cross_sender_reorders.push(Reorder {
                        user: user.to_string(),
                        conversation: conversation.to_string(),
                        first: (*highest).clone(),
                        then: receipt.clone(),
                    });
                }
            }
            _ => {
                per_conversation.insert((user, conversation), receipt);
            }
        }
    }
}

/// The evidence for one missing delivery.
fn missing(
    entries: &[Entry],
    index: &Index<'_>,
    faults: &[FaultRecord],
    (body, send, ack): (&str, &Send, &Ack),
    recipient: u64,
) -> Missing {
    let Ack {
        t_ms: ack_ms,
        message_id,
        conversation,
        seq,
        server,
    } = ack;
    let setup = index.setup;
    let recipient_sent_later = index
        .sends
        .iter()
        .filter_map(|(body, other)| match &other.outcome {
            Outcome::Acked(own)
                if other.sender == recipient
                    && own.conversation == *conversation
                    && own.seq > *seq =>
            {
                Some((own.seq, own.t_ms, *body))
            }
            _ => None,
        })
        .min()
        .map(|(seq, t_ms, body)| format!("{body} (seq {seq}) acknowledged at {t_ms}ms"));
    let from = send.attempt_ms.saturating_sub(5_000);
    let mut at_ack = "no connection recorded before the acknowledgement".to_string();
    let mut timeline = Vec::new();
    let mut later = None;
    let mut undeliverable = None;
    for entry in entries {
        match entry {
            Entry::State {
                t_ms,
                user,
                instance,
                state,
                detail,
            } if *user == recipient => {
                if *t_ms <= *ack_ms {
                    at_ack = format!("{state} {detail} since {t_ms}ms (instance {instance})");
                }
                if *t_ms >= from {
                    timeline.push(format!("{t_ms}ms #{instance} {state} {detail}"));
                }
            }
            Entry::Received {
                t_ms,
                user,
                conversation: c,
                seq: s,
                body: b,
                server: at,
                ..
            } if *user == recipient && c == conversation && s > seq && later.is_none() => {
                later = Some(format!("{b} (seq {s}) at {t_ms}ms via {at}"));
            }
            Entry::Undeliverable {
                t_ms,
                user,
                message_id: id,
                text,
                ..
            } if *user == recipient && id == message_id => {
                undeliverable = Some(format!("at {t_ms}ms: {text}"));
            }
            _ => {}
        }
    }
    let window = (send.attempt_ms.saturating_sub(2_000), ack_ms + 10_000);
    let faults = faults
        .iter()
        .filter(|f| f.start_ms <= window.1 && f.end_ms.unwrap_or(u64::MAX) >= window.0)
        .map(|f| {
            let end = f.end_ms.map_or("-".to_string(), |e| format!("{e}ms"));
            format!("#{} {} [{}ms..{end}]", f.id, f.description, f.start_ms)
        })
        .collect();
    Missing {
        body: body.to_string(),
        message_id: *message_id,
        conversation: conversation.clone(),
        seq: *seq,
        sender: setup.name(send.sender),
        recipient: setup.name(recipient),
        attempt_ms: send.attempt_ms,
        ack_ms: *ack_ms,
        acked_via: server.clone(),
        recipient_at_ack: at_ack,
        recipient_timeline: timeline,
        later_in_conversation: later,
        recipient_sent_later,
        undeliverable,
        faults,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::{Group, User};

    fn setup() -> Setup {
        Setup {
            users: (1..=3)
                .map(|id| User {
                    name: format!("u{id}"),
                    id,
                })
                .collect(),
            groups: vec![Group {
                id: 7,
                name: "g".into(),
                members: BTreeSet::from([1, 2]),
            }],
        }
    }

    fn attempt(t: u64, sender: u64, to: Target, body: &str) -> Entry {
        Entry::Attempt {
            t_ms: t,
            sender,
            to,
            body: body.into(),
        }
    }

    fn acked(t: u64, body: &str, id: u64, conversation: &str, seq: u64) -> Entry {
        Entry::Acked {
            t_ms: t,
            body: body.into(),
            message_id: id,
            conversation: conversation.into(),
            seq,
            server: "node-1".into(),
        }
    }

    fn received(t: u64, user: u64, sender: u64, body: &str, id: u64, c: &str, seq: u64) -> Entry {
        Entry::Received {
            t_ms: t,
            user,
            instance: 0,
            message_id: id,
            conversation: c.into(),
            seq,
            sender_id: sender,
            body: body.into(),
            offline: false,
            server: "node-2".into(),
        }
    }

    #[test]
    fn a_clean_history_has_no_violation() {
        let history = vec![
            attempt(1, 1, Target::User(2), "a"),
            acked(2, "a", 10, "d:1:2", 1),
            received(3, 2, 1, "a", 10, "d:1:2", 1),
            attempt(4, 1, Target::Group(7), "b"),
            acked(5, "b", 11, "g:7", 1),
            received(6, 2, 1, "b", 11, "g:7", 1),
        ];
        let findings = check(&history, &setup(), &[]);
        assert_eq!(findings.violations(), 0, "{findings:#?}");
        assert_eq!(findings.counts.owed_deliveries, 2);
        assert_eq!(findings.counts.delivered, 2);
        assert_eq!(outstanding(&history, &setup()), 0);
    }

    #[test]
    fn an_acknowledged_message_that_never_arrives_is_missing_with_the_faults_around_it() {
        let history = vec![
            Entry::State {
                t_ms: 0,
                user: 2,
                instance: 0,
                state: "connected".into(),
                detail: "node-3".into(),
            },
            attempt(1_000, 1, Target::User(2), "a"),
            acked(1_500, "a", 10, "d:1:2", 1),
            attempt(2_000, 1, Target::User(2), "b"),
            acked(2_100, "b", 11, "d:1:2", 2),
            received(2_200, 2, 1, "b", 11, "d:1:2", 2),
        ];
        let fault = FaultRecord {
            id: 1,
            fault: crate::faults::Fault::KillServer { server: 2 },
            description: "SIGKILL node-3".into(),
            start_ms: 900,
            end_ms: Some(4_000),
            planned_hold_ms: 3_000,
            notes: vec![],
        };
        let findings = check(&history, &setup(), &[fault]);
        assert_eq!(findings.missing.len(), 1);
        let missing = &findings.missing[0];
        assert_eq!(
            (missing.body.as_str(), missing.recipient.as_str()),
            ("a", "u2")
        );
        assert!(missing.recipient_at_ack.contains("node-3"), "{missing:?}");
        assert_eq!(missing.faults.len(), 1);
        assert!(
            missing
                .later_in_conversation
                .as_deref()
                .is_some_and(|l| l.starts_with("b "))
        );
        assert_eq!(outstanding(&history, &setup()), 1);
    }

    #[test]
    fn a_failed_send_is_owed_to_nobody_but_may_arrive() {
        let history = vec![
            attempt(1, 1, Target::User(2), "a"),
            Entry::Failed {
                t_ms: 2,
                body: "a".into(),
                error: "timeout: no acknowledgement".into(),
            },
            received(3, 2, 1, "a", 10, "d:1:2", 1),
        ];
        let findings = check(&history, &setup(), &[]);
        assert_eq!(findings.violations(), 0, "{findings:#?}");
        assert_eq!(findings.counts.receipts_of_unacknowledged, 1);
        assert_eq!(findings.counts.failed.get("timeout"), Some(&1));
    }

    #[test]
    fn twice_in_one_client_is_a_duplicate_but_again_in_a_new_client_is_only_reported() {
        let mut again = received(5, 2, 1, "a", 10, "d:1:2", 1);
        let mut history = vec![
            attempt(1, 1, Target::User(2), "a"),
            acked(2, "a", 10, "d:1:2", 1),
            received(3, 2, 1, "a", 10, "d:1:2", 1),
            again.clone(),
        ];
        assert_eq!(check(&history, &setup(), &[]).duplicates.len(), 1);
        if let Entry::Received { instance, .. } = &mut again {
            *instance = 1;
        }
        history[3] = again;
        let findings = check(&history, &setup(), &[]);
        assert!(findings.duplicates.is_empty());
        assert_eq!(findings.duplicates_across_instances.len(), 1);
        assert_eq!(findings.violations(), 0);
    }

    #[test]
    fn one_senders_reorder_fails_but_a_reorder_across_senders_is_only_reported() {
        let history = vec![
            attempt(1, 1, Target::User(2), "a"),
            acked(2, "a", 10, "d:1:2", 1),
            attempt(3, 1, Target::User(2), "b"),
            acked(4, "b", 11, "d:1:2", 2),
            received(5, 2, 1, "b", 11, "d:1:2", 2),
            received(6, 2, 1, "a", 10, "d:1:2", 1),
        ];
        let findings = check(&history, &setup(), &[]);
        assert_eq!(findings.order_violations.len(), 1);
        assert_eq!(findings.order_violations[0].then.body, "a");

        let setup = Setup {
            groups: vec![Group {
                id: 7,
                name: "g".into(),
                members: BTreeSet::from([1, 2, 3]),
            }],
            ..setup()
        };
        let history = vec![
            attempt(1, 1, Target::Group(7), "a"),
            acked(2, "a", 10, "g:7", 1),
            attempt(1, 3, Target::Group(7), "c"),
            acked(2, "c", 11, "g:7", 2),
            received(5, 2, 3, "c", 11, "g:7", 2),
            received(6, 2, 1, "a", 10, "g:7", 1),
            received(7, 3, 1, "a", 10, "g:7", 1),
            received(8, 1, 3, "c", 11, "g:7", 2),
        ];
        let findings = check(&history, &setup, &[]);
        assert!(findings.order_violations.is_empty());
        assert_eq!(findings.cross_sender_reorders.len(), 1);
        assert_eq!(findings.violations(), 0);
    }

    #[test]
    fn outsiders_phantoms_and_altered_messages_are_violations() {
        let history = vec![
            attempt(1, 1, Target::Group(7), "a"),
            acked(2, "a", 10, "g:7", 1),
            received(3, 2, 1, "a", 10, "g:7", 1),
            // u3 is not a member of group 7.
            received(4, 3, 1, "a", 10, "g:7", 1),
            received(5, 2, 1, "ghost", 99, "d:1:2", 5),
            // Delivered with another sequence than acknowledged.
            attempt(6, 1, Target::User(2), "b"),
            acked(7, "b", 12, "d:1:2", 2),
            received(8, 2, 1, "b", 12, "d:1:2", 3),
            // A non-member's group send acknowledged.
            attempt(9, 3, Target::Group(7), "c"),
            acked(10, "c", 13, "g:7", 2),
        ];
        let findings = check(&history, &setup(), &[]);
        assert_eq!(findings.non_member_receipts.len(), 1);
        assert_eq!(findings.never_sent.len(), 1);
        assert_eq!(findings.mismatched.len(), 1);
        assert_eq!(findings.wrongly_accepted.len(), 1);
    }

    #[test]
    fn a_send_without_an_answer_is_a_violation() {
        let history = vec![attempt(1, 1, Target::User(2), "a")];
        let findings = check(&history, &setup(), &[]);
        assert_eq!(findings.counts.unanswered, 1);
        assert_eq!(findings.violations(), 1);
    }
}
