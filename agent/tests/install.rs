//! `cks-agent install` / `verify` against real bundle trees and ISOs built here with xorriso.
//!
//! The bundle is small but complete: fake k8s binaries, CNI and crictl tarballs, the kubelet
//! unit and drop-in, two manifests, and one OCI archive holding a real (tiny) pause image, with a
//! `cks-manifest.json` that `cks_proto::verify` accepts. Tests that need xorriso, root or
//! containerd say so and return early when they are missing.

use std::cell::RefCell;
use std::collections::BTreeMap;
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

/// An [`ImageStore`] that records imports and then lists what it imported.
#[derive(Default)]
struct RecordingStore {
    imported: RefCell<Vec<String>>,
    images: RefCell<Vec<StoredImage>>,
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

    fn import(&self, name: &str, archive: &mut dyn Read) -> Result<(), ImageStoreError> {
        std::io::copy(archive, &mut std::io::sink()).expect("read archive");
        self.imported.borrow_mut().push(name.to_string());
        Ok(())
    }
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
    assert_eq!(*store.imported.borrow(), vec![ARCHIVE.to_string()]);
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

    struct FailingStore;
    impl ImageStore for FailingStore {
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
    let err = install_with(&config, &FailingStore).expect_err("containerd down");
    assert_eq!(err.exit_code(), cks_agent::EXIT_FAILURE);
    assert_installed(root.path(), "1.33.1");

    let store = RecordingStore::default();
    let resumed = install_with(&config, &store).expect("resumed");
    assert_eq!(resumed.steps_run, vec!["images.import"]);
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
    assert_eq!(outcome.images_skipped, vec![ARCHIVE.to_string()]);
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
    // A `ctr` stand-in: lists nothing, records each import's arguments and byte count.
    let ctr = root.path().join("fake-ctr");
    let log = root.path().join("ctr.log");
    std::fs::write(
        &ctr,
        format!(
            "#!/bin/sh\ncase \"$*\" in\n  *'images ls'*) echo 'REF TYPE DIGEST SIZE PLATFORMS LABELS' ;;\n  *'images import -'*) echo \"$* $(wc -c)\" >> {} ;;\n  *) exit 2 ;;\nesac\n",
            log.display()
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
    let archive_size = std::fs::metadata(bundle.tree.join(ARCHIVE))
        .expect("meta")
        .len();
    assert_eq!(
        std::fs::read_to_string(&log).expect("ctr log").trim(),
        format!("-a /run/test/containerd.sock -n k8s.io images import - {archive_size}")
    );

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
    fn start() -> Option<PrivateContainerd> {
        if !nix::unistd::geteuid().is_root()
            || which("containerd").is_none()
            || which("ctr").is_none()
        {
            eprintln!("skipped: needs root, containerd and ctr");
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
        let out = Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", "k8s.io", "images", "ls"])
            .output()
            .expect("ctr");
        String::from_utf8_lossy(&out.stdout).into_owned()
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
