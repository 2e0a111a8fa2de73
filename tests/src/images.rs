//! Test images built in memory from the host's busybox-static and pushed to a registry with
//! oci-client: layers of chosen entries and compression (including hostile tar entries that
//! the tar crate's path checks would refuse), OCI or Docker schema 2 manifests, and OCI image
//! indexes or Docker manifest lists. The oci-client primitives they use (and that tests may
//! use to push hand-made manifests) are in [`crate::registry`].

use std::io::{self, Write};
use std::path::Path;

use flate2::write::GzEncoder;
use serde_json::{json, Value};

use crate::registry::{push_blobs, put_manifest, reference, registry_client};
pub use crate::registry::{sha256_digest, MANIFEST_ACCEPT};
use crate::rootfs::{APPLETS, BUSYBOX};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// `len` bytes that no compressor shrinks (xorshift64), different for each `seed`.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect()
}

const CREATED: &str = "2024-01-01T00:00:00Z";
const MTIME: u64 = 1_704_067_200; // 2024-01-01
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
    app:x:1000:1000:app:/tmp:/bin/sh\n\
    nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Layer media types by `[docker][compression]`; Docker has no zstd type, OCI's serves.
const LAYER_TYPES: [[&str; 3]; 2] = [
    [OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD],
    [DOCKER_LAYER, DOCKER_LAYER_GZIP, OCI_LAYER_ZSTD],
];

/// One tar entry, owned by root unless given. Paths of the first four kinds go through the
/// tar crate's checks (relative, no `..`; long names get GNU extensions); `Raw` writes its
/// name (at most 100 bytes) and link name bytes verbatim, for hostile entries.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
        uid: u64,
        gid: u64,
    },
    Symlink {
        path: String,
        target: String,
    },
    HardLink {
        path: String,
        target: String,
    },
    Raw {
        kind: tar::EntryType,
        name: Vec<u8>,
        link: Vec<u8>,
        data: Vec<u8>,
        mode: u32,
    },
}

impl Entry {
    pub fn dir(path: &str, mode: u32) -> Self {
        let path = path.into();
        Entry::Dir { path, mode }
    }

    pub fn file(path: &str, data: &[u8], mode: u32) -> Self {
        Self::file_owned(path, data, mode, 0, 0)
    }

    pub fn file_owned(path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let (path, data) = (path.into(), data.to_vec());
        Entry::File {
            path,
            data,
            mode,
            uid,
            gid,
        }
    }

    pub fn symlink(path: &str, target: &str) -> Self {
        let (path, target) = (path.into(), target.into());
        Entry::Symlink { path, target }
    }

    pub fn hardlink(path: &str, target: &str) -> Self {
        let (path, target) = (path.into(), target.into());
        Entry::HardLink { path, target }
    }

    /// An overlay whiteout hiding `path` of lower layers (`dir/.wh.name`).
    pub fn whiteout(path: &str) -> Self {
        let wh = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        Self::file(&wh, b"", 0o644)
    }

    /// An opaque-directory marker: lower layers' contents of `dir` are hidden.
    pub fn opaque(dir: &str) -> Self {
        Self::file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    /// A regular file named by raw bytes, e.g. `b"../evil"` or `b"/abs/evil"`.
    pub fn raw_file(name: &[u8], data: &[u8]) -> Self {
        Self::raw(tar::EntryType::Regular, name, b"", data, 0o644)
    }

    /// A symlink with raw name and target bytes, e.g. target `b"/etc/passwd"`.
    pub fn raw_symlink(name: &[u8], target: &[u8]) -> Self {
        Self::raw(tar::EntryType::Symlink, name, target, b"", 0o777)
    }

    /// A hard link with raw name and target bytes, e.g. target `b"../../x"`.
    pub fn raw_hardlink(name: &[u8], target: &[u8]) -> Self {
        Self::raw(tar::EntryType::Link, name, target, b"", 0o644)
    }

    fn raw(kind: tar::EntryType, name: &[u8], link: &[u8], data: &[u8], mode: u32) -> Self {
        let (name, link, data) = (name.to_vec(), link.to_vec(), data.to_vec());
        Entry::Raw {
            kind,
            name,
            link,
            data,
            mode,
        }
    }

    fn append_to(&self, tar: &mut tar::Builder<Vec<u8>>) -> io::Result<()> {
        use tar::EntryType as T;
        match self {
            Entry::Dir { path, mode } => {
                tar.append_data(&mut header(T::Directory, *mode, 0, 0, 0), path, io::empty())
            }
            Entry::File {
                path,
                data,
                mode,
                uid,
                gid,
            } => {
                let mut h = header(T::Regular, *mode, *uid, *gid, data.len() as u64);
                tar.append_data(&mut h, path, data.as_slice())
            }
            Entry::Symlink { path, target } => {
                tar.append_link(&mut header(T::Symlink, 0o777, 0, 0, 0), path, target)
            }
            Entry::HardLink { path, target } => {
                tar.append_link(&mut header(T::Link, 0o644, 0, 0, 0), path, target)
            }
            Entry::Raw {
                kind,
                name,
                link,
                data,
                mode,
            } => {
                let mut h = header(*kind, *mode, 0, 0, data.len() as u64);
                copy_raw(&mut h.as_old_mut().name, name)?;
                copy_raw(&mut h.as_old_mut().linkname, link)?;
                h.set_cksum();
                tar.append(&h, data.as_slice())
            }
        }
    }
}

/// Copies `bytes` into a zeroed header field, untouched.
fn copy_raw(field: &mut [u8], bytes: &[u8]) -> io::Result<()> {
    let max = field.len();
    let slot = field.get_mut(..bytes.len()).ok_or_else(|| {
        let name = String::from_utf8_lossy(bytes);
        io::Error::other(format!("raw tar name {name:?} is longer than {max} bytes"))
    })?;
    slot.copy_from_slice(bytes);
    Ok(())
}

fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(MTIME);
    h.set_size(size);
    h
}

/// A layer to build: its tar entries, in order, and the blob's compression.
#[derive(Debug, Clone)]
pub struct Layer {
    pub entries: Vec<Entry>,
    pub compression: Compression,
}

impl Layer {
    /// A gzip layer of `entries`.
    pub fn new(entries: Vec<Entry>) -> Self {
        let compression = Compression::Gzip;
        Layer {
            entries,
            compression,
        }
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> io::Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        for entry in &self.entries {
            entry.append_to(&mut tar)?;
        }
        tar.into_inner()
    }

    /// The tar, compressed, with its digests and media type.
    pub fn build(&self, docker_media_types: bool) -> io::Result<BuiltLayer> {
        let tar = self.tar()?;
        let blob = match self.compression {
            Compression::None => tar.clone(),
            Compression::Gzip => {
                let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(&tar)?;
                gz.finish()?
            }
            Compression::Zstd => zstd::encode_all(tar.as_slice(), 3)?,
        };
        Ok(BuiltLayer {
            media_type: LAYER_TYPES[usize::from(docker_media_types)][self.compression as usize],
            digest: sha256_digest(&blob),
            diff_id: sha256_digest(&tar),
            blob,
            tar,
        })
    }
}

/// The busybox base layer (gzip): `bin/busybox` and [`APPLETS`] symlinks, `etc/passwd`
/// (root, `app` 1000:1000, `nobody` 65534), `etc/group`, `tmp` (1777), `root` (0700) and
/// empty `proc`, `sys`, `dev`.
pub fn busybox_layer() -> Layer {
    let busybox = std::fs::read(BUSYBOX).unwrap_or_else(|e| panic!("reading {BUSYBOX}: {e}"));
    let dirs = [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("proc", 0o555),
    ];
    let dirs = dirs
        .into_iter()
        .chain([("sys", 0o555), ("dev", 0o755), ("root", 0o700)]);
    let mut entries: Vec<Entry> = dirs.map(|(path, mode)| Entry::dir(path, mode)).collect();
    entries.push(Entry::file("bin/busybox", &busybox, 0o755));
    entries.extend(
        APPLETS
            .iter()
            .map(|a| Entry::symlink(&format!("bin/{a}"), "busybox")),
    );
    entries.push(Entry::file("etc/passwd", PASSWD.as_bytes(), 0o644));
    entries.push(Entry::file("etc/group", GROUP.as_bytes(), 0o644));
    Layer::new(entries)
}

/// A layer holding host programs (dynamically linked) with every shared library `ldd` lists
/// for them, at their host paths: e.g. iptables for a container that sets up NAT. `None`
/// when a program is missing on this machine.
pub fn host_programs_layer(programs: &[&str], links: &[(&str, &str)]) -> Option<Layer> {
    let mut files = std::collections::BTreeSet::new();
    for program in programs {
        if !Path::new(program).is_file() {
            return None;
        }
        files.insert(program.to_string());
        let out = std::process::Command::new("ldd")
            .arg(program)
            .output()
            .ok()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
            let path = line.split("=>").last().unwrap_or(line).trim();
            if let Some(path) = path
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
            {
                files.insert(path.to_owned());
            }
        }
    }
    let mut dirs = std::collections::BTreeSet::new();
    for file in files
        .iter()
        .map(String::as_str)
        .chain(links.iter().map(|l| l.0))
    {
        let mut dir = Path::new(file.trim_start_matches('/')).parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().into_owned());
            dir = d.parent();
        }
    }
    let mut entries: Vec<Entry> = dirs.iter().map(|d| Entry::dir(d, 0o755)).collect();
    for file in &files {
        // Symlinked libraries (ld.so under /lib64) are stored as the files they point to.
        let data = std::fs::read(file).ok()?;
        entries.push(Entry::file(file.trim_start_matches('/'), &data, 0o755));
    }
    for (link, target) in links {
        entries.push(Entry::symlink(link.trim_start_matches('/'), target));
    }
    Some(Layer::new(entries))
}

/// What to build: layers bottom first, the config's `config` object (`Entrypoint`, `Cmd`,
/// `Env`, `WorkingDir`, `User`), the platform architecture (GOARCH names) and the flavour.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub layers: Vec<Layer>,
    pub config: Value,
    pub architecture: String,
    pub docker_media_types: bool,
}

impl ImageSpec {
    /// The busybox layer, Cmd `["sh"]`, a PATH, WorkingDir `/`, this host's architecture, OCI.
    pub fn busybox() -> Self {
        ImageSpec {
            layers: vec![busybox_layer()],
            config: json!({
                "Cmd": ["sh"],
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "WorkingDir": "/",
            }),
            architecture: host_arch().to_string(),
            docker_media_types: false,
        }
    }
}

/// A built layer: the blob as pushed and the tar it unpacks to.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    pub media_type: &'static str,
    pub blob: Vec<u8>,
    /// `sha256:` of `blob`.
    pub digest: String,
    /// `sha256:` of `tar`.
    pub diff_id: String,
    pub tar: Vec<u8>,
}

/// A built image: every blob plus the manifest bytes as pushed.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub config: Vec<u8>,
    pub config_digest: String,
    pub config_media_type: &'static str,
    pub layers: Vec<BuiltLayer>,
    pub manifest: Vec<u8>,
    pub digest: String,
    pub media_type: &'static str,
}

impl BuiltImage {
    /// `(digest, bytes)` of the config and each layer blob.
    pub fn blobs(&self) -> Vec<(&str, &[u8])> {
        let layers = self.layers.iter().map(|l| (&*l.digest, &*l.blob));
        std::iter::once((&*self.config_digest, &*self.config))
            .chain(layers)
            .collect()
    }
}

/// Builds the blobs and manifest of `spec` (deterministic: same spec, same digests).
pub fn build(spec: &ImageSpec) -> BuiltImage {
    let docker = spec.docker_media_types;
    let layers: Vec<BuiltLayer> = spec
        .layers
        .iter()
        .map(|l| l.build(docker).expect("building a test layer"))
        .collect();
    let diff_ids: Vec<&str> = layers.iter().map(|l| &*l.diff_id).collect();
    let history = json!({"created": CREATED, "created_by": "vessel-tests images::build"});
    let config = json!({
        "created": CREATED,
        "architecture": spec.architecture,
        "os": "linux",
        "config": spec.config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": vec![history; layers.len()],
    });
    let config = serde_json::to_vec(&config).expect("serialising an image config");
    let [media_type, config_media_type] =
        [[OCI_MANIFEST, OCI_CONFIG], [DOCKER_MANIFEST, DOCKER_CONFIG]][usize::from(docker)];
    let config_digest = sha256_digest(&config);
    let layer_descriptors: Vec<Value> = layers
        .iter()
        .map(|l| descriptor(l.media_type, &l.digest, l.blob.len()))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_media_type, &config_digest, config.len()),
        "layers": layer_descriptors,
    });
    let manifest = serde_json::to_vec(&manifest).expect("serialising a manifest");
    BuiltImage {
        digest: sha256_digest(&manifest),
        manifest,
        media_type,
        config,
        config_digest,
        config_media_type,
        layers,
    }
}

/// An OCI image index, or with `docker_list` a Docker manifest list, of `entries` (image,
/// architecture): `(bytes, digest, media type)`.
pub fn index(
    entries: &[(&BuiltImage, &str)],
    docker_list: bool,
) -> (Vec<u8>, String, &'static str) {
    let media_type = [OCI_INDEX, DOCKER_MANIFEST_LIST][usize::from(docker_list)];
    let manifests: Vec<Value> = entries
        .iter()
        .map(|(image, arch)| {
            let mut entry = descriptor(image.media_type, &image.digest, image.manifest.len());
            entry["platform"] = json!({"architecture": arch, "os": "linux"});
            entry
        })
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests});
    let bytes = serde_json::to_vec(&index).expect("serialising an image index");
    let digest = sha256_digest(&bytes);
    (bytes, digest, media_type)
}

/// Pushes `image`'s blobs (those missing) and its manifest as `repo:tag`; returns the
/// manifest digest.
pub async fn push(
    registry_host: &str,
    repo: &str,
    tag: &str,
    image: &BuiltImage,
    auth: Option<(&str, &str)>,
) -> anyhow::Result<String> {
    let client = registry_client(registry_host, auth).await?;
    let reference = reference(registry_host, repo, tag);
    push_blobs(&client, &reference, &image.blobs()).await?;
    put_manifest(&client, &reference, &image.manifest, image.media_type).await
}

/// Pushes each image (blobs, then its manifest by digest), then an index (or Docker manifest
/// list with `docker_list`) of them as `repo:tag`; returns the index digest.
pub async fn push_index(
    registry_host: &str,
    repo: &str,
    tag: &str,
    entries: &[(&BuiltImage, &str)],
    docker_list: bool,
    auth: Option<(&str, &str)>,
) -> anyhow::Result<String> {
    let client = registry_client(registry_host, auth).await?;
    for (image, _) in entries {
        let by_digest = reference(registry_host, repo, &image.digest);
        push_blobs(&client, &by_digest, &image.blobs()).await?;
        put_manifest(&client, &by_digest, &image.manifest, image.media_type).await?;
    }
    let (bytes, _, media_type) = index(entries, docker_list);
    let reference = reference(registry_host, repo, tag);
    put_manifest(&client, &reference, &bytes, media_type).await
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

/// This machine's architecture as image platforms (GOARCH) name it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
