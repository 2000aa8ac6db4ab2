//! Placement: which server a logging-in user is sent to.
//!
//! The balancer chooses among the servers the MetaStore lists, but a listed server may already be
//! dead (its lease has not expired yet) or unreachable from where clients are. Sending a client
//! there costs it a failed connection and a second login, so, like the original cim, the route
//! first opens a TCP connection to the chosen server's client port itself, and asks the balancer
//! again without that server if the connection fails.

use std::time::Duration;

use cim_core::{Error, ErrorKind, LoadBalancer, Result, ServerId, ServerInfo, UserId};
use tokio::net::TcpStream;

/// A reachable server for `user`: the balancer's choice, skipping servers whose client port
/// does not accept a connection within `probe_timeout`. `Unavailable` when none is left.
pub(crate) async fn place(
    balancer: &dyn LoadBalancer,
    user: UserId,
    probe_timeout: Duration,
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
        if reachable(&server, probe_timeout).await {
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

/// Whether `server`'s client port accepts a TCP connection within `timeout` (name resolution
/// included).
async fn reachable(server: &ServerInfo, timeout: Duration) -> bool {
    let connect = TcpStream::connect((server.host.as_str(), server.client_port));
    matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(_)))
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
