//! The key model of aggregation: dimensions, typed keys, counters, the record as
//! aggregation sees it, the protocol and port names keys are shown with, and the hasher of
//! the per-record maps.

use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use labelflow_proto::FlowRecord;

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

pub type FxBuild = BuildHasherDefault<FxHasher>;

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

    /// Whether a flow's addresses, ports or SPI make this dimension's keys, so that an
    /// exporter (or random traffic) can make any number of them: the dimensions bounded by
    /// `limits.max_flow_keys_per_bucket`.
    pub fn is_flow_keyed(self) -> bool {
        matches!(self, Dim::Tunnel | Dim::Host | Dim::Port)
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

/// A typed key; rendered to text by [`Aggregator::key_text`](super::Aggregator::key_text).
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

/// One record reduced to what aggregation needs. `label` is an id from
/// [`Aggregator::label_id`](super::Aggregator::label_id); counts are as exported, `sampling` scales them. Ports are those
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

/// Whether a key is a System Port (0-1023, RFC 6335 section 6): such ports keep their names
/// past the per-bucket key bound, so that a flood of random ports cannot fold DNS or HTTPS
/// into `other` (at most 1024 keys more per protocol and bucket).
pub fn is_system_port(key: &Key) -> bool {
    matches!(key, Key::Port(_, p) if *p < 1024)
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
