use super::*;

/// `nlattr` with a host-order header and `value`, padded to 4.
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(value);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

fn nest(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
    nla(kind | 0x8000, &parts.concat())
}

fn tuple(kind: u16, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    nest(
        kind,
        &[
            nest(
                cta::TUPLE_IP,
                &[nla(cta::IP_V4_SRC, &src), nla(cta::IP_V4_DST, &dst)],
            ),
            nest(
                cta::TUPLE_PROTO,
                &[
                    nla(cta::PROTO_NUM, &[6]),
                    nla(cta::PROTO_SRC_PORT, &sport.to_be_bytes()),
                    nla(cta::PROTO_DST_PORT, &dport.to_be_bytes()),
                ],
            ),
        ],
    )
}

fn counters(kind: u16, packets: u64, bytes: u64) -> Vec<u8> {
    nest(
        kind,
        &[
            nla(cta::COUNTERS_PACKETS, &packets.to_be_bytes()),
            nla(cta::COUNTERS_BYTES, &bytes.to_be_bytes()),
        ],
    )
}

/// A DESTROY event as `ctnetlink_conntrack_event` builds it (attribute order as the kernel's).
fn destroy_body() -> (Vec<u8>, Vec<u8>) {
    let orig = tuple(cta::TUPLE_ORIG, [10, 1, 0, 2], [198, 51, 100, 1], 40000, 80);
    let mut body = vec![2, 0, 0, 0]; // nfgenmsg: AF_INET, v0, res_id 0
    body.extend(&orig);
    body.extend(tuple(
        cta::TUPLE_REPLY,
        [198, 51, 100, 1],
        [203, 0, 113, 1],
        80,
        61000,
    ));
    body.extend(nla(cta::ZONE, &7u16.to_be_bytes()));
    body.extend(nla(cta::STATUS, &0x18eu32.to_be_bytes()));
    body.extend(counters(cta::COUNTERS_ORIG, 10, 900));
    body.extend(counters(cta::COUNTERS_REPLY, 8, 12_000));
    body.extend(nest(
        cta::TIMESTAMP,
        &[
            nla(cta::TIMESTAMP_START, &1_000_000_000_000u64.to_be_bytes()),
            nla(cta::TIMESTAMP_STOP, &1_005_000_000_000u64.to_be_bytes()),
        ],
    ));
    body.extend(nest(
        cta::PROTOINFO,
        &[nest(
            cta::PROTOINFO_TCP,
            &[nla(cta::PROTOINFO_TCP_STATE, &[7])],
        )],
    ));
    body.extend(nla(cta::MARK, &0x13u32.to_be_bytes()));
    body.extend(nla(cta::ID, &0xabcdu32.to_be_bytes()));
    (body, orig)
}

#[test]
fn destroy_event_parses_every_field() {
    let (body, orig) = destroy_body();
    let e = parse_entry(CT_DELETE_TYPE, 0, &body).unwrap().unwrap();
    assert_eq!(e.event, CtEvent::Destroy);
    assert_eq!(e.family, 2);
    assert_eq!(e.orig.src, "10.1.0.2".parse::<IpAddr>().unwrap());
    assert_eq!(
        (e.orig.src_port, e.orig.dst_port, e.orig.protocol),
        (40000, 80, 6)
    );
    assert_eq!(e.reply.dst, "203.0.113.1".parse::<IpAddr>().unwrap());
    assert_eq!(e.reply.dst_port, 61000);
    assert_eq!(e.orig_raw, &orig[..]);
    assert_eq!(
        e.counters_orig,
        Some(Counters {
            packets: 10,
            bytes: 900
        })
    );
    assert_eq!(e.counters_reply.map(|c| c.bytes), Some(12_000));
    assert_eq!(
        (e.start_ns, e.stop_ns),
        (Some(1_000_000_000_000), Some(1_005_000_000_000))
    );
    assert_eq!(
        (e.zone, e.mark, e.id, e.tcp_state),
        (7, 0x13, 0xabcd, Some(7))
    );
}

#[test]
fn new_and_update_events_and_other_types() {
    let (body, _) = destroy_body();
    let e = parse_entry(CT_NEW_TYPE, NLM_F_CREATE | NLM_F_EXCL, &body)
        .unwrap()
        .unwrap();
    assert_eq!(e.event, CtEvent::New);
    let e = parse_entry(CT_NEW_TYPE, 0, &body).unwrap().unwrap();
    assert_eq!(e.event, CtEvent::Update);
    assert_eq!(parse_entry(0x0400, 0, &body), Ok(None));
}

#[test]
fn truncated_messages_are_errors_not_panics() {
    let (body, _) = destroy_body();
    assert!(parse_entry(CT_DELETE_TYPE, 0, &body[..2]).is_err());
    for cut in 4..body.len() {
        let _ = parse_entry(CT_DELETE_TYPE, 0, &body[..cut]);
    }
    // A counter value shorter than 8 octets.
    let mut bad = vec![2, 0, 0, 0];
    bad.extend(nest(
        cta::COUNTERS_ORIG,
        &[nla(cta::COUNTERS_BYTES, &[1, 2, 3])],
    ));
    assert!(matches!(
        parse_entry(CT_DELETE_TYPE, 0, &bad),
        Err(WireError::BadAttributeValue { expected: 8, .. })
    ));
}

#[test]
fn ctrzero_request_names_the_connection_by_its_tuple_and_zone() {
    let (_, orig) = destroy_body();
    let mut out = Vec::new();
    ctrzero_request(&mut out, 9, 2, &orig, 7);
    let len = u32::from_ne_bytes(out[0..4].try_into().unwrap()) as usize;
    assert_eq!(len, out.len());
    assert_eq!(u16::from_ne_bytes([out[4], out[5]]), 0x103); // ctnetlink GET_CTRZERO
    assert_eq!(u16::from_ne_bytes([out[6], out[7]]), NLM_F_REQUEST);
    assert_eq!(u32::from_ne_bytes(out[8..12].try_into().unwrap()), 9);
    assert_eq!(&out[16..20], &[2, 0, 0, 0]);
    assert_eq!(&out[20..20 + orig.len()], &orig[..]);
    assert_eq!(
        &out[20 + orig.len()..],
        &nla(cta::ZONE, &7u16.to_be_bytes())[..]
    );
    let mut dump = Vec::new();
    dump_request(&mut dump, 3);
    assert_eq!(dump.len(), REQUEST_HEADER_LEN);
    assert_eq!(
        u16::from_ne_bytes([dump[6], dump[7]]),
        NLM_F_REQUEST | NLM_F_DUMP
    );
}

#[test]
fn ipv6_icmp_tuples_carry_type_and_code() {
    let src: [u8; 16] = "2001:db8:2::2"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    let dst: [u8; 16] = "2001:db8:1::1"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    let tuple6 = |kind, s: &[u8; 16], d: &[u8; 16], icmp_type: u8| {
        nest(
            kind,
            &[
                nest(
                    cta::TUPLE_IP,
                    &[nla(cta::IP_V6_SRC, s), nla(cta::IP_V6_DST, d)],
                ),
                nest(
                    cta::TUPLE_PROTO,
                    &[
                        nla(cta::PROTO_NUM, &[58]),
                        nla(cta::PROTO_ICMPV6_ID, &7u16.to_be_bytes()),
                        nla(cta::PROTO_ICMPV6_TYPE, &[icmp_type]),
                        nla(cta::PROTO_ICMPV6_CODE, &[0]),
                    ],
                ),
            ],
        )
    };
    let mut body = vec![10, 0, 0, 0]; // AF_INET6
    body.extend(tuple6(cta::TUPLE_ORIG, &src, &dst, 128));
    body.extend(tuple6(cta::TUPLE_REPLY, &dst, &src, 129));
    let e = parse_entry(CT_DELETE_TYPE, 0, &body).unwrap().unwrap();
    assert_eq!(e.family, 10);
    assert_eq!(e.orig.src, IpAddr::from(src));
    assert_eq!(e.reply.src, IpAddr::from(dst));
    assert_eq!((e.orig.protocol, e.orig.icmp_type_code), (58, 128 << 8));
    assert_eq!(e.reply.icmp_type_code, 129 << 8);
    assert_eq!((e.orig.src_port, e.orig.dst_port), (0, 0));
    assert_eq!((e.counters_orig, e.start_ns), (None, None));
}
