//! Packet decode: from the bytes a packet source hands over (starting at the IP header) to the
//! fields a flow is keyed and counted by.
//!
//! ```text
//!  payload ──► IPv4 header (options skipped, fragment offset)  ──┐
//!          └─► IPv6 header ─► extension headers (RFC 8200 §4) ──┴─► transport: ports / ICMP type,code / SPI
//! ```
//!
//! Zero-copy and panic-free: every read goes through bounds-checked accessors over the borrowed
//! slice; nothing is allocated.
//!
//! # What is counted, and what is a decode error
//! * The byte count is the IP header's own length (IPv4 total length; IPv6 payload length + 40,
//!   or the Jumbo Payload option of RFC 2675 + 40), never the captured length: NFLOG copies
//!   only the first bytes of each packet. This is also what iptables counts.
//! * Only a packet whose IP header cannot be used (no version, addresses cut off, header length
//!   below the minimum, a total length shorter than the header) is a [`DecodeError`]. The kernel
//!   drops those before any netfilter hook (`ip_rcv_core`), so they are rare and counted apart.
//! * Everything after the IP header is best effort. When the transport header lies beyond the
//!   captured bytes (copy range too small, long IPv6 extension chains) or beyond the packet's own
//!   length (a malformed packet the kernel may still log at PREROUTING), the packet is **counted
//!   in a flow keyed without ports** (like a later fragment) and the reason is reported in
//!   [`Decoded::partial`]. Dropping it instead would make the exported totals disagree with the
//!   kernel's rule counters.
//! * Fragments (RFC 791 §3.2, RFC 8200 §4.5): the first fragment carries the transport header and
//!   is keyed with ports; later fragments (offset != 0) are keyed without ports, protocol taken
//!   from the IP header (IPv4) or the Fragment header's Next Header (IPv6).
//! * UDP on a NAT traversal port (RFC 3948, default 4500) is ESP when its payload opens with a
//!   non-zero SPI (keyed by ports and SPI), IKE behind the zero non-ESP marker, and a
//!   NAT-keepalive when it is the single octet 0xFF; UDP on an IKE port (default 500) is IKE.
//!   See [`UdpIpsec`].
//! * ESP (RFC 4303 §2.1) and AH (RFC 4302 §2.4): the SPI is the key; decode stops there, so an
//!   AH-protected packet is keyed as protocol 51 with its SPI, not by the protected payload.
//!
//! ```
//! use labelflow_probe::decode::{decode, Transport};
//! use labelflow_probe::packet::L3;
//! let pkt = [
//!     0x45, 0x00, 0x00, 0x1c, // v4, IHL 5, ToS 0, total length 28
//!     0x00, 0x00, 0x00, 0x00, // id, flags, fragment offset 0
//!     0x40, 0x11, 0x00, 0x00, // TTL 64, UDP, checksum
//!     10, 0, 0, 1, 10, 0, 0, 2, // src, dst
//!     0x30, 0x39, 0x00, 0x35, // ports 12345 -> 53
//! ];
//! let d = decode(L3::Unknown, &pkt).unwrap();
//! assert_eq!(d.transport, Transport::Ports { src: 12345, dst: 53 });
//! assert_eq!(d.length, 28);
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::packet::L3;

/// IANA protocol numbers the decoder looks into.
pub mod proto {
    pub const HOPOPT: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6_ROUTE: u8 = 43;
    pub const IPV6_FRAG: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const IPV6_NONXT: u8 = 59;
    pub const IPV6_OPTS: u8 = 60;
    pub const SCTP: u8 = 132;
    pub const MOBILITY: u8 = 135;
    pub const UDPLITE: u8 = 136;
    pub const HIP: u8 = 139;
    pub const SHIM6: u8 = 140;
    /// RFC 3692 experimentation and testing numbers, which RFC 7045 §2 lists as extension
    /// headers.
    pub const EXP1: u8 = 253;
    pub const EXP2: u8 = 254;
}

/// TCP flag bits (RFC 9293 §3.1), as OR-ed into `tcpControlBits`.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

const IPV4_MIN_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;

/// IP version of a decoded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    V4,
    V6,
}

impl IpVersion {
    pub fn number(self) -> u8 {
        match self {
            IpVersion::V4 => 4,
            IpVersion::V6 => 6,
        }
    }
}

/// What of the transport header is part of the flow key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// No ports: another protocol, a later fragment, or a header that was not captured.
    None,
    /// TCP, UDP, SCTP, UDP-lite.
    Ports { src: u16, dst: u16 },
    /// ICMP / ICMPv6 type and code.
    Icmp { kind: u8, code: u8 },
    /// ESP / AH security parameter index.
    Spi(u32),
    /// UDP on an IKE or NAT traversal port, with what its payload is (RFC 3948 §2).
    UdpIpsec { src: u16, dst: u16, kind: UdpIpsec },
}

/// What a UDP datagram on an IKE or NAT-T port carries. Each is its own flow class, so the
/// key exchange and the keepalives are counted apart from the ESP traffic they serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UdpIpsec {
    /// UDP-encapsulated ESP (RFC 3948 §2.1): the payload opens with a non-zero SPI.
    Esp(u32),
    /// IKE: on a NAT-T port behind the four-octet zero non-ESP marker (RFC 3948 §2.2), or any
    /// datagram on an IKE port (RFC 7296 §2).
    Ike,
    /// NAT-keepalive (RFC 3948 §2.3): a one-octet payload of 0xFF.
    NatKeepalive,
}

/// The UDP ports decoded as IPsec: NAT traversal (RFC 3948, default 4500) and IKE
/// (RFC 7296, default 500), at most [`IpsecPorts::MAX`] of each; 0 marks an unused place. A
/// datagram is classified when either of its ports is listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpsecPorts {
    pub natt: [u16; IpsecPorts::MAX],
    pub ike: [u16; IpsecPorts::MAX],
}

/// Default NAT traversal port (RFC 3948 §1).
pub const NATT_PORT: u16 = 4500;
/// Default IKE port (RFC 7296 §2).
pub const IKE_PORT: u16 = 500;

impl Default for IpsecPorts {
    fn default() -> Self {
        IpsecPorts::DEFAULT
    }
}

impl IpsecPorts {
    /// Ports of each kind at most.
    pub const MAX: usize = 4;
    /// NAT-T on 4500, IKE on 500.
    pub const DEFAULT: IpsecPorts = IpsecPorts {
        natt: [NATT_PORT, 0, 0, 0],
        ike: [IKE_PORT, 0, 0, 0],
    };
    /// No port is decoded as IPsec.
    pub const NONE: IpsecPorts = IpsecPorts {
        natt: [0; IpsecPorts::MAX],
        ike: [0; IpsecPorts::MAX],
    };

    /// Ports from lists; `None` when a list is longer than [`IpsecPorts::MAX`] or holds 0.
    pub fn new(natt: &[u16], ike: &[u16]) -> Option<IpsecPorts> {
        let fill = |list: &[u16]| {
            let mut a = [0u16; IpsecPorts::MAX];
            if list.len() > IpsecPorts::MAX || list.contains(&0) {
                return None;
            }
            a[..list.len()].copy_from_slice(list);
            Some(a)
        };
        Some(IpsecPorts {
            natt: fill(natt)?,
            ike: fill(ike)?,
        })
    }

    /// Classifies a UDP datagram `l4` (header and payload as far as captured) between ports
    /// `src` and `dst`; `None` for plain UDP.
    fn classify(&self, src: u16, dst: u16, l4: &[u8]) -> Option<UdpIpsec> {
        let on =
            |set: &[u16; IpsecPorts::MAX]| set.iter().any(|&p| p != 0 && (p == src || p == dst));
        if on(&self.natt) {
            // The UDP length field (RFC 768) tells the payload size even when the payload
            // was not captured whole.
            let udp_len = be16(l4, 4)?;
            if udp_len == 9 && l4.get(8) == Some(&0xff) {
                return Some(UdpIpsec::NatKeepalive);
            }
            return match be32(l4, 8)? {
                0 => Some(UdpIpsec::Ike),
                spi => Some(UdpIpsec::Esp(spi)),
            };
        }
        on(&self.ike).then_some(UdpIpsec::Ike)
    }
}

/// Where a packet stands in IP fragmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fragment {
    /// Not fragmented.
    None,
    /// Offset 0 with more fragments to come: carries the transport header.
    First,
    /// Offset != 0: no transport header.
    Later,
}

/// Why a decoded packet is keyed with less than its full transport information. The packet is
/// still counted; sources raise their copy range when `*NotCaptured` counts grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Partial {
    /// The transport header (ports, ICMP type, SPI) lies beyond the captured bytes.
    TransportNotCaptured,
    /// The transport header lies beyond the packet's own length (malformed packet).
    TransportBeyondPacket,
    /// TCP ports were captured but not the flags byte: flags count as 0 (FIN/RST unseen).
    TcpFlagsNotCaptured,
    /// The IPv6 extension header chain runs past the captured bytes; the protocol is the last
    /// Next Header value read.
    ExtHeadersNotCaptured,
    /// The IPv6 extension header chain runs past the packet's own length.
    ExtHeadersBeyondPacket,
}

impl Partial {
    pub const COUNT: usize = 5;
    pub const ALL: [Partial; Partial::COUNT] = [
        Partial::TransportNotCaptured,
        Partial::TransportBeyondPacket,
        Partial::TcpFlagsNotCaptured,
        Partial::ExtHeadersNotCaptured,
        Partial::ExtHeadersBeyondPacket,
    ];

    /// Dense index for per-reason counters.
    pub fn index(self) -> usize {
        match self {
            Partial::TransportNotCaptured => 0,
            Partial::TransportBeyondPacket => 1,
            Partial::TcpFlagsNotCaptured => 2,
            Partial::ExtHeadersNotCaptured => 3,
            Partial::ExtHeadersBeyondPacket => 4,
        }
    }

    /// `snake_case` name for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Partial::TransportNotCaptured => "transport_not_captured",
            Partial::TransportBeyondPacket => "transport_beyond_packet",
            Partial::TcpFlagsNotCaptured => "tcp_flags_not_captured",
            Partial::ExtHeadersNotCaptured => "ext_headers_not_captured",
            Partial::ExtHeadersBeyondPacket => "ext_headers_beyond_packet",
        }
    }
}

/// A payload whose IP header cannot be used. The packet is skipped and counted by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("IP version {0} is neither 4 nor 6")]
    UnknownVersion(u8),
    #[error("IP version {found} where the source announced IPv{expected}")]
    VersionMismatch { expected: u8, found: u8 },
    #[error("IPv{version} header truncated: need {need} bytes, have {have}")]
    HeaderTruncated { version: u8, need: u8, have: u8 },
    #[error("IPv4 header length of {ihl} words is below the minimum of 5")]
    BadHeaderLength { ihl: u8 },
    #[error("IPv4 total length {total} is shorter than its {header}-byte header")]
    BadTotalLength { total: u16, header: u8 },
}

/// Field-less reason of a [`DecodeError`], for per-reason counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeErrorKind {
    Empty,
    UnknownVersion,
    VersionMismatch,
    HeaderTruncated,
    BadHeaderLength,
    BadTotalLength,
}

impl DecodeErrorKind {
    pub const COUNT: usize = 6;
    pub const ALL: [DecodeErrorKind; DecodeErrorKind::COUNT] = [
        DecodeErrorKind::Empty,
        DecodeErrorKind::UnknownVersion,
        DecodeErrorKind::VersionMismatch,
        DecodeErrorKind::HeaderTruncated,
        DecodeErrorKind::BadHeaderLength,
        DecodeErrorKind::BadTotalLength,
    ];

    pub fn index(self) -> usize {
        match self {
            DecodeErrorKind::Empty => 0,
            DecodeErrorKind::UnknownVersion => 1,
            DecodeErrorKind::VersionMismatch => 2,
            DecodeErrorKind::HeaderTruncated => 3,
            DecodeErrorKind::BadHeaderLength => 4,
            DecodeErrorKind::BadTotalLength => 5,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DecodeErrorKind::Empty => "empty",
            DecodeErrorKind::UnknownVersion => "unknown_version",
            DecodeErrorKind::VersionMismatch => "version_mismatch",
            DecodeErrorKind::HeaderTruncated => "header_truncated",
            DecodeErrorKind::BadHeaderLength => "bad_header_length",
            DecodeErrorKind::BadTotalLength => "bad_total_length",
        }
    }
}

impl DecodeError {
    pub fn kind(&self) -> DecodeErrorKind {
        match self {
            DecodeError::Empty => DecodeErrorKind::Empty,
            DecodeError::UnknownVersion(_) => DecodeErrorKind::UnknownVersion,
            DecodeError::VersionMismatch { .. } => DecodeErrorKind::VersionMismatch,
            DecodeError::HeaderTruncated { .. } => DecodeErrorKind::HeaderTruncated,
            DecodeError::BadHeaderLength { .. } => DecodeErrorKind::BadHeaderLength,
            DecodeError::BadTotalLength { .. } => DecodeErrorKind::BadTotalLength,
        }
    }
}

/// The fields of one packet that flows are keyed and counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub version: IpVersion,
    /// Source address; an IPv4 address fills the first 4 bytes, the rest are zero.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Upper-layer protocol (after IPv6 extension headers), 50/51 for ESP/AH.
    pub protocol: u8,
    pub transport: Transport,
    /// TCP flags byte (CWR..FIN), 0 for other protocols.
    pub tcp_flags: u8,
    /// IPv4 ToS / IPv6 traffic class.
    pub tos: u8,
    /// Octets as the IP header counts them (see the module docs).
    pub length: u32,
    pub fragment: Fragment,
    /// Set when the packet is keyed with less than its transport header.
    pub partial: Option<Partial>,
}

impl Decoded {
    pub fn src_addr(&self) -> IpAddr {
        addr(self.version, &self.src)
    }
    pub fn dst_addr(&self) -> IpAddr {
        addr(self.version, &self.dst)
    }
}

pub(crate) fn addr(version: IpVersion, bytes: &[u8; 16]) -> IpAddr {
    match version {
        IpVersion::V4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        IpVersion::V6 => IpAddr::V6(Ipv6Addr::from(*bytes)),
    }
}

/// Decode one packet. `l3` is what the source knows of the network protocol; with
/// [`L3::Unknown`] the version nibble decides.
pub fn decode(l3: L3, payload: &[u8]) -> Result<Decoded, DecodeError> {
    decode_with(l3, payload, &IpsecPorts::DEFAULT)
}

/// [`decode`] with the UDP ports that carry IPsec (see [`IpsecPorts`]); [`decode`] uses
/// [`IpsecPorts::DEFAULT`].
pub fn decode_with(l3: L3, payload: &[u8], ports: &IpsecPorts) -> Result<Decoded, DecodeError> {
    let first = *payload.first().ok_or(DecodeError::Empty)?;
    let found = first >> 4;
    let expected = match l3 {
        L3::Ipv4 => Some(4),
        L3::Ipv6 => Some(6),
        L3::Unknown => None,
    };
    if let Some(expected) = expected {
        if expected != found {
            return Err(DecodeError::VersionMismatch { expected, found });
        }
    }
    match found {
        4 => decode_v4(payload, ports),
        6 => decode_v6(payload, ports),
        v => Err(DecodeError::UnknownVersion(v)),
    }
}

#[inline]
fn be16(data: &[u8], at: usize) -> Option<u16> {
    let b = data.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

#[inline]
fn be32(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn truncated(version: u8, need: usize, have: usize) -> DecodeError {
    DecodeError::HeaderTruncated {
        version,
        need: need.min(255) as u8,
        have: have.min(255) as u8,
    }
}

/// RFC 791 §3.1.
fn decode_v4(p: &[u8], ports: &IpsecPorts) -> Result<Decoded, DecodeError> {
    if p.len() < IPV4_MIN_HEADER {
        return Err(truncated(4, IPV4_MIN_HEADER, p.len()));
    }
    let ihl = p[0] & 0x0f;
    if ihl < 5 {
        return Err(DecodeError::BadHeaderLength { ihl });
    }
    let header = usize::from(ihl) * 4;
    let total = u16::from_be_bytes([p[2], p[3]]);
    if usize::from(total) < header {
        return Err(DecodeError::BadTotalLength {
            total,
            header: header as u8,
        });
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&p[12..16]);
    dst[..4].copy_from_slice(&p[16..20]);
    let protocol = p[9];
    // Flags (3 bits) and fragment offset (13 bits, in 8-octet units).
    let frag = u16::from_be_bytes([p[6], p[7]]);
    let more_fragments = frag & 0x2000 != 0;
    let fragment = match (frag & 0x1fff, more_fragments) {
        (0, false) => Fragment::None,
        (0, true) => Fragment::First,
        _ => Fragment::Later,
    };
    let mut d = Decoded {
        version: IpVersion::V4,
        src,
        dst,
        protocol,
        transport: Transport::None,
        tcp_flags: 0,
        tos: p[1],
        length: u32::from(total),
        fragment,
        partial: None,
    };
    if fragment != Fragment::Later {
        let end = p.len().min(usize::from(total));
        let cut_by_capture = p.len() < usize::from(total);
        let l4 = p.get(header..end).unwrap_or(&[]);
        transport(&mut d, l4, cut_by_capture, ports);
    }
    Ok(d)
}

/// RFC 8200 §3 and §4.
fn decode_v6(p: &[u8], ports: &IpsecPorts) -> Result<Decoded, DecodeError> {
    if p.len() < IPV6_HEADER {
        return Err(truncated(6, IPV6_HEADER, p.len()));
    }
    let tos = ((p[0] & 0x0f) << 4) | (p[1] >> 4);
    let payload_len = u16::from_be_bytes([p[4], p[5]]);
    let mut next = p[6];
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&p[8..24]);
    dst.copy_from_slice(&p[24..40]);
    // RFC 2675 §2: a zero Payload Length with a Hop-by-Hop header may announce a jumbogram;
    // without the option it is simply an empty payload.
    let packet_len: usize = if payload_len == 0 && next == proto::HOPOPT {
        match jumbo_length(p) {
            Some(j) => IPV6_HEADER.saturating_add(j as usize),
            None => IPV6_HEADER,
        }
    } else {
        IPV6_HEADER + usize::from(payload_len)
    };
    let end = p.len().min(packet_len);
    let cut_by_capture = p.len() < packet_len;
    let data = &p[..end];
    let mut d = Decoded {
        version: IpVersion::V6,
        src,
        dst,
        protocol: next,
        transport: Transport::None,
        tcp_flags: 0,
        tos,
        length: u32::try_from(packet_len).unwrap_or(u32::MAX),
        fragment: Fragment::None,
        partial: None,
    };
    let ext_cut = if cut_by_capture {
        Partial::ExtHeadersNotCaptured
    } else {
        Partial::ExtHeadersBeyondPacket
    };
    let mut off = IPV6_HEADER;
    loop {
        match next {
            proto::HOPOPT
            | proto::IPV6_ROUTE
            | proto::IPV6_OPTS
            | proto::MOBILITY
            | proto::HIP
            | proto::SHIM6
            | proto::EXP1
            | proto::EXP2 => {
                // RFC 8200 §4.3-4.6: Next Header, Hdr Ext Len in 8-octet units not counting
                // the first 8 octets. The whole header must be present to step over it.
                let (Some(&nh), Some(&units)) = (data.get(off), data.get(off + 1)) else {
                    d.protocol = next;
                    d.partial = Some(ext_cut);
                    return Ok(d);
                };
                let len = (usize::from(units) + 1) * 8;
                if off + len > data.len() {
                    d.protocol = next;
                    d.partial = Some(ext_cut);
                    return Ok(d);
                }
                next = nh;
                off += len;
            }
            proto::IPV6_FRAG => {
                // RFC 8200 §4.5: Next Header, Reserved, Fragment Offset (13 bits) | Res | M,
                // Identification: 8 octets.
                let (Some(&nh), Some(word)) = (data.get(off), be16(data, off + 2)) else {
                    d.protocol = next;
                    d.partial = Some(ext_cut);
                    return Ok(d);
                };
                if off + 8 > data.len() {
                    d.protocol = next;
                    d.partial = Some(ext_cut);
                    return Ok(d);
                }
                next = nh;
                off += 8;
                if word & 0xfff8 != 0 {
                    d.fragment = Fragment::Later;
                    d.protocol = next;
                    return Ok(d);
                }
                if word & 1 != 0 {
                    d.fragment = Fragment::First;
                }
            }
            _ => break,
        }
    }
    d.protocol = next;
    transport(
        &mut d,
        data.get(off..).unwrap_or(&[]),
        cut_by_capture,
        ports,
    );
    Ok(d)
}

/// Walks the Hop-by-Hop options (RFC 8200 §4.2) for a Jumbo Payload option (RFC 2675 §2:
/// type 0xC2, length 4, the packet length excluding the IPv6 header).
fn jumbo_length(p: &[u8]) -> Option<u32> {
    let units = *p.get(IPV6_HEADER + 1)?;
    let end = (IPV6_HEADER + (usize::from(units) + 1) * 8).min(p.len());
    let mut at = IPV6_HEADER + 2;
    while at < end {
        let kind = p[at];
        if kind == 0 {
            // Pad1 has no length byte.
            at += 1;
            continue;
        }
        let len = usize::from(*p.get(at + 1)?);
        if kind == 0xc2 && len == 4 && at + 6 <= end {
            return be32(p, at + 2);
        }
        at += 2 + len;
    }
    None
}

/// Fills the transport part of `d` from `l4`, the bytes after the IP headers up to the smaller
/// of the captured and the packet's length.
fn transport(d: &mut Decoded, l4: &[u8], cut_by_capture: bool, ports: &IpsecPorts) {
    let t = match d.protocol {
        proto::UDP => {
            be16(l4, 0)
                .zip(be16(l4, 2))
                .map(|(src, dst)| match ports.classify(src, dst, l4) {
                    Some(kind) => Transport::UdpIpsec { src, dst, kind },
                    None => Transport::Ports { src, dst },
                })
        }
        proto::TCP | proto::SCTP | proto::UDPLITE => be16(l4, 0)
            .zip(be16(l4, 2))
            .map(|(src, dst)| Transport::Ports { src, dst }),
        proto::ICMP | proto::ICMPV6 => l4.get(..2).map(|b| Transport::Icmp {
            kind: b[0],
            code: b[1],
        }),
        // RFC 4303 §2.1: the SPI opens the ESP header.
        proto::ESP => be32(l4, 0).map(Transport::Spi),
        // RFC 4302 §2: Next Header, Payload Len, Reserved (2), SPI.
        proto::AH => be32(l4, 4).map(Transport::Spi),
        _ => return,
    };
    match t {
        Some(t) => {
            d.transport = t;
            if d.protocol == proto::TCP {
                // RFC 9293 §3.1: the flags byte is octet 13 of the TCP header.
                match l4.get(13) {
                    Some(&flags) => d.tcp_flags = flags,
                    None => {
                        d.partial = Some(if cut_by_capture {
                            Partial::TcpFlagsNotCaptured
                        } else {
                            Partial::TransportBeyondPacket
                        })
                    }
                }
            }
        }
        None => {
            d.partial = Some(if cut_by_capture {
                Partial::TransportNotCaptured
            } else {
                Partial::TransportBeyondPacket
            })
        }
    }
}

#[cfg(test)]
mod tests;
