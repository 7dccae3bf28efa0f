//! The templates labelflow exports and the mapping between [`FlowRecord`] and their records.
//!
//! | template | id | contents |
//! |---|---|---|
//! | [`FLOW_V4`] | 256 | one IPv4 flow: group, label, 5-tuple, ICMP, SPI, interfaces, counters, times, mark, user, prefix, tunnel |
//! | [`FLOW_V6`] | 257 | the same for IPv6 |
//! | [`APP_NAMES`] | 258 | options, scope `observationPointId` (group): `applicationId`, `applicationName`, `applicationDescription` |
//! | [`INTERFACES`] | 259 | options, scope `ingressInterface`: `interfaceName`, `interfaceDescription` |
//! | [`GROUP_STATS`] | 260 | options, scope `observationPointId`: `packetTotalCount`, `ignoredPacketTotalCount` |
//! | [`SAMPLING`] | 261 | options, scope `observationDomainId`: `samplingPacketInterval`, `samplingPacketSpace` |
//!
//! Strings in options records are fixed-length and NUL-padded: nfdump sizes options records
//! from the template's field lengths and reads the name by offset, so a variable-length field
//! there would shift everything after it. The last octet is always NUL (nfdump overwrites it).
//! The description is at least as long as the name (nfdump 1.7.1 validates the description
//! with the name's length), and each application name travels in a set of its own (see
//! [`OptionsRecord::write`]). [`AppIdEncoding`] chooses the data records' `applicationId`.
//!
//! Absent values travel as their "none" encoding and decode back to `None`: group, SPI and
//! mark as 0 (SPI 0 is reserved, RFC 4303 section 2.1; mark 0 is netfilter's "unmarked"),
//! end reason as 0 (unassigned), direction as 0xff, strings as a single NUL octet. An empty
//! variable-length field would be valid IPFIX, but `netflow_parser` 1.0 rejects a
//! zero length and then drops every record of the data set.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::ie::{
    be_uint, iana, labelflow, netfilter, FieldSpec, Ie, APP_ENGINE_USER_DEFINED, PEN_LABELFLOW,
    PEN_NETFILTER, VARLEN,
};
use crate::ipfix::{
    emit_varlen, varlen_size, DecodeError, Message, MessageWriter, Record, Template, TemplateDef,
};
use crate::record::{Direction, EndReason, FlowRecord};

pub const FLOW_V4_ID: u16 = 256;
pub const FLOW_V6_ID: u16 = 257;
pub const APP_NAMES_ID: u16 = 258;
pub const INTERFACES_ID: u16 = 259;
pub const GROUP_STATS_ID: u16 = 260;
pub const SAMPLING_ID: u16 = 261;

/// Longest string carried in a flow record (keeps the one-octet length form).
pub const MAX_FLOW_STRING: usize = 250;
/// Octets of `applicationName` / `interfaceName` in options records (NUL included).
pub const NAME_LEN: u16 = 32;
/// Octets of `applicationDescription` / `interfaceDescription` in options records.
pub const DESCRIPTION_LEN: u16 = 64;
/// Octets of `applicationId`: RFC 6759 section 4 classification engine id (one octet), then a
/// 4-octet selector (the group).
pub const APP_ID_LEN: u16 = 5;
// nfdump 1.7.1 validates the description with the name's length.
const _: () = assert!(DESCRIPTION_LEN >= NAME_LEN);

/// How the data records carry `applicationId` (IE 95), chosen per export target.
///
/// Collectors show the label of a flow by looking its `applicationId` up in the options
/// records of [`APP_NAMES`], which always carry it as [`APP_ID_LEN`] octets. The data records
/// must carry the same octets in a form the collector copies unchanged:
///
/// | encoding | data record | read correctly by |
/// |---|---|---|
/// | `Rfc6759` (default) | fixed 5 octets | nfdump >= 1.7.2, pmacct (`class`), Wireshark, labelflow-collector |
/// | `Varlen` | variable length, 5 octets | nfdump 1.7.1 (Debian 12), nfdump >= 1.7.2, Wireshark |
///
/// nfdump 1.7.1 reads a fixed-length `applicationId` of 2 to 8 octets as a big-endian number
/// and stores it in host order (`src/lib/nfxV3.c` `SequencerRun`, with IE 95 set to
/// `NumberCopy` in `src/netflow/ipfix.c`), so on little-endian hosts the data record's
/// octets come out reversed and never match the options record; a variable-length field is
/// copied as it is. pmacct 1.7.7 takes an `applicationId` only when its template length is 2,
/// 3 or 5 (`src/nfacctd.c`), so it needs the fixed form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppIdEncoding {
    /// Fixed length, [`APP_ID_LEN`] octets.
    #[default]
    Rfc6759,
    /// Variable length (RFC 7011 section 7), holding the same [`APP_ID_LEN`] octets.
    Varlen,
}

impl AppIdEncoding {
    /// The name used in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            AppIdEncoding::Rfc6759 => "rfc6759",
            AppIdEncoding::Varlen => "varlen",
        }
    }

    /// Parses [`AppIdEncoding::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "rfc6759" => Some(AppIdEncoding::Rfc6759),
            "varlen" => Some(AppIdEncoding::Varlen),
            _ => None,
        }
    }
}

const fn i(id: u16, len: u16) -> FieldSpec {
    FieldSpec::iana(id, len)
}

macro_rules! flow_fields {
    ($src:expr, $dst:expr, $icmp:expr, $alen:expr, $app_id_len:expr $(, $extra:expr)*) => {
        &[
            i(iana::OBSERVATION_POINT_ID, 4),
            i(iana::APPLICATION_ID, $app_id_len),
            i($src, $alen),
            i($dst, $alen),
            i(iana::PROTOCOL_IDENTIFIER, 1),
            i(iana::IP_CLASS_OF_SERVICE, 1),
            i(iana::TCP_CONTROL_BITS, 2),
            i(iana::SOURCE_TRANSPORT_PORT, 2),
            i(iana::DESTINATION_TRANSPORT_PORT, 2),
            i($icmp, 2),
            i(iana::IPSEC_SPI, 4),
            i(iana::INGRESS_INTERFACE, 4),
            i(iana::EGRESS_INTERFACE, 4),
            i(iana::OCTET_DELTA_COUNT, 8),
            i(iana::PACKET_DELTA_COUNT, 8),
            i(iana::FLOW_START_MILLISECONDS, 8),
            i(iana::FLOW_END_MILLISECONDS, 8),
            i(iana::FLOW_END_REASON, 1),
            i(iana::FLOW_DIRECTION, 1),
            FieldSpec::enterprise(PEN_NETFILTER, netfilter::MARK, 4),
            i(iana::APPLICATION_NAME, VARLEN),
            i(iana::USER_NAME, VARLEN),
            FieldSpec::enterprise(PEN_NETFILTER, netfilter::PREFIX, VARLEN),
            FieldSpec::enterprise(PEN_LABELFLOW, labelflow::TUNNEL_NAME, VARLEN),
            $($extra,)*
        ]
    };
}

pub(crate) mod nat;
pub use nat::{
    conntrack_templates, write_conntrack_templates_with, FLOW_BI_V4, FLOW_BI_V4_ID, FLOW_BI_V6,
    FLOW_BI_V6_ID, FLOW_CT_V4, FLOW_CT_V4_ID, FLOW_CT_V4_VARLEN_APP_ID, FLOW_CT_V6, FLOW_CT_V6_ID,
    FLOW_CT_V6_VARLEN_APP_ID,
};

pub const FLOW_V4: TemplateDef = TemplateDef {
    id: FLOW_V4_ID,
    scope_count: 0,
    fields: flow_fields!(
        iana::SOURCE_IPV4_ADDRESS,
        iana::DESTINATION_IPV4_ADDRESS,
        iana::ICMP_TYPE_CODE_IPV4,
        4,
        APP_ID_LEN
    ),
};
pub const FLOW_V6: TemplateDef = TemplateDef {
    id: FLOW_V6_ID,
    scope_count: 0,
    fields: flow_fields!(
        iana::SOURCE_IPV6_ADDRESS,
        iana::DESTINATION_IPV6_ADDRESS,
        iana::ICMP_TYPE_CODE_IPV6,
        16,
        APP_ID_LEN
    ),
};
/// [`FLOW_V4`] with a variable-length `applicationId` (see [`AppIdEncoding::Varlen`]).
pub const FLOW_V4_VARLEN_APP_ID: TemplateDef = TemplateDef {
    id: FLOW_V4_ID,
    scope_count: 0,
    fields: flow_fields!(
        iana::SOURCE_IPV4_ADDRESS,
        iana::DESTINATION_IPV4_ADDRESS,
        iana::ICMP_TYPE_CODE_IPV4,
        4,
        VARLEN
    ),
};
/// [`FLOW_V6`] with a variable-length `applicationId` (see [`AppIdEncoding::Varlen`]).
pub const FLOW_V6_VARLEN_APP_ID: TemplateDef = TemplateDef {
    id: FLOW_V6_ID,
    scope_count: 0,
    fields: flow_fields!(
        iana::SOURCE_IPV6_ADDRESS,
        iana::DESTINATION_IPV6_ADDRESS,
        iana::ICMP_TYPE_CODE_IPV6,
        16,
        VARLEN
    ),
};
pub const APP_NAMES: TemplateDef = TemplateDef {
    id: APP_NAMES_ID,
    scope_count: 1,
    fields: &[
        i(iana::OBSERVATION_POINT_ID, 4),
        i(iana::APPLICATION_ID, APP_ID_LEN),
        i(iana::APPLICATION_NAME, NAME_LEN),
        i(iana::APPLICATION_DESCRIPTION, DESCRIPTION_LEN),
    ],
};
pub const INTERFACES: TemplateDef = TemplateDef {
    id: INTERFACES_ID,
    scope_count: 1,
    fields: &[
        i(iana::INGRESS_INTERFACE, 4),
        i(iana::INTERFACE_NAME, NAME_LEN),
        i(iana::INTERFACE_DESCRIPTION, DESCRIPTION_LEN),
    ],
};
pub const GROUP_STATS: TemplateDef = TemplateDef {
    id: GROUP_STATS_ID,
    scope_count: 1,
    fields: &[
        i(iana::OBSERVATION_POINT_ID, 4),
        i(iana::PACKET_TOTAL_COUNT, 8),
        i(iana::IGNORED_PACKET_TOTAL_COUNT, 8),
    ],
};
pub const SAMPLING: TemplateDef = TemplateDef {
    id: SAMPLING_ID,
    scope_count: 1,
    fields: &[
        i(iana::OBSERVATION_DOMAIN_ID, 4),
        i(iana::SAMPLING_PACKET_INTERVAL, 4),
        i(iana::SAMPLING_PACKET_SPACE, 4),
    ],
};

/// Every template labelflow announces, data templates first.
pub const ALL: [TemplateDef; 6] = [
    FLOW_V4,
    FLOW_V6,
    APP_NAMES,
    INTERFACES,
    GROUP_STATS,
    SAMPLING,
];

/// `applicationId` for a group: RFC 6759 classification engine 6 (user-defined), then the
/// group number as a 4-octet selector.
pub fn application_id(group: u32) -> [u8; 5] {
    let g = group.to_be_bytes();
    [APP_ENGINE_USER_DEFINED, g[0], g[1], g[2], g[3]]
}

/// Longest prefix of `s` of at most `max` octets that ends on a char boundary.
pub fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn opt_str(s: &Option<String>) -> &str {
    truncate_str(s.as_deref().unwrap_or(""), MAX_FLOW_STRING)
}

/// The data template a record goes into.
pub fn flow_template(rec: &FlowRecord) -> &'static TemplateDef {
    flow_template_with(rec, AppIdEncoding::Rfc6759)
}

/// The data template a record goes into, with `applicationId` encoded as `app_id`.
pub fn flow_template_with(rec: &FlowRecord, app_id: AppIdEncoding) -> &'static TemplateDef {
    if rec.conntrack.is_some() {
        return nat::template(rec, app_id);
    }
    match (rec.src_addr, app_id) {
        (IpAddr::V4(_), AppIdEncoding::Rfc6759) => &FLOW_V4,
        (IpAddr::V6(_), AppIdEncoding::Rfc6759) => &FLOW_V6,
        (IpAddr::V4(_), AppIdEncoding::Varlen) => &FLOW_V4_VARLEN_APP_ID,
        (IpAddr::V6(_), AppIdEncoding::Varlen) => &FLOW_V6_VARLEN_APP_ID,
    }
}

/// Octets of the data record for `rec`.
pub fn flow_record_len(rec: &FlowRecord) -> usize {
    flow_record_len_with(rec, AppIdEncoding::Rfc6759)
}

/// Octets of the data record for `rec`, with `applicationId` encoded as `app_id`.
pub fn flow_record_len_with(rec: &FlowRecord, app_id: AppIdEncoding) -> usize {
    let addrs = if rec.src_addr.is_ipv4() { 8 } else { 32 };
    let app_id_prefix = match app_id {
        AppIdEncoding::Rfc6759 => 0,
        AppIdEncoding::Varlen => varlen_size(APP_ID_LEN as usize) - APP_ID_LEN as usize,
    };
    69 + addrs
        + app_id_prefix
        + varlen_size(opt_str(&rec.label).len().max(1))
        + varlen_size(opt_str(&rec.user_name).len().max(1))
        + varlen_size(opt_str(&rec.nflog_prefix).len().max(1))
        + varlen_size(opt_str(&rec.tunnel).len().max(1))
        + rec.conntrack.map_or(0, |_| nat::extra_len(rec))
}

struct Out<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Out<'_> {
    fn put(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
    /// A variable-length string; an absent (empty) one as a single NUL octet.
    fn varlen(&mut self, s: &str) {
        let value = if s.is_empty() {
            &[0u8][..]
        } else {
            s.as_bytes()
        };
        self.at += emit_varlen(&mut self.buf[self.at..], value);
    }
    /// Fixed-length, NUL-padded string with a NUL in the last octet.
    fn fixed_str(&mut self, s: &str, len: u16) {
        let s = truncate_str(s, len as usize - 1);
        self.buf[self.at..self.at + s.len()].copy_from_slice(s.as_bytes());
        self.buf[self.at + s.len()..self.at + len as usize].fill(0);
        self.at += len as usize;
    }
}

fn addr_bytes(a: IpAddr, v6: bool) -> [u8; 16] {
    let mut b = [0u8; 16];
    match a {
        IpAddr::V4(a) if !v6 => b[..4].copy_from_slice(&a.octets()),
        IpAddr::V4(a) => b = a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) if v6 => b = a.octets(),
        IpAddr::V6(a) => {
            b[..4].copy_from_slice(&a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED).octets())
        }
    }
    b
}

/// Writes the data record for `rec`; `out` must hold [`flow_record_len`] octets. No allocation.
///
/// A record whose destination family differs from its source's is written in the source's
/// family (IPv4-mapped addresses for IPv6).
pub fn emit_flow(rec: &FlowRecord, out: &mut [u8]) {
    emit_flow_with(rec, AppIdEncoding::Rfc6759, out)
}

/// [`emit_flow`] with `applicationId` encoded as `app_id`; `out` must hold
/// [`flow_record_len_with`] octets.
pub fn emit_flow_with(rec: &FlowRecord, app_id: AppIdEncoding, out: &mut [u8]) {
    let v6 = rec.src_addr.is_ipv6();
    let alen = if v6 { 16 } else { 4 };
    let mut o = Out { buf: out, at: 0 };
    o.put(&rec.group.unwrap_or(0).to_be_bytes());
    let id = application_id(rec.group.unwrap_or(0));
    match app_id {
        AppIdEncoding::Rfc6759 => o.put(&id),
        AppIdEncoding::Varlen => o.at += emit_varlen(&mut o.buf[o.at..], &id),
    }
    o.put(&addr_bytes(rec.src_addr, v6)[..alen]);
    o.put(&addr_bytes(rec.dst_addr, v6)[..alen]);
    o.put(&[rec.protocol, rec.tos]);
    o.put(&u16::from(rec.tcp_flags).to_be_bytes());
    o.put(&rec.src_port.to_be_bytes());
    o.put(&rec.dst_port.to_be_bytes());
    o.put(&rec.icmp_type_code.to_be_bytes());
    o.put(&rec.ipsec_spi.unwrap_or(0).to_be_bytes());
    o.put(&rec.ingress_if.to_be_bytes());
    o.put(&rec.egress_if.to_be_bytes());
    o.put(&rec.bytes.to_be_bytes());
    o.put(&rec.packets.to_be_bytes());
    o.put(&rec.start_ms.to_be_bytes());
    o.put(&rec.end_ms.to_be_bytes());
    o.put(&[
        rec.end_reason.map_or(0, EndReason::code),
        rec.direction.map_or(0xff, Direction::code),
    ]);
    o.put(&rec.mark.unwrap_or(0).to_be_bytes());
    o.varlen(opt_str(&rec.label));
    o.varlen(opt_str(&rec.user_name));
    o.varlen(opt_str(&rec.nflog_prefix));
    o.varlen(opt_str(&rec.tunnel));
    if let Some(c) = &rec.conntrack {
        nat::emit_extra(c, v6, &mut o);
    }
}

/// Writes the data record for `rec` into the writer; false when it does not fit.
pub fn write_flow(w: &mut MessageWriter, rec: &FlowRecord) -> bool {
    write_flow_with(w, rec, AppIdEncoding::Rfc6759)
}

/// [`write_flow`] with `applicationId` encoded as `app_id`.
pub fn write_flow_with(w: &mut MessageWriter, rec: &FlowRecord, app_id: AppIdEncoding) -> bool {
    let t = flow_template_with(rec, app_id);
    match w.reserve(t.id, flow_record_len_with(rec, app_id)) {
        Some(out) => {
            emit_flow_with(rec, app_id, out);
            true
        }
        None => false,
    }
}

/// Writes every labelflow template; false when they do not all fit.
pub fn write_templates(w: &mut MessageWriter) -> bool {
    write_templates_with(w, AppIdEncoding::Rfc6759)
}

/// [`write_templates`] with the data templates for `app_id`.
pub fn write_templates_with(w: &mut MessageWriter, app_id: AppIdEncoding) -> bool {
    ALL.iter().all(|t| match (t.id, app_id) {
        (FLOW_V4_ID, AppIdEncoding::Varlen) => w.write_template(&FLOW_V4_VARLEN_APP_ID),
        (FLOW_V6_ID, AppIdEncoding::Varlen) => w.write_template(&FLOW_V6_VARLEN_APP_ID),
        _ => w.write_template(t),
    })
}

/// One options record of labelflow's options templates.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OptionsRecord {
    /// A group's label (template 258).
    AppName {
        group: u32,
        name: String,
        description: String,
    },
    /// An interface's name (template 259).
    Interface {
        ifindex: u32,
        name: String,
        description: String,
    },
    /// A group's packet counters (template 260).
    GroupStats {
        group: u32,
        packets_total: u64,
        ignored_packets: u64,
    },
    /// The sampling parameters of an observation domain (template 261).
    Sampling {
        domain: u32,
        interval: u32,
        space: u32,
    },
}

impl OptionsRecord {
    pub fn template(&self) -> &'static TemplateDef {
        match self {
            OptionsRecord::AppName { .. } => &APP_NAMES,
            OptionsRecord::Interface { .. } => &INTERFACES,
            OptionsRecord::GroupStats { .. } => &GROUP_STATS,
            OptionsRecord::Sampling { .. } => &SAMPLING,
        }
    }

    pub fn buffer_len(&self) -> usize {
        self.template().fixed_record_len().unwrap_or(0)
    }

    /// Writes the record; `out` must hold [`OptionsRecord::buffer_len`] octets.
    pub fn emit(&self, out: &mut [u8]) {
        let mut o = Out { buf: out, at: 0 };
        match self {
            OptionsRecord::AppName {
                group,
                name,
                description,
            } => {
                o.put(&group.to_be_bytes());
                o.put(&application_id(*group));
                o.fixed_str(name, NAME_LEN);
                o.fixed_str(description, DESCRIPTION_LEN);
            }
            OptionsRecord::Interface {
                ifindex,
                name,
                description,
            } => {
                o.put(&ifindex.to_be_bytes());
                o.fixed_str(name, NAME_LEN);
                o.fixed_str(description, DESCRIPTION_LEN);
            }
            OptionsRecord::GroupStats {
                group,
                packets_total,
                ignored_packets,
            } => {
                o.put(&group.to_be_bytes());
                o.put(&packets_total.to_be_bytes());
                o.put(&ignored_packets.to_be_bytes());
            }
            OptionsRecord::Sampling {
                domain,
                interval,
                space,
            } => {
                o.put(&domain.to_be_bytes());
                o.put(&interval.to_be_bytes());
                o.put(&space.to_be_bytes());
            }
        }
    }

    /// Writes the record into the writer; false when it does not fit.
    ///
    /// An application name goes into a set of its own. nfdump 1.7.1 leaves the scope out of
    /// the stride between options records but not out of the field offsets
    /// (`Process_ipfix_nbar_option_data` in `src/netflow/ipfix.c`), so it reads only the
    /// first record of a set correctly; one record per set is valid IPFIX for everyone.
    pub fn write(&self, w: &mut MessageWriter) -> bool {
        let alone = matches!(self, OptionsRecord::AppName { .. });
        match w.reserve(self.template().id, self.buffer_len()) {
            Some(out) => {
                self.emit(out);
                if alone {
                    w.close_set();
                }
                true
            }
            None => false,
        }
    }

    /// Reads one of labelflow's options records from any template carrying the same
    /// elements; `None` when the record matches none of them.
    pub fn decode(rec: &Record<'_>) -> Option<OptionsRecord> {
        let (mut point, mut ifindex, mut domain) = (None, None, None);
        let (mut name, mut desc, mut ifname, mut ifdesc) = (None, None, None, None);
        let (mut total, mut ignored, mut interval, mut space) = (None, None, None, None);
        for (f, v) in rec.fields() {
            match f.ie() {
                Ie::ObservationPointId => point = Some(be_uint(v) as u32),
                Ie::IngressInterface => ifindex = Some(be_uint(v) as u32),
                Ie::ObservationDomainId => domain = Some(be_uint(v) as u32),
                Ie::ApplicationName => name = Some(text(v)),
                Ie::ApplicationDescription => desc = Some(text(v)),
                Ie::InterfaceName => ifname = Some(text(v)),
                Ie::InterfaceDescription => ifdesc = Some(text(v)),
                Ie::PacketTotalCount => total = Some(be_uint(v)),
                Ie::IgnoredPacketTotalCount => ignored = Some(be_uint(v)),
                Ie::SamplingPacketInterval => interval = Some(be_uint(v) as u32),
                Ie::SamplingPacketSpace => space = Some(be_uint(v) as u32),
                _ => {}
            }
        }
        if let (Some(group), Some(name)) = (point, name) {
            return Some(OptionsRecord::AppName {
                group,
                name,
                description: desc.unwrap_or_default(),
            });
        }
        if let (Some(ifindex), true) = (ifindex, ifname.is_some() || ifdesc.is_some()) {
            return Some(OptionsRecord::Interface {
                ifindex,
                name: ifname.unwrap_or_default(),
                description: ifdesc.unwrap_or_default(),
            });
        }
        if let (Some(group), Some(ignored)) = (point, ignored) {
            return Some(OptionsRecord::GroupStats {
                group,
                packets_total: total.unwrap_or(0),
                ignored_packets: ignored,
            });
        }
        if let Some(interval) = interval {
            return Some(OptionsRecord::Sampling {
                domain: domain.unwrap_or(0),
                interval,
                space: space.unwrap_or(0),
            });
        }
        None
    }
}

/// A string field: UTF-8 (lossy), trailing NULs removed.
fn text(v: &[u8]) -> String {
    let end = v.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    String::from_utf8_lossy(&v[..end]).into_owned()
}

fn non_empty(v: &[u8]) -> Option<String> {
    let s = text(v);
    (!s.is_empty()).then_some(s)
}

/// Reads a flow record from any data template, by element; unknown elements are skipped.
pub fn decode_flow(rec: &Record<'_>, domain: u32) -> FlowRecord {
    let mut f = FlowRecord {
        observation_domain: domain,
        ..FlowRecord::default()
    };
    for (spec, v) in rec.fields() {
        let n = be_uint(v);
        match spec.ie() {
            Ie::ObservationPointId => f.group = Some(n as u32),
            Ie::ApplicationId
                if f.group.is_none() && v.len() > 1 && v[0] == APP_ENGINE_USER_DEFINED =>
            {
                f.group = Some(be_uint(&v[1..]) as u32);
            }
            Ie::ApplicationName => f.label = non_empty(v),
            Ie::SourceIpv4Address | Ie::DestinationIpv4Address if v.len() == 4 => {
                let a = IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]));
                if spec.ie() == Ie::SourceIpv4Address {
                    f.src_addr = a
                } else {
                    f.dst_addr = a
                }
            }
            Ie::SourceIpv6Address | Ie::DestinationIpv6Address if v.len() == 16 => {
                let mut b = [0u8; 16];
                b.copy_from_slice(v);
                let a = IpAddr::V6(Ipv6Addr::from(b));
                if spec.ie() == Ie::SourceIpv6Address {
                    f.src_addr = a
                } else {
                    f.dst_addr = a
                }
            }
            Ie::ProtocolIdentifier => f.protocol = n as u8,
            Ie::IpClassOfService => f.tos = n as u8,
            Ie::TcpControlBits => f.tcp_flags = n as u8,
            Ie::SourceTransportPort => f.src_port = n as u16,
            Ie::DestinationTransportPort => f.dst_port = n as u16,
            Ie::IcmpTypeCodeIpv4 | Ie::IcmpTypeCodeIpv6 => f.icmp_type_code = n as u16,
            Ie::IpsecSpi => f.ipsec_spi = (n != 0).then_some(n as u32),
            Ie::IngressInterface => f.ingress_if = n as u32,
            Ie::EgressInterface => f.egress_if = n as u32,
            Ie::OctetDeltaCount => f.bytes = n,
            Ie::PacketDeltaCount => f.packets = n,
            Ie::FlowStartMilliseconds => f.start_ms = n,
            Ie::FlowEndMilliseconds => f.end_ms = n,
            Ie::FlowEndReason => f.end_reason = (n != 0).then(|| EndReason::from_code(n as u8)),
            Ie::FlowDirection => f.direction = Direction::from_code(n as u8),
            Ie::NetfilterMark => f.mark = (n != 0).then_some(n as u32),
            Ie::UserName => f.user_name = non_empty(v),
            Ie::NetfilterPrefix => f.nflog_prefix = non_empty(v),
            Ie::TunnelName => f.tunnel = non_empty(v),
            ie => nat::decode_field(&mut f, ie, v, n),
        }
    }
    f
}

/// Templates learned per observation domain, and the decoding of whole messages with them.
#[derive(Debug, Default, Clone)]
pub struct Decoder {
    templates: HashMap<(u32, u16), Template>,
}

impl Decoder {
    pub fn template(&self, domain: u32, id: u16) -> Option<&Template> {
        self.templates.get(&(domain, id))
    }

    /// Learns the templates of `msg`, then appends its flow and options records. Data sets
    /// with an unknown template are skipped (RFC 7011 section 8.4 allows data before its
    /// template over UDP). Stops at the first malformed part.
    pub fn decode<T: AsRef<[u8]>>(
        &mut self,
        msg: &Message<T>,
        flows: &mut Vec<FlowRecord>,
        options: &mut Vec<OptionsRecord>,
    ) -> Result<(), DecodeError> {
        let domain = msg.domain();
        for set in msg.sets() {
            let set = set?;
            if set.is_data() {
                let Some(t) = self.templates.get(&(domain, set.id)) else {
                    continue;
                };
                for rec in t.records(set.body) {
                    let rec = rec?;
                    if t.scope_count == 0 {
                        flows.push(decode_flow(&rec, domain));
                    } else if let Some(o) = OptionsRecord::decode(&rec) {
                        options.push(o);
                    }
                }
            } else {
                for tr in set.templates() {
                    let tr = tr?;
                    if tr.is_withdrawal() {
                        self.templates.remove(&(domain, tr.id));
                    } else {
                        self.templates.insert((domain, tr.id), tr.to_template()?);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Decodes the flow records of one self-contained message (templates included).
pub fn decode_message<T: AsRef<[u8]>>(msg: &Message<T>) -> Result<Vec<FlowRecord>, DecodeError> {
    let mut flows = Vec::new();
    Decoder::default().decode(msg, &mut flows, &mut Vec::new())?;
    Ok(flows)
}

#[cfg(test)]
mod tests;
