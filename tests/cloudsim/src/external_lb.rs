//! A test hook for an operator's load balancer outside CloudStack, as a cluster on a shared
//! network with `externalloadbalanceripaddress` needs one: the operator runs it, CloudStack
//! knows nothing of it.
//!
//! [`ExternalLbRequest`] is what a test asks for (through `SimHandle::add_external_lb` or
//! `POST /sim/external-lb`); [`validate`] turns it into the stored [`ExternalLb`]. The
//! forwarders then serve `ip:port` on the host and inside every node's namespace (hairpin),
//! spreading connections round-robin over the targets' addresses on their network, exactly as
//! a public IP's load-balancer rule is served (see [`crate::forwarding`]).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
use crate::model::{Db, ExternalLb};

/// An external load balancer to add (the JSON body of `POST /sim/external-lb`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalLbRequest {
    /// The address to listen on, in 127.0.0.0/8 and outside every zone's public range.
    pub ip: Ipv4Addr,
    /// The port to listen on.
    pub port: u16,
    /// Target VM ids; they share the network of the first one's default NIC.
    pub targets: Vec<String>,
    /// The port on the targets.
    pub target_port: u16,
}

/// Which listener to remove (the JSON body of `DELETE /sim/external-lb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalLbAddress {
    /// The address.
    pub ip: Ipv4Addr,
    /// The port.
    pub port: u16,
}

/// Why an external load balancer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExternalLbError {
    /// Not in 127.0.0.0/8: the simulator only serves loopback addresses.
    #[error("external load balancer address {0} is not in 127.0.0.0/8")]
    NotLoopback(Ipv4Addr),
    /// Inside a zone's public range, where public IPs are handed out.
    #[error(
        "external load balancer address {ip} is inside the public range {range}; pick an address \
         outside it"
    )]
    InPublicRange {
        /// The address.
        ip: Ipv4Addr,
        /// The zone's public range.
        range: String,
    },
    /// Port 0 on either side.
    #[error("external load balancer ports must not be 0")]
    PortZero,
    /// No targets.
    #[error("an external load balancer needs at least one target VM")]
    NoTargets,
    /// A target VM does not exist.
    #[error("target VM {0} does not exist")]
    UnknownVm(String),
    /// A target has no NIC on the first target's default network.
    #[error("target VM {vm} has no NIC on network {network}, where the other targets are")]
    OtherNetwork {
        /// The VM.
        vm: String,
        /// The network of the first target.
        network: String,
    },
}

/// Checks `request` against the state and returns the record to store.
///
/// # Errors
/// [`ExternalLbError`].
pub fn validate(db: &Db, request: &ExternalLbRequest) -> Result<ExternalLb, ExternalLbError> {
    if !request.ip.is_loopback() {
        return Err(ExternalLbError::NotLoopback(request.ip));
    }
    if let Some(zone) = db
        .zones
        .iter()
        .find(|z| Cidr::parse(&z.public_cidr).is_ok_and(|c| c.contains(request.ip)))
    {
        return Err(ExternalLbError::InPublicRange {
            ip: request.ip,
            range: zone.public_cidr.clone(),
        });
    }
    if request.port == 0 || request.target_port == 0 {
        return Err(ExternalLbError::PortZero);
    }
    let first = request.targets.first().ok_or(ExternalLbError::NoTargets)?;
    let vm = |id: &String| {
        db.vms
            .iter()
            .find(|v| &v.id == id)
            .ok_or_else(|| ExternalLbError::UnknownVm(id.clone()))
    };
    let network = vm(first)?
        .nics
        .first()
        .map(|n| n.network_id.clone())
        .ok_or_else(|| ExternalLbError::UnknownVm(first.clone()))?;
    for id in &request.targets {
        if !vm(id)?.nics.iter().any(|n| n.network_id == network) {
            return Err(ExternalLbError::OtherNetwork {
                vm: id.clone(),
                network,
            });
        }
    }
    Ok(ExternalLb {
        ip: request.ip.to_string(),
        port: request.port,
        network_id: network,
        targets: request.targets.clone(),
        target_port: request.target_port,
    })
}

/// Stores `lb`, replacing one on the same `ip:port`.
pub fn upsert(db: &mut Db, lb: ExternalLb) {
    db.external_lbs
        .retain(|l| !(l.ip == lb.ip && l.port == lb.port));
    db.external_lbs.push(lb);
}

/// Removes the load balancer on `ip:port`; true when there was one.
pub fn remove(db: &mut Db, address: ExternalLbAddress) -> bool {
    let ip = address.ip.to_string();
    let before = db.external_lbs.len();
    db.external_lbs
        .retain(|l| !(l.ip == ip && l.port == address.port));
    db.external_lbs.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Nic, Vm, VmState};

    fn vm(id: &str, networks: &[&str]) -> Vm {
        Vm {
            id: id.into(),
            name: id.into(),
            displayname: id.into(),
            account_id: "a".into(),
            zone_id: "z".into(),
            offering_id: "o".into(),
            template_id: "t".into(),
            state: VmState::Running,
            userdata: None,
            keypairs: Vec::new(),
            ssh_public_keys: Vec::new(),
            dynamically_scalable: true,
            details: Default::default(),
            never_boots: false,
            rootdisksize: None,
            iso_id: None,
            nics: networks
                .iter()
                .map(|n| Nic {
                    id: format!("{id}-{n}"),
                    network_id: (*n).into(),
                    ip: "10.0.0.2".into(),
                    mac: String::new(),
                })
                .collect(),
            created: String::new(),
            node_network: None,
        }
    }

    fn request(ip: &str, targets: &[&str]) -> ExternalLbRequest {
        ExternalLbRequest {
            ip: ip.parse().unwrap(),
            port: 6443,
            targets: targets.iter().map(|t| (*t).to_owned()).collect(),
            target_port: 6443,
        }
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let mut db = crate::store::seed();
        db.vms = vec![
            vm("a", &["shared"]),
            vm("b", &["shared", "x"]),
            vm("c", &["y"]),
        ];
        let refused = |r: ExternalLbRequest| validate(&db, &r).unwrap_err();
        assert_eq!(
            refused(request("10.0.0.1", &["a"])),
            ExternalLbError::NotLoopback("10.0.0.1".parse().unwrap())
        );
        assert!(matches!(
            refused(request("127.64.0.9", &["a"])),
            ExternalLbError::InPublicRange { .. }
        ));
        assert_eq!(
            refused(request("127.99.0.1", &[])),
            ExternalLbError::NoTargets
        );
        assert_eq!(
            refused(request("127.99.0.1", &["a", "nope"])),
            ExternalLbError::UnknownVm("nope".into())
        );
        assert!(matches!(
            refused(request("127.99.0.1", &["a", "c"])),
            ExternalLbError::OtherNetwork { .. }
        ));
        let mut zero = request("127.99.0.1", &["a"]);
        zero.target_port = 0;
        assert_eq!(refused(zero), ExternalLbError::PortZero);
    }

    #[test]
    fn a_second_lb_on_the_same_address_replaces_the_first() {
        let mut db = crate::store::seed();
        db.vms = vec![vm("a", &["shared"]), vm("b", &["x", "shared"])];
        let lb = validate(&db, &request("127.99.0.1", &["a", "b"])).unwrap();
        assert_eq!(
            lb.network_id, "shared",
            "the first target's default network"
        );
        upsert(&mut db, lb);
        let replacement = validate(&db, &request("127.99.0.1", &["a"])).unwrap();
        upsert(&mut db, replacement);
        assert_eq!(db.external_lbs.len(), 1);
        assert_eq!(db.external_lbs[0].targets, vec!["a".to_owned()]);
        let address = ExternalLbAddress {
            ip: "127.99.0.1".parse().unwrap(),
            port: 6443,
        };
        assert!(remove(&mut db, address));
        assert!(!remove(&mut db, address));
    }
}
