//! `UdpExporter`: the IO shell over [`ExportState`]s, one UDP socket per target, each
//! paced by its own [`Pacer`] (records per second) when a rate is set.
//!
//! Pacing waits here, in the caller's thread: records are handed to a target's state only
//! as fast as its bucket allows, so a full message leaves at most `burst` records after the
//! previous ones. The wait is backpressure on whatever pushes (the cache flush at shutdown,
//! a burst of expiries); this shell reads the monotonic clock, the bucket itself does not.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use labelflow_proto::FlowRecord;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{ExportConfig, ExportMeta, ExportState, ExportStats, Pacer, Target};

/// Counters of one target, as the daemon reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetStats {
    pub target: Target,
    pub export: ExportStats,
    /// Datagrams the kernel refused (counted, never fatal).
    pub send_errors: u64,
    pub last_send_error: Option<i32>,
    /// Times pacing made the exporter wait, and for how long in total.
    pub pacing_waits: u64,
    pub pacing_wait: Duration,
}

#[derive(Debug)]
struct Slot {
    target: Target,
    dest: SockAddr,
    socket: Socket,
    state: ExportState,
    send_errors: u64,
    last_send_error: Option<i32>,
    pacer: Option<Pacer>,
    /// Records granted by the pacer and not yet pushed.
    credit: u64,
    pacing_waits: u64,
    pacing_wait: Duration,
}

impl Slot {
    /// Takes one record of credit, waiting for the pacer when there is none.
    fn pace(&mut self, origin: Instant) {
        let Some(pacer) = &mut self.pacer else {
            return;
        };
        if self.credit == 0 {
            loop {
                let now = origin.elapsed().as_nanos() as u64;
                match pacer.grant(now) {
                    Ok(n) => {
                        self.credit = n;
                        break;
                    }
                    Err(at) => {
                        // At least 1 ms (never more than a burst: the bucket holds 10 ms):
                        // one sleep per record would cost a system call per record.
                        let wait = Duration::from_nanos(at - now).max(MIN_PACING_SLEEP);
                        self.pacing_waits += 1;
                        self.pacing_wait += wait;
                        std::thread::sleep(wait);
                    }
                }
            }
        }
        self.credit -= 1;
    }
}

/// Shortest pacing sleep.
const MIN_PACING_SLEEP: Duration = Duration::from_millis(1);

/// Sends every flow to each configured target in its format.
#[derive(Debug)]
pub struct UdpExporter {
    slots: Vec<Slot>,
    /// Origin of the monotonic clock the pacers are driven with.
    origin: Instant,
}

fn send(socket: &Socket, dest: &SockAddr, buf: &[u8], errors: &mut u64, last: &mut Option<i32>) {
    if let Err(e) = socket.send_to(buf, dest) {
        *errors += 1;
        *last = e.raw_os_error();
    }
}

impl UdpExporter {
    /// Opens one unconnected UDP socket per target (bound to the wildcard address of the
    /// target's family), with `send_buffer` octets of send buffer when given.
    pub fn new(
        targets: &[Target],
        cfg: ExportConfig,
        send_buffer: Option<usize>,
    ) -> io::Result<Self> {
        let mut slots = Vec::with_capacity(targets.len());
        for t in targets {
            let domain = match t.addr {
                SocketAddr::V4(_) => Domain::IPV4,
                SocketAddr::V6(_) => Domain::IPV6,
            };
            let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
            if let Some(n) = send_buffer {
                socket.set_send_buffer_size(n)?;
            }
            let any: SocketAddr = match t.addr {
                SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            socket.bind(&any.into())?;
            slots.push(Slot {
                target: *t,
                dest: t.addr.into(),
                socket,
                state: ExportState::new(t.format, cfg),
                send_errors: 0,
                last_send_error: None,
                pacer: None,
                credit: 0,
                pacing_waits: 0,
                pacing_wait: Duration::ZERO,
            });
        }
        Ok(UdpExporter {
            slots,
            origin: Instant::now(),
        })
    }

    /// Paces every target at `max_rate` records per second (bursts of 10 ms of the rate);
    /// 0 sends as fast as records come.
    pub fn with_max_rate(mut self, max_rate: u32) -> Self {
        for s in &mut self.slots {
            s.pacer = (max_rate > 0).then(|| Pacer::with_rate(max_rate));
            s.credit = 0;
        }
        self
    }

    pub fn set_meta(&mut self, meta: &ExportMeta) {
        for s in &mut self.slots {
            s.state.set_meta(meta.clone());
        }
    }

    /// Runs `op` on every target's state with a sink that sends to that target.
    fn each(&mut self, mut op: impl FnMut(&mut ExportState, &mut dyn FnMut(&[u8]))) {
        for s in &mut self.slots {
            let Slot {
                socket,
                dest,
                state,
                send_errors,
                last_send_error,
                ..
            } = s;
            op(state, &mut |b| {
                send(socket, dest, b, send_errors, last_send_error)
            });
        }
    }

    /// Adds `rec` to every target, after waiting for each target's pacer.
    pub fn push(&mut self, rec: &FlowRecord, now_ms: u64) {
        let origin = self.origin;
        for s in &mut self.slots {
            s.pace(origin);
            let Slot {
                socket,
                dest,
                state,
                send_errors,
                last_send_error,
                ..
            } = s;
            state.push(rec, now_ms, |b| {
                send(socket, dest, b, send_errors, last_send_error)
            });
        }
    }

    pub fn tick(&mut self, now_ms: u64) {
        self.each(|state, sink| state.tick(now_ms, sink));
    }

    pub fn flush(&mut self) {
        self.each(|state, sink| state.flush(sink));
    }

    /// Sends the open messages, then templates and options (current loss counters).
    pub fn send_options(&mut self, now_ms: u64) {
        self.each(|state, sink| state.send_options(now_ms, sink));
    }

    /// Earliest `tick` deadline over all targets, ms since the epoch.
    pub fn next_deadline(&self) -> Option<u64> {
        self.slots
            .iter()
            .filter_map(|s| s.state.next_deadline())
            .min()
    }

    pub fn stats(&self) -> Vec<TargetStats> {
        self.slots
            .iter()
            .map(|s| TargetStats {
                target: s.target,
                export: *s.state.stats(),
                send_errors: s.send_errors,
                last_send_error: s.last_send_error,
                pacing_waits: s.pacing_waits,
                pacing_wait: s.pacing_wait,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    #[test]
    fn sends_to_each_target_and_counts_errors() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let port = rx.local_addr().unwrap().port();
        let targets: Vec<Target> = [
            format!("ipfix://127.0.0.1:{port}"),
            format!("netflow5://127.0.0.1:{port}"),
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let mut ex = UdpExporter::new(&targets, ExportConfig::default(), Some(1 << 20)).unwrap();
        let rec = FlowRecord {
            group: Some(1),
            src_addr: "10.0.0.1".parse().unwrap(),
            dst_addr: "10.0.0.2".parse().unwrap(),
            packets: 1,
            bytes: 60,
            ..FlowRecord::default()
        };
        ex.push(&rec, 1_700_000_000_000);
        ex.flush();
        let mut buf = [0u8; 2048];
        let mut versions = Vec::new();
        for _ in 0..2 {
            let n = rx.recv(&mut buf).unwrap();
            assert!(n >= 24);
            versions.push(u16::from_be_bytes([buf[0], buf[1]]));
        }
        versions.sort();
        assert_eq!(versions, vec![5, 10]);
        assert!(ex.stats().iter().all(|s| s.pacing_waits == 0));
        let st = ex.stats();
        assert_eq!(st.len(), 2);
        assert!(st
            .iter()
            .all(|s| s.export.messages == 1 && s.export.records == 1 && s.send_errors == 0));
    }

    #[test]
    fn pacing_spreads_records_at_the_rate() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let target: Target = format!("ipfix://{}", rx.local_addr().unwrap())
            .parse()
            .unwrap();
        // 2000 records/s, bursts of 20: 100 records need at least 40 ms.
        let mut ex = UdpExporter::new(&[target], ExportConfig::default(), None)
            .unwrap()
            .with_max_rate(2_000);
        let rec = FlowRecord {
            src_addr: "10.0.0.1".parse().unwrap(),
            dst_addr: "10.0.0.2".parse().unwrap(),
            packets: 1,
            bytes: 60,
            ..FlowRecord::default()
        };
        let start = std::time::Instant::now();
        for _ in 0..100 {
            ex.push(&rec, 1_700_000_000_000);
        }
        ex.flush();
        let took = start.elapsed();
        let st = ex.stats()[0];
        assert_eq!(st.export.records, 100);
        assert!(took >= Duration::from_millis(40), "{took:?}");
        // Sleeps of at least 1 ms (2 records at this rate), not one per record. (How long
        // they add up to depends on how long the test thread waited for a CPU besides.)
        assert!((1..=40).contains(&st.pacing_waits), "{st:?}");
    }
}
