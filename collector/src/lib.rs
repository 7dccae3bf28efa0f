//! labelflow-collector: receives NetFlow v5/v9 and IPFIX from any exporter, aggregates flows
//! per label, view, tunnel, host, protocol, port and NAT pair into time buckets, and keeps
//! them in an embedded SQLite store for reports, a JSON API, Prometheus metrics and graphs.
//!
//! ```text
//!  UDP ──► spool (datagrams in arrival order; memory, then a file behind a busy decoder)
//!      ──► SessionTable (per exporter+domain, persisted templates)
//!      │     ├─ IPFIX data sets of known templates: FlowPlan ──► FlowView (zero-copy)
//!      │     └─ everything else: netflow_parser ──► convert ──► FlowRecord
//!      ──► FlowSink: label id (name, options, group, exporter rules) ──► Flow
//!      ──► time rule ──► journal row (one SQLite transaction per batch, with the
//!          sequence numbers and templates of the same datagrams)
//!  journal ──► Merger: Aggregator (pro-rated buckets per label, protocol, port, tunnel,
//!                      host; views summed from their labels)
//!      ──► Store::commit_merged (one transaction: the deltas, the journal rows' deletion,
//!          with [clickhouse] the cells queued for the ClickHouse sink thread)
//!  Reader ──► report::build ──► table / CSV / JSON, HTTP, graph (SVG/PNG)
//! ```
//!
//! The aggregation is plain code with time inside the records:
//!
//! ```
//! use labelflow_collector::aggregate::{Aggregator, Dim};
//! use labelflow_collector::config::AggConfig;
//! use labelflow_proto::FlowRecord;
//!
//! let mut agg = Aggregator::new(AggConfig::default());
//! let flow = FlowRecord { bytes: 900, packets: 9, start_ms: 30_000, end_ms: 120_000, ..FlowRecord::default() };
//! agg.add(&flow, "esp");
//! let minute: u64 = agg
//!     .take()
//!     .iter()
//!     .filter(|d| d.resolution == 60 && d.dim == Dim::Label)
//!     .map(|d| d.counters.bytes)
//!     .sum();
//! assert_eq!(minute, 900);
//! ```

pub mod aggregate;
pub mod clickhouse;
pub mod config;
#[cfg(feature = "server")]
pub mod daemon;
#[cfg(feature = "server")]
pub mod graph;
#[cfg(feature = "server")]
pub mod http;
pub mod ingest;
pub mod journal;
pub mod net;
pub mod report;
pub mod session;
pub mod spool;
pub mod store;
pub mod templates;
pub mod tunnel_report;
