//! `POST /api/v1/accounts`: sign-up.
//!
//! The store assigns the id and enforces unique names atomically; the original cim used the
//! current time as the id and checked the name before writing it, so two sign-ups in the same
//! millisecond collided.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cim_core::NewUser;
use cim_proto::http::{Credentials, UserView};

use crate::auth::AdminPresented;
use crate::config::SignupPolicy;
use crate::error::ApiError;
use crate::error::ApiResult;
use crate::extract::{JsonBody, Source};
use crate::state::SharedState;
use crate::views;

/// Creates an account: 201 with the user, 409 if the name is taken, 400 for a name or password
/// the rules refuse, 429 after too many sign-ups from the same address; under the
/// `invitation` policy 401 without a valid invitation for this name, under the `admin` policy
/// 401 without the admin token (the admin may always create accounts).
pub(crate) async fn create(
    State(state): State<SharedState>,
    Source(source): Source,
    admin: AdminPresented,
    JsonBody(credentials): JsonBody<Credentials>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    if !state.config.password_logins {
        return Err(cim_core::Error::permission_denied(
            "password logins are off on this deployment ([route] password_logins), so accounts \
             are not created with a password: an application's token creates its user's account \
             on first login (POST /api/v1/login/token)",
        )
        .into());
    }
    // Validate the name before spending a sign-up (and a password hash) on it.
    state.names.validate("user name", &credentials.name)?;
    if !admin.0 {
        may_sign_up(&state, &credentials)?;
    }
    let admitted = state.throttle.admit_signup(source)?;
    let new_user = NewUser::new(&credentials.name, &credentials.password, &state.names).await?;
    drop(admitted);
    let user = state.stores.accounts.create_user(new_user).await?;
    tracing::info!(user = %user.id, name = %user.name, "account created");
    Ok((StatusCode::CREATED, Json(views::user(&user))))
}

/// Fails unless the sign-up policy lets `credentials` create an account without the admin.
fn may_sign_up(state: &SharedState, credentials: &Credentials) -> ApiResult<()> {
    match state.config.signups {
        SignupPolicy::Open => Ok(()),
        SignupPolicy::Admin => Err(ApiError::unauthenticated(
            "accounts are created by the admin on this deployment",
        )),
        SignupPolicy::Invitation => {
            let Some(invitation) = &credentials.invitation else {
                return Err(ApiError::unauthenticated(
                    "signing up here needs an invitation: pass it as \"invitation\"",
                ));
            };
            let invitation = state.key.verify_invitation(invitation)?;
            match invitation.name {
                Some(name)
                    if cim_core::canonical_name(&name)
                        != cim_core::canonical_name(&credentials.name) =>
                {
                    Err(ApiError::unauthenticated(format!(
                        "this invitation is for the name {name:?}"
                    )))
                }
                _ => Ok(()),
            }
        }
    }
}
