//! Bearer tokens: every endpoint but account creation, login, health and the OpenAPI document
//! requires one.

use std::time::Duration;

use cim_core::UserId;
use cim_core::token::TokenKey;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{TestRoute, expect_error, json as body, within};

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

#[tokio::test]
async fn logout_revokes_the_token_and_every_token_refreshed_from_it() {
    let route = TestRoute::start().await;
    let (_alice, token) = route.user_with_token("alice").await;
    let (_bob, bob_token) = route.user_with_token("bob").await;
    let response = route
        .post("/api/v1/token", Some(&token), &serde_json::json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let fresh: cim_proto::http::TokenResponse = body(response).await;
    assert_ne!(fresh.token, token);
    let claims = route.key.verify(&fresh.token).expect("valid");
    assert_eq!(
        claims.session_id,
        route.key.verify(&token).expect("valid").session_id,
        "a refreshed token belongs to the same login"
    );
    for usable in [token.as_str(), fresh.token.as_str()] {
        let response = route.get("/api/v1/users/me/groups", Some(usable)).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    let response = route
        .post("/api/v1/logout", Some(&token), &serde_json::json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    for revoked in [token.as_str(), fresh.token.as_str()] {
        let response = route.get("/api/v1/users/me/groups", Some(revoked)).await;
        let error = expect_error(response, StatusCode::UNAUTHORIZED, "unauthenticated").await;
        assert!(error.message.contains("logged out"), "{}", error.message);
        let response = route
            .post("/api/v1/token", Some(revoked), &serde_json::json!({}))
            .await;
        expect_error(response, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    }
    let response = route.get("/api/v1/users/me/groups", Some(&bob_token)).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "other logins are untouched"
    );
}

#[tokio::test]
async fn sign_ups_by_invitation_take_an_admin_made_invitation_for_the_name() {
    let admin_token = "an admin token of at least thirty-two bytes".to_string();
    let config = cim_route::RouteConfig {
        signups: cim_route::SignupPolicy::Invitation,
        admin_token: Some(admin_token.clone().into()),
        ..crate::harness::test_config()
    };
    let route = TestRoute::start_with(config).await;
    let sign_up = |body: serde_json::Value, bearer: Option<String>| {
        let route = &route;
        async move {
            route
                .post("/api/v1/accounts", bearer.as_deref(), &body)
                .await
        }
    };
    let plain = sign_up(serde_json::json!({"name": "carol", "password": "pw"}), None).await;
    let error = expect_error(plain, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    assert!(error.message.contains("invitation"), "{}", error.message);

    let invite = |bearer: Option<&str>| {
        let route = &route;
        let bearer = bearer.map(str::to_string);
        async move {
            route
                .post(
                    "/api/v1/admin/invitations",
                    bearer.as_deref(),
                    &serde_json::json!({"name": "Carol"}),
                )
                .await
        }
    };
    let (_user, user_token) = {
        // The admin creates this account directly, whatever the policy.
        let created = sign_up(
            serde_json::json!({"name": "dave", "password": "pw"}),
            Some(admin_token.clone()),
        )
        .await;
        assert_eq!(created.status(), StatusCode::CREATED);
        let dave: cim_proto::http::UserView = body(created).await;
        let token = route.token(&dave);
        (dave, token)
    };
    expect_error(
        invite(None).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
    expect_error(
        invite(Some(&user_token)).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
    let made = invite(Some(&admin_token)).await;
    assert_eq!(made.status(), StatusCode::CREATED);
    let made: cim_proto::http::InvitationResponse = body(made).await;

    let wrong_name = sign_up(
        serde_json::json!({"name": "mallory", "password": "pw", "invitation": made.invitation}),
        None,
    )
    .await;
    expect_error(wrong_name, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    let invited = sign_up(
        serde_json::json!({"name": "carol", "password": "pw", "invitation": made.invitation}),
        None,
    )
    .await;
    assert_eq!(
        invited.status(),
        StatusCode::CREATED,
        "the invitation's name, any case"
    );
    // An invitation opens nothing else.
    let response = route.get("/api/v1/servers", Some(&made.invitation)).await;
    expect_error(response, StatusCode::UNAUTHORIZED, "unauthenticated").await;
}

#[tokio::test]
async fn the_admin_api_is_off_without_an_admin_token() {
    let route = TestRoute::start().await;
    let response = route
        .post(
            "/api/v1/admin/invitations",
            Some("anything"),
            &serde_json::json!({}),
        )
        .await;
    expect_error(response, StatusCode::FORBIDDEN, "permission_denied").await;
}
