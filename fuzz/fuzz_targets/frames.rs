//! The frame decoder, fed arbitrary bytes as a hostile client (or peer) would send them: it
//! must answer every input with frames, "need more bytes" or an error, never a panic, and never
//! accept a frame above its limit.

#![no_main]

use bytes::BytesMut;
use cim_proto::v1::PeerFrame;
use cim_proto::{Frame, FrameCodec, FrameError, FrameMessage};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// A small limit, so that inputs reach it.
const LIMIT: usize = 4096;

fn decode_all<T: FrameMessage>(data: &[u8]) {
    let mut codec = FrameCodec::<T>::new(LIMIT);
    // The input arrives in pieces, as from a socket: split it at a point the input chooses.
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut buffer = BytesMut::from(&data[..split]);
    let mut rest = &data[split..];
    loop {
        match codec.decode(&mut buffer) {
            Ok(Some(frame)) => assert!(frame.encoded_len() <= LIMIT, "a frame above the limit"),
            Ok(None) if rest.is_empty() => return,
            Ok(None) => {
                buffer.extend_from_slice(rest);
                rest = &[];
            }
            Err(FrameError::TooLarge { .. }) | Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    decode_all::<Frame>(data);
    decode_all::<PeerFrame>(data);
});
