//! Reports: a query over the store regrouped into output buckets, top-N with `other`, and its
//! renderings (table, CSV, JSON). Pure apart from the [`Reader`] passed in.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::aggregate::{parse_tunnel_key, Counters, Dim, Part, OTHER};
use crate::store::{Reader, Row, StoreError};
use crate::tunnel_report::{self, TunnelCounters};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub by: Dim,
    /// Output bucket width in seconds; `None` picks the finest stored resolution that keeps
    /// the report under [`MAX_BUCKETS`] buckets.
    pub bucket: Option<u64>,
    /// Range start and end in seconds since the epoch, `[from, to)`; widened to whole buckets.
    pub from: i64,
    pub to: i64,
    /// Keep the N keys with the most bytes, fold the rest into `other`.
    pub top: Option<usize>,
    /// Only these keys (exact names, e.g. labels `esp` and `vpn`); empty for all.
    pub keys: Vec<String>,
}

/// Most output buckets an automatic choice of bucket width allows.
pub const MAX_BUCKETS: i64 = 1500;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("bucket {0}s is not a multiple of a stored resolution ({1:?})")]
    Bucket(u64, Vec<i64>),
    #[error("empty range: from {0} is not before to {1}")]
    Range(i64, i64),
    #[error(transparent)]
    ClickHouse(#[from] crate::clickhouse::ChError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub by: Dim,
    /// Output bucket width, seconds.
    pub bucket: i64,
    pub from: i64,
    pub to: i64,
    /// Keys by descending bytes (top N, then `other` if anything was folded).
    pub keys: Vec<String>,
    /// Rows by bucket, then key order.
    pub rows: Vec<Row>,
    /// Totals per key, in `keys` order.
    pub totals: Vec<(String, Counters)>,
    pub total: Counters,
    /// `--by tunnel`: the breakdown of `rows` and `totals` (same order) by part and SA.
    pub tunnels: Option<TunnelDetail>,
}

/// The part of a connection, and the SPI, a stored tunnel key names.
type PartOf = (Part, Option<u32>);

/// Per-part counters and SAs of a tunnel report's rows and totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelDetail {
    pub rows: Vec<TunnelCounters>,
    pub totals: Vec<TunnelCounters>,
    /// Whether any stored key named a connection (else the table keeps the plain layout:
    /// unnamed SAs and configured tunnels only).
    pub named: bool,
}

/// Run a query.
pub fn build(reader: &Reader, q: &Query) -> Result<Report, ReportError> {
    let stored = reader.resolutions()?;
    build_from(q, &stored, |res, from, to| {
        Ok(reader.rows(res, q.by, from, to)?)
    })
}

/// Run a query over any source of rows: `stored` resolutions, and `rows(res, from, to)`
/// giving the rows of `q.by` at resolution `res` with `from <= bucket < to`.
pub fn build_from(
    q: &Query,
    stored: &[i64],
    rows: impl FnOnce(i64, i64, i64) -> Result<Vec<Row>, ReportError>,
) -> Result<Report, ReportError> {
    let (res, bucket, from, to) = plan(q, stored)?;
    let raw = rows(res, from, to)?;
    Ok(assemble(q.by, bucket, from, to, raw, q.top, &q.keys))
}

/// The stored resolution a query reads, its output bucket width and its range widened to
/// whole buckets: `(res, bucket, from, to)`.
pub fn plan(q: &Query, stored: &[i64]) -> Result<(i64, i64, i64, i64), ReportError> {
    if q.from >= q.to {
        return Err(ReportError::Range(q.from, q.to));
    }
    let (res, bucket) = match q.bucket {
        Some(b) => {
            let res = stored
                .iter()
                .rev()
                .find(|r| b as i64 % **r == 0)
                .copied()
                .or(if stored.is_empty() {
                    Some(b as i64)
                } else {
                    None
                })
                .ok_or_else(|| ReportError::Bucket(b, stored.to_vec()))?;
            (res, b as i64)
        }
        None => {
            let span = q.to - q.from;
            let res = stored
                .iter()
                .find(|r| span / **r <= MAX_BUCKETS)
                .or(stored.last())
                .copied()
                .unwrap_or(60);
            (res, res)
        }
    };
    let from = q.from.div_euclid(bucket) * bucket;
    let to = (q.to + bucket - 1).div_euclid(bucket) * bucket;
    Ok((res, bucket, from, to))
}

/// Keep the rows of `keys` (all when empty), regroup them into output buckets and apply
/// top-N. Pure. Tunnel keys are first regrouped by connection ([`parse_tunnel_key`]), the
/// part and SPI each stored key names kept for the breakdown; `keys` then selects
/// connections (or stored keys).
pub fn assemble(
    by: Dim,
    bucket: i64,
    from: i64,
    to: i64,
    raw: Vec<Row>,
    top: Option<usize>,
    keys: &[String],
) -> Report {
    let tunnels = by == Dim::Tunnel;
    let mut named = false;
    let mut raw: Vec<(Row, Option<PartOf>)> = raw
        .into_iter()
        .map(|mut r| {
            if !tunnels {
                return (r, None);
            }
            let (conn, part, spi) = parse_tunnel_key(&r.key);
            let (conn, detail) = (conn.to_string(), part.map(|p| (p, spi)));
            named |= conn.len() != r.key.len();
            if !keys.is_empty() && keys.contains(&r.key) && !keys.contains(&conn) {
                // Asked for by its stored key: kept, as a connection of its own.
                return (r, detail);
            }
            r.key = conn;
            (r, detail)
        })
        .collect();
    if !keys.is_empty() {
        raw.retain(|r| keys.contains(&r.0.key));
    }
    let mut per_key: HashMap<String, Counters> = HashMap::new();
    for (r, _) in &raw {
        per_key.entry(r.key.clone()).or_default().add(&r.counters);
    }
    let mut ranked: Vec<(String, Counters)> = per_key.into_iter().collect();
    ranked.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes).then_with(|| a.0.cmp(&b.0)));
    let keep: Vec<String> = match top {
        Some(n) if ranked.len() > n => ranked.iter().take(n).map(|k| k.0.clone()).collect(),
        _ => ranked.iter().map(|k| k.0.clone()).collect(),
    };
    let folded = keep.len() < ranked.len();
    let mut keys = keep.clone();
    if folded && !keys.iter().any(|k| k == OTHER) {
        keys.push(OTHER.to_string());
    }
    let order: HashMap<&str, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let mut grouped: HashMap<(i64, usize), (Counters, TunnelCounters)> = HashMap::new();
    let mut totals = vec![Counters::default(); keys.len()];
    let mut detail = vec![TunnelCounters::default(); if tunnels { keys.len() } else { 0 }];
    let mut total = Counters::default();
    for (r, part) in &raw {
        let idx = order
            .get(r.key.as_str())
            .copied()
            .unwrap_or_else(|| order[OTHER]);
        let b = r.bucket.div_euclid(bucket) * bucket;
        let g = grouped.entry((b, idx)).or_default();
        g.0.add(&r.counters);
        if let Some((part, spi)) = *part {
            let c = &r.counters;
            g.1.add(part, spi, c.bytes, c.packets);
            detail[idx].add(part, spi, c.bytes, c.packets);
        }
        totals[idx].add(&r.counters);
        total.add(&r.counters);
    }
    let mut rows: Vec<((i64, usize), (Counters, TunnelCounters))> = grouped.into_iter().collect();
    rows.sort_by_key(|(k, _)| *k);
    let tunnel_rows = tunnels.then(|| rows.iter().map(|(_, (_, t))| t.clone()).collect());
    Report {
        by,
        bucket,
        from,
        to,
        rows: rows
            .into_iter()
            .map(|((b, i), (c, _))| Row {
                bucket: b,
                key: keys[i].clone(),
                counters: c,
            })
            .collect(),
        totals: keys.iter().cloned().zip(totals).collect(),
        keys,
        total,
        tunnels: tunnel_rows.map(|rows| TunnelDetail {
            rows,
            totals: detail,
            named,
        }),
    }
}

/// RFC 3339 (UTC, seconds) of a bucket start.
pub fn rfc3339(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn bits_per_second(bytes: u64, secs: i64) -> f64 {
    if secs <= 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / secs as f64
    }
}

/// JSON document: `{by, bucket_seconds, from, to, rows: [...], totals: [...], total}`.
pub fn to_json(r: &Report) -> Value {
    let key_field = r.by.name();
    let row = |bucket: Option<i64>, key: &str, c: &Counters, secs: i64| {
        let mut v = json!({
            key_field: key,
            "bytes": c.bytes,
            "packets": c.packets,
            "flows": c.flows,
            "bits_per_second": bits_per_second(c.bytes, secs),
        });
        if let Some(b) = bucket {
            v["bucket_start"] = json!(rfc3339(b));
        }
        if r.by == Dim::Host {
            v["bytes_in"] = json!(c.bytes_in);
            v["bytes_out"] = json!(c.bytes_out);
        }
        v
    };
    let span = r.to - r.from;
    let mut rows: Vec<Value> = r
        .rows
        .iter()
        .map(|x| row(Some(x.bucket), &x.key, &x.counters, r.bucket))
        .collect();
    let mut totals: Vec<Value> = r
        .totals
        .iter()
        .map(|(k, c)| row(None, k, c, span))
        .collect();
    if let Some(t) = &r.tunnels {
        for (v, c) in rows.iter_mut().zip(&t.rows) {
            c.extend_json(v);
        }
        for (v, c) in totals.iter_mut().zip(&t.totals) {
            c.extend_json(v);
        }
    }
    json!({
        "by": key_field,
        "additive": r.by.is_additive(),
        "bucket_seconds": r.bucket,
        "from": rfc3339(r.from),
        "to": rfc3339(r.to),
        "keys": r.keys,
        "rows": rows,
        "totals": totals,
        "total": {"bytes": r.total.bytes, "packets": r.total.packets, "flows": r.total.flows,
                  "bits_per_second": bits_per_second(r.total.bytes, span)},
    })
}

/// CSV with a header row; one line per (bucket, key).
pub fn to_csv(r: &Report) -> String {
    let mut s = format!(
        "bucket_start,{},bytes,packets,flows,bytes_in,bytes_out",
        r.by.name()
    );
    if r.tunnels.is_some() {
        let _ = write!(s, ",{}", tunnel_report::CSV_HEADER);
    }
    s.push('\n');
    for (i, x) in r.rows.iter().enumerate() {
        let c = &x.counters;
        let _ = write!(
            s,
            "{},{},{},{},{},{},{}",
            rfc3339(x.bucket),
            csv_field(&x.key),
            c.bytes,
            c.packets,
            c.flows,
            c.bytes_in,
            c.bytes_out
        );
        if let Some(t) = &r.tunnels {
            s.push_str(&tunnel_report::csv_fields(&t.rows[i]));
        }
        s.push('\n');
    }
    s
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Human units: 1.5 GB, 12.0 Mbit/s.
pub fn human(v: f64, unit: &str) -> String {
    const P: [&str; 6] = ["", "k", "M", "G", "T", "P"];
    let mut v = v;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < P.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {}{unit}", P[i])
    }
}

/// Table of totals per key over the range, with average rate, share, and a total line.
pub fn to_table(r: &Report) -> String {
    let span = r.to - r.from;
    if let Some(t) = r.tunnels.as_ref().filter(|t| t.named) {
        let header = format!(
            "{} .. {} ({}s buckets)",
            rfc3339(r.from),
            rfc3339(r.to),
            r.bucket
        );
        let totals: Vec<(String, u64, TunnelCounters)> = r
            .totals
            .iter()
            .zip(&t.totals)
            .map(|((k, c), t)| (k.clone(), c.bytes, t.clone()))
            .collect();
        return tunnel_report::table(&header, &totals, human);
    }
    let name = r.by.name();
    let width = r
        .keys
        .iter()
        .map(|k| k.len())
        .max()
        .unwrap_or(0)
        .max(name.len())
        .max(5);
    let mut s = format!(
        "{} .. {} ({}s buckets)\n{:<width$}  {:>10}  {:>10}  {:>12}  {:>8}  {:>6}\n",
        rfc3339(r.from),
        rfc3339(r.to),
        r.bucket,
        name,
        "bytes",
        "packets",
        "avg rate",
        "flows",
        "share",
    );
    let share = |b: u64| {
        if r.total.bytes == 0 {
            0.0
        } else {
            b as f64 * 100.0 / r.total.bytes as f64
        }
    };
    let mut line = |k: &str, c: &Counters| {
        let _ = writeln!(
            s,
            "{:<width$}  {:>10}  {:>10}  {:>12}  {:>8}  {:>5.1}%",
            k,
            human(c.bytes as f64, "B"),
            human(c.packets as f64, ""),
            human(bits_per_second(c.bytes, span), "bit/s"),
            c.flows,
            share(c.bytes),
        );
    };
    for (k, c) in &r.totals {
        line(k, c);
    }
    if r.by.is_additive() {
        line("total", &r.total);
    } else {
        let _ = writeln!(
            s,
            "(no total: {name} keys overlap, a sum would count some traffic twice; shares are of their sum)"
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(bucket: i64, key: &str, bytes: u64) -> Row {
        Row {
            bucket,
            key: key.into(),
            counters: Counters {
                bytes,
                packets: 1,
                flows: 1,
                ..Counters::default()
            },
        }
    }

    #[test]
    fn overlapping_dimensions_get_no_total() {
        // `naive` holds everything `uplink` does: their sum would double-count.
        let raw = vec![row(0, "naive", 300), row(0, "uplink", 200)];
        let r = assemble(Dim::View, 60, 0, 60, raw, None, &[]);
        let t = to_table(&r);
        assert!(!t.lines().any(|l| l.starts_with("total")), "{t}");
        assert!(t.contains("no total"), "{t}");
        assert_eq!(to_json(&r)["additive"], false);
        let r = assemble(Dim::Label, 60, 0, 60, vec![row(0, "esp", 1)], None, &[]);
        assert_eq!(to_json(&r)["additive"], true);
        assert!(to_table(&r).lines().any(|l| l.starts_with("total")));
    }

    #[test]
    fn only_the_keys_asked_for() {
        let raw = vec![row(0, "esp", 100), row(0, "vpn", 40), row(60, "other", 7)];
        let keys = ["vpn".to_string(), "other".to_string(), "absent".to_string()];
        let r = assemble(Dim::Label, 60, 0, 120, raw, None, &keys);
        assert_eq!(r.keys, vec!["vpn", "other"]);
        assert_eq!(r.total.bytes, 47);
        assert!(r.rows.iter().all(|x| x.key != "esp"));
    }

    #[test]
    fn regroups_and_folds_top_n() {
        let raw = vec![
            row(0, "a", 100),
            row(60, "a", 50),
            row(0, "b", 10),
            row(0, "c", 20),
            row(300, "c", 5),
        ];
        let r = assemble(Dim::Label, 300, 0, 600, raw, Some(1), &[]);
        assert_eq!(r.keys, vec!["a", "other"]);
        assert_eq!(r.total.bytes, 185);
        assert_eq!(r.rows.len(), 3);
        assert_eq!(
            (
                r.rows[0].bucket,
                r.rows[0].key.as_str(),
                r.rows[0].counters.bytes
            ),
            (0, "a", 150)
        );
        assert_eq!(
            (r.rows[1].key.as_str(), r.rows[1].counters.bytes),
            ("other", 30)
        );
        assert_eq!((r.rows[2].bucket, r.rows[2].counters.bytes), (300, 5));
        let j = to_json(&r);
        assert_eq!(j["rows"][0]["bucket_start"], "1970-01-01T00:00:00Z");
        assert_eq!(j["rows"][0]["label"], "a");
        assert_eq!(j["totals"][1]["bytes"], 35);
        let t = to_table(&r);
        assert!(
            t.contains("other") && t.contains("total") && t.contains("bit/s"),
            "{t}"
        );
        let c = to_csv(&r);
        assert_eq!(c.lines().nth(1), Some("1970-01-01T00:00:00Z,a,150,2,2,0,0"));
    }

    #[test]
    fn tunnel_rows_are_connections_with_parts_and_sas() {
        let raw = vec![
            row(0, "hq [esp-in-udp 0x0000c001]", 1496),
            row(0, "hq [esp-in-udp 0x0000c002]", 1000),
            row(60, "hq [esp-in-udp 0x0000c003]", 500),
            row(60, "hq [ike]", 464),
            row(0, "hq [inner]", 2000),
            row(0, "rw [nat-keepalive]", 29),
            row(0, "esp 192.0.2.1>198.51.100.7 spi 0x0000abcd", 70),
            row(0, "branch", 40),
        ];
        let unnamed = assemble(Dim::Tunnel, 60, 0, 120, raw[6..].to_vec(), None, &[]);
        assert!(
            to_table(&unnamed).contains("avg rate"),
            "plain layout without names"
        );
        let r = assemble(Dim::Tunnel, 60, 0, 120, raw.clone(), None, &[]);
        assert_eq!(
            r.keys,
            vec![
                "hq",
                "esp 192.0.2.1>198.51.100.7 spi 0x0000abcd",
                "branch",
                "rw"
            ]
        );
        let t = r.tunnels.as_ref().expect("tunnel detail");
        let hq = &t.totals[0];
        assert_eq!(hq.wire(), (3460, 4));
        assert_eq!(hq.part(Part::Inner), (2000, 1));
        assert_eq!((hq.overhead_bytes(), hq.sas()), (1460, 3));
        assert_eq!(r.totals[0].1.bytes, 5460, "everything the keys counted");
        // Rows: hq in bucket 0 has two SAs, in bucket 60 one.
        let sas: Vec<(i64, &str, usize)> = r
            .rows
            .iter()
            .zip(&t.rows)
            .map(|(x, d)| (x.bucket, x.key.as_str(), d.sas()))
            .filter(|x| x.1 == "hq")
            .collect();
        assert_eq!(sas, vec![(0, "hq", 2), (60, "hq", 1)]);
        let j = to_json(&r);
        assert_eq!(j["totals"][0]["tunnel"], "hq");
        assert_eq!(j["totals"][0]["esp_in_udp_bytes"], 2996);
        assert_eq!(j["totals"][0]["inner_packets"], 1);
        assert_eq!(j["totals"][0]["sas"], 3);
        assert_eq!(j["totals"][1]["sas"], 1);
        assert_eq!(j["totals"][2]["wire_bytes"], 0);
        let c = to_csv(&r);
        let header: Vec<&str> = c.lines().next().unwrap().split(',').collect();
        assert!(header.ends_with(&["overhead_bytes", "sas"]), "{c}");
        assert!(
            c.lines().all(|l| l.split(',').count() == header.len()),
            "{c}"
        );
        let table = to_table(&r);
        assert!(
            table.contains("esp-in-udp") && table.contains("overhead"),
            "{table}"
        );
        assert!(table.lines().any(|l| l.starts_with("hq ")), "{table}");
        // Keys select connections; top-N folds connections into `other`.
        let r = assemble(Dim::Tunnel, 60, 0, 120, raw.clone(), None, &["rw".into()]);
        assert_eq!(r.keys, vec!["rw"]);
        let r = assemble(Dim::Tunnel, 60, 0, 120, raw, Some(1), &[]);
        assert_eq!(r.keys, vec!["hq", "other"]);
        let other = &r.tunnels.as_ref().unwrap().totals[1];
        assert_eq!((other.sas(), other.part(Part::NatKeepalive)), (1, (29, 1)));
    }

    #[test]
    fn human_units() {
        assert_eq!(human(999.0, "B"), "999 B");
        assert_eq!(human(1_500_000.0, "bit/s"), "1.5 Mbit/s");
    }
}
