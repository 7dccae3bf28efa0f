use super::*;
use crate::ipfix::Message;
use proptest::prelude::*;

fn sample_v4() -> FlowRecord {
    FlowRecord {
        observation_domain: 1,
        group: Some(2),
        label: Some("esp".into()),
        src_addr: "192.0.2.1".parse().unwrap(),
        dst_addr: "198.51.100.7".parse().unwrap(),
        protocol: 50,
        ipsec_spi: Some(0x1000),
        ingress_if: 3,
        egress_if: 4,
        bytes: 1400,
        packets: 10,
        tos: 0,
        start_ms: 1_700_000_000_000,
        end_ms: 1_700_000_001_000,
        end_reason: Some(EndReason::IdleTimeout),
        direction: Some(Direction::Ingress),
        mark: Some(7),
        user_name: None,
        nflog_prefix: Some("in".into()),
        tunnel: Some("hq".into()),
        ..FlowRecord::default()
    }
}

#[rustfmt::skip]
const SAMPLE_V4_RECORD: &[u8] = &[
    0x00, 0x00, 0x00, 0x02,                         // observationPointId 2
    0x06, 0x00, 0x00, 0x00, 0x02,                   // applicationId: engine 6, selector 2
    192, 0, 2, 1, 198, 51, 100, 7,                  // addresses
    50, 0x00,                                       // protocol ESP, ToS
    0x00, 0x00,                                     // tcpControlBits
    0x00, 0x00, 0x00, 0x00,                         // ports
    0x00, 0x00,                                     // icmpTypeCodeIPv4
    0x00, 0x00, 0x10, 0x00,                         // IPSecSPI
    0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x04, // ingress 3, egress 4
    0, 0, 0, 0, 0, 0, 0x05, 0x78,                   // octetDeltaCount 1400
    0, 0, 0, 0, 0, 0, 0, 10,                        // packetDeltaCount 10
    0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, // flowStartMilliseconds
    0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x6b, 0xe8, // flowEndMilliseconds
    0x01, 0x00,                                     // idle timeout, ingress
    0x00, 0x00, 0x00, 0x07,                         // netfilter mark 7
    0x03, b'e', b's', b'p',                         // applicationName
    0x01, 0x00,                                     // userName (none): one NUL
    0x02, b'i', b'n',                               // netfilter prefix
    0x02, b'h', b'q',                               // labelflow tunnelName
];

#[test]
fn flow_record_fixture_both_directions() {
    let rec = sample_v4();
    assert_eq!(flow_record_len(&rec), SAMPLE_V4_RECORD.len());
    let mut out = vec![0u8; SAMPLE_V4_RECORD.len()];
    emit_flow(&rec, &mut out);
    assert_eq!(out, SAMPLE_V4_RECORD);

    let t = Template::new(FLOW_V4.id, 0, FLOW_V4.fields.to_vec()).unwrap();
    let parsed: Vec<_> = t
        .records(SAMPLE_V4_RECORD)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(parsed.len(), 1);
    assert_eq!(decode_flow(&parsed[0], 1), rec);
}

#[test]
fn options_records_round_trip() {
    let recs = [
        OptionsRecord::AppName {
            group: 2,
            name: "esp".into(),
            description: "ESP on wan".into(),
        },
        OptionsRecord::Interface {
            ifindex: 3,
            name: "wan0".into(),
            description: "uplink".into(),
        },
        OptionsRecord::GroupStats {
            group: 2,
            packets_total: 1000,
            ignored_packets: 17,
        },
        OptionsRecord::Sampling {
            domain: 1,
            interval: 1,
            space: 0,
        },
    ];
    let mut w = MessageWriter::new(1400);
    w.begin(0, 0, 1);
    assert!(write_templates(&mut w));
    for r in &recs {
        assert!(r.write(&mut w));
    }
    let msg = Message::new_checked(w.finish().to_vec()).unwrap();
    let (mut flows, mut opts) = (Vec::new(), Vec::new());
    Decoder::default()
        .decode(&msg, &mut flows, &mut opts)
        .unwrap();
    assert!(flows.is_empty());
    assert_eq!(opts, recs);
}

#[test]
fn app_name_option_fixture() {
    let r = OptionsRecord::AppName {
        group: 1,
        name: "vpn".into(),
        description: String::new(),
    };
    let mut out = vec![0xaau8; r.buffer_len()];
    r.emit(&mut out);
    assert_eq!(out.len(), 4 + 5 + 32 + 64);
    assert_eq!(&out[..12], &[0, 0, 0, 1, 6, 0, 0, 0, 1, b'v', b'p', b'n']);
    assert!(out[12..].iter().all(|b| *b == 0));
    // Names longer than the field keep a final NUL.
    let long = OptionsRecord::AppName {
        group: 1,
        name: "n".repeat(40),
        description: String::new(),
    };
    long.emit(&mut out);
    assert_eq!(out[9 + 31], 0);
    assert_eq!(out[9 + 30], b'n');
}

#[test]
fn data_before_template_is_skipped() {
    let rec = sample_v4();
    let mut w = MessageWriter::new(1400);
    w.begin(0, 0, 1);
    assert!(write_flow(&mut w, &rec));
    let msg = Message::new_checked(w.finish().to_vec()).unwrap();
    assert_eq!(decode_message(&msg).unwrap(), vec![]);
}

fn arb_string() -> impl Strategy<Value = Option<String>> {
    prop::option::of("[a-z0-9 _.-]{1,40}")
}

prop_compose! {
    fn arb_flow(v6: bool)(
        group in any::<u32>(),
        label in arb_string(),
        a in any::<[u8; 16]>(),
        b in any::<[u8; 16]>(),
        protocol in any::<u8>(),
        ports in any::<(u16, u16, u16)>(),
        spi in prop::option::of(1u32..),
        ifs in any::<(u32, u32)>(),
        counts in any::<(u64, u64)>(),
        flags_tos in any::<(u8, u8)>(),
        times in any::<(u64, u64)>(),
        end_reason in prop::option::of(1u8..),
        direction in prop::option::of(prop_oneof![Just(Direction::Ingress), Just(Direction::Egress)]),
        mark in prop::option::of(1u32..),
        user_name in arb_string(),
        texts in (arb_string(), arb_string()),
    ) -> FlowRecord {
        let (nflog_prefix, tunnel) = texts;
        let (src_addr, dst_addr): (IpAddr, IpAddr) = if v6 {
            (Ipv6Addr::from(a).into(), Ipv6Addr::from(b).into())
        } else {
            (Ipv4Addr::new(a[0], a[1], a[2], a[3]).into(), Ipv4Addr::new(b[0], b[1], b[2], b[3]).into())
        };
        FlowRecord {
            observation_domain: 9,
            group: Some(group),
            label,
            src_addr,
            dst_addr,
            protocol,
            src_port: ports.0,
            dst_port: ports.1,
            icmp_type_code: ports.2,
            ipsec_spi: spi,
            ingress_if: ifs.0,
            egress_if: ifs.1,
            bytes: counts.0,
            packets: counts.1,
            tcp_flags: flags_tos.0,
            tos: flags_tos.1,
            start_ms: times.0,
            end_ms: times.1,
            end_reason: end_reason.map(EndReason::from_code),
            direction,
            mark,
            user_name,
            nflog_prefix,
            sampling_interval: 1,
            tunnel,
            conntrack: None,
        }
    }
}

fn arb_any_flow() -> impl Strategy<Value = FlowRecord> {
    prop_oneof![arb_flow(false), arb_flow(true)]
}

fn encode_all(recs: &[FlowRecord]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = MessageWriter::new(1400);
    let mut seq = 0;
    let mut pending = recs.iter().peekable();
    while pending.peek().is_some() {
        w.begin(1_700_000_000, seq, 9);
        assert!(write_templates(&mut w));
        while let Some(r) = pending.peek() {
            if !write_flow(&mut w, r) {
                break;
            }
            pending.next();
        }
        assert!(w.data_records() > 0);
        seq += w.data_records();
        let m = w.finish();
        assert!(m.len() <= 1400);
        out.push(m.to_vec());
    }
    out
}

/// The id of an element netflow_parser named, among the ones labelflow exports.
fn iana_id(x: netflow_parser::variable_versions::ipfix::lookup::IANAIPFixField) -> u16 {
    use netflow_parser::variable_versions::ipfix::lookup::IANAIPFixField;
    FLOW_V4
        .fields
        .iter()
        .chain(FLOW_V6.fields)
        .map(|f| f.id)
        .find(|id| IANAIPFixField::from(*id) == x)
        .unwrap()
}

/// FlowRecord as netflow_parser reports it, mapped by element id (independent decoder).
fn via_netflow_parser(msgs: &[Vec<u8>]) -> Vec<FlowRecord> {
    use netflow_parser::variable_versions::field_value::FieldValue;
    use netflow_parser::variable_versions::ipfix::lookup::IPFixField;
    use netflow_parser::variable_versions::ipfix::FlowSetBody;
    use netflow_parser::{NetflowPacket, NetflowParser};
    let mut parser = NetflowParser::default();
    let mut flows = Vec::new();
    for m in msgs {
        let res = parser.parse_bytes(m);
        assert!(res.error.is_none(), "{:?}", res.error);
        for p in res.packets {
            let NetflowPacket::IPFix(ipfix) = p else {
                panic!("not IPFIX")
            };
            for set in ipfix.flowsets {
                let FlowSetBody::Data(data) = set.body else {
                    continue;
                };
                for fields in data.fields {
                    let mut f = FlowRecord {
                        observation_domain: ipfix.header.observation_domain_id,
                        ..FlowRecord::default()
                    };
                    for (field, value) in fields {
                        let (id, pen) = match field {
                            IPFixField::IANA(x) => (iana_id(x), None),
                            IPFixField::Enterprise {
                                enterprise_number,
                                field_number,
                            } => (field_number, Some(enterprise_number)),
                            other => panic!("unexpected field {other:?}"),
                        };
                        let raw: Vec<u8> = {
                            let mut v = Vec::new();
                            value.write_be_bytes(&mut v).unwrap();
                            v
                        };
                        let n = be_uint(&raw);
                        match (Ie::from_ids(id, pen), &value) {
                            (Ie::ObservationPointId, _) => f.group = Some(n as u32),
                            (Ie::ApplicationName, FieldValue::String(_)) => {
                                f.label = non_empty(&raw)
                            }
                            (Ie::UserName, FieldValue::String(_)) => f.user_name = non_empty(&raw),
                            (Ie::NetfilterPrefix, FieldValue::Vec(_)) => {
                                f.nflog_prefix = non_empty(&raw)
                            }
                            (Ie::TunnelName, FieldValue::Vec(_)) => f.tunnel = non_empty(&raw),
                            (Ie::SourceIpv4Address | Ie::SourceIpv6Address, v) => {
                                f.src_addr = IpAddr::try_from(v).unwrap()
                            }
                            (Ie::DestinationIpv4Address | Ie::DestinationIpv6Address, v) => {
                                f.dst_addr = IpAddr::try_from(v).unwrap()
                            }
                            (Ie::ProtocolIdentifier, _) => f.protocol = n as u8,
                            (Ie::IpClassOfService, _) => f.tos = n as u8,
                            (Ie::TcpControlBits, _) => f.tcp_flags = n as u8,
                            (Ie::SourceTransportPort, _) => f.src_port = n as u16,
                            (Ie::DestinationTransportPort, _) => f.dst_port = n as u16,
                            (Ie::IcmpTypeCodeIpv4 | Ie::IcmpTypeCodeIpv6, _) => {
                                f.icmp_type_code = n as u16
                            }
                            (Ie::IpsecSpi, _) => f.ipsec_spi = (n != 0).then_some(n as u32),
                            (Ie::IngressInterface, _) => f.ingress_if = n as u32,
                            (Ie::EgressInterface, _) => f.egress_if = n as u32,
                            (Ie::OctetDeltaCount, _) => f.bytes = n,
                            (Ie::PacketDeltaCount, _) => f.packets = n,
                            (Ie::FlowStartMilliseconds, _) => f.start_ms = n,
                            (Ie::FlowEndMilliseconds, _) => f.end_ms = n,
                            (Ie::FlowEndReason, _) => {
                                f.end_reason = (n != 0).then(|| EndReason::from_code(n as u8))
                            }
                            (Ie::FlowDirection, _) => f.direction = Direction::from_code(n as u8),
                            (Ie::NetfilterMark, _) => f.mark = (n != 0).then_some(n as u32),
                            (Ie::ApplicationId, _) => assert_eq!(raw[0], APP_ENGINE_USER_DEFINED),
                            (ie, v) => panic!("unexpected {ie:?} {v:?}"),
                        }
                    }
                    flows.push(f);
                }
            }
        }
    }
    flows
}

proptest! {
    #[test]
    fn decode_encode_round_trip(recs in prop::collection::vec(arb_any_flow(), 1..40)) {
        let msgs = encode_all(&recs);
        let mut decoder = Decoder::default();
        let mut flows = Vec::new();
        for m in &msgs {
            decoder.decode(&Message::new_checked(&m[..]).unwrap(), &mut flows, &mut Vec::new()).unwrap();
        }
        prop_assert_eq!(&flows, &recs);
        prop_assert_eq!(via_netflow_parser(&msgs), recs);
    }

    #[test]
    fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(m) = Message::new_checked(&bytes[..]) {
            let _ = Decoder::default().decode(&m, &mut Vec::new(), &mut Vec::new());
        }
    }
}

#[test]
fn varlen_application_id_differs_only_in_its_length_prefix() {
    let rec = sample_v4();
    let len = flow_record_len_with(&rec, AppIdEncoding::Varlen);
    assert_eq!(len, SAMPLE_V4_RECORD.len() + 1);
    let mut out = vec![0u8; len];
    emit_flow_with(&rec, AppIdEncoding::Varlen, &mut out);
    // observationPointId, then the length octet 5 and the same five octets.
    assert_eq!(out[..4], SAMPLE_V4_RECORD[..4]);
    assert_eq!(out[4], 5);
    assert_eq!(out[5..], SAMPLE_V4_RECORD[4..]);
    let app_id = FLOW_V4_VARLEN_APP_ID
        .fields
        .iter()
        .find(|f| f.id == iana::APPLICATION_ID)
        .unwrap();
    assert!(app_id.is_varlen());

    let mut w = MessageWriter::new(1400);
    w.begin(1_700_000_000, 0, 9);
    assert!(write_templates_with(&mut w, AppIdEncoding::Varlen));
    assert!(write_flow_with(&mut w, &rec, AppIdEncoding::Varlen));
    let msg = Message::new_checked(w.finish().to_vec()).unwrap();
    let flows = decode_message(&msg).unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].group, Some(2));
    assert_eq!(flows[0].bytes, 1400);
}

#[test]
fn each_application_name_travels_in_a_set_of_its_own() {
    let mut w = MessageWriter::new(1400);
    w.begin(1_700_000_000, 0, 9);
    for group in [1, 2] {
        let o = OptionsRecord::AppName {
            group,
            name: format!("g{group}"),
            description: String::new(),
        };
        assert!(o.write(&mut w));
    }
    let msg = Message::new_checked(w.finish().to_vec()).unwrap();
    let sets: Vec<_> = msg.sets().map(Result::unwrap).collect();
    assert_eq!(sets.len(), 2);
    for s in &sets {
        assert_eq!(s.id, APP_NAMES_ID);
        assert_eq!(s.body.len(), APP_NAMES.fixed_record_len().unwrap());
    }
}
