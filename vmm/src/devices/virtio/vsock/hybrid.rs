//! The host side of hybrid vsock: the line a host client sends on the Unix socket to reach a
//! guest port (`CONNECT <port>\n`) and the device's answer (`OK <host port>\n`). The grammar
//! is strict: the word `CONNECT`, one space, a decimal port without sign or leading zeros
//! that fits in 32 bits, a newline; at most [`MAX_LINE`] bytes. Anything else ends the
//! connection.

/// Longest handshake line accepted, newline included.
pub const MAX_LINE: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("handshake line {0:?} is not `CONNECT <port>`")]
    Malformed(String),
}

/// Parses one complete handshake line (with its newline); returns the guest port.
pub fn parse_connect(line: &[u8]) -> Result<u32, HandshakeError> {
    if line.len() > MAX_LINE {
        return Err(HandshakeError::TooLong);
    }
    let malformed = || HandshakeError::Malformed(String::from_utf8_lossy(line).into_owned());
    let port = line
        .strip_prefix(b"CONNECT ")
        .and_then(|rest| rest.strip_suffix(b"\n"))
        .ok_or_else(malformed)?;
    let digits_only = !port.is_empty() && port.iter().all(u8::is_ascii_digit);
    let no_leading_zero = port == b"0" || port.first() != Some(&b'0');
    if !digits_only || !no_leading_zero {
        return Err(malformed());
    }
    std::str::from_utf8(port)
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .ok_or_else(malformed)
}

/// The answer once the guest accepted: the host-side port of the connection.
pub fn ok_line(host_port: u32) -> String {
    format!("OK {host_port}\n")
}

/// Collects a handshake line from reads of any size (a client may send it in pieces).
#[derive(Debug, Default)]
pub struct LineReader {
    buf: Vec<u8>,
}

impl LineReader {
    /// Adds `bytes`; returns the port once a whole line arrived, `Ok(None)` while it is
    /// incomplete. Bytes after the newline (a client writing data early) are kept in
    /// [`LineReader::rest`].
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<u32>, HandshakeError> {
        self.buf.extend_from_slice(bytes);
        let Some(end) = self.buf.iter().position(|b| *b == b'\n') else {
            return if self.buf.len() >= MAX_LINE {
                Err(HandshakeError::TooLong)
            } else {
                Ok(None)
            };
        };
        let port = parse_connect(&self.buf[..=end])?;
        self.buf.drain(..=end);
        Ok(Some(port))
    }

    /// What came after the handshake line.
    pub fn rest(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_exactly_the_grammar() {
        assert_eq!(parse_connect(b"CONNECT 1024\n"), Ok(1024));
        assert_eq!(parse_connect(b"CONNECT 0\n"), Ok(0));
        assert_eq!(parse_connect(b"CONNECT 4294967295\n"), Ok(u32::MAX));
        assert_eq!(ok_line(1073741824), "OK 1073741824\n");
    }

    #[test]
    fn malformed_lines_are_refused() {
        for bad in [
            &b"CONNECT 1024"[..],    // no newline
            b"connect 1024\n",       // case
            b"CONNECT  1024\n",      // two spaces
            b"CONNECT\t1024\n",      // tab
            b"CONNECT +1024\n",      // sign
            b"CONNECT 01024\n",      // leading zero
            b"CONNECT 4294967296\n", // over 32 bits
            b"CONNECT \n",           // no port
            b"CONNECT 10 24\n",      // two numbers
            b"CONNECT 1024\r\n",     // CRLF
            b"CONNECT 1024\n\n",     // trailing bytes
            b"\xffCONNECT 1\n",      // not ASCII
        ] {
            assert!(
                matches!(parse_connect(bad), Err(HandshakeError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("CONNECT {}\n", "1".repeat(40));
        assert_eq!(parse_connect(long.as_bytes()), Err(HandshakeError::TooLong));
    }

    #[test]
    fn lines_arrive_in_pieces_and_early_data_is_kept() {
        let mut reader = LineReader::default();
        assert_eq!(reader.push(b"CONN"), Ok(None));
        assert_eq!(reader.push(b"ECT 52"), Ok(None));
        assert_eq!(reader.push(b"\nhello"), Ok(Some(52)));
        assert_eq!(reader.rest(), b"hello");
        // A line that never ends is cut off at the limit.
        let mut reader = LineReader::default();
        assert_eq!(reader.push(&[b'C'; MAX_LINE]), Err(HandshakeError::TooLong));
        let mut reader = LineReader::default();
        assert!(matches!(
            reader.push(b"GET / HTTP/1.1\n"),
            Err(HandshakeError::Malformed(_))
        ));
    }
}
