//! The strongSwan VICI wire format (Versatile IKE Control Interface, strongSwan's
//! `src/libcharon/plugins/vici/README.md`): what the probe sends and reads on charon's socket.
//!
//! ```text
//!  stream:  | length u32 BE | packet (length octets) | length | packet | ...
//!  packet:  | type u8 | name: len u8 + octets (named types only) | message |
//!  message: elements, each | type u8 | ...:
//!           1 SECTION_START name   2 SECTION_END          3 KEY_VALUE name, value
//!           4 LIST_START name      5 LIST_ITEM value      6 LIST_END
//!           (name: len u8 + octets; value: len u16 BE + octets)
//! ```
//!
//! Reading is zero-copy ([`Packet`], [`Elements`]) and never panics; building is the few
//! packets the probe needs. Pure code: no socket here (see `client`).

/// Largest packet charon sends or accepts (`VICI_MAX_MSGLEN`, 512 KiB).
pub const MAX_PACKET: usize = 512 * 1024;

/// Packet types (the `vici_operation_t` of strongSwan's libvici).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    CmdRequest,
    CmdResponse,
    CmdUnknown,
    EventRegister,
    EventUnregister,
    EventConfirm,
    EventUnknown,
    Event,
    Other(u8),
}

impl Op {
    pub fn from_u8(v: u8) -> Op {
        match v {
            0 => Op::CmdRequest,
            1 => Op::CmdResponse,
            2 => Op::CmdUnknown,
            3 => Op::EventRegister,
            4 => Op::EventUnregister,
            5 => Op::EventConfirm,
            6 => Op::EventUnknown,
            7 => Op::Event,
            n => Op::Other(n),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Op::CmdRequest => 0,
            Op::CmdResponse => 1,
            Op::CmdUnknown => 2,
            Op::EventRegister => 3,
            Op::EventUnregister => 4,
            Op::EventConfirm => 5,
            Op::EventUnknown => 6,
            Op::Event => 7,
            Op::Other(n) => n,
        }
    }

    /// Whether a name follows the type octet.
    fn named(self) -> bool {
        matches!(
            self,
            Op::CmdRequest | Op::EventRegister | Op::EventUnregister | Op::Event
        )
    }
}

/// What can be wrong with bytes read from the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViciError {
    #[error("empty VICI packet")]
    Empty,
    #[error("VICI packet of {0} octets exceeds the 512 KiB limit")]
    TooLong(usize),
    #[error("VICI {what} cut short at offset {at}")]
    Truncated { what: &'static str, at: usize },
    #[error("unknown VICI element type {kind} at offset {at}")]
    UnknownElement { kind: u8, at: usize },
}

/// One packet, borrowed from the bytes after its length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub op: Op,
    /// The command or event name (empty for unnamed types).
    pub name: &'a [u8],
    /// The message: feed it to [`Elements`].
    pub message: &'a [u8],
}

impl<'a> Packet<'a> {
    pub fn parse(b: &'a [u8]) -> Result<Packet<'a>, ViciError> {
        let (&kind, rest) = b.split_first().ok_or(ViciError::Empty)?;
        let op = Op::from_u8(kind);
        if !op.named() {
            return Ok(Packet {
                op,
                name: &[],
                message: rest,
            });
        }
        let (name, end) = short_string(b, 1, "packet name")?;
        Ok(Packet {
            op,
            name,
            message: &b[end..],
        })
    }
}

/// The length of the packet that starts a buffer, once its 4-octet prefix is there.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, ViciError> {
    let n = u32::from_be_bytes(prefix) as usize;
    if n > MAX_PACKET {
        return Err(ViciError::TooLong(n));
    }
    Ok(n)
}

/// One element of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element<'a> {
    SectionStart(&'a [u8]),
    SectionEnd,
    KeyValue(&'a [u8], &'a [u8]),
    ListStart(&'a [u8]),
    ListItem(&'a [u8]),
    ListEnd,
}

/// The elements of a message, in order; stops at the first error.
#[derive(Debug, Clone)]
pub struct Elements<'a> {
    b: &'a [u8],
    at: usize,
    failed: bool,
}

impl<'a> Elements<'a> {
    pub fn new(message: &'a [u8]) -> Self {
        Elements {
            b: message,
            at: 0,
            failed: false,
        }
    }
}

impl<'a> Iterator for Elements<'a> {
    type Item = Result<Element<'a>, ViciError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.b.len() {
            return None;
        }
        let r = self.element();
        self.failed = r.is_err();
        Some(r)
    }
}

impl<'a> Elements<'a> {
    fn element(&mut self) -> Result<Element<'a>, ViciError> {
        let (b, at) = (self.b, self.at);
        let kind = b[at];
        let (e, end) = match kind {
            1 | 4 => {
                let (name, end) = short_string(b, at + 1, "element name")?;
                let e = if kind == 1 {
                    Element::SectionStart(name)
                } else {
                    Element::ListStart(name)
                };
                (e, end)
            }
            2 => (Element::SectionEnd, at + 1),
            6 => (Element::ListEnd, at + 1),
            3 => {
                let (name, end) = short_string(b, at + 1, "element name")?;
                let (value, end) = long_string(b, end, "element value")?;
                (Element::KeyValue(name, value), end)
            }
            5 => {
                let (value, end) = long_string(b, at + 1, "list item")?;
                (Element::ListItem(value), end)
            }
            kind => return Err(ViciError::UnknownElement { kind, at }),
        };
        self.at = end;
        Ok(e)
    }
}

/// `len u8 + octets` at `at`: the octets and the offset after them.
fn short_string<'a>(
    b: &'a [u8],
    at: usize,
    what: &'static str,
) -> Result<(&'a [u8], usize), ViciError> {
    let len = usize::from(*b.get(at).ok_or(ViciError::Truncated { what, at })?);
    let s = b
        .get(at + 1..at + 1 + len)
        .ok_or(ViciError::Truncated { what, at })?;
    Ok((s, at + 1 + len))
}

/// `len u16 BE + octets` at `at`.
fn long_string<'a>(
    b: &'a [u8],
    at: usize,
    what: &'static str,
) -> Result<(&'a [u8], usize), ViciError> {
    let l = b.get(at..at + 2).ok_or(ViciError::Truncated { what, at })?;
    let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
    let s = b
        .get(at + 2..at + 2 + len)
        .ok_or(ViciError::Truncated { what, at })?;
    Ok((s, at + 2 + len))
}

/// A framed packet of a named type with an empty message: a command request
/// (`CmdRequest`, e.g. `list-sas`) or an event (un)registration. Names are at most 255 octets.
pub fn named_packet(op: Op, name: &str) -> Vec<u8> {
    let name = &name.as_bytes()[..name.len().min(255)];
    let len = 2 + name.len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(op.to_u8());
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `list-sa` event as charon frames it (abridged): IKE_SA `hq`, one CHILD_SA.
    #[rustfmt::skip]
    fn list_sa_event() -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&[7, 7]); m.extend_from_slice(b"list-sa"); // EVENT "list-sa"
        m.extend_from_slice(&[1, 2]); m.extend_from_slice(b"hq");      // section hq
        m.extend_from_slice(&[3, 11]); m.extend_from_slice(b"remote-host");
        m.extend_from_slice(&[0, 9]); m.extend_from_slice(b"192.0.2.1"); // value, u16 length
        m.extend_from_slice(&[1, 9]); m.extend_from_slice(b"child-sas");
        m.extend_from_slice(&[1, 5]); m.extend_from_slice(b"net-1");
        m.extend_from_slice(&[3, 6]); m.extend_from_slice(b"spi-in");
        m.extend_from_slice(&[0, 8]); m.extend_from_slice(b"c985e016");
        m.extend_from_slice(&[4, 8]); m.extend_from_slice(b"local-ts");  // list
        m.extend_from_slice(&[5, 0, 11]); m.extend_from_slice(b"10.1.0.0/24");
        m.push(6);                                                       // list end
        m.extend_from_slice(&[2, 2, 2]);                                 // three section ends
        m
    }

    #[test]
    fn parses_a_list_sa_event() {
        let raw = list_sa_event();
        let p = Packet::parse(&raw).unwrap();
        assert_eq!((p.op, p.name), (Op::Event, &b"list-sa"[..]));
        let els: Vec<Element> = Elements::new(p.message).map(Result::unwrap).collect();
        assert_eq!(
            els,
            vec![
                Element::SectionStart(b"hq"),
                Element::KeyValue(b"remote-host", b"192.0.2.1"),
                Element::SectionStart(b"child-sas"),
                Element::SectionStart(b"net-1"),
                Element::KeyValue(b"spi-in", b"c985e016"),
                Element::ListStart(b"local-ts"),
                Element::ListItem(b"10.1.0.0/24"),
                Element::ListEnd,
                Element::SectionEnd,
                Element::SectionEnd,
                Element::SectionEnd,
            ]
        );
    }

    #[test]
    fn every_cut_and_bad_type_is_an_error_not_a_panic() {
        let raw = list_sa_event();
        for cut in 0..raw.len() {
            if let Ok(p) = Packet::parse(&raw[..cut]) {
                for _ in Elements::new(p.message) {}
            }
        }
        let p = Packet::parse(&[1, 9]).unwrap(); // CMD_RESPONSE, unnamed
        assert_eq!(
            Elements::new(p.message).next(),
            Some(Err(ViciError::UnknownElement { kind: 9, at: 0 }))
        );
        assert_eq!(Packet::parse(&[]), Err(ViciError::Empty));
        assert_eq!(frame_len([0, 8, 0, 1]), Err(ViciError::TooLong(0x80001)));
    }

    #[test]
    fn builds_requests_and_registrations() {
        assert_eq!(
            named_packet(Op::CmdRequest, "list-sas"),
            [&[0, 0, 0, 10, 0, 8][..], b"list-sas"].concat()
        );
        assert_eq!(
            named_packet(Op::EventRegister, "child-rekey"),
            [&[0, 0, 0, 13, 3, 11][..], b"child-rekey"].concat()
        );
    }
}
