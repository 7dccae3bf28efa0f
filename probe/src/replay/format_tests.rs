use super::*;

/// Ethernet + IPv4 + UDP, 10.0.0.1 -> 10.0.0.2 (42 bytes).
#[rustfmt::skip]
const FRAME: [u8; 42] = [
    2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00,      // dst, src, IPv4
    0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0,            // IPv4, total length 28, UDP
    10, 0, 0, 1, 10, 0, 0, 2,                            // addresses
    0x04, 0x00, 0x00, 0x35, 0, 8, 0, 0,                  // UDP 1024 -> 53
];

/// A pcapng file built block by block in one byte order.
pub(crate) struct Ng {
    big: bool,
    pub(crate) out: Vec<u8>,
}

impl Ng {
    pub(crate) fn new(big: bool) -> Self {
        let mut ng = Ng {
            big,
            out: Vec::new(),
        };
        ng.shb();
        ng
    }
    fn u16(&self, v: u16) -> [u8; 2] {
        if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }
    fn u32(&self, v: u32) -> [u8; 4] {
        if self.big {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }
    /// type, total length, body padded to 4, total length.
    fn block(&mut self, kind: u32, body: &[u8]) -> &mut Self {
        let mut body = body.to_vec();
        body.resize(body.len().next_multiple_of(4), 0);
        let len = (12 + body.len()) as u32;
        let (k, l) = (self.u32(kind), self.u32(len));
        self.out.extend(k);
        self.out.extend(l);
        self.out.extend(body);
        self.out.extend(l);
        self
    }
    fn shb(&mut self) -> &mut Self {
        let mut b = self.u32(PCAPNG_BYTE_ORDER_MAGIC).to_vec();
        b.extend(self.u16(1)); // major
        b.extend(self.u16(0)); // minor
        b.extend([0xff; 8]); // section length: unknown (-1)
        self.block(PCAPNG_SHB, &b)
    }
    /// Interface with options `(code, value)`.
    pub(crate) fn idb(
        &mut self,
        linktype: u16,
        snaplen: u32,
        options: &[(u16, Vec<u8>)],
    ) -> &mut Self {
        let mut b = self.u16(linktype).to_vec();
        b.extend([0, 0]);
        b.extend(self.u32(snaplen));
        for (code, value) in options {
            b.extend(self.u16(*code));
            b.extend(self.u16(value.len() as u16));
            b.extend(value);
            b.resize(b.len().next_multiple_of(4), 0);
        }
        if !options.is_empty() {
            b.extend([0; 4]); // opt_endofopt
        }
        self.block(BLOCK_IDB, &b)
    }
    pub(crate) fn epb(&mut self, iface: u32, ts: u64, data: &[u8]) -> &mut Self {
        let mut b = self.u32(iface).to_vec();
        b.extend(self.u32((ts >> 32) as u32));
        b.extend(self.u32(ts as u32));
        b.extend(self.u32(data.len() as u32));
        b.extend(self.u32(data.len() as u32 + 4)); // original length (longer: snapped)
        b.extend(data);
        self.block(BLOCK_EPB, &b)
    }
    fn pb(&mut self, iface: u16, ts: u64, data: &[u8]) -> &mut Self {
        let mut b = self.u16(iface).to_vec();
        b.extend(self.u16(0)); // drops
        b.extend(self.u32((ts >> 32) as u32));
        b.extend(self.u32(ts as u32));
        b.extend(self.u32(data.len() as u32));
        b.extend(self.u32(data.len() as u32));
        b.extend(data);
        self.block(BLOCK_PB, &b)
    }
    fn spb(&mut self, data: &[u8]) -> &mut Self {
        let mut b = self.u32(data.len() as u32).to_vec();
        b.extend(data);
        self.block(BLOCK_SPB, &b)
    }
}

fn all(bytes: &[u8]) -> (Vec<Record<'_>>, Option<FormatError>) {
    let mut out = Vec::new();
    let records = match Records::new(bytes) {
        Ok(r) => r,
        Err(e) => return (out, Some(e)),
    };
    for r in records {
        match r {
            Ok(r) => out.push(r),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

#[test]
fn every_packet_block_in_both_byte_orders() {
    for big in [false, true] {
        let mut ng = Ng::new(big);
        ng.idb(1, 0, &[]) // Ethernet, microseconds (default)
            .block(4, &[0, 0, 0, 0]) // name resolution block: skipped
            .epb(0, 1_700_000_000_123_456, &FRAME)
            .idb(
                101,
                65_535,
                &[
                    (2, b"raw0".to_vec()),     // if_name: ignored
                    (OPT_IF_TSRESOL, vec![9]), // nanoseconds
                    (
                        OPT_IF_TSOFFSET,
                        if big {
                            10i64.to_be_bytes()
                        } else {
                            10i64.to_le_bytes()
                        }
                        .to_vec(),
                    ),
                ],
            )
            .epb(1, 1_700_000_000_987_654_321, &FRAME[14..])
            .spb(&FRAME)
            .pb(1, 5_000_000_000, &FRAME[14..])
            .block(5, &[0; 8]); // interface statistics: skipped
        let (recs, err) = all(&ng.out);
        assert_eq!(err, None, "big endian: {big}");
        let order = if big {
            HeaderOrder::Big
        } else {
            HeaderOrder::Little
        };
        let want = [
            (1, Some(1_700_000_000_123), &FRAME[..]),
            (101, Some(1_700_000_010_987), &FRAME[14..]),
            (1, None, &FRAME[..]),
            (101, Some(10_000 + 5_000), &FRAME[14..]),
        ];
        assert_eq!(recs.len(), want.len());
        for (r, (linktype, ts_ms, data)) in recs.iter().zip(want) {
            assert_eq!(
                (r.linktype, r.ts_ms, r.data, r.order),
                (linktype, ts_ms, data, order)
            );
        }
        let c = Cursor::start(&ng.out).unwrap();
        assert!(c.is_pcapng());
        assert_eq!(c.first_linktype(&ng.out), Some(1));
    }
}

#[test]
fn timestamp_resolutions() {
    let cases: [(u8, u64, u64); 6] = [
        (6, 1_500_000, 1_500),
        (3, 1_500, 1_500),
        (0, 2, 2_000),
        (1, 15, 1_500),
        (0x80 | 10, 3 * 1024 + 512, 3_500), // 2^-10 s
        (0x80, 4, 4_000),                   // 2^0 s
    ];
    for (tsresol, units, ms) in cases {
        let mut ng = Ng::new(false);
        ng.idb(1, 0, &[(OPT_IF_TSRESOL, vec![tsresol])])
            .epb(0, units, &FRAME);
        let (recs, err) = all(&ng.out);
        assert_eq!(
            (err, recs[0].ts_ms),
            (None, Some(ms)),
            "if_tsresol {tsresol:#x}"
        );
    }
    for bad in [20u8, 0x80 | 64, 0xff] {
        let mut ng = Ng::new(false);
        ng.idb(1, 0, &[(OPT_IF_TSRESOL, vec![bad])]);
        let (_, err) = all(&ng.out);
        assert!(
            matches!(
                err,
                Some(FormatError::Corrupt {
                    what: "if_tsresol",
                    ..
                })
            ),
            "{bad:#x}: {err:?}"
        );
    }
}

#[test]
fn a_new_section_forgets_the_interfaces_of_the_last() {
    let mut ng = Ng::new(true);
    ng.idb(1, 0, &[]).idb(101, 0, &[]).epb(1, 0, &FRAME[14..]);
    let second = ng.out.len();
    let mut tail = Ng::new(false);
    tail.idb(1, 0, &[]).epb(0, 0, &FRAME).epb(1, 0, &FRAME);
    ng.out.extend(&tail.out);
    let (recs, err) = all(&ng.out);
    assert_eq!(recs.len(), 2);
    assert_eq!(
        (recs[0].order, recs[1].order),
        (HeaderOrder::Big, HeaderOrder::Little)
    );
    let bad_epb = second + 28 + 20 + 12 + FRAME.len().next_multiple_of(4) + 20;
    assert_eq!(
        err,
        Some(FormatError::Corrupt {
            offset: bad_epb as u64 + 8,
            what: "interface id without an interface description",
            value: 1,
        })
    );
}

#[test]
fn bad_lengths_are_errors_at_their_offset() {
    let mut ng = Ng::new(false);
    ng.idb(1, 0, &[]).epb(0, 0, &FRAME);
    let epb = 28 + 20;
    let ok = ng.out.clone();
    // Total length not a multiple of 4.
    let mut f = ok.clone();
    f[epb + 4] = 61;
    let (_, err) = all(&f);
    assert_eq!(
        err,
        Some(FormatError::Corrupt {
            offset: epb as u64 + 4,
            what: "block total length",
            value: 61
        })
    );
    // Trailing copy differs.
    let mut f = ok.clone();
    let last = f.len() - 4;
    f[last] ^= 4;
    let (_, err) = all(&f);
    assert!(
        matches!(
            err,
            Some(FormatError::Corrupt {
                what: "block trailing length",
                ..
            })
        ),
        "{err:?}"
    );
    // The trailing copy of a block in the middle: reported at its offset, after its packet.
    let mut two = Ng::new(false);
    two.idb(1, 0, &[]).epb(0, 0, &FRAME).epb(0, 1, &FRAME);
    let trailer = epb + 32 + FRAME.len().next_multiple_of(4) - 4;
    two.out[trailer] ^= 8;
    let (recs, err) = all(&two.out);
    assert_eq!(recs.len(), 1);
    assert_eq!(
        err,
        Some(FormatError::Corrupt {
            offset: trailer as u64,
            what: "block trailing length",
            value: u64::from((32 + FRAME.len().next_multiple_of(4)) as u32 ^ 8),
        })
    );
    // Captured length beyond the block.
    let mut f = ok.clone();
    f[epb + 20] = 200;
    let (_, err) = all(&f);
    assert!(
        matches!(
            err,
            Some(FormatError::Corrupt {
                what: "captured length beyond its block",
                value: 200,
                ..
            })
        ),
        "{err:?}"
    );
    // Cut inside the block: truncated, naming the block's offset.
    let (recs, err) = all(&ok[..ok.len() - 1]);
    assert!(recs.is_empty());
    assert!(
        matches!(err, Some(FormatError::Truncated { offset, what: "block", .. }) if offset == epb as u64),
        "{err:?}"
    );
    // A clean end after the interface: no records, no error.
    assert_eq!(all(&ok[..epb]), (vec![], None));
}

/// A small deterministic generator (SplitMix64) for the hostile-input tests.
fn mix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn cut_or_mutated_files_never_panic() {
    let mut ng = Ng::new(false);
    ng.idb(1, 0, &[(OPT_IF_TSRESOL, vec![9])])
        .epb(0, 1, &FRAME)
        .spb(&FRAME)
        .pb(0, 2, &FRAME)
        .shb()
        .idb(276, 0, &[])
        .epb(0, 3, &FRAME);
    let mut pcap = vec![
        0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0,
    ];
    for _ in 0..3 {
        pcap.extend([1, 0, 0, 0, 0, 0, 0, 0, 42, 0, 0, 0, 42, 0, 0, 0]);
        pcap.extend(FRAME);
    }
    for file in [ng.out.clone(), pcap] {
        let (full, err) = all(&file);
        assert_eq!(err, None);
        // Every prefix: the records before the cut, then a clean end or an error.
        for cut in 0..file.len() {
            let (recs, _) = all(&file[..cut]);
            assert!(recs.len() <= full.len());
        }
        // Every byte mutated, and random bursts of mutations.
        let mut seed = 7;
        for at in 0..file.len() {
            let mut f = file.clone();
            f[at] = f[at].wrapping_add(1 + (mix(&mut seed) % 255) as u8);
            let _ = all(&f);
        }
        for _ in 0..2_000 {
            let mut f = file.clone();
            for _ in 0..1 + mix(&mut seed) % 8 {
                let at = (mix(&mut seed) % f.len() as u64) as usize;
                f[at] = mix(&mut seed) as u8;
            }
            let _ = all(&f);
        }
    }
    // Random bytes behind each magic.
    let mut seed = 11;
    for magic in [
        [0x0a, 0x0d, 0x0d, 0x0a],
        [0xd4, 0xc3, 0xb2, 0xa1],
        [0xa1, 0xb2, 0x3c, 0x4d],
    ] {
        for len in 0..300 {
            let mut f = magic.to_vec();
            f.extend((0..len).map(|_| mix(&mut seed) as u8));
            let _ = all(&f);
        }
    }
}
