//! The flow key (DESIGN.md decision 4), packed into 48 bytes.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use crate::decode::{addr, Decoded, IpVersion, Transport};
use crate::packet::PacketMeta;

const V6: u8 = 0x01;
const L4_SHIFT: u8 = 1;
const L4_NONE: u8 = 0;
const L4_PORTS: u8 = 1;
const L4_ICMP: u8 = 2;
const L4_SPI: u8 = 3;

/// What a flow is keyed by: NFLOG group, IP version, addresses, protocol, ports (TCP, UDP,
/// SCTP, UDP-lite), ICMP type/code, ESP/AH SPI, ingress and egress ifindex.
///
/// Ports, ICMP type/code and SPI exclude each other, so they share one 32-bit field; a tag
/// says which one it holds. An IPv4 address fills the first 4 bytes of its 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    src: [u8; 16],
    dst: [u8; 16],
    ingress_if: u32,
    egress_if: u32,
    /// `src_port << 16 | dst_port`, `type << 8 | code`, or the SPI.
    l4: u32,
    group: u16,
    protocol: u8,
    /// Bit 0: IPv6. Bits 1-2: what `l4` holds.
    tag: u8,
}

impl FlowKey {
    pub fn new(meta: &PacketMeta<'_>, pkt: &Decoded) -> Self {
        let (kind, l4) = match pkt.transport {
            Transport::None => (L4_NONE, 0),
            Transport::Ports { src, dst } => (L4_PORTS, u32::from(src) << 16 | u32::from(dst)),
            Transport::Icmp { kind, code } => (L4_ICMP, u32::from(kind) << 8 | u32::from(code)),
            Transport::Spi(spi) => (L4_SPI, spi),
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
            group: meta.group,
            protocol: pkt.protocol,
            tag: v6 | kind << L4_SHIFT,
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
        self.tag >> L4_SHIFT
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
    pub fn spi(&self) -> Option<u32> {
        (self.kind() == L4_SPI).then_some(self.l4)
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
            | u128::from(self.l4) << 64
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
    fn key_is_48_bytes() {
        assert_eq!(std::mem::size_of::<FlowKey>(), 48);
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
}
