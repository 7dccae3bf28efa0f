use super::*;
use labelflow_proto::ipfix::Message;
use labelflow_proto::template::Decoder;
use std::net::IpAddr;

const T0: u64 = 1_700_000_000_000;

fn rec(i: u32, v6: bool) -> FlowRecord {
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (
            format!("2001:db8::{:x}", i + 1).parse().unwrap(),
            "2001:db8::ffff".parse().unwrap(),
        )
    } else {
        (
            std::net::Ipv4Addr::from(0x0a00_0000 + i).into(),
            "10.255.0.1".parse().unwrap(),
        )
    };
    FlowRecord {
        observation_domain: 7,
        group: Some(1 + i % 3),
        label: Some(format!("label{}", i % 3)),
        src_addr: src,
        dst_addr: dst,
        protocol: 17,
        src_port: 1000 + i as u16,
        dst_port: 53,
        packets: 1 + u64::from(i),
        bytes: 100 * (1 + u64::from(i)),
        start_ms: T0,
        end_ms: T0 + 10,
        ..FlowRecord::default()
    }
}

fn meta() -> ExportMeta {
    ExportMeta {
        groups: vec![GroupMeta {
            group: 1,
            label: "esp".into(),
            description: "ESP on the uplink".into(),
            packets_total: 100,
            ignored_packets: 3,
        }],
        interfaces: vec![InterfaceMeta {
            ifindex: 2,
            name: "wan0".into(),
            description: String::new(),
        }],
    }
}

fn cfg() -> ExportConfig {
    ExportConfig {
        domain: 7,
        ..ExportConfig::default()
    }
}

fn has_templates(m: &[u8]) -> bool {
    Message::new_checked(m)
        .unwrap()
        .sets()
        .any(|s| s.unwrap().id == 2)
}

#[test]
fn ipfix_templates_first_then_records_decode_with_sequence() {
    let mut st = ExportState::new(Format::Ipfix, cfg());
    st.set_meta(meta());
    let mut out: Vec<Vec<u8>> = Vec::new();
    let recs: Vec<_> = (0..200).map(|i| rec(i, i % 2 == 1)).collect();
    for r in &recs {
        st.push(r, T0, |b| out.push(b.to_vec()));
    }
    st.flush(|b| out.push(b.to_vec()));
    assert!(out.len() > 5);
    assert!(has_templates(&out[0]));
    let mut dec = Decoder::default();
    let (mut flows, mut opts) = (Vec::new(), Vec::new());
    let mut expected_seq = 0u32;
    for m in &out {
        assert!(m.len() <= 1400);
        let msg = Message::new_checked(&m[..]).unwrap();
        assert_eq!(msg.domain(), 7);
        // RFC 7011 section 3.1: data records (options included) sent before this message.
        assert_eq!(msg.sequence(), expected_seq);
        let before = flows.len() + opts.len();
        dec.decode(&msg, &mut flows, &mut opts).unwrap();
        expected_seq += (flows.len() + opts.len() - before) as u32;
    }
    assert_eq!(flows, recs);
    assert_eq!(st.sequence(), expected_seq);
    assert!(opts.contains(&OptionsRecord::AppName {
        group: 1,
        name: "esp".into(),
        description: "ESP on the uplink".into()
    }));
    assert!(opts.contains(&OptionsRecord::GroupStats {
        group: 1,
        packets_total: 100,
        ignored_packets: 3
    }));
    assert!(opts.contains(&OptionsRecord::Sampling {
        domain: 7,
        interval: 1,
        space: 0
    }));
    assert!(opts.contains(&OptionsRecord::Interface {
        ifindex: 2,
        name: "wan0".into(),
        description: String::new()
    }));
    let s = st.stats();
    assert_eq!(s.records, 200);
    assert_eq!(s.messages, out.len() as u64);
    assert_eq!(s.bytes, out.iter().map(|m| m.len() as u64).sum::<u64>());
}

#[test]
fn template_refresh_by_count() {
    let mut st = ExportState::new(
        Format::Ipfix,
        ExportConfig {
            template_every: 3,
            ..cfg()
        },
    );
    let mut out: Vec<Vec<u8>> = Vec::new();
    for i in 0..400 {
        st.push(&rec(i, false), T0, |b| out.push(b.to_vec()));
    }
    let with: Vec<bool> = out.iter().map(|m| has_templates(m)).collect();
    // Messages 0, 3, 6, ... carry templates.
    for (i, w) in with.iter().enumerate() {
        assert_eq!(*w, i % 3 == 0, "message {i}");
    }
}

#[test]
fn template_refresh_by_time_and_flush_delay() {
    let mut st = ExportState::new(Format::Ipfix, cfg());
    let mut out: Vec<Vec<u8>> = Vec::new();
    st.push(&rec(0, false), T0, |b| out.push(b.to_vec()));
    assert!(out.is_empty());
    assert_eq!(st.next_deadline(), Some(T0 + 1000));
    st.tick(T0 + 999, |b| out.push(b.to_vec()));
    assert!(out.is_empty());
    st.tick(T0 + 1000, |b| out.push(b.to_vec()));
    assert_eq!(out.len(), 1);
    assert!(has_templates(&out[0]));
    // Next deadline: the template refresh.
    assert_eq!(st.next_deadline(), Some(T0 + 60_000));
    st.push(&rec(1, false), T0 + 2000, |b| out.push(b.to_vec()));
    st.flush(|b| out.push(b.to_vec()));
    assert!(!has_templates(&out[1]));
    // Idle exporter: the refresh still goes out, with the options.
    st.tick(T0 + 60_000, |b| out.push(b.to_vec()));
    assert_eq!(out.len(), 3);
    assert!(has_templates(&out[2]));
    st.push(&rec(2, false), T0 + 61_000, |b| out.push(b.to_vec()));
    st.flush(|b| out.push(b.to_vec()));
    assert!(!has_templates(&out[3]));
}

#[test]
fn meta_change_resends_options() {
    let mut st = ExportState::new(Format::Ipfix, cfg());
    let mut out: Vec<Vec<u8>> = Vec::new();
    st.push(&rec(0, false), T0, |b| out.push(b.to_vec()));
    st.flush(|b| out.push(b.to_vec()));
    st.set_meta(meta());
    st.push(&rec(1, false), T0 + 1, |b| out.push(b.to_vec()));
    st.flush(|b| out.push(b.to_vec()));
    assert!(has_templates(&out[1]));
    // Only counters changed: no early refresh.
    let mut m = meta();
    m.groups[0].ignored_packets = 10;
    st.set_meta(m);
    st.push(&rec(2, false), T0 + 2, |b| out.push(b.to_vec()));
    st.flush(|b| out.push(b.to_vec()));
    assert!(!has_templates(&out[2]));
}

#[test]
fn many_options_span_messages_within_mtu() {
    let mut st = ExportState::new(Format::Ipfix, ExportConfig { mtu: 512, ..cfg() });
    let mut m = meta();
    m.interfaces = (0..40)
        .map(|i| InterfaceMeta {
            ifindex: i,
            name: format!("if{i}"),
            description: String::new(),
        })
        .collect();
    st.set_meta(m);
    let mut out: Vec<Vec<u8>> = Vec::new();
    st.push(&rec(0, false), T0, |b| out.push(b.to_vec()));
    st.flush(|b| out.push(b.to_vec()));
    assert!(out.len() > 1);
    let mut dec = Decoder::default();
    let (mut flows, mut opts) = (Vec::new(), Vec::new());
    for o in &out {
        assert!(o.len() <= 512);
        dec.decode(
            &Message::new_checked(&o[..]).unwrap(),
            &mut flows,
            &mut opts,
        )
        .unwrap();
    }
    assert_eq!(flows.len(), 1);
    assert_eq!(
        opts.iter()
            .filter(|o| matches!(o, OptionsRecord::Interface { .. }))
            .count(),
        40
    );
}

#[test]
fn v9_sequence_counts_packets_and_mtu_holds() {
    let mut st = ExportState::new(Format::NetflowV9, cfg());
    st.set_meta(meta());
    let mut out: Vec<Vec<u8>> = Vec::new();
    for i in 0..100 {
        st.push(&rec(i, i % 4 == 0), T0 + u64::from(i), |b| {
            out.push(b.to_vec())
        });
    }
    st.flush(|b| out.push(b.to_vec()));
    for (n, m) in out.iter().enumerate() {
        assert!(m.len() <= 1400);
        assert_eq!(u16::from_be_bytes([m[0], m[1]]), 9);
        assert_eq!(u32::from_be_bytes([m[12], m[13], m[14], m[15]]), n as u32);
        assert_eq!(u32::from_be_bytes([m[16], m[17], m[18], m[19]]), 7);
    }
    // The header clock gives the boot time back exactly: unix_secs*1000 - sys_uptime.
    let m = &out[0];
    let up = u64::from(u32::from_be_bytes([m[4], m[5], m[6], m[7]]));
    let secs = u64::from(u32::from_be_bytes([m[8], m[9], m[10], m[11]]));
    assert_eq!(secs * 1000 - up, T0 / 1000 * 1000);
    assert_eq!(st.stats().records, 100);
}

#[test]
fn v5_groups_per_packet_sequence_and_ipv6_skipped() {
    let mut st = ExportState::new(Format::NetflowV5, cfg());
    let mut out: Vec<Vec<u8>> = Vec::new();
    // 70 records of group 1, then 5 of group 2, then one IPv6.
    let mut recs: Vec<FlowRecord> = (0..70)
        .map(|i| FlowRecord {
            group: Some(1),
            ..rec(i * 3, false)
        })
        .collect();
    recs.extend((0..5).map(|i| FlowRecord {
        group: Some(2),
        ..rec(i, false)
    }));
    for r in &recs {
        st.push(r, T0, |b| out.push(b.to_vec()));
    }
    st.push(&rec(0, true), T0, |b| out.push(b.to_vec()));
    st.flush(|b| out.push(b.to_vec()));
    let counts: Vec<u16> = out
        .iter()
        .map(|m| u16::from_be_bytes([m[2], m[3]]))
        .collect();
    assert_eq!(counts, vec![28, 28, 14, 5]);
    let seqs: Vec<u32> = out
        .iter()
        .map(|m| u32::from_be_bytes([m[16], m[17], m[18], m[19]]))
        .collect();
    assert_eq!(seqs, vec![0, 28, 56, 70]);
    let engine_ids: Vec<u8> = out.iter().map(|m| m[21]).collect();
    assert_eq!(engine_ids, vec![1, 1, 1, 2]);
    assert_eq!(st.stats().skipped, 1);
    assert_eq!(st.stats().records, 75);
    // Through an independent decoder.
    let mut parser = netflow_parser::NetflowParser::default();
    let mut total = 0;
    for m in &out {
        for p in parser.parse_bytes(m).packets {
            let netflow_parser::NetflowPacket::V5(v5) = p else {
                panic!("not v5")
            };
            total += v5.flowsets.len();
        }
    }
    assert_eq!(total, 75);
}

#[test]
fn send_options_carries_current_counters() {
    let mut st = ExportState::new(Format::Ipfix, cfg());
    st.set_meta(meta());
    let mut out: Vec<Vec<u8>> = Vec::new();
    st.push(&rec(0, false), T0, |b| out.push(b.to_vec()));
    let mut m = meta();
    m.groups[0].ignored_packets = 99;
    st.set_meta(m);
    st.send_options(T0 + 5, |b| out.push(b.to_vec()));
    assert_eq!(out.len(), 2);
    let mut dec = Decoder::default();
    let (mut flows, mut opts) = (Vec::new(), Vec::new());
    dec.decode(
        &Message::new_checked(&out[1][..]).unwrap(),
        &mut flows,
        &mut opts,
    )
    .unwrap();
    assert!(flows.is_empty());
    assert!(opts.contains(&OptionsRecord::GroupStats {
        group: 1,
        packets_total: 100,
        ignored_packets: 99
    }));
}

#[test]
fn conntrack_records_are_all_exported_and_decoded_across_template_refreshes() {
    use labelflow_proto::{BiflowDirection, ConnInfo};
    let mut st = ExportState::new(
        Format::Ipfix,
        ExportConfig {
            domain: 1,
            template_every: 5,
            conntrack: true,
            ..ExportConfig::default()
        },
    );
    st.set_meta(ExportMeta {
        groups: (0..3)
            .map(|i| GroupMeta {
                group: 0x1_0000 + i,
                label: format!("label{i}"),
                description: "conntrack".into(),
                packets_total: 0,
                ignored_packets: 0,
            })
            .collect(),
        interfaces: ["lo", "wan", "lan"]
            .iter()
            .enumerate()
            .map(|(i, name)| InterfaceMeta {
                ifindex: i as u32 + 1,
                name: (*name).into(),
                description: String::new(),
            })
            .collect(),
    });
    let mut out: Vec<Vec<u8>> = Vec::new();
    let n = 20_000u32;
    for i in 0..n {
        let mut r = rec(i, i % 7 == 0);
        r.conntrack = Some(ConnInfo {
            post_nat_src: r.dst_addr,
            post_nat_dst: r.src_addr,
            post_napt_src_port: 1,
            post_napt_dst_port: 2,
            direction: BiflowDirection::Initiator,
            zone: 0,
            tcp_state: None,
            conn_id: i,
            reverse: None,
            reply_icmp_type_code: 0,
        });
        let now = 1_000 + u64::from(i) * 7;
        st.push(&r, now, |b| out.push(b.to_vec()));
        if i % 13 == 0 {
            st.tick(now, |b| out.push(b.to_vec()));
        }
    }
    st.flush(|b| out.push(b.to_vec()));
    assert_eq!((st.stats().records, st.stats().skipped), (u64::from(n), 0));
    let mut dec = Decoder::default();
    let (mut flows, mut opts) = (Vec::new(), Vec::new());
    for m in &out {
        dec.decode(
            &Message::new_checked(&m[..]).unwrap(),
            &mut flows,
            &mut opts,
        )
        .unwrap();
    }
    assert_eq!(flows.len(), n as usize);
    assert!(flows.iter().all(|f| f.conntrack.is_some()));
}
