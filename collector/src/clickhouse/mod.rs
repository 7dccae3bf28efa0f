//! The ClickHouse sink and reader: many collectors, one shared columnar store.
//!
//! ```text
//!  Store::commit ──(same SQLite transaction)──► outbox: cells changed by batch N
//!  sink thread ──► current totals of those cells, version N ──► INSERT ... FORMAT RowBinary
//!                  (HTTP; retried with backoff; batches deleted once acknowledged)
//!  ClickHouse: agg_<res> ReplacingMergeTree(version), one row per (collector, dim, bucket,
//!              key) after merges; agg_<res>_all Distributed over shards
//!  report --clickhouse ──► FINAL (highest version per cell), sum over collectors ──► report::assemble
//!  raw = true: Store::commit ──► raw outbox (one BLOB of records per batch) ──► flows,
//!              ReplacingMergeTree by (collector, batch, index), read with FINAL (see [`raw`])
//! ```
//!
//! Exactly once without server-side deduplication tokens (18.16 has none for
//! non-replicated tables): rows carry absolute totals and a version, so a retried or
//! repeated insert writes the same fact again, and readers keep the highest version.

pub mod client;
pub mod config;
pub mod flows;
pub mod outbox;
pub mod raw;
pub mod read;
pub mod schema;
pub mod sink;

pub use client::{ChError, Client};
pub use config::{ClickHouseConfig, RawClickHouse};
pub use read::{By, ChReader};
pub use sink::{Sink, SinkStats};
