//! The user a container runs as: uid, gid and additional gids from the CRI security context
//! (`run_as_user`, `run_as_username`, `run_as_group`, `supplemental_groups`) or the image's
//! `User` (`uid`, `name`, `uid:gid`, `name:group`), names resolved in the container's rootfs
//! /etc/passwd and /etc/group (read by `etc_files.rs`), as containerd's `WithUser` and
//! `WithAdditionalGIDs` do.

use std::path::Path;

use oci_spec::runtime::User;
use vessel_protocols::cri;

use super::etc_files::EtcFiles;
use super::{ImageDefaults, SpecError};

const CTX: &str = "linux.security_context";

/// Who a process runs as before the groups are added: uid, primary gid, and the user's name
/// when known (to find its groups).
struct Identity {
    uid: u32,
    gid: u32,
    name: Option<String>,
}

/// The OCI user of a container.
pub(super) fn resolve(
    rootfs: &Path,
    container: &cri::ContainerConfig,
    image: &ImageDefaults,
) -> Result<User, SpecError> {
    let ctx = container
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    if ctx.run_as_group.is_some() && ctx.run_as_user.is_none() && ctx.run_as_username.is_empty() {
        // As containerd: a group alone would silently pair with the image's user.
        return Err(SpecError::invalid(
            format!("{CTX}.run_as_group"),
            "is set without run_as_user or run_as_username",
        ));
    }
    let mut etc = EtcFiles::new(rootfs);
    let mut who = identity(&mut etc, &ctx, image)?;
    if let Some(group) = &ctx.run_as_group {
        who.gid = id_value(&format!("{CTX}.run_as_group"), group.value)?;
    }
    let mut gids = vec![who.gid];
    let strict = ctx.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32;
    if let (Some(name), false) = (&who.name, strict) {
        gids.extend(
            etc.group()?
                .iter()
                .filter(|g| g.members.iter().any(|m| m == name))
                .map(|g| g.gid),
        );
    }
    for (i, g) in ctx.supplemental_groups.iter().enumerate() {
        gids.push(id_value(&format!("{CTX}.supplemental_groups[{i}]"), *g)?);
    }
    let mut seen = std::collections::HashSet::new();
    gids.retain(|g| seen.insert(*g));
    let mut user = User::default();
    user.set_uid(who.uid);
    user.set_gid(who.gid);
    user.set_additional_gids(Some(gids));
    Ok(user)
}

/// The identity from the security context, else the image, else root.
fn identity(
    etc: &mut EtcFiles<'_>,
    ctx: &cri::LinuxContainerSecurityContext,
    image: &ImageDefaults,
) -> Result<Identity, SpecError> {
    if !ctx.run_as_username.is_empty() {
        let entry = etc.user_by_name(&ctx.run_as_username)?.ok_or_else(|| {
            SpecError::invalid(
                format!("{CTX}.run_as_username"),
                format!(
                    "user {:?} not found in the image's /etc/passwd",
                    ctx.run_as_username
                ),
            )
        })?;
        return Ok(Identity {
            uid: entry.uid,
            gid: entry.gid,
            name: Some(entry.name),
        });
    }
    if let Some(uid) = &ctx.run_as_user {
        let uid = id_value(&format!("{CTX}.run_as_user"), uid.value)?;
        return by_uid(etc, uid);
    }
    if !image.user.is_empty() {
        return image_identity(etc, &image.user);
    }
    by_uid(etc, 0)
}

/// A numeric user: its passwd entry's gid and name when it has one, else gid 0.
fn by_uid(etc: &mut EtcFiles<'_>, uid: u32) -> Result<Identity, SpecError> {
    Ok(match etc.user_by_uid(uid)? {
        Some(entry) => Identity {
            uid,
            gid: entry.gid,
            name: Some(entry.name),
        },
        None => Identity {
            uid,
            gid: 0,
            name: None,
        },
    })
}

/// The image's `User`: `uid`, `name`, `uid:gid`, `name:group` (and the mixed forms). Names
/// must exist in the rootfs; numbers need not.
fn image_identity(etc: &mut EtcFiles<'_>, spec: &str) -> Result<Identity, SpecError> {
    let fail = |reason: String| SpecError::ImageUser {
        user: spec.to_owned(),
        reason,
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(fail("expected user[:group]".into()));
    }
    let mut who = match user.parse::<u32>() {
        Ok(uid) => by_uid(etc, uid)?,
        Err(_) => {
            let entry = etc
                .user_by_name(user)?
                .ok_or_else(|| fail(format!("user {user:?} not found in /etc/passwd")))?;
            Identity {
                uid: entry.uid,
                gid: entry.gid,
                name: Some(entry.name),
            }
        }
    };
    if let Some(group) = group {
        who.gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => etc
                .group()?
                .iter()
                .find(|g| g.name == group)
                .map(|g| g.gid)
                .ok_or_else(|| fail(format!("group {group:?} not found in /etc/group")))?,
        };
    }
    Ok(who)
}

/// A CRI id (int64) as a uid/gid.
fn id_value(field: &str, value: i64) -> Result<u32, SpecError> {
    u32::try_from(value)
        .map_err(|_| SpecError::invalid(field, format!("{value} is not a valid id (0..2^32)")))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{container, security_context, with_security, Rootfs};
    use super::*;

    fn ctx_user(
        rootfs: &Path,
        ctx: cri::LinuxContainerSecurityContext,
        image_user: &str,
    ) -> Result<User, SpecError> {
        let image = ImageDefaults {
            user: image_user.into(),
            ..Default::default()
        };
        resolve(rootfs, &with_security(container(&["x"]), ctx), &image)
    }

    /// (uid, gid, additional gids)
    type Ids = (u32, u32, Vec<u32>);

    fn ids(u: &User) -> Ids {
        (
            u.uid(),
            u.gid(),
            u.additional_gids().clone().unwrap_or_default(),
        )
    }

    fn i64v(value: i64) -> Option<cri::Int64Value> {
        Some(cri::Int64Value { value })
    }

    #[test]
    fn image_user_forms() {
        let rootfs = Rootfs::new();
        let cases: [(&str, Ids); 9] = [
            ("", (0, 0, vec![0, 10])),
            ("0", (0, 0, vec![0, 10])),
            ("app", (1000, 1001, vec![1001, 10, 44])),
            ("1000", (1000, 1001, vec![1001, 10, 44])),
            ("1000:5", (1000, 5, vec![5, 10, 44])),
            ("app:video", (1000, 44, vec![44, 10])),
            ("daemon:0", (1, 0, vec![0, 63])),
            ("4242", (4242, 0, vec![0])),
            ("4242:4343", (4242, 4343, vec![4343])),
        ];
        for (spec, want) in cases {
            let u = ctx_user(rootfs.path(), security_context(), spec).unwrap();
            assert_eq!(ids(&u), want, "image user {spec:?}");
        }
    }

    #[test]
    fn unresolvable_image_users_fail() {
        let rootfs = Rootfs::new();
        for spec in ["nobody", "app:nogroup", ":1", "1:", "ghost:0"] {
            let e = ctx_user(rootfs.path(), security_context(), spec).unwrap_err();
            assert!(
                matches!(&e, SpecError::ImageUser { user, .. } if user == spec),
                "{spec}: {e}"
            );
        }
    }

    #[test]
    fn security_context_overrides_the_image() {
        let rootfs = Rootfs::new();
        let cases = [
            (
                cri::LinuxContainerSecurityContext {
                    run_as_user: i64v(1000),
                    ..security_context()
                },
                (1000, 1001, vec![1001, 10, 44]),
            ),
            (
                cri::LinuxContainerSecurityContext {
                    run_as_username: "app".into(),
                    run_as_user: i64v(7),
                    ..security_context()
                },
                (1000, 1001, vec![1001, 10, 44]),
            ),
            (
                cri::LinuxContainerSecurityContext {
                    run_as_user: i64v(1000),
                    run_as_group: i64v(3000),
                    supplemental_groups: vec![4000, 10, 4000],
                    ..security_context()
                },
                (1000, 3000, vec![3000, 10, 44, 4000]),
            ),
            (
                cri::LinuxContainerSecurityContext {
                    run_as_user: i64v(1000),
                    supplemental_groups: vec![4000],
                    supplemental_groups_policy: cri::SupplementalGroupsPolicy::Strict as i32,
                    ..security_context()
                },
                (1000, 1001, vec![1001, 4000]),
            ),
            (
                cri::LinuxContainerSecurityContext {
                    run_as_user: i64v(2000),
                    run_as_group: i64v(5),
                    ..security_context()
                },
                (2000, 5, vec![5]),
            ),
        ];
        for (ctx, want) in cases {
            let u = ctx_user(rootfs.path(), ctx.clone(), "nogroup-user").unwrap();
            assert_eq!(ids(&u), want, "{ctx:?}");
        }
    }

    #[test]
    fn bad_security_context_ids_name_the_field() {
        let rootfs = Rootfs::new();
        let cases = [
            (
                cri::LinuxContainerSecurityContext {
                    run_as_username: "ghost".into(),
                    ..security_context()
                },
                "linux.security_context.run_as_username",
            ),
            (
                cri::LinuxContainerSecurityContext {
                    run_as_user: i64v(-1),
                    ..security_context()
                },
                "linux.security_context.run_as_user",
            ),
            (
                cri::LinuxContainerSecurityContext {
                    run_as_user: i64v(1 << 32),
                    ..security_context()
                },
                "linux.security_context.run_as_user",
            ),
            (
                cri::LinuxContainerSecurityContext {
                    run_as_user: i64v(1),
                    run_as_group: i64v(-5),
                    ..security_context()
                },
                "linux.security_context.run_as_group",
            ),
            (
                // A group needs a user (the image's does not count), as in containerd.
                cri::LinuxContainerSecurityContext {
                    run_as_group: i64v(5),
                    ..security_context()
                },
                "linux.security_context.run_as_group",
            ),
            (
                cri::LinuxContainerSecurityContext {
                    supplemental_groups: vec![1, -2],
                    ..security_context()
                },
                "linux.security_context.supplemental_groups[1]",
            ),
        ];
        for (ctx, want) in cases {
            let e = ctx_user(rootfs.path(), ctx, "").unwrap_err();
            assert!(
                matches!(&e, SpecError::Invalid { field, .. } if field == want),
                "want {want}: {e}"
            );
        }
    }

    #[test]
    fn without_rootfs_numbers_work_and_names_fail() {
        let none = Path::new("");
        let u = ctx_user(none, security_context(), "").unwrap();
        assert_eq!(ids(&u), (0, 0, vec![0]));
        let u = ctx_user(none, security_context(), "5:6").unwrap();
        assert_eq!(ids(&u), (5, 6, vec![6]));
        assert!(ctx_user(none, security_context(), "app").is_err());
        // A rootfs without /etc files is the same.
        let empty = tempfile::tempdir().unwrap();
        let u = ctx_user(empty.path(), security_context(), "1000").unwrap();
        assert_eq!(ids(&u), (1000, 0, vec![0]));
    }
}
