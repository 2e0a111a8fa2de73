//! PortForward: each forwarded connection is a stream to the pod's agent, which connects to
//! the port on the guest's loopback. Over SPDY the client opens an error and a data stream
//! per connection (paired by `requestID`, the port in their `port` header); over WebSocket
//! each port of the request has a data channel (2i) and an error channel (2i+1), whose first
//! message is the port, little-endian. A port nobody listens on gets the error on that
//! connection's error stream; the session and its other connections go on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use vessel_protocols::stream::{Frame, MAX_CHUNK};

use super::remote::Output;
use super::sessions::STREAM_CREATION_TIMEOUT;
use super::spdy::{Session, Stream};
use super::websocket::Channels;
use crate::pod_vm::AgentStream;
use crate::runtime::Runtime;

/// After the pod's side of a connection ends, how long the client's side may still send.
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The most ports one WebSocket session forwards (two channels each, below 255).
pub const MAX_WS_PORTS: usize = 127;

/// Parses the ports of a `port` query value list: repeated and/or comma-separated, each in
/// 1..=65535.
pub fn parse_ports(values: &[String]) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for value in values {
        for p in value.split(',') {
            let p = p.trim();
            if p.is_empty() {
                return Err("query parameter \"port\" cannot be empty".into());
            }
            let port: u16 = p
                .parse()
                .map_err(|e| format!("unable to parse {p:?} as a port: {e}"))?;
            if port == 0 {
                return Err(format!("port {p:?} must be > 0"));
            }
            ports.push(port);
        }
    }
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    if ports.len() > MAX_WS_PORTS {
        return Err(format!("at most {MAX_WS_PORTS} ports per session"));
    }
    Ok(ports)
}

/// Moves one connection's bytes until the pod's side ends (then `out` is closed) and, for
/// at most [`HALF_CLOSE_GRACE`] more, the client's side.
async fn relay(agent: AgentStream, mut from_client: mpsc::Receiver<Bytes>, out: &mut dyn Output) {
    let (mut sink, mut source) = agent.split();
    let up = async {
        while let Some(data) = from_client.recv().await {
            for chunk in data.chunks(MAX_CHUNK) {
                if sink.send(Frame::Data(data.slice_ref(chunk))).await.is_err() {
                    return;
                }
            }
        }
        // The client sends no more: the pod's side reads EOF, and may still answer.
        let _ = sink.send(Frame::Eof).await;
    };
    let mut down = Box::pin(async {
        while let Some(Ok(frame)) = source.next().await {
            match frame {
                Frame::Data(data) => {
                    if out.write(data).await.is_err() {
                        return;
                    }
                }
                Frame::Eof => return,
                other => {
                    tracing::warn!(
                        frame = other.describe(),
                        "unexpected frame on a port stream"
                    );
                    return;
                }
            }
        }
    });
    tokio::pin!(up);
    let client_done = tokio::select! {
        () = &mut down => false,
        () = &mut up => true,
    };
    if client_done {
        (&mut down).await;
    }
    drop(down);
    out.close().await;
    if !client_done {
        let _ = tokio::time::timeout(HALF_CLOSE_GRACE, &mut up).await;
    }
}

/// Forwards one connection to `port`; failures go on `error` as text.
async fn forward(
    runtime: Arc<Runtime>,
    pod_id: String,
    port: u16,
    from_client: mpsc::Receiver<Bytes>,
    out: &mut dyn Output,
    error: &mut dyn Output,
) {
    match runtime.pods.connect_port(&pod_id, port).await {
        Ok(agent) => {
            tracing::debug!(pod_id, port, "port forward connected");
            relay(agent, from_client, out).await;
        }
        Err(e) => {
            tracing::info!(pod_id, port, error = %e, "port forward refused");
            let message = format!("error forwarding port {port} to pod {pod_id}, uid : {e}");
            let _ = error.write(Bytes::from(message)).await;
            out.close().await;
        }
    }
    error.close().await;
}

/// A SPDY stream's port, checked as kubelet does.
fn stream_port(stream: &Stream) -> Result<u16, String> {
    let raw = stream.header("port").ok_or("\"port\" header is required")?;
    let port: u16 = raw
        .parse()
        .map_err(|e| format!("unable to parse {raw:?} as a port: {e}"))?;
    if port == 0 {
        return Err(format!("port {raw:?} must be > 0"));
    }
    Ok(port)
}

#[derive(Default)]
struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
    started: Option<Instant>,
}

/// Serves PortForward over a SPDY connection until the client closes it.
pub async fn serve_spdy(runtime: Arc<Runtime>, pod_id: String, mut session: Session) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // The connections being forwarded: they end with the session.
    let mut forwards = JoinSet::new();
    loop {
        let next_deadline = pairs
            .values()
            .filter_map(|p| p.started)
            .min()
            .map(|t| t + STREAM_CREATION_TIMEOUT);
        let stream = tokio::select! {
            s = session.streams.recv() => match s {
                Some(s) => s,
                None => break,
            },
            () = session.gone.cancelled() => break,
            () = sleep_until(next_deadline) => {
                expire(&mut pairs, &session).await;
                continue;
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => continue,
        };
        if let Err(why) = stream_port(&stream) {
            tracing::debug!(why, "port forward stream refused");
            session.reset(stream.id).await;
            continue;
        }
        let kind = stream.header("streamType").unwrap_or_default().to_owned();
        if kind != "error" && kind != "data" {
            tracing::debug!(kind, "port forward stream of an unknown type refused");
            session.reset(stream.id).await;
            continue;
        }
        // Old clients send no request id: the data stream follows its error stream.
        let request = match stream.header("requestID") {
            Some(id) => id.to_owned(),
            None if kind == "error" => stream.id.to_string(),
            None => stream.id.saturating_sub(2).to_string(),
        };
        let pair = pairs.entry(request.clone()).or_default();
        pair.started.get_or_insert_with(Instant::now);
        let slot = if kind == "error" {
            &mut pair.error
        } else {
            &mut pair.data
        };
        if slot.is_some() {
            let mut stream = stream;
            let message = format!(
                "error processing stream for request {request}: {kind} stream already assigned"
            );
            let _ = stream.writer.write(Bytes::from(message)).await;
            stream.writer.close().await;
            continue;
        }
        *slot = Some(stream);
        if let (Some(_), Some(_)) = (&pair.error, &pair.data) {
            let Some(Pair {
                error: Some(error),
                data: Some(data),
                ..
            }) = pairs.remove(&request)
            else {
                continue;
            };
            let port = stream_port(&data).unwrap_or_default();
            let runtime = Arc::clone(&runtime);
            let pod_id = pod_id.clone();
            forwards.spawn(async move {
                let Stream {
                    data: from_client,
                    writer: mut out,
                    ..
                } = data;
                // The client writes nothing on the error stream: what it might send there
                // is dropped, never waited on.
                let Stream {
                    writer: mut error,
                    data: unread,
                    ..
                } = error;
                drop(unread);
                forward(runtime, pod_id, port, from_client, &mut out, &mut error).await;
            });
        }
    }
    forwards.abort_all();
    session.close().await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Drops the pairs whose second stream never came: the error stream says so, a lone data
/// stream is reset.
async fn expire(pairs: &mut HashMap<String, Pair>, session: &Session) {
    let now = Instant::now();
    let expired: Vec<String> = pairs
        .iter()
        .filter(|(_, p)| {
            p.started
                .is_some_and(|t| t + STREAM_CREATION_TIMEOUT <= now)
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in expired {
        match pairs.remove(&id) {
            Some(Pair {
                error: Some(mut error),
                ..
            }) => {
                let message = format!("(request={id}) timed out waiting for streams");
                let _ = error.writer.write(Bytes::from(message)).await;
                error.writer.close().await;
            }
            Some(Pair {
                data: Some(data), ..
            }) => session.reset(data.id).await,
            _ => {}
        }
    }
}

/// Serves PortForward over WebSocket: one connection per port, all at once, then the
/// session ends.
pub async fn serve_ws(
    runtime: Arc<Runtime>,
    pod_id: String,
    ports: Vec<u16>,
    mut channels: Channels,
) {
    let mut forwards = JoinSet::new();
    for (i, port) in ports.into_iter().enumerate() {
        let (data_ch, error_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let mut out = channels.writer(data_ch);
        let mut error = channels.writer(error_ch);
        let preamble = Bytes::copy_from_slice(&port.to_le_bytes());
        if out.message(preamble.clone()).await.is_err() || error.message(preamble).await.is_err() {
            break;
        }
        let from_client = channels
            .inputs
            .remove(&data_ch)
            .unwrap_or_else(|| mpsc::channel(1).1);
        let runtime = Arc::clone(&runtime);
        let pod_id = pod_id.clone();
        forwards.spawn(async move {
            forward(runtime, pod_id, port, from_client, &mut out, &mut error).await;
        });
    }
    let all = async { while forwards.join_next().await.is_some() {} };
    tokio::select! {
        () = all => {}
        () = channels.gone.cancelled() => {}
    }
    // Forwards still running when the client left end with it.
    forwards.abort_all();
    channels.close().await;
}

/// The data channels of a WebSocket session of `ports` (the ones the client writes).
pub fn ws_readable(ports: usize) -> Vec<u8> {
    (0..ports).map(|i| (2 * i) as u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_like_kubelets() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_ports(&v(&["80", "8080,9090"])).unwrap(),
            vec![80, 8080, 9090]
        );
        assert!(parse_ports(&[]).unwrap_err().contains("required"));
        assert!(parse_ports(&v(&["80,"])).unwrap_err().contains("empty"));
        assert!(parse_ports(&v(&["0"])).unwrap_err().contains("> 0"));
        assert!(parse_ports(&v(&["70000"]))
            .unwrap_err()
            .contains("unable to parse"));
        assert_eq!(ws_readable(2), vec![0, 2]);
    }
}
