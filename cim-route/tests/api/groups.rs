//! Groups: creation, membership, listing.

use cim_core::{GroupId, UserId};
use cim_proto::http::{GroupView, PageOf, UserView};
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{TestRoute, expect_error, json};

async fn create_group(route: &TestRoute, token: &str, name: &str) -> GroupView {
    let response = route
        .post("/api/v1/groups", Some(token), &json!({ "name": name }))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    json(response).await
}

async fn add(route: &TestRoute, token: &str, group: u64, user: u64) -> reqwest::Response {
    route
        .post(
            &format!("/api/v1/groups/{group}/members"),
            Some(token),
            &json!({ "user_id": user }),
        )
        .await
}

async fn remove(route: &TestRoute, token: &str, group: u64, user: u64) -> reqwest::Response {
    route
        .delete(
            &format!("/api/v1/groups/{group}/members/{user}"),
            Some(token),
        )
        .await
}

async fn member_names(route: &TestRoute, token: &str, group: u64) -> Vec<String> {
    let page: PageOf<UserView> = json(
        route
            .get(&format!("/api/v1/groups/{group}/members"), Some(token))
            .await,
    )
    .await;
    page.items.into_iter().map(|u| u.name).collect()
}

#[tokio::test]
async fn the_creator_owns_the_group_and_is_its_first_member() {
    let route = TestRoute::start().await;
    let (alice, token) = route.user_with_token("alice").await;

    let group = create_group(&route, &token, "Team").await;

    assert_eq!(group.name, "Team");
    assert_eq!(group.owner_id, alice.user_id);
    assert_eq!(
        member_names(&route, &token, group.group_id).await,
        ["alice"]
    );
    let mine: Vec<GroupView> = json(route.get("/api/v1/users/me/groups", Some(&token)).await).await;
    assert_eq!(mine, [group]);
}

#[tokio::test]
async fn group_names_are_unique_and_validated() {
    let route = TestRoute::start().await;
    let (_alice, token) = route.user_with_token("alice").await;
    create_group(&route, &token, "team").await;
    let response = route
        .post("/api/v1/groups", Some(&token), &json!({ "name": "TEAM" }))
        .await;
    expect_error(response, StatusCode::CONFLICT, "already_exists").await;
    let response = route
        .post(
            "/api/v1/groups",
            Some(&token),
            &json!({ "name": "no spaces" }),
        )
        .await;
    expect_error(response, StatusCode::BAD_REQUEST, "invalid_input").await;
}

#[tokio::test]
async fn anyone_may_join_and_any_member_may_add_others_but_strangers_may_not() {
    let route = TestRoute::start().await;
    let (_alice, alice_token) = route.user_with_token("alice").await;
    let (bob, bob_token) = route.user_with_token("bob").await;
    let (carol, carol_token) = route.user_with_token("carol").await;
    let dave = route.create_user("dave").await;
    let group = create_group(&route, &alice_token, "team").await;

    let stranger = add(&route, &carol_token, group.group_id, dave.user_id).await;
    expect_error(stranger, StatusCode::FORBIDDEN, "permission_denied").await;

    let by_owner = add(&route, &alice_token, group.group_id, bob.user_id).await;
    assert_eq!(by_owner.status(), StatusCode::NO_CONTENT);
    let by_member = add(&route, &bob_token, group.group_id, dave.user_id).await;
    assert_eq!(by_member.status(), StatusCode::NO_CONTENT);
    let again = add(&route, &bob_token, group.group_id, dave.user_id).await;
    assert_eq!(
        again.status(),
        StatusCode::NO_CONTENT,
        "adding twice changes nothing"
    );

    assert_eq!(
        member_names(&route, &bob_token, group.group_id).await,
        ["alice", "bob", "dave"]
    );
    let response = route
        .get(
            &format!("/api/v1/groups/{}/members", group.group_id),
            Some(&carol_token),
        )
        .await;
    expect_error(response, StatusCode::FORBIDDEN, "permission_denied").await;

    let joined = add(&route, &carol_token, group.group_id, carol.user_id).await;
    assert_eq!(joined.status(), StatusCode::NO_CONTENT, "anyone may join");
    assert_eq!(
        member_names(&route, &carol_token, group.group_id).await,
        ["alice", "bob", "carol", "dave"]
    );
}

#[tokio::test]
async fn groups_are_found_by_name_in_any_letter_case() {
    let route = TestRoute::start().await;
    let (_alice, alice_token) = route.user_with_token("alice").await;
    let (_bob, bob_token) = route.user_with_token("bob").await;
    let group = create_group(&route, &alice_token, "Team").await;

    let response = route
        .get("/api/v1/groups?name=TEAM", Some(&bob_token))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let found: GroupView = response.json().await.expect("a group");
    assert_eq!(found, group);

    let missing = route
        .get("/api/v1/groups?name=nope", Some(&bob_token))
        .await;
    expect_error(missing, StatusCode::NOT_FOUND, "not_found").await;
    let no_name = route.get("/api/v1/groups", Some(&bob_token)).await;
    expect_error(no_name, StatusCode::BAD_REQUEST, "invalid_input").await;
    let anonymous = route.get("/api/v1/groups?name=Team", None).await;
    expect_error(anonymous, StatusCode::UNAUTHORIZED, "unauthenticated").await;
}

#[tokio::test]
async fn a_new_member_does_not_receive_the_backlog() {
    let route = TestRoute::start().await;
    let (_alice, alice_token) = route.user_with_token("alice").await;
    let bob = route.create_user("bob").await;
    let group = create_group(&route, &alice_token, "team").await;
    for i in 0..3 {
        let response = route
            .post(
                "/api/v1/messages",
                Some(&alice_token),
                &json!({"to_group": group.group_id, "body": format!("old {i}"), "client_msg_id": format!("o-{i}")}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    let response = add(&route, &alice_token, group.group_id, bob.user_id).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = route
        .post(
            "/api/v1/messages",
            Some(&alice_token),
            &json!({"to_group": group.group_id, "body": "welcome", "client_msg_id": "new"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    let pending = route
        .stores
        .messages
        .pending(UserId(bob.user_id), &[GroupId(group.group_id)], None, 100)
        .await
        .expect("pending");
    let bodies: Vec<&str> = pending.items.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["welcome"]);
}

#[tokio::test]
async fn members_may_leave_and_only_the_owner_removes_others() {
    let route = TestRoute::start().await;
    let (_alice, alice_token) = route.user_with_token("alice").await;
    let (bob, bob_token) = route.user_with_token("bob").await;
    let (carol, carol_token) = route.user_with_token("carol").await;
    let group = create_group(&route, &alice_token, "team").await;
    for user in [&bob, &carol] {
        add(&route, &alice_token, group.group_id, user.user_id).await;
    }

    let by_member = remove(&route, &bob_token, group.group_id, carol.user_id).await;
    expect_error(by_member, StatusCode::FORBIDDEN, "permission_denied").await;
    let by_owner = remove(&route, &alice_token, group.group_id, carol.user_id).await;
    assert_eq!(by_owner.status(), StatusCode::NO_CONTENT);
    let leaving = remove(&route, &bob_token, group.group_id, bob.user_id).await;
    assert_eq!(leaving.status(), StatusCode::NO_CONTENT);

    assert_eq!(
        member_names(&route, &alice_token, group.group_id).await,
        ["alice"]
    );
    let mine: Vec<GroupView> = json(
        route
            .get("/api/v1/users/me/groups", Some(&carol_token))
            .await,
    )
    .await;
    assert!(mine.is_empty());
}

#[tokio::test]
async fn missing_groups_are_404_and_the_all_group_cannot_be_managed() {
    let route = TestRoute::start().await;
    let (alice, token) = route.user_with_token("alice").await;

    let response = add(&route, &token, 999, alice.user_id).await;
    expect_error(response, StatusCode::NOT_FOUND, "not_found").await;
    let response = route.get("/api/v1/groups/999/members", Some(&token)).await;
    expect_error(response, StatusCode::NOT_FOUND, "not_found").await;
    let response = remove(&route, &token, 999, alice.user_id).await;
    expect_error(response, StatusCode::NOT_FOUND, "not_found").await;
    let response = add(&route, &token, 0, alice.user_id).await;
    expect_error(response, StatusCode::BAD_REQUEST, "invalid_input").await;
    let response = route.get("/api/v1/groups/abc/members", Some(&token)).await;
    expect_error(response, StatusCode::BAD_REQUEST, "invalid_input").await;

    let group = create_group(&route, &token, "team").await;
    let response = add(&route, &token, group.group_id, alice.user_id + 100).await;
    expect_error(response, StatusCode::NOT_FOUND, "not_found").await;
}
