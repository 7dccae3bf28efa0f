//! IPFIX information elements used by labelflow.
//!
//! Identifiers from the IANA "IPFIX Information Elements" registry (RFC 7012 section 4;
//! originally RFC 5102), `applicationId` encoding from RFC 6759, and the netfilter
//! enterprise elements (PEN 21373) that ulogd2 exports.

/// Bit 15 of an IE id in a template: an enterprise number follows (RFC 7011 section 3.2).
pub const ENTERPRISE_BIT: u16 = 0x8000;
/// Field length announcing a variable-length field (RFC 7011 section 7).
pub const VARLEN: u16 = 65535;
/// Private Enterprise Number of the netfilter project, as ulogd2 uses it.
pub const PEN_NETFILTER: u32 = 21373;
/// Enterprise number of labelflow's own elements ([`labelflow`]). labelflow has no number of
/// its own registered with IANA; until it does, its elements use 32473, the number RFC 5612
/// reserves for documentation, which no real enterprise holds, so they never collide with a
/// vendor's. Collectors that do not know an enterprise element skip it by its length
/// (RFC 7011 section 3.2).
pub const PEN_LABELFLOW: u32 = 32473;
/// RFC 5103 section 6.1: the reverse direction's element has the forward element's id under
/// this enterprise number.
pub const PEN_REVERSE: u32 = 29305;
/// RFC 6759 section 4.1 classification engine id 6: "USER-Defined".
pub const APP_ENGINE_USER_DEFINED: u8 = 6;

/// IANA-assigned element ids (enterprise bit clear).
pub mod iana {
    pub const OCTET_DELTA_COUNT: u16 = 1;
    pub const PACKET_DELTA_COUNT: u16 = 2;
    pub const PROTOCOL_IDENTIFIER: u16 = 4;
    pub const IP_CLASS_OF_SERVICE: u16 = 5;
    pub const TCP_CONTROL_BITS: u16 = 6;
    pub const SOURCE_TRANSPORT_PORT: u16 = 7;
    pub const SOURCE_IPV4_ADDRESS: u16 = 8;
    pub const INGRESS_INTERFACE: u16 = 10;
    pub const DESTINATION_TRANSPORT_PORT: u16 = 11;
    pub const DESTINATION_IPV4_ADDRESS: u16 = 12;
    pub const EGRESS_INTERFACE: u16 = 14;
    pub const SOURCE_IPV6_ADDRESS: u16 = 27;
    pub const DESTINATION_IPV6_ADDRESS: u16 = 28;
    pub const ICMP_TYPE_CODE_IPV4: u16 = 32;
    pub const FLOW_DIRECTION: u16 = 61;
    pub const INTERFACE_NAME: u16 = 82;
    pub const INTERFACE_DESCRIPTION: u16 = 83;
    pub const PACKET_TOTAL_COUNT: u16 = 86;
    pub const APPLICATION_DESCRIPTION: u16 = 94;
    pub const APPLICATION_ID: u16 = 95;
    pub const APPLICATION_NAME: u16 = 96;
    pub const FLOW_END_REASON: u16 = 136;
    pub const OBSERVATION_POINT_ID: u16 = 138;
    pub const ICMP_TYPE_CODE_IPV6: u16 = 139;
    pub const EXPORTING_PROCESS_ID: u16 = 144;
    pub const FLOW_ID: u16 = 148;
    pub const OBSERVATION_DOMAIN_ID: u16 = 149;
    pub const FLOW_START_MILLISECONDS: u16 = 152;
    pub const FLOW_END_MILLISECONDS: u16 = 153;
    pub const IGNORED_PACKET_TOTAL_COUNT: u16 = 164;
    pub const POST_NAT_SOURCE_IPV4_ADDRESS: u16 = 225;
    pub const POST_NAT_DESTINATION_IPV4_ADDRESS: u16 = 226;
    pub const POST_NAPT_SOURCE_TRANSPORT_PORT: u16 = 227;
    pub const POST_NAPT_DESTINATION_TRANSPORT_PORT: u16 = 228;
    pub const BIFLOW_DIRECTION: u16 = 239;
    pub const POST_NAT_SOURCE_IPV6_ADDRESS: u16 = 281;
    pub const POST_NAT_DESTINATION_IPV6_ADDRESS: u16 = 282;
    pub const IPSEC_SPI: u16 = 295;
    pub const SAMPLING_PACKET_INTERVAL: u16 = 305;
    pub const SAMPLING_PACKET_SPACE: u16 = 306;
    pub const USER_NAME: u16 = 371;
}

/// Netfilter enterprise elements (PEN 21373), numbered as ulogd2's IPFIX output does.
pub mod netfilter {
    pub const PREFIX: u16 = 3;
    pub const MARK: u16 = 4;
}

/// labelflow's enterprise elements (PEN [`PEN_LABELFLOW`]).
pub mod labelflow {
    /// The IPsec tunnel (IKE connection name) a flow belongs to: string, variable length.
    pub const TUNNEL_NAME: u16 = 1;
    /// Conntrack zone of the connection (`CTA_ZONE`): unsigned16.
    pub const CT_ZONE: u16 = 2;
    /// TCP state of the connection (`enum tcp_conntrack`): unsigned8.
    pub const CT_TCP_STATE: u16 = 3;
}

/// One field specifier of a template record (RFC 7011 section 3.2).
///
/// `id` never carries the enterprise bit; `enterprise` is `Some(pen)` when it was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldSpec {
    pub id: u16,
    /// Octets on the wire, or [`VARLEN`].
    pub length: u16,
    pub enterprise: Option<u32>,
}

impl FieldSpec {
    pub const fn iana(id: u16, length: u16) -> Self {
        FieldSpec {
            id,
            length,
            enterprise: None,
        }
    }
    pub const fn enterprise(pen: u32, id: u16, length: u16) -> Self {
        FieldSpec {
            id,
            length,
            enterprise: Some(pen),
        }
    }
    pub const fn is_varlen(&self) -> bool {
        self.length == VARLEN
    }
    /// Octets this specifier takes in a template record.
    pub const fn spec_len(&self) -> usize {
        if self.enterprise.is_some() {
            8
        } else {
            4
        }
    }
    /// The element this specifier names.
    pub fn ie(&self) -> Ie {
        Ie::from_ids(self.id, self.enterprise)
    }
}

/// The elements labelflow understands; everything else survives as [`Ie::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ie {
    OctetDeltaCount,
    PacketDeltaCount,
    ProtocolIdentifier,
    IpClassOfService,
    TcpControlBits,
    SourceTransportPort,
    SourceIpv4Address,
    IngressInterface,
    DestinationTransportPort,
    DestinationIpv4Address,
    EgressInterface,
    SourceIpv6Address,
    DestinationIpv6Address,
    IcmpTypeCodeIpv4,
    FlowDirection,
    InterfaceName,
    InterfaceDescription,
    PacketTotalCount,
    ApplicationDescription,
    ApplicationId,
    ApplicationName,
    FlowEndReason,
    ObservationPointId,
    IcmpTypeCodeIpv6,
    ExportingProcessId,
    ObservationDomainId,
    FlowStartMilliseconds,
    FlowEndMilliseconds,
    IgnoredPacketTotalCount,
    IpsecSpi,
    SamplingPacketInterval,
    SamplingPacketSpace,
    UserName,
    NetfilterPrefix,
    NetfilterMark,
    TunnelName,
    FlowId,
    PostNatSourceIpv4Address,
    PostNatDestinationIpv4Address,
    PostNaptSourceTransportPort,
    PostNaptDestinationTransportPort,
    BiflowDirection,
    PostNatSourceIpv6Address,
    PostNatDestinationIpv6Address,
    CtZone,
    CtTcpState,
    ReverseOctetDeltaCount,
    ReversePacketDeltaCount,
    Other { id: u16, enterprise: Option<u32> },
}

impl Ie {
    pub fn from_ids(id: u16, enterprise: Option<u32>) -> Ie {
        use iana::*;
        match enterprise {
            None => match id {
                OCTET_DELTA_COUNT => Ie::OctetDeltaCount,
                PACKET_DELTA_COUNT => Ie::PacketDeltaCount,
                PROTOCOL_IDENTIFIER => Ie::ProtocolIdentifier,
                IP_CLASS_OF_SERVICE => Ie::IpClassOfService,
                TCP_CONTROL_BITS => Ie::TcpControlBits,
                SOURCE_TRANSPORT_PORT => Ie::SourceTransportPort,
                SOURCE_IPV4_ADDRESS => Ie::SourceIpv4Address,
                INGRESS_INTERFACE => Ie::IngressInterface,
                DESTINATION_TRANSPORT_PORT => Ie::DestinationTransportPort,
                DESTINATION_IPV4_ADDRESS => Ie::DestinationIpv4Address,
                EGRESS_INTERFACE => Ie::EgressInterface,
                SOURCE_IPV6_ADDRESS => Ie::SourceIpv6Address,
                DESTINATION_IPV6_ADDRESS => Ie::DestinationIpv6Address,
                ICMP_TYPE_CODE_IPV4 => Ie::IcmpTypeCodeIpv4,
                FLOW_DIRECTION => Ie::FlowDirection,
                INTERFACE_NAME => Ie::InterfaceName,
                INTERFACE_DESCRIPTION => Ie::InterfaceDescription,
                PACKET_TOTAL_COUNT => Ie::PacketTotalCount,
                APPLICATION_DESCRIPTION => Ie::ApplicationDescription,
                APPLICATION_ID => Ie::ApplicationId,
                APPLICATION_NAME => Ie::ApplicationName,
                FLOW_END_REASON => Ie::FlowEndReason,
                OBSERVATION_POINT_ID => Ie::ObservationPointId,
                ICMP_TYPE_CODE_IPV6 => Ie::IcmpTypeCodeIpv6,
                EXPORTING_PROCESS_ID => Ie::ExportingProcessId,
                OBSERVATION_DOMAIN_ID => Ie::ObservationDomainId,
                FLOW_START_MILLISECONDS => Ie::FlowStartMilliseconds,
                FLOW_END_MILLISECONDS => Ie::FlowEndMilliseconds,
                IGNORED_PACKET_TOTAL_COUNT => Ie::IgnoredPacketTotalCount,
                IPSEC_SPI => Ie::IpsecSpi,
                SAMPLING_PACKET_INTERVAL => Ie::SamplingPacketInterval,
                SAMPLING_PACKET_SPACE => Ie::SamplingPacketSpace,
                USER_NAME => Ie::UserName,
                FLOW_ID => Ie::FlowId,
                POST_NAT_SOURCE_IPV4_ADDRESS => Ie::PostNatSourceIpv4Address,
                POST_NAT_DESTINATION_IPV4_ADDRESS => Ie::PostNatDestinationIpv4Address,
                POST_NAPT_SOURCE_TRANSPORT_PORT => Ie::PostNaptSourceTransportPort,
                POST_NAPT_DESTINATION_TRANSPORT_PORT => Ie::PostNaptDestinationTransportPort,
                BIFLOW_DIRECTION => Ie::BiflowDirection,
                POST_NAT_SOURCE_IPV6_ADDRESS => Ie::PostNatSourceIpv6Address,
                POST_NAT_DESTINATION_IPV6_ADDRESS => Ie::PostNatDestinationIpv6Address,
                _ => Ie::Other { id, enterprise },
            },
            Some(PEN_NETFILTER) => match id {
                netfilter::PREFIX => Ie::NetfilterPrefix,
                netfilter::MARK => Ie::NetfilterMark,
                _ => Ie::Other { id, enterprise },
            },
            Some(PEN_LABELFLOW) => match id {
                labelflow::TUNNEL_NAME => Ie::TunnelName,
                labelflow::CT_ZONE => Ie::CtZone,
                labelflow::CT_TCP_STATE => Ie::CtTcpState,
                _ => Ie::Other { id, enterprise },
            },
            Some(PEN_REVERSE) => match id {
                OCTET_DELTA_COUNT => Ie::ReverseOctetDeltaCount,
                PACKET_DELTA_COUNT => Ie::ReversePacketDeltaCount,
                _ => Ie::Other { id, enterprise },
            },
            Some(_) => Ie::Other { id, enterprise },
        }
    }
}

/// Reads an unsigned integer of 1 to 8 octets in network order (reduced-size encoding,
/// RFC 7011 section 6.2). Longer slices keep the low 8 octets.
pub fn be_uint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_to_elements_and_back() {
        assert_eq!(Ie::from_ids(138, None), Ie::ObservationPointId);
        assert_eq!(Ie::from_ids(4, Some(PEN_NETFILTER)), Ie::NetfilterMark);
        assert_eq!(Ie::from_ids(3, Some(PEN_NETFILTER)), Ie::NetfilterPrefix);
        assert_eq!(Ie::from_ids(4, None), Ie::ProtocolIdentifier);
        assert_eq!(
            Ie::from_ids(4, Some(9)),
            Ie::Other {
                id: 4,
                enterprise: Some(9)
            }
        );
        assert_eq!(
            Ie::from_ids(9999, None),
            Ie::Other {
                id: 9999,
                enterprise: None
            }
        );
    }

    #[test]
    fn reduced_size_integers() {
        assert_eq!(be_uint(&[]), 0);
        assert_eq!(be_uint(&[0x12]), 0x12);
        assert_eq!(be_uint(&[0x12, 0x34, 0x56]), 0x12_3456);
        assert_eq!(be_uint(&[1, 2, 3, 4, 5, 6, 7, 8]), 0x0102_0304_0506_0708);
    }
}
