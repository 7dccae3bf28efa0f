//! The lab: three network namespaces joined by veth.
//!
//! ```text
//!  PREFIX-inet                    PREFIX-gw                        PREFIX-lan
//!  eth0 192.0.2.1/24  <--veth-->  wan 192.0.2.2/24
//!       2001:db8:1::1/64              2001:db8:1::2/64
//!  lo   10.99.0.1/24                  lan 198.51.100.1/24  <--veth-->  eth0 198.51.100.2/24
//!       2001:db8:99::1/64                 2001:db8:2::1/64                  2001:db8:2::2/64
//!  (remote tunnel subnet)         forwarding on, NFLOG rules
//! ```
//!
//! The Internet peer also owns the remote subnet 10.99.0.0/24 and 2001:db8:99::/64: traffic
//! it sends from there plays the inner packets of an IPsec tunnel as the gateway would see them
//! after decryption. Offloads are off on every veth (a packet on the link is a wire packet) and
//! IPv6 DAD and router solicitations are off so that no stray packet reaches the counters.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::netns;
use crate::LabError;

/// Addresses of the lab (the same in every instance: each instance has its own namespaces).
pub mod addr {
    use std::net::{Ipv4Addr, Ipv6Addr};

    pub const INET_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    pub const GW_WAN_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    pub const GW_LAN_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    pub const LAN_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    /// First address of the remote tunnel subnet 10.99.0.0/24 (owned by the Internet peer).
    pub const REMOTE_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    pub const REMOTE_NET_V4: &str = "10.99.0.0/24";

    pub const INET_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
    pub const GW_WAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
    pub const GW_LAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
    pub const LAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);
    /// First address of the remote tunnel subnet 2001:db8:99::/64.
    pub const REMOTE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 1);
    pub const REMOTE_NET_V6: &str = "2001:db8:99::/64";
}

/// Gateway interface names (inside the gateway namespace).
pub const GW_WAN_IF: &str = "wan";
pub const GW_LAN_IF: &str = "lan";
/// Interface name of the peers' veth end (inside the inet and lan namespaces).
pub const PEER_IF: &str = "eth0";

/// The three roles of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Inet,
    Gw,
    Lan,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Inet, Role::Gw, Role::Lan];

    pub fn suffix(self) -> &'static str {
        match self {
            Role::Inet => "inet",
            Role::Gw => "gw",
            Role::Lan => "lan",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.suffix() == s)
    }
}

/// Prefix of automatically named labs: `lf<pid>n<counter>`.
const AUTO_PREFIX: &str = "lf";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One lab instance. Dropping an owned lab deletes its namespaces (also on panic).
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    owned: bool,
}

impl Lab {
    /// Builds a new lab with a unique prefix (`lf<pid>n<counter>`) owned by this value.
    pub fn up() -> Result<Lab, LabError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Lab::up_named(&format!("{AUTO_PREFIX}{}n{n}", std::process::id()))
    }

    /// Builds a lab with the given prefix (namespaces `PREFIX-inet`, `PREFIX-gw`, `PREFIX-lan`).
    pub fn up_named(prefix: &str) -> Result<Lab, LabError> {
        if prefix.is_empty()
            || prefix.len() > 40
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(LabError::Parse {
                what: "lab prefix",
                detail: format!("{prefix:?}: use 1-40 characters [A-Za-z0-9_]"),
            });
        }
        let existing = netns::list()?;
        if Role::ALL.iter().any(|r| {
            existing
                .iter()
                .any(|n| *n == format!("{prefix}-{}", r.suffix()))
        }) {
            return Err(LabError::Parse {
                what: "lab prefix",
                detail: format!(
                    "a lab named {prefix} already exists (labelflow-lab down --lab {prefix})"
                ),
            });
        }
        // Owned from the first namespace on, so a failure half-way cleans up.
        let lab = Lab {
            prefix: prefix.to_owned(),
            owned: true,
        };
        lab.build()?;
        Ok(lab)
    }

    /// Refers to an existing lab without owning it (dropping it deletes nothing).
    pub fn attach(prefix: &str) -> Result<Lab, LabError> {
        let existing = netns::list()?;
        for r in Role::ALL {
            let name = format!("{prefix}-{}", r.suffix());
            if !existing.contains(&name) {
                return Err(LabError::Parse {
                    what: "lab",
                    detail: format!(
                        "namespace {name} does not exist (labelflow-lab up --lab {prefix})"
                    ),
                });
            }
        }
        Ok(Lab {
            prefix: prefix.to_owned(),
            owned: false,
        })
    }

    /// Lets the namespaces outlive this value (the CLI's `up`).
    pub fn keep(mut self) -> String {
        self.owned = false;
        self.prefix.clone()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Namespace name of a role.
    pub fn ns(&self, role: Role) -> String {
        format!("{}-{}", self.prefix, role.suffix())
    }

    pub fn inet(&self) -> String {
        self.ns(Role::Inet)
    }
    pub fn gw(&self) -> String {
        self.ns(Role::Gw)
    }
    pub fn lan(&self) -> String {
        self.ns(Role::Lan)
    }

    /// Runs a command inside a role's namespace; a non-zero exit is an error.
    pub fn exec(
        &self,
        role: Role,
        prog: &str,
        args: &[&str],
    ) -> Result<std::process::Output, LabError> {
        netns::run(Some(&self.ns(role)), prog, args, None)
    }

    /// Runs a command inside a role's namespace with `input` on its stdin.
    pub fn exec_stdin(
        &self,
        role: Role,
        prog: &str,
        args: &[&str],
        input: &str,
    ) -> Result<std::process::Output, LabError> {
        netns::run(Some(&self.ns(role)), prog, args, Some(input))
    }

    /// Interface index of a gateway interface (what NFLOG reports as indev/outdev).
    pub fn gw_ifindex(&self, ifname: &str) -> Result<u32, LabError> {
        let out = self.exec(
            Role::Gw,
            "cat",
            &[&format!("/sys/class/net/{ifname}/ifindex")],
        )?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| LabError::Parse {
                what: "ifindex",
                detail: String::from_utf8_lossy(&out.stdout).into_owned(),
            })
    }

    /// Adds an address (`IP/LEN`) to a role's veth: `eth0` of the Internet peer or the LAN
    /// host; on the gateway, the interface (`wan` or `lan`) whose subnet holds the address.
    pub fn add_addr(&self, role: Role, cidr: &str) -> Result<(), LabError> {
        let bad = |detail: String| LabError::Parse {
            what: "address",
            detail,
        };
        let (ip, len) = cidr
            .split_once('/')
            .ok_or_else(|| bad(format!("{cidr:?}: expected IP/LEN")))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| bad(format!("{cidr:?}: bad IP address")))?;
        let max = if ip.is_ipv6() { 128 } else { 32 };
        if !len.parse::<u8>().is_ok_and(|l| l <= max) {
            return Err(bad(format!("{cidr:?}: bad prefix length")));
        }
        let dev = match role {
            Role::Inet | Role::Lan => PEER_IF,
            Role::Gw => {
                use addr::*;
                let same_net = |a: IpAddr, bits: u32| match (a, ip) {
                    (IpAddr::V4(a), IpAddr::V4(b)) => {
                        u32::from(a) >> (32 - bits) == u32::from(b) >> (32 - bits)
                    }
                    (IpAddr::V6(a), IpAddr::V6(b)) => {
                        u128::from(a) >> (128 - bits) == u128::from(b) >> (128 - bits)
                    }
                    _ => false,
                };
                if same_net(GW_WAN_V4.into(), 24) || same_net(GW_WAN_V6.into(), 64) {
                    GW_WAN_IF
                } else if same_net(GW_LAN_V4.into(), 24) || same_net(GW_LAN_V6.into(), 64) {
                    GW_LAN_IF
                } else {
                    return Err(bad(format!(
                        "{cidr}: not in the subnet of the gateway's wan or lan interface"
                    )));
                }
            }
        };
        let mut args = vec!["addr", "add", cidr, "dev", dev];
        if ip.is_ipv6() {
            args.push("nodad");
        }
        self.exec(role, "ip", &args).map(|_| ())
    }

    fn build(&self) -> Result<(), LabError> {
        let (inet, gw, lan) = (self.inet(), self.gw(), self.lan());
        for ns in [&inet, &gw, &lan] {
            netns::run(None, "ip", &["netns", "add", ns], None)?;
            // Before any link exists, so that new links inherit `default`.
            self.sysctl(
                ns,
                &[
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                    "net.ipv6.conf.all.router_solicitations=0",
                    "net.ipv6.conf.default.router_solicitations=0",
                    "net.ipv6.conf.all.accept_ra=0",
                    "net.ipv6.conf.default.accept_ra=0",
                    "net.ipv6.conf.all.dad_transmits=0",
                    "net.ipv6.conf.default.dad_transmits=0",
                ],
            )?;
            netns::run(Some(ns), "ip", &["link", "set", "lo", "up"], None)?;
        }
        self.sysctl(
            &gw,
            &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
        )?;

        netns::veth((&gw, GW_WAN_IF), (&inet, PEER_IF))?;
        netns::veth((&gw, GW_LAN_IF), (&lan, PEER_IF))?;
        use addr::*;
        let v4 = |a: Ipv4Addr, len: u8| format!("{a}/{len}");
        let v6 = |a: Ipv6Addr, len: u8| format!("{a}/{len}");
        let addrs: [(&String, &str, String); 10] = [
            (&inet, PEER_IF, v4(INET_V4, 24)),
            (&inet, PEER_IF, v6(INET_V6, 64)),
            (&inet, "lo", v4(REMOTE_V4, 24)),
            (&inet, "lo", v6(REMOTE_V6, 64)),
            (&gw, GW_WAN_IF, v4(GW_WAN_V4, 24)),
            (&gw, GW_WAN_IF, v6(GW_WAN_V6, 64)),
            (&gw, GW_LAN_IF, v4(GW_LAN_V4, 24)),
            (&gw, GW_LAN_IF, v6(GW_LAN_V6, 64)),
            (&lan, PEER_IF, v4(LAN_V4, 24)),
            (&lan, PEER_IF, v6(LAN_V6, 64)),
        ];
        for (ns, dev, a) in &addrs {
            let mut args = vec!["addr", "add", a.as_str(), "dev", dev];
            if a.contains(':') {
                args.push("nodad");
            }
            netns::run(Some(ns), "ip", &args, None)?;
        }
        for (ns, dev) in [
            (&inet, PEER_IF),
            (&gw, GW_WAN_IF),
            (&gw, GW_LAN_IF),
            (&lan, PEER_IF),
        ] {
            netns::run(Some(ns), "ip", &["link", "set", dev, "up"], None)?;
        }
        let routes: [(&String, String, IpAddr); 6] = [
            (&inet, "198.51.100.0/24".into(), GW_WAN_V4.into()),
            (&inet, "2001:db8:2::/64".into(), GW_WAN_V6.into()),
            (&gw, REMOTE_NET_V4.into(), INET_V4.into()),
            (&gw, REMOTE_NET_V6.into(), INET_V6.into()),
            (&lan, "default".into(), GW_LAN_V4.into()),
            (&lan, "default".into(), GW_LAN_V6.into()),
        ];
        for (ns, dst, via) in &routes {
            let fam = if via.is_ipv6() { "-6" } else { "-4" };
            netns::run(
                Some(ns),
                "ip",
                &[fam, "route", "add", dst, "via", &via.to_string()],
                None,
            )?;
        }
        Ok(())
    }

    fn sysctl(&self, ns: &str, settings: &[&str]) -> Result<(), LabError> {
        let mut args = vec!["-q", "-w"];
        args.extend_from_slice(settings);
        netns::run(Some(ns), "sysctl", &args, None).map(|_| ())
    }

    /// Deletes the namespaces (ending the processes left inside). Idempotent.
    pub fn down(&mut self) -> Result<(), LabError> {
        self.owned = false;
        delete_prefix(&self.prefix)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned {
            if let Err(e) = self.down() {
                eprintln!("labelflow lab {}: cleanup failed: {e}", self.prefix);
            }
        }
    }
}

/// Deletes every namespace of the lab with this prefix that still exists.
pub fn delete_prefix(prefix: &str) -> Result<(), LabError> {
    let existing = netns::list()?;
    let mut first_err = None;
    // The roles, and the road warrior's namespaces of `strongswan::IpsecPair`.
    let suffixes = Role::ALL.iter().map(|r| r.suffix()).chain(["nat", "rw"]);
    for suffix in suffixes {
        let name = format!("{prefix}-{suffix}");
        if existing.contains(&name) {
            if let Err(e) = netns::delete(&name) {
                first_err.get_or_insert(e);
            }
        }
    }
    // A strongSwan pair kept running for this lab (`labelflow-lab ipsec up`): its daemons
    // ended with their namespaces; its configuration and sockets go too.
    let ipsec = crate::strongswan::IpsecPair::dir_of(prefix);
    if ipsec.is_dir() {
        if let Err(e) = std::fs::remove_dir_all(&ipsec) {
            first_err.get_or_insert(netns::io(&format!("remove {}", ipsec.display()), e));
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Deletes automatically named labs (`lf<pid>n<k>-*`) whose creating process is gone, e.g.
/// after a test process was killed. Returns the prefixes removed.
pub fn delete_stale() -> Result<Vec<String>, LabError> {
    let mut removed = Vec::new();
    for name in netns::list()? {
        let Some(prefix) = name.rsplit_once('-').map(|(p, _)| p.to_owned()) else {
            continue;
        };
        let Some(pid) = auto_prefix_pid(&prefix) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() || removed.contains(&prefix) {
            continue;
        }
        delete_prefix(&prefix)?;
        removed.push(prefix);
    }
    Ok(removed)
}

/// The pid encoded in an automatic prefix `lf<pid>n<k>`.
fn auto_prefix_pid(prefix: &str) -> Option<u32> {
    let rest = prefix.strip_prefix(AUTO_PREFIX)?;
    let (pid, k) = rest.split_once('n')?;
    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefix_round_trip() {
        assert_eq!(auto_prefix_pid("lf1234n0"), Some(1234));
        assert_eq!(auto_prefix_pid("lf1234n17"), Some(1234));
        assert_eq!(auto_prefix_pid("lf1234"), None);
        assert_eq!(auto_prefix_pid("lfdemo"), None);
        assert_eq!(auto_prefix_pid("demo1n2"), None);
        assert_eq!(auto_prefix_pid("lf12n"), None);
    }

    #[test]
    fn roles_parse_their_suffix() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.suffix()), Some(r));
        }
        assert_eq!(Role::parse("router"), None);
    }
}
