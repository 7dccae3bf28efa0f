//! Shared helpers: hand-built IPFIX messages, a pcap writer, a collector process.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_labelflow-collector");

use labelflow_testkit::net::{self, PortTaken};
use labelflow_testkit::pcap::{PcapWriter, LINKTYPE_ETHERNET};
#[allow(unused_imports)]
pub use labelflow_testkit::tools::require_program;
use labelflow_testkit::wait::{poll_until, wait_for};

pub fn now_secs() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32
}

/// One labelled IPv4 flow for [`ipfix_data`].
#[derive(Debug, Clone)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub spi: u32,
    pub bytes: u64,
    pub packets: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub group: u32,
    pub label: String,
}

pub const TEMPLATE_ID: u16 = 300;

fn header(out: &mut Vec<u8>, export: u32, seq: u32, domain: u32) {
    out.extend_from_slice(&10u16.to_be_bytes()); // version 10
    out.extend_from_slice(&0u16.to_be_bytes()); // length, patched
    out.extend_from_slice(&export.to_be_bytes()); // export time
    out.extend_from_slice(&seq.to_be_bytes()); // sequence number
    out.extend_from_slice(&domain.to_be_bytes()); // observation domain
}

fn patch_len(out: &mut [u8]) {
    let n = out.len() as u16;
    out[2..4].copy_from_slice(&n.to_be_bytes());
}

/// Template set: labelflow-like record layout (template id [`TEMPLATE_ID`]).
pub fn ipfix_template(export: u32, seq: u32, domain: u32) -> Vec<u8> {
    let fields: &[(u16, u16)] = &[
        (8, 4),       // sourceIPv4Address
        (12, 4),      // destinationIPv4Address
        (4, 1),       // protocolIdentifier
        (7, 2),       // sourceTransportPort
        (11, 2),      // destinationTransportPort
        (295, 4),     // IPSecSPI
        (1, 8),       // octetDeltaCount
        (2, 8),       // packetDeltaCount
        (152, 8),     // flowStartMilliseconds
        (153, 8),     // flowEndMilliseconds
        (138, 4),     // observationPointId
        (96, 0xffff), // applicationName, variable length
    ];
    let mut m = Vec::new();
    header(&mut m, export, seq, domain);
    let set_len = 4 + 4 + 4 * fields.len();
    m.extend_from_slice(&2u16.to_be_bytes()); // template set
    m.extend_from_slice(&(set_len as u16).to_be_bytes());
    m.extend_from_slice(&TEMPLATE_ID.to_be_bytes());
    m.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    for (ie, len) in fields {
        m.extend_from_slice(&ie.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
    }
    patch_len(&mut m);
    m
}

/// Data set with `flows` for [`ipfix_template`].
pub fn ipfix_data(export: u32, seq: u32, domain: u32, flows: &[Flow]) -> Vec<u8> {
    let mut m = Vec::new();
    header(&mut m, export, seq, domain);
    let set_start = m.len();
    m.extend_from_slice(&TEMPLATE_ID.to_be_bytes());
    m.extend_from_slice(&0u16.to_be_bytes());
    for f in flows {
        m.extend_from_slice(&f.src.octets());
        m.extend_from_slice(&f.dst.octets());
        m.push(f.protocol);
        m.extend_from_slice(&f.src_port.to_be_bytes());
        m.extend_from_slice(&f.dst_port.to_be_bytes());
        m.extend_from_slice(&f.spi.to_be_bytes());
        m.extend_from_slice(&f.bytes.to_be_bytes());
        m.extend_from_slice(&f.packets.to_be_bytes());
        m.extend_from_slice(&f.start_ms.to_be_bytes());
        m.extend_from_slice(&f.end_ms.to_be_bytes());
        m.extend_from_slice(&f.group.to_be_bytes());
        m.push(f.label.len() as u8); // variable-length prefix (< 255)
        m.extend_from_slice(f.label.as_bytes());
    }
    let set_len = (m.len() - set_start) as u16;
    m[set_start + 2..set_start + 4].copy_from_slice(&set_len.to_be_bytes());
    patch_len(&mut m);
    m
}

/// Template of an exporter that names its classes through options (RFC 6759): its data
/// records carry `applicationId` (engine 6, 4-octet selector) and no name.
pub const APP_TEMPLATE_ID: u16 = 310;
/// Options template: scope `applicationId`, value `applicationName`.
pub const APP_OPTIONS_ID: u16 = 311;

fn set(m: &mut Vec<u8>, id: u16, body: &[u8]) {
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&((4 + body.len()) as u16).to_be_bytes());
    m.extend_from_slice(body);
}

fn fields(out: &mut Vec<u8>, fields: &[(u16, u16)]) {
    for (ie, len) in fields {
        out.extend_from_slice(&ie.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// [`APP_TEMPLATE_ID`] and [`APP_OPTIONS_ID`] in one message.
pub fn app_templates(export: u32, seq: u32, domain: u32) -> Vec<u8> {
    let mut m = Vec::new();
    header(&mut m, export, seq, domain);
    let data: &[(u16, u16)] = &[
        (8, 4),
        (12, 4),
        (4, 1),
        (1, 8),
        (2, 8),
        (152, 8),
        (153, 8),
        (95, 5),
    ];
    let mut t = Vec::new();
    t.extend_from_slice(&APP_TEMPLATE_ID.to_be_bytes());
    t.extend_from_slice(&(data.len() as u16).to_be_bytes());
    fields(&mut t, data);
    set(&mut m, 2, &t);
    let mut o = Vec::new();
    o.extend_from_slice(&APP_OPTIONS_ID.to_be_bytes());
    o.extend_from_slice(&2u16.to_be_bytes()); // field count
    o.extend_from_slice(&1u16.to_be_bytes()); // scope field count
    fields(&mut o, &[(95, 5), (96, 0xffff)]);
    set(&mut m, 3, &o);
    patch_len(&mut m);
    m
}

/// An options record naming `applicationId` 6:`selector`.
pub fn app_options(export: u32, seq: u32, domain: u32, selector: u32, name: &str) -> Vec<u8> {
    let mut m = Vec::new();
    header(&mut m, export, seq, domain);
    let mut r = vec![6];
    r.extend_from_slice(&selector.to_be_bytes());
    r.push(name.len() as u8);
    r.extend_from_slice(name.as_bytes());
    set(&mut m, APP_OPTIONS_ID, &r);
    patch_len(&mut m);
    m
}

/// One data record of `applicationId` 6:`selector`, 500 ms long.
pub fn app_data(
    export: u32,
    seq: u32,
    domain: u32,
    selector: u32,
    bytes: u64,
    start_ms: u64,
) -> Vec<u8> {
    let mut m = Vec::new();
    header(&mut m, export, seq, domain);
    let mut r = Vec::new();
    r.extend_from_slice(&[192, 168, 1, 10, 198, 51, 100, 7, 17]);
    r.extend_from_slice(&bytes.to_be_bytes());
    r.extend_from_slice(&1u64.to_be_bytes());
    r.extend_from_slice(&start_ms.to_be_bytes());
    r.extend_from_slice(&(start_ms + 500).to_be_bytes());
    r.push(6);
    r.extend_from_slice(&selector.to_be_bytes());
    set(&mut m, APP_TEMPLATE_ID, &r);
    patch_len(&mut m);
    m
}

pub fn flow(label: &str, bytes: u64, start_ms: u64) -> Flow {
    Flow {
        src: Ipv4Addr::new(192, 168, 1, 10),
        dst: Ipv4Addr::new(198, 51, 100, 7),
        protocol: 17,
        src_port: 5000,
        dst_port: 53,
        spi: 0,
        bytes,
        packets: 1 + bytes / 1000,
        start_ms,
        end_ms: start_ms + 500,
        group: 1,
        label: label.into(),
    }
}

/// A running collector; killed (SIGKILL) on drop if still running.
pub struct Collector {
    pub child: Child,
    pub udp: u16,
    pub http: u16,
    pub db: PathBuf,
}

/// How long the collector may take to bind its sockets.
const START_TIMEOUT: Duration = Duration::from_secs(20);

impl Collector {
    /// Starts the collector with `extra_config` on fresh ports (another pair is tried when it
    /// finds one taken) and returns once it owns its UDP socket and listens for HTTP.
    pub fn start(dir: &Path, db: &Path, extra_config: &str) -> Collector {
        net::with_fresh_port("labelflow-collector", |udp| {
            let http = net::candidate_port();
            let cfg = dir.join(format!("collector-{udp}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    "listen = [\"127.0.0.1:{udp}\"]\nhttp = \"127.0.0.1:{http}\"\ndb = \"{}\"\n{extra_config}",
                    db.display()
                ),
            )
            .unwrap();
            let log_path = dir.join(format!("collector-{udp}-{http}.log"));
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = Command::new(BIN)
                .arg("--config")
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn collector");
            let pid = child.id();
            let mut exited = None;
            let ready = poll_until(START_TIMEOUT, || {
                exited = child.try_wait().ok().flatten();
                exited.is_some()
                    || (net::udp_socket_of(pid, udp).is_some() && net::tcp_listening_of(pid, http))
            });
            let said = std::fs::read_to_string(&log_path).unwrap_or_default();
            match exited {
                Some(_) if net::says_addr_in_use(&said) => return Err(PortTaken(said)),
                Some(st) => panic!("collector exited ({st}) while starting:\n{said}"),
                None if !ready => {
                    let _ = child.kill();
                    panic!("collector did not bind its sockets in {START_TIMEOUT:?}:\n{said}")
                }
                None => {}
            }
            Ok(Collector {
                child,
                udp,
                http,
                db: db.to_path_buf(),
            })
        })
    }

    pub fn try_get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.http)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let (_, body) = out.split_once("\r\n\r\n")?;
        Some(body.to_string())
    }

    pub fn metric(&self, name: &str) -> u64 {
        let body = self.try_get("/metrics").expect("metrics");
        body.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(' '))
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    /// Wait (bounded) until `committed_datagrams` reaches `n`.
    pub fn wait_committed(&self, n: u64) {
        self.wait_metric("labelflow_collector_committed_datagrams_total", n);
    }

    /// Wait (bounded) until metric `name` reaches `n`.
    pub fn wait_metric(&self, name: &str, n: u64) {
        let mut last = 0;
        let reached = poll_until(Duration::from_secs(30), || {
            last = self.metric(name);
            last >= n
        });
        assert!(reached, "{name} is {last}, not {n}, after 30 s");
    }

    pub fn send(&self, sock: &UdpSocket, d: &[u8]) {
        sock.send_to(d, ("127.0.0.1", self.udp)).unwrap();
    }

    /// Whether the process is still running.
    pub fn child_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Send a signal (`kill -NAME`).
    pub fn signal(&self, name: &str) {
        let st = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -{name} failed");
    }

    /// Wait up to `limit` for the process to exit; its status, or `None` if still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn term(mut self) {
        let pid = self.child.id() as i32;
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap();
        let mut status = None;
        wait_for(
            "the collector to stop on SIGTERM",
            Duration::from_secs(30),
            || {
                status = self.child.try_wait().unwrap();
                status.is_some()
            },
        );
        let st = status.expect("exited");
        assert!(st.success(), "collector exited with {st}");
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `report --format json` of the collector binary.
pub fn report_json(db: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("report")
        .arg("--db")
        .arg(db)
        .args(["--format", "json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `report --format json --by BY` over all time, in day buckets.
pub fn all_time_report(db: &Path, by: &str) -> serde_json::Value {
    report_json(
        db,
        &[
            "--by",
            by,
            "--from",
            "0",
            "--to",
            "4102444800",
            "--bucket",
            "1d",
        ],
    )
}

/// (key, bytes) of every row of `totals` in an [`all_time_report`], keyed by `field`.
pub fn all_time_bytes(db: &Path, by: &str, field: &str) -> Vec<(String, u64)> {
    all_time_report(db, by)["totals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t[field].as_str().unwrap().to_string(),
                t["bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Totals (bytes, packets, flows) over all time.
pub fn all_time_totals(db: &Path, by: &str) -> (u64, u64, u64) {
    let j = all_time_report(db, by);
    let t = &j["total"];
    (
        t["bytes"].as_u64().unwrap(),
        t["packets"].as_u64().unwrap(),
        t["flows"].as_u64().unwrap(),
    )
}

/// Write a pcap (Ethernet) of `n` packets: IPv4 TCP/UDP/ICMP and IPv6 UDP, timestamps from
/// `t0` (seconds) 10 ms apart.
pub fn write_pcap(path: &Path, n: usize, t0: u32) {
    let mut w = PcapWriter::new(LINKTYPE_ETHERNET);
    for i in 0..n {
        let ts_us = u64::from(t0) * 1_000_000 + i as u64 * 10_000;
        w.packet(ts_us, &mixed_frame(i));
    }
    w.write(path);
}

/// Frame `i` of [`write_pcap`]'s mix.
fn mixed_frame(i: usize) -> Vec<u8> {
    let payload = 10 + (i * 37) % 900;
    let kind = i % 4;
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]; // dst, src MAC
    let host = (i % 6) as u8 + 1;
    let peer = (i % 5) as u8 + 1;
    if kind == 3 {
        // IPv6 UDP.
        p.extend_from_slice(&[0x86, 0xdd]);
        let plen = 8 + payload;
        p.extend_from_slice(&[0x60, 0, 0, 0]);
        p.extend_from_slice(&(plen as u16).to_be_bytes());
        p.extend_from_slice(&[17, 64]);
        p.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, host,
        ]);
        p.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, peer,
        ]);
        p.extend_from_slice(&(40000 + (i % 3) as u16).to_be_bytes());
        p.extend_from_slice(&53u16.to_be_bytes());
        p.extend_from_slice(&(plen as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
    } else {
        p.extend_from_slice(&[0x08, 0x00]);
        let (proto, l4) = match kind {
            0 => (6u8, 20usize),
            1 => (17, 8),
            _ => (1, 8),
        };
        let header = labelflow_testkit::pcap::ipv4_header(
            [192, 168, 1, host],
            [198, 51, 100, peer],
            proto,
            l4 + payload,
            i as u16,
        );
        p.extend_from_slice(&header);
        match kind {
            0 => {
                p.extend_from_slice(&(40000 + (i % 7) as u16).to_be_bytes());
                p.extend_from_slice(&443u16.to_be_bytes());
                p.extend_from_slice(&(i as u32).to_be_bytes()); // seq
                p.extend_from_slice(&0u32.to_be_bytes()); // ack
                p.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]); // PSH|ACK
            }
            1 => {
                p.extend_from_slice(&(50000 + (i % 5) as u16).to_be_bytes());
                p.extend_from_slice(&123u16.to_be_bytes());
                p.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
                p.extend_from_slice(&[0, 0]);
            }
            _ => {
                p.extend_from_slice(&[8, 0, 0, 0]); // echo request
                p.extend_from_slice(&(i as u32).to_be_bytes());
            }
        }
    }
    p.extend(std::iter::repeat_n(0x5a, payload));
    p
}

/// SplitMix64: a small seeded generator (Steele, Lea and Flood, OOPSLA 2014).
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Peak resident set (`VmHWM`, kB) of a process.
pub fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}
