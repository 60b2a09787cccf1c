//! The controller's side of the agent protocol (contract 2): enrollment tokens and the hub that
//! holds one stream per node, behind the [`Agents`] trait the workflows use.

pub mod hub;
pub mod roster;
pub mod sources;
pub mod tokens;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use cks_proto::agent::{Command, CommandResult};

pub use hub::{AgentHub, HubError, HubFootprint, NodeKey, NodeStatus};
pub use roster::{EveryNode, Roster, StoreRoster};
pub use sources::{CloudSources, EnrollmentSources};
pub use tokens::{EnrollmentTokens, MemoryTokens, TokenError};

use crate::pki::NodeIdentity;

/// A future the [`Agents`] trait returns (boxed, so the trait stays object-safe).
pub type AgentFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The nodes' agents, as the workflows and the API see them.
///
/// It exists so the workflow engine's retries, deadlines and resumption can be tested with a
/// scripted fake under paused time, without TLS, streams or nodes; [`AgentHub`] is the real one.
pub trait Agents: Send + Sync + 'static {
    /// Sends `command` to `node` and waits up to `timeout` for its result (see
    /// [`AgentHub::send_command`]: exactly once per command id, across reconnects).
    fn send_command<'a>(
        &'a self,
        node: &'a NodeKey,
        command: Command,
        timeout: Duration,
    ) -> AgentFuture<'a, Result<CommandResult, HubError>>;

    /// What is known about the node now.
    fn status(&self, node: &NodeKey) -> NodeStatus;

    /// A one-time enrollment token for a node about to be deployed (secret: userdata only).
    fn issue_token(&self, identity: NodeIdentity, ttl: Duration) -> String;

    /// The SHA-256 fingerprint of the CA agents pin.
    fn ca_fingerprint(&self) -> String;

    /// Forgets a node that left its cluster: its token, state and outstanding commands.
    fn forget_node(&self, node: &NodeKey);

    /// Forgets a deleted cluster's nodes.
    fn forget_cluster(&self, cluster_id: &str);
}

impl Agents for AgentHub {
    fn send_command<'a>(
        &'a self,
        node: &'a NodeKey,
        command: Command,
        timeout: Duration,
    ) -> AgentFuture<'a, Result<CommandResult, HubError>> {
        Box::pin(AgentHub::send_command(self, node, command, timeout))
    }

    fn status(&self, node: &NodeKey) -> NodeStatus {
        AgentHub::status(self, node)
    }

    fn issue_token(&self, identity: NodeIdentity, ttl: Duration) -> String {
        AgentHub::issue_token(self, identity, ttl)
    }

    fn ca_fingerprint(&self) -> String {
        self.ca().fingerprint()
    }

    fn forget_node(&self, node: &NodeKey) {
        AgentHub::forget_node(self, node);
    }

    fn forget_cluster(&self, cluster_id: &str) {
        AgentHub::forget_cluster(self, cluster_id);
    }
}
