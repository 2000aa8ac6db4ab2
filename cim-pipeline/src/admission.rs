//! Admission: how many connections each listener may hold, out of the process's descriptors.
//!
//! Every connection holds a file descriptor, and a process has a fixed number of them. When the
//! route and a server share one process (`cim standalone`) and one listener is flooded with
//! connections that never finish a request, the others must still be able to accept: so each
//! listener admits at most its share ([`ConnectionLimit`]), and a reserve stays free for what the
//! process opens itself (store connections, database files, links to other servers).
//!
//! [`open_files_limit`] first raises the process's soft limit to its hard limit, once: the soft
//! limit is often 1,024 for historical reasons, far below what the system allows.

use std::sync::{Arc, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The process's open-files limit (its soft `RLIMIT_NOFILE`), raised to the hard limit first.
/// Where the limit cannot be read, 1,024 is assumed.
pub fn open_files_limit() -> u64 {
    static LIMIT: OnceLock<u64> = OnceLock::new();
    *LIMIT.get_or_init(|| match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit; assuming 1024");
            1024
        }
    })
}

/// Descriptors kept out of every listener's share, for what the process opens itself.
pub fn reserved_descriptors(limit: u64) -> u64 {
    (limit / 16).max(64)
}

/// The connections a listener may hold by default: `parts` out of 4 of the descriptors left
/// after the reserve (the client and internal listeners of a server take 3, the route 1), at
/// least 16.
pub fn default_share(parts: u64) -> usize {
    let limit = open_files_limit();
    let shareable = limit.saturating_sub(reserved_descriptors(limit));
    usize::try_from((shareable * parts.min(4) / 4).max(16)).unwrap_or(usize::MAX)
}

/// At most `max` connections at once, shared by the listeners that hold one.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
}

/// One admitted connection: dropping it lets the next one in.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
}

impl ConnectionLimit {
    /// A limit of `max` connections (at least 1).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        ConnectionLimit {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Admits one more connection, or `None` when `max` are open: the caller closes it at once
    /// (a client that is refused quickly can retry elsewhere; one left waiting holds a
    /// descriptor in the listen queue).
    pub fn try_admit(&self) -> Option<Admitted> {
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .ok()
            .map(|permit| Admitted { _permit: permit })
    }

    /// The most connections admitted at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How many are admitted now.
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_admits_its_maximum_then_refuses_until_one_closes() {
        let limit = ConnectionLimit::new(2);
        let first = limit.try_admit().expect("first");
        let _second = limit.try_admit().expect("second");
        assert!(limit.try_admit().is_none(), "full");
        assert_eq!(limit.open(), 2);
        drop(first);
        assert!(limit.try_admit().is_some(), "room again");
    }

    #[test]
    fn shares_leave_a_reserve() {
        let limit = open_files_limit();
        assert!(limit >= 16, "{limit}");
        let all = default_share(3) as u64 + default_share(1) as u64;
        assert!(
            all <= limit.saturating_sub(reserved_descriptors(limit)).max(32),
            "{all} of {limit}"
        );
    }
}
