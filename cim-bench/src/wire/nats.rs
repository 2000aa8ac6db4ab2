//! The NATS client protocol (text): `CONNECT` + `PING`/`PONG` to log in, `SUB` per subject,
//! `PUB`, and `MSG` frames received. A user's messages go to subject `u.<index>`, a group's to
//! `g.<index>`.
//!
//! With JetStream (`nats-js`), a stream stores every `u.>` and `g.>` message in a file, and
//! each publish asks for JetStream's acknowledgement (sent once the message is stored) on the
//! sender's subject `ack.<index>`: the same contract as a cim `SendAck`. Recipients still
//! receive through their plain subscriptions.

use anyhow::{Result, bail};
use bytes::{Buf, BytesMut};

use super::{Conn, Counters, Decoder, Login, Target, Wire, read_until};

/// The NATS protocol.
#[derive(Debug, Clone, Default)]
pub struct NatsWire {
    /// Publish with JetStream acknowledgements (the server must have the stream).
    jetstream: bool,
}

impl NatsWire {
    /// Core NATS: publish and forget.
    pub fn core() -> NatsWire {
        NatsWire { jetstream: false }
    }

    /// JetStream: every publish is acknowledged once stored.
    pub fn jetstream() -> NatsWire {
        NatsWire { jetstream: true }
    }
}

/// The prefix of the subjects JetStream's acknowledgements come back on.
const ACK_SUBJECT: &str = "ack.";

const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":false,\"name\":\"cim-bench\",\"lang\":\"rust\",\"version\":\"0.1.0\",\"protocol\":1,\"echo\":false}\r\nPING\r\n";

/// Waits for the `PONG` that answers our `PING`, skipping `INFO` and answering server pings.
async fn await_pong(conn: &mut Conn) -> Result<()> {
    loop {
        let mut pong = false;
        let mut reply = BytesMut::new();
        while let Some(end) = find_crlf(&conn.buf) {
            let line = conn.buf.split_to(end + 2);
            if line.starts_with(b"PONG") {
                pong = true;
                break;
            } else if line.starts_with(b"PING") {
                reply.extend_from_slice(b"PONG\r\n");
            } else if line.starts_with(b"-ERR") {
                bail!("nats: {}", String::from_utf8_lossy(&line).trim_end());
            }
        }
        if !reply.is_empty() {
            conn.write_all(&reply).await?;
        }
        if pong {
            return Ok(());
        }
        conn.read_more().await?;
    }
}

impl Wire for NatsWire {
    type Decoder = NatsDecoder;

    async fn handshake(
        &self,
        conn: &mut Conn,
        login: Login<'_>,
        subscribe_self: bool,
    ) -> Result<()> {
        // The server speaks first (INFO); CONNECT and PING may go at once.
        read_until(conn, |buf| Ok(find_crlf(buf).map(|_| ()))).await?;
        conn.write_all(CONNECT).await?;
        await_pong(conn).await?;
        if subscribe_self {
            let sub = format!("SUB u.{0} {0}\r\nPING\r\n", login.address);
            conn.write_all(sub.as_bytes()).await?;
            await_pong(conn).await?;
        }
        if self.jetstream {
            // Subscription id: one no user or group uses.
            let sub = format!(
                "SUB {ACK_SUBJECT}{} {}\r\nPING\r\n",
                login.address,
                u64::MAX / 2
            );
            conn.write_all(sub.as_bytes()).await?;
            await_pong(conn).await?;
        }
        Ok(())
    }

    async fn join(&self, conn: &mut Conn, groups: &[u64]) -> Result<()> {
        if groups.is_empty() {
            return Ok(());
        }
        let mut subs = String::new();
        for group in groups {
            // Subscription ids only need to be unique per connection; users' are their index.
            subs.push_str(&format!("SUB g.{group} {}\r\n", u64::MAX - group));
        }
        subs.push_str("PING\r\n");
        conn.write_all(subs.as_bytes()).await?;
        await_pong(conn).await
    }

    fn encode_send(&self, out: &mut BytesMut, from: u32, to: Target, body: &[u8], _id: u64) {
        let subject = match to {
            Target::User(user) => format!("u.{user}"),
            Target::Group(group) => format!("g.{group}"),
        };
        let header = if self.jetstream {
            format!("PUB {subject} {ACK_SUBJECT}{from} {}\r\n", body.len())
        } else {
            format!("PUB {subject} {}\r\n", body.len())
        };
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }

    fn decoder(&self) -> NatsDecoder {
        NatsDecoder::default()
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Parses `MSG <subject> <sid> [reply-to] <#bytes>` lines and their payloads.
#[derive(Debug, Default)]
pub struct NatsDecoder {
    counters: Counters,
}

impl Decoder for NatsDecoder {
    fn decode(
        &mut self,
        buf: &mut BytesMut,
        out: &mut BytesMut,
        on_message: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        loop {
            let Some(end) = find_crlf(buf) else {
                return Ok(());
            };
            let line = &buf[..end];
            if line.starts_with(b"MSG ") {
                let len: usize = line
                    .rsplit(|b| *b == b' ')
                    .next()
                    .and_then(|word| std::str::from_utf8(word).ok())
                    .and_then(|word| word.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("nats: malformed MSG line"))?;
                let total = end + 2 + len + 2;
                if buf.len() < total {
                    buf.reserve(total - buf.len());
                    return Ok(());
                }
                let payload = &buf[end + 2..end + 2 + len];
                if line[4..].starts_with(ACK_SUBJECT.as_bytes()) {
                    // A JetStream acknowledgement: `{"stream":..,"seq":..}` or an error.
                    if payload.windows(7).any(|w| w == b"\"error\"") {
                        self.counters.errors += 1;
                        self.counters.last_error =
                            Some(String::from_utf8_lossy(payload).into_owned());
                    } else {
                        self.counters.acks += 1;
                    }
                } else {
                    on_message(payload);
                }
                buf.advance(total);
                continue;
            }
            if line.starts_with(b"PING") {
                out.extend_from_slice(b"PONG\r\n");
            } else if line.starts_with(b"-ERR") {
                self.counters.errors += 1;
                self.counters.last_error = Some(String::from_utf8_lossy(line).into_owned());
            }
            // +OK, PONG, INFO: nothing to do.
            buf.advance(end + 2);
        }
    }

    fn counters(&self) -> Counters {
        self.counters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_across_reads_are_decoded_once_complete() {
        let mut decoder = NatsDecoder::default();
        let mut out = BytesMut::new();
        let mut seen = Vec::new();
        let mut buf = BytesMut::from(&b"PING\r\nMSG u.1 1 5\r\nhel"[..]);
        decoder
            .decode(&mut buf, &mut out, &mut |m| seen.push(m.to_vec()))
            .expect("decode");
        assert!(seen.is_empty());
        assert_eq!(&out[..], b"PONG\r\n");
        buf.extend_from_slice(b"lo\r\nMSG g.2 9 reply 2\r\nhi\r\n");
        decoder
            .decode(&mut buf, &mut out, &mut |m| seen.push(m.to_vec()))
            .expect("decode");
        assert_eq!(seen, vec![b"hello".to_vec(), b"hi".to_vec()]);
        assert!(buf.is_empty());
    }

    #[test]
    fn jetstream_acknowledgements_are_counted_not_delivered() {
        let mut decoder = NatsDecoder::default();
        let mut out = BytesMut::new();
        let mut seen = Vec::new();
        let ok = br#"{"stream":"BENCH","seq":7}"#;
        let err = br#"{"error":{"code":503,"description":"no responders"}}"#;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(format!("MSG ack.3 9 {}\r\n", ok.len()).as_bytes());
        buf.extend_from_slice(ok);
        buf.extend_from_slice(format!("\r\nMSG ack.3 9 {}\r\n", err.len()).as_bytes());
        buf.extend_from_slice(err);
        buf.extend_from_slice(b"\r\nMSG u.3 3 2\r\nhi\r\n");
        decoder
            .decode(&mut buf, &mut out, &mut |m| seen.push(m.to_vec()))
            .expect("decode");
        assert_eq!(seen, vec![b"hi".to_vec()]);
        let counters = decoder.counters();
        assert_eq!((counters.acks, counters.errors), (1, 1));
    }

    #[test]
    fn jetstream_publishes_ask_for_an_acknowledgement_on_the_senders_subject() {
        let mut out = BytesMut::new();
        NatsWire::jetstream().encode_send(&mut out, 2, Target::User(5), b"hey", 1);
        assert_eq!(&out[..], b"PUB u.5 ack.2 3\r\nhey\r\n");
        out.clear();
        NatsWire::core().encode_send(&mut out, 2, Target::User(5), b"hey", 1);
        assert_eq!(&out[..], b"PUB u.5 3\r\nhey\r\n");
    }
}
