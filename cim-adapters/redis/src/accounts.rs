//! [`RedisAccountStore`]: users, credentials and groups in Redis.
//!
//! Ids come from counters (`INCR`), so they are unique and never reused across every node.
//! Creating a user or a group is one Lua script that checks the canonical name in a hash of
//! names and claims it in the same step, which is what makes exactly one of concurrent creates
//! of a name succeed. Prefix search walks a sorted set of canonical names (all scores 0, so the
//! order is byte order) with `ZRANGEBYLEX` from the prefix, stopping at the first name that no
//! longer starts with it: the cost is the page, not the number of users.
//!
//! Keys, with `p = {ns}:acct:` (ids in decimal; zero-padded to 20 digits in sorted sets):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `p next_user`, `p next_group` | counter | the last id given out |
//! | `p user:{id}` | hash | `name`, `created`, `phc` |
//! | `p user_names` | hash | canonical name -> user id |
//! | `p user_index` | sorted set | canonical user names, for prefix search |
//! | `p group:{id}` | hash | `name`, `owner`, `created` |
//! | `p group_names` | hash | canonical name -> group id |
//! | `p members:{group}` | sorted set | padded user ids |
//! | `p groups_of:{user}` | sorted set | padded group ids |

use std::sync::Arc;

use async_trait::async_trait;
use cim_core::registry::{AccountStoreFactory, BackendOptions, BuildFuture};
use cim_core::{
    AccountCapabilities, AccountStore, Cursor, Error, Group, GroupId, NewGroup, NewUser, Page,
    PasswordHash, Result, Timestamp, User, UserId, canonical_name,
};
use redis::Script;

use crate::RedisConfig;
use crate::connection::{Redis, convert, padded};

/// ARGV: p, canonical, name, phc, created. Returns the new id, or 0 if the name is taken.
const CREATE_USER: &str = r#"
local p, canon, name, phc, created = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('HEXISTS', p .. 'user_names', canon) == 1 then return 0 end
local id = redis.call('INCR', p .. 'next_user')
redis.call('HSET', p .. 'user:' .. id, 'name', name, 'created', created, 'phc', phc)
redis.call('HSET', p .. 'user_names', canon, id)
redis.call('ZADD', p .. 'user_index', 0, canon)
return id
"#;

/// ARGV: p, canonical. Returns {id, name, created, phc} or {}.
const USER_BY_NAME: &str = r#"
local p = ARGV[1]
local id = redis.call('HGET', p .. 'user_names', ARGV[2])
if not id then return {} end
local u = redis.call('HMGET', p .. 'user:' .. id, 'name', 'created', 'phc')
if not u[1] then return {} end
return {id, u[1], u[2], u[3]}
"#;

/// ARGV: p, prefix, start ('[prefix' or '(last'), count. Returns {id, name, created, canon}*.
const SEARCH: &str = r#"
local p, prefix = ARGV[1], ARGV[2]
local out = {}
for _, canon in ipairs(redis.call('ZRANGEBYLEX', p .. 'user_index', ARGV[3], '+', 'LIMIT', 0, tonumber(ARGV[4]))) do
  if string.sub(canon, 1, #prefix) ~= prefix then break end
  local id = redis.call('HGET', p .. 'user_names', canon)
  if id then
    local u = redis.call('HMGET', p .. 'user:' .. id, 'name', 'created')
    if u[1] then
      table.insert(out, id); table.insert(out, u[1]); table.insert(out, u[2]); table.insert(out, canon)
    end
  end
end
return out
"#;

/// ARGV: p, canonical, name, owner, created. Returns the new id, 0 if the name is taken, -1 if
/// the owner does not exist.
const CREATE_GROUP: &str = r#"
local p, canon, name, owner, created = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('EXISTS', p .. 'user:' .. owner) == 0 then return -1 end
if redis.call('HEXISTS', p .. 'group_names', canon) == 1 then return 0 end
local id = redis.call('INCR', p .. 'next_group')
redis.call('HSET', p .. 'group:' .. id, 'name', name, 'owner', owner, 'created', created)
redis.call('HSET', p .. 'group_names', canon, id)
redis.call('ZADD', p .. 'members:' .. id, 0, string.format('%020d', tonumber(owner)))
redis.call('ZADD', p .. 'groups_of:' .. owner, 0, string.format('%020d', id))
return id
"#;

/// ARGV: p, canonical. Returns {id, name, owner, created} or {}.
const GROUP_BY_NAME: &str = r#"
local p = ARGV[1]
local id = redis.call('HGET', p .. 'group_names', ARGV[2])
if not id then return {} end
local g = redis.call('HMGET', p .. 'group:' .. id, 'name', 'owner', 'created')
if not g[1] then return {} end
return {id, g[1], g[2], g[3]}
"#;

/// ARGV: p, group, user, padded group, padded user, 'add' | 'remove'. Returns 1 changed, 0 not,
/// -1 no such group, -2 no such user.
const MEMBERSHIP: &str = r#"
local p, gid, uid, pg, pu, op = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('EXISTS', p .. 'group:' .. gid) == 0 then return -1 end
if redis.call('EXISTS', p .. 'user:' .. uid) == 0 then return -2 end
if op == 'add' then
  redis.call('ZADD', p .. 'groups_of:' .. uid, 0, pg)
  return redis.call('ZADD', p .. 'members:' .. gid, 0, pu)
end
redis.call('ZREM', p .. 'groups_of:' .. uid, pg)
return redis.call('ZREM', p .. 'members:' .. gid, pu)
"#;

/// ARGV: p, group, start ('-' or '(padded'), count. Returns -1 for no such group, else padded
/// user ids.
const MEMBERS: &str = r#"
local p = ARGV[1]
if redis.call('EXISTS', p .. 'group:' .. ARGV[2]) == 0 then return -1 end
return redis.call('ZRANGEBYLEX', p .. 'members:' .. ARGV[2], ARGV[3], '+', 'LIMIT', 0, tonumber(ARGV[4]))
"#;

/// ARGV: p, user. Returns -1 for no such user, else {id, name, owner, created}* by group id.
const USER_GROUPS: &str = r#"
local p = ARGV[1]
if redis.call('EXISTS', p .. 'user:' .. ARGV[2]) == 0 then return -1 end
local out = {}
for _, pg in ipairs(redis.call('ZRANGE', p .. 'groups_of:' .. ARGV[2], 0, -1)) do
  local id = tostring(tonumber(pg))
  local g = redis.call('HMGET', p .. 'group:' .. id, 'name', 'owner', 'created')
  if g[1] then
    table.insert(out, id); table.insert(out, g[1]); table.insert(out, g[2]); table.insert(out, g[3])
  end
end
return out
"#;

inventory::submit! {
    AccountStoreFactory::new(
        "redis",
        "Redis: ids from counters, unique names, prefix search on a sorted index (cluster-wide)",
        build,
    )
}

fn build(options: BackendOptions) -> BuildFuture<dyn AccountStore> {
    Box::pin(async move {
        let config: RedisConfig = options.parse()?;
        let store = RedisAccountStore::connect(&config, options.namespace()).await?;
        Ok(Arc::new(store) as Arc<dyn AccountStore>)
    })
}

struct Scripts {
    create_user: Script,
    user_by_name: Script,
    search: Script,
    create_group: Script,
    group_by_name: Script,
    membership: Script,
    members: Script,
    user_groups: Script,
}

/// An [`AccountStore`] in Redis, shared by every node of a cluster. Prefix search and groups
/// are supported.
pub struct RedisAccountStore {
    redis: Redis,
    prefix: String,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisAccountStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAccountStore")
            .field("redis", &self.redis)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisAccountStore {
    /// Connects to the Redis `config` names and keeps accounts under `{namespace}:acct:`.
    pub async fn connect(config: &RedisConfig, namespace: &str) -> Result<RedisAccountStore> {
        Ok(RedisAccountStore {
            redis: Redis::connect(config).await?,
            prefix: format!("{namespace}:acct:"),
            scripts: Scripts {
                create_user: Script::new(CREATE_USER),
                user_by_name: Script::new(USER_BY_NAME),
                search: Script::new(SEARCH),
                create_group: Script::new(CREATE_GROUP),
                group_by_name: Script::new(GROUP_BY_NAME),
                membership: Script::new(MEMBERSHIP),
                members: Script::new(MEMBERS),
                user_groups: Script::new(USER_GROUPS),
            },
        })
    }

    async fn user_with_hash(&self, name: &str) -> Result<Option<(User, PasswordHash)>> {
        let reply: Vec<String> = self
            .scripts
            .user_by_name
            .arg(&self.prefix)
            .arg(canonical_name(name))
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "find user"))?;
        match reply.as_slice() {
            [] => Ok(None),
            [id, name, created, phc] => Ok(Some((
                user(id, name, created)?,
                PasswordHash::from_phc(phc.clone())?,
            ))),
            _ => Err(malformed("user")),
        }
    }

    async fn membership(&self, group: GroupId, user: UserId, op: &str) -> Result<bool> {
        let outcome: i64 = self
            .scripts
            .membership
            .arg(&self.prefix)
            .arg(group.0)
            .arg(user.0)
            .arg(padded(group.0))
            .arg(padded(user.0))
            .arg(op)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "change group membership"))?;
        match outcome {
            -1 => Err(no_group(group)),
            -2 => Err(no_user(user)),
            changed => Ok(changed == 1),
        }
    }
}

fn malformed(what: &str) -> Error {
    Error::internal(format!("a {what} stored in redis is malformed"))
        .with_context("backend", "redis")
}

fn no_group(group: GroupId) -> Error {
    Error::not_found(format!("group {group} does not exist"))
}

fn no_user(user: UserId) -> Error {
    Error::not_found(format!("user {user} does not exist"))
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T> {
    text.parse().map_err(|_| malformed(what))
}

fn user(id: &str, name: &str, created: &str) -> Result<User> {
    Ok(User {
        id: UserId(number(id, "user")?),
        name: name.to_string(),
        created_at: Timestamp(number(created, "user")?),
    })
}

fn group(id: &str, name: &str, owner: &str, created: &str) -> Result<Group> {
    Ok(Group {
        id: GroupId(number(id, "group")?),
        name: name.to_string(),
        owner: UserId(number(owner, "group")?),
        created_at: Timestamp(number(created, "group")?),
    })
}

/// A page size from `limit`, and the count to fetch (one more, to know if a page follows).
fn page_size(limit: u32) -> Result<(usize, u64)> {
    if limit == 0 {
        return Err(Error::invalid_input("a page needs a limit of at least 1"));
    }
    Ok((
        usize::try_from(limit).unwrap_or(usize::MAX),
        u64::from(limit) + 1,
    ))
}

#[async_trait]
impl AccountStore for RedisAccountStore {
    fn capabilities(&self) -> AccountCapabilities {
        AccountCapabilities::ALL
    }

    async fn create_user(&self, new: NewUser) -> Result<User> {
        let created_at = Timestamp::now();
        let id: u64 = self
            .scripts
            .create_user
            .arg(&self.prefix)
            .arg(new.canonical_name())
            .arg(new.name())
            .arg(new.password_hash().as_phc())
            .arg(created_at.0)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "create user"))?;
        if id == 0 {
            return Err(Error::already_exists(format!(
                "user name {:?} is taken; choose another",
                new.name()
            )));
        }
        Ok(User {
            id: UserId(id),
            name: new.name().to_string(),
            created_at,
        })
    }

    async fn user(&self, id: UserId) -> Result<Option<User>> {
        let fields: (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(format!("{}user:{}", self.prefix, id.0))
            .arg("name")
            .arg("created")
            .query_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "get user"))?;
        match fields {
            (Some(name), Some(created)) => Ok(Some(user(&id.to_string(), &name, &created)?)),
            _ => Ok(None),
        }
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        Ok(self.user_with_hash(name).await?.map(|(user, _)| user))
    }

    async fn credentials(&self, name: &str) -> Result<Option<(User, PasswordHash)>> {
        self.user_with_hash(name).await
    }

    async fn search_users(
        &self,
        prefix: &str,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<User>> {
        let (limit, fetch) = page_size(limit)?;
        let prefix = canonical_name(prefix);
        // The cursor is the last canonical name of the previous page; one that sorts before the
        // prefix cannot skip anything, so the scan starts at the prefix then.
        let start = match cursor {
            Some(Cursor(last)) if *last >= prefix => format!("({last}"),
            _ => format!("[{prefix}"),
        };
        let reply: Vec<String> = self
            .scripts
            .search
            .arg(&self.prefix)
            .arg(&prefix)
            .arg(start)
            .arg(fetch)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "search users"))?;
        let mut found = reply
            .chunks(4)
            .map(|row| match row {
                [id, name, created, canon] => Ok((user(id, name, created)?, canon.clone())),
                _ => Err(malformed("user")),
            })
            .collect::<Result<Vec<_>>>()?;
        let next = if found.len() > limit {
            found.truncate(limit);
            found.last().map(|(_, canon)| Cursor(canon.clone()))
        } else {
            None
        };
        Ok(Page {
            items: found.into_iter().map(|(user, _)| user).collect(),
            next,
        })
    }

    async fn create_group(&self, new: NewGroup) -> Result<Group> {
        let created_at = Timestamp::now();
        let id: i64 = self
            .scripts
            .create_group
            .arg(&self.prefix)
            .arg(new.canonical_name())
            .arg(new.name())
            .arg(new.owner().0)
            .arg(created_at.0)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "create group"))?;
        match id {
            -1 => Err(Error::not_found(format!(
                "group owner {} does not exist; create the user first",
                new.owner()
            ))),
            0 => Err(Error::already_exists(format!(
                "group name {:?} is taken; choose another",
                new.name()
            ))),
            id => Ok(Group {
                id: GroupId(u64::try_from(id).map_err(|_| malformed("group id"))?),
                name: new.name().to_string(),
                owner: new.owner(),
                created_at,
            }),
        }
    }

    async fn group(&self, id: GroupId) -> Result<Option<Group>> {
        let fields: (Option<String>, Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(format!("{}group:{}", self.prefix, id.0))
            .arg("name")
            .arg("owner")
            .arg("created")
            .query_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "get group"))?;
        match fields {
            (Some(name), Some(owner), Some(created)) => {
                Ok(Some(group(&id.to_string(), &name, &owner, &created)?))
            }
            _ => Ok(None),
        }
    }

    async fn group_by_name(&self, name: &str) -> Result<Option<Group>> {
        let reply: Vec<String> = self
            .scripts
            .group_by_name
            .arg(&self.prefix)
            .arg(canonical_name(name))
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "find group"))?;
        match reply.as_slice() {
            [] => Ok(None),
            [id, name, owner, created] => Ok(Some(group(id, name, owner, created)?)),
            _ => Err(malformed("group")),
        }
    }

    async fn add_member(&self, group: GroupId, user: UserId) -> Result<bool> {
        self.membership(group, user, "add").await
    }

    async fn remove_member(&self, group: GroupId, user: UserId) -> Result<bool> {
        self.membership(group, user, "remove").await
    }

    async fn members(
        &self,
        group: GroupId,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<UserId>> {
        let (limit, fetch) = page_size(limit)?;
        let start = match cursor {
            Some(Cursor(last)) => {
                let last = last.parse::<u64>().map_err(|_| {
                    Error::invalid_input(format!(
                        "cursor {last:?} was not returned by members; pass back the previous \
                         page's cursor, or none for the first page"
                    ))
                })?;
                format!("({}", padded(last))
            }
            None => "-".to_string(),
        };
        let reply: redis::Value = self
            .scripts
            .members
            .arg(&self.prefix)
            .arg(group.0)
            .arg(start)
            .arg(fetch)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "list members"))?;
        if let redis::Value::Int(-1) = reply {
            return Err(no_group(group));
        }
        let ids: Vec<String> =
            redis::FromRedisValue::from_redis_value(reply).map_err(|_| malformed("member list"))?;
        let mut items = ids
            .iter()
            .map(|id| number(id, "member").map(UserId))
            .collect::<Result<Vec<_>>>()?;
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|last| Cursor(last.to_string()))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn user_groups(&self, user: UserId) -> Result<Vec<Group>> {
        let reply: redis::Value = self
            .scripts
            .user_groups
            .arg(&self.prefix)
            .arg(user.0)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "list a user's groups"))?;
        if let redis::Value::Int(-1) = reply {
            return Err(no_user(user));
        }
        let rows: Vec<String> =
            redis::FromRedisValue::from_redis_value(reply).map_err(|_| malformed("group list"))?;
        rows.chunks(4)
            .map(|row| match row {
                [id, name, owner, created] => group(id, name, owner, created),
                _ => Err(malformed("group")),
            })
            .collect()
    }

    async fn is_member(&self, group: GroupId, user: UserId) -> Result<bool> {
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(format!("{}members:{}", self.prefix, group.0))
            .arg(padded(user.0))
            .query_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "check group membership"))?;
        Ok(score.is_some())
    }
}
