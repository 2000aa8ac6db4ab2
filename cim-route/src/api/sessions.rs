//! `POST /api/v1/login` and `POST /api/v1/logout`.
//!
//! Login checks the password, applies the login policy, places the user on a reachable server
//! and issues a token; the session itself is bound by the server when the client connects with
//! that token, so a login that is never followed by a connection leaves nothing behind. Under
//! the default `replace` policy the server kicks the user's older connection at that moment.
//! Logout is the other half: it kicks the user's connection and removes their session.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cim_core::{Error, ErrorKind, Timestamp};
use cim_proto::KickReason;
use cim_proto::http::{Credentials, LoginResponse, ServerAddress, TokenResponse};
use cim_proto::v1::PeerKick;

use crate::auth::Auth;
use crate::config::LoginPolicy;
use crate::error::ApiResult;
use crate::extract::{JsonBody, Source};
use crate::placement;
use crate::state::SharedState;

/// Logs a user in: a token and the server to connect to. 401 for a wrong name or password
/// (alike), 429 when the account or the source failed too often lately or too many password
/// checks are in flight (see the route's `throttle`), 409 under the `reject` policy while the
/// user is online, 503 when no server is reachable.
pub(crate) async fn login(
    State(state): State<SharedState>,
    Source(source): Source,
    JsonBody(credentials): JsonBody<Credentials>,
) -> ApiResult<Json<LoginResponse>> {
    let admitted = state
        .throttle
        .admit_login(&credentials.name, source)
        .await?;
    let checked = state
        .stores
        .accounts
        .verify_credentials(&credentials.name, &credentials.password)
        .await;
    drop(admitted);
    let user = match checked {
        Ok(user) => user,
        Err(e) => {
            if e.kind() == ErrorKind::Unauthenticated {
                state.throttle.failed(&credentials.name, source);
            }
            return Err(e.into());
        }
    };
    if state.config.login_policy == LoginPolicy::Reject
        && let Some(session) = state.stores.sessions.get(user.id).await?
    {
        return Err(Error::already_exists(format!(
            "{} is logged in already (on server {}); log out there first",
            user.name, session.server_id
        ))
        .into());
    }
    let server = placement::place(
        state.stores.balancer.as_ref(),
        user.id,
        state.config.reachability_timeout,
    )
    .await?;
    let (token, expires_at) = state
        .key
        .issue(user.id, &user.name, state.config.token_ttl)?;
    tracing::info!(user = %user.id, server = %server.id, "login");
    Ok(Json(LoginResponse {
        user_id: user.id.0,
        name: user.name,
        token,
        expires_at: expires_at.as_millis(),
        server: ServerAddress {
            id: server.id.to_string(),
            host: server.host,
            port: server.client_port,
        },
    }))
}

/// A fresh token for the caller's login (same session, a new expiry): what a client swaps its
/// token for before it expires, without logging in again. A connected client then hands it to
/// its server with a `RefreshToken` frame, or the server closes the connection when the old
/// token expires.
pub(crate) async fn refresh(
    State(state): State<SharedState>,
    Auth(claims): Auth,
) -> ApiResult<Json<TokenResponse>> {
    let (token, expires_at) = state.key.refresh(&claims, state.config.token_ttl)?;
    Ok(Json(TokenResponse {
        token,
        expires_at: expires_at.as_millis(),
    }))
}

/// Logs the caller out: every token of this login is revoked (on every route and server, also
/// the ones refreshed from it), their connection, if any, is kicked (best effort: a server that
/// cannot be reached has lost the connection anyway) and their session removed. 204.
pub(crate) async fn logout(
    State(state): State<SharedState>,
    Auth(claims): Auth,
) -> ApiResult<StatusCode> {
    // No token of this login can outlive a token issued now: revoke until then.
    let until = Timestamp::now().plus(state.config.token_ttl);
    state
        .stores
        .accounts
        .revoke_session(&claims.session_id, until)
        .await?;
    if let Some(session) = state.stores.sessions.get(claims.user_id).await? {
        let kick = PeerKick {
            user_id: session.user_id.0,
            connection_id: session.connection_id.0,
            reason: KickReason::LoggedOut as i32,
        };
        if let Err(error) = state.peers.kick(&session.server_id, kick).await {
            tracing::warn!(
                %error,
                user = %session.user_id,
                server = %session.server_id,
                "cannot tell the server to close a logged-out connection"
            );
        }
        // Compare-and-delete: a newer session of the same user (a login racing this logout)
        // stays.
        state.stores.sessions.unbind(&session.reference()).await?;
    }
    tracing::info!(user = %claims.user_id, "logout");
    Ok(StatusCode::NO_CONTENT)
}
