//! The daemon under test: a real vessel-shim process on its own socket and state dirs, with
//! a config of the test's, killed and restarted at will; and the binaries cargo built.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use vessel_protocols::cri;
use vessel_protocols::cri::image_service_client::ImageServiceClient;
use vessel_protocols::cri::runtime_service_client::RuntimeServiceClient;

/// A workspace binary cargo built beside the tests and benchmarks (`cargo build --bins`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // A test lives in target/<profile>/deps/, a bin target (a benchmark) in target/<profile>/;
    // the workspace's binaries are in target/<profile>/ either way.
    let dir = exe.parent().expect("target dir");
    let profile = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target dir")
    } else {
        dir
    };
    profile.join(name)
}

/// The daemon binary.
pub fn shim_binary() -> PathBuf {
    workspace_binary("vessel-shim")
}

/// A vessel-shim process of a test, with its own socket, root and state dirs.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    config: PathBuf,
    /// The network namespace the daemon runs in; the test's own when None.
    netns: Option<PathBuf>,
    child: Option<Child>,
}

impl Daemon {
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("shim.log")
    }

    /// Starts vessel-shim with its own socket and dirs and waits until it answers.
    pub async fn start() -> Self {
        Self::start_with_config(None).await
    }

    /// Like [`Daemon::start`], with a config file holding `toml`.
    pub async fn start_with_config(toml: Option<&str>) -> Self {
        Self::start_in(None, toml).await
    }

    /// Like [`Daemon::start_with_config`], inside the network namespace pinned at `netns`.
    pub async fn start_in(netns: Option<&Path>, toml: Option<&str>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vs-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let socket = dir.path().join("cri.sock");
        let config = dir.path().join("vessel.toml");
        std::fs::write(&config, test_config(toml)).expect("write config");
        let mut daemon = Self {
            dir,
            socket,
            config,
            netns: netns.map(Path::to_owned),
            child: None,
        };
        daemon.spawn().await;
        daemon
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("shim log");
        let err = log.try_clone().expect("shim log");
        let mut command = match &self.netns {
            // nsenter enters the namespace and execs the daemon: the pid stays the daemon's.
            Some(netns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", netns.display()))
                    .arg(shim_binary());
                c
            }
            None => Command::new(shim_binary()),
        };
        command.arg("--config").arg(&self.config);
        let child = command
            .arg("--socket")
            .arg(&self.socket)
            .arg("--root")
            .arg(self.root())
            .arg("--state")
            .arg(self.state())
            .env("RUST_LOG", "vessel_shim=debug")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn vessel-shim");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut c) = self.try_client().await {
                if c.version(vessel_protocols::cri::VersionRequest::default())
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "vessel-shim exited ({status}):\n{}",
                    vessel_shim::hypervisor::tail_file(&self.log(), 40)
                );
            }
            assert!(Instant::now() < deadline, "vessel-shim did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        let path = self.socket.clone();
        Endpoint::try_from("http://vessel.invalid")?
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(TokioIo::new)
                }
            }))
            .await
    }

    async fn try_client(&self) -> Result<RuntimeServiceClient<Channel>, tonic::transport::Error> {
        Ok(RuntimeServiceClient::new(self.channel().await?)
            .max_decoding_message_size(32 * 1024 * 1024))
    }

    pub async fn client(&self) -> RuntimeServiceClient<Channel> {
        self.try_client().await.expect("connect CRI socket")
    }

    /// An ImageService client on the same socket.
    pub async fn image_client(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await.expect("connect CRI socket"))
    }

    /// The VMM the daemon runs pods on (`vessel-vmm` or `qemu`), from verbose Status.
    pub async fn vmm(&self) -> String {
        let status = self
            .client()
            .await
            .status(cri::StatusRequest { verbose: true })
            .await
            .expect("Status")
            .into_inner();
        let info = status
            .info
            .get("hypervisor")
            .expect("hypervisor in Status info");
        let doc: serde_json::Value = serde_json::from_str(info).expect("Status info is JSON");
        doc["vmm"].as_str().expect("hypervisor.vmm").to_owned()
    }

    /// The daemon's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILLs the daemon (its pod VMs keep running).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills and starts the daemon again on the same dirs.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Like [`Daemon::restart`], with a config file holding `toml` from now on (as a node
    /// upgrade changes what the daemon runs with).
    pub async fn restart_with_config(&mut self, toml: Option<&str>) {
        self.kill();
        std::fs::write(&self.config, test_config(toml)).expect("write config");
        self.spawn().await;
    }
}

impl Drop for Daemon {
    /// Kills the daemon; a test that failed midway may leave pod VMs and mounts, which are
    /// cleaned up too (a passing test has removed them through the CRI already).
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = vessel_shim::hypervisor::tail_file(&self.log(), 60);
            eprintln!("---- vessel-shim log (last lines)\n{log}");
            crate::print_pod_logs(&self.state().join("pods"));
        }
        self.kill();
        crate::leftovers::kill_and_unmount(self.dir.path());
    }
}

/// The daemon's config: the test's, with pod networking off unless it has a `[cni]` section,
/// and the hypervisor kind [`crate::FORCED_HYPERVISOR`] asks for unless it names one.
fn test_config(toml: Option<&str>) -> String {
    // Pods of a test without a `[cni]` section get no network: the node's own CNI config
    // (if any) must not be used, and the networking tests give their own.
    let text = match toml.unwrap_or_default() {
        t if t.contains("[cni]") => t.to_owned(),
        t => format!("{t}\n[cni]\nenabled = false\n"),
    };
    let Some(kind) = std::env::var(crate::FORCED_HYPERVISOR).ok() else {
        return text;
    };
    let _ = crate::forced_hypervisor(); // rejects a bad value
    if text.lines().any(|l| l.trim_start().starts_with("kind")) {
        return text;
    }
    let line = format!("kind = {kind:?}\n");
    match text.find("[hypervisor]\n") {
        Some(at) => {
            let after = at + "[hypervisor]\n".len();
            format!("{}{line}{}", &text[..after], &text[after..])
        }
        None => format!("{text}\n[hypervisor]\n{line}"),
    }
}
