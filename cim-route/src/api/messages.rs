//! `POST /api/v1/messages`, `GET /api/v1/conversations/{id}/messages` and
//! `GET /api/v1/messages/search`.
//!
//! Sending over HTTP is for integrations (the original cim's push-middleware use): clients send
//! over their TCP connection. Both go through the one message pipeline
//! ([`cim_pipeline::Pipeline::send`]): the same body limit, the same per-user rate limit, the
//! same permission checks; the answer comes once the message is stored, and the fan-out
//! follows without the caller. A recipient the fan-out misses still has the message pending in
//! the store and receives it at its next sync.

use axum::Json;
use axum::extract::State;
use cim_core::{
    ConversationId, Cursor, Error, GroupId, HistoryQuery, Recipient, Seq, Timestamp, UserId,
};
use cim_pipeline::{Accepted, SendRequest, Sender};
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
/// and stores nothing again.
pub(crate) async fn send(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    JsonBody(request): JsonBody<SendMessageRequest>,
) -> ApiResult<Json<SendMessageResponse>> {
    let to = recipient(&request)?;
    let sender = Sender::new(caller.user_id, caller.user_name);
    let request = SendRequest {
        to,
        client_msg_id: request.client_msg_id,
        body: request.body,
        deliver_at: request.deliver_at.map(Timestamp),
    };
    let response = match state.pipeline.send(&sender, request).await? {
        Accepted::Stored { message, duplicate } => SendMessageResponse {
            message: Some(views::message(&message)),
            scheduled_id: None,
            duplicate,
        },
        Accepted::Scheduled { entry, duplicate } => SendMessageResponse {
            message: None,
            scheduled_id: Some(entry.id.0),
            duplicate,
        },
    };
    Ok(Json(response))
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

/// `?before=&after=&limit=`: sequence bounds, exclusive.
#[derive(Debug, Deserialize)]
pub(crate) struct HistoryParams {
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u32>,
}

/// A slice of a conversation's history, in ascending sequence order (see [`HistoryQuery`] for
/// which slice). The caller must be one of its two users, or a member of its group; in a
/// group that shows new members only what follows their joining, what came before is left
/// out (a page may then hold fewer messages than asked, or none). Page backwards with
/// `before` = the first item's `seq`, forwards with `after` = the last one's.
pub(crate) async fn history(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    PathParams(id): PathParams<String>,
    QueryParams(params): QueryParams<HistoryParams>,
) -> ApiResult<Json<PageOf<MessageView>>> {
    let conversation: ConversationId = id.parse()?;
    let first = access::require_reader(&state, caller.user_id, conversation).await?;
    let query = HistoryQuery {
        before: params.before.map(Seq),
        after: params.after.map(Seq),
        limit: state.page_limit(params.limit)?,
    };
    let messages = state.stores.messages.history(conversation, query).await?;
    Ok(Json(views::page(
        messages
            .iter()
            .filter(|message| message.seq >= first)
            .map(views::message)
            .collect(),
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

/// The messages the caller can see whose body contains every word of `q`, newest first. What
/// a group shows only to those who were there is left out for later members, so a page may
/// hold fewer messages than asked (or none): continue while `next_cursor` is set.
pub(crate) async fn search(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    QueryParams(params): QueryParams<SearchParams>,
) -> ApiResult<Json<PageOf<MessageView>>> {
    let limit = state.page_limit(params.limit)?;
    let readable = access::readable_groups(&state, caller.user_id).await?;
    let groups: Vec<GroupId> = readable.iter().map(|(group, _)| *group).collect();
    let cursor = params.cursor.map(Cursor);
    let page = state
        .stores
        .messages
        .search(caller.user_id, &groups, &params.q, cursor.as_ref(), limit)
        .await?;
    let visible = |message: &&cim_core::StoredMessage| match message.conversation {
        ConversationId::Group(group) if message.sender != caller.user_id => readable
            .iter()
            .find(|(readable, _)| *readable == group)
            .is_some_and(|(_, first)| message.seq >= *first),
        _ => true,
    };
    let items = page
        .items
        .iter()
        .filter(visible)
        .map(views::message)
        .collect();
    Ok(Json(views::page(items, page.next)))
}
