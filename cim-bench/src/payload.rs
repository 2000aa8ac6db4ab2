//! The message body every system carries: who sent it, its number, and when it was meant to be
//! sent, in printable ASCII (cim bodies are text) padded to the body size.
//!
//! ```text
//! S0000002aN000000000000001fT0000000005f5e100.......... (padded with '.' to `len` bytes)
//! ```
//!
//! The timestamp is nanoseconds since the generator's epoch ([`Clock`]), taken at the moment the
//! message was *scheduled* to be sent, so that a sender that falls behind an open-loop rate
//! shows up as latency instead of hiding it (no coordinated omission).

use std::time::Instant;

/// The shortest body that holds the header.
pub const HEADER_LEN: usize = 1 + 8 + 1 + 16 + 1 + 16;

/// What a received body says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The sender's index in the workload.
    pub sender: u32,
    /// The sender's message number (0, 1, 2...).
    pub seq: u64,
    /// When it was scheduled, in nanoseconds since the [`Clock`]'s epoch.
    pub sent_ns: u64,
}

/// The generator's monotonic clock, shared by senders and receivers (one process).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Writes a body of `len` bytes (at least [`HEADER_LEN`]) into `out`.
pub fn encode(out: &mut Vec<u8>, header: Header, len: usize) {
    out.clear();
    out.push(b'S');
    push_hex(out, u64::from(header.sender), 8);
    out.push(b'N');
    push_hex(out, header.seq, 16);
    out.push(b'T');
    push_hex(out, header.sent_ns, 16);
    out.resize(len.max(HEADER_LEN), b'.');
}

fn push_hex(out: &mut Vec<u8>, value: u64, digits: u32) {
    for i in (0..digits).rev() {
        let nibble = ((value >> (4 * i)) & 0xf) as u8;
        out.push(match nibble {
            0..=9 => b'0' + nibble,
            _ => b'a' + nibble - 10,
        });
    }
}

fn parse_hex(bytes: &[u8]) -> Option<u64> {
    bytes.iter().try_fold(0u64, |acc, &b| {
        let nibble = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some((acc << 4) | u64::from(nibble))
    })
}

/// Reads the header of a body; `None` if it is not one of ours.
pub fn decode(body: &[u8]) -> Option<Header> {
    if body.len() < HEADER_LEN || body[0] != b'S' || body[9] != b'N' || body[26] != b'T' {
        return None;
    }
    Some(Header {
        sender: u32::try_from(parse_hex(&body[1..9])?).ok()?,
        seq: parse_hex(&body[10..26])?,
        sent_ns: parse_hex(&body[27..43])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_round_trips_and_has_the_requested_length() {
        let header = Header {
            sender: 42,
            seq: 31,
            sent_ns: 100_000_000,
        };
        let mut body = Vec::new();
        encode(&mut body, header, 100);
        assert_eq!(body.len(), 100);
        assert!(body.is_ascii());
        assert_eq!(decode(&body), Some(header));
    }

    #[test]
    fn foreign_bodies_are_not_ours() {
        assert_eq!(decode(b"hello"), None);
        assert_eq!(decode(&[b'x'; 100]), None);
    }
}
