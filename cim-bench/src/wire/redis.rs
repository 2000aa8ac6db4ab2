//! Redis pub/sub over RESP2: `PING` as the handshake (Redis has no login without a password),
//! `SUBSCRIBE`, `PUBLISH` (whose integer reply counts as the acknowledgement), and
//! `message` pushes received. A user's messages go to channel `u.<index>`, a group's to
//! `g.<index>`.

use std::ops::Range;

use anyhow::{Result, bail};
use bytes::{Buf, BytesMut};

use super::{Conn, Counters, Decoder, Login, Target, Wire, read_until};

/// The Redis pub/sub protocol.
#[derive(Debug, Clone, Default)]
pub struct RedisWire;

/// One RESP value at the front of a buffer, by position.
#[derive(Debug, PartialEq, Eq)]
enum Value {
    /// `+OK`.
    Simple(Range<usize>),
    /// `-ERR ...`.
    Error(Range<usize>),
    /// `:1`.
    Integer(i64),
    /// `$5\r\nhello` (`None`: the null bulk string).
    Bulk(Option<Range<usize>>),
    /// `*3\r\n...`: the elements' bulk strings (nested arrays are skipped).
    Array(Vec<Option<Range<usize>>>),
}

fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| from + i)
}

fn parse_int(bytes: &[u8]) -> Result<i64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("redis: malformed number"))
}

/// Parses one value starting at `at`: the value and where it ends, or `None` if incomplete.
fn parse(buf: &[u8], at: usize) -> Result<Option<(Value, usize)>> {
    let Some(end) = line_end(buf, at) else {
        return Ok(None);
    };
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let line = at + 1..end;
    let next = end + 2;
    Ok(Some(match kind {
        b'+' => (Value::Simple(line), next),
        b'-' => (Value::Error(line), next),
        b':' => (Value::Integer(parse_int(&buf[line])?), next),
        b'$' => {
            let len = parse_int(&buf[line])?;
            if len < 0 {
                (Value::Bulk(None), next)
            } else {
                let len = len as usize;
                if buf.len() < next + len + 2 {
                    return Ok(None);
                }
                (Value::Bulk(Some(next..next + len)), next + len + 2)
            }
        }
        b'*' => {
            let count = parse_int(&buf[line])?;
            let mut items = Vec::with_capacity(count.max(0) as usize);
            let mut pos = next;
            for _ in 0..count.max(0) {
                let Some((item, after)) = parse(buf, pos)? else {
                    return Ok(None);
                };
                items.push(match item {
                    Value::Bulk(range) => range,
                    _ => None,
                });
                pos = after;
            }
            (Value::Array(items), pos)
        }
        other => bail!("redis: unexpected reply type {:?}", other as char),
    }))
}

fn command(out: &mut BytesMut, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

impl RedisWire {
    async fn subscribe(&self, conn: &mut Conn, channels: &[String]) -> Result<()> {
        let mut out = BytesMut::new();
        let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
        args.extend(channels.iter().map(String::as_bytes));
        command(&mut out, &args);
        conn.write_all(&out).await?;
        let mut confirmed = 0;
        while confirmed < channels.len() {
            let confirmation = read_until(conn, |buf| {
                let Some((value, end)) = parse(buf, 0)? else {
                    return Ok(None);
                };
                if let Value::Error(range) = &value {
                    bail!("redis: {}", String::from_utf8_lossy(&buf[range.clone()]));
                }
                let confirmation = matches!(&value, Value::Array(items)
                    if items.first().cloned().flatten().is_some_and(|r| &buf[r] == b"subscribe"));
                buf.advance(end);
                Ok(Some(confirmation))
            })
            .await?;
            if confirmation {
                confirmed += 1;
            }
        }
        Ok(())
    }
}

impl Wire for RedisWire {
    type Decoder = RedisDecoder;

    async fn handshake(
        &self,
        conn: &mut Conn,
        login: Login<'_>,
        subscribe_self: bool,
    ) -> Result<()> {
        conn.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
        read_until(conn, |buf| match parse(buf, 0)? {
            None => Ok(None),
            Some((Value::Simple(range), end)) if &buf[range.clone()] == b"PONG" => {
                buf.advance(end);
                Ok(Some(()))
            }
            Some((other, _)) => bail!("redis: unexpected answer to PING: {other:?}"),
        })
        .await?;
        if subscribe_self {
            self.subscribe(conn, &[format!("u.{}", login.address)])
                .await?;
        }
        Ok(())
    }

    async fn join(&self, conn: &mut Conn, groups: &[u64]) -> Result<()> {
        if groups.is_empty() {
            return Ok(());
        }
        let channels: Vec<String> = groups.iter().map(|g| format!("g.{g}")).collect();
        self.subscribe(conn, &channels).await
    }

    fn encode_send(&self, out: &mut BytesMut, _from: u32, to: Target, body: &[u8], _id: u64) {
        let channel = match to {
            Target::User(user) => format!("u.{user}"),
            Target::Group(group) => format!("g.{group}"),
        };
        command(out, &[b"PUBLISH", channel.as_bytes(), body]);
    }

    fn decoder(&self) -> RedisDecoder {
        RedisDecoder::default()
    }
}

/// Decodes `message` pushes and `PUBLISH` replies.
#[derive(Debug, Default)]
pub struct RedisDecoder {
    counters: Counters,
}

impl Decoder for RedisDecoder {
    fn decode(
        &mut self,
        buf: &mut BytesMut,
        _out: &mut BytesMut,
        on_message: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        let mut pos = 0;
        while let Some((value, end)) = parse(buf, pos)? {
            match value {
                Value::Array(items) if items.len() == 3 => {
                    if let (Some(kind), Some(payload)) = (&items[0], &items[2])
                        && &buf[kind.clone()] == b"message"
                    {
                        on_message(&buf[payload.clone()]);
                    }
                }
                Value::Integer(_) => self.counters.acks += 1,
                Value::Error(range) => {
                    self.counters.errors += 1;
                    self.counters.last_error =
                        Some(String::from_utf8_lossy(&buf[range]).into_owned());
                }
                _ => {}
            }
            pos = end;
        }
        buf.advance(pos);
        Ok(())
    }

    fn counters(&self) -> Counters {
        self.counters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_and_replies_are_told_apart() {
        let mut buf = BytesMut::from(
            &b"*3\r\n$7\r\nmessage\r\n$3\r\nu.1\r\n$5\r\nhello\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$3\r\nu.1\r\n$2\r\nh"[..],
        );
        let mut decoder = RedisDecoder::default();
        let mut seen = Vec::new();
        decoder
            .decode(&mut buf, &mut BytesMut::new(), &mut |m| {
                seen.push(m.to_vec())
            })
            .expect("decode");
        assert_eq!(seen, vec![b"hello".to_vec()]);
        assert_eq!(decoder.counters().acks, 1);
        buf.extend_from_slice(b"i\r\n");
        decoder
            .decode(&mut buf, &mut BytesMut::new(), &mut |m| {
                seen.push(m.to_vec())
            })
            .expect("decode");
        assert_eq!(seen.len(), 2);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_publish_is_a_resp_command() {
        let mut out = BytesMut::new();
        RedisWire.encode_send(&mut out, 0, Target::Group(4), b"hi", 0);
        assert_eq!(
            &out[..],
            b"*3\r\n$7\r\nPUBLISH\r\n$3\r\ng.4\r\n$2\r\nhi\r\n"
        );
    }
}
