//! End-to-end CRI test helpers: the daemon under test ([`daemon`]), a tonic CRI client, and
//! the calls tests make of it (pods, containers, exec, stats, images) with their checks.

mod daemon;

pub use daemon::{shim_binary, workspace_binary, Daemon};

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use vessel_protocols::cri;
use vessel_protocols::cri::image_service_client::ImageServiceClient;
use vessel_protocols::cri::runtime_service_client::RuntimeServiceClient;

use crate::registry::Registry;

/// A pod config named `name` in namespace default, logging below `log_dir`.
pub fn pod_config(name: &str, log_dir: &std::path::Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        labels: HashMap::from([("app".into(), name.into())]),
        annotations: HashMap::from([("note".into(), "test".into())]),
        ..Default::default()
    }
}

/// A container config running `command` from `image`, logging to `<name>/0.log`.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        labels: HashMap::from([("ctr".into(), name.into())]),
        ..Default::default()
    }
}

/// The CRI status of a container.
pub async fn container_status(
    cri: &mut cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
) -> cri::ContainerStatus {
    cri.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .expect("container status")
    .into_inner()
    .status
    .expect("status")
}

/// Polls ContainerStatus until the container reaches `state` (30 s at most).
pub async fn wait_state(
    cri: &mut cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
    state: cri::ContainerState,
) -> cri::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = container_status(cri, id).await;
        if status.state == state as i32 {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} never reached {state:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A CRI client on the daemon's socket.
pub type Client = RuntimeServiceClient<Channel>;

/// An ImageService client on the daemon's socket.
pub type ImageClient = ImageServiceClient<Channel>;

/// PullImage of `image`; the image id, or the gRPC status of the failure.
pub async fn pull(
    images: &mut ImageClient,
    image: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String, tonic::Status> {
    images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

/// ImageStatus of `image` (`None` when the daemon does not have it).
pub async fn image_status(images: &mut ImageClient, image: &str) -> Option<cri::Image> {
    images
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap_or_else(|e| panic!("ImageStatus {image}: {e:?}"))
        .into_inner()
        .image
}

/// A registry holding the busybox test image; returns it and the image's reference.
pub async fn registry_with_busybox() -> (Registry, String) {
    let registry = Registry::start();
    let busybox = crate::images::build(&crate::images::ImageSpec::busybox());
    crate::images::push(&registry.host(), "vessel/busybox", "latest", &busybox, None)
        .await
        .expect("push busybox to the test registry");
    let image = format!("{}/vessel/busybox:latest", registry.host());
    (registry, image)
}

/// What an end-to-end CRI test needs: a registry holding busybox, a daemon that pulled it,
/// a client, the image's reference and the test environment.
pub struct CriTest {
    pub daemon: Daemon,
    pub cri: Client,
    pub image: String,
    pub registry: Registry,
    pub env: crate::TestEnv,
}

impl CriTest {
    /// `None`, after a printed SKIPPED line, when the machine lacks what the test needs.
    pub async fn setup(test: &str) -> Option<Self> {
        Self::setup_with_config(test, None).await
    }

    /// [`CriTest::setup`] with a daemon config of the test's (see [`Daemon::start_with_config`]).
    pub async fn setup_with_config(test: &str, toml: Option<&str>) -> Option<Self> {
        let env = crate::TestEnv::detect(test)?;
        if !crate::registry::available(test) {
            return None;
        }
        let (registry, image) = registry_with_busybox().await;
        let daemon = Daemon::start_with_config(toml).await;
        crate::check_backend(test, &daemon.vmm().await);
        pull(&mut daemon.image_client().await, &image, None)
            .await
            .expect("pull busybox");
        let cri = daemon.client().await;
        Some(Self {
            daemon,
            cri,
            image,
            registry,
            env,
        })
    }
}

/// ExecSync of `sh -c cmd` in a container (30 s timeout): its exit code and stdout.
pub async fn exec_sh(cri: &mut Client, id: &str, cmd: &str) -> (i32, String) {
    let out = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), cmd.into()],
            timeout: 30,
        })
        .await
        .unwrap_or_else(|e| panic!("exec {cmd:?} in {id}: {e:?}"))
        .into_inner();
    (
        out.exit_code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Runs `sh -c cmd` in a container until its stdout is `want` (every 500 ms, at most
/// `within`); panics with `what` and the last output otherwise.
pub async fn wait_exec_output(
    cri: &mut Client,
    id: &str,
    cmd: &str,
    want: &str,
    within: Duration,
    what: &str,
) {
    let deadline = Instant::now() + within;
    loop {
        let (_, out) = exec_sh(cri, id, cmd).await;
        if out == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {out:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every pod ListPodSandbox returns.
pub async fn list_pods(cri: &mut Client) -> Vec<cri::PodSandbox> {
    cri.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
}

/// `config` with the given namespace options.
pub fn with_namespaces(
    mut config: cri::PodSandboxConfig,
    options: cri::NamespaceOption,
) -> cri::PodSandboxConfig {
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(options),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// Image tests need root (layers keep ownership and device nodes) and the registry tools;
/// false, after a SKIPPED line, without them.
pub fn can_pull(test: &str) -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        crate::skipped(test, "needs root (layers keep ownership and device nodes)");
        return false;
    }
    crate::registry::available(test)
}

/// The verbose PodSandboxStatus's `info` document of a pod (its VMM, pid and reason).
pub async fn pod_info(cri: &mut Client, pod: &str) -> serde_json::Value {
    let status = cri
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let info = status.info.get("info").expect("verbose pod info");
    serde_json::from_str(info).expect("pod info is JSON")
}

/// The VM of a pod: its VMM's name and, while it runs, pid.
pub async fn pod_vmm(cri: &mut Client, pod: &str) -> (String, Option<i32>) {
    let doc = pod_info(cri, pod).await;
    let vmm = doc["vmm"].as_str().unwrap_or_default().to_owned();
    let pid = doc["pid"].as_i64().and_then(|p| i32::try_from(p).ok());
    (vmm, pid)
}

/// The pod's state (`PodSandboxState` as i32: READY or NOTREADY).
pub async fn pod_state(cri: &mut Client, pod: &str) -> i32 {
    cri.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: pod.into(),
        verbose: false,
    })
    .await
    .expect("pod status")
    .into_inner()
    .status
    .expect("status")
    .state
}

/// The pod's primary IP (empty without a network), from PodSandboxStatus.
pub async fn pod_ip(cri: &mut Client, pod: &str) -> String {
    cri.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: pod.into(),
        verbose: false,
    })
    .await
    .expect("PodSandboxStatus")
    .into_inner()
    .status
    .and_then(|s| s.network)
    .map(|n| n.ip)
    .unwrap_or_default()
}

/// The environment variable naming the runtime handler the CRI test families run their pods
/// on: `kata` (microVM) when unset; `scripts/test.sh` runs them again with `runc` (native).
pub const HANDLER_ENV: &str = "VESSEL_TEST_HANDLER";

/// The handler this run's pods use (see [`HANDLER_ENV`]).
pub fn test_handler() -> String {
    std::env::var(HANDLER_ENV)
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kata".into())
}

/// Whether this run's pods are native (host containers), not microVMs.
pub fn native_run() -> bool {
    test_handler() == "runc"
}

/// RunPodSandbox of `config` on this run's handler ([`test_handler`]); returns the pod's id.
pub async fn run_pod(cri: &mut Client, config: &cri::PodSandboxConfig) -> String {
    run_pod_on(cri, config, &test_handler()).await
}

/// RunPodSandbox of `config` on `handler`; returns the pod's id.
pub async fn run_pod_on(cri: &mut Client, config: &cri::PodSandboxConfig, handler: &str) -> String {
    cri.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: handler.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("RunPodSandbox on {handler:?}: {e:?}"))
    .into_inner()
    .pod_sandbox_id
}

/// CreateContainer of `config` in `pod`: the container's id, or the error.
pub async fn create_container(
    cri: &mut Client,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    cri.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: Some(pod_config.clone()),
    })
    .await
    .map(|r| r.into_inner().container_id)
}

/// CreateContainer of `config` in `pod` and StartContainer, which must both succeed; returns
/// the container's id.
pub async fn run_container(
    cri: &mut Client,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> String {
    let id = create_container(cri, pod, pod_config, config)
        .await
        .expect("CreateContainer");
    start_container(cri, &id).await;
    id
}

/// PodSandboxStats of `pod`: its Linux figures.
pub async fn pod_stats(cri: &mut Client, pod: &str) -> cri::LinuxPodSandboxStats {
    cri.pod_sandbox_stats(cri::PodSandboxStatsRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .expect("PodSandboxStats")
    .into_inner()
    .stats
    .and_then(|s| s.linux)
    .expect("linux pod stats")
}

/// StartContainer, which must succeed.
pub async fn start_container(cri: &mut Client, id: &str) {
    cri.start_container(cri::StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer {id}: {e:?}"));
}

/// Asserts that `result` failed with `code` and a message that names `needle`.
pub fn expect_err(
    result: Result<impl std::fmt::Debug, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) {
    let err = result.expect_err("expected an error");
    assert_eq!(err.code(), code, "{err:?}");
    assert!(
        err.message().contains(needle),
        "{:?} does not name {needle:?}",
        err.message()
    );
}

/// Stops and removes a pod, then checks nothing of it is left on the host (its VM's host
/// cgroup included, wherever its status put it).
pub async fn remove_pod_checked(cri: &mut Client, daemon: &Daemon, pod: &str) {
    let cgroups: Vec<String> = pod_info(cri, pod).await["cgroup"]["hierarchies"]
        .as_array()
        .map(|dirs| {
            dirs.iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .expect("StopPodSandbox");
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .expect("RemovePodSandbox");
    let mut left = crate::leftovers::leftovers(&daemon.state().join("pods").join(pod));
    left.extend(
        cgroups
            .iter()
            .filter(|dir| std::path::Path::new(dir).exists())
            .map(|dir| format!("cgroup {dir} still exists")),
    );
    assert!(left.is_empty(), "left behind: {left:#?}");
}
