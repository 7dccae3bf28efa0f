//! The embedded store: SQLite (bundled), WAL, one transaction per batch of datagrams.
//!
//! ```text
//!  agg(res, dim, bucket, key) -> bytes, packets, flows, bytes_in, bytes_out
//!  templates(exporter, domain, template_id) -> version, set_id, record
//!  contexts(exporter, domain) -> context (JSON: application names, sampling)
//!  sequences(exporter, domain, stream) -> next expected sequence number
//!  progress(id = 1) -> datagrams committed in total, time of the last commit
//!  journal(id) -> datagrams, records, blob: received records not merged yet
//! ```
//!
//! A batch (journal row + template records + options state + sequence numbers of the same
//! datagrams) is committed in one transaction with `synchronous = FULL`, so a datagram's
//! effect is either entirely in the database or not at all, and a committed batch survives
//! the process being killed. A merge ([`crate::journal`]) commits aggregate deltas and
//! deletes the journal rows they came from in one transaction.

use std::net::IpAddr;
use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use labelflow_proto::convert::{ApplicationKey, ExporterContext};
use serde::{Deserialize, Serialize};

use crate::aggregate::{Counters, Delta, Dim};
use crate::clickhouse::raw::RawRecords;
use crate::ingest::Batch;
use crate::journal::{JournalBatch, Merged};
use crate::session::{ScopeKey, SequenceState};
use crate::templates::TemplateRecord;

/// Schema version kept in `PRAGMA user_version`.
/// Version 2 added `contexts`; version 3 `sequences` and `progress`; version 4 `journal`.
pub const SCHEMA_VERSION: i64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database schema version {found} is newer than this collector ({SCHEMA_VERSION})")]
    SchemaTooNew { found: i64 },
    #[error(
        "the database has no ClickHouse outbox yet: start the collector with [clickhouse] \
         (its first start queues every stored cell by itself)"
    )]
    NoClickHouseOutbox,
}

/// Read-write handle used by the ingest loop.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    template_cap: usize,
    /// Queue each commit's cells for ClickHouse in the same transaction.
    clickhouse_outbox: bool,
    /// Whether `synchronous` is FULL ([`Store::set_full_sync`]).
    full_sync: bool,
    /// The database file, next to which the journal's segment files are.
    path: std::path::PathBuf,
}

/// [`ExporterContext`] as stored: maps as lists (JSON object keys are strings only).
#[derive(Debug, Serialize, Deserialize)]
struct StoredContext {
    /// (engine, selector, name) of each `applicationId`.
    #[serde(default)]
    applications: Vec<(u8, u64, String)>,
    #[serde(default)]
    sampling_interval: Option<u32>,
    /// (sampler id, interval).
    #[serde(default)]
    samplers: Vec<(u64, u32)>,
    #[serde(default)]
    system_init_ms: Option<u64>,
}

impl From<&ExporterContext> for StoredContext {
    fn from(c: &ExporterContext) -> StoredContext {
        let mut applications: Vec<_> = c
            .applications
            .iter()
            .map(|(k, v)| (k.engine, k.selector, v.clone()))
            .collect();
        applications.sort();
        let mut samplers: Vec<_> = c.samplers.iter().map(|(k, v)| (*k, *v)).collect();
        samplers.sort();
        StoredContext {
            applications,
            sampling_interval: c.sampling_interval,
            samplers,
            system_init_ms: c.system_init_ms,
        }
    }
}

impl From<StoredContext> for ExporterContext {
    fn from(s: StoredContext) -> ExporterContext {
        ExporterContext {
            applications: s
                .applications
                .into_iter()
                .map(|(engine, selector, name)| (ApplicationKey { engine, selector }, name))
                .collect(),
            sampling_interval: s.sampling_interval,
            samplers: s.samplers.into_iter().collect(),
            system_init_ms: s.system_init_ms,
        }
    }
}

/// The session state a commit writes: template records, options state, the sequence
/// numbers exporters are expected to continue from, and the progress record (datagrams,
/// milliseconds since the epoch).
#[derive(Debug, Default, Clone, Copy)]
struct Session<'a> {
    templates: &'a [ScopedTemplate],
    contexts: &'a [(ScopeKey, ExporterContext)],
    sequences: &'a [SequenceState],
    progress: Option<(u64, u64)>,
}

/// What a commit does to the journal.
#[derive(Debug, Clone, Copy)]
enum Journal<'a> {
    None,
    /// Append the batch's row.
    Append(&'a JournalBatch),
    /// Delete the rows up to this id (merged whole), and note how far the other one was
    /// merged.
    Merged(Option<i64>, Option<(i64, (usize, u32))>),
}

/// A template record to persist, with its scope.
#[derive(Debug, Clone)]
pub struct ScopedTemplate {
    pub scope: ScopeKey,
    pub record: TemplateRecord,
}

/// Add a delta to a row. Counters are SQLite integers (63 bits and a sign) and saturate at
/// the largest, as the aggregator's do: an exporter may claim any count, and an overflowing
/// `+` in SQLite would turn the column into a floating-point value.
const UPSERT_AGG_HEAD: &str =
    "INSERT INTO agg (res, dim, bucket, key, bytes, packets, flows, bytes_in, bytes_out) VALUES ";
const UPSERT_AGG_ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?)";
const UPSERT_AGG_TAIL: &str = "
     ON CONFLICT (res, dim, bucket, key) DO UPDATE SET
                 bytes = CASE WHEN bytes > 9223372036854775807 - excluded.bytes THEN 9223372036854775807
                     ELSE bytes + excluded.bytes END,
                 packets = CASE WHEN packets > 9223372036854775807 - excluded.packets THEN 9223372036854775807
                     ELSE packets + excluded.packets END,
                 flows = CASE WHEN flows > 9223372036854775807 - excluded.flows THEN 9223372036854775807
                     ELSE flows + excluded.flows END,
                 bytes_in = CASE WHEN bytes_in > 9223372036854775807 - excluded.bytes_in THEN 9223372036854775807
                     ELSE bytes_in + excluded.bytes_in END,
                 bytes_out = CASE WHEN bytes_out > 9223372036854775807 - excluded.bytes_out THEN 9223372036854775807
                     ELSE bytes_out + excluded.bytes_out END";

/// Deltas per upsert statement. One statement of many rows runs the statement's setup,
/// binding and reset once per `UPSERT_ROWS` rows: measured with `labelflow-ingest-cpu`
/// (thread CPU time, median of four runs on a shared 2-core VM), the store's CPU time per
/// record fell by about a seventh: 2.57 to 2.18 µs on the bench's backlog stream, 692 to
/// 606 ns on the random one (256 rows a statement measured no better than 64). SQLite
/// applies an upsert's rows in order, each as its own INSERT or UPDATE
/// (<https://sqlite.org/lang_upsert.html>), so a multi-row statement adds exactly what
/// single-row ones would. 64 rows of 9 parameters stay far below SQLite's parameter
/// limit (32,766 since 3.32).
const UPSERT_ROWS: usize = 64;

/// The upsert of `rows` deltas.
fn upsert_agg_sql(rows: usize) -> String {
    let mut sql = String::from(UPSERT_AGG_HEAD);
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(UPSERT_AGG_ROW);
    }
    sql.push_str(UPSERT_AGG_TAIL);
    sql
}

/// Bind `deltas` to an upsert of as many rows, in order, and run it.
fn upsert_agg(st: &mut rusqlite::CachedStatement<'_>, deltas: &[&Delta]) -> rusqlite::Result<()> {
    let mut at = 1;
    for d in deltas {
        let c = &d.counters;
        st.raw_bind_parameter(at, d.resolution)?;
        st.raw_bind_parameter(at + 1, d.dim.name())?;
        st.raw_bind_parameter(at + 2, d.bucket)?;
        st.raw_bind_parameter(at + 3, d.key.as_str())?;
        st.raw_bind_parameter(at + 4, stored(c.bytes))?;
        st.raw_bind_parameter(at + 5, stored(c.packets))?;
        st.raw_bind_parameter(at + 6, stored(c.flows))?;
        st.raw_bind_parameter(at + 7, stored(c.bytes_in))?;
        st.raw_bind_parameter(at + 8, stored(c.bytes_out))?;
        at += 9;
    }
    st.raw_execute()?;
    Ok(())
}

/// A counter as stored: saturated to SQLite's largest integer.
fn stored(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Open (creating or migrating) the database. `template_cap` bounds the records kept
    /// per exporter scope.
    pub fn open(path: &Path, template_cap: usize) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // 4 MiB of page cache (negative: KiB): a merge commit's upserts, in key order, touch
        // a few MiB of the `agg` index. Pages beyond come back from the kernel's page cache
        // (not the collector's memory); measured with `labelflow-ingest-cpu`, 16 MiB merged
        // no faster and held more memory.
        conn.pragma_update(None, "cache_size", -4096)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew { found: version });
        }
        if version < 1 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS agg (
                     res INTEGER NOT NULL, dim TEXT NOT NULL, bucket INTEGER NOT NULL,
                     key TEXT NOT NULL,
                     bytes INTEGER NOT NULL, packets INTEGER NOT NULL, flows INTEGER NOT NULL,
                     bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL,
                     PRIMARY KEY (res, dim, bucket, key)) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS templates (
                     exporter TEXT NOT NULL, domain INTEGER NOT NULL,
                     template_id INTEGER NOT NULL, version INTEGER NOT NULL,
                     set_id INTEGER NOT NULL, record BLOB NOT NULL, seq INTEGER NOT NULL,
                     PRIMARY KEY (exporter, domain, template_id));
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        if version < 2 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS contexts (
                     exporter TEXT NOT NULL, domain INTEGER NOT NULL, context TEXT NOT NULL,
                     PRIMARY KEY (exporter, domain));
                 PRAGMA user_version = 2;
                 COMMIT;",
            )?;
        }
        if version < 3 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS sequences (
                     exporter TEXT NOT NULL, domain INTEGER NOT NULL, stream INTEGER NOT NULL,
                     next INTEGER NOT NULL,
                     PRIMARY KEY (exporter, domain, stream)) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS progress (
                     id INTEGER PRIMARY KEY CHECK (id = 1),
                     datagrams INTEGER NOT NULL, committed_ms INTEGER NOT NULL);
                 PRAGMA user_version = 3;
                 COMMIT;",
            )?;
        }
        if version < 4 {
            let tx = conn.unchecked_transaction()?;
            crate::journal::create(&tx)?;
            tx.pragma_update(None, "user_version", 4)?;
            tx.commit()?;
        }
        Ok(Store {
            conn,
            template_cap: template_cap.max(1),
            clickhouse_outbox: false,
            full_sync: true,
            path: path.to_path_buf(),
        })
    }

    /// From now on, queue every commit's cells for ClickHouse in the commit's transaction
    /// (see [`crate::clickhouse::outbox`]). `now_us`: microseconds since the epoch; both
    /// outboxes' batch ids are raised to at least it.
    ///
    /// The first time (the outbox did not exist), every cell of the configured
    /// `resolutions` the store already holds is queued too, in the same transaction
    /// ([`Store::clickhouse_backfill`]): data committed before ClickHouse was configured
    /// reaches it, once. Returns the (cells, batches) so queued.
    pub fn enable_clickhouse_outbox(
        &mut self,
        now_us: i64,
        resolutions: &[u64],
    ) -> Result<(u64, u64), StoreError> {
        use crate::clickhouse::{outbox, raw};
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let created = outbox::create(&tx, now_us)?;
        raw::create(&tx, now_us)?;
        let queued = if created {
            outbox::backfill(&tx, resolutions)?
        } else {
            (0, 0)
        };
        tx.commit()?;
        self.clickhouse_outbox = true;
        Ok(queued)
    }

    /// Queue every cell of the configured `resolutions` for ClickHouse
    /// (`clickhouse-backfill`): the rows carry absolute totals, so this is safe to repeat.
    /// One short transaction per batch, so a collector committing meanwhile never waits
    /// long. Returns (cells, batches).
    ///
    /// Refuses ([`StoreError::NoClickHouseOutbox`]) when no collector with `[clickhouse]`
    /// ever started on the database: a collector running without it would not queue its
    /// commits into an outbox created behind its back, and its next start with
    /// `[clickhouse]` would skip the automatic backfill, leaving a gap.
    pub fn clickhouse_backfill(&mut self, resolutions: &[u64]) -> Result<(u64, u64), StoreError> {
        use crate::clickhouse::outbox;
        if !outbox::exists(&self.conn)? {
            return Err(StoreError::NoClickHouseOutbox);
        }
        Ok(outbox::backfill_in_steps(&mut self.conn, resolutions)?)
    }

    /// Commit one batch atomically.
    pub fn commit(
        &mut self,
        deltas: &[Delta],
        templates: &[ScopedTemplate],
        contexts: &[(ScopeKey, ExporterContext)],
    ) -> Result<(), StoreError> {
        self.commit_with(
            deltas,
            &Session {
                templates,
                contexts,
                ..Session::default()
            },
            &[],
            Journal::None,
        )
    }

    /// Commit one batch of the receiving thread, its records written and synced to a
    /// segment file ([`JournalBatch::written`]): its journal row, templates, options state,
    /// the sequence numbers its exporters expect next and the progress record (`now_ms`:
    /// when), in one transaction. A restart after SIGKILL resumes from exactly this point.
    pub fn commit_journal(&mut self, b: &JournalBatch, now_ms: u64) -> Result<(), StoreError> {
        let progress = (b.datagrams as u64, now_ms);
        let (t, c, s) = (&b.templates, &b.contexts, &b.sequences);
        self.set_full_sync(true)?;
        let session = Session {
            templates: t,
            contexts: c,
            sequences: s,
            progress: Some(progress),
        };
        self.commit_with(&[], &session, &[], Journal::Append(b))
    }

    /// Commit a merge: its deltas, the ClickHouse outboxes' share of it and the deletion of
    /// the journal rows it merged, in one transaction.
    pub fn commit_merged(&mut self, m: &Merged) -> Result<(), StoreError> {
        let journal = Journal::Merged(m.upto, m.partial);
        self.set_full_sync(false)?;
        self.commit_with(&m.deltas, &Session::default(), &m.raw, journal)
    }

    /// Commit one batch of the ingest atomically: its counts, templates and options state,
    /// the sequence numbers its exporters expect next, and the progress record (`now_ms`:
    /// when). A restart after SIGKILL resumes from exactly this point: sequence gaps then
    /// count what was received but not committed.
    pub fn commit_batch(&mut self, batch: &Batch, now_ms: u64) -> Result<(), StoreError> {
        let progress = (batch.datagrams as u64, now_ms);
        let (d, t, c, s) = (
            &batch.deltas,
            &batch.templates,
            &batch.contexts,
            &batch.sequences,
        );
        let raw = batch.raw.as_slice();
        let session = Session {
            templates: t,
            contexts: c,
            sequences: s,
            progress: Some(progress),
        };
        self.commit_with(d, &session, raw, Journal::None)
    }

    /// `synchronous = FULL` (every commit synced to disk before it returns) or `NORMAL` (in
    /// WAL mode: synced at checkpoints and by the next FULL commit). A merge commit may be
    /// NORMAL: if a power loss takes it back, the journal rows it deleted come back with
    /// it, in the same WAL transaction as its deltas, and are merged again. What was
    /// received is journaled FULL. A process kill loses neither (the WAL is in the page
    /// cache).
    fn set_full_sync(&mut self, full: bool) -> rusqlite::Result<()> {
        if self.full_sync != full {
            let mode = if full { "FULL" } else { "NORMAL" };
            self.conn.pragma_update(None, "synchronous", mode)?;
            self.full_sync = full;
        }
        Ok(())
    }

    fn commit_with(
        &mut self,
        deltas: &[Delta],
        session: &Session<'_>,
        raw: &[RawRecords],
        journal: Journal<'_>,
    ) -> Result<(), StoreError> {
        let Session {
            templates,
            contexts,
            sequences,
            progress,
        } = *session;
        let tx = self.conn.transaction()?;
        {
            match journal {
                Journal::None => {}
                Journal::Append(b) => crate::journal::append(&tx, b)?,
                Journal::Merged(upto, partial) => crate::journal::merged(&tx, upto, partial)?,
            }
            let mut seq = tx.prepare_cached(
                "INSERT INTO sequences (exporter, domain, stream, next) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (exporter, domain, stream) DO UPDATE SET next = excluded.next",
            )?;
            for s in sequences {
                let exporter = s.scope.exporter.to_string();
                seq.execute(params![exporter, s.scope.domain, s.stream, s.next])?;
            }
            if let Some((datagrams, now_ms)) = progress {
                tx.prepare_cached(
                    "INSERT INTO progress (id, datagrams, committed_ms) VALUES (1, ?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET
                       datagrams = datagrams + excluded.datagrams,
                       committed_ms = excluded.committed_ms",
                )?
                .execute(params![stored(datagrams), stored(now_ms)])?;
            }
            let mut ctx = tx.prepare_cached(
                "INSERT INTO contexts (exporter, domain, context) VALUES (?1, ?2, ?3)
                 ON CONFLICT (exporter, domain) DO UPDATE SET context = excluded.context
                 WHERE context != excluded.context",
            )?;
            for (scope, c) in contexts {
                let text =
                    serde_json::to_string(&StoredContext::from(c)).expect("a context serializes");
                ctx.execute(params![scope.exporter.to_string(), scope.domain, text])?;
            }
            // In key order: consecutive upserts land on the same or the next B-tree page.
            let mut order: Vec<&Delta> = deltas.iter().collect();
            order.sort_unstable_by(|a, b| {
                (a.resolution, a.dim.name(), a.bucket, &a.key).cmp(&(
                    b.resolution,
                    b.dim.name(),
                    b.bucket,
                    &b.key,
                ))
            });
            let mut chunks = order.chunks_exact(UPSERT_ROWS);
            if chunks.len() > 0 {
                let mut up = tx.prepare_cached(&upsert_agg_sql(UPSERT_ROWS))?;
                for chunk in &mut chunks {
                    upsert_agg(&mut up, chunk)?;
                }
            }
            let rest = chunks.remainder();
            if !rest.is_empty() {
                let mut up = tx.prepare_cached(&upsert_agg_sql(1))?;
                for d in rest {
                    upsert_agg(&mut up, std::slice::from_ref(d))?;
                }
            }
            let mut put = tx.prepare_cached(
                "INSERT INTO templates (exporter, domain, template_id, version, set_id, record, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6,
                         (SELECT COALESCE(MAX(seq), 0) + 1 FROM templates))
                 ON CONFLICT (exporter, domain, template_id) DO UPDATE SET
                   version = excluded.version, set_id = excluded.set_id,
                   record = excluded.record, seq = excluded.seq
                 WHERE record != excluded.record OR set_id != excluded.set_id",
            )?;
            let mut del = tx.prepare_cached(
                "DELETE FROM templates WHERE exporter = ?1 AND domain = ?2 AND template_id = ?3",
            )?;
            let mut trim = tx.prepare_cached(
                "DELETE FROM templates WHERE exporter = ?1 AND domain = ?2 AND seq NOT IN
                   (SELECT seq FROM templates WHERE exporter = ?1 AND domain = ?2
                    ORDER BY seq DESC LIMIT ?3)",
            )?;
            let mut touched = Vec::new();
            for t in templates {
                let exporter = t.scope.exporter.to_string();
                let r = &t.record;
                if r.is_withdrawal() {
                    del.execute(params![exporter, t.scope.domain, r.template_id])?;
                    continue;
                }
                let n = put.execute(params![
                    exporter,
                    t.scope.domain,
                    r.template_id,
                    r.version,
                    r.set_id,
                    r.bytes
                ])?;
                if n > 0 && !touched.contains(&t.scope) {
                    touched.push(t.scope);
                }
            }
            for s in touched {
                trim.execute(params![
                    s.exporter.to_string(),
                    s.domain,
                    self.template_cap as i64
                ])?;
            }
            if self.clickhouse_outbox {
                if !deltas.is_empty() {
                    crate::clickhouse::outbox::record(&tx, deltas)?;
                }
                for r in raw {
                    crate::clickhouse::raw::record(&tx, r)?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every persisted template, grouped per scope, oldest first (replay order).
    pub fn load_templates(&self) -> Result<Vec<(ScopeKey, Vec<TemplateRecord>)>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT exporter, domain, template_id, version, set_id, record FROM templates
             ORDER BY exporter, domain, seq",
        )?;
        let mut out: Vec<(ScopeKey, Vec<TemplateRecord>)> = Vec::new();
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u32>(1)?,
                TemplateRecord {
                    template_id: r.get(2)?,
                    version: r.get(3)?,
                    set_id: r.get(4)?,
                    bytes: r.get(5)?,
                },
            ))
        })?;
        for row in rows {
            let (exporter, domain, rec) = row?;
            let Ok(exporter) = exporter.parse::<IpAddr>() else {
                continue;
            };
            let scope = ScopeKey { exporter, domain };
            match out.last_mut() {
                Some((s, v)) if *s == scope => v.push(rec),
                _ => out.push((scope, vec![rec])),
            }
        }
        Ok(out)
    }

    /// Every persisted expected sequence number.
    pub fn load_sequences(&self) -> Result<Vec<SequenceState>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT exporter, domain, stream, next FROM sequences")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, u8>(2)?,
                r.get::<_, u32>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (exporter, domain, stream, next) = row?;
            let Ok(exporter) = exporter.parse::<IpAddr>() else {
                continue;
            };
            out.push(SequenceState {
                scope: ScopeKey { exporter, domain },
                stream,
                next,
            });
        }
        Ok(out)
    }

    /// Datagrams committed in total and the time of the last commit (milliseconds since the
    /// epoch), if any batch was committed.
    pub fn progress(&self) -> Result<Option<(u64, u64)>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT datagrams, committed_ms FROM progress WHERE id = 1",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .optional()?)
    }

    /// Every persisted options state. A row this collector cannot read is skipped with a
    /// warning: the exporter's next options records restore it.
    pub fn load_contexts(&self) -> Result<Vec<(ScopeKey, ExporterContext)>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT exporter, domain, context FROM contexts ORDER BY exporter, domain")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (exporter, domain, text) = row?;
            let (Ok(addr), Ok(c)) = (
                exporter.parse::<IpAddr>(),
                serde_json::from_str::<StoredContext>(&text),
            ) else {
                tracing::warn!(%exporter, domain, "unreadable stored options state skipped");
                continue;
            };
            let scope = ScopeKey {
                exporter: addr,
                domain,
            };
            out.push((scope, c.into()));
        }
        Ok(out)
    }

    /// Delete buckets older than each resolution's retention. `now` in seconds.
    pub fn prune(
        &mut self,
        resolutions: &[u64],
        retention: &[u64],
        now: i64,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        for (res, keep) in resolutions.iter().zip(retention) {
            n += self.conn.execute(
                "DELETE FROM agg WHERE res = ?1 AND bucket < ?2",
                params![*res as i64, now - *keep as i64],
            )?;
        }
        Ok(n)
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The totals of one cell, if stored: what the ClickHouse sink sends (read inside its own
/// transaction, so that they match the outbox state it read with them).
pub fn cell_totals(
    conn: &Connection,
    res: i64,
    dim: Dim,
    bucket: i64,
    key: &str,
) -> rusqlite::Result<Option<Counters>> {
    conn.prepare_cached(
        "SELECT bytes, packets, flows, bytes_in, bytes_out FROM agg
         WHERE res = ?1 AND dim = ?2 AND bucket = ?3 AND key = ?4",
    )?
    .query_row(params![res, dim.name(), bucket, key], |r| {
        Ok(Counters {
            bytes: r.get::<_, i64>(0)? as u64,
            packets: r.get::<_, i64>(1)? as u64,
            flows: r.get::<_, i64>(2)? as u64,
            bytes_in: r.get::<_, i64>(3)? as u64,
            bytes_out: r.get::<_, i64>(4)? as u64,
        })
    })
    .optional()
}

/// Read-only access for reports and HTTP.
#[derive(Debug)]
pub struct Reader {
    conn: Connection,
}

/// One stored row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub bucket: i64,
    pub key: String,
    pub counters: Counters,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Reader { conn })
    }

    /// Stored resolutions, finest first.
    pub fn resolutions(&self) -> Result<Vec<i64>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT DISTINCT res FROM agg ORDER BY res")?;
        let v = st
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<i64>, _>>()?;
        Ok(v)
    }

    /// Rows of one resolution and dimension with `from <= bucket < to`.
    pub fn rows(&self, res: i64, dim: Dim, from: i64, to: i64) -> Result<Vec<Row>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT bucket, key, bytes, packets, flows, bytes_in, bytes_out FROM agg
             WHERE res = ?1 AND dim = ?2 AND bucket >= ?3 AND bucket < ?4
             ORDER BY bucket, key",
        )?;
        let rows = st
            .query_map(params![res, dim.name(), from, to], |r| {
                Ok(Row {
                    bucket: r.get(0)?,
                    key: r.get(1)?,
                    counters: Counters {
                        bytes: r.get::<_, i64>(2)? as u64,
                        packets: r.get::<_, i64>(3)? as u64,
                        flows: r.get::<_, i64>(4)? as u64,
                        bytes_in: r.get::<_, i64>(5)? as u64,
                        bytes_out: r.get::<_, i64>(6)? as u64,
                    },
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Records received and journaled but not merged into the aggregates yet (`None`: a
    /// database from before the journal).
    pub fn unmerged_records(&self) -> Option<u64> {
        crate::journal::backlog(&self.conn)
            .ok()
            .map(|(_, records, _)| records)
    }

    /// Latest bucket start stored (any dimension), if any.
    pub fn latest_bucket(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT MAX(bucket) FROM agg", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .optional()?
            .flatten())
    }
}

#[cfg(test)]
#[path = "store/tests.rs"]
pub(crate) mod tests;
