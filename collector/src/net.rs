//! IP networks (`addr/len`) for host accounting, tunnel subnets and label rules.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 network. A bare address is a host route (/32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    #[error("not an IP address")]
    Address,
    #[error("prefix length {0} too long")]
    Length(u16),
}

impl IpNet {
    pub fn new(addr: IpAddr, len: u8) -> Result<IpNet, IpNetError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(IpNetError::Length(u16::from(len)));
        }
        Ok(IpNet {
            addr: mask(addr, len),
            len,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.len) == self.addr
            }
            _ => false,
        }
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;
    fn from_str(s: &str) -> Result<IpNet, IpNetError> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| IpNetError::Address)?;
        let len = match l {
            Some(l) => {
                let n: u16 = l.trim().parse().map_err(|_| IpNetError::Address)?;
                u8::try_from(n).map_err(|_| IpNetError::Length(n))?
            }
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        IpNet::new(addr, len)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_both_families() {
        let n: IpNet = "192.168.1.77/24".parse().unwrap();
        assert_eq!(n.to_string(), "192.168.1.0/24");
        assert!(n.contains("192.168.1.200".parse().unwrap()));
        assert!(!n.contains("192.168.2.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert_eq!("1.2.3.4/33".parse::<IpNet>(), Err(IpNetError::Length(33)));
        assert_eq!("x".parse::<IpNet>(), Err(IpNetError::Address));
    }
}
