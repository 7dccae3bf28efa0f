//! Running code, sockets and processes inside a named network namespace (`/run/netns/NAME`).
//!
//! A socket belongs to the namespace of the thread that created it, for its whole life, so the
//! helpers here create sockets on a short-lived thread that first `setns(CLONE_NEWNET)`s into the
//! namespace, then hand the socket back: the caller uses it from any thread.

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::process::{Child, Command, Output, Stdio};

use socket2::{Domain, Protocol, Socket, Type};

use crate::LabError;

/// Path of a named namespace as `ip netns add` creates it.
pub fn netns_path(name: &str) -> String {
    format!("/run/netns/{name}")
}

/// Moves the calling thread into the named network namespace.
///
/// Only the calling thread moves; call it on a thread made for the purpose (see [`in_netns`]).
fn enter(name: &str) -> Result<(), LabError> {
    let path = netns_path(name);
    let file = File::open(&path).map_err(|source| LabError::Io {
        what: format!("open {path}"),
        source,
    })?;
    // setns(2) moves only the calling thread.
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|e| LabError::Io {
        what: format!("setns({path})"),
        source: e.into(),
    })
}

/// Runs `f` on a new thread inside the named network namespace and returns its result.
///
/// Sockets created by `f` stay in that namespace after the thread ends.
pub fn in_netns<R, F>(name: &str, f: F) -> Result<R, LabError>
where
    F: FnOnce() -> Result<R, LabError> + Send,
    R: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(name)?;
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Like [`in_netns`], with the thread's effective group id set to `egid` (when given) while
/// `f` runs.
///
/// Sockets keep the credentials of their creation in their file (`f_cred`), which is what the
/// owner matches read (`-m owner --gid-owner`, nft `meta skgid`: the file's fsgid, which
/// follows the effective gid). glibc's `setegid` changes every thread of the process (POSIX
/// semantics), so the raw `setresgid` system call is used: it changes the calling thread only.
pub fn in_netns_as<R, F>(name: &str, egid: Option<u32>, f: F) -> Result<R, LabError>
where
    F: FnOnce() -> Result<R, LabError> + Send,
    R: Send,
{
    in_netns(name, || {
        let Some(gid) = egid else { return f() };
        let previous = rustix::process::getegid().as_raw();
        set_thread_egid(gid)?;
        let result = f();
        set_thread_egid(previous)?;
        result
    })
}

fn set_thread_egid(gid: u32) -> Result<(), LabError> {
    // None leaves the real and saved ids as they are.
    rustix::thread::set_thread_res_gid(None, Some(rustix::process::Gid::from_raw(gid)), None)
        .map_err(|e| io(&format!("setresgid(-1, {gid}, -1)"), e.into()))
}

/// A UDP socket bound to `addr` inside the namespace (receive buffer raised to `rcvbuf` bytes
/// with `SO_RCVBUFFORCE` when given).
pub fn udp_socket(
    ns: &str,
    addr: SocketAddr,
    rcvbuf: Option<usize>,
) -> Result<UdpSocket, LabError> {
    in_netns(ns, || {
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .map_err(|e| io("udp socket", e))?;
        if let Some(size) = rcvbuf {
            force_rcvbuf(&sock, size)?;
        }
        sock.bind(&addr.into())
            .map_err(|e| io(&format!("bind udp {addr}"), e))?;
        Ok(sock.into())
    })
}

/// A socket of any kind created inside the namespace.
pub fn socket(
    ns: &str,
    domain: Domain,
    ty: Type,
    proto: Option<Protocol>,
) -> Result<Socket, LabError> {
    in_netns(ns, || {
        Socket::new(domain, ty, proto).map_err(|e| io("socket", e))
    })
}

/// Raises a socket's receive buffer past `net.core.rmem_max` (root only).
pub fn force_rcvbuf(sock: &Socket, size: usize) -> Result<(), LabError> {
    rustix::net::sockopt::set_socket_recv_buffer_size_force(sock, size)
        .map_err(|e| io("SO_RCVBUFFORCE", e.into()))
}

/// A veth pair with one end in each namespace, created directly there (nothing touches the
/// root namespace), offloads off on both ends: a packet on the link is one wire packet (no
/// GRO/GSO/TSO merging), with checksums filled in by the stack so captures decode cleanly.
pub fn veth(a: (&str, &str), b: (&str, &str)) -> Result<(), LabError> {
    let ((ns_a, if_a), (ns_b, if_b)) = (a, b);
    run(
        None,
        "ip",
        &[
            "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b,
        ],
        None,
    )?;
    for (ns, dev) in [a, b] {
        run(
            Some(ns),
            "ethtool",
            &[
                "-K", dev, "gro", "off", "gso", "off", "tso", "off", "tx", "off", "rx", "off",
            ],
            None,
        )?;
    }
    Ok(())
}

/// `ip netns exec NS PROG ARGS...` as a `Command` (stdio left to the caller).
pub fn command(ns: &str, prog: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, prog]).args(args);
    cmd
}

/// Spawns `prog` inside the namespace with stdout and stderr captured (piped).
///
/// `ip netns exec` execs the program in place, so the child's pid is the program's pid and
/// signals sent to it reach the program.
pub fn spawn(ns: &str, prog: &str, args: &[&str]) -> Result<Child, LabError> {
    command(ns, prog, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io(&format!("spawn {prog} in {ns}"), e))
}

/// Runs `prog` inside the namespace (or in the current one when `ns` is `None`), feeding it
/// `stdin`, and returns its output; a non-zero exit is an error carrying its stderr.
pub fn run(
    ns: Option<&str>,
    prog: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Output, LabError> {
    let mut cmd = match ns {
        Some(ns) => command(ns, prog, args),
        None => {
            let mut c = Command::new(prog);
            c.args(args);
            c
        }
    };
    let rendered = render(ns, prog, args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| io(&rendered, e))?;
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child
            .stdin
            .take()
            .ok_or_else(|| io(&rendered, std::io::ErrorKind::BrokenPipe.into()))?;
        pipe.write_all(input.as_bytes())
            .map_err(|e| io(&rendered, e))?;
    }
    let out = child.wait_with_output().map_err(|e| io(&rendered, e))?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: rendered,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

fn render(ns: Option<&str>, prog: &str, args: &[&str]) -> String {
    let mut s = String::new();
    if let Some(ns) = ns {
        s.push_str("ip netns exec ");
        s.push_str(ns);
        s.push(' ');
    }
    s.push_str(prog);
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

pub(crate) fn io(what: &str, source: std::io::Error) -> LabError {
    LabError::Io {
        what: what.to_owned(),
        source,
    }
}

/// Names of all network namespaces (`ip netns list`).
pub fn list() -> Result<Vec<String>, LabError> {
    let out = run(None, "ip", &["netns", "list"], None)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Process ids living in the namespace (`ip netns pids`).
pub fn pids(ns: &str) -> Vec<i32> {
    run(None, "ip", &["netns", "pids", ns], None)
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes a namespace after ending the processes left inside it (SIGTERM, then SIGKILL after
/// a bounded wait). The namespace's veth ends disappear with it.
pub fn delete(ns: &str) -> Result<(), LabError> {
    let mut left = pids(ns);
    for sig in [rustix::process::Signal::TERM, rustix::process::Signal::KILL] {
        for &pid in &left {
            // A process that lives in a namespace this lab created.
            labelflow_testkit::tools::signal(pid as u32, sig);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !left.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            left = pids(ns);
        }
        if left.is_empty() {
            break;
        }
    }
    run(None, "ip", &["netns", "delete", ns], None).map(|_| ())
}
