//! `GET /api/v1/users/online` and `GET /api/v1/users?prefix=`.

use cim_proto::http::{OnlineUser, PageOf, UserView};
use cim_route::RouteConfig;
use reqwest::StatusCode;

use crate::harness::{TestRoute, expect_error, json};

#[tokio::test]
async fn online_users_are_paged_by_user_id_with_their_names() {
    let route = TestRoute::start().await;
    let (alice, token) = route.user_with_token("alice").await;
    let bob = route.create_user("bob").await;
    let carol = route.create_user("carol").await;
    let _offline = route.create_user("dave").await;
    for (connection, user) in [&alice, &bob, &carol].into_iter().enumerate() {
        route
            .bind_session(user.user_id, "node-1", connection as u64 + 1)
            .await;
    }

    let first: PageOf<OnlineUser> = json(
        route
            .get("/api/v1/users/online?limit=2", Some(&token))
            .await,
    )
    .await;
    let cursor = first.next_cursor.clone().expect("a second page");
    let second: PageOf<OnlineUser> = json(
        route
            .get_with(
                "/api/v1/users/online",
                Some(&token),
                &[("limit", "2"), ("cursor", &cursor)],
            )
            .await,
    )
    .await;

    let names: Vec<&str> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|u| u.name.as_str())
        .collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    assert_eq!(first.items.len(), 2);
    assert_eq!(second.next_cursor, None);
    assert!(first.items.iter().all(|u| u.server_id == "node-1"));
}

#[tokio::test]
async fn a_limit_of_0_is_400_and_larger_limits_are_lowered_to_the_maximum_page() {
    let config = RouteConfig {
        max_page: 2,
        ..crate::harness::test_config()
    };
    let route = TestRoute::start_with(config).await;
    let (_, token) = route.user_with_token("alice").await;
    route.create_user("bob").await;
    route.create_user("carol").await;

    let response = route.get("/api/v1/users?limit=0", Some(&token)).await;
    expect_error(response, StatusCode::BAD_REQUEST, "invalid_input").await;
    let response = route.get("/api/v1/users?limit=many", Some(&token)).await;
    expect_error(response, StatusCode::BAD_REQUEST, "invalid_input").await;

    let page: PageOf<UserView> =
        json(route.get("/api/v1/users?limit=50", Some(&token)).await).await;
    assert_eq!(page.items.len(), 2);
    assert!(page.next_cursor.is_some());
    let page: PageOf<UserView> = json(route.get("/api/v1/users", Some(&token)).await).await;
    assert_eq!(page.items.len(), 2, "no limit means the maximum page");
}

#[tokio::test]
async fn user_search_matches_name_prefixes_regardless_of_case() {
    let route = TestRoute::start().await;
    let (_, token) = route.user_with_token("alice").await;
    for name in ["Albert", "alfred", "bob", "Alina"] {
        route.create_user(name).await;
    }

    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("prefix", "AL"), ("limit", "2")];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor));
        }
        let page: PageOf<UserView> =
            json(route.get_with("/api/v1/users", Some(&token), &query).await).await;
        names.extend(page.items.into_iter().map(|u| u.name));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }

    assert_eq!(names, ["Albert", "alfred", "alice", "Alina"]);
}
