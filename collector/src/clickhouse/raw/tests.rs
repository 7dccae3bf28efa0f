use super::*;

/// A record over its own times.
fn push(log: &mut RawLog, f: &Flow) {
    log.push(f, (f.start_ms, f.end_ms));
}

fn flow(label: u32, tunnel: Option<u32>, v6: bool) -> Flow {
    let a = if v6 {
        "2001:db8::1".parse().unwrap()
    } else {
        "10.0.0.1".parse().unwrap()
    };
    Flow {
        label,
        src: a,
        dst: "192.0.2.9".parse().unwrap(),
        protocol: 50,
        src_port: 0,
        dst_port: 0,
        spi: Some(0x1234),
        tunnel,
        bytes: 1000,
        packets: 3,
        sampling: 2,
        start_ms: 1_700_000_000_123,
        end_ms: 1_700_000_001_456,
        nat: v6.then(|| ("10.0.0.1".parse().unwrap(), "203.0.113.1".parse().unwrap())),
        reply: v6.then_some(true),
    }
}

#[test]
fn records_roundtrip_per_datagram_and_stop_at_garbage() {
    let names = ["esp", "other"];
    let mut log = RawLog::default();
    assert!(log.take(|i| names[i as usize], |_| "t").is_none());
    let e1: IpAddr = "127.0.0.1".parse().unwrap();
    log.begin_datagram(e1);
    push(&mut log, &flow(0, None, false));
    push(&mut log, &flow(1, Some(0), true));
    log.end_datagram(Some(7));
    // A datagram that decoded nothing leaves nothing behind.
    log.begin_datagram("::1".parse().unwrap());
    log.end_datagram(None);
    log.begin_datagram("::1".parse().unwrap());
    push(&mut log, &flow(0, None, false));
    log.end_datagram(Some(9));
    let raw = log.take(|i| names[i as usize], |_| "tun-a").unwrap();
    assert_eq!(raw.records, 3);
    let mut out = Vec::new();
    decode(&raw.blob, &mut out).unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!((out[0].exporter, out[0].domain), (e1, 7));
    assert_eq!(
        (out[0].label.as_str(), out[0].tunnel.as_str(), out[0].spi),
        ("esp", "", 0x1234)
    );
    assert_eq!(
        (out[0].bytes, out[0].packets, out[0].sampling),
        (2000, 6, 2)
    );
    assert_eq!((out[0].nat, out[0].direction), (None, 0));
    assert_eq!(
        (out[1].label.as_str(), out[1].tunnel.as_str()),
        ("other", "tun-a")
    );
    assert_eq!(out[1].src, "2001:db8::1".parse::<IpAddr>().unwrap());
    assert_eq!(out[1].direction, 2);
    assert!(out[1].nat.is_some());
    assert_eq!((out[2].domain, out[2].end_ms), (9, 1_700_000_001_456));
    // Cut short: the records before the damage come back.
    let mut out = Vec::new();
    assert_eq!(decode(&raw.blob[..raw.blob.len() - 3], &mut out), Err(2));
    assert_eq!(out.len(), 2);
}

#[test]
fn each_batch_names_the_ids_it_used_once() {
    let names: Vec<String> = (0..200).map(|i| format!("l{i}")).collect();
    let mut log = RawLog::default();
    log.begin_datagram("127.0.0.1".parse().unwrap());
    for id in [0, 63, 64, 150, 63, 0, 150] {
        push(&mut log, &flow(id, Some(id), false));
    }
    log.end_datagram(Some(1));
    let raw = log
        .take(|i| &names[i as usize], |i| &names[i as usize])
        .unwrap();
    // Four labels and four tunnels named, once each.
    assert_eq!(raw.blob[..4], 4u32.to_le_bytes());
    let mut out = Vec::new();
    decode(&raw.blob, &mut out).unwrap();
    let got: Vec<&str> = out.iter().map(|f| f.label.as_str()).collect();
    assert_eq!(got, ["l0", "l63", "l64", "l150", "l63", "l0", "l150"]);
    // The next batch starts empty: the ids it uses are named in it again.
    log.begin_datagram("127.0.0.1".parse().unwrap());
    push(&mut log, &flow(64, Some(63), false));
    log.end_datagram(Some(1));
    let raw = log
        .take(|i| &names[i as usize], |i| &names[i as usize])
        .unwrap();
    let mut out = Vec::new();
    decode(&raw.blob, &mut out).unwrap();
    assert_eq!(
        (out[0].label.as_str(), out[0].tunnel.as_str()),
        ("l64", "l63")
    );
}

#[test]
fn outbox_bounds_backlog_by_dropping_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join("r.db")).unwrap();
    create(&conn, 5_000_000).unwrap();
    let names = ["a"];
    for i in 0..5 {
        let mut log = RawLog::default();
        log.begin_datagram("127.0.0.1".parse().unwrap());
        for _ in 0..=i {
            push(&mut log, &flow(0, None, false));
        }
        log.end_datagram(Some(1));
        let raw = log.take(|i| names[i as usize], |_| "").unwrap();
        let tx = conn.transaction().unwrap();
        record(&tx, &raw).unwrap();
        tx.commit().unwrap();
    }
    assert_eq!(backlog(&conn).unwrap().0, 5);
    // The two oldest (1 + 2 records) go.
    assert_eq!(bound(&mut conn, 3, usize::MAX).unwrap(), (2, 3));
    assert_eq!(bound(&mut conn, 3, usize::MAX).unwrap(), (0, 0));
    // By octets: the newest batches that fit stay (3, 4 and 5 records here); one
    // octet less than all three and the oldest of them goes too.
    let sizes: Vec<i64> = conn
        .prepare("SELECT length(blob) FROM clickhouse_raw_outbox ORDER BY batch")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let all = sizes.iter().sum::<i64>() as usize;
    assert_eq!(bound(&mut conn, 3, all).unwrap(), (0, 0));
    std::fs::copy(dir.path().join("r.db"), dir.path().join("copy.db")).unwrap();
    let mut copy = Connection::open(dir.path().join("copy.db")).unwrap();
    assert_eq!(bound(&mut copy, 3, all - 1).unwrap(), (1, 3));
    assert_eq!(bound(&mut copy, 3, sizes[2] as usize).unwrap(), (1, 4));
    assert_eq!(backlog(&copy).unwrap().0, 1);
    // At least one batch, then whole batches up to the record budget.
    let p = take(&conn, 6).unwrap().unwrap();
    let ids: Vec<i64> = p.batches.iter().map(|b| b.0).collect();
    assert_eq!(ids, [5_000_003]);
    let p = take(&conn, 8).unwrap().unwrap();
    assert_eq!(p.batches.len(), 2);
    assert_eq!(p.batches[1].1.len(), 4);
    acknowledge(&conn, p.batches[1].0).unwrap();
    assert_eq!(backlog(&conn).unwrap(), (1, 5, backlog(&conn).unwrap().2));
}
