//! HTTP: the dashboard (`/`), the JSON API (`/api/report`), Prometheus text (`/metrics`).
//!
//! ```text
//!  GET /                                  HTML + JS (embedded; graphs drawn as inline SVG)
//!  GET /api/report?by=label&last=1h&bucket=1m&top=8   same document as `report --format json`
//!  GET /api/report?by=host&from=RFC3339&to=RFC3339
//!  GET /metrics                           collector health and per-label counters
//! ```
//!
//! Read-only: every route is `GET` (anything else is 405), and nothing reachable over HTTP
//! changes the store or the collector. With `http_token_file`, the API and `/metrics`
//! answer only requests that carry `Authorization: Bearer TOKEN` (RFC 6750 section 2.1);
//! the dashboard page itself holds no data and is served to anyone.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query as AxQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use crate::aggregate::{Dim, Part, TimeRule};
use crate::ingest::Snapshot;
use crate::report::{self, Query};
use crate::session::{DecodeError, SessionStats};
use crate::store::Reader;

const DASHBOARD: &str = include_str!("dashboard.html");

#[derive(Debug, Clone)]
pub struct AppState {
    pub db: PathBuf,
    pub metrics: Arc<Mutex<Snapshot>>,
    /// Bearer token the API and `/metrics` require, if any.
    pub token: Option<Arc<str>>,
    /// Reports read ClickHouse (`clickhouse.serve_reports`) instead of the database.
    pub clickhouse: Option<crate::clickhouse::ClickHouseConfig>,
}

pub fn router(state: AppState) -> Router {
    let data = Router::new()
        .route("/api/report", get(api_report))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .merge(data)
        .with_state(state)
}

/// Refuse a request without the configured bearer token (401, RFC 6750 section 3).
async fn require_token(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same_secret(given.as_bytes(), token.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"labelflow\"")],
                "a bearer token is required\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Compare two secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, y) in b.iter().enumerate() {
        diff |= a.get(i).copied().unwrap_or(0) ^ y;
    }
    diff == 0
}

#[derive(Debug, Deserialize)]
pub struct ReportParams {
    by: Option<String>,
    bucket: Option<String>,
    last: Option<String>,
    from: Option<String>,
    to: Option<String>,
    top: Option<usize>,
    /// Only these keys, comma-separated.
    key: Option<String>,
}

/// Parse report parameters (shared with the CLI): `now` in seconds.
pub fn parse_query(
    by: &str,
    bucket: Option<&str>,
    last: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    top: Option<usize>,
    now: i64,
) -> Result<Query, String> {
    let by = Dim::parse(by).ok_or_else(|| format!("unknown dimension {by:?}"))?;
    let secs = |s: &str| -> Result<u64, String> {
        humantime::parse_duration(s)
            .map(|d| d.as_secs())
            .map_err(|e| format!("{s:?}: {e}"))
    };
    let time = |s: &str| -> Result<i64, String> {
        if let Ok(n) = s.parse::<i64>() {
            return Ok(n);
        }
        humantime::parse_rfc3339_weak(s)
            .map(|t| {
                t.duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64)
            })
            .map_err(|e| format!("{s:?}: {e}"))
    };
    let bucket = bucket.map(secs).transpose()?;
    if bucket == Some(0) {
        return Err("bucket must be at least 1s".into());
    }
    let (from, to) = match (last, from, to) {
        (Some(l), None, None) => (now - secs(l)? as i64, now + 1),
        (None, Some(f), t) => (time(f)?, t.map(time).transpose()?.unwrap_or(now + 1)),
        (None, None, None) => (now - 3600, now + 1),
        _ => return Err("use either last or from/to".into()),
    };
    Ok(Query {
        by,
        bucket,
        from,
        to,
        top,
        keys: Vec::new(),
    })
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

async fn api_report(State(st): State<AppState>, AxQuery(p): AxQuery<ReportParams>) -> Response {
    let by = p.by.as_deref().unwrap_or("label");
    let by_collector = by == "collector" && st.clickhouse.is_some();
    let q = match parse_query(
        if by_collector { "label" } else { by },
        p.bucket.as_deref(),
        p.last.as_deref(),
        p.from.as_deref(),
        p.to.as_deref(),
        p.top,
        now_secs(),
    ) {
        Ok(q) => Query {
            keys: p
                .key
                .iter()
                .flat_map(|k| k.split(','))
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect(),
            ..q
        },
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let db = st.db.clone();
    let ch = st.clickhouse.clone();
    let r = tokio::task::spawn_blocking(move || -> Result<serde_json::Value, String> {
        if let Some(ch) = ch {
            let rep = crate::clickhouse::read::build(ch.client(), &ch.database, &q, by_collector)
                .map_err(|e| e.to_string())?;
            let mut j = report::to_json(&rep);
            if by_collector {
                crate::clickhouse::read::collector_json(&mut j);
            }
            return Ok(j);
        }
        let reader = Reader::open(&db).map_err(|e| e.to_string())?;
        let rep = report::build(&reader, &q).map_err(|e| e.to_string())?;
        Ok(report::to_json(&rep))
    })
    .await;
    match r {
        Ok(Ok(v)) => ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response(),
        Ok(Err(e)) => (StatusCode::BAD_REQUEST, e).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    let snap = st.metrics.lock().map(|s| s.clone()).unwrap_or_default();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_metrics(&snap),
    )
        .into_response()
}

/// Prometheus text exposition of a snapshot.
pub fn render_metrics(s: &Snapshot) -> String {
    let mut o = String::new();
    // Datagrams count as received when the receiving thread takes them, before they are
    // decoded (the spool between the two may hold some).
    let mut sessions = s.sessions.clone();
    if let Some(sp) = &s.spool {
        sessions.datagrams = sp.received_datagrams.load(Ordering::Relaxed);
    }
    for (name, help, v) in session_counters(&sessions)
        .into_iter()
        .chain(store_counters(s))
    {
        let _ = write!(
            o,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
        );
    }
    let _ = write!(
        o,
        "# HELP labelflow_collector_exporters Exporter scopes (address, domain) tracked.\n\
         # TYPE labelflow_collector_exporters gauge\nlabelflow_collector_exporters {}\n",
        s.scopes
    );
    let _ = write!(
        o,
        "# HELP labelflow_collector_journal_records Records received and journaled, not merged \
         into the aggregates yet (reports count them once merged).\n\
         # TYPE labelflow_collector_journal_records gauge\nlabelflow_collector_journal_records {}\n\
         # HELP labelflow_collector_journal_bytes Octets of the journal not merged yet.\n\
         # TYPE labelflow_collector_journal_bytes gauge\nlabelflow_collector_journal_bytes {}\n",
        s.journal_records, s.journal_bytes
    );
    if let Some(sp) = &s.spool {
        let _ = write!(
            o,
            "# HELP labelflow_collector_spool_datagrams Datagrams received and not decoded yet \
             (in memory or in the spool file).\n\
             # TYPE labelflow_collector_spool_datagrams gauge\nlabelflow_collector_spool_datagrams {}\n\
             # HELP labelflow_collector_spool_bytes Octets of the spool file not decoded yet.\n\
             # TYPE labelflow_collector_spool_bytes gauge\nlabelflow_collector_spool_bytes {}\n\
             # HELP labelflow_collector_spool_dropped_datagrams_total Datagrams received and \
             dropped: the spool file had reached limits.max_spool_bytes, or could not be \
             written, or was still undecoded when the shutdown's drain ended.\n\
             # TYPE labelflow_collector_spool_dropped_datagrams_total counter\n\
             labelflow_collector_spool_dropped_datagrams_total {}\n\
             # HELP labelflow_collector_receiving_first_ms_total Milliseconds that decoding \
             and merging stepped aside because a socket's receive queue was filling \
             (summed over the threads).\n\
             # TYPE labelflow_collector_receiving_first_ms_total counter\n\
             labelflow_collector_receiving_first_ms_total {}\n",
            sp.pending_datagrams.load(Ordering::Relaxed),
            sp.file_bytes.load(Ordering::Relaxed),
            sp.dropped_datagrams.load(Ordering::Relaxed),
            sp.pressure.yielded_ms.load(Ordering::Relaxed),
        );
    }
    render_series(&mut o, s);
    render_tunnels(&mut o, s);
    if let Some(c) = &s.clickhouse {
        crate::clickhouse::sink::render_metrics(&mut o, c);
    }
    o
}

/// (name, help, value) of the template sessions' counters.
fn session_counters(ss: &SessionStats) -> Vec<(&'static str, &'static str, u64)> {
    vec![
        (
            "labelflow_collector_datagrams_total",
            "Datagrams received.",
            ss.datagrams,
        ),
        (
            "labelflow_collector_flow_records_total",
            "Flow records decoded.",
            ss.flow_records,
        ),
        (
            "labelflow_collector_options_records_total",
            "Options data records decoded.",
            ss.options_records,
        ),
        (
            "labelflow_collector_template_records_total",
            "Template records received.",
            ss.template_records,
        ),
        (
            "labelflow_collector_sequence_gaps_total",
            "Sequence number discontinuities.",
            ss.sequence_gaps,
        ),
        (
            "labelflow_collector_sequence_lost_total",
            "Records (IPFIX, v5) or packets (v9) missing according to sequence numbers.",
            ss.sequence_lost,
        ),
        (
            "labelflow_collector_sequence_resets_total",
            "Sequence numbers that went backwards.",
            ss.sequence_resets,
        ),
        (
            "labelflow_collector_lost_across_restart_total",
            "Records (v5, IPFIX) or packets (v9) missing at each exporter's first message after a \
             restart: received but not committed before it, or sent while down.",
            ss.lost_across_restart,
        ),
        (
            "labelflow_collector_evicted_exporters_total",
            "Exporter scopes evicted from the LRU.",
            ss.evicted_scopes,
        ),
        (
            "labelflow_collector_refused_application_names_total",
            "Application names not kept: the exporter scope had max_application_names.",
            ss.refused_application_names,
        ),
    ]
}

/// (name, help, value) of the store's, the receive loop's and the aggregation's counters.
fn store_counters(s: &Snapshot) -> Vec<(&'static str, &'static str, u64)> {
    vec![
        (
            "labelflow_collector_commits_total",
            "Store transactions committed.",
            s.commits,
        ),
        (
            "labelflow_collector_commit_errors_total",
            "Store transactions that failed.",
            s.commit_errors,
        ),
        (
            "labelflow_collector_committed_datagrams_total",
            "Datagrams received by this process whose records are merged into the \
             aggregates (journaled before: labelflow_collector_journal_records).",
            s.committed_datagrams,
        ),
        (
            "labelflow_collector_journal_lost_records_total",
            "Records lost because their journal write failed (a full disk, say).",
            s.journal_lost,
        ),
        (
            "labelflow_collector_journal_malformed_total",
            "Journal rows that could not be read whole (the rest of the row skipped).",
            s.journal_malformed,
        ),
        (
            "labelflow_collector_receive_errors_total",
            "Socket receive errors.",
            s.receive_errors,
        ),
        (
            "labelflow_collector_udp_gro_reads_total",
            "Socket reads that carried several datagrams (UDP receive offload).",
            s.gro_reads,
        ),
        (
            "labelflow_collector_folded_keys_total",
            "Keys folded into other by the per-bucket bound.",
            s.aggregation.folded_keys,
        ),
        (
            "labelflow_collector_rollup_folded_keys_total",
            "Port, host and tunnel keys folded into other in a coarser resolution's bucket by the per-bucket bound.",
            s.rollup.folded_keys,
        ),
        (
            "labelflow_collector_rollup_forgotten_key_sets_total",
            "Key-bound sets of coarse buckets forgotten to stay within max_tracked_keys / 8 per resolution.",
            s.rollup.forgotten_key_sets,
        ),
        (
            "labelflow_collector_folded_nat_keys_total",
            "NAT pairs folded into other past max_nat_keys_per_bucket (also in folded_keys).",
            s.aggregation.folded_nat_keys,
        ),
        (
            "labelflow_collector_forgotten_key_sets_total",
            "Key-bound sets of old buckets forgotten to stay within max_tracked_keys.",
            s.aggregation.forgotten_key_sets,
        ),
        (
            "labelflow_collector_folded_labels_total",
            "Records counted under other because max_labels names were taken.",
            s.aggregation.folded_labels,
        ),
        (
            "labelflow_collector_folded_tunnels_total",
            "Records counted under the tunnel other because max_tunnel_names names were taken.",
            s.aggregation.folded_tunnels,
        ),
        (
            "labelflow_collector_truncated_labels_total",
            "Label names cut to max_label_bytes.",
            s.aggregation.truncated_labels,
        ),
        (
            "labelflow_collector_early_commits_total",
            "Batches handed to the store early because a pending bound was reached.",
            s.early_commits,
        ),
        (
            "labelflow_collector_excluded_internal_total",
            "Records skipped for hosts because both ends are internal.",
            s.aggregation.excluded_internal,
        ),
    ]
}

/// The labelled series of `/metrics` (bounded label values).
fn render_series(o: &mut String, s: &Snapshot) {
    let ss = &s.sessions;
    o.push_str("# HELP labelflow_collector_decode_errors_total Datagrams or sets not decoded, by reason.\n");
    o.push_str("# TYPE labelflow_collector_decode_errors_total counter\n");
    for e in DecodeError::ALL {
        let _ = writeln!(
            o,
            "labelflow_collector_decode_errors_total{{reason=\"{}\"}} {}",
            e.reason(),
            ss.error(e)
        );
    }
    o.push_str(
        "# HELP labelflow_collector_time_rule_records_total Records refused or clamped by the \
         time rule, by exporter and reason.\n",
    );
    o.push_str("# TYPE labelflow_collector_time_rule_records_total counter\n");
    for (exporter, counts) in &s.time_rule {
        for (r, n) in TimeRule::REASONS.iter().zip(counts) {
            let _ = writeln!(
                o,
                "labelflow_collector_time_rule_records_total{{exporter=\"{}\",reason=\"{}\"}} {n}",
                escape(exporter),
                r.reason()
            );
        }
    }
    o.push_str(
        "# HELP labelflow_collector_refused_datagrams_total Datagrams from sources outside \
         allowed_exporters, dropped before decoding.\n",
    );
    o.push_str("# TYPE labelflow_collector_refused_datagrams_total counter\n");
    for (source, n) in &s.refused_sources {
        let _ = writeln!(
            o,
            "labelflow_collector_refused_datagrams_total{{source=\"{}\"}} {n}",
            escape(source)
        );
    }
    o.push_str(
        "# HELP labelflow_collector_label_bytes_total Bytes per label (sampling applied).\n",
    );
    o.push_str("# TYPE labelflow_collector_label_bytes_total counter\n");
    for (l, b, _) in &s.labels {
        let _ = writeln!(
            o,
            "labelflow_collector_label_bytes_total{{label=\"{}\"}} {b}",
            escape(l)
        );
    }
    o.push_str(
        "# HELP labelflow_collector_label_packets_total Packets per label (sampling applied).\n",
    );
    o.push_str("# TYPE labelflow_collector_label_packets_total counter\n");
    for (l, _, p) in &s.labels {
        let _ = writeln!(
            o,
            "labelflow_collector_label_packets_total{{label=\"{}\"}} {p}",
            escape(l)
        );
    }
}

/// Per-tunnel series: bytes and packets of each named tunnel by part (ESP, AH, ESP in
/// UDP, IKE, NAT-keepalive on the wire; inner decrypted).
fn render_tunnels(o: &mut String, s: &Snapshot) {
    for (i, (metric, what)) in [
        ("labelflow_collector_tunnel_bytes_total", "Bytes"),
        ("labelflow_collector_tunnel_packets_total", "Packets"),
    ]
    .into_iter()
    .enumerate()
    {
        let _ = write!(
            o,
            "# HELP {metric} {what} per named tunnel and part (sampling applied).\n\
             # TYPE {metric} counter\n"
        );
        for (name, parts) in &s.tunnels {
            for (part, (b, p)) in Part::ALL.iter().zip(parts) {
                let v = if i == 0 { b } else { p };
                if *b != 0 || *p != 0 {
                    let _ = writeln!(
                        o,
                        "{metric}{{tunnel=\"{}\",part=\"{}\"}} {v}",
                        escape(name),
                        part.name()
                    );
                }
            }
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = parse_query(
            "tunnel",
            Some("5m"),
            Some("1h"),
            None,
            None,
            Some(3),
            10_000,
        )
        .unwrap();
        assert_eq!(
            (q.by, q.bucket, q.from, q.to, q.top),
            (Dim::Tunnel, Some(300), 6400, 10_001, Some(3))
        );
        let q = parse_query(
            "label",
            None,
            None,
            Some("1970-01-01T00:01:00Z"),
            Some("600"),
            None,
            0,
        )
        .unwrap();
        assert_eq!((q.from, q.to), (60, 600));
        assert!(parse_query("nope", None, None, None, None, None, 0).is_err());
        assert!(parse_query("label", None, Some("1h"), Some("0"), None, None, 0).is_err());
    }

    #[test]
    fn metrics_text() {
        let mut s = Snapshot::default();
        s.labels.push(("e\"sp".into(), 10, 1));
        s.sessions.errors[0] = 4;
        let mut parts = [(0, 0); 6];
        parts[Part::EspInUdp as usize] = (1496, 11);
        s.tunnels.push(("hq".into(), parts));
        let t = render_metrics(&s);
        assert!(
            t.contains(
                "labelflow_collector_tunnel_bytes_total{tunnel=\"hq\",part=\"esp-in-udp\"} 1496"
            ),
            "{t}"
        );
        assert!(t.contains(
            "labelflow_collector_tunnel_packets_total{tunnel=\"hq\",part=\"esp-in-udp\"} 11"
        ));
        assert!(!t.contains("part=\"inner\""), "{t}");
        assert!(
            t.contains("labelflow_collector_label_bytes_total{label=\"e\\\"sp\"} 10"),
            "{t}"
        );
        assert!(t.contains("labelflow_collector_decode_errors_total{reason=\"truncated\"} 4"));
    }
}
