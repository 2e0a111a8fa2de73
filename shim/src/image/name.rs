//! Image names as CRI clients write them, normalised the way containerd and the docker CLI do:
//! `busybox` is `docker.io/library/busybox:latest`; `host:5000/app@sha256:…` keeps its digest.
//! Parsing is oci-spec's distribution reference grammar.

use oci_client::Reference;

use super::ImageError;

/// A normalised image reference: registry host, repository, and a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    reference: Reference,
}

impl ImageName {
    /// Parses and normalises `name`; a name with neither tag nor digest gets `:latest`.
    pub fn parse(name: &str) -> Result<Self, ImageError> {
        let reference: Reference = name.parse().map_err(|e| ImageError::Reference {
            reference: name.to_owned(),
            reason: format!("{e}"),
        })?;
        if reference
            .repository()
            .bytes()
            .any(|b| b.is_ascii_uppercase())
        {
            return Err(ImageError::Reference {
                reference: name.to_owned(),
                reason: "repository names must be lowercase".into(),
            });
        }
        Ok(Self { reference })
    }

    /// The registry host as written (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        self.reference.registry()
    }

    /// The repository path inside the registry (`library/busybox`).
    pub fn repository(&self) -> &str {
        self.reference.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.reference.tag()
    }

    pub fn digest(&self) -> Option<&str> {
        self.reference.digest()
    }

    /// `registry/repository`, the part repo tags and repo digests share.
    pub fn repo(&self) -> String {
        format!("{}/{}", self.registry(), self.repository())
    }

    /// The canonical form: `repo@digest` when a digest is given (a tag beside it is only a
    /// hint), else `repo:tag`.
    pub fn canonical(&self) -> String {
        match (self.digest(), self.tag()) {
            (Some(digest), _) => format!("{}@{digest}", self.repo()),
            (None, Some(tag)) => format!("{}:{tag}", self.repo()),
            (None, None) => format!("{}:latest", self.repo()),
        }
    }

    /// The repo tag this name sets when pulled (`None` for a digest-only name).
    pub fn repo_tag(&self) -> Option<String> {
        match (self.digest(), self.tag()) {
            (Some(_), _) => None,
            (None, tag) => Some(format!("{}:{}", self.repo(), tag.unwrap_or("latest"))),
        }
    }

    /// The same repository at another registry host (a mirror), by digest when one is given.
    pub fn at(&self, host: &str, digest: Option<&str>) -> Reference {
        let (host, repo) = (host.to_owned(), self.repository().to_owned());
        match digest.or(self.digest()) {
            Some(d) => Reference::with_digest(host, repo, d.to_owned()),
            None => Reference::with_tag(host, repo, self.tag().unwrap_or("latest").to_owned()),
        }
    }
}

impl std::fmt::Display for ImageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.canonical())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("user/app:v2", "docker.io/user/app:v2"),
            ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
            ("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:latest"),
            ("localhost/app:1", "localhost/app:1"),
        ];
        for (input, want) in cases {
            assert_eq!(
                ImageName::parse(input).unwrap().canonical(),
                want,
                "{input}"
            );
        }
        let digest = format!("sha256:{}", "a".repeat(64));
        let n = ImageName::parse(&format!("quay.io/x/y:1@{digest}")).unwrap();
        assert_eq!(n.canonical(), format!("quay.io/x/y@{digest}"));
        assert_eq!(n.repo_tag(), None);
        assert_eq!(n.repo(), "quay.io/x/y");
        assert_eq!(
            ImageName::parse("busybox").unwrap().repo_tag().as_deref(),
            Some("docker.io/library/busybox:latest")
        );
    }

    #[test]
    fn rejects_bad_names_naming_them() {
        for bad in [
            "",
            "UPPER/case",
            "a b",
            "x@sha256:12",
            "repo:tag:more",
            "/abs",
        ] {
            let err = ImageName::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn mirror_references_keep_the_repository() {
        let n = ImageName::parse("busybox:1").unwrap();
        let m = n.at("mirror.local:5000", None);
        assert_eq!(m.registry(), "mirror.local:5000");
        assert_eq!(m.repository(), "library/busybox");
        assert_eq!(m.tag(), Some("1"));
        let d = format!("sha256:{}", "b".repeat(64));
        assert_eq!(n.at("h", Some(&d)).digest(), Some(d.as_str()));
    }
}
