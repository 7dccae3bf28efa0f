//! Flow cache `observe` throughput with 10k and 1M live flows: packets hit existing flows in a
//! scattered order (the cache-miss pattern of a busy gateway), so the index and slab lookups
//! dominate.

use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use labelflow_probe::cache::{CacheConfig, FlowCache};
use labelflow_probe::decode::{Decoded, Fragment, IpVersion, Transport};
use labelflow_probe::packet::PacketMeta;

const BATCH: u64 = 10_000;

fn packet(i: u32) -> Decoded {
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&(0x0a00_0000 | (i >> 8)).to_be_bytes());
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&[192, 0, 2, 1]);
    Decoded {
        version: IpVersion::V4,
        src,
        dst,
        protocol: 17,
        transport: Transport::Ports {
            src: 1024 + (i & 0xff) as u16,
            dst: 53,
        },
        tcp_flags: 0,
        tos: 0,
        length: 100,
        fragment: Fragment::None,
        partial: None,
    }
}

fn filled(flows: u32) -> FlowCache {
    let mut c = FlowCache::new(CacheConfig {
        max_flows: NonZeroU32::new(flows).unwrap(),
        idle_timeout: Duration::from_secs(3600),
        active_timeout: Duration::from_secs(3600),
        labels: vec![(1, "bench".into())],
        user_names: |_| None,
        ..CacheConfig::default()
    });
    let meta = PacketMeta {
        group: 1,
        ..PacketMeta::default()
    };
    for i in 0..flows {
        c.observe(&meta, &packet(i), 1_000);
    }
    assert_eq!(c.len(), flows as usize);
    c
}

fn bench(c: &mut Criterion) {
    let meta = PacketMeta {
        group: 1,
        ..PacketMeta::default()
    };
    let mut g = c.benchmark_group("cache_observe");
    g.throughput(Throughput::Elements(BATCH));
    for flows in [10_000u32, 1_000_000] {
        let mut cache = filled(flows);
        // A multiplicative step co-prime with `flows` visits flows in scattered order.
        let pkts: Vec<Decoded> = (0..BATCH as u32)
            .map(|k| packet(k.wrapping_mul(2_654_435_761) % flows))
            .collect();
        g.bench_function(format!("existing_flows/{flows}"), |b| {
            b.iter(|| {
                for p in &pkts {
                    cache.observe(&meta, p, 2_000);
                }
            })
        });
        assert_eq!(cache.len(), flows as usize);
    }
    // New flows into a full cache: every packet evicts the least recently seen flow.
    g.bench_function("new_flows_evicting/10000", |b| {
        let mut next = 20_000_000u32;
        b.iter_batched_ref(
            || filled(10_000),
            |cache| {
                for _ in 0..BATCH {
                    next = next.wrapping_add(1);
                    cache.observe(&meta, &packet(next), 2_000);
                }
                let mut n = 0u64;
                cache.expire(2_000, &mut |_| n += 1);
                n
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
