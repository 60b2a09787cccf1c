//! kubeadm's `--config` files (`InitConfiguration` + `ClusterConfiguration`, `JoinConfiguration`,
//! API `kubeadm.k8s.io/v1beta3` or `v1beta4`), turned into the flags they stand for so that
//! `init` and `join` run one code path.
//!
//! This is how a caller passes secrets (bootstrap token, certificate key) without putting them
//! in process arguments. As with kubeadm, `--config` cannot be mixed with the flags it replaces.

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::flags::Parsed;

/// Flags that may accompany `--config` (kubeadm allows these; the rest is "can not mix").
pub const COMBINABLE: &[&str] = &[
    "config",
    "upload-certs",
    "ignore-preflight-errors",
    "skip-phases",
    "v",
];

/// Reads the `--config` file named in `flags` (if any) and merges its settings into `flags`.
///
/// # Errors
/// kubeadm's messages: mixing, unreadable file, unknown kind or version.
pub fn merge(flags: &mut Parsed, command: &str) -> Result<(), String> {
    let Some(path) = flags.get("config").map(str::to_string) else {
        return Ok(());
    };
    let mixed: Vec<&str> = flags
        .values
        .keys()
        .map(String::as_str)
        .filter(|k| !COMBINABLE.contains(k))
        .collect();
    if !mixed.is_empty() || !flags.args.is_empty() && command == "init" {
        return Err(format!("can not mix '--config' with arguments {mixed:?}"));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("unable to read config from {path:?} : {e}"))?;
    let mut found = false;
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = Value::deserialize(document)
            .map_err(|e| format!("error unmarshaling {path:?}: {e}"))?;
        if value.is_null() {
            continue;
        }
        let api = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !matches!(api, "kubeadm.k8s.io/v1beta3" | "kubeadm.k8s.io/v1beta4") {
            return Err(format!(
                "no kind is registered for the version {api:?} in scheme"
            ));
        }
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match (command, kind) {
            ("init", "InitConfiguration") => {
                found = true;
                if let Some(t) = value.get("bootstrapTokens").and_then(|v| v.get(0)) {
                    set(flags, "token", t.get("token"));
                    set(flags, "token-ttl", t.get("ttl"));
                }
                set(flags, "certificate-key", value.get("certificateKey"));
                set(
                    flags,
                    "node-name",
                    value.get("nodeRegistration").and_then(|n| n.get("name")),
                );
                let local = value.get("localAPIEndpoint");
                set(
                    flags,
                    "apiserver-advertise-address",
                    local.and_then(|l| l.get("advertiseAddress")),
                );
                set(
                    flags,
                    "apiserver-bind-port",
                    local.and_then(|l| l.get("bindPort")),
                );
            }
            ("init", "ClusterConfiguration") => {
                set(
                    flags,
                    "control-plane-endpoint",
                    value.get("controlPlaneEndpoint"),
                );
                set(flags, "kubernetes-version", value.get("kubernetesVersion"));
                let net = value.get("networking");
                set(
                    flags,
                    "pod-network-cidr",
                    net.and_then(|n| n.get("podSubnet")),
                );
                set(
                    flags,
                    "service-cidr",
                    net.and_then(|n| n.get("serviceSubnet")),
                );
                if let Some(Value::Sequence(sans)) =
                    value.get("apiServer").and_then(|a| a.get("certSANs"))
                {
                    let joined: Vec<&str> = sans.iter().filter_map(Value::as_str).collect();
                    flags
                        .values
                        .insert("apiserver-cert-extra-sans".into(), vec![joined.join(",")]);
                }
            }
            ("join", "JoinConfiguration") => {
                found = true;
                let bt = value.get("discovery").and_then(|d| d.get("bootstrapToken"));
                if let Some(endpoint) = bt
                    .and_then(|b| b.get("apiServerEndpoint"))
                    .and_then(Value::as_str)
                {
                    flags.args = vec![endpoint.to_string()];
                }
                set(flags, "token", bt.and_then(|b| b.get("token")));
                if let Some(Value::Sequence(hashes)) = bt.and_then(|b| b.get("caCertHashes")) {
                    let hashes = hashes
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect();
                    flags
                        .values
                        .insert("discovery-token-ca-cert-hash".into(), hashes);
                }
                if bt
                    .and_then(|b| b.get("unsafeSkipCAVerification"))
                    .and_then(Value::as_bool)
                    == Some(true)
                {
                    flags.values.insert(
                        "discovery-token-unsafe-skip-ca-verification".into(),
                        vec!["true".into()],
                    );
                }
                if let Some(cp) = value.get("controlPlane") {
                    flags
                        .values
                        .insert("control-plane".into(), vec!["true".into()]);
                    set(flags, "certificate-key", cp.get("certificateKey"));
                    let local = cp.get("localAPIEndpoint");
                    set(
                        flags,
                        "apiserver-advertise-address",
                        local.and_then(|l| l.get("advertiseAddress")),
                    );
                    set(
                        flags,
                        "apiserver-bind-port",
                        local.and_then(|l| l.get("bindPort")),
                    );
                }
                set(
                    flags,
                    "node-name",
                    value.get("nodeRegistration").and_then(|n| n.get("name")),
                );
            }
            (_, "KubeletConfiguration" | "KubeProxyConfiguration") => {}
            (_, other) => {
                return Err(format!(
                    "unexpected kind {other:?} in {path:?} for kubeadm {command}"
                ));
            }
        }
    }
    if !found {
        let wanted = if command == "init" {
            "InitConfiguration"
        } else {
            "JoinConfiguration"
        };
        return Err(format!("no {wanted} found in {path:?}"));
    }
    Ok(())
}

fn set(flags: &mut Parsed, name: &str, value: Option<&Value>) {
    let text = match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return,
    };
    flags.values.insert(name.to_string(), vec![text]);
}
