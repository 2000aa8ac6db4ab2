//! `cim`: one binary for every role of a cim deployment.
//!
//! - `cim standalone`: route + server + embedded backends in one process, no external service.
//! - `cim server`: a cim server node; `cim route`: the HTTP control plane. Run several of each
//!   against shared backends (from `--config`) for a cluster.
//! - `cim conformance`: the conformance suite against the backends a config names.
//! - `cim client`: the terminal chat client (cim-client's `terminal` feature).

mod auth;
mod node;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// cim: a distributed instant-messaging system.
#[derive(Debug, Parser)]
#[command(name = "cim", version, about, long_about = None)]
struct Cli {
    /// The configuration file (TOML; see the sample cim.toml for every key). Environment
    /// variables prefixed with CIM_ override it (CIM_SERVER__LISTEN=..., `__` between levels).
    #[arg(long, short, global = true, env = "CIM_CONFIG")]
    config: Option<PathBuf>,

    /// Log filter, e.g. `info`, `cim_server=debug` (RUST_LOG syntax).
    #[arg(long, global = true, env = "CIM_LOG", default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Route, server and embedded backends in one process: a working IM system with no external
    /// service. Data lives in --data-dir.
    Standalone(StandaloneArgs),
    /// A cim server node: holds client connections and delivers messages. Needs the server id
    /// (server.id) and the shared token secret (auth.secret) in the config.
    Server,
    /// The HTTP control plane: accounts, login, server choice, send API. Needs the shared token
    /// secret (auth.secret) in the config.
    Route,
    /// Runs the conformance suite against the backends the config names, in a namespace of its
    /// own, and prints a table of passed / failed / not claimed cases per trait.
    Conformance(ConformanceArgs),
    /// The terminal chat client: log in through a route and chat (`:all` lists the commands).
    /// The password is asked for without echo, or read from CIM_PASSWORD.
    Client(ClientArgs),
}

/// Flags of `cim client`.
#[derive(Debug, Args)]
struct ClientArgs {
    /// The route's URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    route: String,
    /// The user name to log in as.
    #[arg(long)]
    user: String,
    /// Create the account first.
    #[arg(long)]
    register: bool,
    /// Append every message to this file (tab-separated: time, direction, conversation,
    /// sender, text). Not `--log`: that is the log filter.
    #[arg(long, value_name = "PATH")]
    chat_log: Option<PathBuf>,
}

/// Flags of `cim standalone` (each overrides the config).
#[derive(Debug, Args)]
struct StandaloneArgs {
    /// Where the embedded backends keep their data (default ./cim-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The HTTP address of the route (default 127.0.0.1:8080; port 0 picks a free one).
    #[arg(long)]
    http: Option<String>,
    /// The client TCP address of the server (default 127.0.0.1:7000; port 0 picks a free one).
    #[arg(long)]
    tcp: Option<String>,
    /// The internal address of the server (default 127.0.0.1:7001; port 0 picks a free one).
    #[arg(long)]
    internal: Option<String>,
}

/// Flags of `cim conformance`.
#[derive(Debug, Args)]
struct ConformanceArgs {
    /// The TTL for leases and sessions in the suite's expiry cases (short, so it runs fast).
    #[arg(long, default_value = "1s", value_parser = humantime_duration)]
    ttl: std::time::Duration,
}

fn humantime_duration(text: &str) -> Result<std::time::Duration, String> {
    node::parse_duration(text)
}

/// The chat client's failure as the binary's error, keeping what the user can act on.
fn client_error(error: cim_client::ClientError) -> cim_core::Error {
    use cim_client::ClientError;
    match error {
        ClientError::Unauthenticated(message) => cim_core::Error::unauthenticated(message),
        ClientError::InvalidInput(message) | ClientError::AlreadyExists(message) => {
            cim_core::Error::invalid_input(message)
        }
        ClientError::Unavailable { message, .. } => cim_core::Error::unavailable(message),
        other => cim_core::Error::unavailable(other.to_string()),
    }
}

fn main() -> ExitCode {
    cim_adapter_consul::link();
    cim_adapter_etcd::link();
    cim_adapter_postgres::link();
    cim_adapter_redis::link();
    cim_adapter_zookeeper::link();
    let cli = Cli::parse();
    // Log lines on the chat screen would break the prompt, and the client shows connection
    // changes itself: it logs only errors unless asked for more.
    let log = match cli.command {
        Command::Client(_) if cli.log == "info" => "error",
        _ => cli.log.as_str(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cim: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = cli.config.as_deref();
    let result = runtime.block_on(async {
        match cli.command {
            Command::Standalone(args) => {
                node::standalone(
                    config,
                    node::StandaloneOverrides {
                        data_dir: args.data_dir,
                        http: args.http,
                        tcp: args.tcp,
                        internal: args.internal,
                    },
                )
                .await
            }
            Command::Server => node::server(config).await,
            Command::Route => node::route(config).await,
            Command::Conformance(args) => node::conformance(config, args.ttl).await,
            Command::Client(args) => {
                cim_client::terminal::run(cim_client::terminal::TerminalArgs {
                    route: args.route,
                    user: args.user,
                    register: args.register,
                    chat_log: args.chat_log,
                })
                .await
                .map_err(client_error)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cim: {e}");
            ExitCode::FAILURE
        }
    }
}
