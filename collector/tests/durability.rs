//! Durability: SIGKILL mid-stream loses nothing committed, every datagram is in the database
//! entirely or not at all, and a restarted collector decodes data records at once from the
//! templates it persisted.

mod common;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;

const FLOWS_PER_DATAGRAM: u64 = 10;
const BYTES_PER_FLOW: u64 = 1000;

fn datagram(seq: u32, t0_ms: u64) -> Vec<u8> {
    let flows: Vec<Flow> = (0..FLOWS_PER_DATAGRAM)
        .map(|i| {
            flow(
                if i % 2 == 0 { "esp" } else { "other" },
                BYTES_PER_FLOW,
                t0_ms + i * 10,
            )
        })
        .collect();
    ipfix_data(now_secs(), seq * FLOWS_PER_DATAGRAM as u32, 1, &flows)
}

#[test]
fn sigkill_loses_nothing_committed_and_restart_decodes_immediately() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    let extra = "[store]\ncommit_interval = \"50ms\"\ncommit_datagrams = 7\n";
    let t0_ms = u64::from(now_secs() - 300) * 1000;
    let per_datagram = FLOWS_PER_DATAGRAM * BYTES_PER_FLOW;

    // Phase 1: template, then 50 data datagrams, all committed.
    let c = Collector::start(dir.path(), &db, extra);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.send(&sock, &ipfix_template(now_secs(), 0, 1));
    for i in 0..50 {
        c.send(&sock, &datagram(i, t0_ms));
    }
    c.wait_committed(51);

    // Phase 2: a sender keeps going while the collector is killed.
    let running = Arc::new(AtomicBool::new(true));
    let sender = {
        let running = running.clone();
        let udp = c.udp;
        std::thread::spawn(move || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut i = 50;
            while running.load(Ordering::Relaxed) {
                let _ = s.send_to(&datagram(i, t0_ms), ("127.0.0.1", udp));
                i += 1;
                if i % 20 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        })
    };
    // Kill it while it commits what the sender keeps sending.
    c.wait_committed(51 + 20);
    let committed_seen = c.metric("labelflow_collector_committed_datagrams_total");
    c.kill9();
    running.store(false, Ordering::Relaxed);
    sender.join().unwrap();

    // What was committed: the aggregates and the journal rows not merged yet (merged here
    // as the next start would).
    merge_journal(&db);
    let (bytes, packets, flows) = all_time_totals(&db, "label");
    assert!(
        bytes >= (committed_seen - 1) * per_datagram,
        "lost committed data: {bytes} bytes"
    );
    assert_eq!(
        bytes % per_datagram,
        0,
        "a datagram was committed partially"
    );
    assert_eq!(flows * BYTES_PER_FLOW, bytes);
    assert_eq!(packets, flows * 2);

    // Phase 3: restart, send data only (no template): decoded at once.
    let c = Collector::start(dir.path(), &db, extra);
    for i in 0..20 {
        c.send(&sock, &datagram(10_000 + i, t0_ms));
    }
    c.wait_committed(20);
    assert_eq!(
        c.metric("labelflow_collector_flow_records_total"),
        20 * FLOWS_PER_DATAGRAM
    );
    let missing = c
        .try_get("/metrics")
        .unwrap()
        .lines()
        .find(|l| {
            l.starts_with("labelflow_collector_decode_errors_total{reason=\"missing_template\"}")
        })
        .map(|l| l.rsplit(' ').next().unwrap().to_string());
    assert_eq!(missing.as_deref(), Some("0"));
    c.term();
    let (after, _, _) = all_time_totals(&db, "label");
    assert_eq!(after, bytes + 20 * per_datagram);
    // The view of esp + other equals the label totals (config-free check of labels).
    let labels = all_time_bytes(&db, "label", "label");
    let esp = labels.iter().find(|(l, _)| l == "esp").unwrap();
    assert_eq!(esp.1 * 2, after);
}

/// Options state (applicationId → applicationName) commits with the datagrams that carried
/// it: after SIGKILL and a restart, records that name only their applicationId are labelled
/// at once, not `unlabelled` until the exporter's next options refresh.
#[test]
fn options_state_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    let extra = "[store]\ncommit_interval = \"50ms\"\n";
    let t0_ms = u64::from(now_secs() - 300) * 1000;
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();

    let c = Collector::start(dir.path(), &db, extra);
    c.send(&sock, &app_templates(now_secs(), 0, 9));
    c.send(&sock, &app_options(now_secs(), 0, 9, 7, "voip"));
    c.send(&sock, &app_data(now_secs(), 0, 9, 7, 1000, t0_ms));
    c.wait_committed(3);
    c.kill9();

    let c = Collector::start(dir.path(), &db, extra);
    c.send(&sock, &app_data(now_secs(), 1, 9, 7, 500, t0_ms));
    c.wait_committed(1);
    c.term();
    let totals = all_time_bytes(&db, "label", "label");
    assert_eq!(totals, vec![("voip".to_string(), 1500)]);
}

/// Sequence state commits in the same transaction as the counts: after SIGKILL and a
/// restart, each record an exporter sent is either in the database or counted missing by
/// the first sequence gap, exactly.
#[test]
fn sigkill_then_restart_accounts_for_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let extra = "[store]\ncommit_interval = \"20ms\"\ncommit_datagrams = 5\n";
    let t0_ms = u64::from(now_secs() - 300) * 1000;
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();

    let c = Collector::start(dir.path(), &db, extra);
    c.send(&sock, &ipfix_template(now_secs(), 0, 1));
    for i in 0..30 {
        c.send(&sock, &datagram(i, t0_ms));
    }
    c.wait_committed(31);
    // A burst, and SIGKILL while part of it is still uncommitted.
    let sent = 30 + 400;
    for i in 30..sent {
        c.send(&sock, &datagram(i, t0_ms));
    }
    c.kill9();
    // Committed: merged into the aggregates, or journaled (merged here as the next start
    // would).
    merge_journal(&db);
    let (_, _, committed_flows) = all_time_totals(&db, "label");

    let c = Collector::start(dir.path(), &db, extra);
    c.send(&sock, &datagram(sent, t0_ms));
    c.wait_committed(1);
    let lost = c.metric("labelflow_collector_lost_across_restart_total");
    // SIGKILL came right after a burst of 400 datagrams: some were not committed yet.
    assert!(
        lost > 0,
        "nothing was in flight at SIGKILL: the test proves nothing"
    );
    assert_eq!(
        c.metric("labelflow_collector_sequence_lost_total"),
        lost,
        "the only gap is the restart's"
    );
    c.term();
    assert_eq!(
        committed_flows + lost,
        u64::from(sent) * FLOWS_PER_DATAGRAM,
        "committed {committed_flows} + counted missing {lost}"
    );
    let (_, _, flows) = all_time_totals(&db, "label");
    assert_eq!(flows, committed_flows + FLOWS_PER_DATAGRAM);
}

/// Merge what a killed collector left in the journal, as its next start would.
fn merge_journal(db: &std::path::Path) {
    use labelflow_collector::config::Config;
    use labelflow_collector::journal::{merge_all, Merger};
    let cfg = Config::defaults();
    let mut store = labelflow_collector::store::Store::open(db, 8).unwrap();
    let mut merger = Merger::new(&cfg.agg, false);
    merge_all(&mut store, &mut merger, cfg.max_pending_cells.get()).unwrap();
}
