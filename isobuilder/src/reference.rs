//! Image references, normalised the way containerd names images after import.

use std::fmt;

use oci_spec::distribution::Reference;

/// A fully qualified image reference: `registry/repository[:tag][@digest]`.
///
/// `nginx` becomes `docker.io/library/nginx:latest`, as containerd and the kubelet resolve it,
/// so that the name an image gets on import is the name pods ask for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// An unparsable reference.
#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ParseRefError {
    input: String,
    reason: String,
}

impl ImageRef {
    /// Parses and normalises a reference.
    ///
    /// # Errors
    /// [`ParseRefError`] for references a registry would refuse.
    pub fn parse(input: &str) -> Result<Self, ParseRefError> {
        let trimmed = input.trim();
        let parsed: Reference = trimmed.parse().map_err(|e| ParseRefError {
            input: input.to_string(),
            reason: format!("{e}"),
        })?;
        if let Some(d) = parsed.digest()
            && !d.starts_with("sha256:")
        {
            return Err(ParseRefError {
                input: input.to_string(),
                reason: "only sha256 digests are supported".into(),
            });
        }
        // `index.docker.io` is the same registry as `docker.io`; name it the way containerd does.
        let registry = match parsed.registry() {
            "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
            r => r.to_string(),
        };
        let repository = if registry == "docker.io" && !parsed.repository().contains('/') {
            format!("library/{}", parsed.repository())
        } else {
            parsed.repository().to_string()
        };
        Ok(ImageRef {
            registry,
            repository,
            tag: parsed.tag().map(str::to_string),
            digest: parsed.digest().map(str::to_string),
        })
    }

    /// The registry host (`docker.io`, `registry.k8s.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path (`library/nginx`, `coredns/coredns`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest (`sha256:…`), if any.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// `name:tag` from the last path segment, the file name CloudStack's script uses.
    pub fn short_name(&self) -> String {
        let last = self
            .repository
            .rsplit('/')
            .next()
            .unwrap_or(&self.repository);
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{last}:{t}"),
            (None, Some(d)) => format!("{last}@{d}"),
            (None, None) => last.to_string(),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn norm(s: &str) -> String {
        ImageRef::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_hub_short_names_are_normalised() {
        assert_eq!(norm("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(
            norm("kubernetesui/dashboard:v2.7.0"),
            "docker.io/kubernetesui/dashboard:v2.7.0"
        );
        assert_eq!(
            norm("docker.io/calico/node:v3.29.1"),
            "docker.io/calico/node:v3.29.1"
        );
    }

    #[test]
    fn registries_with_ports_and_digests() {
        assert_eq!(
            norm("registry.k8s.io/pause:3.10"),
            "registry.k8s.io/pause:3.10"
        );
        assert_eq!(norm("127.0.0.1:5000/a/b:1"), "127.0.0.1:5000/a/b:1");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("quay.io/x/y@{d}")).unwrap();
        assert_eq!(r.manifest_reference(), d);
        assert_eq!(r.tag(), None);
        let r = ImageRef::parse(&format!("quay.io/x/y:1.0@{d}")).unwrap();
        assert_eq!(r.manifest_reference(), d);
        assert_eq!(r.short_name(), "y:1.0");
    }

    #[test]
    fn bad_references_are_refused() {
        assert!(ImageRef::parse("").is_err());
        assert!(ImageRef::parse("library/Nginx").is_err());
        assert!(ImageRef::parse("nginx:bad tag").is_err());
        assert!(ImageRef::parse("a/b@sha256:short").is_err());
    }
}
