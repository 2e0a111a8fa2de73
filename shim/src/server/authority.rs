//! Accepts CRI clients that send the Unix socket *path* as HTTP/2 `:authority`.
//!
//! grpc-go before Kubernetes 1.30 (kubelet, crictl ≤ 1.29) and grpc-java put the socket path in
//! `:authority`; h2, under tonic, rejects such a request with RST_STREAM PROTOCOL_ERROR
//! (hyperium/h2#487). This adapter sits between the accepted socket and tonic and rewrites the
//! client → server byte stream: every HEADERS block (with its CONTINUATIONs) is HPACK-decoded
//! with the client's dynamic table, an `:authority` that is not a valid URI authority becomes
//! `localhost`, and the block is re-encoded with literals only (never touching the dynamic
//! table, so h2's decoder state stays trivially in step). All other frames pass unchanged.
//!
//! Written here because no crate offers such a proxy; HPACK decoding is `loona-hpack`'s.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use loona_hpack::encoder::encode_integer_into;
use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE's initial value, which the server never lowers.
const MAX_FRAME: usize = 16_384;
/// The value a rejected `:authority` is replaced with.
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// Rewrites the client → server stream of one HTTP/2 connection.
pub struct AuthorityRewriter {
    decoder: Decoder<'static>,
    input: Vec<u8>,
    preface_done: bool,
    /// A HEADERS frame waiting for its CONTINUATIONs: (stream id, END_STREAM, block so far).
    pending: Option<(u32, bool, Vec<u8>)>,
    /// Set after a framing or HPACK error: bytes then pass unchanged, and h2 reports the error.
    passthrough: bool,
}

impl Default for AuthorityRewriter {
    fn default() -> Self {
        Self {
            decoder: Decoder::new(),
            input: Vec::new(),
            preface_done: false,
            pending: None,
            passthrough: false,
        }
    }
}

impl AuthorityRewriter {
    /// Consumes client bytes; appends what the server should see to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.input.extend_from_slice(bytes);
        if self.passthrough {
            out.append(&mut self.input);
            return;
        }
        if !self.preface_done {
            let n = self.input.len().min(PREFACE.len());
            if self.input[..n] != PREFACE[..n] {
                self.passthrough = true;
                out.append(&mut self.input);
                return;
            }
            if n < PREFACE.len() {
                return;
            }
            out.extend(self.input.drain(..PREFACE.len()));
            self.preface_done = true;
        }
        while self.input.len() >= FRAME_HEADER_LEN {
            let len = u32::from_be_bytes([0, self.input[0], self.input[1], self.input[2]]) as usize;
            if self.input.len() < FRAME_HEADER_LEN + len {
                return;
            }
            let frame: Vec<u8> = self.input.drain(..FRAME_HEADER_LEN + len).collect();
            if let Err(frame) = self.frame(frame, out) {
                self.passthrough = true;
                out.extend_from_slice(&frame);
                out.append(&mut self.input);
                return;
            }
        }
    }

    /// Handles one whole frame; gives it back unchanged if it cannot be understood.
    fn frame(&mut self, frame: Vec<u8>, out: &mut Vec<u8>) -> Result<(), Vec<u8>> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER_LEN..];
        match (kind, self.pending.take()) {
            (TYPE_HEADERS, None) => {
                let Some(fragment) = headers_fragment(flags, payload) else {
                    return Err(frame);
                };
                let end_stream = flags & FLAG_END_STREAM != 0;
                if flags & FLAG_END_HEADERS != 0 {
                    self.emit(stream, end_stream, fragment, out)
                        .map_err(|()| frame)
                } else {
                    self.pending = Some((stream, end_stream, fragment.to_vec()));
                    Ok(())
                }
            }
            (TYPE_CONTINUATION, Some((id, end_stream, mut block))) if id == stream => {
                block.extend_from_slice(payload);
                if flags & FLAG_END_HEADERS != 0 {
                    self.emit(stream, end_stream, &block, out)
                        .map_err(|()| frame)
                } else {
                    self.pending = Some((id, end_stream, block));
                    Ok(())
                }
            }
            (TYPE_HEADERS | TYPE_CONTINUATION, _) => Err(frame),
            (_, Some(_)) => Err(frame),
            (_, None) => {
                out.extend_from_slice(&frame);
                Ok(())
            }
        }
    }

    /// Decodes a complete header block, fixes `:authority`, writes HEADERS (+CONTINUATION).
    fn emit(
        &mut self,
        stream: u32,
        end_stream: bool,
        block: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ()> {
        let mut encoded = Vec::with_capacity(block.len() + 32);
        let mut failed = false;
        self.decoder
            .decode_with_cb(block, |name, value| {
                let value: &[u8] = if &*name == b":authority" && !valid_authority(&value) {
                    REPLACEMENT_AUTHORITY
                } else {
                    &value
                };
                failed |= encode_literal(&name, value, &mut encoded).is_err();
            })
            .map_err(|_| ())?;
        if failed {
            return Err(());
        }
        let mut chunks = encoded.chunks(MAX_FRAME);
        let mut kind = TYPE_HEADERS;
        // An empty block still needs its one HEADERS frame.
        let empty: &[u8] = &[];
        let first = chunks.next().unwrap_or(empty);
        let mut current = Some(first);
        while let Some(chunk) = current {
            let next = chunks.next();
            let mut flags = if next.is_none() { FLAG_END_HEADERS } else { 0 };
            if kind == TYPE_HEADERS && end_stream {
                flags |= FLAG_END_STREAM;
            }
            write_frame_header(out, chunk.len(), kind, flags, stream);
            out.extend_from_slice(chunk);
            kind = TYPE_CONTINUATION;
            current = next;
        }
        Ok(())
    }
}

/// The header block fragment of a HEADERS payload (padding and priority removed).
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut start = 0;
    let mut end = payload.len();
    if flags & FLAG_PADDED != 0 {
        let pad = *payload.first()? as usize;
        start = 1;
        end = end.checked_sub(pad)?;
    }
    if flags & FLAG_PRIORITY != 0 {
        start += 5;
    }
    payload.get(start..end)
}

fn valid_authority(value: &[u8]) -> bool {
    !value.is_empty() && http::uri::Authority::try_from(value).is_ok()
}

/// "Literal Header Field without Indexing — New Name" (RFC 7541 §6.2.2), no Huffman coding.
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    out.push(0x00);
    for s in [name, value] {
        encode_integer_into(s.len(), 7, 0, out)?;
        out.extend_from_slice(s);
    }
    Ok(())
}

fn write_frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// A server-side connection whose incoming bytes pass through an [`AuthorityRewriter`].
pub struct AuthorityFixStream<S> {
    inner: S,
    rewriter: AuthorityRewriter,
    ready: Vec<u8>,
    ready_pos: usize,
}

impl<S> AuthorityFixStream<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: AuthorityRewriter::default(),
            ready: Vec::new(),
            ready_pos: 0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFixStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_pos < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_pos);
                buf.put_slice(&this.ready[this.ready_pos..this.ready_pos + n]);
                this.ready_pos += n;
                return Poll::Ready(Ok(()));
            }
            this.ready.clear();
            this.ready_pos = 0;
            let mut raw = [0u8; 16 * 1024];
            let mut raw_buf = ReadBuf::new(&mut raw);
            match Pin::new(&mut this.inner).poll_read(cx, &mut raw_buf) {
                Poll::Ready(Ok(())) => {
                    let filled = raw_buf.filled();
                    if filled.is_empty() {
                        // EOF: whatever is still buffered (an incomplete frame) goes through.
                        this.rewriter.passthrough = true;
                        this.rewriter.feed(&[], &mut this.ready);
                        if this.ready.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    this.rewriter.feed(filled, &mut this.ready);
                }
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFixStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::Encoder;

    fn headers_frame(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        write_frame_header(&mut f, block.len(), TYPE_HEADERS, flags, stream);
        f.extend_from_slice(block);
        f
    }

    /// Decodes every HEADERS block of a rewritten stream with a fresh decoder.
    fn decoded_blocks(mut bytes: &[u8]) -> Vec<Vec<(String, String)>> {
        assert!(bytes.starts_with(PREFACE));
        bytes = &bytes[PREFACE.len()..];
        let mut dec = Decoder::new();
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let (kind, flags) = (bytes[3], bytes[4]);
            let payload = &bytes[9..9 + len];
            if kind == TYPE_HEADERS || kind == TYPE_CONTINUATION {
                block.extend_from_slice(payload);
                if flags & FLAG_END_HEADERS != 0 {
                    let h = dec.decode(&block).unwrap();
                    blocks.push(
                        h.into_iter()
                            .map(|(n, v)| {
                                (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                            })
                            .collect(),
                    );
                    block.clear();
                }
            }
            bytes = &bytes[9 + len..];
        }
        blocks
    }

    fn request(path: &str) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", path.as_bytes().to_vec()),
            (b":authority", b"/run/vessel/vessel.sock".to_vec()),
            (b"content-type", b"application/grpc".to_vec()),
        ]
    }

    fn encode(enc: &mut Encoder<'_>, headers: &[(&'static [u8], Vec<u8>)]) -> Vec<u8> {
        enc.encode(headers.iter().map(|(n, v)| (*n, v.as_slice())))
    }

    #[test]
    fn socket_path_authority_is_replaced_across_dynamic_table_use() {
        let mut enc = Encoder::new();
        let mut input = PREFACE.to_vec();
        // SETTINGS frame passes through untouched.
        input.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let b1 = encode(&mut enc, &request("/runtime.v1.RuntimeService/Version"));
        input.extend(headers_frame(1, FLAG_END_HEADERS, &b1));
        // The second request reuses dynamic-table entries of the first.
        let b2 = encode(&mut enc, &request("/runtime.v1.RuntimeService/Status"));
        assert!(b2.len() < b1.len());
        input.extend(headers_frame(3, FLAG_END_HEADERS | FLAG_END_STREAM, &b2));

        // Byte-at-a-time delivery must give the same result.
        let mut rw = AuthorityRewriter::default();
        let mut out = Vec::new();
        for b in &input {
            rw.feed(std::slice::from_ref(b), &mut out);
        }
        assert_eq!(
            &out[PREFACE.len()..PREFACE.len() + 9],
            &[0, 0, 0, 4, 0, 0, 0, 0, 0]
        );
        let blocks = decoded_blocks(&out);
        assert_eq!(blocks.len(), 2);
        for (block, path) in blocks.iter().zip(["Version", "Status"]) {
            assert!(
                block.contains(&(":authority".into(), "localhost".into())),
                "{block:?}"
            );
            assert!(block.contains(&(":path".into(), format!("/runtime.v1.RuntimeService/{path}"))));
            assert!(block.contains(&("content-type".into(), "application/grpc".into())));
        }
    }

    #[test]
    fn continuation_padding_and_valid_authority() {
        let mut enc = Encoder::new();
        let headers = vec![
            (&b":method"[..], b"POST".to_vec()),
            (&b":authority"[..], b"localhost:1234".to_vec()),
            (&b"x-big"[..], vec![b'a'; 20_000]),
        ];
        let block = encode(&mut enc, &headers);
        let mut input = PREFACE.to_vec();
        // HEADERS, padded and with priority, carrying the first 100 bytes.
        let mut payload = vec![3u8];
        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
        payload.extend_from_slice(&block[..100]);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut f = Vec::new();
        write_frame_header(
            &mut f,
            payload.len(),
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY,
            5,
        );
        f.extend_from_slice(&payload);
        input.extend(f);
        let mut c = Vec::new();
        write_frame_header(
            &mut c,
            block.len() - 100,
            TYPE_CONTINUATION,
            FLAG_END_HEADERS,
            5,
        );
        c.extend_from_slice(&block[100..]);
        input.extend(c);

        let mut rw = AuthorityRewriter::default();
        let mut out = Vec::new();
        rw.feed(&input, &mut out);
        let blocks = decoded_blocks(&out);
        assert_eq!(blocks.len(), 1);
        assert!(blocks[0].contains(&(":authority".into(), "localhost:1234".into())));
        assert_eq!(blocks[0][2].1.len(), 20_000);
    }

    #[test]
    fn not_http2_passes_through() {
        let mut rw = AuthorityRewriter::default();
        let mut out = Vec::new();
        rw.feed(b"GET / HTTP/1.1\r\n\r\n", &mut out);
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
    }
}
