//! Aggregation of flow records into time buckets per dimension: pure code, time comes in the
//! records.
//!
//! ```text
//!  FlowRecord ──► label ──► pro-rate bytes/packets over the base buckets it spans
//!                              │  (largest-remainder apportioning: sums stay exact)
//!                              ├─► label, view(s), tunnel, host (in/out), protocol, port
//!                              └─► the same share added to each coarser rollup bucket
//!  Aggregator::take() ──► Deltas (what the store adds in one transaction)
//! ```

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use labelflow_proto::FlowRecord;

use crate::config::{rule_label, AggConfig, LabelRule};

/// The label of records that carry none and match no rule.
pub const UNLABELLED: &str = "unlabelled";
/// Key that absorbs keys beyond the per-bucket bound.
pub const OTHER: &str = "other";

/// A fast non-cryptographic hasher for the per-record maps (keys are small typed values,
/// and the per-bucket key bound limits how many an exporter can create).
#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn mix(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.mix(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let mut tail = 0u64;
        for (i, b) in chunks.remainder().iter().enumerate() {
            tail |= u64::from(*b) << (8 * i);
        }
        self.mix(tail);
    }
    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.mix(u64::from(v));
    }
    #[inline]
    fn write_u16(&mut self, v: u16) {
        self.mix(u64::from(v));
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.mix(u64::from(v));
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.mix(v);
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.mix(v as u64);
    }
    #[inline]
    fn write_i64(&mut self, v: i64) {
        self.mix(v as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FxBuild = BuildHasherDefault<FxHasher>;

/// A report dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Label,
    View,
    Tunnel,
    Host,
    Protocol,
    Port,
}

impl Dim {
    /// Whether the keys of this dimension partition the traffic, so that their sum is the
    /// total. Views overlap by design (`naive` holds `uplink`), a tunnel's inner traffic and
    /// its ESP are the same bytes twice, and a flow between two inside hosts counts for both:
    /// for those a sum would double-count.
    pub fn is_additive(self) -> bool {
        matches!(self, Dim::Label | Dim::Protocol | Dim::Port)
    }

    pub const ALL: [Dim; 6] = [
        Dim::Label,
        Dim::View,
        Dim::Tunnel,
        Dim::Host,
        Dim::Protocol,
        Dim::Port,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dim::Label => "label",
            Dim::View => "view",
            Dim::Tunnel => "tunnel",
            Dim::Host => "host",
            Dim::Protocol => "protocol",
            Dim::Port => "port",
        }
    }

    pub fn parse(s: &str) -> Option<Dim> {
        Dim::ALL.into_iter().find(|d| d.name() == s)
    }
}

/// Label of a record: labelflow's IEs first (applicationName, or applicationId resolved
/// through options, then the NFLOG group), then the configured exporter rules.
pub fn resolve_label<'a>(
    rec: &'a FlowRecord,
    exporter: IpAddr,
    rules: &'a [LabelRule],
) -> std::borrow::Cow<'a, str> {
    if let Some(l) = &rec.label {
        return l.as_str().into();
    }
    if let Some(g) = rec.group {
        return format!("group{g}").into();
    }
    rule_label(rules, exporter, [rec.ingress_if, rec.egress_if])
        .unwrap_or(UNLABELLED)
        .into()
}

/// Split `total` over `weights` in proportion, exactly: the shares sum to `total`.
///
/// Largest-remainder method: every part gets the floor of its exact share, and the units
/// left over go to the parts with the largest remainders (earliest first on ties).
pub fn apportion(total: u64, weights: &[u64], out: &mut Vec<u64>) {
    apportion_with(total, weights, out, &mut Vec::new());
}

/// [`apportion`] with a caller-kept scratch vector (no allocation once it has grown).
fn apportion_with(total: u64, weights: &[u64], out: &mut Vec<u64>, rems: &mut Vec<(u128, usize)>) {
    out.clear();
    match *weights {
        [_] => {
            out.push(total);
            return;
        }
        // The common case of a flow crossing one bucket boundary, without the sort: at
        // most one unit is left over, and it goes to the larger remainder (the first on a
        // tie), as the general method below decides.
        [w0, w1] if w0 != 0 || w1 != 0 => {
            let sum = u128::from(w0) + u128::from(w1);
            let (e0, e1) = (
                u128::from(total) * u128::from(w0),
                u128::from(total) * u128::from(w1),
            );
            let (mut s0, mut s1) = ((e0 / sum) as u64, (e1 / sum) as u64);
            if total - s0 - s1 > 0 {
                if e0 % sum >= e1 % sum {
                    s0 += 1;
                } else {
                    s1 += 1;
                }
            }
            out.extend([s0, s1]);
            return;
        }
        _ => {}
    }
    let sum: u128 = weights.iter().map(|w| u128::from(*w)).sum();
    if weights.is_empty() {
        return;
    }
    if sum == 0 {
        out.extend(std::iter::repeat_n(0, weights.len()));
        out[0] = total;
        return;
    }
    rems.clear();
    let mut given = 0u64;
    for (i, w) in weights.iter().enumerate() {
        let exact = u128::from(total) * u128::from(*w);
        let share = (exact / sum) as u64;
        rems.push((exact % sum, i));
        out.push(share);
        given += share;
    }
    let mut left = total - given;
    if left > 0 {
        rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, i) in rems.iter() {
            if left == 0 {
                break;
            }
            out[i] += 1;
            left -= 1;
        }
    }
}

/// Counters of one (resolution, bucket, dimension, key).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub bytes: u64,
    pub packets: u64,
    pub flows: u64,
    /// Hosts only: bytes towards / from the host.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.bytes += o.bytes;
        self.packets += o.packets;
        self.flows += o.flows;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
    }
}

/// A typed key; rendered to text by [`Aggregator::key_text`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Label(u32),
    View(u32),
    /// ESP (50) / AH (51) outer flow.
    Sa {
        protocol: u8,
        src: IpAddr,
        dst: IpAddr,
        spi: u32,
    },
    /// Inner traffic of a configured tunnel (index into the config).
    Tunnel(u32),
    Host(IpAddr),
    Protocol(u8),
    Port(u8, u16),
    Other,
}

/// A counter of the base resolution; rollups are summed from these at [`Aggregator::take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct BaseSlot {
    /// Bucket start, seconds since the epoch.
    bucket: i64,
    dim: Dim,
    key: Key,
}

/// Where a counter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot {
    /// Index into the resolutions.
    pub res: u8,
    /// Bucket start, seconds since the epoch.
    pub bucket: i64,
    pub dim: Dim,
    pub key: Key,
}

/// Statistics of the aggregator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AggStats {
    pub records: u64,
    pub excluded_internal: u64,
    pub folded_keys: u64,
    pub clamped_durations: u64,
}

/// Accumulates deltas between commits.
#[derive(Debug)]
pub struct Aggregator {
    cfg: AggConfig,
    labels: HashMap<String, u32, FxBuild>,
    label_names: Vec<String>,
    /// For each label id, the view ids it belongs to.
    label_views: Vec<Vec<u32>>,
    view_names: Vec<String>,
    /// Base-resolution deltas since the last take.
    pending: HashMap<BaseSlot, Counters, FxBuild>,
    seen: HashMap<(Dim, i64), HashSet<Key, FxBuild>, FxBuild>,
    keys: Vec<(Dim, Key, Side)>,
    weights: Vec<u64>,
    shares_b: Vec<u64>,
    shares_p: Vec<u64>,
    rems: Vec<(u128, usize)>,
    pub stats: AggStats,
}

/// Per-label totals since start (for `/metrics`), in the order labels were first seen.
pub type LabelTotals = Vec<(String, u64, u64)>;

impl Aggregator {
    pub fn new(cfg: AggConfig) -> Aggregator {
        let view_names = cfg.views.keys().cloned().collect();
        Aggregator {
            cfg,
            labels: HashMap::default(),
            label_names: Vec::new(),
            label_views: Vec::new(),
            view_names,
            pending: HashMap::default(),
            seen: HashMap::default(),
            keys: Vec::with_capacity(8),
            weights: Vec::new(),
            shares_b: Vec::new(),
            shares_p: Vec::new(),
            rems: Vec::new(),
            stats: AggStats::default(),
        }
    }

    pub fn config(&self) -> &AggConfig {
        &self.cfg
    }

    fn label_id(&mut self, label: &str) -> u32 {
        if let Some(id) = self.labels.get(label) {
            return *id;
        }
        let id = self.label_names.len() as u32;
        let views = self
            .cfg
            .views
            .values()
            .enumerate()
            .filter(|(_, labels)| labels.iter().any(|l| l == label))
            .map(|(i, _)| i as u32)
            .collect();
        self.labels.insert(label.to_string(), id);
        self.label_names.push(label.to_string());
        self.label_views.push(views);
        id
    }

    /// Text of a key as stored and reported.
    pub fn key_text(&self, key: &Key) -> String {
        match *key {
            Key::Label(i) => self.label_names[i as usize].clone(),
            Key::View(i) => self.view_names[i as usize].clone(),
            Key::Sa {
                protocol,
                src,
                dst,
                spi,
            } => {
                let p = if protocol == 51 { "ah" } else { "esp" };
                format!("{p} {src}>{dst} spi 0x{spi:08x}")
            }
            Key::Tunnel(i) => self.cfg.tunnels[i as usize].name.clone(),
            Key::Host(ip) => ip.to_string(),
            Key::Protocol(p) => protocol_name(p),
            Key::Port(p, port) => format!("{}/{port}", protocol_name(p)),
            Key::Other => OTHER.to_string(),
        }
    }

    fn in_networks(&self, ip: IpAddr) -> bool {
        self.cfg.networks.iter().any(|n| n.contains(ip))
    }

    /// Add one record under `label`.
    pub fn add(&mut self, rec: &FlowRecord, label: &str) {
        self.stats.records += 1;
        let scale = u64::from(rec.sampling_interval.max(1));
        let bytes = rec.bytes.saturating_mul(scale);
        let packets = rec.packets.saturating_mul(scale);
        let mut start = rec.start_ms.min(rec.end_ms);
        let end = rec.end_ms.max(rec.start_ms);
        if end - start > self.cfg.max_flow_duration_ms {
            start = end - self.cfg.max_flow_duration_ms;
            self.stats.clamped_durations += 1;
        }

        // Which keys this record feeds, per dimension.
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        let lid = self.label_id(label);
        keys.push((Dim::Label, Key::Label(lid), Side::Both));
        for v in &self.label_views[lid as usize] {
            keys.push((Dim::View, Key::View(*v), Side::Both));
        }
        if matches!(rec.protocol, 50 | 51) {
            keys.push((
                Dim::Tunnel,
                Key::Sa {
                    protocol: rec.protocol,
                    src: rec.src_addr,
                    dst: rec.dst_addr,
                    spi: rec.ipsec_spi.unwrap_or(0),
                },
                Side::Both,
            ));
        } else if let Some(t) = self.cfg.tunnels.iter().position(|t| {
            t.subnets
                .iter()
                .any(|n| n.contains(rec.src_addr) || n.contains(rec.dst_addr))
        }) {
            keys.push((Dim::Tunnel, Key::Tunnel(t as u32), Side::Both));
        }
        let src_in = self.in_networks(rec.src_addr);
        let dst_in = self.in_networks(rec.dst_addr);
        if src_in && dst_in && self.cfg.exclude_internal {
            self.stats.excluded_internal += 1;
        } else {
            if src_in {
                keys.push((Dim::Host, Key::Host(rec.src_addr), Side::Out));
            }
            if dst_in && !(src_in && rec.dst_addr == rec.src_addr) {
                keys.push((Dim::Host, Key::Host(rec.dst_addr), Side::In));
            }
        }
        keys.push((Dim::Protocol, Key::Protocol(rec.protocol), Side::Both));
        if matches!(rec.protocol, 6 | 17 | 132 | 136) {
            let port = service_port(rec.src_port, rec.dst_port);
            keys.push((Dim::Port, Key::Port(rec.protocol, port), Side::Both));
        }

        // Pro-rate over the base buckets [start, end] touches.
        let base_ms = self.cfg.resolutions[0] * 1000;
        let first = start / base_ms;
        let last = end / base_ms;
        self.weights.clear();
        if first == last {
            self.weights.push(1);
        } else {
            for b in first..=last {
                let lo = (b * base_ms).max(start);
                let hi = ((b + 1) * base_ms).min(end);
                self.weights.push(hi - lo);
            }
        }
        let mut sb = std::mem::take(&mut self.shares_b);
        let mut sp = std::mem::take(&mut self.shares_p);
        apportion_with(bytes, &self.weights, &mut sb, &mut self.rems);
        apportion_with(packets, &self.weights, &mut sp, &mut self.rems);
        let flow_bucket = first;
        for (i, (b, p)) in sb.iter().zip(&sp).enumerate() {
            let base_bucket = (first + i as u64) * self.cfg.resolutions[0];
            let flows = u64::from(first + i as u64 == flow_bucket);
            if *b == 0 && *p == 0 && flows == 0 {
                continue;
            }
            for &(dim, key, side) in &keys {
                let c = Counters {
                    bytes: *b,
                    packets: *p,
                    flows,
                    bytes_in: if side == Side::In { *b } else { 0 },
                    bytes_out: if side == Side::Out { *b } else { 0 },
                };
                // The key bound is decided in the base bucket; rollups are summed from the
                // base buckets at `take`, so a rollup is always the sum of its parts. A key
                // already pending in this bucket was admitted by the bound before.
                let slot = BaseSlot {
                    bucket: base_bucket as i64,
                    dim,
                    key,
                };
                if let Some(p) = self.pending.get_mut(&slot) {
                    p.add(&c);
                    continue;
                }
                let key = self.bounded(dim, slot.bucket, key);
                self.pending
                    .entry(BaseSlot { key, ..slot })
                    .or_default()
                    .add(&c);
            }
        }
        self.shares_b = sb;
        self.shares_p = sp;
        self.keys = keys;
    }

    /// Fold keys beyond `max_keys_per_bucket` into [`Key::Other`].
    fn bounded(&mut self, dim: Dim, bucket: i64, key: Key) -> Key {
        if matches!(dim, Dim::Protocol | Dim::View) {
            return key;
        }
        let max = self.cfg.max_keys_per_bucket;
        let set = self.seen.entry((dim, bucket)).or_default();
        if set.contains(&key) {
            return key;
        }
        if set.len() >= max {
            self.stats.folded_keys += 1;
            return Key::Other;
        }
        set.insert(key);
        key
    }

    /// Forget key-bound bookkeeping of buckets that started before `before` (seconds).
    pub fn forget_before(&mut self, before: i64) {
        self.seen.retain(|(_, b), _| *b >= before);
    }

    /// Base-resolution slots waiting for the next [`Aggregator::take`].
    pub fn pending_slots(&self) -> usize {
        self.pending.len()
    }

    /// Take the accumulated deltas (base resolution and every rollup), rendered for the
    /// store.
    pub fn take(&mut self) -> Vec<Delta> {
        let pending = std::mem::take(&mut self.pending);
        let mut all: HashMap<Slot, Counters, FxBuild> = HashMap::default();
        all.reserve(pending.len() * self.cfg.resolutions.len());
        for (s, c) in pending {
            for (res, r) in self.cfg.resolutions.iter().enumerate() {
                let r = *r as i64;
                all.entry(Slot {
                    res: res as u8,
                    bucket: s.bucket.div_euclid(r) * r,
                    dim: s.dim,
                    key: s.key,
                })
                .or_default()
                .add(&c);
            }
        }
        all.into_iter()
            .map(|(s, c)| Delta {
                resolution: self.cfg.resolutions[s.res as usize] as i64,
                bucket: s.bucket,
                dim: s.dim,
                key: self.key_text(&s.key),
                counters: c,
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Both,
    In,
    Out,
}

/// One row's increment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// Resolution in seconds.
    pub resolution: i64,
    pub bucket: i64,
    pub dim: Dim,
    pub key: String,
    pub counters: Counters,
}

/// The service side of a port pair: the lower non-zero port (servers listen low).
pub fn service_port(a: u16, b: u16) -> u16 {
    match (a, b) {
        (0, p) | (p, 0) => p,
        (a, b) => a.min(b),
    }
}

pub fn protocol_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        47 => "gre".into(),
        50 => "esp".into(),
        51 => "ah".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        n => n.to_string(),
    }
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod tests;

#[cfg(test)]
mod apportion_tests {
    use super::*;
    use proptest::prelude::*;

    /// The general largest-remainder method, without the shortcuts.
    fn reference(total: u64, weights: &[u64]) -> Vec<u64> {
        let sum: u128 = weights.iter().map(|w| u128::from(*w)).sum();
        if sum == 0 {
            let mut out = vec![0; weights.len()];
            out[0] = total;
            return out;
        }
        let mut out = Vec::new();
        let mut rems = Vec::new();
        for (i, w) in weights.iter().enumerate() {
            let exact = u128::from(total) * u128::from(*w);
            out.push((exact / sum) as u64);
            rems.push((exact % sum, i));
        }
        let mut left = total - out.iter().sum::<u64>();
        rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, i) in rems {
            if left == 0 {
                break;
            }
            out[i] += 1;
            left -= 1;
        }
        out
    }

    #[test]
    fn two_parts_tie_goes_first() {
        let mut out = Vec::new();
        apportion(3, &[5, 5], &mut out);
        assert_eq!(out, vec![2, 1]);
        apportion(3, &[0, 0], &mut out);
        assert_eq!(out, vec![3, 0]);
        apportion(u64::MAX, &[u64::MAX, 1], &mut out);
        assert_eq!(out, reference(u64::MAX, &[u64::MAX, 1]));
    }

    proptest! {
        #[test]
        fn shortcuts_equal_the_general_method(
            total in any::<u64>(),
            weights in proptest::collection::vec(prop_oneof![0u64..3, 0u64..120_000, any::<u64>()], 1..5),
        ) {
            let mut out = Vec::new();
            apportion(total, &weights, &mut out);
            prop_assert_eq!(out, reference(total, &weights));
        }
    }
}
