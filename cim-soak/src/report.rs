//! The report: a summary a person reads at the end of the run (and in CI's log), and the same
//! facts as one JSON document (`--json FILE`) with every violation's evidence in full.
//!
//! The summary shows every count that could explain a result, not only the failures: how many
//! sends failed (and why) tells whether the faults bit; how long delivery took to converge
//! after healing tells how close a "pass" was to a "missing". Violations are listed with their
//! evidence, a few of each kind (the JSON has all of them).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::checker::{Findings, Reorder};
use crate::clients::{Presence, Setup};
use crate::error::{Result, SoakError};
use crate::faults::{FaultRecord, Incident};

/// How many violations of each kind the summary lists (the JSON has all).
const LISTED: usize = 10;

/// Everything about one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The seed (faults and workload); `--seed` replays the same decisions.
    pub seed: u64,
    /// How long faults were injected, in seconds.
    pub fault_seconds: f64,
    /// How many clients and servers.
    pub clients: usize,
    /// How many servers.
    pub servers: usize,
    /// Messages per second asked for.
    pub rate: f64,
    /// Every fault, in order.
    pub faults: Vec<FaultRecord>,
    /// Processes that exited by themselves or could not be brought back.
    pub incidents: Vec<Incident>,
    /// How long the heal took (ms).
    pub heal_ms: u64,
    /// How long after the heal every acknowledged message had arrived (ms), if it did.
    pub converged_after_ms: Option<u64>,
    /// Deliveries still outstanding when the convergence wait ended.
    pub outstanding_at_end: usize,
    /// Users whose post-heal probe message was not acknowledged, with why.
    pub probe_failures: Vec<(String, String)>,
    /// Where every user was at the end, by its client and by the session store.
    pub presence_at_end: Vec<Presence>,
    /// Who existed.
    pub setup: Setup,
    /// What the checker found.
    pub findings: Findings,
}

impl Report {
    /// Violations that fail the run: the checker's, processes that died by themselves, and
    /// probes the healed cluster did not acknowledge.
    pub fn violations(&self) -> usize {
        self.findings.violations() + self.incidents.len() + self.probe_failures.len()
    }

    /// Writes the JSON document.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| SoakError::io("encoding the report", e.into()))?;
        std::fs::write(path, text)
            .map_err(|e| SoakError::io(format!("writing {}", path.display()), e))
    }

    /// The summary.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let f = &self.findings;
        let c = &f.counts;
        let _ = writeln!(out, "=== cim-soak report ===");
        let _ = writeln!(
            out,
            "run: {:.0}s of faults, seed {}, {} clients, {} servers, {} msg/s asked",
            self.fault_seconds, self.seed, self.clients, self.servers, self.rate
        );
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for fault in &self.faults {
            let kind = serde_json::to_value(&fault.fault)
                .ok()
                .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
                .unwrap_or_default();
            *kinds.entry(kind).or_insert(0) += 1;
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            out,
            "faults: {} injected ({}); {} incidents (processes that exited by themselves)",
            self.faults.len(),
            kinds.join(", "),
            self.incidents.len()
        );
        let failed: usize = c.failed.values().sum();
        let failed_kinds: Vec<String> = c.failed.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            out,
            "sends: {} attempted, {} acknowledged, {failed} failed ({}), {} unanswered",
            c.attempts,
            c.acked,
            failed_kinds.join(", "),
            c.unanswered
        );
        let _ = writeln!(
            out,
            "deliveries: {} owed by acknowledged messages, {} delivered, {} missing; {} receipts \
             in all, {} of unacknowledged sends",
            c.owed_deliveries,
            c.delivered,
            f.missing.len(),
            c.receipts,
            c.receipts_of_unacknowledged
        );
        let _ = writeln!(
            out,
            "exactly once: {} duplicates in one client, {} again in a replacement client \
             (allowed); {} reconnects, {} clients replaced",
            f.duplicates.len(),
            f.duplicates_across_instances.len(),
            c.reconnects,
            c.replaced_clients
        );
        let _ = writeln!(
            out,
            "order: {} per-sender violations; {} cross-sender reorders in groups (allowed, \
             reported)",
            f.order_violations.len(),
            f.cross_sender_reorders.len()
        );
        let _ = writeln!(
            out,
            "privacy and integrity: {} receipts by non-members, {} of messages never sent, {} \
             altered, {} non-member group sends accepted",
            f.non_member_receipts.len(),
            f.never_sent.len(),
            f.mismatched.len(),
            f.wrongly_accepted.len()
        );
        let converged = match self.converged_after_ms {
            Some(ms) => format!(
                "every acknowledged message arrived {:.1}s after the heal",
                ms as f64 / 1000.0
            ),
            None => format!(
                "{} deliveries still outstanding at the deadline",
                self.outstanding_at_end
            ),
        };
        let _ = writeln!(
            out,
            "after healing ({:.1}s): {converged}; post-heal probe: {}/{} acknowledged",
            self.heal_ms as f64 / 1000.0,
            self.clients - self.probe_failures.len().min(self.clients),
            self.clients
        );
        let disagree: Vec<String> = self
            .presence_at_end
            .iter()
            .filter(|p| p.disagrees())
            .map(|p| {
                format!(
                    "{} ({}; session store: {})",
                    p.user, p.client, p.session_store
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "presence at the end: {} users whose client is connected but whose session the cluster does not have there{}",
            disagree.len(),
            if disagree.is_empty() {
                String::new()
            } else {
                format!(": {}", disagree.join(", "))
            }
        );
        self.missing_by_recipient(&mut out);
        self.details(&mut out);
        let violations = self.violations();
        let verdict = if violations == 0 { "PASS" } else { "FAIL" };
        let _ = writeln!(out, "RESULT: {verdict} ({violations} violations)");
        out
    }

    /// The missing deliveries grouped by recipient: how many, where the recipient was
    /// connected at the acknowledgements, and over what time.
    fn missing_by_recipient(&self, out: &mut String) {
        let mut groups: BTreeMap<&str, RecipientLosses> = BTreeMap::new();
        for m in &self.findings.missing {
            let entry =
                groups
                    .entry(m.recipient.as_str())
                    .or_insert((0, BTreeMap::new(), u64::MAX, 0));
            entry.0 += 1;
            let at = m
                .recipient_at_ack
                .split(" since")
                .next()
                .unwrap_or("?")
                .to_string();
            *entry.1.entry(at).or_insert(0) += 1;
            entry.2 = entry.2.min(m.ack_ms);
            entry.3 = entry.3.max(m.ack_ms);
        }
        if groups.is_empty() {
            return;
        }
        let _ = writeln!(out, "missing by recipient:");
        for (recipient, (n, at, first, last)) in groups {
            let at: Vec<String> = at.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let _ = writeln!(
                out,
                "    {recipient}: {n} (recipient at the ack: {}), acked {:.1}s..{:.1}s",
                at.join(", "),
                first as f64 / 1000.0,
                last as f64 / 1000.0
            );
        }
    }

    fn details(&self, out: &mut String) {
        let f = &self.findings;
        for incident in &self.incidents {
            let _ = writeln!(
                out,
                "\nINCIDENT at {}ms: {} {}",
                incident.t_ms, incident.process, incident.what
            );
            for line in incident
                .log_tail
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                let _ = writeln!(out, "    | {line}");
            }
        }
        for (user, why) in &self.probe_failures {
            let _ = writeln!(out, "\nPROBE FAILED: {user}: {why}");
        }
        for m in f.missing.iter().take(LISTED) {
            let _ = writeln!(
                out,
                "\nMISSING {} (id {}, {} seq {}) from {} to {}: sent {}ms, acked {}ms via {}",
                m.body,
                m.message_id,
                m.conversation,
                m.seq,
                m.sender,
                m.recipient,
                m.attempt_ms,
                m.ack_ms,
                m.acked_via
            );
            let _ = writeln!(out, "    recipient at ack: {}", m.recipient_at_ack);
            if let Some(later) = &m.later_in_conversation {
                let _ = writeln!(out, "    recipient later got {later}");
            }
            if let Some(own) = &m.recipient_sent_later {
                let _ = writeln!(out, "    recipient itself sent {own}");
            }
            if let Some(notice) = &m.undeliverable {
                let _ = writeln!(out, "    undeliverable notice {notice}");
            }
            let _ = writeln!(out, "    faults around it: {}", list_or_none(&m.faults));
            for line in m.recipient_timeline.iter().take(12) {
                let _ = writeln!(out, "    recipient: {line}");
            }
        }
        more(out, f.missing.len(), "missing");
        for d in f.duplicates.iter().take(LISTED) {
            let _ = writeln!(out, "\nDUPLICATE {} at {}:", d.body, d.user);
            for r in &d.receipts {
                let _ = writeln!(
                    out,
                    "    {}ms #{} via {} seq {}",
                    r.t_ms, r.instance, r.server, r.seq
                );
            }
        }
        more(out, f.duplicates.len(), "duplicates");
        for r in f.order_violations.iter().take(LISTED) {
            reorder(out, "ORDER", r);
        }
        more(out, f.order_violations.len(), "order violations");
        for r in f.cross_sender_reorders.iter().take(3) {
            reorder(out, "cross-sender reorder (allowed)", r);
        }
        for bad in f
            .non_member_receipts
            .iter()
            .chain(&f.never_sent)
            .chain(&f.mismatched)
            .take(LISTED)
        {
            let r = &bad.receipt;
            let _ = writeln!(
                out,
                "\nBAD RECEIPT {} at {} {}ms via {} (id {} {} seq {}): {}",
                r.body, r.user, r.t_ms, r.server, r.message_id, r.conversation, r.seq, bad.why
            );
        }
        for w in &f.wrongly_accepted {
            let _ = writeln!(
                out,
                "\nACCEPTED FROM A NON-MEMBER: {} by {} to group {} acked {}ms",
                w.body, w.sender, w.group, w.ack_ms
            );
        }
        if self.violations() > 0 {
            let _ = writeln!(out);
        }
    }
}

/// One recipient's missing deliveries: how many, by where it was connected at the
/// acknowledgement, and the first and last acknowledgement time.
type RecipientLosses = (usize, BTreeMap<String, usize>, u64, u64);

fn reorder(out: &mut String, label: &str, r: &Reorder) {
    let _ = writeln!(
        out,
        "\n{label} at {} in {}: {} (seq {}, from {}) arrived {}ms via {}, then {} (seq {}, from \
         {}) {}ms via {}",
        r.user,
        r.conversation,
        r.first.body,
        r.first.seq,
        r.first.sender,
        r.first.t_ms,
        r.first.server,
        r.then.body,
        r.then.seq,
        r.then.sender,
        r.then.t_ms,
        r.then.server
    );
}

fn more(out: &mut String, total: usize, what: &str) {
    if total > LISTED {
        let _ = writeln!(
            out,
            "    ... and {} more {what} (see the JSON report)",
            total - LISTED
        );
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join("; ")
    }
}
