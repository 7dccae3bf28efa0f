//! Zero-copy views over what `nfnetlink_log` sends: netlink messages, the `nfgenmsg` header and
//! the `NFULA_*` attributes, plus the same attributes as the pcap `LINKTYPE_NFLOG` TLVs.
//!
//! ```text
//!  recv() buffer: [nlmsghdr | nfgenmsg | nlattr nlattr ...] [nlmsghdr | ...] ... [NLMSG_DONE]
//!                  16 bytes   4 bytes    4-byte aligned       NLMSG_ALIGN(nlmsg_len)
//! ```
//!
//! Netlink headers (`nlmsghdr`, `nlattr`) are in host byte order; `nfnetlink_log` puts every
//! attribute *value* in network byte order (`nla_put_be32`, `htons`). Nothing here allocates.

use crate::packet::{Hook, PacketMeta, L3};

/// `sizeof(struct nlmsghdr)`.
pub const NLMSG_HDR_LEN: usize = 16;
/// `sizeof(struct nfgenmsg)`.
pub const NFGENMSG_LEN: usize = 4;
/// `sizeof(struct nlattr)`.
pub const NLA_HDR_LEN: usize = 4;

pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_MULTI: u16 = 0x02;
pub const NLM_F_ACK: u16 = 0x04;

/// `NFNL_SUBSYS_ULOG`: the nfnetlink subsystem of `nfnetlink_log`.
pub const NFNL_SUBSYS_ULOG: u16 = 4;
/// `NFULNL_MSG_PACKET` / `NFULNL_MSG_CONFIG`.
pub const NFULNL_MSG_PACKET: u16 = 0;
pub const NFULNL_MSG_CONFIG: u16 = 1;
/// `nlmsg_type` of a logged packet: `(NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET`.
pub const NFLOG_PACKET_TYPE: u16 = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET;
/// `nlmsg_type` of a configuration request.
pub const NFLOG_CONFIG_TYPE: u16 = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;

/// `nla_type` flag bits, masked off before the type is compared (`NLA_TYPE_MASK`).
const NLA_F_NESTED: u16 = 0x8000;
const NLA_F_NET_BYTEORDER: u16 = 0x4000;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// Packet attributes (`enum nfulnl_attr_type`, include/uapi/linux/netfilter/nfnetlink_log.h).
/// The same numbers are the TLV types of pcap's `LINKTYPE_NFLOG`.
pub mod attr {
    pub const PACKET_HDR: u16 = 1;
    pub const MARK: u16 = 2;
    pub const TIMESTAMP: u16 = 3;
    pub const IFINDEX_INDEV: u16 = 4;
    pub const IFINDEX_OUTDEV: u16 = 5;
    pub const IFINDEX_PHYSINDEV: u16 = 6;
    pub const IFINDEX_PHYSOUTDEV: u16 = 7;
    pub const HWADDR: u16 = 8;
    pub const PAYLOAD: u16 = 9;
    pub const PREFIX: u16 = 10;
    pub const UID: u16 = 11;
    pub const SEQ: u16 = 12;
    pub const SEQ_GLOBAL: u16 = 13;
    pub const GID: u16 = 14;
}

/// `NFPROTO_*` / `AF_*` values seen in `nfgenmsg.nfgen_family` and `nflog_hdr.nflog_family`.
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

/// Ethertypes of `NFULA_PACKET_HDR.hw_protocol`, used when the family says neither v4 nor v6
/// (bridge and netdev families).
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

/// Kernel timestamps before this (2000-01-01) are not wall-clock: locally generated TCP
/// carries a `CLOCK_MONOTONIC` departure time in `skb->tstamp`, which `nfnetlink_log` reports
/// as if it were real time. Such values are dropped (the daemon then uses its own clock).
const MIN_WALL_CLOCK_SECS: u64 = 946_684_800;

/// Why a buffer or a message could not be walked. Cheap and matchable; `offset` is relative
/// to the buffer handed to the walker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("netlink message at offset {offset}: header needs {need} bytes, {have} left")]
    ShortHeader {
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error("netlink message at offset {offset}: length {len} out of range ({have} bytes left)")]
    BadMessageLength {
        offset: usize,
        len: usize,
        have: usize,
    },
    #[error("attribute at offset {offset}: length {len} out of range ({have} bytes left)")]
    BadAttributeLength {
        offset: usize,
        len: usize,
        have: usize,
    },
    #[error("attribute type {kind}: value of {len} bytes, expected {expected}")]
    BadAttributeValue {
        kind: u16,
        len: usize,
        expected: usize,
    },
    #[error("NFLOG record: header needs {need} bytes, {have} present")]
    ShortNflogHeader { need: usize, have: usize },
    #[error("NFLOG record: unknown header version {0}")]
    NflogVersion(u8),
}

#[inline]
fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[inline]
fn be32(v: &[u8], kind: u16) -> Result<u32, WireError> {
    match v {
        [a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(WireError::BadAttributeValue {
            kind,
            len: v.len(),
            expected: 4,
        }),
    }
}

/// One netlink message, borrowed from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NlMsg<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub portid: u32,
    /// Everything after the 16-byte header, up to `nlmsg_len`.
    pub body: &'a [u8],
}

/// Iterator over the netlink messages of one `recv()` datagram (`NLMSG_OK` / `NLMSG_NEXT`).
/// Stops after the first error.
#[derive(Debug, Clone)]
pub struct NlMsgIter<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> NlMsgIter<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        NlMsgIter {
            buf,
            pos: 0,
            failed: false,
        }
    }
}

impl<'a> Iterator for NlMsgIter<'a> {
    type Item = Result<NlMsg<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let offset = self.pos;
        let rest = &self.buf[offset..];
        let Some(hdr) = rest.get(..NLMSG_HDR_LEN) else {
            self.failed = true;
            return Some(Err(WireError::ShortHeader {
                offset,
                need: NLMSG_HDR_LEN,
                have: rest.len(),
            }));
        };
        let len = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        if len < NLMSG_HDR_LEN || len > rest.len() {
            self.failed = true;
            return Some(Err(WireError::BadMessageLength {
                offset,
                len,
                have: rest.len(),
            }));
        }
        let msg = NlMsg {
            kind: u16::from_ne_bytes([hdr[4], hdr[5]]),
            flags: u16::from_ne_bytes([hdr[6], hdr[7]]),
            seq: u32::from_ne_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]),
            portid: u32::from_ne_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]),
            body: &rest[NLMSG_HDR_LEN..len],
        };
        // The last message of a datagram may omit its alignment padding.
        self.pos = offset.saturating_add(align4(len)).min(self.buf.len());
        Some(Ok(msg))
    }
}

/// `struct nlmsgerr` as carried by `NLMSG_ERROR`: `error` is 0 for an acknowledgement, a
/// negative errno otherwise; followed by the header of the request it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NlAck {
    pub error: i32,
    /// `nlmsg_seq` of the request being answered.
    pub request_seq: u32,
    pub request_kind: u16,
}

impl NlAck {
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        let need = 4 + NLMSG_HDR_LEN;
        let Some(b) = body.get(..need) else {
            return Err(WireError::ShortHeader {
                offset: 0,
                need,
                have: body.len(),
            });
        };
        Ok(NlAck {
            error: i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            request_kind: u16::from_ne_bytes([b[8], b[9]]),
            request_seq: u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        })
    }
}

/// One attribute: type (flags masked off) and value (without padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    pub kind: u16,
    pub value: &'a [u8],
}

/// Byte order of the `length` / `type` fields of an attribute header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderOrder {
    /// Netlink: the host's order.
    Native,
    /// A pcap file written on a little-endian host.
    Little,
    /// A pcap file written on a big-endian host.
    Big,
}

impl HeaderOrder {
    #[inline]
    fn u16(self, b: [u8; 2]) -> u16 {
        match self {
            HeaderOrder::Native => u16::from_ne_bytes(b),
            HeaderOrder::Little => u16::from_le_bytes(b),
            HeaderOrder::Big => u16::from_be_bytes(b),
        }
    }
}

/// Iterator over `{u16 len, u16 type, value, pad to 4}` attributes: netlink `nlattr`s and pcap
/// NFLOG TLVs share this layout (`len` counts the 4-byte header, not the padding).
#[derive(Debug, Clone)]
pub struct AttrIter<'a> {
    buf: &'a [u8],
    pos: usize,
    order: HeaderOrder,
    failed: bool,
}

impl<'a> AttrIter<'a> {
    pub fn new(buf: &'a [u8], order: HeaderOrder) -> Self {
        AttrIter {
            buf,
            pos: 0,
            order,
            failed: false,
        }
    }

    /// Offset in the buffer of the attribute `next` returns.
    pub fn offset(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = Result<Attr<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        // Trailing bytes shorter than a header are padding (`nla_ok` stops there too).
        if rest.len() < NLA_HDR_LEN {
            return None;
        }
        let len = self.order.u16([rest[0], rest[1]]) as usize;
        let kind = self.order.u16([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDR_LEN || len > rest.len() {
            self.failed = true;
            return Some(Err(WireError::BadAttributeLength {
                offset: self.pos,
                len,
                have: rest.len(),
            }));
        }
        self.pos += align4(len);
        Some(Ok(Attr {
            kind,
            value: &rest[NLA_HDR_LEN..len],
        }))
    }
}

/// Fills `meta` from NFLOG packet attributes and returns the payload (empty when the packet
/// carried none, e.g. copy mode META). Unknown attributes are skipped; a malformed known one
/// is an error. `meta.group` and `meta.l3` must already hold the header's values; `l3` is
/// refined from `hw_protocol` when the family did not say.
pub fn fill_meta<'a>(
    attrs: AttrIter<'a>,
    meta: &mut PacketMeta<'a>,
) -> Result<&'a [u8], WireError> {
    let mut payload: &'a [u8] = &[];
    for a in attrs {
        let a = a?;
        let v = a.value;
        match a.kind {
            attr::PACKET_HDR => {
                // struct nfulnl_msg_packet_hdr { __be16 hw_protocol; __u8 hook; __u8 _pad; }
                let [p0, p1, hook, ..] = *v else {
                    return Err(WireError::BadAttributeValue {
                        kind: a.kind,
                        len: v.len(),
                        expected: 4,
                    });
                };
                meta.hook = Some(Hook::from_code(hook));
                if meta.l3 == L3::Unknown {
                    meta.l3 = match u16::from_be_bytes([p0, p1]) {
                        ETH_P_IP => L3::Ipv4,
                        ETH_P_IPV6 => L3::Ipv6,
                        _ => L3::Unknown,
                    };
                }
            }
            attr::MARK => meta.mark = be32(v, a.kind)?,
            attr::TIMESTAMP => {
                // struct nfulnl_msg_packet_timestamp { __aligned_be64 sec; __aligned_be64 usec; }
                let (Some(s), Some(u)) = (v.get(0..8), v.get(8..16)) else {
                    return Err(WireError::BadAttributeValue {
                        kind: a.kind,
                        len: v.len(),
                        expected: 16,
                    });
                };
                let sec = u64::from_be_bytes(s.try_into().unwrap_or([0; 8]));
                let usec = u64::from_be_bytes(u.try_into().unwrap_or([0; 8]));
                meta.timestamp_ms = (sec >= MIN_WALL_CLOCK_SECS)
                    .then(|| sec.saturating_mul(1000).saturating_add(usec / 1000));
            }
            attr::IFINDEX_INDEV => meta.ingress_if = be32(v, a.kind)?,
            attr::IFINDEX_OUTDEV => meta.egress_if = be32(v, a.kind)?,
            attr::IFINDEX_PHYSINDEV => meta.phys_ingress_if = be32(v, a.kind)?,
            attr::IFINDEX_PHYSOUTDEV => meta.phys_egress_if = be32(v, a.kind)?,
            attr::PAYLOAD => payload = v,
            attr::PREFIX => {
                // NUL-terminated string (`nla_put_string`); keep what precedes the first NUL.
                let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
                meta.prefix = &v[..end];
            }
            attr::UID => meta.uid = Some(be32(v, a.kind)?),
            attr::GID => meta.gid = Some(be32(v, a.kind)?),
            attr::SEQ => meta.seq = Some(be32(v, a.kind)?),
            _ => {}
        }
    }
    Ok(payload)
}

fn family_l3(family: u8) -> L3 {
    match family {
        NFPROTO_IPV4 => L3::Ipv4,
        NFPROTO_IPV6 => L3::Ipv6,
        _ => L3::Unknown,
    }
}

/// Parses the body of an `NFLOG_PACKET_TYPE` netlink message (`nfgenmsg` + attributes).
pub fn parse_packet_message(body: &[u8]) -> Result<(PacketMeta<'_>, &[u8]), WireError> {
    let Some(h) = body.get(..NFGENMSG_LEN) else {
        return Err(WireError::ShortHeader {
            offset: 0,
            need: NFGENMSG_LEN,
            have: body.len(),
        });
    };
    // struct nfgenmsg { __u8 nfgen_family; __u8 version; __be16 res_id; } — res_id = group.
    let mut meta = PacketMeta {
        group: u16::from_be_bytes([h[2], h[3]]),
        l3: family_l3(h[0]),
        ..PacketMeta::default()
    };
    let payload = fill_meta(
        AttrIter::new(&body[NFGENMSG_LEN..], HeaderOrder::Native),
        &mut meta,
    )?;
    Ok((meta, payload))
}

/// Parses one pcap `LINKTYPE_NFLOG` (239) record: `nflog_hdr {u8 family, u8 version, be16
/// resource_id}` then TLVs whose length and type are in the capture host's byte order
/// (`order`: the pcap file's), values as in netlink. The capture's timestamp is left to the
/// caller.
pub fn parse_pcap_nflog(
    record: &[u8],
    order: HeaderOrder,
) -> Result<(PacketMeta<'_>, &[u8]), WireError> {
    let Some(h) = record.get(..4) else {
        return Err(WireError::ShortNflogHeader {
            need: 4,
            have: record.len(),
        });
    };
    if h[1] != 0 {
        return Err(WireError::NflogVersion(h[1]));
    }
    let mut meta = PacketMeta {
        group: u16::from_be_bytes([h[2], h[3]]),
        l3: family_l3(h[0]),
        ..PacketMeta::default()
    };
    let payload = fill_meta(AttrIter::new(&record[4..], order), &mut meta)?;
    Ok((meta, payload))
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
