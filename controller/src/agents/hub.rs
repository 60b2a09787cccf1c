//! The agent hub: the controller's end of contract 2.
//!
//! It serves `Enrollment.Enroll` (one-time token + CSR → node certificate) and
//! `NodeSession.Stream` (mTLS; one long-lived stream per node) and gives the workflows a plain
//! async interface: [`AgentHub::send_command`] returns the node's result for one command id,
//! whatever happens to streams in between, and [`AgentHub::wait_for`] waits for a node state.
//!
//! Exactly-once per command id works like this: a command stays *outstanding* in the hub until
//! its result arrives. On every (re)connect the agent's `Hello` lists the ids it holds results
//! for; the hub asks for those with `ResendResults` and sends the others again. The agent never
//! runs an id twice (it journals results), so re-sending is safe; duplicate results are ignored.
//!
//! # What a node may do
//!
//! A node's owner is root on it, so everything a node sends is attacker input:
//! * its certificate is honoured only while the [`Roster`] (the controller's records) still
//!   holds the node — at enrollment, at stream open and at renewal; [`AgentHub::forget_node`]
//!   and [`AgentHub::forget_cluster`] also cut its open stream at once;
//! * each node has its own entry and lock; what a stream may make the hub keep is bounded
//!   ([`MAX_STEPS`] step names, [`MAX_STEP_NAME`] bytes each, details cut at [`MAX_DETAIL`],
//!   results kept only for outstanding commands), and so is what it may send ([`MAX_UNEXPECTED_RESULTS`],
//!   [`MAX_RENEWALS`], a message rate of [`MESSAGE_RATE`] per second with bursts of
//!   [`MESSAGE_BURST`]). A stream over a limit is closed with RESOURCE_EXHAUSTED;
//! * a new stream of a node replaces (and closes) its previous one;
//! * enrollment attempts are rate-limited per source address ([`ENROLL_ATTEMPTS`] per
//!   [`ENROLL_WINDOW`]) and each source's refusals are logged once per window;
//! * the listener holds at most [`MAX_CONNECTIONS`] connections, each TLS handshake gets
//!   [`TLS_HANDSHAKE_TIMEOUT`], a connection that sends nothing for [`CONNECTION_IDLE`] is
//!   closed, and HTTP/2 keepalive pings find dead peers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use cks_proto::agent::agent_message::Kind as AgentKind;
use cks_proto::agent::controller_message::Kind as ControllerKind;
use cks_proto::agent::enrollment_server::{Enrollment, EnrollmentServer};
use cks_proto::agent::node_session_server::{NodeSession, NodeSessionServer};
use cks_proto::agent::{
    AgentMessage, CertificateRenewed, Command, CommandResult, ControllerMessage, EnrollRequest,
    EnrollResponse, Hello, ResendResults, StepState, Welcome,
};
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::Roster;
use super::sources::EnrollmentSources;
use super::tokens::EnrollmentTokens;
use crate::pki::{self, AgentCa, CertifiedKey, NodeIdentity, VerifiedCsr};

/// Heartbeat interval announced to agents in `Welcome`.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// A stream silent for this many heartbeat intervals is dead.
const MISSED_HEARTBEATS: u32 = 3;
/// How long an agent has to send `Hello` after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Distinct step names a node may report (the agent has about a dozen).
pub const MAX_STEPS: usize = 64;
/// Longest step name, in bytes.
pub const MAX_STEP_NAME: usize = 64;
/// Step details are cut to this many bytes.
pub const MAX_DETAIL: usize = 4096;
/// Results for commands the hub is not waiting for (duplicates, late ones) a stream may send
/// before it is closed.
pub const MAX_UNEXPECTED_RESULTS: u32 = 256;
/// Certificate renewals per stream (the agent asks at most once).
pub const MAX_RENEWALS: u32 = 2;
/// Sustained messages per second a stream may send.
pub const MESSAGE_RATE: u32 = 50;
/// Messages a stream may send in a burst above [`MESSAGE_RATE`].
pub const MESSAGE_BURST: u32 = 500;
/// Enrollment attempts a source address may make per [`ENROLL_WINDOW`] (nodes behind one
/// source NAT address share it).
pub const ENROLL_ATTEMPTS: u32 = 300;
/// The enrollment rate-limit window.
pub const ENROLL_WINDOW: Duration = Duration::from_secs(60);
/// Source addresses the enrollment limiter remembers at once.
const ENROLL_SOURCES: usize = 4096;
/// Connections the agent endpoint holds at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 8192;
/// Time a client has to finish its TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that sends nothing for this long is closed (an agent's stream sends a
/// heartbeat every few seconds and answers keepalive pings).
pub const CONNECTION_IDLE: Duration = Duration::from_secs(120);
/// HTTP/2 keepalive ping interval (and how long an answer may take).
const KEEPALIVE: Duration = Duration::from_secs(30);
/// Concurrent HTTP/2 streams per connection (an agent needs one).
const STREAMS_PER_CONNECTION: u32 = 8;
/// Largest request header block.
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Largest message an agent may send (results carry kubeconfigs and health snapshots).
const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// Messages queued towards one agent beyond those sent at stream open.
const OUTBOUND_QUEUE: usize = 64;

/// A node, as the hub keys it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeKey {
    /// Cluster id.
    pub cluster_id: String,
    /// Node (VM) name.
    pub node_name: String,
}

/// What the hub knows about a node right now.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    /// A stream is open.
    pub connected: bool,
    /// The last `Hello` (steps journaled on the node, bundle, OS facts), kept within the
    /// hub's limits: only the ids of commands outstanding at the time stay in
    /// `finished_command_ids`.
    pub hello: Option<Hello>,
    /// The latest progress event.
    pub last_step: Option<StepState>,
    /// The kubelet's view of the node, from the latest heartbeat.
    pub node_ready: bool,
    /// When the node was last heard from.
    pub last_seen: Option<Instant>,
    /// How many streams this node opened so far.
    pub sessions: u64,
    /// `sha256:<hex>` of the certificate the current (or last) stream was opened with.
    pub certificate: Option<String>,
    /// Certificates renewed for this node so far.
    pub renewals: u64,
    /// Heartbeats received so far.
    pub heartbeats: u64,
}

/// A command could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No result within the timeout (the node may be down or still working).
    #[error("node {node} did not answer command {command_id} within {timeout:?}")]
    Timeout {
        /// The node.
        node: String,
        /// The command.
        command_id: String,
        /// How long the hub waited.
        timeout: Duration,
    },
    /// The node ran the command and it failed.
    #[error("node {node}: command {command_id} failed: {error}")]
    Failed {
        /// The node.
        node: String,
        /// The command.
        command_id: String,
        /// The agent's error text (never holds secrets).
        error: String,
    },
    /// A wait for a node state ran out.
    #[error("node {node}: {what} not reached within {timeout:?}")]
    WaitTimeout {
        /// The node.
        node: String,
        /// What was waited for.
        what: String,
        /// How long.
        timeout: Duration,
    },
    /// The agent endpoint could not start.
    #[error("agent endpoint")]
    Transport(#[source] tonic::transport::Error),
}

/// The hub. Cheap to clone.
#[derive(Clone)]
pub struct AgentHub {
    inner: Arc<Inner>,
}

struct Inner {
    ca: Arc<AgentCa>,
    tokens: Arc<dyn EnrollmentTokens>,
    roster: Arc<dyn Roster>,
    heartbeat: Duration,
    /// One entry per node, each with its own lock; this map's lock is held only to find one.
    nodes: Mutex<HashMap<NodeKey, Arc<Mutex<NodeEntry>>>>,
    enrollments: EnrollLimiter,
    /// Where enrollments may come from; unchecked when unset.
    sources: std::sync::OnceLock<Arc<dyn EnrollmentSources>>,
    changed: Notify,
}

#[derive(Default)]
struct NodeEntry {
    status: NodeStatus,
    session: Option<Session>,
    outstanding: HashMap<String, Outstanding>,
}

/// The open stream of a node.
struct Session {
    id: u64,
    sender: mpsc::Sender<Result<ControllerMessage, Status>>,
    /// Cancelled to close the stream (replaced, node forgotten).
    cut: CancellationToken,
}

struct Outstanding {
    command: Command,
    waiters: Vec<oneshot::Sender<CommandResult>>,
}

/// What one stream has used of its limits.
struct StreamBudget {
    unexpected_results: u32,
    renewals: u32,
    tokens: f64,
    refilled: tokio::time::Instant,
}

/// A registered stream: its id, its cut token and its outbound queue's receiving end.
type OpenedSession = (
    u64,
    CancellationToken,
    mpsc::Receiver<Result<ControllerMessage, Status>>,
);

/// What the stream loop does after a message.
enum Next {
    Continue,
    Renew(String),
    Close(Status),
}

// === impl NodeKey ===

impl NodeKey {
    /// A key.
    pub fn new(cluster_id: impl Into<String>, node_name: impl Into<String>) -> Self {
        NodeKey {
            cluster_id: cluster_id.into(),
            node_name: node_name.into(),
        }
    }
}

impl std::fmt::Display for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.cluster_id, self.node_name)
    }
}

impl From<&NodeIdentity> for NodeKey {
    fn from(id: &NodeIdentity) -> Self {
        NodeKey::new(id.cluster_id.clone(), id.node_name.clone())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent at each step; keep going after a panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Cuts `text` to at most `max` bytes, on a character boundary.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
}

/// Checks one step a node reports against the limits, cutting its detail.
fn bounded_step(step: &mut StepState) -> Result<(), Status> {
    if step.step.is_empty() || step.step.len() > MAX_STEP_NAME {
        return Err(Status::resource_exhausted(format!(
            "step names are 1 to {MAX_STEP_NAME} bytes"
        )));
    }
    truncate(&mut step.detail, MAX_DETAIL);
    Ok(())
}

/// Records `step` in `steps` (replacing the same name), refusing the `MAX_STEPS + 1`th name.
fn record_step(steps: &mut Vec<StepState>, step: StepState) -> Result<(), Status> {
    if let Some(slot) = steps.iter_mut().find(|s| s.step == step.step) {
        *slot = step;
        return Ok(());
    }
    if steps.len() >= MAX_STEPS {
        return Err(Status::resource_exhausted(format!(
            "more than {MAX_STEPS} distinct step names"
        )));
    }
    steps.push(step);
    Ok(())
}

// === impl StreamBudget ===

impl StreamBudget {
    fn new() -> Self {
        StreamBudget {
            unexpected_results: 0,
            renewals: 0,
            tokens: f64::from(MESSAGE_BURST),
            refilled: tokio::time::Instant::now(),
        }
    }

    /// Takes one message from the rate budget (a token bucket).
    fn take_message(&mut self) -> Result<(), Status> {
        let now = tokio::time::Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens =
            (self.tokens + elapsed * f64::from(MESSAGE_RATE)).min(f64::from(MESSAGE_BURST));
        if self.tokens < 1.0 {
            return Err(Status::resource_exhausted(format!(
                "more than {MESSAGE_RATE} messages per second"
            )));
        }
        self.tokens -= 1.0;
        Ok(())
    }
}

// === impl AgentHub ===

impl AgentHub {
    /// A hub issuing certificates from `ca` against tokens in `tokens`, for nodes `roster`
    /// admits.
    pub fn new(
        ca: Arc<AgentCa>,
        tokens: Arc<dyn EnrollmentTokens>,
        roster: Arc<dyn Roster>,
        heartbeat: Duration,
    ) -> Self {
        AgentHub {
            inner: Arc::new(Inner {
                ca,
                tokens,
                roster,
                heartbeat,
                nodes: Mutex::new(HashMap::new()),
                enrollments: EnrollLimiter::default(),
                sources: std::sync::OnceLock::new(),
                changed: Notify::new(),
            }),
        }
    }

    /// From now on, accepts an enrollment only from an address `sources` allows for its node
    /// (checked before the token is spent). Set once; later calls are ignored.
    pub fn check_enrollment_sources(&self, sources: Arc<dyn EnrollmentSources>) {
        let _ = self.inner.sources.set(sources);
    }

    /// The CA agents pin.
    pub fn ca(&self) -> &AgentCa {
        &self.inner.ca
    }

    /// Issues a one-time enrollment token for a node (secret: goes into its userdata only).
    pub fn issue_token(&self, identity: NodeIdentity, ttl: Duration) -> String {
        self.inner.tokens.issue(identity, ttl)
    }

    /// Forgets a cluster: its tokens, its nodes' state and outstanding commands; open streams
    /// are closed at once.
    pub fn forget_cluster(&self, cluster_id: &str) {
        self.inner.tokens.revoke_cluster(cluster_id);
        let gone: Vec<_> = {
            let mut nodes = lock(&self.inner.nodes);
            let keys: Vec<_> = nodes
                .keys()
                .filter(|key| key.cluster_id == cluster_id)
                .cloned()
                .collect();
            keys.iter().filter_map(|key| nodes.remove(key)).collect()
        };
        for entry in gone {
            close_forgotten(&entry);
        }
        self.inner.changed.notify_waiters();
    }

    /// Forgets one node (it left its cluster): its state and outstanding commands; its open
    /// stream is closed at once.
    pub fn forget_node(&self, node: &NodeKey) {
        let gone = lock(&self.inner.nodes).remove(node);
        if let Some(entry) = gone {
            close_forgotten(&entry);
        }
        self.inner.changed.notify_waiters();
    }

    /// The node's current status (default when never heard of).
    pub fn status(&self, node: &NodeKey) -> NodeStatus {
        self.entry(node)
            .map(|entry| lock(&entry).status.clone())
            .unwrap_or_default()
    }

    /// How many nodes the hub holds state for, and the most step names, outstanding commands
    /// and finished ids any one of them holds (for diagnostics and the limits' tests).
    pub fn footprint(&self) -> HubFootprint {
        let entries: Vec<_> = lock(&self.inner.nodes).values().cloned().collect();
        let mut footprint = HubFootprint {
            nodes: entries.len(),
            ..HubFootprint::default()
        };
        for entry in entries {
            let entry = lock(&entry);
            let (steps, finished) = entry
                .status
                .hello
                .as_ref()
                .map_or((0, 0), |h| (h.steps.len(), h.finished_command_ids.len()));
            footprint.max_steps = footprint.max_steps.max(steps);
            footprint.max_finished_ids = footprint.max_finished_ids.max(finished);
            footprint.max_outstanding = footprint.max_outstanding.max(entry.outstanding.len());
        }
        footprint
    }

    /// Waits until `done` holds for the node's status.
    ///
    /// # Errors
    /// [`HubError::WaitTimeout`] naming `what`.
    pub async fn wait_for(
        &self,
        node: &NodeKey,
        what: &str,
        timeout: Duration,
        done: impl Fn(&NodeStatus) -> bool,
    ) -> Result<NodeStatus, HubError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let status = self.status(node);
            if done(&status) {
                return Ok(status);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(HubError::WaitTimeout {
                    node: node.to_string(),
                    what: what.to_string(),
                    timeout,
                });
            }
        }
    }

    /// Sends `command` to the node and waits for its result, across reconnects. A command id
    /// already outstanding is not sent twice; the caller just waits for the same result.
    /// Everything, handing the command to a stream whose agent does not read included, happens
    /// within `timeout`.
    ///
    /// # Errors
    /// [`HubError::Timeout`] when no result came in time (the command stays known to the agent,
    /// which keeps its result: sending the same id again later collects it),
    /// [`HubError::Failed`] when the agent reports failure.
    pub async fn send_command(
        &self,
        node: &NodeKey,
        command: Command,
        timeout: Duration,
    ) -> Result<CommandResult, HubError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let command_id = command.command_id.clone();
        let (tx, rx) = oneshot::channel();
        let sender = {
            let entry = self.entry_or_default(node);
            let mut entry = lock(&entry);
            match entry.outstanding.get_mut(&command_id) {
                Some(outstanding) => {
                    outstanding.waiters.push(tx);
                    None
                }
                None => {
                    entry.outstanding.insert(
                        command_id.clone(),
                        Outstanding {
                            command: command.clone(),
                            waiters: vec![tx],
                        },
                    );
                    entry.session.as_ref().map(|s| s.sender.clone())
                }
            }
        };
        let timed_out = |hub: &AgentHub| {
            hub.drop_outstanding(node, &command_id);
            HubError::Timeout {
                node: node.to_string(),
                command_id: command_id.clone(),
                timeout,
            }
        };
        if let Some(sender) = sender {
            debug!(node = %node, command_id, "sending command");
            let message = ControllerMessage {
                kind: Some(ControllerKind::Command(command)),
            };
            // A closed stream is fine: the command is re-sent on the next Hello. A full one
            // (the agent does not read) is waited for only until the deadline.
            if tokio::time::timeout_at(deadline, sender.send(Ok(message)))
                .await
                .is_err()
            {
                return Err(timed_out(self));
            }
        }
        let result = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => return Err(timed_out(self)),
        };
        if result.ok {
            Ok(result)
        } else {
            Err(HubError::Failed {
                node: node.to_string(),
                command_id,
                error: result.error,
            })
        }
    }

    /// Serves the agent endpoint on `listener` until `shutdown` resolves. The server
    /// certificate comes from [`AgentCa::issue_server`]; client certificates are optional at
    /// the TLS level (enrollment has none) and required by the session service.
    ///
    /// # Errors
    /// The server failed.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        server: CertifiedKey,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), HubError> {
        // tonic builds its rustls config from the process-wide provider; when several are linked
        // in (reqwest brings aws-lc-rs), choose ring explicitly. Already set is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // The chain includes the CA: agents that only know its fingerprint find it there.
        let chain = format!("{}{}", server.cert_pem, self.inner.ca.cert_pem());
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(chain, &server.key_pem))
            .client_ca_root(Certificate::from_pem(self.inner.ca.cert_pem()))
            .client_auth_optional(true)
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        let incoming = limited_incoming(listener, MAX_CONNECTIONS, CONNECTION_IDLE);
        Server::builder()
            .tls_config(tls)
            .map_err(HubError::Transport)?
            .http2_keepalive_interval(Some(KEEPALIVE))
            .http2_keepalive_timeout(Some(KEEPALIVE))
            .tcp_keepalive(Some(KEEPALIVE))
            .max_concurrent_streams(Some(STREAMS_PER_CONNECTION))
            .http2_max_header_list_size(Some(MAX_HEADER_LIST))
            .add_service(EnrollmentServer::new(EnrollmentService {
                hub: self.clone(),
            }))
            .add_service(
                NodeSessionServer::new(SessionService { hub: self })
                    .max_decoding_message_size(MAX_MESSAGE),
            )
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(HubError::Transport)
    }

    /// Binds `addr` and serves in a background task; returns the bound address.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn spawn(
        self,
        addr: SocketAddr,
        server: CertifiedKey,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let handle = tokio::spawn(async move {
            if let Err(err) = self.serve(listener, server, std::future::pending()).await {
                warn!(error = %err, "agent endpoint stopped");
            }
        });
        Ok((local, handle))
    }

    fn entry(&self, node: &NodeKey) -> Option<Arc<Mutex<NodeEntry>>> {
        lock(&self.inner.nodes).get(node).cloned()
    }

    fn entry_or_default(&self, node: &NodeKey) -> Arc<Mutex<NodeEntry>> {
        lock(&self.inner.nodes)
            .entry(node.clone())
            .or_default()
            .clone()
    }

    fn drop_outstanding(&self, node: &NodeKey, command_id: &str) {
        if let Some(entry) = self.entry(node) {
            lock(&entry).outstanding.remove(command_id);
        }
    }

    /// A stream opened with `hello` by the holder of the certificate `certificate`: closes the
    /// node's previous stream, registers this one, and returns its id, its cut token and the
    /// receiving end of its outbound queue (Welcome and what to send first already in it).
    fn open_session(
        &self,
        node: &NodeKey,
        mut hello: Hello,
        certificate: String,
    ) -> Result<OpenedSession, Status> {
        let mut steps = Vec::new();
        for mut step in std::mem::take(&mut hello.steps) {
            bounded_step(&mut step)?;
            record_step(&mut steps, step)?;
        }
        hello.steps = steps;
        let entry = self.entry_or_default(node);
        let mut entry = lock(&entry);
        entry.status.sessions += 1;
        let session = entry.status.sessions;
        let mut first = vec![ControllerMessage {
            kind: Some(ControllerKind::Welcome(Welcome {
                heartbeat_interval_seconds: u32::try_from(self.inner.heartbeat.as_secs())
                    .unwrap_or(u32::MAX)
                    .max(1),
                cluster_id: node.cluster_id.clone(),
            })),
        }];
        let mut resend = Vec::new();
        for (id, outstanding) in &entry.outstanding {
            if hello.finished_command_ids.contains(id) {
                resend.push(id.clone());
            } else {
                first.push(ControllerMessage {
                    kind: Some(ControllerKind::Command(outstanding.command.clone())),
                });
            }
        }
        hello.finished_command_ids = resend.clone();
        if !resend.is_empty() {
            first.push(ControllerMessage {
                kind: Some(ControllerKind::ResendResults(ResendResults {
                    command_ids: resend,
                })),
            });
        }
        // Room for everything sent first, so queuing it cannot block.
        let (tx, rx) = mpsc::channel(first.len() + OUTBOUND_QUEUE);
        for message in first {
            let _ = tx.try_send(Ok(message));
        }
        if let Some(previous) = entry.session.take() {
            let _ = previous.sender.try_send(Err(Status::aborted(
                "replaced by a newer stream of the same node",
            )));
            previous.cut.cancel();
        }
        let cut = CancellationToken::new();
        entry.status.connected = true;
        entry.status.last_seen = Some(Instant::now());
        entry.status.hello = Some(hello);
        entry.status.certificate = Some(certificate);
        entry.session = Some(Session {
            id: session,
            sender: tx,
            cut: cut.clone(),
        });
        drop(entry);
        self.inner.changed.notify_waiters();
        Ok((session, cut, rx))
    }

    fn close_session(&self, node: &NodeKey, session: u64) {
        if let Some(entry) = self.entry(node) {
            let mut entry = lock(&entry);
            if entry.session.as_ref().is_some_and(|s| s.id == session) {
                entry.session = None;
                entry.status.connected = false;
            }
        }
        self.inner.changed.notify_waiters();
    }

    fn sender(
        &self,
        node: &NodeKey,
        session: u64,
    ) -> Option<mpsc::Sender<Result<ControllerMessage, Status>>> {
        let entry = self.entry(node)?;
        let entry = lock(&entry);
        entry
            .session
            .as_ref()
            .filter(|s| s.id == session)
            .map(|s| s.sender.clone())
    }

    fn on_message(&self, node: &NodeKey, budget: &mut StreamBudget, message: AgentMessage) -> Next {
        if let Err(status) = budget.take_message() {
            return Next::Close(status);
        }
        let Some(entry) = self.entry(node) else {
            return Next::Close(Status::permission_denied(
                "node forgotten by the controller",
            ));
        };
        let mut entry = lock(&entry);
        entry.status.last_seen = Some(Instant::now());
        match message.kind {
            Some(AgentKind::Progress(progress)) => {
                if let Some(mut step) = progress.step {
                    if let Err(status) = bounded_step(&mut step) {
                        return Next::Close(status);
                    }
                    debug!(node = %node, step = step.step, status = step.status, detail = step.detail, "agent progress");
                    if let Some(hello) = entry.status.hello.as_mut()
                        && let Err(status) = record_step(&mut hello.steps, step.clone())
                    {
                        return Next::Close(status);
                    }
                    entry.status.last_step = Some(step);
                }
                if let (Some(bundle), Some(hello)) = (progress.bundle, entry.status.hello.as_mut())
                {
                    hello.bundle = Some(bundle);
                }
            }
            Some(AgentKind::Heartbeat(beat)) => {
                entry.status.node_ready = beat.node_ready;
                entry.status.heartbeats += 1;
            }
            Some(AgentKind::Result(result)) => match entry.outstanding.remove(&result.command_id) {
                Some(outstanding) => {
                    debug!(node = %node, command_id = result.command_id, ok = result.ok, "command result");
                    for waiter in outstanding.waiters {
                        let _ = waiter.send(result.clone());
                    }
                }
                None => {
                    budget.unexpected_results += 1;
                    if budget.unexpected_results > MAX_UNEXPECTED_RESULTS {
                        return Next::Close(Status::resource_exhausted(format!(
                            "more than {MAX_UNEXPECTED_RESULTS} results for commands not sent"
                        )));
                    }
                    debug!(node = %node, "duplicate or unexpected result ignored");
                }
            },
            Some(AgentKind::RenewCertificate(renew)) => {
                budget.renewals += 1;
                if budget.renewals > MAX_RENEWALS {
                    return Next::Close(Status::resource_exhausted(format!(
                        "more than {MAX_RENEWALS} certificate renewals on one stream"
                    )));
                }
                return Next::Renew(renew.csr_pem);
            }
            Some(AgentKind::Hello(_)) => {
                return Next::Close(Status::invalid_argument("Hello is only the first message"));
            }
            None => return Next::Close(Status::invalid_argument("empty message")),
        }
        drop(entry);
        self.inner.changed.notify_waiters();
        Next::Continue
    }

    /// Certifies the key in `csr_pem` for `identity` (the stream's), if the node is still
    /// the controller's.
    fn renew(&self, identity: &NodeIdentity, csr_pem: &str) -> CertificateRenewed {
        let node = NodeKey::from(identity);
        let refused = |error: String| CertificateRenewed {
            error,
            ..CertificateRenewed::default()
        };
        if let Err(why) = self.inner.roster.admits(&node) {
            return refused(why);
        }
        let issued =
            VerifiedCsr::parse(csr_pem).and_then(|csr| self.inner.ca.issue_node(csr, identity));
        match issued {
            Ok(certificate_pem) => {
                if let Some(entry) = self.entry(&node) {
                    lock(&entry).status.renewals += 1;
                }
                info!(node = %node, "node certificate renewed");
                CertificateRenewed {
                    certificate_pem,
                    ca_pem: self.inner.ca.cert_pem().to_string(),
                    error: String::new(),
                }
            }
            Err(err) => {
                warn!(node = %node, error = %crate::error_chain(&err), "certificate renewal refused");
                refused(err.to_string())
            }
        }
    }
}

/// Closes the stream of a node the controller forgot.
fn close_forgotten(entry: &Mutex<NodeEntry>) {
    if let Some(session) = lock(entry).session.take() {
        let _ = session.sender.try_send(Err(Status::permission_denied(
            "node forgotten by the controller",
        )));
        session.cut.cancel();
    }
}

/// The hub's memory, as counts (see [`AgentHub::footprint`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubFootprint {
    /// Nodes with an entry.
    pub nodes: usize,
    /// Most step names held for one node.
    pub max_steps: usize,
    /// Most finished command ids held for one node.
    pub max_finished_ids: usize,
    /// Most outstanding commands of one node.
    pub max_outstanding: usize,
}

impl std::fmt::Debug for AgentHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHub")
            .field("ca", &self.inner.ca)
            .field("heartbeat", &self.inner.heartbeat)
            .finish_non_exhaustive()
    }
}

/// Enrollment attempts per source address, in fixed windows.
#[derive(Default)]
struct EnrollLimiter {
    sources: Mutex<HashMap<IpAddr, SourceWindow>>,
}

struct SourceWindow {
    started: tokio::time::Instant,
    attempts: u32,
    /// A refusal was logged in this window.
    logged: bool,
}

// === impl EnrollLimiter ===

impl EnrollLimiter {
    /// Counts an attempt from `source`; false when the source is over its limit.
    fn attempt(&self, source: IpAddr) -> bool {
        let now = tokio::time::Instant::now();
        let mut sources = lock(&self.sources);
        if sources.len() >= ENROLL_SOURCES && !sources.contains_key(&source) {
            sources.retain(|_, w| now.duration_since(w.started) < ENROLL_WINDOW);
            if sources.len() >= ENROLL_SOURCES
                && let Some(oldest) = sources
                    .iter()
                    .min_by_key(|(_, w)| w.started)
                    .map(|(ip, _)| *ip)
            {
                sources.remove(&oldest);
            }
        }
        let window = sources.entry(source).or_insert(SourceWindow {
            started: now,
            attempts: 0,
            logged: false,
        });
        if now.duration_since(window.started) >= ENROLL_WINDOW {
            *window = SourceWindow {
                started: now,
                attempts: 0,
                logged: false,
            };
        }
        window.attempts += 1;
        window.attempts <= ENROLL_ATTEMPTS
    }

    /// True for the first refusal of `source` in its window: log that one, not the rest.
    fn first_refusal(&self, source: IpAddr) -> bool {
        let mut sources = lock(&self.sources);
        match sources.get_mut(&source) {
            Some(window) => !std::mem::replace(&mut window.logged, true),
            None => true,
        }
    }
}

struct EnrollmentService {
    hub: AgentHub,
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let source = request
            .remote_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip().to_canonical());
        let request = request.into_inner();
        let hub = &self.hub.inner;
        let node_name = request.node_name.as_str();
        let refuse = |status: Status, reason: &str| {
            if hub.enrollments.first_refusal(source) {
                warn!(%source, node = node_name, reason,
                    "enrollment refused (further refusals from this address are logged at debug level for a while)");
            } else {
                debug!(%source, node = node_name, reason, "enrollment refused");
            }
            status
        };
        if !hub.enrollments.attempt(source) {
            return Err(refuse(
                Status::resource_exhausted(
                    "too many enrollment attempts from this address; retry later",
                ),
                "rate limit",
            ));
        }
        // The CSR first: a bad one must not spend the token.
        let csr = VerifiedCsr::parse(&request.csr_pem).map_err(|err| {
            let reason = err.to_string();
            refuse(Status::invalid_argument(reason.clone()), &reason)
        })?;
        let denied = |reason: &str| {
            refuse(
                Status::permission_denied(
                    "enrollment token unknown, used, expired or not for this node",
                ),
                reason,
            )
        };
        let identity = hub
            .tokens
            .check(&request.token, node_name, csr.key_sha256())
            .map_err(|err| denied(&err.to_string()))?;
        let node = NodeKey::from(&identity);
        hub.roster.admits(&node).map_err(|why| denied(&why))?;
        if let Some(sources) = hub.sources.get() {
            match sources.allowed(&node).await {
                Ok(allowed) if allowed.contains(&source) => {}
                Ok(allowed) => {
                    return Err(denied(&format!(
                        "node {node} enrolls from {source}; CloudStack says it can only come from {allowed:?}"
                    )));
                }
                Err(why) => {
                    return Err(refuse(
                        Status::unavailable("cannot check this node's address now; retry later"),
                        &why,
                    ));
                }
            }
        }
        let identity = hub
            .tokens
            .redeem(&request.token, node_name, csr.key_sha256())
            .map_err(|err| denied(&err.to_string()))?;
        let certificate_pem = hub.ca.issue_node(csr, &identity).map_err(|err| {
            warn!(error = %crate::error_chain(&err), "cannot sign a node certificate");
            Status::internal("cannot sign the node certificate")
        })?;
        info!(
            cluster = identity.cluster_id,
            node = identity.node_name,
            role = identity.role.as_str_name(),
            %source,
            "node enrolled"
        );
        Ok(Response::new(EnrollResponse {
            certificate_pem,
            ca_pem: hub.ca.cert_pem().to_string(),
            cluster_id: identity.cluster_id,
            role: identity.role as i32,
        }))
    }
}

struct SessionService {
    hub: AgentHub,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl NodeSession for SessionService {
    type StreamStream = OutStream;

    async fn stream(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a node certificate is required"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("a node certificate is required"))?;
        let identity = pki::node_identity(leaf.as_ref())
            .map_err(|err| Status::unauthenticated(err.to_string()))?;
        let certificate = pki::fingerprint(leaf.as_ref());
        let node = NodeKey::from(&identity);
        if let Err(why) = self.hub.inner.roster.admits(&node) {
            debug!(node = %node, why, "stream refused");
            return Err(Status::permission_denied(why));
        }
        let mut incoming = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, incoming.next()).await {
            Ok(Some(Ok(AgentMessage {
                kind: Some(AgentKind::Hello(hello)),
            }))) => hello,
            Ok(Some(Err(status))) => return Err(status),
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        if hello.node_name != identity.node_name {
            return Err(Status::permission_denied(format!(
                "certificate is for node {:?}, Hello says {:?}",
                identity.node_name, hello.node_name
            )));
        }
        let (session, cut, rx) = self.hub.open_session(&node, hello, certificate)?;
        info!(node = %node, session, "agent connected");
        let hub = self.hub.clone();
        let silence = hub.inner.heartbeat * MISSED_HEARTBEATS;
        tokio::spawn(async move {
            let mut budget = StreamBudget::new();
            let close = |status: Status| {
                if let Some(tx) = hub.sender(&node, session) {
                    let _ = tx.try_send(Err(status));
                }
            };
            loop {
                let next = tokio::select! {
                    biased;
                    () = cut.cancelled() => break,
                    next = tokio::time::timeout(silence, incoming.next()) => next,
                };
                match next {
                    Ok(Some(Ok(message))) => match hub.on_message(&node, &mut budget, message) {
                        Next::Continue => {}
                        Next::Renew(csr_pem) => {
                            let renewed = hub.renew(&identity, &csr_pem);
                            let Some(tx) = hub.sender(&node, session) else {
                                break;
                            };
                            let reply = ControllerMessage {
                                kind: Some(ControllerKind::CertificateRenewed(renewed)),
                            };
                            if tokio::time::timeout(silence, tx.send(Ok(reply)))
                                .await
                                .is_err()
                            {
                                warn!(node = %node, "agent does not read its stream; closing it");
                                break;
                            }
                        }
                        Next::Close(status) => {
                            warn!(node = %node, %status, "closing the stream of a node over its limits");
                            close(status);
                            break;
                        }
                    },
                    Ok(Some(Err(status))) => {
                        debug!(node = %node, %status, "agent stream error");
                        break;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        warn!(node = %node, ?silence, "agent silent; closing its stream");
                        close(Status::deadline_exceeded("no heartbeat"));
                        break;
                    }
                }
            }
            hub.close_session(&node, session);
            info!(node = %node, session, "agent disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

// === the listener's limits ===

/// Accepted connections, at most `max` open at once (the rest are closed on accept), each
/// closed when it sends nothing for `idle`.
fn limited_incoming(
    listener: tokio::net::TcpListener,
    max: usize,
    idle: Duration,
) -> impl Stream<Item = std::io::Result<LimitedConn>> + Send + 'static {
    let permits = Arc::new(Semaphore::new(max));
    futures_util::stream::unfold((listener, permits), move |(listener, permits)| async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    warn!(error = %err, "agent endpoint cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let conn = LimitedConn {
                        inner: stream,
                        _permit: permit,
                        idle,
                        deadline: Box::pin(tokio::time::sleep(idle)),
                    };
                    return Some((Ok(conn), (listener, permits)));
                }
                Err(_) => {
                    debug!(
                        max,
                        "agent endpoint at its connection limit; closing a new one"
                    );
                    drop(stream);
                }
            }
        }
    })
}

/// A connection holding one of the listener's permits, closed after `idle` without input.
struct LimitedConn {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Connected for LimitedConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "agent connection idle",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
