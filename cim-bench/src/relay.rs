//! The relay: a minimal message router, the practical upper bound of one hop.
//!
//! It does what every system compared must do at the least (accept connections, know which
//! connection is which user, forward a message to its recipient or to every member of a topic)
//! and nothing else: no authentication, no storage, no acknowledgements, no flow control (the
//! bench's windows bound what is in flight). Frames are forwarded as received, without
//! re-encoding. `cim-bench relay --listen ADDR` runs it as its own process so that it is
//! started, pinned and measured like the other systems.
//!
//! Each connection has a reader task, which parses frames and appends each one to its
//! recipients' outboxes, and a writer task, which writes its own outbox whenever it is not
//! empty. An outbox is a byte buffer behind a lock: forwarding a frame costs a copy, and a wake
//! only when the buffer was empty, which is how the fast servers batch their writes too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Result;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::wire::relay::{HELLO, JOIN, OK, PUBLISH, SEND, peek_frame, put_frame};

/// Read buffer size.
const READ_BYTES: usize = 64 * 1024;

/// What is waiting to be written to one connection.
#[derive(Debug, Default)]
struct Outbox {
    bytes: Mutex<BytesMut>,
    ready: Notify,
    closed: AtomicBool,
}

impl Outbox {
    /// Appends `frame`; wakes the writer if the outbox was empty.
    fn push(&self, frame: &[u8]) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let was_empty = match self.bytes.lock() {
            Ok(mut bytes) => {
                let was_empty = bytes.is_empty();
                bytes.extend_from_slice(frame);
                was_empty
            }
            Err(_) => return,
        };
        if was_empty {
            self.ready.notify_one();
        }
    }

    /// Takes everything waiting (empty if nothing).
    fn take(&self, spare: BytesMut) -> BytesMut {
        match self.bytes.lock() {
            Ok(mut bytes) => std::mem::replace(&mut *bytes, spare),
            Err(_) => spare,
        }
    }
}

/// A topic's members: (connection serial, outbox), shared when publishing.
type Members = Arc<Vec<(u64, Arc<Outbox>)>>;

/// Who is connected, and who listens to what.
#[derive(Debug, Default)]
struct Registry {
    /// By id: the connection's serial number and its outbox.
    users: RwLock<HashMap<u64, (u64, Arc<Outbox>)>>,
    /// By topic: the members (copied on change).
    topics: RwLock<HashMap<u64, Members>>,
}

/// Serves the relay on `listener` until the process is killed.
pub async fn serve(listener: TcpListener) -> Result<()> {
    let registry = Arc::new(Registry::default());
    let serial = AtomicU64::new(1);
    loop {
        let (socket, _) = listener.accept().await?;
        let _ = socket.set_nodelay(true);
        let registry = Arc::clone(&registry);
        let id = serial.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            connection(registry, socket, id).await;
        });
    }
}

async fn connection(registry: Arc<Registry>, socket: TcpStream, serial: u64) {
    let (mut reader, mut writer) = socket.into_split();
    let outbox = Arc::new(Outbox::default());
    let writing = {
        let outbox = Arc::clone(&outbox);
        tokio::spawn(async move {
            let mut spare = BytesMut::with_capacity(READ_BYTES);
            loop {
                let chunk = outbox.take(spare);
                if chunk.is_empty() {
                    spare = chunk;
                    outbox.ready.notified().await;
                    continue;
                }
                if writer.write_all(&chunk).await.is_err() {
                    outbox.closed.store(true, Ordering::Relaxed);
                    return;
                }
                spare = chunk;
                spare.clear();
            }
        })
    };
    let mut me = None;
    let mut cache: HashMap<u64, Arc<Outbox>> = HashMap::new();
    let mut buf = BytesMut::with_capacity(READ_BYTES);
    let mut ok = BytesMut::new();
    put_frame(&mut ok, OK, 0, &[]);
    'read: loop {
        if buf.capacity() - buf.len() < READ_BYTES / 4 {
            buf.reserve(READ_BYTES);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut at = 0;
        loop {
            let (kind, arg, len) = match peek_frame(&buf[at..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => break 'read,
            };
            let frame = &buf[at..at + len];
            at += len;
            match kind {
                HELLO => {
                    if let Ok(mut users) = registry.users.write() {
                        users.insert(arg, (serial, Arc::clone(&outbox)));
                    }
                    me = Some(arg);
                    outbox.push(&ok);
                }
                JOIN => {
                    if let Ok(mut topics) = registry.topics.write() {
                        let members = topics.entry(arg).or_default();
                        let mut updated = members.as_ref().clone();
                        updated.push((serial, Arc::clone(&outbox)));
                        *members = Arc::new(updated);
                    }
                    outbox.push(&ok);
                }
                SEND => {
                    let target = match cache.get(&arg) {
                        Some(target) => Some(Arc::clone(target)),
                        None => {
                            let found = registry
                                .users
                                .read()
                                .ok()
                                .and_then(|users| users.get(&arg).map(|(_, o)| Arc::clone(o)));
                            if let Some(outbox) = &found {
                                cache.insert(arg, Arc::clone(outbox));
                            }
                            found
                        }
                    };
                    // An unknown recipient: the message is dropped (no storage).
                    if let Some(target) = target {
                        target.push(frame);
                    }
                }
                PUBLISH => {
                    let members = registry
                        .topics
                        .read()
                        .ok()
                        .and_then(|topics| topics.get(&arg).cloned());
                    for (_, member) in members.iter().flat_map(|m| m.iter()) {
                        member.push(frame);
                    }
                }
                _ => {}
            }
        }
        let _ = buf.split_to(at);
    }
    if let Some(id) = me
        && let Ok(mut users) = registry.users.write()
        && users.get(&id).is_some_and(|(owner, _)| *owner == serial)
    {
        users.remove(&id);
    }
    if let Ok(mut topics) = registry.topics.write() {
        for members in topics.values_mut() {
            if members.iter().any(|(owner, _)| *owner == serial) {
                let kept = members
                    .iter()
                    .filter(|(owner, _)| *owner != serial)
                    .cloned()
                    .collect();
                *members = Arc::new(kept);
            }
        }
    }
    outbox.closed.store(true, Ordering::Relaxed);
    writing.abort();
}
