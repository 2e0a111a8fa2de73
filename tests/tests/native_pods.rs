//! The native handler (`runc`): pods whose containers run on the host, served by a host
//! agent per pod, beside microVM pods on the same daemon. A pod gets its own network, UTS and
//! IPC namespaces, or the host's network and IPC with hostNetwork/hostIPC; its containers run
//! in host cgroups under the pod's `cgroup_parent`; exec, logs and stats go through the same
//! paths as a VM pod's; teardown leaves nothing.

use vessel_protocols::cri;
use vessel_shim::network::netns::NetNs;
use vessel_tests::cgroups::{procs, ParentCgroup};
use vessel_tests::cri::{
    container_config, exec_sh, pod_config, pod_info, pod_ip, pod_state, remove_pod_checked,
    run_container, run_pod, run_pod_on, wait_state, with_namespaces, CriTest,
};
use vessel_tests::node_net::{self, links_of, NodeTest, BRIDGE, GATEWAY};

/// The inode of a namespace link, as `readlink` prints it (`net:[4026531840]`).
fn own_namespace(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_pods_run_on_the_host_beside_vm_pods() {
    let test = "native_pods_run_on_the_host_beside_vm_pods";
    let Some(CriTest {
        daemon,
        mut cri,
        image,
        env,
        ..
    }) = CriTest::setup(test).await
    else {
        return;
    };
    let logs = env.state_dir().join("logs");

    // The handlers are listed: kata (vm), runc (native) and the default as "".
    let status = cri
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, ["kata", "runc", ""], "{names:?}");
    let unknown = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("unknown", &logs)),
            runtime_handler: "gvisor".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    assert!(unknown.message().contains("\"gvisor\""), "{unknown:?}");

    // A native pod: its own namespaces, the host's kernel.
    let parent = ParentCgroup::new("native");
    let config = parent.pod_config("native", &logs);
    let pod = run_pod_on(&mut cri, &config, "runc").await;
    let info = pod_info(&mut cri, &pod).await;
    assert_eq!(info["vmm"], "vessel-agent", "{info}");
    let agent_pid = info["pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .expect("agent pid");
    let ctr = run_container(
        &mut cri,
        &pod,
        &config,
        container_config(
            "web",
            &image,
            &["sh", "-c", "echo native-ready; exec sleep 1000"],
        ),
    )
    .await;
    let (code, out) = exec_sh(&mut cri, &ctr, "hostname; cat /proc/sys/kernel/osrelease").await;
    assert_eq!(code, 0, "{out}");
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(out, format!("native\n{host_kernel}"), "the host's kernel");
    for kind in ["net", "uts", "ipc", "pid", "mnt"] {
        let (_, theirs) = exec_sh(&mut cri, &ctr, &format!("readlink /proc/self/ns/{kind}")).await;
        assert_ne!(
            theirs.trim(),
            own_namespace(kind),
            "{kind} namespace is the host's"
        );
    }
    // No CNI here: loopback only (and the ifb devices a kernel with that module loaded puts
    // in every new namespace).
    let (_, links) = exec_sh(&mut cri, &ctr, "ls /sys/class/net").await;
    let links: Vec<&str> = links.lines().filter(|l| !l.starts_with("ifb")).collect();
    assert_eq!(links, ["lo"], "loopback only");
    let (_, lo) = exec_sh(
        &mut cri,
        &ctr,
        "cat /sys/class/net/lo/operstate /sys/class/net/lo/flags",
    )
    .await;
    assert!(lo.contains("0x9"), "loopback is up: {lo}");

    // Its processes are the host's, in cgroups under the pod's parent: the agent in a leaf
    // of the pod's cgroup, each container in a cgroup of its own beside that leaf.
    for (h, dir) in parent.dirs() {
        if !(h.has("memory") || h.has("pids") || h.is_unified()) {
            continue;
        }
        let pod_dir = dir.join(format!("vessel-{pod}"));
        let agent = procs(&pod_dir.join("agent"));
        assert!(
            agent.contains(&agent_pid),
            "the agent in its leaf of {}",
            pod_dir.display()
        );
        if h.is_unified() && !h.has("memory") {
            // A hybrid host's unified hierarchy has no controllers: libcontainer leaves the
            // containers there in the agent's cgroup, still under the pod's.
            continue;
        }
        assert_eq!(
            agent,
            [agent_pid],
            "the agent alone in {}",
            pod_dir.display()
        );
        let members = procs(&pod_dir.join(&ctr));
        assert!(
            !members.is_empty(),
            "container processes in {}",
            pod_dir.display()
        );
        let status = std::fs::read_to_string(format!("/proc/{}/status", members[0])).unwrap();
        assert!(status.contains("sleep"), "{status}");
    }
    let stats = cri
        .container_stats(cri::ContainerStatsRequest {
            container_id: ctr.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let memory = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map_or(0, |v| v.value);
    assert!(memory > 0, "stats come from the host cgroup: {stats:?}");

    // Its log is the CRI log, as a VM pod's.
    let log = logs.join("web/0.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("native-ready")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no log line in {}",
            log.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // A VM pod beside it.
    let vm_config = pod_config("vm", &logs);
    let vm_pod = run_pod(&mut cri, &vm_config).await;
    let vm_ctr = run_container(
        &mut cri,
        &vm_pod,
        &vm_config,
        container_config("guest", &image, &["sleep", "1000"]),
    )
    .await;
    let (_, guest_kernel) = exec_sh(&mut cri, &vm_ctr, "cat /proc/sys/kernel/osrelease").await;
    assert_ne!(
        guest_kernel, host_kernel,
        "the VM pod runs the guest kernel"
    );
    assert_ne!(pod_info(&mut cri, &vm_pod).await["vmm"], "vessel-agent");

    // hostNetwork + hostIPC + hostPID: the host's network, UTS, IPC and pid namespaces.
    let node = cri::NamespaceMode::Node as i32;
    let host_config = with_namespaces(
        pod_config("hostnet", &logs),
        cri::NamespaceOption {
            network: node,
            ipc: node,
            pid: node,
            ..Default::default()
        },
    );
    let host_pod = run_pod_on(&mut cri, &host_config, "runc").await;
    let host_ctr = run_container(
        &mut cri,
        &host_pod,
        &host_config,
        container_config("agent", &image, &["sleep", "1000"]),
    )
    .await;
    for (kind, shared) in [("net", true), ("uts", true), ("ipc", true), ("pid", true)] {
        let (_, theirs) = exec_sh(
            &mut cri,
            &host_ctr,
            &format!("readlink /proc/self/ns/{kind}"),
        )
        .await;
        assert_eq!(
            theirs.trim() == own_namespace(kind),
            shared,
            "{kind}: {theirs}"
        );
    }
    let (_, init) = exec_sh(&mut cri, &host_ctr, "cat /proc/1/cmdline").await;
    assert_eq!(
        init.as_bytes(),
        std::fs::read("/proc/1/cmdline").unwrap(),
        "the host's PID 1"
    );
    let host_name = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let (_, name) = exec_sh(&mut cri, &host_ctr, "hostname").await;
    assert_eq!(name.trim(), host_name, "the host's name, left as it was");

    // The VM handler still refuses what only the host can give.
    let refused = cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(host_config.clone()),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("namespace_options.network"),
        "{refused:?}"
    );

    for pod in [&pod, &vm_pod, &host_pod] {
        remove_pod_checked(&mut cri, &daemon, pod).await;
    }
    for (_, dir) in parent.dirs() {
        let left: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "cgroups left under the pod's parent: {left:?}"
        );
    }
    let agents = daemon.state().join("agents");
    let left: Vec<_> = std::fs::read_dir(&agents)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "agent dirs left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_and_vm_pods_survive_a_daemon_sigkill_and_native_ones_die_whole() {
    let test = "native_and_vm_pods_survive_a_daemon_sigkill_and_native_ones_die_whole";
    let Some(CriTest {
        mut daemon,
        mut cri,
        image,
        env,
        ..
    }) = CriTest::setup(test).await
    else {
        return;
    };
    let logs = env.state_dir().join("logs");
    let parent = ParentCgroup::new("restart");
    let config = parent.pod_config("survivor", &logs);
    let pod = run_pod_on(&mut cri, &config, "runc").await;
    let long = run_container(
        &mut cri,
        &pod,
        &config,
        container_config("long", &image, &["sleep", "1000"]),
    )
    .await;
    let short = run_container(
        &mut cri,
        &pod,
        &config,
        container_config("short", &image, &["sh", "-c", "sleep 2; exit 7"]),
    )
    .await;

    // A VM pod beside it.
    let vm_config = pod_config("vm-survivor", &logs);
    let vm_pod = run_pod(&mut cri, &vm_config).await;
    let vm_ctr = run_container(
        &mut cri,
        &vm_pod,
        &vm_config,
        container_config("guest", &image, &["sleep", "1000"]),
    )
    .await;

    // The daemon dies; the pods run on, and the exit while it is down is recorded by the
    // native pod's agent.
    daemon.kill();
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    daemon.restart().await;
    let mut cri = daemon.client().await;
    assert_eq!(
        pod_state(&mut cri, &pod).await,
        cri::PodSandboxState::SandboxReady as i32
    );
    let status = wait_state(&mut cri, &short, cri::ContainerState::ContainerExited).await;
    assert_eq!(status.exit_code, 7);
    for ctr in [&long, &vm_ctr] {
        let (code, out) = exec_sh(&mut cri, ctr, "echo still-here").await;
        assert_eq!((code, out.as_str()), (0, "still-here\n"));
    }
    assert_eq!(
        pod_state(&mut cri, &vm_pod).await,
        cri::PodSandboxState::SandboxReady as i32
    );
    remove_pod_checked(&mut cri, &daemon, &vm_pod).await;

    // The agent dies: the pod turns NOTREADY, its container exits, and nothing of it runs on.
    let agent = pod_info(&mut cri, &pod).await["pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .expect("agent pid");
    let pod_dirs: Vec<_> = parent
        .dirs()
        .into_iter()
        .map(|(_, dir)| dir.join(format!("vessel-{pod}")))
        .collect();
    let running: Vec<i32> = pod_dirs
        .iter()
        .flat_map(|d| procs(&d.join(&long)))
        .collect();
    assert!(!running.is_empty(), "the long container's processes");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = wait_state(&mut cri, &long, cri::ContainerState::ContainerExited).await;
    assert_ne!(status.exit_code, 0, "{status:?}");
    assert_eq!(
        pod_state(&mut cri, &pod).await,
        cri::PodSandboxState::SandboxNotready as i32
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let alive: Vec<i32> = running
            .iter()
            .copied()
            .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        let dirs: Vec<_> = pod_dirs.iter().filter(|d| d.exists()).collect();
        if alive.is_empty() && dirs.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left running after the agent died: {alive:?}, cgroups {dirs:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    remove_pod_checked(&mut cri, &daemon, &pod).await;
}

/// `httpd` serving `page` on `port`.
fn web_server(image: &str, page: &str, port: u16) -> cri::ContainerConfig {
    let serve = format!(
        "mkdir -p /www && echo {page} > /www/index.html && exec httpd -f -p {port} -h /www"
    );
    container_config("web", image, &["sh", "-c", &serve])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_pods_share_the_pod_network_and_host_network_pods_the_nodes() {
    let test = "native_pods_share_the_pod_network_and_host_network_pods_the_nodes";
    let Some(NodeTest {
        daemon,
        mut cri,
        image,
        node,
        env,
        registry: _registry,
    }) = NodeTest::setup(test).await
    else {
        return;
    };
    let logs = env.state_dir().join("logs");

    // A native pod and a VM pod on one pod network.
    let native_config = pod_config("native-web", &logs);
    let native = run_pod_on(&mut cri, &native_config, "runc").await;
    let native_ctr = run_container(
        &mut cri,
        &native,
        &native_config,
        web_server(&image, "from-native", 80),
    )
    .await;
    let vm_config = pod_config("vm-web", &logs);
    let vm = run_pod(&mut cri, &vm_config).await;
    let vm_ctr = run_container(&mut cri, &vm, &vm_config, web_server(&image, "from-vm", 80)).await;
    let (native_ip, vm_ip) = (pod_ip(&mut cri, &native).await, pod_ip(&mut cri, &vm).await);
    assert!(
        native_ip.starts_with("10.88.") && vm_ip.starts_with("10.88."),
        "{native_ip} {vm_ip}"
    );
    assert_eq!(node.get_until_served(&native_ip, 80), "from-native\n");
    assert_eq!(node.get_until_served(&vm_ip, 80), "from-vm\n");
    let (code, out) = exec_sh(
        &mut cri,
        &native_ctr,
        &format!("wget -q -O - http://{vm_ip}/"),
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "from-vm\n"));
    let (code, out) = exec_sh(
        &mut cri,
        &vm_ctr,
        &format!("wget -q -O - http://{native_ip}/"),
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "from-native\n"));

    // The CNI interface is the container's own: no tap in the native pod's namespace.
    let pod_ns = NetNs::at(&daemon.state().join("netns").join(&native));
    let links = links_of(&pod_ns);
    assert!(
        links.iter().any(|l| l == "eth0") && !links.iter().any(|l| l.starts_with("vtap")),
        "{links:?}"
    );
    // The MAC by netlink on both sides (sysfs shows the namespace it was mounted in).
    let mac_of = |link: &str| {
        link.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no MAC in {link:?}"))
    };
    let mac = mac_of(&node_net::sh_in(&pod_ns, "ip -o link show eth0"));
    let (_, link) = exec_sh(&mut cri, &native_ctr, "ip -o link show eth0").await;
    let seen = mac_of(&link);
    assert_eq!(seen, mac, "the container has the CNI veth itself");

    // A DaemonSet-style hostNetwork pod: it serves on a port of the node's namespace, with
    // no CNI attachment of its own.
    let leased = node.leased().len();
    let host_config = with_namespaces(
        pod_config("node-agent", &logs),
        cri::NamespaceOption {
            network: cri::NamespaceMode::Node as i32,
            ..Default::default()
        },
    );
    let host = run_pod_on(&mut cri, &host_config, "runc").await;
    run_container(
        &mut cri,
        &host,
        &host_config,
        web_server(&image, "from-the-node", 8089),
    )
    .await;
    assert_eq!(node.get_until_served("127.0.0.1", 8089), "from-the-node\n");
    assert_eq!(node.get_until_served(GATEWAY, 8089), "from-the-node\n");
    assert_eq!(
        pod_ip(&mut cri, &host).await,
        "",
        "a hostNetwork pod reports no pod IP"
    );
    assert_eq!(
        node.leased().len(),
        leased,
        "no lease for a hostNetwork pod"
    );

    for pod in [&native, &vm, &host] {
        remove_pod_checked(&mut cri, &daemon, pod).await;
    }
    let netns: Vec<_> = std::fs::read_dir(daemon.state().join("netns"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let links: Vec<String> = node
        .links()
        .into_iter()
        .filter(|l| l != "lo" && l != BRIDGE)
        .collect();
    assert!(
        netns.is_empty() && node.leased().is_empty() && links.is_empty(),
        "left behind: netns {netns:?}, leases {:?}, interfaces {links:?}",
        node.leased()
    );
}
