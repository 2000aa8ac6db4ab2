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
    Credentials {
        name: name.to_string(),
        password: password.to_string(),
    }
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
    let route = TestRoute::start_with_stores(RouteConfig::default(), stores).await;
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
        ..RouteConfig::default()
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
