//! JSON of the values backends keep for others to read: a [`ServerInfo`] (a registration) and a
//! [`Session`].
//!
//! Shared by the adapters that store these values as JSON (Redis, etcd, ZooKeeper, Consul), so
//! that every backend writes the same form and a value that cannot be read back is the same
//! error everywhere: `Internal`, with the backend in its context, since only a corrupted store
//! or a different version of cim writes something else.

use crate::{Error, Result, ServerInfo, Session};

/// The JSON of a server registration. Fails with `InvalidInput` (a registration that cannot be
/// written is the caller's).
pub fn encode_server(info: &ServerInfo) -> Result<String> {
    serde_json::to_string(info).map_err(|e| {
        Error::invalid_input("the server registration cannot be encoded").with_source(e)
    })
}

/// The server registration in `json`, as `backend` stored it. Fails with `Internal`.
pub fn decode_server(json: &[u8], backend: &'static str) -> Result<ServerInfo> {
    serde_json::from_slice(json).map_err(|e| {
        Error::internal(format!(
            "a server registration stored in {backend} cannot be decoded"
        ))
        .with_context("backend", backend)
        .with_source(e)
    })
}

/// The JSON of a session. Fails with `Internal`.
pub fn encode_session(session: &Session) -> Result<String> {
    serde_json::to_string(session)
        .map_err(|e| Error::internal("a session cannot be encoded").with_source(e))
}

/// The session in `json`, as `backend` stored it. Fails with `Internal`.
pub fn decode_session(json: &[u8], backend: &'static str) -> Result<Session> {
    serde_json::from_slice(json).map_err(|e| {
        Error::internal(format!("a session stored in {backend} cannot be decoded"))
            .with_context("backend", backend)
            .with_source(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConnectionId, ErrorKind, ServerId, Timestamp, UserId};

    #[test]
    fn values_round_trip_and_garbage_is_internal_naming_the_backend() {
        let id = ServerId::new("node-1").expect("valid id");
        let info = ServerInfo::new(id.clone(), "10.0.0.1", 7000, 7001);
        let json = encode_server(&info).expect("encodes");
        assert_eq!(
            decode_server(json.as_bytes(), "redis").expect("decodes"),
            info
        );

        let session = Session {
            user_id: UserId(1),
            server_id: id,
            connection_id: ConnectionId(10),
            device: "test".to_string(),
            login_at: Timestamp::now(),
        };
        let json = encode_session(&session).expect("encodes");
        assert_eq!(
            decode_session(json.as_bytes(), "etcd").expect("decodes"),
            session
        );

        for error in [
            decode_server(b"{", "zookeeper").expect_err("garbage"),
            decode_session(b"[]", "zookeeper").expect_err("garbage"),
        ] {
            assert_eq!(error.kind(), ErrorKind::Internal);
            assert!(error.to_string().contains("zookeeper"), "{error}");
            assert!(
                error
                    .context()
                    .contains(&("backend", "zookeeper".to_string())),
                "{error}"
            );
        }
    }
}
