//! Durable workflows: each cluster operation is a fixed list of steps; the [`Engine`] begins it
//! (state, job and workflow in one transaction), runs its steps in order committing each step's
//! start and outcome, and ends it (state, job result, workflow) in one transaction.
//!
//! * [`state`]: the CKS transition table, which alone decides whether an operation may begin;
//! * [`step`]: the step interface ([`StepCtx`](step::StepCtx), [`StepError`](step::StepError));
//! * [`kube`], [`vms`] and [`rules`]: what every step family asks of the agents and of
//!   CloudStack, [`rules`] being the network rules on the cluster's public IP and how the
//!   cluster tells its own from the IP owner's;
//! * the step families — [`create`], [`delete`], [`power`] (stop, start), [`scale`],
//!   [`upgrade`] — each built only on the modules above;
//! * [`engine`]: the owner of every operation, and the only place that maps steps to families.
//!
//! Every step is idempotent: it first looks for what an earlier, interrupted run of itself made
//! (VMs by their pre-chosen names and tags, rules on the cluster's public IP by their tags,
//! agent commands by deterministic ids that the agent journals), and only makes what is
//! missing. So a controller killed at any point and started again resumes every running
//! workflow from its first unfinished step, and nothing is made twice.
//!
//! ```text
//!  create:  network → public-ip → firewall → plan-nodes → deploy-nodes → load-balancer
//!           → init-control-plane → join-control-planes → join-workers → apply-manifests
//!           → wait-ready → kubeconfig → detach-iso          (Created → Starting → Running | Error)
//!  delete:  delete-rules → delete-vms → delete-network → forget   (any → Destroying → Destroyed)
//!  stop:    stop-vms                                  (Running | Alert → Stopping → Stopped | Alert)
//!  start:   start-vms → wait-ready                     (Stopped → Starting → Running | Alert)
//!  scale:   scale-offering → plan-workers → deploy-nodes → join-workers → wait-ready
//!           → detach-iso → drain-nodes → remove-nodes → node-rules
//!           rollback: roll-back → node-rules  (Running | Alert → Scaling → Running | Alert;
//!                                              Stopped → ScalingStoppedCluster → Stopped | Alert)
//!  upgrade: attach-iso → upgrade-nodes → detach-iso   rollback: detach-iso
//!                                              (Running | Alert → Upgrading → Running | Alert)
//! ```

pub mod create;
pub mod delete;
pub mod engine;
pub mod kube;
pub mod power;
pub mod rules;
pub mod scale;
pub mod state;
pub mod step;
pub mod upgrade;
pub mod vms;

pub use engine::{Engine, JobResults, Operation, StartError, Target};
pub use kube::{KUBECONFIG_SECRET, REGISTRY_PASSWORD_SECRET};
pub use rules::{API_PORT, SSH_PORT_BASE};
