use super::*;

/// One datagram captured from the kernel (6.18, x86_64, little endian): group 7, copy range
/// 64, threshold 2, two UDP packets 127.0.0.1 -> 127.0.0.1:9999 logged in OUTPUT by
/// `iptables -A OUTPUT -o lo -p udp --dport 9999 -j NFLOG --nflog-group 7 --nflog-prefix lab`
/// with mark 0x2a set in mangle, sent by root.
#[rustfmt::skip]
pub(crate) const KERNEL_BATCH: [u8; 252] = [
    // nlmsghdr: len 116, type 0x0400 (ULOG << 8 | PACKET), flags 0, seq 0, portid 0
    0x74, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    // nfgenmsg: family 2 (IPv4), version 0, res_id 7 (be)
    0x02, 0x00, 0x00, 0x07,
    // NFULA_PACKET_HDR len 8: hw_protocol 0x0800, hook 3 (LOCAL_OUT), pad
    0x08, 0x00, 0x01, 0x00, 0x08, 0x00, 0x03, 0x00,
    // NFULA_PREFIX len 8: "lab\0"
    0x08, 0x00, 0x0a, 0x00, 0x6c, 0x61, 0x62, 0x00,
    // NFULA_IFINDEX_OUTDEV len 8: 1 (lo)
    0x08, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x01,
    // NFULA_MARK len 8: 0x2a
    0x08, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x2a,
    // NFULA_UID len 8: 0
    0x08, 0x00, 0x0b, 0x00, 0x00, 0x00, 0x00, 0x00,
    // NFULA_GID len 8: 0
    0x08, 0x00, 0x0e, 0x00, 0x00, 0x00, 0x00, 0x00,
    // NFULA_SEQ len 8: 0
    0x08, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00,
    // NFULA_PAYLOAD len 37: IPv4 total length 33, UDP 51542 -> 9999, "hello", 3 pad bytes
    0x25, 0x00, 0x09, 0x00,
    0x45, 0x00, 0x00, 0x21, 0xe6, 0xff, 0x40, 0x00, 0x40, 0x11, 0x55, 0xca, 0x7f, 0x00, 0x00, 0x01,
    0x7f, 0x00, 0x00, 0x01, 0xc9, 0x56, 0x27, 0x0f, 0x00, 0x0d, 0xfe, 0x20, 0x68, 0x65, 0x6c, 0x6c,
    0x6f, 0x00, 0x00, 0x00,
    // second message: same layout, NFULA_SEQ 1, payload "world"
    0x74, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x02, 0x00, 0x00, 0x07, 0x08, 0x00, 0x01, 0x00, 0x08, 0x00, 0x03, 0x00,
    0x08, 0x00, 0x0a, 0x00, 0x6c, 0x61, 0x62, 0x00, 0x08, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x01,
    0x08, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x08, 0x00, 0x0b, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x08, 0x00, 0x0e, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x01,
    0x25, 0x00, 0x09, 0x00, 0x45, 0x00, 0x00, 0x21, 0xe7, 0x00, 0x40, 0x00, 0x40, 0x11, 0x55, 0xc9,
    0x7f, 0x00, 0x00, 0x01, 0x7f, 0x00, 0x00, 0x01, 0xc9, 0x56, 0x27, 0x0f, 0x00, 0x0d, 0xfe, 0x20,
    0x77, 0x6f, 0x72, 0x6c, 0x64, 0x00, 0x00, 0x00,
    // NLMSG_DONE: len 20, type 3, flags 0, seq 0, portid 0, nfgenmsg (0, 0, group 7)
    0x14, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x07,
];

/// The kernel's acknowledgement of a bind request (seq 1, portid 0x3779): nlmsgerr with
/// error 0 and the request's header (len 64, type 0x0401, flags REQUEST|ACK).
#[rustfmt::skip]
const KERNEL_ACK: [u8; 36] = [
    0x24, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00, 0x79, 0x37, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, // error 0
    0x40, 0x00, 0x00, 0x00, 0x01, 0x04, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

fn expected_meta(seq: u32) -> PacketMeta<'static> {
    PacketMeta {
        group: 7,
        l3: L3::Ipv4,
        hook: Some(Hook::LocalOut),
        mark: 0x2a,
        egress_if: 1,
        uid: Some(0),
        gid: Some(0),
        prefix: b"lab",
        seq: Some(seq),
        ..PacketMeta::default()
    }
}

#[test]
fn walks_a_kernel_batch() {
    let msgs: Vec<_> = NlMsgIter::new(&KERNEL_BATCH)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[0].kind, NFLOG_PACKET_TYPE);
    assert_eq!(msgs[1].kind, NFLOG_PACKET_TYPE);
    assert_eq!(msgs[2].kind, NLMSG_DONE);
    for (i, text) in [(0, b"hello"), (1, b"world")] {
        let (meta, payload) = parse_packet_message(msgs[i].body).unwrap();
        assert_eq!(meta, expected_meta(i as u32));
        assert_eq!(payload.len(), 33);
        assert_eq!(payload[0], 0x45);
        assert_eq!(&payload[28..], text);
    }
}

#[test]
fn parses_the_kernel_ack() {
    let msgs: Vec<_> = NlMsgIter::new(&KERNEL_ACK)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        (msgs[0].kind, msgs[0].seq, msgs[0].portid),
        (NLMSG_ERROR, 1, 0x3779)
    );
    let ack = NlAck::parse(msgs[0].body).unwrap();
    assert_eq!(
        ack,
        NlAck {
            error: 0,
            request_seq: 1,
            request_kind: NFLOG_CONFIG_TYPE
        }
    );
}

#[test]
fn truncated_datagram_stops_with_error() {
    let cut = &KERNEL_BATCH[..116 + 20];
    let mut it = NlMsgIter::new(cut);
    assert!(it.next().unwrap().is_ok());
    assert_eq!(
        it.next().unwrap(),
        Err(WireError::BadMessageLength {
            offset: 116,
            len: 116,
            have: 20
        })
    );
    assert!(it.next().is_none());
    let mut it = NlMsgIter::new(&KERNEL_BATCH[..10]);
    assert!(matches!(
        it.next(),
        Some(Err(WireError::ShortHeader { .. }))
    ));
}

#[test]
fn bad_attribute_length_is_an_error() {
    let mut body = KERNEL_BATCH[16..116].to_vec();
    body[4] = 200; // NFULA_PACKET_HDR claims 200 bytes
    assert!(matches!(
        parse_packet_message(&body),
        Err(WireError::BadAttributeLength {
            offset: 0,
            len: 200,
            ..
        })
    ));
    body[4] = 6; // PACKET_HDR with a 2-byte value
    assert!(matches!(
        parse_packet_message(&body),
        Err(WireError::BadAttributeValue {
            kind: attr::PACKET_HDR,
            len: 2,
            ..
        })
    ));
}

#[test]
fn unknown_and_flagged_attributes() {
    #[rustfmt::skip]
    let body = [
        10, 0, 0, 0x07,                     // nfgenmsg: family 10 (IPv6), group 7
        8, 0, 21, 0, 1, 2, 3, 4,            // NFULA_L2HDR (unknown here): skipped
        8, 0, 0x0c, 0x40, 0, 0, 1, 0,       // NFULA_SEQ with NLA_F_NET_BYTEORDER: 256
        8, 0, 6, 0, 0, 0, 0, 9,             // PHYSINDEV 9
        8, 0, 7, 0, 0, 0, 0, 10,            // PHYSOUTDEV 10
        8, 0, 4, 0, 0, 0, 0, 2,             // INDEV 2
        // TIMESTAMP 2024-01-01T00:00:00.123456Z
        20, 0, 3, 0, 0, 0, 0, 0, 0x65, 0x92, 0x00, 0x80, 0, 0, 0, 0, 0, 0x01, 0xe2, 0x40,
    ];
    let (meta, payload) = parse_packet_message(&body).unwrap();
    assert!(payload.is_empty());
    assert_eq!(
        meta,
        PacketMeta {
            group: 7,
            l3: L3::Ipv6,
            seq: Some(256),
            phys_ingress_if: 9,
            phys_egress_if: 10,
            ingress_if: 2,
            timestamp_ms: Some(1_704_067_200_123),
            ..PacketMeta::default()
        }
    );
}

#[test]
fn monotonic_timestamp_is_dropped_and_hw_protocol_decides_l3() {
    #[rustfmt::skip]
    let body = [
        7, 0, 0, 1,                          // family 7 (bridge), group 1
        8, 0, 1, 0, 0x86, 0xdd, 0, 0,        // PACKET_HDR: IPv6, PRE_ROUTING
        20, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 0, 0, 0, 5,
    ];
    let (meta, _) = parse_packet_message(&body).unwrap();
    assert_eq!(meta.l3, L3::Ipv6);
    assert_eq!(meta.hook, Some(Hook::PreRouting));
    assert_eq!(meta.timestamp_ms, None);
}

#[test]
fn pcap_nflog_record_both_orders() {
    // nflog_hdr: AF_INET, version 0, resource_id 3; TLVs PREFIX "esp", UID 1000, PAYLOAD.
    let payload = [
        0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 50, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    for order in [HeaderOrder::Little, HeaderOrder::Big] {
        let tlv = |len: u16, kind: u16| -> [u8; 4] {
            match order {
                HeaderOrder::Big => {
                    let (l, k) = (len.to_be_bytes(), kind.to_be_bytes());
                    [l[0], l[1], k[0], k[1]]
                }
                _ => {
                    let (l, k) = (len.to_le_bytes(), kind.to_le_bytes());
                    [l[0], l[1], k[0], k[1]]
                }
            }
        };
        let mut rec = vec![2, 0, 0, 3];
        rec.extend(tlv(8, attr::PREFIX));
        rec.extend(b"esp\0");
        rec.extend(tlv(8, attr::UID));
        rec.extend(1000u32.to_be_bytes());
        rec.extend(tlv(24, attr::PAYLOAD));
        rec.extend(payload);
        let (meta, p) = parse_pcap_nflog(&rec, order).unwrap();
        assert_eq!(p, payload);
        assert_eq!(
            meta,
            PacketMeta {
                group: 3,
                l3: L3::Ipv4,
                prefix: b"esp",
                uid: Some(1000),
                ..PacketMeta::default()
            }
        );
    }
    assert_eq!(
        parse_pcap_nflog(&[2, 1, 0, 3], HeaderOrder::Little),
        Err(WireError::NflogVersion(1))
    );
    assert!(matches!(
        parse_pcap_nflog(&[2, 0], HeaderOrder::Little),
        Err(WireError::ShortNflogHeader { need: 4, have: 2 })
    ));
}

#[test]
fn walkers_never_panic_on_prefixes() {
    for n in 0..KERNEL_BATCH.len() {
        for m in NlMsgIter::new(&KERNEL_BATCH[..n]).flatten() {
            let _ = parse_packet_message(m.body);
        }
        let _ = parse_pcap_nflog(&KERNEL_BATCH[..n], HeaderOrder::Little);
        let _ = parse_packet_message(&KERNEL_BATCH[n..]);
    }
}
