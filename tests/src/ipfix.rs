//! Decoding what a probe exported (IPFIX, NetFlow v9) into per-label totals, with
//! `netflow_parser`: a decoder nobody here wrote, so the checks are independent of
//! `labelflow-proto`.

use std::collections::BTreeMap;

use netflow_parser::variable_versions::ipfix::lookup::{IANAIPFixField, IPFixField};
use netflow_parser::variable_versions::ipfix::{FlowSetBody, IPFixFieldPair};
use netflow_parser::{DataNumber, FieldValue};
use netflow_parser::{NetflowPacket, NetflowParser};

use crate::rules::Counter;

/// IANA information element numbers used by the checks.
pub mod ie {
    pub const OCTET_DELTA_COUNT: u16 = 1;
    pub const PACKET_DELTA_COUNT: u16 = 2;
    pub const PROTOCOL_IDENTIFIER: u16 = 4;
    pub const OCTET_TOTAL_COUNT: u16 = 85;
    pub const PACKET_TOTAL_COUNT: u16 = 86;
    pub const APPLICATION_NAME: u16 = 96;
    pub const OBSERVATION_POINT_ID: u16 = 138;
    pub const IGNORED_PACKET_TOTAL_COUNT: u16 = 164;
    pub const IPSEC_SPI: u16 = 295;
}

/// One exported data record, reduced to what the lab checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flow {
    pub group: Option<u32>,
    pub label: Option<String>,
    pub protocol: Option<u8>,
    pub spi: Option<u32>,
    pub packets: u64,
    pub bytes: u64,
    /// labelflow's `tunnelName` (enterprise element, PEN 32473, id 1).
    pub tunnel: Option<String>,
    /// Addresses and ports (IPv4 or IPv6 elements).
    pub src: Option<std::net::IpAddr>,
    pub dst: Option<std::net::IpAddr>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    /// The NAT elements (225-228, 281/282) and `biflowDirection` (239) of conntrack records.
    pub nat: Option<NatView>,
}

/// What a record says about the addresses after NAT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatView {
    pub post_src: Option<std::net::IpAddr>,
    pub post_dst: Option<std::net::IpAddr>,
    pub post_src_port: Option<u16>,
    pub post_dst_port: Option<u16>,
    /// 1 initiator (original direction), 2 reverse initiator (reply direction).
    pub biflow_direction: Option<u8>,
    /// RFC 5103 reverse counters of a biflow (enterprise 29305): octets, packets.
    pub reverse: Option<(u64, u64)>,
}

/// Accumulates everything decoded from a stream of export datagrams.
#[derive(Debug, Default)]
pub struct ExportLog {
    parser: NetflowParser,
    pub datagrams: u64,
    /// Datagrams (or their tails) `netflow_parser` could not decode, with the error text.
    pub errors: Vec<String>,
    pub flows: Vec<Flow>,
    /// Latest `ignoredPacketTotalCount` per `observationPointId` scope (options records).
    pub ignored: BTreeMap<u32, u64>,
    /// Options records seen (any scope).
    pub options_records: u64,
}

impl ExportLog {
    pub fn new() -> ExportLog {
        ExportLog::default()
    }

    /// Decodes one datagram.
    pub fn feed(&mut self, datagram: &[u8]) {
        self.datagrams += 1;
        let result = self.parser.parse_bytes(datagram);
        if let Some(e) = result.error {
            self.errors.push(e.to_string());
        }
        for packet in result.packets {
            match packet {
                NetflowPacket::IPFix(msg) => {
                    for set in msg.flowsets {
                        match set.body {
                            FlowSetBody::Data(d) => {
                                for rec in &d.fields {
                                    self.flows.push(flow_of(rec));
                                }
                            }
                            FlowSetBody::OptionsData(d) => {
                                for rec in &d.fields {
                                    self.options_records += 1;
                                    self.options_of(rec);
                                }
                            }
                            FlowSetBody::NoTemplate(info) => {
                                self.errors
                                    .push(format!("data set without template: {info:?}"));
                            }
                            _ => {}
                        }
                    }
                }
                NetflowPacket::V9(msg) => {
                    use netflow_parser::variable_versions::v9::FlowSetBody as V9Body;
                    for set in msg.flowsets {
                        if let V9Body::Data(d) = set.body {
                            for rec in &d.fields {
                                let pairs: Vec<(u16, &FieldValue)> =
                                    rec.iter().map(|(f, v)| (u16::from(*f), v)).collect();
                                self.flows.push(flow_of_numbered(&pairs));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn options_of(&mut self, rec: &[IPFixFieldPair]) {
        let pairs = numbered(rec);
        let scope = pairs
            .iter()
            .find(|(n, _)| *n == ie::OBSERVATION_POINT_ID)
            .and_then(|(_, v)| number(v));
        let ignored = pairs
            .iter()
            .find(|(n, _)| *n == ie::IGNORED_PACKET_TOTAL_COUNT)
            .and_then(|(_, v)| number(v));
        if let (Some(group), Some(count)) = (scope, ignored) {
            // A total counter: the latest report is the highest.
            let slot = self.ignored.entry(group as u32).or_default();
            *slot = (*slot).max(count);
        }
    }

    /// Packets and bytes per label (flows without a label count under `""`).
    pub fn totals_by_label(&self) -> BTreeMap<String, Counter> {
        let mut out = BTreeMap::new();
        for f in &self.flows {
            let c: &mut Counter = out.entry(f.label.clone().unwrap_or_default()).or_default();
            c.packets += f.packets;
            c.bytes += f.bytes;
        }
        out
    }

    /// Packets and bytes per group (`observationPointId`).
    pub fn totals_by_group(&self) -> BTreeMap<Option<u32>, Counter> {
        let mut out = BTreeMap::new();
        for f in &self.flows {
            let c: &mut Counter = out.entry(f.group).or_default();
            c.packets += f.packets;
            c.bytes += f.bytes;
        }
        out
    }

    /// Packets per SPI of the ESP and AH flows (other flows may carry `IPSecSPI` 0 when the
    /// exporter uses one template for every flow).
    pub fn packets_by_spi(&self) -> BTreeMap<u32, u64> {
        let mut out = BTreeMap::new();
        for f in &self.flows {
            if !matches!(f.protocol, Some(50 | 51)) {
                continue;
            }
            if let Some(spi) = f.spi {
                *out.entry(spi).or_default() += f.packets;
            }
        }
        out
    }
}

impl ExportLog {
    /// Packets and bytes per SPI of the UDP flows that carry one: UDP-encapsulated ESP
    /// (RFC 3948), as the probe decodes it on NAT-T ports. Zero means no SPI.
    pub fn udp_esp_by_spi(&self) -> BTreeMap<u32, Counter> {
        let mut out: BTreeMap<u32, Counter> = BTreeMap::new();
        for f in &self.flows {
            if let (Some(17), Some(spi)) = (f.protocol, f.spi) {
                if spi != 0 {
                    let c = out.entry(spi).or_default();
                    c.packets += f.packets;
                    c.bytes += f.bytes;
                }
            }
        }
        out
    }
}

fn numbered(rec: &[IPFixFieldPair]) -> Vec<(u16, &FieldValue)> {
    rec.iter()
        .filter_map(|(f, v)| match f {
            IPFixField::IANA(x) => iana_number(*x).map(|n| (n, v)),
            _ => None,
        })
        .collect()
}

/// The numbers of the elements the lab reads (the crate's enum has no numeric conversion).
fn iana_number(f: IANAIPFixField) -> Option<u16> {
    Some(match f {
        IANAIPFixField::OctetDeltaCount => ie::OCTET_DELTA_COUNT,
        IANAIPFixField::PacketDeltaCount => ie::PACKET_DELTA_COUNT,
        IANAIPFixField::ProtocolIdentifier => ie::PROTOCOL_IDENTIFIER,
        IANAIPFixField::OctetTotalCount => ie::OCTET_TOTAL_COUNT,
        IANAIPFixField::PacketTotalCount => ie::PACKET_TOTAL_COUNT,
        IANAIPFixField::ApplicationName => ie::APPLICATION_NAME,
        IANAIPFixField::ObservationPointId => ie::OBSERVATION_POINT_ID,
        IANAIPFixField::IgnoredPacketTotalCount => ie::IGNORED_PACKET_TOTAL_COUNT,
        IANAIPFixField::IpSecSPI => ie::IPSEC_SPI,
        IANAIPFixField::Unknown(n) => n,
        _ => return None,
    })
}

fn ip_of(v: &FieldValue) -> Option<std::net::IpAddr> {
    match v {
        FieldValue::Ip4Addr(a) => Some((*a).into()),
        FieldValue::Ip6Addr(a) => Some((*a).into()),
        _ => None,
    }
}

/// Addresses, ports and the conntrack elements of a record.
fn addresses_of(f: &mut Flow, field: IANAIPFixField, v: &FieldValue) {
    use IANAIPFixField as F;
    let port = || number(v).map(|p| p as u16);
    match field {
        F::SourceIpv4address | F::SourceIpv6address => f.src = ip_of(v),
        F::DestinationIpv4address | F::DestinationIpv6address => f.dst = ip_of(v),
        F::SourceTransportPort => f.src_port = port(),
        F::DestinationTransportPort => f.dst_port = port(),
        F::PostNatsourceIpv4address | F::PostNatsourceIpv6address => {
            f.nat.get_or_insert_with(NatView::default).post_src = ip_of(v)
        }
        F::PostNatdestinationIpv4address | F::PostNatdestinationIpv6address => {
            f.nat.get_or_insert_with(NatView::default).post_dst = ip_of(v)
        }
        F::PostNaptsourceTransportPort => {
            f.nat.get_or_insert_with(NatView::default).post_src_port = port()
        }
        F::PostNaptdestinationTransportPort => {
            f.nat.get_or_insert_with(NatView::default).post_dst_port = port()
        }
        F::BiflowDirection => {
            f.nat.get_or_insert_with(NatView::default).biflow_direction = number(v).map(|d| d as u8)
        }
        _ => {}
    }
}

fn flow_of(rec: &[IPFixFieldPair]) -> Flow {
    let mut f = flow_of_numbered(&numbered(rec));
    for (field, v) in rec {
        if let IPFixField::IANA(x) = field {
            addresses_of(&mut f, *x, v);
        }
        if let IPFixField::ReverseInformationElement(r) = field {
            use netflow_parser::variable_versions::ipfix::lookup::ReverseInformationElement as R;
            let n = number(v).unwrap_or(0);
            let rev = f
                .nat
                .get_or_insert_with(NatView::default)
                .reverse
                .get_or_insert((0, 0));
            match r {
                R::ReverseOctetDeltaCount => rev.0 = n,
                R::ReversePacketDeltaCount => rev.1 = n,
                _ => {}
            }
        }
        if let IPFixField::Enterprise {
            enterprise_number: labelflow_pen::PEN,
            field_number: labelflow_pen::TUNNEL_NAME,
        } = field
        {
            let raw = match v {
                FieldValue::String(s) => s.value.clone().into_bytes(),
                FieldValue::DataNumber(DataNumber::Vec(b)) => b.clone(),
                FieldValue::Vec(b) => b.clone(),
                _ => Vec::new(),
            };
            let text = String::from_utf8_lossy(&raw)
                .trim_end_matches('\0')
                .to_owned();
            f.tunnel = (!text.is_empty()).then_some(text);
        }
    }
    f
}

/// labelflow's own enterprise elements (the probe's `proto::ie::labelflow`).
mod labelflow_pen {
    pub const PEN: u32 = 32473;
    pub const TUNNEL_NAME: u16 = 1;
}

fn flow_of_numbered(pairs: &[(u16, &FieldValue)]) -> Flow {
    let mut f = Flow::default();
    for (n, v) in pairs {
        match *n {
            ie::OCTET_DELTA_COUNT => f.bytes = number(v).unwrap_or(0),
            ie::PACKET_DELTA_COUNT => f.packets = number(v).unwrap_or(0),
            // Peers that export each connection once, at its end, send totals instead
            // (ulogd2's IPFIX output: octetTotalCount and packetTotalCount, RFC 7012
            // sections 5.10.6 and 5.10.7); the lab reads them as that record's counts.
            ie::OCTET_TOTAL_COUNT => f.bytes = number(v).unwrap_or(0),
            ie::PACKET_TOTAL_COUNT => f.packets = number(v).unwrap_or(0),
            ie::PROTOCOL_IDENTIFIER => f.protocol = number(v).map(|p| p as u8),
            ie::OBSERVATION_POINT_ID => f.group = number(v).map(|g| g as u32),
            ie::IPSEC_SPI => f.spi = number(v).map(|s| s as u32),
            ie::APPLICATION_NAME => {
                if let FieldValue::String(s) = v {
                    f.label = Some(s.value.trim_end_matches('\0').to_owned());
                }
            }
            _ => {}
        }
    }
    f
}

/// An unsigned number of any width (also the protocol, decoded as an enum).
pub fn number(v: &FieldValue) -> Option<u64> {
    match v {
        FieldValue::DataNumber(d) => match d {
            DataNumber::U8(x) => Some(u64::from(*x)),
            DataNumber::U16(x) => Some(u64::from(*x)),
            DataNumber::U24(x) | DataNumber::U32(x) => Some(u64::from(*x)),
            DataNumber::U64(x) => Some(*x),
            DataNumber::U128(x) => u64::try_from(*x).ok(),
            DataNumber::Vec(b) if b.len() <= 8 => {
                Some(b.iter().fold(0u64, |a, x| a << 8 | u64::from(*x)))
            }
            _ => None,
        },
        FieldValue::ProtocolType(p) => Some(u64::from(u8::from(*p))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One message in ulogd2's IPFIX shape (output/ipfix/ipfix.c: template 256 of ten
    /// elements, totals of 4 bytes) with one record of 7 packets and 900 octets.
    fn ulogd_message() -> Vec<u8> {
        let elems: [(u16, u16); 10] = [
            (8, 4),
            (12, 4),
            (86, 4),
            (85, 4),
            (150, 4),
            (151, 4),
            (7, 2),
            (11, 2),
            (4, 1),
            (95, 4),
        ];
        let mut set = vec![0, 2, 0, 0, 1, 0, 0, 10];
        for (id, len) in elems {
            set.extend_from_slice(&id.to_be_bytes());
            set.extend_from_slice(&len.to_be_bytes());
        }
        let n = set.len() as u16;
        set[2..4].copy_from_slice(&n.to_be_bytes());
        let mut data = vec![1, 0, 0, 0];
        data.extend_from_slice(&[10, 0, 0, 2, 192, 0, 2, 1]);
        data.extend_from_slice(&7u32.to_be_bytes());
        data.extend_from_slice(&900u32.to_be_bytes());
        data.extend_from_slice(&[0; 8]);
        data.extend_from_slice(&[0xc3, 0x50, 0x14, 0x51, 17, 0, 0, 0, 0x20]);
        let n = data.len() as u16;
        data[2..4].copy_from_slice(&n.to_be_bytes());
        let mut msg = vec![0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1];
        msg.extend_from_slice(&set);
        msg.extend_from_slice(&data);
        let n = msg.len() as u16;
        msg[2..4].copy_from_slice(&n.to_be_bytes());
        msg
    }

    #[test]
    fn total_counts_are_read_as_the_records_counts() {
        let mut log = ExportLog::new();
        log.feed(&ulogd_message());
        assert!(log.errors.is_empty(), "{:?}", log.errors);
        assert_eq!(log.flows.len(), 1);
        assert_eq!((log.flows[0].packets, log.flows[0].bytes), (7, 900));
    }
}
