//! vessel-shim: flags, config, logging, start.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use vessel_shim::config::Config;
use vessel_shim::hypervisor::{probe_kvm, select};
use vessel_shim::runtime::{Dirs, Runtime};
use vessel_shim::server::serve;
use vessel_shim::streaming::StreamingServer;

/// The config a node installs (deploy/config.toml); `--config` wins.
const DEFAULT_CONFIG: &str = "/etc/vessel/config.toml";

/// vessel's host daemon: one KVM microVM per Kubernetes pod.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Flags {
    /// TOML config file; every key has an embedded default. Without it,
    /// /etc/vessel/config.toml when that exists, else the embedded defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// CRI socket path.
    #[arg(long, default_value = "/run/vessel/vessel.sock")]
    socket: PathBuf,
    /// Persistent state (pods, containers, images).
    #[arg(long, default_value = "/var/lib/vessel")]
    root: PathBuf,
    /// Runtime state (pod VM sockets, logs, shared dirs).
    #[arg(long, default_value = "/run/vessel")]
    state: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let flags = Flags::parse();
    let config_path = flags.config.clone().or_else(|| {
        let default = PathBuf::from(DEFAULT_CONFIG);
        default.is_file().then_some(default)
    });
    let config = Config::load(config_path.as_deref())?;
    match &config_path {
        Some(path) => tracing::info!(config = %path.display(), "config loaded"),
        None => tracing::info!("no config file: embedded defaults"),
    }
    let selection = select(&config.hypervisor, &probe_kvm());
    tracing::info!(backend = ?selection.backend, reason = %selection.reason, "hypervisor selected");
    for (what, path) in [
        ("guest kernel", &config.hypervisor.kernel),
        ("guest initramfs", &config.hypervisor.initrd),
    ] {
        if !path.is_file() {
            tracing::warn!(path = %path.display(), "{what} missing: build it with scripts/build-guest.sh");
        }
    }
    let dirs = Dirs {
        root: flags.root.clone(),
        state: flags.state.clone(),
    };
    let runtime = Runtime::start(config, dirs, selection)
        .await
        .context("start runtime")?;
    let streaming = StreamingServer::start(&runtime.config.streaming, runtime.clone())
        .await
        .context("start the streaming server")?;
    serve(runtime.clone(), streaming, &flags.socket, shutdown_signal())
        .await
        .context("serve CRI")?;
    tracing::info!("vessel-shim stopped; pod VMs keep running and are adopted at the next start");
    // Exit without dropping the runtime: dropping would stop the pod VMs' processes.
    std::process::exit(0);
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
    tracing::info!("shutdown signal received");
}
