//! Finds what a pod VM could leave behind on the host: processes whose command line names its
//! runtime dir, mounts below it, the dir itself and its host cgroup; and what its processes
//! cost (PSS).

use std::path::Path;

/// Pid and command line of every process whose command line names `dir`.
pub fn processes_naming(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&needle).then_some((pid, cmdline))
        })
        .collect()
}

/// After a failed test: SIGKILLs every process naming `dir` (VMs a killed daemon left
/// running) and detaches every mount below it, so deleting `dir` is safe.
pub fn kill_and_unmount(dir: &Path) {
    for (pid, _) in processes_naming(dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !processes_naming(dir).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    kill_pod_cgroups(&dir.join("state").join("pods"));
    let _ = vessel_shim::host_mounts::unmount_all_under(dir);
}

/// Kills what runs in the host cgroups, below vessel's default parent, of the pods whose run
/// dirs are below `pods`, and removes the cgroups: a failed test's native pods, whose
/// containers outlive their killed agent (a restarted daemon would remove them).
fn kill_pod_cgroups(pods: &Path) {
    let Ok(entries) = std::fs::read_dir(pods) else {
        return;
    };
    let hierarchies = vessel_shim::host_cgroup::hierarchy::mounted().unwrap_or_default();
    for pod in entries.flatten() {
        let id = pod.file_name().to_string_lossy().into_owned();
        for h in &hierarchies {
            for leaf in [
                format!("vessel/vessel-{id}"),
                format!("vessel.slice/vessel-{id}.scope"),
            ] {
                let dir = h.mount.join(leaf);
                if dir.exists() {
                    crate::cgroups::kill_and_remove_tree(&dir);
                }
            }
        }
    }
}

/// Every leftover of the pod whose runtime dir is `run_dir`, as readable lines.
pub fn leftovers(run_dir: &Path) -> Vec<String> {
    let needle = run_dir.display().to_string();
    let mut found = Vec::new();
    for (pid, cmdline) in processes_naming(run_dir) {
        found.push(format!("process {pid}: {cmdline}"));
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
    // The VM's host cgroup below vessel's default parent (pods that name none), as either
    // driver names it.
    if let Some(id) = run_dir.file_name() {
        let id = id.to_string_lossy();
        let leaves = [
            format!("vessel/vessel-{id}"),
            format!("vessel.slice/vessel-{id}.scope"),
        ];
        for h in vessel_shim::host_cgroup::hierarchy::mounted().unwrap_or_default() {
            for dir in leaves.iter().map(|leaf| h.mount.join(leaf)) {
                if dir.exists() {
                    found.push(format!("cgroup {} still exists", dir.display()));
                }
            }
        }
    }
    found
}

/// The summed PSS (KiB) of every process whose command line names `dir` (a pod VM's
/// processes, by its runtime dir).
pub fn pss_kib(dir: &Path) -> u64 {
    processes_naming(dir)
        .iter()
        .filter_map(|(pid, _)| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .filter_map(|rollup| {
            let line = rollup.lines().find(|l| l.starts_with("Pss:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}
