//! The seed corpus: valid samples of every target's input, committed under `fuzz/corpus/`
//! (beside them, `crash-*` files are inputs that once crashed a target, kept as regressions).
//!
//! `cargo test -p cks-fuzz --test seeds -- --ignored` writes them again (the ISO needs
//! xorriso). The deterministic ones are checked against what would be written on every run.

use std::path::{Path, PathBuf};

use cks_controller::cloudstack::sign;
use cks_fuzz::samples;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// A signed query string, as the `cs` client sends it.
fn signed(pairs: &[(&str, &str)]) -> String {
    let signature = sign::sign(pairs, "fuzz-secret-key");
    let mut all: Vec<(&str, &str)> = pairs.to_vec();
    all.push(("signature", &signature));
    let mut query = String::new();
    for (name, value) in all {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(name);
        query.push('=');
        query.push_str(&sign::encode_value(value, sign::Encoding::Java));
    }
    query
}

/// A query string as a POST: the first two parameters stay in the query, the rest go in the
/// form body (after the `\n` the target splits at).
fn as_post(query: &str) -> String {
    let mut parts = query.splitn(3, '&');
    let (first, second, rest) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    format!("{first}&{second}\n{rest}")
}

/// Seeds that are the same on every run: (target, file name, bytes).
fn deterministic() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let archive = samples::image_archive();
    let api = |s: String| s.into_bytes();
    vec![
        (
            "api_request",
            "list-signed",
            api(signed(&[
                ("apiKey", "fuzz-api-key"),
                ("command", "listKubernetesClusters"),
                ("response", "json"),
                ("page", "1"),
                ("pagesize", "20"),
                ("listall", "true"),
            ])),
        ),
        (
            "api_request",
            "create-post-body",
            api(as_post(&signed(&[
                ("command", "createKubernetesCluster"),
                ("response", "json"),
                ("apiKey", "fuzz-api-key"),
                ("name", "web cluster~1"),
                ("zoneid", "5b1c2f0e-1c3a-4d4e-9f00-000000000001"),
                ("size", "2"),
                ("nodeofferings[0].node", "worker"),
                (
                    "nodeofferings[0].offering",
                    "5b1c2f0e-1c3a-4d4e-9f00-000000000002",
                ),
                ("nodeids", "a,b, c"),
            ]))),
        ),
        (
            "api_request",
            "signature-version-3",
            api(signed(&[
                ("apiKey", "fuzz-api-key"),
                ("command", "deleteKubernetesCluster"),
                ("id", "5b1c2f0e-1c3a-4d4e-9f00-000000000003"),
                ("signatureVersion", "3"),
                ("expires", "2030-01-01T00:00:00+0000"),
            ])),
        ),
        (
            "bundle_manifest",
            "sample",
            samples::bundle_manifest(&archive.tar).to_json(),
        ),
        ("image_archive", "sample", archive.tar.clone()),
    ]
}

const YAML_DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: kubernetes-dashboard
  namespace: kubernetes-dashboard
spec:
  template:
    spec:
      initContainers:
        - name: init
          image: docker.io/library/busybox:1.36
      containers:
        - name: dashboard
          image: docker.io/kubernetesui/dashboard:v2.7.0
          imagePullPolicy: Always
          args: [--auto-generate-certificates]
---
# a comment between documents
---
apiVersion: v1
kind: List
items:
  - apiVersion: batch/v1
    kind: CronJob
    spec:
      jobTemplate:
        spec:
          template:
            spec:
              containers:
                - name: scraper
                  image: &img docker.io/kubernetesui/metrics-scraper:v1.0.8
              ephemeralContainers:
                - name: debug
                  image: *img
";

const YAML_DAEMONSET: &str = "\
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: calico-node, namespace: kube-system}
spec:
  template:
    spec:
      containers:
      - {name: calico-node, image: 'docker.io/calico/node:v3.29.3', imagePullPolicy: IfNotPresent}
      - name: other
        image: \"quay.io/x/y@sha256:0000000000000000000000000000000000000000000000000000000000000000\"
";

#[test]
fn the_deterministic_seeds_are_current() {
    for (target, name, bytes) in deterministic() {
        let path = corpus_dir(target).join(name);
        let committed = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; write the seeds (see this file)", path.display()));
        assert!(
            committed == bytes,
            "{} is stale; write the seeds again (see this file)",
            path.display()
        );
    }
    for target in ["iso_reader", "manifest_yaml"] {
        assert!(
            corpus_dir(target)
                .read_dir()
                .expect("corpus")
                .next()
                .is_some()
        );
    }
}

#[test]
#[ignore = "writes the seed corpus into the source tree: run on purpose"]
fn write_seeds() {
    use cks_fixtures::skip::{Need, require};
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(name), bytes).expect("write a seed");
    };
    for (target, name, bytes) in deterministic() {
        write(target, name, &bytes);
    }
    write("manifest_yaml", "dashboard", YAML_DEPLOYMENT.as_bytes());
    write("manifest_yaml", "calico", YAML_DAEMONSET.as_bytes());

    // A bundle ISO as xorriso writes it (Rock Ridge and Joliet), without the 300 KiB padding.
    if !require("building the seed ISO", &[Need::Tools(&["xorriso"])]) {
        return;
    }
    let archive = samples::image_archive();
    let tree = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(tree.path().join("docker")).expect("mkdir");
    std::fs::write(
        tree.path().join("cks-manifest.json"),
        samples::bundle_manifest(&archive.tar).to_json(),
    )
    .expect("write");
    std::fs::write(tree.path().join(samples::ARCHIVE_PATH), &archive.tar).expect("write");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let iso = out_dir.path().join("seed.iso");
    let out = std::process::Command::new("xorriso")
        .args(["-no_rc", "-report_about", "SORRY", "-outdev"])
        .arg(&iso)
        .args(["-volid", "CDROM", "-joliet", "on", "-padding", "0", "-map"])
        .arg(tree.path())
        .args(["/", "-commit"])
        .output()
        .expect("run xorriso");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    write(
        "iso_reader",
        "bundle",
        &std::fs::read(&iso).expect("read the ISO"),
    );
}

/// The corpus files of `target` that are seeds (valid samples), not `crash-*` inputs kept
/// because they once crashed the target.
fn seeds(target: &str) -> Vec<PathBuf> {
    let mut seeds: Vec<PathBuf> = corpus_dir(target)
        .read_dir()
        .expect("corpus")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("crash-"))
        })
        .collect();
    seeds.sort();
    seeds
}

/// The seeds are valid inputs: each goes the whole way through its parser, so the fuzzers start
/// from the deep end instead of bouncing off the first check.
#[test]
fn every_seed_passes_every_check() {
    use cks_proto::verify::{VerifyOptions, verify_bundle};
    let now = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
    for seed in seeds("api_request") {
        let bytes = std::fs::read(seed).expect("seed");
        let text = String::from_utf8(bytes).expect("UTF-8");
        let (query, body) = text.split_once('\n').unwrap_or((&text, ""));
        let mut pairs = cks_controller::api::params::parse_form(query);
        pairs.extend(cks_controller::api::params::parse_form(body));
        sign::verify(&pairs, "fuzz-secret-key", now).expect("a seed request verifies");
    }
    let manifest = std::fs::read(corpus_dir("bundle_manifest").join("sample")).expect("seed");
    cks_proto::manifest::read_manifest(&manifest).expect("the seed manifest parses");

    let iso = corpus_dir("iso_reader").join("bundle");
    let bundle = cks_proto::iso::IsoBundle::open(&iso).expect("the seed ISO opens");
    assert!(bundle.has_rock_ridge());
    let verified =
        verify_bundle(&bundle, &VerifyOptions::default()).expect("the seed ISO verifies");
    assert_eq!(verified.manifest.images.len(), 2);

    for seed in seeds("manifest_yaml") {
        let text = std::fs::read_to_string(seed).expect("seed");
        let scanned = cks_isobuilder::manifests::scan("seed.yaml", &text).expect("a seed scans");
        assert!(scanned.images.len() >= 2, "{:?}", scanned.images);
    }
    // The image archive seed is the ISO's docker/images.tar: verified above.
    assert_eq!(
        std::fs::read(corpus_dir("image_archive").join("sample")).expect("seed"),
        samples::image_archive().tar
    );
}
