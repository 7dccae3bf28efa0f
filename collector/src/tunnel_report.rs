//! The per-tunnel breakdown of a `--by tunnel` report: stored tunnel keys name a part of a
//! connection (`hq [esp-in-udp 0xc1a2b3c4]`, `hq [ike]`, `hq [inner]`), and the report shows
//! one row per connection with its wire traffic split by part, its inner (decrypted)
//! traffic, the overhead between the two and the number of distinct SAs (SPIs) seen. SPIs
//! change on every rekey; connection names do not, so the rows stay stable across rekeys.
//!
//! ```text
//!  stored keys            parse_tunnel_key            one row per (bucket, connection)
//!  hq [esp-in-udp 0x01] ─┐                            hq: esp-in-udp 2 SPIs, ike, inner,
//!  hq [esp-in-udp 0x02] ─┼─► (hq, part, spi) ───────►     overhead = wire - inner
//!  hq [inner]          ──┘
//!  esp 192.0.2.1>198.51.100.7 spi 0x0000abcd ──────►  a connection of its own (one SA)
//! ```

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::aggregate::Part;

/// One connection's traffic in one row (a bucket, or the whole range).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelCounters {
    /// (bytes, packets) per part, in [`Part::ALL`] order.
    pub parts: [(u64, u64); 6],
    /// The SPIs seen: one per security association and direction.
    pub spis: BTreeSet<u32>,
}

impl TunnelCounters {
    /// Add a stored row of `part` (and `spi`) to this connection.
    pub fn add(&mut self, part: Part, spi: Option<u32>, bytes: u64, packets: u64) {
        let p = &mut self.parts[part as usize];
        *p = (p.0.saturating_add(bytes), p.1.saturating_add(packets));
        if let Some(spi) = spi {
            self.spis.insert(spi);
        }
    }

    pub fn merge(&mut self, o: &TunnelCounters) {
        for (a, b) in self.parts.iter_mut().zip(&o.parts) {
            *a = (a.0.saturating_add(b.0), a.1.saturating_add(b.1));
        }
        self.spis.extend(&o.spis);
    }

    pub fn part(&self, part: Part) -> (u64, u64) {
        self.parts[part as usize]
    }

    /// Bytes and packets on the wire: ESP, AH, ESP in UDP, IKE and NAT-keepalives.
    pub fn wire(&self) -> (u64, u64) {
        Part::ALL
            .iter()
            .filter(|p| p.is_wire())
            .fold((0u64, 0u64), |(b, p), part| {
                let (pb, pp) = self.part(*part);
                (b.saturating_add(pb), p.saturating_add(pp))
            })
    }

    /// Bytes on the wire minus inner bytes: encapsulation, padding, integrity check, IKE
    /// and keepalives. Negative when the exporter saw more decrypted traffic than wire
    /// traffic (only one side of the tunnel logged, or part of a range).
    pub fn overhead_bytes(&self) -> i64 {
        let (wire, inner) = (self.wire().0, self.part(Part::Inner).0);
        (i128::from(wire) - i128::from(inner)).clamp(i128::from(i64::MIN), i128::from(i64::MAX))
            as i64
    }

    /// Distinct SAs (SPIs) seen.
    pub fn sas(&self) -> usize {
        self.spis.len()
    }

    /// The fields added to a report row in JSON: `PART_bytes`/`PART_packets` per part
    /// (dashes as underscores), `wire_*`, `inner_*` (the `inner` part), `overhead_bytes`,
    /// `sas` and `spis` (hexadecimal).
    pub fn extend_json(&self, v: &mut Value) {
        for part in Part::ALL {
            let (b, p) = self.part(part);
            let name = part.name().replace('-', "_");
            v[format!("{name}_bytes")] = json!(b);
            v[format!("{name}_packets")] = json!(p);
        }
        let (wb, wp) = self.wire();
        v["wire_bytes"] = json!(wb);
        v["wire_packets"] = json!(wp);
        v["overhead_bytes"] = json!(self.overhead_bytes());
        v["sas"] = json!(self.sas());
        v["spis"] = json!(self
            .spis
            .iter()
            .map(|s| format!("0x{s:08x}"))
            .collect::<Vec<_>>());
    }
}

/// The CSV columns added to a tunnel report, after the common ones.
pub const CSV_HEADER: &str = "esp_bytes,esp_packets,ah_bytes,ah_packets,esp_in_udp_bytes,\
esp_in_udp_packets,ike_bytes,ike_packets,nat_keepalive_bytes,nat_keepalive_packets,\
inner_bytes,inner_packets,wire_bytes,wire_packets,overhead_bytes,sas";

/// The values of [`CSV_HEADER`], each preceded by a comma.
pub fn csv_fields(t: &TunnelCounters) -> String {
    let mut s = String::new();
    for part in Part::ALL {
        let (b, p) = t.part(part);
        let _ = write!(s, ",{b},{p}");
    }
    let (wb, wp) = t.wire();
    let _ = write!(s, ",{wb},{wp},{},{}", t.overhead_bytes(), t.sas());
    s
}

/// Table of a tunnel report: one line per connection over the range, `counted` being
/// everything its keys counted (wire and inner; what keys without a part, such as a
/// configured tunnel's, hold).
pub fn table(
    header: &str,
    totals: &[(String, u64, TunnelCounters)],
    human: impl Fn(f64, &str) -> String,
) -> String {
    let width = totals
        .iter()
        .map(|(k, _, _)| k.len())
        .max()
        .unwrap_or(0)
        .max("tunnel".len());
    let mut s = format!(
        "{header}\n{:<width$}  {:>10}  {:>10}  {:>8}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>8}  {:>10}  {:>4}\n",
        "tunnel",
        "counted",
        "wire",
        "packets",
        "esp",
        "esp-in-udp",
        "ike",
        "keepalive",
        "inner",
        "packets",
        "overhead",
        "SAs",
    );
    for (k, counted, t) in totals {
        let b = |part: Part| human(t.part(part).0 as f64, "B");
        let (wb, wp) = t.wire();
        let (ib, ip) = t.part(Part::Inner);
        let esp = t.part(Part::Esp).0.saturating_add(t.part(Part::Ah).0);
        let overhead = t.overhead_bytes();
        let sign = if overhead < 0 { "-" } else { "" };
        let _ = writeln!(
            s,
            "{:<width$}  {:>10}  {:>10}  {:>8}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>8}  {:>10}  {:>4}",
            k,
            human(*counted as f64, "B"),
            human(wb as f64, "B"),
            human(wp as f64, ""),
            human(esp as f64, "B"),
            b(Part::EspInUdp),
            b(Part::Ike),
            b(Part::NatKeepalive),
            human(ib as f64, "B"),
            human(ip as f64, ""),
            format!("{sign}{}", human(overhead.unsigned_abs() as f64, "B")),
            t.sas(),
        );
    }
    s.push_str(
        "(wire = esp + esp-in-udp + ike + keepalive; overhead = wire - inner; SAs = distinct SPIs)\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{conn_key_text, parse_tunnel_key};

    #[test]
    fn keys_parse_back_to_connection_part_and_spi() {
        for (part, spi) in [
            (Part::EspInUdp, 0xc1a2_b3c4),
            (Part::Esp, 1),
            (Part::Ike, 0),
            (Part::NatKeepalive, 0),
            (Part::Inner, 0),
        ] {
            // A name may hold what the key format uses itself.
            let name = "site [a] b";
            let key = conn_key_text(name, part, spi);
            let want_spi = part.has_spi().then_some(spi);
            assert_eq!(
                parse_tunnel_key(&key),
                (name, Some(part), want_spi),
                "{key}"
            );
        }
        let sa = "hq: esp-in-udp 192.0.2.1>198.51.100.7 spi 0x0000abcd";
        assert_eq!(
            parse_tunnel_key(sa),
            (sa, Some(Part::EspInUdp), Some(0xabcd))
        );
        for plain in [
            "branch",
            "other",
            "x [nope]",
            "x [ike 0x1]",
            "x [esp]",
            "spi 0x1",
        ] {
            assert_eq!(parse_tunnel_key(plain), (plain, None, None), "{plain}");
        }
    }

    #[test]
    fn wire_inner_overhead_and_sas() {
        let mut t = TunnelCounters::default();
        t.add(Part::EspInUdp, Some(1), 1000, 10);
        t.add(Part::EspInUdp, Some(2), 500, 5);
        t.add(Part::Ike, None, 300, 2);
        t.add(Part::NatKeepalive, None, 29, 1);
        t.add(Part::Inner, None, 1100, 15);
        assert_eq!(t.wire(), (1829, 18));
        assert_eq!(t.overhead_bytes(), 729);
        assert_eq!(t.sas(), 2);
        let mut u = TunnelCounters::default();
        u.add(Part::EspInUdp, Some(2), 1, 1);
        u.add(Part::Inner, None, 5000, 1);
        t.merge(&u);
        assert_eq!((t.sas(), t.overhead_bytes()), (2, 1830 - 6100));
        let mut v = json!({});
        t.extend_json(&mut v);
        assert_eq!(v["esp_in_udp_bytes"], 1501);
        assert_eq!(v["nat_keepalive_packets"], 1);
        assert_eq!(v["spis"], json!(["0x00000001", "0x00000002"]));
        assert_eq!(
            CSV_HEADER.split(',').count(),
            csv_fields(&t).split(',').count() - 1
        );
    }
}
