//! Test helper: builds layer tarballs, including malformed and hostile ones, so the image
//! module's tests need no registry and no other crate's fixtures.

use std::io::Write;

use tar::{EntryType, Header};

use super::Compression;

/// One entry of a test layer. Its path is written into the header unchecked, so tests can
/// build entries that a well-behaved archiver never would.
pub(crate) struct TarEntry {
    path: String,
    kind: EntryType,
    data: Vec<u8>,
    mode: u32,
    owner: (u64, u64),
    link: Option<String>,
    device: (u32, u32),
    xattrs: Vec<(String, Vec<u8>)>,
}

impl TarEntry {
    fn new(path: &str, kind: EntryType, mode: u32) -> Self {
        Self {
            path: path.into(),
            kind,
            data: Vec::new(),
            mode,
            owner: (0, 0),
            link: None,
            device: (0, 0),
            xattrs: Vec::new(),
        }
    }

    pub(crate) fn file(path: &str, data: &[u8], mode: u32) -> Self {
        Self {
            data: data.to_vec(),
            ..Self::new(path, EntryType::Regular, mode)
        }
    }

    pub(crate) fn dir(path: &str, mode: u32) -> Self {
        Self::new(path, EntryType::Directory, mode)
    }

    pub(crate) fn symlink(path: &str, target: &str) -> Self {
        Self {
            link: Some(target.into()),
            ..Self::new(path, EntryType::Symlink, 0o777)
        }
    }

    pub(crate) fn hardlink(path: &str, target: &str) -> Self {
        Self {
            link: Some(target.into()),
            ..Self::new(path, EntryType::Link, 0o644)
        }
    }

    pub(crate) fn char_device(path: &str, major: u32, minor: u32) -> Self {
        Self {
            device: (major, minor),
            ..Self::new(path, EntryType::Char, 0o666)
        }
    }

    pub(crate) fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.owner = (uid, gid);
        self
    }

    pub(crate) fn xattr(mut self, name: &str, value: &[u8]) -> Self {
        self.xattrs.push((name.into(), value.to_vec()));
        self
    }
}

/// A layer blob holding `entries`, compressed as asked.
pub(crate) fn tar_layer(entries: &[TarEntry], compression: Compression) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        if !e.xattrs.is_empty() {
            let mut records = Vec::new();
            for (name, value) in &e.xattrs {
                pax_record(&mut records, &format!("SCHILY.xattr.{name}"), value);
            }
            let mut pax = Header::new_ustar();
            pax.set_entry_type(EntryType::XHeader);
            raw_name(&mut pax, "PaxHeader");
            pax.set_size(records.len() as u64);
            pax.set_mode(0o644);
            pax.set_cksum();
            builder.append(&pax, records.as_slice()).unwrap();
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(e.kind);
        raw_name(&mut h, &e.path);
        h.set_mode(e.mode);
        h.set_uid(e.owner.0);
        h.set_gid(e.owner.1);
        h.set_mtime(1_700_000_000);
        h.set_size(e.data.len() as u64);
        if let Some(link) = &e.link {
            h.set_link_name(link).unwrap();
        }
        if e.kind == EntryType::Char {
            h.set_device_major(e.device.0).unwrap();
            h.set_device_minor(e.device.1).unwrap();
        }
        h.set_cksum();
        builder.append(&h, e.data.as_slice()).unwrap();
    }
    compress(&builder.into_inner().unwrap(), compression)
}

fn raw_name(h: &mut Header, path: &str) {
    let name = &mut h.as_old_mut().name;
    name.fill(0);
    name[..path.len()].copy_from_slice(path.as_bytes());
}

fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    // "<len> <key>=<value>\n", where len counts the whole record, its own digits included.
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    write!(out, "{len} {key}=").unwrap();
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn compress(tar: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar).unwrap();
            gz.finish().unwrap()
        }
        Compression::Zstd => zstd::stream::encode_all(tar, 1).unwrap(),
    }
}
