//! Any exporter: softflowd (NetFlow v5, v9, IPFIX) replaying a capture into the collector and
//! into nfcapd; the collector's totals must equal what nfdump reports for the same export.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn softflowd(pcap: &Path, port: u16, version: &str) {
    let out = Command::new(require("softflowd"))
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

fn stop_nfcapd(mut child: Child) {
    // nfcapd may miss a signal that arrives while it starts up: repeat until it exits.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        for _ in 0..10 {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(Instant::now() < deadline, "nfcapd did not stop");
    }
}

/// (bytes, packets, flows) as `nfdump -N -I` reports them.
fn nfdump_totals(dir: &Path) -> (u64, u64, u64) {
    let out = Command::new(require("nfdump"))
        .arg("-R")
        .arg(dir)
        .args(["-N", "-I"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nfdump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().parse::<u64>().unwrap()))
            .unwrap_or_else(|| panic!("no {k} in nfdump output:\n{text}"))
    };
    (get("Bytes:"), get("Packets:"), get("Flows:"))
}

fn one_version(version: &str) {
    require("softflowd");
    require("nfcapd");
    require("nfdump");
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("capture.pcap");
    // Recent timestamps keep the buckets inside every retention window.
    write_pcap(&pcap, 600, now_secs() - 1200);

    // nfcapd receives softflowd's export.
    let nfdir = dir.path().join("nf");
    std::fs::create_dir(&nfdir).unwrap();
    let nfport = free_udp_port();
    let nfcapd = Command::new(require("nfcapd"))
        .arg("-w")
        .arg(&nfdir)
        .args(["-b", "127.0.0.1", "-p", &nfport.to_string(), "-t", "3600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500)); // nfcapd binds asynchronously
    softflowd(&pcap, nfport, version);
    std::thread::sleep(Duration::from_millis(300));
    stop_nfcapd(nfcapd);
    let expected = nfdump_totals(&nfdir);
    assert!(expected.2 > 0, "nfdump saw no flows");

    // The collector receives the same replay.
    let db = dir.path().join("c.db");
    let c = Collector::start(dir.path(), &db, free_udp_port(), "");
    softflowd(&pcap, c.udp, version);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.metric("labelflow_collector_flow_records_total") < expected.2 {
        assert!(
            Instant::now() < deadline,
            "collector decoded fewer records than nfdump saw"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
