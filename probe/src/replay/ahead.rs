//! Replay over two threads: one walks the capture, decodes each packet and computes its flow
//! key and hash; the caller's thread counts the packets into the flow cache, expires and
//! exports, in the capture's order.
//!
//! ```text
//!  reader thread: CaptureReader ─► Decoder ─► Keyer ─► Batch of BATCH packets ─┐
//!                     ▲ emptied batches come back for reuse                    │ channel
//!                     └────────────────────────────────────────────────────────┤ (bounded)
//!  caller:           for each packet of a batch: prefetch the slots of the     ▼
//!                    packet PREFETCH_AHEAD later, observe this one, expire when due
//! ```
//!
//! Both halves take about as long on a capture in the page cache (measured on a 2M-packet
//! capture: the walk, with its page faults and the decode, against the flow cache's slot
//! lookups, which miss the CPU caches on any flow table larger than they are), so the replay
//! takes about as long as the slower half. A batch carries only what the cache needs (the
//! metadata, the decoded fields, the key and hash), never the packet bytes.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::cache::{Keyer, Prepared};
use crate::decode::{DecodeError, Decoded};
use crate::packet::PacketMeta;
use crate::pipeline::{DecodeStats, Decoder};

use super::{CaptureReader, ReplayError, ReplayStats};

/// Packets per batch: large enough that handing a batch over costs nothing per packet, small
/// enough (about 200 KiB) to stay in the caches between the two threads.
const BATCH: usize = 2048;
/// Batches in flight between the threads.
const IN_FLIGHT: usize = 4;
/// How many packets ahead the counting thread prefetches flow slots: a slot that missed
/// every cache takes about as long to arrive as a few packets take to count.
pub const PREFETCH_AHEAD: usize = 8;

/// One decoded packet of a batch.
#[derive(Debug, Clone, Copy)]
struct Job {
    /// Its metadata without the prefix, which is in the batch's `prefixes`.
    meta: PacketMeta<'static>,
    prefix: (u32, u32),
    pkt: Decoded,
    prepared: Prepared,
}

/// Decoded packets, in capture order.
#[derive(Debug, Default)]
pub struct Batch {
    jobs: Vec<Job>,
    prefixes: Vec<u8>,
}

impl Batch {
    fn push(&mut self, meta: &PacketMeta<'_>, pkt: Decoded, prepared: Prepared) {
        let start = self.prefixes.len() as u32;
        self.prefixes.extend_from_slice(meta.prefix);
        self.jobs.push(Job {
            meta: PacketMeta {
                prefix: &[],
                ..*meta
            },
            prefix: (start, meta.prefix.len() as u32),
            pkt,
            prepared,
        });
    }

    fn clear(&mut self) {
        self.jobs.clear();
        self.prefixes.clear();
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Packet `i`: its metadata, decoded fields and prepared key.
    #[inline]
    pub fn get(&self, i: usize) -> (PacketMeta<'_>, &Decoded, Prepared) {
        let job = &self.jobs[i];
        let (start, len) = (job.prefix.0 as usize, job.prefix.1 as usize);
        let meta = PacketMeta {
            prefix: &self.prefixes[start..start + len],
            ..job.meta
        };
        (meta, &job.pkt, job.prepared)
    }

    /// The prepared key of packet `i`, if there is one.
    #[inline]
    pub fn prepared(&self, i: usize) -> Option<&Prepared> {
        self.jobs.get(i).map(|j| &j.prepared)
    }
}

/// What the reader thread ends with: the replay's counters and its decoder's, or the error
/// that stopped the walk (every batch before it was delivered).
pub type Outcome = (Result<ReplayStats, ReplayError>, DecodeStats);

/// The reader thread and its channels.
#[derive(Debug)]
pub struct Ahead {
    batches: Receiver<Batch>,
    back: SyncSender<Batch>,
    thread: Option<JoinHandle<Outcome>>,
}

impl Ahead {
    /// Starts walking `reader` on a thread of its own. `on_error` sees every packet that
    /// does not decode (on that thread).
    pub fn start(
        mut reader: CaptureReader,
        mut decoder: Decoder,
        keyer: Keyer,
        mut on_error: impl FnMut(DecodeError) + Send + 'static,
    ) -> std::io::Result<Ahead> {
        let (tx, batches) = mpsc::sync_channel::<Batch>(IN_FLIGHT);
        let (back, spare) = mpsc::sync_channel::<Batch>(IN_FLIGHT + 2);
        let thread = std::thread::Builder::new()
            .name("replay-read".into())
            .spawn(move || {
                let fresh = || Batch {
                    jobs: Vec::with_capacity(BATCH),
                    prefixes: Vec::new(),
                };
                let mut batch = fresh();
                let mut receiver_gone = false;
                let walked = reader.for_each_packet(|meta, payload| {
                    if receiver_gone {
                        return;
                    }
                    match decoder.decode(meta, payload) {
                        Ok(pkt) => batch.push(meta, pkt, keyer.prepare(meta, &pkt)),
                        Err(e) => on_error(e),
                    }
                    if batch.len() == BATCH {
                        let mut next = spare.try_recv().unwrap_or_else(|_| fresh());
                        next.clear();
                        let full = std::mem::replace(&mut batch, next);
                        receiver_gone = tx.send(full).is_err();
                    }
                });
                if !batch.is_empty() {
                    let _ = tx.send(batch);
                }
                (walked.cloned(), *decoder.stats())
            })?;
        Ok(Ahead {
            batches,
            back,
            thread: Some(thread),
        })
    }

    /// The next batch, or `None` once the reader thread is done.
    pub fn next_batch(&self) -> Option<Batch> {
        self.batches.recv().ok()
    }

    /// Hands an emptied batch back for reuse.
    pub fn recycle(&self, batch: Batch) {
        let _ = self.back.try_send(batch);
    }

    /// Waits for the reader thread (after [`next_batch`](Self::next_batch) gave `None`).
    pub fn finish(mut self) -> Outcome {
        let thread = self.thread.take().expect("finished once");
        match thread.join() {
            Ok(outcome) => outcome,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}
