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

mod apportion;
mod arith;
mod bound;
mod conn;
mod keys;
mod named;
mod render;
mod time_rule;

pub use apportion::apportion;
pub(crate) use apportion::{apportion_small, apportion_with, split2, SMALL};
pub use keys::{
    conn_key_text, has_ports, is_system_port, parse_tunnel_key, protocol_name, service_port,
    Counters, Delta, Dim, Flow, FxBuild, FxHasher, Key, Part, Slot, IKE_PORTS, OTHER, UNLABELLED,
};
pub use named::{KeyNames, MAX_TUNNEL_NAMES};
pub use render::{Rollup, RollupStats, Taken};
pub use time_rule::TimeRule;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use labelflow_proto::FlowRecord;

use crate::config::AggConfig;
use arith::{Divisor, Sum};

/// Statistics of the aggregator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AggStats {
    pub records: u64,
    pub excluded_internal: u64,
    pub folded_keys: u64,
    pub clamped_durations: u64,
    /// Records whose label came after the label table was full (counted under `other`).
    pub folded_labels: u64,
    /// Labels cut to `max_label_bytes`.
    pub truncated_labels: u64,
    /// Records refused or clamped by the time rule, indexed like [`TimeRule::REASONS`].
    pub time_rule: [u64; 4],
    /// Key-bound sets of old buckets forgotten to stay within `max_tracked_keys`.
    pub forgotten_key_sets: u64,
    /// Records whose tunnel name came after `max_tunnel_names` were named (counted under
    /// the tunnel `other`).
    pub folded_tunnels: u64,
    /// NAT-pair shares put under `other` past `max_nat_keys_per_bucket` (one per direction).
    pub folded_nat_keys: u64,
}

/// Default of `limits.max_labels`: distinct labels the aggregator names; later ones are
/// counted under [`OTHER`]. Labels are the classes an admin configured (NFLOG groups, label
/// rules), so this is generous; it bounds what an exporter sending arbitrary
/// `applicationName`s can make us keep.
pub const MAX_LABELS: usize = 4096;

/// Class of a share: its label and protocol, packed as `label << 32 | protocol << 16`. Few
/// per bucket (labels × protocols), so one lookup feeds the label and protocol dimensions.
type Class = u64;

fn class_of(label: u32, protocol: u8) -> Class {
    Class::from(label) << 32 | Class::from(protocol) << 16
}

/// A share's port key: `protocol << 16 | port`, or [`FOLDED_PORT`] once the key bound folded
/// the port into [`Key::Other`]. Kept apart from the class: with random ports each record
/// would otherwise make a new (label, protocol, port) cell, labels times more cells than
/// the port rows the commit writes.
type PortKey = u32;
/// The port key of ports folded into [`Key::Other`] by the key bound.
const FOLDED_PORT: PortKey = 1 << 24;

fn port_key(protocol: u8, port: u16) -> PortKey {
    PortKey::from(protocol) << 16 | PortKey::from(port)
}

/// Base buckets per row of the pending deltas.
const ROW: u64 = 8;
type Row = [Sum; ROW as usize];

/// The keys a record feeds in every bucket it spans (label and protocol aside).
#[derive(Debug, Clone, Copy)]
struct Targets {
    class: Class,
    /// Service port key, for port protocols.
    port: Option<PortKey>,
    tunnel: Option<Key>,
    src_host: bool,
    dst_host: bool,
    /// The NAT pair, from a connection-tracking exporter.
    nat: Option<Key>,
    /// The label in its connection direction (connection-tracking exporters).
    dir: Option<Key>,
}

impl Targets {
    /// Whether the record feeds a tunnel, a host or a NAT pair.
    #[inline]
    fn others(&self) -> bool {
        self.tunnel.is_some()
            || self.src_host
            || self.dst_host
            || self.nat.is_some()
            || self.dir.is_some()
    }
}

/// Accumulates deltas between commits.
#[derive(Debug)]
pub struct Aggregator {
    cfg: AggConfig,
    labels: HashMap<String, u32, FxBuild>,
    /// Label, view and tunnel names, shared with the batches taken (copied on write when a
    /// label or tunnel is named while a batch still holds them).
    names: Arc<KeyNames>,
    /// For each label id, the view ids it belongs to.
    label_views: Vec<Vec<u32>>,
    /// Tunnel names exporters sent, interned ([`Aggregator::tunnel_id`]; the names are in
    /// `names`).
    tunnel_ids: HashMap<String, u32, FxBuild>,
    /// (bytes, packets) per tunnel id and [`Part`] since start, for `/metrics`.
    tunnel_totals: Vec<[(u64, u64); 6]>,
    /// Deltas since the last take, by (base bucket number / [`ROW`], class), one [`Sum`] per
    /// bucket of the row: one lookup feeds the label and protocol dimensions (which
    /// [`Aggregator::take`] splits) of both shares of a record that crosses one bucket
    /// boundary, unless the boundary is also a row's. A zero [`Sum`] is a (bucket, class)
    /// not yet seen since the last take: every share added is non-zero.
    pending: HashMap<(u64, Class), Row, FxBuild>,
    /// The port dimension's deltas, by (base bucket number / [`ROW`], port key), as
    /// `pending`.
    ports: HashMap<(u64, PortKey), Row, FxBuild>,
    tunnels: HashMap<(i64, Key), Sum, FxBuild>,
    hosts: HashMap<(i64, Key), Counters, FxBuild>,
    nats: HashMap<(i64, Key), Sum, FxBuild>,
    directions: HashMap<(i64, Key), Sum, FxBuild>,
    /// The milliseconds [start, end) of the base bucket the last single-bucket record
    /// fell in.
    last_range: (u64, u64),
    /// A base bucket boundary (milliseconds, bucket number) that instants are divided
    /// from (see [`Aggregator::bucket_of`]).
    anchor: (u64, u64),
    /// The base bucket in milliseconds, and its [`Divisor`] when it fits 32 bits.
    base_ms: u64,
    divisor: Option<Divisor>,
    seen: bound::KeyBound,
    /// Rolls up what [`Aggregator::take`] returns.
    rollup: Rollup,
    /// Base-bucket cells (bucket, class) and tunnel and host entries pending since the last
    /// take: what the next commit writes at the base resolution.
    cells: usize,
    /// The receive clock (milliseconds since the epoch), for the time rule.
    now_ms: Option<u64>,
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
        let base_ms = cfg.resolutions[0].saturating_mul(1000);
        let rollup = Rollup::new(&cfg);
        let names = Arc::new(KeyNames {
            cfg: Arc::new(cfg.clone()),
            label_names: Vec::new(),
            view_names: cfg.views.keys().cloned().collect(),
            tunnel_names: Vec::new(),
        });
        Aggregator {
            cfg,
            labels: HashMap::default(),
            names,
            label_views: Vec::new(),
            tunnel_ids: HashMap::default(),
            tunnel_totals: Vec::new(),
            pending: HashMap::default(),
            ports: HashMap::default(),
            tunnels: HashMap::default(),
            hosts: HashMap::default(),
            nats: HashMap::default(),
            directions: HashMap::default(),
            last_range: (0, 0),
            anchor: (0, 0),
            base_ms,
            divisor: Divisor::new(base_ms),
            seen: bound::KeyBound::default(),
            rollup,
            cells: 0,
            now_ms: None,
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

    /// The id of a label, naming it on first sight; past `max_labels` names, new labels
    /// get the id of [`OTHER`]. Names longer than `max_label_bytes` are cut (at a character
    /// boundary).
    pub fn label_id(&mut self, label: &str) -> u32 {
        if let Some(id) = self.labels.get(label) {
            return *id;
        }
        if label.len() > self.cfg.max_label_bytes {
            let mut end = self.cfg.max_label_bytes;
            while !label.is_char_boundary(end) {
                end -= 1;
            }
            self.stats.truncated_labels += 1;
            return self.label_id(&label[..end]);
        }
        if self.names.label_names.len() >= self.cfg.max_labels.max(2) - 1 && label != OTHER {
            self.stats.folded_labels += 1;
            return self.label_id(OTHER);
        }
        let id = self.names.label_names.len() as u32;
        let views = self
            .cfg
            .views
            .values()
            .enumerate()
            .filter(|(_, labels)| labels.iter().any(|l| l == label))
            .map(|(i, _)| i as u32)
            .collect();
        self.labels.insert(label.to_string(), id);
        Arc::make_mut(&mut self.names)
            .label_names
            .push(label.to_string());
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
        &self.names.label_names[id as usize]
    }

    /// Text of a key as stored and reported.
    pub fn key_text(&self, key: &Key) -> String {
        self.names.key_text(key)
    }
}

impl Aggregator {
    fn in_networks(&self, ip: IpAddr) -> bool {
        self.cfg.networks.iter().any(|n| n.contains(ip))
    }

    /// Add one record under `label` (named on first sight).
    pub fn add(&mut self, rec: &FlowRecord, label: &str) -> TimeRule {
        let id = self.label_id(label);
        let mut f = Flow::from_record(rec, id);
        f.tunnel = rec.tunnel.as_deref().map(|t| self.tunnel_id(t));
        self.add_flow(&f)
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

    /// Set the receive clock the time rule compares record times with (milliseconds since
    /// the epoch). Until it is set, records are only checked against themselves.
    pub fn set_clock(&mut self, now_ms: u64) {
        self.now_ms = Some(now_ms);
    }

    /// Add one record after the time rule ([`time_rule`](self::time_rule)); returns what
    /// the rule did.
    pub fn add_flow(&mut self, f: &Flow) -> TimeRule {
        let (rule, span) = self.time_rule(f);
        if let Some((start, end)) = span {
            self.add_span(f, start, end);
        }
        rule
    }

    /// Add a record the time rule already passed, over `[start_ms, end_ms]` as it stands:
    /// what the journal's merge does ([`crate::journal`]).
    pub fn add_counted(&mut self, f: &Flow) {
        self.add_span(f, f.start_ms, f.end_ms.max(f.start_ms));
    }

    /// Spread a record over the base buckets of `[start, end]`, which the time rule bounded.
    fn add_span(&mut self, f: &Flow, start: u64, end: u64) {
        let scale = u64::from(f.sampling.max(1));
        let bytes = f.bytes.saturating_mul(scale);
        let packets = f.packets.saturating_mul(scale);
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
        let port = has_ports(f.protocol)
            .then(|| port_key(f.protocol, service_port(f.src_port, f.dst_port)));
        let class = class_of(f.label, f.protocol);
        // ESP and AH, and ESP inside UDP (RFC 3948): a UDP record that carries an SPI (the
        // decoders read the reserved SPI 0 as none).
        let ipsec = matches!(f.protocol, 50 | 51) || (f.protocol == 17 && f.spi.is_some());

        if !ipsec
            && f.tunnel.is_none()
            && f.nat.is_none()
            && f.reply.is_none()
            && self.cfg.tunnels.is_empty()
            && self.cfg.networks.is_empty()
        {
            // Neither a tunnel nor a host to feed: the common case without configuration.
            return Targets {
                class,
                port,
                tunnel: None,
                src_host: false,
                dst_host: false,
                nat: None,
                dir: None,
            };
        }
        self.targets_of(f, class, port, ipsec)
    }

    /// [`Aggregator::targets`] where a tunnel or host may be fed.
    fn targets_of(
        &mut self,
        f: &Flow,
        class: Class,
        port: Option<PortKey>,
        ipsec: bool,
    ) -> Targets {
        let tunnel = if let Some(name) = f.tunnel {
            let part = Part::of(f);
            let spi = if part.has_spi() {
                f.spi.unwrap_or(0)
            } else {
                0
            };
            Some(Key::Conn { name, part, spi })
        } else if ipsec {
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
            nat: f.nat.map(|(inside, public)| Key::Nat { inside, public }),
            dir: f.reply.map(|reply| conn::direction_key(f.label, reply)),
        }
    }

    /// Add one base bucket's share of a record to every dimension it feeds (none for a zero
    /// share).
    #[inline]
    fn add_share(&mut self, f: &Flow, t: &Targets, bucket: u64, share: Sum) {
        let slot = (bucket % ROW) as usize;
        match self.pending.get_mut(&(bucket / ROW, t.class)) {
            Some(row) if !row[slot].is_zero() => row[slot].add(share),
            _ => self.admit(t.class, bucket, share),
        }
        if let Some(port) = t.port {
            match self.ports.get_mut(&(bucket / ROW, port)) {
                Some(row) if !row[slot].is_zero() => row[slot].add(share),
                _ => self.admit_port(port, bucket, share),
            }
        }
        if t.others() {
            self.add_others(f, t, bucket, share);
        }
    }

    /// [`Aggregator::add_share`] of two shares in consecutive buckets: one lookup per map
    /// when both buckets are in one row and already seen.
    #[inline]
    fn add_share2(&mut self, f: &Flow, t: &Targets, bucket: u64, s0: Sum, s1: Sum) {
        let slot = (bucket % ROW) as usize;
        if slot + 1 < ROW as usize {
            let row = bucket / ROW;
            let both = |r: Option<&mut Row>| match r {
                Some(r) if !r[slot].is_zero() && !r[slot + 1].is_zero() => {
                    r[slot].add(s0);
                    r[slot + 1].add(s1);
                    true
                }
                _ => false,
            };
            if both(self.pending.get_mut(&(row, t.class))) {
                let ported = match t.port {
                    Some(p) => both(self.ports.get_mut(&(row, p))),
                    None => true,
                };
                if !ported {
                    let p = t.port.expect("a port");
                    for (b, s) in [(bucket, s0), (bucket + 1, s1)] {
                        self.add_port(p, b, s);
                    }
                }
                if t.others() {
                    self.add_others(f, t, bucket, s0);
                    self.add_others(f, t, bucket + 1, s1);
                }
                return;
            }
        }
        self.add_share(f, t, bucket, s0);
        self.add_share(f, t, bucket + 1, s1);
    }

    /// A share's port alone.
    #[inline]
    fn add_port(&mut self, port: PortKey, bucket: u64, share: Sum) {
        let slot = (bucket % ROW) as usize;
        match self.ports.get_mut(&(bucket / ROW, port)) {
            Some(row) if !row[slot].is_zero() => row[slot].add(share),
            _ => self.admit_port(port, bucket, share),
        }
    }

    /// The first share of a (bucket, class) since the last take.
    #[cold]
    fn admit(&mut self, class: Class, bucket: u64, share: Sum) {
        if share.is_zero() {
            return;
        }
        let row = self
            .pending
            .entry((bucket / ROW, class))
            .or_insert([Sum::default(); ROW as usize]);
        let cell = &mut row[(bucket % ROW) as usize];
        self.cells += usize::from(cell.is_zero());
        cell.add(share);
    }

    /// The first share of a (bucket, port) since the last take: the port's key bound
    /// decides whether the port keeps its name in this bucket.
    #[cold]
    fn admit_port(&mut self, port: PortKey, bucket: u64, share: Sum) {
        if share.is_zero() {
            return;
        }
        let key = Key::Port((port >> 16) as u8, port as u16);
        let secs = self.bucket_secs(bucket);
        let port = if !is_system_port(&key) && self.bound(Dim::Port, secs, key) == Key::Other {
            FOLDED_PORT
        } else {
            port
        };
        let row = self
            .ports
            .entry((bucket / ROW, port))
            .or_insert([Sum::default(); ROW as usize]);
        let cell = &mut row[(bucket % ROW) as usize];
        self.cells += usize::from(cell.is_zero());
        cell.add(share);
    }

    /// The key bound ([`bound`](self::bound)) with the configured limits.
    fn bound(&mut self, dim: Dim, bucket: i64, key: Key) -> Key {
        let max = if dim.is_flow_keyed() {
            self.cfg.max_flow_keys_per_bucket
        } else {
            self.cfg.max_keys_per_bucket
        };
        let tracked = self.cfg.max_tracked_keys;
        let k = self.seen.admit(max, tracked, dim, bucket, key);
        self.stats.folded_keys = self.seen.folded;
        self.stats.forgotten_key_sets = self.seen.forgotten;
        k
    }

    /// Cells (base bucket and key) pending since the last [`Aggregator::take`]: what bounds
    /// the memory held between commits and the rows the next commit writes.
    pub fn pending_cells(&self) -> usize {
        self.cells
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
        let bucket = self.bucket_secs(bucket);
        if let Some(key) = t.tunnel {
            if let Key::Conn { name, part, .. } = key {
                self.count_tunnel(name, part, share.bytes, share.packets);
            }
            if let Some(s) = self.tunnels.get_mut(&(bucket, key)) {
                s.add(share);
            } else {
                let k = self.bound(Dim::Tunnel, bucket, key);
                let s = self.tunnels.entry((bucket, k)).or_default();
                self.cells += usize::from(s.is_zero());
                s.add(share);
            }
        }
        if let Some(key) = t.nat {
            self.add_nat(bucket, key, share);
        }
        if let Some(key) = t.dir {
            self.add_direction(bucket, key, share);
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
        let k = self.bound(Dim::Host, bucket, key);
        let h = self.hosts.entry((bucket, k)).or_default();
        self.cells += usize::from(*h == Counters::default());
        h.add(&c);
    }

    /// Forget key-bound bookkeeping of buckets that started before `before` (seconds).
    pub fn forget_before(&mut self, before: i64) {
        self.seen.forget_before(before);
        self.rollup.forget_before(before);
    }

    /// The base-resolution counters since the last take, keyed as stored: classes split
    /// into labels, protocols and ports; the label bound applied; views summed from their
    /// labels.
    fn base_slots(&mut self) -> Vec<(i64, Dim, Key, Counters)> {
        let mut labels: HashMap<(i64, u32), Sum, FxBuild> = HashMap::default();
        let mut protocols: HashMap<(i64, u8), Sum, FxBuild> = HashMap::default();
        let mut ports: HashMap<(i64, Key), Sum, FxBuild> = HashMap::default();
        self.cells = 0;
        for ((row, class), sums) in std::mem::take(&mut self.pending) {
            for (i, s) in sums.iter().enumerate() {
                if s.is_zero() {
                    continue;
                }
                let bucket = self.bucket_secs(row * ROW + i as u64);
                let (label, protocol) = ((class >> 32) as u32, (class >> 16) as u8);
                labels.entry((bucket, label)).or_default().add(*s);
                protocols.entry((bucket, protocol)).or_default().add(*s);
            }
        }
        for ((row, port), sums) in std::mem::take(&mut self.ports) {
            let key = if port == FOLDED_PORT {
                Key::Other
            } else {
                Key::Port((port >> 16) as u8, port as u16)
            };
            for (i, s) in sums.iter().enumerate() {
                if !s.is_zero() {
                    let bucket = self.bucket_secs(row * ROW + i as u64);
                    ports.entry((bucket, key)).or_default().add(*s);
                }
            }
        }
        let mut out = Vec::new();
        let mut views: HashMap<(i64, u32), Sum, FxBuild> = HashMap::default();
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
            let key = self.bound(Dim::Label, bucket, Key::Label(id));
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
        let conn = [
            (Dim::Nat, &mut self.nats),
            (Dim::Direction, &mut self.directions),
        ];
        for (dim, map) in conn {
            for ((bucket, key), s) in std::mem::take(map) {
                out.push((bucket, dim, key, s.counters()));
            }
        }
        out
    }

    /// Take the accumulated deltas (base resolution and every rollup), rendered for the
    /// store.
    pub fn take(&mut self) -> Vec<Delta> {
        let taken = self.take_base();
        self.rollup.render(taken)
    }

    /// Take the accumulated base-resolution counters, keyed as stored but neither rolled up
    /// nor named: a [`Rollup`] does that, on whichever thread has the time.
    pub fn take_base(&mut self) -> Taken {
        Taken {
            base: self.base_slots(),
            names: self.names.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    In,
    Out,
}

#[cfg(test)]
mod tests;
