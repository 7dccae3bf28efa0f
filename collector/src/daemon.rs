//! The daemon around [`Ingest`]: UDP sockets, the ingest thread, the store thread, HTTP
//! (tokio), and the drain on shutdown.
//!
//! ```text
//!  UDP sockets ──poll + recvmmsg──► ingest thread ──(one journal batch at a time)──► store
//!                 (many datagrams    decode, label,  handed over when the store thread   thread
//!                  per system call;  time rule,      is free; meanwhile records keep
//!                  with UDP_GRO      journal         adding up in the batch
//!                  several per read) encoding
//!  store thread: journal batch ──► one SQLite transaction (journal row, sequence numbers,
//!                templates, options state), then back to the ingest thread at once;
//!                no batch waiting ──► merge a slice of the journal (aggregation, rollups,
//!                key names) ──► commit the deltas with the journal rows' deletion
//!  tokio: HTTP (axum), shutdown signal
//! ```
//!
//! Decoding and journaling cost about a tenth of a microsecond per record, so one thread
//! receives and ingests: no hand-off per datagram, one wake-up per burst, and the socket's
//! receive buffer absorbs bursts as it does for nfcapd. What can stall (aggregating a
//! high-cardinality or backlog stream, an SQLite commit or checkpoint) runs on the store
//! thread and never holds up receiving: the journal takes records as fast as they come
//! (bounded by `limits.max_journal_bytes`), and the merge catches up behind it
//! ([`crate::journal`]).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::config::Config;
use crate::ingest::{Ingest, RateLimit, Snapshot};
use crate::journal::JournalBatch;
use crate::store::Store;

/// Reads per `recvmmsg` call (each one datagram, or with receive offload a batch of them).
const SLOTS: usize = 64;
/// Room for the largest UDP payload.
const MAX_DATAGRAM: usize = 65536;
/// How often a waiting ingest thread looks at the stop flag and the clock.
const POLL: Duration = Duration::from_millis(100);
/// How often the ingest thread publishes its counters for `/metrics`.
const PUBLISH: Duration = Duration::from_millis(250);

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
    let segment = crate::journal::recover(store.connection(), &cfg.db)
        .context("removing journal segments no row refers to")?;
    let writer = crate::journal::Writer::create(&cfg.db, segment).with_context(|| {
        let file = crate::journal::segment_path(&cfg.db, segment);
        format!("creating the journal segment {}", file.display())
    })?;

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
    let queued = Arc::new(AtomicUsize::new(0));
    // ingest thread ──(records, session state)──► writer thread ──(extent)──► store thread;
    // emptied record buffers go back to the ingest thread.
    let (tx, to_writer) = sync_channel::<JournalBatch>(JOURNAL_QUEUE);
    let (written, rx) = sync_channel::<JournalBatch>(JOURNAL_QUEUE);
    let (give_back, returned) = std::sync::mpsc::channel::<Vec<u8>>();
    let writer = {
        let (db, metrics) = (cfg.db.clone(), metrics.clone());
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer_loop(&db, writer, &to_writer, &written, &give_back, &metrics))?
    };
    // The store thread's id, for its priority at shutdown.
    let store_tid = Arc::new(AtomicI32::new(0));
    let storer = {
        let (cfg, metrics, busy) = (cfg.clone(), metrics.clone(), queued.clone());
        let tid = store_tid.clone();
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || store_loop(&cfg, store, segment, &rx, (&busy, &tid), &metrics))?
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
        let busy = queued.clone();
        for s in &sockets {
            s.set_nonblocking(true)?;
        }
        std::thread::Builder::new()
            .name("ingest".into())
            .spawn(move || {
                let hand = (&tx, &returned, &*busy);
                ingest_loop(&cfg, ingest, &sockets, hand, &stop, &metrics);
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
    // The store thread runs at a lower priority so that receiving comes first; what is left
    // to journal and merge now goes at the default one, so that SIGTERM ends promptly when
    // the cores are busy. setpriority(2) lets only a privileged process (CAP_SYS_NICE, or
    // an RLIMIT_NICE that allows it) raise a priority: otherwise the thread keeps its share.
    if let Some(tid) = rustix::process::Pid::from_raw(store_tid.load(Ordering::Acquire)) {
        if let Err(e) = rustix::process::setpriority_process(Some(tid), 0) {
            tracing::debug!(error = %e, "could not restore the store thread's priority");
        }
    }
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("ingest thread panicked"))?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("journal writer thread panicked"))?;
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
    tx: &'a SyncSender<JournalBatch>,
    /// Record buffers the writer thread is done with.
    returned: &'a Receiver<Vec<u8>>,
    /// Record buffers handed over and not yet returned.
    out: usize,
    /// Batches handed over and not yet journaled by the store thread.
    queued: &'a AtomicUsize,
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

    /// Write the pending batch's records to the journal and hand the batch to the store
    /// thread, unless [`JOURNAL_QUEUE`] batches already wait there; `false` only when the
    /// store thread has gone. With `wait` (a pending bound was reached), wait for room
    /// rather than keep the batch: backpressure, so memory stays bounded and the socket
    /// buffer holds what arrives meanwhile.
    fn hand_over(&mut self, ingest: &mut Ingest, wait: bool) -> bool {
        if !wait && self.queued.load(Ordering::Acquire) >= JOURNAL_QUEUE {
            return true;
        }
        while let Ok(buf) = self.returned.try_recv() {
            self.out -= 1;
            ingest.recycle(buf);
        }
        if self.out >= RECORD_BUFFERS - 1 {
            // Every buffer but the one filling is on its way to the segment file.
            if !wait {
                return true;
            }
            match self.returned.recv() {
                Ok(buf) => {
                    self.out -= 1;
                    ingest.recycle(buf);
                }
                Err(_) => return false,
            }
        }
        // Counters first, so that `/metrics` never shows more committed datagrams than
        // received ones.
        let batch = ingest.take_journal();
        self.out += usize::from(batch.parts.is_some());
        self.publish(ingest);
        self.queued.fetch_add(1, Ordering::AcqRel);
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
    (tx, returned, queued): (&SyncSender<JournalBatch>, &Receiver<Vec<u8>>, &AtomicUsize),
    stop: &AtomicBool,
    metrics: &Mutex<Snapshot>,
) {
    let mut ring = MultiRecv::new();
    let mut limiter = RateLimit::default();
    let mut hand = Handover {
        tx,
        returned,
        out: 0,
        queued,
        metrics,
        counts: ReceiveCounts::default(),
        last: Instant::now(),
        last_publish: Instant::now(),
    };
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
        let due = ingest.pending_datagrams() >= cfg.commit_datagrams.get()
            || (ingest.pending_datagrams() > 0 && hand.last.elapsed() >= cfg.commit_interval);
        if due && !hand.hand_over(&mut ingest, false) {
            return;
        }
        if hand.last_publish.elapsed() >= PUBLISH {
            hand.publish(&ingest);
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

mod store;
use store::{store_loop, writer_loop};

/// Journal batches the receiving thread may hand over before the store thread has
/// committed them: it writes their records itself, so a queued batch holds only session
/// state (sequence numbers, templates), and a merge commit on the store thread, however
/// long, does not make it wait.
const JOURNAL_QUEUE: usize = 64;

/// Record buffers of at most [`MAX_BATCH_BYTES`](crate::clickhouse::raw::MAX_BATCH_BYTES)
/// (plus a datagram) in use at once: one filling on the ingest thread, the others being
/// written. Past it a batch waits for a buffer: what bounds the records in memory.
const RECORD_BUFFERS: usize = 3;

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
