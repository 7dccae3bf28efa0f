//! The IPFIX reader never panics: any bytes go through the message view, the set and
//! template iterators, record iteration and the flow/options decoders.
#![no_main]

use labelflow_proto::ipfix::Message;
use labelflow_proto::template::Decoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Two messages from one input: the first may announce templates the second uses.
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut decoder = Decoder::default();
    let (mut flows, mut options) = (Vec::new(), Vec::new());
    for part in [&data[..split], &data[split..]] {
        if let Ok(msg) = Message::new_checked(part) {
            let _ = decoder.decode(&msg, &mut flows, &mut options);
            for set in msg.sets().flatten() {
                for t in set.templates().flatten() {
                    let _ = t.fields().count();
                    if let Ok(t) = t.to_template() {
                        for rec in t.records(set.body).flatten() {
                            let _ = rec.fields().count();
                        }
                    }
                }
            }
        }
    }
});
