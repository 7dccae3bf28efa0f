//! The probe binary as a user runs it: configuration errors and pcap replay over real UDP.

use labelflow_proto::convert::{convert_packet, ExporterContext};
use labelflow_proto::FlowRecord;
use labelflow_testkit::pcap::{PcapWriter, LINKTYPE_RAW};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROBE: &str = env!("CARGO_BIN_EXE_labelflow-probe");

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("labelflow-probe-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn bad_configuration_exits_64_naming_file_and_line() {
    let path = temp_path("bad.toml");
    std::fs::write(
        &path,
        "[[group]]\nid = 1\nlabel = \"esp\"\n\n[cache]\nactive_timeout = \"a minute\"\n",
    )
    .unwrap();
    let out = Command::new(PROBE)
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:6:18", path.display())) && stderr.contains("invalid duration"),
        "{stderr}"
    );

    let out = Command::new(PROBE)
        .args([
            "--group",
            "1=esp",
            "--export",
            "sflow://127.0.0.1:6343",
            "--check-config",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--export"));
}

#[test]
fn good_configuration_passes_check() {
    let path = temp_path("good.toml");
    std::fs::write(
        &path,
        "[[group]]\nid = 1\nlabel = \"esp\"\n[[export]]\ntarget = \"ipfix://127.0.0.1:4739\"\n",
    )
    .unwrap();
    let out = Command::new(PROBE)
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
}

/// An IPv4 packet of `total_len` bytes (header + L4 header, the rest implied by the length
/// field: the probe counts IP lengths, not captured bytes).
fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8], total_len: u16) -> Vec<u8> {
    let mut p = vec![
        0x45, 0, // version 4, IHL 5; ToS
        0, 0, // total length (below)
        0, 1, 0, 0, // id, flags/fragment offset
        64, proto, 0, 0, // TTL, protocol, checksum (not checked)
    ];
    p[2..4].copy_from_slice(&total_len.to_be_bytes());
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(l4);
    p
}

fn ipv6_udp(sport: u16, dport: u16, payload_len: u16) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&payload_len.to_be_bytes());
    p.extend_from_slice(&[17, 64]); // next header UDP, hop limit
    p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&payload_len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p
}

/// Writes a raw-IP pcap of `packets` at 10 ms intervals.
fn write_pcap(path: &Path, packets: &[Vec<u8>]) {
    let mut w = PcapWriter::new(LINKTYPE_RAW);
    for (i, p) in packets.iter().enumerate() {
        w.packet(1_700_000_000_000_000 + i as u64 * 10_000, p);
    }
    w.write(path);
}

fn replay(pcap: &Path, label: &str) -> Vec<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let out = Command::new(PROBE)
        .arg("--replay")
        .arg(pcap)
        .args([
            "--label",
            label,
            "--export",
            &format!("ipfix://127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The probe has exited: on loopback, everything it sent is queued on the socket.
    sock.set_nonblocking(true).unwrap();
    let mut datagrams = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => datagrams.push(buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("recv: {e}"),
        }
    }
    let info = labelflow_testkit::net::udp_socket_of(std::process::id(), port);
    assert_eq!(
        info.map(|i| i.drops),
        Some(0),
        "datagrams dropped: {info:?}"
    );
    datagrams
}

fn decode(datagrams: &[Vec<u8>]) -> Vec<FlowRecord> {
    let mut parser = netflow_parser::NetflowParser::default();
    let mut ctx = ExporterContext::default();
    let mut out = Vec::new();
    for d in datagrams {
        let parsed = parser.parse_bytes(d);
        assert!(parsed.error.is_none(), "{:?}", parsed.error);
        for p in &parsed.packets {
            convert_packet(p, &mut ctx, &mut out);
        }
    }
    out
}

#[test]
fn replay_is_deterministic_and_conserves_packets_and_bytes() {
    let mut packets = Vec::new();
    let mut bytes = 0u64;
    for i in 0..200u16 {
        let (p, len) = match i % 5 {
            0 => {
                // TCP, 4 connections
                let mut tcp = vec![0u8; 20];
                tcp[0..2].copy_from_slice(&(40000 + i % 4).to_be_bytes());
                tcp[2..4].copy_from_slice(&443u16.to_be_bytes());
                tcp[12] = 0x50;
                tcp[13] = 0x10; // ACK
                (ipv4([10, 0, 0, 1], [10, 0, 0, 2], 6, &tcp, 1500), 1500)
            }
            1 => {
                let udp = [0x30, 0x39, 0, 53, 0, 8, 0, 0];
                (ipv4([10, 0, 0, 3], [10, 0, 0, 53], 17, &udp, 80), 80)
            }
            2 => {
                let icmp = [8, 0, 0, 0, 0, 1, 0, 1];
                (ipv4([10, 0, 0, 1], [10, 0, 0, 9], 1, &icmp, 84), 84)
            }
            3 => {
                let esp = [0, 0, 0x10, (i % 3) as u8, 0, 0, 0, 1];
                (ipv4([192, 0, 2, 1], [198, 51, 100, 1], 50, &esp, 120), 120)
            }
            _ => (ipv6_udp(5353, 5353, 100), 140),
        };
        packets.push(p);
        bytes += len;
    }
    let pcap = temp_path("mixed.pcap");
    write_pcap(&pcap, &packets);

    let first = replay(&pcap, "lan");
    let second = replay(&pcap, "lan");
    assert!(!first.is_empty());
    assert_eq!(first, second, "the same capture must give the same export");

    let records = decode(&first);
    assert_eq!(records.iter().map(|r| r.packets).sum::<u64>(), 200);
    assert_eq!(records.iter().map(|r| r.bytes).sum::<u64>(), bytes);
    assert!(records.iter().all(|r| r.label.as_deref() == Some("lan")));
    // 4 TCP + 1 UDP + 1 ICMP + 3 ESP SPIs + 1 IPv6 UDP.
    assert_eq!(records.len(), 10, "{records:#?}");
    let spis: std::collections::BTreeSet<_> = records
        .iter()
        .filter(|r| r.protocol == 50)
        .filter_map(|r| r.ipsec_spi)
        .collect();
    assert_eq!(spis.len(), 3);
}
