//! `POST /api/v1/messages`, history and search.

use std::time::Duration;

use cim_core::{ConversationId, GroupId, HistoryQuery, StoredMessage, Timestamp, UserId};
use cim_proto::FrameCodec;
use cim_proto::http::{GroupView, MessageView, PageOf, SendMessageResponse, UserView};
use cim_proto::v1::{PeerFrame, peer_frame};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::codec::FramedRead;

use crate::harness::{TestRoute, expect_error, json, within};

async fn send(route: &TestRoute, token: &str, request: serde_json::Value) -> reqwest::Response {
    route.post("/api/v1/messages", Some(token), &request).await
}

async fn send_ok(
    route: &TestRoute,
    token: &str,
    request: serde_json::Value,
) -> SendMessageResponse {
    let response = send(route, token, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    json(response).await
}

async fn pending(route: &TestRoute, user: &UserView, groups: &[GroupId]) -> Vec<StoredMessage> {
    route
        .stores
        .messages
        .pending(UserId(user.user_id), groups, None, 100)
        .await
        .expect("pending")
        .items
}

async fn create_group(route: &TestRoute, token: &str, name: &str) -> GroupView {
    let response = route
        .post("/api/v1/groups", Some(token), &json!({ "name": name }))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    json(response).await
}

async fn add_member(route: &TestRoute, token: &str, group: &GroupView, user: &UserView) {
    let response = route
        .post(
            &format!("/api/v1/groups/{}/members", group.group_id),
            Some(token),
            &json!({ "user_id": user.user_id }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_direct_message_is_stored_and_pending_for_the_recipient() {
    let route = TestRoute::start().await;
    let (alice, token) = route.user_with_token("alice").await;
    let bob = route.create_user("bob").await;

    let sent = send_ok(
        &route,
        &token,
        json!({"to_user": bob.user_id, "body": "hi bob", "client_msg_id": "m-1"}),
    )
    .await;

    let message = sent.message.expect("stored now");
    assert!(!sent.duplicate);
    assert_eq!(sent.scheduled_id, None);
    assert_eq!(message.sender_id, alice.user_id);
    assert_eq!(message.seq, 1);
    assert_eq!(
        message.conversation,
        ConversationId::direct(UserId(alice.user_id), UserId(bob.user_id)).to_string()
    );
    let pending = pending(&route, &bob, &[]).await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].body, "hi bob");
    assert_eq!(pending[0].id.0, message.message_id);
}

#[tokio::test]
async fn a_group_message_needs_membership_and_is_pending_for_the_other_members() {
    let route = TestRoute::start().await;
    let (alice, alice_token) = route.user_with_token("alice").await;
    let bob = route.create_user("bob").await;
    let (_carol, carol_token) = route.user_with_token("carol").await;
    let group = create_group(&route, &alice_token, "team").await;
    add_member(&route, &alice_token, &group, &bob).await;

    let stranger = send(
        &route,
        &carol_token,
        json!({"to_group": group.group_id, "body": "let me in", "client_msg_id": "c-1"}),
    )
    .await;
    // Outsiders cannot tell a group of others from a missing one.
    expect_error(stranger, StatusCode::NOT_FOUND, "not_found").await;

    let sent = send_ok(
        &route,
        &alice_token,
        json!({"to_group": group.group_id, "body": "standup", "client_msg_id": "a-1"}),
    )
    .await;
    let message = sent.message.expect("stored");
    assert_eq!(message.conversation, format!("g:{}", group.group_id));
    let group_id = GroupId(group.group_id);
    let for_bob = pending(&route, &bob, &[group_id]).await;
    assert_eq!(for_bob.len(), 1);
    assert_eq!(for_bob[0].body, "standup");
    assert!(
        pending(&route, &alice, &[group_id]).await.is_empty(),
        "not for the sender"
    );
}

#[tokio::test]
async fn anyone_may_write_to_the_all_group() {
    let route = TestRoute::start().await;
    let (_alice, token) = route.user_with_token("alice").await;
    let sent = send_ok(
        &route,
        &token,
        json!({"to_group": 0, "body": "hello everyone", "client_msg_id": "all-1"}),
    )
    .await;
    assert_eq!(sent.message.expect("stored").conversation, "g:0");
}

#[tokio::test]
async fn the_message_body_limit_applies_to_http_sends() {
    // The route accepts requests up to 64 KiB, but a message body only up to [limits]
    // max_body_len (16 KiB): what the servers' frames are sized for.
    let route = TestRoute::start().await;
    let (bob, _) = route.user_with_token("bob").await;
    let (_alice, token) = route.user_with_token("alice").await;
    let limit = cim_pipeline::LimitsConfig::default().max_body_len;
    let at_limit =
        json!({"to_user": bob.user_id, "body": "x".repeat(limit), "client_msg_id": "b-1"});
    send_ok(&route, &token, at_limit).await;
    for (n, len) in [limit + 1, 20_000, 60_000].into_iter().enumerate() {
        let request = json!({
            "to_user": bob.user_id, "body": "x".repeat(len), "client_msg_id": format!("b-big-{n}")
        });
        let response = send(&route, &token, request).await;
        let error = expect_error(response, StatusCode::BAD_REQUEST, "invalid_input").await;
        assert!(error.message.contains("bytes"), "{}", error.message);
    }
    let stored = pending(&route, &bob, &[]).await;
    assert_eq!(
        stored.len(),
        1,
        "only the message within the limit is stored"
    );
}

#[tokio::test]
async fn http_sends_are_rate_limited_per_user_with_retry_after() {
    let limits = cim_pipeline::LimitsConfig {
        messages: cim_pipeline::RateLimit::new(1, 3),
        ..cim_pipeline::LimitsConfig::default()
    };
    let route = TestRoute::start_with_limits(
        crate::harness::test_config(),
        crate::harness::memory_stores(std::sync::Arc::new(
            cim_core::balancer::ConsistentHash::new(16).expect("ring"),
        )),
        limits,
    )
    .await;
    let (bob, bob_token) = route.user_with_token("bob").await;
    let (_alice, token) = route.user_with_token("alice").await;
    for i in 0..3 {
        let request =
            json!({"to_user": bob.user_id, "body": "hi", "client_msg_id": format!("r-{i}")});
        send_ok(&route, &token, request).await;
    }
    let request = json!({"to_user": bob.user_id, "body": "hi", "client_msg_id": "r-3"});
    let response = send(&route, &token, request).await;
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    assert_eq!(retry_after, Some(1), "whole seconds, rounded up");
    expect_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Another user has a bucket of their own.
    let request = json!({"to_user": route.create_user("carol").await.user_id, "body": "hi", "client_msg_id": "b-1"});
    send_ok(&route, &bob_token, request).await;
}

#[tokio::test]
async fn broadcasting_can_be_forbidden_by_config() {
    let limits = cim_pipeline::LimitsConfig {
        broadcast: cim_pipeline::BroadcastConfig {
            allow: cim_pipeline::BroadcastAllow::Listed,
            users: vec!["Ops".into()],
            ..cim_pipeline::BroadcastConfig::default()
        },
        ..cim_pipeline::LimitsConfig::default()
    };
    let route = TestRoute::start_with_limits(
        crate::harness::test_config(),
        crate::harness::memory_stores(std::sync::Arc::new(
            cim_core::balancer::ConsistentHash::new(16).expect("ring"),
        )),
        limits,
    )
    .await;
    let (_ops, ops_token) = route.user_with_token("ops").await;
    let (_eve, eve_token) = route.user_with_token("eve").await;
    let all = |id: &str| json!({"to_group": 0, "body": "attention", "client_msg_id": id});
    send_ok(&route, &ops_token, all("o-1")).await;
    let response = send(&route, &eve_token, all("e-1")).await;
    expect_error(response, StatusCode::FORBIDDEN, "permission_denied").await;
}

#[tokio::test]
async fn a_message_names_exactly_one_recipient() {
    let route = TestRoute::start().await;
    let (alice, token) = route.user_with_token("alice").await;
    for request in [
        json!({"body": "to nobody", "client_msg_id": "x-1"}),
        json!({"to_user": alice.user_id, "to_group": 0, "body": "both", "client_msg_id": "x-2"}),
    ] {
        let response = send(&route, &token, request).await;
        expect_error(response, StatusCode::BAD_REQUEST, "invalid_input").await;
    }
}

#[tokio::test]
async fn unknown_recipients_are_404_and_a_bad_client_msg_id_is_400() {
    let route = TestRoute::start().await;
    let (alice, token) = route.user_with_token("alice").await;
    let response = send(
        &route,
        &token,
        json!({"to_user": alice.user_id + 100, "body": "?", "client_msg_id": "u-1"}),
    )
    .await;
    expect_error(response, StatusCode::NOT_FOUND, "not_found").await;
    let response = send(
        &route,
        &token,
        json!({"to_group": 999, "body": "?", "client_msg_id": "g-1"}),
    )
    .await;
    expect_error(response, StatusCode::NOT_FOUND, "not_found").await;
    let response = send(
        &route,
        &token,
        json!({"to_user": alice.user_id, "body": "?", "client_msg_id": ""}),
    )
    .await;
    expect_error(response, StatusCode::BAD_REQUEST, "invalid_input").await;
}

#[tokio::test]
async fn a_future_deliver_at_schedules_the_message_instead_of_storing_it() {
    let route = TestRoute::start().await;
    let (_alice, token) = route.user_with_token("alice").await;
    let bob = route.create_user("bob").await;
    let due = Timestamp::now().plus(Duration::from_secs(3600));

    let sent = send_ok(
        &route,
        &token,
        json!({"to_user": bob.user_id, "body": "later", "client_msg_id": "s-1", "deliver_at": due.as_millis()}),
    )
    .await;

    let scheduled_id = sent.scheduled_id.expect("scheduled");
    assert_eq!(sent.message, None);
    assert!(pending(&route, &bob, &[]).await.is_empty(), "not yet");
    let due_now = route
        .stores
        .messages
        .claim_due(due, Duration::from_secs(60), 10)
        .await
        .expect("claim");
    assert_eq!(due_now.len(), 1);
    assert_eq!(due_now[0].id.0, scheduled_id);
    assert_eq!(due_now[0].message.body, "later");
    assert_eq!(due_now[0].deliver_at, due);
}

#[tokio::test]
async fn a_past_deliver_at_sends_at_once() {
    let route = TestRoute::start().await;
    let (_alice, token) = route.user_with_token("alice").await;
    let bob = route.create_user("bob").await;
    let past = Timestamp::now().minus(Duration::from_secs(60));
    let sent = send_ok(
        &route,
        &token,
        json!({"to_user": bob.user_id, "body": "now", "client_msg_id": "p-1", "deliver_at": past.as_millis()}),
    )
    .await;
    assert!(sent.message.is_some());
    assert_eq!(pending(&route, &bob, &[]).await.len(), 1);
}

#[tokio::test]
async fn a_repeated_client_msg_id_is_a_duplicate_stored_once() {
    let route = TestRoute::start().await;
    let (alice, token) = route.user_with_token("alice").await;
    let bob = route.create_user("bob").await;
    let request = json!({"to_user": bob.user_id, "body": "once", "client_msg_id": "d-1"});

    let first = send_ok(&route, &token, request.clone()).await;
    let again = send_ok(&route, &token, request).await;

    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(again.message, first.message);
    let conversation = ConversationId::direct(UserId(alice.user_id), UserId(bob.user_id));
    let stored = route
        .stores
        .messages
        .history(conversation, HistoryQuery::latest(10))
        .await
        .expect("history");
    assert_eq!(stored.len(), 1);
    assert_eq!(pending(&route, &bob, &[]).await.len(), 1);
}

#[tokio::test]
async fn history_pages_backwards_and_forwards_by_sequence() {
    let route = TestRoute::start().await;
    let (alice, alice_token) = route.user_with_token("alice").await;
    let (bob, bob_token) = route.user_with_token("bob").await;
    for i in 1..=5 {
        send_ok(
            &route,
            &alice_token,
            json!({"to_user": bob.user_id, "body": format!("m{i}"), "client_msg_id": format!("h-{i}")}),
        )
        .await;
    }
    let conversation = ConversationId::direct(UserId(alice.user_id), UserId(bob.user_id));
    let path = format!("/api/v1/conversations/{conversation}/messages");
    let bodies = |page: PageOf<MessageView>| -> Vec<String> {
        page.items.into_iter().map(|m| m.body).collect()
    };

    let latest = json(
        route
            .get_with(&path, Some(&bob_token), &[("limit", "2")])
            .await,
    )
    .await;
    let before = json(
        route
            .get_with(&path, Some(&bob_token), &[("limit", "2"), ("before", "4")])
            .await,
    )
    .await;
    let after = json(
        route
            .get_with(&path, Some(&alice_token), &[("after", "3")])
            .await,
    )
    .await;

    assert_eq!(bodies(latest), ["m4", "m5"]);
    assert_eq!(bodies(before), ["m2", "m3"]);
    assert_eq!(bodies(after), ["m4", "m5"]);
}

#[tokio::test]
async fn strangers_cannot_read_a_conversation() {
    let route = TestRoute::start().await;
    let (alice, alice_token) = route.user_with_token("alice").await;
    let bob = route.create_user("bob").await;
    let (_carol, carol_token) = route.user_with_token("carol").await;
    let group = create_group(&route, &alice_token, "team").await;
    let direct = ConversationId::direct(UserId(alice.user_id), UserId(bob.user_id));

    // Someone else's private conversation is forbidden; a group one is not a member of is
    // answered as if it did not exist.
    for (conversation, status, code) in [
        (
            direct.to_string(),
            StatusCode::FORBIDDEN,
            "permission_denied",
        ),
        (
            format!("g:{}", group.group_id),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ] {
        let path = format!("/api/v1/conversations/{conversation}/messages");
        let response = route.get(&path, Some(&carol_token)).await;
        expect_error(response, status, code).await;
        let response = route.get(&path, Some(&alice_token)).await;
        assert_eq!(response.status(), StatusCode::OK, "{conversation}");
    }
    let response = route
        .get("/api/v1/conversations/g:0/messages", Some(&carol_token))
        .await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "everyone reads the all group"
    );
}

#[tokio::test]
async fn a_bad_conversation_id_is_400() {
    let route = TestRoute::start().await;
    let (_alice, token) = route.user_with_token("alice").await;
    for bad in ["x:1", "d:1", "g:abc", "42"] {
        let response = route
            .get(
                &format!("/api/v1/conversations/{bad}/messages"),
                Some(&token),
            )
            .await;
        expect_error(response, StatusCode::BAD_REQUEST, "invalid_input").await;
    }
}

#[tokio::test]
async fn search_finds_what_the_caller_can_see_only() {
    let route = TestRoute::start().await;
    let (_alice, alice_token) = route.user_with_token("alice").await;
    let bob = route.create_user("bob").await;
    let (_carol, carol_token) = route.user_with_token("carol").await;
    let dave = route.create_user("dave").await;
    let group = create_group(&route, &alice_token, "team").await;
    send_ok(
        &route,
        &alice_token,
        json!({"to_user": bob.user_id, "body": "Hello Bob", "client_msg_id": "s-1"}),
    )
    .await;
    send_ok(
        &route,
        &carol_token,
        json!({"to_user": dave.user_id, "body": "hello dave", "client_msg_id": "s-2"}),
    )
    .await;
    send_ok(
        &route,
        &alice_token,
        json!({"to_group": group.group_id, "body": "hello team", "client_msg_id": "s-3"}),
    )
    .await;

    let found: PageOf<MessageView> = json(
        route
            .get_with(
                "/api/v1/messages/search",
                Some(&alice_token),
                &[("q", "HELLO")],
            )
            .await,
    )
    .await;
    let bodies: Vec<&str> = found.items.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(
        bodies,
        ["hello team", "Hello Bob"],
        "newest first, nothing of carol's"
    );

    let response = route
        .get_with(
            "/api/v1/messages/search",
            Some(&alice_token),
            &[("q", "  ")],
        )
        .await;
    expect_error(response, StatusCode::BAD_REQUEST, "invalid_input").await;
    let response = route
        .get("/api/v1/messages/search", Some(&alice_token))
        .await;
    expect_error(response, StatusCode::BAD_REQUEST, "invalid_input").await;
}

#[tokio::test]
async fn a_message_to_an_online_user_is_relayed_to_their_server() {
    let route = TestRoute::start().await;
    let internal = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = internal.local_addr().expect("address").port();
    let _registration = route.register_server("node-1", 1, port).await;
    let (alice, token) = route.user_with_token("alice").await;
    let bob = route.create_user("bob").await;
    route.bind_session(bob.user_id, "node-1", 9).await;

    let sent = send_ok(
        &route,
        &token,
        json!({"to_user": bob.user_id, "body": "live", "client_msg_id": "r-1"}),
    )
    .await;

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
    let frame = within("the delivery", frames.next())
        .await
        .expect("a frame")
        .expect("decodes");
    let Some(peer_frame::Body::Deliver(relay)) = frame.body else {
        panic!("expected a delivery, got {frame:?}");
    };
    assert_eq!(relay.user_ids, [bob.user_id]);
    let message = relay.message.expect("the message");
    assert_eq!(message.message_id, sent.message.expect("stored").message_id);
    assert_eq!(message.sender_id, alice.user_id);
    assert_eq!(message.sender_name, "alice");
    assert_eq!(message.body, "live");
}
