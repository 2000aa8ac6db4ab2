//! `POST /api/v1/accounts`.

use cim_proto::http::{Credentials, UserView};
use reqwest::StatusCode;

use crate::harness::{TestRoute, expect_error, json};

fn credentials(name: &str, password: &str) -> Credentials {
    Credentials::new(name, password)
}

#[tokio::test]
async fn creating_an_account_answers_201_with_the_new_user() {
    let route = TestRoute::start().await;
    let response = route
        .post("/api/v1/accounts", None, &credentials("Alice", "pw"))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let user: UserView = json(response).await;
    assert_eq!(user.name, "Alice");
    let stored = route
        .stores
        .accounts
        .user_by_name("alice")
        .await
        .expect("lookup")
        .expect("stored");
    assert_eq!(stored.id.0, user.user_id);
}

#[tokio::test]
async fn a_taken_name_is_409_whatever_its_case() {
    let route = TestRoute::start().await;
    route.create_user("alice").await;
    let response = route
        .post("/api/v1/accounts", None, &credentials("ALICE", "other"))
        .await;
    expect_error(response, StatusCode::CONFLICT, "already_exists").await;
}

#[tokio::test]
async fn invalid_names_and_empty_passwords_are_400() {
    let route = TestRoute::start().await;
    let too_long = "x".repeat(33);
    for (name, password) in [("a b", "pw"), ("", "pw"), (&too_long, "pw"), ("bob", "")] {
        let response = route
            .post("/api/v1/accounts", None, &credentials(name, password))
            .await;
        let body = expect_error(response, StatusCode::BAD_REQUEST, "invalid_input").await;
        assert!(
            body.message.contains("name") || body.message.contains("password"),
            "{body:?}"
        );
    }
}
