//! Collector ingest: datagram → decode → label → aggregate, with a cached template.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use labelflow_collector::config::Config;
use labelflow_collector::ingest::Ingest;

const PER_DATAGRAM: usize = 22;

fn header(seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(1400);
    m.extend_from_slice(&[0, 10, 0, 0]); // version 10, length patched
    m.extend_from_slice(&1_700_000_000u32.to_be_bytes()); // export time
    m.extend_from_slice(&seq.to_be_bytes()); // sequence
    m.extend_from_slice(&1u32.to_be_bytes()); // domain
    m
}

fn finish(mut m: Vec<u8>) -> Vec<u8> {
    let n = m.len() as u16;
    m[2..4].copy_from_slice(&n.to_be_bytes());
    m
}

/// A template message defining `id` with these (element, length) fields.
fn template(id: u16, fields: &[(u16, u16)]) -> Vec<u8> {
    let mut m = header(0);
    m.extend_from_slice(&2u16.to_be_bytes());
    m.extend_from_slice(&((8 + 4 * fields.len()) as u16).to_be_bytes());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    for (ie, len) in fields {
        m.extend_from_slice(&ie.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
    }
    finish(m)
}

/// Template 256 of [`data`]: addresses, protocol, ports, counters, start, label.
const SIMPLE: [(u16, u16); 9] = [
    (8, 4),
    (12, 4),
    (4, 1),
    (7, 2),
    (11, 2),
    (1, 8),
    (2, 8),
    (152, 8),
    (96, 0xffff),
];

/// Template 257 of [`mixed`]: the same with an end time.
const MIXED: [(u16, u16); 10] = [
    (8, 4),
    (12, 4),
    (4, 1),
    (7, 2),
    (11, 2),
    (1, 8),
    (2, 8),
    (152, 8),
    (153, 8),
    (96, 0xffff),
];

fn data(seq: u32) -> Vec<u8> {
    let mut m = header(seq);
    m.extend_from_slice(&[1, 0, 0, 0]); // set 256, length patched
    for k in 0..PER_DATAGRAM {
        m.extend_from_slice(&[192, 168, 1, k as u8]);
        m.extend_from_slice(&[198, 51, 100, 7]);
        m.push(6);
        m.extend_from_slice(&(40000 + k as u16).to_be_bytes());
        m.extend_from_slice(&443u16.to_be_bytes());
        m.extend_from_slice(&1500u64.to_be_bytes());
        m.extend_from_slice(&3u64.to_be_bytes());
        m.extend_from_slice(&(1_700_000_000_000u64 + k as u64 * 1000).to_be_bytes());
        m.push(3);
        m.extend_from_slice(b"esp");
    }
    let len = (m.len() - 16) as u16;
    m[18..20].copy_from_slice(&len.to_be_bytes());
    finish(m)
}

/// Like [`data`], with what real streams add: four labels in turn, four services, and flows
/// of up to 90 s that often span two minute buckets (the mix `labelflow-ipfix-gen` sends).
fn mixed(seq: u32) -> Vec<u8> {
    const LABELS: [&[u8]; 4] = [b"esp", b"decrypted", b"app", b"other"];
    let mut m = header(seq);
    m.extend_from_slice(&[1, 1, 0, 0]); // set 257, length patched
    for k in 0..PER_DATAGRAM {
        let i = seq as usize * PER_DATAGRAM + k;
        m.extend_from_slice(&[192, 168, (i / 250 % 4) as u8, (i % 250) as u8 + 1]);
        m.extend_from_slice(&[198, 51, 100, (i % 17) as u8]);
        m.push(if i.is_multiple_of(3) { 17 } else { 6 });
        m.extend_from_slice(&(30000 + (i % 20000) as u16).to_be_bytes());
        m.extend_from_slice(&[443u16, 53, 80, 22][i % 4].to_be_bytes());
        m.extend_from_slice(&(100 + (i as u64 % 1400)).to_be_bytes());
        m.extend_from_slice(&(1 + (i as u64 % 10)).to_be_bytes());
        let start = 1_700_000_000_000u64 + (i as u64 * 997 % 540_000);
        m.extend_from_slice(&start.to_be_bytes());
        m.extend_from_slice(&(start + (i as u64 * 7919 % 90_000)).to_be_bytes());
        let l = LABELS[i % 4];
        m.push(l.len() as u8);
        m.extend_from_slice(l);
    }
    let len = (m.len() - 16) as u16;
    m[18..20].copy_from_slice(&len.to_be_bytes());
    finish(m)
}

fn ingest(c: &mut Criterion) {
    let cfg = Config::defaults();
    let from: IpAddr = "10.0.0.1".parse().unwrap();
    let mut ing = Ingest::new(&cfg);
    ing.datagram(from, &template(256, &SIMPLE)).unwrap();
    let d = data(0);
    let mut g = c.benchmark_group("collector");
    g.throughput(Throughput::Elements(PER_DATAGRAM as u64));
    g.bench_function("ingest_datagram_22_records", |b| {
        b.iter(|| {
            ing.datagram(from, black_box(&d)).unwrap();
            if ing.pending_datagrams() >= 1000 {
                black_box(ing.take_batch());
            }
        })
    });
    let mut ing = Ingest::new(&cfg);
    ing.datagram(from, &template(257, &MIXED)).unwrap();
    let stream: Vec<Vec<u8>> = (0..64).map(mixed).collect();
    let mut next = 0;
    g.bench_function("ingest_datagram_22_records_mixed", |b| {
        b.iter(|| {
            ing.datagram(from, black_box(&stream[next % stream.len()]))
                .unwrap();
            next += 1;
            if ing.pending_datagrams() >= 1000 {
                black_box(ing.take_batch());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
