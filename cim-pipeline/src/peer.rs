//! [`PeerPool`]: persistent outbound connections to other servers' internal ports.
//!
//! The original cim made one HTTP request per message to the recipient's server. Here a sender's
//! server keeps one TCP link per peer and streams [`PeerFrame`]s over it, so relaying a message
//! costs a queue push and a few bytes on an open connection.
//!
//! Each link is a task that owns the socket. It dials lazily, on the first frame for that peer,
//! introduces itself with a [`PeerHello`] carrying a token signed with the deployment's secret,
//! then writes what its bounded queue hands it, batching whatever is queued into one flush. When
//! the dial or a write fails, the link is *down*: frames for that peer fail at once with
//! [`Unavailable`](cim_core::ErrorKind::Unavailable) (a relay never waits on a dead server; the
//! recipients get the message at their next sync, from the store), and the task dials again
//! after a backoff that doubles up to a few seconds. Frames in flight when a link breaks are
//! lost the same way, and recovered the same way.
//!
//! Which servers exist comes from [`PeerPool::set_servers`], fed from the MetaStore. A link is
//! dropped, and its task stopped, when its server leaves the list or moves to another address.
//!
//! The listener writes back one kind of frame, [`PeerMissed`] (the users of a relay with
//! `report_missed` that it has no connection for); the link hands it, with the server's id, to
//! the channel given to [`PeerPool::report_missed_to`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cim_core::token::TokenKey;
use cim_core::{Error, Result, ServerId, ServerInfo, UserId};
use cim_proto::FrameCodec;
use cim_proto::v1::{PeerDeliver, PeerFrame, PeerHello, PeerKick, PeerMissed, peer_frame};
use futures::{SinkExt, StreamExt};
use prost::Message;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::{Instant, timeout};
use tokio_util::codec::{FramedRead, FramedWrite};

/// How long a dial may take before the peer counts as unreachable.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a write to a peer's socket may take before the link counts as down.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Frames queued per link.
pub const DEFAULT_QUEUE_LEN: usize = 4096;
/// How long the token in a `PeerHello` stays valid: it is checked once, at the hello.
const HELLO_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// The first and the longest wait before dialing a failed peer again.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The most frames written before one flush.
const MAX_BATCH: usize = 64;

/// The token name prefix that marks an internal dialer (a server or a route).
pub const PEER_NAME_PREFIX: &str = "peer:";

/// Outbound internal connections to the servers of the cluster, one per server.
///
/// Cheap to clone: clones share the links. Dropping the last clone stops every link task.
#[derive(Clone)]
pub struct PeerPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    self_name: String,
    key: TokenKey,
    max_frame_len: usize,
    connect_timeout: Duration,
    send_timeout: Duration,
    queue_len: usize,
    state: Mutex<PoolState>,
    /// Where links hand the `PeerMissed` frames their listeners answer with.
    missed: Mutex<Option<mpsc::Sender<Missed>>>,
}

/// A listener's answer to a relay: `users` of the frame had no connection on `server`.
#[derive(Debug, Clone)]
pub struct Missed {
    /// The server that answered.
    pub server: ServerId,
    /// Its answer: the message and the users it had no connection for.
    pub frame: PeerMissed,
}

#[derive(Default)]
struct PoolState {
    /// Where each known server's internal port is.
    servers: HashMap<ServerId, Address>,
    /// The links dialed so far.
    links: HashMap<ServerId, Link>,
}

type Address = (String, u16);

/// One peer's link: the queue into its task, and what the task reports about the connection.
struct Link {
    address: Address,
    frames: mpsc::Sender<PeerFrame>,
    status: watch::Receiver<LinkStatus>,
    task: AbortHandle,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LinkStatus {
    /// Dialing for the first time: senders wait for the outcome (up to the connect timeout).
    Connecting,
    /// Hello sent; frames flow.
    Up,
    /// The last dial or write failed. The task dials again after a backoff, and senders fail
    /// at once meanwhile (also while it redials): a dead peer never slows a sender down.
    Down(String),
}

impl PeerPool {
    /// A pool that introduces itself as `self_name` (a server id, or `route:<n>`), signs its
    /// hellos with `key`, and refuses frames above `max_frame_len` bytes (the cluster's limit).
    pub fn new(self_name: String, key: TokenKey, max_frame_len: usize) -> PeerPool {
        PeerPool {
            inner: Arc::new(PoolInner {
                self_name,
                key,
                max_frame_len,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                send_timeout: DEFAULT_SEND_TIMEOUT,
                queue_len: DEFAULT_QUEUE_LEN,
                state: Mutex::new(PoolState::default()),
                missed: Mutex::new(None),
            }),
        }
    }

    /// Sets how long a dial may take (default [`DEFAULT_CONNECT_TIMEOUT`]) and how long a write
    /// to a peer may take (default [`DEFAULT_SEND_TIMEOUT`]). Call before the first send: it
    /// applies to a pool that no clone shares yet, and is ignored otherwise.
    pub fn with_timeouts(mut self, connect: Duration, send: Duration) -> PeerPool {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.connect_timeout = connect;
            inner.send_timeout = send;
        }
        self
    }

    /// Has every link opened from now on hand the listeners' [`Missed`] answers to `sink`
    /// (dropped when it is full: the users then get the message at their next sync).
    pub fn report_missed_to(&self, sink: mpsc::Sender<Missed>) {
        *self
            .inner
            .missed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(sink);
    }

    /// The name this pool introduces itself with.
    pub fn self_name(&self) -> &str {
        &self.inner.self_name
    }

    /// The largest frame the pool sends.
    pub fn max_frame_len(&self) -> usize {
        self.inner.max_frame_len
    }

    /// Replaces the set of known servers with `servers` (their `host` and `internal_port`).
    /// Links to servers no longer listed, or listed at another address, are closed.
    pub fn set_servers(&self, servers: &[ServerInfo]) {
        let mut state = self.inner.lock();
        state.servers = servers
            .iter()
            .map(|info| (info.id.clone(), (info.host.clone(), info.internal_port)))
            .collect();
        let PoolState { servers, links } = &mut *state;
        links.retain(|id, link| servers.get(id) == Some(&link.address));
    }

    /// The servers the pool knows, ordered by id.
    pub fn servers(&self) -> Vec<ServerId> {
        let mut servers: Vec<ServerId> = self.inner.lock().servers.keys().cloned().collect();
        servers.sort();
        servers
    }

    /// Relays a message to some (or all) of `server`'s connections.
    ///
    /// Returns once the frame is queued on the link, never waiting: while the link dials, the
    /// frame waits for it (and is dropped if the dial fails). `Unavailable` if the server is
    /// unknown, its link is down, or its queue is full; `InvalidInput` if the frame exceeds the
    /// frame limit.
    pub async fn deliver(&self, server: &ServerId, frame: PeerDeliver) -> Result<()> {
        self.send(server, peer_frame::Body::Deliver(frame)).await
    }

    /// Asks `server` to close a connection. Errors as for [`PeerPool::deliver`].
    pub async fn kick(&self, server: &ServerId, frame: PeerKick) -> Result<()> {
        self.send(server, peer_frame::Body::Kick(frame)).await
    }

    async fn send(&self, server: &ServerId, body: peer_frame::Body) -> Result<()> {
        let frame = PeerFrame { body: Some(body) };
        let len = frame.encoded_len();
        if len > self.inner.max_frame_len {
            return Err(Error::invalid_input(format!(
                "a {len}-byte internal frame exceeds the {}-byte frame limit",
                self.inner.max_frame_len
            ))
            .with_context("server", server));
        }
        let (frames, status) = self.link(server)?;
        if let LinkStatus::Down(reason) = &*status.borrow() {
            return Err(Error::unavailable(format!(
                "server {server} is unreachable on its internal port: {reason}"
            ))
            .with_context("server", server));
        }
        // Connecting or up: the frame waits in the link's queue (and is dropped with it if the
        // dial fails). Never wait for room: a peer that does not keep up must not hold up the
        // dispatch of other conversations.
        frames.try_send(frame).map_err(|e| {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "does not keep up: its internal link is full",
                mpsc::error::TrySendError::Closed(_) => "has no link task any more",
            };
            Error::unavailable(format!("server {server} {why}")).with_context("server", server)
        })
    }

    /// The link to `server`, dialed lazily.
    fn link(
        &self,
        server: &ServerId,
    ) -> Result<(mpsc::Sender<PeerFrame>, watch::Receiver<LinkStatus>)> {
        let mut state = self.inner.lock();
        let Some(address) = state.servers.get(server).cloned() else {
            return Err(Error::unavailable(format!(
                "server {server} is not registered (it stopped, or has not started yet)"
            ))
            .with_context("server", server));
        };
        let link = state
            .links
            .entry(server.clone())
            .or_insert_with(|| self.inner.spawn_link(server, address));
        Ok((link.frames.clone(), link.status.clone()))
    }
}

impl std::fmt::Debug for PeerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerPool")
            .field("self_name", &self.inner.self_name)
            .field("servers", &self.servers())
            .finish_non_exhaustive()
    }
}

impl PoolInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // Every critical section is a lookup or a whole-map replacement: never half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn_link(&self, server: &ServerId, address: Address) -> Link {
        let (frames, frames_rx) = mpsc::channel(self.queue_len);
        let (status_tx, status) = watch::channel(LinkStatus::Connecting);
        let dialer = Dialer {
            server: server.clone(),
            address: address.clone(),
            self_name: self.self_name.clone(),
            key: self.key.clone(),
            max_frame_len: self.max_frame_len,
            connect_timeout: self.connect_timeout,
            send_timeout: self.send_timeout,
            missed: self
                .missed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        };
        let task = tokio::spawn(dialer.run(frames_rx, status_tx)).abort_handle();
        Link {
            address,
            frames,
            status,
            task,
        }
    }
}

/// What a link task needs: everything owned, nothing shared with the pool, so that dropping
/// the pool is what stops it.
struct Dialer {
    server: ServerId,
    address: Address,
    self_name: String,
    key: TokenKey,
    max_frame_len: usize,
    connect_timeout: Duration,
    send_timeout: Duration,
    missed: Option<mpsc::Sender<Missed>>,
}

type PeerWriter = FramedWrite<OwnedWriteHalf, FrameCodec<PeerFrame>>;
type PeerReader = FramedRead<OwnedReadHalf, FrameCodec<PeerFrame>>;

impl Dialer {
    async fn run(self, mut frames: mpsc::Receiver<PeerFrame>, status: watch::Sender<LinkStatus>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let failure = match self.connect().await {
                Ok((reader, writer)) => {
                    status.send_replace(LinkStatus::Up);
                    backoff = MIN_BACKOFF;
                    match self.pump(reader, writer, &mut frames).await {
                        Some(failure) => failure,
                        // The pool dropped the link.
                        None => return,
                    }
                }
                Err(failure) => failure,
            };
            tracing::warn!(server = %self.server, error = %failure, "internal link down");
            status.send_replace(LinkStatus::Down(failure.to_string()));
            let retry_at = Instant::now() + backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            // Frames queued while the link died are dropped: their recipients sync them from
            // the store when they reconnect.
            while tokio::time::timeout_at(retry_at, frames.recv())
                .await
                .is_ok_and(|frame| frame.is_some())
            {}
            if frames.is_closed() && frames.is_empty() {
                return;
            }
        }
    }

    async fn connect(&self) -> Result<(PeerReader, PeerWriter)> {
        let (host, port) = (&self.address.0, self.address.1);
        let stream = timeout(
            self.connect_timeout,
            TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| {
            Error::unavailable(format!(
                "no answer from {host}:{port} within {:?}",
                self.connect_timeout
            ))
        })?
        .map_err(|e| {
            Error::unavailable(format!("cannot connect to {host}:{port}")).with_source(e)
        })?;
        stream
            .set_nodelay(true)
            .map_err(|e| Error::unavailable("cannot configure the socket").with_source(e))?;
        let (reader, writer) = stream.into_split();
        let reader = FramedRead::new(reader, FrameCodec::<PeerFrame>::new(self.max_frame_len));
        let mut writer = FramedWrite::new(writer, FrameCodec::<PeerFrame>::new(self.max_frame_len));
        let (token, _) = self.key.issue(
            UserId(0),
            &format!("{PEER_NAME_PREFIX}{}", self.self_name),
            HELLO_TOKEN_TTL,
        )?;
        let hello = PeerFrame {
            body: Some(peer_frame::Body::Hello(PeerHello {
                from: self.self_name.clone(),
                token,
            })),
        };
        timeout(self.send_timeout, writer.send(hello))
            .await
            .map_err(|_| Error::unavailable(format!("{host}:{port} does not read")))?
            .map_err(|e| {
                Error::unavailable(format!("cannot greet {host}:{port}")).with_source(e)
            })?;
        Ok((reader, writer))
    }

    /// Writes queued frames until the pool drops the link (`None`) or the connection fails.
    async fn pump(
        &self,
        mut reader: PeerReader,
        mut writer: PeerWriter,
        frames: &mut mpsc::Receiver<PeerFrame>,
    ) -> Option<Error> {
        loop {
            tokio::select! {
                frame = frames.recv() => {
                    let frame = frame?;
                    if let Err(e) = self.write_batch(&mut writer, frame, frames).await {
                        return Some(e);
                    }
                }
                read = reader.next() => match read {
                    Some(Ok(PeerFrame { body: Some(peer_frame::Body::Missed(frame)) })) => {
                        self.on_missed(frame);
                    }
                    // Nothing else is written back; an older listener writes nothing.
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        return Some(Error::unavailable("the connection failed").with_source(e));
                    }
                    None => return Some(Error::unavailable("the peer closed the connection")),
                },
            }
        }
    }

    /// Hands a listener's `PeerMissed` on, if anyone listens and has room.
    fn on_missed(&self, frame: PeerMissed) {
        let Some(sink) = &self.missed else {
            return;
        };
        let missed = Missed {
            server: self.server.clone(),
            frame,
        };
        if sink.try_send(missed).is_err() {
            tracing::debug!(server = %self.server, "a missed-users answer was dropped; they sync");
        }
    }

    async fn write_batch(
        &self,
        writer: &mut PeerWriter,
        first: PeerFrame,
        frames: &mut mpsc::Receiver<PeerFrame>,
    ) -> Result<()> {
        let write = async {
            writer.feed(first).await?;
            for _ in 1..MAX_BATCH {
                match frames.try_recv() {
                    Ok(frame) => writer.feed(frame).await?,
                    Err(_) => break,
                }
            }
            SinkExt::<PeerFrame>::flush(writer).await
        };
        timeout(self.send_timeout, write)
            .await
            .map_err(|_| Error::unavailable("the peer stopped reading"))?
            .map_err(|e| Error::unavailable("cannot write to the peer").with_source(e))
    }
}

#[cfg(test)]
mod tests {
    use cim_core::ErrorKind;
    use futures::StreamExt;
    use tokio::net::TcpListener;
    use tokio_util::codec::FramedRead;

    use super::*;

    fn key() -> TokenKey {
        TokenKey::new(&[7; 32]).expect("32 bytes")
    }

    fn info(id: &str, port: u16) -> ServerInfo {
        ServerInfo::new(ServerId::new(id).expect("valid"), "127.0.0.1", 1, port)
    }

    fn kick() -> PeerKick {
        PeerKick {
            user_id: 1,
            connection_id: 2,
            reason: cim_proto::KickReason::Replaced as i32,
        }
    }

    #[tokio::test]
    async fn an_unknown_server_is_unavailable() {
        let pool = PeerPool::new("s1".into(), key(), 1024);
        let err = pool
            .kick(&ServerId::new("nowhere").expect("valid"), kick())
            .await
            .expect_err("unknown");
        assert_eq!(err.kind(), ErrorKind::Unavailable);
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_fast_instead_of_hanging() {
        // A port that was just free: nothing listens there.
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let pool = PeerPool::new("s1".into(), key(), 1024);
        pool.set_servers(&[info("s2", port)]);
        let server = ServerId::new("s2").expect("valid");
        // The first frame waits for the dial; once the dial is refused, frames fail at once.
        pool.kick(&server, kick())
            .await
            .expect("queued while dialing");
        let (_, mut status) = pool.link(&server).expect("a link");
        timeout(
            Duration::from_secs(10),
            status.wait_for(|status| matches!(status, LinkStatus::Down(_))),
        )
        .await
        .expect("the dial fails in time")
        .expect("the link task runs");
        let err = pool.kick(&server, kick()).await.expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.message().contains("unreachable"), "{err}");
    }

    #[tokio::test]
    async fn frames_follow_a_verifiable_hello_on_one_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let pool = PeerPool::new("s1".into(), key(), 1024);
        pool.set_servers(&[info("s2", port)]);
        let server = ServerId::new("s2").expect("valid");
        pool.kick(&server, kick()).await.expect("queued");
        pool.kick(&server, kick()).await.expect("queued");

        let (socket, _) = listener.accept().await.expect("accept");
        let mut frames = FramedRead::new(socket, FrameCodec::<PeerFrame>::new(1024));
        let next = async |frames: &mut FramedRead<TcpStream, FrameCodec<PeerFrame>>| {
            timeout(Duration::from_secs(5), frames.next())
                .await
                .expect("a frame in time")
                .expect("open")
                .expect("valid")
                .body
                .expect("body")
        };
        let peer_frame::Body::Hello(hello) = next(&mut frames).await else {
            panic!("the first frame must be a hello");
        };
        assert_eq!(hello.from, "s1");
        let claims = key()
            .verify(&hello.token)
            .expect("signed with the shared key");
        assert_eq!(claims.user_name, "peer:s1");
        for _ in 0..2 {
            assert_eq!(next(&mut frames).await, peer_frame::Body::Kick(kick()));
        }
    }

    #[tokio::test]
    async fn a_server_leaving_the_list_becomes_unknown() {
        let pool = PeerPool::new("s1".into(), key(), 1024);
        pool.set_servers(&[info("s2", 9), info("s3", 9)]);
        assert_eq!(pool.servers().len(), 2);
        pool.set_servers(&[info("s3", 9)]);
        let err = pool
            .kick(&ServerId::new("s2").expect("valid"), kick())
            .await
            .expect_err("gone");
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.message().contains("not registered"), "{err}");
    }

    #[tokio::test]
    async fn frames_above_the_limit_are_refused_before_queueing() {
        let pool = PeerPool::new("s1".into(), key(), 8);
        pool.set_servers(&[info("s2", 9)]);
        let frame = PeerDeliver {
            message: None,
            user_ids: (0..100).collect(),
            all_local: false,
            report_missed: false,
        };
        let err = pool
            .deliver(&ServerId::new("s2").expect("valid"), frame)
            .await
            .expect_err("too large");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}
