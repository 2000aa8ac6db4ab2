//! Starting the peers (NATS, Mosquitto, Redis) and the relay: one process each, pinned to the
//! server core from the start, configured for the bench's load (no connection caps, no
//! persistence, warnings-only logs, no disconnection of busy subscribers by buffer limits).
//! Users and groups need no setup: a user is the subject `u.<index>`, a group `g.<index>`. Core
//! NATS also runs as a cluster of servers joined by routes, for W1 across servers.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{Deployment, Env, Plan, Server, SystemKind, User};
use crate::process::{Proc, Spawn, accepts, find_program, free_port};

/// Starts `kind` (not cim) for `plan`: one server, or for core NATS as many as the plan asks
/// for, joined by routes into one cluster.
pub async fn deploy(env: &Env, kind: SystemKind, plan: &Plan) -> Result<Deployment> {
    // `systems::deploy` sends only core NATS here with more than one server.
    if plan.servers > 1 {
        return deploy_nats_cluster(env, plan).await;
    }
    let dir = env.deployment_dir(kind.name())?;
    let log = dir.as_path().join(format!("{}.log", kind.name()));
    let cpus = env.pinning.server_cpus.clone();
    let mut notes = Vec::new();
    let (proc, addr) = match kind {
        SystemKind::Relay => {
            let mut proc = Proc::spawn(Spawn {
                name: "relay".into(),
                program: &env.self_bin,
                args: vec!["relay".into(), "--listen".into(), "127.0.0.1:0".into()],
                env: Vec::new(),
                cpus,
                log,
            })?;
            let line = proc
                .wait_for_line("relay listening on", env.ready_timeout)
                .await?;
            let addr = parse_addr_after(&line, "relay listening on")?;
            (proc, addr)
        }
        SystemKind::Nats | SystemKind::NatsJs => {
            let port = free_port()?;
            let program = program("nats-server")?;
            let mut args = vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ];
            if kind == SystemKind::NatsJs {
                let store = dir.as_path().join("jetstream");
                args.extend(["-js".into(), "-sd".into(), store.display().to_string()]);
                notes.push(
                    "JetStream: stream BENCH on u.> and g.>, file storage; publish with ack \
                     (the server's default sync: acknowledged once in its file store, synced \
                     to disk every 2 minutes)"
                        .into(),
                );
            }
            let proc = Proc::spawn(Spawn {
                name: "nats-server".into(),
                program: &program,
                args,
                env: Vec::new(),
                cpus,
                log,
            })?;
            (proc, loopback(port))
        }
        SystemKind::Mosquitto => {
            let port = free_port()?;
            let program = program("mosquitto")?;
            let config = dir.as_path().join("mosquitto.conf");
            std::fs::write(
                &config,
                format!(
                    "listener {port} 127.0.0.1\n\
                     allow_anonymous true\n\
                     persistence false\n\
                     max_connections -1\n\
                     set_tcp_nodelay true\n\
                     log_dest stderr\n\
                     log_type error\n\
                     log_type warning\n"
                ),
            )?;
            notes.push("MQTT 3.1.1, QoS 0, clean sessions".to_string());
            let proc = Proc::spawn(Spawn {
                name: "mosquitto".into(),
                program: &program,
                args: vec!["-c".into(), config.display().to_string()],
                env: Vec::new(),
                cpus,
                log,
            })?;
            (proc, loopback(port))
        }
        SystemKind::Redis => {
            let port = free_port()?;
            let program = program("redis-server")?;
            notes.push("pub/sub; client-output-buffer-limit pubsub 0 0 0".to_string());
            let proc = Proc::spawn(Spawn {
                name: "redis-server".into(),
                program: &program,
                args: [
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--maxclients",
                    "1000000",
                    "--client-output-buffer-limit",
                    "pubsub 0 0 0",
                    "--loglevel",
                    "warning",
                    "--dir",
                    &dir.as_path().display().to_string(),
                ]
                .map(String::from)
                .to_vec(),
                env: Vec::new(),
                cpus,
                log,
            })?;
            (proc, loopback(port))
        }
        SystemKind::Cim | SystemKind::CimDurable => {
            anyhow::bail!("cim is deployed by systems::cim")
        }
    };
    let mut server = Server { addr, proc };
    server
        .proc
        .wait_until("accepting connections", env.ready_timeout, || accepts(addr))
        .await?;
    if kind == SystemKind::NatsJs {
        create_stream(addr).await?;
    }
    Ok(Deployment {
        kind,
        servers: vec![server],
        others: Vec::new(),
        shared_pids: Vec::new(),
        users: users(plan),
        groups: (0..plan.groups.len() as u64).collect(),
        route_url: None,
        notes,
        password: String::new(),
        dir,
        pin_before_measuring: None,
    })
}

/// Every user of `plan`, subject `u.<index>`, on the server its placement names.
fn users(plan: &Plan) -> Vec<User> {
    (0..plan.users)
        .map(|i| User {
            name: format!("u{i}"),
            address: i as u64,
            server: plan
                .placement
                .get(i)
                .copied()
                .unwrap_or(i % plan.servers.max(1)),
            token: None,
        })
        .collect()
}

/// `plan.servers` core NATS servers, each with a cluster port and a route to every other
/// (`-cluster`, `-routes`, one `--cluster_name`), so a message published on one reaches a
/// subscriber on another through the route, as cim's relay does between its servers. Ready once
/// every server accepts clients and has logged its routes.
async fn deploy_nats_cluster(env: &Env, plan: &Plan) -> Result<Deployment> {
    let kind = SystemKind::Nats;
    let dir = env.deployment_dir("nats-cluster")?;
    let program = program("nats-server")?;
    let ports: Vec<(u16, u16)> = (0..plan.servers)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<Result<_>>()?;
    let mut servers = Vec::new();
    for (i, (port, cluster_port)) in ports.iter().enumerate() {
        let routes: Vec<String> = ports
            .iter()
            .filter(|(_, other)| other != cluster_port)
            .map(|(_, other)| format!("nats://127.0.0.1:{other}"))
            .collect();
        let args = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "--name".into(),
            format!("n{i}"),
            "--cluster_name".into(),
            "bench".into(),
            "-cluster".into(),
            format!("nats://127.0.0.1:{cluster_port}"),
            "-routes".into(),
            routes.join(","),
        ];
        let proc = Proc::spawn(Spawn {
            name: format!("nats-server-{i}"),
            program: &program,
            args,
            env: Vec::new(),
            cpus: env.pinning.server_cpus.clone(),
            log: dir.as_path().join(format!("nats-{i}.log")),
        })?;
        let addr = loopback(*port);
        let mut server = Server { addr, proc };
        server
            .proc
            .wait_until("accepting connections", env.ready_timeout, || accepts(addr))
            .await?;
        servers.push(server);
    }
    for server in &mut servers {
        server
            .proc
            .wait_for_line("Route connection created", env.ready_timeout)
            .await?;
    }
    Ok(Deployment {
        kind,
        servers,
        others: Vec::new(),
        shared_pids: Vec::new(),
        users: users(plan),
        groups: (0..plan.groups.len() as u64).collect(),
        route_url: None,
        notes: vec![format!(
            "{} nats-servers joined by routes (one cluster); every message goes to a receiver on the other server",
            plan.servers
        )],
        password: String::new(),
        dir,
        pin_before_measuring: None,
    })
}

/// Creates the JetStream stream that stores every user's and group's messages, through the
/// JetStream API (a request on `$JS.API.STREAM.CREATE.<name>`).
async fn create_stream(addr: SocketAddr) -> Result<()> {
    use crate::wire::{Conn, Login, Wire};
    let mut conn = Conn::connect(addr, None).await?;
    let login = Login {
        address: u64::MAX,
        token: None,
    };
    crate::wire::nats::NatsWire::core()
        .handshake(&mut conn, login, false)
        .await?;
    let config = r#"{"name":"BENCH","subjects":["u.>","g.>"],"storage":"file","retention":"limits","discard":"old","num_replicas":1}"#;
    let request = format!(
        "SUB setup.reply 1\r\nPUB $JS.API.STREAM.CREATE.BENCH setup.reply {}\r\n{config}\r\n",
        config.len()
    );
    conn.write_all(request.as_bytes()).await?;
    let reply = crate::wire::read_until(&mut conn, |buf| {
        let text = String::from_utf8_lossy(buf);
        Ok(text
            .find("MSG setup.reply")
            .and_then(|at| text[at..].split("\r\n").nth(1).map(str::to_owned)))
    })
    .await?;
    if reply.contains("\"error\"") {
        anyhow::bail!("JetStream refused the stream: {reply}");
    }
    Ok(())
}

fn program(name: &str) -> Result<PathBuf> {
    find_program(name).with_context(|| format!("{name} is not installed"))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The socket address printed after `prefix` on `line`.
pub fn parse_addr_after(line: &str, prefix: &str) -> Result<SocketAddr> {
    let rest = line
        .split_once(prefix)
        .map(|(_, rest)| rest.trim())
        .with_context(|| format!("no address in {line:?}"))?;
    let word = rest
        .split(|c: char| c.is_whitespace() || c == ',')
        .next()
        .unwrap_or_default()
        .trim_start_matches("http://");
    word.parse()
        .with_context(|| format!("{word:?} (from {line:?}) is not an address"))
}
