//! labelflow-probe's conntrack source against the kernel: the lab's gateway masquerades the
//! LAN and marks connections into three labels; per label and direction, the exported bytes
//! and packets equal nftables counters on the same marks, the NAT elements equal the tuples
//! conntrack reports, and stopping with a connection still open loses and doubles nothing.
//! Needs root and the built probe (`cargo build --workspace --bins`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use labelflow_testkit::tools;
use labelflow_tests::conntrack::{self, CtLine, OpenTcp, LABELS};
use labelflow_tests::ct_collector::RealCollectors;
use labelflow_tests::ipfix::{ExportLog, Flow};
use labelflow_tests::lab::{addr, Lab, Role};
use labelflow_tests::process::{self, Daemon};
use labelflow_tests::rules::{self, Counter, Firewall, GROUPS};
use labelflow_tests::traffic;

const ACTIVE: &str = "3s";

/// The probe's configuration: `collector` takes unidirectional records, `biflow` biflows,
/// and each of `more` (address, biflow) one more target.
fn config(
    collector: SocketAddr,
    biflow: SocketAddr,
    extra: &str,
    more: &[(SocketAddr, bool)],
) -> String {
    let more: String = more
        .iter()
        .map(|(a, bi)| format!("\n[[export]]\ntarget = \"ipfix://{a}\"\nbiflow = {bi}\n"))
        .collect();
    let labels: Vec<String> = LABELS
        .iter()
        .map(|(m, l, _)| format!("{{ mark = \"{m:#x}\", label = \"{l}\" }}"))
        .collect();
    format!(
        "[conntrack]\nenable = true\nset_sysctls = true\nlabels = [{}]\n{extra}\n[cache]\nactive_timeout = \"{ACTIVE}\"\n\n[[export]]\ntarget = \"ipfix://{collector}\"\n\n[[export]]\ntarget = \"ipfix://{biflow}\"\nbiflow = true\n{more}",
        labels.join(", ")
    )
}

fn direction(f: &Flow) -> &'static str {
    match f.nat.as_ref().and_then(|n| n.biflow_direction) {
        Some(1) => "orig",
        Some(2) => "reply",
        _ => "none",
    }
}

/// Exported records of a connection's original direction, keyed as conntrack lists it.
fn records_of<'a>(log: &'a ExportLog, c: &CtLine, dir: u8) -> Vec<&'a Flow> {
    let (src, dst, sport, dport) = if dir == 1 { c.orig } else { c.reply };
    log.flows
        .iter()
        .filter(|f| {
            f.nat.as_ref().and_then(|n| n.biflow_direction) == Some(dir)
                && f.protocol == Some(c.protocol)
                && (f.src, f.dst) == (Some(src), Some(dst))
                && (matches!(c.protocol, 1 | 58)
                    || (f.src_port, f.dst_port) == (Some(sport), Some(dport)))
        })
        .collect()
}

/// The probe's two collectors: unidirectional records, biflows.
struct Collectors {
    uni: std::net::UdpSocket,
    bi: std::net::UdpSocket,
}

/// Starts the probe in the gateway with the conntrack labels (plus `extra` lines in
/// `[conntrack]`), exporting to two collector sockets (the second takes biflows); returns
/// once it listens to the events.
fn start_probe(
    lab: &Lab,
    extra: &str,
    flags: &[&str],
    more: &[(SocketAddr, bool)],
) -> (Daemon, Collectors, TempDir) {
    let (sock, collector) = process::collector_socket(lab).expect("collector socket");
    let (bi, bi_addr) = process::collector_socket(lab).expect("collector socket");
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = TempDir(std::env::temp_dir().join(format!("lf-ct-{}-{n}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let cfg = dir.0.join("probe.toml");
    std::fs::write(&cfg, config(collector, bi_addr, extra, more)).expect("write config");
    let bin = process::find_binary("labelflow-probe").expect("probe binary");
    let mut args = vec![
        "--config".to_owned(),
        cfg.display().to_string(),
        "--stats-interval".to_owned(),
        "1s".to_owned(),
    ];
    args.extend(flags.iter().map(|f| (*f).to_owned()));
    let mut probe = Daemon::start(lab, Role::Gw, &bin, &args).expect("start probe");
    probe
        .wait_until(
            "subscribing to conntrack events",
            Duration::from_secs(10),
            || conntrack::events_subscribed(lab),
        )
        .expect("probe ready");
    (probe, Collectors { uni: sock, bi }, dir)
}

/// Per `(label, "orig" | "reply")` totals of biflow records.
fn biflow_totals(log: &ExportLog) -> BTreeMap<(String, String), Counter> {
    let mut out: BTreeMap<(String, String), Counter> = BTreeMap::new();
    for f in &log.flows {
        let label = f.label.clone().unwrap_or_default();
        let nat = f.nat.clone().unwrap_or_default();
        assert_eq!(nat.biflow_direction, Some(1), "{f:?}");
        let (rb, rp) = nat.reverse.expect("reverse counters");
        let o = out.entry((label.clone(), "orig".into())).or_default();
        o.packets += f.packets;
        o.bytes += f.bytes;
        let r = out.entry((label, "reply".into())).or_default();
        r.packets += rp;
        r.bytes += rb;
    }
    out
}

/// The probe's configuration directory, removed when the test ends (also on failure).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The last `KEY=N` of the probe's last "conntrack stats" (or other `what`) log line.
fn logged(stderr: &str, what: &str, key: &str) -> u64 {
    stderr
        .lines()
        .rfind(|l| l.contains(what))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn conntrack_exports_equal_nft_counters_per_label_and_direction_with_nat() {
    tools::require_root("the kernel lab: network namespaces, nftables NAT, conntrack");
    let lab = Lab::up().expect("lab up");
    conntrack::load(&lab).expect("load the conntrack ruleset");
    // Short timeouts: the UDP, ICMP and closed TCP connections end (DESTROY events) within
    // the test; the long connection stays open across the stop.
    conntrack::sysctls(
        &lab,
        &[
            "net.netfilter.nf_conntrack_udp_timeout=2",
            "net.netfilter.nf_conntrack_icmp_timeout=2",
            "net.netfilter.nf_conntrack_icmpv6_timeout=2",
            "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1",
        ],
    )
    .expect("conntrack timeouts");
    // Two real collectors take the same export: unidirectional records and biflows.
    let mut collectors = RealCollectors::start(&lab).expect("collectors");
    let (mut probe, sinks, dir) = start_probe(&lab, "", &[], &collectors.targets());
    let sock = &sinks.uni;
    let lan: IpAddr = addr::LAN_V4.into();
    let inet = |port| SocketAddr::new(addr::INET_V4.into(), port);
    let mut log = ExportLog::new();
    let pump = |log: &mut ExportLog| {
        for d in process::drain_datagrams(sock).expect("drain") {
            log.feed(&d);
        }
    };
    // One connection outliving two active timeouts (two sweeps export it while it is open),
    // left open at the stop.
    let mut long = OpenTcp::connect(&lab, lan, inet(7000)).expect("long connection");
    let long_records = |log: &ExportLog| {
        log.flows
            .iter()
            .filter(|f| f.protocol == Some(6) && f.dst_port == Some(7000) && direction(f) == "orig")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while long_records(&log) < 2 {
        assert!(
            Instant::now() < deadline,
            "no sweep exported the long connection"
        );
        long.send(20_000).expect("long connection traffic");
        std::thread::sleep(Duration::from_millis(100));
        pump(&mut log);
    }
    for i in 0..3u16 {
        traffic::tcp(
            &lab,
            Role::Lan,
            lan,
            Role::Inet,
            inet(7001 + i),
            30_000,
            8_000,
        )
        .expect("short tcp");
    }
    // IPv6 through the same masquerade (NAT66): postNATSourceIPv6Address and friends.
    let lan6: IpAddr = addr::LAN_V6.into();
    traffic::tcp(
        &lab,
        Role::Lan,
        lan6,
        Role::Inet,
        SocketAddr::new(addr::INET_V6.into(), 7010),
        20_000,
        4_000,
    )
    .expect("tcp over IPv6");
    let (_, replies6) =
        traffic::ping(&lab, Role::Lan, lan6, addr::INET_V6.into(), 3, 56).expect("ping6");
    assert_eq!(replies6, 3);
    let udp = traffic::udp(
        &lab,
        Role::Lan,
        SocketAddr::new(lan, 5353),
        Role::Inet,
        inet(7100),
        20,
        300,
    )
    .expect("udp");
    assert_eq!(udp.packets, 20);
    let (_, replies) =
        traffic::ping(&lab, Role::Lan, lan, addr::INET_V4.into(), 5, 56).expect("ping");
    assert_eq!(replies, 5);

    // Every connection, with its NAT tuples, while all are still in the table.
    let listed: Vec<CtLine> = conntrack::table(&lab)
        .expect("conntrack table")
        .into_iter()
        .filter(|c| LABELS.iter().any(|(m, _, _)| *m == c.mark))
        .collect();
    assert!(listed.len() >= 8, "connections listed: {listed:?}");
    assert!(
        listed.iter().filter(|c| c.orig.0.is_ipv6()).count() >= 2,
        "IPv6 connections listed: {listed:?}"
    );
    // Wait until the short connections are gone (reading the table evicts expired entries,
    // which sends their DESTROY events); the long one remains.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = conntrack::table(&lab).expect("conntrack table");
        let marked = left.iter().filter(|c| c.mark != 0).count();
        if marked == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections did not expire: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Right after a sweep, traffic the next sweep would export: only the stop's sweep may
    // export it (an active timeout is 3 s away).
    pump(&mut log);
    let before = long_records(&log);
    long.send(20_000).expect("long connection traffic");
    let deadline = Instant::now() + Duration::from_secs(10);
    while long_records(&log) == before {
        assert!(Instant::now() < deadline, "no sweep after the expiries");
        std::thread::sleep(Duration::from_millis(20));
        pump(&mut log);
    }
    long.send(50_000).expect("long connection traffic");
    let swept = long_records(&log);
    // Quiet: the counters stop moving (the last delayed ACK is in).
    let mut last = conntrack::counters(&lab).expect("nft counters");
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = conntrack::counters(&lab).expect("nft counters");
        if now == last {
            break;
        }
        last = now;
    }
    let truth = conntrack::counters(&lab).expect("nft counters");
    let stopped = probe
        .stop(libc::SIGTERM, Duration::from_secs(10))
        .expect("probe stop");
    assert!(stopped.status.success(), "probe: {}", stopped.stderr);
    pump(&mut log);
    assert_eq!(
        long_records(&log),
        swept + 1,
        "the stop exports the open connection's last bytes once\n{}",
        stopped.stderr
    );
    assert!(log.errors.is_empty(), "decode errors: {:?}", log.errors);

    let mut exported: BTreeMap<(String, String), Counter> = BTreeMap::new();
    for f in &log.flows {
        let c = exported
            .entry((f.label.clone().unwrap_or_default(), direction(f).to_owned()))
            .or_default();
        c.packets += f.packets;
        c.bytes += f.bytes;
    }
    for (_, label, _) in LABELS {
        for dir in ["orig", "reply"] {
            let key = (label.to_owned(), dir.to_owned());
            let want = truth.get(&key).copied().unwrap_or_default();
            let got = exported.get(&key).copied().unwrap_or_default();
            assert_eq!(
                got, want,
                "{label} {dir}: exported vs nftables\n{}",
                stopped.stderr
            );
        }
        let orig = truth[&(label.to_owned(), "orig".to_owned())];
        assert!(orig.packets > 0, "{label}: no traffic counted");
    }
    assert!(
        exported
            .keys()
            .all(|(l, d)| LABELS.iter().any(|x| x.1 == l) && d != "none"),
        "records outside the labels: {exported:?}"
    );

    // The biflow target: one record per connection and interval, the reply direction in
    // the reverse counters; the same totals.
    let mut bi_log = ExportLog::new();
    for d in process::drain_datagrams(&sinks.bi).expect("drain") {
        bi_log.feed(&d);
    }
    assert!(
        bi_log.errors.is_empty(),
        "decode errors: {:?}",
        bi_log.errors
    );
    let bi = biflow_totals(&bi_log);
    for (_, label, _) in LABELS {
        for dir in ["orig", "reply"] {
            let key = (label.to_owned(), dir.to_owned());
            let want = truth.get(&key).copied().unwrap_or_default();
            let got = bi.get(&key).copied().unwrap_or_default();
            assert_eq!(got, want, "biflow {label} {dir}");
        }
    }

    // NAT elements: what conntrack reports for each connection.
    for c in &listed {
        let orig = records_of(&log, c, 1);
        assert!(!orig.is_empty(), "no record for {c:?}");
        for f in orig {
            let n = f.nat.as_ref().expect("NAT elements");
            assert_eq!(n.post_src, Some(c.reply.1), "{c:?}: {f:?}");
            assert_eq!(n.post_dst, Some(c.reply.0), "{c:?}: {f:?}");
            if !matches!(c.protocol, 1 | 58) {
                assert_eq!(
                    (n.post_src_port, n.post_dst_port),
                    (Some(c.reply.3), Some(c.reply.2))
                );
            }
        }
        for f in records_of(&log, c, 2) {
            let n = f.nat.as_ref().expect("NAT elements");
            assert_eq!(
                (n.post_src, n.post_dst),
                (Some(c.orig.1), Some(c.orig.0)),
                "{c:?}"
            );
        }
    }
    // The long connection: one record per active timeout it outlived, plus the stop.
    let long_ct = listed
        .iter()
        .find(|c| c.protocol == 6 && c.orig.3 == 7000)
        .expect("long connection listed");
    assert!(
        records_of(&log, long_ct, 1).len() >= 4,
        "long connection records: {:?}",
        records_of(&log, long_ct, 1)
    );
    let destroyed = stopped
        .stderr
        .lines()
        .rfind(|l| l.contains("conntrack stats"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("destroy="))
        })
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        destroyed >= 4,
        "DESTROY events: {destroyed}\n{}",
        stopped.stderr
    );
    long.close().expect("close the long connection");
    collectors.check(&truth, &listed);
    drop(dir);
}

#[test]
fn conntrack_event_flood_past_a_small_buffer_is_counted_resynchronised_and_reconciles() {
    tools::require_root("the kernel lab: network namespaces, nftables NAT, conntrack");
    const FLOWS: u16 = 20_000;
    let lab = Lab::up().expect("lab up");
    conntrack::load(&lab).expect("load the conntrack ruleset");
    conntrack::sink_udp(&lab, 20_000..20_000 + FLOWS).expect("udp sink");
    // The smallest receive buffer: a burst of events overruns it at once.
    let (mut probe, sinks, dir) = start_probe(&lab, "rcvbuf = 4096", &[], &[]);
    let sock = &sinks.uni;
    let sent = conntrack::udp_flood(
        &lab,
        addr::LAN_V4.into(),
        addr::INET_V4.into(),
        20_000..20_000 + FLOWS,
        64,
    )
    .expect("flood");
    assert_eq!(sent, u64::from(FLOWS));
    let key = ("udp".to_owned(), "orig".to_owned());
    let truth = conntrack::counters(&lab).expect("nft counters")[&key];
    assert_eq!(truth.packets, sent);
    // Until every connection has been exported, by the sweep that resynchronises after the
    // overrun (the connections stay in the table: UDP's default timeout is 30 s).
    let mut log = ExportLog::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for d in process::drain_datagrams(sock).expect("drain") {
            log.feed(&d);
        }
        let got: u64 = log
            .flows
            .iter()
            .filter(|f| f.label.as_deref() == Some("udp"))
            .map(|f| f.packets)
            .sum();
        // Past the deadline, the comparison below fails with the probe's log.
        if got >= truth.packets || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Sweeps leave alone what they do not export: the probe's own export datagrams (an
    // unlabelled connection) keep every packet counted since the start.
    // By address and port: a flood connection's destination port may equal the collector's.
    let collector = sock.local_addr().expect("collector address");
    let export_conn = conntrack::table(&lab)
        .expect("conntrack table")
        .into_iter()
        .find(|c| c.protocol == 17 && c.orig.1 == collector.ip() && c.orig.3 == collector.port())
        .expect("the export connection");
    assert!(
        export_conn.orig_packets >= log.datagrams,
        "unlabelled connection zeroed: {export_conn:?}, {} datagrams received",
        log.datagrams
    );
    let stopped = probe
        .stop(libc::SIGTERM, Duration::from_secs(20))
        .expect("probe stop");
    assert!(stopped.status.success(), "probe: {}", stopped.stderr);
    for d in process::drain_datagrams(sock).expect("drain") {
        log.feed(&d);
    }
    assert!(log.errors.is_empty(), "decode errors: {:?}", log.errors);
    let mut got = Counter::default();
    for f in log
        .flows
        .iter()
        .filter(|f| f.label.as_deref() == Some("udp"))
    {
        assert_eq!(direction(f), "orig", "{f:?}");
        got.packets += f.packets;
        got.bytes += f.bytes;
    }
    let mut bi_log = ExportLog::new();
    for d in process::drain_datagrams(&sinks.bi).expect("drain") {
        bi_log.feed(&d);
    }
    let bi = biflow_totals(&bi_log);
    let bi_udp = bi.get(&key).copied().unwrap_or_default();
    assert_eq!(bi_udp, truth, "biflow after the flood");
    assert_eq!(
        got, truth,
        "exported vs nftables after the flood\n{}",
        stopped.stderr
    );
    let enobufs = logged(&stopped.stderr, "conntrack event losses", "enobufs");
    assert!(
        enobufs > 0,
        "the flood did not overrun the buffer\n{}",
        stopped.stderr
    );
    assert!(
        stopped
            .stderr
            .contains("resynchronising by a counter sweep"),
        "no resynchronisation logged\n{}",
        stopped.stderr
    );
    drop(dir);
}

#[test]
fn conntrack_and_nflog_in_one_process_reconcile_on_the_same_traffic() {
    tools::require_root("the kernel lab: network namespaces, nftables NAT, NFLOG, conntrack");
    let lab = Lab::up().expect("lab up");
    conntrack::load(&lab).expect("load the conntrack ruleset");
    let groups: Vec<String> = GROUPS.iter().map(|(g, l)| format!("{g}={l}")).collect();
    let mut flags = Vec::new();
    for g in &groups {
        flags.extend(["--group", g.as_str()]);
    }
    let mut collectors = RealCollectors::start(&lab).expect("collectors");
    let (mut probe, sinks, dir) = start_probe(&lab, "", &flags, &collectors.targets());
    probe
        .wait_until("binding its NFLOG groups", Duration::from_secs(10), || {
            let bound = process::bound_nflog_groups(&lab)?;
            Ok(GROUPS.iter().all(|(g, _)| bound.contains(g)))
        })
        .expect("groups bound");
    // The NFLOG rules only once the groups are bound, as the probe scenario does
    // (tests/src/scenario.rs): nothing is counted that was logged to an unbound group.
    rules::load(&lab, Firewall::Nftables).expect("load the NFLOG ruleset");

    let lan: IpAddr = addr::LAN_V4.into();
    let inet = |port| SocketAddr::new(addr::INET_V4.into(), port);
    for i in 0..2u16 {
        traffic::tcp(
            &lab,
            Role::Lan,
            lan,
            Role::Inet,
            inet(7200 + i),
            40_000,
            6_000,
        )
        .expect("tcp");
    }
    traffic::udp(
        &lab,
        Role::Lan,
        SocketAddr::new(lan, 5454),
        Role::Inet,
        inet(7300),
        10,
        500,
    )
    .expect("udp");
    traffic::ping(&lab, Role::Lan, lan, addr::INET_V4.into(), 4, 100).expect("ping");
    // Quiet: both sets of counters stop moving (the last ACKs are in).
    let read = || {
        (
            conntrack::counters(&lab).expect("ct counters"),
            rules::counters(&lab, Firewall::Nftables).expect("nflog counters"),
        )
    };
    let mut last = read();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = read();
        if now == last {
            break;
        }
        last = now;
    }
    let ct_truth = last.0;
    // Detached before the NFLOG counters are read: a stray late packet is then neither
    // counted nor logged.
    rules::detach(&lab, Firewall::Nftables).expect("detach NFLOG rules");
    let nflog_truth = rules::counters(&lab, Firewall::Nftables).expect("nflog counters");
    let stopped = probe
        .stop(libc::SIGTERM, Duration::from_secs(10))
        .expect("probe stop");
    assert!(stopped.status.success(), "probe: {}", stopped.stderr);
    let mut log = ExportLog::new();
    for d in process::drain_datagrams(&sinks.uni).expect("drain") {
        log.feed(&d);
    }
    assert!(log.errors.is_empty(), "decode errors: {:?}", log.errors);

    // Each source equals its own counters.
    let by_label = log.totals_by_label();
    assert_eq!(
        by_label.get("other").copied().unwrap_or_default(),
        nflog_truth["other"],
        "NFLOG group other\n{}",
        stopped.stderr
    );
    let mut ct_total = Counter::default();
    for (_, label, _) in LABELS {
        let mut exported = Counter::default();
        let mut truth = Counter::default();
        for dir in ["orig", "reply"] {
            truth += ct_truth[&(label.to_owned(), dir.to_owned())];
        }
        for f in log
            .flows
            .iter()
            .filter(|f| f.label.as_deref() == Some(label))
        {
            exported += Counter {
                packets: f.packets,
                bytes: f.bytes,
            };
        }
        assert_eq!(exported, truth, "conntrack label {label}");
        ct_total += exported;
    }
    // And they agree: the forwarded TCP, UDP and ICMP that NFLOG saw packet by packet is what
    // conntrack counted per connection.
    let mut nflog_fwd = Counter::default();
    for f in log
        .flows
        .iter()
        .filter(|f| f.label.as_deref() == Some("other"))
    {
        if matches!(f.protocol, Some(1 | 6 | 17)) {
            nflog_fwd += Counter {
                packets: f.packets,
                bytes: f.bytes,
            };
        }
    }
    assert!(ct_total.packets > 0);
    assert_eq!(
        nflog_fwd, ct_total,
        "NFLOG (other, TCP/UDP/ICMP) vs conntrack labels"
    );
    // labelflow-collector: both sources in one label report, each label its own counters.
    let mut want: BTreeMap<String, Counter> = BTreeMap::new();
    for (label, c) in &nflog_truth {
        if *c != Counter::default() {
            want.insert(label.clone(), *c);
        }
    }
    for ((label, _), c) in &ct_truth {
        *want.entry(label.clone()).or_default() += *c;
    }
    want.retain(|_, c| *c != Counter::default());
    collectors.check_labels(&want);
    drop(dir);
}
