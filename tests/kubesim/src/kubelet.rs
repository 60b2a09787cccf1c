//! The kubelet stand-in: registers its Node and keeps its status posted, runs the static pods
//! it finds (kube-apiserver and kube-controller-manager as kubesim processes, the others as
//! simulated containers), keeps their mirror pods, and reports the pods bound to its node.
//!
//! # Contract
//! * Flags: the ones the kubelet unit and kubeadm's drop-in pass (`--kubeconfig`,
//!   `--bootstrap-kubeconfig`, `--config`, `--container-runtime-endpoint`,
//!   `--hostname-override`, `--node-ip`, `--node-labels`, `--register-with-taints`, … see
//!   [`FLAGS`]); unknown flags are refused as the real kubelet does. `--version` prints
//!   `Kubernetes <KUBESIM_VERSION>`.
//! * Node name: `--hostname-override`, else the name kubeadm recorded, else `HOSTNAME`, else
//!   the kernel's host name.
//! * Until kubeadm wrote the kubeconfig and the kubelet configuration, it waits (a real kubelet
//!   crash-loops under systemd; there is no supervisor here).
//! * Ready: the Node is `NotReady` ("cni plugin not initialized") until a CNI is applied — any
//!   DaemonSet other than kube-proxy — then `Ready`. Status is posted every
//!   [`NODE_STATUS_UPDATE`] and on every change.
//! * Static pods: every manifest in `staticPodPath` (kubeadm: `/etc/kubernetes/manifests`);
//!   when the program of its first container (`command[0]`) is in `KUBESIM_BIN`, it runs as a
//!   child with the manifest's arguments and `KUBESIM_VERSION` set from the image tag; a changed
//!   manifest restarts it, a removed one stops it, a crashed one restarts after
//!   [`CRASH_BACKOFF`]. Output goes to `/var/log/pods/<name>.log`. As containers do, static
//!   pods outlive a kubelet restart: their processes are recorded in
//!   [`STATIC_POD_RECORDS`] and the next kubelet adopts them; `kubeadm reset` stops them.
//! * Never daemonizes or calls `setsid`: children stay in the process group. On SIGTERM or
//!   SIGINT it exits; it also exits when the node's root disappears (so do the static pods).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::process::{Child, Command};
use tracing::{info, warn};

use crate::clock::{now_unix, parse_rfc3339, rfc3339};
use crate::cluster::ClusterDir;
use crate::controllers::{PodState, pod_status, pod_status_in};
use crate::daemon::process_start_time;
use crate::env::{NodeEnv, default_route_address, go_arch};
use crate::flags::{FlagSpec, Parsed};
use crate::kubeconfig::Kubeconfig;
use crate::store::{Objects, Store, name_of, namespace_of, uid_of};

/// How often the kubelet looks at its node, pods and manifests.
pub const SYNC_PERIOD: Duration = Duration::from_secs(1);
/// How often the Node's status is posted when nothing changes (`nodeStatusUpdateFrequency`).
pub const NODE_STATUS_UPDATE: u64 = 10;
/// How long a crashed static pod waits before it is restarted.
pub const CRASH_BACKOFF: Duration = Duration::from_secs(5);
/// How long stopped children get before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The container runtime the Node reports.
const CONTAINER_RUNTIME: &str = "containerd://1.7.24";

/// The flags of the real kubelet that units and kubeadm pass; (name, takes a value).
pub const FLAGS: &[(&str, bool)] = &[
    ("bootstrap-kubeconfig", true),
    ("kubeconfig", true),
    ("config", true),
    ("container-runtime-endpoint", true),
    ("image-service-endpoint", true),
    ("hostname-override", true),
    ("node-ip", true),
    ("node-labels", true),
    ("register-with-taints", true),
    ("pod-infra-container-image", true),
    ("pod-cidr", true),
    ("pod-manifest-path", true),
    ("cgroup-driver", true),
    ("cloud-provider", true),
    ("provider-id", true),
    ("resolv-conf", true),
    ("root-dir", true),
    ("fail-swap-on", true),
    ("max-pods", true),
    ("runtime-request-timeout", true),
    ("rotate-certificates", true),
    ("cert-dir", true),
    ("client-ca-file", true),
    ("v", true),
    ("version", false),
];

/// Why the kubelet cannot start.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// Bad command line.
    #[error("{0}")]
    Usage(String),
}

/// The kubelet's resolved configuration.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// The node.
    pub env: NodeEnv,
    /// `--kubeconfig` (host path).
    pub kubeconfig: PathBuf,
    /// `--config` (host path).
    pub config_file: Option<PathBuf>,
    /// `--pod-manifest-path` (node path), else `staticPodPath` from the config file.
    pub pod_manifest_path: Option<String>,
    /// `--hostname-override`.
    pub hostname_override: Option<String>,
    /// `--node-ip`.
    pub node_ip: Option<IpAddr>,
    /// `--node-labels`.
    pub node_labels: Map<String, Value>,
    /// `--register-with-taints`.
    pub taints: Vec<Value>,
}

fn parse_labels(text: &str) -> Result<Map<String, Value>, KubeletError> {
    let mut labels = Map::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            KubeletError::Usage(format!(
                "invalid --node-labels entry {pair:?}: expected key=value"
            ))
        })?;
        labels.insert(k.to_string(), json!(v));
    }
    Ok(labels)
}

fn parse_taints(text: &str) -> Result<Vec<Value>, KubeletError> {
    text.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            let (kv, effect) = t.split_once(':').ok_or_else(|| {
                KubeletError::Usage(format!(
                    "invalid --register-with-taints entry {t:?}: expected key[=value]:effect"
                ))
            })?;
            let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
            let mut taint = json!({"key": key, "effect": effect});
            if !value.is_empty() {
                taint["value"] = json!(value);
            }
            Ok(taint)
        })
        .collect()
}

impl KubeletConfig {
    /// Reads the command line (without the program name). `Ok(None)` for `--version`, which
    /// the caller answers.
    ///
    /// # Errors
    /// [`KubeletError::Usage`].
    pub fn from_args(
        args: &[String],
        env: &NodeEnv,
    ) -> Result<Option<KubeletConfig>, KubeletError> {
        let flags: Parsed = FlagSpec::new(FLAGS)
            .parse(args)
            .map_err(KubeletError::Usage)?;
        if flags.is_set("version") {
            return Ok(None);
        }
        if let Some(extra) = flags.args.first() {
            return Err(KubeletError::Usage(format!(
                "unknown command {extra:?} for \"kubelet\""
            )));
        }
        let node_ip = match flags.get("node-ip") {
            Some(ip) => Some(
                ip.parse()
                    .map_err(|_| KubeletError::Usage(format!("invalid --node-ip {ip:?}")))?,
            ),
            None => None,
        };
        Ok(Some(KubeletConfig {
            env: env.clone(),
            kubeconfig: env.host_path(
                flags
                    .get("kubeconfig")
                    .unwrap_or("/etc/kubernetes/kubelet.conf"),
            ),
            config_file: flags.get("config").map(|c| env.host_path(c)),
            pod_manifest_path: flags.get("pod-manifest-path").map(str::to_string),
            hostname_override: flags.get("hostname-override").map(str::to_string),
            node_ip,
            node_labels: parse_labels(flags.get("node-labels").unwrap_or_default())?,
            taints: parse_taints(flags.get("register-with-taints").unwrap_or_default())?,
        }))
    }

    /// The node's name (see the module documentation).
    pub fn node_name(&self) -> String {
        if let Some(name) = &self.hostname_override {
            return name.to_lowercase();
        }
        if let Ok(name) =
            std::fs::read_to_string(self.env.host_path("/var/lib/kubelet/kubesim-node"))
            && !name.trim().is_empty()
        {
            return name.trim().to_string();
        }
        if let Some(name) = &self.env.hostname {
            return name.to_lowercase();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_lowercase())
            .unwrap_or_else(|_| "localhost".into())
    }

    /// The static pod directory (host path): `--pod-manifest-path`, else the configuration's
    /// `staticPodPath`; `None` when neither is set.
    fn static_pod_dir(&self) -> Option<PathBuf> {
        if let Some(p) = &self.pod_manifest_path {
            return Some(self.env.host_path(p));
        }
        let text = std::fs::read_to_string(self.config_file.as_ref()?).ok()?;
        let config: Value = serde_yaml_ng::from_str(&text).ok()?;
        config
            .get("staticPodPath")
            .and_then(Value::as_str)
            .map(|p| self.env.host_path(p))
    }
}

/// A static pod read from a manifest.
#[derive(Debug, Clone, PartialEq)]
struct StaticPod {
    /// The manifest as parsed.
    manifest: Value,
    /// Hash of the manifest file (`kubernetes.io/config.hash`).
    hash: String,
}

impl StaticPod {
    fn name(&self) -> &str {
        name_of(&self.manifest)
    }

    /// (program, arguments, version from the image tag).
    fn command(&self) -> Option<(String, Vec<String>, Option<String>)> {
        let container = self.manifest.pointer("/spec/containers/0")?;
        let strings = |field: &str| -> Vec<String> {
            container
                .get(field)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut command = strings("command");
        command.extend(strings("args"));
        let program = command.first()?.rsplit('/').next()?.to_string();
        let version = container
            .get("image")
            .and_then(Value::as_str)
            .and_then(|i| i.rsplit_once(':'))
            .map(|(_, tag)| tag.to_string())
            .filter(|t| t.starts_with('v'));
        Some((program, command.split_off(1), version))
    }
}

/// A running static pod process.
struct Running {
    hash: String,
    /// The process; `None` when it exited (or for a simulated container, which has none).
    proc: Option<Proc>,
    /// No kubesim program: a simulated container, always running.
    simulated: bool,
    started: u64,
    exited_at: Option<Instant>,
}

/// A static pod's process.
enum Proc {
    /// Started by this kubelet.
    Child(Child),
    /// Started by an earlier kubelet of this node and adopted: (pid, start time).
    Adopted(u32, u64),
}

impl Proc {
    /// Whether it still runs (reaping it when it is this kubelet's child).
    fn alive(&mut self) -> bool {
        match self {
            Proc::Child(child) => matches!(child.try_wait(), Ok(None)),
            Proc::Adopted(pid, started) => process_start_time(*pid) == Some(*started),
        }
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`].
    async fn stop(self) {
        match self {
            Proc::Child(mut child) => {
                if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                if tokio::time::timeout(STOP_GRACE, child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
            Proc::Adopted(pid, started) => {
                let _ = tokio::task::spawn_blocking(move || {
                    crate::daemon::stop_process(pid, started, STOP_GRACE)
                })
                .await;
            }
        }
    }
}

/// Where a static pod's process is recorded (node path): `<pid> <start time> <started unix>
/// <manifest hash>`, so that the next kubelet of the node adopts it instead of restarting it
/// (containers outlive a kubelet restart), and `kubeadm reset` can remove it.
pub const STATIC_POD_RECORDS: &str = "/run/kubesim/pods";

/// A static pod's record: (pid, start time, started at, manifest hash).
fn read_record(path: &Path) -> Option<(u32, u64, u64, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.to_string(),
    ))
}

/// Stops every static pod process recorded on the node at `root` (what `kubeadm reset` does
/// with the containers). Blocking.
pub fn stop_static_pods(root: &Path) {
    let dir = crate::env::node_path(root, STATIC_POD_RECORDS);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        if let Some((pid, started, _, _)) = read_record(&entry.path()) {
            crate::daemon::stop_process(pid, started, STOP_GRACE);
        }
        let _ = std::fs::remove_file(entry.path());
    }
}

/// The kubelet.
pub struct Kubelet {
    config: KubeletConfig,
    node_name: String,
    pods: BTreeMap<String, Running>,
    last_status_post: u64,
    waiting_logged: bool,
    /// Whether the Node was registered (or found); a kubelet registers once per start, so a
    /// Node deleted later stays deleted until the kubelet restarts.
    registered: bool,
}

fn read_manifests(dir: &Path) -> BTreeMap<String, StaticPod> {
    let mut pods = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return pods;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let is_manifest = path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json");
        if !is_manifest {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        match serde_yaml_ng::from_str::<Value>(&text) {
            Ok(manifest) if !name_of(&manifest).is_empty() => {
                let hash = crate::ids::stable_hash(&text, 16);
                pods.insert(name_of(&manifest).to_string(), StaticPod { manifest, hash });
            }
            _ => {
                warn!(path = %path.display(), "ignoring a static pod manifest that is not a named Pod")
            }
        }
    }
    pods
}

/// Whether a CNI has been applied: any DaemonSet other than kube-proxy.
pub fn network_ready(objects: &Objects) -> bool {
    objects
        .list("daemonsets.apps", None)
        .iter()
        .any(|ds| !(namespace_of(ds) == "kube-system" && name_of(ds) == "kube-proxy"))
}

fn first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|t| t.lines().next().unwrap_or_default().trim().to_string())
        .unwrap_or_default()
}

fn os_image(root: &Path) -> String {
    for path in [
        crate::env::node_path(root, "/etc/os-release"),
        PathBuf::from("/etc/os-release"),
    ] {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some(name) = text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME="))
        {
            return name.trim_matches('"').to_string();
        }
    }
    "Linux".into()
}

fn memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(2_097_152)
}

impl Kubelet {
    /// A kubelet for `config`.
    pub fn new(config: KubeletConfig) -> Kubelet {
        let node_name = config.node_name();
        Kubelet {
            config,
            node_name,
            pods: BTreeMap::new(),
            last_status_post: 0,
            waiting_logged: false,
            registered: false,
        }
    }

    /// The node's InternalIP.
    fn node_ip(&self, manifests: &BTreeMap<String, StaticPod>) -> String {
        if let Some(ip) = self.config.node_ip {
            return ip.to_string();
        }
        let advertised = manifests.get("kube-apiserver").and_then(|p| {
            p.command().and_then(|(_, args, _)| {
                args.iter()
                    .find_map(|a| a.strip_prefix("--advertise-address=").map(str::to_string))
            })
        });
        advertised
            .or_else(|| self.config.env.advertise_address.map(|ip| ip.to_string()))
            .or_else(|| default_route_address().map(|ip| ip.to_string()))
            .unwrap_or_else(|| "127.0.0.1".into())
    }

    /// Runs until `shutdown`; then stops the static pods.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        info!(
            node = self.node_name,
            version = self.config.env.version,
            "kubelet starting"
        );
        tokio::pin!(shutdown);
        loop {
            if !self.config.env.root.exists() {
                info!("the node's root is gone; stopping");
                break;
            }
            self.sync().await;
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = tokio::time::sleep(SYNC_PERIOD) => {}
            }
        }
        // The static pods run on, as containers do when the kubelet stops.
        info!("kubelet stopped");
    }

    /// One pass: static pods, node status, pod statuses, mirror pods.
    async fn sync(&mut self) {
        let kubeconfig = match std::fs::read_to_string(&self.config.kubeconfig)
            .ok()
            .and_then(|t| Kubeconfig::from_yaml(&t).ok())
        {
            Some(k) => k,
            None => {
                if !self.waiting_logged {
                    info!(kubeconfig = %self.config.kubeconfig.display(), "waiting for the kubeconfig (kubeadm init or join)");
                    self.waiting_logged = true;
                }
                return;
            }
        };
        let manifests = self
            .config
            .static_pod_dir()
            .map(|d| read_manifests(&d))
            .unwrap_or_default();
        self.sync_static_pods(&manifests).await;
        let Ok(cluster) = ClusterDir::for_ca_pem(&self.config.env.cluster_base, &kubeconfig.ca_pem)
        else {
            return;
        };
        let store = cluster.store();
        if let Err(err) = self.post_status(&store, &manifests) {
            warn!(error = %crate::daemon::error_chain(&err), "failed to post node status");
        }
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.config
            .env
            .host_path(format!("{STATIC_POD_RECORDS}/{name}.pid"))
    }

    async fn sync_static_pods(&mut self, manifests: &BTreeMap<String, StaticPod>) {
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(name, running)| manifests.get(*name).is_none_or(|m| m.hash != running.hash))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(running) = self.pods.remove(&name) {
                info!(
                    pod = name,
                    "static pod manifest changed or removed; stopping it"
                );
                if let Some(proc) = running.proc {
                    proc.stop().await;
                }
                let _ = std::fs::remove_file(self.record_path(&name));
            }
        }
        for (name, pod) in manifests {
            let start = match self.pods.get_mut(name) {
                None => match self.adopt(name, pod).await {
                    Some(running) => {
                        self.pods.insert(name.clone(), running);
                        false
                    }
                    None => true,
                },
                Some(running) => {
                    if let Some(proc) = &mut running.proc
                        && !proc.alive()
                    {
                        warn!(pod = name, "static pod exited; restarting after a back-off");
                        running.proc = None;
                        running.exited_at = Some(Instant::now());
                    }
                    !running.simulated
                        && running.proc.is_none()
                        && running
                            .exited_at
                            .is_some_and(|t| t.elapsed() >= CRASH_BACKOFF)
                }
            };
            if start {
                let running = self.start_static_pod(pod);
                self.pods.insert(name.clone(), running);
            }
        }
    }

    /// The process an earlier kubelet started for `pod`, when it still runs that manifest; a
    /// process running another manifest is stopped.
    async fn adopt(&self, name: &str, pod: &StaticPod) -> Option<Running> {
        let record = self.record_path(name);
        let (pid, started, started_unix, hash) = read_record(&record)?;
        let mut proc = Proc::Adopted(pid, started);
        if !proc.alive() {
            let _ = std::fs::remove_file(&record);
            return None;
        }
        if hash != pod.hash {
            info!(
                pod = name,
                pid, "a running static pod has an old manifest; stopping it"
            );
            proc.stop().await;
            let _ = std::fs::remove_file(&record);
            return None;
        }
        info!(pod = name, pid, "adopted the running static pod");
        Some(Running {
            hash: hash.clone(),
            proc: Some(proc),
            simulated: false,
            started: started_unix,
            exited_at: None,
        })
    }

    fn start_static_pod(&self, pod: &StaticPod) -> Running {
        let simulated = Running {
            hash: pod.hash.clone(),
            proc: None,
            simulated: true,
            started: now_unix(),
            exited_at: None,
        };
        let Some((program, args, version)) = pod.command() else {
            return simulated;
        };
        let Some(binary) = self.config.env.binary(&program) else {
            return simulated;
        };
        let failed = Running {
            simulated: false,
            exited_at: Some(Instant::now()),
            ..simulated
        };
        let log_path = self
            .config
            .env
            .host_path(format!("/var/log/pods/{}.log", pod.name()));
        if let Some(dir) = log_path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let Ok(log) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
        else {
            return failed;
        };
        let Ok(stdout) = log.try_clone() else {
            return failed;
        };
        let version = version.unwrap_or_else(|| self.config.env.version.clone());
        let mut command = Command::new(&binary);
        // Not killed with the kubelet: a container outlives a kubelet restart.
        command
            .args(&args)
            .envs(self.config.env.to_vars())
            .env(crate::env::ENV_VERSION, version)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log);
        match command.spawn() {
            Ok(child) => {
                let pid = child.id().unwrap_or_default();
                info!(pod = pod.name(), pid, "started static pod");
                if let Some(started) = process_start_time(pid) {
                    let record = format!("{pid} {started} {} {}\n", failed.started, pod.hash);
                    if let Err(err) = crate::cluster::write_atomic(
                        &self.record_path(pod.name()),
                        record.as_bytes(),
                        0o644,
                    ) {
                        warn!(pod = pod.name(), %err, "failed to record the static pod's process");
                    }
                }
                Running {
                    proc: Some(Proc::Child(child)),
                    exited_at: None,
                    ..failed
                }
            }
            Err(err) => {
                warn!(pod = pod.name(), %err, binary = %binary.display(), "failed to start static pod");
                failed
            }
        }
    }

    /// Registers or updates the Node, the statuses of pods bound to it and its mirror pods.
    fn post_status(
        &mut self,
        store: &Store,
        manifests: &BTreeMap<String, StaticPod>,
    ) -> Result<(), crate::store::StoreError> {
        let now = now_unix();
        let snapshot = store.read()?;
        let network = network_ready(&snapshot);
        let node_ip = self.node_ip(manifests);
        let due = now.saturating_sub(self.last_status_post) >= NODE_STATUS_UPDATE;
        let running: BTreeMap<String, (String, bool, u64)> = self
            .pods
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    (r.hash.clone(), r.simulated || r.proc.is_some(), r.started),
                )
            })
            .collect();
        let node_name = self.node_name.clone();
        let config = self.config.clone();
        let manifests = manifests.clone();
        let registered = self.registered;
        let posted = store.update(|objects| {
            let old = objects.get("nodes", "", &node_name).cloned();
            if old.is_none() && registered {
                return None;
            }
            let node = desired_node(&config, &node_name, old.as_ref(), network, &node_ip, now);
            let changed = old
                .as_ref()
                .is_none_or(|o| without_heartbeats(o) != without_heartbeats(&node));
            let mut posted = false;
            if changed || due {
                objects.put("nodes", node, now);
                posted = true;
            }
            let Some(node) = objects.get("nodes", "", &node_name).cloned() else {
                return Some(posted);
            };
            for pod in objects.snapshot("pods") {
                if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node_name.as_str())
                    || is_mirror(&pod)
                {
                    continue;
                }
                let status = pod_status(&pod, &node, network, now);
                if pod.get("status") != Some(&status) {
                    let mut next = pod.clone();
                    next["status"] = status;
                    objects.put("pods", next, now);
                }
            }
            sync_mirror_pods(objects, &node, &manifests, &running, now);
            Some(posted)
        })?;
        match posted {
            Some(posted) => {
                if !self.registered {
                    info!(node = self.node_name, "node registered");
                }
                self.registered = true;
                if posted {
                    self.last_status_post = now;
                }
            }
            None if now.saturating_sub(self.last_status_post) >= NODE_STATUS_UPDATE => {
                warn!(
                    node = self.node_name,
                    "error updating node status: nodes \"{}\" not found", self.node_name
                );
                self.last_status_post = now;
            }
            None => {}
        }
        Ok(())
    }
}

fn is_mirror(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some()
}

/// The Node without the times that change on every post.
fn without_heartbeats(node: &Value) -> Value {
    let mut n = node.clone();
    if let Some(conditions) = n
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    {
        for c in conditions {
            if let Some(m) = c.as_object_mut() {
                m.remove("lastHeartbeatTime");
            }
        }
    }
    if let Some(m) = n.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    n
}

/// The Node as this kubelet registers and posts it; labels, annotations, taints and spec set by
/// others (kubeadm, kubectl, the controller manager) are kept.
fn desired_node(
    config: &KubeletConfig,
    name: &str,
    old: Option<&Value>,
    network: bool,
    node_ip: &str,
    now: u64,
) -> Value {
    let mut node = old.cloned().unwrap_or_else(|| {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
               "spec": if config.taints.is_empty() { json!({}) } else { json!({"taints": config.taints}) }})
    });
    let arch = go_arch();
    let mut labels = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (k, v) in [
        ("beta.kubernetes.io/arch", arch),
        ("beta.kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch),
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
    ] {
        labels.insert(k.into(), json!(v));
    }
    labels.extend(config.node_labels.clone());
    node["metadata"]["labels"] = json!(labels);
    node["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"] = json!("0");
    node["metadata"]["annotations"]["volumes.kubernetes.io/controller-managed-attach-detach"] =
        json!("true");
    let old_conditions: Vec<Value> = old
        .and_then(|o| o.pointer("/status/conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        let transition = old_conditions
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
            .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(rfc3339(now)));
        let heartbeat = old_conditions
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
            .and_then(|c| c.get("lastHeartbeatTime").and_then(Value::as_str))
            .and_then(parse_rfc3339)
            .filter(|t| now.saturating_sub(*t) < NODE_STATUS_UPDATE)
            .map_or_else(|| rfc3339(now), rfc3339);
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": heartbeat, "lastTransitionTime": transition})
    };
    let ready = if network {
        condition(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        )
    } else {
        condition(
            "Ready",
            "False",
            "KubeletNotReady",
            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized",
        )
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = format!("{}Ki", memory_kib());
    let capacity = json!({"cpu": cpus.to_string(), "ephemeral-storage": "20971520Ki", "hugepages-2Mi": "0", "memory": memory, "pods": "110"});
    node["status"] = json!({
        "addresses": [{"type": "InternalIP", "address": node_ip}, {"type": "Hostname", "address": name}],
        "allocatable": capacity,
        "capacity": capacity,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ready,
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "architecture": arch,
            "bootID": first_line("/proc/sys/kernel/random/boot_id"),
            "containerRuntimeVersion": CONTAINER_RUNTIME,
            "kernelVersion": first_line("/proc/sys/kernel/osrelease"),
            "kubeProxyVersion": config.env.version,
            "kubeletVersion": config.env.version,
            "machineID": first_line("/etc/machine-id"),
            "operatingSystem": "linux",
            "osImage": os_image(&config.env.root),
            "systemUUID": "",
        },
    });
    node
}

/// Keeps one mirror pod (`<name>-<node>`) per static pod: Running and Ready while its process
/// is up, Running but not Ready while a crashed one waits to restart, Pending while a new
/// manifest's process has not started.
fn sync_mirror_pods(
    objects: &mut Objects,
    node: &Value,
    manifests: &BTreeMap<String, StaticPod>,
    running: &BTreeMap<String, (String, bool, u64)>,
    now: u64,
) {
    let node_name = name_of(node).to_string();
    for pod in objects.snapshot("pods") {
        let mine = is_mirror(&pod)
            && pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node_name.as_str());
        let static_name = name_of(&pod)
            .strip_suffix(&format!("-{node_name}"))
            .unwrap_or_default()
            .to_string();
        if mine && !manifests.contains_key(&static_name) {
            objects.remove("pods", namespace_of(&pod), name_of(&pod));
        }
    }
    for (name, pod) in manifests {
        let namespace = pod
            .manifest
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("kube-system");
        let mirror_name = format!("{name}-{node_name}");
        let old = objects.get("pods", namespace, &mirror_name).cloned();
        let (hash, up, started) = running.get(name).cloned().unwrap_or_default();
        // A new manifest's pod is created (Pending) until its process runs; a process that
        // exited is waiting to be restarted (Running, not Ready).
        let state = match (hash == pod.hash, up) {
            (true, true) => PodState::Running,
            (true, false) => PodState::Restarting,
            (false, _) => PodState::Creating,
        };
        let mut mirror = pod.manifest.clone();
        mirror["apiVersion"] = json!("v1");
        mirror["kind"] = json!("Pod");
        mirror["metadata"]["name"] = json!(mirror_name);
        mirror["metadata"]["namespace"] = json!(namespace);
        for (k, v) in [
            ("kubernetes.io/config.hash", &pod.hash),
            ("kubernetes.io/config.mirror", &pod.hash),
            ("kubernetes.io/config.source", &"file".to_string()),
        ] {
            mirror["metadata"]["annotations"][k] = json!(v);
        }
        mirror["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": uid_of(node), "controller": true}]);
        mirror["spec"]["nodeName"] = json!(node_name);
        mirror["spec"]["hostNetwork"] = json!(true);
        mirror["status"] = pod_status_in(&mirror, node, state, started.max(1));
        if let Some(old) = &old {
            for field in ["uid", "creationTimestamp", "resourceVersion"] {
                if let Some(v) = old.pointer(&format!("/metadata/{field}")) {
                    mirror["metadata"][field] = v.clone();
                }
            }
        }
        if old.as_ref() != Some(&mirror) {
            objects.put("pods", mirror, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(root: &Path) -> NodeEnv {
        NodeEnv {
            root: root.to_path_buf(),
            cluster_base: root.join("cluster"),
            bin: None,
            version: "v1.33.1".into(),
            advertise_address: None,
            hostname: None,
        }
    }

    #[test]
    fn flags_are_checked_and_version_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(
            KubeletConfig::from_args(&args(&["--version"]), &env(dir.path()))
                .unwrap()
                .is_none()
        );
        let err = KubeletConfig::from_args(&args(&["--bogus=1"]), &env(dir.path())).unwrap_err();
        assert_eq!(err.to_string(), "unknown flag: --bogus");
        let config = KubeletConfig::from_args(
            &args(&[
                "--kubeconfig=/etc/kubernetes/kubelet.conf",
                "--config=/var/lib/kubelet/config.yaml",
                "--hostname-override=Worker-1",
                "--node-labels=a=b,c=d",
                "--register-with-taints=dedicated=infra:NoSchedule",
            ]),
            &env(dir.path()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(config.node_name(), "worker-1");
        assert_eq!(
            config.kubeconfig,
            dir.path().join("etc/kubernetes/kubelet.conf")
        );
        assert_eq!(config.node_labels["c"], "d");
        assert_eq!(config.taints[0]["value"], "infra");
    }

    #[test]
    fn the_node_is_not_ready_until_a_cni_daemonset_exists() {
        let dir = tempfile::tempdir().unwrap();
        let config = KubeletConfig::from_args(&[], &env(dir.path()))
            .unwrap()
            .unwrap();
        let node = desired_node(&config, "n1", None, false, "10.0.0.1", 1_800_000_000);
        assert_eq!(crate::controllers::node_ready(&node), "False");
        assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], "v1.33.1");
        let mut objects = Objects::default();
        objects.put(
            "daemonsets.apps",
            json!({"metadata": {"name": "kube-proxy", "namespace": "kube-system"}}),
            0,
        );
        assert!(!network_ready(&objects));
        objects.put(
            "daemonsets.apps",
            json!({"metadata": {"name": "calico-node", "namespace": "kube-system"}}),
            0,
        );
        assert!(network_ready(&objects));
        let ready = desired_node(&config, "n1", Some(&node), true, "10.0.0.1", 1_800_000_005);
        assert_eq!(crate::controllers::node_ready(&ready), "True");
        // Labels set by others survive.
        let mut labelled = ready.clone();
        labelled["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = json!("");
        let again = desired_node(
            &config,
            "n1",
            Some(&labelled),
            true,
            "10.0.0.1",
            1_800_000_006,
        );
        assert_eq!(
            again["metadata"]["labels"]["node-role.kubernetes.io/control-plane"],
            ""
        );
        assert_eq!(without_heartbeats(&again), without_heartbeats(&labelled));
    }
}
