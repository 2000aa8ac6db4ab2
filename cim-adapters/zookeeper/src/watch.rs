//! The watch task of the meta store: why its events are exact, and when it resyncs.
//!
//! Each watcher holds a persistent recursive watch on `{root}/{namespace}/meta` (ZooKeeper 3.6+)
//! in the store's session. ZooKeeper delivers a session's events in the order the changes
//! happened, and before the answer to any later read on that session. The task turns them into
//! [`MetaEvent`]s:
//!
//! - a new [journal](crate::journal) entry: read it (it never changes) and report `Added` or
//!   `Updated` with exactly the information of that change, so that every watcher reports the
//!   same history however late it reads;
//! - the deletion of `servers/{id}`: `Removed`, whoever deleted it (deregistration, a dropped
//!   registration, an expired session).
//!
//! A snapshot is read in two steps: one multi-read of the children of `servers/` and of the
//! journal's `cversion` (the sequence number the next entry will get), then the data of each
//! server with its `czxid`/`mzxid`. Journal entries numbered below that `cversion` are in the
//! snapshot; a newer one may be too (it raced with the second step), which its own zxid tells:
//! an entry's `czxid` is the zxid of the change it records, so a change at or below the zxids the
//! snapshot read for that server is skipped. A deletion is checked against what exists now: if
//! the node the watcher knows (same `czxid`) is still there, an older node of the id went, and
//! nothing is reported.
//!
//! A fresh snapshot replaces what the watcher may have missed: after the connection came back
//! (ZooKeeper may drop events during a reconnection, ZOOKEEPER-4698), after the session expired
//! (a new session, a new watch), when a journal entry was trimmed before it could be read, and
//! when the consumer fell a full buffer behind: events are then dropped rather than queued
//! without bound, and the snapshot goes out as soon as there is room.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cim_core::{Error, MetaEvent, Result, ServerId, ServerInfo};
use tokio::sync::{mpsc, watch};
use zookeeper_client::{
    self as zk, Client, EventType, MultiReadResult, PersistentWatcher, SessionState, WatchedEvent,
};

use crate::connection::convert;
use crate::journal::{self, Change};
use crate::meta::Inner;

/// The first pause between attempts to reach ZooKeeper again; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// What a watcher knows of one server: its information and the zxids of its node.
#[derive(Debug, Clone)]
pub(crate) struct Known {
    info: ServerInfo,
    /// The zxid that created the node (its registration).
    czxid: i64,
    /// The zxid of its last change.
    mzxid: i64,
}

/// The live servers at one point, and where the journal stood then.
#[derive(Debug)]
pub(crate) struct Snapshot {
    servers: BTreeMap<ServerId, Known>,
    /// Journal entries numbered below this are covered by the snapshot.
    floor: i64,
}

impl Snapshot {
    /// The servers, ordered by id.
    pub(crate) fn servers(&self) -> Vec<ServerInfo> {
        self.servers
            .values()
            .map(|known| known.info.clone())
            .collect()
    }
}

/// Reads a snapshot on `client`'s session (the one holding the watch).
pub(crate) async fn snapshot(inner: &Inner, client: &Client) -> Result<Snapshot> {
    let paths = &inner.paths;
    let mut reader = client.new_multi_reader();
    reader
        .add_get_children(&paths.servers)
        .map_err(|e| convert(e, "watch"))?;
    reader
        .add_get_data(&paths.events)
        .map_err(|e| convert(e, "watch"))?;
    let mut results = inner.zk.call("watch", reader.commit()).await?.into_iter();
    let names = match results.next() {
        Some(MultiReadResult::Children { children }) => children,
        Some(MultiReadResult::Error {
            err: zk::Error::NoNode,
        }) => Vec::new(),
        Some(MultiReadResult::Error { err }) => return Err(convert(err, "watch")),
        _ => return Err(Error::internal("ZooKeeper answered a multi-read oddly")),
    };
    let floor = match results.next() {
        Some(MultiReadResult::Data { stat, .. }) => i64::from(stat.cversion),
        Some(MultiReadResult::Error {
            err: zk::Error::NoNode,
        }) => 0,
        Some(MultiReadResult::Error { err }) => return Err(convert(err, "watch")),
        _ => return Err(Error::internal("ZooKeeper answered a multi-read oddly")),
    };
    let servers = inner
        .read_servers(client, &names)
        .await?
        .into_iter()
        .map(|(info, stat)| {
            let known = Known {
                info,
                czxid: stat.czxid,
                mzxid: stat.mzxid,
            };
            (known.info.id.clone(), known)
        })
        .collect();
    Ok(Snapshot { servers, floor })
}

/// What to do after an event.
enum Flow {
    Continue,
    /// The session ended: its watcher must not be polled again.
    SessionEnded,
    /// The stream was dropped.
    Stop,
}

/// One watcher's task.
pub(crate) struct Watcher {
    inner: Arc<Inner>,
    events: mpsc::Sender<Result<MetaEvent>>,
    shutdown: watch::Receiver<()>,
    known: BTreeMap<ServerId, Known>,
    floor: i64,
    /// A snapshot must go out before anything else.
    resync: bool,
    /// The connection was lost and has not come back yet.
    disconnected: bool,
    /// An error was sent for the current outage (one is enough; the snapshot ends it).
    reported: bool,
}

impl Watcher {
    /// A task that goes on from `snapshot` (already sent to `events`).
    pub(crate) fn new(
        inner: Arc<Inner>,
        events: mpsc::Sender<Result<MetaEvent>>,
        shutdown: watch::Receiver<()>,
        snapshot: Snapshot,
    ) -> Watcher {
        Watcher {
            inner,
            events,
            shutdown,
            known: snapshot.servers,
            floor: snapshot.floor,
            resync: false,
            disconnected: false,
            reported: false,
        }
    }

    /// Follows `watch` (a client and its watch, taken before the snapshot was read), and the
    /// watches of the sessions after it, until the store or the stream is dropped.
    pub(crate) async fn run(mut self, watch: (Client, PersistentWatcher)) {
        let mut session = Some(watch);
        let mut pause = FIRST_PAUSE;
        loop {
            let Some((client, watcher)) = session.as_mut() else {
                let opened = tokio::select! {
                    _ = self.shutdown.changed() => return,
                    _ = self.events.closed() => return,
                    opened = open(&self.inner) => opened,
                };
                match opened {
                    Ok(opened) => {
                        session = Some(opened);
                        self.resync = true;
                        self.disconnected = false;
                    }
                    Err(error) => {
                        if let Flow::Stop = self.report(error) {
                            return;
                        }
                        if !self.pause(&mut pause).await {
                            return;
                        }
                    }
                }
                continue;
            };
            if self.resync {
                // Room first: the snapshot must go out right after it is read.
                let events = self.events.clone();
                let permit = tokio::select! {
                    _ = self.shutdown.changed() => return,
                    permit = events.reserve() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                    event = watcher.changed() => {
                        // The snapshot covers node events; only the session's state matters.
                        if event.event_type == EventType::Session
                            && let Flow::SessionEnded = self.on_session(event.session_state)
                        {
                            session = None;
                        }
                        continue;
                    }
                };
                match snapshot(&self.inner, client).await {
                    Ok(snapshot) => {
                        permit.send(Ok(MetaEvent::Snapshot(snapshot.servers())));
                        self.known = snapshot.servers;
                        self.floor = snapshot.floor;
                        self.resync = false;
                        self.reported = false;
                        pause = FIRST_PAUSE;
                    }
                    Err(error) => {
                        if self.reported {
                            drop(permit);
                        } else {
                            self.reported = true;
                            permit.send(Err(error));
                        }
                        if client.state().is_terminated() {
                            session = None;
                        }
                        if !self.pause(&mut pause).await {
                            return;
                        }
                    }
                }
                continue;
            }
            let event = tokio::select! {
                _ = self.shutdown.changed() => return,
                _ = self.events.closed() => return,
                event = watcher.changed() => event,
            };
            match self.handle(client, event).await {
                Flow::Continue => {}
                Flow::SessionEnded => session = None,
                Flow::Stop => return,
            }
        }
    }

    async fn handle(&mut self, client: &Client, event: WatchedEvent) -> Flow {
        match event.event_type {
            EventType::Session => self.on_session(event.session_state),
            // A snapshot is due and replaces it.
            _ if self.resync => Flow::Continue,
            EventType::NodeCreated => match self.entry_name(&event.path) {
                Some(name) => self.on_entry(client, name).await,
                None => Flow::Continue,
            },
            EventType::NodeDeleted => match self.server_of(&event.path) {
                Some(id) => self.on_deleted(client, id).await,
                None => Flow::Continue,
            },
            _ => Flow::Continue,
        }
    }

    fn on_session(&mut self, state: SessionState) -> Flow {
        match state {
            SessionState::Disconnected => {
                self.disconnected = true;
                self.report(Error::unavailable(
                    "lost the connection to ZooKeeper; a fresh snapshot follows once it is back",
                ))
            }
            SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                if self.disconnected {
                    // Events of the reconnection may be lost (ZOOKEEPER-4698).
                    self.disconnected = false;
                    self.resync = true;
                }
                Flow::Continue
            }
            ended => {
                self.resync = true;
                match self.report(Error::unavailable(format!(
                    "the ZooKeeper session of this watch ended ({ended}); a fresh snapshot follows \
                     in a new session"
                ))) {
                    Flow::Stop => Flow::Stop,
                    _ => Flow::SessionEnded,
                }
            }
        }
    }

    /// A new journal entry: the exact change it records, unless the watcher has it already.
    async fn on_entry(&mut self, client: &Client, name: String) -> Flow {
        let Some(sequence) = journal::sequence(&name) else {
            return Flow::Continue;
        };
        if sequence < self.floor {
            return Flow::Continue;
        }
        let path = format!("{}/{name}", self.inner.paths.events);
        let (data, stat) = match self.inner.zk.within("watch", client.get_data(&path)).await {
            Ok(Ok(found)) => found,
            // Trimmed before it could be read (far behind), or ZooKeeper is away: resync.
            _ => {
                self.resync = true;
                return Flow::Continue;
            }
        };
        let change = match journal::decode(&data) {
            Ok(change) => change,
            Err(error) => {
                self.resync = true;
                return self.emit(Err(error));
            }
        };
        // The entry was written in the transaction of the change: same zxid.
        let zxid = stat.czxid;
        match change {
            Change::Added(info) => match self.known.get_mut(&info.id) {
                Some(known) if zxid <= known.czxid => Flow::Continue,
                Some(known) => {
                    *known = Known {
                        info: info.clone(),
                        czxid: zxid,
                        mzxid: zxid,
                    };
                    self.emit(Ok(MetaEvent::Updated(info)))
                }
                None => {
                    let known = Known {
                        info: info.clone(),
                        czxid: zxid,
                        mzxid: zxid,
                    };
                    self.known.insert(info.id.clone(), known);
                    self.emit(Ok(MetaEvent::Added(info)))
                }
            },
            Change::Updated(info) => match self.known.get_mut(&info.id) {
                Some(known) if zxid <= known.mzxid => Flow::Continue,
                Some(known) => {
                    known.info = info.clone();
                    known.mzxid = zxid;
                    self.emit(Ok(MetaEvent::Updated(info)))
                }
                // An update of a server this watcher does not know: it lost track; resync.
                None => {
                    self.resync = true;
                    Flow::Continue
                }
            },
        }
    }

    /// A server's node was deleted: removed, unless a node the watcher knows still stands.
    async fn on_deleted(&mut self, client: &Client, id: ServerId) -> Flow {
        let Some(known) = self.known.get(&id) else {
            return Flow::Continue;
        };
        let path = self.inner.paths.server(&id);
        match self
            .inner
            .zk
            .within("watch", client.check_stat(&path))
            .await
        {
            Ok(Ok(Some(stat))) if stat.czxid == known.czxid => Flow::Continue,
            Ok(Ok(_)) => {
                self.known.remove(&id);
                self.emit(Ok(MetaEvent::Removed(id)))
            }
            _ => {
                self.resync = true;
                Flow::Continue
            }
        }
    }

    /// Sends without waiting: a watcher with a full buffer has fallen behind and gets a
    /// snapshot once there is room.
    fn emit(&mut self, item: Result<MetaEvent>) -> Flow {
        match self.events.try_send(item) {
            Ok(()) => Flow::Continue,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.resync = true;
                Flow::Continue
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Flow::Stop,
        }
    }

    /// Sends `error` if none was sent for this outage yet.
    fn report(&mut self, error: Error) -> Flow {
        if self.reported {
            return Flow::Continue;
        }
        self.reported = true;
        self.emit(Err(error))
    }

    /// Sleeps `pause` (doubling it for next time); false if the watch ended meanwhile.
    async fn pause(&mut self, pause: &mut Duration) -> bool {
        let slept = tokio::select! {
            _ = self.shutdown.changed() => false,
            _ = self.events.closed() => false,
            _ = tokio::time::sleep(*pause) => true,
        };
        *pause = (*pause * 2).min(MAX_PAUSE);
        slept
    }

    fn entry_name(&self, path: &str) -> Option<String> {
        let name = path
            .strip_prefix(self.inner.paths.events.as_str())?
            .strip_prefix('/')?;
        (!name.contains('/')).then(|| name.to_string())
    }

    fn server_of(&self, path: &str) -> Option<ServerId> {
        let name = path
            .strip_prefix(self.inner.paths.servers.as_str())?
            .strip_prefix('/')?;
        ServerId::new(name).ok()
    }
}

/// A new watch in the current session (a new one if the last ended).
async fn open(inner: &Inner) -> Result<(Client, PersistentWatcher)> {
    let client = inner.zk.client().await?;
    let watcher = inner
        .zk
        .call(
            "watch",
            client.watch(&inner.paths.meta, zk::AddWatchMode::PersistentRecursive),
        )
        .await?;
    Ok((client, watcher))
}
