//! The full boot on the built-in VMM: a daemon with `hypervisor.kind = "builtin"` runs a pod
//! on vessel-vmm (the Debian guest kernel, the agent reached over the VMM's hybrid vsock,
//! the shared dir through virtiofsd), then a container in it, and tears it all down. It
//! needs a KVM that runs full guests (vmx or svm in /proc/cpuinfo) and prints a SKIPPED
//! line with the reason elsewhere. The backend's process handling (virtiofsd and vessel-vmm
//! started and stopped, the control socket) is tested on a tiny guest wherever /dev/kvm
//! opens.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vessel_protocols::cri;
use vessel_shim::config::HypervisorConfig;
use vessel_shim::hypervisor::builtin::{BuiltinBinaries, BuiltinVm};
use vessel_shim::hypervisor::{probe_kvm, Hypervisor, KvmSupport, VmConfig};
use vessel_tests::cri::{
    container_config, exec_sh, pod_config, pull, registry_with_busybox, remove_pod_checked,
    wait_state, workspace_binary, Daemon,
};
use vessel_tests::tiny_elf::{pvh_elf, PRINT_BANG};
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

/// The builtin backend's processes on a tiny guest (this runs wherever /dev/kvm opens):
/// start spawns virtiofsd and vessel-vmm (which connects to virtiofsd as its vhost-user
/// frontend), the VMM's control socket reports the pod VM's shape, and stop ends both and
/// removes the control socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builtin_backend_starts_and_stops_its_processes() {
    let test = "the_builtin_backend_starts_and_stops_its_processes";
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        skipped(test, &format!("/dev/kvm: {e}"));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("pod");
    let shared_dir = run_dir.join("shared");
    std::fs::create_dir_all(&shared_dir).unwrap();
    let kernel = dir.path().join("tiny.elf");
    std::fs::write(&kernel, pvh_elf(PRINT_BANG)).unwrap();
    let initrd = dir.path().join("initrd.img");
    std::fs::write(&initrd, [0u8; 4096]).unwrap();
    let config = VmConfig {
        id: "tiny".into(),
        run_dir: run_dir.clone(),
        shared_dir,
        cid: 77,
        vcpus: 2,
        memory_mib: 64,
        kernel,
        initrd,
        kernel_params: String::new(),
        nic: None,
        cgroup: None,
        native: None,
    };
    let binaries = BuiltinBinaries {
        vmm: workspace_binary("vessel-vmm"),
        virtiofsd: HypervisorConfig::default().virtiofsd,
    };
    let mut vm = BuiltinVm::new(config, binaries);
    vm.start().await.expect("start the builtin backend");
    let pid = vm.pid().expect("vessel-vmm runs");
    let record = vm.record();
    assert_eq!(
        record.processes.keys().collect::<Vec<_>>(),
        ["vessel-vmm", "virtiofsd"]
    );

    // The control socket answers once the VMM has set the VM up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let info = loop {
        match UnixStream::connect(vm.api_socket()) {
            Ok(mut stream) => {
                stream.write_all(b"info\n").unwrap();
                let mut line = String::new();
                BufReader::new(stream).read_line(&mut line).unwrap();
                break line;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no control socket: {e}; vessel-vmm log:\n{}",
                    vessel_shim::hypervisor::tail_file(&vm.vmm_log(), 20)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert!(
        info.contains(r#""vcpus":2"#) && info.contains(r#""memory_mib":64"#),
        "{info}"
    );
    assert_eq!(vm.exit_status(), None, "still running");
    // The control socket may answer before the guest's first instruction (nested KVM is slow).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read(vm.console_log())
        .unwrap_or_default()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the tiny guest printed nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(std::fs::read(vm.console_log()).unwrap_or_default(), b"!");

    vm.stop().await.unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "vessel-vmm ended"
    );
    for (name, id) in &record.processes {
        assert!(
            vessel_shim::hypervisor::process_start_time(id.pid) != Some(id.start_time),
            "{name} still runs"
        );
    }
    assert!(!vm.api_socket().exists(), "control socket removed");
}
