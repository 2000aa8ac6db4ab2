//! `POST /api/v1/login`, `POST /api/v1/login/token` and `POST /api/v1/logout`.
//!
//! Login checks the password, applies the login policy, places the user on a reachable server
//! and issues a token; the session itself is bound by the server when the client connects with
//! that token, so a login that is never followed by a connection leaves nothing behind. Under
//! the default `replace` policy the server kicks the user's older connection at that moment.
//! Logout is the other half: it kicks the user's connection and removes their session.
//!
//! A token logs in too, at the cost of a signature check instead of a password hash: a cim
//! token still valid *resumes* its login (a client whose server died re-places itself with it),
//! and an application's token (see [`crate::app_tokens`]) logs its user in, creating the
//! account on first login.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cim_core::token::Claims;
use cim_core::{Error, ErrorKind, NewUser, Timestamp, User, UserId};
use cim_proto::KickReason;
use cim_proto::http::{Credentials, LoginResponse, ServerAddress, TokenLogin, TokenResponse};
use cim_proto::v1::PeerKick;

use crate::api::groups;
use crate::app_tokens::AppClaims;
use crate::auth::{self, Auth};
use crate::config::LoginPolicy;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, Source};
use crate::placement;
use crate::state::SharedState;

/// Logs a user in: a token and the server to connect to. 401 for a wrong name or password
/// (alike), 429 when the account or the source failed too often lately or too many password
/// checks are in flight (see the route's `throttle`), 409 under the `reject` policy while the
/// user is online, 403 when password logins are off, 503 when no server is reachable.
pub(crate) async fn login(
    State(state): State<SharedState>,
    Source(source): Source,
    JsonBody(credentials): JsonBody<Credentials>,
) -> ApiResult<Json<LoginResponse>> {
    if !state.config.password_logins {
        return Err(Error::permission_denied(
            "password logins are off on this deployment ([route] password_logins); log in with \
             a token from your application: POST /api/v1/login/token",
        )
        .into());
    }
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
    new_login(&state, user).await
}

/// Logs in with a token: a cim token still valid resumes its login on a live server (the same
/// token back: its lifetime and revocation hold as before), an application's token logs its
/// user in (the account created on first login, its `groups` joined). 401 for a token that is
/// invalid, expired or revoked, 409 when an application token names a password account (or
/// under the `reject` policy), 400 when its subject is no valid user name, 503 when no server
/// is reachable.
pub(crate) async fn login_with_token(
    State(state): State<SharedState>,
    JsonBody(request): JsonBody<TokenLogin>,
) -> ApiResult<Json<LoginResponse>> {
    if let Some(claims) = state.key.verify_own(&request.token)? {
        return resume(&state, claims, request.token).await;
    }
    let Some(app_tokens) = &state.app_tokens else {
        return Err(ApiError::unauthenticated(
            "the token's signature is invalid (and this deployment takes no application \
             tokens: [route.app_tokens])",
        ));
    };
    let claims = app_tokens.verify(&request.token)?;
    let user = app_user(&state, &claims).await?;
    new_login(&state, user).await
}

/// A login of `user` that just proved who they are: the login policy, a server, a new token.
async fn new_login(state: &SharedState, user: User) -> ApiResult<Json<LoginResponse>> {
    if state.config.login_policy == LoginPolicy::Reject
        && let Some(session) = state.stores.sessions.get(user.id).await?
    {
        return Err(Error::already_exists(format!(
            "{} is logged in already (on server {}); log out there first",
            user.name, session.server_id
        ))
        .into());
    }
    let (token, expires_at) = state
        .key
        .issue(user.id, &user.name, state.config.token_ttl)?;
    placed(state, user.id, user.name, token, expires_at).await
}

/// The same login on a live server: the login policy does not apply (this is the login that
/// holds the session, moving), and the token stays what it was.
async fn resume(
    state: &SharedState,
    claims: Claims,
    token: String,
) -> ApiResult<Json<LoginResponse>> {
    auth::check_login(state, &claims).await?;
    placed(
        state,
        claims.user_id,
        claims.user_name,
        token,
        claims.expires_at,
    )
    .await
}

/// The answer to a login: `token` and a reachable server for the user.
async fn placed(
    state: &SharedState,
    user_id: UserId,
    name: String,
    token: String,
    expires_at: Timestamp,
) -> ApiResult<Json<LoginResponse>> {
    let server = placement::place(state.stores.balancer.as_ref(), user_id, &state.probes).await?;
    tracing::info!(user = %user_id, server = %server.id, "login");
    Ok(Json(LoginResponse {
        user_id: user_id.0,
        name,
        token,
        expires_at: expires_at.as_millis(),
        server: ServerAddress {
            id: server.id.to_string(),
            host: server.host,
            port: server.client_port,
        },
    }))
}

/// The account an application token's subject names, created (without a password) on its
/// first login, with the token's groups joined.
async fn app_user(state: &SharedState, claims: &AppClaims) -> ApiResult<User> {
    let user = find_or_create_app_user(state, &claims.subject).await?;
    for name in &claims.groups {
        let Some(group) = state.stores.accounts.group_by_name(name).await? else {
            tracing::warn!(user = %user.id, group = %name, "an application token names a group that does not exist; skipped");
            continue;
        };
        if state.stores.accounts.is_member(group.id, user.id).await? {
            continue;
        }
        match groups::enrol(state, group.id, user.id).await {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                tracing::info!(user = %user.id, group = %group.id, "an application token names a group its user is banned from; skipped");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(user)
}

async fn find_or_create_app_user(state: &SharedState, subject: &str) -> ApiResult<User> {
    // Twice at most: a concurrent first login may create the account between the look-up and
    // the create, and is then found by the second look-up.
    for _ in 0..2 {
        match state.stores.accounts.credentials(subject).await? {
            Some((user, hash)) if hash.is_none() => return Ok(user),
            Some((user, _)) => {
                return Err(Error::already_exists(format!(
                    "{} is an account with a password, which an application token does not log \
                     in; the application's users need names no one signed up with",
                    user.name
                ))
                .into());
            }
            None => {}
        }
        let new = NewUser::without_password(subject, &state.names).map_err(|e| {
            ApiError::invalid_input(format!(
                "the token's subject (`sub`) is not a valid user name: {}",
                e.message()
            ))
        })?;
        match state.stores.accounts.create_user(new).await {
            Ok(user) => {
                tracing::info!(user = %user.id, name = %user.name, "account created from an application token");
                return Ok(user);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::already_exists(format!(
        "the user name {subject:?} looks like a taken one; the application must choose another"
    ))
    .into())
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
