//! Serving HTTP: the route's own accept loop, so that no client can hold a connection forever.
//!
//! A connection costs a file descriptor whether or not it ever sends a request, so the route
//! bounds every way a client could keep one:
//!
//! - **headers** must arrive within `header_timeout`, and the same timer bounds the wait for the
//!   next request on a kept-alive connection (hyper's header-read timer runs whenever the
//!   connection waits for a request head);
//! - **bodies** must keep coming: `body_timeout` without a byte ends the request;
//! - **requests** end after `request_timeout` in all, with a `408` in the API's error shape;
//! - **connections** beyond `max_connections` are closed as soon as they are accepted, and the
//!   process's other listeners keep their own share of descriptors (see
//!   [`cim_pipeline::admission`]).
//!
//! A graceful shutdown stops accepting, lets the requests in progress finish (for up to
//! `request_timeout`), then returns.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use cim_pipeline::admission::ConnectionLimit;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

use crate::error::ApiError;

/// How long to pause accepting after the listener failed (out of descriptors, say).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The timeouts and the connection limit of one HTTP listener.
#[derive(Debug, Clone)]
pub(crate) struct HttpLimits {
    pub(crate) header_timeout: Duration,
    pub(crate) body_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) connections: ConnectionLimit,
}

/// Serves `router` on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut refused: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let Some(admitted) = limits.connections.try_admit() else {
                        refused += 1;
                        if refused.is_power_of_two() {
                            tracing::warn!(%peer, refused, max = limits.connections.max(), "HTTP connection limit reached; closing new connections");
                        }
                        continue;
                    };
                    let _ = socket.set_nodelay(true);
                    let router = router.clone();
                    let (body_timeout, request_timeout) = (limits.body_timeout, limits.request_timeout);
                    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                        request.extensions_mut().insert(ConnectInfo(peer));
                        handle(router.clone(), request, body_timeout, request_timeout)
                    });
                    let connection = graceful.watch(http.serve_connection(TokioIo::new(socket), service));
                    connections.spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(%peer, error = %e, "HTTP connection ended");
                        }
                        drop(admitted);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let grace = limits.request_timeout + Duration::from_secs(1);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests did not finish within the grace period; cutting them");
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One request through the router, its body read under `body_timeout` and the whole of it
/// bounded by `request_timeout`.
async fn handle(
    router: Router,
    request: Request<Incoming>,
    body_timeout: Duration,
    request_timeout: Duration,
) -> Result<Response<Body>, Infallible> {
    let request = request.map(|body| Body::new(TimeoutBody::new(body_timeout, body)));
    match tokio::time::timeout(request_timeout, router.oneshot(request)).await {
        Ok(response) => response,
        Err(_) => Ok(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("the request took longer than {request_timeout:?}; send it again"),
        )
        .into_response()),
    }
}
