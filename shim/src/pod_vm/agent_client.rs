//! The shim's client of the guest agent: hybrid vsock + ttrpc, with a timeout on every RPC.
//!
//! Hybrid vsock (Firecracker, Cloud Hypervisor, vhost-device-vsock): connect to the VM's Unix
//! socket, write `CONNECT <port>\n`, read `OK <port>\n`; the stream is then the guest's vsock
//! port. Only the reply's grammar is checked, since implementations answer with different ports.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use vessel_protocols::agent::{self as api, AgentClient as TtrpcAgentClient};
use vessel_protocols::ttrpc;

pub use crate::hypervisor::AgentEndpoint;

/// Timeout of an ordinary control RPC.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of one health check while waiting for the agent to come up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest accepted handshake reply line.
const MAX_REPLY: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("connect {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("hybrid vsock handshake: {0}")]
    Handshake(String),
    #[error("agent {rpc}: {code:?}: {message}")]
    Rpc {
        rpc: &'static str,
        code: ttrpc::Code,
        message: String,
    },
    #[error("agent {rpc}: {source}")]
    Transport {
        rpc: &'static str,
        source: ttrpc::Error,
    },
}

impl AgentError {
    /// The ttrpc status code the agent answered with, if it answered.
    pub fn code(&self) -> Option<ttrpc::Code> {
        match self {
            AgentError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn from_ttrpc(rpc: &'static str, e: ttrpc::Error) -> Self {
        match e {
            ttrpc::Error::RpcStatus(status) => AgentError::Rpc {
                rpc,
                code: status.code(),
                message: status.message().to_string(),
            },
            other => AgentError::Transport { rpc, source: other },
        }
    }
}

/// Opens a stream to guest vsock `port` through the hybrid-vsock socket at `path`.
pub async fn connect_hybrid_vsock(path: &Path, port: u32) -> Result<UnixStream, AgentError> {
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| AgentError::Connect {
            path: path.display().to_string(),
            source,
        })?;
    let handshake = |e: std::io::Error| AgentError::Handshake(e.to_string());
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(handshake)?;
    // Byte by byte: anything after the newline already belongs to the guest's stream.
    let mut line = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.map_err(handshake)? == 0 {
            return Err(AgentError::Handshake(format!(
                "connection closed after {:?} (nothing listens on guest port {port} yet)",
                String::from_utf8_lossy(&line)
            )));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_REPLY {
            return Err(AgentError::Handshake("reply line too long".into()));
        }
    }
    parse_ok_reply(&line)?;
    Ok(stream)
}

impl AgentEndpoint {
    /// Opens a stream to the agent's `port` (the ttrpc or the stream port).
    pub async fn connect(&self, port: u32) -> Result<UnixStream, AgentError> {
        match self {
            AgentEndpoint::HybridVsock(path) => connect_hybrid_vsock(path, port).await,
            AgentEndpoint::Unix(path) => {
                let path = if port == vessel_protocols::stream::STREAM_VSOCK_PORT {
                    let mut streams = path.clone().into_os_string();
                    streams.push(vessel_protocols::stream::UNIX_STREAM_SUFFIX);
                    std::path::PathBuf::from(streams)
                } else {
                    path.clone()
                };
                UnixStream::connect(&path)
                    .await
                    .map_err(|source| AgentError::Connect {
                        path: path.display().to_string(),
                        source,
                    })
            }
        }
    }

    /// The socket path (for logs).
    pub fn path(&self) -> &Path {
        match self {
            AgentEndpoint::HybridVsock(path) | AgentEndpoint::Unix(path) => path,
        }
    }
}

/// Accepts exactly `OK <decimal>`.
fn parse_ok_reply(line: &[u8]) -> Result<u32, AgentError> {
    let text =
        std::str::from_utf8(line).map_err(|_| AgentError::Handshake("non-UTF-8 reply".into()))?;
    text.strip_prefix("OK ")
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| AgentError::Handshake(format!("unexpected reply {text:?}")))
}

fn ctx(timeout: Option<Duration>) -> ttrpc::context::Context {
    match timeout {
        Some(t) => ttrpc::context::with_timeout(i64::try_from(t.as_nanos()).unwrap_or(i64::MAX)),
        None => ttrpc::context::Context::default(),
    }
}

/// A connected agent client. Cheap to clone; calls are multiplexed on one connection.
#[derive(Clone)]
pub struct AgentClient {
    inner: TtrpcAgentClient,
    /// Where the agent is reached; streams open connections of their own there.
    endpoint: std::sync::Arc<AgentEndpoint>,
}

macro_rules! rpc {
    ($(#[$doc:meta])* $name:ident, $req:ty, $resp:ty, $timeout:expr) => {
        $(#[$doc])*
        pub async fn $name(&self, req: $req) -> Result<$resp, AgentError> {
            self.inner
                .$name(ctx($timeout), &req)
                .await
                .map_err(|e| AgentError::from_ttrpc(stringify!($name), e))
        }
    };
}

impl AgentClient {
    /// Connects once; the agent must already listen.
    pub async fn connect(endpoint: &AgentEndpoint) -> Result<Self, AgentError> {
        let stream = endpoint.connect(vessel_protocols::AGENT_VSOCK_PORT).await?;
        let client = ttrpc::r#async::Client::new(ttrpc::r#async::transport::Socket::from(stream));
        Ok(Self {
            inner: TtrpcAgentClient::new(client),
            endpoint: std::sync::Arc::new(endpoint.clone()),
        })
    }

    /// Where this client reaches the agent.
    pub fn endpoint(&self) -> &AgentEndpoint {
        &self.endpoint
    }

    /// Connects and checks health, retrying until the agent answers or `deadline` passes.
    /// `alive` is asked between tries; when it returns `Some(reason)` the wait ends at once.
    pub async fn wait_ready(
        socket: &AgentEndpoint,
        deadline: Instant,
        mut alive: impl FnMut() -> Option<String>,
    ) -> Result<Self, WaitError> {
        let mut backoff = Duration::from_millis(10);
        loop {
            if let Some(reason) = alive() {
                return Err(WaitError::VmExited(reason));
            }
            // A VMM may hold a CONNECT unanswered until the guest's vsock driver is up: each
            // try is bounded, so a VM that died meanwhile is noticed.
            let attempt = tokio::time::timeout(PROBE_TIMEOUT, Self::connect(socket)).await;
            let last = match attempt {
                Ok(Ok(client)) => match client.check_with(PROBE_TIMEOUT).await {
                    Ok(()) => return Ok(client),
                    Err(e) => e.to_string(),
                },
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer to CONNECT within {PROBE_TIMEOUT:?}"),
            };
            if Instant::now() + backoff > deadline {
                return Err(WaitError::Deadline(last));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    /// Health check; Ok only when the agent reports SERVING.
    pub async fn check_with(&self, timeout: Duration) -> Result<(), AgentError> {
        let resp = self
            .inner
            .check(ctx(Some(timeout)), &api::CheckRequest::new())
            .await
            .map_err(|e| AgentError::from_ttrpc("check", e))?;
        match resp.status.enum_value() {
            Ok(api::check_response::ServingStatus::SERVING) => Ok(()),
            other => Err(AgentError::Rpc {
                rpc: "check",
                code: ttrpc::Code::UNAVAILABLE,
                message: format!("agent status {other:?}"),
            }),
        }
    }

    rpc!(
        get_guest_details,
        api::GetGuestDetailsRequest,
        api::GuestDetails,
        Some(CONTROL_TIMEOUT)
    );
    rpc!(
        set_guest_date_time,
        api::SetGuestDateTimeRequest,
        api::Empty,
        Some(CONTROL_TIMEOUT)
    );
    rpc!(
        create_sandbox,
        api::CreateSandboxRequest,
        api::Empty,
        Some(CONTROL_TIMEOUT)
    );
    rpc!(
        destroy_sandbox,
        api::DestroySandboxRequest,
        api::Empty,
        Some(CONTROL_TIMEOUT)
    );
    rpc!(
        create_container,
        api::CreateContainerRequest,
        api::Empty,
        Some(CONTROL_TIMEOUT)
    );
    rpc!(
        start_container,
        api::StartContainerRequest,
        api::Empty,
        Some(CONTROL_TIMEOUT)
    );
    rpc!(
        remove_container,
        api::RemoveContainerRequest,
        api::Empty,
        Some(CONTROL_TIMEOUT)
    );
    rpc!(
        stats_container,
        api::StatsContainerRequest,
        api::ContainerStats,
        Some(CONTROL_TIMEOUT)
    );
    rpc!(
        update_container,
        api::UpdateContainerRequest,
        api::Empty,
        Some(CONTROL_TIMEOUT)
    );
    rpc!(
        exec_process,
        api::ExecProcessRequest,
        api::Empty,
        Some(CONTROL_TIMEOUT)
    );
    rpc!(
        signal_process,
        api::SignalProcessRequest,
        api::Empty,
        Some(CONTROL_TIMEOUT)
    );
    rpc!(
        /// Blocks until the process exits: no timeout.
        wait_process, api::WaitProcessRequest, api::WaitProcessResponse, None
    );
    rpc!(
        write_stdin,
        api::WriteStdinRequest,
        api::WriteStdinResponse,
        Some(CONTROL_TIMEOUT)
    );
    rpc!(
        close_stdin,
        api::CloseStdinRequest,
        api::Empty,
        Some(CONTROL_TIMEOUT)
    );
    rpc!(
        /// Blocks until output or end of stream: no timeout.
        read_stdout, api::ReadStreamRequest, api::ReadStreamResponse, None
    );
    rpc!(
        /// Blocks until output or end of stream: no timeout.
        read_stderr, api::ReadStreamRequest, api::ReadStreamResponse, None
    );
    rpc!(
        tty_win_resize,
        api::TtyWinResizeRequest,
        api::Empty,
        Some(CONTROL_TIMEOUT)
    );
    rpc!(
        update_interface,
        api::UpdateInterfaceRequest,
        api::Interface,
        Some(CONTROL_TIMEOUT)
    );
    rpc!(
        update_routes,
        api::UpdateRoutesRequest,
        api::Routes,
        Some(CONTROL_TIMEOUT)
    );
}

/// Why waiting for the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("the VM exited: {0}")]
    VmExited(String),
    #[error("deadline passed; last attempt: {0}")]
    Deadline(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[test]
    fn reply_grammar() {
        assert_eq!(parse_ok_reply(b"OK 1024").unwrap(), 1024);
        assert_eq!(parse_ok_reply(b"OK 3").unwrap(), 3);
        for bad in [&b"OK"[..], b"OK ", b"ok 12", b"OK 12x", b"ERR 1", b"OK -1"] {
            assert!(
                parse_ok_reply(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test]
    async fn handshake_leaves_following_bytes_in_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"CONNECT 1024\n");
            s.write_all(b"OK 1073741824\nhello").await.unwrap();
        });
        let mut stream = connect_hybrid_vsock(&path, 1024).await.unwrap();
        let mut rest = String::new();
        stream.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "hello");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn closed_connection_is_a_handshake_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            drop(s);
        });
        let err = connect_hybrid_vsock(&path, 1024).await.unwrap_err();
        assert!(matches!(err, AgentError::Handshake(_)), "{err}");
    }
}
