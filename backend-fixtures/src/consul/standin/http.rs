//! The stand-in's HTTP surface: Consul's `/v1/kv`, `/v1/txn` and `/v1/session` endpoints (and
//! `/v1/status/leader` for readiness checks), with Consul's query parameters, headers, status
//! codes and JSON shapes. Handlers are thin: they parse, call the [`Store`], and format; blocking
//! queries wait on a watch channel that every KV change signals.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use super::encoding::parse_go_duration;
use super::state::{
    ApiError, Entry, MAX_TXN_OPS, MAX_VALUE_SIZE, NODE_NAME, NewSession, PutMode, Session, Store,
    TxnOp,
};

/// The datacenter the stand-in claims to be.
const DATACENTER: &str = "dc1";
/// `?wait=` when a blocking query gives none (Consul's default).
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// The longest `?wait=` honoured (Consul's `maxQueryTime`).
const MAX_WAIT: Duration = Duration::from_secs(600);

/// What every handler shares: the data, the signal of KV changes for blocking queries, and the
/// ACL token required of requests, if any.
pub(super) struct Shared {
    store: Mutex<Store>,
    kv_changes: watch::Sender<u64>,
    session_created: Notify,
    acl_token: Option<String>,
}

impl Shared {
    pub(super) fn new(store: Store, acl_token: Option<String>) -> Shared {
        Shared {
            store: Mutex::new(store),
            kv_changes: watch::channel(0).0,
            session_created: Notify::new(),
            acl_token,
        }
    }

    /// Runs `f` on the store after expiring lapsed sessions, and wakes blocking queries if the KV
    /// table changed meanwhile.
    fn with<R>(&self, f: impl FnOnce(&mut Store, Instant) -> R) -> R {
        let now = Instant::now();
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let before = store.kv_index();
        store.expire(now);
        let result = f(&mut store, now);
        let after = store.kv_index();
        drop(store);
        if after != before {
            self.kv_changes.send_replace(after);
        }
        result
    }
}

/// Invalidates sessions as their TTLs run out, for as long as the runtime runs.
pub(super) async fn reap_sessions(shared: Arc<Shared>) {
    loop {
        let next = shared.with(|store, _| store.next_deadline());
        let sleep = match next {
            Some(deadline) => tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            _ = sleep => {}
            _ = shared.session_created.notified() => {}
        }
    }
}

/// The routes Consul's agent serves, as far as the stand-in implements them.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/kv/", get(read_kv).put(write_kv).delete(delete_kv))
        .route(
            "/v1/kv/{*key}",
            get(read_kv).put(write_kv).delete(delete_kv),
        )
        .route("/v1/txn", put(txn))
        .route("/v1/session/create", put(session_create))
        .route("/v1/session/destroy/{id}", put(session_destroy))
        .route("/v1/session/renew/{id}", put(session_renew))
        .route("/v1/session/info/{id}", get(session_info))
        .route("/v1/session/list", get(session_list))
        .route("/v1/status/leader", get(status_leader))
        .fallback(not_implemented)
        .with_state(shared)
}

type Params = Query<HashMap<String, String>>;
type AppState = State<Arc<Shared>>;

/// A plain-text answer, as Consul gives for errors.
fn text(status: u16, message: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, message.into()).into_response()
}

fn api_error(error: ApiError) -> Response {
    text(error.status, error.message)
}

/// A JSON answer with Consul's metadata headers (`X-Consul-Index` when `index` is given).
fn json_response(status: StatusCode, index: Option<u64>, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("x-consul-knownleader", HeaderValue::from_static("true"));
    headers.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    if let Some(index) = index {
        // Consul never reports an index below 1: a zero would make blocking queries spin.
        headers.insert("x-consul-index", HeaderValue::from(index.max(1)));
    }
    response
}

fn entry_json(entry: &Entry, with_value: bool) -> Value {
    let value = if with_value && !entry.value.is_empty() {
        Value::String(STANDARD.encode(&entry.value))
    } else {
        Value::Null
    };
    let mut object = json!({
        "LockIndex": entry.lock_index,
        "Key": entry.key,
        "Flags": entry.flags,
        "Value": value,
        "CreateIndex": entry.create_index,
        "ModifyIndex": entry.modify_index,
    });
    if let (Some(session), Some(map)) = (&entry.session, object.as_object_mut()) {
        map.insert("Session".into(), Value::String(session.clone()));
    }
    object
}

fn session_json(session: &Session) -> Value {
    json!({
        "ID": session.id,
        "Name": session.name,
        "Node": NODE_NAME,
        "LockDelay": u64::try_from(session.lock_delay.as_nanos()).unwrap_or(u64::MAX),
        "Behavior": session.behavior.as_str(),
        "TTL": session.ttl,
        "NodeChecks": [],
        "ServiceChecks": null,
        "CreateIndex": session.create_index,
        "ModifyIndex": session.create_index,
    })
}

/// Refuses a request whose token or datacenter the stand-in does not serve, as Consul would.
fn admit(
    shared: &Shared,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Option<Response> {
    if let Some(required) = &shared.acl_token {
        let bearer = headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let given = headers
            .get("x-consul-token")
            .and_then(|value| value.to_str().ok())
            .or(bearer)
            .or(params.get("token").map(String::as_str))
            .unwrap_or("");
        if given.is_empty() {
            return Some(text(
                403,
                "Permission denied: anonymous token lacks permission",
            ));
        }
        if given != required {
            return Some(text(403, "ACL not found"));
        }
    }
    match params.get("dc").map(String::as_str) {
        None | Some("") | Some(DATACENTER) => None,
        Some(_) => Some(text(500, "No path to datacenter")),
    }
}

/// Refuses a KV request as [`admit`] does, or for its key ([`validate_key`]; `""`, the
/// `/v1/kv/` root, passes).
fn admit_kv(
    shared: &Shared,
    key: &str,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Option<Response> {
    if let Some(refused) = admit(shared, params, headers) {
        return Some(refused);
    }
    if key.is_empty() {
        return None;
    }
    validate_key(key).err().map(api_error)
}

/// The `?index=&wait=` of a blocking query: the index to exceed and until when to wait.
fn blocking(params: &HashMap<String, String>) -> Result<Option<(u64, Instant)>, ApiError> {
    let Some(index) = params.get("index") else {
        return Ok(None);
    };
    let index: u64 = index
        .parse()
        .map_err(|_| ApiError::new(400, "Invalid index"))?;
    let wait = match params.get("wait") {
        Some(wait) => {
            parse_go_duration(wait).ok_or_else(|| ApiError::new(400, "Invalid wait time"))?
        }
        None => DEFAULT_WAIT,
    };
    let wait = if wait.is_zero() {
        DEFAULT_WAIT
    } else {
        wait.min(MAX_WAIT)
    };
    Ok(Some((index, Instant::now() + wait)))
}

/// Consul's checks on a key named in a URL (newer agents refuse more than older ones did; the
/// stand-in is as strict as the newest, so what passes here passes everywhere).
fn validate_key(key: &str) -> Result<(), ApiError> {
    const EXTENSIONS: &[&str] = &[
        ".js", ".css", ".html", ".htm", ".xml", ".json", ".txt", ".log", ".php", ".asp", ".jsp",
        ".cgi", ".pl", ".py", ".rb", ".sh", ".exe", ".dll", ".bat", ".cmd", ".com", ".scr", ".vbs",
        ".pdf", ".doc", ".docx", ".xls", ".xlsx", ".ppt", ".pptx", ".zip", ".rar", ".tar", ".gz",
        ".7z", ".bz2", ".jpg", ".jpeg", ".png", ".gif", ".svg", ".ico", ".bmp", ".mp3", ".mp4",
        ".avi", ".mov", ".wmv", ".flv", ".swf", ".woff", ".woff2", ".ttf", ".eot", ".otf",
    ];
    if key.starts_with('/') {
        return Err(ApiError::new(400, "key must not begin with a '/'"));
    }
    if let Some((at, bad)) = key
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, ',' | '-' | '_' | '.' | '/')))
    {
        return Err(ApiError::new(
            400,
            format!(
                "key contains invalid character '{bad}' at position {at}. Only alphanumeric \
                 characters and ,-_./ are allowed"
            ),
        ));
    }
    if key.contains("../") {
        return Err(ApiError::new(400, "key contains path traversal sequence"));
    }
    let lower = key.to_ascii_lowercase();
    if let Some(ext) = EXTENSIONS.iter().find(|ext| lower.ends_with(*ext)) {
        return Err(ApiError::new(
            400,
            format!("key contains suspicious file extension '{ext}' that may be cached by proxies"),
        ));
    }
    Ok(())
}

/// `GET /v1/kv/<key>` with `?recurse`, `?keys[&separator=]`, `?raw`, and blocking `?index=`.
async fn read_kv(
    State(shared): AppState,
    key: Option<Path<String>>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let key = key.map(|Path(key)| key).unwrap_or_default();
    if let Some(refused) = admit_kv(&shared, &key, &params, &headers) {
        return refused;
    }
    let blocking = match blocking(&params) {
        Ok(blocking) => blocking,
        Err(refused) => return api_error(refused),
    };
    let keys_only = params.contains_key("keys");
    let recurse = params.contains_key("recurse");
    if !keys_only && !recurse && key.is_empty() {
        return text(400, "Missing key name");
    }
    let separator = params.get("separator").or(params.get("seperator")).cloned();
    // Subscribed before the first read, so no change between the read and the wait is missed.
    let mut changes = shared.kv_changes.subscribe();
    loop {
        let (index, answer) = shared.with(|store, _| {
            if keys_only {
                let (index, keys) = store.keys(&key, separator.as_deref());
                let answer = if keys.is_empty() && !key.is_empty() {
                    Answer::NotFound
                } else {
                    Answer::Json(json!(keys))
                };
                (index, answer)
            } else if recurse {
                let (index, entries) = store.list(&key);
                let answer = if entries.is_empty() {
                    Answer::NotFound
                } else {
                    Answer::Json(Value::Array(
                        entries.iter().map(|e| entry_json(e, true)).collect(),
                    ))
                };
                (index, answer)
            } else {
                let (index, entry) = store.get(&key);
                let answer = match entry {
                    None => Answer::NotFound,
                    Some(entry) if params.contains_key("raw") => Answer::Raw(entry.value.clone()),
                    Some(entry) => Answer::Json(json!([entry_json(entry, true)])),
                };
                (index, answer)
            }
        });
        if let Some((min_index, deadline)) = blocking
            && index.max(1) <= min_index
            && Instant::now() < deadline
        {
            let deadline = tokio::time::Instant::from_std(deadline);
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
            continue;
        }
        let mut response = match answer {
            Answer::Json(body) => json_response(StatusCode::OK, Some(index), &body),
            Answer::Raw(raw) => (StatusCode::OK, raw).into_response(),
            Answer::NotFound => StatusCode::NOT_FOUND.into_response(),
        };
        response
            .headers_mut()
            .insert("x-consul-index", HeaderValue::from(index.max(1)));
        return response;
    }
}

/// What a KV read answers.
enum Answer {
    Json(Value),
    Raw(Vec<u8>),
    NotFound,
}

/// `PUT /v1/kv/<key>` with `?flags=`, and one of `?cas=`, `?acquire=`, `?release=`.
async fn write_kv(
    State(shared): AppState,
    key: Option<Path<String>>,
    Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = key.map(|Path(key)| key).unwrap_or_default();
    if let Some(refused) = admit_kv(&shared, &key, &params, &headers) {
        return refused;
    }
    if key.is_empty() {
        return text(400, "Missing key name");
    }
    let modes = ["cas", "acquire", "release"]
        .iter()
        .filter(|flag| params.contains_key(**flag))
        .count();
    if modes > 1 {
        return text(
            400,
            "Conflicting flags: only one of cas, acquire and release",
        );
    }
    let flags = match params.get("flags").map(|f| f.parse::<u64>()) {
        None => 0,
        Some(Ok(flags)) => flags,
        Some(Err(_)) => return text(400, "Invalid flags"),
    };
    let mode = if let Some(cas) = params.get("cas") {
        match cas.parse() {
            Ok(index) => PutMode::Cas(index),
            Err(_) => return text(400, "Invalid cas index"),
        }
    } else if let Some(session) = params.get("acquire") {
        PutMode::Acquire(session.clone())
    } else if let Some(session) = params.get("release") {
        PutMode::Release(session.clone())
    } else {
        PutMode::Set
    };
    if body.len() > MAX_VALUE_SIZE {
        return text(
            413,
            format!(
                "Request body({} bytes) too large, max size: {MAX_VALUE_SIZE} bytes",
                body.len()
            ),
        );
    }
    match shared.with(|store, now| store.put(&key, body.to_vec(), flags, mode, now)) {
        Ok(written) => json_response(StatusCode::OK, None, &json!(written)),
        Err(error) => api_error(error),
    }
}

/// `DELETE /v1/kv/<key>` with `?recurse` or `?cas=`.
async fn delete_kv(
    State(shared): AppState,
    key: Option<Path<String>>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let key = key.map(|Path(key)| key).unwrap_or_default();
    if let Some(refused) = admit_kv(&shared, &key, &params, &headers) {
        return refused;
    }
    let recurse = params.contains_key("recurse");
    if recurse && params.contains_key("cas") {
        return text(400, "Conflicting flags: only one of recurse and cas");
    }
    if recurse {
        shared.with(|store, now| store.delete_tree(&key, now));
        return json_response(StatusCode::OK, None, &json!(true));
    }
    if key.is_empty() {
        return text(400, "Missing key name");
    }
    let cas = match params.get("cas").map(|c| c.parse::<u64>()) {
        None => None,
        Some(Ok(index)) => Some(index),
        Some(Err(_)) => return text(400, "Invalid cas index"),
    };
    let deleted = shared.with(|store, now| store.delete(&key, cas, now));
    json_response(StatusCode::OK, None, &json!(deleted))
}

/// `PUT /v1/txn`: KV operations only.
async fn txn(
    State(shared): AppState,
    Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = admit(&shared, &params, &headers) {
        return refused;
    }
    let raw: Vec<Value> = match serde_json::from_slice(&body) {
        Ok(raw) => raw,
        Err(e) => return text(400, format!("Failed to parse body: {e}")),
    };
    if raw.len() > MAX_TXN_OPS {
        return text(
            413,
            format!(
                "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
                raw.len()
            ),
        );
    }
    let mut ops = Vec::with_capacity(raw.len());
    for op in &raw {
        match txn_op(op) {
            Ok(op) => ops.push(op),
            Err(refused) => return api_error(refused),
        }
    }
    match shared.with(|store, now| store.txn(&ops, now)) {
        Ok(results) => {
            let results: Vec<Value> = results
                .iter()
                .map(|r| json!({ "KV": entry_json(&r.entry, r.with_value) }))
                .collect();
            json_response(
                StatusCode::OK,
                None,
                &json!({ "Results": results, "Errors": null }),
            )
        }
        Err(errors) => {
            let errors: Vec<Value> = errors
                .iter()
                .map(|e| json!({ "OpIndex": e.op_index, "What": e.what }))
                .collect();
            json_response(
                StatusCode::CONFLICT,
                None,
                &json!({ "Results": null, "Errors": errors }),
            )
        }
    }
}

/// One operation of a transaction body (`{"KV": {"Verb": ..., "Key": ..., ...}}`).
fn txn_op(op: &Value) -> Result<TxnOp, ApiError> {
    let Some(kv) = op.get("KV") else {
        return Err(ApiError::new(
            400,
            "cim's Consul stand-in supports only KV operations in transactions",
        ));
    };
    let string = |name: &str| {
        kv.get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let number = |name: &str| kv.get(name).and_then(Value::as_u64).unwrap_or(0);
    let key = string("Key");
    let value = match kv.get("Value").and_then(Value::as_str) {
        None => Vec::new(),
        Some(encoded) => STANDARD
            .decode(encoded)
            .map_err(|_| ApiError::new(400, "Failed to parse body: failed to decode value"))?,
    };
    if value.len() > MAX_VALUE_SIZE {
        return Err(ApiError::new(
            413,
            format!(
                "Value for key {key:?} is too large ({} > {MAX_VALUE_SIZE} bytes)",
                value.len()
            ),
        ));
    }
    let flags = number("Flags");
    let index = number("Index");
    let session = string("Session");
    Ok(match string("Verb").as_str() {
        "set" => TxnOp::Set { key, value, flags },
        "cas" => TxnOp::Cas {
            key,
            value,
            flags,
            index,
        },
        "lock" => TxnOp::Lock {
            key,
            value,
            flags,
            session,
        },
        "unlock" => TxnOp::Unlock {
            key,
            value,
            flags,
            session,
        },
        "get" => TxnOp::Get { key },
        "get-tree" => TxnOp::GetTree { prefix: key },
        "check-index" => TxnOp::CheckIndex { key, index },
        "check-session" => TxnOp::CheckSession { key, session },
        "check-not-exists" => TxnOp::CheckNotExists { key },
        "delete" => TxnOp::Delete { key },
        "delete-cas" => TxnOp::DeleteCas { key, index },
        "delete-tree" => TxnOp::DeleteTree { prefix: key },
        other => return Err(ApiError::new(400, format!("unknown KV verb {other:?}"))),
    })
}

/// A field of a JSON object, its name matched without regard to case (as Go's decoder does).
fn field<'a>(object: &'a Value, name: &str) -> Option<&'a Value> {
    object
        .as_object()?
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
}

/// `LockDelay` as Consul reads it: a duration string or nanoseconds, values below 1000 taken as
/// seconds.
fn lock_delay(value: Option<&Value>) -> Result<Duration, ApiError> {
    let nanos = match value {
        None => return Ok(Duration::from_secs(15)),
        Some(Value::String(text_value)) => parse_go_duration(text_value)
            .ok_or_else(|| {
                ApiError::new(
                    400,
                    format!("Request decode failed: invalid duration {text_value:?}"),
                )
            })?
            .as_nanos(),
        Some(Value::Number(number)) => u128::from(number.as_u64().unwrap_or(0)),
        Some(_) => return Err(ApiError::new(400, "Request decode failed: LockDelay")),
    };
    let nanos = if nanos < 1000 {
        nanos * 1_000_000_000
    } else {
        nanos
    };
    Ok(Duration::from_nanos(
        u64::try_from(nanos).unwrap_or(u64::MAX),
    ))
}

/// `PUT /v1/session/create` with an optional JSON body.
async fn session_create(
    State(shared): AppState,
    Query(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = admit(&shared, &params, &headers) {
        return refused;
    }
    let spec: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(spec) => spec,
            Err(e) => return text(400, format!("Request decode failed: {e}")),
        }
    };
    let string = |name: &str| {
        field(&spec, name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let lock_delay = match lock_delay(field(&spec, "LockDelay")) {
        Ok(delay) => delay,
        Err(refused) => return api_error(refused),
    };
    let request = NewSession {
        name: string("Name"),
        node: Some(string("Node")).filter(|node| !node.is_empty()),
        ttl: string("TTL"),
        behavior: string("Behavior"),
        lock_delay,
    };
    let created = shared.with(|store, now| store.create_session(request, now));
    match created {
        Ok(id) => {
            shared.session_created.notify_one();
            json_response(StatusCode::OK, None, &json!({ "ID": id }))
        }
        Err(error) => api_error(error),
    }
}

/// `PUT /v1/session/destroy/<id>`: `true`, whether or not the session existed.
async fn session_destroy(
    State(shared): AppState,
    Path(id): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = admit(&shared, &params, &headers) {
        return refused;
    }
    shared.with(|store, now| store.destroy_session(&id, now));
    json_response(StatusCode::OK, None, &json!(true))
}

/// `PUT /v1/session/renew/<id>`: the session, or 404 if it is gone.
async fn session_renew(
    State(shared): AppState,
    Path(id): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = admit(&shared, &params, &headers) {
        return refused;
    }
    match shared.with(|store, now| store.renew_session(&id, now)) {
        Some(session) => json_response(StatusCode::OK, None, &json!([session_json(&session)])),
        None => text(404, format!("Session id '{id}' not found")),
    }
}

/// `GET /v1/session/info/<id>`: a list of zero or one session.
async fn session_info(
    State(shared): AppState,
    Path(id): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = admit(&shared, &params, &headers) {
        return refused;
    }
    let (index, body) = shared.with(|store, _| {
        let (index, session) = store.session(&id);
        (
            index,
            json!(session.map(session_json).into_iter().collect::<Vec<_>>()),
        )
    });
    json_response(StatusCode::OK, Some(index), &body)
}

/// `GET /v1/session/list`.
async fn session_list(
    State(shared): AppState,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = admit(&shared, &params, &headers) {
        return refused;
    }
    let (index, body) = shared.with(|store, _| {
        let (index, sessions) = store.sessions();
        (
            index,
            json!(sessions.into_iter().map(session_json).collect::<Vec<_>>()),
        )
    });
    json_response(StatusCode::OK, Some(index), &body)
}

/// `GET /v1/status/leader`: the one "server" leads.
async fn status_leader() -> Response {
    json_response(StatusCode::OK, None, &json!("127.0.0.1:8300"))
}

async fn not_implemented(method: Method, uri: Uri) -> Response {
    text(
        404,
        format!(
            "{method} {} is not implemented by cim's Consul stand-in (it is not Consul: it serves \
             /v1/kv, /v1/txn, /v1/session and /v1/status/leader only)",
            uri.path()
        ),
    )
}
