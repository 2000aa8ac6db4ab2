//! The server's side of a client connection's byte stream: frames in, frames and pre-encoded
//! deliveries out, error frames, and a close that lets the last frame arrive.
//!
//! Deliveries reach a connection already encoded (see [`Delivery`]), so they are written as
//! they are; every other frame goes through [`FrameCodec`] and its size check. An idle
//! connection holds no buffer (see [`ClientStream`]).
//!
//! Closing needs care. A server that closes a socket with unread bytes in its receive buffer
//! (the rest of an oversized frame, say) makes the kernel send a reset, and the client may then
//! lose the error frame written just before. So [`close`] half-closes the write side, then reads
//! and discards what the client still sends, briefly, before dropping the socket.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use cim_core::{ErrorKind, StoredMessage};
use cim_pipeline::Delivery;
use cim_proto::v1::{self, Kicked};
use cim_proto::{Body, ErrorCode, Frame, FrameCodec, FrameError, KickReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::Encoder;

/// How long [`close`] waits for the client to finish sending before it drops the socket.
const LINGER: Duration = Duration::from_millis(500);
/// How much [`close`] reads and discards at most.
const LINGER_BYTES: usize = 1 << 20;

/// Something to write to a client.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A frame to encode.
    Frame(Frame),
    /// A `Deliver` frame encoded once for many connections.
    Delivery(Arc<Delivery>),
}

impl From<Body> for Outbound {
    fn from(body: Body) -> Self {
        Outbound::Frame(body.into())
    }
}

/// How much one read takes from the socket at most: the scratch buffer on the reading task's
/// stack, so an idle connection holds no read buffer.
const READ_CHUNK: usize = 8 * 1024;

/// How the client's side of a connection ended.
#[derive(Debug)]
pub(crate) enum ReadEnd {
    /// The client closed the connection (or reset it).
    Closed,
    /// The client sent something that is not a frame, or a frame over the limit.
    Failed(FrameError),
}

/// A client connection's byte stream: frames in, [`Outbound`] items out.
///
/// Built for many mostly idle connections and for batches. Between frames it holds no buffer:
/// a read waits for the socket to be readable, then reads into a scratch buffer on the stack
/// and keeps only the bytes of a frame not yet complete. Writes are queued in a buffer that is
/// allocated by the first item and released by the flush that writes it, so one flush carries
/// every answer to a batch of frames and every delivery queued meanwhile.
#[derive(Debug)]
pub(crate) struct ClientStream {
    socket: TcpStream,
    codec: FrameCodec<Frame>,
    /// The start of a frame whose rest has not arrived; empty between frames.
    partial: BytesMut,
    /// How the client's side ended, once known, after the frames read before it.
    end: Option<ReadEnd>,
    /// Queued bytes to write; unallocated while nothing is queued.
    out: BytesMut,
}

impl ClientStream {
    /// A stream over `socket` that refuses frames longer than `max_frame_len` both ways.
    pub(crate) fn new(socket: TcpStream, max_frame_len: usize) -> Self {
        ClientStream {
            socket,
            codec: FrameCodec::new(max_frame_len),
            partial: BytesMut::new(),
            end: None,
            out: BytesMut::new(),
        }
    }

    /// Waits for the client's next frames and returns every complete one that has arrived
    /// (at least one), or how the client's side ended. Cancel-safe: nothing is lost when the
    /// wait is dropped.
    ///
    /// The wait holds no state of its own (the socket's registration keeps the waker), so it
    /// adds nothing to the future of a connection that waits for its client.
    pub(crate) async fn read(&mut self) -> Result<Vec<Frame>, ReadEnd> {
        std::future::poll_fn(|cx| self.poll_frames(cx)).await
    }

    fn poll_frames(&mut self, cx: &mut Context<'_>) -> Poll<Result<Vec<Frame>, ReadEnd>> {
        loop {
            if let Some(end) = self.end.take() {
                return Poll::Ready(Err(end));
            }
            match self.socket.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ReadEnd::Failed(e.into()))),
                Poll::Ready(Ok(())) => {}
            }
            let frames = self.read_ready();
            if !frames.is_empty() {
                return Poll::Ready(Ok(frames));
            }
        }
    }

    /// Reads what the socket holds now, without waiting; the complete frames in it. Records
    /// the end of the stream, if it came.
    fn read_ready(&mut self) -> Vec<Frame> {
        let mut chunk = [0u8; READ_CHUNK];
        let read = match self.socket.try_read(&mut chunk) {
            Ok(0) => {
                self.end = Some(ReadEnd::Closed);
                return Vec::new();
            }
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Vec::new(),
            Err(e) => {
                self.end = Some(match e.kind() {
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                        ReadEnd::Closed
                    }
                    _ => ReadEnd::Failed(e.into()),
                });
                return Vec::new();
            }
        };
        let mut frames = Vec::new();
        if self.partial.is_empty() {
            let used = self.decode(&chunk[..read], &mut frames);
            if self.end.is_none() {
                self.partial.extend_from_slice(&chunk[used..read]);
            }
        } else {
            self.partial.extend_from_slice(&chunk[..read]);
            let partial = std::mem::take(&mut self.partial);
            let used = self.decode(&partial, &mut frames);
            if self.end.is_none() && used < partial.len() {
                // Still incomplete: keep the buffer (a large frame arrives over many reads).
                self.partial = partial;
                self.partial.advance(used);
            }
        }
        frames
    }

    /// Decodes the complete frames at the front of `bytes` into `frames`; the bytes used.
    /// Records a malformed frame as the end of the stream.
    fn decode(&mut self, bytes: &[u8], frames: &mut Vec<Frame>) -> usize {
        let mut used = 0;
        while used < bytes.len() {
            match self.codec.decode_slice(&bytes[used..]) {
                Ok(Some((frame, len))) => {
                    frames.push(frame);
                    used += len;
                }
                Ok(None) => break,
                Err(e) => {
                    self.end = Some(ReadEnd::Failed(e));
                    break;
                }
            }
        }
        used
    }

    /// Queues `item` for the next [`flush`](Self::flush).
    pub(crate) fn queue(&mut self, item: Outbound) -> Result<(), FrameError> {
        match item {
            Outbound::Frame(frame) => self.codec.encode(frame, &mut self.out),
            Outbound::Delivery(delivery) => {
                self.queue_delivery(delivery);
                Ok(())
            }
        }
    }

    /// Queues an encoded delivery for the next [`flush`](Self::flush).
    pub(crate) fn queue_delivery(&mut self, delivery: Arc<Delivery>) {
        self.out.extend_from_slice(&delivery.frame);
    }

    /// How many bytes are queued.
    pub(crate) fn queued(&self) -> usize {
        self.out.len()
    }

    /// Writes what is queued without waiting; true once everything is written (the write
    /// buffer is then released), false if the socket is full.
    pub(crate) fn try_flush(&mut self) -> std::io::Result<bool> {
        while !self.out.is_empty() {
            match self.socket.try_write(&self.out) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(written) => self.out.advance(written),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.out = BytesMut::new();
        Ok(true)
    }

    /// Writes everything queued, then releases the write buffer. A flush cut short (by a
    /// timeout) keeps what it has not written yet, so a later flush goes on where it stopped.
    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        while !self.out.is_empty() {
            if self.socket.write_buf(&mut self.out).await? == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
        }
        self.out = BytesMut::new();
        Ok(())
    }

    /// The socket, for the close.
    fn into_socket(self) -> TcpStream {
        self.socket
    }
}

/// An `Error` frame.
pub(crate) fn error_frame(
    code: ErrorCode,
    text: impl Into<String>,
    client_msg_id: &str,
) -> Outbound {
    Body::Error(v1::Error {
        code: code as i32,
        text: text.into(),
        client_msg_id: client_msg_id.to_string(),
        ..Default::default()
    })
    .into()
}

/// The `Error` frame for a failed operation: its kind as the wire code, its message, and the
/// wait a rate limit asks for.
pub(crate) fn failure_frame(error: &cim_core::Error, client_msg_id: &str) -> Outbound {
    let retry_after_ms = error.retry_after().map_or(0, |wait| {
        u32::try_from(wait.as_millis().max(1)).unwrap_or(u32::MAX)
    });
    Body::Error(v1::Error {
        code: error_code(error.kind()) as i32,
        text: error.message().to_string(),
        client_msg_id: client_msg_id.to_string(),
        retry_after_ms,
        ..Default::default()
    })
    .into()
}

/// The `Error { UNDELIVERABLE }` that replaces a stored message no frame can carry.
pub(crate) fn undeliverable_frame(message: &StoredMessage, why: &cim_core::Error) -> Outbound {
    Body::Error(v1::Error {
        code: ErrorCode::Undeliverable as i32,
        text: format!(
            "message {} of {} cannot be delivered and is skipped: {}",
            message.id,
            message.conversation,
            why.message()
        ),
        conversation: message.conversation.to_string(),
        seq: message.seq.0,
        message_id: message.id.0,
        ..Default::default()
    })
    .into()
}

/// A `Kicked` frame.
pub(crate) fn kicked_frame(reason: KickReason) -> Outbound {
    let text = match reason {
        KickReason::Replaced => "you logged in elsewhere",
        KickReason::ServerShutdown => {
            "the server is shutting down; log in again through the route to get another server"
        }
        KickReason::Idle => "no frame within the idle timeout; ping more often",
        KickReason::LoggedOut => "you logged out",
        KickReason::TokenExpired => {
            "your login token expired; log in again (clients refresh it before it expires)"
        }
        KickReason::Unspecified => "the server closed the connection",
    };
    Body::Kicked(Kicked {
        reason: reason as i32,
        text: text.into(),
    })
    .into()
}

/// The `Error` frame for a frame that could not be read, or `None` when the connection itself
/// failed (nothing can be written then).
pub(crate) fn frame_error(error: &FrameError) -> Option<Outbound> {
    let code = match error {
        FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        FrameError::Io(_) => return None,
        _ => ErrorCode::MalformedFrame,
    };
    Some(error_frame(
        code,
        format!("{error}; closing the connection"),
        "",
    ))
}

/// The wire error code for a failed operation: the one place kinds become codes.
pub(crate) fn error_code(kind: ErrorKind) -> ErrorCode {
    match kind {
        ErrorKind::InvalidInput
        | ErrorKind::Unsupported
        | ErrorKind::Conflict
        | ErrorKind::AlreadyExists => ErrorCode::InvalidInput,
        ErrorKind::NotFound => ErrorCode::UnknownRecipient,
        ErrorKind::Unauthenticated => ErrorCode::Unauthenticated,
        ErrorKind::PermissionDenied => ErrorCode::Forbidden,
        ErrorKind::RateLimited => ErrorCode::RateLimited,
        ErrorKind::Unavailable | ErrorKind::Timeout => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

/// Writes what is queued and `last` (if any), then closes the connection so that the client
/// can read it.
pub(crate) async fn close(
    mut stream: ClientStream,
    last: Option<Outbound>,
    write_timeout: Duration,
) {
    if let Some(last) = last {
        let _ = stream.queue(last);
    }
    if !matches!(timeout(write_timeout, stream.flush()).await, Ok(Ok(()))) {
        return;
    }
    let mut socket = stream.into_socket();
    if timeout(write_timeout, socket.shutdown()).await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = vec![0u8; 8192];
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    };
    let _ = timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use cim_proto::v1::{Ping, Pong};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    /// A connected pair: the server's stream and the client's socket.
    async fn pair(max_frame_len: usize) -> (ClientStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (ClientStream::new(server, max_frame_len), client)
    }

    fn encoded(frames: &[Frame]) -> Vec<u8> {
        let mut codec: FrameCodec<Frame> = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        for frame in frames {
            codec.encode(frame, &mut buf).expect("encode");
        }
        buf.to_vec()
    }

    fn ping(nonce: u64) -> Frame {
        Body::Ping(Ping { nonce }).into()
    }

    #[tokio::test]
    async fn frames_sent_together_are_read_as_one_batch() {
        let (mut stream, mut client) = pair(1024).await;
        client
            .write_all(&encoded(&[ping(1), ping(2), ping(3)]))
            .await
            .expect("write");
        let frames = stream.read().await.expect("frames");
        assert_eq!(frames, vec![ping(1), ping(2), ping(3)]);
        assert_eq!(
            stream.partial.capacity(),
            0,
            "nothing is kept between frames"
        );
    }

    #[tokio::test]
    async fn a_frame_split_over_many_writes_is_read_whole_and_its_buffer_released() {
        let (mut stream, mut client) = pair(1024).await;
        let bytes = encoded(&[ping(u64::MAX), ping(9)]);
        let split = bytes.len() - 3;
        // The first frame whole, the second cut short: one frame now, the rest kept.
        client.write_all(&bytes[..split]).await.expect("write");
        assert_eq!(stream.read().await.expect("frames"), vec![ping(u64::MAX)]);
        assert!(
            !stream.partial.is_empty(),
            "the second frame's start is kept"
        );
        client.write_all(&bytes[split..]).await.expect("write");
        assert_eq!(stream.read().await.expect("frames"), vec![ping(9)]);
        assert_eq!(
            stream.partial.capacity(),
            0,
            "the partial buffer is released"
        );
    }

    #[tokio::test]
    async fn frames_before_a_malformed_one_are_served_then_the_error_ends_the_stream() {
        let (mut stream, mut client) = pair(1024).await;
        let mut bytes = encoded(&[ping(1)]);
        bytes.extend_from_slice(&[0x02, 0xff, 0xff]);
        client.write_all(&bytes).await.expect("write");
        assert_eq!(stream.read().await.expect("frames"), vec![ping(1)]);
        match stream.read().await {
            Err(ReadEnd::Failed(FrameError::Malformed(_))) => {}
            other => panic!("expected a malformed frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_oversized_frame_fails_on_its_prefix() {
        let (mut stream, mut client) = pair(16).await;
        // Announces 1 MiB and sends only the prefix.
        let mut prefix = BytesMut::new();
        prost::encoding::encode_varint(1 << 20, &mut prefix);
        client.write_all(&prefix).await.expect("write");
        match stream.read().await {
            Err(ReadEnd::Failed(FrameError::TooLarge { len, max: 16 })) => {
                assert_eq!(len, 1 << 20);
            }
            other => panic!("expected a frame over the limit, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_closed_client_ends_the_stream() {
        let (mut stream, client) = pair(1024).await;
        drop(client);
        assert!(matches!(stream.read().await, Err(ReadEnd::Closed)));
    }

    #[tokio::test]
    async fn queued_items_go_out_in_one_flush_and_the_write_buffer_is_released() {
        let (mut stream, mut client) = pair(1024).await;
        let pong = |nonce| Frame::from(Body::Pong(Pong { nonce }));
        stream.queue(Outbound::Frame(pong(1))).expect("queue");
        stream.queue(Outbound::Frame(pong(2))).expect("queue");
        assert!(stream.queued() > 0);
        stream.flush().await.expect("flush");
        assert_eq!(stream.out.capacity(), 0, "no write buffer while idle");
        let expected = encoded(&[pong(1), pong(2)]);
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(got, expected);
    }
}
