//! The seam where simulated VMs become real nodes.
//!
//! [`NodeRunner`] is the interface the API layer drives on every VM transition and after every
//! change of the network rules. [`NoopRunner`] keeps VMs as records only;
//! [`crate::nodes::ProcessRunner`] runs each VM as a process tree with the real `cks-agent`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::forwarding::ForwardingTable;
use crate::nodes::userdata::UserdataError;

/// What a runner needs to bring up a node. `Debug` leaves the userdata out (it carries the
/// enrollment token).
#[derive(Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// VM id.
    pub vm_id: String,
    /// VM host name.
    pub name: String,
    /// Decoded userdata, as cloud-init or Ignition would hand it over (secret: never logged).
    pub userdata: Option<Vec<u8>>,
    /// The NICs, the default one first.
    pub nics: Vec<NicSpec>,
    /// The attached ISO's downloaded file, if any.
    pub iso: Option<PathBuf>,
    /// Public keys of the VM's SSH key pairs, for `/root/.ssh/authorized_keys`.
    pub ssh_authorized_keys: Vec<String>,
    /// Injected fault: the node never boots (nothing runs; see `faults::NeverBoot`).
    pub never_boots: bool,
}

impl std::fmt::Debug for NodeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSpec")
            .field("vm_id", &self.vm_id)
            .field("name", &self.name)
            .field(
                "userdata",
                &self
                    .userdata
                    .as_ref()
                    .map(|u| format!("<{} bytes>", u.len())),
            )
            .field("nics", &self.nics)
            .field("iso", &self.iso)
            .field("ssh_authorized_keys", &self.ssh_authorized_keys.len())
            .field("never_boots", &self.never_boots)
            .finish()
    }
}

/// One NIC of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    /// The guest network.
    pub network_id: String,
    /// The network's CIDR.
    pub cidr: String,
    /// The network's gateway (held by its router, the node's default route on its first NIC).
    pub gateway: String,
    /// The NIC's address.
    pub ip: String,
    /// The NIC's MAC address.
    pub mac: String,
}

/// How a started node is networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeNetwork {
    /// Nothing runs: the VM is a record.
    Record,
    /// In its own network namespace, one veth per NIC on its networks' bridges.
    Namespace,
    /// On the host's loopback: the NIC addresses are not usable and rules are not forwarded.
    Loopback,
}

// === impl NodeNetwork ===

impl NodeNetwork {
    /// The label shown in the VM's `details` (`None` for records).
    pub fn label(self) -> Option<&'static str> {
        match self {
            Self::Record => None,
            Self::Namespace => Some("netns"),
            Self::Loopback => Some("loopback-only"),
        }
    }
}

/// What a runner can tell about one node (for tests and operators).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's root directory (its disk).
    pub root: PathBuf,
    /// Its logs (`agent.log`, `containerd.log`).
    pub log_dir: PathBuf,
    /// Its network namespace, when it has one and is running.
    pub netns: Option<PathBuf>,
    /// Pids of its live processes.
    pub pids: Vec<i32>,
}

/// A node runner failed to act.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The VM's userdata cannot be applied; the start fails as a real first boot would.
    #[error("node {vm_id}: userdata cannot be applied")]
    Userdata {
        /// VM id.
        vm_id: String,
        /// Why.
        #[source]
        source: UserdataError,
    },
    /// The node does not run (never started, stopped, or a records-only simulator).
    #[error("node {vm_id} is not running")]
    NotRunning {
        /// VM id.
        vm_id: String,
    },
    /// The runner is shutting down.
    #[error("node {vm_id}: the simulator is shutting down")]
    ShutDown {
        /// VM id.
        vm_id: String,
    },
    /// A system call or file operation failed.
    #[error("node {vm_id} failed to {action}")]
    Io {
        /// VM id.
        vm_id: String,
        /// `start`, `stop`, ...
        action: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the nodes behind VMs. Called with the simulator's state lock held, so implementations
/// must return quickly (spawn, don't wait for boot).
pub trait NodeRunner: Send + Sync + 'static {
    /// Starts (or restarts after a stop) the node; its disk is kept between starts.
    ///
    /// # Errors
    /// The node could not be started; the start job fails with 530.
    fn start(&self, spec: &NodeSpec) -> Result<NodeNetwork, NodeError>;
    /// Stops the node (SIGTERM, then SIGKILL), keeping its disk.
    ///
    /// # Errors
    /// The node could not be stopped.
    fn stop(&self, vm_id: &str) -> Result<(), NodeError>;
    /// Stops the node and removes its disk.
    ///
    /// # Errors
    /// The node could not be removed.
    fn destroy(&self, vm_id: &str) -> Result<(), NodeError>;
    /// Makes `iso` visible to the node as a CD-ROM, or removes it (`None`).
    ///
    /// # Errors
    /// The ISO could not be attached or detached.
    fn set_iso(&self, vm_id: &str, iso: Option<PathBuf>) -> Result<(), NodeError>;
    /// Serves `table` from now on (public IPs, port forwarding, load balancing).
    fn update_network(&self, _table: &ForwardingTable) {}
    /// Runs `program args` to its end inside the running node: its network namespace, the
    /// environment its own processes get (`KUBESIM_*`, `PATH` with the `systemctl` stand-in,
    /// `HOSTNAME`) and its marker, so anything the program leaves running belongs to the node
    /// and stops with it. Blocks for at most `timeout`. For tests and operators (`docker exec`
    /// for a simulated VM).
    ///
    /// # Errors
    /// [`NodeError::NotRunning`], or the program could not run or ran out of time.
    fn exec(
        &self,
        vm_id: &str,
        _program: &Path,
        _args: &[String],
        _timeout: Duration,
    ) -> Result<std::process::Output, NodeError> {
        Err(NodeError::NotRunning {
            vm_id: vm_id.to_owned(),
        })
    }
    /// What the runner knows about a node, if it ever ran it.
    fn inspect(&self, _vm_id: &str) -> Option<NodeInfo> {
        None
    }
    /// Stops every node and everything the runner set up (processes, namespaces, forwarders);
    /// blocks until done. Later calls fail with [`NodeError::ShutDown`].
    fn shutdown(&self) {}
}

/// A runner that runs nothing: VMs are records only.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopRunner;

impl NodeRunner for NoopRunner {
    fn start(&self, spec: &NodeSpec) -> Result<NodeNetwork, NodeError> {
        tracing::debug!(vm = %spec.vm_id, "noop node start");
        Ok(NodeNetwork::Record)
    }

    fn stop(&self, _vm_id: &str) -> Result<(), NodeError> {
        Ok(())
    }

    fn destroy(&self, _vm_id: &str) -> Result<(), NodeError> {
        Ok(())
    }

    fn set_iso(&self, _vm_id: &str, _iso: Option<PathBuf>) -> Result<(), NodeError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_specs_never_print_their_userdata() {
        let spec = NodeSpec {
            vm_id: "vm".into(),
            name: "node-1".into(),
            userdata: Some(b"enrollment_token = \"s3cr3t\"".to_vec()),
            nics: Vec::new(),
            iso: None,
            ssh_authorized_keys: Vec::new(),
            never_boots: false,
        };
        let printed = format!("{spec:?}");
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(printed.contains("bytes"), "{printed}");
    }
}
