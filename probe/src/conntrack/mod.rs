//! The conntrack source: per-connection counters from the kernel's connection tracking,
//! labelled by connmark, with the NAT tuples, beside the NFLOG groups in the same process.
//!
//! ```text
//!  DESTROY events (NETLINK_NETFILTER, reliable delivery) ──► final counters ─┐
//!  every active timeout, on ENOBUFS and at shutdown:                         ├► Recorder
//!    dump (list) ──► per connection IPCTNL_MSG_CT_GET_CTRZERO (read + zero) ─┘  (label by
//!                                                                               connmark)
//!  ──► two unidirectional FlowRecords per connection and interval (original, reply)
//! ```
//!
//! Every byte the kernel counts for a connection is exported exactly once: either by a
//! counter read that zeroes it (the kernel swaps the counters with zero atomically) or by the
//! DESTROY event that reports what is left. NEW and UPDATE events carry no counters
//! (`ctnetlink_conntrack_event` puts them only into DESTROY); they are counted.
//!
//! Needs `net.netfilter.nf_conntrack_acct = 1` (counters) and `nf_conntrack_timestamp = 1`
//! (start and stop times) in the probe's network namespace, before the connections are
//! created: the kernel adds these extensions to a connection when it is created.
//!
//! Not seen here: connections offloaded to a flowtable keep their counters current only with
//! the flowtable's `counter` flag, and this kernel has no flowtable offload to test it with.

mod records;
mod socket;
pub mod wire;

use std::io;
use std::path::Path;

use labelflow_proto::FlowRecord;

pub use records::{Export, Filter, LabelRule, LabelStats, Recorder, OBSERVATION_POINT_BASE};
pub use socket::CtSocket;
use wire::CtEvent;

/// Default receive buffer of the event socket.
pub const DEFAULT_RECV_BUFFER: usize = 8 << 20;
/// Resynchronising sweeps after ENOBUFS are at least this far apart: under a sustained event
/// flood every read may overrun, and a sweep per overrun would only repeat the same work.
/// Counters are not at stake meanwhile: DESTROY events are delivered again by the kernel
/// (reliable delivery) and live connections keep counting until the sweep reads them.
pub const RESYNC_MIN_INTERVAL_MS: u64 = 1_000;

/// Settings of the conntrack source (validated `[conntrack]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtConfig {
    pub labels: Vec<LabelRule>,
    /// Label of connections no rule matches; `None`: they are ignored (and counted).
    pub default_label: Option<String>,
    /// Only connections of this zone; `None`: every zone.
    pub zone: Option<u16>,
    /// Turn `nf_conntrack_acct` / `nf_conntrack_timestamp` on instead of refusing to start.
    pub set_sysctls: bool,
    /// Event socket receive buffer, bytes.
    pub rcvbuf: usize,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CtError {
    #[error("cannot open a NETLINK_NETFILTER socket for conntrack")]
    Socket(#[source] io::Error),
    #[error("cannot subscribe to conntrack events (needs CAP_NET_ADMIN in the namespace)")]
    Subscribe(#[source] io::Error),
    #[error("sending a conntrack request")]
    Send(#[source] io::Error),
    #[error("receiving from the conntrack socket")]
    Recv(#[source] io::Error),
    #[error("the kernel refused the conntrack dump")]
    Dump(#[source] io::Error),
    #[error(
        "{path} is {value}: conntrack {what} is off in this network namespace; set it to 1 \
         (sysctl -w net.netfilter.{name}=1) or set [conntrack] set_sysctls = true"
    )]
    SysctlOff {
        path: String,
        name: &'static str,
        what: &'static str,
        value: String,
    },
    #[error("cannot read {path}: is the nf_conntrack module loaded?")]
    SysctlRead {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set {path} to 1")]
    SysctlWrite {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Counters of the sockets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CtSocketStats {
    pub datagrams: u64,
    pub new_events: u64,
    pub update_events: u64,
    pub destroy_events: u64,
    /// Event socket overruns: events were lost (each one triggers a resynchronising sweep).
    pub enobufs: u64,
    pub malformed: u64,
    /// Sweeps done (active timeout, resynchronisation, shutdown).
    pub sweeps: u64,
    /// Connections listed by a sweep but gone before their counters were read (their
    /// DESTROY event carries them).
    pub vanished: u64,
    /// Counter reads the kernel refused for another reason than ENOENT.
    pub read_errors: u64,
}

impl CtSocketStats {
    fn count(&mut self, e: CtEvent) {
        match e {
            CtEvent::New => self.new_events += 1,
            CtEvent::Update => self.update_events += 1,
            CtEvent::Destroy => self.destroy_events += 1,
        }
    }
}

/// `(sysctl name, what it enables)` checked at start.
const SYSCTLS: [(&str, &str); 2] = [
    ("nf_conntrack_acct", "accounting (per-connection counters)"),
    (
        "nf_conntrack_timestamp",
        "timestamping (start and stop times)",
    ),
];

/// Checks (or, with `set`, turns on) the sysctls the source needs, under `root`
/// (`/proc/sys/net/netfilter` of the calling thread's network namespace).
pub fn check_sysctls(root: &Path, set: bool) -> Result<(), CtError> {
    for (name, what) in SYSCTLS {
        let path = root.join(name);
        let shown = path.display().to_string();
        let value = std::fs::read_to_string(&path).map_err(|source| CtError::SysctlRead {
            path: shown.clone(),
            source,
        })?;
        let value = value.trim();
        if value == "1" {
            continue;
        }
        if !set {
            return Err(CtError::SysctlOff {
                path: shown,
                name,
                what,
                value: value.to_string(),
            });
        }
        std::fs::write(&path, "1").map_err(|source| CtError::SysctlWrite {
            path: shown.clone(),
            source,
        })?;
        tracing::info!(sysctl = %shown, "turned on ([conntrack] set_sysctls)");
    }
    Ok(())
}

/// The conntrack source with its timers: what the daemon drives.
#[derive(Debug)]
pub struct ConntrackSource {
    sock: CtSocket,
    recorder: Recorder,
    active_ms: u64,
    /// When the counters were last zeroed by a sweep (0: never).
    last_sweep_ms: u64,
    next_sweep_ms: u64,
}

impl ConntrackSource {
    /// Checks the sysctls and opens the sockets. `domain` is the observation domain of the
    /// records, `active_ms` the active timeout.
    pub fn open(cfg: &CtConfig, domain: u32, active_ms: u64, now_ms: u64) -> Result<Self, CtError> {
        check_sysctls(Path::new("/proc/sys/net/netfilter"), cfg.set_sysctls)?;
        let sock = CtSocket::open(cfg.rcvbuf)?;
        Ok(ConntrackSource {
            sock,
            recorder: Recorder::new(
                cfg.labels.clone(),
                cfg.default_label.clone(),
                cfg.zone,
                domain,
            ),
            active_ms: active_ms.max(1),
            last_sweep_ms: 0,
            next_sweep_ms: now_ms + active_ms.max(1),
        })
    }

    /// The event socket, for `poll`.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.sock.event_fd()
    }

    /// When [`tick`](Self::tick) has work next.
    pub fn next_deadline(&self) -> u64 {
        if self.sock.resync_due() {
            let resync = self.last_sweep_ms.saturating_add(RESYNC_MIN_INTERVAL_MS);
            return self.next_sweep_ms.min(resync);
        }
        self.next_sweep_ms
    }

    /// Reads queued events (returns the datagrams read); DESTROY events become records.
    pub fn recv(
        &mut self,
        now_ms: u64,
        sink: &mut impl FnMut(FlowRecord),
    ) -> Result<usize, CtError> {
        let (rec, since) = (&mut self.recorder, self.last_sweep_ms);
        self.sock.recv_events(|e| {
            if Recorder::wants(e) {
                rec.export(e, Export::Destroy, since, now_ms, sink);
            }
        })
    }

    /// Reads events until none is queued (bounded: a flood that never stops ends it).
    fn drain(&mut self, now_ms: u64, sink: &mut impl FnMut(FlowRecord)) -> Result<(), CtError> {
        for _ in 0..1_000 {
            if self.recv(now_ms, sink)? == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Sweeps when the active timeout is due, or when events were lost (at most every
    /// [`RESYNC_MIN_INTERVAL_MS`]).
    pub fn tick(&mut self, now_ms: u64, sink: &mut impl FnMut(FlowRecord)) -> Result<(), CtError> {
        let resync = self.sock.resync_due()
            && now_ms >= self.last_sweep_ms.saturating_add(RESYNC_MIN_INTERVAL_MS);
        if now_ms >= self.next_sweep_ms || resync {
            if resync {
                tracing::warn!(
                    enobufs = self.sock.stats().enobufs,
                    "conntrack events lost (ENOBUFS): resynchronising by a counter sweep; \
                     raise [conntrack] rcvbuf"
                );
            }
            self.sweep(Export::Active, now_ms, sink)?;
        }
        Ok(())
    }

    fn sweep(
        &mut self,
        why: Export,
        now_ms: u64,
        sink: &mut impl FnMut(FlowRecord),
    ) -> Result<(), CtError> {
        let (rec, since) = (&mut self.recorder, self.last_sweep_ms);
        let wanted = rec.filter();
        self.sock.sweep(
            |e| wanted.wants(e.mark, e.zone),
            |e| rec.export(e, why, since, now_ms, sink),
        )?;
        self.last_sweep_ms = now_ms;
        self.next_sweep_ms = now_ms + self.active_ms;
        Ok(())
    }

    /// Shutdown: reads the queued events, reads and zeroes every connection's counters
    /// (end reason "forced end"), then reads the DESTROY events of connections that closed
    /// meanwhile. Nothing counted so far is left in the kernel, nothing is read twice.
    pub fn shutdown(
        mut self,
        now_ms: u64,
        sink: &mut impl FnMut(FlowRecord),
    ) -> Result<ConntrackSummary, CtError> {
        self.drain(now_ms, sink)?;
        self.sweep(Export::Shutdown, now_ms, sink)?;
        self.drain(now_ms, sink)?;
        Ok(self.summary())
    }

    pub fn summary(&self) -> ConntrackSummary {
        ConntrackSummary {
            socket: self.sock.stats().clone(),
            labels: self.recorder.labels().to_vec(),
            unlabelled: self.recorder.unlabelled,
            other_zone: self.recorder.other_zone,
        }
    }
}

/// Counters of the whole source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConntrackSummary {
    pub socket: CtSocketStats,
    pub labels: Vec<LabelStats>,
    pub unlabelled: u64,
    pub other_zone: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_off_are_refused_naming_the_file_or_set() {
        let dir = std::env::temp_dir().join(format!("lf-ct-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("nf_conntrack_acct"), "0\n").unwrap();
        std::fs::write(dir.join("nf_conntrack_timestamp"), "1\n").unwrap();
        let e = check_sysctls(&dir, false).unwrap_err().to_string();
        assert!(e.contains("nf_conntrack_acct is 0"), "{e}");
        assert!(e.contains("set_sysctls = true"), "{e}");
        check_sysctls(&dir, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("nf_conntrack_acct")).unwrap(),
            "1"
        );
        check_sysctls(&dir, false).unwrap();
        std::fs::remove_file(dir.join("nf_conntrack_acct")).unwrap();
        let e = check_sysctls(&dir, false).unwrap_err().to_string();
        assert!(e.contains("nf_conntrack module"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
