//! The daemon around [`Ingest`]: UDP sockets (tokio), the ingest/commit thread, HTTP, and
//! the drain on shutdown.
//!
//! ```text
//!  tokio: recv task per socket ──(batches of datagrams, bounded channel)──► ingest thread
//!         HTTP (axum)                                                    decode, aggregate,
//!                                                                        commit every
//!                                                                        interval / N datagrams
//! ```

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::config::Config;
use crate::ingest::{Ingest, RateLimit, Snapshot};
use crate::store::Store;

/// Datagrams handed from a receiver to the ingest thread at once.
const BATCH: usize = 256;
/// Batches in flight between receivers and the ingest thread.
const CHANNEL: usize = 256;

type Datagrams = Vec<(IpAddr, Vec<u8>)>;

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
    let worker = {
        let cfg = cfg.clone();
        let metrics = metrics.clone();
        std::thread::Builder::new()
            .name("ingest".into())
            .spawn(move || ingest_loop(cfg, ingest, store, rx, metrics))?
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for s in sockets {
            let sock = UdpSocket::from_std(s)?;
            tasks.push(tokio::spawn(receive(
                sock,
                tx.clone(),
                stop_rx.clone(),
                metrics.clone(),
            )));
        }
        drop(tx);
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
        for t in tasks {
            let _ = t.await;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("ingest thread panicked"))??;
    Ok(())
}

async fn receive(
    sock: UdpSocket,
    tx: SyncSender<Datagrams>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Mutex<Snapshot>>,
) {
    let mut buf = vec![0u8; 65536];
    let mut batch: Datagrams = Vec::with_capacity(BATCH);
    loop {
        let stopping = tokio::select! {
            r = sock.readable() => { if r.is_err() { true } else { false } }
            _ = stop.changed() => true,
        };
        // Drain what the kernel holds (also on shutdown: nothing received is dropped here).
        loop {
            match sock.try_recv_from(&mut buf) {
                Ok((n, from)) => {
                    batch.push((from.ip().to_canonical(), buf[..n].to_vec()));
                    if batch.len() >= BATCH {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                        if !send(&tx, full) {
                            return;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if let Ok(mut m) = metrics.lock() {
                        m.receive_errors += 1;
                    }
                    tracing::debug!(error = %e, "recv");
                    break;
                }
            }
        }
        if !batch.is_empty() {
            let b = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            if !send(&tx, b) {
                return;
            }
        }
        if stopping {
            return;
        }
    }
}

/// Hand a batch over, blocking when the ingest thread is behind (the socket buffer absorbs
/// bursts meanwhile). Runs inside `block_in_place` so the runtime keeps serving HTTP.
fn send(tx: &SyncSender<Datagrams>, b: Datagrams) -> bool {
    match tx.try_send(b) {
        Ok(()) => true,
        Err(std::sync::mpsc::TrySendError::Full(b)) => {
            tokio::task::block_in_place(|| tx.send(b).is_ok())
        }
        Err(std::sync::mpsc::TrySendError::Disconnected(_)) => false,
    }
}

fn ingest_loop(
    cfg: Config,
    mut ingest: Ingest,
    mut store: Store,
    rx: Receiver<Datagrams>,
    metrics: Arc<Mutex<Snapshot>>,
) -> anyhow::Result<()> {
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
            Ok(batch) => {
                for (from, d) in batch {
                    match ingest.datagram(from, &d) {
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

fn log_decode(limiter: &mut RateLimit, from: IpAddr, e: crate::session::DecodeError) {
    if let Some(suppressed) = limiter.allow(e.reason(), now_ms(), 10_000) {
        tracing::warn!(exporter = %from, reason = e.reason(), suppressed, "datagram not (fully) decoded: {e}");
    }
}
