//! What an attacker's probes found, kept found: the real `cim standalone` binary, attacked over
//! its public interfaces (HTTP and TCP) the way the probes did.

use std::time::Duration;

use cim_proto::v1::{self, Login};
use cim_proto::{Body, Frame, FrameCodec};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::Framed;

mod common;

use common::{STEP, StandaloneOptions};

/// `{"name", "password"}` registered, then logged in: the token.
async fn register_and_login(http: &reqwest::Client, route: &str, name: &str) -> String {
    let credentials = serde_json::json!({"name": name, "password": "correct horse"});
    let created = http
        .post(format!("{route}/api/v1/accounts"))
        .json(&credentials)
        .send()
        .await
        .expect("sign-up answered");
    assert_eq!(created.status(), 201, "sign-up of {name}");
    login(http, route, name).await.expect("login")
}

/// Logs `name` in over HTTP; the token, or the status it got.
async fn login(http: &reqwest::Client, route: &str, name: &str) -> Result<String, String> {
    let credentials = serde_json::json!({"name": name, "password": "correct horse"});
    let response = http
        .post(format!("{route}/api/v1/login"))
        .json(&credentials)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(response.status().to_string());
    }
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    Ok(body["token"].as_str().expect("a token").to_string())
}

/// Logs in over the server's TCP port with `token`; the `LoginResult`.
async fn tcp_login(tcp: &str, token: &str) -> v1::LoginResult {
    let socket = timeout(STEP, TcpStream::connect(tcp))
        .await
        .expect("connect in time")
        .expect("the server accepts");
    let mut framed = Framed::new(socket, FrameCodec::<Frame>::default());
    let login = Frame::from(Body::Login(Login {
        token: token.into(),
        device: "probe".into(),
    }));
    framed.send(login).await.expect("login sent");
    match timeout(STEP, framed.next())
        .await
        .expect("an answer in time")
    {
        Some(Ok(Frame {
            body: Some(Body::LoginResult(result)),
        })) => result,
        other => panic!("expected LoginResult, got {other:?}"),
    }
}

#[tokio::test]
async fn silent_http_connections_are_closed_and_never_starve_the_tcp_listener() {
    rlimit::increase_nofile_limit(8192).expect("the test opens many sockets");
    let data = tempfile::tempdir().expect("data directory");
    let config = data.path().join("cim.toml");
    std::fs::write(&config, "[route]\nheader_timeout = \"2s\"\n").expect("config");
    // The limit the probe ran under, where 1,100 silent HTTP connections broke everything.
    let node = StandaloneOptions::new(data.path())
        .config(config)
        .open_files(1024)
        .start()
        .await;
    let http = reqwest::Client::new();
    let token = register_and_login(&http, &node.route_url, "alice").await;
    let route_addr = node.route_url.trim_start_matches("http://").to_string();

    // 1,100 connections that never complete a request: half send nothing, half stop in the
    // middle of their headers.
    let mut silent = Vec::new();
    for i in 0..1100 {
        let Ok(mut socket) = TcpStream::connect(&route_addr).await else {
            continue;
        };
        if i % 2 == 0 {
            let _ = socket
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await;
        }
        silent.push(socket);
    }

    // The client listener has descriptors of its own: logging in over TCP still works.
    let result = tcp_login(&node.tcp, &token).await;
    assert!(result.user_id > 0);

    // Within the header timeout, every silent connection is closed by the route (or was
    // refused at once, over its connection limit).
    let closed = timeout(Duration::from_secs(20), async {
        let mut closed = 0;
        for socket in &mut silent {
            let mut byte = [0u8; 64];
            match socket.read(&mut byte).await {
                Ok(0) | Err(_) => closed += 1,
                // A 408 or 400 answer before the close is fine too; the close follows.
                Ok(_) => {
                    if matches!(socket.read(&mut byte).await, Ok(0) | Err(_)) {
                        closed += 1;
                    }
                }
            }
        }
        closed
    })
    .await
    .expect("the route closes silent connections on its own");
    assert_eq!(closed, silent.len());
    drop(silent);

    // And the HTTP API serves again, logins included.
    let health = http
        .get(format!("{}/healthz", node.route_url))
        .send()
        .await
        .expect("healthz answered");
    assert!(health.status().is_success());
    login(&http, &node.route_url, "alice")
        .await
        .expect("an HTTP login after the flood");
    assert!(node.terminate().await.success());
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_and_its_files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().expect("temporary directory");
    let data = parent.path().join("cim-data");
    let node = StandaloneOptions::new(&data).start().await;
    let http = reqwest::Client::new();
    // A sign-up writes to the database, so its WAL exists too.
    register_and_login(&http, &node.route_url, "alice").await;
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&data), 0o700, "the data directory");
    let mut files = 0;
    for entry in std::fs::read_dir(&data).expect("list the data directory") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        files += 1;
    }
    assert!(
        files >= 3,
        "the token secret, the database and its WAL: {files} files"
    );
    assert!(node.terminate().await.success());
}

#[tokio::test]
async fn look_alike_and_punctuation_only_names_are_refused_at_sign_up() {
    let data = tempfile::tempdir().expect("data directory");
    let node = StandaloneOptions::new(data.path()).start().await;
    let http = reqwest::Client::new();
    register_and_login(&http, &node.route_url, "alice").await;
    register_and_login(&http, &node.route_url, "apple").await;
    let sign_up = |name: &'static str| {
        let http = &http;
        let url = format!("{}/api/v1/accounts", node.route_url);
        async move {
            http.post(url)
                .json(&serde_json::json!({"name": name, "password": "correct horse"}))
                .send()
                .await
                .expect("answered")
                .status()
                .as_u16()
        }
    };
    for (name, status) in [
        ("\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}", 400), // fullwidth
        ("\u{430}lice", 400),                              // Cyrillic a + Latin
        ("\u{1d41a}lice", 400),                            // mathematical bold
        (".", 400),
        ("..", 400),
        ("-", 400),
        ("\u{430}\u{440}\u{440}\u{4cf}\u{435}", 409), // all Cyrillic, looks like "apple"
        ("ALICE", 409),
    ] {
        assert_eq!(sign_up(name).await, status, "signing up as {name:?}");
    }
    assert_eq!(sign_up("alina").await, 201, "a different name");
    assert!(node.terminate().await.success());
}
