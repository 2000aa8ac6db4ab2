//! `POST /api/v1/messages`, `GET /api/v1/conversations/{id}/messages` and
//! `GET /api/v1/messages/search`.
//!
//! Sending over HTTP is for integrations (the original cim's push-middleware use): clients send
//! over their TCP connection. It follows the server's order exactly: check the recipient, store,
//! answer only once the message is stored, then fan it out live through the [`Dispatcher`]. The
//! fan-out is best effort by design: a recipient it misses still has the message pending in the
//! store and receives it at its next sync.
//!
//! [`Dispatcher`]: cim_server::Dispatcher

use axum::Json;
use axum::extract::State;
use cim_core::{
    ConversationId, Cursor, Error, GroupId, HistoryQuery, NewMessage, Recipient, Seq, Timestamp,
    UserId,
};
use cim_proto::http::{MessageView, PageOf, SendMessageRequest, SendMessageResponse};
use serde::Deserialize;

use super::access;
use crate::auth::Auth;
use crate::error::ApiResult;
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::state::SharedState;
use crate::views;

/// Sends a message as the caller: stored and fanned out now, or scheduled when `deliver_at` is
/// in the future. A repeated `client_msg_id` answers the first result with `duplicate: true`
/// and sends nothing again.
pub(crate) async fn send(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    JsonBody(request): JsonBody<SendMessageRequest>,
) -> ApiResult<Json<SendMessageResponse>> {
    let to = recipient(&request)?;
    check_recipient(&state, caller.user_id, to).await?;
    let message = NewMessage {
        sender: caller.user_id,
        to,
        client_msg_id: request.client_msg_id,
        body: request.body,
        sent_at: Timestamp::now(),
    };
    message.validate()?;
    if let Some(deliver_at) = request
        .deliver_at
        .map(Timestamp)
        .filter(|at| *at > message.sent_at)
    {
        let scheduled = state.stores.messages.schedule(message, deliver_at).await?;
        return Ok(Json(SendMessageResponse {
            message: None,
            scheduled_id: Some(scheduled.id.0),
            duplicate: false,
        }));
    }
    let appended = state.stores.messages.append(message).await?;
    // A retry is delivered again, like a first attempt: the first may have been stored by a
    // route that died before delivering it. Recipients drop what they already have.
    if let Err(error) = state
        .dispatcher
        .dispatch(&appended.message, &caller.user_name)
        .await
    {
        tracing::warn!(
            %error,
            message = %appended.message.id,
            "live delivery incomplete; the recipients get the message at their next sync"
        );
    }
    Ok(Json(SendMessageResponse {
        message: Some(views::message(&appended.message)),
        scheduled_id: None,
        duplicate: appended.duplicate,
    }))
}

/// The one recipient a request names.
fn recipient(request: &SendMessageRequest) -> ApiResult<Recipient> {
    match (request.to_user, request.to_group) {
        (Some(user), None) => Ok(Recipient::User(UserId(user))),
        (None, Some(group)) => Ok(Recipient::Group(GroupId(group))),
        _ => Err(Error::invalid_input(
            "set exactly one of to_user and to_group (0 is the group of every online user)",
        )
        .into()),
    }
}

/// Fails unless `to` exists and `sender` may write to it.
async fn check_recipient(state: &SharedState, sender: UserId, to: Recipient) -> ApiResult<()> {
    match to {
        Recipient::User(user) => {
            if state.stores.accounts.user(user).await?.is_none() {
                return Err(Error::not_found(format!("there is no user {user}")).into());
            }
            Ok(())
        }
        Recipient::Group(GroupId::ALL) => Ok(()),
        Recipient::Group(group) => {
            access::stored_group(state, group).await?;
            access::require_member(state, sender, group).await
        }
    }
}

/// `?before=&after=&limit=`: sequence bounds, exclusive.
#[derive(Debug, Deserialize)]
pub(crate) struct HistoryParams {
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u32>,
}

/// A slice of a conversation's history, in ascending sequence order (see [`HistoryQuery`] for
/// which slice). The caller must be one of its two users, or a member of its group. Page
/// backwards with `before` = the first item's `seq`, forwards with `after` = the last one's.
pub(crate) async fn history(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    PathParams(id): PathParams<String>,
    QueryParams(params): QueryParams<HistoryParams>,
) -> ApiResult<Json<PageOf<MessageView>>> {
    let conversation: ConversationId = id.parse()?;
    access::require_reader(&state, caller.user_id, conversation).await?;
    let query = HistoryQuery {
        before: params.before.map(Seq),
        after: params.after.map(Seq),
        limit: state.page_limit(params.limit)?,
    };
    let messages = state.stores.messages.history(conversation, query).await?;
    Ok(Json(views::page(
        messages.iter().map(views::message).collect(),
        None,
    )))
}

/// `?q=&cursor=&limit=`.
#[derive(Debug, Deserialize)]
pub(crate) struct SearchParams {
    q: String,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// The messages the caller can see whose body contains every word of `q`, newest first.
pub(crate) async fn search(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    QueryParams(params): QueryParams<SearchParams>,
) -> ApiResult<Json<PageOf<MessageView>>> {
    let limit = state.page_limit(params.limit)?;
    let groups = access::readable_groups(&state, caller.user_id).await?;
    let cursor = params.cursor.map(Cursor);
    let page = state
        .stores
        .messages
        .search(caller.user_id, &groups, &params.q, cursor.as_ref(), limit)
        .await?;
    Ok(Json(views::page_of(page, views::message)))
}
