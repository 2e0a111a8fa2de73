//! Shared fixtures of vessel's end-to-end tests and benchmarks: environment detection (with a
//! printed SKIPPED line when something real is missing), pod VMs on the real guest image, and
//! busybox container rootfs trees, a real registry and the test images pushed to it.

pub mod cri;
pub mod images;
pub mod leftovers;
pub mod registry;
pub mod rootfs;
pub mod tiny_elf;
pub mod token_auth;

use std::path::{Path, PathBuf};
use std::time::Duration;

use vessel_protocols::agent as api;
use vessel_shim::config::HypervisorConfig;
use vessel_shim::hypervisor::{probe_kvm, select, Backend};
use vessel_shim::oci;
use vessel_shim::sandbox::{AgentClient, AgentError, PodVm, PodVmSpec};

/// Reports that `test` did not run and why, as a `SKIPPED` line on the real stderr: the test
/// harness captures `println!` of passing tests, and a skip must show in every run's output.
pub fn skipped(test: &str, reason: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// What an end-to-end test needs; `detect` prints SKIPPED and returns None when it is missing.
pub struct TestEnv {
    pub hypervisor: HypervisorConfig,
    pub backend: Backend,
    pub state: tempfile::TempDir,
}

impl TestEnv {
    /// Checks for root, QEMU, the helper tools and the built guest image.
    pub fn detect(test: &str) -> Option<Self> {
        init_tracing();
        let mut hypervisor = HypervisorConfig::default();
        // For debugging a failing boot: e.g. "loglevel=7 vessel.log=debug".
        if let Ok(params) = std::env::var("VESSEL_TEST_KERNEL_PARAMS") {
            hypervisor.kernel_params = params;
        }
        let mut missing = Vec::new();
        if !nix::unistd::Uid::effective().is_root() {
            missing.push("not running as root".to_string());
        }
        for (what, path) in [
            ("guest kernel", &hypervisor.kernel),
            ("guest initramfs", &hypervisor.initrd),
        ] {
            if !path.is_file() {
                missing.push(format!(
                    "{what} {} missing (run guest-image/build.sh)",
                    path.display()
                ));
            }
        }
        for tool in [
            &hypervisor.qemu,
            &hypervisor.virtiofsd,
            &hypervisor.vhost_device_vsock,
        ] {
            if which(tool).is_none() {
                missing.push(format!("{} not found", tool.display()));
            }
        }
        if !Path::new(rootfs::BUSYBOX).is_file() {
            missing.push(format!(
                "{} missing (apt-get install busybox-static)",
                rootfs::BUSYBOX
            ));
        }
        if !missing.is_empty() {
            skipped(test, &missing.join("; "));
            return None;
        }
        let selection = select(&hypervisor, &probe_kvm());
        println!("{test}: {}", selection.reason);
        let state = tempfile::Builder::new()
            .prefix("vessel-")
            .tempdir_in("/tmp")
            .ok()?;
        Some(Self {
            hypervisor,
            backend: selection.backend,
            state,
        })
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// The spec of a pod VM named `id` on this environment.
    pub fn vm_spec(&self, id: &str) -> PodVmSpec {
        PodVmSpec {
            id: id.into(),
            state_dir: self.state_dir().to_owned(),
            hypervisor: self.hypervisor.clone(),
            backend: self.backend,
            hostname: id.into(),
            dns: vec!["nameserver 127.0.0.1".into()],
            share_pid_namespace: false,
        }
    }

    pub async fn start_vm(&self, id: &str) -> PodVm {
        match PodVm::start(self.vm_spec(id)).await {
            Ok(vm) => vm,
            Err(e) => panic!("start pod VM {id}: {e}"),
        }
    }
}

impl Drop for TestEnv {
    /// A failed test may leave mounts below the state dir: detach them before the temp dir
    /// is deleted, so deletion never reaches into a bind-mounted source.
    fn drop(&mut self) {
        let _ = vessel_shim::mounts::unmount_all_under(self.state.path());
    }
}

/// Resolves a program like a shell would.
pub fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "vessel_shim=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Output and exit of a process run to completion.
#[derive(Debug)]
pub struct Finished {
    pub stdout: String,
    pub stderr: String,
    pub wait: api::WaitProcessResponse,
}

/// Reads one stream of a process to its end.
pub async fn read_all(
    agent: &AgentClient,
    container_id: &str,
    exec_id: &str,
    stderr: bool,
) -> Result<String, AgentError> {
    let mut out = Vec::new();
    loop {
        let mut req = api::ReadStreamRequest::new();
        req.container_id = container_id.into();
        req.exec_id = exec_id.into();
        let chunk = if stderr {
            agent.read_stderr(req).await?
        } else {
            agent.read_stdout(req).await?
        };
        if chunk.data.is_empty() {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        out.extend_from_slice(&chunk.data);
    }
}

/// Collects stdout, stderr and the exit status of a process.
pub async fn finish(
    agent: &AgentClient,
    container_id: &str,
    exec_id: &str,
) -> Result<Finished, AgentError> {
    let mut wait = api::WaitProcessRequest::new();
    wait.container_id = container_id.into();
    wait.exec_id = exec_id.into();
    let (stdout, stderr, wait) = tokio::join!(
        read_all(agent, container_id, exec_id, false),
        read_all(agent, container_id, exec_id, true),
        agent.wait_process(wait),
    );
    Ok(Finished {
        stdout: stdout?,
        stderr: stderr?,
        wait: wait?,
    })
}

/// Builds a busybox rootfs for `container_id` in the VM's shared dir and creates the
/// container running `args`.
pub async fn create_busybox_container(
    vm: &PodVm,
    container_id: &str,
    args: &[&str],
) -> Result<(), AgentError> {
    rootfs::busybox_rootfs(&vm.shared_dir().join(container_id).join("rootfs"))
        .expect("build busybox rootfs");
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let spec = oci::container_spec(container_id, &args, &[]).expect("spec");
    create_container(vm, container_id, &spec).await
}

/// Creates a container from a spec.
pub async fn create_container(
    vm: &PodVm,
    container_id: &str,
    spec: &oci_spec::runtime::Spec,
) -> Result<(), AgentError> {
    let mut req = api::CreateContainerRequest::new();
    req.container_id = container_id.into();
    req.spec_json = oci::to_json(spec).expect("encode spec");
    vm.agent().create_container(req).await.map(|_| ())
}

pub async fn start_container(vm: &PodVm, container_id: &str) -> Result<(), AgentError> {
    let mut req = api::StartContainerRequest::new();
    req.container_id = container_id.into();
    vm.agent().start_container(req).await.map(|_| ())
}

pub async fn exec(
    vm: &PodVm,
    container_id: &str,
    exec_id: &str,
    args: &[&str],
) -> Result<(), AgentError> {
    let process = oci_spec::runtime::ProcessBuilder::default()
        .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .env(vec![oci::DEFAULT_PATH.to_string()])
        .cwd("/")
        .build()
        .expect("process");
    let mut req = api::ExecProcessRequest::new();
    req.container_id = container_id.into();
    req.exec_id = exec_id.into();
    req.process_json = serde_json::to_vec(&process).expect("encode process");
    vm.agent().exec_process(req).await.map(|_| ())
}

pub async fn signal(
    vm: &PodVm,
    container_id: &str,
    exec_id: &str,
    signal: i32,
) -> Result<(), AgentError> {
    let mut req = api::SignalProcessRequest::new();
    req.container_id = container_id.into();
    req.exec_id = exec_id.into();
    req.signal = signal as u32;
    vm.agent().signal_process(req).await.map(|_| ())
}

pub async fn remove_container(vm: &PodVm, container_id: &str) -> Result<(), AgentError> {
    let mut req = api::RemoveContainerRequest::new();
    req.container_id = container_id.into();
    vm.agent().remove_container(req).await.map(|_| ())
}

/// Runs `f` with a deadline, panicking with `what` when it passes.
pub async fn within<T>(secs: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {secs} s"),
    }
}
