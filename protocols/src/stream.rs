//! Byte streams between the shim and the agent: the I/O of exec and attach sessions and port
//! forwarding. Each stream has a vsock connection of its own to [`STREAM_VSOCK_PORT`], so a
//! slow reader holds back only its own stream (through vsock's credit) and no byte waits for a
//! ttrpc round trip. The host opens the connection and sends a [`Frame::Open`] carrying an
//! `agent::StreamOpen`; the agent answers with a [`Frame::Opened`] carrying an
//! `agent::StreamOpened`, then both sides send frames until one closes the connection.
//!
//! On the wire a frame is a 4-byte big-endian length of what follows, a kind byte and the
//! payload (tokio-util's length-delimited codec does the outer framing).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// The vsock port of the agent's stream listener.
pub const STREAM_VSOCK_PORT: u32 = 1025;

/// Where an agent serving ttrpc on a Unix socket (a native pod's, or a dev run) serves its
/// streams: that socket's path with this appended.
pub const UNIX_STREAM_SUFFIX: &str = ".streams";

/// The most payload bytes one data frame carries.
pub const MAX_CHUNK: usize = 128 * 1024;

/// The longest frame either side accepts (a chunk plus its kind byte, with room to spare).
const MAX_FRAME: usize = 2 * MAX_CHUNK;

const OPEN: u8 = 0x01;
const OPENED: u8 = 0x02;
const DATA: u8 = 0x10;
const STDOUT: u8 = 0x11;
const STDERR: u8 = 0x12;
const EOF: u8 = 0x13;
const RESIZE: u8 = 0x20;
const EXIT: u8 = 0x30;

/// One frame of a stream connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Host → agent, first: an `agent::StreamOpen` message.
    Open(Bytes),
    /// Agent → host, first: an `agent::StreamOpened` message.
    Opened(Bytes),
    /// Bytes for the process's stdin (host → agent), or for the other end of a forwarded
    /// port (both ways).
    Data(Bytes),
    /// The process's output (agent → host).
    Stdout(Bytes),
    Stderr(Bytes),
    /// The sender sends no more data: the process's stdin is closed, or the forwarded
    /// connection is shut down for writing on the receiving side.
    Eof,
    /// New terminal window size (host → agent).
    Resize {
        width: u16,
        height: u16,
    },
    /// The process exited and its output is all sent (agent → host, last): an
    /// `agent::WaitProcessResponse` message.
    Exit(Bytes),
}

impl Frame {
    /// The frame's kind and size, for messages: never its bytes (the guest is untrusted).
    pub fn describe(&self) -> String {
        let (kind, len) = match self {
            Frame::Open(p) => ("open", p.len()),
            Frame::Opened(p) => ("opened", p.len()),
            Frame::Data(p) => ("data", p.len()),
            Frame::Stdout(p) => ("stdout", p.len()),
            Frame::Stderr(p) => ("stderr", p.len()),
            Frame::Eof => ("eof", 0),
            Frame::Resize { .. } => ("resize", 4),
            Frame::Exit(p) => ("exit", p.len()),
        };
        format!("{kind} frame of {len} bytes")
    }
}

/// A frame that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream frame: {0}")]
    Io(#[from] std::io::Error),
    #[error("stream frame: unknown kind {0:#04x}")]
    UnknownKind(u8),
    #[error("stream frame: empty frame")]
    Empty,
    #[error("stream frame: resize frame of {0} bytes, not 4")]
    BadResize(usize),
}

/// The codec of stream frames, for `tokio_util::codec::Framed`.
pub struct StreamCodec {
    outer: LengthDelimitedCodec,
}

impl Default for StreamCodec {
    fn default() -> Self {
        StreamCodec {
            outer: LengthDelimitedCodec::builder()
                .max_frame_length(MAX_FRAME)
                .new_codec(),
        }
    }
}

impl Decoder for StreamCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(mut frame) = self.outer.decode(src)? else {
            return Ok(None);
        };
        if frame.is_empty() {
            return Err(FrameError::Empty);
        }
        let kind = frame.get_u8();
        let payload = frame.freeze();
        Ok(Some(match kind {
            OPEN => Frame::Open(payload),
            OPENED => Frame::Opened(payload),
            DATA => Frame::Data(payload),
            STDOUT => Frame::Stdout(payload),
            STDERR => Frame::Stderr(payload),
            EOF => Frame::Eof,
            RESIZE => {
                if payload.len() != 4 {
                    return Err(FrameError::BadResize(payload.len()));
                }
                let mut p = payload;
                Frame::Resize {
                    width: p.get_u16(),
                    height: p.get_u16(),
                }
            }
            EXIT => Frame::Exit(payload),
            other => return Err(FrameError::UnknownKind(other)),
        }))
    }
}

impl Encoder<Frame> for StreamCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let (kind, payload) = match frame {
            Frame::Open(p) => (OPEN, p),
            Frame::Opened(p) => (OPENED, p),
            Frame::Data(p) => (DATA, p),
            Frame::Stdout(p) => (STDOUT, p),
            Frame::Stderr(p) => (STDERR, p),
            Frame::Eof => (EOF, Bytes::new()),
            Frame::Resize { width, height } => {
                let mut p = BytesMut::with_capacity(4);
                p.put_u16(width);
                p.put_u16(height);
                (RESIZE, p.freeze())
            }
            Frame::Exit(p) => (EXIT, p),
        };
        // The length prefix, the kind, then the payload, without building the frame twice.
        let len = 1 + payload.len();
        if len > MAX_FRAME {
            return Err(FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("frame of {len} bytes is over {MAX_FRAME}"),
            )));
        }
        dst.reserve(4 + len);
        dst.put_u32(len as u32);
        dst.put_u8(kind);
        dst.extend_from_slice(&payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) -> Frame {
        let mut codec = StreamCodec::default();
        let mut buf = BytesMut::new();
        codec.encode(frame, &mut buf).unwrap();
        let out = codec.decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn every_frame_survives_the_wire() {
        for frame in [
            Frame::Open(Bytes::from_static(b"\x0a\x02hi")),
            Frame::Opened(Bytes::new()),
            Frame::Data(Bytes::from(vec![7u8; MAX_CHUNK])),
            Frame::Stdout(Bytes::from_static(b"out")),
            Frame::Stderr(Bytes::from_static(b"err")),
            Frame::Eof,
            Frame::Resize {
                width: 120,
                height: 40,
            },
            Frame::Exit(Bytes::from_static(b"\x08\x01")),
        ] {
            assert_eq!(round_trip(frame.clone()), frame);
        }
    }

    #[test]
    fn partial_input_waits_for_the_rest() {
        let mut codec = StreamCodec::default();
        let mut whole = BytesMut::new();
        codec
            .encode(Frame::Stdout(Bytes::from_static(b"hello")), &mut whole)
            .unwrap();
        let mut part = whole.split_to(5);
        assert!(codec.decode(&mut part).unwrap().is_none());
        part.unsplit(whole);
        assert_eq!(
            codec.decode(&mut part).unwrap(),
            Some(Frame::Stdout(Bytes::from_static(b"hello")))
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut codec = StreamCodec::default();
        let mut unknown = BytesMut::from(&[0, 0, 0, 1, 0x7f][..]);
        assert!(matches!(
            codec.decode(&mut unknown),
            Err(FrameError::UnknownKind(0x7f))
        ));
        let mut resize = BytesMut::from(&[0, 0, 0, 2, RESIZE, 1][..]);
        assert!(matches!(
            codec.decode(&mut resize),
            Err(FrameError::BadResize(1))
        ));
        let mut huge = BytesMut::from(&[0, 0x10, 0, 0, DATA][..]);
        assert!(codec.decode(&mut huge).is_err(), "over the frame limit");
    }
}
