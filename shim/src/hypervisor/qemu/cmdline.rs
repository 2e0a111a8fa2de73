//! The QEMU command line of a pod VM: `-M microvm` with memfd shared memory (required by the
//! vhost-user devices), vhost-user-vsock and vhost-user-fs devices, console into a file.

use std::path::Path;

use crate::hypervisor::{VmConfig, PASSED_FD, SHARED_FS_TAG};

/// Guest kernel parameters every pod VM gets: serial console, and a reboot (triple fault)
/// instead of a hang on panic or power-off, which `-no-reboot` turns into a QEMU exit.
pub const BASE_KERNEL_PARAMS: &str = "console=ttyS0 reboot=t panic=-1 quiet";

/// Socket paths the helpers create and QEMU connects to.
pub struct HelperSockets<'a> {
    pub vsock: &'a Path,
    pub virtiofs: &'a Path,
}

/// Machine, CPU and memory: `-M microvm` with memfd shared memory, no default devices.
pub fn machine_args(config: &VmConfig, kvm: bool) -> Vec<String> {
    let mem = config.memory_mib;
    let (accel, cpu) = if kvm { ("kvm", "host") } else { ("tcg", "max") };
    [
        "-name".into(),
        format!("vessel-{},debug-threads=on", config.id),
        "-accel".into(),
        accel.into(),
        "-M".into(),
        "microvm,memory-backend=mem".into(),
        "-cpu".into(),
        cpu.into(),
        "-smp".into(),
        config.vcpus.to_string(),
        "-m".into(),
        format!("{mem}M"),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
    ]
    .into()
}

/// Kernel parameters for a guest under TCG. Its TSC runs at the host's TSC rate, but the
/// kernel's PIT calibration of it fails when the host is busy (TCG timing jitters), and with no
/// HPET or ACPI PM timer on microvm the boot then stalls. Giving the rate up front skips the
/// calibration; `tsc=reliable` keeps the clocksource watchdog from discarding the TSC later.
fn tcg_timing_params() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    host_tsc_khz(&cpuinfo).map(|khz| format!("tsc_early_khz={khz} tsc=reliable"))
}

/// The host TSC rate in kHz, from /proc/cpuinfo's first `cpu MHz` line.
fn host_tsc_khz(cpuinfo: &str) -> Option<u64> {
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// The guest kernel's command line: the base parameters, TCG's timing parameters when not
/// on KVM, then the configured ones.
pub fn kernel_params(config: &VmConfig, kvm: bool) -> String {
    let mut kernel_params = BASE_KERNEL_PARAMS.to_string();
    if !kvm {
        if let Some(timing) = tcg_timing_params() {
            kernel_params.push(' ');
            kernel_params.push_str(&timing);
        }
    }
    if !config.kernel_params.trim().is_empty() {
        kernel_params.push(' ');
        kernel_params.push_str(config.kernel_params.trim());
    }
    kernel_params
}

/// Kernel, initramfs and kernel command line.
pub fn boot_args(config: &VmConfig, kvm: bool) -> Vec<String> {
    [
        "-kernel".into(),
        config.kernel.display().to_string(),
        "-initrd".into(),
        config.initrd.display().to_string(),
        "-append".into(),
        kernel_params(config, kvm),
    ]
    .into()
}

/// Builds QEMU's arguments for a pod VM.
pub fn qemu_args(config: &VmConfig, kvm: bool, sockets: &HelperSockets<'_>) -> Vec<String> {
    let mut args = machine_args(config, kvm);
    args.extend([
        "-chardev".into(),
        format!("file,id=console,path={}", config.console_log().display()),
        "-serial".into(),
        "chardev:console".into(),
        "-chardev".into(),
        format!("socket,id=vsock,path={}", sockets.vsock.display()),
        "-device".into(),
        "vhost-user-vsock-device,chardev=vsock".into(),
        "-chardev".into(),
        format!("socket,id=fs,path={}", sockets.virtiofs.display()),
        "-device".into(),
        format!("vhost-user-fs-device,chardev=fs,tag={SHARED_FS_TAG}"),
        // The guest's pvpanic driver reports a kernel panic here; QEMU then exits 1.
        "-device".into(),
        "pvpanic".into(),
        "-action".into(),
        "panic=exit-failure".into(),
    ]);
    if let Some(nic) = &config.nic {
        // The tap the shim opened in the pod's namespace, inherited at PASSED_FD; QEMU reads
        // its flags and uses the virtio-net header it was opened with.
        args.extend([
            "-netdev".into(),
            format!("tap,id=net0,fd={PASSED_FD}"),
            "-device".into(),
            format!("virtio-net-device,netdev=net0,mac={}", nic.mac),
        ]);
    }
    args.extend(boot_args(config, kvm));
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn config() -> VmConfig {
        VmConfig {
            id: "p1".into(),
            run_dir: PathBuf::from("/run/vessel/pods/p1"),
            shared_dir: PathBuf::from("/run/vessel/pods/p1/shared"),
            cid: 7,
            vcpus: 2,
            memory_mib: 300,
            kernel: PathBuf::from("/k/vmlinux"),
            initrd: PathBuf::from("/k/initrd"),
            kernel_params: " vessel.log=debug ".into(),
            nic: None,
            cgroup: None,
            native: None,
        }
    }

    #[test]
    fn tcg_command_line() {
        let s = HelperSockets {
            vsock: Path::new("/r/v.sock"),
            virtiofs: Path::new("/r/f.sock"),
        };
        let args = qemu_args(&config(), false, &s).join(" ");
        assert!(args.contains("-accel tcg"), "{args}");
        assert!(args.contains("-cpu max"), "{args}");
        assert!(args.contains("memory-backend-memfd,id=mem,size=300M,share=on"));
        assert!(args.contains("-smp 2"));
        assert!(args.contains("path=/run/vessel/pods/p1/console.log"));
        assert!(args.contains("vhost-user-fs-device,chardev=fs,tag=vessel-shared"));
        assert!(args.contains("-device pvpanic -action panic=exit-failure"));
        assert!(args.contains("-append console=ttyS0 reboot=t panic=-1 quiet"));
        assert!(args.ends_with(" vessel.log=debug"), "{args}");
        assert!(!args.contains("-netdev"), "no network, no NIC: {args}");
    }

    #[test]
    fn a_pod_network_adds_a_nic_on_the_tap() {
        let s = HelperSockets {
            vsock: Path::new("/v"),
            virtiofs: Path::new("/f"),
        };
        let mut config = config();
        config.nic = Some(crate::hypervisor::VmNic {
            tap: "vtap0".into(),
            mac: "02:42:0a:58:00:07".into(),
            fd: None,
        });
        let args = qemu_args(&config, false, &s).join(" ");
        assert!(
            args.contains(
                "-netdev tap,id=net0,fd=3 \
                 -device virtio-net-device,netdev=net0,mac=02:42:0a:58:00:07"
            ),
            "{args}"
        );
    }

    #[test]
    fn tsc_rate_from_cpuinfo() {
        let info = "processor\t: 0\ncpu MHz\t\t: 2596.118\nprocessor\t: 1\ncpu MHz\t\t: 1.0\n";
        assert_eq!(host_tsc_khz(info), Some(2_596_118));
        assert_eq!(host_tsc_khz("flags: fpu\n"), None);
    }

    #[test]
    fn kvm_uses_host_cpu() {
        let s = HelperSockets {
            vsock: Path::new("/v"),
            virtiofs: Path::new("/f"),
        };
        let args = qemu_args(&config(), true, &s).join(" ");
        assert!(
            args.contains("-accel kvm") && args.contains("-cpu host"),
            "{args}"
        );
    }
}
