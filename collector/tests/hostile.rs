//! A hostile stream: several exporters send valid templates (some with absurd field lengths),
//! records with absurd times, and mutated copies of valid datagrams (truncated, bytes
//! flipped, random bytes, wrong version), from a seeded generator. The collector stays up,
//! its peak RSS stays under the limit the README promises for default limits, a clean
//! exporter sending at the same time gets exact totals, and SIGTERM under load ends it
//! within 10 s.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Peak RSS the collector may reach under this stream with default limits.
const RSS_LIMIT_KB: u64 = 256 * 1024;
/// Hostile datagrams per exporter.
const HOSTILE_PER_EXPORTER: usize = 10_000;
const HOSTILE_EXPORTERS: u8 = 3;
/// Hostile datagrams between two waits for the collector to catch up (so the kernel's
/// receive buffer never overflows and the clean exporter's datagrams all arrive).
const CHUNK: usize = 1_000;
const CLEAN_LABEL: &str = "clean-exporter-7f3a";

/// A template whose field lengths no record can satisfy sensibly: a 65000-octet fixed
/// applicationName, a 200-octet counter, a 1-octet address.
fn absurd_template(export: u32, seq: u32, domain: u32, id: u16) -> Vec<u8> {
    let fields: &[(u16, u16)] = &[(8, 1), (1, 200), (152, 8), (153, 8), (96, 65000)];
    let mut m = Vec::new();
    m.extend_from_slice(&10u16.to_be_bytes());
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&export.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&domain.to_be_bytes());
    m.extend_from_slice(&2u16.to_be_bytes());
    m.extend_from_slice(&((8 + 4 * fields.len()) as u16).to_be_bytes());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    for (ie, len) in fields {
        m.extend_from_slice(&ie.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
    }
    let n = m.len() as u16;
    m[2..4].copy_from_slice(&n.to_be_bytes());
    m
}

/// Times a broken exporter might claim: far future, the epoch, the end of time, end before
/// start, a month-long flow, a day-long flow in the last week, a year ago.
fn absurd_times(r: &mut Rng, now_ms: u64) -> (u64, u64) {
    match r.below(7) {
        0 => {
            let s = now_ms + 86_400_000 * (1 + r.below(10_000));
            (s, s + r.below(600_000))
        }
        1 => (0, r.below(1_000_000)),
        2 => (u64::MAX - r.below(1000), u64::MAX),
        3 => {
            let e = now_ms - r.below(3_600_000);
            (e + 1 + r.below(86_400_000 * 30), e)
        }
        4 => (now_ms - 86_400_000 * 31, now_ms - r.below(60_000)),
        5 => {
            let e = now_ms - r.below(86_400_000 * 7);
            (e - 86_400_000, e)
        }
        _ => {
            let e = now_ms - 86_400_000 * 365 - r.below(86_400_000);
            (e - r.below(60_000), e)
        }
    }
}

/// A valid data datagram: random addresses and ports, some records with absurd times.
fn valid_data(r: &mut Rng, seq: u32, domain: u32, now_ms: u64) -> Vec<u8> {
    let n = 1 + r.below(20) as usize;
    let flows: Vec<Flow> = (0..n)
        .map(|_| {
            let (start_ms, end_ms) = if r.below(8) == 0 {
                absurd_times(r, now_ms)
            } else {
                let e = now_ms - r.below(120_000);
                (e - r.below(60_000), e)
            };
            Flow {
                src: Ipv4Addr::from(r.next_u64() as u32),
                dst: Ipv4Addr::from(r.next_u64() as u32),
                protocol: [6, 17, 50, 1][r.below(4) as usize],
                src_port: r.next_u64() as u16,
                dst_port: r.next_u64() as u16,
                spi: r.next_u64() as u32,
                bytes: r.below(1 << 40),
                packets: r.below(1 << 30),
                start_ms,
                end_ms,
                group: r.below(8) as u32,
                label: format!("h{}", r.below(1000)),
            }
        })
        .collect();
    ipfix_data((now_ms / 1000) as u32, seq, domain, &flows)
}

/// One of the four mutations of a valid datagram.
fn mutate(r: &mut Rng, mut d: Vec<u8>) -> Vec<u8> {
    match r.below(4) {
        0 => {
            let keep = r.below(d.len() as u64) as usize;
            d.truncate(keep);
        }
        1 => {
            for _ in 0..1 + r.below(4) {
                let at = r.below(d.len() as u64) as usize;
                d[at] ^= 1 << r.below(8);
            }
        }
        2 => {
            let n = 1 + r.below(1400) as usize;
            d = (0..n).map(|_| r.next_u64() as u8).collect();
        }
        _ => {
            let v = [0u16, 1, 5, 7, 9, 11, 0xffff][r.below(7) as usize];
            d[0..2].copy_from_slice(&v.to_be_bytes());
        }
    }
    d
}

/// The next hostile datagram of an exporter: mostly mutations of valid data and template
/// datagrams, some valid data with absurd times, some templates with absurd lengths.
fn hostile(r: &mut Rng, seq: u32, now_ms: u64) -> Vec<u8> {
    let domain = r.below(4) as u32;
    let export = (now_ms / 1000) as u32;
    match r.below(10) {
        0 => absurd_template(export, seq, domain, 256 + r.below(2000) as u16),
        1 => ipfix_template(export, seq, domain),
        2 | 3 => valid_data(r, seq, domain, now_ms),
        4 => {
            let t = ipfix_template(export, seq, domain);
            mutate(r, t)
        }
        _ => {
            let d = valid_data(r, seq, domain, now_ms);
            mutate(r, d)
        }
    }
}

fn now_ms() -> u64 {
    u64::from(now_secs()) * 1000
}

/// Wait (bounded) until the collector has received `n` datagrams.
fn wait_received(c: &mut Collector, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = c.metric("labelflow_collector_datagrams_total");
        if got >= n {
            return;
        }
        assert!(
            c.child_alive(),
            "collector died after {got} of {n} datagrams"
        );
        assert!(
            Instant::now() < deadline,
            "only {got} of {n} datagrams received"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hostile_stream_keeps_memory_bounded_and_clean_totals_exact() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let mut c = Collector::start(dir.path(), &db, "");
    let clean = UdpSocket::bind("127.0.0.9:0").unwrap();
    let hostile_socks: Vec<UdpSocket> = (0..HOSTILE_EXPORTERS)
        .map(|i| UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 20 + i), 0)).unwrap())
        .collect();
    let mut rng = Rng::new(0x5eed_0010);

    // The clean exporter: a template, then 10 records of 1000 + i octets per datagram,
    // one datagram after every chunk of hostile ones.
    let mut sent = 0u64;
    let mut clean_seq = 0u32;
    let (mut clean_bytes, mut clean_dns) = (0u64, 0u64);
    let clean_datagram = |seq: &mut u32, n: u64| {
        let t = now_ms() - 30_000;
        let flows: Vec<Flow> = (0..10)
            .map(|i| {
                let mut f = flow(CLEAN_LABEL, 1000 + i + n, t + i);
                f.dst_port = if i % 2 == 0 { 53 } else { 4242 };
                f
            })
            .collect();
        let b: u64 = flows.iter().map(|f| f.bytes).sum();
        let dns: u64 = flows
            .iter()
            .filter(|f| f.dst_port == 53)
            .map(|f| f.bytes)
            .sum();
        let d = ipfix_data(now_secs(), *seq, 1, &flows);
        *seq += 10;
        (d, b, dns)
    };
    c.send(&clean, &ipfix_template(now_secs(), 0, 1));
    sent += 1;

    let mut seqs = [0u32; HOSTILE_EXPORTERS as usize];
    for chunk in 0..(HOSTILE_PER_EXPORTER * HOSTILE_EXPORTERS as usize / CHUNK) {
        let (d, b, dns) = clean_datagram(&mut clean_seq, chunk as u64);
        c.send(&clean, &d);
        clean_bytes += b;
        clean_dns += dns;
        sent += 1;
        for k in 0..CHUNK {
            let e = k % HOSTILE_EXPORTERS as usize;
            let d = hostile(&mut rng, seqs[e], now_ms());
            seqs[e] = seqs[e].wrapping_add(20);
            hostile_socks[e].send_to(&d, ("127.0.0.1", c.udp)).unwrap();
            sent += 1;
        }
        wait_received(&mut c, sent);
    }
    c.wait_committed(sent);
    let peak = peak_rss_kb(c.child.id());
    assert!(
        peak < RSS_LIMIT_KB,
        "peak RSS {peak} kB over {RSS_LIMIT_KB} kB"
    );
    let metrics = c.try_get("/metrics").unwrap();
    let dropped_times: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("labelflow_collector_time_rule_records_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(dropped_times > 0, "no record met the time rule:\n{metrics}");

    // SIGTERM while the hostile exporters keep sending as fast as they can.
    let running = Arc::new(AtomicBool::new(true));
    let blaster = {
        let running = running.clone();
        let (udp, socks) = (c.udp, hostile_socks);
        std::thread::spawn(move || {
            let mut r = Rng::new(0x5eed_0011);
            let mut seq = 0;
            while running.load(Ordering::Relaxed) {
                for s in &socks {
                    let _ = s.send_to(&hostile(&mut r, seq, now_ms()), ("127.0.0.1", udp));
                }
                seq = seq.wrapping_add(20);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    c.signal("TERM");
    let status = c.wait_exit(Duration::from_secs(10));
    let took = t.elapsed();
    running.store(false, Ordering::Relaxed);
    blaster.join().unwrap();
    let status = status.unwrap_or_else(|| panic!("collector still running 10 s after SIGTERM"));
    assert!(status.success(), "collector exited with {status}");
    eprintln!("peak RSS {peak} kB; SIGTERM under load took {took:?}");

    let labels = all_time_bytes(&db, "label", "label");
    let got = labels
        .iter()
        .find(|(l, _)| l == CLEAN_LABEL)
        .map(|(_, b)| *b);
    assert_eq!(got, Some(clean_bytes), "clean exporter's label total");
    let ports = all_time_bytes(&db, "port", "port");
    let dns = ports.iter().find(|(p, _)| p == "udp/53").map(|(_, b)| *b);
    // Hostile records may add to udp/53 too; the clean exporter's share is all there.
    assert!(
        dns.unwrap_or(0) >= clean_dns,
        "udp/53 {dns:?} < {clean_dns}"
    );
}
