//! Kernel tests of the NFLOG socket: each test makes its own network namespace, logs UDP sent
//! over its loopback with an iptables NFLOG rule, and reads it with `NflogSocket` from a
//! thread that entered the namespace (netlink sockets belong to the namespace they are
//! created in). Needs root: run as anyone else, each test fails saying so.

use std::fs::File;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use labelflow_probe::nflog::{GroupConfig, NflogConfig, NflogError, NflogSocket};
use labelflow_probe::packet::{Hook, L3};

/// Bounded wait for packets the kernel has been asked to deliver.
const IO_DEADLINE: Duration = Duration::from_secs(5);

fn require_root(why: &str) {
    labelflow_testkit::tools::require_root(why);
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace removed on drop (also when the test panics).
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "lfnflog-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run("ip", &full);
    }

    /// Runs `f` on a new thread inside the namespace.
    fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let name = self.name.clone();
        std::thread::spawn(move || {
            enter_netns(&name);
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

/// Moves the calling thread into the named namespace.
fn enter_netns(name: &str) {
    let f = File::open(format!("/run/netns/{name}")).expect("open netns file");
    // SAFETY: a valid namespace fd; only the calling thread changes namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn send_udp(to: &str, count: usize, size: usize) {
    let bind = if to.starts_with('[') {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let s = UdpSocket::bind(bind).expect("bind udp");
    let data = vec![0xabu8; size];
    for _ in 0..count {
        s.send_to(&data, to).expect("send udp");
    }
}

#[derive(Debug, Clone)]
struct Seen {
    group: u16,
    l3: L3,
    hook: Option<Hook>,
    mark: u32,
    egress_if: u32,
    uid: Option<u32>,
    prefix: Vec<u8>,
    seq: Option<u32>,
    payload_len: usize,
    version: u8,
    ip_len: usize,
}

fn collect(sock: &mut NflogSocket, want: usize) -> Vec<Seen> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + IO_DEADLINE;
    while seen.len() < want && Instant::now() < deadline {
        sock.recv_batch(Some(Duration::from_millis(100)), |m, p| {
            seen.push(seen_of(m, p))
        })
        .expect("recv_batch");
    }
    seen
}

fn seen_of(m: &labelflow_probe::packet::PacketMeta<'_>, p: &[u8]) -> Seen {
    let version = p.first().map_or(0, |b| b >> 4);
    let ip_len = match version {
        4 => usize::from(u16::from_be_bytes([p[2], p[3]])),
        6 => 40 + usize::from(u16::from_be_bytes([p[4], p[5]])),
        _ => 0,
    };
    Seen {
        group: m.group,
        l3: m.l3,
        hook: m.hook,
        mark: m.mark,
        egress_if: m.egress_if,
        uid: m.uid,
        prefix: m.prefix.to_vec(),
        seq: m.seq,
        payload_len: p.len(),
        version,
        ip_len,
    }
}

#[test]
fn delivers_packets_with_metadata_and_sequence_numbers() {
    require_root("network namespaces, iptables");
    let ns = Netns::new("meta");
    for (tool, dst) in [("iptables", "127.0.0.1"), ("ip6tables", "::1")] {
        ns.exec(&[
            tool,
            "-t",
            "mangle",
            "-A",
            "OUTPUT",
            "-d",
            dst,
            "-p",
            "udp",
            "--dport",
            "9999",
            "-j",
            "MARK",
            "--set-mark",
            "0x17",
        ]);
        ns.exec(&[
            tool,
            "-A",
            "OUTPUT",
            "-d",
            dst,
            "-p",
            "udp",
            "--dport",
            "9999",
            "-j",
            "NFLOG",
            "--nflog-group",
            "5",
            "--nflog-prefix",
            "t5",
            "--nflog-threshold",
            "8",
        ]);
    }
    let seen = ns.run_inside(|| {
        let mut config = NflogConfig::new([5]);
        config.groups[0] = GroupConfig {
            copy_range: 96,
            queue_threshold: 8,
            flush_timeout: Duration::from_millis(20),
            ..GroupConfig::new(5)
        };
        let mut sock = NflogSocket::open(&config).expect("open NFLOG socket");
        send_udp("127.0.0.1:9999", 20, 300);
        send_udp("[::1]:9999", 10, 300);
        let seen = collect(&mut sock, 30);
        let stats = sock.stats().clone();
        (seen, stats)
    });
    let (seen, stats) = seen;
    assert_eq!(seen.len(), 30, "packets delivered: {seen:?}");
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.group, 5);
        assert_eq!(s.hook, Some(Hook::LocalOut));
        assert_eq!(s.mark, 0x17);
        assert_eq!(s.egress_if, 1, "loopback ifindex");
        assert_eq!(s.uid, Some(0));
        assert_eq!(s.prefix, b"t5");
        assert_eq!(s.seq, Some(i as u32), "per-group sequence in arrival order");
        assert_eq!(s.payload_len, 96, "copy range");
        let (l3, version, ip_len) = if i < 20 {
            (L3::Ipv4, 4, 20 + 8 + 300)
        } else {
            (L3::Ipv6, 6, 40 + 8 + 300)
        };
        assert_eq!((s.l3, s.version, s.ip_len), (l3, version, ip_len));
    }
    let g = stats.group(5).expect("group stats");
    assert_eq!((g.packets, g.lost, g.no_seq), (30, 0, 0));
    assert_eq!(stats.enobufs, 0);
}

#[test]
fn second_listener_gets_a_clear_error() {
    require_root("network namespaces");
    let ns = Netns::new("busy");
    ns.run_inside(|| {
        let first = NflogSocket::open(&NflogConfig::new([6])).expect("first bind");
        match NflogSocket::open(&NflogConfig::new([8, 6])) {
            Err(NflogError::GroupBusy { group, portid }) => {
                assert_eq!(group, 6);
                assert_eq!(portid, first.portid());
            }
            other => panic!("expected GroupBusy for group 6, got {other:?}"),
        }
        let msg = NflogSocket::open(&NflogConfig::new([6]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("group 6") && msg.contains("already bound"),
            "{msg}"
        );
        // Group 8 was bound by the failed attempt and released when its socket closed.
        let again = NflogSocket::open(&NflogConfig::new([8]));
        assert!(again.is_ok(), "{again:?}");
    });
}

#[test]
fn shutdown_delivers_the_pending_batch() {
    require_root("network namespaces, iptables");
    let ns = Netns::new("tail");
    ns.exec(&[
        "iptables",
        "-A",
        "OUTPUT",
        "-p",
        "udp",
        "--dport",
        "9998",
        "-j",
        "NFLOG",
        "--nflog-group",
        "9",
        "--nflog-threshold",
        "64",
    ]);
    let (before, after, stats) = ns.run_inside(|| {
        let mut config = NflogConfig::new([9]);
        config.groups[0].flush_timeout = Duration::from_secs(60);
        let mut sock = NflogSocket::open(&config).expect("open");
        send_udp("127.0.0.1:9998", 5, 10);
        // The batch holds 5 of 64 packets and its timer is a minute away: nothing yet.
        let mut before = 0;
        sock.recv_batch(Some(Duration::from_millis(200)), |_, _| before += 1)
            .expect("recv_batch");
        let mut after = Vec::new();
        let stats = sock
            .shutdown(IO_DEADLINE, |m, p| after.push(seen_of(m, p)))
            .expect("shutdown");
        (before, after, stats)
    });
    assert_eq!(before, 0);
    assert_eq!(after.len(), 5, "{after:?}");
    let seqs: Vec<_> = after.iter().map(|s| s.seq).collect();
    assert_eq!(seqs, (0..5).map(Some).collect::<Vec<_>>());
    assert_eq!(stats.group(9).map(|g| (g.packets, g.lost)), Some((5, 0)));
}
