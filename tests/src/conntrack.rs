//! The conntrack scenario on the shared lab: the gateway masquerades the LAN behind its uplink
//! address and marks each connection into a label with `ct mark set`; named nftables counters
//! on the same marks, per direction, are the ground truth.
//!
//! ```text
//!  lan 198.51.100.2, 2001:db8:2::2 ──► gw (forward chain "classify": ct state new ... ct mark set 0x10|0x20|0x30;
//!                           ct mark M ct direction original|reply counter name "L_orig|L_reply")
//!                      (postrouting: oifname "wan" masquerade -> 192.0.2.2 / 2001:db8:1::2)
//!                                                          ──► inet 192.0.2.1 / 2001:db8:1::1
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use crate::lab::{Lab, Role, GW_WAN_IF};
use crate::netns::{self, io};
use crate::rules::Counter;
use crate::ruleset::parse_nft_named_counters;
use crate::LabError;

/// `(connmark, label, what gets it)`.
pub const LABELS: [(u32, &str, &str); 3] = [
    (0x10, "tcp", "meta l4proto tcp"),
    (0x20, "udp", "meta l4proto udp"),
    (0x30, "icmp", "meta l4proto { icmp, ipv6-icmp }"),
];
/// The nftables table of the scenario.
pub const TABLE: &str = "labelflow_ct";

/// The ruleset: masquerade on the uplink, connection marks, counters per mark and direction.
pub fn nft_ruleset() -> String {
    let mut s = format!("table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    for (_, label, _) in LABELS {
        s.push_str(&format!(
            "  counter {label}_orig {{ }}\n  counter {label}_reply {{ }}\n"
        ));
    }
    s.push_str(&format!(
        "  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{GW_WAN_IF}\" masquerade\n  }}\n"
    ));
    s.push_str(
        "  chain classify {\n    type filter hook forward priority filter; policy accept;\n",
    );
    for (mark, _, what) in LABELS {
        s.push_str(&format!("    ct state new {what} ct mark set {mark:#x}\n"));
    }
    for (mark, label, _) in LABELS {
        s.push_str(&format!(
            "    ct mark {mark:#x} ct direction original counter name \"{label}_orig\"\n    ct mark {mark:#x} ct direction reply counter name \"{label}_reply\"\n"
        ));
    }
    s.push_str("  }\n}\n");
    s
}

/// Loads [`nft_ruleset`] into the gateway.
pub fn load(lab: &Lab) -> Result<(), LabError> {
    lab.exec_stdin(Role::Gw, "nft", &["-f", "-"], &nft_ruleset())
        .map(|_| ())
}

/// Sets conntrack sysctls of the gateway (e.g. short timeouts so connections end, and are
/// destroyed, within a test).
pub fn sysctls(lab: &Lab, settings: &[&str]) -> Result<(), LabError> {
    let mut args = vec!["-q", "-w"];
    args.extend_from_slice(settings);
    lab.exec(Role::Gw, "sysctl", &args).map(|_| ())
}

/// The named counters, by `(label, "orig" | "reply")`.
pub fn counters(lab: &Lab) -> Result<BTreeMap<(String, String), Counter>, LabError> {
    let out = lab.exec(
        Role::Gw,
        "nft",
        &["-j", "list", "counters", "table", "inet", TABLE],
    )?;
    let mut found = BTreeMap::new();
    for (name, c) in parse_nft_named_counters(&String::from_utf8_lossy(&out.stdout))? {
        if let Some((label, dir)) = name.rsplit_once('_') {
            found.insert((label.to_owned(), dir.to_owned()), c);
        }
    }
    Ok(found)
}

/// One connection of `/proc/net/nf_conntrack`: the original and reply tuples and the mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtLine {
    pub protocol: u8,
    pub orig: (IpAddr, IpAddr, u16, u16),
    pub reply: (IpAddr, IpAddr, u16, u16),
    pub mark: u32,
    /// Packets counted in the original direction (0 without `nf_conntrack_acct`).
    pub orig_packets: u64,
}

/// Parses `/proc/net/nf_conntrack` (`src= dst= sport= dport=` twice: original, then reply).
pub fn parse_proc(text: &str) -> Result<Vec<CtLine>, LabError> {
    let bad = |line: &str| LabError::Parse {
        what: "nf_conntrack line",
        detail: line.to_owned(),
    };
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let protocol: u8 = words
            .get(3)
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| bad(line))?;
        let values = |key: &str| -> Vec<&str> {
            words
                .iter()
                .filter_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                .collect()
        };
        let (src, dst) = (values("src"), values("dst"));
        let (sport, dport) = (values("sport"), values("dport"));
        let ip = |v: Option<&&str>| v.and_then(|s| s.parse::<IpAddr>().ok());
        let port = |v: Option<&&str>| v.and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
        let tuple = |i: usize| -> Option<(IpAddr, IpAddr, u16, u16)> {
            Some((
                ip(src.get(i))?,
                ip(dst.get(i))?,
                port(sport.get(i)),
                port(dport.get(i)),
            ))
        };
        let mark = values("mark")
            .first()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let orig_packets = values("packets")
            .first()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        out.push(CtLine {
            protocol,
            orig: tuple(0).ok_or_else(|| bad(line))?,
            reply: tuple(1).ok_or_else(|| bad(line))?,
            mark,
            orig_packets,
        });
    }
    Ok(out)
}

/// The gateway's connection table.
pub fn table(lab: &Lab) -> Result<Vec<CtLine>, LabError> {
    let out = lab.exec(Role::Gw, "cat", &["/proc/net/nf_conntrack"])?;
    parse_proc(&String::from_utf8_lossy(&out.stdout))
}

/// Whether a process in the gateway listens to every conntrack event group (NEW, UPDATE,
/// DESTROY: bits 0-2 of a `NETLINK_NETFILTER` socket's groups in `/proc/net/netlink`).
pub fn events_subscribed(lab: &Lab) -> Result<bool, LabError> {
    let out = lab.exec(Role::Gw, "cat", &["/proc/net/netlink"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let groups = cols.get(3).and_then(|g| u32::from_str_radix(g, 16).ok());
            cols.get(1) == Some(&"12") && groups.is_some_and(|g| g & 7 == 7)
        }))
}

/// A TCP connection from the LAN host to a listener of the Internet peer that stays open
/// until dropped: `send` pushes bytes up and reads the peer's echo of their count.
#[derive(Debug)]
pub struct OpenTcp {
    client: TcpStream,
    server: std::thread::JoinHandle<Result<u64, LabError>>,
    pub sent: u64,
}

impl OpenTcp {
    /// Connects `lan -> server` (a listener in the Internet peer's namespace).
    pub fn connect(lab: &Lab, client: IpAddr, server: SocketAddr) -> Result<OpenTcp, LabError> {
        let listener = crate::traffic::tcp_listener(&lab.ns(Role::Inet), server, None, 1)?;
        let stream = crate::traffic::tcp_client(&lab.ns(Role::Lan), None, client, server, None)?;
        let server_thread = std::thread::spawn(move || -> Result<u64, LabError> {
            let (mut conn, _) = listener.accept().map_err(|e| io("accept", e))?;
            // The connection stays open between sends, longer than the listener's accept
            // timeout it inherits.
            conn.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| io("timeout", e))?;
            let mut buf = vec![0u8; 64 << 10];
            let mut total = 0u64;
            loop {
                let n = conn.read(&mut buf).map_err(|e| io("tcp read", e))?;
                if n == 0 {
                    return Ok(total);
                }
                total += n as u64;
                // A small answer per read: traffic in the reply direction too.
                conn.write_all(&[0xa5; 32])
                    .map_err(|e| io("tcp write", e))?;
            }
        });
        stream
            .connect_timeout(&server.into(), Duration::from_secs(5))
            .map_err(|e| io(&format!("connect {server}"), e))?;
        let client: TcpStream = stream.into();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| io("timeout", e))?;
        Ok(OpenTcp {
            client,
            server: server_thread,
            sent: 0,
        })
    }

    /// Sends `bytes` and waits for at least one answer.
    pub fn send(&mut self, bytes: usize) -> Result<(), LabError> {
        self.client
            .write_all(&vec![0x3c; bytes])
            .map_err(|e| io("tcp write", e))?;
        self.sent += bytes as u64;
        let mut buf = [0u8; 4096];
        self.client.read(&mut buf).map_err(|e| io("tcp read", e))?;
        Ok(())
    }

    /// Closes the connection; returns the bytes the server received.
    pub fn close(self) -> Result<u64, LabError> {
        self.client
            .shutdown(Shutdown::Write)
            .map_err(|e| io("shutdown", e))?;
        self.server
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

/// Drops UDP to `ports` at the Internet peer's input, silently (no ICMP port unreachable,
/// which conntrack would relate to the connection without counting it).
pub fn sink_udp(lab: &Lab, ports: std::ops::Range<u16>) -> Result<(), LabError> {
    let rules = format!(
        "table inet labelflow_sink {{\n  chain input {{\n    type filter hook input priority filter; policy accept;\n    udp dport {}-{} drop\n  }}\n}}\n",
        ports.start,
        ports.end - 1
    );
    lab.exec_stdin(Role::Inet, "nft", &["-f", "-"], &rules)
        .map(|_| ())
}

/// One UDP datagram of `payload` bytes from the LAN host to each port of `ports` at `dst`,
/// as fast as the socket takes them: a new connection each, so a burst of conntrack events.
/// Returns the datagrams sent.
pub fn udp_flood(
    lab: &Lab,
    src: IpAddr,
    dst: IpAddr,
    ports: std::ops::Range<u16>,
    payload: usize,
) -> Result<u64, LabError> {
    let sock = netns::udp_socket(&lab.ns(Role::Lan), SocketAddr::new(src, 0), None)?;
    let msg = vec![0x77; payload];
    let mut sent = 0;
    for port in ports {
        let to = SocketAddr::new(dst, port);
        loop {
            match sock.send_to(&msg, to) {
                Ok(_) => break,
                // The qdisc is full: wait for it, the datagram must go out.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => std::thread::yield_now(),
                Err(e) => return Err(io("udp send", e)),
            }
        }
        sent += 1;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_lines_parse_both_tuples_and_the_mark() {
        let text = "ipv4     2 tcp      6 117 TIME_WAIT src=198.51.100.2 dst=192.0.2.1 sport=40000 dport=7000 packets=5 bytes=300 src=192.0.2.1 dst=192.0.2.2 sport=7000 dport=61000 packets=4 bytes=200 [ASSURED] mark=16 zone=0 use=2\n\
                    ipv4     2 icmp     1 29 src=198.51.100.2 dst=192.0.2.1 type=8 code=0 id=7 packets=3 bytes=252 src=192.0.2.1 dst=192.0.2.2 type=0 code=0 id=7 packets=3 bytes=252 mark=48 use=1\n";
        let lines = parse_proc(text).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].protocol, 6);
        assert_eq!(lines[0].reply.3, 61000);
        assert_eq!((lines[0].mark, lines[0].orig_packets), (16, 5));
        assert_eq!(lines[1].orig.2, 0);
        assert_eq!(lines[1].reply.1, "192.0.2.2".parse::<IpAddr>().unwrap());
        assert!(parse_proc("ipv4 2 tcp x\n").is_err());
    }

    #[test]
    fn ruleset_marks_and_counts_every_label_both_ways() {
        let r = nft_ruleset();
        for (mark, label, _) in LABELS {
            assert!(r.contains(&format!("ct mark set {mark:#x}")));
            assert!(r.contains(&format!("counter name \"{label}_reply\"")));
        }
        assert!(r.contains("masquerade"));
    }
}
