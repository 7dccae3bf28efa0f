//! Reports over the raw `flows` table (`report --clickhouse URL --by flow`): the flows
//! (label and 5-tuple) with the most bytes among the records that ended in a range, summed
//! over every collector writing there, each record once (`FINAL`, see [`super::raw`]).

use serde_json::json;

use super::client::{quote, ChError, Client};
use super::schema::FLOWS;

/// One flow of the report: a label and 5-tuple, summed over its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRow {
    pub label: String,
    pub src: String,
    pub dst: String,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub bytes: u64,
    pub packets: u64,
    pub flows: u64,
}

/// TabSeparated text unescaped (`\t`, `\n`, `\\` and the other escapes ClickHouse writes).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    out
}

fn parse(line: &str) -> Option<FlowRow> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() != 9 {
        return None;
    }
    Some(FlowRow {
        label: unescape(f[0]),
        src: unescape(f[1]),
        dst: unescape(f[2]),
        protocol: f[3].parse().ok()?,
        src_port: f[4].parse().ok()?,
        dst_port: f[5].parse().ok()?,
        bytes: f[6].parse().ok()?,
        packets: f[7].parse().ok()?,
        flows: f[8].parse().ok()?,
    })
}

/// The `n` flows with the most bytes among the records with `from <= time_end < to`
/// (seconds), only `labels` when not empty; ties in key order.
pub fn top_flows(
    c: &Client,
    db: &str,
    (from, to): (i64, i64),
    n: usize,
    labels: &[String],
) -> Result<Vec<FlowRow>, ChError> {
    let distributed = c
        .text(&format!("EXISTS TABLE {db}.{FLOWS}_all"))?
        .trim()
        .starts_with('1');
    let table = format!("{db}.{FLOWS}{}", if distributed { "_all" } else { "" });
    let only = if labels.is_empty() {
        String::new()
    } else {
        let l: Vec<String> = labels.iter().map(|s| quote(s)).collect();
        format!(" AND label IN ({})", l.join(", "))
    };
    let clamp = |t: i64| t.clamp(0, u32::MAX as i64);
    let text = c.text(&format!(
        "SELECT label, src_addr, dst_addr, protocol, src_port, dst_port,
                sum(bytes) AS b, sum(packets), sum(flows)
         FROM {table} FINAL
         WHERE time_end >= toDateTime({f}) AND time_end < toDateTime({t}){only}
         GROUP BY label, src_addr, dst_addr, protocol, src_port, dst_port
         ORDER BY b DESC, label, src_addr, dst_addr, protocol, src_port, dst_port
         LIMIT {n} FORMAT TabSeparated",
        f = clamp(from),
        t = clamp(to),
    ))?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            parse(l).ok_or(ChError::Response {
                addr: c.endpoint(),
                what: "a flow row of an unexpected shape",
            })
        })
        .collect()
}

const HEADER: [&str; 9] = [
    "label", "src_addr", "dst_addr", "protocol", "src_port", "dst_port", "bytes", "packets",
    "flows",
];

fn fields(r: &FlowRow) -> [String; 9] {
    [
        r.label.clone(),
        r.src.clone(),
        r.dst.clone(),
        r.protocol.to_string(),
        r.src_port.to_string(),
        r.dst_port.to_string(),
        r.bytes.to_string(),
        r.packets.to_string(),
        r.flows.to_string(),
    ]
}

/// Aligned text table.
pub fn to_table(rows: &[FlowRow]) -> String {
    let cells: Vec<[String; 9]> = rows.iter().map(fields).collect();
    let mut width = HEADER.map(str::len);
    for r in &cells {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let head = HEADER.map(str::to_string);
    for r in std::iter::once(&head).chain(&cells) {
        let line: Vec<String> = r
            .iter()
            .zip(width)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < 3 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// CSV with a header line (RFC 4180 quoting).
pub fn to_csv(rows: &[FlowRow]) -> String {
    let q = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = HEADER.join(",") + "\n";
    for r in rows {
        let f = fields(r);
        let line: Vec<String> = f.iter().map(|s| q(s)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// `{"by": "flow", "from", "to", "rows": [...]}`.
pub fn to_json(rows: &[FlowRow], (from, to): (i64, i64)) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            json!({
                "label": r.label, "src_addr": r.src, "dst_addr": r.dst,
                "protocol": r.protocol, "src_port": r.src_port, "dst_port": r.dst_port,
                "bytes": r.bytes, "packets": r.packets, "flows": r.flows,
            })
        })
        .collect();
    json!({ "by": "flow", "from": from, "to": to, "rows": rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_parse_unescape_and_print() {
        let r = parse("e\\tsp\t10.0.0.1\t::1\t6\t1024\t443\t1000\t3\t1").unwrap();
        assert_eq!(
            (r.label.as_str(), r.dst.as_str(), r.dst_port, r.bytes),
            ("e\tsp", "::1", 443, 1000)
        );
        assert!(parse("esp\t10.0.0.1").is_none());
        assert!(
            parse("esp\ta\tb\t300\t1\t2\t3\t4\t5").is_none(),
            "protocol > 255"
        );
        let csv = to_csv(std::slice::from_ref(&r));
        assert_eq!(
            csv.lines().nth(1),
            Some("e\tsp,10.0.0.1,::1,6,1024,443,1000,3,1")
        );
        let t = to_table(std::slice::from_ref(&r));
        assert!(t.starts_with("label"), "{t}");
        assert_eq!(to_json(&[r], (0, 60))["rows"][0]["bytes"], 1000);
    }
}
