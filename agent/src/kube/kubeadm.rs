//! kubeadm for the controller's commands: init the first control plane, join control planes
//! and workers, make fresh join material, reset.
//!
//! # Guarantees
//! * Secrets (bootstrap tokens, certificate keys) never appear in kubeadm's arguments: they go
//!   in a `--config` file created with mode 0600 in the agent's run directory and removed when
//!   the command ends, whatever its outcome. They are redacted from any output kept in errors.
//! * Every value is validated before it is written into that file (token and key formats,
//!   `host:port`, `sha256:<hex>`, DNS-1123 node names), so nothing from the wire can inject YAML.
//! * `init` and `join` are not run twice: when kubeadm's own files show the node already
//!   initialised or joined, the command reports success without running kubeadm.
//! * Joins always verify the cluster CA by its hash; an empty hash is refused.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use cks_proto::agent::{InitControlPlane, JoinControlPlane, JoinMaterial, JoinWorker};

/// Where kubeadm writes what tells us a node is already initialised or joined.
/// Longest a kubeadm run may take; the running command's deadline cuts it further
/// ([`crate::process`]).
pub const KUBEADM_LIMIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);
const ADMIN_CONF: &str = "etc/kubernetes/admin.conf";
const KUBELET_CONF: &str = "etc/kubernetes/kubelet.conf";

/// Why a kubeadm command failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeadmError {
    /// A value from the controller is not acceptable.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// Which field.
        field: &'static str,
        /// Why (never the secret itself).
        reason: &'static str,
    },
    /// The config file could not be written.
    #[error("failed to write the kubeadm config in {dir:?}")]
    WriteConfig {
        /// The run directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// kubeadm could not be started.
    #[error("failed to run {binary:?}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// kubeadm ran and failed; its output has secrets redacted.
    #[error("kubeadm {command} failed with exit code {code:?}: {output}")]
    Failed {
        /// The sub-command.
        command: &'static str,
        /// Exit code.
        code: Option<i32>,
        /// stderr (then stdout), redacted.
        output: String,
    },
    /// kubeadm succeeded but printed nothing we could use.
    #[error("kubeadm {command} printed no {what}")]
    UnexpectedOutput {
        /// The sub-command.
        command: &'static str,
        /// What was missing.
        what: &'static str,
    },
}

/// What a command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// kubeadm ran and succeeded.
    Ran,
    /// The node already was in the wanted state; kubeadm was not run.
    AlreadyDone,
}

/// Runs kubeadm on this node.
#[derive(Debug, Clone)]
pub struct Kubeadm {
    binary: PathBuf,
    root: PathBuf,
    run_dir: PathBuf,
}

impl Kubeadm {
    /// `binary` is kubeadm (normally `/opt/bin/kubeadm`); `root` is where kubeadm's files are
    /// (`/` on a node); config files go in `run_dir`.
    pub fn new(binary: PathBuf, root: PathBuf, run_dir: PathBuf) -> Self {
        Kubeadm {
            binary,
            root,
            run_dir,
        }
    }

    /// `kubeadm init` for the first control plane, with `--upload-certs`.
    ///
    /// # Errors
    /// [`KubeadmError`].
    pub fn init(&self, cmd: &InitControlPlane) -> Result<Done, KubeadmError> {
        if self.root.join(ADMIN_CONF).exists() {
            return Ok(Done::AlreadyDone);
        }
        check_endpoint("control_plane_endpoint", &cmd.control_plane_endpoint)?;
        check_token(&cmd.bootstrap_token)?;
        check_key(&cmd.certificate_key)?;
        check_node_name(&cmd.node_name)?;
        for san in &cmd.certificate_sans {
            check_word("certificate_sans", san)?;
        }
        for (field, cidr) in [
            ("pod_cidr", &cmd.pod_cidr),
            ("service_cidr", &cmd.service_cidr),
        ] {
            if !cidr.is_empty() {
                check_word(field, cidr)?;
            }
        }
        let mut yaml = format!(
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nbootstrapTokens:\n- token: \"{}\"\n  ttl: \"{}s\"\ncertificateKey: \"{}\"\nnodeRegistration:\n  name: \"{}\"\n---\napiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\ncontrolPlaneEndpoint: \"{}\"\n",
            cmd.bootstrap_token,
            cmd.token_ttl_seconds,
            cmd.certificate_key,
            cmd.node_name,
            cmd.control_plane_endpoint,
        );
        if !cmd.certificate_sans.is_empty() {
            let sans: Vec<String> = cmd
                .certificate_sans
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect();
            yaml.push_str(&format!("apiServer:\n  certSANs: [{}]\n", sans.join(", ")));
        }
        if !cmd.pod_cidr.is_empty() || !cmd.service_cidr.is_empty() {
            yaml.push_str("networking:\n");
            if !cmd.pod_cidr.is_empty() {
                yaml.push_str(&format!("  podSubnet: \"{}\"\n", cmd.pod_cidr));
            }
            if !cmd.service_cidr.is_empty() {
                yaml.push_str(&format!("  serviceSubnet: \"{}\"\n", cmd.service_cidr));
            }
        }
        let secrets = [cmd.bootstrap_token.as_str(), cmd.certificate_key.as_str()];
        self.run_with_config("init", &yaml, &["--upload-certs"], &secrets)?;
        Ok(Done::Ran)
    }

    /// `kubeadm join` as a worker.
    ///
    /// # Errors
    /// [`KubeadmError`].
    pub fn join_worker(&self, cmd: &JoinWorker) -> Result<Done, KubeadmError> {
        self.join(
            &cmd.api_server_endpoint,
            &cmd.token,
            &cmd.ca_cert_hash,
            None,
            &cmd.node_name,
        )
    }

    /// `kubeadm join --control-plane`.
    ///
    /// # Errors
    /// [`KubeadmError`].
    pub fn join_control_plane(&self, cmd: &JoinControlPlane) -> Result<Done, KubeadmError> {
        check_key(&cmd.certificate_key)?;
        self.join(
            &cmd.api_server_endpoint,
            &cmd.token,
            &cmd.ca_cert_hash,
            Some(&cmd.certificate_key),
            &cmd.node_name,
        )
    }

    fn join(
        &self,
        endpoint: &str,
        token: &str,
        ca_hash: &str,
        certificate_key: Option<&str>,
        node_name: &str,
    ) -> Result<Done, KubeadmError> {
        if self.root.join(KUBELET_CONF).exists() {
            return Ok(Done::AlreadyDone);
        }
        check_endpoint("api_server_endpoint", endpoint)?;
        check_token(token)?;
        check_ca_hash(ca_hash)?;
        check_node_name(node_name)?;
        let control_plane = certificate_key
            .map(|k| format!("controlPlane:\n  certificateKey: \"{k}\"\n"))
            .unwrap_or_default();
        let yaml = format!(
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\ndiscovery:\n  bootstrapToken:\n    apiServerEndpoint: \"{endpoint}\"\n    token: \"{token}\"\n    caCertHashes: [\"{ca_hash}\"]\n{control_plane}nodeRegistration:\n  name: \"{node_name}\"\n"
        );
        let secrets = [token, certificate_key.unwrap_or_default()];
        self.run_with_config("join", &yaml, &[], &secrets)?;
        Ok(Done::Ran)
    }

    /// Fresh join material on a control-plane node: a new bootstrap token with `ttl_seconds`
    /// and, for control-plane joins, the certificates re-uploaded under a new key.
    ///
    /// # Errors
    /// [`KubeadmError`].
    pub fn create_join_material(
        &self,
        ttl_seconds: u32,
        for_control_plane: bool,
        now_unix: i64,
    ) -> Result<JoinMaterial, KubeadmError> {
        let ttl = format!("{ttl_seconds}s");
        let printed = self.run(
            "token create",
            &["token", "create", "--ttl", &ttl, "--print-join-command"],
            &[],
        )?;
        // "kubeadm join <endpoint> --token <token> --discovery-token-ca-cert-hash <hash>"
        let words: Vec<&str> = printed.split_whitespace().collect();
        let after = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .and_then(|i| words.get(i + 1))
                .map(|s| s.to_string())
        };
        let (Some(endpoint), Some(token), Some(ca_cert_hash)) = (
            words.get(2).map(|s| s.to_string()),
            after("--token"),
            after("--discovery-token-ca-cert-hash"),
        ) else {
            return Err(KubeadmError::UnexpectedOutput {
                command: "token create",
                what: "join command",
            });
        };
        let certificate_key = if for_control_plane {
            let out = self.run(
                "init phase upload-certs",
                &["init", "phase", "upload-certs", "--upload-certs"],
                &[],
            )?;
            out.lines()
                .map(str::trim)
                .find(|l| l.len() == 64 && l.chars().all(|c| c.is_ascii_hexdigit()))
                .map(str::to_string)
                .ok_or(KubeadmError::UnexpectedOutput {
                    command: "init phase upload-certs",
                    what: "certificate key",
                })?
        } else {
            String::new()
        };
        Ok(JoinMaterial {
            api_server_endpoint: endpoint,
            token,
            ca_cert_hash,
            certificate_key,
            expires_unix: now_unix + i64::from(ttl_seconds),
        })
    }

    /// `kubeadm upgrade apply <version> -y` (first control plane) or `kubeadm upgrade node`
    /// (every other node). The version is validated (`vMAJOR.MINOR.PATCH`).
    ///
    /// # Errors
    /// [`KubeadmError`].
    pub fn upgrade(&self, version: &str, first_control_plane: bool) -> Result<(), KubeadmError> {
        let valid = version.strip_prefix('v').is_some_and(|v| {
            let parts: Vec<&str> = v.split('.').collect();
            parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        });
        if !valid {
            return Err(KubeadmError::InvalidInput {
                field: "target_version",
                reason: "must look like v1.33.1",
            });
        }
        if first_control_plane {
            self.run("upgrade apply", &["upgrade", "apply", version, "-y"], &[])
                .map(drop)
        } else {
            self.run("upgrade node", &["upgrade", "node"], &[])
                .map(drop)
        }
    }

    /// `kubeadm certs renew all`.
    ///
    /// # Errors
    /// [`KubeadmError`].
    pub fn renew_certificates(&self) -> Result<(), KubeadmError> {
        self.run("certs renew", &["certs", "renew", "all"], &[])
            .map(drop)
    }

    /// Whether kubeadm's files show this node initialised or joined.
    pub fn node_is_set_up(&self) -> bool {
        self.root.join(ADMIN_CONF).exists() || self.root.join(KUBELET_CONF).exists()
    }

    /// The admin kubeconfig (host path), present on control-plane nodes.
    pub fn admin_conf(&self) -> PathBuf {
        self.root.join(ADMIN_CONF)
    }

    /// The kubelet's kubeconfig (host path), present on every joined node.
    pub fn kubelet_conf(&self) -> PathBuf {
        self.root.join(KUBELET_CONF)
    }

    /// `kubeadm reset -f`.
    ///
    /// # Errors
    /// [`KubeadmError`].
    pub fn reset(&self) -> Result<(), KubeadmError> {
        self.run("reset", &["reset", "-f"], &[]).map(drop)
    }

    fn run_with_config(
        &self,
        command: &'static str,
        yaml: &str,
        extra: &[&str],
        secrets: &[&str],
    ) -> Result<String, KubeadmError> {
        let config = SecretFile::create(&self.run_dir, yaml)?;
        let path = config.path.to_string_lossy().into_owned();
        let mut args = vec![command, "--config", path.as_str()];
        args.extend_from_slice(extra);
        self.run(command, &args, secrets)
    }

    fn run(
        &self,
        command: &'static str,
        args: &[&str],
        secrets: &[&str],
    ) -> Result<String, KubeadmError> {
        tracing::info!(command, "running kubeadm");
        let out = crate::process::output_within(
            Command::new(&self.binary)
                .args(args)
                .stdin(std::process::Stdio::null()),
            KUBEADM_LIMIT,
        )
        .map_err(|source| KubeadmError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        let mut output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout.trim()
        );
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            output = output.replace(secret, "<redacted>");
        }
        Err(KubeadmError::Failed {
            command,
            code: out.status.code(),
            output,
        })
    }
}

/// A 0600 file removed on drop.
struct SecretFile {
    path: PathBuf,
}

impl SecretFile {
    fn create(dir: &Path, content: &str) -> Result<SecretFile, KubeadmError> {
        let err = |source| KubeadmError::WriteConfig {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let file = tempfile::Builder::new()
            .prefix("kubeadm-")
            .suffix(".yaml")
            .tempfile_in(dir)
            .map_err(err)?;
        let (mut handle, path) = file.keep().map_err(|e| err(e.error))?;
        // tempfile creates the file with mode 0600: only root (the agent) can read the secrets.
        let guard = SecretFile { path };
        handle.write_all(content.as_bytes()).map_err(err)?;
        handle.sync_all().map_err(err)?;
        Ok(guard)
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn invalid(field: &'static str, reason: &'static str) -> KubeadmError {
    KubeadmError::InvalidInput { field, reason }
}

fn check_token(token: &str) -> Result<(), KubeadmError> {
    let ok = token.split_once('.').is_some_and(|(id, secret)| {
        id.len() == 6
            && secret.len() == 16
            && token
                .chars()
                .all(|c| c == '.' || c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    ok.then_some(())
        .ok_or(invalid("token", "not of the form [a-z0-9]{6}.[a-z0-9]{16}"))
}

fn check_key(key: &str) -> Result<(), KubeadmError> {
    (key.len() == 64 && key.chars().all(|c| c.is_ascii_hexdigit()))
        .then_some(())
        .ok_or(invalid("certificate_key", "not 32 bytes of hex"))
}

fn check_ca_hash(hash: &str) -> Result<(), KubeadmError> {
    let ok = hash
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then_some(()).ok_or(invalid(
        "ca_cert_hash",
        "not sha256:<64 hex>; the CA is always verified",
    ))
}

fn check_endpoint(field: &'static str, endpoint: &str) -> Result<(), KubeadmError> {
    let ok = endpoint.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && port.parse::<u16>().is_ok() && is_word(host)
    });
    ok.then_some(()).ok_or(invalid(field, "not host:port"))
}

fn check_node_name(name: &str) -> Result<(), KubeadmError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !name.starts_with('-')
        && !name.ends_with('-');
    ok.then_some(())
        .ok_or(invalid("node_name", "not a DNS-1123 name"))
}

fn check_word(field: &'static str, value: &str) -> Result<(), KubeadmError> {
    is_word(value).then_some(()).ok_or(invalid(
        field,
        "contains characters outside [A-Za-z0-9.:/-]",
    ))
}

/// Host names, IPs and CIDRs: nothing that could break out of a quoted YAML string.
fn is_word(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '/' | '-' | '[' | ']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_could_inject_yaml_are_refused() {
        assert!(check_token("abcdef.0123456789abcdef").is_ok());
        assert!(check_token("abcdef.0123456789abcde\"").is_err());
        assert!(
            check_ca_hash("").is_err(),
            "CA verification is never skipped"
        );
        assert!(check_endpoint("e", "10.0.0.1:6443").is_ok());
        assert!(check_endpoint("e", "x\"\n:6443").is_err());
        assert!(check_node_name("cp-0").is_ok());
        assert!(check_node_name("CP_0").is_err());
        assert!(check_word("san", "api.example\"").is_err());
    }
}
