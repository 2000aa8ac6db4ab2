//! The admin API (`/api/v1/admin/...`), opened by `[route] admin_token`: what a deployment's
//! operator does that no user may.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cim_proto::http::{InvitationRequest, InvitationResponse};

use crate::auth::Admin;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::state::SharedState;

/// How long an invitation stays valid unless the request says.
const DEFAULT_INVITATION_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// The longest an invitation may stay valid.
const MAX_INVITATION_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// Makes an invitation to sign up (for one name, or for any): 201 with the invitation.
pub(crate) async fn invite(
    State(state): State<SharedState>,
    _admin: Admin,
    JsonBody(request): JsonBody<InvitationRequest>,
) -> ApiResult<(StatusCode, Json<InvitationResponse>)> {
    let ttl = request
        .valid_for_secs
        .map_or(DEFAULT_INVITATION_TTL, Duration::from_secs);
    if ttl.is_zero() || ttl > MAX_INVITATION_TTL {
        return Err(ApiError::invalid_input(format!(
            "valid_for_secs must be 1 to {}",
            MAX_INVITATION_TTL.as_secs()
        )));
    }
    let name = match &request.name {
        Some(name) => Some(state.names.validate("user name", name)?),
        None => None,
    };
    let (invitation, expires_at) = state.key.invite(name.as_deref(), ttl)?;
    tracing::info!(name = name.as_deref().unwrap_or("(any)"), "invitation made");
    Ok((
        StatusCode::CREATED,
        Json(InvitationResponse {
            invitation,
            expires_at: expires_at.as_millis(),
        }),
    ))
}
