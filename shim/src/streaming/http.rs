//! The streaming server's HTTP side: `/exec/<token>`, `/attach/<token>` and
//! `/portforward/<token>` (GET or POST), each a single-use token from the request cache; the
//! connection is then upgraded to WebSocket (an `Upgrade: websocket` request) or SPDY/3.1,
//! with the protocol the client and this server agree on, and handed to the session.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::cache::Pending;
use super::protocols::{
    client_protocols, negotiate, negotiate_ws, SpdyVersion, WsProtocol, PORT_FORWARD_SPDY,
    WS_PORT_FORWARD, WS_REMOTE,
};
use super::{portforward, Connection, StreamingServer, Transport};

type Reply = Response<Full<Bytes>>;

const STREAM_PROTOCOL: &str = "X-Stream-Protocol-Version";
const ACCEPTED_PROTOCOLS: &str = "X-Accepted-Stream-Protocol-Versions";
/// The largest WebSocket message or frame a client may send.
const MAX_WS_MESSAGE: usize = 1 << 20;

fn plain(status: StatusCode, body: impl Into<String>) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body.into())));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    reply
}

fn not_found() -> Reply {
    plain(StatusCode::NOT_FOUND, "404 page not found\n")
}

fn header_has(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|v| v.to_ascii_lowercase().contains(token))
            .unwrap_or(false)
    })
}

/// Answers one request.
pub async fn handle(
    server: Arc<StreamingServer>,
    mut req: Request<Incoming>,
) -> Result<Reply, Infallible> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return Ok(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n",
        ));
    }
    let path = req.uri().path().trim_start_matches('/');
    let Some((kind, token)) = path.split_once('/') else {
        return Ok(not_found());
    };
    if token.is_empty() || token.contains('/') {
        return Ok(not_found());
    }
    // Spent whatever happens next, as kubelet's cache does.
    let Some(pending) = server.cache.consume(kind, token) else {
        tracing::info!(
            kind,
            "streaming request with an unknown, used or expired token"
        );
        return Ok(not_found());
    };
    let websocket = header_has(&req, header::UPGRADE, "websocket")
        && header_has(&req, header::CONNECTION, "upgrade");
    let on_upgrade = hyper::upgrade::on(&mut req);
    let reply = if websocket {
        websocket_upgrade(&server, &req, pending, on_upgrade)
    } else {
        spdy_upgrade(&server, &req, pending, on_upgrade)
    };
    Ok(reply)
}

/// Answers a SPDY upgrade and starts the session once the connection is handed over.
fn spdy_upgrade(
    server: &Arc<StreamingServer>,
    req: &Request<Incoming>,
    pending: Pending,
    on_upgrade: OnUpgrade,
) -> Reply {
    if !header_has(req, header::CONNECTION, "upgrade")
        || !header_has(req, header::UPGRADE, "spdy/3.1")
    {
        return plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request (want Connection: Upgrade, Upgrade: SPDY/3.1 or websocket)\n",
        );
    }
    let server_protocols: Vec<&'static str> = match pending {
        Pending::PortForward(_) => vec![PORT_FORWARD_SPDY],
        _ => SpdyVersion::ALL.iter().map(|(n, _)| *n).collect(),
    };
    let client = client_protocols(req.headers(), STREAM_PROTOCOL);
    if client.is_empty() {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("unable to upgrade: {STREAM_PROTOCOL} is required\n"),
        );
    }
    let Some(chosen) = negotiate(&client, &server_protocols) else {
        let mut reply = plain(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {client:?}, server accepts {server_protocols:?}\n"
            ),
        );
        for p in &server_protocols {
            reply
                .headers_mut()
                .append(ACCEPTED_PROTOCOLS, HeaderValue::from_static(p));
        }
        return reply;
    };
    let transport = match pending {
        Pending::PortForward(_) => Transport::SpdyPortForward,
        _ => match SpdyVersion::from_name(chosen) {
            Some(version) => Transport::Spdy(version),
            None => return plain(StatusCode::INTERNAL_SERVER_ERROR, "protocol table\n"),
        },
    };
    spawn_session(server, on_upgrade, pending, transport);
    let mut reply = plain(StatusCode::SWITCHING_PROTOCOLS, "");
    let headers = reply.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    headers.insert(STREAM_PROTOCOL, HeaderValue::from_static(chosen));
    reply
}

/// Answers a WebSocket upgrade (RFC 6455 handshake, the subprotocol negotiated) and starts
/// the session.
fn websocket_upgrade(
    server: &Arc<StreamingServer>,
    req: &Request<Incoming>,
    pending: Pending,
    on_upgrade: OnUpgrade,
) -> Reply {
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY);
    let version_13 = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let (Some(key), true) = (key, version_13) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "websocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13\n",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let client = client_protocols(req.headers(), header::SEC_WEBSOCKET_PROTOCOL.as_str());
    let (table, ports): (&[WsProtocol], Option<Vec<u16>>) = match &pending {
        Pending::PortForward(pf) => {
            let ports = if pf.port.is_empty() {
                portforward::parse_ports(&query_values(req, "port"))
            } else {
                let ports: Vec<String> = pf.port.iter().map(i32::to_string).collect();
                portforward::parse_ports(&ports)
            };
            match ports {
                Ok(ports) => (&WS_PORT_FORWARD, Some(ports)),
                Err(e) => return plain(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        _ => (&WS_REMOTE, None),
    };
    let Some(protocol) = negotiate_ws(&client, table) else {
        return plain(
            StatusCode::FORBIDDEN,
            format!("unable to negotiate a websocket protocol: client supports {client:?}\n"),
        );
    };
    let transport = match ports {
        Some(ports) => Transport::WsPortForward(protocol, ports),
        None => Transport::Ws(protocol),
    };
    spawn_session(server, on_upgrade, pending, transport);
    let mut reply = plain(StatusCode::SWITCHING_PROTOCOLS, "");
    let headers = reply.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if !protocol.name.is_empty() {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol.name),
        );
    }
    reply
}

/// Every value of a query parameter.
fn query_values(req: &Request<Incoming>, name: &str) -> Vec<String> {
    let query = req.uri().query().unwrap_or_default();
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// Runs the session on the upgraded connection once hyper hands it over.
fn spawn_session(
    server: &Arc<StreamingServer>,
    on_upgrade: OnUpgrade,
    pending: Pending,
    transport: Transport,
) {
    let server = Arc::clone(server);
    tokio::spawn(async move {
        let upgraded: Upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(error = %e, "streaming client left before the upgrade");
                return;
            }
        };
        let io = TokioIo::new(upgraded);
        let connection = match &transport {
            Transport::Ws(_) | Transport::WsPortForward(..) => {
                // Clients send small messages (client-go: 32 KiB chunks); far larger ones
                // are refused rather than held.
                let config = WebSocketConfig::default()
                    .max_message_size(Some(MAX_WS_MESSAGE))
                    .max_frame_size(Some(MAX_WS_MESSAGE));
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                Connection::WebSocket(Box::new(ws))
            }
            _ => Connection::Spdy(io),
        };
        server.session(pending, transport, connection).await;
    });
}
