//! The daemon around [`Ingest`]: UDP sockets, the ingest thread, the store thread, HTTP
//! (tokio), and the drain on shutdown.
//!
//! ```text
//!  UDP sockets ──poll + recvmmsg──► ingest thread ──(one batch of deltas at a time)──► store
//!                 (many datagrams    decode, label,   handed over only when the store   thread:
//!                  per system call;  aggregate        thread is idle; meanwhile deltas  SQLite
//!                  with UDP_GRO                       keep adding up in the aggregator  commit
//!                  several per read)
//!  tokio: HTTP (axum), shutdown signal
//! ```
//!
//! Decoding and aggregating cost about a microsecond per full datagram, so one thread
//! receives and ingests: no hand-off per datagram, one wake-up per burst, and the socket's
//! receive buffer absorbs bursts as it does for nfcapd. What can stall (an SQLite commit or
//! checkpoint) runs on its own thread and never holds up receiving; while it runs, deltas
//! accumulate in the aggregator and go over as one larger batch. The hand-over itself is a
//! swap of the aggregator's pending maps: rolling the base buckets up into the coarser
//! resolutions and naming the keys happen on the store thread.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::aggregate::Rollup;
use crate::config::Config;
use crate::ingest::{Ingest, RateLimit, RawBatch, Snapshot};
use crate::store::Store;

/// Reads per `recvmmsg` call (each one datagram, or with receive offload a batch of them).
const SLOTS: usize = 64;
/// Room for the largest UDP payload.
const MAX_DATAGRAM: usize = 65536;
/// How often a waiting ingest thread looks at the stop flag and the clock.
const POLL: Duration = Duration::from_millis(100);
/// How often the ingest thread publishes its counters for `/metrics`.
const PUBLISH: Duration = Duration::from_millis(250);
/// A commit that took `d` (rendering included) is followed by the next one no sooner than
/// `STORE_SPACING * d` after it was handed over, unless a pending bound is reached: a commit
/// rewrites every key its open buckets touched, so under a high-cardinality stream commits
/// back to back would keep a core busy rewriting the same rows, while spaced ones cost the
/// store thread at most about 1 / `STORE_SPACING` of a core. Quick commits stay at
/// `commit_interval`.
const STORE_SPACING: u32 = 8;

/// `UDP_GRO` (linux/udp.h): receive offload on a UDP socket, Linux 5.0+. Per udp(7), the
/// socket "may receive multiple datagrams worth of data as a single large buffer, together
/// with a cmsg(3) that holds the segment size": the stack coalesces consecutive datagrams of
/// one sender and equal length (the last may be shorter) in its GRO engine, or hands over a
/// sender's GSO batch unsplit, and the reader cuts the buffer back into the same datagrams.
const UDP_GRO: libc::c_int = 104;

/// Bind one UDP socket with a large receive buffer, and UDP receive offload when `gro` is
/// set and the kernel has it (see [`UDP_GRO`]; without it every datagram is its own read).
pub fn bind_udp(addr: SocketAddr, recv_buffer: usize, gro: bool) -> io::Result<StdUdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(false).ok();
    }
    // SO_RCVBUFFORCE exceeds net.core.rmem_max when privileged; fall back otherwise.
    if s.set_recv_buffer_size(recv_buffer).is_ok() {
        set_int(&s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, recv_buffer);
    }
    if gro && !set_int(&s, libc::SOL_UDP, UDP_GRO, 1) {
        tracing::info!(%addr, error = %io::Error::last_os_error(), "UDP receive offload (GRO) unavailable: one read per datagram");
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Set an integer socket option; whether the kernel took it.
fn set_int(s: &Socket, level: libc::c_int, name: libc::c_int, value: usize) -> bool {
    use std::os::fd::AsRawFd;
    let v: libc::c_int = value.min(i32::MAX as usize / 2) as libc::c_int;
    // SAFETY: valid socket fd, pointer to a c_int that lives across the call.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
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
        let s = bind_udp(*a, cfg.recv_buffer, cfg.udp_gro);
        sockets.push(s.with_context(|| format!("binding UDP {a}"))?);
    }
    let http = match cfg.http {
        Some(a) => {
            if !a.ip().is_loopback() && cfg.http_token.is_none() {
                tracing::warn!(%a, "HTTP on a non-loopback address without http_token_file: reports and metrics are readable by anyone who can reach it");
            }
            let l = std::net::TcpListener::bind(a).with_context(|| format!("binding HTTP {a}"))?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };
    let mut store = Store::open(&cfg.db, cfg.max_templates_per_exporter.get())
        .with_context(|| format!("opening {}", cfg.db.display()))?;
    if cfg.clickhouse.is_some() {
        let (cells, batches) = store
            .enable_clickhouse_outbox((now_ms() * 1000) as i64, &cfg.agg.resolutions)
            .context("creating the ClickHouse outbox")?;
        if cells > 0 {
            tracing::info!(
                cells,
                batches,
                "clickhouse backfill: queued the cells committed before ClickHouse was configured"
            );
        }
    }
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
    let (templates, contexts, sequences) = ingest
        .restore(&store)
        .context("loading persisted templates, options and sequence state")?;
    let (committed, last_ms) = store.progress()?.unwrap_or((0, 0));
    tracing::info!(
        templates,
        contexts,
        sequences,
        committed_datagrams = committed,
        last_commit_age_s = (last_ms > 0).then(|| now_ms().saturating_sub(last_ms) / 1000),
        "recovered the committed state; what was received after the last commit shows as \
         sequence gaps (labelflow_collector_lost_across_restart_total) as exporters resume"
    );

    // Set from hand-over until the store thread has committed the batch.
    let store_busy = Arc::new(AtomicBool::new(false));
    // How long the last commit took, microseconds.
    let commit_us = Arc::new(AtomicU64::new(0));
    let (tx, rx) = sync_channel::<RawBatch>(1);
    let storer = {
        let (cfg, metrics, busy) = (cfg.clone(), metrics.clone(), store_busy.clone());
        let took = commit_us.clone();
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || store_loop(&cfg, store, &rx, (&busy, &took), &metrics))?
    };
    let stop = Arc::new(AtomicBool::new(false));
    // The ClickHouse sink stops after the store thread, so it sees the last commit.
    let sink_stop = Arc::new(AtomicBool::new(false));
    let sink = match &cfg.clickhouse {
        Some(ch) => {
            let s = crate::clickhouse::Sink::open(
                ch.clone(),
                cfg.agg.clone(),
                cfg.prune_interval,
                &cfg.db,
            )?;
            Some(crate::clickhouse::sink::spawn(
                s,
                sink_stop.clone(),
                metrics.clone(),
            )?)
        }
        None => None,
    };
    let worker = {
        let (cfg, stop, metrics) = (cfg.clone(), stop.clone(), metrics.clone());
        let busy = store_busy.clone();
        let took = commit_us.clone();
        for s in &sockets {
            s.set_nonblocking(true)?;
        }
        std::thread::Builder::new()
            .name("ingest".into())
            .spawn(move || {
                ingest_loop(&cfg, ingest, &sockets, &tx, (&busy, &took), &stop, &metrics);
            })?
    };

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
                token: cfg.http_token.as_deref().map(Arc::from),
                clickhouse: cfg.clickhouse.clone().filter(|c| c.serve_reports),
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
    // The ingest thread drains what the kernel holds, hands over its last batch and ends;
    // the store thread then sees the channel close, commits and ends.
    stop.store(true, Ordering::Release);
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("ingest thread panicked"))?;
    let stored = storer
        .join()
        .map_err(|_| anyhow::anyhow!("store thread panicked"));
    sink_stop.store(true, Ordering::Release);
    if let Some(s) = sink {
        s.join()
            .map_err(|_| anyhow::anyhow!("clickhouse sink thread panicked"))?;
    }
    stored??;
    Ok(())
}

/// Reads per socket per pass of the ingest loop (each up to [`SLOTS`] datagrams): the loop
/// looks at the stop flag, the commit clock and the pending bounds at least this often,
/// however fast datagrams arrive.
const READS_PER_PASS: usize = 16;
/// Longest the final drain on shutdown reads for: under a flood the queue never empties,
/// and what arrives after SIGTERM need not be taken.
const FINAL_DRAIN: Duration = Duration::from_millis(500);

/// The ingest thread's side of the hand-over to the store thread.
struct Handover<'a> {
    tx: &'a SyncSender<RawBatch>,
    store_busy: &'a AtomicBool,
    metrics: &'a Mutex<Snapshot>,
    counts: ReceiveCounts,
    last: Instant,
    last_publish: Instant,
}

impl Handover<'_> {
    fn publish(&mut self, ingest: &Ingest) {
        if let Ok(mut m) = self.metrics.lock() {
            ingest.fill(&mut m);
            m.receive_errors = self.counts.errors;
            m.gro_reads = self.counts.gro_reads;
            m.early_commits = self.counts.early_commits;
        }
        self.last_publish = Instant::now();
    }

    /// Hand the pending batch to the store thread if it is idle; `false` only when the
    /// store thread has gone. With `wait`, wait for it to finish the previous batch first: backpressure when a
    /// pending bound is reached, so memory stays bounded and the socket buffer holds what
    /// arrives meanwhile.
    fn hand_over(&mut self, ingest: &mut Ingest, wait: bool) -> bool {
        while self.store_busy.swap(true, Ordering::AcqRel) {
            if !wait {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Counters first (per-label totals count up to this batch), so that `/metrics`
        // never shows more committed datagrams than received ones.
        let batch = ingest.take_raw_batch();
        self.publish(ingest);
        // The store thread is idle, so the channel has room.
        let sent = self.tx.send(batch).is_ok();
        self.last = Instant::now();
        sent
    }
}

/// Receive from every socket and ingest, until `stop`; then drain the sockets (for at most
/// [`FINAL_DRAIN`]), hand over the last batch and return (dropping `tx` tells the store
/// thread to finish).
fn ingest_loop(
    cfg: &Config,
    mut ingest: Ingest,
    sockets: &[StdUdpSocket],
    tx: &SyncSender<RawBatch>,
    (store_busy, commit_us): (&AtomicBool, &AtomicU64),
    stop: &AtomicBool,
    metrics: &Mutex<Snapshot>,
) {
    let mut ring = MultiRecv::new();
    let mut limiter = RateLimit::default();
    let mut hand = Handover {
        tx,
        store_busy,
        metrics,
        counts: ReceiveCounts::default(),
        last: Instant::now(),
        last_publish: Instant::now(),
    };
    let mut last_forget = Instant::now();
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut drain_until: Option<Instant> = None;
    loop {
        if drain_until.is_none() && stop.load(Ordering::Acquire) {
            drain_until = Some(Instant::now() + FINAL_DRAIN);
        }
        ingest.set_clock(now_ms());
        let mut got = 0;
        for s in sockets {
            got += receive(s, &mut ring, &mut ingest, &mut hand, &mut limiter);
        }
        if let Some(until) = drain_until {
            if got == 0 || Instant::now() >= until {
                if ingest.pending_datagrams() > 0 {
                    hand.hand_over(&mut ingest, true);
                }
                hand.publish(&ingest);
                return;
            }
            continue;
        }
        // Hand the deltas over when due and the store thread is free; otherwise they keep
        // adding up here and go with the next batch.
        let took = Duration::from_micros(commit_us.load(Ordering::Relaxed));
        let spaced = hand.last.elapsed() >= took * STORE_SPACING;
        let due = spaced
            && (ingest.pending_datagrams() >= cfg.commit_datagrams.get()
                || (ingest.pending_datagrams() > 0 && hand.last.elapsed() >= cfg.commit_interval));
        if due && !hand.hand_over(&mut ingest, false) {
            return;
        }
        if hand.last_publish.elapsed() >= PUBLISH {
            hand.publish(&ingest);
        }
        if last_forget.elapsed() >= cfg.prune_interval {
            let a = &cfg.agg;
            ingest.forget_before(
                (now_ms() / 1000) as i64
                    - (a.max_flow_duration_ms / 1000) as i64
                    - *a.resolutions.last().unwrap_or(&60) as i64,
            );
            last_forget = Instant::now();
        }
        if got == 0 {
            // Nothing queued: sleep until a socket is readable or it is time to look at
            // the stop flag and the commit clock.
            let wait = POLL.min(cfg.commit_interval).as_millis() as libc::c_int;
            // SAFETY: `fds` is a valid array of pollfd of the given length.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait) };
        }
    }
}

/// Read and ingest up to [`READS_PER_PASS`] reads queued on one socket; the datagrams
/// taken. A pending bound reached mid-read hands the batch over at once.
fn receive(
    s: &StdUdpSocket,
    ring: &mut MultiRecv,
    ingest: &mut Ingest,
    hand: &mut Handover<'_>,
    limiter: &mut RateLimit,
) -> usize {
    let mut got = 0;
    for _ in 0..READS_PER_PASS {
        let n = match ring.recv(s) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                break
            }
            Err(e) => {
                hand.counts.errors += 1;
                tracing::debug!(error = %e, "recv");
                break;
            }
        };
        got += n;
        for i in 0..n {
            let (from, d, seg) = ring.datagram(i);
            hand.counts.gro_reads += u64::from(seg != 0 && d.len() > seg);
            for d in segments(d, seg) {
                if !ingest.admit(from) {
                    continue;
                }
                match ingest.datagram(from, d) {
                    Ok(r) => {
                        if let Some(e) = r.error {
                            log_decode(limiter, from, e);
                        }
                    }
                    Err(e) => log_decode(limiter, from, e),
                }
                if ingest.over_bound() {
                    hand.counts.early_commits += 1;
                    hand.hand_over(ingest, true);
                }
            }
        }
        if n < SLOTS {
            break;
        }
    }
    got
}

/// Commit batches as they come and prune expired buckets; returns when the ingest thread
/// has gone and its last batch is committed.
fn store_loop(
    cfg: &Config,
    mut store: Store,
    rx: &Receiver<RawBatch>,
    (busy, took): (&AtomicBool, &AtomicU64),
    metrics: &Mutex<Snapshot>,
) -> anyhow::Result<()> {
    let mut last_prune: Option<Instant> = None;
    let mut commits = (0u64, 0u64, 0u64);
    let mut rollup = Rollup::new(&cfg.agg);
    loop {
        match rx.recv_timeout(POLL) {
            Ok(raw) => {
                let t = Instant::now();
                // Rollups and key names here, off the receiving thread.
                let batch = raw.render(&mut rollup);
                match store.commit_batch(&batch, now_ms()) {
                    Ok(()) => {
                        commits.0 += 1;
                        commits.2 += batch.datagrams as u64;
                        tracing::debug!(
                            rows = batch.deltas.len(),
                            datagrams = batch.datagrams,
                            ms = t.elapsed().as_millis() as u64,
                            "committed"
                        );
                    }
                    Err(e) => {
                        commits.1 += 1;
                        tracing::error!(error = %e, datagrams = batch.datagrams, "commit failed; batch lost");
                    }
                }
                if let Ok(mut m) = metrics.lock() {
                    m.commits = commits.0;
                    m.commit_errors = commits.1;
                    m.committed_datagrams = commits.2;
                    m.rollup = rollup.stats;
                }
                took.store(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                busy.store(false, Ordering::Release);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                tracing::info!(commits = commits.0, "ingest drained");
                return Ok(());
            }
        }
        if last_prune.is_none_or(|p| p.elapsed() >= cfg.prune_interval) {
            let now = (now_ms() / 1000) as i64;
            let a = &cfg.agg;
            match store.prune(&a.resolutions, &a.retention, now) {
                Ok(n) if n > 0 => tracing::info!(rows = n, "pruned expired buckets"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "prune failed"),
            }
            rollup.forget_before(
                now - (a.max_flow_duration_ms / 1000) as i64
                    - *a.resolutions.last().unwrap_or(&60) as i64,
            );
            last_prune = Some(Instant::now());
        }
    }
}

/// The datagrams in one read: the whole buffer, or with receive offload (`seg`, the segment
/// size the kernel reported, non-zero) consecutive `seg`-octet datagrams, the last possibly
/// shorter. An empty datagram is still one (and is counted as malformed).
fn segments(d: &[u8], seg: usize) -> impl Iterator<Item = &[u8]> {
    let size = if seg == 0 { d.len().max(1) } else { seg };
    // `chunks` of an empty slice yields nothing.
    let empty = d.is_empty().then_some(d);
    d.chunks(size).chain(empty)
}

/// Receive-side counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
struct ReceiveCounts {
    errors: u64,
    /// Reads that carried several datagrams (UDP receive offload).
    gro_reads: u64,
    /// Batches handed over early because a pending bound was reached.
    early_commits: u64,
}

/// Control buffer per message: room for the `UDP_GRO` segment size (`CMSG_SPACE(4)`, 24
/// octets on 64-bit Linux), 8-aligned as `cmsghdr` wants.
type Control = [u64; 8];

/// Buffers and headers for `recvmmsg(2)`.
struct MultiRecv {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    ctrl: Vec<Control>,
    lens: [usize; SLOTS],
    /// Segment size of each message read with receive offload, else 0.
    segs: [usize; SLOTS],
}

impl MultiRecv {
    fn new() -> MultiRecv {
        MultiRecv {
            bufs: vec![0; SLOTS * MAX_DATAGRAM],
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
            addrs: vec![unsafe { std::mem::zeroed() }; SLOTS],
            ctrl: vec![[0; 8]; SLOTS],
            lens: [0; SLOTS],
            segs: [0; SLOTS],
        }
    }

    /// Receive up to [`SLOTS`] queued datagrams; `WouldBlock` when none is queued.
    fn recv(&mut self, sock: &StdUdpSocket) -> io::Result<usize> {
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
            h.msg_control = self.ctrl[i].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of::<Control>();
        }
        let flags = libc::MSG_DONTWAIT;
        // SAFETY: every header points into `self.bufs`, `self.addrs`, `self.ctrl` and `iovs`,
        // which outlive the call; the count matches the array; no timeout pointer.
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
        for (i, h) in hdrs[..n].iter().enumerate() {
            self.lens[i] = (h.msg_len as usize).min(MAX_DATAGRAM);
            self.segs[i] = gro_segment(&h.msg_hdr);
        }
        Ok(n)
    }

    /// Sender address, payload and segment size (0: one datagram) of message `i` of the
    /// last call.
    fn datagram(&self, i: usize) -> (IpAddr, &[u8], usize) {
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
        (from, &self.bufs[at..at + self.lens[i]], self.segs[i])
    }
}

/// The `UDP_GRO` segment size among a received message's control messages, else 0.
fn gro_segment(h: &libc::msghdr) -> usize {
    let mut seg = 0;
    // SAFETY: `h` is a header recvmmsg filled: msg_control points to its control buffer
    // (still alive in MultiRecv) and msg_controllen says how much of it the kernel wrote,
    // which is what the CMSG_* walk reads; a UDP_GRO message carries one c_int.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                seg = usize::try_from(v).unwrap_or(0);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    seg
}

fn log_decode(limiter: &mut RateLimit, from: IpAddr, e: crate::session::DecodeError) {
    if let Some(suppressed) = limiter.allow(e.reason(), now_ms(), 10_000) {
        tracing::warn!(exporter = %from, reason = e.reason(), suppressed, "datagram not (fully) decoded: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cut_where_the_sender_did() {
        let d: Vec<u8> = (0..10).collect();
        let cut = |seg| segments(&d, seg).collect::<Vec<_>>();
        assert_eq!(cut(4), [&d[0..4], &d[4..8], &d[8..10]]);
        assert_eq!(cut(5), [&d[0..5], &d[5..10]]);
        assert_eq!(cut(0), [&d[..]]);
        assert_eq!(cut(10), [&d[..]]);
        assert_eq!(cut(64), [&d[..]]);
        // An empty datagram is still one, offload or not.
        assert_eq!(segments(&[], 0).collect::<Vec<_>>(), [&[] as &[u8]]);
        assert_eq!(segments(&[], 4).count(), 1);
    }
}
