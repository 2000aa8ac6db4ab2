//! [`ClientBuilder`]: everything a client needs to know before it connects.
//!
//! Connecting is where most mistakes show (wrong route URL, wrong password, no server up), so
//! [`ClientBuilder::connect`] does the whole first login in the foreground and returns its error
//! as is; only once a connection stood does the background task take over, with automatic
//! reconnection.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cim_proto::http::{Credentials, LoginResponse};

use crate::backoff::ReconnectPolicy;
use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::http::Route;

/// The longest device label the server accepts, in bytes.
const MAX_DEVICE_LEN: usize = 64;

/// A login: the token and the server to connect to.
pub(crate) type LoginFuture = Pin<Box<dyn Future<Output = Result<LoginResponse>> + Send>>;

/// How the client logs in, at first and on every reconnect.
pub(crate) type LoginFn = Arc<dyn Fn() -> LoginFuture + Send + Sync>;

/// The settings the connection task runs with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) device: String,
    pub(crate) reconnect: ReconnectPolicy,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) send_timeout: Duration,
    pub(crate) event_capacity: usize,
    pub(crate) max_pending_sends: usize,
    /// Whether a reconnect first resumes the login with its current token (a signature check
    /// at the route) before logging in as at first: true when the client logs in through the
    /// route itself, false under [`ClientBuilder::login_with`], whose function decides.
    pub(crate) resume: bool,
}

/// Configures and connects a [`Client`].
///
/// ```no_run
/// # async fn demo() -> Result<(), cim_client::ClientError> {
/// use cim_client::ClientBuilder;
///
/// let client = ClientBuilder::new("http://127.0.0.1:8080")
///     .credentials("alice", "correct horse battery staple")
///     .register(true)
///     .device("cli")
///     .connect()
///     .await?;
/// let mut events = client.events().expect("first call");
/// client.send_to_user(2, "hello").await?;
/// while let Some(event) = events.recv().await {
///     println!("{event:?}");
/// }
/// # Ok(()) }
/// ```
pub struct ClientBuilder {
    route_url: String,
    credentials: Option<(String, String)>,
    app_token: Option<String>,
    register: bool,
    login: Option<LoginFn>,
    settings: Settings,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("route_url", &self.route_url)
            .field("user", &self.credentials.as_ref().map(|(name, _)| name))
            .field("app_token", &self.app_token.as_ref().map(|_| "<token>"))
            .field("register", &self.register)
            .field("custom_login", &self.login.is_some())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// A builder for a client of the route at `route_url` (`http://host:port`).
    pub fn new(route_url: impl Into<String>) -> Self {
        ClientBuilder {
            route_url: route_url.into(),
            credentials: None,
            app_token: None,
            register: false,
            login: None,
            settings: Settings {
                device: "cim-client".into(),
                reconnect: ReconnectPolicy::default(),
                request_timeout: Duration::from_secs(10),
                connect_timeout: Duration::from_secs(10),
                send_timeout: Duration::from_secs(30),
                event_capacity: 1024,
                max_pending_sends: 1024,
                resume: true,
            },
        }
    }

    /// The user to log in as.
    pub fn credentials(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((name.into(), password.into()));
        self
    }

    /// Logs in with `token`, a token the application minted for its user (the route's
    /// `[route.app_tokens]`), instead of a name and password: `POST /api/v1/login/token`, which
    /// creates the account on its first login. Reconnects resume the cim login it gave; once
    /// that has expired, `token` is used again (and refused if it has expired too: give the
    /// client a way to get a fresh one with [`login_with`](Self::login_with) then).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.app_token = Some(token.into());
        self
    }

    /// Creates the account before logging in (default false). `connect` then fails with
    /// [`ClientError::AlreadyExists`] if the name is taken.
    pub fn register(mut self, register: bool) -> Self {
        self.register = register;
        self
    }

    /// Logs in with `login` instead of `POST /api/v1/login` with the credentials: for an
    /// application that gets tokens its own way (or a test without a route). It is called for the
    /// first connection and again on every reconnect; the route URL is still used by the HTTP
    /// helpers of [`Client`].
    pub fn login_with<F, Fut>(mut self, login: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<LoginResponse>> + Send + 'static,
    {
        self.login = Some(Arc::new(move || Box::pin(login()) as LoginFuture));
        self
    }

    /// A label for this device, shown by the server (default `cim-client`; at most 64 bytes).
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.settings.device = device.into();
        self
    }

    /// How to reconnect after losing the connection (see [`ReconnectPolicy`]).
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.settings.reconnect = policy;
        self
    }

    /// The longest an HTTP call to the route, or a write to the server, may take (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout;
        self
    }

    /// The longest connecting to a server and logging in on it may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// The longest a send may wait for its acknowledgement, including time queued while
    /// reconnecting (default 30 s).
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.settings.send_timeout = timeout;
        self
    }

    /// How many events may wait for the application before the client stops reading from the
    /// server (default 1024).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.settings.event_capacity = capacity;
        self
    }

    /// How many sends may wait for their acknowledgement (queued while reconnecting, or in
    /// flight) before further sends fail with [`ClientError::Unavailable`] (default 1024).
    pub fn max_pending_sends(mut self, max: usize) -> Self {
        self.settings.max_pending_sends = max;
        self
    }

    /// Logs in (creating the account first if asked), connects to the server the route chose,
    /// and starts the client.
    ///
    /// Errors: [`ClientError::Unauthenticated`] for wrong credentials or a refused token,
    /// [`ClientError::AlreadyExists`] when registering a taken name,
    /// [`ClientError::Unavailable`] / [`ClientError::Timeout`] when the route or server cannot be
    /// reached, [`ClientError::InvalidInput`] for bad settings. Nothing is retried here.
    pub async fn connect(self) -> Result<Client> {
        self.validate()?;
        let settings = self.settings;
        let route = Route::new(
            &self.route_url,
            settings.request_timeout,
            settings.connect_timeout,
        )?;
        let mut settings = settings;
        let login = match (self.login, self.app_token, self.credentials) {
            (Some(login), _, _) => {
                settings.resume = false;
                login
            }
            (None, Some(token), _) => route_token_login(route.clone(), token),
            (None, None, Some((name, password))) => {
                let credentials = Credentials::new(name, password);
                if self.register {
                    route.register(&credentials).await?;
                }
                route_login(route.clone(), credentials)
            }
            (None, None, None) => {
                return Err(ClientError::InvalidInput(
                    "no credentials: call ClientBuilder::credentials (or token, or login_with)"
                        .into(),
                ));
            }
        };
        Client::start(route, login, settings).await
    }

    fn validate(&self) -> Result<()> {
        let settings = &self.settings;
        if settings.device.len() > MAX_DEVICE_LEN {
            return Err(ClientError::InvalidInput(format!(
                "the device label is {} bytes; at most {MAX_DEVICE_LEN} are allowed",
                settings.device.len()
            )));
        }
        if settings.event_capacity == 0 || settings.max_pending_sends == 0 {
            return Err(ClientError::InvalidInput(
                "event_capacity and max_pending_sends must be at least 1".into(),
            ));
        }
        let timeouts = [
            settings.request_timeout,
            settings.connect_timeout,
            settings.send_timeout,
        ];
        if timeouts.iter().any(Duration::is_zero) {
            return Err(ClientError::InvalidInput(
                "request, connect and send timeouts must be longer than zero".into(),
            ));
        }
        if self.app_token.as_ref().is_some_and(String::is_empty) {
            return Err(ClientError::InvalidInput(
                "the token must not be empty".into(),
            ));
        }
        if let Some((name, password)) = &self.credentials
            && (name.is_empty() || password.is_empty())
        {
            return Err(ClientError::InvalidInput(
                "the user name and password must not be empty".into(),
            ));
        }
        Ok(())
    }
}

/// Logging in through the route with fixed credentials.
fn route_login(route: Route, credentials: Credentials) -> LoginFn {
    let credentials = Arc::new(credentials);
    Arc::new(move || {
        let (route, credentials) = (route.clone(), Arc::clone(&credentials));
        Box::pin(async move { route.login(&credentials).await }) as LoginFuture
    })
}

/// Logging in through the route with an application's token.
fn route_token_login(route: Route, token: String) -> LoginFn {
    let token: Arc<str> = token.into();
    Arc::new(move || {
        let (route, token) = (route.clone(), Arc::clone(&token));
        Box::pin(async move { route.login_with_token(&token).await }) as LoginFuture
    })
}

/// Logging in again after a lost connection: `token`, the login's current token, resumes it on
/// a live server (a signature check at the route, no password hash); only when the route
/// refuses it (expired, logged out) or does not know the call does the client log in with
/// `login`, as at first. Any other failure is the attempt's: the reconnect loop tries again
/// later, rather than turn a failover into a storm of password checks.
pub(crate) fn resuming(route: Route, token: String, login: LoginFn) -> LoginFn {
    let token: Arc<str> = token.into();
    Arc::new(move || {
        let (route, token, login) = (route.clone(), Arc::clone(&token), Arc::clone(&login));
        Box::pin(async move {
            match route.login_with_token(&token).await {
                Err(ClientError::Unauthenticated(_) | ClientError::NotFound(_)) => login().await,
                resumed => resumed,
            }
        }) as LoginFuture
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_without_credentials_is_invalid_input() {
        let err = ClientBuilder::new("http://127.0.0.1:1")
            .connect()
            .await
            .expect_err("no credentials");
        assert!(matches!(err, ClientError::InvalidInput(_)), "{err}");
    }

    #[tokio::test]
    async fn an_overlong_device_label_is_refused_before_any_network_call() {
        let err = ClientBuilder::new("http://127.0.0.1:1")
            .credentials("alice", "pw")
            .device("x".repeat(65))
            .connect()
            .await
            .expect_err("too long");
        assert!(matches!(err, ClientError::InvalidInput(_)), "{err}");
    }

    #[test]
    fn debug_output_hides_the_password() {
        let builder = ClientBuilder::new("http://route").credentials("alice", "s3cret");
        let shown = format!("{builder:?}");
        assert!(shown.contains("alice"));
        assert!(!shown.contains("s3cret"));
    }
}
