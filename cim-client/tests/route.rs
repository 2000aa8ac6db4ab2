//! The route side of the SDK against an HTTP stub: registration and login lead to the server the
//! route names, errors map to kinds, helpers send the token and read the JSON bodies.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use cim_client::{
    ClientBuilder, ClientError, ConnectionState, Conversation, DisconnectReason, Event,
};
use cim_proto::Body;
use cim_proto::http::{Credentials, LoginResponse, ServerAddress};
use cim_proto::v1;
use support::*;

fn login_json(server: &FakeServer) -> String {
    serde_json::to_string(&LoginResponse {
        user_id: 7,
        name: "alice".into(),
        token: "tok-alice".into(),
        expires_at: 1,
        server: ServerAddress {
            id: "fake".into(),
            host: "127.0.0.1".into(),
            port: server.addr.port(),
        },
    })
    .expect("json")
}

fn error_json(code: &str, message: &str) -> String {
    format!(r#"{{"code": "{code}", "message": "{message}"}}"#)
}

/// A route that registers and logs in, pointing at `server`, and answers helpers with `helper`.
async fn route_for(
    server: &FakeServer,
    helper: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static,
) -> RouteStub {
    let login = login_json(server);
    RouteStub::start(
        move |request| match (request.method.as_str(), request.target.as_str()) {
            ("POST", "/api/v1/accounts") => (201, r#"{"user_id": 7, "name": "alice"}"#.into()),
            ("POST", "/api/v1/login") => (200, login.clone()),
            _ => helper(request),
        },
    )
    .await
}

/// A client connected through `route` to `server`, and the server's end of its connection.
async fn connected(route: &RouteStub, server: &FakeServer) -> (cim_client::Client, ServerConn) {
    let (client, conn) = tokio::join!(
        ClientBuilder::new(&route.url)
            .credentials("alice", "pw")
            .connect(),
        server.accept_logged_in(login_result())
    );
    assert_eq!(conn.login.token, "tok-alice");
    (client.expect("connects"), conn)
}

#[tokio::test]
async fn connect_registers_logs_in_and_connects_to_the_server_the_route_chose() {
    let server = FakeServer::start().await;
    let route = route_for(&server, |_| (404, error_json("not_found", "no"))).await;
    let (client, conn) = tokio::join!(
        ClientBuilder::new(&route.url)
            .credentials("alice", "pw")
            .register(true)
            .connect(),
        server.accept_logged_in(login_result())
    );
    client.expect("connects");
    assert_eq!(
        conn.login.token, "tok-alice",
        "the route's token is presented"
    );

    let requests = route.requests();
    let paths: Vec<_> = requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert_eq!(paths, ["POST /api/v1/accounts", "POST /api/v1/login"]);
    let credentials: Credentials = serde_json::from_str(&requests[1].body).expect("json body");
    assert_eq!(credentials, Credentials::new("alice", "pw"));
}

#[tokio::test]
async fn wrong_credentials_fail_connect_with_unauthenticated() {
    let route = RouteStub::start(|_| (401, error_json("unauthenticated", "wrong password"))).await;
    let error = ClientBuilder::new(&route.url)
        .credentials("alice", "nope")
        .connect()
        .await
        .expect_err("refused");
    assert!(
        matches!(&error, ClientError::Unauthenticated(m) if m == "wrong password"),
        "{error}"
    );
}

#[tokio::test]
async fn registering_a_taken_name_fails_with_already_exists() {
    let route = RouteStub::start(|_| (409, error_json("already_exists", "name taken"))).await;
    let error = ClientBuilder::new(&route.url)
        .credentials("alice", "pw")
        .register(true)
        .connect()
        .await
        .expect_err("taken");
    assert!(matches!(error, ClientError::AlreadyExists(_)), "{error}");
}

#[tokio::test]
async fn no_server_available_is_a_retryable_error() {
    let route = RouteStub::start(|_| (503, error_json("unavailable", "no live server"))).await;
    let error = ClientBuilder::new(&route.url)
        .credentials("alice", "pw")
        .connect()
        .await
        .expect_err("no server");
    assert!(matches!(error, ClientError::Unavailable { .. }), "{error}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn an_unreachable_route_is_unavailable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let error = ClientBuilder::new(url)
        .credentials("alice", "pw")
        .connect()
        .await
        .expect_err("nothing listens");
    assert!(error.is_retryable(), "{error}");
}

#[tokio::test]
async fn helpers_send_the_token_and_read_the_answers() {
    let server = FakeServer::start().await;
    let route = route_for(&server, |request| {
        match (request.method.as_str(), request.target.as_str()) {
            ("GET", "/api/v1/users/online?limit=10") => (
                200,
                r#"{"items": [{"user_id": 2, "name": "bob", "server_id": "s1", "login_at": 5}],
                    "next_cursor": "c2"}"#
                    .into(),
            ),
            ("GET", "/api/v1/users?prefix=b&cursor=c1") => {
                (200, r#"{"items": [{"user_id": 2, "name": "bob"}]}"#.into())
            }
            ("GET", "/api/v1/conversations/d:2:7/messages?before=10&limit=2") => (
                200,
                r#"{"items": [{"message_id": 1, "conversation": "d:2:7", "seq": 8,
                    "sender_id": 2, "body": "hi", "sent_at": 3}]}"#
                    .into(),
            ),
            ("POST", "/api/v1/groups") => (
                201,
                r#"{"group_id": 4, "name": "team", "owner_id": 7, "access": "open",
                    "history": "full"}"#
                    .into(),
            ),
            ("POST", "/api/v1/groups/4/members") => (204, String::new()),
            ("DELETE", "/api/v1/groups/4/members/2") => (204, String::new()),
            ("GET", "/api/v1/users/me/groups") => (
                200,
                r#"[{"group_id": 4, "name": "team", "owner_id": 7, "access": "closed",
                    "history": "since_join"}]"#
                    .into(),
            ),
            ("GET", "/api/v1/servers") => (
                200,
                r#"[{"id": "s1", "host": "h", "client_port": 1, "load": 0, "version": "v"}]"#
                    .into(),
            ),
            ("GET", "/api/v1/messages/search?q=hello+world") => (200, r#"{"items": []}"#.into()),
            _ => (404, error_json("not_found", "no such route")),
        }
    })
    .await;
    let (client, _conn) = connected(&route, &server).await;

    let online = client.online_users(None, Some(10)).await.expect("online");
    assert_eq!(online.items[0].name, "bob");
    assert_eq!(online.next_cursor.as_deref(), Some("c2"));
    let found = client
        .search_users("b", Some("c1"), None)
        .await
        .expect("users");
    assert_eq!(found.items[0].user_id, 2);
    let history = client
        .history(Conversation::direct(7, 2), Some(10), None, Some(2))
        .await
        .expect("history");
    assert_eq!(history[0].seq, 8);
    let group = client.create_group("team").await.expect("group");
    assert_eq!(group.group_id, 4);
    client.add_member(4, 2).await.expect("added");
    client.remove_member(4, 2).await.expect("removed");
    assert_eq!(client.my_groups().await.expect("groups").len(), 1);
    assert_eq!(client.servers().await.expect("servers")[0].id, "s1");
    assert!(
        client
            .search_messages("hello world", None, None)
            .await
            .expect("search")
            .items
            .is_empty()
    );
    let error = client
        .members(4, None, None)
        .await
        .expect_err("stub says 404");
    assert!(matches!(error, ClientError::NotFound(_)), "{error}");

    let requests = route.requests();
    let add = requests
        .iter()
        .find(|r| r.target == "/api/v1/groups/4/members" && r.method == "POST")
        .expect("add member request");
    assert_eq!(add.body, r#"{"user_id":2}"#);
    for request in requests.iter().filter(|r| !r.target.ends_with("/login")) {
        assert_eq!(
            request.authorization.as_deref(),
            Some("Bearer tok-alice"),
            "{} {}",
            request.method,
            request.target
        );
    }
}

#[tokio::test]
async fn logout_tells_the_route_and_closes_the_client() {
    let server = FakeServer::start().await;
    let status = Arc::new(AtomicU16::new(204));
    let answer = Arc::clone(&status);
    let route = route_for(&server, move |request| match request.target.as_str() {
        "/api/v1/logout" => (answer.load(Ordering::SeqCst), String::new()),
        _ => (404, error_json("not_found", "no")),
    })
    .await;
    let (client, mut conn) = connected(&route, &server).await;
    let mut events = client.events().expect("stream");

    // The route kicks the session as part of the logout; that kick is expected.
    let (result, ()) = tokio::join!(client.logout(), async {
        conn.send(Body::Kicked(v1::Kicked {
            reason: cim_client::KickReason::LoggedOut as i32,
            text: "logged out".into(),
        }))
        .await;
    });
    result.expect("logged out");
    assert!(
        route
            .requests()
            .iter()
            .any(|r| r.target == "/api/v1/logout")
    );
    let seen = wait_for_state(&mut events, |s| {
        matches!(s, ConnectionState::Disconnected { .. })
    })
    .await;
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Kicked { .. })),
        "our own logout is not reported as a kick: {seen:?}"
    );
    assert_eq!(
        seen.last(),
        Some(&Event::State(ConnectionState::Disconnected {
            reason: DisconnectReason::LoggedOut
        }))
    );
    assert_eq!(
        server.logins(),
        0,
        "the route logged in, not the fake's login_with"
    );
}
