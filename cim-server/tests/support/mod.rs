//! Test support: a cluster in one process (memory stores shared by every server) and a small
//! client that speaks the wire protocol over real TCP.
//!
//! Every wait is bounded, so a bug fails a test instead of hanging it.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cim_core::balancer::ConsistentHash;
use cim_core::embedded::memory::{
    MemoryAccountStore, MemoryMessageStore, MemoryMetaStore, MemorySessionStore,
};
use cim_core::token::TokenKey;
use cim_core::{
    AccountStore, GroupId, MessageStore, NameRules, NewGroup, NewUser, ServerId, Stores, UserId,
};
use cim_pipeline::{LimitsConfig, RateLimit};
use cim_proto::v1::{self, Recipient, recipient};
use cim_proto::{Body, ErrorCode, Frame, FrameCodec, KickReason};
use cim_server::{RunningServer, Server, ServerConfig};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::Framed;

/// How long any single expected event may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server configuration for tests: loopback, ephemeral ports, short timers.
pub fn test_config() -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".into(),
        internal_listen: "127.0.0.1:0".into(),
        heartbeat_interval: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(10),
        login_timeout: Duration::from_secs(5),
        session_refresh: Duration::from_millis(500),
        load_report: Duration::from_millis(200),
        register_wait: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(2),
        ..ServerConfig::default()
    }
}

/// Limits for tests: the defaults, but rates no test reaches unless it means to.
pub fn test_limits() -> LimitsConfig {
    LimitsConfig::default().with_rates(RateLimit::new(10_000, 10_000))
}

/// Stores shared by every server of the test, and the deployment's token key.
pub struct Cluster {
    pub stores: Stores,
    pub key: TokenKey,
}

impl Cluster {
    /// Every store in memory; leases and sessions expire after a second.
    pub fn memory() -> Cluster {
        Cluster::with(
            Arc::new(MemoryAccountStore::new()),
            Arc::new(MemoryMessageStore::new()),
        )
    }

    /// Memory meta and session stores with the given account and message stores.
    pub fn with(accounts: Arc<dyn AccountStore>, messages: Arc<dyn MessageStore>) -> Cluster {
        let stores = Stores {
            meta: Arc::new(MemoryMetaStore::new(Duration::from_secs(1))),
            sessions: Arc::new(MemorySessionStore::new(Duration::from_secs(1))),
            accounts,
            messages,
            balancer: Arc::new(ConsistentHash::new(16).unwrap()),
        };
        Cluster {
            stores,
            key: TokenKey::new(&[42; 32]).unwrap(),
        }
    }

    /// Starts server `id` with [`test_config`].
    pub async fn start(&self, id: &str) -> RunningServer {
        self.start_with(id, test_config()).await
    }

    /// Starts server `id` with `config` and [`test_limits`].
    pub async fn start_with(&self, id: &str, config: ServerConfig) -> RunningServer {
        self.start_with_limits(id, config, test_limits()).await
    }

    /// Starts server `id` with `config` and `limits`.
    pub async fn start_with_limits(
        &self,
        id: &str,
        config: ServerConfig,
        limits: LimitsConfig,
    ) -> RunningServer {
        Server::builder(
            ServerId::new(id).unwrap(),
            self.stores.clone(),
            self.key.clone(),
        )
        .config(config)
        .limits(limits)
        .start()
        .await
        .unwrap()
    }

    /// Creates user `name`; its id and a valid login token.
    pub async fn user(&self, name: &str) -> (UserId, String) {
        let user = NewUser::new(name, "correct horse", &NameRules::default())
            .await
            .unwrap();
        let user = self.stores.accounts.create_user(user).await.unwrap();
        (user.id, self.token(user.id, name))
    }

    /// A token for `user`.
    pub fn token(&self, user: UserId, name: &str) -> String {
        self.key
            .issue(user, name, Duration::from_secs(600))
            .unwrap()
            .0
    }

    /// Creates a group owned by `owner` with `members` added.
    pub async fn group(&self, name: &str, owner: UserId, members: &[UserId]) -> GroupId {
        let group = NewGroup::new(name, owner, &NameRules::default()).unwrap();
        let group = self.stores.accounts.create_group(group).await.unwrap();
        for member in members {
            self.stores
                .accounts
                .add_member(group.id, *member, cim_core::Seq(1))
                .await
                .unwrap();
        }
        group.id
    }
}

/// A wire-protocol client over real TCP.
pub struct TestClient {
    framed: Framed<TcpStream, FrameCodec>,
    /// The server's answer to the login, once logged in.
    pub login: Option<v1::LoginResult>,
}

/// To one user.
pub fn to_user(user: UserId) -> Recipient {
    Recipient {
        to: Some(recipient::To::UserId(user.0)),
    }
}

/// To a group.
pub fn to_group(group: GroupId) -> Recipient {
    Recipient {
        to: Some(recipient::To::GroupId(group.0)),
    }
}

/// To every online user.
pub fn to_all() -> Recipient {
    Recipient {
        to: Some(recipient::To::All(true)),
    }
}

impl TestClient {
    /// Connects without logging in.
    pub async fn connect(addr: SocketAddr) -> TestClient {
        let socket = timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        TestClient {
            framed: Framed::new(socket, FrameCodec::default()),
            login: None,
        }
    }

    /// Connects, logs in with `token`, and expects the `LoginResult`.
    pub async fn login(addr: SocketAddr, token: &str) -> TestClient {
        let mut client = TestClient::connect(addr).await;
        client
            .send(Body::Login(v1::Login {
                token: token.into(),
                device: "test".into(),
            }))
            .await;
        match client.next().await {
            Body::LoginResult(result) => client.login = Some(result),
            other => panic!("expected LoginResult, got {other:?}"),
        }
        client
    }

    /// Sends one frame.
    pub async fn send(&mut self, body: Body) {
        timeout(WAIT, self.framed.send(Frame::from(body)))
            .await
            .expect("send in time")
            .expect("send");
    }

    /// Sends one frame; false if the connection is gone.
    pub async fn try_send(&mut self, body: Body) -> bool {
        matches!(
            timeout(WAIT, self.framed.send(Frame::from(body))).await,
            Ok(Ok(()))
        )
    }

    /// Writes raw bytes to the socket.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let socket = self.framed.get_mut();
        timeout(WAIT, socket.write_all(bytes))
            .await
            .expect("write in time")
            .expect("write");
    }

    /// Sends a text message.
    pub async fn send_text(&mut self, to: Recipient, client_msg_id: &str, body: &str) {
        self.send(Body::Send(v1::Send {
            client_msg_id: client_msg_id.into(),
            to: Some(to),
            body: body.into(),
            deliver_at_ms: None,
        }))
        .await;
    }

    /// Acknowledges `conversation` up to `seq`.
    pub async fn ack(&mut self, conversation: &str, seq: u64) {
        self.send(Body::DeliveryAck(v1::DeliveryAck {
            conversation: conversation.into(),
            up_to_seq: seq,
        }))
        .await;
    }

    /// The next frame; panics if none arrives in time or the connection closes.
    pub async fn next(&mut self) -> Body {
        match self.next_within(WAIT).await {
            Some(body) => body,
            None => panic!("no frame within {WAIT:?}"),
        }
    }

    /// The next frame, or `None` after `wait`; panics if the connection closes.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Body> {
        match timeout(wait, self.framed.next()).await {
            Err(_) => None,
            Ok(Some(Ok(frame))) => Some(frame.body.expect("frames have bodies")),
            Ok(Some(Err(e))) => panic!("bad frame from the server: {e}"),
            Ok(None) => panic!("the server closed the connection"),
        }
    }

    /// The next frame, or `None` if the connection closed (cleanly or not).
    pub async fn next_or_closed(&mut self) -> Option<Body> {
        match timeout(WAIT, self.framed.next()).await {
            Err(_) => panic!("neither a frame nor a close within {WAIT:?}"),
            Ok(Some(Ok(frame))) => Some(frame.body.expect("frames have bodies")),
            Ok(Some(Err(_)) | None) => None,
        }
    }

    /// Expects a `SendAck`.
    pub async fn expect_ack(&mut self) -> v1::SendAck {
        match self.next().await {
            Body::SendAck(ack) => ack,
            other => panic!("expected SendAck, got {other:?}"),
        }
    }

    /// Expects a `Deliver`.
    pub async fn expect_deliver(&mut self) -> v1::Deliver {
        match self.next().await {
            Body::Deliver(deliver) => deliver,
            other => panic!("expected Deliver, got {other:?}"),
        }
    }

    /// Expects an `Error` with `code`.
    pub async fn expect_error(&mut self, code: ErrorCode) -> v1::Error {
        match self.next().await {
            Body::Error(error) if error.code == code as i32 => error,
            other => panic!("expected Error {code:?}, got {other:?}"),
        }
    }

    /// Expects `Kicked` with `reason`.
    pub async fn expect_kicked(&mut self, reason: KickReason) {
        match self.next().await {
            Body::Kicked(kicked) if kicked.reason == reason as i32 => {}
            other => panic!("expected Kicked {reason:?}, got {other:?}"),
        }
    }

    /// Expects the server to close the connection, with no frame before.
    pub async fn expect_closed(&mut self) {
        if let Some(body) = self.next_or_closed().await {
            panic!("expected the connection to close, got {body:?}");
        }
    }

    /// A round trip: every frame the server queued for this client before answering this ping
    /// arrives first. Returns those frames.
    pub async fn ping_barrier(&mut self) -> Vec<Body> {
        let nonce = rand_nonce();
        self.send(Body::Ping(v1::Ping { nonce })).await;
        let mut before = Vec::new();
        loop {
            match self.next().await {
                Body::Pong(pong) if pong.nonce == nonce => return before,
                other => before.push(other),
            }
        }
    }
}

fn rand_nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Waits until every server knows every other one through the MetaStore (so that relaying
/// between them works from the first message).
pub async fn wait_for_cluster(servers: &[&RunningServer]) {
    let ids: Vec<ServerId> = servers.iter().map(|s| s.id().clone()).collect();
    timeout(WAIT, async {
        while !servers
            .iter()
            .all(|server| ids.iter().all(|id| server.peers().contains(id)))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the servers discover each other");
}
