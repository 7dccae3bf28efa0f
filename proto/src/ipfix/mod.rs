//! IPFIX (RFC 7011): an MTU-bounded message writer and zero-copy reader views.
//!
//! ```text
//!  0                   1                   2                   3
//!  +-------------------------------+-------------------------------+
//!  |       Version Number = 10     |            Length             |  message header
//!  |                         Export Time                           |  (section 3.1)
//!  |                       Sequence Number                         |
//!  |                    Observation Domain ID                      |
//!  +-------------------------------+-------------------------------+
//!  |     Set ID (2, 3, >= 256)     |            Length             |  set header (3.3.2)
//!  |  records ... [padding]                                        |
//! ```

mod reader;
mod writer;

pub use reader::{
    FieldIter, Message, Record, RecordIter, Set, SetIter, Template, TemplateIter, TemplateRecord,
};
pub use writer::{MessageWriter, TemplateDef};

/// IPFIX version number in the message header.
pub const VERSION: u16 = 10;
/// Octets of the message header.
pub const HEADER_LEN: usize = 16;
/// Octets of a set header.
pub const SET_HEADER_LEN: usize = 4;
/// Set id of a template set.
pub const TEMPLATE_SET_ID: u16 = 2;
/// Set id of an options template set.
pub const OPTIONS_TEMPLATE_SET_ID: u16 = 3;
/// Lowest set id (and template id) of data sets.
pub const MIN_DATA_SET_ID: u16 = 256;

/// Why a datagram (or part of it) could not be decoded. Cheap to build and match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("truncated {what} at offset {offset}: need {need} octets, have {have}")]
    Truncated {
        what: &'static str,
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error("version {0} is not IPFIX (10)")]
    Version(u16),
    #[error("{what} length {length} at offset {offset} is invalid")]
    Length {
        what: &'static str,
        offset: usize,
        length: usize,
    },
    #[error("set id {0} is reserved")]
    ReservedSetId(u16),
    #[error("template id {0} is below 256")]
    ReservedTemplateId(u16),
    #[error(
        "options template {id}: scope field count {scope} is zero or above field count {fields}"
    )]
    ScopeCount { id: u16, scope: u16, fields: u16 },
    #[error("template {0} describes records of zero length")]
    EmptyRecord(u16),
}

/// Octets a variable-length field of `len` value octets takes (RFC 7011 section 7):
/// one length octet below 255, otherwise 255 followed by a two-octet length.
pub const fn varlen_size(len: usize) -> usize {
    if len < 255 {
        1 + len
    } else {
        3 + len
    }
}

/// Writes a variable-length field into `out` and returns the octets written.
///
/// `out` must hold [`varlen_size`] octets and `value` at most 65535 octets.
pub fn emit_varlen(out: &mut [u8], value: &[u8]) -> usize {
    let n = value.len();
    let head = if n < 255 {
        out[0] = n as u8;
        1
    } else {
        out[0] = 255;
        out[1..3].copy_from_slice(&(n as u16).to_be_bytes());
        3
    };
    out[head..head + n].copy_from_slice(value);
    head + n
}

/// Reads the length prefix of a variable-length field: `(prefix octets, value octets)`.
pub fn parse_varlen(buf: &[u8], offset: usize) -> Result<(usize, usize), DecodeError> {
    varlen_at(buf, 0).ok_or(DecodeError::Truncated {
        what: "variable-length field",
        offset,
        need: if buf.first() == Some(&255) { 3 } else { 1 },
        have: buf.len(),
    })
}

/// [`parse_varlen`] of the field at `at` in `buf`, without the error detail: the prefix is
/// one length octet, or 255 and two more (RFC 7011 section 7); `None` when `buf` ends first.
#[inline(always)]
pub fn varlen_at(buf: &[u8], at: usize) -> Option<(usize, usize)> {
    match *buf.get(at)? {
        255 => {
            let b = buf.get(at + 1..at + 3)?;
            Some((3, usize::from(u16::from_be_bytes([b[0], b[1]]))))
        }
        n => Some((1, usize::from(n))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varlen_short_form_both_directions() {
        let raw = [3u8, b'e', b's', b'p'];
        let mut out = [0u8; 4];
        assert_eq!(varlen_size(3), 4);
        assert_eq!(emit_varlen(&mut out, b"esp"), 4);
        assert_eq!(out, raw);
        assert_eq!(parse_varlen(&raw, 0), Ok((1, 3)));
    }

    #[test]
    fn varlen_long_form_both_directions() {
        let value = [b'x'; 300];
        let mut out = [0u8; 303];
        assert_eq!(varlen_size(300), 303);
        assert_eq!(emit_varlen(&mut out, &value), 303);
        // 255 marks the three-octet form, then 300 = 0x012c.
        assert_eq!(&out[..3], &[255, 0x01, 0x2c]);
        assert_eq!(parse_varlen(&out, 0), Ok((3, 300)));
        // 254 still fits the one-octet form.
        assert_eq!(varlen_size(254), 255);
        assert_eq!(varlen_size(255), 258);
    }

    #[test]
    fn varlen_truncated() {
        assert!(matches!(
            parse_varlen(&[], 7),
            Err(DecodeError::Truncated { offset: 7, .. })
        ));
        assert!(matches!(
            parse_varlen(&[255, 1], 0),
            Err(DecodeError::Truncated { need: 3, .. })
        ));
    }
}
