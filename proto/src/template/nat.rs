//! The conntrack data templates: labelflow's flow template plus what a connection-tracking
//! source knows about the connection.
//!
//! | template | id | added to [`FLOW_V4`](super::FLOW_V4) / [`FLOW_V6`](super::FLOW_V6) |
//! |---|---|---|
//! | [`FLOW_CT_V4`] | 262 | `postNATSourceIPv4Address` (225), `postNATDestinationIPv4Address` (226), `postNAPTSourceTransportPort` (227), `postNAPTDestinationTransportPort` (228), `biflowDirection` (239), `flowId` (148, reduced to 4 octets: the kernel's `CTA_ID`), labelflow `ctZone` and `ctTcpState` |
//! | [`FLOW_CT_V6`] | 263 | the same with `postNATSourceIPv6Address` (281) and `postNATDestinationIPv6Address` (282) |
//! | [`FLOW_BI_V4`] / [`FLOW_BI_V6`] | 264 / 265 | a biflow (RFC 5103): [`FLOW_CT_V4`] / [`FLOW_CT_V6`] plus `reverseOctetDeltaCount` and `reversePacketDeltaCount` (enterprise 29305, elements 1 and 2) |
//!
//! The post-NAT elements are RFC 8158's reading of the IANA registry: the packet's addresses
//! after the translation, in the same direction as the record's own addresses. A record
//! without a TCP state carries 0xff there (`tcp_conntrack` has no such value).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{addr_bytes, AppIdEncoding, FlowRecord, Out, APP_ID_LEN};
use crate::ie::{
    iana, labelflow, netfilter, FieldSpec, Ie, PEN_LABELFLOW, PEN_NETFILTER, PEN_REVERSE, VARLEN,
};
use crate::ipfix::{MessageWriter, TemplateDef};
use crate::record::{BiflowDirection, ConnInfo};

pub const FLOW_CT_V4_ID: u16 = 262;
pub const FLOW_CT_V6_ID: u16 = 263;
pub const FLOW_BI_V4_ID: u16 = 264;
pub const FLOW_BI_V6_ID: u16 = 265;

/// `ctTcpState` of a record without TCP state.
const NO_TCP_STATE: u8 = 0xff;

const fn i(id: u16, len: u16) -> FieldSpec {
    FieldSpec::iana(id, len)
}

const ZONE: FieldSpec = FieldSpec::enterprise(PEN_LABELFLOW, labelflow::CT_ZONE, 2);
const REV_OCTETS: FieldSpec = FieldSpec::enterprise(PEN_REVERSE, iana::OCTET_DELTA_COUNT, 8);
const REV_PACKETS: FieldSpec = FieldSpec::enterprise(PEN_REVERSE, iana::PACKET_DELTA_COUNT, 8);
const TCP_STATE: FieldSpec = FieldSpec::enterprise(PEN_LABELFLOW, labelflow::CT_TCP_STATE, 1);

macro_rules! ct_fields {
    ($src:expr, $dst:expr, $icmp:expr, $alen:expr, $app:expr, $nsrc:expr, $ndst:expr $(, $rev:expr)*) => {
        flow_fields!(
            $src,
            $dst,
            $icmp,
            $alen,
            $app,
            i($nsrc, $alen),
            i($ndst, $alen),
            i(iana::POST_NAPT_SOURCE_TRANSPORT_PORT, 2),
            i(iana::POST_NAPT_DESTINATION_TRANSPORT_PORT, 2),
            i(iana::BIFLOW_DIRECTION, 1),
            i(iana::FLOW_ID, 4),
            ZONE,
            TCP_STATE
            $(, $rev)*
        )
    };
}

macro_rules! ct_v4 {
    ($id:expr, $app:expr $(, $rev:expr)*) => {
        TemplateDef {
            id: $id,
            scope_count: 0,
            fields: ct_fields!(
                iana::SOURCE_IPV4_ADDRESS,
                iana::DESTINATION_IPV4_ADDRESS,
                iana::ICMP_TYPE_CODE_IPV4,
                4,
                $app,
                iana::POST_NAT_SOURCE_IPV4_ADDRESS,
                iana::POST_NAT_DESTINATION_IPV4_ADDRESS
                $(, $rev)*
            ),
        }
    };
}

macro_rules! ct_v6 {
    ($id:expr, $app:expr $(, $rev:expr)*) => {
        TemplateDef {
            id: $id,
            scope_count: 0,
            fields: ct_fields!(
                iana::SOURCE_IPV6_ADDRESS,
                iana::DESTINATION_IPV6_ADDRESS,
                iana::ICMP_TYPE_CODE_IPV6,
                16,
                $app,
                iana::POST_NAT_SOURCE_IPV6_ADDRESS,
                iana::POST_NAT_DESTINATION_IPV6_ADDRESS
                $(, $rev)*
            ),
        }
    };
}

pub const FLOW_CT_V4: TemplateDef = ct_v4!(FLOW_CT_V4_ID, APP_ID_LEN);
pub const FLOW_CT_V6: TemplateDef = ct_v6!(FLOW_CT_V6_ID, APP_ID_LEN);
/// [`FLOW_CT_V4`] with a variable-length `applicationId`.
pub const FLOW_CT_V4_VARLEN_APP_ID: TemplateDef = ct_v4!(FLOW_CT_V4_ID, VARLEN);
/// [`FLOW_CT_V6`] with a variable-length `applicationId`.
pub const FLOW_CT_V6_VARLEN_APP_ID: TemplateDef = ct_v6!(FLOW_CT_V6_ID, VARLEN);

pub const FLOW_BI_V4: TemplateDef = ct_v4!(FLOW_BI_V4_ID, APP_ID_LEN, REV_OCTETS, REV_PACKETS);
pub const FLOW_BI_V6: TemplateDef = ct_v6!(FLOW_BI_V6_ID, APP_ID_LEN, REV_OCTETS, REV_PACKETS);
/// [`FLOW_BI_V4`] with a variable-length `applicationId`.
pub const FLOW_BI_V4_VARLEN_APP_ID: TemplateDef =
    ct_v4!(FLOW_BI_V4_ID, VARLEN, REV_OCTETS, REV_PACKETS);
/// [`FLOW_BI_V6`] with a variable-length `applicationId`.
pub const FLOW_BI_V6_VARLEN_APP_ID: TemplateDef =
    ct_v6!(FLOW_BI_V6_ID, VARLEN, REV_OCTETS, REV_PACKETS);

/// The conntrack templates for `app_id`: unidirectional v4, v6, biflow v4, v6.
pub fn conntrack_templates(app_id: AppIdEncoding) -> [&'static TemplateDef; 4] {
    match app_id {
        AppIdEncoding::Rfc6759 => [&FLOW_CT_V4, &FLOW_CT_V6, &FLOW_BI_V4, &FLOW_BI_V6],
        AppIdEncoding::Varlen => [
            &FLOW_CT_V4_VARLEN_APP_ID,
            &FLOW_CT_V6_VARLEN_APP_ID,
            &FLOW_BI_V4_VARLEN_APP_ID,
            &FLOW_BI_V6_VARLEN_APP_ID,
        ],
    }
}

/// The conntrack template of a record (its `conntrack` is set).
pub(super) fn template(rec: &FlowRecord, app_id: AppIdEncoding) -> &'static TemplateDef {
    let bi = rec.conntrack.is_some_and(|c| c.reverse.is_some());
    conntrack_templates(app_id)[usize::from(rec.src_addr.is_ipv6()) + 2 * usize::from(bi)]
}

/// Octets the conntrack elements add to a record.
pub(super) fn extra_len(rec: &FlowRecord) -> usize {
    let addrs = if rec.src_addr.is_ipv4() { 8 } else { 32 };
    let reverse = if rec.conntrack.is_some_and(|c| c.reverse.is_some()) {
        16
    } else {
        0
    };
    addrs + 2 + 2 + 1 + 4 + 2 + 1 + reverse
}

/// Writes the conntrack elements, in [`ct_fields`] order.
pub(super) fn emit_extra(c: &ConnInfo, v6: bool, o: &mut Out<'_>) {
    let alen = if v6 { 16 } else { 4 };
    o.put(&addr_bytes(c.post_nat_src, v6)[..alen]);
    o.put(&addr_bytes(c.post_nat_dst, v6)[..alen]);
    o.put(&c.post_napt_src_port.to_be_bytes());
    o.put(&c.post_napt_dst_port.to_be_bytes());
    o.put(&[c.direction.code()]);
    o.put(&c.conn_id.to_be_bytes());
    o.put(&c.zone.to_be_bytes());
    o.put(&[c.tcp_state.unwrap_or(NO_TCP_STATE)]);
    if let Some((bytes, packets)) = c.reverse {
        o.put(&bytes.to_be_bytes());
        o.put(&packets.to_be_bytes());
    }
}

/// Writes the conntrack data templates; false when they do not all fit.
pub fn write_conntrack_templates_with(w: &mut MessageWriter, app_id: AppIdEncoding) -> bool {
    conntrack_templates(app_id)
        .iter()
        .all(|t| w.write_template(t))
}

fn conn(f: &mut FlowRecord) -> &mut ConnInfo {
    f.conntrack.get_or_insert(ConnInfo {
        post_nat_src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        post_nat_dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        post_napt_src_port: 0,
        post_napt_dst_port: 0,
        direction: BiflowDirection::Other(0),
        zone: 0,
        tcp_state: None,
        conn_id: 0,
        reverse: None,
        reply_icmp_type_code: 0,
    })
}

fn addr(v: &[u8]) -> Option<IpAddr> {
    match v.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
        16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(v);
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Reads one conntrack element into `f` (any other element is ignored). `n` is `v` read as
/// an unsigned integer.
pub(crate) fn decode_field(f: &mut FlowRecord, ie: Ie, v: &[u8], n: u64) {
    match ie {
        Ie::PostNatSourceIpv4Address | Ie::PostNatSourceIpv6Address => {
            if let Some(a) = addr(v) {
                conn(f).post_nat_src = a;
            }
        }
        Ie::PostNatDestinationIpv4Address | Ie::PostNatDestinationIpv6Address => {
            if let Some(a) = addr(v) {
                conn(f).post_nat_dst = a;
            }
        }
        Ie::PostNaptSourceTransportPort => conn(f).post_napt_src_port = n as u16,
        Ie::PostNaptDestinationTransportPort => conn(f).post_napt_dst_port = n as u16,
        Ie::BiflowDirection => conn(f).direction = BiflowDirection::from_code(n as u8),
        Ie::FlowId => conn(f).conn_id = n as u32,
        Ie::CtZone => conn(f).zone = n as u16,
        Ie::CtTcpState => conn(f).tcp_state = (n as u8 != NO_TCP_STATE).then_some(n as u8),
        Ie::ReverseOctetDeltaCount => conn(f).reverse.get_or_insert((0, 0)).0 = n,
        Ie::ReversePacketDeltaCount => conn(f).reverse.get_or_insert((0, 0)).1 = n,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipfix::Message;
    use crate::template::{decode_message, write_flow_with, write_templates_with};

    fn sample(v6: bool) -> FlowRecord {
        let (src, dst, nsrc, ndst): (IpAddr, IpAddr, IpAddr, IpAddr) = if v6 {
            (
                "fd00::2".parse().unwrap(),
                "2001:db8::1".parse().unwrap(),
                "2001:db8:ffff::1".parse().unwrap(),
                "2001:db8::1".parse().unwrap(),
            )
        } else {
            (
                "10.1.0.2".parse().unwrap(),
                "198.51.100.1".parse().unwrap(),
                "203.0.113.1".parse().unwrap(),
                "198.51.100.1".parse().unwrap(),
            )
        };
        FlowRecord {
            observation_domain: 1,
            group: Some(0x1_0000),
            label: Some("web".into()),
            src_addr: src,
            dst_addr: dst,
            protocol: 6,
            src_port: 40000,
            dst_port: 80,
            bytes: 5000,
            packets: 12,
            start_ms: 1_700_000_000_000,
            end_ms: 1_700_000_005_000,
            end_reason: Some(crate::EndReason::EndOfFlow),
            mark: Some(0x10),
            conntrack: Some(ConnInfo {
                post_nat_src: nsrc,
                post_nat_dst: ndst,
                post_napt_src_port: 61000,
                post_napt_dst_port: 80,
                direction: BiflowDirection::Initiator,
                zone: 7,
                tcp_state: Some(7),
                conn_id: 0xdead_beef,
                reverse: None,
                reply_icmp_type_code: 0,
            }),
            ..FlowRecord::default()
        }
    }

    #[test]
    fn conntrack_records_round_trip_in_both_families_and_encodings() {
        for app_id in [AppIdEncoding::Rfc6759, AppIdEncoding::Varlen] {
            let mut w = MessageWriter::new(8000);
            w.begin(1_700_000_000, 0, 1);
            assert!(write_templates_with(&mut w, app_id));
            assert!(write_conntrack_templates_with(&mut w, app_id));
            let mut recs = vec![sample(false), sample(true)];
            let mut udp = sample(false);
            udp.protocol = 17;
            udp.conntrack.as_mut().unwrap().tcp_state = None;
            udp.conntrack.as_mut().unwrap().direction = BiflowDirection::ReverseInitiator;
            recs.push(udp);
            let mut bi = sample(true);
            bi.conntrack.as_mut().unwrap().reverse = Some((70_000, 50));
            recs.push(bi);
            for r in &recs {
                assert!(write_flow_with(&mut w, r, app_id));
            }
            let msg = Message::new_checked(w.finish()).unwrap();
            assert_eq!(decode_message(&msg).unwrap(), recs);
        }
    }

    #[test]
    fn conntrack_v4_extra_fields_on_the_wire() {
        let rec = sample(false);
        let len = super::super::flow_record_len(&rec);
        let mut out = vec![0u8; len];
        super::super::emit_flow(&rec, &mut out);
        #[rustfmt::skip]
        let tail: &[u8] = &[
            203, 0, 113, 1,         // postNATSourceIPv4Address
            198, 51, 100, 1,        // postNATDestinationIPv4Address
            0xee, 0x48, 0x00, 80,   // postNAPT ports 61000, 80
            1,                      // biflowDirection initiator
            0xde, 0xad, 0xbe, 0xef, // flowId
            0x00, 7,                // ctZone 7
            7,                      // ctTcpState TIME_WAIT
        ];
        assert_eq!(&out[len - tail.len()..], tail);
        assert_eq!(FLOW_CT_V4.fixed_record_len(), None);
    }

    #[test]
    fn a_biflow_splits_into_its_two_directions() {
        let mut bi = sample(false);
        bi.conntrack.as_mut().unwrap().reverse = Some((12_000, 8));
        bi.conntrack.as_mut().unwrap().reply_icmp_type_code = 0;
        let [fwd, rev] = bi.unidirectional();
        let (fwd, rev) = (fwd.unwrap(), rev.unwrap());
        assert_eq!((fwd.bytes, fwd.conntrack.unwrap().reverse), (5000, None));
        assert_eq!(rev.src_addr, "198.51.100.1".parse::<IpAddr>().unwrap());
        assert_eq!(rev.dst_addr, "203.0.113.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (rev.src_port, rev.dst_port, rev.bytes, rev.packets),
            (80, 61000, 12_000, 8)
        );
        let rc = rev.conntrack.unwrap();
        assert_eq!(rc.direction, BiflowDirection::ReverseInitiator);
        assert_eq!(rc.post_nat_dst, "10.1.0.2".parse::<IpAddr>().unwrap());
        assert_eq!((rc.post_napt_src_port, rc.post_napt_dst_port), (80, 40000));
        bi.conntrack.as_mut().unwrap().reverse = Some((0, 0));
        assert!(bi.unidirectional()[1].is_none());
        let uni = sample(false);
        assert_eq!(uni.unidirectional(), [Some(uni.clone()), None]);
    }
}
