//! UDP receive offload: datagrams the kernel hands over in one read (on loopback, a
//! sender's GSO batch) are cut back into the same datagrams, so the totals equal those of
//! reading every datagram on its own.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const GEN: &str = env!("CARGO_BIN_EXE_labelflow-ipfix-gen");
/// 200 full datagrams of 22 records and a short last one: the reader must cut the short
/// tail of a batch too.
const RECORDS: u64 = 22 * 200 + 7;

/// What the generator puts in record `k`: 100 + k mod 1400 octets, 1 + k mod 10 packets.
fn expected() -> (u64, u64, u64) {
    let bytes = (0..RECORDS).map(|k| 100 + k % 1400).sum();
    let packets = (0..RECORDS).map(|k| 1 + k % 10).sum();
    (bytes, packets, RECORDS)
}

/// Replay `stream` at a collector with `udp_gro` on or off; its all-time label totals, its
/// offloaded reads, and whether the sender could use segmentation offload.
fn run(dir: &Path, stream: &Path, gro: bool) -> ((u64, u64, u64), u64, bool) {
    let db = dir.join(format!("gro-{gro}.db"));
    let c = Collector::start(dir, &db, &format!("udp_gro = {gro}\n"));
    let out = Command::new(GEN)
        .args(["replay", "--file"])
        .arg(stream)
        .args(["--to", &format!("127.0.0.1:{}", c.udp)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gso = String::from_utf8_lossy(&out.stdout).contains("gso=on");
    c.wait_metric("labelflow_collector_flow_records_total", RECORDS);
    let datagrams = c.metric("labelflow_collector_datagrams_total");
    // The template message and the data messages, each counted once.
    assert_eq!(datagrams, 1 + RECORDS.div_ceil(22), "udp_gro = {gro}");
    c.wait_committed(datagrams);
    let reads = c.metric("labelflow_collector_udp_gro_reads_total");
    let metrics = c.try_get("/metrics").unwrap();
    let errors: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("labelflow_collector_decode_errors_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(errors, 0, "decode errors (udp_gro = {gro})");
    c.term();
    (all_time_totals(&db, "label"), reads, gso)
}

#[test]
fn offloaded_reads_give_the_same_totals() {
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("stream.bin");
    let st = Command::new(GEN)
        .args(["generate", "--records", &RECORDS.to_string(), "--out"])
        .arg(&stream)
        .status()
        .unwrap();
    assert!(st.success());

    let (plain, plain_reads, _) = run(dir.path(), &stream, false);
    assert_eq!(plain, expected());
    assert_eq!(
        plain_reads, 0,
        "udp_gro = false must read datagram by datagram"
    );

    let (offloaded, reads, gso) = run(dir.path(), &stream, true);
    assert_eq!(offloaded, expected());
    if gso {
        // The kernel delivers a GSO batch to a UDP_GRO socket unsplit (Linux 5.0+).
        assert!(reads > 0, "no read carried several datagrams");
    } else {
        eprintln!("sender without UDP GSO here: offloaded reads not exercised");
    }
}
