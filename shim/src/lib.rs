//! vessel-shim: the host daemon of vessel. It serves CRI to kubelet/crictl and runs one
//! microVM per pod, driving the guest agent over hybrid vsock + ttrpc.
//!
//! Module map (each arrow: "uses"):
//!
//! - [`server`]: the CRI socket; `runtime_service/` and `image_service/` hold one thin
//!   handler file per RPC family, `authority.rs` the HTTP/2 fix for old clients,
//!   `instrument.rs` the per-call log line and gRPC status. → `runtime`, `image`
//! - [`streaming`]: the streaming server of Exec, Attach and PortForward (HTTP upgraded to
//!   SPDY/3.1 or WebSocket, single-use tokens), run through the pod's agent streams.
//!   → `runtime`, `pod_vm`
//! - [`runtime`]: the core: `pods/` (RunPodSandbox, StopPodSandbox, VM adoption and
//!   monitor, the pod's namespace and CNI attachment), `containers/` (create, lifecycle, log pumps and exits), `exec.rs`,
//!   `stats.rs`, the persisted records and name reservations. → `pod_vm`, `oci`, `image`,
//!   `metadata`, `logs`, `host_mounts`, `network`
//! - [`pod_vm`]: a pod's VM (boot, adoption, teardown), the agent client, what the guest's
//!   agent can do (its contract capabilities), its NIC on the pod network. → `hypervisor`,
//!   `network`
//! - [`network`]: pod networking on the host: CNI (config, plugin calls, ADD/DEL with their
//!   cache), pinned network namespaces, the VM's tap joined to the CNI interface.
//! - [`hypervisor`]: the VMM backends (the built-in vessel-vmm, QEMU) behind one trait,
//!   the helper processes (virtiofsd, vhost-device-vsock) and the backend choice; `native`,
//!   the same trait over a host agent for the pods of native handlers.
//! - [`handlers`]: the runtime handlers served (`kata`: microVM, `runc`: native).
//! - [`oci`]: the OCI spec of a container from its CRI config (security context, mounts,
//!   resources, seccomp, devices, users).
//! - [`image`]: pulls from registries, the content store, layer unpacking, the image
//!   records and the container rootfs overlay.
//! - [`metadata`]: the crash-safe database (redb) of pod, container and image records.
//! - [`logs`]: CRI log files (the kubelet line format, reopen).
//! - [`host_cgroup`]: the host cgroup of a pod VM's processes under the pod's `cgroup_parent`.
//! - [`host_mounts`]: bind mounts on the host and their removal before a dir is deleted.
//! - [`config`]: the TOML config with embedded defaults.

pub mod config;
pub mod handlers;
pub mod host_cgroup;
pub mod host_mounts;
pub mod hypervisor;
pub mod image;
pub mod logs;
pub mod metadata;
pub mod network;
pub mod oci;
pub mod pod_vm;
pub mod runtime;
pub mod server;
pub mod streaming;
