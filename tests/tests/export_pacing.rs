//! A flush of a million flows reaches nfcapd (Debian nfdump 1.7.1, default socket buffer)
//! without losing one record: the probe paces each export target (`[[export]] max_rate`,
//! default 50k records/s) instead of handing the collector the whole cache at once.
//!
//! The probe replays a capture of 1M single-packet flows with 1-hour timeouts, so every flow
//! is still in the cache at the end of the file and leaves in the final flush, the path a
//! shutdown takes. nfcapd is started by the test kit (a fresh port, retried when taken, ready
//! once it owns its socket); its files are read with `nfdump -R` (every file, whatever the
//! rotation did) and the flows, packets and bytes must equal what the capture holds.
//!
//! nfcapd runs with a real-time priority (`chrt -f -p 10` once started): on a 2-core CI machine building and
//! testing in parallel, a receiver at normal priority can wait longer for a CPU than its
//! 208 KiB buffer covers at any useful rate (measured here under a load of 6: 0.1-0.6 % lost
//! at 50k records/s, and 24-32 % unpaced). The priority takes the machine's contention out,
//! not the sender's bursts: what remains is whether the probe overruns a receiver that reads
//! whenever it has data, on its default buffer.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use labelflow_testkit::nfcapd::Nfcapd;
use labelflow_testkit::tools::on_path;
use labelflow_tests::process::find_binary;

const FLOWS: u32 = 1_000_000;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("labelflow-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Writes a microsecond Ethernet pcap of `FLOWS` one-packet UDP flows (distinct source
/// addresses), each record cut after the UDP header; returns the (packets, bytes) it holds,
/// bytes counted from the IP total length as the probe does.
fn write_capture(path: &Path) -> (u64, u64) {
    let mut f = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).expect("capture"));
    // magic, version 2.4, thiszone, sigfigs, snaplen, LINKTYPE_ETHERNET
    let mut header = 0xa1b2_c3d4u32.to_le_bytes().to_vec();
    header.extend(2u16.to_le_bytes());
    header.extend(4u16.to_le_bytes());
    for v in [0u32, 0, 65_535, 1] {
        header.extend(v.to_le_bytes());
    }
    f.write_all(&header).unwrap();
    let mut bytes = 0u64;
    for i in 0..FLOWS {
        let ip_len = 28 + (i % 200) as u16;
        bytes += u64::from(ip_len);
        let src = 0x0a00_0000 | i; // 10.0.0.0/8
        let sport = 1024 + (i % 50_000) as u16;
        #[rustfmt::skip]
        let frame: [u8; 42] = [
            2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00,                 // Ethernet, IPv4
            0x45, 0, (ip_len >> 8) as u8, ip_len as u8, 0, 0, 0x40, 0,     // no fragments
            64, 17, 0, 0,                                                    // TTL, UDP
            (src >> 24) as u8, (src >> 16) as u8, (src >> 8) as u8, src as u8,
            192, 0, 2, 1,
            (sport >> 8) as u8, sport as u8, 0, 53,                          // ports
            ((ip_len - 20) >> 8) as u8, (ip_len - 20) as u8, 0, 0,           // length, checksum
        ];
        // 10 s of capture: 10 us apart.
        let t_us = u64::from(i) * 10;
        let sec = 1_700_000_000 + (t_us / 1_000_000) as u32;
        let usec = (t_us % 1_000_000) as u32;
        for v in [sec, usec, frame.len() as u32, u32::from(ip_len) + 14] {
            f.write_all(&v.to_le_bytes()).unwrap();
        }
        f.write_all(&frame).unwrap();
    }
    f.flush().unwrap();
    (u64::from(FLOWS), bytes)
}

#[test]
fn a_million_flow_flush_reaches_nfcapd_without_loss() {
    for tool in ["nfcapd", "nfdump"] {
        assert!(
            on_path(tool),
            "{tool} not installed (apt-get install nfdump): scripts/deps.sh installs it"
        );
    }
    let probe = find_binary("labelflow-probe")
        .expect("labelflow-probe binary (cargo build --workspace --bins)");
    let dir = scratch("pacing");
    let capture = dir.join("million.pcap");
    let (packets, bytes) = write_capture(&capture);
    let out = dir.join("nfcapd");
    std::fs::create_dir_all(&out).unwrap();
    let nfcapd = Nfcapd::start(&out, None, &[]);
    let port = nfcapd.port();
    let chrt = Command::new("chrt")
        .args(["-f", "-p", "10", &nfcapd.pid().to_string()])
        .status()
        .expect("chrt (util-linux) runs");
    assert!(chrt.success(), "chrt -f -p 10 (needs root) failed: {chrt}");

    let started = Instant::now();
    let run = Command::new(&probe)
        .arg("--replay")
        .arg(&capture)
        .args([
            "--label",
            "bulk",
            "--export",
            &format!("ipfix://127.0.0.1:{port}"),
        ])
        .args(["--active-timeout", "1h", "--inactive-timeout", "1h"])
        .args(["--max-flows", "2000000"])
        .output()
        .expect("labelflow-probe runs");
    let took = started.elapsed();
    assert!(
        run.status.success(),
        "labelflow-probe failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let log = String::from_utf8_lossy(&run.stderr).into_owned();
    // The default rate (50k records/s) spreads the flush over about 20 s.
    assert!(
        took >= Duration::from_secs(19),
        "the flush was not paced ({took:?}): {log}"
    );
    assert!(log.contains("export paced"), "{log}");
    let stopped = nfcapd.stop();
    let text = stopped.nfdump(&["-N", "-q", "-o", "fmt:%pkt %byt"]);
    let (mut flows, mut got_packets, mut got_bytes) = (0u64, 0u64, 0u64);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut cols = line.split_whitespace().map(|c| c.parse::<u64>());
        match (cols.next(), cols.next()) {
            (Some(Ok(p)), Some(Ok(b))) => {
                flows += 1;
                got_packets += p;
                got_bytes += b;
            }
            _ => panic!("unexpected nfdump line {line:?}"),
        }
    }
    assert_eq!(
        (flows, got_packets, got_bytes),
        (u64::from(FLOWS), packets, bytes),
        "nfcapd lost records of the flush; nfcapd said: {}\nprobe said: {log}",
        stopped.log
    );
    let _ = std::fs::remove_dir_all(&dir);
}
