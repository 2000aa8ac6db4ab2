//! Groups: creation, membership, listing.

use cim_core::{GroupId, UserId};
use cim_proto::http::{GroupView, MemberView, PageOf};
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
    let page: PageOf<MemberView> = json(
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
    expect_error(response, StatusCode::NOT_FOUND, "not_found").await;

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

async fn create_group_with(
    route: &TestRoute,
    token: &str,
    name: &str,
    access: &str,
    history: &str,
) -> GroupView {
    let body = json!({ "name": name, "access": access, "history": history });
    let response = route.post("/api/v1/groups", Some(token), &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    json(response).await
}

async fn ban(route: &TestRoute, token: &str, group: u64, user: u64) -> reqwest::Response {
    route
        .post(
            &format!("/api/v1/groups/{group}/bans"),
            Some(token),
            &json!({ "user_id": user }),
        )
        .await
}

async fn set_role(
    route: &TestRoute,
    token: &str,
    group: u64,
    user: u64,
    role: &str,
) -> reqwest::Response {
    route
        .request(
            reqwest::Method::PUT,
            &format!("/api/v1/groups/{group}/members/{user}/role"),
            Some(token),
        )
        .json(&json!({ "role": role }))
        .send()
        .await
        .expect("request sent")
}

async fn post_to_group(route: &TestRoute, token: &str, group: u64, body: &str) {
    let response = route
        .post(
            "/api/v1/messages",
            Some(token),
            &json!({"to_group": group, "body": body, "client_msg_id": body}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK, "posting {body:?}");
}

#[tokio::test]
async fn groups_that_are_not_open_look_to_outsiders_exactly_like_missing_ones() {
    let route = TestRoute::start().await;
    let (_alice, alice_token) = route.user_with_token("alice").await;
    let (carol, carol_token) = route.user_with_token("carol").await;
    for access in ["invite_only", "closed"] {
        let name = format!("hidden-{access}");
        let group = create_group_with(&route, &alice_token, &name, access, "full").await;
        let missing = group.group_id + 1000;
        let hidden = group.group_id;
        let paths = |id: u64, name: &str| {
            [
                ("find", format!("/api/v1/groups?name={name}")),
                ("get", format!("/api/v1/groups/{id}")),
                ("members", format!("/api/v1/groups/{id}/members")),
                ("history", format!("/api/v1/conversations/g:{id}/messages")),
            ]
        };
        for ((what, path), (_, other)) in paths(hidden, &name)
            .into_iter()
            .zip(paths(missing, "no-such-group"))
        {
            let response = route.get(&path, Some(&carol_token)).await;
            let error = expect_error(response, StatusCode::NOT_FOUND, "not_found").await;
            let response = route.get(&other, Some(&carol_token)).await;
            let other = expect_error(response, StatusCode::NOT_FOUND, "not_found").await;
            assert_eq!(
                error
                    .message
                    .replace(&hidden.to_string(), "N")
                    .replace(&name, "X"),
                other
                    .message
                    .replace(&missing.to_string(), "N")
                    .replace("no-such-group", "X"),
                "{access} {what}: the same answer as for a missing group"
            );
        }
        let join = add(&route, &carol_token, hidden, carol.user_id).await;
        expect_error(join, StatusCode::NOT_FOUND, "not_found").await;
        let write = route
            .post(
                "/api/v1/messages",
                Some(&carol_token),
                &json!({"to_group": hidden, "body": "let me in", "client_msg_id": access}),
            )
            .await;
        expect_error(write, StatusCode::NOT_FOUND, "not_found").await;
    }
}

#[tokio::test]
async fn members_invite_to_invite_only_groups_and_only_admins_to_closed_ones() {
    let route = TestRoute::start().await;
    let (_alice, alice_token) = route.user_with_token("alice").await;
    let (bob, bob_token) = route.user_with_token("bob").await;
    let carol = route.create_user("carol").await;
    let dave = route.create_user("dave").await;

    let invite = create_group_with(&route, &alice_token, "invite", "invite_only", "full").await;
    add(&route, &alice_token, invite.group_id, bob.user_id).await;
    let by_member = add(&route, &bob_token, invite.group_id, carol.user_id).await;
    assert_eq!(by_member.status(), StatusCode::NO_CONTENT, "members invite");

    let closed = create_group_with(&route, &alice_token, "closed", "closed", "full").await;
    add(&route, &alice_token, closed.group_id, bob.user_id).await;
    let by_member = add(&route, &bob_token, closed.group_id, carol.user_id).await;
    expect_error(by_member, StatusCode::FORBIDDEN, "permission_denied").await;
    let by_member = set_role(&route, &bob_token, closed.group_id, bob.user_id, "admin").await;
    expect_error(by_member, StatusCode::FORBIDDEN, "permission_denied").await;
    let promoted = set_role(&route, &alice_token, closed.group_id, bob.user_id, "admin").await;
    assert_eq!(promoted.status(), StatusCode::NO_CONTENT);
    let by_admin = add(&route, &bob_token, closed.group_id, carol.user_id).await;
    assert_eq!(by_admin.status(), StatusCode::NO_CONTENT, "admins add");
    add(&route, &bob_token, closed.group_id, dave.user_id).await;
    let owner = set_role(&route, &alice_token, closed.group_id, dave.user_id, "owner").await;
    expect_error(owner, StatusCode::BAD_REQUEST, "invalid_input").await;
    let names = member_names(&route, &alice_token, closed.group_id).await;
    assert_eq!(names, ["alice", "bob", "carol", "dave"]);
    let roles: PageOf<MemberView> = json(
        route
            .get(
                &format!("/api/v1/groups/{}/members", closed.group_id),
                Some(&alice_token),
            )
            .await,
    )
    .await;
    let role_of = |name: &str| {
        roles
            .items
            .iter()
            .find(|member| member.name == name)
            .map(|member| member.role)
    };
    assert_eq!(role_of("alice"), Some(cim_proto::http::GroupRole::Owner));
    assert_eq!(role_of("bob"), Some(cim_proto::http::GroupRole::Admin));
    assert_eq!(role_of("carol"), Some(cim_proto::http::GroupRole::Member));

    // An admin removes members but not the owner or other admins.
    let removed = remove(&route, &bob_token, closed.group_id, carol.user_id).await;
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    let owner_out = remove(&route, &bob_token, closed.group_id, invite.owner_id).await;
    expect_error(owner_out, StatusCode::FORBIDDEN, "permission_denied").await;
    let leaves = remove(&route, &alice_token, closed.group_id, invite.owner_id).await;
    expect_error(leaves, StatusCode::BAD_REQUEST, "invalid_input").await;
}

#[tokio::test]
async fn a_banned_user_cannot_rejoin_or_be_added_until_unbanned() {
    let route = TestRoute::start().await;
    let (_alice, alice_token) = route.user_with_token("alice").await;
    let (bob, bob_token) = route.user_with_token("bob").await;
    let (carol, carol_token) = route.user_with_token("carol").await;
    let group = create_group(&route, &alice_token, "open").await;
    add(&route, &bob_token, group.group_id, bob.user_id).await;
    add(&route, &carol_token, group.group_id, carol.user_id).await;

    let by_member = ban(&route, &bob_token, group.group_id, carol.user_id).await;
    expect_error(by_member, StatusCode::FORBIDDEN, "permission_denied").await;
    let banned = ban(&route, &alice_token, group.group_id, carol.user_id).await;
    assert_eq!(banned.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        member_names(&route, &alice_token, group.group_id).await,
        ["alice", "bob"]
    );

    for _ in 0..3 {
        let rejoin = add(&route, &carol_token, group.group_id, carol.user_id).await;
        let error = expect_error(rejoin, StatusCode::FORBIDDEN, "permission_denied").await;
        assert!(error.message.contains("banned"), "{}", error.message);
    }
    let by_friend = add(&route, &bob_token, group.group_id, carol.user_id).await;
    expect_error(by_friend, StatusCode::FORBIDDEN, "permission_denied").await;
    let write = route
        .post(
            "/api/v1/messages",
            Some(&carol_token),
            &json!({"to_group": group.group_id, "body": "still here?", "client_msg_id": "c"}),
        )
        .await;
    expect_error(write, StatusCode::NOT_FOUND, "not_found").await;

    let bans: PageOf<cim_proto::http::UserView> = json(
        route
            .get(
                &format!("/api/v1/groups/{}/bans", group.group_id),
                Some(&alice_token),
            )
            .await,
    )
    .await;
    assert_eq!(
        bans.items.iter().map(|u| u.user_id).collect::<Vec<_>>(),
        [carol.user_id]
    );
    let unban = route
        .delete(
            &format!("/api/v1/groups/{}/bans/{}", group.group_id, carol.user_id),
            Some(&alice_token),
        )
        .await;
    assert_eq!(unban.status(), StatusCode::NO_CONTENT);
    let rejoin = add(&route, &carol_token, group.group_id, carol.user_id).await;
    assert_eq!(
        rejoin.status(),
        StatusCode::NO_CONTENT,
        "unbanned users may join again"
    );
}

#[tokio::test]
async fn a_since_join_group_shows_new_members_only_what_follows_their_joining() {
    let route = TestRoute::start().await;
    let (_alice, alice_token) = route.user_with_token("alice").await;
    let (bob, bob_token) = route.user_with_token("bob").await;
    let private = create_group_with(&route, &alice_token, "private", "open", "since_join").await;
    let public = create_group(&route, &alice_token, "public").await;
    for group in [&private, &public] {
        post_to_group(
            &route,
            &alice_token,
            group.group_id,
            &format!("earlier secret {}", group.name),
        )
        .await;
        add(&route, &bob_token, group.group_id, bob.user_id).await;
        post_to_group(
            &route,
            &alice_token,
            group.group_id,
            &format!("later news {}", group.name),
        )
        .await;
    }
    let history = |group: u64| {
        let route = &route;
        let token = bob_token.clone();
        async move {
            let page: PageOf<cim_proto::http::MessageView> = json(
                route
                    .get(
                        &format!("/api/v1/conversations/g:{group}/messages"),
                        Some(&token),
                    )
                    .await,
            )
            .await;
            page.items.into_iter().map(|m| m.body).collect::<Vec<_>>()
        }
    };
    assert_eq!(history(private.group_id).await, ["later news private"]);
    assert_eq!(
        history(public.group_id).await,
        ["earlier secret public", "later news public"]
    );
    let found: PageOf<cim_proto::http::MessageView> = json(
        route
            .get_with(
                "/api/v1/messages/search",
                Some(&bob_token),
                &[("q", "secret")],
            )
            .await,
    )
    .await;
    let bodies: Vec<String> = found.items.into_iter().map(|m| m.body).collect();
    assert_eq!(
        bodies,
        ["earlier secret public"],
        "search hides what came before too"
    );

    // Changing the setting is for the owner and admins.
    let patch = |token: &str, body: serde_json::Value| {
        route
            .request(
                reqwest::Method::PATCH,
                &format!("/api/v1/groups/{}", private.group_id),
                Some(token),
            )
            .json(&body)
            .send()
    };
    let by_member = patch(&bob_token, json!({"history": "full"}))
        .await
        .expect("sent");
    expect_error(by_member, StatusCode::FORBIDDEN, "permission_denied").await;
    let by_owner = patch(&alice_token, json!({"history": "full"}))
        .await
        .expect("sent");
    assert_eq!(by_owner.status(), StatusCode::OK);
    let updated: GroupView = json(by_owner).await;
    assert_eq!(updated.history, cim_proto::http::GroupHistory::Full);
    assert_eq!(
        updated.access,
        cim_proto::http::GroupAccess::Open,
        "unchanged"
    );
    assert_eq!(
        history(private.group_id).await.len(),
        2,
        "now bob reads it all"
    );
}
