//! The vici client: a thread that keeps a [`TunnelTable`] in step with charon.
//!
//! ```text
//!  connect ─► register child-updown, child-rekey, ike-updown, ike-rekey, list-sa
//!          ─► list-sas (streamed as list-sa events) ─► TunnelTable::update
//!          ─► wait: an SA event, or 30 s ─► list-sas again
//!  any error ─► logged, reconnect after 1 s, 2 s, ... 30 s; counting never waits on it
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use labelflow_proto::FlowRecord;

use super::table::{children_of, TunnelTable};
use super::vici::{frame_len, named_packet, Op, Packet, ViciError};
use crate::decode::IpsecPorts;

/// Events after which the SA listing is taken again.
const EVENTS: [&str; 4] = ["child-updown", "child-rekey", "ike-updown", "ike-rekey"];
/// The listing is refreshed at least this often even without events.
const REFRESH: Duration = Duration::from_secs(30);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one read may block, so that a stop request is seen promptly.
const READ_TICK: Duration = Duration::from_millis(250);

/// What the client has done so far.
#[derive(Debug, Default)]
pub struct ViciStats {
    /// Successful connections to charon.
    pub connects: AtomicU64,
    /// Connections lost or refused, and protocol errors.
    pub errors: AtomicU64,
    /// SA listings applied to the table.
    pub snapshots: AtomicU64,
}

/// A running vici client; stops when dropped.
#[derive(Debug)]
pub struct ViciWatcher {
    table: Arc<Mutex<TunnelTable>>,
    stop: Arc<AtomicBool>,
    stats: Arc<ViciStats>,
    thread: Option<JoinHandle<()>>,
}

impl ViciWatcher {
    /// Starts the client for the socket at `path` (`unix://PATH` URIs are resolved by the
    /// configuration). It never fails: an absent daemon is retried in the background.
    pub fn spawn(path: PathBuf, ports: IpsecPorts) -> ViciWatcher {
        let table = Arc::new(Mutex::new(TunnelTable::new(ports)));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ViciStats::default());
        let (t, s, st) = (table.clone(), stop.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("vici".into())
            .spawn(move || run(&path, &t, &s, &st))
            .ok();
        ViciWatcher {
            table,
            stop,
            stats,
            thread,
        }
    }

    /// The connection a record belongs to, as far as charon has told.
    pub fn name_of(&self, r: &FlowRecord) -> Option<String> {
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.name_of(r).map(|n| n.to_string())
    }

    pub fn stats(&self) -> &ViciStats {
        &self.stats
    }
}

impl Drop for ViciWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(path: &std::path::Path, table: &Mutex<TunnelTable>, stop: &AtomicBool, stats: &ViciStats) {
    let mut backoff = Duration::from_secs(1);
    let mut failures = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match session(path, table, stop, stats) {
            Ok(()) => return,
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                failures += 1;
                // The first failure and then every tenth: a daemon that is down for long
                // does not flood the log.
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(
                        socket = %path.display(),
                        failures,
                        "vici: {e}; tunnel names wait, counting goes on; retrying"
                    );
                }
            }
        }
        let until = Instant::now() + backoff;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(READ_TICK.min(until.saturating_duration_since(Instant::now())));
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] ViciError),
    #[error("charon refused {0}")]
    Refused(String),
}

/// One connection: returns `Ok` only when asked to stop.
fn session(
    path: &std::path::Path,
    table: &Mutex<TunnelTable>,
    stop: &AtomicBool,
    stats: &ViciStats,
) -> Result<(), SessionError> {
    let mut conn = Conn::new(UnixStream::connect(path)?)?;
    stats.connects.fetch_add(1, Ordering::Relaxed);
    for ev in EVENTS.iter().chain(&["list-sa"]) {
        conn.send(&named_packet(Op::EventRegister, ev))?;
        loop {
            let Some(p) = conn.recv(stop)? else {
                return Ok(());
            };
            match Packet::parse(&p)?.op {
                Op::EventConfirm => break,
                Op::EventUnknown => return Err(SessionError::Refused(format!("event {ev}"))),
                _ => {}
            }
        }
    }
    tracing::info!(socket = %path.display(), "vici: connected to charon");
    loop {
        conn.send(&named_packet(Op::CmdRequest, "list-sas"))?;
        let mut children = Vec::new();
        loop {
            let Some(p) = conn.recv(stop)? else {
                return Ok(());
            };
            let p = Packet::parse(&p)?;
            match p.op {
                Op::Event if p.name == b"list-sa" => children.extend(children_of(p.message)?),
                Op::CmdResponse => break,
                Op::CmdUnknown => return Err(SessionError::Refused("list-sas".into())),
                _ => {}
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(&children, now);
        stats.snapshots.fetch_add(1, Ordering::Relaxed);
        // Wait for an SA event (or the refresh interval), then list again.
        let until = Instant::now() + REFRESH;
        while Instant::now() < until {
            match conn.recv_until(stop, until)? {
                Recv::Stop => return Ok(()),
                Recv::Timeout => break,
                Recv::Packet(p) => {
                    let p = Packet::parse(&p)?;
                    if p.op == Op::Event && p.name != b"list-sa" {
                        break;
                    }
                }
            }
        }
    }
}

enum Recv {
    Packet(Vec<u8>),
    Timeout,
    Stop,
}

/// A framed stream: length-prefixed packets, read with a short timeout so that stop requests
/// are seen.
struct Conn {
    s: UnixStream,
    buf: Vec<u8>,
}

impl Conn {
    fn new(s: UnixStream) -> std::io::Result<Conn> {
        s.set_read_timeout(Some(READ_TICK))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(Conn { s, buf: Vec::new() })
    }

    fn send(&mut self, packet: &[u8]) -> std::io::Result<()> {
        self.s.write_all(packet)
    }

    /// The next packet; `None` when asked to stop.
    fn recv(&mut self, stop: &AtomicBool) -> Result<Option<Vec<u8>>, SessionError> {
        // A command answer may take a while (many SAs): no deadline but the stop flag.
        match self.recv_until(stop, Instant::now() + Duration::from_secs(3600))? {
            Recv::Packet(p) => Ok(Some(p)),
            Recv::Stop => Ok(None),
            Recv::Timeout => Err(SessionError::Io(std::io::ErrorKind::TimedOut.into())),
        }
    }

    fn recv_until(&mut self, stop: &AtomicBool, until: Instant) -> Result<Recv, SessionError> {
        loop {
            if self.buf.len() >= 4 {
                let n = frame_len([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])?;
                if self.buf.len() >= 4 + n {
                    let p = self.buf[4..4 + n].to_vec();
                    self.buf.drain(..4 + n);
                    return Ok(Recv::Packet(p));
                }
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(Recv::Stop);
            }
            if Instant::now() >= until {
                return Ok(Recv::Timeout);
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.s.read(&mut chunk) {
                Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}
