//! labelflow-probe on a gateway running real IPsec: strongSwan negotiates IKEv2 with the
//! Internet peer, ESP travels inside UDP 4500 (RFC 3948) and is rekeyed every few seconds.
//! The probe's per-label export equals the kernel's counters, every UDP-encapsulated ESP
//! flow carries the SPI of an SA strongSwan negotiated, and SAs of several generations
//! (rekeys) appear. Needs root, Debian's strongswan-charon and the built probe.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use labelflow_tests::ipfix::ExportLog;
use labelflow_tests::lab::{addr, Lab, Role};
use labelflow_tests::process;
use labelflow_tests::rules::Counter;
use labelflow_tests::ruleset::parse_iptables_save_comments;
use labelflow_tests::strongswan::{ChildSa, IpsecPair, PairConfig, CONNECTION};
use labelflow_tests::traffic;

/// Accounting on a libipsec gateway: the wire (IKE, NAT-T ESP, keepalives on UDP 500/4500
/// across `wan`) to group 1, the clear text entering and leaving through the TUN device
/// `ipsec0` to group 2, everything else on `wan` to group 3. Each label chain opens with a
/// counting rule: the kernel's ground truth.
const RULES: &str = "*mangle
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:LF_ESP - [0:0]
:LF_VPN - [0:0]
:LF_OTHER - [0:0]
-A PREROUTING -i wan -p udp -m multiport --ports 500,4500 -g LF_ESP
-A PREROUTING -i wan -g LF_OTHER
-A PREROUTING -i ipsec0 -g LF_VPN
-A POSTROUTING -o wan -p udp -m multiport --ports 500,4500 -g LF_ESP
-A POSTROUTING -o wan -g LF_OTHER
-A POSTROUTING -o ipsec0 -g LF_VPN
-A LF_ESP -m comment --comment labelflow-count:esp
-A LF_ESP -j NFLOG --nflog-group 1
-A LF_VPN -m comment --comment labelflow-count:vpn
-A LF_VPN -j NFLOG --nflog-group 2
-A LF_OTHER -m comment --comment labelflow-count:other
-A LF_OTHER -j NFLOG --nflog-group 3
COMMIT
";

const EMPTY_MANGLE: &str = "*mangle\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";

fn require_root() {
    labelflow_testkit::tools::require_root("the kernel lab: network namespaces, strongSwan");
}

/// Every SA the gateway's charon listed or reported in an event, by unique id, with the
/// highest counters seen for each direction (counters only grow; an SA's final ones come
/// with the event that takes it down or rekeys it, or from the listing during its delete
/// delay).
fn record_sas(seen: &mut BTreeMap<u64, ChildSa>, now: Vec<ChildSa>) {
    for sa in now {
        let e = seen.entry(sa.unique_id).or_insert_with(|| sa.clone());
        e.bytes_in = e.bytes_in.max(sa.bytes_in);
        e.packets_in = e.packets_in.max(sa.packets_in);
        e.bytes_out = e.bytes_out.max(sa.bytes_out);
        e.packets_out = e.packets_out.max(sa.packets_out);
    }
}

#[test]
fn real_ipsec_natt_esp_keyed_per_sa_across_rekeys_and_exact_per_label() {
    require_root();
    let lab = Lab::up().expect("lab up");
    let pair = IpsecPair::up(
        &lab,
        &PairConfig {
            rekey_time: Duration::from_secs(6),
        },
    )
    .expect("strongSwan pair up");
    let monitor = pair.monitor(Role::Gw).expect("swanctl --monitor-sa");
    let mut sas = BTreeMap::new();
    record_sas(&mut sas, pair.child_sas(Role::Gw).expect("list SAs"));
    assert!(!sas.is_empty(), "no CHILD_SA after initiate");

    let (sock, collector) = process::collector_socket(&lab).expect("collector socket");
    let vici = pair.vici(Role::Gw).display().to_string();
    let mut probe = process::start_probe(
        &lab,
        &[
            "--export".into(),
            format!("ipfix://{collector}"),
            "--vici".into(),
            format!("unix://{vici}"),
        ],
    )
    .expect("probe up");
    lab.exec_stdin(Role::Gw, "iptables-restore", &[], RULES)
        .expect("load rules");

    // 16 s of traffic through the tunnel (LAN host to the remote subnet), across at least two
    // rekeys at 6 s (strongSwan rekeys up to 10 % early).
    let lan = SocketAddr::new(IpAddr::V4(addr::LAN_V4), 40_000);
    let remote = SocketAddr::new(IpAddr::V4(addr::REMOTE_V4), 5_000);
    let (mut udp, mut pings) = (Counter::default(), (0, 0));
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(16) {
        let c = traffic::udp(&lab, Role::Lan, lan, Role::Inet, remote, 20, 300).expect("udp");
        udp.packets += c.packets;
        udp.bytes += c.bytes;
        let (sent, got) = traffic::ping(
            &lab,
            Role::Lan,
            IpAddr::V4(addr::LAN_V4),
            IpAddr::V4(addr::REMOTE_V4),
            2,
            56,
        )
        .expect("ping");
        pings = (pings.0 + sent, pings.1 + got);
        record_sas(&mut sas, pair.child_sas(Role::Gw).expect("list SAs"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        udp.packets > 0 && pings.1 > 0,
        "nothing crossed the tunnel: {udp:?} {pings:?}"
    );

    // Detach before reading, so that counted and logged are the same packets.
    let saved = lab
        .exec(Role::Gw, "iptables-save", &["-c", "-t", "mangle"])
        .expect("save");
    lab.exec_stdin(Role::Gw, "iptables-restore", &[], EMPTY_MANGLE)
        .expect("detach rules");
    record_sas(&mut sas, pair.child_sas(Role::Gw).expect("list SAs"));
    record_sas(&mut sas, monitor.child_sas().expect("SA events"));
    let counters: BTreeMap<String, Counter> =
        parse_iptables_save_comments(&String::from_utf8_lossy(&saved.stdout))
            .expect("counters")
            .into_iter()
            .collect();
    let stopped = probe
        .stop(libc::SIGTERM, Duration::from_secs(20))
        .expect("probe stop");
    assert!(stopped.status.success(), "probe: {}", stopped.stderr);
    let mut export = ExportLog::new();
    for d in process::drain_datagrams(&sock).expect("drain") {
        export.feed(&d);
    }
    assert!(
        export.errors.is_empty(),
        "decode errors: {:?}",
        export.errors
    );

    // Per label, exactly the kernel's counters.
    let by_label = export.totals_by_label();
    for label in ["esp", "vpn"] {
        let truth = counters[&format!("labelflow-count:{label}")];
        assert!(truth.packets > 0, "{label}: the kernel counted nothing");
        assert_eq!(
            by_label.get(label).copied().unwrap_or_default(),
            truth,
            "{label}"
        );
    }
    let other = counters["labelflow-count:other"];
    assert_eq!(
        by_label.get("other").copied().unwrap_or_default(),
        other,
        "other"
    );

    // Every UDP-encapsulated ESP flow names an SA strongSwan negotiated, and rekeys show as
    // new SPIs: the gateway's outbound and inbound SPI of at least three generations.
    let negotiated: BTreeSet<u32> = sas.values().flat_map(|s| [s.spi_in, s.spi_out]).collect();
    let exported = export.udp_esp_by_spi();
    let unknown: Vec<String> = exported
        .keys()
        .filter(|spi| !negotiated.contains(spi))
        .map(|spi| format!("{spi:08x}"))
        .collect();
    assert!(
        unknown.is_empty(),
        "SPIs strongSwan never listed: {unknown:?} (listed {negotiated:x?})"
    );
    assert!(
        sas.len() >= 3 && exported.len() >= 4,
        "expected two rekeys: {} SAs listed, {} SPIs exported",
        sas.len(),
        exported.len()
    );
    // ESP is the bulk of the wire label; IKE (rekeys) is the rest of it.
    let esp_wire: u64 = exported.values().map(|c| c.packets).sum();
    let wire = counters["labelflow-count:esp"];
    assert!(
        esp_wire > 0 && esp_wire < wire.packets,
        "ESP {esp_wire} of {wire:?}"
    );
    // Named by charon over vici: every wire flow (ESP by SPI, IKE by peer) and every inner
    // flow (by traffic selector) is the connection's, across rekeys.
    let unnamed: Vec<_> = export
        .flows
        .iter()
        .filter(|f| matches!(f.label.as_deref(), Some("esp" | "vpn")))
        .filter(|f| f.tunnel.as_deref() != Some(CONNECTION))
        .collect();
    assert!(
        unnamed.is_empty(),
        "flows not named {CONNECTION}: {unnamed:?}\nprobe log:\n{}",
        stopped.stderr
    );
    assert!(
        export
            .flows
            .iter()
            .filter(|f| f.label.as_deref() == Some("other"))
            .all(|f| f.tunnel.is_none()),
        "a flow outside the tunnel was named"
    );

    // strongSwan's own SA counters (inner packets, both directions, read while each SA was
    // still listed: a rekeyed SA stays listed for its delete delay) equal the inner label.
    let sa_packets: u64 = sas.values().map(|s| s.packets_in + s.packets_out).sum();
    let sa_bytes: u64 = sas.values().map(|s| s.bytes_in + s.bytes_out).sum();
    let inner = counters["labelflow-count:vpn"];
    eprintln!(
        "SAs {}, SPIs exported {}, strongSwan inner {sa_packets} packets {sa_bytes} bytes, \
         kernel vpn {inner:?}, wire {wire:?}",
        sas.len(),
        exported.len()
    );
    assert_eq!(
        (sa_packets, sa_bytes),
        (inner.packets, inner.bytes),
        "strongSwan's SA counters against the kernel's inner label"
    );
    drop(pair);
}
