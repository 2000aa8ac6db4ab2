//! The HTTP API: one module per resource, and the table of every endpoint.
//!
//! The router is built from [`endpoints`], and the OpenAPI document is checked against the same
//! table, so an endpoint cannot be served without being documented, nor documented without being
//! served. Handlers are thin: they extract, check who may do what, call the stores and shape
//! the answer with [`crate::views`].

mod access;
mod accounts;
mod admin;
mod groups;
mod health;
mod messages;
mod servers;
mod sessions;
mod users;

use axum::handler::Handler;
use axum::http::{Method, Uri};
use axum::routing::{self, MethodRouter};

use crate::error::ApiError;
use crate::state::SharedState;

/// One method on one path, and the handler that serves it.
pub(crate) struct Endpoint {
    /// The HTTP method, lower case as in OpenAPI (`get`, `post`, `delete`): what the OpenAPI
    /// document is checked against (the handler carries its own method filter).
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the OpenAPI tests"))]
    pub(crate) method: &'static str,
    /// The path, with `{parameters}` as axum and OpenAPI write them.
    pub(crate) path: &'static str,
    /// The handler.
    pub(crate) handler: MethodRouter<SharedState>,
}

/// Every endpoint of the API.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    vec![
        get("/healthz", health::healthz),
        get("/api/v1/openapi.json", health::openapi),
        post("/api/v1/accounts", accounts::create),
        post("/api/v1/login", sessions::login),
        post("/api/v1/login/token", sessions::login_with_token),
        post("/api/v1/logout", sessions::logout),
        post("/api/v1/token", sessions::refresh),
        post("/api/v1/admin/invitations", admin::invite),
        get("/api/v1/users", users::search),
        get("/api/v1/users/online", users::online),
        get("/api/v1/users/me/groups", groups::mine),
        post("/api/v1/messages", messages::send),
        get("/api/v1/messages/search", messages::search),
        get("/api/v1/conversations/{id}/messages", messages::history),
        get("/api/v1/groups", groups::find),
        post("/api/v1/groups", groups::create),
        get("/api/v1/groups/{id}", groups::get),
        patch("/api/v1/groups/{id}", groups::update),
        get("/api/v1/groups/{id}/members", groups::members),
        post("/api/v1/groups/{id}/members", groups::add_member),
        delete(
            "/api/v1/groups/{id}/members/{user_id}",
            groups::remove_member,
        ),
        put(
            "/api/v1/groups/{id}/members/{user_id}/role",
            groups::set_role,
        ),
        get("/api/v1/groups/{id}/bans", groups::bans),
        post("/api/v1/groups/{id}/bans", groups::ban),
        delete("/api/v1/groups/{id}/bans/{user_id}", groups::unban),
        get("/api/v1/servers", servers::list),
    ]
}

fn get<H, T>(path: &'static str, handler: H) -> Endpoint
where
    H: Handler<T, SharedState>,
    T: 'static,
{
    Endpoint {
        method: "get",
        path,
        handler: routing::get(handler),
    }
}

fn post<H, T>(path: &'static str, handler: H) -> Endpoint
where
    H: Handler<T, SharedState>,
    T: 'static,
{
    Endpoint {
        method: "post",
        path,
        handler: routing::post(handler),
    }
}

fn patch<H, T>(path: &'static str, handler: H) -> Endpoint
where
    H: Handler<T, SharedState>,
    T: 'static,
{
    Endpoint {
        method: "patch",
        path,
        handler: routing::patch(handler),
    }
}

fn put<H, T>(path: &'static str, handler: H) -> Endpoint
where
    H: Handler<T, SharedState>,
    T: 'static,
{
    Endpoint {
        method: "put",
        path,
        handler: routing::put(handler),
    }
}

fn delete<H, T>(path: &'static str, handler: H) -> Endpoint
where
    H: Handler<T, SharedState>,
    T: 'static,
{
    Endpoint {
        method: "delete",
        path,
        handler: routing::delete(handler),
    }
}

/// The answer to a path no endpoint has.
pub(crate) async fn no_such_endpoint(uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "there is no endpoint {}; GET /api/v1/openapi.json lists them",
        uri.path()
    ))
}

/// The answer to a method a path does not serve.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        cim_core::ErrorKind::Unsupported.as_str(),
        format!(
            "{method} is not allowed on {}; GET /api/v1/openapi.json lists the endpoints",
            uri.path()
        ),
    )
}
