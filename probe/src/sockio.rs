//! Socket options and receive calls shared by the probe's netlink sockets (NFLOG groups,
//! conntrack events and dumps), through rustix: no raw system calls, no `unsafe` here.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{sockopt, RecvFlags};

/// Sets the receive buffer so that the effective size is `bytes`: the kernel doubles the
/// value it is given for its bookkeeping (socket(7)), so half is asked for.
/// `SO_RCVBUFFORCE` ignores `net.core.rmem_max` but needs CAP_NET_ADMIN; without it,
/// `SO_RCVBUF` is capped at `rmem_max`. Returns the size the kernel then reports.
pub(crate) fn size_rcvbuf(fd: impl AsFd, bytes: usize) -> io::Result<usize> {
    let want = (bytes / 2).min(i32::MAX as usize);
    if sockopt::set_socket_recv_buffer_size_force(&fd, want).is_err() {
        sockopt::set_socket_recv_buffer_size(&fd, want)?;
    }
    Ok(sockopt::socket_recv_buffer_size(&fd)?)
}

/// Makes blocking receives give up after `timeout` (`SO_RCVTIMEO`).
pub(crate) fn set_recv_timeout(fd: impl AsFd, timeout: Duration) -> io::Result<()> {
    Ok(sockopt::set_socket_timeout(
        &fd,
        sockopt::Timeout::Recv,
        Some(timeout),
    )?)
}

/// Waits until `fd` is readable or `timeout` passes (`None`: forever). Returns readability.
pub(crate) fn poll_readable(fd: impl AsFd, timeout: Option<Duration>) -> io::Result<bool> {
    // Rounded up to whole milliseconds (as poll(2) counts), so a short timeout does not
    // turn into a busy loop of zero-length polls.
    let timeout = timeout.map(|d| {
        let ms = d.as_micros().div_ceil(1000);
        let ms = u64::try_from(ms).unwrap_or(u64::MAX);
        Timespec::try_from(Duration::from_millis(ms)).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        })
    });
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    loop {
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(n) => return Ok(n > 0),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// One `recv`. `Ok(None)` when nothing is queued (non-blocking, or a receive timeout).
/// With [`RecvFlags::TRUNC`] the length returned is the datagram's own, which may exceed
/// `buf`.
pub(crate) fn recv(fd: impl AsFd, buf: &mut [u8], flags: RecvFlags) -> io::Result<Option<usize>> {
    loop {
        match rustix::net::recv(&fd, &mut *buf, flags) {
            Ok((_, len)) => return Ok(Some(len)),
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}
