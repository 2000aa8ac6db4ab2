//! `POST /api/v1/login/token`: a cim token resuming its login, and an application's token
//! (HS256 with a shared secret, RS256 and ES256 from a public key file or a JWKS file) logging in
//! a user who has no account yet.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cim_core::UserId;
use cim_proto::http::{Credentials, LoginResponse, TokenLogin};
use cim_route::{AppTokenConfig, RouteConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json as claims};
use tokio::net::TcpListener;

use crate::harness::{TEST_SECRET, TestRoute, expect_error, json, test_config};

/// The secret the application shares with the route in these tests.
const APP_SECRET: &str = "the application's secret, 32 bytes or more";

fn keys_dir() -> String {
    format!("{}/tests/keys", env!("CARGO_MANIFEST_DIR"))
}

/// A route that takes application tokens signed with `APP_SECRET`, the test RSA public key file
/// and the test JWKS file, beside passwords.
fn app_config() -> RouteConfig {
    RouteConfig {
        app_tokens: AppTokenConfig {
            hs256_secret: Some(APP_SECRET.into()),
            public_keys: vec![format!("{}/rsa-public.pem", keys_dir())],
            jwks: Some(format!("{}/jwks.json", keys_dir())),
            ..AppTokenConfig::default()
        },
        ..test_config()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Claims for `subject`, valid for ten minutes.
fn valid_for(subject: &str) -> Value {
    claims!({"sub": subject, "exp": now_secs() + 600})
}

fn hs256(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

/// A token signed with the test key `private` (a PEM file of tests/keys) under `kid`.
fn signed(claims: &Value, algorithm: Algorithm, private: &str, kid: Option<&str>) -> String {
    let pem = std::fs::read(format!("{}/{private}", keys_dir())).expect("test key");
    let key = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        _ => EncodingKey::from_ec_pem(&pem),
    }
    .expect("a private key");
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

/// A listening socket standing in for a server's client port, registered as `node-1`.
async fn with_server(route: &TestRoute) -> (TcpListener, cim_core::Registration) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let registration = route.register_server("node-1", port, port).await;
    (listener, registration)
}

async fn token_login(route: &TestRoute, token: &str) -> reqwest::Response {
    route
        .post(
            "/api/v1/login/token",
            None,
            &TokenLogin {
                token: token.to_string(),
            },
        )
        .await
}

async fn logged_in(route: &TestRoute, token: &str) -> LoginResponse {
    let response = token_login(route, token).await;
    assert_eq!(response.status(), StatusCode::OK, "a token login");
    json(response).await
}

#[tokio::test]
async fn a_valid_cim_token_resumes_its_login_on_a_live_server_without_the_password() {
    let route = TestRoute::start().await;
    let (_server, _registration) = with_server(&route).await;
    route.create_user("alice").await;
    let login: LoginResponse = json(
        route
            .post(
                "/api/v1/login",
                None,
                &Credentials::new("alice", "secret-alice"),
            )
            .await,
    )
    .await;

    let resumed = logged_in(&route, &login.token).await;
    assert_eq!(resumed.user_id, login.user_id);
    assert_eq!(resumed.name, "alice");
    assert_eq!(resumed.server.id, "node-1");
    assert_eq!(
        (resumed.token.as_str(), resumed.expires_at),
        (login.token.as_str(), login.expires_at),
        "the same login: the same token, its lifetime unchanged"
    );

    // Logging out ends the login everywhere, this path included.
    let logout = route
        .request(reqwest::Method::POST, "/api/v1/logout", Some(&login.token))
        .send()
        .await
        .expect("sent");
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    let refused = token_login(&route, &login.token).await;
    expect_error(refused, StatusCode::UNAUTHORIZED, "unauthenticated").await;
}

#[tokio::test]
async fn expired_foreign_and_internal_tokens_do_not_resume() {
    let route = TestRoute::start().await;
    let (_server, _registration) = with_server(&route).await;
    let alice = route.create_user("alice").await;

    // A cim token of alice that expired a minute ago, signed with the route's secret.
    let expired = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims!({"sub": alice.user_id.to_string(), "name": "alice", "sid": "s1",
                  "iat": now_secs() - 120, "exp": now_secs() - 60}),
        &EncodingKey::from_secret(&TEST_SECRET),
    )
    .expect("sign");
    let response = token_login(&route, &expired).await;
    let error = expect_error(response, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    assert!(error.message.contains("expired"), "{}", error.message);

    let foreign = cim_core::token::TokenKey::new(&[7; 32])
        .expect("key")
        .issue(UserId(alice.user_id), "alice", Duration::from_secs(60))
        .expect("issue")
        .0;
    let response = token_login(&route, &foreign).await;
    let error = expect_error(response, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    assert!(
        error.message.contains("application tokens"),
        "says that no application tokens are taken: {}",
        error.message
    );

    let internal = route
        .key
        .issue(UserId(0), "peer:route", Duration::from_secs(60))
        .expect("issue")
        .0;
    expect_error(
        token_login(&route, &internal).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
    for garbage in ["", "abc", "a.b.c"] {
        expect_error(
            token_login(&route, garbage).await,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        )
        .await;
    }
}

#[tokio::test]
async fn an_application_token_creates_its_user_on_first_login_and_logs_them_in_after() {
    let route = TestRoute::start_with(app_config()).await;
    let (_server, _registration) = with_server(&route).await;

    let first = logged_in(&route, &hs256(&valid_for("Zoe"), APP_SECRET)).await;
    assert_eq!(first.name, "Zoe");
    assert_eq!(first.server.id, "node-1");
    let claims = route.key.verify(&first.token).expect("a cim token");
    assert_eq!(claims.user_id, UserId(first.user_id));
    let stored = route
        .stores
        .accounts
        .user_by_name("zoe")
        .await
        .expect("look up")
        .expect("the account exists now");
    assert_eq!(stored.id.0, first.user_id);

    // The cim token works like any other: HTTP calls, and a resume.
    let me = route
        .get("/api/v1/users/me/groups", Some(&first.token))
        .await;
    assert_eq!(me.status(), StatusCode::OK);
    assert_eq!(
        logged_in(&route, &first.token).await.token,
        first.token,
        "resumed"
    );

    // A later token of the application logs the same user in, as a new login.
    let again = logged_in(&route, &hs256(&valid_for("zoe"), APP_SECRET)).await;
    assert_eq!(again.user_id, first.user_id, "the same account");
    let again_claims = route.key.verify(&again.token).expect("a cim token");
    assert_ne!(again_claims.session_id, claims.session_id, "a new login");

    // The account has no password: no password logs it in.
    let response = route
        .post("/api/v1/login", None, &Credentials::new("zoe", ""))
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn concurrent_first_logins_of_one_user_make_one_account() {
    let route = TestRoute::start_with(app_config()).await;
    let (_server, _registration) = with_server(&route).await;
    let token = hs256(&valid_for("yuki"), APP_SECRET);
    let logins = (0..8).map(|_| logged_in(&route, &token));
    let ids: Vec<u64> = futures::future::join_all(logins)
        .await
        .iter()
        .map(|login| login.user_id)
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one account: {ids:?}");
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_with_the_key_file_and_the_jwks() {
    let route = TestRoute::start_with(app_config()).await;
    let (_server, _registration) = with_server(&route).await;

    // RS256 without a kid: the PEM file's key (and the JWKS RSA key) may verify it.
    let rsa = signed(
        &valid_for("rita"),
        Algorithm::RS256,
        "rsa-private.pem",
        None,
    );
    assert_eq!(logged_in(&route, &rsa).await.name, "rita");
    // RS256 with the JWKS kid.
    let rsa_kid = signed(
        &valid_for("rita"),
        Algorithm::RS256,
        "rsa-private.pem",
        Some("test-rsa"),
    );
    assert_eq!(logged_in(&route, &rsa_kid).await.name, "rita");
    // ES256: only the JWKS holds the EC key.
    let ec = signed(
        &valid_for("erin"),
        Algorithm::ES256,
        "ec-private.pem",
        Some("test-ec"),
    );
    assert_eq!(logged_in(&route, &ec).await.name, "erin");
    // A kid the JWKS does not have: no key is tried.
    let unknown_kid = signed(
        &valid_for("erin"),
        Algorithm::ES256,
        "ec-private.pem",
        Some("rotated-away"),
    );
    let error = expect_error(
        token_login(&route, &unknown_kid).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
    assert!(error.message.contains("rotated-away"), "{}", error.message);
}

#[tokio::test]
async fn application_tokens_are_refused_when_forged_expired_or_for_another_issuer() {
    let config = RouteConfig {
        app_tokens: AppTokenConfig {
            issuer: Some("https://app.example".into()),
            audience: Some("cim".into()),
            ..app_config().app_tokens
        },
        ..app_config()
    };
    let route = TestRoute::start_with(config).await;
    let (_server, _registration) = with_server(&route).await;
    let good = claims!({"sub": "ivan", "exp": now_secs() + 600,
                        "iss": "https://app.example", "aud": "cim"});
    assert_eq!(
        logged_in(&route, &hs256(&good, APP_SECRET)).await.name,
        "ivan"
    );

    let cases = [
        (
            "another secret",
            hs256(&good, "not the application's secret at all"),
            "none of the application keys",
        ),
        (
            "expired beyond the leeway",
            hs256(
                &claims!({"sub": "ivan", "exp": now_secs() - 120, "iss": "https://app.example", "aud": "cim"}),
                APP_SECRET,
            ),
            "expired",
        ),
        (
            "no exp",
            hs256(
                &claims!({"sub": "ivan", "iss": "https://app.example", "aud": "cim"}),
                APP_SECRET,
            ),
            "exp",
        ),
        (
            "another issuer",
            hs256(
                &claims!({"sub": "ivan", "exp": now_secs() + 600, "iss": "https://evil.example", "aud": "cim"}),
                APP_SECRET,
            ),
            "issuer",
        ),
        (
            "another audience",
            hs256(
                &claims!({"sub": "ivan", "exp": now_secs() + 600, "iss": "https://app.example", "aud": "mail"}),
                APP_SECRET,
            ),
            "audience",
        ),
        (
            "a public key's token re-signed with HS256 and the PEM as secret",
            hs256(
                &good,
                &std::fs::read_to_string(format!("{}/rsa-public.pem", keys_dir())).expect("pem"),
            ),
            "none of the application keys",
        ),
    ];
    for (what, token, says) in cases {
        let error = expect_error(
            token_login(&route, &token).await,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        )
        .await;
        assert!(
            error.message.contains(says),
            "{what}: {:?} should say {says:?}",
            error.message
        );
    }
}

#[tokio::test]
async fn an_application_token_never_logs_in_a_password_account_or_an_invalid_name() {
    let route = TestRoute::start_with(app_config()).await;
    let (_server, _registration) = with_server(&route).await;
    route.create_user("mallory").await;
    let error = expect_error(
        token_login(&route, &hs256(&valid_for("Mallory"), APP_SECRET)).await,
        StatusCode::CONFLICT,
        "already_exists",
    )
    .await;
    assert!(error.message.contains("password"), "{}", error.message);

    let error = expect_error(
        token_login(&route, &hs256(&valid_for("no spaces allowed"), APP_SECRET)).await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
    )
    .await;
    assert!(error.message.contains("sub"), "{}", error.message);

    let too_many: Vec<String> = (0..=cim_route::MAX_GROUPS)
        .map(|i| format!("g{i}"))
        .collect();
    let claims = claims!({"sub": "gina", "exp": now_secs() + 600, "groups": too_many});
    expect_error(
        token_login(&route, &hs256(&claims, APP_SECRET)).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    )
    .await;
}

#[tokio::test]
async fn the_groups_claim_adds_the_user_to_existing_groups_once() {
    let route = TestRoute::start_with(app_config()).await;
    let (_server, _registration) = with_server(&route).await;
    let (_owner, owner_token) = route.user_with_token("olga").await;
    let created = route
        .post(
            "/api/v1/groups",
            Some(&owner_token),
            &claims!({"name": "ops", "access": "closed"}),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let group: Value = json(created).await;
    let group_id = group["group_id"].as_u64().expect("an id");

    let claims =
        claims!({"sub": "gus", "exp": now_secs() + 600, "groups": ["OPS", "no-such-group"]});
    let token = hs256(&claims, APP_SECRET);
    let login = logged_in(&route, &token).await;
    let mine: Value = json(
        route
            .get("/api/v1/users/me/groups", Some(&login.token))
            .await,
    )
    .await;
    let ids: Vec<u64> = mine
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|g| g["group_id"].as_u64())
        .collect();
    assert_eq!(
        ids,
        vec![group_id],
        "a member of the closed group, the unknown one skipped"
    );
    // Logging in again changes nothing.
    logged_in(&route, &token).await;
    let members: Value = json(
        route
            .get(
                &format!("/api/v1/groups/{group_id}/members"),
                Some(&owner_token),
            )
            .await,
    )
    .await;
    assert_eq!(
        members["items"].as_array().expect("a page").len(),
        2,
        "olga and gus"
    );
}

#[tokio::test]
async fn with_password_logins_off_only_tokens_log_in_and_no_one_signs_up() {
    let config = RouteConfig {
        password_logins: false,
        ..app_config()
    };
    let route = TestRoute::start_with(config).await;
    let (_server, _registration) = with_server(&route).await;
    let signup = route
        .post(
            "/api/v1/accounts",
            None,
            &Credentials::new("pat", "password"),
        )
        .await;
    expect_error(signup, StatusCode::FORBIDDEN, "permission_denied").await;
    let login = route
        .post("/api/v1/login", None, &Credentials::new("pat", "password"))
        .await;
    let error = expect_error(login, StatusCode::FORBIDDEN, "permission_denied").await;
    assert!(error.message.contains("login/token"), "{}", error.message);
    assert_eq!(
        logged_in(&route, &hs256(&valid_for("pat"), APP_SECRET))
            .await
            .name,
        "pat"
    );

    let neither = RouteConfig {
        password_logins: false,
        ..RouteConfig::default()
    };
    assert!(neither.validate().is_err(), "nobody could log in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_logins_and_health_are_answered_while_password_checks_queue() {
    let route = std::sync::Arc::new(TestRoute::start_with(app_config()).await);
    let (_server, _registration) = with_server(&route).await;
    route.create_user("alice").await;
    let storm = 64;
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (first_answer, first_answered) = tokio::sync::oneshot::channel::<()>();
    let first_answer = std::sync::Mutex::new(Some(first_answer));
    let first_answer = std::sync::Arc::new(first_answer);
    // Wrong passwords (each one a full argon2 check), many more than there are cores.
    let checks: Vec<_> = (0..storm)
        .map(|_| {
            let (route, answered, first_answer) = (
                std::sync::Arc::clone(&route),
                std::sync::Arc::clone(&answered),
                std::sync::Arc::clone(&first_answer),
            );
            tokio::spawn(async move {
                let response = route
                    .post("/api/v1/login", None, &Credentials::new("alice", "guess"))
                    .await;
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Some(tell) = first_answer.lock().expect("lock").take() {
                    let _ = tell.send(());
                }
                response.status()
            })
        })
        .collect();
    // Once the first check has answered, the storm is being worked through: the rest queue.
    first_answered.await.expect("a check answers");

    let health = route.get("/healthz", None).await;
    assert_eq!(health.status(), StatusCode::OK);
    let login = logged_in(&route, &hs256(&valid_for("tess"), APP_SECRET)).await;
    let resumed = logged_in(&route, &login.token).await;
    assert_eq!(resumed.user_id, login.user_id);
    let done = answered.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        done < storm,
        "the token logins and /healthz were answered while password checks still queued \
         ({done} of {storm} answered)"
    );
    for check in checks {
        assert_eq!(
            check.await.expect("the check's task"),
            StatusCode::UNAUTHORIZED
        );
    }
}
