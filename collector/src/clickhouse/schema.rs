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
/// resolution at each start as well, see [`ensure`]).
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    what: "per-resolution ReplacingMergeTree tables",
}];

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
    let cutoff = (now - keep as i64).max(0);
    let ids = c.text(&format!(
        "SELECT partition_id FROM system.parts
         WHERE database = {} AND table = {} AND active
         GROUP BY partition_id HAVING max(max_time) < toDateTime({cutoff})",
        quote(db),
        quote(&table(res))
    ))?;
    let mut n = 0;
    for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
        c.text(&format!(
            "ALTER TABLE {db}.{} DROP PARTITION ID {}",
            table(res),
            quote(id)
        ))?;
        n += 1;
    }
    Ok(n)
}
