//! The controller's side of the agent protocol (contract 2): enrollment tokens and the hub that
//! holds one stream per node.

pub mod hub;
pub mod tokens;

pub use hub::{AgentHub, HubError, NodeKey, NodeStatus};
pub use tokens::{EnrollmentTokens, MemoryTokens, TokenError};
