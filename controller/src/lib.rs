//! `cks-controller`: the CKS API endpoint, durable cluster workflows, and the agents' hub.
//!
//! * [`api`]: CloudStack's `/client/api`, answering the Kubernetes commands (signed requests,
//!   caller identity from CloudStack) and forwarding every other command to CloudStack;
//! * [`workflow`]: create/delete as durable step lists, resumed after a restart;
//! * [`cloud`] over [`cloudstack`]: what the workflows ask CloudStack to do;
//! * [`agents`]: enrollment and the per-node gRPC stream (contract 2), [`pki`] its CA;
//! * [`store`]: SQLite by default; [`seal`] keeps kubeconfigs and passwords encrypted at rest;
//! * [`settings`]: the `cloud.kubernetes.*` settings; [`server`]: wiring for `serve`.

pub mod agents;
pub mod api;
pub mod cli;
pub mod cloud;
pub mod cloudstack;
pub mod config;
pub mod context;
pub mod crashpoint;
pub mod jobs;
pub mod kubeconfig;
pub mod listen;
pub mod pki;
pub mod reconcile;
pub mod render;
pub mod reseal;
pub mod seal;
pub mod server;
pub mod settings;
pub mod store;
pub mod userdata;
pub mod versions;
pub mod workflow;

/// `err` and its causes, joined with `: ` (for logs and error texts; never holds secrets,
/// as no error of this crate formats one).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod testkit;
