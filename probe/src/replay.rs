//! Capture replay: pcap (both byte orders, micro- and nanosecond timestamps) and pcapng
//! (any section byte order, per-interface `if_tsresol`/`if_tsoffset`) files read into the
//! same `(PacketMeta, payload)` the NFLOG socket produces, with the capture's timestamps, so
//! the pipeline runs deterministically over a file.
//!
//! ```text
//!  file ──► memory map (read-only, sequential advice) ──► format::Cursor: pcap records or
//!  pcapng blocks, as views (no copy) ──► link layer of the record's interface
//!     LINKTYPE_NFLOG (239)   nflog_hdr + TLVs: group, prefix, mark, uid, ifindex, payload
//!     ETHERNET (1)           VLAN tags (802.1Q / 802.1ad / 0x9100) skipped
//!     RAW (101, 12), IPV4 (228), IPV6 (229)
//!     LINUX_SLL (113), LINUX_SLL2 (276)
//!  ──► (PacketMeta, payload starting at the IP header), both borrowed from the map
//! ```
//!
//! Non-IP records are skipped and counted; a record whose link header is malformed is
//! skipped and counted; a truncated or corrupt file is an error naming the file and the byte
//! offset, after every complete record before it was delivered.

use std::fs::File;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use crate::nflog::wire;
use crate::packet::{PacketMeta, L3};

pub mod format;

use format::{Cursor, FormatError, Record};

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
    #[error("{path}: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
}

/// Counters of one replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Records read from the file.
    pub records: u64,
    /// Packets delivered.
    pub packets: u64,
    /// Records that were not IPv4/IPv6 (ARP, LLDP, NFLOG without payload, unsupported
    /// link types of other pcapng interfaces...).
    pub non_ip: u64,
    /// Records whose link-layer header was malformed or cut short.
    pub malformed: u64,
}

#[derive(Debug)]
enum Skip {
    NonIp,
    Malformed,
}

/// The file's bytes: a read-only memory map, or a buffer (empty files, tests).
#[derive(Debug)]
enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A capture file being read. `next_packet` lends each packet straight from the file's
/// bytes: nothing is copied per packet.
#[derive(Debug)]
pub struct CaptureReader {
    bytes: Bytes,
    path: PathBuf,
    cursor: Cursor,
    linktype: Option<u16>,
    pseudo_group: u16,
    stats: ReplayStats,
}

fn map(file: &File) -> io::Result<Bytes> {
    if file.metadata()?.len() == 0 {
        // mmap(2) refuses an empty mapping; an empty file is a truncated header anyway.
        return Ok(Bytes::Owned(Vec::new()));
    }
    // SAFETY: the map is read-only and private to this process. Another process truncating
    // or rewriting the file while it is replayed could change the bytes under us (or raise
    // SIGBUS); every read of the map is bounds-checked against the length taken here and
    // no invariant depends on the bytes staying the same, which is the standard contract
    // of a read-only file map (ripgrep and git do the same).
    let map = unsafe { memmap2::MmapOptions::new().map(file)? };
    // The file is read once, front to back: let the kernel read ahead and drop behind.
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(Bytes::Mapped(map))
}

impl CaptureReader {
    /// Opens and maps `path`. Captures without NFLOG metadata label every packet with
    /// `pseudo_group`.
    pub fn open(path: impl AsRef<Path>, pseudo_group: u16) -> Result<Self, ReplayError> {
        let path = path.as_ref();
        let io_err = |source| ReplayError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let bytes = map(&file).map_err(io_err)?;
        CaptureReader::with_bytes(bytes, path.to_owned(), pseudo_group)
    }

    /// Reads a capture held in memory. `path` names it in errors.
    pub fn from_vec(
        bytes: Vec<u8>,
        path: impl Into<PathBuf>,
        pseudo_group: u16,
    ) -> Result<Self, ReplayError> {
        CaptureReader::with_bytes(Bytes::Owned(bytes), path.into(), pseudo_group)
    }

    fn with_bytes(bytes: Bytes, path: PathBuf, pseudo_group: u16) -> Result<Self, ReplayError> {
        let cursor = match Cursor::start(&bytes) {
            Ok(c) => c,
            Err(source) => return Err(ReplayError::Format { path, source }),
        };
        let linktype = cursor.first_linktype(&bytes);
        Ok(CaptureReader {
            bytes,
            path,
            cursor,
            linktype,
            pseudo_group,
            stats: ReplayStats::default(),
        })
    }

    /// The capture's link type (`LINKTYPE_*`): of the file (pcap) or of its first interface
    /// (pcapng; `None` when it declares none).
    pub fn link_type(&self) -> Option<u16> {
        self.linktype
    }

    /// Whether the file is pcapng.
    pub fn is_pcapng(&self) -> bool {
        self.cursor.is_pcapng()
    }

    pub fn stats(&self) -> &ReplayStats {
        &self.stats
    }

    /// The next IP packet, or `None` at the end of the file. Errors are final: the file is
    /// truncated or corrupt at the offset they name.
    pub fn next_packet(&mut self) -> Option<Result<(PacketMeta<'_>, &[u8]), ReplayError>> {
        let r = step(
            &self.bytes,
            &mut self.cursor,
            &mut self.stats,
            self.pseudo_group,
        )?;
        Some(r.map_err(|source| ReplayError::Format {
            path: self.path.clone(),
            source,
        }))
    }

    /// Runs `on_packet` over every packet to the end of the file. The pages of a mapped
    /// file are unmapped behind the reader as it goes (they stay in the page cache), so the
    /// resident size stays at [`RELEASE_EVERY`] of the file rather than all of it.
    pub fn for_each_packet<F>(&mut self, mut on_packet: F) -> Result<&ReplayStats, ReplayError>
    where
        F: FnMut(&PacketMeta<'_>, &[u8]),
    {
        let map = match &self.bytes {
            Bytes::Mapped(m) => Some(m),
            Bytes::Owned(_) => None,
        };
        let bytes: &[u8] = &self.bytes;
        let mut released = 0;
        let result = loop {
            match step(bytes, &mut self.cursor, &mut self.stats, self.pseudo_group) {
                None => break Ok(()),
                Some(Ok((meta, payload))) => on_packet(&meta, payload),
                Some(Err(e)) => break Err(e),
            }
            if let Some(map) = map {
                let at = self.cursor.offset();
                if at - released >= RELEASE_EVERY {
                    release(map, released, at);
                    released = at;
                }
            }
        };
        result.map_err(|source| ReplayError::Format {
            path: self.path.clone(),
            source,
        })?;
        Ok(&self.stats)
    }
}

/// Bytes read between two releases of the pages behind the reader.
pub const RELEASE_EVERY: usize = 32 << 20;

/// Unmaps the whole pages of `map[from..to]` (already read).
fn release(map: &memmap2::Mmap, from: usize, to: usize) {
    const PAGE: usize = 4096;
    let start = from.next_multiple_of(PAGE);
    let end = to / PAGE * PAGE;
    if end <= start {
        return;
    }
    // SAFETY: the map is a private read-only file map and nothing borrows `map[from..to]`
    // any more (every record before the cursor was handed out and dropped); MADV_DONTNEED
    // only drops the page-table entries, and a later read would fault the same file
    // contents back in from the page cache. Failure only leaves the pages mapped.
    let _ = unsafe {
        map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
    };
}

/// One IP packet from `bytes` at `cursor`, counting what was skipped on the way.
#[inline]
fn step<'a>(
    bytes: &'a [u8],
    cursor: &mut Cursor,
    stats: &mut ReplayStats,
    group: u16,
) -> Option<Result<Located<'a>, FormatError>> {
    loop {
        let rec = match cursor.next(bytes) {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        stats.records += 1;
        match locate(&rec, group) {
            Ok(found) => {
                stats.packets += 1;
                return Some(Ok(found));
            }
            Err(Skip::NonIp) => stats.non_ip += 1,
            Err(Skip::Malformed) => stats.malformed += 1,
        }
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

type Located<'a> = (PacketMeta<'a>, &'a [u8]);

/// Finds the IP packet in one record, by the link type of its interface.
#[inline]
fn locate<'a>(record: &Record<'a>, group: u16) -> Result<Located<'a>, Skip> {
    let rec = record.data;
    let ts = record.ts_ms;
    let plain = |l3: L3, start: usize| -> Result<Located<'a>, Skip> {
        let meta = PacketMeta {
            group,
            l3,
            timestamp_ms: ts,
            ..PacketMeta::default()
        };
        Ok((meta, rec.get(start..).ok_or(Skip::Malformed)?))
    };
    match record.linktype {
        linktype::NFLOG => {
            let (mut meta, p) =
                wire::parse_pcap_nflog(rec, record.order).map_err(|_| Skip::Malformed)?;
            if p.is_empty() {
                return Err(Skip::NonIp);
            }
            if meta.l3 == L3::Unknown {
                meta.l3 = l3_of_nibble(p.first()).ok_or(Skip::NonIp)?;
            }
            meta.timestamp_ms = ts;
            Ok((meta, p))
        }
        linktype::ETHERNET => {
            let mut at = 12;
            let mut t = be16(rec, at).ok_or(Skip::Malformed)?;
            while matches!(t, ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ) {
                at += 4;
                t = be16(rec, at).ok_or(Skip::Malformed)?;
            }
            let l3 = l3_of_ethertype(t).ok_or(Skip::NonIp)?;
            plain(l3, at + 2)
        }
        linktype::RAW | linktype::RAW_12 => {
            let l3 = l3_of_nibble(rec.first()).ok_or(Skip::NonIp)?;
            plain(l3, 0)
        }
        linktype::IPV4 => plain(L3::Ipv4, 0),
        linktype::IPV6 => plain(L3::Ipv6, 0),
        linktype::LINUX_SLL => {
            // packet type, ARPHRD, address length, 8-byte address, protocol (all BE).
            let t = be16(rec, 14).ok_or(Skip::Malformed)?;
            plain(l3_of_ethertype(t).ok_or(Skip::NonIp)?, 16)
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
            let mut found = plain(l3_of_ethertype(t).ok_or(Skip::NonIp)?, 20)?;
            // PACKET_OUTGOING (4) was sent on the interface; every other type arrived on it.
            if packet_type == 4 {
                found.0.egress_if = ifindex;
            } else {
                found.0.ingress_if = ifindex;
            }
            Ok(found)
        }
        _ => Err(Skip::NonIp),
    }
}

#[cfg(test)]
#[path = "replay/tests.rs"]
mod tests;
