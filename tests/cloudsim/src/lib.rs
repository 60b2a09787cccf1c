//! `cloudsim`: a CloudStack management-server simulator for tests and the demo.
//!
//! It serves the CloudStack API on `/client/api` (GET or form POST, `response=json`) with
//! request signatures verified as CloudStack verifies them ([`signing`]), CloudStack's response
//! and error shapes, pagination rules, async jobs that complete in the background, accounts with
//! ownership checks, and the commands a Kubernetes controller needs (cks-reference §7.3).
//!
//! State lives in memory and, with a state directory, in `state.json` (written atomically after
//! every change), so a restart keeps it; jobs caught pending by a restart end failed, as on a
//! real management server.
//!
//! Faults are injected through [`faults::FaultConfig`] (at start, via `POST /sim/faults`, or
//! [`SimHandle::set_faults`]): per-command error rates, latency, lost responses, failing jobs,
//! capacity exhaustion, VMs that never boot; deterministic for a seed; every injected fault is
//! logged.
//!
//! Test hooks beyond the API: an operator's load balancer outside CloudStack
//! ([`SimHandle::add_external_lb`], `POST /sim/external-lb`, see [`external_lb`]) and running a
//! program inside a node ([`SimHandle::node_exec`]).
//!
//! VMs become nodes through [`node::NodeRunner`]: records only by default, or, with
//! [`SimConfig::nodes`], process trees running the real `cks-agent` with the VM's userdata, in a
//! network namespace per VM with a bridge per guest network ([`nodes`]). Public IPs are addresses
//! of a loopback range ([`store::DEFAULT_PUBLIC_CIDR`]); their port-forwarding and load-balancer
//! rules are served by userspace forwarders ([`forwarding`], [`nodes::forward`]), so what a
//! controller configures is what its clients use.
//!
//! After a restart with a state directory, VMs that were Running are started again (their
//! processes died with the simulator; on a real cloud they would have kept running through a
//! management-server restart). A VM that cannot be started again is marked Stopped.

pub mod cidr;
pub mod commands;
pub mod download;
pub mod error;
pub mod external_lb;
pub mod faults;
pub mod forwarding;
pub mod jobs;
pub mod model;
pub mod node;
pub mod nodes;
pub mod signing;
pub mod sshkey;
pub mod store;

mod api;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::faults::{FaultConfig, FaultEvent, Faults};
use crate::model::{Db, VmState};
use crate::node::{NodeError, NodeInfo, NodeRunner, NoopRunner};
use crate::nodes::{NodesConfig, NodesError, ProcessRunner};
use crate::store::{AdminKeys, StoreError};

/// How long async jobs take by default in the binary.
pub const DEFAULT_JOB_DURATION: Duration = Duration::from_millis(1000);

/// Simulator configuration.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to listen on (use port 0 in tests).
    pub listen: SocketAddr,
    /// Where `state.json` and downloaded ISOs live; `None` keeps everything in memory.
    pub state_dir: Option<PathBuf>,
    /// The admin's API key; generated when `None` (and no state keeps one).
    pub api_key: Option<String>,
    /// The admin's secret key; generated when `None` (and no state keeps one).
    pub secret_key: Option<String>,
    /// How long each async job runs before it completes.
    pub job_duration: Duration,
    /// Faults active from the start.
    pub faults: FaultConfig,
    /// The zone's public IP range when the state is seeded (default
    /// [`store::DEFAULT_PUBLIC_CIDR`]). Must be inside 127.0.0.0/8 when nodes run; two
    /// simulators on one host need distinct ranges.
    pub public_cidr: Option<String>,
    /// Run VMs as real nodes (needs `state_dir`); `None` keeps VMs as records.
    pub nodes: Option<NodesConfig>,
}

// === impl SimConfig ===

impl SimConfig {
    /// A configuration for tests: `127.0.0.1:0`, in memory, 20 ms jobs, no faults.
    pub fn for_tests() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_dir: None,
            api_key: None,
            secret_key: None,
            job_duration: Duration::from_millis(20),
            faults: FaultConfig::default(),
            public_cidr: None,
            nodes: None,
        }
    }
}

/// Failure to start the simulator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state could not be loaded.
    #[error("failed to load simulator state")]
    LoadState(#[source] StoreError),
    /// The state directory could not be created.
    #[error("failed to create state directory {path:?}")]
    CreateStateDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The public range is not a CIDR, or not a loopback one while nodes run.
    #[error("invalid public range {0:?}: expected a.b.c.d/n, inside 127.0.0.0/8 when nodes run")]
    PublicCidr(String),
    /// Real nodes were asked for without a state directory.
    #[error("running nodes needs a state directory (their disks and ISOs live there)")]
    NodesNeedStateDir,
    /// The node runner could not start.
    #[error("failed to start the node runner")]
    Nodes(#[source] NodesError),
    /// The listen address could not be bound.
    #[error("failed to listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// An API key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// User id.
    pub user_id: String,
    /// API key.
    pub api_key: String,
    /// Secret key.
    pub secret_key: String,
}

/// Shared state behind the HTTP handlers and background tasks.
pub(crate) struct Inner {
    pub(crate) db: Mutex<Db>,
    pub(crate) faults: Mutex<Faults>,
    pub(crate) runner: Arc<dyn NodeRunner>,
    pub(crate) config: SimConfig,
    /// Set at shutdown: background tasks stop touching state and disk.
    pub(crate) closed: AtomicBool,
    /// Authenticated API calls per command, for tests that count what a client asks.
    pub(crate) calls: Mutex<BTreeMap<String, u64>>,
}

// === impl Inner ===

impl Inner {
    pub(crate) fn db(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn calls(&self) -> MutexGuard<'_, BTreeMap<String, u64>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn count_call(&self, command: &str) {
        *self.calls().entry(command.to_owned()).or_default() += 1;
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// After a change of the state: saves it and hands the network rules to the node runner.
    pub(crate) fn commit(&self, db: &Db) {
        self.persist(db);
        if !self.is_closed() {
            self.runner.update_network(&forwarding::table(db));
        }
    }

    /// Saves the state when there is a state directory; a failure is logged, not fatal.
    pub(crate) fn persist(&self, db: &Db) {
        if self.is_closed() {
            return;
        }
        if let Some(dir) = &self.config.state_dir
            && let Err(err) = store::save(dir, db)
        {
            tracing::error!(error = %err, "failed to save state; check the state directory");
        }
    }
}

/// Starts simulators.
#[derive(Debug)]
pub struct Simulator;

// === impl Simulator ===

impl Simulator {
    /// Loads (or seeds) the state, binds the listener and serves in the background. VMs are
    /// records ([`NoopRunner`]) unless [`SimConfig::nodes`] asks for real nodes
    /// ([`ProcessRunner`]).
    ///
    /// # Errors
    /// See [`StartError`].
    pub async fn start(config: SimConfig) -> Result<SimHandle, StartError> {
        let runner: Arc<dyn NodeRunner> = match &config.nodes {
            None => Arc::new(NoopRunner),
            Some(nodes) => {
                let dir = config
                    .state_dir
                    .as_ref()
                    .ok_or(StartError::NodesNeedStateDir)?;
                let public = config
                    .public_cidr
                    .as_deref()
                    .unwrap_or(store::DEFAULT_PUBLIC_CIDR);
                if !cidr::Cidr::parse(public).is_ok_and(|c| c.network().is_loopback()) {
                    return Err(StartError::PublicCidr(public.to_owned()));
                }
                let (nodes, dir) = (nodes.clone(), dir.clone());
                let runner = tokio::task::spawn_blocking(move || ProcessRunner::start(nodes, &dir))
                    .await
                    .map_err(|e| StartError::Nodes(NodesError::Runtime(std::io::Error::other(e))))?
                    .map_err(StartError::Nodes)?;
                Arc::new(runner)
            }
        };
        Self::start_with_runner(config, runner).await
    }

    /// Like [`Simulator::start`], with a node runner.
    ///
    /// # Errors
    /// See [`StartError`].
    pub async fn start_with_runner(
        config: SimConfig,
        runner: Arc<dyn NodeRunner>,
    ) -> Result<SimHandle, StartError> {
        if let Some(dir) = &config.state_dir {
            std::fs::create_dir_all(dir).map_err(|source| StartError::CreateStateDir {
                path: dir.clone(),
                source,
            })?;
        }
        if let Some(public) = &config.public_cidr
            && cidr::Cidr::parse(public).is_err()
        {
            return Err(StartError::PublicCidr(public.clone()));
        }
        let keys = AdminKeys {
            api_key: config.api_key.clone(),
            secret_key: config.secret_key.clone(),
            public_cidr: config.public_cidr.clone(),
        };
        let db = store::load_or_seed(config.state_dir.as_deref(), &keys)
            .map_err(StartError::LoadState)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let keys_of = |db: &Db, account: &str| {
            let account_id = db
                .accounts
                .iter()
                .find(|a| a.name == account)
                .map(|a| a.id.clone())
                .unwrap_or_default();
            db.users
                .iter()
                .find(|u| u.account_id == account_id)
                .map(|u| Keys {
                    user_id: u.id.clone(),
                    api_key: u.api_key.clone(),
                    secret_key: u.secret_key.clone(),
                })
                .unwrap_or(Keys {
                    user_id: String::new(),
                    api_key: String::new(),
                    secret_key: String::new(),
                })
        };
        let admin = keys_of(&db, store::ADMIN_ACCOUNT);
        let user = keys_of(&db, store::USER_ACCOUNT);
        let mut faults = Faults::default();
        faults.configure(config.faults.clone());
        let inner = Arc::new(Inner {
            db: Mutex::new(db),
            faults: Mutex::new(faults),
            runner,
            config,
            closed: AtomicBool::new(false),
            calls: Mutex::new(BTreeMap::new()),
        });
        restart_running_vms(&inner);
        let (tx, rx) = oneshot::channel::<()>();
        let app = api::router(inner.clone());
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "simulator server failed");
            }
        });
        tracing::info!(%addr, "cloudsim listening");
        Ok(SimHandle {
            addr,
            admin,
            user,
            inner,
            shutdown: Some(tx),
            task: Some(task),
        })
    }
}

/// Starts the nodes of the VMs a previous run left Running; those that cannot start end
/// Stopped.
fn restart_running_vms(inner: &Inner) {
    let mut db = inner.db();
    let running: Vec<String> = db
        .vms
        .iter()
        .filter(|vm| vm.state == VmState::Running)
        .map(|vm| vm.id.clone())
        .collect();
    for vm_id in running {
        let started = match jobs::node_spec(&db, &vm_id) {
            Some(spec) => inner.runner.start(&spec),
            None => continue,
        };
        let Some(vm) = db.vms.iter_mut().find(|v| v.id == vm_id) else {
            continue;
        };
        match started {
            Ok(network) => vm.node_network = network.label().map(str::to_owned),
            Err(err) => {
                tracing::error!(
                    vm = %vm_id,
                    error = %nodes::error_chain(&err),
                    "cannot start a VM that was running before the restart; marking it Stopped"
                );
                vm.state = VmState::Stopped;
            }
        }
    }
    inner.commit(&db);
}

/// Validates and stores an external load balancer, then serves the new table.
pub(crate) fn add_external_lb(
    inner: &Inner,
    request: &external_lb::ExternalLbRequest,
) -> Result<(), external_lb::ExternalLbError> {
    let mut db = inner.db();
    let lb = external_lb::validate(&db, request)?;
    tracing::info!(
        ip = %lb.ip,
        port = lb.port,
        network = %lb.network_id,
        targets = ?lb.targets,
        target_port = lb.target_port,
        "external load balancer added"
    );
    external_lb::upsert(&mut db, lb);
    inner.commit(&db);
    Ok(())
}

/// Removes an external load balancer and serves the new table.
pub(crate) fn remove_external_lb(inner: &Inner, address: external_lb::ExternalLbAddress) -> bool {
    let mut db = inner.db();
    let removed = external_lb::remove(&mut db, address);
    if removed {
        tracing::info!(ip = %address.ip, port = address.port, "external load balancer removed");
        inner.commit(&db);
    }
    removed
}

/// A running simulator; dropping it stops it, its nodes and its forwarders.
pub struct SimHandle {
    addr: SocketAddr,
    admin: Keys,
    user: Keys,
    inner: Arc<Inner>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

// === impl SimHandle ===

impl SimHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API endpoint URL, `http://addr/client/api`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/client/api", self.addr)
    }

    /// The root admin's keys.
    pub fn admin_keys(&self) -> &Keys {
        &self.admin
    }

    /// The seeded user account's keys.
    pub fn user_keys(&self) -> &Keys {
        &self.user
    }

    /// Replaces the fault configuration (restarting its seeded generator).
    pub fn set_faults(&self, config: FaultConfig) {
        self.inner.faults().configure(config);
    }

    /// Faults injected since the configuration was last set.
    pub fn fault_log(&self) -> Vec<FaultEvent> {
        self.inner.faults().log().to_vec()
    }

    /// Authenticated API calls per command (as the client spelled it) since the start or the
    /// last [`reset_call_counts`](Self::reset_call_counts).
    pub fn call_counts(&self) -> BTreeMap<String, u64> {
        self.inner.calls().clone()
    }

    /// Starts counting calls afresh.
    pub fn reset_call_counts(&self) {
        self.inner.calls().clear();
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> Db {
        self.inner.db().clone()
    }

    /// Adds an operator's load balancer outside CloudStack (replacing one on the same
    /// `ip:port`): `ip:port` is served on the host and inside every node's namespace, and each
    /// connection goes, round-robin, to the next running target's address on the targets'
    /// network (the first target's default network; every target needs a NIC there), port
    /// `target_port`. Targets that are not running are skipped; with none running, connections
    /// are reset. `ip` must be in 127.0.0.0/8 and outside the zone's public range. Served only
    /// with namespaced nodes, like public IPs. The load balancer is kept in the state, so it
    /// survives a restart with the same state directory.
    ///
    /// # Errors
    /// [`external_lb::ExternalLbError`] says what is wrong with the request.
    pub fn add_external_lb(
        &self,
        ip: std::net::Ipv4Addr,
        port: u16,
        targets: Vec<String>,
        target_port: u16,
    ) -> Result<(), external_lb::ExternalLbError> {
        add_external_lb(
            &self.inner,
            &external_lb::ExternalLbRequest {
                ip,
                port,
                targets,
                target_port,
            },
        )
    }

    /// Removes the external load balancer on `ip:port`; false when there was none.
    pub fn remove_external_lb(&self, ip: std::net::Ipv4Addr, port: u16) -> bool {
        remove_external_lb(&self.inner, external_lb::ExternalLbAddress { ip, port })
    }

    /// What the node runner knows about VM `vm_id`'s node (root, logs, namespace, pids);
    /// `None` with records-only VMs or for a VM that never ran.
    pub fn node(&self, vm_id: &str) -> Option<NodeInfo> {
        self.inner.runner.inspect(vm_id)
    }

    /// Runs `program args` to its end inside VM `vm_id`'s running node, with the node's
    /// environment and network namespace (see [`NodeRunner::exec`]); at most `timeout`.
    ///
    /// # Errors
    /// The node does not run, or the program could not run or ran out of time.
    pub async fn node_exec(
        &self,
        vm_id: &str,
        program: impl Into<PathBuf>,
        args: &[&str],
        timeout: Duration,
    ) -> Result<std::process::Output, NodeError> {
        let runner = self.inner.runner.clone();
        let (vm, program) = (vm_id.to_owned(), program.into());
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || runner.exec(&vm, &program, &args, timeout))
            .await
            .map_err(|e| NodeError::Io {
                vm_id: vm_id.to_owned(),
                action: "run a command",
                source: std::io::Error::other(e),
            })?
    }

    /// Stops serving, waits for the server task to end, then stops every node.
    pub async fn shutdown(mut self) {
        self.stop();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let runner = self.inner.runner.clone();
        let _ = tokio::task::spawn_blocking(move || runner.shutdown()).await;
    }

    fn stop(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop();
        if let Some(task) = self.task.take() {
            task.abort();
        }
        // Blocks until every node process is gone (bounded by the runner's stop grace).
        self.inner.runner.shutdown();
    }
}
