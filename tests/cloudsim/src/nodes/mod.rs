//! Real nodes: every started VM is a process tree running the real `cks-agent`.
//!
//! # What a node is
//!
//! A VM's disk is `<state>/vms/<vm-id>/root`, kept across stop/start and removed on destroy.
//! Starting the node:
//! 1. clears `<root>/run` (a tmpfs on a real node);
//! 2. on first boot only, applies the userdata under the root as cloud-init or Ignition would
//!    ([`userdata`]; anything not understood fails the start job, loudly);
//! 3. shows the attached ISO as a CD-ROM: `<vm>/dev/disk/by-label/CDROM` is a symlink to the ISO
//!    file, which the agent's discovery follows as it follows udev's link (`--dev-dir`), with an
//!    empty `--sys-dir` so that no host block device is ever considered;
//! 4. with network namespaces, creates the node's namespace with one veth per NIC, plugged into
//!    the bridge of the NIC's network (in that network's router namespace, which holds the
//!    gateway address), the NIC's address and MAC, and a default route via the gateway; the
//!    forwarders for public IPs (hairpin) and egress endpoints come up inside it ([`forward`]);
//! 5. starts a containerd of its own (config `<root>/etc/containerd/config.toml`, written on
//!    first boot, root `<root>/var/lib/containerd`, socket under `<root>/run/containerd`), then
//!    the units enabled on the node's disk, as systemd does at boot (`systemctl is-enabled` and
//!    `systemctl start` with the node's stand-in, e.g. the kubelet after `systemctl enable
//!    kubelet`), then `cks-agent run --root <root> --containerd-socket … --dev-dir … --sys-dir …
//!    --mount user-space` (the host kernel cannot mount iso9660).
//!
//! Before that, the VM's SSH public keys are added to `<root>/root/.ssh/authorized_keys`. A VM
//! hit by the never-boot fault gets only step 4: its NICs exist, nothing runs.
//!
//! Every process of the node runs with `KUBESIM_ROOT=<root>`, `KUBESIM_CLUSTER=<state>/kubesim`,
//! `KUBESIM_BIN=<kubesim bin dir>`, `HOSTNAME=<vm name>` and a `PATH` whose first directory
//! (`<state>/node-bin`) holds the `systemctl` stand-in; stdout and stderr go to
//! `<state>/vms/<vm-id>/logs/<program>.log`.
//!
//! Stopping kills the whole tree ([`process`]: SIGTERM, bounded wait, SIGKILL), closes the
//! node's forwarders and deletes its namespace. Boot and stop run on one thread per VM, in the
//! order the API asked for them; [`NodeRunner`] calls only queue work, as the seam requires.
//!
//! # Loopback mode
//!
//! Without root or network namespaces the agents run in the host's network namespace: they reach
//! the egress endpoints directly, the VMs' NIC addresses exist nowhere, and public IPs are not
//! served (there is no honest target for them). The VM's `details` say `loopback-only`, and the
//! runner logs it at start.
//!
//! # Names and cleanup
//!
//! Everything the runner creates is named with a prefix derived from the state directory
//! (`cs` + 6 hex digits): namespaces `<prefix>-vm-<vm-id>` and `<prefix>-net-<network-id>`, and
//! the marker `CLOUDSIM_NODE=<prefix>/<vm-id>` in every node process's environment. At start the
//! runner removes what a previous run with the same state directory left behind; at shutdown it
//! stops every process by pid and deletes every namespace it made (links go with them).

/// The host tools namespaced nodes need (the node network, containerd and its client, and
/// what builds and serves their bundle): a test that runs nodes skips, or fails under
/// `CI=true`, without them.
pub const NODE_TOOLS: &[&str] = &[
    "ip",
    "containerd",
    "ctr",
    "xorriso",
    "skopeo",
    "docker-registry",
];

pub mod forward;
pub mod netns;
pub mod process;
pub mod userdata;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc as async_mpsc, oneshot};

/// How long to wait for the forwarders to follow a node going up or down.
const NET_ACK: Duration = Duration::from_secs(10);

use self::forward::{NetManager, NetMsg};
use self::process::ProcessTree;
use crate::cidr::Cidr;
use crate::forwarding::ForwardingTable;
use crate::node::{NodeError, NodeInfo, NodeNetwork, NodeRunner, NodeSpec};

/// How long a node's processes get between SIGTERM and SIGKILL, by default.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);
/// How long systemd waits before restarting a failed unit (both template units say 5 s).
const RESTART_DELAY: Duration = Duration::from_secs(5);
/// How long containerd may take to create its socket.
const CONTAINERD_READY: Duration = Duration::from_secs(20);
/// The volume id the agent looks for (contract 1).
const BUNDLE_LABEL: &str = "CDROM";
/// Longest unix socket path containerd accepts (it refuses paths over 104 bytes, below
/// `sun_path`'s 108).
const MAX_SOCKET_PATH: usize = 104;
/// How long a program the simulator runs in a node to its end may take (`systemctl` at boot).
const ONESHOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Units the simulator runs itself at boot, not through the `systemctl` stand-in.
const SIMULATOR_UNITS: [&str; 2] = ["containerd.service", "cks-agent.service"];
/// The system part of a node's `PATH`.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How nodes are networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NetworkMode {
    /// Namespaces when running as root and they work, else loopback.
    #[default]
    Auto,
    /// Network namespaces, or fail to start.
    Netns,
    /// The host's loopback (see the module documentation).
    Loopback,
}

/// How to run nodes (`SimConfig::nodes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodesConfig {
    /// The `cks-agent` binary.
    pub agent: PathBuf,
    /// Directory of the kubesim stand-ins (`kubeadm`, `kubelet`, `systemctl`).
    pub kubesim_bin: PathBuf,
    /// Host endpoints the nodes may reach (`127.x.y.z:port`): inside every node namespace the
    /// same address forwards to the host's.
    pub egress: Vec<SocketAddrV4>,
    /// Namespaces or loopback.
    pub network: NetworkMode,
    /// SIGTERM-to-SIGKILL grace when stopping a node.
    pub stop_grace: Duration,
}

// === impl NodesConfig ===

impl NodesConfig {
    /// Defaults for `agent`: stand-ins next to the running executable (see
    /// [`default_kubesim_bin`]), no egress, automatic networking.
    pub fn new(agent: PathBuf) -> Self {
        NodesConfig {
            agent,
            kubesim_bin: default_kubesim_bin(),
            egress: Vec::new(),
            network: NetworkMode::Auto,
            stop_grace: DEFAULT_STOP_GRACE,
        }
    }
}

/// The directory of the running executable, where cargo also puts kubesim's binaries; for a
/// test executable (in `target/<profile>/deps`) its parent.
pub fn default_kubesim_bin() -> PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    match (dir.file_name(), dir.parent()) {
        (Some(name), Some(parent)) if name == "deps" => parent.to_path_buf(),
        _ => dir,
    }
}

/// The runner cannot start.
#[derive(Debug, thiserror::Error)]
pub enum NodesError {
    /// The state directory is unusable.
    #[error("failed to prepare the node directory {path:?}")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The agent binary is missing.
    #[error("the cks-agent binary {0:?} does not exist; build it with `cargo build -p cks-agent`")]
    AgentMissing(PathBuf),
    /// containerd is not installed.
    #[error("containerd is not in PATH; run scripts/install-deps.sh")]
    ContainerdMissing,
    /// An egress endpoint outside 127.0.0.0/8.
    #[error(
        "egress endpoint {0} is not a loopback address; nodes can only be given endpoints in \
         127.0.0.0/8"
    )]
    EgressNotLoopback(SocketAddrV4),
    /// The state directory's path is too long for the containerd sockets beneath it.
    #[error(
        "containerd socket paths under {0:?} would exceed {MAX_SOCKET_PATH} bytes; use a shorter \
         state directory"
    )]
    StateDirTooLong(PathBuf),
    /// Namespaces were required and do not work.
    #[error("network namespaces are not available (need root and iproute2)")]
    NoNamespaces(#[source] netns::NetnsError),
    /// The forwarders' runtime could not start.
    #[error("failed to start the forwarders' runtime")]
    Runtime(#[source] io::Error),
}

/// Runs every VM as a process tree; see the module documentation.
pub struct ProcessRunner {
    shared: Arc<Shared>,
}

struct Shared {
    config: NodesConfig,
    state_dir: PathBuf,
    prefix: String,
    namespaces: bool,
    closed: AtomicBool,
    actors: Mutex<HashMap<String, Actor>>,
    retired: Mutex<Vec<JoinHandle<()>>>,
    routers: Mutex<HashMap<String, usize>>,
    veths: AtomicU32,
    net: async_mpsc::UnboundedSender<NetMsg>,
    runtime: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

struct Actor {
    tx: mpsc::Sender<Op>,
    thread: JoinHandle<()>,
}

enum Op {
    Start(Box<NodeSpec>),
    Stop,
    Destroy,
    SetIso(Option<PathBuf>),
    /// Build a command in the node's environment (answered with `None` when it does not run).
    Command {
        program: PathBuf,
        args: Vec<String>,
        reply: mpsc::Sender<Option<(Command, Option<PathBuf>)>>,
    },
    Shutdown,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl ProcessRunner ===

impl ProcessRunner {
    /// Checks the configuration, picks the network mode, removes what a previous run with the
    /// same `state_dir` left behind and starts the forwarders.
    ///
    /// # Errors
    /// [`NodesError`].
    pub fn start(config: NodesConfig, state_dir: &Path) -> Result<ProcessRunner, NodesError> {
        let prepare = |path: &Path| {
            let path = path.to_path_buf();
            move |source| NodesError::Prepare { path, source }
        };
        std::fs::create_dir_all(state_dir).map_err(prepare(state_dir))?;
        let state_dir = state_dir.canonicalize().map_err(prepare(state_dir))?;
        let mut config = config;
        config.agent = match config.agent.canonicalize() {
            Ok(agent) if agent.is_file() => agent,
            _ => return Err(NodesError::AgentMissing(config.agent.clone())),
        };
        if find_in_path("containerd").is_none() {
            return Err(NodesError::ContainerdMissing);
        }
        if let Some(bad) = config.egress.iter().find(|e| !e.ip().is_loopback()) {
            return Err(NodesError::EgressNotLoopback(*bad));
        }
        let longest = NodeDirs::new(&state_dir, &uuid::Uuid::nil().to_string())
            .containerd_socket()
            .with_extension("sock.ttrpc");
        if longest.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(NodesError::StateDirTooLong(state_dir));
        }
        let systemctl = config.kubesim_bin.join("systemctl");
        if !systemctl.is_file() {
            tracing::warn!(
                path = %systemctl.display(),
                "the systemctl stand-in is missing; agent commands that start kubelet will fail \
                 (build kubesim, or set --kubesim-bin)"
            );
        }
        let prefix = format!(
            "cs{}",
            &hex::encode(Sha256::digest(state_dir.as_os_str().as_encoded_bytes()))[..6]
        );
        let namespaces = match config.network {
            NetworkMode::Loopback => false,
            NetworkMode::Netns => {
                probe_namespaces(&prefix).map_err(NodesError::NoNamespaces)?;
                true
            }
            NetworkMode::Auto => match probe_namespaces(&prefix) {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(
                        error = %err,
                        "network namespaces unavailable; nodes run on loopback (public IPs and \
                         port forwarding are not served)"
                    );
                    false
                }
            },
        };
        if !namespaces {
            tracing::warn!("nodes run on the host loopback: their NIC addresses are not usable");
        }
        clean_leftovers(&prefix, config.stop_grace);
        let node_bin = state_dir.join("node-bin");
        std::fs::create_dir_all(&node_bin).map_err(prepare(&node_bin))?;
        let link = node_bin.join("systemctl");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&systemctl, &link).map_err(prepare(&link))?;
        let cluster = state_dir.join("kubesim");
        std::fs::create_dir_all(&cluster).map_err(prepare(&cluster))?;

        let (net_tx, net_rx) = async_mpsc::unbounded_channel();
        let router_prefix = prefix.clone();
        let manager = NetManager::new(
            namespaces,
            config.egress.clone(),
            Box::new(move |network| netns::path(&router_name(&router_prefix, network))),
        );
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cloudsim-net")
            .enable_all()
            .build()
            .map_err(NodesError::Runtime)?;
        let thread = std::thread::Builder::new()
            .name("cloudsim-net".into())
            .spawn(move || {
                runtime.spawn(manager.run(net_rx));
                runtime.block_on(async {
                    let _ = stop_rx.await;
                });
                runtime.shutdown_timeout(Duration::from_secs(2));
            })
            .map_err(NodesError::Runtime)?;
        tracing::info!(
            prefix = %prefix,
            network = if namespaces { "netns" } else { "loopback-only" },
            agent = %config.agent.display(),
            kubesim_bin = %config.kubesim_bin.display(),
            egress = ?config.egress,
            "node runner ready"
        );
        Ok(ProcessRunner {
            shared: Arc::new(Shared {
                config,
                state_dir,
                prefix,
                namespaces,
                closed: AtomicBool::new(false),
                actors: Mutex::new(HashMap::new()),
                retired: Mutex::new(Vec::new()),
                routers: Mutex::new(HashMap::new()),
                veths: AtomicU32::new(0),
                net: net_tx,
                runtime: Mutex::new(Some((stop_tx, thread))),
            }),
        })
    }

    /// The prefix of every name this runner creates.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// True when nodes get network namespaces.
    pub fn uses_namespaces(&self) -> bool {
        self.shared.namespaces
    }

    fn send(&self, vm_id: &str, op: Op, action: &'static str) -> Result<(), NodeError> {
        // Checked under the lock `shutdown` drains the workers with, so no worker can appear
        // after the drain.
        let mut actors = lock(&self.shared.actors);
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(NodeError::ShutDown {
                vm_id: vm_id.to_owned(),
            });
        }
        let destroy = matches!(op, Op::Destroy);
        if !actors.contains_key(vm_id) {
            let actor =
                spawn_actor(self.shared.clone(), vm_id).map_err(|source| NodeError::Io {
                    vm_id: vm_id.to_owned(),
                    action,
                    source,
                })?;
            actors.insert(vm_id.to_owned(), actor);
        }
        let sent = actors.get(vm_id).map(|actor| actor.tx.send(op).is_ok());
        if destroy && let Some(actor) = actors.remove(vm_id) {
            lock(&self.shared.retired).push(actor.thread);
        }
        match sent {
            Some(true) => Ok(()),
            _ => Err(NodeError::Io {
                vm_id: vm_id.to_owned(),
                action,
                source: io::Error::other("the node's worker thread has stopped"),
            }),
        }
    }
}

impl NodeRunner for ProcessRunner {
    fn start(&self, spec: &NodeSpec) -> Result<NodeNetwork, NodeError> {
        if let Some(data) = &spec.userdata {
            userdata::parse(data).map_err(|source| NodeError::Userdata {
                vm_id: spec.vm_id.clone(),
                source,
            })?;
        }
        self.send(&spec.vm_id, Op::Start(Box::new(spec.clone())), "start")?;
        Ok(if self.shared.namespaces {
            NodeNetwork::Namespace
        } else {
            NodeNetwork::Loopback
        })
    }

    fn stop(&self, vm_id: &str) -> Result<(), NodeError> {
        self.send(vm_id, Op::Stop, "stop")
    }

    fn destroy(&self, vm_id: &str) -> Result<(), NodeError> {
        self.send(vm_id, Op::Destroy, "destroy")
    }

    fn set_iso(&self, vm_id: &str, iso: Option<PathBuf>) -> Result<(), NodeError> {
        self.send(vm_id, Op::SetIso(iso), "attach the ISO")
    }

    fn update_network(&self, table: &ForwardingTable) {
        let _ = self.shared.net.send(NetMsg::Table(table.clone()));
    }

    fn exec(
        &self,
        vm_id: &str,
        program: &Path,
        args: &[String],
        timeout: Duration,
    ) -> Result<std::process::Output, NodeError> {
        let not_running = || NodeError::NotRunning {
            vm_id: vm_id.to_owned(),
        };
        let (reply, answer) = mpsc::channel();
        {
            let actors = lock(&self.shared.actors);
            let actor = actors.get(vm_id).ok_or_else(not_running)?;
            actor
                .tx
                .send(Op::Command {
                    program: program.to_path_buf(),
                    args: args.to_vec(),
                    reply,
                })
                .map_err(|_| not_running())?;
        }
        // The worker answers between two operations; a boot in progress may take a while.
        let (cmd, ns) = answer
            .recv_timeout(timeout)
            .map_err(|_| not_running())?
            .ok_or_else(not_running)?;
        process::run_to_end(cmd, ns.as_deref(), timeout).map_err(|source| NodeError::Io {
            vm_id: vm_id.to_owned(),
            action: "run a command",
            source,
        })
    }

    fn inspect(&self, vm_id: &str) -> Option<NodeInfo> {
        let dirs = NodeDirs::new(&self.shared.state_dir, vm_id);
        if !dirs.vm.exists() {
            return None;
        }
        let ns = netns::path(&node_name(&self.shared.prefix, vm_id));
        let ns = ns.exists().then_some(ns);
        let tree = ProcessTree::new(
            marker(&self.shared.prefix, vm_id),
            ns.as_deref().and_then(|p| netns::inode(p).ok()),
        );
        Some(NodeInfo {
            root: dirs.root.clone(),
            log_dir: dirs.logs.clone(),
            netns: ns,
            pids: tree.pids(),
        })
    }

    fn shutdown(&self) {
        let actors: Vec<Actor> = {
            let mut actors = lock(&self.shared.actors);
            if self.shared.closed.swap(true, Ordering::SeqCst) {
                return;
            }
            actors.drain().map(|(_, a)| a).collect()
        };
        for actor in &actors {
            let _ = actor.tx.send(Op::Shutdown);
        }
        for actor in actors {
            let _ = actor.thread.join();
        }
        for thread in lock(&self.shared.retired).drain(..) {
            let _ = thread.join();
        }
        let (done_tx, done_rx) = mpsc::channel();
        if self.shared.net.send(NetMsg::Shutdown(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(NET_ACK);
        }
        if let Some((stop, thread)) = lock(&self.shared.runtime).take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
        clean_leftovers(&self.shared.prefix, self.shared.config.stop_grace);
        tracing::info!(prefix = %self.shared.prefix, "node runner stopped");
    }
}

impl Drop for ProcessRunner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

// === names ===

fn node_name(prefix: &str, vm_id: &str) -> String {
    format!("{prefix}-vm-{vm_id}")
}

fn router_name(prefix: &str, network_id: &str) -> String {
    format!("{prefix}-net-{network_id}")
}

fn marker(prefix: &str, vm_id: &str) -> String {
    format!("{prefix}/{vm_id}")
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// Creates and deletes a namespace: proves root, iproute2 and kernel support.
fn probe_namespaces(prefix: &str) -> Result<(), netns::NetnsError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(netns::NetnsError::Ip {
            args: "netns add".into(),
            stderr: "not running as root".into(),
        });
    }
    let probe = format!("{prefix}-probe");
    let _ = netns::delete(&probe);
    netns::add(&probe)?;
    netns::delete(&probe)
}

/// Kills the processes and deletes the namespaces named with `prefix`.
fn clean_leftovers(prefix: &str, grace: Duration) {
    let mut stale = 0;
    let mut stale_processes = 0;
    for name in netns::list(&format!("{prefix}-")) {
        let path = netns::path(&name);
        if let Ok(inode) = netns::inode(&path) {
            let mut tree = ProcessTree::new(String::new(), Some(inode));
            stale_processes += tree.pids().len();
            tree.stop(grace);
        }
        if let Err(err) = netns::delete(&name) {
            tracing::warn!(netns = %name, error = %err, "cannot delete a leftover namespace");
        }
        stale += 1;
    }
    stale_processes += process::kill_marked(&format!("{prefix}/"), grace);
    if stale + stale_processes > 0 {
        tracing::info!(
            namespaces = stale,
            processes = stale_processes,
            "removed leftovers of an earlier run"
        );
    }
}

// === the per-VM worker ===

/// A node's directories.
struct NodeDirs {
    vm: PathBuf,
    root: PathBuf,
    dev: PathBuf,
    sys: PathBuf,
    logs: PathBuf,
    /// containerd's sockets: a short path of its own (`<state>/s/<12 hex of the VM id>`), as
    /// unix socket paths are limited to about 104 bytes.
    sockets: PathBuf,
}

impl NodeDirs {
    fn new(state_dir: &Path, vm_id: &str) -> Self {
        let vm = state_dir.join("vms").join(vm_id);
        let short: String = vm_id.chars().filter(|c| *c != '-').take(12).collect();
        NodeDirs {
            root: vm.join("root"),
            dev: vm.join("dev"),
            sys: vm.join("sys"),
            logs: vm.join("logs"),
            sockets: state_dir.join("s").join(short),
            vm,
        }
    }

    fn by_label(&self) -> PathBuf {
        self.dev.join("disk/by-label").join(BUNDLE_LABEL)
    }

    fn containerd_socket(&self) -> PathBuf {
        self.sockets.join("containerd.sock")
    }

    fn containerd_config(&self) -> PathBuf {
        self.root.join("etc/containerd/config.toml")
    }

    fn userdata_marker(&self) -> PathBuf {
        self.vm.join("userdata.applied")
    }
}

/// A running node's network: its namespace and the routers it holds a reference on.
struct NodeNet {
    name: String,
    networks: Vec<String>,
}

struct Running {
    tree: ProcessTree,
    net: Option<NodeNet>,
    /// The VM's host name.
    hostname: String,
    /// The default NIC's address, when the node has its own namespace: what kubeadm finds on
    /// the default route of a real VM (`KUBESIM_ADVERTISE_ADDRESS`).
    address: Option<String>,
    /// Programs to start again, and when (systemd's `Restart=` as the template's units say).
    restarts: Vec<(Program, Instant)>,
}

/// The long-running programs of a node, with their template unit's restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    /// `containerd.service`: `Restart=always`, `RestartSec=5`.
    Containerd,
    /// `cks-agent.service`: `Restart=on-failure`, `RestartSec=5s`,
    /// `RestartPreventExitStatus=2 6` (agent/cks-agent.service).
    Agent,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Program::Containerd => "containerd",
            Program::Agent => "agent",
        }
    }

    fn from_name(name: &str) -> Option<Program> {
        match name {
            "containerd" => Some(Program::Containerd),
            "agent" => Some(Program::Agent),
            _ => None,
        }
    }

    /// Whether systemd would start it again after it exited with `status`.
    fn restarts_after(self, status: std::process::ExitStatus) -> bool {
        match self {
            Program::Containerd => true,
            Program::Agent => !status.success() && !matches!(status.code(), Some(2 | 6)),
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    vm_id: String,
    dirs: NodeDirs,
    running: Option<Running>,
}

fn spawn_actor(shared: Arc<Shared>, vm_id: &str) -> io::Result<Actor> {
    let (tx, rx) = mpsc::channel();
    let mut worker = Worker {
        dirs: NodeDirs::new(&shared.state_dir, vm_id),
        shared,
        vm_id: vm_id.to_owned(),
        running: None,
    };
    let thread = std::thread::Builder::new()
        .name(format!(
            "cloudsim-node-{}",
            vm_id.chars().take(8).collect::<String>()
        ))
        .spawn(move || worker.run(&rx))?;
    Ok(Actor { tx, thread })
}

impl Worker {
    fn run(&mut self, rx: &mpsc::Receiver<Op>) {
        loop {
            self.report_exits();
            let op = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(op) => op,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => Op::Shutdown,
            };
            match op {
                Op::Start(spec) => {
                    if self.running.is_some() {
                        tracing::debug!(vm = %self.vm_id, "node already running");
                    } else if let Err(err) = self.boot(&spec) {
                        tracing::error!(
                            vm = %self.vm_id,
                            error = %ErrorChain(&err),
                            logs = %self.dirs.logs.display(),
                            "node failed to boot"
                        );
                        self.halt();
                    }
                }
                Op::Stop => self.halt(),
                Op::Command {
                    program,
                    args,
                    reply,
                } => {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let _ = reply.send(self.node_command(&program, &args));
                }
                Op::SetIso(iso) => {
                    if let Err(err) = self.set_iso(iso.as_deref()) {
                        tracing::error!(vm = %self.vm_id, error = %err, "cannot change the CD-ROM");
                    }
                }
                Op::Destroy => {
                    self.halt();
                    for dir in [&self.dirs.vm, &self.dirs.sockets] {
                        if let Err(err) = std::fs::remove_dir_all(dir)
                            && err.kind() != io::ErrorKind::NotFound
                        {
                            tracing::error!(vm = %self.vm_id, error = %err, "cannot remove the node's disk");
                        }
                    }
                    tracing::info!(vm = %self.vm_id, "node destroyed");
                    return;
                }
                Op::Shutdown => {
                    self.halt();
                    return;
                }
            }
        }
    }

    /// Logs exited programs, schedules their restart as their unit says, and runs the restarts
    /// that are due.
    fn report_exits(&mut self) {
        let Some(running) = &mut self.running else {
            return;
        };
        for (name, status) in running.tree.reap_exited() {
            let restart = Program::from_name(&name).filter(|p| p.restarts_after(status));
            tracing::warn!(
                vm = %self.vm_id,
                program = %name,
                %status,
                restart_in_seconds = restart.map(|_| RESTART_DELAY.as_secs()),
                log = %self.dirs.logs.join(format!("{name}.log")).display(),
                "node process exited"
            );
            if let Some(program) = restart {
                running
                    .restarts
                    .push((program, Instant::now() + RESTART_DELAY));
            }
        }
        let now = Instant::now();
        let due: Vec<Program> = running
            .restarts
            .iter()
            .filter(|(_, at)| *at <= now)
            .map(|(p, _)| *p)
            .collect();
        running.restarts.retain(|(_, at)| *at > now);
        for program in due {
            if let Err(err) = self.start_program(program) {
                tracing::error!(vm = %self.vm_id, error = %ErrorChain(&err), "restart failed");
            }
        }
    }

    /// Starts containerd (waiting for its socket) or the agent.
    fn start_program(&mut self, program: Program) -> Result<u32, BootError> {
        let Some(running) = &self.running else {
            return Err(BootError::Spawn(
                program.name().to_owned(),
                io::Error::other("node not running"),
            ));
        };
        let ns_path = running.net.as_ref().map(|n| netns::path(&n.name));
        let socket = self.dirs.containerd_socket();
        let mut cmd;
        match program {
            Program::Containerd => {
                let _ = std::fs::remove_file(&socket);
                cmd = self.command("containerd", &running.hostname);
                cmd.arg("--config").arg(self.dirs.containerd_config());
            }
            Program::Agent => {
                cmd = self.command(&self.shared.config.agent, &running.hostname);
                cmd.arg("run")
                    .arg("--root")
                    .arg(&self.dirs.root)
                    .arg("--containerd-socket")
                    .arg(&socket)
                    .arg("--dev-dir")
                    .arg(&self.dirs.dev)
                    .arg("--sys-dir")
                    .arg(&self.dirs.sys)
                    .args(["--mount", "user-space"]);
            }
        }
        let pid = self.spawn(program.name(), cmd, ns_path.as_deref())?;
        if program == Program::Containerd {
            let rounds = CONTAINERD_READY.as_millis() / 50;
            if !(0..rounds).any(|_| {
                std::thread::sleep(Duration::from_millis(50));
                socket.exists()
            }) {
                return Err(BootError::ContainerdNotReady(socket));
            }
        }
        Ok(pid)
    }

    fn boot(&mut self, spec: &NodeSpec) -> Result<(), BootError> {
        let dirs = &self.dirs;
        let run_dir = dirs.root.join("run");
        for stale in [&run_dir, &dirs.sockets] {
            match std::fs::remove_dir_all(stale) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => {
                    return Err(BootError::Prepare(stale.clone(), err));
                }
                _ => {}
            }
        }
        for dir in [
            &dirs.root,
            &run_dir,
            &dirs.sockets,
            &dirs.root.join("root"),
            &dirs.dev.join("disk/by-label"),
            &dirs.sys.join("class/block"),
            &dirs.logs,
        ] {
            std::fs::create_dir_all(dir).map_err(|e| BootError::Prepare(dir.clone(), e))?;
        }
        if spec.never_boots {
            return self.hang(spec);
        }
        if let Some(data) = &spec.userdata
            && !dirs.userdata_marker().exists()
        {
            let provisioning = userdata::parse(data)?;
            userdata::apply(&provisioning, &dirs.root)?;
            std::fs::write(dirs.userdata_marker(), b"")
                .map_err(|e| BootError::Prepare(dirs.userdata_marker(), e))?;
            tracing::info!(
                vm = %self.vm_id,
                format = ?provisioning.format,
                files = provisioning.files.len(),
                "userdata applied (first boot)"
            );
        }
        self.write_authorized_keys(&spec.ssh_authorized_keys)?;
        self.set_iso(spec.iso.as_deref())
            .map_err(|e| BootError::Prepare(self.dirs.by_label(), e))?;
        self.write_containerd_config()?;

        let net = if self.shared.namespaces {
            Some(self.plug(spec)?)
        } else {
            None
        };
        let ns_path = net.as_ref().map(|n| netns::path(&n.name));
        let inode = match &ns_path {
            Some(path) => {
                Some(netns::inode(path).map_err(|e| BootError::Prepare(path.clone(), e))?)
            }
            None => None,
        };
        self.running = Some(Running {
            tree: ProcessTree::new(marker(&self.shared.prefix, &self.vm_id), inode),
            address: net
                .as_ref()
                .and(spec.nics.first())
                .map(|nic| nic.ip.clone()),
            net,
            hostname: spec.name.clone(),
            restarts: Vec::new(),
        });
        if let Some(net) = self.running.as_ref().and_then(|r| r.net.as_ref()) {
            let (done, wait) = mpsc::channel();
            let _ = self.shared.net.send(NetMsg::NodeUp {
                vm_id: self.vm_id.clone(),
                netns: netns::path(&net.name),
                networks: net.networks.clone(),
                done,
            });
            let _ = wait.recv_timeout(NET_ACK);
        }

        self.start_program(Program::Containerd)?;
        let units = self.start_enabled_units();
        let pid = self.start_program(Program::Agent)?;
        tracing::info!(
            vm = %self.vm_id,
            name = %spec.name,
            agent_pid = pid,
            ?units,
            netns = ?ns_path,
            root = %self.dirs.root.display(),
            "node booted"
        );
        Ok(())
    }

    /// An injected fault: the VM's NICs are plugged (the hypervisor made them) but its OS never
    /// comes up, so nothing runs and nothing listens.
    fn hang(&mut self, spec: &NodeSpec) -> Result<(), BootError> {
        let net = if self.shared.namespaces {
            Some(self.plug(spec)?)
        } else {
            None
        };
        let inode = match net.as_ref().map(|n| netns::path(&n.name)) {
            Some(path) => {
                Some(netns::inode(&path).map_err(|e| BootError::Prepare(path.clone(), e))?)
            }
            None => None,
        };
        self.running = Some(Running {
            tree: ProcessTree::new(marker(&self.shared.prefix, &self.vm_id), inode),
            address: None,
            net,
            hostname: spec.name.clone(),
            restarts: Vec::new(),
        });
        tracing::warn!(
            vm = %self.vm_id,
            name = %spec.name,
            fault = "never_boot",
            "injected fault: the node never boots; its agent does not start"
        );
        Ok(())
    }

    /// Adds the VM's key pairs to `/root/.ssh/authorized_keys` (0600, directory 0700), as
    /// cloud-init does from the metadata; lines already there stay.
    fn write_authorized_keys(&self, keys: &[String]) -> Result<(), BootError> {
        use std::os::unix::fs::PermissionsExt;
        if keys.is_empty() {
            return Ok(());
        }
        let dir = self.dirs.root.join("root/.ssh");
        let path = dir.join("authorized_keys");
        let write = || -> io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            let mut text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(err) if err.kind() == io::ErrorKind::NotFound => String::new(),
                Err(err) => return Err(err),
            };
            for key in keys {
                if !text.lines().any(|line| line.trim() == key.trim()) {
                    if !text.is_empty() && !text.ends_with('\n') {
                        text.push('\n');
                    }
                    text.push_str(key.trim());
                    text.push('\n');
                }
            }
            std::fs::write(&path, text)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        };
        write().map_err(|e| BootError::Prepare(path.clone(), e))
    }

    /// Starts what systemd would start at boot: every unit enabled on the node's disk (a link
    /// in `multi-user.target.wants`, confirmed by `systemctl is-enabled`) other than the two
    /// the simulator runs itself (containerd, cks-agent), with the node's `systemctl` stand-in
    /// in the node's environment. Returns the units started; failures are logged (systemd
    /// boots on when a unit fails).
    fn start_enabled_units(&mut self) -> Vec<String> {
        let systemctl = self.shared.state_dir.join("node-bin/systemctl");
        if !systemctl.is_file() {
            tracing::debug!(vm = %self.vm_id, "no systemctl stand-in; enabled units not started");
            return Vec::new();
        }
        let wants = self
            .dirs
            .root
            .join("etc/systemd/system/multi-user.target.wants");
        let mut candidates: Vec<String> = std::fs::read_dir(&wants)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|name| !SIMULATOR_UNITS.contains(&name.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        candidates.sort();
        let mut started = Vec::new();
        for unit in candidates {
            match self.run_in_node(&systemctl, &["is-enabled", "--quiet", &unit]) {
                Ok(out) if out.status.success() => {}
                Ok(_) => continue,
                Err(err) => {
                    tracing::warn!(vm = %self.vm_id, %unit, error = %err, "systemctl is-enabled failed");
                    continue;
                }
            }
            match self.run_in_node(&systemctl, &["start", &unit]) {
                Ok(out) if out.status.success() => {
                    tracing::info!(vm = %self.vm_id, %unit, "enabled unit started at boot");
                    started.push(unit);
                }
                Ok(out) => tracing::warn!(
                    vm = %self.vm_id,
                    %unit,
                    status = %out.status,
                    stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                    "enabled unit failed to start at boot"
                ),
                Err(err) => {
                    tracing::warn!(vm = %self.vm_id, %unit, error = %err, "systemctl start failed");
                }
            }
        }
        started
    }

    /// Runs `program args` to its end in the node (its environment, namespace and marker, so
    /// whatever it leaves running belongs to the node), bounded by [`ONESHOT_TIMEOUT`].
    fn run_in_node(&self, program: &Path, args: &[&str]) -> io::Result<std::process::Output> {
        let (cmd, ns) = self
            .node_command(program, args)
            .ok_or_else(|| io::Error::other("node not running"))?;
        process::run_to_end(cmd, ns.as_deref(), ONESHOT_TIMEOUT)
    }

    /// `program args` with the node's environment and marker, and the namespace to run it in;
    /// `None` when the node does not run.
    fn node_command(&self, program: &Path, args: &[&str]) -> Option<(Command, Option<PathBuf>)> {
        let running = self.running.as_ref()?;
        let mut cmd = self.command(program, &running.hostname);
        cmd.args(args)
            .env(process::MARKER_ENV, running.tree.marker());
        let ns = running.net.as_ref().map(|n| netns::path(&n.name));
        Some((cmd, ns))
    }

    /// A command with the node's environment; output to `logs/<program name>.log`.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>, hostname: &str) -> Command {
        let mut cmd = Command::new(program);
        let node_bin = self.shared.state_dir.join("node-bin");
        cmd.env_clear()
            .env("PATH", format!("{}:{SYSTEM_PATH}", node_bin.display()))
            .env("HOSTNAME", hostname)
            .env("HOME", self.dirs.root.join("root"))
            .env("KUBESIM_ROOT", &self.dirs.root)
            .env("KUBESIM_CLUSTER", self.shared.state_dir.join("kubesim"))
            .env("KUBESIM_BIN", &self.shared.config.kubesim_bin)
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("CLOUDSIM_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null());
        if let Some(address) = self.running.as_ref().and_then(|r| r.address.as_ref()) {
            cmd.env("KUBESIM_ADVERTISE_ADDRESS", address);
        }
        cmd
    }

    fn spawn(&mut self, name: &str, mut cmd: Command, ns: Option<&Path>) -> Result<u32, BootError> {
        let log = self.dirs.logs.join(format!("{name}.log"));
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
        };
        let out = open().map_err(|e| BootError::Prepare(log.clone(), e))?;
        let err = open().map_err(|e| BootError::Prepare(log.clone(), e))?;
        cmd.stdout(out).stderr(err);
        let running = self.running.as_mut().ok_or_else(|| {
            BootError::Spawn(name.to_owned(), io::Error::other("node not prepared"))
        })?;
        running
            .tree
            .spawn(name, cmd, ns)
            .map_err(|e| BootError::Spawn(name.to_owned(), e))
    }

    fn write_containerd_config(&self) -> Result<(), BootError> {
        let path = self.dirs.containerd_config();
        if path.exists() {
            return Ok(());
        }
        let root = &self.dirs.root;
        let socket = self.dirs.containerd_socket();
        let text = format!(
            "# Written by cloudsim at the node's first boot (the template's containerd config).\n\
             version = 2\n\
             root = \"{}\"\n\
             state = \"{}\"\n\n\
             [grpc]\n  address = \"{}\"\n\n\
             [ttrpc]\n  address = \"{}.ttrpc\"\n\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{}\"\n",
            root.join("var/lib/containerd").display(),
            root.join("run/containerd").display(),
            socket.display(),
            socket.display(),
            root.join("opt/containerd").display(),
        );
        let write = || -> io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, text)
        };
        write().map_err(|e| BootError::Prepare(path.clone(), e))
    }

    /// Points `dev/disk/by-label/CDROM` at the ISO file, or removes it.
    fn set_iso(&self, iso: Option<&Path>) -> io::Result<()> {
        let link = self.dirs.by_label();
        match iso {
            None => match std::fs::remove_file(&link) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
                _ => Ok(()),
            },
            Some(iso) => {
                let target = iso.canonicalize()?;
                let dir = self.dirs.dev.join("disk/by-label");
                std::fs::create_dir_all(&dir)?;
                let tmp = dir.join(format!(".{BUNDLE_LABEL}.tmp"));
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(&target, &tmp)?;
                std::fs::rename(&tmp, &link)?;
                tracing::info!(vm = %self.vm_id, iso = %target.display(), "CD-ROM inserted");
                Ok(())
            }
        }
    }

    /// Creates the node's namespace and plugs one veth per NIC into its network's bridge.
    fn plug(&self, spec: &NodeSpec) -> Result<NodeNet, BootError> {
        let name = node_name(&self.shared.prefix, &self.vm_id);
        netns::delete(&name)?;
        netns::add(&name)?;
        let mut net = NodeNet {
            name: name.clone(),
            networks: Vec::new(),
        };
        let result = (|| -> Result<(), BootError> {
            for (i, nic) in spec.nics.iter().enumerate() {
                let cidr = Cidr::parse(&nic.cidr).map_err(|_| BootError::BadNic(nic.ip.clone()))?;
                let ip: Ipv4Addr = nic
                    .ip
                    .parse()
                    .map_err(|_| BootError::BadNic(nic.ip.clone()))?;
                let gateway: Ipv4Addr = if nic.gateway.is_empty() {
                    cidr.gateway()
                } else {
                    nic.gateway
                        .parse()
                        .map_err(|_| BootError::BadNic(nic.gateway.clone()))?
                };
                let router = self.acquire_router(&nic.network_id, &cidr, gateway)?;
                net.networks.push(nic.network_id.clone());
                let outer = format!("vp{}", self.shared.veths.fetch_add(1, Ordering::Relaxed));
                let inner = format!("eth{i}");
                netns::ip(&[
                    "-n", &router, "link", "add", &outer, "type", "veth", "peer", "name", &inner,
                    "netns", &name,
                ])?;
                netns::ip(&["-n", &router, "link", "set", &outer, "master", "br0", "up"])?;
                if !nic.mac.is_empty() {
                    netns::ip(&["-n", &name, "link", "set", &inner, "address", &nic.mac])?;
                }
                let address = format!("{ip}/{}", cidr.prefix());
                netns::ip(&["-n", &name, "addr", "add", &address, "dev", &inner])?;
                netns::ip(&["-n", &name, "link", "set", &inner, "up"])?;
                if i == 0 {
                    let gateway = gateway.to_string();
                    netns::ip(&["-n", &name, "route", "add", "default", "via", &gateway])?;
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(net),
            Err(err) => {
                self.unplug(net);
                Err(err)
            }
        }
    }

    /// Deletes the node's namespace and releases its routers.
    fn unplug(&self, net: NodeNet) {
        if let Err(err) = netns::delete(&net.name) {
            tracing::warn!(netns = %net.name, error = %err, "cannot delete the node's namespace");
        }
        for network in &net.networks {
            self.release_router(network);
        }
    }

    /// The network's router namespace (created with its bridge and gateway on first use).
    fn acquire_router(
        &self,
        network_id: &str,
        cidr: &Cidr,
        gateway: Ipv4Addr,
    ) -> Result<String, BootError> {
        let name = router_name(&self.shared.prefix, network_id);
        let mut routers = lock(&self.shared.routers);
        let count = routers.entry(network_id.to_owned()).or_insert(0);
        if *count == 0 {
            netns::delete(&name)?;
            netns::add(&name)?;
            let gateway = format!("{gateway}/{}", cidr.prefix());
            let made = netns::ip(&["-n", &name, "link", "add", "br0", "type", "bridge"])
                .and_then(|()| netns::ip(&["-n", &name, "addr", "add", &gateway, "dev", "br0"]))
                .and_then(|()| netns::ip(&["-n", &name, "link", "set", "br0", "up"]));
            if let Err(err) = made {
                let _ = netns::delete(&name);
                routers.remove(network_id);
                return Err(err.into());
            }
            tracing::info!(network = %network_id, netns = %name, %gateway, "network bridge up");
        }
        *count += 1;
        Ok(name)
    }

    fn release_router(&self, network_id: &str) {
        let mut routers = lock(&self.shared.routers);
        let Some(count) = routers.get_mut(network_id) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count == 0 {
            routers.remove(network_id);
            let name = router_name(&self.shared.prefix, network_id);
            if let Err(err) = netns::delete(&name) {
                tracing::warn!(netns = %name, error = %err, "cannot delete a network's namespace");
            }
        }
    }

    /// Stops the node's processes, closes its forwarders, deletes its namespace.
    fn halt(&mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        let killed = running.tree.stop(self.shared.config.stop_grace);
        // A containerd killed while unpacking or running a container can leave mounts behind.
        process::unmount_below(&self.dirs.vm);
        if let Some(net) = running.net {
            let (done, wait) = mpsc::channel();
            if self
                .shared
                .net
                .send(NetMsg::NodeDown {
                    vm_id: self.vm_id.clone(),
                    done,
                })
                .is_ok()
            {
                let _ = wait.recv_timeout(NET_ACK);
            }
            self.unplug(net);
        }
        tracing::info!(vm = %self.vm_id, killed, "node stopped");
    }
}

/// Why a node did not boot (logged; the VM stays Running as a VM whose OS failed would).
#[derive(Debug, thiserror::Error)]
enum BootError {
    #[error("failed to prepare {0:?}")]
    Prepare(PathBuf, #[source] io::Error),
    #[error(transparent)]
    Userdata(#[from] userdata::UserdataError),
    #[error("NIC address {0:?} or its network's CIDR is invalid")]
    BadNic(String),
    #[error("failed to wire the node's network")]
    Network(#[from] netns::NetnsError),
    #[error("failed to start {0}")]
    Spawn(String, #[source] io::Error),
    #[error("containerd did not create {0:?} in time; see its log")]
    ContainerdNotReady(PathBuf),
}

/// An error and its causes on one line.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

/// Formats `err` with its causes (`a: b: c`).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    ErrorChain(err).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubesim_bin_defaults_next_to_the_executable() {
        let dir = default_kubesim_bin();
        assert_ne!(dir.file_name().and_then(|n| n.to_str()), Some("deps"));
        assert!(dir.join("deps").is_dir(), "{}", dir.display());
    }

    #[test]
    fn programs_restart_as_their_template_units_say() {
        use std::os::unix::process::ExitStatusExt;
        let exited = |code: i32| std::process::ExitStatus::from_raw(code << 8);
        let killed = std::process::ExitStatus::from_raw(9);
        assert!(Program::Agent.restarts_after(exited(1)));
        assert!(Program::Agent.restarts_after(killed));
        for no in [0, 2, 6] {
            assert!(!Program::Agent.restarts_after(exited(no)), "exit {no}");
        }
        assert!(Program::Containerd.restarts_after(exited(0)));
    }

    #[test]
    fn names_fit_and_carry_the_prefix() {
        let id = uuid::Uuid::new_v4().to_string();
        assert_eq!(node_name("cs0a1b2c", &id), format!("cs0a1b2c-vm-{id}"));
        assert!(router_name("cs0a1b2c", &id).starts_with("cs0a1b2c-net-"));
        assert_eq!(marker("cs0a1b2c", "x"), "cs0a1b2c/x");
    }

    #[test]
    fn bad_configurations_are_refused_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let missing = NodesConfig::new(dir.path().join("no-agent"));
        assert!(matches!(
            ProcessRunner::start(missing, dir.path()),
            Err(NodesError::AgentMissing(_))
        ));
        let agent = dir.path().join("agent");
        std::fs::write(&agent, "").unwrap();
        let mut config = NodesConfig::new(agent);
        config.egress = vec!["10.0.0.1:9443".parse().unwrap()];
        config.network = NetworkMode::Loopback;
        let err = ProcessRunner::start(config.clone(), dir.path()).err();
        assert!(
            matches!(
                err,
                Some(NodesError::EgressNotLoopback(_) | NodesError::ContainerdMissing)
            ),
            "{err:?}"
        );
        config.egress.clear();
        let long = dir.path().join("x".repeat(100));
        let err = ProcessRunner::start(config, &long).err();
        assert!(
            matches!(
                err,
                Some(NodesError::StateDirTooLong(_) | NodesError::ContainerdMissing)
            ),
            "{err:?}"
        );
    }
}
