//! A harness for tests that run the stand-ins as processes: simulated nodes (a root directory
//! with the kubelet unit, its kubeadm drop-in and a bundle-style kubelet wrapper), commands run
//! in their own process group, and every process group killed when the simulation is dropped,
//! also when a test fails. Servers only listen on 127.0.0.0/8: each simulation picks its own
//! 127.x.y.0/24 so that tests running at once never share a port.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// kubeadm's kubelet drop-in, as the bundle ships it.
pub const KUBEADM_DROPIN: &str = "[Service]
Environment=\"KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf\"
Environment=\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml\"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/opt/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
";

/// The kubelet unit, as the bundle ships it.
pub const KUBELET_SERVICE: &str = "[Unit]
Description=kubelet: The Kubernetes Node Agent

[Service]
ExecStart=/opt/bin/kubelet
Restart=always
RestartSec=10

[Install]
WantedBy=multi-user.target
";

/// The kubectl the tests drive (the system's).
pub fn kubectl_binary() -> PathBuf {
    std::env::var_os("KUBESIM_KUBECTL")
        .map_or_else(|| PathBuf::from("/usr/bin/kubectl"), PathBuf::from)
}

/// Extra kubectl binaries to check against (`KUBESIM_TEST_KUBECTLS`, colon-separated), e.g.
/// Debian's kubernetes-client 1.20.
pub fn extra_kubectls() -> Vec<PathBuf> {
    std::env::var_os("KUBESIM_TEST_KUBECTLS")
        .map(|v| std::env::split_paths(&v).filter(|p| p.is_file()).collect())
        .unwrap_or_default()
}

/// Polls `check` every 200 ms for at most `timeout`.
#[track_caller]
pub fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn script(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A simulation: a temp dir with the shared cluster directory and the nodes.
pub struct Sim {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    net: String,
    groups: Mutex<Vec<i32>>,
}

impl Sim {
    pub fn new() -> Sim {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_kubeadm"))
            .parent()
            .unwrap()
            .to_path_buf();
        for b in [
            "kubelet",
            "kubeadm",
            "systemctl",
            "kube-apiserver",
            "kube-controller-manager",
        ] {
            assert!(
                bin.join(b).is_file(),
                "{b} is not built in {}",
                bin.display()
            );
        }
        let seed = std::process::id()
            .wrapping_mul(31)
            .wrapping_add(SEQ.fetch_add(1, Ordering::Relaxed) * 7919)
            .wrapping_add(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos()),
            );
        let net = format!("127.{}.{}", 1 + seed % 250, 1 + (seed / 250) % 250);
        Sim {
            dir: tempfile::tempdir().unwrap(),
            bin,
            net,
            groups: Mutex::new(Vec::new()),
        }
    }

    pub fn cluster_base(&self) -> PathBuf {
        self.dir.path().join("cluster")
    }

    /// `127.x.y.<host>`.
    pub fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.net)
    }

    /// A node at `127.x.y.<host>` with the kubelet unit installed and a kubelet of `version`.
    pub fn node(&self, name: &str, host: u8, version: &str) -> SimNode {
        let root = self.dir.path().join("nodes").join(name);
        std::fs::create_dir_all(&root).unwrap();
        let path_dir = self.dir.path().join("path").join(name);
        std::fs::create_dir_all(&path_dir).unwrap();
        std::os::unix::fs::symlink(self.bin.join("systemctl"), path_dir.join("systemctl")).unwrap();
        let units = root.join("etc/systemd/system");
        std::fs::create_dir_all(units.join("kubelet.service.d")).unwrap();
        std::fs::write(units.join("kubelet.service"), KUBELET_SERVICE).unwrap();
        std::fs::write(
            units.join("kubelet.service.d/10-kubeadm.conf"),
            KUBEADM_DROPIN,
        )
        .unwrap();
        let node = SimNode {
            name: name.to_string(),
            root,
            path_dir,
            ip: self.ip(host),
            version: Mutex::new(version.to_string()),
            bin: self.bin.clone(),
            cluster: self.cluster_base(),
        };
        node.install_kubelet(version);
        node
    }

    /// Runs `command` in a process group of its own, remembered for the clean-up.
    pub fn output(&self, mut command: Command) -> Output {
        command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A program this test just wrote can be "busy" for a moment: another test thread that
        // forked meanwhile holds the writing descriptor until its child execs (ETXTBSY).
        let mut attempts = 0;
        let child = loop {
            match command.spawn() {
                Err(err)
                    if err.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 100 =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                spawned => break spawned.unwrap(),
            }
        };
        self.groups
            .lock()
            .unwrap()
            .push(i32::try_from(child.id()).unwrap());
        child.wait_with_output().unwrap()
    }

    /// kubectl with `kubeconfig` (HOME in the temp dir: its cache stays there).
    pub fn kubectl_with(&self, binary: &Path, kubeconfig: &Path, args: &[&str]) -> Output {
        let mut command = Command::new(binary);
        command
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG");
        self.output(command)
    }

    pub fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        self.kubectl_with(&kubectl_binary(), kubeconfig, args)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        for pgid in self.groups.lock().map(|g| g.clone()).unwrap_or_default() {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        if std::thread::panicking() {
            let logs = walk_logs(self.dir.path());
            for (path, text) in logs {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- {} (last lines) ---", path.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

fn walk_logs(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            found.extend(walk_logs(&p));
        } else if p.extension().is_some_and(|x| x == "log") {
            found.push((p.clone(), std::fs::read_to_string(&p).unwrap_or_default()));
        }
    }
    found
}

/// One simulated node.
pub struct SimNode {
    pub name: String,
    pub root: PathBuf,
    pub path_dir: PathBuf,
    pub ip: String,
    version: Mutex<String>,
    bin: PathBuf,
    cluster: PathBuf,
}

impl SimNode {
    /// Installs `/opt/bin/kubelet` and `/opt/bin/kubeadm` as the bundle's wrappers of `version`.
    pub fn install_kubelet(&self, version: &str) {
        for program in ["kubelet", "kubeadm"] {
            script(
                &self.root.join(format!("opt/bin/{program}")),
                &format!(
                    "if [ -z \"$KUBESIM_BIN\" ]; then echo '{program}: KUBESIM_BIN is not set' >&2; exit 127; fi\nexport KUBESIM_VERSION={version}\nexec \"$KUBESIM_BIN/{program}\" \"$@\"\n"
                ),
            );
        }
        *self.version.lock().unwrap() = version.to_string();
    }

    /// A command for `program` with this node's environment.
    pub fn command(&self, program: &Path) -> Command {
        let path = format!(
            "{}:{}",
            self.path_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = Command::new(program);
        command
            .env("KUBESIM_ROOT", &self.root)
            .env("KUBESIM_CLUSTER", &self.cluster)
            .env("KUBESIM_BIN", &self.bin)
            .env("KUBESIM_ADVERTISE_ADDRESS", &self.ip)
            .env("PATH", path);
        command
    }

    /// The node's kubeadm (its `/opt/bin/kubeadm` wrapper).
    pub fn kubeadm(&self, sim: &Sim, args: &[&str]) -> Output {
        let mut command = self.command(&self.root.join("opt/bin/kubeadm"));
        command.args(args);
        sim.output(command)
    }

    /// The node's systemctl.
    pub fn systemctl(&self, sim: &Sim, args: &[&str]) -> Output {
        let mut command = self.command(&self.path_dir.join("systemctl"));
        command.args(args);
        sim.output(command)
    }

    pub fn admin_conf(&self) -> PathBuf {
        self.root.join("etc/kubernetes/admin.conf")
    }

    pub fn kubelet_conf(&self) -> PathBuf {
        self.root.join("etc/kubernetes/kubelet.conf")
    }
}

/// stdout, asserting success.
#[track_caller]
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr, asserting failure.
#[track_caller]
pub fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure; stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
