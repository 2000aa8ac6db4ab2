//! A route on a loopback port over memory stores, and a client for it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cim_core::balancer::ConsistentHash;
use cim_core::embedded::memory::{
    MemoryAccountStore, MemoryMessageStore, MemoryMetaStore, MemorySessionStore,
};
use cim_core::token::TokenKey;
use cim_core::{
    BindPolicy, ConnectionId, LoadBalancer, NameRules, Registration, ServerId, ServerInfo, Session,
    Stores, Timestamp, UserId,
};
use cim_pipeline::LimitsConfig;
use cim_pipeline::rate_limit::Allowance;
use cim_proto::http::{Credentials, ErrorBody, UserView};
use cim_route::{LoginLimits, Route, RouteConfig};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A running route and what a test needs around it.
pub struct TestRoute {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The HTTP client.
    pub http: reqwest::Client,
    /// The route's backends, for setting up and checking state directly.
    pub stores: Stores,
    /// The token key the route uses.
    pub key: TokenKey,
    servers: watch::Receiver<Arc<Vec<ServerInfo>>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// The route configuration of the tests: the defaults, with login and sign-up limits no test
/// reaches unless it means to (every test client comes from 127.0.0.1).
pub fn test_config() -> RouteConfig {
    let plenty = Allowance::new(10_000, Duration::from_millis(1));
    RouteConfig {
        logins: LoginLimits {
            failures_per_account_and_source: plenty,
            failures_per_account: plenty,
            failures_per_source: plenty,
            checks_per_account: 1_000,
            checks_per_source: 1_000,
            max_checks: 1_000,
            signups_per_source: plenty,
        },
        ..RouteConfig::default()
    }
}

/// The secret every test route signs its tokens with.
pub const TEST_SECRET: [u8; 32] = [42; 32];

/// The key every test route signs with.
pub fn test_key() -> TokenKey {
    TokenKey::new(&TEST_SECRET).expect("32 bytes is enough")
}

/// Fresh memory backends around `balancer`.
pub fn memory_stores(balancer: Arc<dyn LoadBalancer>) -> Stores {
    Stores {
        meta: Arc::new(MemoryMetaStore::new(Duration::from_secs(30))),
        sessions: Arc::new(MemorySessionStore::new(Duration::from_secs(30))),
        accounts: Arc::new(MemoryAccountStore::new()),
        messages: Arc::new(MemoryMessageStore::new()),
        balancer,
    }
}

impl TestRoute {
    /// A route with the default configuration and the consistent-hash balancer.
    pub async fn start() -> TestRoute {
        Self::start_with(test_config()).await
    }

    /// A route with `config` and the consistent-hash balancer.
    pub async fn start_with(config: RouteConfig) -> TestRoute {
        let balancer = Arc::new(ConsistentHash::new(160).expect("valid ring"));
        Self::start_with_stores(config, memory_stores(balancer)).await
    }

    /// A route with `config` over `stores`.
    pub async fn start_with_stores(config: RouteConfig, stores: Stores) -> TestRoute {
        Self::start_with_limits(config, stores, LimitsConfig::default()).await
    }

    /// A route with `config` and `limits` over `stores`.
    pub async fn start_with_limits(
        config: RouteConfig,
        stores: Stores,
        limits: LimitsConfig,
    ) -> TestRoute {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local address");
        let key = test_key();
        let route = Route::new(
            config,
            stores.clone(),
            key.clone(),
            NameRules::default(),
            limits,
        )
        .expect("valid limits");
        let servers = route.servers();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(route.serve(listener, async {
            let _ = stop.await;
        }));
        TestRoute {
            base: format!("http://{address}"),
            http: reqwest::Client::new(),
            stores,
            key,
            servers,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Stops the route and waits until `serve` returns.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let task = self.task.take().expect("running");
        within("the route to stop", task).await.expect("serve task")
    }

    /// A request to `path` with `token` as the bearer token, if any.
    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        within(path, self.request(Method::GET, path, token).send())
            .await
            .expect("request sent")
    }

    /// `GET path` with `query` (encoded) as the query string.
    pub async fn get_with(
        &self,
        path: &str,
        token: Option<&str>,
        query: &[(&str, &str)],
    ) -> Response {
        within(
            path,
            self.request(Method::GET, path, token).query(query).send(),
        )
        .await
        .expect("request sent")
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, token: Option<&str>, body: &impl Serialize) -> Response {
        within(
            path,
            self.request(Method::POST, path, token).json(body).send(),
        )
        .await
        .expect("request sent")
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str, token: Option<&str>) -> Response {
        within(path, self.request(Method::DELETE, path, token).send())
            .await
            .expect("request sent")
    }

    /// Creates an account `name` (password `secret-<name>`) through the API.
    pub async fn create_user(&self, name: &str) -> UserView {
        let response = self
            .post(
                "/api/v1/accounts",
                None,
                &Credentials::new(name, format!("secret-{name}")),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "creating {name}");
        json(response).await
    }

    /// A valid token for `user`, as login would issue.
    pub fn token(&self, user: &UserView) -> String {
        self.key
            .issue(UserId(user.user_id), &user.name, Duration::from_secs(600))
            .expect("issue")
            .0
    }

    /// A user and a token for them.
    pub async fn user_with_token(&self, name: &str) -> (UserView, String) {
        let user = self.create_user(name).await;
        let token = self.token(&user);
        (user, token)
    }

    /// Registers a server in the MetaStore and waits until the route sees it.
    pub async fn register_server(
        &self,
        id: &str,
        client_port: u16,
        internal_port: u16,
    ) -> Registration {
        let id = ServerId::new(id).expect("valid id");
        let info = ServerInfo::new(id.clone(), "127.0.0.1", client_port, internal_port);
        let registration = self.stores.meta.register(info).await.expect("register");
        self.wait_for_servers(|servers| servers.iter().any(|s| s.id == id))
            .await;
        registration
    }

    /// Waits until the route's view of the live servers satisfies `condition`.
    pub async fn wait_for_servers(&self, condition: impl FnMut(&Arc<Vec<ServerInfo>>) -> bool) {
        let mut servers = self.servers.clone();
        within("the route to see the servers", servers.wait_for(condition))
            .await
            .expect("discovery runs");
    }

    /// Marks `user` online on `server`.
    pub async fn bind_session(&self, user: u64, server: &str, connection: u64) -> Session {
        let session = Session {
            user_id: UserId(user),
            server_id: ServerId::new(server).expect("valid id"),
            connection_id: ConnectionId(connection),
            device: "test".to_string(),
            login_at: Timestamp::now(),
        };
        self.stores
            .sessions
            .bind(session.clone(), BindPolicy::Replace)
            .await
            .expect("bind");
        session
    }
}

impl Drop for TestRoute {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The JSON body of a successful response.
pub async fn json<T: DeserializeOwned>(response: Response) -> T {
    let status = response.status();
    let text = response.text().await.expect("body");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}, body {text:?} is not the expected JSON: {e}"))
}

/// Asserts `response` is an error with `status` and `code`, and returns its body.
pub async fn expect_error(response: Response, status: StatusCode, code: &str) -> ErrorBody {
    assert_eq!(response.status(), status, "status");
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: ErrorBody = json(response).await;
    assert_eq!(body.code, code, "{body:?}");
    assert!(!body.message.is_empty());
    body
}
