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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cks_proto::agent::agent_message::Kind as AgentKind;
use cks_proto::agent::controller_message::Kind as ControllerKind;
use cks_proto::agent::enrollment_server::{Enrollment, EnrollmentServer};
use cks_proto::agent::node_session_server::{NodeSession, NodeSessionServer};
use cks_proto::agent::{
    AgentMessage, Command, CommandResult, ControllerMessage, EnrollRequest, EnrollResponse, Hello,
    ResendResults, StepState, Welcome,
};
use futures_util::Stream;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::tokens::EnrollmentTokens;
use crate::pki::{self, AgentCa, CertifiedKey, NodeIdentity};

/// Heartbeat interval announced to agents in `Welcome`.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// A stream silent for this many heartbeat intervals is dead.
const MISSED_HEARTBEATS: u32 = 3;
/// How long an agent has to send `Hello` after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The last `Hello` (steps journaled on the node, bundle, OS facts).
    pub hello: Option<Hello>,
    /// The latest progress event.
    pub last_step: Option<StepState>,
    /// The kubelet's view of the node, from the latest heartbeat.
    pub node_ready: bool,
    /// When the node was last heard from.
    pub last_seen: Option<Instant>,
    /// How many streams this node opened so far.
    pub sessions: u64,
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
    heartbeat: Duration,
    nodes: Mutex<HashMap<NodeKey, NodeEntry>>,
    changed: Notify,
}

#[derive(Default)]
struct NodeEntry {
    status: NodeStatus,
    /// The open stream's sender, and its session number (to tell a stale stream's end from the
    /// current one's).
    session: Option<(u64, mpsc::Sender<Result<ControllerMessage, Status>>)>,
    outstanding: HashMap<String, Outstanding>,
}

struct Outstanding {
    command: Command,
    waiters: Vec<oneshot::Sender<CommandResult>>,
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

// === impl AgentHub ===

impl AgentHub {
    /// A hub issuing certificates from `ca` against tokens in `tokens`.
    pub fn new(ca: Arc<AgentCa>, tokens: Arc<dyn EnrollmentTokens>, heartbeat: Duration) -> Self {
        AgentHub {
            inner: Arc::new(Inner {
                ca,
                tokens,
                heartbeat,
                nodes: Mutex::new(HashMap::new()),
                changed: Notify::new(),
            }),
        }
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
    /// are closed.
    pub fn forget_cluster(&self, cluster_id: &str) {
        self.inner.tokens.revoke_cluster(cluster_id);
        self.lock().retain(|key, _| key.cluster_id != cluster_id);
        self.inner.changed.notify_waiters();
    }

    /// Forgets one node (it left its cluster): its state and outstanding commands; its open
    /// stream is closed at its next message.
    pub fn forget_node(&self, node: &NodeKey) {
        self.lock().remove(node);
        self.inner.changed.notify_waiters();
    }

    /// The node's current status (default when never heard of).
    pub fn status(&self, node: &NodeKey) -> NodeStatus {
        self.lock()
            .get(node)
            .map(|entry| entry.status.clone())
            .unwrap_or_default()
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
        let command_id = command.command_id.clone();
        let (tx, rx) = oneshot::channel();
        let sender = {
            let mut nodes = self.lock();
            let entry = nodes.entry(node.clone()).or_default();
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
                    entry.session.as_ref().map(|(_, sender)| sender.clone())
                }
            }
        };
        if let Some(sender) = sender {
            debug!(node = %node, command_id, "sending command");
            let message = ControllerMessage {
                kind: Some(ControllerKind::Command(command)),
            };
            // A closed stream is fine: the command is re-sent on the next Hello.
            let _ = sender.send(Ok(message)).await;
        }
        let result = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => {
                self.drop_outstanding(node, &command_id);
                return Err(HubError::Timeout {
                    node: node.to_string(),
                    command_id,
                    timeout,
                });
            }
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
            .client_auth_optional(true);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        Server::builder()
            .tls_config(tls)
            .map_err(HubError::Transport)?
            .add_service(EnrollmentServer::new(EnrollmentService {
                hub: self.clone(),
            }))
            .add_service(NodeSessionServer::new(SessionService { hub: self }))
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeKey, NodeEntry>> {
        self.inner
            .nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn drop_outstanding(&self, node: &NodeKey, command_id: &str) {
        if let Some(entry) = self.lock().get_mut(node) {
            entry.outstanding.remove(command_id);
        }
    }

    /// A stream opened with `hello`: registers it, returns what to send first.
    fn open_session(
        &self,
        node: &NodeKey,
        hello: Hello,
        sender: mpsc::Sender<Result<ControllerMessage, Status>>,
    ) -> (u64, Vec<ControllerMessage>) {
        let mut nodes = self.lock();
        let entry = nodes.entry(node.clone()).or_default();
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
        if !resend.is_empty() {
            first.push(ControllerMessage {
                kind: Some(ControllerKind::ResendResults(ResendResults {
                    command_ids: resend,
                })),
            });
        }
        entry.status.connected = true;
        entry.status.last_seen = Some(Instant::now());
        entry.status.hello = Some(hello);
        entry.session = Some((session, sender));
        drop(nodes);
        self.inner.changed.notify_waiters();
        (session, first)
    }

    fn close_session(&self, node: &NodeKey, session: u64) {
        let mut nodes = self.lock();
        if let Some(entry) = nodes.get_mut(node)
            && entry.session.as_ref().is_some_and(|(s, _)| *s == session)
        {
            entry.session = None;
            entry.status.connected = false;
        }
        drop(nodes);
        self.inner.changed.notify_waiters();
    }

    fn on_message(&self, node: &NodeKey, message: AgentMessage) -> Result<(), Status> {
        let mut nodes = self.lock();
        let Some(entry) = nodes.get_mut(node) else {
            return Err(Status::permission_denied(
                "node forgotten by the controller",
            ));
        };
        entry.status.last_seen = Some(Instant::now());
        match message.kind {
            Some(AgentKind::Progress(progress)) => {
                if let Some(step) = &progress.step {
                    debug!(node = %node, step = step.step, status = step.status, detail = step.detail, "agent progress");
                    if let Some(hello) = entry.status.hello.as_mut() {
                        hello.steps.retain(|s| s.step != step.step);
                        hello.steps.push(step.clone());
                    }
                }
                if let (Some(bundle), Some(hello)) = (progress.bundle, entry.status.hello.as_mut())
                {
                    hello.bundle = Some(bundle);
                }
                entry.status.last_step = progress.step;
            }
            Some(AgentKind::Heartbeat(beat)) => entry.status.node_ready = beat.node_ready,
            Some(AgentKind::Result(result)) => {
                if let Some(hello) = entry.status.hello.as_mut()
                    && !hello.finished_command_ids.contains(&result.command_id)
                {
                    hello.finished_command_ids.push(result.command_id.clone());
                }
                match entry.outstanding.remove(&result.command_id) {
                    Some(outstanding) => {
                        debug!(node = %node, command_id = result.command_id, ok = result.ok, "command result");
                        for waiter in outstanding.waiters {
                            let _ = waiter.send(result.clone());
                        }
                    }
                    None => {
                        debug!(node = %node, command_id = result.command_id, "duplicate or unexpected result ignored")
                    }
                }
            }
            Some(AgentKind::Hello(_)) => {
                return Err(Status::invalid_argument("Hello is only the first message"));
            }
            None => return Err(Status::invalid_argument("empty message")),
        }
        drop(nodes);
        self.inner.changed.notify_waiters();
        Ok(())
    }
}

impl std::fmt::Debug for AgentHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHub")
            .field("ca", &self.inner.ca)
            .field("heartbeat", &self.inner.heartbeat)
            .finish_non_exhaustive()
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
        let peer = request.remote_addr();
        let request = request.into_inner();
        let identity = match self
            .hub
            .inner
            .tokens
            .consume(&request.token, &request.node_name)
        {
            Ok(identity) => identity,
            Err(err) => {
                warn!(node = request.node_name, ?peer, reason = %err, "enrollment refused");
                return Err(Status::permission_denied(
                    "enrollment token unknown, used, expired or not for this node",
                ));
            }
        };
        let certificate_pem = self
            .hub
            .inner
            .ca
            .issue_node(&request.csr_pem, &identity)
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        info!(
            cluster = identity.cluster_id,
            node = identity.node_name,
            role = identity.role.as_str_name(),
            ?peer,
            "node enrolled"
        );
        Ok(Response::new(EnrollResponse {
            certificate_pem,
            ca_pem: self.hub.inner.ca.cert_pem().to_string(),
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
        let node = NodeKey::from(&identity);
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
        let (tx, rx) = mpsc::channel(64);
        let (session, first) = self.hub.open_session(&node, hello, tx.clone());
        info!(node = %node, session, "agent connected");
        for message in first {
            let _ = tx.send(Ok(message)).await;
        }
        let hub = self.hub.clone();
        let silence = hub.inner.heartbeat * MISSED_HEARTBEATS;
        tokio::spawn(async move {
            loop {
                match tokio::time::timeout(silence, incoming.next()).await {
                    Ok(Some(Ok(message))) => {
                        if let Err(status) = hub.on_message(&node, message) {
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                    }
                    Ok(Some(Err(status))) => {
                        debug!(node = %node, %status, "agent stream error");
                        break;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        warn!(node = %node, ?silence, "agent silent; closing its stream");
                        let _ = tx
                            .send(Err(Status::deadline_exceeded("no heartbeat")))
                            .await;
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
