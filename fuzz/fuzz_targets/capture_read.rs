//! The capture reader (pcap and pcapng block walk, link layers) never panics whatever the
//! bytes, and every packet it delivers goes through decode and the flow cache: what the cache
//! exports adds up to what it decoded.
#![no_main]

use std::num::NonZeroU32;

use labelflow_probe::cache::CacheConfig;
use labelflow_probe::pipeline::Pipeline;
use labelflow_probe::replay::format::Records;
use labelflow_probe::replay::CaptureReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The block reader alone: records borrow from the input and stay inside it.
    if let Ok(records) = Records::new(data) {
        let range = data.as_ptr_range();
        for r in records {
            let Ok(r) = r else { break };
            assert!(r.data.is_empty() || range.contains(&r.data.as_ptr()));
        }
    }
    let Ok(mut reader) = CaptureReader::from_vec(data.to_vec(), "fuzz.pcapng", 1) else {
        return;
    };
    let mut p = Pipeline::new(CacheConfig {
        max_flows: NonZeroU32::new(4).expect("non-zero"),
        user_names: |_| None,
        ..CacheConfig::default()
    });
    let mut exported = 0u64;
    let mut last = 0u64;
    let _ = reader.for_each_packet(|meta, payload| {
        let now = meta.timestamp_ms.unwrap_or(last).max(last);
        last = now;
        let _ = p.handle(meta, payload, now);
        p.expire(now, &mut |r| exported += r.packets);
    });
    p.flush(last.saturating_add(1), &mut |r| exported += r.packets);
    assert_eq!(exported, p.stats().decode.decoded);
    let st = reader.stats();
    assert_eq!(st.records, st.packets + st.non_ip + st.malformed);
});
