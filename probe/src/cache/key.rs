//! The flow key (DESIGN.md decision 4), packed into 52 bytes.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use crate::decode::{addr, Decoded, IpVersion, Transport, UdpIpsec};
use crate::packet::PacketMeta;

const V6: u8 = 0x01;
const L4_SHIFT: u8 = 1;
const L4_NONE: u8 = 0;
const L4_PORTS: u8 = 1;
const L4_ICMP: u8 = 2;
const L4_SPI: u8 = 3;
/// Bits 3-4 of the tag, for UDP keyed with ports: what the datagrams carry.
const CLASS_SHIFT: u8 = 3;
const CLASS_PLAIN: u8 = 0;
const CLASS_ESP: u8 = 1;
const CLASS_IKE: u8 = 2;
const CLASS_KEEPALIVE: u8 = 3;

/// What a flow is keyed by: NFLOG group, IP version, addresses, protocol, ports (TCP, UDP,
/// SCTP, UDP-lite), ICMP type/code, ESP/AH SPI, ingress and egress ifindex.
///
/// Ports, ICMP type/code and SPI exclude each other, so they share one 32-bit field; a tag
/// says which one it holds. UDP on an IPsec port also carries its class (plain, ESP, IKE,
/// NAT-keepalive) in the tag, and the SPI of UDP-encapsulated ESP beside the ports. An IPv4
/// address fills the first 4 bytes of its 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    src: [u8; 16],
    dst: [u8; 16],
    ingress_if: u32,
    egress_if: u32,
    /// `src_port << 16 | dst_port`, `type << 8 | code`, or the SPI.
    l4: u32,
    /// SPI of UDP-encapsulated ESP, else 0.
    udp_spi: u32,
    group: u16,
    protocol: u8,
    /// Bit 0: IPv6. Bits 1-2: what `l4` holds. Bits 3-4: the UDP class.
    tag: u8,
}

impl FlowKey {
    pub fn new(meta: &PacketMeta<'_>, pkt: &Decoded) -> Self {
        let ports = |src: u16, dst: u16| u32::from(src) << 16 | u32::from(dst);
        let (kind, l4, class, udp_spi) = match pkt.transport {
            Transport::None => (L4_NONE, 0, CLASS_PLAIN, 0),
            Transport::Ports { src, dst } => (L4_PORTS, ports(src, dst), CLASS_PLAIN, 0),
            Transport::Icmp { kind, code } => (
                L4_ICMP,
                u32::from(kind) << 8 | u32::from(code),
                CLASS_PLAIN,
                0,
            ),
            Transport::Spi(spi) => (L4_SPI, spi, CLASS_PLAIN, 0),
            Transport::UdpIpsec { src, dst, kind } => {
                let (class, spi) = match kind {
                    UdpIpsec::Esp(spi) => (CLASS_ESP, spi),
                    UdpIpsec::Ike => (CLASS_IKE, 0),
                    UdpIpsec::NatKeepalive => (CLASS_KEEPALIVE, 0),
                };
                (L4_PORTS, ports(src, dst), class, spi)
            }
        };
        let v6 = match pkt.version {
            IpVersion::V4 => 0,
            IpVersion::V6 => V6,
        };
        FlowKey {
            src: pkt.src,
            dst: pkt.dst,
            ingress_if: meta.ingress_if,
            egress_if: meta.egress_if,
            l4,
            udp_spi,
            group: meta.group,
            protocol: pkt.protocol,
            tag: v6 | kind << L4_SHIFT | class << CLASS_SHIFT,
        }
    }

    pub fn group(&self) -> u16 {
        self.group
    }
    pub fn version(&self) -> IpVersion {
        if self.tag & V6 != 0 {
            IpVersion::V6
        } else {
            IpVersion::V4
        }
    }
    pub fn src_addr(&self) -> IpAddr {
        addr(self.version(), &self.src)
    }
    pub fn dst_addr(&self) -> IpAddr {
        addr(self.version(), &self.dst)
    }
    pub fn protocol(&self) -> u8 {
        self.protocol
    }
    fn kind(&self) -> u8 {
        (self.tag >> L4_SHIFT) & 0b11
    }
    /// What a UDP flow on an IPsec port carries; `None` for every other flow.
    pub fn udp_ipsec(&self) -> Option<UdpIpsec> {
        match self.tag >> CLASS_SHIFT {
            CLASS_ESP => Some(UdpIpsec::Esp(self.udp_spi)),
            CLASS_IKE => Some(UdpIpsec::Ike),
            CLASS_KEEPALIVE => Some(UdpIpsec::NatKeepalive),
            _ => None,
        }
    }
    /// Source and destination port; `(0, 0)` when the flow is keyed without ports.
    pub fn ports(&self) -> (u16, u16) {
        if self.kind() == L4_PORTS {
            ((self.l4 >> 16) as u16, self.l4 as u16)
        } else {
            (0, 0)
        }
    }
    /// ICMP / ICMPv6 `type << 8 | code`, 0 for other protocols.
    pub fn icmp_type_code(&self) -> u16 {
        if self.kind() == L4_ICMP {
            self.l4 as u16
        } else {
            0
        }
    }
    /// The SPI of ESP or AH, whether raw or inside UDP (RFC 3948).
    pub fn spi(&self) -> Option<u32> {
        match self.udp_ipsec() {
            Some(UdpIpsec::Esp(spi)) => Some(spi),
            _ => (self.kind() == L4_SPI).then_some(self.l4),
        }
    }
    pub fn ingress_if(&self) -> u32 {
        self.ingress_if
    }
    pub fn egress_if(&self) -> u32 {
        self.egress_if
    }
}

impl Hash for FlowKey {
    /// Three word writes instead of one per field.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_ne_bytes(self.src));
        state.write_u128(u128::from_ne_bytes(self.dst));
        let rest = u128::from(self.ingress_if)
            | u128::from(self.egress_if) << 32
            // The UDP SPI folded into the ports' word: equal keys still hash equal.
            | u128::from(self.l4 ^ self.udp_spi.rotate_left(16)) << 64
            | u128::from(self.group) << 96
            | u128::from(self.protocol) << 112
            | u128::from(self.tag) << 120;
        state.write_u128(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Fragment;

    fn pkt(transport: Transport) -> Decoded {
        Decoded {
            version: IpVersion::V4,
            src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            protocol: 17,
            transport,
            tcp_flags: 0,
            tos: 0,
            length: 100,
            fragment: Fragment::None,
            partial: None,
        }
    }

    #[test]
    fn key_is_52_bytes() {
        assert_eq!(std::mem::size_of::<FlowKey>(), 52);
    }

    #[test]
    fn accessors_round_trip() {
        let meta = PacketMeta {
            group: 7,
            ingress_if: 3,
            egress_if: 4,
            ..PacketMeta::default()
        };
        let k = FlowKey::new(&meta, &pkt(Transport::Ports { src: 1, dst: 2 }));
        assert_eq!(k.group(), 7);
        assert_eq!(k.ports(), (1, 2));
        assert_eq!(k.spi(), None);
        assert_eq!(k.icmp_type_code(), 0);
        assert_eq!((k.ingress_if(), k.egress_if()), (3, 4));
        assert_eq!(k.src_addr(), "10.0.0.1".parse::<IpAddr>().unwrap());
        let k = FlowKey::new(&meta, &pkt(Transport::Icmp { kind: 3, code: 4 }));
        assert_eq!((k.icmp_type_code(), k.ports()), (0x0304, (0, 0)));
        let k = FlowKey::new(&meta, &pkt(Transport::Spi(9)));
        assert_eq!(k.spi(), Some(9));
    }

    #[test]
    fn same_l4_value_different_kind_are_different_keys() {
        let meta = PacketMeta::default();
        let a = FlowKey::new(&meta, &pkt(Transport::Spi(0x0001_0002)));
        let b = FlowKey::new(&meta, &pkt(Transport::Ports { src: 1, dst: 2 }));
        assert_ne!(a, b);
        let none = FlowKey::new(&meta, &pkt(Transport::None));
        let zero = FlowKey::new(&meta, &pkt(Transport::Ports { src: 0, dst: 0 }));
        assert_ne!(none, zero);
    }

    #[test]
    fn udp_ipsec_classes_are_apart_and_esp_keeps_ports_and_spi() {
        let meta = PacketMeta::default();
        let class = |kind| {
            FlowKey::new(
                &meta,
                &pkt(Transport::UdpIpsec {
                    src: 4500,
                    dst: 4500,
                    kind,
                }),
            )
        };
        let esp = class(UdpIpsec::Esp(0xc001_d00d));
        let other_sa = class(UdpIpsec::Esp(0xc001_d00e));
        let ike = class(UdpIpsec::Ike);
        let keepalive = class(UdpIpsec::NatKeepalive);
        let plain = FlowKey::new(
            &meta,
            &pkt(Transport::Ports {
                src: 4500,
                dst: 4500,
            }),
        );
        let keys = [esp, other_sa, ike, keepalive, plain];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!((esp.ports(), esp.spi()), ((4500, 4500), Some(0xc001_d00d)));
        assert_eq!(esp.udp_ipsec(), Some(UdpIpsec::Esp(0xc001_d00d)));
        assert_eq!((ike.spi(), ike.udp_ipsec()), (None, Some(UdpIpsec::Ike)));
        assert_eq!(keepalive.udp_ipsec(), Some(UdpIpsec::NatKeepalive));
        assert_eq!((plain.udp_ipsec(), plain.spi()), (None, None));
    }
}
