//! CRI RuntimeService end to end: a real vessel-shim daemon on its socket, a tonic client,
//! real pod VMs (QEMU), a busybox image pulled from a local registry.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tonic::Code;
use vessel_protocols::cri;
use vessel_tests::cri::{
    container_config, container_status, list_pods, pod_config, wait_state, CriTest,
};
use vessel_tests::leftovers::leftovers;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_and_container_lifecycle_through_the_cri_socket() {
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        image,
        registry: _registry,
    }) = CriTest::setup("pod_and_container_lifecycle_through_the_cri_socket").await
    else {
        return;
    };
    let logs = env.state_dir().join("logs");

    let v = cri
        .version(cri::VersionRequest::default())
        .await
        .expect("version")
        .into_inner();
    assert_eq!(
        (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
        ("vessel", "v1")
    );
    let status = cri
        .status(cri::StatusRequest { verbose: true })
        .await
        .expect("status")
        .into_inner();
    let conditions = status.status.expect("conditions").conditions;
    let ready = conditions
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .expect("RuntimeReady");
    assert!(ready.status, "{ready:?}");
    let net = conditions
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("NetworkReady");
    assert!(!net.status && !net.reason.is_empty(), "{net:?}");

    // ImageService: unknown → null without error; pull, status, list, remove.
    let mut images = daemon.image_client().await;
    let status_of = |image: &str| cri::ImageStatusRequest {
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        verbose: false,
    };
    let unknown = images
        .image_status(status_of("/no/such/image"))
        .await
        .expect("status of an unknown image")
        .into_inner();
    assert!(unknown.image.is_none());
    let pulled = images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("pull")
        .into_inner()
        .image_ref;
    assert!(pulled.starts_with("sha256:"), "{pulled}");
    let present = images
        .image_status(status_of(&image))
        .await
        .expect("status")
        .into_inner();
    assert_eq!(present.image.map(|i| i.id), Some(pulled.clone()));
    let listed = images
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .expect("list images")
        .into_inner()
        .images;
    assert_eq!(
        listed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [pulled.as_str()]
    );
    let fs = images
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .expect("image fs info")
        .into_inner();
    assert!(fs.image_filesystems[0]
        .used_bytes
        .as_ref()
        .is_some_and(|u| u.value > 0));
    for _ in 0..2 {
        images
            .remove_image(cri::RemoveImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
            })
            .await
            .expect("remove image");
    }
    let gone = images
        .image_status(status_of(&image))
        .await
        .expect("status")
        .into_inner();
    assert!(gone.image.is_none());
    // Pulled again for the containers below.
    vessel_tests::cri::pull(&mut images, &image, None)
        .await
        .expect("pull again");

    // RunPodSandbox; the same (name, namespace, uid, attempt) again returns the same pod.
    let config = pod_config("web", &logs);
    let run = cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: "kata".into(),
    };
    let pod_id = cri
        .run_pod_sandbox(run.clone())
        .await
        .expect("runp")
        .into_inner()
        .pod_sandbox_id;
    assert_eq!(pod_id.len(), 64);
    let again = cri
        .run_pod_sandbox(run)
        .await
        .expect("runp again")
        .into_inner()
        .pod_sandbox_id;
    assert_eq!(again, pod_id);

    let st = cri
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: false,
        })
        .await
        .expect("pod status")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert!(st.created_at > 0);
    let meta = st.metadata.expect("metadata");
    assert_eq!(
        (
            meta.name.as_str(),
            meta.namespace.as_str(),
            meta.uid.as_str()
        ),
        ("web", "default", "uid-web")
    );
    assert_eq!(st.runtime_handler, "kata");
    assert_eq!(st.labels.get("app").map(String::as_str), Some("web"));
    assert!(st.linux.is_some());

    // A container that prints, then one that runs.
    let create = |name: &str, cmd: &[&str]| cri::CreateContainerRequest {
        pod_sandbox_id: pod_id.clone(),
        config: Some(container_config(name, &image, cmd)),
        sandbox_config: Some(config.clone()),
    };
    let hello = cri
        .create_container(create(
            "hello",
            &["sh", "-c", "echo hello; echo oops >&2; exit 3"],
        ))
        .await
        .expect("create hello")
        .into_inner()
        .container_id;
    cri.start_container(cri::StartContainerRequest {
        container_id: hello.clone(),
    })
    .await
    .expect("start hello");
    let status = wait_state(&mut cri, &hello, cri::ContainerState::ContainerExited).await;
    assert_eq!(status.exit_code, 3);
    assert_eq!(status.reason, "Error");
    assert!(status.finished_at >= status.started_at && status.started_at >= status.created_at);
    assert_eq!(
        status.image.as_ref().map(|i| i.image.as_str()),
        Some(image.as_str())
    );
    assert!(!status.image_ref.is_empty());
    assert_eq!(status.id, hello);
    assert_eq!(
        status.metadata.as_ref().map(|m| m.name.as_str()),
        Some("hello")
    );
    assert!(status.created_at > 0);
    let log_path = std::path::PathBuf::from(&status.log_path);
    assert!(log_path.is_absolute(), "{}", status.log_path);
    let log = std::fs::read_to_string(&log_path).expect("CRI log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout F hello")),
        "{log}"
    );
    assert!(lines.iter().any(|l| l.ends_with(" stderr F oops")), "{log}");

    let sleeper = cri
        .create_container(create("sleeper", &["sh", "-c", "trap '' TERM; sleep 1000"]))
        .await
        .expect("create sleeper")
        .into_inner()
        .container_id;
    cri.start_container(cri::StartContainerRequest {
        container_id: sleeper.clone(),
    })
    .await
    .expect("start sleeper");

    // ExecSync: output and exit code; a timeout kills the command.
    let out = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: sleeper.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo out; echo err >&2; exit 5".into(),
            ],
            timeout: 0,
        })
        .await
        .expect("exec sync")
        .into_inner();
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice(), out.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 5)
    );
    let started = Instant::now();
    let err = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: sleeper.clone(),
            cmd: vec!["sleep".into(), "30".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let ps = cri
        .exec_sync(cri::ExecSyncRequest {
            container_id: sleeper.clone(),
            cmd: vec!["ps".into()],
            timeout: 10,
        })
        .await
        .expect("ps")
        .into_inner();
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert!(
        !ps.contains("sleep 30"),
        "timed-out exec still running:\n{ps}"
    );

    // Filters.
    let list = |filter: cri::ContainerFilter| cri::ListContainersRequest {
        filter: Some(filter),
    };
    let all = cri
        .list_containers(list(Default::default()))
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(all.len(), 2);
    let running = cri
        .list_containers(list(cri::ContainerFilter {
            state: Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        }))
        .await
        .expect("list running")
        .into_inner()
        .containers;
    assert_eq!(
        running.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [sleeper.as_str()]
    );
    let by_label = cri
        .list_containers(list(cri::ContainerFilter {
            label_selector: HashMap::from([("ctr".into(), "hello".into())]),
            ..Default::default()
        }))
        .await
        .expect("list by label")
        .into_inner()
        .containers;
    assert_eq!(
        by_label.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [hello.as_str()]
    );
    let by_prefix = cri
        .list_containers(list(cri::ContainerFilter {
            id: sleeper[..12].into(),
            ..Default::default()
        }))
        .await
        .expect("list by id")
        .into_inner()
        .containers;
    assert_eq!(by_prefix.len(), 1);

    // StopContainer: SIGTERM is ignored, SIGKILL follows after the timeout.
    let started = Instant::now();
    cri.stop_container(cri::StopContainerRequest {
        container_id: sleeper.clone(),
        timeout: 2,
    })
    .await
    .expect("stop sleeper");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "{took:?}"
    );
    let status = container_status(&mut cri, &sleeper).await;
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(status.exit_code, 137);

    // Remove, stop and remove the pod; repeats and unknown ids succeed.
    for id in [&hello, &sleeper] {
        cri.remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("remove container");
        cri.remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("remove container again");
    }
    let err = cri
        .container_status(cri::ContainerStatusRequest {
            container_id: hello.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .expect("stopp");
    let pods = list_pods(&mut cri).await;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxNotready as i32);
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .expect("rmp");
    cri.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .expect("rmp again");
    cri.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: "unknown".into(),
    })
    .await
    .expect("stopp unknown");
    cri.stop_container(cri::StopContainerRequest {
        container_id: "unknown".into(),
        timeout: 1,
    })
    .await
    .expect("stop unknown container");
    let left = leftovers(&daemon.state().join("pods").join(&pod_id));
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// Status says why pods cannot start before kubelet schedules any: RuntimeReady is false and
/// names, by config key, each part the chosen backend lacks (here vessel-vmm, as on a host
/// where only the daemon was built); every verbose info value is a JSON document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_what_the_backend_lacks() {
    let daemon = vessel_tests::cri::Daemon::start_with_config(Some(
        "[hypervisor]\nkind = \"builtin\"\nvmm = \"/nonexistent/vessel-vmm\"\n",
    ))
    .await;
    let status = daemon
        .client()
        .await
        .status(cri::StatusRequest { verbose: true })
        .await
        .expect("status")
        .into_inner();
    let ready = status
        .status
        .expect("conditions")
        .conditions
        .into_iter()
        .find(|c| c.r#type == "RuntimeReady")
        .expect("RuntimeReady");
    assert!(!ready.status, "{ready:?}");
    assert!(
        ready
            .message
            .contains("hypervisor.vmm /nonexistent/vessel-vmm not found"),
        "{ready:?}"
    );
    for (key, value) in &status.info {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(value);
        assert!(parsed.is_ok(), "info[{key}] is not JSON: {value}");
    }
    assert_eq!(daemon.vmm().await, "vessel-vmm");
}

/// NetworkReady follows the CNI conf dir without a restart: it names the empty dir, then the
/// plugin a new config lacks, then turns true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_status_follows_the_cni_conf_dir() {
    let test = "network_status_follows_the_cni_conf_dir";
    let plugins = std::path::Path::new("/usr/lib/cni");
    if !plugins.join("bridge").is_file() {
        vessel_tests::skipped(
            test,
            "/usr/lib/cni/bridge missing (scripts/setup.sh installs containernetworking-plugins)",
        );
        return;
    }
    let conf = tempfile::tempdir().expect("conf dir");
    let daemon = vessel_tests::cri::Daemon::start_with_config(Some(&format!(
        "[cni]\nconf_dir = {:?}\nbin_dirs = [\"/nonexistent\", {:?}]\n",
        conf.path().display().to_string(),
        plugins.display().to_string()
    )))
    .await;
    let mut cri = daemon.client().await;
    let empty = network_condition(&mut cri).await;
    assert!(
        !empty.status && empty.reason == "NetworkPluginNotReady",
        "{empty:?}"
    );
    assert!(
        empty.message.contains(&format!(
            "no network config (.conflist, .conf or .json) in {}",
            conf.path().display()
        )),
        "{empty:?}"
    );
    let list = |plugin: &str| {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"vessel","plugins":[
                {{"type":"bridge","bridge":"vessel0","ipam":{{"type":"host-local","subnet":"10.88.0.0/16"}}}},
                {{"type":"{plugin}","capabilities":{{"portMappings":true}}}}]}}"#
        )
    };
    let file = conf.path().join("10-vessel.conflist");
    std::fs::write(&file, list("vessel-no-such-plugin")).expect("write conflist");
    let missing = network_condition(&mut cri).await;
    assert!(
        missing
            .message
            .contains("plugin \"vessel-no-such-plugin\" not found in /nonexistent, /usr/lib/cni"),
        "{missing:?}"
    );
    std::fs::write(&file, list("portmap")).expect("write conflist");
    let usable = network_condition(&mut cri).await;
    assert!(
        usable.status && usable.reason.is_empty(),
        "a usable config: {usable:?}"
    );
}

async fn network_condition(cri: &mut vessel_tests::cri::Client) -> cri::RuntimeCondition {
    cri.status(cri::StatusRequest { verbose: false })
        .await
        .expect("status")
        .into_inner()
        .status
        .expect("conditions")
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("NetworkReady")
}
