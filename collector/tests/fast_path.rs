//! The zero-copy IPFIX and NetFlow v9 paths against the `netflow_parser` path: the same
//! datagrams through a session table with the fast path and one without must give the same flow records, the
//! same per-datagram results and the same counters; through the whole ingest path (labels,
//! views, tunnels, hosts, ports), the same aggregates.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::num::NonZeroUsize;
use std::process::Command;
use std::time::Duration;

use common::*;
use labelflow_collector::aggregate::Delta;
use labelflow_collector::config::{Config, Tunnel};
use labelflow_collector::ingest::Ingest;
use labelflow_collector::session::SessionTable;
use labelflow_proto::ipfix::MessageWriter;
use labelflow_proto::template::{self, OptionsRecord};
use labelflow_proto::{Direction, EndReason, FlowRecord};
use proptest::prelude::*;

fn table(fast: bool) -> SessionTable {
    let mut t = SessionTable::new(
        NonZeroUsize::new(8).unwrap(),
        NonZeroUsize::new(16).unwrap(),
    );
    t.set_fast_path(fast);
    t
}

/// Feed every datagram through both tables; returns the fast table's count of datagrams it
/// decoded itself.
fn assert_same(datagrams: &[(IpAddr, Vec<u8>)]) -> u64 {
    let (mut slow, mut fast) = (table(false), table(true));
    for (i, (from, d)) in datagrams.iter().enumerate() {
        let (mut rs, mut ts, mut rf, mut tf) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let a = slow.ingest(*from, d, &mut rs, &mut ts);
        let b = fast.ingest(*from, d, &mut rf, &mut tf);
        assert_eq!(a, b, "datagram {i}: result");
        assert_eq!(rs, rf, "datagram {i}: records");
        assert_eq!(ts, tf, "datagram {i}: template records");
    }
    assert_eq!(slow.stats.fast_datagrams, 0);
    let fast_count = fast.stats.fast_datagrams;
    let mut f = fast.stats.clone();
    f.fast_datagrams = 0;
    assert_eq!(slow.stats, f, "counters");
    assert_same_aggregates(datagrams);
    fast_count
}

/// The same datagrams through two whole ingest paths, fast path on and off, with views,
/// tunnels and networks configured: equal deltas and per-label totals.
fn assert_same_aggregates(datagrams: &[(IpAddr, Vec<u8>)]) {
    let mut cfg = Config::defaults();
    // Random times make day-long flows: keep them to a few buckets each.
    cfg.agg.max_flow_duration_ms = 600_000;
    cfg.agg.networks = vec![
        "10.0.0.0/24".parse().unwrap(),
        "2001:db8::/120".parse().unwrap(),
    ];
    cfg.agg.tunnels = vec![Tunnel {
        name: "branch".into(),
        subnets: vec!["10.0.3.0/24".parse().unwrap()],
        peers: vec!["10.0.0.0/28".parse().unwrap()],
    }];
    cfg.agg.views.insert(
        "some".into(),
        vec!["label-3".into(), "group1".into(), "lan".into()],
    );
    let (mut slow, mut fast) = (Ingest::new(&cfg), Ingest::new(&cfg));
    slow.set_fast_path(false);
    for (i, (from, d)) in datagrams.iter().enumerate() {
        assert_eq!(
            slow.datagram(*from, d),
            fast.datagram(*from, d),
            "datagram {i}"
        );
    }
    let sorted = |ingest: &mut Ingest| {
        let mut d: Vec<Delta> = ingest.take_batch().deltas;
        d.sort_by(|a, b| {
            (a.resolution, a.bucket, a.dim, &a.key).cmp(&(b.resolution, b.bucket, b.dim, &b.key))
        });
        d
    };
    assert_eq!(sorted(&mut slow), sorted(&mut fast), "aggregates");
    let (mut a, mut b) = Default::default();
    slow.fill(&mut a);
    fast.fill(&mut b);
    assert_eq!(a.labels, b.labels, "per-label totals");
    assert_eq!(a.tunnels, b.tunnels, "per-tunnel totals");
    assert_eq!(a.aggregation, b.aggregation, "aggregation counters");
}

fn addr(v6: bool, n: u32) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            (n >> 16) as u16,
            n as u16,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | n))
    }
}

/// labelflow's own export: templates and options first, then data-only messages.
fn labelflow_stream(flows: &[FlowRecord], domain: u32, per_message: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = MessageWriter::new(65_535);
    let mut seq = 0u32;
    w.begin(1_700_000_000, seq, domain);
    assert!(template::write_templates(&mut w));
    for (group, name) in [(1u32, "lan"), (2, "esp"), (3, "")] {
        assert!(OptionsRecord::AppName {
            group,
            name: name.into(),
            description: format!("group {group}"),
        }
        .write(&mut w));
    }
    assert!(OptionsRecord::Sampling {
        domain,
        interval: 1,
        space: 0,
    }
    .write(&mut w));
    seq += w.data_records();
    out.push(w.finish().to_vec());
    for chunk in flows.chunks(per_message) {
        w.begin(1_700_000_100, seq, domain);
        for f in chunk {
            assert!(template::write_flow(&mut w, f));
        }
        seq += w.data_records();
        out.push(w.finish().to_vec());
    }
    out
}

fn sample_flow(i: u32, v6: bool) -> FlowRecord {
    FlowRecord {
        observation_domain: 7,
        group: Some(i % 4),
        label: i.is_multiple_of(3).then(|| format!("label-{i}")),
        src_addr: addr(v6, i),
        dst_addr: addr(v6, i + 1000),
        protocol: [6, 17, 1, 58, 50][i as usize % 5],
        src_port: (i * 7) as u16,
        dst_port: if i % 5 == 2 { 0 } else { 443 },
        icmp_type_code: if i % 5 == 2 { 0x0800 } else { 0 },
        ipsec_spi: (i % 5 == 4).then_some(0xdead_0000 | i),
        ingress_if: i % 3,
        egress_if: 2,
        bytes: u64::from(i) * 1500,
        packets: u64::from(i),
        tcp_flags: (i % 64) as u8,
        tos: (i % 256) as u8,
        start_ms: 1_700_000_000_000 + u64::from(i),
        end_ms: 1_700_000_050_000 + u64::from(i),
        end_reason: Some(EndReason::from_code((i % 6) as u8)),
        direction: [None, Some(Direction::Ingress), Some(Direction::Egress)][i as usize % 3],
        mark: i.is_multiple_of(2).then_some(i),
        user_name: (i % 4 == 1).then(|| "www-data".into()),
        nflog_prefix: (i % 4 == 2).then(|| "WAN:".into()),
        sampling_interval: 1,
        // Named tunnels: ESP by SPI, and inner traffic (the fast path reads the name too).
        tunnel: (i % 5 == 4 || i.is_multiple_of(7)).then(|| ["hq", "rw"][i as usize % 2].into()),
        conntrack: None,
    }
}

#[test]
fn labelflow_export_ipv4_and_ipv6() {
    let flows: Vec<FlowRecord> = (0..200).map(|i| sample_flow(i, i % 2 == 1)).collect();
    let from: IpAddr = "192.0.2.1".parse().unwrap();
    let mut d: Vec<(IpAddr, Vec<u8>)> = labelflow_stream(&flows, 7, 9)
        .into_iter()
        .map(|m| (from, m))
        .collect();
    // A sequence gap, a replay, a truncated message and a second exporter with its own ids.
    let n = d.len();
    d.remove(5);
    d.push(d[3].clone());
    let mut cut = d[4].1.clone();
    cut.truncate(cut.len() - 10);
    let l = cut.len() as u16;
    cut[2..4].copy_from_slice(&l.to_be_bytes());
    d.push((from, cut));
    let other: IpAddr = "2001:db8::9".parse().unwrap();
    d.extend(
        labelflow_stream(&flows[..40], 3, 22)
            .into_iter()
            .map(|m| (other, m)),
    );
    let fast = assert_same(&d);
    assert!(
        fast as usize >= n - 2,
        "fast path used for {fast} datagrams"
    );
    // The fast path names tunnels: the exported names reach the per-tunnel totals.
    let mut ingest = Ingest::new(&Config::defaults());
    for (from, m) in &d {
        // The truncated message is refused, the rest decoded.
        let _ = ingest.datagram(*from, m);
    }
    // Counted once merged (the journal's merge runs in place here).
    ingest.take_batch();
    let tunnels = labelflow_collector::ingest::metric_tunnels(ingest.aggregator(), 64);
    let mut names: Vec<&str> = tunnels.iter().map(|t| t.0.as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["hq", "rw"]);
}

#[test]
fn data_before_its_template_falls_back() {
    let flows: Vec<FlowRecord> = (0..30).map(|i| sample_flow(i, false)).collect();
    let from: IpAddr = "192.0.2.2".parse().unwrap();
    let mut msgs = labelflow_stream(&flows, 1, 10);
    let templates = msgs.remove(0);
    let mut d: Vec<(IpAddr, Vec<u8>)> = vec![(from, msgs[0].clone())];
    d.push((from, templates));
    d.extend(msgs.into_iter().map(|m| (from, m)));
    assert_eq!(assert_same(&d), 3);
}

/// Template withdrawal (RFC 7011 section 8.1) and redefinition of an id as an options
/// template: the fast path must stop using the old template.
#[test]
fn withdrawn_and_redefined_templates() {
    let flows: Vec<FlowRecord> = (0..20).map(|i| sample_flow(i, false)).collect();
    let from: IpAddr = "192.0.2.3".parse().unwrap();
    let msgs = labelflow_stream(&flows, 1, 10);
    #[rustfmt::skip]
    let withdraw = vec![
        0x00, 0x0a, 0x00, 0x18, 0x65, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0, 1,
        0x00, 0x02, 0x00, 0x08, 0x01, 0x00, 0x00, 0x00, // withdraw template 256
    ];
    let mut d: Vec<(IpAddr, Vec<u8>)> = msgs.iter().map(|m| (from, m.clone())).collect();
    d.push((from, withdraw));
    d.push((from, msgs[1].clone()));
    d.extend(msgs.iter().map(|m| (from, m.clone())));
    assert_same(&d);
}

fn softflowd_ipfix(pcap: &std::path::Path) -> Vec<Vec<u8>> {
    softflowd_export(pcap, "10")
}

/// What softflowd exports (`-v` 9 or 10) replaying `pcap`, datagram by datagram.
fn softflowd_export(pcap: &std::path::Path, version: &str) -> Vec<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let port = sock.local_addr().unwrap().port();
    let out = Command::new(require_program("softflowd"))
        .arg("-r")
        .arg(pcap)
        .args(["-n", &format!("127.0.0.1:{port}"), "-v", version])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(buf[..n].to_vec());
    }
    got
}

#[test]
fn softflowd_ipfix_same_through_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("t.pcap");
    write_pcap(&pcap, 400, 1_700_000_000);
    let msgs = softflowd_ipfix(&pcap);
    assert!(msgs.len() > 2, "softflowd sent {} datagrams", msgs.len());
    let from: IpAddr = "127.0.0.1".parse().unwrap();
    let d: Vec<(IpAddr, Vec<u8>)> = msgs.into_iter().map(|m| (from, m)).collect();
    assert!(assert_same(&d) > 0);
}

#[test]
fn softflowd_v9_same_through_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("t.pcap");
    write_pcap(&pcap, 400, 1_700_000_000);
    let msgs = softflowd_export(&pcap, "9");
    assert!(msgs.len() > 2, "softflowd sent {} datagrams", msgs.len());
    let from: IpAddr = "127.0.0.1".parse().unwrap();
    let d: Vec<(IpAddr, Vec<u8>)> = msgs.into_iter().map(|m| (from, m)).collect();
    assert!(assert_same(&d) > 0, "no v9 datagram took the fast path");
}

/// NetFlow v9 field types with lengths to pick from: what routers and probes send (counters
/// of 4 and 8 octets, uptime times, MAC addresses, MPLS labels, masks, AS numbers, VLANs,
/// NAT elements) in usual and odd sizes, absolute times, elements the plan refuses
/// (sampling) and types no registry names.
const V9_POOL: &[(u16, &[u16])] = &[
    (1, &[4, 8, 2, 3]),
    (2, &[4, 8]),
    (4, &[1, 2]),
    (5, &[1]),
    (6, &[1, 2]),
    (7, &[2, 4]),
    (8, &[4, 4, 6]),
    (9, &[1]),
    (10, &[2, 4]),
    (11, &[2]),
    (12, &[4, 4, 16]),
    (13, &[1]),
    (14, &[2, 4]),
    (15, &[4]),
    (16, &[2, 4]),
    (17, &[2, 4]),
    (21, &[4, 4, 8]),
    (22, &[4, 4, 2]),
    (27, &[16, 16, 4]),
    (28, &[16]),
    (32, &[2]),
    (34, &[4]),
    (56, &[6, 3]),
    (58, &[2]),
    (60, &[1]),
    (61, &[1]),
    (70, &[3]),
    (80, &[6]),
    (85, &[4, 8]),
    (89, &[1, 4]),
    (136, &[1]),
    (152, &[8, 4]),
    (153, &[8]),
    (225, &[4]),
    (227, &[2]),
    (234, &[4]),
    (300, &[2, 7]),
    (33000, &[4]),
];

fn v9_message(
    seq: u32,
    uptime: u32,
    secs: u32,
    count: u16,
    flowsets: &[(u16, Vec<u8>)],
) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&9u16.to_be_bytes());
    m.extend_from_slice(&count.to_be_bytes());
    m.extend_from_slice(&uptime.to_be_bytes());
    m.extend_from_slice(&secs.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&7u32.to_be_bytes());
    for (id, body) in flowsets {
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&(4 + body.len() as u16).to_be_bytes());
        m.extend_from_slice(body);
    }
    m
}

/// A scope whose templates fill half the parser's cache (16 here) leaves the fast path for
/// good: data decoded by the fast path does not refresh the parser's least-recently-used
/// order, so once the cache evicts, the two paths would drop different templates.
#[test]
fn many_v9_templates_leave_the_fast_path() {
    let from: IpAddr = "192.0.2.10".parse().unwrap();
    let fields: [(u16, u16); 4] = [(8, 4), (12, 4), (1, 4), (2, 4)];
    let template = |ids: std::ops::Range<u16>| {
        let mut body = Vec::new();
        for id in ids {
            body.extend_from_slice(&id.to_be_bytes());
            body.extend_from_slice(&(fields.len() as u16).to_be_bytes());
            for (t, l) in fields {
                body.extend_from_slice(&t.to_be_bytes());
                body.extend_from_slice(&l.to_be_bytes());
            }
        }
        (0u16, body)
    };
    let data = |id: u16, k: u8| (id, vec![10, 0, 0, k, 10, 0, 1, k, 0, 0, 1, 0, 0, 0, 0, 2]);
    let mut d = Vec::new();
    let mut seq = 0;
    let mut push = |sets: &[(u16, Vec<u8>)]| {
        d.push((from, v9_message(seq, 5_000, 1_700_000_000, 1, sets)));
        seq += 1;
    };
    // Two templates: data takes the fast path.
    push(&[template(256..258)]);
    for k in 0..4 {
        push(&[data(256, k)]);
    }
    // The cache fills (16 ids), 256 stays in use, then more ids come and the cache evicts.
    push(&[template(258..272)]);
    for k in 0..4 {
        push(&[data(256, k)]);
    }
    push(&[template(272..276)]);
    for k in 0..4 {
        push(&[data(256, k), data(271, k)]);
    }
    assert_eq!(assert_same(&d), 4, "fast only before the cache filled");
}

proptest! {
    /// Random v9 templates (one or two, one maybe redefined midway) and records of random
    /// octets, padded or not, with random header counts and clocks: the fast path gives what
    /// the parser gives, or leaves the datagram to it.
    #[test]
    fn random_v9_same_through_both_paths(
        templates in proptest::collection::vec(
            proptest::collection::vec((0usize..V9_POOL.len(), 0usize..4), 1..16), 1..3),
        redefine in proptest::collection::vec((0usize..V9_POOL.len(), 0usize..4), 1..16),
        messages in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..400), 0usize..3, 0u8..4, any::<u16>()),
            1..8),
        uptime in any::<u32>(),
        secs in 1_000_000_000u32..2_000_000_000,
    ) {
        let from: IpAddr = "192.0.2.9".parse().unwrap();
        let fields = |t: &[(usize, usize)]| -> Vec<(u16, u16)> {
            t.iter().map(|(i, p)| {
                let (id, lens) = V9_POOL[*i];
                (id, lens[p % lens.len()])
            }).collect()
        };
        let template_set = |defs: &[(u16, Vec<(u16, u16)>)]| {
            let mut body = Vec::new();
            for (id, f) in defs {
                body.extend_from_slice(&id.to_be_bytes());
                body.extend_from_slice(&(f.len() as u16).to_be_bytes());
                for (t, l) in f {
                    body.extend_from_slice(&t.to_be_bytes());
                    body.extend_from_slice(&l.to_be_bytes());
                }
            }
            (0u16, body)
        };
        let mut defs: Vec<(u16, Vec<(u16, u16)>)> = templates
            .iter()
            .enumerate()
            .map(|(k, t)| (256 + k as u16, fields(t)))
            .collect();
        let mut d = vec![(from, v9_message(0, uptime, secs, defs.len() as u16, &[template_set(&defs)]))];
        for (k, (bytes, which, pad, count)) in messages.iter().enumerate() {
            if k == messages.len() / 2 && k > 0 {
                defs[0].1 = fields(&redefine);
                d.push((from, v9_message(k as u32, uptime, secs, 1, &[template_set(&defs[..1])])));
            }
            let (id, f) = &defs[which % defs.len()];
            let len: usize = f.iter().map(|(_, l)| usize::from(*l)).sum();
            let records = bytes.len() / len.max(1);
            let mut body = bytes[..records * len].to_vec();
            body.extend(std::iter::repeat_n(0u8, usize::from(*pad)));
            let mut sets = vec![(*id, body)];
            if k % 3 == 2 {
                // A second data flowset in the same message.
                sets.push((*id, bytes[..len.min(bytes.len())].to_vec()));
            }
            d.push((from, v9_message(
                k as u32 + 1,
                uptime.wrapping_add(k as u32 * 1000),
                secs + k as u32,
                *count,
                &sets,
            )));
        }
        assert_same(&d);
    }
}

fn arb_flow() -> impl Strategy<Value = FlowRecord> {
    let addrs = prop_oneof![
        (any::<u32>(), any::<u32>())
            .prop_map(|(a, b)| (IpAddr::V4(Ipv4Addr::from(a)), IpAddr::V4(Ipv4Addr::from(b)))),
        (any::<u128>(), any::<u128>())
            .prop_map(|(a, b)| (IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(b)))),
    ];
    let text = proptest::option::of("[a-zA-Z0-9 :./\u{e9}\u{1}-]{0,40}");
    (
        addrs,
        (any::<u8>(), any::<u16>(), any::<u16>(), any::<u16>()),
        (
            proptest::option::of(any::<u32>()),
            any::<u32>(),
            any::<u32>(),
        ),
        (any::<u64>(), any::<u64>(), any::<u8>(), any::<u8>()),
        (any::<u64>(), any::<u64>(), 0u8..8, 0u8..3),
        (
            proptest::option::of(0u32..6),
            proptest::option::of(any::<u32>()),
            text.clone(),
            text.clone(),
            text,
        ),
    )
        .prop_map(
            |(
                (src_addr, dst_addr),
                (protocol, src_port, dst_port, icmp_type_code),
                (ipsec_spi, ingress_if, egress_if),
                (bytes, packets, tcp_flags, tos),
                (start_ms, end_ms, reason, dir),
                (group, mark, label, user_name, nflog_prefix),
            )| FlowRecord {
                observation_domain: 0,
                group,
                label,
                src_addr,
                dst_addr,
                protocol,
                src_port,
                dst_port,
                icmp_type_code,
                ipsec_spi,
                ingress_if,
                egress_if,
                bytes,
                packets,
                tcp_flags,
                tos,
                start_ms,
                end_ms,
                end_reason: (reason < 7).then(|| EndReason::from_code(reason)),
                direction: [None, Some(Direction::Ingress), Some(Direction::Egress)][dir as usize],
                mark,
                user_name,
                nflog_prefix,
                sampling_interval: 1,
                tunnel: None,
                conntrack: None,
            },
        )
}

proptest! {
    #[test]
    fn random_records_same_through_both_paths(
        flows in proptest::collection::vec(arb_flow(), 1..40),
        per in 1usize..12,
        domain in any::<u32>(),
    ) {
        let from: IpAddr = "198.51.100.1".parse().unwrap();
        let d: Vec<(IpAddr, Vec<u8>)> = labelflow_stream(&flows, domain, per)
            .into_iter()
            .map(|m| (from, m))
            .collect();
        let n = d.len() as u64;
        prop_assert_eq!(assert_same(&d), n - 1);
    }
}

/// Elements labelflow does not send but other exporters do: reduced-size counters, total
/// counts, seconds and NTP-microsecond times, sysUpTime with systemInitTime, ICMP type and
/// code apart, a two-octet tcpControlBits, a NUL-padded and control-character name.
#[test]
fn other_exporters_elements() {
    let fields: [(u16, u16); 18] = [
        (8, 4),
        (12, 4),
        (4, 1),
        (176, 1),
        (177, 1),
        (85, 3),
        (86, 2),
        (150, 4),
        (151, 4),
        (154, 8),
        (155, 8),
        (22, 4),
        (21, 4),
        (160, 8),
        (96, 0xffff),
        (61, 1),
        (136, 1),
        (6, 2),
    ];
    let header = |seq: u32| {
        let mut m = vec![0, 10, 0, 0];
        m.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(&9u32.to_be_bytes());
        m
    };
    let finish = |mut m: Vec<u8>| {
        let n = m.len() as u16;
        m[2..4].copy_from_slice(&n.to_be_bytes());
        m
    };
    let mut t = header(0);
    t.extend_from_slice(&[0, 2]);
    t.extend_from_slice(&(8 + 4 * fields.len() as u16).to_be_bytes());
    t.extend_from_slice(&300u16.to_be_bytes());
    t.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    for (id, len) in fields {
        t.extend_from_slice(&id.to_be_bytes());
        t.extend_from_slice(&len.to_be_bytes());
    }
    let record = |i: u8| {
        let mut r = Vec::new();
        r.extend_from_slice(&[192, 0, 2, i, 198, 51, 100, i, 1, 8, i % 3]);
        r.extend_from_slice(&[0, i, 7, 0, i]);
        r.extend_from_slice(&1_699_999_990u32.to_be_bytes());
        r.extend_from_slice(&1_699_999_999u32.to_be_bytes());
        let ntp = 1_699_999_990u64 + 2_208_988_800;
        r.extend_from_slice(&(ntp as u32).to_be_bytes());
        r.extend_from_slice(&(u32::from(i) << 24).to_be_bytes());
        r.extend_from_slice(&((ntp + 5) as u32).to_be_bytes());
        r.extend_from_slice(&0x8000_0000u32.to_be_bytes());
        r.extend_from_slice(&(1000u32 * u32::from(i)).to_be_bytes());
        r.extend_from_slice(&(u32::MAX - 5).to_be_bytes());
        r.extend_from_slice(&1_699_000_000_000u64.to_be_bytes());
        let name: &[u8] = if i.is_multiple_of(2) {
            b"ab\x01c\0\0"
        } else {
            b"\xff\xfeweb"
        };
        r.push(name.len() as u8);
        r.extend_from_slice(name);
        r.extend_from_slice(&[i % 3, i % 6, 0x01, 0x12]);
        r
    };
    let mut d = Vec::new();
    let from: IpAddr = "203.0.113.5".parse().unwrap();
    d.push((from, finish(t)));
    for m in 0..4u8 {
        let mut msg = header(u32::from(m) * 3);
        let body: Vec<u8> = (0..3).flat_map(|k| record(m * 3 + k)).collect();
        msg.extend_from_slice(&300u16.to_be_bytes());
        msg.extend_from_slice(&(4 + body.len() as u16).to_be_bytes());
        msg.extend_from_slice(&body);
        d.push((from, finish(msg)));
    }
    assert_eq!(assert_same(&d), 4);
}
