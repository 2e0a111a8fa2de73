//! Security contexts as kubelet's validation suite checks them, through the real CRI socket:
//! users and groups (the image's groups too), capabilities, read-only rootfs, masked and
//! read-only paths, no_new_privs, and seccomp (RuntimeDefault, Localhost, Unconfined, legacy
//! values), for the container's process and the ones exec'd into it.

use tonic::Code;
use vessel_protocols::cri;
use vessel_tests::cri::{
    container_config, create_container, exec_sh, expect_err, pod_config, pull, remove_pod_checked,
    run_pod, start_container, CriTest,
};
use vessel_tests::images;

/// A container of `image` running `sleep` with `ctx` as its security context.
fn with_context(
    name: &str,
    image: &str,
    ctx: cri::LinuxContainerSecurityContext,
) -> cri::ContainerConfig {
    let mut config = container_config(name, image, &["sleep", "1000"]);
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(ctx),
        ..Default::default()
    });
    config
}

/// The security-context bucket of the suite: users and groups (the image's groups too),
/// capabilities added and dropped (ALL), read-only rootfs, masked and read-only paths,
/// no_new_privs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_contexts_shape_the_container_process() {
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        registry,
        ..
    }) = CriTest::setup("security_contexts_shape_the_container_process").await
    else {
        return;
    };
    // busybox whose user `app` (1000) is also in wheel (10) and audio (29).
    let mut spec = images::ImageSpec::busybox();
    spec.layers
        .push(images::Layer::new(vec![images::Entry::file(
            "etc/group",
            b"root:x:0:\napp:x:1000:\nwheel:x:10:app\naudio:x:29:app\nnogroup:x:65534:\n",
            0o644,
        )]));
    let users = images::build(&spec);
    images::push(&registry.host(), "vessel/users", "latest", &users, None)
        .await
        .expect("push the users image");
    let image = format!("{}/vessel/users:latest", registry.host());
    pull(&mut daemon.image_client().await, &image, None)
        .await
        .expect("pull users");
    let config = pod_config("security", &env.state_dir().join("logs"));
    let pod = run_pod(&mut cri, &config).await;
    let caps = |add: &[&str], drop: &[&str]| {
        Some(cri::Capability {
            add_capabilities: add.iter().map(|c| c.to_string()).collect(),
            drop_capabilities: drop.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        })
    };
    let cases: [(&str, cri::LinuxContainerSecurityContext, &str, &str); 6] = [
        (
            "ids",
            cri::LinuxContainerSecurityContext {
                run_as_user: Some(cri::Int64Value { value: 1000 }),
                run_as_group: Some(cri::Int64Value { value: 3000 }),
                supplemental_groups: vec![4000],
                ..Default::default()
            },
            "id -u; id -g; id -G",
            "1000\n3000\n3000 10 29 4000\n",
        ),
        (
            "username",
            cri::LinuxContainerSecurityContext {
                run_as_username: "app".into(),
                ..Default::default()
            },
            "id -un; id -G",
            "app\n1000 10 29\n",
        ),
        (
            "caps",
            cri::LinuxContainerSecurityContext {
                capabilities: caps(&["NET_ADMIN"], &["ALL"]),
                ..Default::default()
            },
            // NET_ADMIN is bit 12.
            "grep -E '^Cap(Eff|Bnd)' /proc/1/status",
            "CapEff:\t0000000000001000\nCapBnd:\t0000000000001000\n",
        ),
        (
            "readonly",
            cri::LinuxContainerSecurityContext {
                readonly_rootfs: true,
                ..Default::default()
            },
            "touch /x 2>&1; cat /etc/hostname >/dev/null && echo etc-readable",
            "touch: /x: Read-only file system\netc-readable\n",
        ),
        (
            "paths",
            cri::LinuxContainerSecurityContext {
                masked_paths: vec!["/proc/timer_list".into()],
                readonly_paths: vec!["/proc/sys".into()],
                ..Default::default()
            },
            "wc -c < /proc/timer_list; (echo x > /proc/sys/kernel/domainname) 2>/dev/null || echo ro",
            "0\nro\n",
        ),
        (
            "nnp",
            cri::LinuxContainerSecurityContext {
                no_new_privs: true,
                ..Default::default()
            },
            "grep NoNewPrivs /proc/1/status",
            "NoNewPrivs:\t1\n",
        ),
    ];
    for (name, ctx, check, want) in cases {
        let id = create_container(&mut cri, &pod, &config, with_context(name, &image, ctx))
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e:?}"));
        start_container(&mut cri, &id).await;
        let (_, out) = exec_sh(&mut cri, &id, check).await;
        assert_eq!(out, want, "{name}: {check}");
    }

    remove_pod_checked(&mut cri, &daemon, &pod).await;
}

/// Seccomp as the suite checks it: a localhost profile blocks sethostname even with SYS_ADMIN,
/// the default profile allows it with SYS_ADMIN and blocks it without, Unconfined is no filter,
/// exec'd processes are filtered like the container's own, a bad legacy value is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)] // seccomp_profile_path: the legacy field older kubelets send
async fn seccomp_profiles_filter_system_calls() {
    use cri::security_profile::ProfileType;
    let Some(CriTest {
        env,
        daemon,
        mut cri,
        image,
        registry: _registry,
    }) = CriTest::setup("seccomp_profiles_filter_system_calls").await
    else {
        return;
    };
    let deny = env.state_dir().join("deny-sethostname.json");
    std::fs::write(
        &deny,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .expect("write the localhost profile");
    let config = pod_config("seccomp", &env.state_dir().join("logs"));
    let pod = run_pod(&mut cri, &config).await;
    let profile = |kind: ProfileType, admin: bool| cri::LinuxContainerSecurityContext {
        seccomp: Some(cri::SecurityProfile {
            profile_type: kind as i32,
            localhost_ref: deny.display().to_string(),
        }),
        capabilities: admin.then(|| cri::Capability {
            add_capabilities: vec!["SYS_ADMIN".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let try_sethostname =
        "hostname renamed 2>/dev/null && echo set || echo refused; grep ^Seccomp: /proc/1/status";
    let cases = [
        (
            "localhost",
            profile(ProfileType::Localhost, true),
            "refused\nSeccomp:\t2\n",
        ),
        (
            "default-admin",
            profile(ProfileType::RuntimeDefault, true),
            "set\nSeccomp:\t2\n",
        ),
        (
            "default",
            profile(ProfileType::RuntimeDefault, false),
            "refused\nSeccomp:\t2\n",
        ),
        (
            "unconfined",
            profile(ProfileType::Unconfined, true),
            "set\nSeccomp:\t0\n",
        ),
    ];
    for (name, ctx, want) in cases {
        let id = create_container(&mut cri, &pod, &config, with_context(name, &image, ctx))
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e:?}"));
        start_container(&mut cri, &id).await;
        let (_, out) = exec_sh(&mut cri, &id, try_sethostname).await;
        assert_eq!(out, want, "{name}");
    }
    let legacy = cri::LinuxContainerSecurityContext {
        seccomp_profile_path: "my-profile".into(),
        ..Default::default()
    };
    let r = create_container(&mut cri, &pod, &config, with_context("bad", &image, legacy)).await;
    expect_err(r, Code::InvalidArgument, "seccomp_profile_path");

    remove_pod_checked(&mut cri, &daemon, &pod).await;
}
