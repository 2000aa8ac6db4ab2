//! The client side of each system's protocol, as the workloads need it: log in (the protocol's
//! handshake), subscribe, encode a send, decode what arrives.
//!
//! Every protocol is a small hand-written codec over a plain [`TcpStream`], so the load
//! generator spends about the same effort per message on every system and the workloads are
//! written once, generic over [`Wire`]. A workload task owns a [`Conn`] and loops: read, let the
//! [`Decoder`] find the messages and produce the replies the protocol requires (cim's delivery
//! acknowledgements, NATS's `PONG`), write those back.

pub mod cim;
pub mod mqtt;
pub mod nats;
pub mod redis;
pub mod relay;

use std::net::{IpAddr, SocketAddr};

use anyhow::{Result, bail};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;

/// One client connection: the socket and the bytes read but not decoded yet.
#[derive(Debug)]
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read and not consumed yet.
    pub buf: BytesMut,
}

impl Conn {
    /// Connects to `addr`, from `source` if given (several loopback source addresses let a
    /// generator open more connections to one server than one address has ephemeral ports).
    pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<Conn> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
        })
    }

    /// Reads more bytes into the buffer; an error at end of stream.
    pub async fn read_more(&mut self) -> Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        Ok(n)
    }

    /// Writes all of `bytes`.
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }
}

/// Who a message is for, in the system's own addressing (cim user and group ids; an index
/// for the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One user.
    User(u64),
    /// Every member of a group.
    Group(u64),
}

/// What a connection logs in as.
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    /// The user's address in the system (cim user id, else the user's index).
    pub address: u64,
    /// cim only: the token from the route.
    pub token: Option<&'a str>,
}

/// What a decoder counted besides messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Acknowledgements of sends (cim `SendAck`, JetStream publish acks, Redis `PUBLISH`
    /// replies, relay OKs).
    pub acks: u64,
    /// Error replies.
    pub errors: u64,
    /// The last error's text.
    pub last_error: Option<String>,
}

/// A protocol, client side.
pub trait Wire: Clone + Send + Sync + 'static {
    /// The per-connection decoding state.
    type Decoder: Decoder;

    /// The protocol's handshake on a fresh connection (cim `Login`/`LoginResult`, NATS
    /// `CONNECT`+`PING`/`PONG`, MQTT `CONNECT`/`CONNACK`, Redis `PING`, relay `HELLO`), and
    /// for protocols where that is separate, the subscription to the user's own messages.
    fn handshake(
        &self,
        conn: &mut Conn,
        login: Login<'_>,
        subscribe_self: bool,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Subscribes the connection to groups (cim: nothing, membership is kept by the server).
    fn join(&self, conn: &mut Conn, groups: &[u64]) -> impl Future<Output = Result<()>> + Send;

    /// Appends a send of `body` from sender `from` (its user index) to `to` to `out`. `id` is
    /// unique per sender.
    fn encode_send(&self, out: &mut BytesMut, from: u32, to: Target, body: &[u8], id: u64);

    /// A decoder for one connection.
    fn decoder(&self) -> Self::Decoder;
}

/// The receiving half of a protocol for one connection.
pub trait Decoder: Send + 'static {
    /// Consumes every complete frame at the front of `buf`: calls `on_message` with each
    /// message body, appends the replies the protocol requires to `out`.
    fn decode(
        &mut self,
        buf: &mut BytesMut,
        out: &mut BytesMut,
        on_message: &mut dyn FnMut(&[u8]),
    ) -> Result<()>;

    /// Called every few milliseconds when the connection is quiet: replies that were being
    /// batched (cim delivery acknowledgements) go out now.
    fn tick(&mut self, _out: &mut BytesMut) {}

    /// What was counted so far.
    fn counters(&self) -> Counters;
}

/// Reads until `done` finds what it waits for in the buffer (and consumes it); used by
/// handshakes, which are one request and one answer.
pub async fn read_until<T>(
    conn: &mut Conn,
    mut done: impl FnMut(&mut BytesMut) -> Result<Option<T>>,
) -> Result<T> {
    loop {
        if let Some(value) = done(&mut conn.buf)? {
            return Ok(value);
        }
        conn.read_more().await?;
    }
}
