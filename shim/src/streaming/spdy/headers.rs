//! SPDY/3 header blocks: a count, then length-prefixed lowercase names and values (a value
//! holding several joins them with NUL), compressed with zlib primed with SPDY/3's
//! dictionary. Each direction of a connection is one zlib stream that every header block
//! continues, ended with a sync flush, so blocks must be inflated and deflated in wire order.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};

/// The SPDY/3 header compression dictionary (1423 bytes, Adler-32 0xe3c6a7c2).
const DICTIONARY: &[u8; 1423] = include_bytes!("dictionary.bin");
/// The most bytes one inflated header block may take (a client cannot make the shim hold
/// more).
const MAX_BLOCK: usize = 64 * 1024;
/// The most header pairs one block may name.
const MAX_PAIRS: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("spdy headers: zlib: {0}")]
    Zlib(String),
    #[error("spdy headers: block larger than {MAX_BLOCK} bytes")]
    TooLarge,
    #[error("spdy headers: malformed block: {0}")]
    Malformed(&'static str),
}

/// A stream's headers: lowercase names, one entry per value.
pub type Headers = Vec<(String, String)>;

/// The deflate side: header blocks this server sends.
pub struct Deflater {
    z: Compress,
}

impl Deflater {
    pub fn new() -> Result<Self, HeaderError> {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(DICTIONARY)
            .map_err(|e| HeaderError::Zlib(e.to_string()))?;
        Ok(Deflater { z })
    }

    /// The compressed block of `headers` (names are sent lowercase).
    pub fn block(&mut self, headers: &[(&str, &str)]) -> Result<Bytes, HeaderError> {
        let mut raw = BytesMut::new();
        raw.put_u32(headers.len() as u32);
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            raw.put_u32(name.len() as u32);
            raw.put_slice(name.as_bytes());
            raw.put_u32(value.len() as u32);
            raw.put_slice(value.as_bytes());
        }
        let mut input = &raw[..];
        let mut out = Vec::with_capacity(raw.len() + 64);
        loop {
            let before = self.z.total_in();
            self.z
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| HeaderError::Zlib(e.to_string()))?;
            input = &input[(self.z.total_in() - before) as usize..];
            // Done once all input is in and the flush did not fill the buffer.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out.into());
            }
            out.reserve(256);
        }
    }
}

/// The inflate side: header blocks the client sends.
pub struct Inflater {
    z: Decompress,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            z: Decompress::new(true),
        }
    }
}

impl Inflater {
    /// The headers of one compressed block.
    pub fn block(&mut self, compressed: &[u8]) -> Result<Headers, HeaderError> {
        let mut input = compressed;
        let mut out = Vec::with_capacity(1024);
        loop {
            let (in_before, out_before) = (self.z.total_in(), self.z.total_out());
            let mut primed = false;
            match self
                .z
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| HeaderError::Zlib(e.to_string()))?;
                    primed = true;
                }
                Err(e) => return Err(HeaderError::Zlib(e.to_string())),
            }
            input = &input[(self.z.total_in() - in_before) as usize..];
            let produced = self.z.total_out() - out_before;
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if out.len() >= MAX_BLOCK {
                return Err(HeaderError::TooLarge);
            }
            if out.len() == out.capacity() {
                out.reserve(out.len());
            } else if produced == 0 && !primed && !input.is_empty() {
                return Err(HeaderError::Zlib("inflate made no progress".into()));
            }
        }
        parse(&out)
    }
}

fn parse(mut block: &[u8]) -> Result<Headers, HeaderError> {
    fn take<'a>(block: &mut &'a [u8]) -> Result<&'a [u8], HeaderError> {
        if block.remaining() < 4 {
            return Err(HeaderError::Malformed("truncated length"));
        }
        let len = block.get_u32() as usize;
        if block.remaining() < len {
            return Err(HeaderError::Malformed("truncated string"));
        }
        let (s, rest) = block.split_at(len);
        *block = rest;
        Ok(s)
    }
    if block.remaining() < 4 {
        return Err(HeaderError::Malformed("no pair count"));
    }
    let pairs = block.get_u32();
    if pairs > MAX_PAIRS {
        return Err(HeaderError::Malformed("too many pairs"));
    }
    let mut headers = Vec::new();
    for _ in 0..pairs {
        let name = String::from_utf8_lossy(take(&mut block)?).to_ascii_lowercase();
        let values = String::from_utf8_lossy(take(&mut block)?).into_owned();
        for value in values.split('\0') {
            headers.push((name.clone(), value.to_owned()));
        }
    }
    Ok(headers)
}

/// The first value of header `name` (case-insensitive).
pub fn get<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        let mut z = Compress::new(Compression::default(), true);
        assert_eq!(z.set_dictionary(DICTIONARY).unwrap(), 0xe3c6_a7c2);
    }

    #[test]
    fn blocks_round_trip_in_one_stream() {
        let mut out = Deflater::new().unwrap();
        let mut inp = Inflater::default();
        for headers in [
            vec![("streamType", "error")],
            vec![("streamtype", "data"), ("port", "8080"), ("requestid", "0")],
            vec![],
        ] {
            let block = out.block(&headers).unwrap();
            assert!(block.ends_with(&[0, 0, 0xff, 0xff]), "sync flush");
            let got = inp.block(&block).unwrap();
            let want: Headers = headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
                .collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn reads_a_block_compressed_with_the_dictionary_elsewhere() {
        // Two empty blocks as another zlib (level 9, SPDY dictionary, sync flush) wrote them.
        let mut inp = Inflater::default();
        assert!(inp
            .block(&hex("78f9e3c6a7c202a6230600000000ffff"))
            .unwrap()
            .is_empty());
        assert!(inp.block(&hex("020100000000ffff")).unwrap().is_empty());
    }

    #[test]
    fn values_split_on_nul_and_names_are_case_blind() {
        let mut raw = BytesMut::new();
        raw.put_u32(1);
        raw.put_u32(4);
        raw.put_slice(b"Port");
        raw.put_u32(9);
        raw.put_slice(b"8080\x009090");
        let headers = parse(&raw).unwrap();
        assert_eq!(headers.len(), 2);
        assert_eq!(get(&headers, "PORT"), Some("8080"));
        assert!(parse(&[0, 0, 0, 1, 0, 0, 0, 9]).is_err(), "truncated");
        assert!(parse(&[0, 0, 1, 1]).is_err(), "too many pairs");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Inflater::default().block(b"not zlib at all").is_err());
    }
}
