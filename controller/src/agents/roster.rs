//! Which nodes the hub still serves: a node certificate is valid for a year, but the node it
//! names may leave its cluster (scale down) or lose it (delete) long before. The [`Roster`] is
//! asked at enrollment, at every stream open and at every renewal; the controller's store is
//! the roster of record ([`StoreRoster`]), so a removed node or a deleted cluster's node is
//! refused even after a controller restart, without a revocation list to keep. Node names carry
//! a random suffix, so a name is never given to a second node.

use std::sync::Arc;

use super::NodeKey;
use crate::store::{ClusterState, Store};

/// Decides whether a node may still talk to the controller.
pub trait Roster: Send + Sync + 'static {
    /// `Ok` when `node` is still part of its cluster.
    ///
    /// # Errors
    /// Why not, for the node (no secrets, nothing about other clusters).
    fn admits(&self, node: &NodeKey) -> Result<(), String>;
}

/// Admits every node: for hubs without a store (tests, benchmarks), where nodes are never
/// removed.
#[derive(Debug, Default, Clone, Copy)]
pub struct EveryNode;

impl Roster for EveryNode {
    fn admits(&self, _node: &NodeKey) -> Result<(), String> {
        Ok(())
    }
}

/// The controller's store as the roster: the cluster must exist and not be destroyed, and hold
/// the node.
pub struct StoreRoster {
    store: Arc<dyn Store>,
}

impl StoreRoster {
    /// The roster kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        StoreRoster { store }
    }
}

impl Roster for StoreRoster {
    fn admits(&self, node: &NodeKey) -> Result<(), String> {
        let unavailable = |err: crate::store::StoreError| {
            tracing::error!(error = %crate::error_chain(&err), "cannot read the node roster");
            "the controller cannot check this node now; retry later".to_string()
        };
        let cluster = self.store.cluster(&node.cluster_id).map_err(unavailable)?;
        match cluster {
            None => return Err(format!("cluster {} is unknown", node.cluster_id)),
            Some(cluster) if cluster.state == ClusterState::Destroyed => {
                return Err(format!("cluster {} was deleted", node.cluster_id));
            }
            Some(_) => {}
        }
        let nodes = self.store.nodes(&node.cluster_id).map_err(unavailable)?;
        if nodes.iter().any(|n| n.name == node.node_name) {
            Ok(())
        } else {
            Err(format!(
                "node {} is no longer part of cluster {}",
                node.node_name, node.cluster_id
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ClusterRecord, NodeRecord, NodeRole, SqliteStore};

    fn node(cluster: &str, name: &str) -> NodeRecord {
        NodeRecord {
            cluster_id: cluster.into(),
            name: name.into(),
            role: NodeRole::Worker,
            ordinal: 1,
            vm_id: None,
            ip: None,
            joined: false,
            kubernetes_version: None,
            added_by: None,
        }
    }

    #[test]
    fn only_nodes_of_live_clusters_are_admitted() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().expect("store"));
        let roster = StoreRoster::new(store.clone());
        let key = NodeKey::new("c1", "n1");
        assert!(roster.admits(&key).unwrap_err().contains("unknown"));
        store
            .insert_cluster(&ClusterRecord::for_tests("c1", ClusterState::Running, 1, 1))
            .expect("cluster");
        assert!(roster.admits(&key).unwrap_err().contains("no longer part"));
        store.put_node(&node("c1", "n1")).expect("node");
        assert_eq!(roster.admits(&key), Ok(()));
        // Removed by a scale-down.
        store.delete_node("c1", "n1").expect("remove");
        assert!(roster.admits(&key).is_err());
        // Its cluster deleted (node records kept or not).
        store.put_node(&node("c1", "n1")).expect("node");
        store
            .set_cluster_state("c1", ClusterState::Running, ClusterState::Destroyed, None)
            .expect("state");
        assert!(roster.admits(&key).unwrap_err().contains("deleted"));
    }
}
