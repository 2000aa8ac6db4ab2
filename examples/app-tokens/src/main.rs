//! # cim-example-app-tokens
//!
//! The push-middleware way of running cim: the application authenticates its own users and
//! mints a token for each, signed with a secret it shares with the route
//! (`[route.app_tokens] hs256_secret`). cim trusts the signature: the users need no cim account
//! and no password, and their accounts are created on their first login.
//!
//! One run: the application mints tokens for two of its users, both connect with
//! [`ClientBuilder::token`], the first sends the second a message and the second receives it.
//!
//! ```sh
//! cim standalone --config examples/app-tokens/cim.toml &
//! CIM_APP_SECRET="replace me with 32 or more random bytes, shared with the application" \
//!   cargo run -p cim-example-app-tokens -- http://127.0.0.1:8080 ana ben
//! ```

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cim_client::{ClientBuilder, ClientError, Event};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// How long a minted token lets its user log in. Short: the client keeps its cim login (and
/// resumes it after losing a server) without needing this token again.
const TOKEN_TTL: Duration = Duration::from_secs(5 * 60);

/// The claims cim reads from an application's token.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    /// The user's name in cim (the `[names]` rules apply).
    sub: &'a str,
    /// Expiry, seconds since the epoch: required.
    exp: u64,
    /// Groups (by name) the user joins at login, if they exist.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    groups: &'a [&'a str],
}

/// What the application's backend does when one of its users opens the chat: a token for them.
fn mint(secret: &str, user: &str, groups: &[&str]) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let claims = Claims {
        sub: user,
        exp: (now + TOKEN_TTL).as_secs(),
        groups,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Connects `sender` and `recipient` with tokens the application minted, sends one message from
/// the first to the second and returns it as the recipient received it.
async fn run(route: &str, secret: &str, sender: &str, recipient: &str) -> Result<String, String> {
    let connect = |user: &str| {
        let token = mint(secret, user, &[]).map_err(|e| format!("cannot mint a token: {e}"));
        let route = route.to_string();
        async move {
            ClientBuilder::new(route)
                .token(token?)
                .device("app-tokens-example")
                .connect()
                .await
                .map_err(|e: ClientError| format!("cannot connect: {e}"))
        }
    };
    let to = connect(recipient).await?;
    let mut events = to.events().ok_or("the event stream was taken")?;
    let from = connect(sender).await?;
    println!(
        "{} is user {} and {} is user {}: accounts made from the tokens",
        from.info().user_name,
        from.info().user_id,
        to.info().user_name,
        to.info().user_id
    );
    let text = format!("hello {recipient}, from {sender}");
    from.send_to_user(to.info().user_id, text.as_str())
        .await
        .map_err(|e| format!("cannot send: {e}"))?;
    let received = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.recv().await {
            if let Event::Message(message) = event {
                return Some(message.body);
            }
        }
        None
    })
    .await
    .map_err(|_| "no message within 10 s".to_string())?
    .ok_or("the connection ended")?;
    from.close().await;
    to.close().await;
    Ok(received)
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(route), Some(sender), Some(recipient)) = (args.next(), args.next(), args.next())
    else {
        eprintln!("usage: CIM_APP_SECRET=... cim-example-app-tokens ROUTE_URL SENDER RECIPIENT");
        return ExitCode::FAILURE;
    };
    let Ok(secret) = std::env::var("CIM_APP_SECRET") else {
        eprintln!("set CIM_APP_SECRET to the route's [route.app_tokens] hs256_secret");
        return ExitCode::FAILURE;
    };
    match run(&route, &secret, &sender, &recipient).await {
        Ok(received) => {
            println!("{recipient} received: {received}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("app-tokens: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cim_core::balancer::RoundRobin;
    use cim_core::embedded::memory::{
        MemoryAccountStore, MemoryMessageStore, MemoryMetaStore, MemorySessionStore,
    };
    use cim_core::token::TokenKey;
    use cim_core::{NameRules, ServerId, Stores};
    use cim_route::{Route, RouteConfig};
    use cim_server::Server;

    use super::*;

    const SECRET: &str = "the application's secret, 32 bytes or more";

    /// A route taking the application's tokens and one server, on memory stores: what
    /// `cim standalone --config examples/app-tokens/cim.toml` runs.
    async fn cim() -> (String, cim_server::RunningServer) {
        let stores = Stores {
            meta: Arc::new(MemoryMetaStore::new(Duration::from_secs(30))),
            sessions: Arc::new(MemorySessionStore::new(Duration::from_secs(30))),
            accounts: Arc::new(MemoryAccountStore::new()),
            messages: Arc::new(MemoryMessageStore::new()),
            balancer: Arc::new(RoundRobin::new()),
        };
        let key = TokenKey::new(TokenKey::generate_secret().as_bytes()).expect("key");
        let server = Server::builder(
            ServerId::new("s1").expect("id"),
            stores.clone(),
            key.clone(),
        )
        .config(cim_server::ServerConfig {
            listen: "127.0.0.1:0".into(),
            internal_listen: "127.0.0.1:0".into(),
            ..Default::default()
        })
        .start()
        .await
        .expect("server");
        let mut config = RouteConfig::default();
        config.app_tokens.hs256_secret = Some(SECRET.into());
        let route = Route::new(
            config,
            stores,
            key,
            NameRules::default(),
            cim_pipeline::LimitsConfig::default(),
        )
        .expect("route");
        let mut servers = route.servers();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(route.serve(listener, std::future::pending()));
        servers
            .wait_for(|servers| !servers.is_empty())
            .await
            .expect("the route sees the server");
        (url, server)
    }

    #[tokio::test]
    async fn two_users_the_application_vouches_for_chat_without_cim_accounts() {
        let (route, _server) = cim().await;
        let received = run(&route, SECRET, "ana", "ben").await.expect("the run");
        assert_eq!(received, "hello ben, from ana");
    }

    #[tokio::test]
    async fn a_token_signed_with_another_secret_is_refused() {
        let (route, _server) = cim().await;
        let refused = run(&route, "not the secret the route was given", "ana", "ben").await;
        assert!(
            refused.is_err_and(|e| e.contains("cannot connect")),
            "a forged token logs nobody in"
        );
    }
}
