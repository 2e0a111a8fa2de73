//! One SPDY/3.1 server connection, as spdystream (client-go's SPDY) speaks it: the client
//! opens every stream (odd ids) and this side answers each SYN_STREAM with a SYN_REPLY at
//! once; PINGs are echoed; there is no flow-control window (spdystream neither sends nor
//! honours WINDOW_UPDATE), so back-pressure is TCP's: a reader task hands each stream's data
//! to its consumer and waits while that consumer is busy, and one writer task sends frames
//! in order.

use std::collections::HashMap;
use std::io;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::frame::{Frame, SpdyCodec, FLAG_FIN, RST_CANCEL, RST_PROTOCOL_ERROR};
use super::headers::{self, Deflater, Headers, Inflater};
use crate::streaming::idle::Activity;
use crate::streaming::remote::Output;

/// Most bytes of one DATA frame this side sends.
const MAX_DATA: usize = 128 * 1024;
/// Data chunks queued per stream before the reader waits for its consumer.
const STREAM_BACKLOG: usize = 8;
/// Frames queued for the writer.
const WRITE_BACKLOG: usize = 16;

/// What the writer task sends.
#[derive(Debug)]
enum Out {
    Reply(u32),
    Data { id: u32, data: Bytes, fin: bool },
    Reset(u32, u32),
    Ping(u32),
    GoAway,
}

/// A stream the client opened.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// The client's data; closes at its FIN or reset, or when the connection ends.
    pub data: mpsc::Receiver<Bytes>,
    pub writer: StreamWriter,
}

impl Stream {
    /// The value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        headers::get(&self.headers, name)
    }
}

/// Sends on one stream.
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
    closed: bool,
}

#[async_trait]
impl Output for StreamWriter {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "stream closed"));
        }
        let mut rest = data;
        while !rest.is_empty() {
            let chunk = rest.split_to(rest.len().min(MAX_DATA));
            let frame = Out::Data {
                id: self.id,
                data: chunk,
                fin: false,
            };
            self.out
                .send(frame)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "connection closed"))?;
        }
        Ok(())
    }

    async fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            let fin = Out::Data {
                id: self.id,
                data: Bytes::new(),
                fin: true,
            };
            let _ = self.out.send(fin).await;
        }
    }
}

/// A SPDY connection being served.
pub struct Session {
    /// The streams the client opens, in order.
    pub streams: mpsc::Receiver<Stream>,
    /// Cancelled when the connection is gone (closed, reset, or unreadable).
    pub gone: CancellationToken,
    out: mpsc::Sender<Out>,
    writer: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Serves SPDY on an upgraded connection, closed after `idle` without a frame.
    pub fn start<IO>(io: IO, idle: std::time::Duration) -> Self
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(WRITE_BACKLOG);
        let (streams_tx, streams_rx) = mpsc::channel(4);
        let gone = CancellationToken::new();
        let activity = Activity::watch(idle, gone.clone());
        let writer = tokio::spawn(write_frames(
            FramedWrite::new(write, SpdyCodec),
            out_rx,
            gone.clone(),
            activity.clone(),
        ));
        tokio::spawn(read_frames(
            FramedRead::new(read, SpdyCodec),
            out_tx.clone(),
            streams_tx,
            gone.clone(),
            activity,
        ));
        Session {
            streams: streams_rx,
            gone,
            out: out_tx,
            writer,
        }
    }

    /// Resets a stream this side will not serve.
    pub async fn reset(&self, id: u32) {
        let _ = self.out.send(Out::Reset(id, RST_CANCEL)).await;
    }

    /// Ends the connection once everything queued is sent: GOAWAY, then the socket closes
    /// (at once if the client does not take them in time).
    pub async fn close(self) {
        crate::streaming::close_connection(self.out, Out::GoAway, self.writer, &self.gone).await;
    }
}

async fn read_frames<R>(
    mut frames: FramedRead<R, SpdyCodec>,
    out: mpsc::Sender<Out>,
    streams: mpsc::Sender<Stream>,
    gone: CancellationToken,
    activity: Activity,
) where
    R: AsyncRead + Unpin,
{
    let mut inflater = Inflater::default();
    let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut next_id = 1u32;
    loop {
        let frame = tokio::select! {
            frame = frames.next() => frame,
            () = gone.cancelled() => break,
        };
        activity.touch();
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "spdy connection unreadable");
                break;
            }
            None => break,
        };
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                block,
            } => {
                // Every block continues the zlib stream, even one whose stream is refused.
                let headers = match inflater.block(&block) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::debug!(error = %e, "spdy header block");
                        break;
                    }
                };
                if stream_id % 2 == 0 || stream_id < next_id {
                    let _ = out.send(Out::Reset(stream_id, RST_PROTOCOL_ERROR)).await;
                    continue;
                }
                next_id = stream_id.saturating_add(2);
                if out.send(Out::Reply(stream_id)).await.is_err() {
                    break;
                }
                let (tx, rx) = mpsc::channel(STREAM_BACKLOG);
                if flags & FLAG_FIN == 0 {
                    open.insert(stream_id, tx);
                }
                let stream = Stream {
                    id: stream_id,
                    headers,
                    data: rx,
                    writer: StreamWriter {
                        id: stream_id,
                        out: out.clone(),
                        closed: false,
                    },
                };
                if streams.send(stream).await.is_err() {
                    tracing::debug!(stream_id, "spdy stream opened after the session was served");
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if let Some(tx) = open.get(&stream_id) {
                    // A consumer that stopped reading just drops what comes.
                    if !data.is_empty() && tx.send(data).await.is_err() {
                        open.remove(&stream_id);
                    }
                }
                if flags & FLAG_FIN != 0 {
                    open.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                open.remove(&stream_id);
            }
            Frame::SynReply { block, .. } | Frame::Headers { block, .. } => {
                if inflater.block(&block).is_err() {
                    break;
                }
            }
            // The client's pings have odd ids; an even one would answer ours (never sent).
            Frame::Ping(id) if id % 2 == 1 => {
                let _ = out.send(Out::Ping(id)).await;
            }
            Frame::Ping(_) | Frame::Ignored(_) => {}
            Frame::GoAway { .. } => break,
        }
    }
    gone.cancel();
}

async fn write_frames<W>(
    mut sink: FramedWrite<W, SpdyCodec>,
    mut frames: mpsc::Receiver<Out>,
    gone: CancellationToken,
    activity: Activity,
) where
    W: AsyncWrite + Unpin,
{
    let mut deflater = match Deflater::new() {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "spdy header compressor");
            gone.cancel();
            return;
        }
    };
    loop {
        let out = tokio::select! {
            out = frames.recv() => match out {
                Some(out) => out,
                None => break,
            },
            () = gone.cancelled() => break,
        };
        let last = matches!(out, Out::GoAway);
        let frame = match out {
            Out::Reply(id) => match deflater.block(&[]) {
                Ok(block) => Frame::SynReply {
                    stream_id: id,
                    flags: 0,
                    block,
                },
                Err(e) => {
                    tracing::error!(error = %e, "spdy header block");
                    break;
                }
            },
            Out::Data { id, data, fin } => Frame::Data {
                stream_id: id,
                flags: if fin { FLAG_FIN } else { 0 },
                data,
            },
            Out::Reset(id, status) => Frame::RstStream {
                stream_id: id,
                status,
            },
            Out::Ping(id) => Frame::Ping(id),
            Out::GoAway => Frame::GoAway {
                last_good: 0,
                status: 0,
            },
        };
        let flush = frames.is_empty() || last;
        if !crate::streaming::write_one(&mut sink, frame, flush, &gone, &activity).await {
            break;
        }
        if last {
            break;
        }
    }
    let _ = sink.close().await;
    gone.cancel();
}
