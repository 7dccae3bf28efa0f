//! UDP and TCP sockets as the kernel lists them (`/proc/PID/net/{udp,udp6,tcp,tcp6}`,
//! `/proc/PID/fd`), and ports for programs that must be told one.
//!
//! A daemon is ready when a socket *it owns* is bound to its port: the socket's inode is
//! among its file descriptors. Looking at the port alone could see another process's socket.
//!
//! Ports: binding port 0, reading the number and closing the socket hands the number back to
//! the kernel, which may give it to the next socket that binds port 0 before the daemon binds
//! it. [`candidate_port`] picks below the ephemeral range instead (the kernel never hands
//! those out for port 0), skips ports bound in this network namespace, and
//! [`with_fresh_port`] retries with another one when the daemon still finds it taken.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;

/// One UDP socket of a network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSocketInfo {
    pub port: u16,
    pub inode: u64,
    /// Octets queued for reading (`rx_queue`).
    pub rx_queue: u64,
    /// Datagrams dropped on arrival (receive buffer full).
    pub drops: u64,
}

fn proc_net(pid: Option<u32>, file: &str) -> String {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/net/{file}"),
        None => format!("/proc/self/net/{file}"),
    };
    std::fs::read_to_string(path).unwrap_or_default()
}

fn hex_port(local: &str) -> Option<u16> {
    u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
}

/// UDP sockets (IPv4 and IPv6) of the network namespace of `pid` (`None`: this process's).
pub fn udp_sockets(pid: Option<u32>) -> Vec<UdpSocketInfo> {
    let mut out = Vec::new();
    for file in ["udp", "udp6"] {
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        for line in proc_net(pid, file).lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let parsed = (|| {
                Some(UdpSocketInfo {
                    port: hex_port(f.get(1)?)?,
                    rx_queue: u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()?,
                    inode: f.get(9)?.parse().ok()?,
                    drops: f.get(12)?.parse().ok()?,
                })
            })();
            out.extend(parsed);
        }
    }
    out
}

/// Ports of TCP sockets in LISTEN state in the network namespace of `pid`, with inodes.
fn tcp_listeners(pid: Option<u32>) -> Vec<(u16, u64)> {
    let mut out = Vec::new();
    for file in ["tcp", "tcp6"] {
        for line in proc_net(pid, file).lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // State 0A is TCP_LISTEN.
            if f.get(3) != Some(&"0A") {
                continue;
            }
            if let (Some(port), Some(inode)) = (
                f.get(1).and_then(|l| hex_port(l)),
                f.get(9).and_then(|i| i.parse().ok()),
            ) {
                out.push((port, inode));
            }
        }
    }
    out
}

/// Inodes of the sockets among `pid`'s file descriptors.
pub fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// The UDP socket bound to `port` that process `pid` owns, if any.
pub fn udp_socket_of(pid: u32, port: u16) -> Option<UdpSocketInfo> {
    let inodes = socket_inodes(pid);
    udp_sockets(Some(pid))
        .into_iter()
        .find(|s| s.port == port && inodes.contains(&s.inode))
}

/// Whether process `pid` owns a TCP socket listening on `port`.
pub fn tcp_listening_of(pid: u32, port: u16) -> bool {
    let inodes = socket_inodes(pid);
    tcp_listeners(Some(pid))
        .iter()
        .any(|(p, inode)| *p == port && inodes.contains(inode))
}

/// Whether process `pid` sleeps in a system call that waits for input (x86_64 numbers: read,
/// poll, select, recvfrom, recvmsg, epoll_wait, pselect6, ppoll, epoll_pwait, recvmmsg), per
/// `/proc/PID/syscall`. With its socket's queue empty, a single-threaded receiver in that
/// state has processed every datagram it read. Other architectures: always true.
pub fn waiting_for_input(pid: u32) -> bool {
    if !cfg!(target_arch = "x86_64") {
        return true;
    }
    const WAITS: [u64; 10] = [0, 7, 23, 45, 47, 232, 270, 271, 281, 299];
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // pid (comm) STATE ...: comm may hold spaces, the state follows its closing parenthesis.
    let sleeping = state
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('S'));
    let call = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    let nr = call.split_whitespace().next().and_then(|n| n.parse().ok());
    sleeping && nr.is_some_and(|n| WAITS.contains(&n))
}

/// Whether some UDP or TCP socket of this network namespace is bound to `port`.
pub fn port_in_use(port: u16) -> bool {
    udp_sockets(None).iter().any(|s| s.port == port)
        || tcp_listeners(None).iter().any(|(p, _)| *p == port)
}

/// Start of the kernel's ephemeral port range (`ip_local_port_range`; 32768 by default).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port for a daemon that must be told its port: below the ephemeral range, free in this
/// network namespace now, and not handed out before by this process.
pub fn candidate_port() -> u16 {
    let hi = ephemeral_start().max(2048);
    let lo = hi / 2;
    let state = std::hash::RandomState::new();
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    for n in 0u64.. {
        let mut h = state.build_hasher();
        h.write_u64(n);
        h.write_u32(std::process::id());
        let port = lo + (h.finish() % u64::from(hi - lo)) as u16;
        if !handed.contains(&port) && !port_in_use(port) {
            handed.insert(port);
            return port;
        }
        assert!(n < 10_000, "no free port in {lo}..{hi}");
    }
    unreachable!("the loop returns or fails")
}

/// A daemon found its port taken (EADDRINUSE); the detail says how it told.
#[derive(Debug)]
pub struct PortTaken(pub String);

/// How many ports [`with_fresh_port`] tries.
pub const PORT_ATTEMPTS: usize = 8;

/// Calls `start` with a [`candidate_port`] until it does not report [`PortTaken`]; fails the
/// test, naming `what` and the last detail, after [`PORT_ATTEMPTS`] ports.
pub fn with_fresh_port<T>(what: &str, mut start: impl FnMut(u16) -> Result<T, PortTaken>) -> T {
    let mut last = String::new();
    for _ in 0..PORT_ATTEMPTS {
        match start(candidate_port()) {
            Ok(v) => return v,
            Err(PortTaken(detail)) => last = detail,
        }
    }
    panic!("{what}: every one of {PORT_ATTEMPTS} ports was taken; last: {last}")
}

/// Whether a daemon's message says its address was in use.
pub fn says_addr_in_use(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("address already in use") || t.contains("eaddrinuse") || t.contains("os error 98")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_its_own_udp_socket_and_its_queue() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        let me = std::process::id();
        assert_eq!(udp_socket_of(me, port).map(|i| i.rx_queue), Some(0));
        s.send_to(b"hello", ("127.0.0.1", port)).unwrap();
        let info = udp_socket_of(me, port).unwrap();
        assert!(info.rx_queue > 0, "{info:?}");
        assert!(port_in_use(port));
    }

    #[test]
    fn sees_a_thread_blocked_in_recv() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(crate::wait::poll_until(
            std::time::Duration::from_secs(5),
            || {
                // nanosleep is no input wait.
                std::fs::read_to_string(format!("/proc/{pid}/syscall"))
                    .is_ok_and(|c| !c.starts_with("running"))
            }
        ));
        assert!(!waiting_for_input(pid));
        child.kill().unwrap();
        child.wait().unwrap();
        drop((s, port));
    }

    #[test]
    fn finds_a_listening_tcp_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(tcp_listening_of(std::process::id(), port));
        drop(l);
        assert!(!tcp_listening_of(std::process::id(), port));
    }

    #[test]
    fn candidate_ports_are_below_the_ephemeral_range_and_distinct() {
        let a = candidate_port();
        let b = candidate_port();
        assert_ne!(a, b);
        assert!(a < ephemeral_start() && b < ephemeral_start());
        std::net::UdpSocket::bind(("127.0.0.1", a)).unwrap();
    }
}
