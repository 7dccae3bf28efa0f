//! Arbitrary datagram sequences from a few exporters into the collector's ingest path
//! (session decode, conversion, labelling, aggregation): must never panic.
#![no_main]

use std::net::IpAddr;

use labelflow_collector::config::Config;
use labelflow_collector::ingest::Ingest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = Config::defaults();
    let mut ingest = Ingest::new(&cfg);
    // Input: repeated [exporter selector u8][length u16 BE][datagram bytes].
    let mut at = 0;
    while at + 3 <= data.len() {
        let exporter = IpAddr::from([10, 0, 0, data[at] % 4]);
        let len = usize::from(u16::from_be_bytes([data[at + 1], data[at + 2]]));
        at += 3;
        let end = (at + len).min(data.len());
        let _ = ingest.datagram(exporter, &data[at..end]);
        at = end;
    }
    let _ = ingest.take_batch();
});
