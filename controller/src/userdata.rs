//! The userdata a node VM boots with: only what its agent needs to find and trust the
//! controller (contract 2) — the agent endpoint address(es), the agent CA's fingerprint, a
//! one-time enrollment token and the node's name. No join token, certificate key, SSH key or
//! kubeconfig is ever put here (CKS put the join token in userdata; it never expired).
//!
//! Two template families are supported, as CKS nodes use them: cloud-init (Debian/Ubuntu
//! templates) and Ignition (Flatcar). Both write `/etc/cks-agent/config.toml` with mode 0600
//! and (re)start `cks-agent.service`, which the template ships enabled.

use serde::Serialize;

/// Where the agent reads its configuration on the node.
pub const AGENT_CONFIG_PATH: &str = "/etc/cks-agent/config.toml";
/// CloudStack's default limit for base64-encoded userdata sent with GET (`vm.userdata.max.length`
/// is 32768 by default); we stay far below it.
pub const USERDATA_LIMIT: usize = 32 * 1024;

/// How the node template consumes userdata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TemplateKind {
    /// `#cloud-config` (Debian, Ubuntu, the CKS SystemVM template).
    #[default]
    CloudInit,
    /// Ignition JSON (Flatcar).
    Ignition,
}

/// What one node needs to enroll. `enrollment_token` is secret: `Debug` hides it.
#[derive(Clone)]
pub struct NodeBootstrap {
    /// Agent endpoint `host:port` addresses the node can reach, tried in order.
    pub addresses: Vec<String>,
    /// `sha256:<hex>` of the agent CA.
    pub ca_fingerprint: String,
    /// One-time token (short TTL, scoped to this node).
    pub enrollment_token: String,
    /// The VM's name, also its Kubernetes node name.
    pub node_name: String,
    /// `control-plane` or `worker` (a hint for people reading the file; the certificate decides).
    pub role: String,
    /// How long the agent looks for the binaries ISO before it reports failure (CKS's
    /// `…install.attempt.wait.duration` × `…install.reattempt.count` for the node's role);
    /// `None` leaves the agent's default.
    pub discovery_timeout_seconds: Option<u64>,
}

impl std::fmt::Debug for NodeBootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBootstrap")
            .field("addresses", &self.addresses)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("enrollment_token", &"<redacted>")
            .field("node_name", &self.node_name)
            .field("role", &self.role)
            .field("discovery_timeout_seconds", &self.discovery_timeout_seconds)
            .finish()
    }
}

#[derive(Serialize)]
struct AgentConfigFile<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    discovery_timeout_seconds: Option<u64>,
    controller: ControllerTable<'a>,
}

#[derive(Serialize)]
struct ControllerTable<'a> {
    addresses: &'a [String],
    ca_fingerprint: &'a str,
    enrollment_token: &'a str,
    node_name: &'a str,
    role: &'a str,
}

impl NodeBootstrap {
    /// The agent's `config.toml`.
    pub fn agent_config(&self) -> String {
        let file = AgentConfigFile {
            discovery_timeout_seconds: self.discovery_timeout_seconds,
            controller: ControllerTable {
                addresses: &self.addresses,
                ca_fingerprint: &self.ca_fingerprint,
                enrollment_token: &self.enrollment_token,
                node_name: &self.node_name,
                role: &self.role,
            },
        };
        let body = toml::to_string(&file).unwrap_or_default();
        format!("# Written at first boot from the VM's userdata by cks-controller.\n{body}")
    }

    /// The userdata text for `kind` (CloudStack's API wants it base64-encoded on the wire).
    pub fn render(&self, kind: TemplateKind) -> String {
        use base64::Engine as _;
        let config = base64::engine::general_purpose::STANDARD.encode(self.agent_config());
        match kind {
            TemplateKind::CloudInit => format!(
                "#cloud-config\n\
                 write_files:\n\
                 - path: {AGENT_CONFIG_PATH}\n  \
                   permissions: '0600'\n  \
                   owner: root:root\n  \
                   encoding: b64\n  \
                   content: {config}\n\
                 runcmd:\n\
                 - [systemctl, restart, cks-agent.service]\n"
            ),
            TemplateKind::Ignition => serde_json::json!({
                "ignition": {"version": "3.3.0"},
                "storage": {"files": [{
                    "path": AGENT_CONFIG_PATH,
                    "mode": 0o600,
                    "overwrite": true,
                    "contents": {"source": format!("data:;base64,{config}")},
                }]},
                "systemd": {"units": [{"name": "cks-agent.service", "enabled": true}]},
            })
            .to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn bootstrap() -> NodeBootstrap {
        NodeBootstrap {
            discovery_timeout_seconds: Some(1500),
            addresses: vec!["10.1.1.1:9443".into(), "cks.example:9443".into()],
            ca_fingerprint: format!("sha256:{}", "ab".repeat(32)),
            enrollment_token: "tok\"en'with\nodd chars".into(),
            node_name: "k8s-c1-control-1".into(),
            role: "control-plane".into(),
        }
    }

    #[derive(serde::Deserialize)]
    struct Parsed {
        discovery_timeout_seconds: Option<u64>,
        controller: ParsedController,
    }

    #[derive(serde::Deserialize)]
    struct ParsedController {
        addresses: Vec<String>,
        enrollment_token: String,
        node_name: String,
    }

    #[test]
    fn cloud_config_writes_the_agent_config_that_parses_back() {
        let b = bootstrap();
        let text = b.render(TemplateKind::CloudInit);
        assert!(text.starts_with("#cloud-config\n"));
        let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        let file = &yaml["write_files"][0];
        assert_eq!(file["path"].as_str(), Some(AGENT_CONFIG_PATH));
        assert_eq!(file["permissions"].as_str(), Some("0600"));
        let content = base64::engine::general_purpose::STANDARD
            .decode(file["content"].as_str().unwrap())
            .unwrap();
        let parsed: Parsed = toml::from_str(std::str::from_utf8(&content).unwrap()).unwrap();
        assert_eq!(parsed.controller.addresses, b.addresses);
        assert_eq!(parsed.controller.enrollment_token, b.enrollment_token);
        assert_eq!(parsed.controller.node_name, b.node_name);
        assert_eq!(parsed.discovery_timeout_seconds, Some(1500));
        assert!(text.len() < USERDATA_LIMIT / 4);
        assert!(!format!("{b:?}").contains(&b.enrollment_token));
    }

    #[test]
    fn ignition_carries_the_same_file() {
        let text = bootstrap().render(TemplateKind::Ignition);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let file = &json["storage"]["files"][0];
        assert_eq!(file["mode"], 0o600);
        let source = file["contents"]["source"].as_str().unwrap();
        let content = base64::engine::general_purpose::STANDARD
            .decode(source.strip_prefix("data:;base64,").unwrap())
            .unwrap();
        assert!(String::from_utf8(content).unwrap().contains("[controller]"));
    }
}
