//! The ClickHouse outbox: a table in the collector's SQLite database, written in the same
//! transaction as every commit of counts, naming the cells (resolution, dimension, bucket,
//! key) that commit changed.
//!
//! ```text
//!  clickhouse_outbox(batch INTEGER PRIMARY KEY AUTOINCREMENT, created_ms, cells BLOB)
//! ```
//!
//! The sender reads pending batches and, in the same read transaction, the cells' current
//! totals from the store; it sends those absolute totals with the newest batch id as their
//! version and deletes the batches once ClickHouse acknowledged the insert. A row is thus a
//! fact ("this cell held these totals as of batch N"), so sending it twice, or merging
//! batches before sending, changes nothing: ClickHouse keeps the highest version per cell.
//!
//! Batch ids start at the creation time of the outbox in microseconds, so a collector whose
//! database was recreated still writes versions above the ones it wrote before.

use std::collections::HashSet;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::aggregate::{Counters, Delta, Dim};

/// One aggregate cell.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cell {
    pub resolution: i64,
    pub dim: Dim,
    pub bucket: i64,
    pub key: String,
}

/// Create the outbox if needed and seed its batch ids (see the module docs). Returns
/// whether it was created now (it did not exist before).
pub fn create(conn: &Connection, now_us: i64) -> rusqlite::Result<bool> {
    let existed = exists(conn)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS clickhouse_outbox (
             batch INTEGER PRIMARY KEY AUTOINCREMENT,
             created_ms INTEGER NOT NULL,
             cells BLOB NOT NULL)",
    )?;
    raise_sequence(conn, "clickhouse_outbox", now_us)?;
    Ok(!existed)
}

/// Raise the AUTOINCREMENT sequence of `table` to at least `now_us`, at every start: a
/// database restored from a backup, or a clock that was behind when ids were handed out,
/// would otherwise hand out ids already used, and rows that share an id collapse in
/// ClickHouse (a higher id must be a later fact).
pub fn raise_sequence(conn: &Connection, table: &str, now_us: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO sqlite_sequence (name, seq)
         SELECT ?1, ?2 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = ?1)",
        params![table, now_us],
    )?;
    conn.execute(
        "UPDATE sqlite_sequence SET seq = MAX(seq, ?2) WHERE name = ?1",
        params![table, now_us],
    )?;
    Ok(())
}

/// Whether the database behind `conn` has the outbox (a collector with `[clickhouse]`
/// started on it at least once).
pub fn exists(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table'
                        AND name = 'clickhouse_outbox')",
        [],
        |r| r.get(0),
    )
}

/// Queue the cells `deltas` touch, inside the commit's transaction `tx`.
pub fn record(tx: &Transaction<'_>, deltas: &[Delta]) -> rusqlite::Result<()> {
    if deltas.is_empty() {
        return Ok(());
    }
    let mut blob = Vec::with_capacity(deltas.len() * 32);
    for d in deltas {
        encode(&mut blob, d.resolution, d.dim, d.bucket, &d.key);
    }
    tx.prepare_cached(
        "INSERT INTO clickhouse_outbox (created_ms, cells)
         VALUES (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), ?1)",
    )?
    .execute(params![blob])?;
    Ok(())
}

fn encode(o: &mut Vec<u8>, resolution: i64, dim: Dim, bucket: i64, key: &str) {
    o.extend_from_slice(&resolution.to_le_bytes());
    o.push(Dim::ALL.iter().position(|d| *d == dim).unwrap_or(0) as u8);
    o.extend_from_slice(&bucket.to_le_bytes());
    o.extend_from_slice(&(key.len() as u32).to_le_bytes());
    o.extend_from_slice(key.as_bytes());
}

/// The cells of one blob; stops at the first malformed entry (a blob this collector did not
/// write), returning what came before it.
fn decode(mut b: &[u8], out: &mut HashSet<Cell>) -> bool {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (h, t) = (b.get(..n)?, b.get(n..)?);
        *b = t;
        Some(h)
    }
    while !b.is_empty() {
        let cell = (|| {
            let resolution = i64::from_le_bytes(take(&mut b, 8)?.try_into().ok()?);
            let dim = *Dim::ALL.get(take(&mut b, 1)?[0] as usize)?;
            let bucket = i64::from_le_bytes(take(&mut b, 8)?.try_into().ok()?);
            let len = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?) as usize;
            let key = String::from_utf8(take(&mut b, len)?.to_vec()).ok()?;
            Some(Cell {
                resolution,
                dim,
                bucket,
                key,
            })
        })();
        match cell {
            Some(c) => {
                out.insert(c);
            }
            None => return false,
        }
    }
    true
}

/// Cells per batch that [`backfill`] queues: a sink insert takes up to
/// `max_batches_per_insert` batches, so this bounds what one insert holds.
pub const BACKFILL_CELLS: usize = 10_000;

/// Where a [`backfill_page`] stopped within its resolution: the last (dim, bucket, key)
/// it queued.
pub type After = Option<(String, i64, String)>;

/// Queue up to `per_batch` cells of resolution `res` of the store (`agg`) after `after`, in
/// key order, as one batch inside `tx`. Returns the cells queued and where it stopped
/// (`None`: at the end of the resolution).
///
/// Two statements, so each page is a range search of the primary key: `?1 IS NULL OR
/// (...) > (...)` in one statement would hide the range from the planner and make every
/// page scan from the start (quadratic in the store's size).
pub fn backfill_page(
    tx: &Transaction<'_>,
    res: i64,
    after: &After,
    per_batch: usize,
) -> rusqlite::Result<(u64, After)> {
    let limit = per_batch.max(1) as i64;
    let mut st;
    let mut rows = match after {
        None => {
            st = tx.prepare_cached(FIRST_PAGE)?;
            st.query(params![res, limit])?
        }
        Some((d, b, k)) => {
            st = tx.prepare_cached(NEXT_PAGE)?;
            st.query(params![res, d, b, k, limit])?
        }
    };
    let (mut blob, mut n, mut last) = (Vec::new(), 0u64, None);
    while let Some(r) = rows.next()? {
        let (dim_name, bucket, key): (String, i64, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        // A dimension this collector does not know (a newer one wrote it) is left out.
        if let Some(dim) = Dim::ALL.iter().find(|d| d.name() == dim_name) {
            encode(&mut blob, res, *dim, bucket, &key);
            n += 1;
        }
        last = Some((dim_name, bucket, key));
    }
    if !blob.is_empty() {
        tx.prepare_cached(
            "INSERT INTO clickhouse_outbox (created_ms, cells)
             VALUES (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), ?1)",
        )?
        .execute(params![blob])?;
    }
    Ok((n, last))
}

/// The first page of a resolution.
const FIRST_PAGE: &str = "SELECT dim, bucket, key FROM agg WHERE res = ?1
                          ORDER BY res, dim, bucket, key LIMIT ?2";
/// The pages after (dim, bucket, key) = (?2, ?3, ?4).
const NEXT_PAGE: &str = "SELECT dim, bucket, key FROM agg
                         WHERE res = ?1 AND (dim, bucket, key) > (?2, ?3, ?4)
                         ORDER BY res, dim, bucket, key LIMIT ?5";

/// Queue every cell of the resolutions `resolutions` (the configured ones: ClickHouse has
/// tables for those only), [`BACKFILL_CELLS`] to a batch, inside `tx`. Returns (cells,
/// batches) queued. Idempotent in effect: rows carry the cells' absolute totals as of
/// their send, so queuing a cell again only writes the same fact under a higher version.
pub fn backfill(tx: &Transaction<'_>, resolutions: &[u64]) -> rusqlite::Result<(u64, u64)> {
    page_through(resolutions, |res, after| {
        backfill_page(tx, res, after, BACKFILL_CELLS)
    })
}

/// [`backfill`] in one short IMMEDIATE transaction per batch, so a collector committing to
/// the same database meanwhile never waits long. Returns (cells, batches) queued.
pub fn backfill_in_steps(
    conn: &mut Connection,
    resolutions: &[u64],
) -> rusqlite::Result<(u64, u64)> {
    page_through(resolutions, |res, after| {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let page = backfill_page(&tx, res, after, BACKFILL_CELLS)?;
        tx.commit()?;
        Ok(page)
    })
}

/// Runs `page` over every resolution until it reports no next page; sums (cells, batches).
fn page_through(
    resolutions: &[u64],
    mut page: impl FnMut(i64, &After) -> rusqlite::Result<(u64, After)>,
) -> rusqlite::Result<(u64, u64)> {
    let (mut cells, mut batches) = (0, 0);
    for &res in resolutions {
        let mut after = None;
        loop {
            let (n, last) = page(res as i64, &after)?;
            cells += n;
            batches += u64::from(n > 0);
            if last.is_none() {
                break;
            }
            after = last;
        }
    }
    Ok((cells, batches))
}

/// What is due for ClickHouse: the current totals of the cells of the oldest pending
/// batches, read in one snapshot of the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The newest batch included: acknowledging deletes it and all before it.
    pub upto: i64,
    /// The newest batch committed when the totals were read: the rows' version.
    pub version: i64,
    pub batches: usize,
    /// Creation time of the oldest batch included, ms since the epoch.
    pub oldest_ms: i64,
    /// Cells and totals, sorted. Cells the store no longer holds (pruned) are left out.
    pub rows: Vec<(Cell, Counters)>,
    /// Entries in the batches that could not be read (skipped).
    pub malformed: usize,
}

/// Queue length and the oldest pending batch's creation time (ms), if any.
pub fn backlog(conn: &Connection) -> rusqlite::Result<(u64, Option<i64>)> {
    conn.query_row(
        "SELECT COUNT(*), MIN(created_ms) FROM clickhouse_outbox",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
    )
}

/// Batches waiting in the outbox of the database at `path` (for tools and tests: the
/// outbox is empty exactly when ClickHouse acknowledged every commit).
pub fn waiting(path: &std::path::Path) -> rusqlite::Result<u64> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(backlog(&conn)?.0)
}

/// Up to `max_batches` of the oldest pending batches with their cells' totals.
pub fn take(conn: &mut Connection, max_batches: usize) -> rusqlite::Result<Option<Pending>> {
    let tx = conn.transaction()?;
    let mut cells = HashSet::new();
    let (mut upto, mut oldest_ms, mut batches, mut malformed) = (None, i64::MAX, 0, 0);
    {
        let mut st = tx.prepare_cached(
            "SELECT batch, created_ms, cells FROM clickhouse_outbox ORDER BY batch LIMIT ?1",
        )?;
        let mut rows = st.query(params![max_batches as i64])?;
        while let Some(r) = rows.next()? {
            upto = Some(r.get::<_, i64>(0)?);
            oldest_ms = oldest_ms.min(r.get(1)?);
            batches += 1;
            if !decode(r.get_ref(2)?.as_blob()?, &mut cells) {
                malformed += 1;
            }
        }
    }
    let Some(upto) = upto else {
        return Ok(None);
    };
    let version: i64 = tx
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'clickhouse_outbox'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(upto);
    let mut sorted: Vec<Cell> = cells.into_iter().collect();
    sorted.sort_unstable();
    let mut rows = Vec::with_capacity(sorted.len());
    for c in sorted {
        if let Some(v) = crate::store::cell_totals(&tx, c.resolution, c.dim, c.bucket, &c.key)? {
            rows.push((c, v));
        }
    }
    tx.commit()?;
    Ok(Some(Pending {
        upto,
        version,
        batches,
        oldest_ms,
        rows,
        malformed,
    }))
}

/// ClickHouse acknowledged everything up to batch `upto`.
pub fn acknowledge(conn: &Connection, upto: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM clickhouse_outbox WHERE batch <= ?1",
        params![upto],
    )
}

/// Cells a folded batch holds at most: a backlog folded into one batch of millions of cells
/// would have to be read, and sent, whole.
pub const FOLD_MAX_CELLS: usize = 200_000;

/// Keep at most `max_batches` pending batches: merge the oldest into few (the union of
/// their cells, each under the newest id among its batches), each of at most
/// [`FOLD_MAX_CELLS`] cells. Nothing is lost: rows carry absolute totals read at send
/// time. Returns the number of batches merged away.
pub fn fold(conn: &mut Connection, max_batches: usize) -> rusqlite::Result<usize> {
    fold_capped(conn, max_batches, FOLD_MAX_CELLS)
}

/// A run of consecutive batches being merged.
#[derive(Default)]
struct Run {
    first: i64,
    last: i64,
    oldest: i64,
    batches: usize,
    cells: HashSet<Cell>,
}

/// [`fold`], with at most `cap` cells in a merged batch.
fn fold_capped(conn: &mut Connection, max_batches: usize, cap: usize) -> rusqlite::Result<usize> {
    let max_batches = max_batches.max(2);
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let count: i64 = tx.query_row("SELECT COUNT(*) FROM clickhouse_outbox", [], |r| r.get(0))?;
    if count as usize <= max_batches {
        return Ok(0);
    }
    // Merge the oldest half, so folding runs rarely while the backlog stays bounded; a
    // run closes where its next batch would take it past `cap` cells.
    let merge = (count as usize - max_batches / 2).max(2);
    let mut merged = 0;
    let mut run = Run::default();
    {
        let mut st = tx.prepare(
            "SELECT batch, created_ms, cells FROM clickhouse_outbox ORDER BY batch LIMIT ?1",
        )?;
        let mut rows = st.query(params![merge as i64])?;
        while let Some(r) = rows.next()? {
            let (batch, created): (i64, i64) = (r.get(0)?, r.get(1)?);
            let mut cells = HashSet::new();
            decode(r.get_ref(2)?.as_blob()?, &mut cells);
            let new = cells.iter().filter(|c| !run.cells.contains(*c)).count();
            if run.batches > 0 && run.cells.len() + new > cap {
                merged += close(&tx, std::mem::take(&mut run))?;
            }
            if run.batches == 0 {
                (run.first, run.oldest) = (batch, created);
            }
            run.last = batch;
            run.oldest = run.oldest.min(created);
            run.batches += 1;
            run.cells.extend(cells);
        }
    }
    merged += close(&tx, run)?;
    tx.commit()?;
    Ok(merged)
}

/// Write a run as one batch under its newest id; the batches merged away.
fn close(tx: &Transaction<'_>, run: Run) -> rusqlite::Result<usize> {
    if run.batches < 2 {
        return Ok(0);
    }
    let mut blob = Vec::new();
    for c in &run.cells {
        encode(&mut blob, c.resolution, c.dim, c.bucket, &c.key);
    }
    tx.execute(
        "DELETE FROM clickhouse_outbox WHERE batch >= ?1 AND batch < ?2",
        params![run.first, run.last],
    )?;
    tx.execute(
        "UPDATE clickhouse_outbox SET created_ms = ?2, cells = ?3 WHERE batch = ?1",
        params![run.last, run.oldest, blob],
    )?;
    Ok(run.batches - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::delta;

    #[test]
    fn commits_queue_cells_and_sends_read_absolute_totals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let mut store = crate::store::Store::open(&path, 8).unwrap();
        store.enable_clickhouse_outbox(1_000_000, &[60]).unwrap();
        store.commit(&[delta("a", 10)], &[], &[]).unwrap();
        store
            .commit(&[delta("a", 5), delta("b", 7)], &[], &[])
            .unwrap();
        store.commit(&[], &[], &[]).unwrap();
        let mut conn = Connection::open(&path).unwrap();
        assert_eq!(
            backlog(&conn).unwrap().0,
            2,
            "an empty commit queues nothing"
        );
        // One batch taken: its cell at its current total, versioned by the newest batch.
        let p = take(&mut conn, 1).unwrap().unwrap();
        assert_eq!((p.upto, p.version, p.batches), (1_000_001, 1_000_002, 1));
        assert_eq!(p.rows.len(), 1);
        assert_eq!((p.rows[0].0.key.as_str(), p.rows[0].1.bytes), ("a", 15));
        // Taken again (a retry): the same rows and version.
        assert_eq!(take(&mut conn, 1).unwrap().unwrap(), p);
        assert_eq!(acknowledge(&conn, p.upto).unwrap(), 1);
        // Folding keeps the union of cells under the newest id.
        for i in 0..5 {
            store
                .commit(&[delta(&format!("k{i}"), 1)], &[], &[])
                .unwrap();
        }
        // Six pending, at most two kept: the oldest five become one.
        let copy = dir.path().join("capped.db");
        conn.execute("VACUUM INTO ?1", params![copy.to_str().unwrap()])
            .unwrap();
        assert_eq!(fold(&mut conn, 2).unwrap(), 4);
        assert_eq!(waiting(&path).unwrap(), 2);
        let p = take(&mut conn, 100).unwrap().unwrap();
        assert_eq!((p.batches, p.rows.len(), p.upto), (2, 7, 1_000_007));
        acknowledge(&conn, p.upto).unwrap();
        // At most three cells a folded batch: the five oldest ("a" and "b" share the first)
        // become two runs of three cells, each under its newest id.
        let mut capped = Connection::open(&copy).unwrap();
        assert_eq!(fold_capped(&mut capped, 2, 3).unwrap(), 3);
        let sizes: Vec<(i64, usize)> = {
            let mut st = capped
                .prepare("SELECT batch, cells FROM clickhouse_outbox ORDER BY batch")
                .unwrap();
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get::<_, Vec<u8>>(1)?)));
            rows.unwrap()
                .map(Result::unwrap)
                .map(|(b, blob)| {
                    let mut cells = HashSet::new();
                    assert!(decode(&blob, &mut cells));
                    (b, cells.len())
                })
                .collect()
        };
        assert_eq!(sizes, [(1_000_003, 3), (1_000_006, 3), (1_000_007, 1)]);
        let p = take(&mut capped, 100).unwrap().unwrap();
        assert_eq!((p.rows.len(), p.upto), (7, 1_000_007));
        assert!(take(&mut conn, 100).unwrap().is_none());
        // A reopened outbox keeps counting from where it was.
        drop(store);
        let mut store = crate::store::Store::open(&path, 8).unwrap();
        store.enable_clickhouse_outbox(5, &[60]).unwrap();
        store.commit(&[delta("a", 1)], &[], &[]).unwrap();
        assert_eq!(take(&mut conn, 1).unwrap().unwrap().upto, 1_000_008);
        acknowledge(&conn, 1_000_008).unwrap();
        // A clock now ahead of the ids (a restored backup, a clock that was behind): both
        // outboxes go on above it, so a later fact never carries an older id.
        drop(store);
        let mut store = crate::store::Store::open(&path, 8).unwrap();
        store.enable_clickhouse_outbox(9_000_000, &[60]).unwrap();
        store.commit(&[delta("a", 1)], &[], &[]).unwrap();
        assert_eq!(take(&mut conn, 1).unwrap().unwrap().upto, 9_000_001);
        let raw_seq: i64 = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'clickhouse_raw_outbox'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(raw_seq, 9_000_000);
    }

    #[test]
    fn backfill_queues_every_stored_cell_once_per_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let mut store = crate::store::Store::open(&path, 8).unwrap();
        // Committed before ClickHouse was configured: no outbox yet.
        for k in ["a", "b", "c"] {
            store.commit(&[delta(k, 10)], &[], &[]).unwrap();
        }
        let mut conn = Connection::open(&path).unwrap();
        let cells: u64 = conn
            .query_row("SELECT COUNT(*) FROM agg", [], |r| r.get(0))
            .unwrap();
        assert!(cells >= 3);
        // A resolution no longer configured, still in the store (prune keeps it): ClickHouse
        // has no table for it, so it is not queued.
        let mut old = delta("old", 1);
        old.resolution = 300;
        store.commit(&[old], &[], &[]).unwrap();
        // Asked before any start with [clickhouse]: refused, nothing created.
        assert!(matches!(
            store.clickhouse_backfill(&[60]),
            Err(crate::store::StoreError::NoClickHouseOutbox)
        ));
        assert!(!exists(&conn).unwrap());
        // Configured: the first start queues them all, in one batch here.
        assert_eq!(
            store.enable_clickhouse_outbox(7, &[60]).unwrap(),
            (cells, 1)
        );
        assert_eq!(
            store.enable_clickhouse_outbox(7, &[60]).unwrap(),
            (0, 0),
            "once"
        );
        let p = take(&mut conn, 100).unwrap().unwrap();
        assert_eq!(p.rows.len() as u64, cells);
        assert!(p.rows.iter().all(|r| r.0.resolution == 60));
        assert_eq!(p.rows.iter().map(|r| r.1.bytes).max(), Some(10));
        acknowledge(&conn, p.upto).unwrap();
        // Asked again: the same cells again.
        assert_eq!(store.clickhouse_backfill(&[60]).unwrap(), (cells, 1));
        assert_eq!(take(&mut conn, 100).unwrap().unwrap().rows, p.rows);
        // Page by page, two cells a batch: every cell once, then the end.
        let tx = conn.transaction().unwrap();
        let (mut after, mut seen) = (None, 0);
        loop {
            let (n, last) = backfill_page(&tx, 60, &after, 2).unwrap();
            assert!(n <= 2);
            seen += n;
            if last.is_none() {
                break;
            }
            after = last;
        }
        assert_eq!(seen, cells);
    }

    /// Every backfill page is a range search of `agg`'s primary key, not a scan.
    #[test]
    fn backfill_pages_search_the_primary_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        drop(crate::store::Store::open(&path, 8).unwrap());
        let conn = Connection::open(&path).unwrap();
        for q in [FIRST_PAGE, NEXT_PAGE] {
            let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {q}")).unwrap();
            let plan: Vec<String> = st
                .query_map(
                    params![60, "label", 0, "k", 10][..q.matches('?').count()].as_ref(),
                    |r| r.get::<_, String>(3),
                )
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let plan = plan.join("; ");
            assert!(
                plan.contains("SEARCH agg USING PRIMARY KEY")
                    && (q == FIRST_PAGE || plan.contains("(dim,bucket,key)>"))
                    && !plan.contains("TEMP B-TREE"),
                "{q}: {plan}"
            );
        }
    }

    #[test]
    fn cells_roundtrip_and_stop_at_garbage() {
        let mut b = Vec::new();
        encode(&mut b, 60, Dim::Host, -120, "10.0.0.1");
        encode(&mut b, 3600, Dim::Label, 0, "");
        let mut out = HashSet::new();
        assert!(decode(&b, &mut out));
        assert_eq!(out.len(), 2);
        assert!(out.contains(&Cell {
            resolution: 60,
            dim: Dim::Host,
            bucket: -120,
            key: "10.0.0.1".into()
        }));
        b.extend_from_slice(&[1, 2, 3]);
        let mut out = HashSet::new();
        assert!(!decode(&b, &mut out));
        assert_eq!(out.len(), 2);
    }
}
