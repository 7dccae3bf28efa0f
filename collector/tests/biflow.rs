//! Connection-tracking records: an RFC 5103 biflow stream and the same connections as two
//! unidirectional records each give identical aggregates (every dimension, NAT pairs
//! included), through the `netflow_parser` path and the compiled-template path alike; the
//! per-label totals are both directions' counters, `direction` keys each direction's; `nat`
//! keys are the masquerade's pairs.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use labelflow_collector::aggregate::{Delta, Dim};
use labelflow_collector::config::Config;
use labelflow_collector::ingest::Ingest;
use labelflow_proto::ipfix::MessageWriter;
use labelflow_proto::template::{self, AppIdEncoding};
use labelflow_proto::{BiflowDirection, ConnInfo, FlowRecord};
use proptest::prelude::*;

const EXPORTER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

/// The probe's conntrack export: all templates first, then data-only messages (so later
/// messages take the compiled-template path when it is on).
fn stream(records: &[FlowRecord]) -> Vec<Vec<u8>> {
    stream_at(records, 1_700_000_000)
}

/// [`stream`] exported at `export` (seconds).
fn stream_at(records: &[FlowRecord], export: u32) -> Vec<Vec<u8>> {
    let mut w = MessageWriter::new(1400);
    let mut seq = 0u32;
    w.begin(export, seq, 1);
    assert!(template::write_templates(&mut w));
    assert!(template::write_conntrack_templates_with(
        &mut w,
        AppIdEncoding::Rfc6759
    ));
    let mut out = vec![w.finish().to_vec()];
    let mut i = 0;
    while i < records.len() {
        w.begin(export + 100, seq, 1);
        while i < records.len() && template::write_flow(&mut w, &records[i]) {
            i += 1;
        }
        seq += w.data_records();
        out.push(w.finish().to_vec());
    }
    out
}

fn config() -> Config {
    let mut cfg = Config::defaults();
    cfg.agg.max_flow_duration_ms = 600_000;
    cfg.agg.networks = vec![
        "10.1.0.0/24".parse().unwrap(),
        "fd00::/120".parse().unwrap(),
    ];
    cfg
}

/// Every delta of the stream, sorted, and the per-label (bytes, packets) since start.
fn aggregate(records: &[FlowRecord], fast: bool) -> (Vec<Delta>, BTreeMap<String, (u64, u64)>) {
    let mut ingest = Ingest::new(&config());
    ingest.set_fast_path(fast);
    for d in stream(records) {
        ingest.datagram(EXPORTER, &d).expect("datagram decodes");
    }
    let mut deltas = ingest.take_batch().deltas;
    deltas.sort_by(|a, b| {
        (a.resolution, a.bucket, a.dim, &a.key).cmp(&(b.resolution, b.bucket, b.dim, &b.key))
    });
    let agg = ingest.aggregator();
    let totals = agg
        .label_totals()
        .iter()
        .enumerate()
        .map(|(id, t)| (agg.label_name(id as u32).to_string(), *t))
        .collect();
    (deltas, totals)
}

fn inside(v6: bool, n: u8) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(n)))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 1, 0, n))
    }
}

fn public(v6: bool, n: u8) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0xffff,
            0,
            0,
            0,
            0,
            u16::from(n),
        ))
    } else {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, n))
    }
}

fn remote(v6: bool, n: u8) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(n)))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, n))
    }
}

/// One connection's biflow, as the probe exports it with `biflow = true`: the original
/// direction's addresses and counters, its post-NAT addresses, and the reply's counters.
#[allow(clippy::too_many_arguments)]
fn biflow(
    v6: bool,
    host: u8,
    masq: Option<u8>,
    protocol: u8,
    sport: u16,
    nat_port: u16,
    forward: (u64, u64),
    reverse: (u64, u64),
    label: u8,
    start_ms: u64,
    len_ms: u64,
) -> FlowRecord {
    let ports = matches!(protocol, 6 | 17);
    let (sport, dport) = if ports { (sport, 443) } else { (0, 0) };
    let src = inside(v6, host);
    let dst = remote(v6, host % 3);
    let (nsrc, nport) = match masq {
        Some(p) => (public(v6, p), if ports { nat_port } else { 0 }),
        None => (src, sport),
    };
    let icmp = if protocol == 1 { 0x0800 } else { 0 };
    FlowRecord {
        observation_domain: 1,
        group: Some(0x1_0000),
        label: Some(["web", "bulk", "voice"][usize::from(label % 3)].into()),
        src_addr: src,
        dst_addr: dst,
        protocol,
        src_port: sport,
        dst_port: dport,
        icmp_type_code: icmp,
        bytes: forward.0,
        packets: forward.1,
        start_ms,
        end_ms: start_ms + len_ms,
        mark: Some(0x10),
        conntrack: Some(ConnInfo {
            post_nat_src: nsrc,
            post_nat_dst: dst,
            post_napt_src_port: nport,
            post_napt_dst_port: dport,
            direction: BiflowDirection::Initiator,
            zone: 0,
            tcp_state: (protocol == 6).then_some(3),
            conn_id: u32::from(host) << 16 | u32::from(sport),
            reverse: Some(reverse),
            reply_icmp_type_code: 0,
        }),
        ..FlowRecord::default()
    }
}

fn arb_biflow() -> impl Strategy<Value = FlowRecord> {
    (
        (any::<bool>(), 1u8..6, prop::option::of(1u8..3), 0usize..3),
        (1024u16..65_000, 1024u16..65_000),
        (
            (0u64..5_000_000, 0u64..5_000),
            (0u64..5_000_000, 0u64..5_000),
        ),
        (0u8..3, 0u64..600_000, 0u64..200_000),
    )
        .prop_map(
            |((v6, host, masq, p), (sport, nport), (fwd, rev), (label, start, len))| {
                let protocol = if v6 && p == 2 { 6 } else { [6, 17, 1][p] };
                biflow(
                    v6,
                    host,
                    masq,
                    protocol,
                    sport,
                    nport,
                    fwd,
                    rev,
                    label,
                    1_700_000_000_000 + start,
                    len,
                )
            },
        )
}

fn unidirectional(biflows: &[FlowRecord]) -> Vec<FlowRecord> {
    biflows
        .iter()
        .flat_map(|b| b.unidirectional().into_iter().flatten())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn a_biflow_stream_and_its_unidirectional_records_report_the_same(
        biflows in prop::collection::vec(arb_biflow(), 1..60),
    ) {
        let split = unidirectional(&biflows);
        let (bi_slow, bi_totals) = aggregate(&biflows, false);
        let (bi_fast, fast_totals) = aggregate(&biflows, true);
        let (uni_slow, uni_totals) = aggregate(&split, false);
        let (uni_fast, _) = aggregate(&split, true);
        prop_assert_eq!(&bi_slow, &bi_fast, "biflows: parser path vs compiled path");
        prop_assert_eq!(&uni_slow, &uni_fast, "unidirectional: parser vs compiled path");
        prop_assert_eq!(&bi_slow, &uni_slow, "biflows vs unidirectional records");
        prop_assert_eq!(&bi_totals, &uni_totals);
        prop_assert_eq!(&bi_totals, &fast_totals);

        // The label totals are both directions' counters, computed from the input alone.
        let mut want: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for b in &biflows {
            let (rb, rp) = b.conntrack.unwrap().reverse.unwrap();
            let t = want.entry(b.label.clone().unwrap()).or_default();
            *t = (t.0 + b.bytes + rb, t.1 + b.packets + rp);
        }
        want.retain(|_, t| *t != (0, 0));
        let mut got = bi_totals.clone();
        got.retain(|_, t| *t != (0, 0));
        prop_assert_eq!(got, want);

        // Per label and connection direction: the forward and the reverse counters.
        let mut want_dir: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for b in &biflows {
            let (rb, rp) = b.conntrack.unwrap().reverse.unwrap();
            let label = b.label.clone().unwrap();
            for (dir, bytes, packets) in [("orig", b.bytes, b.packets), ("reply", rb, rp)] {
                let t = want_dir.entry(format!("{label} {dir}")).or_default();
                *t = (t.0 + bytes, t.1 + packets);
            }
        }
        want_dir.retain(|_, t| *t != (0, 0));
        let base = bi_slow.iter().map(|d| d.resolution).min().unwrap_or(60);
        let mut got_dir: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for d in bi_slow.iter().filter(|d| d.dim == Dim::Direction && d.resolution == base) {
            let t = got_dir.entry(d.key.clone()).or_default();
            *t = (t.0 + d.counters.bytes, t.1 + d.counters.packets);
        }
        got_dir.retain(|_, t| *t != (0, 0));
        prop_assert_eq!(got_dir, want_dir);

        // NAT pairs: every masqueraded connection's bytes, both directions, under
        // "inside > public"; nothing else.
        let mut want_nat: BTreeMap<String, u64> = BTreeMap::new();
        for b in &biflows {
            let c = b.conntrack.unwrap();
            if c.post_nat_src != b.src_addr {
                let (rb, _) = c.reverse.unwrap();
                *want_nat
                    .entry(format!("{} > {}", b.src_addr, c.post_nat_src))
                    .or_default() += b.bytes + rb;
            }
        }
        want_nat.retain(|_, v| *v != 0);
        let mut got_nat: BTreeMap<String, u64> = BTreeMap::new();
        for d in bi_slow.iter().filter(|d| d.dim == Dim::Nat && d.resolution == base) {
            *got_nat.entry(d.key.clone()).or_default() += d.counters.bytes;
        }
        got_nat.retain(|_, v| *v != 0);
        prop_assert_eq!(got_nat, want_nat);
    }
}

/// Four masqueraded hosts behind one public address, each one biflow (1000 octets out,
/// 500 back) starting at `start_ms`.
fn four_hosts(start_ms: u64) -> Vec<FlowRecord> {
    (1..=4)
        .map(|h| {
            biflow(
                false,
                h,
                Some(1),
                17,
                5000,
                6000,
                (1000, 2),
                (500, 1),
                0,
                start_ms,
                1000,
            )
        })
        .collect()
}

#[test]
fn nat_pairs_past_the_limit_fold_into_other_and_are_counted() {
    let mut cfg = config();
    cfg.agg.max_nat_keys_per_bucket = 2;
    let mut ingest = Ingest::new(&cfg);
    let records = four_hosts(1_700_000_000_000);
    for d in stream(&records) {
        ingest.datagram(EXPORTER, &d).expect("datagram decodes");
    }
    let deltas = ingest.take_batch().deltas;
    let mut keys: BTreeMap<String, u64> = BTreeMap::new();
    for d in deltas
        .iter()
        .filter(|d| d.dim == Dim::Nat && d.resolution == 60)
    {
        *keys.entry(d.key.clone()).or_default() += d.counters.bytes;
    }
    let want: BTreeMap<String, u64> = [
        ("10.1.0.1 > 203.0.113.1".to_string(), 1500),
        ("10.1.0.2 > 203.0.113.1".to_string(), 1500),
        ("other".to_string(), 3000),
    ]
    .into();
    assert_eq!(keys, want);
    // Counted per share folded: two connections, both directions.
    assert_eq!(ingest.aggregator().stats.folded_nat_keys, 4);
}

/// The collector binary: `--by nat` over the HTTP API and the CLI (JSON, CSV, table), the
/// limit from `[limits]`, and the fold counted in `/metrics`.
#[test]
fn nat_report_over_http_and_cli_with_the_configured_limit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nat.db");
    let c = common::Collector::start(dir.path(), &db, "[limits]\nmax_nat_keys_per_bucket = 2\n");
    let now = common::now_secs();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // Inside one base bucket (the previous whole minute): the bound is per bucket.
    let minute = u64::from(now / 60 * 60 - 60);
    let datagrams = stream_at(&four_hosts(minute * 1000), now);
    for d in &datagrams {
        c.send(&sock, d);
    }
    c.wait_committed(datagrams.len() as u64);
    assert_eq!(c.metric("labelflow_collector_folded_nat_keys_total"), 4);
    let want = [
        ("10.1.0.1 > 203.0.113.1", 1500),
        ("10.1.0.2 > 203.0.113.1", 1500),
        ("other", 3000),
    ];
    let body = c
        .try_get("/api/report?by=nat&from=0&to=4102444800&bucket=1d")
        .expect("api report");
    let j: serde_json::Value = serde_json::from_str(&body).expect("json");
    let mut got: Vec<(String, u64)> = j["totals"]
        .as_array()
        .expect("totals")
        .iter()
        .map(|t| {
            (
                t["nat"].as_str().unwrap().to_string(),
                t["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    let want: Vec<(String, u64)> = want.iter().map(|(k, b)| (k.to_string(), *b)).collect();
    assert_eq!(got, want, "HTTP /api/report?by=nat");
    c.term();
    let mut cli = common::all_time_bytes(&db, "nat", "nat");
    cli.sort();
    assert_eq!(cli, want, "report --by nat --format json");
    for (format, needle) in [
        ("csv", "10.1.0.2 > 203.0.113.1,"),
        ("table", "10.1.0.1 > 203.0.113.1"),
    ] {
        let out = std::process::Command::new(common::BIN)
            .args(["report", "--db"])
            .arg(&db)
            .args([
                "--by",
                "nat",
                "--from",
                "0",
                "--to",
                "4102444800",
                "--format",
                format,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(needle),
            "{format}: {text}"
        );
    }
}
