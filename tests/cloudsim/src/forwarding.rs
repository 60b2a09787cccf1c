//! What the simulated virtual routers forward: derived, without I/O, from the state.
//!
//! [`table`] turns the public IPs and their port-forwarding, load-balancer and firewall rules
//! into a [`ForwardingTable`]: one [`PublicListener`] per public `ip:port` that must accept TCP,
//! with its backends (guest `ip:port` of *running* VMs), its balancing algorithm and the source
//! CIDRs the firewall lets in. A node runner serves that table (see [`crate::nodes`]); the table
//! is recomputed after every change of the state, so what the API says is what a client gets.
//!
//! Like CloudStack's virtual router:
//! * a port-forwarding rule maps each public port of its range to the private port at the same
//!   offset (a single private port takes the whole range);
//! * a load-balancer rule spreads connections over its running members;
//! * traffic from outside the guest network is admitted only when a firewall rule on the same
//!   public IP covers the port and the client's address (rules created with
//!   `openfirewall=true`, the default, add that firewall rule); traffic from a node of the same
//!   network (hairpin) is not subject to the ingress firewall;
//! * only TCP is forwarded (UDP rules are listed but not served).
//!
//! An operator's load balancer outside CloudStack ([`crate::model::ExternalLb`], added with
//! `SimHandle::add_external_lb`) is one more listener: its `ip:port` spread round-robin over the
//! running targets' addresses on its network, open to every source.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::model::{Db, RuleKind, VmState};

/// Public ports a single rule may open; larger ranges are cut (and logged).
pub const MAX_PORTS_PER_RULE: u32 = 1024;

/// Everything the virtual routers forward.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardingTable {
    /// Listeners, sorted by address.
    pub listeners: Vec<PublicListener>,
    /// Each isolated network's source NAT address (the address its nodes appear from when they
    /// reach another network's public IP).
    pub source_nat: BTreeMap<String, Ipv4Addr>,
}

/// One public `ip:port` accepting TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicListener {
    /// The public address.
    pub addr: SocketAddrV4,
    /// The guest network behind the public IP.
    pub network_id: String,
    /// Where connections go; empty when the target VMs are not running (connections are then
    /// closed at once).
    pub backends: Vec<Backend>,
    /// How a backend is chosen.
    pub balance: Balance,
    /// Source networks the firewall admits from outside the guest network.
    pub allowed: Vec<SourceCidr>,
}

/// A guest `ip:port` behind a public port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The VM.
    pub vm_id: String,
    /// Its address on the rule's network.
    pub addr: SocketAddrV4,
}

/// Load-balancing algorithms (CloudStack's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each new connection goes to the next backend (port forwarding has one backend).
    RoundRobin,
    /// The backend with the fewest open connections.
    LeastConn,
    /// A backend chosen by the client address, so one client always lands on the same one.
    Source,
}

/// An IPv4 source network (`0.0.0.0/0` .. `a.b.c.d/32`) from a rule's `cidrlist`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceCidr {
    network: u32,
    prefix: u8,
}

// === impl SourceCidr ===

impl SourceCidr {
    /// Parses `a.b.c.d/n` (n in 0..=32) or a bare address (`/32`).
    pub fn parse(text: &str) -> Option<SourceCidr> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, prefix.parse::<u8>().ok()?),
            None => (text, 32),
        };
        if prefix > 32 {
            return None;
        }
        let addr: Ipv4Addr = addr.parse().ok()?;
        Some(SourceCidr {
            network: u32::from(addr) & Self::mask(prefix),
            prefix,
        })
    }

    fn mask(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }

    /// True when `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == self.network
    }
}

// === impl PublicListener ===

impl PublicListener {
    /// Whether the firewall admits a client at `source` coming from outside the network.
    pub fn admits(&self, source: Ipv4Addr) -> bool {
        self.allowed.iter().any(|cidr| cidr.contains(source))
    }
}

fn balance_of(algorithm: Option<&str>) -> Balance {
    match algorithm {
        Some("leastconn") => Balance::LeastConn,
        Some("source") => Balance::Source,
        _ => Balance::RoundRobin,
    }
}

/// The guest address of `vm_id` on `network_id` when the VM runs.
fn guest_ip(db: &Db, vm_id: &str, network_id: Option<&str>) -> Option<Ipv4Addr> {
    let vm = db
        .vms
        .iter()
        .find(|v| v.id == vm_id && v.state == VmState::Running)?;
    let nic = match network_id {
        Some(network) => vm.nics.iter().find(|n| n.network_id == network)?,
        None => vm.nics.first()?,
    };
    nic.ip.parse().ok()
}

/// Computes what must be forwarded (see the module documentation).
pub fn table(db: &Db) -> ForwardingTable {
    let mut listeners: BTreeMap<SocketAddrV4, PublicListener> = BTreeMap::new();
    for rule in db
        .rules
        .iter()
        .filter(|r| r.kind != RuleKind::Firewall && matches!(r.protocol.as_str(), "tcp" | "all"))
    {
        let Some(ip) = db.public_ips.iter().find(|ip| ip.id == rule.ip_id) else {
            continue;
        };
        let (Ok(public), Some(network_id)) = (ip.ip.parse::<Ipv4Addr>(), ip.network_id.clone())
        else {
            continue;
        };
        let (Some(start), Some(private_start)) = (rule.start_port, rule.private_start) else {
            continue;
        };
        let end = rule.end_port.unwrap_or(start).max(start);
        let private_end = rule.private_end.unwrap_or(private_start).max(private_start);
        let ports = u32::from(end) - u32::from(start) + 1;
        if ports > MAX_PORTS_PER_RULE {
            tracing::warn!(
                rule = %rule.id,
                ports,
                max = MAX_PORTS_PER_RULE,
                "rule opens too many ports; only the first ones are forwarded"
            );
        }
        let members: Vec<&str> = match rule.kind {
            RuleKind::PortForwarding => rule.vm_id.as_deref().into_iter().collect(),
            _ => rule.vm_ids.iter().map(String::as_str).collect(),
        };
        for offset in 0..ports.min(MAX_PORTS_PER_RULE) {
            let Ok(offset) = u16::try_from(offset) else {
                break;
            };
            let port = start.saturating_add(offset);
            let private = if private_end == private_start {
                private_start
            } else {
                private_start.saturating_add(offset).min(private_end)
            };
            let backends = members
                .iter()
                .filter_map(|vm| {
                    guest_ip(db, vm, Some(&network_id)).map(|ip| Backend {
                        vm_id: (*vm).to_owned(),
                        addr: SocketAddrV4::new(ip, private),
                    })
                })
                .collect();
            let addr = SocketAddrV4::new(public, port);
            listeners.insert(
                addr,
                PublicListener {
                    addr,
                    network_id: network_id.clone(),
                    backends,
                    balance: balance_of(rule.algorithm.as_deref()),
                    allowed: allowed_sources(db, &rule.ip_id, port),
                },
            );
        }
    }
    for lb in &db.external_lbs {
        let Ok(ip) = lb.ip.parse::<Ipv4Addr>() else {
            continue;
        };
        let addr = SocketAddrV4::new(ip, lb.port);
        let backends = lb
            .targets
            .iter()
            .filter_map(|vm| {
                guest_ip(db, vm, Some(&lb.network_id)).map(|ip| Backend {
                    vm_id: vm.clone(),
                    addr: SocketAddrV4::new(ip, lb.target_port),
                })
            })
            .collect();
        listeners.insert(
            addr,
            PublicListener {
                addr,
                network_id: lb.network_id.clone(),
                backends,
                balance: Balance::RoundRobin,
                allowed: SourceCidr::parse("0.0.0.0/0").into_iter().collect(),
            },
        );
    }
    let source_nat = db
        .public_ips
        .iter()
        .filter(|ip| ip.source_nat)
        .filter_map(|ip| Some((ip.network_id.clone()?, ip.ip.parse().ok()?)))
        .collect();
    ForwardingTable {
        listeners: listeners.into_values().collect(),
        source_nat,
    }
}

/// The source CIDRs of the TCP firewall rules on `ip_id` that cover `port`.
fn allowed_sources(db: &Db, ip_id: &str, port: u16) -> Vec<SourceCidr> {
    db.rules
        .iter()
        .filter(|r| r.kind == RuleKind::Firewall && r.ip_id == ip_id)
        .filter(|r| match r.protocol.as_str() {
            "all" => true,
            "tcp" => match (r.start_port, r.end_port) {
                (Some(start), end) => (start..=end.unwrap_or(start)).contains(&port),
                (None, _) => true,
            },
            _ => false,
        })
        .flat_map(|r| r.cidrs.split(','))
        .filter_map(SourceCidr::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Nic, PublicIp, Rule, Vm};

    fn vm(id: &str, ip: &str, state: VmState) -> Vm {
        Vm {
            id: id.into(),
            name: id.into(),
            displayname: id.into(),
            account_id: "a".into(),
            zone_id: "z".into(),
            offering_id: "o".into(),
            template_id: "t".into(),
            state,
            userdata: None,
            keypairs: Vec::new(),
            ssh_public_keys: Vec::new(),
            dynamically_scalable: true,
            details: Default::default(),
            never_boots: false,
            rootdisksize: None,
            iso_id: None,
            nics: vec![Nic {
                id: format!("nic-{id}"),
                network_id: "net".into(),
                ip: ip.into(),
                mac: "02:00:00:00:00:01".into(),
            }],
            created: String::new(),
            node_network: None,
        }
    }

    fn rule(kind: RuleKind, ports: (u16, u16), private: (u16, u16), vms: &[&str]) -> Rule {
        Rule {
            id: format!("{kind:?}-{}", ports.0),
            kind,
            ip_id: "ip".into(),
            account_id: "a".into(),
            protocol: "tcp".into(),
            start_port: Some(ports.0),
            end_port: Some(ports.1),
            private_start: Some(private.0),
            private_end: Some(private.1),
            cidrs: "0.0.0.0/0".into(),
            vm_id: (kind == RuleKind::PortForwarding).then(|| vms[0].to_owned()),
            vm_ids: if kind == RuleKind::LoadBalancer {
                vms.iter().map(|v| (*v).to_owned()).collect()
            } else {
                Vec::new()
            },
            name: None,
            algorithm: (kind == RuleKind::LoadBalancer).then(|| "roundrobin".to_owned()),
            network_id: Some("net".into()),
        }
    }

    fn db(rules: Vec<Rule>) -> Db {
        Db {
            vms: vec![
                vm("vm1", "10.1.1.2", VmState::Running),
                vm("vm2", "10.1.1.3", VmState::Running),
                vm("vm3", "10.1.1.4", VmState::Stopped),
            ],
            public_ips: vec![PublicIp {
                id: "ip".into(),
                ip: "127.64.0.2".into(),
                account_id: "a".into(),
                zone_id: "z".into(),
                network_id: Some("net".into()),
                source_nat: true,
                allocated: String::new(),
            }],
            rules,
            ..Db::default()
        }
    }

    fn addr(text: &str) -> SocketAddrV4 {
        text.parse().unwrap()
    }

    #[test]
    fn source_cidrs_parse_and_match() {
        for bad in ["", "x/8", "10.0.0.0/33", "10.0.0/8"] {
            assert_eq!(SourceCidr::parse(bad), None, "{bad:?}");
        }
        let any = SourceCidr::parse("0.0.0.0/0").unwrap();
        assert!(any.contains(Ipv4Addr::new(127, 0, 0, 1)));
        let loopback = SourceCidr::parse(" 127.0.0.0/8").unwrap();
        assert!(loopback.contains(Ipv4Addr::new(127, 9, 9, 9)));
        assert!(!loopback.contains(Ipv4Addr::new(10, 0, 0, 1)));
        let one = SourceCidr::parse("10.1.1.7").unwrap();
        assert!(one.contains(Ipv4Addr::new(10, 1, 1, 7)));
        assert!(!one.contains(Ipv4Addr::new(10, 1, 1, 8)));
    }

    #[test]
    fn nothing_is_open_without_rules() {
        let table = table(&db(Vec::new()));
        assert!(table.listeners.is_empty());
        assert_eq!(
            table.source_nat.get("net"),
            Some(&Ipv4Addr::new(127, 64, 0, 2))
        );
    }

    #[test]
    fn port_forwarding_maps_ranges_by_offset_and_needs_a_firewall_rule() {
        let mut firewall = rule(RuleKind::Firewall, (2222, 2223), (0, 0), &[]);
        firewall.private_start = None;
        firewall.private_end = None;
        firewall.cidrs = "127.0.0.0/8,10.0.0.0/8".into();
        let table = table(&db(vec![
            rule(RuleKind::PortForwarding, (2222, 2224), (22, 24), &["vm2"]),
            firewall,
        ]));
        let got: Vec<_> = table
            .listeners
            .iter()
            .map(|l| (l.addr, l.backends[0].addr, l.admits(Ipv4Addr::LOCALHOST)))
            .collect();
        assert_eq!(
            got,
            vec![
                (addr("127.64.0.2:2222"), addr("10.1.1.3:22"), true),
                (addr("127.64.0.2:2223"), addr("10.1.1.3:23"), true),
                (addr("127.64.0.2:2224"), addr("10.1.1.3:24"), false),
            ]
        );
        assert!(!table.listeners[0].admits(Ipv4Addr::new(192, 168, 0, 1)));
    }

    #[test]
    fn load_balancers_list_running_members_only() {
        let lb = rule(
            RuleKind::LoadBalancer,
            (6443, 6443),
            (6443, 6443),
            &["vm1", "vm3", "vm2"],
        );
        let table = table(&db(vec![lb]));
        let listener = &table.listeners[0];
        assert_eq!(listener.balance, Balance::RoundRobin);
        let members: Vec<_> = listener.backends.iter().map(|b| b.vm_id.as_str()).collect();
        assert_eq!(members, vec!["vm1", "vm2"], "vm3 is stopped");
    }

    #[test]
    fn external_load_balancers_spread_over_running_targets_from_anywhere() {
        let mut db = db(Vec::new());
        db.external_lbs.push(crate::model::ExternalLb {
            ip: "127.99.0.10".into(),
            port: 6443,
            network_id: "net".into(),
            targets: vec!["vm1".into(), "vm3".into(), "vm2".into(), "gone".into()],
            target_port: 16443,
        });
        let table = table(&db);
        let lb = &table.listeners[0];
        assert_eq!(lb.addr, addr("127.99.0.10:6443"));
        assert_eq!(lb.balance, Balance::RoundRobin);
        let backends: Vec<_> = lb.backends.iter().map(|b| b.addr).collect();
        assert_eq!(
            backends,
            vec![addr("10.1.1.2:16443"), addr("10.1.1.3:16443")],
            "vm3 is stopped, gone does not exist"
        );
        assert!(lb.admits(Ipv4Addr::new(192, 0, 2, 1)));
    }

    #[test]
    fn udp_rules_are_not_served_and_huge_ranges_are_cut() {
        let mut udp = rule(RuleKind::PortForwarding, (53, 53), (53, 53), &["vm1"]);
        udp.protocol = "udp".into();
        assert!(table(&db(vec![udp])).listeners.is_empty());
        let huge = rule(RuleKind::PortForwarding, (1, 65535), (1, 65535), &["vm1"]);
        let table = table(&db(vec![huge]));
        assert_eq!(table.listeners.len(), MAX_PORTS_PER_RULE as usize);
        assert_eq!(table.listeners[9].backends[0].addr, addr("10.1.1.2:10"));
    }
}
