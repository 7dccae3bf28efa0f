//! Store commits: rows upserted per second into a table that already holds a few hundred
//! thousand rows, in batches of the size `limits.max_pending_cells` allows (deltas in the
//! aggregator's hash order; half of them new rows, half additions to existing ones).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use labelflow_collector::aggregate::{Counters, Delta, Dim};
use labelflow_collector::store::Store;

const BATCH: usize = 65_536;
const PRELOAD_BATCHES: usize = 6;

/// SplitMix64 (seeded, reproducible).
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A batch of distinct deltas over a day of minute buckets and its rollups.
fn batch(seed: u64) -> Vec<Delta> {
    let mut s = seed;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(BATCH);
    while out.len() < BATCH {
        let r = next(&mut s);
        let resolution = [60i64, 3600, 86400][(r % 3) as usize];
        let bucket = (1_800_000_000 - (r >> 8) as i64 % 86_400) / resolution * resolution;
        let dim = [Dim::Label, Dim::Port, Dim::Protocol, Dim::Host][((r >> 40) % 4) as usize];
        let key = format!("k{}", (r >> 44) % 4096);
        if seen.insert((resolution, bucket, dim, key.clone())) {
            out.push(Delta {
                resolution,
                bucket,
                dim,
                key,
                counters: Counters {
                    bytes: 1000,
                    packets: 10,
                    flows: 1,
                    ..Counters::default()
                },
            });
        }
    }
    out
}

fn commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("bench.db"), 16).unwrap();
    for i in 0..PRELOAD_BATCHES {
        store.commit(&batch(i as u64), &[], &[]).unwrap();
    }
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(10);
    let mut seed = 1000;
    g.bench_function("commit_65536_rows", |b| {
        b.iter_batched(
            || {
                seed += 1;
                // Half the rows of an earlier batch (updates), half new ones.
                let mut d = batch(seed % PRELOAD_BATCHES as u64);
                d.truncate(BATCH / 2);
                d.extend(batch(seed).into_iter().take(BATCH / 2));
                d
            },
            |d| store.commit(black_box(&d), &[], &[]).unwrap(),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
