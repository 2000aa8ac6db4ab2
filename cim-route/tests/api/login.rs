//! `POST /api/v1/login` and `POST /api/v1/logout`.

use std::sync::Arc;

use cim_core::balancer::LeastLoaded;
use cim_core::{ConnectionId, UserId};
use cim_proto::http::{Credentials, LoginResponse};
use cim_proto::v1::{PeerFrame, peer_frame};
use cim_proto::{FrameCodec, KickReason};
use cim_route::{LoginPolicy, RouteConfig};
use futures::StreamExt;
use reqwest::StatusCode;
use tokio::net::TcpListener;
use tokio_util::codec::FramedRead;

use crate::harness::{TestRoute, expect_error, json, memory_stores, within};

fn credentials(name: &str, password: &str) -> Credentials {
    Credentials::new(name, password)
}

/// A port on which nothing listens (bound, then released).
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address").port()
}

/// A listening socket standing in for a server's port.
async fn open_port() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    (listener, port)
}

#[tokio::test]
async fn login_answers_a_token_for_the_user_and_a_live_server() {
    let route = TestRoute::start().await;
    let (_server, port) = open_port().await;
    let _registration = route.register_server("node-1", port, port).await;
    let alice = route.create_user("alice").await;

    let response = route
        .post("/api/v1/login", None, &credentials("ALICE", "secret-alice"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let login: LoginResponse = json(response).await;

    assert_eq!(login.user_id, alice.user_id);
    assert_eq!(login.name, "alice");
    assert_eq!(login.server.id, "node-1");
    assert_eq!(
        (login.server.host.as_str(), login.server.port),
        ("127.0.0.1", port)
    );
    let claims = route.key.verify(&login.token).expect("a valid token");
    assert_eq!(claims.user_id, UserId(alice.user_id));
    assert_eq!(claims.expires_at.as_millis(), login.expires_at);
    let me = route
        .get("/api/v1/users/me/groups", Some(&login.token))
        .await;
    assert_eq!(me.status(), StatusCode::OK, "the token opens the API");
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_user_are_both_401() {
    let route = TestRoute::start().await;
    let (_server, port) = open_port().await;
    let _registration = route.register_server("node-1", port, port).await;
    route.create_user("alice").await;

    let wrong_password = route
        .post("/api/v1/login", None, &credentials("alice", "guess"))
        .await;
    let unknown_user = route
        .post("/api/v1/login", None, &credentials("mallory", "guess"))
        .await;

    let a = expect_error(wrong_password, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    let b = expect_error(unknown_user, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    assert_eq!(
        a.message, b.message,
        "the answer must not tell which names exist"
    );
}

#[tokio::test]
async fn login_without_any_server_is_503() {
    let route = TestRoute::start().await;
    route.create_user("alice").await;
    let response = route
        .post("/api/v1/login", None, &credentials("alice", "secret-alice"))
        .await;
    expect_error(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
}

#[tokio::test]
async fn an_unreachable_server_is_skipped() {
    // Least loaded breaks ties by id: the dead server is always the first choice.
    let stores = memory_stores(Arc::new(LeastLoaded::new()));
    let route = TestRoute::start_with_stores(crate::harness::test_config(), stores).await;
    let dead = closed_port().await;
    let (_live, live) = open_port().await;
    let _dead = route.register_server("a-dead", dead, dead).await;
    let _live = route.register_server("b-live", live, live).await;
    route.create_user("alice").await;

    let response = route
        .post("/api/v1/login", None, &credentials("alice", "secret-alice"))
        .await;

    let login: LoginResponse = json(response).await;
    assert_eq!(login.server.id, "b-live");
    assert_eq!(login.server.port, live);
}

#[tokio::test]
async fn login_is_503_when_no_server_is_reachable() {
    let route = TestRoute::start().await;
    let (a, b) = (closed_port().await, closed_port().await);
    let _a = route.register_server("node-a", a, a).await;
    let _b = route.register_server("node-b", b, b).await;
    route.create_user("alice").await;

    let response = route
        .post("/api/v1/login", None, &credentials("alice", "secret-alice"))
        .await;

    let body = expect_error(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(
        body.message.contains("node-a") && body.message.contains("node-b"),
        "{body:?}"
    );
}

#[tokio::test]
async fn under_the_reject_policy_an_online_user_cannot_log_in_again() {
    let config = RouteConfig {
        login_policy: LoginPolicy::Reject,
        ..crate::harness::test_config()
    };
    let route = TestRoute::start_with(config).await;
    let (_server, port) = open_port().await;
    let _registration = route.register_server("node-1", port, port).await;
    let alice = route.create_user("alice").await;
    let session = route.bind_session(alice.user_id, "node-1", 7).await;

    let response = route
        .post("/api/v1/login", None, &credentials("alice", "secret-alice"))
        .await;
    expect_error(response, StatusCode::CONFLICT, "already_exists").await;

    route
        .stores
        .sessions
        .unbind(&session.reference())
        .await
        .expect("unbind");
    let response = route
        .post("/api/v1/login", None, &credentials("alice", "secret-alice"))
        .await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "offline again: login works"
    );
}

#[tokio::test]
async fn under_the_default_policy_an_online_user_logs_in_again() {
    let route = TestRoute::start().await;
    let (_server, port) = open_port().await;
    let _registration = route.register_server("node-1", port, port).await;
    let alice = route.create_user("alice").await;
    route.bind_session(alice.user_id, "node-1", 7).await;

    let response = route
        .post("/api/v1/login", None, &credentials("alice", "secret-alice"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn logout_kicks_the_connection_on_its_server_and_ends_the_session() {
    let route = TestRoute::start().await;
    let (internal, internal_port) = open_port().await;
    let _registration = route.register_server("node-1", 1, internal_port).await;
    let (alice, token) = route.user_with_token("alice").await;
    route.bind_session(alice.user_id, "node-1", 7).await;

    let response = route
        .request(reqwest::Method::POST, "/api/v1/logout", Some(&token))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    let session = route
        .stores
        .sessions
        .get(UserId(alice.user_id))
        .await
        .expect("get");
    assert_eq!(session, None);
    let (socket, _) = within("the route to dial the server", internal.accept())
        .await
        .expect("accept");
    let mut frames = FramedRead::new(socket, FrameCodec::<PeerFrame>::new(64 * 1024));
    let hello = within("the hello", frames.next())
        .await
        .expect("a frame")
        .expect("decodes");
    assert!(
        matches!(hello.body, Some(peer_frame::Body::Hello(_))),
        "{hello:?}"
    );
    let kick = within("the kick", frames.next())
        .await
        .expect("a frame")
        .expect("decodes");
    let Some(peer_frame::Body::Kick(kick)) = kick.body else {
        panic!("expected a kick, got {kick:?}");
    };
    assert_eq!(kick.user_id, alice.user_id);
    assert_eq!(ConnectionId(kick.connection_id), ConnectionId(7));
    assert_eq!(kick.reason, KickReason::LoggedOut as i32);
}

#[tokio::test]
async fn logout_of_an_offline_user_is_204_too() {
    let route = TestRoute::start().await;
    let (_alice, token) = route.user_with_token("alice").await;
    let response = route
        .request(reqwest::Method::POST, "/api/v1/logout", Some(&token))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

/// An HTTP client whose connections come from `127.0.0.{last}` (every 127/8 address is
/// loopback on Linux): a distinct source address for the route's per-source limits.
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, last]))
        .build()
        .expect("client")
}

async fn login_from(
    route: &crate::harness::TestRoute,
    client: &reqwest::Client,
    name: &str,
    password: &str,
) -> reqwest::Response {
    client
        .post(format!("{}/api/v1/login", route.base))
        .json(&credentials(name, password))
        .send()
        .await
        .expect("answered")
}

fn throttled_config(limits: cim_route::LoginLimits) -> RouteConfig {
    RouteConfig {
        logins: limits,
        ..crate::harness::test_config()
    }
}

#[tokio::test]
async fn wrong_passwords_are_throttled_per_account_and_source_before_any_check() {
    use cim_pipeline::rate_limit::Allowance;
    let limits = cim_route::LoginLimits {
        failures_per_account_and_source: Allowance::new(3, std::time::Duration::from_secs(60)),
        ..crate::harness::test_config().logins
    };
    let route = TestRoute::start_with(throttled_config(limits)).await;
    let (_server, port) = open_port().await;
    let _registration = route.register_server("node-1", port, port).await;
    route.create_user("alice").await;
    let attacker = client_from(2);
    for _ in 0..3 {
        let response = login_from(&route, &attacker, "alice", "guess").await;
        expect_error(response, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    }
    // Even the right password is refused now, from that address, without a check.
    let response = login_from(&route, &attacker, "ALICE", "secret-alice").await;
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    assert!(
        retry_after.is_some_and(|secs| (1..=60).contains(&secs)),
        "{retry_after:?}"
    );
    expect_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Alice, from her own address, is not locked out by the attacker.
    let response = login_from(&route, &client_from(3), "alice", "secret-alice").await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_flood_of_wrong_logins_leaves_the_password_checks_to_other_accounts() {
    use cim_pipeline::rate_limit::Allowance;
    // The defaults of the per-flight bounds, generous failure allowances: what is tested is
    // that a flood in flight cannot fill the queue of password checks.
    let limits = cim_route::LoginLimits {
        checks_per_account: 2,
        checks_per_source: 8,
        max_checks: 256,
        failures_per_account_and_source: Allowance::new(10_000, std::time::Duration::from_secs(1)),
        ..crate::harness::test_config().logins
    };
    let route = TestRoute::start_with(throttled_config(limits)).await;
    let (_server, port) = open_port().await;
    let _registration = route.register_server("node-1", port, port).await;
    route.create_user("alice").await;
    route.create_user("bob").await;

    let attacker = client_from(2);
    let flood: Vec<_> = (0..300)
        .map(|_| {
            let (route, attacker) = (&route, &attacker);
            async move { login_from(route, attacker, "alice", "guess").await.status() }
        })
        .collect();
    let victim = async {
        // Bob logs in while the flood is in flight.
        tokio::task::yield_now().await;
        login_from(&route, &client_from(3), "bob", "secret-bob")
            .await
            .status()
    };
    let (statuses, bob) = tokio::join!(futures::future::join_all(flood), victim);
    assert_eq!(bob, StatusCode::OK, "bob logs in during the flood");
    let checked = statuses
        .iter()
        .filter(|status| **status == StatusCode::UNAUTHORIZED)
        .count();
    let refused = statuses
        .iter()
        .filter(|status| **status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(
        checked + refused,
        300,
        "every request is answered 401 or 429"
    );
    assert!(
        refused > 200,
        "most of the flood is refused without a password check: {checked} checked, {refused} refused"
    );
}

#[tokio::test]
async fn sign_ups_are_limited_per_source_address() {
    use cim_pipeline::rate_limit::Allowance;
    let limits = cim_route::LoginLimits {
        signups_per_source: Allowance::new(2, std::time::Duration::from_secs(600)),
        ..crate::harness::test_config().logins
    };
    let route = TestRoute::start_with(throttled_config(limits)).await;
    let client = client_from(4);
    let sign_up = |name: &'static str| {
        let client = &client;
        let route = &route;
        async move {
            client
                .post(format!("{}/api/v1/accounts", route.base))
                .json(&credentials(name, "long enough"))
                .send()
                .await
                .expect("answered")
        }
    };
    assert_eq!(sign_up("one").await.status(), StatusCode::CREATED);
    assert_eq!(sign_up("two").await.status(), StatusCode::CREATED);
    expect_error(
        sign_up("three").await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
    let other = client_from(5)
        .post(format!("{}/api/v1/accounts", route.base))
        .json(&credentials("four", "long enough"))
        .send()
        .await
        .expect("answered");
    assert_eq!(
        other.status(),
        StatusCode::CREATED,
        "another address may sign up"
    );
}

#[tokio::test]
async fn behind_a_proxy_the_configured_header_names_the_source() {
    use cim_pipeline::rate_limit::Allowance;
    let config = RouteConfig {
        client_address_header: Some("x-forwarded-for".into()),
        logins: cim_route::LoginLimits {
            signups_per_source: Allowance::new(1, std::time::Duration::from_secs(600)),
            ..crate::harness::test_config().logins
        },
        ..crate::harness::test_config()
    };
    let route = TestRoute::start_with(config).await;
    let sign_up = |name: &'static str, forwarded: &'static str| {
        let route = &route;
        async move {
            route
                .http
                .post(format!("{}/api/v1/accounts", route.base))
                .header("x-forwarded-for", forwarded)
                .json(&credentials(name, "long enough"))
                .send()
                .await
                .expect("answered")
                .status()
        }
    };
    // The proxy appends the address it saw: the last one counts.
    assert_eq!(
        sign_up("one", "10.0.0.1, 192.0.2.7").await,
        StatusCode::CREATED
    );
    assert_eq!(
        sign_up("two", "10.0.0.9, 192.0.2.7").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(sign_up("three", "192.0.2.8").await, StatusCode::CREATED);
}
