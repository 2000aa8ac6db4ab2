//! Keeping this server's sessions alive in the SessionStore, and true.
//!
//! Every `session_refresh` the server renews the sessions of its connections
//! ([`SessionStore::refresh_server`](cim_core::SessionStore::refresh_server)). A session can
//! still lapse while its connection lives: when the server was stalled (a long pause, a
//! `SIGSTOP`) or cut off from the store for longer than the store's TTL, or when the store lost
//! data. Senders then see the user offline and only store their messages, and the connection,
//! which is fine, would receive nothing live until it reconnects.
//!
//! So the server audits its sessions after a refresh that came late (more than two periods
//! after the last good one: it was stalled or the store was unreachable) and every
//! [`AUDIT_EVERY`] refreshes anyway. Each connection's session is looked up in the store:
//!
//! - missing: it is bound again, and the connection syncs from the store what it missed;
//! - another connection's (the user logged in elsewhere while this server was unreachable, and
//!   the kick never arrived): this connection is kicked as replaced;
//! - its own: nothing to do.

use std::collections::HashMap;
use std::sync::Arc;

use cim_core::{BindPolicy, ErrorKind, Result, Session, UserId};
use cim_proto::KickReason;
use tokio::time::{Instant, MissedTickBehavior};

use crate::server::Shared;

/// Refreshes between two audits when nothing was late.
pub(crate) const AUDIT_EVERY: u32 = 6;
/// Sessions looked up in the store at once during an audit.
const AUDIT_PAGE: usize = 500;

/// Renews this server's sessions every `session_refresh`, and audits them after a lapse and
/// every [`AUDIT_EVERY`] refreshes.
pub(crate) async fn refresh(shared: Arc<Shared>) {
    let period = shared.config.session_refresh;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_ok = Instant::now();
    let mut since_audit = 0;
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        if let Err(e) = shared.stores.sessions.refresh_server(&shared.id).await {
            tracing::warn!(error = %e, "cannot refresh this server's sessions");
            continue;
        }
        since_audit += 1;
        let late = started.duration_since(last_ok) > period.saturating_mul(2);
        last_ok = started;
        if late || since_audit >= AUDIT_EVERY {
            since_audit = 0;
            match audit(&shared).await {
                Ok(audit) if audit.rebound + audit.replaced > 0 => tracing::warn!(
                    rebound = audit.rebound,
                    replaced = audit.replaced,
                    late,
                    "sessions lost from the session store: bound again (their connections sync again) or replaced"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot audit this server's sessions"),
            }
        }
    }
}

/// What an audit found and did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Audit {
    /// Sessions the store had lost, bound again.
    pub(crate) rebound: usize,
    /// Connections whose user is bound to another connection now, kicked.
    pub(crate) replaced: usize,
}

/// Looks every bound connection's session up in the store and mends what it lost.
pub(crate) async fn audit(shared: &Shared) -> Result<Audit> {
    let mut audit = Audit::default();
    let local = shared.local.sessions();
    for chunk in local.chunks(AUDIT_PAGE) {
        let users: Vec<UserId> = chunk.iter().map(|session| session.user_id).collect();
        let stored: HashMap<UserId, Session> = shared
            .stores
            .sessions
            .get_many(&users)
            .await?
            .into_iter()
            .map(|session| (session.user_id, session))
            .collect();
        for session in chunk {
            match stored.get(&session.user_id) {
                Some(stored) if stored.reference() == session.reference() => {}
                Some(_) => {
                    kick(shared, session);
                    audit.replaced += 1;
                }
                None => match shared
                    .stores
                    .sessions
                    .bind(session.clone(), BindPolicy::Reject)
                    .await
                {
                    Ok(_) => {
                        shared.local.resync(session.user_id, session.connection_id);
                        audit.rebound += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        kick(shared, session);
                        audit.replaced += 1;
                    }
                    Err(e) => return Err(e),
                },
            }
        }
    }
    Ok(audit)
}

fn kick(shared: &Shared, session: &Session) {
    shared
        .local
        .kick(session.user_id, session.connection_id, KickReason::Replaced);
}
