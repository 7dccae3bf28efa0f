//! labelflow-probe against the kernel: inside the lab's gateway, its IPFIX export per label
//! equals the ruleset's own counters, with iptables and with nftables, and it reads the same
//! through nfcapd/nfdump. Needs root and the built probe (`cargo build --workspace --bins`).

use std::collections::BTreeMap;
use std::time::Duration;

use labelflow_testkit::nfcapd::Nfcapd;
use labelflow_testkit::tools;
use labelflow_tests::lab::{addr, Lab, Role};
use labelflow_tests::process;
use labelflow_tests::rules::{Counter, Firewall, GROUPS};
use labelflow_tests::scenario::run_probe;
use labelflow_tests::traffic::{self, Mix, MixReport};

fn require_root() {
    tools::require_root("the kernel lab: network namespaces, NFLOG rules");
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

fn exact_per_label(fw: Firewall) {
    require_root();
    let lab = Lab::up().expect("lab up");
    let mut sent = MixReport::default();
    let run = run_probe(
        &lab,
        fw,
        &args(&["--stats-interval", "1s"]),
        |lab| {
            sent = traffic::run_mix(lab, &Mix::standard())?;
            Ok(())
        },
        |_| Ok(()),
    )
    .unwrap_or_else(|e| panic!("probe run: {e}"));
    assert!(
        run.probe.status.success(),
        "probe exit {}: {}",
        run.probe.status,
        run.probe.stderr
    );
    assert!(
        run.export.errors.is_empty(),
        "decode errors: {:?}",
        run.export.errors
    );
    assert!(
        !run.export.flows.is_empty(),
        "no flow exported; probe stderr:\n{}",
        run.probe.stderr
    );

    let by_label = run.export.totals_by_label();
    let by_group = run.export.totals_by_group();
    for (group, label) in GROUPS {
        let truth = run.counters[label];
        assert!(truth.packets > 0, "{label}: no traffic counted");
        assert_eq!(
            by_label.get(label),
            Some(&truth),
            "{}: label {label} vs kernel counter",
            fw.name()
        );
        assert_eq!(
            by_group.get(&Some(u32::from(group))),
            Some(&truth),
            "{}: group {group}",
            fw.name()
        );
    }
    for f in &run.export.flows {
        let expect = GROUPS
            .iter()
            .find(|(g, _)| Some(u32::from(*g)) == f.group)
            .map(|(_, l)| *l);
        assert_eq!(
            f.label.as_deref(),
            expect,
            "label and group disagree: {f:?}"
        );
    }
    // ESP flows are split by SPI: every SPI sent is its own flow(s), with its exact count.
    let expected_spis: BTreeMap<u32, u64> = sent.esp_per_spi.iter().copied().collect();
    assert_eq!(run.export.packets_by_spi(), expected_spis);
    assert!(
        run.export
            .flows
            .iter()
            .filter(|f| f.label.as_deref() == Some("esp"))
            .all(|f| f.spi.is_some()),
        "an ESP flow without IPSecSPI"
    );
}

#[test]
fn probe_export_equals_iptables_counters() {
    exact_per_label(Firewall::Iptables);
}

#[test]
fn probe_export_equals_nftables_counters() {
    exact_per_label(Firewall::Nftables);
}

/// `%opid %pkt %byt %nbnam` lines summed per observation point, and the lines.
fn nfdump_totals(text: &str) -> (BTreeMap<u32, Counter>, Vec<String>) {
    let mut totals: BTreeMap<u32, Counter> = BTreeMap::new();
    let mut lines = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // The name last: it may hold spaces.
        assert!(f.len() >= 4, "unexpected nfdump line {line:?}");
        // nfdump 1.7.1 prints %opid in hex (0x0000000002).
        let opid = match f[0].strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => f[0].parse(),
        };
        let c = totals.entry(opid.expect("opid")).or_default();
        c.packets += f[1].parse::<u64>().expect("packets");
        c.bytes += f[2].parse::<u64>().expect("bytes");
        lines.push(line.to_owned());
    }
    (totals, lines)
}

/// The probe's IPFIX through Debian's nfcapd: per-group totals equal the kernel's counters,
/// and `%nbnam` shows the label of every flow (`--application-id varlen`, which nfdump reads
/// from 1.7.1 on; the groups have no description, so nfdump prints `LABEL/`). Every file
/// nfcapd wrote is read: a run across its hourly rotation leaves two.
#[test]
fn nfcapd_reads_the_same_totals() {
    require_root();
    let lab = Lab::up().expect("lab up");
    let dir = std::env::temp_dir().join(format!("{}-nfcapd", lab.prefix()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("nfcapd dir");
    let nfcapd = Nfcapd::start(&dir, Some(&lab.ns(Role::Gw)), &["-B", "8000000"]);
    let port = nfcapd.port();
    let run = run_probe(
        &lab,
        Firewall::Iptables,
        &args(&[
            "--export",
            &format!("ipfix://127.0.0.1:{port}"),
            "--application-id",
            "varlen",
        ]),
        |lab| traffic::run_mix(lab, &Mix::standard()).map(|_| ()),
        |_| Ok(()),
    )
    .unwrap_or_else(|e| panic!("probe run: {e}"));
    assert!(run.probe.status.success(), "probe: {}", run.probe.stderr);
    nfcapd.wait_drained();
    // SIGTERM makes nfcapd close and rename its file.
    let text = nfcapd
        .stop()
        .nfdump(&["-N", "-q", "-o", "fmt:%opid %pkt %byt %nbnam"]);
    let (totals, lines) = nfdump_totals(&text);
    let _ = std::fs::remove_dir_all(&dir);
    for (group, label) in GROUPS {
        assert_eq!(
            totals.get(&u32::from(group)),
            Some(&run.counters[label]),
            "nfdump group {group} ({label})"
        );
    }
    for line in &lines {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        let f: Vec<&str> = line.splitn(4, ' ').collect();
        let opid = u32::from_str_radix(f[0].trim_start_matches("0x"), 16).expect("opid");
        let label = GROUPS
            .iter()
            .find(|(g, _)| u32::from(*g) == opid)
            .map(|(_, l)| *l)
            .unwrap_or_else(|| panic!("unknown group in {line:?}"));
        assert_eq!(
            f.get(3).copied(),
            Some(format!("{label}/").as_str()),
            "nfdump's %nbnam for {line:?}"
        );
    }
}

#[test]
fn loss_is_exported_as_ignored_packets() {
    require_root();
    let lab = Lab::up().expect("lab up");
    let gw: std::net::IpAddr = addr::GW_WAN_V4.into();
    let run = run_probe(
        &lab,
        Firewall::Iptables,
        // A receive buffer far too small for a flood: the kernel must drop batches.
        &args(&["--rcvbuf", "4096", "--stats-interval", "1s"]),
        |lab| {
            traffic::esp(lab, gw, &[0xf100d, 0xf100e], 100_000, 64)?;
            // Then single packets, each once the previous one was read: the probe sees the
            // sequence numbers after the flood, so every gap is known.
            for _ in 0..3 {
                process::wait_nflog_drained(lab, 1, Duration::from_secs(15))?;
                traffic::esp(lab, gw, &[0x7e57], 1, 64)?;
            }
            process::wait_nflog_drained(lab, 1, Duration::from_secs(15))
        },
        |probe| {
            assert!(probe.alive(), "the probe died of the flood");
            Ok(())
        },
    )
    .unwrap_or_else(|e| panic!("probe run: {e}"));
    assert!(run.probe.status.success(), "probe: {}", run.probe.stderr);
    let exported = run
        .export
        .totals_by_label()
        .get("esp")
        .copied()
        .unwrap_or_default();
    let ignored = run.export.ignored.get(&1).copied().unwrap_or(0);
    let truth = run.counters["esp"];
    assert!(
        ignored > 0,
        "no loss reported (exported {exported:?} of {truth:?}); stderr:\n{}",
        run.probe.stderr
    );
    assert_eq!(
        exported.packets + ignored,
        truth.packets,
        "exported {exported:?} + ignored {ignored} vs kernel {truth:?}"
    );
    assert_eq!(
        run.export.packets_by_spi().get(&0x7e57),
        Some(&3),
        "the packets after the flood"
    );
}

#[test]
fn missing_probe_binary_is_reported_clearly() {
    // The message the other tests fail with when the workspace binaries were not built.
    let err = process::find_binary("labelflow-no-such-binary").expect_err("cannot exist");
    let msg = err.to_string();
    assert!(msg.contains("cargo build --workspace --bins"), "{msg}");
}
