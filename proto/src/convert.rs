//! Mapping of `netflow_parser` output (any exporter's v5, v9 or IPFIX) into [`crate::FlowRecord`].
//!
//! ```text
//!  NetflowPacket ──► convert_packet(packet, &mut ExporterContext, &mut Vec<FlowRecord>)
//!                        │            ▲
//!                        │            └── options records (applicationId → name,
//!                        │                sampling interval, systemInitTime) kept per
//!                        ▼                exporter and observation domain
//!                   PacketSummary (version, domain, sequence, record counts)
//! ```
//!
//! v9 and IPFIX fields are first reduced to their IANA element id (v9 field types 1–127 share
//! the numbering of IPFIX information elements, RFC 3954 section 8 / RFC 7012), so one table
//! handles both formats and v9-style templates inside IPFIX messages.
//!
//! Counts are *not* scaled by the sampling interval here: [`FlowRecord::sampling_interval`]
//! carries the interval and the collector decides.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netflow_parser::static_versions::v5::V5;
use netflow_parser::variable_versions::ipfix::lookup::{
    IANAIPFixField, IPFixField, ReverseInformationElement,
};
use netflow_parser::variable_versions::ipfix::{FlowSetBody as IpfixBody, IPFix};
use netflow_parser::variable_versions::v9::{FlowSetBody as V9Body, ScopeDataField, V9};
use netflow_parser::{FieldValue, NetflowPacket};

use crate::ipfix::{DecodeError, Template};
pub use value::clean_text;
use value::{absolute_ms, application, ipv4, ipv6, number, text, Value};
pub(crate) use value::{application_of, ntp_ms};

mod value;
use crate::ie::Ie;
use crate::record::{Direction, EndReason, FlowRecord};

/// The netfilter private enterprise number used by ulogd2 for NFLOG attributes.
pub const NETFILTER_PEN: u32 = 21373;
/// Netfilter enterprise element: NFLOG prefix (string).
pub const NETFILTER_IE_PREFIX: u16 = 3;
/// Netfilter enterprise element: packet mark (unsigned32).
pub const NETFILTER_IE_MARK: u16 = 4;

/// Seconds between the NTP epoch (1900) and the UNIX epoch (1970), RFC 5905 section 6.
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;
/// Classification engine 6: "User-Defined" (RFC 6759 section 4.1).
pub const ENGINE_USER_DEFINED: u8 = 6;

/// Bounds on the per-exporter option state, so a hostile exporter cannot grow it forever.
const MAX_APPLICATIONS: usize = 4096;
const MAX_SAMPLERS: usize = 256;

/// `applicationId` (IE 95) split into classification engine and selector (RFC 6759).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApplicationKey {
    pub engine: u8,
    pub selector: u64,
}

/// What options records taught us about one exporter and observation domain.
///
/// The collector keeps one per (exporter address, observation domain) beside that scope's
/// template cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExporterContext {
    /// `applicationId` → `applicationName` from options records scoped by IE 95.
    pub applications: HashMap<ApplicationKey, String>,
    /// Exporter-wide packet sampling interval (1-in-N) from options records or a v5 header.
    pub sampling_interval: Option<u32>,
    /// Sampling interval per sampler id (v9 `FLOW_SAMPLER_ID` 48 / IPFIX `samplerId`).
    pub samplers: HashMap<u64, u32>,
    /// `systemInitTimeMilliseconds` (IE 160), used to place sysUpTime-relative IPFIX times.
    pub system_init_ms: Option<u64>,
}

/// Header facts of one converted message, for sequence accounting and statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketSummary {
    pub version: u16,
    pub observation_domain: u32,
    /// The header's sequence number (v5 flow sequence, v9 packet sequence, IPFIX data record
    /// sequence).
    pub sequence: u32,
    /// Flow records produced.
    pub flow_records: u32,
    /// Options data records seen (they count in the IPFIX sequence, RFC 7011 section 3.1).
    pub options_records: u32,
    /// Template and options template records seen.
    pub templates: u32,
    /// Data sets whose template was unknown (their records are lost and uncounted).
    pub missing_template_sets: u32,
}

/// Convert one decoded message, appending its flow records to `out`.
///
/// Options records update `ctx` before the data records *that follow them in the same
/// message* are converted; data records earlier in the message use what was known then.
pub fn convert_packet(
    packet: &NetflowPacket,
    ctx: &mut ExporterContext,
    out: &mut Vec<FlowRecord>,
) -> PacketSummary {
    match packet {
        NetflowPacket::V5(v5) => convert_v5(v5, ctx, out),
        NetflowPacket::V9(v9) => convert_v9(v9, ctx, out),
        NetflowPacket::IPFix(ipfix) => convert_ipfix(ipfix, ctx, out),
        NetflowPacket::V7(v7) => {
            // v7 (Catalyst) carries the v5 fields; map what matters.
            let h = &v7.header;
            let export_ms = u64::from(h.unix_secs) * 1000 + u64::from(h.unix_nsecs) / 1_000_000;
            for f in &v7.flowsets {
                out.push(FlowRecord {
                    src_addr: IpAddr::V4(f.src_addr),
                    dst_addr: IpAddr::V4(f.dst_addr),
                    protocol: f.protocol_number,
                    src_port: f.src_port,
                    dst_port: f.dst_port,
                    ingress_if: u32::from(f.input),
                    egress_if: u32::from(f.output),
                    bytes: u64::from(f.d_octets),
                    packets: u64::from(f.d_pkts),
                    tcp_flags: f.tcp_flags,
                    tos: f.tos,
                    start_ms: uptime_to_unix(export_ms, h.sys_up_time, f.first),
                    end_ms: uptime_to_unix(export_ms, h.sys_up_time, f.last),
                    ..FlowRecord::default()
                });
            }
            PacketSummary {
                version: 7,
                sequence: h.flow_sequence,
                flow_records: u32::from(h.count),
                ..PacketSummary::default()
            }
        }
        // Future versions of the decoder: nothing this module understands.
        _ => PacketSummary::default(),
    }
}

/// Wall-clock milliseconds of a sysUpTime-relative instant, given the export's wall clock
/// and the exporter's uptime at export (RFC 3954 section 5.1: `SysUptime` is milliseconds
/// since the device booted; `First`/`Last` switched use the same clock).
pub fn uptime_to_unix(export_ms: u64, sys_uptime_ms: u32, at_uptime_ms: u32) -> u64 {
    // The uptime counter rolls over after ~49.7 days: take the wrapped difference as signed,
    // so an instant slightly after the header's uptime (exporter clock skew) stays near it.
    let ago = i64::from(sys_uptime_ms.wrapping_sub(at_uptime_ms) as i32);
    (export_ms as i64).saturating_sub(ago).max(0) as u64
}

/// Wall-clock milliseconds of an IPFIX sysUpTime-relative instant (IE 21/22: unsigned32
/// milliseconds since the exporter's `systemInitTimeMilliseconds`, IE 160).
///
/// Some exporters (softflowd replaying a capture) report instants before `init` as wrapped
/// values; a result more than a day after the export time is read as such a negative offset.
pub fn ipfix_uptime_ms(init_ms: u64, up: u64, export_ms: u64) -> u64 {
    let t = init_ms.saturating_add(up);
    if t > export_ms.saturating_add(86_400_000) {
        let back = i64::from(up as u32 as i32);
        (init_ms as i64).saturating_add(back).max(0) as u64
    } else {
        t
    }
}

fn convert_v5(v5: &V5, ctx: &mut ExporterContext, out: &mut Vec<FlowRecord>) -> PacketSummary {
    let h = &v5.header;
    let export_ms = u64::from(h.unix_secs) * 1000 + u64::from(h.unix_nsecs) / 1_000_000;
    // The top two bits are the sampling mode, the low 14 bits the interval (0 = unsampled).
    let interval = u32::from(h.sampling_interval & 0x3fff);
    let sampling = if interval > 1 { interval } else { 1 };
    ctx.sampling_interval = Some(sampling);
    let domain = u32::from(h.engine_type) << 8 | u32::from(h.engine_id);
    for f in &v5.flowsets {
        let icmp = if f.protocol_number == 1 {
            // v5 exporters put ICMP type/code in the destination port.
            f.dst_port
        } else {
            0
        };
        out.push(FlowRecord {
            observation_domain: domain,
            src_addr: IpAddr::V4(f.src_addr),
            dst_addr: IpAddr::V4(f.dst_addr),
            protocol: f.protocol_number,
            src_port: if icmp != 0 { 0 } else { f.src_port },
            dst_port: if icmp != 0 { 0 } else { f.dst_port },
            icmp_type_code: icmp,
            ingress_if: u32::from(f.input),
            egress_if: u32::from(f.output),
            bytes: u64::from(f.d_octets),
            packets: u64::from(f.d_pkts),
            tcp_flags: f.tcp_flags,
            tos: f.tos,
            start_ms: uptime_to_unix(export_ms, h.sys_up_time, f.first),
            end_ms: uptime_to_unix(export_ms, h.sys_up_time, f.last),
            sampling_interval: sampling,
            ..FlowRecord::default()
        });
    }
    PacketSummary {
        version: 5,
        observation_domain: domain,
        sequence: h.flow_sequence,
        flow_records: v5.flowsets.len() as u32,
        ..PacketSummary::default()
    }
}

/// Clock of the message a record arrived in.
#[derive(Debug, Clone, Copy)]
struct Clock {
    export_ms: u64,
    /// v9 header sysUpTime; IPFIX has none.
    sys_uptime_ms: Option<u32>,
}

fn convert_v9(v9: &V9, ctx: &mut ExporterContext, out: &mut Vec<FlowRecord>) -> PacketSummary {
    let h = &v9.header;
    let clock = Clock {
        export_ms: u64::from(h.unix_secs) * 1000,
        sys_uptime_ms: Some(h.sys_up_time),
    };
    let mut s = PacketSummary {
        version: 9,
        observation_domain: h.source_id,
        sequence: h.sequence_number,
        ..PacketSummary::default()
    };
    for set in &v9.flowsets {
        match &set.body {
            V9Body::Template(t) => s.templates += t.templates.len() as u32,
            V9Body::OptionsTemplate(t) => s.templates += t.templates.len() as u32,
            V9Body::Data(d) => {
                for rec in &d.fields {
                    let mut b = RecordBuilder::default();
                    for (field, value) in rec {
                        b.apply(u16::from(*field), value);
                    }
                    out.push(b.finish(h.source_id, clock, ctx));
                    s.flow_records += 1;
                }
            }
            V9Body::OptionsData(d) => {
                for rec in &d.fields {
                    s.options_records += 1;
                    let mut b = RecordBuilder::default();
                    for scope in &rec.scope_fields {
                        // v9 scopes are system/interface/line card/cache/template; none of
                        // them names an application, so they only matter as "exporter-wide".
                        if let ScopeDataField::Unknown(id, raw) = scope {
                            b.apply(*id, &FieldValue::Vec(raw.clone()));
                        }
                    }
                    for (field, value) in &rec.options_fields {
                        b.apply(u16::from(*field), value);
                    }
                    b.learn_options(ctx);
                }
            }
            V9Body::NoTemplate(_) => s.missing_template_sets += 1,
            V9Body::Empty => {}
        }
    }
    s
}

fn convert_ipfix(
    ipfix: &IPFix,
    ctx: &mut ExporterContext,
    out: &mut Vec<FlowRecord>,
) -> PacketSummary {
    let h = &ipfix.header;
    let domain = h.observation_domain_id;
    let clock = Clock {
        export_ms: u64::from(h.export_time) * 1000,
        sys_uptime_ms: None,
    };
    let mut s = PacketSummary {
        version: 10,
        observation_domain: domain,
        sequence: h.sequence_number,
        ..PacketSummary::default()
    };
    for set in &ipfix.flowsets {
        match &set.body {
            IpfixBody::Template(_)
            | IpfixBody::V9Template(_)
            | IpfixBody::OptionsTemplate(_)
            | IpfixBody::V9OptionsTemplate(_) => s.templates += 1,
            IpfixBody::Templates(t) => s.templates += t.len() as u32,
            IpfixBody::V9Templates(t) => s.templates += t.len() as u32,
            IpfixBody::OptionsTemplates(t) => s.templates += t.len() as u32,
            IpfixBody::V9OptionsTemplates(t) => s.templates += t.len() as u32,
            IpfixBody::Data(d) => {
                for rec in &d.fields {
                    let mut b = RecordBuilder::default();
                    for (field, value) in rec {
                        b.apply_ipfix(field, value);
                    }
                    out.push(b.finish(domain, clock, ctx));
                    s.flow_records += 1;
                }
            }
            IpfixBody::V9Data(d) => {
                for rec in &d.fields {
                    let mut b = RecordBuilder::default();
                    for (field, value) in rec {
                        b.apply(u16::from(*field), value);
                    }
                    out.push(b.finish(domain, clock, ctx));
                    s.flow_records += 1;
                }
            }
            IpfixBody::OptionsData(d) => {
                for rec in &d.fields {
                    s.options_records += 1;
                    let mut b = RecordBuilder::default();
                    for (field, value) in rec {
                        b.apply_ipfix(field, value);
                    }
                    b.learn_options(ctx);
                }
            }
            IpfixBody::V9OptionsData(d) => {
                for rec in &d.fields {
                    s.options_records += 1;
                    let mut b = RecordBuilder::default();
                    for (field, value) in &rec.options_fields {
                        b.apply(u16::from(*field), value);
                    }
                    b.learn_options(ctx);
                }
            }
            IpfixBody::NoTemplate(_) => s.missing_template_sets += 1,
            IpfixBody::Empty => {}
        }
    }
    s
}

/// Convert the data records of one IPFIX data set straight from the message octets with
/// `template` (a plain template, not an options template), appending them to `out`.
///
/// Returns the number of records, or the first decode error; on error `out` is left as it
/// was, so a caller can decode the message another way.
pub fn convert_ipfix_data_set(
    template: &Template,
    body: &[u8],
    domain: u32,
    export_secs: u32,
    ctx: &ExporterContext,
    out: &mut Vec<FlowRecord>,
) -> Result<u32, DecodeError> {
    let first = out.len();
    for rec in template.records(body) {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                out.truncate(first);
                return Err(e);
            }
        };
        let mut b = RecordBuilder::default();
        for (spec, bytes) in rec.fields() {
            b.apply_raw(spec.enterprise.unwrap_or(0), spec.id, bytes);
        }
        out.push(b.finish_ipfix(domain, export_secs, ctx));
    }
    Ok((out.len() - first) as u32)
}

/// The IANA element id of a decoded IPFIX field, for the elements this module reads.
fn iana_id(field: IANAIPFixField) -> Option<u16> {
    use IANAIPFixField as F;
    Some(match field {
        F::OctetDeltaCount => 1,
        F::PacketDeltaCount => 2,
        F::ProtocolIdentifier => 4,
        F::IpClassOfService => 5,
        F::TcpControlBits => 6,
        F::SourceTransportPort => 7,
        F::SourceIpv4address => 8,
        F::IngressInterface => 10,
        F::DestinationTransportPort => 11,
        F::DestinationIpv4address => 12,
        F::EgressInterface => 14,
        F::FlowEndSysUpTime => 21,
        F::FlowStartSysUpTime => 22,
        F::SourceIpv6address => 27,
        F::DestinationIpv6address => 28,
        F::IcmpTypeCodeIpv4 => 32,
        F::SamplingInterval => 34,
        F::SamplerId => 48,
        F::SamplerRandomInterval => 50,
        F::FlowDirection => 61,
        F::OctetTotalCount => 85,
        F::PacketTotalCount => 86,
        F::ApplicationId => 95,
        F::ApplicationName => 96,
        F::FlowEndReason => 136,
        F::ObservationPointId => 138,
        F::IcmpTypeCodeIpv6 => 139,
        F::FlowStartSeconds => 150,
        F::FlowEndSeconds => 151,
        F::FlowStartMilliseconds => 152,
        F::FlowEndMilliseconds => 153,
        F::FlowStartMicroseconds => 154,
        F::FlowEndMicroseconds => 155,
        F::FlowStartNanoseconds => 156,
        F::FlowEndNanoseconds => 157,
        F::SystemInitTimeMilliseconds => 160,
        F::IcmpTypeIpv4 => 176,
        F::IcmpCodeIpv4 => 177,
        F::IcmpTypeIpv6 => 178,
        F::IcmpCodeIpv6 => 179,
        F::IpSecSPI => 295,
        F::SelectorId => 302,
        F::SamplingPacketInterval => 305,
        F::SamplingPacketSpace => 306,
        F::SamplingSize => 309,
        F::SamplingPopulation => 310,
        F::UserName => 371,
        F::FlowId => 148,
        F::PostNatsourceIpv4address => 225,
        F::PostNatdestinationIpv4address => 226,
        F::PostNaptsourceTransportPort => 227,
        F::PostNaptdestinationTransportPort => 228,
        F::BiflowDirection => 239,
        F::PostNatsourceIpv6address => 281,
        F::PostNatdestinationIpv6address => 282,
        F::Unknown(n) => n,
        _ => return None,
    })
}

/// Accumulates one record's fields in any order, then resolves times, labels and sampling.
///
/// Both decode paths feed it: [`RecordBuilder::apply_raw`] with the octets of an IPFIX data
/// record, and the `netflow_parser` path with its decoded values; one mapping per element.
#[derive(Debug, Default)]
pub struct RecordBuilder {
    rec: FlowRecord,
    src4: Option<Ipv4Addr>,
    dst4: Option<Ipv4Addr>,
    src6: Option<Ipv6Addr>,
    dst6: Option<Ipv6Addr>,
    delta_bytes: Option<u64>,
    total_bytes: Option<u64>,
    delta_packets: Option<u64>,
    total_packets: Option<u64>,
    start_abs: Option<u64>,
    end_abs: Option<u64>,
    start_uptime: Option<u64>,
    end_uptime: Option<u64>,
    icmp_type: Option<u8>,
    icmp_code: Option<u8>,
    app_id: Option<ApplicationKey>,
    sampler_id: Option<u64>,
    sampling: Option<u32>,
    packet_interval: Option<u64>,
    packet_space: Option<u64>,
    system_init_ms: Option<u64>,
}

impl RecordBuilder {
    fn apply_ipfix(&mut self, field: &IPFixField, value: &FieldValue) {
        match field {
            IPFixField::IANA(f) => {
                if let Some(id) = iana_id(*f) {
                    self.apply(id, value);
                }
            }
            IPFixField::Enterprise {
                enterprise_number,
                field_number,
            } => self.apply_enterprise(*enterprise_number, *field_number, Value::Parsed(value)),
            // RFC 5103 reverse elements: `netflow_parser` names them; the ids stay those of
            // the forward elements under PEN 29305.
            IPFixField::ReverseInformationElement(r) => {
                let id = match r {
                    ReverseInformationElement::ReverseOctetDeltaCount => 1,
                    ReverseInformationElement::ReversePacketDeltaCount => 2,
                    _ => return,
                };
                self.apply_enterprise(crate::ie::PEN_REVERSE, id, Value::Parsed(value))
            }
            _ => {}
        }
    }

    /// Apply one IPFIX field from its value octets (variable-length prefix stripped):
    /// `enterprise` 0 for IANA elements.
    pub fn apply_raw(&mut self, enterprise: u32, ie: u16, bytes: &[u8]) {
        if enterprise == 0 {
            self.apply_value(ie, Value::Raw(bytes));
        } else {
            self.apply_enterprise(enterprise, ie, Value::Raw(bytes));
        }
    }

    fn apply_enterprise(&mut self, enterprise: u32, ie: u16, value: Value<'_>) {
        match (enterprise, ie) {
            (NETFILTER_PEN, NETFILTER_IE_MARK) => self.rec.mark = number(value).map(|m| m as u32),
            (NETFILTER_PEN, NETFILTER_IE_PREFIX) => self.rec.nflog_prefix = text(value),
            (crate::ie::PEN_LABELFLOW, crate::ie::labelflow::TUNNEL_NAME) => {
                self.rec.tunnel = text(value).filter(|t| !t.is_empty())
            }
            _ => self.apply_conntrack(Ie::from_ids(ie, Some(enterprise)), value),
        }
    }

    /// Apply one decoded field by IANA element id (v9 field types and IPFIX IEs).
    fn apply(&mut self, id: u16, value: &FieldValue) {
        self.apply_value(id, Value::Parsed(value));
    }

    /// The mapping rules, by IANA element id.
    fn apply_value(&mut self, id: u16, value: Value<'_>) {
        let n = || number(value);
        match id {
            1 => self.delta_bytes = n(),
            2 => self.delta_packets = n(),
            85 => self.total_bytes = n(),
            86 => self.total_packets = n(),
            4 => self.rec.protocol = n().unwrap_or(0) as u8,
            5 => self.rec.tos = n().unwrap_or(0) as u8,
            6 => self.rec.tcp_flags = n().unwrap_or(0) as u8,
            7 => self.rec.src_port = n().unwrap_or(0) as u16,
            11 => self.rec.dst_port = n().unwrap_or(0) as u16,
            8 => self.src4 = ipv4(value),
            12 => self.dst4 = ipv4(value),
            27 => self.src6 = ipv6(value),
            28 => self.dst6 = ipv6(value),
            10 => self.rec.ingress_if = n().unwrap_or(0) as u32,
            14 => self.rec.egress_if = n().unwrap_or(0) as u32,
            21 => self.end_uptime = n(),
            22 => self.start_uptime = n(),
            32 | 139 => self.rec.icmp_type_code = n().unwrap_or(0) as u16,
            176 | 178 => self.icmp_type = n().map(|v| v as u8),
            177 | 179 => self.icmp_code = n().map(|v| v as u8),
            34 | 50 => self.sampling = n().map(|v| v.min(u64::from(u32::MAX)) as u32),
            48 | 302 => self.sampler_id = n(),
            305 => self.packet_interval = n(),
            306 => self.packet_space = n(),
            61 => self.rec.direction = n().and_then(|d| Direction::from_code(d as u8)),
            95 => self.app_id = application(value),
            96 => self.rec.label = text(value).filter(|s| !s.is_empty()),
            136 => self.rec.end_reason = n().map(|r| EndReason::from_code(r as u8)),
            138 => self.rec.group = n().map(|g| g as u32),
            150..=157 => {
                let ms = absolute_ms(id, value);
                if id.is_multiple_of(2) {
                    self.start_abs = ms;
                } else {
                    self.end_abs = ms;
                }
            }
            160 => self.system_init_ms = n(),
            // SPI 0 is reserved (RFC 4303 section 2.1): "none".
            295 => self.rec.ipsec_spi = n().map(|v| v as u32).filter(|s| *s != 0),
            371 => self.rec.user_name = text(value).filter(|s| !s.is_empty()),
            _ => self.apply_conntrack(Ie::from_ids(id, None), value),
        }
    }

    /// The connection-tracking elements (post-NAT addresses and ports, biflow direction,
    /// flowId, zone, TCP state, RFC 5103 reverse counters), by the rules of the conntrack
    /// templates' own decoder.
    fn apply_conntrack(&mut self, ie: Ie, value: Value<'_>) {
        let mut buf = [0u8; 16];
        let raw: &[u8] = match ie {
            Ie::PostNatSourceIpv4Address | Ie::PostNatDestinationIpv4Address => {
                let Some(a) = ipv4(value) else { return };
                buf[..4].copy_from_slice(&a.octets());
                &buf[..4]
            }
            Ie::PostNatSourceIpv6Address | Ie::PostNatDestinationIpv6Address => {
                let Some(a) = ipv6(value) else { return };
                buf = a.octets();
                &buf
            }
            Ie::Other { .. } => return,
            _ => &[],
        };
        let n = number(value).unwrap_or(0);
        crate::template::nat::decode_field(&mut self.rec, ie, raw, n);
    }

    /// The 1-in-N interval this record announces, if it announces one.
    fn announced_sampling(&self) -> Option<u32> {
        if let Some(interval) = self.packet_interval {
            // RFC 5477 section 8.2.2/8.2.3: select `interval` packets, then skip `space`.
            let space = self.packet_space.unwrap_or(0);
            if let Some(n) = (interval + space).checked_div(interval) {
                return Some(n.clamp(1, u64::from(u32::MAX)) as u32);
            }
        }
        self.sampling.map(|s| s.max(1))
    }

    fn learn_options(self, ctx: &mut ExporterContext) {
        if let (Some(app), Some(name)) = (self.app_id, self.rec.label.as_ref()) {
            if ctx.applications.len() < MAX_APPLICATIONS || ctx.applications.contains_key(&app) {
                ctx.applications.insert(app, name.clone());
            }
        }
        if let Some(init) = self.system_init_ms {
            ctx.system_init_ms = Some(init);
        }
        if let Some(rate) = self.announced_sampling() {
            match self.sampler_id {
                Some(id) => {
                    if ctx.samplers.len() < MAX_SAMPLERS || ctx.samplers.contains_key(&id) {
                        ctx.samplers.insert(id, rate);
                    }
                }
                None => ctx.sampling_interval = Some(rate),
            }
        }
    }

    /// Resolve an IPFIX data record of a message from `domain` exported at `export_secs`.
    pub fn finish_ipfix(self, domain: u32, export_secs: u32, ctx: &ExporterContext) -> FlowRecord {
        let clock = Clock {
            export_ms: u64::from(export_secs) * 1000,
            sys_uptime_ms: None,
        };
        self.finish(domain, clock, ctx)
    }

    fn finish(mut self, domain: u32, clock: Clock, ctx: &ExporterContext) -> FlowRecord {
        let mut rec = std::mem::take(&mut self.rec);
        rec.observation_domain = domain;
        rec.src_addr = match (self.src4, self.src6) {
            (Some(a), _) => IpAddr::V4(a),
            (None, Some(a)) => IpAddr::V6(a),
            (None, None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        rec.dst_addr = match (self.dst4, self.dst6) {
            (Some(a), _) => IpAddr::V4(a),
            (None, Some(a)) => IpAddr::V6(a),
            (None, None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        rec.bytes = self.delta_bytes.or(self.total_bytes).unwrap_or(0);
        rec.packets = self.delta_packets.or(self.total_packets).unwrap_or(0);
        if rec.icmp_type_code == 0 && (self.icmp_type.is_some() || self.icmp_code.is_some()) {
            rec.icmp_type_code = u16::from(self.icmp_type.unwrap_or(0)) << 8
                | u16::from(self.icmp_code.unwrap_or(0));
        }
        // ICMP records of some exporters carry type/code in the destination port.
        if matches!(rec.protocol, 1 | 58) && rec.icmp_type_code == 0 && rec.src_port == 0 {
            rec.icmp_type_code = rec.dst_port;
            rec.dst_port = 0;
        }

        let init = self.system_init_ms.or(ctx.system_init_ms);
        // An uptime-relative instant has an anchor when the header carries the uptime
        // (v9) or the exporter announced its system init time (IPFIX IE 160).
        let anchored = clock.sys_uptime_ms.is_some() || init.is_some();
        let uptime_abs = |up: u64| -> Option<u64> {
            match (clock.sys_uptime_ms, init) {
                (Some(sys), _) => Some(uptime_to_unix(clock.export_ms, sys, up as u32)),
                (None, Some(init)) => Some(ipfix_uptime_ms(init, up, clock.export_ms)),
                (None, None) => None,
            }
        };
        let mut end = self
            .end_abs
            .or(self.end_uptime.and_then(uptime_abs))
            .unwrap_or(clock.export_ms);
        let mut start = self.start_abs.or(self.start_uptime.and_then(uptime_abs));
        if start.is_none() && !anchored {
            // IPFIX sysUpTime without systemInitTime: keep the duration, anchor at export.
            if let (Some(s), Some(e)) = (self.start_uptime, self.end_uptime) {
                start = Some(end.saturating_sub(e.saturating_sub(s)));
            }
        }
        let mut start = start.unwrap_or(end);
        if start > end {
            std::mem::swap(&mut start, &mut end);
        }
        rec.start_ms = start;
        rec.end_ms = end;
        rec.settle_conntrack();

        if rec.label.is_none() {
            if let Some(app) = self.app_id {
                rec.label = ctx.applications.get(&app).cloned();
            }
        }
        rec.sampling_interval = self
            .announced_sampling()
            .or(self
                .sampler_id
                .and_then(|id| ctx.samplers.get(&id).copied()))
            .or(ctx.sampling_interval)
            .unwrap_or(1)
            .max(1);
        rec
    }
}
