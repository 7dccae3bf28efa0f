//! The one flow model shared by the probe (what it exports) and the collector (what it decodes
//! from any exporter).

use std::net::{IpAddr, Ipv4Addr};

/// RFC 5102 / IANA `flowEndReason` (IE 136) values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum EndReason {
    /// 1: no packet for the idle (inactive) timeout.
    IdleTimeout,
    /// 2: the flow lived longer than the active timeout.
    ActiveTimeout,
    /// 3: end of flow detected (TCP FIN or RST).
    EndOfFlow,
    /// 4: forced end (shutdown, end of a replayed capture).
    ForcedEnd,
    /// 5: lack of resources (evicted from a full cache).
    LackOfResources,
    /// Any other value seen on the wire.
    Other(u8),
}

impl EndReason {
    pub fn code(self) -> u8 {
        match self {
            EndReason::IdleTimeout => 1,
            EndReason::ActiveTimeout => 2,
            EndReason::EndOfFlow => 3,
            EndReason::ForcedEnd => 4,
            EndReason::LackOfResources => 5,
            EndReason::Other(n) => n,
        }
    }

    pub fn from_code(code: u8) -> Self {
        match code {
            1 => EndReason::IdleTimeout,
            2 => EndReason::ActiveTimeout,
            3 => EndReason::EndOfFlow,
            4 => EndReason::ForcedEnd,
            5 => EndReason::LackOfResources,
            n => EndReason::Other(n),
        }
    }
}

/// `flowDirection` (IE 61): 0 ingress, 1 egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn code(self) -> u8 {
        match self {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        }
    }
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Direction::Ingress),
            1 => Some(Direction::Egress),
            _ => None,
        }
    }
}

/// One flow record, as labelflow exports it and as the collector sees any exporter's record.
///
/// Fields a given exporter or format does not carry are `None` / zero. Times are milliseconds
/// since the UNIX epoch (IPFIX `flowStartMilliseconds` / `flowEndMilliseconds`); decoders of
/// formats with uptime-relative times (NetFlow v5/v9) convert with the header's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    /// IPFIX observation domain id (v9 source id, v5 engine type/id packed as `type << 8 | id`).
    pub observation_domain: u32,
    /// NFLOG group the packets came from (`observationPointId`, IE 138).
    pub group: Option<u32>,
    /// The group's label (`applicationName`, IE 96), or resolved from `applicationId` (IE 95)
    /// through the exporter's options records.
    pub label: Option<String>,
    pub src_addr: IpAddr,
    pub dst_addr: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// TCP/UDP/SCTP/UDP-lite ports; 0 for other protocols and non-first fragments.
    pub src_port: u16,
    pub dst_port: u16,
    /// ICMP/ICMPv6 `type << 8 | code` (IE 32 / 139); 0 otherwise.
    pub icmp_type_code: u16,
    /// ESP/AH security parameter index (`IPSecSPI`, IE 295).
    pub ipsec_spi: Option<u32>,
    pub ingress_if: u32,
    pub egress_if: u32,
    /// Octets counted from the IP header's length field.
    pub bytes: u64,
    pub packets: u64,
    /// OR of the TCP flags seen.
    pub tcp_flags: u8,
    /// IPv4 ToS / IPv6 traffic class of the first packet.
    pub tos: u8,
    pub start_ms: u64,
    pub end_ms: u64,
    pub end_reason: Option<EndReason>,
    pub direction: Option<Direction>,
    /// Netfilter mark (ulogd2 netfilter enterprise IE, PEN 21373, element 4).
    pub mark: Option<u32>,
    /// Owner of the sending socket (`userName`, IE 371).
    pub user_name: Option<String>,
    /// NFLOG prefix (ulogd2 netfilter enterprise IE, PEN 21373, element 3).
    pub nflog_prefix: Option<String>,
    /// Packet sampling interval announced by the exporter (1 = every packet).
    pub sampling_interval: u32,
    /// The IPsec tunnel (IKE connection) the flow belongs to, as the IKE daemon names it:
    /// ESP on the wire by SPI, IKE and keepalives by peer, inner traffic by traffic selector.
    pub tunnel: Option<String>,
    /// What a connection-tracking source adds: the addresses after NAT, zone, TCP state.
    pub conntrack: Option<ConnInfo>,
}

/// RFC 5103 `biflowDirection` (IE 239): which side of the connection sent the packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BiflowDirection {
    /// 1: the connection's initiator (conntrack's original direction).
    Initiator,
    /// 2: the responder (conntrack's reply direction).
    ReverseInitiator,
    /// Any other value seen on the wire (0 arbitrary, 3 perimeter).
    Other(u8),
}

impl BiflowDirection {
    pub fn code(self) -> u8 {
        match self {
            BiflowDirection::Initiator => 1,
            BiflowDirection::ReverseInitiator => 2,
            BiflowDirection::Other(n) => n,
        }
    }
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => BiflowDirection::Initiator,
            2 => BiflowDirection::ReverseInitiator,
            n => BiflowDirection::Other(n),
        }
    }
}

/// The connection a record belongs to, as the kernel's connection tracking sees it.
///
/// `src_addr`/`dst_addr` of the record are the packets' addresses as they arrived; the
/// `post_nat_*` fields are the same packets' addresses as they left, after NAT
/// (`postNATSourceIPv4Address` 225, `postNATDestinationIPv4Address` 226,
/// `postNAPTSourceTransportPort` 227, `postNAPTDestinationTransportPort` 228, IPv6 281 / 282).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    pub post_nat_src: IpAddr,
    pub post_nat_dst: IpAddr,
    pub post_napt_src_port: u16,
    pub post_napt_dst_port: u16,
    /// Which side of the connection this record counts.
    pub direction: BiflowDirection,
    /// Conntrack zone (`CTA_ZONE`; 0 = the default zone).
    pub zone: u16,
    /// TCP state (`enum tcp_conntrack`: 3 established, 7 time-wait, 8 close, ...); `None`
    /// for other protocols.
    pub tcp_state: Option<u8>,
    /// The kernel's connection id (`CTA_ID`), exported as `flowId` (IE 148).
    pub conn_id: u32,
    /// A biflow (RFC 5103): the reply direction's octets and packets
    /// (`reverseOctetDeltaCount` / `reversePacketDeltaCount`, enterprise 29305), the record's
    /// own counters and addresses being the original direction's. `None`: unidirectional.
    pub reverse: Option<(u64, u64)>,
    /// ICMP type and code of the reply direction (echo reply for an echo request), for
    /// [`FlowRecord::unidirectional`]; not exported.
    pub reply_icmp_type_code: u16,
}

impl FlowRecord {
    /// A biflow as its two unidirectional records (original, then reply direction; a
    /// direction without octets and packets gives `None`). A record that is no biflow comes
    /// back as it is, first.
    ///
    /// The reply direction arrives with the original direction's post-NAT addresses and
    /// ports swapped, and leaves with the original direction's own swapped.
    pub fn unidirectional(&self) -> [Option<FlowRecord>; 2] {
        let Some(c) = self.conntrack.filter(|c| c.reverse.is_some()) else {
            return [Some(self.clone()), None];
        };
        let (rev_bytes, rev_packets) = c.reverse.unwrap_or((0, 0));
        let forward = (self.bytes != 0 || self.packets != 0).then(|| FlowRecord {
            conntrack: Some(ConnInfo { reverse: None, ..c }),
            ..self.clone()
        });
        let reply = (rev_bytes != 0 || rev_packets != 0).then(|| FlowRecord {
            src_addr: c.post_nat_dst,
            dst_addr: c.post_nat_src,
            src_port: c.post_napt_dst_port,
            dst_port: c.post_napt_src_port,
            icmp_type_code: c.reply_icmp_type_code,
            bytes: rev_bytes,
            packets: rev_packets,
            conntrack: Some(ConnInfo {
                post_nat_src: self.dst_addr,
                post_nat_dst: self.src_addr,
                post_napt_src_port: self.dst_port,
                post_napt_dst_port: self.src_port,
                direction: BiflowDirection::ReverseInitiator,
                reverse: None,
                reply_icmp_type_code: self.icmp_type_code,
                ..c
            }),
            ..self.clone()
        });
        [forward, reply]
    }
}

impl FlowRecord {
    /// Completes a decoded record's connection facts: a post-NAT address the exporter did
    /// not send (unspecified) means the address was not translated, so it and its port are
    /// the record's own. Exporters of RFC 5103 biflows without NAT elements (YAF, for one)
    /// then split into directions with their own addresses swapped.
    pub fn settle_conntrack(&mut self) {
        let (src, dst, sport, dport) = (self.src_addr, self.dst_addr, self.src_port, self.dst_port);
        if let Some(c) = self.conntrack.as_mut() {
            if c.post_nat_src.is_unspecified() {
                (c.post_nat_src, c.post_napt_src_port) = (src, sport);
            }
            if c.post_nat_dst.is_unspecified() {
                (c.post_nat_dst, c.post_napt_dst_port) = (dst, dport);
            }
        }
    }

    /// The address translation this record shows, as (inside, public): a translated source
    /// (SNAT, masquerade: the inside host sends) or a translated destination (the reply of
    /// a masqueraded connection, or DNAT towards an inside server). `None` for records
    /// without connection facts or without translation.
    pub fn nat_pair(&self) -> Option<(IpAddr, IpAddr)> {
        let c = self.conntrack.as_ref()?;
        if !c.post_nat_src.is_unspecified() && c.post_nat_src != self.src_addr {
            return Some((self.src_addr, c.post_nat_src));
        }
        if !c.post_nat_dst.is_unspecified() && c.post_nat_dst != self.dst_addr {
            return Some((c.post_nat_dst, self.dst_addr));
        }
        None
    }
}

impl Default for FlowRecord {
    fn default() -> Self {
        FlowRecord {
            observation_domain: 0,
            group: None,
            label: None,
            src_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            protocol: 0,
            src_port: 0,
            dst_port: 0,
            icmp_type_code: 0,
            ipsec_spi: None,
            ingress_if: 0,
            egress_if: 0,
            bytes: 0,
            packets: 0,
            tcp_flags: 0,
            tos: 0,
            start_ms: 0,
            end_ms: 0,
            end_reason: None,
            direction: None,
            mark: None,
            user_name: None,
            nflog_prefix: None,
            sampling_interval: 1,
            tunnel: None,
            conntrack: None,
        }
    }
}
