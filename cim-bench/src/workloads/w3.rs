//! W3, login storm: 10,000 clients log in, 200 at a time, and stay connected.
//!
//! A cim login is the whole path a client takes: a login at the route (server choice, token),
//! TCP connect to the server it names, `Login` frame, wait for `LoginResult`. It is measured
//! three ways ([`Mode`]): with a password (`POST /api/v1/login`, an argon2 check each), resuming
//! a login with its still-valid cim token (`POST /api/v1/login/token`: what a client whose
//! server died does), and with a token the application minted (HS256), which creates each
//! account on its first login. A peer's login is its protocol handshake (NATS `CONNECT` +
//! `PING`/`PONG`, MQTT `CONNECT`/`CONNACK`, Redis `PING`, relay `HELLO`), run in the password
//! case only. A failed attempt is retried up to twice; retries and clients that never got in are
//! counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;

use super::{CpuMark, Ctx, source_for};
use crate::report::Measurement;
use crate::systems::cim::RouteApi;
use crate::systems::{Accounts, Deployment, Plan};
use crate::wire::{Conn, Login, Wire};

/// How a cim client logs in at the route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Name and password.
    Password,
    /// A still-valid cim token, resumed.
    Resume,
    /// A token the application minted, for a user with no account yet.
    AppToken,
}

impl Mode {
    /// Every mode, the password first (the case the peers run too).
    pub const ALL: [Mode; 3] = [Mode::Password, Mode::Resume, Mode::AppToken];

    /// The case name.
    pub fn case(self) -> &'static str {
        match self {
            Mode::Password => "login storm",
            Mode::Resume => "login storm (resume tokens)",
            Mode::AppToken => "login storm (app tokens, first logins)",
        }
    }
}

/// Attempts per client.
const ATTEMPTS: u32 = 3;

/// `clients` users; cim's come from the vault and log in through the route during the run
/// (with their password or their vault token), or are minted application tokens.
pub fn plan(clients: usize, mode: Mode) -> Plan {
    let mut plan = Plan::users(clients);
    plan.accounts = match mode {
        Mode::Password => Accounts::VaultLoginLater,
        Mode::Resume => Accounts::VaultWithTokens,
        Mode::AppToken => Accounts::AppTokens,
    };
    plan
}

async fn login_once<W: Wire>(
    wire: &W,
    dep: &Deployment,
    route: Option<&RouteApi>,
    mode: Mode,
    index: usize,
) -> Result<Conn> {
    let user = &dep.users[index];
    let (addr, token) = match route {
        Some(route) => {
            let login = match (mode, &user.token) {
                (Mode::Password, _) => route.login(&user.name, &dep.password).await?,
                (_, Some(token)) => route.login_with_token(token).await?,
                (_, None) => anyhow::bail!("a token login without a token"),
            };
            let addr = tokio::net::lookup_host((login.server.host.as_str(), login.server.port))
                .await?
                .next()
                .context("the route named a server with no address")?;
            (addr, Some(login.token))
        }
        None => (dep.servers[user.server].addr, user.token.clone()),
    };
    let mut conn = Conn::connect(addr, source_for(index)).await?;
    wire.handshake(
        &mut conn,
        Login {
            address: user.address,
            token: token.as_deref(),
        },
        false,
    )
    .await?;
    Ok(conn)
}

/// Runs W3 on `dep`.
pub async fn run<W: Wire>(
    ctx: &Ctx<'_>,
    wire: W,
    dep: &mut Deployment,
    mode: Mode,
) -> Result<Measurement> {
    let sizes = ctx.sizes;
    let clients = dep.users.len();
    let route = dep
        .route_url
        .as_ref()
        .map(|url| RouteApi::new(ctx.env.http.clone(), url));
    dep.pin_for_measurement()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let retried = Arc::new(AtomicU64::new(0));
    let last_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let phase = ctx.env.progress.phase("logins", clients as u64);
    let mark = CpuMark::now(ctx, dep, "W3").await?;
    let rss_before = dep.server_rss()?;
    let peak = super::RssPeak::start(dep.server_pids());
    let started = Instant::now();
    let dep_ref: &Deployment = dep;
    let conns: Vec<Option<Conn>> = futures::stream::iter(0..clients)
        .map(|i| {
            let (wire, route, phase) = (wire.clone(), route.clone(), phase.clone());
            let (retried, last_error) = (Arc::clone(&retried), Arc::clone(&last_error));
            async move {
                for attempt in 0..ATTEMPTS {
                    if attempt > 0 {
                        retried.fetch_add(1, Ordering::Relaxed);
                    }
                    let login = tokio::time::timeout(
                        Duration::from_secs(120),
                        login_once(&wire, dep_ref, route.as_ref(), mode, i),
                    )
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 120 s")));
                    match login {
                        Ok(conn) => {
                            phase.add(1);
                            return Some(conn);
                        }
                        Err(e) => {
                            if let Ok(mut last) = last_error.lock() {
                                *last = Some(format!("{e:#}"));
                            }
                        }
                    }
                }
                None
            }
        })
        .buffer_unordered(sizes.w3_in_flight)
        .collect()
        .await;
    let ended = Instant::now();
    phase.finish();
    let logins = conns.iter().filter(|c| c.is_some()).count() as u64;
    let mut m = Measurement::new("W3", mode.case(), dep.kind.name(), ctx.round);
    m.set("rss_before", rss_before as f64);
    m.set("rss_peak", peak.stop().await as f64);
    if let Err(e) = dep.check_alive() {
        m.notes
            .push(format!("the server died during the storm: {e:#}"));
    }
    mark.record(dep, ended, logins, "server_cpu_us_per_login", &mut m)?;
    let elapsed = ended.duration_since(started).as_secs_f64().max(1e-9);
    m.set("logins", logins as f64);
    m.set("logins_per_s", logins as f64 / elapsed);
    if let Some(cpu_us) = m.get("server_cpu_us_per_login")
        && cpu_us > 0.0
    {
        m.set("logins_per_core_s", 1e6 / cpu_us);
    }
    m.set("failed", (clients as u64 - logins) as f64);
    m.set("retried", retried.load(Ordering::Relaxed) as f64);
    // A W3 "loss" is a client that never got in.
    m.set("lost", (clients as u64 - logins) as f64);
    if let Ok(Some(error)) = last_error.lock().map(|e| e.clone()) {
        m.notes.push(format!("last failed attempt: {error}"));
    }
    m.notes.extend(dep.notes.iter().cloned());
    m.notes.push(format!(
        "{clients} clients, {} in flight, all kept connected until the end",
        sizes.w3_in_flight
    ));
    drop(conns);
    Ok(m)
}
