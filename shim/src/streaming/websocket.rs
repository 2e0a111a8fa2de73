//! Kubernetes' channel protocol over WebSocket (tungstenite does the WebSocket framing): every
//! message is one channel's bytes, its first byte the channel number. The binary protocols
//! send binary messages; the `base64.` ones text messages whose first character is the
//! channel digit and the rest the payload in base64. `v5.channel.k8s.io` adds a close signal,
//! the message `[255, channel]`, which half-closes that channel.

use std::collections::HashMap;
use std::io;

use async_trait::async_trait;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::idle::Activity;
use super::remote::Output;

/// The channel number of v5's close signal.
const CLOSE_SIGNAL: u8 = 255;
/// Messages queued per readable channel before the reader waits for its consumer.
const CHANNEL_BACKLOG: usize = 8;
/// Most payload bytes per message this side sends.
const MAX_MESSAGE: usize = 128 * 1024;

/// How a protocol puts channel bytes in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Binary,
    Base64,
}

enum Out {
    Data(u8, Bytes),
    CloseChannel(u8),
    Close,
}

/// A WebSocket connection split into channels.
pub struct Channels {
    /// The channels the client may write, by number; each closes at the client's close
    /// signal or when the connection ends.
    pub inputs: HashMap<u8, mpsc::Receiver<Bytes>>,
    /// Cancelled when the connection is gone.
    pub gone: CancellationToken,
    out: mpsc::Sender<Out>,
    close_signal: bool,
    writer: tokio::task::JoinHandle<()>,
}

impl Channels {
    /// Serves the channel protocol on `ws`; `readable` are the channels whose input is
    /// kept (the rest is dropped); `close_signal` for v5.
    pub fn start<IO>(
        ws: WebSocketStream<IO>,
        encoding: Encoding,
        close_signal: bool,
        readable: &[u8],
        idle: std::time::Duration,
    ) -> Self
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sink, source) = ws.split();
        let (out_tx, out_rx) = mpsc::channel(16);
        let gone = CancellationToken::new();
        let activity = Activity::watch(idle, gone.clone());
        let mut inputs = HashMap::new();
        let mut senders = HashMap::new();
        for &ch in readable {
            let (tx, rx) = mpsc::channel(CHANNEL_BACKLOG);
            inputs.insert(ch, rx);
            senders.insert(ch, tx);
        }
        let writer = tokio::spawn(write_messages(
            sink,
            out_rx,
            encoding,
            gone.clone(),
            activity.clone(),
        ));
        tokio::spawn(read_messages(
            source,
            senders,
            encoding,
            close_signal,
            gone.clone(),
            activity,
        ));
        Channels {
            inputs,
            gone,
            out: out_tx,
            close_signal,
            writer,
        }
    }

    /// A writer of channel `ch`.
    pub fn writer(&self, ch: u8) -> ChannelWriter {
        ChannelWriter {
            ch,
            out: self.out.clone(),
            close_signal: self.close_signal,
            closed: false,
        }
    }

    /// Ends the connection once everything queued is sent (close code 1000), at once if the
    /// client does not take it in time.
    pub async fn close(self) {
        super::close_connection(self.out, Out::Close, self.writer, &self.gone).await;
    }
}

/// Sends on one channel.
pub struct ChannelWriter {
    ch: u8,
    out: mpsc::Sender<Out>,
    close_signal: bool,
    closed: bool,
}

impl ChannelWriter {
    /// Sends one message even when `data` is empty (the ready and port preamble messages).
    pub async fn message(&mut self, data: Bytes) -> io::Result<()> {
        self.out
            .send(Out::Data(self.ch, data))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "connection closed"))
    }
}

#[async_trait]
impl Output for ChannelWriter {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "channel closed"));
        }
        let mut rest = data;
        while !rest.is_empty() {
            let chunk = rest.split_to(rest.len().min(MAX_MESSAGE));
            self.message(chunk).await?;
        }
        Ok(())
    }

    /// v5 tells the client; the older protocols have no way to, so the channel just stops.
    async fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            if self.close_signal {
                let _ = self.out.send(Out::CloseChannel(self.ch)).await;
            }
        }
    }
}

/// A received message as (channel, payload); `None` for one to drop.
fn decode(message: Message, encoding: Encoding) -> Option<(u8, Bytes)> {
    let raw: Bytes = match message {
        Message::Binary(b) => b,
        Message::Text(t) => Bytes::copy_from_slice(t.as_bytes()),
        _ => return None,
    };
    let (&first, rest) = raw.split_first()?;
    match encoding {
        Encoding::Binary => Some((first, raw.slice(1..))),
        Encoding::Base64 => {
            let ch = first.checked_sub(b'0')?;
            let payload = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            Some((ch, payload.into()))
        }
    }
}

fn encode(ch: u8, data: &[u8], encoding: Encoding) -> Message {
    match encoding {
        Encoding::Binary => {
            let mut m = BytesMut::with_capacity(1 + data.len());
            m.put_u8(ch);
            m.put_slice(data);
            Message::Binary(m.freeze())
        }
        Encoding::Base64 => {
            let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            text.push(char::from(b'0' + ch));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
            Message::Text(text.into())
        }
    }
}

async fn read_messages<S>(
    mut source: S,
    mut senders: HashMap<u8, mpsc::Sender<Bytes>>,
    encoding: Encoding,
    close_signal: bool,
    gone: CancellationToken,
    activity: Activity,
) where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::select! {
            m = source.next() => m,
            () = gone.cancelled() => break,
        };
        activity.touch();
        let message = match message {
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "websocket unreadable");
                break;
            }
        };
        let Some((ch, payload)) = decode(message, encoding) else {
            continue;
        };
        if close_signal && ch == CLOSE_SIGNAL {
            if let Some(&closed) = payload.first() {
                senders.remove(&closed);
            }
            continue;
        }
        if payload.is_empty() {
            continue;
        }
        if let Some(tx) = senders.get(&ch) {
            if tx.send(payload).await.is_err() {
                senders.remove(&ch);
            }
        }
    }
    gone.cancel();
}

async fn write_messages<S>(
    mut sink: S,
    mut out: mpsc::Receiver<Out>,
    encoding: Encoding,
    gone: CancellationToken,
    activity: Activity,
) where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    loop {
        let item = tokio::select! {
            item = out.recv() => match item {
                Some(item) => item,
                None => break,
            },
            () = gone.cancelled() => break,
        };
        let message = match item {
            Out::Data(ch, data) => encode(ch, &data, encoding),
            Out::CloseChannel(ch) => Message::Binary(Bytes::from(vec![CLOSE_SIGNAL, ch])),
            Out::Close => {
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    })))
                    .await;
                break;
            }
        };
        if !super::write_one(&mut sink, message, out.is_empty(), &gone, &activity).await {
            break;
        }
    }
    let _ = sink.close().await;
    gone.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_base64_framing() {
        let m = encode(1, b"hi", Encoding::Binary);
        assert_eq!(m, Message::Binary(Bytes::from_static(b"\x01hi")));
        assert_eq!(
            decode(m, Encoding::Binary),
            Some((1, Bytes::from_static(b"hi")))
        );
        let m = encode(2, b"hi", Encoding::Base64);
        assert_eq!(m, Message::Text("2aGk=".into()));
        assert_eq!(
            decode(m, Encoding::Base64),
            Some((2, Bytes::from_static(b"hi")))
        );
        assert_eq!(decode(Message::Text("0!!".into()), Encoding::Base64), None);
        assert_eq!(
            decode(Message::Binary(Bytes::new()), Encoding::Binary),
            None
        );
    }
}
