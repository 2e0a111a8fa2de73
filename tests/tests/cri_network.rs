//! Pod networking through the CRI socket, with the reference CNI plugins: the daemon runs in a
//! node namespace of the test's own ([`vessel_tests::node_net`]), so no address, bridge or
//! NAT rule of these tests is on this machine's own network and no packet leaves it. Pods get
//! an IP and serve HTTP to the node and to each other, reach the node, keep their addresses
//! across a daemon SIGKILL, map host ports; a failing plugin fails RunPodSandbox naming it;
//! nothing (namespace, veth, tap, lease) outlives a pod.

use vessel_protocols::cri;
use vessel_shim::network::netns::NetNs;
use vessel_tests::cri::*;
use vessel_tests::node_net::{self, NodeNet, NodeTest, BRIDGE, GATEWAY};
use vessel_tests::registry::Registry;
use vessel_tests::TestEnv;

/// A daemon on a node network of the test's own, with busybox pulled. Fields drop in order:
/// the daemon (and its pods) before the node's namespace.
struct NetTest {
    daemon: Daemon,
    cri: Client,
    image: String,
    node: NodeNet,
    env: TestEnv,
    _registry: Registry,
}

impl NetTest {
    async fn setup(test: &str) -> Option<Self> {
        let NodeTest {
            daemon,
            cri,
            image,
            node,
            env,
            registry,
        } = NodeTest::setup(test).await?;
        Some(Self {
            daemon,
            cri,
            image,
            node,
            env,
            _registry: registry,
        })
    }

    /// A pod named `name` with a busybox httpd serving `hello-from-<hostname>` on port 80;
    /// the pod's and the container's ids.
    async fn web_pod(&mut self, name: &str, ports: &[(i32, i32)]) -> (String, String) {
        let config = pod_config(name, &self.env.state_dir().join("logs"));
        self.web_pod_with(config, ports).await
    }

    async fn web_pod_with(
        &mut self,
        mut config: cri::PodSandboxConfig,
        ports: &[(i32, i32)],
    ) -> (String, String) {
        config.port_mappings = ports
            .iter()
            .map(|&(host_port, container_port)| cri::PortMapping {
                protocol: cri::Protocol::Tcp as i32,
                container_port,
                host_port,
                host_ip: String::new(),
            })
            .collect();
        let pod = run_pod(&mut self.cri, &config).await;
        let httpd = container_config(
            "httpd",
            &self.image,
            &[
                "sh",
                "-c",
                "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html \
                 && exec httpd -f -p 80 -h /www",
            ],
        );
        let ctr = create_container(&mut self.cri, &pod, &config, httpd)
            .await
            .expect("create httpd");
        start_container(&mut self.cri, &ctr).await;
        (pod, ctr)
    }

    async fn pod_ip(&mut self, pod: &str) -> String {
        pod_ip(&mut self.cri, pod).await
    }

    fn get_until_served(&self, ip: &str, port: u16) -> String {
        self.node.get_until_served(ip, port)
    }

    /// What may be left of pods: pinned namespaces, leases, interfaces other than the
    /// node's loopback and bridge.
    fn remains(&self) -> (Vec<String>, Vec<String>, Vec<String>) {
        let netns: Vec<String> = std::fs::read_dir(self.daemon.state().join("netns"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        let links = self
            .node
            .links()
            .into_iter()
            .filter(|l| l != "lo" && l != BRIDGE)
            .collect();
        (netns, self.node.leased(), links)
    }

    fn assert_clean(&self) {
        let (netns, leases, links) = self.remains();
        assert!(
            netns.is_empty() && leases.is_empty() && links.is_empty(),
            "left behind: netns {netns:?}, leases {leases:?}, interfaces {links:?}"
        );
    }
}

/// Answers one HTTP request with `body` on a listener of the node namespace.
fn serve_once_in(node: &NodeNet, port: u16, body: &'static str) -> tokio::task::JoinHandle<()> {
    let listener = node
        .netns
        .run(|| std::net::TcpListener::bind(("0.0.0.0", port)))
        .expect("enter node netns")
        .expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf).await;
        let reply = format!(
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(reply.as_bytes()).await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_an_ip_and_reach_each_other_and_the_node() {
    let test = "pods_get_an_ip_and_reach_each_other_and_the_node";
    let Some(mut t) = NetTest::setup(test).await else {
        return;
    };
    let (a, a_ctr) = t.web_pod("web-a", &[]).await;
    let (b, _) = t.web_pod("web-b", &[]).await;
    let (ip_a, ip_b) = (t.pod_ip(&a).await, t.pod_ip(&b).await);
    assert!(
        ip_a.starts_with("10.88.") && ip_b.starts_with("10.88."),
        "{ip_a} {ip_b}"
    );
    assert_ne!(ip_a, ip_b);

    // The node reaches each pod's server on the pod IP.
    assert_eq!(t.get_until_served(&ip_a, 80), "hello-from-web-a\n");
    assert_eq!(t.get_until_served(&ip_b, 80), "hello-from-web-b\n");
    // Pod → pod, and pod → node (the bridge's address).
    let (code, out) = exec_sh(&mut t.cri, &a_ctr, &format!("wget -q -O - http://{ip_b}/")).await;
    assert_eq!((code, out.as_str()), (0, "hello-from-web-b\n"));
    let served = serve_once_in(&t.node, 7777, "node-ok");
    let (code, out) = exec_sh(
        &mut t.cri,
        &a_ctr,
        &format!("wget -q -O - http://{GATEWAY}:7777/"),
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "node-ok"));
    served.await.expect("node server");

    // The guest interface has the CNI interface's MAC and MTU, and the CNI routes.
    let pod_ns = NetNs::at(&t.daemon.state().join("netns").join(&a));
    let cni_link = node_net::sh_in(&pod_ns, "ip -o link show eth0");
    let (code, guest) = exec_sh(
        &mut t.cri,
        &a_ctr,
        "cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu; ip route; ip -4 -o addr show eth0",
    )
    .await;
    assert_eq!(code, 0, "{guest}");
    let mut lines = guest.lines();
    let (mac, mtu) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    assert!(
        cni_link.contains(&format!("link/ether {mac} ")),
        "{cni_link} vs {guest}"
    );
    assert!(
        cni_link.contains(&format!("mtu {mtu} ")),
        "{cni_link} vs {guest}"
    );
    assert!(guest.contains(&format!("default via {GATEWAY}")), "{guest}");
    assert!(guest.contains(&format!("inet {ip_a}/16")), "{guest}");
    // /etc/hosts names the pod by its IP.
    let (_, hosts) = exec_sh(&mut t.cri, &a_ctr, "cat /etc/hosts").await;
    assert!(hosts.contains(&format!("{ip_a}\tweb-a")), "{hosts}");

    remove_pod_checked(&mut t.cri, &t.daemon, &a).await;
    remove_pod_checked(&mut t.cri, &t.daemon, &b).await;
    t.assert_clean();
}

/// A host port reaches the pod on the node's address and on 127.0.0.1 (portmap's localhost
/// SNAT), and an egress limit annotation reaches the bandwidth plugin; both go with the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_ports_and_bandwidth_limits_apply() {
    let test = "host_ports_and_bandwidth_limits_apply";
    let Some(mut t) = NetTest::setup(test).await else {
        return;
    };
    // With an egress limit, through the bandwidth plugin's runtimeConfig.
    let mut config = pod_config("mapped", &t.env.state_dir().join("logs"));
    config
        .annotations
        .insert("kubernetes.io/egress-bandwidth".into(), "100M".into());
    let (pod, _) = t.web_pod_with(config, &[(8080, 80)]).await;
    assert_eq!(t.get_until_served(GATEWAY, 8080), "hello-from-mapped\n");
    assert_eq!(t.get_until_served("127.0.0.1", 8080), "hello-from-mapped\n");
    let qdiscs = t.node.sh("tc qdisc show");
    assert!(
        qdiscs.contains("tbf"),
        "the bandwidth plugin's limit:\n{qdiscs}"
    );
    remove_pod_checked(&mut t.cri, &t.daemon, &pod).await;
    t.assert_clean();
    assert!(
        !t.node.sh("tc qdisc show").contains("tbf"),
        "the limit outlived the pod"
    );
    let rules = t.node.sh("iptables-save -t nat");
    assert!(
        !rules.contains("8080"),
        "portmap's rules outlived the pod:\n{rules}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plugin_fails_the_pod_by_name_and_leaks_nothing() {
    let test = "a_failing_plugin_fails_the_pod_by_name_and_leaks_nothing";
    let Some(mut t) = NetTest::setup(test).await else {
        return;
    };
    let plugin = t.node.bin_dir().join("vessel-test-fail");
    std::fs::write(
        &plugin,
        "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] || exit 0\n\
         echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"injected failure\"}'\nexit 1\n",
    )
    .expect("write plugin");
    let executable = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
    std::fs::set_permissions(&plugin, executable).expect("chmod");
    let conf = t.node.conf_dir().join("10-vessel-test.conflist");
    let good = std::fs::read_to_string(&conf).expect("conflist");
    let failing = good.replace(
        r#"{"type":"portmap""#,
        r#"{"type":"vessel-test-fail"},{"type":"portmap""#,
    );
    assert_ne!(good, failing);
    std::fs::write(&conf, failing).expect("write conflist");
    let config = pod_config("doomed", &t.env.state_dir().join("logs"));
    let err = t
        .cri
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: vessel_tests::cri::test_handler(),
        })
        .await
        .expect_err("RunPodSandbox with a failing plugin");
    assert!(
        err.message().contains("vessel-test-fail") && err.message().contains("injected failure"),
        "{err:?}"
    );
    assert!(list_pods(&mut t.cri).await.is_empty());
    t.assert_clean();
    // With the config fixed (no restart), pods start again.
    std::fs::write(&conf, good).expect("write conflist");
    let (pod, _) = t.web_pod("fixed", &[]).await;
    let ip = t.pod_ip(&pod).await;
    assert_eq!(t.get_until_served(&ip, 80), "hello-from-fixed\n");
    remove_pod_checked(&mut t.cri, &t.daemon, &pod).await;
    t.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networked_pods_keep_their_ips_across_a_daemon_sigkill() {
    let test = "networked_pods_keep_their_ips_across_a_daemon_sigkill";
    let Some(mut t) = NetTest::setup(test).await else {
        return;
    };
    t.node.without_bandwidth();
    let mut pods = Vec::new();
    for name in ["keep-0", "keep-1", "keep-2"] {
        let (pod, _) = t.web_pod(name, &[]).await;
        let ip = t.pod_ip(&pod).await;
        assert_eq!(t.get_until_served(&ip, 80), format!("hello-from-{name}\n"));
        pods.push((pod, ip, name));
    }
    t.daemon.kill();
    t.daemon.restart().await;
    t.cri = t.daemon.client().await;
    for (pod, ip, name) in &pods {
        assert_eq!(&t.pod_ip(pod).await, ip, "{name} kept its IP");
        assert_eq!(t.get_until_served(ip, 80), format!("hello-from-{name}\n"));
    }
    assert_eq!(t.node.leased().len(), 3);
    // Each adopted pod's attachment passed the plugins' CHECK.
    let log = std::fs::read_to_string(t.daemon.log()).expect("daemon log");
    assert_eq!(
        log.matches("CNI CHECK passed").count(),
        3,
        "CHECK after the restart"
    );
    for (pod, _, _) in &pods {
        remove_pod_checked(&mut t.cri, &t.daemon, pod).await;
    }
    t.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_run_stop_remove_cycles_leave_nothing_behind() {
    let test = "twenty_run_stop_remove_cycles_leave_nothing_behind";
    let Some(mut t) = NetTest::setup(test).await else {
        return;
    };
    let logs = t.env.state_dir().join("logs");
    for i in 0..20 {
        let pod = run_pod(&mut t.cri, &pod_config(&format!("cycle-{i}"), &logs)).await;
        assert!(t.pod_ip(&pod).await.starts_with("10.88."), "cycle {i}");
        let (netns, leases, links) = t.remains();
        assert_eq!(
            (netns.len(), leases.len()),
            (1, 1),
            "cycle {i}: {netns:?} {leases:?}"
        );
        assert_eq!(links.len(), 1, "one veth end on the node: {links:?}");
        remove_pod_checked(&mut t.cri, &t.daemon, &pod).await;
    }
    t.assert_clean();
}
