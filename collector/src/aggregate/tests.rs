use super::*;
use crate::config::{AggConfig, Tunnel};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn rec(start_ms: u64, end_ms: u64, bytes: u64, packets: u64) -> FlowRecord {
    FlowRecord {
        src_addr: "192.168.1.10".parse().unwrap(),
        dst_addr: "198.51.100.7".parse().unwrap(),
        protocol: 6,
        src_port: 40000,
        dst_port: 443,
        bytes,
        packets,
        start_ms,
        end_ms,
        ..FlowRecord::default()
    }
}

fn sum(deltas: &[Delta], res: i64, dim: Dim) -> Counters {
    let mut c = Counters::default();
    for d in deltas
        .iter()
        .filter(|d| d.resolution == res && d.dim == dim)
    {
        c.add(&d.counters);
    }
    c
}

#[test]
fn apportion_is_exact_and_proportional() {
    let mut out = Vec::new();
    apportion(10, &[1, 1, 1], &mut out);
    assert_eq!(out, vec![4, 3, 3]);
    apportion(100, &[30_000, 60_000, 10_000], &mut out);
    assert_eq!(out, vec![30, 60, 10]);
    apportion(7, &[0, 0], &mut out);
    assert_eq!(out, vec![7, 0]);
    apportion(u64::MAX, &[u64::MAX, 1], &mut out);
    assert_eq!(
        out.iter().map(|v| u128::from(*v)).sum::<u128>(),
        u128::from(u64::MAX)
    );
}

#[test]
fn flow_spanning_three_minutes_is_prorated() {
    let mut a = Aggregator::new(AggConfig::default());
    // 00:00:30 .. 00:02:30: 30 s, 60 s, 30 s of the three minutes.
    a.add(&rec(30_000, 150_000, 1200, 12), "esp");
    let d = a.take();
    let mut per_minute: Vec<(i64, u64)> = d
        .iter()
        .filter(|d| d.resolution == 60 && d.dim == Dim::Label)
        .map(|d| (d.bucket, d.counters.bytes))
        .collect();
    per_minute.sort();
    assert_eq!(per_minute, vec![(0, 300), (60, 600), (120, 300)]);
    let hour = sum(&d, 3600, Dim::Label);
    assert_eq!((hour.bytes, hour.packets, hour.flows), (1200, 12, 1));
}

#[test]
fn views_tunnels_hosts_ports() {
    let mut views = BTreeMap::new();
    views.insert(
        "uplink".to_string(),
        vec!["esp".to_string(), "other".to_string()],
    );
    let cfg = AggConfig {
        views,
        tunnels: vec![
            Tunnel {
                name: "branch".into(),
                subnets: vec!["10.2.0.0/16".parse().unwrap()],
                peers: vec![],
            },
            Tunnel {
                name: "hq".into(),
                subnets: vec![],
                peers: vec!["203.0.113.0/29".parse().unwrap()],
            },
        ],
        networks: vec!["192.168.1.0/24".parse().unwrap()],
        ..AggConfig::default()
    };
    let mut a = Aggregator::new(cfg);
    // An SA with the hq peer at its far end is named after the tunnel.
    let mut hq = rec(0, 1000, 300, 3);
    hq.protocol = 50;
    hq.ipsec_spi = Some(0x2002);
    hq.dst_addr = "203.0.113.5".parse().unwrap();
    a.add(&hq, "esp");
    let mut esp = rec(0, 1000, 1000, 10);
    esp.protocol = 50;
    esp.ipsec_spi = Some(0x1001);
    esp.src_port = 0;
    esp.dst_port = 0;
    a.add(&esp, "esp");
    let mut inner = rec(0, 1000, 500, 5);
    inner.dst_addr = "10.2.3.4".parse().unwrap();
    a.add(&inner, "decrypted");
    let mut other = rec(0, 1000, 70, 1);
    other.dst_addr = "192.168.1.20".parse().unwrap();
    a.add(&other, "other");
    // ESP inside UDP 4500 (RFC 3948) to the hq peer: an SA too, ports kept.
    let mut natt = rec(0, 1000, 200, 2);
    natt.protocol = 17;
    natt.src_port = 4500;
    natt.dst_port = 4500;
    natt.ipsec_spi = Some(0x3003);
    natt.dst_addr = "203.0.113.6".parse().unwrap();
    a.add(&natt, "esp");
    let d = a.take();
    let find = |dim: Dim, key: &str| {
        d.iter()
            .find(|x| x.resolution == 60 && x.dim == dim && x.key == key)
            .map(|x| x.counters)
            .unwrap_or_default()
    };
    assert_eq!(find(Dim::View, "uplink").bytes, 1570);
    assert_eq!(
        find(Dim::Tunnel, "esp 192.168.1.10>198.51.100.7 spi 0x00001001").bytes,
        1000
    );
    assert_eq!(find(Dim::Tunnel, "branch").bytes, 500);
    assert_eq!(
        find(
            Dim::Tunnel,
            "hq: esp 192.168.1.10>203.0.113.5 spi 0x00002002"
        )
        .bytes,
        300
    );
    assert_eq!(
        find(
            Dim::Tunnel,
            "hq: esp-in-udp 192.168.1.10>203.0.113.6 spi 0x00003003"
        )
        .bytes,
        200
    );
    assert_eq!(find(Dim::Port, "udp/4500").bytes, 200);
    let h = find(Dim::Host, "192.168.1.10");
    assert_eq!((h.bytes_out, h.bytes_in, h.flows), (2070, 0, 5));
    assert_eq!(find(Dim::Host, "192.168.1.20").bytes_in, 70);
    assert_eq!(find(Dim::Port, "tcp/443").flows, 2);
    assert_eq!(find(Dim::Protocol, "esp").bytes, 1300);
}

#[test]
fn exclude_internal_skips_hosts_only() {
    let cfg = AggConfig {
        networks: vec!["192.168.1.0/24".parse().unwrap()],
        exclude_internal: true,
        ..AggConfig::default()
    };
    let mut a = Aggregator::new(cfg);
    let mut r = rec(0, 0, 10, 1);
    r.dst_addr = "192.168.1.20".parse().unwrap();
    a.add(&r, "lan");
    let d = a.take();
    assert_eq!(sum(&d, 60, Dim::Host), Counters::default());
    assert_eq!(sum(&d, 60, Dim::Label).bytes, 10);
    assert_eq!(a.stats.excluded_internal, 1);
}

#[test]
fn sampling_scales_counts() {
    let mut a = Aggregator::new(AggConfig::default());
    let mut r = rec(0, 0, 100, 2);
    r.sampling_interval = 10;
    a.add(&r, "x");
    let c = sum(&a.take(), 60, Dim::Label);
    assert_eq!((c.bytes, c.packets, c.flows), (1000, 20, 1));
}

#[test]
fn key_bound_folds_into_other() {
    let cfg = AggConfig {
        networks: vec!["10.0.0.0/8".parse().unwrap()],
        max_flow_keys_per_bucket: 2,
        ..AggConfig::default()
    };
    let mut a = Aggregator::new(cfg);
    for i in 0..5u8 {
        let mut r = rec(0, 0, 1, 1);
        r.src_addr = std::net::IpAddr::from([10, 0, 0, i]);
        a.add(&r, "x");
    }
    let d = a.take();
    let other = d
        .iter()
        .find(|x| x.resolution == 60 && x.dim == Dim::Host && x.key == OTHER)
        .unwrap();
    assert_eq!(other.counters.bytes, 3);
    assert_eq!(sum(&d, 60, Dim::Host).bytes, 5);
}

proptest! {
    #[test]
    fn bucket_sums_equal_input_sums(
        flows in proptest::collection::vec((0u64..3_600_000, 0u64..900_000, 0u64..1u64 << 40, 0u64..1u64 << 30, 1u32..4), 1..40)
    ) {
        let mut a = Aggregator::new(AggConfig::default());
        let (mut tb, mut tp) = (0u64, 0u64);
        for (start, dur, b, p, s) in &flows {
            let mut r = rec(*start, start + dur, *b, *p);
            r.sampling_interval = *s;
            tb += b * u64::from(*s);
            tp += p * u64::from(*s);
            a.add(&r, if start % 2 == 0 { "a" } else { "b" });
        }
        let d = a.take();
        for res in [60, 3600, 86400] {
            let c = sum(&d, res, Dim::Label);
            prop_assert_eq!(c.bytes, tb);
            prop_assert_eq!(c.packets, tp);
            prop_assert_eq!(c.flows, flows.len() as u64);
            prop_assert_eq!(sum(&d, res, Dim::Protocol), c);
        }
        // Rollups equal the sum of their parts, bucket by bucket.
        let mut hours: HashMap<(i64, String), Counters> = HashMap::new();
        for x in d.iter().filter(|x| x.resolution == 60 && x.dim == Dim::Label) {
            hours.entry((x.bucket / 3600 * 3600, x.key.clone())).or_default().add(&x.counters);
        }
        for x in d.iter().filter(|x| x.resolution == 3600 && x.dim == Dim::Label) {
            prop_assert_eq!(hours[&(x.bucket, x.key.clone())], x.counters);
        }
    }
}

/// Times at the very end of the u64 millisecond range (a fuzzed exporter's) neither
/// overflow nor lose counts.
#[test]
fn times_at_the_end_of_the_range() {
    let mut a = Aggregator::new(AggConfig::default());
    a.add(&rec(u64::MAX - 90_000, u64::MAX, 1000, 10), "x");
    a.add(&rec(u64::MAX, u64::MAX, 7, 1), "x");
    let c = sum(&a.take(), 60, Dim::Label);
    assert_eq!((c.bytes, c.packets, c.flows), (1007, 11, 2));
}

proptest! {
    /// The anchored division gives the plain bucket number for any sequence of instants.
    #[test]
    fn bucket_of_is_plain_division(
        times in proptest::collection::vec(prop_oneof![
            any::<u64>(),
            1_700_000_000_000u64..1_700_000_000_000 + 10 * 86_400_000,
            0u64..10_000_000,
        ], 1..60),
        base in prop_oneof![Just(60u64), Just(300), Just(1), Just(86_400)],
    ) {
        let cfg = AggConfig { resolutions: vec![base], retention: vec![3600], ..AggConfig::default() };
        let mut a = Aggregator::new(cfg);
        for t in times {
            prop_assert_eq!(a.bucket_of(t), t / (base * 1000));
        }
    }
}

proptest! {
    /// Bucket by bucket, label and port totals equal a plain model: every flow apportioned
    /// over its buckets, ports past the key bound of a bucket counted under `other` in the
    /// order their shares came (six ports, bounds of 3 to 6). Times cross the boundaries of the pending rows (8 buckets).
    #[test]
    fn buckets_equal_a_plain_model(
        flows in proptest::collection::vec(
            (0u64..1_200_000, prop_oneof![0u64..1000, 0u64..200_000], 0u64..5000, 0u64..50, 0usize..3, 0u16..6),
            1..60,
        ),
        // At least the three labels: which labels keep their names past the bound is not
        // decided in the order records came (labels are split out when a batch is taken).
        max_keys in 3usize..7,
    ) {
        let cfg = AggConfig {
            max_keys_per_bucket: max_keys,
            max_flow_keys_per_bucket: max_keys,
            ..AggConfig::default()
        };
        let mut a = Aggregator::new(cfg.clone());
        let labels = ["a", "b", "c"];
        let mut label_model: BTreeMap<(i64, String), (u64, u64, u64)> = BTreeMap::new();
        let mut port_model: BTreeMap<(i64, String), (u64, u64, u64)> = BTreeMap::new();
        let mut admitted: BTreeMap<i64, Vec<u16>> = BTreeMap::new();
        let (mut wb, mut wp) = (Vec::new(), Vec::new());
        for (start, dur, bytes, packets, l, p) in &flows {
            let port = 2000 + p;
            let mut r = rec(*start, start + dur, *bytes, *packets);
            r.dst_port = port;
            a.add(&r, labels[*l]);
            let (first, last) = (start / 60_000, (start + dur) / 60_000);
            let weights: Vec<u64> = (first..=last)
                .map(|b| ((b + 1) * 60_000).min(start + dur) - (b * 60_000).max(*start))
                .collect();
            apportion(*bytes, &weights, &mut wb);
            apportion(*packets, &weights, &mut wp);
            for (i, b) in (first..=last).enumerate() {
                let share = (wb[i], wp[i], u64::from(i == 0));
                if share == (0, 0, 0) {
                    continue;
                }
                let bucket = (b * 60) as i64;
                let add = |m: &mut BTreeMap<(i64, String), (u64, u64, u64)>, k: String| {
                    let e = m.entry((bucket, k)).or_default();
                    *e = (e.0 + share.0, e.1 + share.1, e.2 + share.2);
                };
                add(&mut label_model, labels[*l].to_string());
                let seen = admitted.entry(bucket).or_default();
                if !seen.contains(&port) && seen.len() < max_keys {
                    seen.push(port);
                }
                let key = if seen.contains(&port) { format!("tcp/{port}") } else { OTHER.to_string() };
                add(&mut port_model, key);
            }
        }
        let d = a.take();
        let got = |dim: Dim| -> BTreeMap<(i64, String), (u64, u64, u64)> {
            d.iter()
                .filter(|x| x.resolution == 60 && x.dim == dim)
                .map(|x| ((x.bucket, x.key.clone()), (x.counters.bytes, x.counters.packets, x.counters.flows)))
                .collect()
        };
        prop_assert_eq!(got(Dim::Label), label_model);
        prop_assert_eq!(got(Dim::Port), port_model);
    }
}

#[test]
fn label_bounds_fold_and_cut() {
    let mut a = Aggregator::new(AggConfig {
        max_labels: 3,
        max_label_bytes: 5,
        ..AggConfig::default()
    });
    let esp = a.label_id("esp");
    assert_eq!(a.label_id("voip"), a.label_id("voip"));
    // Two names and `other` fill a table of three: later names count under `other`.
    assert_eq!(a.label_id("backup"), a.label_id(OTHER));
    assert_eq!(a.stats.folded_labels, 1);
    assert_eq!(a.label_name(esp), "esp");
    let mut b = Aggregator::new(AggConfig {
        max_label_bytes: 5,
        ..AggConfig::default()
    });
    // Cut at a character boundary: "é" is two octets.
    let id = b.label_id("abcdé-long");
    assert_eq!(b.label_name(id), "abcd");
    assert_eq!(b.stats.truncated_labels, 1);
}

#[test]
fn pending_cells_count_what_the_commit_writes_and_reset_on_take() {
    let mut a = Aggregator::new(AggConfig::default());
    let now = 1_800_000_000_000u64;
    a.set_clock(now);
    // Ten ports of one label in one minute: ten port cells and one of the label (and
    // protocol); then one record across three minutes: three cells more of each.
    for p in 0..10u16 {
        let mut r = rec(now - 50_000, now - 40_000, 100, 1);
        r.dst_port = 1000 + p;
        a.add(&r, "esp");
    }
    assert_eq!(a.pending_cells(), 11);
    let mut r = rec(now - 600_000, now - 480_000, 300, 3);
    r.dst_port = 22;
    a.add(&r, "esp");
    assert!(
        a.pending_cells() >= 15 && a.pending_cells() <= 17,
        "{}",
        a.pending_cells()
    );
    a.take();
    assert_eq!(a.pending_cells(), 0);
}

#[test]
fn time_rule_is_applied_with_the_receive_clock() {
    let mut a = Aggregator::new(AggConfig::default());
    let now = 1_800_000_000_000u64;
    a.set_clock(now);
    assert_eq!(
        a.add(&rec(now, now + 3_600_000, 10, 1), "x"),
        TimeRule::Future
    );
    assert_eq!(a.add(&rec(0, 1000, 10, 1), "x"), TimeRule::Expired);
    assert_eq!(
        a.add(&rec(now - 1000, now - 2000, 10, 1), "x"),
        TimeRule::Reversed
    );
    assert_eq!(a.add(&rec(0, now, 10, 1), "x"), TimeRule::TooLong);
    let d = a.take();
    // Refused records add nothing; clamped ones keep their counts.
    assert_eq!(sum(&d, 60, Dim::Label).bytes, 20);
    // A clamped record spans at most max_flow_duration: 61 base buckets.
    let buckets = d
        .iter()
        .filter(|x| x.resolution == 60 && x.dim == Dim::Label)
        .count();
    assert!(buckets <= 62, "{buckets}");
    assert_eq!(a.stats.time_rule, [1, 1, 1, 1]);
}

/// A record of the tunnel `name` over UDP between two IPsec peers.
fn named(name: &str, ports: (u16, u16), spi: Option<u32>, bytes: u64, packets: u64) -> FlowRecord {
    FlowRecord {
        protocol: 17,
        src_port: ports.0,
        dst_port: ports.1,
        ipsec_spi: spi,
        tunnel: Some(name.into()),
        src_addr: "192.0.2.10".parse().unwrap(),
        dst_addr: "198.51.100.1".parse().unwrap(),
        ..rec(0, 1000, bytes, packets)
    }
}

#[test]
fn named_tunnels_split_by_part_and_keep_sas_apart() {
    // A configured tunnel for the same subnet: a name from the wire takes precedence.
    let cfg = AggConfig {
        tunnels: vec![Tunnel {
            name: "configured".into(),
            subnets: vec!["10.1.0.0/16".parse().unwrap()],
            peers: vec!["198.51.100.0/24".parse().unwrap()],
        }],
        ..AggConfig::default()
    };
    let mut a = Aggregator::new(cfg);
    a.add(&named("hq", (4500, 4500), Some(0xc001), 1496, 11), "wan");
    a.add(&named("hq", (4500, 4500), Some(0xc002), 1000, 10), "wan");
    a.add(&named("hq", (500, 500), None, 464, 2), "wan");
    // NAT-keepalives: every packet 29 octets (IPv4 + UDP + 0xFF).
    a.add(&named("rw", (4500, 4500), None, 29 * 3, 3), "wan");
    // IKE on 4500 after NAT detection: longer packets.
    a.add(&named("rw", (4500, 4500), None, 29 * 3 + 1, 3), "wan");
    let mut raw_esp = named("rw", (0, 0), Some(0xd00d), 300, 3);
    raw_esp.protocol = 50;
    a.add(&raw_esp, "wan");
    let mut inner = named("hq", (40000, 443), None, 2000, 20);
    inner.protocol = 6;
    inner.dst_addr = "10.1.2.3".parse().unwrap();
    a.add(&inner, "decrypted");
    // Unnamed ESP in UDP keeps its per-SA key.
    let mut unnamed = named("", (4500, 4500), Some(0xbeef), 70, 1);
    unnamed.tunnel = None;
    a.add(&unnamed, "wan");
    let d = a.take();
    let mut keys: Vec<(String, u64, u64)> = d
        .iter()
        .filter(|x| x.resolution == 60 && x.dim == Dim::Tunnel)
        .map(|x| (x.key.clone(), x.counters.bytes, x.counters.packets))
        .collect();
    keys.sort();
    let want = [
        (
            "configured: esp-in-udp 192.0.2.10>198.51.100.1 spi 0x0000beef",
            70,
            1,
        ),
        ("hq [esp-in-udp 0x0000c001]", 1496, 11),
        ("hq [esp-in-udp 0x0000c002]", 1000, 10),
        ("hq [ike]", 464, 2),
        ("hq [inner]", 2000, 20),
        ("rw [esp 0x0000d00d]", 300, 3),
        ("rw [ike]", 88, 3),
        ("rw [nat-keepalive]", 87, 3),
    ];
    let want: Vec<(String, u64, u64)> = want
        .iter()
        .map(|(k, b, p)| (k.to_string(), *b, *p))
        .collect();
    assert_eq!(keys, want);
    // Over IPv6 a keepalive is 49 octets (40 + 8 + 1).
    let mut v6 = named("rw", (4500, 4500), None, 49 * 2, 2);
    (v6.src_addr, v6.dst_addr) = (
        "2001:db8::a".parse().unwrap(),
        "2001:db8::1".parse().unwrap(),
    );
    let mut v6_ike = v6.clone();
    v6_ike.bytes = 29 * 2;
    assert_eq!(Part::of(&Flow::from_record(&v6, 0)), Part::NatKeepalive);
    assert_eq!(Part::of(&Flow::from_record(&v6_ike, 0)), Part::Ike);
    let hq = a.tunnel_id("hq") as usize;
    assert_eq!(a.tunnel_totals()[hq][Part::EspInUdp as usize], (2496, 21));
    assert_eq!(a.tunnel_totals()[hq][Part::Inner as usize], (2000, 20));
}

#[test]
fn tunnel_names_are_bounded() {
    let mut a = Aggregator::new(AggConfig {
        max_tunnel_names: 3,
        ..AggConfig::default()
    });
    for name in ["a", "b", "c", "d"] {
        a.add(&named(name, (4500, 4500), Some(7), 100, 1), "wan");
    }
    assert_eq!(a.stats.folded_tunnels, 2);
    let d = a.take();
    let mut keys: Vec<&str> = d
        .iter()
        .filter(|x| x.resolution == 60 && x.dim == Dim::Tunnel)
        .map(|x| x.key.as_str())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "a [esp-in-udp 0x00000007]",
            "b [esp-in-udp 0x00000007]",
            "other [esp-in-udp 0x00000007]"
        ],
        "three names, `other` included"
    );
    let long = "x".repeat(300);
    let id = a.tunnel_id(&long);
    assert_eq!(a.tunnel_name(id), OTHER, "bound holds for long names too");
}

proptest! {
    /// Per named tunnel, its keys' sums (parsed back from text) equal the input, at every
    /// resolution, whatever the parts and the spans.
    #[test]
    fn named_tunnel_sums_equal_input(
        flows in proptest::collection::vec(
            (0u64..600_000, 0u64..300_000, 0u64..1 << 30, 1u64..1000, 0usize..3, 0u8..4, 1u32..4),
            1..40),
    ) {
        let mut a = Aggregator::new(AggConfig::default());
        let names = ["hq", "rw", "site [x]"];
        let mut want: HashMap<(&str, i64), (u64, u64)> = HashMap::new();
        for (start, dur, b, p, n, kind, spi) in &flows {
            let (ports, spi) = match kind {
                0 => ((4500, 4500), Some(*spi)),
                1 => ((500, 500), None),
                2 => ((4500, 4500), None),
                _ => ((40000, 80), None),
            };
            let mut r = named(names[*n], ports, spi, *b, *p);
            (r.start_ms, r.end_ms) = (*start, start + dur);
            a.add(&r, "wan");
            for res in [60, 3600, 86400] {
                let w = want.entry((names[*n], res)).or_default();
                *w = (w.0 + b, w.1 + p);
            }
        }
        let mut got: HashMap<(&str, i64), (u64, u64)> = HashMap::new();
        let d = a.take();
        for x in d.iter().filter(|x| x.dim == Dim::Tunnel) {
            let (conn, part, _) = parse_tunnel_key(&x.key);
            prop_assert!(part.is_some(), "{}", x.key);
            let name = names.iter().find(|n| **n == conn).expect("a known name");
            let g = got.entry((name, x.resolution)).or_default();
            *g = (g.0 + x.counters.bytes, g.1 + x.counters.packets);
        }
        prop_assert_eq!(got, want);
    }
}

#[test]
fn coarse_buckets_bound_flow_keys_and_keep_totals() {
    // Two ports per minute, three per hour: minute 0 names 2001 and 2002 (2003 folds),
    // minute 1 names 2004 and 2005; the hour names three of the four, one folds there.
    // System ports keep their names past the bound: 53 in minute 1.
    let cfg = AggConfig {
        max_keys_per_bucket: 3,
        max_flow_keys_per_bucket: 2,
        ..AggConfig::default()
    };
    let mut a = Aggregator::new(cfg);
    for (minute, port) in [
        (0u64, 2001u16),
        (0, 2002),
        (0, 2003),
        (1, 2004),
        (1, 2005),
        (1, 53),
    ] {
        let mut r = rec(minute * 60_000, minute * 60_000 + 1000, 10, 1);
        r.dst_port = port;
        a.add(&r, "x");
    }
    let d = a.take();
    let keys = |res: i64| {
        let mut k: Vec<(String, u64)> = d
            .iter()
            .filter(|x| x.resolution == res && x.dim == Dim::Port)
            .map(|x| (x.key.clone(), x.counters.bytes))
            .collect();
        k.sort();
        k
    };
    // Which three the hour names depends on the order of the take, not of arrival (as for
    // labels): one of the four ports the minutes named folds there.
    let hour = keys(3600);
    assert_eq!(hour.len(), 5, "{hour:?}");
    assert_eq!(hour[0], ("other".to_string(), 20));
    assert!(hour.contains(&("tcp/53".to_string(), 10)), "{hour:?}");
    assert_eq!(keys(60).len(), 6, "2001, 2002, other; 2004, 2005, 53");
    for res in [60, 3600, 86400] {
        assert_eq!(sum(&d, res, Dim::Port).bytes, 60);
        assert_eq!(sum(&d, res, Dim::Label).bytes, 60);
    }
    assert_eq!(a.rollup.stats.folded_keys, 2, "5 in the hour and the day");
}

#[test]
fn tunnel_names_render_on_another_thread_after_more_are_named() {
    let mut a = Aggregator::new(AggConfig::default());
    a.add(&named("hq", (4500, 4500), Some(1), 100, 1), "wan");
    let taken = a.take_base();
    // Named while the taken batch still shares the names.
    a.add(&named("rw", (4500, 4500), Some(2), 50, 1), "wan");
    let mut rollup = Rollup::new(a.config());
    let d = std::thread::spawn(move || rollup.render(taken))
        .join()
        .unwrap();
    let tunnel_keys = |d: &[Delta]| {
        let mut k: Vec<(String, u64)> = d
            .iter()
            .filter(|x| x.resolution == 60 && x.dim == Dim::Tunnel)
            .map(|x| (x.key.clone(), x.counters.bytes))
            .collect();
        k.sort();
        k
    };
    assert_eq!(
        tunnel_keys(&d),
        [("hq [esp-in-udp 0x00000001]".to_string(), 100)]
    );
    assert_eq!(
        tunnel_keys(&a.take()),
        [("rw [esp-in-udp 0x00000002]".to_string(), 50)]
    );
}
