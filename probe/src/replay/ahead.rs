//! Replay over two threads: one walks the capture and decodes each packet; the caller's
//! thread computes the flow keys, counts the packets into the flow cache, expires and
//! exports, in the capture's order.
//!
//! ```text
//!  reader thread: CaptureReader ─► Decoder ─► Batch of BATCH packets ──────────┐
//!                     ▲ emptied batches come back for reuse                    │ channel
//!                     └────────────────────────────────────────────────────────┤ (bounded)
//!  caller:  keys and hashes of the batch; then for each packet: prefetch the   ▼
//!           slots of the packet PREFETCH_AHEAD later, observe this one, expire when due;
//!           drop the batch's hold on the mapped windows it came from
//! ```
//!
//! The split is by measurement (`perf`, 2M-packet capture in the page cache): the walk
//! faults the mapped file in and touches every record, the counting half waits on flow
//! slots that miss the CPU caches on any flow table larger than they are; unmapping a
//! window, which costs as much as faulting it in, happens where the last batch that holds
//! it is dropped, on the counting side. A batch carries the metadata and the decoded fields,
//! never the packet bytes.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use std::sync::Arc;

use crate::cache::{Keyer, Prepared};
use crate::decode::{DecodeError, Decoded};
use crate::packet::PacketMeta;
use crate::pipeline::{DecodeStats, Decoder, Pipeline};

use super::{CaptureReader, ReplayError, ReplayStats};

/// Packets per batch: large enough that handing a batch over costs nothing per packet, small
/// enough (about 200 KiB) to stay in the caches between the two threads.
const BATCH: usize = 2048;
/// Batches in flight between the threads.
const IN_FLIGHT: usize = 4;
/// How many packets ahead the counting thread prefetches flow slots: a slot that missed
/// every cache takes about as long to arrive as a few packets take to count.
const PREFETCH_AHEAD: usize = 8;

/// One decoded packet of a batch.
#[derive(Debug, Clone, Copy)]
struct Job {
    /// Its metadata without the prefix, which is in the batch's `prefixes`.
    meta: PacketMeta<'static>,
    prefix: (u32, u32),
    pkt: Decoded,
}

/// Decoded packets, in capture order.
#[derive(Debug, Default)]
struct Batch {
    jobs: Vec<Job>,
    prefixes: Vec<u8>,
    /// The mapped windows the packets came from, held until the batch is counted.
    windows: Vec<Arc<memmap2::Mmap>>,
    /// Keys and hashes, computed on the counting side by [`Batch::prepare`].
    prepared: Vec<Prepared>,
}

impl Batch {
    fn push(&mut self, meta: &PacketMeta<'_>, pkt: Decoded) {
        let start = self.prefixes.len() as u32;
        self.prefixes.extend_from_slice(meta.prefix);
        self.jobs.push(Job {
            meta: PacketMeta {
                prefix: &[],
                ..*meta
            },
            prefix: (start, meta.prefix.len() as u32),
            pkt,
        });
    }

    fn hold(&mut self, window: Option<&Arc<memmap2::Mmap>>) {
        if let Some(w) = window {
            if self.windows.last().is_none_or(|last| !Arc::ptr_eq(last, w)) {
                self.windows.push(Arc::clone(w));
            }
        }
    }

    fn clear(&mut self) {
        self.jobs.clear();
        self.prefixes.clear();
        self.windows.clear();
        self.prepared.clear();
    }

    /// Computes every packet's key and hash with `keyer`.
    fn prepare(&mut self, keyer: &Keyer) {
        self.prepared.clear();
        for i in 0..self.jobs.len() {
            let (meta, pkt) = self.meta(i);
            let p = keyer.prepare(&meta, pkt);
            self.prepared.push(p);
        }
    }

    #[inline]
    fn meta(&self, i: usize) -> (PacketMeta<'_>, &Decoded) {
        let job = &self.jobs[i];
        let (start, len) = (job.prefix.0 as usize, job.prefix.1 as usize);
        let meta = PacketMeta {
            prefix: &self.prefixes[start..start + len],
            ..job.meta
        };
        (meta, &job.pkt)
    }

    fn len(&self) -> usize {
        self.jobs.len()
    }

    fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Packet `i`: its metadata, decoded fields and key (after [`prepare`](Self::prepare)).
    #[inline]
    fn get(&self, i: usize) -> (PacketMeta<'_>, &Decoded, Prepared) {
        let (meta, pkt) = self.meta(i);
        (meta, pkt, self.prepared[i])
    }

    /// The key of packet `i` (after [`prepare`](Self::prepare)), if there is one.
    #[inline]
    fn prepared(&self, i: usize) -> Option<&Prepared> {
        self.prepared.get(i)
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
        mut on_error: impl FnMut(DecodeError) + Send + 'static,
    ) -> std::io::Result<Ahead> {
        let (tx, batches) = mpsc::sync_channel::<Batch>(IN_FLIGHT);
        let (back, spare) = mpsc::sync_channel::<Batch>(IN_FLIGHT + 2);
        let thread = std::thread::Builder::new()
            .name("replay-read".into())
            .spawn(move || {
                let fresh = || Batch {
                    jobs: Vec::with_capacity(BATCH),
                    prepared: Vec::with_capacity(BATCH),
                    ..Batch::default()
                };
                let mut batch = fresh();
                let mut receiver_gone = false;
                let walked = reader.for_each_packet_in(|meta, payload, window| {
                    if receiver_gone {
                        return;
                    }
                    match decoder.decode(meta, payload) {
                        Ok(pkt) => {
                            batch.hold(window);
                            batch.push(meta, pkt);
                        }
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

    /// Counts every packet into `pipeline`, in the capture's order, at its capture time
    /// (never earlier than the packet before it); `after` runs after each packet with that
    /// time (to expire and export when due). Returns how the walk ended and the last time.
    /// The pipeline's decode counters include the reader's.
    pub fn drive(
        mut self,
        pipeline: &mut Pipeline,
        mut after: impl FnMut(&mut Pipeline, u64),
    ) -> (Result<ReplayStats, ReplayError>, u64) {
        let keyer = pipeline.keyer();
        let mut last = 0u64;
        while let Ok(mut batch) = self.batches.recv() {
            batch.prepare(&keyer);
            for i in 0..batch.len() {
                if let Some(p) = batch.prepared(i + PREFETCH_AHEAD) {
                    pipeline.prefetch(p);
                }
                let (meta, pkt, prepared) = batch.get(i);
                let ts = meta.timestamp_ms.unwrap_or(last).max(last);
                last = ts;
                pipeline.observe_prepared(&meta, pkt, prepared, ts);
                after(pipeline, ts);
            }
            // The last hold of a mapped window unmaps it: here, not on the reader's side.
            batch.windows.clear();
            let _ = self.back.try_send(batch);
        }
        let (result, decoded) = self.finish();
        pipeline.add_decoded(&decoded);
        (result, last)
    }

    fn finish(&mut self) -> Outcome {
        let thread = self.thread.take().expect("finished once");
        match thread.join() {
            Ok(outcome) => outcome,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use labelflow_proto::FlowRecord;
    use labelflow_testkit::pcap::{ipv4_header, ipv4_udp, PcapWriter};

    use super::*;
    use crate::cache::CacheConfig;

    /// A seeded capture: UDP and TCP (some with FIN) over more flows than the cache holds,
    /// times that cross idle and active timeouts, and packets that do not decode.
    fn capture(seed: u64, packets: usize) -> Vec<u8> {
        let mut x = seed | 1;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut w = PcapWriter::new(228); // LINKTYPE_IPV4
        let mut ts_us = 1_700_000_000_000_000u64;
        for i in 0..packets {
            ts_us += rnd() % 20_000;
            let flow = (rnd() % 3_000) as u32;
            let src = [10, 0, (flow >> 8) as u8, flow as u8];
            let len = (rnd() % 1200) as usize;
            let pkt = match rnd() % 10 {
                0 => vec![0x45, 0, 0], // cut short: a decode error
                1..=3 => {
                    let mut tcp = vec![0u8; 20];
                    tcp[0..2].copy_from_slice(&(1024 + (flow % 50) as u16).to_be_bytes());
                    tcp[2..4].copy_from_slice(&443u16.to_be_bytes());
                    tcp[12] = 5 << 4;
                    tcp[13] = if rnd() % 20 == 0 { 0x11 } else { 0x10 }; // FIN+ACK or ACK
                    tcp.resize(20 + len, 0);
                    let mut p = ipv4_header(src, [192, 0, 2, 1], 6, tcp.len(), i as u16).to_vec();
                    p.extend_from_slice(&tcp);
                    p
                }
                _ => ipv4_udp(src, [192, 0, 2, 2], 5000, 53, &vec![0; len], i as u16),
            };
            w.packet(ts_us, &pkt);
        }
        w.bytes().to_vec()
    }

    fn pipeline() -> Pipeline {
        Pipeline::new(CacheConfig {
            max_flows: NonZeroU32::new(100).unwrap(),
            idle_timeout: Duration::from_secs(2),
            active_timeout: Duration::from_secs(5),
            labels: vec![(7, "x".into())],
            ..CacheConfig::default()
        })
    }

    /// Expires at the cache's deadlines, as the replay does.
    fn expiring(out: &mut Vec<FlowRecord>) -> impl FnMut(&mut Pipeline, u64) + '_ {
        let mut next: Option<u64> = None;
        move |p: &mut Pipeline, ts: u64| {
            if next.is_none_or(|d| ts >= d) {
                p.expire(ts, &mut |r| out.push(r));
                next = p.next_deadline();
            }
        }
    }

    /// The two-thread replay gives exactly the records, in the same order, and the same
    /// counters as counting each packet as it is read, over a mapped file whose window moves
    /// every few hundred packets.
    #[test]
    fn two_threads_count_exactly_what_one_does() {
        let bytes = capture(0x5eed, 60_000);
        let path =
            std::env::temp_dir().join(format!("labelflow-ahead-{}.pcap", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();

        let mut one = pipeline();
        let mut want = Vec::new();
        let mut first = CaptureReader::from_vec(bytes, "mem.pcap", 7).unwrap();
        let mut last = 0;
        {
            let mut after = expiring(&mut want);
            first
                .for_each_packet(|meta, payload| {
                    let ts = meta.timestamp_ms.unwrap_or(last).max(last);
                    last = ts;
                    let _ = one.handle(meta, payload, ts);
                    after(&mut one, ts);
                })
                .unwrap();
        }
        one.flush(last, &mut |r| want.push(r));

        let mut two = pipeline();
        let mut got = Vec::new();
        let reader = CaptureReader::open_as(&path, 7, Some(256 << 10)).unwrap();
        let ahead = Ahead::start(reader, two.decoder(), |_| {}).unwrap();
        let (walked, last2) = ahead.drive(&mut two, expiring(&mut got));
        two.flush(last2, &mut |r| got.push(r));
        std::fs::remove_file(&path).unwrap();

        assert_eq!(walked.unwrap(), *first.stats());
        assert_eq!(last2, last);
        assert!(two.stats().decode.total_errors() > 1000);
        assert!(two.stats().cache.evicted > 0 && two.stats().cache.ended_tcp > 0);
        assert_eq!(two.stats(), one.stats());
        assert_eq!(got.len(), want.len());
        assert!(got == want, "records differ");
    }
}
