//! A backlog stream: records whose flow times spread over the last 24 hours (a replayed day
//! of captures, an exporter flushing after an outage), sent as fast as the socket takes
//! them. Every record lands: per-label and per-port totals are exact, and memory stays
//! bounded although the stream touches every base bucket of the day.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

const DATAGRAMS: u64 = 6_000;
const RECORDS_PER_DATAGRAM: u64 = 20;
const RSS_LIMIT_KB: u64 = 256 * 1024;
const LABELS: [&str; 4] = ["esp", "voip", "backup", "other"];

#[test]
fn backlog_over_a_day_is_exact_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("b.db");
    let c = Collector::start(dir.path(), &db, "");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let now_ms = u64::from(now_secs()) * 1000;
    let day = 86_400_000;
    let mut r = Rng::new(0xbac_1095);
    let mut by_label: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_port: BTreeMap<String, u64> = BTreeMap::new();
    let mut datagrams = Vec::new();
    c.send(&sock, &ipfix_template(now_secs(), 0, 1));
    for k in 0..DATAGRAMS {
        let flows: Vec<Flow> = (0..RECORDS_PER_DATAGRAM)
            .map(|_| {
                let end_ms = now_ms - 60_000 - r.below(day - 120_000);
                let protocol = if r.below(2) == 0 { 6 } else { 17 };
                let dst_port = 1 + r.below(1000) as u16;
                let label = LABELS[r.below(4) as usize];
                let bytes = 40 + r.below(1 << 20);
                let name = if protocol == 6 { "tcp" } else { "udp" };
                *by_label.entry(label.to_string()).or_default() += bytes;
                *by_port.entry(format!("{name}/{dst_port}")).or_default() += bytes;
                Flow {
                    src: Ipv4Addr::from(0x0a00_0000 | r.below(1 << 16) as u32),
                    dst: Ipv4Addr::from(0xc633_6400 | r.below(256) as u32),
                    protocol,
                    src_port: 1024 + r.below(60_000) as u16,
                    dst_port,
                    spi: 0,
                    bytes,
                    packets: 1 + bytes / 1000,
                    start_ms: end_ms - r.below(300_000),
                    end_ms,
                    group: 1,
                    label: label.to_string(),
                }
            })
            .collect();
        let seq = (k * RECORDS_PER_DATAGRAM) as u32;
        datagrams.push(ipfix_data(now_secs(), seq, 1, &flows));
    }
    // All of it at once: the socket buffer holds what the collector has not read yet.
    for d in &datagrams {
        c.send(&sock, d);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let want = DATAGRAMS + 1;
    loop {
        let got = c.metric("labelflow_collector_committed_datagrams_total");
        if got >= want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {got} of {want} datagrams committed; received {}",
            c.metric("labelflow_collector_datagrams_total")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.metric("labelflow_collector_sequence_lost_total"), 0);
    let peak = peak_rss_kb(c.child.id());
    assert!(
        peak < RSS_LIMIT_KB,
        "peak RSS {peak} kB over {RSS_LIMIT_KB} kB"
    );
    eprintln!("backlog: peak RSS {peak} kB");
    c.term();

    let labels: BTreeMap<String, u64> = all_time_bytes(&db, "label", "label").into_iter().collect();
    assert_eq!(labels, by_label);
    let ports: BTreeMap<String, u64> = all_time_bytes(&db, "port", "port").into_iter().collect();
    assert_eq!(ports, by_port);
}
