//! How things look on screen: one line per message with its time and sender, status lines,
//! errors, highlighted search hits.
//!
//! Colour is decided once, up front ([`Style::detect`]): on only when stdout is a terminal and
//! `NO_COLOR` is unset (<https://no-color.org>), so piped output and logs stay plain text that
//! scripts (and the tests) can match. Without colour, search hits are marked `*like this*`.
//!
//! Times are shown in UTC (`HH:MM:SS`): the SDK carries no time-zone database, and one fixed
//! zone keeps the screen, the local log and the server's timestamps comparable.

use std::ffi::OsString;
use std::time::{SystemTime, UNIX_EPOCH};

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const HIGHLIGHT: &str = "\x1b[1;30;43m";
/// Colours for sender names, picked by a hash of the name so a sender keeps one colour.
const NAME_COLOURS: &[&str] = &[
    "\x1b[31m", "\x1b[32m", "\x1b[33m", "\x1b[34m", "\x1b[35m", "\x1b[36m",
];

/// Whether to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    colour: bool,
}

impl Style {
    /// Plain text.
    pub const PLAIN: Style = Style { colour: false };

    /// Colour only for a terminal, and never when `NO_COLOR` is set to anything non-empty.
    pub fn detect(no_color: Option<OsString>, stdout_is_terminal: bool) -> Style {
        let opted_out = no_color.is_some_and(|value| !value.is_empty());
        Style {
            colour: stdout_is_terminal && !opted_out,
        }
    }

    /// Colour on (for tests and for callers that know better).
    pub fn coloured() -> Style {
        Style { colour: true }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("{code}{text}{RESET}")
        } else {
            text.to_string()
        }
    }

    fn name(&self, name: &str) -> String {
        let hash = name.bytes().fold(0usize, |hash, byte| {
            hash.wrapping_mul(31).wrapping_add(byte.into())
        });
        let colour = NAME_COLOURS[hash % NAME_COLOURS.len()];
        self.paint(&format!("{BOLD}{colour}"), name)
    }

    /// A received or found message: `12:00:01 #all alice: hello`, or for a private message
    /// `12:00:01 alice (private): hi`; `(unread)` after the time for messages that waited
    /// while this user was offline.
    pub fn message(&self, line: &MessageLine<'_>) -> String {
        let mut out = self.paint(DIM, &clock(line.sent_at));
        if line.unread {
            out.push(' ');
            out.push_str(&self.paint(YELLOW, "(unread)"));
        }
        out.push(' ');
        match line.place {
            Place::Group(group) => {
                out.push_str(&self.paint(DIM, &format!("#{group}")));
                out.push(' ');
                out.push_str(&self.name(line.sender));
            }
            Place::Private => {
                out.push_str(&self.name(line.sender));
                out.push_str(&self.paint(DIM, " (private)"));
            }
        }
        out.push_str(": ");
        out.push_str(line.body);
        out
    }

    /// A status line (connection changes, confirmations): `-- reconnecting --`.
    pub fn status(&self, text: &str) -> String {
        self.paint(YELLOW, &format!("-- {text} --"))
    }

    /// Informational output of a command, as is.
    pub fn info(&self, text: &str) -> String {
        text.to_string()
    }

    /// An error: `! what went wrong`.
    pub fn error(&self, text: &str) -> String {
        self.paint(RED, &format!("! {text}"))
    }

    /// `text` with every case-insensitive occurrence of each word of `query` marked.
    pub fn highlight(&self, text: &str, query: &str) -> String {
        let words: Vec<Vec<char>> = query
            .split_whitespace()
            .map(|word| word.chars().flat_map(char::to_lowercase).collect())
            .collect();
        let mut out = String::with_capacity(text.len());
        let mut index = 0;
        while index < text.len() {
            let rest = &text[index..];
            let hit = words.iter().filter_map(|word| match_len(rest, word)).max();
            match hit {
                Some(len) if len > 0 => {
                    let found = &rest[..len];
                    if self.colour {
                        out.push_str(&format!("{HIGHLIGHT}{found}{RESET}"));
                    } else {
                        out.push('*');
                        out.push_str(found);
                        out.push('*');
                    }
                    index += len;
                }
                _ => {
                    let next = rest.chars().next().map_or(1, char::len_utf8);
                    out.push_str(&rest[..next]);
                    index += next;
                }
            }
        }
        out
    }
}

/// Where a message was said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place<'a> {
    /// In a group, by name (or id when the name is unknown).
    Group(&'a str),
    /// Privately, between the sender and this user.
    Private,
}

/// The parts of a message line.
#[derive(Debug, Clone, Copy)]
pub struct MessageLine<'a> {
    /// Unix milliseconds.
    pub sent_at: i64,
    /// Group or private.
    pub place: Place<'a>,
    /// The sender's name.
    pub sender: &'a str,
    /// The text.
    pub body: &'a str,
    /// Received while this user was offline.
    pub unread: bool,
}

/// How many bytes at the start of `text` match `word` (lower case chars), ignoring case.
fn match_len(text: &str, word: &[char]) -> Option<usize> {
    if word.is_empty() {
        return None;
    }
    let mut wanted = word.iter();
    let mut pending = wanted.next();
    for (offset, c) in text.char_indices() {
        for lower in c.to_lowercase() {
            match pending {
                Some(&expected) if expected == lower => pending = wanted.next(),
                _ => return None,
            }
        }
        if pending.is_none() {
            return Some(offset + c.len_utf8());
        }
    }
    None
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

/// `HH:MM:SS` (UTC) of a Unix-millisecond time.
pub fn clock(ms: i64) -> String {
    let t = civil(ms);
    format!("{:02}:{:02}:{:02}", t.hour, t.minute, t.second)
}

/// RFC 3339 in UTC with milliseconds: `2026-11-22T08:30:01.250Z`.
pub fn rfc3339(ms: i64) -> String {
    let t = civil(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.millis
    )
}

/// A UTC calendar time.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    millis: u32,
}

/// The UTC calendar time of a Unix-millisecond time (Howard Hinnant's civil-from-days).
fn civil(ms: i64) -> Civil {
    let seconds = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000) as u32;
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: of_day / 3600,
        minute: of_day / 60 % 60,
        second: of_day % 60,
        millis,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        assert_eq!(Style::detect(None, true), Style::coloured());
        assert_eq!(Style::detect(None, false), Style::PLAIN);
        assert_eq!(Style::detect(Some("1".into()), true), Style::PLAIN);
        assert_eq!(
            Style::detect(Some("".into()), true),
            Style::coloured(),
            "an empty NO_COLOR does not opt out"
        );
    }

    #[test]
    fn plain_message_lines_show_time_place_sender_and_text() {
        let at = 1_700_000_000_000; // 2023-11-14T22:13:20Z
        let group = MessageLine {
            sent_at: at,
            place: Place::Group("all"),
            sender: "alice",
            body: "hello",
            unread: false,
        };
        assert_eq!(Style::PLAIN.message(&group), "22:13:20 #all alice: hello");
        let private = MessageLine {
            place: Place::Private,
            unread: true,
            ..group
        };
        assert_eq!(
            Style::PLAIN.message(&private),
            "22:13:20 (unread) alice (private): hello"
        );
    }

    #[test]
    fn coloured_lines_carry_escapes_and_plain_lines_none() {
        let line = MessageLine {
            sent_at: 0,
            place: Place::Group("all"),
            sender: "bob",
            body: "x",
            unread: true,
        };
        assert!(Style::coloured().message(&line).contains('\x1b'));
        assert!(!Style::PLAIN.message(&line).contains('\x1b'));
        assert!(!Style::PLAIN.error("e").contains('\x1b'));
        assert!(!Style::PLAIN.status("s").contains('\x1b'));
    }

    #[test]
    fn search_hits_are_marked_ignoring_case_in_any_script() {
        assert_eq!(
            Style::PLAIN.highlight("Lunch at noon, LUNCH!", "lunch"),
            "*Lunch* at noon, *LUNCH*!"
        );
        assert_eq!(
            Style::PLAIN.highlight("Grüße aus Köln", "köln grüße"),
            "*Grüße* aus *Köln*"
        );
        assert_eq!(Style::PLAIN.highlight("你好世界", "世界"), "你好*世界*");
        assert_eq!(Style::PLAIN.highlight("nothing", "zzz"), "nothing");
        assert!(Style::coloured().highlight("a b", "b").contains(HIGHLIGHT));
    }

    #[test]
    fn times_are_utc_calendar_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_250), "2023-11-14T22:13:20.250Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(clock(1_700_000_000_250), "22:13:20");
    }
}
