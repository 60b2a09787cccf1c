//! The controller's configuration: a TOML file, each key overridable by an environment
//! variable, validated as a whole (every problem reported at once) before anything binds a port
//! or calls CloudStack.
//!
//! ```toml
//! data_dir = "/var/lib/cks-controller"     # state.db, pki/, secrets.key
//!
//! [cloudstack]
//! endpoint = "http://cloudstack:8080/client/api"
//! api_key = "…"                           # an admin's keys (getUser/getUserKeys need them)
//! secret_key_file = "/etc/cks-controller/secret-key"   # or secret_key = "…"
//!
//! [api]
//! listen = "0.0.0.0:8090"                  # the CloudStack-compatible API
//! tls_cert_file = "/etc/cks-controller/api.crt"   # PEM; re-read on SIGHUP
//! tls_key_file = "/etc/cks-controller/api.key"
//! # allow_plain_http = false               # plain HTTP off loopback only when true
//! # header_timeout_seconds = 10, body_timeout_seconds = 30, idle_timeout_seconds = 60,
//! # body_limit_bytes = 2097152, max_connections = 512
//! # forward_per_source_per_second = 50    # CloudStack's own commands, per client address;
//! #                                         0: none (a proxy in front limits its clients)
//!
//! [jobs]
//! retention_minutes = 10080                # finished jobs are removed after this (7 days)
//!
//! [agents]
//! listen = "0.0.0.0:8091"                  # gRPC for the node agents
//! advertise = ["10.0.0.5:8091"]            # what nodes dial (default: listen)
//! check_enrollment_source = true           # enroll only from where the VM can be
//!
//! [nodes]
//! template = "cks-node"                    # node template name or id
//! pod_cidr = "10.244.0.0/16"
//! service_cidr = "10.96.0.0/12"
//! enrollment_ttl_seconds = 3600
//!
//! [signatures]
//! max_validity_seconds = 900               # longest `expires` ahead a request may carry
//! allow_legacy = false                     # accept requests without signatureVersion=3
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cloudstack::SecretKey;
use crate::listen::{Limits, TlsFiles};

/// Env: the CloudStack endpoint.
pub const ENV_ENDPOINT: &str = "CKS_CLOUDSTACK_ENDPOINT";
/// Env: the admin API key.
pub const ENV_API_KEY: &str = "CKS_CLOUDSTACK_API_KEY";
/// Env: the admin secret key.
pub const ENV_SECRET_KEY: &str = "CKS_CLOUDSTACK_SECRET_KEY";
/// Env: the API listen address.
pub const ENV_API_LISTEN: &str = "CKS_API_LISTEN";
/// Env: the API's certificate file (PEM).
pub const ENV_API_TLS_CERT_FILE: &str = "CKS_API_TLS_CERT_FILE";
/// Env: the API's private key file (PEM).
pub const ENV_API_TLS_KEY_FILE: &str = "CKS_API_TLS_KEY_FILE";
/// Env: the agent endpoint listen address.
pub const ENV_AGENTS_LISTEN: &str = "CKS_AGENTS_LISTEN";
/// Env: comma-separated addresses nodes dial.
pub const ENV_AGENTS_ADVERTISE: &str = "CKS_AGENTS_ADVERTISE";
/// Env: `true`/`false`, whether enrollments are accepted only from where the node's VM can be.
pub const ENV_AGENTS_CHECK_SOURCE: &str = "CKS_AGENTS_CHECK_ENROLLMENT_SOURCE";
/// Env: the data directory.
pub const ENV_DATA_DIR: &str = "CKS_DATA_DIR";
/// Env: the node template.
pub const ENV_NODE_TEMPLATE: &str = "CKS_NODE_TEMPLATE";
/// Env (tests only): a crash ledger file that arms the crash points ([`crate::crashpoint`]).
pub const ENV_CRASH_LEDGER: &str = "CKS_CRASH_LEDGER";

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cks-controller";
/// Default API address.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8090";
/// Default agent endpoint address.
pub const DEFAULT_AGENTS_LISTEN: &str = "127.0.0.1:8091";
/// Default node template name.
pub const DEFAULT_NODE_TEMPLATE: &str = "cks-node";
/// Default: how long finished jobs are kept (CloudStack expunges its jobs too).
pub const DEFAULT_JOB_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default pod network.
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";
/// Default service network.
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";

/// Default longest `expires` a request may carry: CloudStack's own limit when it enforces
/// timestamps; `cs` and CloudMonkey sign for 10 minutes.
pub const DEFAULT_SIGNATURE_VALIDITY: Duration = Duration::from_secs(15 * 60);

/// How the API checks request signatures (`[signatures]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignaturePolicy {
    /// Requests whose `expires` is further ahead than this are refused
    /// (`max_validity_seconds`, 60–86400, default 900).
    pub max_validity: Duration,
    /// Accept signatures without `signatureVersion=3` and `expires` (`allow_legacy`, default
    /// false): such a request never expires, so a captured one works forever.
    pub allow_legacy: bool,
}

impl Default for SignaturePolicy {
    fn default() -> Self {
        Self {
            max_validity: DEFAULT_SIGNATURE_VALIDITY,
            allow_legacy: false,
        }
    }
}

/// The configuration is unusable; every problem found is listed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("configuration file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it never quotes secret values).
        message: String,
    },
    /// Values are missing or wrong.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    #[serde(default)]
    cloudstack: CloudStackSection,
    #[serde(default)]
    api: ApiSection,
    #[serde(default)]
    agents: AgentsSection,
    #[serde(default)]
    nodes: NodesSection,
    #[serde(default)]
    signatures: SignaturesSection,
    #[serde(default)]
    jobs: JobsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignaturesSection {
    max_validity_seconds: Option<u64>,
    allow_legacy: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloudStackSection {
    endpoint: Option<String>,
    api_key: Option<String>,
    secret_key: Option<SecretKey>,
    secret_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiSection {
    listen: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    #[serde(default)]
    allow_plain_http: bool,
    header_timeout_seconds: Option<u64>,
    body_timeout_seconds: Option<u64>,
    idle_timeout_seconds: Option<u64>,
    body_limit_bytes: Option<usize>,
    max_connections: Option<usize>,
    forward_per_source_per_second: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsSection {
    retention_minutes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsSection {
    listen: Option<String>,
    advertise: Option<Vec<String>>,
    check_enrollment_source: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodesSection {
    template: Option<String>,
    pod_cidr: Option<String>,
    service_cidr: Option<String>,
    enrollment_ttl_seconds: Option<u64>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// State, CA and key directory.
    pub data_dir: PathBuf,
    /// CloudStack's API URL.
    pub endpoint: String,
    /// The admin API key the controller acts with.
    pub api_key: String,
    /// Its secret key.
    pub secret_key: SecretKey,
    /// Where the API listens.
    pub api_listen: SocketAddr,
    /// The API's certificate and key; `None` serves plain HTTP (loopback, or explicitly allowed).
    pub api_tls: Option<TlsFiles>,
    /// Plain HTTP allowed off loopback (`api.allow_plain_http`).
    pub api_allow_plain_http: bool,
    /// The API listener's timeouts and caps.
    pub api_limits: Limits,
    /// Requests per second (burst: twice that) each client address may have forwarded to
    /// CloudStack (`api.forward_per_source_per_second`); who sent them is not known until
    /// CloudStack checks their signature. `None` (configured as 0): no such limit, for a
    /// proxy in front that limits its own clients (all its traffic comes from one address).
    pub api_forward_per_source: Option<u32>,
    /// How long finished jobs are kept.
    pub job_retention: Duration,
    /// Where the agent endpoint listens.
    pub agents_listen: SocketAddr,
    /// What nodes dial.
    pub agents_advertise: Vec<String>,
    /// Accept an enrollment only from the address CloudStack says the node's VM appears from
    /// (its own on a shared network, its network's source NAT otherwise). Default true.
    pub agents_check_source: bool,
    /// Node template name or id.
    pub node_template: String,
    /// Pod CIDR.
    pub pod_cidr: String,
    /// Service CIDR.
    pub service_cidr: String,
    /// Enrollment token lifetime.
    pub enrollment_ttl: Duration,
    /// How the API checks request signatures.
    pub signatures: SignaturePolicy,
    /// Tests only: the crash ledger that arms the crash points (environment only, never in a
    /// configuration file).
    pub crash_ledger: Option<PathBuf>,
}

// === impl Config ===

impl Config {
    /// Whether the API may speak plain HTTP where it listens: on loopback, or when allowed.
    pub fn api_plain_http_allowed(&self) -> bool {
        self.api_listen.ip().is_loopback() || self.api_allow_plain_http
    }

    /// Reads `path` (when given) and the process environment.
    ///
    /// # Errors
    /// [`ConfigError`] listing every problem.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("CKS_"))
            .collect();
        let text = match path {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                        path: path.to_path_buf(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        Self::from_sources(path, text.as_deref(), &env)
    }

    /// Builds the configuration from a file's text and an environment map (tests pass both).
    ///
    /// # Errors
    /// [`ConfigError`] listing every problem.
    pub fn from_sources(
        path: Option<&Path>,
        text: Option<&str>,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let file: FileConfig = match text {
            Some(text) => toml::from_str(text).map_err(|err| ConfigError::Parse {
                path: path.map(Path::to_path_buf).unwrap_or_default(),
                message: err.message().to_string(),
            })?,
            None => FileConfig::default(),
        };
        let mut problems = Vec::new();
        let pick = |env_key: &str, file_value: Option<String>| -> Option<String> {
            env.get(env_key).cloned().or(file_value)
        };
        let endpoint = pick(ENV_ENDPOINT, file.cloudstack.endpoint);
        match &endpoint {
            None => problems.push(format!(
                "cloudstack.endpoint (or {ENV_ENDPOINT}) is required: CloudStack's API URL"
            )),
            Some(url) if url::Url::parse(url).is_err() => {
                problems.push(format!("cloudstack.endpoint {url:?} is not a URL"));
            }
            Some(_) => {}
        }
        let api_key = pick(ENV_API_KEY, file.cloudstack.api_key);
        if api_key.is_none() {
            problems.push(format!(
                "cloudstack.api_key (or {ENV_API_KEY}) is required: an admin's API key"
            ));
        }
        let secret_key = match (
            env.get(ENV_SECRET_KEY),
            file.cloudstack.secret_key,
            &file.cloudstack.secret_key_file,
        ) {
            (Some(secret), _, _) => Some(SecretKey::new(secret.clone())),
            (None, Some(secret), _) => Some(secret),
            (None, None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(text) => Some(SecretKey::new(text.trim().to_string())),
                Err(err) => {
                    problems.push(format!(
                        "cloudstack.secret_key_file {}: {err}",
                        path.display()
                    ));
                    None
                }
            },
            (None, None, None) => {
                problems.push(format!(
                    "cloudstack.secret_key, secret_key_file (or {ENV_SECRET_KEY}) is required"
                ));
                None
            }
        };
        let mut address = |key: &str, env_key: &str, value: Option<String>, default: &str| {
            let text = env
                .get(env_key)
                .cloned()
                .or(value)
                .unwrap_or(default.to_string());
            match text.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    problems.push(format!("{key} {text:?} is not an address:port"));
                    None
                }
            }
        };
        let api_listen = address(
            "api.listen",
            ENV_API_LISTEN,
            file.api.listen,
            DEFAULT_API_LISTEN,
        );
        let agents_listen = address(
            "agents.listen",
            ENV_AGENTS_LISTEN,
            file.agents.listen,
            DEFAULT_AGENTS_LISTEN,
        );
        let advertise: Vec<String> = match env.get(ENV_AGENTS_ADVERTISE) {
            Some(list) => list.split(',').map(|s| s.trim().to_string()).collect(),
            None => file.agents.advertise.unwrap_or_default(),
        };
        let advertise = if advertise.is_empty() {
            agents_listen
                .map(|a| vec![a.to_string()])
                .unwrap_or_default()
        } else {
            advertise
        };
        if advertise
            .iter()
            .any(|a| a.starts_with("0.0.0.0") || a.starts_with("[::]"))
        {
            problems.push(
                "agents.advertise must name addresses nodes can dial (agents.listen is a \
                 wildcard address: set agents.advertise)"
                    .to_string(),
            );
        }
        let check_source = match env.get(ENV_AGENTS_CHECK_SOURCE).map(String::as_str) {
            None => file.agents.check_enrollment_source.unwrap_or(true),
            Some("true") => true,
            Some("false") => false,
            Some(other) => {
                problems.push(format!(
                    "{ENV_AGENTS_CHECK_SOURCE} {other:?} is not true or false"
                ));
                true
            }
        };
        let ttl = file.nodes.enrollment_ttl_seconds.unwrap_or(3600);
        if ttl < 60 {
            problems.push("nodes.enrollment_ttl_seconds must be at least 60".to_string());
        }
        let max_validity = file
            .signatures
            .max_validity_seconds
            .unwrap_or(DEFAULT_SIGNATURE_VALIDITY.as_secs());
        if !(60..=86_400).contains(&max_validity) {
            problems
                .push("signatures.max_validity_seconds must be between 60 and 86400".to_string());
        }
        let tls_file =
            |env_key: &str, value: Option<PathBuf>| env.get(env_key).map(PathBuf::from).or(value);
        let api_tls = match (
            tls_file(ENV_API_TLS_CERT_FILE, file.api.tls_cert_file),
            tls_file(ENV_API_TLS_KEY_FILE, file.api.tls_key_file),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                problems.push("api.tls_cert_file is set but api.tls_key_file is not".into());
                None
            }
            (None, Some(_)) => {
                problems.push("api.tls_key_file is set but api.tls_cert_file is not".into());
                None
            }
        };
        if let Some(addr) = api_listen
            && api_tls.is_none()
            && !addr.ip().is_loopback()
            && !file.api.allow_plain_http
        {
            problems.push(format!(
                "api.listen {addr} is not a loopback address and the API has no TLS: set \
                 api.tls_cert_file and api.tls_key_file, or api.allow_plain_http = true (for \
                 a TLS-terminating proxy in front)"
            ));
        }
        let mut seconds = |key: &str, value: Option<u64>, default: Duration| match value {
            Some(0) => {
                problems.push(format!("{key} must be at least 1"));
                default
            }
            Some(n) => Duration::from_secs(n),
            None => default,
        };
        let defaults = Limits::default();
        let mut api_limits = Limits {
            header_timeout: seconds(
                "api.header_timeout_seconds",
                file.api.header_timeout_seconds,
                defaults.header_timeout,
            ),
            body_timeout: seconds(
                "api.body_timeout_seconds",
                file.api.body_timeout_seconds,
                defaults.body_timeout,
            ),
            idle_timeout: seconds(
                "api.idle_timeout_seconds",
                file.api.idle_timeout_seconds,
                defaults.idle_timeout,
            ),
            ..defaults
        };
        let job_retention = seconds(
            "jobs.retention_minutes",
            file.jobs.retention_minutes.map(|m| m.saturating_mul(60)),
            DEFAULT_JOB_RETENTION,
        );
        match file.api.body_limit_bytes {
            Some(n) if n < 1024 => {
                problems.push("api.body_limit_bytes must be at least 1024".into());
            }
            Some(n) => api_limits.body_limit = n,
            None => {}
        }
        match file.api.max_connections {
            Some(0) => problems.push("api.max_connections must be at least 1".into()),
            Some(n) => api_limits.max_connections = n,
            None => {}
        }
        let api_forward_per_source = match file.api.forward_per_source_per_second {
            Some(0) => None,
            Some(n) => Some(n),
            None => Some(crate::api::limits::DEFAULT_FORWARD_PER_SOURCE),
        };
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        // Every `None` above pushed a problem, so these hold.
        let (
            Some(endpoint),
            Some(api_key),
            Some(secret_key),
            Some(api_listen),
            Some(agents_listen),
        ) = (endpoint, api_key, secret_key, api_listen, agents_listen)
        else {
            return Err(ConfigError::Invalid(vec![
                "incomplete configuration".into(),
            ]));
        };
        Ok(Config {
            data_dir: env
                .get(ENV_DATA_DIR)
                .map(PathBuf::from)
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            endpoint,
            api_key,
            secret_key,
            api_listen,
            api_tls,
            api_allow_plain_http: file.api.allow_plain_http,
            api_limits,
            api_forward_per_source,
            job_retention,
            agents_listen,
            agents_advertise: advertise,
            agents_check_source: check_source,
            node_template: env
                .get(ENV_NODE_TEMPLATE)
                .cloned()
                .or(file.nodes.template)
                .unwrap_or_else(|| DEFAULT_NODE_TEMPLATE.to_string()),
            pod_cidr: file
                .nodes
                .pod_cidr
                .unwrap_or_else(|| DEFAULT_POD_CIDR.to_string()),
            service_cidr: file
                .nodes
                .service_cidr
                .unwrap_or_else(|| DEFAULT_SERVICE_CIDR.to_string()),
            enrollment_ttl: Duration::from_secs(ttl),
            signatures: SignaturePolicy {
                max_validity: Duration::from_secs(max_validity),
                allow_legacy: file.signatures.allow_legacy.unwrap_or(false),
            },
            crash_ledger: env.get(ENV_CRASH_LEDGER).map(PathBuf::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = Config::from_sources(None, Some("[api]\nlisten = \"nope\"\n"), &HashMap::new())
            .expect_err("invalid");
        let text = err.to_string();
        for needle in ["cloudstack.endpoint", "api_key", "secret_key", "api.listen"] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
    }

    #[test]
    fn the_example_file_is_valid_but_for_its_secret_key_file() {
        let err = Config::from_sources(
            None,
            Some(include_str!("../config.example.toml")),
            &HashMap::new(),
        )
        .expect_err("the example's secret key file does not exist here");
        let ConfigError::Invalid(problems) = err else {
            panic!("not a validation error: {err}");
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("secret_key_file"));
    }

    #[test]
    fn environment_overrides_the_file_and_unknown_keys_are_refused() {
        let file = "[cloudstack]\nendpoint = \"http://a:8080/client/api\"\napi_key = \"k\"\nsecret_key = \"s\"\n";
        let env = HashMap::from([(ENV_API_LISTEN.to_string(), "127.0.0.1:9000".to_string())]);
        let config = Config::from_sources(None, Some(file), &env).expect("valid");
        assert_eq!(config.api_listen.port(), 9000);
        assert_eq!(config.agents_advertise, vec!["127.0.0.1:8091".to_string()]);
        assert!(!format!("{config:?}").contains("\"s\""), "secret in Debug");
        assert!(
            Config::from_sources(None, Some("[api]\nlisen = \"x\"\n"), &HashMap::new()).is_err()
        );
    }

    const KEYS: &str = "[cloudstack]\nendpoint = \"https://a:8443/client/api\"\napi_key = \"k\"\nsecret_key = \"s\"\n";

    #[test]
    fn plain_http_off_loopback_needs_the_explicit_setting() {
        let wildcard = format!("{KEYS}[api]\nlisten = \"0.0.0.0:8090\"\n");
        let err = Config::from_sources(None, Some(&wildcard), &HashMap::new())
            .expect_err("plain HTTP on a wildcard address");
        let text = err.to_string();
        assert!(text.contains("api.allow_plain_http"), "{text}");
        assert!(text.contains("api.tls_cert_file"), "{text}");
        // The environment's address is checked as well.
        let env = HashMap::from([(ENV_API_LISTEN.to_string(), "10.0.0.5:8090".to_string())]);
        assert!(Config::from_sources(None, Some(KEYS), &env).is_err());

        let allowed = format!("{wildcard}allow_plain_http = true\n");
        let config = Config::from_sources(None, Some(&allowed), &HashMap::new()).expect("allowed");
        assert!(config.api_tls.is_none());
        let tls =
            format!("{wildcard}tls_cert_file = \"/etc/c.crt\"\ntls_key_file = \"/etc/c.key\"\n");
        let config = Config::from_sources(None, Some(&tls), &HashMap::new()).expect("TLS");
        assert_eq!(
            config.api_tls,
            Some(TlsFiles {
                cert: "/etc/c.crt".into(),
                key: "/etc/c.key".into()
            })
        );
        // The files may come from the environment too.
        let env = HashMap::from([
            (ENV_API_TLS_CERT_FILE.to_string(), "/e/c.crt".to_string()),
            (ENV_API_TLS_KEY_FILE.to_string(), "/e/c.key".to_string()),
        ]);
        let config = Config::from_sources(None, Some(&wildcard), &env).expect("TLS from env");
        assert_eq!(config.api_tls.expect("TLS").cert, PathBuf::from("/e/c.crt"));
        // Loopback (tests, a local proxy) needs nothing.
        let config = Config::from_sources(None, Some(KEYS), &HashMap::new()).expect("loopback");
        assert_eq!(config.api_limits, Limits::default());
        assert_eq!(config.job_retention, DEFAULT_JOB_RETENTION);
        assert_eq!(
            config.api_forward_per_source,
            Some(crate::api::limits::DEFAULT_FORWARD_PER_SOURCE)
        );
        // 0: a proxy in front limits its clients, the controller does not.
        let proxied = format!("{KEYS}[api]\nforward_per_source_per_second = 0\n");
        let config = Config::from_sources(None, Some(&proxied), &HashMap::new()).expect("valid");
        assert_eq!(config.api_forward_per_source, None);
    }

    #[test]
    fn limits_and_retention_are_read_and_checked() {
        let file = format!(
            "{KEYS}[api]\nheader_timeout_seconds = 5\nbody_timeout_seconds = 7\n\
             idle_timeout_seconds = 9\nbody_limit_bytes = 65536\nmax_connections = 3\n\
             [jobs]\nretention_minutes = 60\n"
        );
        let config = Config::from_sources(None, Some(&file), &HashMap::new()).expect("valid");
        assert_eq!(
            config.api_limits,
            Limits {
                header_timeout: Duration::from_secs(5),
                body_timeout: Duration::from_secs(7),
                idle_timeout: Duration::from_secs(9),
                body_limit: 65536,
                max_connections: 3,
            }
        );
        assert_eq!(config.job_retention, Duration::from_secs(3600));
        let bad = format!(
            "{KEYS}[api]\nheader_timeout_seconds = 0\nmax_connections = 0\n\
             tls_cert_file = \"/c\"\n[jobs]\nretention_minutes = 0\n"
        );
        let text = Config::from_sources(None, Some(&bad), &HashMap::new())
            .expect_err("invalid")
            .to_string();
        for needle in [
            "api.header_timeout_seconds",
            "api.max_connections",
            "api.tls_key_file",
            "jobs.retention_minutes",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
    }
}
