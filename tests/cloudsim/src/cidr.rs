//! IPv4 CIDR arithmetic and guest IP allocation.
//!
//! Like CloudStack, an isolated network's gateway is its first host address and guests get the
//! lowest free address after it; a shared network has the gateway an admin gave and hands out
//! addresses from its `startip`..`endip` range ([`Cidr::allocate_in`]). The network and
//! broadcast addresses are never handed out.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// An IPv4 network such as `10.1.1.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: u32,
    prefix: u8,
}

/// Why a CIDR or an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The text is not `a.b.c.d/n` with n in 8..=30.
    #[error("invalid CIDR {0:?}")]
    Parse(String),
    /// The requested address is outside the range guests may use.
    #[error("IP address {ip} is not in the guest range of network {cidr}")]
    OutOfRange {
        /// The requested address.
        ip: Ipv4Addr,
        /// The network.
        cidr: String,
    },
    /// The requested address is already allocated.
    #[error("IP address {0} is already in use")]
    InUse(Ipv4Addr),
    /// Every guest address is allocated.
    #[error("no free IP address left in network {0}")]
    Exhausted(String),
}

// === impl Cidr ===

impl Cidr {
    /// Parses `a.b.c.d/n`; host bits are cleared.
    pub fn parse(text: &str) -> Result<Self, CidrError> {
        let err = || CidrError::Parse(text.to_owned());
        let (addr, prefix) = text.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        if !(8..=30).contains(&prefix) {
            return Err(err());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            network: u32::from(addr) & mask,
            prefix,
        })
    }

    /// Builds the CIDR from a gateway and a dotted netmask, as `createNetwork` takes them.
    pub fn from_gateway_netmask(gateway: &str, netmask: &str) -> Result<Self, CidrError> {
        let mask: Ipv4Addr = netmask
            .parse()
            .map_err(|_| CidrError::Parse(netmask.to_owned()))?;
        let prefix = u32::from(mask).leading_ones();
        if u32::from(mask).count_ones() != prefix {
            return Err(CidrError::Parse(netmask.to_owned()));
        }
        Self::parse(&format!("{gateway}/{prefix}"))
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    /// The dotted netmask.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    /// The gateway: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    fn broadcast(&self) -> u32 {
        self.network | !self.mask()
    }

    /// True when `ip` lies inside the network (any address, including gateway and broadcast).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.network
    }

    /// The first and last host addresses (network and broadcast excluded).
    pub fn hosts(&self) -> (Ipv4Addr, Ipv4Addr) {
        (
            Ipv4Addr::from(self.network + 1),
            Ipv4Addr::from(self.broadcast() - 1),
        )
    }

    /// Allocates a guest address: `requested` when given and free, else the lowest free one
    /// after the gateway (the first host address).
    pub fn allocate(
        &self,
        used: &BTreeSet<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, CidrError> {
        let (_, last) = self.hosts();
        self.allocate_in(used, requested, Ipv4Addr::from(self.network + 2), last)
    }

    /// Allocates a guest address between `first` and `last` (both included, and clipped to the
    /// network's hosts): `requested` when given, inside and free, else the lowest free one.
    /// `used` must hold the gateway when it lies in the range.
    pub fn allocate_in(
        &self,
        used: &BTreeSet<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
        first: Ipv4Addr,
        last: Ipv4Addr,
    ) -> Result<Ipv4Addr, CidrError> {
        let first = u32::from(first).max(self.network + 1);
        let last = u32::from(last).min(self.broadcast() - 1);
        if let Some(ip) = requested {
            let n = u32::from(ip);
            if !(first..=last).contains(&n) {
                return Err(CidrError::OutOfRange {
                    ip,
                    cidr: self.to_string(),
                });
            }
            if used.contains(&ip) {
                return Err(CidrError::InUse(ip));
            }
            return Ok(ip);
        }
        (first..=last)
            .map(Ipv4Addr::from)
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| CidrError::Exhausted(self.to_string()))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn invalid_cidrs_are_refused() {
        for bad in [
            "10.1.1.0",
            "10.1.1.0/33",
            "10.1.1.0/31",
            "x/24",
            "10.1.1/24",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert!(Cidr::from_gateway_netmask("10.0.0.1", "255.0.255.0").is_err());
    }

    #[test]
    fn parse_clears_host_bits_and_derives_gateway() {
        let cidr = Cidr::parse("10.1.1.77/24").unwrap();
        assert_eq!(cidr.to_string(), "10.1.1.0/24");
        assert_eq!(cidr.gateway(), ip("10.1.1.1"));
        assert_eq!(cidr.netmask(), ip("255.255.255.0"));
        let same = Cidr::from_gateway_netmask("10.1.1.1", "255.255.255.0").unwrap();
        assert_eq!(same, cidr);
    }

    #[test]
    fn allocation_takes_lowest_free_address_after_gateway() {
        let cidr = Cidr::parse("10.1.1.0/24").unwrap();
        let mut used = BTreeSet::new();
        assert_eq!(cidr.allocate(&used, None).unwrap(), ip("10.1.1.2"));
        used.insert(ip("10.1.1.2"));
        used.insert(ip("10.1.1.4"));
        assert_eq!(cidr.allocate(&used, None).unwrap(), ip("10.1.1.3"));
    }

    #[test]
    fn requested_addresses_are_checked() {
        let cidr = Cidr::parse("10.1.1.0/24").unwrap();
        let used = BTreeSet::from([ip("10.1.1.9")]);
        assert_eq!(
            cidr.allocate(&used, Some(ip("10.1.1.50"))).unwrap(),
            ip("10.1.1.50")
        );
        assert_eq!(
            cidr.allocate(&used, Some(ip("10.1.1.9"))),
            Err(CidrError::InUse(ip("10.1.1.9")))
        );
        for bad in ["10.1.1.1", "10.1.1.0", "10.1.1.255", "10.1.2.5"] {
            assert!(
                matches!(
                    cidr.allocate(&used, Some(ip(bad))),
                    Err(CidrError::OutOfRange { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn ranges_are_clipped_to_the_network_and_skip_used_addresses() {
        let cidr = Cidr::from_gateway_netmask("10.5.0.254", "255.255.255.0").unwrap();
        assert_eq!(cidr.hosts(), (ip("10.5.0.1"), ip("10.5.0.254")));
        let used = BTreeSet::from([ip("10.5.0.254"), ip("10.5.0.100")]);
        let pick =
            |requested| cidr.allocate_in(&used, requested, ip("10.5.0.100"), ip("10.5.0.101"));
        assert_eq!(pick(None).unwrap(), ip("10.5.0.101"));
        assert!(matches!(
            pick(Some(ip("10.5.0.50"))),
            Err(CidrError::OutOfRange { .. })
        ));
        let whole = cidr.allocate_in(&used, None, ip("0.0.0.0"), ip("255.255.255.255"));
        assert_eq!(whole.unwrap(), ip("10.5.0.1"), "clipped to the hosts");
        let full = BTreeSet::from([ip("10.5.0.100"), ip("10.5.0.101")]);
        assert!(matches!(
            cidr.allocate_in(&full, None, ip("10.5.0.100"), ip("10.5.0.101")),
            Err(CidrError::Exhausted(_))
        ));
    }

    #[test]
    fn exhaustion_is_reported() {
        let cidr = Cidr::parse("10.1.1.0/30").unwrap();
        let used = BTreeSet::from([ip("10.1.1.2")]);
        assert!(matches!(
            cidr.allocate(&used, None),
            Err(CidrError::Exhausted(_))
        ));
    }
}
