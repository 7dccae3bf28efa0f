//! Tables in ClickHouse, created by the collector: versioned migrations recorded in
//! `schema_migrations`, one `ReplacingMergeTree(version)` table per resolution, optional
//! `Distributed` tables over a cluster, and retention.
//!
//! ```text
//!  agg_<res>(collector_name, dim, bucket DateTime, key,
//!            bytes, packets, flows, bytes_in, bytes_out, version UInt64)
//!    ENGINE ReplacingMergeTree(version)
//!    PARTITION BY day (res < 1h), month (res < 1d) or year
//!    ORDER BY (dim, bucket, collector_name, key)     -- the report's filter, then the cell
//!  agg_<res>_all  ENGINE Distributed(cluster, db, agg_<res>)   (with `cluster`)
//!  flows(collector_name, batch, idx, exporter, ..., label, addresses, ports, bytes, ...)
//!    ENGINE ReplacingMergeTree  PARTITION BY day of time_end
//!    ORDER BY (collector_name, batch, idx)            -- the record's identity
//! ```
//!
//! A row holds a cell's absolute totals as of batch `version`; the highest version of a
//! cell is its value. Merges keep only that row, and reads collapse the rows not yet merged
//! with `FINAL`, so a batch inserted twice never counts twice. Retention is a
//! `TTL` on servers that have it (19.6 and later) and, on every server, dropping partitions
//! whose newest bucket is past the retention (18.16 has no TTL).

use super::client::{quote, ChError, Client};

/// One migration: statements run in order, each idempotent (`IF NOT EXISTS`), so collectors
/// starting together may both run it.
struct Migration {
    version: u32,
    what: &'static str,
}

/// The migrations, oldest first. 1: the per-resolution tables (created for every configured
/// resolution at each start as well, see [`ensure`]); 2: the raw `flows` table (created at
/// each start as well, empty unless a collector writes `raw`).
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        what: "per-resolution ReplacingMergeTree tables",
    },
    Migration {
        version: 2,
        what: "raw flows table, ReplacingMergeTree by (collector_name, batch, idx)",
    },
];

/// The raw records' table.
pub const FLOWS: &str = "flows";

/// The raw records' table: one row per record the store committed, identified by
/// (collector_name, batch, idx), which is also the sorting key: `ReplacingMergeTree` keeps
/// one row per identity (rows of one identity are equal, retries included) and reads
/// collapse the rows not merged yet with `FINAL`. Partitioned by the record's end time
/// ([`flows_partition`]), so retention drops whole partitions as for the aggregates; equal
/// rows share a partition.
fn create_flows(db: &str, retention: u64, ttl_secs: Option<u64>) -> String {
    let ttl = ttl_secs.map_or(String::new(), |s| {
        format!(" TTL time_end + INTERVAL {s} SECOND")
    });
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.{FLOWS} (
           collector_name String, batch UInt64, idx UInt32,
           exporter String, domain UInt32,
           time_start DateTime, time_end DateTime, start_msec UInt16, end_msec UInt16,
           label String, tunnel String,
           src_addr String, dst_addr String, protocol UInt8, src_port UInt16, dst_port UInt16,
           ipsec_spi UInt32, bytes UInt64, packets UInt64, flows UInt64, sampling UInt32,
           nat_inside String, nat_public String, direction UInt8)
         ENGINE = ReplacingMergeTree()
         PARTITION BY {p}
         ORDER BY (collector_name, batch, idx){ttl}",
        p = flows_partition(retention)
    )
}

/// The `flows` partition for records kept `retention` seconds. One insert may write to at
/// most `max_partitions_per_insert_block` partitions (100 by default on newer servers), and
/// the time rule lets an insert hold record ends from the whole retention (plus a backlog's
/// spread): days while that is at most 31 days (the partition drop on 18.16, which has no
/// TTL, then keeps at most a day past the retention), months beyond (at most a month past
/// it; a year of retention spans 13 partitions).
fn flows_partition(retention: u64) -> &'static str {
    if retention <= 31 * 86400 {
        "toYYYYMMDD(time_end)"
    } else {
        "toYYYYMM(time_end)"
    }
}

/// Create the raw `flows` table (and with `cluster` its `flows_all`), keeping records
/// `retention` seconds.
pub fn ensure_flows(
    c: &Client,
    db: &str,
    retention: u64,
    cluster: Option<&str>,
) -> Result<(), ChError> {
    let (major, minor) = server_version(c)?;
    let has_ttl = (major, minor) >= (19, 6);
    c.text(&create_flows(db, retention, has_ttl.then_some(retention)))?;
    if let Some(cl) = cluster {
        c.text(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.{FLOWS}_all AS {db}.{FLOWS}
             ENGINE = Distributed({cl}, {db}, {FLOWS})"
        ))?;
    }
    Ok(())
}

/// `(major, minor)` of the server.
pub fn server_version(c: &Client) -> Result<(u32, u32), ChError> {
    let v = c.text("SELECT version()")?;
    let mut it = v.trim().split('.').map(|p| p.parse::<u32>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(ChError::Schema(format!("unreadable server version {v:?}"))),
    }
}

/// The table of one resolution.
pub fn table(res: i64) -> String {
    format!("agg_{res}")
}

fn partition_expr(res: i64) -> &'static str {
    if res < 3600 {
        "toYYYYMMDD(bucket)"
    } else if res < 86400 {
        "toYYYYMM(bucket)"
    } else {
        "toYear(bucket)"
    }
}

fn create_table(db: &str, res: i64, ttl_secs: Option<u64>) -> String {
    let ttl = ttl_secs.map_or(String::new(), |s| {
        format!(" TTL bucket + INTERVAL {s} SECOND")
    });
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.{t} (
           collector_name String, dim String, bucket DateTime, key String,
           bytes UInt64, packets UInt64, flows UInt64, bytes_in UInt64, bytes_out UInt64,
           version UInt64)
         ENGINE = ReplacingMergeTree(version)
         PARTITION BY {p}
         ORDER BY (dim, bucket, collector_name, key){ttl}",
        t = table(res),
        p = partition_expr(res),
    )
}

/// Create the database and the tables for `resolutions` (with `retention` seconds each),
/// run pending migrations, and with `cluster` the `Distributed` tables over it.
pub fn ensure(
    c: &Client,
    db: &str,
    resolutions: &[u64],
    retention: &[u64],
    cluster: Option<&str>,
) -> Result<(), ChError> {
    let (major, minor) = server_version(c)?;
    let has_ttl = (major, minor) >= (19, 6);
    c.text(&format!("CREATE DATABASE IF NOT EXISTS {db}"))?;
    c.text(&format!(
        "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
           version UInt32, what String, applied DateTime DEFAULT now()) ENGINE = TinyLog"
    ))?;
    let done: u32 = c
        .text(&format!("SELECT max(version) FROM {db}.schema_migrations"))?
        .trim()
        .parse()
        .unwrap_or(0);
    for (res, keep) in resolutions.iter().zip(retention) {
        let ttl = has_ttl.then_some(*keep);
        c.text(&create_table(db, *res as i64, ttl))?;
        if let Some(cl) = cluster {
            c.text(&format!(
                "CREATE TABLE IF NOT EXISTS {db}.{t}_all AS {db}.{t}
                 ENGINE = Distributed({cl}, {db}, {t})",
                t = table(*res as i64)
            ))?;
        }
    }
    // Raw records are kept as long as the finest resolution's buckets.
    let finest = resolutions.iter().zip(retention).min_by_key(|(r, _)| **r);
    ensure_flows(c, db, finest.map_or(0, |(_, k)| *k), cluster)?;
    for m in MIGRATIONS.iter().filter(|m| m.version > done) {
        c.text(&format!(
            "INSERT INTO {db}.schema_migrations (version, what) VALUES ({}, {})",
            m.version,
            quote(m.what)
        ))?;
        tracing::info!(
            version = m.version,
            what = m.what,
            "clickhouse schema migrated"
        );
    }
    Ok(())
}

/// Drop the partitions of `res` whose newest bucket is older than `now - keep`. Returns the
/// number dropped.
pub fn drop_expired(c: &Client, db: &str, res: i64, keep: u64, now: i64) -> Result<usize, ChError> {
    drop_expired_in(c, db, &table(res), keep, now)
}

/// Drop the partitions of `table` whose newest row is older than `now - keep`.
pub fn drop_expired_in(
    c: &Client,
    db: &str,
    table: &str,
    keep: u64,
    now: i64,
) -> Result<usize, ChError> {
    let cutoff = (now - keep as i64).max(0);
    let ids = c.text(&format!(
        "SELECT partition_id FROM system.parts
         WHERE database = {} AND table = {} AND active
         GROUP BY partition_id HAVING max(max_time) < toDateTime({cutoff})",
        quote(db),
        quote(table)
    ))?;
    let mut n = 0;
    for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
        c.text(&format!(
            "ALTER TABLE {db}.{} DROP PARTITION ID {}",
            table,
            quote(id)
        ))?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_partitions_stay_few_per_insert() {
        // The default 7 days: by day (8 partitions at most from the time rule).
        assert!(create_flows("db", 7 * 86400, None).contains("PARTITION BY toYYYYMMDD(time_end)"));
        // A year: by month, 13 partitions, below max_partitions_per_insert_block (100).
        let sql = create_flows("db", 365 * 86400, Some(365 * 86400));
        assert!(sql.contains("PARTITION BY toYYYYMM(time_end)"), "{sql}");
        assert!(
            sql.contains("TTL time_end + INTERVAL 31536000 SECOND"),
            "{sql}"
        );
    }
}
