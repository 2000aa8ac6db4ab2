//! Redis and PostgreSQL as the soak runs them: durable, on the bridge address, restartable on
//! the same data.
//!
//! The test fixtures (`cim-backend-fixtures`) start throwaway servers on loopback without
//! persistence; a soak needs the opposite on both counts. The servers in their namespaces reach
//! the backends only over the bridge, and a backend restart must keep its data, as it would in
//! production: Redis writes an append-only file fsynced on every write (so even SIGKILL loses
//! nothing acknowledged), PostgreSQL keeps its data directory (`fsync=off` only risks data on
//! an operating-system crash, which the soak does not inject; a killed postmaster recovers from
//! its WAL). The fixtures' program lookup is reused; how to start the servers is not, because
//! their address and durability are exactly what differs.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cim_backend_fixtures::process::find_program;

use crate::error::{Result, SoakError};
use crate::process::{Managed, Readiness, Spec, create_dir};

/// The unprivileged user PostgreSQL runs as (it refuses to run as root).
const POSTGRES_USER: &str = "postgres";

/// The backend programs, found before anything is started.
#[derive(Debug, Clone)]
pub struct Programs {
    redis_server: PathBuf,
    postgres_bin: PathBuf,
}

impl Programs {
    /// Finds `redis-server` and PostgreSQL's `bin` directory, and the `postgres` user.
    pub fn find() -> Result<Programs> {
        let redis_server =
            find_program("redis-server", &[PathBuf::from("/usr/sbin")]).ok_or_else(|| {
                SoakError::Prerequisite(
                    "redis-server is missing (apt-get install redis-server)".into(),
                )
            })?;
        let postgres_bin = cim_backend_fixtures::postgres::bin_dir().ok_or_else(|| {
            SoakError::Prerequisite("PostgreSQL is missing (apt-get install postgresql)".into())
        })?;
        match nix::unistd::User::from_name(POSTGRES_USER) {
            Ok(Some(_)) => {}
            _ => {
                return Err(SoakError::Prerequisite(format!(
                    "the user {POSTGRES_USER:?} to run PostgreSQL as is missing (the postgresql \
                     package creates it)"
                )));
            }
        }
        Ok(Programs {
            redis_server,
            postgres_bin,
        })
    }

    /// A Redis with its data in `dir`, listening on `ip:port` (not started).
    pub fn redis(&self, dir: &Path, ip: Ipv4Addr, port: u16) -> Result<Managed> {
        create_dir(dir)?;
        let spec = Spec::new(&self.redis_server)
            .args(["--bind", &ip.to_string(), "--port", &port.to_string()])
            // Clients come from the namespaces, not loopback, and there is no password.
            .args(["--protected-mode", "no", "--daemonize", "no", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg_path("--dir", dir);
        Ok(Managed::new(
            "redis",
            spec,
            Readiness::RedisPing(SocketAddr::from((ip, port))),
            dir.join("redis.log"),
        ))
    }

    /// Creates a PostgreSQL cluster in `dir` (owned by the postgres user), open to `subnet`
    /// (`a.b.c.0/24`) without password, and returns the server for `ip:port` (not started).
    pub fn postgres(&self, dir: &Path, ip: Ipv4Addr, port: u16, subnet: &str) -> Result<Managed> {
        create_dir(dir)?;
        let user = nix::unistd::User::from_name(POSTGRES_USER)
            .ok()
            .flatten()
            .ok_or_else(|| SoakError::Prerequisite(format!("no user {POSTGRES_USER}")))?;
        std::os::unix::fs::chown(dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .map_err(|e| SoakError::io(format!("chown {}", dir.display()), e))?;
        let data = dir.join("data");
        let initdb_log = dir.join("initdb.log");
        let log = fs::File::create(&initdb_log)
            .map_err(|e| SoakError::io(format!("creating {}", initdb_log.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| SoakError::io("initdb log", e))?;
        let status = Command::new("setpriv")
            .arg(format!("--reuid={POSTGRES_USER}"))
            .arg(format!("--regid={POSTGRES_USER}"))
            .arg("--init-groups")
            .arg(self.postgres_bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", POSTGRES_USER, "--auth=trust", "--no-sync"])
            .args(["--encoding=UTF8", "--locale=C.UTF-8"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .status()
            .map_err(|e| SoakError::io("running initdb", e))?;
        if !status.success() {
            return Err(SoakError::Start {
                what: "initdb".into(),
                reason: status.to_string(),
                tail: cim_backend_fixtures::process::log_tail(&initdb_log),
                log: initdb_log,
            });
        }
        let hba = data.join("pg_hba.conf");
        let mut rules = fs::read_to_string(&hba)
            .map_err(|e| SoakError::io(format!("reading {}", hba.display()), e))?;
        rules.push_str(&format!(
            "\n# cim-soak: the servers in their namespaces\nhost all all {subnet} trust\n"
        ));
        fs::write(&hba, rules)
            .map_err(|e| SoakError::io(format!("writing {}", hba.display()), e))?;
        let mut spec = Spec::new(self.postgres_bin.join("postgres"))
            .arg_path("-D", &data)
            .args(["-p", &port.to_string()])
            .args(["-c", &format!("listen_addresses={ip}")])
            .arg_path("-k", dir)
            .args(["-c", "fsync=off", "-c", "max_connections=400"]);
        spec.user = Some(POSTGRES_USER.into());
        Ok(Managed::new(
            "postgres",
            spec,
            Readiness::Postgres {
                pg_isready: self.postgres_bin.join("pg_isready"),
                addr: SocketAddr::from((ip, port)),
            },
            dir.join("postgres.log"),
        ))
    }
}

impl Spec {
    /// Appends `flag` and a path.
    fn arg_path(self, flag: &str, path: &Path) -> Self {
        self.args([flag.into(), path.as_os_str().to_owned()])
    }
}
