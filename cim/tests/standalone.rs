//! `cim standalone` as a user runs it: the real binary in a child process, driven through the
//! client SDK over loopback, stopped with SIGTERM and started again on the same data.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use cim_client::{Client, ClientBuilder, Event, Events, Outgoing};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// Generous bound on any single step, so a bug fails the test instead of hanging it.
const STEP: Duration = Duration::from_secs(30);

/// A running `cim standalone` and the route URL it printed.
struct Standalone {
    child: Child,
    route_url: String,
}

impl Standalone {
    async fn start(data_dir: &Path) -> Standalone {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cim"))
            .args([
                "standalone",
                "--http",
                "127.0.0.1:0",
                "--tcp",
                "127.0.0.1:0",
            ])
            .args(["--internal", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("CIM_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the cim binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let route_url = timeout(STEP, async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(url) = line.trim().strip_prefix("route (HTTP API): ") {
                    return url.to_string();
                }
            }
            panic!("cim standalone exited without printing its route address");
        })
        .await
        .expect("cim standalone prints its addresses");
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Standalone { child, route_url }
    }

    async fn client(&self, name: &str, register: bool) -> (Client, Events) {
        let client = ClientBuilder::new(&self.route_url)
            .credentials(name, "correct horse")
            .register(register)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{name} connects: {e}"));
        let events = client.events().expect("the event stream is taken once");
        (client, events)
    }

    /// SIGTERM, then the exit status.
    async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("still running");
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {pid} failed");
        timeout(STEP, self.child.wait())
            .await
            .expect("cim standalone exits after SIGTERM")
            .expect("wait for the child")
    }
}

/// The next message event's body and whether it was delivered as offline.
async fn next_body(events: &mut Events) -> (String, bool) {
    timeout(STEP, async {
        loop {
            match events.recv().await {
                Some(Event::Message(message)) => return (message.body, message.offline),
                Some(_) => continue,
                None => panic!("the event stream ended"),
            }
        }
    })
    .await
    .expect("a message arrives")
}

#[tokio::test]
async fn standalone_chats_keeps_messages_across_a_restart_and_stops_cleanly_on_sigterm() {
    let data = tempfile::tempdir().expect("temporary data directory");

    let node = Standalone::start(data.path()).await;
    let (alice, _alice_events) = node.client("alice", true).await;
    let (bob, mut bob_events) = node.client("bob", true).await;
    let bob_id = bob.info().user_id;

    alice.send_to_user(bob_id, "hello bob").await.expect("sent");
    assert_eq!(
        next_body(&mut bob_events).await,
        ("hello bob".to_string(), false)
    );

    bob.close().await;
    alice
        .send_to_user(bob_id, "while you were away")
        .await
        .expect("stored for offline bob");
    let due = SystemTime::now() + Duration::from_secs(2);
    alice
        .send(Outgoing::to_user(bob_id, "scheduled across a restart").deliver_at(due))
        .await
        .expect("scheduled");
    alice.close().await;

    let status = node.terminate().await;
    assert!(
        status.success(),
        "SIGTERM must end cim standalone cleanly: {status}"
    );

    let node = Standalone::start(data.path()).await;
    let (_bob, mut bob_events) = node.client("bob", false).await;
    assert_eq!(
        next_body(&mut bob_events).await,
        ("while you were away".to_string(), true),
        "the offline message survives the restart"
    );
    let (scheduled, _) = next_body(&mut bob_events).await;
    assert_eq!(scheduled, "scheduled across a restart");
    assert!(
        SystemTime::now() >= due,
        "a scheduled message never arrives early"
    );
    assert!(node.terminate().await.success());
}
