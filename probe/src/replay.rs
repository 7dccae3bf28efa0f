//! Pcap replay: classic pcap files (both byte orders, micro- and nanosecond timestamps) read
//! into the same `(PacketMeta, payload)` the NFLOG socket produces, with the capture's
//! timestamps, so the pipeline runs deterministically over a file.
//!
//! ```text
//!  file ──► 1 MiB reusable buffer ──► record header (16 bytes) ──► link layer
//!     LINKTYPE_NFLOG (239)   nflog_hdr + TLVs: group, prefix, mark, uid, ifindex, payload
//!     ETHERNET (1)           VLAN tags (802.1Q / 802.1ad / 0x9100) skipped
//!     RAW (101, 12), IPV4 (228), IPV6 (229)
//!     LINUX_SLL (113), LINUX_SLL2 (276)
//!  ──► (PacketMeta, payload starting at the IP header)
//! ```
//!
//! pcapng is not read (the error says how to convert: `editcap -F pcap in.pcapng out.pcap`).
//! Non-IP records are skipped and counted; a record whose link header is malformed is
//! skipped and counted; a truncated or corrupt file is an error naming the file and the byte
//! offset, after every complete record before it was delivered.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::nflog::wire::{self, HeaderOrder};
use crate::packet::{PacketMeta, L3};

/// `LINKTYPE_*` values read (https://www.tcpdump.org/linktypes.html).
pub mod linktype {
    pub const ETHERNET: u16 = 1;
    /// `DLT_RAW` as some systems write it.
    pub const RAW_12: u16 = 12;
    pub const RAW: u16 = 101;
    pub const LINUX_SLL: u16 = 113;
    pub const IPV4: u16 = 228;
    pub const IPV6: u16 = 229;
    pub const NFLOG: u16 = 239;
    pub const LINUX_SLL2: u16 = 276;
}

const PCAP_MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const PCAP_MAGIC_NANOS: u32 = 0xa1b2_3c4d;
const PCAPNG_MAGIC: u32 = 0x0a0d_0d0a;
const FILE_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;
/// Read size and initial buffer.
const CHUNK: usize = 1 << 20;
/// Largest record accepted when the file's snaplen is smaller (libpcap's own maximum).
const MAX_RECORD_DEFAULT: u32 = 262_144;
/// Largest record accepted whatever the snaplen says.
const MAX_RECORD_HARD: u32 = 16 << 20;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_QINQ: u16 = 0x9100;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: pcapng is not supported; convert with `editcap -F pcap IN OUT`")]
    Pcapng { path: PathBuf },
    #[error("{path}: not a pcap file (magic {magic:#010x})")]
    BadMagic { path: PathBuf, magic: u32 },
    #[error("{path}: unsupported link type {linktype}")]
    UnsupportedLinkType { path: PathBuf, linktype: u32 },
    #[error("{path}: truncated at byte {offset}: {what} needs {need} bytes, {have} left")]
    Truncated {
        path: PathBuf,
        offset: u64,
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{path}: corrupt at byte {offset}: {what} {value}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: &'static str,
        value: u64,
    },
}

/// Counters of one replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Records read from the file.
    pub records: u64,
    /// Packets delivered.
    pub packets: u64,
    /// Records that were not IPv4/IPv6 (ARP, LLDP, NFLOG without payload...).
    pub non_ip: u64,
    /// Records whose link-layer header was malformed or cut short.
    pub malformed: u64,
}

/// What a record turned out to hold, as positions in it (the reader's buffer moves on, so
/// borrowing is deferred until the caller gets the packet).
#[derive(Debug)]
struct Located {
    meta: PacketMeta<'static>,
    prefix: Range<usize>,
    payload: Range<usize>,
}

#[derive(Debug)]
enum Skip {
    NonIp,
    Malformed,
}

/// A pcap file being read. `next_packet` lends each packet from an internal buffer.
#[derive(Debug)]
pub struct PcapReader<R> {
    src: R,
    path: PathBuf,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// File offset of `buf[0]`.
    base: u64,
    eof: bool,
    order: HeaderOrder,
    nanos: bool,
    linktype: u16,
    max_record: u32,
    pseudo_group: u16,
    stats: ReplayStats,
}

impl PcapReader<File> {
    /// Opens `path`. Captures without NFLOG metadata label every packet with `pseudo_group`.
    pub fn open(path: impl AsRef<Path>, pseudo_group: u16) -> Result<Self, ReplayError> {
        let path = path.as_ref();
        let f = File::open(path).map_err(|source| ReplayError::Io {
            path: path.to_owned(),
            source,
        })?;
        PcapReader::new(f, path, pseudo_group)
    }
}

fn range_in(outer: &[u8], inner: &[u8]) -> Range<usize> {
    let start = (inner.as_ptr() as usize).wrapping_sub(outer.as_ptr() as usize);
    if inner.is_empty() || start > outer.len() || inner.len() > outer.len() - start {
        return 0..0;
    }
    start..start + inner.len()
}

fn detach(m: &PacketMeta<'_>) -> PacketMeta<'static> {
    PacketMeta {
        group: m.group,
        l3: m.l3,
        hook: m.hook,
        mark: m.mark,
        ingress_if: m.ingress_if,
        egress_if: m.egress_if,
        phys_ingress_if: m.phys_ingress_if,
        phys_egress_if: m.phys_egress_if,
        uid: m.uid,
        gid: m.gid,
        prefix: &[],
        timestamp_ms: m.timestamp_ms,
        seq: m.seq,
    }
}

fn l3_of_ethertype(t: u16) -> Option<L3> {
    match t {
        ETH_P_IP => Some(L3::Ipv4),
        ETH_P_IPV6 => Some(L3::Ipv6),
        _ => None,
    }
}

fn l3_of_nibble(first: Option<&u8>) -> Option<L3> {
    match first.map(|b| b >> 4) {
        Some(4) => Some(L3::Ipv4),
        Some(6) => Some(L3::Ipv6),
        _ => None,
    }
}

fn be16(rec: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*rec.get(at)?, *rec.get(at + 1)?]))
}

/// Finds the IP packet in one record of link type `linktype`.
fn locate(linktype: u16, rec: &[u8], order: HeaderOrder, group: u16) -> Result<Located, Skip> {
    let plain = |l3: L3, start: usize| Located {
        meta: PacketMeta {
            group,
            l3,
            ..PacketMeta::default()
        },
        prefix: 0..0,
        payload: start..rec.len(),
    };
    match linktype {
        linktype::NFLOG => {
            let (m, p) = wire::parse_pcap_nflog(rec, order).map_err(|_| Skip::Malformed)?;
            if p.is_empty() {
                return Err(Skip::NonIp);
            }
            let mut meta = detach(&m);
            if meta.l3 == L3::Unknown {
                meta.l3 = l3_of_nibble(p.first()).ok_or(Skip::NonIp)?;
            }
            Ok(Located {
                meta,
                prefix: range_in(rec, m.prefix),
                payload: range_in(rec, p),
            })
        }
        linktype::ETHERNET => {
            let mut at = 12;
            let mut t = be16(rec, at).ok_or(Skip::Malformed)?;
            while matches!(t, ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ) {
                at += 4;
                t = be16(rec, at).ok_or(Skip::Malformed)?;
            }
            let l3 = l3_of_ethertype(t).ok_or(Skip::NonIp)?;
            Ok(plain(l3, at + 2))
        }
        linktype::RAW | linktype::RAW_12 => {
            let l3 = l3_of_nibble(rec.first()).ok_or(Skip::NonIp)?;
            Ok(plain(l3, 0))
        }
        linktype::IPV4 => Ok(plain(L3::Ipv4, 0)),
        linktype::IPV6 => Ok(plain(L3::Ipv6, 0)),
        linktype::LINUX_SLL => {
            // packet type, ARPHRD, address length, 8-byte address, protocol (all BE).
            let t = be16(rec, 14).ok_or(Skip::Malformed)?;
            Ok(plain(l3_of_ethertype(t).ok_or(Skip::NonIp)?, 16))
        }
        linktype::LINUX_SLL2 => {
            // protocol, reserved, be32 ifindex, ARPHRD, packet type, address length, address.
            let t = be16(rec, 0).ok_or(Skip::Malformed)?;
            let ifindex = rec
                .get(4..8)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(Skip::Malformed)?;
            let packet_type = *rec.get(10).ok_or(Skip::Malformed)?;
            if rec.len() < 20 {
                return Err(Skip::Malformed);
            }
            let mut found = plain(l3_of_ethertype(t).ok_or(Skip::NonIp)?, 20);
            // PACKET_OUTGOING (4) was sent on the interface; every other type arrived on it.
            if packet_type == 4 {
                found.meta.egress_if = ifindex;
            } else {
                found.meta.ingress_if = ifindex;
            }
            Ok(found)
        }
        _ => Err(Skip::NonIp),
    }
}

impl<R: Read> PcapReader<R> {
    /// Reads the file header from `src`. `path` names the source in errors.
    pub fn new(src: R, path: impl Into<PathBuf>, pseudo_group: u16) -> Result<Self, ReplayError> {
        let mut r = PcapReader {
            src,
            path: path.into(),
            buf: vec![0; CHUNK],
            pos: 0,
            end: 0,
            base: 0,
            eof: false,
            order: HeaderOrder::Little,
            nanos: false,
            linktype: 0,
            max_record: MAX_RECORD_DEFAULT,
            pseudo_group,
            stats: ReplayStats::default(),
        };
        r.fill(FILE_HEADER_LEN, "file header")?;
        let h = &r.buf[..FILE_HEADER_LEN];
        let magic_le = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let magic_be = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        (r.order, r.nanos) = match (magic_le, magic_be) {
            (PCAP_MAGIC_MICROS, _) => (HeaderOrder::Little, false),
            (PCAP_MAGIC_NANOS, _) => (HeaderOrder::Little, true),
            (_, PCAP_MAGIC_MICROS) => (HeaderOrder::Big, false),
            (_, PCAP_MAGIC_NANOS) => (HeaderOrder::Big, true),
            (_, PCAPNG_MAGIC) => return Err(ReplayError::Pcapng { path: r.path }),
            _ => {
                return Err(ReplayError::BadMagic {
                    path: r.path,
                    magic: magic_be,
                })
            }
        };
        let snaplen = r.u32_at(16);
        // The link type is the low 16 bits; the upper bits may carry FCS information.
        let network = r.u32_at(20);
        r.linktype = (network & 0xffff) as u16;
        use linktype::*;
        if ![
            ETHERNET, RAW_12, RAW, LINUX_SLL, IPV4, IPV6, NFLOG, LINUX_SLL2,
        ]
        .contains(&r.linktype)
        {
            return Err(ReplayError::UnsupportedLinkType {
                path: r.path,
                linktype: network,
            });
        }
        r.max_record = snaplen.clamp(MAX_RECORD_DEFAULT, MAX_RECORD_HARD);
        r.pos = FILE_HEADER_LEN;
        Ok(r)
    }

    /// The capture's link type (`LINKTYPE_*`).
    pub fn link_type(&self) -> u16 {
        self.linktype
    }

    pub fn stats(&self) -> &ReplayStats {
        &self.stats
    }

    fn u32_at(&self, at: usize) -> u32 {
        let b = [
            self.buf[at],
            self.buf[at + 1],
            self.buf[at + 2],
            self.buf[at + 3],
        ];
        match self.order {
            HeaderOrder::Big => u32::from_be_bytes(b),
            _ => u32::from_le_bytes(b),
        }
    }

    fn io_err(&self, source: io::Error) -> ReplayError {
        ReplayError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Makes `need` bytes available at `pos`. `Ok(false)`: clean end of file (nothing left).
    fn fill(&mut self, need: usize, what: &'static str) -> Result<bool, ReplayError> {
        if self.end - self.pos >= need {
            return Ok(true);
        }
        if !self.eof {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.end, 0);
                self.base += self.pos as u64;
                self.end -= self.pos;
                self.pos = 0;
            }
            if self.buf.len() < need {
                self.buf.resize(need.next_power_of_two(), 0);
            }
            while self.end < need {
                let want = (self.buf.len() - self.end).max(need - self.end);
                match self.src.read(&mut self.buf[self.end..self.end + want]) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(n) => self.end += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.io_err(e)),
                }
            }
            if self.end - self.pos >= need {
                return Ok(true);
            }
        }
        let have = self.end - self.pos;
        if have == 0 && what == "record header" {
            return Ok(false);
        }
        Err(ReplayError::Truncated {
            path: self.path.clone(),
            offset: self.base + self.pos as u64,
            what,
            need,
            have,
        })
    }

    /// Next record: its position in `buf` and timestamp in ms.
    fn next_record(&mut self) -> Result<Option<(Range<usize>, u64)>, ReplayError> {
        if !self.fill(RECORD_HEADER_LEN, "record header")? {
            return Ok(None);
        }
        let at = self.pos;
        let (sec, frac, incl) = (self.u32_at(at), self.u32_at(at + 4), self.u32_at(at + 8));
        if incl > self.max_record {
            return Err(ReplayError::Corrupt {
                path: self.path.clone(),
                offset: self.base + at as u64 + 8,
                what: "record length",
                value: incl.into(),
            });
        }
        let len = RECORD_HEADER_LEN + incl as usize;
        self.fill(len, "record")?;
        let start = self.pos + RECORD_HEADER_LEN;
        self.pos += len;
        self.stats.records += 1;
        let sub_ms = if self.nanos {
            frac / 1_000_000
        } else {
            frac / 1_000
        };
        let ts = u64::from(sec) * 1000 + u64::from(sub_ms);
        Ok(Some((start..start + incl as usize, ts)))
    }

    /// The next IP packet, or `None` at the end of the file. Errors are final: the file is
    /// truncated or corrupt at the offset they name.
    pub fn next_packet(&mut self) -> Option<Result<(PacketMeta<'_>, &[u8]), ReplayError>> {
        let (rec, found) = loop {
            let (rec, ts) = match self.next_record() {
                Ok(Some(r)) => r,
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            };
            let bytes = &self.buf[rec.clone()];
            match locate(self.linktype, bytes, self.order, self.pseudo_group) {
                Ok(mut found) => {
                    found.meta.timestamp_ms = Some(ts);
                    break (rec, found);
                }
                Err(Skip::NonIp) => self.stats.non_ip += 1,
                Err(Skip::Malformed) => self.stats.malformed += 1,
            }
        };
        self.stats.packets += 1;
        let bytes = &self.buf[rec];
        let mut meta = found.meta;
        meta.prefix = &bytes[found.prefix];
        Some(Ok((meta, &bytes[found.payload])))
    }

    /// Runs `on_packet` over every packet to the end of the file.
    pub fn for_each_packet<F>(&mut self, mut on_packet: F) -> Result<&ReplayStats, ReplayError>
    where
        F: FnMut(&PacketMeta<'_>, &[u8]),
    {
        while let Some(p) = self.next_packet() {
            let (meta, payload) = p?;
            on_packet(&meta, payload);
        }
        Ok(&self.stats)
    }
}

#[cfg(test)]
#[path = "replay/tests.rs"]
mod tests;
