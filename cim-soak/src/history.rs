//! The history: everything the clients did and saw, with the time it happened.
//!
//! The checker decides from this record alone, after the run, so it can be written out
//! (`--history FILE`, one JSON object a line) and read by a person chasing a violation: every
//! send attempt, its acknowledgement or failure, every message an application received, and
//! every connection state change, each stamped with milliseconds since the soak started (the
//! same clock as the fault log). Recording is a push onto a vector behind a mutex: the clients
//! send a few messages a second, and a lock-free log would buy nothing but code.

use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Result, SoakError};

static START: OnceLock<Instant> = OnceLock::new();

/// Starts the soak's clock (the first call wins; later calls change nothing).
pub fn start_clock() {
    START.get_or_init(Instant::now);
}

/// Time since the soak started.
pub fn elapsed() -> Duration {
    START.get_or_init(Instant::now).elapsed()
}

/// Milliseconds since the soak started: the time stamp of every record.
pub fn now_ms() -> u64 {
    u64::try_from(elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Who a message was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A private message to this user id.
    User(u64),
    /// A message to this group id.
    Group(u64),
}

/// One thing that happened to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    /// A send was handed to the SDK. `body` (`soak-<sender>-<n>`) identifies the message
    /// everywhere; it is also the `client_msg_id`.
    Attempt {
        /// When.
        t_ms: u64,
        /// The sender's user id.
        sender: u64,
        /// Whom to.
        to: Target,
        /// The text, unique per message.
        body: String,
    },
    /// The server acknowledged the send: the message is stored.
    Acked {
        /// When the acknowledgement reached the application.
        t_ms: u64,
        /// The message's body (its identity).
        body: String,
        /// The server's message id.
        message_id: u64,
        /// Its conversation (`d:LOW:HIGH`, `g:GROUP`).
        conversation: String,
        /// Its sequence in the conversation.
        seq: u64,
        /// The server the sender was connected to when the acknowledgement arrived.
        server: String,
    },
    /// The send failed: not acknowledged (it may or may not have been stored).
    Failed {
        /// When.
        t_ms: u64,
        /// The message's body.
        body: String,
        /// The SDK's error.
        error: String,
    },
    /// A message reached an application.
    Received {
        /// When.
        t_ms: u64,
        /// The recipient's user id.
        user: u64,
        /// Which client instance of that user (a client that stopped for good is replaced by a
        /// new one, which has its own duplicate filter).
        instance: u32,
        /// The message id.
        message_id: u64,
        /// Its conversation.
        conversation: String,
        /// Its sequence.
        seq: u64,
        /// The sender's user id as delivered.
        sender_id: u64,
        /// The text.
        body: String,
        /// Whether the SDK classed it as waiting (sent before this connection logged in).
        offline: bool,
        /// The server this client was connected to when it arrived.
        server: String,
    },
    /// A client's connection state changed.
    State {
        /// When.
        t_ms: u64,
        /// The user.
        user: u64,
        /// The client instance.
        instance: u32,
        /// The new state (`connecting`, `connected`, `reconnecting`, `disconnected`).
        state: String,
        /// The server, for `connected`; the reason or attempt for the others.
        detail: String,
    },
    /// The server told a client that a stored message can never be delivered to it.
    Undeliverable {
        /// When.
        t_ms: u64,
        /// The user.
        user: u64,
        /// The client instance.
        instance: u32,
        /// The message id.
        message_id: u64,
        /// Its conversation.
        conversation: String,
        /// Its sequence.
        seq: u64,
        /// The server's explanation.
        text: String,
    },
}

/// The record every client writes into.
#[derive(Debug, Default)]
pub struct History {
    entries: Mutex<Vec<Entry>>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        History::default()
    }

    /// Appends an entry.
    pub fn record(&self, entry: Entry) {
        match self.entries.lock() {
            Ok(mut entries) => entries.push(entry),
            Err(poisoned) => poisoned.into_inner().push(entry),
        }
    }

    /// A copy of everything recorded so far, in recording order.
    pub fn snapshot(&self) -> Vec<Entry> {
        match self.entries.lock() {
            Ok(entries) => entries.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Writes `entries` to `path`, one JSON object a line.
pub fn write_jsonl(path: &Path, entries: &[Entry]) -> Result<()> {
    let io = |e| SoakError::io(format!("writing {}", path.display()), e);
    let file = std::fs::File::create(path).map_err(io)?;
    let mut out = std::io::BufWriter::new(file);
    for entry in entries {
        serde_json::to_writer(&mut out, entry).map_err(|e| io(e.into()))?;
        out.write_all(b"\n").map_err(io)?;
    }
    out.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_their_json_lines() {
        let entries = vec![
            Entry::Attempt {
                t_ms: 5,
                sender: 1,
                to: Target::Group(2),
                body: "soak-1-0".into(),
            },
            Entry::Acked {
                t_ms: 9,
                body: "soak-1-0".into(),
                message_id: 77,
                conversation: "g:2".into(),
                seq: 1,
                server: "node-1".into(),
            },
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.jsonl");
        write_jsonl(&path, &entries).expect("written");
        let text = std::fs::read_to_string(&path).expect("read");
        let back: Vec<Entry> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("one entry a line"))
            .collect();
        assert_eq!(back, entries);
        assert!(text.starts_with(r#"{"type":"attempt""#), "{text}");
    }
}
