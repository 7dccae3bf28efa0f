//! Field values as the mapping rules read them, from either decode path.

use std::net::{Ipv4Addr, Ipv6Addr};

use netflow_parser::{DataNumber, FieldValue};

use super::{ApplicationKey, NTP_UNIX_OFFSET_SECS};

/// One field value as the mapping rules see it: the octets of an IPFIX data record (the
/// zero-copy path) or a value `netflow_parser` decoded. Every rule below reads both, so the
/// two decode paths share one set of mapping rules.
#[derive(Debug, Clone, Copy)]
pub(super) enum Value<'a> {
    Raw(&'a [u8]),
    Parsed(&'a FieldValue),
}

impl<'a> Value<'a> {
    /// Undecoded octets: the raw value, or what `netflow_parser` left as bytes.
    pub(super) fn octets(self) -> Option<&'a [u8]> {
        match self {
            Value::Raw(raw) => Some(raw),
            Value::Parsed(FieldValue::Vec(raw)) => Some(raw),
            Value::Parsed(_) => None,
        }
    }
}

/// An unsigned number from any integer-like value (big-endian raw bytes included).
pub(super) fn number(value: Value<'_>) -> Option<u64> {
    match value {
        Value::Raw(raw) => be_bytes(raw),
        Value::Parsed(FieldValue::DataNumber(DataNumber::Vec(raw)) | FieldValue::Vec(raw)) => {
            be_bytes(raw)
        }
        Value::Parsed(FieldValue::DataNumber(n)) => n.as_u64(),
        Value::Parsed(FieldValue::ProtocolType(p)) => Some(u64::from(u8::from(*p))),
        Value::Parsed(FieldValue::TcpControlBits(bits, _)) => Some(u64::from(u16::from(*bits))),
        Value::Parsed(FieldValue::FlowEndReason(r)) => Some(u64::from(u8::from(*r))),
        Value::Parsed(FieldValue::Duration(d)) => Some(duration_ms(d)),
        Value::Parsed(_) => None,
    }
}

pub(super) fn be_bytes(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || raw.len() > 8 {
        return None;
    }
    Some(raw.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)))
}

/// Text of a string element: lossy UTF-8 with control characters (the NUL padding of
/// fixed-width templates included) dropped, as `netflow_parser` cleans its strings.
pub fn clean_text(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

pub(super) fn text(value: Value<'_>) -> Option<String> {
    match value {
        Value::Parsed(FieldValue::String(s)) => Some(s.value.clone()),
        other => other.octets().map(clean_text),
    }
}

/// Milliseconds since the UNIX epoch of an NTP timestamp (RFC 7011 sections 6.1.9/6.1.10:
/// seconds since 1900 and a binary fraction).
pub(crate) fn ntp_ms(seconds: u32, fraction: u32) -> u64 {
    let secs = u64::from(seconds).saturating_sub(NTP_UNIX_OFFSET_SECS);
    secs * 1000 + ((u64::from(fraction) * 1000) >> 32)
}

/// Milliseconds since the UNIX epoch of an absolute time value.
pub(super) fn duration_ms(
    d: &netflow_parser::variable_versions::field_value::DurationValue,
) -> u64 {
    use netflow_parser::variable_versions::field_value::DurationValue as D;
    match *d {
        D::Seconds { value, .. } => value.saturating_mul(1000),
        D::Millis { value, .. } => value,
        D::MicrosNtp { seconds, fraction } | D::NanosNtp { seconds, fraction } => {
            ntp_ms(seconds, fraction)
        }
    }
}

/// `flowStart*`/`flowEnd*` (IE 150–157) in milliseconds since the UNIX epoch.
pub(super) fn absolute_ms(id: u16, value: Value<'_>) -> Option<u64> {
    match value {
        Value::Parsed(FieldValue::Duration(d)) => Some(duration_ms(d)),
        // dateTimeMicroseconds / dateTimeNanoseconds are always 8 octets (RFC 7011 6.1.9).
        Value::Raw(raw) if id >= 154 && raw.len() == 8 => Some(ntp_ms(
            u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
            u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]),
        )),
        // Seconds (150/151) and milliseconds (152/153) as plain numbers.
        other => number(other).map(|v| if id <= 151 { v.saturating_mul(1000) } else { v }),
    }
}

pub(super) fn ipv4(value: Value<'_>) -> Option<Ipv4Addr> {
    match value {
        Value::Parsed(FieldValue::Ip4Addr(a)) => Some(*a),
        Value::Parsed(FieldValue::DataNumber(DataNumber::U32(n))) => Some(Ipv4Addr::from(*n)),
        Value::Parsed(FieldValue::DataNumber(DataNumber::Vec(raw))) => four(raw),
        other => other.octets().and_then(four),
    }
}

pub(super) fn four(raw: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(raw).ok().map(Ipv4Addr::from)
}

pub(super) fn ipv6(value: Value<'_>) -> Option<Ipv6Addr> {
    match value {
        Value::Parsed(FieldValue::Ip6Addr(a)) => Some(*a),
        Value::Parsed(FieldValue::DataNumber(DataNumber::U128(n))) => Some(Ipv6Addr::from(*n)),
        other => other
            .octets()
            .and_then(|raw| <[u8; 16]>::try_from(raw).ok())
            .map(Ipv6Addr::from),
    }
}

pub(super) fn application(value: Value<'_>) -> Option<ApplicationKey> {
    match value {
        Value::Parsed(FieldValue::ApplicationId(a)) => Some(ApplicationKey {
            engine: a.classification_engine_id,
            selector: a.selector_id.as_ref().and_then(number_dn).unwrap_or(0),
        }),
        other => other.octets().and_then(application_of),
    }
}

/// `applicationId` from its octets. RFC 6759 section 4: one octet engine id, then the
/// selector.
pub(crate) fn application_of(raw: &[u8]) -> Option<ApplicationKey> {
    let (&engine, selector) = raw.split_first()?;
    Some(ApplicationKey {
        engine,
        selector: be_bytes(selector).unwrap_or(0),
    })
}

pub(super) fn number_dn(n: &DataNumber) -> Option<u64> {
    match n {
        DataNumber::Vec(raw) => be_bytes(raw),
        n => n.as_u64(),
    }
}
