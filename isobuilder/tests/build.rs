//! End-to-end builds against real local neighbours: a docker-registry, a file server, xorriso,
//! containerd. Nothing leaves 127.0.0.1.

mod common;

use std::process::Command;

use cks_fixtures::registry::RegistryAuth;
use cks_isobuilder::build::BuildError;
use cks_isobuilder::fetch::FetchError;
use cks_isobuilder::inspect;
use cks_proto::ids::Arch;
use cks_proto::iso::IsoBundle;
use cks_proto::verify::BundleSource;
use common::*;

#[test]
fn builds_a_verified_bundle_whose_images_import_into_containerd_with_registry_digests() {
    let up = upstream(RegistryAuth::None);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let output = build(
        &spec_for(&up, "amd64"),
        &options(&out, &work.path().join("cache")),
    )
    .unwrap();

    assert_eq!(output.iso.file_name().unwrap(), "setup-v1.33.1-x86_64.iso");
    let sums = std::fs::read_to_string(&output.sha256_file).unwrap();
    assert_eq!(
        sums,
        format!("{}  setup-v1.33.1-x86_64.iso\n", output.sha256.hex())
    );
    assert_eq!(
        listing(&out),
        [
            "setup-v1.33.1-x86_64.iso",
            "setup-v1.33.1-x86_64.iso.sha256"
        ]
    );

    // The ISO verifies, carries the CKS tree and the label stock nodes look for.
    let verified = inspect::verify_iso(&output.iso, None).unwrap();
    let bundle = IsoBundle::open(&output.iso).unwrap();
    assert_eq!(bundle.volume_id(), "CDROM");
    let paths: Vec<String> = bundle
        .list_files()
        .unwrap()
        .into_iter()
        .map(|f| f.path)
        .collect();
    for expected in [
        "10-kubeadm.conf",
        "cks-manifest.json",
        "cni/cni-plugins-amd64.tgz",
        "cri-tools/crictl-linux-amd64.tar.gz",
        "dashboard.yaml",
        "docker/images.tar",
        "etcd/etcd-linux-amd64.tar.gz",
        "k8s/kubeadm",
        "k8s/kubectl",
        "k8s/kubelet",
        "kubelet.service",
        "network.yaml",
    ] {
        assert!(
            paths.contains(&expected.to_string()),
            "{expected} missing from {paths:?}"
        );
    }
    let kubeadm = bundle
        .list_files()
        .unwrap()
        .into_iter()
        .find(|f| f.path == "k8s/kubeadm")
        .unwrap();
    assert_eq!(kubeadm.mode, Some(0o755));

    // Every image of the release and of the manifests, with the registry's per-arch digest.
    let manifest = verified.manifest;
    assert_eq!(manifest.arch, Arch::Amd64);
    assert_eq!(manifest.cni, "calico");
    let mut refs: Vec<String> = manifest
        .images
        .iter()
        .map(|i| i.reference.clone())
        .collect();
    refs.sort();
    let mut expected = up.all_references();
    expected.sort();
    assert_eq!(refs, expected);
    for image in &up.images {
        let entry = manifest
            .images
            .iter()
            .find(|i| i.reference == image.reference())
            .unwrap();
        assert_eq!(
            entry.manifest_digest.oci(),
            image.manifest_for("amd64").unwrap().manifest.digest
        );
    }

    // Manifests were rewritten to use the bundled images.
    let net = work.path().join("network.yaml");
    extract(&output.iso, "network.yaml", &net);
    let text = std::fs::read_to_string(&net).unwrap();
    assert!(text.contains("imagePullPolicy: IfNotPresent"));
    assert!(!text.contains("imagePullPolicy: Always"));

    // The stock node loop imports them into a real containerd, names and digests intact.
    if !cks_fixtures::skip::require(
        "containerd import",
        &[
            cks_fixtures::skip::Need::Root,
            cks_fixtures::skip::Need::Tools(&["containerd", "ctr"]),
        ],
    ) {
        return;
    }
    let containerd = cks_fixtures::containerd::Containerd::start().unwrap();
    let docker = work.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    for f in manifest
        .files
        .iter()
        .filter(|f| f.path.starts_with("docker/"))
    {
        let dest = work.path().join(&f.path);
        extract(&output.iso, &f.path, &dest);
        containerd.import(&dest).unwrap();
    }
    let imported = containerd.images().unwrap();
    for entry in &manifest.images {
        let found = imported.iter().find(|(name, _)| name == &entry.reference);
        assert_eq!(
            found.map(|(_, d)| d.clone()),
            Some(entry.manifest_digest.oci()),
            "{} not imported with its digest; have {imported:?}",
            entry.reference
        );
    }
}

#[test]
fn two_builds_with_other_caches_clocks_and_umasks_are_byte_identical() {
    let up = upstream(RegistryAuth::None);
    let work = tempfile::tempdir().unwrap();
    let first = build(
        &spec_for(&up, "amd64"),
        &options(&work.path().join("a"), &work.path().join("cache-a")),
    )
    .unwrap();
    // Later, through the CLI, another cache, another umask, from another working directory.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let spec = up.spec_file("amd64", "").unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 077 && cd / && exec {} build {} --out {} --cache {} --json",
            isobuilder_bin().display(),
            spec.display(),
            work.path().join("b").display(),
            work.path().join("cache-b").display()
        ))
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["sha256"], first.sha256.hex());
    let second = std::fs::read(work.path().join("b/setup-v1.33.1-x86_64.iso")).unwrap();
    assert_eq!(cks_proto::ids::Sha256Digest::of(&second), first.sha256);
}

#[test]
fn shared_layers_are_downloaded_and_stored_once() {
    let up = upstream(RegistryAuth::None);
    let work = tempfile::tempdir().unwrap();
    up.registry.clear_access_log();
    let output = build(
        &spec_for(&up, "amd64"),
        &options(&work.path().join("out"), &work.path().join("cache")),
    )
    .unwrap();
    up.registry.sync_access_log().unwrap();
    let m = &output.manifest;
    // The kube-* images share a base layer: fetched once, stored once, needed four times.
    let mut uses = std::collections::BTreeMap::new();
    for i in &m.images {
        for b in &i.blobs {
            *uses.entry(b.clone()).or_insert(0) += 1;
        }
    }
    let shared: Vec<_> = uses
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(d, _)| d.clone())
        .collect();
    assert!(!shared.is_empty(), "the fixture set has shared layers");
    for digest in &shared {
        assert_eq!(
            up.registry.blob_get_count(&digest.oci()),
            1,
            "{digest} fetched more than once"
        );
    }
    assert!(m.per_image_blob_bytes() > m.unique_blob_bytes());
    let archive = m.file("docker/images.tar").unwrap();
    // The archive is the unique blobs plus tar headers, not one copy per image.
    assert!(archive.size < m.unique_blob_bytes() + 2048 * (m.blobs.len() as u64 + 8));
}

#[test]
fn a_corrupted_download_aborts_with_url_and_both_digests_and_writes_no_iso() {
    let up = upstream(RegistryAuth::None);
    let release = &up.releases[0];
    let kubelet = release.files.artifact("kubelet").unwrap();
    up.files.corrupt(&kubelet.path);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let err = build(
        &spec_for(&up, "amd64"),
        &options(&out, &work.path().join("cache")),
    )
    .unwrap_err();
    let text = chain(&err);
    assert!(
        matches!(
            &err,
            BuildError::Fetch {
                source: FetchError::ChecksumMismatch { .. },
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains(&release.url(&kubelet.path)), "{text}");
    assert!(text.contains(&kubelet.sha256), "expected digest in: {text}");
    assert!(
        listing(&out).is_empty(),
        "no ISO, no temp file: {:?}",
        listing(&out)
    );
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let up = upstream(RegistryAuth::None);
    let kubeadm = up.releases[0].files.artifact("kubeadm").unwrap().clone();
    up.files
        .cut_after(&kubeadm.path, (kubeadm.data.len() / 2) as u64);
    let work = tempfile::tempdir().unwrap();
    let output = build(
        &spec_for(&up, "amd64"),
        &options(&work.path().join("out"), &work.path().join("cache")),
    )
    .unwrap();
    assert_eq!(
        output.manifest.file("k8s/kubeadm").unwrap().sha256.hex(),
        kubeadm.sha256
    );
    let requests = up.files.requests_for(&kubeadm.path);
    assert!(
        requests.iter().any(|r| r
            .range
            .as_deref()
            .is_some_and(|h| h.starts_with("bytes=") && h != "bytes=0-")),
        "no resumed request in {requests:?}"
    );
}

#[test]
fn a_missing_file_and_an_unreachable_registry_are_named() {
    let up = upstream(RegistryAuth::None);
    let work = tempfile::tempdir().unwrap();
    let crictl = up.releases[0].files.artifact("crictl").unwrap().clone();
    up.files.remove(&crictl.path);
    let err = build(
        &spec_for(&up, "amd64"),
        &options(&work.path().join("out"), &work.path().join("c1")),
    )
    .unwrap_err();
    let text = chain(&err);
    assert!(
        text.contains("cri-tools/crictl-linux-amd64.tar.gz"),
        "{text}"
    );
    assert!(text.contains("404"), "{text}");
    up.files.put(&crictl.path, crictl.data.clone());

    let dead = up
        .spec_text("amd64")
        .replace(&up.registry.url(), "http://127.0.0.1:9");
    let spec = cks_isobuilder::spec::ReleaseSpec::parse(&dead, std::path::Path::new(".")).unwrap();
    let out = work.path().join("out2");
    let err = build(&spec, &options(&out, &work.path().join("c2"))).unwrap_err();
    let text = chain(&err);
    assert!(
        text.contains("unreachable") && text.contains("127.0.0.1:9"),
        "{text}"
    );
    assert!(listing(&out).is_empty());
}

#[test]
fn arm64_builds_take_arm64_binaries_and_images_and_refuse_amd64_only_images() {
    let amd64_only = cks_fixtures::oci::ImageSpec::new("docker.io", "example/amd64-only", "1.0")
        .arches(&["amd64"])
        .layer(cks_fixtures::oci::LayerSpec::Random {
            seed: 99,
            size: 1024,
        });
    let up = Upstream::start_with(RegistryAuth::None, &[amd64_only], 1).unwrap();
    let work = tempfile::tempdir().unwrap();
    let output = build(
        &spec_for(&up, "arm64"),
        &options(&work.path().join("out"), &work.path().join("cache")),
    )
    .unwrap();
    assert_eq!(output.iso.file_name().unwrap(), "setup-v1.33.1-aarch64.iso");
    let arm = up
        .releases
        .iter()
        .find(|r| r.files.arch == "arm64")
        .unwrap();
    assert_eq!(
        output.manifest.file("k8s/kubelet").unwrap().sha256.hex(),
        arm.files.artifact("kubelet").unwrap().sha256
    );
    assert!(output.manifest.file("cni/cni-plugins-arm64.tgz").is_some());
    for image in &output.manifest.images {
        assert_eq!(image.platform.architecture, "arm64", "{}", image.reference);
    }

    let text = format!("{}\n", up.spec_text("arm64")).replace(
        "kubeadm = true",
        "kubeadm = true\nextra = [\"docker.io/example/amd64-only:1.0\"]",
    );
    let spec = cks_isobuilder::spec::ReleaseSpec::parse(&text, std::path::Path::new(".")).unwrap();
    let err = build(
        &spec,
        &options(&work.path().join("out2"), &work.path().join("cache")),
    )
    .unwrap_err();
    let text = chain(&err);
    assert!(
        text.contains("example/amd64-only") && text.contains("arm64"),
        "{text}"
    );
}

#[test]
fn offline_builds_use_the_cache_alone_and_list_everything_missing() {
    let up = upstream(RegistryAuth::None);
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let online = build(
        &spec_for(&up, "amd64"),
        &options(&work.path().join("a"), &cache),
    )
    .unwrap();

    let mut opts = options(&work.path().join("b"), &cache);
    opts.offline = true;
    let offline = build(&spec_for(&up, "amd64"), &opts).unwrap();
    assert_eq!(offline.sha256, online.sha256);

    let mut opts = options(&work.path().join("c"), &work.path().join("empty"));
    opts.offline = true;
    let err = build(&spec_for(&up, "amd64"), &opts).unwrap_err();
    let BuildError::Offline { missing } = &err else {
        panic!("expected Offline, got {}", chain(&err));
    };
    let text = missing.join("\n");
    for needle in ["k8s/kubeadm", "network.yaml", "cni/cni-plugins-amd64.tgz"] {
        assert!(text.contains(needle), "{needle} not listed in {text}");
    }
}

#[test]
fn verify_names_a_flipped_byte() {
    let up = upstream(RegistryAuth::None);
    let work = tempfile::tempdir().unwrap();
    let output = build(
        &spec_for(&up, "amd64"),
        &options(&work.path().join("out"), &work.path().join("cache")),
    )
    .unwrap();
    let ok = Command::new(isobuilder_bin())
        .arg("verify")
        .arg(&output.iso)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // Flip one byte in the middle of the kubelet binary's data.
    let mut bytes = std::fs::read(&output.iso).unwrap();
    let arm = &up.releases[0].files.artifact("kubelet").unwrap().data;
    let at = bytes
        .windows(arm.len())
        .position(|w| w == &arm[..])
        .unwrap()
        + arm.len() / 2;
    bytes[at] ^= 0x01;
    let broken = work.path().join("broken.iso");
    std::fs::write(&broken, &bytes).unwrap();
    let failed = Command::new(isobuilder_bin())
        .arg("verify")
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("k8s/kubelet"), "{stderr}");

    // And inside an image layer of the archive.
    let mut bytes = std::fs::read(&output.iso).unwrap();
    let layer = up.images[0].manifest_for("amd64").unwrap().layers[0].clone();
    let data = std::fs::read(
        work.path()
            .join("cache/blobs/sha256")
            .join(layer.digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    let at = bytes.windows(64).position(|w| w == &data[..64]).unwrap() + data.len() / 2;
    bytes[at] ^= 0x80;
    std::fs::write(&broken, &bytes).unwrap();
    let failed = Command::new(isobuilder_bin())
        .arg("verify")
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains(layer.digest.trim_start_matches("sha256:"))
            || stderr.contains("docker/images.tar"),
        "{stderr}"
    );
}

#[test]
fn registries_with_basic_and_bearer_token_auth() {
    for auth in [
        RegistryAuth::basic("builder", "s3cret"),
        RegistryAuth::token("builder", "s3cret", false),
    ] {
        let up = upstream(auth);
        let work = tempfile::tempdir().unwrap();
        let pw = work.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let host = up.registry.addr();
        let _ = host;
        let auth_table = format!(
            "[images.auth.\"registry.k8s.io\"]\nusername = \"builder\"\npassword_file = \"{0}\"\n[images.auth.\"docker.io\"]\nusername = \"builder\"\npassword_file = \"{0}\"\n",
            pw.display()
        );
        let spec_text = format!("{}\n{auth_table}", up.spec_text("amd64"));
        let spec = cks_isobuilder::spec::ReleaseSpec::parse(&spec_text, std::path::Path::new("."))
            .unwrap();
        let output = build(
            &spec,
            &options(&work.path().join("out"), &work.path().join("cache")),
        )
        .unwrap();
        assert_eq!(output.manifest.images.len(), up.images.len());
        if up.registry.token_url().is_some() {
            assert!(!up.registry.token_requests().is_empty(), "bearer flow used");
        }

        // Without credentials the registry's refusal is named.
        let spec = spec_for(&up, "amd64");
        let err = build(
            &spec,
            &options(&work.path().join("out2"), &work.path().join("cache2")),
        )
        .unwrap_err();
        let text = chain(&err);
        assert!(text.contains("refused access"), "{text}");
        assert!(!text.contains("s3cret"));
    }
}

#[test]
fn per_image_layout_matches_cks_and_is_larger() {
    let up = upstream(RegistryAuth::None);
    let work = tempfile::tempdir().unwrap();
    let shared = build(
        &spec_for(&up, "amd64"),
        &options(&work.path().join("a"), &work.path().join("cache")),
    )
    .unwrap();
    let text = up
        .spec_text("amd64")
        .replace("kubeadm = true", "kubeadm = true\nlayout = \"per-image\"");
    let spec = cks_isobuilder::spec::ReleaseSpec::parse(&text, std::path::Path::new(".")).unwrap();
    let per_image = build(
        &spec,
        &options(&work.path().join("b"), &work.path().join("cache")),
    )
    .unwrap();
    assert!(
        per_image
            .manifest
            .file("docker/kube-apiserver:v1.33.1.tar")
            .is_some()
    );
    assert!(per_image.manifest.file("docker/pause:3.10.tar").is_some());
    inspect::verify_iso(&per_image.iso, None).unwrap();
    assert!(
        per_image.size > shared.size,
        "{} vs {}",
        per_image.size,
        shared.size
    );
}

#[test]
fn the_images_command_lists_what_would_be_bundled() {
    let up = upstream(RegistryAuth::None);
    let work = tempfile::tempdir().unwrap();
    let spec = up.spec_file("amd64", "").unwrap();
    let out = Command::new(isobuilder_bin())
        .args(["images"])
        .arg(&spec)
        .arg("--cache")
        .arg(work.path().join("cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let mut expected = up.all_references();
    expected.sort();
    assert_eq!(listed, expected);
}

#[test]
fn local_manifest_paths_are_read_even_offline() {
    let up = upstream(RegistryAuth::None);
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("calico.yaml");
    std::fs::write(&local, cks_fixtures::release::network_yaml(&up.versions)).unwrap();
    let network_url = format!(
        "url = \"{}{}\"",
        up.files.url(),
        cks_fixtures::release::NETWORK_YAML_PATH
    );
    let text = up
        .spec_text("amd64")
        .replace(&network_url, &format!("path = \"{}\"", local.display()));
    let spec = cks_isobuilder::spec::ReleaseSpec::parse(&text, std::path::Path::new(".")).unwrap();
    let cache = work.path().join("cache");
    let online = build(&spec, &options(&work.path().join("a"), &cache)).unwrap();
    let entry = online.manifest.file("network.yaml").unwrap();
    assert_eq!(entry.source, format!("file://{}", local.display()));

    let mut opts = options(&work.path().join("b"), &cache);
    opts.offline = true;
    let offline = build(&spec, &opts).unwrap();
    assert_eq!(offline.sha256, online.sha256);
}

#[test]
fn the_cks_subcommand_takes_the_scripts_arguments_and_reports_bad_ones_as_usage_errors() {
    let out = Command::new(isobuilder_bin())
        .args([
            "cks",
            "/tmp",
            "1.33",
            "1.6.2",
            "1.33.0",
            "https://x/n.yaml",
            "https://x/d.yaml",
            "setup",
            "s390x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("kubernetes: invalid version") && stderr.contains("s390x"),
        "{stderr}"
    );

    let missing = Command::new(isobuilder_bin())
        .args(["cks", "/tmp", "1.33.1"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(64));
}
