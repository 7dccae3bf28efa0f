//! Writing classic pcap files (microsecond timestamps, little-endian), the format every tool
//! here reads: the probe's replay, softflowd `-r`, tshark `-r`.
//!
//! ```text
//!  global header (24): magic a1b2c3d4, version 2.4, thiszone 0, sigfigs 0, snaplen, linktype
//!  per packet (16 + n): seconds, microseconds, captured length, original length, bytes
//! ```

use std::path::Path;

/// Ethernet II frames.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Raw IP (v4 or v6 by the version nibble).
pub const LINKTYPE_RAW: u32 = 101;
/// Raw IPv4 only.
pub const LINKTYPE_IPV4: u32 = 228;

/// A pcap file built in memory.
#[derive(Debug, Clone)]
pub struct PcapWriter {
    buf: Vec<u8>,
}

impl PcapWriter {
    pub fn new(linktype: u32) -> Self {
        let mut buf = Vec::with_capacity(1 << 16);
        buf.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // magic, microseconds
        buf.extend_from_slice(&2u16.to_le_bytes()); // version major
        buf.extend_from_slice(&4u16.to_le_bytes()); // version minor
        buf.extend_from_slice(&0i32.to_le_bytes()); // thiszone
        buf.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        buf.extend_from_slice(&65535u32.to_le_bytes()); // snaplen
        buf.extend_from_slice(&linktype.to_le_bytes());
        PcapWriter { buf }
    }

    /// Appends one packet captured whole at `ts_us` (microseconds since the UNIX epoch).
    pub fn packet(&mut self, ts_us: u64, frame: &[u8]) {
        let len = frame.len() as u32;
        self.buf
            .extend_from_slice(&((ts_us / 1_000_000) as u32).to_le_bytes());
        self.buf
            .extend_from_slice(&((ts_us % 1_000_000) as u32).to_le_bytes());
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(frame);
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Writes the file; fails the test naming the path.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.buf)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

/// The RFC 791 header checksum of `header` (checksum field zero).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    !(((folded & 0xffff) + (folded >> 16)) as u16)
}

/// An IPv4 header (no options, DF, TTL 64, valid checksum) for `payload_len` octets after it.
pub fn ipv4_header(src: [u8; 4], dst: [u8; 4], proto: u8, payload_len: usize, id: u16) -> [u8; 20] {
    let total = (20 + payload_len) as u16;
    let mut h = [0u8; 20];
    h[0] = 0x45; // version 4, IHL 5
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64; // TTL
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let sum = ipv4_checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h
}

/// An IPv4 UDP datagram carrying `payload` (UDP checksum 0: none, valid for IPv4).
pub fn ipv4_udp(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
    id: u16,
) -> Vec<u8> {
    let ulen = 8 + payload.len();
    let mut p = ipv4_header(src, dst, 17, ulen, id).to_vec();
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&(ulen as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// Writes a raw-IPv4 pcap of `datagrams` sent as UDP 127.0.0.1:40000 -> 127.0.0.1:`port`,
/// one second apart from 2023-11-14 (how an exporter's output is shown to tshark).
pub fn write_udp_capture(path: &Path, port: u16, datagrams: &[Vec<u8>]) {
    let mut w = PcapWriter::new(LINKTYPE_IPV4);
    for (i, d) in datagrams.iter().enumerate() {
        let ip = ipv4_udp([127, 0, 0, 1], [127, 0, 0, 1], 40000, port, d, i as u16);
        w.packet((1_700_000_000 + i as u64) * 1_000_000, &ip);
    }
    w.write(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checksum_verifies() {
        // RFC 1071: the sum over a header with its checksum is all ones.
        let h = ipv4_header([192, 0, 2, 1], [198, 51, 100, 7], 17, 100, 0x1234);
        assert_eq!(ipv4_checksum(&h), 0);
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 120);
    }

    #[test]
    fn file_layout() {
        let mut w = PcapWriter::new(LINKTYPE_RAW);
        w.packet(1_500_000, &[0x45, 0, 0, 20]);
        let b = w.bytes();
        assert_eq!(&b[0..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(&b[20..24], &101u32.to_le_bytes());
        assert_eq!(&b[24..28], &1u32.to_le_bytes()); // seconds
        assert_eq!(&b[28..32], &500_000u32.to_le_bytes()); // microseconds
        assert_eq!(&b[32..40], &[4, 0, 0, 0, 4, 0, 0, 0]);
        assert_eq!(b.len(), 24 + 16 + 4);
    }
}
