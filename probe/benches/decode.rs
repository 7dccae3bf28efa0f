//! Packet decode throughput over a mix of IPv4 and IPv6 headers as NFLOG hands them over.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use labelflow_probe::decode::decode;
use labelflow_probe::packet::L3;

fn v4(protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![
        0x45, 0, 0x05, 0xdc, 0, 0, 0x40, 0, 64, protocol, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    p.extend_from_slice(l4);
    p
}

fn v6(next: u8, rest: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0x05, 0x00, next, 64];
    p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p.extend_from_slice(rest);
    p
}

fn mix() -> Vec<Vec<u8>> {
    let tcp = [
        0xc3, 0x50, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 2, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0,
    ];
    let udp = [0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0];
    let esp = [0, 0, 0x10, 0x01, 0, 0, 0, 1];
    let icmp = [8, 0, 0, 0, 0, 1, 0, 1];
    let mut hbh_udp = vec![17, 0, 1, 4, 0, 0, 0, 0];
    hbh_udp.extend_from_slice(&udp);
    vec![
        v4(6, &tcp),
        v4(17, &udp),
        v4(50, &esp),
        v4(1, &icmp),
        v6(6, &tcp),
        v6(0, &hbh_udp),
        v6(58, &[128, 0, 0, 0]),
        v4(6, &tcp[..8]),
    ]
}

fn bench(c: &mut Criterion) {
    let packets = mix();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(packets.len() as u64));
    g.bench_function("mixed_v4_v6", |b| {
        b.iter(|| {
            let mut n = 0u32;
            for p in &packets {
                if let Ok(d) = decode(L3::Unknown, black_box(p)) {
                    n = n.wrapping_add(d.length);
                }
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
