//! NetFlow v9 (RFC 3954) writer, carrying what v9 can of a [`FlowRecord`].
//!
//! v9 has no variable-length fields and no enterprise elements: the label travels as a
//! fixed 32-octet NUL-padded `applicationName`, the user name, NFLOG prefix and mark are not
//! carried. Flow times are milliseconds of system uptime (`FIRST_SWITCHED` 22,
//! `LAST_SWITCHED` 21) against the header's `sys_uptime` and `unix_secs`.
//!
//! ```text
//!  version 9 | count | sys_uptime | unix_secs | package sequence | source id   (20 octets)
//!  flowset 0: templates | flowset 1: options templates | flowsets >= 256: data (4-aligned)
//! ```

use std::net::IpAddr;

use crate::ie::{iana, FieldSpec};
use crate::pack::Packer;
use crate::record::{Direction, EndReason, FlowRecord};
use crate::template::{application_id, truncate_str, DESCRIPTION_LEN, NAME_LEN};

pub const VERSION: u16 = 9;
pub const HEADER_LEN: usize = 20;
pub const TEMPLATE_FLOWSET_ID: u16 = 0;
pub const OPTIONS_TEMPLATE_FLOWSET_ID: u16 = 1;
/// RFC 3954 section 6.1 scope field types.
pub const SCOPE_SYSTEM: u16 = 1;
pub const SCOPE_INTERFACE: u16 = 2;
/// v9 field types without an IPFIX name here.
pub const LAST_SWITCHED: u16 = 21;
pub const FIRST_SWITCHED: u16 = 22;
pub const SAMPLING_INTERVAL: u16 = 34;
pub const SAMPLING_ALGORITHM: u16 = 35;

/// A v9 template (no scope) or options template (RFC 3954 sections 5.2, 6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateDef {
    pub id: u16,
    pub scope: &'static [FieldSpec],
    pub fields: &'static [FieldSpec],
}

impl TemplateDef {
    pub fn is_options(&self) -> bool {
        !self.scope.is_empty()
    }
    pub fn buffer_len(&self) -> usize {
        (if self.is_options() { 6 } else { 4 }) + 4 * (self.scope.len() + self.fields.len())
    }
    pub fn record_len(&self) -> usize {
        self.scope
            .iter()
            .chain(self.fields)
            .map(|f| f.length as usize)
            .sum()
    }
    pub fn emit(&self, out: &mut [u8]) {
        out[0..2].copy_from_slice(&self.id.to_be_bytes());
        let mut at = if self.is_options() {
            out[2..4].copy_from_slice(&((self.scope.len() * 4) as u16).to_be_bytes());
            out[4..6].copy_from_slice(&((self.fields.len() * 4) as u16).to_be_bytes());
            6
        } else {
            out[2..4].copy_from_slice(&(self.fields.len() as u16).to_be_bytes());
            4
        };
        for f in self.scope.iter().chain(self.fields) {
            out[at..at + 2].copy_from_slice(&f.id.to_be_bytes());
            out[at + 2..at + 4].copy_from_slice(&f.length.to_be_bytes());
            at += 4;
        }
    }
}

const fn i(id: u16, len: u16) -> FieldSpec {
    FieldSpec::iana(id, len)
}

macro_rules! v9_flow_fields {
    ($src:expr, $dst:expr, $icmp:expr, $alen:expr) => {
        &[
            i(iana::OBSERVATION_POINT_ID, 4),
            i(iana::APPLICATION_ID, 5),
            i($src, $alen),
            i($dst, $alen),
            i(iana::PROTOCOL_IDENTIFIER, 1),
            i(iana::IP_CLASS_OF_SERVICE, 1),
            i(iana::TCP_CONTROL_BITS, 1),
            i(iana::SOURCE_TRANSPORT_PORT, 2),
            i(iana::DESTINATION_TRANSPORT_PORT, 2),
            i($icmp, 2),
            i(iana::IPSEC_SPI, 4),
            i(iana::INGRESS_INTERFACE, 4),
            i(iana::EGRESS_INTERFACE, 4),
            i(iana::OCTET_DELTA_COUNT, 8),
            i(iana::PACKET_DELTA_COUNT, 8),
            i(FIRST_SWITCHED, 4),
            i(LAST_SWITCHED, 4),
            i(iana::FLOW_END_REASON, 1),
            i(iana::FLOW_DIRECTION, 1),
            i(iana::APPLICATION_NAME, NAME_LEN),
        ]
    };
}

pub const FLOW_V4: TemplateDef = TemplateDef {
    id: 256,
    scope: &[],
    fields: v9_flow_fields!(
        iana::SOURCE_IPV4_ADDRESS,
        iana::DESTINATION_IPV4_ADDRESS,
        iana::ICMP_TYPE_CODE_IPV4,
        4
    ),
};
pub const FLOW_V6: TemplateDef = TemplateDef {
    id: 257,
    scope: &[],
    fields: v9_flow_fields!(
        iana::SOURCE_IPV6_ADDRESS,
        iana::DESTINATION_IPV6_ADDRESS,
        iana::ICMP_TYPE_CODE_IPV6,
        16
    ),
};
pub const APP_NAMES: TemplateDef = TemplateDef {
    id: 258,
    scope: &[i(SCOPE_SYSTEM, 4)],
    fields: &[
        i(iana::OBSERVATION_POINT_ID, 4),
        i(iana::APPLICATION_ID, 5),
        i(iana::APPLICATION_NAME, NAME_LEN),
        i(iana::APPLICATION_DESCRIPTION, DESCRIPTION_LEN),
    ],
};
pub const INTERFACES: TemplateDef = TemplateDef {
    id: 259,
    scope: &[i(SCOPE_INTERFACE, 4)],
    fields: &[
        i(iana::INTERFACE_NAME, NAME_LEN),
        i(iana::INTERFACE_DESCRIPTION, DESCRIPTION_LEN),
    ],
};
pub const GROUP_STATS: TemplateDef = TemplateDef {
    id: 260,
    scope: &[i(SCOPE_SYSTEM, 4)],
    fields: &[
        i(iana::OBSERVATION_POINT_ID, 4),
        i(iana::PACKET_TOTAL_COUNT, 8),
        i(iana::IGNORED_PACKET_TOTAL_COUNT, 8),
    ],
};
pub const SAMPLING: TemplateDef = TemplateDef {
    id: 261,
    scope: &[i(SCOPE_SYSTEM, 4)],
    fields: &[i(SAMPLING_INTERVAL, 4), i(SAMPLING_ALGORITHM, 1)],
};

pub const ALL: [TemplateDef; 6] = [
    FLOW_V4,
    FLOW_V6,
    APP_NAMES,
    INTERFACES,
    GROUP_STATS,
    SAMPLING,
];

/// Milliseconds of uptime for a wall-clock time, against the exporter's boot time (wraps
/// like the 32-bit uptime counter; times before boot are clamped to boot).
pub fn uptime_ms(wall_ms: u64, boot_ms: u64) -> u32 {
    wall_ms.saturating_sub(boot_ms) as u32
}

/// Octets of a v9 data record for `rec`.
pub fn flow_record_len(rec: &FlowRecord) -> usize {
    if rec.src_addr.is_ipv4() {
        FLOW_V4.record_len()
    } else {
        FLOW_V6.record_len()
    }
}

fn put(out: &mut [u8], at: &mut usize, b: &[u8]) {
    out[*at..*at + b.len()].copy_from_slice(b);
    *at += b.len();
}

fn put_str(out: &mut [u8], at: &mut usize, s: &str, len: u16) {
    let s = truncate_str(s, len as usize - 1);
    out[*at..*at + s.len()].copy_from_slice(s.as_bytes());
    out[*at + s.len()..*at + len as usize].fill(0);
    *at += len as usize;
}

fn addr(a: IpAddr, v6: bool) -> [u8; 16] {
    match (a, v6) {
        (IpAddr::V4(a), false) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            b
        }
        (IpAddr::V4(a), true) => a.to_ipv6_mapped().octets(),
        (IpAddr::V6(a), true) => a.octets(),
        (IpAddr::V6(a), false) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.to_ipv4_mapped().map_or([0; 4], |a| a.octets()));
            b
        }
    }
}

/// Writes the v9 data record for `rec`; `out` holds [`flow_record_len`] octets.
pub fn emit_flow(rec: &FlowRecord, boot_ms: u64, out: &mut [u8]) {
    let v6 = rec.src_addr.is_ipv6();
    let alen = if v6 { 16 } else { 4 };
    let group = rec.group.unwrap_or(0);
    let mut at = 0;
    put(out, &mut at, &group.to_be_bytes());
    put(out, &mut at, &application_id(group));
    put(out, &mut at, &addr(rec.src_addr, v6)[..alen]);
    put(out, &mut at, &addr(rec.dst_addr, v6)[..alen]);
    put(out, &mut at, &[rec.protocol, rec.tos, rec.tcp_flags]);
    put(out, &mut at, &rec.src_port.to_be_bytes());
    put(out, &mut at, &rec.dst_port.to_be_bytes());
    put(out, &mut at, &rec.icmp_type_code.to_be_bytes());
    put(out, &mut at, &rec.ipsec_spi.unwrap_or(0).to_be_bytes());
    put(out, &mut at, &rec.ingress_if.to_be_bytes());
    put(out, &mut at, &rec.egress_if.to_be_bytes());
    put(out, &mut at, &rec.bytes.to_be_bytes());
    put(out, &mut at, &rec.packets.to_be_bytes());
    put(
        out,
        &mut at,
        &uptime_ms(rec.start_ms, boot_ms).to_be_bytes(),
    );
    put(out, &mut at, &uptime_ms(rec.end_ms, boot_ms).to_be_bytes());
    put(
        out,
        &mut at,
        &[
            rec.end_reason.map_or(0, EndReason::code),
            rec.direction.map_or(0xff, Direction::code),
        ],
    );
    put_str(out, &mut at, rec.label.as_deref().unwrap_or(""), NAME_LEN);
}

/// Options data of the v9 options templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionsData<'a> {
    AppName {
        source_id: u32,
        group: u32,
        name: &'a str,
        description: &'a str,
    },
    Interface {
        ifindex: u32,
        name: &'a str,
        description: &'a str,
    },
    GroupStats {
        source_id: u32,
        group: u32,
        packets_total: u64,
        ignored_packets: u64,
    },
    /// Every packet observed: interval 1, algorithm 1 (deterministic).
    Sampling { source_id: u32, interval: u32 },
}

impl OptionsData<'_> {
    pub fn template(&self) -> &'static TemplateDef {
        match self {
            OptionsData::AppName { .. } => &APP_NAMES,
            OptionsData::Interface { .. } => &INTERFACES,
            OptionsData::GroupStats { .. } => &GROUP_STATS,
            OptionsData::Sampling { .. } => &SAMPLING,
        }
    }
    pub fn emit(&self, out: &mut [u8]) {
        let mut at = 0;
        match *self {
            OptionsData::AppName {
                source_id,
                group,
                name,
                description,
            } => {
                put(out, &mut at, &source_id.to_be_bytes());
                put(out, &mut at, &group.to_be_bytes());
                put(out, &mut at, &application_id(group));
                put_str(out, &mut at, name, NAME_LEN);
                put_str(out, &mut at, description, DESCRIPTION_LEN);
            }
            OptionsData::Interface {
                ifindex,
                name,
                description,
            } => {
                put(out, &mut at, &ifindex.to_be_bytes());
                put_str(out, &mut at, name, NAME_LEN);
                put_str(out, &mut at, description, DESCRIPTION_LEN);
            }
            OptionsData::GroupStats {
                source_id,
                group,
                packets_total,
                ignored_packets,
            } => {
                put(out, &mut at, &source_id.to_be_bytes());
                put(out, &mut at, &group.to_be_bytes());
                put(out, &mut at, &packets_total.to_be_bytes());
                put(out, &mut at, &ignored_packets.to_be_bytes());
            }
            OptionsData::Sampling {
                source_id,
                interval,
            } => {
                put(out, &mut at, &source_id.to_be_bytes());
                put(out, &mut at, &interval.to_be_bytes());
                put(out, &mut at, &[1]);
            }
        }
    }
}

/// Fills one NetFlow v9 export packet at a time, bounded by the MTU. Flowsets are padded to
/// 4 octets (RFC 3954 section 5.3: "SHOULD insert some padding bytes so that the subsequent
/// FlowSet starts at a 4-byte aligned boundary"); `count` is patched at `finish`.
#[derive(Debug, Clone)]
pub struct PacketWriter {
    packer: Packer,
    data_records: u32,
}

impl PacketWriter {
    pub fn new(mtu: usize) -> Self {
        PacketWriter {
            packer: Packer::new(mtu, HEADER_LEN, 4),
            data_records: 0,
        }
    }

    /// Starts a packet. `sequence` counts export packets (RFC 3954 section 5.1).
    pub fn begin(&mut self, sys_uptime: u32, unix_secs: u32, sequence: u32, source_id: u32) {
        let h = self.packer.begin();
        h[0..2].copy_from_slice(&VERSION.to_be_bytes());
        h[4..8].copy_from_slice(&sys_uptime.to_be_bytes());
        h[8..12].copy_from_slice(&unix_secs.to_be_bytes());
        h[12..16].copy_from_slice(&sequence.to_be_bytes());
        h[16..20].copy_from_slice(&source_id.to_be_bytes());
        self.data_records = 0;
    }

    pub fn len(&self) -> usize {
        self.packer.len()
    }
    pub fn is_empty(&self) -> bool {
        self.packer.len() <= HEADER_LEN
    }
    pub fn data_records(&self) -> u32 {
        self.data_records
    }

    /// Whether a record of `len` octets fits in flowset `set_id` (padding of the flowset it
    /// would close counted, plus up to 3 octets of its own padding).
    pub fn fits(&self, set_id: u16, len: usize) -> bool {
        self.packer.fits(set_id, len + 3)
    }

    pub fn reserve(&mut self, set_id: u16, len: usize) -> Option<&mut [u8]> {
        // Keep room for this flowset's final padding.
        if !self.fits(set_id, len) {
            return None;
        }
        if set_id >= 256 {
            self.data_records += 1;
        }
        self.packer.reserve(set_id, len)
    }

    pub fn write_template(&mut self, t: &TemplateDef) -> bool {
        let set = if t.is_options() {
            OPTIONS_TEMPLATE_FLOWSET_ID
        } else {
            TEMPLATE_FLOWSET_ID
        };
        match self.reserve(set, t.buffer_len()) {
            Some(out) => {
                t.emit(out);
                true
            }
            None => false,
        }
    }

    pub fn write_flow(&mut self, rec: &FlowRecord, boot_ms: u64) -> bool {
        let t = if rec.src_addr.is_ipv4() {
            &FLOW_V4
        } else {
            &FLOW_V6
        };
        match self.reserve(t.id, t.record_len()) {
            Some(out) => {
                emit_flow(rec, boot_ms, out);
                true
            }
            None => false,
        }
    }

    pub fn write_options(&mut self, o: &OptionsData<'_>) -> bool {
        let t = o.template();
        match self.reserve(t.id, t.record_len()) {
            Some(out) => {
                o.emit(out);
                true
            }
            None => false,
        }
    }

    /// Pads the last flowset, patches `count` (every record: templates, options, data) and
    /// returns the packet.
    pub fn finish(&mut self) -> &[u8] {
        let count = self.packer.records() as u16;
        let buf = self.packer.finish();
        buf[2..4].copy_from_slice(&count.to_be_bytes());
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_template_and_padding_fixture() {
        let mut w = PacketWriter::new(1400);
        w.begin(1000, 0x6553_f100, 3, 9);
        assert!(w.write_template(&SAMPLING));
        assert!(w.write_options(&OptionsData::Sampling {
            source_id: 9,
            interval: 1
        }));
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x00, 0x09, 0x00, 0x02,             // version 9, count 2
            0x00, 0x00, 0x03, 0xe8,             // sys_uptime 1000 ms
            0x65, 0x53, 0xf1, 0x00,             // unix_secs
            0x00, 0x00, 0x00, 0x03,             // package sequence 3
            0x00, 0x00, 0x00, 0x09,             // source id 9
            0x00, 0x01, 0x00, 0x18,             // options template flowset, length 24
            0x01, 0x05, 0x00, 0x04, 0x00, 0x08, //   template 261, scope 4 octets, options 8
            0x00, 0x01, 0x00, 0x04,             //   scope System, 4
            0x00, 0x22, 0x00, 0x04,             //   SAMPLING_INTERVAL, 4
            0x00, 0x23, 0x00, 0x01,             //   SAMPLING_ALGORITHM, 1
            0x00, 0x00,                         //   padding
            0x01, 0x05, 0x00, 0x10,             // data flowset 261, length 16
            0x00, 0x00, 0x00, 0x09,             //   system 9
            0x00, 0x00, 0x00, 0x01,             //   interval 1
            0x01,                               //   deterministic
            0x00, 0x00, 0x00,                   //   padding
        ];
        assert_eq!(w.finish(), expected);
    }

    #[test]
    fn flow_lengths_and_mtu() {
        assert_eq!(
            FLOW_V4.record_len(),
            4 + 5 + 8 + 3 + 6 + 4 + 8 + 16 + 8 + 2 + 32
        );
        let mut w = PacketWriter::new(200);
        w.begin(0, 0, 0, 0);
        let rec = FlowRecord::default();
        let mut n = 0;
        while w.write_flow(&rec, 0) {
            n += 1;
        }
        assert_eq!(n, 1);
        assert!(w.finish().len() <= 200);
        assert_eq!(w.finish().len() % 4, 0);
    }
}
