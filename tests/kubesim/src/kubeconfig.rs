//! kubeconfig files as kubeadm writes them (`admin.conf`, `kubelet.conf`, …): one cluster with
//! the CA inline, one user with an inline client certificate and key.

use base64::Engine;
use serde::Deserialize;

/// Why a kubeconfig could not be read. Never carries the file's content (it holds a key).
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// Not YAML of the expected shape.
    #[error("not a kubeconfig: {reason}")]
    Malformed {
        /// What is wrong (never a value from the file).
        reason: &'static str,
    },
}

/// One cluster, one user.
#[derive(Clone, PartialEq, Eq)]
pub struct Kubeconfig {
    /// `https://host:port`.
    pub server: String,
    /// The cluster CA (PEM).
    pub ca_pem: String,
    /// The user's name in the file (`kubernetes-admin`, `system:node:<name>`).
    pub user: String,
    /// The client certificate (PEM).
    pub client_cert_pem: String,
    /// The client key (PEM). A secret.
    pub client_key_pem: String,
}

impl std::fmt::Debug for Kubeconfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubeconfig")
            .field("server", &self.server)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
}

#[derive(Deserialize)]
struct NamedCluster {
    cluster: ClusterEntry,
}

#[derive(Deserialize)]
struct ClusterEntry {
    server: String,
    #[serde(rename = "certificate-authority-data", default)]
    ca_data: String,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    user: UserEntry,
}

#[derive(Deserialize)]
struct UserEntry {
    #[serde(rename = "client-certificate-data", default)]
    cert_data: String,
    #[serde(rename = "client-key-data", default)]
    key_data: String,
}

impl Kubeconfig {
    /// The file's text, as kubeadm writes it.
    pub fn to_yaml(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let user = &self.user;
        format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {}\n  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n    user: {user}\n  name: {user}@kubernetes\ncurrent-context: {user}@kubernetes\nkind: Config\npreferences: {{}}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b64.encode(&self.ca_pem),
            self.server,
            b64.encode(&self.client_cert_pem),
            b64.encode(&self.client_key_pem),
        )
    }

    /// Reads a kubeconfig with inline data (the first cluster and the first user).
    ///
    /// # Errors
    /// [`KubeconfigError`].
    pub fn from_yaml(text: &str) -> Result<Kubeconfig, KubeconfigError> {
        let file: File = serde_yaml_ng::from_str(text).map_err(|_| KubeconfigError::Malformed {
            reason: "not YAML with clusters and users",
        })?;
        let cluster = file
            .clusters
            .into_iter()
            .next()
            .ok_or(KubeconfigError::Malformed {
                reason: "no cluster",
            })?
            .cluster;
        let user = file.users.into_iter().next();
        let decode = |data: &str, reason: &'static str| -> Result<String, KubeconfigError> {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|_| KubeconfigError::Malformed { reason })?;
            String::from_utf8(bytes).map_err(|_| KubeconfigError::Malformed { reason })
        };
        let ca_pem = decode(
            &cluster.ca_data,
            "certificate-authority-data is not base64 PEM",
        )?;
        let (user, client_cert_pem, client_key_pem) = match user {
            Some(u) => (
                u.name,
                decode(
                    &u.user.cert_data,
                    "client-certificate-data is not base64 PEM",
                )?,
                decode(&u.user.key_data, "client-key-data is not base64 PEM")?,
            ),
            None => Default::default(),
        };
        Ok(Kubeconfig {
            server: cluster.server,
            ca_pem,
            user,
            client_cert_pem,
            client_key_pem,
        })
    }

    /// `host:port` of the server.
    pub fn endpoint(&self) -> &str {
        self.server
            .strip_prefix("https://")
            .unwrap_or(&self.server)
            .trim_end_matches('/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_hides_the_key_from_debug() {
        let k = Kubeconfig {
            server: "https://10.0.0.1:6443".into(),
            ca_pem: "CA".into(),
            user: "kubernetes-admin".into(),
            client_cert_pem: "CERT".into(),
            client_key_pem: "SECRET KEY".into(),
        };
        let back = Kubeconfig::from_yaml(&k.to_yaml()).unwrap();
        assert_eq!(back, k);
        assert_eq!(back.endpoint(), "10.0.0.1:6443");
        assert!(!format!("{back:?}").contains("SECRET"));
        assert!(Kubeconfig::from_yaml("nope: [").is_err());
    }
}
