//! `cks-agent install` / `verify` against real bundle trees and ISOs built here with xorriso.
//!
//! The bundle is small but complete: fake k8s binaries, CNI and crictl tarballs, the kubelet
//! unit and drop-in, two manifests, and one OCI archive holding a real (tiny) pause image, with a
//! `cks-manifest.json` that `cks_proto::verify` accepts. Tests that need xorriso, root or
//! containerd say so and return early when they are missing.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use cks_agent::bundle::discover::BundleLocation;
use cks_agent::bundle::mount::OpenedBundle;
use cks_agent::config::{Config, ConfigArgs, FileConfig, MountMode};
use cks_agent::images::{ImageStore, ImageStoreError, StoredImage};
use cks_proto::ids::Sha256Digest;
use cks_proto::manifest::{BundleManifest, MANIFEST_PATH};

mod common;

use common::bundle::{ARCHIVE, PAUSE, TestBundle, host_arch, other_arch};

// === node helpers ===

fn config(root: &Path, bundle: &Path) -> Config {
    let args = ConfigArgs {
        root: Some(root.to_path_buf()),
        bundle: Some(bundle.to_path_buf()),
        ..ConfigArgs::default()
    };
    Config::resolve(&args, FileConfig::default()).expect("config")
}

/// Every path under `root` with its content digest, mode and mtime: "the node's state".
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("meta");
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            if meta.is_dir() {
                stack.push(path);
                out.insert(rel, format!("dir {:o}", meta.permissions().mode()));
            } else {
                let content = std::fs::read(&path).unwrap_or_default();
                out.insert(
                    rel,
                    format!(
                        "{} {:o} {:?}",
                        Sha256Digest::of(&content),
                        meta.permissions().mode(),
                        meta.modified().ok()
                    ),
                );
            }
        }
    }
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[track_caller]
fn assert_installed(root: &Path, version: &str) {
    for name in ["kubeadm", "kubelet", "kubectl"] {
        let path = root.join("opt/bin").join(name);
        assert_eq!(
            std::fs::read_to_string(&path).expect("binary"),
            format!("#!/bin/sh\necho {name} v{version}\n")
        );
        assert_eq!(mode(&path), 0o755, "{}", path.display());
    }
    assert_eq!(mode(&root.join("opt/bin/crictl")), 0o755);
    assert_eq!(mode(&root.join("opt/cni/bin/bridge")), 0o755);
    assert_eq!(mode(&root.join("opt/cni/bin/loopback")), 0o755);
    assert_eq!(mode(&root.join("opt/cni/bin/LICENSE")), 0o644);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/systemd/system/kubelet.service")).expect("unit"),
        "[Service]\nExecStart=/opt/bin/kubelet\nRestart=always\n"
    );
    assert!(
        std::fs::read_to_string(root.join("etc/systemd/system/kubelet.service.d/10-kubeadm.conf"))
            .expect("drop-in")
            .contains("ExecStart=/opt/bin/kubelet $KUBELET_KUBECONFIG_ARGS")
    );
    for manifest in ["network.yaml", "dashboard.yaml"] {
        assert!(
            root.join("var/lib/cks-agent/manifests")
                .join(manifest)
                .is_file()
        );
    }
    assert!(root.join("var/lib/cks-agent/cks-manifest.json").is_file());
    let containerd = std::fs::read_to_string(root.join("etc/containerd/config.toml"))
        .expect("containerd config");
    assert!(
        containerd.contains(&format!("sandbox_image = \"{PAUSE}\"")),
        "{containerd}"
    );
}

/// An [`ImageStore`] that lists what it is given and records the tar members of each import.
#[derive(Default)]
struct RecordingStore {
    imported: RefCell<Vec<Vec<String>>>,
    images: RefCell<Vec<StoredImage>>,
    content: RefCell<Option<BTreeSet<Sha256Digest>>>,
}

impl RecordingStore {
    fn with_images_of(bundle: &Path) -> RecordingStore {
        let store = RecordingStore::default();
        let manifest: BundleManifest =
            serde_json::from_slice(&std::fs::read(bundle.join(MANIFEST_PATH)).expect("read"))
                .expect("manifest");
        for image in manifest.images {
            store.images.borrow_mut().push(StoredImage {
                reference: image.reference,
                digest: image.manifest_digest.oci(),
            });
        }
        store
    }
}

impl ImageStore for RecordingStore {
    fn list_images(&self) -> Result<Vec<StoredImage>, ImageStoreError> {
        Ok(self.images.borrow().clone())
    }

    fn content_digests(&self) -> Result<Option<BTreeSet<Sha256Digest>>, ImageStoreError> {
        Ok(self.content.borrow().clone())
    }

    fn import(&self, _name: &str, archive: &mut dyn Read) -> Result<(), ImageStoreError> {
        let mut bytes = Vec::new();
        archive.read_to_end(&mut bytes).expect("read archive");
        self.imported.borrow_mut().push(tar_members(&bytes));
        Ok(())
    }
}

/// The member paths of a tar, in order.
fn tar_members(bytes: &[u8]) -> Vec<String> {
    tar::Archive::new(bytes)
        .entries()
        .expect("tar")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// What a fresh node's import holds: the layout, every blob of the bundle, the index last.
fn every_member(bundle: &Path) -> Vec<String> {
    let manifest = read_manifest(bundle);
    let mut members = vec!["oci-layout".to_string()];
    members.extend(
        manifest
            .blobs
            .iter()
            .map(|b| format!("blobs/sha256/{}", b.digest.hex())),
    );
    members.push("index.json".to_string());
    members
}

fn read_manifest(bundle: &Path) -> BundleManifest {
    serde_json::from_slice(&std::fs::read(bundle.join(MANIFEST_PATH)).expect("read"))
        .expect("manifest")
}

fn install_with(
    config: &Config,
    store: &dyn ImageStore,
) -> Result<cks_agent::InstallOutcome, cks_agent::AgentError> {
    let location = BundleLocation::from_path(config.bundle.as_ref().expect("bundle"))?;
    let opened = OpenedBundle::open(
        &location,
        MountMode::Auto,
        &config.dev_dir,
        &config.host_path(&config.run_dir),
    )?;
    cks_agent::install(&opened, config, store)
}

fn agent(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cks-agent"))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run cks-agent")
}

// === tests: refusals first ===

#[test]
fn corrupted_bundle_is_refused_and_the_node_is_unchanged() {
    let bundle = TestBundle::new(host_arch(), "1.33.1");
    // Same size, one byte different: only the digest check can tell.
    let kubelet = bundle.tree.join("k8s/kubelet");
    let mut content = std::fs::read(&kubelet).expect("read");
    content[12] ^= 0x20;
    std::fs::write(&kubelet, &content).expect("write");

    let root = tempfile::tempdir().expect("root");
    let before = snapshot(root.path());
    let err = install_with(
        &config(root.path(), &bundle.tree),
        &RecordingStore::default(),
    )
    .expect_err("corrupt");
    assert_eq!(err.exit_code(), cks_agent::EXIT_BUNDLE_REFUSED, "{err:?}");
    let chain = format!("{:?}", err);
    assert!(chain.contains("k8s/kubelet"), "{chain}");
    assert_eq!(snapshot(root.path()), before, "nothing written");
}

#[test]
fn corrupted_upgrade_leaves_the_installed_node_unchanged() {
    let v1 = TestBundle::new(host_arch(), "1.33.1");
    let root = tempfile::tempdir().expect("root");
    install_with(&config(root.path(), &v1.tree), &RecordingStore::default()).expect("v1");
    let before = snapshot(root.path());

    let v2 = TestBundle::new(host_arch(), "1.34.0");
    let cni = v2
        .tree
        .join("cni")
        .join(format!("cni-plugins-{}.tgz", host_arch().as_str()));
    let mut content = std::fs::read(&cni).expect("read");
    content.truncate(content.len() / 2);
    std::fs::write(&cni, &content).expect("truncate");
    let err = install_with(&config(root.path(), &v2.tree), &RecordingStore::default())
        .expect_err("truncated");
    assert_eq!(err.exit_code(), cks_agent::EXIT_BUNDLE_REFUSED, "{err:?}");
    assert_eq!(snapshot(root.path()), before, "v1 stays, journal included");
    assert_installed(root.path(), "1.33.1");
}

#[test]
fn wrong_arch_bundle_is_refused_by_the_cli() {
    let bundle = TestBundle::new(other_arch(), "1.33.1");
    let root = tempfile::tempdir().expect("root");
    let out = agent(&[
        "install".as_ref(),
        "--bundle".as_ref(),
        bundle.tree.as_os_str(),
        "--root".as_ref(),
        root.path().as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "bundle is for {}, this node is {}",
            other_arch(),
            host_arch()
        )),
        "{stderr}"
    );
    assert!(snapshot(root.path()).is_empty(), "nothing written");
}

#[test]
fn verify_subcommand_exit_codes() {
    let bundle = TestBundle::new(host_arch(), "1.33.1");
    let out = agent(&[
        "verify".as_ref(),
        "--bundle".as_ref(),
        bundle.tree.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::write(bundle.tree.join("extra.txt"), b"not in the manifest").expect("write");
    let out = agent(&[
        "verify".as_ref(),
        "--bundle".as_ref(),
        bundle.tree.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("extra.txt"), "{stderr}");

    let out = agent(&[
        "verify".as_ref(),
        "--bundle".as_ref(),
        "/nonexistent/x.iso".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(4));
}

// === tests: installing ===

#[test]
fn install_twice_the_second_run_does_nothing() {
    let bundle = TestBundle::new(host_arch(), "1.33.1");
    let root = tempfile::tempdir().expect("root");
    let config = config(root.path(), &bundle.tree);
    let store = RecordingStore::default();

    let first = install_with(&config, &store).expect("first install");
    assert_eq!(
        first.steps_run,
        vec![
            "bundle.verify",
            "install.binaries",
            "containerd.sandbox_image",
            "images.import"
        ]
    );
    let imported = store.imported.borrow().clone();
    let [members] = imported.as_slice() else {
        panic!("one import: {imported:?}")
    };
    let mut sorted = members.clone();
    sorted[1..members.len() - 1].sort();
    assert_eq!(sorted, every_member(&bundle.tree));
    assert_installed(root.path(), "1.33.1");
    let after_first = snapshot(root.path());
    let leftovers: Vec<_> = after_first
        .keys()
        .filter(|p| p.to_string_lossy().contains(".cks-agent-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    let second = install_with(&config, &store).expect("second install");
    assert!(second.steps_run.is_empty(), "{:?}", second.steps_run);
    assert_eq!(store.imported.borrow().len(), 1, "no second import");
    assert_eq!(snapshot(root.path()), after_first, "nothing touched");
}

#[test]
fn interrupted_install_resumes_at_the_first_step_not_done() {
    let bundle = TestBundle::new(host_arch(), "1.33.1");
    let root = tempfile::tempdir().expect("root");
    let config = config(root.path(), &bundle.tree);

    /// Lists nothing, then fails the import (containerd stopped in between).
    struct FailingStore;
    impl ImageStore for FailingStore {
        fn list_images(&self) -> Result<Vec<StoredImage>, ImageStoreError> {
            Ok(Vec::new())
        }
        fn import(&self, _: &str, archive: &mut dyn Read) -> Result<(), ImageStoreError> {
            std::io::copy(archive, &mut std::io::sink()).expect("read");
            Err(ImageStoreError::Failed {
                operation: "images import".into(),
                status: "exit status: 1".into(),
                stderr: "containerd is not running".into(),
            })
        }
    }
    let err = install_with(&config, &FailingStore).expect_err("containerd down");
    assert_eq!(err.exit_code(), cks_agent::EXIT_FAILURE);
    assert_installed(root.path(), "1.33.1");

    let store = RecordingStore::default();
    let resumed = install_with(&config, &store).expect("resumed");
    assert_eq!(resumed.steps_run, vec!["images.import"]);
}

#[test]
fn containerd_unreachable_before_the_install_changes_nothing() {
    // What to import is decided (and its blobs verified) before anything is written.
    struct DownStore;
    impl ImageStore for DownStore {
        fn list_images(&self) -> Result<Vec<StoredImage>, ImageStoreError> {
            Err(ImageStoreError::Failed {
                operation: "images ls".into(),
                status: "exit status: 1".into(),
                stderr: "containerd is not running".into(),
            })
        }
        fn import(&self, _: &str, _: &mut dyn Read) -> Result<(), ImageStoreError> {
            unreachable!("list fails first")
        }
    }
    let bundle = TestBundle::new(host_arch(), "1.33.1");
    let root = tempfile::tempdir().expect("root");
    let err = install_with(&config(root.path(), &bundle.tree), &DownStore).expect_err("down");
    assert_eq!(err.exit_code(), cks_agent::EXIT_FAILURE);
    assert!(snapshot(root.path()).is_empty(), "nothing written");
}

#[test]
fn upgrade_bundle_installs_again_and_skips_images_containerd_has() {
    let v1 = TestBundle::new(host_arch(), "1.33.1");
    let root = tempfile::tempdir().expect("root");
    install_with(&config(root.path(), &v1.tree), &RecordingStore::default()).expect("v1");

    let v2 = TestBundle::new(host_arch(), "1.34.0");
    let store = RecordingStore::with_images_of(&v2.tree);
    let outcome = install_with(&config(root.path(), &v2.tree), &store).expect("v2");
    assert_eq!(outcome.steps_run.len(), 4, "{:?}", outcome.steps_run);
    assert_eq!(outcome.kubernetes_version, "1.34.0");
    assert_eq!(outcome.images_skipped, vec![PAUSE.to_string()]);
    assert!(outcome.images_imported.is_empty());
    assert!(store.imported.borrow().is_empty());
    assert_installed(root.path(), "1.34.0");
    let journal: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.path().join("var/lib/cks-agent/journal.json")).expect("journal"),
    )
    .expect("json");
    assert_eq!(journal["bundle"]["kubernetes_version"], "1.34.0");
    assert_eq!(
        journal["previous_bundles"].as_array().map(Vec::len),
        Some(1)
    );
}

#[test]
fn iso_bundle_installs_through_the_cli_with_a_stand_in_ctr() {
    let bundle = TestBundle::new(host_arch(), "1.33.1");
    let Some(iso) = bundle.build_iso() else {
        return;
    };
    let root = tempfile::tempdir().expect("root");
    // A `ctr` stand-in: lists nothing, records each import's arguments and keeps its archive.
    let ctr = root.path().join("fake-ctr");
    let log = root.path().join("ctr.log");
    let imported = root.path().join("imported.tar");
    std::fs::write(
        &ctr,
        format!(
            "#!/bin/sh\ncase \"$*\" in\n  *'images ls'*) echo 'REF TYPE DIGEST SIZE PLATFORMS LABELS' ;;\n  *'content ls -q'*) ;;\n  *'images import -'*) echo \"$*\" >> {}; cat > {} ;;\n  *) exit 2 ;;\nesac\n",
            log.display(),
            imported.display()
        ),
    )
    .expect("write");
    std::fs::set_permissions(&ctr, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let node = root.path().join("node");
    let run = |node: &Path| {
        agent(&[
            "install".as_ref(),
            "--bundle".as_ref(),
            iso.as_os_str(),
            "--root".as_ref(),
            node.as_os_str(),
            "--ctr".as_ref(),
            ctr.as_os_str(),
            "--containerd-socket".as_ref(),
            "/run/test/containerd.sock".as_ref(),
        ])
    };
    let out = run(&node);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("bundle verified"), "{stderr}");
    assert_installed(&node, "1.33.1");
    assert_eq!(
        std::fs::read_to_string(&log).expect("ctr log").trim(),
        "-a /run/test/containerd.sock -n k8s.io images import -"
    );
    // Read from the ISO in user space: the layout, every blob (the node has none), the index.
    let mut members = tar_members(&std::fs::read(&imported).expect("imported archive"));
    let last = members.len() - 1;
    members[1..last].sort();
    assert_eq!(members, every_member(&bundle.tree));

    let out = run(&node);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("already installed"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&log).expect("log").lines().count(),
        1
    );
}

#[test]
fn truncated_iso_is_refused() {
    let bundle = TestBundle::new(host_arch(), "1.33.1");
    let Some(iso) = bundle.build_iso() else {
        return;
    };
    // xorriso pads the end of the image; cut into the file data, keeping the descriptors.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(iso)
        .expect("open");
    file.set_len(44 * 2048).expect("truncate");
    let root = tempfile::tempdir().expect("root");
    let out = agent(&[
        "install".as_ref(),
        "--bundle".as_ref(),
        iso.as_os_str(),
        "--root".as_ref(),
        root.path().as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        snapshot(root.path()).is_empty(),
        "nothing written: {stderr}"
    );
}

// === tests: real containerd ===

/// A private containerd on a socket in a temp dir; killed by pid on drop.
struct PrivateContainerd {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl PrivateContainerd {
    /// `None` when this machine cannot run it: the calling test is then skipped visibly (and
    /// fails under `CI=true`), see [`cks_fixtures::skip`].
    #[track_caller]
    fn start() -> Option<PrivateContainerd> {
        use cks_fixtures::skip::{Need, require};
        if !require(
            "a private containerd",
            &[Need::Root, Need::Tools(&["containerd", "ctr"])],
        ) {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n",
                dir.path().display(),
                socket.display()
            ),
        )
        .expect("config");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("containerd.log")).expect("log"))
            .spawn()
            .expect("start containerd");
        let containerd = PrivateContainerd {
            child,
            socket,
            _dir: dir,
        };
        for _ in 0..100 {
            let ok = Command::new("ctr")
                .arg("-a")
                .arg(&containerd.socket)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Some(containerd);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "containerd did not answer on {}",
            containerd.socket.display()
        );
    }

    fn images(&self) -> String {
        self.ctr(&["images", "ls"])
    }

    /// `ctr -a SOCK -n k8s.io <args>`'s output; panics unless it succeeds.
    fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .expect("ctr");
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr content ls -q`: every blob in namespace k8s.io.
    fn content(&self) -> BTreeSet<Sha256Digest> {
        self.ctr(&["content", "ls", "-q"])
            .lines()
            .map(|l| l.trim().parse().expect("digest"))
            .collect()
    }

    /// `(reference, manifest digest)` of every image, from `ctr images ls`.
    fn image_digests(&self) -> BTreeMap<String, String> {
        self.images()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut cols = l.split_whitespace();
                let reference = cols.next()?.to_string();
                Some((reference, cols.nth(1)?.to_string()))
            })
            .collect()
    }

    /// `ctr images check`'s STATUS and UNPACKED columns by reference.
    fn check(&self) -> BTreeMap<String, String> {
        self.ctr(&["images", "check"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                // REF TYPE DIGEST STATUS SIZE UNPACKED, where STATUS is two words
                // ("complete (3/3)") and SIZE has spaces ("1.0 MiB/1.0 MiB").
                let cols: Vec<&str> = l.split_whitespace().collect();
                let status = cols.get(3..5)?.join(" ");
                Some((
                    cols.first()?.to_string(),
                    format!("{status} unpacked={}", cols.last()?),
                ))
            })
            .collect()
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

#[test]
fn images_are_imported_into_a_real_containerd_and_skipped_on_upgrade() {
    let Some(containerd) = PrivateContainerd::start() else {
        return;
    };
    let v1 = TestBundle::new(host_arch(), "1.33.1");
    let root = tempfile::tempdir().expect("root");
    let install = |bundle: &Path| {
        agent(&[
            "install".as_ref(),
            "--bundle".as_ref(),
            bundle.as_os_str(),
            "--root".as_ref(),
            root.path().as_os_str(),
            "--containerd-socket".as_ref(),
            containerd.socket.as_os_str(),
        ])
    };
    let out = install(&v1.tree);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: BundleManifest =
        serde_json::from_slice(&std::fs::read(v1.tree.join(MANIFEST_PATH)).expect("read"))
            .expect("manifest");
    let listed = containerd.images();
    let line = listed
        .lines()
        .find(|l| l.starts_with(PAUSE))
        .unwrap_or_else(|| panic!("{PAUSE} not imported: {listed}"));
    assert!(
        line.contains(&manifest.images[0].manifest_digest.oci()),
        "{line}"
    );

    // An upgrade bundle with the same images: installed again, images skipped.
    let v2 = TestBundle::new(host_arch(), "1.34.0");
    let out = install(&v2.tree);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("images already in containerd; skipping"),
        "{stderr}"
    );
    assert_installed(root.path(), "1.34.0");
}

// === upgrades against a real containerd: only what is new is imported ===

/// A gzip-compressed tar holding one file `name` with `content` (a layer containerd unpacks).
fn layer(name: &str, content: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    tar.append_data(&mut header, name, content).expect("append");
    let tar = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).expect("gzip");
    gz.finish().expect("gzip")
}

/// Bytes that do not compress (so the base layer really is 1 MiB in the archive).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// An OCI image: its manifest, config and layers.
struct Image {
    reference: &'static str,
    manifest: Vec<u8>,
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
}

impl Image {
    /// An image of `layers` (name, content) for this host.
    fn new(reference: &'static str, layers: &[(&str, &[u8])]) -> Image {
        let arch = host_arch();
        let layers: Vec<Vec<u8>> = layers.iter().map(|(n, c)| layer(n, c)).collect();
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|l| {
                let mut tar = Vec::new();
                flate2::read::GzDecoder::new(&l[..])
                    .read_to_end(&mut tar)
                    .expect("gunzip");
                Sha256Digest::of(&tar).oci()
            })
            .collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch.as_str(),
            "os": "linux",
            "config": {"Entrypoint": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .expect("json");
        let descriptor = |bytes: &[u8], media_type: &str| {
            serde_json::json!({
                "mediaType": media_type,
                "digest": Sha256Digest::of(bytes).oci(),
                "size": bytes.len(),
            })
        };
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": cks_proto::oci::MEDIA_TYPE_OCI_MANIFEST,
            "config": descriptor(&config, "application/vnd.oci.image.config.v1+json"),
            "layers": layers
                .iter()
                .map(|l| descriptor(l, "application/vnd.oci.image.layer.v1.tar+gzip"))
                .collect::<Vec<_>>(),
        }))
        .expect("json");
        Image {
            reference,
            manifest,
            config,
            layers,
        }
    }

    fn manifest_digest(&self) -> Sha256Digest {
        Sha256Digest::of(&self.manifest)
    }

    /// Manifest, config and layers.
    fn blobs(&self) -> Vec<&[u8]> {
        [&self.manifest, &self.config]
            .into_iter()
            .chain(&self.layers)
            .map(Vec::as_slice)
            .collect()
    }
}

/// Replaces the image archive of `bundle` (and the manifest's image and blob lists) with one
/// OCI archive holding `images`, each blob once, as the isobuilder's shared layout does.
fn set_images(bundle: &TestBundle, images: &[Image]) {
    let mut manifest = read_manifest(&bundle.tree);
    let mut blobs: BTreeMap<Sha256Digest, &[u8]> = BTreeMap::new();
    for blob in images.iter().flat_map(Image::blobs) {
        blobs.insert(Sha256Digest::of(blob), blob);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": cks_proto::oci::MEDIA_TYPE_OCI_INDEX,
        "manifests": images.iter().map(|i| serde_json::json!({
            "mediaType": cks_proto::oci::MEDIA_TYPE_OCI_MANIFEST,
            "digest": i.manifest_digest().oci(),
            "size": i.manifest.len(),
            "annotations": {cks_proto::oci::ANNOTATION_IMAGE_NAME: i.reference},
        })).collect::<Vec<_>>(),
    });
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        tar.append_data(&mut header, path, data).expect("append");
    };
    add("oci-layout", cks_proto::oci::OCI_LAYOUT.as_bytes());
    add("index.json", &serde_json::to_vec(&index).expect("json"));
    for (digest, blob) in &blobs {
        add(&format!("blobs/sha256/{}", digest.hex()), blob);
    }
    let archive = tar.into_inner().expect("tar");
    std::fs::write(bundle.tree.join(ARCHIVE), &archive).expect("write archive");

    let entry = manifest
        .files
        .iter_mut()
        .find(|f| f.path == ARCHIVE)
        .expect("archive entry");
    entry.size = archive.len() as u64;
    entry.sha256 = Sha256Digest::of(&archive);
    let template = manifest.images[0].clone();
    manifest.images = images
        .iter()
        .map(|i| cks_proto::manifest::ImageEntry {
            reference: i.reference.to_string(),
            manifest_digest: i.manifest_digest(),
            blobs: std::iter::once(&i.config)
                .chain(&i.layers)
                .map(|b| Sha256Digest::of(b))
                .collect(),
            ..template.clone()
        })
        .collect();
    manifest
        .images
        .sort_by(|a, b| a.reference.cmp(&b.reference));
    manifest.blobs = blobs
        .iter()
        .map(|(digest, blob)| cks_proto::manifest::BlobEntry {
            digest: digest.clone(),
            size: blob.len() as u64,
        })
        .collect();
    std::fs::write(bundle.tree.join(MANIFEST_PATH), manifest.to_json()).expect("manifest");
}

const APISERVER_V1: &str = "registry.k8s.io/kube-apiserver:v1.33.1";
const SCHEDULER_V1: &str = "registry.k8s.io/kube-scheduler:v1.33.1";
const APISERVER_V2: &str = "registry.k8s.io/kube-apiserver:v1.34.0";

/// The images of version `minor` (33 or 34): pause, and control-plane images on one 1 MiB base
/// layer; 34 adds kube-apiserver v1.34.0 on the same base.
fn release_images(minor: u32) -> Vec<Image> {
    let base = noise(1 << 20, 1);
    let mut images = vec![
        Image::new(PAUSE, &[("pause", b"pause")]),
        Image::new(APISERVER_V1, &[("base", &base), ("apiserver", b"v1.33.1")]),
        Image::new(SCHEDULER_V1, &[("base", &base), ("scheduler", b"v1.33.1")]),
    ];
    if minor >= 34 {
        images.push(Image::new(
            APISERVER_V2,
            &[("base", &base), ("apiserver", b"v1.34.0")],
        ));
    }
    images
}

/// A bundle of Kubernetes `version` holding [`release_images`] of its minor.
fn release_bundle(version: &str) -> TestBundle {
    let bundle = TestBundle::new(host_arch(), version);
    let minor = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .expect("minor");
    set_images(&bundle, &release_images(minor));
    bundle
}

/// A `ctr` that runs the real one and keeps a copy of each archive streamed to
/// `images import -` (as `<dir>/import-<n>.tar`).
struct TeeCtr {
    program: PathBuf,
    dir: PathBuf,
}

impl TeeCtr {
    fn new(dir: &Path) -> TeeCtr {
        let real = which("ctr").expect("ctr");
        let program = dir.join("tee-ctr");
        std::fs::write(
            &program,
            format!(
                "#!/bin/sh\ncase \"$*\" in\n  *'images import -'*)\n    n=$(ls '{d}' | grep -c '^import-')\n    tee '{d}/import-'$n.tar | exec '{real}' \"$@\" ;;\n  *) exec '{real}' \"$@\" ;;\nesac\n",
                d = dir.display(),
                real = real.display()
            ),
        )
        .expect("write");
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        TeeCtr {
            program,
            dir: dir.to_path_buf(),
        }
    }

    /// Each import's tar members, in order.
    fn imports(&self) -> Vec<Vec<String>> {
        (0..)
            .map(|n| self.dir.join(format!("import-{n}.tar")))
            .take_while(|p| p.exists())
            .map(|p| tar_members(&std::fs::read(p).expect("read")))
            .collect()
    }
}

/// Runs `cks-agent install` of `bundle` on `root` against `containerd` through `ctr`.
fn install_on(containerd: &PrivateContainerd, ctr: &TeeCtr, root: &Path, bundle: &Path) -> Output {
    agent(&[
        "install".as_ref(),
        "--bundle".as_ref(),
        bundle.as_os_str(),
        "--root".as_ref(),
        root.as_os_str(),
        "--ctr".as_ref(),
        ctr.program.as_os_str(),
        "--containerd-socket".as_ref(),
        containerd.socket.as_os_str(),
    ])
}

#[track_caller]
fn assert_ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// Every image of `images` listed with its manifest digest, complete and unpacked.
#[track_caller]
fn assert_images_usable(containerd: &PrivateContainerd, images: &[Image]) {
    let listed = containerd.image_digests();
    let checked = containerd.check();
    for image in images {
        assert_eq!(
            listed.get(image.reference),
            Some(&image.manifest_digest().oci()),
            "{}: {listed:?}",
            image.reference
        );
        let blobs = 1 + image.layers.len(); // ctr counts the config and the layers.
        let expected = format!("complete ({blobs}/{blobs}) unpacked=true");
        assert_eq!(checked.get(image.reference), Some(&expected), "{checked:?}");
    }
}

#[test]
fn upgrade_imports_only_the_new_images_blobs_into_a_real_containerd() {
    let Some(containerd) = PrivateContainerd::start() else {
        return;
    };
    let work = tempfile::tempdir().expect("work");
    let ctr = TeeCtr::new(work.path());
    let root = work.path().join("node");
    let v1 = release_bundle("1.33.1");
    let v2 = release_bundle("1.34.0");

    assert_ok(&install_on(&containerd, &ctr, &root, &v1.tree));
    let (v1_images, v2_images) = (release_images(33), release_images(34));
    assert_images_usable(&containerd, &v1_images);
    let fresh = ctr.imports();
    assert_eq!(fresh.len(), 1);
    let mut members = fresh[0].clone();
    let last = members.len() - 1;
    members[1..last].sort();
    assert_eq!(
        members,
        every_member(&v1.tree),
        "a fresh node gets everything"
    );
    let before = containerd.content();

    // The upgrade, read from an ISO in user space (seeking past what it does not need).
    let Some(iso) = v2.build_iso() else {
        return;
    };
    let stderr = assert_ok(&install_on(&containerd, &ctr, &root, iso));
    assert_installed(&root, "1.34.0");
    assert_images_usable(&containerd, &v2_images);

    let new = &v2_images[3];
    assert_eq!(new.reference, APISERVER_V2);
    let sent: BTreeSet<String> = ctr.imports()[1]
        .iter()
        .filter_map(|m| m.strip_prefix("blobs/sha256/").map(str::to_string))
        .collect();
    let new_blobs = |blobs: &[&[u8]]| -> BTreeSet<String> {
        blobs
            .iter()
            .map(|b| Sha256Digest::of(b).hex().to_string())
            .collect()
    };
    assert_eq!(
        sent,
        new_blobs(&[&new.manifest, &new.config, &new.layers[1]]),
        "the new image's manifest, config and own layer; not the 1 MiB base"
    );
    assert_eq!(
        ctr.imports()[1].last().map(String::as_str),
        Some("index.json")
    );
    let after = containerd.content();
    let v1_blobs: BTreeSet<Sha256Digest> = read_manifest(&v1.tree)
        .blobs
        .into_iter()
        .map(|b| b.digest)
        .collect();
    assert!(
        after.is_superset(&v1_blobs),
        "v1's blobs are all still there"
    );
    let added: BTreeSet<Sha256Digest> = after.difference(&before).cloned().collect();
    let expected: BTreeSet<Sha256Digest> = [&new.manifest, &new.config, &new.layers[1]]
        .into_iter()
        .map(|b| Sha256Digest::of(b))
        .collect();
    assert!(added.is_superset(&expected), "{added:?}");
    // Besides the new blobs, at most the index ctr writes for the import (until containerd's
    // garbage collector removes it).
    assert!(added.len() <= expected.len() + 1, "{added:?}");
    assert!(stderr.contains("importing images"), "{stderr}");

    // The same bundle again: the journal says it is done; ctr is not even asked.
    let stderr = assert_ok(&install_on(&containerd, &ctr, &root, iso));
    assert!(stderr.contains("already installed"), "{stderr}");
    assert_eq!(ctr.imports().len(), 2);

    // Another bundle with the same images (v1 again, as in a downgrade): nothing to import.
    let stderr = assert_ok(&install_on(&containerd, &ctr, &root, &v1.tree));
    assert!(
        stderr.contains("images already in containerd; skipping"),
        "{stderr}"
    );
    assert_eq!(ctr.imports().len(), 2);
    assert_installed(&root, "1.33.1");
}

#[test]
fn corrupt_new_blob_fails_the_upgrade_before_anything_is_imported() {
    let Some(containerd) = PrivateContainerd::start() else {
        return;
    };
    let work = tempfile::tempdir().expect("work");
    let ctr = TeeCtr::new(work.path());
    let root = work.path().join("node");
    let v1 = release_bundle("1.33.1");
    assert_ok(&install_on(&containerd, &ctr, &root, &v1.tree));
    let (node_before, content_before, images_before) =
        (snapshot(&root), containerd.content(), containerd.images());

    let v2 = release_bundle("1.34.0");
    let new_layer = Sha256Digest::of(&release_images(34)[3].layers[1]);
    flip_blob_byte(&v2.tree, &new_layer);
    let out = install_on(&containerd, &ctr, &root, &v2.tree);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "refused: {stderr}");
    assert!(stderr.contains(new_layer.hex()), "names the blob: {stderr}");
    assert_eq!(snapshot(&root), node_before, "node and journal unchanged");
    assert_eq!(ctr.imports().len(), 1, "nothing reached ctr");
    // Nothing added (containerd's garbage collector may remove the index of the v1 import).
    let content_after = containerd.content();
    assert!(
        content_after.is_subset(&content_before),
        "{content_after:?}"
    );
    assert_eq!(containerd.images(), images_before);
}

#[test]
fn corrupt_blob_the_node_already_has_does_not_matter() {
    let Some(containerd) = PrivateContainerd::start() else {
        return;
    };
    let work = tempfile::tempdir().expect("work");
    let ctr = TeeCtr::new(work.path());
    let root = work.path().join("node");
    let v1 = release_bundle("1.33.1");
    assert_ok(&install_on(&containerd, &ctr, &root, &v1.tree));

    let v2 = release_bundle("1.34.0");
    let base = Sha256Digest::of(&release_images(34)[1].layers[0]);
    flip_blob_byte(&v2.tree, &base);
    assert_ok(&install_on(&containerd, &ctr, &root, &v2.tree));
    assert_images_usable(&containerd, &release_images(34));
    assert_installed(&root, "1.34.0");
    // `cks-agent verify` still checks every blob.
    let out = agent(&["verify".as_ref(), "--bundle".as_ref(), v2.tree.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(base.hex()), "{stderr}");
}

/// Flips one byte of blob `digest` inside the bundle's image archive (same size).
fn flip_blob_byte(tree: &Path, digest: &Sha256Digest) {
    let path = tree.join(ARCHIVE);
    let mut archive = std::fs::read(&path).expect("read");
    let offset = tar::Archive::new(&archive[..])
        .entries()
        .expect("entries")
        .map(|e| e.expect("entry"))
        .find(|e| {
            e.path()
                .expect("path")
                .to_string_lossy()
                .ends_with(digest.hex())
        })
        .map(|e| e.raw_file_position())
        .expect("blob in archive");
    archive[offset as usize + 20] ^= 0x01;
    std::fs::write(&path, &archive).expect("write");
}

#[test]
fn blob_changed_while_streaming_leaves_no_image_in_a_real_containerd() {
    use cks_agent::images::{CtrImageStore, ImagesError, import_prepared, prepare_import};
    let Some(containerd) = PrivateContainerd::start() else {
        return;
    };
    let bundle = release_bundle("1.33.1");
    let source = cks_proto::verify::DirBundle::new(&bundle.tree);
    let manifest = read_manifest(&bundle.tree);
    let store = CtrImageStore::new(which("ctr").expect("ctr"), containerd.socket.clone());
    let prepared = prepare_import(&source, &manifest, &store).expect("verified");

    // The bundle changes between verification and import (the last blob in the archive, so
    // that ctr has ingested the others by then).
    let last = manifest.blobs.last().expect("blobs").digest.clone();
    flip_blob_byte(&bundle.tree, &last);
    let err = import_prepared(&source, &prepared, &store).expect_err("changed");
    match &err {
        ImagesError::ContentChanged { source, .. } => assert_eq!(source.digest, last),
        other => panic!("{other:?}"),
    }
    assert!(
        containerd.image_digests().is_empty(),
        "ctr got a truncated archive without index.json: no image"
    );
}
