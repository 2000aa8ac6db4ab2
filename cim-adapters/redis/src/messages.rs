//! [`RedisMessageStore`]: conversation logs, delivery cursors, history and schedules in Redis.
//!
//! Appending is one Lua script: the idempotency check (a hash per sender, `client_msg_id` ->
//! entry), the conversation's next sequence (`INCR`, so gap-free under any concurrency) and the
//! insertion into the conversation's log happen together, so a message is visible exactly when
//! it and every earlier one are stored. Each log is a sorted set scored by sequence, which makes
//! history slices and "everything above my cursor" single range reads.
//!
//! Scheduling is idempotent the same way: one script looks up the sender's `client_msg_id` and
//! either answers the first entry or creates the entry and its key together, so of concurrent
//! schedules of one key exactly one keeps an entry. The retry of a schedule may come after the
//! entry was delivered, so finishing does not forget it at once: the entry leaves the waiting
//! entries (never claimed again) and its JSON moves to a key of its own that, like its
//! idempotency key, expires after [`DEDUP_WINDOW`]. Per-entry keys rather than hash fields,
//! because Redis before 7.4 cannot expire a field. The waiting entries keep the layout of the
//! version before (a hash of JSON plus the due index), so its entries are claimed and finished
//! as they were, and a node still running it claims new entries correctly during an upgrade;
//! such old entries have no idempotency key, so only schedules made since are recognised.
//!
//! Keys, with `p = {ns}:msg:` and conversations in their text form (`d:1:2`, `g:7`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `p next_id`, `p next_scheduled` | counter | the last id given out |
//! | `p seq:{conv}` | counter | the conversation's last sequence (never reset) |
//! | `p log:{conv}` | sorted set by seq | entries `seq\nid\n<NewMessage JSON>` |
//! | `p idem:{sender}` | hash | `client_msg_id` -> entry |
//! | `p direct_of:{user}` | set | the user's direct conversations, for `pending` |
//! | `p cursor:{user}` | hash | conversation -> acknowledged sequence |
//! | `p scheduled` | hash | waiting schedule id -> `ScheduledMessage` JSON |
//! | `p due` | sorted set | waiting schedule id -> when it may be claimed (ms) |
//! | `p sched_idem:{sender}:{client_msg_id}` | string | the schedule id; expires a dedup window after the finish |
//! | `p sched_idem_of` | hash | waiting schedule id -> `{sender}:{client_msg_id}`, to find that key |
//! | `p finished:{id}` | string | a finished entry's `ScheduledMessage` JSON, for retries; expires like its key |
//!
//! Keyword search and retention are not offered (the capabilities say so): a naive scan of
//! every log would not scale, and a proper inverted index is future work.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cim_core::message_store::DEDUP_WINDOW;
use cim_core::registry::{BackendOptions, BuildFuture, MessageStoreFactory};
use cim_core::{
    Appended, ConversationId, Cursor, Error, GroupId, HistoryQuery, MessageCapabilities, MessageId,
    MessageStore, NewMessage, Page, Result, Scheduled, ScheduledId, ScheduledMessage, Seq,
    StoredMessage, Timestamp, UserId,
};
use redis::Script;

use crate::RedisConfig;
use crate::connection::{Redis, convert, millis};

/// ARGV: p, sender, client_msg_id, conv, new message JSON, low, high (direct only, else '').
/// Returns {duplicate (0|1), entry}.
const APPEND: &str = r#"
local p, sender, cmid, conv, json, low, high = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local existing = redis.call('HGET', p .. 'idem:' .. sender, cmid)
if existing then return {1, existing} end
local seq = redis.call('INCR', p .. 'seq:' .. conv)
local id = redis.call('INCR', p .. 'next_id')
local entry = string.format('%d', seq) .. '\n' .. string.format('%d', id) .. '\n' .. json
redis.call('ZADD', p .. 'log:' .. conv, seq, entry)
redis.call('HSET', p .. 'idem:' .. sender, cmid, entry)
if low ~= '' then
  redis.call('SADD', p .. 'direct_of:' .. low, conv)
  redis.call('SADD', p .. 'direct_of:' .. high, conv)
end
return {0, entry}
"#;

/// ARGV: p, user, conv, up_to. Returns the last sequence if up_to is beyond it, else -1.
const ACK: &str = r#"
local p, user, conv, up_to = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local last = tonumber(redis.call('GET', p .. 'seq:' .. conv) or '0')
if up_to > last then return last end
local current = tonumber(redis.call('HGET', p .. 'cursor:' .. user, conv) or '0')
if up_to > current then redis.call('HSET', p .. 'cursor:' .. user, conv, ARGV[4]) end
return -1
"#;

/// ARGV: p, sender, client_msg_id, message JSON, deliver_at. Returns {duplicate (0|1), entry
/// JSON}: the first entry of the sender's `client_msg_id` if it is waiting or finished within
/// the dedup window, else a new one.
const SCHEDULE: &str = r#"
local p, key = ARGV[1], ARGV[2] .. ':' .. ARGV[3]
local idem = p .. 'sched_idem:' .. key
local first = redis.call('GET', idem)
if first then
  local json = redis.call('HGET', p .. 'scheduled', first) or redis.call('GET', p .. 'finished:' .. first)
  if json then return {1, json} end
  -- Finished by a node of the version before, which forgets entries at once: start over.
  redis.call('HDEL', p .. 'sched_idem_of', first)
end
local sid = string.format('%d', redis.call('INCR', p .. 'next_scheduled'))
local json = string.format('{"id":%s,"message":%s,"deliver_at":%s}', sid, ARGV[4], ARGV[5])
redis.call('HSET', p .. 'scheduled', sid, json)
redis.call('ZADD', p .. 'due', ARGV[5], sid)
redis.call('HSET', p .. 'sched_idem_of', sid, key)
redis.call('SET', idem, sid)
return {0, json}
"#;

/// ARGV: p, now, claimed_until, limit. Returns the claimed entries' JSON.
const CLAIM: &str = r#"
local p = ARGV[1]
local out = {}
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', p .. 'due', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))) do
  local json = redis.call('HGET', p .. 'scheduled', sid)
  if json then
    redis.call('ZADD', p .. 'due', ARGV[3], sid)
    table.insert(out, json)
  else
    redis.call('ZREM', p .. 'due', sid)
  end
end
return out
"#;

/// ARGV: p, id, dedup window (ms). Takes a waiting entry out of the waiting ones and keeps it,
/// with its idempotency key, for the window. An entry of the version before has no key and is
/// just removed. Returns 1 if the entry was waiting (or claimed), 0 if unknown or finished.
const FINISH: &str = r#"
local p, sid, window = ARGV[1], ARGV[2], ARGV[3]
local json = redis.call('HGET', p .. 'scheduled', sid)
if not json then return 0 end
redis.call('HDEL', p .. 'scheduled', sid)
redis.call('ZREM', p .. 'due', sid)
local key = redis.call('HGET', p .. 'sched_idem_of', sid)
if key then
  redis.call('HDEL', p .. 'sched_idem_of', sid)
  redis.call('SET', p .. 'finished:' .. sid, json, 'PX', window)
  redis.call('PEXPIRE', p .. 'sched_idem:' .. key, window)
end
return 1
"#;

/// How many log entries one read fetches while looking for pending messages.
const PENDING_BATCH: u64 = 256;

inventory::submit! {
    MessageStoreFactory::new(
        "redis",
        "Redis: per-conversation sorted-set logs, idempotent append, cursors, schedules (no search, no retention)",
        build,
    )
}

fn build(options: BackendOptions) -> BuildFuture<dyn MessageStore> {
    Box::pin(async move {
        let config: RedisConfig = options.parse()?;
        let store = RedisMessageStore::connect(&config, options.namespace()).await?;
        Ok(Arc::new(store) as Arc<dyn MessageStore>)
    })
}

struct Scripts {
    append: Script,
    ack: Script,
    schedule: Script,
    claim: Script,
    finish: Script,
}

/// A [`MessageStore`] in Redis, shared by every node of a cluster.
///
/// Append, history, cursors and scheduling are supported; keyword search and retention are not.
/// Messages outlive cim processes; whether they outlive a Redis restart is Redis's persistence
/// configuration (enable AOF).
pub struct RedisMessageStore {
    redis: Redis,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisMessageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMessageStore")
            .field("redis", &self.redis)
            .finish()
    }
}

impl RedisMessageStore {
    /// The append script's invocation for `message`, validated and encoded.
    fn append_invocation(&self, message: &NewMessage) -> Result<redis::ScriptInvocation<'_>> {
        message.validate()?;
        let conversation = message.conversation();
        let (low, high) = match conversation {
            ConversationId::Direct { low, high } => (low.to_string(), high.to_string()),
            ConversationId::Group(_) => (String::new(), String::new()),
        };
        let json = serde_json::to_string(message)
            .map_err(|e| Error::invalid_input("the message cannot be encoded").with_source(e))?;
        let mut invocation = self.redis.script(&self.scripts.append);
        invocation
            .arg(message.sender.0)
            .arg(&message.client_msg_id)
            .arg(conversation.to_string())
            .arg(json)
            .arg(low)
            .arg(high);
        Ok(invocation)
    }

    /// Connects to the Redis `config` names and keeps messages under `{namespace}:msg:`.
    pub async fn connect(config: &RedisConfig, namespace: &str) -> Result<RedisMessageStore> {
        let redis = Redis::connect(config, namespace, "msg").await?;
        Ok(RedisMessageStore {
            redis,
            scripts: Scripts {
                append: Script::new(APPEND),
                ack: Script::new(ACK),
                schedule: Script::new(SCHEDULE),
                claim: Script::new(CLAIM),
                finish: Script::new(FINISH),
            },
        })
    }

    fn key(&self, kind: &str, name: impl std::fmt::Display) -> String {
        format!("{}{kind}:{name}", self.redis.prefix())
    }

    /// Log entries of `conversation` read by `command` (`ZRANGEBYSCORE` or `ZREVRANGEBYSCORE`).
    async fn range(
        &self,
        conversation: ConversationId,
        command: &str,
        from: String,
        to: String,
        count: u64,
    ) -> Result<Vec<StoredMessage>> {
        let entries: Vec<String> = redis::cmd(command)
            .arg(self.key("log", conversation))
            .arg(from)
            .arg(to)
            .arg("LIMIT")
            .arg(0)
            .arg(count)
            .query_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "read conversation"))?;
        entries.iter().map(|entry| decode_entry(entry)).collect()
    }
}

fn malformed(what: &str) -> Error {
    Error::internal(format!("a {what} stored in redis is malformed"))
        .with_context("backend", "redis")
}

/// What the append script answered, as an [`Appended`].
fn appended(duplicate: i64, entry: &str) -> Result<Appended> {
    Ok(Appended {
        message: decode_entry(entry)?,
        duplicate: duplicate == 1,
    })
}

/// Decodes `seq\nid\n<NewMessage JSON>`.
fn decode_entry(entry: &str) -> Result<StoredMessage> {
    let mut parts = entry.splitn(3, '\n');
    let (Some(seq), Some(id), Some(json)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed("message"));
    };
    let seq = seq.parse::<u64>().map_err(|_| malformed("message"))?;
    let id = id.parse::<u64>().map_err(|_| malformed("message"))?;
    let message: NewMessage = serde_json::from_str(json).map_err(|_| malformed("message"))?;
    Ok(StoredMessage {
        id: MessageId(id),
        conversation: message.conversation(),
        seq: Seq(seq),
        sender: message.sender,
        to: message.to,
        client_msg_id: message.client_msg_id,
        body: message.body,
        sent_at: message.sent_at,
    })
}

/// Decodes a schedule entry's `ScheduledMessage` JSON.
fn decode_scheduled(json: &str) -> Result<ScheduledMessage> {
    serde_json::from_str(json).map_err(|_| malformed("scheduled message"))
}

fn page_size(limit: u32) -> Result<u64> {
    if limit == 0 {
        return Err(Error::invalid_input("a page needs a limit of at least 1"));
    }
    Ok(u64::from(limit))
}

fn pending_cursor(message: &StoredMessage) -> Cursor {
    Cursor(format!("{}/{}", message.conversation, message.seq))
}

fn parse_pending_cursor(Cursor(text): &Cursor) -> Result<(ConversationId, Seq)> {
    let parsed = text
        .rsplit_once('/')
        .and_then(|(conversation, seq)| Some((conversation.parse().ok()?, seq.parse().ok()?)));
    parsed.ok_or_else(|| {
        Error::invalid_input(format!(
            "cursor {text:?} was not returned by pending; pass back the previous page's cursor, \
             or none for the first page"
        ))
    })
}

#[async_trait]
impl MessageStore for RedisMessageStore {
    fn capabilities(&self) -> MessageCapabilities {
        let mut capabilities = MessageCapabilities::NONE;
        capabilities.scheduling = true;
        capabilities.durable = true;
        capabilities
    }

    async fn append(&self, message: NewMessage) -> Result<Appended> {
        let (duplicate, entry): (i64, String) = self
            .append_invocation(&message)?
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "append"))?;
        appended(duplicate, &entry)
    }

    /// One round trip for the whole batch: the append scripts go out in one pipeline (one
    /// write, one read of every answer), executed in order by Redis like appends one after
    /// another. A message whose script Redis did not have (restarted, `SCRIPT FLUSH`) is
    /// appended again on its own, which loads it; its script never ran, so nothing is stored
    /// twice.
    async fn append_all(&self, messages: Vec<NewMessage>) -> Vec<Result<Appended>> {
        if messages.len() < 2 {
            let mut results = Vec::with_capacity(messages.len());
            for message in messages {
                results.push(self.append(message).await);
            }
            return results;
        }
        let mut results: Vec<Option<Result<Appended>>> = Vec::with_capacity(messages.len());
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut piped = Vec::with_capacity(messages.len());
        for (index, message) in messages.iter().enumerate() {
            match self.append_invocation(message) {
                Ok(invocation) => {
                    pipe.invoke_script(&invocation);
                    piped.push(index);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let replies: Vec<redis::RedisResult<(i64, String)>> =
            match pipe.query_async(&mut self.redis.conn()).await {
                Ok(replies) => replies,
                Err(e) => {
                    // The batch's fate is unknown as a whole (the connection dropped, say):
                    // every message gets the error, and a retry finds what was stored.
                    let error = convert(e, "append");
                    for index in &piped {
                        results[*index] = Some(Err(Error::new(error.kind(), error.message())
                            .with_context("backend", "redis")
                            .with_context("operation", "append")));
                    }
                    Vec::new()
                }
            };
        let mut unloaded = Vec::new();
        for (index, reply) in piped.iter().zip(replies) {
            results[*index] = Some(match reply {
                Ok((duplicate, entry)) => appended(duplicate, &entry),
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    unloaded.push(*index);
                    continue;
                }
                Err(e) => Err(convert(e, "append")),
            });
        }
        for index in unloaded {
            results[index] = Some(self.append(messages[index].clone()).await);
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(Error::internal(
                        "redis answered fewer appends than it was sent",
                    ))
                })
            })
            .collect()
    }

    async fn history(
        &self,
        conversation: ConversationId,
        query: HistoryQuery,
    ) -> Result<Vec<StoredMessage>> {
        let limit = page_size(query.limit)?;
        let bound = |seq: Seq| format!("({}", seq.0);
        match (query.after, query.before) {
            (None, None) => {
                let mut messages = self
                    .range(
                        conversation,
                        "ZREVRANGEBYSCORE",
                        "+inf".into(),
                        "-inf".into(),
                        limit,
                    )
                    .await?;
                messages.reverse();
                Ok(messages)
            }
            (Some(after), None) => {
                self.range(
                    conversation,
                    "ZRANGEBYSCORE",
                    bound(after),
                    "+inf".into(),
                    limit,
                )
                .await
            }
            (None, Some(before)) => {
                let mut messages = self
                    .range(
                        conversation,
                        "ZREVRANGEBYSCORE",
                        bound(before),
                        "-inf".into(),
                        limit,
                    )
                    .await?;
                messages.reverse();
                Ok(messages)
            }
            (Some(after), Some(before)) => {
                self.range(
                    conversation,
                    "ZRANGEBYSCORE",
                    bound(after),
                    bound(before),
                    limit,
                )
                .await
            }
        }
    }

    async fn last_seq(&self, conversation: ConversationId) -> Result<Seq> {
        let last: Option<u64> = redis::cmd("GET")
            .arg(self.key("seq", conversation))
            .query_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "last sequence"))?;
        Ok(Seq(last.unwrap_or(0)))
    }

    async fn pending(
        &self,
        user: UserId,
        groups: &[GroupId],
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<StoredMessage>> {
        let limit = usize::try_from(page_size(limit)?).unwrap_or(usize::MAX);
        let resume = cursor.map(parse_pending_cursor).transpose()?;
        let direct: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("direct_of", user))
            .query_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "pending"))?;
        let mut conversations = BTreeSet::new();
        for text in &direct {
            conversations.insert(
                text.parse::<ConversationId>()
                    .map_err(|_| malformed("conversation"))?,
            );
        }
        conversations.extend(groups.iter().map(|group| ConversationId::Group(*group)));
        let acknowledged: std::collections::HashMap<String, u64> = redis::cmd("HGETALL")
            .arg(self.key("cursor", user))
            .query_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "pending"))?;

        // One more than a page, to know whether another page follows.
        let mut items: Vec<StoredMessage> = Vec::new();
        let wanted = limit + 1;
        let start = resume.map(|(conversation, _)| conversation);
        for conversation in conversations
            .into_iter()
            .filter(|c| start.is_none_or(|start| *c >= start))
        {
            let mut after = acknowledged
                .get(&conversation.to_string())
                .copied()
                .unwrap_or(0);
            if let Some((resumed, seq)) = resume
                && resumed == conversation
            {
                after = after.max(seq.0);
            }
            while items.len() < wanted {
                let batch = self
                    .range(
                        conversation,
                        "ZRANGEBYSCORE",
                        format!("({after}"),
                        "+inf".into(),
                        PENDING_BATCH,
                    )
                    .await?;
                let full = batch.len() as u64 == PENDING_BATCH;
                if let Some(last) = batch.last() {
                    after = last.seq.0;
                }
                items.extend(batch.into_iter().filter(|m| m.sender != user));
                if !full {
                    break;
                }
            }
            if items.len() >= wanted {
                break;
            }
        }
        let more = items.len() > limit;
        items.truncate(limit);
        let next = items.last().filter(|_| more).map(pending_cursor);
        Ok(Page { items, next })
    }

    async fn ack(&self, user: UserId, conversation: ConversationId, up_to: Seq) -> Result<()> {
        let last: i64 = self
            .redis
            .script(&self.scripts.ack)
            .arg(user.0)
            .arg(conversation.to_string())
            .arg(up_to.0)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "ack"))?;
        if last >= 0 {
            return Err(Error::invalid_input(format!(
                "cannot acknowledge {conversation} up to {up_to}: its last message is {last}"
            )));
        }
        Ok(())
    }

    async fn delivered_up_to(&self, user: UserId, conversation: ConversationId) -> Result<Seq> {
        let seq: Option<u64> = redis::cmd("HGET")
            .arg(self.key("cursor", user))
            .arg(conversation.to_string())
            .query_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "delivery cursor"))?;
        Ok(Seq(seq.unwrap_or(0)))
    }

    async fn search(
        &self,
        _user: UserId,
        _groups: &[GroupId],
        _query: &str,
        _cursor: Option<&Cursor>,
        _limit: u32,
    ) -> Result<Page<StoredMessage>> {
        Err(Error::unsupported("message search on redis"))
    }

    async fn delete_before(&self, _cutoff: Timestamp) -> Result<u64> {
        Err(Error::unsupported("message retention on redis"))
    }

    async fn schedule(&self, message: NewMessage, deliver_at: Timestamp) -> Result<Scheduled> {
        message.validate()?;
        let json = serde_json::to_string(&message)
            .map_err(|e| Error::invalid_input("the message cannot be encoded").with_source(e))?;
        let (duplicate, entry): (i64, String) = self
            .redis
            .script(&self.scripts.schedule)
            .arg(message.sender.0)
            .arg(&message.client_msg_id)
            .arg(json)
            .arg(deliver_at.0)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "schedule"))?;
        Ok(Scheduled {
            entry: decode_scheduled(&entry)?,
            duplicate: duplicate == 1,
        })
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        claim_for: Duration,
        limit: u32,
    ) -> Result<Vec<ScheduledMessage>> {
        let limit = page_size(limit)?;
        let claimed: Vec<String> = self
            .redis
            .script(&self.scripts.claim)
            .arg(now.0)
            .arg(now.plus(claim_for).0)
            .arg(limit)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "claim scheduled messages"))?;
        claimed.iter().map(|json| decode_scheduled(json)).collect()
    }

    async fn finish_scheduled(&self, id: ScheduledId) -> Result<()> {
        let finished: i64 = self
            .redis
            .script(&self.scripts.finish)
            .arg(id.0)
            .arg(millis(DEDUP_WINDOW))
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| convert(e, "finish scheduled message"))?;
        if finished == 0 {
            return Err(Error::not_found(format!(
                "scheduled message {id} does not exist (finished already, or never scheduled)"
            )));
        }
        Ok(())
    }
}
