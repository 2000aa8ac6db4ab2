//! What each subcommand runs: building config, stores and services, and stopping them on a
//! signal.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use cim_core::{CoreConfig, Error, Result, Stores};
use cim_pipeline::LimitsConfig;
use cim_route::{Route, RouteConfig};
use cim_server::{Server, ServerConfig};
use conformance_tests::Suite;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use tokio::net::TcpListener;

use crate::auth::AuthConfig;

/// Command-line flags of `cim standalone` that override the configuration.
#[derive(Debug, Default)]
pub struct StandaloneOverrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--http`: the route's listen address.
    pub http: Option<String>,
    /// `--tcp`: the server's client address.
    pub tcp: Option<String>,
    /// `--internal`: the server's internal address.
    pub internal: Option<String>,
}

/// Parses `10s`, `500ms`, `1m`.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration: {e}"))
}

/// Defaults, then `standalone` defaults (if any), then the file, then `CIM_` variables.
fn figment(file: Option<&Path>, standalone: bool) -> Figment {
    let mut figment = Figment::from(Serialized::defaults(CoreConfig::default()));
    if standalone {
        // One process on loopback: nothing is reachable from elsewhere unless configured.
        figment = figment
            .merge(Serialized::default("server.id", "standalone"))
            .merge(Serialized::default("server.listen", "127.0.0.1:7000"))
            .merge(Serialized::default(
                "server.internal_listen",
                "127.0.0.1:7001",
            ))
            .merge(Serialized::default("route.listen", "127.0.0.1:8080"));
    }
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    figment.merge(Env::prefixed(cim_core::config::ENV_PREFIX).split("__"))
}

fn route_config(figment: &Figment) -> Result<RouteConfig> {
    if !figment.contains("route") {
        return Ok(RouteConfig::default());
    }
    let config: RouteConfig = figment
        .extract_inner("route")
        .map_err(|e| Error::config(format!("invalid [route] section: {e}")))?;
    config.validate()?;
    Ok(config)
}

async fn bind(address: &str, what: &str) -> Result<TcpListener> {
    TcpListener::bind(address).await.map_err(|e| {
        Error::unavailable(format!("cannot listen on {address} for the {what}")).with_source(e)
    })
}

/// Waits for Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

/// Creates the data directory if missing, readable by its owner only (0700): it holds the
/// token secret, every account and every message. An existing one that others may read is
/// made private too.
fn private_data_dir(dir: &Path) -> Result<()> {
    let cannot = |e: std::io::Error| {
        Error::config(format!(
            "cannot create the data directory {} or make it private",
            dir.display()
        ))
        .with_source(e)
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(cannot)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir).map_err(cannot)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::info!(dir = %dir.display(), "making the data directory private (0700)");
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(cannot)?;
        }
    }
    Ok(())
}

/// `cim standalone`.
pub async fn standalone(file: Option<&Path>, overrides: StandaloneOverrides) -> Result<ExitCode> {
    let mut figment = figment(file, true);
    if let Some(dir) = &overrides.data_dir {
        figment = figment.merge(Serialized::default("data_dir", dir));
    }
    if let Some(http) = &overrides.http {
        figment = figment.merge(Serialized::default("route.listen", http));
    }
    if let Some(tcp) = &overrides.tcp {
        figment = figment.merge(Serialized::default("server.listen", tcp));
    }
    if let Some(internal) = &overrides.internal {
        figment = figment.merge(Serialized::default("server.internal_listen", internal));
    }
    let core = CoreConfig::from_figment(&figment)?;
    private_data_dir(&core.data_dir)?;
    let key = AuthConfig::from_figment(&figment)?.key_or_generate(&core.data_dir)?;
    let server_config = ServerConfig::from_figment(&figment)?;
    let route_config = route_config(&figment)?;
    let limits = LimitsConfig::from_figment(&figment)?;
    let stores = Stores::from_config(&core).await?;

    let id = server_config.server_id()?;
    let server = Server::builder(id, stores, key.clone())
        .config(server_config)
        .limits(limits)
        .names(core.names.clone())
        .start()
        .await?;
    let listener = bind(&route_config.listen, "route").await?;
    let http = listener
        .local_addr()
        .map_err(|e| Error::internal("the route listener has no address").with_source(e))?;
    // One process, one pipeline: HTTP sends share the server's limits and reach its
    // connections directly.
    let route = Route::with_pipeline(
        route_config,
        server.pipeline().clone(),
        key,
        core.names.clone(),
    )?;

    println!("cim standalone is running");
    println!("  route (HTTP API): http://{http}");
    println!("  server (clients): {}", server.client_addr());
    println!("  data directory:   {}", core.data_dir.display());
    println!(
        "Create an account: curl -X POST http://{http}/api/v1/accounts -H 'content-type: application/json' -d '{{\"name\":\"alice\",\"password\":\"secret\"}}'"
    );
    println!("Stop with Ctrl-C.");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(route.serve(listener, async {
        let _ = stop_rx.await;
    }));
    shutdown_signal().await;
    server.shutdown().await?;
    let _ = stop_tx.send(());
    match serving.await {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(e)) => Err(Error::unavailable("the route failed").with_source(e)),
        Err(e) => Err(Error::internal("the route task died").with_source(e)),
    }
}

/// `cim server`.
pub async fn server(file: Option<&Path>) -> Result<ExitCode> {
    let figment = figment(file, false);
    let core = CoreConfig::from_figment(&figment)?;
    let key = AuthConfig::from_figment(&figment)?.key()?;
    let server_config = ServerConfig::from_figment(&figment)?;
    let limits = LimitsConfig::from_figment(&figment)?;
    let id = server_config.server_id()?;
    let stores = Stores::from_config(&core).await?;
    let server = Server::builder(id, stores, key)
        .config(server_config)
        .limits(limits)
        .names(core.names.clone())
        .start()
        .await?;
    println!(
        "cim server {} is running: clients {}, internal {}",
        server.id(),
        server.client_addr(),
        server.internal_addr()
    );
    shutdown_signal().await;
    server.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

/// `cim route`.
pub async fn route(file: Option<&Path>) -> Result<ExitCode> {
    let figment = figment(file, false);
    let core = CoreConfig::from_figment(&figment)?;
    let key = AuthConfig::from_figment(&figment)?.key()?;
    let route_config = route_config(&figment)?;
    let limits = LimitsConfig::from_figment(&figment)?;
    let stores = Stores::from_config(&core).await?;
    let listener = bind(&route_config.listen, "route").await?;
    let route = Route::new(route_config, stores, key, core.names.clone(), limits)?;
    if let Ok(address) = listener.local_addr() {
        println!("cim route is running: http://{address}");
    }
    route
        .serve(listener, shutdown_signal())
        .await
        .map_err(|e| Error::unavailable("the route failed").with_source(e))?;
    Ok(ExitCode::SUCCESS)
}

/// `cim conformance`.
pub async fn conformance(file: Option<&Path>, ttl: Duration) -> Result<ExitCode> {
    let figment = figment(file, false);
    let mut core = CoreConfig::from_figment(&figment)?;
    // Embedded file backends write into a scratch directory, removed afterwards; networked
    // backends get a namespace of their own per case.
    let scratch = tempfile::tempdir().map_err(|e| {
        Error::unavailable("cannot create a scratch directory for the suite").with_source(e)
    })?;
    core.data_dir = scratch.path().to_path_buf();
    let name = file.map_or_else(|| "defaults".to_string(), |f| f.display().to_string());
    let report = Suite::from_config(name, &core)?.ttl(ttl).run().await;
    print!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Figment {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cim.toml");
        Figment::from(Toml::file_exact(path))
    }

    #[test]
    fn the_sample_config_states_the_server_route_and_auth_defaults() {
        let figment = sample();
        let server = ServerConfig::from_figment(&figment).expect("[server] of the sample");
        assert_eq!(server, ServerConfig::default());
        let route = route_config(&figment).expect("[route] of the sample");
        assert_eq!(route, RouteConfig::default());
        let limits = LimitsConfig::from_figment(&figment).expect("[limits] of the sample");
        assert_eq!(limits, LimitsConfig::default());
        let auth = AuthConfig::from_figment(&figment).expect("[auth] of the sample");
        assert!(auth.secret.is_none() && auth.secret_file.is_none());
    }

    #[test]
    fn standalone_defaults_stay_on_loopback_and_the_file_overrides_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cim.toml");
        std::fs::write(&file, "[route]\nlisten = \"127.0.0.1:9999\"\n").expect("write");
        let figment = figment(Some(&file), true);
        let server = ServerConfig::from_figment(&figment).expect("server");
        assert_eq!(server.listen, "127.0.0.1:7000");
        assert_eq!(server.id.as_deref(), Some("standalone"));
        assert_eq!(
            route_config(&figment).expect("route").listen,
            "127.0.0.1:9999"
        );
    }

    #[test]
    fn a_bad_route_key_is_a_config_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cim.toml");
        std::fs::write(&file, "[route]\nlogin_polcy = \"reject\"\n").expect("write");
        let err = route_config(&figment(Some(&file), false)).expect_err("misspelt key");
        assert_eq!(err.kind(), cim_core::ErrorKind::Config);
        assert!(err.message().contains("login_polcy"), "{err}");
    }
}
