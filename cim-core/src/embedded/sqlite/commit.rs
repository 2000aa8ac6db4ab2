//! Group commit: the writes on the hot path (appends and cursor moves) of every caller go to
//! one writer task, which commits as many as are waiting in one transaction.
//!
//! SQLite has one writer at a time and, with `synchronous = FULL`, every commit waits for the
//! disk. One transaction per append therefore caps a node at one append per disk flush, with
//! every other writer queued on the file lock. Here the writer takes everything waiting (up to
//! [`MAX_GROUP`]), writes it in one `BEGIN IMMEDIATE` transaction, commits once, and only then
//! answers each caller: an append is acknowledged only after the commit that made it durable,
//! and a crash before that commit loses only appends nobody was told about. Under light load a
//! group is a single write, committed at once, so latency does not suffer.
//!
//! If a group fails (a full disk, a broken file), its writes are tried again one transaction
//! each, so one write that cannot succeed fails alone and the others get their own answer. A
//! caller that stops waiting does not undo its write: a retry of an append is recognised by its
//! idempotency key.

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::error::During;
use super::messages::{ack_in, append_in};
use crate::{Appended, ConversationId, Error, NewMessage, Result, Seq, UserId};

/// Writes committed in one transaction at most.
const MAX_GROUP: usize = 256;
/// Writes waiting for the writer at most; callers beyond wait for room.
const QUEUE: usize = 4096;

/// A write the writer task commits in a group.
#[derive(Debug)]
pub(super) enum Write {
    /// [`MessageStore::append`](crate::MessageStore::append) of a validated message.
    Append(NewMessage),
    /// [`MessageStore::ack`](crate::MessageStore::ack).
    Ack {
        user: UserId,
        conversation: ConversationId,
        up_to: Seq,
    },
}

/// What a [`Write`] did.
#[derive(Debug)]
pub(super) enum Written {
    Appended(Appended),
    Acked,
}

struct Job {
    write: Write,
    done: oneshot::Sender<Result<Written>>,
}

/// The handle on the writer task; the task ends when the last handle is dropped.
#[derive(Debug)]
pub(super) struct Committer {
    jobs: mpsc::Sender<Job>,
}

impl Committer {
    /// Starts the writer task on the current tokio runtime.
    pub(super) fn start(pool: SqlitePool) -> Committer {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, queue));
        Committer { jobs }
    }

    /// Whether the writer task still runs (it dies with the runtime that started it).
    pub(super) fn is_running(&self) -> bool {
        !self.jobs.is_closed()
    }

    /// Commits `write` with whatever else is waiting; returns once it is committed.
    pub(super) async fn write(&self, write: Write) -> Result<Written> {
        self.queue(write).await.await
    }

    /// Queues `write` behind every write queued before it (waiting for room if the queue is
    /// full); the answer comes once it is committed. Writes queued one after another without
    /// awaiting their answers are committed together, in order.
    pub(super) async fn queue(&self, write: Write) -> impl Future<Output = Result<Written>> {
        let (done, answer) = oneshot::channel();
        let queued = self.jobs.send(Job { write, done }).await;
        async move {
            queued.map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        }
    }
}

fn stopped() -> Error {
    Error::unavailable("the SQLite writer stopped (the store is closing); retry")
        .with_context("backend", "sqlite")
}

/// The writer: a group per turn, until every handle is gone.
async fn run(pool: SqlitePool, mut queue: mpsc::Receiver<Job>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        commit_group(&pool, std::mem::take(&mut group)).await;
    }
}

/// Commits `group` in one transaction and answers each job; on failure, each job alone.
async fn commit_group(pool: &SqlitePool, group: Vec<Job>) {
    let writes: Vec<&Write> = group.iter().map(|job| &job.write).collect();
    match commit(pool, &writes).await {
        Ok(results) => {
            for (job, result) in group.into_iter().zip(results) {
                let _ = job.done.send(result);
            }
        }
        Err(e) if group.len() == 1 => {
            if let Some(job) = group.into_iter().next() {
                let _ = job.done.send(Err(e));
            }
        }
        Err(e) => {
            tracing::warn!(writes = group.len(), error = %e, "a SQLite group commit failed; committing its writes one by one");
            for job in group {
                let result = match commit(pool, &[&job.write]).await {
                    Ok(mut results) => results.pop().unwrap_or_else(|| Err(stopped())),
                    Err(e) => Err(e),
                };
                let _ = job.done.send(result);
            }
        }
    }
}

/// Writes `writes` in one transaction: each write's own result (an ack beyond the
/// conversation's end is refused alone), or the error that rolled the whole transaction back.
async fn commit(pool: &SqlitePool, writes: &[&Write]) -> Result<Vec<Result<Written>>> {
    const OPERATION: &str = "group commit";
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.during(OPERATION)?;
    let mut results = Vec::with_capacity(writes.len());
    for write in writes {
        let result = match write {
            Write::Append(message) => append_in(&mut tx, message).await?.map(Written::Appended),
            Write::Ack {
                user,
                conversation,
                up_to,
            } => ack_in(&mut tx, *user, *conversation, *up_to)
                .await?
                .map(|()| Written::Acked),
        };
        results.push(result);
    }
    tx.commit().await.during(OPERATION)?;
    Ok(results)
}
