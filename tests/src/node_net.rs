//! A node network of the test's own, for the pod networking tests: a network namespace the
//! daemon runs in (so the CNI bridge, its addresses, NAT rules and host ports never touch
//! this machine's own network), a CNI conf dir with a single-node conflist (bridge + host-local
//! with its leases in the test's dir + portmap + bandwidth, from Debian's
//! containernetworking-plugins),
//! and a forwarder that lets the daemon reach the test registry on 127.0.0.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use vessel_shim::network::netns::NetNs;

use crate::cri::Daemon;

/// Where Debian installs the reference plugins.
pub const PLUGINS: &str = "/usr/lib/cni";
/// The pod subnet and its gateway (the bridge's address in the node namespace).
pub const SUBNET: &str = "10.88.0.0/16";
pub const GATEWAY: &str = "10.88.0.1";
/// The bridge the conflist makes.
pub const BRIDGE: &str = "vessel0";

/// What a pod networking test needs: a registry holding busybox, a node namespace of its own
/// with a daemon in it that pulled busybox, a client, and the test environment.
pub struct NodeTest {
    pub daemon: Daemon,
    pub cri: crate::cri::Client,
    pub image: String,
    pub node: NodeNet,
    pub env: crate::TestEnv,
    pub registry: crate::registry::Registry,
}

impl NodeTest {
    /// `None`, after a printed SKIPPED line, when the machine lacks what the test needs.
    pub async fn setup(test: &str) -> Option<Self> {
        let env = crate::TestEnv::detect(test)?;
        if !crate::registry::available(test) || !plugins_available(test) {
            return None;
        }
        let (registry, image) = crate::cri::registry_with_busybox().await;
        let node = NodeNet::create();
        let daemon = node.daemon(&registry, &image).await;
        crate::check_backend(test, &daemon.vmm().await);
        let cri = daemon.client().await;
        Some(Self {
            daemon,
            cri,
            image,
            node,
            env,
            registry,
        })
    }
}

/// The node's namespace and CNI config; unpinned when dropped.
pub struct NodeNet {
    pub dir: tempfile::TempDir,
    pub netns: NetNs,
}

/// `None`, after a SKIPPED line, when the reference plugins are missing.
pub fn plugins_available(test: &str) -> bool {
    let ok = ["bridge", "host-local", "portmap", "bandwidth"]
        .iter()
        .all(|p| Path::new(PLUGINS).join(p).is_file());
    if !ok {
        crate::skipped(
            test,
            "CNI plugins missing in /usr/lib/cni (scripts/setup.sh installs containernetworking-plugins)",
        );
    }
    ok
}

/// The single-node conflist, with host-local's leases under `leases`; the last plugin is
/// bandwidth (see [`NodeNet::without_bandwidth`]).
pub fn conflist(leases: &Path) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"vessel-test","plugins":[
  {{"type":"bridge","bridge":"{BRIDGE}","isGateway":true,"ipMasq":false,"hairpinMode":true,
    "ipam":{{"type":"host-local","ranges":[[{{"subnet":"{SUBNET}","gateway":"{GATEWAY}"}}]],
             "routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":{:?}}}}},
  {{"type":"portmap","capabilities":{{"portMappings":true}},"snat":true}},
  {{"type":"bandwidth","capabilities":{{"bandwidth":true}}}}]}}"#,
        leases.display().to_string()
    )
}

impl NodeNet {
    /// A new node namespace with loopback up and a conf dir holding [`conflist`].
    pub fn create() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vs-net-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let netns = NetNs::create(&dir.path().join("node-netns")).expect("node netns");
        let node = Self { dir, netns };
        node.sh("ip link set lo up");
        std::fs::create_dir_all(node.conf_dir()).expect("conf dir");
        std::fs::create_dir_all(node.bin_dir()).expect("bin dir");
        std::fs::write(
            node.conf_dir().join("10-vessel-test.conflist"),
            conflist(&node.leases()),
        )
        .expect("write conflist");
        node
    }

    /// Drops the bandwidth plugin from the conflist: its CHECK (plugins 1.1) exits with a
    /// panic for a pod without limits.
    pub fn without_bandwidth(&self) {
        let path = self.conf_dir().join("10-vessel-test.conflist");
        let list = std::fs::read_to_string(&path).expect("conflist");
        let trimmed = list.replace(
            ",\n  {\"type\":\"bandwidth\",\"capabilities\":{\"bandwidth\":true}}",
            "",
        );
        assert_ne!(list, trimmed, "the conflist had a bandwidth plugin");
        std::fs::write(&path, trimmed).expect("write conflist");
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    /// Plugins of the test's own, looked up before the reference ones.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// host-local's data dir; the network's leases are files in `<leases>/vessel-test`.
    pub fn leases(&self) -> PathBuf {
        self.dir.path().join("leases")
    }

    /// The addresses host-local has leased now.
    pub fn leased(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.leases().join("vessel-test")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    /// The daemon config's `[cni]` section for this node.
    pub fn cni_toml(&self) -> String {
        format!(
            "[cni]\nconf_dir = {:?}\nbin_dirs = [{:?}, {PLUGINS:?}]\n",
            self.conf_dir().display().to_string(),
            self.bin_dir().display().to_string()
        )
    }

    /// Runs `line` with `sh` in the node namespace; panics unless it succeeds; its stdout.
    pub fn sh(&self, line: &str) -> String {
        sh_in(&self.netns, line)
    }

    /// The interfaces of the node namespace, by name.
    pub fn links(&self) -> Vec<String> {
        links_of(&self.netns)
    }

    /// Forwards connections to `addr` (a 127.0.0.1 port of this machine, the test registry's)
    /// from the same address inside the node namespace, for as long as the runtime runs.
    pub fn forward_loopback(&self, addr: SocketAddr) {
        let listener = self
            .netns
            .run(|| std::net::TcpListener::bind(addr))
            .expect("enter node netns")
            .expect("bind the forwarder");
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        tokio::spawn(async move {
            while let Ok((mut inside, _)) = listener.accept().await {
                tokio::spawn(async move {
                    // This task's sockets are made in the test's (the machine's) namespace.
                    if let Ok(mut outside) = tokio::net::TcpStream::connect(addr).await {
                        let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
                    }
                });
            }
        });
    }

    /// A daemon running in this node namespace with this node's CNI config, that pulled
    /// `image` from `registry` (through [`NodeNet::forward_loopback`]).
    pub async fn daemon(&self, registry: &crate::registry::Registry, image: &str) -> Daemon {
        self.forward_loopback(registry.host().parse().expect("registry address"));
        let daemon = Daemon::start_in(Some(self.netns.path()), Some(&self.cni_toml())).await;
        crate::cri::pull(&mut daemon.image_client().await, image, None)
            .await
            .expect("pull through the node's loopback");
        daemon
    }

    /// GET / from `ip:port` in the node namespace, retried while the server starts (60 s);
    /// the body.
    pub fn get_until_served(&self, ip: &str, port: u16) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match self.http_get(ip, port, "/") {
                Ok(body) if !body.is_empty() => return body,
                other if std::time::Instant::now() > deadline => {
                    panic!("GET http://{ip}:{port}/ from the node: {other:?}")
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(200)),
            }
        }
    }

    /// An HTTP GET of `path` from `ip:port`, made inside the node namespace; the body.
    pub fn http_get(&self, ip: &str, port: u16, path: &str) -> std::io::Result<String> {
        let addr: SocketAddr = format!("{ip}:{port}")
            .parse()
            .map_err(std::io::Error::other)?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n");
        self.netns
            .run(move || http_exchange(addr, &request))
            .map_err(std::io::Error::other)?
    }
}

impl Drop for NodeNet {
    fn drop(&mut self) {
        let _ = self.netns.remove();
    }
}

fn http_exchange(addr: SocketAddr, request: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(20);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(request.as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or(reply))
}

/// Runs `line` with `sh` in `ns`; panics unless it succeeds; its stdout.
pub fn sh_in(ns: &NetNs, line: &str) -> String {
    let out = ns
        .run(|| Command::new("sh").args(["-c", line]).output())
        .expect("enter netns")
        .expect("run sh");
    assert!(out.status.success(), "{line}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The interface names in `ns`.
pub fn links_of(ns: &NetNs) -> Vec<String> {
    sh_in(ns, "ip -o link show")
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(": ")?;
            let name = rest.split([':', '@']).next()?;
            Some(name.to_owned())
        })
        .collect()
}
