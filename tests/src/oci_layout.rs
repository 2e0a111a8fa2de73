//! An OCI image layout holding a busybox-static image, built from the host's `/bin/busybox`:
//! what a CRI image reference names until registry pulls land.
//!
//! One tar+gzip layer: `bin/busybox` with applet symlinks, `etc/passwd` (root, `nobody`
//! 65534, `app` 1000:1000), `etc/group`, `tmp` (1777) and empty `proc`, `sys`, `dev`, `root`.
//! The config has no Entrypoint, Cmd `["sh"]`, a PATH, WorkingDir `/`.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::rootfs::BUSYBOX;

/// Applets linked to `bin/busybox` in the image.
pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "ls", "ps", "kill", "id", "env", "hostname", "head", "dd", "yes",
    "wc", "grep", "true", "false", "mount",
];

/// The annotation that tags a manifest in `index.json`.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
    app:x:1000:1000:app:/tmp:/bin/sh\n\
    nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n";

/// Writes a busybox image into the layout at `dir` (created if missing; an image already
/// tagged `tag` there is replaced, other tags are kept) and returns its reference,
/// `<absolute dir>:<tag>`.
pub fn busybox_layout(dir: &Path, tag: &str) -> io::Result<String> {
    fs::create_dir_all(dir.join("blobs/sha256"))?;
    let dir = dir.canonicalize()?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;

    let tar = busybox_tar()?;
    let diff_id = format!("sha256:{}", sha256_hex(&tar));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar)?;
    let layer = write_blob(
        &dir,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &gz.finish()?,
    )?;
    let config = json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": goarch(),
        "os": "linux",
        "config": {
            "Entrypoint": null,
            "Cmd": ["sh"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "vessel-tests busybox_layout"}],
    });
    let config = write_blob(
        &dir,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&config)?,
    )?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer],
    });
    let mut manifest = write_blob(
        &dir,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest)?,
    )?;
    manifest["annotations"] = json!({ REF_NAME: tag });
    manifest["platform"] = json!({"architecture": goarch(), "os": "linux"});

    let index_path = dir.join("index.json");
    let mut index: Value = match fs::read(&index_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []})
        }
        Err(e) => return Err(e),
    };
    let manifests = index["manifests"]
        .as_array_mut()
        .ok_or_else(|| io::Error::other(format!("{} has no manifests", index_path.display())))?;
    manifests.retain(|m| m["annotations"][REF_NAME] != tag);
    manifests.push(manifest);
    fs::write(&index_path, serde_json::to_vec_pretty(&index)?)?;
    Ok(format!("{}:{tag}", dir.display()))
}

/// The uncompressed layer.
fn busybox_tar() -> io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("root", 0o700),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, path, io::empty())?;
    }
    let busybox = fs::read(BUSYBOX)?;
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    tar.append_data(&mut h, "bin/busybox", busybox.as_slice())?;
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    for (path, content) in [("etc/passwd", PASSWD), ("etc/group", GROUP)] {
        let mut h = header(tar::EntryType::Regular, 0o644, content.len() as u64);
        tar.append_data(&mut h, path, content.as_bytes())?;
    }
    tar.into_inner()
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_704_067_200); // 2024-01-01
    h.set_size(size);
    h
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Stores a blob; returns its descriptor.
fn write_blob(dir: &Path, media_type: &str, bytes: &[u8]) -> io::Result<Value> {
    let hex = sha256_hex(bytes);
    fs::write(dir.join("blobs/sha256").join(&hex), bytes)?;
    Ok(json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()}))
}

/// This machine's architecture as image platforms (GOARCH) name it.
fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use vessel_shim::image::{mount_rootfs, open_layout, unmount_rootfs};

    use super::*;

    #[test]
    fn busybox_layout_opens_mounts_and_runs() {
        if !Path::new(BUSYBOX).is_file() {
            println!("SKIPPED busybox_layout_opens_mounts_and_runs: {BUSYBOX} missing");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let first = busybox_layout(&layout, "1").unwrap();
        let reference = busybox_layout(&layout, "latest").unwrap();
        busybox_layout(&layout, "latest").unwrap(); // re-tagging replaces, never duplicates
        assert_eq!(reference, format!("{}:latest", layout.display()));

        let cache = tmp.path().join("layers");
        let image = open_layout(&reference, &cache).unwrap();
        assert_eq!(image.id, open_layout(&first, &cache).unwrap().id);
        assert_eq!(image.defaults.cmd, ["sh"]);
        assert!(image.defaults.entrypoint.is_empty());
        assert_eq!(image.defaults.working_dir, "/");
        assert_eq!(image.layers.len(), 1);
        let passwd = fs::read_to_string(image.layers[0].join("etc/passwd")).unwrap();
        assert!(passwd.contains("nobody:x:65534:"), "{passwd}");
        assert!(passwd.contains("app:x:1000:1000:"), "{passwd}");

        if !nix::unistd::Uid::effective().is_root() {
            println!("SKIPPED busybox_layout_opens_mounts_and_runs (mount, chroot): needs root");
            return;
        }
        let rootfs = tmp.path().join("rootfs");
        mount_rootfs(&image.layers, &tmp.path().join("scratch"), &rootfs).unwrap();
        let out = Command::new("chroot")
            .arg(&rootfs)
            .args([
                "/bin/sh",
                "-c",
                "echo hi > /tmp/x && cat /tmp/x && id -u app",
            ])
            .output();
        unmount_rootfs(&rootfs).unwrap();
        let out = out.unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n1000\n");
    }
}
