//! The IPFIX message writer.

use super::{HEADER_LEN, OPTIONS_TEMPLATE_SET_ID, TEMPLATE_SET_ID, VERSION};
use crate::ie::{FieldSpec, ENTERPRISE_BIT};
use crate::pack::Packer;

/// A template or options template known at compile time (RFC 7011 sections 3.4.1, 3.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateDef {
    pub id: u16,
    /// Number of scope fields (the first ones); 0 for a plain template.
    pub scope_count: u16,
    pub fields: &'static [FieldSpec],
}

impl TemplateDef {
    pub const fn is_options(&self) -> bool {
        self.scope_count > 0
    }

    /// The set id this template record goes into.
    pub const fn set_id(&self) -> u16 {
        if self.is_options() {
            OPTIONS_TEMPLATE_SET_ID
        } else {
            TEMPLATE_SET_ID
        }
    }

    /// Octets of the template record.
    pub fn buffer_len(&self) -> usize {
        let head = if self.is_options() { 6 } else { 4 };
        head + self.fields.iter().map(FieldSpec::spec_len).sum::<usize>()
    }

    /// Octets of a data record when every field has a fixed length; `None` with a
    /// variable-length field.
    pub fn fixed_record_len(&self) -> Option<usize> {
        self.fields.iter().try_fold(0usize, |acc, f| {
            (!f.is_varlen()).then(|| acc + f.length as usize)
        })
    }

    /// Writes the template record; `out` must hold [`TemplateDef::buffer_len`] octets.
    pub fn emit(&self, out: &mut [u8]) {
        out[0..2].copy_from_slice(&self.id.to_be_bytes());
        out[2..4].copy_from_slice(&(self.fields.len() as u16).to_be_bytes());
        let mut at = 4;
        if self.is_options() {
            out[4..6].copy_from_slice(&self.scope_count.to_be_bytes());
            at = 6;
        }
        for f in self.fields {
            let id = if f.enterprise.is_some() {
                f.id | ENTERPRISE_BIT
            } else {
                f.id
            };
            out[at..at + 2].copy_from_slice(&id.to_be_bytes());
            out[at + 2..at + 4].copy_from_slice(&f.length.to_be_bytes());
            if let Some(pen) = f.enterprise {
                out[at + 4..at + 8].copy_from_slice(&pen.to_be_bytes());
            }
            at += f.spec_len();
        }
    }
}

/// Fills one IPFIX message at a time into a reused buffer bounded by the MTU.
///
/// Sets are opened as records of a new set id arrive; set and message lengths are patched
/// by [`MessageWriter::finish`]. Sets are not padded: RFC 7011 section 3.3.1 makes padding
/// optional ("The Exporting Process MAY insert some padding octets").
///
/// ```
/// use labelflow_proto::ipfix::{Message, MessageWriter};
/// let mut w = MessageWriter::new(1400);
/// w.begin(1_700_000_000, 0, 7);
/// w.reserve(256, 4).unwrap().copy_from_slice(&[1, 2, 3, 4]);
/// let msg = Message::new_checked(w.finish()).unwrap();
/// assert_eq!(msg.length(), 16 + 4 + 4);
/// assert_eq!(msg.domain(), 7);
/// ```
#[derive(Debug, Clone)]
pub struct MessageWriter {
    packer: Packer,
    data_records: u32,
}

impl MessageWriter {
    /// A writer for messages of at most `mtu` octets (clamped to 80..=65535).
    pub fn new(mtu: usize) -> Self {
        MessageWriter {
            packer: Packer::new(mtu, HEADER_LEN, 1),
            data_records: 0,
        }
    }

    pub fn mtu(&self) -> usize {
        self.packer.mtu()
    }

    /// Starts a message. `sequence` is the number of data records sent in this
    /// observation domain before this message (RFC 7011 section 3.1).
    pub fn begin(&mut self, export_time: u32, sequence: u32, domain: u32) {
        let h = self.packer.begin();
        h[0..2].copy_from_slice(&VERSION.to_be_bytes());
        h[4..8].copy_from_slice(&export_time.to_be_bytes());
        h[8..12].copy_from_slice(&sequence.to_be_bytes());
        h[12..16].copy_from_slice(&domain.to_be_bytes());
        self.data_records = 0;
    }

    /// Octets written so far, headers included.
    pub fn len(&self) -> usize {
        self.packer.len()
    }

    /// True when nothing but the message header was written.
    pub fn is_empty(&self) -> bool {
        self.packer.len() <= HEADER_LEN
    }

    /// Data records (records in sets with id >= 256) written since `begin`.
    pub fn data_records(&self) -> u32 {
        self.data_records
    }

    /// Whether a record of `len` octets still fits in set `set_id`.
    pub fn fits(&self, set_id: u16, len: usize) -> bool {
        self.packer.fits(set_id, len)
    }

    /// Reserves a zeroed record of `len` octets in set `set_id` (opened if needed) for the
    /// caller to fill; `None` when it would pass the MTU.
    pub fn reserve(&mut self, set_id: u16, len: usize) -> Option<&mut [u8]> {
        let out = self.packer.reserve(set_id, len)?;
        if set_id >= super::MIN_DATA_SET_ID {
            self.data_records += 1;
        }
        Some(out)
    }

    /// Writes a template or options template record; false when it does not fit.
    pub fn write_template(&mut self, t: &TemplateDef) -> bool {
        match self.packer.reserve(t.set_id(), t.buffer_len()) {
            Some(out) => {
                t.emit(out);
                true
            }
            None => false,
        }
    }

    /// Closes the open set: the next record starts a new set, even of the same id.
    pub fn close_set(&mut self) {
        self.packer.close_set();
    }

    /// Closes the open set, patches the message length and returns the message.
    pub fn finish(&mut self) -> &[u8] {
        let buf = self.packer.finish();
        let len = buf.len() as u16;
        buf[2..4].copy_from_slice(&len.to_be_bytes());
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ie::{FieldSpec, PEN_NETFILTER};

    const T: TemplateDef = TemplateDef {
        id: 256,
        scope_count: 0,
        fields: &[
            FieldSpec::iana(8, 4),
            FieldSpec::enterprise(PEN_NETFILTER, 4, 4),
        ],
    };
    const O: TemplateDef = TemplateDef {
        id: 300,
        scope_count: 1,
        fields: &[FieldSpec::iana(138, 4), FieldSpec::iana(164, 8)],
    };

    #[test]
    fn emits_template_and_data_message() {
        let mut w = MessageWriter::new(1400);
        w.begin(0x6553_f100, 5, 1);
        assert!(w.write_template(&T));
        assert!(w.write_template(&O));
        let rec = w.reserve(256, 8).unwrap();
        rec.copy_from_slice(&[10, 0, 0, 1, 0, 0, 0, 42]);
        assert_eq!(w.data_records(), 1);
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x00, 0x0a, 0x00, 0x42,             // version 10, length 66
            0x65, 0x53, 0xf1, 0x00,             // export time
            0x00, 0x00, 0x00, 0x05,             // sequence 5
            0x00, 0x00, 0x00, 0x01,             // domain 1
            0x00, 0x02, 0x00, 0x14,             // template set, length 20
            0x01, 0x00, 0x00, 0x02,             //   template 256, 2 fields
            0x00, 0x08, 0x00, 0x04,             //   sourceIPv4Address, 4
            0x80, 0x04, 0x00, 0x04,             //   enterprise bit | 4 (mark), 4
            0x00, 0x00, 0x53, 0x7d,             //   PEN 21373
            0x00, 0x03, 0x00, 0x12,             // options template set, length 18
            0x01, 0x2c, 0x00, 0x02, 0x00, 0x01, //   template 300, 2 fields, 1 scope
            0x00, 0x8a, 0x00, 0x04,             //   observationPointId, 4
            0x00, 0xa4, 0x00, 0x08,             //   ignoredPacketTotalCount, 8
            0x01, 0x00, 0x00, 0x0c,             // data set 256, length 12
            0x0a, 0x00, 0x00, 0x01,             //   10.0.0.1
            0x00, 0x00, 0x00, 0x2a,             //   mark 42
        ];
        assert_eq!(w.finish(), expected);
    }

    #[test]
    fn never_passes_the_mtu() {
        let mut w = MessageWriter::new(100);
        w.begin(0, 0, 0);
        let mut n = 0;
        while w.reserve(256, 10).is_some() {
            n += 1;
        }
        // 16 header + 4 set header + 8 * 10 = 100.
        assert_eq!(n, 8);
        assert!(!w.fits(257, 0));
        assert_eq!(w.finish().len(), 100);
    }
}
