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

use crate::error::ApiResult;
use crate::extract::JsonBody;
use crate::state::SharedState;
use crate::views;

/// Creates an account: 201 with the user, 409 if the name is taken, 400 for a name or password
/// the rules refuse.
pub(crate) async fn create(
    State(state): State<SharedState>,
    JsonBody(credentials): JsonBody<Credentials>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let new_user = NewUser::new(&credentials.name, &credentials.password, &state.names).await?;
    let user = state.stores.accounts.create_user(new_user).await?;
    tracing::info!(user = %user.id, name = %user.name, "account created");
    Ok((StatusCode::CREATED, Json(views::user(&user))))
}
