//! CreateContainer and ExecProcess: validate, prepare the spec or process, check the
//! executable, set up stdio (pipes or a terminal), then run libcontainer through the
//! helper and start tracking the new process.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::runtime::Process as OciProcess;

use super::cgroup::Cgroup;
use super::error::{ContainerError, Result, SpecError};
use super::libcontainer::Request;
use super::on_host;
use super::process::Process;
use super::resolve::find_executable;
use super::spec::{self, DEFAULT_PATH};
use super::state::{Container, State};
use super::stdio::{self, ProcessIo};
use super::tty::{self, ConsoleSocket};
use super::Containers;
use crate::storage::{self, StorageSpec};

/// What CreateContainer asks for, in domain terms.
pub struct CreateParams {
    pub id: String,
    pub spec_json: Vec<u8>,
    pub storages: Vec<StorageSpec>,
    pub stdin: bool,
}

/// What ExecProcess asks for.
pub struct ExecParams {
    pub container_id: String,
    pub exec_id: String,
    pub process_json: Vec<u8>,
    pub stdin: bool,
}

impl Containers {
    /// Creates a container (state Created).
    pub async fn create(&self, p: CreateParams) -> Result<()> {
        spec::validate_id("container_id", &p.id)?;
        let mut oci = spec::parse_spec(&p.spec_json)?;
        on_host::adapt(&mut oci);
        let _reservation = self.reserve(&p.id)?;
        let bundle = crate::paths::bundles().join(&p.id);
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(&bundle).map_err(|e| ContainerError::io(bundle.display(), e))?;
        let mounted = match storage::mount_all(&p.storages) {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&bundle);
                return Err(e.into());
            }
        };
        let made = self.create_in_bundle(&p, &mut oci, &bundle).await;
        let (pid, io, cgroup, rootfs) = match made {
            Ok(v) => v,
            Err(e) => {
                storage::unmount_all(&mounted);
                let _ = std::fs::remove_dir_all(&bundle);
                return Err(e);
            }
        };
        let init = Process::track("", pid, io, &self.reaper, &cgroup);
        let container = Container::new(p.id.clone(), bundle, rootfs, cgroup, mounted, init);
        self.insert(Arc::new(container));
        tracing::info!(container_id = %p.id, pid, "container created");
        Ok(())
    }

    async fn create_in_bundle(
        &self,
        p: &CreateParams,
        oci: &mut oci_spec::runtime::Spec,
        bundle: &Path,
    ) -> Result<(i32, ProcessIo, Cgroup, PathBuf)> {
        let rootfs = spec::rootfs(oci, bundle)?;
        if !rootfs.is_dir() {
            return Err(ContainerError::NoRootfs(rootfs));
        }
        let pod_pid_ns = || self.pod_pid_namespace();
        let cgroup = Cgroup::new(&spec::prepare(oci, &p.id, pod_pid_ns)?);
        let process = oci
            .process()
            .clone()
            .ok_or(SpecError::Missing("spec_json: process"))?;
        check_executable(&rootfs, &process)?;
        // The guest loads its own modules; a native pod's host kernel is the node's business.
        if may_admin_network(&process) && !crate::paths::on_host() {
            crate::init::modprobe::preload(&["ip_tables", "ip6_tables"]);
        }
        let config = bundle.join("config.json");
        let json = serde_json::to_vec_pretty(oci).map_err(|source| ContainerError::Encode {
            what: "spec",
            source,
        })?;
        std::fs::write(&config, json).map_err(|e| ContainerError::io(config.display(), e))?;

        let terminal = process.terminal().unwrap_or(false);
        let request = |console_socket| Request::CreateInit {
            id: p.id.clone(),
            bundle: bundle.to_path_buf(),
            console_socket,
        };
        let (pid, io) = self.spawn(request, terminal, p.stdin).await?;
        Ok((pid, io, cgroup, rootfs))
    }

    /// Runs a create request with pipes or a terminal; returns the pid and our I/O ends.
    async fn spawn(
        &self,
        request: impl FnOnce(Option<PathBuf>) -> Request,
        terminal: bool,
        with_stdin: bool,
    ) -> Result<(i32, ProcessIo)> {
        if terminal {
            let console = ConsoleSocket::listen()?;
            let req = request(Some(console.path().to_path_buf()));
            match self.runtime.call(req, Vec::new()).await {
                Ok(pid) => {
                    let master = console.master().await?;
                    let io = tty::io_from_master(master, with_stdin)?;
                    Ok((pid.ok_or(ContainerError::NoPid)?, io))
                }
                Err(e) => {
                    console.abandon();
                    Err(e.into())
                }
            }
        } else {
            let (theirs, ours) =
                stdio::pipes(with_stdin).map_err(|e| ContainerError::io("stdio pipes", e))?;
            let pid = self.runtime.call(request(None), theirs.into_fds()).await?;
            Ok((
                pid.ok_or(ContainerError::NoPid)?,
                ProcessIo::from_pipes(ours),
            ))
        }
    }

    /// Runs a process in a running container.
    pub async fn exec(&self, p: ExecParams) -> Result<()> {
        spec::validate_id("container_id", &p.container_id)?;
        spec::validate_id("exec_id", &p.exec_id)?;
        let container = self.get(&p.container_id)?;
        let _op = container.lifecycle.lock().await;
        container.require(&[State::Running], "exec")?;
        if container.has_exec(&p.exec_id) {
            return Err(ContainerError::ExecExists {
                container_id: p.container_id.clone(),
                exec_id: p.exec_id.clone(),
            });
        }
        let mut process = spec::parse_process(&p.process_json)?;
        on_host::adapt_process(&mut process);
        spec::ensure_path(&mut process);
        check_executable(&container.rootfs, &process)?;
        let file = container.bundle.join(format!("exec-{}.json", p.exec_id));
        let json = serde_json::to_vec(&process).map_err(|source| ContainerError::Encode {
            what: "process",
            source,
        })?;
        std::fs::write(&file, json).map_err(|e| ContainerError::io(file.display(), e))?;

        let terminal = process.terminal().unwrap_or(false);
        let request = |console_socket| Request::CreateTenant {
            id: p.container_id.clone(),
            process: file.clone(),
            console_socket,
        };
        let spawned = self.spawn(request, terminal, p.stdin).await;
        let _ = std::fs::remove_file(&file);
        let (pid, io) = spawned?;
        let proc = Process::track(&p.exec_id, pid, io, &self.reaper, &container.cgroup);
        container.add_exec(proc);
        tracing::info!(container_id = %p.container_id, exec_id = %p.exec_id, pid, "exec started");
        Ok(())
    }
}

/// NOT_FOUND unless `process.args[0]` resolves to an executable inside `rootfs`.
fn check_executable(rootfs: &Path, process: &OciProcess) -> Result<()> {
    let cmd = process
        .args()
        .as_ref()
        .and_then(|a| a.first())
        .ok_or(SpecError::Empty("process.args"))?;
    let env = process.env().clone().unwrap_or_default();
    let path = spec::path_env(&env).unwrap_or(DEFAULT_PATH);
    find_executable(rootfs, process.cwd(), cmd, path).map(drop)
}

/// Whether the process may hold CAP_NET_ADMIN (privileged, or the capability added): it may set
/// up legacy iptables rules.
fn may_admin_network(process: &oci_spec::runtime::Process) -> bool {
    process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().as_ref())
        .is_some_and(|b| b.contains(&oci_spec::runtime::Capability::NetAdmin))
}
