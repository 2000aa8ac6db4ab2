//! [`RedisAccountStore`]: users, credentials and groups in Redis.
//!
//! Ids come from counters (`INCR`), so they are unique and never reused across every node.
//! Creating a user or a group is one Lua script that checks the canonical name in a hash of
//! names and the skeleton in a hash of skeletons and claims both in the same step, which is what
//! makes exactly one of concurrent creates of a name, or of look-alike names, succeed. The
//! skeleton comes from Rust ([`NewUser::skeleton`], [`NewGroup::skeleton`]): Lua cannot compute
//! UTS #39.
//!
//! Names created before skeletons existed have none, so [`RedisAccountStore::connect`] gives
//! them theirs before the store is used: it walks the ids from the backfill's mark up to the
//! counter, in batches, reads each name, computes its skeleton and claims it unless another id
//! holds it (one script per batch). Walking by id rather than by `HSCAN` keeps the order of
//! creation, so of two older look-alikes the earlier keeps the skeleton and the later keeps its
//! account without one (logged), as in the SQLite store, and nodes starting together claim the
//! same skeletons for the same ids whatever their interleaving: a second run finds its own ids
//! and changes nothing. The mark (the counter's value when a walk began) then spares the next
//! start a walk of everyone; the names a node of the previous version creates during a rolling
//! upgrade lie above it, so the next start of an upgraded node claims their skeletons too.
//!
//! Prefix search walks a sorted set of canonical names (all scores 0, so the order is byte
//! order) with `ZRANGEBYLEX` from the prefix, stopping at the first name that no longer starts
//! with it: the cost is the page, not the number of users.
//!
//! Every change to a group's members is one Lua script that checks the group, the user, the
//! owner and the bans and then writes, so the checks and the change are one step: a ban and an
//! add racing each other are ordered by Redis, and a banned user is never left a member. A
//! member's role and `since` live in a hash beside the sorted set of members rather than in it,
//! so that the sorted set stays the paging index and [`is_member`](AccountStore::is_member)
//! stays one `ZSCORE`. Data written before roles, settings and bans existed has no `access` or
//! `history` field and no member info: it reads as an open group with its full history, whose
//! members (its `owner` field aside, who is the owner) are plain members since 1.
//!
//! A revoked login is a key that Redis expires at the revocation's end (`PEXPIREAT`), so every
//! node sees it at once and nothing needs sweeping; the key holds that time, so that the script
//! revoking again can keep the later one in one step. (`PEXPIREAT ... GT` would need Redis 7
//! and still a separate `SET` to create the key.) Expiry is by the Redis server's clock.
//!
//! Keys, with `p = {ns}:acct:` (ids in decimal; zero-padded to 20 digits in sorted sets and in
//! `member_info`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `p next_user`, `p next_group` | counter | the last id given out |
//! | `p user:{id}` | hash | `name`, `created`, `phc` |
//! | `p user_names` | hash | canonical name -> user id |
//! | `p user_skeletons` | hash | skeleton of the name -> user id |
//! | `p user_index` | sorted set | canonical user names, for prefix search |
//! | `p group:{id}` | hash | `name`, `owner`, `created`, `access`, `history` (missing: `open`, `full`) |
//! | `p group_names` | hash | canonical name -> group id |
//! | `p group_skeletons` | hash | skeleton of the name -> group id |
//! | `p user_skeletons_upto`, `p group_skeletons_upto` | string | the id up to which older names were given their skeleton |
//! | `p members:{group}` | sorted set | padded user ids, the paging index of members |
//! | `p member_info:{group}` | hash | padded user id -> `role:since` (missing: `member:1`, or `owner:1` for the owner) |
//! | `p bans:{group}` | sorted set | padded ids of the users banned from the group |
//! | `p groups_of:{user}` | sorted set | padded group ids |
//! | `p revoked:{session}` | string | the time (ms) the login is revoked until; expires then |

use std::sync::Arc;

use async_trait::async_trait;
use cim_core::account_store::check_session_id;
use cim_core::registry::{AccountStoreFactory, BackendOptions, BuildFuture};
use cim_core::{
    AccountCapabilities, AccountStore, Cursor, Error, Group, GroupAccess, GroupHistory, GroupId,
    GroupSettings, Membership, NewGroup, NewUser, Page, PasswordHash, Result, Role, Seq, Timestamp,
    User, UserId, canonical_name, name_skeleton,
};
use redis::Script;

use crate::RedisConfig;
use crate::connection::{Redis, convert, padded};

/// ARGV: p, canonical, skeleton, name, phc, created. Returns the new id, 0 if the name is
/// taken, -1 if it looks like a taken one.
const CREATE_USER: &str = r#"
local p, canon, skel, name, phc, created = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('HEXISTS', p .. 'user_names', canon) == 1 then return 0 end
if redis.call('HEXISTS', p .. 'user_skeletons', skel) == 1 then return -1 end
local id = redis.call('INCR', p .. 'next_user')
redis.call('HSET', p .. 'user:' .. id, 'name', name, 'created', created, 'phc', phc)
redis.call('HSET', p .. 'user_names', canon, id)
redis.call('HSET', p .. 'user_skeletons', skel, id)
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

/// ARGV: p, canonical, skeleton, name, owner, created, access, history. Returns the new id, 0
/// if the name is taken, -1 if the owner does not exist, -2 if the name looks like a taken one.
const CREATE_GROUP: &str = r#"
local p, canon, skel, name, owner, created = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('EXISTS', p .. 'user:' .. owner) == 0 then return -1 end
if redis.call('HEXISTS', p .. 'group_names', canon) == 1 then return 0 end
if redis.call('HEXISTS', p .. 'group_skeletons', skel) == 1 then return -2 end
local id = redis.call('INCR', p .. 'next_group')
redis.call('HSET', p .. 'group:' .. id, 'name', name, 'owner', owner, 'created', created,
  'access', ARGV[7], 'history', ARGV[8])
redis.call('HSET', p .. 'group_names', canon, id)
redis.call('HSET', p .. 'group_skeletons', skel, id)
local po = string.format('%020d', tonumber(owner))
redis.call('ZADD', p .. 'members:' .. id, 0, po)
redis.call('HSET', p .. 'member_info:' .. id, po, 'owner:1')
redis.call('ZADD', p .. 'groups_of:' .. owner, 0, string.format('%020d', id))
return id
"#;

/// ARGV: p, group, access, history. Returns {name, owner, created, access, history} as it is
/// now, or {} if the group does not exist.
const UPDATE_GROUP: &str = r#"
local p, gid = ARGV[1], ARGV[2]
local key = p .. 'group:' .. gid
if redis.call('EXISTS', key) == 0 then return {} end
redis.call('HSET', key, 'access', ARGV[3], 'history', ARGV[4])
local g = redis.call('HMGET', key, 'name', 'owner', 'created', 'access', 'history')
return {g[1] or '', g[2] or '', g[3] or '', g[4] or '', g[5] or ''}
"#;

/// ARGV: p, canonical. Returns {id, name, owner, created, access, history} ('' for a missing
/// setting) or {}.
const GROUP_BY_NAME: &str = r#"
local p = ARGV[1]
local id = redis.call('HGET', p .. 'group_names', ARGV[2])
if not id then return {} end
local g = redis.call('HMGET', p .. 'group:' .. id, 'name', 'owner', 'created', 'access', 'history')
if not g[1] then return {} end
return {id, g[1], g[2] or '', g[3] or '', g[4] or '', g[5] or ''}
"#;

/// The checks every membership change starts with, as a Lua prelude over ARGV p, group, user:
/// -1 for no such group, -2 for no such user; `owner` is the group's owner (decimal).
const CHECKED: &str = r#"
local p, gid, uid = ARGV[1], ARGV[2], ARGV[3]
local owner = redis.call('HGET', p .. 'group:' .. gid, 'owner')
if not owner then return -1 end
if redis.call('EXISTS', p .. 'user:' .. uid) == 0 then return -2 end
"#;

/// ARGV: p, group, user, padded group, padded user, since. Returns 1 added, 0 a member already,
/// -1 no such group, -2 no such user, -3 banned.
const ADD_MEMBER: &str = r#"
local pg, pu, since = ARGV[4], ARGV[5], ARGV[6]
if redis.call('ZSCORE', p .. 'bans:' .. gid, pu) then return -3 end
if redis.call('ZADD', p .. 'members:' .. gid, 'NX', 0, pu) == 0 then return 0 end
-- Only data older than roles lacks the owner among the members; they come back as the owner.
local role = 'member'
if owner == uid then role = 'owner' end
redis.call('HSET', p .. 'member_info:' .. gid, pu, role .. ':' .. since)
redis.call('ZADD', p .. 'groups_of:' .. uid, 0, pg)
return 1
"#;

/// Defines, after the checked prelude, `remove(pg, pu)`: takes user `uid` (padded `pu`) out of
/// group `gid` (padded `pg`) and answers the number of members removed (0 or 1).
const REMOVE: &str = r#"
local function remove(pg, pu)
  redis.call('ZREM', p .. 'groups_of:' .. uid, pg)
  redis.call('HDEL', p .. 'member_info:' .. gid, pu)
  return redis.call('ZREM', p .. 'members:' .. gid, pu)
end
"#;

/// ARGV: p, group, user, padded group, padded user. Returns 1 removed, 0 not a member, -1 no
/// such group, -2 no such user, -3 the owner.
const REMOVE_MEMBER: &str = r#"
if owner == uid then return -3 end
return remove(ARGV[4], ARGV[5])
"#;

/// ARGV: p, group, user, padded group, padded user. Removes the user if a member and records the
/// ban. Returns 1 banned, 0 banned already, -1 no such group, -2 no such user, -3 the owner.
const BAN: &str = r#"
if owner == uid then return -3 end
remove(ARGV[4], ARGV[5])
return redis.call('ZADD', p .. 'bans:' .. gid, 0, ARGV[5])
"#;

/// ARGV: p, group, user, padded user. Returns 1 lifted, 0 not banned, -1 no such group, -2 no
/// such user.
const UNBAN: &str = r#"
return redis.call('ZREM', p .. 'bans:' .. gid, ARGV[4])
"#;

/// ARGV: p, group, user, padded user, role (member | admin). Keeps the member's `since`.
/// Returns 1 changed, -1 no such group, -2 no such user, -3 the owner, -4 not a member.
const SET_ROLE: &str = r#"
local pu, role = ARGV[4], ARGV[5]
if owner == uid then return -3 end
if not redis.call('ZSCORE', p .. 'members:' .. gid, pu) then return -4 end
local info = p .. 'member_info:' .. gid
local since = '1'
local old = redis.call('HGET', info, pu)
if old then since = string.match(old, ':(.*)$') or '1' end
redis.call('HSET', info, pu, role .. ':' .. since)
return 1
"#;

/// ARGV: p, group, padded user. Returns {owner, role:since ('' if not stored)} for a member, {}
/// for anyone else and for a missing group.
const MEMBERSHIP: &str = r#"
local p, gid, pu = ARGV[1], ARGV[2], ARGV[3]
if not redis.call('ZSCORE', p .. 'members:' .. gid, pu) then return {} end
local owner = redis.call('HGET', p .. 'group:' .. gid, 'owner')
if not owner then return {} end
return {owner, redis.call('HGET', p .. 'member_info:' .. gid, pu) or ''}
"#;

/// ARGV: p, group, start ('-' or '(padded'), count. Returns -1 for no such group, else
/// {owner, {padded user, role:since ('' if not stored)}*}.
const MEMBERS: &str = r#"
local p, gid = ARGV[1], ARGV[2]
local owner = redis.call('HGET', p .. 'group:' .. gid, 'owner')
if not owner then return -1 end
local ids = redis.call('ZRANGEBYLEX', p .. 'members:' .. gid, ARGV[3], '+', 'LIMIT', 0, tonumber(ARGV[4]))
local out = {owner}
for _, pu in ipairs(ids) do
  table.insert(out, pu); table.insert(out, redis.call('HGET', p .. 'member_info:' .. gid, pu) or '')
end
return out
"#;

/// ARGV: p, group, start ('-' or '(padded'), count. Returns -1 for no such group, else padded
/// user ids.
const BANS: &str = r#"
local p = ARGV[1]
if redis.call('EXISTS', p .. 'group:' .. ARGV[2]) == 0 then return -1 end
return redis.call('ZRANGEBYLEX', p .. 'bans:' .. ARGV[2], ARGV[3], '+', 'LIMIT', 0, tonumber(ARGV[4]))
"#;

/// ARGV: p, user. Returns -1 for no such user, else {id, name, owner, created, access,
/// history}* by group id ('' for a missing setting).
const USER_GROUPS: &str = r#"
local p = ARGV[1]
if redis.call('EXISTS', p .. 'user:' .. ARGV[2]) == 0 then return -1 end
local out = {}
for _, pg in ipairs(redis.call('ZRANGE', p .. 'groups_of:' .. ARGV[2], 0, -1)) do
  local id = tostring(tonumber(pg))
  local g = redis.call('HMGET', p .. 'group:' .. id, 'name', 'owner', 'created', 'access', 'history')
  if g[1] then
    for _, field in ipairs({id, g[1], g[2] or '', g[3] or '', g[4] or '', g[5] or ''}) do
      table.insert(out, field)
    end
  end
end
return out
"#;

/// ARGV: p, kind (`user` | `group`), then {id, skeleton}* in id order. Gives each free
/// skeleton to its id and answers the ids whose skeleton another id holds: look-alikes of an
/// older name. (`HSETNX` alone could not tell them from a second run, which finds its own id.)
const BACKFILL_SKELETONS: &str = r#"
local key = ARGV[1] .. ARGV[2] .. '_skeletons'
local look_alikes = {}
for i = 3, #ARGV, 2 do
  local holder = redis.call('HGET', key, ARGV[i + 1])
  if not holder then
    redis.call('HSET', key, ARGV[i + 1], ARGV[i])
  elseif holder ~= ARGV[i] then
    table.insert(look_alikes, ARGV[i])
  end
end
return look_alikes
"#;

/// ARGV: p, kind (`user` | `group`), last id walked. Raises the backfill's mark to that id; a
/// node that walked less never lowers it.
const BACKFILLED: &str = r#"
local key = ARGV[1] .. ARGV[2] .. '_skeletons_upto'
if tonumber(redis.call('GET', key) or '0') < tonumber(ARGV[3]) then
  redis.call('SET', key, ARGV[3])
end
"#;

/// How many ids one step of the skeleton backfill reads and claims.
const BACKFILL_BATCH: u64 = 500;

/// ARGV: p, session id, until (ms). Keeps the later of the stored and the new time. Returns 1
/// if the new time was kept.
const REVOKE_SESSION: &str = r#"
local key, ends = ARGV[1] .. 'revoked:' .. ARGV[2], ARGV[3]
local kept = redis.call('GET', key)
if kept and tonumber(kept) >= tonumber(ends) then return 0 end
redis.call('SET', key, ends)
redis.call('PEXPIREAT', key, ends)
return 1
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
    update_group: Script,
    group_by_name: Script,
    add_member: Script,
    remove_member: Script,
    ban: Script,
    unban: Script,
    set_role: Script,
    membership: Script,
    members: Script,
    bans: Script,
    user_groups: Script,
    revoke_session: Script,
    backfill_skeletons: Script,
    backfilled: Script,
}

/// A membership change: the checked prelude, then `parts`.
fn checked(parts: &[&str]) -> Script {
    let mut source = CHECKED.to_string();
    for part in parts {
        source.push_str(part);
    }
    Script::new(&source)
}

/// An [`AccountStore`] in Redis, shared by every node of a cluster. Prefix search and groups
/// are supported.
pub struct RedisAccountStore {
    redis: Redis,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisAccountStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAccountStore")
            .field("redis", &self.redis)
            .finish()
    }
}

impl RedisAccountStore {
    /// Connects to the Redis `config` names and keeps accounts under `{namespace}:acct:`, after
    /// giving the names of the version before skeletons theirs (see the module docs).
    pub async fn connect(config: &RedisConfig, namespace: &str) -> Result<RedisAccountStore> {
        let redis = Redis::connect(config, namespace, "acct").await?;
        let store = RedisAccountStore {
            redis,
            scripts: Scripts {
                create_user: Script::new(CREATE_USER),
                user_by_name: Script::new(USER_BY_NAME),
                search: Script::new(SEARCH),
                create_group: Script::new(CREATE_GROUP),
                update_group: Script::new(UPDATE_GROUP),
                group_by_name: Script::new(GROUP_BY_NAME),
                add_member: checked(&[ADD_MEMBER]),
                remove_member: checked(&[REMOVE, REMOVE_MEMBER]),
                ban: checked(&[REMOVE, BAN]),
                unban: checked(&[UNBAN]),
                set_role: checked(&[SET_ROLE]),
                membership: Script::new(MEMBERSHIP),
                members: Script::new(MEMBERS),
                bans: Script::new(BANS),
                user_groups: Script::new(USER_GROUPS),
                revoke_session: Script::new(REVOKE_SESSION),
                backfill_skeletons: Script::new(BACKFILL_SKELETONS),
                backfilled: Script::new(BACKFILLED),
            },
        };
        for kind in ["user", "group"] {
            store.backfill_skeletons(kind).await?;
        }
        Ok(store)
    }

    /// Claims the skeleton of every `kind` (`user` or `group`) name above the backfill's mark,
    /// in id order, so that of two older look-alikes the earlier keeps it; the later keeps its
    /// account and no skeleton (logged). Then raises the mark to the last id walked.
    async fn backfill_skeletons(&self, kind: &str) -> Result<()> {
        const OPERATION: &str = "backfill name skeletons";
        let mut conn = self.redis.conn();
        let (upto, last): (Option<u64>, Option<u64>) = redis::pipe()
            .get(format!("{}{kind}_skeletons_upto", self.redis.prefix()))
            .get(format!("{}next_{kind}", self.redis.prefix()))
            .query_async(&mut conn)
            .await
            .map_err(|e| convert(e, OPERATION))?;
        let (mut first, last) = (upto.unwrap_or(0) + 1, last.unwrap_or(0));
        if first > last {
            return Ok(());
        }
        while first <= last {
            let ids = first..=last.min(first.saturating_add(BACKFILL_BATCH - 1));
            let mut read = redis::pipe();
            for id in ids.clone() {
                read.hget(format!("{}{kind}:{id}", self.redis.prefix()), "name");
            }
            let names: Vec<Option<String>> = read
                .query_async(&mut conn)
                .await
                .map_err(|e| convert(e, OPERATION))?;
            let named: Vec<(u64, String)> = ids
                .zip(names)
                .filter_map(|(id, name)| Some((id, name?)))
                .collect();
            let mut claim = self.redis.script(&self.scripts.backfill_skeletons);
            claim.arg(kind);
            for (id, name) in &named {
                claim.arg(id).arg(name_skeleton(name));
            }
            let look_alikes: Vec<u64> = claim
                .invoke_async(&mut conn)
                .await
                .map_err(|e| convert(e, OPERATION))?;
            for (id, name) in named.iter().filter(|(id, _)| look_alikes.contains(id)) {
                tracing::warn!(
                    id,
                    name,
                    "an older {kind} name looks like another; it keeps no skeleton"
                );
            }
            first = first.saturating_add(BACKFILL_BATCH);
        }
        self.redis
            .script(&self.scripts.backfilled)
            .arg(kind)
            .arg(last)
            .invoke_async::<()>(&mut conn)
            .await
            .map_err(|e| convert(e, OPERATION))
    }

    async fn user_with_hash(&self, name: &str) -> Result<Option<(User, PasswordHash)>> {
        let reply: Vec<String> = self
            .redis
            .script(&self.scripts.user_by_name)
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

    /// Runs a membership-change `script` (ARGV p, group, user, then `rest`) as `operation`,
    /// turning the checks' answers into errors: -1 and -2 `NotFound`, -3 `what` refused for the
    /// owner, -4 not a member; otherwise whether anything changed.
    async fn change(
        &self,
        script: &Script,
        operation: &'static str,
        (group, user): (GroupId, UserId),
        rest: &[String],
        what: &str,
    ) -> Result<bool> {
        let mut invocation = self.redis.script(script);
        invocation.arg(group.0).arg(user.0);
        for arg in rest {
            invocation.arg(arg);
        }
        let outcome: i64 = invocation
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, operation))?;
        match outcome {
            -1 => Err(no_group(group)),
            -2 => Err(no_user(user)),
            -3 => Err(Error::invalid_input(format!(
                "user {user} owns group {group} and cannot be {what}"
            ))),
            -4 => Err(Error::not_found(format!(
                "user {user} is not a member of group {group}"
            ))),
            changed => Ok(changed == 1),
        }
    }
}

fn malformed(what: &str) -> Error {
    Error::internal(format!("a {what} stored in redis is malformed"))
        .with_context("backend", "redis")
}

/// `AlreadyExists` for a `what` name whose skeleton is taken: it looks like another name.
fn looks_taken(what: &str, name: &str) -> Error {
    Error::already_exists(format!(
        "{what} name {name:?} looks like a name that is taken; choose another"
    ))
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

/// A group from its stored fields, in the order `id, name, owner, created, access, history`;
/// an empty (never written) `access` or `history` is the default, open and full.
fn group(fields: &[String]) -> Result<Group> {
    let [id, name, owner, created, access, history] = fields else {
        return Err(malformed("group"));
    };
    Ok(Group {
        id: GroupId(number(id, "group")?),
        name: name.clone(),
        owner: UserId(number(owner, "group")?),
        created_at: Timestamp(number(created, "group")?),
        access: setting(access, GroupAccess::parse, "group access")?,
        history: setting(history, GroupHistory::parse, "group history")?,
    })
}

/// A group setting from its stored name; the default if it was never written.
fn setting<T: Default>(stored: &str, parse: fn(&str) -> Option<T>, what: &str) -> Result<T> {
    if stored.is_empty() {
        return Ok(T::default());
    }
    parse(stored).ok_or_else(|| malformed(what))
}

/// The membership of `user` from its stored `role:since`; an empty one (a member added before
/// roles existed) is the owner if `user` is `owner`, a member otherwise, since 1.
fn membership(user: UserId, info: &str, owner: UserId) -> Result<Membership> {
    if info.is_empty() {
        let role = if user == owner {
            Role::Owner
        } else {
            Role::Member
        };
        return Ok(Membership {
            user,
            role,
            since: Seq(1),
        });
    }
    let (role, since) = info
        .split_once(':')
        .ok_or_else(|| malformed("member info"))?;
    Ok(Membership {
        user,
        role: Role::parse(role).ok_or_else(|| malformed("member role"))?,
        since: Seq(number(since, "member since")?),
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

/// Where a `ZRANGEBYLEX` over padded user ids starts after `cursor` (the last user id of the
/// previous page, as `what` returned it).
fn user_id_start(cursor: Option<&Cursor>, what: &str) -> Result<String> {
    match cursor {
        Some(Cursor(last)) => {
            let last = last.parse::<u64>().map_err(|_| {
                Error::invalid_input(format!(
                    "cursor {last:?} was not returned by {what}; pass back the previous page's \
                     cursor, or none for the first page"
                ))
            })?;
            Ok(format!("({}", padded(last)))
        }
        None => Ok("-".to_string()),
    }
}

/// `items`, fetched one more than `limit`, as a page whose cursor is the last item's user id.
fn page_by_user<T>(mut items: Vec<T>, limit: usize, user: impl Fn(&T) -> UserId) -> Page<T> {
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|last| Cursor(user(last).to_string()))
    } else {
        None
    };
    Page { items, next }
}

#[async_trait]
impl AccountStore for RedisAccountStore {
    fn capabilities(&self) -> AccountCapabilities {
        AccountCapabilities::ALL
    }

    async fn create_user(&self, new: NewUser) -> Result<User> {
        let created_at = Timestamp::now();
        let id: i64 = self
            .redis
            .script(&self.scripts.create_user)
            .arg(new.canonical_name())
            .arg(new.skeleton())
            .arg(new.name())
            .arg(new.password_hash().as_phc())
            .arg(created_at.0)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "create user"))?;
        match id {
            0 => Err(Error::already_exists(format!(
                "user name {:?} is taken; choose another",
                new.name()
            ))),
            -1 => Err(looks_taken("user", new.name())),
            id => Ok(User {
                id: UserId(u64::try_from(id).map_err(|_| malformed("user id"))?),
                name: new.name().to_string(),
                created_at,
            }),
        }
    }

    async fn user(&self, id: UserId) -> Result<Option<User>> {
        let fields: (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(format!("{}user:{}", self.redis.prefix(), id.0))
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
            .redis
            .script(&self.scripts.search)
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
        let settings = new.group_settings();
        let id: i64 = self
            .redis
            .script(&self.scripts.create_group)
            .arg(new.canonical_name())
            .arg(new.skeleton())
            .arg(new.name())
            .arg(new.owner().0)
            .arg(created_at.0)
            .arg(settings.access.as_str())
            .arg(settings.history.as_str())
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
            -2 => Err(looks_taken("group", new.name())),
            id => Ok(Group {
                id: GroupId(u64::try_from(id).map_err(|_| malformed("group id"))?),
                name: new.name().to_string(),
                owner: new.owner(),
                created_at,
                access: settings.access,
                history: settings.history,
            }),
        }
    }

    async fn update_group(&self, id: GroupId, settings: GroupSettings) -> Result<Group> {
        let mut fields: Vec<String> = self
            .redis
            .script(&self.scripts.update_group)
            .arg(id.0)
            .arg(settings.access.as_str())
            .arg(settings.history.as_str())
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "update group"))?;
        if fields.is_empty() {
            return Err(no_group(id));
        }
        fields.insert(0, id.to_string());
        group(&fields)
    }

    async fn group(&self, id: GroupId) -> Result<Option<Group>> {
        let fields: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(format!("{}group:{}", self.redis.prefix(), id.0))
            .arg(&["name", "owner", "created", "access", "history"])
            .query_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "get group"))?;
        if fields.first().is_none_or(Option::is_none) {
            return Ok(None);
        }
        let mut row = vec![id.to_string()];
        row.extend(fields.into_iter().map(Option::unwrap_or_default));
        group(&row).map(Some)
    }

    async fn group_by_name(&self, name: &str) -> Result<Option<Group>> {
        let reply: Vec<String> = self
            .redis
            .script(&self.scripts.group_by_name)
            .arg(canonical_name(name))
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "find group"))?;
        if reply.is_empty() {
            return Ok(None);
        }
        group(&reply).map(Some)
    }

    async fn add_member(&self, group: GroupId, user: UserId, since: Seq) -> Result<bool> {
        let outcome: i64 = self
            .redis
            .script(&self.scripts.add_member)
            .arg(group.0)
            .arg(user.0)
            .arg(padded(group.0))
            .arg(padded(user.0))
            .arg(since.0)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "add group member"))?;
        match outcome {
            -1 => Err(no_group(group)),
            -2 => Err(no_user(user)),
            -3 => Err(Error::permission_denied(format!(
                "user {user} is banned from group {group}; unban them first"
            ))),
            added => Ok(added == 1),
        }
    }

    async fn remove_member(&self, group: GroupId, user: UserId) -> Result<bool> {
        self.change(
            &self.scripts.remove_member,
            "remove group member",
            (group, user),
            &[padded(group.0), padded(user.0)],
            "removed",
        )
        .await
    }

    async fn members(
        &self,
        group: GroupId,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<Membership>> {
        let (limit, fetch) = page_size(limit)?;
        let start = user_id_start(cursor, "members")?;
        let reply: redis::Value = self
            .redis
            .script(&self.scripts.members)
            .arg(group.0)
            .arg(start)
            .arg(fetch)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "list members"))?;
        if let redis::Value::Int(-1) = reply {
            return Err(no_group(group));
        }
        let reply: Vec<String> =
            redis::FromRedisValue::from_redis_value(reply).map_err(|_| malformed("member list"))?;
        let (owner, rows) = reply
            .split_first()
            .ok_or_else(|| malformed("member list"))?;
        let owner = UserId(number(owner, "group owner")?);
        let items = rows
            .chunks(2)
            .map(|row| match row {
                [id, info] => membership(UserId(number(id, "member")?), info, owner),
                _ => Err(malformed("member list")),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(page_by_user(items, limit, |member| member.user))
    }

    async fn membership(&self, group: GroupId, user: UserId) -> Result<Option<Membership>> {
        let reply: Vec<String> = self
            .redis
            .script(&self.scripts.membership)
            .arg(group.0)
            .arg(padded(user.0))
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "get group membership"))?;
        match reply.as_slice() {
            [] => Ok(None),
            [owner, info] => {
                membership(user, info, UserId(number(owner, "group owner")?)).map(Some)
            }
            _ => Err(malformed("member info")),
        }
    }

    async fn set_role(&self, group: GroupId, user: UserId, role: Role) -> Result<()> {
        if role == Role::Owner {
            return Err(Error::invalid_input(
                "a group has one owner, its creator; make the user an admin instead",
            ));
        }
        self.change(
            &self.scripts.set_role,
            "set member role",
            (group, user),
            &[padded(user.0), role.as_str().to_string()],
            "given another role",
        )
        .await
        .map(|_| ())
    }

    async fn ban(&self, group: GroupId, user: UserId) -> Result<bool> {
        self.change(
            &self.scripts.ban,
            "ban from group",
            (group, user),
            &[padded(group.0), padded(user.0)],
            "banned",
        )
        .await
    }

    async fn unban(&self, group: GroupId, user: UserId) -> Result<bool> {
        self.change(
            &self.scripts.unban,
            "unban from group",
            (group, user),
            &[padded(user.0)],
            "unbanned",
        )
        .await
    }

    async fn bans(
        &self,
        group: GroupId,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<UserId>> {
        let (limit, fetch) = page_size(limit)?;
        let start = user_id_start(cursor, "bans")?;
        let reply: redis::Value = self
            .redis
            .script(&self.scripts.bans)
            .arg(group.0)
            .arg(start)
            .arg(fetch)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "list bans"))?;
        if let redis::Value::Int(-1) = reply {
            return Err(no_group(group));
        }
        let ids: Vec<String> =
            redis::FromRedisValue::from_redis_value(reply).map_err(|_| malformed("ban list"))?;
        let items = ids
            .iter()
            .map(|id| number(id, "ban").map(UserId))
            .collect::<Result<Vec<_>>>()?;
        Ok(page_by_user(items, limit, |user| *user))
    }

    async fn user_groups(&self, user: UserId) -> Result<Vec<Group>> {
        let reply: redis::Value = self
            .redis
            .script(&self.scripts.user_groups)
            .arg(user.0)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "list a user's groups"))?;
        if let redis::Value::Int(-1) = reply {
            return Err(no_user(user));
        }
        let rows: Vec<String> =
            redis::FromRedisValue::from_redis_value(reply).map_err(|_| malformed("group list"))?;
        rows.chunks(6).map(group).collect()
    }

    async fn revoke_session(&self, session_id: &str, until: Timestamp) -> Result<()> {
        check_session_id(session_id)?;
        if until <= Timestamp::now() {
            // Over already: nothing to revoke, and a later revocation stays as it is.
            return Ok(());
        }
        self.redis
            .script(&self.scripts.revoke_session)
            .arg(session_id)
            .arg(until.0)
            .invoke_async::<()>(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "revoke session"))?;
        Ok(())
    }

    async fn is_session_revoked(&self, session_id: &str) -> Result<bool> {
        check_session_id(session_id)?;
        let revoked: bool = redis::cmd("EXISTS")
            .arg(format!("{}revoked:{session_id}", self.redis.prefix()))
            .query_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "check session revocation"))?;
        Ok(revoked)
    }

    async fn is_member(&self, group: GroupId, user: UserId) -> Result<bool> {
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(format!("{}members:{}", self.redis.prefix(), group.0))
            .arg(padded(user.0))
            .query_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "check group membership"))?;
        Ok(score.is_some())
    }
}
