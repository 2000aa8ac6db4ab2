//! `cim client` as a script drives it: the real binary with piped stdin and stdout (its
//! non-terminal mode) against a real `cim standalone`, one line typed, one line awaited.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::timeout;

mod common;

use common::{Standalone, StandaloneOptions, free_port};

/// Generous bound on any single step, so a bug fails the test instead of hanging it.
const STEP: Duration = Duration::from_secs(30);

/// The addresses a standalone node listens on.
#[derive(Debug, Clone)]
struct Addresses {
    http: String,
    tcp: String,
    internal: String,
}

impl Addresses {
    /// Free ports chosen now, so that a restarted node listens where the clients expect it.
    fn fixed() -> Addresses {
        let free = || format!("127.0.0.1:{}", free_port());
        Addresses {
            http: free(),
            tcp: free(),
            internal: free(),
        }
    }

    /// A standalone on these addresses, with data in `data_dir`.
    async fn start(&self, data_dir: &Path) -> Standalone {
        StandaloneOptions::new(data_dir)
            .addresses(&self.http, &self.tcp, &self.internal)
            .start()
            .await
    }
}

/// A `cim client` process: type into its stdin, read its stdout.
struct ChatClient {
    name: String,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl ChatClient {
    /// Starts the client and waits until it says it is logged in.
    async fn start(route_url: &str, name: &str, register: bool) -> ChatClient {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cim"));
        command
            .args(["client", "--route", route_url, "--user", name])
            .env("CIM_PASSWORD", "correct horse")
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if register {
            command.arg("--register");
        }
        let mut child = command.spawn().expect("cim client starts");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut client = ChatClient {
            name: name.to_string(),
            child,
            stdin,
            stdout,
        };
        client.expect(&format!("logged in as {name} (id ")).await;
        client
    }

    /// Types one line.
    async fn type_line(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("the client reads stdin");
        self.stdin.flush().await.expect("flush stdin");
    }

    /// Reads lines until one contains `wanted`, and returns it.
    async fn expect(&mut self, wanted: &str) -> String {
        let mut seen = Vec::new();
        let found = timeout(STEP, async {
            while let Some(line) = self.stdout.next_line().await.expect("read stdout") {
                if line.contains(wanted) {
                    return Some(line);
                }
                seen.push(line);
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "{} exited before printing {wanted:?}; it printed {seen:#?}",
                self.name
            ),
            Err(_) => panic!(
                "{} did not print {wanted:?} within {STEP:?}; it printed {seen:#?}",
                self.name
            ),
        }
    }

    /// The next `count` lines.
    async fn next_lines(&mut self, count: usize) -> Vec<String> {
        let mut lines = Vec::new();
        for _ in 0..count {
            let line = timeout(STEP, self.stdout.next_line())
                .await
                .expect("a line in time")
                .expect("read stdout")
                .expect("the client is still running");
            lines.push(line);
        }
        lines
    }

    /// `:q!`, then the exit status.
    async fn quit(mut self) -> ExitStatus {
        self.type_line(":q!").await;
        self.expect("bye").await;
        timeout(STEP, self.child.wait())
            .await
            .expect("the client exits after :q!")
            .expect("wait for the client")
    }
}

/// A node with alice and bob logged in.
async fn alice_and_bob(data: &Path) -> (Standalone, ChatClient, ChatClient) {
    let node = Standalone::start(data).await;
    let alice = ChatClient::start(&node.route_url, "alice", true).await;
    let bob = ChatClient::start(&node.route_url, "bob", true).await;
    (node, alice, bob)
}

#[tokio::test]
async fn private_and_all_group_messages_reach_the_other_client() {
    let data = tempfile::tempdir().expect("data directory");
    let (_node, mut alice, mut bob) = alice_and_bob(data.path()).await;

    alice.type_line("bob;;hi bob").await;
    bob.expect("alice (private): hi bob").await;

    bob.type_line("hello everyone :wave:").await;
    alice.expect("#all bob: hello everyone 👋").await;

    assert!(alice.quit().await.success(), ":q! exits cleanly");
    assert!(bob.quit().await.success());
}

#[tokio::test]
async fn olu_lists_both_users_and_pu_finds_names_by_prefix() {
    let data = tempfile::tempdir().expect("data directory");
    let (node, mut alice, _bob) = alice_and_bob(data.path()).await;
    let _zoe = ChatClient::start(&node.route_url, "Zoë", true).await;

    alice.type_line(":olu").await;
    alice.expect("online users (3):").await;
    let listed = alice.next_lines(3).await.join("\n");
    for name in ["alice (id", "bob (id", "Zoë (id"] {
        assert!(listed.contains(name), "{name} missing from {listed}");
    }

    alice.type_line(":pu Zo").await;
    alice.expect("users starting with \"Zo\" (1):").await;
    let found = alice.next_lines(1).await;
    assert!(found[0].contains("Zoë (id"), "{found:?}");

    alice.type_line(":pu nobody").await;
    alice.expect("no user name starts with \"nobody\"").await;
}

#[tokio::test]
async fn q_finds_a_sent_message_on_the_server_and_marks_the_keyword() {
    let data = tempfile::tempdir().expect("data directory");
    let (_node, mut alice, mut bob) = alice_and_bob(data.path()).await;

    alice.type_line("bob;;the password is pineapple").await;
    bob.expect("pineapple").await;

    alice.type_line(":q PINEAPPLE").await;
    alice.expect("messages matching \"PINEAPPLE\"").await;
    let hit = alice.next_lines(1).await;
    assert!(
        hit[0].contains("alice (private): the password is *pineapple*"),
        "{hit:?}"
    );
}

#[tokio::test]
async fn delay_has_the_server_deliver_the_message_later() {
    let data = tempfile::tempdir().expect("data directory");
    let (_node, mut alice, mut bob) = alice_and_bob(data.path()).await;

    alice.type_line(":delay 1 bob;;later message").await;
    alice.expect("scheduled for").await;
    bob.expect("alice (private): later message").await;
}

#[tokio::test]
async fn messages_sent_while_offline_are_shown_as_unread_at_start_up() {
    let data = tempfile::tempdir().expect("data directory");
    let (node, mut alice, bob) = alice_and_bob(data.path()).await;
    assert!(bob.quit().await.success());

    alice.type_line("bob;;while you were away").await;
    // Commands run in the order typed: once :info answers, the message is stored.
    alice.type_line(":info").await;
    alice.expect("target:").await;

    let mut bob = ChatClient::start(&node.route_url, "bob", false).await;
    bob.expect("(unread) alice (private): while you were away")
        .await;
}

#[tokio::test]
async fn a_message_typed_while_the_server_restarts_arrives_after_the_reconnect() {
    let data = tempfile::tempdir().expect("data directory");
    let addresses = Addresses::fixed();
    let node = addresses.start(data.path()).await;
    let mut alice = ChatClient::start(&node.route_url, "alice", true).await;
    let mut bob = ChatClient::start(&node.route_url, "bob", true).await;
    alice.type_line("bob;;before the restart").await;
    bob.expect("before the restart").await;

    assert!(node.terminate().await.success());
    alice.expect("connection lost; reconnecting").await;
    bob.expect("connection lost; reconnecting").await;
    alice
        .type_line("bob;;typed while the server was down")
        .await;

    let _node = addresses.start(data.path()).await;
    alice.expect("connected to server standalone").await;
    bob.expect("typed while the server was down").await;
    alice.type_line("bob;;and after").await;
    bob.expect("alice (private): and after").await;
}

#[tokio::test]
async fn groups_are_created_joined_by_invitation_talked_in_and_left() {
    let data = tempfile::tempdir().expect("data directory");
    let (_node, mut alice, mut bob) = alice_and_bob(data.path()).await;

    alice.type_line(":create team").await;
    let created = alice.expect("created group team (id ").await;
    let id: String = created
        .split("(id ")
        .nth(1)
        .expect("an id")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    alice.type_line(":invite bob #team").await;
    alice.expect("added bob to #team").await;
    alice.type_line(":to #team").await;
    alice.expect("plain lines now go to #team").await;
    alice.type_line("hello team").await;
    bob.expect("#team alice: hello team").await;

    alice.type_line(":history 5").await;
    alice.expect("last 1 with #team:").await;
    assert!(alice.next_lines(1).await[0].contains("#team alice: hello team"));

    bob.type_line(":groups").await;
    bob.expect(&format!("#team (id {id})")).await;
    bob.type_line(":leave #team").await;
    bob.expect("left #team").await;
    bob.type_line(":join TEAM").await;
    bob.expect("joined #team").await;
    alice.type_line("welcome back").await;
    bob.expect("#team alice: welcome back").await;
}
