//! [`FrameCodec`]: varint-length-prefixed protobuf frames with a size limit, for client
//! [`Frame`]s and internal [`PeerFrame`](crate::v1::PeerFrame)s alike.
//!
//! The limit is checked on the length prefix, before any byte of the body is buffered, so a
//! peer announcing a huge frame costs nothing but the prefix: the read fails at once with
//! [`FrameError::TooLarge`] and the connection can be closed.

use std::marker::PhantomData;

use bytes::{Buf, BytesMut};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

use crate::Frame;

/// A frame type: a protobuf message whose body is a `oneof` that must be set.
pub trait FrameMessage: Message + Default {
    /// Whether the frame carries a body (a frame without one is an error).
    fn has_body(&self) -> bool;
}

impl FrameMessage for Frame {
    fn has_body(&self) -> bool {
        self.body.is_some()
    }
}

impl FrameMessage for crate::v1::PeerFrame {
    fn has_body(&self) -> bool {
        self.body.is_some()
    }
}

/// The default maximum frame length: 64 KiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 64 * 1024;

/// The longest a varint length prefix may be (a `u64` needs at most 10 bytes).
const MAX_VARINT_LEN: usize = 10;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame's announced length exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The length prefix is not a valid varint.
    #[error("invalid frame length prefix")]
    BadLength,
    /// The frame is not a valid `cim.v1.Frame`.
    #[error("malformed frame: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// The frame decoded but has no body.
    #[error("frame has no body")]
    Empty,
    /// The connection failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads and writes frames of type `M` ([`Frame`] by default) as varint-length-delimited
/// protobuf, refusing frames longer than `max_frame_len` in either direction.
#[derive(Debug)]
pub struct FrameCodec<M = Frame> {
    max_frame_len: usize,
    frames: PhantomData<fn() -> M>,
}

impl<M> Clone for FrameCodec<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for FrameCodec<M> {}

impl<M> FrameCodec<M> {
    /// A codec with the given limit, in bytes (the prefix excluded).
    pub fn new(max_frame_len: usize) -> Self {
        FrameCodec {
            max_frame_len,
            frames: PhantomData,
        }
    }

    /// The limit in force.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }
}

impl<M> Default for FrameCodec<M> {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME_LEN)
    }
}

/// Reads a varint from the front of `buf` without consuming it: `Ok(None)` if more bytes are
/// needed, otherwise the value and the prefix length.
fn peek_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value: u64 = 0;
    for (i, byte) in buf.iter().take(MAX_VARINT_LEN).enumerate() {
        let bits = u64::from(byte & 0x7f);
        if i == MAX_VARINT_LEN - 1 && bits > 1 {
            return Err(FrameError::BadLength);
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT_LEN {
        Err(FrameError::BadLength)
    } else {
        Ok(None)
    }
}

impl<M: FrameMessage> FrameCodec<M> {
    /// Decodes the frame at the front of `src`: `Ok(None)` if `src` holds only part of it,
    /// otherwise the frame and the number of bytes it took (prefix included).
    ///
    /// For readers that keep their own buffers (a server reading many connections into one
    /// scratch buffer, say); [`Decoder::decode`] is this on a `BytesMut`.
    pub fn decode_slice(&self, src: &[u8]) -> Result<Option<(M, usize)>, FrameError> {
        let Some((len, prefix_len)) = peek_varint(src)? else {
            return Ok(None);
        };
        let too_large = || FrameError::TooLarge {
            len,
            max: self.max_frame_len,
        };
        let len = usize::try_from(len).map_err(|_| too_large())?;
        if len > self.max_frame_len {
            return Err(too_large());
        }
        let Some(body) = src.get(prefix_len..prefix_len + len) else {
            return Ok(None);
        };
        let frame = M::decode(body)?;
        if !frame.has_body() {
            return Err(FrameError::Empty);
        }
        Ok(Some((frame, prefix_len + len)))
    }

    /// The bytes the frame at the front of `src` needs in all (prefix included), once its
    /// length prefix is complete.
    fn frame_len(src: &[u8]) -> Option<usize> {
        match peek_varint(src) {
            Ok(Some((len, prefix_len))) => usize::try_from(len).ok()?.checked_add(prefix_len),
            _ => None,
        }
    }
}

impl<M: FrameMessage> Decoder for FrameCodec<M> {
    type Item = M;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<M>, FrameError> {
        match self.decode_slice(src)? {
            Some((frame, used)) => {
                src.advance(used);
                Ok(Some(frame))
            }
            None => {
                if let Some(needed) = Self::frame_len(src) {
                    src.reserve(needed.saturating_sub(src.len()));
                }
                Ok(None)
            }
        }
    }
}

impl<M: FrameMessage> Encoder<M> for FrameCodec<M> {
    type Error = FrameError;

    fn encode(&mut self, frame: M, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode(&frame, dst)
    }
}

impl<M: FrameMessage> Encoder<&M> for FrameCodec<M> {
    type Error = FrameError;

    fn encode(&mut self, frame: &M, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = frame.encoded_len();
        if len > self.max_frame_len {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max_frame_len,
            });
        }
        dst.reserve(MAX_VARINT_LEN + len);
        prost::encoding::encode_varint(len as u64, dst);
        frame.encode(dst).map_err(|e| {
            // Cannot happen: capacity was reserved above.
            FrameError::Io(std::io::Error::other(e))
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;
    use crate::v1::{Ping, Send};
    use crate::{Body, Frame};

    fn ping(nonce: u64) -> Frame {
        Body::Ping(Ping { nonce }).into()
    }

    #[test]
    fn frames_round_trip_in_delimited_form() {
        let mut codec: FrameCodec = FrameCodec::default();
        let mut buf = BytesMut::new();
        codec.encode(ping(7), &mut buf).expect("encode");
        // Same bytes as protobuf's own length-delimited encoding.
        assert_eq!(buf.to_vec(), ping(7).encode_length_delimited_to_vec());
        codec.encode(ping(8), &mut buf).expect("encode");
        assert_eq!(codec.decode(&mut buf).expect("decode"), Some(ping(7)));
        assert_eq!(codec.decode(&mut buf).expect("decode"), Some(ping(8)));
        assert_eq!(codec.decode(&mut buf).expect("decode"), None);
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut codec: FrameCodec = FrameCodec::default();
        let bytes = ping(300).encode_length_delimited_to_vec();
        let mut buf = BytesMut::new();
        for (i, byte) in bytes.iter().enumerate() {
            buf.put_u8(*byte);
            let decoded = codec.decode(&mut buf).expect("decode");
            assert_eq!(decoded.is_some(), i == bytes.len() - 1, "after byte {i}");
        }
    }

    #[test]
    fn an_oversized_announcement_fails_before_the_body_arrives() {
        let mut codec: FrameCodec = FrameCodec::new(16);
        let mut buf = BytesMut::new();
        prost::encoding::encode_varint(17, &mut buf);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        ));
        let mut huge = BytesMut::new();
        prost::encoding::encode_varint(u64::MAX, &mut huge);
        assert!(matches!(
            codec.decode(&mut huge),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn oversized_frames_are_not_written_either() {
        let mut codec: FrameCodec = FrameCodec::new(16);
        let frame: Frame = Body::Send(Send {
            client_msg_id: "1".into(),
            to: None,
            body: "x".repeat(100),
            deliver_at_ms: None,
        })
        .into();
        assert!(matches!(
            codec.encode(frame, &mut BytesMut::new()),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_and_empty_frames_are_errors() {
        let mut codec: FrameCodec = FrameCodec::default();
        let mut bad_prefix = BytesMut::from(&[0xff_u8; 11][..]);
        assert!(matches!(
            codec.decode(&mut bad_prefix),
            Err(FrameError::BadLength)
        ));
        let mut garbage = BytesMut::from(&[3_u8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            codec.decode(&mut garbage),
            Err(FrameError::Malformed(_))
        ));
        let mut empty = BytesMut::from(&[0_u8][..]);
        assert!(matches!(codec.decode(&mut empty), Err(FrameError::Empty)));
    }
}
