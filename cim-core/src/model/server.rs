//! What a cim server announces about itself in the [`MetaStore`](crate::MetaStore).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ServerId;

/// A cim server's registration: how clients and other servers reach it, and how busy it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The server's stable id.
    pub id: ServerId,
    /// The host clients and peers connect to, as configured (never guessed only: behind NAT or in
    /// a container the bind address is not the reachable one).
    pub host: String,
    /// The client TCP port.
    pub client_port: u16,
    /// The port for server-to-server traffic (message relay between nodes).
    pub internal_port: u16,
    /// The HTTP port, if the server exposes one (health, metrics).
    #[serde(default)]
    pub http_port: Option<u16>,
    /// The server's software version.
    pub version: String,
    /// Relative capacity used by weighted strategies; 0 means "send no new users here".
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Current load as reported by the server (connected clients).
    #[serde(default)]
    pub load: u64,
    /// Free-form labels (zone, rack, build...).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Drawn at random each time the server starts (0 in a registration of an older cim): a
    /// new value under the same id means the server restarted, and whatever it had in flight
    /// (fan-outs of messages it had stored and acknowledged) is gone with its old process.
    #[serde(default)]
    pub incarnation: u64,
}

fn default_weight() -> u32 {
    100
}

impl ServerInfo {
    /// A registration with default weight, zero load, no metadata and incarnation 0.
    pub fn new(
        id: ServerId,
        host: impl Into<String>,
        client_port: u16,
        internal_port: u16,
    ) -> Self {
        ServerInfo {
            id,
            host: host.into(),
            client_port,
            internal_port,
            http_port: None,
            version: env!("CARGO_PKG_VERSION").to_string(),
            weight: default_weight(),
            load: 0,
            metadata: BTreeMap::new(),
            incarnation: 0,
        }
    }
}
