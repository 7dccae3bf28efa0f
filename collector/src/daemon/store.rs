//! The daemon's journal writer and store threads: records written to segment files, their
//! journal rows committed, the journal merged into the aggregates behind the receiver.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{now_ms, POLL};
use crate::config::Config;
use crate::ingest::Snapshot;
use crate::journal::{JournalBatch, Merger};
use crate::store::Store;

/// Write each batch's records to the current segment file and sync it, then pass the batch
/// on to the store thread, which names the extent in its transaction. A failed write (a
/// full disk) loses that batch's records, counted
/// (`labelflow_collector_journal_lost_records_total`); its session state still goes on.
pub(super) fn writer_loop(
    db: &std::path::Path,
    mut writer: crate::journal::Writer,
    rx: &Receiver<JournalBatch>,
    (tx, give_back): (&SyncSender<JournalBatch>, &std::sync::mpsc::Sender<Vec<u8>>),
    metrics: &Mutex<Snapshot>,
    spool: &crate::spool::SpoolStats,
) {
    let mut syncer = crate::journal::Syncer::default();
    let mut failed = false;
    for mut b in rx {
        // Receiving first (crate::spool::Pressure): the batches wait in their bounded
        // queue, and the decoder with them.
        while spool.receiving_first(now_ms()) {
            spool.pressure.yield_now(now_ms());
        }
        if let Some(p) = b.parts.take() {
            let done = writer.append(&[&p.names, &p.records]).and_then(|e| {
                syncer.sync(db, e.segment)?;
                Ok(e)
            });
            match done {
                Ok(e) => {
                    b.written = Some((e, p.count));
                    if std::mem::take(&mut failed) {
                        tracing::info!("journal writes succeed again");
                    }
                }
                Err(e) => {
                    if !std::mem::replace(&mut failed, true) {
                        tracing::error!(error = %e, records = p.count, "journal write failed; the batch's records are lost");
                    }
                    if let Ok(mut m) = metrics.lock() {
                        m.journal_lost = m.journal_lost.saturating_add(p.count);
                    }
                }
            }
            let _ = give_back.send(p.records);
        }
        if tx.send(b).is_err() {
            return;
        }
    }
}

/// Records merged between two looks at the channel: a slice of the merge (tens of
/// milliseconds on a high-cardinality stream) never holds up a journal commit for long.
const MERGE_SLICE: u64 = 4096;
/// Longest the store thread keeps merging after the receiving thread has stopped: the rest
/// of the journal is merged at the next start (SIGTERM must end the process promptly).
const FINAL_MERGE: Duration = Duration::from_secs(1);

/// Journal batches as they come, merge the journal whenever no batch waits, prune expired
/// buckets; returns when the ingest thread has gone, its last batch is journaled and the
/// merge has caught up (or [`FINAL_MERGE`] has passed).
pub(super) fn store_loop(
    cfg: &Config,
    mut store: Store,
    segment: u64,
    rx: &Receiver<JournalBatch>,
    (queued, tid): (&AtomicUsize, &AtomicI32),
    metrics: &Mutex<Snapshot>,
    spool: &crate::spool::SpoolStats,
) -> anyhow::Result<()> {
    tid.store(
        rustix::process::Pid::as_raw(Some(rustix::thread::gettid())),
        Ordering::Release,
    );
    // The merge runs behind the receiver by design: when the cores are busy, the receiving
    // thread comes first (setpriority on a thread id sets that thread's nice value,
    // setpriority(2)).
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), super::BEHIND_NICE)
    {
        tracing::debug!(error = %e, "could not lower the store thread's priority");
    }
    let keep_raw = cfg.clickhouse.as_ref().is_some_and(|c| c.raw);
    let mut merge = Merge {
        merger: Merger::new(&cfg.agg, keep_raw),
        fed: 0,
        merged: 0,
        first_own: crate::journal::last_id(store.connection())?.unwrap_or(0),
        segment,
        backlog: (0, 0),
        commits: (0, 0, 0),
    };
    let (rows, records, bytes) = crate::journal::backlog(store.connection())?;
    merge.backlog = (records, bytes);
    if rows > 0 {
        tracing::info!(
            rows,
            records,
            bytes,
            "journal rows received before the last stop and not merged yet: merging them"
        );
    }
    let mut last_prune: Option<Instant> = None;
    let mut stopping: Option<Instant> = None;
    loop {
        let idle = merge.backlog.0 == 0 && !merge.merger.busy() && merge.merger.is_empty();
        // Receiving first (crate::spool::Pressure): the merge waits while the receiving
        // thread is pressed and the journal has room; journal batches are still taken.
        let yielding = !idle
            && stopping.is_none()
            && spool.receiving_first(now_ms())
            && merge.backlog.1 < cfg.max_journal_bytes.get() as u64 / 2;
        let wait = if yielding {
            spool.pressure.remaining(now_ms())
        } else if stopping.is_some() || !idle {
            Duration::ZERO
        } else {
            POLL
        };
        match rx.recv_timeout(wait) {
            Ok(b) => {
                let t = Instant::now();
                // The journal's bound: past it, merge before taking more (the receiving
                // thread waits, and its socket buffer holds or drops what arrives).
                while merge.backlog.1 > cfg.max_journal_bytes.get() as u64
                    && merge.step_or_wait(cfg, &mut store, metrics)
                {}
                let (records, octets) = b.written.map_or((0, 0), |(e, n)| (n, e.len));
                if let Some((e, _)) = b.written {
                    merge.segment = merge.segment.max(e.segment);
                }
                match store.commit_journal(&b, now_ms()) {
                    Ok(()) => {
                        tracing::debug!(
                            records,
                            octets,
                            ms = t.elapsed().as_millis() as u64,
                            "journaled"
                        );
                        merge.commits.0 += 1;
                        merge.backlog.0 += records;
                        merge.backlog.1 += octets;
                    }
                    Err(e) => {
                        merge.commits.1 += 1;
                        tracing::error!(error = %e, datagrams = b.datagrams, "journal commit failed; batch lost");
                    }
                }
                merge.publish(cfg, metrics);
                queued.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            Err(RecvTimeoutError::Timeout) if yielding => {
                spool.pressure.yielded(wait);
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if stopping.is_none() {
                    stopping = Some(Instant::now());
                }
            }
        }
        let more = merge.step_or_wait(cfg, &mut store, metrics);
        if let Some(since) = stopping {
            if !more || since.elapsed() >= FINAL_MERGE {
                if let Err(e) = merge.flush(cfg, &mut store, metrics) {
                    tracing::error!(error = %e, "last merge commit failed; the journal rows stay for the next start");
                }
                tracing::info!(
                    commits = merge.commits.0,
                    unmerged_records = merge.backlog.0,
                    "ingest drained{}",
                    if merge.backlog.0 > 0 {
                        "; the rest of the journal is merged at the next start"
                    } else {
                        ""
                    }
                );
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
            merge.merger.forget_before(
                now - (a.max_flow_duration_ms / 1000) as i64
                    - *a.resolutions.last().unwrap_or(&60) as i64,
            );
            last_prune = Some(Instant::now());
        }
    }
}

/// The store thread's merge of the journal.
struct Merge {
    merger: Merger,
    /// The newest journal row started.
    fed: i64,
    /// The newest journal row whose merge committed.
    merged: i64,
    /// The newest journal row written before this process started: its datagrams were
    /// received by an earlier one, so merging them does not count as this one's commits.
    first_own: i64,
    /// The newest segment file journal batches came from: the writer may still be writing
    /// it, so it is kept even when merged.
    segment: u64,
    /// Records and octets in the journal not merged yet.
    backlog: (u64, u64),
    /// (journal commits, failed commits, datagrams merged).
    commits: (u64, u64, u64),
}

impl Merge {
    /// [`Merge::step`], an error logged and waited out (a second; the rows stay in the
    /// journal, merged once the store works again): whether more is left to merge.
    fn step_or_wait(&mut self, cfg: &Config, store: &mut Store, metrics: &Mutex<Snapshot>) -> bool {
        match self.step(cfg, store, metrics) {
            Ok(more) => more,
            Err(e) => {
                tracing::error!(error = %e, "journal merge failed; retrying in a second");
                std::thread::sleep(Duration::from_secs(1));
                false
            }
        }
    }

    /// Merge one slice: start the next journal row if none is part-way, feed up to
    /// [`MERGE_SLICE`] records, commit when the pending cells reach their bound or the
    /// journal is read to its end. Returns whether more is left to merge.
    fn step(
        &mut self,
        cfg: &Config,
        store: &mut Store,
        metrics: &Mutex<Snapshot>,
    ) -> anyhow::Result<bool> {
        let fed = &mut self.fed;
        if !self
            .merger
            .feed_from(store, fed, self.first_own, MERGE_SLICE)?
        {
            self.flush(cfg, store, metrics)?;
            return Ok(false);
        }
        if self.merger.pending_cells() >= cfg.max_pending_cells.get() {
            self.flush(cfg, store, metrics)?;
        }
        Ok(true)
    }

    /// Commit what was merged since the last commit, if anything.
    fn flush(
        &mut self,
        cfg: &Config,
        store: &mut Store,
        metrics: &Mutex<Snapshot>,
    ) -> anyhow::Result<()> {
        if self.merger.is_empty() && !self.merger.busy() {
            return Ok(());
        }
        let t = Instant::now();
        let m = self.merger.take();
        match store.commit_merged(&m) {
            Ok(()) => {
                self.commits.2 += m.datagrams;
                if let Some(upto) = m.upto {
                    self.merged = upto;
                }
                self.backlog.0 = self.backlog.0.saturating_sub(m.records);
                if m.upto.is_some() {
                    match crate::journal::remove_merged(
                        store.connection(),
                        store.path(),
                        self.segment,
                    ) {
                        Ok(n) if n > 0 => {
                            tracing::debug!(files = n, "journal segments merged, removed")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "removing merged journal segments"),
                    }
                }
                if m.upto.is_some() && !self.merger.busy() {
                    // Every row read is merged; the journal's size is read back now and
                    // then, so the octet count cannot drift.
                    self.backlog = crate::journal::backlog(store.connection())
                        .map(|(_, r, b)| (r, b))
                        .unwrap_or(self.backlog);
                }
                tracing::debug!(
                    rows = m.deltas.len(),
                    records = m.records,
                    ms = t.elapsed().as_millis() as u64,
                    "merged"
                );
            }
            Err(e) => {
                self.commits.1 += 1;
                // Nothing of it was written: read its rows again from where the last
                // commit left them.
                self.merger.abandon();
                self.fed = self.merged;
                tracing::error!(error = %e, records = m.records, "merge commit failed; its journal rows are merged again");
            }
        }
        self.publish(cfg, metrics);
        Ok(())
    }

    fn publish(&self, cfg: &Config, metrics: &Mutex<Snapshot>) {
        if let Ok(mut m) = metrics.lock() {
            m.commits = self.commits.0;
            m.commit_errors = self.commits.1;
            m.committed_datagrams = self.commits.2;
            m.journal_records = self.backlog.0;
            m.journal_bytes = self.backlog.1;
            m.journal_malformed = self.merger.malformed;
            self.merger.fill(&mut m, cfg.max_metric_labels);
        }
    }
}
