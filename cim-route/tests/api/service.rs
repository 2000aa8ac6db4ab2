//! The service around the endpoints: servers, health, the OpenAPI document, malformed
//! requests, shutdown.

use std::sync::Arc;
use std::time::Duration;

use cim_core::balancer::RoundRobin;
use cim_core::embedded::memory::MemoryMetaStore;
use cim_core::{MetaCapabilities, MetaStore, MetaWatch, Registration, ServerInfo};
use cim_proto::http::ServerView;
use cim_route::RouteConfig;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::harness::{TestRoute, expect_error, json, memory_stores, within};

#[tokio::test]
async fn servers_lists_the_live_cluster() {
    let route = TestRoute::start().await;
    let (_alice, token) = route.user_with_token("alice").await;
    let registration = route.register_server("node-2", 7002, 7102).await;
    let _other = route.register_server("node-1", 7001, 7101).await;

    let servers: Vec<ServerView> = json(route.get("/api/v1/servers", Some(&token)).await).await;
    let ids: Vec<&str> = servers.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["node-1", "node-2"]);
    assert_eq!(servers[0].client_port, 7001);
    assert_eq!(servers[0].host, "127.0.0.1");

    registration.deregister().await.expect("deregister");
    route.wait_for_servers(|servers| servers.len() == 1).await;
    let servers: Vec<ServerView> = json(route.get("/api/v1/servers", Some(&token)).await).await;
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].id, "node-1");
}

#[tokio::test]
async fn healthz_answers_ok_without_a_token() {
    let route = TestRoute::start().await;
    let response = route.get("/healthz", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = json(response).await;
    assert_eq!(body, serde_json::json!({"status": "ok"}));
}

#[tokio::test]
async fn the_openapi_document_lists_every_path() {
    let route = TestRoute::start().await;
    let response = route.get("/api/v1/openapi.json", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = json(response).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let expected = [
        ("post", "/api/v1/accounts"),
        ("post", "/api/v1/login"),
        ("post", "/api/v1/logout"),
        ("get", "/api/v1/users/online"),
        ("get", "/api/v1/users"),
        ("post", "/api/v1/messages"),
        ("get", "/api/v1/conversations/{id}/messages"),
        ("get", "/api/v1/messages/search"),
        ("post", "/api/v1/groups"),
        ("post", "/api/v1/groups/{id}/members"),
        ("delete", "/api/v1/groups/{id}/members/{user_id}"),
        ("get", "/api/v1/groups/{id}/members"),
        ("get", "/api/v1/users/me/groups"),
        ("get", "/api/v1/servers"),
        ("get", "/healthz"),
        ("get", "/api/v1/openapi.json"),
    ];
    for (method, path) in expected {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
    }
}

#[tokio::test]
async fn malformed_json_is_a_400_error_body() {
    let route = TestRoute::start().await;
    let send = |body: &'static str, content_type: &'static str| {
        route
            .request(Method::POST, "/api/v1/accounts", None)
            .header("Content-Type", content_type)
            .body(body)
            .send()
    };
    let cases = [
        ("{not json", "application/json", "as JSON"),
        (r#"{"name": "alice"}"#, "application/json", "missing field"),
        (
            r#"{"name": 5, "password": "pw"}"#,
            "application/json",
            "invalid type",
        ),
        (
            r#"{"name": "alice", "password": "pw"}"#,
            "text/plain",
            "Content-Type",
        ),
    ];
    for (body, content_type, hint) in cases {
        let response = within(body, send(body, content_type)).await.expect("sent");
        let error = expect_error(response, StatusCode::BAD_REQUEST, "invalid_input").await;
        assert!(error.message.contains(hint), "{body}: {error:?}");
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_unknown_paths_are_404() {
    let config = RouteConfig {
        max_request_len: 1024,
        ..crate::harness::test_config()
    };
    let route = TestRoute::start_with(config).await;
    let big = serde_json::json!({"name": "a", "password": "x".repeat(2048)});
    let response = route.post("/api/v1/accounts", None, &big).await;
    expect_error(response, StatusCode::PAYLOAD_TOO_LARGE, "invalid_input").await;

    let response = route.get("/api/v1/nothing-here", None).await;
    expect_error(response, StatusCode::NOT_FOUND, "not_found").await;
    let response = route.get("/api/v1/login", None).await;
    expect_error(response, StatusCode::METHOD_NOT_ALLOWED, "unsupported").await;
}

#[tokio::test]
async fn serve_returns_once_shutdown_completes() {
    let route = TestRoute::start().await;
    let base = route.base.clone();
    route.stop().await.expect("clean stop");
    let refused = reqwest::get(format!("{base}/healthz")).await;
    assert!(refused.is_err(), "the listener is closed");
    // The port is free again.
    let port = base.rsplit(':').next().expect("port");
    TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .expect("rebind");
}

/// A MetaStore that cannot watch: the route must list it instead.
struct ListOnly(MemoryMetaStore);

#[async_trait::async_trait]
impl MetaStore for ListOnly {
    fn capabilities(&self) -> MetaCapabilities {
        MetaCapabilities::NONE
    }

    async fn register(&self, info: ServerInfo) -> cim_core::Result<Registration> {
        self.0.register(info).await
    }

    async fn list(&self) -> cim_core::Result<Vec<ServerInfo>> {
        self.0.list().await
    }

    async fn watch(&self) -> cim_core::Result<MetaWatch> {
        Err(cim_core::Error::unsupported("watch"))
    }
}

#[tokio::test]
async fn a_meta_store_that_cannot_watch_is_listed_periodically() {
    let mut stores = memory_stores(Arc::new(RoundRobin::new()));
    stores.meta = Arc::new(ListOnly(MemoryMetaStore::new(Duration::from_secs(30))));
    let config = RouteConfig {
        discovery_interval: Duration::from_millis(20),
        ..crate::harness::test_config()
    };
    let route = TestRoute::start_with_stores(config, stores).await;

    let registration = route.register_server("node-1", 7001, 7101).await;
    registration.deregister().await.expect("deregister");

    route.wait_for_servers(|servers| servers.is_empty()).await;
}
