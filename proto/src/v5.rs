//! NetFlow v5 writer: 24-octet header, 48-octet IPv4 records, at most 30 per packet.
//!
//! ```text
//!  version 5 | count | sys_uptime | unix_secs | unix_nsecs | flow_sequence
//!  engine_type | engine_id (the NFLOG group) | sampling_interval
//!  record: src dst nexthop | in out | pkts octets | first last | sport dport | pad flags
//!          proto tos | src_as dst_as | src_mask dst_mask | pad
//! ```
//! One packet carries one `engine_id`, so the records of one packet share a group. IPv6
//! records cannot be carried. Counters above 2^32 - 1 saturate. ICMP type and code go in
//! the destination port as `type << 8 | code`, as Cisco exporters do.

use std::net::IpAddr;

use crate::record::FlowRecord;
use crate::v9::uptime_ms;

pub const VERSION: u16 = 5;
pub const HEADER_LEN: usize = 24;
pub const RECORD_LEN: usize = 48;
pub const MAX_RECORDS: usize = 30;

/// Fills one v5 packet in a fixed buffer.
#[derive(Debug, Clone)]
pub struct PacketWriter {
    buf: [u8; HEADER_LEN + MAX_RECORDS * RECORD_LEN],
    count: usize,
}

impl Default for PacketWriter {
    fn default() -> Self {
        PacketWriter {
            buf: [0; HEADER_LEN + MAX_RECORDS * RECORD_LEN],
            count: 0,
        }
    }
}

impl PacketWriter {
    /// Records that fit in `mtu` octets (1 to 30).
    pub fn capacity_for_mtu(mtu: usize) -> usize {
        (mtu.saturating_sub(HEADER_LEN) / RECORD_LEN).clamp(1, MAX_RECORDS)
    }

    /// Starts a packet. `flow_sequence` counts the flows sent before this packet.
    pub fn begin(
        &mut self,
        sys_uptime: u32,
        unix_secs: u32,
        unix_nsecs: u32,
        flow_sequence: u32,
        engine_type: u8,
        engine_id: u8,
    ) {
        self.count = 0;
        let h = &mut self.buf[..HEADER_LEN];
        h.fill(0);
        h[0..2].copy_from_slice(&VERSION.to_be_bytes());
        h[4..8].copy_from_slice(&sys_uptime.to_be_bytes());
        h[8..12].copy_from_slice(&unix_secs.to_be_bytes());
        h[12..16].copy_from_slice(&unix_nsecs.to_be_bytes());
        h[16..20].copy_from_slice(&flow_sequence.to_be_bytes());
        h[20] = engine_type;
        h[21] = engine_id;
        // sampling_interval 0: every packet (mode 0, interval 0).
    }

    pub fn len(&self) -> usize {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    pub fn engine_id(&self) -> u8 {
        self.buf[21]
    }

    /// Appends `rec`; false when the packet is full or the record is not IPv4.
    pub fn push(&mut self, rec: &FlowRecord, boot_ms: u64) -> bool {
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (rec.src_addr, rec.dst_addr) else {
            return false;
        };
        if self.count >= MAX_RECORDS {
            return false;
        }
        let at = HEADER_LEN + self.count * RECORD_LEN;
        let r = &mut self.buf[at..at + RECORD_LEN];
        r.fill(0);
        r[0..4].copy_from_slice(&src.octets());
        r[4..8].copy_from_slice(&dst.octets());
        // nexthop 8..12 stays 0.
        r[12..14].copy_from_slice(&(rec.ingress_if.min(0xffff) as u16).to_be_bytes());
        r[14..16].copy_from_slice(&(rec.egress_if.min(0xffff) as u16).to_be_bytes());
        r[16..20].copy_from_slice(&(rec.packets.min(u32::MAX as u64) as u32).to_be_bytes());
        r[20..24].copy_from_slice(&(rec.bytes.min(u32::MAX as u64) as u32).to_be_bytes());
        r[24..28].copy_from_slice(&uptime_ms(rec.start_ms, boot_ms).to_be_bytes());
        r[28..32].copy_from_slice(&uptime_ms(rec.end_ms, boot_ms).to_be_bytes());
        let dport = if rec.icmp_type_code != 0 {
            rec.icmp_type_code
        } else {
            rec.dst_port
        };
        r[32..34].copy_from_slice(&rec.src_port.to_be_bytes());
        r[34..36].copy_from_slice(&dport.to_be_bytes());
        r[37] = rec.tcp_flags;
        r[38] = rec.protocol;
        r[39] = rec.tos;
        self.count += 1;
        true
    }

    /// Patches `count` and returns the packet.
    pub fn finish(&mut self) -> &[u8] {
        self.buf[2..4].copy_from_slice(&(self.count as u16).to_be_bytes());
        &self.buf[..HEADER_LEN + self.count * RECORD_LEN]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn record_fixture() {
        let rec = FlowRecord {
            src_addr: Ipv4Addr::new(10, 0, 0, 1).into(),
            dst_addr: Ipv4Addr::new(10, 0, 0, 2).into(),
            protocol: 6,
            src_port: 1234,
            dst_port: 80,
            ingress_if: 2,
            egress_if: 3,
            bytes: 1500,
            packets: 3,
            tcp_flags: 0x1b,
            tos: 0x10,
            start_ms: 10_500,
            end_ms: 11_000,
            group: Some(4),
            ..FlowRecord::default()
        };
        let mut w = PacketWriter::default();
        w.begin(3000, 1_700_000_000, 0, 77, 0, 4);
        assert!(w.push(&rec, 10_000));
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x00, 0x05, 0x00, 0x01,             // version 5, count 1
            0x00, 0x00, 0x0b, 0xb8,             // sys_uptime 3000
            0x65, 0x53, 0xf1, 0x00,             // unix_secs 1700000000
            0x00, 0x00, 0x00, 0x00,             // unix_nsecs
            0x00, 0x00, 0x00, 0x4d,             // flow_sequence 77
            0x00, 0x04, 0x00, 0x00,             // engine type 0, engine id 4 (group), sampling
            10, 0, 0, 1, 10, 0, 0, 2,           // src, dst
            0, 0, 0, 0,                         // nexthop
            0x00, 0x02, 0x00, 0x03,             // input 2, output 3
            0x00, 0x00, 0x00, 0x03,             // packets 3
            0x00, 0x00, 0x05, 0xdc,             // octets 1500
            0x00, 0x00, 0x01, 0xf4,             // first 500 ms
            0x00, 0x00, 0x03, 0xe8,             // last 1000 ms
            0x04, 0xd2, 0x00, 0x50,             // ports 1234 -> 80
            0x00, 0x1b, 0x06, 0x10,             // pad, flags, proto 6, tos
            0, 0, 0, 0, 0, 0, 0, 0,             // AS, masks, pad
        ];
        assert_eq!(w.finish(), expected);
    }

    #[test]
    fn full_packet_and_ipv6() {
        let mut w = PacketWriter::default();
        w.begin(0, 0, 0, 0, 0, 0);
        let rec = FlowRecord::default();
        for _ in 0..MAX_RECORDS {
            assert!(w.push(&rec, 0));
        }
        assert!(!w.push(&rec, 0));
        assert_eq!(w.finish().len(), HEADER_LEN + 30 * RECORD_LEN);
        let v6 = FlowRecord {
            src_addr: "::1".parse().unwrap(),
            ..FlowRecord::default()
        };
        w.begin(0, 0, 0, 0, 0, 0);
        assert!(!w.push(&v6, 0));
        assert_eq!(PacketWriter::capacity_for_mtu(1400), 28);
    }
}
