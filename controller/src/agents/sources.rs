//! Where a node's enrollment may come from. A token travels in userdata, which the tenant can
//! read; the check makes a leaked token useless from anywhere but the node's own VM, as
//! CloudStack reports it:
//! * on a **shared** network the VM's own NIC address (routable as is);
//! * on an **isolated** network its network's source-NAT public address;
//! * on a **VPC tier** the VPC's source-NAT public address.
//!
//! [`CloudSources`] asks CloudStack (`listVirtualMachines` for the NICs, `listNetworks` for each
//! NIC's network, `listPublicIpAddresses … issourcenat=true` for the NAT address) and
//! [`expected_sources`] decides, without I/O. The hub refuses an enrollment whose source is not
//! among them, before the token is spent.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use super::{AgentFuture, NodeKey};
use crate::cloud::Cloud;
use crate::cloudstack::types::{GuestIpType, Network, PublicIpAddress, VirtualMachine};
use crate::store::Store;

/// The addresses a node's enrollment may come from.
pub trait EnrollmentSources: Send + Sync + 'static {
    /// The allowed source addresses of `node`'s enrollment.
    ///
    /// # Errors
    /// Why they cannot be known now (the node has no VM yet, CloudStack failed); the
    /// enrollment is then refused as unavailable, and the agent retries.
    fn allowed<'a>(&'a self, node: &'a NodeKey) -> AgentFuture<'a, Result<Vec<IpAddr>, String>>;
}

/// The addresses CloudStack says `vm`'s traffic comes from, given its NICs' `networks` and the
/// source-NAT addresses among `public_ips` (of those networks and their VPCs).
pub fn expected_sources(
    vm: &VirtualMachine,
    networks: &[Network],
    public_ips: &[PublicIpAddress],
) -> Vec<IpAddr> {
    let mut out = BTreeSet::new();
    for nic in &vm.nic {
        let Some(network) = nic
            .networkid
            .as_deref()
            .and_then(|id| networks.iter().find(|n| n.id == id))
        else {
            continue;
        };
        match (&network.network_type, &network.vpcid) {
            (GuestIpType::Shared, _) => {
                if let Some(ip) = nic.ipaddress.as_deref().and_then(|a| a.parse().ok()) {
                    out.insert(ip);
                }
            }
            (GuestIpType::Isolated, vpc) => {
                for ip in public_ips.iter().filter(|ip| ip.issourcenat) {
                    let matches = match vpc {
                        Some(vpc) => ip.vpcid.as_deref() == Some(vpc.as_str()),
                        None => ip.associatednetworkid.as_deref() == Some(network.id.as_str()),
                    };
                    if matches && let Ok(addr) = ip.ipaddress.parse() {
                        out.insert(addr);
                    }
                }
            }
            _ => {}
        }
    }
    out.into_iter().collect()
}

/// The allowed sources, looked up in CloudStack for the VM the store records for the node.
pub struct CloudSources {
    store: Arc<dyn Store>,
    cloud: Cloud,
}

impl CloudSources {
    /// Looks nodes up in `store` and their VMs in `cloud`.
    pub fn new(store: Arc<dyn Store>, cloud: Cloud) -> Self {
        CloudSources { store, cloud }
    }

    async fn lookup(&self, node: &NodeKey) -> Result<Vec<IpAddr>, String> {
        let record = self
            .store
            .nodes(&node.cluster_id)
            .map_err(|err| format!("cannot read the node: {err}"))?
            .into_iter()
            .find(|n| n.name == node.node_name)
            .ok_or_else(|| format!("node {node} is unknown"))?;
        let vm_id = record
            .vm_id
            .ok_or_else(|| format!("node {node} has no VM recorded yet"))?;
        let cloudstack = |err: crate::cloudstack::CloudStackError| format!("CloudStack: {err}");
        let vm = self
            .cloud
            .vm(&vm_id)
            .await
            .map_err(cloudstack)?
            .ok_or_else(|| format!("VM {vm_id} of node {node} is gone"))?;
        let mut networks = Vec::new();
        let mut public_ips = Vec::new();
        for id in vm.nic.iter().filter_map(|nic| nic.networkid.as_deref()) {
            let Some(network) = self.cloud.network(id).await.map_err(cloudstack)? else {
                continue;
            };
            if network.network_type == GuestIpType::Isolated {
                let scope = match &network.vpcid {
                    Some(vpc) => ("vpcid", vpc.as_str()),
                    None => ("associatednetworkid", network.id.as_str()),
                };
                let mut params = vec![scope, ("issourcenat", "true"), ("listall", "true")];
                // A project's address is listed only with its project.
                if let Some(project) = &network.projectid {
                    params.push(("projectid", project.as_str()));
                }
                public_ips.extend(
                    self.cloud
                        .client()
                        .list_all::<PublicIpAddress>(&params)
                        .await
                        .map_err(cloudstack)?,
                );
            }
            networks.push(network);
        }
        Ok(expected_sources(&vm, &networks, &public_ips))
    }
}

impl EnrollmentSources for CloudSources {
    fn allowed<'a>(&'a self, node: &'a NodeKey) -> AgentFuture<'a, Result<Vec<IpAddr>, String>> {
        Box::pin(self.lookup(node))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vm(nics: serde_json::Value) -> VirtualMachine {
        serde_json::from_value(json!({"id": "vm-1", "name": "n1", "state": "Running", "nic": nics}))
            .expect("vm")
    }

    fn network(id: &str, kind: &str, vpc: Option<&str>) -> Network {
        serde_json::from_value(json!({"id": id, "name": id, "type": kind, "vpcid": vpc}))
            .expect("network")
    }

    fn public_ip(
        addr: &str,
        snat: bool,
        network: Option<&str>,
        vpc: Option<&str>,
    ) -> PublicIpAddress {
        serde_json::from_value(json!({
            "id": addr, "ipaddress": addr, "issourcenat": snat,
            "associatednetworkid": network, "vpcid": vpc
        }))
        .expect("ip")
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().expect("ip")).collect()
    }

    #[test]
    fn a_shared_network_vm_enrolls_from_its_own_address() {
        let vm = vm(json!([{"networkid": "shared", "ipaddress": "10.1.0.7"}]));
        let networks = [network("shared", "Shared", None)];
        assert_eq!(expected_sources(&vm, &networks, &[]), ips(&["10.1.0.7"]));
    }

    #[test]
    fn an_isolated_network_vm_enrolls_from_its_networks_source_nat_only() {
        let vm = vm(json!([{"networkid": "iso", "ipaddress": "10.1.1.5"}]));
        let networks = [network("iso", "Isolated", None)];
        let public = [
            public_ip("192.0.2.10", true, Some("iso"), None),
            public_ip("192.0.2.11", false, Some("iso"), None),
            public_ip("192.0.2.12", true, Some("other"), None),
        ];
        assert_eq!(
            expected_sources(&vm, &networks, &public),
            ips(&["192.0.2.10"])
        );
    }

    #[test]
    fn a_vpc_tier_vm_enrolls_from_its_vpcs_source_nat() {
        let vm = vm(json!([{"networkid": "tier", "ipaddress": "10.2.0.5"}]));
        let networks = [network("tier", "Isolated", Some("vpc-1"))];
        let public = [
            public_ip("192.0.2.20", true, None, Some("vpc-1")),
            public_ip("192.0.2.21", true, None, Some("vpc-2")),
        ];
        assert_eq!(
            expected_sources(&vm, &networks, &public),
            ips(&["192.0.2.20"])
        );
    }

    #[test]
    fn a_vm_without_known_networks_may_enroll_from_nowhere() {
        let vm = vm(json!([{"networkid": "l2", "ipaddress": "10.3.0.5"}]));
        assert!(expected_sources(&vm, &[network("l2", "L2", None)], &[]).is_empty());
        assert!(expected_sources(&vm, &[], &[]).is_empty());
    }
}
