//! Export targets: `ipfix://HOST:PORT`, `netflow9://HOST:PORT`, `netflow5://HOST:PORT`.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;

/// Wire format of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Ipfix,
    NetflowV9,
    NetflowV5,
}

impl Format {
    pub fn scheme(self) -> &'static str {
        match self {
            Format::Ipfix => "ipfix",
            Format::NetflowV9 => "netflow9",
            Format::NetflowV5 => "netflow5",
        }
    }
}

/// One collector to export to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    pub format: Format,
    pub addr: SocketAddr,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.format.scheme(), self.addr)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("export target {0:?} has no scheme: write ipfix://HOST:PORT, netflow9://HOST:PORT or netflow5://HOST:PORT")]
    NoScheme(String),
    #[error("unknown export scheme {0:?}: use ipfix, netflow9 or netflow5")]
    Scheme(String),
    #[error("export target {0:?} needs HOST:PORT")]
    Address(String),
    #[error("export target host {0:?} does not resolve")]
    Resolve(String),
}

impl FromStr for Target {
    type Err = TargetError;

    /// Parses `SCHEME://HOST:PORT`; `HOST` may be an IPv4 address, `[IPv6]` or a name
    /// (resolved once, here). Schemes: `ipfix`, `netflow9` (or `nf9`, `v9`), `netflow5`
    /// (or `nf5`, `v5`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| TargetError::NoScheme(s.into()))?;
        let format = match scheme.to_ascii_lowercase().as_str() {
            "ipfix" => Format::Ipfix,
            "netflow9" | "nf9" | "v9" => Format::NetflowV9,
            "netflow5" | "nf5" | "v5" => Format::NetflowV5,
            _ => return Err(TargetError::Scheme(scheme.into())),
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || !rest.contains(':') || rest.ends_with(':') {
            return Err(TargetError::Address(s.into()));
        }
        let addr = match rest.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                let (_, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| TargetError::Address(s.into()))?;
                port.parse::<u16>()
                    .map_err(|_| TargetError::Address(s.into()))?;
                rest.to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| TargetError::Resolve(rest.into()))?
            }
        };
        Ok(Target { format, addr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme() {
        let t: Target = "ipfix://127.0.0.1:4739".parse().unwrap();
        assert_eq!(
            t,
            Target {
                format: Format::Ipfix,
                addr: "127.0.0.1:4739".parse().unwrap()
            }
        );
        assert_eq!(t.to_string(), "ipfix://127.0.0.1:4739");
        let t: Target = "netflow9://[::1]:2055".parse().unwrap();
        assert_eq!(t.format, Format::NetflowV9);
        assert_eq!(t.addr, "[::1]:2055".parse().unwrap());
        let t: Target = "NetFlow5://localhost:9995".parse().unwrap();
        assert_eq!(t.format, Format::NetflowV5);
        assert_eq!(t.addr.port(), 9995);
    }

    #[test]
    fn clear_errors() {
        assert!(matches!(
            "127.0.0.1:4739".parse::<Target>(),
            Err(TargetError::NoScheme(_))
        ));
        assert!(matches!(
            "sflow://127.0.0.1:6343".parse::<Target>(),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            "ipfix://127.0.0.1".parse::<Target>(),
            Err(TargetError::Address(_))
        ));
        assert!(matches!(
            "ipfix://127.0.0.1:".parse::<Target>(),
            Err(TargetError::Address(_))
        ));
        assert!(matches!(
            "ipfix://127.0.0.1:99999".parse::<Target>(),
            Err(TargetError::Address(_))
        ));
        assert!(matches!(
            "ipfix://no-such-host.invalid:4739".parse::<Target>(),
            Err(TargetError::Resolve(_))
        ));
    }
}
