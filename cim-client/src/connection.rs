//! The connection task: one per client, owning the TCP connection to a server.
//!
//! Everything that touches the connection happens in this one task, so there is no lock around
//! the socket and no race between a send, an acknowledgement and a reconnect: [`Client`]
//! handles talk to it over a bounded command channel and receive answers on oneshots; the
//! application receives events over a bounded channel.
//!
//! The task's life: serve a connection (write sends, read frames, acknowledge deliveries in
//! batches, ping when quiet, notice silence); when it is lost, back off, log in again through the
//! route (which may pick another server), and serve the new one, first re-sending every message
//! that was not acknowledged (the server never stores the same `client_msg_id` twice). Sends that
//! arrive meanwhile wait in a bounded queue. It stops when every [`Client`] handle is gone, on
//! `close`/`logout`, on a kick that ends the session, or when the reconnect policy gives up; it
//! then fails whatever is still pending and reports `Disconnected`.
//!
//! When the application does not keep up with events, the task stops *reading* (so the server
//! holds the backlog) but keeps writing: sends, acknowledgements and pings still go out.
//!
//! [`Client`]: crate::Client

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cim_proto::http::{LoginResponse, TokenResponse};
use cim_proto::v1::{self, DeliveryAck, Ping};
use cim_proto::{
    Body, DEFAULT_MAX_FRAME_LEN, ErrorCode, Frame, FrameCodec, FrameError, KickReason,
};
use futures::{SinkExt, StreamExt};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{self, Instant};
use tokio_util::codec::Framed;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::builder::{LoginFn, Settings, resuming};
use crate::dedupe::{Arrival, Tracker};
use crate::error::{ClientError, Result};
use crate::event::{ConnectionState, DisconnectReason, Event, IncomingMessage};
use crate::http::Route;
use crate::message::{Conversation, SendReceipt};

/// How long delivery acknowledgements are held to batch a burst.
const ACK_DELAY: Duration = Duration::from_millis(200);

/// The heartbeat and idle timeout used when the server announces none.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The framed TCP connection to a server.
type Connection = Framed<TcpStream, FrameCodec<Frame>>;

/// A request from a [`Client`](crate::Client) handle to the task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send a message and answer on the oneshot.
    Send(PendingSend),
    /// Stop for good.
    Close {
        /// What to report.
        reason: DisconnectReason,
    },
}

/// A message on its way: queued, or written and waiting for its `SendAck`.
#[derive(Debug)]
pub(crate) struct PendingSend {
    frame: v1::Send,
    reply: oneshot::Sender<Result<SendReceipt>>,
    /// When to give up on it.
    deadline: Instant,
    /// Whether it was written to a connection at least once (the server may have stored it).
    written: bool,
}

impl PendingSend {
    pub(crate) fn new(
        frame: v1::Send,
        reply: oneshot::Sender<Result<SendReceipt>>,
        deadline: Instant,
    ) -> Self {
        PendingSend {
            frame,
            reply,
            deadline,
            written: false,
        }
    }

    fn resolve(self, result: Result<SendReceipt>) {
        // The caller may have stopped waiting; nothing to do then.
        let _ = self.reply.send(result);
    }
}

/// What the task shares with the handles: who is logged in, where, and the connection state.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    pub(crate) user_id: u64,
    pub(crate) user_name: String,
    pub(crate) token: String,
    pub(crate) server_id: String,
    pub(crate) connection_id: u64,
    pub(crate) state: ConnectionState,
}

/// A connection that completed the login handshake.
pub(crate) struct Established {
    connection: Connection,
    login: LoginResponse,
    result: v1::LoginResult,
    /// This machine's clock at the login (Unix ms), to tell offline messages.
    logged_in_at_ms: i64,
}

impl Established {
    /// The status this connection starts with.
    pub(crate) fn status(&self) -> Status {
        Status {
            user_id: self.result.user_id,
            user_name: self.result.user_name.clone(),
            token: self.login.token.clone(),
            server_id: self.result.server_id.clone(),
            connection_id: self.result.connection_id,
            state: ConnectionState::Connected {
                server_id: self.result.server_id.clone(),
            },
        }
    }
}

/// Why establishing a connection failed: at the route (login) or at the server.
#[derive(Debug)]
pub(crate) enum Failure {
    Login(ClientError),
    Server(ClientError),
}

impl Failure {
    /// Whether another attempt cannot help: the route refused the credentials themselves.
    fn is_permanent(&self) -> bool {
        matches!(
            self,
            Failure::Login(
                ClientError::Unauthenticated(_)
                    | ClientError::NotFound(_)
                    | ClientError::InvalidInput(_)
                    | ClientError::Forbidden(_)
            )
        )
    }
}

impl From<Failure> for ClientError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Login(error) | Failure::Server(error) => error,
        }
    }
}

/// Logs in with `login`, connects to the server it names and completes the `Login` handshake.
pub(crate) async fn establish(
    settings: &Settings,
    login: &LoginFn,
) -> std::result::Result<Established, Failure> {
    let response = match time::timeout(settings.request_timeout, login()).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => return Err(Failure::Login(error)),
        Err(_) => {
            return Err(Failure::Login(ClientError::Timeout(
                "logging in did not finish in time".into(),
            )));
        }
    };
    let server = &response.server;
    let at = format!("server {} at {}:{}", server.id, server.host, server.port);
    let connect = TcpStream::connect((server.host.as_str(), server.port));
    let stream = match time::timeout(settings.connect_timeout, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            return Err(Failure::Server(ClientError::from_io(
                error,
                format!("could not connect to {at}"),
            )));
        }
        Err(_) => {
            return Err(Failure::Server(ClientError::Timeout(format!(
                "connecting to {at} did not finish in time"
            ))));
        }
    };
    // Chat frames are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let mut connection = Framed::new(stream, FrameCodec::new(DEFAULT_MAX_FRAME_LEN));
    let handshake = async {
        let login_frame = Frame::from(Body::Login(v1::Login {
            token: response.token.clone(),
            device: settings.device.clone(),
        }));
        connection
            .send(login_frame)
            .await
            .map_err(|e| frame_failure(e, &at))?;
        match connection.next().await {
            Some(Ok(Frame {
                body: Some(Body::LoginResult(result)),
            })) => Ok(result),
            Some(Ok(Frame {
                body: Some(Body::Error(error)),
            })) => Err(ClientError::from_raw_code(error.code, error.text)),
            Some(Ok(Frame {
                body: Some(Body::Kicked(kicked)),
            })) => Err(ClientError::Kicked {
                reason: KickReason::try_from(kicked.reason).unwrap_or(KickReason::Unspecified),
                text: kicked.text,
            }),
            Some(Ok(other)) => Err(ClientError::protocol(format!(
                "{at} answered the login with an unexpected frame: {other:?}"
            ))),
            Some(Err(error)) => Err(frame_failure(error, &at)),
            None => Err(ClientError::unavailable(format!(
                "{at} closed the connection during the login"
            ))),
        }
    };
    let result = match time::timeout(settings.connect_timeout, handshake).await {
        Ok(Ok(result)) => result,
        Ok(Err(error)) => return Err(Failure::Server(error)),
        Err(_) => {
            return Err(Failure::Server(ClientError::Timeout(format!(
                "{at} did not answer the login in time"
            ))));
        }
    };
    // The server's limit holds both ways: it sends no larger frame, and refuses larger ones.
    if result.max_frame_len > 0 {
        let announced = usize::try_from(result.max_frame_len).unwrap_or(usize::MAX);
        *connection.codec_mut() = FrameCodec::new(announced);
    }
    Ok(Established {
        connection,
        login: response,
        result,
        logged_in_at_ms: unix_millis(SystemTime::now()),
    })
}

/// A frame-level failure as a [`ClientError`].
fn frame_failure(error: FrameError, at: &str) -> ClientError {
    match error {
        FrameError::Io(error) => {
            ClientError::from_io(error, format!("the connection to {at} failed"))
        }
        other => ClientError::Protocol {
            message: format!("{at} sent an unreadable frame"),
            source: Some(Box::new(other)),
        },
    }
}

fn unix_millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    })
}

/// How serving a connection ended.
#[derive(Debug)]
enum Ended {
    /// The application stopped the client.
    Closed(DisconnectReason),
    /// The connection is gone; reconnect.
    Lost(String),
    /// The server ended the session; do not reconnect.
    Kicked { reason: KickReason, text: String },
}

/// The outcome of writing a frame that did not break the connection.
enum Written {
    Sent,
    /// Longer than the server accepts; nothing was written.
    TooLarge {
        len: u64,
        max: usize,
    },
}

/// The connection being served, and its timers.
struct Live {
    connection: Connection,
    server_id: String,
    heartbeat: Duration,
    idle_timeout: Duration,
    logged_in_at_ms: i64,
    connected_at: Instant,
    last_rx: Instant,
    last_tx: Instant,
    /// Whether reading is paused because the application is behind on events.
    read_paused: bool,
    next_ping_nonce: u64,
    /// When to fetch a fresh token for this connection's login (before it expires), if the
    /// server announced an expiry.
    refresh_at: Option<Instant>,
    /// A fresh token being fetched from the route.
    refreshing: Option<oneshot::Receiver<Result<TokenResponse>>>,
}

/// How early, as a share of its remaining lifetime, a token is refreshed: at 80 % of it.
const REFRESH_AT: f64 = 0.8;
/// How long to wait before trying again after a refresh failed.
const REFRESH_RETRY: Duration = Duration::from_secs(5);

/// When to refresh a token that expires at `expires_at_ms` (Unix ms; 0 means never).
fn refresh_time(expires_at_ms: i64) -> Option<Instant> {
    if expires_at_ms <= 0 {
        return None;
    }
    let left_ms = expires_at_ms
        .saturating_sub(unix_millis(SystemTime::now()))
        .max(0);
    let early = Duration::from_millis(u64::try_from(left_ms).unwrap_or(0)).mul_f64(REFRESH_AT);
    Some(Instant::now() + early)
}

impl Live {
    fn new(established: Established) -> Self {
        let result = &established.result;
        let announced = |ms: u32| (ms > 0).then(|| Duration::from_millis(u64::from(ms)));
        let idle_timeout = announced(result.idle_timeout_ms).unwrap_or(DEFAULT_IDLE_TIMEOUT);
        let heartbeat = announced(result.heartbeat_interval_ms)
            .unwrap_or(DEFAULT_HEARTBEAT)
            // A server announcing a heartbeat longer than its idle timeout would kick us.
            .min(idle_timeout / 3);
        let now = Instant::now();
        Live {
            connection: established.connection,
            server_id: result.server_id.clone(),
            heartbeat,
            idle_timeout,
            logged_in_at_ms: established.logged_in_at_ms,
            connected_at: now,
            last_rx: now,
            last_tx: now,
            read_paused: false,
            next_ping_nonce: 1,
            refresh_at: refresh_time(result.token_expires_at_ms),
            refreshing: None,
        }
    }

    /// Writes one frame, within `timeout`.
    async fn write(&mut self, frame: Frame, timeout: Duration) -> std::result::Result<(), Ended> {
        match self.write_frame(frame, timeout).await? {
            Written::Sent => Ok(()),
            Written::TooLarge { len, max } => Err(Ended::Lost(format!(
                "a {len}-byte control frame exceeds server {}'s limit of {max} bytes",
                self.server_id
            ))),
        }
    }

    /// Writes one frame, within `timeout`; a frame above the server's limit is not written
    /// (and the connection stays usable).
    async fn write_frame(
        &mut self,
        frame: Frame,
        timeout: Duration,
    ) -> std::result::Result<Written, Ended> {
        match time::timeout(timeout, self.connection.send(frame)).await {
            Ok(Ok(())) => {
                self.last_tx = Instant::now();
                Ok(Written::Sent)
            }
            // The codec checks the length before writing anything.
            Ok(Err(FrameError::TooLarge { len, max })) => Ok(Written::TooLarge { len, max }),
            Ok(Err(error)) => Err(Ended::Lost(format!(
                "writing to server {} failed: {error}",
                self.server_id
            ))),
            Err(_) => Err(Ended::Lost(format!(
                "server {} did not take a frame within {timeout:?}",
                self.server_id
            ))),
        }
    }
}

/// Events on their way to the application: a short local queue in front of the bounded channel,
/// so the task never blocks on a slow application (see the module docs).
struct EventSink {
    sender: Option<mpsc::Sender<Event>>,
    queue: VecDeque<Event>,
}

impl EventSink {
    fn push(&mut self, event: Event) {
        if self.sender.is_some() {
            self.queue.push_back(event);
            self.flush();
        }
    }

    /// Moves queued events into the channel while it has room.
    fn flush(&mut self) {
        let Some(sender) = &self.sender else { return };
        while let Some(event) = self.queue.pop_front() {
            match sender.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.queue.push_front(event);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    // The application dropped its stream: it wants no more events.
                    self.sender = None;
                    self.queue.clear();
                    return;
                }
            }
        }
    }

    /// Whether events wait for room in the channel.
    fn is_blocked(&self) -> bool {
        !self.queue.is_empty()
    }

    /// A sender to wait for room with, when events are waiting.
    fn waiting_sender(&self) -> Option<mpsc::Sender<Event>> {
        self.sender.clone().filter(|_| self.is_blocked())
    }

    /// Room was made: send one event, then as many as fit.
    fn send_with(&mut self, permit: mpsc::OwnedPermit<Event>) {
        if let Some(event) = self.queue.pop_front() {
            permit.send(event);
        }
        self.flush();
    }

    /// Hands the remaining events over, however long the application takes.
    async fn drain(&mut self) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        while let Some(event) = self.queue.pop_front() {
            if sender.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// Waits for room in the event channel; never resolves without a sender.
async fn reserve(sender: Option<mpsc::Sender<Event>>) -> Option<mpsc::OwnedPermit<Event>> {
    match sender {
        Some(sender) => sender.reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The connection task.
pub(crate) struct Task {
    settings: Arc<Settings>,
    login: LoginFn,
    /// The route, for fresh tokens.
    route: Route,
    commands: mpsc::Receiver<Command>,
    events: EventSink,
    status: watch::Sender<Status>,
    /// Set by `Client::logout` before it calls the route: the `LOGGED_OUT` kick that follows is
    /// expected, not a reason to alarm the application.
    logging_out: Arc<AtomicBool>,
    tracker: Tracker,
    /// Sends not written to the current connection, oldest first.
    queued: VecDeque<PendingSend>,
    /// Sends written and waiting for their `SendAck`, in writing order.
    in_flight: VecDeque<PendingSend>,
    /// When to flush delivery acknowledgements.
    ack_due: Option<Instant>,
    rng: StdRng,
}

impl Task {
    pub(crate) fn new(
        settings: Arc<Settings>,
        login: LoginFn,
        route: Route,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        status: watch::Sender<Status>,
        logging_out: Arc<AtomicBool>,
    ) -> Self {
        let tracker = Tracker::new();
        Task {
            settings,
            login,
            route,
            commands,
            events: EventSink {
                sender: Some(events),
                queue: VecDeque::new(),
            },
            status,
            logging_out,
            tracker,
            queued: VecDeque::new(),
            in_flight: VecDeque::new(),
            ack_due: None,
            rng: StdRng::from_os_rng(),
        }
    }

    /// Runs the client from its first connection until it stops.
    pub(crate) async fn run(mut self, first: Established) {
        let mut backoff = Backoff::new(self.settings.reconnect.clone());
        let mut next = Some(first);
        let mut last_loss = String::new();
        let reason = loop {
            let established = match next.take() {
                Some(established) => established,
                None => match self.reconnect(&mut backoff, &last_loss).await {
                    Ok(established) => established,
                    Err(reason) => break reason,
                },
            };
            let mut live = self.go_live(established);
            let ended = self.serve(&mut live).await;
            backoff.connection_ended(live.connected_at.elapsed());
            match ended {
                Ended::Closed(reason) => {
                    self.close_gracefully(&mut live).await;
                    break reason;
                }
                Ended::Kicked { reason, text } => {
                    info!(server = %live.server_id, ?reason, %text, "kicked; not reconnecting");
                    self.events.push(Event::Kicked { reason, text });
                    break DisconnectReason::Kicked(reason);
                }
                Ended::Lost(why) => {
                    warn!(server = %live.server_id, %why, "connection lost; reconnecting");
                    // Unacknowledged sends go out again first, in their order, same ids.
                    while let Some(send) = self.in_flight.pop_back() {
                        self.queued.push_front(send);
                    }
                    last_loss = why;
                }
            }
        };
        self.finish(reason).await;
    }

    /// Adopts a new connection: publishes it and sends the last acknowledgements again soon.
    fn go_live(&mut self, established: Established) -> Live {
        let status = established.status();
        info!(user = status.user_id, server = %status.server_id, "connected");
        let state = status.state.clone();
        self.status.send_replace(status);
        self.events.push(Event::State(state));
        let now = Instant::now();
        self.tracker.restart();
        // Acknowledgements decided but lost with the old connection go out again soon.
        self.ack_due = Some(now + ACK_DELAY);
        Live::new(established)
    }

    /// Serves `live` until it ends.
    async fn serve(&mut self, live: &mut Live) -> Ended {
        // What could not be sent on the previous connection goes first.
        while let Some(send) = self.queued.pop_front() {
            if let Err(ended) = self.transmit(live, send).await {
                return ended;
            }
        }
        loop {
            let reading = !self.events.is_blocked();
            if reading && live.read_paused {
                // Frames waited in the socket; the silence was ours.
                live.last_rx = Instant::now();
            }
            live.read_paused = !reading;
            let idle_at = live.last_rx + live.idle_timeout;
            let ping_at = live.last_tx + live.heartbeat;
            let wake_at = self.next_wakeup();
            let waiting = self.events.waiting_sender();
            let outcome = tokio::select! {
                command = self.commands.recv() => match command {
                    None => Err(Ended::Closed(DisconnectReason::Closed)),
                    Some(Command::Close { reason }) => Err(Ended::Closed(reason)),
                    Some(Command::Send(send)) => self.admit(live, send).await,
                },
                frame = live.connection.next(), if reading => {
                    live.last_rx = Instant::now();
                    self.on_frame(live, frame)
                }
                Some(permit) = reserve(waiting.clone()), if waiting.is_some() => {
                    self.events.send_with(permit);
                    Ok(())
                }
                () = sleep_until(wake_at), if wake_at.is_some() => self.on_timer(live).await,
                () = sleep_until(live.refresh_at), if live.refresh_at.is_some() && live.refreshing.is_none() => {
                    self.start_refresh(live);
                    Ok(())
                }
                fresh = async { live.refreshing.as_mut()?.await.ok() }, if live.refreshing.is_some() => {
                    live.refreshing = None;
                    self.on_fresh_token(live, fresh).await
                }
                () = time::sleep_until(ping_at) => {
                    let nonce = live.next_ping_nonce;
                    live.next_ping_nonce += 1;
                    let ping = Frame::from(Body::Ping(Ping { nonce }));
                    live.write(ping, self.settings.request_timeout).await
                }
                () = time::sleep_until(idle_at), if reading => Err(Ended::Lost(format!(
                    "no frame from server {} for {:?}",
                    live.server_id, live.idle_timeout
                ))),
            };
            if let Err(ended) = outcome {
                return ended;
            }
        }
    }

    /// Fetches a fresh token for this login from the route, without blocking the connection.
    fn start_refresh(&mut self, live: &mut Live) {
        let (done, result) = oneshot::channel();
        let (route, token) = (self.route.clone(), self.status.borrow().token.clone());
        tokio::spawn(async move {
            let _ = done.send(route.refresh_token(&token).await);
        });
        live.refreshing = Some(result);
    }

    /// Hands a fresh token to the server and keeps it for the HTTP calls; on failure, tries
    /// again a little later (the server closes the connection when the old token expires, and
    /// the client then logs in again).
    async fn on_fresh_token(
        &mut self,
        live: &mut Live,
        fresh: Option<Result<TokenResponse>>,
    ) -> std::result::Result<(), Ended> {
        match fresh {
            Some(Ok(fresh)) => {
                live.refresh_at = None;
                self.status
                    .send_modify(|status| status.token = fresh.token.clone());
                let frame =
                    Frame::from(Body::RefreshToken(v1::RefreshToken { token: fresh.token }));
                live.write(frame, self.settings.request_timeout).await
            }
            Some(Err(error)) => {
                warn!(%error, "cannot refresh the login token; trying again");
                live.refresh_at = Some(Instant::now() + REFRESH_RETRY);
                Ok(())
            }
            None => {
                live.refresh_at = Some(Instant::now() + REFRESH_RETRY);
                Ok(())
            }
        }
    }

    /// The earliest timer: acknowledgements to flush or a send to expire. Sends are kept in
    /// about the order of their deadlines, so the fronts stand for all (a send a few
    /// milliseconds out of order expires that much late).
    fn next_wakeup(&self) -> Option<Instant> {
        let first_deadline = |sends: &VecDeque<PendingSend>| sends.front().map(|s| s.deadline);
        [
            self.ack_due,
            first_deadline(&self.queued),
            first_deadline(&self.in_flight),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A new send while connected: written at once if there is room.
    async fn admit(
        &mut self,
        live: &mut Live,
        send: PendingSend,
    ) -> std::result::Result<(), Ended> {
        match self.refuse_when_full(send) {
            Some(send) => self.transmit(live, send).await,
            None => Ok(()),
        }
    }

    /// Fails `send` if too many are pending; otherwise hands it back.
    fn refuse_when_full(&mut self, send: PendingSend) -> Option<PendingSend> {
        let pending = self.queued.len() + self.in_flight.len();
        if pending >= self.settings.max_pending_sends {
            send.resolve(Err(ClientError::unavailable(format!(
                "{pending} messages are already waiting for acknowledgement; \
                 wait for some before sending more"
            ))));
            return None;
        }
        Some(send)
    }

    /// Writes `send` to the server; it then waits in flight for its acknowledgement.
    async fn transmit(
        &mut self,
        live: &mut Live,
        send: PendingSend,
    ) -> std::result::Result<(), Ended> {
        if send.reply.is_closed() {
            // The caller stopped waiting before it was written: drop it.
            return Ok(());
        }
        let frame = Frame::from(Body::Send(send.frame.clone()));
        self.in_flight.push_back(PendingSend {
            written: true,
            ..send
        });
        match live
            .write_frame(frame, self.settings.request_timeout)
            .await?
        {
            Written::Sent => {}
            Written::TooLarge { len, max } => {
                if let Some(send) = self.in_flight.pop_back() {
                    send.resolve(Err(ClientError::InvalidInput(format!(
                        "the message encodes to {len} bytes; server {} accepts at most {max}: \
                         send a shorter body",
                        live.server_id
                    ))));
                }
            }
        }
        Ok(())
    }

    /// Handles one read from the server.
    fn on_frame(
        &mut self,
        live: &mut Live,
        frame: Option<std::result::Result<Frame, FrameError>>,
    ) -> std::result::Result<(), Ended> {
        let body = match frame {
            Some(Ok(Frame { body: Some(body) })) => body,
            Some(Ok(Frame { body: None })) => return Ok(()),
            Some(Err(error)) => {
                return Err(Ended::Lost(format!(
                    "reading from server {} failed: {error}",
                    live.server_id
                )));
            }
            None => {
                return Err(Ended::Lost(format!(
                    "server {} closed the connection",
                    live.server_id
                )));
            }
        };
        match body {
            Body::Pong(_) => {}
            Body::TokenRefreshed(refreshed) => {
                live.refresh_at = refresh_time(refreshed.expires_at_ms);
            }
            Body::Deliver(deliver) => self.on_deliver(live, deliver),
            Body::SendAck(ack) => self.on_send_ack(ack),
            Body::Error(error) => return self.on_error(live, error),
            Body::Kicked(kicked) => return Err(self.on_kicked(kicked)),
            other => {
                warn!(server = %live.server_id, frame = ?other, "ignoring a frame only clients send");
            }
        }
        Ok(())
    }

    fn on_deliver(&mut self, live: &Live, deliver: v1::Deliver) {
        let conversation: Conversation = match deliver.conversation.parse() {
            Ok(conversation) => conversation,
            Err(_) => {
                warn!(
                    server = %live.server_id,
                    conversation = %deliver.conversation,
                    message_id = deliver.message_id,
                    "dropping a delivery with an invalid conversation"
                );
                return;
            }
        };
        let now = Instant::now();
        let arrival = self.tracker.receive(&conversation.to_string(), deliver.seq);
        self.schedule_acks(now);
        if arrival == Arrival::Duplicate {
            debug!(%conversation, seq = deliver.seq, "dropping a duplicate delivery");
            return;
        }
        self.events.push(Event::Message(IncomingMessage {
            message_id: deliver.message_id,
            conversation,
            seq: deliver.seq,
            sender_id: deliver.sender_id,
            sender_name: deliver.sender_name,
            body: deliver.body,
            sent_at: deliver.sent_at_ms,
            offline: deliver.sent_at_ms < live.logged_in_at_ms,
        }));
    }

    fn on_send_ack(&mut self, ack: v1::SendAck) {
        let position = self
            .in_flight
            .iter()
            .position(|send| send.frame.client_msg_id == ack.client_msg_id);
        let receipt = SendReceipt::from_ack(ack);
        if let Ok(SendReceipt::Stored {
            conversation, seq, ..
        }) = &receipt
        {
            // The server does not deliver our own message back; it acknowledges nothing.
            self.tracker.own(&conversation.to_string(), *seq);
        }
        match position.and_then(|at| self.in_flight.remove(at)) {
            Some(send) => send.resolve(receipt),
            None => debug!("acknowledgement for a send no longer waited for"),
        }
    }

    fn on_error(&mut self, live: &Live, error: v1::Error) -> std::result::Result<(), Ended> {
        if !error.client_msg_id.is_empty() {
            let position = self
                .in_flight
                .iter()
                .position(|send| send.frame.client_msg_id == error.client_msg_id);
            if let Some(send) = position.and_then(|at| self.in_flight.remove(at)) {
                send.resolve(Err(ClientError::from_raw_code(error.code, error.text)));
                return Ok(());
            }
        }
        let code = ErrorCode::try_from(error.code).unwrap_or(ErrorCode::Unspecified);
        if code == ErrorCode::Undeliverable {
            self.on_undeliverable(live, error);
            return Ok(());
        }
        warn!(server = %live.server_id, code = code.as_str_name(), text = %error.text, "server error");
        match code {
            // The server closes the connection after these.
            ErrorCode::MalformedFrame
            | ErrorCode::FrameTooLarge
            | ErrorCode::NotLoggedIn
            | ErrorCode::Unauthenticated => Err(Ended::Lost(format!(
                "server {} refused the connection: {} {}",
                live.server_id,
                code.as_str_name(),
                error.text
            ))),
            _ => Ok(()),
        }
    }

    /// A message the server skips: counted as received (so acknowledgements move past it) and
    /// reported once.
    fn on_undeliverable(&mut self, live: &Live, error: v1::Error) {
        let Ok(conversation) = error.conversation.parse::<Conversation>() else {
            warn!(server = %live.server_id, text = %error.text, "undeliverable message in an invalid conversation");
            return;
        };
        let now = Instant::now();
        let arrival = self.tracker.receive(&conversation.to_string(), error.seq);
        self.schedule_acks(now);
        if arrival == Arrival::Duplicate {
            return;
        }
        warn!(server = %live.server_id, %conversation, seq = error.seq, text = %error.text, "a message cannot be delivered");
        self.events.push(Event::Undeliverable {
            message_id: error.message_id,
            conversation,
            seq: error.seq,
            text: error.text,
        });
    }

    fn on_kicked(&mut self, kicked: v1::Kicked) -> Ended {
        let reason = KickReason::try_from(kicked.reason).unwrap_or(KickReason::Unspecified);
        match reason {
            KickReason::LoggedOut if self.logging_out.load(Ordering::SeqCst) => {
                Ended::Closed(DisconnectReason::LoggedOut)
            }
            KickReason::Replaced | KickReason::LoggedOut => Ended::Kicked {
                reason,
                text: kicked.text,
            },
            KickReason::ServerShutdown
            | KickReason::Idle
            | KickReason::TokenExpired
            | KickReason::Unspecified => Ended::Lost(format!(
                "kicked ({}): {}",
                reason.as_str_name(),
                kicked.text
            )),
        }
    }

    /// Flushes due acknowledgements and expires overdue sends.
    async fn on_timer(&mut self, live: &mut Live) -> std::result::Result<(), Ended> {
        let now = Instant::now();
        self.expire_sends(now);
        if self.ack_due.is_some_and(|due| due <= now) {
            self.ack_due = None;
            for (conversation, up_to_seq) in self.tracker.take_acks() {
                let ack = Frame::from(Body::DeliveryAck(DeliveryAck {
                    conversation,
                    up_to_seq,
                }));
                live.write(ack, self.settings.request_timeout).await?;
            }
        }
        Ok(())
    }

    /// Fails the sends whose time ran out.
    fn expire_sends(&mut self, now: Instant) {
        let overdue = |send: &PendingSend| send.deadline <= now;
        let timeout = self.settings.send_timeout;
        let expired = take_where(&mut self.queued, overdue)
            .into_iter()
            .chain(take_where(&mut self.in_flight, overdue));
        for send in expired {
            let error = if send.written {
                ClientError::Timeout(format!(
                    "no acknowledgement within {timeout:?}; the message may or may not be \
                     stored: send again with the same client_msg_id"
                ))
            } else {
                ClientError::unavailable(format!(
                    "not sent: no connection to a server within {timeout:?}; sending again is safe"
                ))
            };
            send.resolve(Err(error));
        }
    }

    /// Reconnects with backoff; `Err` when the client must stop instead.
    async fn reconnect(
        &mut self,
        backoff: &mut Backoff,
        loss: &str,
    ) -> std::result::Result<Established, DisconnectReason> {
        let mut last_error = loss.to_owned();
        loop {
            let Some((attempt, delay)) = backoff.next_delay(&mut self.rng) else {
                return Err(DisconnectReason::GaveUp {
                    attempts: backoff.attempts(),
                    last_error,
                });
            };
            self.set_state(ConnectionState::Reconnecting {
                attempt,
                after: delay,
            });
            self.while_disconnected(time::sleep(delay)).await?;
            self.set_state(ConnectionState::Connecting);
            let settings = Arc::clone(&self.settings);
            let login = if settings.resume {
                let token = self.status.borrow().token.clone();
                resuming(self.route.clone(), token, Arc::clone(&self.login))
            } else {
                Arc::clone(&self.login)
            };
            let attempt_result = self
                .while_disconnected(async move { establish(&settings, &login).await })
                .await?;
            match attempt_result {
                Ok(established) => return Ok(established),
                Err(failure) if failure.is_permanent() => {
                    let error = ClientError::from(failure);
                    warn!(%error, "logging in again was refused; stopping");
                    return Err(DisconnectReason::Rejected(error.to_string()));
                }
                Err(failure) => {
                    let error = ClientError::from(failure);
                    warn!(attempt, %error, "reconnect attempt failed");
                    last_error = error.to_string();
                }
            }
        }
    }

    /// Drives `work` while there is no connection: sends are queued, events delivered, overdue
    /// sends failed. `Err` if the client is closed meanwhile.
    async fn while_disconnected<F: Future>(
        &mut self,
        work: F,
    ) -> std::result::Result<F::Output, DisconnectReason> {
        let mut work = std::pin::pin!(work);
        loop {
            let wake_at = self.next_wakeup();
            let waiting = self.events.waiting_sender();
            tokio::select! {
                output = &mut work => return Ok(output),
                command = self.commands.recv() => match command {
                    None => return Err(DisconnectReason::Closed),
                    Some(Command::Close { reason }) => return Err(reason),
                    Some(Command::Send(send)) => {
                        if let Some(send) = self.refuse_when_full(send) {
                            self.queued.push_back(send);
                        }
                    }
                },
                Some(permit) = reserve(waiting.clone()), if waiting.is_some() => {
                    self.events.send_with(permit);
                }
                () = sleep_until(wake_at), if wake_at.is_some() => {
                    let now = Instant::now();
                    self.expire_sends(now);
                    // Nothing can be acknowledged without a connection.
                    if self.ack_due.is_some_and(|due| due <= now) {
                        self.ack_due = None;
                    }
                }
            }
        }
    }

    /// A clean close: acknowledge what can be, then close the socket.
    async fn close_gracefully(&mut self, live: &mut Live) {
        for (conversation, up_to_seq) in self.tracker.take_acks() {
            let ack = Frame::from(Body::DeliveryAck(DeliveryAck {
                conversation,
                up_to_seq,
            }));
            if live
                .write(ack, self.settings.request_timeout)
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = time::timeout(
            self.settings.request_timeout,
            SinkExt::<Frame>::close(&mut live.connection),
        )
        .await;
    }

    /// Stops: fails what is pending, reports the reason, hands the last events over.
    async fn finish(mut self, reason: DisconnectReason) {
        info!(?reason, "client stopped");
        self.commands.close();
        let failure = || match &reason {
            DisconnectReason::Kicked(kick) => ClientError::Kicked {
                reason: *kick,
                text: "the server ended the session".into(),
            },
            _ => ClientError::Closed,
        };
        for send in self.queued.drain(..).chain(self.in_flight.drain(..)) {
            send.resolve(Err(failure()));
        }
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Send(send) = command {
                send.resolve(Err(failure()));
            }
        }
        self.set_state(ConnectionState::Disconnected { reason });
        self.events.drain().await;
    }

    /// Acknowledgements are due within [`ACK_DELAY`] (sooner if already due sooner).
    fn schedule_acks(&mut self, now: Instant) {
        let due = now + ACK_DELAY;
        self.ack_due = Some(self.ack_due.map_or(due, |earlier| earlier.min(due)));
    }

    fn set_state(&mut self, state: ConnectionState) {
        self.status
            .send_modify(|status| status.state = state.clone());
        self.events.push(Event::State(state));
    }
}

/// Removes and returns the elements of `items` matching `predicate`, keeping the others' order.
fn take_where<T>(items: &mut VecDeque<T>, predicate: impl Fn(&T) -> bool) -> Vec<T> {
    let mut taken = Vec::new();
    let mut kept = VecDeque::with_capacity(items.len());
    for item in items.drain(..) {
        if predicate(&item) {
            taken.push(item);
        } else {
            kept.push_back(item);
        }
    }
    *items = kept;
    taken
}
