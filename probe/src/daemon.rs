//! The probe's drivers: the live NFLOG loop and the pcap replay. They own the IO (socket,
//! clock, signals, UDP) and drive the pure parts: [`Pipeline`] (decode + flow cache) and the
//! exporters' state machines.
//!
//! ```text
//!  NflogSocket::recv_batch ─► Pipeline::handle ─► FlowCache
//!  (or CaptureReader)                                   │ expire(now) / flush(now)
//!                                                    ▼
//!                                 UdpExporter::push ─► IPFIX / v9 / v5 over UDP
//!  every template refresh: ExportMeta (labels, interface names, per-group loss) ─► options
//! ```

use std::os::fd::{AsRawFd as _, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use labelflow_proto::FlowRecord;

use crate::cache::CacheConfig;
use crate::config::Config;
use crate::conntrack::{ConntrackSource, ConntrackSummary};
use crate::export::{ExportConfig, ExportMeta, GroupMeta, InterfaceMeta, TargetStats, UdpExporter};
use crate::ipsec::ViciWatcher;
use crate::nflog::{GroupConfig, NflogConfig, NflogSocket, SourceStats};
use crate::pipeline::{Pipeline, PipelineStats};
use crate::replay::ahead::Ahead;
use crate::replay::{CaptureReader, ReplayStats};

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
    /// Per target: whether it takes biflows (else they are split).
    biflow: Vec<bool>,
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
                conntrack: cfg.conntrack.is_some(),
                ..ExportConfig::default()
            };
            let exporter = UdpExporter::new(&[e.target], knobs, Some(e.sndbuf))
                .with_context(|| format!("cannot open the UDP socket for export to {}", e.target))?
                .with_max_rate(e.max_rate);
            list.push(exporter);
        }
        let biflow = cfg.exports.iter().map(|e| e.biflow).collect();
        Ok(Exporters {
            list,
            biflow,
            records: 0,
        })
    }

    /// Hands `rec` to every target; a biflow goes as it is to targets that take biflows,
    /// as its two unidirectional records to the others.
    fn push(&mut self, rec: &FlowRecord, now_ms: u64) {
        self.records += 1;
        let bi = rec.conntrack.is_some_and(|c| c.reverse.is_some());
        for (e, takes_bi) in self.list.iter_mut().zip(&self.biflow) {
            if !bi || *takes_bi {
                e.push(rec, now_ms);
            } else {
                for half in rec.unidirectional().iter().flatten() {
                    e.push(half, now_ms);
                }
            }
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

    fn log_pacing(&self) {
        for t in self.stats() {
            if t.send_errors > 0 {
                tracing::warn!(
                    target = %t.target,
                    records = t.export.records,
                    send_errors = t.send_errors,
                    last_error = ?t.last_send_error.map(std::io::Error::from_raw_os_error),
                    "export datagrams refused by the kernel"
                );
            }
            if t.pacing_waits > 0 {
                tracing::info!(
                    target = %t.target,
                    records = t.export.records,
                    waits = t.pacing_waits,
                    waited = ?t.pacing_wait,
                    "export paced ([[export]] max_rate)"
                );
            }
        }
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

/// The live sources: NFLOG groups, the conntrack source, or both.
#[derive(Debug)]
pub struct Sources {
    pub nflog: Option<NflogSocket>,
    pub conntrack: Option<ConntrackSource>,
}

/// Opens every configured source (before any signal handler or exporter): NFLOG groups when
/// some are configured, conntrack when enabled.
pub fn open_sources(cfg: &Config) -> anyhow::Result<Sources> {
    let nflog = if cfg.groups.is_empty() {
        None
    } else {
        Some(open_source(cfg)?)
    };
    let conntrack = match &cfg.conntrack {
        Some(ct) => Some(
            ConntrackSource::open(
                ct,
                cfg.observation_domain,
                cfg.cache.active_timeout.as_millis() as u64,
                WallClock::start().now_ms(),
            )
            .context("cannot start the conntrack source")?,
        ),
        None => None,
    };
    Ok(Sources { nflog, conntrack })
}

/// Waits until one of `fds` is readable or `timeout` passes; readability per fd.
fn wait_readable(fds: [Option<RawFd>; 2], timeout: Duration) -> anyhow::Result<[bool; 2]> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
    // SAFETY: `pfds` is a valid array of two pollfds; negative fds are ignored by poll.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), 2, ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e.into());
        }
        return Ok([false, false]);
    }
    Ok([pfds[0].revents != 0, pfds[1].revents != 0])
}

/// Hands what the NFLOG socket holds to the pipeline, without waiting.
fn read_nflog(
    source: &mut NflogSocket,
    pipeline: &mut Pipeline,
    clock: &WallClock,
    decode_log: &mut RateLimit,
) -> anyhow::Result<()> {
    let mut seen = 0u32;
    let mut packet_now = clock.now_ms();
    source.recv_batch(Some(Duration::ZERO), |meta, payload| {
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
    Ok(())
}

/// Runs the live probe until `stop` is set, then drains: unbinds the groups (the kernel
/// flushes their pending batches), counts the last packets, reads and zeroes the conntrack
/// counters, flushes the cache with end reason "forced end" and sends the last messages.
pub fn run_live(cfg: &Config, sources: Sources, stop: &AtomicBool) -> anyhow::Result<RunSummary> {
    let clock = WallClock::start();
    let mut exporters = Exporters::open(cfg)?;
    let labels = cfg.groups.iter().map(|g| (g.id, g.label.clone())).collect();
    let mut pipeline = Pipeline::new(cache_config(cfg, labels));
    let Sources {
        nflog: mut source,
        mut conntrack,
    } = sources;
    let mut decode_log = RateLimit::new(Duration::from_secs(10));
    // Tunnel names from charon, looked up per exported record (never per packet).
    let vici = cfg
        .vici
        .as_ref()
        .map(|path| ViciWatcher::spawn(path.clone(), cfg.ipsec));

    let stats_every = cfg.stats_interval.as_millis() as u64;
    let meta_every = 10_000u64;
    let mut now = clock.now_ms();
    let meta = |s: Option<&NflogSocket>, c: Option<&ConntrackSource>| {
        live_meta(cfg, s.map(|s| s.stats()), c.map(|c| c.summary()))
    };
    exporters.set_meta(&meta(source.as_ref(), conntrack.as_ref()));
    let mut next_stats = now + stats_every;
    let mut next_meta = now + meta_every;

    while !stop.load(Ordering::Relaxed) {
        let deadline = [
            pipeline.next_deadline(),
            exporters.next_deadline(),
            conntrack.as_ref().map(|c| c.next_deadline()),
            Some(next_stats),
            Some(next_meta),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + 1000);
        // Wake at least every 250 ms to notice a stop request.
        let wait = Duration::from_millis(deadline.saturating_sub(now).min(250));
        let fds = [
            source.as_ref().map(|s| s.as_raw_fd()),
            conntrack.as_ref().map(|c| c.fd()),
        ];
        let ready = wait_readable(fds, wait)?;
        // Every turn, readable or not: datagrams that arrived while the groups were being
        // bound wait in the source, not on the socket (a poll of zero when nothing is there).
        if let Some(source) = source.as_mut() {
            read_nflog(source, &mut pipeline, &clock, &mut decode_log)?;
        }
        now = clock.now_ms();
        if let Some(ct) = conntrack.as_mut() {
            let mut sink = |rec: FlowRecord| exporters.push(&rec, now);
            if ready[1] {
                ct.recv(now, &mut sink)?;
            }
            ct.tick(now, &mut sink)?;
        }
        pipeline.expire(now, &mut |rec| exporters.push(&named(&vici, rec), now));
        if now >= next_meta {
            exporters.set_meta(&meta(source.as_ref(), conntrack.as_ref()));
            next_meta = now + meta_every;
        }
        exporters.tick(now);
        if now >= next_stats {
            log_stats(
                &pipeline.stats(),
                source.as_ref().map(|s| s.stats()),
                exporters.records,
            );
            if let Some(c) = &conntrack {
                log_conntrack(&c.summary());
            }
            next_stats = now + stats_every;
        }
    }

    tracing::info!(
        "stopping: unbinding groups, draining their last batches, zeroing conntrack counters"
    );
    let final_source = match source {
        Some(s) => Some(s.shutdown(cfg.shutdown_grace, |meta, payload| {
            let _ = pipeline.handle(meta, payload, clock.now_ms());
        })?),
        None => None,
    };
    let now = clock.now_ms();
    let final_ct = match conntrack {
        Some(c) => Some(c.shutdown(now, &mut |rec| exporters.push(&rec, now))?),
        None => None,
    };
    pipeline.flush(now, &mut |rec| exporters.push(&named(&vici, rec), now));
    exporters.set_meta(&live_meta(cfg, final_source.as_ref(), final_ct.clone()));
    exporters.finish(now);
    exporters.log_pacing();
    let summary = RunSummary {
        pipeline: pipeline.stats(),
        source: final_source,
        replay: None,
        exports: exporters.stats(),
        records: exporters.records,
    };
    log_stats(&summary.pipeline, summary.source.as_ref(), summary.records);
    if let Some(c) = &final_ct {
        log_conntrack(c);
    }
    Ok(summary)
}

/// Options metadata of a live run: the NFLOG groups, then the conntrack labels (scoped by
/// their observation points, [`crate::conntrack::OBSERVATION_POINT_BASE`] + index).
fn live_meta(
    cfg: &Config,
    nflog: Option<&SourceStats>,
    ct: Option<ConntrackSummary>,
) -> ExportMeta {
    let mut meta = export_meta(cfg, nflog);
    if let Some(ct) = ct {
        meta.groups.extend(ct.labels.into_iter().map(|l| GroupMeta {
            group: l.observation_point,
            label: l.label,
            description: "conntrack".into(),
            packets_total: l.packets,
            ignored_packets: 0,
        }));
    }
    meta
}

fn log_conntrack(c: &ConntrackSummary) {
    let s = &c.socket;
    tracing::info!(
        new = s.new_events,
        update = s.update_events,
        destroy = s.destroy_events,
        sweeps = s.sweeps,
        vanished = s.vanished,
        unlabelled = c.unlabelled,
        other_zone = c.other_zone,
        "conntrack stats"
    );
    for l in &c.labels {
        tracing::info!(label = %l.label, packets = l.packets, bytes = l.bytes, records = l.records, no_counters = l.no_counters, "conntrack label");
    }
    if s.enobufs > 0 || s.malformed > 0 || s.read_errors > 0 {
        tracing::warn!(
            enobufs = s.enobufs,
            malformed = s.malformed,
            read_errors = s.read_errors,
            "conntrack event losses (each ENOBUFS resynchronised by a sweep): raise [conntrack] rcvbuf"
        );
    }
}

/// Replays a capture through the same pipeline, with the capture's own timestamps as the
/// clock: the same file always gives the same records. Packets of captures without NFLOG
/// metadata belong to `label` (pseudo group 0).
pub fn run_replay(cfg: &Config, path: &Path, label: Option<&str>) -> anyhow::Result<RunSummary> {
    const PSEUDO_GROUP: u16 = 0;
    let reader = CaptureReader::open(path, PSEUDO_GROUP)
        .with_context(|| format!("cannot replay {}", path.display()))?;
    let mut labels: Vec<(u16, String)> =
        cfg.groups.iter().map(|g| (g.id, g.label.clone())).collect();
    let is_nflog = reader.link_type() == Some(crate::replay::linktype::NFLOG);
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
    let ahead = Ahead::start(reader, pipeline.decoder(), move |e| {
        if let Some(held) = decode_log.allow() {
            tracing::warn!(error = %e, similar_held_back = held, "packet skipped");
        }
    })
    .context("cannot start the replay's reader thread")?;
    let mut next_deadline: Option<u64> = None;
    let (result, last) = ahead.drive(&mut pipeline, |pipeline, ts| {
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
        Ok(stats) => stats,
        Err(e) => {
            // What came before the damage is counted and exported; the error is still an error.
            pipeline.flush(last, &mut |rec| exporters.push(&rec, last));
            exporters.finish(last);
            return Err(e).with_context(|| format!("replay of {} stopped", path.display()));
        }
    };
    pipeline.flush(last, &mut |rec| exporters.push(&rec, last));
    exporters.finish(last);
    exporters.log_pacing();
    Ok(RunSummary {
        pipeline: pipeline.stats(),
        source: None,
        replay: Some(replay),
        exports: exporters.stats(),
        records: exporters.records,
    })
}
