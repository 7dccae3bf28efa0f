use super::*;

fn summary(version: u16, sequence: u32) -> PacketSummary {
    PacketSummary {
        version,
        sequence,
        ..PacketSummary::default()
    }
}

#[test]
fn ipfix_sequence_counts_records() {
    let (gap, reset, next) = sequence_step(None, &summary(10, 100), 5);
    assert_eq!((gap, reset, next), (None, false, Some(105)));
    let (gap, _, _) = sequence_step(next, &summary(10, 110), 1);
    assert_eq!(gap, Some(5));
    let (gap, reset, _) = sequence_step(Some(110), &summary(10, 100), 1);
    assert_eq!((gap, reset), (None, true));
    // Wraps modulo 2^32.
    let (gap, _, _) = sequence_step(Some(u32::MAX), &summary(10, 1), 1);
    assert_eq!(gap, Some(2));
}

#[test]
fn v9_counts_packets() {
    let (_, _, next) = sequence_step(None, &summary(9, 7), 30);
    assert_eq!(next, Some(8));
}

/// An IPFIX message of one empty data set for template 256 in `domain`.
fn empty_data(domain: u32) -> Vec<u8> {
    let mut m = vec![0, 10, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&domain.to_be_bytes());
    m.extend_from_slice(&[1, 0, 0, 4]);
    m
}

#[test]
fn domains_per_exporter_are_bounded() {
    let one = NonZeroUsize::new(8).unwrap();
    let mut t = SessionTable::new(NonZeroUsize::new(100).unwrap(), one);
    t.set_limits(ScopeLimits {
        max_domains_per_exporter: 2,
        ..ScopeLimits::default()
    });
    let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
    let mut sink = Vec::new();
    let mut found = Vec::new();
    let mut run = |t: &mut SessionTable, from, domain| {
        t.ingest(from, &empty_data(domain), &mut sink, &mut found)
            .err()
    };
    assert_ne!(run(&mut t, a, 1), Some(DecodeError::DomainLimit));
    assert_ne!(run(&mut t, a, 2), Some(DecodeError::DomainLimit));
    assert_eq!(run(&mut t, a, 3), Some(DecodeError::DomainLimit));
    // Known domains and other addresses still pass.
    assert_ne!(run(&mut t, a, 1), Some(DecodeError::DomainLimit));
    assert_ne!(run(&mut t, b, 3), Some(DecodeError::DomainLimit));
    assert_eq!(t.scopes(), 3);
    assert_eq!(t.stats.error(DecodeError::DomainLimit), 1);
}

#[test]
fn frame_checks_lengths() {
    assert_eq!(frame(&[0, 10]), Err(DecodeError::Truncated));
    assert_eq!(frame(&[0, 3, 0, 0]), Err(DecodeError::Version));
    let mut m = vec![0u8; 16];
    m[1] = 10;
    m[3] = 17;
    assert_eq!(frame(&m), Err(DecodeError::Length));
    m[3] = 16;
    assert_eq!(frame(&m).map(|(_, d)| d), Ok(0));
}
