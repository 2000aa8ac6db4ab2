//! cim's client protocol (proto/README.md): `Login` with the route's token, `Send`, `Deliver`
//! and batched `DeliveryAck`s, through cim-proto's [`FrameCodec`].
//!
//! `Send` frames are encoded by hand (the same bytes prost writes, checked by a test) to keep
//! the generator's cost per message low; everything received is decoded with the real codec.

use std::collections::HashMap;

use anyhow::{Result, bail};
use bytes::BytesMut;
use cim_proto::v1::{self, DeliveryAck};
use cim_proto::{Body, Frame, FrameCodec};
use prost::encoding::{encode_varint, encoded_len_varint};
use tokio_util::codec::{Decoder as _, Encoder as _};

use super::{Conn, Counters, Decoder, Login, Target, Wire, read_until};

/// Delivery acknowledgements are sent once this many deliveries are unacknowledged (or at the
/// next quiet tick), like the SDK's batching.
const ACK_EVERY: u32 = 256;

/// cim's protocol.
#[derive(Debug, Clone, Default)]
pub struct CimWire;

impl Wire for CimWire {
    type Decoder = CimDecoder;

    async fn handshake(
        &self,
        conn: &mut Conn,
        login: Login<'_>,
        _subscribe_self: bool,
    ) -> Result<()> {
        let Some(token) = login.token else {
            bail!("a cim connection needs a token from the route's login");
        };
        let mut codec: FrameCodec = FrameCodec::default();
        let mut out = BytesMut::new();
        let frame: Frame = Body::Login(v1::Login {
            token: token.to_string(),
            device: "cim-bench".to_string(),
        })
        .into();
        codec.encode(frame, &mut out)?;
        conn.write_all(&out).await?;
        read_until(conn, |buf| match codec.decode(buf)? {
            None => Ok(None),
            Some(Frame {
                body: Some(Body::LoginResult(_)),
            }) => Ok(Some(())),
            Some(Frame {
                body: Some(Body::Error(error)),
            }) => bail!("login refused: {}", error.text),
            Some(Frame {
                body: Some(Body::Kicked(kicked)),
            }) => bail!("kicked at login: {}", kicked.text),
            Some(other) => bail!("unexpected frame before LoginResult: {other:?}"),
        })
        .await
    }

    async fn join(&self, _conn: &mut Conn, _groups: &[u64]) -> Result<()> {
        // Group membership is the server's: the route API added the member at setup.
        Ok(())
    }

    fn encode_send(&self, out: &mut BytesMut, _from: u32, to: Target, body: &[u8], id: u64) {
        encode_send(out, to, body, id);
    }

    fn decoder(&self) -> CimDecoder {
        CimDecoder::default()
    }
}

/// Appends a length-delimited `Frame { send: Send { client_msg_id, to, body } }`.
fn encode_send(out: &mut BytesMut, to: Target, body: &[u8], id: u64) {
    let mut msg_id = [0u8; 16];
    let msg_id = hex(id, &mut msg_id);
    let (recipient_key, address) = match to {
        Target::User(user) => (0x08, user),
        Target::Group(group) => (0x10, group),
    };
    let recipient_len = 1 + encoded_len_varint(address);
    let send_len = 1
        + encoded_len_varint(msg_id.len() as u64)
        + msg_id.len()
        + 1
        + encoded_len_varint(recipient_len as u64)
        + recipient_len
        + 1
        + encoded_len_varint(body.len() as u64)
        + body.len();
    let frame_len = 1 + encoded_len_varint(send_len as u64) + send_len;
    out.reserve(10 + frame_len);
    encode_varint(frame_len as u64, out);
    out.extend_from_slice(&[0x2a]); // Frame.send = 5, length-delimited
    encode_varint(send_len as u64, out);
    out.extend_from_slice(&[0x0a]); // Send.client_msg_id = 1
    encode_varint(msg_id.len() as u64, out);
    out.extend_from_slice(msg_id);
    out.extend_from_slice(&[0x12]); // Send.to = 2
    encode_varint(recipient_len as u64, out);
    out.extend_from_slice(&[recipient_key]); // Recipient.user_id = 1 / group_id = 2
    encode_varint(address, out);
    out.extend_from_slice(&[0x1a]); // Send.body = 3
    encode_varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// `value` in lower-case hex without leading zeros, in `buf`.
fn hex(value: u64, buf: &mut [u8; 16]) -> &[u8] {
    let digits = (16 - value.leading_zeros() as usize / 4).max(1);
    for (i, digit) in buf.iter_mut().take(digits).enumerate() {
        let nibble = ((value >> (4 * (digits - 1 - i))) & 0xf) as u8;
        *digit = if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        };
    }
    &buf[..digits]
}

/// Decodes frames, batches delivery acknowledgements per conversation.
#[derive(Debug, Default)]
pub struct CimDecoder {
    codec: FrameCodec,
    /// Per conversation, the highest sequence received and whether it is acknowledged.
    received: HashMap<String, (u64, bool)>,
    unacked: u32,
    counters: Counters,
}

impl CimDecoder {
    fn flush_acks(&mut self, out: &mut BytesMut) {
        if self.unacked == 0 {
            return;
        }
        for (conversation, (seq, acked)) in &mut self.received {
            if *acked {
                continue;
            }
            *acked = true;
            let frame: Frame = Body::DeliveryAck(DeliveryAck {
                conversation: conversation.clone(),
                up_to_seq: *seq,
            })
            .into();
            // Cannot fail: the frame is far below the size limit.
            let _ = self.codec.encode(frame, out);
        }
        self.unacked = 0;
    }
}

impl Decoder for CimDecoder {
    fn decode(
        &mut self,
        buf: &mut BytesMut,
        out: &mut BytesMut,
        on_message: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        while let Some(frame) = self.codec.decode(buf)? {
            match frame.body {
                Some(Body::Deliver(deliver)) => {
                    on_message(deliver.body.as_bytes());
                    // Never acknowledge "all" (g:0); a group's sequence numbers have gaps (the
                    // member's own messages), and acknowledging the highest received is what
                    // the protocol allows for a client that holds every message it was sent.
                    if deliver.conversation != "g:0" {
                        let entry = self
                            .received
                            .entry(deliver.conversation)
                            .or_insert((0, true));
                        if deliver.seq > entry.0 {
                            *entry = (deliver.seq, false);
                        }
                        self.unacked += 1;
                    }
                }
                Some(Body::SendAck(_)) => self.counters.acks += 1,
                Some(Body::Error(error)) => {
                    self.counters.errors += 1;
                    self.counters.last_error = Some(format!("{:?}: {}", error.code(), error.text));
                }
                Some(Body::Kicked(kicked)) => {
                    bail!("kicked ({:?}): {}", kicked.reason(), kicked.text)
                }
                _ => {}
            }
        }
        if self.unacked >= ACK_EVERY {
            self.flush_acks(out);
        }
        Ok(())
    }

    fn tick(&mut self, out: &mut BytesMut) {
        self.flush_acks(out);
    }

    fn counters(&self) -> Counters {
        self.counters.clone()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn hand_encoded_sends_are_what_prost_writes() {
        for (to, proto_to) in [
            (Target::User(7), v1::recipient::To::UserId(7)),
            (Target::Group(300), v1::recipient::To::GroupId(300)),
        ] {
            let mut out = BytesMut::new();
            encode_send(&mut out, to, b"hello body", 0xabc);
            let expected: Frame = Body::Send(v1::Send {
                client_msg_id: "abc".into(),
                to: Some(v1::Recipient { to: Some(proto_to) }),
                body: "hello body".into(),
                deliver_at_ms: None,
            })
            .into();
            assert_eq!(out.to_vec(), expected.encode_length_delimited_to_vec());
        }
    }

    #[test]
    fn message_ids_are_hex_without_leading_zeros() {
        let mut buf = [0u8; 16];
        assert_eq!(hex(0, &mut buf), b"0");
        assert_eq!(hex(255, &mut buf), b"ff");
        assert_eq!(hex(u64::MAX, &mut buf), b"ffffffffffffffff");
    }
}
