//! The network rules a cluster makes on its public IP, and how it tells them from the rules the
//! IP's owner makes there: the API's firewall rule (TCP 6443 from anywhere) and its `api-lb`
//! load balancer rule (6443 → 6443 over the control nodes), and, when the cluster has a key
//! pair, the SSH firewall range 2222 … 2222+n-1 and one port forward per node (2222+i → 22).
//!
//! # The cluster's rules are the tagged ones
//! Each rule is tagged `cks.cluster=<cluster id>` as soon as CloudStack has made it (resource
//! types `FirewallRule`, `LoadBalancer`, `PortForwardingRule`). The delete and the SSH sync
//! remove only the cluster's rules, and create and scale count only them as already there: a
//! rule the owner made on a port the cluster uses (2222-2222 from their office, 6443 from another
//! CIDR, a forward to a node) is never adopted, resized or removed.
//!
//! # Made but not tagged: crash safety
//! CloudStack makes a rule and tags it in two calls. A controller killed between them, a step
//! cut off there by a delete, or a step that fails or runs out of time there, leaves a rule of
//! the cluster without its tag: an *orphan*. An orphan has the exact shape of a rule the
//! cluster makes — TCP from exactly `0.0.0.0/0` over 6443-6443 or a range starting at 2222;
//! `api-lb` from 6443 to 6443; a forward from the SSH range to port 22 of one of the cluster's
//! VMs — and CloudStack refuses to make a second rule beside it (a firewall rule over
//! overlapping ports with a source CIDR in common, or a forward or load balancer rule on a
//! public port already taken). So the cluster takes an untagged rule of that shape for its own
//! orphan where one can exist:
//! * on a network the cluster made (`network_created`): each of its public IPs was acquired for
//!   the cluster and goes, with every rule on it, when the delete deletes the network, so the
//!   owner has nothing there to lose;
//! * on the owner's network, when a rule-making step of the cluster (firewall, load-balancer,
//!   node-rules) did not finish: the running step on its second run or later, or such a step of
//!   an earlier workflow that was cancelled, failed or ran out of time, as the step journal
//!   records.
//!
//! A step keeps such an orphan by tagging it (adoption); the delete removes it. Anywhere else —
//! a first run on the owner's network — an untagged rule of that shape is the owner's: the
//! create-time validation found the cluster's ports free on the network's source NAT address,
//! so the owner made it since. The step leaves it alone; CloudStack then refuses the cluster's
//! own rule, naming the owner's, and the step fails with that message.
//!
//! What this costs: on the owner's network, a rule identical to one of the cluster's, made by
//! the owner while a rule step of the cluster is unfinished, is taken for the cluster's.
//!
//! # Clusters made before rules were tagged
//! A cluster whose create workflow was begun by an older controller (its
//! [`WorkflowRecord::rules_tagged`] is false, or no create workflow is recorded) has untagged
//! rules that only their ports tell apart. For such a cluster the old port match still counts,
//! in the delete and in the SSH sync, as before: firewall rules over 6443-6443 and (with a key
//! pair) starting at 2222, whatever their source CIDR; `api-lb` on 6443; SSH forwards to its
//! VMs. What it makes from now on is tagged. It keeps the old risk to the owner's rules until
//! it is deleted; nothing is re-tagged behind the owner's back at start-up.

use std::collections::BTreeSet;

use tracing::info;

use super::step::{StepCtx, StepError};
use super::vms::{cluster_vms, network_id};
use crate::cloud::CLUSTER_TAG;
use crate::cloudstack::types::{
    FirewallRule, LoadBalancerRule, PortForwardingRule, Tag, tag_value,
};
use crate::store::{ClusterRecord, NodeRecord, Step, StepStatus, WorkflowKind, WorkflowRecord};

/// The API server port.
pub const API_PORT: u16 = 6443;
/// First public port of the optional SSH port forwards (CKS's 2222 + i).
pub const SSH_PORT_BASE: u16 = 2222;
/// How many SSH forwards a cluster may have at most (ports 2222…3221): the range in which a
/// forward or firewall rule can be one of the cluster's SSH rules.
const SSH_PORT_SPAN: u16 = 1000;
/// The nodes' SSH port, the forwards' target.
const SSH_PORT: u16 = 22;
/// The name of the API's load balancer rule (CKS's).
pub const API_LB_NAME: &str = "api-lb";
/// The source CIDR of every firewall rule the cluster makes.
const ANYWHERE: &str = "0.0.0.0/0";
/// The steps that make rules: an unfinished one may have left an orphan.
const RULE_STEPS: [Step; 3] = [Step::Firewall, Step::LoadBalancer, Step::NodeRules];

/// The public SSH port range for `nodes` nodes (CKS's 2222 … 2222+n-1), when the cluster has a
/// key pair (its owner's own access; the controller never uses SSH).
pub fn ssh_ports(cluster: &ClusterRecord, nodes: usize) -> Option<(u16, u16)> {
    cluster.keypair.as_ref()?;
    let count = u16::try_from(nodes).ok()?.max(1);
    Some((SSH_PORT_BASE, SSH_PORT_BASE + count - 1))
}

/// A kind of rule, as `createTags` names it.
#[derive(Debug, Clone, Copy)]
enum RuleKind {
    Firewall,
    LoadBalancer,
    PortForwarding,
}

impl RuleKind {
    fn resource_type(self) -> &'static str {
        match self {
            Self::Firewall => "FirewallRule",
            Self::LoadBalancer => "LoadBalancer",
            Self::PortForwarding => "PortForwardingRule",
        }
    }
}

/// What a rule's tags say about whose it is.
enum Mark {
    /// Tagged with this cluster's id.
    Ours,
    /// Tagged with another cluster's id.
    Another,
    /// No cluster tag: the owner's, an orphan, or a rule of a cluster made before tagging.
    Untagged,
}

/// Which rules on a cluster's public IP are the cluster's (see the module docs).
#[derive(Debug, Clone)]
pub struct Ownership {
    cluster_id: String,
    /// The cluster has a key pair: SSH rules can be its.
    ssh: bool,
    /// The cluster's VMs: a forward to one of them can be its.
    vms: BTreeSet<String>,
    /// An untagged rule of the cluster's shape may be its orphan.
    orphans: bool,
    /// The cluster was made before rules were tagged: the old port match counts too.
    legacy: bool,
}

// === impl Ownership ===

impl Ownership {
    /// How the cluster of `sc` tells its rules, `vms` being its VMs (only forwards need them).
    ///
    /// # Errors
    /// The store failed to read the cluster's workflows.
    pub fn of(sc: &StepCtx<'_>, vms: BTreeSet<String>) -> Result<Self, StepError> {
        let history = sc.ctx.store.workflows(&sc.cluster.id)?;
        Ok(Ownership {
            cluster_id: sc.cluster.id.clone(),
            ssh: sc.cluster.keypair.is_some(),
            vms,
            orphans: sc.cluster.network_created || unfinished_rule_step(sc, &history),
            legacy: made_before_tagging(&history),
        })
    }

    fn mark(&self, tags: &[Tag]) -> Mark {
        match tag_value(tags, CLUSTER_TAG) {
            Some(id) if id == self.cluster_id => Mark::Ours,
            Some(_) => Mark::Another,
            None => Mark::Untagged,
        }
    }

    /// True when the firewall rule is the cluster's.
    pub fn firewall(&self, rule: &FirewallRule) -> bool {
        match self.mark(&rule.tags) {
            Mark::Ours => true,
            Mark::Another => false,
            Mark::Untagged => {
                let shaped = is_tcp(rule.protocol.as_deref())
                    && rule.cidrlist.as_deref().map(str::trim) == Some(ANYWHERE);
                self.firewall_ports(rule) && ((self.orphans && shaped) || self.legacy)
            }
        }
    }

    /// True when the load balancer rule is the cluster's.
    pub fn load_balancer(&self, rule: &LoadBalancerRule) -> bool {
        match self.mark(&rule.tags) {
            Mark::Ours => true,
            Mark::Another => false,
            Mark::Untagged => {
                let api =
                    rule.name.as_deref() == Some(API_LB_NAME) && rule.publicport == Some(API_PORT);
                api && ((self.orphans && rule.privateport == Some(API_PORT)) || self.legacy)
            }
        }
    }

    /// True when the port forwarding rule is the cluster's.
    pub fn forward(&self, rule: &PortForwardingRule) -> bool {
        match self.mark(&rule.tags) {
            Mark::Ours => true,
            Mark::Another => false,
            Mark::Untagged => {
                let to_ours = rule
                    .virtualmachineid
                    .as_ref()
                    .is_some_and(|vm| self.vms.contains(vm));
                (self.orphans || self.legacy) && to_ours && is_ssh_forward(rule)
            }
        }
    }

    /// The ports of a firewall rule the cluster makes: 6443 alone, or (with a key pair) a
    /// range starting at 2222.
    fn firewall_ports(&self, rule: &FirewallRule) -> bool {
        let api = rule.startport == Some(API_PORT) && rule.endport == Some(API_PORT);
        let ssh = self.ssh
            && rule.startport == Some(SSH_PORT_BASE)
            && rule.endport.is_some_and(in_ssh_span);
        api || ssh
    }
}

fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_some_and(|p| p.eq_ignore_ascii_case("tcp"))
}

fn in_ssh_span(port: u16) -> bool {
    (SSH_PORT_BASE..SSH_PORT_BASE + SSH_PORT_SPAN).contains(&port)
}

/// True when a forward has the shape of the cluster's SSH forwards: one port of the SSH range
/// to port 22.
fn is_ssh_forward(rule: &PortForwardingRule) -> bool {
    rule.publicport.is_some_and(in_ssh_span)
        && rule
            .publicendport
            .is_none_or(|end| Some(end) == rule.publicport)
        && rule.privateport == Some(SSH_PORT)
}

/// True when a rule-making step of the cluster did not finish: the running step ran before, or
/// such a step of another workflow of the cluster ended cancelled, failed or timed out.
fn unfinished_rule_step(sc: &StepCtx<'_>, history: &[WorkflowRecord]) -> bool {
    let this_ran_before = RULE_STEPS.contains(&sc.step) && sc.attempt() > 1;
    this_ran_before
        || history.iter().any(|workflow| {
            workflow.steps.iter().any(|step| {
                let running_now = workflow.id == sc.workflow.id && step.name == sc.step;
                RULE_STEPS.contains(&step.name) && step.status != StepStatus::Done && !running_now
            })
        })
}

/// True when no create workflow of the cluster was begun by a controller that tags rules.
fn made_before_tagging(history: &[WorkflowRecord]) -> bool {
    !history
        .iter()
        .any(|w| w.kind == WorkflowKind::Create && w.rules_tagged)
}

/// Keeps a rule of the cluster found on the IP: tags it unless it carries the tag (an orphan
/// adopted, or a rule of a cluster made before tagging).
async fn keep(sc: &StepCtx<'_>, kind: RuleKind, id: &str, tags: &[Tag]) -> Result<(), StepError> {
    if tag_value(tags, CLUSTER_TAG).is_some() {
        return Ok(());
    }
    info!(rule = %id, kind = kind.resource_type(), "untagged rule of the cluster adopted");
    sc.ctx
        .cloud
        .tag(kind.resource_type(), &[id], &sc.cluster.id)
        .await?;
    Ok(())
}

/// Tags a rule just made. A crash before the tag lands leaves an orphan, which the step's next
/// run adopts (the crash point lets the crash matrix prove it).
async fn tag_new(sc: &StepCtx<'_>, kind: RuleKind, id: &str) -> Result<(), StepError> {
    sc.crash_point("rule-made");
    sc.ctx
        .cloud
        .tag(kind.resource_type(), &[id], &sc.cluster.id)
        .await?;
    Ok(())
}

/// Makes sure the cluster's firewall rule TCP `start..=end` from anywhere is on the IP: its
/// own (adopted if untagged), else a new one, tagged. True when one was made.
///
/// # Errors
/// CloudStack refused something (a rule of the owner's over the same ports and CIDR, say).
pub async fn open_firewall(
    sc: &StepCtx<'_>,
    owned: &Ownership,
    existing: &[FirewallRule],
    ip_id: &str,
    (start, end): (u16, u16),
) -> Result<bool, StepError> {
    let present = existing
        .iter()
        .find(|r| owned.firewall(r) && r.startport == Some(start) && r.endport == Some(end));
    if let Some(rule) = present {
        keep(sc, RuleKind::Firewall, &rule.id, &rule.tags).await?;
        return Ok(false);
    }
    let rule = sc.ctx.cloud.create_firewall_rule(ip_id, start, end).await?;
    tag_new(sc, RuleKind::Firewall, &rule.id).await?;
    Ok(true)
}

/// The cluster's `api-lb` rule on the IP: its own (adopted if untagged), else a new one,
/// tagged.
///
/// # Errors
/// CloudStack refused something.
pub async fn api_load_balancer(
    sc: &StepCtx<'_>,
    ip_id: &str,
    network_id: &str,
) -> Result<LoadBalancerRule, StepError> {
    let owned = Ownership::of(sc, BTreeSet::new())?;
    let cloud = &sc.ctx.cloud;
    let present = cloud
        .lb_rules(ip_id)
        .await?
        .into_iter()
        .find(|r| owned.load_balancer(r) && r.publicport == Some(API_PORT));
    if let Some(rule) = present {
        keep(sc, RuleKind::LoadBalancer, &rule.id, &rule.tags).await?;
        return Ok(rule);
    }
    let rule = cloud
        .create_lb_rule(
            ip_id,
            network_id,
            API_LB_NAME,
            "LB rule for API access",
            API_PORT,
        )
        .await?;
    tag_new(sc, RuleKind::LoadBalancer, &rule.id).await?;
    Ok(rule)
}

/// Makes the nodes' SSH access match the nodes the cluster has now: one firewall rule over
/// 2222 … 2222+n-1 and node `i` (by ordinal) forwarded from 2222+i to its port 22. The
/// cluster's forwards to VMs that left and its firewall rule over another range are removed,
/// missing ones made; nothing is done twice, and no rule of the owner's is touched. Only for
/// isolated networks with a key pair (without one, CKS opens no SSH access either).
///
/// # Errors
/// CloudStack refused something.
pub async fn node_rules(sc: &StepCtx<'_>) -> Result<String, StepError> {
    let Some(ip_id) = sc.cluster.public_ip_id.clone() else {
        return Ok("no public IP: no node rules".into());
    };
    let mut nodes: Vec<&NodeRecord> = sc.nodes.iter().filter(|n| n.vm_id.is_some()).collect();
    nodes.sort_by_key(|n| n.ordinal);
    let network_id = network_id(&sc.cluster)?;
    let Some((start, end)) = ssh_ports(&sc.cluster, nodes.len()) else {
        return Ok("no key pair: no SSH access to open".into());
    };
    let owned = Ownership::of(sc, cluster_vms(sc).await?)?;
    let mut changed = ssh_firewall(sc, &owned, &ip_id, (start, end)).await?;
    let wanted: Vec<(u16, &str)> = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| Some((start + u16::try_from(i).ok()?, n.vm_id.as_deref()?)))
        .collect();
    changed += ssh_forwards(sc, &owned, &ip_id, &network_id, &wanted).await?;
    Ok(format!(
        "SSH {start}-{end} → {} nodes ({changed} rules changed)",
        wanted.len()
    ))
}

/// The cluster's SSH firewall rule over exactly `start..=end`: its rules over another range go
/// first (CloudStack refuses overlapping ones), then the missing one is made. How many rules
/// changed.
async fn ssh_firewall(
    sc: &StepCtx<'_>,
    owned: &Ownership,
    ip_id: &str,
    (start, end): (u16, u16),
) -> Result<usize, StepError> {
    let cloud = &sc.ctx.cloud;
    let existing = cloud.firewall_rules(ip_id).await?;
    let mut changed = 0;
    let mut kept = Vec::new();
    for rule in existing
        .iter()
        .filter(|r| owned.firewall(r) && r.startport == Some(start))
    {
        if rule.endport == Some(end) {
            kept.push(rule.clone());
        } else {
            cloud.delete_firewall_rule(&rule.id).await?;
            changed += 1;
        }
    }
    if open_firewall(sc, owned, &kept, ip_id, (start, end)).await? {
        changed += 1;
    }
    Ok(changed)
}

/// The cluster's SSH forwards exactly `wanted` (public port, VM): its others removed, the
/// missing ones made. How many rules changed.
async fn ssh_forwards(
    sc: &StepCtx<'_>,
    owned: &Ownership,
    ip_id: &str,
    network_id: &str,
    wanted: &[(u16, &str)],
) -> Result<usize, StepError> {
    let cloud = &sc.ctx.cloud;
    let mut changed = 0;
    let mut present = Vec::new();
    for rule in cloud
        .pf_rules(ip_id)
        .await?
        .iter()
        .filter(|r| owned.forward(r))
    {
        let target = (
            rule.publicport.unwrap_or_default(),
            rule.virtualmachineid.as_deref().unwrap_or_default(),
        );
        if wanted.contains(&target) && rule.privateport == Some(SSH_PORT) {
            keep(sc, RuleKind::PortForwarding, &rule.id, &rule.tags).await?;
            present.push(target.0);
        } else {
            cloud.delete_pf_rule(&rule.id).await?;
            changed += 1;
        }
    }
    for (port, vm) in wanted {
        if !present.contains(port) {
            let rule = cloud
                .create_pf_rule(ip_id, network_id, vm, *port, SSH_PORT)
                .await?;
            tag_new(sc, RuleKind::PortForwarding, &rule.id).await?;
            changed += 1;
        }
    }
    Ok(changed)
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
