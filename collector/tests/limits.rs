//! The named limits on what an exporter can make the ingest keep, driven through the
//! library with real IPFIX messages.

mod common;

use std::net::IpAddr;

use common::*;
use labelflow_collector::config::Config;
use labelflow_collector::ingest::{Ingest, Snapshot};
use labelflow_collector::journal::{self, Merger};

fn ingest(limits: &str) -> Ingest {
    let cfg = Config::parse(&format!("[limits]\n{limits}"), "limits.toml").unwrap();
    Ingest::new(&cfg)
}

const EXPORTER: &str = "192.0.2.1";

#[test]
fn application_names_per_scope_are_bounded() {
    let mut ing = ingest("max_application_names = 2\n");
    let from: IpAddr = EXPORTER.parse().unwrap();
    ing.datagram(from, &app_templates(now_secs(), 0, 1))
        .unwrap();
    for (seq, (sel, name)) in [(1, "voip"), (2, "web"), (3, "evil")].iter().enumerate() {
        ing.datagram(from, &app_options(now_secs(), seq as u32, 1, *sel, name))
            .unwrap();
    }
    let t0 = u64::from(now_secs() - 100) * 1000;
    ing.datagram(from, &app_data(now_secs(), 3, 1, 1, 100, t0))
        .unwrap();
    ing.datagram(from, &app_data(now_secs(), 4, 1, 3, 7, t0))
        .unwrap();
    let mut s = Snapshot::default();
    ing.fill(&mut s);
    assert_eq!(s.sessions.refused_application_names, 1);
    let labels: Vec<(&str, u64)> = s.labels.iter().map(|l| (l.0.as_str(), l.1)).collect();
    assert!(labels.is_empty(), "totals count at take: {labels:?}");
    ing.take_batch();
    ing.merger().fill(&mut s, 64);
    let mut labels: Vec<(String, u64)> = s.labels.iter().map(|l| (l.0.clone(), l.1)).collect();
    labels.sort();
    assert_eq!(
        labels,
        vec![("unlabelled".to_string(), 7), ("voip".to_string(), 100)]
    );
}

#[test]
fn pending_bounds_ask_for_an_early_commit() {
    let from: IpAddr = EXPORTER.parse().unwrap();
    let mut ing = ingest("max_pending_template_bytes = 16\n");
    assert!(!ing.over_bound());
    ing.datagram(from, &ipfix_template(now_secs(), 0, 1))
        .unwrap();
    assert!(
        ing.over_bound(),
        "a template of more than 16 octets is pending"
    );
    ing.take_batch();
    assert!(!ing.over_bound());

    // The journal's merge counts the cells it holds, which bound its commits.
    let mut ing = ingest("");
    ing.datagram(from, &ipfix_template(now_secs(), 0, 1))
        .unwrap();
    let t0 = u64::from(now_secs() - 600) * 1000;
    let flows: Vec<Flow> = (0..3).map(|i| flow("esp", 100, t0 + i * 60_000)).collect();
    ing.datagram(from, &ipfix_data(now_secs(), 0, 1, &flows))
        .unwrap();
    let b = ing.take_journal();
    assert_eq!(b.datagrams, 2);
    let mut m = Merger::new(&Config::defaults().agg, false);
    m.start(journal::Row {
        id: 1,
        datagrams: 2,
        records: b.parts.expect("records").joined(),
        merged: (0, 0),
    });
    assert_eq!(m.step(2), 2);
    assert!(m.busy(), "one record left");
    assert_eq!(m.step(10), 1);
    assert!(!m.busy());
    assert_eq!(
        m.pending_cells(),
        6,
        "3 buckets × 2 cells (label and protocol, port)"
    );
    let merged = m.take();
    assert_eq!(
        (merged.upto, merged.datagrams, merged.records),
        (Some(1), 2, 3)
    );
    assert_eq!(m.pending_cells(), 0);
}

#[test]
fn allowlist_refuses_before_decoding() {
    let cfg = Config::parse("allowed_exporters = [\"192.0.2.0/24\"]\n", "a.toml").unwrap();
    let mut adm = labelflow_collector::ingest::Admission::new(&cfg);
    assert!(adm.admit(EXPORTER.parse().unwrap()));
    for _ in 0..3 {
        assert!(!adm.admit("198.51.100.7".parse().unwrap()));
    }
    let mut s = Snapshot::default();
    adm.fill(&mut s);
    assert_eq!(s.refused_sources, vec![("198.51.100.7".to_string(), 3)]);
    // Nothing reached the decoder.
    let ing = Ingest::new(&cfg);
    ing.fill(&mut s);
    assert_eq!(s.sessions.datagrams, 0);
}

#[test]
fn long_template_records_are_refused_before_the_parser_keeps_them() {
    use labelflow_collector::session::DecodeError;
    let from: IpAddr = EXPORTER.parse().unwrap();
    // The template has 12 fields: 4 + 12 × 4 = 52 octets.
    let mut ing = ingest("max_template_bytes = 51\n");
    assert_eq!(
        ing.datagram(from, &ipfix_template(now_secs(), 0, 1)).err(),
        Some(DecodeError::Limit)
    );
    assert!(!ing.over_bound());
    assert!(ing.take_batch().templates.is_empty());
    // Its data then has no template.
    let t0 = u64::from(now_secs() - 60) * 1000;
    let r = ing.datagram(from, &ipfix_data(now_secs(), 0, 1, &[flow("esp", 1, t0)]));
    assert_eq!(r.unwrap().error, Some(DecodeError::MissingTemplate));

    let mut ing = ingest("max_template_bytes = 52\n");
    ing.datagram(from, &ipfix_template(now_secs(), 0, 1))
        .unwrap();
    assert_eq!(ing.take_batch().templates.len(), 1);
}
