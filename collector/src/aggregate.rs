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

use crate::config::AggConfig;

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
        // The common case of a flow crossing one bucket boundary, without the sort.
        [w0, w1] if w0 != 0 || w1 != 0 => {
            let (s0, s1) = split2(total, w0, w1);
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
        let (s, r) = share(total, *w, sum);
        rems.push((r, i));
        out.push(s);
        given += s;
    }
    let left = (total - given) as usize;
    if left == 0 {
        return;
    }
    if weights.len() <= 8 {
        // A few parts: pick the largest remainders (earliest on ties) one by one.
        for _ in 0..left {
            let mut best = usize::MAX;
            for (k, &(r, _)) in rems.iter().enumerate() {
                if r != u128::MAX && (best == usize::MAX || r > rems[best].0) {
                    best = k;
                }
            }
            out[rems[best].1] += 1;
            rems[best].0 = u128::MAX;
        }
        return;
    }
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in rems.iter().take(left) {
        out[i] += 1;
    }
}

/// Most parts [`apportion_small`] takes.
const SMALL: usize = 8;

/// [`apportion`] into an array, in 64-bit arithmetic, for 1 to [`SMALL`] parts whose weights
/// sum to a non-zero value that `total` times it fits 64 bits (then every exact share does
/// too); `false`, with `out` unspecified, otherwise. A flow crossing a few bucket boundaries
/// takes this path rather than the general one's vectors and 128-bit remainders.
#[inline]
fn apportion_small(total: u64, weights: &[u64], out: &mut [u64; SMALL]) -> bool {
    let n = weights.len();
    if n == 0 || n > SMALL {
        return false;
    }
    let Some(sum) = weights.iter().try_fold(0u64, |a, w| a.checked_add(*w)) else {
        return false;
    };
    if sum == 0 || total.checked_mul(sum).is_none() {
        return false;
    }
    // A remainder is below `sum`, so u64::MAX marks one already given its unit.
    let mut rems = [0u64; SMALL];
    let mut given = 0;
    for (i, w) in weights.iter().enumerate() {
        let exact = total * w;
        out[i] = exact / sum;
        rems[i] = exact % sum;
        given += out[i];
    }
    for _ in 0..total - given {
        let mut best = 0;
        for k in 1..n {
            if rems[k] != u64::MAX && (rems[best] == u64::MAX || rems[k] > rems[best]) {
                best = k;
            }
        }
        out[best] += 1;
        rems[best] = u64::MAX;
    }
    true
}

/// [`apportion`] over two parts, not both of weight 0. At most one unit is left over, and it
/// goes to the larger remainder (the first on a tie), as the general method decides: the
/// remainders r0 + r1 are a multiple of the sum and each below it, so either both are 0 or
/// r1 = sum - r0. One division.
#[inline]
fn split2(total: u64, w0: u64, w1: u64) -> (u64, u64) {
    debug_assert!(w0 != 0 || w1 != 0);
    let sum = u128::from(w0) + u128::from(w1);
    let (mut s0, r0) = share(total, w0, sum);
    let mut s1 = total - s0;
    if r0 != 0 {
        s1 -= 1;
        if r0 >= sum - r0 {
            s0 += 1;
        } else {
            s1 += 1;
        }
    }
    (s0, s1)
}

/// `total * w / sum` and its remainder, exactly; in 64-bit arithmetic when it fits (counts
/// times milliseconds nearly always do), which spares a 128-bit division.
#[inline]
fn share(total: u64, w: u64, sum: u128) -> (u64, u128) {
    if let (Ok(sum), Some(exact)) = (u64::try_from(sum), total.checked_mul(w)) {
        return (exact / sum, u128::from(exact % sum));
    }
    let exact = u128::from(total) * u128::from(w);
    ((exact / sum) as u64, exact % sum)
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
    /// Add `o`; counters saturate rather than wrap (an exporter can claim any count).
    pub fn add(&mut self, o: &Counters) {
        self.bytes = self.bytes.saturating_add(o.bytes);
        self.packets = self.packets.saturating_add(o.packets);
        self.flows = self.flows.saturating_add(o.flows);
        self.bytes_in = self.bytes_in.saturating_add(o.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(o.bytes_out);
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
    /// Records whose label came after the label table was full (counted under `other`).
    pub folded_labels: u64,
}

/// Distinct labels the aggregator names; later ones are counted under [`OTHER`]. Labels
/// are the classes an admin configured (NFLOG groups, label rules), so this is generous;
/// it bounds what an exporter sending arbitrary `applicationName`s can make us keep.
pub const MAX_LABELS: usize = 4096;

/// One record reduced to what aggregation needs. `label` is an id from
/// [`Aggregator::label_id`]; counts are as exported, `sampling` scales them. Ports are those
/// of TCP, UDP, SCTP and UDP-Lite ([`has_ports`]), 0 for other protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub label: u32,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub spi: Option<u32>,
    pub bytes: u64,
    pub packets: u64,
    pub sampling: u32,
    pub start_ms: u64,
    pub end_ms: u64,
}

impl Flow {
    pub fn from_record(rec: &FlowRecord, label: u32) -> Flow {
        let ports = has_ports(rec.protocol);
        Flow {
            label,
            src: rec.src_addr,
            dst: rec.dst_addr,
            protocol: rec.protocol,
            src_port: if ports { rec.src_port } else { 0 },
            dst_port: if ports { rec.dst_port } else { 0 },
            spi: rec.ipsec_spi,
            bytes: rec.bytes,
            packets: rec.packets,
            sampling: rec.sampling_interval,
            start_ms: rec.start_ms,
            end_ms: rec.end_ms,
        }
    }
}

/// Counters of the dimensions without in/out split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sum {
    bytes: u64,
    packets: u64,
    flows: u64,
}

impl Sum {
    #[inline]
    fn add(&mut self, o: Sum) {
        self.bytes = self.bytes.saturating_add(o.bytes);
        self.packets = self.packets.saturating_add(o.packets);
        self.flows = self.flows.saturating_add(o.flows);
    }

    fn is_zero(&self) -> bool {
        *self == Sum::default()
    }

    fn counters(self) -> Counters {
        Counters {
            bytes: self.bytes,
            packets: self.packets,
            flows: self.flows,
            ..Counters::default()
        }
    }
}

/// Class of a share: what its label, protocol and port keys are, packed as
/// `label << 32 | FOLDED_PORT? | protocol << 16 | port` (port 0 for protocols without).
type Class = u64;
/// Set in a class whose port was folded into [`Key::Other`] by the key bound.
const FOLDED_PORT: Class = 1 << 24;

fn class_of(label: u32, protocol: u8, port: u16) -> Class {
    Class::from(label) << 32 | Class::from(protocol) << 16 | Class::from(port)
}

/// Base buckets per row of the pending deltas.
const ROW: u64 = 8;
type Row = [Sum; ROW as usize];

/// Division of 32-bit numbers by a fixed 32-bit divisor as one multiplication:
/// `n / d == (M * n) >> 64` with `M = floor((2^64 - 1) / d) + 1`, exact for every 32-bit `n`
/// and `d` >= 2 (Lemire, Kaser and Kurz, "Faster remainder by direct computation",
/// Software: Practice and Experience 49(6), 2019, section 4).
#[derive(Debug, Clone, Copy)]
struct Divisor(u64);

impl Divisor {
    fn new(d: u64) -> Option<Divisor> {
        (2..=u64::from(u32::MAX))
            .contains(&d)
            .then(|| Divisor(u64::MAX / d + 1))
    }

    #[inline]
    fn div(self, n: u32) -> u64 {
        ((u128::from(self.0) * u128::from(n)) >> 64) as u64
    }
}

/// The keys a record feeds in every bucket it spans (label and protocol aside).
#[derive(Debug, Clone, Copy)]
struct Targets {
    class: Class,
    /// Service port, for port protocols.
    port: Option<u16>,
    tunnel: Option<Key>,
    src_host: bool,
    dst_host: bool,
}

impl Targets {
    /// Whether the record feeds a tunnel or a host.
    #[inline]
    fn others(&self) -> bool {
        self.tunnel.is_some() || self.src_host || self.dst_host
    }
}

/// The key bound of one (dimension, base bucket): which keys it admitted.
type Seen = HashMap<(Dim, i64), HashSet<Key, FxBuild>, FxBuild>;

/// Fold keys beyond `max` per (dimension, bucket) into [`Key::Other`]; the first keys seen
/// keep their name for the bucket's whole life, across commits.
fn bounded(
    seen: &mut Seen,
    stats: &mut AggStats,
    max: usize,
    dim: Dim,
    bucket: i64,
    key: Key,
) -> Key {
    let set = seen.entry((dim, bucket)).or_default();
    if set.contains(&key) {
        return key;
    }
    if set.len() >= max {
        stats.folded_keys += 1;
        return Key::Other;
    }
    set.insert(key);
    key
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
    /// Deltas since the last take, by (base bucket number / [`ROW`], class), one [`Sum`] per
    /// bucket of the row: one lookup feeds the label, protocol and port dimensions (which
    /// [`Aggregator::take`] splits) of both shares of a record that crosses one bucket
    /// boundary, unless the boundary is also a row's. A zero [`Sum`] is a (bucket, class)
    /// not yet seen since the last take: every share added is non-zero.
    pending: HashMap<(u64, Class), Row, FxBuild>,
    tunnels: HashMap<(i64, Key), Sum, FxBuild>,
    hosts: HashMap<(i64, Key), Counters, FxBuild>,
    /// The milliseconds [start, end) of the base bucket the last single-bucket record
    /// fell in.
    last_range: (u64, u64),
    /// A base bucket boundary (milliseconds, bucket number) that instants are divided
    /// from (see [`Aggregator::bucket_of`]).
    anchor: (u64, u64),
    /// The base bucket in milliseconds, and its [`Divisor`] when it fits 32 bits.
    base_ms: u64,
    divisor: Option<Divisor>,
    seen: Seen,
    /// (bytes, packets) per label id since start, as of the last take.
    totals: Vec<(u64, u64)>,
    weights: Vec<u64>,
    shares_b: Vec<u64>,
    shares_p: Vec<u64>,
    rems: Vec<(u128, usize)>,
    pub stats: AggStats,
}

impl Aggregator {
    pub fn new(cfg: AggConfig) -> Aggregator {
        let view_names = cfg.views.keys().cloned().collect();
        let base_ms = cfg.resolutions[0].saturating_mul(1000);
        Aggregator {
            cfg,
            labels: HashMap::default(),
            label_names: Vec::new(),
            label_views: Vec::new(),
            view_names,
            pending: HashMap::default(),
            tunnels: HashMap::default(),
            hosts: HashMap::default(),
            last_range: (0, 0),
            anchor: (0, 0),
            base_ms,
            divisor: Divisor::new(base_ms),
            seen: HashMap::default(),
            totals: Vec::new(),
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

    /// The id of a label, naming it on first sight; past [`MAX_LABELS`] names, new labels
    /// get the id of [`OTHER`].
    pub fn label_id(&mut self, label: &str) -> u32 {
        if let Some(id) = self.labels.get(label) {
            return *id;
        }
        if self.label_names.len() >= MAX_LABELS - 1 && label != OTHER {
            self.stats.folded_labels += 1;
            return self.label_id(OTHER);
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

    /// (bytes, packets) per label id since start, counted up to the last
    /// [`Aggregator::take`].
    pub fn label_totals(&self) -> &[(u64, u64)] {
        &self.totals
    }

    /// The name of a label id.
    pub fn label_name(&self, id: u32) -> &str {
        &self.label_names[id as usize]
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
                // A configured peer at either end names the tunnel the SA belongs to.
                let tunnel = self
                    .cfg
                    .tunnels
                    .iter()
                    .find(|t| t.peers.iter().any(|n| n.contains(src) || n.contains(dst)));
                match tunnel {
                    Some(t) => format!("{}: {p} {src}>{dst} spi 0x{spi:08x}", t.name),
                    None => format!("{p} {src}>{dst} spi 0x{spi:08x}"),
                }
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

    /// Add one record under `label` (named on first sight).
    pub fn add(&mut self, rec: &FlowRecord, label: &str) {
        let id = self.label_id(label);
        self.add_flow(&Flow::from_record(rec, id));
    }

    /// The base bucket number of an instant (milliseconds). Divides the offset from a
    /// recent bucket when it fits 32 bits, by a multiplication ([`Divisor`]), which is
    /// several times faster than dividing a full 64-bit epoch timestamp.
    #[inline]
    fn bucket_of(&mut self, ms: u64) -> u64 {
        let base_ms = self.base_ms;
        let (anchor, anchor_bucket) = self.anchor;
        if let (Some(d), Some(div)) = (ms.checked_sub(anchor), self.divisor) {
            if let Ok(d) = u32::try_from(d) {
                return anchor_bucket + div.div(d);
            }
        }
        let b = ms / base_ms;
        // Anchor a little before this instant, so that the flows around it (which start up
        // to the longest flow earlier) divide the short way.
        let back = self.cfg.max_flow_duration_ms / base_ms + 1;
        let a = b.saturating_sub(back);
        self.anchor = (a * base_ms, a);
        b
    }

    /// Add one record.
    pub fn add_flow(&mut self, f: &Flow) {
        self.stats.records += 1;
        let scale = u64::from(f.sampling.max(1));
        let bytes = f.bytes.saturating_mul(scale);
        let packets = f.packets.saturating_mul(scale);
        let mut start = f.start_ms.min(f.end_ms);
        let end = f.end_ms.max(f.start_ms);
        if end - start > self.cfg.max_flow_duration_ms {
            start = end - self.cfg.max_flow_duration_ms;
            self.stats.clamped_durations += 1;
        }
        let base_ms = self.base_ms;
        let whole = Sum {
            bytes,
            packets,
            flows: 1,
        };
        // Most records fall in the bucket the previous one fell in: skip the divisions.
        let (lo, hi) = self.last_range;
        if start >= lo && end < hi {
            let t = self.targets(f);
            self.add_share(f, &t, lo / base_ms, whole);
            return;
        }
        let (first, last) = (self.bucket_of(start), self.bucket_of(end));
        let t = self.targets(f);
        if first == last {
            // Saturating: an exporter may send times near the end of u64 milliseconds.
            self.last_range = (first * base_ms, (first + 1).saturating_mul(base_ms));
            self.add_share(f, &t, first, whole);
            return;
        }
        if last == first + 1 {
            // One boundary crossed: the two weights are the time on either side of it (the
            // first is never 0: `start` lies before the boundary).
            let boundary = last * base_ms;
            let (w0, w1) = (boundary - start, end - boundary);
            let (b0, b1) = split2(bytes, w0, w1);
            let (p0, p1) = split2(packets, w0, w1);
            // The flow counts once, in the bucket it started in.
            let s0 = Sum {
                bytes: b0,
                packets: p0,
                flows: 1,
            };
            let s1 = Sum {
                bytes: b1,
                packets: p1,
                flows: 0,
            };
            self.add_share2(f, &t, first, s0, s1);
            return;
        }
        // Pro-rate over the base buckets [start, end] touches.
        let parts = last - first + 1;
        if parts <= SMALL as u64 {
            let mut w = [0u64; SMALL];
            for (i, b) in (first..=last).enumerate() {
                let lo = (b * base_ms).max(start);
                let hi = (b + 1).saturating_mul(base_ms).min(end);
                w[i] = hi - lo;
            }
            let w = &w[..parts as usize];
            let (mut sb, mut sp) = ([0u64; SMALL], [0u64; SMALL]);
            if apportion_small(bytes, w, &mut sb) && apportion_small(packets, w, &mut sp) {
                for i in 0..w.len() {
                    let share = Sum {
                        bytes: sb[i],
                        packets: sp[i],
                        flows: u64::from(i == 0),
                    };
                    self.add_share(f, &t, first + i as u64, share);
                }
                return;
            }
        }
        self.weights.clear();
        for b in first..=last {
            let lo = (b * base_ms).max(start);
            let hi = (b + 1).saturating_mul(base_ms).min(end);
            self.weights.push(hi - lo);
        }
        let mut sb = std::mem::take(&mut self.shares_b);
        let mut sp = std::mem::take(&mut self.shares_p);
        apportion_with(bytes, &self.weights, &mut sb, &mut self.rems);
        apportion_with(packets, &self.weights, &mut sp, &mut self.rems);
        for (i, (b, p)) in sb.iter().zip(&sp).enumerate() {
            let share = Sum {
                bytes: *b,
                packets: *p,
                flows: u64::from(i == 0),
            };
            self.add_share(f, &t, first + i as u64, share);
        }
        self.shares_b = sb;
        self.shares_p = sp;
    }

    /// What a record feeds besides its label and protocol, worked out once per record.
    #[inline]
    fn targets(&mut self, f: &Flow) -> Targets {
        let port = has_ports(f.protocol).then(|| service_port(f.src_port, f.dst_port));
        let class = class_of(f.label, f.protocol, port.unwrap_or(0));
        let ipsec = matches!(f.protocol, 50 | 51);
        if !ipsec && self.cfg.tunnels.is_empty() && self.cfg.networks.is_empty() {
            // Neither a tunnel nor a host to feed: the common case without configuration.
            return Targets {
                class,
                port,
                tunnel: None,
                src_host: false,
                dst_host: false,
            };
        }
        self.targets_of(f, class, port, ipsec)
    }

    /// [`Aggregator::targets`] where a tunnel or host may be fed.
    fn targets_of(&mut self, f: &Flow, class: Class, port: Option<u16>, ipsec: bool) -> Targets {
        let tunnel = if ipsec {
            Some(Key::Sa {
                protocol: f.protocol,
                src: f.src,
                dst: f.dst,
                spi: f.spi.unwrap_or(0),
            })
        } else if self.cfg.tunnels.is_empty() {
            None
        } else {
            self.cfg
                .tunnels
                .iter()
                .position(|t| {
                    t.subnets
                        .iter()
                        .any(|n| n.contains(f.src) || n.contains(f.dst))
                })
                .map(|t| Key::Tunnel(t as u32))
        };
        let (mut src_host, mut dst_host) = (false, false);
        if !self.cfg.networks.is_empty() {
            let (src_in, dst_in) = (self.in_networks(f.src), self.in_networks(f.dst));
            if src_in && dst_in && self.cfg.exclude_internal {
                self.stats.excluded_internal += 1;
            } else {
                src_host = src_in;
                dst_host = dst_in && !(src_in && f.dst == f.src);
            }
        }
        Targets {
            class,
            port,
            tunnel,
            src_host,
            dst_host,
        }
    }

    /// Add one base bucket's share of a record to every dimension it feeds (none for a zero
    /// share).
    #[inline]
    fn add_share(&mut self, f: &Flow, t: &Targets, bucket: u64, share: Sum) {
        let slot = (bucket % ROW) as usize;
        match self.pending.get_mut(&(bucket / ROW, t.class)) {
            Some(row) if !row[slot].is_zero() => row[slot].add(share),
            _ => self.admit(f, t, bucket, share),
        }
        if t.others() {
            self.add_others(f, t, bucket, share);
        }
    }

    /// [`Aggregator::add_share`] of two shares in consecutive buckets: one lookup when both
    /// buckets are in one row and already seen.
    #[inline]
    fn add_share2(&mut self, f: &Flow, t: &Targets, bucket: u64, s0: Sum, s1: Sum) {
        let slot = (bucket % ROW) as usize;
        if slot + 1 < ROW as usize {
            if let Some(row) = self.pending.get_mut(&(bucket / ROW, t.class)) {
                if !row[slot].is_zero() && !row[slot + 1].is_zero() {
                    row[slot].add(s0);
                    row[slot + 1].add(s1);
                    if t.others() {
                        self.add_others(f, t, bucket, s0);
                        self.add_others(f, t, bucket + 1, s1);
                    }
                    return;
                }
            }
        }
        self.add_share(f, t, bucket, s0);
        self.add_share(f, t, bucket + 1, s1);
    }

    /// The first share of a (bucket, class) since the last take: the port's key bound
    /// decides whether the port keeps its name in this bucket.
    #[cold]
    fn admit(&mut self, f: &Flow, t: &Targets, bucket: u64, share: Sum) {
        if share.is_zero() {
            return;
        }
        let mut class = t.class;
        if let Some(port) = t.port {
            let key = Key::Port(f.protocol, port);
            let max = self.cfg.max_keys_per_bucket;
            let secs = self.bucket_secs(bucket);
            if bounded(&mut self.seen, &mut self.stats, max, Dim::Port, secs, key) == Key::Other {
                class = class_of(f.label, f.protocol, 0) | FOLDED_PORT;
            }
        }
        let row = self
            .pending
            .entry((bucket / ROW, class))
            .or_insert([Sum::default(); ROW as usize]);
        row[(bucket % ROW) as usize].add(share);
    }

    /// Start of a base bucket, seconds since the epoch.
    #[inline]
    fn bucket_secs(&self, bucket: u64) -> i64 {
        bucket.saturating_mul(self.cfg.resolutions[0]) as i64
    }

    /// A share's tunnel and hosts.
    fn add_others(&mut self, f: &Flow, t: &Targets, bucket: u64, share: Sum) {
        if share.is_zero() {
            return;
        }
        let max = self.cfg.max_keys_per_bucket;
        let bucket = self.bucket_secs(bucket);
        if let Some(key) = t.tunnel {
            if let Some(s) = self.tunnels.get_mut(&(bucket, key)) {
                s.add(share);
            } else {
                let k = bounded(
                    &mut self.seen,
                    &mut self.stats,
                    max,
                    Dim::Tunnel,
                    bucket,
                    key,
                );
                self.tunnels.entry((bucket, k)).or_default().add(share);
            }
        }
        for (on, ip, side) in [
            (t.src_host, f.src, Side::Out),
            (t.dst_host, f.dst, Side::In),
        ] {
            if on {
                self.add_host(bucket, Key::Host(ip), share, side);
            }
        }
    }

    /// Add a host's share: bytes towards the host count in, bytes from it out.
    fn add_host(&mut self, bucket: i64, key: Key, share: Sum, side: Side) {
        let c = Counters {
            bytes: share.bytes,
            packets: share.packets,
            flows: share.flows,
            bytes_in: if side == Side::In { share.bytes } else { 0 },
            bytes_out: if side == Side::Out { share.bytes } else { 0 },
        };
        if let Some(h) = self.hosts.get_mut(&(bucket, key)) {
            h.add(&c);
            return;
        }
        let max = self.cfg.max_keys_per_bucket;
        let k = bounded(&mut self.seen, &mut self.stats, max, Dim::Host, bucket, key);
        self.hosts.entry((bucket, k)).or_default().add(&c);
    }

    /// Forget key-bound bookkeeping of buckets that started before `before` (seconds).
    pub fn forget_before(&mut self, before: i64) {
        self.seen.retain(|(_, b), _| *b >= before);
    }

    /// The base-resolution counters since the last take, keyed as stored: classes split
    /// into labels, protocols and ports; the label bound applied; views summed from their
    /// labels.
    fn base_slots(&mut self) -> Vec<(i64, Dim, Key, Counters)> {
        let mut labels: HashMap<(i64, u32), Sum, FxBuild> = HashMap::default();
        let mut protocols: HashMap<(i64, u8), Sum, FxBuild> = HashMap::default();
        let mut ports: HashMap<(i64, Key), Sum, FxBuild> = HashMap::default();
        let rows = std::mem::take(&mut self.pending);
        let cells = rows.into_iter().flat_map(|((row, class), sums)| {
            (0..ROW).map(move |i| (row * ROW + i, class, sums[i as usize]))
        });
        for (bucket, class, s) in cells {
            if s.is_zero() {
                continue;
            }
            let bucket = self.bucket_secs(bucket);
            let (label, protocol) = ((class >> 32) as u32, (class >> 16) as u8);
            labels.entry((bucket, label)).or_default().add(s);
            protocols.entry((bucket, protocol)).or_default().add(s);
            if has_ports(protocol) {
                let key = if class & FOLDED_PORT != 0 {
                    Key::Other
                } else {
                    Key::Port(protocol, class as u16)
                };
                ports.entry((bucket, key)).or_default().add(s);
            }
        }
        let mut out = Vec::new();
        let mut views: HashMap<(i64, u32), Sum, FxBuild> = HashMap::default();
        let max = self.cfg.max_keys_per_bucket;
        for ((bucket, id), s) in labels {
            let i = id as usize;
            if self.totals.len() <= i {
                self.totals.resize(i + 1, (0, 0));
            }
            let t = &mut self.totals[i];
            *t = (t.0.saturating_add(s.bytes), t.1.saturating_add(s.packets));
            for v in &self.label_views[id as usize] {
                views.entry((bucket, *v)).or_default().add(s);
            }
            let key = bounded(
                &mut self.seen,
                &mut self.stats,
                max,
                Dim::Label,
                bucket,
                Key::Label(id),
            );
            out.push((bucket, Dim::Label, key, s.counters()));
        }
        for ((bucket, v), s) in views {
            out.push((bucket, Dim::View, Key::View(v), s.counters()));
        }
        for ((bucket, p), s) in protocols {
            out.push((bucket, Dim::Protocol, Key::Protocol(p), s.counters()));
        }
        for ((bucket, key), s) in ports {
            out.push((bucket, Dim::Port, key, s.counters()));
        }
        for ((bucket, key), s) in std::mem::take(&mut self.tunnels) {
            out.push((bucket, Dim::Tunnel, key, s.counters()));
        }
        for ((bucket, key), c) in std::mem::take(&mut self.hosts) {
            out.push((bucket, Dim::Host, key, c));
        }
        out
    }

    /// Take the accumulated deltas (base resolution and every rollup), rendered for the
    /// store.
    pub fn take(&mut self) -> Vec<Delta> {
        let base = self.base_slots();
        let mut all: HashMap<Slot, Counters, FxBuild> = HashMap::default();
        all.reserve(base.len() * self.cfg.resolutions.len());
        for (bucket, dim, key, c) in base {
            for (res, r) in self.cfg.resolutions.iter().enumerate() {
                let r = *r as i64;
                all.entry(Slot {
                    res: res as u8,
                    bucket: bucket.div_euclid(r) * r,
                    dim,
                    key,
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

/// Whether flows of this IP protocol are counted per port: TCP, UDP, SCTP, UDP-Lite.
#[inline]
pub fn has_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 132 | 136)
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

    #[test]
    fn small_parts_ties_go_first() {
        let mut out = [0u64; SMALL];
        assert!(apportion_small(2, &[7, 7, 7], &mut out));
        assert_eq!(out[..3], [1, 1, 0]);
        assert!(apportion_small(5, &[1, 2, 1, 2], &mut out));
        assert_eq!(out[..4], reference(5, &[1, 2, 1, 2])[..]);
        assert!(!apportion_small(5, &[0, 0], &mut out));
        assert!(!apportion_small(u64::MAX, &[1, 1], &mut out));
        assert!(!apportion_small(1, &[1; SMALL + 1], &mut out));
    }

    proptest! {
        #[test]
        fn shortcuts_equal_the_general_method(
            total in prop_oneof![any::<u64>(), 0u64..3_000_000, 0u64..10],
            weights in proptest::collection::vec(prop_oneof![0u64..3, 0u64..120_000, any::<u64>()], 1..10),
        ) {
            let mut out = Vec::new();
            apportion(total, &weights, &mut out);
            let want = reference(total, &weights);
            let mut small = [0u64; SMALL];
            if apportion_small(total, &weights, &mut small) {
                prop_assert_eq!(&small[..weights.len()], &want[..]);
            }
            prop_assert_eq!(out, want);
        }
    }
}
