//! The container process: args (CRI command/args over the image's entrypoint/cmd, as
//! Docker and containerd do), environment, working dir, terminal, rlimits, no_new_privs and
//! oom_score_adj, around the user and capabilities resolved elsewhere.

use oci_spec::runtime::{
    LinuxCapabilities, PosixRlimit, PosixRlimitBuilder, PosixRlimitType, Process, User,
};
use vessel_protocols::cri;

use super::{ImageDefaults, SpecError, DEFAULT_PATH};

/// RLIMIT_NOFILE of a container process, soft and hard: what containerd gives its
/// containers on common hosts (LimitNOFILE=infinity), and the guest kernel's `nr_open`.
pub const NOFILE_LIMIT: u64 = 1 << 20;

/// What the process is built from.
pub(super) struct ProcessInput<'a> {
    pub container: &'a cri::ContainerConfig,
    pub image: &'a ImageDefaults,
    /// The pod's hostname, for `HOSTNAME`.
    pub hostname: &'a str,
    pub user: User,
    pub capabilities: LinuxCapabilities,
    pub no_new_privileges: bool,
    /// The CRI `oom_score_adj`, when the container has resources.
    pub oom_score_adj: Option<i64>,
}

/// The OCI process. Every field is set explicitly (`Process::default()` brings a shell, an
/// xterm and default capabilities we do not want).
pub(super) fn build(input: &ProcessInput<'_>) -> Result<Process, SpecError> {
    let mut p = Process::default();
    p.set_args(Some(args(input.container, input.image)?));
    p.set_env(Some(env(input.container, input.image, input.hostname)?));
    p.set_cwd(cwd(input.container, input.image)?.into());
    p.set_terminal(Some(input.container.tty));
    p.set_user(input.user.clone());
    p.set_capabilities(Some(input.capabilities.clone()));
    p.set_rlimits(Some(rlimits()?));
    // Only when set: libcontainer installs a seccomp filter before dropping capabilities only
    // when the field is absent, and after (needing no_new_privs) when it is there at all.
    p.set_no_new_privileges(input.no_new_privileges.then_some(true));
    p.set_oom_score_adj(input.oom_score_adj.map(oom_score_adj).transpose()?);
    p.set_apparmor_profile(None);
    p.set_selinux_label(None);
    Ok(p)
}

/// CRI command/args over the image: command + args when a command is given; else the
/// image entrypoint + (args, or else the image cmd). An entrypoint of `[""]` counts as none.
pub(super) fn args(
    container: &cri::ContainerConfig,
    image: &ImageDefaults,
) -> Result<Vec<String>, SpecError> {
    let mut out = if container.command.is_empty() {
        let entrypoint = if image.entrypoint == [""] {
            &[][..]
        } else {
            &image.entrypoint[..]
        };
        let rest = if container.args.is_empty() {
            &image.cmd
        } else {
            &container.args
        };
        [entrypoint, rest].concat()
    } else {
        [&container.command[..], &container.args[..]].concat()
    };
    if out.first().is_some_and(String::is_empty) {
        out.clear();
    }
    if out.is_empty() {
        return Err(SpecError::invalid(
            "command",
            "no command given and the image has no entrypoint or cmd",
        ));
    }
    Ok(out)
}

/// `PATH` (default), `HOSTNAME`, then the image env, then the CRI envs; a later value
/// replaces an earlier one of the same key in place; an image entry without `=` unsets it.
pub(super) fn env(
    container: &cri::ContainerConfig,
    image: &ImageDefaults,
    hostname: &str,
) -> Result<Vec<String>, SpecError> {
    let mut env = vec![DEFAULT_PATH.to_owned(), format!("HOSTNAME={hostname}")];
    for entry in &image.env {
        match entry.split_once('=') {
            Some((key, _)) if !key.is_empty() => set_env(&mut env, key, entry.clone()),
            Some(_) => {}
            None => env.retain(|e| env_key(e) != entry),
        }
    }
    for (i, kv) in container.envs.iter().enumerate() {
        if kv.key.is_empty() || kv.key.contains('=') || kv.key.contains('\0') {
            return Err(SpecError::invalid(
                format!("envs[{i}].key"),
                format!("{:?} is not a variable name", kv.key),
            ));
        }
        set_env(&mut env, &kv.key, format!("{}={}", kv.key, kv.value));
    }
    if container.tty && !env.iter().any(|e| env_key(e) == "TERM") {
        env.push("TERM=xterm".into());
    }
    Ok(env)
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

fn set_env(env: &mut Vec<String>, key: &str, entry: String) {
    match env.iter_mut().find(|e| env_key(e) == key) {
        Some(existing) => *existing = entry,
        None => env.push(entry),
    }
}

/// The CRI working dir, else the image's, else `/`.
pub(super) fn cwd(
    container: &cri::ContainerConfig,
    image: &ImageDefaults,
) -> Result<String, SpecError> {
    if !container.working_dir.is_empty() {
        if !container.working_dir.starts_with('/') {
            return Err(SpecError::invalid(
                "working_dir",
                format!("{:?} is not absolute", container.working_dir),
            ));
        }
        return Ok(container.working_dir.clone());
    }
    Ok(match image.working_dir.as_str() {
        "" => "/".to_owned(),
        dir if dir.starts_with('/') => dir.to_owned(),
        // Docker takes a relative WORKDIR from /.
        dir => format!("/{dir}"),
    })
}

fn rlimits() -> Result<Vec<PosixRlimit>, SpecError> {
    Ok(vec![PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(NOFILE_LIMIT)
        .hard(NOFILE_LIMIT)
        .build()?])
}

fn oom_score_adj(value: i64) -> Result<i32, SpecError> {
    if !(-1000..=1000).contains(&value) {
        return Err(SpecError::invalid(
            "linux.resources.oom_score_adj",
            format!("{value} is outside -1000..=1000"),
        ));
    }
    Ok(value as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageDefaults {
        ImageDefaults {
            entrypoint: strings(entrypoint),
            cmd: strings(cmd),
            ..Default::default()
        }
    }

    fn ctr(command: &[&str], args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            command: strings(command),
            args: strings(args),
            ..Default::default()
        }
    }

    #[test]
    fn args_follow_docker_rules() {
        type Case<'a> = (
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
        );
        // (command, args, entrypoint, cmd, want)
        let cases: [Case; 7] = [
            (&[], &[], &["/ep"], &["c1", "c2"], &["/ep", "c1", "c2"]),
            (&[], &[], &[], &["sh"], &["sh"]),
            (&[], &["a1"], &["/ep"], &["c1"], &["/ep", "a1"]),
            (&[], &["a1"], &[], &["c1"], &["a1"]),
            (&["/cmd"], &[], &["/ep"], &["c1"], &["/cmd"]),
            (
                &["/cmd", "x"],
                &["a1"],
                &["/ep"],
                &["c1"],
                &["/cmd", "x", "a1"],
            ),
            (&[], &[], &[""], &["sh"], &["sh"]),
        ];
        for (command, args_, entrypoint, cmd, want) in cases {
            let got = args(&ctr(command, args_), &image(entrypoint, cmd)).unwrap();
            assert_eq!(
                got,
                strings(want),
                "{command:?} {args_:?} {entrypoint:?} {cmd:?}"
            );
        }
    }

    #[test]
    fn no_command_at_all_is_an_error_naming_command() {
        for (c, i) in [
            (ctr(&[], &[]), image(&[], &[])),
            (ctr(&[], &[]), image(&[""], &[])),
            (ctr(&[""], &[]), image(&[], &[])),
        ] {
            let e = args(&c, &i).unwrap_err();
            assert!(
                matches!(&e, SpecError::Invalid { field, .. } if field == "command"),
                "{e}"
            );
        }
    }

    #[test]
    fn env_merges_image_and_cri() {
        let img = ImageDefaults {
            env: strings(&["PATH=/img/bin", "A=img", "B=img", "DROP"]),
            ..Default::default()
        };
        let mut c = ctr(&["x"], &[]);
        c.envs = [("B", "cri"), ("C", "x=y"), ("HOSTNAME", "mine")]
            .iter()
            .map(|(k, v)| cri::KeyValue {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect();
        let got = env(&c, &img, "web-0").unwrap();
        assert_eq!(
            got,
            strings(&["PATH=/img/bin", "HOSTNAME=mine", "A=img", "B=cri", "C=x=y"])
        );
        let got = env(&ctr(&["x"], &[]), &ImageDefaults::default(), "h").unwrap();
        assert_eq!(got, strings(&[DEFAULT_PATH, "HOSTNAME=h"]));
    }

    #[test]
    fn env_with_tty_gets_term_and_bad_keys_fail() {
        let mut c = ctr(&["x"], &[]);
        c.tty = true;
        let got = env(&c, &ImageDefaults::default(), "h").unwrap();
        assert!(got.contains(&"TERM=xterm".to_string()), "{got:?}");
        for key in ["", "A=B"] {
            let mut c = ctr(&["x"], &[]);
            c.envs = vec![
                cri::KeyValue {
                    key: "OK".into(),
                    value: String::new(),
                },
                cri::KeyValue {
                    key: key.into(),
                    value: "v".into(),
                },
            ];
            let e = env(&c, &ImageDefaults::default(), "h").unwrap_err();
            assert!(e.to_string().starts_with("invalid envs[1].key"), "{e}");
        }
    }

    #[test]
    fn cwd_prefers_cri_then_image() {
        let with_dir = |d: &str| cri::ContainerConfig {
            working_dir: d.into(),
            ..Default::default()
        };
        let img = |d: &str| ImageDefaults {
            working_dir: d.into(),
            ..Default::default()
        };
        let cases = [
            ("/work", "/img", "/work"),
            ("", "/img", "/img"),
            ("", "", "/"),
            ("", "rel", "/rel"),
        ];
        for (cri_dir, image_dir, want) in cases {
            assert_eq!(cwd(&with_dir(cri_dir), &img(image_dir)).unwrap(), want);
        }
        let e = cwd(&with_dir("rel"), &img("")).unwrap_err();
        assert!(e.to_string().starts_with("invalid working_dir"), "{e}");
    }

    #[test]
    fn process_fields() {
        let mut c = ctr(&["/bin/app"], &[]);
        c.tty = true;
        let mut user = User::default();
        user.set_uid(5);
        let p = build(&ProcessInput {
            container: &c,
            image: &ImageDefaults::default(),
            hostname: "h",
            user,
            capabilities: LinuxCapabilities::default(),
            no_new_privileges: true,
            oom_score_adj: Some(-999),
        })
        .unwrap();
        assert_eq!(p.terminal(), Some(true));
        assert_eq!(p.user().uid(), 5);
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.oom_score_adj(), Some(-999));
        assert_eq!(p.cwd().to_str(), Some("/"));
        let rl = &p.rlimits().as_ref().unwrap()[0];
        assert_eq!(
            (rl.typ(), rl.soft(), rl.hard()),
            (PosixRlimitType::RlimitNofile, NOFILE_LIMIT, NOFILE_LIMIT)
        );
    }

    #[test]
    fn oom_score_adj_range() {
        for ok in [-1000, 0, 1000] {
            assert_eq!(oom_score_adj(ok).unwrap() as i64, ok);
        }
        for bad in [-1001, 1001, i64::MAX] {
            let e = oom_score_adj(bad).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("invalid linux.resources.oom_score_adj"),
                "{e}"
            );
        }
    }
}
