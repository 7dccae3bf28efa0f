//! The daemon around [`Ingest`]: UDP sockets (tokio), the ingest/commit thread, HTTP, and
//! the drain on shutdown.
//!
//! ```text
//!  recv thread per socket ──(batches of datagrams, bounded channel)──► ingest thread
//!   (blocking recvmmsg,   ◄──────────(emptied batches for reuse)─────   decode, aggregate,
//!    many datagrams per                                                 commit every
//!    system call)                                                       interval / N datagrams
//!  tokio: HTTP (axum), shutdown signal
//! ```
//!
//! Receiving gets its own threads so a burst is taken off the socket at once, whatever the
//! ingest thread is doing; the bounded channel then absorbs it.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::config::Config;
use crate::ingest::{Ingest, RateLimit, Snapshot};
use crate::store::Store;

/// Datagrams handed from a receiver to the ingest thread at once.
const BATCH: usize = 256;
/// Batches in flight between receivers and the ingest thread.
const CHANNEL: usize = 256;

/// Datagrams received per `recvmmsg` call.
const SLOTS: usize = 32;
/// Room for the largest UDP payload.
const MAX_DATAGRAM: usize = 65536;
/// How often a blocked receiver looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);
/// Emptied batches kept for reuse.
const SPARE: usize = 16;

/// A batch of datagrams: their bytes back to back, and each one's exporter and end offset.
#[derive(Debug, Default)]
struct Datagrams {
    bytes: Vec<u8>,
    ends: Vec<(IpAddr, usize)>,
}

impl Datagrams {
    fn push(&mut self, from: IpAddr, d: &[u8]) {
        self.bytes.extend_from_slice(d);
        self.ends.push((from, self.bytes.len()));
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (IpAddr, &[u8])> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(from, end)| {
            let d = &self.bytes[start..end];
            start = end;
            (from, d)
        })
    }
}

/// Emptied batches going back from the ingest thread to the receivers.
type Spares = Arc<Mutex<Vec<Datagrams>>>;

/// Bind one UDP socket with a large receive buffer.
pub fn bind_udp(addr: SocketAddr, recv_buffer: usize) -> io::Result<StdUdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(false).ok();
    }
    // SO_RCVBUFFORCE exceeds net.core.rmem_max when privileged; fall back otherwise.
    if s.set_recv_buffer_size(recv_buffer).is_ok() {
        set_rcvbuf_force(&s, recv_buffer);
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn set_rcvbuf_force(s: &Socket, size: usize) {
    use std::os::fd::AsRawFd;
    let v: libc::c_int = size.min(i32::MAX as usize / 2) as libc::c_int;
    // SAFETY: valid socket fd, pointer to a c_int that lives across the call.
    let _ = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Everything bound before the run starts.
#[derive(Debug)]
pub struct Bound {
    pub sockets: Vec<StdUdpSocket>,
    pub http: Option<std::net::TcpListener>,
    pub store: Store,
}

pub fn bind(cfg: &Config) -> anyhow::Result<Bound> {
    let mut sockets = Vec::new();
    for a in &cfg.listen {
        sockets.push(bind_udp(*a, cfg.recv_buffer).with_context(|| format!("binding UDP {a}"))?);
    }
    let http = match cfg.http {
        Some(a) => {
            let l = std::net::TcpListener::bind(a).with_context(|| format!("binding HTTP {a}"))?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };
    let store = Store::open(&cfg.db, cfg.max_templates_per_exporter.get())
        .with_context(|| format!("opening {}", cfg.db.display()))?;
    Ok(Bound {
        sockets,
        http,
        store,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Run until `shutdown` resolves, then stop receiving, commit what was received, return.
pub fn run(
    cfg: Config,
    bound: Bound,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Bound {
        sockets,
        http,
        store,
    } = bound;
    let metrics = Arc::new(Mutex::new(Snapshot::default()));
    let mut ingest = Ingest::new(&cfg);
    let restored = ingest
        .restore(&store)
        .context("loading persisted templates")?;
    tracing::info!(templates = restored, "restored persisted templates");

    let (tx, rx) = sync_channel::<Datagrams>(CHANNEL);
    let spares: Spares = Arc::new(Mutex::new(Vec::new()));
    let worker = {
        let cfg = cfg.clone();
        let metrics = metrics.clone();
        let spares = spares.clone();
        std::thread::Builder::new()
            .name("ingest".into())
            .spawn(move || ingest_loop(cfg, ingest, store, rx, spares, metrics))?
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for (i, s) in sockets.into_iter().enumerate() {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(STOP_POLL))?;
        let (tx, stop, spares, metrics) =
            (tx.clone(), stop.clone(), spares.clone(), metrics.clone());
        receivers.push(
            std::thread::Builder::new()
                .name(format!("recv{i}"))
                .spawn(move || receive(&s, &tx, &stop, &spares, &metrics))?,
        );
    }
    drop(tx);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        if let Some(l) = http {
            let listener = tokio::net::TcpListener::from_std(l)?;
            let app = crate::http::router(crate::http::AppState {
                db: cfg.db.clone(),
                metrics: metrics.clone(),
            });
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let r = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.changed().await;
                    })
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            });
        }
        shutdown.await;
        tracing::info!("shutting down: draining sockets and committing");
        let _ = stop_tx.send(true);
        Ok::<(), anyhow::Error>(())
    })?;
    // Receivers drain what the kernel holds, hand it over and end; then the ingest thread
    // sees the channel close, commits and ends.
    stop.store(true, Ordering::Release);
    for r in receivers {
        r.join()
            .map_err(|_| anyhow::anyhow!("receive thread panicked"))?;
    }
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("ingest thread panicked"))??;
    Ok(())
}

/// One socket's receive loop: blocking `recvmmsg`, batches handed to the ingest thread
/// (blocking when it is behind: the socket buffer absorbs bursts meanwhile). After `stop`,
/// drains what the kernel holds (nothing received is dropped here) and returns.
fn receive(
    sock: &StdUdpSocket,
    tx: &SyncSender<Datagrams>,
    stop: &AtomicBool,
    spares: &Spares,
    metrics: &Mutex<Snapshot>,
) {
    let mut ring = MultiRecv::new();
    let spare = || {
        spares
            .lock()
            .ok()
            .and_then(|mut s| s.pop())
            .unwrap_or_default()
    };
    let mut batch = spare();
    loop {
        let stopping = stop.load(Ordering::Acquire);
        match ring.recv(sock, !stopping) {
            Ok(n) => {
                for i in 0..n {
                    let (from, d) = ring.datagram(i);
                    batch.push(from, d);
                }
                // A full batch goes over, waiting for room if need be. Fewer datagrams than
                // asked for means the socket is drained: hand over what there is if the
                // channel has room, else keep filling this batch (the ingest thread is busy
                // with earlier ones), so that the channel's bound counts full batches.
                let full = batch.len() >= BATCH;
                if (full || n < SLOTS) && !hand_over(tx, &mut batch, full, &spare) {
                    return;
                }
                continue;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                if let Ok(mut m) = metrics.lock() {
                    m.receive_errors += 1;
                }
                tracing::debug!(error = %e, "recv");
            }
        }
        if !hand_over(tx, &mut batch, stopping, &spare) {
            return;
        }
        if stopping {
            return;
        }
    }
}

/// Hand `batch` (if not empty) to the ingest thread and start a new one; `wait` blocks
/// while the channel is full, otherwise a full channel leaves `batch` as it is. False when
/// the ingest thread is gone.
fn hand_over(
    tx: &SyncSender<Datagrams>,
    batch: &mut Datagrams,
    wait: bool,
    spare: &impl Fn() -> Datagrams,
) -> bool {
    if batch.is_empty() {
        return true;
    }
    let b = std::mem::take(batch);
    let sent = if wait {
        tx.send(b).map_err(|_| TrySendError::Disconnected(()))
    } else {
        tx.try_send(b).map_err(|e| match e {
            TrySendError::Full(b) => {
                *batch = b;
                TrySendError::Full(())
            }
            TrySendError::Disconnected(_) => TrySendError::Disconnected(()),
        })
    };
    match sent {
        Ok(()) => {
            *batch = spare();
            true
        }
        Err(TrySendError::Full(())) => true,
        Err(TrySendError::Disconnected(())) => false,
    }
}

/// Buffers and headers for `recvmmsg(2)`.
struct MultiRecv {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: [usize; SLOTS],
}

impl MultiRecv {
    fn new() -> MultiRecv {
        MultiRecv {
            bufs: vec![0; SLOTS * MAX_DATAGRAM],
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
            addrs: vec![unsafe { std::mem::zeroed() }; SLOTS],
            lens: [0; SLOTS],
        }
    }

    /// Receive up to [`SLOTS`] datagrams; `wait` blocks for the first (up to the socket's
    /// read timeout), otherwise returns `WouldBlock` when none is queued.
    fn recv(&mut self, sock: &StdUdpSocket, wait: bool) -> io::Result<usize> {
        // SAFETY: iovec and mmsghdr are plain data; all zeroes is a valid value.
        let mut iovs: [libc::iovec; SLOTS] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; SLOTS] = unsafe { std::mem::zeroed() };
        for (i, chunk) in self.bufs.chunks_exact_mut(MAX_DATAGRAM).enumerate() {
            iovs[i] = libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
        }
        let flags = if wait {
            libc::MSG_WAITFORONE
        } else {
            libc::MSG_DONTWAIT
        };
        // SAFETY: every header points into `self.bufs`, `self.addrs` and `iovs`, which
        // outlive the call; the count matches the array; no timeout pointer.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                SLOTS as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (len, h) in self.lens.iter_mut().zip(&hdrs[..n]) {
            *len = (h.msg_len as usize).min(MAX_DATAGRAM);
        }
        Ok(n)
    }

    /// Sender address and payload of datagram `i` of the last call.
    fn datagram(&self, i: usize) -> (IpAddr, &[u8]) {
        let a = &self.addrs[i];
        let from = match i32::from(a.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says this storage holds a sockaddr_in.
                let v4 =
                    unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says this storage holds a sockaddr_in6.
                let v6 =
                    unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)).to_canonical()
            }
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let at = i * MAX_DATAGRAM;
        (from, &self.bufs[at..at + self.lens[i]])
    }
}

fn ingest_loop(
    cfg: Config,
    mut ingest: Ingest,
    mut store: Store,
    rx: Receiver<Datagrams>,
    spares: Spares,
    metrics: Arc<Mutex<Snapshot>>,
) -> anyhow::Result<()> {
    lower_priority(INGEST_NICE);
    let mut limiter = RateLimit::default();
    let mut last_commit = Instant::now();
    let mut last_prune: Option<Instant> = None;
    let mut commits = (0u64, 0u64, 0u64);
    let publish = |ingest: &Ingest, commits: (u64, u64, u64)| {
        if let Ok(mut m) = metrics.lock() {
            ingest.fill(&mut m);
            m.commits = commits.0;
            m.commit_errors = commits.1;
            m.committed_datagrams = commits.2;
        }
    };
    let commit = |ingest: &mut Ingest, store: &mut Store, commits: &mut (u64, u64, u64)| {
        if ingest.pending_datagrams() == 0 {
            return;
        }
        let batch = ingest.take_batch();
        match store.commit(&batch.deltas, &batch.templates) {
            Ok(()) => {
                commits.0 += 1;
                commits.2 += batch.datagrams as u64;
            }
            Err(e) => {
                commits.1 += 1;
                tracing::error!(error = %e, datagrams = batch.datagrams, "commit failed; batch lost");
            }
        }
    };
    loop {
        let wait = cfg.commit_interval.saturating_sub(last_commit.elapsed());
        match rx.recv_timeout(wait) {
            Ok(mut batch) => {
                for (from, d) in batch.iter() {
                    match ingest.datagram(from, d) {
                        Ok(i) => {
                            if let Some(e) = i.error {
                                log_decode(&mut limiter, from, e);
                            }
                        }
                        Err(e) => log_decode(&mut limiter, from, e),
                    }
                    if ingest.pending_datagrams() >= cfg.commit_datagrams.get() {
                        commit(&mut ingest, &mut store, &mut commits);
                        last_commit = Instant::now();
                    }
                }
                publish(&ingest, commits);
                batch.bytes.clear();
                batch.ends.clear();
                if let Ok(mut s) = spares.lock() {
                    if s.len() < SPARE {
                        s.push(batch);
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                commit(&mut ingest, &mut store, &mut commits);
                publish(&ingest, commits);
                tracing::info!(commits = commits.0, "ingest drained");
                return Ok(());
            }
        }
        if last_commit.elapsed() >= cfg.commit_interval {
            commit(&mut ingest, &mut store, &mut commits);
            last_commit = Instant::now();
            publish(&ingest, commits);
        }
        if last_prune.is_none_or(|p| p.elapsed() >= cfg.prune_interval) {
            let now = (now_ms() / 1000) as i64;
            let a = &cfg.agg;
            match store.prune(&a.resolutions, &a.retention, now) {
                Ok(n) if n > 0 => tracing::info!(rows = n, "pruned expired buckets"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "prune failed"),
            }
            ingest.forget_before(
                now - (a.max_flow_duration_ms / 1000) as i64
                    - *a.resolutions.last().unwrap_or(&60) as i64,
            );
            last_prune = Some(Instant::now());
        }
    }
}

/// Niceness of the ingest thread: when the receivers and the ingest thread compete for a
/// core, the receivers win and move a burst off the socket (into the bounded channel)
/// before the kernel buffer overflows; the ingest thread catches up afterwards.
const INGEST_NICE: libc::c_int = 10;

/// Lower the calling thread's scheduling priority (Linux: niceness is per thread).
fn lower_priority(nice: libc::c_int) {
    // SAFETY: plain system calls on the calling thread's id.
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if r != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "setpriority");
    }
}

fn log_decode(limiter: &mut RateLimit, from: IpAddr, e: crate::session::DecodeError) {
    if let Some(suppressed) = limiter.allow(e.reason(), now_ms(), 10_000) {
        tracing::warn!(exporter = %from, reason = e.reason(), suppressed, "datagram not (fully) decoded: {e}");
    }
}
