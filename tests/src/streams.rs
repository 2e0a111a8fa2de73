//! Clients of the CRI streaming server for the tests, written from kubelet's protocol
//! definitions, not from vessel's server code:
//!
//! - [`WsClient`]: WebSocket remote command and port forward. Channels 0 stdin, 1 stdout,
//!   2 stderr, 3 error, 4 resize (port forward: 2i data, 2i+1 error for the i-th port);
//!   binary messages are `[channel] + bytes`, the `base64.` protocols' text messages
//!   `'0'+channel` + base64; v5's close signal is the message `[255, channel]`.
//! - [`Crictl`]: cri-tools' crictl (`../shared/tools/crictl`, client-go's SPDY executor and
//!   port forwarder), run in the node namespace of the test.
//!
//! Every connection is made inside the test's own network namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use vessel_shim::network::netns::NetNs;

/// A TCP connection to the `host:port` of `url`, made inside `ns`.
pub async fn connect_in(ns: &NetNs, url: &str) -> std::io::Result<TcpStream> {
    let authority = url
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(rest).to_owned())
        .ok_or_else(|| std::io::Error::other(format!("no host in {url}")))?;
    let stream = ns
        .run(move || std::net::TcpStream::connect(authority))
        .map_err(std::io::Error::other)??;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

/// The status line's code of a plain GET of `url` (no upgrade), from inside `ns`.
pub async fn http_status(ns: &NetNs, url: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = connect_in(ns, url)
        .await
        .expect("connect to the streaming server");
    let path = url.splitn(4, '/').nth(3).unwrap_or_default();
    let request = format!("GET /{path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("send");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut reply))
        .await
        .expect("an HTTP answer within 30 s")
        .expect("read the answer");
    let text = String::from_utf8_lossy(&reply);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

/// A WebSocket session with the streaming server.
pub struct WsClient {
    ws: WebSocketStream<TcpStream>,
    base64: bool,
    /// The subprotocol the server chose.
    pub protocol: String,
}

/// What a session's channels carried, once it closed.
#[derive(Debug, Default)]
pub struct Received {
    pub channels: BTreeMap<u8, Vec<u8>>,
    /// Every message in order: its channel and length (the ready and preamble messages).
    pub messages: Vec<(u8, usize)>,
    /// Channels the server half-closed (v5).
    pub closed: Vec<u8>,
}

impl Received {
    pub fn text(&self, ch: u8) -> String {
        String::from_utf8_lossy(self.channels.get(&ch).map(Vec::as_slice).unwrap_or(&[]))
            .into_owned()
    }
}

impl WsClient {
    /// Connects to `url` (an `http://` URL from Exec, Attach or PortForward, with a query
    /// of its own if any) offering `protocols`.
    pub async fn connect(
        ns: &NetNs,
        url: &str,
        protocols: &str,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let tcp = connect_in(ns, url).await?;
        let ws_url = url.replacen("http://", "ws://", 1);
        let mut request = ws_url.into_client_request()?;
        if !protocols.is_empty() {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                protocols.parse().expect("protocol header"),
            );
        }
        let (ws, response) = tokio_tungstenite::client_async(request, tcp).await?;
        let protocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(Self {
            ws,
            base64: protocol.contains("base64"),
            protocol,
        })
    }

    /// Sends bytes on a channel.
    pub async fn send(&mut self, ch: u8, data: &[u8]) {
        let message = if self.base64 {
            let mut text = String::from(char::from(b'0' + ch));
            text.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
            Message::Text(text.into())
        } else {
            let mut bytes = vec![ch];
            bytes.extend_from_slice(data);
            Message::Binary(bytes.into())
        };
        self.ws.send(message).await.expect("websocket send");
    }

    /// v5: half-closes a channel (stdin's EOF).
    pub async fn close_channel(&mut self, ch: u8) {
        self.ws
            .send(Message::Binary(vec![255, ch].into()))
            .await
            .expect("websocket send");
    }

    /// The next channel message; `None` once the server closed. Panics after two minutes
    /// without one.
    pub async fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(120), self.ws.next())
                .await
                .expect("a websocket message within 2 minutes");
            let raw: Vec<u8> = match next? {
                Ok(Message::Binary(b)) => b.to_vec(),
                Ok(Message::Text(t)) => t.as_bytes().to_vec(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            };
            let (&first, rest) = raw.split_first()?;
            if self.base64 {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .expect("base64 payload");
                return Some((first - b'0', data));
            }
            return Some((first, rest.to_vec()));
        }
    }

    /// Reads until the server closes (at most `within`).
    pub async fn collect(mut self, within: Duration) -> Received {
        let mut got = Received::default();
        let read = async {
            while let Some((ch, data)) = self.next().await {
                if ch == 255 {
                    got.closed.extend(data.first());
                    continue;
                }
                got.messages.push((ch, data.len()));
                got.channels.entry(ch).or_default().extend(data);
            }
        };
        tokio::time::timeout(within, read)
            .await
            .expect("the streaming session to end");
        got
    }

    /// Leaves without a close handshake (a client that vanished).
    pub fn abandon(self) {
        drop(self.ws);
    }
}

/// The v4 error-channel status: `(status, exit code)` — the exit code from a
/// NonZeroExitCode failure's causes.
pub fn exit_status(error_channel: &[u8]) -> (String, Option<i32>) {
    let v: serde_json::Value = serde_json::from_slice(error_channel).unwrap_or_else(|e| {
        panic!(
            "error channel is not a Status ({e}): {:?}",
            String::from_utf8_lossy(error_channel)
        )
    });
    let code = v["details"]["causes"]
        .as_array()
        .and_then(|causes| causes.iter().find(|c| c["reason"] == "ExitCode"))
        .and_then(|c| c["message"].as_str())
        .and_then(|m| m.parse().ok());
    (v["status"].as_str().unwrap_or_default().to_owned(), code)
}

/// crictl, run in a network namespace against a daemon's socket.
pub struct Crictl {
    binary: PathBuf,
    netns: PathBuf,
    socket: PathBuf,
}

impl Crictl {
    /// `None`, after a SKIPPED line, when `../shared/tools/crictl` is not there.
    pub fn find(test: &str, netns: &Path, socket: &Path) -> Option<Self> {
        // VESSEL_CRICTL, else the project's shared tools beside the checkout, else PATH.
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/crictl");
        let in_path = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("crictl"))
                .find(|p| p.is_file())
        });
        let Some(binary) = std::env::var_os("VESSEL_CRICTL")
            .map(PathBuf::from)
            .or_else(|| shared.is_file().then_some(shared))
            .or(in_path)
        else {
            crate::skipped(
                test,
                "crictl not found (../shared/tools/crictl beside the checkout, PATH, or VESSEL_CRICTL)",
            );
            return None;
        };
        Some(Self {
            binary,
            netns: netns.to_owned(),
            socket: socket.to_owned(),
        })
    }

    /// The command line of `crictl <args>` inside the namespace, as one shell word list.
    pub fn command_line(&self, args: &[&str]) -> Vec<String> {
        let mut line = vec![
            "nsenter".to_string(),
            format!("--net={}", self.netns.display()),
            self.binary.display().to_string(),
            "--runtime-endpoint".into(),
            format!("unix://{}", self.socket.display()),
            "-t".into(),
            "60s".into(),
        ];
        line.extend(args.iter().map(|a| a.to_string()));
        line
    }

    /// A command for `crictl <args>`, its stdio left to the caller.
    pub fn command(&self, args: &[&str]) -> Command {
        let line = self.command_line(args);
        let mut cmd = Command::new(&line[0]);
        cmd.args(&line[1..]);
        cmd
    }

    /// Runs `crictl <args>` with `stdin` piped in; its output (also on failure). Panics if it
    /// runs past two minutes.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        run_with_input(self.command(args), stdin, false, Duration::from_secs(120))
    }

    /// Starts `crictl <args>` in the background (port-forward), killed when dropped.
    pub fn spawn(&self, args: &[&str]) -> Background {
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start crictl");
        Background(Some(child))
    }
}

/// A background process of a test, killed when dropped (a failed test leaves none).
pub struct Background(Option<std::process::Child>);

impl Background {
    /// Kills it; its output until then.
    pub fn stop(mut self) -> Output {
        let mut child = self.0.take().expect("running");
        let _ = child.kill();
        child.wait_with_output().expect("background output")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `cmd` with `input` on its stdin, which then closes, or with `hold_stdin` stays open
/// until the command exits (as a terminal's would); its output. Panics, after killing it, if
/// it runs past `limit`.
pub fn run_with_input(mut cmd: Command, input: &[u8], hold_stdin: bool, limit: Duration) -> Output {
    use std::io::{Read, Write};
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write stdin");
    let stdin = hold_stdin.then_some(stdin);
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr")));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// A shell-quoted word.
pub fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}
