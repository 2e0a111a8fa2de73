//! Finds what a pod VM could leave behind on the host: processes whose command line names its
//! runtime dir, mounts below it, and the dir itself.

use std::path::Path;

/// Every leftover of the pod whose runtime dir is `run_dir`, as readable lines.
pub fn leftovers(run_dir: &Path) -> Vec<String> {
    let needle = run_dir.display().to_string();
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) {
                found.push(format!("process {pid}: {cmdline}"));
            }
        }
    }
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in info.lines() {
            if line
                .split(' ')
                .nth(4)
                .is_some_and(|m| m.starts_with(&needle))
            {
                found.push(format!("mount: {line}"));
            }
        }
    }
    if run_dir.exists() {
        found.push(format!("directory {needle} still exists"));
    }
    found
}
