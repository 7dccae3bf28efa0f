//! The lab itself, against the kernel: counters equal what was sent, every kind of traffic
//! reaches its group, and nothing is left behind. Needs root (CI runs as root).

use labelflow_tests::lab::{self, Lab, Role};
use labelflow_tests::netns;
use labelflow_tests::rules::{self, Counter, Firewall};
use labelflow_tests::traffic::{self, Mix};

fn require_root() {
    labelflow_testkit::tools::require_root("the kernel lab: network namespaces, iptables");
}

fn lab_namespaces(prefix: &str) -> Vec<String> {
    netns::list()
        .expect("ip netns list")
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect()
}

fn exact_counts(fw: Firewall) {
    require_root();
    let lab = Lab::up().expect("lab up");
    rules::load(&lab, fw).expect("load rules");
    let sent = traffic::run_mix(&lab, &Mix::exact()).expect("traffic");
    rules::detach(&lab, fw).expect("detach");
    let c = rules::counters(&lab, fw).expect("counters");

    // 5 SPIs x 20 packets, every one counted once, in the ESP group only.
    assert_eq!(sent.esp.packets, 100);
    assert_eq!(c["esp"], sent.esp, "{}: esp counter vs sent", fw.name());
    // Each UDP datagram was received before the next was sent: none lost.
    assert_eq!(sent.vpn_udp.packets, 4 * 20);
    assert_eq!(c["vpn"], sent.vpn_udp, "{}: vpn counter vs sent", fw.name());
    // `other` also sees IPv6 neighbour discovery on the uplink, never less than our UDP.
    assert_eq!(sent.other_udp.packets, 4 * 20);
    assert!(
        c["other"].packets >= sent.other_udp.packets,
        "{c:?} {sent:?}"
    );
    assert!(c["other"].bytes >= sent.other_udp.bytes, "{c:?} {sent:?}");

    // Detached: more traffic changes nothing.
    traffic::esp(&lab, lab::addr::GW_WAN_V4.into(), &[7], 3, 10).expect("esp");
    assert_eq!(
        rules::counters(&lab, fw).expect("counters")["esp"],
        sent.esp
    );

    let prefix = lab.prefix().to_owned();
    drop(lab);
    assert!(
        lab_namespaces(&prefix).is_empty(),
        "namespaces left: {:?}",
        lab_namespaces(&prefix)
    );
}

#[test]
fn iptables_counters_equal_sent_traffic() {
    exact_counts(Firewall::Iptables);
}

#[test]
fn nftables_counters_equal_sent_traffic() {
    exact_counts(Firewall::Nftables);
}

#[test]
fn standard_mix_reaches_every_group_with_both_firewalls() {
    require_root();
    for fw in [Firewall::Iptables, Firewall::Nftables] {
        let lab = Lab::up().expect("lab up");
        rules::load(&lab, fw).expect("load rules");
        let sent = traffic::run_mix(&lab, &Mix::standard()).expect("traffic");
        rules::detach(&lab, fw).expect("detach");
        let c = rules::counters(&lab, fw).expect("counters");
        assert_eq!(c["esp"], sent.esp, "{}", fw.name());
        // TCP (three connections per family, both directions) and ICMP come on top of UDP.
        for (label, udp) in [("vpn", sent.vpn_udp), ("other", sent.other_udp)] {
            let got: Counter = c[label];
            assert!(
                got.packets > udp.packets + 60,
                "{}: {label} {got:?} vs udp {udp:?}",
                fw.name()
            );
            assert!(
                got.bytes > udp.bytes + 3 * Mix::standard().tcp_bytes as u64,
                "{}: {label} {got:?}",
                fw.name()
            );
        }
    }
}

#[test]
fn tcp_and_icmp_complete_through_the_gateway() {
    require_root();
    let lab = Lab::up().expect("lab up");
    use lab::addr::*;
    let (up, down) = traffic::tcp(
        &lab,
        Role::Inet,
        REMOTE_V6.into(),
        Role::Lan,
        std::net::SocketAddr::new(LAN_V6.into(), 9000),
        30_000,
        70_000,
    )
    .expect("tcp");
    assert_eq!((up, down), (30_000, 70_000));
    assert_eq!(
        traffic::ping(&lab, Role::Lan, LAN_V4.into(), INET_V4.into(), 3, 40).expect("ping"),
        (3, 3)
    );
    assert_eq!(
        traffic::ping(&lab, Role::Inet, INET_V6.into(), LAN_V6.into(), 3, 40).expect("ping6"),
        (3, 3)
    );
}

#[test]
fn lab_is_deleted_when_a_test_panics() {
    require_root();
    let prefix = std::thread::spawn(|| {
        let lab = Lab::up().expect("lab up");
        let prefix = lab.prefix().to_owned();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _lab = lab;
            panic!("test failure inside the lab");
        }));
        assert!(result.is_err());
        prefix
    })
    .join()
    .expect("thread");
    assert!(lab_namespaces(&prefix).is_empty());
}

#[test]
fn stale_labs_of_dead_processes_are_removed() {
    require_root();
    // pid_max is at most 2^22: this pid cannot be alive.
    let prefix = "lf9999999n0";
    let _ = lab::delete_prefix(prefix);
    let kept = Lab::up_named(prefix).expect("lab up").keep();
    assert_eq!(lab_namespaces(&kept).len(), 3);
    let removed = lab::delete_stale().expect("delete stale");
    assert!(removed.contains(&kept), "{removed:?}");
    assert!(lab_namespaces(&kept).is_empty());
    // A live process's lab is not stale.
    let mine = Lab::up().expect("lab up");
    assert!(!lab::delete_stale()
        .expect("delete stale")
        .contains(&mine.prefix().to_owned()));
    assert_eq!(lab_namespaces(mine.prefix()).len(), 3);
}

#[test]
fn nflog_groups_deliver_to_a_listener_in_the_gateway() {
    // tcpdump (libpcap's NFLOG reader) as an independent listener: it binds the groups and
    // sees the packets the rules log.
    require_root();
    labelflow_testkit::tools::require_program("tcpdump");
    let lab = Lab::up().expect("lab up");
    let fw = Firewall::Nftables;
    let dir = std::env::temp_dir().join(format!("{}-nflog.pcap", lab.prefix()));
    let path = dir.to_string_lossy().into_owned();
    let mut d = labelflow_tests::process::Daemon::start(
        &lab,
        Role::Gw,
        std::path::Path::new("tcpdump"),
        &[
            "-i".into(),
            "nflog:1".into(),
            "-c".into(),
            "10".into(),
            "-U".into(),
            "-w".into(),
            path.clone(),
        ],
    )
    .expect("tcpdump");
    d.wait_until(
        "binding group 1",
        std::time::Duration::from_secs(10),
        || Ok(labelflow_tests::process::bound_nflog_groups(&lab)?.contains(&1)),
    )
    .expect("tcpdump ready");
    rules::load(&lab, fw).expect("rules");
    let sent = traffic::esp(&lab, GW_V4.into(), &[0x42, 0x43], 5, 50).expect("esp");
    rules::detach(&lab, fw).expect("detach");
    // tcpdump exits by itself after 10 packets (the kernel's flush timer, 1 s, delivers a
    // partial batch).
    let stopped = d
        .wait(std::time::Duration::from_secs(10))
        .expect("tcpdump exits after 10 packets");
    assert!(
        stopped.stderr.contains("10 packets captured"),
        "{}",
        stopped.stderr
    );
    assert_eq!(rules::counters(&lab, fw).expect("counters")["esp"], sent);
    let _ = std::fs::remove_file(&dir);
}

const GW_V4: std::net::Ipv4Addr = lab::addr::GW_WAN_V4;
