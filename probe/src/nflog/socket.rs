//! The socket side: bind / configure groups, receive batches, unbind and drain on shutdown.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use netlink_packet_netfilter::nflog::{
    config_request, ConfigCmd, ConfigFlags, ConfigMode, ConfigNla, Timeout,
};
use netlink_packet_netfilter::NetfilterProtoFamily;
use netlink_sys::{constants::NETLINK_NETFILTER, Socket, SocketAddr};

use super::stats::SourceStats;
use super::wire::{self, NlAck, NlMsgIter, NFLOG_PACKET_TYPE, NLMSG_ERROR, NLMSG_OVERRUN};
use super::{GroupConfig, NflogConfig, NflogError, Request, MAX_NLBUFSIZ};
use crate::packet::PacketMeta;
use crate::sockio;
use rustix::net::RecvFlags;

/// Datagrams read per `recv_batch` call at most, so a busy socket still lets the caller run
/// its timers.
const MAX_DATAGRAMS_PER_CALL: usize = 256;
/// ENOBUFS is logged at most this often (with the count since the last line).
const ENOBUFS_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// What one `recv_batch` call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Packets handed to `on_packet`.
    pub packets: usize,
    /// Datagrams (kernel batches) read.
    pub datagrams: usize,
    /// ENOBUFS seen during this call (the kernel dropped batches; see [`SourceStats`]).
    pub overruns: usize,
    /// Nothing arrived before the timeout.
    pub timed_out: bool,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    seq: u32,
    group: u16,
    request: Request,
}

#[derive(Debug)]
struct Failure {
    group: u16,
    request: Request,
    errno: i32,
}

/// One `NETLINK_NETFILTER` socket bound to every configured NFLOG group.
#[derive(Debug)]
pub struct NflogSocket {
    sock: Socket,
    portid: u32,
    groups: Vec<GroupConfig>,
    buf: Vec<u8>,
    /// Datagrams that carried packets while `open` waited for acknowledgements.
    stashed: VecDeque<Vec<u8>>,
    stats: SourceStats,
    next_request_seq: u32,
    awaiting: Vec<Pending>,
    failures: Vec<Failure>,
    last_group: usize,
    recv_buffer: usize,
    enobufs_logged_at: Option<Instant>,
    enobufs_unlogged: u64,
}

fn validate(config: &NflogConfig) -> Result<(), NflogError> {
    if config.groups.is_empty() {
        return Err(NflogError::NoGroups);
    }
    for (i, g) in config.groups.iter().enumerate() {
        if config.groups[..i].iter().any(|o| o.group == g.group) {
            return Err(NflogError::DuplicateGroup(g.group));
        }
        let bad = |what, limit, value: u64| NflogError::BadSetting {
            group: g.group,
            what,
            limit,
            value,
        };
        if g.copy_range == 0 || g.copy_range > 0xffff {
            return Err(bad("copy range", "1..=65535", g.copy_range.into()));
        }
        if g.queue_threshold == 0 {
            return Err(bad("queue threshold", "at least 1", 0));
        }
        if g.nlbufsiz < 4096 || g.nlbufsiz > MAX_NLBUFSIZ {
            return Err(bad("nlbufsiz", "4096..=131072", g.nlbufsiz.into()));
        }
    }
    Ok(())
}

/// Who holds `group` in this thread's network namespace, from
/// `/proc/thread-self/net/netfilter/nfnetlink_log` (columns: group, portid, qlen, copy mode,
/// copy range, flush timeout, refcount).
fn group_holder(group: u16) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_log").ok()?;
    text.lines().find_map(|line| {
        let mut cols = line.split_whitespace();
        let g: u16 = cols.next()?.parse().ok()?;
        let portid: u32 = cols.next()?.parse().ok()?;
        (g == group).then_some(portid)
    })
}

impl AsRawFd for NflogSocket {
    /// The socket, for waiting on it beside other sources.
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl NflogSocket {
    /// Opens the socket, sizes its receive buffer and binds every group (copy mode, sequence
    /// numbers, batching), waiting for the kernel to acknowledge each. Fails on the first
    /// group the kernel refuses, after unbinding the groups it had already bound (closing the
    /// socket releases them too, but not before `open` returns: a caller retrying at once
    /// could find them still held).
    pub fn open(config: &NflogConfig) -> Result<Self, NflogError> {
        validate(config)?;
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(NflogError::Socket)?;
        let addr = sock.bind_auto().map_err(NflogError::Socket)?;
        let recv_buffer =
            sockio::size_rcvbuf(&sock, config.recv_buffer).map_err(NflogError::Socket)?;
        let mut this = NflogSocket {
            sock,
            portid: addr.port_number(),
            groups: config.groups.clone(),
            buf: vec![0; config.batch_buffer.max(64 << 10)],
            stashed: VecDeque::new(),
            stats: SourceStats::new(config.groups.iter().map(|g| g.group)),
            next_request_seq: 1,
            awaiting: Vec::new(),
            failures: Vec::new(),
            last_group: 0,
            recv_buffer,
            enobufs_logged_at: None,
            enobufs_unlogged: 0,
        };
        for g in config.groups.clone() {
            let nlas = vec![
                ConfigNla::Cmd(ConfigCmd::Bind),
                ConfigNla::Mode(ConfigMode::new_packet(g.copy_range)),
                ConfigNla::Flags(ConfigFlags::SEQ),
                ConfigNla::QThresh(g.queue_threshold),
                ConfigNla::Timeout(Timeout::from(g.flush_timeout)),
                ConfigNla::NlBufSiz(g.nlbufsiz),
            ];
            let bound = this
                .send_config(g.group, Request::Bind, nlas)
                .and_then(|()| {
                    this.wait_acks(config.ack_timeout, None::<fn(&PacketMeta<'_>, &[u8])>)
                });
            if let Err(e) = bound {
                this.release_bound(g.group, config.ack_timeout);
                return Err(e);
            }
            tracing::debug!(
                group = g.group,
                copy_range = g.copy_range,
                queue_threshold = g.queue_threshold,
                flush_timeout = ?g.flush_timeout,
                "NFLOG group bound"
            );
        }
        Ok(this)
    }

    /// Unbinds, best effort, the groups bound before `failed` (configuration order).
    fn release_bound(&mut self, failed: u16, timeout: Duration) {
        let bound: Vec<u16> = self
            .groups
            .iter()
            .map(|g| g.group)
            .take_while(|&g| g != failed)
            .collect();
        self.awaiting.clear();
        self.failures.clear();
        for group in bound {
            let unbind = vec![ConfigNla::Cmd(ConfigCmd::Unbind)];
            if self.send_config(group, Request::Unbind, unbind).is_err() {
                return;
            }
        }
        let _ = self.wait_acks(timeout, None::<fn(&PacketMeta<'_>, &[u8])>);
    }

    /// The netlink port id of the socket (the `portid` column of
    /// `/proc/net/netfilter/nfnetlink_log`).
    pub fn portid(&self) -> u32 {
        self.portid
    }

    /// Effective socket receive buffer (as the kernel reports it: doubled).
    pub fn recv_buffer_size(&self) -> usize {
        self.recv_buffer
    }

    pub fn groups(&self) -> &[GroupConfig] {
        &self.groups
    }

    pub fn stats(&self) -> &SourceStats {
        &self.stats
    }

    fn send_config(
        &mut self,
        group: u16,
        request: Request,
        nlas: Vec<ConfigNla>,
    ) -> Result<(), NflogError> {
        // Family AF_UNSPEC: modern kernels hand NFLOG-target packets to nfnetlink_log without
        // the legacy PF_BIND step (xt_NFLOG / nft_log look the logger up by type).
        let mut msg = config_request(NetfilterProtoFamily::Unspec, group, nlas);
        let seq = self.next_request_seq;
        self.next_request_seq = self.next_request_seq.wrapping_add(1).max(1);
        msg.header.sequence_number = seq;
        let mut bytes = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut bytes);
        let kernel = SocketAddr::new(0, 0);
        self.sock
            .send_to(&bytes, &kernel, 0)
            .map_err(|source| NflogError::Send {
                group,
                request,
                source,
            })?;
        self.awaiting.push(Pending {
            seq,
            group,
            request,
        });
        Ok(())
    }

    /// Reads until every request is answered. Packets are delivered to `deliver` or, when
    /// `None` (during `open`), stashed for the first `recv_batch`.
    fn wait_acks<F>(&mut self, timeout: Duration, mut deliver: Option<F>) -> Result<(), NflogError>
    where
        F: FnMut(&PacketMeta<'_>, &[u8]),
    {
        let deadline = Instant::now() + timeout;
        while !self.awaiting.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                let p = self.awaiting[0];
                return Err(NflogError::AckTimeout {
                    group: p.group,
                    request: p.request,
                    timeout,
                });
            }
            if !sockio::poll_readable(&self.sock, Some(deadline - now)).map_err(NflogError::Recv)? {
                continue;
            }
            while let Some(len) = self.recv_one()? {
                match deliver.as_mut() {
                    Some(f) => {
                        self.process(len, Some(f));
                    }
                    None => {
                        // Answers are handled now; packets are neither counted nor delivered
                        // until `recv_batch` walks the stashed copy.
                        if self.process(len, None::<&mut fn(&PacketMeta<'_>, &[u8])>) > 0 {
                            self.stash(len);
                        }
                    }
                }
            }
            self.check_failures()?;
        }
        self.check_failures()
    }

    fn stash(&mut self, len: usize) {
        self.stashed.push_back(self.buf[..len].to_vec());
    }

    fn check_failures(&mut self) -> Result<(), NflogError> {
        let Some(f) = self.failures.pop() else {
            return Ok(());
        };
        let errno = -f.errno;
        Err(match (f.request, errno) {
            (Request::Bind, libc::EPERM) => match group_holder(f.group) {
                Some(portid) if portid != self.portid => NflogError::GroupBusy {
                    group: f.group,
                    portid,
                },
                _ => NflogError::PermissionDenied { group: f.group },
            },
            (Request::Bind, libc::EBUSY) => NflogError::GroupBusy {
                group: f.group,
                portid: self.portid,
            },
            _ => NflogError::Refused {
                group: f.group,
                request: f.request,
                source: io::Error::from_raw_os_error(errno),
            },
        })
    }

    /// One non-blocking receive into `self.buf`; ENOBUFS is counted and logged, not returned.
    fn recv_one(&mut self) -> Result<Option<usize>, NflogError> {
        loop {
            match sockio::recv(
                &self.sock,
                &mut self.buf,
                RecvFlags::DONTWAIT | RecvFlags::TRUNC,
            ) {
                Ok(Some(len)) => {
                    self.stats.datagrams += 1;
                    if len > self.buf.len() {
                        // MSG_TRUNC: the datagram did not fit; the tail is gone.
                        self.stats.malformed += 1;
                        tracing::warn!(
                            len,
                            buffer = self.buf.len(),
                            "NFLOG datagram larger than the batch buffer, truncated"
                        );
                    }
                    return Ok(Some(len.min(self.buf.len())));
                }
                Ok(None) => return Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.note_enobufs();
                }
                Err(e) => return Err(NflogError::Recv(e)),
            }
        }
    }

    fn note_enobufs(&mut self) {
        self.stats.note_enobufs();
        self.enobufs_unlogged += 1;
        let now = Instant::now();
        let due = self
            .enobufs_logged_at
            .is_none_or(|t| now.duration_since(t) >= ENOBUFS_LOG_INTERVAL);
        if due {
            tracing::warn!(
                overruns = self.enobufs_unlogged,
                total = self.stats.enobufs,
                recv_buffer = self.recv_buffer,
                "NFLOG socket overrun (ENOBUFS): the kernel dropped batches; sequence gaps \
                 count the packets per group"
            );
            self.enobufs_logged_at = Some(now);
            self.enobufs_unlogged = 0;
        }
    }

    fn group_index(&mut self, group: u16) -> Option<usize> {
        let groups = &self.stats.groups;
        if groups
            .get(self.last_group)
            .is_some_and(|g| g.group == group)
        {
            return Some(self.last_group);
        }
        let i = groups.iter().position(|g| g.group == group)?;
        self.last_group = i;
        Some(i)
    }

    /// Walks one datagram in `self.buf[..len]`: packets to `on_packet`, answers to our
    /// requests recorded. Returns the packets delivered (with `on_packet`) or seen (without:
    /// then they are left uncounted).
    fn process<F>(&mut self, len: usize, on_packet: Option<&mut F>) -> usize
    where
        F: FnMut(&PacketMeta<'_>, &[u8]) + ?Sized,
    {
        let buf = std::mem::take(&mut self.buf);
        let n = self.walk(&buf[..len], on_packet);
        self.buf = buf;
        n
    }

    fn walk<F>(&mut self, data: &[u8], mut on_packet: Option<&mut F>) -> usize
    where
        F: FnMut(&PacketMeta<'_>, &[u8]) + ?Sized,
    {
        let mut delivered = 0;
        for msg in NlMsgIter::new(data) {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    self.stats.malformed += 1;
                    tracing::debug!(error = %e, "malformed NFLOG datagram, rest skipped");
                    break;
                }
            };
            let Some(on_packet) = on_packet.as_mut() else {
                match msg.kind {
                    NFLOG_PACKET_TYPE => delivered += 1,
                    NLMSG_ERROR => {
                        if let Ok(ack) = NlAck::parse(msg.body) {
                            self.answer(ack);
                        }
                    }
                    _ => {}
                }
                continue;
            };
            self.stats.messages += 1;
            match msg.kind {
                NFLOG_PACKET_TYPE => match wire::parse_packet_message(msg.body) {
                    Ok((meta, payload)) => match self.group_index(meta.group) {
                        Some(i) => {
                            self.stats.groups[i].observe(meta.seq);
                            on_packet(&meta, payload);
                            delivered += 1;
                        }
                        None => self.stats.unknown_group += 1,
                    },
                    Err(e) => {
                        self.stats.malformed += 1;
                        tracing::debug!(error = %e, "malformed NFLOG packet message skipped");
                    }
                },
                NLMSG_ERROR => match NlAck::parse(msg.body) {
                    Ok(ack) => self.answer(ack),
                    Err(_) => self.stats.malformed += 1,
                },
                NLMSG_OVERRUN => self.note_enobufs(),
                // NLMSG_DONE ends a multi-part batch; NOOP and others carry nothing for us.
                _ => {}
            }
        }
        delivered
    }

    fn answer(&mut self, ack: NlAck) {
        match self.awaiting.iter().position(|p| p.seq == ack.request_seq) {
            Some(i) => {
                let p = self.awaiting.swap_remove(i);
                if ack.error != 0 {
                    self.failures.push(Failure {
                        group: p.group,
                        request: p.request,
                        errno: ack.error,
                    });
                }
            }
            // An answer already handled while the datagram was stashed, or not ours.
            None if ack.error != 0 && ack.request_seq >= self.next_request_seq => {
                self.stats.unexpected_errors += 1;
            }
            None => {}
        }
    }

    /// Receives what is queued (waiting up to `timeout` for the first datagram, `None`:
    /// forever) and hands every packet to `on_packet`, with its payload starting at the IP
    /// header. Reads at most a bounded number of datagrams per call. ENOBUFS and malformed
    /// messages are counted in [`stats`](Self::stats), not returned.
    pub fn recv_batch<F>(
        &mut self,
        timeout: Option<Duration>,
        mut on_packet: F,
    ) -> Result<BatchOutcome, NflogError>
    where
        F: FnMut(&PacketMeta<'_>, &[u8]),
    {
        let mut out = BatchOutcome {
            packets: 0,
            datagrams: 0,
            overruns: 0,
            timed_out: false,
        };
        let enobufs_before = self.stats.enobufs;
        while let Some(d) = self.stashed.pop_front() {
            out.packets += self.walk(&d, Some(&mut on_packet));
            out.datagrams += 1;
        }
        if out.datagrams == 0
            && !sockio::poll_readable(&self.sock, timeout).map_err(NflogError::Recv)?
        {
            out.timed_out = true;
            return Ok(out);
        }
        while out.datagrams < MAX_DATAGRAMS_PER_CALL {
            let Some(len) = self.recv_one()? else { break };
            out.packets += self.process(len, Some(&mut on_packet));
            out.datagrams += 1;
        }
        out.overruns = (self.stats.enobufs - enobufs_before) as usize;
        Ok(out)
    }

    /// Clean shutdown: unbinds every group (the kernel flushes each group's pending batch
    /// when its instance goes away), keeps delivering packets until every unbind is
    /// acknowledged or `timeout` passes, and returns the final counters.
    pub fn shutdown<F>(
        mut self,
        timeout: Duration,
        mut on_packet: F,
    ) -> Result<SourceStats, NflogError>
    where
        F: FnMut(&PacketMeta<'_>, &[u8]),
    {
        while let Some(d) = self.stashed.pop_front() {
            self.walk(&d, Some(&mut on_packet));
        }
        for group in self.groups.iter().map(|g| g.group).collect::<Vec<_>>() {
            self.send_config(
                group,
                Request::Unbind,
                vec![ConfigNla::Cmd(ConfigCmd::Unbind)],
            )?;
        }
        self.wait_acks(timeout, Some(&mut on_packet))?;
        Ok(self.stats)
    }
}
