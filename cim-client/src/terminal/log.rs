//! The optional local chat log (`cim client --chat-log <path>`), like the original client's.
//!
//! The server keeps the history (`:history`, `:q`); the local log is for the user's own
//! records and for grep. One line per message, appended, UTF-8, five fields separated by one tab
//! each (shown as spaces here):
//!
//! ```text
//! <time>  <direction>  <conversation>  <sender>  <text>
//! 2026-11-22T08:30:01.250Z  in         g:0    alice  hello everyone
//! 2026-11-22T08:30:05.002Z  out        d:1:2  bob    hi alice
//! 2026-11-22T08:30:09.410Z  scheduled  user:1  bob    see you at ten
//! ```
//!
//! - `time`: RFC 3339 in UTC with milliseconds; the server's time for `in` and `out`, the
//!   requested delivery time for `scheduled`.
//! - `direction`: `in` (received), `out` (sent and stored by the server), `scheduled` (sent
//!   with `:delay`, to be delivered at `time`).
//! - `conversation`: `d:<low user id>:<high user id>` or `g:<group id>` (`g:0` is "all"); a
//!   scheduled message's conversation is not known yet, so it shows the recipient as
//!   `user:<id>`, `group:<id>` or `all`.
//! - `sender`: the sender's name.
//! - `text`: the message, with `\` written `\\`, tab `\t`, newline `\n`, carriage return `\r`,
//!   so that every message is exactly one line.
//!
//! Writes are small appends to a local file, made synchronously: a log line is written before
//! the message is shown, so a crash never shows what the log lacks.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::terminal::render::rfc3339;

/// Which way a logged message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received.
    In,
    /// Sent and stored.
    Out,
    /// Sent with a delivery time.
    Scheduled,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
            Direction::Scheduled => "scheduled",
        }
    }
}

/// One logged message.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// Unix milliseconds (see the module docs for which time).
    pub at: i64,
    /// Which way.
    pub direction: Direction,
    /// The conversation's text form (or the recipient, for scheduled messages).
    pub conversation: &'a str,
    /// The sender's name.
    pub sender: &'a str,
    /// The text.
    pub text: &'a str,
}

/// An open chat log.
#[derive(Debug)]
pub struct ChatLog {
    path: PathBuf,
    file: File,
}

impl ChatLog {
    /// Opens `path` for appending, creating it if needed.
    pub fn open(path: &Path) -> io::Result<ChatLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(ChatLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line.
    pub fn record(&mut self, entry: &Entry<'_>) -> io::Result<()> {
        self.file.write_all(format_line(entry).as_bytes())
    }
}

/// The log line for `entry`, with its newline.
pub fn format_line(entry: &Entry<'_>) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}\n",
        rfc3339(entry.at),
        entry.direction.as_str(),
        escape(entry.conversation),
        escape(entry.sender),
        escape(entry.text)
    )
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_is_time_direction_conversation_sender_text() {
        let line = format_line(&Entry {
            at: 1_700_000_000_250,
            direction: Direction::In,
            conversation: "g:0",
            sender: "alice",
            text: "hello everyone",
        });
        assert_eq!(
            line,
            "2023-11-14T22:13:20.250Z\tin\tg:0\talice\thello everyone\n"
        );
    }

    #[test]
    fn tabs_newlines_and_backslashes_are_escaped_so_a_message_is_one_line() {
        let line = format_line(&Entry {
            at: 0,
            direction: Direction::Out,
            conversation: "d:1:2",
            sender: "bob",
            text: "a\tb\nc\\d\r",
        });
        assert!(line.ends_with("\ta\\tb\\nc\\\\d\\r\n"), "{line}");
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(line.matches('\t').count(), 4);
    }

    #[test]
    fn the_log_appends_across_opens() {
        let dir = std::env::temp_dir().join(format!("cim-log-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("chat.log");
        let _ = std::fs::remove_file(&path);
        for text in ["one", "two"] {
            let mut log = ChatLog::open(&path).expect("opens");
            log.record(&Entry {
                at: 0,
                direction: Direction::Scheduled,
                conversation: "all",
                sender: "me",
                text,
            })
            .expect("writes");
        }
        let written = std::fs::read_to_string(&path).expect("reads");
        assert_eq!(written.lines().count(), 2);
        assert!(
            written
                .lines()
                .nth(1)
                .is_some_and(|l| l.ends_with("\tscheduled\tall\tme\ttwo"))
        );
        std::fs::remove_dir_all(&dir).expect("cleans up");
    }
}
