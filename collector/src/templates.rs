//! Raw template records: found in datagrams so they can be persisted, and wrapped back into
//! one-record messages to replay into a fresh decoder after a restart.
//!
//! ```text
//!  IPFIX (RFC 7011 section 3):  | header 16 | set id 2/3, len | template records ... | ...
//!  v9    (RFC 3954 section 5):  | header 20 | flowset id 0/1, len | template records ... |
//! ```
//!
//! Only the framing is read here (IPFIX through `labelflow_proto::ipfix`'s set and template
//! iterators, v9 by hand: proto reads no v9); the decoder proper is `netflow_parser`. A record
//! that does not fit its set ends the walk (the decoder reports the error).

/// One template (or options template) record as it appeared on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRecord {
    /// 9 or 10.
    pub version: u16,
    /// The set id it came in: IPFIX 2 (template) / 3 (options), v9 0 / 1.
    pub set_id: u16,
    pub template_id: u16,
    /// The record's bytes, template id included.
    pub bytes: Vec<u8>,
}

impl TemplateRecord {
    /// RFC 7011 section 8.1: a template record with field count 0 withdraws the template.
    pub fn is_withdrawal(&self) -> bool {
        self.version == 10 && self.bytes.len() >= 4 && self.bytes[2..4] == [0, 0]
    }
}

use labelflow_proto::ipfix::Message;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Append the template records of one datagram to `out`.
pub fn extract(datagram: &[u8], out: &mut Vec<TemplateRecord>) {
    match be16(datagram, 0) {
        Some(10) => extract_ipfix(datagram, out),
        Some(9) => {
            walk_v9_sets(datagram, out);
        }
        _ => {}
    }
}

/// The template records of a NetFlow v9 datagram, `None` unless every flowset and every
/// template record in it was accounted for (then no template can have gone unseen).
pub fn v9_templates(datagram: &[u8]) -> Option<Vec<TemplateRecord>> {
    let mut out = Vec::new();
    walk_v9_sets(datagram, &mut out).then_some(out)
}

/// IPFIX, through proto's views: a set that does not hold together ends the walk, a record
/// that does not ends its set (zero padding as long as a record header reads as template id
/// 0; the decoder reports real errors).
fn extract_ipfix(datagram: &[u8], out: &mut Vec<TemplateRecord>) {
    let Ok(msg) = Message::new_checked(datagram) else {
        return;
    };
    for set in msg.sets() {
        let Ok(set) = set else { return };
        for t in set.templates() {
            let Ok(t) = t else { break };
            out.push(TemplateRecord {
                version: 10,
                set_id: set.id,
                template_id: t.id,
                bytes: t.raw().to_vec(),
            });
        }
    }
}

/// NetFlow v9 (RFC 3954 section 5): flowsets 0 (templates) and 1 (options templates).
/// Whether the walk accounted for every octet (flowsets to the end, records to their
/// padding).
fn walk_v9_sets(d: &[u8], out: &mut Vec<TemplateRecord>) -> bool {
    let mut at = 20;
    while at + 4 <= d.len() {
        let (Some(set_id), Some(len)) = (be16(d, at), be16(d, at + 2)) else {
            return false;
        };
        let len = usize::from(len);
        if len < 4 || at + len > d.len() {
            return false;
        }
        if set_id <= 1 && !walk_v9_records(&d[at + 4..at + len], set_id, out) {
            return false;
        }
        at += len;
    }
    at == d.len()
}

/// The records of one template flowset; whether all of it was records and padding.
fn walk_v9_records(set: &[u8], set_id: u16, out: &mut Vec<TemplateRecord>) -> bool {
    let mut at = 0;
    // Anything shorter than a minimal record is padding.
    while at + 4 <= set.len() {
        let Some(id) = be16(set, at) else {
            return false;
        };
        let Some(len) = v9_record_len(&set[at..], set_id == 1) else {
            return false;
        };
        if id < 256 {
            return false;
        }
        out.push(TemplateRecord {
            version: 9,
            set_id,
            template_id: id,
            bytes: set[at..at + len].to_vec(),
        });
        at += len;
    }
    true
}

/// Length of the v9 template record at the start of `r`, if it fits.
fn v9_record_len(r: &[u8], options: bool) -> Option<usize> {
    if options {
        // id, option scope length (bytes), option length (bytes), then the specifiers.
        let scope = usize::from(be16(r, 2)?);
        let opt = usize::from(be16(r, 4)?);
        let len = 6 + scope + opt;
        // netflow_parser reads scope / 4 and opt / 4 specifiers, so unaligned lengths frame
        // the following records differently: refused, the walk ends there.
        return (len <= r.len() && scope % 4 == 0 && opt % 4 == 0).then_some(len);
    }
    let n = usize::from(be16(r, 2)?);
    let len = 4 + 4 * n;
    (n > 0 && len <= r.len()).then_some(len)
}

/// A whole message carrying just this record, for replay into a decoder.
pub fn replay_message(rec: &TemplateRecord, domain: u32) -> Vec<u8> {
    let set_len = 4 + rec.bytes.len();
    let mut m = Vec::with_capacity(20 + set_len);
    if rec.version == 10 {
        let total = (16 + set_len) as u16;
        m.extend_from_slice(&10u16.to_be_bytes());
        m.extend_from_slice(&total.to_be_bytes());
        m.extend_from_slice(&0u32.to_be_bytes()); // export time
        m.extend_from_slice(&0u32.to_be_bytes()); // sequence
        m.extend_from_slice(&domain.to_be_bytes());
    } else {
        m.extend_from_slice(&9u16.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes()); // count: one record
        m.extend_from_slice(&0u32.to_be_bytes()); // sysUpTime
        m.extend_from_slice(&0u32.to_be_bytes()); // unix secs
        m.extend_from_slice(&0u32.to_be_bytes()); // sequence
        m.extend_from_slice(&domain.to_be_bytes());
    }
    m.extend_from_slice(&rec.set_id.to_be_bytes());
    m.extend_from_slice(&(set_len as u16).to_be_bytes());
    m.extend_from_slice(&rec.bytes);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rustfmt::skip]
    const IPFIX_TEMPLATES: &[u8] = &[
        0x00, 0x0a, 0x00, 0x3c,             // version 10, length 60
        0, 0, 0, 1,                          // export time
        0, 0, 0, 0,                          // sequence
        0, 0, 0, 7,                          // observation domain 7
        0x00, 0x02, 0x00, 0x18,             // template set, length 24
        0x01, 0x00, 0x00, 0x02,             //   template 256, 2 fields
        0x00, 0x08, 0x00, 0x04,             //     sourceIPv4Address, 4
        0x80, 0x04, 0x00, 0x04,             //     enterprise element 4, 4
        0x00, 0x00, 0x53, 0x7d,             //     PEN 21373
        0x00, 0x00, 0x00, 0x00,             //   padding
        0x00, 0x03, 0x00, 0x14,             // options template set, length 20
        0x01, 0x01, 0x00, 0x02, 0x00, 0x01, //   template 257, 2 fields, 1 scope
        0x00, 0x5f, 0xff, 0xff,             //     applicationId, variable length
        0x00, 0x60, 0xff, 0xff,             //     applicationName, variable length
        0x00, 0x00,                          //   padding
    ];

    #[test]
    fn finds_ipfix_templates_and_replays_them() {
        let mut out = Vec::new();
        extract(IPFIX_TEMPLATES, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].set_id, out[0].template_id, out[0].bytes.len()),
            (2, 256, 16)
        );
        assert_eq!(
            (out[1].set_id, out[1].template_id, out[1].bytes.len()),
            (3, 257, 14)
        );
        let msg = replay_message(&out[0], 7);
        assert_eq!(&msg[..4], &[0, 10, 0, 36]);
        assert_eq!(&msg[12..16], &[0, 0, 0, 7]);
        assert_eq!(&msg[16..20], &[0, 2, 0, 20]);
        assert_eq!(&msg[20..], &IPFIX_TEMPLATES[20..36]);
    }

    #[test]
    fn truncated_sets_stop_the_walk() {
        for cut in 0..IPFIX_TEMPLATES.len() {
            let mut d = IPFIX_TEMPLATES[..cut].to_vec();
            if d.len() >= 4 {
                d[2..4].copy_from_slice(&(cut as u16).to_be_bytes());
            }
            let mut out = Vec::new();
            extract(&d, &mut out);
            assert!(out.len() <= 2);
        }
    }

    #[test]
    fn withdrawal_is_recognised() {
        let r = TemplateRecord {
            version: 10,
            set_id: 2,
            template_id: 256,
            bytes: vec![1, 0, 0, 0],
        };
        assert!(r.is_withdrawal());
    }
}
