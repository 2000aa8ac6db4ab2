//! [`Delivery`]: one stored message, encoded once, on its way to many connections.
//!
//! A message to a large group reaches thousands of connections. Encoding its `Deliver` frame for
//! each of them would make fan-out cost grow with the body size times the audience, so the frame
//! is encoded once, in its length-delimited wire form, and every connection's queue holds the
//! same [`Arc`]. The few fields kept beside the bytes (conversation, sequence, sender) are what a
//! connection needs to order and filter deliveries without decoding them again.

use std::sync::Arc;

use bytes::Bytes;
use cim_core::{
    ConversationId, Error, GroupId, MessageId, NameRules, Recipient, Result, Seq, StoredMessage,
    UserId,
};
use cim_proto::v1::{self, recipient};
use cim_proto::{Body, Frame};
use prost::Message;

/// Room an internal `PeerDeliver` needs around its `Deliver` (its own tag and length, the
/// `all_local` flag, at least one packed user id).
pub const RELAY_ROOM: usize = 64;

/// A `Deliver` frame ready for the wire, and what a connection needs to know about it.
#[derive(Debug)]
pub struct Delivery {
    /// The message's id.
    pub message_id: MessageId,
    /// Its conversation.
    pub conversation: ConversationId,
    /// Its sequence in the conversation.
    pub seq: Seq,
    /// Who sent it (never delivered back to them).
    pub sender: UserId,
    /// The whole frame, varint length prefix included.
    pub frame: Bytes,
}

impl Delivery {
    /// Encodes `deliver` once; fails with `InvalidInput` if the frame would exceed
    /// `max_frame_len`, which no client could read.
    pub fn encode(deliver: &v1::Deliver, max_frame_len: usize) -> Result<Arc<Delivery>> {
        let conversation: ConversationId = deliver.conversation.parse()?;
        let frame = Frame::from(Body::Deliver(deliver.clone()));
        let len = frame.encoded_len();
        if len > max_frame_len {
            return Err(Error::invalid_input(format!(
                "the message {} encodes to a {len}-byte frame, above the {max_frame_len}-byte \
                 frame limit; lower max_body_len or raise max_frame_len",
                deliver.message_id
            )));
        }
        Ok(Arc::new(Delivery {
            message_id: MessageId(deliver.message_id),
            conversation,
            seq: Seq(deliver.seq),
            sender: UserId(deliver.sender_id),
            frame: Bytes::from(frame.encode_length_delimited_to_vec()),
        }))
    }
}

/// The `Deliver` frame body of a stored message.
pub fn deliver_frame(message: &StoredMessage, sender_name: &str) -> v1::Deliver {
    v1::Deliver {
        message_id: message.id.0,
        conversation: message.conversation.to_string(),
        seq: message.seq.0,
        sender_id: message.sender.0,
        sender_name: sender_name.to_string(),
        to: Some(recipient_to_proto(message.to)),
        body: message.body.clone(),
        sent_at_ms: message.sent_at.as_millis(),
    }
}

/// The size of the largest `Frame { Deliver }` a message can have under these limits: a body of
/// `max_body_len` bytes, the longest sender name `names` allows (4 bytes per character at
/// most), and every number at its longest varint.
pub fn largest_deliver_frame(max_body_len: usize, names: &NameRules) -> usize {
    let widest_conversation = ConversationId::direct(UserId(u64::MAX - 1), UserId(u64::MAX));
    let deliver = v1::Deliver {
        message_id: u64::MAX,
        conversation: widest_conversation.to_string(),
        seq: u64::MAX,
        sender_id: u64::MAX,
        sender_name: "\u{10FFFF}".repeat(names.max_len),
        to: Some(recipient_to_proto(Recipient::User(UserId(u64::MAX)))),
        body: "x".repeat(max_body_len),
        sent_at_ms: i64::MIN,
    };
    Frame::from(Body::Deliver(deliver)).encoded_len()
}

/// The wire form of a recipient: the "all" group has its own case.
pub fn recipient_to_proto(to: Recipient) -> v1::Recipient {
    let to = match to {
        Recipient::User(user) => recipient::To::UserId(user.0),
        Recipient::Group(GroupId::ALL) => recipient::To::All(true),
        Recipient::Group(group) => recipient::To::GroupId(group.0),
    };
    v1::Recipient { to: Some(to) }
}

/// The recipient a client named, or `InvalidInput` if it named none.
pub fn recipient_from_proto(to: Option<&v1::Recipient>) -> Result<Recipient> {
    match to.and_then(|to| to.to.as_ref()) {
        Some(recipient::To::UserId(user)) => Ok(Recipient::User(UserId(*user))),
        Some(recipient::To::GroupId(group)) => Ok(Recipient::Group(GroupId(*group))),
        Some(recipient::To::All(true)) => Ok(Recipient::Group(GroupId::ALL)),
        Some(recipient::To::All(false)) | None => Err(Error::invalid_input(
            "the message names no recipient; set to.user_id, to.group_id or to.all",
        )),
    }
}

#[cfg(test)]
mod tests {
    use cim_core::Timestamp;

    use super::*;

    fn stored(to: Recipient) -> StoredMessage {
        StoredMessage {
            id: MessageId(9),
            conversation: ConversationId::for_message(UserId(1), to),
            seq: Seq(3),
            sender: UserId(1),
            to,
            client_msg_id: "c".into(),
            body: "hello".into(),
            sent_at: Timestamp(1_000),
        }
    }

    #[test]
    fn a_delivery_is_the_length_delimited_deliver_frame() {
        let deliver = deliver_frame(&stored(Recipient::User(UserId(2))), "alice");
        let delivery = Delivery::encode(&deliver, 1024).expect("fits");
        let decoded = Frame::decode_length_delimited(delivery.frame.clone()).expect("decodes");
        assert_eq!(decoded, Frame::from(Body::Deliver(deliver)));
        assert_eq!(delivery.conversation.to_string(), "d:1:2");
        assert_eq!(delivery.seq, Seq(3));
    }

    #[test]
    fn a_delivery_larger_than_the_frame_limit_is_refused() {
        let deliver = deliver_frame(&stored(Recipient::Group(GroupId(4))), "alice");
        let err = Delivery::encode(&deliver, 16).expect_err("too large");
        assert_eq!(err.kind(), cim_core::ErrorKind::InvalidInput);
    }

    #[test]
    fn the_largest_frame_bounds_every_message_within_the_limits() {
        let names = NameRules::default();
        let largest = largest_deliver_frame(100, &names);
        let mut message = stored(Recipient::User(UserId(u64::MAX)));
        message.body = "é".repeat(50);
        message.id = MessageId(u64::MAX);
        message.seq = Seq(u64::MAX);
        message.sent_at = Timestamp(i64::MIN);
        let name = "\u{10FFFF}".repeat(names.max_len);
        let deliver = deliver_frame(&message, &name);
        let len = Frame::from(Body::Deliver(deliver)).encoded_len();
        assert!(len <= largest, "{len} > {largest}");
        assert!(largest < 100 + 256, "the overhead stays small: {largest}");
    }

    #[test]
    fn the_all_group_has_its_own_wire_form() {
        let wire = recipient_to_proto(Recipient::Group(GroupId::ALL));
        assert_eq!(wire.to, Some(recipient::To::All(true)));
        assert_eq!(
            recipient_from_proto(Some(&wire)).expect("valid"),
            Recipient::Group(GroupId::ALL)
        );
        assert!(recipient_from_proto(None).is_err());
    }
}
