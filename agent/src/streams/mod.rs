//! The byte streams the shim opens beside the ttrpc connection (vessel_protocols::stream):
//! each connection to vsock port 1025 starts with a `StreamOpen` frame and is then the I/O of
//! one process ([`process`]) or one TCP connection to a port of the guest's loopback
//! ([`port`]). Every stream moves bytes as they come, and holds at most a frame or two of them:
//! a reader that stops stops the writer behind it (vsock credit on one side, the pipe or the
//! TCP window on the other).

mod port;
mod process;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protobuf::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;
use vessel_protocols::agent as api;
use vessel_protocols::stream::{Frame, StreamCodec, STREAM_VSOCK_PORT};

use crate::rpc::AgentService;

/// How long a new connection may take to name its stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A stream connection, framed.
pub type Conn<S> = Framed<S, StreamCodec>;

/// Where streams are served: vsock in the VM, or beside the ttrpc socket in a dev run
/// (`unix:///x.sock` → `/x.sock.streams`).
pub fn address(ttrpc_listen: &str) -> Option<String> {
    if ttrpc_listen.starts_with("vsock://") {
        return Some(format!("vsock://-1:{STREAM_VSOCK_PORT}"));
    }
    ttrpc_listen
        .strip_prefix("unix://")
        .map(|path| format!("{path}{}", vessel_protocols::stream::UNIX_STREAM_SUFFIX))
}

/// Accepts stream connections until the agent ends; each is served on a task of its own.
pub async fn serve(address: String, svc: Arc<AgentService>) -> std::io::Result<()> {
    if address.starts_with("vsock://") {
        let addr = tokio_vsock::VsockAddr::new(libc::VMADDR_CID_ANY, STREAM_VSOCK_PORT);
        let listener = tokio_vsock::VsockListener::bind(addr)?;
        tracing::info!(port = STREAM_VSOCK_PORT, "streams served on vsock");
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((conn, _)) => spawn_stream(conn, Arc::clone(&svc)),
                    Err(e) => accept_failed(e).await,
                }
            }
        });
    } else {
        let _ = std::fs::remove_file(&address);
        let listener = tokio::net::UnixListener::bind(&address)?;
        tracing::info!(path = address, "streams served on a Unix socket");
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((conn, _)) => spawn_stream(conn, Arc::clone(&svc)),
                    Err(e) => accept_failed(e).await,
                }
            }
        });
    }
    Ok(())
}

async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept a stream connection");
    // Out of descriptors or memory: let some go before trying again.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn spawn_stream<S>(conn: S, svc: Arc<AgentService>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    tokio::spawn(async move {
        let mut conn = Framed::new(conn, StreamCodec::default());
        let open = match tokio::time::timeout(OPEN_TIMEOUT, conn.next()).await {
            Ok(Some(Ok(Frame::Open(open)))) => open,
            Ok(Some(Ok(other))) => {
                tracing::warn!(?other, "stream connection did not start with an open frame");
                return;
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "stream connection");
                return;
            }
            Ok(None) => return,
            Err(_) => {
                tracing::warn!("stream connection named no stream in time");
                return;
            }
        };
        match api::StreamOpen::parse_from_bytes(&open) {
            Ok(open) => match open.target {
                Some(api::stream_open::Target::Process(p)) => process::serve(&svc, p, conn).await,
                Some(api::stream_open::Target::Port(p)) => port::serve(p, conn).await,
                _ => {
                    refuse(
                        &mut conn,
                        "the open frame names no stream this agent knows".into(),
                    )
                    .await
                }
            },
            Err(e) => refuse(&mut conn, format!("bad open frame: {e}")).await,
        }
    });
}

/// Answers the open frame.
async fn opened<S>(conn: &mut Conn<S>, error: String) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut reply = api::StreamOpened::new();
    reply.error = error;
    let bytes = match reply.write_to_bytes() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "encode stream answer");
            return false;
        }
    };
    conn.send(Frame::Opened(bytes.into())).await.is_ok()
}

/// Says why the stream cannot be opened; the connection then closes.
async fn refuse<S>(conn: &mut Conn<S>, why: String)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tracing::info!(why, "stream refused");
    let _ = opened(conn, why).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_sit_beside_the_ttrpc_listener() {
        assert_eq!(
            address("vsock://-1:1024").as_deref(),
            Some("vsock://-1:1025")
        );
        assert_eq!(
            address("unix:///tmp/a.sock").as_deref(),
            Some("/tmp/a.sock.streams")
        );
        assert_eq!(address("tcp://x"), None);
    }
}
