//! SPDY/3.1, the framing client-go's SPDY executor and port forwarder (moby/spdystream)
//! speak after the HTTP upgrade: [`frame`] (the wire layout), [`headers`] (header blocks and
//! their dictionary-primed zlib stream) and [`session`] (a server connection and its streams).
//!
//! Written here because no maintained Rust crate serves SPDY/3.1: the ones that exist are
//! clients for other transports or unfinished, and HTTP/2 crates do not speak it.

pub mod frame;
pub mod headers;
pub mod session;

pub use session::{Session, Stream};

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use tokio_util::codec::Framed;

    use super::frame::{Frame, SpdyCodec, FLAG_FIN};
    use super::headers::{Deflater, Inflater};
    use super::*;
    use crate::streaming::remote::Output;

    #[tokio::test]
    async fn a_client_stream_is_answered_and_carries_data_both_ways() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut session = Session::start(server, std::time::Duration::from_secs(60));
        let mut client = Framed::new(client, SpdyCodec);
        let mut deflate = Deflater::new().unwrap();
        let mut inflate = Inflater::default();

        let block = deflate.block(&[("streamtype", "stdout")]).unwrap();
        client
            .send(Frame::SynStream {
                stream_id: 1,
                flags: 0,
                block,
            })
            .await
            .unwrap();
        let mut stream = session.streams.recv().await.unwrap();
        assert_eq!(stream.header("streamType"), Some("stdout"));
        match client.next().await.unwrap().unwrap() {
            Frame::SynReply {
                stream_id: 1,
                block,
                ..
            } => assert!(inflate.block(&block).unwrap().is_empty()),
            other => panic!("expected a reply, got {other:?}"),
        }

        // Client → server, then its FIN ends the stream's data.
        for (data, flags) in [(&b"hello"[..], 0), (&b""[..], FLAG_FIN)] {
            client
                .send(Frame::Data {
                    stream_id: 1,
                    flags,
                    data: Bytes::copy_from_slice(data),
                })
                .await
                .unwrap();
        }
        assert_eq!(stream.data.recv().await.unwrap(), "hello");
        assert!(stream.data.recv().await.is_none());

        // Server → client, then a FIN.
        stream
            .writer
            .write(Bytes::from_static(b"out"))
            .await
            .unwrap();
        stream.writer.close().await;
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Frame::Data {
                stream_id: 1,
                flags: 0,
                data: Bytes::from_static(b"out")
            }
        );
        assert!(matches!(
            client.next().await.unwrap().unwrap(),
            Frame::Data {
                flags: FLAG_FIN,
                ..
            }
        ));

        // Pings are echoed; the connection's end is noticed.
        client.send(Frame::Ping(3)).await.unwrap();
        assert_eq!(client.next().await.unwrap().unwrap(), Frame::Ping(3));
        drop(client);
        session.gone.cancelled().await;
    }

    #[tokio::test]
    async fn a_stream_id_going_backwards_is_refused() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut session = Session::start(server, std::time::Duration::from_secs(60));
        let mut client = Framed::new(client, SpdyCodec);
        let mut deflate = Deflater::new().unwrap();
        for id in [5, 3] {
            let block = deflate.block(&[("streamtype", "error")]).unwrap();
            client
                .send(Frame::SynStream {
                    stream_id: id,
                    flags: 0,
                    block,
                })
                .await
                .unwrap();
        }
        assert_eq!(session.streams.recv().await.unwrap().id, 5);
        assert!(matches!(
            client.next().await.unwrap().unwrap(),
            Frame::SynReply { stream_id: 5, .. }
        ));
        assert!(matches!(
            client.next().await.unwrap().unwrap(),
            Frame::RstStream { stream_id: 3, .. }
        ));
    }
}
