//! The NFLOG netlink buffer walk, the pcap NFLOG TLV parse and the pcap reader never panic,
//! whatever the bytes.
#![no_main]

use labelflow_probe::nflog::wire::{
    self, HeaderOrder, NlAck, NlMsgIter, NFLOG_PACKET_TYPE, NLMSG_ERROR,
};
use labelflow_probe::replay::CaptureReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for msg in NlMsgIter::new(data) {
        let Ok(msg) = msg else { break };
        match msg.kind {
            NFLOG_PACKET_TYPE => {
                if let Ok((meta, payload)) = wire::parse_packet_message(msg.body) {
                    std::hint::black_box((meta, payload));
                }
            }
            NLMSG_ERROR => {
                let _ = std::hint::black_box(NlAck::parse(msg.body));
            }
            _ => {}
        }
    }
    for order in [HeaderOrder::Little, HeaderOrder::Big] {
        let _ = std::hint::black_box(wire::parse_pcap_nflog(data, order));
    }
    // The same bytes as a whole capture file.
    if let Ok(mut r) = CaptureReader::from_vec(data.to_vec(), "fuzz.pcap", 1) {
        while let Some(p) = r.next_packet() {
            if p.is_err() {
                break;
            }
        }
    }
});
