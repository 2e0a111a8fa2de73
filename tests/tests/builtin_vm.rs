//! The full boot on the built-in VMM: a daemon with `hypervisor.kind = "builtin"` runs a pod
//! on vessel-vmm (the Debian guest kernel, the agent reached over the VMM's hybrid vsock,
//! the shared dir through virtiofsd), then a container in it, and tears it all down. It
//! needs a KVM that runs full guests (vmx or svm in /proc/cpuinfo) and prints a SKIPPED
//! line with the reason elsewhere.

use vessel_protocols::cri;
use vessel_shim::hypervisor::{probe_kvm, KvmSupport};
use vessel_tests::cri::{
    container_config, exec_sh, pod_config, pull, registry_with_busybox, remove_pod_checked,
    wait_state, Daemon,
};
use vessel_tests::{skipped, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runs_in_a_pod_on_the_builtin_vmm() {
    let test = "a_container_runs_in_a_pod_on_the_builtin_vmm";
    if let KvmSupport::Unusable(why) = probe_kvm() {
        skipped(
            test,
            &format!("the built-in VMM needs a KVM that runs full guests: {why}"),
        );
        return;
    }
    let Some(env) = TestEnv::detect(test) else {
        return;
    };
    if !vessel_tests::registry::available(test) {
        return;
    }
    let (_registry, image) = registry_with_busybox().await;
    let daemon = Daemon::start_with_config(Some("[hypervisor]\nkind = \"builtin\"\n")).await;
    pull(&mut daemon.image_client().await, &image, None)
        .await
        .expect("pull busybox");
    let mut cri = daemon.client().await;
    let config = pod_config("builtin", &env.state_dir().join("logs"));
    let pod = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RunPodSandbox on vessel-vmm: {e:?}\nshim log:\n{}",
                vessel_shim::hypervisor::tail_file(&daemon.log(), 40)
            )
        })
        .into_inner()
        .pod_sandbox_id;
    let pod_dir = daemon.state().join("pods").join(&pod);
    assert!(
        pod_dir.join("vessel-vmm.log").is_file() && !pod_dir.join("qemu.log").exists(),
        "the pod must run on vessel-vmm"
    );

    let container = cri
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("app", &image, &["sleep", "600"])),
            sandbox_config: Some(config),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    cri.start_container(cri::StartContainerRequest {
        container_id: container.clone(),
    })
    .await
    .expect("StartContainer");
    wait_state(&mut cri, &container, cri::ContainerState::ContainerRunning).await;
    let (code, out) = exec_sh(&mut cri, &container, "echo hello from $(hostname)").await;
    assert_eq!((code, out.trim()), (0, "hello from builtin"));
    let (code, out) = exec_sh(&mut cri, &container, "grep -c ^processor /proc/cpuinfo").await;
    assert_eq!(code, 0);
    assert!(out.trim().parse::<u32>().is_ok_and(|n| n >= 1), "{out}");

    remove_pod_checked(&mut cri, &daemon, &pod).await;
}
