//! The account vault: a Redis holding cim accounts created once and reused by every run.
//!
//! Creating a cim account hashes its password with argon2 and logging in verifies it, each
//! tens of milliseconds of CPU on purpose; the workloads with thousands of users (login storm,
//! idle memory, failover) would spend most of their time creating accounts in every round. So
//! they take accounts from the vault instead: a `redis-server` whose database file lives in the
//! cache directory (`vault-v1.rdb`), holding cim's account keys (namespace `vault`, database 0)
//! and, per account, the user id and a token the route issued when the account was created
//! (tokens are valid for a year; the bench's configs all use the same secret). Missing accounts
//! are created through a real `cim standalone` whose account store is the vault.
//!
//! Database 1 of the same Redis holds the clusters' meta, sessions and messages; it is emptied
//! before every cluster starts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::Env;
use super::cim::{Backends, RouteApi, create_and_login, start_standalone};
use crate::process::{Proc, Spawn, accepts, find_program, free_port};
use crate::resp::{RedisCommands, Reply};

/// The hash of index → "user_id token".
const USERS_KEY: &str = "cimbench:vault:v1:users";

/// One vault account.
#[derive(Debug, Clone)]
pub struct VaultUser {
    /// Its name (`v<index>`).
    pub name: String,
    /// Its cim user id.
    pub user_id: u64,
    /// A token the route issued for it.
    pub token: String,
}

/// The running vault.
#[derive(Debug)]
pub struct Vault {
    /// Held for its drop: the Redis stops with the vault.
    _proc: Proc,
    addr: SocketAddr,
    users: HashMap<usize, (u64, String)>,
}

impl Vault {
    /// The vault, started if needed, holding at least users `0..n`.
    pub async fn ensure<'a>(
        env: &Env,
        slot: &'a mut Option<Vault>,
        n: usize,
    ) -> Result<&'a mut Vault> {
        let vault = match slot {
            Some(vault) => vault,
            None => slot.insert(Vault::start(env).await?),
        };
        vault.fill(env, n).await?;
        Ok(vault)
    }

    async fn start(env: &Env) -> Result<Vault> {
        let program = find_program("redis-server").context(
            "cim's large workloads keep accounts in a Redis: install redis-server \
             (apt-get install redis-server)",
        )?;
        std::fs::create_dir_all(&env.cache_dir)
            .with_context(|| format!("creating {}", env.cache_dir.display()))?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut proc = Proc::spawn(Spawn {
            name: "vault redis-server".into(),
            program: &program,
            args: [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                &env.cache_dir.display().to_string(),
                "--dbfilename",
                "vault-v1.rdb",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                "10000",
                "--loglevel",
                "warning",
            ]
            .map(String::from)
            .to_vec(),
            env: Vec::new(),
            // Off the server core: it serves account lookups during cim's measured phases.
            cpus: env.pinning.generator_cpus.clone(),
            log: env.work_dir.path().join("vault-redis.log"),
        })?;
        proc.wait_until("accepting connections", env.ready_timeout, || accepts(addr))
            .await?;
        // A large database file takes a moment to load; commands fail with LOADING meanwhile.
        let started = std::time::Instant::now();
        let mut redis = loop {
            let attempt = async {
                let mut redis = RedisCommands::connect(addr, 0).await?;
                redis.command(&["PING"]).await?;
                Ok::<_, anyhow::Error>(redis)
            };
            match attempt.await {
                Ok(redis) => break redis,
                Err(_) if started.elapsed() < 2 * env.ready_timeout => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.context("the vault's Redis does not answer")),
            }
        };
        let mut users = HashMap::new();
        if let Reply::Array(items) = redis.command(&["HGETALL", USERS_KEY]).await? {
            for pair in items.chunks(2) {
                if let [Some(index), Some(value)] = pair
                    && let Some(parsed) = parse_entry(index, value)
                {
                    users.insert(parsed.0, parsed.1);
                }
            }
        }
        redis.command(&["SELECT", "1"]).await?;
        redis.command(&["FLUSHDB"]).await?;
        Ok(Vault {
            _proc: proc,
            addr,
            users,
        })
    }

    /// Creates the accounts of `0..n` that the vault does not hold yet.
    async fn fill(&mut self, env: &Env, n: usize) -> Result<()> {
        let missing: Vec<usize> = (0..n).filter(|i| !self.users.contains_key(i)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        env.progress.note(&format!(
            "the account vault ({}) has {} of the {n} accounts needed: creating {} through cim \
             (argon2, once; kept for later runs)",
            env.cache_dir.display(),
            self.users.len().min(n),
            missing.len()
        ));
        let dir = env.deployment_dir("vault-builder")?;
        let builder = start_standalone(
            env,
            dir.as_path(),
            &Backends::VaultAccounts { redis: self.addr },
        )
        .await?;
        let route = RouteApi::new(env.http.clone(), &builder.route_url);
        let names = missing.iter().map(|i| format!("v{i}")).collect();
        let logins = create_and_login(env, &route, names, "setup: vault accounts").await?;
        let mut redis = RedisCommands::connect(self.addr, 0).await?;
        for (name, login) in logins {
            let index: usize = name[1..].parse()?;
            let value = format!("{} {}", login.user_id, login.token);
            redis
                .command(&["HSET", USERS_KEY, &index.to_string(), &value])
                .await?;
            self.users.insert(index, (login.user_id, login.token));
        }
        redis.command(&["SAVE"]).await?;
        drop(builder);
        Ok(())
    }

    /// User `index`.
    pub fn user(&self, index: usize) -> Result<VaultUser> {
        let Some((user_id, token)) = self.users.get(&index) else {
            bail!("the vault has no user {index}");
        };
        Ok(VaultUser {
            name: format!("v{index}"),
            user_id: *user_id,
            token: token.clone(),
        })
    }

    /// The vault's Redis process id.
    pub fn pid(&self) -> u32 {
        self._proc.pid()
    }

    /// The vault's Redis.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Empties database 1 (the previous cluster's meta, sessions and messages).
    pub async fn clear_cluster_data(&self) -> Result<()> {
        let mut redis = RedisCommands::connect(self.addr, 1).await?;
        redis.command(&["FLUSHDB"]).await?;
        Ok(())
    }
}

fn parse_entry(index: &[u8], value: &[u8]) -> Option<(usize, (u64, String))> {
    let index = std::str::from_utf8(index).ok()?.parse().ok()?;
    let value = std::str::from_utf8(value).ok()?;
    let (id, token) = value.split_once(' ')?;
    Some((index, (id.parse().ok()?, token.to_string())))
}
