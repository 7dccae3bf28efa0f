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
use crate::sockio;
use rustix::net::RecvFlags;

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

impl CtSocket {
    /// Opens both sockets: the event socket subscribed to NEW, UPDATE and DESTROY with
    /// reliable delivery and a `rcvbuf`-byte receive buffer.
    pub fn open(rcvbuf: usize) -> Result<Self, CtError> {
        let mut events = Socket::new(NETLINK_NETFILTER).map_err(CtError::Socket)?;
        events.bind_auto().map_err(CtError::Socket)?;
        sockio::size_rcvbuf(&events, rcvbuf).map_err(CtError::Socket)?;
        // NETLINK_BROADCAST_ERROR: a multicast that cannot be queued to this socket fails
        // in the sender, so conntrack keeps a DESTROY event and delivers it again (reliable
        // event delivery, as conntrackd's `NetlinkEventsReliable` uses it).
        events.set_broadcast_error(true).map_err(CtError::Socket)?;
        for g in [
            NFNLGRP_CONNTRACK_NEW,
            NFNLGRP_CONNTRACK_UPDATE,
            NFNLGRP_CONNTRACK_DESTROY,
        ] {
            events.add_membership(g).map_err(CtError::Subscribe)?;
        }
        let mut dump = Socket::new(NETLINK_NETFILTER).map_err(CtError::Socket)?;
        dump.bind_auto().map_err(CtError::Socket)?;
        sockio::size_rcvbuf(&dump, 4 << 20).map_err(CtError::Socket)?;
        sockio::set_recv_timeout(&dump, DUMP_TIMEOUT).map_err(CtError::Socket)?;
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
        let mut n = 0;
        for _ in 0..MAX_DATAGRAMS_PER_CALL {
            let len = match sockio::recv(&self.events, &mut self.buf, RecvFlags::DONTWAIT) {
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
        match sockio::recv(&self.dump, &mut self.buf, RecvFlags::empty()) {
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
