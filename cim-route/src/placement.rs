//! Placement: which server a logging-in user is sent to.
//!
//! The balancer chooses among the servers the MetaStore lists, but a listed server may already be
//! dead (its lease has not expired yet) or unreachable from where clients are. Sending a client
//! there costs it a failed connection and a second login, so, like the original cim, the route
//! first opens a TCP connection to the chosen server's client port itself, and asks the balancer
//! again without that server if the connection fails.
//!
//! A probe is a whole TCP connection, opened and closed, on both the route and the server: a
//! quarter of the CPU of a token login. So a server found reachable is taken as reachable for a
//! short while ([`Probes`], `[route] reachability_cache`) and a login storm costs one probe per
//! server per interval rather than one per login. A server that dies within that interval gets
//! the clients placed meanwhile, who fail to connect and log in again, as they would have had
//! it died right after their probe.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cim_core::{Error, ErrorKind, LoadBalancer, Result, ServerId, ServerInfo, UserId};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Recent successful probes, per server.
#[derive(Debug)]
pub(crate) struct Probes {
    /// How long a successful probe stands for the server (zero: probe every login).
    fresh_for: Duration,
    /// How long a probe may take.
    timeout: Duration,
    reached: Mutex<HashMap<ServerId, Instant>>,
}

impl Probes {
    /// Probes taking up to `timeout` each, a success standing for `fresh_for`.
    pub(crate) fn new(timeout: Duration, fresh_for: Duration) -> Self {
        Probes {
            fresh_for,
            timeout,
            reached: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `server`'s client port accepted a connection within the last `fresh_for`, or
    /// does now within `timeout` (name resolution included).
    async fn reachable(&self, server: &ServerInfo) -> bool {
        let now = Instant::now();
        if !self.fresh_for.is_zero() {
            let reached = self.reached.lock().unwrap_or_else(PoisonError::into_inner);
            if reached
                .get(&server.id)
                .is_some_and(|at| now.duration_since(*at) < self.fresh_for)
            {
                return true;
            }
        }
        let connect = TcpStream::connect((server.host.as_str(), server.client_port));
        let ok = matches!(tokio::time::timeout(self.timeout, connect).await, Ok(Ok(_)));
        let mut reached = self.reached.lock().unwrap_or_else(PoisonError::into_inner);
        if ok && !self.fresh_for.is_zero() {
            // Forget servers not reached lately (gone from the cluster, say): the map holds
            // at most the servers probed within one interval.
            let fresh_for = self.fresh_for;
            reached.retain(|_, at| now.duration_since(*at) < fresh_for);
            reached.insert(server.id.clone(), now);
        } else {
            reached.remove(&server.id);
        }
        ok
    }
}

/// A reachable server for `user`: the balancer's choice, skipping servers whose client port
/// does not accept a connection (see [`Probes`]). `Unavailable` when none is left.
pub(crate) async fn place(
    balancer: &dyn LoadBalancer,
    user: UserId,
    probes: &Probes,
) -> Result<ServerInfo> {
    let mut unreachable: Vec<ServerId> = Vec::new();
    loop {
        let server = match balancer.pick(user, &unreachable) {
            Ok(server) => server,
            Err(error) if error.kind() == ErrorKind::Unavailable => {
                return Err(no_server(&unreachable));
            }
            Err(error) => return Err(error),
        };
        if unreachable.contains(&server.id) {
            // The balancer broke its contract; asking again would loop forever.
            return Err(Error::internal(format!(
                "the {} balancer picked server {}, which the route had excluded",
                balancer.name(),
                server.id
            )));
        }
        if probes.reachable(&server).await {
            return Ok(server);
        }
        tracing::warn!(
            server = %server.id,
            address = %format!("{}:{}", server.host, server.client_port),
            "server does not accept connections; choosing another"
        );
        unreachable.push(server.id);
    }
}

fn no_server(unreachable: &[ServerId]) -> Error {
    if unreachable.is_empty() {
        Error::unavailable("no cim server is running; start one (`cim server`) and log in again")
    } else {
        let ids: Vec<&str> = unreachable.iter().map(ServerId::as_str).collect();
        Error::unavailable(format!(
            "no cim server is reachable (tried {}); check that their advertised host and client port are reachable, then log in again",
            ids.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    async fn server() -> (TcpListener, ServerInfo) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let id = ServerId::new("s1").expect("id");
        (listener, ServerInfo::new(id, "127.0.0.1", port, port))
    }

    #[tokio::test(start_paused = true)]
    async fn a_reached_server_stands_for_the_interval_and_is_probed_again_after() {
        let probes = Probes::new(Duration::from_millis(500), Duration::from_millis(250));
        let (listener, info) = server().await;
        assert!(probes.reachable(&info).await, "listening");
        drop(listener);
        assert!(
            probes.reachable(&info).await,
            "within the interval, the last probe stands"
        );
        tokio::time::advance(Duration::from_millis(250)).await;
        assert!(!probes.reachable(&info).await, "probed again: gone");
        assert!(!probes.reachable(&info).await, "a failure is not kept");
    }

    #[tokio::test]
    async fn with_no_interval_every_login_probes() {
        let probes = Probes::new(Duration::from_millis(500), Duration::ZERO);
        let (listener, info) = server().await;
        assert!(probes.reachable(&info).await);
        drop(listener);
        assert!(!probes.reachable(&info).await);
    }
}
