//! The key model of aggregation: dimensions, typed keys, counters, the record as
//! aggregation sees it, the protocol and port names keys are shown with, and the hasher of
//! the per-record maps.

use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;

use labelflow_proto::{BiflowDirection, FlowRecord};

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
    /// Address translation: inside host and the public (post-NAT) address it goes out as.
    Nat,
    /// Label and connection direction (`orig`: the initiator's packets, `reply`: the
    /// responder's), for records of a connection-tracking exporter.
    Direction,
}

impl Dim {
    /// Whether the keys of this dimension partition the traffic, so that their sum is the
    /// total. Views overlap by design (`naive` holds `uplink`), a tunnel's inner traffic and
    /// its ESP are the same bytes twice, and a flow between two inside hosts counts for both:
    /// for those a sum would double-count.
    pub fn is_additive(self) -> bool {
        matches!(
            self,
            Dim::Label | Dim::Protocol | Dim::Port | Dim::Direction
        )
    }

    /// Whether a flow's addresses, ports or SPI make this dimension's keys, so that an
    /// exporter (or random traffic) can make any number of them: the dimensions bounded by
    /// `limits.max_flow_keys_per_bucket`.
    pub fn is_flow_keyed(self) -> bool {
        matches!(self, Dim::Tunnel | Dim::Host | Dim::Port)
    }

    pub const ALL: [Dim; 8] = [
        Dim::Label,
        Dim::View,
        Dim::Tunnel,
        Dim::Host,
        Dim::Protocol,
        Dim::Port,
        Dim::Nat,
        Dim::Direction,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dim::Label => "label",
            Dim::View => "view",
            Dim::Tunnel => "tunnel",
            Dim::Host => "host",
            Dim::Protocol => "protocol",
            Dim::Port => "port",
            Dim::Nat => "nat",
            Dim::Direction => "direction",
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
    /// Traffic of a tunnel the exporter named (the IKE connection, interned by
    /// [`Aggregator::tunnel_id`](super::Aggregator::tunnel_id)), by part; `spi` is the
    /// SA's for [`Part::Esp`], [`Part::Ah`] and [`Part::EspInUdp`], 0 otherwise.
    Conn {
        name: u32,
        part: Part,
        spi: u32,
    },
    Host(IpAddr),
    Protocol(u8),
    Port(u8, u16),
    /// A translated address pair: the inside host and its public (post-NAT) address.
    Nat {
        inside: IpAddr,
        public: IpAddr,
    },
    /// A label's traffic in one connection direction (`reply`: the responder's packets).
    LabelDir {
        label: u32,
        reply: bool,
    },
    Other,
}

/// What part of a named tunnel's traffic a record is: on the wire (ESP, AH, ESP in UDP,
/// IKE, NAT-keepalive) or inside it (decrypted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    Esp,
    Ah,
    /// ESP inside UDP (RFC 3948 section 2.1), keyed by SPI.
    EspInUdp,
    /// IKE (UDP 500, or UDP 4500 behind a non-ESP marker, RFC 3948 section 2.2).
    Ike,
    /// NAT-keepalives (RFC 3948 section 2.3): one octet 0xFF in UDP 4500.
    NatKeepalive,
    /// Decrypted traffic (matched by the connection's traffic selectors).
    Inner,
}

/// IKE's ports: 500, and 4500 once NAT traversal floats to it (RFC 7296 section 2.23).
pub const IKE_PORTS: [u16; 2] = [500, 4500];

impl Part {
    pub const ALL: [Part; 6] = [
        Part::Esp,
        Part::Ah,
        Part::EspInUdp,
        Part::Ike,
        Part::NatKeepalive,
        Part::Inner,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Part::Esp => "esp",
            Part::Ah => "ah",
            Part::EspInUdp => "esp-in-udp",
            Part::Ike => "ike",
            Part::NatKeepalive => "nat-keepalive",
            Part::Inner => "inner",
        }
    }

    pub fn parse(s: &str) -> Option<Part> {
        Part::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Whether the part carries an SPI (one row per security association).
    pub fn has_spi(self) -> bool {
        matches!(self, Part::Esp | Part::Ah | Part::EspInUdp)
    }

    /// Whether the part is traffic on the wire (everything but [`Part::Inner`]).
    pub fn is_wire(self) -> bool {
        self != Part::Inner
    }

    /// The part of a record of a named tunnel. UDP without an SPI on an IKE port is IKE,
    /// or NAT-keepalives when every packet has the keepalive's size (IP header, 8 octets
    /// of UDP header and the one octet 0xFF: 29 octets over IPv4, 49 over IPv6); an IKE
    /// message is never that short (its header alone is 28 octets, RFC 7296 section 3.1),
    /// and exporters that tell the two apart (labelflow-probe does) keep them in separate
    /// flows. Anything else is the decrypted traffic.
    pub fn of(f: &Flow) -> Part {
        match (f.protocol, f.spi) {
            (50, _) => Part::Esp,
            (51, _) => Part::Ah,
            (17, Some(_)) => Part::EspInUdp,
            (17, None) if IKE_PORTS.contains(&f.src_port) || IKE_PORTS.contains(&f.dst_port) => {
                let size = if f.src.is_ipv4() { 29 } else { 49 };
                if f.packets != 0 && f.bytes == f.packets.saturating_mul(size) {
                    Part::NatKeepalive
                } else {
                    Part::Ike
                }
            }
            _ => Part::Inner,
        }
    }
}

/// The text key of a named tunnel's part: `NAME [PART]`, or `NAME [PART 0xSPI]` for an SA.
pub fn conn_key_text(name: &str, part: Part, spi: u32) -> String {
    if part.has_spi() {
        format!("{name} [{} 0x{spi:08x}]", part.name())
    } else {
        format!("{name} [{}]", part.name())
    }
}

/// The tunnel key a stored text key stands for: `(connection, part, spi)`. Named tunnels'
/// keys ([`conn_key_text`]) give their connection; the per-SA keys of unnamed ESP, AH
/// and ESP in UDP (`[TUNNEL: ]esp SRC>DST spi 0xSPI`) are a connection of their own with
/// that SA; anything else (configured tunnels' inner traffic, `other`) is a connection
/// with `None` as its part.
pub fn parse_tunnel_key(key: &str) -> (&str, Option<Part>, Option<u32>) {
    let hex = |s: &str| u32::from_str_radix(s.strip_prefix("0x")?, 16).ok();
    if let Some(body) = key.strip_suffix(']') {
        if let Some((name, inside)) = body.rsplit_once(" [") {
            let (part, spi) = match inside.split_once(' ') {
                Some((p, s)) => (Part::parse(p), hex(s)),
                None => (Part::parse(inside), None),
            };
            if let Some(part) = part {
                if part.has_spi() == spi.is_some() {
                    return (name, Some(part), spi);
                }
            }
        }
    }
    let words: Vec<&str> = key.rsplit(' ').take(4).collect();
    if let [spi, "spi", ends, part] = words[..] {
        let part = match part {
            "esp" => Some(Part::Esp),
            "ah" => Some(Part::Ah),
            "esp-in-udp" => Some(Part::EspInUdp),
            _ => None,
        };
        if let (Some(part), Some(spi), true) = (part, hex(spi), ends.contains('>')) {
            return (key, Some(part), Some(spi));
        }
    }
    (key, None, None)
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
    /// The tunnel the exporter named, interned by
    /// [`Aggregator::tunnel_id`](super::Aggregator::tunnel_id).
    pub tunnel: Option<u32>,
    pub bytes: u64,
    pub packets: u64,
    pub sampling: u32,
    pub start_ms: u64,
    pub end_ms: u64,
    /// The translation the record shows, (inside, public), from a connection-tracking
    /// exporter's post-NAT elements ([`FlowRecord::nat_pair`]).
    pub nat: Option<(IpAddr, IpAddr)>,
    /// The connection direction of a connection-tracking record: `Some(true)` for the
    /// responder's packets (RFC 5103 `biflowDirection` 2), `Some(false)` for the
    /// initiator's (1).
    pub reply: Option<bool>,
}

impl Flow {
    /// The record's flow; its tunnel name, which needs the aggregator's interning, is left
    /// `None` ([`Aggregator::add`](super::Aggregator::add) sets it).
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
            tunnel: None,
            bytes: rec.bytes,
            packets: rec.packets,
            sampling: rec.sampling_interval,
            start_ms: rec.start_ms,
            end_ms: rec.end_ms,
            nat: rec.nat_pair(),
            reply: rec.conntrack.and_then(|c| match c.direction {
                BiflowDirection::Initiator => Some(false),
                BiflowDirection::ReverseInitiator => Some(true),
                _ => None,
            }),
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
