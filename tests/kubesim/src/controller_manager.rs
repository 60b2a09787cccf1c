//! The kube-controller-manager stand-in process: reads the flags kubeadm writes into its static
//! pod manifest, finds the cluster by its CA (`--root-ca-file`, else
//! `--cluster-signing-cert-file`), and runs [`crate::controllers::reconcile`] under the store's
//! lock every [`RECONCILE_PERIOD`] until stopped. It also does the scheduler's work.

use std::net::Ipv4Addr;
use std::time::Duration;

use tracing::{info, warn};

use crate::cluster::{ClusterDir, ClusterError};
use crate::controllers::{Settings, reconcile};
use crate::env::NodeEnv;
use crate::flags::FlagSpec;
use crate::store::Store;

/// How often the controllers run.
pub const RECONCILE_PERIOD: Duration = Duration::from_secs(1);

/// Flags of the real kube-controller-manager that kubeadm writes (all take a value).
const FLAGS: &[&str] = &[
    "allocate-node-cidrs",
    "authentication-kubeconfig",
    "authorization-kubeconfig",
    "bind-address",
    "client-ca-file",
    "cluster-cidr",
    "cluster-name",
    "cluster-signing-cert-file",
    "cluster-signing-key-file",
    "controllers",
    "kubeconfig",
    "leader-elect",
    "node-cidr-mask-size",
    "requestheader-client-ca-file",
    "root-ca-file",
    "service-account-private-key-file",
    "service-cluster-ip-range",
    "use-service-account-credentials",
    "v",
];

/// Why the controller manager cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerManagerError {
    /// Bad command line.
    #[error("{0}")]
    Usage(String),
    /// The CA file could not be read.
    #[error("failed to read the cluster CA {path:?}")]
    ReadCa {
        /// Its host path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The cluster is unknown.
    #[error("failed to find the cluster")]
    Cluster(#[from] ClusterError),
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct ControllerManagerConfig {
    /// The cluster's store.
    pub store: Store,
    /// Controller settings.
    pub settings: Settings,
}

impl ControllerManagerConfig {
    /// Reads the command line (without the program name).
    ///
    /// # Errors
    /// [`ControllerManagerError`].
    pub fn from_args(
        args: &[String],
        env: &NodeEnv,
    ) -> Result<ControllerManagerConfig, ControllerManagerError> {
        let spec: Vec<(&str, bool)> = FLAGS.iter().map(|f| (*f, true)).collect();
        let flags = FlagSpec::new(&spec)
            .parse(args)
            .map_err(ControllerManagerError::Usage)?;
        let ca = flags
            .get("root-ca-file")
            .or(flags.get("cluster-signing-cert-file"))
            .ok_or_else(|| ControllerManagerError::Usage("--root-ca-file is required".into()))?;
        let path = env.host_path(ca);
        let pem = std::fs::read_to_string(&path)
            .map_err(|source| ControllerManagerError::ReadCa { path, source })?;
        let cluster = ClusterDir::for_ca_pem(&env.cluster_base, &pem)?;
        let cluster_cidr = if flags.get("allocate-node-cidrs") == Some("true") {
            let cidr = flags.get("cluster-cidr").ok_or_else(|| {
                ControllerManagerError::Usage("--allocate-node-cidrs needs --cluster-cidr".into())
            })?;
            let parsed = cidr.split_once('/').and_then(|(ip, prefix)| {
                Some((ip.parse::<Ipv4Addr>().ok()?, prefix.parse::<u8>().ok()?))
            });
            Some(parsed.ok_or_else(|| {
                ControllerManagerError::Usage(format!("invalid --cluster-cidr {cidr:?}"))
            })?)
        } else {
            None
        };
        Ok(ControllerManagerConfig {
            store: cluster.store(),
            settings: Settings { cluster_cidr },
        })
    }
}

/// Runs the controllers until `shutdown`.
pub async fn run(config: ControllerManagerConfig, shutdown: impl std::future::Future<Output = ()>) {
    info!("controllers starting");
    tokio::pin!(shutdown);
    loop {
        let store = config.store.clone();
        let settings = config.settings.clone();
        let pass = tokio::task::spawn_blocking(move || {
            store.update(|objects| reconcile(objects, crate::clock::now_unix(), &settings))
        })
        .await;
        match pass {
            Ok(Ok(())) => {}
            Ok(Err(err)) => warn!(error = %crate::daemon::error_chain(&err), "reconcile failed"),
            Err(err) => warn!(%err, "reconcile panicked"),
        }
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = tokio::time::sleep(RECONCILE_PERIOD) => {}
        }
    }
    info!("controllers stopped");
}
