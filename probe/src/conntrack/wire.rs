//! Zero-copy views over ctnetlink messages (`nf_conntrack_netlink`), and the few requests the
//! source sends.
//!
//! ```text
//!  [nlmsghdr type (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_*] [nfgenmsg] [CTA_* ...]
//!   CTA_TUPLE_ORIG / CTA_TUPLE_REPLY { CTA_TUPLE_IP { CTA_IP_V4_SRC ... } CTA_TUPLE_PROTO { ... } }
//!   CTA_COUNTERS_ORIG / _REPLY { CTA_COUNTERS_PACKETS be64, CTA_COUNTERS_BYTES be64 }
//!   CTA_TIMESTAMP { CTA_TIMESTAMP_START be64 ns, CTA_TIMESTAMP_STOP be64 ns }
//!   CTA_PROTOINFO { CTA_PROTOINFO_TCP { CTA_PROTOINFO_TCP_STATE u8 } }
//!   CTA_STATUS be32, CTA_MARK be32, CTA_ID be32, CTA_ZONE be16
//! ```
//!
//! `netlink-packet-netfilter` 0.4 parses tuples, status, protoinfo, timeout and mark into
//! owned vectors, but neither counters, timestamps, zone nor id, and it allocates per message;
//! so the event path walks the attributes here, with the NFLOG source's [`AttrIter`] (values
//! in network byte order, `include/uapi/linux/netfilter/nfnetlink_conntrack.h`). Nothing here
//! allocates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::nflog::wire::{
    Attr, AttrIter, HeaderOrder, WireError, NFGENMSG_LEN, NLA_HDR_LEN, NLMSG_HDR_LEN, NLM_F_REQUEST,
};

/// `NFNL_SUBSYS_CTNETLINK`.
pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// `enum cntl_msg_types`.
pub const IPCTNL_MSG_CT_NEW: u16 = 0;
pub const IPCTNL_MSG_CT_GET: u16 = 1;
pub const IPCTNL_MSG_CT_DELETE: u16 = 2;
pub const IPCTNL_MSG_CT_GET_CTRZERO: u16 = 3;
/// `nlmsg_type` of NEW/UPDATE events and of dump and GET answers.
pub const CT_NEW_TYPE: u16 = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
/// `nlmsg_type` of DESTROY events.
pub const CT_DELETE_TYPE: u16 = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
/// `NLM_F_CREATE | NLM_F_EXCL` mark a NEW event (an UPDATE has neither).
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
/// `NLM_F_ROOT | NLM_F_MATCH`.
pub const NLM_F_DUMP: u16 = 0x300;

/// `enum nfnetlink_groups`: conntrack event multicast groups.
pub const NFNLGRP_CONNTRACK_NEW: u32 = 1;
pub const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;
pub const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

/// `enum ctattr_type`.
pub mod cta {
    pub const TUPLE_ORIG: u16 = 1;
    pub const TUPLE_REPLY: u16 = 2;
    pub const STATUS: u16 = 3;
    pub const PROTOINFO: u16 = 4;
    pub const MARK: u16 = 8;
    pub const COUNTERS_ORIG: u16 = 9;
    pub const COUNTERS_REPLY: u16 = 10;
    pub const ID: u16 = 12;
    pub const ZONE: u16 = 18;
    pub const TIMESTAMP: u16 = 20;
    // Nested: tuple, IP, protocol, counters, timestamp, protoinfo.
    pub const TUPLE_IP: u16 = 1;
    pub const TUPLE_PROTO: u16 = 2;
    pub const IP_V4_SRC: u16 = 1;
    pub const IP_V4_DST: u16 = 2;
    pub const IP_V6_SRC: u16 = 3;
    pub const IP_V6_DST: u16 = 4;
    pub const PROTO_NUM: u16 = 1;
    pub const PROTO_SRC_PORT: u16 = 2;
    pub const PROTO_DST_PORT: u16 = 3;
    pub const PROTO_ICMP_ID: u16 = 4;
    pub const PROTO_ICMP_TYPE: u16 = 5;
    pub const PROTO_ICMP_CODE: u16 = 6;
    pub const PROTO_ICMPV6_ID: u16 = 7;
    pub const PROTO_ICMPV6_TYPE: u16 = 8;
    pub const PROTO_ICMPV6_CODE: u16 = 9;
    pub const COUNTERS_PACKETS: u16 = 1;
    pub const COUNTERS_BYTES: u16 = 2;
    pub const TIMESTAMP_START: u16 = 1;
    pub const TIMESTAMP_STOP: u16 = 2;
    pub const PROTOINFO_TCP: u16 = 1;
    pub const PROTOINFO_TCP_STATE: u16 = 1;
}

/// What a ctnetlink message reports about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtEvent {
    /// A NEW event (`NLM_F_CREATE`).
    New,
    /// An UPDATE event, or an answer to a dump or GET.
    Update,
    /// A DESTROY event: the connection is gone, the counters are final.
    Destroy,
}

/// One direction of a connection: addresses, protocol, ports or ICMP type/code/id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// ICMP/ICMPv6 `type << 8 | code` (0 for other protocols).
    pub icmp_type_code: u16,
}

impl Default for Tuple {
    fn default() -> Self {
        Tuple {
            src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            protocol: 0,
            src_port: 0,
            dst_port: 0,
            icmp_type_code: 0,
        }
    }
}

/// Packets and bytes of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

/// One connection as a ctnetlink message describes it, borrowed from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtEntry<'a> {
    pub event: CtEvent,
    /// `nfgen_family`: 2 (IPv4) or 10 (IPv6).
    pub family: u8,
    pub orig: Tuple,
    pub reply: Tuple,
    /// The original tuple's attribute as received (header included), to name the
    /// connection in a request.
    pub orig_raw: &'a [u8],
    /// `None` when the connection has no accounting extension (`nf_conntrack_acct` was off
    /// when it was created) or the message does not carry them (NEW/UPDATE events).
    pub counters_orig: Option<Counters>,
    pub counters_reply: Option<Counters>,
    /// `CTA_TIMESTAMP` start and stop, nanoseconds since the epoch.
    pub start_ns: Option<u64>,
    pub stop_ns: Option<u64>,
    pub status: u32,
    pub mark: u32,
    pub zone: u16,
    pub id: u32,
    pub tcp_state: Option<u8>,
}

#[inline]
fn bad(kind: u16, len: usize, expected: usize) -> WireError {
    WireError::BadAttributeValue {
        kind,
        len,
        expected,
    }
}

#[inline]
fn be16(v: &[u8], kind: u16) -> Result<u16, WireError> {
    match *v {
        [a, b, ..] => Ok(u16::from_be_bytes([a, b])),
        _ => Err(bad(kind, v.len(), 2)),
    }
}

#[inline]
fn be32(v: &[u8], kind: u16) -> Result<u32, WireError> {
    match *v {
        [a, b, c, d, ..] => Ok(u32::from_be_bytes([a, b, c, d])),
        _ => Err(bad(kind, v.len(), 4)),
    }
}

#[inline]
fn be64(v: &[u8], kind: u16) -> Result<u64, WireError> {
    match v.get(..8) {
        Some(b) => Ok(u64::from_be_bytes(b.try_into().unwrap_or([0; 8]))),
        None => Err(bad(kind, v.len(), 8)),
    }
}

fn ip(v: &[u8], kind: u16) -> Result<IpAddr, WireError> {
    match v.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
        16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(v);
            Ok(IpAddr::V6(Ipv6Addr::from(b)))
        }
        n => Err(bad(kind, n, 4)),
    }
}

fn nested(v: &[u8]) -> AttrIter<'_> {
    AttrIter::new(v, HeaderOrder::Native)
}

fn parse_tuple(v: &[u8]) -> Result<Tuple, WireError> {
    let mut t = Tuple::default();
    let (mut icmp_type, mut icmp_code) = (0u8, 0u8);
    for a in nested(v) {
        let a = a?;
        match a.kind {
            cta::TUPLE_IP => {
                for ipa in nested(a.value) {
                    let ipa = ipa?;
                    match ipa.kind {
                        cta::IP_V4_SRC | cta::IP_V6_SRC => t.src = ip(ipa.value, ipa.kind)?,
                        cta::IP_V4_DST | cta::IP_V6_DST => t.dst = ip(ipa.value, ipa.kind)?,
                        _ => {}
                    }
                }
            }
            cta::TUPLE_PROTO => {
                for p in nested(a.value) {
                    let p = p?;
                    let u8_of = |p: &Attr<'_>| p.value.first().copied().ok_or(bad(p.kind, 0, 1));
                    match p.kind {
                        cta::PROTO_NUM => t.protocol = u8_of(&p)?,
                        cta::PROTO_SRC_PORT => t.src_port = be16(p.value, p.kind)?,
                        cta::PROTO_DST_PORT => t.dst_port = be16(p.value, p.kind)?,
                        cta::PROTO_ICMP_TYPE | cta::PROTO_ICMPV6_TYPE => icmp_type = u8_of(&p)?,
                        cta::PROTO_ICMP_CODE | cta::PROTO_ICMPV6_CODE => icmp_code = u8_of(&p)?,
                        // The ICMP id keys the connection but is not a flow field.
                        cta::PROTO_ICMP_ID | cta::PROTO_ICMPV6_ID => {}
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if matches!(t.protocol, 1 | 58) {
        t.icmp_type_code = u16::from_be_bytes([icmp_type, icmp_code]);
    }
    Ok(t)
}

fn parse_counters(v: &[u8]) -> Result<Counters, WireError> {
    let mut c = Counters::default();
    for a in nested(v) {
        let a = a?;
        match a.kind {
            cta::COUNTERS_PACKETS => c.packets = be64(a.value, a.kind)?,
            cta::COUNTERS_BYTES => c.bytes = be64(a.value, a.kind)?,
            _ => {}
        }
    }
    Ok(c)
}

/// Parses the body (after the netlink header) of a conntrack message of type `kind` with
/// header flags `flags`. `None` for messages of other types.
pub fn parse_entry(kind: u16, flags: u16, body: &[u8]) -> Result<Option<CtEntry<'_>>, WireError> {
    let event = match kind {
        CT_NEW_TYPE if flags & (NLM_F_CREATE | NLM_F_EXCL) != 0 => CtEvent::New,
        CT_NEW_TYPE => CtEvent::Update,
        CT_DELETE_TYPE => CtEvent::Destroy,
        _ => return Ok(None),
    };
    let Some(h) = body.get(..NFGENMSG_LEN) else {
        return Err(WireError::ShortHeader {
            offset: 0,
            need: NFGENMSG_LEN,
            have: body.len(),
        });
    };
    let mut e = CtEntry {
        event,
        family: h[0],
        orig: Tuple::default(),
        reply: Tuple::default(),
        orig_raw: &[],
        counters_orig: None,
        counters_reply: None,
        start_ns: None,
        stop_ns: None,
        status: 0,
        mark: 0,
        zone: 0,
        id: 0,
        tcp_state: None,
    };
    let attrs = &body[NFGENMSG_LEN..];
    let mut it = nested(attrs);
    loop {
        let at = it.offset();
        let Some(a) = it.next() else { break };
        let a = a?;
        let v = a.value;
        match a.kind {
            cta::TUPLE_ORIG => {
                e.orig = parse_tuple(v)?;
                let end = at + NLA_HDR_LEN + v.len();
                e.orig_raw = &attrs[at..end];
            }
            cta::TUPLE_REPLY => e.reply = parse_tuple(v)?,
            cta::STATUS => e.status = be32(v, a.kind)?,
            cta::MARK => e.mark = be32(v, a.kind)?,
            cta::ID => e.id = be32(v, a.kind)?,
            cta::ZONE => e.zone = be16(v, a.kind)?,
            cta::COUNTERS_ORIG => e.counters_orig = Some(parse_counters(v)?),
            cta::COUNTERS_REPLY => e.counters_reply = Some(parse_counters(v)?),
            cta::TIMESTAMP => {
                for t in nested(v) {
                    let t = t?;
                    match t.kind {
                        cta::TIMESTAMP_START => e.start_ns = Some(be64(t.value, t.kind)?),
                        cta::TIMESTAMP_STOP => e.stop_ns = Some(be64(t.value, t.kind)?),
                        _ => {}
                    }
                }
            }
            cta::PROTOINFO => {
                for p in nested(v) {
                    let p = p?;
                    if p.kind != cta::PROTOINFO_TCP {
                        continue;
                    }
                    for s in nested(p.value) {
                        let s = s?;
                        if s.kind == cta::PROTOINFO_TCP_STATE {
                            e.tcp_state = s.value.first().copied();
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Some(e))
}

/// Appends a request header (`nlmsghdr` + `nfgenmsg`) to `out`; returns where it starts, for
/// [`finish_request`].
fn begin_request(out: &mut Vec<u8>, msg: u16, flags: u16, seq: u32, family: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by finish_request
    out.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg).to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // portid: the kernel
                                                // struct nfgenmsg { u8 family; u8 version (NFNETLINK_V0); be16 res_id; }
    out.extend_from_slice(&[family, 0, 0, 0]);
    start
}

fn finish_request(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// A dump of the whole table (every family), without touching the counters.
pub fn dump_request(out: &mut Vec<u8>, seq: u32) {
    let start = begin_request(out, IPCTNL_MSG_CT_GET, NLM_F_DUMP, seq, 0);
    finish_request(out, start);
}

/// Reads and zeroes one connection's counters (`IPCTNL_MSG_CT_GET_CTRZERO` without
/// `NLM_F_DUMP`), naming it by its original tuple as the kernel sent it, and its zone.
///
/// One connection per request, not a zeroing dump: a dump zeroes an entry's counters before
/// it knows the entry fits the message (`dump_counters` in `nf_conntrack_netlink.c`), and an
/// entry that does not fit is sent again in the next message with counters already zeroed.
/// A single-entry answer is sized for its entry.
pub fn ctrzero_request(out: &mut Vec<u8>, seq: u32, family: u8, orig_raw: &[u8], zone: u16) {
    let start = begin_request(out, IPCTNL_MSG_CT_GET_CTRZERO, 0, seq, family);
    out.extend_from_slice(orig_raw);
    out.resize(start + align4(out.len() - start), 0);
    if zone != 0 {
        // nlattr { u16 len = 6; u16 type = CTA_ZONE; be16 zone; pad to 4 }
        out.extend_from_slice(&6u16.to_ne_bytes());
        out.extend_from_slice(&cta::ZONE.to_ne_bytes());
        out.extend_from_slice(&zone.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
    }
    finish_request(out, start);
}

#[inline]
fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Length of a netlink header, for callers sizing buffers.
pub const REQUEST_HEADER_LEN: usize = NLMSG_HDR_LEN + NFGENMSG_LEN;

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
