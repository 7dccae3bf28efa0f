//! Any exporter: softflowd (NetFlow v5, v9, IPFIX) replaying a capture into the collector and
//! into nfcapd; the collector's totals must equal what nfdump reports for the same export.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use labelflow_testkit::nfcapd::{Nfcapd, Stopped};

fn softflowd(pcap: &Path, port: u16, version: &str) {
    let out = Command::new(require_program("softflowd"))
        .args(["-r"])
        .arg(pcap)
        .args(["-n", &format!("127.0.0.1:{port}"), "-v", version])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "softflowd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (bytes, packets, flows) as `nfdump -N -I` reports them over every file nfcapd wrote.
fn nfdump_totals(nfcapd: &Stopped) -> (u64, u64, u64) {
    let text = nfcapd.nfdump(&["-N", "-I"]);
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().parse::<u64>().unwrap()))
            .unwrap_or_else(|| panic!("no {k} in nfdump output:\n{text}"))
    };
    (get("Bytes:"), get("Packets:"), get("Flows:"))
}

fn one_version(version: &str) {
    require_program("softflowd");
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("capture.pcap");
    // Recent timestamps keep the buckets inside every retention window.
    write_pcap(&pcap, 600, now_secs() - 1200);

    // nfcapd receives softflowd's export.
    let nfcapd = Nfcapd::start(&dir.path().join("nf"), None, &[]);
    softflowd(&pcap, nfcapd.port(), version);
    nfcapd.wait_drained();
    let expected = nfdump_totals(&nfcapd.stop());
    assert!(expected.2 > 0, "nfdump saw no flows");

    // The collector receives the same replay.
    let db = dir.path().join("c.db");
    let c = Collector::start(dir.path(), &db, "");
    softflowd(&pcap, c.udp, version);
    c.wait_metric("labelflow_collector_flow_records_total", expected.2);
    c.term();
    assert_eq!(
        all_time_totals(&db, "protocol"),
        expected,
        "collector vs nfdump (v{version})"
    );
    assert_eq!(all_time_totals(&db, "label"), expected);
    // Recent buckets hold it all too (nothing lost to time conversion).
    let j = report_json(&db, &["--by", "label", "--last", "2h"]);
    assert_eq!(
        j["total"]["bytes"].as_u64().unwrap(),
        expected.0,
        "v{version} times misplaced"
    );
    assert_eq!(j["keys"][0], "unlabelled");
}

#[test]
fn softflowd_v5_matches_nfdump() {
    one_version("5");
}

#[test]
fn softflowd_v9_matches_nfdump() {
    one_version("9");
}

#[test]
fn softflowd_ipfix_matches_nfdump() {
    one_version("10");
}
