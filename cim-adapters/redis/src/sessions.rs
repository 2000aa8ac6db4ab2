//! [`RedisSessionStore`]: who is online, in Redis.
//!
//! A session lives as long as its server's liveness key (`{ns}:sess:alive:{server}`, set with
//! `PX ttl` by every bind and `refresh_server`), so a crashed node's users are free again one TTL
//! after its last heartbeat, with nothing to clean up first. Every operation that reads or
//! changes sessions is one Lua script: the check of the stored session, the liveness check and the
//! write happen atomically, which is what makes `bind` under `Reject` exclusive and `unbind` a
//! true compare-and-delete. Sessions of a dead server are purged lazily, by the first script that
//! meets them; a dead server that comes back (refreshes again) does not revive them.
//!
//! Keys, with `p = {ns}:sess:` and user ids zero-padded to 20 digits so lexical order is numeric:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `p u:{user}` | hash | `srv`, `conn`, `json` (the session) |
//! | `p s:{server}` | set | the users bound on that server |
//! | `p servers` | set | servers that have sessions |
//! | `p alive:{server}` | string with PX | the server's heartbeat |
//! | `p online` | sorted set, all scores 0 | user ids, for cursor listing with `ZRANGEBYLEX` |
//!
//! Scripts build key names from the prefix (`ARGV[1]`, also passed as `KEYS[1]` so that Redis
//! Cluster routes the script), so on a cluster every key of the store carries the prefix's one
//! hash tag and lives in one slot (see `connection.rs`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cim_core::codec::{decode_session, encode_session};
use cim_core::paging::id_cursor;
use cim_core::registry::{BackendOptions, BuildFuture, SessionStoreFactory};
use cim_core::{
    BindOutcome, BindPolicy, Cursor, Error, Page, Result, ServerId, Session, SessionCapabilities,
    SessionRef, SessionStore, UserId,
};
use redis::Script;

use crate::RedisConfig;
use crate::connection::{Redis, convert, millis, padded};

/// The server TTL when `[sessions] ttl` is not set.
const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// The Lua helpers every script starts with. `p` is the key prefix (`ARGV[1]`).
const PRELUDE: &str = r#"
local p = ARGV[1]
local function alive(sid)
  return redis.call('EXISTS', p .. 'alive:' .. sid) == 1
end
local function remove_session(uid, sid)
  redis.call('DEL', p .. 'u:' .. uid)
  redis.call('ZREM', p .. 'online', uid)
  redis.call('SREM', p .. 's:' .. sid, uid)
  if redis.call('SCARD', p .. 's:' .. sid) == 0 then
    redis.call('SREM', p .. 'servers', sid)
  end
end
local function purge_server(sid)
  local removed = 0
  for _, uid in ipairs(redis.call('SMEMBERS', p .. 's:' .. sid)) do
    local key = p .. 'u:' .. uid
    if redis.call('HGET', key, 'srv') == sid then
      redis.call('DEL', key)
      redis.call('ZREM', p .. 'online', uid)
      removed = removed + 1
    end
  end
  redis.call('DEL', p .. 's:' .. sid)
  redis.call('SREM', p .. 'servers', sid)
  return removed
end
local function purge_dead()
  for _, sid in ipairs(redis.call('SMEMBERS', p .. 'servers')) do
    if not alive(sid) then purge_server(sid) end
  end
end
local function refresh(sid, ttl)
  if not alive(sid) then purge_server(sid) end
  redis.call('SET', p .. 'alive:' .. sid, '1', 'PX', ttl)
end
-- The live session of uid as {srv, conn, json}, purging it if its server is dead.
local function live(uid)
  local s = redis.call('HMGET', p .. 'u:' .. uid, 'srv', 'conn', 'json')
  if not s[1] then return nil end
  if not alive(s[1]) then
    purge_server(s[1])
    return nil
  end
  return s
end
"#;

/// ARGV: p, ttl_ms, uid, sid, conn, json, policy. Returns {'bound'} | {'exists', srv} |
/// {'replaced', json}.
const BIND: &str = r#"
local ttl, uid, sid, conn, json, policy = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
refresh(sid, ttl)
local function insert()
  redis.call('HSET', p .. 'u:' .. uid, 'srv', sid, 'conn', conn, 'json', json)
  redis.call('SADD', p .. 's:' .. sid, uid)
  redis.call('SADD', p .. 'servers', sid)
  redis.call('ZADD', p .. 'online', 0, uid)
end
local old = live(uid)
if not old then
  insert()
  return {'bound'}
end
if old[1] == sid and old[2] == conn then
  redis.call('HSET', p .. 'u:' .. uid, 'json', json)
  return {'bound'}
end
if policy == 'reject' then
  return {'exists', old[1]}
end
remove_session(uid, old[1])
insert()
return {'replaced', old[3]}
"#;

/// ARGV: p, uid... Returns the live sessions' json.
const GET_MANY: &str = r#"
local found = {}
for i = 2, #ARGV do
  local s = live(ARGV[i])
  if s then table.insert(found, s[3]) end
end
return found
"#;

/// ARGV: p, uid, sid, conn. Returns 1 if the session was removed.
const UNBIND: &str = r#"
local uid, sid, conn = ARGV[2], ARGV[3], ARGV[4]
local s = live(uid)
if s and s[1] == sid and s[2] == conn then
  remove_session(uid, sid)
  return 1
end
return 0
"#;

/// ARGV: p, sid, ttl_ms.
const REFRESH: &str = r#"
refresh(ARGV[2], ARGV[3])
return 1
"#;

/// ARGV: p, sid. Returns how many live sessions went.
const REMOVE_SERVER: &str = r#"
local sid = ARGV[2]
if not alive(sid) then
  purge_server(sid)
  return 0
end
local removed = purge_server(sid)
redis.call('DEL', p .. 'alive:' .. sid)
return removed
"#;

/// ARGV: p, start ('-' or '(uid'), count. Returns up to count sessions' json, by user id.
const LIST: &str = r#"
purge_dead()
local uids = redis.call('ZRANGEBYLEX', p .. 'online', ARGV[2], '+', 'LIMIT', 0, tonumber(ARGV[3]))
local found = {}
for _, uid in ipairs(uids) do
  local json = redis.call('HGET', p .. 'u:' .. uid, 'json')
  if json then table.insert(found, json) end
end
return found
"#;

/// ARGV: p. Returns the number of live sessions.
const COUNT: &str = r#"
purge_dead()
return redis.call('ZCARD', p .. 'online')
"#;

inventory::submit! {
    SessionStoreFactory::new(
        "redis",
        "Redis: sessions expire with their server's heartbeat key (cluster-wide)",
        build,
    )
}

fn build(options: BackendOptions) -> BuildFuture<dyn SessionStore> {
    Box::pin(async move {
        let config: RedisConfig = options.parse()?;
        let ttl = options.ttl().unwrap_or(DEFAULT_TTL);
        let store = RedisSessionStore::connect(&config, options.namespace(), ttl).await?;
        Ok(Arc::new(store) as Arc<dyn SessionStore>)
    })
}

/// The compiled scripts (their SHA1s are computed once; Redis caches the bodies).
struct Scripts {
    bind: Script,
    get_many: Script,
    unbind: Script,
    refresh: Script,
    remove_server: Script,
    list: Script,
    count: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            bind: script(BIND),
            get_many: script(GET_MANY),
            unbind: script(UNBIND),
            refresh: script(REFRESH),
            remove_server: script(REMOVE_SERVER),
            list: script(LIST),
            count: script(COUNT),
        }
    }
}

/// A [`SessionStore`] in Redis, shared by every node of a cluster.
///
/// A server's sessions live until `ttl` after its last [`refresh_server`] or bind. Listing and
/// counting are supported.
///
/// [`refresh_server`]: SessionStore::refresh_server
pub struct RedisSessionStore {
    redis: Redis,
    ttl: Duration,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("redis", &self.redis)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl RedisSessionStore {
    /// Connects to the Redis `config` names and keeps sessions under `{namespace}:sess:`, each
    /// server's sessions living `ttl` past its last heartbeat.
    pub async fn connect(
        config: &RedisConfig,
        namespace: &str,
        ttl: Duration,
    ) -> Result<RedisSessionStore> {
        if ttl.is_zero() {
            return Err(Error::config(
                "[sessions] ttl must be longer than zero (for example \"30s\")",
            ));
        }
        let redis = Redis::connect(config, namespace, "sess").await?;
        Ok(RedisSessionStore {
            redis,
            ttl,
            scripts: Scripts::new(),
        })
    }

    /// The server TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    fn capabilities(&self) -> SessionCapabilities {
        SessionCapabilities::ALL
    }

    async fn bind(&self, session: Session, policy: BindPolicy) -> Result<BindOutcome> {
        let json = encode_session(&session)?;
        let policy_arg = match policy {
            BindPolicy::Reject => "reject",
            BindPolicy::Replace => "replace",
        };
        let reply: Vec<String> = self
            .redis
            .script(&self.scripts.bind)
            .arg(millis(self.ttl))
            .arg(padded(session.user_id.0))
            .arg(session.server_id.as_str())
            .arg(session.connection_id.0.to_string())
            .arg(json)
            .arg(policy_arg)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "bind"))?;
        match reply.as_slice() {
            [tag] if tag == "bound" => Ok(BindOutcome::Bound),
            [tag, json] if tag == "replaced" => Ok(BindOutcome::Replaced(decode_session(
                json.as_bytes(),
                "redis",
            )?)),
            [tag, server] if tag == "exists" => Err(Error::already_exists(format!(
                "user {} is already online on server {server}; unbind that session first or bind \
                 with the replace policy",
                session.user_id
            ))),
            _ => Err(Error::internal(format!(
                "the redis bind script answered {reply:?}"
            ))),
        }
    }

    async fn get(&self, user: UserId) -> Result<Option<Session>> {
        Ok(self.get_many(&[user]).await?.pop())
    }

    async fn get_many(&self, users: &[UserId]) -> Result<Vec<Session>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.redis.script(&self.scripts.get_many);
        for user in users {
            invocation.arg(padded(user.0));
        }
        let found: Vec<String> = invocation
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "get sessions"))?;
        found
            .iter()
            .map(|json| decode_session(json.as_bytes(), "redis"))
            .collect()
    }

    async fn unbind(&self, session: &SessionRef) -> Result<bool> {
        let removed: i64 = self
            .redis
            .script(&self.scripts.unbind)
            .arg(padded(session.user_id.0))
            .arg(session.server_id.as_str())
            .arg(session.connection_id.0.to_string())
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "unbind"))?;
        Ok(removed == 1)
    }

    async fn refresh_server(&self, server: &ServerId) -> Result<()> {
        let _: i64 = self
            .redis
            .script(&self.scripts.refresh)
            .arg(server.as_str())
            .arg(millis(self.ttl))
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "refresh server"))?;
        Ok(())
    }

    async fn remove_server(&self, server: &ServerId) -> Result<u64> {
        self.redis
            .script(&self.scripts.remove_server)
            .arg(server.as_str())
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "remove server"))
    }

    async fn list_online(&self, cursor: Option<&Cursor>, limit: u32) -> Result<Page<Session>> {
        if limit == 0 {
            return Err(Error::invalid_input(
                "list_online needs a limit of at least 1",
            ));
        }
        let start = match cursor {
            Some(cursor) => format!("({}", padded(id_cursor(Some(cursor), "list_online")?)),
            None => "-".to_string(),
        };
        // One more than asked, to know whether a next page exists.
        let found: Vec<String> = self
            .redis
            .script(&self.scripts.list)
            .arg(start)
            .arg(u64::from(limit) + 1)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "list online"))?;
        let mut items = found
            .iter()
            .map(|json| decode_session(json.as_bytes(), "redis"))
            .collect::<Result<Vec<_>>>()?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|last| Cursor(last.user_id.to_string()))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn count_online(&self) -> Result<u64> {
        self.redis
            .script(&self.scripts.count)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "count online"))
    }
}
