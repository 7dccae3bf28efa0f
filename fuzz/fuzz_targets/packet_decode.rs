//! The packet decoder never panics, and whatever it accepts goes through the flow cache:
//! input is `[l3 selector u8][group u8][payload...]`; the payload is also decoded at every
//! offset of its first bytes so deep header walks are reached from many alignments.
#![no_main]

use std::num::NonZeroU32;

use labelflow_probe::cache::CacheConfig;
use labelflow_probe::decode::decode;
use labelflow_probe::packet::{PacketMeta, L3};
use labelflow_probe::pipeline::Pipeline;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [sel, group, payload @ ..] = data else {
        return;
    };
    let l3 = match sel % 3 {
        0 => L3::Ipv4,
        1 => L3::Ipv6,
        _ => L3::Unknown,
    };
    for start in 0..payload.len().min(8) {
        if let Ok(d) = decode(l3, &payload[start..]) {
            assert!(d.length >= 20);
        }
    }
    let mut p = Pipeline::new(CacheConfig {
        max_flows: NonZeroU32::new(2).expect("non-zero"),
        user_names: |_| None,
        ..CacheConfig::default()
    });
    let meta = PacketMeta {
        group: u16::from(*group),
        l3,
        ..PacketMeta::default()
    };
    let mut exported = 0u64;
    for (i, chunk) in payload.chunks(64).enumerate() {
        let _ = p.handle(&meta, chunk, i as u64 * 7_000);
        p.expire(i as u64 * 7_000, &mut |r| exported += r.packets);
    }
    p.flush(u64::MAX / 2, &mut |r| exported += r.packets);
    assert_eq!(exported, p.stats().decode.decoded);
});
