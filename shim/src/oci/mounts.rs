//! The mounts of a container, as containerd's CRI plugin lays them out: the OCI default
//! filesystems (proc, dev, devpts, shm, mqueue, sysfs, cgroup) less those a CRI mount
//! replaces, then the pod's /etc/hosts, /etc/resolv.conf and /etc/hostname and the CRI
//! mounts as bind mounts, parents before children. /dev/shm stays a per-container tmpfs.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder};
use vessel_protocols::cri;

use super::{GuestMount, SpecError};

/// What the mounts are built from.
pub(super) struct MountInput<'a> {
    /// The CRI mounts, guest side, in `container.mounts` order.
    pub cri_mounts: &'a [GuestMount],
    /// /sys and /sys/fs/cgroup writable.
    pub privileged: bool,
    /// The pod's /etc files are mounted read-only too.
    pub readonly_rootfs: bool,
    pub etc_hosts: Option<&'a str>,
    pub resolv_conf: Option<&'a str>,
    pub hostname_file: Option<&'a str>,
    /// The container runs on the host (a native pod): a Bidirectional mount is possible.
    pub on_host: bool,
}

/// The OCI default filesystems: (destination, type, source, options).
const DEFAULTS: [(&str, &str, &str, &[&str]); 7] = [
    ("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
    (
        "/dev",
        "tmpfs",
        "tmpfs",
        &["nosuid", "strictatime", "mode=755", "size=65536k"],
    ),
    (
        "/dev/pts",
        "devpts",
        "devpts",
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ],
    ),
    (
        "/dev/shm",
        "tmpfs",
        "shm",
        &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    ),
    (
        "/dev/mqueue",
        "mqueue",
        "mqueue",
        &["nosuid", "noexec", "nodev"],
    ),
    (
        "/sys",
        "sysfs",
        "sysfs",
        &["nosuid", "noexec", "nodev", "ro"],
    ),
    (
        "/sys/fs/cgroup",
        "cgroup",
        "cgroup",
        &["nosuid", "noexec", "nodev", "relatime", "ro"],
    ),
];

/// The mounts, and the rootfs propagation the CRI mounts need: `shared` for a bidirectional
/// one, else `slave` for a host-to-container one (the OCI values; libcontainer applies them
/// recursively and refuses containerd's `rslave` there). Bidirectional is refused in a VM: a
/// container's mounts cannot reach the host from there.
pub(super) fn build(input: &MountInput<'_>) -> Result<(Vec<Mount>, Option<String>), SpecError> {
    let mut binds = Vec::new();
    for (i, m) in input.cri_mounts.iter().enumerate() {
        let dest = destination(i, &m.container_path)?;
        let propagation = propagation(i, m.propagation, input.on_host)?;
        binds.push(bind(&dest, &m.guest_source, m.readonly, propagation)?);
    }
    let cri_dests: Vec<PathBuf> = binds.iter().map(|m| m.destination().clone()).collect();
    let etc = [
        ("/etc/hosts", input.etc_hosts),
        ("/etc/resolv.conf", input.resolv_conf),
        ("/etc/hostname", input.hostname_file),
    ];
    for (dest, source) in etc {
        let Some(source) = source else { continue };
        if !cri_dests.iter().any(|d| d == Path::new(dest)) {
            binds.push(bind(dest, source, input.readonly_rootfs, "rprivate")?);
        }
    }
    let mut mounts = defaults(input.privileged, &cri_dests)?;
    binds.sort_by_key(|m| m.destination().components().count());
    mounts.extend(binds);
    Ok((mounts, rootfs_propagation(input.cri_mounts)))
}

/// The default filesystems, less those at a CRI mount's destination (all of /dev's when a
/// CRI mount is /dev); /sys and /sys/fs/cgroup writable when privileged.
fn defaults(privileged: bool, cri_dests: &[PathBuf]) -> Result<Vec<Mount>, SpecError> {
    let replaced = |dest: &str| {
        cri_dests
            .iter()
            .any(|d| d == Path::new(dest) || (d == Path::new("/dev") && dest.starts_with("/dev/")))
    };
    let mut out = Vec::new();
    for (dest, typ, source, options) in DEFAULTS {
        if replaced(dest) {
            continue;
        }
        let options = options
            .iter()
            .map(|o| if privileged && *o == "ro" { "rw" } else { o })
            .map(str::to_owned)
            .collect::<Vec<_>>();
        out.push(
            MountBuilder::default()
                .destination(dest)
                .typ(typ)
                .source(source)
                .options(options)
                .build()?,
        );
    }
    Ok(out)
}

fn bind(dest: &str, source: &str, readonly: bool, propagation: &str) -> Result<Mount, SpecError> {
    let options = vec![
        "rbind".to_owned(),
        propagation.to_owned(),
        if readonly { "ro" } else { "rw" }.to_owned(),
    ];
    Ok(MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(options)
        .build()?)
}

/// The cleaned, absolute destination of CRI mount `i` (not `/` itself).
fn destination(i: usize, path: &str) -> Result<String, SpecError> {
    let field = || format!("mounts[{i}].container_path");
    if !path.starts_with('/') {
        return Err(SpecError::invalid(
            field(),
            format!("{path:?} is not absolute"),
        ));
    }
    let clean = clean(path);
    if clean == "/" {
        return Err(SpecError::invalid(
            field(),
            "cannot mount over the rootfs /",
        ));
    }
    Ok(clean)
}

/// `path` with `.`, `..` and repeated or trailing slashes resolved lexically.
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => parts.push(n.to_str().unwrap_or_default()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    format!("/{}", parts.join("/"))
}

/// The OCI propagation option of a CRI `MountPropagation`.
fn propagation(i: usize, value: i32, on_host: bool) -> Result<&'static str, SpecError> {
    use cri::MountPropagation as P;
    match P::try_from(value) {
        Ok(P::PropagationPrivate) => Ok("rprivate"),
        Ok(P::PropagationHostToContainer) => Ok("rslave"),
        Ok(P::PropagationBidirectional) if on_host => Ok("rshared"),
        Ok(P::PropagationBidirectional) => Err(SpecError::invalid(
            format!("mounts[{i}].propagation"),
            "BIDIRECTIONAL cannot cross the pod's VM: mounts made in the container would never \
             reach the host; run this pod with a handler that shares the host's mounts",
        )),
        Err(_) => Err(SpecError::invalid(
            format!("mounts[{i}].propagation"),
            format!("unknown value {value}"),
        )),
    }
}

fn rootfs_propagation(mounts: &[GuestMount]) -> Option<String> {
    use cri::MountPropagation as P;
    let any = |p: P| mounts.iter().any(|m| m.propagation == p as i32);
    if any(P::PropagationBidirectional) {
        Some("shared".into())
    } else {
        any(P::PropagationHostToContainer).then(|| "slave".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(path: &str, source: &str, readonly: bool, propagation: i32) -> GuestMount {
        GuestMount {
            container_path: path.into(),
            guest_source: source.into(),
            readonly,
            propagation,
        }
    }

    fn input(cri_mounts: &[GuestMount]) -> MountInput<'_> {
        MountInput {
            on_host: false,
            cri_mounts,
            privileged: false,
            readonly_rootfs: false,
            etc_hosts: Some("/g/hosts"),
            resolv_conf: Some("/g/resolv.conf"),
            hostname_file: Some("/g/hostname"),
        }
    }

    fn find<'a>(mounts: &'a [Mount], dest: &str) -> Option<&'a Mount> {
        mounts.iter().find(|m| m.destination() == Path::new(dest))
    }

    fn options(m: &Mount) -> Vec<String> {
        m.options().clone().unwrap_or_default()
    }

    #[test]
    fn defaults_and_etc_files() {
        let (mounts, propagation) = build(&input(&[])).unwrap();
        let dests: Vec<_> = mounts
            .iter()
            .map(|m| m.destination().to_str().unwrap())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/etc/hostname"
            ]
        );
        assert_eq!(propagation, None);
        let shm = find(&mounts, "/dev/shm").unwrap();
        assert_eq!(shm.typ().as_deref(), Some("tmpfs"));
        let sys = find(&mounts, "/sys").unwrap();
        assert!(options(sys).contains(&"ro".into()));
        let hosts = find(&mounts, "/etc/hosts").unwrap();
        assert_eq!(hosts.typ().as_deref(), Some("bind"));
        assert_eq!(hosts.source().as_deref(), Some(Path::new("/g/hosts")));
        assert_eq!(options(hosts), ["rbind", "rprivate", "rw"]);
    }

    #[test]
    fn readonly_rootfs_makes_etc_files_readonly_and_privileged_sys_writable() {
        let mut i = input(&[]);
        i.readonly_rootfs = true;
        i.privileged = true;
        let (mounts, _) = build(&i).unwrap();
        assert_eq!(options(find(&mounts, "/etc/resolv.conf").unwrap())[2], "ro");
        for dest in ["/sys", "/sys/fs/cgroup"] {
            let o = options(find(&mounts, dest).unwrap());
            assert!(
                o.contains(&"rw".into()) && !o.contains(&"ro".into()),
                "{dest}: {o:?}"
            );
        }
    }

    #[test]
    fn cri_mounts_are_binds_with_propagation() {
        use cri::MountPropagation as P;
        let cases = [
            (
                P::PropagationPrivate,
                false,
                ["rbind", "rprivate", "rw"],
                None,
            ),
            (
                P::PropagationHostToContainer,
                true,
                ["rbind", "rslave", "ro"],
                Some("slave"),
            ),
        ];
        for (p, ro, want, root) in cases {
            let cri = [guest("/data", "/g/m/0", ro, p as i32)];
            let (mounts, rootfs) = build(&input(&cri)).unwrap();
            let m = find(&mounts, "/data").unwrap();
            assert_eq!(m.typ().as_deref(), Some("bind"));
            assert_eq!(m.source().as_deref(), Some(Path::new("/g/m/0")));
            assert_eq!(options(m), want, "{p:?}");
            assert_eq!(rootfs.as_deref(), root, "{p:?}");
        }
        let both = [
            guest("/a", "/g/0", false, P::PropagationHostToContainer as i32),
            guest("/b", "/g/1", false, P::PropagationPrivate as i32),
        ];
        assert_eq!(build(&input(&both)).unwrap().1.as_deref(), Some("slave"));
    }

    #[test]
    fn cri_mounts_replace_defaults_and_etc_files() {
        let cri = [
            guest("/etc/hosts/", "/kubelet/hosts", false, 0),
            guest("/sys/fs/cgroup", "/g/cg", true, 0),
            guest("/dev/shm", "/g/shm", false, 0),
        ];
        let (mounts, _) = build(&input(&cri)).unwrap();
        let hosts: Vec<_> = mounts
            .iter()
            .filter(|m| m.destination() == Path::new("/etc/hosts"))
            .collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(
            hosts[0].source().as_deref(),
            Some(Path::new("/kubelet/hosts"))
        );
        assert_eq!(
            find(&mounts, "/sys/fs/cgroup").unwrap().typ().as_deref(),
            Some("bind")
        );
        assert_eq!(
            find(&mounts, "/dev/shm").unwrap().typ().as_deref(),
            Some("bind")
        );
        assert!(find(&mounts, "/etc/resolv.conf").is_some());
        // A CRI /dev replaces every default under /dev.
        let (mounts, _) = build(&input(&[guest("/dev", "/g/dev", false, 0)])).unwrap();
        let under_dev = mounts
            .iter()
            .filter(|m| m.destination().starts_with("/dev"))
            .count();
        assert_eq!(under_dev, 1);
    }

    #[test]
    fn parents_are_mounted_before_children() {
        let cri = [
            guest("/data/a/b", "/g/2", false, 0),
            guest("/data", "/g/0", false, 0),
            guest("/data/a", "/g/1", false, 0),
        ];
        let (mounts, _) = build(&input(&cri)).unwrap();
        let order: Vec<_> = mounts
            .iter()
            .filter(|m| m.destination().starts_with("/data"))
            .map(|m| m.source().clone().unwrap())
            .collect();
        assert_eq!(order, [PathBuf::from("/g/0"), "/g/1".into(), "/g/2".into()]);
    }

    #[test]
    fn bad_cri_mounts_name_the_field() {
        let cases = [
            (guest("rel", "/g/0", false, 0), "mounts[1].container_path"),
            (guest("/x/..", "/g/0", false, 0), "mounts[1].container_path"),
            (guest("/x", "/g/0", false, 7), "mounts[1].propagation"),
            (
                guest(
                    "/x",
                    "/g/0",
                    false,
                    cri::MountPropagation::PropagationBidirectional as i32,
                ),
                "mounts[1].propagation",
            ),
        ];
        for (bad, field) in cases {
            let cri = [guest("/ok", "/g/ok", false, 0), bad];
            let e = build(&input(&cri)).unwrap_err();
            assert!(
                matches!(&e, SpecError::Invalid { field: f, .. } if f == field),
                "want {field}: {e}"
            );
        }
    }

    #[test]
    fn paths_are_cleaned() {
        for (raw, want) in [
            ("/a/./b/", "/a/b"),
            ("//a//b", "/a/b"),
            ("/a/../b", "/b"),
            ("/..", "/"),
        ] {
            assert_eq!(clean(raw), want);
        }
    }
}
