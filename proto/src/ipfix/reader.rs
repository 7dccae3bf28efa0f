//! Zero-copy reader views over IPFIX messages.

use super::{
    parse_varlen, DecodeError, HEADER_LEN, MIN_DATA_SET_ID, OPTIONS_TEMPLATE_SET_ID,
    SET_HEADER_LEN, TEMPLATE_SET_ID, VERSION,
};
use crate::ie::{FieldSpec, ENTERPRISE_BIT};

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A checked view of one IPFIX message.
#[derive(Debug, Clone, Copy)]
pub struct Message<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Message<T> {
    /// Checks the header: version 10 and a length between 16 and the buffer's length.
    /// Octets after the message length are ignored.
    pub fn new_checked(buf: T) -> Result<Self, DecodeError> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(DecodeError::Truncated {
                what: "message header",
                offset: 0,
                need: HEADER_LEN,
                have: b.len(),
            });
        }
        let version = be16(b, 0);
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let length = be16(b, 2) as usize;
        if length < HEADER_LEN || length > b.len() {
            return Err(DecodeError::Length {
                what: "message",
                offset: 0,
                length,
            });
        }
        Ok(Message { buf })
    }

    pub fn length(&self) -> u16 {
        be16(self.buf.as_ref(), 2)
    }
    pub fn export_time(&self) -> u32 {
        be32(self.buf.as_ref(), 4)
    }
    pub fn sequence(&self) -> u32 {
        be32(self.buf.as_ref(), 8)
    }
    pub fn domain(&self) -> u32 {
        be32(self.buf.as_ref(), 12)
    }

    /// The sets of the message, in order; stops after the first error.
    pub fn sets(&self) -> SetIter<'_> {
        let b = self.buf.as_ref();
        SetIter {
            buf: &b[..self.length() as usize],
            at: HEADER_LEN,
            failed: false,
        }
    }
}

/// One set: its id and its body (records and padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Set<'a> {
    pub id: u16,
    /// Offset of the set header in the message.
    pub offset: usize,
    pub body: &'a [u8],
}

impl<'a> Set<'a> {
    pub fn is_template(&self) -> bool {
        self.id == TEMPLATE_SET_ID
    }
    pub fn is_options_template(&self) -> bool {
        self.id == OPTIONS_TEMPLATE_SET_ID
    }
    pub fn is_data(&self) -> bool {
        self.id >= MIN_DATA_SET_ID
    }

    /// Template records of a template or options template set (empty for data sets).
    pub fn templates(&self) -> TemplateIter<'a> {
        TemplateIter {
            body: if self.is_data() { &[] } else { self.body },
            at: 0,
            base: self.offset + SET_HEADER_LEN,
            options: self.is_options_template(),
            failed: false,
        }
    }
}

/// Iterator over the sets of a message.
#[derive(Debug, Clone)]
pub struct SetIter<'a> {
    buf: &'a [u8],
    at: usize,
    failed: bool,
}

impl<'a> Iterator for SetIter<'a> {
    type Item = Result<Set<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.at..];
        let offset = self.at;
        let res = if rest.len() < SET_HEADER_LEN {
            Err(DecodeError::Truncated {
                what: "set header",
                offset,
                need: SET_HEADER_LEN,
                have: rest.len(),
            })
        } else {
            let id = be16(rest, 0);
            let len = be16(rest, 2) as usize;
            if len < SET_HEADER_LEN || len > rest.len() {
                Err(DecodeError::Length {
                    what: "set",
                    offset,
                    length: len,
                })
            } else if id < MIN_DATA_SET_ID && id != TEMPLATE_SET_ID && id != OPTIONS_TEMPLATE_SET_ID
            {
                Err(DecodeError::ReservedSetId(id))
            } else {
                self.at += len;
                Ok(Set {
                    id,
                    offset,
                    body: &rest[SET_HEADER_LEN..len],
                })
            }
        };
        self.failed = res.is_err();
        Some(res)
    }
}

/// A view of one template record (plain or options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateRecord<'a> {
    pub id: u16,
    pub field_count: u16,
    /// 0 for a plain template.
    pub scope_count: u16,
    specs: &'a [u8],
    raw: &'a [u8],
}

impl<'a> TemplateRecord<'a> {
    /// A template withdrawal has no fields (RFC 7011 section 8.1).
    pub fn is_withdrawal(&self) -> bool {
        self.field_count == 0
    }

    /// The record as it appeared on the wire, its header included (to keep and replay).
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The field specifiers, already bounds-checked.
    pub fn fields(&self) -> impl Iterator<Item = FieldSpec> + 'a {
        let specs = self.specs;
        let mut at = 0;
        std::iter::from_fn(move || {
            if at + 4 > specs.len() {
                return None;
            }
            let raw = be16(specs, at);
            let length = be16(specs, at + 2);
            if raw & ENTERPRISE_BIT != 0 {
                let pen = be32(specs, at + 4);
                at += 8;
                Some(FieldSpec::enterprise(pen, raw & !ENTERPRISE_BIT, length))
            } else {
                at += 4;
                Some(FieldSpec::iana(raw, length))
            }
        })
    }

    /// An owned template to decode data records with.
    pub fn to_template(&self) -> Result<Template, DecodeError> {
        Template::new(self.id, self.scope_count, self.fields().collect())
    }
}

/// Iterator over the template records of a (options) template set.
#[derive(Debug, Clone)]
pub struct TemplateIter<'a> {
    body: &'a [u8],
    at: usize,
    base: usize,
    options: bool,
    failed: bool,
}

impl<'a> Iterator for TemplateIter<'a> {
    type Item = Result<TemplateRecord<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let head = if self.options { 6 } else { 4 };
        // RFC 7011 section 3.3.1: padding is shorter than any record, so fewer octets
        // than a record header are padding.
        if self.failed || self.body.len() - self.at < head {
            return None;
        }
        let rest = &self.body[self.at..];
        let offset = self.base + self.at;
        let id = be16(rest, 0);
        let field_count = be16(rest, 2);
        let scope_count = if self.options { be16(rest, 4) } else { 0 };
        let res = (|| {
            if id < MIN_DATA_SET_ID {
                return Err(DecodeError::ReservedTemplateId(id));
            }
            if self.options && field_count > 0 && (scope_count == 0 || scope_count > field_count) {
                return Err(DecodeError::ScopeCount {
                    id,
                    scope: scope_count,
                    fields: field_count,
                });
            }
            let mut at = head;
            for _ in 0..field_count {
                if rest.len() < at + 4 {
                    return Err(DecodeError::Truncated {
                        what: "field specifier",
                        offset: offset + at,
                        need: 4,
                        have: rest.len() - at,
                    });
                }
                let need = if be16(rest, at) & ENTERPRISE_BIT != 0 {
                    8
                } else {
                    4
                };
                if rest.len() < at + need {
                    return Err(DecodeError::Truncated {
                        what: "enterprise number",
                        offset: offset + at,
                        need,
                        have: rest.len() - at,
                    });
                }
                at += need;
            }
            Ok(TemplateRecord {
                id,
                field_count,
                scope_count,
                specs: &rest[head..at],
                raw: &rest[..at],
            })
        })();
        match &res {
            Ok(t) => self.at += head + t.specs.len(),
            Err(_) => self.failed = true,
        }
        Some(res)
    }
}

/// An owned template, prepared for decoding many data records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub id: u16,
    pub scope_count: u16,
    pub fields: Vec<FieldSpec>,
    /// Shortest possible record (variable-length fields counted as one octet).
    min_len: usize,
    /// Record length when no field is variable-length.
    fixed_len: Option<usize>,
}

impl Template {
    pub fn new(id: u16, scope_count: u16, fields: Vec<FieldSpec>) -> Result<Self, DecodeError> {
        let min_len = fields
            .iter()
            .map(|f| if f.is_varlen() { 1 } else { f.length as usize })
            .sum();
        if min_len == 0 {
            return Err(DecodeError::EmptyRecord(id));
        }
        let fixed_len = (!fields.iter().any(FieldSpec::is_varlen)).then_some(min_len);
        Ok(Template {
            id,
            scope_count,
            fields,
            min_len,
            fixed_len,
        })
    }

    pub fn min_record_len(&self) -> usize {
        self.min_len
    }

    /// The data records of a data set body described by this template.
    pub fn records<'a>(&'a self, body: &'a [u8]) -> RecordIter<'a> {
        RecordIter {
            template: self,
            body,
            at: 0,
            failed: false,
        }
    }
}

/// One data record, bounds-checked against its template.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    template: &'a Template,
    bytes: &'a [u8],
}

impl<'a> Record<'a> {
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// `(field specifier, value octets)` pairs in template order; variable-length prefixes
    /// are stripped.
    pub fn fields(&self) -> FieldIter<'a> {
        FieldIter {
            fields: self.template.fields.iter(),
            bytes: self.bytes,
            at: 0,
        }
    }
}

/// Iterator over the fields of one (already checked) record.
#[derive(Debug, Clone)]
pub struct FieldIter<'a> {
    fields: std::slice::Iter<'a, FieldSpec>,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Iterator for FieldIter<'a> {
    type Item = (FieldSpec, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let f = *self.fields.next()?;
        let rest = self.bytes.get(self.at..)?;
        let (head, len) = if f.is_varlen() {
            parse_varlen(rest, self.at).ok()?
        } else {
            (0, f.length as usize)
        };
        let value = rest.get(head..head + len)?;
        self.at += head + len;
        Some((f, value))
    }
}

/// Iterator over the data records of one data set.
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    template: &'a Template,
    body: &'a [u8],
    at: usize,
    failed: bool,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.body[self.at..];
        // Trailing octets shorter than the shortest record are padding (RFC 7011 3.3.1).
        if self.failed || rest.len() < self.template.min_len {
            return None;
        }
        let len = match self.template.fixed_len {
            Some(n) => n,
            None => {
                let mut at = 0;
                for f in &self.template.fields {
                    if f.is_varlen() {
                        match parse_varlen(&rest[at.min(rest.len())..], self.at + at) {
                            Ok((head, n)) => at += head + n,
                            Err(e) => {
                                self.failed = true;
                                return Some(Err(e));
                            }
                        }
                    } else {
                        at += f.length as usize;
                    }
                }
                at
            }
        };
        if len > rest.len() {
            self.failed = true;
            return Some(Err(DecodeError::Truncated {
                what: "data record",
                offset: self.at,
                need: len,
                have: rest.len(),
            }));
        }
        self.at += len;
        Some(Ok(Record {
            template: self.template,
            bytes: &rest[..len],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ie::{FieldSpec, PEN_NETFILTER, VARLEN};

    #[rustfmt::skip]
    const MSG: &[u8] = &[
        0x00, 0x0a, 0x00, 0x3f,             // version 10, length 63
        0x65, 0x53, 0xf1, 0x00,             // export time
        0x00, 0x00, 0x00, 0x09,             // sequence 9
        0x00, 0x00, 0x00, 0x02,             // domain 2
        0x00, 0x02, 0x00, 0x1a,             // template set, length 26
        0x01, 0x01, 0x00, 0x03,             //   template 257, 3 fields
        0x00, 0x8a, 0x00, 0x04,             //   observationPointId, 4
        0x00, 0x60, 0xff, 0xff,             //   applicationName, variable
        0x80, 0x03, 0xff, 0xff,             //   netfilter prefix, variable
        0x00, 0x00, 0x53, 0x7d,             //   PEN 21373
        0x00, 0x00,                         //   padding
        0x01, 0x01, 0x00, 0x15,             // data set 257, length 21
        0x00, 0x00, 0x00, 0x01,             //   group 1
        0x03, b'e', b's', b'p',             //   "esp"
        0x00,                               //   empty prefix
        0x00, 0x00, 0x00, 0x02,             //   group 2
        0x01, b'x',                         //   "x"
        0x00,                               //   padding (shorter than 6)
        0xff, 0xff, 0xff, 0xff,             // octets after the message length: ignored
    ];

    #[test]
    fn parses_templates_and_records() {
        let m = Message::new_checked(MSG).unwrap();
        assert_eq!(
            (m.length(), m.export_time(), m.sequence(), m.domain()),
            (63, 0x6553_f100, 9, 2)
        );
        let sets: Vec<_> = m.sets().collect::<Result<_, _>>().unwrap();
        assert_eq!(sets.len(), 2);
        let trs: Vec<_> = sets[0].templates().collect::<Result<_, _>>().unwrap();
        assert_eq!(trs.len(), 1);
        let t = trs[0].to_template().unwrap();
        assert_eq!(
            t.fields,
            vec![
                FieldSpec::iana(138, 4),
                FieldSpec::iana(96, VARLEN),
                FieldSpec::enterprise(PEN_NETFILTER, 3, VARLEN),
            ]
        );
        assert!(sets[1].is_data());
        let recs: Vec<_> = t.records(sets[1].body).collect::<Result<_, _>>().unwrap();
        assert_eq!(recs.len(), 2);
        let f: Vec<_> = recs[0].fields().map(|(_, v)| v).collect();
        assert_eq!(f, vec![&[0u8, 0, 0, 1][..], b"esp", b""]);
        let f: Vec<_> = recs[1].fields().map(|(_, v)| v).collect();
        assert_eq!(f, vec![&[0u8, 0, 0, 2][..], b"x", b""]);
    }

    #[test]
    fn header_errors() {
        assert!(matches!(
            Message::new_checked(&MSG[..10]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut bad = MSG.to_vec();
        bad[1] = 9;
        assert_eq!(
            Message::new_checked(&bad[..]).unwrap_err(),
            DecodeError::Version(9)
        );
        let mut bad = MSG.to_vec();
        bad[3] = 0xff;
        assert!(matches!(
            Message::new_checked(&bad[..]),
            Err(DecodeError::Length { .. })
        ));
    }

    #[test]
    fn set_errors_stop_iteration() {
        let mut bad = MSG[..63].to_vec();
        bad[16 + 3] = 0x02; // template set length 2 < 4
        let m = Message::new_checked(&bad[..]).unwrap();
        let mut sets = m.sets();
        assert!(matches!(
            sets.next(),
            Some(Err(DecodeError::Length { offset: 16, .. }))
        ));
        assert!(sets.next().is_none());
        let mut bad = MSG[..63].to_vec();
        bad[17] = 0x05; // set id 5 is reserved
        let m = Message::new_checked(&bad[..]).unwrap();
        let mut sets = m.sets();
        assert_eq!(sets.next(), Some(Err(DecodeError::ReservedSetId(5))));
    }

    #[test]
    fn truncated_record_is_an_error() {
        let t = Template::new(
            300,
            0,
            vec![FieldSpec::iana(96, VARLEN), FieldSpec::iana(8, 4)],
        )
        .unwrap();
        let body = [5u8, b'a', b'b', b'c', b'd', b'e', 1, 2];
        let mut it = t.records(&body);
        assert!(matches!(
            it.next(),
            Some(Err(DecodeError::Truncated { .. }))
        ));
        assert!(it.next().is_none());
    }

    #[test]
    fn zero_length_template_rejected() {
        assert_eq!(
            Template::new(300, 0, vec![FieldSpec::iana(8, 0)]),
            Err(DecodeError::EmptyRecord(300))
        );
    }
}
