//! Request extractors whose failures are [`ApiError`]s.
//!
//! axum's own `Json`, `Query` and `Path` answer a bad request in plain text, and a JSON body
//! with a missing field with 422. These wrappers run axum's extractor and turn its rejection
//! into the API's error body, with status 400 (413 for a body over the size limit), so a client
//! sees one error format whatever went wrong.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::SharedState;

/// A JSON request body.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            cim_core::ErrorKind::InvalidInput.as_str(),
            "the request body is larger than the route accepts (`[route] max_request_len`)",
        );
    }
    // axum's texts say what is wrong ("Expected request with `Content-Type: application/json`",
    // "missing field `password` at line 1 column 17"); a missing field becomes a 400 here, not
    // axum's 422, like every other malformed body.
    ApiError::invalid_input(rejection.body_text())
}

/// The query string, deserialized.
#[derive(Debug)]
pub(crate) struct QueryParams<T>(pub(crate) T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| QueryParams(value))
            .map_err(|rejection: QueryRejection| ApiError::invalid_input(rejection.body_text()))
    }
}

/// The path parameters (`{id}`...), deserialized.
#[derive(Debug)]
pub(crate) struct PathParams<T>(pub(crate) T);

impl<T, S> FromRequestParts<S> for PathParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| PathParams(value))
            .map_err(|rejection: PathRejection| ApiError::invalid_input(rejection.body_text()))
    }
}

/// The address the request came from: the last address of the `[route]
/// client_address_header` when one is configured (the address the trusted proxy in front of
/// the route saw), otherwise the TCP peer when the router is served by
/// [`Route::serve`](crate::Route::serve); `None` when neither is known (an embedder serving the
/// router without `ConnectInfo`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source(pub(crate) Option<IpAddr>);

impl FromRequestParts<SharedState> for Source {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(header) = &state.config.client_address_header {
            let forwarded = parts
                .headers
                .get_all(header.as_str())
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .filter_map(|address| address.trim().parse::<IpAddr>().ok())
                .next_back();
            if forwarded.is_some() {
                return Ok(Source(forwarded));
            }
        }
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>();
        Ok(Source(peer.map(|ConnectInfo(peer)| peer.ip())))
    }
}
