//! The probe's drivers: the live NFLOG loop and the pcap replay. They own the IO (socket,
//! clock, signals, UDP) and drive the pure parts: [`Pipeline`] (decode + flow cache) and the
//! exporters' state machines.
//!
//! ```text
//!  NflogSocket::recv_batch ─► Pipeline::handle ─► FlowCache
//!  (or PcapReader)                                   │ expire(now) / flush(now)
//!                                                    ▼
//!                                 UdpExporter::push ─► IPFIX / v9 / v5 over UDP
//!  every template refresh: ExportMeta (labels, interface names, per-group loss) ─► options
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use labelflow_proto::FlowRecord;

use crate::cache::CacheConfig;
use crate::config::Config;
use crate::export::{ExportConfig, ExportMeta, GroupMeta, InterfaceMeta, TargetStats, UdpExporter};
use crate::ipsec::ViciWatcher;
use crate::nflog::{GroupConfig, NflogConfig, NflogSocket, SourceStats};
use crate::pipeline::{Pipeline, PipelineStats};
use crate::replay::{PcapReader, ReplayStats};

/// Wall-clock milliseconds, from one anchor taken at start and the monotonic clock since.
/// A wall-clock step (NTP) while running does not bend flow times.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    anchor_ms: u64,
    anchor: Instant,
}

impl WallClock {
    pub fn start() -> Self {
        let anchor_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        WallClock {
            anchor_ms,
            anchor: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.anchor_ms + self.anchor.elapsed().as_millis() as u64
    }
}

/// Logs at most once per `every`, counting what it held back.
#[derive(Debug)]
struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl RateLimit {
    fn new(every: Duration) -> Self {
        RateLimit {
            every,
            last: None,
            held: 0,
        }
    }

    /// `Some(held back since the last line)` when a line may be logged now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < self.every => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

/// What a run did, for the last log line and for tests.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub pipeline: PipelineStats,
    pub source: Option<SourceStats>,
    pub replay: Option<ReplayStats>,
    pub exports: Vec<TargetStats>,
    /// Flow records handed to the exporters.
    pub records: u64,
}

/// The exporters of every configured target, each with its own knobs.
#[derive(Debug)]
struct Exporters {
    list: Vec<UdpExporter>,
    records: u64,
}

impl Exporters {
    fn open(cfg: &Config) -> anyhow::Result<Self> {
        let mut list = Vec::with_capacity(cfg.exports.len());
        for e in &cfg.exports {
            let knobs = ExportConfig {
                mtu: e.mtu,
                domain: cfg.observation_domain,
                template_interval: e.template_refresh,
                template_every: e.template_refresh_messages,
                app_id: e.app_id,
                ..ExportConfig::default()
            };
            let exporter =
                UdpExporter::new(&[e.target], knobs, Some(e.sndbuf)).with_context(|| {
                    format!("cannot open the UDP socket for export to {}", e.target)
                })?;
            list.push(exporter);
        }
        Ok(Exporters { list, records: 0 })
    }

    fn push(&mut self, rec: &FlowRecord, now_ms: u64) {
        self.records += 1;
        for e in &mut self.list {
            e.push(rec, now_ms);
        }
    }

    fn tick(&mut self, now_ms: u64) {
        for e in &mut self.list {
            e.tick(now_ms);
        }
    }

    fn set_meta(&mut self, meta: &ExportMeta) {
        for e in &mut self.list {
            e.set_meta(meta);
        }
    }

    /// Sends what is buffered, with templates and options (the final loss counters) in front.
    fn finish(&mut self, now_ms: u64) {
        for e in &mut self.list {
            e.flush();
            e.send_options(now_ms);
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.list.iter().filter_map(|e| e.next_deadline()).min()
    }

    fn stats(&self) -> Vec<TargetStats> {
        self.list.iter().flat_map(|e| e.stats()).collect()
    }
}

fn cache_config(cfg: &Config, labels: Vec<(u16, String)>) -> CacheConfig {
    CacheConfig {
        max_flows: cfg.cache.max_flows,
        idle_timeout: cfg.cache.idle_timeout,
        active_timeout: cfg.cache.active_timeout,
        labels,
        ipsec_ports: cfg.ipsec,
        ..CacheConfig::default()
    }
}

/// Interface names of this network namespace, for the interface options records.
pub fn interfaces() -> Vec<InterfaceMeta> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ifindex = std::fs::read_to_string(entry.path().join("ifindex"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if let Some(ifindex) = ifindex {
            let description = std::fs::read_to_string(entry.path().join("ifalias"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            out.push(InterfaceMeta {
                ifindex,
                name,
                description,
            });
        }
    }
    out.sort_by_key(|i| i.ifindex);
    out
}

fn export_meta(cfg: &Config, source: Option<&SourceStats>) -> ExportMeta {
    let groups = cfg
        .groups
        .iter()
        .map(|g| {
            let s = source.and_then(|s| s.group(g.id));
            GroupMeta {
                group: u32::from(g.id),
                label: g.label.clone(),
                description: g.description.clone(),
                packets_total: s.map_or(0, |s| s.packets),
                ignored_packets: s.map_or(0, |s| s.lost),
            }
        })
        .collect();
    ExportMeta {
        groups,
        interfaces: interfaces(),
    }
}

fn log_stats(pipeline: &PipelineStats, source: Option<&SourceStats>, records: u64) {
    let c = &pipeline.cache;
    tracing::info!(
        packets = pipeline.decode.decoded,
        decode_errors = pipeline.decode.total_errors(),
        live_flows = c.live_flows,
        flows_created = c.flows_created,
        evicted = c.evicted,
        exported_records = records,
        "stats"
    );
    if let Some(s) = source {
        for g in &s.groups {
            tracing::info!(
                group = g.group,
                packets = g.packets,
                lost = g.lost,
                enobufs_suspect = g.enobufs_suspect,
                "group stats"
            );
        }
        if s.enobufs > 0 || s.malformed > 0 {
            tracing::warn!(
                enobufs = s.enobufs,
                malformed = s.malformed,
                "NFLOG socket overruns: raise [nflog] rcvbuf (see README, losses)"
            );
        }
    }
}

/// Opens the NFLOG socket for every configured group. Fails naming the group when another
/// listener holds it.
pub fn open_source(cfg: &Config) -> anyhow::Result<NflogSocket> {
    let mut nflog = NflogConfig::new(cfg.groups.iter().map(|g| g.id));
    nflog.recv_buffer = cfg.nflog.rcvbuf;
    nflog.groups = cfg
        .groups
        .iter()
        .map(|g| GroupConfig {
            copy_range: cfg.nflog.copy_range,
            queue_threshold: g.queue_threshold,
            flush_timeout: cfg.nflog.flush_timeout,
            ..GroupConfig::new(g.id)
        })
        .collect();
    NflogSocket::open(&nflog).context("cannot listen to the NFLOG groups")
}

/// The record with the tunnel charon names it by, when a vici socket is configured.
fn named(vici: &Option<ViciWatcher>, mut rec: FlowRecord) -> FlowRecord {
    if let Some(w) = vici {
        rec.tunnel = w.name_of(&rec);
    }
    rec
}

/// Runs the live probe until `stop` is set, then drains: unbinds the groups (the kernel
/// flushes their pending batches), counts the last packets, flushes the cache with end
/// reason "forced end" and sends the last messages.
pub fn run_live(
    cfg: &Config,
    source: NflogSocket,
    stop: &AtomicBool,
) -> anyhow::Result<RunSummary> {
    let clock = WallClock::start();
    let mut exporters = Exporters::open(cfg)?;
    let labels = cfg.groups.iter().map(|g| (g.id, g.label.clone())).collect();
    let mut pipeline = Pipeline::new(cache_config(cfg, labels));
    let mut source = source;
    let mut decode_log = RateLimit::new(Duration::from_secs(10));
    // Tunnel names from charon, looked up per exported record (never per packet).
    let vici = cfg
        .vici
        .as_ref()
        .map(|path| ViciWatcher::spawn(path.clone(), cfg.ipsec));

    let stats_every = cfg.stats_interval.as_millis() as u64;
    let meta_every = 10_000u64;
    let mut now = clock.now_ms();
    exporters.set_meta(&export_meta(cfg, Some(source.stats())));
    let mut next_stats = now + stats_every;
    let mut next_meta = now + meta_every;

    while !stop.load(Ordering::Relaxed) {
        let deadline = [
            pipeline.next_deadline(),
            exporters.next_deadline(),
            Some(next_stats),
            Some(next_meta),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + 1000);
        // Wake at least every 250 ms to notice a stop request.
        let wait = Duration::from_millis(deadline.saturating_sub(now).min(250));
        let mut seen = 0u32;
        let mut packet_now = now;
        source.recv_batch(Some(wait), |meta, payload| {
            // One clock read per 64 packets: the kernel batches anyway, and flow times need
            // millisecond resolution only.
            if seen.is_multiple_of(64) {
                packet_now = clock.now_ms();
            }
            seen = seen.wrapping_add(1);
            if let Err(e) = pipeline.handle(meta, payload, packet_now) {
                if let Some(held) = decode_log.allow() {
                    tracing::warn!(group = meta.group, error = %e, similar_held_back = held, "packet skipped");
                }
            }
        })?;
        now = clock.now_ms();
        pipeline.expire(now, &mut |rec| exporters.push(&named(&vici, rec), now));
        if now >= next_meta {
            exporters.set_meta(&export_meta(cfg, Some(source.stats())));
            next_meta = now + meta_every;
        }
        exporters.tick(now);
        if now >= next_stats {
            log_stats(&pipeline.stats(), Some(source.stats()), exporters.records);
            next_stats = now + stats_every;
        }
    }

    tracing::info!("stopping: unbinding groups and draining their last batches");
    let final_source = source.shutdown(cfg.shutdown_grace, |meta, payload| {
        let _ = pipeline.handle(meta, payload, clock.now_ms());
    })?;
    let now = clock.now_ms();
    pipeline.flush(now, &mut |rec| exporters.push(&named(&vici, rec), now));
    exporters.set_meta(&export_meta(cfg, Some(&final_source)));
    exporters.finish(now);
    let summary = RunSummary {
        pipeline: pipeline.stats(),
        source: Some(final_source),
        replay: None,
        exports: exporters.stats(),
        records: exporters.records,
    };
    log_stats(&summary.pipeline, summary.source.as_ref(), summary.records);
    Ok(summary)
}

/// Replays a capture through the same pipeline, with the capture's own timestamps as the
/// clock: the same file always gives the same records. Packets of captures without NFLOG
/// metadata belong to `label` (pseudo group 0).
pub fn run_replay(cfg: &Config, path: &Path, label: Option<&str>) -> anyhow::Result<RunSummary> {
    const PSEUDO_GROUP: u16 = 0;
    let mut reader = PcapReader::open(path, PSEUDO_GROUP)
        .with_context(|| format!("cannot replay {}", path.display()))?;
    let mut labels: Vec<(u16, String)> =
        cfg.groups.iter().map(|g| (g.id, g.label.clone())).collect();
    let is_nflog = reader.link_type() == crate::replay::linktype::NFLOG;
    if let Some(l) = label {
        if is_nflog {
            tracing::warn!(
                "--label is ignored for NFLOG captures: their packets carry their group"
            );
        } else {
            labels.retain(|(g, _)| *g != PSEUDO_GROUP);
            labels.push((PSEUDO_GROUP, l.to_string()));
        }
    }
    let mut meta_cfg = cfg.clone();
    for (id, l) in &labels {
        if !meta_cfg.groups.iter().any(|g| g.id == *id) {
            meta_cfg.groups.push(crate::config::Group {
                id: *id,
                label: l.clone(),
                description: String::new(),
                queue_threshold: 1,
            });
        }
    }
    let mut exporters = Exporters::open(cfg)?;
    exporters.set_meta(&export_meta(&meta_cfg, None));
    let mut pipeline = Pipeline::new(cache_config(cfg, labels));
    let mut decode_log = RateLimit::new(Duration::from_secs(10));
    let mut last = 0u64;
    let mut next_deadline: Option<u64> = None;

    let result = reader.for_each_packet(|meta, payload| {
        let ts = meta.timestamp_ms.unwrap_or(last).max(last);
        last = ts;
        if let Err(e) = pipeline.handle(meta, payload, ts) {
            if let Some(held) = decode_log.allow() {
                tracing::warn!(error = %e, similar_held_back = held, "packet skipped");
            }
        }
        if next_deadline.is_none_or(|d| ts >= d) {
            pipeline.expire(ts, &mut |rec| exporters.push(&rec, ts));
            exporters.tick(ts);
            next_deadline = [pipeline.next_deadline(), exporters.next_deadline()]
                .into_iter()
                .flatten()
                .min();
        }
    });
    let replay = match result {
        Ok(stats) => stats.clone(),
        Err(e) => {
            // What came before the damage is counted and exported; the error is still an error.
            pipeline.flush(last, &mut |rec| exporters.push(&rec, last));
            exporters.finish(last);
            return Err(e).with_context(|| format!("replay of {} stopped", path.display()));
        }
    };
    pipeline.flush(last, &mut |rec| exporters.push(&rec, last));
    exporters.finish(last);
    Ok(RunSummary {
        pipeline: pipeline.stats(),
        source: None,
        replay: Some(replay),
        exports: exporters.stats(),
        records: exporters.records,
    })
}
