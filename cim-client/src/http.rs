//! Calls to the route's HTTP API (`/api/v1`), with the JSON bodies of [`cim_proto::http`].
//!
//! The route is only on the side path: accounts, login (which also picks the server), listings,
//! history and groups. Messages travel over the server connection, never through here. Every
//! call has the request timeout; every error response becomes a [`ClientError`] by its code.
//! Listings are read whether the route answers a page (`{items, next_cursor}`) or a bare array,
//! so the SDK does not break if an endpoint's shape is simplified on either side.

use std::time::Duration;

use cim_proto::http::{
    AddMemberRequest, CreateGroupRequest, Credentials, ErrorBody, GroupRole, GroupView,
    LoginResponse, MemberView, MessageView, OnlineUser, PageOf, ServerView, SetRoleRequest,
    TokenLogin, TokenResponse, UpdateGroupRequest, UserView,
};
use reqwest::{Method, RequestBuilder, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{ClientError, Result};
use crate::message::Conversation;

/// A route, reached over HTTP.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    http: reqwest::Client,
    base: Url,
}

/// A listing as the route may answer it.
#[derive(Deserialize)]
#[serde(untagged)]
enum Listing<T> {
    Page(PageOf<T>),
    Items(Vec<T>),
}

impl<T> From<Listing<T>> for PageOf<T> {
    fn from(listing: Listing<T>) -> Self {
        match listing {
            Listing::Page(page) => page,
            Listing::Items(items) => PageOf {
                items,
                next_cursor: None,
            },
        }
    }
}

impl Route {
    /// A route at `base` (`http://host:port`, optionally with a path prefix).
    pub(crate) fn new(
        base: &str,
        request_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self> {
        let base = Url::parse(base).map_err(|e| {
            ClientError::InvalidInput(format!(
                "route URL {base:?} is not a URL ({e}); expected e.g. http://127.0.0.1:8080"
            ))
        })?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::InvalidInput(format!(
                "route URL {base} must be an http:// URL"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(connect_timeout)
            .build()
            .map_err(|e| ClientError::Unavailable {
                message: "the HTTP client could not be set up".into(),
                source: Some(Box::new(e)),
            })?;
        Ok(Route { http, base })
    }

    /// `base` + `/api/v1/` + `segments` (each percent-encoded) + `query`.
    fn url(&self, segments: &[&str], query: &[(&str, Option<String>)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        let present: Vec<_> = query
            .iter()
            .filter_map(|(key, value)| value.as_ref().map(|value| (*key, value)))
            .collect();
        if !present.is_empty() {
            url.query_pairs_mut().extend_pairs(present);
        }
        url
    }

    fn request(&self, method: Method, url: Url, token: Option<&str>) -> RequestBuilder {
        let request = self.http.request(method, url);
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request`; the error body of a failure becomes a [`ClientError`].
    async fn exchange(&self, request: RequestBuilder, what: &str) -> Result<reqwest::Response> {
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::from_reqwest(e, what))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.json::<ErrorBody>().await.ok();
        Err(ClientError::from_http(status.as_u16(), body))
    }

    async fn call<T: DeserializeOwned>(&self, request: RequestBuilder, what: &str) -> Result<T> {
        self.exchange(request, what)
            .await?
            .json::<T>()
            .await
            .map_err(|e| ClientError::from_reqwest(e, what))
    }

    async fn call_empty(&self, request: RequestBuilder, what: &str) -> Result<()> {
        self.exchange(request, what).await.map(drop)
    }

    /// `POST /api/v1/accounts`.
    pub(crate) async fn register(&self, credentials: &Credentials) -> Result<UserView> {
        let url = self.url(&["accounts"], &[]);
        let request = self.request(Method::POST, url, None).json(credentials);
        self.call(request, "creating the account").await
    }

    /// `POST /api/v1/login`.
    pub(crate) async fn login(&self, credentials: &Credentials) -> Result<LoginResponse> {
        let url = self.url(&["login"], &[]);
        let request = self.request(Method::POST, url, None).json(credentials);
        self.call(request, "logging in").await
    }

    /// `POST /api/v1/login/token`: a login with `token`, a cim token to resume or an
    /// application's token.
    pub(crate) async fn login_with_token(&self, token: &str) -> Result<LoginResponse> {
        let url = self.url(&["login", "token"], &[]);
        let body = TokenLogin {
            token: token.to_string(),
        };
        let request = self.request(Method::POST, url, None).json(&body);
        self.call(request, "logging in with a token").await
    }

    /// `POST /api/v1/token`: a fresh token for the login `token` belongs to.
    pub(crate) async fn refresh_token(&self, token: &str) -> Result<TokenResponse> {
        let url = self.url(&["token"], &[]);
        let request = self.request(Method::POST, url, Some(token));
        self.call(request, "refreshing the login token").await
    }

    /// `POST /api/v1/logout`.
    pub(crate) async fn logout(&self, token: &str) -> Result<()> {
        let url = self.url(&["logout"], &[]);
        let request = self.request(Method::POST, url, Some(token));
        self.call_empty(request, "logging out").await
    }

    /// `GET /api/v1/users/online`.
    pub(crate) async fn online_users(
        &self,
        token: &str,
        cursor: Option<String>,
        limit: Option<u32>,
    ) -> Result<PageOf<OnlineUser>> {
        let query = [("cursor", cursor), ("limit", limit.map(|l| l.to_string()))];
        let url = self.url(&["users", "online"], &query);
        let request = self.request(Method::GET, url, Some(token));
        let listing: Listing<OnlineUser> = self.call(request, "listing online users").await?;
        Ok(listing.into())
    }

    /// `GET /api/v1/users?prefix=`.
    pub(crate) async fn search_users(
        &self,
        token: &str,
        prefix: &str,
        cursor: Option<String>,
        limit: Option<u32>,
    ) -> Result<PageOf<UserView>> {
        let query = [
            ("prefix", Some(prefix.to_owned())),
            ("cursor", cursor),
            ("limit", limit.map(|l| l.to_string())),
        ];
        let url = self.url(&["users"], &query);
        let request = self.request(Method::GET, url, Some(token));
        let listing: Listing<UserView> = self.call(request, "searching users").await?;
        Ok(listing.into())
    }

    /// `GET /api/v1/conversations/{id}/messages`.
    pub(crate) async fn history(
        &self,
        token: &str,
        conversation: Conversation,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<Vec<MessageView>> {
        let query = [
            ("before", before.map(|s| s.to_string())),
            ("after", after.map(|s| s.to_string())),
            ("limit", limit.map(|l| l.to_string())),
        ];
        let id = conversation.to_string();
        let url = self.url(&["conversations", &id, "messages"], &query);
        let request = self.request(Method::GET, url, Some(token));
        let listing: Listing<MessageView> = self.call(request, "reading history").await?;
        Ok(PageOf::from(listing).items)
    }

    /// `GET /api/v1/messages/search?q=`.
    pub(crate) async fn search_messages(
        &self,
        token: &str,
        query_text: &str,
        cursor: Option<String>,
        limit: Option<u32>,
    ) -> Result<PageOf<MessageView>> {
        let query = [
            ("q", Some(query_text.to_owned())),
            ("cursor", cursor),
            ("limit", limit.map(|l| l.to_string())),
        ];
        let url = self.url(&["messages", "search"], &query);
        let request = self.request(Method::GET, url, Some(token));
        let listing: Listing<MessageView> = self.call(request, "searching messages").await?;
        Ok(listing.into())
    }

    /// `POST /api/v1/groups`.
    pub(crate) async fn create_group(
        &self,
        token: &str,
        body: &CreateGroupRequest,
    ) -> Result<GroupView> {
        let url = self.url(&["groups"], &[]);
        let request = self.request(Method::POST, url, Some(token)).json(body);
        self.call(request, "creating the group").await
    }

    /// `GET /api/v1/groups/{id}`.
    pub(crate) async fn group(&self, token: &str, group: u64) -> Result<GroupView> {
        let group = group.to_string();
        let url = self.url(&["groups", &group], &[]);
        let request = self.request(Method::GET, url, Some(token));
        self.call(request, "reading the group").await
    }

    /// `PATCH /api/v1/groups/{id}`.
    pub(crate) async fn update_group(
        &self,
        token: &str,
        group: u64,
        body: &UpdateGroupRequest,
    ) -> Result<GroupView> {
        let group = group.to_string();
        let url = self.url(&["groups", &group], &[]);
        let request = self.request(Method::PATCH, url, Some(token)).json(body);
        self.call(request, "changing the group").await
    }

    /// `PUT /api/v1/groups/{id}/members/{user_id}/role`.
    pub(crate) async fn set_role(
        &self,
        token: &str,
        group: u64,
        user: u64,
        role: GroupRole,
    ) -> Result<()> {
        let (group, user) = (group.to_string(), user.to_string());
        let url = self.url(&["groups", &group, "members", &user, "role"], &[]);
        let request = self
            .request(Method::PUT, url, Some(token))
            .json(&SetRoleRequest { role });
        self.call_empty(request, "changing the role").await
    }

    /// `POST /api/v1/groups/{id}/bans`.
    pub(crate) async fn ban(&self, token: &str, group: u64, user: u64) -> Result<()> {
        let group = group.to_string();
        let url = self.url(&["groups", &group, "bans"], &[]);
        let body = AddMemberRequest { user_id: user };
        let request = self.request(Method::POST, url, Some(token)).json(&body);
        self.call_empty(request, "banning the user").await
    }

    /// `DELETE /api/v1/groups/{id}/bans/{user_id}`.
    pub(crate) async fn unban(&self, token: &str, group: u64, user: u64) -> Result<()> {
        let (group, user) = (group.to_string(), user.to_string());
        let url = self.url(&["groups", &group, "bans", &user], &[]);
        let request = self.request(Method::DELETE, url, Some(token));
        self.call_empty(request, "lifting the ban").await
    }

    /// `GET /api/v1/groups/{id}/bans`.
    pub(crate) async fn bans(
        &self,
        token: &str,
        group: u64,
        cursor: Option<String>,
        limit: Option<u32>,
    ) -> Result<PageOf<UserView>> {
        let group = group.to_string();
        let query = [("cursor", cursor), ("limit", limit.map(|l| l.to_string()))];
        let url = self.url(&["groups", &group, "bans"], &query);
        let request = self.request(Method::GET, url, Some(token));
        let listing: Listing<UserView> = self.call(request, "listing bans").await?;
        Ok(listing.into())
    }

    /// `GET /api/v1/groups?name=`.
    pub(crate) async fn find_group(&self, token: &str, name: &str) -> Result<GroupView> {
        let url = self.url(&["groups"], &[("name", Some(name.to_string()))]);
        let request = self.request(Method::GET, url, Some(token));
        self.call(request, "looking the group up").await
    }

    /// `POST /api/v1/groups/{id}/members`.
    pub(crate) async fn add_member(&self, token: &str, group: u64, user: u64) -> Result<()> {
        let group = group.to_string();
        let url = self.url(&["groups", &group, "members"], &[]);
        let body = AddMemberRequest { user_id: user };
        let request = self.request(Method::POST, url, Some(token)).json(&body);
        self.call_empty(request, "adding the member").await
    }

    /// `DELETE /api/v1/groups/{id}/members/{user_id}`.
    pub(crate) async fn remove_member(&self, token: &str, group: u64, user: u64) -> Result<()> {
        let (group, user) = (group.to_string(), user.to_string());
        let url = self.url(&["groups", &group, "members", &user], &[]);
        let request = self.request(Method::DELETE, url, Some(token));
        self.call_empty(request, "removing the member").await
    }

    /// `GET /api/v1/groups/{id}/members`.
    pub(crate) async fn members(
        &self,
        token: &str,
        group: u64,
        cursor: Option<String>,
        limit: Option<u32>,
    ) -> Result<PageOf<MemberView>> {
        let group = group.to_string();
        let query = [("cursor", cursor), ("limit", limit.map(|l| l.to_string()))];
        let url = self.url(&["groups", &group, "members"], &query);
        let request = self.request(Method::GET, url, Some(token));
        let listing: Listing<MemberView> = self.call(request, "listing members").await?;
        Ok(listing.into())
    }

    /// `GET /api/v1/users/me/groups`.
    pub(crate) async fn my_groups(&self, token: &str) -> Result<Vec<GroupView>> {
        let url = self.url(&["users", "me", "groups"], &[]);
        let request = self.request(Method::GET, url, Some(token));
        let listing: Listing<GroupView> = self.call(request, "listing your groups").await?;
        Ok(PageOf::from(listing).items)
    }

    /// `GET /api/v1/servers`.
    pub(crate) async fn servers(&self, token: &str) -> Result<Vec<ServerView>> {
        let url = self.url(&["servers"], &[]);
        let request = self.request(Method::GET, url, Some(token));
        let listing: Listing<ServerView> = self.call(request, "listing servers").await?;
        Ok(PageOf::from(listing).items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(base: &str) -> Route {
        Route::new(base, Duration::from_secs(1), Duration::from_secs(1)).expect("valid base")
    }

    #[test]
    fn paths_are_built_under_api_v1_with_encoded_segments() {
        let route = route("http://127.0.0.1:8080");
        let url = route.url(
            &["conversations", "d:1:2", "messages"],
            &[("before", Some("9".into())), ("after", None)],
        );
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8080/api/v1/conversations/d:1:2/messages?before=9"
        );
    }

    #[test]
    fn a_base_path_prefix_is_kept() {
        for base in ["http://example.com/cim", "http://example.com/cim/"] {
            let url = route(base).url(&["users"], &[("prefix", Some("a b&c".into()))]);
            assert_eq!(
                url.as_str(),
                "http://example.com/cim/api/v1/users?prefix=a+b%26c"
            );
        }
    }

    #[test]
    fn a_bad_base_is_invalid_input() {
        for base in ["not a url", "mailto:x@example.com", "ftp://example.com"] {
            assert!(matches!(
                Route::new(base, Duration::from_secs(1), Duration::from_secs(1)),
                Err(ClientError::InvalidInput(_))
            ));
        }
    }

    #[test]
    fn listings_are_read_as_pages_or_bare_arrays() {
        let page: Listing<u64> =
            serde_json::from_str(r#"{"items": [1, 2], "next_cursor": "c"}"#).expect("page");
        let page = PageOf::from(page);
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(page.next_cursor.as_deref(), Some("c"));
        let array: Listing<u64> = serde_json::from_str("[3]").expect("array");
        assert_eq!(PageOf::from(array).items, vec![3]);
    }
}
