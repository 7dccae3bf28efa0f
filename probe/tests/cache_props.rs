//! Property tests: decode never panics; the flow cache conserves packets and bytes across any
//! interleaving of observe / expire / flush, never exceeds `max_flows`, and exports every flow
//! exactly once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use labelflow_probe::cache::{CacheConfig, FlowCache};
use labelflow_probe::decode::{decode, proto, tcp_flags, Decoded, Fragment, IpVersion, Transport};
use labelflow_probe::packet::{PacketMeta, L3};
use labelflow_probe::pipeline::Pipeline;
use labelflow_proto::{EndReason, FlowRecord};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Observe {
        flow: u8,
        group: u16,
        len: u16,
        fin: bool,
        dt: u16,
    },
    Expire {
        dt: u32,
    },
    Flush {
        dt: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..24, 1u16..3, 20u16..1500, prop::bool::weighted(0.05), 0u16..4000)
            .prop_map(|(flow, group, len, fin, dt)| Op::Observe { flow, group, len, fin, dt }),
        2 => (0u32..70_000).prop_map(|dt| Op::Expire { dt }),
        1 => (0u16..100).prop_map(|dt| Op::Flush { dt }),
    ]
}

fn packet(flow: u8, len: u16, fin: bool) -> Decoded {
    // Flows 0..8 UDP, 8..16 TCP, 16..24 ESP with an SPI.
    let (protocol, transport) = match flow / 8 {
        0 => (
            proto::UDP,
            Transport::Ports {
                src: 1000 + u16::from(flow),
                dst: 53,
            },
        ),
        1 => (
            proto::TCP,
            Transport::Ports {
                src: 2000 + u16::from(flow),
                dst: 443,
            },
        ),
        _ => (proto::ESP, Transport::Spi(u32::from(flow))),
    };
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&[10, 0, 0, flow]);
    Decoded {
        version: if flow.is_multiple_of(3) {
            IpVersion::V6
        } else {
            IpVersion::V4
        },
        src,
        dst: [0xfe; 16],
        protocol,
        transport,
        tcp_flags: if fin && protocol == proto::TCP {
            tcp_flags::FIN
        } else {
            tcp_flags::ACK
        },
        tos: 0,
        length: u32::from(len),
        fragment: Fragment::None,
        partial: None,
    }
}

type FlowId = (Option<u32>, IpAddr, u8, u16, Option<u32>);

fn id_of(r: &FlowRecord) -> FlowId {
    (r.group, r.src_addr, r.protocol, r.src_port, r.ipsec_spi)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_never_panics(l3 in prop_oneof![Just(L3::Ipv4), Just(L3::Ipv6), Just(L3::Unknown)],
                           bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode(l3, &bytes);
    }

    /// Arbitrary bytes behind a plausible first byte, so the walk reaches deep headers.
    #[test]
    fn decode_never_panics_on_ip_like_bytes(first in prop_oneof![Just(0x45u8), Just(0x4f), Just(0x60)],
                                            next in any::<u8>(),
                                            rest in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut p = vec![first];
        p.extend_from_slice(&rest);
        if p.len() > 6 && first == 0x60 {
            p[6] = next;
        }
        if let Ok(d) = decode(L3::Unknown, &p) {
            prop_assert!(d.length >= 20);
        }
    }

    #[test]
    fn pipeline_counts_every_packet_once(packets in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..50)) {
        let mut p = Pipeline::new(CacheConfig::default());
        let meta = PacketMeta::default();
        for (i, pkt) in packets.iter().enumerate() {
            let _ = p.handle(&meta, pkt, i as u64);
        }
        let s = p.stats();
        prop_assert_eq!(s.decode.decoded + s.decode.total_errors(), packets.len() as u64);
        prop_assert_eq!(s.cache.packets, s.decode.decoded);
        let mut exported = 0u64;
        p.flush(1_000, &mut |r| exported += r.packets);
        prop_assert_eq!(exported, s.decode.decoded);
    }

    #[test]
    fn cache_conserves_and_exports_each_flow_once(max in 1u32..12, ops in prop::collection::vec(op(), 1..300)) {
        let mut cache = FlowCache::new(CacheConfig {
            max_flows: NonZeroU32::new(max).unwrap(),
            idle_timeout: Duration::from_secs(15),
            active_timeout: Duration::from_secs(60),
            labels: vec![(1, "a".into())],
            user_names: |_| None,
            ..CacheConfig::default()
        });
        let mut now = 1_700_000_000_000u64;
        let mut observed: HashMap<FlowId, (u64, u64)> = HashMap::new();
        let mut exported: HashMap<FlowId, (u64, u64)> = HashMap::new();
        let mut records = 0u64;
        let sink_check = |r: FlowRecord, now: u64, exported: &mut HashMap<FlowId, (u64, u64)>, records: &mut u64| {
            assert!(r.start_ms <= r.end_ms && r.end_ms <= now, "{r:?} at {now}");
            assert!(r.packets > 0);
            if r.end_reason == Some(EndReason::IdleTimeout) {
                assert!(r.end_ms + 15_000 <= now);
            }
            if r.end_reason == Some(EndReason::ActiveTimeout) {
                assert!(r.start_ms + 60_000 <= now);
            }
            let e = exported.entry(id_of(&r)).or_default();
            e.0 += r.packets;
            e.1 += r.bytes;
            *records += 1;
        };
        for op in ops {
            match op {
                Op::Observe { flow, group, len, fin, dt } => {
                    now += u64::from(dt);
                    let meta = PacketMeta { group, ..PacketMeta::default() };
                    let pkt = packet(flow, len, fin);
                    cache.observe(&meta, &pkt, now);
                    let mut src = [0u8; 4];
                    src.copy_from_slice(&pkt.src[..4]);
                    let src_addr = pkt.src_addr();
                    let (sport, spi) = match pkt.transport {
                        Transport::Ports { src, .. } => (src, None),
                        Transport::Spi(s) => (0, Some(s)),
                        _ => (0, None),
                    };
                    let e = observed.entry((Some(u32::from(group)), src_addr, pkt.protocol, sport, spi)).or_default();
                    e.0 += 1;
                    e.1 += u64::from(len);
                }
                Op::Expire { dt } => {
                    now += u64::from(dt);
                    // Nothing is due before the announced deadline.
                    let quiet = cache.next_deadline().is_none_or(|d| d > now);
                    let before = records;
                    cache.expire(now, &mut |r| sink_check(r, now, &mut exported, &mut records));
                    if quiet {
                        prop_assert_eq!(before, records);
                    }
                    if let Some(d) = cache.next_deadline() {
                        prop_assert!(d > now);
                    }
                }
                Op::Flush { dt } => {
                    now += u64::from(dt);
                    cache.flush(now, &mut |r| sink_check(r, now, &mut exported, &mut records));
                    prop_assert!(cache.is_empty());
                }
            }
            prop_assert!(cache.len() as u32 <= max);
            let s = cache.stats();
            prop_assert_eq!(s.live_flows, cache.len() as u64);
            prop_assert!(s.live_flows <= u64::from(max));
        }
        cache.flush(now, &mut |r| sink_check(r, now, &mut exported, &mut records));
        prop_assert_eq!(&exported, &observed);
        let s = cache.stats();
        prop_assert_eq!(s.flows_created, records, "every flow exported exactly once");
        prop_assert_eq!(s.exported, records);
        prop_assert_eq!(
            s.expired_idle + s.expired_active + s.ended_tcp + s.flushed + s.evicted,
            records
        );
        let mut again = 0;
        cache.flush(now + 1, &mut |_| again += 1);
        prop_assert_eq!(again, 0);
    }
}
