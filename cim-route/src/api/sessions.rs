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
use cim_core::Error;
use cim_proto::KickReason;
use cim_proto::http::{Credentials, LoginResponse, ServerAddress};
use cim_proto::v1::PeerKick;

use crate::auth::Auth;
use crate::config::LoginPolicy;
use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::placement;
use crate::state::SharedState;

/// Logs a user in: a token and the server to connect to. 401 for a wrong name or password
/// (alike), 409 under the `reject` policy while the user is online, 503 when no server is
/// reachable.
pub(crate) async fn login(
    State(state): State<SharedState>,
    JsonBody(credentials): JsonBody<Credentials>,
) -> ApiResult<Json<LoginResponse>> {
    let user = state
        .stores
        .accounts
        .verify_credentials(&credentials.name, &credentials.password)
        .await?;
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

/// Logs the caller out: their connection, if any, is kicked (best effort: a server that cannot
/// be reached has lost the connection anyway) and their session removed. 204.
///
/// The token stays valid until it expires, as every signed token does; a client that logs out
/// forgets it.
pub(crate) async fn logout(
    State(state): State<SharedState>,
    Auth(claims): Auth,
) -> ApiResult<StatusCode> {
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
