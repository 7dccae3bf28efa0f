//! Which IKE connection a flow belongs to, from what the IKE daemon lists.
//!
//! ```text
//!  list-sa events ──► ChildInfo (connection, child, SPIs, traffic selectors, peers)
//!                 ──► TunnelTable::update(snapshot, now)
//!  FlowRecord ──► TunnelTable::name_of ──► connection name
//!      ESP/AH (raw or in UDP): by SPI, kept `keep` after the SA is gone (flows end later)
//!      IKE / NAT-keepalive (UDP on an IPsec port to or from a peer): by peer address
//!      inner traffic: by the traffic selectors (local ─ remote, either direction)
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use labelflow_proto::FlowRecord;

use super::vici::{Element, Elements, ViciError};
use crate::decode::IpsecPorts;

/// An IP prefix of a traffic selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Net {
    /// `A/N` or a bare address; strongSwan's protocol/port suffix (`10.1.0.0/24[tcp/80]`) is
    /// ignored. Ranges (`A-B`) and `dynamic` are not prefixes: `None`.
    pub fn parse(s: &str) -> Option<Net> {
        let s = s.split('[').next()?.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Net { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |a: IpAddr| -> u128 {
            match a {
                IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
                IpAddr::V6(v) => u128::from(v),
            }
        };
        if self.addr.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        // IPv4 sits in the top 32 bits, so one mask of the top `prefix` bits serves both.
        let mask = match self.prefix {
            0 => 0,
            p => !0u128 << (128 - u32::from(p)),
        };
        bits(self.addr) & mask == bits(ip) & mask
    }
}

/// One CHILD_SA as a `list-sa` event describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChildInfo {
    /// IKE_SA (connection) name.
    pub connection: String,
    /// CHILD_SA config name.
    pub child: String,
    pub spi_in: Option<u32>,
    pub spi_out: Option<u32>,
    pub local_ts: Vec<Net>,
    pub remote_ts: Vec<Net>,
    pub local_host: Option<IpAddr>,
    pub remote_host: Option<IpAddr>,
}

/// The CHILD_SAs of one `list-sa` event message: `IKE_SA { local-host, remote-host,
/// child-sas { ID { name, spi-in, spi-out, local-ts [..], remote-ts [..] } } }`.
pub fn children_of(message: &[u8]) -> Result<Vec<ChildInfo>, ViciError> {
    let mut out = Vec::new();
    // Section names from the top: [ike], [ike, "child-sas"], [ike, "child-sas", id].
    let mut path: Vec<&[u8]> = Vec::new();
    let mut hosts: (Option<IpAddr>, Option<IpAddr>) = (None, None);
    let mut cur = ChildInfo::default();
    let mut list: Option<&[u8]> = None;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    for e in Elements::new(message) {
        match e? {
            Element::SectionStart(name) => {
                path.push(name);
                if path.len() == 1 {
                    hosts = (None, None);
                }
                if path.len() == 3 && path[1] == b"child-sas" {
                    cur = ChildInfo {
                        connection: text(path[0]),
                        local_host: hosts.0,
                        remote_host: hosts.1,
                        ..ChildInfo::default()
                    };
                }
            }
            Element::SectionEnd => {
                if path.len() == 3 && path[1] == b"child-sas" {
                    out.push(std::mem::take(&mut cur));
                }
                path.pop();
            }
            Element::KeyValue(k, v) => {
                let v = text(v);
                match (path.len(), k) {
                    (1, b"local-host") => hosts.0 = v.parse().ok(),
                    (1, b"remote-host") => hosts.1 = v.parse().ok(),
                    (3, b"name") => cur.child = v,
                    (3, b"spi-in") => cur.spi_in = u32::from_str_radix(&v, 16).ok(),
                    (3, b"spi-out") => cur.spi_out = u32::from_str_radix(&v, 16).ok(),
                    _ => {}
                }
            }
            Element::ListStart(name) => list = Some(name),
            Element::ListEnd => list = None,
            Element::ListItem(v) => {
                let net = Net::parse(&text(v));
                match (path.len(), list, net) {
                    (3, Some(b"local-ts"), Some(n)) => cur.local_ts.push(n),
                    (3, Some(b"remote-ts"), Some(n)) => cur.remote_ts.push(n),
                    _ => {}
                }
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Clone)]
struct SpiEntry {
    connection: Arc<str>,
    /// When a snapshot first lacked the SPI (milliseconds), `None` while listed.
    gone_since: Option<u64>,
}

/// Connection names by SPI, peer and traffic selector, from the IKE daemon's snapshots.
#[derive(Debug)]
pub struct TunnelTable {
    spis: HashMap<u32, SpiEntry>,
    peers: HashMap<IpAddr, Arc<str>>,
    selectors: Vec<(Net, Net, Arc<str>)>,
    ports: IpsecPorts,
    keep_ms: u64,
    max_spis: usize,
}

/// How long an SPI keeps its name after its SA is gone: flows of a rekeyed SA end up to an
/// idle timeout later, and an exporter may hold them an active timeout more.
pub const DEFAULT_KEEP_MS: u64 = 10 * 60 * 1000;
/// SPIs named at most (gone ones are dropped first); bounds what a daemon listing absurd
/// numbers of SAs can make the probe keep.
pub const DEFAULT_MAX_SPIS: usize = 65_536;

impl TunnelTable {
    pub fn new(ports: IpsecPorts) -> TunnelTable {
        TunnelTable {
            spis: HashMap::new(),
            peers: HashMap::new(),
            selectors: Vec::new(),
            ports,
            keep_ms: DEFAULT_KEEP_MS,
            max_spis: DEFAULT_MAX_SPIS,
        }
    }

    /// Replaces the current view with a full snapshot taken at `now_ms`. SPIs no longer
    /// listed stay named for `keep_ms`.
    pub fn update(&mut self, children: &[ChildInfo], now_ms: u64) {
        for e in self.spis.values_mut() {
            e.gone_since.get_or_insert(now_ms);
        }
        self.peers.clear();
        self.selectors.clear();
        let mut names: HashMap<&str, Arc<str>> = HashMap::new();
        for c in children {
            let name = names
                .entry(c.connection.as_str())
                .or_insert_with(|| Arc::from(c.connection.as_str()))
                .clone();
            for spi in [c.spi_in, c.spi_out].into_iter().flatten() {
                self.spis.insert(
                    spi,
                    SpiEntry {
                        connection: name.clone(),
                        gone_since: None,
                    },
                );
            }
            if let Some(peer) = c.remote_host {
                self.peers.insert(peer, name.clone());
            }
            for l in &c.local_ts {
                for r in &c.remote_ts {
                    self.selectors.push((*l, *r, name.clone()));
                }
            }
        }
        let keep = self.keep_ms;
        self.spis
            .retain(|_, e| e.gone_since.is_none_or(|t| now_ms.saturating_sub(t) < keep));
        if self.spis.len() > self.max_spis {
            // Oldest gone first, then arbitrary: the bound holds whatever the daemon lists.
            let mut gone: Vec<(u64, u32)> = self
                .spis
                .iter()
                .map(|(spi, e)| (e.gone_since.unwrap_or(u64::MAX), *spi))
                .collect();
            gone.sort_unstable();
            let excess = self.spis.len() - self.max_spis;
            for (_, spi) in gone.into_iter().take(excess) {
                self.spis.remove(&spi);
            }
        }
    }

    /// SPIs named now (listed or kept).
    pub fn spi_count(&self) -> usize {
        self.spis.len()
    }

    /// The connection a record belongs to, if any.
    pub fn name_of(&self, r: &FlowRecord) -> Option<Arc<str>> {
        if let Some(spi) = r.ipsec_spi {
            if let Some(e) = self.spis.get(&spi) {
                return Some(e.connection.clone());
            }
        }
        // IKE, keepalives, and ESP/AH of an SA not (or no longer) listed: by peer address.
        let wire = matches!(r.protocol, 50 | 51)
            || (r.protocol == 17 && self.on_ipsec_port(r.src_port, r.dst_port));
        if wire {
            for ip in [r.src_addr, r.dst_addr] {
                if let Some(n) = self.peers.get(&ip) {
                    return Some(n.clone());
                }
            }
        }
        let (s, d) = (r.src_addr, r.dst_addr);
        self.selectors
            .iter()
            .find(|(l, rm, _)| {
                (l.contains(s) && rm.contains(d)) || (rm.contains(s) && l.contains(d))
            })
            .map(|(_, _, n)| n.clone())
    }

    fn on_ipsec_port(&self, a: u16, b: u16) -> bool {
        self.ports
            .natt
            .iter()
            .chain(&self.ports.ike)
            .any(|p| *p != 0 && (*p == a || *p == b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(conn: &str, spis: (u32, u32), local: &str, remote: &str, peer: &str) -> ChildInfo {
        ChildInfo {
            connection: conn.into(),
            child: "net".into(),
            spi_in: Some(spis.0),
            spi_out: Some(spis.1),
            local_ts: vec![Net::parse(local).unwrap()],
            remote_ts: vec![Net::parse(remote).unwrap()],
            local_host: "192.0.2.2".parse().ok(),
            remote_host: peer.parse().ok(),
        }
    }

    fn rec(proto: u8, src: &str, dst: &str, ports: (u16, u16), spi: Option<u32>) -> FlowRecord {
        FlowRecord {
            protocol: proto,
            src_addr: src.parse().unwrap(),
            dst_addr: dst.parse().unwrap(),
            src_port: ports.0,
            dst_port: ports.1,
            ipsec_spi: spi,
            ..FlowRecord::default()
        }
    }

    #[test]
    fn nets_parse_and_contain() {
        let n = Net::parse("10.1.0.0/24[tcp/80]").unwrap();
        assert!(n.contains("10.1.0.77".parse().unwrap()));
        assert!(!n.contains("10.1.1.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        assert!(Net::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Net::parse("2001:db8::/32")
            .unwrap()
            .contains("2001:db8:1::9".parse().unwrap()));
        assert_eq!(Net::parse("192.0.2.1").map(|n| n.prefix), Some(32));
        assert!(Net::parse("10.0.0.1-10.0.0.9").is_none());
        assert!(Net::parse("10.0.0.0/33").is_none());
        assert!(Net::parse("dynamic").is_none());
    }

    #[test]
    fn names_by_spi_peer_and_selectors_and_keeps_rekeyed_spis() {
        let mut t = TunnelTable::new(IpsecPorts::DEFAULT);
        t.update(
            &[
                child(
                    "hq",
                    (0xc1, 0xc2),
                    "198.51.100.0/24",
                    "10.99.0.0/24",
                    "192.0.2.1",
                ),
                child(
                    "rw",
                    (0xd1, 0xd2),
                    "198.51.100.0/24",
                    "10.77.0.5/32",
                    "203.0.113.9",
                ),
            ],
            1_000,
        );
        let name = |r: &FlowRecord| t.name_of(r).map(|n| n.to_string());
        // NAT-T ESP by SPI, either direction.
        let esp = rec(17, "192.0.2.1", "192.0.2.2", (4500, 4500), Some(0xc2));
        assert_eq!(name(&esp).as_deref(), Some("hq"));
        // Raw ESP by SPI.
        assert_eq!(
            name(&rec(50, "203.0.113.9", "192.0.2.2", (0, 0), Some(0xd1))).as_deref(),
            Some("rw")
        );
        // IKE and keepalives to a peer, by address.
        assert_eq!(
            name(&rec(17, "192.0.2.2", "203.0.113.9", (4500, 4500), None)).as_deref(),
            Some("rw")
        );
        // Other traffic with a peer is no tunnel's.
        assert_eq!(name(&rec(1, "192.0.2.2", "192.0.2.1", (0, 0), None)), None);
        // Inner traffic by selectors, both directions.
        assert_eq!(
            name(&rec(6, "10.99.0.3", "198.51.100.2", (1, 2), None)).as_deref(),
            Some("hq")
        );
        assert_eq!(
            name(&rec(6, "198.51.100.2", "10.77.0.5", (1, 2), None)).as_deref(),
            Some("rw")
        );
        assert_eq!(
            name(&rec(6, "198.51.100.2", "10.77.0.6", (1, 2), None)),
            None
        );

        // A rekey: hq's old SPIs leave the listing but keep their name for `keep`.
        t.update(
            &[child(
                "hq",
                (0xc3, 0xc4),
                "198.51.100.0/24",
                "10.99.0.0/24",
                "192.0.2.1",
            )],
            2_000,
        );
        assert_eq!(t.name_of(&esp).as_deref(), Some("hq"));
        assert_eq!(t.spi_count(), 6);
        // From an address that is no peer, only the SPI names it.
        let moved = rec(17, "198.18.0.1", "192.0.2.2", (61000, 4500), Some(0xc2));
        assert_eq!(t.name_of(&moved).as_deref(), Some("hq"));
        t.update(
            &[child(
                "hq",
                (0xc3, 0xc4),
                "198.51.100.0/24",
                "10.99.0.0/24",
                "192.0.2.1",
            )],
            2_000 + DEFAULT_KEEP_MS,
        );
        assert_eq!(t.name_of(&moved), None);
        assert_eq!(t.spi_count(), 2);
        // From the peer, an SA no longer listed is still that peer's connection.
        assert_eq!(t.name_of(&esp).as_deref(), Some("hq"));
    }

    #[test]
    fn spi_bound_drops_the_oldest_gone_first() {
        let mut t = TunnelTable::new(IpsecPorts::DEFAULT);
        t.max_spis = 4;
        t.update(
            &[child("a", (1, 2), "10.0.0.0/8", "10.1.0.0/16", "192.0.2.1")],
            0,
        );
        t.update(
            &[child("a", (3, 4), "10.0.0.0/8", "10.1.0.0/16", "192.0.2.1")],
            10,
        );
        t.update(
            &[child("a", (5, 6), "10.0.0.0/8", "10.1.0.0/16", "192.0.2.1")],
            20,
        );
        assert_eq!(t.spi_count(), 4);
        let spi = |s| rec(50, "198.18.0.1", "192.0.2.2", (0, 0), Some(s));
        assert!(t.name_of(&spi(1)).is_none() && t.name_of(&spi(2)).is_none());
        assert!(t.name_of(&spi(3)).is_some() && t.name_of(&spi(6)).is_some());
    }

    #[test]
    fn children_of_a_list_sa_message() {
        #[rustfmt::skip]
        let parts: &[&[u8]] = &[
            &[1, 2], b"hq",
            &[3, 10], b"local-host", &[0, 9], b"192.0.2.2",
            &[3, 11], b"remote-host", &[0, 9], b"192.0.2.1",
            &[1, 9], b"child-sas",
            &[1, 5], b"net-7",
            &[3, 4], b"name", &[0, 3], b"net",
            &[3, 6], b"spi-in", &[0, 8], b"c985e016",
            &[3, 7], b"spi-out", &[0, 8], b"0d306aba",
            &[4, 8], b"local-ts", &[5, 0, 15], b"198.51.100.0/24", &[6],
            &[4, 9], b"remote-ts", &[5, 0, 12], b"10.99.0.0/24", &[5, 0, 7], b"dynamic", &[6],
            &[2, 2, 2],
        ];
        let c = children_of(&parts.concat()).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].connection.as_str(), c[0].child.as_str()),
            ("hq", "net")
        );
        assert_eq!(
            (c[0].spi_in, c[0].spi_out),
            (Some(0xc985_e016), Some(0x0d30_6aba))
        );
        assert_eq!(c[0].remote_host, "192.0.2.1".parse().ok());
        assert_eq!(c[0].local_ts, vec![Net::parse("198.51.100.0/24").unwrap()]);
        assert_eq!(c[0].remote_ts, vec![Net::parse("10.99.0.0/24").unwrap()]);
        assert!(children_of(&[1, 2, b'h']).is_err());
    }
}
