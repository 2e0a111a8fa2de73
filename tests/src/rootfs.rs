//! Container root filesystems for tests: a busybox-static tree (one static binary plus applet
//! symlinks), which needs no image registry.

use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;

/// Debian busybox-static's binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked to busybox in test rootfs trees and images.
pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "ls", "ps", "kill", "true", "false", "id", "hostname", "env",
    "mount", "grep", "head", "dd", "yes", "wc", "stat", "test", "top", "ip", "brctl", "tunctl",
];

/// Builds a busybox rootfs at `dir` (created if missing).
pub fn busybox_rootfs(dir: &Path) -> io::Result<()> {
    for sub in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::copy(BUSYBOX, dir.join("bin/busybox"))?;
    for applet in APPLETS {
        let link = dir.join("bin").join(applet);
        if link.symlink_metadata().is_err() {
            symlink("/bin/busybox", link)?;
        }
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}

/// Writes an initramfs whose `/init` is busybox (its init applet): a guest that boots but
/// never runs the agent.
pub fn busybox_initramfs(out: &Path) -> io::Result<()> {
    let stage = tempfile::tempdir()?;
    std::fs::copy(BUSYBOX, stage.path().join("init"))?;
    let file = std::fs::File::create(out)?;
    let status = std::process::Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc"])
        .current_dir(stage.path())
        .stdin(std::process::Stdio::piped())
        .stdout(file)
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(b"init\n")?;
            }
            child.wait()
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("cpio failed: {status}")))
    }
}
