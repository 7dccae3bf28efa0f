use super::*;

/// IPv4 header, 20 bytes, no options. Protocol, total length and fragment word are patched per
/// test with [`v4`].
#[rustfmt::skip]
const V4_HDR: [u8; 20] = [
    0x45,             // version 4, IHL 5 (20 bytes)
    0x28,             // ToS: DSCP AF11 (0x28)
    0x00, 0x00,       // total length (patched)
    0x12, 0x34,       // identification
    0x00, 0x00,       // flags, fragment offset (patched)
    0x40,             // TTL 64
    0x00,             // protocol (patched)
    0x00, 0x00,       // header checksum (not verified)
    192, 0, 2, 1,     // source 192.0.2.1
    198, 51, 100, 7,  // destination 198.51.100.7
];

fn v4(protocol: u8, total: u16, frag: u16, rest: &[u8]) -> Vec<u8> {
    let mut p = V4_HDR.to_vec();
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p[9] = protocol;
    p.extend_from_slice(rest);
    p
}

#[rustfmt::skip]
const TCP_SYNACK: [u8; 20] = [
    0xc3, 0x50,             // source port 50000
    0x01, 0xbb,             // destination port 443
    0x00, 0x00, 0x00, 0x01, // sequence number
    0x00, 0x00, 0x00, 0x02, // acknowledgment number
    0x50,                   // data offset 5
    0x12,                   // flags SYN|ACK
    0xff, 0xff,             // window
    0x00, 0x00,             // checksum
    0x00, 0x00,             // urgent pointer
];

#[rustfmt::skip]
const UDP_DNS: [u8; 8] = [
    0x30, 0x39, // source port 12345
    0x00, 0x35, // destination port 53
    0x00, 0x08, // length 8
    0x00, 0x00, // checksum
];

#[rustfmt::skip]
const ICMP_ECHO: [u8; 8] = [
    0x08,       // type 8 echo request
    0x00,       // code 0
    0x00, 0x00, // checksum
    0x00, 0x01, // identifier
    0x00, 0x01, // sequence
];

#[rustfmt::skip]
const ESP_HDR: [u8; 8] = [
    0x00, 0x00, 0x10, 0x01, // SPI 0x1001
    0x00, 0x00, 0x00, 0x01, // sequence number
];

#[rustfmt::skip]
const AH_HDR: [u8; 12] = [
    0x06,                   // next header TCP
    0x04,                   // payload length: (4 + 2) * 4 = 24 bytes
    0x00, 0x00,             // reserved
    0xca, 0xfe, 0x00, 0x01, // SPI 0xcafe0001
    0x00, 0x00, 0x00, 0x07, // sequence number
];

#[rustfmt::skip]
const SCTP_HDR: [u8; 12] = [
    0x0b, 0x59,             // source port 2905
    0x0b, 0x59,             // destination port 2905
    0x00, 0x00, 0x00, 0x01, // verification tag
    0x00, 0x00, 0x00, 0x00, // checksum
];

fn addr4(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&a);
    out
}

#[test]
fn v4_tcp_counts_total_length_not_captured_bytes() {
    // Total length 1500, only the first 40 bytes captured (NFLOG copy range).
    let p = v4(proto::TCP, 1500, 0x4000 /* DF */, &TCP_SYNACK);
    let d = decode(L3::Ipv4, &p).unwrap();
    assert_eq!(
        d,
        Decoded {
            version: IpVersion::V4,
            src: addr4([192, 0, 2, 1]),
            dst: addr4([198, 51, 100, 7]),
            protocol: proto::TCP,
            transport: Transport::Ports {
                src: 50000,
                dst: 443
            },
            tcp_flags: tcp_flags::SYN | tcp_flags::ACK,
            tos: 0x28,
            length: 1500,
            fragment: Fragment::None,
            partial: None,
        }
    );
    assert_eq!(d.src_addr(), "192.0.2.1".parse::<IpAddr>().unwrap());
    assert_eq!(d.dst_addr(), "198.51.100.7".parse::<IpAddr>().unwrap());
}

#[test]
fn v4_udp_icmp_esp_ah_sctp_udplite() {
    let cases: [(u8, &[u8], Transport); 6] = [
        (
            proto::UDP,
            &UDP_DNS,
            Transport::Ports {
                src: 12345,
                dst: 53,
            },
        ),
        (
            proto::UDPLITE,
            &UDP_DNS,
            Transport::Ports {
                src: 12345,
                dst: 53,
            },
        ),
        (
            proto::ICMP,
            &ICMP_ECHO,
            Transport::Icmp { kind: 8, code: 0 },
        ),
        (proto::ESP, &ESP_HDR, Transport::Spi(0x1001)),
        (proto::AH, &AH_HDR, Transport::Spi(0xcafe_0001)),
        (
            proto::SCTP,
            &SCTP_HDR,
            Transport::Ports {
                src: 2905,
                dst: 2905,
            },
        ),
    ];
    for (protocol, l4, want) in cases {
        let p = v4(protocol, 100, 0, l4);
        let d = decode(L3::Unknown, &p).unwrap();
        assert_eq!(d.protocol, protocol, "protocol {protocol}");
        assert_eq!(d.transport, want, "protocol {protocol}");
        assert_eq!(d.tcp_flags, 0);
        assert_eq!(d.length, 100);
        assert_eq!(d.partial, None);
    }
}

#[test]
fn v4_other_protocol_has_no_transport_and_no_partial() {
    // GRE (47): nothing to key on beyond the addresses.
    let p = v4(47, 64, 0, &[0, 0, 0x08, 0x00]);
    let d = decode(L3::Unknown, &p).unwrap();
    assert_eq!(
        (d.protocol, d.transport, d.partial),
        (47, Transport::None, None)
    );
}

#[test]
fn v4_options_are_skipped() {
    #[rustfmt::skip]
    let p = [
        0x46,                   // version 4, IHL 6 (24 bytes)
        0x00,                   // ToS
        0x00, 0x24,             // total length 36
        0x00, 0x00, 0x00, 0x00, // id, flags, offset
        0x40, 0x11, 0x00, 0x00, // TTL, UDP, checksum
        10, 0, 0, 1,            // source
        10, 0, 0, 2,            // destination
        0x94, 0x04, 0x00, 0x00, // option: router alert (RFC 2113)
        0x00, 0x44, 0x00, 0x43, // UDP ports 68 -> 67
        0x00, 0x0c, 0x00, 0x00, // UDP length, checksum
        0xde, 0xad, 0xbe, 0xef, // data
    ];
    let d = decode(L3::Ipv4, &p).unwrap();
    assert_eq!(d.transport, Transport::Ports { src: 68, dst: 67 });
    assert_eq!(d.length, 36);
}

#[test]
fn v4_first_fragment_has_ports_later_fragment_none() {
    // MF set, offset 0.
    let first = v4(proto::UDP, 1500, 0x2000, &UDP_DNS);
    let d = decode(L3::Ipv4, &first).unwrap();
    assert_eq!(d.fragment, Fragment::First);
    assert_eq!(
        d.transport,
        Transport::Ports {
            src: 12345,
            dst: 53
        }
    );
    // Offset 185 * 8 = 1480, MF clear: the bytes after the header are UDP payload, not ports.
    let later = v4(proto::UDP, 520, 185, &[0xaa; 8]);
    let d = decode(L3::Ipv4, &later).unwrap();
    assert_eq!(d.fragment, Fragment::Later);
    assert_eq!(d.protocol, proto::UDP);
    assert_eq!(d.transport, Transport::None);
    assert_eq!(d.partial, None);
    assert_eq!(d.length, 520);
}

#[test]
fn v4_ports_beyond_capture_are_counted_without_ports() {
    // Only the IP header captured of a 60-byte TCP packet.
    let p = v4(proto::TCP, 60, 0, &[]);
    let d = decode(L3::Ipv4, &p).unwrap();
    assert_eq!(d.transport, Transport::None);
    assert_eq!(d.partial, Some(Partial::TransportNotCaptured));
    assert_eq!(d.length, 60);
    // Ports captured, flags not.
    let p = v4(proto::TCP, 60, 0, &TCP_SYNACK[..8]);
    let d = decode(L3::Ipv4, &p).unwrap();
    assert_eq!(
        d.transport,
        Transport::Ports {
            src: 50000,
            dst: 443
        }
    );
    assert_eq!(d.tcp_flags, 0);
    assert_eq!(d.partial, Some(Partial::TcpFlagsNotCaptured));
}

#[test]
fn v4_transport_beyond_packet_length() {
    // Total length 22: two bytes of UDP header, then link-layer padding that is not part of
    // the packet.
    let mut p = v4(proto::UDP, 22, 0, &UDP_DNS[..2]);
    p.extend_from_slice(&[0, 0, 0, 0]);
    let d = decode(L3::Ipv4, &p).unwrap();
    assert_eq!(d.transport, Transport::None);
    assert_eq!(d.partial, Some(Partial::TransportBeyondPacket));
    assert_eq!(d.length, 22);
}

#[test]
fn v4_header_errors() {
    assert_eq!(decode(L3::Unknown, &[]), Err(DecodeError::Empty));
    assert_eq!(
        decode(L3::Ipv4, &V4_HDR[..19]),
        Err(DecodeError::HeaderTruncated {
            version: 4,
            need: 20,
            have: 19
        })
    );
    let mut p = v4(proto::UDP, 28, 0, &UDP_DNS);
    p[0] = 0x44; // IHL 4
    assert_eq!(
        decode(L3::Ipv4, &p),
        Err(DecodeError::BadHeaderLength { ihl: 4 })
    );
    let p = v4(proto::UDP, 19, 0, &UDP_DNS);
    assert_eq!(
        decode(L3::Ipv4, &p),
        Err(DecodeError::BadTotalLength {
            total: 19,
            header: 20
        })
    );
    assert_eq!(
        decode(L3::Ipv6, &v4(proto::UDP, 28, 0, &UDP_DNS)),
        Err(DecodeError::VersionMismatch {
            expected: 6,
            found: 4
        })
    );
    assert_eq!(
        decode(L3::Unknown, &[0x55; 40]),
        Err(DecodeError::UnknownVersion(5))
    );
    // An IHL longer than the capture is not an error: addresses and length are known.
    let mut p = v4(proto::UDP, 80, 0, &[]);
    p[0] = 0x4f; // IHL 15 (60 bytes), only 20 captured
    let d = decode(L3::Ipv4, &p).unwrap();
    assert_eq!(d.partial, Some(Partial::TransportNotCaptured));
}

#[test]
fn error_kinds_are_dense_and_named() {
    for (i, k) in DecodeErrorKind::ALL.iter().enumerate() {
        assert_eq!(k.index(), i);
        assert!(!k.name().is_empty());
    }
    for (i, k) in Partial::ALL.iter().enumerate() {
        assert_eq!(k.index(), i);
    }
    assert_eq!(
        DecodeError::BadHeaderLength { ihl: 2 }.kind(),
        DecodeErrorKind::BadHeaderLength
    );
}

/// IPv6 header, 40 bytes. Payload length and next header patched with [`v6`].
#[rustfmt::skip]
const V6_HDR: [u8; 40] = [
    0x6b, 0x80, 0x00, 0x00, // version 6, traffic class 0xb8 (EF), flow label 0
    0x00, 0x00,             // payload length (patched)
    0x00,                   // next header (patched)
    0x40,                   // hop limit 64
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // source 2001:db8::1
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // destination 2001:db8::2
];

fn v6(next: u8, payload_len: u16, rest: &[u8]) -> Vec<u8> {
    let mut p = V6_HDR.to_vec();
    p[4..6].copy_from_slice(&payload_len.to_be_bytes());
    p[6] = next;
    p.extend_from_slice(rest);
    p
}

#[test]
fn v6_tcp() {
    let p = v6(proto::TCP, 1440, &TCP_SYNACK);
    let d = decode(L3::Ipv6, &p).unwrap();
    assert_eq!(d.version, IpVersion::V6);
    assert_eq!(d.src_addr(), "2001:db8::1".parse::<IpAddr>().unwrap());
    assert_eq!(d.dst_addr(), "2001:db8::2".parse::<IpAddr>().unwrap());
    assert_eq!(d.protocol, proto::TCP);
    assert_eq!(
        d.transport,
        Transport::Ports {
            src: 50000,
            dst: 443
        }
    );
    assert_eq!(d.tcp_flags, 0x12);
    assert_eq!(d.tos, 0xb8);
    assert_eq!(d.length, 1480);
    assert_eq!(d.partial, None);
}

#[test]
fn v6_walks_hop_by_hop_destination_routing_then_udp() {
    #[rustfmt::skip]
    let ext = [
        // Hop-by-Hop Options
        proto::IPV6_OPTS, // next header: Destination Options
        0x00,             // length: 8 bytes
        0x05, 0x02, 0x00, 0x00, // router alert option
        0x01, 0x00,             // PadN
        // Destination Options
        proto::IPV6_ROUTE, // next header: Routing
        0x01,              // length: 16 bytes
        0x01, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // PadN, 12 bytes of padding
        // Routing (type 4, segments left 0)
        proto::UDP, // next header: UDP
        0x00,       // length: 8 bytes
        0x04, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    let mut rest = ext.to_vec();
    rest.extend_from_slice(&UDP_DNS);
    let p = v6(proto::HOPOPT, rest.len() as u16, &rest);
    let d = decode(L3::Unknown, &p).unwrap();
    assert_eq!(d.protocol, proto::UDP);
    assert_eq!(
        d.transport,
        Transport::Ports {
            src: 12345,
            dst: 53
        }
    );
    assert_eq!(d.length, 40 + 40);
}

#[rustfmt::skip]
fn v6_frag_header(next: u8, offset_units: u16, more: bool) -> [u8; 8] {
    let word = (offset_units << 3) | u16::from(more);
    let w = word.to_be_bytes();
    [
        next,                   // next header
        0x00,                   // reserved
        w[0], w[1],             // fragment offset (13 bits), res, M
        0x00, 0x00, 0xbe, 0xef, // identification
    ]
}

#[test]
fn v6_fragments() {
    let mut first = v6_frag_header(proto::UDP, 0, true).to_vec();
    first.extend_from_slice(&UDP_DNS);
    let d = decode(L3::Ipv6, &v6(proto::IPV6_FRAG, 1448, &first)).unwrap();
    assert_eq!(d.fragment, Fragment::First);
    assert_eq!(d.protocol, proto::UDP);
    assert_eq!(
        d.transport,
        Transport::Ports {
            src: 12345,
            dst: 53
        }
    );

    let mut later = v6_frag_header(proto::UDP, 181, false).to_vec();
    later.extend_from_slice(&[0xaa; 8]);
    let d = decode(L3::Ipv6, &v6(proto::IPV6_FRAG, 300, &later)).unwrap();
    assert_eq!(d.fragment, Fragment::Later);
    assert_eq!(d.protocol, proto::UDP);
    assert_eq!(d.transport, Transport::None);
    assert_eq!(d.partial, None);
    assert_eq!(d.length, 340);
}

#[test]
fn v6_icmp_esp_ah() {
    #[rustfmt::skip]
    let echo = [
        0x80,       // type 128 echo request
        0x00,       // code
        0x00, 0x00, // checksum
    ];
    let d = decode(L3::Ipv6, &v6(proto::ICMPV6, 64, &echo)).unwrap();
    assert_eq!(d.transport, Transport::Icmp { kind: 128, code: 0 });
    let d = decode(L3::Ipv6, &v6(proto::ESP, 64, &ESP_HDR)).unwrap();
    assert_eq!(
        (d.protocol, d.transport),
        (proto::ESP, Transport::Spi(0x1001))
    );
    let d = decode(L3::Ipv6, &v6(proto::AH, 64, &AH_HDR)).unwrap();
    assert_eq!(
        (d.protocol, d.transport),
        (proto::AH, Transport::Spi(0xcafe_0001))
    );
}

#[test]
fn v6_extension_chain_beyond_capture() {
    // Hop-by-Hop header announcing 24 bytes, only 8 captured.
    #[rustfmt::skip]
    let hbh = [
        proto::TCP, // next header
        0x02,       // length: 24 bytes
        0x01, 0x04, 0, 0, 0, 0, // PadN
    ];
    let d = decode(L3::Ipv6, &v6(proto::HOPOPT, 200, &hbh)).unwrap();
    assert_eq!(d.protocol, proto::HOPOPT);
    assert_eq!(d.transport, Transport::None);
    assert_eq!(d.partial, Some(Partial::ExtHeadersNotCaptured));
    assert_eq!(d.length, 240);
    // Same header but the packet itself ends there.
    let d = decode(L3::Ipv6, &v6(proto::HOPOPT, 8, &hbh)).unwrap();
    assert_eq!(d.partial, Some(Partial::ExtHeadersBeyondPacket));
    // Fragment header cut after 2 bytes.
    let d = decode(L3::Ipv6, &v6(proto::IPV6_FRAG, 100, &[proto::UDP, 0])).unwrap();
    assert_eq!(d.partial, Some(Partial::ExtHeadersNotCaptured));
    assert_eq!(d.protocol, proto::IPV6_FRAG);
    // UDP header cut after the header chain.
    let d = decode(L3::Ipv6, &v6(proto::UDP, 100, &UDP_DNS[..3])).unwrap();
    assert_eq!(d.partial, Some(Partial::TransportNotCaptured));
}

#[test]
fn v6_jumbogram_and_empty_payload() {
    #[rustfmt::skip]
    let hbh = [
        proto::UDP,             // next header
        0x00,                   // length: 8 bytes
        0xc2, 0x04,             // Jumbo Payload option, 4 bytes
        0x00, 0x01, 0x86, 0xa8, // 100008 bytes after the IPv6 header
    ];
    let mut rest = hbh.to_vec();
    rest.extend_from_slice(&UDP_DNS);
    let d = decode(L3::Ipv6, &v6(proto::HOPOPT, 0, &rest)).unwrap();
    assert_eq!(d.length, 100_048);
    assert_eq!(
        d.transport,
        Transport::Ports {
            src: 12345,
            dst: 53
        }
    );
    // No Next Header with an empty payload: just the fixed header.
    let d = decode(L3::Ipv6, &v6(proto::IPV6_NONXT, 0, &[])).unwrap();
    assert_eq!(
        (d.length, d.protocol, d.partial),
        (40, proto::IPV6_NONXT, None)
    );
}

#[test]
fn v6_header_errors() {
    assert_eq!(
        decode(L3::Ipv6, &V6_HDR[..39]),
        Err(DecodeError::HeaderTruncated {
            version: 6,
            need: 40,
            have: 39
        })
    );
    assert_eq!(
        decode(L3::Ipv4, &v6(proto::UDP, 8, &UDP_DNS)),
        Err(DecodeError::VersionMismatch {
            expected: 4,
            found: 6
        })
    );
}

/// UDP header between `src` and `dst` with a `payload`-byte payload (length = 8 + payload).
fn udp_hdr(src: u16, dst: u16, payload: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(8);
    h.extend_from_slice(&src.to_be_bytes());
    h.extend_from_slice(&dst.to_be_bytes());
    h.extend_from_slice(&(8 + payload).to_be_bytes());
    h.extend_from_slice(&[0, 0]); // checksum
    h
}

fn udp_v4(src: u16, dst: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = udp_hdr(src, dst, payload.len() as u16);
    l4.extend_from_slice(payload);
    v4(proto::UDP, 20 + l4.len() as u16, 0, &l4)
}

#[test]
fn natt_esp_ike_and_keepalive_are_told_apart() {
    // RFC 3948 §2.1: UDP-encapsulated ESP, SPI 0xc0ffee01 then the sequence number.
    let esp = udp_v4(
        4500,
        4500,
        &[0xc0, 0xff, 0xee, 0x01, 0, 0, 0, 9, 0xaa, 0xbb],
    );
    let d = decode(L3::Unknown, &esp).unwrap();
    assert_eq!(
        d.transport,
        Transport::UdpIpsec {
            src: 4500,
            dst: 4500,
            kind: UdpIpsec::Esp(0xc0ff_ee01)
        }
    );
    assert_eq!((d.protocol, d.length, d.partial), (proto::UDP, 38, None));
    // A NAT-mapped source port: the NAT-T port on either side is enough.
    let d = decode(L3::Unknown, &udp_v4(61234, 4500, &[0, 0, 0, 7, 0, 0, 0, 1])).unwrap();
    assert!(matches!(
        d.transport,
        Transport::UdpIpsec {
            src: 61234,
            kind: UdpIpsec::Esp(7),
            ..
        }
    ));
    // RFC 3948 §2.2: IKE behind the four-octet zero non-ESP marker.
    let ike = udp_v4(4500, 4500, &[0, 0, 0, 0, 0x11, 0x22, 0x33, 0x44]);
    let d = decode(L3::Unknown, &ike).unwrap();
    assert!(matches!(
        d.transport,
        Transport::UdpIpsec {
            kind: UdpIpsec::Ike,
            ..
        }
    ));
    // RFC 3948 §2.3: NAT-keepalive, one octet 0xFF.
    let d = decode(L3::Unknown, &udp_v4(4500, 4500, &[0xff])).unwrap();
    assert!(matches!(
        d.transport,
        Transport::UdpIpsec {
            kind: UdpIpsec::NatKeepalive,
            ..
        }
    ));
    assert_eq!(d.length, 29);
    // RFC 7296 §2: IKE on port 500 has no marker.
    let d = decode(L3::Unknown, &udp_v4(500, 500, &[0x12, 0x34, 0x56, 0x78])).unwrap();
    assert!(matches!(
        d.transport,
        Transport::UdpIpsec {
            kind: UdpIpsec::Ike,
            ..
        }
    ));
    // Other ports stay plain UDP, whatever the payload.
    let d = decode(L3::Unknown, &udp_v4(4501, 53, &[0xc0, 0xff, 0xee, 0x01])).unwrap();
    assert_eq!(d.transport, Transport::Ports { src: 4501, dst: 53 });
}

#[test]
fn natt_payload_not_captured_stays_plain_udp() {
    // The SPI lies beyond the captured bytes: keyed by ports alone, not guessed.
    let esp = udp_v4(4500, 4500, &[0xc0, 0xff, 0xee, 0x01, 0, 0, 0, 9]);
    let d = decode(L3::Unknown, &esp[..30]).unwrap();
    assert_eq!(
        d.transport,
        Transport::Ports {
            src: 4500,
            dst: 4500
        }
    );
    // A two-octet payload that is not a keepalive cannot hold an SPI either.
    let d = decode(L3::Unknown, &udp_v4(4500, 4500, &[0xff, 0xff])).unwrap();
    assert_eq!(
        d.transport,
        Transport::Ports {
            src: 4500,
            dst: 4500
        }
    );
}

#[test]
fn natt_over_ipv6_and_configured_ports() {
    let mut l4 = udp_hdr(4500, 4500, 8);
    l4.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1]);
    let p = v6(proto::UDP, l4.len() as u16, &l4);
    let d = decode(L3::Unknown, &p).unwrap();
    assert!(matches!(
        d.transport,
        Transport::UdpIpsec {
            kind: UdpIpsec::Esp(0xdead_beef),
            ..
        }
    ));
    // With NAT-T moved to 14500 and no IKE port, 4500 and 500 are plain UDP.
    let ports = IpsecPorts::new(&[14500], &[]).unwrap();
    let d = decode_with(L3::Unknown, &p, &ports).unwrap();
    assert_eq!(
        d.transport,
        Transport::Ports {
            src: 4500,
            dst: 4500
        }
    );
    let d = decode_with(L3::Unknown, &udp_v4(500, 500, &[1, 2, 3, 4]), &ports).unwrap();
    assert_eq!(d.transport, Transport::Ports { src: 500, dst: 500 });
    let esp = udp_v4(14500, 9, &[0, 0, 0, 5, 0, 0, 0, 1]);
    let d = decode_with(L3::Unknown, &esp, &ports).unwrap();
    assert!(matches!(
        d.transport,
        Transport::UdpIpsec {
            kind: UdpIpsec::Esp(5),
            ..
        }
    ));
    // Lists past the bound, or with port 0, are refused.
    assert!(IpsecPorts::new(&[1, 2, 3, 4, 5], &[]).is_none());
    assert!(IpsecPorts::new(&[0], &[]).is_none());
    // Port 0 never matches an unused place.
    let d = decode_with(L3::Unknown, &udp_v4(0, 0, &[0, 0, 0, 5]), &ports).unwrap();
    assert_eq!(d.transport, Transport::Ports { src: 0, dst: 0 });
}
