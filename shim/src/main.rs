//! vessel-shim: flags, config, logging, start.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use vessel_shim::config::Config;
use vessel_shim::hypervisor::{probe_kvm, select};

/// vessel's host daemon: one KVM microVM per Kubernetes pod.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Flags {
    /// TOML config file; every key has an embedded default.
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
    let config = Config::load(flags.config.as_deref())?;
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
    for dir in [&flags.root, &flags.state] {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    tracing::info!(
        socket = %flags.socket.display(),
        root = %flags.root.display(),
        state = %flags.state.display(),
        "vessel-shim started; the CRI server is not wired in yet"
    );
    tokio::signal::ctrl_c().await.context("wait for signal")?;
    tracing::info!("vessel-shim stopping");
    Ok(())
}
