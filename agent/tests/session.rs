//! `cks-agent run` against the controller's real agent hub (contract 2), as separate processes:
//! enrollment with a pinned CA, init and join driven by commands, a stream cut in the middle
//! of a command, an agent killed in the middle of its install and restarted, a corrupt bundle,
//! a refused token and a wrong CA fingerprint.
//!
//! kubeadm is the stand-in from tests/kubesim (through a wrapper that logs its arguments);
//! `ctr` and `systemctl` are small scripts that log what they are asked to do.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cks_controller::agents::{AgentHub, HubError, MemoryTokens, NodeKey, NodeStatus};
use cks_controller::pki::{AgentCa, NodeIdentity};
use cks_proto::agent::command::Kind;
use cks_proto::agent::command_result::Payload;
use cks_proto::agent::{
    Command, CreateJoinMaterial, FetchKubeconfig, InitControlPlane, JoinWorker, NodeRole,
    StepStatus,
};
use common::bundle::{TestBundle, host_arch};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const CLUSTER: &str = "cluster-1";
const WAIT: Duration = Duration::from_secs(60);
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
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(AgentCa::load_or_create(&dir.path().join("ca")).unwrap());
        let server = ca.issue_server(&["127.0.0.1".to_string()]).unwrap();
        let hub = AgentHub::new(
            ca,
            Arc::new(MemoryTokens::default()),
            Duration::from_secs(1),
        );
        let (addr, handle) = hub
            .clone()
            .spawn("127.0.0.1:0".parse().unwrap(), server)
            .await
            .unwrap();
        Controller {
            _dir: dir,
            hub,
            addr,
            _server: handle,
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

/// A node: root dir, stand-in programs, and the agent process.
struct Node {
    name: String,
    dir: PathBuf,
    root: PathBuf,
    bundle: PathBuf,
    child: Option<Child>,
}

fn kubesim_kubeadm() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("kubeadm");
    assert!(
        path.is_file(),
        "{} not found: build it with `cargo build -p kubesim` (make test does)",
        path.display()
    );
    path
}

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Node {
    /// Prepares a node under `base/<name>`, with stand-ins that log to `<name>/*.log` and
    /// sleep while `<name>/slow-<program>` exists.
    fn new(base: &Path, name: &str, bundle: &Path) -> Node {
        let dir = base.join(name);
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let d = dir.display();
        script(
            &dir.join("kubeadm"),
            &format!(
                "echo \"$@\" >> '{d}/kubeadm.log'\nwhile [ -e '{d}/slow-kubeadm' ]; do sleep 0.1; done\n\
                 KUBESIM_ROOT='{}' KUBESIM_CLUSTER='{}' exec '{}' \"$@\"\n",
                root.display(),
                base.join("cluster").display(),
                kubesim_kubeadm().display()
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
        script(
            &dir.join("systemctl"),
            &format!("echo \"$@\" >> '{d}/systemctl.log'\n"),
        );
        Node {
            name: name.into(),
            dir,
            root,
            bundle: bundle.to_path_buf(),
            child: None,
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
            .arg(self.dir.join("systemctl"))
            .arg("--containerd-socket")
            .arg(self.dir.join("containerd.sock"))
            .env("RUST_LOG", "info,cks_agent=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL, as a power cut would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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

    fn log(&self, program: &str) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.dir.join(format!("{program}.log"))) {
            file.read_to_string(&mut text).unwrap();
        }
        text
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
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- agent log of {} ---\n{}", self.name, self.log("agent"));
        }
    }
}

fn init_command(node: &str) -> Kind {
    Kind::InitControlPlane(InitControlPlane {
        control_plane_endpoint: "127.0.0.1:6443".into(),
        certificate_sans: vec!["127.0.0.1".into()],
        pod_cidr: "10.244.0.0/16".into(),
        service_cidr: "10.96.0.0/12".into(),
        bootstrap_token: BOOTSTRAP_TOKEN.into(),
        token_ttl_seconds: 600,
        certificate_key: CERT_KEY.into(),
        node_name: node.into(),
    })
}

fn assert_no_secret(node: &Node, secrets: &[&str]) {
    let log = node.log("agent");
    for secret in secrets {
        assert!(
            !log.contains(secret),
            "secret leaked into {}'s agent log",
            node.name
        );
        assert!(
            !node.log("kubeadm").contains(secret),
            "secret in kubeadm arguments"
        );
    }
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_enroll_init_join_and_survive_a_cut_stream() {
    let controller = Controller::start().await;
    let proxy = CutProxy::start(controller.addr).await;
    let base = tempfile::tempdir().unwrap();
    let bundle = TestBundle::new(host_arch(), "1.33.1");
    let fingerprint = controller.hub.ca().fingerprint();

    let mut cp = Node::new(base.path(), "cp-1", &bundle.tree);
    let cp_token = controller.token("cp-1", NodeRole::FirstControl);
    cp.write_config(&[proxy.addr], &fingerprint, &cp_token);
    let mut worker = Node::new(base.path(), "worker-1", &bundle.tree);
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
    let init = tokio::spawn(async move {
        hub_cp
            .send_command(
                &NodeKey::new(CLUSTER, "cp-1"),
                Command {
                    command_id: "init-1".into(),
                    timeout_seconds: 60,
                    kind: Some(init_command("cp-1")),
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
        .send("cp-1", "init-1", init_command("cp-1"))
        .await
        .unwrap();
    assert_eq!(cp.count("kubeadm", "init"), 1);

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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_install_resumes_and_commands_wait_for_the_install() {
    let controller = Controller::start().await;
    let base = tempfile::tempdir().unwrap();
    let bundle = TestBundle::new(host_arch(), "1.33.1");
    let mut node = Node::new(base.path(), "cp-1", &bundle.tree);
    let token = controller.token("cp-1", NodeRole::FirstControl);
    node.write_config(
        &[controller.addr],
        &controller.hub.ca().fingerprint(),
        &token,
    );
    node.slow("ctr", true);
    node.start();
    // The binaries are installed; the image import hangs: kill the agent there.
    controller
        .wait_step("cp-1", "install.binaries", StepStatus::Done)
        .await;
    node.kill();
    assert!(node.root.join("opt/bin/kubeadm").exists());
    assert_eq!(node.log("ctr"), "");
    node.slow("ctr", false);
    node.start();
    // A command sent now waits for the install to finish, then runs.
    let result = controller
        .send("cp-1", "init-1", init_command("cp-1"))
        .await;
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
    let bundle = TestBundle::new(host_arch(), "1.33.1");
    let kubelet = bundle.tree.join("k8s/kubelet");
    let mut bytes = std::fs::read(&kubelet).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&kubelet, bytes).unwrap();
    let mut node = Node::new(base.path(), "cp-1", &bundle.tree);
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
        .send("cp-1", "init-1", init_command("cp-1"))
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
    let bundle = TestBundle::new(host_arch(), "1.33.1");

    let mut refused = Node::new(base.path(), "cp-1", &bundle.tree);
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
    let mut impostor = Node::new(base.path(), "worker-1", &bundle.tree);
    impostor.write_config(
        &[controller.addr],
        &controller.hub.ca().fingerprint(),
        &token,
    );
    impostor.start();
    assert_eq!(impostor.wait_exit(), Some(6));

    // A controller whose CA does not match the pinned fingerprint is never talked to.
    let token = controller.token("worker-2", NodeRole::Worker);
    let mut pinned = Node::new(base.path(), "worker-2", &bundle.tree);
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
