//! The sender thread: outbox → ClickHouse, retried with backoff, acknowledged only after the
//! server answered the insert.
//!
//! ```text
//!  store thread ── commit (counts + outbox row, one SQLite transaction)
//!  sink thread  ── fold (bound the backlog) ── take (outbox + current totals, one read
//!                  snapshot) ── INSERT ... FORMAT RowBinary per resolution ── 200 OK ──
//!                  delete the batches; any error: keep them, back off, send again
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use super::client::{ChError, Client};
use super::config::ClickHouseConfig;
use super::outbox::{self, Cell, Pending};
use super::raw::{self, PendingRaw};
use super::schema;
use crate::aggregate::Counters;
use crate::config::AggConfig;
use crate::ingest::Snapshot;

/// The sink's state for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkStats {
    /// Batches waiting in the outbox.
    pub queue_batches: u64,
    /// Age of the oldest waiting batch, seconds (0 when none waits).
    pub lag_seconds: f64,
    /// Commit-to-acknowledgment time of the oldest batch of the last acknowledged insert,
    /// seconds: how far ClickHouse trails the store while it keeps up.
    pub ack_lag_seconds: f64,
    pub inserts: u64,
    pub sent_batches: u64,
    pub sent_rows: u64,
    /// Failed requests (each retried later).
    pub errors: u64,
    /// Batches merged into others to keep the backlog within `max_backlog`.
    pub folded_batches: u64,
    /// Outbox entries that could not be read (skipped).
    pub malformed: u64,
    /// Rows of resolutions no longer configured (ClickHouse has no table for them), left
    /// out of the inserts.
    pub unconfigured_rows: u64,
    pub partitions_dropped: u64,
    /// Raw-record batches waiting in the outbox (`raw = true`).
    pub raw_queue_batches: u64,
    pub raw_queue_records: u64,
    /// Age of the oldest waiting raw batch, seconds (0 when none waits).
    pub raw_lag_seconds: f64,
    pub raw_sent_records: u64,
    /// Raw batches (and their records) dropped, oldest first, past `max_raw_backlog` or
    /// `max_raw_backlog_bytes`. A dropped batch counts in full even when an insert of it
    /// whose outcome was unknown (a timeout) had in fact written some or all of its rows.
    pub raw_dropped_batches: u64,
    pub raw_dropped_records: u64,
    /// Raw batches that could not be read whole (their readable records were sent).
    pub raw_malformed: u64,
}

/// First and longest wait after a failed request.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));
/// How often an idle sink looks at the outbox.
const POLL: Duration = Duration::from_millis(200);
/// How long the sink keeps sending at shutdown; what is left waits in the outbox.
pub const DRAIN: Duration = Duration::from_secs(10);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A RowBinary `String`: LEB128 length, then the octets.
fn string(o: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len() as u64;
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            o.push(b);
            break;
        }
        o.push(b | 0x80);
    }
    o.extend_from_slice(s);
}

/// Records sent in one raw insert at most (whole batches; at least one).
const RAW_PER_INSERT: u64 = 200_000;

/// RowBinary of raw records, in the column order of [`schema::FLOWS`]'s insert.
fn encode_raw(p: &PendingRaw, name: &str) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut o = Vec::new();
    let mut text = String::new();
    let mut addr = |o: &mut Vec<u8>, a: Option<std::net::IpAddr>| {
        text.clear();
        if let Some(a) = a {
            let _ = write!(text, "{a}");
        }
        string(o, text.as_bytes());
    };
    for (batch, flows) in &p.batches {
        for (idx, f) in flows.iter().enumerate() {
            string(&mut o, name.as_bytes());
            o.extend_from_slice(&(*batch as u64).to_le_bytes());
            o.extend_from_slice(&(idx as u32).to_le_bytes());
            addr(&mut o, Some(f.exporter));
            o.extend_from_slice(&f.domain.to_le_bytes());
            let secs = |ms: u64| (ms / 1000).min(u64::from(u32::MAX)) as u32;
            o.extend_from_slice(&secs(f.start_ms).to_le_bytes());
            o.extend_from_slice(&secs(f.end_ms).to_le_bytes());
            o.extend_from_slice(&((f.start_ms % 1000) as u16).to_le_bytes());
            o.extend_from_slice(&((f.end_ms % 1000) as u16).to_le_bytes());
            string(&mut o, f.label.as_bytes());
            string(&mut o, f.tunnel.as_bytes());
            addr(&mut o, Some(f.src));
            addr(&mut o, Some(f.dst));
            o.push(f.protocol);
            o.extend_from_slice(&f.src_port.to_le_bytes());
            o.extend_from_slice(&f.dst_port.to_le_bytes());
            o.extend_from_slice(&f.spi.to_le_bytes());
            for x in [f.bytes, f.packets, 1] {
                o.extend_from_slice(&x.to_le_bytes());
            }
            o.extend_from_slice(&f.sampling.to_le_bytes());
            addr(&mut o, f.nat.map(|n| n.0));
            addr(&mut o, f.nat.map(|n| n.1));
            o.push(f.direction);
        }
    }
    o
}

/// RowBinary of totals rows (one resolution's).
fn encode(rows: &[(Cell, Counters)], version: i64, name: &str) -> Vec<u8> {
    let mut o = Vec::new();
    for (c, v) in rows {
        string(&mut o, name.as_bytes());
        string(&mut o, c.dim.name().as_bytes());
        o.extend_from_slice(&(c.bucket.clamp(0, u32::MAX as i64) as u32).to_le_bytes());
        string(&mut o, c.key.as_bytes());
        for x in [v.bytes, v.packets, v.flows, v.bytes_in, v.bytes_out] {
            o.extend_from_slice(&x.to_le_bytes());
        }
        o.extend_from_slice(&(version as u64).to_le_bytes());
    }
    o
}

/// Rows of totals per INSERT at most: a backlog folded into one batch, or a backfill,
/// can name millions of cells, and one insert of them all could outlast the timeout on
/// every retry. Smaller inserts of the same rows (same version) change nothing in what
/// ClickHouse keeps.
pub const ROWS_PER_INSERT: usize = 50_000;

/// One insert: a resolution and its rows.
type Insert<'a> = (i64, &'a [(Cell, Counters)]);

/// The inserts of one pending set: (resolution, rows) in runs of at most `per_insert`
/// rows, for the configured `resolutions` only (ClickHouse has no table for others), and
/// the number of rows left out for that reason. `p.rows` is sorted, so each resolution's
/// rows are one run.
fn inserts<'a>(p: &'a Pending, resolutions: &[u64], per_insert: usize) -> (Vec<Insert<'a>>, usize) {
    let (mut out, mut skipped) = (Vec::new(), 0);
    for run in p.rows.chunk_by(|a, b| a.0.resolution == b.0.resolution) {
        let res = run[0].0.resolution;
        if !resolutions.iter().any(|r| *r as i64 == res) {
            skipped += run.len();
            continue;
        }
        out.extend(run.chunks(per_insert.max(1)).map(|c| (res, c)));
    }
    (out, skipped)
}

/// Insert one pending set (see [`inserts`]). Returns (inserts, rows skipped).
fn send(
    c: &Client,
    cfg: &ClickHouseConfig,
    resolutions: &[u64],
    p: &Pending,
) -> Result<(usize, usize), ChError> {
    let (runs, skipped) = inserts(p, resolutions, ROWS_PER_INSERT);
    for (res, rows) in &runs {
        c.execute(
            &format!(
                "INSERT INTO {}.{} (collector_name, dim, bucket, key, bytes, packets, flows, \
                 bytes_in, bytes_out, version) FORMAT RowBinary",
                cfg.database,
                schema::table(*res)
            ),
            &encode(rows, p.version, &cfg.collector_name),
        )?;
    }
    Ok((runs.len(), skipped))
}

/// The sink: runs until `stop` is set, then keeps sending for at most [`DRAIN`].
#[derive(Debug)]
pub struct Sink {
    cfg: ClickHouseConfig,
    agg: AggConfig,
    prune_interval: Duration,
    conn: Connection,
    client: Client,
    stats: SinkStats,
}

impl Sink {
    pub fn open(
        cfg: ClickHouseConfig,
        agg: AggConfig,
        prune_interval: Duration,
        db: &Path,
    ) -> rusqlite::Result<Sink> {
        let conn = Connection::open(db)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let client = cfg.client();
        Ok(Sink {
            cfg,
            agg,
            prune_interval,
            conn,
            client,
            stats: SinkStats::default(),
        })
    }

    fn publish(&mut self, metrics: &Mutex<Snapshot>) {
        if let Ok((n, oldest)) = outbox::backlog(&self.conn) {
            self.stats.queue_batches = n;
            self.stats.lag_seconds = oldest.map_or(0.0, |o| (now_ms() - o).max(0) as f64 / 1000.0);
        }
        if let Ok((n, records, oldest)) = raw::backlog(&self.conn) {
            self.stats.raw_queue_batches = n;
            self.stats.raw_queue_records = records;
            self.stats.raw_lag_seconds =
                oldest.map_or(0.0, |o| (now_ms() - o).max(0) as f64 / 1000.0);
        }
        if let Ok(mut m) = metrics.lock() {
            m.clickhouse = Some(self.stats.clone());
        }
    }

    /// Raw records: bound the backlog, take, send, acknowledge. `Ok(true)` when something
    /// was sent.
    fn step_raw(&mut self) -> Result<bool, anyhow::Error> {
        let (batches, records) = raw::bound(
            &mut self.conn,
            self.cfg.max_raw_backlog.get(),
            self.cfg.max_raw_backlog_bytes,
        )?;
        if batches > 0 {
            tracing::warn!(
                batches,
                records,
                max_raw_backlog = self.cfg.max_raw_backlog.get(),
                max_raw_backlog_bytes = self.cfg.max_raw_backlog_bytes,
                "clickhouse raw backlog full: dropped the oldest raw batches (totals are kept)"
            );
            self.stats.raw_dropped_batches += batches;
            self.stats.raw_dropped_records += records;
        }
        let Some(p) = raw::take(&self.conn, RAW_PER_INSERT)? else {
            return Ok(false);
        };
        self.stats.raw_malformed += p.malformed as u64;
        let body = encode_raw(&p, &self.cfg.collector_name);
        self.client.execute(
            &format!(
                "INSERT INTO {}.{} (collector_name, batch, idx, exporter, domain, time_start, \
                 time_end, start_msec, end_msec, label, tunnel, src_addr, dst_addr, protocol, \
                 src_port, dst_port, ipsec_spi, bytes, packets, flows, sampling, nat_inside, \
                 nat_public, direction) FORMAT RowBinary",
                self.cfg.database,
                schema::FLOWS
            ),
            &body,
        )?;
        let upto = p.batches.last().map_or(0, |b| b.0);
        raw::acknowledge(&self.conn, upto)?;
        self.stats.inserts += 1;
        self.stats.raw_sent_records += p.batches.iter().map(|b| b.1.len() as u64).sum::<u64>();
        Ok(true)
    }

    /// Totals: fold, take, send, acknowledge. `Ok(true)` when something was sent.
    fn step_totals(&mut self) -> Result<bool, anyhow::Error> {
        self.stats.folded_batches +=
            outbox::fold(&mut self.conn, self.cfg.max_backlog.get())? as u64;
        let Some(p) = outbox::take(&mut self.conn, self.cfg.max_batches_per_insert.get())? else {
            return Ok(false);
        };
        self.stats.malformed += p.malformed as u64;
        let (inserts, skipped) = send(&self.client, &self.cfg, &self.agg.resolutions, &p)?;
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "clickhouse: left out rows of resolutions no longer configured (no table)"
            );
            self.stats.unconfigured_rows += skipped as u64;
        }
        outbox::acknowledge(&self.conn, p.upto)?;
        tracing::debug!(
            batches = p.batches,
            upto = p.upto,
            version = p.version,
            rows = p.rows.len(),
            inserts,
            "clickhouse insert acknowledged"
        );
        self.stats.inserts += inserts as u64;
        self.stats.ack_lag_seconds = (now_ms() - p.oldest_ms).max(0) as f64 / 1000.0;
        self.stats.sent_batches += p.batches as u64;
        self.stats.sent_rows += p.rows.len() as u64;
        Ok(true)
    }

    fn drop_expired(&mut self) -> Result<(), ChError> {
        let now = now_ms() / 1000;
        for (res, keep) in self.agg.resolutions.iter().zip(&self.agg.retention) {
            let n =
                schema::drop_expired(&self.client, &self.cfg.database, *res as i64, *keep, now)?;
            self.stats.partitions_dropped += n as u64;
        }
        let finest = self.agg.resolutions.iter().zip(&self.agg.retention).min();
        // `flows` exists whatever `raw` says (it was on once, or may be again): its expired
        // records go too.
        if let Some((_, keep)) = finest {
            let db = &self.cfg.database;
            let n = schema::drop_expired_in(&self.client, db, schema::FLOWS, *keep, now)?;
            self.stats.partitions_dropped += n as u64;
        }
        Ok(())
    }

    /// A request failed: count and log it (rate-limited), start `retry`'s backoff. The
    /// server refused a statement: its tables may have been dropped or the server
    /// replaced, so the schema is ensured again before the next attempt.
    fn failed(&mut self, e: &anyhow::Error, what: &str, retry: &mut Retry, st: &mut RunState) {
        self.stats.errors += 1;
        if e.downcast_ref::<ChError>().is_some_and(ChError::answered) {
            st.schema_ready = false;
        }
        let wait = retry.fail(Instant::now());
        if st
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(error = %e, retry_in = ?wait, "clickhouse sink ({what}): will retry");
            st.last_log = Some(Instant::now());
        }
    }

    fn ensure_schema(&mut self) -> Result<(), ChError> {
        let a = &self.agg;
        schema::ensure(
            &self.client,
            &self.cfg.database,
            &a.resolutions,
            &a.retention,
            self.cfg.cluster.as_deref(),
        )?;
        tracing::info!(url = %self.cfg.url, db = %self.cfg.database, "clickhouse schema ready");
        Ok(())
    }

    /// Run until `stop`, then drain for at most [`DRAIN`].
    ///
    /// Totals and raw records back off apart: a raw insert the server keeps refusing (or
    /// timing out on) does not slow the totals, nor the other way round. Raw batches
    /// committed while `raw` was on are sent after it is turned off too.
    pub fn run(mut self, stop: &AtomicBool, metrics: &Mutex<Snapshot>) {
        let mut st = RunState::default();
        let (mut totals, mut raw, mut schema) = (Retry::new(), Retry::new(), Retry::new());
        let mut last_prune: Option<Instant> = None;
        let mut drain_until: Option<Instant> = None;
        loop {
            if stop.load(Ordering::Acquire) && drain_until.is_none() {
                drain_until = Some(Instant::now() + DRAIN);
            }
            let now = Instant::now();
            let mut sent = false;
            if !st.schema_ready && schema.due(now) {
                match self.ensure_schema() {
                    Ok(()) => {
                        st.schema_ready = true;
                        schema.ok();
                    }
                    Err(e) => self.failed(&e.into(), "schema", &mut schema, &mut st),
                }
            }
            if st.schema_ready && totals.due(now) {
                match self.step_totals() {
                    Ok(s) => {
                        sent |= s;
                        totals.ok();
                    }
                    Err(e) => self.failed(&e, "totals", &mut totals, &mut st),
                }
            }
            if st.schema_ready && raw.due(now) {
                match self.step_raw() {
                    Ok(s) => {
                        sent |= s;
                        raw.ok();
                    }
                    Err(e) => self.failed(&e, "raw", &mut raw, &mut st),
                }
            }
            self.publish(metrics);
            if st.schema_ready && last_prune.is_none_or(|p| p.elapsed() >= self.prune_interval) {
                if let Err(e) = self.drop_expired() {
                    tracing::warn!(error = %e, "clickhouse retention: dropping partitions failed");
                }
                last_prune = Some(Instant::now());
            }
            if !sent {
                // Nothing sent: wait for the next poll, or the earliest retry if sooner.
                let retry = [schema.next, totals.next, raw.next]
                    .into_iter()
                    .flatten()
                    .min();
                if drain_until.is_some() && retry.is_none() && st.schema_ready {
                    break;
                }
                let d = retry.map_or(POLL, |r| r.saturating_duration_since(Instant::now()));
                if !pause(d.min(POLL), stop, drain_until) {
                    break;
                }
            }
            if drain_until.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        self.publish(metrics);
        tracing::info!(
            waiting = self.stats.queue_batches,
            "clickhouse sink stopped; waiting batches are sent at the next start"
        );
    }
}

/// What the run loop's steps share.
#[derive(Debug, Default)]
struct RunState {
    schema_ready: bool,
    last_log: Option<Instant>,
}

/// One kind of request's backoff: doubling from [`BACKOFF`]`.0` to `.1` after each
/// failure, back to the start after a success.
#[derive(Debug, Clone, PartialEq)]
struct Retry {
    wait: Duration,
    /// When the next attempt is due (`None`: now).
    next: Option<Instant>,
}

impl Retry {
    fn new() -> Retry {
        Retry {
            wait: BACKOFF.0,
            next: None,
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|n| now >= n)
    }

    fn ok(&mut self) {
        *self = Retry::new();
    }

    /// A failure at `now`: the wait before the next attempt.
    fn fail(&mut self, now: Instant) -> Duration {
        let w = self.wait;
        self.next = Some(now + w);
        self.wait = (w * 2).min(BACKOFF.1);
        w
    }
}

/// Wait `d`, in short steps; `false` when the drain deadline passed meanwhile.
fn pause(d: Duration, stop: &AtomicBool, drain_until: Option<Instant>) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if drain_until.is_some_and(|u| Instant::now() >= u) {
            return false;
        }
        if drain_until.is_none() && stop.load(Ordering::Acquire) {
            // Stop asked while waiting: go back to the loop, which starts the drain.
            return true;
        }
        std::thread::sleep(Duration::from_millis(20).min(d));
    }
    true
}

/// Spawn the sink thread.
pub fn spawn(
    sink: Sink,
    stop: Arc<AtomicBool>,
    metrics: Arc<Mutex<Snapshot>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("clickhouse".into())
        .spawn(move || sink.run(&stop, &metrics))
}

/// Prometheus lines of the sink.
pub fn render_metrics(o: &mut String, s: &SinkStats) {
    use std::fmt::Write as _;
    let gauges = [
        (
            "labelflow_collector_clickhouse_queue_batches",
            "Committed batches waiting in the outbox for ClickHouse.",
            s.queue_batches as f64,
        ),
        (
            "labelflow_collector_clickhouse_lag_seconds",
            "Age of the oldest batch waiting for ClickHouse (0: none waits).",
            s.lag_seconds,
        ),
        (
            "labelflow_collector_clickhouse_raw_queue_batches",
            "Raw-record batches waiting in the outbox for ClickHouse.",
            s.raw_queue_batches as f64,
        ),
        (
            "labelflow_collector_clickhouse_raw_queue_records",
            "Raw flow records waiting in the outbox for ClickHouse.",
            s.raw_queue_records as f64,
        ),
        (
            "labelflow_collector_clickhouse_raw_lag_seconds",
            "Age of the oldest raw-record batch waiting for ClickHouse (0: none waits).",
            s.raw_lag_seconds,
        ),
        (
            "labelflow_collector_clickhouse_ack_lag_seconds",
            "Commit-to-acknowledgment time of the oldest batch in the last acknowledged insert.",
            s.ack_lag_seconds,
        ),
    ];
    for (name, help, v) in gauges {
        let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n");
    }
    let counters = [
        (
            "labelflow_collector_clickhouse_inserts_total",
            "INSERT requests ClickHouse acknowledged.",
            s.inserts,
        ),
        (
            "labelflow_collector_clickhouse_sent_batches_total",
            "Outbox batches acknowledged by ClickHouse.",
            s.sent_batches,
        ),
        (
            "labelflow_collector_clickhouse_sent_rows_total",
            "Rows acknowledged by ClickHouse.",
            s.sent_rows,
        ),
        (
            "labelflow_collector_clickhouse_errors_total",
            "ClickHouse requests that failed (retried).",
            s.errors,
        ),
        (
            "labelflow_collector_clickhouse_folded_batches_total",
            "Outbox batches merged into others to stay within max_backlog.",
            s.folded_batches,
        ),
        (
            "labelflow_collector_clickhouse_malformed_total",
            "Outbox entries that could not be read (skipped).",
            s.malformed,
        ),
        (
            "labelflow_collector_clickhouse_unconfigured_rows_total",
            "Queued rows of resolutions no longer configured (no table), left out.",
            s.unconfigured_rows,
        ),
        (
            "labelflow_collector_clickhouse_partitions_dropped_total",
            "Expired ClickHouse partitions dropped.",
            s.partitions_dropped,
        ),
        (
            "labelflow_collector_clickhouse_raw_sent_records_total",
            "Raw flow records acknowledged by ClickHouse.",
            s.raw_sent_records,
        ),
        (
            "labelflow_collector_clickhouse_raw_dropped_batches_total",
            "Raw-record batches dropped, oldest first, to stay within max_raw_backlog(_bytes).",
            s.raw_dropped_batches,
        ),
        (
            "labelflow_collector_clickhouse_raw_dropped_records_total",
            "Raw flow records dropped with their batches (max_raw_backlog(_bytes)), in full even if an insert of unknown outcome wrote some; totals are kept.",
            s.raw_dropped_records,
        ),
        (
            "labelflow_collector_clickhouse_raw_malformed_total",
            "Raw-record batches that could not be read whole.",
            s.raw_malformed,
        ),
    ];
    for (name, help, v) in counters {
        let _ = write!(
            o,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Dim;

    fn row(resolution: i64, key: &str) -> (Cell, Counters) {
        let cell = Cell {
            resolution,
            dim: Dim::Label,
            bucket: 0,
            key: key.into(),
        };
        (cell, Counters::default())
    }

    #[test]
    fn inserts_leave_out_unconfigured_resolutions_and_stay_small() {
        let mut rows: Vec<_> = (0..5).map(|i| row(60, &format!("k{i}"))).collect();
        rows.push(row(300, "gone"));
        rows.push(row(3600, "h"));
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let p = Pending {
            upto: 1,
            version: 1,
            batches: 1,
            oldest_ms: 0,
            rows,
            malformed: 0,
        };
        let (runs, skipped) = inserts(&p, &[60, 3600], 2);
        assert_eq!(skipped, 1, "300 s has no table");
        let shape: Vec<(i64, usize)> = runs.iter().map(|(r, rows)| (*r, rows.len())).collect();
        assert_eq!(shape, [(60, 2), (60, 2), (60, 1), (3600, 1)]);
        assert!(runs
            .iter()
            .all(|(r, rows)| rows.iter().all(|x| x.0.resolution == *r)));
    }

    #[test]
    fn backoffs_are_apart_and_double_up_to_the_cap() {
        let t0 = Instant::now();
        let (mut totals, mut raw) = (Retry::new(), Retry::new());
        let waits: Vec<Duration> = (0..9).map(|_| raw.fail(t0)).collect();
        assert_eq!(waits[..3], [BACKOFF.0, BACKOFF.0 * 2, BACKOFF.0 * 4]);
        assert_eq!(waits[8], BACKOFF.1);
        assert!(!raw.due(t0) && raw.due(t0 + BACKOFF.1));
        // The failing raw inserts leave the totals due at once.
        assert!(totals.due(t0));
        assert_eq!(totals.fail(t0), BACKOFF.0);
        totals.ok();
        assert!(totals.due(t0) && !raw.due(t0));
        assert_eq!(totals, Retry::new());
    }
}
