//! Kubernetes manifests: finding their images and pinning `imagePullPolicy`.
//!
//! Every YAML document is parsed (not grepped, as CloudStack's script does). In each document
//! every `containers`, `initContainers` and `ephemeralContainers` list is visited wherever it sits
//! (Pod, Deployment, DaemonSet, CronJob, List items…); each container's `image` is collected and
//! its `imagePullPolicy` set to `IfNotPresent`, so that nodes use the images from the ISO.

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

/// The result of scanning one manifest file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedManifest {
    /// Image references as written in the manifest, in document order, without duplicates.
    pub images: Vec<String>,
    /// The manifest re-serialised with `imagePullPolicy: IfNotPresent` on every container.
    pub rewritten: Vec<u8>,
}

/// A manifest that is not valid YAML, or that the YAML emitter cannot write back once rewritten
/// (some mappings used as keys).
#[derive(Debug, thiserror::Error)]
#[error("manifest {file} {problem} (document {document})")]
pub struct ScanError {
    file: String,
    document: usize,
    problem: &'static str,
    #[source]
    source: serde_yaml_ng::Error,
}

const CONTAINER_LISTS: [&str; 3] = ["initContainers", "containers", "ephemeralContainers"];

/// Scans and rewrites the manifest `text` (named `file` in errors).
///
/// # Errors
/// [`ScanError`] naming the first document that does not parse.
pub fn scan(file: &str, text: &str) -> Result<ScannedManifest, ScanError> {
    let mut images = Vec::new();
    let mut documents = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let mut value = Value::deserialize(document).map_err(|source| ScanError {
            file: file.to_string(),
            document: index + 1,
            problem: "is not valid YAML",
            source,
        })?;
        if value.is_null() {
            continue;
        }
        visit(&mut value, &mut images);
        documents.push((index + 1, value));
    }
    let mut rewritten = String::new();
    for (i, (number, document)) in documents.iter().enumerate() {
        if i > 0 {
            rewritten.push_str("---\n");
        }
        // Not every Value parsed from YAML serialises back (the emitter fails on some mappings
        // used as keys): refuse the manifest rather than put an empty document on the ISO.
        let text = serde_yaml_ng::to_string(document).map_err(|source| ScanError {
            file: file.to_string(),
            document: *number,
            problem: "cannot be written back as YAML",
            source,
        })?;
        rewritten.push_str(&text);
    }
    let mut unique = Vec::new();
    for image in images {
        if !unique.contains(&image) {
            unique.push(image);
        }
    }
    Ok(ScannedManifest {
        images: unique,
        rewritten: rewritten.into_bytes(),
    })
}

fn visit(value: &mut Value, images: &mut Vec<String>) {
    match value {
        Value::Mapping(map) => {
            for key in CONTAINER_LISTS {
                if let Some(Value::Sequence(containers)) = map.get_mut(key) {
                    for container in containers.iter_mut() {
                        if let Value::Mapping(c) = container {
                            pin_container(c, images);
                        }
                    }
                }
            }
            for (_, child) in map.iter_mut() {
                visit(child, images);
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(|v| visit(v, images)),
        Value::Tagged(tagged) => visit(&mut tagged.value, images),
        _ => {}
    }
}

fn pin_container(container: &mut Mapping, images: &mut Vec<String>) {
    let Some(Value::String(image)) = container.get("image") else {
        return;
    };
    images.push(image.trim().to_string());
    container.insert(
        Value::String("imagePullPolicy".into()),
        Value::String("IfNotPresent".into()),
    );
}

/// Guesses the CNI from a network manifest's images (`calico`, `cilium`, …), else `custom`.
pub fn guess_cni(images: &[String]) -> String {
    const KNOWN: [&str; 7] = [
        "calico",
        "cilium",
        "weave",
        "flannel",
        "antrea",
        "kube-router",
        "canal",
    ];
    KNOWN
        .iter()
        .find(|name| images.iter().any(|i| i.contains(*name)))
        .map_or_else(|| "custom".to_string(), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAEMONSET: &str = r#"
# image: fake/commented:1
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data:
  note: "image: fake/in-a-string:1"
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: calico-node
spec:
  template:
    spec:
      initContainers:
        - name: install-cni
          image: "docker.io/calico/cni:v3.29.1"
          imagePullPolicy: Always
      containers:
        - name: calico-node
          image: 'docker.io/calico/node:v3.29.1'
        - name: sidecar
          image: docker.io/calico/cni:v3.29.1
---
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: c}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers:
            - {name: j, image: busybox}
"#;

    #[test]
    fn finds_images_in_every_document_and_container_list() {
        let scanned = scan("network.yaml", DAEMONSET).unwrap();
        assert_eq!(
            scanned.images,
            [
                "docker.io/calico/cni:v3.29.1",
                "docker.io/calico/node:v3.29.1",
                "busybox"
            ]
        );
    }

    #[test]
    fn pins_pull_policy_everywhere_and_keeps_other_content() {
        let scanned = scan("network.yaml", DAEMONSET).unwrap();
        let text = String::from_utf8(scanned.rewritten).unwrap();
        assert_eq!(text.matches("imagePullPolicy: IfNotPresent").count(), 4);
        assert!(!text.contains("Always"));
        assert!(
            text.contains("image: fake/in-a-string:1"),
            "strings kept: {text}"
        );
        // The rewrite is itself valid and stable.
        let again = scan("network.yaml", &text).unwrap();
        assert_eq!(again.rewritten, text.as_bytes());
    }

    #[test]
    fn invalid_yaml_names_the_document() {
        let err = scan("dashboard.yaml", "a: 1\n---\nb: [unclosed\n").unwrap_err();
        assert!(err.to_string().contains("dashboard.yaml"));
        assert!(err.to_string().contains("document 2"));
    }

    /// Found by the `manifest_yaml` fuzz target: the rewrite of a document with some mappings as
    /// keys fails in the YAML emitter, and was silently empty, so the ISO would have carried an
    /// empty manifest while its images were bundled.
    #[test]
    fn a_document_that_cannot_be_written_back_is_refused_not_emptied() {
        let text = "spec:\n  containers:\n    - {name: x, image: busybox}\nx:\n  ? a: b\n  : c\n";
        let err = scan("odd.yaml", text).unwrap_err();
        assert!(
            err.to_string()
                .contains("odd.yaml cannot be written back as YAML (document 1)"),
            "{err}"
        );
        let err = scan("odd.yaml", &format!("a: 1\n---\n---\n{text}")).unwrap_err();
        assert!(err.to_string().contains("(document 3)"), "{err}");
    }

    #[test]
    fn cni_is_guessed_from_images() {
        assert_eq!(guess_cni(&["docker.io/calico/node:v3".into()]), "calico");
        assert_eq!(guess_cni(&["example/x:1".into()]), "custom");
    }
}
