//! The ClickHouse sink against real servers (Debian `clickhouse-server`, started by the test
//! with its own configuration and ports): what collectors commit to SQLite reaches ClickHouse
//! exactly, once, across collectors, shards, outages and connections cut mid-insert.

mod common;
#[path = "clickhouse/proxy.rs"]
mod proxy;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use labelflow_testkit::clickhouse::{ClickHouse, CLUSTER, USER};
use labelflow_testkit::wait::poll_until;
use proxy::Proxy;

/// How long a sink may take to empty its outbox once ClickHouse is reachable.
const SINK_TIMEOUT: Duration = Duration::from_secs(60);

/// A seeded stream of one exporter: `datagrams` messages of 20 flows over the last two hours,
/// labels from `labels`, random inside hosts, ports and sizes.
fn stream(seed: u64, labels: &[&str], datagrams: u32) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    let now_ms = u64::from(now_secs()) * 1000;
    let mut out = vec![ipfix_template(now_secs(), 0, 1)];
    for d in 0..datagrams {
        let flows: Vec<Flow> = (0..20)
            .map(|_| {
                let start_ms = now_ms - 7_200_000 + rng.below(7_000_000);
                Flow {
                    src: Ipv4Addr::new(192, 168, rng.below(4) as u8, rng.below(50) as u8),
                    dst: Ipv4Addr::new(198, 51, 100, rng.below(20) as u8),
                    protocol: [6, 17, 1][rng.below(3) as usize],
                    src_port: 1024 + rng.below(30000) as u16,
                    dst_port: [53, 443, 80, 123][rng.below(4) as usize],
                    spi: 0,
                    bytes: 40 + rng.below(100_000),
                    packets: 1 + rng.below(100),
                    start_ms,
                    end_ms: start_ms + rng.below(180_000),
                    group: 1,
                    label: labels[rng.below(labels.len() as u64) as usize].to_string(),
                }
            })
            .collect();
        out.push(ipfix_data(now_secs(), d * 20, 1, &flows));
    }
    out
}

fn sink_config(url: &str, name: &str, cluster: Option<&str>) -> String {
    sink_config_with(url, name, cluster, 8)
}

fn sink_config_with(url: &str, name: &str, cluster: Option<&str>, backlog: usize) -> String {
    let pw = pw_file();
    let cluster = cluster.map_or(String::new(), |c| format!("cluster = \"{c}\"\n"));
    format!(
        "[hosts]\nnetworks = [\"192.168.0.0/16\"]\n\
         [store]\ncommit_interval = \"100ms\"\ncommit_datagrams = 40\n\
         [clickhouse]\nurl = \"{url}\"\nuser = \"{}\"\npassword_file = \"{}\"\n\
         collector_name = \"{name}\"\nmax_backlog = {backlog}\nmax_batches_per_insert = 4\n\
         timeout = \"5s\"\n{cluster}",
        USER.0, pw
    )
}

/// Send every datagram and wait until all are committed.
fn feed(c: &Collector, datagrams: &[Vec<u8>], committed_before: u64) {
    feed_in_commits(c, datagrams, committed_before, 50);
}

/// Send the datagrams `per_commit` at a time, each group committed before the next is sent
/// (a loopback burst can outrun the collector's socket buffer). Every group is therefore at
/// least one commit of its own; how many commits a group takes is up to the collector: a
/// busy store thread gathers whatever arrived meanwhile into one.
fn feed_in_commits(c: &Collector, datagrams: &[Vec<u8>], committed_before: u64, per_commit: usize) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    for (i, d) in datagrams.iter().enumerate() {
        c.send(&sock, d);
        if (i + 1) % per_commit == 0 {
            c.wait_committed(committed_before + i as u64 + 1);
        }
    }
    c.wait_committed(committed_before + datagrams.len() as u64);
}

/// Wait until the outbox is empty: ClickHouse acknowledged every commit so far.
fn wait_sent(c: &Collector) {
    let mut queue = u64::MAX;
    let ok = poll_until(SINK_TIMEOUT, || {
        // An error (no outbox yet: the collector creates it after binding) is not empty.
        queue = labelflow_collector::clickhouse::outbox::waiting(&c.db).unwrap_or(u64::MAX);
        queue == 0
    });
    assert!(
        ok,
        "clickhouse outbox still holds {queue} batches after {SINK_TIMEOUT:?}"
    );
}

/// `report --format json` with `args`.
fn report(args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("report")
        .args([
            "--format",
            "json",
            "--from",
            "0",
            "--to",
            "4102444800",
            "--bucket",
            "1m",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "report {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

type Cells = BTreeMap<(String, String), [u64; 5]>;

/// (bucket, key) -> bytes, packets, flows, bytes_in, bytes_out of a report's rows.
fn cells(j: &serde_json::Value, field: &str) -> Cells {
    let mut m = Cells::new();
    for r in j["rows"].as_array().unwrap() {
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        let v = [
            n("bytes"),
            n("packets"),
            n("flows"),
            n("bytes_in"),
            n("bytes_out"),
        ];
        let key = (
            r["bucket_start"].as_str().unwrap().to_string(),
            r[field].as_str().unwrap().to_string(),
        );
        assert!(
            m.insert(key, v).is_none(),
            "a (bucket, key) twice in one report"
        );
    }
    m
}

fn sum(a: &Cells, b: &Cells) -> Cells {
    let mut m = a.clone();
    for (k, v) in b {
        let e = m.entry(k.clone()).or_default();
        for i in 0..5 {
            e[i] += v[i];
        }
    }
    m
}

fn sqlite(db: &Path, by: &str) -> Cells {
    cells(&report(&["--db", db.to_str().unwrap(), "--by", by]), by)
}

fn clickhouse(url: &str, by: &str) -> Cells {
    let j = report(&[
        "--clickhouse",
        url,
        "--clickhouse-user",
        USER.0,
        "--clickhouse-password-file",
        &pw_file(),
        "--by",
        by,
    ]);
    assert_eq!(j["by"], by);
    cells(&j, by)
}

/// The password file of [`USER`], written once per test process: the tests run in parallel,
/// and rewriting it (truncate, then write) while a collector or a report of another test
/// reads it would hand that reader an empty password.
fn pw_file() -> String {
    static PW: OnceLock<String> = OnceLock::new();
    PW.get_or_init(|| {
        let pw = std::env::temp_dir().join(format!("labelflow-ch-pw-{}", std::process::id()));
        std::fs::write(&pw, USER.1).unwrap();
        pw.display().to_string()
    })
    .clone()
}

/// Every dimension, every minute bucket: ClickHouse equals the SQLite databases summed.
fn assert_equal_to_sqlite(url: &str, dbs: &[&Path]) {
    for by in ["label", "host", "port", "protocol"] {
        let want = dbs
            .iter()
            .fold(Cells::new(), |acc, db| sum(&acc, &sqlite(db, by)));
        assert!(!want.is_empty(), "no {by} rows in SQLite");
        let got = clickhouse(url, by);
        let differ: Vec<_> = want
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(*v))
            .map(|(k, v)| (k, v, got.get(k)))
            .take(5)
            .collect();
        let extra = got.keys().filter(|k| !want.contains_key(*k)).count();
        assert!(
            differ.is_empty() && extra == 0,
            "{by}: ClickHouse differs from SQLite in {} of {} cells (first: {differ:?}), \
             {extra} cells only in ClickHouse",
            want.iter().filter(|(k, v)| got.get(*k) != Some(*v)).count(),
            want.len()
        );
    }
}

#[test]
fn two_collectors_one_clickhouse_equal_their_sqlite_sum() {
    let dir = tempfile::tempdir().unwrap();
    let ch = ClickHouse::start(dir.path());
    let (db_a, db_b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    // Site a's HTTP API reads ClickHouse: every collector's counts.
    let a_config = sink_config(&ch.url(), "site-a", None) + "serve_reports = true\n";
    let a = Collector::start(dir.path(), &db_a, &a_config);
    let b = Collector::start(dir.path(), &db_b, &sink_config(&ch.url(), "site-b", None));
    feed(&a, &stream(1, &["esp", "vpn", "other"], 300), 0);
    feed(&b, &stream(2, &["esp", "voip"], 300), 0);
    wait_sent(&a);
    wait_sent(&b);
    assert_equal_to_sqlite(&ch.url(), &[&db_a, &db_b]);

    // Side by side: each collector's total is its own SQLite total.
    let j = report(&[
        "--clickhouse",
        &ch.url(),
        "--clickhouse-user",
        USER.0,
        "--clickhouse-password-file",
        &pw_file(),
        "--by",
        "collector",
    ]);
    let totals: BTreeMap<String, u64> = j["totals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["collector"].as_str().unwrap().to_string(),
                t["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    let total = |db: &Path| all_time_totals(db, "label").0;
    assert_eq!(totals.get("site-a"), Some(&total(&db_a)));
    assert_eq!(totals.get("site-b"), Some(&total(&db_b)));
    let api = a
        .try_get("/api/report?by=collector&from=0&to=4102444800&bucket=1m")
        .expect("api report");
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api, j, "the HTTP API and the CLI differ");
    let api = a
        .try_get("/api/report?by=label&from=0&to=4102444800&bucket=1m")
        .expect("api report");
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(cells(&api, "label"), clickhouse(&ch.url(), "label"));
    a.term();
    b.term();
}

#[test]
fn outage_and_cut_connections_neither_lose_nor_double_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut ch = ClickHouse::start(dir.path());
    let proxy = Proxy::start(ch.http);
    let db = dir.path().join("f.db");
    let c = Collector::start(
        dir.path(),
        &db,
        &sink_config_with(&proxy.url(), "site-f", None, 3),
    );
    let data = stream(7, &["esp", "vpn", "other"], 400);
    let (part1, rest) = data.split_at(101);
    let (part2, part3) = rest.split_at(100);
    feed(&c, part1, 0);
    wait_sent(&c);

    // Inserts whose answer is lost after the server applied them, and inserts cut halfway.
    proxy.drop_answers.store(2, Ordering::SeqCst);
    proxy.cut_requests.store(2, Ordering::SeqCst);
    let errors = c.metric("labelflow_collector_clickhouse_errors_total");
    let applied = proxy.inserts.load(Ordering::SeqCst);
    feed(&c, part2, 101);
    wait_sent(&c);
    assert_eq!(
        proxy.drop_answers.load(Ordering::SeqCst),
        0,
        "answers were dropped"
    );
    assert_eq!(
        proxy.cut_requests.load(Ordering::SeqCst),
        0,
        "requests were cut"
    );
    assert!(c.metric("labelflow_collector_clickhouse_errors_total") >= errors + 4);
    // The two inserts whose answer was lost were applied, and sent again.
    assert!(proxy.inserts.load(Ordering::SeqCst) >= applied + 3);

    // The server goes away mid-stream; the collector keeps receiving and committing. The
    // datagrams go in 15 groups, each committed before the next is sent: at least 15
    // batches, well past max_backlog (3), whatever the machine's load (a loaded collector
    // gathers a group of 50 into a single commit, and three such batches never need folding).
    ch.kill();
    feed_in_commits(&c, &part3[..150], 201, 10);
    let waiting = labelflow_collector::clickhouse::outbox::waiting(&c.db).unwrap();
    assert!(waiting > 0, "nothing queued while ClickHouse was down");
    // The sink keeps the backlog within max_backlog by merging batches.
    let ok = poll_until(SINK_TIMEOUT, || {
        c.metric("labelflow_collector_clickhouse_folded_batches_total") > 0
            && labelflow_collector::clickhouse::outbox::waiting(&c.db).unwrap() <= 3
            && c.metric("labelflow_collector_clickhouse_queue_batches") > 0
    });
    assert!(
        ok,
        "backlog not folded within max_backlog, or not shown in /metrics"
    );
    ch.restart();
    feed(&c, &part3[150..], 351);
    wait_sent(&c);

    assert_equal_to_sqlite(&proxy.url(), &[&db]);
    // Top-N reports, computed by the server, print exactly what SQLite's do.
    for args in [
        ["--by", "host", "--top", "5"],
        ["--by", "port", "--top", "3"],
        ["--by", "label", "--top", "1"],
    ] {
        let pw = pw_file();
        let ch_args = ["--clickhouse", &proxy.url(), "--clickhouse-user", USER.0];
        let mut with_ch = ch_args.to_vec();
        with_ch.extend(["--clickhouse-password-file", &pw]);
        with_ch.extend(args);
        let mut with_db = vec!["--db", db.to_str().unwrap()];
        with_db.extend(args);
        assert_eq!(report(&with_ch), report(&with_db), "{args:?}");
    }
    // No duplicate survives a merge: one row per cell of the finest resolution.
    merge_every_partition(&ch, "labelflow.agg_60");
    let rows: u64 = ch
        .query("SELECT count() FROM labelflow.agg_60")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let cells: u64 = ["label", "view", "tunnel", "host", "protocol", "port"]
        .iter()
        .map(|by| sqlite(&db, by).len() as u64)
        .sum();
    assert_eq!(
        rows, cells,
        "rows in ClickHouse after merging vs cells in SQLite"
    );
    c.term();
}

/// Merge each partition of `table` into one part. `OPTIMIZE TABLE t FINAL` without a
/// partition merges one selection of parts in one partition only (on 18.16), and does
/// nothing, without an error, when a background merge holds some of the parts; so each
/// partition still in several parts is optimized by id until none is left.
fn merge_every_partition(ch: &ClickHouse, table: &str) {
    let (db, name) = table.split_once('.').unwrap();
    let mut split = String::new();
    let merged = poll_until(SINK_TIMEOUT, || {
        split = ch
            .query(&format!(
                "SELECT partition_id FROM system.parts WHERE active AND database = '{db}' \
                 AND table = '{name}' GROUP BY partition_id HAVING count() > 1"
            ))
            .unwrap();
        for id in split.lines() {
            ch.query(&format!("OPTIMIZE TABLE {table} PARTITION ID '{id}' FINAL"))
                .unwrap();
        }
        split.trim().is_empty()
    });
    assert!(
        merged,
        "{table}: partitions still in several parts: {split}"
    );
}

#[test]
fn two_shards_through_a_distributed_table() {
    let dir = tempfile::tempdir().unwrap();
    let shards = ClickHouse::cluster(dir.path(), 2);
    let (db_a, db_b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    // Shard a's collector also writes raw records.
    let a = Collector::start(
        dir.path(),
        &db_a,
        &(sink_config(&shards[0].url(), "shard-a", Some(CLUSTER)) + "raw = true\n"),
    );
    let b = Collector::start(
        dir.path(),
        &db_b,
        &sink_config(&shards[1].url(), "shard-b", Some(CLUSTER)),
    );
    feed(&a, &stream(11, &["esp", "other"], 200), 0);
    feed(&b, &stream(12, &["esp", "vpn"], 200), 0);
    wait_sent(&a);
    wait_sent(&b);
    // Each shard holds its own collector's rows only ...
    for (s, name) in shards.iter().zip(["shard-a", "shard-b"]) {
        let names = s
            .query("SELECT DISTINCT collector_name FROM labelflow.agg_60")
            .unwrap();
        assert_eq!(names.trim(), name);
    }
    // ... and a report through either shard's Distributed table reads both.
    assert_equal_to_sqlite(&shards[0].url(), &[&db_a, &db_b]);
    assert_equal_to_sqlite(&shards[1].url(), &[&db_a, &db_b]);
    // Its raw records, read through the other shard's `flows_all`, are its label totals.
    wait_raw_sent(&a);
    assert_eq!(
        raw_per_label(&shards[1], "labelflow.flows_all FINAL"),
        sqlite_per_label(&db_a)
    );
    assert_eq!(
        count(&shards[1], "labelflow.flows"),
        0,
        "shard b holds no raw rows"
    );
    a.term();
    b.term();
}

/// Wait until the raw outbox is empty: ClickHouse acknowledged every raw batch so far.
fn wait_raw_sent(c: &Collector) {
    let mut queue = u64::MAX;
    let ok = poll_until(SINK_TIMEOUT, || {
        queue = labelflow_collector::clickhouse::raw::waiting(&c.db).unwrap_or(u64::MAX);
        queue == 0
    });
    assert!(
        ok,
        "raw outbox still holds {queue} batches after {SINK_TIMEOUT:?}"
    );
}

/// label -> (bytes, packets, flows) of the raw `flows` table read with `from` (the table,
/// with or without the dedup rule `FINAL`).
fn raw_per_label(ch: &ClickHouse, from: &str) -> BTreeMap<String, [u64; 3]> {
    let text = ch
        .query(&format!(
            "SELECT label, sum(bytes), sum(packets), sum(flows) FROM {from} \
             GROUP BY label ORDER BY label FORMAT TabSeparated"
        ))
        .unwrap();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let n = |i: usize| f[i].parse::<u64>().unwrap();
            (f[0].to_string(), [n(1), n(2), n(3)])
        })
        .collect()
}

/// label -> (bytes, packets, flows) over every bucket of SQLite's label report.
fn sqlite_per_label(db: &Path) -> BTreeMap<String, [u64; 3]> {
    let mut want: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    for ((_, label), v) in sqlite(db, "label") {
        let e = want.entry(label).or_default();
        for i in 0..3 {
            e[i] += v[i];
        }
    }
    want
}

fn count(ch: &ClickHouse, from: &str) -> u64 {
    ch.query(&format!("SELECT count() FROM {from}"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn raw_records_exactly_once_across_faults_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut ch = ClickHouse::start(dir.path());
    let proxy = Proxy::start(ch.http);
    let db = dir.path().join("r.db");
    let config = sink_config_with(&proxy.url(), "site-r", None, 3) + "raw = true\n";
    let c = Collector::start(dir.path(), &db, &config);
    let data = stream(21, &["esp", "vpn", "other"], 400);
    let (part1, rest) = data.split_at(101);
    let (part2, rest) = rest.split_at(100);
    let (part3, part4) = rest.split_at(100);
    feed(&c, part1, 0);
    wait_sent(&c);
    wait_raw_sent(&c);

    // The server goes away and comes back.
    ch.kill();
    feed(&c, &part2[..50], 101);
    assert!(labelflow_collector::clickhouse::raw::waiting(&db).unwrap() > 0);
    ch.restart();
    feed(&c, &part2[50..], 151);
    wait_sent(&c);
    wait_raw_sent(&c);

    // Duplicates stay apart from here on (the setting lasts until the server restarts):
    // what reads see is the dedup rule's doing, not a merge that happened to run first.
    ch.query("SYSTEM STOP MERGES labelflow.flows").unwrap();
    // Answers lost after the server applied the insert, and inserts cut halfway.
    proxy.drop_answers.store(3, Ordering::SeqCst);
    proxy.cut_requests.store(3, Ordering::SeqCst);
    feed(&c, part3, 201);
    wait_sent(&c);
    wait_raw_sent(&c);
    assert_eq!(proxy.drop_answers.load(Ordering::SeqCst), 0);
    assert_eq!(proxy.cut_requests.load(Ordering::SeqCst), 0);

    // Killed with inserts applied but never acknowledged: every answer is lost until the
    // collector is gone; its successor sends the same batches again.
    proxy.drop_answers.store(usize::MAX / 2, Ordering::SeqCst);
    let before = count(&ch, "labelflow.flows");
    feed(&c, part4, 301);
    let applied = poll_until(SINK_TIMEOUT, || count(&ch, "labelflow.flows") > before);
    assert!(applied, "no raw insert reached the server");
    assert!(labelflow_collector::clickhouse::raw::waiting(&db).unwrap() > 0);
    c.kill9();
    proxy.drop_answers.store(0, Ordering::SeqCst);
    let c = Collector::start(dir.path(), &db, &config);
    wait_sent(&c);
    wait_raw_sent(&c);

    // Per label, the raw records read with the dedup rule equal SQLite's totals exactly.
    let want = sqlite_per_label(&db);
    assert_eq!(want.len(), 3, "{want:?}");
    assert_eq!(raw_per_label(&ch, "labelflow.flows FINAL"), want);
    let flows: u64 = want.values().map(|v| v[2]).sum();
    assert_eq!(count(&ch, "labelflow.flows FINAL"), flows);
    // The faults did write records twice; only the dedup rule hides them.
    let all = count(&ch, "labelflow.flows");
    assert!(
        all > flows,
        "no duplicate rows: {all} rows, {flows} records"
    );
    assert_equal_to_sqlite(&proxy.url(), &[&db]);
    assert_eq!(
        c.metric("labelflow_collector_clickhouse_raw_dropped_records_total"),
        0
    );

    // `--by flow`: every flow of the raw records, summed per label, is SQLite's totals; the
    // top 5 are the first five of them, largest first.
    let by_flow = |top: &str| {
        let j = report(&[
            "--clickhouse",
            &proxy.url(),
            "--clickhouse-user",
            USER.0,
            "--clickhouse-password-file",
            &pw_file(),
            "--by",
            "flow",
            "--top",
            top,
        ]);
        assert_eq!(j["by"], "flow");
        j["rows"].as_array().unwrap().clone()
    };
    let every = by_flow("1000000");
    let mut per_label: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    for r in &every {
        let e = per_label
            .entry(r["label"].as_str().unwrap().to_string())
            .or_default();
        for (i, f) in ["bytes", "packets", "flows"].iter().enumerate() {
            e[i] += r[*f].as_u64().unwrap();
        }
    }
    assert_eq!(per_label, want);
    assert!(every
        .windows(2)
        .all(|w| w[0]["bytes"].as_u64() >= w[1]["bytes"].as_u64()));
    assert_eq!(by_flow("5"), every[..5]);
    c.term();
}

/// `clickhouse-backfill` with `config`; the cells it says it queued.
fn backfill(config: &Path) -> u64 {
    let out = Command::new(BIN)
        .args(["clickhouse-backfill", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "backfill failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    said.strip_prefix("queued ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("backfill said {said:?}"))
}

#[test]
fn backfill_sends_what_was_stored_before_and_repeats_harmlessly() {
    let dir = tempfile::tempdir().unwrap();
    let ch = ClickHouse::start(dir.path());
    let db = dir.path().join("old.db");
    // A store that ran without ClickHouse.
    let plain = "[hosts]\nnetworks = [\"192.168.0.0/16\"]\n\
                 [store]\ncommit_interval = \"100ms\"\ncommit_datagrams = 40\n";
    let c = Collector::start(dir.path(), &db, plain);
    feed(&c, &stream(31, &["esp", "vpn"], 200), 0);
    c.term();
    let cells_before: u64 = ["label", "view", "tunnel", "host", "protocol", "port"]
        .iter()
        .map(|by| sqlite(&db, by).len() as u64)
        .sum();

    // Configured now: the first start queues what the store holds, and sends it.
    let sink = sink_config(&ch.url(), "site-old", None);
    // Before that start, the command refuses (a collector running without [clickhouse]
    // would not queue its commits, and the first start would skip its own backfill), and a
    // wrong path is refused without creating a database there.
    let config = dir.path().join("backfill.toml");
    let refused = |db: &Path| {
        std::fs::write(&config, format!("db = \"{}\"\n{sink}", db.display())).unwrap();
        let out = Command::new(BIN)
            .args(["clickhouse-backfill", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = refused(&db);
    assert!(
        e.contains("no ClickHouse outbox yet: start the collector with [clickhouse]"),
        "{e}"
    );
    let typo = dir.path().join("typo.db");
    let e = refused(&typo);
    assert!(e.contains("typo.db: no such database"), "{e}");
    assert!(!typo.exists());
    let c = Collector::start(dir.path(), &db, &sink);
    wait_sent(&c);
    assert_equal_to_sqlite(&ch.url(), &[&db]);

    // Asked for twice more while new data arrives: still equal, nothing counted twice.
    std::fs::write(&config, format!("db = \"{}\"\n{sink}", db.display())).unwrap();
    let queued = backfill(&config);
    assert!(queued >= cells_before, "{queued} < {cells_before}");
    feed(&c, &stream(32, &["esp", "voip"], 100), 0);
    assert!(backfill(&config) > queued);
    wait_sent(&c);
    assert_equal_to_sqlite(&ch.url(), &[&db]);
    c.term();
}

/// In process, no server: with `raw = true` each batch carries exactly the records its
/// label counts came from (both decode paths); with `raw = false` it carries nothing.
#[test]
fn raw_records_of_a_batch_are_what_its_counts_came_from() {
    use labelflow_collector::aggregate::Dim;
    use labelflow_collector::clickhouse::raw;
    use labelflow_collector::config::Config;
    use labelflow_collector::ingest::Ingest;
    let exporter = std::net::IpAddr::from([192, 0, 2, 7]);
    let data = stream(41, &["esp", "vpn", "other"], 50);
    for (on, fast) in [(true, true), (true, false), (false, true)] {
        let text = format!("[clickhouse]\nurl = \"http://127.0.0.1:1\"\nraw = {on}\n");
        let cfg = Config::parse(&text, "c.toml").unwrap();
        let mut ingest = Ingest::new(&cfg);
        ingest.set_fast_path(fast);
        for d in &data {
            ingest.datagram(exporter, d).unwrap();
        }
        let batch = ingest.take_batch();
        let finest = *cfg.agg.resolutions.iter().min().unwrap() as i64;
        let mut want: BTreeMap<String, [u64; 3]> = BTreeMap::new();
        for d in batch
            .deltas
            .iter()
            .filter(|d| d.dim == Dim::Label && d.resolution == finest)
        {
            let e = want.entry(d.key.clone()).or_default();
            e[0] += d.counters.bytes;
            e[1] += d.counters.packets;
            e[2] += d.counters.flows;
        }
        assert_eq!(want.values().map(|v| v[2]).sum::<u64>(), 1000);
        let Some(r) = batch.raw else {
            assert!(!on, "raw = true gave no records");
            continue;
        };
        assert!(on, "raw = false gave records");
        assert_eq!(r.records, 1000);
        let mut flows = Vec::new();
        raw::decode(&r.blob, &mut flows).unwrap();
        let mut got: BTreeMap<String, [u64; 3]> = BTreeMap::new();
        for f in &flows {
            assert_eq!((f.exporter, f.domain), (exporter, 1));
            let e = got.entry(f.label.clone()).or_default();
            e[0] += f.bytes;
            e[1] += f.packets;
            e[2] += 1;
        }
        assert_eq!(got, want, "fast path {fast}");
        // Taken: the next batch starts empty.
        assert!(ingest.take_batch().raw.is_none());
    }
}
