//! Port forwarding: a TCP connection to a port of the guest's loopback, which is the pod's
//! network namespace (containers share the VM's). Data frames carry the bytes both ways; an
//! EOF frame shuts the receiving side's connection down for writing, so a client that
//! half-closes (a request, then waiting for the answer) works. A port nobody listens on is
//! refused in the open answer, with the connect error.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use vessel_protocols::agent as api;
use vessel_protocols::stream::{Frame, MAX_CHUNK};

use super::{opened, refuse, Conn};

/// Connects to the port on IPv4 loopback, then IPv6 loopback (a server may listen on either).
async fn connect(port: u16) -> std::io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect(v4).await {
        Ok(s) => Ok(s),
        Err(first) => TcpStream::connect(SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
            .await
            .map_err(|_| first),
    }
}

pub async fn serve<S>(req: api::PortStream, mut conn: Conn<S>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Some(port) = u16::try_from(req.port).ok().filter(|p| *p != 0) else {
        return refuse(&mut conn, format!("port {} is not a TCP port", req.port)).await;
    };
    let tcp = match connect(port).await {
        Ok(tcp) => tcp,
        Err(e) => {
            return refuse(
                &mut conn,
                format!("failed to connect to localhost:{port} inside the pod: {e}"),
            )
            .await
        }
    };
    let _ = tcp.set_nodelay(true);
    if !opened(&mut conn, String::new()).await {
        return;
    }
    tracing::debug!(port, "port stream open");
    let (mut tcp_read, mut tcp_write) = tcp.into_split();
    let (mut sink, mut source) = conn.split();

    // Host → port.
    let inbound = async {
        while let Some(Ok(frame)) = source.next().await {
            match frame {
                Frame::Data(data) => {
                    if tcp_write.write_all(&data).await.is_err() {
                        return;
                    }
                }
                Frame::Eof => {
                    let _ = tcp_write.shutdown().await;
                }
                other => {
                    tracing::warn!(?other, "unexpected frame on a port stream");
                    return;
                }
            }
        }
    };
    // Port → host.
    let outbound = async {
        let mut buf = BytesMut::with_capacity(MAX_CHUNK);
        loop {
            buf.reserve(MAX_CHUNK);
            match tcp_read.read_buf(&mut buf).await {
                Ok(0) => {
                    let _ = sink.send(Frame::Eof).await;
                    // The host may still send: wait for it to close the stream.
                    std::future::pending::<()>().await;
                }
                Ok(_) => {
                    let data = buf.split().freeze();
                    if sink.send(Frame::Data(data)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(port, error = %e, "port connection read");
                    return;
                }
            }
        }
    };
    // Either side ending for good (the host closing the stream, the port's connection failing)
    // ends the forward; dropping both halves closes the TCP connection.
    tokio::select! {
        () = inbound => {}
        () = outbound => {}
    }
    tracing::debug!(port, "port stream closed");
}
