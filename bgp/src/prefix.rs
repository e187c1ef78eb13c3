//! IPv4 networks as BIRD prints and parses them.

use std::{fmt, net::Ipv4Addr};

use crate::{Error, Result};

/// An IPv4 network with no host bits set, such as `10.128.7.0/25`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Net {
    /// The /32 of one address.
    pub fn host(addr: Ipv4Addr) -> Self {
        Ipv4Net { addr, len: 32 }
    }

    /// Parses `a.b.c.d/len`; refuses host bits, a length over 32 and
    /// anything else that is not exactly that.
    pub fn parse(value: &str) -> Result<Self> {
        let err = |reason| Error::Cidr {
            value: value.to_owned(),
            reason,
        };
        let (addr, len) = value.split_once('/').ok_or_else(|| err("no /length"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err("the address is not IPv4"))?;
        if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("the length is not a number from 0 to 32"));
        }
        let len: u8 = len
            .parse()
            .map_err(|_| err("the length is not a number from 0 to 32"))?;
        if len > 32 {
            return Err(err("the length is not a number from 0 to 32"));
        }
        let net = Ipv4Net { addr, len };
        if u32::from(addr) & !net.mask() != 0 {
            return Err(err("host bits are set"));
        }
        Ok(net)
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether this is the /0 (never announced by Sextant).
    pub fn is_default(&self) -> bool {
        self.len == 0
    }

    fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.len))
        }
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_networks_and_refuses_the_rest() {
        let net = Ipv4Net::parse("10.128.7.0/25").expect("valid");
        assert_eq!(net.to_string(), "10.128.7.0/25");
        assert_eq!(
            Ipv4Net::parse("10.0.0.5/32").expect("valid"),
            Ipv4Net::host("10.0.0.5".parse().expect("ip"))
        );
        for (bad, why) in [
            ("10.128.7.1/25", "host bits"),
            ("10.128.7.0", "no /length"),
            ("10.128.7.0/33", "length"),
            ("10.128.7.0/-1", "length"),
            ("10.128.7.0/+8", "length"),
            ("fd00::/64", "not IPv4"),
            ("10.128.7/24", "not IPv4"),
            ("", "no /length"),
        ] {
            let e = Ipv4Net::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
