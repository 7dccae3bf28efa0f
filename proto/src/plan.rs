//! Compiled IPFIX flow templates: a template's field list turned once into a list of typed
//! operations, so that each data record is read with fixed steps instead of a per-field
//! dispatch on element ids.
//!
//! ```text
//!  Template ──FlowPlan::compile──► [Op; fields]        (None: the template needs RecordBuilder)
//!  data set body ──plan.check──► record count          (RFC 7011 section 3.3.1 padding rule)
//!                ──plan.decode──► FlowView<'datagram>  (strings borrowed, not yet cleaned)
//!                                   └─ to_record(ctx) ─► FlowRecord, equal to what
//!                                                         convert_ipfix_data_set gives
//! ```
//!
//! A plan covers the elements whose meaning does not depend on other records or on exporter
//! state beyond what [`FlowView::to_record`] applies (applicationId names and the
//! exporter-wide sampling interval, and the exporter's `systemInitTimeMilliseconds` that
//! anchors sysUpTime-relative times, IE 21/22). Templates with per-record sampling elements
//! or their own system init time (IE 34, 48, 50, 160, 302, 305, 306) or odd field lengths are
//! left to [`RecordBuilder`](crate::convert::RecordBuilder), which stays the reference: the
//! plan's rules are tested against it record by record.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::convert::{
    application_of, clean_text, ipfix_uptime_ms, ntp_ms, uptime_to_unix, ApplicationKey,
    ExporterContext,
};
use crate::ie::{iana, labelflow, netfilter, PEN_LABELFLOW, PEN_NETFILTER, PEN_REVERSE};
use crate::ipfix::{varlen_at, Template};
use crate::record::{BiflowDirection, ConnInfo, Direction, EndReason, FlowRecord};

/// `ctTcpState` of a record without TCP state (as the conntrack templates write it).
const NO_TCP_STATE: u64 = 0xff;

/// How a time element counts (IE 150–157); other elements are plain numbers or octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Milliseconds (IE 152/153), or not a time.
    Plain,
    /// Seconds (IE 150/151).
    Secs,
    /// NTP timestamps (IE 154–157, micro- and nanoseconds).
    Ntp,
}

/// One field of the template: the slot it sets (`None`: skipped), the unit of a time, and
/// its length (`None`: variable-length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Op {
    slot: Option<Slot>,
    unit: Unit,
    len: Option<u16>,
}

impl Op {
    fn unit(self, unit: Unit) -> Op {
        Op { unit, ..self }
    }
}

/// Where the field that sets a slot sits in a record: `fixed` octets of fixed-length fields
/// and `var` variable-length fields before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    fixed: u16,
    var: u8,
    len: Option<u16>,
    unit: Unit,
}

/// Number of [`Slot`]s.
const SLOTS: usize = Slot::RevPackets as usize + 1;

/// Variable-length fields a plan handles per record.
const MAX_VARLEN: usize = 8;

/// A flow template compiled for direct decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowPlan {
    /// For each slot, the last field that sets it: as in `RecordBuilder`, when a template
    /// repeats an element the later value wins.
    slots: [Option<Loc>; SLOTS],
    /// The `fixed` part of each variable-length field's position, in template order.
    varlen: Vec<u16>,
    /// Octets of all fixed-length fields.
    fixed_total: usize,
    /// Shortest record (variable-length fields counted as one octet).
    min_len: usize,
    /// Where the common IPv4 flow fields sit, when the template has them in their usual
    /// sizes before any variable-length field (see [`FlowView::ipv4`]).
    ipv4: Option<Ipv4Offsets>,
    /// Whether the template has connection-tracking elements.
    conntrack: bool,
    /// Fields in the template.
    fields: usize,
}

/// Fixed offsets of an IPv4 flow's fields, for [`FlowView::ipv4`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ipv4Offsets {
    src: u16,
    dst: u16,
    protocol: u16,
    src_port: u16,
    dst_port: u16,
    bytes: Counter,
    packets: Counter,
    times: Times,
    spi: Option<u16>,
}

/// Where a delta counter sits: eight octets (labelflow, nfdump, pmacct) or four (softflowd,
/// many routers: RFC 7011 section 6.2 reduced-size encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counter {
    Wide(u16),
    Narrow(u16),
}

/// Where the flow's times sit, and how they count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Times {
    /// flowStartMilliseconds / flowEndMilliseconds, eight octets each.
    Millis { start: u16, end: u16 },
    /// flowStartSysUpTime / flowEndSysUpTime, four octets each, with no absolute time in
    /// the template (which would win over them).
    Uptime { start: u16, end: u16 },
}

/// The fields of an IPv4 flow record that aggregation reads, as [`FlowView`]'s accessors
/// give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Flow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub bytes: u64,
    pub packets: u64,
    /// Milliseconds since the UNIX epoch, start <= end.
    pub start_ms: u64,
    pub end_ms: u64,
    pub ipsec_spi: Option<u32>,
}

/// The positions of one record's variable-length fields.
#[derive(Debug, Clone, Copy, Default)]
struct Layout {
    /// `extra[j]`: octets of the first `j` variable-length fields, prefixes included (a
    /// checked record is shorter than a 65535-octet message).
    extra: [u16; MAX_VARLEN + 1],
    /// Each variable-length field's (prefix octets, value octets).
    fields: [(u8, u16); MAX_VARLEN],
}

/// Why a data set body does not split into whole records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// One data record of a compiled template, read lazily: each accessor reads its field from
/// the message when asked, by the rules `RecordBuilder` applies (without per-record
/// sampling, which a plan never has). Meanings as in [`FlowRecord`]; strings are
/// the raw octets, cleaned by [`FlowView::to_record`].
#[derive(Debug, Clone, Copy)]
pub struct FlowView<'a> {
    plan: &'a FlowPlan,
    rec: &'a [u8],
    lay: Layout,
    domain: u32,
    export_ms: u64,
    /// What places sysUpTime-relative times.
    anchor: Anchor,
}

/// The clock of the message a data set came in: its export time, and for NetFlow v9 the
/// exporter's uptime at export (RFC 3954 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportClock {
    pub export_secs: u32,
    pub sys_uptime_ms: Option<u32>,
}

/// What places a sysUpTime-relative time: the v9 header's uptime, else the exporter's
/// announced `systemInitTimeMilliseconds` (IPFIX IE 160), else nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Anchor {
    Header(u32),
    Init(u64),
    None,
}

impl Anchor {
    /// Wall-clock milliseconds of uptime `up`, as `RecordBuilder` places it.
    #[inline]
    fn place(self, up: u64, export_ms: u64) -> Option<u64> {
        match self {
            Anchor::Header(sys) => Some(uptime_to_unix(export_ms, sys, up as u32)),
            Anchor::Init(init) => Some(ipfix_uptime_ms(init, up, export_ms)),
            Anchor::None => None,
        }
    }
}

impl<'a> FlowView<'a> {
    /// The octets of the field that sets `slot`, with its unit.
    #[inline]
    fn get(&self, slot: Slot) -> Option<(Unit, &'a [u8])> {
        let loc = self.plan.slots[slot as usize]?;
        let at = usize::from(loc.fixed) + usize::from(self.lay.extra[usize::from(loc.var)]);
        let value = match loc.len {
            Some(n) => self.rec.get(at..at + usize::from(n))?,
            None => {
                let (head, n) = self.lay.fields[usize::from(loc.var)];
                let start = at + usize::from(head);
                self.rec.get(start..start + usize::from(n))?
            }
        };
        Some((loc.unit, value))
    }

    #[inline]
    fn raw(&self, slot: Slot) -> Option<&'a [u8]> {
        self.get(slot).map(|(_, v)| v)
    }

    #[inline]
    fn num(&self, slot: Slot) -> Option<u64> {
        self.raw(slot).map(be)
    }

    #[inline]
    fn addr(&self, v4: Slot, v6: Slot) -> IpAddr {
        if let Some(a) = self.raw(v4) {
            return IpAddr::V4(Ipv4Addr::from(be(a) as u32));
        }
        match self.raw(v6).and_then(|a| <[u8; 16]>::try_from(a).ok()) {
            Some(a) => IpAddr::V6(Ipv6Addr::from(a)),
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }

    #[inline]
    fn time(&self, slot: Slot) -> Option<u64> {
        self.get(slot).map(|(unit, v)| match unit {
            Unit::Secs => be(v).saturating_mul(1000),
            Unit::Ntp => ntp(v),
            Unit::Plain => be(v),
        })
    }

    /// The common IPv4 flow fields in one read at fixed offsets, when the template allows
    /// it (`None` otherwise: use the accessors). Equal to what the accessors give.
    #[inline]
    pub fn ipv4(&self) -> Option<Ipv4Flow> {
        let o = self.plan.ipv4?;
        let rec = self.rec;
        let b = |at: u16, n: usize| rec.get(usize::from(at)..usize::from(at) + n);
        let u16_at = |at| b(at, 2).map(|v| u16::from_be_bytes([v[0], v[1]]));
        let u32_at = |at| b(at, 4).map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
        let u64_at = |at| b(at, 8).map(|v| u64::from_be_bytes(v.try_into().unwrap_or([0; 8])));
        let counter = |c| match c {
            Counter::Wide(at) => u64_at(at),
            Counter::Narrow(at) => u32_at(at).map(u64::from),
        };
        let (start, end) = match o.times {
            Times::Millis { start, end } => (u64_at(start)?, u64_at(end)?),
            Times::Uptime { start, end } => {
                let up = (u64::from(u32_at(start)?), u64::from(u32_at(end)?));
                resolve_times(
                    self.anchor,
                    self.export_ms,
                    (None, None),
                    (Some(up.0), Some(up.1)),
                )
            }
        };
        Some(Ipv4Flow {
            src: Ipv4Addr::from(u32_at(o.src)?),
            dst: Ipv4Addr::from(u32_at(o.dst)?),
            protocol: *rec.get(usize::from(o.protocol))?,
            src_port: u16_at(o.src_port)?,
            dst_port: u16_at(o.dst_port)?,
            bytes: counter(o.bytes)?,
            packets: counter(o.packets)?,
            start_ms: start.min(end),
            end_ms: start.max(end),
            // SPI 0 is reserved (RFC 4303 section 2.1): "none" from a one-template exporter.
            ipsec_spi: match o.spi {
                Some(at) => Some(u32_at(at)?).filter(|s| *s != 0),
                None => None,
            },
        })
    }

    #[inline]
    pub fn observation_domain(&self) -> u32 {
        self.domain
    }

    #[inline]
    pub fn group(&self) -> Option<u32> {
        self.num(Slot::Group).map(|g| g as u32)
    }

    /// Raw `applicationName` octets.
    #[inline]
    pub fn label(&self) -> Option<&'a [u8]> {
        self.raw(Slot::Label)
    }

    /// Raw tunnel-name octets (labelflow's `tunnelName`, PEN 32473 id 1).
    #[inline]
    pub fn tunnel(&self) -> Option<&'a [u8]> {
        self.raw(Slot::Tunnel)
    }

    #[inline]
    pub fn application(&self) -> Option<ApplicationKey> {
        self.raw(Slot::Application).and_then(application_of)
    }

    #[inline]
    pub fn src_addr(&self) -> IpAddr {
        self.addr(Slot::Src4, Slot::Src6)
    }

    #[inline]
    pub fn dst_addr(&self) -> IpAddr {
        self.addr(Slot::Dst4, Slot::Dst6)
    }

    #[inline]
    pub fn protocol(&self) -> u8 {
        self.num(Slot::Protocol).unwrap_or(0) as u8
    }

    /// Source and destination port as the record carries them (for ICMP, see
    /// [`FlowView::ports`]).
    #[inline]
    pub fn transport_ports(&self) -> (u16, u16) {
        (
            self.num(Slot::SrcPort).unwrap_or(0) as u16,
            self.num(Slot::DstPort).unwrap_or(0) as u16,
        )
    }

    /// Source port, destination port and ICMP type/code, after the rule that some
    /// exporters put ICMP type/code in the destination port.
    #[inline]
    pub fn ports(&self) -> (u16, u16, u16) {
        let (src, mut dst) = self.transport_ports();
        let mut icmp = self.num(Slot::IcmpTypeCode).unwrap_or(0) as u16;
        let (t, c) = (self.num(Slot::IcmpType), self.num(Slot::IcmpCode));
        if icmp == 0 && (t.is_some() || c.is_some()) {
            icmp = u16::from(t.unwrap_or(0) as u8) << 8 | u16::from(c.unwrap_or(0) as u8);
        }
        if matches!(self.protocol(), 1 | 58) && icmp == 0 && src == 0 {
            icmp = dst;
            dst = 0;
        }
        (src, dst, icmp)
    }

    #[inline]
    /// The SPI; `None` for 0, which RFC 4303 section 2.1 reserves and one-template exporters
    /// send for "no SPI".
    pub fn ipsec_spi(&self) -> Option<u32> {
        self.num(Slot::Spi).map(|v| v as u32).filter(|s| *s != 0)
    }

    #[inline]
    pub fn interfaces(&self) -> (u32, u32) {
        (
            self.num(Slot::IngressIf).unwrap_or(0) as u32,
            self.num(Slot::EgressIf).unwrap_or(0) as u32,
        )
    }

    /// Octets: the delta count, else the total count.
    #[inline]
    pub fn bytes(&self) -> u64 {
        self.num(Slot::DeltaBytes)
            .or_else(|| self.num(Slot::TotalBytes))
            .unwrap_or(0)
    }

    #[inline]
    pub fn packets(&self) -> u64 {
        self.num(Slot::DeltaPackets)
            .or_else(|| self.num(Slot::TotalPackets))
            .unwrap_or(0)
    }

    /// (start, end) in milliseconds since the UNIX epoch: absolute times first, then
    /// sysUpTime-relative ones placed by the exporter's system init time; a missing end is
    /// the export time, a missing start the end; swapped when reversed. Without a system
    /// init time, uptime-relative times keep their duration, ending at the end.
    #[inline]
    pub fn times(&self) -> (u64, u64) {
        resolve_times(
            self.anchor,
            self.export_ms,
            (self.time(Slot::Start), self.time(Slot::End)),
            (self.num(Slot::StartUp), self.num(Slot::EndUp)),
        )
    }

    /// The label this record carries itself (`applicationName`, cleaned, non-empty), else
    /// the name the exporter's options gave its `applicationId`.
    fn label_text(&self, ctx: &ExporterContext) -> Option<String> {
        self.label()
            .map(clean_text)
            .filter(|s| !s.is_empty())
            .or_else(|| {
                self.application()
                    .and_then(|a| ctx.applications.get(&a).cloned())
            })
    }

    /// The record as [`crate::convert::convert_ipfix_data_set`] would give it.
    pub fn to_record(&self, ctx: &ExporterContext) -> FlowRecord {
        let text = |s: Option<&[u8]>| s.map(clean_text).filter(|s| !s.is_empty());
        let (src_port, dst_port, icmp_type_code) = self.ports();
        let (ingress_if, egress_if) = self.interfaces();
        let (start_ms, end_ms) = self.times();
        let mut rec = FlowRecord {
            observation_domain: self.domain,
            group: self.group(),
            label: self.label_text(ctx),
            src_addr: self.src_addr(),
            dst_addr: self.dst_addr(),
            protocol: self.protocol(),
            src_port,
            dst_port,
            icmp_type_code,
            ipsec_spi: self.ipsec_spi(),
            ingress_if,
            egress_if,
            bytes: self.bytes(),
            packets: self.packets(),
            tcp_flags: self.num(Slot::TcpFlags).unwrap_or(0) as u8,
            tos: self.num(Slot::Tos).unwrap_or(0) as u8,
            start_ms,
            end_ms,
            end_reason: self
                .num(Slot::EndReason)
                .map(|r| EndReason::from_code(r as u8)),
            direction: self
                .num(Slot::Direction)
                .and_then(|d| Direction::from_code(d as u8)),
            mark: self.num(Slot::Mark).map(|m| m as u32),
            user_name: text(self.raw(Slot::UserName)),
            // As RecordBuilder: an empty prefix stays `Some("")`.
            nflog_prefix: self.raw(Slot::Prefix).map(clean_text),
            sampling_interval: sampling_of(ctx),
            tunnel: text(self.raw(Slot::Tunnel)),
            conntrack: self.conntrack(),
        };
        rec.settle_conntrack();
        rec
    }

    /// Whether the record carries connection-tracking elements (then it needs
    /// [`FlowView::to_record`]: a biflow counts in two directions, NAT elements are keys).
    #[inline]
    pub fn has_conntrack(&self) -> bool {
        self.plan.conntrack
    }

    /// The connection facts, by the rules of the conntrack templates' decoder (a record
    /// with any of the elements has them; `ctTcpState` 0xff is "none").
    fn conntrack(&self) -> Option<ConnInfo> {
        if !self.plan.conntrack {
            return None;
        }
        let num = |s| self.num(s);
        let addr = |slot| match self.raw(slot) {
            Some(a) if a.len() == 4 => IpAddr::V4(Ipv4Addr::from(be(a) as u32)),
            Some(a) => <[u8; 16]>::try_from(a)
                .map(|a| IpAddr::V6(Ipv6Addr::from(a)))
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let (rb, rp) = (num(Slot::RevBytes), num(Slot::RevPackets));
        Some(ConnInfo {
            post_nat_src: addr(Slot::NatSrc),
            post_nat_dst: addr(Slot::NatDst),
            post_napt_src_port: num(Slot::NatSrcPort).unwrap_or(0) as u16,
            post_napt_dst_port: num(Slot::NatDstPort).unwrap_or(0) as u16,
            direction: BiflowDirection::from_code(num(Slot::BiflowDirection).unwrap_or(0) as u8),
            zone: num(Slot::CtZone).unwrap_or(0) as u16,
            tcp_state: num(Slot::CtTcpState)
                .map(|n| n as u8)
                .filter(|n| u64::from(*n) != NO_TCP_STATE),
            conn_id: num(Slot::FlowId).unwrap_or(0) as u32,
            reverse: (rb.is_some() || rp.is_some()).then(|| (rb.unwrap_or(0), rp.unwrap_or(0))),
            reply_icmp_type_code: 0,
        })
    }
}

/// The sampling interval that applies to a record announcing none itself.
pub fn sampling_of(ctx: &ExporterContext) -> u32 {
    ctx.sampling_interval.unwrap_or(1).max(1)
}

/// Numeric elements must be 1–8 octets (reduced-size encoding, RFC 7011 section 6.2).
fn numeric(slot: Slot, len: u16) -> Option<Op> {
    ((1..=8).contains(&len)).then_some(Op {
        slot: Some(slot),
        unit: Unit::Plain,
        len: Some(len),
    })
}

fn exact(slot: Slot, len: u16, want: u16) -> Option<Op> {
    (len == want).then_some(Op {
        slot: Some(slot),
        unit: Unit::Plain,
        len: Some(len),
    })
}

/// Any length, variable-length included; `None` skips the field.
fn any_len(slot: Option<Slot>, len: u16) -> Op {
    Op {
        slot,
        unit: Unit::Plain,
        len: (len != crate::ie::VARLEN).then_some(len),
    }
}

impl FlowPlan {
    /// Compile a (non-options) template; `None` when a field needs the general path.
    pub fn compile(template: &Template) -> Option<FlowPlan> {
        if template.scope_count != 0 {
            return None;
        }
        let mut ops = Vec::with_capacity(template.fields.len());
        for f in &template.fields {
            let len = f.length;
            let op = match f.enterprise.unwrap_or(0) {
                0 => match f.id {
                    iana::OCTET_DELTA_COUNT => numeric(Slot::DeltaBytes, len)?,
                    iana::PACKET_DELTA_COUNT => numeric(Slot::DeltaPackets, len)?,
                    85 => numeric(Slot::TotalBytes, len)?,
                    iana::PACKET_TOTAL_COUNT => numeric(Slot::TotalPackets, len)?,
                    iana::PROTOCOL_IDENTIFIER => numeric(Slot::Protocol, len)?,
                    iana::IP_CLASS_OF_SERVICE => numeric(Slot::Tos, len)?,
                    iana::TCP_CONTROL_BITS => numeric(Slot::TcpFlags, len)?,
                    iana::SOURCE_TRANSPORT_PORT => numeric(Slot::SrcPort, len)?,
                    iana::DESTINATION_TRANSPORT_PORT => numeric(Slot::DstPort, len)?,
                    iana::SOURCE_IPV4_ADDRESS => exact(Slot::Src4, len, 4)?,
                    iana::DESTINATION_IPV4_ADDRESS => exact(Slot::Dst4, len, 4)?,
                    iana::SOURCE_IPV6_ADDRESS => exact(Slot::Src6, len, 16)?,
                    iana::DESTINATION_IPV6_ADDRESS => exact(Slot::Dst6, len, 16)?,
                    iana::INGRESS_INTERFACE => numeric(Slot::IngressIf, len)?,
                    iana::EGRESS_INTERFACE => numeric(Slot::EgressIf, len)?,
                    iana::ICMP_TYPE_CODE_IPV4 | iana::ICMP_TYPE_CODE_IPV6 => {
                        numeric(Slot::IcmpTypeCode, len)?
                    }
                    176 | 178 => numeric(Slot::IcmpType, len)?,
                    177 | 179 => numeric(Slot::IcmpCode, len)?,
                    iana::FLOW_DIRECTION => numeric(Slot::Direction, len)?,
                    iana::APPLICATION_ID => any_len(Some(Slot::Application), len),
                    iana::APPLICATION_NAME => any_len(Some(Slot::Label), len),
                    iana::FLOW_END_REASON => numeric(Slot::EndReason, len)?,
                    iana::OBSERVATION_POINT_ID => numeric(Slot::Group, len)?,
                    150 => numeric(Slot::Start, len)?.unit(Unit::Secs),
                    151 => numeric(Slot::End, len)?.unit(Unit::Secs),
                    iana::FLOW_START_MILLISECONDS => numeric(Slot::Start, len)?,
                    iana::FLOW_END_MILLISECONDS => numeric(Slot::End, len)?,
                    154 | 156 => exact(Slot::Start, len, 8)?.unit(Unit::Ntp),
                    155 | 157 => exact(Slot::End, len, 8)?.unit(Unit::Ntp),
                    iana::IPSEC_SPI => numeric(Slot::Spi, len)?,
                    iana::USER_NAME => any_len(Some(Slot::UserName), len),
                    // One slot per side whatever the family: as in RecordBuilder, the
                    // later field wins; the length tells the family.
                    iana::POST_NAT_SOURCE_IPV4_ADDRESS => exact(Slot::NatSrc, len, 4)?,
                    iana::POST_NAT_DESTINATION_IPV4_ADDRESS => exact(Slot::NatDst, len, 4)?,
                    iana::POST_NAT_SOURCE_IPV6_ADDRESS => exact(Slot::NatSrc, len, 16)?,
                    iana::POST_NAT_DESTINATION_IPV6_ADDRESS => exact(Slot::NatDst, len, 16)?,
                    iana::POST_NAPT_SOURCE_TRANSPORT_PORT => numeric(Slot::NatSrcPort, len)?,
                    iana::POST_NAPT_DESTINATION_TRANSPORT_PORT => numeric(Slot::NatDstPort, len)?,
                    iana::BIFLOW_DIRECTION => numeric(Slot::BiflowDirection, len)?,
                    iana::FLOW_ID => numeric(Slot::FlowId, len)?,
                    // flowEndSysUpTime / flowStartSysUpTime: kept apart from the absolute
                    // times, which win over them whatever the order.
                    21 => numeric(Slot::EndUp, len)?,
                    22 => numeric(Slot::StartUp, len)?,
                    // Per-record sampling and a record's own system init time need
                    // RecordBuilder.
                    34 | 48 | 50 | 160 | 302 | 305 | 306 => return None,
                    _ => any_len(None, len),
                },
                PEN_NETFILTER => match f.id {
                    netfilter::MARK => numeric(Slot::Mark, len)?,
                    netfilter::PREFIX => any_len(Some(Slot::Prefix), len),
                    _ => any_len(None, len),
                },
                PEN_LABELFLOW => match f.id {
                    labelflow::TUNNEL_NAME => any_len(Some(Slot::Tunnel), len),
                    labelflow::CT_ZONE => numeric(Slot::CtZone, len)?,
                    labelflow::CT_TCP_STATE => numeric(Slot::CtTcpState, len)?,
                    _ => any_len(None, len),
                },
                // RFC 5103 reverse counters.
                PEN_REVERSE => match f.id {
                    iana::OCTET_DELTA_COUNT => numeric(Slot::RevBytes, len)?,
                    iana::PACKET_DELTA_COUNT => numeric(Slot::RevPackets, len)?,
                    _ => any_len(None, len),
                },
                _ => any_len(None, len),
            };
            ops.push(op);
        }
        let mut slots = [None; SLOTS];
        let (mut fixed, mut varlen) = (0usize, Vec::new());
        for op in &ops {
            if let Some(slot) = op.slot {
                slots[slot as usize] = Some(Loc {
                    fixed: u16::try_from(fixed).ok()?,
                    var: varlen.len() as u8,
                    len: op.len,
                    unit: op.unit,
                });
            }
            match op.len {
                Some(n) => fixed += usize::from(n),
                None => varlen.push(u16::try_from(fixed).ok()?),
            }
        }
        if varlen.len() > MAX_VARLEN {
            return None;
        }
        let min_len = fixed + varlen.len();
        if min_len == 0 {
            return None;
        }
        Some(FlowPlan {
            ipv4: ipv4_offsets(&slots),
            conntrack: CONNTRACK_SLOTS.iter().any(|s| slots[*s as usize].is_some()),
            slots,
            fields: ops.len(),
            varlen,
            fixed_total: fixed,
            min_len,
        })
    }

    /// Fields of the template (each a decoded value to a template-driven parser).
    pub fn fields(&self) -> usize {
        self.fields
    }

    /// Length and layout of the record at the start of `rest` (not checked against
    /// `rest`'s length). The prefixes are read where `Template::records` reads them.
    #[inline(always)]
    fn layout(&self, rest: &[u8]) -> Result<(usize, Layout), Malformed> {
        let mut lay = Layout::default();
        let mut extra = 0usize;
        for (j, fixed) in self.varlen.iter().enumerate() {
            let (head, n) = varlen_at(rest, usize::from(*fixed) + extra).ok_or(Malformed)?;
            extra += head + n;
            // Larger than any message: `check` refuses it as longer than the set.
            let Ok(e) = u16::try_from(extra) else {
                return Ok((usize::MAX, lay));
            };
            lay.fields[j] = (head as u8, n as u16);
            lay.extra[j + 1] = e;
        }
        Ok((self.fixed_total + extra, lay))
    }

    /// Length of the record at the start of `rest`, as [`FlowPlan::layout`] gives it,
    /// without the layout.
    #[inline(always)]
    fn record_len(&self, rest: &[u8]) -> Option<usize> {
        let mut extra = 0usize;
        for fixed in &self.varlen {
            let (head, n) = varlen_at(rest, usize::from(*fixed) + extra)?;
            extra += head + n;
        }
        Some(self.fixed_total + extra)
    }

    /// Number of records in a data set body, or `Malformed` where
    /// [`Template::records`] would report an error. Trailing octets shorter than the
    /// shortest record are padding (RFC 7011 section 3.3.1).
    pub fn check(&self, body: &[u8]) -> Result<usize, Malformed> {
        if self.varlen.is_empty() {
            return Ok(body.len() / self.fixed_total);
        }
        let (mut at, mut count) = (0, 0);
        while body.len() - at >= self.min_len {
            let len = self.record_len(&body[at..]).ok_or(Malformed)?;
            if len > body.len() - at {
                return Err(Malformed);
            }
            at += len;
            count += 1;
        }
        Ok(count)
    }

    /// Decode the records of a body [`FlowPlan::check`] accepted, calling `each` per record.
    /// `ctx` is the exporter's state the records' times may depend on (its system init
    /// time, when the message's clock has no uptime).
    pub fn decode<'a>(
        &'a self,
        body: &'a [u8],
        domain: u32,
        clock: ExportClock,
        ctx: &ExporterContext,
        mut each: impl FnMut(&FlowView<'a>),
    ) {
        let anchor = match (clock.sys_uptime_ms, ctx.system_init_ms) {
            (Some(sys), _) => Anchor::Header(sys),
            (None, Some(init)) => Anchor::Init(init),
            (None, None) => Anchor::None,
        };
        let export_ms = u64::from(clock.export_secs) * 1000;
        let mut at = 0;
        while body.len() - at >= self.min_len {
            let Ok((len, lay)) = self.layout(&body[at..]) else {
                return;
            };
            let Some(rec) = body.get(at..at.saturating_add(len)) else {
                return;
            };
            at += len;
            each(&FlowView {
                plan: self,
                rec,
                lay,
                domain,
                export_ms,
                anchor,
            });
        }
    }
}

/// The offsets for [`FlowView::ipv4`]: every field present in the size the read assumes,
/// before any variable-length field, and nothing that would change the result (IPv6
/// addresses, which the accessors fall back to, are simply not read when IPv4 ones exist).
fn ipv4_offsets(slots: &[Option<Loc>; SLOTS]) -> Option<Ipv4Offsets> {
    // Times must be milliseconds: `Unit::Plain` for every slot read here.
    let at = |slot: Slot, len: u16| -> Option<u16> {
        let loc = slots[slot as usize]?;
        (loc.var == 0 && loc.len == Some(len) && loc.unit == Unit::Plain).then_some(loc.fixed)
    };
    // Delta counts only: a total count (IE 85/86) is read when the delta is missing.
    let counter = |slot: Slot| {
        at(slot, 8)
            .map(Counter::Wide)
            .or_else(|| at(slot, 4).map(Counter::Narrow))
    };
    let has = |slot: Slot| slots[slot as usize].is_some();
    let times = if has(Slot::Start) || has(Slot::End) {
        Times::Millis {
            start: at(Slot::Start, 8)?,
            end: at(Slot::End, 8)?,
        }
    } else {
        Times::Uptime {
            start: at(Slot::StartUp, 4)?,
            end: at(Slot::EndUp, 4)?,
        }
    };
    Some(Ipv4Offsets {
        src: at(Slot::Src4, 4)?,
        dst: at(Slot::Dst4, 4)?,
        protocol: at(Slot::Protocol, 1)?,
        src_port: at(Slot::SrcPort, 2)?,
        dst_port: at(Slot::DstPort, 2)?,
        bytes: counter(Slot::DeltaBytes)?,
        packets: counter(Slot::DeltaPackets)?,
        times,
        spi: match slots[Slot::Spi as usize] {
            None => None,
            Some(_) => Some(at(Slot::Spi, 4)?),
        },
    })
}

/// The values a record can set, one slot each; the start and end times have one slot
/// whatever their unit ([`Unit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    DeltaBytes,
    DeltaPackets,
    TotalBytes,
    TotalPackets,
    Protocol,
    Tos,
    TcpFlags,
    SrcPort,
    DstPort,
    Src4,
    Dst4,
    Src6,
    Dst6,
    IngressIf,
    EgressIf,
    IcmpTypeCode,
    IcmpType,
    IcmpCode,
    Direction,
    Application,
    Label,
    EndReason,
    Group,
    Start,
    End,
    StartUp,
    EndUp,
    Spi,
    UserName,
    Mark,
    Prefix,
    Tunnel,
    NatSrc,
    NatDst,
    NatSrcPort,
    NatDstPort,
    BiflowDirection,
    FlowId,
    CtZone,
    CtTcpState,
    RevBytes,
    RevPackets,
}

/// The slots of connection-tracking elements: a record with any of them has a
/// [`ConnInfo`].
const CONNTRACK_SLOTS: [Slot; 10] = [
    Slot::NatSrc,
    Slot::NatDst,
    Slot::NatSrcPort,
    Slot::NatDstPort,
    Slot::BiflowDirection,
    Slot::FlowId,
    Slot::CtZone,
    Slot::CtTcpState,
    Slot::RevBytes,
    Slot::RevPackets,
];

/// (start, end) of a record from its absolute (start, end) and sysUpTime-relative
/// (start, end) times, by `RecordBuilder`'s rule: absolute times first, then uptimes placed
/// by the anchor; a missing end is the export time, a missing start the end; without an
/// anchor, two uptimes keep their duration, ending at the end; swapped when reversed.
#[inline]
fn resolve_times(
    anchor: Anchor,
    export_ms: u64,
    (start, end): (Option<u64>, Option<u64>),
    (start_up, end_up): (Option<u64>, Option<u64>),
) -> (u64, u64) {
    let up = |u: Option<u64>| anchor.place(u?, export_ms);
    let end = end.or_else(|| up(end_up)).unwrap_or(export_ms);
    let mut start = start.or_else(|| up(start_up));
    if start.is_none() && anchor == Anchor::None {
        if let (Some(s), Some(e)) = (start_up, end_up) {
            start = Some(end.saturating_sub(e.saturating_sub(s)));
        }
    }
    let start = start.unwrap_or(end);
    (start.min(end), start.max(end))
}

/// Big-endian unsigned value of 1–8 octets (the plan guarantees the length).
#[inline]
fn be(raw: &[u8]) -> u64 {
    match raw.len() {
        1 => u64::from(raw[0]),
        2 => u64::from(u16::from_be_bytes([raw[0], raw[1]])),
        4 => u64::from(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]])),
        8 => u64::from_be_bytes(raw.try_into().unwrap_or([0; 8])),
        _ => raw.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)),
    }
}

fn ntp(raw: &[u8]) -> u64 {
    ntp_ms(
        u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
        u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]),
    )
}
