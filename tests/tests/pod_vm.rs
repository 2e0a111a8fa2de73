//! A container runs in a pod microVM: boot through the hypervisor layer, agent health, a real
//! OCI container on a virtio-fs rootfs, exec, signals, exit statuses, teardown without
//! leftovers; two VMs at once; bad input; an agent that never comes up; a VM on a pod
//! network.

use std::time::{Duration, Instant};

use vessel_protocols::ttrpc::Code;
use vessel_shim::host_mounts::Propagation;
use vessel_shim::network::netns::NetNs;
use vessel_shim::pod_vm::{PodVm, VmNetwork, VmRoute};
use vessel_tests::leftovers::leftovers;
use vessel_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_lifecycle_in_a_pod_vm() {
    let Some(env) = TestEnv::detect("container_lifecycle_in_a_pod_vm") else {
        return;
    };
    let vm = env.start_vm("lifecycle").await;
    println!("pod VM ready in {:?}", vm.boot_time());
    vm.agent()
        .check_with(Duration::from_secs(5))
        .await
        .expect("agent health");

    // A container that prints and exits 3. Its rootfs is bind-mounted into the shared dir
    // after the VM started, as container rootfs overlays are: the mount must reach the guest.
    let source = env.state_dir().join("c1-rootfs");
    vessel_tests::rootfs::busybox_rootfs(&source).expect("busybox rootfs");
    let target = vm.shared_dir().join("c1/rootfs");
    vessel_shim::host_mounts::bind(&source, &target, false, true, Propagation::FromHost)
        .expect("bind rootfs into the shared dir");
    let args: Vec<String> = ["sh", "-c", "echo hello; exit 3"].map(String::from).into();
    let spec = vessel_tests::spec::bare_spec("c1", &args, &[]).expect("spec");
    create_container(&vm, "c1", &spec).await.expect("create c1");
    start_container(&vm, "c1").await.expect("start c1");
    let done = within(60, "c1", finish(vm.agent(), "c1", ""))
        .await
        .expect("c1 output");
    assert_eq!(done.stdout, "hello\n", "stderr: {}", done.stderr);
    assert_eq!((done.wait.status, done.wait.signal), (3, 0));
    remove_container(&vm, "c1").await.expect("remove c1");

    // A long-running container: its shell is pid 1 of its own pid namespace.
    create_busybox_container(&vm, "c2", &["sh", "-c", "echo pid=$$; exec sleep 1000"])
        .await
        .expect("create c2");
    start_container(&vm, "c2").await.expect("start c2");
    let mut first = String::new();
    while !first.contains('\n') {
        let mut req = vessel_protocols::agent::ReadStreamRequest::new();
        req.container_id = "c2".into();
        let chunk = within(30, "c2 output", vm.agent().read_stdout(req))
            .await
            .expect("read c2");
        assert!(!chunk.data.is_empty(), "c2 stdout ended early: {first:?}");
        first.push_str(&String::from_utf8_lossy(&chunk.data));
    }
    assert_eq!(first, "pid=1\n");

    // An exec in the same container sees the same pid namespace.
    exec(
        &vm,
        "c2",
        "e1",
        &["sh", "-c", "echo exec-ok; cat /proc/1/cmdline; exit 7"],
    )
    .await
    .expect("exec e1");
    let e1 = within(60, "e1", finish(vm.agent(), "c2", "e1"))
        .await
        .expect("e1");
    assert!(e1.stdout.starts_with("exec-ok\nsleep"), "{e1:?}");
    assert_eq!((e1.wait.status, e1.wait.signal), (7, 0));

    // A long-running exec stopped by SIGTERM reports the signal.
    exec(&vm, "c2", "e2", &["sleep", "1000"])
        .await
        .expect("exec e2");
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&vm, "c2", "e2", 15).await.expect("SIGTERM e2");
    let e2 = within(30, "e2", finish(vm.agent(), "c2", "e2"))
        .await
        .expect("e2");
    assert_eq!((e2.wait.status, e2.wait.signal), (128 + 15, 15), "{e2:?}");

    // The container's init (pid 1 ignores SIGTERM without a handler) stops on SIGKILL.
    signal(&vm, "c2", "", 9).await.expect("SIGKILL c2");
    let mut wait = vessel_protocols::agent::WaitProcessRequest::new();
    wait.container_id = "c2".into();
    let w = within(30, "c2 wait", vm.agent().wait_process(wait))
        .await
        .expect("wait c2");
    assert_eq!((w.status, w.signal), (137, 9));
    remove_container(&vm, "c2").await.expect("remove c2");

    let run_dir = vm.run_dir().to_owned();
    let vmm_pid = vm.vmm_pid().expect("qemu pid");
    vm.destroy().await.expect("destroy");
    assert!(
        !std::path::Path::new(&format!("/proc/{vmm_pid}")).exists(),
        "qemu {vmm_pid} still running"
    );
    let left = leftovers(&run_dir);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pod_vms_run_side_by_side() {
    let Some(env) = TestEnv::detect("two_pod_vms_run_side_by_side") else {
        return;
    };
    let (a, b) = tokio::join!(env.start_vm("pod-a"), env.start_vm("pod-b"));
    assert_ne!(a.run_dir(), b.run_dir());
    assert_ne!(a.vmm_pid(), b.vmm_pid());
    assert_ne!(a.record().vm.config.cid, b.record().vm.config.cid);
    // Same container name in both pods: each sees its own hostname and files.
    for vm in [&a, &b] {
        create_busybox_container(vm, "c", &["sh", "-c", "cat /etc/marker"])
            .await
            .expect("create");
        let marker = vm.shared_dir().join("c/rootfs/etc/marker");
        std::fs::write(&marker, format!("{}\n", vm.id())).expect("marker");
    }
    for vm in [&a, &b] {
        start_container(vm, "c").await.expect("start");
    }
    let (ra, rb) = tokio::join!(finish(a.agent(), "c", ""), finish(b.agent(), "c", ""));
    assert_eq!(ra.expect("a").stdout, "pod-a\n");
    assert_eq!(rb.expect("b").stdout, "pod-b\n");
    let dirs = [a.run_dir().to_owned(), b.run_dir().to_owned()];
    a.destroy().await.expect("destroy a");
    // b still serves after a is gone.
    b.agent()
        .check_with(Duration::from_secs(5))
        .await
        .expect("b healthy");
    b.destroy().await.expect("destroy b");
    for dir in dirs {
        let left = leftovers(&dir);
        assert!(left.is_empty(), "left behind: {left:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_get_named_errors_and_the_vm_keeps_serving() {
    let Some(env) = TestEnv::detect("bad_specs_get_named_errors_and_the_vm_keeps_serving") else {
        return;
    };
    let vm = env.start_vm("badinput").await;

    // A rootfs that does not exist.
    let args = vec!["sh".to_string()];
    let spec = vessel_tests::spec::bare_spec("norootfs", &args, &[]).expect("spec");
    let err = create_container(&vm, "norootfs", &spec).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NOT_FOUND), "{err}");
    assert!(
        err.to_string()
            .contains("/run/vessel/shared/norootfs/rootfs"),
        "{err}"
    );

    // A command that does not exist in the rootfs.
    let err = create_busybox_container(&vm, "nocmd", &["no-such-binary", "x"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no-such-binary"), "{err}");

    // An exec of a missing binary, and an exec into a missing container.
    create_busybox_container(&vm, "ok", &["sleep", "1000"])
        .await
        .expect("create ok");
    start_container(&vm, "ok").await.expect("start ok");
    let err = exec(&vm, "ok", "x", &["/bin/nothing-here"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/bin/nothing-here"), "{err}");
    let err = exec(&vm, "ghost", "x", &["sh"]).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NOT_FOUND), "{err}");
    assert!(err.to_string().contains("ghost"), "{err}");

    // Invalid JSON names the field.
    let mut req = vessel_protocols::agent::CreateContainerRequest::new();
    req.container_id = "badjson".into();
    req.spec_json = b"{not json".to_vec();
    let err = vm.agent().create_container(req).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::INVALID_ARGUMENT), "{err}");
    assert!(err.to_string().contains("spec_json"), "{err}");

    // The VM still serves: a good container runs.
    exec(&vm, "ok", "good", &["echo", "still-serving"])
        .await
        .expect("exec good");
    let good = within(60, "good", finish(vm.agent(), "ok", "good"))
        .await
        .expect("good");
    assert_eq!(good.stdout, "still-serving\n");

    let run_dir = vm.run_dir().to_owned();
    vm.destroy().await.expect("destroy");
    let left = leftovers(&run_dir);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_initramfs_fails_within_deadline_with_console_tail() {
    let Some(env) = TestEnv::detect("broken_initramfs_fails_within_deadline_with_console_tail")
    else {
        return;
    };
    // Not a cpio archive: the kernel finds no init and panics; with panic=-1 and -no-reboot,
    // QEMU exits and the start fails at once rather than at the deadline.
    let broken = env.state_dir().join("broken-initramfs.img");
    std::fs::write(&broken, vec![0x5a_u8; 4096]).expect("write broken initramfs");
    let mut spec = env.vm_spec("broken");
    spec.hypervisor.initrd = broken;
    spec.hypervisor.agent_ready_timeout_secs = 30;
    let run_dir = env.state_dir().join("pods/broken");
    let started = Instant::now();
    let err = match PodVm::start(spec).await {
        Ok(_) => panic!("a VM with a broken initramfs came up"),
        Err(e) => e.to_string(),
    };
    let took = started.elapsed();
    println!("broken initramfs failed after {took:?}: {err}");
    assert!(took < Duration::from_secs(35), "took {took:?}");
    assert!(err.contains("console tail"), "{err}");
    assert!(
        err.contains("Kernel panic") || err.contains("init"),
        "{err}"
    );
    let left = leftovers(&run_dir);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_guest_fails_at_the_deadline_and_leaves_nothing() {
    let Some(env) = TestEnv::detect("silent_guest_fails_at_the_deadline_and_leaves_nothing") else {
        return;
    };
    // A guest that boots fine but whose init is busybox's, not the agent: nothing ever
    // listens on vsock 1024, so the start must end at the deadline.
    let initrd = env.state_dir().join("busybox-initramfs.img");
    vessel_tests::rootfs::busybox_initramfs(&initrd).expect("busybox initramfs");
    let mut spec = env.vm_spec("silent");
    spec.hypervisor.initrd = initrd;
    spec.hypervisor.agent_ready_timeout_secs = 8;
    let run_dir = env.state_dir().join("pods/silent");
    let started = Instant::now();
    let err = match PodVm::start(spec).await {
        Ok(_) => panic!("a guest whose agent hangs came up"),
        Err(e) => e.to_string(),
    };
    let took = started.elapsed();
    println!("silent guest failed after {took:?}");
    assert!(
        took >= Duration::from_secs(7) && took < Duration::from_secs(20),
        "took {took:?}"
    );
    assert!(err.contains("did not come up within 8 s"), "{err}");
    assert!(err.contains("console tail"), "{err}");
    let left = leftovers(&run_dir);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// Runs `line` with `sh` in `ns` (set-up and inspection only) and returns its stdout.
fn sh_in(ns: &NetNs, line: &str) -> String {
    let out = ns
        .run(|| std::process::Command::new("sh").args(["-c", line]).output())
        .expect("enter netns")
        .expect("run sh");
    assert!(out.status.success(), "{line}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The test's namespaces, unpinned even when an assertion fails.
struct Pinned(Vec<NetNs>);

impl Drop for Pinned {
    fn drop(&mut self) {
        self.0.iter().for_each(|ns| drop(ns.remove()));
    }
}

/// A pod VM on a pod network, as CNI leaves it: the pod's namespace holds `eth0`, one end of
/// a veth whose other end is a "host" namespace of the test's own. The VM's NIC (a tap in
/// the pod's namespace joined to `eth0`) carries eth0's MAC; the guest interface gets the
/// pod's address, eth0's MTU and the default route; the host reaches the guest and the
/// guest reaches, through its gateway, an address beyond it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_vm_joins_the_pod_network() {
    let Some(env) = TestEnv::detect("a_pod_vm_joins_the_pod_network") else {
        return;
    };
    const MAC: &str = "02:42:0a:d3:07:02";
    let host = NetNs::create(&env.state_dir().join("net-host")).expect("host netns");
    let pod = NetNs::create(&env.state_dir().join("net-pod")).expect("pod netns");
    let _pinned = Pinned(vec![host.clone(), pod.clone()]);
    sh_in(
        &pod,
        &format!(
            "ip link add eth0 mtu 1400 address {MAC} type veth peer name host0 netns {host} \
             && ip addr add 10.211.7.2/24 dev eth0 && ip link set eth0 up",
            host = host.path().display()
        ),
    );
    sh_in(
        &host,
        "ip link set lo up && ip addr add 10.99.0.1/32 dev lo && ip link set host0 mtu 1400 \
         && ip addr add 10.211.7.1/24 dev host0 && ip link set host0 up",
    );
    let mut spec = env.vm_spec("net");
    spec.network = Some(VmNetwork {
        netns: pod.path().to_owned(),
        ifname: "eth0".into(),
        addresses: vec!["10.211.7.2/24".parse().expect("cidr")],
        routes: vec![VmRoute {
            dest: None,
            gateway: Some("10.211.7.1".parse().expect("ip")),
        }],
    });
    let vm = match PodVm::start(spec).await {
        Ok(vm) => vm,
        Err(e) => panic!("start a networked pod VM: {e}"),
    };
    assert!(
        sh_in(&pod, "ip -o link show").contains("vtap0"),
        "the VM's tap is in the pod's namespace"
    );

    // Host → guest: a closed port answers with a reset, which only the guest's stack sends.
    let refused = host
        .run(|| {
            std::net::TcpStream::connect_timeout(
                &"10.211.7.2:9".parse().expect("addr"),
                Duration::from_secs(30),
            )
        })
        .expect("enter host netns");
    match refused {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!("connect to the guest's closed port: {other:?}"),
    }

    // Guest → host, through the default route: a listener in the host namespace.
    let listener = host
        .run(|| std::net::TcpListener::bind("0.0.0.0:7777"))
        .expect("enter host netns")
        .expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    // The interface's flags, not its operstate: linkwatch updates that asynchronously.
    let script = "for i in /sys/class/net/*; do \
        echo \"$(basename $i) $(cat $i/address) $(cat $i/mtu) $(cat $i/flags)\"; done; \
        ip -4 -o addr show; ip route; echo hello-host | nc -w 10 10.99.0.1 7777 && echo sent";
    create_busybox_container(&vm, "c1", &["sh", "-c", script])
        .await
        .expect("create c1");
    start_container(&vm, "c1").await.expect("start c1");
    let (mut conn, _) = within(60, "the guest's connection", listener.accept())
        .await
        .expect("accept");
    let mut got = String::new();
    within(
        30,
        "the guest's message",
        tokio::io::AsyncReadExt::read_to_string(&mut conn, &mut got),
    )
    .await
    .expect("read");
    assert_eq!(got, "hello-host\n");
    drop(conn);
    let done = within(60, "c1", finish(vm.agent(), "c1", ""))
        .await
        .expect("c1 output");
    let out = done.stdout;
    assert_eq!(done.wait.status, 0, "{out}\n{}", done.stderr);
    // IFF_UP (0x1) set on both, by the agent.
    let flags = |name: &str, mac: &str, mtu: u32| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} {mac} {mtu} ")))
            .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
    };
    assert!(
        flags("eth0", MAC, 1400).is_some_and(|f| f & 1 == 1),
        "{out}"
    );
    assert!(
        flags("lo", "00:00:00:00:00:00", 65536).is_some_and(|f| f & 1 == 1),
        "{out}"
    );
    assert!(out.contains("inet 10.211.7.2/24"), "{out}");
    assert!(out.contains("default via 10.211.7.1"), "{out}");
    assert!(out.trim_end().ends_with("sent"), "{out}");

    let run_dir = vm.run_dir().to_owned();
    vm.destroy().await.expect("destroy");
    assert!(
        !sh_in(&pod, "ip -o link show").contains("vtap0"),
        "the tap went with the VM"
    );
    let left = leftovers(&run_dir);
    assert!(left.is_empty(), "left behind: {left:#?}");
}
