//! Group commit: the writes on the hot path (appends and cursor moves) of every caller go to
//! one writer thread, which commits as many as are waiting in one transaction.
//!
//! SQLite has one writer at a time and, with `synchronous = FULL`, every commit waits for the
//! disk. One transaction per append therefore caps a node at one append per disk flush, with
//! every other writer queued on the file lock. Here the writer takes everything waiting (up to
//! [`MAX_GROUP`]), writes it in one `BEGIN IMMEDIATE` transaction, commits once, and only then
//! answers each caller: an append is acknowledged only after the commit that made it durable,
//! and a crash before that commit loses only appends nobody was told about. Under light load a
//! group is a single write, committed at once, so latency does not suffer.
//!
//! The writer is an OS thread of its own with its own synchronous connection (rusqlite) and
//! cached prepared statements: a statement is a function call, not a message to a connection's
//! worker thread and back, so a group of a few hundred appends costs one wake-up each way
//! instead of several per statement. Reads stay on the sqlx pool, beside it (WAL lets them).
//!
//! If a group fails (a full disk, a broken file), its writes are tried again one transaction
//! each, so one write that cannot succeed fails alone and the others get their own answer. A
//! caller that stops waiting does not undo its write: a retry of an append is recognised by its
//! idempotency key.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

use super::error::During;
use super::messages::{ack_in, append_in};
use super::search_index::SearchIndex;
use super::{BUSY_TIMEOUT, error};
use crate::{Appended, ConversationId, Error, NewMessage, Result, Seq, UserId};

/// Writes committed in one transaction at most.
const MAX_GROUP: usize = 256;
/// Writes waiting for the writer at most; callers beyond wait for room.
const QUEUE: usize = 4096;
/// Statements the writer keeps prepared (it runs ten distinct ones).
const STATEMENT_CACHE: usize = 16;

/// A write the writer thread commits in a group.
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

/// What the writer thread is asked to do.
enum Request {
    Write(Job),
    /// Commit what came before, close the connection, answer, and stop.
    Close(oneshot::Sender<()>),
}

/// The handle on the writer thread; the thread ends when the last handle is dropped or
/// [`Committer::close`] is called.
#[derive(Debug)]
pub(super) struct Committer {
    requests: mpsc::Sender<Request>,
}

impl Committer {
    /// Opens the writer's connection on `path` (whose schema is up to date) and starts the
    /// writer thread.
    pub(super) async fn start(path: &Path) -> Result<Committer> {
        let (requests, queue) = mpsc::channel(QUEUE);
        let (opened, open_result) = oneshot::channel();
        let file = path.to_path_buf();
        std::thread::Builder::new()
            .name("cim-sqlite-writer".to_string())
            .spawn(move || match open(&file) {
                Ok((connection, index)) => {
                    let _ = opened.send(Ok(()));
                    run(connection, index, queue);
                }
                Err(e) => {
                    let _ = opened.send(Err(e));
                }
            })
            .map_err(|e| {
                Error::unavailable(format!("cannot start the SQLite writer thread: {e}"))
                    .with_context("backend", "sqlite")
                    .with_source(e)
            })?;
        open_result.await.map_err(|_| stopped())??;
        Ok(Committer { requests })
    }

    /// Whether the writer thread still takes writes.
    pub(super) fn is_running(&self) -> bool {
        !self.requests.is_closed()
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
        let queued = self
            .requests
            .send(Request::Write(Job { write, done }))
            .await;
        async move {
            queued.map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        }
    }

    /// Commits every write queued so far, closes the writer's connection and stops the thread;
    /// writes queued afterwards fail with [`Unavailable`](crate::ErrorKind::Unavailable).
    pub(super) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.requests.send(Request::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
    }
}

fn stopped() -> Error {
    Error::unavailable("the SQLite writer stopped (the store is closing); retry")
        .with_context("backend", "sqlite")
}

/// The writer's connection: the same settings as the pool's (see the module documentation
/// of `sqlite`), and room for the statements it prepares; and the search index's backlog.
fn open(path: &Path) -> Result<(Connection, SearchIndex)> {
    const OPERATION: &str = "open the writer";
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags)
        .map_err(|e| error::sqlite_error(OPERATION, e).with_context("file", path.display()))?;
    connection.busy_timeout(BUSY_TIMEOUT).during(OPERATION)?;
    connection
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
        .during(OPERATION)?;
    connection
        .pragma_update(None, "synchronous", "FULL")
        .during(OPERATION)?;
    connection
        .pragma_update(None, "foreign_keys", true)
        .during(OPERATION)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let index = SearchIndex::open(&connection)?;
    Ok((connection, index))
}

/// The writer: a group per turn (everything waiting, up to [`MAX_GROUP`]), until every handle
/// is gone or it is told to close; between groups, the search index catches up (see the
/// `search_index` module): whenever no write is waiting, and at once when it falls too far
/// behind.
fn run(mut connection: Connection, mut index: SearchIndex, mut queue: mpsc::Receiver<Request>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    loop {
        let first = match queue.try_recv() {
            Ok(request) => request,
            Err(TryRecvError::Empty) if index.has_work() => {
                index.index_batch(&mut connection);
                continue;
            }
            Err(TryRecvError::Empty) => match queue.blocking_recv() {
                Some(request) => request,
                None => return,
            },
            Err(TryRecvError::Disconnected) => return,
        };
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Write(job) => group.push(job),
                Request::Close(done) => {
                    index.committed(commit_group(&mut connection, std::mem::take(&mut group)));
                    // Leave the file fully indexed, so the next open starts with no tail.
                    while index.has_work() {
                        index.index_batch(&mut connection);
                    }
                    drop(connection);
                    let _ = done.send(());
                    return;
                }
            }
            if group.len() < MAX_GROUP {
                next = queue.try_recv().ok();
            }
        }
        index.committed(commit_group(&mut connection, std::mem::take(&mut group)));
        if index.is_overdue() {
            index.index_batch(&mut connection);
        }
    }
}

/// Commits `group` in one transaction and answers each job; on failure, each job alone.
/// Returns how many new messages it committed.
fn commit_group(connection: &mut Connection, group: Vec<Job>) -> usize {
    if group.is_empty() {
        return 0;
    }
    let writes: Vec<&Write> = group.iter().map(|job| &job.write).collect();
    let mut appended = 0;
    let mut answer = |job: Job, result: Result<Written>| {
        if matches!(&result, Ok(Written::Appended(a)) if !a.duplicate) {
            appended += 1;
        }
        let _ = job.done.send(result);
    };
    match commit(connection, &writes) {
        Ok(results) => {
            for (job, result) in group.into_iter().zip(results) {
                answer(job, result);
            }
        }
        Err(e) if group.len() == 1 => {
            if let Some(job) = group.into_iter().next() {
                answer(job, Err(e));
            }
        }
        Err(e) => {
            tracing::warn!(writes = group.len(), error = %e, "a SQLite group commit failed; committing its writes one by one");
            for job in group {
                let result = match commit(connection, &[&job.write]) {
                    Ok(mut results) => results.pop().unwrap_or_else(|| Err(stopped())),
                    Err(e) => Err(e),
                };
                answer(job, result);
            }
        }
    }
    appended
}

/// Writes `writes` in one transaction: each write's own result (an ack beyond the
/// conversation's end is refused alone), or the error that rolled the whole transaction back.
fn commit(connection: &mut Connection, writes: &[&Write]) -> Result<Vec<Result<Written>>> {
    const OPERATION: &str = "group commit";
    // Dropped without a commit, the transaction rolls back.
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .during(OPERATION)?;
    let mut results = Vec::with_capacity(writes.len());
    for write in writes {
        let result = match write {
            Write::Append(message) => append_in(&tx, message)?.map(Written::Appended),
            Write::Ack {
                user,
                conversation,
                up_to,
            } => ack_in(&tx, *user, *conversation, *up_to)?.map(|()| Written::Acked),
        };
        results.push(result);
    }
    tx.commit().during(OPERATION)?;
    Ok(results)
}
