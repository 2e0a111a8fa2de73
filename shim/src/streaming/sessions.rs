//! A connected client's streams, whatever it speaks, turned into a [`ClientIo`]: over SPDY the
//! client opens one stream per purpose (told by its `streamType` header) and the session
//! starts once all it should open are there; over WebSocket the purposes are fixed channels
//! (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize) and a first empty message says "ready".

use std::time::Duration;

use bytes::Bytes;

use super::protocols::{SpdyVersion, WsProtocol};
use super::remote::{ClientIo, Output};
use super::spdy::{Session, Stream};
use super::websocket::Channels;

/// How long a SPDY client may take to open its streams (kubelet's default too).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// What a remote command's client asked for.
#[derive(Debug, Clone, Copy)]
pub struct StreamOpts {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;

#[derive(Default)]
struct Opened {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

impl Opened {
    fn complete(&self, opts: StreamOpts, version: SpdyVersion) -> bool {
        self.error.is_some()
            && (!opts.stdin || self.stdin.is_some())
            && (!opts.stdout || self.stdout.is_some())
            && (!opts.stderr || self.stderr.is_some())
            && (!(opts.tty && version.has_resize()) || self.resize.is_some())
    }
}

/// Waits for the streams a SPDY client of `version` opens for `opts`; `None` when it does
/// not open them in time or goes away.
pub async fn spdy_client(
    session: &mut Session,
    version: SpdyVersion,
    opts: StreamOpts,
) -> Option<ClientIo> {
    let mut opened = Opened::default();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while !opened.complete(opts, version) {
        let stream = tokio::select! {
            s = session.streams.recv() => s?,
            () = tokio::time::sleep_until(deadline) => {
                tracing::info!("streaming client did not open its streams in time");
                return None;
            }
        };
        let slot = match stream.header("streamType") {
            Some("error") => &mut opened.error,
            Some("stdin") => &mut opened.stdin,
            Some("stdout") => &mut opened.stdout,
            Some("stderr") => &mut opened.stderr,
            Some("resize") => &mut opened.resize,
            other => {
                tracing::debug!(stream_type = ?other, "unexpected stream type: reset");
                session.reset(stream.id).await;
                continue;
            }
        };
        *slot = Some(stream);
    }
    // Streams the request did not ask for are left alone, as kubelet does.
    let writer = |s: Option<Stream>, asked: bool| {
        s.filter(|_| asked)
            .map(|s| Box::new(s.writer) as Box<dyn Output>)
    };
    let mut stdin = opened.stdin;
    if version == SpdyVersion::V1 {
        // v1 closes the server's side of stdin at once (kubelet does).
        if let Some(s) = stdin.as_mut() {
            s.writer.close().await;
        }
    }
    Some(ClientIo {
        stdin: stdin.filter(|_| opts.stdin).map(|s| s.data),
        resize: opened.resize.filter(|_| opts.tty).map(|s| s.data),
        stdout: writer(opened.stdout, opts.stdout),
        stderr: writer(opened.stderr, opts.stderr),
        error: writer(opened.error, true),
        format: version.status_format(),
        gone: session.gone.clone(),
    })
}

/// The channels to read of a WebSocket remote command.
pub fn ws_readable(opts: StreamOpts) -> Vec<u8> {
    if opts.stdin {
        vec![STDIN, RESIZE]
    } else {
        vec![RESIZE]
    }
}

/// The client of a WebSocket remote command (its connection started with
/// [`ws_readable`]'s channels); sends the ready message.
pub async fn ws_client(
    channels: &mut Channels,
    protocol: WsProtocol,
    opts: StreamOpts,
) -> ClientIo {
    let ready = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = channels.writer(ready).message(Bytes::new()).await;
    let stdin = channels.inputs.remove(&STDIN);
    let resize = channels.inputs.remove(&RESIZE);
    let writer =
        |wanted: bool, ch: u8| wanted.then(|| Box::new(channels.writer(ch)) as Box<dyn Output>);
    ClientIo {
        stdin,
        resize,
        stdout: writer(opts.stdout, STDOUT),
        stderr: writer(opts.stderr, STDERR),
        error: writer(true, ERROR),
        format: protocol.status,
        gone: channels.gone.clone(),
    }
}
