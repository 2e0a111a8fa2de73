//! vessel-agent: PID 1 of a pod's microVM. Boots the guest (init/), then serves the agent
//! API over ttrpc on vsock port 1024 (rpc/) and byte streams (exec and attach I/O, port
//! forwarding) on vsock port 1025 (streams/), creating the pod's containers with
//! libcontainer (container/) on storage it mounts (storage/), and sets up the pod network's
//! interface, loopback and routes (network.rs). Started with
//! `__vessel-libcontainer` it is instead the one-shot libcontainer helper; started as
//! `/pause`, a pod's infra process (pause.rs); as `/sbin/modprobe`, the kernel's module loader
//! (init/modprobe.rs); as `vessel-agent host …`, a native pod's infra process on the host
//! (init/host.rs).
//!
//! Errors: each part has its own enum that knows its ttrpc status code
//! (`container::ContainerError`, `sandbox::SandboxError`, `storage::StorageError`, …); the
//! handlers gather them in `rpc::error::AgentError`, the one mapping to a ttrpc status.
//! GetGuestDetails reports the contract capabilities this agent implements
//! (`rpc::guest::CAPABILITIES`).

mod container;
mod error;
mod init;
mod network;
mod paths;
mod pause;
mod rpc;
mod sandbox;
mod storage;
mod streams;
mod sysctls;

use std::process::ExitCode;

use vessel_protocols::AGENT_VSOCK_PORT;

/// Overrides the listen address in dev runs (e.g. `unix:///tmp/agent.sock`).
pub const LISTEN_ENV: &str = "VESSEL_AGENT_LISTEN";

fn main() -> ExitCode {
    if container::libcontainer::helper::is_helper_invocation() {
        return container::libcontainer::helper::main();
    }
    if pause::is_pause_invocation() {
        return pause::main();
    }
    if init::modprobe::is_modprobe_invocation() {
        return init::modprobe::main();
    }
    if init::host::is_host_invocation() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if let Err(e) = init::host::parse(&args).and_then(|pod| init::host::enter(&pod)) {
            eprintln!("vessel-agent: host pod: {e}");
            return ExitCode::FAILURE;
        }
    }
    let boot = init::boot();
    if boot.pid1 {
        // PID 1 must never exit or abort (the kernel would panic): power off instead.
        std::panic::set_hook(Box::new(|info| {
            eprintln!("vessel-agent: panic: {info}");
            init::power::power_off(true);
        }));
    }
    let listen =
        std::env::var(LISTEN_ENV).unwrap_or_else(|_| format!("vsock://-1:{AGENT_VSOCK_PORT}"));
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(rpc::serve(&listen, boot.pid1)));
    if let Err(e) = result {
        tracing::error!(error = format!("{e:#}"), listen, "agent failed");
    }
    if boot.pid1 {
        init::power::power_off(true);
    }
    ExitCode::FAILURE
}
