//! Shared fixtures of vessel's end-to-end tests and benchmarks: environment detection (with a
//! printed SKIPPED line when something real is missing), pod VMs on the real guest image, and
//! busybox container rootfs trees, a real registry and the test images pushed to it.

pub mod bench;
pub mod cgroups;
pub mod cri;
pub mod images;
pub mod leftovers;
pub mod node_net;
pub mod registry;
pub mod rootfs;
pub mod spec;
pub mod streams;
pub mod tiny_elf;
pub mod token_auth;

use std::path::{Path, PathBuf};
use std::time::Duration;

use vessel_protocols::agent as api;
use vessel_shim::config::{HypervisorConfig, HypervisorKind};
use vessel_shim::hypervisor::{self, probe_kvm, select, Backend};
use vessel_shim::oci;
use vessel_shim::pod_vm::{AgentClient, AgentError, PodVm, PodVmSpec};

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

/// The environment variable that forces a run's daemons and VMs onto one hypervisor kind
/// (`builtin` or `qemu`, as `hypervisor.kind`) where the test does not choose one itself: on
/// a host where `auto` picks vessel-vmm, it gives QEMU its run of the same tests.
pub const FORCED_HYPERVISOR: &str = "VESSEL_TEST_HYPERVISOR";

/// The hypervisor kind [`FORCED_HYPERVISOR`] forces, if any.
pub fn forced_hypervisor() -> Option<HypervisorKind> {
    let kind = std::env::var(FORCED_HYPERVISOR).ok()?;
    match kind.as_str() {
        "builtin" => Some(HypervisorKind::Builtin),
        "qemu" => Some(HypervisorKind::Qemu),
        other => panic!("{FORCED_HYPERVISOR}={other:?}: use builtin or qemu"),
    }
}

/// The environment variable naming the backend a run must use (`builtin` or `qemu`): the
/// nested-KVM run sets it, so a silent fallback to QEMU fails instead of passing.
pub const EXPECTED_BACKEND: &str = "VESSEL_TEST_BACKEND";

/// Panics unless the VMM named `vmm` (`vessel-vmm`, `qemu`) is what [`EXPECTED_BACKEND`]
/// asks for; any VMM passes when it is unset.
pub fn check_backend(test: &str, vmm: &str) {
    let Ok(expected) = std::env::var(EXPECTED_BACKEND) else {
        return;
    };
    let wanted = match expected.as_str() {
        "builtin" => Backend::Builtin.vmm_name(),
        "qemu" => Backend::Qemu { kvm: false }.vmm_name(),
        other => panic!("{EXPECTED_BACKEND}={other:?}: use builtin or qemu"),
    };
    assert_eq!(
        vmm, wanted,
        "{test}: pods run on {vmm}, but {EXPECTED_BACKEND}={expected}"
    );
}

/// The initramfs of the baseline guest agent (`guest-image/BASELINE`), built by
/// `scripts/build-guest-baseline.sh` (which `scripts/test.sh` runs): an older guest image, as a
/// pod VM booted before a node upgrade has.
pub fn baseline_initrd() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/guest-baseline/initramfs.img");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/build-guest-baseline.sh",
        path.display()
    );
    path
}

impl TestEnv {
    /// Checks for root, busybox and what the backend this host selects needs (its VMM and
    /// helpers, the built guest image).
    pub fn detect(test: &str) -> Option<Self> {
        init_tracing();
        let mut hypervisor = HypervisorConfig::default();
        // For debugging a failing boot: e.g. "loglevel=7 vessel.log=debug".
        if let Ok(params) = std::env::var("VESSEL_TEST_KERNEL_PARAMS") {
            hypervisor.kernel_params = params;
        }
        if let Some(kind) = forced_hypervisor() {
            hypervisor.kind = kind;
        }
        // The daemon finds vessel-vmm beside itself; a test binary lives one dir further down.
        let vmm = cri::workspace_binary("vessel-vmm");
        if vmm.is_file() {
            hypervisor.vmm = vmm;
        }
        let selection = select(&hypervisor, &probe_kvm());
        let mut missing = Vec::new();
        if !nix::unistd::Uid::effective().is_root() {
            missing.push("not running as root".to_string());
        }
        missing.extend(hypervisor::missing(selection.backend, &hypervisor));
        if !Path::new(rootfs::BUSYBOX).is_file() {
            missing.push(format!(
                "{} missing (apt-get install busybox-static)",
                rootfs::BUSYBOX
            ));
        }
        if !missing.is_empty() {
            skipped(
                test,
                &format!(
                    "{} (scripts/setup.sh and scripts/build-guest.sh install and build them)",
                    missing.join("; ")
                ),
            );
            return None;
        }
        println!("{test}: {}", selection.reason);
        check_backend(test, selection.backend.vmm_name());
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
            share_pid_namespace: false,
            network: None,
            memory_mib: self.hypervisor.memory_mib,
            vcpus: self.hypervisor.vcpus,
            cgroup: None,
            native_agent: vessel_shim::config::NativeConfig::default().agent,
            host_network: false,
            host_ipc: false,
            sysctls: Default::default(),
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
    /// is deleted, so deletion never reaches into a bind-mounted source. A failing test
    /// prints its pods' logs first.
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_pod_logs(&self.state.path().join("pods"));
        }
        let _ = vessel_shim::host_mounts::unmount_all_under(self.state.path());
    }
}

/// Log lines of each file printed by [`print_pod_logs`].
const FAILURE_LOG_LINES: usize = 40;

/// Prints the tail of every log of every pod below `pods` (console, VMM, helpers) to stderr:
/// what a failing test leaves to read, even where its temp dirs vanish with the machine (the
/// nested-KVM run).
pub fn print_pod_logs(pods: &Path) {
    use std::io::Write as _;
    let Ok(entries) = std::fs::read_dir(pods) else {
        return;
    };
    let mut err = std::io::stderr().lock();
    for pod in entries.flatten() {
        let Ok(files) = std::fs::read_dir(pod.path()) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            if path.extension().is_some_and(|e| e == "log") {
                let tail = hypervisor::tail_file(&path, FAILURE_LOG_LINES);
                let _ = writeln!(err, "---- {} (last lines)\n{tail}", path.display());
            }
        }
    }
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
    let spec = spec::bare_spec(container_id, &args, &[]).expect("spec");
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
