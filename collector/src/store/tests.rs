use super::*;

/// A label delta of `bytes` in the minute bucket at 120 s (one packet, one flow).
pub(crate) fn delta(key: &str, bytes: u64) -> Delta {
    Delta {
        resolution: 60,
        bucket: 120,
        dim: Dim::Label,
        key: key.into(),
        counters: Counters {
            bytes,
            packets: 1,
            flows: 1,
            ..Counters::default()
        },
    }
}

#[test]
fn commits_add_up_and_templates_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let mut s = Store::open(&path, 2).unwrap();
    let scope = ScopeKey {
        exporter: "10.0.0.1".parse().unwrap(),
        domain: 3,
    };
    let t = |id: u16, b: u8| ScopedTemplate {
        scope,
        record: TemplateRecord {
            version: 10,
            set_id: 2,
            template_id: id,
            bytes: vec![1, b, 0, 1, 0, 8, 0, 4],
        },
    };
    let mut ctx = ExporterContext::default();
    ctx.applications.insert(
        ApplicationKey {
            engine: 6,
            selector: 7,
        },
        "voip".into(),
    );
    ctx.samplers.insert(3, 100);
    ctx.sampling_interval = Some(4);
    s.commit(&[delta("a", 10)], &[t(256, 0), t(257, 1)], &[])
        .unwrap();
    s.commit(
        &[delta("a", 5), delta("b", 1)],
        &[t(258, 2)],
        &[(scope, ctx.clone())],
    )
    .unwrap();
    drop(s);
    let s = Store::open(&path, 2).unwrap();
    let loaded = s.load_templates().unwrap();
    assert_eq!(loaded.len(), 1);
    let ids: Vec<u16> = loaded[0].1.iter().map(|r| r.template_id).collect();
    assert_eq!(ids, vec![257, 258], "capped at 2, oldest dropped");
    assert_eq!(s.load_contexts().unwrap(), vec![(scope, ctx)]);
    let r = Reader::open(&path).unwrap();
    let rows = r.rows(60, Dim::Label, 0, 1000).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[0].key.as_str(),
            rows[0].counters.bytes,
            rows[0].counters.flows
        ),
        ("a", 15, 2)
    );
    assert_eq!(r.resolutions().unwrap(), vec![60]);
}

/// Commits of more deltas than one upsert statement takes, a key repeated within a
/// statement, across statements and in the single-row rest, add up exactly.
#[test]
fn multi_row_upserts_add_up_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let mut s = Store::open(&path, 2).unwrap();
    let mut want: std::collections::BTreeMap<(i64, String), Counters> = Default::default();
    for round in 0..2u64 {
        let n = 3 * UPSERT_ROWS as u64 + 7 + round;
        let deltas: Vec<Delta> = (0..n)
            .map(|i| {
                let key = format!("k{}", (i * 7) % (n / 2));
                let counters = Counters {
                    bytes: 1000 * i + round,
                    packets: i + 1,
                    flows: i % 3,
                    bytes_in: 2 * i,
                    bytes_out: 3 * i + round,
                };
                let bucket = 60 * (i % 5) as i64;
                want.entry((bucket, key.clone()))
                    .or_default()
                    .add(&counters);
                Delta {
                    resolution: 60,
                    bucket,
                    dim: Dim::Port,
                    key,
                    counters,
                }
            })
            .collect();
        s.commit(&deltas, &[], &[]).unwrap();
    }
    let r = Reader::open(&path).unwrap();
    let got: std::collections::BTreeMap<(i64, String), Counters> = r
        .rows(60, Dim::Port, 0, 1000)
        .unwrap()
        .into_iter()
        .map(|row| ((row.bucket, row.key), row.counters))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn version_1_database_gains_contexts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE agg (
                 res INTEGER NOT NULL, dim TEXT NOT NULL, bucket INTEGER NOT NULL,
                 key TEXT NOT NULL,
                 bytes INTEGER NOT NULL, packets INTEGER NOT NULL, flows INTEGER NOT NULL,
                 bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL,
                 PRIMARY KEY (res, dim, bucket, key)) WITHOUT ROWID;
             CREATE TABLE templates (
                 exporter TEXT NOT NULL, domain INTEGER NOT NULL,
                 template_id INTEGER NOT NULL, version INTEGER NOT NULL,
                 set_id INTEGER NOT NULL, record BLOB NOT NULL, seq INTEGER NOT NULL,
                 PRIMARY KEY (exporter, domain, template_id));
             INSERT INTO agg VALUES (60, 'label', 120, 'a', 7, 1, 1, 0, 0);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let s = Store::open(&path, 8).unwrap();
    let v: i64 = s
        .connection()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    assert!(s.load_contexts().unwrap().is_empty());
    s.connection()
        .execute(
            "INSERT INTO contexts VALUES ('10.0.0.9', 1, 'not json')",
            [],
        )
        .unwrap();
    assert!(
        s.load_contexts().unwrap().is_empty(),
        "unreadable row skipped"
    );
    let rows = Reader::open(&path)
        .unwrap()
        .rows(60, Dim::Label, 0, 1000)
        .unwrap();
    assert_eq!(rows[0].counters.bytes, 7, "existing data kept");
}

#[test]
fn counters_saturate_instead_of_turning_real() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut s = Store::open(&path, 8).unwrap();
    s.commit(&[delta("a", u64::MAX)], &[], &[]).unwrap();
    s.commit(&[delta("a", 5)], &[], &[]).unwrap();
    s.commit(&[delta("a", i64::MAX as u64 - 1)], &[], &[])
        .unwrap();
    let rows = Reader::open(&path)
        .unwrap()
        .rows(60, Dim::Label, 0, 1000)
        .unwrap();
    assert_eq!(rows[0].counters.bytes, i64::MAX as u64);
    assert_eq!(rows[0].counters.packets, 3);
}

#[test]
fn prune_respects_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("p.db"), 8).unwrap();
    s.commit(&[delta("a", 1)], &[], &[]).unwrap();
    assert_eq!(s.prune(&[60], &[60], 150).unwrap(), 0);
    assert_eq!(s.prune(&[60], &[60], 181).unwrap(), 1);
}
