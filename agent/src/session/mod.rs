//! `cks-agent run`: the node's side of contract 2.
//!
//! Three things run side by side:
//! * the **bundle task** finds, verifies and installs the bundle (it needs no controller and
//!   never waits for one), reporting each step;
//! * the **command worker** executes the controller's commands one at a time, once the bundle is
//!   installed, and journals each result ([`crate::commands::ResultJournal`]) before handing it
//!   to the stream;
//! * the **session** enrolls once (token + CSR, CA pinned by fingerprint), then keeps one mTLS
//!   stream open: `Hello` with the node's whole state first, then progress, results and
//!   heartbeats out, commands in. When the stream breaks it reconnects with jittered
//!   exponential backoff; the journal makes every command id run once and be answered again
//!   on request. Once welcomed, a session whose certificate has less than a third of its
//!   lifetime left asks for a new one over the stream; the renewed identity is stored as a
//!   whole and used from the next connection.
//!
//! Nothing on the session's path waits on a tool: the heartbeat sends the node's readiness as
//! last seen by a probe task of its own (kubectl, bounded), and each command runs under the
//! deadline its `timeout_seconds` gives ([`crate::process`]): a hung kubeadm, kubectl or ctr is
//! killed at it and the command fails, saying it timed out.

pub mod identity;
pub mod tls;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cks_proto::agent::agent_message::Kind as AgentKind;
use cks_proto::agent::controller_message::Kind as ControllerKind;
use cks_proto::agent::node_session_client::NodeSessionClient;
use cks_proto::agent::{
    AgentMessage, BundleInfo, CertificateRenewed, Command, CommandResult, Heartbeat, Hello,
    OsFacts, Progress, RenewCertificate, StepState, StepStatus,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::commands::{Executor, ResultJournal, command_name};
use crate::config::Config;
use crate::images::ImageStore;
use crate::journal::Journal;
use crate::{AgentError, bundle::discover::DiscoverError};

/// First wait before reconnecting.
pub const RECONNECT_INITIAL: Duration = Duration::from_millis(500);
/// Longest wait between reconnects.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Heartbeat interval until the controller's `Welcome` says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Wait between two looks for a bundle that is not attached yet.
const BUNDLE_RETRY: Duration = Duration::from_secs(5);

/// `run` cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No `[controller]` table, or it lacks what enrollment needs.
    #[error("the configuration has no usable [controller] table: {0}")]
    NotConfigured(&'static str),
    /// Identity storage or a refused enrollment.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
}

/// Where the bundle installation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallPhase {
    /// Looking for, verifying or installing the bundle.
    Pending,
    /// Installed; commands may run.
    Done,
    /// Refused or failed for good; commands fail with this text.
    Failed(String),
}

/// State the bundle task, the worker and the session share.
struct Shared {
    node_name: String,
    bundle: Mutex<BundleInfo>,
    steps: Mutex<Vec<StepState>>,
    progress: mpsc::UnboundedSender<Progress>,
    phase: watch::Sender<InstallPhase>,
    running: Mutex<HashSet<String>>,
    /// The kubelet's view of this node, as the readiness probe last saw it.
    node_ready: AtomicBool,
}

impl Shared {
    fn record_step(&self, step: &str, status: StepStatus, detail: &str) {
        let state = StepState {
            step: step.to_string(),
            status: status as i32,
            detail: detail.to_string(),
            at_unix: now_unix(),
        };
        {
            let mut steps = lock(&self.steps);
            steps.retain(|s| s.step != step);
            steps.push(state.clone());
        }
        let _ = self.progress.send(Progress {
            step: Some(state),
            fraction: -1.0,
            bundle: Some(lock(&self.bundle).clone()),
        });
    }
}

/// Runs the agent until the process is stopped.
///
/// # Errors
/// Only configuration problems and a refused enrollment (nothing to retry); everything else is
/// retried.
pub async fn run(
    config: Config,
    images: Arc<dyn ImageStore + Send + Sync>,
) -> Result<(), SessionError> {
    let controller = config
        .controller
        .clone()
        .ok_or(SessionError::NotConfigured("missing"))?;
    if controller.addresses.is_empty() {
        return Err(SessionError::NotConfigured("addresses is empty"));
    }
    let fingerprint = controller
        .ca_fingerprint
        .clone()
        .ok_or(SessionError::NotConfigured("ca_fingerprint is missing"))?;
    tls::parse_fingerprint(&fingerprint)
        .map_err(|_| SessionError::NotConfigured("ca_fingerprint is not sha256:<hex>"))?;
    let node_name = match &controller.node_name {
        Some(name) => name.clone(),
        None => hostname().ok_or(SessionError::NotConfigured("node_name is missing"))?,
    };
    let data_dir = config.host_path(&config.data_dir);

    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
    let (phase_tx, phase_rx) = watch::channel(InstallPhase::Pending);
    let shared = Arc::new(Shared {
        node_name: node_name.clone(),
        bundle: Mutex::new(BundleInfo::default()),
        steps: Mutex::new(journal_steps(&data_dir)),
        progress: progress_tx,
        phase: phase_tx,
        running: Mutex::new(HashSet::new()),
        node_ready: AtomicBool::new(false),
    });

    // The bundle task: independent of the controller.
    {
        let shared = shared.clone();
        let config = config.clone();
        let images = images.clone();
        tokio::task::spawn_blocking(move || install_bundle(&config, images.as_ref(), &shared));
    }

    // The command worker.
    let results = ResultJournal::new(&data_dir);
    let executor = Executor::new(config.clone(), node_name.clone(), images);
    tokio::spawn(probe_readiness(executor.clone(), shared.clone()));
    let (command_tx, command_rx) = mpsc::unbounded_channel::<Command>();
    let (result_tx, mut result_rx) = mpsc::unbounded_channel::<CommandResult>();
    tokio::spawn(command_worker(
        executor.clone(),
        results.clone(),
        shared.clone(),
        phase_rx,
        command_rx,
        result_tx,
    ));

    // Identity: enrolled before, or enroll now (retrying while the controller is away).
    let mut backoff = Backoff::new();
    let identity = loop {
        if let Some(identity) = identity::load(&data_dir)? {
            break identity;
        }
        let token = controller
            .enrollment_token
            .as_deref()
            .ok_or(identity::IdentityError::NoToken)?;
        match identity::enroll(
            &data_dir,
            &controller.addresses,
            &fingerprint,
            token,
            &node_name,
        )
        .await
        {
            Ok(identity) => break identity,
            Err(err) if err.is_transient() => {
                let wait = backoff.next_wait();
                warn!(error = %err, retry_in = ?wait, "enrollment failed; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(err) => return Err(err.into()),
        }
    };
    let mut session = Stream {
        shared,
        results,
        command_tx,
        identity,
        data_dir,
        renewal: None,
    };
    let mut backoff = Backoff::new();
    loop {
        for address in &controller.addresses {
            // Built per connection: a renewal changes the identity.
            let tls_config = tls::session_config(
                &session.identity.ca_pem,
                &session.identity.cert_pem,
                &session.identity.key_der,
            )
            .map_err(identity::IdentityError::from)?;
            match session
                .run_once(address, tls_config, &mut result_rx, &mut progress_rx)
                .await
            {
                Ok(served) => {
                    info!(%address, "stream to the controller ended");
                    if served {
                        backoff = Backoff::new();
                    }
                }
                Err(err) => warn!(%address, error = %err, "controller stream failed"),
            }
        }
        let wait = backoff.next_wait();
        debug!(retry_in = ?wait, "reconnecting to the controller");
        tokio::time::sleep(wait).await;
    }
}

/// One stream's worth of session state.
struct Stream {
    shared: Arc<Shared>,
    results: ResultJournal,
    command_tx: mpsc::UnboundedSender<Command>,
    /// The identity streams are opened with.
    identity: identity::NodeIdentity,
    data_dir: PathBuf,
    /// The new key of a renewal asked on the current stream.
    renewal: Option<rcgen::KeyPair>,
}

impl Stream {
    /// Connects, says hello, serves until the stream ends. `Ok(true)` when the controller
    /// welcomed us (the connection was good; reset the backoff).
    async fn run_once(
        &mut self,
        address: &str,
        tls_config: Arc<rustls::ClientConfig>,
        result_rx: &mut mpsc::UnboundedReceiver<CommandResult>,
        progress_rx: &mut mpsc::UnboundedReceiver<Progress>,
    ) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
        let channel = tls::connect(address, tls_config).await?;
        // What queued up while disconnected is in the journal and in Hello.
        while result_rx.try_recv().is_ok() {}
        while progress_rx.try_recv().is_ok() {}
        let (tx, rx) = mpsc::channel::<AgentMessage>(64);
        tx.send(message(AgentKind::Hello(self.hello()))).await?;
        let mut inbound = NodeSessionClient::new(channel)
            .stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut welcomed = false;
        self.renewal = None;
        let mut heartbeat = tokio::time::interval(DEFAULT_HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                incoming = inbound.message() => {
                    let Some(incoming) = incoming? else { return Ok(welcomed) };
                    match incoming.kind {
                        Some(ControllerKind::Welcome(welcome)) => {
                            welcomed = true;
                            let every = Duration::from_secs(u64::from(welcome.heartbeat_interval_seconds.max(1)));
                            heartbeat = tokio::time::interval(every);
                            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            info!(cluster = welcome.cluster_id, heartbeat = ?every, "connected to the controller");
                            self.ask_renewal_if_due(&tx).await?;
                        }
                        Some(ControllerKind::CertificateRenewed(renewed)) => self.renewed(renewed),
                        Some(ControllerKind::Command(command)) => self.accept(command, &tx).await?,
                        Some(ControllerKind::ResendResults(resend)) => {
                            for id in resend.command_ids {
                                match self.results.get(&id) {
                                    Some(result) => tx.send(message(AgentKind::Result(result))).await?,
                                    None => debug!(command_id = id, "asked to resend a result this node does not hold"),
                                }
                            }
                        }
                        None => {}
                    }
                }
                Some(result) = result_rx.recv() => {
                    tx.send(message(AgentKind::Result(result))).await?;
                }
                Some(progress) = progress_rx.recv() => {
                    tx.send(message(AgentKind::Progress(progress))).await?;
                }
                _ = heartbeat.tick() => {
                    // Never waits on kubectl: the probe task keeps this up to date.
                    let node_ready = self.shared.node_ready.load(Ordering::Relaxed);
                    let beat = Heartbeat { at_unix: now_unix(), node_ready };
                    tx.send(message(AgentKind::Heartbeat(beat))).await?;
                }
            }
        }
    }

    /// A command arrived: answer from the journal, ignore a duplicate of one running, or queue.
    async fn accept(
        &self,
        command: Command,
        tx: &mpsc::Sender<AgentMessage>,
    ) -> Result<(), mpsc::error::SendError<AgentMessage>> {
        if let Some(result) = self.results.get(&command.command_id) {
            debug!(
                command_id = command.command_id,
                "command already done; re-sending its result"
            );
            return tx.send(message(AgentKind::Result(result))).await;
        }
        if !lock(&self.shared.running).insert(command.command_id.clone()) {
            debug!(
                command_id = command.command_id,
                "command already running; its result will follow"
            );
            return Ok(());
        }
        info!(
            command_id = command.command_id,
            command = command_name(&command),
            "command received"
        );
        let _ = self.command_tx.send(command);
        Ok(())
    }

    /// Asks for a new certificate when less than a third of this one's lifetime is left (once
    /// per stream).
    async fn ask_renewal_if_due(
        &mut self,
        tx: &mpsc::Sender<AgentMessage>,
    ) -> Result<(), mpsc::error::SendError<AgentMessage>> {
        if self.renewal.is_some() {
            return Ok(());
        }
        match identity::renewal_due(&self.identity.cert_pem, SystemTime::now()) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(err) => {
                warn!(error = %identity::error_chain(&err), "cannot read the node certificate's validity");
                return Ok(());
            }
        }
        let (key, csr_pem) = match identity::renewal_request(&self.shared.node_name) {
            Ok(request) => request,
            Err(err) => {
                warn!(error = %identity::error_chain(&err), "cannot make a key to renew the node certificate");
                return Ok(());
            }
        };
        info!("node certificate past two thirds of its lifetime; asking for a new one");
        self.renewal = Some(key);
        tx.send(message(AgentKind::RenewCertificate(RenewCertificate {
            csr_pem,
        })))
        .await
    }

    /// The controller answered a renewal: store the new identity, use it from the next
    /// connection.
    fn renewed(&mut self, renewed: CertificateRenewed) {
        let Some(key) = self.renewal.take() else {
            debug!("a renewed certificate nobody asked for on this stream; ignored");
            return;
        };
        if !renewed.error.is_empty() || renewed.certificate_pem.is_empty() {
            warn!(
                error = renewed.error,
                "the controller refused to renew the node certificate"
            );
            return;
        }
        let identity = identity::NodeIdentity {
            key_der: key.serialize_der(),
            cert_pem: renewed.certificate_pem,
            ca_pem: if renewed.ca_pem.is_empty() {
                self.identity.ca_pem.clone()
            } else {
                renewed.ca_pem
            },
            facts: self.identity.facts.clone(),
        };
        if let Err(err) =
            tls::session_config(&identity.ca_pem, &identity.cert_pem, &identity.key_der)
        {
            warn!(error = %err, "the renewed certificate is unusable; keeping the old one");
            return;
        }
        match identity::store_renewed(&self.data_dir, &identity) {
            Ok(()) => {
                info!("node certificate renewed; used from the next connection");
                self.identity = identity;
            }
            Err(err) => {
                warn!(error = %identity::error_chain(&err), "cannot store the renewed certificate; keeping the old one");
            }
        }
    }

    fn hello(&self) -> Hello {
        Hello {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            node_name: self.shared.node_name.clone(),
            os: Some(os_facts()),
            bundle: Some(lock(&self.shared.bundle).clone()),
            steps: lock(&self.shared.steps).clone(),
            finished_command_ids: self.results.ids(),
        }
    }
}

async fn command_worker(
    executor: Executor,
    results: ResultJournal,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<InstallPhase>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    result_tx: mpsc::UnboundedSender<CommandResult>,
) {
    while let Some(command) = commands.recv().await {
        let id = command.command_id.clone();
        // The controller stops waiting after `timeout_seconds`: so does the agent.
        let limit = (command.timeout_seconds > 0)
            .then(|| Duration::from_secs(u64::from(command.timeout_seconds)));
        let deadline = limit.map(|limit| tokio::time::Instant::now() + limit);
        let waited = match deadline {
            Some(deadline) => {
                tokio::time::timeout_at(deadline, phase.wait_for(|p| *p != InstallPhase::Pending))
                    .await
                    .map(|r| r.map(|p| p.clone()))
            }
            None => Ok(phase
                .wait_for(|p| *p != InstallPhase::Pending)
                .await
                .map(|p| p.clone())),
        };
        let result = match waited {
            Err(_) => failed(
                &id,
                &format!(
                    "timed out after {}s waiting for the bundle install",
                    command.timeout_seconds
                ),
            ),
            Ok(Ok(InstallPhase::Done)) => {
                let executor = executor.clone();
                let running = command.clone();
                let std_deadline = deadline.map(tokio::time::Instant::into_std);
                let mut result = tokio::task::spawn_blocking(move || match std_deadline {
                    Some(deadline) => {
                        crate::process::with_deadline(deadline, || executor.execute(&running))
                    }
                    None => executor.execute(&running),
                })
                .await
                .unwrap_or_else(|err| failed(&id, &format!("command crashed: {err}")));
                if !result.ok && deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    result.error = format!(
                        "timed out after {}s and was cut: {}",
                        command.timeout_seconds, result.error
                    );
                }
                result
            }
            Ok(Ok(InstallPhase::Failed(why))) => {
                failed(&id, &format!("the bundle is not installed: {why}"))
            }
            Ok(_) => failed(&id, "the agent is shutting down"),
        };
        if let Err(err) = results.put(&result) {
            // Without the journal the result could be lost with the stream; send it anyway.
            warn!(command_id = id, error = %err, "cannot journal the command result");
        }
        lock(&shared.running).remove(&id);
        let _ = result_tx.send(result);
    }
}

/// Keeps `shared.node_ready` up to date from kubectl, beside the session (a hung kubectl delays
/// only this probe, bounded by its own limit, never a heartbeat).
async fn probe_readiness(executor: Executor, shared: Arc<Shared>) {
    loop {
        let probe = executor.clone();
        let ready = tokio::task::spawn_blocking(move || probe.node_ready())
            .await
            .unwrap_or(false);
        shared.node_ready.store(ready, Ordering::Relaxed);
        tokio::time::sleep(DEFAULT_HEARTBEAT).await;
    }
}

fn failed(command_id: &str, error: &str) -> CommandResult {
    CommandResult {
        command_id: command_id.to_string(),
        ok: false,
        error: error.to_string(),
        payload: None,
    }
}

/// The bundle task: find (waiting as long as it takes), verify, install; report every step.
fn install_bundle(config: &Config, images: &dyn ImageStore, shared: &Shared) {
    // A reboot after the install, with the ISO detached since: the node is ready as it is.
    // (An ISO attached now is looked at as usual: the same one is skipped by the journal, a
    // new one installed.)
    if !crate::bundle_present(config) {
        match crate::completed_install(config) {
            Ok(Some(outcome)) => {
                info!(
                    manifest_sha256 = %outcome.manifest_sha256,
                    version = %outcome.kubernetes_version,
                    "bundle installed at an earlier boot and no ISO attached: ready"
                );
                mark_installed(shared, outcome, "installed at an earlier boot");
                return;
            }
            Ok(None) => {}
            Err(err) => warn!(error = %identity::error_chain(&err), "cannot read the journal"),
        }
    }
    let mut waiting_logged = false;
    loop {
        let mut sleep = std::thread::sleep;
        let bundle = match crate::open_bundle(config, &mut sleep) {
            Ok(bundle) => bundle,
            Err(AgentError::Discover(DiscoverError::NotFound { .. })) => {
                if !waiting_logged {
                    shared.record_step(
                        "bundle.find",
                        StepStatus::Waiting,
                        "no Kubernetes ISO attached yet",
                    );
                    waiting_logged = true;
                }
                std::thread::sleep(BUNDLE_RETRY);
                continue;
            }
            Err(err) => {
                let why = identity::error_chain(&err);
                shared.record_step("bundle.find", StepStatus::Failed, &why);
                let _ = shared.phase.send(InstallPhase::Failed(why));
                return;
            }
        };
        *lock(&shared.bundle) = BundleInfo {
            found: true,
            source: bundle.location().describe(),
            ..BundleInfo::default()
        };
        shared.record_step(
            "bundle.find",
            StepStatus::Done,
            &bundle.location().describe(),
        );
        let report = |step: &'static str, detail: &str| {
            shared.record_step(step, StepStatus::Done, detail);
        };
        match crate::install_reporting(&bundle, config, images, &report) {
            Ok(outcome) => mark_installed(shared, outcome, "ready for commands"),
            Err(err) => {
                let why = identity::error_chain(&err);
                shared.record_step("bundle.install", StepStatus::Failed, &why);
                let _ = shared.phase.send(InstallPhase::Failed(why));
            }
        }
        return;
    }
}

/// The bundle is installed: commands may run.
fn mark_installed(shared: &Shared, outcome: crate::InstallOutcome, detail: &str) {
    let mut info = lock(&shared.bundle);
    info.kubernetes_version = outcome.kubernetes_version;
    info.manifest_sha256 = outcome.manifest_sha256;
    info.verified = true;
    info.arch = cks_proto::ids::Arch::host()
        .map(|a| a.to_string())
        .unwrap_or_default();
    drop(info);
    shared.record_step("bundle.installed", StepStatus::Done, detail);
    let _ = shared.phase.send(InstallPhase::Done);
}

fn journal_steps(data_dir: &std::path::Path) -> Vec<StepState> {
    let Ok(Some(state)) = Journal::peek(data_dir) else {
        return Vec::new();
    };
    state
        .bundle
        .map(|b| {
            b.steps
                .into_iter()
                .map(|s| StepState {
                    step: s.step,
                    status: StepStatus::Done as i32,
                    detail: s.detail,
                    at_unix: s.done_at_unix,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn message(kind: AgentKind) -> AgentMessage {
    AgentMessage { kind: Some(kind) }
}

fn os_facts() -> OsFacts {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let os_release = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    let mut addresses: Vec<String> = nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| a.address)
                .filter_map(|a| a.as_sockaddr_in().map(|s| s.ip().to_string()))
                .filter(|ip| ip != "127.0.0.1")
                .collect()
        })
        .unwrap_or_default();
    addresses.dedup();
    OsFacts {
        arch: cks_proto::ids::Arch::host()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        os_release,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        addresses,
    }
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Jittered exponential backoff: each wait is a random point in [d/2, d], d doubling up to
/// [`RECONNECT_MAX`], so many nodes restarting together do not reconnect in lockstep.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// Starts at [`RECONNECT_INITIAL`].
    pub fn new() -> Self {
        Backoff {
            next: RECONNECT_INITIAL,
        }
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let full = self.next;
        self.next = (self.next * 2).min(RECONNECT_MAX);
        let half = full / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// The data directory's identity path, for tests and diagnostics.
pub fn identity_dir(config: &Config) -> PathBuf {
    config.host_path(&config.data_dir).join(identity::PKI_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut backoff = Backoff::new();
        let first = backoff.next_wait();
        assert!(first >= RECONNECT_INITIAL / 2 && first <= RECONNECT_INITIAL);
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = backoff.next_wait();
            assert!(last <= RECONNECT_MAX);
        }
        assert!(last >= RECONNECT_MAX / 2);
    }
}
