//! Bearer tokens: every endpoint but account creation, login, health and the OpenAPI document
//! requires one.

use std::time::Duration;

use cim_core::UserId;
use cim_core::token::TokenKey;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{TestRoute, expect_error, within};

/// Every endpoint that requires a token, with a body it would otherwise accept.
fn authed_endpoints() -> Vec<(Method, &'static str, Option<serde_json::Value>)> {
    vec![
        (Method::POST, "/api/v1/logout", None),
        (Method::GET, "/api/v1/users/online", None),
        (Method::GET, "/api/v1/users?prefix=a", None),
        (Method::GET, "/api/v1/users/me/groups", None),
        (
            Method::POST,
            "/api/v1/messages",
            Some(json!({"to_user": 1, "body": "hi", "client_msg_id": "m1"})),
        ),
        (Method::GET, "/api/v1/messages/search?q=hi", None),
        (Method::GET, "/api/v1/conversations/d:1:2/messages", None),
        (
            Method::POST,
            "/api/v1/groups",
            Some(json!({"name": "team"})),
        ),
        (Method::GET, "/api/v1/groups/1/members", None),
        (
            Method::POST,
            "/api/v1/groups/1/members",
            Some(json!({"user_id": 1})),
        ),
        (Method::DELETE, "/api/v1/groups/1/members/1", None),
        (Method::GET, "/api/v1/servers", None),
    ]
}

async fn call_all(route: &TestRoute, token: Option<&str>, expect_code: &str) {
    for (method, path, body) in authed_endpoints() {
        let mut request = route.request(method.clone(), path, token);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = within(path, request.send()).await.expect("sent");
        let challenge = response
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .cloned();
        let body = expect_error(response, StatusCode::UNAUTHORIZED, expect_code).await;
        assert_eq!(
            challenge.as_ref().and_then(|v| v.to_str().ok()),
            Some("Bearer"),
            "{method} {path}: {body:?}"
        );
    }
}

#[tokio::test]
async fn every_authed_endpoint_without_a_token_is_401() {
    let route = TestRoute::start().await;
    call_all(&route, None, "unauthenticated").await;
}

#[tokio::test]
async fn every_authed_endpoint_with_a_tampered_token_is_401() {
    let route = TestRoute::start().await;
    let (alice, token) = route.user_with_token("alice").await;
    // Claim to be someone else, keeping alice's signature.
    let (other, _) = route
        .key
        .issue(
            UserId(alice.user_id + 1),
            "mallory",
            Duration::from_secs(600),
        )
        .expect("issue");
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged_payload = other.split('.').nth(1).expect("payload");
    parts[1] = forged_payload;
    let tampered = parts.join(".");
    call_all(&route, Some(&tampered), "unauthenticated").await;
}

#[tokio::test]
async fn tokens_signed_with_another_secret_and_garbage_are_401() {
    let route = TestRoute::start().await;
    let alice = route.create_user("alice").await;
    let foreign = TokenKey::new(&[1; 32]).expect("key");
    let (token, _) = foreign
        .issue(UserId(alice.user_id), "alice", Duration::from_secs(600))
        .expect("issue");
    for bad in [token.as_str(), "not-a-token"] {
        let response = route.get("/api/v1/servers", Some(bad)).await;
        expect_error(response, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    }
    let response = within(
        "basic auth",
        route
            .request(Method::GET, "/api/v1/servers", None)
            .header("Authorization", "Basic YWxpY2U6cHc=")
            .send(),
    )
    .await
    .expect("sent");
    expect_error(response, StatusCode::UNAUTHORIZED, "unauthenticated").await;
}

#[tokio::test]
async fn an_internal_link_token_is_not_a_user_token() {
    let route = TestRoute::start().await;
    let (token, _) = route
        .key
        .issue(UserId(0), "peer:node-1", Duration::from_secs(600))
        .expect("issue");
    let response = route.get("/api/v1/servers", Some(&token)).await;
    expect_error(response, StatusCode::UNAUTHORIZED, "unauthenticated").await;
}
