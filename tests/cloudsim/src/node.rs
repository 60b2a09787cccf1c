//! The seam where simulated VMs become real nodes.
//!
//! Issue 5 wants a started VM to run the real `cks-agent` (in a network namespace or on
//! loopback), with attached ISOs visible as a CD-ROM. [`NodeRunner`] is the interface the API
//! layer drives on every VM transition; [`NoopRunner`] is the current implementation: VMs
//! exist only as records.

use std::path::PathBuf;

/// What a runner needs to bring up a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// VM id.
    pub vm_id: String,
    /// VM host name.
    pub name: String,
    /// Decoded userdata, as cloud-init or Ignition would hand it over.
    pub userdata: Option<Vec<u8>>,
    /// `(network id, guest IP)` per NIC, the default NIC first.
    pub nics: Vec<(String, String)>,
    /// The attached ISO's downloaded file, if any.
    pub iso: Option<PathBuf>,
}

/// A node runner failed to act.
#[derive(Debug, thiserror::Error)]
#[error("node {vm_id} failed to {action}")]
pub struct NodeError {
    /// VM id.
    pub vm_id: String,
    /// `start`, `stop`, ...
    pub action: &'static str,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

/// Runs the nodes behind VMs. Called with the simulator's state lock held, so implementations
/// must return quickly (spawn, don't wait for boot).
pub trait NodeRunner: Send + Sync + 'static {
    /// Starts (or restarts after a stop) the node; its disk is kept between starts.
    ///
    /// # Errors
    /// The node could not be started; the start job fails with 530.
    fn start(&self, spec: &NodeSpec) -> Result<(), NodeError>;
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
}

/// A runner that runs nothing: VMs are records only.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopRunner;

impl NodeRunner for NoopRunner {
    fn start(&self, spec: &NodeSpec) -> Result<(), NodeError> {
        tracing::debug!(vm = %spec.vm_id, "noop node start");
        Ok(())
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
