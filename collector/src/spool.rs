//! The hand-off from the receiving thread to the decoding thread: datagrams as they came off
//! the socket, in chunks, kept in memory while the decoder keeps up and appended to a spool
//! file next to the database when it does not.
//!
//! Receiving then costs a `recvmmsg(2)` share, a copy and, behind a busy decoder, a
//! `write(2)` per datagram: a burst that the cores cannot decode, label and journal as fast
//! as it arrives goes to disk at the rate it arrives, as nfcapd writes its files, and is
//! decoded as the cores allow (in order: templates, sequence numbers and options state see
//! the datagrams as the exporter sent them). Memory holds at most [`MEMORY_CHUNKS`] chunks;
//! the file at most `limits.max_spool_bytes`, past which datagrams are dropped and counted
//! (as a full socket buffer would drop them, but with a count of our own).
//!
//! The spool is not durable: what it holds at SIGKILL was received and not journaled, and
//! shows as sequence gaps as exporters resume (`labelflow_collector_lost_across_restart_total`),
//! like what the socket buffer held. A start removes a spool file left behind and says how
//! large it was.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

/// Octets of a chunk: datagrams are handed over (or written) this many at a time, and a
/// chunk is handed over early whenever the receiving thread runs out of datagrams.
pub const CHUNK: usize = 256 * 1024;
/// Chunks held in memory at once on their way to the decoder; past them, chunks go to the
/// spool file.
pub const MEMORY_CHUNKS: usize = 4;

/// Octets before each datagram in a chunk: length (u32), receive-offload segment size
/// (u32, 0 for one datagram), receive time (u64, milliseconds since the epoch), sender
/// address (16 octets, IPv4 mapped into IPv6).
const HEADER: usize = 32;

/// One read off a socket, as the decoder gets it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub from: IpAddr,
    pub received_ms: u64,
    /// The `UDP_GRO` segment size of a read that carries several datagrams, else 0.
    pub segment: usize,
    pub bytes: &'a [u8],
}

/// Append one read to `chunk`; `false` (and nothing written) when it does not fit in a
/// chunk of [`CHUNK`] octets, unless the chunk is empty (a read larger than a chunk gets a
/// chunk of its own).
pub fn push(chunk: &mut Vec<u8>, e: &Entry<'_>) -> bool {
    let need = HEADER + e.bytes.len();
    if !chunk.is_empty() && chunk.len() + need > CHUNK {
        return false;
    }
    let addr = match e.from {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    chunk.extend_from_slice(&(e.bytes.len() as u32).to_le_bytes());
    chunk.extend_from_slice(&(e.segment as u32).to_le_bytes());
    chunk.extend_from_slice(&e.received_ms.to_le_bytes());
    chunk.extend_from_slice(&addr.octets());
    chunk.extend_from_slice(e.bytes);
    true
}

/// The reads of a chunk, in order; stops at a cut-off entry (which only a damaged spool file
/// has: what the receiving thread writes is whole).
pub fn entries(chunk: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    let mut rest = chunk;
    std::iter::from_fn(move || {
        let (h, tail) = rest.split_first_chunk::<HEADER>()?;
        let len = u32::from_le_bytes(h[0..4].try_into().ok()?) as usize;
        let bytes = tail.get(..len)?;
        rest = &tail[len..];
        let addr = Ipv6Addr::from(<[u8; 16]>::try_from(&h[16..32]).ok()?);
        Some(Entry {
            from: addr.to_canonical(),
            received_ms: u64::from_le_bytes(h[8..16].try_into().ok()?),
            segment: u32::from_le_bytes(h[4..8].try_into().ok()?) as usize,
            bytes,
        })
    })
}

/// What travels from the receiving thread to the decoder.
#[derive(Debug)]
enum Piece {
    Memory(Vec<u8>),
    /// `len` octets of the spool file at `offset`.
    File {
        offset: u64,
        len: usize,
    },
}

/// Counters both sides see (for `/metrics`).
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Datagrams received and accepted (`labelflow_collector_datagrams_total`).
    pub received_datagrams: AtomicU64,
    /// Octets written to the spool file and not decoded yet.
    pub file_bytes: AtomicU64,
    /// Datagrams handed over and not decoded yet.
    pub pending_datagrams: AtomicU64,
    /// Datagrams dropped because the spool file had reached `limits.max_spool_bytes`.
    pub dropped_datagrams: AtomicU64,
    /// Chunks that went through the spool file.
    pub file_chunks: AtomicU64,
    pub pressure: Pressure,
    /// `limits.max_spool_bytes`.
    max_bytes: u64,
}

impl SpoolStats {
    /// Whether the process is shutting down ([`Pressure::release`]).
    pub fn stopping(&self) -> bool {
        self.pressure.released.load(Ordering::Relaxed)
    }

    /// Whether the threads behind the receiving one should step aside now: the receiving
    /// thread is pressed, the spool file holds less than half of `max_spool_bytes`, and
    /// the process is not shutting down.
    pub fn receiving_first(&self, now_ms: u64) -> bool {
        !self.stopping()
            && self.pressure.on(now_ms)
            && self.file_bytes.load(Ordering::Relaxed) < self.max_bytes / 2
    }
}

/// "Receiving first": set by the receiving thread while a socket's queue fills faster than
/// it reads it, which happens only when it does not get the CPU it needs (other threads or
/// processes take the cores, or a CPU quota holds the process). Meanwhile the threads
/// behind it (decoding, merging) step aside for up to [`PRESSURE_HOLD_MS`] at a time,
/// provided the spool and the journal have room: a datagram dropped by the kernel is lost,
/// decoding later loses nothing.
#[derive(Debug, Default)]
pub struct Pressure {
    until_ms: AtomicU64,
    released: std::sync::atomic::AtomicBool,
    /// Milliseconds the threads behind stepped aside (summed over them).
    pub yielded_ms: AtomicU64,
}

/// How long one sign of a filling socket queue holds the threads behind back.
pub const PRESSURE_HOLD_MS: u64 = 100;

impl Pressure {
    pub fn press(&self, now_ms: u64) {
        if self.released.load(Ordering::Relaxed) {
            return;
        }
        self.until_ms
            .store(now_ms + PRESSURE_HOLD_MS, Ordering::Relaxed);
    }

    pub fn on(&self, now_ms: u64) -> bool {
        now_ms < self.until_ms.load(Ordering::Relaxed)
    }

    /// Shutdown: nothing steps aside any more.
    pub fn release(&self) {
        self.until_ms.store(0, Ordering::Relaxed);
        self.released.store(true, Ordering::Relaxed);
    }

    /// How long to step aside from `now_ms`: until the pressure lapses (it may be renewed
    /// meanwhile), at least a millisecond.
    pub fn remaining(&self, now_ms: u64) -> Duration {
        let until = self.until_ms.load(Ordering::Relaxed);
        Duration::from_millis(until.saturating_sub(now_ms).clamp(1, PRESSURE_HOLD_MS))
    }

    /// Step aside until the pressure lapses (counted): one wake-up per hold, not one per
    /// millisecond, so that waiting costs the threads behind next to nothing.
    pub fn yield_now(&self, now_ms: u64) {
        let d = self.remaining(now_ms);
        std::thread::sleep(d);
        self.yielded(d);
    }

    /// Count `d` of stepping aside.
    pub fn yielded(&self, d: Duration) {
        self.yielded_ms
            .fetch_add(d.as_millis() as u64, Ordering::Relaxed);
    }
}

/// The receiving thread's side.
#[derive(Debug)]
pub struct SpoolTx {
    tx: Sender<(Piece, u64)>,
    back: Receiver<Vec<u8>>,
    in_memory: usize,
    file: File,
    /// Octets ever written to the file, and that count when the file was last emptied.
    written: u64,
    base: u64,
    consumed: Arc<AtomicU64>,
    stats: Arc<SpoolStats>,
    spare: Vec<Vec<u8>>,
}

/// The decoder's side.
#[derive(Debug)]
pub struct SpoolRx {
    rx: Receiver<(Piece, u64)>,
    back: Sender<Vec<u8>>,
    file: File,
    buf: Vec<u8>,
    /// Octets of the file decoded, ever (the receiving thread empties the file when it
    /// reaches what was written).
    consumed: Arc<AtomicU64>,
    stats: Arc<SpoolStats>,
}

/// The spool file of the database `db`.
pub fn spool_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".spool");
    PathBuf::from(p)
}

/// Open both sides over a fresh spool file next to `db`; a file left by an earlier process
/// is emptied, and its size (octets received then and never journaled) is returned.
pub fn open(db: &Path, max_bytes: u64) -> io::Result<(SpoolTx, SpoolRx, Arc<SpoolStats>, u64)> {
    let path = spool_path(db);
    let left = std::fs::metadata(&path).map_or(0, |m| m.len());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let read = file.try_clone()?;
    let (tx, rx) = channel();
    let (back_tx, back_rx) = channel();
    let consumed = Arc::new(AtomicU64::new(0));
    let stats = Arc::new(SpoolStats {
        max_bytes,
        ..SpoolStats::default()
    });
    Ok((
        SpoolTx {
            tx,
            back: back_rx,
            in_memory: 0,
            file,
            written: 0,
            base: 0,
            consumed: consumed.clone(),
            stats: stats.clone(),
            spare: Vec::new(),
        },
        SpoolRx {
            rx,
            back: back_tx,
            file: read,
            buf: Vec::new(),
            consumed,
            stats: stats.clone(),
        },
        stats,
        left,
    ))
}

impl SpoolTx {
    pub fn stats(&self) -> &Arc<SpoolStats> {
        &self.stats
    }

    /// Take back the chunks the decoder is done with.
    fn reclaim(&mut self) {
        while let Ok(b) = self.back.try_recv() {
            self.in_memory -= 1;
            self.spare.push(b);
        }
    }

    /// An empty chunk to fill.
    pub fn chunk(&mut self) -> Vec<u8> {
        self.reclaim();
        self.spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(CHUNK + HEADER))
    }

    /// Hand over a filled chunk of `datagrams` datagrams: in memory while fewer than
    /// [`MEMORY_CHUNKS`] wait, else through the spool file; `false` when the decoder has
    /// gone. Returns the chunk to refill.
    pub fn send(&mut self, mut chunk: Vec<u8>, datagrams: u64) -> (bool, Vec<u8>) {
        if chunk.is_empty() {
            return (true, chunk);
        }
        self.stats
            .received_datagrams
            .fetch_add(datagrams, Ordering::Relaxed);
        self.reclaim();
        let consumed = self.consumed.load(Ordering::Acquire);
        if consumed == self.written && self.written > self.base {
            // Everything written was decoded: start the file over.
            if self.file.set_len(0).is_ok() {
                self.base = self.written;
            }
        }
        let piece = if self.in_memory < MEMORY_CHUNKS && self.written == consumed {
            // Nothing waits in the file (order): straight through memory.
            self.in_memory += 1;
            let next = self.chunk();
            Piece::Memory(std::mem::replace(&mut chunk, next))
        } else {
            let at = self.written - self.base;
            if at + chunk.len() as u64 > self.stats.max_bytes {
                self.stats
                    .dropped_datagrams
                    .fetch_add(datagrams, Ordering::Relaxed);
                chunk.clear();
                return (true, chunk);
            }
            if let Err(e) = self.file.write_all_at(&chunk, at) {
                tracing::error!(error = %e, datagrams, "spool write failed; the datagrams are dropped");
                self.stats
                    .dropped_datagrams
                    .fetch_add(datagrams, Ordering::Relaxed);
                chunk.clear();
                return (true, chunk);
            }
            self.written += chunk.len() as u64;
            self.stats
                .file_bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            self.stats.file_chunks.fetch_add(1, Ordering::Relaxed);
            let p = Piece::File {
                offset: at,
                len: chunk.len(),
            };
            chunk.clear();
            p
        };
        self.stats
            .pending_datagrams
            .fetch_add(datagrams, Ordering::Relaxed);
        let ok = self.tx.send((piece, datagrams)).is_ok();
        (ok, chunk)
    }
}

/// What [`SpoolRx::recv`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A chunk, whose reads were passed on.
    Chunk,
    /// Nothing within the timeout.
    Idle,
    /// The receiving thread has gone and everything it handed over was passed on.
    Closed,
}

impl SpoolRx {
    pub fn stats(&self) -> &Arc<SpoolStats> {
        &self.stats
    }

    /// Count `datagrams` received and never decoded as dropped (the shutdown's drain ended).
    pub fn drop_counted(&self, datagrams: u64) {
        self.stats
            .dropped_datagrams
            .fetch_add(datagrams, Ordering::Relaxed);
    }

    /// Wait up to `timeout` for the next chunk and pass each of its reads to `each`.
    pub fn recv(&mut self, timeout: Duration, mut each: impl FnMut(Entry<'_>)) -> Received {
        let (piece, datagrams) = match self.rx.recv_timeout(timeout) {
            Ok(p) => p,
            Err(RecvTimeoutError::Timeout) => return Received::Idle,
            Err(RecvTimeoutError::Disconnected) => return Received::Closed,
        };
        match piece {
            Piece::Memory(mut chunk) => {
                entries(&chunk).for_each(&mut each);
                chunk.clear();
                // The receiving thread may have gone: then the chunk is simply freed.
                let _ = self.back.send(chunk);
            }
            Piece::File { offset, len } => {
                self.buf.resize(len, 0);
                match self.file.read_exact_at(&mut self.buf, offset) {
                    Ok(()) => entries(&self.buf).for_each(&mut each),
                    Err(e) => {
                        tracing::error!(error = %e, datagrams, "spool read failed; the datagrams are dropped");
                        self.stats
                            .dropped_datagrams
                            .fetch_add(datagrams, Ordering::Relaxed);
                    }
                }
                if self.buf.capacity() > 2 * (CHUNK + HEADER) {
                    self.buf = Vec::new();
                }
                self.stats
                    .file_bytes
                    .fetch_sub(len as u64, Ordering::Relaxed);
                self.consumed.fetch_add(len as u64, Ordering::AcqRel);
            }
        }
        self.stats
            .pending_datagrams
            .fetch_sub(datagrams, Ordering::Relaxed);
        Received::Chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn entry(i: usize, data: &[u8]) -> Entry<'_> {
        let from = if i.is_multiple_of(3) {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16))
        } else {
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, i as u8))
        };
        Entry {
            from,
            received_ms: 1_700_000_000_000 + i as u64,
            segment: if i.is_multiple_of(5) { 7 } else { 0 },
            bytes: data,
        }
    }

    proptest! {
        /// Whatever the sizes and however far behind the decoder is, it gets every read
        /// back, whole and in order, through memory and the file alike; memory never holds
        /// more than its chunks.
        #[test]
        fn reads_come_back_in_order(
            sizes in proptest::collection::vec(0usize..3000, 1..400),
            lag in 0usize..40,
            big in proptest::option::of(0usize..400),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (mut tx, mut rx, stats, left) = open(&dir.path().join("c.db"), u64::MAX).unwrap();
            prop_assert_eq!(left, 0);
            let mut sizes = sizes;
            if let Some(b) = big {
                // A read larger than a chunk (UDP receive offload) gets a chunk of its own.
                let at = b % sizes.len();
                sizes[at] = CHUNK + 1000;
            }
            let data: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| (0..*n).map(|k| (i * 31 + k) as u8).collect())
                .collect();
            let mut got: Vec<(IpAddr, u64, usize, Vec<u8>)> = Vec::new();
            let mut chunk = tx.chunk();
            let mut in_chunk = 0;
            let mut sent = 0;
            let decode = |rx: &mut SpoolRx, got: &mut Vec<_>| {
                rx.recv(Duration::ZERO, |e| got.push((e.from, e.received_ms, e.segment, e.bytes.to_vec())))
            };
            for (i, d) in data.iter().enumerate() {
                let e = entry(i, d);
                if !push(&mut chunk, &e) {
                    let (ok, c) = tx.send(chunk, in_chunk);
                    prop_assert!(ok);
                    chunk = c;
                    sent += 1;
                    in_chunk = 0;
                    prop_assert!(push(&mut chunk, &e));
                    // The decoder runs `lag` chunks behind.
                    if sent > lag {
                        prop_assert_eq!(decode(&mut rx, &mut got), Received::Chunk);
                    }
                }
                in_chunk += 1;
                prop_assert!(tx.in_memory <= MEMORY_CHUNKS);
            }
            let (ok, _) = tx.send(chunk, in_chunk);
            prop_assert!(ok);
            drop(tx);
            while decode(&mut rx, &mut got) == Received::Chunk {}
            prop_assert_eq!(decode(&mut rx, &mut got), Received::Closed);
            prop_assert_eq!(got.len(), data.len());
            for (i, (g, d)) in got.iter().zip(&data).enumerate() {
                let e = entry(i, d);
                prop_assert_eq!(g, &(e.from, e.received_ms, e.segment, d.clone()));
            }
            prop_assert_eq!(stats.pending_datagrams.load(Ordering::Relaxed), 0);
            prop_assert_eq!(stats.file_bytes.load(Ordering::Relaxed), 0);
            prop_assert_eq!(stats.dropped_datagrams.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn file_starts_over_once_decoded_and_drops_past_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("c.db");
        std::fs::write(spool_path(&db), [0u8; 100]).unwrap();
        let bound = (3 * CHUNK) as u64;
        let (mut tx, mut rx, stats, left) = open(&db, bound).unwrap();
        assert_eq!(left, 100, "the size of a spool left behind is reported");
        let payload = vec![7u8; 1400];
        let fill = |tx: &mut SpoolTx| {
            let mut c = tx.chunk();
            let mut n = 0;
            while push(&mut c, &entry(1, &payload)) {
                n += 1;
            }
            (c, n)
        };
        // Memory first, then the file, then nothing past the bound.
        let mut total = 0;
        for _ in 0..MEMORY_CHUNKS + 4 {
            let (c, n) = fill(&mut tx);
            total += n;
            assert!(tx.send(c, n).0);
        }
        assert_eq!(stats.file_chunks.load(Ordering::Relaxed), 3);
        let dropped = stats.dropped_datagrams.load(Ordering::Relaxed);
        assert!(dropped > 0 && dropped < total);
        let len = std::fs::metadata(spool_path(&db)).unwrap().len();
        assert!(len <= bound && len > 2 * CHUNK as u64, "{len}");
        let mut got = 0;
        while rx.recv(Duration::ZERO, |_| got += 1) == Received::Chunk {}
        assert_eq!(got + dropped, total);
        assert_eq!(stats.file_bytes.load(Ordering::Relaxed), 0);
        // All decoded: the next chunk goes through memory and the file is emptied.
        let (c, n) = fill(&mut tx);
        assert!(tx.send(c, n).0);
        assert_eq!(std::fs::metadata(spool_path(&db)).unwrap().len(), 0);
        assert_eq!(stats.file_chunks.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn pressure_holds_then_lapses_and_shutdown_releases_it() {
        let dir = tempfile::tempdir().unwrap();
        let (_tx, _rx, stats, _) = open(&dir.path().join("c.db"), 4 * CHUNK as u64).unwrap();
        assert!(!stats.receiving_first(1_000));
        stats.pressure.press(1_000);
        assert!(stats.receiving_first(1_000));
        assert!(stats.receiving_first(1_000 + PRESSURE_HOLD_MS - 1));
        assert!(!stats.receiving_first(1_000 + PRESSURE_HOLD_MS));
        let ms = Duration::from_millis;
        assert_eq!(stats.pressure.remaining(1_000), ms(PRESSURE_HOLD_MS));
        assert_eq!(
            stats.pressure.remaining(1_000 + PRESSURE_HOLD_MS - 1),
            ms(1)
        );
        assert_eq!(
            stats.pressure.remaining(9_000),
            ms(1),
            "lapsed: the least wait"
        );
        // A spool half full: decoding goes on, pressed or not.
        stats.pressure.press(2_000);
        stats.file_bytes.store(2 * CHUNK as u64, Ordering::Relaxed);
        assert!(!stats.receiving_first(2_000));
        stats.file_bytes.store(0, Ordering::Relaxed);
        assert!(stats.receiving_first(2_000));
        stats.pressure.release();
        assert!(!stats.receiving_first(2_000));
        stats.pressure.press(3_000);
        assert!(
            !stats.receiving_first(3_000),
            "no pressure after shutdown began"
        );
    }

    #[test]
    fn cut_off_entries_end_the_chunk() {
        let mut c = Vec::new();
        assert!(push(&mut c, &entry(1, b"abc")));
        assert!(push(&mut c, &entry(2, b"defg")));
        let whole = entries(&c).count();
        assert_eq!(whole, 2);
        for cut in 0..c.len() {
            let n = entries(&c[..cut]).count();
            assert!(n <= 1, "{cut}: {n}");
        }
    }
}
