//! CPU time per record of the collector's own work, without sockets: feeds a stream file
//! (as `labelflow-ipfix-gen generate` or `record` writes it) through the ingest path
//! (decode, label, time rule and journal encoding, with a hand-over when a commit is due or
//! a pending bound is reached, as the receiving thread does), commits each batch to the
//! journal of a store in a scratch directory and merges the journal (aggregation, rollups,
//! key names and the merge commits, as the store thread does). Prints the thread CPU time
//! of each stage per record, the rows committed and the peak RSS.
//!
//! On a machine shared with other work, UDP loss rates move with the load; thread CPU
//! time per record moves far less, so two builds can be compared here first.
//!
//! ```text
//! labelflow-ipfix-gen generate --records 250000 --shape random --out random.bin
//! labelflow-ingest-cpu --file random.bin --repeat 8
//! ```

#[path = "shared/stream.rs"]
mod stream;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use labelflow_collector::config::Config;
use labelflow_collector::ingest::Ingest;
use labelflow_collector::journal::{self, Merger};
use labelflow_collector::store::Store;

#[derive(Debug, Parser)]
#[command(name = "labelflow-ingest-cpu", about)]
struct Cli {
    /// Stream file: datagrams, each prefixed by its length as u16 big-endian; the first
    /// holds the template(s).
    #[arg(long)]
    file: PathBuf,
    /// Passes over the file's data datagrams (the template once).
    #[arg(long, default_value_t = 4)]
    repeat: u32,
    /// Datagrams per batch when no pending bound is reached first (the daemon hands a
    /// batch over every `commit_interval`: at 1M records/s and 20 records per datagram,
    /// 50,000 datagrams).
    #[arg(long, default_value_t = 50_000)]
    batch: usize,
    /// Collector configuration (limits, resolutions); defaults without it.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// This thread's CPU time so far, nanoseconds.
fn thread_cpu_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = match &cli.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
            Config::parse(&text, &p.display().to_string())?
        }
        None => Config::defaults(),
    };
    let data = std::fs::read(&cli.file).with_context(|| cli.file.display().to_string())?;
    let dgrams = stream::datagrams(&data)?;
    let (first, rest) = dgrams
        .split_first()
        .with_context(|| format!("{}: no datagrams", cli.file.display()))?;
    let dir = std::env::temp_dir().join(format!("labelflow-ingest-cpu.{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&cli, &cfg, first, rest, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(
    cli: &Cli,
    cfg: &Config,
    first: &[u8],
    rest: &[&[u8]],
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let db = dir.join("c.db");
    let mut store = Store::open(&db, cfg.max_templates_per_exporter.get())?;
    let mut ingest = Ingest::new(cfg);
    let mut writer = journal::Writer::create(&db, 1)?;
    let mut syncer = journal::Syncer::default();
    let mut merger = Merger::new(&cfg.agg, false);
    let from: IpAddr = "127.0.0.1".parse().expect("an address");
    let mut t = Times::default();
    let (mut batches, mut early, mut rows, mut records) = (0u64, 0u64, 0usize, 0u64);
    ingest.set_clock(now_ms());
    let _ = ingest.datagram(from, first);
    // The receiving thread's hand-over and the store thread's journal commit, then the
    // merge of what the journal holds (as the store thread does when no batch waits).
    let mut commit = |ingest: &mut Ingest, t: &mut Times| -> anyhow::Result<()> {
        let t0 = thread_cpu_ns();
        let mut b = ingest.take_journal();
        let t1 = thread_cpu_ns();
        // The writer thread's part.
        if let Some(p) = b.parts.take() {
            let e = writer.append(&[&p.names, &p.records])?;
            syncer.sync(&db, e.segment)?;
            b.written = Some((e, p.count));
            ingest.recycle(p.records);
        }
        let t2 = thread_cpu_ns();
        store.commit_journal(&b, now_ms())?;
        let t3 = thread_cpu_ns();
        t.ingest += t1 - t0;
        t.write += t2 - t1;
        t.journal += t3 - t2;
        batches += 1;
        // The store thread's merge, timed as a whole (aggregation, rollups, key names
        // and the merge commits).
        let t0 = thread_cpu_ns();
        let (_, deltas) = journal::merge_all(&mut store, &mut merger, cfg.max_pending_cells.get())?;
        t.merge += thread_cpu_ns() - t0;
        rows += deltas;
        Ok(())
    };
    for _ in 0..cli.repeat {
        for chunk in rest.chunks(64) {
            ingest.set_clock(now_ms());
            let mut t0 = thread_cpu_ns();
            for d in chunk {
                if let Ok(r) = ingest.datagram(from, d) {
                    records += u64::from(r.summary.flow_records);
                }
                if ingest.over_bound() {
                    // A pending bound reached: the batch goes at once, as in the daemon.
                    t.ingest += thread_cpu_ns() - t0;
                    early += 1;
                    commit(&mut ingest, &mut t)?;
                    t0 = thread_cpu_ns();
                }
            }
            t.ingest += thread_cpu_ns() - t0;
            if ingest.pending_datagrams() >= cli.batch {
                commit(&mut ingest, &mut t)?;
            }
        }
    }
    if ingest.pending_datagrams() > 0 {
        commit(&mut ingest, &mut t)?;
    }
    let per = |t: u64| t as f64 / records.max(1) as f64;
    println!(
        "records={records} batches={batches} early={early} rows={rows} ingest_ns={:.0} \
         write_ns={:.0} journal_ns={:.0} merge_ns={:.0} total_ns={:.0} \
         peak_rss_kb={}",
        per(t.ingest),
        per(t.write),
        per(t.journal),
        per(t.merge),
        per(t.ingest + t.write + t.journal + t.merge),
        peak_rss_kb()
    );
    Ok(())
}

/// Thread CPU time per stage, nanoseconds.
#[derive(Debug, Default)]
struct Times {
    /// Receiving: decode, label, time rule, journal encoding.
    ingest: u64,
    /// Writing and syncing the records to the segment file (the writer thread).
    write: u64,
    /// The journal commit.
    journal: u64,
    /// The merge: aggregation, rollups, key names and the merge commits.
    merge: u64,
}
