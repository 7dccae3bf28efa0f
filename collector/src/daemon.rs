//! The daemon around [`Ingest`]: UDP sockets, the receiving, decoding, journal writer and
//! store threads, HTTP (tokio), and the drain on shutdown.
//!
//! ```text
//!  UDP sockets ──poll + recvmmsg──► receive thread ──chunks──► ingest thread ──► journal
//!                 (many datagrams    allowlist, copy   (spool:    decode, label,  writer
//!                  per system call;  into a chunk      memory,    time rule,      thread
//!                  with UDP_GRO                        then a     journal         ──► store
//!                  several per read)                   file)      encoding            thread
//!  store thread: journal batch ──► one SQLite transaction (journal row, sequence numbers,
//!                templates, options state), then back to the ingest thread at once;
//!                no batch waiting ──► merge a slice of the journal (aggregation, rollups,
//!                key names) ──► commit the deltas with the journal rows' deletion
//!  tokio: HTTP (axum), shutdown signal
//! ```
//!
//! Receiving comes first. The receive thread only reads, checks the allowlist and copies
//! datagrams into chunks for the ingest thread ([`crate::spool`]): a few tens of
//! nanoseconds a record, most of it the kernel's. Everything else runs behind it at a lower
//! priority, and steps aside while a socket's queue fills ([`crate::spool::Pressure`]):
//! when the cores are busy, a burst is spooled to disk as fast as it arrives and decoded,
//! journaled and merged as the cores allow, in order. What can stall for longer
//! (aggregating a high-cardinality or backlog stream, an SQLite commit or checkpoint) runs
//! on the store thread: the journal takes records as fast as they are decoded (bounded by
//! `limits.max_journal_bytes`), and the merge catches up behind it ([`crate::journal`]).

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
/// Longest a read waits in the receiving thread's chunk before the decoder gets it, when
/// datagrams come slower than a chunk fills.
const FLUSH: Duration = Duration::from_millis(2);
/// How long the receiving thread waits when its sockets run dry in the middle of a stream,
/// before it reads again (not waking up per datagram), and the least receive buffer
/// (`recv_buffer`) for which it does: 1 ms of 300,000 datagrams a second is about 700 KiB
/// of the buffer's accounting (a loopback datagram of 1,400 octets takes about 2.3 KiB).
const NAP: Duration = Duration::from_millis(1);
const NAP_BUFFER: usize = 4 << 20;
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
    let (spool_tx, spool_rx, spool_stats, left) =
        crate::spool::open(&cfg.db, cfg.max_spool_bytes.get() as u64).with_context(|| {
            let file = crate::spool::spool_path(&cfg.db);
            format!("creating the spool file {}", file.display())
        })?;
    if left > 0 {
        tracing::warn!(
            octets = left,
            "the spool held datagrams received before the last stop and never decoded: \
             discarded (they show as sequence gaps as exporters resume)"
        );
    }
    if let Ok(mut m) = metrics.lock() {
        m.spool = Some(spool_stats.clone());
    }
    // Threads behind the receiving one (ids), whose priority goes back up at shutdown.
    let behind = Arc::new(Mutex::new(Vec::<i32>::new()));
    let writer = {
        let (db, metrics, behind) = (cfg.db.clone(), metrics.clone(), behind.clone());
        let spool = spool_stats.clone();
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || {
                lower_priority(&behind);
                let to = (&written, &give_back);
                writer_loop(&db, writer, &to_writer, to, &metrics, &spool)
            })?
    };
    // The store thread's id, for its priority at shutdown.
    let store_tid = Arc::new(AtomicI32::new(0));
    let storer = {
        let (cfg, metrics, busy) = (cfg.clone(), metrics.clone(), queued.clone());
        let (tid, spool) = (store_tid.clone(), spool_stats.clone());
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || store_loop(&cfg, store, segment, &rx, (&busy, &tid), &metrics, &spool))?
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
        let (cfg, metrics, behind) = (cfg.clone(), metrics.clone(), behind.clone());
        let busy = queued.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("ingest".into())
            .spawn(move || {
                lower_priority(&behind);
                let hand = (&tx, &returned, &*busy);
                decode_loop(&cfg, ingest, spool_rx, hand, &stop, &metrics);
            })?
    };
    let receiver = {
        let (cfg, stop, metrics) = (cfg.clone(), stop.clone(), metrics.clone());
        for s in &sockets {
            s.set_nonblocking(true)?;
        }
        std::thread::Builder::new()
            .name("receive".into())
            .spawn(move || receive_loop(&cfg, &sockets, spool_tx, &stop, &metrics))?
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
    spool_stats.pressure.release();
    // The threads behind the receiving one run at a lower priority so that receiving comes
    // first; what is left to decode, journal and merge now goes at the default one, so
    // that SIGTERM ends promptly when the cores are busy. setpriority(2) lets only a
    // privileged process (CAP_SYS_NICE, or an RLIMIT_NICE that allows it) raise a
    // priority: otherwise the threads keep their share.
    let mut tids = behind.lock().map(|v| v.clone()).unwrap_or_default();
    tids.push(store_tid.load(Ordering::Acquire));
    for tid in tids {
        if let Some(tid) = rustix::process::Pid::from_raw(tid) {
            if let Err(e) = rustix::process::setpriority_process(Some(tid), 0) {
                tracing::debug!(error = %e, "could not restore a thread's priority");
            }
        }
    }
    receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receive thread panicked"))?;
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
/// Longest the decoder goes on decoding the spool after SIGTERM (a spool of a full
/// `limits.max_spool_bytes` takes longer); what is left is dropped and counted.
const FINAL_DECODE: Duration = Duration::from_secs(2);

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
    /// Batches handed over early because a pending bound was reached.
    early_commits: u64,
    last: Instant,
    last_publish: Instant,
}

impl Handover<'_> {
    fn publish(&mut self, ingest: &Ingest) {
        if let Ok(mut m) = self.metrics.lock() {
            ingest.fill(&mut m);
            m.early_commits = self.early_commits;
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

/// Nice value of the threads behind the receiving one (decoding, the journal writer, the
/// store): about a tenth of a core's share each against a busy receiving thread, all of an
/// idle core otherwise (setpriority on a thread id sets that thread's nice value,
/// setpriority(2)).
const BEHIND_NICE: i32 = 10;

/// Run the calling thread at [`BEHIND_NICE`] and note its id in `behind`.
fn lower_priority(behind: &Mutex<Vec<i32>>) {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), BEHIND_NICE) {
        tracing::debug!(error = %e, "could not lower a thread's priority");
    }
    if let Ok(mut v) = behind.lock() {
        v.push(rustix::process::Pid::as_raw(Some(tid)));
    }
}

/// Receive from every socket into the spool, until `stop`; then drain the sockets (for at
/// most [`FINAL_DRAIN`]), hand over the last chunk and return (dropping the spool's sending
/// side tells the decoder to finish). Only the allowlist is looked at here: a datagram
/// costs a share of a `recvmmsg(2)` and a copy, and behind a busy decoder a share of a
/// `write(2)` ([`crate::spool`]).
fn receive_loop(
    cfg: &Config,
    sockets: &[StdUdpSocket],
    mut spool: crate::spool::SpoolTx,
    stop: &AtomicBool,
    metrics: &Mutex<Snapshot>,
) {
    let mut ring = MultiRecv::new();
    let mut admission = crate::ingest::Admission::new(cfg);
    let mut r = Receiving {
        chunk: spool.chunk(),
        in_chunk: 0,
        counts: ReceiveCounts::default(),
        refused: 0,
        spool,
        open: true,
        since: None,
    };
    let mut published = (ReceiveCounts::default(), 0);
    let mut last_publish = Instant::now();
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut drain_until: Option<Instant> = None;
    // Whether the receive buffer holds what arrives in a NAP at a few hundred thousand
    // datagrams a second, and whether the last pass read anything.
    let napping = cfg.recv_buffer >= NAP_BUFFER;
    let mut busy = false;
    let publish = |r: &Receiving, admission: &crate::ingest::Admission| {
        if let Ok(mut m) = metrics.lock() {
            m.receive_errors = r.counts.errors;
            m.gro_reads = r.counts.gro_reads;
            admission.fill(&mut m);
        }
    };
    while r.open {
        if drain_until.is_none() && stop.load(Ordering::Acquire) {
            drain_until = Some(Instant::now() + FINAL_DRAIN);
        }
        let now = now_ms();
        let mut got = 0;
        for s in sockets {
            got += r.receive(s, &mut ring, &mut admission, now);
        }
        if let Some(until) = drain_until {
            if got == 0 || Instant::now() >= until {
                break;
            }
            continue;
        }
        if got == 0 && napping && busy {
            // The queue ran dry in the middle of a stream: let a few datagrams gather
            // rather than wake up for each (a wake-up costs a few microseconds, as much as
            // receiving a dozen datagrams); the receive buffer holds them meanwhile.
            busy = false;
            std::thread::sleep(NAP);
            continue;
        }
        busy = got > 0;
        if got == 0 {
            // Nothing queued: what was read goes to the decoder once it is FLUSH old (one
            // hand-over per few datagrams at low rates), then sleep until a socket is
            // readable, the chunk is due or it is time to look at the stop flag.
            let mut wait = POLL;
            if let Some(since) = r.since {
                match FLUSH.checked_sub(since.elapsed()) {
                    Some(left) if !left.is_zero() => wait = left,
                    _ => r.flush(),
                }
            }
            if (r.counts, r.refused) != published || last_publish.elapsed() >= PUBLISH {
                publish(&r, &admission);
                published = (r.counts, r.refused);
                last_publish = Instant::now();
            }
            // SAFETY: `fds` is a valid array of pollfd of the given length.
            unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    wait.as_millis().max(1) as libc::c_int,
                )
            };
        } else if last_publish.elapsed() >= PUBLISH {
            publish(&r, &admission);
            published = (r.counts, r.refused);
            last_publish = Instant::now();
        }
    }
    r.flush();
    publish(&r, &admission);
}

/// The receiving thread's state: the chunk being filled and its counters.
struct Receiving {
    spool: crate::spool::SpoolTx,
    chunk: Vec<u8>,
    /// Datagrams in `chunk` (a read with receive offload may carry several).
    in_chunk: u64,
    counts: ReceiveCounts,
    refused: u64,
    /// Whether the decoder is still there.
    open: bool,
    /// When the first read of `chunk` came.
    since: Option<Instant>,
}

impl Receiving {
    /// Hand the chunk being filled to the decoder.
    fn flush(&mut self) {
        if self.in_chunk == 0 {
            return;
        }
        self.since = None;
        let chunk = std::mem::take(&mut self.chunk);
        let (open, next) = self.spool.send(chunk, std::mem::take(&mut self.in_chunk));
        self.chunk = next;
        self.open &= open;
    }

    /// Read up to [`READS_PER_PASS`] reads queued on one socket into the spool; the reads
    /// taken.
    fn receive(
        &mut self,
        s: &StdUdpSocket,
        ring: &mut MultiRecv,
        admission: &mut crate::ingest::Admission,
        now_ms: u64,
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
                    self.counts.errors += 1;
                    tracing::debug!(error = %e, "recv");
                    break;
                }
            };
            got += n;
            if n == SLOTS && queue_filling(s) {
                self.spool.stats().pressure.press(now_ms);
            }
            for i in 0..n {
                let (from, d, seg) = ring.datagram(i);
                let datagrams = segments(d, seg).count() as u64;
                self.counts.gro_reads += u64::from(datagrams > 1);
                if !admission.admit(from) {
                    self.refused += datagrams;
                    continue;
                }
                let e = crate::spool::Entry {
                    from,
                    received_ms: now_ms,
                    segment: if datagrams > 1 { seg } else { 0 },
                    bytes: d,
                };
                if !crate::spool::push(&mut self.chunk, &e) {
                    self.flush();
                    crate::spool::push(&mut self.chunk, &e);
                }
                self.since.get_or_insert_with(Instant::now);
                self.in_chunk += datagrams;
            }
            if n < SLOTS {
                break;
            }
        }
        got
    }
}

/// Decode what the receiving thread spooled, label it and hand journal batches to the
/// writer and store threads, until the receiving thread has gone and the spool is empty;
/// then hand over the last batch and return (dropping `tx` tells the writer and store
/// threads to finish). After `stop`, the spool is decoded for at most [`FINAL_DECODE`];
/// what is left then is dropped and counted.
fn decode_loop(
    cfg: &Config,
    mut ingest: Ingest,
    mut spool: crate::spool::SpoolRx,
    (tx, returned, queued): (&SyncSender<JournalBatch>, &Receiver<Vec<u8>>, &AtomicUsize),
    stop: &AtomicBool,
    metrics: &Mutex<Snapshot>,
) {
    let mut limiter = RateLimit::default();
    let mut hand = Handover {
        tx,
        returned,
        out: 0,
        queued,
        metrics,
        early_commits: 0,
        last: Instant::now(),
        last_publish: Instant::now(),
    };
    let mut clock = 0;
    let stats = spool.stats().clone();
    let mut give_up: Option<Instant> = None;
    let mut abandoned = 0u64;
    let mut open = true;
    loop {
        if give_up.is_none() && stop.load(Ordering::Acquire) {
            give_up = Some(Instant::now() + FINAL_DECODE);
        }
        let late = give_up.is_some_and(|t| Instant::now() >= t);
        if give_up.is_none() && stats.receiving_first(now_ms()) {
            stats.pressure.yield_now(now_ms());
            continue;
        }
        let wait = POLL.min(cfg.commit_interval);
        let got = spool.recv(wait, |e| {
            if late {
                abandoned += segments(e.bytes, e.segment).count() as u64;
                return;
            }
            if e.received_ms != clock {
                clock = e.received_ms;
                ingest.set_clock(clock);
            }
            for d in segments(e.bytes, e.segment) {
                match ingest.datagram(e.from, d) {
                    Ok(r) => {
                        if let Some(err) = r.error {
                            log_decode(&mut limiter, e.from, err);
                        }
                    }
                    Err(err) => log_decode(&mut limiter, e.from, err),
                }
                if open && ingest.over_bound() {
                    hand.early_commits += 1;
                    open = hand.hand_over(&mut ingest, true);
                }
            }
        });
        if got == crate::spool::Received::Closed || !open {
            if ingest.pending_datagrams() > 0 && open {
                hand.hand_over(&mut ingest, true);
            }
            if abandoned > 0 {
                spool.drop_counted(abandoned);
                tracing::warn!(
                    datagrams = abandoned,
                    "shutdown: datagrams received and still undecoded after the drain were dropped"
                );
            }
            hand.publish(&ingest);
            return;
        }
        // Hand the deltas over when due and the store thread is free; otherwise they keep
        // adding up here and go with the next batch.
        let due = ingest.pending_datagrams() >= cfg.commit_datagrams.get()
            || (ingest.pending_datagrams() > 0 && hand.last.elapsed() >= cfg.commit_interval);
        if due && !hand.hand_over(&mut ingest, false) {
            open = false;
        }
        if hand.last_publish.elapsed() >= PUBLISH {
            hand.publish(&ingest);
        }
    }
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ReceiveCounts {
    errors: u64,
    /// Reads that carried several datagrams (UDP receive offload).
    gro_reads: u64,
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

/// `SO_MEMINFO` (asm-generic/socket.h, Linux 4.6+): the socket's memory counters, of which
/// `SK_MEMINFO_RMEM_ALLOC` (what its receive queue holds) and `SK_MEMINFO_RCVBUF` (its
/// bound, as the kernel doubled it), per sock_diag(7).
const SO_MEMINFO: libc::c_int = 55;
/// `SK_MEMINFO_VARS`: the counters `SO_MEMINFO` returns.
const SK_MEMINFO_VARS: usize = 9;

/// Whether a socket's receive queue holds a sixteenth of its buffer or more: the receiving
/// thread is not keeping up, and what is behind it steps aside ([`crate::spool::Pressure`])
/// while most of the buffer is still free to hold what comes meanwhile.
fn queue_filling(s: &StdUdpSocket) -> bool {
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: valid socket fd; the buffer and its length describe `info`, which outlives the
    // call; the kernel writes at most `len` octets.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let (held, bound) = (
        info[libc::SK_MEMINFO_RMEM_ALLOC as usize],
        info[libc::SK_MEMINFO_RCVBUF as usize],
    );
    r == 0 && bound > 0 && u64::from(held) * 16 >= u64::from(bound)
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

    /// The pressure signal reads the kernel's own accounting of a socket's queue.
    #[test]
    fn queue_filling_follows_the_receive_queue() {
        let s = bind_udp("127.0.0.1:0".parse().unwrap(), 256 * 1024, false).unwrap();
        let to = s.local_addr().unwrap();
        let tx = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(!queue_filling(&s), "an empty queue");
        let payload = [0u8; 1400];
        let mut sent = 0;
        while !queue_filling(&s) {
            tx.send_to(&payload, to).unwrap();
            sent += 1;
            assert!(sent < 10_000, "the queue never counted as filling");
        }
        // A sixteenth of the (doubled) buffer: some datagrams, far from all it holds.
        assert!(sent > 2, "{sent}");
        let mut ring = MultiRecv::new();
        while ring.recv(&s).is_ok() {}
        assert!(!queue_filling(&s), "drained");
    }

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
