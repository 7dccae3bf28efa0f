//! `labelflow-probe`: reads every configured NFLOG group in one process and exports labelled
//! flows as IPFIX / NetFlow v9 / v5.
//!
//! Lifecycle: logging -> configuration (validated before anything is bound; a bad
//! configuration exits 64 naming FILE:LINE) -> bind the NFLOG groups and the export sockets ->
//! run -> SIGINT/SIGTERM -> drain (unbind, flush the cache as "forced end", send the last
//! messages) -> exit 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use labelflow_probe::config::{self, Overrides};
use labelflow_probe::daemon;

/// sysexits.h EX_USAGE / EX_CONFIG style exit code for a bad configuration or command line.
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "labelflow-probe",
    version,
    about = "Reads every configured NFLOG group in one process and exports flows labelled by group as IPFIX / NetFlow v9 / v5",
    after_help = "Examples:\n  labelflow-probe --group 1=esp --group 2=vpn --group 3=other --export ipfix://192.0.2.10:4739\n  labelflow-probe --config /etc/labelflow/probe.toml\n  labelflow-probe --replay capture.pcap --label lan --export ipfix://127.0.0.1:4739"
)]
struct Cli {
    /// TOML configuration file (flags override its values).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// NFLOG group and its label, e.g. `1=esp` (repeatable).
    #[arg(short, long = "group", value_name = "ID=LABEL")]
    groups: Vec<String>,

    /// Export target: ipfix://HOST:PORT, netflow9://HOST:PORT or netflow5://HOST:PORT
    /// (repeatable; replaces the file's [[export]] list).
    #[arg(short, long = "export", value_name = "URL")]
    exports: Vec<String>,

    /// A flow older than this is exported even while packets still arrive (e.g. 60s).
    #[arg(long, value_name = "DURATION")]
    active_timeout: Option<String>,

    /// A flow idle for this long is exported (e.g. 15s).
    #[arg(long, visible_alias = "idle-timeout", value_name = "DURATION")]
    inactive_timeout: Option<String>,

    /// Live flows kept at most; beyond, the least recently seen is exported early.
    #[arg(long, value_name = "N")]
    max_flows: Option<u32>,

    /// NFLOG socket receive buffer, bytes (SO_RCVBUFFORCE when root).
    #[arg(long, value_name = "BYTES")]
    rcvbuf: Option<usize>,

    /// Packets per kernel batch for every group (the kernel takes the smaller of this and the
    /// rule's --nflog-threshold).
    #[arg(long, value_name = "N")]
    queue_threshold: Option<u32>,

    /// Interval of the stats log line (e.g. 10s).
    #[arg(long, value_name = "DURATION")]
    stats_interval: Option<String>,

    /// IPFIX observation domain id (NetFlow v9 source id).
    #[arg(long, value_name = "ID")]
    observation_domain: Option<u32>,

    /// Largest export datagram payload, bytes.
    #[arg(long, value_name = "BYTES")]
    mtu: Option<usize>,

    /// How IPFIX data records carry applicationId, for every target: rfc6759 (default;
    /// nfdump >= 1.7.2, pmacct, Wireshark) or varlen (also nfdump 1.7.1, Debian 12).
    #[arg(long, value_name = "rfc6759|varlen")]
    application_id: Option<String>,
    /// strongSwan's vici socket (unix:///run/charon.vici): flows are exported with the name
    /// of the IKE connection they belong to.
    #[arg(long, value_name = "URI")]
    vici: Option<String>,
    /// Flow records per second at most to each export target (0: unpaced).
    #[arg(long, value_name = "RECORDS")]
    max_rate: Option<u32>,

    /// Enable the conntrack source (per-connection kernel counters, labelled by connmark).
    #[arg(long)]
    conntrack: bool,

    /// Conntrack label by connmark, e.g. `0x10/0xf0=web` (repeatable; enables conntrack).
    #[arg(long = "ct-label", value_name = "MARK[/MASK]=LABEL")]
    ct_labels: Vec<String>,

    /// Validate the configuration, print it, and exit (0 when valid, 64 when not).
    #[arg(long)]
    check_config: bool,

    /// Replay a pcap or pcapng file (NFLOG, Ethernet, raw IP or Linux cooked link types) through the
    /// flow cache and exporters with the capture's timestamps, then exit.
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,

    /// With --replay of a capture without NFLOG metadata: the label of every packet.
    #[arg(long, value_name = "NAME", requires = "replay")]
    label: Option<String>,

    /// Log filter (tracing EnvFilter syntax; RUST_LOG overrides).
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);

    let over = Overrides {
        groups: cli.groups.clone(),
        exports: cli.exports.clone(),
        active_timeout: cli.active_timeout.clone(),
        idle_timeout: cli.inactive_timeout.clone(),
        max_flows: cli.max_flows,
        rcvbuf: cli.rcvbuf,
        queue_threshold: cli.queue_threshold,
        stats_interval: cli.stats_interval.clone(),
        observation_domain: cli.observation_domain,
        mtu: cli.mtu,
        application_id: cli.application_id.clone(),
        vici: cli.vici.clone(),
        max_rate: cli.max_rate,
        conntrack: cli.conntrack,
        ct_labels: cli.ct_labels.clone(),
    };
    let cfg = match config::load(cli.config.as_deref(), &over) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("labelflow-probe: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.replay.is_none() {
        if cfg.groups.is_empty() && cfg.conntrack.is_none() {
            eprintln!("labelflow-probe: configuration error: no source: no NFLOG group configured (--group ID=LABEL or [[group]]) and conntrack off (--conntrack, [conntrack])");
            return ExitCode::from(EXIT_CONFIG);
        }
        if cfg.exports.is_empty() {
            eprintln!("labelflow-probe: configuration error: no export target (--export ipfix://HOST:PORT or [[export]])");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    if cli.check_config {
        println!("{cfg:#?}");
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }

    let result = match &cli.replay {
        Some(path) => daemon::run_replay(&cfg, path, cli.label.as_deref()).map(|s| {
            let r = s.replay.as_ref();
            tracing::info!(
                packets = r.map_or(0, |r| r.packets),
                non_ip = r.map_or(0, |r| r.non_ip),
                malformed = r.map_or(0, |r| r.malformed),
                records = s.records,
                "replay done"
            );
        }),
        None => run_live(&cfg),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("labelflow-probe: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_live(cfg: &config::Config) -> anyhow::Result<()> {
    // Bind first: a group held by another process fails here, naming the group.
    let sources = daemon::open_sources(cfg)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let groups: Vec<String> = cfg
        .groups
        .iter()
        .map(|g| format!("{}={}", g.id, g.label))
        .collect();
    let targets: Vec<String> = cfg.exports.iter().map(|e| e.target.to_string()).collect();
    let ct_labels: Vec<String> = cfg
        .conntrack
        .iter()
        .flat_map(|c| {
            c.labels
                .iter()
                .map(|l| format!("{:#x}/{:#x}={}", l.value, l.mask, l.label))
        })
        .collect();
    tracing::info!(groups = ?groups, conntrack = ?ct_labels, exports = ?targets, vici = ?cfg.vici, "listening");
    daemon::run_live(cfg, sources, &stop)?;
    tracing::info!("stopped");
    Ok(())
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
