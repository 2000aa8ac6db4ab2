//! MQTT 3.1.1, QoS 0, as Mosquitto speaks it: `CONNECT`/`CONNACK` to log in (clean session, no
//! keep-alive, so idle connections need no pings), `SUBSCRIBE`/`SUBACK`, `PUBLISH`. A user's
//! messages go to topic `u/<index>`, a group's to `g/<index>`.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};
use bytes::{Buf, BufMut, BytesMut};

use super::{Conn, Counters, Decoder, Login, Target, Wire, read_until};

/// Client ids must be unique per broker: a second CONNECT with the same id kicks the first.
static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);

/// The MQTT protocol.
#[derive(Debug, Clone, Default)]
pub struct MqttWire;

/// Appends MQTT's variable-length "remaining length".
fn put_remaining_len(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            return;
        }
    }
}

/// The packet at the front of `buf`: (first byte, header length, remaining length), or `None`
/// if incomplete.
fn packet(buf: &[u8]) -> Result<Option<(u8, usize, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let header = 2 + i;
            if buf.len() < header + len {
                return Ok(None);
            }
            return Ok(Some((buf[0], header, len)));
        }
    }
    bail!("mqtt: malformed remaining length")
}

fn put_str(out: &mut BytesMut, text: &[u8]) {
    out.put_u16(text.len() as u16);
    out.extend_from_slice(text);
}

/// Waits for a packet of `kind` (upper nibble), skipping others; returns its body.
async fn await_packet(conn: &mut Conn, kind: u8) -> Result<BytesMut> {
    read_until(conn, |buf| {
        loop {
            let Some((first, header, len)) = packet(buf)? else {
                return Ok(None);
            };
            let mut whole = buf.split_to(header + len);
            if first >> 4 == kind {
                whole.advance(header);
                return Ok(Some(whole));
            }
        }
    })
    .await
}

impl MqttWire {
    async fn subscribe(&self, conn: &mut Conn, topics: &[String]) -> Result<()> {
        let mut payload = BytesMut::new();
        payload.put_u16(1); // packet id
        for topic in topics {
            put_str(&mut payload, topic.as_bytes());
            payload.put_u8(0); // QoS 0
        }
        let mut out = BytesMut::new();
        out.put_u8(0x82);
        put_remaining_len(&mut out, payload.len());
        out.extend_from_slice(&payload);
        conn.write_all(&out).await?;
        let suback = await_packet(conn, 9).await?;
        if suback.iter().skip(2).any(|code| *code == 0x80) {
            bail!("mqtt: subscription refused");
        }
        Ok(())
    }
}

impl Wire for MqttWire {
    type Decoder = MqttDecoder;

    async fn handshake(
        &self,
        conn: &mut Conn,
        login: Login<'_>,
        subscribe_self: bool,
    ) -> Result<()> {
        let client_id = format!("b{}", NEXT_CLIENT.fetch_add(1, Ordering::Relaxed));
        let mut body = BytesMut::new();
        put_str(&mut body, b"MQTT");
        body.put_u8(4); // protocol level 3.1.1
        body.put_u8(0x02); // clean session
        body.put_u16(0); // no keep-alive
        put_str(&mut body, client_id.as_bytes());
        let mut out = BytesMut::new();
        out.put_u8(0x10);
        put_remaining_len(&mut out, body.len());
        out.extend_from_slice(&body);
        conn.write_all(&out).await?;
        let connack = await_packet(conn, 2).await?;
        if connack.get(1).copied() != Some(0) {
            bail!(
                "mqtt: connection refused (return code {:?})",
                connack.get(1)
            );
        }
        if subscribe_self {
            self.subscribe(conn, &[format!("u/{}", login.address)])
                .await?;
        }
        Ok(())
    }

    async fn join(&self, conn: &mut Conn, groups: &[u64]) -> Result<()> {
        if groups.is_empty() {
            return Ok(());
        }
        let topics: Vec<String> = groups.iter().map(|g| format!("g/{g}")).collect();
        self.subscribe(conn, &topics).await
    }

    fn encode_send(&self, out: &mut BytesMut, _from: u32, to: Target, body: &[u8], _id: u64) {
        let topic = match to {
            Target::User(user) => format!("u/{user}"),
            Target::Group(group) => format!("g/{group}"),
        };
        out.put_u8(0x30); // PUBLISH, QoS 0
        put_remaining_len(out, 2 + topic.len() + body.len());
        put_str(out, topic.as_bytes());
        out.extend_from_slice(body);
    }

    fn decoder(&self) -> MqttDecoder {
        MqttDecoder::default()
    }
}

/// Decodes `PUBLISH` packets; ignores the rest.
#[derive(Debug, Default)]
pub struct MqttDecoder {
    counters: Counters,
}

impl Decoder for MqttDecoder {
    fn decode(
        &mut self,
        buf: &mut BytesMut,
        _out: &mut BytesMut,
        on_message: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        while let Some((first, header, len)) = packet(buf)? {
            if first >> 4 == 3 {
                let body = &buf[header..header + len];
                if body.len() < 2 {
                    bail!("mqtt: malformed PUBLISH");
                }
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let qos = (first >> 1) & 3;
                let start = 2 + topic_len + if qos > 0 { 2 } else { 0 };
                if start > body.len() {
                    bail!("mqtt: malformed PUBLISH");
                }
                on_message(&body[start..]);
            }
            buf.advance(header + len);
        }
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
    fn a_publish_round_trips_through_the_decoder() {
        let wire = MqttWire;
        let mut buf = BytesMut::new();
        let body = vec![b'x'; 200];
        wire.encode_send(&mut buf, 0, Target::User(12), &body, 0);
        wire.encode_send(&mut buf, 0, Target::Group(3), b"short", 0);
        let mut seen = Vec::new();
        let mut decoder = wire.decoder();
        let mut partial = buf.split_to(5);
        decoder
            .decode(&mut partial, &mut BytesMut::new(), &mut |m| {
                seen.push(m.to_vec())
            })
            .expect("decode");
        assert!(seen.is_empty());
        partial.unsplit(buf);
        decoder
            .decode(&mut partial, &mut BytesMut::new(), &mut |m| {
                seen.push(m.to_vec())
            })
            .expect("decode");
        assert_eq!(seen, vec![body, b"short".to_vec()]);
    }
}
