//! SPDY/3 frames on the wire: an 8-byte header (control frames: version 3, type, flags,
//! 24-bit length; data frames: stream id, flags, length) and the payload. Header blocks
//! stay compressed here; [`super::headers`] inflates and deflates them, in wire order.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

const VERSION: u16 = 3;
const CONTROL_BIT: u32 = 0x8000_0000;
const ID_MASK: u32 = 0x7fff_ffff;
/// The largest payload a 24-bit length allows.
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;
/// The largest frames this server reads: client-go writes data in chunks of 32 KiB and header
/// blocks of a few bytes, so a client cannot make it hold 16 MiB per frame.
const MAX_DATA_READ: usize = 4 << 20;
const MAX_CONTROL_READ: usize = 64 << 10;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// The FIN flag of data, SYN_STREAM and SYN_REPLY frames: the sender sends no more.
pub const FLAG_FIN: u8 = 0x01;

/// RST_STREAM status codes this server sends.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_CANCEL: u32 = 5;

/// One frame. Control frames this server never acts on (SETTINGS, WINDOW_UPDATE, and
/// types SPDY/3 does not define) are read as [`Frame::Ignored`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        flags: u8,
        /// The compressed header block.
        block: Bytes,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        block: Bytes,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        block: Bytes,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Ping(u32),
    GoAway {
        last_good: u32,
        status: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    Ignored(u16),
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("spdy: {0}")]
    Io(#[from] std::io::Error),
    #[error("spdy: {kind} frame of {len} bytes is too short")]
    Short { kind: &'static str, len: usize },
    #[error("spdy: unsupported version {0}")]
    Version(u16),
    #[error("spdy: frame payload of {0} bytes is over the limit")]
    TooLarge(usize),
}

/// Reads and writes frames (tokio-util codec).
#[derive(Default)]
pub struct SpdyCodec;

fn need(payload: &Bytes, len: usize, kind: &'static str) -> Result<(), FrameError> {
    if payload.len() < len {
        return Err(FrameError::Short {
            kind,
            len: payload.len(),
        });
    }
    Ok(())
}

impl Decoder for SpdyCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < 8 {
            return Ok(None);
        }
        let first = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        let flags = src[4];
        let len = usize::from(src[5]) << 16 | usize::from(src[6]) << 8 | usize::from(src[7]);
        let limit = if first & CONTROL_BIT == 0 {
            MAX_DATA_READ
        } else {
            MAX_CONTROL_READ
        };
        if len > limit {
            return Err(FrameError::TooLarge(len));
        }
        if src.len() < 8 + len {
            src.reserve(8 + len - src.len());
            return Ok(None);
        }
        src.advance(8);
        let mut p = src.split_to(len).freeze();
        if first & CONTROL_BIT == 0 {
            return Ok(Some(Frame::Data {
                stream_id: first & ID_MASK,
                flags,
                data: p,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(FrameError::Version(version));
        }
        let kind = (first & 0xffff) as u16;
        Ok(Some(match kind {
            SYN_STREAM => {
                need(&p, 10, "SYN_STREAM")?;
                let stream_id = p.get_u32() & ID_MASK;
                p.advance(6); // associated stream id, priority, slot
                Frame::SynStream {
                    stream_id,
                    flags,
                    block: p,
                }
            }
            SYN_REPLY | HEADERS => {
                need(&p, 4, "SYN_REPLY")?;
                let stream_id = p.get_u32() & ID_MASK;
                if kind == SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        block: p,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        block: p,
                    }
                }
            }
            RST_STREAM => {
                need(&p, 8, "RST_STREAM")?;
                Frame::RstStream {
                    stream_id: p.get_u32() & ID_MASK,
                    status: p.get_u32(),
                }
            }
            PING => {
                need(&p, 4, "PING")?;
                Frame::Ping(p.get_u32())
            }
            GOAWAY => {
                need(&p, 4, "GOAWAY")?;
                let last_good = p.get_u32() & ID_MASK;
                let status = if p.remaining() >= 4 { p.get_u32() } else { 0 };
                Frame::GoAway { last_good, status }
            }
            SETTINGS | WINDOW_UPDATE => Frame::Ignored(kind),
            other => Frame::Ignored(other),
        }))
    }
}

fn control_header(dst: &mut BytesMut, kind: u16, flags: u8, len: usize) -> Result<(), FrameError> {
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    dst.reserve(8 + len);
    dst.put_u32(CONTROL_BIT | u32::from(VERSION) << 16 | u32::from(kind));
    dst.put_u32(u32::from(flags) << 24 | len as u32);
    Ok(())
}

impl Encoder<Frame> for SpdyCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                block,
            } => {
                control_header(dst, SYN_STREAM, flags, 10 + block.len())?;
                dst.put_u32(stream_id & ID_MASK);
                dst.put_u32(0);
                dst.put_u16(0);
                dst.extend_from_slice(&block);
            }
            Frame::SynReply {
                stream_id,
                flags,
                block,
            } => {
                control_header(dst, SYN_REPLY, flags, 4 + block.len())?;
                dst.put_u32(stream_id & ID_MASK);
                dst.extend_from_slice(&block);
            }
            Frame::Headers {
                stream_id,
                flags,
                block,
            } => {
                control_header(dst, HEADERS, flags, 4 + block.len())?;
                dst.put_u32(stream_id & ID_MASK);
                dst.extend_from_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                control_header(dst, RST_STREAM, 0, 8)?;
                dst.put_u32(stream_id & ID_MASK);
                dst.put_u32(status);
            }
            Frame::Ping(id) => {
                control_header(dst, PING, 0, 4)?;
                dst.put_u32(id);
            }
            Frame::GoAway { last_good, status } => {
                control_header(dst, GOAWAY, 0, 8)?;
                dst.put_u32(last_good & ID_MASK);
                dst.put_u32(status);
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > MAX_PAYLOAD {
                    return Err(FrameError::TooLarge(data.len()));
                }
                dst.reserve(8 + data.len());
                dst.put_u32(stream_id & ID_MASK);
                dst.put_u32(u32::from(flags) << 24 | data.len() as u32);
                dst.extend_from_slice(&data);
            }
            Frame::Ignored(kind) => {
                return Err(FrameError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("frame type {kind} is not sent"),
                )))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(frame: Frame) -> Vec<u8> {
        let mut buf = BytesMut::new();
        SpdyCodec.encode(frame, &mut buf).unwrap();
        buf.to_vec()
    }

    fn decode(bytes: &[u8]) -> Frame {
        let mut buf = BytesMut::from(bytes);
        let frame = SpdyCodec.decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        frame
    }

    #[test]
    fn control_frames_have_the_spdy3_layout() {
        let ping = [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1];
        assert_eq!(encode(Frame::Ping(1)), ping);
        assert_eq!(decode(&ping), Frame::Ping(1));
        let rst = [0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 5];
        let frame = Frame::RstStream {
            stream_id: 1,
            status: RST_CANCEL,
        };
        assert_eq!(encode(frame.clone()), rst);
        assert_eq!(decode(&rst), frame);
        let goaway = [0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            encode(Frame::GoAway {
                last_good: 0,
                status: 0
            }),
            goaway
        );
    }

    #[test]
    fn data_frames_and_fin() {
        let fin_only = [0, 0, 0, 3, 1, 0, 0, 0];
        let frame = Frame::Data {
            stream_id: 3,
            flags: FLAG_FIN,
            data: Bytes::new(),
        };
        assert_eq!(encode(frame.clone()), fin_only);
        assert_eq!(decode(&fin_only), frame);
        let big = Frame::Data {
            stream_id: 5,
            flags: 0,
            data: Bytes::from(vec![9u8; 70_000]),
        };
        assert_eq!(decode(&encode(big.clone())), big);
    }

    #[test]
    fn syn_frames_keep_their_header_block() {
        let syn = Frame::SynStream {
            stream_id: 1,
            flags: 0,
            block: Bytes::from_static(b"zz"),
        };
        let wire = encode(syn.clone());
        assert_eq!(&wire[..8], &[0x80, 3, 0, 1, 0, 0, 0, 12]);
        assert_eq!(decode(&wire), syn);
        let reply = Frame::SynReply {
            stream_id: 2,
            flags: 0,
            block: Bytes::from_static(b"y"),
        };
        assert_eq!(decode(&encode(reply.clone())), reply);
    }

    #[test]
    fn partial_and_unknown_frames() {
        let ping = [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0];
        let mut buf = BytesMut::from(&ping[..]);
        assert!(SpdyCodec.decode(&mut buf).unwrap().is_none());
        // WINDOW_UPDATE and SETTINGS are read and left alone.
        let window = [0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 1, 0];
        assert_eq!(decode(&window), Frame::Ignored(9));
        let huge = [0, 0, 0, 1, 0, 0xff, 0xff, 0xff];
        let mut buf = BytesMut::from(&huge[..]);
        assert!(matches!(
            SpdyCodec.decode(&mut buf),
            Err(FrameError::TooLarge(_))
        ));
        let v2 = [0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1];
        let mut buf = BytesMut::from(&v2[..]);
        assert!(matches!(
            SpdyCodec.decode(&mut buf),
            Err(FrameError::Version(2))
        ));
        let short = [0x80, 3, 0, 3, 0, 0, 0, 2, 0, 0];
        let mut buf = BytesMut::from(&short[..]);
        assert!(matches!(
            SpdyCodec.decode(&mut buf),
            Err(FrameError::Short { .. })
        ));
    }
}
