//! The grammar of an image reference while images come from local OCI layouts:
//! `/abs/path/to/layout` or `/abs/path/to/layout:tag`.

use std::path::PathBuf;

use super::ImageError;

/// A parsed image reference: the layout directory and the tag, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRef {
    pub dir: PathBuf,
    pub tag: Option<String>,
}

/// Parses `/abs/path/to/layout` or `/abs/path/to/layout:tag`. A `:` in the last path
/// component starts the tag; a tag is `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}` (the image-spec's).
pub fn parse_reference(reference: &str) -> Result<LayoutRef, ImageError> {
    let invalid = |reason: &str| ImageError::Reference {
        reference: reference.to_owned(),
        reason: reason.to_owned(),
    };
    if !reference.starts_with('/') {
        return Err(invalid(
            "expected the absolute path of an OCI image layout, optionally followed by :tag",
        ));
    }
    let last_slash = reference.rfind('/').unwrap_or(0);
    let Some(colon) = reference[last_slash..].rfind(':').map(|i| i + last_slash) else {
        return Ok(LayoutRef {
            dir: PathBuf::from(reference),
            tag: None,
        });
    };
    let (dir, tag) = (&reference[..colon], &reference[colon + 1..]);
    let valid_tag = tag.len() <= 128
        && tag.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
        });
    if tag.is_empty() || !valid_tag {
        return Err(invalid(
            "the tag must match [A-Za-z0-9_][A-Za-z0-9._-]{0,127}",
        ));
    }
    Ok(LayoutRef {
        dir: PathBuf::from(dir),
        tag: Some(tag.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn parses_references() {
        let r = parse_reference("/var/lib/images/busybox").unwrap();
        assert_eq!(r.dir, Path::new("/var/lib/images/busybox"));
        assert_eq!(r.tag, None);
        let r = parse_reference("/var/lib/images/busybox:1.36.1-musl").unwrap();
        assert_eq!(r.dir, Path::new("/var/lib/images/busybox"));
        assert_eq!(r.tag.as_deref(), Some("1.36.1-musl"));
        // A colon in an earlier component is part of the path.
        let r = parse_reference("/srv/a:b/layout").unwrap();
        assert_eq!(r.dir, Path::new("/srv/a:b/layout"));
        assert_eq!(r.tag, None);
        let r = parse_reference("/srv/a:b/layout:latest").unwrap();
        assert_eq!(r.dir, Path::new("/srv/a:b/layout"));
        assert_eq!(r.tag.as_deref(), Some("latest"));

        for bad in [
            "busybox:latest",
            "docker.io/library/busybox",
            "relative/path",
            "/layout:",
            "/layout:-bad",
            "/layout:bad tag",
        ] {
            let err = parse_reference(bad).unwrap_err();
            assert!(matches!(err, ImageError::Reference { .. }), "{bad}: {err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
        assert!(parse_reference(&format!("/l:{}", "t".repeat(129))).is_err());
    }
}
