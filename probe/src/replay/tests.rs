use super::format::{PCAP_MAGIC_MICROS, PCAP_MAGIC_NANOS};
use super::*;
use crate::packet::Hook;

/// IPv4 header (20 bytes, total length 28, UDP 10.0.0.1 -> 10.0.0.2) + UDP header.
#[rustfmt::skip]
const V4: [u8; 28] = [
    0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    0x04, 0x00, 0x00, 0x35, 0, 8, 0, 0,
];
/// IPv6 header (payload length 8, next header UDP, ::1 -> ::2) + UDP header.
#[rustfmt::skip]
const V6: [u8; 48] = [
    0x60, 0, 0, 0, 0, 8, 17, 64,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
    0x04, 0x00, 0x00, 0x35, 0, 8, 0, 0,
];

fn u16b(big: bool, v: u16) -> [u8; 2] {
    if big {
        v.to_be_bytes()
    } else {
        v.to_le_bytes()
    }
}

fn u32b(big: bool, v: u32) -> [u8; 4] {
    if big {
        v.to_be_bytes()
    } else {
        v.to_le_bytes()
    }
}

/// A classic pcap file: header then (sec, frac, bytes) records.
fn pcap(big: bool, nanos: bool, linktype: u32, records: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
    let magic = if nanos {
        PCAP_MAGIC_NANOS
    } else {
        PCAP_MAGIC_MICROS
    };
    let mut f = Vec::new();
    f.extend(u32b(big, magic));
    f.extend(u16b(big, 2));
    f.extend(u16b(big, 4));
    f.extend(u32b(big, 0)); // thiszone
    f.extend(u32b(big, 0)); // sigfigs
    f.extend(u32b(big, 65535)); // snaplen
    f.extend(u32b(big, linktype));
    for (sec, frac, data) in records {
        f.extend(u32b(big, *sec));
        f.extend(u32b(big, *frac));
        f.extend(u32b(big, data.len() as u32));
        f.extend(u32b(big, data.len() as u32));
        f.extend(data);
    }
    f
}

fn detach(m: &PacketMeta<'_>) -> PacketMeta<'static> {
    PacketMeta { prefix: &[], ..*m }
}

/// Delivered packet: metadata (prefix detached), prefix, payload.
type Delivered = (PacketMeta<'static>, Vec<u8>, Vec<u8>);

fn read_all(file: Vec<u8>, group: u16) -> (Vec<Delivered>, ReplayStats) {
    let mut r = CaptureReader::from_vec(file, "test.pcap", group).unwrap();
    let mut out = Vec::new();
    r.for_each_packet(|m, p| out.push((detach(m), m.prefix.to_vec(), p.to_vec())))
        .unwrap();
    (out, r.stats().clone())
}

fn eth(ethertype_chain: &[u16], payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for (i, t) in ethertype_chain.iter().enumerate() {
        f.extend(t.to_be_bytes());
        if i + 1 < ethertype_chain.len() {
            f.extend([0x00, 0x64]); // TCI: VLAN 100
        }
    }
    f.extend(payload);
    f
}

#[test]
fn ethernet_with_vlans_both_orders_and_resolutions() {
    for (big, nanos) in [(false, false), (true, false), (false, true), (true, true)] {
        let frac = if nanos { 250_000_000 } else { 250_000 };
        let file = pcap(
            big,
            nanos,
            1,
            &[
                (1_700_000_000, frac, eth(&[ETH_P_IP], &V4)),
                (1_700_000_001, 0, eth(&[ETH_P_8021Q, ETH_P_IPV6], &V6)),
                (
                    1_700_000_002,
                    0,
                    eth(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP], &V4),
                ),
                (1_700_000_003, 0, eth(&[0x0806], &[0; 28])), // ARP
                (1_700_000_004, 0, vec![0; 13]),              // shorter than an Ethernet header
            ],
        );
        let (pkts, stats) = read_all(file, 42);
        assert_eq!(pkts.len(), 3);
        assert_eq!(pkts[0].0.timestamp_ms, Some(1_700_000_000_250));
        assert_eq!((pkts[0].0.group, pkts[0].0.l3), (42, L3::Ipv4));
        assert_eq!(pkts[0].2, V4);
        assert_eq!((pkts[1].0.l3, pkts[1].2.as_slice()), (L3::Ipv6, &V6[..]));
        assert_eq!(pkts[2].2, V4);
        assert_eq!(
            stats,
            ReplayStats {
                records: 5,
                packets: 3,
                non_ip: 1,
                malformed: 1
            }
        );
    }
}

#[test]
fn raw_ip_link_types() {
    for lt in [101, 12] {
        let (pkts, stats) = read_all(
            pcap(
                false,
                false,
                lt,
                &[(1, 0, V4.to_vec()), (2, 0, V6.to_vec()), (3, 0, vec![0x10])],
            ),
            1,
        );
        let l3: Vec<_> = pkts.iter().map(|p| p.0.l3).collect();
        assert_eq!(l3, [L3::Ipv4, L3::Ipv6]);
        assert_eq!(stats.non_ip, 1);
    }
    let (pkts, _) = read_all(pcap(false, false, 228, &[(1, 0, V4.to_vec())]), 1);
    assert_eq!((pkts[0].0.l3, pkts[0].2.as_slice()), (L3::Ipv4, &V4[..]));
    let (pkts, _) = read_all(pcap(true, false, 229, &[(1, 0, V6.to_vec())]), 1);
    assert_eq!((pkts[0].0.l3, pkts[0].2.as_slice()), (L3::Ipv6, &V6[..]));
}

#[test]
fn linux_cooked_v1_and_v2() {
    // SLL: packet type 0 (host), ARPHRD_ETHER 1, address length 6, address, protocol.
    let mut sll = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0];
    sll.extend(ETH_P_IPV6.to_be_bytes());
    sll.extend(V6);
    let (pkts, _) = read_all(pcap(false, false, 113, &[(1, 0, sll)]), 3);
    assert_eq!((pkts[0].0.l3, pkts[0].2.as_slice()), (L3::Ipv6, &V6[..]));
    // SLL2: protocol, reserved, ifindex 7, ARPHRD 1, packet type, address length 6, address.
    let sll2 = |ptype: u8| {
        let mut v = ETH_P_IP.to_be_bytes().to_vec();
        v.extend([0, 0, 0, 0, 0, 7, 0, 1, ptype, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
        v.extend(V4);
        v
    };
    let (pkts, stats) = read_all(
        pcap(
            false,
            false,
            276,
            &[
                (1, 0, sll2(0)),
                (2, 0, sll2(4)),
                (3, 0, vec![0x08, 0x00, 0, 0]),
            ],
        ),
        3,
    );
    assert_eq!((pkts[0].0.ingress_if, pkts[0].0.egress_if), (7, 0));
    assert_eq!((pkts[1].0.ingress_if, pkts[1].0.egress_if), (0, 7));
    assert_eq!(pkts[1].2, V4);
    assert_eq!(stats.malformed, 1);
}

/// An NFLOG record as `tcpdump -i nflog:N -w` writes it, TLV headers in the file's order.
fn nflog_record(big: bool, group: u16, payload: &[u8]) -> Vec<u8> {
    let tlv = |len: u16, kind: u16| [u16b(big, len), u16b(big, kind)].concat();
    let mut r = vec![2, 0];
    r.extend(group.to_be_bytes());
    r.extend(tlv(8, 1)); // PACKET_HDR: IPv4, FORWARD
    r.extend([0x08, 0x00, 2, 0]);
    r.extend(tlv(8, 2)); // MARK 0x10
    r.extend(0x10u32.to_be_bytes());
    r.extend(tlv(8, 4)); // INDEV 3
    r.extend(3u32.to_be_bytes());
    r.extend(tlv(9, 10)); // PREFIX "vpn\0\0" (len 9, padded to 12)
    r.extend(b"vpn\0\0\0\0\0");
    r.extend(tlv(8, 12)); // SEQ 77
    r.extend(77u32.to_be_bytes());
    if !payload.is_empty() {
        r.extend(tlv(4 + payload.len() as u16, 9));
        r.extend(payload);
        r.resize(r.len().next_multiple_of(4), 0);
    }
    r
}

#[test]
fn nflog_records_carry_group_and_metadata() {
    for big in [false, true] {
        let file = pcap(
            big,
            false,
            239,
            &[
                (5, 1000, nflog_record(big, 2, &V4)),
                (6, 0, nflog_record(big, 3, &[])), // copy mode meta: no payload
                (7, 0, vec![2, 0, 0]),             // cut nflog_hdr
            ],
        );
        let (pkts, stats) = read_all(file, 99);
        assert_eq!(pkts.len(), 1);
        let (m, prefix, payload) = &pkts[0];
        assert_eq!(prefix, b"vpn");
        assert_eq!(payload, &V4);
        assert_eq!(
            *m,
            PacketMeta {
                group: 2,
                l3: L3::Ipv4,
                hook: Some(Hook::Forward),
                mark: 0x10,
                ingress_if: 3,
                seq: Some(77),
                timestamp_ms: Some(5001),
                ..PacketMeta::default()
            }
        );
        assert_eq!((stats.non_ip, stats.malformed), (1, 1));
    }
}

#[test]
fn truncated_last_record_is_reported_after_the_rest() {
    let mut file = pcap(
        false,
        false,
        101,
        &[(1, 0, V4.to_vec()), (2, 0, V4.to_vec())],
    );
    let second = 24 + 16 + V4.len();
    file.truncate(file.len() - 3);
    let mut r = CaptureReader::from_vec(file.clone(), "cut.pcap", 1).unwrap();
    assert!(r.next_packet().unwrap().is_ok());
    let err = r.next_packet().unwrap().unwrap_err();
    assert!(
        matches!(err, ReplayError::Format { source: FormatError::Truncated { offset, what: "record", need: 44, have: 41 }, .. } if offset == second as u64),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("cut.pcap: truncated at byte 68"),
        "{err}"
    );
    file.truncate(second + 5);
    let mut r = CaptureReader::from_vec(file, "cut.pcap", 1).unwrap();
    assert!(r.next_packet().unwrap().is_ok());
    assert!(matches!(
        r.next_packet(),
        Some(Err(ReplayError::Format {
            source: FormatError::Truncated {
                what: "record header",
                have: 5,
                ..
            },
            ..
        }))
    ));
}

#[test]
fn bad_files_are_named_errors() {
    let format_err = |r: Result<CaptureReader, ReplayError>| match r {
        Err(ReplayError::Format { source, .. }) => source,
        other => panic!("expected a format error, got {other:?}"),
    };
    // A pcapng section header whose byte-order magic is wrong.
    let ng = [
        0x0a, 0x0d, 0x0d, 0x0a, 0x1c, 0, 0, 0, 0x4d, 0x3c, 0x2b, 0x1b,
    ]
    .repeat(3);
    assert!(matches!(
        format_err(CaptureReader::from_vec(ng, "a", 1)),
        FormatError::Corrupt {
            offset: 8,
            what: "section byte-order magic",
            ..
        }
    ));
    let junk = vec![0x55; 24];
    assert!(matches!(
        format_err(CaptureReader::from_vec(junk, "b", 1)),
        FormatError::BadMagic { .. }
    ));
    let other = pcap(false, false, 105, &[]); // 802.11
    assert!(matches!(
        format_err(CaptureReader::from_vec(other, "c", 1)),
        FormatError::UnsupportedLinkType { linktype: 105 }
    ));
    let short = pcap(false, false, 1, &[])[..10].to_vec();
    assert!(matches!(
        format_err(CaptureReader::from_vec(short, "d", 1)),
        FormatError::Truncated {
            offset: 0,
            what: "file header",
            ..
        }
    ));
    let mut huge = pcap(false, false, 1, &[(1, 0, V4.to_vec())]);
    huge[24 + 8..24 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut r = CaptureReader::from_vec(huge, "e", 1).unwrap();
    let err = r.next_packet().unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            ReplayError::Format {
                source: FormatError::Corrupt {
                    offset: 32,
                    what: "record length",
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "e: corrupt at byte 32: record length 4294967295"
    );
    let empty = pcap(false, false, 1, &[]);
    let mut r = CaptureReader::from_vec(empty, "f", 1).unwrap();
    assert!(r.next_packet().is_none());
}

#[test]
fn records_larger_than_a_read_and_a_file_read_in_chunks() {
    let big_rec = {
        let mut v = V4.to_vec();
        v.resize(3 << 20, 0xee);
        v
    };
    let mut records: Vec<_> = (0..50).map(|i| (i, 0, V4.to_vec())).collect();
    records.push((60, 0, big_rec.clone()));
    records.push((61, 0, V6.to_vec()));
    let mut file = pcap(false, false, 101, &records);
    file[16..20].copy_from_slice(&(4u32 << 20).to_le_bytes()); // snaplen 4 MiB
    let path = std::env::temp_dir().join(format!("labelflow-replay-{}.pcap", std::process::id()));
    // Records of every size from 1 to 200 bytes past the IP header, so chunk boundaries
    // fall inside headers and bodies alike.
    let mut odd: Vec<_> = (0..40_000u32)
        .map(|i| {
            let mut v = V4.to_vec();
            v.resize(28 + (i % 200) as usize, i as u8);
            (i, 0, v)
        })
        .collect();
    odd.push((40_000, 0, V6.to_vec()));
    let odd_file = pcap(true, true, 101, &odd);
    assert!(odd_file.len() > 3 * CHUNK);
    // Read as a pipe is, mapped with a window small enough that records and headers
    // straddle its moves, and mapped as shipped.
    for window in [None, Some(64 << 10), Some(super::MAP_WINDOW)] {
        std::fs::write(&path, &odd_file).unwrap();
        let mut from_file = Vec::new();
        let mut r = CaptureReader::open_as(&path, 1, window).unwrap();
        r.for_each_packet(|m, p| from_file.push((detach(m), p.to_vec())))
            .unwrap();
        // Cut inside the last record: the error names its offset in the file, not the buffer.
        let last = odd_file.len() - 16 - V6.len();
        std::fs::write(&path, &odd_file[..odd_file.len() - 3]).unwrap();
        let mut r = CaptureReader::open_as(&path, 1, window).unwrap();
        let err = r.for_each_packet(|_, _| {}).unwrap_err();
        assert!(
            matches!(err, ReplayError::Format { source: FormatError::Truncated { offset, what: "record", .. }, .. } if offset == last as u64),
            "{err:?}"
        );
        assert_eq!(r.stats().packets, 40_000);
        let (in_memory, stats) = read_all(odd_file.clone(), 1);
        assert_eq!(stats.packets, 40_001);
        assert_eq!(from_file.len(), in_memory.len());
        for (a, b) in from_file.iter().zip(&in_memory) {
            assert_eq!((&a.0, &a.1), (&b.0, &b.2));
        }
        std::fs::write(&path, &file).unwrap();
        let mut r = CaptureReader::open_as(&path, 1, window).unwrap();
        let mut n = 0;
        while let Some(p) = r.next_packet() {
            let (m, payload) = p.unwrap();
            assert_eq!(
                payload.len(),
                if n == 50 {
                    big_rec.len()
                } else if n == 51 {
                    48
                } else {
                    28
                }
            );
            assert!(m.timestamp_ms.is_some());
            n += 1;
        }
        assert_eq!(n, 52);
        std::fs::write(&path, b"").unwrap();
        let err = CaptureReader::open_as(&path, 1, window).unwrap_err();
        assert!(
            err.to_string().contains("truncated at byte 0: file header"),
            "{err}"
        );
    }
    // pcapng packets of many sizes, big-endian, over the same windows.
    let mut ng = super::format::tests::Ng::new(true);
    ng.idb(101, 0, &[]);
    for i in 0..20_000u32 {
        let mut v = V4.to_vec();
        v.resize(28 + (i % 300) as usize, i as u8);
        ng.epb(0, u64::from(i), &v);
    }
    let ng_file = ng.out.clone();
    let (in_memory, _) = read_all(ng_file.clone(), 1);
    assert_eq!(in_memory.len(), 20_000);
    std::fs::write(&path, &ng_file).unwrap();
    for window in [None, Some(64 << 10), Some(super::MAP_WINDOW)] {
        let mut from_file = Vec::new();
        let mut r = CaptureReader::open_as(&path, 1, window).unwrap();
        r.for_each_packet(|m, p| from_file.push((detach(m), p.to_vec())))
            .unwrap();
        assert_eq!(from_file.len(), in_memory.len(), "{window:?}");
        for (a, b) in from_file.iter().zip(&in_memory) {
            assert_eq!((&a.0, &a.1), (&b.0, &b.2));
        }
    }
    std::fs::remove_file(&path).unwrap();
    let (pkts, _) = read_all(file, 1);
    assert_eq!(pkts[50].2, big_rec);
}
