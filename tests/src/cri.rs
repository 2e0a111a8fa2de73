//! A real vessel-shim daemon for end-to-end CRI tests: started as a process on its own socket
//! and state dirs, killed and restarted at will, with a tonic CRI client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use vessel_protocols::cri::runtime_service_client::RuntimeServiceClient;

/// The daemon binary cargo built beside the tests.
fn shim_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>/vessel-shim
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("vessel-shim"))
        .expect("target dir")
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
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
        let dir = tempfile::Builder::new()
            .prefix("vs-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let socket = dir.path().join("cri.sock");
        let mut daemon = Self {
            dir,
            socket,
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
        let child = Command::new(shim_binary())
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

    async fn try_client(&self) -> Result<RuntimeServiceClient<Channel>, tonic::transport::Error> {
        let path = self.socket.clone();
        let channel = Endpoint::try_from("http://vessel.invalid")?
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(TokioIo::new)
                }
            }))
            .await?;
        Ok(RuntimeServiceClient::new(channel).max_decoding_message_size(32 * 1024 * 1024))
    }

    pub async fn client(&self) -> RuntimeServiceClient<Channel> {
        self.try_client().await.expect("connect CRI socket")
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
}

impl Drop for Daemon {
    /// Kills the daemon; a test that failed midway may leave pod VMs and mounts, which are
    /// cleaned up too (a passing test has removed them through the CRI already).
    fn drop(&mut self) {
        self.kill();
        crate::leftovers::kill_and_unmount(self.dir.path());
    }
}
