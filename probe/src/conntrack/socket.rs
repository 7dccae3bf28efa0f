//! The sockets: one subscribed to conntrack events, one for dumps and counter reads.
//!
//! Two sockets, because an event flood may overrun the event socket (ENOBUFS: events lost)
//! while a dump on its own socket is paced by the kernel to what the socket can hold
//! (`netlink_dump` fills the next message only when the receive queue has room), so a dump
//! answer is never dropped.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use netlink_sys::{constants::NETLINK_NETFILTER, Socket};

use super::wire::{
    ctrzero_request, dump_request, parse_entry, CtEntry, NFNLGRP_CONNTRACK_DESTROY,
    NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE,
};
use super::{CtError, CtSocketStats};
use crate::nflog::wire::{NlAck, NlMsgIter, NLMSG_DONE, NLMSG_ERROR, NLMSG_OVERRUN};

/// `SOL_NETLINK` / `NETLINK_BROADCAST_ERROR`: a multicast that cannot be queued to this
/// socket fails in the sender, so conntrack keeps a DESTROY event and delivers it again
/// (reliable event delivery, as `conntrackd`'s `NetlinkEventsReliable` uses it).
const SOL_NETLINK: i32 = 270;
const NETLINK_BROADCAST_ERROR: i32 = 4;
/// Counter reads sent before their answers are read: answers to queued requests must fit in
/// the receive buffer (a unicast answer that does not fit is dropped after the counters were
/// zeroed), at ~1-4 KiB each.
const CTRZERO_BATCH: usize = 64;
/// Event datagrams read per call at most, so timers still run under a flood.
const MAX_DATAGRAMS_PER_CALL: usize = 256;
/// Longest wait for a dump or counter-read answer: the kernel answers at once, so running
/// into this means something is wrong; the sweep fails instead of hanging the probe.
const DUMP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One connection found by the dump: where its original tuple sits in the arena.
#[derive(Debug, Clone, Copy)]
struct Listed {
    family: u8,
    zone: u16,
    at: usize,
    len: usize,
}

/// The conntrack source's sockets and reusable buffers.
#[derive(Debug)]
pub struct CtSocket {
    events: Socket,
    dump: Socket,
    buf: Vec<u8>,
    req: Vec<u8>,
    arena: Vec<u8>,
    listed: Vec<Listed>,
    seq: u32,
    stats: CtSocketStats,
    /// Set by ENOBUFS: events were lost, a sweep should resynchronise.
    resync_due: bool,
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed along.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn size_rcvbuf(fd: RawFd, bytes: usize) -> io::Result<()> {
    // The kernel doubles the value for bookkeeping; SO_RCVBUFFORCE ignores rmem_max.
    let want = i32::try_from(bytes / 2).unwrap_or(i32::MAX);
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, want).is_err() {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, want)?;
    }
    Ok(())
}

/// One `recv`; `Ok(None)` when nothing is queued (non-blocking) .
fn recv(fd: RawFd, buf: &mut [u8], flags: i32) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let rc = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
        if rc >= 0 {
            return Ok(Some(rc as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

impl CtSocket {
    /// Opens both sockets: the event socket subscribed to NEW, UPDATE and DESTROY with
    /// reliable delivery and a `rcvbuf`-byte receive buffer.
    pub fn open(rcvbuf: usize) -> Result<Self, CtError> {
        let mut events = Socket::new(NETLINK_NETFILTER).map_err(CtError::Socket)?;
        events.bind_auto().map_err(CtError::Socket)?;
        size_rcvbuf(events.as_raw_fd(), rcvbuf).map_err(CtError::Socket)?;
        setsockopt_int(events.as_raw_fd(), SOL_NETLINK, NETLINK_BROADCAST_ERROR, 1)
            .map_err(CtError::Socket)?;
        for g in [
            NFNLGRP_CONNTRACK_NEW,
            NFNLGRP_CONNTRACK_UPDATE,
            NFNLGRP_CONNTRACK_DESTROY,
        ] {
            events.add_membership(g).map_err(CtError::Subscribe)?;
        }
        let mut dump = Socket::new(NETLINK_NETFILTER).map_err(CtError::Socket)?;
        dump.bind_auto().map_err(CtError::Socket)?;
        size_rcvbuf(dump.as_raw_fd(), 4 << 20).map_err(CtError::Socket)?;
        let tv = libc::timeval {
            tv_sec: DUMP_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: `tv` outlives the call and its size is passed along.
        let rc = unsafe {
            libc::setsockopt(
                dump.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(CtError::Socket(io::Error::last_os_error()));
        }
        Ok(CtSocket {
            events,
            dump,
            buf: vec![0; 256 << 10],
            req: Vec::with_capacity(CTRZERO_BATCH * 128),
            arena: Vec::new(),
            listed: Vec::new(),
            seq: 1,
            stats: CtSocketStats::default(),
            resync_due: false,
        })
    }

    /// The event socket, for `poll`.
    pub fn event_fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }

    pub fn stats(&self) -> &CtSocketStats {
        &self.stats
    }

    /// Whether events were lost since the last sweep (ENOBUFS).
    pub fn resync_due(&self) -> bool {
        self.resync_due
    }

    /// Reads the queued events without blocking and hands each to `on_entry`. ENOBUFS is
    /// counted and marks a resynchronisation as due; it is not an error.
    pub fn recv_events(
        &mut self,
        mut on_entry: impl FnMut(&CtEntry<'_>),
    ) -> Result<usize, CtError> {
        let fd = self.events.as_raw_fd();
        let mut n = 0;
        for _ in 0..MAX_DATAGRAMS_PER_CALL {
            let len = match recv(fd, &mut self.buf, libc::MSG_DONTWAIT) {
                Ok(Some(len)) => len.min(self.buf.len()),
                Ok(None) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.stats.enobufs += 1;
                    self.resync_due = true;
                    continue;
                }
                Err(e) => return Err(CtError::Recv(e)),
            };
            self.stats.datagrams += 1;
            n += 1;
            for msg in NlMsgIter::new(&self.buf[..len]) {
                let Ok(msg) = msg else {
                    self.stats.malformed += 1;
                    break;
                };
                if msg.kind == NLMSG_OVERRUN {
                    self.stats.enobufs += 1;
                    self.resync_due = true;
                    continue;
                }
                match parse_entry(msg.kind, msg.flags, msg.body) {
                    Ok(Some(e)) => {
                        self.stats.count(e.event);
                        on_entry(&e);
                    }
                    Ok(None) => {}
                    Err(_) => self.stats.malformed += 1,
                }
            }
        }
        Ok(n)
    }

    /// Reads and zeroes the counters of every connection `wanted` accepts (as the dump
    /// shows it: others keep their counters for whoever else reads them): a dump lists them
    /// (counters untouched), then each is read and zeroed on its own (see
    /// [`ctrzero_request`]).
    /// A connection gone in between answers ENOENT; its DESTROY event has the counters.
    pub fn sweep(
        &mut self,
        wanted: impl Fn(&CtEntry<'_>) -> bool,
        mut on_entry: impl FnMut(&CtEntry<'_>),
    ) -> Result<usize, CtError> {
        self.resync_due = false;
        self.stats.sweeps += 1;
        self.list(wanted)?;
        let mut done = 0;
        let mut i = 0;
        while i < self.listed.len() {
            let batch = &self.listed[i..(i + CTRZERO_BATCH).min(self.listed.len())];
            self.req.clear();
            let first_seq = self.seq;
            for l in batch {
                let raw = &self.arena[l.at..l.at + l.len];
                ctrzero_request(&mut self.req, self.seq, l.family, raw, l.zone);
                self.seq = self.seq.wrapping_add(1);
            }
            let expected = batch.len();
            i += expected;
            self.dump.send(&self.req, 0).map_err(CtError::Send)?;
            let mut answered = 0;
            while answered < expected {
                let len = self.recv_dump()?;
                for msg in NlMsgIter::new(&self.buf[..len]) {
                    let Ok(msg) = msg else {
                        self.stats.malformed += 1;
                        break;
                    };
                    if msg.seq.wrapping_sub(first_seq) as usize >= expected {
                        continue;
                    }
                    if msg.kind == NLMSG_ERROR {
                        answered += 1;
                        match NlAck::parse(msg.body).map(|a| -a.error) {
                            Ok(libc::ENOENT) => self.stats.vanished += 1,
                            Ok(0) => {}
                            _ => self.stats.read_errors += 1,
                        }
                        continue;
                    }
                    answered += 1;
                    match parse_entry(msg.kind, msg.flags, msg.body) {
                        Ok(Some(e)) => {
                            on_entry(&e);
                            done += 1;
                        }
                        _ => self.stats.malformed += 1,
                    }
                }
            }
        }
        Ok(done)
    }

    /// One answer datagram from the dump socket, waiting at most [`DUMP_TIMEOUT`].
    fn recv_dump(&mut self) -> Result<usize, CtError> {
        match recv(self.dump.as_raw_fd(), &mut self.buf, 0) {
            Ok(Some(len)) => Ok(len.min(self.buf.len())),
            Ok(None) => Err(CtError::Recv(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no conntrack answer within {DUMP_TIMEOUT:?}"),
            ))),
            Err(e) => Err(CtError::Recv(e)),
        }
    }

    /// Dumps the table into `listed` / `arena` (reused between sweeps).
    fn list(&mut self, wanted: impl Fn(&CtEntry<'_>) -> bool) -> Result<(), CtError> {
        self.arena.clear();
        self.listed.clear();
        self.req.clear();
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        dump_request(&mut self.req, seq);
        self.dump.send(&self.req, 0).map_err(CtError::Send)?;
        loop {
            let len = self.recv_dump()?;
            for msg in NlMsgIter::new(&self.buf[..len]) {
                let Ok(msg) = msg else {
                    self.stats.malformed += 1;
                    break;
                };
                if msg.seq != seq {
                    continue;
                }
                match msg.kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let errno = NlAck::parse(msg.body).map_or(0, |a| -a.error);
                        return Err(CtError::Dump(io::Error::from_raw_os_error(errno)));
                    }
                    _ => {}
                }
                if let Ok(Some(e)) = parse_entry(msg.kind, msg.flags, msg.body) {
                    if !wanted(&e) {
                        continue;
                    }
                    let at = self.arena.len();
                    self.arena.extend_from_slice(e.orig_raw);
                    self.listed.push(Listed {
                        family: e.family,
                        zone: e.zone,
                        at,
                        len: e.orig_raw.len(),
                    });
                } else {
                    self.stats.malformed += 1;
                }
            }
        }
    }
}

impl AsRawFd for CtSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }
}
