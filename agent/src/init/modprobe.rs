//! The guest's `modprobe`. When a privileged container asks for a kernel feature that lives in a
//! module (`ip link add type bridge`, `iptables -t nat`, `ip tuntap`), the kernel runs
//! `/sbin/modprobe -q -- NAME` (request_module), NAME being a module name or an alias such as
//! `rtnl-link-bridge` or `net-pf-16-proto-12`. `/sbin/modprobe` is the agent: it resolves NAME
//! through the index the guest image carries (`/etc/vessel/modules.index`, written by
//! guest-image/build.sh) and loads the module after its soft and hard dependencies. Modules
//! packed zstd-compressed are decompressed here (the guest kernel cannot).
//!
//! kmod's modprobe is not in the image (it would need its own libraries and a depmod run); the
//! index holds exactly what is needed, so the resolver is written here.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::path::Path;
use std::process::ExitCode;

use nix::errno::Errno;

use super::modules::MODULES_DIR;

/// The index the guest image carries.
pub const MODULES_INDEX: &str = "/etc/vessel/modules.index";

/// Whether this process was started as `modprobe` (the kernel's usermode helper).
pub fn is_modprobe_invocation() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| Path::new(&a).file_name().map(|n| n == "modprobe"))
        .unwrap_or(false)
}

/// `modprobe [-q] [--] NAME...`: loads each NAME; exit status 1 when one could not be.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quiet = args.iter().any(|a| a == "-q" || a == "--quiet");
    let names = names(&args);
    let index = match Index::read() {
        Ok(index) => index,
        Err(e) => {
            eprintln!("modprobe: {MODULES_INDEX}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut status = ExitCode::SUCCESS;
    for name in names {
        if let Err(e) = index.load(name, Path::new(MODULES_DIR), &mut load_file) {
            if !quiet {
                eprintln!("modprobe: {name}: {e}");
            }
            status = ExitCode::FAILURE;
        }
    }
    status
}

/// The names among the arguments: every one after `--`, else every one not an option.
fn names(args: &[String]) -> Vec<&str> {
    match args.iter().position(|a| a == "--") {
        Some(i) => args[i + 1..].iter().map(String::as_str).collect(),
        None => args
            .iter()
            .filter(|a| !a.starts_with('-'))
            .map(String::as_str)
            .collect(),
    }
}

/// Why a name could not be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModprobeError {
    #[error("no module or alias matches")]
    Unknown,
    #[error("{module}: {errno}")]
    Load { module: String, errno: Errno },
    #[error("{module}: dependency cycle")]
    Cycle { module: String },
}

/// A module of the index: its file (below the modules dir) and the modules it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Module {
    file: String,
    deps: Vec<String>,
}

/// The parsed index.
#[derive(Debug, Default)]
pub struct Index {
    modules: HashMap<String, Module>,
    /// (pattern, module) in index order.
    aliases: Vec<(String, String)>,
    /// module -> the soft dependencies to load before it.
    soft_pre: HashMap<String, Vec<String>>,
}

impl Index {
    /// The image's index ([`MODULES_INDEX`]).
    pub fn read() -> std::io::Result<Self> {
        std::fs::read_to_string(MODULES_INDEX).map(|text| Self::parse(&text))
    }

    /// Parses the index; malformed lines are skipped.
    pub fn parse(text: &str) -> Self {
        let mut index = Index::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("module"), Some(name), Some(file)) => {
                    let deps = words.map(normalize).collect();
                    index.modules.insert(
                        normalize(name),
                        Module {
                            file: file.to_owned(),
                            deps,
                        },
                    );
                }
                (Some("alias"), Some(pattern), Some(name)) => {
                    index.aliases.push((pattern.to_owned(), normalize(name)));
                }
                (Some("softdep"), Some(name), Some(first)) => {
                    // "pre: a b post: c": the names between "pre:" and the next section.
                    let mut pre = Vec::new();
                    let mut in_pre = first == "pre:";
                    for word in words {
                        match word {
                            "pre:" => in_pre = true,
                            "post:" => in_pre = false,
                            w if in_pre => pre.push(w.to_owned()),
                            _ => {}
                        }
                    }
                    index
                        .soft_pre
                        .entry(normalize(name))
                        .or_default()
                        .extend(pre);
                }
                _ => {}
            }
        }
        index
    }

    /// The modules `name` means: itself when it is a module, else every module an alias
    /// pattern matching it names.
    fn resolve(&self, name: &str) -> Vec<String> {
        let module = normalize(name);
        if self.modules.contains_key(&module) {
            return vec![module];
        }
        let mut found = Vec::new();
        for (pattern, module) in &self.aliases {
            if glob_match(pattern, name) && !found.contains(module) {
                found.push(module.clone());
            }
        }
        found
    }

    /// Loads what `name` means with `load` (module file path, module name), dependencies
    /// first; a module already loaded counts as loaded.
    pub fn load(
        &self,
        name: &str,
        dir: &Path,
        load: &mut dyn FnMut(&Path, &str) -> Result<(), Errno>,
    ) -> Result<(), ModprobeError> {
        let modules = self.resolve(name);
        if modules.is_empty() {
            return Err(ModprobeError::Unknown);
        }
        let mut done = HashSet::new();
        for module in modules {
            self.load_module(&module, dir, load, &mut done, &mut Vec::new())?;
        }
        Ok(())
    }

    fn load_module(
        &self,
        module: &str,
        dir: &Path,
        load: &mut dyn FnMut(&Path, &str) -> Result<(), Errno>,
        done: &mut HashSet<String>,
        active: &mut Vec<String>,
    ) -> Result<(), ModprobeError> {
        if done.contains(module) {
            return Ok(());
        }
        if active.iter().any(|m| m == module) {
            return Err(ModprobeError::Cycle {
                module: module.to_owned(),
            });
        }
        let Some(entry) = self.modules.get(module) else {
            return Err(ModprobeError::Unknown);
        };
        active.push(module.to_owned());
        // Soft dependencies are best effort, as in kmod.
        for soft in self.soft_pre.get(module).into_iter().flatten() {
            for m in self.resolve(soft) {
                let _ = self.load_module(&m, dir, load, done, active);
            }
        }
        for dep in &entry.deps {
            self.load_module(dep, dir, load, done, active)?;
        }
        active.pop();
        match load(&dir.join(&entry.file), module) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => {
                return Err(ModprobeError::Load {
                    module: module.to_owned(),
                    errno,
                })
            }
        }
        done.insert(module.to_owned());
        Ok(())
    }
}

/// A device node a module serves, created before the module is loaded (as kmod's
/// `static-nodes`): opening it makes the kernel ask for the module (`/dev/net/tun`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNode {
    /// Below /dev.
    pub path: String,
    pub block: bool,
    pub major: u64,
    pub minor: u64,
}

impl Index {
    /// The nodes of modules with a `devname:` alias and a `char-major-`/`block-major-` one.
    pub fn static_nodes(&self) -> Vec<StaticNode> {
        let mut nodes = Vec::new();
        for (pattern, module) in &self.aliases {
            let Some(path) = pattern.strip_prefix("devname:") else {
                continue;
            };
            let number = self.aliases.iter().find_map(|(p, m)| {
                if m != module {
                    return None;
                }
                let (block, rest) = match p.strip_prefix("char-major-") {
                    Some(rest) => (false, rest),
                    None => (true, p.strip_prefix("block-major-")?),
                };
                let (major, minor) = rest.split_once('-')?;
                Some((block, major.parse().ok()?, minor.parse().ok()?))
            });
            if let Some((block, major, minor)) = number {
                if !path.split('/').any(|c| c.is_empty() || c == "..") {
                    nodes.push(StaticNode {
                        path: path.to_owned(),
                        block,
                        major,
                        minor,
                    });
                }
            }
        }
        nodes
    }
}

/// Loads `names` now (logging what fails). For features the kernel never asks a modprobe
/// for: legacy iptables finds its tables through a socket option that exists only once
/// ip_tables is loaded, and otherwise runs a `modprobe` of its own, which containers lack.
pub fn preload(names: &[&str]) {
    let index = match Index::read() {
        Ok(index) => index,
        Err(e) => {
            tracing::warn!(path = MODULES_INDEX, error = %e, "no module index");
            return;
        }
    };
    for name in names {
        if let Err(e) = index.load(name, Path::new(MODULES_DIR), &mut load_file) {
            tracing::warn!(module = name, error = %e, "module preload failed");
        }
    }
}

/// Creates the static nodes of the image's on-demand modules under `/dev` (at boot).
pub fn create_static_nodes() {
    let Ok(index) = Index::read() else {
        return;
    };
    for node in index.static_nodes() {
        let path = Path::new("/dev").join(&node.path);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let kind = if node.block {
            nix::sys::stat::SFlag::S_IFBLK
        } else {
            nix::sys::stat::SFlag::S_IFCHR
        };
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
        let dev = nix::sys::stat::makedev(node.major, node.minor);
        match nix::sys::stat::mknod(&path, kind, mode, dev) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "static device node"),
        }
    }
}

/// Module names treat '-' and '_' alike.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Whether `name` matches the shell glob `pattern`, as kmod matches aliases (fnmatch(3)).
fn glob_match(pattern: &str, name: &str) -> bool {
    let (Ok(pattern), Ok(name)) = (CString::new(pattern), CString::new(name)) else {
        return false;
    };
    glob_match_c(&pattern, &name)
}

fn glob_match_c(pattern: &CStr, name: &CStr) -> bool {
    // SAFETY: both are valid NUL-terminated strings that outlive the call; fnmatch only reads
    // them.
    unsafe { libc::fnmatch(pattern.as_ptr(), name.as_ptr(), 0) == 0 }
}

/// Loads one module file: `.zst` decompressed here first (the guest kernel cannot), any other
/// as the boot list's are.
fn load_file(path: &Path, module: &str) -> Result<(), Errno> {
    let result = if path.extension().is_some_and(|e| e == "zst") {
        let errno = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
        std::fs::File::open(path)
            .and_then(zstd::stream::decode_all)
            .map_err(errno)
            .and_then(|image| nix::kmod::init_module(&image, &CString::default()))
    } else {
        super::modules::load(path)
    };
    result.inspect_err(|e| tracing::debug!(module, error = %e, "module load failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "\
module llc llc.ko.zst
module stp stp.ko.zst llc
module bridge bridge.ko.zst stp llc
module nf_tables nf_tables.ko.zst nfnetlink libcrc32c
module nfnetlink nfnetlink.ko.zst
module libcrc32c libcrc32c.ko.zst
module crc32c_generic crc32c_generic.ko.zst
module virtio virtio.ko
alias rtnl-link-bridge bridge
alias net-pf-16-proto-12 nf_tables
alias nfnetlink-subsys-* nfnetlink
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
softdep libcrc32c pre: crc32c
garbage line
";

    fn loads(name: &str) -> (Result<(), ModprobeError>, Vec<String>) {
        let index = Index::parse(INDEX);
        let mut loaded = Vec::new();
        let result = index.load(name, Path::new("/m"), &mut |path, module| {
            assert_eq!(path, Path::new("/m").join(&index.modules[module].file));
            loaded.push(module.to_owned());
            if module == "stp" {
                Err(Errno::EEXIST)
            } else {
                Ok(())
            }
        });
        (result, loaded)
    }

    #[test]
    fn aliases_and_names_load_with_dependencies_first() {
        assert_eq!(
            loads("rtnl-link-bridge"),
            (Ok(()), vec!["llc".into(), "stp".into(), "bridge".into()])
        );
        assert_eq!(loads("bridge").1, vec!["llc", "stp", "bridge"]);
        assert_eq!(
            loads("net-pf-16-proto-12").1,
            vec!["nfnetlink", "crc32c_generic", "libcrc32c", "nf_tables"]
        );
        assert_eq!(loads("nfnetlink-subsys-10").1, vec!["nfnetlink"]);
        assert_eq!(loads("virtio").1, vec!["virtio"]);
    }

    #[test]
    fn unknown_names_and_failures_are_errors() {
        assert_eq!(loads("rtnl-link-wireguard").0, Err(ModprobeError::Unknown));
        let index = Index::parse(INDEX);
        let err = index
            .load("bridge", Path::new("/m"), &mut |_, m| {
                if m == "bridge" {
                    Err(Errno::ENOEXEC)
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert_eq!(
            err,
            ModprobeError::Load {
                module: "bridge".into(),
                errno: Errno::ENOEXEC
            }
        );
    }

    #[test]
    fn a_dependency_cycle_ends() {
        let index = Index::parse("module a a.ko b\nmodule b b.ko a\n");
        let err = index
            .load("a", Path::new("/m"), &mut |_, _| Ok(()))
            .unwrap_err();
        assert!(matches!(err, ModprobeError::Cycle { .. }));
    }

    #[test]
    fn names_follow_the_double_dash() {
        let args: Vec<String> = ["-q", "--", "-odd-name"].map(String::from).to_vec();
        assert_eq!(names(&args), vec!["-odd-name"]);
        let args: Vec<String> = ["-q", "bridge"].map(String::from).to_vec();
        assert_eq!(names(&args), vec!["bridge"]);
    }

    #[test]
    fn static_nodes_come_from_devname_and_major_aliases() {
        let index = Index::parse(
            "module tun tun.ko.zst\nalias devname:net/tun tun\nalias char-major-10-200 tun\n\
             module loop loop.ko.zst\nalias devname:loop-control loop\nalias block-major-7-* loop\n\
             module evil evil.ko\nalias devname:../x evil\nalias char-major-1-1 evil\n",
        );
        assert_eq!(
            index.static_nodes(),
            vec![StaticNode {
                path: "net/tun".into(),
                block: false,
                major: 10,
                minor: 200
            }]
        );
    }

    #[test]
    fn globs_match_like_fnmatch() {
        assert!(glob_match("nfnetlink-subsys-*", "nfnetlink-subsys-10"));
        assert!(glob_match("pci:v00001AF4d*", "pci:v00001AF4d00001000"));
        assert!(glob_match("net-pf-1[06]", "net-pf-16"));
        assert!(!glob_match("rtnl-link-bridge", "rtnl-link-bridge2"));
    }
}
