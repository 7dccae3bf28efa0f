//! The ingest journal through the library: records written to segment files, named by
//! journal rows, merged a slice at a time with commits part-way through rows and fresh
//! mergers in between (as after a restart), must give exactly the aggregates of one merge
//! in place; merged segments are removed, unreferenced ones too.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use common::*;
use labelflow_collector::aggregate::Delta;
use labelflow_collector::config::Config;
use labelflow_collector::ingest::Ingest;
use labelflow_collector::journal::{self, Merger, Syncer, Writer};
use labelflow_collector::store::{Reader, Store};

const EXPORTER: &str = "192.0.2.1";

/// A seeded stream: random hosts, ports, labels and times over the last six hours, some
/// flows long enough to span many buckets.
fn stream(seed: u64, datagrams: u32) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    let now_ms = u64::from(now_secs()) * 1000;
    let mut out = vec![ipfix_template(now_secs(), 0, 1)];
    let labels = ["esp", "vpn", "other", "web", "voip"];
    for seq in 0..datagrams {
        let flows: Vec<Flow> = (0..20)
            .map(|_| {
                let end_ms = now_ms - rng.below(6 * 3_600_000);
                let len = if rng.below(10) == 0 {
                    rng.below(3_600_000)
                } else {
                    rng.below(30_000)
                };
                let bytes = 40 + rng.below(100_000);
                Flow {
                    src: Ipv4Addr::from(rng.next_u64() as u32),
                    dst: Ipv4Addr::from(rng.next_u64() as u32),
                    protocol: [6, 17, 50][rng.below(3) as usize],
                    src_port: rng.below(65536) as u16,
                    dst_port: rng.below(65536) as u16,
                    spi: 0,
                    bytes,
                    packets: 1 + bytes / 1000,
                    start_ms: end_ms - len,
                    end_ms,
                    group: 1,
                    label: labels[rng.below(labels.len() as u64) as usize].to_string(),
                }
            })
            .collect();
        out.push(ipfix_data(now_secs(), seq * 20, 1, &flows));
    }
    out
}

/// Every stored row of every resolution and dimension, keyed for comparison.
fn stored(db: &std::path::Path) -> BTreeMap<(i64, String, i64, String), [u64; 5]> {
    let r = Reader::open(db).unwrap();
    let mut out = BTreeMap::new();
    for res in r.resolutions().unwrap() {
        for dim in labelflow_collector::aggregate::Dim::ALL {
            for row in r.rows(res, dim, i64::MIN, i64::MAX).unwrap() {
                let c = row.counters;
                out.insert(
                    (res, dim.name().to_string(), row.bucket, row.key),
                    [c.bytes, c.packets, c.flows, c.bytes_in, c.bytes_out],
                );
            }
        }
    }
    out
}

/// The journal path: batches written and synced to segments (small segments, so that
/// several are removed), committed as journal rows, merged with a tiny cell bound and a
/// fresh merger every few slices; the aggregates equal one in-place merge of the same
/// datagrams, and no segment file is left once everything is merged.
#[test]
fn sliced_merges_across_restarts_equal_one_merge() {
    let cfg = Config::defaults();
    let from: IpAddr = EXPORTER.parse().unwrap();
    let data = stream(7, 400);
    let dir = tempfile::tempdir().unwrap();

    // In place: the whole stream, one merge.
    let want_db = dir.path().join("want.db");
    let mut want_store = Store::open(&want_db, 8).unwrap();
    let mut ingest = Ingest::new(&cfg);
    for d in &data {
        ingest.datagram(from, d).unwrap();
    }
    let batch = ingest.take_batch();
    let deltas: &[Delta] = &batch.deltas;
    want_store.commit(deltas, &[], &[]).unwrap();

    // Journaled: a batch every 37 datagrams, its records written, synced and committed.
    let db = dir.path().join("j.db");
    let mut store = Store::open(&db, 8).unwrap();
    let first = journal::recover(store.connection(), &db).unwrap();
    let mut writer = Writer::create(&db, first).unwrap();
    let mut syncer = Syncer::default();
    let mut ingest = Ingest::new(&cfg);
    let mut segments = Vec::new();
    for chunk in data.chunks(37) {
        for d in chunk {
            ingest.datagram(from, d).unwrap();
        }
        let mut b = ingest.take_journal();
        if let Some(p) = b.parts.take() {
            let e = writer.append(&[&p.names, &p.records]).unwrap();
            syncer.sync(&db, e.segment).unwrap();
            segments.push(e.segment);
            b.written = Some((e, p.count));
        }
        store.commit_journal(&b, 0).unwrap();
        // A new segment every batch, as a full one would start.
        writer = Writer::create(&db, e_next(&segments, first)).unwrap();
    }
    assert!(segments.len() > 5, "several segments: {segments:?}");

    // Merged a few hundred records at a time with commits part-way through rows; every
    // third slice a new merger resumes from what the database says (a restart).
    let mut merger = Merger::new(&cfg.agg, false);
    let (mut fed, mut slices, mut partial_commits) = (0, 0, 0);
    loop {
        if !merger.busy() {
            let Some(row) = journal::read(store.connection(), &db, fed, 1)
                .unwrap()
                .pop()
            else {
                break;
            };
            fed = row.id;
            merger.start(row);
        }
        merger.step(300);
        slices += 1;
        if slices % 2 == 0 {
            let m = merger.take();
            partial_commits += usize::from(m.partial.is_some());
            store.commit_merged(&m).unwrap();
        }
        if slices % 3 == 0 {
            // Uncommitted slices are dropped with the merger, as SIGKILL would drop them.
            merger = Merger::new(&cfg.agg, false);
            fed = 0;
        }
    }
    let m = merger.take();
    store.commit_merged(&m).unwrap();
    assert!(
        partial_commits > 10,
        "commits part-way through rows: {partial_commits}"
    );
    assert_eq!(journal::backlog(store.connection()).unwrap().0, 0);

    let (want, got) = (stored(&want_db), stored(&db));
    assert!(
        want.len() > 10_000,
        "a stream of many keys: {} rows",
        want.len()
    );
    assert_eq!(want.len(), got.len());
    for (k, v) in &want {
        assert_eq!(got.get(k), Some(v), "{k:?}");
    }

    // Every segment is merged: removed but the one a writer may still be writing.
    let last = *segments.last().unwrap() + 1;
    journal::remove_merged(store.connection(), &db, last).unwrap();
    assert_eq!(journal::segment_files(&db).unwrap(), vec![last]);
    // A start removes segments no row refers to (the writer's unused one here) and
    // numbers the next after every segment seen.
    assert_eq!(journal::recover(store.connection(), &db).unwrap(), last + 1);
    assert!(journal::segment_files(&db).unwrap().is_empty());
}

/// The segment after the last one written.
fn e_next(segments: &[u64], first: u64) -> u64 {
    segments.last().map_or(first, |s| s + 1)
}
