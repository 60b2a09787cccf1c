//! The controller's side of an agent session: a real `AgentHub` with an in-memory token store,
//! serving mTLS on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cks_controller::agents::{AgentHub, EveryNode, MemoryTokens};
use cks_controller::pki::AgentCa;
use tokio::task::JoinHandle;

/// A hub listening on a free loopback port, with its CA in a temporary directory.
pub struct LoopbackHub {
    /// Holds the CA's files.
    pub dir: tempfile::TempDir,
    /// The hub.
    pub hub: AgentHub,
    /// Where agents dial.
    pub addr: SocketAddr,
    /// The serving task.
    pub server: JoinHandle<()>,
}

/// Starts a hub (1 s heartbeat, every node admitted); node certificates last
/// `node_validity` when given, else the CA's default.
pub async fn start(node_validity: Option<Duration>) -> LoopbackHub {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = AgentCa::load_or_create(&dir.path().join("ca")).unwrap();
    if let Some(validity) = node_validity {
        ca = ca.with_node_validity(validity);
    }
    let ca = Arc::new(ca);
    let server_cert = ca.issue_server(&["127.0.0.1".to_string()]).unwrap();
    let hub = AgentHub::new(
        ca,
        Arc::new(MemoryTokens::default()),
        Arc::new(EveryNode),
        Duration::from_secs(1),
    );
    let (addr, server) = hub
        .clone()
        .spawn("127.0.0.1:0".parse().unwrap(), server_cert)
        .await
        .unwrap();
    LoopbackHub {
        dir,
        hub,
        addr,
        server,
    }
}
