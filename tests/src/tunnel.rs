//! A policy-based IPsec tunnel as the lab plays it, with both sides of each packet on the wire.
//!
//! ```text
//!  inet (peer 192.0.2.1, remote subnet 10.99.0.0/24)        gw `wan`                 lan
//!   inner packet 10.99.0.1 -> 198.51.100.2  ─────────────────> PREROUTING (vpn) ───> forwarded
//!   ESP 192.0.2.1 -> 192.0.2.2, SPI in      ─────────────────> PREROUTING (esp)
//!   <─────────────────────────── POSTROUTING (vpn)  inner 198.51.100.2 -> 10.99.0.1 <───
//!   <─────────────────────────── POSTROUTING (esp)  ESP 192.0.2.2 -> 192.0.2.1, SPI out
//! ```
//!
//! The kernel of the lab cannot encrypt, so the inner traffic runs in the clear (it plays the
//! packets a real gateway shows after decryption and before encryption), while a packet
//! socket on the gateway's `wan` records every inner packet (address in the remote subnet,
//! length from its IP header). Each one is then sent once more as the ESP packet that would
//! carry it, in the same direction and family: sized as tunnel-mode ESP with AES-GCM, so the
//! difference between the tunnel's ESP bytes and inner bytes is a real encapsulation overhead.

use std::io::Read;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::lab::{addr, Lab, Role, GW_WAN_IF};
use crate::netns::{self, io};
use crate::rules::Counter;
use crate::traffic::{self, Mix, IPPROTO_ESP, RECV_TIMEOUT};
use crate::LabError;

/// ESP header: SPI and sequence number (RFC 4303 section 2).
const ESP_HEADER: u64 = 8;
/// AES-GCM's explicit IV (RFC 4106 section 3.1).
pub const ESP_IV: u64 = 8;
/// AES-GCM's 16-byte integrity check value (RFC 4106 section 5: 8, 12 or 16; 16 is usual).
pub const ESP_ICV: u64 = 16;
/// The ESP trailer's pad length and next header bytes (RFC 4303 section 2.4).
const ESP_TRAILER: u64 = 2;

/// TCP maximum segment size inside the tunnel: the largest inner packet (IPv6, 40 + 20 +
/// 1360 = 1420 bytes) still fits the 1500-byte MTU once encapsulated (1496 bytes), as it does
/// behind a gateway that clamps the MSS.
pub const TUNNEL_MSS: u32 = 1360;

/// How long the capture must stay quiet before the inner traffic counts as finished.
const QUIET: Duration = Duration::from_millis(300);

/// Length of the tunnel-mode ESP packet carrying an inner packet of `inner_len` bytes: outer IP
/// header, SPI and sequence number, IV, the inner packet padded so that the pad length and
/// next header bytes end on a 4-byte boundary (RFC 4303 section 2.4), and the ICV.
pub fn esp_packet_len(inner_len: u64, outer_v6: bool) -> u64 {
    let outer = if outer_v6 { 40 } else { 20 };
    let padded = (inner_len + ESP_TRAILER).div_ceil(4) * 4;
    outer + ESP_HEADER + ESP_IV + padded + ESP_ICV
}

/// The tunnel's security associations: one SPI per direction and family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelSas {
    pub inbound_v4: u32,
    pub outbound_v4: u32,
    pub inbound_v6: u32,
    pub outbound_v6: u32,
}

impl Default for TunnelSas {
    fn default() -> TunnelSas {
        TunnelSas {
            inbound_v4: 0x0c00_0001,
            outbound_v4: 0x0c00_0002,
            inbound_v6: 0x0c00_0003,
            outbound_v6: 0x0c00_0004,
        }
    }
}

/// Which way an inner packet crossed the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// From the remote subnet (arrived on `wan`, "decrypted").
    Inbound,
    /// To the remote subnet (left on `wan`, "to be encrypted").
    Outbound,
}

/// An inner packet seen on `wan`: direction, family, IP length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerPacket {
    pub way: Way,
    pub v6: bool,
    pub len: u64,
}

/// Classifies a packet captured on `wan` (starting at its IP header): an inner packet of the
/// tunnel if either address is in the remote subnet, `None` otherwise.
pub fn classify(pkt: &[u8]) -> Option<InnerPacket> {
    let remote4 = addr::REMOTE_V4.octets();
    let remote6 = addr::REMOTE_V6.octets();
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => {
            let len = u64::from(u16::from_be_bytes([pkt[2], pkt[3]]));
            let in_remote = |a: &[u8]| a[..3] == remote4[..3];
            let way = if in_remote(&pkt[12..16]) {
                Way::Inbound
            } else if in_remote(&pkt[16..20]) {
                Way::Outbound
            } else {
                return None;
            };
            Some(InnerPacket {
                way,
                v6: false,
                len,
            })
        }
        6 if pkt.len() >= 40 => {
            let len = 40 + u64::from(u16::from_be_bytes([pkt[4], pkt[5]]));
            let in_remote = |a: &[u8]| a[..8] == remote6[..8];
            let way = if in_remote(&pkt[8..24]) {
                Way::Inbound
            } else if in_remote(&pkt[24..40]) {
                Way::Outbound
            } else {
                return None;
            };
            Some(InnerPacket { way, v6: true, len })
        }
        _ => None,
    }
}

/// What a paired run put on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelReport {
    /// Inner packets per direction (IP packets and bytes, as the gateway counts them).
    pub inner_in: Counter,
    pub inner_out: Counter,
    /// Their ESP packets per direction.
    pub esp_in: Counter,
    pub esp_out: Counter,
    /// ESP packets and bytes per SPI.
    pub per_sa: Vec<(u32, Counter)>,
}

/// Runs `inner` (traffic between the remote subnet and the LAN) while recording its packets on
/// the gateway's `wan`, then sends each one's ESP packet: inbound ones from the Internet peer
/// to the gateway, outbound ones from the gateway to the peer.
pub fn paired<F>(lab: &Lab, sas: &TunnelSas, inner: F) -> Result<TunnelReport, LabError>
where
    F: FnOnce(&Lab) -> Result<(), LabError>,
{
    let capture = open_capture(lab)?;
    inner(lab)?;
    let packets = drain_capture(&capture)?;
    send_esp(lab, sas, &packets)
}

/// What [`run_ipsec_mix`] sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpsecMixReport {
    pub tunnel: TunnelReport,
    /// The UDP part of the tunnel traffic (what arrived), and of the other traffic.
    pub vpn_udp: Counter,
    pub other_udp: Counter,
}

/// The mix of an IPsec gateway: the mix's tunnel traffic paired with its ESP (no unrelated
/// ESP), and its other traffic.
pub fn run_ipsec_mix(lab: &Lab, mix: &Mix, sas: &TunnelSas) -> Result<IpsecMixReport, LabError> {
    let mut vpn_udp = Counter::default();
    let tunnel = paired(lab, sas, |lab| {
        vpn_udp = traffic::tunnel_traffic(lab, mix, Some(TUNNEL_MSS))?;
        Ok(())
    })?;
    let other_udp = traffic::other_traffic(lab, mix)?;
    Ok(IpsecMixReport {
        tunnel,
        vpn_udp,
        other_udp,
    })
}

/// A packet socket on the gateway's `wan` (cooked: packets start at their IP header).
fn open_capture(lab: &Lab) -> Result<Socket, LabError> {
    let ifindex = lab.gw_ifindex(GW_WAN_IF)?;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    let sock = netns::in_netns(&lab.gw(), || {
        let sock = Socket::new(
            Domain::PACKET,
            Type::DGRAM,
            Some(Protocol::from(i32::from(proto))),
        )
        .map_err(|e| io("packet socket", e))?;
        netns::force_rcvbuf(&sock, 32 << 20)?;
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value before the fields are set.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = i32::try_from(ifindex).unwrap_or(0);
        // SAFETY: binds the socket we own to a fully initialised sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io(
                "bind packet socket to wan",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(sock)
    })?;
    // Packets of other interfaces may have queued between socket() and bind(): nothing of
    // the tunnel runs yet, and `classify` ignores anything else.
    sock.set_read_timeout(Some(QUIET))
        .map_err(|e| io("capture timeout", e))?;
    Ok(sock)
}

/// Reads the capture until it stays quiet, and checks the kernel dropped nothing.
fn drain_capture(sock: &Socket) -> Result<Vec<InnerPacket>, LabError> {
    let mut packets = Vec::new();
    let mut buf = [0u8; 256];
    let mut reader = sock;
    loop {
        match reader.read(&mut buf) {
            Ok(n) => packets.extend(classify(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if traffic::is_timeout(&e) => break,
            Err(e) => return Err(io("capture recv", e)),
        }
    }
    let mut stats = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the tpacket_stats we own.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io("PACKET_STATISTICS", std::io::Error::last_os_error()));
    }
    if stats.tp_drops != 0 {
        return Err(LabError::Daemon {
            name: "tunnel capture".to_owned(),
            detail: format!("the packet socket dropped {} packets", stats.tp_drops),
        });
    }
    Ok(packets)
}

/// One security association's sending end.
struct Sa {
    spi: u32,
    sock: Socket,
    target: SockAddr,
    v6: bool,
    seq: u32,
    sent: Counter,
}

impl Sa {
    fn open(lab: &Lab, from: Role, spi: u32, dst: IpAddr) -> Result<Sa, LabError> {
        let target = SocketAddr::new(dst, 0);
        let sock = netns::socket(
            &lab.ns(from),
            Domain::for_address(target),
            Type::RAW,
            Some(Protocol::from(IPPROTO_ESP)),
        )?;
        Ok(Sa {
            spi,
            sock,
            target: target.into(),
            v6: dst.is_ipv6(),
            seq: 0,
            sent: Counter::default(),
        })
    }

    fn send(&mut self, inner_len: u64) -> Result<u64, LabError> {
        let len = esp_packet_len(inner_len, self.v6);
        let outer = traffic::ip_header(if self.v6 {
            addr::INET_V6.into()
        } else {
            addr::INET_V4.into()
        });
        self.seq = self.seq.wrapping_add(1);
        let mut buf = vec![0u8; (len - outer) as usize];
        buf[0..4].copy_from_slice(&self.spi.to_be_bytes());
        buf[4..8].copy_from_slice(&self.seq.to_be_bytes());
        // IV, ciphertext and ICV: opaque bytes (nothing decrypts them).
        for (i, b) in buf[8..].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31) ^ (self.seq as u8);
        }
        traffic::send_retrying(&self.sock, &buf, &self.target)?;
        self.sent.packets += 1;
        self.sent.bytes += len;
        Ok(len)
    }
}

fn send_esp(lab: &Lab, sas: &TunnelSas, packets: &[InnerPacket]) -> Result<TunnelReport, LabError> {
    use addr::*;
    // [inbound v4, outbound v4, inbound v6, outbound v6]. The raw ESP sockets in the Internet
    // peer also receive the outbound ESP: with a raw socket for the protocol, the kernel does
    // not answer "protocol unreachable" (the gateway's ruleset drops what reaches it).
    let mut ends = [
        Sa::open(lab, Role::Inet, sas.inbound_v4, GW_WAN_V4.into())?,
        Sa::open(lab, Role::Gw, sas.outbound_v4, INET_V4.into())?,
        Sa::open(lab, Role::Inet, sas.inbound_v6, GW_WAN_V6.into())?,
        Sa::open(lab, Role::Gw, sas.outbound_v6, INET_V6.into())?,
    ];
    let mut rep = TunnelReport::default();
    for p in packets {
        let k = usize::from(p.v6) * 2 + usize::from(p.way == Way::Outbound);
        let len = ends[k].send(p.len)?;
        let (inner, esp) = match p.way {
            Way::Inbound => (&mut rep.inner_in, &mut rep.esp_in),
            Way::Outbound => (&mut rep.inner_out, &mut rep.esp_out),
        };
        *inner += Counter {
            packets: 1,
            bytes: p.len,
        };
        *esp += Counter {
            packets: 1,
            bytes: len,
        };
    }
    // Keep the peer's sockets open until the outbound ESP has arrived there.
    for (k, v6) in [(1, false), (3, true)] {
        let want = ends[k].sent.packets;
        let spi = ends[k].spi.to_be_bytes();
        let receiver = &ends[k - 1].sock;
        receiver
            .set_read_timeout(Some(RECV_TIMEOUT))
            .map_err(|e| io("esp timeout", e))?;
        let mut got = 0;
        while got < want {
            let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
            let n = match receiver.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if traffic::is_timeout(&e) => break,
                Err(e) => return Err(io("esp recv", e)),
            };
            // SAFETY: `recv` initialised the first `n` bytes.
            let data: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            // IPv4 raw sockets deliver the IP header; IPv6 ones do not.
            let esp = if v6 {
                &data[..]
            } else {
                data.get(usize::from(data[0] & 0x0f) * 4..).unwrap_or(&[])
            };
            if esp.get(..4) == Some(&spi[..]) {
                got += 1;
            }
        }
    }
    rep.per_sa = ends.iter().map(|e| (e.spi, e.sent)).collect();
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_length_pads_to_four_bytes() {
        // 100-byte inner IPv4 packet: 20 + 8 + 8 + (100 + 2 -> 104) + 16 = 156.
        assert_eq!(esp_packet_len(100, false), 156);
        // 101 + 2 = 103 -> 104: the same length; 103 + 2 = 105 -> 108.
        assert_eq!(esp_packet_len(101, false), 156);
        assert_eq!(esp_packet_len(102, false), 156);
        assert_eq!(esp_packet_len(103, false), 160);
        // IPv6 outer header: 20 bytes more.
        assert_eq!(esp_packet_len(100, true), 176);
        // The largest inner packet the tunnel MSS allows still fits 1500 bytes.
        assert!(esp_packet_len(40 + 20 + u64::from(TUNNEL_MSS), true) <= 1500);
        assert!(esp_packet_len(40 + 20 + u64::from(TUNNEL_MSS), true) > 1480);
    }

    #[test]
    fn classifies_inner_packets_by_remote_subnet() {
        // IPv4 UDP 10.99.0.1 -> 198.51.100.2, total length 228.
        let mut v4 = vec![0x45, 0, 0, 228, 0, 0, 0x40, 0, 64, 17, 0, 0];
        v4.extend_from_slice(&[10, 99, 0, 1, 198, 51, 100, 2]);
        assert_eq!(
            classify(&v4),
            Some(InnerPacket {
                way: Way::Inbound,
                v6: false,
                len: 228
            })
        );
        // The reverse direction.
        v4[12..20].copy_from_slice(&[198, 51, 100, 2, 10, 99, 0, 1]);
        assert_eq!(classify(&v4).map(|p| p.way), Some(Way::Outbound));
        // Neither end in the remote subnet: not the tunnel's.
        v4[12..20].copy_from_slice(&[192, 0, 2, 1, 198, 51, 100, 2]);
        assert_eq!(classify(&v4), None);
        // IPv6 2001:db8:2::2 -> 2001:db8:99::1, payload length 100.
        let mut v6 = vec![0x60, 0, 0, 0, 0, 100, 17, 64];
        v6.extend_from_slice(&addr::LAN_V6.octets());
        v6.extend_from_slice(&addr::REMOTE_V6.octets());
        assert_eq!(
            classify(&v6),
            Some(InnerPacket {
                way: Way::Outbound,
                v6: true,
                len: 140
            })
        );
        // Truncated and non-IP input.
        assert_eq!(classify(&v6[..39]), None);
        assert_eq!(classify(&[]), None);
        assert_eq!(classify(&[0x00; 40]), None);
    }
}
