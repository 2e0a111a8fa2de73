//! The host processes of one pod VM, whichever backend runs it: the VMM and its device
//! helpers (virtiofsd, vhost-device-vsock), each logging to `<name>.log` in the pod's runtime
//! dir and started in the VM's host cgroup; adopted by name after a daemon restart, recorded
//! for the next one, and stopped VMM first, so the vhost-user backends see their frontend go
//! away.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ChildProcess, Exited, HypervisorError, ProcessId};
use crate::host_cgroup::HostCgroup;

/// A pod VM's processes, by name.
#[derive(Debug)]
pub struct VmProcesses {
    run_dir: PathBuf,
    /// The VMM's name among `running`.
    vmm: &'static str,
    /// In start order.
    running: Vec<(&'static str, ChildProcess)>,
    /// Adopted with the VMM already gone: the VM reads as exited, not as never started.
    vmm_gone: bool,
    /// The `cgroup.procs` files of the VM's host cgroup, which every process joins before it
    /// execs; empty: the daemon's own cgroup.
    cgroup_procs: Vec<CString>,
}

impl VmProcesses {
    /// No process yet; `vmm` names the one whose exit is the VM's.
    pub fn new(run_dir: &Path, vmm: &'static str) -> Self {
        Self {
            run_dir: run_dir.to_owned(),
            vmm,
            running: Vec::new(),
            vmm_gone: false,
            cgroup_procs: Vec::new(),
        }
    }

    /// Processes spawned from now on start in `cgroup`.
    pub fn in_cgroup(mut self, cgroup: Option<&HostCgroup>) -> Self {
        self.cgroup_procs = cgroup.map(HostCgroup::procs_files).unwrap_or_default();
        self
    }

    /// Takes over the processes `names` that `processes` (an earlier record) lists and that
    /// still run.
    pub fn adopt(
        run_dir: &Path,
        vmm: &'static str,
        names: &[&'static str],
        processes: &BTreeMap<String, ProcessId>,
    ) -> Self {
        let mut this = Self::new(run_dir, vmm);
        for &name in names {
            let log = this.log(name);
            if let Some(p) = processes
                .get(name)
                .and_then(|id| ChildProcess::adopt(name, *id, &log))
            {
                this.running.push((name, p));
            }
        }
        this.vmm_gone = this.find(vmm).is_none();
        this
    }

    /// The log file of the process `name`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.log"))
    }

    fn find(&self, name: &str) -> Option<&ChildProcess> {
        self.running
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p)
    }

    fn vmm_mut(&mut self) -> Option<&mut ChildProcess> {
        let vmm = self.vmm;
        self.running
            .iter_mut()
            .find(|(n, _)| *n == vmm)
            .map(|(_, p)| p)
    }

    /// Spawns `program args…` as `name`. With `socket`, waits until the process creates it
    /// (failing early, with its log's tail, if it exits). The process is kept, to be
    /// stopped with the others, even when the wait fails.
    pub async fn spawn(
        &mut self,
        name: &'static str,
        program: &Path,
        args: &[String],
        socket: Option<&Path>,
    ) -> Result<(), HypervisorError> {
        self.spawn_with_fd(name, program, args, socket, None).await
    }

    /// [`VmProcesses::spawn`], with `pass_fd` open in the process as
    /// [`super::PASSED_FD`] when one is given.
    pub async fn spawn_with_fd(
        &mut self,
        name: &'static str,
        program: &Path,
        args: &[String],
        socket: Option<&Path>,
        pass_fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), HypervisorError> {
        let log = self.log(name);
        let mut process =
            ChildProcess::spawn(name, program, args, &log, pass_fd, &self.cgroup_procs)?;
        let ready = match socket {
            Some(socket) => process.wait_for_socket(socket).await,
            None => Ok(()),
        };
        self.running.push((name, process));
        ready
    }

    /// `Some(how)` once the VMM exited.
    pub fn vmm_exit(&mut self) -> Option<Exited> {
        if self.vmm_gone {
            return Some(Exited::Unknown);
        }
        self.vmm_mut().and_then(ChildProcess::exit_status)
    }

    /// The VMM's own output.
    pub fn vmm_log(&self) -> PathBuf {
        self.log(self.vmm)
    }

    /// The VMM's pid while it runs.
    pub fn vmm_pid(&self) -> Option<u32> {
        self.find(self.vmm).and_then(ChildProcess::pid)
    }

    /// Waits up to `timeout` for the VMM to exit by itself.
    pub async fn wait_vmm_exit(&mut self, timeout: Duration) -> bool {
        match self.vmm_mut() {
            Some(vmm) => vmm.wait_timeout(timeout).await,
            None => true,
        }
    }

    /// Stops every process: the VMM first, then the helpers in reverse start order.
    pub async fn stop(&mut self) {
        if let Some(vmm) = self.vmm_mut() {
            vmm.terminate().await;
        }
        for (_, p) in self.running.iter_mut().rev() {
            p.terminate().await;
        }
    }

    /// Name → pid and start time of each process still running, for the daemon's records.
    pub fn record(&self) -> BTreeMap<String, ProcessId> {
        self.running
            .iter()
            .filter_map(|(name, p)| Some((name.to_string(), p.process_id()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn vmm_first_then_helpers_and_records_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut procs = VmProcesses::new(dir.path(), "vmm");
        let sleep = |s: &str| vec![s.to_string()];
        procs
            .spawn("helper", Path::new("/bin/sleep"), &sleep("30"), None)
            .await
            .unwrap();
        procs
            .spawn("vmm", Path::new("/bin/sleep"), &sleep("30"), None)
            .await
            .unwrap();
        let record = procs.record();
        assert_eq!(record.keys().collect::<Vec<_>>(), ["helper", "vmm"]);
        assert!(procs.vmm_exit().is_none());
        assert_eq!(procs.vmm_pid(), Some(record["vmm"].pid));

        // A second daemon adopts both; the first one's handles are dropped without a kill.
        let mut adopted = VmProcesses::adopt(dir.path(), "vmm", &["vmm", "helper"], &record);
        assert_eq!(adopted.record(), record);
        adopted.stop().await;
        assert_eq!(adopted.vmm_exit(), Some(Exited::Unknown));
        assert!(adopted.record().is_empty());
        procs.stop().await;
        assert!(matches!(procs.vmm_exit(), Some(Exited::Signal(_))));
    }

    #[tokio::test]
    async fn a_vmm_gone_at_adoption_reads_as_exited() {
        let dir = tempfile::tempdir().unwrap();
        let gone = BTreeMap::from([(
            "vmm".to_string(),
            ProcessId {
                pid: u32::MAX,
                start_time: 1,
            },
        )]);
        let mut procs = VmProcesses::adopt(dir.path(), "vmm", &["vmm"], &gone);
        assert_eq!(procs.vmm_exit(), Some(Exited::Unknown));
        assert!(procs.wait_vmm_exit(Duration::ZERO).await);
    }

    #[tokio::test]
    async fn a_helper_that_dies_before_its_socket_is_kept_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut procs = VmProcesses::new(dir.path(), "vmm");
        let err = procs
            .spawn(
                "helper",
                Path::new("/bin/sh"),
                &["-c".into(), "echo no socket >&2; exit 3".into()],
                Some(&dir.path().join("never.sock")),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no socket") && err.contains("exit status 3"),
            "{err}"
        );
        assert!(procs.log("helper").is_file());
        procs.stop().await;
    }
}
