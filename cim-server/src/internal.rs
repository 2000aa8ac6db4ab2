//! The internal listener: frames relayed by other servers and routes.
//!
//! This port is how a message sent on one server reaches a recipient connected to another, and
//! how a login on one server kicks the user's old connection on another. It trusts no one by
//! address: the first frame must be a [`PeerHello`](cim_proto::v1::PeerHello) whose token is
//! signed with the deployment's secret and names a `peer:` dialer, and the connection is closed
//! otherwise. After that, frames are acted on in order. The one frame written back is a
//! [`PeerMissed`](cim_proto::v1::PeerMissed): the users of a relay that asked for it
//! (`report_missed`) who have no connection here, so that the dialer, which placed them from a
//! view that may be stale, delivers the message where they are now.

use std::net::SocketAddr;
use std::sync::Arc;

use cim_core::{ConnectionId, UserId};
use cim_pipeline::Delivery;
use cim_pipeline::peer::PEER_NAME_PREFIX;
use cim_proto::v1::{PeerDeliver, PeerFrame, PeerKick, PeerMissed, peer_frame};
use cim_proto::{FrameCodec, KickReason};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::server::Shared;

/// Serves one internal connection to its end.
pub(crate) async fn serve(shared: Arc<Shared>, socket: TcpStream, peer: SocketAddr) {
    let _ = socket.set_nodelay(true);
    let (reader, writer) = socket.into_split();
    let mut frames = FramedRead::new(
        reader,
        FrameCodec::<PeerFrame>::new(shared.config.max_frame_len),
    );
    let mut replies = FramedWrite::new(
        writer,
        FrameCodec::<PeerFrame>::new(shared.config.max_frame_len),
    );
    let hello = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        hello = timeout(shared.config.login_timeout, frames.next()) => hello,
    };
    let from = match hello {
        Ok(Some(Ok(PeerFrame {
            body: Some(peer_frame::Body::Hello(hello)),
        }))) => match shared.key.verify(&hello.token) {
            Ok(claims) if claims.user_name.starts_with(PEER_NAME_PREFIX) => hello.from,
            Ok(_) => {
                tracing::warn!(%peer, "internal connection with a user token; closing");
                return;
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "internal connection with a bad token; closing");
                return;
            }
        },
        _ => {
            tracing::warn!(%peer, "internal connection without a hello; closing");
            return;
        }
    };
    tracing::debug!(%peer, %from, "internal link up");
    loop {
        let frame = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            frame = frames.next() => frame,
        };
        match frame {
            None => return,
            Some(Err(e)) => {
                tracing::warn!(%from, error = %e, "bad internal frame; closing the link");
                return;
            }
            Some(Ok(frame)) => match frame.body {
                Some(peer_frame::Body::Deliver(deliver)) => {
                    let Some(missed) = relay(&shared, deliver) else {
                        continue;
                    };
                    let reply = PeerFrame {
                        body: Some(peer_frame::Body::Missed(missed)),
                    };
                    // A dialer that does not read its link any more is as good as gone.
                    match timeout(shared.config.login_timeout, replies.send(reply)).await {
                        Ok(Ok(())) => {}
                        _ => {
                            tracing::warn!(%from, "cannot answer on the internal link; closing it");
                            return;
                        }
                    }
                }
                Some(peer_frame::Body::Kick(kick)) => self::kick(&shared, &kick),
                Some(peer_frame::Body::Hello(_) | peer_frame::Body::Missed(_)) | None => {}
            },
        }
    }
}

/// Hands a relayed message to the local connections it names; with `report_missed`, the users
/// among them that have no connection here (`None` when there are none, or nobody asked).
fn relay(shared: &Shared, deliver: PeerDeliver) -> Option<PeerMissed> {
    let message = deliver.message?;
    let delivery = match Delivery::encode(&message, shared.config.max_frame_len) {
        Ok(delivery) => delivery,
        Err(e) => {
            tracing::warn!(message = message.message_id, error = %e, "cannot relay a message");
            return None;
        }
    };
    if deliver.all_local {
        shared
            .local
            .deliver_to_all_except(delivery.sender, &delivery);
        return None;
    }
    let missed: Vec<u64> = deliver
        .user_ids
        .into_iter()
        .filter(|user| {
            shared
                .local
                .deliver_if_connected(UserId(*user), &delivery)
                .is_none()
        })
        .collect();
    (deliver.report_missed && !missed.is_empty()).then_some(PeerMissed {
        message: Some(message),
        user_ids: missed,
    })
}

fn kick(shared: &Shared, kick: &PeerKick) {
    let reason = KickReason::try_from(kick.reason).unwrap_or(KickReason::Unspecified);
    shared.local.kick(
        UserId(kick.user_id),
        ConnectionId(kick.connection_id),
        reason,
    );
}
