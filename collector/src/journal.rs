//! The ingest journal: records are stored first and aggregated after, so the receiving
//! thread never waits for aggregation or for the aggregate store.
//!
//! ```text
//!  receive thread: datagram ─► decode ─► label ─► time rule ─► records of the batch
//!                  (compact, label and tunnel ids with their names) ─► write(2) to the
//!                  current segment file <db>.records.N ─► JournalBatch (its extent, and
//!                  the session state of the same datagrams) to the store thread
//!  store thread:   JournalBatch ─► fdatasync(segment) ─► one transaction: journal row
//!                  (segment, offset, length) + sequence numbers + templates + options
//!                  state + progress
//!                  when no batch waits: journal rows ─► Merger (aggregation, rollups)
//!                  ─► one transaction: aggregate deltas + ClickHouse outboxes + DELETE of
//!                  the journal rows merged; segment files no row refers to are removed
//! ```
//!
//! A record counts once the transaction naming its extent commits; that transaction
//! carries the sequence numbers of the same datagrams, so after a SIGKILL (or a power loss:
//! the segment is synced before the transaction) the gap the exporters' next datagrams show
//! covers exactly what was received and not journaled, and octets written to a segment but
//! never named by a committed row are ignored and removed at the next start. The merge
//! commits deltas and deletes the journal rows they came from in one transaction (or notes
//! how far it got in a row), so no record is counted twice or lost. nfcapd takes the same
//! path in its own terms: it writes records to files and nfdump aggregates them when asked;
//! here the merge runs behind the receiver by however long the backlog takes, and reports
//! see a record once it is merged (`labelflow_collector_journal_records` on `/metrics` says
//! how many are not).
//!
//! Records are written with write(2), not through SQLite: the receiving thread copies a
//! batch into the page cache in a few milliseconds, where an SQLite BLOB of the same batch
//! took 25–60 ms of the store thread (WAL frames, checksums, checkpoint copies) and waited
//! behind merge commits.
//!
//! The record encoding is the one of ClickHouse's raw records ([`crate::clickhouse::raw`]):
//! with `[clickhouse] raw = true` the merge queues the very batches it merged.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::aggregate::Flow;
use crate::aggregate::{Aggregator, Delta, Rollup};
use crate::clickhouse::raw::{FlowCursor, FlowVisitor, Parts, RawRecords};
use crate::config::AggConfig;
use crate::ingest::{metric_totals, metric_tunnels, Batch, Snapshot};
use crate::session::{ScopeKey, SequenceState};
use crate::store::ScopedTemplate;
use labelflow_proto::convert::ExporterContext;

/// What the receiving thread hands to the store thread: one journal row and the session
/// state of the same datagrams.
#[derive(Debug, Default)]
pub struct JournalBatch {
    /// The records as the ingest took them (`None`: the datagrams carried none).
    pub parts: Option<Parts>,
    /// The records as a [`Writer`] wrote them to a segment file, and how many (the daemon's
    /// writer thread sets it, and takes `parts`).
    pub written: Option<(Extent, u64)>,
    pub templates: Vec<ScopedTemplate>,
    pub contexts: Vec<(ScopeKey, ExporterContext)>,
    pub sequences: Vec<SequenceState>,
    pub datagrams: usize,
}

/// One journal row as read back.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: i64,
    pub datagrams: u64,
    pub records: RawRecords,
    /// Where a merge that committed part of the row stopped ([`FlowCursor::position`]).
    pub merged: (usize, u32),
}

/// Octets after which the writer starts a new segment file: a segment is removed once the
/// merge is past every row in it.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Where a batch's records are: segment number, offset and length in octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub segment: u64,
    pub offset: u64,
    pub len: u64,
}

/// The segment file `segment` of the database `db`: `<db>.records.<segment>`.
pub fn segment_path(db: &Path, segment: u64) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(format!(".records.{segment:012}"));
    PathBuf::from(p)
}

/// The segment files of the database `db`, by number.
pub fn segment_files(db: &Path) -> io::Result<Vec<u64>> {
    let dir = match db.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = db.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.records.");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let n = e.file_name();
        let Some(rest) = n.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if let Ok(seg) = rest.parse::<u64>() {
            out.push(seg);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Appends batches to segment files (the receiving thread's side).
#[derive(Debug)]
pub struct Writer {
    db: PathBuf,
    segment: u64,
    file: File,
    offset: u64,
}

impl Writer {
    /// A writer starting the new segment `segment` ([`recover`] gives the number).
    pub fn create(db: &Path, segment: u64) -> io::Result<Writer> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(segment_path(db, segment))?;
        Ok(Writer {
            db: db.to_path_buf(),
            segment,
            file,
            offset: 0,
        })
    }

    /// Append one batch's blob, given in parts; a full segment is left for a new one first.
    pub fn append(&mut self, parts: &[&[u8]]) -> io::Result<Extent> {
        if self.offset >= SEGMENT_BYTES {
            *self = Writer::create(&self.db, self.segment + 1)?;
        }
        let offset = self.offset;
        let mut len = 0;
        for p in parts {
            self.file.write_all(p)?;
            len += p.len() as u64;
        }
        self.offset += len;
        Ok(Extent {
            segment: self.segment,
            offset,
            len,
        })
    }
}

/// Syncs segment files before their rows commit (the store thread's side).
#[derive(Debug, Default)]
pub struct Syncer {
    /// The segment synced last, open.
    open: Option<(u64, File)>,
}

impl Syncer {
    /// Make a segment's octets durable (`fdatasync`); the first time for a segment, its
    /// directory entry too.
    pub fn sync(&mut self, db: &Path, segment: u64) -> io::Result<()> {
        if self.open.as_ref().map(|(s, _)| *s) != Some(segment) {
            let f = File::open(segment_path(db, segment))?;
            if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            self.open = Some((segment, f));
        }
        self.open.as_ref().expect("open").1.sync_data()
    }
}

/// At start, before any writer: remove the segment files no journal row refers to (merged
/// ones, and octets written after the last committed row), and return the number the
/// next segment takes.
pub fn recover(conn: &Connection, db: &Path) -> io::Result<u64> {
    let referenced: Vec<u64> = (|| {
        let mut st = conn.prepare("SELECT DISTINCT segment FROM journal")?;
        let v = st.query_map([], |r| r.get::<_, i64>(0))?;
        v.map(|r| r.map(|s| s as u64))
            .collect::<rusqlite::Result<Vec<u64>>>()
    })()
    .map_err(io::Error::other)?;
    let files = segment_files(db)?;
    for f in &files {
        if !referenced.contains(f) {
            std::fs::remove_file(segment_path(db, *f))?;
        }
    }
    let last = files.iter().chain(&referenced).max().copied().unwrap_or(0);
    Ok(last + 1)
}

/// Remove the segment files before `keep_from` that no journal row refers to any more
/// (`keep_from`: the segment the writer may still be writing).
pub fn remove_merged(conn: &Connection, db: &Path, keep_from: u64) -> io::Result<usize> {
    let oldest: Option<i64> = conn
        .query_row("SELECT MIN(segment) FROM journal", [], |r| r.get(0))
        .map_err(io::Error::other)?;
    let limit = oldest.map_or(keep_from, |o| keep_from.min(o as u64));
    let mut n = 0;
    for f in segment_files(db)? {
        if f < limit {
            std::fs::remove_file(segment_path(db, f))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Create the journal table (schema version 4). Ids only grow (AUTOINCREMENT: never reused
/// once the rows merged are deleted), which the merge's position relies on.
pub fn create(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS journal (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             datagrams INTEGER NOT NULL,
             records INTEGER NOT NULL,
             segment INTEGER NOT NULL,
             offset INTEGER NOT NULL,
             len INTEGER NOT NULL,
             merged_pos INTEGER NOT NULL DEFAULT 0,
             merged_left INTEGER NOT NULL DEFAULT 0)",
    )
}

/// Name a written batch inside the transaction `tx`: from its commit on, its records count.
/// A batch without records (templates, options, sequence numbers only) gets a row of its
/// own too, so its datagrams count as merged in order.
pub fn append(tx: &Transaction<'_>, b: &JournalBatch) -> rusqlite::Result<()> {
    let (e, records) = b.written.unwrap_or((
        Extent {
            segment: 0,
            offset: 0,
            len: 0,
        },
        0,
    ));
    tx.prepare_cached(
        "INSERT INTO journal (datagrams, records, segment, offset, len)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        b.datagrams as i64,
        records as i64,
        e.segment as i64,
        e.offset as i64,
        e.len as i64
    ])?;
    Ok(())
}

/// The journal rows after `after` (oldest first), at most `limit`, their records read from
/// the segment files of `db`. A row whose octets cannot be read comes back without them
/// (the merge counts it as malformed), with a warning naming the file.
pub fn read(conn: &Connection, db: &Path, after: i64, limit: usize) -> rusqlite::Result<Vec<Row>> {
    let mut st = conn.prepare_cached(
        "SELECT id, datagrams, records, segment, offset, len, merged_pos, merged_left
         FROM journal WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = st.query_map(params![after, limit as i64], |r| {
        let e = Extent {
            segment: r.get::<_, i64>(3)? as u64,
            offset: r.get::<_, i64>(4)? as u64,
            len: r.get::<_, i64>(5)? as u64,
        };
        Ok((
            Row {
                id: r.get(0)?,
                datagrams: r.get::<_, i64>(1)? as u64,
                records: RawRecords {
                    records: r.get::<_, i64>(2)? as u64,
                    blob: Vec::new(),
                },
                merged: (r.get::<_, i64>(6)? as usize, r.get(7)?),
            },
            e,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (mut row, e) = row?;
        if row.records.records > 0 {
            match read_extent(db, e) {
                Ok(blob) => row.records.blob = blob,
                Err(err) => tracing::warn!(
                    file = %segment_path(db, e.segment).display(),
                    offset = e.offset,
                    len = e.len,
                    error = %err,
                    "journal segment unreadable; its records are skipped"
                ),
            }
        }
        out.push(row);
    }
    Ok(out)
}

fn read_extent(db: &Path, e: Extent) -> io::Result<Vec<u8>> {
    let f = File::open(segment_path(db, e.segment))?;
    let len = usize::try_from(e.len).map_err(io::Error::other)?;
    let mut blob = vec![0; len];
    f.read_exact_at(&mut blob, e.offset)?;
    Ok(blob)
}

/// Journal rows, records and octets not merged yet.
pub fn backlog(conn: &Connection) -> rusqlite::Result<(u64, u64, u64)> {
    conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(records), 0), COALESCE(SUM(len), 0) FROM journal",
        [],
        |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        },
    )
}

/// The newest journal row's id, if any.
pub fn last_id(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    Ok(conn
        .query_row(
            "SELECT MAX(seq) FROM sqlite_sequence WHERE name = 'journal'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .flatten())
}

/// Inside a merge's transaction: delete the journal rows up to `upto`, and note how far
/// the row `partial` was merged.
pub fn merged(
    tx: &Transaction<'_>,
    upto: Option<i64>,
    partial: Option<(i64, (usize, u32))>,
) -> rusqlite::Result<()> {
    if let Some(upto) = upto {
        tx.prepare_cached("DELETE FROM journal WHERE id <= ?1")?
            .execute(params![upto])?;
    }
    if let Some((id, (pos, left))) = partial {
        tx.prepare_cached("UPDATE journal SET merged_pos = ?2, merged_left = ?3 WHERE id = ?1")?
            .execute(params![id, pos as i64, left])?;
    }
    Ok(())
}

/// Aggregates journal rows: the aggregator, its rollups and what the next merge commit
/// writes besides the deltas.
#[derive(Debug)]
pub struct Merger {
    agg: Aggregator,
    rollup: Rollup,
    /// Keep the merged rows' records for ClickHouse (`[clickhouse] raw`).
    keep_raw: bool,
    raw: Vec<RawRecords>,
    /// The row being fed, a slice at a time.
    current: Option<Current>,
    /// The newest journal row fed whole, and the datagrams and records fed since the last
    /// take.
    upto: Option<i64>,
    datagrams: u64,
    records: u64,
    /// Journal rows that could not be read whole (their readable records are counted).
    pub malformed: u64,
}

/// A journal row part-way through the merge.
#[derive(Debug)]
struct Current {
    /// `None`: a batch merged in place ([`Merger::take_batch`]).
    id: Option<i64>,
    datagrams: u64,
    records: RawRecords,
    /// `None`: the row's names are malformed (nothing of it can be read).
    cursor: Option<FlowCursor>,
}

/// What one merge commit writes.
#[derive(Debug, Default)]
pub struct Merged {
    pub deltas: Vec<Delta>,
    /// The merged rows' records, for ClickHouse's raw outbox (empty unless `raw`).
    pub raw: Vec<RawRecords>,
    /// The newest journal row merged whole (`None`: none).
    pub upto: Option<i64>,
    /// The row merged in part, and how far ([`FlowCursor::position`]).
    pub partial: Option<(i64, (usize, u32))>,
    pub datagrams: u64,
    pub records: u64,
}

impl Merger {
    pub fn new(cfg: &AggConfig, keep_raw: bool) -> Merger {
        Merger {
            agg: Aggregator::new(cfg.clone()),
            rollup: Rollup::new(cfg),
            keep_raw,
            raw: Vec::new(),
            current: None,
            upto: None,
            datagrams: 0,
            records: 0,
            malformed: 0,
        }
    }

    /// Start merging a journal row (the previous one must be done: [`Merger::busy`]).
    pub fn start(&mut self, row: Row) {
        debug_assert!(self.current.is_none());
        let cursor = FlowCursor::new(&row.records.blob, &mut self.agg).map(|mut c| {
            c.resume(row.merged);
            c
        });
        self.current = Some(Current {
            id: Some(row.id),
            datagrams: row.datagrams,
            records: row.records,
            cursor,
        });
    }

    /// Whether a row is part-way through the merge.
    pub fn busy(&self) -> bool {
        self.current.is_some()
    }

    /// Aggregate up to `max` more records of the current row; returns the records fed.
    /// A row read to its end (or to a malformed record, counted and logged) is done.
    pub fn step(&mut self, max: u64) -> u64 {
        let Some(c) = &mut self.current else {
            return 0;
        };
        let (n, done) = match &mut c.cursor {
            Some(cursor) => match cursor.visit(&c.records.blob, max, &mut self.agg) {
                Ok(r) => r,
                Err(n) => {
                    self.malformed += 1;
                    tracing::warn!(
                        row = ?c.id,
                        "journal row malformed; the rest of it skipped"
                    );
                    (n, true)
                }
            },
            None => {
                self.malformed += 1;
                tracing::warn!(row = ?c.id, "journal row malformed; skipped");
                (0, true)
            }
        };
        self.records += n;
        if done {
            let c = self.current.take().expect("a current row");
            if let Some(id) = c.id {
                self.upto = Some(self.upto.map_or(id, |u| u.max(id)));
            }
            self.datagrams += c.datagrams;
            if self.keep_raw && c.records.records > 0 {
                self.raw.push(c.records);
            }
        }
        n
    }

    /// Forget the row part-way through and what was fed since the last take, after a
    /// failed commit of what was taken: the rows are read again from the journal.
    pub fn abandon(&mut self) {
        self.current = None;
        self.raw.clear();
        self.upto = None;
        self.datagrams = 0;
        self.records = 0;
        let _ = self.agg.take_base();
    }

    /// Feed the next slice of the journal of `store`: start the row after `*fed` when none
    /// is part-way (its datagrams not counted when its id is at most `not_ours`: an earlier
    /// process received them), then aggregate up to `slice` of its records. Returns `false`
    /// when the journal is read to its end.
    pub fn feed_from(
        &mut self,
        store: &crate::store::Store,
        fed: &mut i64,
        not_ours: i64,
        slice: u64,
    ) -> rusqlite::Result<bool> {
        if !self.busy() {
            let Some(mut row) = read(store.connection(), store.path(), *fed, 1)?.pop() else {
                return Ok(false);
            };
            *fed = row.id;
            if row.id <= not_ours {
                row.datagrams = 0;
            }
            self.start(row);
        }
        self.step(slice);
        Ok(true)
    }

    /// Base-bucket cells pending: what bounds the merge's memory and its commit's rows.
    pub fn pending_cells(&self) -> usize {
        self.agg.pending_cells()
    }

    /// Whether anything was fed since the last take.
    pub fn is_empty(&self) -> bool {
        self.upto.is_none() && self.datagrams == 0 && self.records == 0
    }

    /// Take what the next merge commit writes, rolled up and named.
    pub fn take(&mut self) -> Merged {
        let partial = self.current.as_ref().and_then(|c| {
            let at = c.cursor.as_ref()?.position();
            Some((c.id?, at))
        });
        Merged {
            deltas: self.rollup.render(self.agg.take_base()),
            raw: std::mem::take(&mut self.raw),
            upto: self.upto.take(),
            partial,
            datagrams: std::mem::take(&mut self.datagrams),
            records: std::mem::take(&mut self.records),
        }
    }

    /// Take what the next merge commit writes as a whole [`Batch`] with the session state
    /// of `b` (offline use and tests: the two steps in one).
    pub fn take_batch(&mut self, b: JournalBatch) -> Batch {
        let datagrams = b.datagrams;
        if let Some(records) = b.parts.as_ref().map(Parts::joined) {
            let cursor = FlowCursor::new(&records.blob, &mut self.agg);
            self.current = Some(Current {
                id: None,
                datagrams: 0,
                records,
                cursor,
            });
            while self.busy() {
                self.step(u64::MAX);
            }
        }
        let m = self.take();
        // One batch fed: at most one record set.
        let mut raw = m.raw;
        debug_assert!(raw.len() <= 1);
        Batch {
            deltas: m.deltas,
            templates: b.templates,
            contexts: b.contexts,
            sequences: b.sequences,
            datagrams,
            raw: raw.pop(),
        }
    }

    pub fn aggregator(&self) -> &Aggregator {
        &self.agg
    }

    /// The merge's part of `/metrics`: per-label and per-tunnel totals as merged, the key
    /// bounds' counters and the rollups'.
    pub fn fill(&self, s: &mut Snapshot, max_metric_labels: usize) {
        let a = &self.agg.stats;
        s.aggregation.excluded_internal = a.excluded_internal;
        s.aggregation.folded_keys = a.folded_keys;
        s.aggregation.forgotten_key_sets = a.forgotten_key_sets;
        s.aggregation.folded_nat_keys = a.folded_nat_keys;
        s.labels = metric_totals(&self.agg, max_metric_labels);
        s.tunnels = metric_tunnels(&self.agg, max_metric_labels);
        s.rollup = self.rollup.stats;
    }

    /// Forget per-bucket key bookkeeping older than `before` (seconds).
    pub fn forget_before(&mut self, before: i64) {
        self.agg.forget_before(before);
        self.rollup.forget_before(before);
    }
}

/// A journal blob's records go straight into the aggregator, under its own ids for the
/// blob's names (the same names give the same keys).
impl FlowVisitor for Aggregator {
    fn label(&mut self, name: &str) -> u32 {
        self.label_id(name)
    }
    fn tunnel(&mut self, name: &str) -> u32 {
        self.tunnel_id(name)
    }
    fn flow(&mut self, f: &Flow) {
        self.add_counted(f);
    }
}

/// Merge every journal row of `store` now, committing whenever `max_pending_cells` cells
/// are pending and at the end; returns the records merged and the deltas committed. For tools and tests, on a
/// database no collector is writing (the daemon merges a slice at a time between journal
/// commits).
pub fn merge_all(
    store: &mut crate::store::Store,
    merger: &mut Merger,
    max_pending_cells: usize,
) -> Result<(u64, usize), crate::store::StoreError> {
    let mut fed = 0;
    let (mut records, mut deltas) = (0, 0);
    while merger.feed_from(store, &mut fed, 0, 8192)? {
        if merger.pending_cells() >= max_pending_cells {
            let m = merger.take();
            records += m.records;
            deltas += m.deltas.len();
            store.commit_merged(&m)?;
        }
    }
    if !merger.is_empty() {
        let m = merger.take();
        records += m.records;
        deltas += m.deltas.len();
        store.commit_merged(&m)?;
    }
    Ok((records, deltas))
}
