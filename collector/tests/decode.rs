//! Decoding through the session table: hand-built v5, v9 and IPFIX messages mapped into
//! `FlowRecord`s, and bad input (random bytes, truncation, template id collisions between
//! exporters, absurd lengths) counted without harming other exporters.

use std::net::IpAddr;
use std::num::NonZeroUsize;

use labelflow_collector::session::{DecodeError, SessionTable};
use labelflow_proto::{Direction, EndReason, FlowRecord};
use proptest::prelude::*;

fn table() -> SessionTable {
    SessionTable::new(
        NonZeroUsize::new(8).unwrap(),
        NonZeroUsize::new(16).unwrap(),
    )
}

fn ingest(
    t: &mut SessionTable,
    from: &str,
    d: &[u8],
) -> (Result<(), DecodeError>, Vec<FlowRecord>) {
    let mut recs = Vec::new();
    let mut tmpl = Vec::new();
    let r = t.ingest(from.parse().unwrap(), d, &mut recs, &mut tmpl);
    (r.map(|_| ()), recs)
}

fn with_len(mut m: Vec<u8>) -> Vec<u8> {
    let n = m.len() as u16;
    m[2..4].copy_from_slice(&n.to_be_bytes());
    m
}

/// IPFIX template 256 with every element labelflow exports, and options template 257
/// (scope applicationId → applicationName).
#[rustfmt::skip]
fn labelflow_templates() -> Vec<u8> {
    with_len(vec![
        0x00, 0x0a, 0x00, 0x00,             // version 10, length (patched)
        0x65, 0x00, 0x00, 0x00,             // export time 1694498816
        0x00, 0x00, 0x00, 0x00,             // sequence 0
        0x00, 0x00, 0x00, 0x05,             // observation domain 5
        0x00, 0x02, 0x00, 0x58,             // template set, length 88
        0x01, 0x00, 0x00, 0x12,             // template 256, 18 fields
        0x00, 0x1b, 0x00, 0x10,             //   sourceIPv6Address
        0x00, 0x1c, 0x00, 0x10,             //   destinationIPv6Address
        0x00, 0x04, 0x00, 0x01,             //   protocolIdentifier
        0x00, 0x8b, 0x00, 0x02,             //   icmpTypeCodeIPv6
        0x01, 0x27, 0x00, 0x04,             //   IPSecSPI (295)
        0x00, 0x0a, 0x00, 0x04,             //   ingressInterface
        0x00, 0x0e, 0x00, 0x04,             //   egressInterface
        0x00, 0x01, 0x00, 0x08,             //   octetDeltaCount
        0x00, 0x02, 0x00, 0x08,             //   packetDeltaCount
        0x00, 0x98, 0x00, 0x08,             //   flowStartMilliseconds
        0x00, 0x99, 0x00, 0x08,             //   flowEndMilliseconds
        0x00, 0x88, 0x00, 0x01,             //   flowEndReason
        0x00, 0x3d, 0x00, 0x01,             //   flowDirection
        0x00, 0x8a, 0x00, 0x04,             //   observationPointId
        0x00, 0x5f, 0x00, 0x05,             //   applicationId (engine + 4-byte selector)
        0x01, 0x73, 0xff, 0xff,             //   userName (371), variable
        0x80, 0x04, 0x00, 0x04,             //   netfilter mark (enterprise 4)
        0x00, 0x00, 0x53, 0x7d,             //     PEN 21373
        0x80, 0x03, 0xff, 0xff,             //   NFLOG prefix (enterprise 3), variable
        0x00, 0x00, 0x53, 0x7d,             //     PEN 21373
        0x00, 0x03, 0x00, 0x1a,             // options template set, length 26
        0x01, 0x01, 0x00, 0x04, 0x00, 0x01, //   template 257, 4 fields, 1 scope
        0x00, 0x5f, 0x00, 0x05,             //     applicationId (scope)
        0x00, 0x60, 0xff, 0xff,             //     applicationName, variable
        0x01, 0x31, 0x00, 0x04,             //     samplingPacketInterval (305)
        0x01, 0x32, 0x00, 0x04,             //     samplingPacketSpace (306)
    ])
}

/// Options record (group 2 is "esp", sampling 1-in-4), then one data record.
#[rustfmt::skip]
fn labelflow_data() -> Vec<u8> {
    with_len(vec![
        0x00, 0x0a, 0x00, 0x00,             // version 10, length (patched)
        0x65, 0x00, 0x00, 0x00,             // export time
        0x00, 0x00, 0x00, 0x00,             // sequence 0
        0x00, 0x00, 0x00, 0x05,             // observation domain 5
        0x01, 0x01, 0x00, 0x18,             // options data set (257), length 24
        0x06, 0x00, 0x00, 0x00, 0x02,       //   applicationId: engine 6, selector 2
        0x03, b'e', b's', b'p',             //   applicationName "esp"
        0x00, 0x00, 0x00, 0x01,             //   samplingPacketInterval 1
        0x00, 0x00, 0x00, 0x03,             //   samplingPacketSpace 3 → 1-in-4
        0x00, 0x00, 0x00,                   //   padding
        0x01, 0x00, 0x00, 0x6d,             // data set (256), length 109
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // src 2001:db8::1
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // dst 2001:db8::2
        0x3a,                               //   protocol 58 (ICMPv6)
        0x80, 0x00,                         //   echo request, code 0
        0x00, 0x00, 0x00, 0x00,             //   SPI 0
        0x00, 0x00, 0x00, 0x03,             //   ingress 3
        0x00, 0x00, 0x00, 0x04,             //   egress 4
        0, 0, 0, 0, 0, 0, 0x04, 0xd2,       //   bytes 1234
        0, 0, 0, 0, 0, 0, 0, 0x0c,          //   packets 12
        0, 0, 0x01, 0x8a, 0x87, 0xff, 0xfc, 0x18, // start 1694498815000
        0, 0, 0x01, 0x8a, 0x88, 0x00, 0x03, 0xe8, // end   1694498817000
        0x02,                               //   end reason: active timeout
        0x01,                               //   direction: egress
        0x00, 0x00, 0x00, 0x02,             //   observationPointId 2
        0x06, 0x00, 0x00, 0x00, 0x02,       //   applicationId 6:2
        0x04, b'r', b'o', b'o', b't',       //   userName "root"
        0x00, 0x00, 0x00, 0x2a,             //   mark 42
        0x04, b'W', b'A', b'N', b':',       //   prefix "WAN:"
        0x00,                               //   padding
    ])
}

#[test]
fn ipfix_with_labelflow_elements() {
    let mut t = table();
    let (r, recs) = ingest(&mut t, "10.0.0.1", &labelflow_templates());
    assert_eq!((r, recs.len()), (Ok(()), 0));
    let (r, recs) = ingest(&mut t, "10.0.0.1", &labelflow_data());
    assert_eq!(r, Ok(()));
    let expected = FlowRecord {
        observation_domain: 5,
        group: Some(2),
        label: Some("esp".into()),
        src_addr: "2001:db8::1".parse().unwrap(),
        dst_addr: "2001:db8::2".parse().unwrap(),
        protocol: 58,
        icmp_type_code: 0x8000,
        // IPSecSPI 0 on the wire: reserved (RFC 4303 section 2.1), read as no SPI.
        ipsec_spi: None,
        ingress_if: 3,
        egress_if: 4,
        bytes: 1234,
        packets: 12,
        start_ms: 1_694_498_815_000,
        end_ms: 1_694_498_817_000,
        end_reason: Some(EndReason::ActiveTimeout),
        direction: Some(Direction::Egress),
        mark: Some(42),
        user_name: Some("root".into()),
        nflog_prefix: Some("WAN:".into()),
        sampling_interval: 4,
        ..FlowRecord::default()
    };
    assert_eq!(recs, vec![expected]);
    assert_eq!(t.stats.options_records, 1);
}

/// NetFlow v9: template with sampling fields, an options template announcing 1-in-100 for
/// sampler 7, and a data record referring to it.
#[rustfmt::skip]
fn v9_sampled() -> Vec<u8> {
    vec![
        0x00, 0x09, 0x00, 0x03,             // version 9, count 3 records
        0x00, 0x00, 0x27, 0x10,             // sysUpTime 10000 ms
        0x65, 0x00, 0x00, 0x00,             // unix secs 1694498816
        0x00, 0x00, 0x00, 0x01,             // sequence 1
        0x00, 0x00, 0x00, 0x09,             // source id 9
        0x00, 0x00, 0x00, 0x24,             // template flowset, length 36
        0x01, 0x04, 0x00, 0x07,             //   template 260, 7 fields
        0x00, 0x08, 0x00, 0x04,             //     IPV4_SRC_ADDR
        0x00, 0x0c, 0x00, 0x04,             //     IPV4_DST_ADDR
        0x00, 0x04, 0x00, 0x01,             //     PROTOCOL
        0x00, 0x01, 0x00, 0x04,             //     IN_BYTES
        0x00, 0x16, 0x00, 0x04,             //     FIRST_SWITCHED
        0x00, 0x15, 0x00, 0x04,             //     LAST_SWITCHED
        0x00, 0x30, 0x00, 0x01,             //     FLOW_SAMPLER_ID
        0x00, 0x01, 0x00, 0x16,             // options template flowset, length 22
        0x01, 0x05, 0x00, 0x04, 0x00, 0x08, //   template 261, scope 4 bytes, options 8 bytes
        0x00, 0x01, 0x00, 0x04,             //     scope: system, 4 bytes
        0x00, 0x30, 0x00, 0x01,             //     FLOW_SAMPLER_ID
        0x00, 0x32, 0x00, 0x04,             //     FLOW_SAMPLER_RANDOM_INTERVAL
        0x01, 0x05, 0x00, 0x10,             // options data (261), length 16
        0x00, 0x00, 0x00, 0x00,             //   scope: system 0
        0x07,                               //   sampler 7
        0x00, 0x00, 0x00, 0x64,             //   interval 100
        0x00, 0x00, 0x00,                   //   padding
        0x01, 0x04, 0x00, 0x1c,             // data (260), length 28
        0x0a, 0x00, 0x00, 0x01,             //   src 10.0.0.1
        0x0a, 0x00, 0x00, 0x02,             //   dst 10.0.0.2
        0x11,                               //   UDP
        0x00, 0x00, 0x01, 0xf4,             //   500 bytes
        0x00, 0x00, 0x1f, 0x40,             //   first 8000 ms uptime
        0x00, 0x00, 0x23, 0x28,             //   last 9000 ms uptime
        0x07,                               //   sampler 7
        0x00, 0x00,                         //   padding
    ]
}

#[test]
fn v9_uptime_times_and_sampler() {
    let mut t = table();
    let (r, recs) = ingest(&mut t, "10.0.0.2", &v9_sampled());
    assert_eq!(r, Ok(()));
    assert_eq!(recs.len(), 1);
    let f = &recs[0];
    assert_eq!((f.observation_domain, f.bytes, f.protocol), (9, 500, 17));
    // export 1694498816000 ms at uptime 10000: first = 8000 → 2 s earlier.
    assert_eq!(
        (f.start_ms, f.end_ms),
        (1_694_498_814_000, 1_694_498_815_000)
    );
    assert_eq!(f.sampling_interval, 100);
    assert_eq!(f.src_addr, "10.0.0.1".parse::<IpAddr>().unwrap());
}

#[rustfmt::skip]
fn v5_one_flow() -> Vec<u8> {
    vec![
        0x00, 0x05, 0x00, 0x01,             // version 5, count 1
        0x00, 0x00, 0x03, 0xe8,             // sysUpTime 1000 ms
        0x65, 0x00, 0x00, 0x00,             // unix secs
        0x00, 0x00, 0x00, 0x00,             // unix nsecs
        0x00, 0x00, 0x00, 0x2a,             // flow sequence 42
        0x01, 0x02,                         // engine type 1, id 2
        0x40, 0x0a,                         // sampling: mode 1, interval 10
        0xc0, 0x00, 0x02, 0x01,             // src 192.0.2.1
        0xc0, 0x00, 0x02, 0x02,             // dst 192.0.2.2
        0x00, 0x00, 0x00, 0x00,             // next hop
        0x00, 0x01, 0x00, 0x02,             // input 1, output 2
        0x00, 0x00, 0x00, 0x03,             // 3 packets
        0x00, 0x00, 0x00, 0x96,             // 150 bytes
        0x00, 0x00, 0x01, 0xf4,             // first 500
        0x00, 0x00, 0x03, 0xe8,             // last 1000
        0x00, 0x00, 0x03, 0x01,             // src port 0, dst port 0x0301 (ICMP 3/1)
        0x00, 0x00, 0x01, 0x00,             // pad, flags, protocol 1, tos
        0x00, 0x00, 0x00, 0x00,             // src/dst AS
        0x00, 0x00, 0x00, 0x00,             // masks, pad
    ]
}

#[test]
fn v5_header_sampling_and_icmp() {
    let mut t = table();
    let (r, recs) = ingest(&mut t, "10.0.0.3", &v5_one_flow());
    assert_eq!(r, Ok(()));
    let f = &recs[0];
    assert_eq!(
        (
            f.observation_domain,
            f.protocol,
            f.icmp_type_code,
            f.dst_port
        ),
        (0x0102, 1, 0x0301, 0)
    );
    assert_eq!((f.bytes, f.packets, f.sampling_interval), (150, 3, 10));
    assert_eq!((f.ingress_if, f.egress_if), (1, 2));
    assert_eq!(f.end_ms - f.start_ms, 500);
}

#[test]
fn truncated_and_absurd_lengths_are_counted() {
    let mut t = table();
    let good = labelflow_templates();
    for cut in 0..good.len() {
        let _ = ingest(&mut t, "10.0.0.9", &good[..cut]);
    }
    // Header length says more than the datagram.
    let mut long = labelflow_data();
    long[2..4].copy_from_slice(&0xffffu16.to_be_bytes());
    assert_eq!(
        ingest(&mut t, "10.0.0.9", &long).0,
        Err(DecodeError::Length)
    );
    // A set claiming 65535 bytes inside a short message.
    let mut set = labelflow_templates();
    set[18..20].copy_from_slice(&0xffffu16.to_be_bytes());
    assert!(ingest(&mut t, "10.0.0.9", &set).0.is_err() || t.stats.template_records == 0);
    // A template claiming 65535 fields.
    let mut fields = labelflow_templates();
    fields[22..24].copy_from_slice(&0xffffu16.to_be_bytes());
    let _ = ingest(&mut t, "10.0.0.9", &fields);
    assert!(t.stats.error(DecodeError::Truncated) + t.stats.error(DecodeError::Length) >= 16);
    // Data without a template is counted, not fatal.
    let (r, recs) = ingest(&mut t, "10.0.0.10", &labelflow_data());
    assert!(recs.is_empty());
    assert_eq!(r, Ok(()));
    assert!(t.stats.error(DecodeError::MissingTemplate) >= 1);
}

/// Two exporters use template id 256 for different layouts; each decodes its own.
#[test]
fn template_id_collisions_between_exporters() {
    let mut t = table();
    let _ = ingest(&mut t, "10.0.0.1", &labelflow_templates());
    #[rustfmt::skip]
    let other_template = with_len(vec![
        0x00, 0x0a, 0x00, 0x00, 0x65, 0, 0, 0, 0, 0, 0, 0,
        0x00, 0x00, 0x00, 0x05,             // same domain 5
        0x00, 0x02, 0x00, 0x10,             // template set, length 16
        0x01, 0x00, 0x00, 0x02,             //   template 256, 2 fields
        0x00, 0x08, 0x00, 0x04,             //     sourceIPv4Address
        0x00, 0x01, 0x00, 0x04,             //     octetDeltaCount (4 bytes)
    ]);
    let _ = ingest(&mut t, "10.0.0.2", &other_template);
    #[rustfmt::skip]
    let other_data = with_len(vec![
        0x00, 0x0a, 0x00, 0x00, 0x65, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5,
        0x01, 0x00, 0x00, 0x0c,             // data set 256, length 12
        0x0a, 0x00, 0x00, 0x63,             //   10.0.0.99
        0x00, 0x00, 0x00, 0x07,             //   7 bytes
    ]);
    let (_, recs) = ingest(&mut t, "10.0.0.2", &other_data);
    assert_eq!((recs.len(), recs[0].bytes), (1, 7));
    let (_, recs) = ingest(&mut t, "10.0.0.1", &labelflow_data());
    assert_eq!((recs.len(), recs[0].bytes), (1, 1234));
    assert_eq!(recs[0].label.as_deref(), Some("esp"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// Random datagrams, alone or after valid templates, never panic; a good exporter keeps
    /// decoding afterwards.
    #[test]
    fn random_bytes_never_panic(garbage in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 1..8),
                                version in prop_oneof![Just(5u16), Just(9u16), Just(10u16), any::<u16>()]) {
        let mut t = table();
        let _ = ingest(&mut t, "10.0.0.1", &labelflow_templates());
        for mut g in garbage {
            if g.len() >= 4 {
                g[0..2].copy_from_slice(&version.to_be_bytes());
                if version == 10 {
                    let n = g.len() as u16;
                    g[2..4].copy_from_slice(&n.to_be_bytes());
                }
            }
            let _ = ingest(&mut t, "10.0.0.66", &g);
        }
        let (r, recs) = ingest(&mut t, "10.0.0.1", &labelflow_data());
        prop_assert_eq!(r, Ok(()));
        prop_assert_eq!(recs.len(), 1);
    }
}
