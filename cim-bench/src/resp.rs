//! A few Redis commands for the bench's own bookkeeping (the account vault, clearing a
//! database between cluster runs): one command, one reply, on a plain connection.

use std::net::SocketAddr;

use anyhow::{Result, bail};
use bytes::{Buf, BytesMut};

use crate::wire::Conn;

/// A Redis reply, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `:1`.
    Integer(i64),
    /// A bulk string (`None`: null).
    Bulk(Option<Vec<u8>>),
    /// An array of bulk strings.
    Array(Vec<Option<Vec<u8>>>),
}

/// A connection to a Redis for bookkeeping.
#[derive(Debug)]
pub struct RedisCommands {
    conn: Conn,
}

impl RedisCommands {
    /// Connects to `addr` and selects `db`.
    pub async fn connect(addr: SocketAddr, db: u32) -> Result<RedisCommands> {
        let mut redis = RedisCommands {
            conn: Conn::connect(addr, None).await?,
        };
        redis.command(&["SELECT", &db.to_string()]).await?;
        Ok(redis)
    }

    /// Runs one command.
    pub async fn command(&mut self, args: &[&str]) -> Result<Reply> {
        let mut out = BytesMut::new();
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
        self.conn.write_all(&out).await?;
        loop {
            if let Some((reply, end)) = parse(&self.conn.buf)? {
                self.conn.buf.advance(end);
                return reply;
            }
            self.conn.read_more().await?;
        }
    }
}

fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], at + end + 2))
}

fn number(bytes: &[u8]) -> Result<i64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("redis: malformed number"))
}

fn bulk(buf: &[u8], at: usize) -> Result<Option<(Option<Vec<u8>>, usize)>> {
    let Some((head, next)) = line(buf, at) else {
        return Ok(None);
    };
    match head.first() {
        Some(b'$') => {
            let len = number(&head[1..])?;
            if len < 0 {
                return Ok(Some((None, next)));
            }
            let len = len as usize;
            if buf.len() < next + len + 2 {
                return Ok(None);
            }
            Ok(Some((Some(buf[next..next + len].to_vec()), next + len + 2)))
        }
        Some(b':') => Ok(Some((Some(head[1..].to_vec()), next))),
        _ => bail!("redis: unexpected array element"),
    }
}

/// A complete reply at the front of `buf` (the error as `Err` inside), and its length.
fn parse(buf: &[u8]) -> Result<Option<(Result<Reply>, usize)>> {
    let Some((head, next)) = line(buf, 0) else {
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(&head[1..]).into_owned();
    Ok(Some(match head.first() {
        Some(b'+') => (Ok(Reply::Simple(text())), next),
        Some(b'-') => (Err(anyhow::anyhow!("redis: {}", text())), next),
        Some(b':') => (Ok(Reply::Integer(number(&head[1..])?)), next),
        Some(b'$') => match bulk(buf, 0)? {
            Some((value, end)) => (Ok(Reply::Bulk(value)), end),
            None => return Ok(None),
        },
        Some(b'*') => {
            let count = number(&head[1..])?.max(0);
            let mut items = Vec::with_capacity(count as usize);
            let mut pos = next;
            for _ in 0..count {
                match bulk(buf, pos)? {
                    Some((value, end)) => {
                        items.push(value);
                        pos = end;
                    }
                    None => return Ok(None),
                }
            }
            (Ok(Reply::Array(items)), pos)
        }
        _ => bail!("redis: unexpected reply"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_wait_for_their_last_element() {
        assert!(parse(b"*2\r\n$1\r\na\r\n$2\r\nb").expect("parse").is_none());
        let (reply, len) = parse(b"*2\r\n$1\r\na\r\n$-1\r\n+x")
            .expect("parse")
            .expect("whole");
        assert_eq!(
            reply.expect("not an error"),
            Reply::Array(vec![Some(b"a".to_vec()), None])
        );
        assert_eq!(len, 16);
    }
}
