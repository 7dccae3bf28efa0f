//! The ingest state machine: datagram → session decode → label → time rule → journal, plus
//! what the next journal commit must write ([`crate::journal`]). No sockets, no clock: the
//! daemon drives it, tests and benches call it directly ([`Ingest::take_batch`] runs the
//! journal's merge in place, for a batch as the store commits it).

use std::collections::HashMap;
use std::net::IpAddr;

use labelflow_proto::convert::{clean_text, ExporterContext};
use labelflow_proto::plan::{sampling_of, FlowView};
use labelflow_proto::FlowRecord;

use crate::aggregate::{
    has_ports, AggStats, Aggregator, Delta, Flow, FxBuild, RollupStats, OTHER, UNLABELLED,
};
use crate::clickhouse::raw::{RawLog, RawRecords, MAX_BATCH_BYTES};
use crate::config::{rule_index, Config, LabelRule};
use crate::journal::{JournalBatch, Merger};
use crate::net::IpNet;
use crate::session::{
    DecodeError, FlowSink, Ingested, ScopeKey, ScopeLimits, SequenceState, SessionStats,
    SessionTable,
};
use crate::store::{ScopedTemplate, Store, StoreError};
use crate::templates::TemplateRecord;

/// What one commit writes.
#[derive(Debug, Default)]
pub struct Batch {
    pub deltas: Vec<Delta>,
    pub templates: Vec<ScopedTemplate>,
    /// Options state (application names, sampling) of the scopes that received options.
    pub contexts: Vec<(ScopeKey, ExporterContext)>,
    /// Expected sequence numbers after these datagrams, of the scopes whose numbers moved.
    pub sequences: Vec<SequenceState>,
    pub datagrams: usize,
    /// The raw records counted, when ClickHouse takes them (`[clickhouse] raw`).
    pub raw: Option<RawRecords>,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub sessions: SessionStats,
    pub aggregation: AggStats,
    pub scopes: usize,
    /// (label, bytes, packets) since start, bounded; the rest under `other`.
    pub labels: Vec<(String, u64, u64)>,
    /// (tunnel name, (bytes, packets) per part in [`Part::ALL`](crate::aggregate::Part::ALL) order) since start,
    /// bounded like `labels`; the rest under `other`.
    pub tunnels: Vec<(String, [(u64, u64); 6])>,
    pub commits: u64,
    pub commit_errors: u64,
    /// Datagrams received by this process whose records are merged.
    pub committed_datagrams: u64,
    /// Records and octets journaled, not merged yet.
    pub journal_records: u64,
    pub journal_bytes: u64,
    /// Journal rows that could not be read whole.
    pub journal_malformed: u64,
    /// Records lost to failed journal writes.
    pub journal_lost: u64,
    pub receive_errors: u64,
    /// Reads that carried several datagrams (UDP receive offload).
    pub gro_reads: u64,
    /// Records the time rule refused or clamped, per exporter (bounded; the rest under
    /// `other`), indexed like
    /// [`TimeRule::REASONS`](crate::aggregate::TimeRule::REASONS).
    pub time_rule: Vec<(String, [u64; 4])>,
    /// Batches handed to the store early because a pending bound was reached.
    pub early_commits: u64,
    /// Datagrams refused by `allowed_exporters`, per source (bounded; the rest under
    /// `other`).
    pub refused_sources: Vec<(String, u64)>,
    /// The ClickHouse sink, when configured.
    pub clickhouse: Option<crate::clickhouse::SinkStats>,
    /// The coarse resolutions' key bound (kept by the store thread's rollup).
    pub rollup: RollupStats,
    /// The daemon's spool between receiving and decoding (live counters).
    pub spool: Option<std::sync::Arc<crate::spool::SpoolStats>>,
}

#[derive(Debug)]
pub struct Ingest {
    sessions: SessionTable,
    labels: Labels,
    found: Vec<TemplateRecord>,
    templates: Vec<ScopedTemplate>,
    /// Octets of `templates`.
    template_bytes: usize,
    datagrams: usize,
    max_pending_template_bytes: usize,
    /// Merges what [`Ingest::take_batch`] returns (the daemon merges on its store thread).
    merger: Merger,
    /// Emptied record buffers handed back ([`Ingest::recycle`]).
    spare: Vec<Vec<u8>>,
}

/// Label resolution, the time rule and the journal of the current batch.
#[derive(Debug)]
struct Labels {
    /// Names labels and tunnels and applies the time rule (its counts are the merger's).
    agg: Aggregator,
    rules: Vec<LabelRule>,
    /// Raw `applicationName` octets → label id (`None`: the name cleans to nothing).
    by_octets: HashMap<Box<[u8]>, Option<u32>, FxBuild>,
    /// The first short names seen, packed: a record's name is found with a few integer
    /// comparisons (a deployment has a handful of labels).
    short: Vec<((u64, u64, u8), Option<u32>)>,
    /// Raw tunnel-name octets → tunnel id (`None`: the name cleans to nothing).
    tunnels_by_octets: HashMap<Box<[u8]>, Option<u32>, FxBuild>,
    /// NFLOG group → id of its `groupN` label, for records without a name.
    by_group: HashMap<u32, u32, FxBuild>,
    /// Label id per label rule, and last that of `unlabelled`, once looked up.
    by_rule: Vec<Option<u32>>,
    max_metric_labels: usize,
    /// Time-rule counters per exporter address, at most `max_exporters` addresses (the
    /// rest under the unspecified address, shown as `other`).
    time_rule: HashMap<IpAddr, [u64; 4], FxBuild>,
    max_exporters: usize,
    /// The records of the current batch, as the journal stores them.
    log: RawLog,
}

/// Longest raw name kept as a key of the label cache.
const CACHED_NAME: usize = 256;

impl Labels {
    /// Journal a record after the time rule, counting what the rule did per exporter.
    fn add(&mut self, flow: &Flow, exporter: IpAddr) {
        let (rule, span) = self.agg.time_rule(flow);
        if let Some(span) = span {
            self.log.push(flow, span);
        }
        if let Some(i) = rule.index() {
            let n = self.time_rule.len();
            let key = if n < self.max_exporters || self.time_rule.contains_key(&exporter) {
                exporter
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            };
            self.time_rule.entry(key).or_default()[i] += 1;
        }
    }

    /// Per-exporter time-rule counters for `/metrics`: the first `max_metric_labels`
    /// exporters by address, the rest under `other`.
    fn metric_time_rule(&self) -> Vec<(String, [u64; 4])> {
        let mut by: Vec<(&IpAddr, &[u64; 4])> = self.time_rule.iter().collect();
        by.sort();
        let mut out: Vec<(String, [u64; 4])> = Vec::new();
        for (i, (addr, counts)) in by.into_iter().enumerate() {
            let name = if i < self.max_metric_labels && !addr.is_unspecified() {
                addr.to_string()
            } else {
                OTHER.to_string()
            };
            let slot = match out.iter().position(|(n, _)| *n == name) {
                Some(p) => p,
                None => {
                    out.push((name, [0; 4]));
                    out.len() - 1
                }
            };
            for (a, b) in out[slot].1.iter_mut().zip(counts) {
                *a += b;
            }
        }
        out
    }
}

/// Entries kept in each label cache; a stream of ever-new names is resolved without caching.
const LABEL_CACHE: usize = 4096;
/// Names kept in the packed short-name cache.
const SHORT_NAMES: usize = 16;

/// A name of at most 16 octets as (octets, length), for comparison as integers.
#[inline]
fn pack(raw: &[u8]) -> Option<(u64, u64, u8)> {
    if raw.len() > 16 {
        return None;
    }
    // Byte loops: a variable-length copy would be a library call per record.
    let word = |b: &[u8]| {
        b.iter()
            .enumerate()
            .fold(0u64, |v, (i, x)| v | u64::from(*x) << (8 * i))
    };
    let (lo, hi) = raw.split_at(raw.len().min(8));
    Some((word(lo), word(hi), raw.len() as u8))
}

impl Labels {
    /// The label id of a name given as octets (cleaned as every string element is).
    fn by_octets(&mut self, raw: &[u8]) -> Option<u32> {
        let packed = pack(raw);
        if let Some(p) = packed {
            if let Some((_, id)) = self.short.iter().find(|(k, _)| *k == p) {
                return *id;
            }
        }
        let id = match self.by_octets.get(raw) {
            Some(id) => *id,
            None => {
                let text = clean_text(raw);
                let id = (!text.is_empty()).then(|| self.agg.label_id(&text));
                if self.by_octets.len() < LABEL_CACHE && raw.len() <= CACHED_NAME {
                    self.by_octets.insert(raw.into(), id);
                }
                id
            }
        };
        if let Some(p) = packed {
            if self.short.len() < SHORT_NAMES {
                self.short.push((p, id));
            }
        }
        id
    }

    /// The tunnel id of a name given as octets (cleaned as every string element is).
    fn tunnel_by_octets(&mut self, raw: &[u8]) -> Option<u32> {
        if let Some(id) = self.tunnels_by_octets.get(raw) {
            return *id;
        }
        let text = clean_text(raw);
        let id = (!text.is_empty()).then(|| self.agg.tunnel_id(&text));
        // A name folded into `other` is not cached: each of its records counts as folded.
        let folded = id.is_some_and(|i| self.agg.tunnel_name(i) == OTHER && text != OTHER);
        if !folded && self.tunnels_by_octets.len() < LABEL_CACHE && raw.len() <= CACHED_NAME {
            self.tunnels_by_octets.insert(raw.into(), id);
        }
        id
    }

    /// The label of a record without a name of its own: its NFLOG group, else the
    /// exporter rules.
    fn unnamed(&mut self, group: Option<u32>, exporter: IpAddr, ifs: [u32; 2]) -> u32 {
        if let Some(g) = group {
            if let Some(id) = self.by_group.get(&g) {
                return *id;
            }
            let id = self.agg.label_id(&format!("group{g}"));
            if self.by_group.len() < LABEL_CACHE {
                self.by_group.insert(g, id);
            }
            return id;
        }
        let rule = rule_index(&self.rules, exporter, ifs);
        let slot = rule.unwrap_or(self.rules.len());
        if let Some(id) = self.by_rule[slot] {
            return id;
        }
        let label = rule.map_or(UNLABELLED, |i| self.rules[i].label.as_str());
        let id = self.agg.label_id(label);
        self.by_rule[slot] = Some(id);
        id
    }
}

/// Per-tunnel (bytes, packets) per part for `/metrics`: the first `max_metric_labels`
/// names, the rest under [`OTHER`].
pub fn metric_tunnels(
    agg: &Aggregator,
    max_metric_labels: usize,
) -> Vec<(String, [(u64, u64); 6])> {
    let mut out: Vec<(String, [(u64, u64); 6])> = Vec::new();
    for (id, parts) in agg.tunnel_totals().iter().enumerate() {
        let name = if out.len() < max_metric_labels {
            agg.tunnel_name(id as u32)
        } else {
            OTHER
        };
        let slot = match out.iter().position(|t| t.0 == name) {
            Some(p) => p,
            None => {
                out.push((name.to_string(), [(0, 0); 6]));
                out.len() - 1
            }
        };
        for (a, b) in out[slot].1.iter_mut().zip(parts) {
            *a = (a.0.saturating_add(b.0), a.1.saturating_add(b.1));
        }
    }
    out
}

/// Per-label (bytes, packets) for `/metrics`: the first `max_metric_labels` labels by
/// name, the rest under [`OTHER`].
pub fn metric_totals(agg: &Aggregator, max_metric_labels: usize) -> Vec<(String, u64, u64)> {
    let mut out: Vec<(String, u64, u64)> = Vec::new();
    for (id, (bytes, packets)) in agg.label_totals().iter().enumerate() {
        let name = if out.len() < max_metric_labels {
            agg.label_name(id as u32)
        } else {
            OTHER
        };
        match out.iter_mut().find(|l| l.0 == name) {
            Some(l) => {
                l.1 = l.1.saturating_add(*bytes);
                l.2 = l.2.saturating_add(*packets);
            }
            None => out.push((name.to_string(), *bytes, *packets)),
        }
    }
    out
}

/// Hands one datagram's records to the journal.
struct ToAggregator<'a> {
    labels: &'a mut Labels,
    exporter: IpAddr,
}

impl FlowSink for ToAggregator<'_> {
    fn view(&mut self, v: &FlowView<'_>, ctx: &ExporterContext) {
        if v.has_conntrack() {
            // One record per connection and interval, not per packet burst: a biflow's two
            // directions and the NAT pair take the owned record's path.
            self.record(v.to_record(ctx));
            return;
        }
        let l = &mut *self.labels;
        let mut name = v.label().and_then(|raw| l.by_octets(raw));
        if name.is_none() {
            if let Some(app) = v.application().and_then(|a| ctx.applications.get(&a)) {
                name = l.by_octets(app.as_bytes());
            }
        }
        let label = name.unwrap_or_else(|| {
            let (i, e) = v.interfaces();
            l.unnamed(v.group(), self.exporter, [i, e])
        });
        let sampling = sampling_of(ctx);
        let tunnel = v.tunnel().and_then(|raw| l.tunnel_by_octets(raw));
        let flow = match v.ipv4() {
            Some(h) => Flow {
                label,
                src: IpAddr::V4(h.src),
                dst: IpAddr::V4(h.dst),
                protocol: h.protocol,
                src_port: if has_ports(h.protocol) { h.src_port } else { 0 },
                dst_port: if has_ports(h.protocol) { h.dst_port } else { 0 },
                spi: h.ipsec_spi,
                tunnel,
                bytes: h.bytes,
                packets: h.packets,
                sampling,
                start_ms: h.start_ms,
                end_ms: h.end_ms,
                nat: None,
                reply: None,
            },
            None => {
                let protocol = v.protocol();
                // Ports count only for port protocols, where no ICMP rule moves them.
                let (src_port, dst_port) = if has_ports(protocol) {
                    v.transport_ports()
                } else {
                    (0, 0)
                };
                let (start_ms, end_ms) = v.times();
                Flow {
                    label,
                    src: v.src_addr(),
                    dst: v.dst_addr(),
                    protocol,
                    src_port,
                    dst_port,
                    spi: v.ipsec_spi(),
                    tunnel,
                    bytes: v.bytes(),
                    packets: v.packets(),
                    sampling,
                    start_ms,
                    end_ms,
                    nat: None,
                    reply: None,
                }
            }
        };
        l.add(&flow, self.exporter);
    }

    fn record(&mut self, r: FlowRecord) {
        let l = &mut *self.labels;
        let name = r.label.as_ref().and_then(|s| l.by_octets(s.as_bytes()));
        let label =
            name.unwrap_or_else(|| l.unnamed(r.group, self.exporter, [r.ingress_if, r.egress_if]));
        let tunnel = r.tunnel.as_deref().map(|t| l.agg.tunnel_id(t));
        // An RFC 5103 biflow counts as its two directions, each with its own addresses.
        for part in r.unidirectional().iter().flatten() {
            let mut flow = Flow::from_record(part, label);
            flow.tunnel = tunnel;
            l.add(&flow, self.exporter);
        }
    }
}

impl Ingest {
    pub fn new(cfg: &Config) -> Ingest {
        let mut sessions = SessionTable::new(cfg.max_exporters, cfg.max_templates_per_exporter);
        sessions.set_limits(ScopeLimits {
            max_domains_per_exporter: cfg.max_domains_per_exporter.get(),
            max_application_names: cfg.max_application_names,
            max_name_bytes: cfg.agg.max_label_bytes,
            max_template_bytes: cfg.max_template_bytes.get(),
        });
        Ingest {
            sessions,
            labels: Labels {
                agg: Aggregator::new(cfg.agg.clone()),
                rules: cfg.label_rules.clone(),
                by_octets: HashMap::default(),
                tunnels_by_octets: HashMap::default(),
                short: Vec::new(),
                by_group: HashMap::default(),
                by_rule: vec![None; cfg.label_rules.len() + 1],
                max_metric_labels: cfg.max_metric_labels,
                time_rule: HashMap::default(),
                max_exporters: cfg.max_exporters.get(),
                log: RawLog::default(),
            },
            found: Vec::new(),
            templates: Vec::new(),
            template_bytes: 0,
            datagrams: 0,
            max_pending_template_bytes: cfg.max_pending_template_bytes.get(),
            merger: Merger::new(&cfg.agg, cfg.clickhouse.as_ref().is_some_and(|c| c.raw)),
            spare: Vec::new(),
        }
    }

    /// Replay the templates, options state and expected sequence numbers persisted in
    /// `store`; returns how many templates, options states and sequence states were loaded.
    pub fn restore(&mut self, store: &Store) -> Result<(usize, usize, usize), StoreError> {
        let mut n = 0;
        for (scope, recs) in store.load_templates()? {
            n += recs.len();
            self.sessions.restore(scope, &recs);
        }
        let contexts = store.load_contexts()?;
        let m = contexts.len();
        for (scope, ctx) in contexts {
            self.sessions.restore_context(scope, ctx);
        }
        let sequences = store.load_sequences()?;
        let k = sequences.len();
        for s in sequences {
            self.sessions.restore_sequence(s);
        }
        Ok((n, m, k))
    }

    /// Turn the zero-copy IPFIX and v9 paths on (the default) or off; the result is the same.
    pub fn set_fast_path(&mut self, on: bool) {
        self.sessions.set_fast_path(on);
    }

    /// Handle one datagram.
    pub fn datagram(&mut self, exporter: IpAddr, bytes: &[u8]) -> Result<Ingested, DecodeError> {
        self.datagrams += 1;
        self.found.clear();
        self.labels.log.begin_datagram(exporter);
        let mut sink = ToAggregator {
            labels: &mut self.labels,
            exporter,
        };
        let r = self
            .sessions
            .ingest(exporter, bytes, &mut sink, &mut self.found);
        self.labels
            .log
            .end_datagram(r.as_ref().ok().map(|i| i.scope.domain));
        if let Ok(i) = &r {
            for t in self.found.drain(..) {
                self.template_bytes += t.bytes.len();
                self.templates.push(ScopedTemplate {
                    scope: i.scope,
                    record: t,
                });
            }
        }
        r
    }

    /// Set the receive clock (milliseconds since the epoch) the time rule compares record
    /// times with; the daemon sets it before each burst of datagrams.
    pub fn set_clock(&mut self, now_ms: u64) {
        self.labels.agg.set_clock(now_ms);
    }

    /// Whether what is pending reached a bound (`max_pending_template_bytes`, the
    /// journal's [`MAX_BATCH_BYTES`]): the batch must go to the store now.
    pub fn over_bound(&self) -> bool {
        self.template_bytes >= self.max_pending_template_bytes
            || self.labels.log.bytes() >= MAX_BATCH_BYTES
    }

    /// Datagrams handled since the last [`Ingest::take_batch`].
    pub fn pending_datagrams(&self) -> usize {
        self.datagrams
    }

    /// Take what the next commit writes, merged in place: the journal's two steps in one
    /// (offline use and tests).
    pub fn take_batch(&mut self) -> Batch {
        let b = self.take_journal();
        self.merger.take_batch(b)
    }

    /// Give back a record buffer of a batch taken earlier, once written: the next batch
    /// reuses it.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < 2 {
            self.spare.push(buf);
        }
    }

    /// Take what the next journal commit writes: what the receiving thread hands over.
    pub fn take_journal(&mut self) -> JournalBatch {
        let l = &mut self.labels;
        let fresh = self.spare.pop().unwrap_or_default();
        let parts = l
            .log
            .take_parts(|i| l.agg.label_name(i), |i| l.agg.tunnel_name(i), fresh);
        let b = JournalBatch {
            parts,
            written: None,
            templates: std::mem::take(&mut self.templates),
            contexts: self.sessions.take_changed_contexts(),
            sequences: self.sessions.take_changed_sequences(),
            datagrams: self.datagrams,
        };
        self.datagrams = 0;
        self.template_bytes = 0;
        b
    }

    /// The merge of [`Ingest::take_batch`].
    pub fn merger(&self) -> &Merger {
        &self.merger
    }

    /// The aggregator of [`Ingest::take_batch`]'s merges.
    pub fn aggregator(&self) -> &Aggregator {
        self.merger.aggregator()
    }

    pub fn fill(&self, s: &mut Snapshot) {
        s.sessions = self.sessions.stats.clone();
        // The receiving side's part of the aggregation counters: the time rule and the
        // naming of labels and tunnels; the merge's part is filled by the store thread.
        let a = &self.labels.agg.stats;
        s.aggregation.records = a.records;
        s.aggregation.clamped_durations = a.clamped_durations;
        s.aggregation.folded_labels = a.folded_labels;
        s.aggregation.truncated_labels = a.truncated_labels;
        s.aggregation.time_rule = a.time_rule;
        s.aggregation.folded_tunnels = a.folded_tunnels;
        s.scopes = self.sessions.scopes();
        s.time_rule = self.labels.metric_time_rule();
    }
}

/// `allowed_exporters`: whose datagrams are taken at all. The receiving thread asks before
/// it hands a datagram on, so that a refused source costs no decoding, no spool and no
/// journal.
#[derive(Debug)]
pub struct Admission {
    /// `None`: every source is accepted.
    allowed: Option<Vec<IpNet>>,
    /// Datagrams refused per source address (at most `max_exporters` sources; the rest
    /// under the unspecified address).
    refused: HashMap<IpAddr, u64>,
    max_sources: usize,
    max_metric_labels: usize,
}

impl Admission {
    pub fn new(cfg: &Config) -> Admission {
        Admission {
            allowed: cfg.allowed_exporters.clone(),
            refused: HashMap::new(),
            max_sources: cfg.max_exporters.get(),
            max_metric_labels: cfg.max_metric_labels,
        }
    }

    /// Whether datagrams from `source` are accepted; a refused one is counted per source
    /// and must not be decoded.
    pub fn admit(&mut self, source: IpAddr) -> bool {
        let Some(allowed) = &self.allowed else {
            return true;
        };
        if allowed.iter().any(|n| n.contains(source)) {
            return true;
        }
        let key = if self.refused.len() < self.max_sources || self.refused.contains_key(&source) {
            source
        } else {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        };
        *self.refused.entry(key).or_default() += 1;
        false
    }

    /// The refused counts for `/metrics`, at most `max_metric_labels` sources by name.
    pub fn fill(&self, s: &mut Snapshot) {
        let mut refused: Vec<(IpAddr, u64)> = self.refused.iter().map(|(a, n)| (*a, *n)).collect();
        refused.sort();
        s.refused_sources.clear();
        for (i, (addr, n)) in refused.into_iter().enumerate() {
            let name = if i < self.max_metric_labels && !addr.is_unspecified() {
                addr.to_string()
            } else {
                OTHER.to_string()
            };
            match s.refused_sources.iter_mut().find(|(k, _)| *k == name) {
                Some(e) => e.1 += n,
                None => s.refused_sources.push((name, n)),
            }
        }
    }
}

/// Log at most once per `interval_ms` per key; reports how many were suppressed meanwhile.
#[derive(Debug, Default)]
pub struct RateLimit {
    last: HashMap<&'static str, (u64, u64)>,
}

impl RateLimit {
    pub fn allow(&mut self, key: &'static str, now_ms: u64, interval_ms: u64) -> Option<u64> {
        let e = self.last.entry(key).or_insert((0, 0));
        if e.0 == 0 || now_ms.saturating_sub(e.0) >= interval_ms {
            let suppressed = e.1;
            *e = (now_ms.max(1), 0);
            Some(suppressed)
        } else {
            e.1 += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Equal packs exactly when equal names (the label cache relies on it).
        #[test]
        fn pack_is_injective(
            a in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..=17),
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..=17),
            flip in 0usize..17,
        ) {
            // Also a near miss: `a` with one octet changed.
            let mut c = a.clone();
            if let Some(x) = c.get_mut(flip) {
                *x ^= 1;
            }
            for other in [&b, &c, &a] {
                match (pack(&a), pack(other)) {
                    (Some(p), Some(q)) => proptest::prop_assert_eq!(p == q, a == *other),
                    (p, q) => {
                        proptest::prop_assert_eq!(p.is_none(), a.len() > 16);
                        proptest::prop_assert_eq!(q.is_none(), other.len() > 16);
                    }
                }
            }
        }
    }

    #[test]
    fn rate_limit_counts_suppressed() {
        let mut r = RateLimit::default();
        assert_eq!(r.allow("x", 1000, 1000), Some(0));
        assert_eq!(r.allow("x", 1500, 1000), None);
        assert_eq!(r.allow("x", 1600, 1000), None);
        assert_eq!(r.allow("y", 1600, 1000), Some(0));
        assert_eq!(r.allow("x", 2000, 1000), Some(2));
    }
}
