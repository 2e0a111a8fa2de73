//! The streaming server of Exec, Attach and PortForward, as kubelet's CRI streaming library
//! serves them: the CRI call checks the request and answers with the URL of this server and a
//! single-use token ([`cache`]); the client (kubelet, crictl) then connects and upgrades to
//! SPDY/3.1 or WebSocket ([`http`], [`protocols`], [`spdy`], [`websocket`]); its streams become
//! a session ([`sessions`]) that runs through the pod's agent ([`remote`] for exec and
//! attach, [`portforward`]) and ends with a status ([`status`]).
//!
//! Listens on `[streaming] address` (default `127.0.0.1:0`, a free port on loopback).

pub mod cache;
mod http;
pub mod idle;
pub mod portforward;
pub mod protocols;
pub mod remote;
pub mod sessions;
pub mod spdy;
pub mod status;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;

use self::cache::{CacheError, Pending, RequestCache};
use self::protocols::{SpdyVersion, WsProtocol};
use self::sessions::StreamOpts;
use self::websocket::Channels;
use crate::config::StreamingConfig;
use crate::runtime::{Runtime, RuntimeError};

/// After a session ends, how long the client gets to close the connection itself.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long the last frames of a connection may take to go out before it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send its request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("streaming server: bind {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
}

/// How a client's connection speaks, once upgraded.
pub(crate) enum Transport {
    Spdy(SpdyVersion),
    SpdyPortForward,
    Ws(WsProtocol),
    WsPortForward(WsProtocol, Vec<u16>),
}

/// An upgraded connection.
pub(crate) enum Connection {
    Spdy(TokioIo<Upgraded>),
    WebSocket(Box<WebSocketStream<TokioIo<Upgraded>>>),
}

/// The streaming server.
pub struct StreamingServer {
    cache: RequestCache,
    base_url: String,
    runtime: Arc<Runtime>,
    /// `[streaming] idle_timeout_secs`.
    idle: Duration,
}

impl StreamingServer {
    /// Binds `config.address` and serves until the daemon exits.
    pub async fn start(
        config: &StreamingConfig,
        runtime: Arc<Runtime>,
    ) -> Result<Arc<Self>, StreamingError> {
        let bind_error = |source| StreamingError::Bind {
            address: config.address.clone(),
            source,
        };
        let listener = TcpListener::bind(&config.address)
            .await
            .map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let server = Arc::new(StreamingServer {
            cache: RequestCache::default(),
            base_url: base_url(local),
            runtime,
            idle: Duration::from_secs(config.idle_timeout_secs),
        });
        tracing::info!(url = %server.base_url, "streaming server listening");
        let accepting = Arc::clone(&server);
        tokio::spawn(async move { accepting.accept(listener).await });
        Ok(server)
    }

    async fn accept(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "streaming server accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let server = Arc::clone(&self);
            tokio::spawn(async move {
                let service = service_fn(move |req| http::handle(Arc::clone(&server), req));
                let served = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "streaming connection");
                }
            });
        }
    }

    /// The URL a client uses for `request` (its token valid once, for a minute).
    pub fn url(&self, request: Pending) -> Result<String, RuntimeError> {
        let kind = request.kind();
        let token = self.cache.insert(request).map_err(|e| match e {
            CacheError::Full => RuntimeError::ResourceExhausted(e.to_string()),
            CacheError::Random(e) => RuntimeError::Internal(format!("streaming token: {e}")),
        })?;
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }

    /// Runs a client's session on its upgraded connection.
    async fn session(&self, pending: Pending, transport: Transport, connection: Connection) {
        let runtime = Arc::clone(&self.runtime);
        match (pending, transport, connection) {
            (Pending::Exec(req), Transport::Spdy(version), Connection::Spdy(io)) => {
                let opts = opts(req.stdin, req.stdout, req.stderr, req.tty);
                let mut session = spdy::Session::start(io, self.idle);
                if let Some(client) = sessions::spdy_client(&mut session, version, opts).await {
                    remote::exec(runtime, req, client).await;
                }
                linger_spdy(session).await;
            }
            (Pending::Attach(req), Transport::Spdy(version), Connection::Spdy(io)) => {
                let opts = opts(req.stdin, req.stdout, req.stderr, req.tty);
                let mut session = spdy::Session::start(io, self.idle);
                if let Some(client) = sessions::spdy_client(&mut session, version, opts).await {
                    remote::attach(runtime, req, client).await;
                }
                linger_spdy(session).await;
            }
            (Pending::PortForward(req), Transport::SpdyPortForward, Connection::Spdy(io)) => {
                let session = spdy::Session::start(io, self.idle);
                portforward::serve_spdy(runtime, req.pod_sandbox_id, session).await;
            }
            (Pending::Exec(req), Transport::Ws(protocol), Connection::WebSocket(ws)) => {
                let opts = opts(req.stdin, req.stdout, req.stderr, req.tty);
                let mut channels =
                    ws_channels(ws, protocol, self.idle, &sessions::ws_readable(opts));
                let client = sessions::ws_client(&mut channels, protocol, opts).await;
                remote::exec(runtime, req, client).await;
                channels.close().await;
            }
            (Pending::Attach(req), Transport::Ws(protocol), Connection::WebSocket(ws)) => {
                let opts = opts(req.stdin, req.stdout, req.stderr, req.tty);
                let mut channels =
                    ws_channels(ws, protocol, self.idle, &sessions::ws_readable(opts));
                let client = sessions::ws_client(&mut channels, protocol, opts).await;
                remote::attach(runtime, req, client).await;
                channels.close().await;
            }
            (
                Pending::PortForward(req),
                Transport::WsPortForward(protocol, ports),
                Connection::WebSocket(ws),
            ) => {
                let channels = ws_channels(
                    ws,
                    protocol,
                    self.idle,
                    &portforward::ws_readable(ports.len()),
                );
                portforward::serve_ws(runtime, req.pod_sandbox_id, ports, channels).await;
            }
            _ => tracing::error!("streaming session: request and transport do not match"),
        }
    }
}

fn opts(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> StreamOpts {
    StreamOpts {
        stdin,
        stdout,
        stderr,
        tty,
    }
}

fn ws_channels(
    ws: Box<WebSocketStream<TokioIo<Upgraded>>>,
    protocol: WsProtocol,
    idle: Duration,
    readable: &[u8],
) -> Channels {
    Channels::start(
        *ws,
        protocol.encoding,
        protocol.close_signal,
        readable,
        idle,
    )
}

/// Gives a SPDY client that read its status the time to close the connection itself (it
/// resets its streams and sends GOAWAY), then closes it.
async fn linger_spdy(session: spdy::Session) {
    let _ = tokio::time::timeout(CLOSE_GRACE, session.gone.cancelled()).await;
    session.close().await;
}

/// Ends a connection's writer task: `last` (SPDY's GOAWAY, WebSocket's close frame) goes
/// after everything queued, then the socket closes; a client that does not take them within
/// [`CLOSE_TIMEOUT`] is cut off. `gone` is cancelled either way.
async fn close_connection<T: Send>(
    out: tokio::sync::mpsc::Sender<T>,
    last: T,
    mut writer: tokio::task::JoinHandle<()>,
    gone: &tokio_util::sync::CancellationToken,
) {
    let flushed = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = out.send(last).await;
        drop(out);
        let _ = (&mut writer).await;
    })
    .await;
    if flushed.is_err() {
        writer.abort();
    }
    gone.cancel();
}

/// Writes one item of a connection's writer task: flushed when `flush` (nothing queued
/// behind it), else only fed so the items behind it go out in the same write. False when the
/// connection is gone or the write failed.
async fn write_one<S, T>(
    sink: &mut S,
    item: T,
    flush: bool,
    gone: &tokio_util::sync::CancellationToken,
    activity: &idle::Activity,
) -> bool
where
    S: futures_util::Sink<T> + Unpin,
{
    use futures_util::SinkExt;
    let send = async {
        if flush {
            sink.send(item).await
        } else {
            sink.feed(item).await
        }
    };
    let sent = tokio::select! {
        sent = send => sent.is_ok(),
        () = gone.cancelled() => false,
    };
    if sent {
        activity.touch();
    }
    sent
}

/// `http://host:port`, with IPv6 hosts in brackets.
fn base_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_bound_address() {
        assert_eq!(
            base_url("127.0.0.1:4242".parse().unwrap()),
            "http://127.0.0.1:4242"
        );
        assert_eq!(base_url("[::1]:80".parse().unwrap()), "http://[::1]:80");
    }
}
