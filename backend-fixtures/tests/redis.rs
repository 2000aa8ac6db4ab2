//! The Redis fixture: a real server that answers, stops, restarts on the same port, and dies
//! with its owner.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use cim_backend_fixtures::{RedisServer, require_or_skip};

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("set a read timeout");
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

#[test]
fn started_server_answers_ping_on_its_url() {
    let Some(server) = require_or_skip(RedisServer::start()) else {
        return;
    };
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert!(ping(server.port()), "a started server answers PING");
}

#[test]
fn stopped_server_refuses_and_restart_brings_it_back_on_the_same_port() {
    let Some(mut server) = require_or_skip(RedisServer::start()) else {
        return;
    };
    let port = server.port();
    server.stop();
    assert!(!ping(port), "a stopped server does not answer");
    server.restart().expect("restart the server");
    assert_eq!(server.port(), port, "restart keeps the port");
    assert!(ping(port), "a restarted server answers PING");
}

#[test]
fn dropping_the_fixture_kills_the_server() {
    let Some(server) = require_or_skip(RedisServer::start()) else {
        return;
    };
    let port = server.port();
    drop(server);
    assert!(
        !ping(port),
        "the server is gone once the fixture is dropped"
    );
}
