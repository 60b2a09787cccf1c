//! `cks-agent run` (a real process) against the controller's real hub, for what must hold when
//! things hang or age: a certificate near its expiry is renewed over the stream and the next
//! stream uses the new one; a command whose tool hangs is cut at the command's timeout and
//! reported as such; heartbeats go on while kubectl hangs. No kubesim needed: the tools that
//! hang are scripts, and every process of the agent is killed (by process group) at the end.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::Duration;

use cks_controller::agents::{AgentHub, HubError, NodeKey, NodeStatus};
use cks_controller::pki::{self, NodeIdentity};
use cks_proto::agent::command::Kind;
use cks_proto::agent::{Command, InitControlPlane, NodeRole, StepStatus};
use common::bundle::{TestBundle, host_arch};

const CLUSTER: &str = "cluster-1";
const WAIT: Duration = Duration::from_secs(90);

struct Controller {
    _dir: tempfile::TempDir,
    hub: AgentHub,
    addr: std::net::SocketAddr,
}

impl Controller {
    async fn start(node_validity: Option<Duration>) -> Controller {
        let started = common::hub::start(node_validity).await;
        Controller {
            _dir: started.dir,
            hub: started.hub,
            addr: started.addr,
        }
    }

    async fn wait(&self, node: &str, what: &str, done: impl Fn(&NodeStatus) -> bool) -> NodeStatus {
        self.hub
            .wait_for(&NodeKey::new(CLUSTER, node), what, WAIT, done)
            .await
            .unwrap_or_else(|err| panic!("{err}"))
    }
}

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// An agent process with its root, in a process group of its own.
struct Agent {
    dir: PathBuf,
    root: PathBuf,
    child: Child,
}

impl Agent {
    fn start(
        base: &Path,
        controller: &Controller,
        name: &str,
        role: NodeRole,
        extra: &[(&str, PathBuf)],
    ) -> Agent {
        let dir = base.join(name);
        let root = dir.join("root");
        for sub in ["etc/cks-agent", "empty-dev", "empty-sys"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let token = controller.hub.issue_token(
            NodeIdentity {
                cluster_id: CLUSTER.into(),
                node_name: name.into(),
                role,
            },
            Duration::from_secs(600),
        );
        let config = root.join("etc/cks-agent/config.toml");
        std::fs::write(
            &config,
            format!(
                "[controller]\naddresses = [\"{}\"]\nca_fingerprint = \"{}\"\nenrollment_token = \"{token}\"\nnode_name = \"{name}\"\n",
                controller.addr,
                controller.hub.ca().fingerprint()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let mut command = Process::new(env!("CARGO_BIN_EXE_cks-agent"));
        command
            .arg("run")
            .arg("--root")
            .arg(&root)
            .arg("--dev-dir")
            .arg(root.join("empty-dev"))
            .arg("--sys-dir")
            .arg(root.join("empty-sys"))
            .arg("--containerd-socket")
            .arg(dir.join("containerd.sock"));
        for (flag, value) in extra {
            command.arg(flag).arg(value);
        }
        let child = command
            .env("RUST_LOG", "info,cks_agent=debug")
            .env("NO_COLOR", "1")
            .env_remove("KUBECONFIG")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent { dir, root, child }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn cert_fingerprint(&self) -> Option<String> {
        let pem = std::fs::read_to_string(self.root.join("var/lib/cks-agent/pki/node.crt")).ok()?;
        Some(pki::fingerprint(&pki::pem_to_der(&pem)?))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The agent and whatever it started (the hanging scripts).
        let _ = Process::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_near_expiry_is_renewed_over_the_stream_and_the_next_stream_uses_it() {
    // Certificates valid 10 minutes (from an hour back): less than a third of their life left.
    let controller = Controller::start(Some(Duration::from_secs(600))).await;
    let base = tempfile::tempdir().unwrap();
    let agent = Agent::start(base.path(), &controller, "w-1", NodeRole::Worker, &[]);
    let status = controller
        .wait("w-1", "a renewal", |s| s.connected && s.renewals >= 1)
        .await;
    let enrolled = status.certificate.clone().unwrap();
    // The renewed certificate lands on disk, replacing the enrolled one as a whole.
    let mut renewed = None;
    for _ in 0..300 {
        renewed = agent.cert_fingerprint().filter(|fp| *fp != enrolled);
        if renewed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let renewed = renewed.unwrap_or_else(|| panic!("not stored:\n{}", agent.log()));
    // Cut the stream: the agent comes back with the renewed certificate, without enrolling.
    controller.hub.forget_node(&NodeKey::new(CLUSTER, "w-1"));
    let status = controller
        .wait("w-1", "a stream with the renewed certificate", |s| {
            s.connected && s.certificate.as_deref() == Some(renewed.as_str())
        })
        .await;
    assert!(status.sessions >= 1);
    let log = agent.log();
    assert_eq!(
        log.matches("enrolled with the controller").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("PRIVATE KEY"));
    assert!(
        !agent.root.join("var/lib/cks-agent/enroll.key").exists(),
        "the enrollment key is dropped once enrolled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_go_on_while_kubectl_hangs() {
    let controller = Controller::start(None).await;
    let base = tempfile::tempdir().unwrap();
    let kubectl = base.path().join("kubectl");
    script(&kubectl, "exec sleep 600\n");
    // The node looks joined, so the readiness probe runs kubectl, which hangs.
    let name = "w-1";
    let root = base.path().join(name).join("root");
    std::fs::create_dir_all(root.join("etc/kubernetes")).unwrap();
    std::fs::write(root.join("etc/kubernetes/kubelet.conf"), "apiVersion: v1\n").unwrap();
    let agent = Agent::start(
        base.path(),
        &controller,
        name,
        NodeRole::Worker,
        &[("--kubectl", kubectl)],
    );
    // The hub closes a stream silent for three heartbeats (3 s here); ten heartbeats on one
    // stream mean none waited for kubectl.
    let status = controller
        .wait(name, "ten heartbeats", |s| s.heartbeats >= 10)
        .await;
    assert_eq!(status.sessions, 1, "{}", agent.log());
    assert!(!status.node_ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_kubeadm_hangs_is_cut_at_its_timeout_and_says_so() {
    let controller = Controller::start(None).await;
    let base = tempfile::tempdir().unwrap();
    let bundle = TestBundle::new(host_arch(), "1.33.1");
    let tools = base.path().join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    script(&tools.join("kubeadm"), "exec sleep 600\n");
    script(&tools.join("systemctl"), "exit 0\n");
    script(
        &tools.join("ctr"),
        "case \"$*\" in\n  *'images ls'*) echo 'REF TYPE DIGEST SIZE PLATFORMS LABELS' ;;\n  *'images import -'*) cat > /dev/null ;;\n  *'content ls'*) ;;\n  *) exit 2 ;;\nesac\n",
    );
    let agent = Agent::start(
        base.path(),
        &controller,
        "cp-1",
        NodeRole::FirstControl,
        &[
            ("--bundle", bundle.tree.clone()),
            ("--kubeadm", tools.join("kubeadm")),
            ("--systemctl", tools.join("systemctl")),
            ("--ctr", tools.join("ctr")),
        ],
    );
    controller
        .wait("cp-1", "the bundle installed", |s| {
            s.connected
                && s.hello.as_ref().is_some_and(|h| {
                    h.steps.iter().any(|st| {
                        st.step == "bundle.installed" && st.status == StepStatus::Done as i32
                    })
                })
        })
        .await;
    let command = Command {
        command_id: "init-1".into(),
        timeout_seconds: 3,
        kind: Some(Kind::InitControlPlane(InitControlPlane {
            control_plane_endpoint: "127.0.0.1:6443".into(),
            certificate_sans: vec!["127.0.0.1".into()],
            pod_cidr: "10.244.0.0/16".into(),
            service_cidr: "10.96.0.0/12".into(),
            bootstrap_token: "abcdef.0123456789abcdef".into(),
            token_ttl_seconds: 600,
            certificate_key: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                .into(),
            node_name: "cp-1".into(),
        })),
    };
    // The hub waits far longer than the command's own timeout: the agent must answer first.
    let err = controller
        .hub
        .send_command(&NodeKey::new(CLUSTER, "cp-1"), command, WAIT)
        .await
        .unwrap_err();
    let HubError::Failed { error, .. } = &err else {
        panic!(
            "expected the agent to report the timeout, got {err}\n{}",
            agent.log()
        );
    };
    assert!(error.contains("timed out after 3s"), "{error}");
    assert!(error.contains("kubeadm"), "{error}");
}
