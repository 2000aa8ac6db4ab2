//! The relay's protocol (see [`crate::relay`]): fixed binary frames.
//!
//! ```text
//! +----------------+---------+-------------+-----------------+
//! | u32 LE: length | u8 kind | u64 LE: arg | payload         |
//! +----------------+---------+-------------+-----------------+
//! ```
//!
//! `length` counts everything after itself. Kinds: `HELLO` (arg: the connection's id; answered
//! with `OK`), `JOIN` (arg: a topic; answered with `OK`), `SEND` (arg: the recipient's id,
//! forwarded as is), `PUBLISH` (arg: a topic, forwarded as is to every member), `OK`.

use anyhow::{Result, bail};
use bytes::{Buf, BufMut, BytesMut};

use super::{Conn, Counters, Decoder, Login, Target, Wire, read_until};

/// `HELLO`: register as the connection of id `arg`.
pub const HELLO: u8 = 1;
/// `JOIN`: receive topic `arg`'s publications.
pub const JOIN: u8 = 2;
/// `SEND`: to the connection of id `arg`.
pub const SEND: u8 = 3;
/// `PUBLISH`: to every member of topic `arg`.
pub const PUBLISH: u8 = 4;
/// `OK`: the answer to `HELLO` and `JOIN`.
pub const OK: u8 = 5;

/// Bytes after the length field before the payload.
pub const HEADER: usize = 1 + 8;

/// Appends one frame.
pub fn put_frame(out: &mut BytesMut, kind: u8, arg: u64, payload: &[u8]) {
    out.reserve(4 + HEADER + payload.len());
    out.put_u32_le((HEADER + payload.len()) as u32);
    out.put_u8(kind);
    out.put_u64_le(arg);
    out.extend_from_slice(payload);
}

/// The frame at the front of `buf` as (kind, arg, total length), if complete.
pub fn peek_frame(buf: &[u8]) -> Result<Option<(u8, u64, usize)>> {
    if buf.len() < 4 + HEADER {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len < HEADER {
        bail!("relay: frame shorter than its header");
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let mut arg = [0u8; 8];
    arg.copy_from_slice(&buf[5..13]);
    Ok(Some((buf[4], u64::from_le_bytes(arg), 4 + len)))
}

/// The relay protocol, client side.
#[derive(Debug, Clone, Default)]
pub struct RelayWire;

async fn request(conn: &mut Conn, kind: u8, arg: u64) -> Result<()> {
    let mut out = BytesMut::new();
    put_frame(&mut out, kind, arg, &[]);
    conn.write_all(&out).await?;
    read_until(conn, |buf| {
        let Some((kind, _, len)) = peek_frame(buf)? else {
            return Ok(None);
        };
        buf.advance(len);
        Ok((kind == OK).then_some(()))
    })
    .await
}

impl Wire for RelayWire {
    type Decoder = RelayDecoder;

    async fn handshake(
        &self,
        conn: &mut Conn,
        login: Login<'_>,
        _subscribe_self: bool,
    ) -> Result<()> {
        request(conn, HELLO, login.address).await
    }

    async fn join(&self, conn: &mut Conn, groups: &[u64]) -> Result<()> {
        for group in groups {
            request(conn, JOIN, *group).await?;
        }
        Ok(())
    }

    fn encode_send(&self, out: &mut BytesMut, _from: u32, to: Target, body: &[u8], _id: u64) {
        match to {
            Target::User(user) => put_frame(out, SEND, user, body),
            Target::Group(group) => put_frame(out, PUBLISH, group, body),
        }
    }

    fn decoder(&self) -> RelayDecoder {
        RelayDecoder::default()
    }
}

/// Decodes forwarded frames.
#[derive(Debug, Default)]
pub struct RelayDecoder {
    counters: Counters,
}

impl Decoder for RelayDecoder {
    fn decode(
        &mut self,
        buf: &mut BytesMut,
        _out: &mut BytesMut,
        on_message: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        while let Some((kind, _, len)) = peek_frame(buf)? {
            match kind {
                SEND | PUBLISH => on_message(&buf[4 + HEADER..len]),
                OK => self.counters.acks += 1,
                _ => {}
            }
            buf.advance(len);
        }
        Ok(())
    }

    fn counters(&self) -> Counters {
        self.counters.clone()
    }
}
