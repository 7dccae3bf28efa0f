//! IPFIX encode and decode (with the template already cached) of labelflow flow records.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use labelflow_proto::ipfix::{Message, MessageWriter, Template};
use labelflow_proto::template::{self, decode_flow, FLOW_V4};
use labelflow_proto::FlowRecord;

fn records(n: u32) -> Vec<FlowRecord> {
    (0..n)
        .map(|i| FlowRecord {
            observation_domain: 1,
            group: Some(1 + i % 4),
            label: Some(["esp", "vpn", "app", "other"][(i % 4) as usize].into()),
            src_addr: std::net::Ipv4Addr::from(0x0a00_0000 + i).into(),
            dst_addr: "198.51.100.1".parse().unwrap(),
            protocol: 17,
            src_port: i as u16,
            dst_port: 53,
            packets: u64::from(i),
            bytes: 100 * u64::from(i),
            start_ms: 1_700_000_000_000,
            end_ms: 1_700_000_001_000,
            ..FlowRecord::default()
        })
        .collect()
}

fn encode(c: &mut Criterion) {
    let recs = records(1000);
    let mut g = c.benchmark_group("ipfix");
    g.throughput(Throughput::Elements(recs.len() as u64));
    g.bench_function("encode_1000_flows", |b| {
        let mut w = MessageWriter::new(1400);
        b.iter(|| {
            let mut octets = 0;
            w.begin(0, 0, 1);
            for r in &recs {
                if !template::write_flow(&mut w, r) {
                    octets += w.finish().len();
                    w.begin(0, 0, 1);
                    assert!(template::write_flow(&mut w, r));
                }
            }
            octets += w.finish().len();
            black_box(octets)
        })
    });

    // Messages of data records only; the template is parsed once, outside the loop.
    let mut msgs = Vec::new();
    let mut w = MessageWriter::new(1400);
    w.begin(0, 0, 1);
    for r in &recs {
        if !template::write_flow(&mut w, r) {
            msgs.push(w.finish().to_vec());
            w.begin(0, 0, 1);
            assert!(template::write_flow(&mut w, r));
        }
    }
    msgs.push(w.finish().to_vec());
    let t = Template::new(FLOW_V4.id, 0, FLOW_V4.fields.to_vec()).unwrap();
    g.bench_function("decode_1000_flows_cached_template", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for m in &msgs {
                let m = Message::new_checked(&m[..]).unwrap();
                for set in m.sets() {
                    let set = set.unwrap();
                    for rec in t.records(set.body) {
                        n += decode_flow(&rec.unwrap(), 1).packets;
                    }
                }
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
