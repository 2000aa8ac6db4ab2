//! The server's side of a client connection's byte stream: frames in, frames and pre-encoded
//! deliveries out, error frames, and a close that lets the last frame arrive.
//!
//! Deliveries reach a connection already encoded (see [`Delivery`]), so the codec writes them
//! as they are; every other frame goes through [`FrameCodec`] and its size check.
//!
//! Closing needs care. A server that closes a socket with unread bytes in its receive buffer
//! (the rest of an oversized frame, say) makes the kernel send a reset, and the client may then
//! lose the error frame written just before. So [`close`] half-closes the write side, then reads
//! and discards what the client still sends, briefly, before dropping the socket.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use cim_core::{ErrorKind, StoredMessage};
use cim_pipeline::Delivery;
use cim_proto::v1::{self, Kicked};
use cim_proto::{Body, ErrorCode, Frame, FrameCodec, FrameError, KickReason};
use futures::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::{Decoder, Encoder, Framed};

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

/// Decodes client frames; encodes [`Outbound`] items.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientCodec {
    frames: FrameCodec<Frame>,
}

impl ClientCodec {
    pub(crate) fn new(max_frame_len: usize) -> Self {
        ClientCodec {
            frames: FrameCodec::new(max_frame_len),
        }
    }
}

impl Decoder for ClientCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        self.frames.decode(src)
    }
}

impl Encoder<Outbound> for ClientCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Outbound, dst: &mut BytesMut) -> Result<(), FrameError> {
        match item {
            Outbound::Frame(frame) => self.frames.encode(frame, dst),
            Outbound::Delivery(delivery) => {
                dst.extend_from_slice(&delivery.frame);
                Ok(())
            }
        }
    }
}

/// A client connection, framed.
pub(crate) type ClientFramed = Framed<TcpStream, ClientCodec>;

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

/// Writes `last` (if any), then closes the connection so that the client can read it.
pub(crate) async fn close(
    mut framed: ClientFramed,
    last: Option<Outbound>,
    write_timeout: Duration,
) {
    if let Some(last) = last {
        let _ = timeout(write_timeout, framed.send(last)).await;
    }
    let mut stream = framed.into_inner();
    if timeout(write_timeout, stream.shutdown()).await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = vec![0u8; 8192];
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    };
    let _ = timeout(LINGER, drain).await;
}
