//! Capture file formats as views over the whole file's bytes: classic pcap and pcapng.
//! Nothing is copied: a [`Record`] borrows its packet from the file (memory-mapped by the
//! caller), and the readers never panic on any input.
//!
//! ```text
//!  pcap   : file header (24) ─► { record header (16): sec, frac, incl_len, orig_len; data }*
//!  pcapng : { block type (4), total length (4), body, total length (4) }*
//!           SHB 0x0A0D0D0A  byte order (0x1A2B3C4D), version, options: starts a section
//!           IDB 1           link type, snaplen, options (if_tsresol 9, if_tsoffset 14)
//!           EPB 6           interface id, timestamp (high, low), captured/original length
//!           SPB 3           original length (interface 0, no timestamp)
//!           PB  2           obsolete packet block (interface id u16, drops u16, as EPB)
//!           others          skipped (name resolution, statistics, journal, custom...)
//! ```
//!
//! pcapng as specified in draft-ietf-opsawg-pcapng (sections 4.1-4.4); a block's length is
//! checked (multiple of 4, at least 12, at most 32 MiB, all there) before its body is read,
//! its trailing copy when the next block is read, and every field read is bounds-checked.

use crate::nflog::wire::HeaderOrder;

pub(super) const PCAP_MAGIC_MICROS: u32 = 0xa1b2_c3d4;
pub(super) const PCAP_MAGIC_NANOS: u32 = 0xa1b2_3c4d;
pub(super) const PCAPNG_SHB: u32 = 0x0a0d_0d0a;
const PCAPNG_BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
const PCAP_HEADER_LEN: usize = 24;
const PCAP_RECORD_HEADER_LEN: usize = 16;
/// Largest record accepted when the file's snaplen is smaller (libpcap's own maximum).
const MAX_RECORD_DEFAULT: u32 = 262_144;
/// Largest record accepted whatever the snaplen says.
const MAX_RECORD_HARD: u32 = 16 << 20;

const BLOCK_PB: u32 = 2;
const BLOCK_IDB: u32 = 1;
const BLOCK_SPB: u32 = 3;
const BLOCK_EPB: u32 = 6;
const OPT_END: u16 = 0;
const OPT_IF_TSRESOL: u16 = 9;
const OPT_IF_TSOFFSET: u16 = 14;
/// Largest pcapng block accepted (a packet of the 16 MiB record limit, with room to spare).
const MAX_BLOCK_LEN: u32 = 32 << 20;
/// Interfaces kept per section (a hostile file could declare millions).
const MAX_INTERFACES: usize = 65_536;

/// A problem with the file's framing, at a byte offset of the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("not a pcap or pcapng file (magic {magic:#010x})")]
    BadMagic { magic: u32 },
    #[error("unsupported link type {linktype}")]
    UnsupportedLinkType { linktype: u32 },
    #[error("truncated at byte {offset}: {what} needs {need} bytes, {have} left")]
    Truncated {
        offset: u64,
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("corrupt at byte {offset}: {what} {value}")]
    Corrupt {
        offset: u64,
        what: &'static str,
        value: u64,
    },
}

impl FormatError {
    /// The same error with its offset moved on by `base` (a window's offset in the file).
    pub fn shifted(self, base: u64) -> FormatError {
        match self {
            FormatError::Truncated {
                offset,
                what,
                need,
                have,
            } => FormatError::Truncated {
                offset: offset + base,
                what,
                need,
                have,
            },
            FormatError::Corrupt {
                offset,
                what,
                value,
            } => FormatError::Corrupt {
                offset: offset + base,
                what,
                value,
            },
            other => other,
        }
    }
}

/// What one step of a [`Cursor`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit<'a> {
    /// A packet.
    Record(Record<'a>),
    /// A block that holds no packet (section, interface, statistics...).
    Other,
    /// The clean end of the bytes.
    End,
}

/// One captured packet, borrowed from the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// `LINKTYPE_*` of the interface it was captured on.
    pub linktype: u16,
    /// Byte order of the writer (NFLOG TLVs are in the capturing host's order).
    pub order: HeaderOrder,
    /// Capture time, milliseconds since the UNIX epoch (`None`: the block has none).
    pub ts_ms: Option<u64>,
    /// The captured bytes, starting at the link-layer header.
    pub data: &'a [u8],
}

/// Whether `linktype` is one the replay locates IP packets in.
pub fn supported_linktype(linktype: u32) -> bool {
    use super::linktype::*;
    u16::try_from(linktype).is_ok_and(|l| {
        [
            ETHERNET, RAW_12, RAW, LINUX_SLL, IPV4, IPV6, NFLOG, LINUX_SLL2,
        ]
        .contains(&l)
    })
}

fn get<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn u16_at(b: &[u8], at: usize, big: bool) -> Option<u16> {
    let v = get::<2>(b, at)?;
    Some(if big {
        u16::from_be_bytes(v)
    } else {
        u16::from_le_bytes(v)
    })
}

fn u32_at(b: &[u8], at: usize, big: bool) -> Option<u32> {
    let v = get::<4>(b, at)?;
    Some(if big {
        u32::from_be_bytes(v)
    } else {
        u32::from_le_bytes(v)
    })
}

fn order(big: bool) -> HeaderOrder {
    if big {
        HeaderOrder::Big
    } else {
        HeaderOrder::Little
    }
}

fn truncated(bytes: &[u8], at: usize, what: &'static str, need: usize) -> FormatError {
    FormatError::Truncated {
        offset: at as u64,
        what,
        need,
        have: bytes.len().saturating_sub(at),
    }
}

/// A block whose body is shorter than its fixed fields (`have` body bytes).
fn short(at: usize, what: &'static str, need: usize, have: usize) -> FormatError {
    FormatError::Corrupt {
        offset: at as u64,
        what,
        value: (need.saturating_sub(have)) as u64,
    }
}

/// Timestamp units of one interface, turned into milliseconds without a 128-bit division.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    /// Units of 10^-k s with k >= 3: divide by 10^(k-3).
    Div(u64),
    /// Units of 10^-k s with k < 3: multiply by 10^(3-k).
    Mul(u64),
    /// Units of 2^-k s.
    Pow2(u32),
}

impl Resolution {
    const MICROS: Resolution = Resolution::Div(1_000);

    /// `if_tsresol` (pcapng section 4.2): MSB clear, 10^-v; MSB set, 2^-(v & 0x7f).
    fn from_tsresol(v: u8) -> Option<Resolution> {
        let k = u32::from(v & 0x7f);
        if v & 0x80 != 0 {
            return (k < 64).then_some(Resolution::Pow2(k));
        }
        match k {
            0..=2 => Some(Resolution::Mul(10u64.pow(3 - k))),
            3..=19 => Some(Resolution::Div(10u64.pow(k - 3))),
            _ => None,
        }
    }

    fn to_ms(self, units: u64) -> u64 {
        match self {
            Resolution::Div(d) => units / d,
            Resolution::Mul(m) => units.saturating_mul(m),
            Resolution::Pow2(k) => {
                let whole = (units >> k).saturating_mul(1000);
                let frac = ((u128::from(units) & ((1u128 << k) - 1)) * 1000) >> k;
                whole.saturating_add(frac as u64)
            }
        }
    }
}

/// One pcapng interface (IDB) of the current section.
#[derive(Debug, Clone, Copy)]
struct Interface {
    linktype: u16,
    snaplen: u32,
    resolution: Resolution,
    /// `if_tsoffset`, seconds added to every timestamp.
    offset_s: i64,
}

/// Where the reader is in a file: the state without the bytes, so an owner of the bytes
/// (a memory map) can lend packets while the state moves on. [`Records`] pairs the two.
#[derive(Debug, Clone)]
pub struct Cursor {
    pos: usize,
    big: bool,
    kind: Kind,
    /// pcapng: the bytes the last block's trailing length must hold, checked at `pos - 4`.
    trailer: Option<[u8; 4]>,
}

#[derive(Debug, Clone)]
enum Kind {
    Pcap {
        nanos: bool,
        linktype: u16,
        max_record: u32,
    },
    Pcapng {
        interfaces: Vec<Interface>,
    },
}

impl Cursor {
    /// Reads the file header (pcap) or the first section header (pcapng).
    pub fn start(bytes: &[u8]) -> Result<Cursor, FormatError> {
        let Some(m) = get::<4>(bytes, 0) else {
            return Err(truncated(bytes, 0, "file header", PCAP_HEADER_LEN));
        };
        if u32::from_be_bytes(m) == PCAPNG_SHB {
            let mut c = Cursor {
                pos: 0,
                big: false,
                trailer: None,
                kind: Kind::Pcapng {
                    interfaces: Vec::new(),
                },
            };
            c.section(bytes)?;
            return Ok(c);
        }
        let (big, nanos) = match (u32::from_le_bytes(m), u32::from_be_bytes(m)) {
            (PCAP_MAGIC_MICROS, _) => (false, false),
            (PCAP_MAGIC_NANOS, _) => (false, true),
            (_, PCAP_MAGIC_MICROS) => (true, false),
            (_, PCAP_MAGIC_NANOS) => (true, true),
            (_, magic) => return Err(FormatError::BadMagic { magic }),
        };
        if bytes.len() < PCAP_HEADER_LEN {
            return Err(truncated(bytes, 0, "file header", PCAP_HEADER_LEN));
        }
        let snaplen = u32_at(bytes, 16, big).unwrap_or(0);
        // The link type is the low 16 bits; the upper bits may carry FCS information.
        let network = u32_at(bytes, 20, big).unwrap_or(0);
        let linktype = (network & 0xffff) as u16;
        if !supported_linktype(linktype.into()) {
            return Err(FormatError::UnsupportedLinkType { linktype: network });
        }
        Ok(Cursor {
            pos: PCAP_HEADER_LEN,
            big,
            trailer: None,
            kind: Kind::Pcap {
                nanos,
                linktype,
                max_record: snaplen.clamp(MAX_RECORD_DEFAULT, MAX_RECORD_HARD),
            },
        })
    }

    /// Whether the file is pcapng.
    pub fn is_pcapng(&self) -> bool {
        matches!(self.kind, Kind::Pcapng { .. })
    }

    /// Byte offset of the next record or block.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// The link type of a pcap file, or of the first interface of a pcapng file (read ahead
    /// to the first interface block; `None` when the file has none).
    pub fn first_linktype(&self, bytes: &[u8]) -> Option<u16> {
        match &self.kind {
            Kind::Pcap { linktype, .. } => Some(*linktype),
            Kind::Pcapng { .. } => {
                // An interface block comes before any packet that names it.
                let mut ahead = self.clone();
                let _ = ahead.next(bytes);
                ahead.interfaces().first().map(|i| i.linktype)
            }
        }
    }

    /// The next record, `Ok(None)` at a clean end of file. After an error the cursor does
    /// not move: every call returns the same error.
    pub fn next<'a>(&mut self, bytes: &'a [u8]) -> Result<Option<Record<'a>>, FormatError> {
        match self.kind {
            Kind::Pcap {
                nanos,
                linktype,
                max_record,
            } => self.next_pcap(bytes, nanos, linktype, max_record),
            Kind::Pcapng { .. } => self.next_pcapng(bytes),
        }
    }

    #[inline]
    fn next_pcap<'a>(
        &mut self,
        bytes: &'a [u8],
        nanos: bool,
        linktype: u16,
        max_record: u32,
    ) -> Result<Option<Record<'a>>, FormatError> {
        let at = self.pos;
        let Some(h) = get::<PCAP_RECORD_HEADER_LEN>(bytes, at) else {
            if at >= bytes.len() {
                return Ok(None);
            }
            return Err(truncated(
                bytes,
                at,
                "record header",
                PCAP_RECORD_HEADER_LEN,
            ));
        };
        let big = self.big;
        let field = |i: usize| u32_at(&h, i, big).unwrap_or(0);
        let (sec, frac, incl) = (field(0), field(4), field(8));
        if incl > max_record {
            return Err(FormatError::Corrupt {
                offset: at as u64 + 8,
                what: "record length",
                value: incl.into(),
            });
        }
        let start = at + PCAP_RECORD_HEADER_LEN;
        let Some(data) = bytes.get(start..start + incl as usize) else {
            return Err(truncated(
                bytes,
                at,
                "record",
                PCAP_RECORD_HEADER_LEN + incl as usize,
            ));
        };
        self.pos = start + incl as usize;
        let sub_ms = if nanos {
            frac / 1_000_000
        } else {
            frac / 1_000
        };
        Ok(Some(Record {
            linktype,
            order: order(big),
            ts_ms: Some(u64::from(sec) * 1000 + u64::from(sub_ms)),
            data,
        }))
    }

    /// Reads the section header block at `pos`: byte order, then resets the interfaces.
    fn section(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        let at = self.pos;
        let Some(bom) = get::<4>(bytes, at + 8) else {
            return Err(truncated(bytes, at, "section header", 28));
        };
        self.big = match (u32::from_le_bytes(bom), u32::from_be_bytes(bom)) {
            (PCAPNG_BYTE_ORDER_MAGIC, _) => false,
            (_, PCAPNG_BYTE_ORDER_MAGIC) => true,
            (_, v) => {
                return Err(FormatError::Corrupt {
                    offset: at as u64 + 8,
                    what: "section byte-order magic",
                    value: v.into(),
                })
            }
        };
        let major = u16_at(bytes, at + 12, self.big).unwrap_or(0);
        if major != 1 {
            return Err(FormatError::Corrupt {
                offset: at as u64 + 12,
                what: "pcapng major version",
                value: major.into(),
            });
        }
        let (_, len) = self.block(bytes, 28)?;
        if let Kind::Pcapng { interfaces } = &mut self.kind {
            interfaces.clear();
        }
        self.pos = at + len;
        self.trailer = Some(self.len_bytes(len));
        Ok(())
    }

    fn len_bytes(&self, len: usize) -> [u8; 4] {
        let len = len as u32;
        if self.big {
            len.to_be_bytes()
        } else {
            len.to_le_bytes()
        }
    }

    /// Checks the block at `pos` (lengths, padding; the trailing copy is checked by
    /// [`check_trailer`](Self::check_trailer) at the next block): `(type, total length)`.
    fn block(&self, bytes: &[u8], min_len: usize) -> Result<(u32, usize), FormatError> {
        let at = self.pos;
        let (Some(kind), Some(len)) =
            (u32_at(bytes, at, self.big), u32_at(bytes, at + 4, self.big))
        else {
            return Err(truncated(bytes, at, "block header", 8));
        };
        let len_usize = len as usize;
        if len % 4 != 0 || len_usize < min_len.max(12) || len > MAX_BLOCK_LEN {
            return Err(FormatError::Corrupt {
                offset: at as u64 + 4,
                what: "block total length",
                value: len.into(),
            });
        }
        if bytes.len() < at + len_usize {
            return Err(truncated(bytes, at, "block", len_usize));
        }
        Ok((kind, len_usize))
    }

    fn next_pcapng<'a>(&mut self, bytes: &'a [u8]) -> Result<Option<Record<'a>>, FormatError> {
        loop {
            match self.next_block(bytes)? {
                Unit::Record(r) => return Ok(Some(r)),
                Unit::Other => {}
                Unit::End => return Ok(None),
            }
        }
    }

    /// One pcap record or one pcapng block.
    pub fn next_unit<'a>(&mut self, bytes: &'a [u8]) -> Result<Unit<'a>, FormatError> {
        match self.kind {
            Kind::Pcap {
                nanos,
                linktype,
                max_record,
            } => Ok(match self.next_pcap(bytes, nanos, linktype, max_record)? {
                Some(r) => Unit::Record(r),
                None => Unit::End,
            }),
            Kind::Pcapng { .. } => self.next_block(bytes),
        }
    }

    /// Checks the trailing length of the block before `pos`. Read here, beside the next
    /// block's header, rather than at the end of its own block, it costs no cache miss per
    /// packet; a block whose copy differs is reported after its packet was delivered.
    fn check_trailer(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        let Some(want) = self.trailer else {
            return Ok(());
        };
        // Before the window (a reader that kept less than 4 bytes): not checked.
        let Some(at) = self.pos.checked_sub(4) else {
            self.trailer = None;
            return Ok(());
        };
        match get::<4>(bytes, at) {
            Some(got) if got != want => Err(FormatError::Corrupt {
                offset: at as u64,
                what: "block trailing length",
                value: u32_at(&got, 0, self.big).unwrap_or(0).into(),
            }),
            _ => {
                self.trailer = None;
                Ok(())
            }
        }
    }

    fn next_block<'a>(&mut self, bytes: &'a [u8]) -> Result<Unit<'a>, FormatError> {
        self.check_trailer(bytes)?;
        let at = self.pos;
        if at >= bytes.len() {
            return Ok(Unit::End);
        }
        if get::<4>(bytes, at).map(u32::from_be_bytes) == Some(PCAPNG_SHB) {
            self.section(bytes)?;
            return Ok(Unit::Other);
        }
        let (kind, len) = self.block(bytes, 12)?;
        // The body, without the two length fields and the type.
        let body = &bytes[at + 8..at + len - 4];
        let found = match kind {
            BLOCK_IDB => {
                self.interface(body, at)?;
                None
            }
            BLOCK_EPB => Some(self.packet(body, at, false)?),
            BLOCK_PB => Some(self.packet(body, at, true)?),
            BLOCK_SPB => Some(self.simple_packet(body, at)?),
            _ => None,
        };
        self.pos = at + len;
        self.trailer = Some(self.len_bytes(len));
        Ok(found.map_or(Unit::Other, Unit::Record))
    }

    /// How many bytes from [`offset`](Self::offset) the next record or block takes, as far
    /// as its header tells (the header's own size when it is not all there). A reader over a
    /// window of the file makes that many available before [`next_unit`](Self::next_unit);
    /// lengths past the limits are left for `next_unit` to report as errors.
    pub fn need(&self, bytes: &[u8]) -> usize {
        let at = self.pos;
        match self.kind {
            Kind::Pcap { max_record, .. } => match u32_at(bytes, at + 8, self.big) {
                Some(incl) if incl <= max_record => PCAP_RECORD_HEADER_LEN + incl as usize,
                _ => PCAP_RECORD_HEADER_LEN,
            },
            Kind::Pcapng { .. } => {
                let is_shb = get::<4>(bytes, at).map(u32::from_be_bytes) == Some(PCAPNG_SHB);
                let big = if is_shb {
                    match get::<4>(bytes, at + 8).map(u32::from_be_bytes) {
                        Some(PCAPNG_BYTE_ORDER_MAGIC) => true,
                        Some(_) => false,
                        None => return 12,
                    }
                } else {
                    self.big
                };
                match u32_at(bytes, at + 4, big) {
                    Some(len) if (12..=MAX_BLOCK_LEN).contains(&len) => len as usize,
                    _ => 12,
                }
            }
        }
    }

    /// The window the cursor reads moved `by` bytes on: positions shift back by as much.
    pub fn rebase(&mut self, by: usize) {
        self.pos = self.pos.saturating_sub(by);
    }

    fn interfaces(&self) -> &[Interface] {
        match &self.kind {
            Kind::Pcapng { interfaces } => interfaces,
            Kind::Pcap { .. } => &[],
        }
    }

    fn interface(&mut self, body: &[u8], at: usize) -> Result<(), FormatError> {
        let big = self.big;
        let (Some(linktype), Some(snaplen)) = (u16_at(body, 0, big), u32_at(body, 4, big)) else {
            return Err(short(
                at,
                "interface description block too short by",
                8,
                body.len(),
            ));
        };
        let mut iface = Interface {
            linktype,
            snaplen,
            resolution: Resolution::MICROS,
            offset_s: 0,
        };
        for (code, value, off) in Options::new(&body[8..], big) {
            let place = (at + 16 + off) as u64;
            match code {
                OPT_IF_TSRESOL => {
                    let v = value.first().copied().unwrap_or(0xff);
                    iface.resolution = Resolution::from_tsresol(v).ok_or(FormatError::Corrupt {
                        offset: place,
                        what: "if_tsresol",
                        value: v.into(),
                    })?;
                }
                OPT_IF_TSOFFSET => {
                    if let Some(v) = get::<8>(value, 0) {
                        iface.offset_s = if big {
                            i64::from_be_bytes(v)
                        } else {
                            i64::from_le_bytes(v)
                        };
                    }
                }
                _ => {}
            }
        }
        let Kind::Pcapng { interfaces } = &mut self.kind else {
            return Ok(());
        };
        if interfaces.len() >= MAX_INTERFACES {
            return Err(FormatError::Corrupt {
                offset: at as u64,
                what: "interface count",
                value: interfaces.len() as u64,
            });
        }
        interfaces.push(iface);
        Ok(())
    }

    fn iface(&self, id: u32, at: usize) -> Result<Interface, FormatError> {
        self.interfaces()
            .get(id as usize)
            .copied()
            .ok_or(FormatError::Corrupt {
                offset: at as u64 + 8,
                what: "interface id without an interface description",
                value: id.into(),
            })
    }

    /// Enhanced (and obsolete) packet block: id, ts high, ts low, captured, original, data.
    fn packet<'a>(
        &self,
        body: &'a [u8],
        at: usize,
        obsolete: bool,
    ) -> Result<Record<'a>, FormatError> {
        const FIXED: usize = 20;
        let big = self.big;
        let field = |i: usize| u32_at(body, i, big);
        let (Some(id_word), Some(hi), Some(lo), Some(caplen)) =
            (field(0), field(4), field(8), field(12))
        else {
            return Err(short(at, "packet block too short by", FIXED, body.len()));
        };
        let id = if obsolete {
            u32::from(u16_at(body, 0, big).unwrap_or(0))
        } else {
            id_word
        };
        let iface = self.iface(id, at)?;
        let data = body
            .get(FIXED..)
            .and_then(|d| d.get(..caplen as usize))
            .ok_or(FormatError::Corrupt {
                offset: at as u64 + 20,
                what: "captured length beyond its block",
                value: caplen.into(),
            })?;
        let units = (u64::from(hi) << 32) | u64::from(lo);
        let ms = iface.resolution.to_ms(units);
        let ms = ms.saturating_add_signed(iface.offset_s.saturating_mul(1000));
        Ok(Record {
            linktype: iface.linktype,
            order: order(big),
            ts_ms: Some(ms),
            data,
        })
    }

    /// Simple packet block: original length, then the packet cut to interface 0's snaplen.
    fn simple_packet<'a>(&self, body: &'a [u8], at: usize) -> Result<Record<'a>, FormatError> {
        let iface = self.iface(0, at)?;
        let Some(orig) = u32_at(body, 0, self.big) else {
            return Err(short(at, "simple packet block too short by", 4, body.len()));
        };
        let rest = &body[4..];
        let mut caplen = (orig as usize).min(rest.len());
        if iface.snaplen != 0 {
            caplen = caplen.min(iface.snaplen as usize);
        }
        Ok(Record {
            linktype: iface.linktype,
            order: order(self.big),
            ts_ms: None,
            data: &rest[..caplen],
        })
    }
}

/// Options `{u16 code, u16 length, value, pad to 4}` up to `opt_endofopt` or the end:
/// `(code, value, offset in the options)`. A value running past the end stops the walk.
#[derive(Debug)]
struct Options<'a> {
    bytes: &'a [u8],
    at: usize,
    big: bool,
}

impl<'a> Options<'a> {
    fn new(bytes: &'a [u8], big: bool) -> Self {
        Options { bytes, at: 0, big }
    }
}

impl<'a> Iterator for Options<'a> {
    type Item = (u16, &'a [u8], usize);

    fn next(&mut self) -> Option<Self::Item> {
        let at = self.at;
        let code = u16_at(self.bytes, at, self.big)?;
        let len = usize::from(u16_at(self.bytes, at + 2, self.big)?);
        if code == OPT_END {
            return None;
        }
        let value = self.bytes.get(at + 4..at + 4 + len)?;
        self.at = at + 4 + len.next_multiple_of(4);
        Some((code, value, at))
    }
}

/// The records of a whole file in memory, as an iterator that stops at the first error.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    bytes: &'a [u8],
    cursor: Cursor,
    failed: bool,
}

impl<'a> Records<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<Self, FormatError> {
        Ok(Records {
            bytes,
            cursor: Cursor::start(bytes)?,
            failed: false,
        })
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let r = self.cursor.next(self.bytes).transpose();
        self.failed = matches!(r, Some(Err(_)));
        r
    }
}

#[cfg(test)]
#[path = "format_tests.rs"]
pub(crate) mod tests;
