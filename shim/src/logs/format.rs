//! The CRI log line format kubelet and `crictl logs` read:
//! `<RFC3339Nano timestamp> <stdout|stderr> <F|P> <content>\n`.
//!
//! Output is cut at newlines; a line longer than [`MAX_LINE`] is written as `P` (partial)
//! pieces followed by an `F` (full) piece. Every line has the space after the tag, even when the
//! content is empty.

use chrono::{DateTime, SecondsFormat, Utc};

/// Longest content of one log line; longer lines are split (containerd's default, 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Turns a byte stream into CRI log lines, holding an unfinished line between chunks.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    /// Adds output; appends finished lines (formatted at `now`) to `out`.
    pub fn push(&mut self, data: &[u8], now: DateTime<Utc>, out: &mut Vec<u8>) {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(rel) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + rel;
            self.emit_full(start, end, now, out);
            start = end + 1;
        }
        let start = self.emit_partials(start, self.pending.len(), now, out);
        self.pending.drain(..start);
    }

    /// At end of stream: writes an unfinished last line as full.
    pub fn finish(&mut self, now: DateTime<Utc>, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            let len = self.pending.len();
            self.emit_full(0, len, now, out);
            self.pending.clear();
        }
    }

    /// A complete line `pending[start..end]`, split into P pieces when too long.
    fn emit_full(&self, start: usize, end: usize, now: DateTime<Utc>, out: &mut Vec<u8>) {
        let start = self.emit_partials(start, end, now, out);
        write_line(self.stream, b'F', &self.pending[start..end], now, out);
    }

    /// Writes `pending[start..end]` as P pieces while more than [`MAX_LINE`] bytes remain;
    /// returns where the rest starts.
    fn emit_partials(
        &self,
        mut start: usize,
        end: usize,
        now: DateTime<Utc>,
        out: &mut Vec<u8>,
    ) -> usize {
        while end - start > MAX_LINE {
            let piece = &self.pending[start..start + MAX_LINE];
            write_line(self.stream, b'P', piece, now, out);
            start += MAX_LINE;
        }
        start
    }
}

fn write_line(stream: Stream, tag: u8, content: &[u8], now: DateTime<Utc>, out: &mut Vec<u8>) {
    out.extend_from_slice(now.to_rfc3339_opts(SecondsFormat::Nanos, true).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.push(b' ');
    out.push(tag);
    out.push(b' ');
    out.extend_from_slice(content);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(out: &[u8]) -> Vec<(String, String, String)> {
        String::from_utf8_lossy(out)
            .lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let ts = parts.next().unwrap();
                assert!(DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
                (
                    parts.next().unwrap().to_string(),
                    parts.next().unwrap().to_string(),
                    parts.next().expect("space after tag").to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn lines_across_chunks_and_empty_lines() {
        let mut s = LineSplitter::new(Stream::Stdout);
        let mut out = Vec::new();
        let now = Utc::now();
        s.push(b"hel", now, &mut out);
        assert!(out.is_empty());
        s.push(b"lo\n\nwor", now, &mut out);
        s.finish(now, &mut out);
        let l = lines(&out);
        assert_eq!(
            l,
            vec![
                ("stdout".into(), "F".into(), "hello".into()),
                ("stdout".into(), "F".into(), "".into()),
                ("stdout".into(), "F".into(), "wor".into()),
            ]
        );
        assert!(String::from_utf8_lossy(&out).contains(" stdout F \n"));
    }

    #[test]
    fn long_lines_split_as_partial_then_full() {
        let mut s = LineSplitter::new(Stream::Stderr);
        let mut out = Vec::new();
        let now = Utc::now();
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        // Delivered in odd pieces, without a newline until the end.
        for piece in long.chunks(1000) {
            s.push(piece, now, &mut out);
        }
        s.push(b"\n", now, &mut out);
        let l = lines(&out);
        let tags: Vec<&str> = l.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(tags, ["P", "P", "F"]);
        assert_eq!(l[0].2.len(), MAX_LINE);
        assert_eq!(l[2].2.len(), 10);
        assert!(l.iter().all(|x| x.0 == "stderr"));
        let joined: usize = l.iter().map(|x| x.2.len()).sum();
        assert_eq!(joined, long.len());
    }
}
