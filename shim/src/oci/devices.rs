//! CRI `devices`: a container asks for a host device under a path of its own. The pod runs in a
//! VM, so only a device the guest has too can be given: the ones its kernel makes with the same
//! numbers (null, zero, tun, fuse...). Any other is refused by name rather than silently missing.

use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
};
use vessel_protocols::cri;

use super::SpecError;

/// The host devices every pod VM has, with their (fixed, kernel-assigned) character numbers.
const GUEST_DEVICES: [(&str, i64, i64); 8] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
    ("/dev/net/tun", 10, 200),
    ("/dev/fuse", 10, 229),
];

/// The spec's device nodes and the cgroup rules that let the container use them.
pub(super) fn build(
    devices: &[cri::Device],
) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    let mut nodes = Vec::new();
    let mut rules = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let Some(&(_, major, minor)) = GUEST_DEVICES.iter().find(|g| g.0 == d.host_path) else {
            let offered: Vec<&str> = GUEST_DEVICES.iter().map(|g| g.0).collect();
            return Err(SpecError::invalid(
                format!("devices[{i}].host_path"),
                format!(
                    "{:?} is not a device the pod's VM has (it has {}): the host's devices \
                     stay on the host",
                    d.host_path,
                    offered.join(", ")
                ),
            ));
        };
        if !d.container_path.starts_with('/') || d.container_path.split('/').any(|c| c == "..") {
            return Err(SpecError::invalid(
                format!("devices[{i}].container_path"),
                format!("{:?} is not an absolute path", d.container_path),
            ));
        }
        let access = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(SpecError::invalid(
                format!("devices[{i}].permissions"),
                format!("{:?} is not made of r, w and m", d.permissions),
            ));
        }
        nodes.push(
            LinuxDeviceBuilder::default()
                .path(&d.container_path)
                .typ(LinuxDeviceType::C)
                .major(major)
                .minor(minor)
                .file_mode(0o666u32)
                .build()?,
        );
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(major)
                .minor(minor)
                .access(access)
                .build()?,
        );
    }
    Ok((nodes, rules))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(container: &str, host: &str, permissions: &str) -> cri::Device {
        cri::Device {
            container_path: container.into(),
            host_path: host.into(),
            permissions: permissions.into(),
        }
    }

    #[test]
    fn guest_devices_map_with_their_numbers() {
        let (nodes, rules) = build(&[device("/dev/mytun", "/dev/net/tun", "rw")]).unwrap();
        assert_eq!(nodes[0].path().to_str(), Some("/dev/mytun"));
        assert_eq!((nodes[0].major(), nodes[0].minor()), (10, 200));
        assert_eq!(rules[0].access().as_deref(), Some("rw"));
        assert_eq!((rules[0].major(), rules[0].minor()), (Some(10), Some(200)));
    }

    #[test]
    fn other_devices_and_bad_fields_are_named() {
        for (d, field) in [
            (device("/dev/sda", "/dev/sda", "r"), "devices[0].host_path"),
            (device("rel", "/dev/null", "r"), "devices[0].container_path"),
            (
                device("/dev/n", "/dev/null", "rx"),
                "devices[0].permissions",
            ),
        ] {
            let e = build(&[d]).unwrap_err();
            assert!(
                matches!(&e, SpecError::Invalid { field: f, .. } if f == field),
                "want {field}: {e}"
            );
        }
    }
}
