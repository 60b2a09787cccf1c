//! The agent's kernel path for real, in a QEMU (TCG) guest: CD-ROM discovery by volume id,
//! `mount(2)` of iso9660 (which the development and CI kernels lack: `ENODEV`), loop + iso9660,
//! verification and installation, and the refusal of a corrupt bundle.
//!
//! Each boot: a Debian kernel, a busybox initramfs holding `cks-agent` (static musl when
//! `make agent-static` could build it), and two CD-ROMs: the CloudStack config drive (volume id
//! `config-2`) on the IDE primary master, so the agent's scan meets it first, and the bundle ISO
//! (built by the real `cks-isobuilder` library from local fixtures) on the secondary master, where
//! QEMU's `-cdrom` puts it. The guest's `/init` loads the CD-ROM stack and iso9660 with `insmod`,
//! runs `cks-agent verify` and `cks-agent install` with no `--bundle` (discovery through
//! `/sys/class/block`; the guest has no udev, so no `/dev/disk/by-label`), `--mount kernel` and
//! `--root` on a tmpfs, prints tagged lines (`CKS-…`) on the serial console, and powers off.
//!
//! The guest has no containerd: `--ctr` points at a shell stand-in that lists no images and no
//! content and records the sha256 of every archive streamed to `images import -`, so the import
//! step runs and the bytes it sent are checked: the same as a user-space install of the ISO on
//! the host sends, which holds every blob of the bundle.
//!
//! Assets: `make vm-assets agent-static` (both run by `make test`); see `qemu/vm.rs`.

#[path = "qemu/vm.rs"]
mod vm;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cks_fixtures::registry::RegistryAuth;
use cks_fixtures::upstream::Upstream;
use cks_isobuilder::build::{BuildOptions, build};
use cks_isobuilder::progress::Progress;
use cks_isobuilder::spec::ReleaseSpec;
use cks_proto::ids::Sha256Digest;
use cks_proto::iso::IsoBundle;
use cks_proto::manifest::{BundleManifest, FileKind, MANIFEST_PATH};
use cks_proto::verify::BundleSource;
use serde_json::Value;
use vm::{Assets, BootSpec, Guest, Initramfs};

/// The agent's exit code for a refused bundle (`cks-agent --help`).
const EXIT_BUNDLE_REFUSED: &str = "3";
/// The fake kubelet's content in the fixtures' amd64 release; corrupted in the bad ISO.
const KUBELET_MARKER: &[u8] = b"# kubelet v1.33.1 linux/amd64";

/// Stands in for containerd's `ctr` (the agent calls `ctr -a SOCK -n k8s.io images ls`,
/// `… content ls -q` and `… images import -`); keeps a copy of the imported archive when
/// `CKS_FAKE_CTR_SAVE` names a file.
const FAKE_CTR: &str = r#"#!/bin/sh
case "$5 $6" in
  "images ls") echo "REF TYPE DIGEST SIZE PLATFORMS LABELS" ;;
  "content ls") ;;
  "images import") echo "import $(tee "${CKS_FAKE_CTR_SAVE:-/dev/null}" | sha256sum | cut -d' ' -f1)" >>"$CKS_FAKE_CTR_LOG" ;;
  *) echo "fake ctr: unexpected arguments: $*" >&2; exit 1 ;;
esac
"#;

// === the bundles, built once per test run ===

/// The ISOs both boots use, and what a correct install of the good one looks like.
struct Bundles {
    /// Built by cks-isobuilder: volume id CDROM.
    good: PathBuf,
    /// The good one with one byte of `k8s/kubelet` changed (same size, same label).
    corrupt: PathBuf,
    /// A CloudStack config drive: volume id `config-2`.
    config_drive: PathBuf,
    /// The bundle's manifest.
    manifest: BundleManifest,
    /// Every file a user-space install of the good ISO writes (path under the root → sha256),
    /// made on the host with the same agent: the oracle for the guest's kernel-path install.
    host_install: BTreeMap<String, String>,
    /// The fake ctr's log of that install: one `import <sha256>` line.
    host_imports: Vec<String>,
    /// Scratch space of this test binary.
    work: PathBuf,
    /// The kernel, QEMU, busybox and the agent to boot.
    assets: Assets,
}

/// Builds the ISOs and finds the VM assets on first use (the registry and file server are
/// stopped right after the build).
fn bundles() -> &'static Bundles {
    static BUNDLES: OnceLock<Bundles> = OnceLock::new();
    BUNDLES.get_or_init(|| {
        let work = work_dir();

        let upstream = Upstream::start(RegistryAuth::None).expect("local upstream");
        let spec = ReleaseSpec::parse(&upstream.spec_text("amd64"), Path::new(".")).expect("spec");
        let options = BuildOptions {
            out_dir: work.join("out"),
            cache_dir: work.join("cache"),
            offline: false,
            jobs: 4,
            progress: Progress::hidden(),
        };
        let output = tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(build(&spec, &options))
            .expect("cks-isobuilder build");
        drop(upstream);

        let corrupt = work.join("corrupt.iso");
        let mut bytes = std::fs::read(&output.iso).expect("read ISO");
        let at: Vec<usize> = bytes
            .windows(KUBELET_MARKER.len())
            .enumerate()
            .filter(|(_, w)| *w == KUBELET_MARKER)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(at.len(), 1, "the fake kubelet's bytes once in the ISO");
        bytes[at[0] + 2] ^= 0x20; // "kubelet" → "Kubelet"
        std::fs::write(&corrupt, bytes).expect("write corrupt ISO");

        let config_drive = work.join("config-drive.iso");
        let drive_dir = work.join("config-drive");
        std::fs::create_dir_all(drive_dir.join("openstack/latest")).expect("mkdir");
        std::fs::write(
            drive_dir.join("openstack/latest/meta_data.json"),
            r#"{"name": "cks-node-1"}"#,
        )
        .expect("write");
        let out = Command::new("xorriso")
            .args(["-as", "mkisofs", "-r", "-J", "-V", "config-2", "-o"])
            .arg(&config_drive)
            .arg(&drive_dir)
            .output()
            .expect("run xorriso");
        assert!(
            out.status.success(),
            "xorriso: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let (host_install, host_imports) = install_on_host(&output.iso, &work, &output.manifest);
        let assets = Assets::locate(&work);
        Bundles {
            good: output.iso,
            corrupt,
            config_drive,
            manifest: output.manifest,
            host_install,
            host_imports,
            work,
            assets,
        }
    })
}

/// This process's scratch directory, `target/tmp/qemu-harness-<pid>`: a static outlives the
/// tests, so it is not a `TempDir`; instead each run removes the directories of runs whose
/// process is gone (several runs may share the checkout).
fn work_dir() -> PathBuf {
    const PREFIX: &str = "qemu-harness-";
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(PREFIX)
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let work = base.join(format!("{PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");
    work
}

/// `cks-agent install --mount user-space` of `iso` into a fresh root on the host: every file
/// written (journal excepted, it records times and the bundle's location) with its digest, and
/// the fake ctr's log, after checking that the one archive imported holds every blob of the
/// bundle, byte for byte.
fn install_on_host(
    iso: &Path,
    work: &Path,
    manifest: &BundleManifest,
) -> (BTreeMap<String, String>, Vec<String>) {
    let root = work.join("host-root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let ctr = work.join("fake-ctr");
    std::fs::write(&ctr, FAKE_CTR).expect("write");
    std::fs::set_permissions(&ctr, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let out = Command::new(env!("CARGO_BIN_EXE_cks-agent"))
        .arg("install")
        .arg("--bundle")
        .arg(iso)
        .args(["--mount", "user-space", "--root"])
        .arg(&root)
        .arg("--ctr")
        .arg(&ctr)
        .env("CKS_FAKE_CTR_LOG", work.join("host-ctr.log"))
        .env("CKS_FAKE_CTR_SAVE", work.join("host-import.tar"))
        .output()
        .expect("run cks-agent");
    assert!(
        out.status.success(),
        "host install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(&root).expect("under root");
                let rel = rel.to_string_lossy().into_owned();
                let digest = Sha256Digest::of(&std::fs::read(&path).expect("read"));
                files.insert(rel, digest.hex().to_string());
            }
        }
    }
    files.retain(|path, _| !is_journal(path));

    let imported = std::fs::read(work.join("host-import.tar")).expect("imported archive");
    let mut blobs = BTreeMap::new();
    for entry in tar::Archive::new(&imported[..]).entries().expect("tar") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").to_string_lossy().into_owned();
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let mut content = Vec::new();
            entry.read_to_end(&mut content).expect("read");
            assert_eq!(Sha256Digest::of(&content).hex(), hex, "blob {hex}");
            blobs.insert(hex.to_string(), content.len() as u64);
        }
    }
    let expected: BTreeMap<String, u64> = manifest
        .blobs
        .iter()
        .map(|b| (b.digest.hex().to_string(), b.size))
        .collect();
    assert_eq!(blobs, expected, "a fresh node imports every blob");
    let log = std::fs::read_to_string(work.join("host-ctr.log")).expect("host ctr log");
    let imports: Vec<String> = log.lines().map(str::to_string).collect();
    assert_eq!(imports.len(), 1, "{imports:?}");
    (files, imports)
}

/// The journal records times and where the bundle was (a device in the guest, a file on the
/// host): not comparable.
fn is_journal(path: &str) -> bool {
    path == "var/lib/cks-agent/journal.json"
}

// === the guest ===

/// The guest's `/init`: mounts, modules, waits until both CD-ROMs are there, reports their
/// volume ids, runs `body`, reports the node tree and the fake ctr's log, powers off.
fn init_script(modules: &[String], body: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "CKS-UPTIME init $(cut -d' ' -f1 /proc/uptime)"
for m in {modules}; do insmod /modules/$m.ko || echo "CKS-ERROR insmod $m"; done
# Both discs must be there before the agent scans (bounded: 10 s).
n=0
while [ "$(ls /sys/class/block | grep -c '^sr')" -lt 2 ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done
# Keep kernel messages off the console from here on: the host parses it.
echo "1 4 1 7" >/proc/sys/kernel/printk
label() {{ dd if=/dev/$1 bs=2048 skip=16 count=1 2>/dev/null | dd bs=1 skip=40 count=32 2>/dev/null | tr -d ' '; }}
for d in $(ls /sys/class/block | grep '^sr'); do echo "CKS-DEV $d $(label $d)"; done
mount -t tmpfs node /node
export CKS_FAKE_CTR_LOG=/tmp/ctr.log RUST_LOG=info,cks_agent::bundle=debug
# A glibc agent (the fallback of make agent-static) brought its libraries along.
[ "$(cat /KIND)" = glibc ] && export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/lib64
# agent NAME ARGS…: runs cks-agent, tags its log lines with NAME, keeps its exit code in rc_NAME.
agent() {{
  name=$1; shift
  /bin/cks-agent --log-format json "$@" >/tmp/$name.log 2>&1
  eval "rc_$name=$?"
  sed "s/^/CKS-LOG $name /" /tmp/$name.log
}}
AGENT="--mount kernel --root /node --discovery-timeout-seconds 60 --ctr /bin/fake-ctr"
{body}
cd /node && find . -type f | sort | while read -r f; do echo "CKS-FILE $(sha256sum "$f")"; done
[ -f /tmp/ctr.log ] && sed 's/^/CKS-CTR /' /tmp/ctr.log
echo "CKS-QEMU-RESULT $result guest_uptime=$(cut -d' ' -f1 /proc/uptime) node_entries=$(find /node -mindepth 1 | wc -l) iso9660_mounts=$(grep -c ' iso9660 ' /proc/mounts)"
poweroff -f
"#,
        modules = modules.join(" "),
    )
}

/// Good bundle: verify, install, then the loop path (an ISO *file*: loop device + iso9660) with
/// a copy of the disc, and whether any loop device stays attached afterwards.
const GOOD_BODY: &str = r#"
agent verify verify $AGENT
agent install install $AGENT
for d in $(ls /sys/class/block | grep '^sr'); do [ "$(label $d)" = CDROM ] && dd if=/dev/$d of=/tmp/bundle.iso bs=64k 2>/dev/null; done
mkdir -p /tmp/loop-root
agent loopverify verify --bundle /tmp/bundle.iso --mount kernel --root /tmp/loop-root
# The kernel clears an autoclear loop device shortly after the unmount: poll, bounded (2 s).
n=0
while :; do
  loops=0
  for b in /sys/block/loop*/loop/backing_file; do [ -f "$b" ] && loops=$((loops+1)); done
  [ $loops -eq 0 ] || [ $n -ge 40 ] && break
  sleep 0.05; n=$((n+1))
done
result="scenario=good verify=$rc_verify install=$rc_install loopverify=$rc_loopverify attached_loops=$loops"
"#;

/// Corrupt bundle: verify and install must both refuse it.
const CORRUPT_BODY: &str = r#"
agent verify verify $AGENT
agent install install $AGENT
result="scenario=corrupt verify=$rc_verify install=$rc_install"
"#;

/// What the guest reported.
#[derive(Debug, Default)]
struct Report {
    /// `CKS-QEMU-RESULT key=value …`.
    result: BTreeMap<String, String>,
    /// CD-ROM device name → volume id.
    devices: BTreeMap<String, String>,
    /// Agent log events per command name (`verify`, `install`, `loopverify`).
    logs: BTreeMap<String, Vec<Value>>,
    /// Files under the node root (`opt/bin/kubeadm`) → sha256.
    files: BTreeMap<String, String>,
    /// The fake ctr's log lines.
    ctr: Vec<String>,
    /// Guest uptime (seconds) when `/init` started.
    init_uptime: String,
    /// The whole console, for failure messages.
    console: String,
}

impl Report {
    fn parse(console: &str) -> Report {
        let mut report = Report {
            console: console.to_string(),
            ..Report::default()
        };
        for line in console.lines() {
            // The firmware's terminal escapes may precede the first line.
            let Some(start) = line.find("CKS-") else {
                continue;
            };
            let Some((tag, rest)) = line[start..].split_once(' ') else {
                continue;
            };
            match tag {
                "CKS-QEMU-RESULT" => {
                    report.result = rest
                        .split_whitespace()
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                }
                "CKS-DEV" => {
                    let (dev, label) = rest.split_once(' ').unwrap_or((rest, ""));
                    report.devices.insert(dev.to_string(), label.to_string());
                }
                "CKS-LOG" => {
                    let (name, json) = rest.split_once(' ').unwrap_or((rest, ""));
                    // Non-JSON lines (a panic message) stay in the console for the reader.
                    if let Ok(event) = serde_json::from_str::<Value>(json) {
                        report.logs.entry(name.to_string()).or_default().push(event);
                    }
                }
                "CKS-FILE" => {
                    if let Some((digest, path)) = rest.split_once("  ") {
                        let path = path.trim_start_matches("./").to_string();
                        report.files.insert(path, digest.to_string());
                    }
                }
                "CKS-CTR" => report.ctr.push(rest.to_string()),
                "CKS-ERROR" => panic!("guest: {rest}; console:\n{console}"),
                "CKS-UPTIME" => {
                    report.init_uptime = rest.trim_start_matches("init ").to_string();
                }
                _ => {}
            }
        }
        assert!(
            !report.result.is_empty(),
            "the guest printed no result line; console:\n{console}"
        );
        report
    }

    /// A `key=value` of the result line.
    #[track_caller]
    fn result(&self, key: &str) -> &str {
        self.result
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in the result line; console:\n{}", self.console))
    }

    /// The fields of the first event of command `name` whose message is `message`.
    #[track_caller]
    fn event(&self, name: &str, message: &str) -> &serde_json::Map<String, Value> {
        self.find_event(name, message).unwrap_or_else(|| {
            panic!(
                "`cks-agent {name}` logged no {message:?}; console:\n{}",
                self.console
            )
        })
    }

    fn find_event(&self, name: &str, message: &str) -> Option<&serde_json::Map<String, Value>> {
        self.logs
            .get(name)?
            .iter()
            .filter_map(|e| e.get("fields")?.as_object())
            .find(|f| f.get("message").and_then(Value::as_str) == Some(message))
    }

    /// The device (`sr1`) holding volume id `label`.
    #[track_caller]
    fn device_labelled(&self, label: &str) -> String {
        let found: Vec<&String> = self
            .devices
            .iter()
            .filter(|(_, l)| *l == label)
            .map(|(d, _)| d)
            .collect();
        assert_eq!(found.len(), 1, "one {label} disc in {:?}", self.devices);
        found[0].clone()
    }
}

/// Boots a guest with the config drive as `/dev/sr0`, `bundle` as `/dev/sr1`, and `body` as
/// its test.
fn boot(name: &str, bundle: &Path, body: &str) -> Report {
    let bundles = bundles();
    let dir = bundles.work.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let assets = &bundles.assets;

    let mut initramfs = Initramfs::new();
    initramfs.file(
        "bin/busybox",
        0o755,
        &std::fs::read(&assets.busybox).expect("busybox"),
    );
    initramfs.file("bin/fake-ctr", 0o755, FAKE_CTR.as_bytes());
    let mut names = Vec::new();
    for module in &assets.modules {
        let file_name = module.file_name().expect("name").to_string_lossy();
        initramfs.file(
            &format!("modules/{file_name}"),
            0o644,
            &std::fs::read(module).expect("module"),
        );
        names.push(file_name.trim_end_matches(".ko").to_string());
    }
    // bin/cks-agent, KIND, and for a glibc agent its libraries.
    initramfs.tree(&assets.agent_tree);
    initramfs.file("init", 0o755, init_script(&names, body).as_bytes());
    let initramfs_path = dir.join("initramfs.cpio");
    initramfs.write(&initramfs_path).expect("write initramfs");

    let guest = Guest::start(&BootSpec {
        assets,
        initramfs: &initramfs_path,
        first_disc: &bundles.config_drive,
        cdrom: bundle,
        console: &dir.join("console.log"),
    });
    let finished = guest.wait();
    let report = Report::parse(&finished.console);
    eprintln!(
        "{name}: {} with a {} cks-agent: {:.1} s wall, init at {} s and power-off at {} s \
         guest uptime",
        assets.kernel_package,
        assets.agent_kind,
        finished.elapsed.as_secs_f64(),
        report.init_uptime,
        report.result("guest_uptime"),
    );
    report
}

/// The string field `key` of a log event.
#[track_caller]
fn field<'a>(event: &'a serde_json::Map<String, Value>, key: &str) -> &'a str {
    event
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {key} in {event:?}"))
}

/// Checks that `name` found the bundle on the CDROM disc after passing over the config drive,
/// and had the kernel mount it as iso9660 directly from that device.
#[track_caller]
fn assert_found_and_kernel_mounted(report: &Report, name: &str) {
    let bundle_dev = format!("/dev/{}", report.device_labelled("CDROM"));
    let config_dev = format!("/dev/{}", report.device_labelled("config-2"));
    assert!(
        config_dev < bundle_dev,
        "the config drive ({config_dev}) must come first in the scan, before {bundle_dev}"
    );
    let skipped = report.event(name, "skipping the CloudStack config drive");
    assert_eq!(field(skipped, "device"), config_dev);
    let found = report.event(name, "found the bundle device");
    assert_eq!(field(found, "device"), bundle_dev);
    assert_eq!(field(found, "label"), "CDROM");
    let mounted = report.event(name, "bundle mounted read-only by the kernel");
    assert_eq!(field(mounted, "access"), "kernel mount");
    assert_eq!(field(mounted, "fstype"), "iso9660");
    assert_eq!(field(mounted, "device"), bundle_dev);
    assert_eq!(
        field(mounted, "bundle"),
        format!("device:{bundle_dev}"),
        "mounted from the device itself, no loop"
    );
    let opened = report.event(name, "bundle opened");
    assert_eq!(field(opened, "access"), "kernel mount");
}

// === tests ===

#[test]
fn corrupt_cdrom_bundle_is_refused_in_a_vm_and_nothing_is_installed() {
    let bundles = bundles();
    let report = boot("corrupt", &bundles.corrupt, CORRUPT_BODY);

    assert_eq!(
        report.result("verify"),
        EXIT_BUNDLE_REFUSED,
        "{}",
        report.console
    );
    assert_eq!(
        report.result("install"),
        EXIT_BUNDLE_REFUSED,
        "{}",
        report.console
    );
    for name in ["verify", "install"] {
        assert_found_and_kernel_mounted(&report, name);
        let failed = report.event(name, "cks-agent failed");
        let error = field(failed, "error");
        assert!(error.contains("refused"), "{error}");
        assert!(error.contains("k8s/kubelet"), "{error}");
    }
    assert_eq!(
        report.result("node_entries"),
        "0",
        "nothing written under the root"
    );
    assert!(report.files.is_empty(), "{:?}", report.files);
    assert!(report.ctr.is_empty(), "no image imported: {:?}", report.ctr);
    assert_eq!(
        report.result("iso9660_mounts"),
        "0",
        "unmounted after the refusal"
    );
}

#[test]
fn cdrom_bundle_is_found_by_label_kernel_mounted_verified_and_installed_in_a_vm() {
    let bundles = bundles();
    let report = boot("good", &bundles.good, GOOD_BODY);

    assert_eq!(report.result("verify"), "0", "{}", report.console);
    assert_eq!(report.result("install"), "0", "{}", report.console);
    for name in ["verify", "install"] {
        assert_found_and_kernel_mounted(&report, name);
    }
    let verified = report.event("verify", "bundle verified");
    assert_eq!(field(verified, "kubernetes_version"), "1.33.1");

    // The loop path: an ISO file, attached to a loop device and mounted as iso9660.
    assert_eq!(report.result("loopverify"), "0", "{}", report.console);
    let mounted = report.event("loopverify", "bundle mounted read-only by the kernel");
    assert_eq!(field(mounted, "fstype"), "iso9660");
    assert!(
        field(mounted, "device").starts_with("/dev/loop"),
        "{mounted:?}"
    );
    report.event("loopverify", "bundle verified");
    assert_eq!(report.result("attached_loops"), "0", "loop device detached");
    assert_eq!(report.result("iso9660_mounts"), "0", "every mount released");

    // Files: what the manifest says, byte for byte where the agent copies verbatim…
    let manifest = &bundles.manifest;
    let digest_of = |iso_path: &str| {
        manifest
            .files
            .iter()
            .find(|f| f.path == iso_path)
            .unwrap_or_else(|| panic!("{iso_path} not in the manifest"))
            .sha256
            .hex()
            .to_string()
    };
    for name in ["kubeadm", "kubelet", "kubectl"] {
        assert_eq!(
            report.files.get(&format!("opt/bin/{name}")),
            Some(&digest_of(&format!("k8s/{name}"))),
            "opt/bin/{name}"
        );
    }
    for file in manifest
        .files
        .iter()
        .filter(|f| f.kind == FileKind::KubernetesManifest)
    {
        assert_eq!(
            report
                .files
                .get(&format!("var/lib/cks-agent/manifests/{}", file.path)),
            Some(&file.sha256.hex().to_string()),
            "{}",
            file.path
        );
    }
    let mut manifest_bytes = Vec::new();
    IsoBundle::open(&bundles.good)
        .expect("open ISO")
        .open(MANIFEST_PATH)
        .expect("manifest")
        .read_to_end(&mut manifest_bytes)
        .expect("read");
    assert_eq!(
        report.files.get("var/lib/cks-agent/cks-manifest.json"),
        Some(&Sha256Digest::of(&manifest_bytes).hex().to_string())
    );
    // …and the whole tree equal to a user-space install of the same ISO on the host (CNI
    // plugins, crictl, rewritten units, containerd config included).
    let mut guest_files = report.files.clone();
    guest_files.retain(|path, _| !is_journal(path));
    assert_eq!(guest_files, bundles.host_install);
    assert!(
        report.files.contains_key("var/lib/cks-agent/journal.json"),
        "the install was journaled: {:?}",
        report.files.keys()
    );

    // Images: the archive streamed to `ctr images import -`, byte for byte the one a user-space
    // install on the host streams (which holds every blob of the bundle).
    assert_eq!(report.ctr, bundles.host_imports);
}
