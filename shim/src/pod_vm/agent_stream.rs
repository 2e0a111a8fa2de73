//! The shim's end of the agent's byte streams (vessel_protocols::stream): each stream is a
//! hybrid-vsock connection of its own to the agent's stream port, opened with a `StreamOpen`
//! frame and answered with a `StreamOpened` one. The agent's streams need the guest
//! capability `streams`; the caller checks it (see [`super::GuestInfo::require`]).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protobuf::Message;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;
use vessel_protocols::agent as api;
use vessel_protocols::stream::{Frame, StreamCodec, STREAM_VSOCK_PORT};

use super::agent_client::{AgentClient, AgentError};

/// How long the agent may take to answer an open frame (a port connect included).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// An open stream to the agent.
pub type AgentStream = Framed<UnixStream, StreamCodec>;

/// Why a stream did not open.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Connect(#[from] AgentError),
    /// The agent refused, saying why (no such process, a port nobody listens on).
    #[error("{0}")]
    Refused(String),
    #[error("agent stream: {0}")]
    Protocol(String),
}

impl AgentClient {
    /// Opens a stream to the process `exec_id` of container `container_id` (the init when
    /// empty); with `output` its stdout and stderr come on it too.
    pub async fn process_stream(
        &self,
        container_id: &str,
        exec_id: &str,
        output: bool,
        kill_on_close: bool,
    ) -> Result<AgentStream, StreamError> {
        let mut p = api::ProcessStream::new();
        p.container_id = container_id.to_owned();
        p.exec_id = exec_id.to_owned();
        p.output = output;
        p.kill_on_close = kill_on_close;
        self.open_stream(api::stream_open::Target::Process(p)).await
    }

    /// Opens a TCP connection to `port` on the guest's loopback.
    pub async fn port_stream(&self, port: u32) -> Result<AgentStream, StreamError> {
        let mut p = api::PortStream::new();
        p.port = port;
        self.open_stream(api::stream_open::Target::Port(p)).await
    }

    async fn open_stream(
        &self,
        target: api::stream_open::Target,
    ) -> Result<AgentStream, StreamError> {
        let mut open = api::StreamOpen::new();
        open.target = Some(target);
        let open = open
            .write_to_bytes()
            .map_err(|e| StreamError::Protocol(format!("encode open frame: {e}")))?;
        let opening = async {
            let conn = self.endpoint().connect(STREAM_VSOCK_PORT).await?;
            let mut conn = Framed::new(conn, StreamCodec::default());
            conn.send(Frame::Open(open.into()))
                .await
                .map_err(|e| StreamError::Protocol(e.to_string()))?;
            let answer = conn
                .next()
                .await
                .transpose()
                .map_err(|e| StreamError::Protocol(e.to_string()))?;
            Ok::<_, StreamError>((conn, answer))
        };
        let (conn, answer) = tokio::time::timeout(OPEN_TIMEOUT, opening)
            .await
            .map_err(|_| StreamError::Protocol(format!("no answer within {OPEN_TIMEOUT:?}")))??;
        let Some(Frame::Opened(answer)) = answer else {
            let got = answer.map_or("the end of the stream".into(), |f| f.describe());
            return Err(StreamError::Protocol(format!(
                "expected an open answer, got {got}"
            )));
        };
        let answer = api::StreamOpened::parse_from_bytes(&answer)
            .map_err(|e| StreamError::Protocol(format!("bad open answer: {e}")))?;
        if !answer.error.is_empty() {
            // The guest is untrusted: its message is passed on, but not at any length.
            return Err(StreamError::Refused(
                answer.error.chars().take(512).collect(),
            ));
        }
        Ok(conn)
    }
}
