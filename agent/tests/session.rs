//! `cks-agent run` against the controller's real agent hub (contract 2), as separate processes:
//! enrollment with a pinned CA, init and join driven by commands, a stream cut in the middle
//! of a command, an agent killed in the middle of its install and restarted, a corrupt bundle,
//! a refused token and a wrong CA fingerprint; and, on the cluster the agents form, the CNI and
//! dashboard applied, nodes read, the health gate (every node, every kube-system pod) checked
//! before and right after the control plane's upgrade, a worker drained and uncordoned, a drain
//! held by a PodDisruptionBudget failing within its timeout and naming the budget, an upgrade to
//! a new bundle and a node deleted.
//!
//! The nodes run what a real node runs, with kubesim's stand-ins where Kubernetes cannot run
//! here: the bundle's `k8s/kubeadm` and `k8s/kubelet` are wrappers around the kubesim binaries
//! (at the bundle's version), `k8s/kubectl` runs the real kubectl, `systemctl` is kubesim's
//! (given with `--systemctl` and first in `PATH`, where kubeadm finds it), so `kubeadm init`
//! starts the kubelet, which runs the API server on the node's own 127.x.y.z address, and every
//! kubectl command of the agent goes over HTTPS to it. kubeadm is called through a wrapper that
//! logs its arguments (to check that no secret is in them and that nothing runs twice); `ctr`
//! is a script. Each node's processes live in process groups that are killed when the test
//! ends, also when it fails. Build the stand-ins first: `cargo build -p kubesim`.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cks_controller::agents::{AgentHub, HubError, NodeKey, NodeStatus};
use cks_controller::pki::NodeIdentity;
use cks_proto::agent::command::Kind;
use cks_proto::agent::command_result::Payload;
use cks_proto::agent::{
    ApplyManifests, CheckHealth, ClusterHealth, Command, CreateJoinMaterial, DeleteNode, Drain,
    FetchKubeconfig, GetNodes, InitControlPlane, InlineManifest, JoinWorker, KubeNode, NodeRole,
    StepStatus, SystemPod, Uncordon, Upgrade,
};
use common::bundle::{TestBundle, host_arch};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const CLUSTER: &str = "cluster-1";
const WAIT: Duration = Duration::from_secs(90);
const BOOTSTRAP_TOKEN: &str = "abcdef.0123456789abcdef";
const CERT_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

// === the controller side ===

struct Controller {
    _dir: tempfile::TempDir,
    hub: AgentHub,
    addr: SocketAddr,
    _server: JoinHandle<()>,
}

impl Controller {
    async fn start() -> Controller {
        let started = common::hub::start(None).await;
        Controller {
            _dir: started.dir,
            hub: started.hub,
            addr: started.addr,
            _server: started.server,
        }
    }

    fn token(&self, node: &str, role: NodeRole) -> String {
        self.hub.issue_token(
            NodeIdentity {
                cluster_id: CLUSTER.into(),
                node_name: node.into(),
                role,
            },
            Duration::from_secs(600),
        )
    }

    async fn wait_step(&self, node: &str, step: &str, status: StepStatus) -> NodeStatus {
        let key = NodeKey::new(CLUSTER, node);
        self.hub
            .wait_for(&key, step, WAIT, |s| {
                s.connected
                    && s.hello.as_ref().is_some_and(|h| {
                        h.steps
                            .iter()
                            .any(|st| st.step == step && st.status == status as i32)
                    })
            })
            .await
            .unwrap_or_else(|err| panic!("{err}"))
    }

    async fn send(&self, node: &str, id: &str, kind: Kind) -> Result<Option<Payload>, HubError> {
        let command = Command {
            command_id: id.into(),
            timeout_seconds: 60,
            kind: Some(kind),
        };
        self.hub
            .send_command(&NodeKey::new(CLUSTER, node), command, WAIT)
            .await
            .map(|r| r.payload)
    }
}

/// A TCP relay whose connections the test can cut, to break streams mid-command.
struct CutProxy {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    _accept: JoinHandle<()>,
}

impl CutProxy {
    async fn start(upstream: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept_links = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                accept_links.lock().unwrap().push(link);
            }
        });
        CutProxy {
            addr,
            links,
            _accept: accept,
        }
    }

    /// Drops every open connection (both directions close at once).
    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

// === the node side ===

/// The kubesim binaries, built beside this test.
fn kubesim_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    for program in [
        "kubeadm",
        "kubelet",
        "kube-apiserver",
        "kube-controller-manager",
        "systemctl",
    ] {
        assert!(
            dir.join(program).is_file(),
            "{} not found: build the stand-ins with `cargo build -p kubesim` (make test does)",
            dir.join(program).display()
        );
    }
    dir
}

/// A 127.x.y.0/24 of this test's own, so that tests running at once never share an address.
fn subnet() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id()
        .wrapping_mul(7)
        .wrapping_add(SEQ.fetch_add(1, Ordering::Relaxed) * 7919)
        .wrapping_add(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
        );
    format!("127.{}.{}", 1 + seed % 250, 1 + (seed / 250) % 250)
}

/// A node: root dir, the kubeadm wrapper, `ctr`, and the agent process.
struct Node {
    name: String,
    ip: String,
    dir: PathBuf,
    root: PathBuf,
    cluster: PathBuf,
    bundle: PathBuf,
    child: Option<Child>,
    /// Process groups of every agent started (the kubelet and its static pods live in the
    /// group of the agent that started them).
    groups: Vec<u32>,
}

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Node {
    /// Prepares a node under `base/<name>` at address `ip`; kubeadm calls are logged to
    /// `<name>/kubeadm.log` and wait while `<name>/slow-kubeadm` exists (likewise `ctr`).
    fn new(base: &Path, name: &str, ip: String, bundle: &Path) -> Node {
        let dir = base.join(name);
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(dir.join("path")).unwrap();
        std::fs::create_dir_all(dir.join("home")).unwrap();
        std::os::unix::fs::symlink(kubesim_bin().join("systemctl"), dir.join("path/systemctl"))
            .unwrap();
        let d = dir.display();
        // The installed kubeadm (the bundle's wrapper), with its arguments logged.
        script(
            &dir.join("kubeadm"),
            &format!(
                "echo \"$@\" >> '{d}/kubeadm.log'\nwhile [ -e '{d}/slow-kubeadm' ]; do sleep 0.1; done\n\
                 exec '{}' \"$@\"\n",
                root.join("opt/bin/kubeadm").display()
            ),
        );
        script(
            &dir.join("ctr"),
            &format!(
                "case \"$*\" in\n  *'images ls'*) echo 'REF TYPE DIGEST SIZE PLATFORMS LABELS' ;;\n  \
                 *'images import -'*) cat > /dev/null; while [ -e '{d}/slow-ctr' ]; do sleep 0.1; done; echo import >> '{d}/ctr.log' ;;\n  \
                 *) exit 2 ;;\nesac\n"
            ),
        );
        Node {
            name: name.into(),
            ip,
            dir,
            root,
            cluster: base.join("cluster"),
            bundle: bundle.to_path_buf(),
            child: None,
            groups: Vec::new(),
        }
    }

    fn write_config(&self, addresses: &[SocketAddr], fingerprint: &str, token: &str) {
        let addresses: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
        let config = format!(
            "[controller]\naddresses = [{}]\nca_fingerprint = \"{fingerprint}\"\nenrollment_token = \"{token}\"\nnode_name = \"{}\"\n",
            addresses.join(", "),
            self.name
        );
        let path = self.root.join("etc/cks-agent/config.toml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, config).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let path = format!(
            "{}:{}",
            self.dir.join("path").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Process::new(env!("CARGO_BIN_EXE_cks-agent"))
            .arg("run")
            .arg("--root")
            .arg(&self.root)
            .arg("--bundle")
            .arg(&self.bundle)
            .arg("--kubeadm")
            .arg(self.dir.join("kubeadm"))
            .arg("--ctr")
            .arg(self.dir.join("ctr"))
            .arg("--systemctl")
            .arg(self.dir.join("path/systemctl"))
            .arg("--containerd-socket")
            .arg(self.dir.join("containerd.sock"))
            .env("RUST_LOG", "info,cks_agent=debug")
            .env("NO_COLOR", "1")
            .env("KUBESIM_ROOT", &self.root)
            .env("KUBESIM_CLUSTER", &self.cluster)
            .env("KUBESIM_BIN", kubesim_bin())
            .env("KUBESIM_ADVERTISE_ADDRESS", &self.ip)
            .env("PATH", path)
            .env("HOME", self.dir.join("home"))
            .env_remove("KUBECONFIG")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.groups.push(child.id());
        self.child = Some(child);
    }

    /// SIGKILL to the agent alone, as a crash would (the kubelet it started, a service of its
    /// own, runs on).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL to every process of the node, as a power cut would: the agent and whatever it
    /// was running (an image import, kubeadm), the kubelet and its static pods.
    fn power_cut(&mut self) {
        for group in &self.groups {
            let _ = Process::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .stderr(Stdio::null())
                .status();
        }
        self.kill();
    }

    fn wait_exit(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        for _ in 0..300 {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// A log: the agent's and the kubeadm wrapper's in the node dir; systemctl's and the
    /// kubelet's where the stand-ins write them on the node.
    fn log(&self, program: &str) -> String {
        let path = match program {
            "systemctl" | "kubelet" => self.root.join(format!("var/log/kubesim/{program}.log")),
            _ => self.dir.join(format!("{program}.log")),
        };
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(path) {
            file.read_to_string(&mut text).unwrap();
        }
        text
    }

    /// Every log file of the node (agent, kubeadm arguments, systemctl, kubelet, static pods).
    fn all_logs(&self) -> Vec<(PathBuf, String)> {
        fn walk(dir: &Path, found: &mut Vec<(PathBuf, String)>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                if path.is_dir() && !path.is_symlink() {
                    walk(&path, found);
                } else if path.extension().is_some_and(|e| e == "log") {
                    found.push((
                        path.clone(),
                        std::fs::read_to_string(&path).unwrap_or_default(),
                    ));
                }
            }
        }
        let mut found = Vec::new();
        walk(&self.dir, &mut found);
        found
    }

    fn count(&self, program: &str, needle: &str) -> usize {
        self.log(program)
            .lines()
            .filter(|l| l.starts_with(needle))
            .count()
    }

    fn slow(&self, program: &str, on: bool) {
        let flag = self.dir.join(format!("slow-{program}"));
        if on {
            std::fs::write(flag, "").unwrap();
        } else {
            let _ = std::fs::remove_file(flag);
        }
    }

    /// The real kubectl with this (control-plane) node's admin kubeconfig.
    fn kubectl(&self, args: &[&str]) -> String {
        let out = Process::new("kubectl")
            .arg(format!(
                "--kubeconfig={}",
                self.root.join("etc/kubernetes/admin.conf").display()
            ))
            .args(args)
            .env("HOME", self.dir.join("home"))
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The kubelet and the static pods it runs stay in their agent's process group.
        self.power_cut();
        if std::thread::panicking() {
            eprintln!("--- agent log of {} ---\n{}", self.name, self.log("agent"));
            for (path, text) in self.all_logs() {
                if !path.ends_with("agent.log") {
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    eprintln!("--- {} ---", path.display());
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
}

fn init_command(node: &Node) -> Kind {
    Kind::InitControlPlane(InitControlPlane {
        control_plane_endpoint: format!("{}:6443", node.ip),
        certificate_sans: vec![node.ip.clone()],
        pod_cidr: "10.244.0.0/16".into(),
        service_cidr: "10.96.0.0/12".into(),
        bootstrap_token: BOOTSTRAP_TOKEN.into(),
        token_ttl_seconds: 600,
        certificate_key: CERT_KEY.into(),
        node_name: node.name.clone(),
    })
}

/// No secret in the agent's log, kubeadm's arguments, or any other log of the node.
#[track_caller]
fn assert_no_secret(node: &Node, secrets: &[&str]) {
    assert!(
        !node.log("kubeadm").is_empty(),
        "kubeadm was not run on {}",
        node.name
    );
    for (path, text) in node.all_logs() {
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "a secret leaked into {}",
                path.display()
            );
        }
        assert!(
            !text.contains("PRIVATE KEY") && !text.contains("client-key-data"),
            "a key leaked into {}",
            path.display()
        );
    }
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_enroll_init_join_and_survive_a_cut_stream() {
    let controller = Controller::start().await;
    let proxy = CutProxy::start(controller.addr).await;
    let base = tempfile::tempdir().unwrap();
    let bundle = TestBundle::kubesim(host_arch(), "1.33.1");
    let fingerprint = controller.hub.ca().fingerprint();
    let net = subnet();

    let mut cp = Node::new(base.path(), "cp-1", format!("{net}.1"), &bundle.tree);
    let cp_token = controller.token("cp-1", NodeRole::FirstControl);
    cp.write_config(&[proxy.addr], &fingerprint, &cp_token);
    let mut worker = Node::new(base.path(), "worker-1", format!("{net}.2"), &bundle.tree);
    let worker_token = controller.token("worker-1", NodeRole::Worker);
    worker.write_config(&[proxy.addr], &fingerprint, &worker_token);
    cp.start();
    worker.start();

    controller
        .wait_step("cp-1", "bundle.installed", StepStatus::Done)
        .await;
    let status = controller
        .wait_step("worker-1", "bundle.installed", StepStatus::Done)
        .await;
    let hello = status.hello.unwrap();
    assert_eq!(hello.bundle.as_ref().unwrap().kubernetes_version, "1.33.1");
    assert!(hello.bundle.as_ref().unwrap().verified);
    assert_eq!(hello.os.as_ref().unwrap().arch, host_arch().as_str());
    assert!(
        hello
            .steps
            .iter()
            .any(|s| s.step == "images.import" && s.status == StepStatus::Done as i32)
    );
    // The node's identity is on disk, key readable by its owner only.
    let key = cp.root.join("var/lib/cks-agent/pki/node.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Init, with the stream cut while kubeadm runs: the result still arrives, kubeadm ran once.
    cp.slow("kubeadm", true);
    let hub_cp = controller.hub.clone();
    let init_kind = init_command(&cp);
    let init = tokio::spawn(async move {
        hub_cp
            .send_command(
                &NodeKey::new(CLUSTER, "cp-1"),
                Command {
                    command_id: "init-1".into(),
                    timeout_seconds: 60,
                    kind: Some(init_kind),
                },
                WAIT,
            )
            .await
    });
    for _ in 0..100 {
        if cp.count("kubeadm", "init") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cp.count("kubeadm", "init"), 1, "init did not start");
    let sessions_before = controller
        .hub
        .status(&NodeKey::new(CLUSTER, "cp-1"))
        .sessions;
    proxy.cut();
    cp.slow("kubeadm", false);
    init.await
        .unwrap()
        .expect("init result after the reconnect");
    let after = controller.hub.status(&NodeKey::new(CLUSTER, "cp-1"));
    assert!(after.sessions > sessions_before, "the agent reconnected");
    assert_eq!(cp.count("kubeadm", "init"), 1, "kubeadm init ran twice");
    assert_eq!(
        std::fs::read_to_string(cp.root.join("home/cloud/success")).unwrap(),
        "true\n"
    );

    // The same command id again: answered from the journal, not run again.
    controller
        .send("cp-1", "init-1", init_command(&cp))
        .await
        .unwrap();
    assert_eq!(cp.count("kubeadm", "init"), 1);
    // kubeadm started the kubelet, which runs the API server: the real kubectl reaches it.
    assert!(cp.log("systemctl").contains("systemctl restart kubelet"));
    assert!(cp.kubectl(&["version"]).contains("Server Version: v1.33.1"));

    // Fresh join material on the control plane, then the worker joins with it.
    let material = match controller
        .send(
            "cp-1",
            "join-material-1",
            Kind::CreateJoinMaterial(CreateJoinMaterial {
                ttl_seconds: 600,
                for_control_plane: false,
            }),
        )
        .await
        .unwrap()
    {
        Some(Payload::JoinMaterial(material)) => material,
        other => panic!("no join material: {other:?}"),
    };
    assert!(material.ca_cert_hash.starts_with("sha256:"));
    controller
        .send(
            "worker-1",
            "join-1",
            Kind::JoinWorker(JoinWorker {
                api_server_endpoint: material.api_server_endpoint.clone(),
                token: material.token.clone(),
                ca_cert_hash: material.ca_cert_hash.clone(),
                node_name: "worker-1".into(),
            }),
        )
        .await
        .unwrap();
    assert!(worker.root.join("etc/kubernetes/kubelet.conf").exists());
    assert!(worker.log("systemctl").contains("enable kubelet"));

    // The kubeconfig comes back over the stream.
    let kubeconfig = match controller
        .send(
            "cp-1",
            "kubeconfig-1",
            Kind::FetchKubeconfig(FetchKubeconfig {}),
        )
        .await
        .unwrap()
    {
        Some(Payload::Kubeconfig(k)) => k.yaml,
        other => panic!("no kubeconfig: {other:?}"),
    };
    assert!(kubeconfig.contains("client-certificate-data"));

    // No secret in logs or kubeadm arguments; the enrollment token cannot be used again.
    assert_no_secret(&cp, &[&cp_token, BOOTSTRAP_TOKEN, CERT_KEY]);
    assert_no_secret(&worker, &[&worker_token, &material.token]);
    assert!(!cp.log("agent").contains("client-key-data"));

    // Killed and restarted after joining: enrolls no more, re-sending the join id answers from
    // the journal, a new join id finds the node joined: kubeadm join ran exactly once.
    worker.kill();
    worker.start();
    controller
        .hub
        .wait_for(&NodeKey::new(CLUSTER, "worker-1"), "reconnect", WAIT, |s| {
            s.connected && s.sessions >= 2
        })
        .await
        .unwrap();
    let join = |id: &'static str| {
        let kind = Kind::JoinWorker(JoinWorker {
            api_server_endpoint: material.api_server_endpoint.clone(),
            token: material.token.clone(),
            ca_cert_hash: material.ca_cert_hash.clone(),
            node_name: "worker-1".into(),
        });
        (id, kind)
    };
    let (id, kind) = join("join-1");
    controller.send("worker-1", id, kind).await.unwrap();
    let (id, kind) = join("join-2");
    controller.send("worker-1", id, kind).await.unwrap();
    assert_eq!(worker.count("kubeadm", "join"), 1, "kubeadm join ran twice");

    // === the cluster, through the agent's kubectl ===
    // The bundle's CNI and dashboard; applying again (a retried step) changes nothing; with
    // the CNI, both nodes become Ready.
    let apply = || {
        Kind::ApplyManifests(ApplyManifests {
            bundle_files: vec!["network.yaml".into(), "dashboard.yaml".into()],
            inline: vec![],
        })
    };
    controller.send("cp-1", "apply-1", apply()).await.unwrap();
    controller.send("cp-1", "apply-2", apply()).await.unwrap();
    let nodes = wait_nodes(&controller, "cp-1", "both nodes Ready", |nodes| {
        nodes.len() == 2 && nodes.iter().all(|n| n.ready)
    })
    .await;
    let cp_node = nodes.iter().find(|n| n.name == "cp-1").unwrap();
    assert_eq!(cp_node.roles, vec!["control-plane".to_string()]);
    assert!(nodes.iter().all(|n| n.kubelet_version == "v1.33.1"));
    // The dashboard runs on the worker (the control plane is tainted).
    let dashboard_on = |node: &Node, host: &str| -> usize {
        let pods: serde_json::Value = serde_json::from_str(&node.kubectl(&[
            "get",
            "pods",
            "-n",
            "kubernetes-dashboard",
            "-o",
            "json",
        ]))
        .unwrap();
        pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["spec"]["nodeName"] == host && p["status"]["phase"] == "Running")
            .count()
    };
    wait_until("the dashboard running on the worker", || {
        dashboard_on(&cp, "worker-1") == 2
    })
    .await;

    // The health gate on the healthy cluster: every node Ready; every kube-system pod (the
    // control plane's static pods, kube-proxy and the CNI on each node, CoreDNS) Running and
    // ready. A worker has no admin kubeconfig: it may not answer.
    let health = wait_healthy(&controller, "cp-1", "a healthy cluster", |health| {
        count_pods(health, "kube-proxy-") == 2 && count_pods(health, "coredns-") == 2
    })
    .await;
    assert_eq!(node_names(&health), vec!["cp-1", "worker-1"]);
    for name in CONTROL_PLANE_PODS {
        let pod = system_pod(&health, &format!("{name}-cp-1"));
        assert_eq!(pod.node_name, "cp-1");
    }
    for prefix in ["kube-proxy-", "calico-node-"] {
        let mut nodes: Vec<&str> = health
            .system_pods
            .iter()
            .filter(|p| p.name.starts_with(prefix))
            .map(|p| p.node_name.as_str())
            .collect();
        nodes.sort_unstable();
        assert_eq!(nodes, vec!["cp-1", "worker-1"], "{prefix}*");
    }
    let refused = controller
        .send(
            "worker-1",
            "health-on-worker",
            Kind::CheckHealth(CheckHealth {}),
        )
        .await
        .unwrap_err();
    assert!(
        agent_error(&refused).contains("allowed only on a control node that has joined"),
        "{refused}"
    );

    // Drain the worker: cordoned, the dashboard evicted; then uncordon it.
    controller
        .send(
            "cp-1",
            "drain-1",
            Kind::Drain(Drain {
                node_name: "worker-1".into(),
                grace_seconds: 1,
                timeout_seconds: 0,
            }),
        )
        .await
        .unwrap();
    let unschedulable = |node: &Node| {
        let json: serde_json::Value =
            serde_json::from_str(&node.kubectl(&["get", "node", "worker-1", "-o", "json"]))
                .unwrap();
        json["spec"]["unschedulable"] == true
    };
    assert!(unschedulable(&cp));
    assert_eq!(
        dashboard_on(&cp, "worker-1"),
        0,
        "drain evicted the dashboard"
    );
    controller
        .send(
            "cp-1",
            "uncordon-1",
            Kind::Uncordon(Uncordon {
                node_name: "worker-1".into(),
            }),
        )
        .await
        .unwrap();
    assert!(!unschedulable(&cp));
    wait_until("the dashboard back on the worker", || {
        dashboard_on(&cp, "worker-1") == 2
    })
    .await;

    // Upgrade to a new bundle, the control plane first: the API server and every kubelet run
    // the new version.
    bundle.replace_with_kubesim(host_arch(), "1.34.0");
    let upgrade = |first: bool| {
        Kind::Upgrade(Upgrade {
            target_version: "v1.34.0".into(),
            first_control_plane: first,
        })
    };
    match controller
        .send("cp-1", "upgrade-1", upgrade(true))
        .await
        .unwrap()
    {
        Some(Payload::Upgrade(report)) => assert_eq!(report.kubelet_version, "v1.34.0"),
        other => panic!("no upgrade report: {other:?}"),
    }
    assert!(cp.kubectl(&["version"]).contains("Server Version: v1.34.0"));
    // The health gate right after it: the API answers, every node is there and Ready, and the
    // static pods the upgrade restarted run again, ready. kube-proxy's pods, replaced for the
    // new version, follow within the gate's wait.
    let health = check_health(&controller, "cp-1", "health-after-upgrade-1").await;
    assert_eq!(node_names(&health), vec!["cp-1", "worker-1"]);
    assert!(health.nodes.iter().all(|n| n.ready), "{:?}", health.nodes);
    for name in CONTROL_PLANE_PODS {
        let pod = system_pod(&health, &format!("{name}-cp-1"));
        assert!(pod.phase == "Running" && pod.ready, "{pod:?}");
    }
    wait_healthy(
        &controller,
        "cp-1",
        "a healthy cluster after the upgrade",
        |health| count_pods(health, "kube-proxy-") == 2,
    )
    .await;
    controller
        .send("worker-1", "upgrade-2", upgrade(false))
        .await
        .unwrap();
    wait_nodes(&controller, "cp-1", "every kubelet at v1.34.0", |nodes| {
        nodes.len() == 2
            && nodes
                .iter()
                .all(|n| n.ready && n.kubelet_version == "v1.34.0")
    })
    .await;
    assert_eq!(cp.count("kubeadm", "upgrade apply v1.34.0"), 1);
    assert_eq!(worker.count("kubeadm", "upgrade node"), 1);
    assert!(
        worker
            .log("systemctl")
            .contains("systemctl restart kubelet")
    );

    // The worker's Node is deleted.
    controller
        .send(
            "cp-1",
            "delete-1",
            Kind::DeleteNode(DeleteNode {
                node_name: "worker-1".into(),
            }),
        )
        .await
        .unwrap();
    wait_nodes(&controller, "cp-1", "the worker's Node gone", |nodes| {
        nodes.iter().all(|n| n.name != "worker-1")
    })
    .await;

    // Still no secret anywhere, after every command.
    assert_no_secret(
        &cp,
        &[&cp_token, BOOTSTRAP_TOKEN, CERT_KEY, &material.token],
    );
    assert_no_secret(&worker, &[&worker_token, &material.token]);
}

/// The static pods kubeadm runs on a control node.
const CONTROL_PLANE_PODS: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// The agent's error text of a failed command.
#[track_caller]
fn agent_error(err: &HubError) -> &str {
    match err {
        HubError::Failed { error, .. } => error,
        other => panic!("the command did not fail on the node: {other}"),
    }
}

/// Sends `CheckHealth` to `node` as command `id`; the snapshot it answers.
async fn check_health(controller: &Controller, node: &str, id: &str) -> ClusterHealth {
    match controller
        .send(node, id, Kind::CheckHealth(CheckHealth {}))
        .await
    {
        Ok(Some(Payload::Health(health))) => health,
        other => panic!("CheckHealth failed: {other:?}"),
    }
}

/// What keeps `health` from passing the upgrade gate: a node not Ready, a kube-system pod not
/// Running and ready. An empty snapshot never passes.
fn unhealthy(health: &ClusterHealth) -> Vec<String> {
    let mut problems: Vec<String> = health
        .nodes
        .iter()
        .filter(|n| !n.ready)
        .map(|n| format!("node {} not Ready", n.name))
        .collect();
    problems.extend(
        health
            .system_pods
            .iter()
            .filter(|p| p.phase != "Running" || !p.ready)
            .map(|p| format!("pod {} {} ready={}", p.name, p.phase, p.ready)),
    );
    if health.nodes.is_empty() || health.system_pods.is_empty() {
        problems.push("an empty snapshot".into());
    }
    problems
}

/// Sends `CheckHealth` (a fresh command id each time) until the cluster passes the gate and
/// `check` holds; fails after [`WAIT`].
async fn wait_healthy(
    controller: &Controller,
    node: &str,
    what: &str,
    check: impl Fn(&ClusterHealth) -> bool,
) -> ClusterHealth {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let id = format!("health-{}", SEQ.fetch_add(1, Ordering::Relaxed));
        let health = check_health(controller, node, &id).await;
        if unhealthy(&health).is_empty() && check(&health) {
            return health;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last: {:?} {health:?}",
            unhealthy(&health)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn node_names(health: &ClusterHealth) -> Vec<&str> {
    let mut names: Vec<&str> = health.nodes.iter().map(|n| n.name.as_str()).collect();
    names.sort_unstable();
    names
}

fn count_pods(health: &ClusterHealth, prefix: &str) -> usize {
    health
        .system_pods
        .iter()
        .filter(|p| p.name.starts_with(prefix))
        .count()
}

#[track_caller]
fn system_pod<'a>(health: &'a ClusterHealth, name: &str) -> &'a SystemPod {
    health
        .system_pods
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no kube-system pod {name} in {:?}", health.system_pods))
}

/// Polls `check` (blocking, briefly) every 200 ms until it holds; fails after [`WAIT`].
async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !tokio::task::block_in_place(&mut check) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `GetNodes` (a fresh command id each time) until `check` holds; fails after [`WAIT`].
async fn wait_nodes(
    controller: &Controller,
    node: &str,
    what: &str,
    check: impl Fn(&[KubeNode]) -> bool,
) -> Vec<KubeNode> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let id = format!("nodes-{}", SEQ.fetch_add(1, Ordering::Relaxed));
        let nodes = match controller
            .send(node, &id, Kind::GetNodes(GetNodes {}))
            .await
        {
            Ok(Some(Payload::Nodes(status))) => status.nodes,
            other => panic!("GetNodes failed: {other:?}"),
        };
        if check(&nodes) {
            return nodes;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Two agents form a cluster: cp-1 inits, worker-1 joins with fresh material, the bundle's CNI
/// makes both nodes Ready.
async fn form_cluster(controller: &Controller, base: &Path, bundle: &Path) -> (Node, Node) {
    let fingerprint = controller.hub.ca().fingerprint();
    let net = subnet();
    let mut cp = Node::new(base, "cp-1", format!("{net}.1"), bundle);
    cp.write_config(
        &[controller.addr],
        &fingerprint,
        &controller.token("cp-1", NodeRole::FirstControl),
    );
    let mut worker = Node::new(base, "worker-1", format!("{net}.2"), bundle);
    worker.write_config(
        &[controller.addr],
        &fingerprint,
        &controller.token("worker-1", NodeRole::Worker),
    );
    cp.start();
    worker.start();
    controller
        .send("cp-1", "init-1", init_command(&cp))
        .await
        .unwrap();
    let material = match controller
        .send(
            "cp-1",
            "join-material-1",
            Kind::CreateJoinMaterial(CreateJoinMaterial {
                ttl_seconds: 600,
                for_control_plane: false,
            }),
        )
        .await
        .unwrap()
    {
        Some(Payload::JoinMaterial(material)) => material,
        other => panic!("no join material: {other:?}"),
    };
    controller
        .send(
            "worker-1",
            "join-1",
            Kind::JoinWorker(JoinWorker {
                api_server_endpoint: material.api_server_endpoint,
                token: material.token,
                ca_cert_hash: material.ca_cert_hash,
                node_name: "worker-1".into(),
            }),
        )
        .await
        .unwrap();
    controller
        .send(
            "cp-1",
            "apply-network",
            Kind::ApplyManifests(ApplyManifests {
                bundle_files: vec!["network.yaml".into()],
                inline: vec![],
            }),
        )
        .await
        .unwrap();
    wait_nodes(controller, "cp-1", "both nodes Ready", |nodes| {
        nodes.len() == 2 && nodes.iter().all(|n| n.ready)
    })
    .await;
    (cp, worker)
}

/// An app whose every replica a PodDisruptionBudget protects (minAvailable = replicas).
const GUARDED_WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - {name: web, image: nginx:1.27}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
  namespace: default
spec:
  minAvailable: 2
  selector:
    matchLabels: {app: web}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_held_by_a_disruption_budget_fails_within_its_timeout_naming_the_budget() {
    let controller = Controller::start().await;
    let base = tempfile::tempdir().unwrap();
    let bundle = TestBundle::kubesim(host_arch(), "1.33.1");
    let (cp, _worker) = form_cluster(&controller, base.path(), &bundle.tree).await;
    controller
        .send(
            "cp-1",
            "apply-web",
            Kind::ApplyManifests(ApplyManifests {
                bundle_files: vec![],
                inline: vec![InlineManifest {
                    name: "guarded-web".into(),
                    yaml: GUARDED_WEB.into(),
                }],
            }),
        )
        .await
        .unwrap();
    // Both replicas run on the worker (the control plane is tainted).
    let web_on_worker = |node: &Node| -> Vec<String> {
        let pods: serde_json::Value = serde_json::from_str(&node.kubectl(&[
            "get", "pods", "-n", "default", "-l", "app=web", "-o", "json",
        ]))
        .unwrap();
        pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["spec"]["nodeName"] == "worker-1" && p["status"]["phase"] == "Running")
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    wait_until("both web replicas running on the worker", || {
        web_on_worker(&cp).len() == 2
    })
    .await;
    let web = tokio::task::block_in_place(|| web_on_worker(&cp));

    // The budget refuses every eviction: the drain gives up at its 5 s timeout, not the
    // default 300 s, and says which budget held which pods.
    let started = tokio::time::Instant::now();
    let err = controller
        .send(
            "cp-1",
            "drain-web",
            Kind::Drain(Drain {
                node_name: "worker-1".into(),
                grace_seconds: 1,
                timeout_seconds: 5,
            }),
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(30),
        "the drain took {took:?}"
    );
    let error = agent_error(&err);
    assert!(
        error.starts_with("drain of node worker-1 blocked by a PodDisruptionBudget:"),
        "{error}"
    );
    assert!(
        error.contains("(protected by PodDisruptionBudget default/web)"),
        "{error}"
    );
    assert!(error.contains("within 5s"), "{error}");
    for pod in &web {
        assert!(error.contains(&format!("default/{pod}")), "{pod}: {error}");
    }
    // Nothing it protects was evicted; the node stays cordoned.
    assert_eq!(tokio::task::block_in_place(|| web_on_worker(&cp)), web);
    let node: serde_json::Value =
        serde_json::from_str(&cp.kubectl(&["get", "node", "worker-1", "-o", "json"])).unwrap();
    assert_eq!(node["spec"]["unschedulable"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_install_resumes_and_commands_wait_for_the_install() {
    let controller = Controller::start().await;
    let base = tempfile::tempdir().unwrap();
    let bundle = TestBundle::kubesim(host_arch(), "1.33.1");
    let mut node = Node::new(base.path(), "cp-1", format!("{}.1", subnet()), &bundle.tree);
    let token = controller.token("cp-1", NodeRole::FirstControl);
    node.write_config(
        &[controller.addr],
        &controller.hub.ca().fingerprint(),
        &token,
    );
    node.slow("ctr", true);
    node.start();
    // The binaries are installed; the image import hangs: the power goes there.
    controller
        .wait_step("cp-1", "install.binaries", StepStatus::Done)
        .await;
    node.power_cut();
    assert!(node.root.join("opt/bin/kubeadm").exists());
    assert_eq!(node.log("ctr"), "");
    node.slow("ctr", false);
    node.start();
    // A command sent now waits for the install to finish, then runs.
    let result = controller.send("cp-1", "init-1", init_command(&node)).await;
    result.unwrap();
    assert_eq!(node.count("ctr", "import"), 1);
    let log = node.log("agent");
    assert!(
        log.matches("enrolled with the controller").count() == 1,
        "enrolled twice:\n{log}"
    );
    // The second run did not redo the steps the first finished.
    let journal =
        std::fs::read_to_string(node.root.join("var/lib/cks-agent/journal.json")).unwrap();
    assert_eq!(journal.matches("install.binaries").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_bundle_is_refused_reported_and_nothing_is_installed() {
    let controller = Controller::start().await;
    let base = tempfile::tempdir().unwrap();
    let bundle = TestBundle::kubesim(host_arch(), "1.33.1");
    let kubelet = bundle.tree.join("k8s/kubelet");
    let mut bytes = std::fs::read(&kubelet).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&kubelet, bytes).unwrap();
    let mut node = Node::new(base.path(), "cp-1", format!("{}.1", subnet()), &bundle.tree);
    let token = controller.token("cp-1", NodeRole::FirstControl);
    node.write_config(
        &[controller.addr],
        &controller.hub.ca().fingerprint(),
        &token,
    );
    node.start();
    let status = controller
        .wait_step("cp-1", "bundle.install", StepStatus::Failed)
        .await;
    let step = status
        .hello
        .unwrap()
        .steps
        .into_iter()
        .find(|s| s.step == "bundle.install")
        .unwrap();
    assert!(step.detail.contains("k8s/kubelet"), "{}", step.detail);
    assert!(!node.root.join("opt").exists(), "something was installed");
    let err = controller
        .send("cp-1", "init-1", init_command(&node))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("the bundle is not installed"),
        "{err}"
    );
    assert_eq!(node.count("kubeadm", "init"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_stops_the_agent_and_a_wrong_fingerprint_never_enrolls() {
    let controller = Controller::start().await;
    let base = tempfile::tempdir().unwrap();
    let bundle = TestBundle::kubesim(host_arch(), "1.33.1");
    let net = subnet();

    let mut refused = Node::new(base.path(), "cp-1", format!("{net}.1"), &bundle.tree);
    refused.write_config(
        &[controller.addr],
        &controller.hub.ca().fingerprint(),
        "not-a-token",
    );
    refused.start();
    assert_eq!(refused.wait_exit(), Some(6), "{}", refused.log("agent"));
    assert!(
        refused
            .log("agent")
            .contains("the controller refused enrollment")
    );
    assert!(!refused.log("agent").contains("not-a-token"));

    // A token issued for another node is refused too, and burns nothing.
    let token = controller.token("worker-9", NodeRole::Worker);
    let mut impostor = Node::new(base.path(), "worker-1", format!("{net}.2"), &bundle.tree);
    impostor.write_config(
        &[controller.addr],
        &controller.hub.ca().fingerprint(),
        &token,
    );
    impostor.start();
    assert_eq!(impostor.wait_exit(), Some(6));

    // A controller whose CA does not match the pinned fingerprint is never talked to.
    let token = controller.token("worker-2", NodeRole::Worker);
    let mut pinned = Node::new(base.path(), "worker-2", format!("{net}.3"), &bundle.tree);
    pinned.write_config(
        &[controller.addr],
        &format!("sha256:{}", "00".repeat(32)),
        &token,
    );
    pinned.start();
    for _ in 0..100 {
        if pinned.log("agent").contains("enrollment failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = pinned.log("agent");
    assert!(log.contains("pinned fingerprint"), "{log}");
    assert!(!pinned.root.join("var/lib/cks-agent/pki/node.crt").exists());
    // The token was not spent: the right node could still use it.
    let status = controller.hub.status(&NodeKey::new(CLUSTER, "worker-2"));
    assert!(!status.connected);
}
