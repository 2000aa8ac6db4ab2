//! `GET /healthz` and `GET /api/v1/openapi.json`: what a load balancer and a client author ask
//! before anything else, answered without a token.

use axum::Json;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

/// `GET /healthz`: the route process is up and serving.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of this API.
pub(crate) async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT,
    )
}
