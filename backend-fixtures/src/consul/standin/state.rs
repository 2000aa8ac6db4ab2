//! The stand-in's data and its rules: Consul's KV store, sessions and transactions as plain
//! synchronous code behind one mutex, so the HTTP layer stays thin and every rule lives in one
//! place. The rules follow Consul's state store (`agent/consul/state/kvs.go`, `txn.go`,
//! `session.go`) as documented and as its source shows them, including the odd corners an
//! adapter can trip on:
//!
//! - One index counter stands in for the Raft index: every write gets the next value, and all
//!   writes of one transaction share one.
//! - A list or keys query on a prefix reports the highest `ModifyIndex` under the prefix or the
//!   highest deletion (tombstone) index there, whichever is larger, so deleting a key moves the
//!   index of every prefix that covered it; a prefix that never held anything reports the KV
//!   table's index.
//! - `lock` needs a live session and fails if another session holds the key; the holder may
//!   lock again (updating the value) without changing `LockIndex`.
//! - `delete-cas` of a key that does not exist succeeds (Consul's own behaviour); `check-index`
//!   of a missing key fails.
//! - A transaction runs every operation and collects every error; any error rolls all of it
//!   back.
//! - A session with a TTL is invalidated `2 × TTL` after its creation or last renewal (Consul's
//!   `SessionTTLMultiplier`: the TTL is a lower bound, not a deadline). Invalidation deletes
//!   (behaviour `delete`) or releases (`release`) the keys the session holds and starts the
//!   session's lock delay on them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::encoding::{format_go_duration, new_uuid, parse_go_duration};

/// The most operations one transaction may hold (`maxTxnOps` in Consul).
pub(crate) const MAX_TXN_OPS: usize = 64;
/// The largest value accepted, in bytes (Consul's default `kv_max_value_size`).
pub(crate) const MAX_VALUE_SIZE: usize = 512 * 1024;
/// The longest session TTL Consul accepts.
const SESSION_TTL_MAX: Duration = Duration::from_secs(24 * 3600);
/// Consul invalidates a TTL session this many TTLs after its last renewal.
pub(crate) const SESSION_TTL_MULTIPLIER: u32 = 2;
/// The one node of the stand-in's one-node "cluster"; sessions belong to it.
pub(crate) const NODE_NAME: &str = "cim-consul-stand-in";

/// A refusal with the HTTP status and body Consul answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

/// One KV entry (Consul's `DirEntry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
    pub(crate) lock_index: u64,
    pub(crate) flags: u64,
    pub(crate) value: Vec<u8>,
    pub(crate) session: Option<String>,
}

/// What happens to a session's keys when it is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behavior {
    Release,
    Delete,
}

impl Behavior {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Behavior::Release => "release",
            Behavior::Delete => "delete",
        }
    }
}

/// A live session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) lock_delay: Duration,
    pub(crate) behavior: Behavior,
    /// The TTL as the client wrote it (Consul stores and shows the string).
    pub(crate) ttl: String,
    pub(crate) create_index: u64,
    /// When the session is invalidated unless renewed first.
    expires: Option<Instant>,
    ttl_duration: Duration,
}

/// A session to create, as the request body gave it.
#[derive(Debug, Clone, Default)]
pub(crate) struct NewSession {
    pub(crate) name: String,
    pub(crate) node: Option<String>,
    pub(crate) ttl: String,
    pub(crate) behavior: String,
    pub(crate) lock_delay: Duration,
}

/// How a KV `PUT` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PutMode {
    Set,
    Cas(u64),
    Acquire(String),
    Release(String),
}

/// One KV operation of a transaction (the `Verb`s of `PUT /v1/txn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TxnOp {
    Set {
        key: String,
        value: Vec<u8>,
        flags: u64,
    },
    Cas {
        key: String,
        value: Vec<u8>,
        flags: u64,
        index: u64,
    },
    Lock {
        key: String,
        value: Vec<u8>,
        flags: u64,
        session: String,
    },
    Unlock {
        key: String,
        value: Vec<u8>,
        flags: u64,
        session: String,
    },
    Get {
        key: String,
    },
    GetTree {
        prefix: String,
    },
    CheckIndex {
        key: String,
        index: u64,
    },
    CheckSession {
        key: String,
        session: String,
    },
    CheckNotExists {
        key: String,
    },
    Delete {
        key: String,
    },
    DeleteCas {
        key: String,
        index: u64,
    },
    DeleteTree {
        prefix: String,
    },
}

impl TxnOp {
    /// Whether the operation writes (a transaction of reads only needs no index).
    fn writes(&self) -> bool {
        !matches!(
            self,
            TxnOp::Get { .. }
                | TxnOp::GetTree { .. }
                | TxnOp::CheckIndex { .. }
                | TxnOp::CheckSession { .. }
                | TxnOp::CheckNotExists { .. }
        )
    }
}

/// One result of a committed transaction: an entry, and whether its value is shown (only reads
/// return values; writes return the entry with `Value: null`).
#[derive(Debug, Clone)]
pub(crate) struct TxnResult {
    pub(crate) entry: Entry,
    pub(crate) with_value: bool,
}

/// The error of one transaction operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnError {
    pub(crate) op_index: usize,
    pub(crate) what: String,
}

/// Everything a Consul "cluster" of one node keeps, and the last index it handed out.
#[derive(Debug)]
pub(crate) struct Store {
    index: u64,
    kv_index: u64,
    session_index: u64,
    kv: BTreeMap<String, Entry>,
    tombstones: BTreeMap<String, u64>,
    sessions: HashMap<String, Session>,
    deadlines: BTreeSet<(Instant, String)>,
    lock_delays: HashMap<String, Instant>,
    session_ttl_min: Duration,
}

impl Store {
    /// An empty store that refuses session TTLs below `session_ttl_min` (Consul's agent option of
    /// that name, 10 s by default).
    pub(crate) fn new(session_ttl_min: Duration) -> Store {
        Store {
            index: 0,
            kv_index: 0,
            session_index: 0,
            kv: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            sessions: HashMap::new(),
            deadlines: BTreeSet::new(),
            lock_delays: HashMap::new(),
            session_ttl_min,
        }
    }

    /// The index of the last change to the KV table (entries or tombstones).
    pub(crate) fn kv_index(&self) -> u64 {
        self.kv_index
    }

    /// The entry at `key`, with the KV table's index.
    pub(crate) fn get(&self, key: &str) -> (u64, Option<&Entry>) {
        (self.kv_index, self.kv.get(key))
    }

    /// The entries under `prefix`, sorted by key, with the prefix's index.
    pub(crate) fn list(&self, prefix: &str) -> (u64, Vec<&Entry>) {
        let entries: Vec<&Entry> = self.under(prefix).map(|(_, entry)| entry).collect();
        (self.prefix_index(prefix), entries)
    }

    /// The keys under `prefix`, sorted; with a `separator`, keys that have it after the prefix
    /// are cut after its first occurrence and listed once (Consul's "folders").
    pub(crate) fn keys(&self, prefix: &str, separator: Option<&str>) -> (u64, Vec<String>) {
        let mut keys: Vec<String> = Vec::new();
        for (key, _) in self.under(prefix) {
            let folded = match separator.filter(|s| !s.is_empty()) {
                Some(sep) => match key[prefix.len()..].find(sep) {
                    Some(at) => &key[..prefix.len() + at + sep.len()],
                    None => key.as_str(),
                },
                None => key.as_str(),
            };
            if keys.last().map(String::as_str) != Some(folded) {
                keys.push(folded.to_string());
            }
        }
        (self.prefix_index(prefix), keys)
    }

    fn under<'a>(
        &'a self,
        prefix: &str,
    ) -> impl Iterator<Item = (&'a String, &'a Entry)> + use<'a> {
        let prefix = prefix.to_string();
        self.kv
            .range(prefix.clone()..)
            .take_while(move |(key, _)| key.starts_with(&prefix))
    }

    /// Consul's index for a list or keys query on `prefix` (see the module docs).
    fn prefix_index(&self, prefix: &str) -> u64 {
        if prefix.is_empty() {
            return self.kv_index;
        }
        let entries = self
            .under(prefix)
            .map(|(_, entry)| entry.modify_index)
            .max()
            .unwrap_or(0);
        let graves = self
            .tombstones
            .range(prefix.to_string()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(_, index)| *index)
            .max()
            .unwrap_or(0);
        match entries.max(graves) {
            0 => self.kv_index,
            index => index,
        }
    }

    /// `PUT /v1/kv/<key>`: true if written (a plain set always is).
    pub(crate) fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        mode: PutMode,
        now: Instant,
    ) -> Result<bool, ApiError> {
        let mut change = self.change(now);
        let written = match mode {
            PutMode::Set => {
                change.set(key, value, flags);
                true
            }
            PutMode::Cas(index) => change.cas(key, value, flags, index).is_some(),
            PutMode::Acquire(session) => change
                .lock(key, value, flags, &session)
                .map_err(|message| ApiError::new(500, message))?
                .is_some(),
            PutMode::Release(session) => change
                .unlock(key, value, flags, &session)
                .map_err(|message| ApiError::new(500, message))?
                .is_some(),
        };
        change.commit();
        Ok(written)
    }

    /// `DELETE /v1/kv/<key>`: with `cas`, true only if deleted (or already absent).
    pub(crate) fn delete(&mut self, key: &str, cas: Option<u64>, now: Instant) -> bool {
        let mut change = self.change(now);
        let deleted = match cas {
            Some(index) => change.delete_cas(key, index),
            None => {
                change.delete(key);
                true
            }
        };
        change.commit();
        deleted
    }

    /// `DELETE /v1/kv/<prefix>?recurse`.
    pub(crate) fn delete_tree(&mut self, prefix: &str, now: Instant) {
        let mut change = self.change(now);
        change.delete_tree(prefix);
        change.commit();
    }

    /// `PUT /v1/txn`: all operations, or none of them and every error.
    pub(crate) fn txn(
        &mut self,
        ops: &[TxnOp],
        now: Instant,
    ) -> Result<Vec<TxnResult>, Vec<TxnError>> {
        let mut change = self.change(now);
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (op_index, op) in ops.iter().enumerate() {
            match change.apply(op) {
                Ok(found) => results.extend(found.into_iter().map(|entry| TxnResult {
                    entry,
                    with_value: !op.writes(),
                })),
                Err(what) => errors.push(TxnError { op_index, what }),
            }
        }
        if errors.is_empty() {
            change.commit();
            Ok(results)
        } else {
            // Dropping the change rolls it back.
            Err(errors)
        }
    }

    /// `PUT /v1/session/create`: the new session's id.
    pub(crate) fn create_session(
        &mut self,
        request: NewSession,
        now: Instant,
    ) -> Result<String, ApiError> {
        let behavior = match request.behavior.as_str() {
            "" | "release" => Behavior::Release,
            "delete" => Behavior::Delete,
            other => {
                return Err(ApiError::new(
                    500,
                    format!("Invalid Behavior setting '{other}'"),
                ));
            }
        };
        let mut ttl = Duration::ZERO;
        if !request.ttl.is_empty() {
            ttl = parse_go_duration(&request.ttl).ok_or_else(|| {
                ApiError::new(
                    500,
                    format!(
                        "Session TTL '{}' invalid: time: invalid duration {:?}",
                        request.ttl, request.ttl
                    ),
                )
            })?;
            if !ttl.is_zero() && (ttl < self.session_ttl_min || ttl > SESSION_TTL_MAX) {
                return Err(ApiError::new(
                    500,
                    format!(
                        "Invalid Session TTL '{}', must be between [{}={}]",
                        ttl.as_nanos(),
                        format_go_duration(self.session_ttl_min),
                        format_go_duration(SESSION_TTL_MAX)
                    ),
                ));
            }
        }
        if request
            .node
            .as_deref()
            .is_some_and(|node| node != NODE_NAME)
        {
            return Err(ApiError::new(500, "Missing node registration"));
        }
        self.index += 1;
        self.session_index = self.index;
        let id = new_uuid();
        let expires = (!ttl.is_zero()).then(|| now + ttl * SESSION_TTL_MULTIPLIER);
        if let Some(deadline) = expires {
            self.deadlines.insert((deadline, id.clone()));
        }
        self.sessions.insert(
            id.clone(),
            Session {
                id: id.clone(),
                name: request.name,
                lock_delay: request.lock_delay,
                behavior,
                ttl: request.ttl,
                create_index: self.index,
                expires,
                ttl_duration: ttl,
            },
        );
        Ok(id)
    }

    /// `PUT /v1/session/renew/<id>`: the renewed session, or `None` if there is none.
    pub(crate) fn renew_session(&mut self, id: &str, now: Instant) -> Option<Session> {
        let session = self.sessions.get_mut(id)?;
        if let Some(old) = session.expires {
            self.deadlines.remove(&(old, id.to_string()));
            let deadline = now + session.ttl_duration * SESSION_TTL_MULTIPLIER;
            session.expires = Some(deadline);
            self.deadlines.insert((deadline, id.to_string()));
        }
        Some(session.clone())
    }

    /// `PUT /v1/session/destroy/<id>`: invalidates the session if it exists.
    pub(crate) fn destroy_session(&mut self, id: &str, now: Instant) {
        self.invalidate(id, now);
    }

    /// The session `id`, with the sessions table's index.
    pub(crate) fn session(&self, id: &str) -> (u64, Option<&Session>) {
        (self.session_index, self.sessions.get(id))
    }

    /// Every session, by id, with the sessions table's index.
    pub(crate) fn sessions(&self) -> (u64, Vec<&Session>) {
        let mut all: Vec<&Session> = self.sessions.values().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        (self.session_index, all)
    }

    /// Invalidates every session whose TTL ran out by `now`; true if any was.
    pub(crate) fn expire(&mut self, now: Instant) -> bool {
        let mut expired = false;
        while let Some((deadline, id)) = self.deadlines.first().cloned() {
            if deadline > now {
                break;
            }
            self.invalidate(&id, now);
            expired = true;
        }
        expired
    }

    /// When the next session runs out, if any has a TTL.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// Removes session `id` and deletes or releases the keys it holds.
    fn invalidate(&mut self, id: &str, now: Instant) {
        let Some(session) = self.sessions.remove(id) else {
            return;
        };
        if let Some(deadline) = session.expires {
            self.deadlines.remove(&(deadline, id.to_string()));
        }
        let held: Vec<String> = self
            .kv
            .values()
            .filter(|entry| entry.session.as_deref() == Some(id))
            .map(|entry| entry.key.clone())
            .collect();
        let mut change = self.change(now);
        for key in &held {
            match session.behavior {
                Behavior::Delete => change.delete(key),
                Behavior::Release => change.release(key),
            }
        }
        let index = change.idx;
        change.commit();
        self.index = self.index.max(index);
        self.session_index = self.index;
        if !session.lock_delay.is_zero() {
            for key in held {
                self.lock_delays.insert(key, now + session.lock_delay);
            }
        }
    }

    fn change(&mut self, now: Instant) -> Change<'_> {
        let idx = self.index + 1;
        Change {
            store: self,
            idx,
            now,
            undo: Vec::new(),
            committed: false,
        }
    }
}

/// What a rollback restores.
#[derive(Debug)]
enum Undo {
    Entry(String, Option<Entry>),
    Tombstone(String, Option<u64>),
}

/// A write in progress at index `idx`: every change is journalled, committed as a whole, or
/// rolled back when dropped uncommitted.
struct Change<'a> {
    store: &'a mut Store,
    idx: u64,
    now: Instant,
    undo: Vec<Undo>,
    committed: bool,
}

impl Change<'_> {
    fn commit(mut self) {
        self.committed = true;
        if !self.undo.is_empty() {
            self.store.index = self.idx;
            self.store.kv_index = self.idx;
        }
    }

    fn write(&mut self, entry: Entry) {
        let old = self.store.kv.insert(entry.key.clone(), entry.clone());
        self.undo.push(Undo::Entry(entry.key, old));
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.store.kv.remove(key) {
            self.undo.push(Undo::Entry(key.to_string(), Some(old)));
            let grave = self.store.tombstones.insert(key.to_string(), self.idx);
            self.undo.push(Undo::Tombstone(key.to_string(), grave));
        }
    }

    /// Writes `value` at `key`, keeping the holder's session. The entry as stored.
    fn set(&mut self, key: &str, value: Vec<u8>, flags: u64) -> Entry {
        let existing = self.store.kv.get(key).cloned();
        let mut entry = Entry {
            key: key.to_string(),
            create_index: self.idx,
            modify_index: self.idx,
            lock_index: 0,
            flags,
            value,
            session: None,
        };
        if let Some(existing) = existing {
            entry.create_index = existing.create_index;
            entry.lock_index = existing.lock_index;
            entry.session = existing.session.clone();
            if existing.value == entry.value && existing.flags == entry.flags {
                // Consul skips writes that change nothing.
                return existing;
            }
        }
        self.write(entry.clone());
        entry
    }

    /// Sets `key` if its `ModifyIndex` is `index` (0: only if absent).
    fn cas(&mut self, key: &str, value: Vec<u8>, flags: u64, index: u64) -> Option<Entry> {
        let current = self.store.kv.get(key).map(|entry| entry.modify_index);
        let matches = match (index, current) {
            (0, None) => true,
            (0, Some(_)) | (_, None) => false,
            (index, Some(current)) => index == current,
        };
        matches.then(|| self.set(key, value, flags))
    }

    /// Acquires `key` for `session` and writes `value`; `Ok(None)` if another session holds it
    /// (or its lock delay runs), `Err` for a missing or unknown session.
    fn lock(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
    ) -> Result<Option<Entry>, String> {
        if session.is_empty() {
            return Err("missing session".to_string());
        }
        if !self.store.sessions.contains_key(session) {
            return Err(format!("invalid session {session:?}"));
        }
        if self
            .store
            .lock_delays
            .get(key)
            .is_some_and(|until| *until > self.now)
        {
            return Ok(None);
        }
        let (create_index, lock_index) = match self.store.kv.get(key) {
            Some(existing) => match existing.session.as_deref() {
                Some(holder) if holder == session => (existing.create_index, existing.lock_index),
                Some(_) => return Ok(None),
                None => (existing.create_index, existing.lock_index + 1),
            },
            None => (self.idx, 1),
        };
        let entry = Entry {
            key: key.to_string(),
            create_index,
            modify_index: self.idx,
            lock_index,
            flags,
            value,
            session: Some(session.to_string()),
        };
        self.write(entry.clone());
        Ok(Some(entry))
    }

    /// Releases `key` held by `session` and writes `value`; `Ok(None)` if `session` does not hold
    /// it.
    fn unlock(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
    ) -> Result<Option<Entry>, String> {
        if session.is_empty() {
            return Err("missing session".to_string());
        }
        let Some(existing) = self.store.kv.get(key).cloned() else {
            return Ok(None);
        };
        if existing.session.as_deref() != Some(session) {
            return Ok(None);
        }
        let entry = Entry {
            modify_index: self.idx,
            flags,
            value,
            session: None,
            ..existing
        };
        self.write(entry.clone());
        Ok(Some(entry))
    }

    /// Releases `key` as an invalidated session's behaviour `release` does.
    fn release(&mut self, key: &str) {
        if let Some(existing) = self.store.kv.get(key).cloned() {
            let entry = Entry {
                modify_index: self.idx,
                session: None,
                ..existing
            };
            self.write(entry);
        }
    }

    fn delete(&mut self, key: &str) {
        self.remove(key);
    }

    /// Deletes `key` if its `ModifyIndex` is `index`; a missing key counts as deleted.
    fn delete_cas(&mut self, key: &str, index: u64) -> bool {
        match self.store.kv.get(key) {
            None => true,
            Some(entry) if entry.modify_index != index => false,
            Some(_) => {
                self.remove(key);
                true
            }
        }
    }

    fn delete_tree(&mut self, prefix: &str) {
        let keys: Vec<String> = self
            .store
            .under(prefix)
            .map(|(key, _)| key.clone())
            .collect();
        for key in keys {
            self.remove(&key);
        }
    }

    /// One transaction operation: the entries it returns, or its error.
    fn apply(&mut self, op: &TxnOp) -> Result<Vec<Entry>, String> {
        let found = |entry: Option<&Entry>, key: &str| {
            entry
                .cloned()
                .ok_or_else(|| format!("key {key:?} doesn't exist"))
        };
        match op {
            TxnOp::Set { key, value, flags } => Ok(vec![self.set(key, value.clone(), *flags)]),
            TxnOp::Cas {
                key,
                value,
                flags,
                index,
            } => self
                .cas(key, value.clone(), *flags, *index)
                .map(|entry| vec![entry])
                .ok_or_else(|| format!("failed to set key {key:?}, index is stale")),
            TxnOp::Lock {
                key,
                value,
                flags,
                session,
            } => self
                .lock(key, value.clone(), *flags, session)?
                .map(|entry| vec![entry])
                .ok_or_else(|| format!("failed to lock key {key:?}, lock is already held")),
            TxnOp::Unlock {
                key,
                value,
                flags,
                session,
            } => self
                .unlock(key, value.clone(), *flags, session)?
                .map(|entry| vec![entry])
                .ok_or_else(|| {
                    format!(
                        "failed to unlock key {key:?}, lock isn't held, or is held by another \
                         session"
                    )
                }),
            TxnOp::Get { key } => found(self.store.kv.get(key), key).map(|entry| vec![entry]),
            TxnOp::GetTree { prefix } => Ok(self
                .store
                .under(prefix)
                .map(|(_, entry)| entry.clone())
                .collect()),
            TxnOp::CheckIndex { key, index } => match self.store.kv.get(key) {
                None => Err(format!("failed to check index, key {key:?} doesn't exist")),
                Some(entry) if entry.modify_index != *index => Err(format!(
                    "failed index check for key {key:?}, current modify index {} != {index}",
                    entry.modify_index
                )),
                Some(entry) => Ok(vec![entry.clone()]),
            },
            TxnOp::CheckSession { key, session } => match self.store.kv.get(key) {
                None => Err(format!(
                    "failed to check session, key {key:?} doesn't exist"
                )),
                Some(entry) if entry.session.as_deref().unwrap_or("") != session => Err(format!(
                    "failed session check for key {key:?}, current session {:?} != {session:?}",
                    entry.session.as_deref().unwrap_or("")
                )),
                Some(entry) => Ok(vec![entry.clone()]),
            },
            TxnOp::CheckNotExists { key } => match self.store.kv.get(key) {
                Some(_) => Err(format!("key {key:?} exists")),
                None => Ok(Vec::new()),
            },
            TxnOp::Delete { key } => {
                self.delete(key);
                Ok(Vec::new())
            }
            TxnOp::DeleteCas { key, index } => {
                if self.delete_cas(key, *index) {
                    Ok(Vec::new())
                } else {
                    Err(format!("failed to delete key {key:?}, index is stale"))
                }
            }
            TxnOp::DeleteTree { prefix } => {
                self.delete_tree(prefix);
                Ok(Vec::new())
            }
        }
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Entry(key, Some(old)) => {
                    self.store.kv.insert(key, old);
                }
                Undo::Entry(key, None) => {
                    self.store.kv.remove(&key);
                }
                Undo::Tombstone(key, Some(old)) => {
                    self.store.tombstones.insert(key, old);
                }
                Undo::Tombstone(key, None) => {
                    self.store.tombstones.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        Store::new(Duration::from_millis(100))
    }

    fn session(store: &mut Store, behavior: &str, ttl: &str, now: Instant) -> String {
        store
            .create_session(
                NewSession {
                    behavior: behavior.to_string(),
                    ttl: ttl.to_string(),
                    ..NewSession::default()
                },
                now,
            )
            .expect("a valid session")
    }

    #[test]
    fn a_failed_transaction_changes_nothing_and_reports_every_error() {
        let mut store = store();
        let now = Instant::now();
        store
            .put("a", b"1".to_vec(), 0, PutMode::Set, now)
            .expect("set");
        let before = store.list("").1.into_iter().cloned().collect::<Vec<_>>();
        let index = store.kv_index();

        let errors = store
            .txn(
                &[
                    TxnOp::Set {
                        key: "b".into(),
                        value: b"2".to_vec(),
                        flags: 0,
                    },
                    TxnOp::Delete { key: "a".into() },
                    TxnOp::CheckNotExists { key: "b".into() },
                    TxnOp::Get { key: "zz".into() },
                ],
                now,
            )
            .expect_err("two checks fail");

        assert_eq!(
            errors.iter().map(|e| e.op_index).collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(store.kv_index(), index);
        assert_eq!(
            store.list("").1.into_iter().cloned().collect::<Vec<_>>(),
            before
        );
        assert_eq!(store.list("a").0, index, "no tombstone survives a rollback");
    }

    #[test]
    fn deleting_a_key_raises_the_index_of_its_prefix() {
        let mut store = store();
        let now = Instant::now();
        store
            .put("p/a", Vec::new(), 0, PutMode::Set, now)
            .expect("set");
        store
            .put("q/a", Vec::new(), 0, PutMode::Set, now)
            .expect("set");
        let (before, _) = store.keys("p/", None);
        store.delete("p/a", None, now);
        let (after, keys) = store.keys("p/", None);
        assert!(after > before);
        assert!(keys.is_empty());
    }

    #[test]
    fn an_expired_delete_session_takes_its_keys_and_a_release_session_leaves_them() {
        let mut store = store();
        let now = Instant::now();
        let deleting = session(&mut store, "delete", "1s", now);
        let releasing = session(&mut store, "release", "1s", now);
        for (key, holder) in [("d", &deleting), ("r", &releasing)] {
            assert_eq!(
                store.put(key, b"v".to_vec(), 0, PutMode::Acquire(holder.clone()), now),
                Ok(true)
            );
        }

        assert!(!store.expire(now + Duration::from_millis(1999)), "2 x TTL");
        assert!(store.expire(now + Duration::from_secs(2)));

        assert!(store.get("d").1.is_none());
        assert_eq!(store.get("r").1.map(|e| e.session.clone()), Some(None));
        assert!(store.session(&deleting).1.is_none());
    }

    #[test]
    fn session_ttls_below_the_minimum_are_refused_as_consul_does() {
        let mut store = Store::new(Duration::from_secs(10));
        let error = store
            .create_session(
                NewSession {
                    ttl: "1s".into(),
                    ..NewSession::default()
                },
                Instant::now(),
            )
            .expect_err("below session_ttl_min");
        assert_eq!(error.status, 500);
        assert_eq!(
            error.message,
            "Invalid Session TTL '1000000000', must be between [10s=24h0m0s]"
        );
    }
}
