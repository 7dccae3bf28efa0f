//! CPU time per record of the collector's own work, without sockets: feeds a stream file
//! (as `labelflow-ipfix-gen generate` or `record` writes it) through the ingest path
//! (decode, aggregation, hand-over of a batch when a commit is due or a pending bound is
//! reached, as the receiving thread does), renders each batch (rollups and key names, as
//! the store thread does) and commits it to a store in a scratch directory. Prints the
//! thread CPU time of each stage per record, the rows committed and the peak RSS.
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
use labelflow_collector::aggregate::Rollup;
use labelflow_collector::config::Config;
use labelflow_collector::ingest::Ingest;
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
    let mut store = Store::open(&dir.join("c.db"), cfg.max_templates_per_exporter.get())?;
    let mut ingest = Ingest::new(cfg);
    let mut rollup = Rollup::new(&cfg.agg);
    let from: IpAddr = "127.0.0.1".parse().expect("an address");
    let (mut t_ingest, mut t_render, mut t_store) = (0u64, 0u64, 0u64);
    let (mut batches, mut early, mut rows, mut records) = (0u64, 0u64, 0usize, 0u64);
    ingest.set_clock(now_ms());
    let _ = ingest.datagram(from, first);
    let mut commit = |ingest: &mut Ingest, t_ingest: &mut u64| -> anyhow::Result<()> {
        let t0 = thread_cpu_ns();
        let raw = ingest.take_raw_batch();
        let t1 = thread_cpu_ns();
        let batch = raw.render(&mut rollup);
        let t2 = thread_cpu_ns();
        store.commit_batch(&batch, now_ms())?;
        let t3 = thread_cpu_ns();
        *t_ingest += t1 - t0;
        t_render += t2 - t1;
        t_store += t3 - t2;
        rows += batch.deltas.len();
        batches += 1;
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
                    t_ingest += thread_cpu_ns() - t0;
                    early += 1;
                    commit(&mut ingest, &mut t_ingest)?;
                    t0 = thread_cpu_ns();
                }
            }
            t_ingest += thread_cpu_ns() - t0;
            if ingest.pending_datagrams() >= cli.batch {
                commit(&mut ingest, &mut t_ingest)?;
            }
        }
    }
    if ingest.pending_datagrams() > 0 {
        commit(&mut ingest, &mut t_ingest)?;
    }
    let per = |t: u64| t as f64 / records.max(1) as f64;
    println!(
        "records={records} batches={batches} early={early} rows={rows} ingest_ns={:.0} \
         render_ns={:.0} store_ns={:.0} total_ns={:.0} peak_rss_kb={}",
        per(t_ingest),
        per(t_render),
        per(t_store),
        per(t_ingest + t_render + t_store),
        peak_rss_kb()
    );
    Ok(())
}
