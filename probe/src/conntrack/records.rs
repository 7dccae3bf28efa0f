//! From connections to flow records: labels by connmark, two unidirectional records per
//! connection and interval, per-label counters. Pure: time comes in as arguments.

use labelflow_proto::{BiflowDirection, ConnInfo, EndReason, FlowRecord};

use super::wire::{Counters, CtEntry, CtEvent};

/// Conntrack labels are exported as observation points from here on: NFLOG groups are 16-bit,
/// so `0x1_0000 + index` never collides with one.
pub const OBSERVATION_POINT_BASE: u32 = 0x1_0000;

/// `enum tcp_conntrack` states after which a destroyed connection ended by itself (FIN/RST
/// seen) rather than by its idle timeout.
const TCP_CLOSING: [u8; 5] = [4, 5, 6, 7, 8]; // FIN_WAIT CLOSE_WAIT LAST_ACK TIME_WAIT CLOSE

/// `connmark & mask == value` gives `label`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRule {
    pub value: u32,
    pub mask: u32,
    pub label: String,
}

fn classify(rules: &[LabelRule], has_default: bool, mark: u32) -> Option<usize> {
    rules
        .iter()
        .position(|r| mark & r.mask == r.value)
        .or(has_default.then_some(rules.len()))
}

/// The connections a [`Recorder`] exports: those of its zone whose connmark has a label.
#[derive(Debug, Clone)]
pub struct Filter {
    rules: Vec<LabelRule>,
    has_default: bool,
    zone: Option<u16>,
}

impl Filter {
    pub fn wants(&self, mark: u32, zone: u16) -> bool {
        self.zone.is_none_or(|z| z == zone)
            && classify(&self.rules, self.has_default, mark).is_some()
    }
}

/// Why a connection's counters are being exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    /// DESTROY event: the final counters.
    Destroy,
    /// Active-timeout sweep (counters read and zeroed).
    Active,
    /// Sweep at shutdown.
    Shutdown,
}

/// Counters of one label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelStats {
    pub label: String,
    pub observation_point: u32,
    pub packets: u64,
    pub bytes: u64,
    pub records: u64,
    /// Connections of this label destroyed without counters (created while
    /// `nf_conntrack_acct` was off): their traffic is unknown.
    pub no_counters: u64,
}

/// Labels connections and turns their counters into records.
#[derive(Debug, Clone)]
pub struct Recorder {
    rules: Vec<LabelRule>,
    /// Per rule, then the default label (last) when there is one.
    labels: Vec<LabelStats>,
    has_default: bool,
    zone: Option<u16>,
    domain: u32,
    /// Connections ignored: no rule matched and no default label.
    pub unlabelled: u64,
    /// Connections ignored: in another zone than `zone`.
    pub other_zone: u64,
}

impl Recorder {
    pub fn new(
        rules: Vec<LabelRule>,
        default_label: Option<String>,
        zone: Option<u16>,
        domain: u32,
    ) -> Self {
        let has_default = default_label.is_some();
        let labels = rules
            .iter()
            .map(|r| r.label.clone())
            .chain(default_label)
            .enumerate()
            .map(|(i, label)| LabelStats {
                label,
                observation_point: OBSERVATION_POINT_BASE + i as u32,
                ..LabelStats::default()
            })
            .collect();
        Recorder {
            rules,
            labels,
            has_default,
            zone,
            domain,
            unlabelled: 0,
            other_zone: 0,
        }
    }

    pub fn labels(&self) -> &[LabelStats] {
        &self.labels
    }

    /// The label index of a connmark: the first matching rule, else the default.
    pub fn classify(&self, mark: u32) -> Option<usize> {
        classify(&self.rules, self.has_default, mark)
    }

    /// Which connections this recorder exports, detached from its counters (a sweep asks
    /// while the recorder takes the records).
    pub fn filter(&self) -> Filter {
        Filter {
            rules: self.rules.clone(),
            has_default: self.has_default,
            zone: self.zone,
        }
    }

    /// Exports `e`'s counters as up to two records (original, then reply direction; a
    /// direction without packets gives none). `interval_start_ms` is when the counters were
    /// last zeroed (the previous sweep), `now_ms` the wall clock.
    pub fn export(
        &mut self,
        e: &CtEntry<'_>,
        why: Export,
        interval_start_ms: u64,
        now_ms: u64,
        sink: &mut impl FnMut(FlowRecord),
    ) {
        if self.zone.is_some_and(|z| z != e.zone) {
            self.other_zone += 1;
            return;
        }
        let Some(idx) = self.classify(e.mark) else {
            self.unlabelled += 1;
            return;
        };
        let (Some(orig), Some(reply)) = (e.counters_orig, e.counters_reply) else {
            if why == Export::Destroy {
                self.labels[idx].no_counters += 1;
            }
            return;
        };
        let start_ms = e
            .start_ns
            .map_or(interval_start_ms, |ns| ns / 1_000_000)
            .max(interval_start_ms)
            .min(now_ms);
        let end_ms = match (why, e.stop_ns) {
            (Export::Destroy, Some(ns)) => (ns / 1_000_000).max(start_ms),
            _ => now_ms,
        };
        let reason = match why {
            Export::Active => EndReason::ActiveTimeout,
            Export::Shutdown => EndReason::ForcedEnd,
            Export::Destroy
                if e.orig.protocol == 6
                    && e.tcp_state.is_some_and(|s| TCP_CLOSING.contains(&s)) =>
            {
                EndReason::EndOfFlow
            }
            Export::Destroy => EndReason::IdleTimeout,
        };
        if orig == Counters::default() && reply == Counters::default() {
            return;
        }
        let l = &mut self.labels[idx];
        l.packets += orig.packets + reply.packets;
        l.bytes += orig.bytes + reply.bytes;
        l.records +=
            u64::from(orig != Counters::default()) + u64::from(reply != Counters::default());
        sink(self.record(idx, e, orig, reply, (start_ms, end_ms), reason));
    }

    /// One biflow record (RFC 5103) of the connection: the original direction's tuple and
    /// counters, the reply direction's counters as the reverse ones. Exporters split it into
    /// two unidirectional records for targets that take no biflows
    /// ([`FlowRecord::unidirectional`]): the original direction arrives as the original tuple
    /// and leaves as the reply tuple reversed, the reply direction arrives as the reply tuple
    /// and leaves as the original tuple reversed.
    fn record(
        &self,
        idx: usize,
        e: &CtEntry<'_>,
        orig: Counters,
        reply: Counters,
        (start_ms, end_ms): (u64, u64),
        reason: EndReason,
    ) -> FlowRecord {
        let l = &self.labels[idx];
        let (seen, other) = (&e.orig, &e.reply);
        FlowRecord {
            observation_domain: self.domain,
            group: Some(l.observation_point),
            label: Some(l.label.clone()),
            src_addr: seen.src,
            dst_addr: seen.dst,
            protocol: seen.protocol,
            src_port: seen.src_port,
            dst_port: seen.dst_port,
            icmp_type_code: seen.icmp_type_code,
            bytes: orig.bytes,
            packets: orig.packets,
            start_ms,
            end_ms,
            end_reason: Some(reason),
            mark: (e.mark != 0).then_some(e.mark),
            conntrack: Some(ConnInfo {
                post_nat_src: other.dst,
                post_nat_dst: other.src,
                post_napt_src_port: other.dst_port,
                post_napt_dst_port: other.src_port,
                direction: BiflowDirection::Initiator,
                zone: e.zone,
                tcp_state: e.tcp_state.filter(|_| e.orig.protocol == 6),
                conn_id: e.id,
                reverse: Some((reply.bytes, reply.packets)),
                reply_icmp_type_code: other.icmp_type_code,
            }),
            ..FlowRecord::default()
        }
    }

    /// Whether `e` is a DESTROY worth exporting (others carry no counters).
    pub fn wants(e: &CtEntry<'_>) -> bool {
        e.event == CtEvent::Destroy
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::Tuple;
    use super::*;
    use std::net::IpAddr;

    fn tuple(src: &str, dst: &str, sport: u16, dport: u16) -> Tuple {
        Tuple {
            src: src.parse::<IpAddr>().unwrap(),
            dst: dst.parse::<IpAddr>().unwrap(),
            protocol: 6,
            src_port: sport,
            dst_port: dport,
            icmp_type_code: 0,
        }
    }

    fn entry(mark: u32, event: CtEvent) -> CtEntry<'static> {
        CtEntry {
            event,
            family: 2,
            // LAN 10.1.0.2:40000 -> 198.51.100.1:80, masqueraded to 203.0.113.1:61000.
            orig: tuple("10.1.0.2", "198.51.100.1", 40000, 80),
            reply: tuple("198.51.100.1", "203.0.113.1", 80, 61000),
            orig_raw: &[],
            counters_orig: Some(Counters {
                packets: 10,
                bytes: 900,
            }),
            counters_reply: Some(Counters {
                packets: 8,
                bytes: 12_000,
            }),
            start_ns: Some(1_000_500_000_000),
            stop_ns: Some(1_010_000_000_000),
            status: 0,
            mark,
            zone: 0,
            id: 42,
            tcp_state: Some(7),
        }
    }

    fn web() -> Recorder {
        let rules = vec![
            LabelRule {
                value: 0x10,
                mask: 0xf0,
                label: "web".into(),
            },
            LabelRule {
                value: 0x20,
                mask: 0xf0,
                label: "dns".into(),
            },
        ];
        Recorder::new(rules, None, None, 1)
    }

    #[test]
    fn two_records_with_nat_elements_from_one_destroy() {
        let mut r = web();
        let mut out = Vec::new();
        r.export(
            &entry(0x13, CtEvent::Destroy),
            Export::Destroy,
            0,
            2_000_000,
            &mut |x| out.extend(x.unidirectional().into_iter().flatten()),
        );
        assert_eq!(out.len(), 2);
        let (o, p) = (&out[0], &out[1]);
        assert_eq!((o.label.as_deref(), o.group), (Some("web"), Some(0x1_0000)));
        assert_eq!(
            (o.packets, o.bytes, p.packets, p.bytes),
            (10, 900, 8, 12_000)
        );
        let oc = o.conntrack.unwrap();
        assert_eq!(oc.post_nat_src, "203.0.113.1".parse::<IpAddr>().unwrap());
        assert_eq!(oc.post_nat_dst, "198.51.100.1".parse::<IpAddr>().unwrap());
        assert_eq!((oc.post_napt_src_port, oc.post_napt_dst_port), (61000, 80));
        assert_eq!(oc.direction, BiflowDirection::Initiator);
        let pc = p.conntrack.unwrap();
        assert_eq!(p.dst_addr, "203.0.113.1".parse::<IpAddr>().unwrap());
        assert_eq!(pc.post_nat_dst, "10.1.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(pc.post_napt_dst_port, 40000);
        assert_eq!(pc.direction, BiflowDirection::ReverseInitiator);
        assert_eq!(o.end_reason, Some(EndReason::EndOfFlow));
        assert_eq!((o.start_ms, o.end_ms), (1_000_500, 1_010_000));
        assert_eq!(r.labels()[0].packets, 18);
    }

    #[test]
    fn sweeps_start_at_the_previous_sweep_and_unmatched_marks_are_counted() {
        let mut r = web();
        let mut out = Vec::new();
        let e = entry(0x21, CtEvent::Update);
        r.export(&e, Export::Active, 1_005_000_000, 1_006_000_000, &mut |x| {
            out.extend(x.unidirectional().into_iter().flatten())
        });
        assert_eq!(out[0].label.as_deref(), Some("dns"));
        assert_eq!(
            (out[0].start_ms, out[0].end_ms),
            (1_005_000_000, 1_006_000_000)
        );
        assert_eq!(out[0].end_reason, Some(EndReason::ActiveTimeout));
        r.export(
            &entry(0x31, CtEvent::Destroy),
            Export::Destroy,
            0,
            0,
            &mut |x| out.extend(x.unidirectional().into_iter().flatten()),
        );
        assert_eq!((out.len(), r.unlabelled), (2, 1));
        let mut d = Recorder::new(Vec::new(), Some("other".into()), Some(3), 1);
        d.export(
            &entry(0x31, CtEvent::Destroy),
            Export::Destroy,
            0,
            0,
            &mut |x| out.extend(x.unidirectional().into_iter().flatten()),
        );
        assert_eq!((out.len(), d.other_zone), (2, 1));
    }

    #[test]
    fn the_sweep_filter_takes_labelled_connections_of_the_zone() {
        let f = web().filter();
        assert!(f.wants(0x13, 0) && f.wants(0x21, 9));
        assert!(!f.wants(0x31, 0));
        let z = Recorder::new(Vec::new(), Some("all".into()), Some(3), 1).filter();
        assert!(z.wants(0x31, 3) && !z.wants(0x31, 0));
    }

    #[test]
    fn destroy_without_counters_is_counted_per_label() {
        let mut r = web();
        let mut e = entry(0x10, CtEvent::Destroy);
        e.counters_orig = None;
        r.export(&e, Export::Destroy, 0, 0, &mut |_| panic!("no record"));
        assert_eq!(r.labels()[0].no_counters, 1);
    }
}
