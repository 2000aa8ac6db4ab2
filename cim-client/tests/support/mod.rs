//! Test doubles for the SDK: a fake cim server speaking the real frames over real TCP, a tiny
//! HTTP route stub, and helpers that wait for events with a bound so a bug fails instead of
//! hanging.

// Each test crate uses part of the support code.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_client::{
    ClientBuilder, ClientError, ConnectionState, Event, Events, IncomingMessage, LoginResponse,
    ServerAddress,
};
use cim_proto::v1::{self, DeliveryAck, LoginResult};
use cim_proto::{Body, Frame, FrameCodec};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::codec::Framed;

/// How long any single expected thing may take.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// Awaits `future`, failing the test if it takes longer than [`PATIENCE`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A fake cim server: accepts client connections on 127.0.0.1 and lets the test play the server.
pub struct FakeServer {
    listener: TcpListener,
    pub addr: SocketAddr,
    logins: Arc<AtomicUsize>,
}

impl FakeServer {
    pub async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        FakeServer {
            listener,
            addr,
            logins: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The route's answer that sends a client here, with a token naming the login's number.
    pub fn login_response(addr: SocketAddr, n: usize) -> LoginResponse {
        LoginResponse {
            user_id: 7,
            name: "alice".into(),
            token: format!("token-{n}"),
            expires_at: i64::MAX,
            server: ServerAddress {
                id: "fake".into(),
                host: addr.ip().to_string(),
                port: addr.port(),
            },
        }
    }

    /// A builder whose logins (first and on every reconnect) point at this server, with fast
    /// reconnects.
    pub fn client(&self) -> ClientBuilder {
        let (addr, logins) = (self.addr, Arc::clone(&self.logins));
        ClientBuilder::new("http://127.0.0.1:9")
            .device("test")
            .reconnect(
                cim_client::ReconnectPolicy::default()
                    .initial_backoff(Duration::from_millis(20))
                    .max_backoff(Duration::from_millis(50)),
            )
            .login_with(move || {
                let n = logins.fetch_add(1, Ordering::SeqCst) + 1;
                async move { Ok(FakeServer::login_response(addr, n)) }
            })
    }

    /// How many times a client logged in "at the route".
    pub fn logins(&self) -> usize {
        self.logins.load(Ordering::SeqCst)
    }

    /// Accepts the next connection and reads its `Login` frame.
    pub async fn accept(&self) -> ServerConn {
        let (stream, _) = within("a client connection", self.listener.accept())
            .await
            .expect("accept");
        let mut conn = ServerConn {
            framed: Framed::new(stream, FrameCodec::default()),
            login: v1::Login::default(),
        };
        match conn.recv().await {
            Some(Body::Login(login)) => conn.login = login,
            other => panic!("expected Login first, got {other:?}"),
        }
        conn
    }

    /// Accepts the next connection and logs it in with `result`.
    pub async fn accept_logged_in(&self, result: LoginResult) -> ServerConn {
        let mut conn = self.accept().await;
        conn.send(Body::LoginResult(result)).await;
        conn
    }
}

/// A `LoginResult` with the protocol's defaults.
pub fn login_result() -> LoginResult {
    LoginResult {
        user_id: 7,
        user_name: "alice".into(),
        server_id: "fake".into(),
        connection_id: 1,
        heartbeat_interval_ms: 10_000,
        idle_timeout_ms: 30_000,
        max_frame_len: 64 * 1024,
        ..Default::default()
    }
}

/// The server side of one client connection.
pub struct ServerConn {
    framed: Framed<TcpStream, FrameCodec>,
    pub login: v1::Login,
}

impl ServerConn {
    pub async fn send(&mut self, body: Body) {
        within("writing a frame", self.framed.send(Frame::from(body)))
            .await
            .expect("write");
    }

    /// The next frame's body; `None` when the client closed the connection.
    pub async fn recv(&mut self) -> Option<Body> {
        match within("a frame from the client", self.framed.next()).await {
            Some(Ok(frame)) => frame.body,
            Some(Err(error)) => panic!("bad frame from the client: {error}"),
            None => None,
        }
    }

    /// The next frame that is not a `Ping`.
    pub async fn recv_skipping_pings(&mut self) -> Option<Body> {
        loop {
            match self.recv().await {
                Some(Body::Ping(_)) => continue,
                other => return other,
            }
        }
    }

    pub async fn expect_send(&mut self) -> v1::Send {
        match self.recv_skipping_pings().await {
            Some(Body::Send(send)) => send,
            other => panic!("expected Send, got {other:?}"),
        }
    }

    pub async fn expect_ack(&mut self) -> DeliveryAck {
        match self.recv_skipping_pings().await {
            Some(Body::DeliveryAck(ack)) => ack,
            other => panic!("expected DeliveryAck, got {other:?}"),
        }
    }

    /// Delivers message `seq` of `conversation`, from user 2, sent at `sent_at_ms`.
    pub async fn deliver(&mut self, conversation: &str, seq: u64, sent_at_ms: i64) {
        self.send(Body::Deliver(deliver(conversation, seq, sent_at_ms)))
            .await;
    }

    /// Waits until the client closes the connection, ignoring what it sends meanwhile.
    pub async fn expect_closed(&mut self) {
        while self.recv().await.is_some() {}
    }
}

/// A `Deliver` from user 2 ("bob"), its id derived from conversation and sequence.
pub fn deliver(conversation: &str, seq: u64, sent_at_ms: i64) -> v1::Deliver {
    v1::Deliver {
        message_id: 1000 + seq,
        conversation: conversation.into(),
        seq,
        sender_id: 2,
        sender_name: "bob".into(),
        to: None,
        body: format!("{conversation}#{seq}"),
        sent_at_ms,
    }
}

/// The acknowledgement of `send`, stored as `seq` of `conversation`.
pub fn send_ack(send: &v1::Send, conversation: &str, seq: u64) -> Body {
    Body::SendAck(v1::SendAck {
        client_msg_id: send.client_msg_id.clone(),
        message_id: 5000 + seq,
        conversation: conversation.into(),
        seq,
        sent_at_ms: 1,
        scheduled_id: 0,
    })
}

/// The next event.
pub async fn next_event(events: &mut Events) -> Event {
    within("an event", events.recv())
        .await
        .expect("the event stream ended")
}

/// The next message, skipping state events.
pub async fn next_message(events: &mut Events) -> IncomingMessage {
    loop {
        match next_event(events).await {
            Event::Message(message) => return message,
            Event::State(_) => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Skips events until a state matching `wanted`; returns every event seen on the way.
pub async fn wait_for_state(
    events: &mut Events,
    wanted: impl Fn(&ConnectionState) -> bool,
) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let event = next_event(events).await;
        let done = matches!(&event, Event::State(state) if wanted(state));
        seen.push(event);
        if done {
            return seen;
        }
    }
}

/// Whether `error` is [`ClientError::Closed`].
pub fn is_closed(error: &ClientError) -> bool {
    matches!(error, ClientError::Closed)
}

/// One HTTP request as the route stub saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub authorization: Option<String>,
    pub body: String,
}

/// A route stub: answers each HTTP request with `(status, json)` from a handler, and records
/// the requests. One request per connection (`Connection: close`).
pub struct RouteStub {
    pub url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RouteStub {
    pub async fn start(
        handler: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static,
    ) -> RouteStub {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let request = read_request(stream, handler.as_ref()).await;
                if let Some(request) = request {
                    recorded.lock().expect("lock").push(request);
                }
            }
        });
        RouteStub {
            url,
            requests,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for RouteStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request(
    stream: TcpStream,
    handler: &(dyn Fn(&Request) -> (u16, String) + Send + Sync),
) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let (mut length, mut authorization) = (0, None);
    loop {
        line.clear();
        reader.read_line(&mut line).await.ok()?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "authorization" => authorization = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.ok()?;
    let request = Request {
        method,
        target,
        authorization,
        body: String::from_utf8(body).ok()?,
    };
    let (status, json) = handler(&request);
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{json}",
        json.len()
    );
    let mut stream = reader.into_inner();
    stream.write_all(response.as_bytes()).await.ok()?;
    stream.shutdown().await.ok()?;
    Some(request)
}
