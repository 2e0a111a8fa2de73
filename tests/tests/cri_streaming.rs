//! Exec, Attach and PortForward through the CRI socket and the streaming server, with real
//! clients: cri-tools' crictl (client-go's SPDY executor and port forwarder) and a WebSocket
//! client written for the tests from kubelet's protocol ([`vessel_tests::streams`]). The
//! daemon, crictl and every connection run in a node namespace of the test's own.

use std::time::{Duration, Instant};

use vessel_protocols::cri;
use vessel_shim::network::netns::NetNs;
use vessel_tests::cri::*;
use vessel_tests::node_net::{NodeNet, NodeTest};
use vessel_tests::registry::Registry;
use vessel_tests::streams::{exit_status, http_status, quote, run_with_input, Crictl, WsClient};
use vessel_tests::TestEnv;

/// What the web container serves, and where.
const PAGE: &str = "hello-from-pod";
const WEB_PORT: u16 = 8080;

/// A daemon in a node namespace of the test's, with a pod whose `web` container serves
/// [`PAGE`] on [`WEB_PORT`] of the pod's loopback. Fields drop in order: the daemon (and its
/// pods) before the namespace.
struct StreamTest {
    daemon: Daemon,
    cri: Client,
    image: String,
    node: NodeNet,
    env: TestEnv,
    pod: String,
    pod_config: cri::PodSandboxConfig,
    web: String,
    _registry: Registry,
}

impl StreamTest {
    async fn setup(test: &str) -> Option<Self> {
        let NodeTest {
            daemon,
            mut cri,
            image,
            node,
            env,
            registry,
        } = NodeTest::setup(test).await?;
        let pod_config = pod_config("streams", &env.state_dir().join("logs"));
        let pod = run_pod(&mut cri, &pod_config).await;
        let serve = format!(
            "mkdir -p /www && echo {PAGE} > /www/index.html && exec httpd -f -p {WEB_PORT} -h /www"
        );
        let web = run_container(
            &mut cri,
            &pod,
            &pod_config,
            container_config("web", &image, &["sh", "-c", &serve]),
        )
        .await;
        Some(Self {
            daemon,
            cri,
            image,
            node,
            env,
            pod,
            pod_config,
            web,
            _registry: registry,
        })
    }

    fn crictl(&self, test: &str) -> Option<Crictl> {
        Crictl::find(test, self.node.netns.path(), &self.daemon.socket)
    }

    async fn exec_url(&mut self, req: cri::ExecRequest) -> String {
        self.cri.exec(req).await.expect("Exec").into_inner().url
    }

    /// A running container of `config` in the pod.
    async fn container(&mut self, config: cri::ContainerConfig) -> String {
        let (pod, pod_config) = (self.pod.clone(), self.pod_config.clone());
        run_container(&mut self.cri, &pod, &pod_config, config).await
    }

    /// The CRI log of a container, as text.
    fn log(&self, name: &str) -> String {
        let path = self.env.state_dir().join("logs").join(name).join("0.log");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    async fn finish(mut self) {
        let pod = self.pod.clone();
        remove_pod_checked(&mut self.cri, &self.daemon, &pod).await;
    }
}

fn exec_req(id: &str, cmd: &[&str], stdin: bool, tty: bool) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `f` until it returns `Some`, up to `within`.
async fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crictl_exec_attach_and_port_forward() {
    let test = "crictl_exec_attach_and_port_forward";
    let Some(mut t) = StreamTest::setup(test).await else {
        return;
    };
    let Some(crictl) = t.crictl(test) else {
        return t.finish().await;
    };
    let web = t.web.clone();

    // exec -i with stdin piped: the input comes back, and stdin's EOF reaches the process.
    let out = crictl.run(
        &["exec", "-i", &web, "sh", "-c", "cat; echo; echo done"],
        b"piped-input",
    );
    assert!(out.status.success(), "crictl exec -i: {out:?}");
    assert_eq!(text(&out.stdout), "piped-input\ndone\n");

    // A non-zero exit reaches the client with its code; stdout and stderr stay apart.
    let out = crictl.run(
        &["exec", &web, "sh", "-c", "echo out; echo err >&2; exit 3"],
        b"",
    );
    assert!(!out.status.success());
    assert_eq!(text(&out.stdout), "out\n");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("err\n"), "{stderr}");
    assert!(stderr.contains("exit code 3"), "{stderr}");

    // exec -it through a pty (script gives crictl a terminal): the shell has a terminal.
    let line = crictl
        .command_line(&["exec", "-it", &web, "sh"])
        .iter()
        .map(|w| quote(w))
        .collect::<Vec<_>>()
        .join(" ");
    let mut script = std::process::Command::new("script");
    script.args(["-qec", &line, "/dev/null"]);
    let out = run_with_input(
        script,
        b"tty; echo pty-$((40+2)); exit\n",
        true,
        Duration::from_secs(120),
    );
    let shown = text(&out.stdout);
    assert!(
        shown.contains("/dev/pts/"),
        "no terminal in the exec: {shown}"
    );
    assert!(shown.contains("pty-42"), "{shown}");

    // Attach with stdin (StdinOnce): the container reads one line and exits.
    let mut talker = container_config(
        "talker",
        &t.image,
        &["sh", "-c", "read line; echo got:$line; sleep 1"],
    );
    talker.stdin = true;
    talker.stdin_once = true;
    let talker = t.container(talker).await;
    let out = crictl.run(&["attach", "-i", &talker], b"ping\n");
    assert!(out.status.success(), "crictl attach -i: {out:?}");
    assert!(text(&out.stdout).contains("got:ping"), "{out:?}");
    assert!(
        t.log("talker").contains("got:ping"),
        "output also goes to the CRI log"
    );

    // Attach to output only: it follows the container until its exit.
    let ticker = container_config(
        "ticker",
        &t.image,
        &[
            "sh",
            "-c",
            "sleep 4; for i in 1 2 3 4 5; do echo tick-$i; sleep 1; done",
        ],
    );
    let ticker = t.container(ticker).await;
    let out = crictl.run(&["attach", &ticker], b"");
    assert!(out.status.success(), "crictl attach: {out:?}");
    assert!(text(&out.stdout).contains("tick-5"), "{out:?}");
    assert!(t.log("ticker").contains("tick-5"));

    // port-forward: several requests at once through one forwarder.
    let forward = crictl.spawn(&["port-forward", &t.pod, &format!("18080:{WEB_PORT}")]);
    let node = &t.node;
    let body = eventually(Duration::from_secs(60), "port-forward serves", || {
        node.http_get("127.0.0.1", 18080, "/")
            .ok()
            .filter(|b| !b.is_empty())
    })
    .await;
    assert_eq!(body.trim(), PAGE);
    let bodies: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| node.http_get("127.0.0.1", 18080, "/")))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("request thread"))
            .collect()
    });
    for body in bodies {
        assert_eq!(body.expect("GET through port-forward").trim(), PAGE);
    }
    forward.stop();

    // A port nobody listens on: the error comes on that request's error stream.
    let closed = crictl.spawn(&["port-forward", &t.pod, "18081:9"]);
    let got = eventually(Duration::from_secs(60), "forwarder listens", || {
        Some(node.http_get("127.0.0.1", 18081, "/"))
            .filter(|r| !matches!(r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused))
    })
    .await;
    assert!(
        got.as_ref().map(|b| b.is_empty()).unwrap_or(true),
        "a closed port served {got:?}"
    );
    let out = closed.stop();
    let said = text(&out.stderr) + &text(&out.stdout);
    assert!(said.contains("error forwarding port 9"), "{said}");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_exec_attach_resize_and_port_forward() {
    let test = "websocket_exec_attach_resize_and_port_forward";
    let Some(mut t) = StreamTest::setup(test).await else {
        return;
    };
    let web = t.web.clone();
    let ns = &NetNs::at(t.node.netns.path());
    let limit = Duration::from_secs(120);

    // v4: stdout and stderr apart, the exit code in the error channel's Status, and the
    // ready message first (an empty one on stdout).
    let url = t
        .exec_url(exec_req(
            &web,
            &["sh", "-c", "echo out; echo err >&2; exit 7"],
            false,
            false,
        ))
        .await;
    let ws = WsClient::connect(ns, &url, "v4.channel.k8s.io")
        .await
        .expect("connect");
    assert_eq!(ws.protocol, "v4.channel.k8s.io");
    let got = ws.collect(limit).await;
    assert_eq!(got.messages.first(), Some(&(1, 0)), "ready message");
    assert_eq!(got.text(1), "out\n");
    assert_eq!(got.text(2), "err\n");
    assert_eq!(exit_status(&got.channels[&3]), ("Failure".into(), Some(7)));

    // v4 base64: the same through text messages; success is a Success status.
    let url = t
        .exec_url(exec_req(&web, &["echo", "b64"], false, false))
        .await;
    let ws = WsClient::connect(ns, &url, "v4.base64.channel.k8s.io")
        .await
        .expect("connect");
    let got = ws.collect(limit).await;
    assert_eq!(got.text(1), "b64\n");
    assert_eq!(exit_status(&got.channels[&3]), ("Success".into(), None));

    // v5: stdin, then its close signal; the process reads EOF and the server closes its
    // channels the v5 way too.
    let url = t
        .exec_url(exec_req(
            &web,
            &["sh", "-c", "cat; echo eof-seen"],
            true,
            false,
        ))
        .await;
    let mut ws = WsClient::connect(ns, &url, "v5.channel.k8s.io")
        .await
        .expect("connect");
    assert_eq!(ws.protocol, "v5.channel.k8s.io");
    ws.send(0, b"abc\n").await;
    ws.close_channel(0).await;
    let got = ws.collect(limit).await;
    assert_eq!(got.text(1), "abc\neof-seen\n");
    assert_eq!(exit_status(&got.channels[&3]), ("Success".into(), None));
    assert!(
        got.closed.contains(&1) && got.closed.contains(&3),
        "{:?}",
        got.closed
    );

    // Flow control: a client that does not read holds the process back (nothing buffers
    // without bound on the way), and once it reads, every byte arrives.
    let big = "head -c 50000000 /dev/zero; echo flowed >&2";
    let url = t
        .exec_url(exec_req(&web, &["sh", "-c", big], false, false))
        .await;
    let ws = WsClient::connect(ns, &url, "v4.channel.k8s.io")
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_secs(5)).await;
    // (busybox may run head in the forked shell, under the shell's command line.)
    let (_, blocked) = exec_sh(
        &mut t.cri,
        &web,
        "ps -o args | grep -c '[h]ead -c 50000000'",
    )
    .await;
    assert_ne!(blocked, "0\n", "the writer waits for its reader");
    let got = ws.collect(limit).await;
    assert_eq!(got.channels.get(&1).map(Vec::len), Some(50_000_000));
    assert_eq!(got.text(2), "flowed\n");
    assert_eq!(exit_status(&got.channels[&3]).0, "Success");

    // Output still on its way when the process exits reaches a client that reads late.
    let url = t
        .exec_url(exec_req(
            &web,
            &["head", "-c", "3000000", "/dev/zero"],
            false,
            false,
        ))
        .await;
    let ws = WsClient::connect(ns, &url, "v4.channel.k8s.io")
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let got = ws.collect(limit).await;
    assert_eq!(got.channels.get(&1).map(Vec::len), Some(3_000_000));
    assert_eq!(exit_status(&got.channels[&3]).0, "Success");

    // Resize: the terminal takes the size sent on channel 4 (which may land after the
    // shell starts: it asks until it has it).
    let ask = "for i in $(seq 1 100); do s=$(stty size); [ \"$s\" = '45 123' ] && break; \
               sleep 0.2; done; echo $s";
    let url = t
        .exec_url(exec_req(&web, &["sh", "-c", ask], false, true))
        .await;
    let mut ws = WsClient::connect(ns, &url, "v4.channel.k8s.io")
        .await
        .expect("connect");
    ws.send(4, br#"{"Width":123,"Height":45}"#).await;
    let got = ws.collect(limit).await;
    assert!(got.text(1).contains("45 123"), "{got:?}");

    // Attach over WebSocket follows a container's output until it exits.
    let ticker = t
        .container(container_config(
            "ws-ticker",
            &t.image.clone(),
            &[
                "sh",
                "-c",
                "sleep 4; for i in 1 2 3; do echo ws-tick-$i; sleep 1; done",
            ],
        ))
        .await;
    let url = t
        .cri
        .attach(cri::AttachRequest {
            container_id: ticker,
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .expect("Attach")
        .into_inner()
        .url;
    let got = WsClient::connect(ns, &url, "v4.channel.k8s.io")
        .await
        .expect("connect")
        .collect(limit)
        .await;
    assert!(got.text(1).contains("ws-tick-3"), "{:?}", got.text(1));
    assert_eq!(exit_status(&got.channels[&3]).0, "Success");

    // Port forward: the port's two channels start with its number, little-endian; data
    // goes both ways.
    let url = t
        .cri
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: t.pod.clone(),
            port: vec![],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    let mut ws = WsClient::connect(ns, &format!("{url}?port={WEB_PORT}"), "v4.channel.k8s.io")
        .await
        .expect("connect");
    let port = WEB_PORT.to_le_bytes().to_vec();
    let mut preambles = Vec::new();
    while preambles.len() < 2 {
        let (ch, data) = ws.next().await.expect("preamble");
        assert_eq!(data, port, "channel {ch} starts with the port");
        preambles.push(ch);
    }
    preambles.sort();
    assert_eq!(preambles, [0, 1]);
    ws.send(0, b"GET / HTTP/1.0\r\n\r\n").await;
    let got = ws.collect(limit).await;
    assert!(got.text(0).contains(PAGE), "{:?}", got.text(0));
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_streaming_requests_and_vanishing_clients() {
    let test = "bad_streaming_requests_and_vanishing_clients";
    let Some(mut t) = StreamTest::setup(test).await else {
        return;
    };
    let web = t.web.clone();
    let limit = Duration::from_secs(120);
    // A token that is never used until it expired.
    let stale = t.exec_url(exec_req(&web, &["true"], false, false)).await;
    let issued = Instant::now();

    // Requests the CRI call refuses, naming the field.
    expect_err(
        t.cri
            .exec(exec_req("no-such-container", &["true"], false, false))
            .await,
        tonic::Code::NotFound,
        "no-such-container",
    );
    let mut both = exec_req(&web, &["true"], false, true);
    both.stderr = true;
    expect_err(
        t.cri.exec(both).await,
        tonic::Code::InvalidArgument,
        "stderr",
    );
    let mut none = exec_req(&web, &["true"], false, false);
    none.stdout = false;
    none.stderr = false;
    expect_err(
        t.cri.exec(none).await,
        tonic::Code::InvalidArgument,
        "one of stdin",
    );
    expect_err(
        t.cri
            .attach(cri::AttachRequest {
                container_id: web.clone(),
                stdin: true,
                stdout: true,
                ..Default::default()
            })
            .await,
        tonic::Code::InvalidArgument,
        "stdin",
    );
    expect_err(
        t.cri
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: "no-such-pod".into(),
                port: vec![],
            })
            .await,
        tonic::Code::NotFound,
        "no-such-pod",
    );
    let stopped = t
        .container(container_config("quick", &t.image.clone(), &["true"]))
        .await;
    wait_state(&mut t.cri, &stopped, cri::ContainerState::ContainerExited).await;
    expect_err(
        t.cri
            .exec(exec_req(&stopped, &["true"], false, false))
            .await,
        tonic::Code::FailedPrecondition,
        "not running",
    );

    // A token works once; a token never issued is 404 as well.
    let ns = &NetNs::at(t.node.netns.path());
    let url = t.exec_url(exec_req(&web, &["true"], false, false)).await;
    let got = WsClient::connect(ns, &url, "v4.channel.k8s.io")
        .await
        .expect("connect")
        .collect(limit)
        .await;
    assert_eq!(exit_status(&got.channels[&3]).0, "Success");
    assert_eq!(http_status(ns, &url).await, 404, "reused token");
    let (base, _) = url.rsplit_once('/').expect("token in url");
    assert_eq!(http_status(ns, &format!("{base}/made-up")).await, 404);
    assert!(WsClient::connect(ns, &url, "v4.channel.k8s.io")
        .await
        .is_err());

    // A command that is not in the image: exit code 127 on the error channel.
    let url = t
        .exec_url(exec_req(&web, &["no-such-binary"], false, false))
        .await;
    let got = WsClient::connect(ns, &url, "v4.channel.k8s.io")
        .await
        .expect("connect")
        .collect(limit)
        .await;
    assert_eq!(
        exit_status(&got.channels[&3]),
        ("Failure".into(), Some(127))
    );

    // Clients that vanish mid-stream: their processes are killed, and nothing of them
    // stays in the daemon (counted by its open descriptors).
    let pid = t.daemon.pid().expect("daemon pid");
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = fds();
    for round in 0..5 {
        let marker = format!("vanish-{round}");
        let cmd = format!("echo started; exec sleep 3{round}0");
        let url = t
            .exec_url(exec_req(&web, &["sh", "-c", &cmd], true, false))
            .await;
        let mut ws = WsClient::connect(ns, &url, "v4.channel.k8s.io")
            .await
            .expect("connect");
        loop {
            let (ch, data) = ws
                .next()
                .await
                .unwrap_or_else(|| panic!("{marker}: ended early"));
            if ch == 1 && text(&data).contains("started") {
                break;
            }
        }
        if round == 0 {
            // The count below sees the process while its client is there.
            let (_, running) =
                exec_sh(&mut t.cri, &web, "ps -o args | grep -c '^sleep 300$'").await;
            assert_eq!(
                running, "1\n",
                "the exec runs while its client is connected"
            );
        }
        ws.abandon();
    }
    let web_id = web.clone();
    let cri = &mut t.cri;
    wait_exec_output(
        cri,
        &web_id,
        "ps -o args | grep -c '^sleep 3.0$' || true",
        "0\n",
        Duration::from_secs(60),
        "processes of vanished exec clients are killed",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while fds() > before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        fds() <= before,
        "daemon descriptors: {before} before, {} after",
        fds()
    );

    // The stale token, a minute on.
    tokio::time::sleep_until((issued + Duration::from_secs(61)).into()).await;
    assert_eq!(http_status(ns, &stale).await, 404, "expired token");
    t.finish().await;
}
