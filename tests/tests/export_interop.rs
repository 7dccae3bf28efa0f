//! Interop of the exporter with decoders nobody here wrote: nfcapd/nfdump (Debian nfdump
//! 1.7.x), pmacct's nfacctd and tshark. Real UDP on 127.0.0.1. A missing program fails the
//! test, naming it; scripts/deps.sh installs them all.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use labelflow_probe::export::{
    AppIdEncoding, ExportConfig, ExportMeta, ExportState, Format, GroupMeta, InterfaceMeta,
};
use labelflow_proto::FlowRecord;
use labelflow_testkit::net::{self, PortTaken};
use labelflow_testkit::nfcapd::Nfcapd;
use labelflow_testkit::pcap::write_udp_capture;
use labelflow_testkit::tools::require_program;
use labelflow_testkit::wait::{poll_until, wait_for};

const T0: u64 = 1_700_000_000_000;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("labelflow-interop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn meta() -> ExportMeta {
    ExportMeta {
        groups: vec![
            GroupMeta {
                group: 1,
                label: "esp".into(),
                description: "ESP on wan".into(),
                packets_total: 40,
                ignored_packets: 2,
            },
            GroupMeta {
                group: 2,
                label: "vpn".into(),
                description: "decrypted".into(),
                packets_total: 20,
                ignored_packets: 0,
            },
        ],
        interfaces: vec![InterfaceMeta {
            ifindex: 2,
            name: "wan0".into(),
            description: "uplink".into(),
        }],
    }
}

/// Four IPv4 flows (groups 1 and 2) and, unless `v4_only`, one IPv6 flow of group 2.
fn flows(v4_only: bool) -> Vec<FlowRecord> {
    let mut v: Vec<FlowRecord> = (0..4u32)
        .map(|i| FlowRecord {
            observation_domain: 5,
            group: Some(1 + i % 2),
            label: Some(if i % 2 == 0 { "esp" } else { "vpn" }.into()),
            src_addr: format!("192.0.2.{}", 10 + i).parse().unwrap(),
            dst_addr: "198.51.100.1".parse().unwrap(),
            protocol: if i % 2 == 0 { 50 } else { 17 },
            ipsec_spi: (i % 2 == 0).then_some(0x1000 + i),
            src_port: if i % 2 == 0 { 0 } else { 5000 + i as u16 },
            dst_port: if i % 2 == 0 { 0 } else { 53 },
            ingress_if: 2,
            egress_if: 3,
            packets: 10 + u64::from(i),
            bytes: 1000 * (1 + u64::from(i)),
            start_ms: T0 - 5000,
            end_ms: T0 - 1000,
            end_reason: Some(labelflow_proto::EndReason::IdleTimeout),
            mark: Some(7),
            // labelflow's tunnelName (enterprise element) on the first two.
            tunnel: (i < 2).then(|| "hq".to_string()),
            ..FlowRecord::default()
        })
        .collect();
    // UDP-encapsulated ESP (RFC 3948): UDP ports and an SPI in one record.
    v[3].src_port = 4500;
    v[3].dst_port = 4500;
    v[3].ipsec_spi = Some(0xc000_0003);
    if !v4_only {
        v.push(FlowRecord {
            observation_domain: 5,
            group: Some(2),
            label: Some("vpn".into()),
            src_addr: "2001:db8::1".parse().unwrap(),
            dst_addr: "2001:db8::2".parse().unwrap(),
            protocol: 6,
            src_port: 40000,
            dst_port: 443,
            tcp_flags: 0x1b,
            packets: 7,
            bytes: 7000,
            start_ms: T0 - 3000,
            end_ms: T0 - 2000,
            user_name: Some("alice".into()),
            nflog_prefix: Some("vpn-in".into()),
            ..FlowRecord::default()
        });
    }
    v
}

/// Encodes `recs` in `format` and returns the datagrams.
fn export(format: Format, recs: &[FlowRecord]) -> Vec<Vec<u8>> {
    export_with(format, AppIdEncoding::default(), recs)
}

/// [`export`] with `applicationId` encoded as `app_id`.
fn export_with(format: Format, app_id: AppIdEncoding, recs: &[FlowRecord]) -> Vec<Vec<u8>> {
    let mut st = ExportState::new(
        format,
        ExportConfig {
            domain: 5,
            app_id,
            ..ExportConfig::default()
        },
    );
    st.set_meta(meta());
    let mut out = Vec::new();
    for r in recs {
        st.push(r, T0, |b| out.push(b.to_vec()));
    }
    st.flush(|b| out.push(b.to_vec()));
    out
}

/// Sends datagrams to nfcapd and returns `nfdump` lines for `fmt`, whitespace-normalised.
fn through_nfcapd(name: &str, datagrams: &[Vec<u8>], fmt: &str) -> Vec<String> {
    let dir = scratch(name);
    let nf = Nfcapd::start(&dir, None, &[]);
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    for d in datagrams {
        tx.send_to(d, ("127.0.0.1", nf.port())).unwrap();
    }
    nf.wait_drained();
    let text = nf.stop().nfdump(&["-N", "-q", "-o", fmt]);
    let _ = std::fs::remove_dir_all(&dir);
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

fn nfdump_case(name: &str, format: Format, v4_only: bool, fmt: &str, expect: &[&str]) {
    let dgrams = export(format, &flows(v4_only));
    let mut lines = through_nfcapd(name, &dgrams, fmt);
    lines.sort();
    println!("{name}: {lines:#?}");
    let mut expect: Vec<String> = expect.iter().map(|s| s.to_string()).collect();
    expect.sort();
    assert_eq!(lines, expect);
}

fn nfdump_version() -> String {
    let out = Command::new(require_program("nfdump"))
        .arg("-V")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `%opid` is the group (nfdump prints it in hex), counters are exact, and `%nbnam` is the
/// label on every flow, as nfdump prints a name with its description: `LABEL/DESCRIPTION`.
/// The target uses `application_id = "varlen"`, which nfdump reads from 1.7.1 (Debian 12) on.
#[test]
fn ipfix_into_nfcapd_shows_group_label_and_counters() {
    let recs = flows(false);
    let dgrams = export_with(Format::Ipfix, AppIdEncoding::Varlen, &recs);
    // The name last: a description may hold spaces.
    let lines = through_nfcapd("ipfix", &dgrams, "fmt:%opid %sa %da %pkt %byt %nbnam");
    let version = nfdump_version();
    println!("ipfix ({version}): {lines:#?}");
    assert_eq!(lines.len(), recs.len());
    let groups = meta().groups;
    for r in &recs {
        let (sa, da) = (r.src_addr.to_string(), r.dst_addr.to_string());
        let line = lines
            .iter()
            .find(|l| l.contains(&format!(" {sa} {da} ")))
            .unwrap_or_else(|| panic!("no line for {sa}"));
        let f: Vec<&str> = line.splitn(6, ' ').collect();
        assert_eq!(
            u32::from_str_radix(f[0].trim_start_matches("0x"), 16).unwrap(),
            r.group.unwrap(),
            "{line}"
        );
        assert_eq!(
            f[3..5],
            [r.packets.to_string(), r.bytes.to_string()],
            "{line}"
        );
        let g = groups.iter().find(|g| Some(g.group) == r.group).unwrap();
        assert_eq!(
            f[5],
            format!("{}/{}", g.label, g.description),
            "%nbnam of {line:?} with {version}"
        );
    }
}

#[test]
fn netflow9_into_nfcapd() {
    nfdump_case(
        "v9",
        Format::NetflowV9,
        false,
        "fmt:%sa %da %pkt %byt",
        &[
            "192.0.2.10 198.51.100.1 10 1000",
            "192.0.2.11 198.51.100.1 11 2000",
            "192.0.2.12 198.51.100.1 12 3000",
            "192.0.2.13 198.51.100.1 13 4000",
            "2001:db8::1 2001:db8::2 7 7000",
        ],
    );
}

#[test]
fn netflow5_into_nfcapd_group_in_engine_id() {
    nfdump_case(
        "v5",
        Format::NetflowV5,
        true,
        "fmt:%eng %sa %da %pkt %byt",
        &[
            "5/1 192.0.2.10 198.51.100.1 10 1000",
            "5/2 192.0.2.11 198.51.100.1 11 2000",
            "5/1 192.0.2.12 198.51.100.1 12 3000",
            "5/2 192.0.2.13 198.51.100.1 13 4000",
        ],
    );
}

fn tshark_case(name: &str, format: Format, v4_only: bool, must_contain: &[&str]) {
    tshark_case_with(
        name,
        format,
        AppIdEncoding::default(),
        v4_only,
        must_contain,
    )
}

fn tshark_case_with(
    name: &str,
    format: Format,
    app_id: AppIdEncoding,
    v4_only: bool,
    must_contain: &[&str],
) {
    let tshark = require_program("tshark");
    let dir = scratch(name);
    let pcap = dir.join("export.pcap");
    let port = 4739;
    let dgrams = export_with(format, app_id, &flows(v4_only));
    write_udp_capture(&pcap, port, &dgrams);
    let out = Command::new(&tshark)
        .args([
            "-r",
            pcap.to_str().unwrap(),
            "-d",
            &format!("udp.port=={port},cflow"),
            "-V",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for bad in ["Malformed", "[Expert Info (Error", "[Expert Info (Warning"] {
        assert!(
            !text.contains(bad),
            "{name}: tshark reports {bad:?}:\n{text}"
        );
    }
    for s in must_contain {
        assert!(
            text.contains(s),
            "{name}: tshark output lacks {s:?}:\n{text}"
        );
    }
    let ex = Command::new(&tshark)
        .args([
            "-r",
            pcap.to_str().unwrap(),
            "-d",
            &format!("udp.port=={port},cflow"),
            "-q",
            "-z",
            "expert",
        ])
        .output()
        .unwrap();
    let ex_text = String::from_utf8_lossy(&ex.stdout);
    assert!(
        !ex_text.contains("Error") && !ex_text.contains("Warning"),
        "{name}: expert info:\n{ex_text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ipfix_decodes_cleanly_in_tshark() {
    tshark_case(
        "tshark-ipfix",
        Format::Ipfix,
        false,
        &[
            "esp",
            "vpn",
            "alice",
            "ESP on wan",
            "wan0",
            "21373",
            // The tunnel name under labelflow's enterprise number, and a NAT-T SPI.
            "32473",
            "IPSec SPI: 3221225475",
        ],
    );
}

#[test]
fn ipfix_with_varlen_application_id_decodes_cleanly_in_tshark() {
    tshark_case_with(
        "tshark-ipfix-varlen",
        Format::Ipfix,
        AppIdEncoding::Varlen,
        false,
        &[
            "esp",
            "vpn",
            "ESP on wan",
            "Classification Engine ID: USER-Defined (6)",
            // The data records' variable-length applicationId: 5 octets.
            "String_len_short: 5",
        ],
    );
}

#[test]
fn netflow9_decodes_cleanly_in_tshark() {
    tshark_case(
        "tshark-v9",
        Format::NetflowV9,
        false,
        &["esp", "vpn", "wan0"],
    );
}

#[test]
fn netflow5_decodes_cleanly_in_tshark() {
    tshark_case(
        "tshark-v5",
        Format::NetflowV5,
        true,
        &["192.0.2.10", "192.0.2.13"],
    );
}

/// A running nfacctd (pmacct) with the print plugin writing `class, src_host, dst_host`
/// rows to a CSV file.
struct Nfacctd {
    child: std::process::Child,
    port: u16,
    csv: PathBuf,
    log: PathBuf,
}

impl Nfacctd {
    fn start(dir: &std::path::Path) -> Nfacctd {
        let bin = require_program("nfacctd");
        net::with_fresh_port("nfacctd", |port| {
            let conf = dir.join(format!("nfacctd-{port}.conf"));
            let csv = dir.join(format!("nfacctd-{port}.csv"));
            let log = dir.join(format!("nfacctd-{port}.log"));
            std::fs::write(
                &conf,
                format!(
                    "daemonize: false\nnfacctd_ip: 127.0.0.1\nnfacctd_port: {port}\n\
                     plugins: print\naggregate: class, src_host, dst_host\n\
                     print_output: csv\nprint_output_file: {}\nprint_refresh_time: 1\n",
                    csv.display()
                ),
            )
            .unwrap();
            let mut child = Command::new(&bin)
                .arg("-f")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let pid = child.id();
            let mut exited = false;
            // Ready when the core owns its socket and waits on it, and its plugin processes
            // (the core's children) wait for data: datagrams that arrive earlier are lost.
            let ready = || {
                let plugins = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                    .unwrap_or_default();
                let plugins: Vec<u32> = plugins
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect();
                net::udp_socket_of(pid, port).is_some()
                    && net::waiting_for_input(pid)
                    && !plugins.is_empty()
                    && plugins.iter().all(|p| net::waiting_for_input(*p))
            };
            let bound = poll_until(Duration::from_secs(15), || {
                exited = matches!(child.try_wait(), Ok(Some(_)));
                exited || ready()
            });
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            if exited && net::says_addr_in_use(&said) {
                return Err(PortTaken(said));
            }
            assert!(
                bound && !exited,
                "nfacctd did not bind port {port}:\n{said}"
            );
            Ok(Nfacctd {
                child,
                port,
                csv,
                log,
            })
        })
    }

    /// Waits until nfacctd has read and processed every datagram sent to it (its core waits
    /// in recvfrom with the queue empty), stops it, and returns the CSV rows (header left
    /// out) once there are `rows` (or what there is after a bounded wait). The print plugin writes its cache when nfacctd stops; it stops on SIGINT
    /// (SIGTERM stays blocked in its main loop, `src/nfacctd.c`).
    fn finish(mut self, rows: usize) -> Vec<String> {
        let pid = self.child.id();
        let mut last = None;
        wait_for(
            "nfacctd to read its socket",
            Duration::from_secs(15),
            || {
                last = net::udp_socket_of(pid, self.port);
                last.is_some_and(|s| s.rx_queue == 0) && net::waiting_for_input(pid)
            },
        );
        assert_eq!(
            last.map(|s| s.drops),
            Some(0),
            "datagrams dropped: {last:?}"
        );
        // The pid of a child not yet reaped cannot be reused.
        labelflow_testkit::tools::signal(pid, rustix::process::Signal::INT);
        wait_for("nfacctd to exit", Duration::from_secs(15), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        // The print plugin purges its cache as it exits, from a process of its own.
        let read = || -> Vec<String> {
            std::fs::read_to_string(&self.csv)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .map(str::to_owned)
                .collect()
        };
        poll_until(Duration::from_secs(15), || read().len() >= rows);
        read()
    }
}

impl Drop for Nfacctd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// pmacct's `class` primitive shows the label of every flow: nfacctd 1.7.7 names classes
/// from the application-name options record when the data records' `applicationId` is 2, 3
/// or 5 octets long (`application_id = "rfc6759"`, the default).
#[test]
fn ipfix_into_nfacctd_shows_label_as_class() {
    let dir = scratch("nfacctd");
    let recs = flows(false);
    let nf = Nfacctd::start(&dir);
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    for d in export(Format::Ipfix, &recs) {
        tx.send_to(&d, ("127.0.0.1", nf.port)).unwrap();
    }
    let log = nf.log.clone();
    let mut rows = nf.finish(recs.len());
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    rows.sort();
    let mut expect: Vec<String> = recs
        .iter()
        .map(|r| {
            format!(
                "{},{},{},{},{}",
                r.label.as_deref().unwrap(),
                r.src_addr,
                r.dst_addr,
                r.packets,
                r.bytes
            )
        })
        .collect();
    expect.sort();
    assert_eq!(rows, expect, "nfacctd said:\n{said}");
    let _ = std::fs::remove_dir_all(&dir);
}
