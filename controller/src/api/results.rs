//! What a finished cluster operation's job reports, in CKS's shapes: the engine hands over the
//! cluster and the outcome, this renders `jobresult`.

use serde_json::json;

use crate::context::Context;
use crate::store::{ClusterRecord, WorkflowKind};
use crate::workflow::JobResults;
use crate::workflow::engine::ResultFuture;

/// The API's [`JobResults`]: `{"kubernetescluster": …}` for create, start, scale and upgrade,
/// `{"success": true}` for stop and delete (as CKS's commands answer), and CKS's failure text.
pub struct ApiResults {
    ctx: Context,
}

impl ApiResults {
    /// Results rendered with `ctx` (the cluster object looks up zones, offerings and VMs).
    pub fn new(ctx: Context) -> Self {
        ApiResults { ctx }
    }
}

impl JobResults for ApiResults {
    fn succeeded<'a>(&'a self, kind: WorkflowKind, cluster: &'a ClusterRecord) -> ResultFuture<'a> {
        Box::pin(async move {
            match kind {
                WorkflowKind::Stop | WorkflowKind::Delete => json!({ "success": true }),
                WorkflowKind::Create
                | WorkflowKind::Start
                | WorkflowKind::Scale
                | WorkflowKind::Upgrade => {
                    match crate::render::clusters(&self.ctx, std::slice::from_ref(cluster)).await {
                        Ok(mut objects) => {
                            json!({ "kubernetescluster": objects.pop().unwrap_or_default() })
                        }
                        Err(err) => {
                            tracing::warn!(error = %err.text, "cannot render the cluster for its job");
                            json!({ "kubernetescluster": { "id": cluster.id, "name": cluster.name, "state": cluster.state.as_str() } })
                        }
                    }
                }
            }
        })
    }

    fn failed(&self, kind: WorkflowKind, cluster: &ClusterRecord, reason: &str) -> String {
        format!(
            "Failed to {} Kubernetes cluster : {}. {reason}",
            kind.as_str(),
            cluster.name
        )
    }
}
