//! [`ConsulClient`]: a small typed async client for the part of Consul's HTTP API cim uses: the
//! KV store (with blocking queries, check-and-set and session locks), transactions, and
//! sessions.
//!
//! Why our own: the `consul` crate is blocking (it wraps `reqwest::blocking`, pulls a second
//! hyper and openssl) and panics when called on a tokio worker; `rs-consul` is async and covers
//! KV, blocking queries and check-and-set, but has no public way to create, renew or destroy a
//! session, and sessions are what both stores are built on. cim needs about a dozen endpoints,
//! so this module is them, on the workspace's `reqwest`, and nothing more.
//!
//! Every failure becomes a [`cim_core::Error`] here, at the edge: a refused or failed
//! connection is `Unavailable`, no answer within `request_timeout` is `Timeout`, a 403 is
//! `Unauthenticated`, a 5xx (no leader, rate limit, RPC failure) is `Unavailable`, a 400 or 413
//! is `InvalidInput`. Outcomes a caller branches on are values, not errors: a missing key is
//! `None`, a failed check-and-set is `false`, a session that is gone is `false` from
//! [`ConsulClient::session_renew`], a rolled-back transaction is [`TxnOutcome::RolledBack`] with
//! Consul's reasons.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cim_core::{Error, Result, SecretString};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};

use crate::ConsulConfig;

/// The most operations Consul accepts in one transaction.
pub const MAX_TXN_OPS: usize = 64;

/// One KV entry as Consul returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The full key.
    pub key: String,
    /// The value (empty for write results of a transaction, which Consul returns without).
    pub value: Vec<u8>,
    /// The opaque flags stored with the value.
    pub flags: u64,
    /// The session holding the key's lock, if any.
    pub session: Option<String>,
    /// The index of the write that created the key.
    pub create_index: u64,
    /// The index of the last write to the key: the check-and-set token.
    pub modify_index: u64,
    /// How many times the key's lock was acquired.
    pub lock_index: u64,
}

/// A read's result with the `X-Consul-Index` it was made at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed<T> {
    /// What was read.
    pub value: T,
    /// The index to pass to the next blocking query.
    pub index: u64,
}

/// The `?index=&wait=` of a blocking query: answer once the index exceeds `index`, or after
/// `wait` with the same index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockingQuery {
    /// The index of the previous answer.
    pub index: u64,
    /// How long the agent may hold the request (Consul adds up to 1/16 of jitter).
    pub wait: Duration,
}

/// How [`ConsulClient::kv_put`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode<'a> {
    /// Unconditionally.
    Set,
    /// Only if the key's `ModifyIndex` is this (0: only if the key does not exist).
    Cas(u64),
    /// Only if the key's lock is free or held by this session, which then holds it.
    Acquire(&'a str),
    /// Only if this session holds the key's lock, which is then released.
    Release(&'a str),
}

/// One KV operation of a transaction ([`ConsulClient::txn`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Writes `value` at `key`.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
    },
    /// Writes `value` at `key` if its `ModifyIndex` is `index` (0: if absent).
    Cas {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The expected `ModifyIndex`.
        index: u64,
    },
    /// Acquires `key` for `session` and writes `value`; fails if another session holds it or
    /// `session` does not exist.
    Lock {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The acquiring session.
        session: String,
    },
    /// Reads `key`; fails if it does not exist.
    Get {
        /// The key.
        key: String,
    },
    /// Fails unless `key` exists with `ModifyIndex` `index`.
    CheckIndex {
        /// The key.
        key: String,
        /// The expected `ModifyIndex`.
        index: u64,
    },
    /// Fails unless `session` holds `key`.
    CheckSession {
        /// The key.
        key: String,
        /// The expected holder.
        session: String,
    },
    /// Fails if `key` exists.
    CheckNotExists {
        /// The key.
        key: String,
    },
    /// Deletes `key` (nothing if absent).
    Delete {
        /// The key.
        key: String,
    },
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every operation applied; the entries the operations returned, in order (writes return
    /// their entry without its value, reads with it, deletes and `check-not-exists` nothing).
    Committed(Vec<KvEntry>),
    /// Nothing applied; why, per failing operation.
    RolledBack(Vec<TxnError>),
}

/// Why one operation of a rolled-back transaction failed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TxnError {
    /// The position of the operation in the transaction.
    #[serde(rename = "OpIndex", default)]
    pub op_index: usize,
    /// Consul's reason.
    #[serde(rename = "What", default)]
    pub what: String,
}

/// What happens to the keys a session holds when it is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionBehavior {
    /// The locks are released; the keys stay.
    Release,
    /// The keys are deleted.
    Delete,
}

/// A session to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    /// A name for operators (`consul` shows it).
    pub name: String,
    /// The session lives at least this long after its creation or last renewal (Consul
    /// invalidates it after twice this). Between the agents' `session_ttl_min` and 24 h.
    pub ttl: Duration,
    /// What invalidation does to the keys the session holds.
    pub behavior: SessionBehavior,
    /// How long a key released by invalidation stays unlockable (Consul's default is 15 s).
    pub lock_delay: Duration,
}

/// A session as Consul describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SessionInfo {
    /// Its id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its name.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// The node it belongs to.
    #[serde(rename = "Node", default)]
    pub node: String,
    /// Its TTL, as written at creation (`"10s"`).
    #[serde(rename = "TTL", default)]
    pub ttl: String,
    /// `release` or `delete`.
    #[serde(rename = "Behavior", default)]
    pub behavior: String,
    /// The index of its creation.
    #[serde(rename = "CreateIndex", default)]
    pub create_index: u64,
}

/// A Consul agent's HTTP API, cheap to clone (one connection pool).
#[derive(Clone)]
pub struct ConsulClient {
    http: reqwest::Client,
    base: Url,
    token: Option<SecretString>,
    datacenter: Option<String>,
    request_timeout: Duration,
}

impl fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulClient")
            .field("address", &self.base.as_str())
            .field("datacenter", &self.datacenter)
            .field("token", &self.token)
            .finish()
    }
}

/// An answer: status, `X-Consul-Index` (0 when absent) and body.
struct Reply {
    status: StatusCode,
    index: u64,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        match text.char_indices().nth(300) {
            Some((end, _)) => format!("{}...", &text[..end]),
            None => text.to_string(),
        }
    }
}

impl ConsulClient {
    /// A client for the agent `config` names. Fails with `Config` for a bad address or key;
    /// connects lazily.
    pub fn new(config: &ConsulConfig) -> Result<ConsulClient> {
        config.validate()?;
        let base = parse_address(&config.address)?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| Error::internal("could not set up the HTTP client").with_source(e))?;
        Ok(ConsulClient {
            http,
            base,
            token: config.token.clone(),
            datacenter: config.datacenter.clone(),
            request_timeout: config.request_timeout,
        })
    }

    /// The agent's address.
    pub fn address(&self) -> &str {
        self.base.as_str()
    }

    /// `GET /v1/kv/<key>`: the entry, or `None` if the key does not exist.
    pub async fn kv_get(&self, key: &str) -> Result<Option<KvEntry>> {
        let url = self.url(&["v1", "kv"], Some(key));
        let reply = self
            .call(Method::GET, url, None, None, "read a key")
            .await?;
        match reply.status {
            StatusCode::OK => Ok(parse_entries(&reply, "read a key")?.into_iter().next()),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(status_error(&reply, "read a key")),
        }
    }

    /// `GET /v1/kv/<prefix>?recurse`: the entries under `prefix`, sorted by key; blocking if
    /// `block` is given.
    pub async fn kv_list(
        &self,
        prefix: &str,
        block: Option<BlockingQuery>,
    ) -> Result<Indexed<Vec<KvEntry>>> {
        let mut url = self.url(&["v1", "kv"], Some(prefix));
        url.query_pairs_mut().append_key_only("recurse");
        let reply = self
            .call(Method::GET, url, None, block, "list keys and values")
            .await?;
        let value = match reply.status {
            StatusCode::OK => parse_entries(&reply, "list keys and values")?,
            StatusCode::NOT_FOUND => Vec::new(),
            _ => return Err(status_error(&reply, "list keys and values")),
        };
        Ok(Indexed {
            value,
            index: reply.index,
        })
    }

    /// `GET /v1/kv/<prefix>?keys`: the keys under `prefix`, sorted; blocking if `block` is
    /// given.
    pub async fn kv_keys(
        &self,
        prefix: &str,
        block: Option<BlockingQuery>,
    ) -> Result<Indexed<Vec<String>>> {
        let mut url = self.url(&["v1", "kv"], Some(prefix));
        url.query_pairs_mut().append_key_only("keys");
        let reply = self
            .call(Method::GET, url, None, block, "list keys")
            .await?;
        let value = match reply.status {
            StatusCode::OK => parse_json(&reply, "list keys")?,
            StatusCode::NOT_FOUND => Vec::new(),
            _ => return Err(status_error(&reply, "list keys")),
        };
        Ok(Indexed {
            value,
            index: reply.index,
        })
    }

    /// `PUT /v1/kv/<key>`: whether the value was written (always, for [`PutMode::Set`]).
    pub async fn kv_put(&self, key: &str, value: Vec<u8>, mode: PutMode<'_>) -> Result<bool> {
        let mut url = self.url(&["v1", "kv"], Some(key));
        match mode {
            PutMode::Set => {}
            PutMode::Cas(index) => {
                url.query_pairs_mut().append_pair("cas", &index.to_string());
            }
            PutMode::Acquire(session) => {
                url.query_pairs_mut().append_pair("acquire", session);
            }
            PutMode::Release(session) => {
                url.query_pairs_mut().append_pair("release", session);
            }
        }
        let reply = self
            .call(Method::PUT, url, Some(value), None, "write a key")
            .await?;
        match reply.status {
            StatusCode::OK => parse_json(&reply, "write a key"),
            _ => Err(status_error(&reply, "write a key")),
        }
    }

    /// `DELETE /v1/kv/<key>`, only if its `ModifyIndex` is `cas` when given: whether it was
    /// deleted. (Consul counts a key that is already gone as deleted.)
    pub async fn kv_delete(&self, key: &str, cas: Option<u64>) -> Result<bool> {
        let mut url = self.url(&["v1", "kv"], Some(key));
        if let Some(index) = cas {
            url.query_pairs_mut().append_pair("cas", &index.to_string());
        }
        let reply = self
            .call(Method::DELETE, url, None, None, "delete a key")
            .await?;
        match reply.status {
            StatusCode::OK => parse_json(&reply, "delete a key"),
            _ => Err(status_error(&reply, "delete a key")),
        }
    }

    /// `DELETE /v1/kv/<prefix>?recurse`: deletes every key under `prefix`.
    pub async fn kv_delete_tree(&self, prefix: &str) -> Result<()> {
        let mut url = self.url(&["v1", "kv"], Some(prefix));
        url.query_pairs_mut().append_key_only("recurse");
        let reply = self
            .call(Method::DELETE, url, None, None, "delete keys")
            .await?;
        match reply.status {
            StatusCode::OK => Ok(()),
            _ => Err(status_error(&reply, "delete keys")),
        }
    }

    /// `PUT /v1/txn`: applies `ops` atomically (at most [`MAX_TXN_OPS`]).
    pub async fn txn(&self, ops: &[TxnOp]) -> Result<TxnOutcome> {
        if ops.len() > MAX_TXN_OPS {
            return Err(Error::invalid_input(format!(
                "a consul transaction holds at most {MAX_TXN_OPS} operations, not {}",
                ops.len()
            )));
        }
        let wire: Vec<WireOp<'_>> = ops.iter().map(WireOp::from).collect();
        let body = serde_json::to_vec(&wire).map_err(|e| {
            Error::internal("a consul transaction cannot be encoded").with_source(e)
        })?;
        let url = self.url(&["v1", "txn"], None);
        let reply = self
            .call(Method::PUT, url, Some(body), None, "apply a transaction")
            .await?;
        match reply.status {
            StatusCode::OK => {
                let answer: WireTxnReply = parse_json(&reply, "apply a transaction")?;
                let entries = answer
                    .results
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|result| result.kv)
                    .map(RawEntry::decode)
                    .collect::<Result<Vec<_>>>()?;
                Ok(TxnOutcome::Committed(entries))
            }
            StatusCode::CONFLICT => {
                let answer: WireTxnReply = parse_json(&reply, "apply a transaction")?;
                Ok(TxnOutcome::RolledBack(answer.errors.unwrap_or_default()))
            }
            _ => Err(status_error(&reply, "apply a transaction")),
        }
    }

    /// `PUT /v1/session/create`: the new session's id. A TTL the agents refuse (below their
    /// `session_ttl_min`) is a `Config` error.
    pub async fn session_create(&self, spec: &SessionSpec) -> Result<String> {
        #[derive(Serialize)]
        struct WireSpec<'a> {
            #[serde(rename = "Name")]
            name: &'a str,
            #[serde(rename = "TTL")]
            ttl: String,
            #[serde(rename = "Behavior")]
            behavior: &'static str,
            #[serde(rename = "LockDelay")]
            lock_delay: String,
        }
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let body = serde_json::to_vec(&WireSpec {
            name: &spec.name,
            ttl: go_duration(spec.ttl),
            behavior: match spec.behavior {
                SessionBehavior::Release => "release",
                SessionBehavior::Delete => "delete",
            },
            lock_delay: go_duration(spec.lock_delay),
        })
        .map_err(|e| Error::internal("a session request cannot be encoded").with_source(e))?;
        let url = self.url(&["v1", "session", "create"], None);
        let reply = self
            .call(Method::PUT, url, Some(body), None, "create a session")
            .await?;
        match reply.status {
            StatusCode::OK => Ok(parse_json::<Created>(&reply, "create a session")?.id),
            _ if reply.text().contains("Session TTL") => Err(Error::config(format!(
                "consul refuses sessions with a TTL of {:?} ({}); the agents' session_ttl_min \
                 (10s unless configured) is the shortest they accept: raise the section's ttl or \
                 lower session_ttl_min on the Consul servers",
                spec.ttl,
                reply.text()
            ))
            .with_context("backend", "consul")
            .with_context("operation", "create a session")),
            _ => Err(status_error(&reply, "create a session")),
        }
    }

    /// `PUT /v1/session/renew/<id>`: true if renewed, false if the session is gone (expired or
    /// destroyed, its keys deleted or released).
    pub async fn session_renew(&self, id: &str) -> Result<bool> {
        let url = self.url(&["v1", "session", "renew", id], None);
        let reply = self
            .call(Method::PUT, url, None, None, "renew a session")
            .await?;
        match reply.status {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_error(&reply, "renew a session")),
        }
    }

    /// `PUT /v1/session/destroy/<id>`: invalidates the session now (its keys are deleted or
    /// released by its behaviour). Destroying a session that is gone succeeds.
    pub async fn session_destroy(&self, id: &str) -> Result<()> {
        let url = self.url(&["v1", "session", "destroy", id], None);
        let reply = self
            .call(Method::PUT, url, None, None, "destroy a session")
            .await?;
        match reply.status {
            StatusCode::OK => Ok(()),
            _ => Err(status_error(&reply, "destroy a session")),
        }
    }

    /// `GET /v1/session/info/<id>`: the session, or `None` if it is gone.
    pub async fn session_info(&self, id: &str) -> Result<Option<SessionInfo>> {
        let url = self.url(&["v1", "session", "info", id], None);
        let reply = self
            .call(Method::GET, url, None, None, "read a session")
            .await?;
        match reply.status {
            StatusCode::OK => {
                let sessions: Option<Vec<SessionInfo>> = parse_json(&reply, "read a session")?;
                Ok(sessions.unwrap_or_default().into_iter().next())
            }
            _ => Err(status_error(&reply, "read a session")),
        }
    }

    /// `GET /v1/session/list`: every session of the datacenter.
    pub async fn session_list(&self) -> Result<Vec<SessionInfo>> {
        let url = self.url(&["v1", "session", "list"], None);
        let reply = self
            .call(Method::GET, url, None, None, "list sessions")
            .await?;
        match reply.status {
            StatusCode::OK => {
                let sessions: Option<Vec<SessionInfo>> = parse_json(&reply, "list sessions")?;
                Ok(sessions.unwrap_or_default())
            }
            _ => Err(status_error(&reply, "list sessions")),
        }
    }

    /// The URL of `path` (segments) and `key` (split at `/`), with `?dc=` when configured.
    fn url(&self, path: &[&str], key: Option<&str>) -> Url {
        let mut url = self.base.clone();
        // `parse_address` admits only http URLs, which always have path segments.
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(path);
            if let Some(key) = key {
                segments.extend(key.split('/'));
            }
        }
        if let Some(dc) = &self.datacenter {
            url.query_pairs_mut().append_pair("dc", dc);
        }
        url
    }

    /// Sends one request and reads the whole answer, within `request_timeout` (plus the wait
    /// of a blocking query).
    async fn call(
        &self,
        method: Method,
        mut url: Url,
        body: Option<Vec<u8>>,
        block: Option<BlockingQuery>,
        operation: &'static str,
    ) -> Result<Reply> {
        let mut timeout = self.request_timeout;
        if let Some(block) = block {
            url.query_pairs_mut()
                .append_pair("index", &block.index.to_string())
                .append_pair("wait", &go_duration(block.wait));
            timeout += block.wait + block.wait / 16;
        }
        let mut request = self.http.request(method, url).timeout(timeout);
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token.expose());
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(e, operation))?;
        let status = response.status();
        let index = response
            .headers()
            .get("x-consul-index")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e, operation))?;
        Ok(Reply {
            status,
            index,
            body: body.to_vec(),
        })
    }

    fn transport_error(&self, error: reqwest::Error, operation: &'static str) -> Error {
        let base = if error.is_timeout() {
            Error::timeout(format!(
                "consul at {} did not answer in time (see request_timeout and connect_timeout)",
                self.base
            ))
        } else if error.is_builder() {
            Error::config(
                "the consul request cannot be built: does token hold characters an HTTP header \
                 cannot carry?",
            )
        } else if error.is_connect() {
            Error::unavailable(format!(
                "cannot connect to consul at {}; check that the agent runs and that address is \
                 right",
                self.base
            ))
        } else {
            Error::unavailable(format!(
                "the connection to consul at {} failed; retrying may help",
                self.base
            ))
        };
        base.with_context("backend", "consul")
            .with_context("operation", operation)
            .with_source(error)
    }
}

/// `address` as a base URL: `http://` is assumed when no scheme is given; `https` is refused.
fn parse_address(address: &str) -> Result<Url> {
    let with_scheme = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| {
        Error::config(format!(
            "consul address {address:?} is not a URL: write http://host:port (for example \
             http://127.0.0.1:8500)"
        ))
        .with_source(e)
    })?;
    match url.scheme() {
        "http" if url.host().is_some() => Ok(url),
        "https" => Err(Error::config(format!(
            "consul address {address:?}: https is not compiled into cim's consul client; talk \
             to the local agent over http on loopback, or terminate TLS in front of it"
        ))),
        _ => Err(Error::config(format!(
            "consul address {address:?} must be http://host:port"
        ))),
    }
}

/// A duration as Go's `time.ParseDuration` reads it, in whole milliseconds (`"1500ms"`).
fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The error for an answer with an unexpected status.
fn status_error(reply: &Reply, operation: &'static str) -> Error {
    let text = reply.text();
    let status = reply.status;
    let base = match status.as_u16() {
        400 => Error::invalid_input(format!("consul refused the request ({status}): {text}")),
        401 | 403 => Error::unauthenticated(format!(
            "consul refused the ACL token ({status}: {text}); check token, and that its policy \
             grants key and session write on cim's prefix"
        )),
        404 => Error::not_found(format!("consul found nothing ({status}): {text}")),
        409 => Error::conflict(format!(
            "consul refused a conflicting write ({status}): {text}"
        )),
        413 => Error::invalid_input(format!("consul refused a value as too large: {text}")),
        429 | 500..=599 => Error::unavailable(format!(
            "consul could not serve the request ({status}): {text}; retrying later may help"
        )),
        _ => Error::internal(format!("consul answered {status}: {text}")),
    };
    base.with_context("backend", "consul")
        .with_context("operation", operation)
}

fn parse_json<T: serde::de::DeserializeOwned>(reply: &Reply, operation: &'static str) -> Result<T> {
    serde_json::from_slice(&reply.body).map_err(|e| {
        Error::internal(format!(
            "consul answered with JSON cim cannot read: {}",
            reply.text()
        ))
        .with_context("backend", "consul")
        .with_context("operation", operation)
        .with_source(e)
    })
}

fn parse_entries(reply: &Reply, operation: &'static str) -> Result<Vec<KvEntry>> {
    let raw: Option<Vec<RawEntry>> = parse_json(reply, operation)?;
    raw.unwrap_or_default()
        .into_iter()
        .map(RawEntry::decode)
        .collect()
}

/// A KV entry as it comes over the wire.
#[derive(Deserialize)]
struct RawEntry {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value", default)]
    value: Option<String>,
    #[serde(rename = "Flags", default)]
    flags: u64,
    #[serde(rename = "Session", default)]
    session: Option<String>,
    #[serde(rename = "CreateIndex", default)]
    create_index: u64,
    #[serde(rename = "ModifyIndex", default)]
    modify_index: u64,
    #[serde(rename = "LockIndex", default)]
    lock_index: u64,
}

impl RawEntry {
    fn decode(self) -> Result<KvEntry> {
        let value = match &self.value {
            None => Vec::new(),
            Some(encoded) => STANDARD.decode(encoded).map_err(|e| {
                Error::internal(format!(
                    "consul returned key {} with a value that is not base64",
                    self.key
                ))
                .with_context("backend", "consul")
                .with_source(e)
            })?,
        };
        Ok(KvEntry {
            key: self.key,
            value,
            flags: self.flags,
            session: self.session.filter(|session| !session.is_empty()),
            create_index: self.create_index,
            modify_index: self.modify_index,
            lock_index: self.lock_index,
        })
    }
}

/// A transaction operation as it goes over the wire: `{"KV": {"Verb": ..., ...}}`.
#[derive(Serialize)]
struct WireOp<'a> {
    #[serde(rename = "KV")]
    kv: WireKv<'a>,
}

#[derive(Serialize)]
struct WireKv<'a> {
    #[serde(rename = "Verb")]
    verb: &'static str,
    #[serde(rename = "Key")]
    key: &'a str,
    #[serde(rename = "Value", skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(rename = "Index", skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
    #[serde(rename = "Session", skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
}

impl<'a> From<&'a TxnOp> for WireOp<'a> {
    fn from(op: &'a TxnOp) -> Self {
        let kv = |verb, key| WireKv {
            verb,
            key,
            value: None,
            index: None,
            session: None,
        };
        let kv = match op {
            TxnOp::Set { key, value } => WireKv {
                value: Some(STANDARD.encode(value)),
                ..kv("set", key)
            },
            TxnOp::Cas { key, value, index } => WireKv {
                value: Some(STANDARD.encode(value)),
                index: Some(*index),
                ..kv("cas", key)
            },
            TxnOp::Lock {
                key,
                value,
                session,
            } => WireKv {
                value: Some(STANDARD.encode(value)),
                session: Some(session),
                ..kv("lock", key)
            },
            TxnOp::Get { key } => kv("get", key),
            TxnOp::CheckIndex { key, index } => WireKv {
                index: Some(*index),
                ..kv("check-index", key)
            },
            TxnOp::CheckSession { key, session } => WireKv {
                session: Some(session),
                ..kv("check-session", key)
            },
            TxnOp::CheckNotExists { key } => kv("check-not-exists", key),
            TxnOp::Delete { key } => kv("delete", key),
        };
        WireOp { kv }
    }
}

/// A transaction's answer: results on success, errors on a rollback.
#[derive(Deserialize)]
struct WireTxnReply {
    #[serde(rename = "Results", default)]
    results: Option<Vec<WireResult>>,
    #[serde(rename = "Errors", default)]
    errors: Option<Vec<TxnError>>,
}

#[derive(Deserialize)]
struct WireResult {
    #[serde(rename = "KV", default)]
    kv: Option<RawEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_to_http_and_https_is_refused() {
        assert_eq!(
            parse_address("127.0.0.1:8500").expect("bare").as_str(),
            "http://127.0.0.1:8500/"
        );
        for bad in ["https://consul:8501", "ftp://x", "http://", "::::"] {
            let error = parse_address(bad).expect_err(bad);
            assert_eq!(error.kind(), cim_core::ErrorKind::Config, "{bad}");
        }
    }

    #[test]
    fn keys_become_path_segments_and_the_datacenter_a_parameter() {
        let client = ConsulClient::new(&ConsulConfig {
            datacenter: Some("eu-1".into()),
            ..ConsulConfig::new("http://127.0.0.1:8500")
        })
        .expect("valid config");
        assert_eq!(
            client.url(&["v1", "kv"], Some("cim/ns/servers/")).as_str(),
            "http://127.0.0.1:8500/v1/kv/cim/ns/servers/?dc=eu-1"
        );
        assert_eq!(
            client.url(&["v1", "kv"], Some("cim/a b")).as_str(),
            "http://127.0.0.1:8500/v1/kv/cim/a%20b?dc=eu-1"
        );
    }

    #[test]
    fn transaction_operations_are_written_as_consul_reads_them() {
        let op = TxnOp::Lock {
            key: "k".into(),
            value: b"v".to_vec(),
            session: "s".into(),
        };
        let json = serde_json::to_string(&WireOp::from(&op)).expect("encodes");
        assert_eq!(
            json,
            r#"{"KV":{"Verb":"lock","Key":"k","Value":"dg==","Session":"s"}}"#
        );
    }
}
