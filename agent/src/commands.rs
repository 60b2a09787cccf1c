//! The controller's commands, executed on this node, and the journal of their results.
//!
//! [`Executor::execute`] turns one `Command` into one `CommandResult`; it never panics on bad
//! input and its error texts never hold secrets (kubeadm's output is redacted by
//! [`crate::kube::kubeadm`]). [`ResultJournal`] keeps every result on disk (mode 0600: join
//! material and kubeconfigs are secrets) *before* it is sent, so an id is never run twice and its
//! result can be re-sent after a reconnect or a restart of the agent.

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::Arc;
use std::time::Duration;

use cks_proto::agent::command::Kind;
use cks_proto::agent::command_result::Payload;
use cks_proto::agent::{
    ClusterHealth, Command, CommandResult, Kubeconfig, NodesStatus, UpgradeReport,
};
use prost::Message;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::config::{CKS_SUCCESS_MARKER, Config};

/// Longest a `systemctl` call may take.
const SYSTEMCTL_LIMIT: Duration = Duration::from_secs(5 * 60);
/// How long the readiness probe's kubectl may take (it runs beside the heartbeat, never in it).
const READY_PROBE_LIMIT: Duration = Duration::from_secs(20);
use crate::images::ImageStore;
use crate::journal::write_atomic;
use crate::kube::kubeadm::Kubeadm;
use crate::kube::kubectl::{DEFAULT_DRAIN_TIMEOUT, Kubectl};

/// Sub-directory of the data dir with one file per finished command.
pub const RESULTS_DIR: &str = "results";
/// How long each of the health check's requests may wait for the API server: one that does not
/// answer by then fails the check.
const HEALTH_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Results of finished commands, on disk.
#[derive(Debug, Clone)]
pub struct ResultJournal {
    dir: PathBuf,
}

impl ResultJournal {
    /// The journal in `<data_dir>/results`.
    pub fn new(data_dir: &Path) -> Self {
        ResultJournal {
            dir: data_dir.join(RESULTS_DIR),
        }
    }

    fn path(&self, command_id: &str) -> PathBuf {
        let name = hex::encode(Sha256::digest(command_id.as_bytes()));
        self.dir.join(format!("{name}.pb"))
    }

    /// The result of `command_id`, if it finished.
    pub fn get(&self, command_id: &str) -> Option<CommandResult> {
        let bytes = std::fs::read(self.path(command_id)).ok()?;
        CommandResult::decode(bytes.as_slice())
            .ok()
            .filter(|r| r.command_id == command_id)
    }

    /// Records a result (atomically, mode 0600).
    ///
    /// # Errors
    /// The file could not be written.
    pub fn put(&self, result: &CommandResult) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        write_atomic(
            &self.path(&result.command_id),
            &result.encode_to_vec(),
            0o600,
        )
    }

    /// Ids of every finished command.
    pub fn ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "pb"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|bytes| CommandResult::decode(bytes.as_slice()).ok())
            .map(|r| r.command_id)
            .collect();
        ids.sort();
        ids
    }
}

/// Runs commands on this node.
#[derive(Clone)]
pub struct Executor {
    config: Config,
    node_name: String,
    images: Arc<dyn ImageStore + Send + Sync>,
}

type Outcome = Result<Option<Payload>, String>;

impl Executor {
    /// An executor for the node `node_name`.
    pub fn new(
        config: Config,
        node_name: String,
        images: Arc<dyn ImageStore + Send + Sync>,
    ) -> Self {
        Executor {
            config,
            node_name,
            images,
        }
    }

    fn kubeadm(&self) -> Kubeadm {
        Kubeadm::new(
            self.config.kubeadm_program(),
            self.config.root.clone(),
            self.config.host_path(&self.config.run_dir),
        )
    }

    fn admin_kubectl(&self) -> Kubectl {
        Kubectl::new(self.config.kubectl_program(), self.kubeadm().admin_conf())
    }

    /// Whether this node's kubelet reports Ready (through the kubelet's own credentials).
    pub fn node_ready(&self) -> bool {
        let kubeadm = self.kubeadm();
        if !kubeadm.node_is_set_up() {
            return false;
        }
        let kubectl = Kubectl::new(self.config.kubectl_program(), kubeadm.kubelet_conf())
            .with_request_timeout(READY_PROBE_LIMIT);
        crate::process::with_deadline(
            std::time::Instant::now() + READY_PROBE_LIMIT,
            || matches!(kubectl.node(&self.node_name), Ok(Some(node)) if node.ready),
        )
    }

    /// Runs `command`; the result carries its id. Blocking.
    pub fn execute(&self, command: &Command) -> CommandResult {
        let name = command_name(command);
        info!(
            command_id = command.command_id,
            command = name,
            "running command"
        );
        let outcome = match &command.kind {
            Some(kind) => self.run(kind),
            None => Err("empty command".to_string()),
        };
        match outcome {
            Ok(payload) => {
                info!(
                    command_id = command.command_id,
                    command = name,
                    "command done"
                );
                CommandResult {
                    command_id: command.command_id.clone(),
                    ok: true,
                    error: String::new(),
                    payload,
                }
            }
            Err(error) => {
                warn!(command_id = command.command_id, command = name, %error, "command failed");
                CommandResult {
                    command_id: command.command_id.clone(),
                    ok: false,
                    error,
                    payload: None,
                }
            }
        }
    }

    fn run(&self, kind: &Kind) -> Outcome {
        let kubeadm = self.kubeadm();
        match kind {
            Kind::InitControlPlane(init) => {
                self.systemctl(&["enable", "kubelet"])?;
                kubeadm.init(init).map_err(chain)?;
                self.mark_success()?;
                Ok(None)
            }
            Kind::JoinControlPlane(join) => {
                self.systemctl(&["enable", "kubelet"])?;
                kubeadm.join_control_plane(join).map_err(chain)?;
                self.mark_success()?;
                Ok(None)
            }
            Kind::JoinWorker(join) => {
                self.systemctl(&["enable", "kubelet"])?;
                kubeadm.join_worker(join).map_err(chain)?;
                self.mark_success()?;
                Ok(None)
            }
            Kind::CreateJoinMaterial(request) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                let material = kubeadm
                    .create_join_material(request.ttl_seconds, request.for_control_plane, now)
                    .map_err(chain)?;
                Ok(Some(Payload::JoinMaterial(material)))
            }
            Kind::ApplyManifests(apply) => {
                let kubectl = self.admin_kubectl();
                let manifests = self
                    .config
                    .host_path(&self.config.data_dir)
                    .join("manifests");
                for file in &apply.bundle_files {
                    let relative = safe_relative(file)?;
                    kubectl
                        .apply_file(&manifests.join(relative))
                        .map_err(chain)?;
                }
                let run_dir = self.config.host_path(&self.config.run_dir);
                for inline in &apply.inline {
                    std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
                    let file = tempfile::Builder::new()
                        .prefix("manifest-")
                        .suffix(".yaml")
                        .tempfile_in(&run_dir)
                        .map_err(|e| format!("manifest {}: {e}", inline.name))?;
                    std::fs::write(file.path(), &inline.yaml)
                        .map_err(|e| format!("manifest {}: {e}", inline.name))?;
                    kubectl
                        .apply_file(file.path())
                        .map_err(|e| format!("manifest {}: {}", inline.name, chain(e)))?;
                }
                Ok(None)
            }
            Kind::FetchKubeconfig(_) => {
                let yaml = std::fs::read_to_string(kubeadm.admin_conf())
                    .map_err(|e| format!("this node has no admin kubeconfig: {e}"))?;
                Ok(Some(Payload::Kubeconfig(Kubeconfig { yaml })))
            }
            Kind::GetNodes(_) => {
                let nodes = self.admin_kubectl().nodes().map_err(chain)?;
                Ok(Some(Payload::Nodes(NodesStatus { nodes })))
            }
            Kind::Drain(drain) => {
                let timeout = match drain.timeout_seconds {
                    0 => DEFAULT_DRAIN_TIMEOUT,
                    seconds => Duration::from_secs(u64::from(seconds)),
                };
                self.admin_kubectl()
                    .drain(&drain.node_name, drain.grace_seconds, timeout)
                    .map_err(chain)?;
                Ok(None)
            }
            Kind::CheckHealth(_) => self.check_health(),
            Kind::Uncordon(uncordon) => {
                self.admin_kubectl()
                    .uncordon(&uncordon.node_name)
                    .map_err(chain)?;
                Ok(None)
            }
            Kind::DeleteNode(delete) => {
                self.admin_kubectl()
                    .delete_node(&delete.node_name)
                    .map_err(chain)?;
                Ok(None)
            }
            Kind::Upgrade(upgrade) => self.upgrade(upgrade),
            Kind::Reset(_) => {
                kubeadm.reset().map_err(chain)?;
                let marker = self.config.host_path(Path::new(CKS_SUCCESS_MARKER));
                let _ = std::fs::remove_file(marker);
                Ok(None)
            }
            Kind::RenewCertificates(_) => {
                kubeadm.renew_certificates().map_err(chain)?;
                self.systemctl(&["restart", "kubelet"])?;
                Ok(None)
            }
            Kind::ConfigureRegistry(registry) => {
                crate::images::configure_registry(
                    &self.config.host_path(&self.config.containerd_config),
                    &registry.url,
                    &registry.username,
                    &registry.password,
                )
                .map_err(chain)?;
                self.systemctl(&["restart", "containerd"])?;
                Ok(None)
            }
        }
    }

    /// Every Node and every kube-system pod, as this control node's kubectl sees them. Judges
    /// nothing: the controller decides what is healthy.
    fn check_health(&self) -> Outcome {
        let kubeadm = self.kubeadm();
        if !kubeadm.admin_conf().exists() {
            return Err(
                "check-health is allowed only on a control node that has joined the cluster: this node has no admin kubeconfig"
                    .into(),
            );
        }
        let kubectl = self
            .admin_kubectl()
            .with_request_timeout(HEALTH_REQUEST_TIMEOUT);
        let nodes = kubectl.nodes().map_err(chain)?;
        let system_pods = kubectl.system_pods().map_err(chain)?;
        Ok(Some(Payload::Health(ClusterHealth { nodes, system_pods })))
    }

    /// Installs the newly attached bundle, runs kubeadm's upgrade, swaps the kubelet.
    fn upgrade(&self, upgrade: &cks_proto::agent::Upgrade) -> Outcome {
        let mut sleep = std::thread::sleep;
        let bundle = crate::open_bundle(&self.config, &mut sleep).map_err(chain)?;
        let outcome = crate::install(&bundle, &self.config, self.images.as_ref()).map_err(chain)?;
        let installed = format!("v{}", outcome.kubernetes_version.trim_start_matches('v'));
        if installed != upgrade.target_version {
            return Err(format!(
                "the attached bundle is Kubernetes {installed}, not {}",
                upgrade.target_version
            ));
        }
        self.kubeadm()
            .upgrade(&upgrade.target_version, upgrade.first_control_plane)
            .map_err(chain)?;
        // The bundle install replaced the kubelet binary atomically; restarting it runs it.
        self.systemctl(&["daemon-reload"])?;
        self.systemctl(&["restart", "kubelet"])?;
        Ok(Some(Payload::Upgrade(UpgradeReport {
            kubelet_version: installed,
        })))
    }

    fn systemctl(&self, args: &[&str]) -> Result<(), String> {
        let out = crate::process::output_within(
            Process::new(&self.config.systemctl)
                .args(args)
                .stdin(std::process::Stdio::null()),
            SYSTEMCTL_LIMIT,
        )
        .map_err(|e| format!("cannot run {:?}: {e}", self.config.systemctl))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "systemctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// CKS's marker (`/home/cloud/success` containing `true`), which its scripts check.
    fn mark_success(&self) -> Result<(), String> {
        let marker = self.config.host_path(Path::new(CKS_SUCCESS_MARKER));
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("success marker: {e}"))?;
        }
        write_atomic(&marker, b"true\n", 0o644).map_err(|e| format!("success marker: {e}"))
    }
}

/// A short name for logs.
pub fn command_name(command: &Command) -> &'static str {
    match &command.kind {
        Some(Kind::InitControlPlane(_)) => "init-control-plane",
        Some(Kind::JoinControlPlane(_)) => "join-control-plane",
        Some(Kind::JoinWorker(_)) => "join-worker",
        Some(Kind::CreateJoinMaterial(_)) => "create-join-material",
        Some(Kind::ApplyManifests(_)) => "apply-manifests",
        Some(Kind::FetchKubeconfig(_)) => "fetch-kubeconfig",
        Some(Kind::GetNodes(_)) => "get-nodes",
        Some(Kind::Drain(_)) => "drain",
        Some(Kind::Uncordon(_)) => "uncordon",
        Some(Kind::Upgrade(_)) => "upgrade",
        Some(Kind::Reset(_)) => "reset",
        Some(Kind::DeleteNode(_)) => "delete-node",
        Some(Kind::RenewCertificates(_)) => "renew-certificates",
        Some(Kind::ConfigureRegistry(_)) => "configure-registry",
        Some(Kind::CheckHealth(_)) => "check-health",
        None => "empty",
    }
}

/// A bundle manifest name must stay inside the manifests directory.
fn safe_relative(name: &str) -> Result<&Path, String> {
    let path = Path::new(name);
    let inside = !name.is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if inside {
        Ok(path)
    } else {
        Err(format!(
            "manifest name {name:?} must be a relative path inside the bundle's manifests"
        ))
    }
}

fn chain(err: impl std::error::Error + 'static) -> String {
    crate::session::identity::error_chain(&err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_journaled_by_id_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let journal = ResultJournal::new(dir.path());
        assert!(journal.get("a").is_none());
        let result = CommandResult {
            command_id: "c-1/init".into(),
            ok: true,
            error: String::new(),
            payload: Some(Payload::Kubeconfig(Kubeconfig { yaml: "x".into() })),
        };
        journal.put(&result).unwrap();
        assert_eq!(journal.get("c-1/init"), Some(result));
        assert_eq!(journal.ids(), vec!["c-1/init".to_string()]);
        let file = std::fs::read_dir(dir.path().join(RESULTS_DIR))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&file.metadata().unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn manifest_names_cannot_escape() {
        assert!(safe_relative("network.yaml").is_ok());
        assert!(safe_relative("cni/calico.yaml").is_ok());
        assert!(safe_relative("../etc/passwd").is_err());
        assert!(safe_relative("/etc/passwd").is_err());
        assert!(safe_relative("").is_err());
    }
}
