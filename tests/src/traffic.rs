//! Traffic generated from Rust, with sockets created inside the lab's namespaces.
//!
//! Every exchange is bounded (counts, sizes, and a receive timeout) and only uses the lab's
//! own addresses. Functions that can know exactly what crossed the gateway return the
//! [`Counter`] of IP packets and IP bytes sent (what the gateway's rules count).

use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::lab::{addr, Lab, Role};
use crate::netns::{self, io};
use crate::rules::Counter;
use crate::LabError;

/// How long a receiver waits for the next packet before giving up.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) const IPPROTO_ESP: i32 = 50;
const IPV4_HEADER: u64 = 20;
const IPV6_HEADER: u64 = 40;
const UDP_HEADER: u64 = 8;
const ESP_HEADER: u64 = 8;
const ICMP_HEADER: u64 = 8;

pub(crate) fn ip_header(a: IpAddr) -> u64 {
    if a.is_ipv6() {
        IPV6_HEADER
    } else {
        IPV4_HEADER
    }
}

/// The sending side of an exchange: a role's namespace, and optionally the effective group id
/// its sockets are created with (what `-m owner --gid-owner` and nft `meta skgid` match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    pub role: Role,
    pub egid: Option<u32>,
}

impl Sender {
    pub fn with_egid(role: Role, egid: u32) -> Sender {
        Sender {
            role,
            egid: Some(egid),
        }
    }
}

impl From<Role> for Sender {
    fn from(role: Role) -> Sender {
        Sender { role, egid: None }
    }
}

/// Sends ESP packets (IP protocol 50) from the Internet peer to `dst`: for each SPI,
/// `per_spi` packets of `payload` bytes after the SPI and sequence number. Returns what was
/// sent (IP header + ESP header + payload per packet).
pub fn esp(
    lab: &Lab,
    dst: IpAddr,
    spis: &[u32],
    per_spi: u32,
    payload: usize,
) -> Result<Counter, LabError> {
    let sock = netns::socket(
        &lab.ns(Role::Inet),
        Domain::for_address(SocketAddr::new(dst, 0)),
        Type::RAW,
        Some(Protocol::from(IPPROTO_ESP)),
    )?;
    let target = SockAddr::from(SocketAddr::new(dst, 0));
    let mut buf = vec![0u8; 8 + payload];
    for (i, b) in buf[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut sent = Counter::default();
    for seq in 1..=per_spi {
        for &spi in spis {
            buf[0..4].copy_from_slice(&spi.to_be_bytes());
            buf[4..8].copy_from_slice(&seq.to_be_bytes());
            send_retrying(&sock, &buf, &target)?;
            sent.packets += 1;
            sent.bytes += ip_header(dst) + ESP_HEADER + payload as u64;
        }
    }
    Ok(sent)
}

/// `sendto`, retrying briefly on ENOBUFS (a full device queue) so that a count stays exact.
pub(crate) fn send_retrying(sock: &Socket, buf: &[u8], target: &SockAddr) -> Result<(), LabError> {
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        match sock.send_to(buf, target) {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) && Instant::now() < deadline => {
                std::thread::yield_now();
            }
            Err(e) => return Err(io("sendto", e)),
        }
    }
}

/// Sends `count` UDP datagrams of `payload` bytes from `src` (in namespace `from`) to `dst`
/// (in namespace `to`, where a socket receives them). Returns what arrived: datagrams and
/// their IP bytes.
///
/// A datagram larger than the path MTU leaves the sender fragmented (the sockets keep the
/// default `IP_PMTUDISC_WANT`, which fragments locally); it counts once here.
pub fn udp(
    lab: &Lab,
    from: impl Into<Sender>,
    src: SocketAddr,
    to: Role,
    dst: SocketAddr,
    count: u32,
    payload: usize,
) -> Result<Counter, LabError> {
    let rx = netns::udp_socket(&lab.ns(to), dst, Some(4 << 20))?;
    rx.set_read_timeout(Some(RECV_TIMEOUT))
        .map_err(|e| io("udp timeout", e))?;
    let from = from.into();
    let tx: std::net::UdpSocket = netns::in_netns_as(&lab.ns(from.role), from.egid, || {
        let sock = Socket::new(Domain::for_address(src), Type::DGRAM, Some(Protocol::UDP))
            .map_err(|e| io("udp socket", e))?;
        sock.bind(&src.into())
            .map_err(|e| io(&format!("bind udp {src}"), e))?;
        Ok(sock.into())
    })?;
    let msg = vec![0x5a; payload];
    let mut got = Counter::default();
    let mut buf = vec![0u8; payload + 1];
    for _ in 0..count {
        tx.send_to(&msg, dst).map_err(|e| io("udp send", e))?;
        // One in flight at a time: no queue anywhere can overflow.
        let n = loop {
            match rx.recv_from(&mut buf) {
                Ok((n, _)) => break Some(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => break None,
                Err(e) => return Err(io("udp recv", e)),
            }
        };
        let Some(n) = n else { break };
        got.packets += 1;
        got.bytes += ip_header(dst.ip()) + UDP_HEADER + n as u64;
    }
    Ok(got)
}

pub(crate) fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// One TCP connection from `client` (namespace `from`) to a listener at `server` (namespace
/// `to`): the client sends `up` bytes, the server answers `down` bytes, both close.
/// Returns the byte counts each side received.
pub fn tcp(
    lab: &Lab,
    from: impl Into<Sender>,
    client: IpAddr,
    to: Role,
    server: SocketAddr,
    up: usize,
    down: usize,
) -> Result<(usize, usize), LabError> {
    tcp_exchange(
        lab,
        &TcpExchange {
            from: from.into(),
            client,
            to,
            server,
            up,
            down,
            mss: None,
        },
    )
}

/// One TCP connection, every parameter spelled out (see [`tcp`]).
#[derive(Debug, Clone, Copy)]
pub struct TcpExchange {
    pub from: Sender,
    pub client: IpAddr,
    pub to: Role,
    pub server: SocketAddr,
    /// Bytes the client sends, then bytes the server answers.
    pub up: usize,
    pub down: usize,
    /// `TCP_MAXSEG` on both ends (bounds every segment's payload), e.g. to keep the packets
    /// of a tunnel small enough for their encapsulation to fit the MTU.
    pub mss: Option<u32>,
}

/// Runs one TCP connection; returns the byte counts each side received.
pub fn tcp_exchange(lab: &Lab, x: &TcpExchange) -> Result<(usize, usize), LabError> {
    let TcpExchange {
        from,
        client,
        to,
        server,
        up,
        down,
        mss,
    } = *x;
    let listener = tcp_listener(&lab.ns(to), server, mss, 4)?;
    let stream = tcp_client(&lab.ns(from.role), from.egid, client, server, mss)?;
    std::thread::scope(|scope| {
        let server_side = scope.spawn(|| -> Result<usize, LabError> {
            let (mut conn, _) = loop {
                match listener.accept() {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => break r.map_err(|e| io("accept", e))?,
                }
            };
            conn.set_read_timeout(Some(RECV_TIMEOUT))
                .map_err(|e| io("timeout", e))?;
            let n = drain(&mut conn)?;
            conn.write_all(&vec![0xa5; down])
                .map_err(|e| io("tcp write", e))?;
            conn.shutdown(Shutdown::Write)
                .map_err(|e| io("shutdown", e))?;
            // Wait for the client's close so the teardown completes before returning.
            drain(&mut conn)?;
            Ok(n)
        });
        stream
            .connect_timeout(&server.into(), RECV_TIMEOUT)
            .map_err(|e| io(&format!("connect {server}"), e))?;
        let mut conn: TcpStream = stream.into();
        conn.set_read_timeout(Some(RECV_TIMEOUT))
            .map_err(|e| io("timeout", e))?;
        conn.write_all(&vec![0x3c; up])
            .map_err(|e| io("tcp write", e))?;
        conn.shutdown(Shutdown::Write)
            .map_err(|e| io("shutdown", e))?;
        let got_down = drain(&mut conn)?;
        drop(conn);
        let got_up = server_side
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        Ok((got_up, got_down))
    })
}

/// A TCP listener on `server` in namespace `ns` (`SO_REUSEADDR`, `TCP_MAXSEG` when given),
/// whose `accept` gives up after [`RECV_TIMEOUT`].
pub(crate) fn tcp_listener(
    ns: &str,
    server: SocketAddr,
    mss: Option<u32>,
    backlog: i32,
) -> Result<TcpListener, LabError> {
    netns::in_netns(ns, || {
        let s = tcp_socket(server, mss)?;
        s.set_reuse_address(true)
            .map_err(|e| io("SO_REUSEADDR", e))?;
        s.bind(&server.into())
            .map_err(|e| io(&format!("bind tcp {server}"), e))?;
        s.listen(backlog).map_err(|e| io("listen", e))?;
        // Bounds `accept` too (Linux applies SO_RCVTIMEO to it).
        s.set_read_timeout(Some(RECV_TIMEOUT))
            .map_err(|e| io("listen timeout", e))?;
        Ok(s.into())
    })
}

/// A TCP socket in namespace `ns` (as group `egid`, for owner-match rules) bound to
/// `client`, ready to connect to `server`.
pub(crate) fn tcp_client(
    ns: &str,
    egid: Option<u32>,
    client: IpAddr,
    server: SocketAddr,
    mss: Option<u32>,
) -> Result<Socket, LabError> {
    netns::in_netns_as(ns, egid, || {
        let s = tcp_socket(server, mss)?;
        s.bind(&SocketAddr::new(client, 0).into())
            .map_err(|e| io(&format!("bind tcp {client}"), e))?;
        Ok(s)
    })
}

fn tcp_socket(peer: SocketAddr, mss: Option<u32>) -> Result<Socket, LabError> {
    let s = Socket::new(Domain::for_address(peer), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| io("tcp socket", e))?;
    if let Some(m) = mss {
        s.set_tcp_mss(m).map_err(|e| io("TCP_MAXSEG", e))?;
    }
    Ok(s)
}

fn drain(conn: &mut TcpStream) -> Result<usize, LabError> {
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Ok(total),
            Err(e) => return Err(io("tcp read", e)),
        }
    }
}

/// Sends `count` ICMP (or ICMPv6) echo requests with `payload` bytes from `src` (namespace
/// `from`) to `dst`, one at a time, and counts the echo replies. Returns (requests sent,
/// replies received).
pub fn ping(
    lab: &Lab,
    from: impl Into<Sender>,
    src: IpAddr,
    dst: IpAddr,
    count: u16,
    payload: usize,
) -> Result<(u64, u64), LabError> {
    let v6 = dst.is_ipv6();
    let (domain, proto) = if v6 {
        (Domain::IPV6, Protocol::ICMPV6)
    } else {
        (Domain::IPV4, Protocol::ICMPV4)
    };
    let from = from.into();
    let sock = netns::in_netns_as(&lab.ns(from.role), from.egid, || {
        Socket::new(domain, Type::RAW, Some(proto)).map_err(|e| io("icmp socket", e))
    })?;
    sock.bind(&SocketAddr::new(src, 0).into())
        .map_err(|e| io("bind icmp", e))?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| io("timeout", e))?;
    let id: u16 = (std::process::id() as u16) ^ 0x4c46;
    let target = SockAddr::from(SocketAddr::new(dst, 0));
    let (mut sent, mut replies) = (0u64, 0u64);
    for seq in 0..count {
        let mut msg = Vec::with_capacity(ICMP_HEADER as usize + payload);
        msg.push(if v6 { 128 } else { 8 });
        msg.push(0);
        msg.extend_from_slice(&[0, 0]);
        msg.extend_from_slice(&id.to_be_bytes());
        msg.extend_from_slice(&seq.to_be_bytes());
        msg.extend((0..payload).map(|i| i as u8));
        if !v6 {
            // ICMPv6 raw sockets get their checksum from the kernel (RFC 3542 section 3.1).
            let sum = inet_checksum(&msg);
            msg[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        sock.send_to(&msg, &target)
            .map_err(|e| io("icmp send", e))?;
        sent += 1;
        let deadline = Instant::now() + RECV_TIMEOUT;
        while Instant::now() < deadline {
            let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if is_timeout(&e) || e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io("icmp recv", e)),
            };
            // SAFETY: `recv` initialised the first `n` bytes.
            let data: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            // IPv4 raw sockets deliver the IP header; IPv6 ones do not.
            let icmp = if v6 {
                &data[..]
            } else {
                data.get(usize::from(data[0] & 0x0f) * 4..).unwrap_or(&[])
            };
            let reply_type = if v6 { 129 } else { 0 };
            if icmp.len() >= 8
                && icmp[0] == reply_type
                && icmp[4..6] == id.to_be_bytes()
                && icmp[6..8] == seq.to_be_bytes()
            {
                replies += 1;
                break;
            }
        }
    }
    Ok((sent, replies))
}

/// The Internet checksum (RFC 1071).
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What [`run_mix`] sent that the gateway counts exactly, per group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MixReport {
    /// Every ESP packet (group `esp`).
    pub esp: Counter,
    /// The UDP part of the tunnel traffic (group `vpn`); TCP and ICMP come on top.
    pub vpn_udp: Counter,
    /// The UDP part of the other traffic (group `other`).
    pub other_udp: Counter,
    /// ESP packets sent per SPI.
    pub esp_per_spi: Vec<(u32, u64)>,
    /// Whether the mix had anything besides ESP and UDP (then only `esp` is exact).
    pub has_unexact: bool,
}

/// A traffic mix through the lab.
#[derive(Debug, Clone)]
pub struct Mix {
    /// ESP SPIs sent over IPv4 and IPv6 to the gateway, packets per SPI, payload bytes.
    pub esp_v4_spis: Vec<u32>,
    pub esp_v6_spis: Vec<u32>,
    pub esp_per_spi: u32,
    pub esp_payload: usize,
    /// UDP datagrams per direction and family for the tunnel and the other group.
    pub udp_count: u32,
    /// TCP connections (both directions, both families), ICMP echo: on/off.
    pub tcp: bool,
    pub icmp: bool,
    /// Bytes of a TCP transfer.
    pub tcp_bytes: usize,
}

impl Mix {
    /// Every kind of traffic: ESP with several SPIs on both families, tunnel traffic (UDP,
    /// TCP, ICMP, IPv6), and other traffic (TCP both directions, UDP, ICMP, IPv6).
    pub fn standard() -> Mix {
        Mix {
            esp_v4_spis: vec![0x1000_0001, 0x1000_0002, 0x1000_0003],
            esp_v6_spis: vec![0x6000_0001, 0x6000_0002],
            esp_per_spi: 20,
            esp_payload: 120,
            udp_count: 20,
            tcp: true,
            icmp: true,
            tcp_bytes: 48 * 1024,
        }
    }

    /// Only ESP and UDP: the gateway's counters must equal what was sent, exactly.
    pub fn exact() -> Mix {
        Mix {
            tcp: false,
            icmp: false,
            ..Mix::standard()
        }
    }
}

/// Runs a traffic mix through the lab.
pub fn run_mix(lab: &Lab, mix: &Mix) -> Result<MixReport, LabError> {
    use addr::*;
    let mut rep = MixReport {
        has_unexact: mix.tcp || mix.icmp,
        ..MixReport::default()
    };
    for (dst, spis) in [
        (IpAddr::from(GW_WAN_V4), &mix.esp_v4_spis),
        (IpAddr::from(GW_WAN_V6), &mix.esp_v6_spis),
    ] {
        for &spi in spis.iter() {
            rep.esp += esp(
                lab,
                dst,
                &[spi],
                mix.esp_per_spi,
                mix.esp_payload + (spi as usize % 7) * 16,
            )?;
            rep.esp_per_spi.push((spi, u64::from(mix.esp_per_spi)));
        }
    }
    rep.vpn_udp = tunnel_traffic(lab, mix, None)?;
    rep.other_udp = other_traffic(lab, mix)?;
    Ok(rep)
}

/// The tunnel part of a mix: the remote subnet talks to the LAN host (UDP both ways, TCP and
/// ICMP if the mix has them, IPv4 and IPv6). Returns the UDP part (what arrived).
pub(crate) fn tunnel_traffic(lab: &Lab, mix: &Mix, mss: Option<u32>) -> Result<Counter, LabError> {
    use addr::*;
    let sa = |ip: IpAddr, port: u16| SocketAddr::new(ip, port);
    let mut vpn_udp = Counter::default();
    for (remote, lan) in [
        (IpAddr::from(REMOTE_V4), IpAddr::from(LAN_V4)),
        (REMOTE_V6.into(), LAN_V6.into()),
    ] {
        vpn_udp += udp(
            lab,
            Role::Inet,
            sa(remote, 40_000),
            Role::Lan,
            sa(lan, 5000),
            mix.udp_count,
            200,
        )?;
        vpn_udp += udp(
            lab,
            Role::Lan,
            sa(lan, 5001),
            Role::Inet,
            sa(remote, 40_001),
            mix.udp_count,
            900,
        )?;
        if mix.tcp {
            tcp_exchange(
                lab,
                &TcpExchange {
                    from: Role::Inet.into(),
                    client: remote,
                    to: Role::Lan,
                    server: sa(lan, 8080),
                    up: mix.tcp_bytes,
                    down: mix.tcp_bytes * 2,
                    mss,
                },
            )?;
        }
        if mix.icmp {
            ping(lab, Role::Inet, remote, lan, 5, 56)?;
        }
    }
    Ok(vpn_udp)
}

/// The other traffic on the uplink: the Internet peer and the LAN host, both directions, and
/// the gateway itself. Returns the UDP part (what arrived).
pub(crate) fn other_traffic(lab: &Lab, mix: &Mix) -> Result<Counter, LabError> {
    use addr::*;
    let sa = |ip: IpAddr, port: u16| SocketAddr::new(ip, port);
    let mut other_udp = Counter::default();
    for (inet, lan, gw) in [
        (
            IpAddr::from(INET_V4),
            IpAddr::from(LAN_V4),
            IpAddr::from(GW_WAN_V4),
        ),
        (INET_V6.into(), LAN_V6.into(), GW_WAN_V6.into()),
    ] {
        other_udp += udp(
            lab,
            Role::Inet,
            sa(inet, 41_000),
            Role::Lan,
            sa(lan, 5353),
            mix.udp_count,
            100,
        )?;
        other_udp += udp(
            lab,
            Role::Lan,
            sa(lan, 41_001),
            Role::Inet,
            sa(inet, 53),
            mix.udp_count,
            300,
        )?;
        if mix.tcp {
            tcp(
                lab,
                Role::Inet,
                inet,
                Role::Lan,
                sa(lan, 443),
                mix.tcp_bytes,
                mix.tcp_bytes / 2,
            )?;
            tcp(
                lab,
                Role::Lan,
                lan,
                Role::Inet,
                sa(inet, 80),
                mix.tcp_bytes / 4,
                mix.tcp_bytes * 3,
            )?;
        }
        if mix.icmp {
            ping(lab, Role::Inet, inet, gw, 3, 32)?;
            ping(lab, Role::Lan, lan, inet, 3, 64)?;
        }
    }
    Ok(other_udp)
}

#[cfg(test)]
mod tests {
    use super::inet_checksum;

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum (with carries) to ddf2.
        assert_eq!(
            inet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        // A message carrying its own checksum sums to zero.
        let mut msg = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, 0xaa];
        let c = inet_checksum(&msg);
        msg[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(inet_checksum(&msg), 0);
    }
}
