//! The NFLOG source: one `NETLINK_NETFILTER` socket bound to every configured group.
//!
//! ```text
//!  iptables -j NFLOG --nflog-group N  ──► nfnetlink_log instance N (batch of up to
//!                                         `queue_threshold` packets, flushed after
//!                                         `flush_timeout`) ──► one datagram ──► NflogSocket
//!  NflogSocket::recv_batch ──► wire::NlMsgIter ──► wire::parse_packet_message
//!                          ──► on_packet(&PacketMeta, payload)   (no copy, no allocation)
//! ```
//!
//! Loss is measured, never hidden: per-group sequence numbers (`NFULNL_CFG_F_SEQ`) give exact
//! gap counts, ENOBUFS on `recv` is counted (NETLINK_NO_ENOBUFS is deliberately left off), both
//! in [`SourceStats`].

mod socket;
pub mod stats;
pub mod wire;

use std::io;
use std::time::Duration;

pub use socket::{BatchOutcome, NflogSocket};
pub use stats::{GroupStats, SourceStats};

/// Default copy range: enough for an IPv6 header, a few extension headers and the L4 header
/// (ports, TCP flags, ICMP type/code, ESP SPI). The flow pipeline takes byte counts from the
/// IP header, so the rest of the packet is never needed.
pub const DEFAULT_COPY_RANGE: u32 = 128;
/// Default queue threshold (packets per netlink batch). Measured here (veth, 60-byte frames,
/// one trafgen worker at its maximum, ~150-165k pps): 1 cost 2.5 µs of probe CPU per packet
/// (a datagram and a wake-up each) and slowed the sender to ~73k pps; 64 was lossless at
/// 0.36-0.68 µs per packet (`bench/probe.sh` (b), three groups); 256 lossless at 0.17-0.23 µs.
/// At low rates the flush timeout, not the threshold, bounds the delay.
pub const DEFAULT_QUEUE_THRESHOLD: u32 = 256;
/// Default flush timeout: a partial batch waits at most this long (kernel default: 1 s).
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_millis(100);
/// Default size of the kernel's per-group batch buffer (`NFULA_CFG_NLBUFSIZ`). The kernel's
/// own default (one page) holds only ~15 messages of 128-byte copies, which would cap the
/// batch well below the queue threshold; 256 messages of ~250 bytes need the maximum.
pub const DEFAULT_NLBUFSIZ: u32 = MAX_NLBUFSIZ;
/// Kernel maximum for `NFULA_CFG_NLBUFSIZ` (`NFULNL_NLBUFSIZ_MAX`... 128 KiB).
pub const MAX_NLBUFSIZ: u32 = 131_072;
/// Default socket receive buffer (SO_RCVBUFFORCE when permitted, else SO_RCVBUF capped by
/// `net.core.rmem_max`).
pub const DEFAULT_RECV_BUFFER: usize = 8 << 20;
/// Default user-space receive buffer: one datagram (one kernel batch) must fit.
pub const DEFAULT_BATCH_BUFFER: usize = 256 << 10;
/// Default time to wait for the kernel's answer to a configuration request.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Listener settings of one NFLOG group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    pub group: u16,
    /// Bytes of each packet copied to user space (`NFULNL_COPY_PACKET` range).
    pub copy_range: u32,
    /// Packets per batch (`NFULA_CFG_QTHRESH`). The kernel uses the smaller of this and the
    /// rule's `--nflog-threshold`.
    pub queue_threshold: u32,
    /// Flush timer for partial batches (`NFULA_CFG_TIMEOUT`, sent in 1/100 s).
    pub flush_timeout: Duration,
    /// Kernel batch buffer size (`NFULA_CFG_NLBUFSIZ`), at most [`MAX_NLBUFSIZ`].
    pub nlbufsiz: u32,
}

impl GroupConfig {
    /// A group with every default.
    pub fn new(group: u16) -> Self {
        GroupConfig {
            group,
            copy_range: DEFAULT_COPY_RANGE,
            queue_threshold: DEFAULT_QUEUE_THRESHOLD,
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
            nlbufsiz: DEFAULT_NLBUFSIZ,
        }
    }
}

/// Settings of the NFLOG socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NflogConfig {
    pub groups: Vec<GroupConfig>,
    /// Socket receive buffer in bytes (what is asked; the kernel doubles it for bookkeeping).
    pub recv_buffer: usize,
    /// User-space buffer one `recv` fills; a datagram larger than this is counted malformed.
    pub batch_buffer: usize,
    /// How long `open` / `shutdown` wait for the kernel's acknowledgements.
    pub ack_timeout: Duration,
}

impl NflogConfig {
    /// Every default, for the given groups.
    pub fn new(groups: impl IntoIterator<Item = u16>) -> Self {
        NflogConfig {
            groups: groups.into_iter().map(GroupConfig::new).collect(),
            recv_buffer: DEFAULT_RECV_BUFFER,
            batch_buffer: DEFAULT_BATCH_BUFFER,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
        }
    }
}

/// A configuration request to the kernel, as named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Bind,
    Unbind,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Request::Bind => "bind",
            Request::Unbind => "unbind",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NflogError {
    #[error("no NFLOG group configured")]
    NoGroups,
    #[error("NFLOG group {0} configured twice")]
    DuplicateGroup(u16),
    #[error("NFLOG group {group}: {what} must be {limit}, got {value}")]
    BadSetting {
        group: u16,
        what: &'static str,
        limit: &'static str,
        value: u64,
    },
    #[error("cannot open the NETLINK_NETFILTER socket")]
    Socket(#[source] io::Error),
    #[error(
        "NFLOG group {group} is already bound by another listener (netlink portid {portid}); \
         only one process may read a group"
    )]
    GroupBusy { group: u16, portid: u32 },
    #[error(
        "NFLOG group {group}: bind refused (EPERM): this process lacks CAP_NET_ADMIN in the \
         network namespace, or another listener holds the group"
    )]
    PermissionDenied { group: u16 },
    #[error("NFLOG group {group}: kernel refused {request}")]
    Refused {
        group: u16,
        request: Request,
        #[source]
        source: io::Error,
    },
    #[error("NFLOG group {group}: no answer to {request} within {timeout:?}")]
    AckTimeout {
        group: u16,
        request: Request,
        timeout: Duration,
    },
    #[error("sending the NFLOG {request} request for group {group}")]
    Send {
        group: u16,
        request: Request,
        #[source]
        source: io::Error,
    },
    #[error("receiving from the NFLOG socket")]
    Recv(#[source] io::Error),
}
