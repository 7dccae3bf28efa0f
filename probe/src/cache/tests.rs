use std::net::IpAddr;

use super::*;
use crate::decode::{Fragment, IpVersion, Transport};

const T0: u64 = 1_700_000_000_000;

fn cfg(max: u32) -> CacheConfig {
    CacheConfig {
        max_flows: NonZeroU32::new(max).unwrap(),
        idle_timeout: Duration::from_secs(15),
        active_timeout: Duration::from_secs(60),
        labels: vec![(1, "esp".into()), (2, "vpn".into())],
        user_names: |uid| (uid == 0).then(|| "root".to_string()),
        ipsec_ports: crate::decode::IpsecPorts::DEFAULT,
    }
}

fn udp(src_last: u8, sport: u16, len: u32) -> Decoded {
    Decoded {
        version: IpVersion::V4,
        src: [10, 0, 0, src_last, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        dst: [10, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        protocol: proto::UDP,
        transport: Transport::Ports {
            src: sport,
            dst: 53,
        },
        tcp_flags: 0,
        tos: 0,
        length: len,
        fragment: Fragment::None,
        partial: None,
    }
}

fn tcp(flags: u8, len: u32) -> Decoded {
    Decoded {
        protocol: proto::TCP,
        tcp_flags: flags,
        transport: Transport::Ports {
            src: 40000,
            dst: 443,
        },
        ..udp(9, 0, len)
    }
}

fn meta(group: u16) -> PacketMeta<'static> {
    PacketMeta {
        group,
        ingress_if: 2,
        egress_if: 3,
        ..PacketMeta::default()
    }
}

fn drain(c: &mut FlowCache, now: u64) -> Vec<FlowRecord> {
    let mut out = Vec::new();
    c.expire(now, &mut |r| out.push(r));
    out
}

#[test]
fn slot_and_key_sizes() {
    assert_eq!(std::mem::size_of::<Slot>(), 92);
}

#[test]
fn packets_of_one_flow_make_one_record() {
    let mut c = FlowCache::new(cfg(16));
    let m = PacketMeta {
        hook: Some(Hook::LocalOut),
        mark: 0x42,
        uid: Some(0),
        prefix: b"out",
        ..meta(1)
    };
    let mut first = udp(1, 1000, 100);
    first.tos = 0x28;
    c.observe(&m, &first, T0);
    c.observe(&m, &udp(1, 1000, 200), T0 + 10);
    c.observe(&m, &udp(1, 1000, 300), T0 + 20);
    assert_eq!(c.len(), 1);
    assert_eq!(c.next_deadline(), Some(T0 + 20 + 15_000));
    let mut out = Vec::new();
    c.flush(T0 + 30, &mut |r| out.push(r));
    assert_eq!(
        out,
        vec![FlowRecord {
            observation_domain: 0,
            group: Some(1),
            label: Some("esp".into()),
            src_addr: "10.0.0.1".parse::<IpAddr>().unwrap(),
            dst_addr: "10.0.1.1".parse::<IpAddr>().unwrap(),
            protocol: 17,
            src_port: 1000,
            dst_port: 53,
            icmp_type_code: 0,
            ipsec_spi: None,
            ingress_if: 2,
            egress_if: 3,
            bytes: 600,
            packets: 3,
            tcp_flags: 0,
            tos: 0x28,
            start_ms: T0,
            end_ms: T0 + 20,
            end_reason: Some(EndReason::ForcedEnd),
            direction: Some(Direction::Egress),
            mark: Some(0x42),
            user_name: Some("root".into()),
            nflog_prefix: Some("out".into()),
            sampling_interval: 1,
            tunnel: None,
            conntrack: None,
        }]
    );
    assert!(c.is_empty());
    assert_eq!(c.next_deadline(), None);
}

#[test]
fn group_and_interfaces_are_part_of_the_key() {
    let mut c = FlowCache::new(cfg(16));
    c.observe(&meta(1), &udp(1, 1, 10), T0);
    c.observe(&meta(2), &udp(1, 1, 10), T0);
    c.observe(
        &PacketMeta {
            ingress_if: 9,
            ..meta(1)
        },
        &udp(1, 1, 10),
        T0,
    );
    // Mark, uid and prefix are not: they come from the first packet.
    c.observe(&PacketMeta { mark: 7, ..meta(1) }, &udp(1, 1, 10), T0);
    assert_eq!(c.len(), 3);
    let mut out = Vec::new();
    c.flush(T0, &mut |r| out.push(r));
    let labels: Vec<_> = out.iter().map(|r| r.label.clone()).collect();
    assert_eq!(
        labels,
        vec![Some("esp".into()), Some("vpn".into()), Some("esp".into())]
    );
    assert_eq!((out[0].packets, out[0].mark), (2, Some(0)));
}

#[test]
fn idle_timeout_expires_exactly_at_the_deadline() {
    let mut c = FlowCache::new(cfg(16));
    c.observe(&meta(1), &udp(1, 1, 10), T0);
    c.observe(&meta(1), &udp(2, 1, 10), T0 + 5_000);
    assert!(drain(&mut c, T0 + 14_999).is_empty());
    let out = drain(&mut c, T0 + 15_000);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].end_reason, Some(EndReason::IdleTimeout));
    assert_eq!(c.next_deadline(), Some(T0 + 20_000));
    assert_eq!(drain(&mut c, T0 + 20_000).len(), 1);
    let s = c.stats();
    assert_eq!((s.expired_idle, s.exported, s.live_flows), (2, 2, 0));
}

#[test]
fn active_timeout_splits_a_busy_flow() {
    let mut c = FlowCache::new(cfg(16));
    for i in 0..=70u64 {
        c.observe(&meta(1), &udp(1, 1, 100), T0 + i * 1_000);
        // The packet at first + 60 s already belongs to the next flow.
        let out = drain(&mut c, T0 + i * 1_000 + 500);
        if i == 60 {
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].end_reason, Some(EndReason::ActiveTimeout));
            assert_eq!((out[0].start_ms, out[0].end_ms), (T0, T0 + 59_000));
            assert_eq!(out[0].packets, 60);
        } else {
            assert!(out.is_empty(), "second {i}");
        }
    }
    assert_eq!(c.next_deadline(), Some(T0 + 70_000 + 15_000));
}

#[test]
fn overdue_flow_ends_before_the_next_packet_opens_a_new_one() {
    let mut c = FlowCache::new(cfg(16));
    c.observe(&meta(1), &udp(1, 1, 100), T0);
    // No expire call for 20 s: the flow was idle at T0 + 15 s.
    c.observe(&meta(1), &udp(1, 1, 50), T0 + 20_000);
    assert_eq!(c.next_deadline(), Some(T0 + 20_000));
    let out = drain(&mut c, T0 + 20_000);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].end_reason, out[0].bytes),
        (Some(EndReason::IdleTimeout), 100)
    );
    assert_eq!(c.len(), 1);
    // Same for the active timeout, with packets every 10 s.
    let mut c = FlowCache::new(cfg(16));
    for i in 0..7u64 {
        c.observe(&meta(1), &udp(1, 1, 100), T0 + i * 10_000);
    }
    let out = drain(&mut c, T0 + 60_000);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].end_reason, out[0].packets),
        (Some(EndReason::ActiveTimeout), 6)
    );
    assert_eq!(c.len(), 1);
}

#[test]
fn tcp_fin_or_rst_ends_the_flow() {
    let mut c = FlowCache::new(cfg(16));
    c.observe(&meta(1), &tcp(tcp_flags::SYN, 60), T0);
    c.observe(&meta(1), &tcp(tcp_flags::ACK, 52), T0 + 1);
    c.observe(&meta(1), &tcp(tcp_flags::FIN | tcp_flags::ACK, 52), T0 + 2);
    assert_eq!(c.len(), 0);
    assert_eq!(c.next_deadline(), Some(T0 + 2));
    // The last ACK opens a new flow.
    c.observe(&meta(1), &tcp(tcp_flags::ACK, 52), T0 + 3);
    let out = drain(&mut c, T0 + 3);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].end_reason, Some(EndReason::EndOfFlow));
    assert_eq!(out[0].packets, 3);
    assert_eq!(out[0].bytes, 164);
    assert_eq!(
        out[0].tcp_flags,
        tcp_flags::SYN | tcp_flags::ACK | tcp_flags::FIN
    );
    assert_eq!(c.len(), 1);
    c.observe(&meta(1), &tcp(tcp_flags::RST, 40), T0 + 4);
    let out = drain(&mut c, T0 + 4);
    assert_eq!((out[0].packets, out[0].tcp_flags), (2, 0x14));
    // FIN on UDP means nothing.
    let mut u = udp(1, 1, 10);
    u.tcp_flags = tcp_flags::FIN;
    c.observe(&meta(1), &u, T0 + 5);
    assert_eq!(c.len(), 1);
    assert_eq!(c.stats().ended_tcp, 2);
}

#[test]
fn full_cache_evicts_the_least_recently_seen_flow() {
    let mut c = FlowCache::new(cfg(2));
    c.observe(&meta(1), &udp(1, 1, 10), T0);
    c.observe(&meta(1), &udp(2, 1, 20), T0 + 1);
    c.observe(&meta(1), &udp(1, 1, 10), T0 + 2); // flow 1 is now the most recent
    c.observe(&meta(1), &udp(3, 1, 30), T0 + 3);
    assert_eq!(c.len(), 2);
    let out = drain(&mut c, T0 + 3);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].end_reason, Some(EndReason::LackOfResources));
    assert_eq!(out[0].bytes, 20);
    assert_eq!(c.stats().evicted, 1);
    let mut rest = Vec::new();
    c.flush(T0 + 4, &mut |r| rest.push(r));
    let bytes: Vec<u64> = rest.iter().map(|r| r.bytes).collect();
    assert_eq!(bytes, vec![20, 30], "oldest first");
}

#[test]
fn expire_orders_by_deadline_and_picks_the_earlier_reason() {
    let mut c = FlowCache::new(cfg(16));
    // A: starts at 0, busy until 55 s: active deadline 60 s < idle deadline 70 s.
    // B: one packet at 50 s: idle deadline 65 s.
    for i in 0..=55u64 {
        c.observe(&meta(1), &udp(1, 1, 1), T0 + i * 1_000);
    }
    c.observe(&meta(1), &udp(2, 1, 1), T0 + 50_000);
    assert_eq!(c.next_deadline(), Some(T0 + 60_000));
    let out = drain(&mut c, T0 + 100_000);
    let got: Vec<_> = out.iter().map(|r| (r.packets, r.end_reason)).collect();
    assert_eq!(
        got,
        vec![
            (56, Some(EndReason::ActiveTimeout)),
            (1, Some(EndReason::IdleTimeout))
        ]
    );
}

#[test]
fn time_going_backwards_counts_as_the_latest_time() {
    let mut c = FlowCache::new(cfg(16));
    c.observe(&meta(1), &udp(1, 1, 10), T0 + 1_000);
    c.observe(&meta(1), &udp(1, 1, 10), T0);
    let mut out = Vec::new();
    c.flush(T0, &mut |r| out.push(r));
    assert_eq!((out[0].start_ms, out[0].end_ms), (T0 + 1_000, T0 + 1_000));
}

#[test]
fn times_survive_an_epoch_rebase() {
    let mut c = FlowCache::new(cfg(16));
    let day = 86_400_000u64;
    c.observe(&meta(1), &udp(1, 1, 10), T0);
    // 30 days later: more than 2^31 ms after the epoch.
    let later = T0 + 30 * day;
    c.observe(&meta(1), &udp(2, 1, 10), later);
    c.observe(&meta(1), &udp(2, 1, 10), later + 5);
    assert_eq!(c.len(), 1, "the first flow ended while rebasing");
    assert_eq!(c.next_deadline(), Some(later + 5));
    let out = drain(&mut c, later + 5);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].start_ms, out[0].end_ms), (T0, T0));
    let mut rest = Vec::new();
    c.flush(later + 6, &mut |r| rest.push(r));
    assert_eq!((rest[0].start_ms, rest[0].end_ms), (later, later + 5));
}

#[test]
fn counters_that_would_overflow_end_the_flow() {
    let mut c = FlowCache::new(cfg(16));
    let id = {
        c.observe(&meta(1), &udp(1, 1, 10), T0);
        c.lists[LRU].head
    };
    c.slots[id as usize].packets = u32::MAX;
    c.observe(&meta(1), &udp(1, 1, 10), T0 + 1);
    let out = drain(&mut c, T0 + 1);
    assert_eq!(
        (out[0].packets, out[0].end_reason),
        (u64::from(u32::MAX), Some(EndReason::ActiveTimeout))
    );
    assert_eq!(c.len(), 1);
}

#[test]
fn direction_from_hook() {
    assert_eq!(
        direction_of(Some(Hook::PreRouting)),
        Some(Direction::Ingress)
    );
    assert_eq!(direction_of(Some(Hook::LocalIn)), Some(Direction::Ingress));
    assert_eq!(direction_of(Some(Hook::Forward)), Some(Direction::Ingress));
    assert_eq!(direction_of(Some(Hook::LocalOut)), Some(Direction::Egress));
    assert_eq!(
        direction_of(Some(Hook::PostRouting)),
        Some(Direction::Egress)
    );
    assert_eq!(direction_of(Some(Hook::Other(9))), None);
    assert_eq!(direction_of(None), None);
}

#[test]
fn slots_are_reused_after_expiry() {
    let mut c = FlowCache::new(cfg(1_000));
    for round in 0..5u64 {
        for i in 0..100u16 {
            c.observe(&meta(1), &udp(1, i, 10), T0 + round * 20_000);
        }
        drain(&mut c, T0 + round * 20_000 + 15_000);
        assert!(c.is_empty());
    }
    assert_eq!(c.slots.len(), 100);
    assert_eq!(c.attrs.len(), 0);
}
